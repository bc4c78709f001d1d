//! virtio-net on a host tap: two queues (rx 0, tx 1), the MAC in the configuration space,
//! no offloads (no checksum, TSO, UFO, no mergeable rx buffers), `VIRTIO_RING_F_EVENT_IDX`.
//! Served on an I/O thread of the device's own (`owvmm-netN`) that runs an event-manager
//! loop over the two queues' notifiers (KVM ioeventfds), the tap and a stop eventfd; the
//! tap is watched only while the driver has rx buffers (see [`frame`]).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{read_config_bytes, Activation, Interrupt, VirtioDevice, VirtioError, Worker};

pub mod frame;
pub mod tap;

pub use frame::NetStats;
pub use tap::{Backend, Tap, TapError};

/// Queue size offered, for both queues.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue's index.
pub const RX: usize = 0;
/// The transmit queue's index.
pub const TX: usize = 1;

/// A virtio-net device.
pub struct Net {
    backend: Arc<dyn Backend>,
    name: String,
    mac: [u8; 6],
    stats: Arc<NetStats>,
    worker: Option<Worker>,
}

impl Net {
    /// A device on `backend` (a [`Tap`]) with the MAC `mac`; `name` names its I/O thread
    /// (`owvmm-NAME`).
    pub fn new(backend: Arc<dyn Backend>, mac: [u8; 6], name: &str) -> Self {
        Net {
            backend,
            name: name.to_string(),
            mac,
            stats: Arc::new(NetStats::default()),
            worker: None,
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }

    fn stop_worker(&mut self) -> Vec<virtio_queue::QueueState> {
        self.worker.take().map(Worker::stop).unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.stop_worker();
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // `struct virtio_net_config`: only `mac` has a meaning without the features that
        // give the other fields one (STATUS, MQ, MTU, ...).
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), VirtioError> {
        let _ = self.stop_worker();
        let mut queues = a.queues.into_iter();
        let mut notifiers = a.notifiers.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(VirtioError::BadQueue(TX));
        };
        let (Some(rx_evt), Some(tx_evt)) = (notifiers.next(), notifiers.next()) else {
            return Err(VirtioError::BadQueue(TX));
        };
        for (i, q) in [(RX, &rx), (TX, &tx)] {
            if !q.ready() {
                return Err(VirtioError::BadQueue(i));
            }
        }
        let (stop, watched) = Worker::stop_eventfds()?;
        let handler = NetHandler {
            mem: a.mem,
            rx,
            tx,
            rx_evt,
            tx_evt,
            stop: watched,
            backend: self.backend.clone(),
            interrupt: a.interrupt,
            stats: self.stats.clone(),
            rx_state: frame::RxState::default(),
            tx_buf: vec![0u8; frame::BUF_LEN],
            tap_watched: false,
            done: Arc::new(AtomicBool::new(false)),
            reported: false,
        };
        let done = handler.done.clone();
        // Anything sent before the thread started goes out now.
        let first: fn(&mut NetHandler) = NetHandler::serve_tx;
        self.worker = Some(Worker::spawn(&self.name, stop, handler, done, first)?);
        Ok(())
    }

    fn reset(&mut self) -> Vec<virtio_queue::QueueState> {
        self.stop_worker()
    }
}

/// The I/O thread's subscriber: both queues' notifiers, the backend and the stop eventfd.
struct NetHandler {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    stop: EventFd,
    backend: Arc<dyn Backend>,
    interrupt: Arc<Interrupt>,
    stats: Arc<NetStats>,
    rx_state: frame::RxState,
    tx_buf: Vec<u8>,
    /// Whether the backend is in the epoll set (only while the driver has rx buffers).
    tap_watched: bool,
    done: Arc<AtomicBool>,
    /// Whether a broken queue was reported already (once per activation).
    reported: bool,
}

impl NetHandler {
    fn report(&mut self, e: &frame::QueueBroken) {
        if !self.reported {
            self.reported = true;
            eprintln!("owvmm: {}", crate::error_chain(e));
        }
    }

    fn serve_tx(&mut self) {
        match frame::process_tx(
            &mut self.tx,
            &self.mem,
            self.backend.as_ref(),
            &mut self.tx_buf,
            &self.stats,
        ) {
            Ok(true) => {
                let _ = self.interrupt.signal_used_queue();
            }
            Ok(false) => {}
            Err(e) => self.report(&e),
        }
    }

    /// Delivers what the backend has; starts or stops watching it.
    fn serve_rx(&mut self, ops: &mut EventOps) {
        let stop = match frame::process_rx(
            &mut self.rx,
            &self.mem,
            self.backend.as_ref(),
            &mut self.rx_state,
            &self.stats,
        ) {
            Ok((notify, stop)) => {
                if notify {
                    let _ = self.interrupt.signal_used_queue();
                }
                stop
            }
            Err(e) => {
                self.report(&e);
                // Wait for the driver's next notification rather than spin on the tap.
                frame::RxStop::NoBuffers
            }
        };
        let want = stop == frame::RxStop::Drained;
        if want != self.tap_watched {
            let ev = Events::new_raw(self.backend.as_raw_fd(), EventSet::IN);
            let r = if want { ops.add(ev) } else { ops.remove(ev) };
            match r {
                Ok(()) => self.tap_watched = want,
                Err(e) => eprintln!("owvmm: virtio-net: cannot (un)watch the tap: {e:?}"),
            }
        }
    }
}

impl super::QueueOwner for NetHandler {
    fn queue_states(&self) -> Vec<virtio_queue::QueueState> {
        vec![self.rx.state(), self.tx.state()]
    }
}

impl MutEventSubscriber for NetHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.stop.as_raw_fd() {
            let _ = self.stop.read();
            self.done.store(true, Ordering::SeqCst);
        } else if fd == self.tx_evt.as_raw_fd() {
            let _ = self.tx_evt.read();
            self.serve_tx();
        } else if fd == self.rx_evt.as_raw_fd() {
            // New rx buffers: deliver what waits, and watch the backend again.
            let _ = self.rx_evt.read();
            self.serve_rx(ops);
        } else if fd == self.backend.as_raw_fd() {
            self.serve_rx(ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.tx_evt, &self.rx_evt, &self.stop] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                eprintln!("owvmm: I/O thread: cannot watch an eventfd: {e:?}");
            }
        }
        // Frames that arrived before activation, and the backend watched if the driver
        // has posted buffers already.
        self.serve_rx(ops);
    }
}

#[cfg(test)]
mod tests;
