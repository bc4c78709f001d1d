//! 16550A serial ports (vm-superio), raising their interrupt through an irqfd.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::{lock, PioDevice};

/// Errors of the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// The input FIFO is full or the interrupt could not be raised.
    #[error("serial input failed")]
    Input(#[source] vm_superio::serial::Error<std::io::Error>),
    /// A snapshot's serial state is invalid (more bytes than the FIFO holds).
    #[error("invalid serial state")]
    State(#[source] vm_superio::serial::Error<std::io::Error>),
    /// An eventfd of the port could not be made.
    #[error("serial {0} eventfd")]
    EventFd(&'static str, #[source] std::io::Error),
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

/// Tells the VMM (through an eventfd) that the guest has emptied the input FIFO, so that
/// the next bytes waiting for the guest go in at once instead of being dropped or waiting
/// for a tick.
pub struct RoomEvents(Option<EventFd>);

impl SerialEvents for RoomEvents {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(e) = &self.0 {
            // A full eventfd counter still wakes the loop.
            let _ = e.write(1);
        }
    }
}

/// A serial port on the port-I/O bus.
pub struct SerialPort {
    inner: Serial<IrqTrigger, RoomEvents, SerialOut>,
    room: Option<EventFd>,
}

fn clone_room(room: Option<&EventFd>) -> Result<Option<EventFd>, SerialError> {
    room.map(EventFd::try_clone)
        .transpose()
        .map_err(|e| SerialError::EventFd("room", e))
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
    /// A fresh port; `room` (if any) is written whenever the guest empties the input FIFO.
    pub fn new(irq: EventFd, room: Option<EventFd>, out: SerialOut) -> Result<Self, SerialError> {
        let events = RoomEvents(clone_room(room.as_ref())?);
        Ok(SerialPort {
            inner: Serial::with_events(IrqTrigger(irq), events, out),
            room,
        })
    }

    /// A port in a saved state.
    pub fn from_snapshot(
        s: &SerialSnapshot,
        irq: EventFd,
        room: Option<EventFd>,
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
        let events = RoomEvents(clone_room(room.as_ref())?);
        let inner =
            Serial::from_state(&state, IrqTrigger(irq), events, out).map_err(SerialError::State)?;
        Ok(SerialPort { inner, room })
    }

    /// Loads a saved register state, keeping this port's interrupt line and output.
    pub fn replace_state(&mut self, s: &SerialSnapshot) -> Result<(), SerialError> {
        let irq = self
            .inner
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| SerialError::EventFd("interrupt", e))?;
        let placeholder_irq = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| SerialError::EventFd("placeholder interrupt", e))?;
        let placeholder = Serial::with_events(
            IrqTrigger(placeholder_irq),
            RoomEvents(None),
            Box::new(std::io::sink()) as SerialOut,
        );
        let old = std::mem::replace(&mut self.inner, placeholder);
        let out = old.into_writer();
        let room = self.room.take();
        *self = SerialPort::from_snapshot(s, irq, room, out)?;
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
            .map_err(SerialError::Input)
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

/// The bytes waiting for room in one port's input FIFO, and the event that says the
/// guest has read the FIFO empty: the event-manager subscriber of that endpoint. The
/// console's stdin reader and the VMM's agent channel push into it; it moves what fits
/// into the FIFO at once and the rest when the guest makes room.
pub struct SerialInput {
    port: Arc<Mutex<SerialPort>>,
    room: EventFd,
    pending: VecDeque<u8>,
    max: usize,
}

impl SerialInput {
    /// Input for `port`, woken by `room`, holding at most `max` bytes that do not fit yet.
    pub fn new(port: Arc<Mutex<SerialPort>>, room: EventFd, max: usize) -> Self {
        SerialInput {
            port,
            room,
            pending: VecDeque::new(),
            max,
        }
    }

    /// Queues `bytes` for the guest and moves what fits into the FIFO; returns how many
    /// were taken (bytes past `max` waiting are dropped, as a terminal drops what the other
    /// side does not read).
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let room = self.max.saturating_sub(self.pending.len());
        let taken = bytes.len().min(room);
        self.pending.extend(&bytes[..taken]);
        self.flush();
        taken
    }

    /// Forgets what is waiting (the guest that was to read it is gone).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Bytes still waiting for room.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Moves as many waiting bytes into the FIFO as fit, in order.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut port = lock(&self.port);
        let n = port.input_room().min(self.pending.len());
        if n == 0 {
            return;
        }
        let chunk: Vec<u8> = self.pending.drain(..n).collect();
        let taken = port.input(&chunk).unwrap_or(0);
        // Put back what did not fit, in order.
        for b in chunk[taken..].iter().rev() {
            self.pending.push_front(*b);
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.room.read();
        self.flush();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.room, EventSet::IN)) {
            eprintln!("owvmm: serial input not registered: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let room = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut port = SerialPort::new(
            irq.try_clone().expect("clone"),
            Some(room.try_clone().expect("clone")),
            Box::new(sink.clone()),
        )
        .expect("port");
        for b in b"hi" {
            port.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().expect("lock"), b"hi");
        port.write(1, &[1]); // enable RX interrupt
        assert_eq!(port.input(b"xyz").expect("input"), 3);
        let snap = port.snapshot();
        assert_eq!(snap.in_buffer, b"xyz");
        let mut again = SerialPort::from_snapshot(
            &snap,
            irq,
            Some(room.try_clone().expect("clone")),
            Box::new(std::io::sink()),
        )
        .expect("restore");
        let mut b = [0u8];
        assert!(
            room.read().is_err(),
            "no room event before the FIFO is empty"
        );
        for want in b"xyz" {
            again.read(0, &mut b);
            assert_eq!(b[0], *want);
        }
        // The guest emptied the FIFO: the VMM is told there is room.
        assert_eq!(room.read().expect("room event"), 1);
        assert_eq!(again.snapshot().interrupt_enable, 1);
    }

    #[test]
    fn input_waits_for_room_and_is_bounded() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let room = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let port = Arc::new(Mutex::new(
            SerialPort::new(
                irq,
                Some(room.try_clone().expect("clone")),
                Box::new(std::io::sink()),
            )
            .expect("port"),
        ));
        let fifo = lock(&port).input_room();
        let mut input = SerialInput::new(port.clone(), room, fifo + 10);
        let data: Vec<u8> = (0..=255u8).cycle().take(fifo + 20).collect();
        // FIFO full and `max` bytes waiting: the last ten bytes are dropped.
        assert_eq!(input.push(&data), fifo + 10);
        assert_eq!(input.pending(), 10);
        let mut b = [0u8];
        for want in &data[..fifo] {
            lock(&port).read(0, &mut b);
            assert_eq!(b[0], *want);
        }
        // The guest emptied the FIFO: the room event moves the rest in, in order.
        input.room.read().expect("room event");
        input.flush();
        assert_eq!(input.pending(), 0);
        for want in &data[fifo..fifo + 10] {
            lock(&port).read(0, &mut b);
            assert_eq!(b[0], *want);
        }
    }
}
