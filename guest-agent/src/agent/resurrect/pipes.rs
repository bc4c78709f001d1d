//! The anonymous pipes of a manifest (`pipe` records), made again before any process:
//! each is a new pipe of the old capacity holding the unread bytes, in order. The agent
//! keeps both ends open at descriptor numbers above every number a process gets, so that
//! each recreated process can `dup3` the ends it had to their old numbers
//! ([`super::restore::Setup`]); the table is dropped (the agent's ends closed) once every
//! process is back, so a reader whose writers did not come back sees end of file.

use std::io;
use std::os::fd::RawFd;

use super::manifest::{FdRec, PipeRec};
use super::{Error, MemSource};

/// Read and write end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    pub read: RawFd,
    pub write: RawFd,
}

/// The pipes made, by id; the agent's ends are closed on drop.
#[derive(Debug, Default)]
pub struct PipeTable {
    pipes: Vec<(u32, Ends)>,
}

impl PipeTable {
    /// Makes every pipe of `pipes`, its ends at `above` or higher, and fills each with its
    /// bytes from `mem`. A pipe that cannot be made is left out, with the reason in the
    /// returned list (its users then fail with "no pipe N").
    pub fn make(pipes: &[PipeRec], above: RawFd, mem: &MemSource) -> (Self, Vec<(u32, Error)>) {
        let mut t = PipeTable::default();
        let mut failed = Vec::new();
        if !pipes.is_empty() {
            raise_fd_limit(above, pipes.len());
        }
        for p in pipes {
            match make_one(p, above, mem) {
                Ok(ends) => t.pipes.push((p.id, ends)),
                Err(e) => failed.push((p.id, e)),
            }
        }
        (t, failed)
    }

    /// The agent's descriptor for the end of pipe `id` that `fd` is (by its access mode).
    pub fn source_for(&self, fd: &FdRec) -> Option<RawFd> {
        let id = fd.pipe_id()?;
        let ends = self.pipes.iter().find(|(i, _)| *i == id)?.1;
        let flags = i32::from_ne_bytes(fd.flags.to_ne_bytes());
        Some(if flags & libc::O_ACCMODE == libc::O_WRONLY {
            ends.write
        } else {
            ends.read
        })
    }

    /// The agent's descriptors, ascending.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self
            .pipes
            .iter()
            .flat_map(|(_, e)| [e.read, e.write])
            .collect();
        v.sort_unstable();
        v
    }

    /// Sets each end's file status flags (`O_NONBLOCK`, `O_APPEND`, ...) from the first
    /// `fd` record that names it: all users of an end share its open file description.
    pub fn set_status_flags<'a>(&self, records: impl Iterator<Item = &'a FdRec>) {
        let mut done: Vec<RawFd> = Vec::new();
        for r in records {
            let Some(src) = self.source_for(r) else {
                continue;
            };
            if done.contains(&src) {
                continue;
            }
            done.push(src);
            let flags = i32::from_ne_bytes(r.flags.to_ne_bytes());
            let status = flags & (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC);
            // SAFETY: fcntl on a descriptor this table owns.
            unsafe { libc::fcntl(src, libc::F_SETFL, status) };
        }
    }
}

impl Drop for PipeTable {
    fn drop(&mut self) {
        for fd in self.fds() {
            // SAFETY: closes a descriptor this table owns, once.
            unsafe { libc::close(fd) };
        }
    }
}

/// The highest descriptor number any process of the manifest gets, plus one: where the
/// agent may keep descriptors the processes' `dup3`s do not overwrite. At least 64, so the
/// agent's own low descriptors are not in the way.
pub fn first_free_above<'a>(fds: impl Iterator<Item = &'a FdRec>) -> RawFd {
    fds.map(|f| f.fd)
        .max()
        .unwrap_or(0)
        .saturating_add(2)
        .max(64)
}

/// Makes sure descriptors up to `above + 2 * n` (and the status pipe of an exec) can be
/// opened: the agent is root, so it may raise its own limit.
fn raise_fd_limit(above: RawFd, n: usize) {
    let want = u64::try_from(above)
        .unwrap_or(0)
        .saturating_add(2 * n as u64 + 16);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want;
            lim.rlim_max = lim.rlim_max.max(want);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn make_one(p: &PipeRec, above: RawFd, mem: &MemSource) -> Result<Ends, Error> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(Error::os("pipe2", io::Error::last_os_error()));
    }
    let [r0, w0] = fds;
    let close = |fds: &[RawFd]| {
        for &fd in fds {
            // SAFETY: closes descriptors made here.
            unsafe { libc::close(fd) };
        }
    };
    let result = (|| {
        let size = libc::c_int::try_from(p.size)
            .map_err(|_| Error::Invalid(format!("pipe {}: size {:#x}", p.id, p.size)))?;
        // SAFETY: fcntl on the pipe just made.
        let got = unsafe { libc::fcntl(w0, libc::F_SETPIPE_SZ, size) };
        let data = p.data_len();
        if got < 0 {
            // The default capacity may still take the data (the old size was only bigger).
            // SAFETY: as above.
            let cur = unsafe { libc::fcntl(w0, libc::F_GETPIPE_SZ) };
            if u64::try_from(cur).unwrap_or(0) < data {
                return Err(Error::os(
                    format!("pipe {}: F_SETPIPE_SZ {size}", p.id),
                    io::Error::last_os_error(),
                ));
            }
        }
        for run in &p.data {
            let m = mem.map(run.gpa, run.len)?;
            let mut left = m.bytes();
            while !left.is_empty() {
                // SAFETY: writes from the mapping, which lives across the call.
                let n = unsafe { libc::write(w0, left.as_ptr().cast(), left.len()) };
                if n <= 0 {
                    return Err(Error::os(
                        format!("pipe {}: write {} bytes", p.id, left.len()),
                        io::Error::last_os_error(),
                    ));
                }
                left = &left[usize::try_from(n).unwrap_or(left.len())..];
            }
        }
        let high = |fd: RawFd| {
            // SAFETY: duplicates a descriptor made here.
            let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
            if h < 0 {
                Err(Error::os(
                    format!("pipe {}: move above fd {above}", p.id),
                    io::Error::last_os_error(),
                ))
            } else {
                Ok(h)
            }
        };
        let read = high(r0)?;
        let write = match high(w0) {
            Ok(w) => w,
            Err(e) => {
                close(&[read]);
                return Err(e);
            }
        };
        // Blocking, as pipe(2) makes them, until a record says otherwise.
        for fd in [read, write] {
            // SAFETY: fcntl on descriptors made here.
            unsafe { libc::fcntl(fd, libc::F_SETFL, 0) };
        }
        Ok(Ends { read, write })
    })();
    close(&[r0, w0]);
    result
}
