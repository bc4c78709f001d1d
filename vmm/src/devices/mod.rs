//! Emulated devices: a port-I/O bus, the serial ports and the reset line.

pub mod bus;
pub mod i8042;
pub mod serial;
