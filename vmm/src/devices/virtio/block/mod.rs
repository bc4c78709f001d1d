//! virtio-blk on a raw image file: requests IN, OUT, FLUSH and GET_ID (everything else is
//! UNSUPP), one queue, served on an I/O thread of the device's own (`owvmm-diskN`) that runs
//! an event-manager loop over the queue's notifier (a KVM ioeventfd) and a stop eventfd:
//! no disk I/O runs on a vCPU thread or on the VMM's main loop.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, Activation, Interrupt, VirtioDevice, VirtioError, Worker};

pub mod disk;
#[doc(hidden)]
pub mod harness;
pub mod request;

pub use disk::{Disk, DiskError};

/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Size of the configuration space exposed (`struct virtio_blk_config` up to `blk_size`
/// and the fields before `num_queues`: only `capacity` is meaningful without the features
/// that give the others a meaning).
const CONFIG_SIZE: usize = 24;

/// A virtio-blk device.
pub struct Block {
    disk: Arc<Disk>,
    name: String,
    config: [u8; CONFIG_SIZE],
    worker: Option<Worker>,
}

impl Block {
    /// A device on `disk`; `name` names its I/O thread.
    pub fn new(disk: Disk, name: &str) -> Self {
        let mut config = [0u8; CONFIG_SIZE];
        config[..8].copy_from_slice(&disk.sectors().to_le_bytes());
        Block {
            disk: Arc::new(disk),
            name: name.to_string(),
            config,
            worker: None,
        }
    }

    fn stop_worker(&mut self) -> Vec<virtio_queue::QueueState> {
        self.worker.take().map(Worker::stop).unwrap_or_default()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let _ = self.stop_worker();
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_RING_F_EVENT_IDX);
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        let _ = self.stop_worker();
        let (Some(queue), Some(notify)) =
            (a.queues.into_iter().next(), a.notifiers.into_iter().next())
        else {
            return Err(VirtioError::BadQueue(0));
        };
        if !virtio_queue::QueueT::ready(&queue) {
            return Err(VirtioError::BadQueue(0));
        }
        let (stop, watched) = Worker::stop_eventfds()?;
        let handler = QueueHandler {
            mem: a.mem,
            queue,
            disk: self.disk.clone(),
            interrupt: a.interrupt,
            notify,
            stop: watched,
            bounce: vec![0u8; request::BOUNCE_SIZE],
            done: Arc::new(AtomicBool::new(false)),
            reported: false,
        };
        let done = handler.done.clone();
        // The handler drains anything notified before the thread started.
        let first: fn(&mut QueueHandler) = QueueHandler::serve;
        self.worker = Some(Worker::spawn(&self.name, stop, handler, done, first)?);
        Ok(())
    }

    fn reset(&mut self) -> Vec<virtio_queue::QueueState> {
        self.stop_worker()
    }
}

/// The I/O thread's subscriber: the queue's notifier and the stop eventfd.
struct QueueHandler {
    mem: GuestMemoryMmap,
    queue: Queue,
    disk: Arc<Disk>,
    interrupt: Arc<Interrupt>,
    notify: EventFd,
    stop: EventFd,
    bounce: Vec<u8>,
    done: Arc<AtomicBool>,
    /// Whether a broken queue was reported already (once per activation).
    reported: bool,
}

impl QueueHandler {
    fn serve(&mut self) {
        match request::process_queue(&mut self.queue, &self.mem, &self.disk, &mut self.bounce) {
            Ok(true) => {
                let _ = self.interrupt.signal_used_queue();
            }
            Ok(false) => {}
            Err(e) => {
                if !self.reported {
                    self.reported = true;
                    eprintln!("owvmm: {}", crate::error_chain(&e));
                }
            }
        }
    }
}

impl super::QueueOwner for QueueHandler {
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        vec![self.queue.state()]
    }
}

impl MutEventSubscriber for QueueHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.stop.as_raw_fd() {
            let _ = self.stop.read();
            self.done.store(true, Ordering::SeqCst);
            return;
        }
        if events.fd() == self.notify.as_raw_fd() {
            let _ = self.notify.read();
            self.serve();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.notify, &self.stop] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                eprintln!("owvmm: I/O thread: cannot watch an eventfd: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
