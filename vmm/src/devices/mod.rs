//! Emulated devices: the port-I/O and MMIO buses, the serial ports, the reset line, the
//! pvpanic port, the ACPI PM1 registers and the virtio-mmio devices.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
pub mod virtio;
