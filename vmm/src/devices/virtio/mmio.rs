//! The virtio-mmio transport, version 2 (modern: VIRTIO_F_VERSION_1 only, no legacy
//! registers), as in the virtio 1.2 specification, section 4.2.2.
//!
//! The vCPU threads reach it through the MMIO bus for everything but QueueNotify, which a
//! KVM ioeventfd per queue turns into an eventfd write (the device's I/O thread waits on
//! it); a notification that still arrives here (no ioeventfd, or an odd access width) is
//! forwarded to the same eventfd.

use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, Interrupt, VirtioDevice, VirtioError};
use crate::devices::bus::MmioDevice;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The modern transport.
const VERSION: u32 = 2;
/// No vendor of its own.
const VENDOR_ID: u32 = 0;

/// One queue in a snapshot (`virtio_queue::QueueState`, which is not serializable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueSnapshot {
    /// The size the driver chose.
    pub size: u16,
    /// Set up by the driver.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available entry the device takes.
    pub next_avail: u16,
    /// Next used entry the device fills.
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX in use.
    pub event_idx: bool,
}

impl QueueSnapshot {
    fn of(q: &virtio_queue::QueueState) -> Self {
        QueueSnapshot {
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
        }
    }

    fn state(&self, max_size: u16) -> virtio_queue::QueueState {
        virtio_queue::QueueState {
            max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        }
    }
}

/// A transport's state in a snapshot: its registers and its queues (as the device's I/O
/// thread left them when the device was serving).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    /// The virtio device ID, checked against the device it is restored into.
    pub device_type: u32,
    /// Status register.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver wrote.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Each queue.
    pub queues: Vec<QueueSnapshot>,
}

/// A virtio device behind its virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    notifiers: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
    /// The queues of a device stopped for a snapshot, until it resumes.
    saved: Option<Vec<virtio_queue::QueueState>>,
}

fn low(v: u64) -> u32 {
    // Truncation intended: the low half.
    (v & 0xffff_ffff) as u32
}

impl MmioTransport {
    /// Wraps `device`; `irqfd` raises its interrupt. The queues' notifiers are made here:
    /// register them as ioeventfds with [`Self::notifiers`].
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irqfd: EventFd,
    ) -> Result<Self, VirtioError> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&n| Queue::new(n).map_err(VirtioError::Queue))
            .collect::<Result<Vec<_>, _>>()?;
        let notifiers = queues
            .iter()
            .map(|_| {
                EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VirtioError::Host("queue eventfd", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            queues,
            notifiers,
            interrupt: Arc::new(Interrupt::new(irqfd)),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
            saved: None,
        })
    }

    /// The eventfd of each queue, to register as the ioeventfd of
    /// `base + VIRTIO_MMIO_QUEUE_NOTIFY` with the queue's index as data.
    pub fn notifiers(&self) -> &[EventFd] {
        &self.notifiers
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device serves its queues.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Resets the device as a driver writing 0 to Status would, and gives it another guest
    /// memory (a microreboot swapped the VM's).
    pub fn reset_with_memory(&mut self, mem: GuestMemoryMmap) {
        self.reset();
        self.mem = mem;
    }

    fn offered_features(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    fn reset(&mut self) {
        if self.active {
            let _ = self.device.reset();
            self.active = false;
        }
        self.saved = None;
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt.reset();
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i)
    }

    /// Queue set-up is allowed after FEATURES_OK and before DRIVER_OK (or failure).
    fn configuring_queues(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED) == 0
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if !self.configuring_queues() {
            return;
        }
        if let Some(q) = self.selected_queue() {
            if !q.ready() {
                f(q);
            }
        }
    }

    fn read_reg(&mut self, reg: u32) -> u32 {
        match reg {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => low(self.offered_features()),
                1 => low(self.offered_features() >> 32),
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .selected_queue()
                .map(|q| u32::from(q.max_size()))
                .unwrap_or(0),
            VIRTIO_MMIO_QUEUE_READY => self
                .selected_queue()
                .map(|q| u32::from(q.ready()))
                .unwrap_or(0),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // Write-only and unknown registers.
            _ => 0,
        }
    }

    fn write_reg(&mut self, reg: u32, v: u32) {
        match reg {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let negotiating = self.status & VIRTIO_CONFIG_S_DRIVER != 0
                    && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
                if negotiating {
                    let v = u64::from(v);
                    match self.driver_features_sel {
                        0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                        1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
                        _ => {}
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM => self.with_queue(|q| {
                // A size that is not a power of two or above the maximum is refused (the
                // queue keeps its size; activation checks the rings against it).
                let _ = u16::try_from(v).map(|n| q.try_set_size(n));
            }),
            VIRTIO_MMIO_QUEUE_READY if self.configuring_queues() => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW => {
                self.with_queue(|q| q.set_desc_table_address(Some(v), None))
            }
            VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                self.with_queue(|q| q.set_desc_table_address(None, Some(v)))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                self.with_queue(|q| q.set_avail_ring_address(Some(v), None))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                self.with_queue(|q| q.set_avail_ring_address(None, Some(v)))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW => {
                self.with_queue(|q| q.set_used_ring_address(Some(v), None))
            }
            VIRTIO_MMIO_QUEUE_USED_HIGH => {
                self.with_queue(|q| q.set_used_ring_address(None, Some(v)))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => self.notify(v),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v),
            _ => {}
        }
    }

    /// QueueNotify that reached the bus instead of the ioeventfd.
    fn notify(&self, queue: u32) {
        if self.active {
            if let Some(e) = usize::try_from(queue)
                .ok()
                .and_then(|i| self.notifiers.get(i))
            {
                let _ = e.write(1);
            }
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // The driver only adds bits (3.1.1); anything else is ignored.
        if v & self.status != self.status {
            return;
        }
        let added = v & !self.status;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let acceptable = self.status & VIRTIO_CONFIG_S_DRIVER != 0
                && self.driver_features & !self.offered_features() == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !acceptable {
                // FEATURES_OK stays clear: the driver reads it back and gives up.
                self.status = v & !VIRTIO_CONFIG_S_FEATURES_OK;
                return;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            let ordered =
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
            if self.status & ordered != ordered {
                return;
            }
            self.status = v;
            self.activate();
            return;
        }
        self.status = v;
    }

    /// The state for a snapshot (of a paused guest). A serving device's I/O thread is
    /// stopped to read its queues, and stays stopped, so that guest memory does not change
    /// under the snapshot, until [`Self::resume`].
    pub fn save(&mut self) -> TransportState {
        let states = if self.active {
            let served = self.device.reset();
            self.active = false;
            let states = if served.len() == self.queues.len() {
                served
            } else {
                self.driver_states()
            };
            self.saved = Some(states.clone());
            states
        } else {
            self.driver_states()
        };
        let queues = states.iter().map(QueueSnapshot::of).collect();
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues,
        }
    }

    /// Serves the queues again after [`Self::save`], from where the I/O thread left them.
    pub fn resume(&mut self) {
        if let Some(states) = self.saved.take() {
            self.activate_with(states);
        }
    }

    /// Takes the state of a snapshot, and serves the queues again if the driver had set
    /// DRIVER_OK; each queue is then notified once, for what the driver made available
    /// after the device last looked.
    pub fn restore(&mut self, st: &TransportState) -> Result<(), VirtioError> {
        if st.device_type != self.device.device_type() || st.queues.len() != self.queues.len() {
            return Err(VirtioError::StateMismatch {
                device_type: self.device.device_type(),
                queues: self.queues.len(),
            });
        }
        self.reset();
        let mut states = Vec::with_capacity(st.queues.len());
        for (q, snap) in self.queues.iter_mut().zip(&st.queues) {
            let state = snap.state(q.max_size());
            *q = Queue::try_from(state).map_err(VirtioError::Queue)?;
            states.push(state);
        }
        self.status = st.status;
        self.device_features_sel = st.device_features_sel;
        self.driver_features_sel = st.driver_features_sel;
        self.driver_features = st.driver_features;
        self.queue_sel = st.queue_sel;
        self.config_generation = st.config_generation;
        if self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == 0
        {
            self.activate_with(states);
            if !self.active {
                return Err(VirtioError::BadQueue(0));
            }
            for n in &self.notifiers {
                let _ = n.write(1);
            }
        }
        self.interrupt.restore(st.interrupt_status);
        Ok(())
    }

    /// The queues as the driver set them up (the transport's copy; a serving device's I/O
    /// thread has the current indexes).
    fn driver_states(&self) -> Vec<virtio_queue::QueueState> {
        self.queues.iter().map(|q| q.state()).collect()
    }

    fn activate(&mut self) {
        let states = self.driver_states();
        self.activate_with(states);
    }

    /// Starts the device on queues in `states` (the driver's set-up, or a snapshot's).
    fn activate_with(&mut self, states: Vec<virtio_queue::QueueState>) {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, mut state) in states.into_iter().enumerate() {
            state.event_idx_enabled = event_idx;
            if let Some(q) = self.queues.get_mut(i) {
                q.set_event_idx(event_idx);
            }
            let q = match Queue::try_from(state) {
                Ok(q) => q,
                Err(e) => {
                    self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                    eprintln!(
                        "owvmm: virtio: {}",
                        crate::error_chain(&VirtioError::Queue(e))
                    );
                    return;
                }
            };
            if q.ready() && !q.is_valid(&self.mem) {
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                eprintln!("owvmm: virtio: {}", VirtioError::BadQueue(i));
                return;
            }
            queues.push(q);
        }
        let notifiers = match self
            .notifiers
            .iter()
            .map(|e| e.try_clone())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(n) => n,
            Err(e) => {
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                eprintln!("owvmm: virtio: {}", VirtioError::Host("queue eventfd", e));
                return;
            }
        };
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            notifiers,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => {
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                eprintln!(
                    "owvmm: virtio device activation failed: {}",
                    crate::error_chain(&e)
                );
            }
        }
    }
}

impl MmioDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            self.device.read_config(offset - config, data);
            return;
        }
        // Registers are 32 bits wide, read whole and aligned; anything else reads 0.
        let value = match (u32::try_from(offset), data.len()) {
            (Ok(reg), 4) if reg % 4 == 0 => self.read_reg(reg),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            self.device.write_config(offset - config, data);
            return;
        }
        if let (Ok(reg), Ok(bytes)) = (u32::try_from(offset), <[u8; 4]>::try_from(data)) {
            if reg % 4 == 0 {
                self.write_reg(reg, u32::from_le_bytes(bytes));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use vm_memory::GuestAddress;

    use super::*;

    /// A device that counts activations and resets.
    pub(crate) struct Dummy {
        pub activations: Arc<AtomicUsize>,
        pub resets: Arc<AtomicUsize>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb], offset, data);
        }
        fn activate(&mut self, _a: Activation) -> Result<(), VirtioError> {
            self.activations.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn reset(&mut self) -> Vec<virtio_queue::QueueState> {
            self.resets.fetch_add(1, Ordering::SeqCst);
            Vec::new()
        }
    }

    fn transport() -> (MmioTransport, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("guest memory");
        let (a, r) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let dev = Dummy {
            activations: a.clone(),
            resets: r.clone(),
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let t = MmioTransport::new(Box::new(dev), mem, irq).expect("transport");
        (t, a, r)
    }

    fn rd(t: &mut MmioTransport, reg: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(u64::from(reg), &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, reg: u32, v: u32) {
        t.write(u64::from(reg), &v.to_le_bytes());
    }

    const S_ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    const S_DRV: u32 = S_ACK | VIRTIO_CONFIG_S_DRIVER;
    const S_FEAT: u32 = S_DRV | VIRTIO_CONFIG_S_FEATURES_OK;
    const S_OK: u32 = S_FEAT | VIRTIO_CONFIG_S_DRIVER_OK;

    /// Negotiates `features`, sets up queue 0 at the given rings and sets DRIVER_OK.
    pub(crate) fn bring_up(t: &mut MmioTransport, features: u64, rings: (u64, u64, u64)) {
        wr(t, VIRTIO_MMIO_STATUS, S_ACK);
        wr(t, VIRTIO_MMIO_STATUS, S_DRV);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, low(features));
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(t, VIRTIO_MMIO_DRIVER_FEATURES, low(features >> 32));
        wr(t, VIRTIO_MMIO_STATUS, S_FEAT);
        wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        wr(t, VIRTIO_MMIO_QUEUE_NUM, 16);
        wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, low(rings.0));
        wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, low(rings.0 >> 32));
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, low(rings.1));
        wr(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, low(rings.1 >> 32));
        wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, low(rings.2));
        wr(t, VIRTIO_MMIO_QUEUE_USED_HIGH, low(rings.2 >> 32));
        wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
        wr(t, VIRTIO_MMIO_STATUS, S_OK);
    }

    #[test]
    fn a_snapshot_of_the_transport_restores_registers_and_queues() {
        let (mut t, act, _) = transport();
        let version_1 = 1u64 << VIRTIO_F_VERSION_1;
        bring_up(&mut t, version_1, (0x1000, 0x2000, 0x3000));
        assert!(t.is_active());
        let st = t.save();
        assert!(!t.is_active(), "stopped while the snapshot is written");
        t.resume();
        assert!(t.is_active());
        assert_eq!(
            act.load(Ordering::SeqCst),
            2,
            "served again after the snapshot"
        );
        assert_eq!(st.status, S_OK);
        assert_eq!(st.driver_features, version_1);
        assert_eq!(st.queues[0].size, 16);
        assert_eq!(st.queues[0].desc_table, 0x1000);
        assert!(st.queues[0].ready);

        // Into a new transport (a restore): the driver's registers read back, and the
        // device serves without a new negotiation.
        let (mut t2, act2, _) = transport();
        t2.restore(&st).expect("restore");
        assert!(t2.is_active());
        assert_eq!(act2.load(Ordering::SeqCst), 1);
        assert_eq!(rd(&mut t2, VIRTIO_MMIO_STATUS), S_OK);
        assert_eq!(rd(&mut t2, VIRTIO_MMIO_QUEUE_READY), 1);
        let json = serde_json::to_string(&st).expect("serialize");
        let back: TransportState = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, st);

        // A state for another device, or with rings outside memory, is refused.
        let mut other = st.clone();
        other.device_type += 1;
        assert!(matches!(
            t2.restore(&other),
            Err(VirtioError::StateMismatch { .. })
        ));
        let mut far = st.clone();
        far.queues[0].used_ring = 1 << 40;
        assert!(t2.restore(&far).is_err());
        assert!(!t2.is_active());
        let mut odd = st;
        odd.queues[0].size = 3;
        assert!(t2.restore(&odd).is_err());
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _, _) = transport();
        assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_VENDOR_ID), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0, "no queue 1");
        // Misaligned and narrow register reads give 0; config space takes any width.
        let mut b = [0xffu8; 2];
        t.read(1, &mut b);
        assert_eq!(b, [0, 0]);
        let mut c = [0u8; 4];
        t.read(u64::from(VIRTIO_MMIO_CONFIG) + 1, &mut c);
        assert_eq!(c, [0xbb, 0, 0, 0]);
    }

    #[test]
    fn feature_negotiation_with_selectors() {
        let (mut t, act, _) = transport();
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1 << 5);
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(
            rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES),
            1,
            "VERSION_1 is bit 32"
        );
        wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0);

        // Features before DRIVER are ignored.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0xffff_ffff);
        wr(&mut t, VIRTIO_MMIO_STATUS, S_ACK);
        wr(&mut t, VIRTIO_MMIO_STATUS, S_DRV);
        // A feature not offered: FEATURES_OK is refused.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, (1 << 5) | (1 << 7));
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut t, VIRTIO_MMIO_STATUS, S_FEAT);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_DRV);
        // Without VERSION_1 (a legacy driver): refused too.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << 5);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
        wr(&mut t, VIRTIO_MMIO_STATUS, S_FEAT);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_DRV);
        // Offered features: accepted, and then frozen.
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut t, VIRTIO_MMIO_STATUS, S_FEAT);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_FEAT);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 3);
        assert_eq!(t.driver_features, (1 << 32) | (1 << 5));
        assert_eq!(act.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn activation_and_reset() {
        let (mut t, act, resets) = transport();
        bring_up(&mut t, (1 << 32) | (1 << 5), (0x1000, 0x2000, 0x3000));
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_OK);
        assert_eq!(act.load(Ordering::SeqCst), 1);
        assert!(t.is_active());
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
        // Queue set-up after DRIVER_OK is ignored.
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        assert_eq!(t.queues[0].size(), 16);
        // Interrupt status and acknowledgement.
        t.interrupt.signal_used_queue().expect("irq");
        t.interrupt.signal_config().expect("irq");
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 3);
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 2);
        // A status that drops bits is ignored; 0 resets.
        wr(&mut t, VIRTIO_MMIO_STATUS, S_ACK);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_OK);
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        assert!(!t.is_active());
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(t.driver_features, 0);
        // And it comes up again.
        bring_up(&mut t, 1 << 32, (0x1000, 0x2000, 0x3000));
        assert_eq!(act.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn rings_outside_memory_are_not_activated() {
        let (mut t, act, _) = transport();
        bring_up(&mut t, 1 << 32, (0x1000, 0x2000, 0x10_0000));
        assert_eq!(act.load(Ordering::SeqCst), 0);
        assert!(!t.is_active());
        assert_ne!(
            rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        // A queue size that is not a power of two is refused.
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        wr(&mut t, VIRTIO_MMIO_STATUS, S_ACK);
        wr(&mut t, VIRTIO_MMIO_STATUS, S_DRV);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
        wr(&mut t, VIRTIO_MMIO_STATUS, S_FEAT);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 12);
        assert_eq!(t.queues[0].size(), 16);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 64);
        assert_eq!(t.queues[0].size(), 16);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 8);
        assert_eq!(t.queues[0].size(), 8);
    }

    #[test]
    fn notify_on_the_bus_reaches_the_eventfd() {
        let (mut t, _, _) = transport();
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert!(t.notifiers[0].read().is_err(), "not before DRIVER_OK");
        bring_up(&mut t, 1 << 32, (0x1000, 0x2000, 0x3000));
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7);
        assert_eq!(t.notifiers[0].read().expect("notified"), 1);
    }
}
