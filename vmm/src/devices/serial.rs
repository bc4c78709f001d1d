//! 16550A serial ports (vm-superio), raising their interrupt through an irqfd.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::PioDevice;

/// Errors of the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The input FIFO is full or the interrupt could not be raised.
    #[error("serial input failed: {0}")]
    Input(String),
    /// A snapshot's serial state is invalid.
    #[error("invalid serial state: {0}")]
    State(String),
}

/// Raises the device interrupt by writing the irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's output goes.
pub type SerialOut = Box<dyn Write + Send>;

/// A serial port on the port-I/O bus.
pub struct SerialPort {
    inner: Serial<IrqTrigger, NoEvents, SerialOut>,
}

/// The register state of a port, as kept in snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SerialSnapshot {
    /// Divisor latch, low then high.
    pub baud_divisor: [u8; 2],
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes waiting for the guest.
    pub in_buffer: Vec<u8>,
}

impl SerialPort {
    /// A fresh port.
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        SerialPort {
            inner: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// A port in a saved state.
    pub fn from_snapshot(
        s: &SerialSnapshot,
        irq: EventFd,
        out: SerialOut,
    ) -> Result<Self, SerialError> {
        let state = SerialState {
            baud_divisor_low: s.baud_divisor[0],
            baud_divisor_high: s.baud_divisor[1],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let inner = Serial::from_state(&state, IrqTrigger(irq), NoEvents, out)
            .map_err(|e| SerialError::State(format!("{e:?}")))?;
        Ok(SerialPort { inner })
    }

    /// Loads a saved register state, keeping this port's interrupt line and output.
    pub fn replace_state(&mut self, s: &SerialSnapshot) -> Result<(), SerialError> {
        let irq = self
            .inner
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| SerialError::State(e.to_string()))?;
        let placeholder_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(|e| SerialError::State(e.to_string()))?;
        let placeholder = Serial::new(
            IrqTrigger(placeholder_irq),
            Box::new(std::io::sink()) as SerialOut,
        );
        let old = std::mem::replace(&mut self.inner, placeholder);
        let out = old.into_writer();
        *self = SerialPort::from_snapshot(s, irq, out)?;
        Ok(())
    }

    /// The state to keep in a snapshot.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Queues bytes for the guest to read; returns how many fit in the FIFO.
    pub fn input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        self.inner
            .enqueue_raw_bytes(bytes)
            .map_err(|e| SerialError::Input(format!("{e:?}")))
    }

    /// Free room in the input FIFO.
    pub fn input_room(&self) -> usize {
        self.inner.fifo_capacity()
    }
}

impl PioDevice for SerialPort {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let Ok(off) = u8::try_from(offset) else {
            data.fill(0xff);
            return;
        };
        if let Some(b) = data.first_mut() {
            *b = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if let (Ok(off), Some(b)) = (u8::try_from(offset), data.first()) {
            // A failed interrupt or output write cannot be reported to the guest.
            let _ = self.inner.write(off, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_input_and_snapshot_round_trip() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let sink = Sink::default();
        let mut port = SerialPort::new(irq.try_clone().expect("clone"), Box::new(sink.clone()));
        for b in b"hi" {
            port.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().expect("lock"), b"hi");
        port.write(1, &[1]); // enable RX interrupt
        assert_eq!(port.input(b"xyz").expect("input"), 3);
        let snap = port.snapshot();
        assert_eq!(snap.in_buffer, b"xyz");
        let mut again =
            SerialPort::from_snapshot(&snap, irq, Box::new(std::io::sink())).expect("restore");
        let mut b = [0u8];
        again.read(0, &mut b);
        assert_eq!(b[0], b'x');
        assert_eq!(again.snapshot().interrupt_enable, 1);
    }
}
