//! Emulated devices: a port-I/O bus, the serial ports, the reset line, the pvpanic port and
//! the ACPI PM1 registers.

pub mod acpi_pm;
pub mod bus;
pub mod i8042;
pub mod pvpanic;
pub mod serial;
