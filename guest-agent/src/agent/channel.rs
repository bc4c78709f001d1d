//! The agent channel: a serial line (`/dev/ttyS1`) in raw mode, non-blocking in both
//! directions so that a silent or slow VMM can never stall PID 1.
//!
//! Outgoing lines go through a bounded queue that is flushed when the descriptor is
//! writable; incoming bytes are cut into lines by [`LineReader`].

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use ow_agent::proto::{AgentMsg, MAX_LINE};

use super::sys;

/// Most bytes queued for sending; further messages are dropped whole.
const OUTQ_CAP: usize = 64 * 1024;

/// One unit of input from the VMM.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (without `\n`).
    Text(String),
    /// A line longer than the protocol allows; its length so far.
    TooLong(usize),
    /// A line that is not valid UTF-8.
    NotUtf8,
}

/// Cuts a byte stream into lines, bounding memory: a line longer than
/// [`MAX_LINE`] is discarded up to its `\n` and reported as [`Line::TooLong`].
#[derive(Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// `Some(n)` while discarding an over-long line of which `n` bytes were seen.
    overflow: Option<usize>,
}

impl LineReader {
    /// Feeds bytes and appends every completed line to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Line>) {
        // Allow one byte more than MAX_LINE for a trailing '\r', which the parser strips.
        const KEEP: usize = MAX_LINE + 1;
        while !data.is_empty() {
            let (seg, complete, rest) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], true, &data[i + 1..]),
                None => (data, false, &data[data.len()..]),
            };
            data = rest;
            if let Some(n) = self.overflow.as_mut() {
                *n = n.saturating_add(seg.len());
            } else {
                self.buf.extend_from_slice(seg);
                if self.buf.len() > KEEP {
                    self.overflow = Some(self.buf.len());
                    self.buf.clear();
                }
            }
            if complete {
                if let Some(n) = self.overflow.take() {
                    out.push(Line::TooLong(n));
                } else {
                    let bytes = std::mem::take(&mut self.buf);
                    out.push(match String::from_utf8(bytes) {
                        Ok(s) => Line::Text(s),
                        Err(_) => Line::NotUtf8,
                    });
                }
            }
        }
    }
}

/// The channel to the VMM. It may not be open yet (the device may be missing); messages
/// are queued meanwhile and sent once it opens.
pub struct Channel {
    path: PathBuf,
    fd: Option<OwnedFd>,
    outq: VecDeque<u8>,
    reader: LineReader,
    dropped: u64,
    warned: bool,
}

impl Channel {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            fd: None,
            outq: VecDeque::new(),
            reader: LineReader::default(),
            dropped: 0,
            warned: false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.fd.is_some()
    }

    pub fn raw_fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Tries to open the device (once per call); logs the first failure only.
    pub fn try_open(&mut self) -> bool {
        if self.fd.is_some() {
            return true;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&self.path);
        match file {
            Ok(f) => {
                let fd = OwnedFd::from(f);
                if let Err(e) = sys::set_raw_tty(&fd) {
                    // Not a terminal (e.g. a FIFO in a test): usable all the same.
                    if e.raw_os_error() != Some(libc::ENOTTY) {
                        crate::log!("{}: raw mode: {e}", self.path.display());
                    }
                }
                if self.warned {
                    crate::log!("{}: opened", self.path.display());
                }
                self.fd = Some(fd);
                true
            }
            Err(e) => {
                if !self.warned {
                    crate::log!("cannot open {}: {e} (will retry)", self.path.display());
                    self.warned = true;
                }
                false
            }
        }
    }

    /// Queues a message and tries to send it right away.
    pub fn send(&mut self, msg: &AgentMsg) {
        let line = msg.encode();
        if self.outq.len() + line.len() > OUTQ_CAP {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                crate::log!("channel queue full, {} message(s) dropped", self.dropped);
            }
            return;
        }
        self.outq.extend(line.as_bytes());
        self.flush();
    }

    /// Does the queue hold unsent bytes?
    pub fn wants_write(&self) -> bool {
        self.fd.is_some() && !self.outq.is_empty()
    }

    /// Writes as much of the queue as the descriptor takes without blocking.
    pub fn flush(&mut self) {
        let Some(fd) = self.fd.as_ref() else {
            return;
        };
        while !self.outq.is_empty() {
            let (front, _) = self.outq.as_slices();
            match sys::write(fd, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.outq.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    crate::log!("channel write: {e}");
                    break;
                }
            }
        }
    }

    /// Reads what is available. Returns the completed lines, and whether the channel is
    /// broken (end of file or an error such as a hang-up) and should be reopened.
    pub fn read_lines(&mut self) -> (Vec<Line>, bool) {
        let mut lines = Vec::new();
        let Some(fd) = self.fd.as_ref() else {
            return (lines, false);
        };
        let mut buf = [0u8; 1024];
        // Bounded: a flood of input cannot keep us from the rest of the loop.
        for _ in 0..16 {
            match sys::read(fd, &mut buf) {
                Ok(0) => return (lines, true),
                Ok(n) => self.reader.feed(&buf[..n], &mut lines),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    crate::log!("channel read: {e}");
                    return (lines, true);
                }
            }
        }
        (lines, false)
    }

    /// Closes the descriptor (queued output is kept); [`Channel::try_open`] reopens it.
    pub fn close(&mut self) {
        self.fd = None;
        self.reader = LineReader::default();
        self.warned = true;
    }

    /// Sends everything queued and waits (at most `timeout_ms`) until the terminal has
    /// transmitted it, so that a last message is not lost to an immediate power-off.
    pub fn drain(&mut self, timeout_ms: u64) {
        let Some(raw) = self.raw_fd() else {
            return;
        };
        let deadline = sys::uptime_ms().saturating_add(timeout_ms);
        loop {
            self.flush();
            let now = sys::uptime_ms();
            if now >= deadline {
                return;
            }
            let left = deadline - now;
            if !self.outq.is_empty() {
                let mut pfd = [libc::pollfd {
                    fd: raw,
                    events: libc::POLLOUT,
                    revents: 0,
                }];
                let _ = sys::poll(&mut pfd, left.min(50));
                continue;
            }
            let pending = self.fd.as_ref().map_or(Ok(0), sys::tty_outq).unwrap_or(0);
            if pending == 0 {
                return;
            }
            let mut none: [libc::pollfd; 0] = [];
            let _ = sys::poll(&mut none, left.min(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> Vec<Line> {
        let mut r = LineReader::default();
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c, &mut out);
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        let out = feed_all(&[b"pi", b"ng 7\npoweroff\nti", b"me 1.000000000\n"]);
        assert_eq!(
            out,
            vec![
                Line::Text("ping 7".into()),
                Line::Text("poweroff".into()),
                Line::Text("time 1.000000000".into()),
            ]
        );
    }

    #[test]
    fn keeps_partial_line() {
        assert!(feed_all(&[b"ping 7"]).is_empty());
    }

    #[test]
    fn over_long_line_is_reported_and_skipped() {
        let long = vec![b'x'; 10_000];
        let out = feed_all(&[&long[..3000], &long[3000..], b"\nping 1\n"]);
        assert_eq!(
            out,
            vec![Line::TooLong(10_000), Line::Text("ping 1".into())]
        );
    }

    #[test]
    fn line_of_max_length_passes() {
        let mut line = vec![b'p'; MAX_LINE];
        line.extend_from_slice(b"\r\n");
        let out = feed_all(&[&line]);
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Line::Text(s) if s.len() == MAX_LINE + 1));
    }

    #[test]
    fn invalid_utf8() {
        let out = feed_all(&[b"ping \xff\xfe\nping 2\n"]);
        assert_eq!(out, vec![Line::NotUtf8, Line::Text("ping 2".into())]);
    }
}
