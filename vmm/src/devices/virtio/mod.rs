//! virtio devices on the virtio-mmio transport (no PCI, as Firecracker): the transport
//! (`mmio.rs`), the device side's trait ([`VirtioDevice`]) and one folder per device type.
//!
//! Queues are `virtio-queue`'s; register offsets, feature bits and status bits are
//! `virtio-bindings`'. The guest finds the devices through the kernel command line
//! (`virtio_mmio.device=4K@ADDR:IRQ`, [`cmdline_option`]).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub mod block;
pub mod mmio;
pub mod net;

/// Guest-physical address of the first virtio-mmio device; the next ones follow, each
/// [`MMIO_SIZE`] long (inside the 32-bit MMIO hole, where Firecracker puts them too).
pub const MMIO_BASE: u64 = 0xd000_0000;
/// Size of one device's register window.
pub const MMIO_SIZE: u64 = 0x1000;
/// The interrupts of the virtio-mmio devices, in device order: ISA IRQs nothing else uses
/// (not 0-2, the timer, keyboard and cascade; 3 and 4, the serial ports; 8, the RTC; 9,
/// the ACPI SCI; 12 and 13, the PS/2 mouse and FPU). The MP table and the MADT route them
/// identity-mapped (edge, active high, as ISA interrupts), and irqfds raise them.
pub const IRQS: [u32; 7] = [5, 6, 7, 10, 11, 14, 15];
/// Most virtio-mmio devices a VM has (one interrupt each).
pub const MAX_DEVICES: usize = IRQS.len();

/// Register window and interrupt of the `index`-th virtio-mmio device.
pub fn slot(index: usize) -> Option<(u64, u32)> {
    let irq = *IRQS.get(index)?;
    let index = u64::try_from(index).ok()?;
    Some((MMIO_BASE + index * MMIO_SIZE, irq))
}

/// The kernel command-line option that makes Linux probe a virtio-mmio device.
pub fn cmdline_option(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// What a device's I/O thread serves: its queues, whose state a snapshot keeps.
pub trait QueueOwner {
    /// The state of each queue (sizes, rings, the next indexes), in queue order.
    fn queue_states(&self) -> Vec<virtio_queue::QueueState>;
}

/// A device's I/O thread (`owvmm-NAME`): an event-manager loop over the device's one
/// subscriber, which watches the stop eventfd and sets `done` when it fires.
pub struct Worker {
    stop: EventFd,
    thread: std::thread::JoinHandle<()>,
    handler: Arc<std::sync::Mutex<dyn QueueOwner + Send>>,
}

impl Worker {
    /// A stop eventfd and its clone for the subscriber to watch.
    pub fn stop_eventfds() -> Result<(EventFd, EventFd), VirtioError> {
        let stop =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VirtioError::Host("stop eventfd", e))?;
        let watched = stop
            .try_clone()
            .map_err(|e| VirtioError::Host("stop eventfd", e))?;
        Ok((stop, watched))
    }

    /// Starts the thread: `first` runs once on the handler (what was notified before the
    /// thread started), then the loop runs until `done`. `stop` is the eventfd whose clone
    /// the handler watches.
    pub fn spawn<T: event_manager::MutEventSubscriber + QueueOwner + Send + 'static>(
        name: &str,
        stop: EventFd,
        handler: T,
        done: Arc<std::sync::atomic::AtomicBool>,
        first: fn(&mut T),
    ) -> Result<Worker, VirtioError> {
        let mut em: event_manager::EventManager<Arc<std::sync::Mutex<T>>> =
            event_manager::EventManager::new().map_err(VirtioError::EventLoop)?;
        let handler = Arc::new(std::sync::Mutex::new(handler));
        event_manager::SubscriberOps::add_subscriber(&mut em, handler.clone());
        let owner: Arc<std::sync::Mutex<dyn QueueOwner + Send>> = handler.clone();
        let name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("owvmm-{name}"))
            .spawn(move || {
                first(&mut crate::devices::bus::lock(&handler));
                while !done.load(Ordering::SeqCst) {
                    if let Err(e) = em.run() {
                        eprintln!(
                            "owvmm: {name}: {}",
                            crate::error_chain(&VirtioError::EventLoop(e))
                        );
                        break;
                    }
                }
            })
            .map_err(|e| VirtioError::Host("I/O thread", e))?;
        Ok(Worker {
            stop,
            thread,
            handler: owner,
        })
    }

    /// Stops the thread and waits for it; the queues as it left them. It serves each
    /// request whole within one event, so none is in flight then: what the driver made
    /// available and the thread had not taken yet is still in the available ring.
    pub fn stop(self) -> Vec<virtio_queue::QueueState> {
        let _ = self.stop.write(1);
        let _ = self.thread.join();
        let states = crate::devices::bus::lock(&self.handler).queue_states();
        states
    }
}

/// Errors of the virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A host resource (eventfd, thread) could not be made.
    #[error("cannot create {0}")]
    Host(&'static str, #[source] std::io::Error),
    /// The event loop of a device's I/O thread failed.
    #[error("I/O thread event loop failed")]
    EventLoop(#[source] event_manager::Error),
    /// The driver made a queue the device needs unusable (not ready, or its rings
    /// outside guest memory).
    #[error("queue {0} is not ready or lies outside guest memory")]
    BadQueue(usize),
    /// A queue could not be made.
    #[error("cannot create a queue")]
    Queue(#[source] virtio_queue::Error),
    /// A snapshot's device state is for another device.
    #[error("the snapshot's device state does not fit a device of type {device_type} with {queues} queues")]
    StateMismatch {
        /// The device's type.
        device_type: u32,
        /// Its queue count.
        queues: usize,
    },
    /// KVM refused an irqfd or ioeventfd.
    #[error("KVM {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

/// A device's interrupt: the transport's interrupt status bits and the irqfd that raises
/// the device's line.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    /// An interrupt raised through `irqfd` (registered with KVM for the device's GSI).
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// Tells the driver that buffers were used.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the driver that the configuration changed.
    pub fn signal_config(&self) -> std::io::Result<()> {
        self.raise(VIRTIO_MMIO_INT_CONFIG)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// Sets the status of a restored device, raising the line again if a bit is set (the
    /// driver may not have seen it before the snapshot).
    fn restore(&self, status: u32) {
        self.status.store(status, Ordering::SeqCst);
        if status != 0 {
            let _ = self.irqfd.write(1);
        }
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues as the driver set them up (sizes, ring addresses, event index).
    pub queues: Vec<Queue>,
    /// One eventfd per queue, written on each QueueNotify (a KVM ioeventfd).
    pub notifiers: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
}

/// The device side of a virtio device; the transport ([`mmio::MmioTransport`]) does the
/// rest.
pub trait VirtioDevice: Send {
    /// The virtio device ID (`virtio_ids`).
    fn device_type(&self) -> u32;
    /// The largest size of each queue (powers of two); their number is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features offered (VIRTIO_F_VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// Reads the device configuration space; bytes past its end read as 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device configuration space (read-only by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError>;
    /// Stops serving the queues and lets go of guest memory (a device reset); waits for
    /// requests in progress. Returns the queues as they were left (empty when the device
    /// was not serving), which a snapshot keeps.
    fn reset(&mut self) -> Vec<virtio_queue::QueueState>;
}

/// Reads `data.len()` bytes at `offset` of `config`; what lies outside reads as 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_each_other_in_the_mmio_hole() {
        assert_eq!(slot(0), Some((0xd000_0000, 5)));
        assert_eq!(slot(1), Some((0xd000_1000, 6)));
        assert_eq!(slot(MAX_DEVICES), None);
        for i in 0..MAX_DEVICES {
            let (base, irq) = slot(i).expect("slot");
            assert!(base >= crate::arch::layout::MMIO_HOLE_START);
            assert!(base + MMIO_SIZE <= u64::from(crate::arch::layout::IOAPIC_BASE));
            assert!(![3, 4, 9, 12].contains(&irq));
        }
        assert_eq!(
            cmdline_option(0xd000_0000, 5),
            "virtio_mmio.device=4K@0xd0000000:5"
        );
    }

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3];
        let mut b = [9u8; 4];
        read_config_bytes(&cfg, 1, &mut b);
        assert_eq!(b, [2, 3, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
