//! The pvpanic device, as QEMU's ISA `pvpanic` (one I/O port, 0x505 by default): the
//! guest kernel's pvpanic driver (Linux `drivers/misc/pvpanic`, ACPI id `QEMU0001`) reads
//! the events the device supports once when it binds, and writes an event from its panic
//! notifier. A write with `PVPANIC_PANICKED` is the VMM's first-hand word that the guest
//! kernel panicked: the event loop hears of it through an eventfd (as of a reset from the
//! i8042).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::bus::PioDevice;

/// The I/O port of the device (QEMU's default `ioport` of `pvpanic`).
pub const PVPANIC_PORT: u16 = 0x505;
/// The guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest kernel loaded a kdump crash kernel and is about to run it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
/// The events this device supports (what a read returns).
pub const PVPANIC_EVENTS: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

/// What the device has seen, shared with the event loop.
#[derive(Debug, Default)]
pub struct PvPanicState {
    probed: AtomicBool,
    panicked: AtomicBool,
    crash_loaded: AtomicBool,
}

impl PvPanicState {
    /// The guest read the supported events: a pvpanic driver bound to the device, so a
    /// panic will be reported here (unless the kernel dies before its panic notifiers).
    pub fn probed(&self) -> bool {
        self.probed.load(Ordering::Acquire)
    }

    /// A `PVPANIC_PANICKED` event arrived since the last [`PvPanicState::clear`].
    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::Acquire)
    }

    /// A `PVPANIC_CRASH_LOADED` event arrived since the last [`PvPanicState::clear`].
    pub fn crash_loaded(&self) -> bool {
        self.crash_loaded.load(Ordering::Acquire)
    }

    /// Forgets the events (after a crash was handled: the next kernel reports its own).
    /// `probed` stays: a crash kernel restored from a standby bound its driver before its
    /// snapshot was taken and does not read the port again.
    pub fn clear(&self) {
        self.panicked.store(false, Ordering::Release);
        self.crash_loaded.store(false, Ordering::Release);
    }

    /// Marks the driver as bound (a guest restored from a snapshot probed it before).
    pub fn set_probed(&self) {
        self.probed.store(true, Ordering::Release);
    }
}

/// The device on the port-I/O bus.
pub struct PvPanic {
    state: Arc<PvPanicState>,
    evt: EventFd,
}

impl PvPanic {
    /// A device that records events in `state` and writes `evt` on a panic.
    pub fn new(state: Arc<PvPanicState>, evt: EventFd) -> Self {
        PvPanic { state, evt }
    }
}

impl PioDevice for PvPanic {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = PVPANIC_EVENTS;
                self.state.probed.store(true, Ordering::Release);
            }
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&events) = data.first().filter(|_| offset == 0) else {
            return;
        };
        if events & PVPANIC_CRASH_LOADED != 0 {
            self.state.crash_loaded.store(true, Ordering::Release);
        }
        if events & PVPANIC_PANICKED != 0 {
            // The flag first: the event loop reads it when the eventfd fires, and also
            // when a reset arrives before the eventfd was served.
            self.state.panicked.store(true, Ordering::Release);
            // If the eventfd is full a panic is already pending.
            let _ = self.evt.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (PvPanic, Arc<PvPanicState>, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let state = Arc::new(PvPanicState::default());
        let dev = PvPanic::new(state.clone(), evt.try_clone().expect("clone"));
        (dev, state, evt)
    }

    #[test]
    fn read_returns_the_supported_events_and_marks_probed() {
        let (mut dev, state, _evt) = device();
        assert!(!state.probed());
        let mut b = [0xffu8; 1];
        dev.read(0, &mut b);
        assert_eq!(b[0], PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
        assert_eq!(b[0], 3);
        assert!(state.probed());
        // A wider read returns the bitmap in its low byte only.
        let mut w = [0xffu8; 2];
        dev.read(0, &mut w);
        assert_eq!(w, [3, 0]);
    }

    #[test]
    fn panicked_write_signals_the_event_loop() {
        let (mut dev, state, evt) = device();
        dev.write(0, &[PVPANIC_PANICKED]);
        assert!(state.panicked());
        assert_eq!(evt.read().expect("panic signalled"), 1);
        state.clear();
        assert!(!state.panicked());
    }

    #[test]
    fn crash_loaded_is_recorded_but_is_no_panic() {
        let (mut dev, state, evt) = device();
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        assert!(state.crash_loaded());
        assert!(!state.panicked());
        assert!(evt.read().is_err(), "crash-loaded must not signal a panic");
        dev.write(0, &[PVPANIC_CRASH_LOADED | PVPANIC_PANICKED]);
        assert!(state.panicked());
        assert_eq!(evt.read().expect("panic"), 1);
    }

    #[test]
    fn other_writes_are_ignored() {
        let (mut dev, state, evt) = device();
        dev.write(0, &[0]);
        dev.write(0, &[]);
        dev.write(1, &[PVPANIC_PANICKED]);
        assert!(!state.panicked());
        assert!(evt.read().is_err());
    }

    #[test]
    fn clear_keeps_probed() {
        let (mut dev, state, _evt) = device();
        let mut b = [0u8; 1];
        dev.read(0, &mut b);
        dev.write(0, &[PVPANIC_PANICKED]);
        state.clear();
        assert!(state.probed());
        assert!(!state.panicked() && !state.crash_loaded());
    }
}
