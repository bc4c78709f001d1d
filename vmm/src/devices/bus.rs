//! A port-I/O bus: devices registered by port range, looked up on each exit.

use std::sync::{Arc, Mutex};

/// A device reached through port I/O.
pub trait PioDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// Errors while registering devices.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim the same ports.
    #[error("port range {base:#x}+{len} overlaps another device")]
    Overlap {
        /// First port.
        base: u16,
        /// Number of ports.
        len: u16,
    },
}

type Shared = Arc<Mutex<dyn PioDevice>>;

/// The set of port-I/O devices of a VM.
#[derive(Default, Clone)]
pub struct PioBus {
    devices: Vec<(u16, u16, Shared)>,
}

impl PioBus {
    /// Adds `dev` on ports `base..base+len`.
    pub fn insert(&mut self, base: u16, len: u16, dev: Shared) -> Result<(), BusError> {
        let end = u32::from(base) + u32::from(len);
        if self
            .devices
            .iter()
            .any(|(b, l, _)| u32::from(base) < u32::from(*b) + u32::from(*l) && u32::from(*b) < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.push((base, len, dev));
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(u16, &Shared)> {
        self.devices
            .iter()
            .find(|(b, l, _)| port >= *b && u32::from(port) < u32::from(*b) + u32::from(*l))
            .map(|(b, _, d)| (port - b, d))
    }

    /// Dispatches a read; ports with no device read as all ones, like a floating bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((off, dev)) => lock(dev).read(off, data),
            None => data.fill(0xff),
        }
    }

    /// Dispatches a write; writes to ports with no device are dropped.
    pub fn write(&self, port: u16, data: &[u8]) {
        if let Some((off, dev)) = self.find(port) {
            lock(dev).write(off, data);
        }
    }
}

/// Locks a device, recovering from a poisoned lock (a panicked vCPU thread must not take
/// every other thread with it).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u16, u8)>);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0));
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }

    #[test]
    fn dispatches_by_range_and_refuses_overlap() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut bus = PioBus::default();
        bus.insert(0x3f8, 8, dev.clone()).expect("insert");
        assert!(bus.insert(0x3fc, 8, dev.clone()).is_err());
        bus.insert(0x400, 1, dev.clone()).expect("adjacent is fine");
        let mut b = [0u8; 1];
        bus.read(0x3fb, &mut b);
        assert_eq!(b[0], 3);
        bus.read(0x80, &mut b);
        assert_eq!(b[0], 0xff);
        bus.write(0x3f9, &[42]);
        bus.write(0x81, &[1]);
        assert_eq!(lock(&dev).0, vec![(1, 42)]);
    }
}
