//! Established TCP connections made again with TCP repair (`tcp` records), the way CRIU
//! restores them: a socket in repair mode is bound to the old local address and port,
//! given the old sequence numbers, "connected" to the peer without a handshake, given the
//! options and windows agreed with the peer and a timestamp to go on from, then its queues:
//! the bytes the program had not read go into its receive queue, the bytes the peer had
//! not acknowledged into its send queue. Out of repair mode, what had never been sent is
//! sent. The peer sees nothing but, perhaps, a retransmission.

use std::io;
use std::os::fd::RawFd;

use super::manifest::{PipeRun, TcpRec};
use super::{Error, MemSource};

/// `TCP_REPAIR`, `TCP_REPAIR_QUEUE`, `TCP_QUEUE_SEQ`, `TCP_REPAIR_OPTIONS`,
/// `TCP_TIMESTAMP`, `TCP_REPAIR_WINDOW` (linux/tcp.h).
const TCP_REPAIR: libc::c_int = 19;
const TCP_REPAIR_QUEUE: libc::c_int = 20;
const TCP_QUEUE_SEQ: libc::c_int = 21;
const TCP_REPAIR_OPTIONS: libc::c_int = 22;
const TCP_TIMESTAMP: libc::c_int = 24;
const TCP_REPAIR_WINDOW: libc::c_int = 29;
/// Queues of `TCP_REPAIR_QUEUE`.
const TCP_RECV_QUEUE: libc::c_int = 1;
const TCP_SEND_QUEUE: libc::c_int = 2;
/// `TCPOPT_*` codes of `TCP_REPAIR_OPTIONS`.
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;

/// A socket closed unless kept.
struct Sock(RawFd);

impl Drop for Sock {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: closes the descriptor this guard owns.
            unsafe { libc::close(self.0) };
        }
    }
}

impl Sock {
    fn set<T>(&self, level: libc::c_int, opt: libc::c_int, v: &T, what: &str) -> Result<(), Error> {
        let len = libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0);
        // SAFETY: setsockopt reads `len` bytes of `v`, which lives across the call.
        let r = unsafe { libc::setsockopt(self.0, level, opt, (v as *const T).cast(), len) };
        if r != 0 {
            return Err(Error::os(what.to_owned(), io::Error::last_os_error()));
        }
        Ok(())
    }

    fn tcp<T>(&self, opt: libc::c_int, v: &T, what: &str) -> Result<(), Error> {
        self.set(libc::IPPROTO_TCP, opt, v, what)
    }

    /// Sends all of `bytes` (in repair mode: into the chosen queue).
    fn send_all(&self, mut bytes: &[u8], what: &str) -> Result<(), Error> {
        while !bytes.is_empty() {
            // SAFETY: sends from a live slice.
            let n = unsafe {
                libc::send(
                    self.0,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return Err(Error::os(
                    format!("{what}: {} bytes left", bytes.len()),
                    io::Error::last_os_error(),
                ));
            }
            bytes = &bytes[usize::try_from(n).unwrap_or(bytes.len())..];
        }
        Ok(())
    }
}

/// The bytes of `runs` from the old memory.
fn bytes_of(runs: &[PipeRun], mem: &MemSource) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    for r in runs {
        let m = mem.map(r.gpa, r.len)?;
        out.extend_from_slice(m.bytes());
    }
    Ok(out)
}

/// A `sockaddr_in` or `sockaddr_in6` for `addr`/`port` (family 10: IPv6), as raw bytes.
fn sockaddr(family: u32, addr: &[u8; 16], port: u16) -> Vec<u8> {
    if family == 10 {
        // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid start.
        let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        a.sin6_family = 10;
        a.sin6_port = port.to_be();
        a.sin6_addr.s6_addr = *addr;
        // SAFETY: views the local struct as its bytes.
        unsafe {
            std::slice::from_raw_parts((&raw const a).cast::<u8>(), std::mem::size_of_val(&a))
        }
        .to_vec()
    } else {
        // SAFETY: as above, for sockaddr_in.
        let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        a.sin_family = 2;
        a.sin_port = port.to_be();
        a.sin_addr.s_addr = u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]);
        // SAFETY: views the local struct as its bytes.
        unsafe {
            std::slice::from_raw_parts((&raw const a).cast::<u8>(), std::mem::size_of_val(&a))
        }
        .to_vec()
    }
}

/// Makes the connection of `t` again; its descriptor at `above` or higher.
pub fn make(t: &TcpRec, above: RawFd, mem: &MemSource) -> Result<RawFd, Error> {
    let family = if t.family == 10 {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let recv = bytes_of(&t.recv, mem)?;
    let send = bytes_of(&t.send, mem)?;
    let unacked = usize::try_from(t.snd_nxt().wrapping_sub(t.snd_una()))
        .unwrap_or(0)
        .min(send.len());
    // SAFETY: a new socket; the guard owns it.
    let s = Sock(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) });
    if s.0 < 0 {
        return Err(Error::os("socket", io::Error::last_os_error()));
    }
    let on: libc::c_int = 1;
    // Repair mode forces port reuse (the listener of the same port is bound already);
    // SO_REUSEADDR after it would take that back.
    s.tcp(TCP_REPAIR, &on, "TCP_REPAIR")?;
    // Room for both queues whatever the defaults (the agent is root).
    let room = libc::c_int::try_from(send.len().max(recv.len()).saturating_mul(2) + 65536)
        .unwrap_or(libc::c_int::MAX);
    s.set(
        libc::SOL_SOCKET,
        libc::SO_SNDBUFFORCE,
        &room,
        "SO_SNDBUFFORCE",
    )?;
    s.set(
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &room,
        "SO_RCVBUFFORCE",
    )?;
    let local = sockaddr(t.family, &t.local, t.local_port);
    let len = libc::socklen_t::try_from(local.len()).unwrap_or(0);
    // SAFETY: binds to the address bytes, of the size given.
    if unsafe { libc::bind(s.0, local.as_ptr().cast(), len) } != 0 {
        return Err(Error::os(
            format!("bind to port {}", t.local_port),
            io::Error::last_os_error(),
        ));
    }
    let recv_seq = t
        .rcv_nxt()
        .wrapping_sub(u32::try_from(recv.len()).unwrap_or(0));
    s.tcp(TCP_REPAIR_QUEUE, &TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE")?;
    s.tcp(TCP_QUEUE_SEQ, &recv_seq, "TCP_QUEUE_SEQ (receive)")?;
    s.tcp(TCP_REPAIR_QUEUE, &TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
    s.tcp(TCP_QUEUE_SEQ, &t.snd_una(), "TCP_QUEUE_SEQ (send)")?;
    let remote = sockaddr(t.family, &t.remote, t.remote_port);
    // SAFETY: connects to the address bytes (in repair mode: no handshake).
    if unsafe { libc::connect(s.0, remote.as_ptr().cast(), len) } != 0 {
        return Err(Error::os(
            format!("connect (repair) to port {}", t.remote_port),
            io::Error::last_os_error(),
        ));
    }
    let mut opts: Vec<[u32; 2]> = Vec::new();
    if t.mss() > 0 {
        opts.push([TCPOPT_MSS, t.mss()]);
    }
    if t.opts() & 4 != 0 {
        opts.push([TCPOPT_WINDOW, t.snd_wscale() | t.rcv_wscale() << 16]);
    }
    if t.opts() & 2 != 0 {
        opts.push([TCPOPT_SACK_PERM, 0]);
    }
    if t.opts() & 1 != 0 {
        opts.push([TCPOPT_TIMESTAMP, 0]);
    }
    if !opts.is_empty() {
        let len = libc::socklen_t::try_from(opts.len() * 8).unwrap_or(0);
        // SAFETY: setsockopt reads `len` bytes of the option pairs.
        let r = unsafe {
            libc::setsockopt(
                s.0,
                libc::IPPROTO_TCP,
                TCP_REPAIR_OPTIONS,
                opts.as_ptr().cast(),
                len,
            )
        };
        if r != 0 {
            return Err(Error::os("TCP_REPAIR_OPTIONS", io::Error::last_os_error()));
        }
    }
    if t.opts() & 1 != 0 {
        // One past the last timestamp the dead kernel could have sent.
        s.tcp(
            TCP_TIMESTAMP,
            &t.timestamp().wrapping_add(1),
            "TCP_TIMESTAMP",
        )?;
    }
    s.tcp(TCP_REPAIR_QUEUE, &TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE")?;
    s.send_all(&recv, "receive queue")?;
    s.tcp(TCP_REPAIR_QUEUE, &TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE")?;
    s.send_all(&send[..unacked], "send queue")?;
    s.tcp(TCP_REPAIR_WINDOW, &t.window(), "TCP_REPAIR_WINDOW")?;
    let off: libc::c_int = 0;
    s.tcp(TCP_REPAIR, &off, "TCP_REPAIR off")?;
    // What the program had written and the dead kernel had not sent yet: sent now.
    s.send_all(&send[unacked..], "unsent data")?;
    // SAFETY: duplicates the descriptor the guard owns.
    let high = unsafe { libc::fcntl(s.0, libc::F_DUPFD_CLOEXEC, above) };
    if high < 0 {
        return Err(Error::os(
            format!("move above fd {above}"),
            io::Error::last_os_error(),
        ));
    }
    Ok(high)
}
