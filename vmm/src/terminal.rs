//! The host terminal: raw mode while the guest console owns it, and its input.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;
use crate::devices::serial::SerialInput;

/// True when standard input is a terminal.
pub fn is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

/// Raw mode on standard input, undone on drop.
pub struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    /// Enters raw mode when standard input is a terminal; does nothing otherwise.
    pub fn enter() -> Self {
        if !is_tty() {
            return RawMode { saved: None };
        }
        // SAFETY: termios is plain data; zeroed is a valid value to be filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is a terminal and `t` is a valid termios to fill.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return RawMode { saved: None };
        }
        let saved = t;
        // SAFETY: `t` is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: fd 0 is a terminal and `t` a valid termios.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the settings read from the same terminal.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}

/// Standard input to the guest console, with the `Ctrl-A` escapes: the event-manager
/// subscriber of fd 0. `Ctrl-A x` writes `stop` (the VMM ends the run); `Ctrl-A Ctrl-A`
/// sends one `Ctrl-A`. Escapes are read only when standard input is a terminal.
pub struct ConsoleInput {
    console: Arc<Mutex<SerialInput>>,
    stop: EventFd,
    ctrl_a: bool,
}

impl ConsoleInput {
    /// Feeds `console`; writes `stop` on `Ctrl-A x`.
    pub fn new(console: Arc<Mutex<SerialInput>>, stop: EventFd) -> Self {
        ConsoleInput {
            console,
            stop,
            ctrl_a: false,
        }
    }

    /// The bytes of `input` meant for the guest; `true` when `Ctrl-A x` was seen (what
    /// follows it is not sent).
    fn unescape(&mut self, input: &[u8], tty: bool, out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.ctrl_a {
                self.ctrl_a = false;
                if b == b'x' || b == b'X' {
                    return true;
                }
                out.push(b);
            } else if b == 0x01 && tty {
                self.ctrl_a = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 1024];
        // SAFETY: reads into a local buffer of the given length from fd 0.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else {
            return; // EAGAIN or EINTR: the next event comes
        };
        if n == 0 {
            // End of input: the guest keeps running without a console reader.
            let _ = ops.remove(events);
            return;
        }
        let mut out = Vec::with_capacity(n);
        let stop = self.unescape(&buf[..n], is_tty(), &mut out);
        lock(&self.console).push(&out);
        if stop {
            let _ = self.stop.write(1);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // Not every fd 0 can be polled (a regular file cannot): then there is no console
        // input, as with a closed one.
        let _ = ops.add(Events::with_data_raw(0, 0, EventSet::IN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> ConsoleInput {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let room = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let port = crate::devices::serial::SerialPort::new(irq, None, Box::new(std::io::sink()))
            .expect("port");
        let console = SerialInput::new(Arc::new(Mutex::new(port)), room, 16);
        ConsoleInput::new(
            Arc::new(Mutex::new(console)),
            EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
        )
    }

    #[test]
    fn escapes_on_a_terminal_only() {
        let mut c = input();
        let mut out = Vec::new();
        assert!(!c.unescape(b"a\x01\x01b", true, &mut out));
        assert_eq!(out, b"a\x01b");
        out.clear();
        // The escape may be split over two reads.
        assert!(!c.unescape(b"c\x01", true, &mut out));
        assert!(c.unescape(b"xdropped", true, &mut out));
        assert_eq!(out, b"c");
        out.clear();
        assert!(!c.unescape(b"\x01x", false, &mut out));
        assert_eq!(out, b"\x01x");
    }
}
