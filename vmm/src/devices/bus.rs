//! The VM's buses: port-I/O and MMIO devices registered by address range, looked up on
//! each vCPU exit. Addresses with no device read as all ones and drop writes, like a
//! floating bus.

use std::sync::{Arc, Mutex};

/// A device reached through port I/O.
pub trait PioDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A device reached through memory-mapped I/O.
pub trait MmioDevice: Send {
    /// Guest reads `data.len()` bytes at `offset` from the device's base address.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors while registering devices.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim the same addresses (or a range wraps around).
    #[error("address range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// First address (or port).
        base: u64,
        /// Number of addresses.
        len: u64,
    },
}

/// Devices by address range: `[base, base + len)`, never overlapping.
struct Ranges<D: ?Sized> {
    devices: Vec<(u64, u64, Arc<Mutex<D>>)>,
}

impl<D: ?Sized> Default for Ranges<D> {
    fn default() -> Self {
        Ranges {
            devices: Vec::new(),
        }
    }
}

impl<D: ?Sized> Clone for Ranges<D> {
    fn clone(&self) -> Self {
        Ranges {
            devices: self.devices.clone(),
        }
    }
}

impl<D: ?Sized> Ranges<D> {
    fn insert(&mut self, base: u64, len: u64, dev: Arc<Mutex<D>>) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::Overlap { base, len })?;
        if self
            .devices
            .iter()
            .any(|(b, l, _)| base < b.saturating_add(*l) && *b < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.push((base, len, dev));
        Ok(())
    }

    /// The device at `addr` and `addr`'s offset in it.
    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<D>>)> {
        self.devices
            .iter()
            .find(|(b, l, _)| addr >= *b && addr - *b < *l)
            .map(|(b, _, d)| (addr - b, d))
    }
}

/// The set of port-I/O devices of a VM.
#[derive(Default, Clone)]
pub struct PioBus {
    devices: Ranges<dyn PioDevice>,
}

impl PioBus {
    /// Adds `dev` on ports `base..base+len`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        dev: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), BusError> {
        self.devices.insert(u64::from(base), u64::from(len), dev)
    }

    /// Dispatches a read; ports with no device read as all ones, like a floating bus.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.devices.find(u64::from(port)) {
            // The offset is below the range's length, itself a u16.
            Some((off, dev)) => lock(dev).read(u16::try_from(off).unwrap_or(u16::MAX), data),
            None => data.fill(0xff),
        }
    }

    /// Dispatches a write; writes to ports with no device are dropped.
    pub fn write(&self, port: u16, data: &[u8]) {
        if let Some((off, dev)) = self.devices.find(u64::from(port)) {
            lock(dev).write(u16::try_from(off).unwrap_or(u16::MAX), data);
        }
    }
}

/// The set of MMIO devices of a VM (the virtio-mmio transports).
#[derive(Default, Clone)]
pub struct MmioBus {
    devices: Ranges<dyn MmioDevice>,
}

impl MmioBus {
    /// Adds `dev` at guest-physical `base..base+len`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn MmioDevice>>,
    ) -> Result<(), BusError> {
        self.devices.insert(base, len, dev)
    }

    /// Dispatches a read; addresses with no device read as all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.devices.find(addr) {
            Some((off, dev)) => lock(dev).read(off, data),
            None => data.fill(0xff),
        }
    }

    /// Dispatches a write; writes to addresses with no device are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((off, dev)) = self.devices.find(addr) {
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

    /// Reads its offset; records writes. On both buses.
    struct Echo(Vec<(u64, u8)>);
    impl MmioDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap_or(0));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data[0]));
        }
    }
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            MmioDevice::read(self, u64::from(offset), data);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            MmioDevice::write(self, u64::from(offset), data);
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

    #[test]
    fn mmio_dispatches_by_range_and_leaves_the_rest_floating() {
        let dev = Arc::new(Mutex::new(Echo(Vec::new())));
        let mut bus = MmioBus::default();
        bus.insert(0xd000_0000, 0x1000, dev.clone())
            .expect("insert");
        assert!(bus.insert(0xd000_0fff, 0x1000, dev.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err(), "wraps");
        assert!(bus.insert(0xe000_0000, 0, dev.clone()).is_err(), "empty");
        bus.insert(0xd000_1000, 0x1000, dev.clone())
            .expect("adjacent is fine");
        let mut b = [0u8; 4];
        bus.read(0xd000_0070, &mut b);
        assert_eq!(b, [0x70; 4]);
        bus.read(0xc000_0000, &mut b);
        assert_eq!(b, [0xff; 4]);
        bus.write(0xd000_1004, &[7]);
        bus.write(0xd000_2000, &[1]);
        assert_eq!(lock(&dev).0, vec![(4, 7)]);
    }
}
