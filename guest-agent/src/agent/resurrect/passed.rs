//! Descriptors in flight on a Unix socket (`SCM_RIGHTS`): a message queued with files
//! attached goes back in with the same files attached, so the process that reads it after
//! the recovery receives them as it would have. Each file is one the agent holds already
//! (a pipe end, a socket, a pty end: the same open file description its other holders get)
//! or one it opens for the message (a file by its path, at its old position; a memory file).
//!
//! A Unix socket that is itself in flight must exist before the message that carries it
//! is queued: [`order`] makes the pairs in an order where each one's passed sockets come
//! first.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt as _;

use super::manifest::{FdKind, FdRec, UnixRec};
use super::pipes::PipeTable;
use super::{text, Error};

/// A descriptor to pass: one of the agent's tables, or opened for the message (closed on
/// drop).
#[derive(Debug)]
pub(super) enum Held {
    /// Owned by the agent's tables.
    Table(RawFd),
    /// Opened for this message.
    Opened(RawFd),
}

impl Held {
    /// The descriptor.
    pub(super) fn fd(&self) -> RawFd {
        match *self {
            Held::Table(fd) | Held::Opened(fd) => fd,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Opened(fd) = *self {
            // SAFETY: closes a descriptor opened for this message only.
            unsafe { libc::close(fd) };
        }
    }
}

/// The descriptor to pass for `r`: `pair` holds the ends of the socket pair being made
/// (a socket may be in flight on itself or its peer), `table` everything made before.
pub(super) fn open_passed(
    r: &FdRec,
    pair: &[(u32, RawFd)],
    table: &PipeTable,
) -> Result<Held, Error> {
    if let Some(id) = r.unix_id() {
        if let Some(&(_, fd)) = pair.iter().find(|(i, _)| *i == id) {
            return Ok(Held::Table(fd));
        }
    }
    if let Some(fd) = table.source_for(r) {
        return Ok(Held::Table(fd));
    }
    let flags = i32::from_ne_bytes(r.flags.to_ne_bytes());
    let (path, seek) = if let Some(id) = r.shm_id() {
        let p = table
            .shm_path(id)
            .ok_or_else(|| Error::Invalid(format!("memory file {id} was not made")))?;
        (p.to_vec(), true)
    } else if matches!(r.kind, FdKind::Reg | FdKind::Chr | FdKind::Dir) {
        (r.path.clone(), r.kind == FdKind::Reg)
    } else {
        return Err(Error::Invalid(format!(
            "{} {} was not made",
            r.kind.name(),
            text(&r.path)
        )));
    };
    let mut how = (flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL))
        | libc::O_NOCTTY
        | libc::O_CLOEXEC;
    if r.kind == FdKind::Dir {
        how |= libc::O_DIRECTORY;
    }
    let c = CString::new(std::ffi::OsStr::from_bytes(&path).as_bytes())
        .map_err(|_| Error::Invalid(format!("path {} holds a NUL", text(&path))))?;
    // SAFETY: open with a NUL-terminated path that lives across the call.
    let fd = unsafe { libc::open(c.as_ptr(), how) };
    if fd < 0 {
        return Err(Error::os(
            format!("open {}", text(&path)),
            io::Error::last_os_error(),
        ));
    }
    let held = Held::Opened(fd);
    if seek {
        let at = libc::off_t::try_from(r.pos)
            .map_err(|_| Error::Invalid(format!("position {:#x} too large", r.pos)))?;
        // SAFETY: lseek on the descriptor just opened.
        if unsafe { libc::lseek(fd, at, libc::SEEK_SET) } != at {
            return Err(Error::os(
                format!("seek {} to {at}", text(&path)),
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(held)
}

/// Sends the bytes of `iov` on `from` with `fds` attached (`SCM_RIGHTS`; none: a plain
/// message). The bytes sent, or the error.
pub(super) fn send(from: RawFd, iov: &[libc::iovec], fds: &[RawFd]) -> io::Result<usize> {
    let bytes = std::mem::size_of_val(fds);
    let data_len =
        u32::try_from(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let space = if fds.is_empty() {
        0
    } else {
        // SAFETY: CMSG_SPACE only computes a size.
        usize::try_from(unsafe { libc::CMSG_SPACE(data_len) }).unwrap_or(usize::MAX)
    };
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: a zeroed msghdr is a valid empty one; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len();
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: the control buffer holds CMSG_SPACE(data_len) bytes, aligned, so its
        // first header and its data (CMSG_LEN(data_len) bytes) are inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = usize::try_from(libc::CMSG_LEN(data_len)).unwrap_or(0);
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes);
        }
    }
    // SAFETY: msg points at the iovecs, whose buffers the caller keeps alive, and at the
    // control buffer above; the kernel only reads them.
    let n = unsafe { libc::sendmsg(from, &msg, libc::MSG_NOSIGNAL) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// The order to make the connected sockets of `unixes` in (indices; a record made as the
/// peer of an earlier one is not listed again): a pair comes after every other pair whose
/// socket its messages carry. Pairs in a cycle of sockets carrying each other (which the
/// dead kernel's garbage collector would have freed) come last, in file order.
pub(super) fn order(unixes: &[UnixRec]) -> Vec<usize> {
    let peer_of = |u: &UnixRec| {
        unixes
            .iter()
            .position(|p| u.peer != 0 && p.id == u.peer && p.id != u.id)
    };
    let group = |i: usize| -> Vec<usize> {
        let mut g = vec![i];
        g.extend(peer_of(&unixes[i]));
        g
    };
    let mut placed = vec![false; unixes.len()];
    let mut out = Vec::new();
    // Each pass places at least one group, or stops.
    for _ in 0..=unixes.len() {
        let mut progress = false;
        for i in 0..unixes.len() {
            if placed[i] {
                continue;
            }
            let g = group(i);
            let ids: Vec<u32> = g.iter().map(|&j| unixes[j].id).collect();
            let ready = g.iter().flat_map(|&j| unixes[j].passed_unixes()).all(|d| {
                ids.contains(&d)
                    || !unixes
                        .iter()
                        .enumerate()
                        .any(|(k, o)| o.id == d && !placed[k])
            });
            if ready {
                for &j in &g {
                    placed[j] = true;
                }
                out.push(i);
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    for i in 0..unixes.len() {
        if !placed[i] {
            for j in group(i) {
                placed[j] = true;
            }
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::manifest::UnixMsg;
    use super::*;

    fn unix(id: u32, peer: u32, carries: &[u32]) -> UnixRec {
        UnixRec {
            id,
            peer,
            sock_type: 1,
            msgs: vec![UnixMsg {
                data: Vec::new(),
                fds: carries
                    .iter()
                    .enumerate()
                    .map(|(n, c)| FdRec {
                        fd: i32::try_from(n).unwrap_or(0),
                        flags: 2,
                        pos: 0,
                        kind: FdKind::Sock,
                        path: format!("unix:{c}").into_bytes(),
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn a_pair_comes_after_the_sockets_its_messages_carry() {
        // 1-2 carries 5 (of pair 5-6), 5 carries 9 (no peer).
        let u = [
            unix(1, 2, &[5]),
            unix(2, 1, &[]),
            unix(5, 6, &[9]),
            unix(6, 5, &[]),
            unix(9, 0, &[]),
        ];
        assert_eq!(order(&u), vec![4, 2, 0]);
    }

    #[test]
    fn a_socket_carrying_itself_or_its_peer_needs_nothing_else() {
        let u = [unix(1, 2, &[1, 2]), unix(2, 1, &[])];
        assert_eq!(order(&u), vec![0]);
    }

    #[test]
    fn a_cycle_still_makes_every_pair_once() {
        let u = [unix(1, 0, &[3]), unix(3, 0, &[1]), unix(7, 0, &[])];
        assert_eq!(order(&u), vec![2, 0, 1]);
    }

    #[test]
    fn a_socket_not_in_the_list_is_no_dependency() {
        let u = [unix(1, 0, &[40])];
        assert_eq!(order(&u), vec![0]);
    }

    #[test]
    fn passed_descriptors_arrive_with_their_message() {
        let mut sv = [-1; 2];
        // SAFETY: socketpair writes two descriptors.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) };
        assert_eq!(r, 0);
        let mut p = [-1; 2];
        // SAFETY: pipe writes two descriptors.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        let data = b"hello";
        let iov = [libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        }];
        assert_eq!(send(sv[0], &iov, &[p[1]]).expect("send"), 5);
        // Receive: the bytes and one descriptor that writes into the same pipe.
        let mut buf = [0u8; 16];
        let mut riov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        let mut control = [0u64; 8];
        // SAFETY: a zeroed msghdr, then pointed at local buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = riov.as_mut_ptr();
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: recvmsg into the local buffers described by msg.
        let n = unsafe { libc::recvmsg(sv[1], &mut msg, 0) };
        assert_eq!(n, 5);
        assert_eq!(&buf[..5], data);
        // SAFETY: the kernel filled one SCM_RIGHTS header in `control`.
        let got = unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            assert!(!c.is_null());
            assert_eq!((*c).cmsg_type, libc::SCM_RIGHTS);
            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>())
        };
        // SAFETY: writes a byte through the received end and reads it at the pipe's end.
        unsafe {
            assert_eq!(libc::write(got, b"x".as_ptr().cast(), 1), 1);
            let mut b = [0u8; 1];
            assert_eq!(libc::read(p[0], b.as_mut_ptr().cast(), 1), 1);
            assert_eq!(&b, b"x");
            for fd in [sv[0], sv[1], p[0], p[1], got] {
                libc::close(fd);
            }
        }
    }
}
