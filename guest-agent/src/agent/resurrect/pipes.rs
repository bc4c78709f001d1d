//! The anonymous pipes (`pipe` records) and the listening or bound IPv4/IPv6 sockets
//! (`inet` records) of a manifest, made again before any process. A pipe is
//! a new pipe of the old capacity holding the unread bytes, in order; a socket is bound to
//! its old address and port (listening with its old backlog). The agent keeps them open at descriptor numbers above every number a process gets, so that
//! each recreated process can `dup3` the ends it had to their old numbers
//! ([`super::restore::Setup`]); the table is dropped (the agent's ends closed) once every
//! process is back, so a reader whose writers did not come back sees end of file.

use std::io;
use std::os::fd::RawFd;

use super::manifest::{
    FdRec, InetRec, PipeRec, PtyRec, ShmRec, ShmRun, TcpRec, TtyRec, UnixListenRec, UnixRec, Vma,
};
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
    inets: Vec<(u32, RawFd)>,
    unixes: Vec<(u32, RawFd)>,
    /// Shared anonymous memory objects: id, memfd, and the path a process opens it by.
    shms: Vec<(u32, RawFd, Vec<u8>)>,
    /// TCP connections that could not be repaired: their holders get a reset one.
    unrepaired: Vec<u32>,
    /// Pseudo-terminal pairs, by id.
    ptys: Vec<(u32, super::ptys::PtyEnds)>,
    /// Other terminals that were a session's controlling terminal: sid, foreground
    /// group, the agent's descriptor.
    consoles: Vec<(i32, i32, RawFd)>,
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

    /// Makes the sockets of `inets` (above `above`), as [`PipeTable::make`] the pipes.
    pub fn make_inets(&mut self, inets: &[InetRec], above: RawFd) -> Vec<(u32, Error)> {
        let mut failed = Vec::new();
        if !inets.is_empty() {
            raise_fd_limit(above, self.pipes.len() + inets.len());
        }
        for s in inets {
            match make_inet(s, above) {
                Ok(fd) => self.inets.push((s.id, fd)),
                Err(e) => failed.push((s.id, e)),
            }
        }
        failed
    }

    /// Makes the connected Unix sockets of `unixes` as socket pairs (above `above`), each
    /// end holding the messages queued for it with the descriptors in flight on them; an
    /// end whose peer no process holds gets a pair whose other end is closed once its
    /// messages are in. Run after everything else a message may carry is made.
    pub fn make_unixes(
        &mut self,
        unixes: &[UnixRec],
        above: RawFd,
        mem: &MemSource,
    ) -> Vec<(u32, Error)> {
        let mut failed = Vec::new();
        if !unixes.is_empty() {
            raise_fd_limit(above, self.pipes.len() + self.inets.len() + unixes.len());
        }
        for i in super::passed::order(unixes) {
            let u = &unixes[i];
            if self.unixes.iter().any(|(i, _)| *i == u.id) {
                continue; // made as the peer of an earlier one
            }
            let peer = unixes
                .iter()
                .find(|p| u.peer != 0 && p.id == u.peer && p.id != u.id);
            match make_unix(u, peer, above, mem, self) {
                Ok((a, b)) => {
                    self.unixes.push((u.id, a));
                    if let (Some(p), Some(b)) = (peer, b) {
                        self.unixes.push((p.id, b));
                    }
                }
                Err(e) => failed.push((u.id, e)),
            }
        }
        failed
    }

    /// Makes the listening Unix sockets of `listens`, bound at their paths again (above
    /// `above`).
    pub fn make_ulistens(&mut self, listens: &[UnixListenRec], above: RawFd) -> Vec<(u32, Error)> {
        let mut failed = Vec::new();
        for l in listens {
            match make_ulisten(l, above) {
                Ok(fd) => self.unixes.push((l.id, fd)),
                Err(e) => failed.push((l.id, e)),
            }
        }
        failed
    }

    /// Makes the established TCP connections of `tcps` again with TCP repair (above
    /// `above`); each is found by its id like an inet socket.
    pub fn make_tcps(
        &mut self,
        tcps: &[TcpRec],
        above: RawFd,
        mem: &MemSource,
    ) -> Vec<(u32, Error)> {
        let mut failed = Vec::new();
        for t in tcps {
            match super::tcp::make(t, above, mem) {
                Ok(fd) => self.inets.push((t.id, fd)),
                Err(e) => {
                    self.unrepaired.push(t.id);
                    failed.push((t.id, e));
                }
            }
        }
        failed
    }

    /// Makes the pseudo-terminal pairs of `ptys` (above `above`); returns what failed and
    /// notes on what is not exactly as it was.
    pub fn make_ptys(
        &mut self,
        ptys: &[PtyRec],
        above: RawFd,
        mem: &MemSource,
    ) -> (Vec<(u32, Error)>, Vec<String>) {
        if !ptys.is_empty() {
            raise_fd_limit(above, self.fds().len() + ptys.len());
        }
        let made = super::ptys::make_all(ptys, above, mem);
        self.ptys = made.ends;
        (made.failed, made.notes)
    }

    /// Puts the settings of each terminal of `ttys` back; keeps (above `above`) one
    /// descriptor of each that was a session's controlling terminal, for that session's
    /// leader to take it again.
    pub fn apply_ttys(&mut self, ttys: &[TtyRec], above: RawFd) -> Vec<Error> {
        let mut failed = Vec::new();
        for t in ttys {
            let fd = match super::ptys::apply_tty(t) {
                Ok(fd) => fd,
                Err(e) => {
                    failed.push(e);
                    continue;
                }
            };
            let sid = i32::try_from(t.sid).unwrap_or(0);
            if sid > 0 && !self.consoles.iter().any(|c| c.0 == sid) {
                match move_above(fd, above, || format!("terminal {}", super::text(&t.path))) {
                    Ok(high) => {
                        self.consoles
                            .push((sid, i32::try_from(t.pgrp).unwrap_or(0), high));
                    }
                    Err(e) => failed.push(e),
                }
            }
            // SAFETY: closes the descriptor apply_tty opened (a copy is kept if wanted).
            unsafe { libc::close(fd) };
        }
        failed
    }

    /// The controlling terminals to take again: for each pty made whose session is
    /// known, and each other terminal kept by [`PipeTable::apply_ttys`], the session id,
    /// the agent's descriptor and the foreground process group.
    pub fn controlling_ttys(&self, ptys: &[PtyRec]) -> Vec<super::tree::Ctty> {
        let consoles = self
            .consoles
            .iter()
            .map(|&(sid, pgrp, fd)| super::tree::Ctty {
                sid,
                slave: fd,
                pgrp,
            });
        ptys.iter()
            .filter(|p| p.sid != 0)
            .filter_map(|p| {
                let ends = self.ptys.iter().find(|(i, _)| *i == p.id)?.1;
                Some(super::tree::Ctty {
                    sid: i32::try_from(p.sid).ok()?,
                    slave: ends.slave,
                    pgrp: i32::try_from(p.pgrp).unwrap_or(0),
                })
            })
            .chain(consoles)
            .collect()
    }

    /// Makes one memory file (memfd) for each shared memory object the areas `vmas` map
    /// or a descriptor holds (`shms`, with their pages, written from `mem`), as long as
    /// the furthest area or the file's size needs; processes map or open it by
    /// [`PipeTable::shm_path`], so what one writes the others see, as before the crash.
    pub fn make_shms<'a>(
        &mut self,
        vmas: impl Iterator<Item = &'a Vma>,
        shms: &[ShmRec],
        mem: &MemSource,
    ) -> Vec<(u32, Error)> {
        let mut sizes: Vec<(u32, u64)> = shms.iter().map(|s| (s.id, s.size)).collect();
        for v in vmas {
            let Some(id) = v.shm_id() else { continue };
            let end = v.pgoff.saturating_add(v.end - v.start);
            match sizes.iter_mut().find(|(i, _)| *i == id) {
                Some(s) => s.1 = s.1.max(end),
                None => sizes.push((id, end)),
            }
        }
        let mut failed = Vec::new();
        for (id, size) in sizes {
            let made = make_shm(size).and_then(|fd| {
                let runs = shms
                    .iter()
                    .find(|s| s.id == id)
                    .map_or(&[][..], |s| &s.data);
                match fill_shm(fd, runs, mem) {
                    Ok(()) => Ok(fd),
                    Err(e) => {
                        // SAFETY: closes the memory file just made, once.
                        unsafe { libc::close(fd) };
                        Err(e)
                    }
                }
            });
            match made {
                Ok(fd) => {
                    let path = format!("/proc/{}/fd/{fd}", std::process::id()).into_bytes();
                    self.shms.push((id, fd, path));
                }
                Err(e) => failed.push((id, e)),
            }
        }
        failed
    }

    /// Closes the agent's pipe ends and sockets (once every process that takes them has
    /// its copies); the shared memory files stay, processes open them while being built.
    pub fn close_handed_out(&mut self) {
        let shms: Vec<RawFd> = self.shms.iter().map(|(_, fd, _)| *fd).collect();
        for fd in self.fds().into_iter().filter(|fd| !shms.contains(fd)) {
            // SAFETY: closes a descriptor this table owns, once (the lists are emptied).
            unsafe { libc::close(fd) };
        }
        self.pipes.clear();
        self.inets.clear();
        self.unixes.clear();
        self.ptys.clear();
        self.consoles.clear();
    }

    /// True when `fd` is a TCP connection whose repair failed.
    pub fn unrepaired(&self, fd: &FdRec) -> bool {
        fd.inet_id().is_some_and(|id| self.unrepaired.contains(&id))
    }

    /// Where a process opens shared memory object `id`.
    pub fn shm_path(&self, id: u32) -> Option<&[u8]> {
        self.shms
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, _, p)| p.as_slice())
    }

    /// The agent's descriptor that `fd` is a copy of: the end of its pipe (by its access
    /// mode), its inet socket, its Unix socket or its end of a pty.
    pub fn source_for(&self, fd: &FdRec) -> Option<RawFd> {
        if let Some((id, master)) = fd.pty_end() {
            let ends = self.ptys.iter().find(|(i, _)| *i == id)?.1;
            return Some(if master { ends.master } else { ends.slave });
        }
        if let Some(id) = fd.unix_id() {
            return self.unixes.iter().find(|(i, _)| *i == id).map(|(_, s)| *s);
        }
        if let Some(id) = fd.inet_id() {
            return self.inets.iter().find(|(i, _)| *i == id).map(|(_, s)| *s);
        }
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
            .chain(self.inets.iter().map(|(_, s)| *s))
            .chain(self.unixes.iter().map(|(_, s)| *s))
            .chain(self.shms.iter().map(|(_, s, _)| *s))
            .chain(self.ptys.iter().flat_map(|(_, e)| [e.master, e.slave]))
            .chain(self.consoles.iter().map(|c| c.2))
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

/// Writes the old pages `runs` into the memory file `fd` at their offsets.
fn fill_shm(fd: RawFd, runs: &[ShmRun], mem: &MemSource) -> Result<(), Error> {
    for run in runs {
        let m = mem.map(run.gpa, run.len)?;
        let (mut left, mut at) = (m.bytes(), run.offset);
        while !left.is_empty() {
            let off = libc::off_t::try_from(at)
                .map_err(|_| Error::Invalid(format!("memory file offset {at:#x}")))?;
            // SAFETY: writes from the mapping, which lives across the call.
            let n = unsafe { libc::pwrite(fd, left.as_ptr().cast(), left.len(), off) };
            if n <= 0 {
                return Err(Error::os(
                    format!("write {} bytes of a memory file", left.len()),
                    io::Error::last_os_error(),
                ));
            }
            let n = usize::try_from(n).unwrap_or(left.len());
            left = &left[n..];
            at += n as u64;
        }
    }
    Ok(())
}

/// A memfd of `size` bytes.
fn make_shm(size: u64) -> Result<RawFd, Error> {
    let name = c"owvmm-shared-memory";
    // SAFETY: memfd_create reads the NUL-terminated name.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::os("memfd_create", io::Error::last_os_error()));
    }
    let len = libc::off_t::try_from(size)
        .map_err(|_| Error::Invalid(format!("shared memory of {size:#x} bytes")))?;
    // SAFETY: ftruncate on the descriptor just made; closed on failure.
    if unsafe { libc::ftruncate(fd, len) } != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: closes our own descriptor.
        unsafe { libc::close(fd) };
        return Err(Error::os(format!("size shared memory to {size:#x}"), e));
    }
    Ok(fd)
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

/// A new anonymous pipe, non-blocking: read and write end.
fn new_pipe() -> Result<[RawFd; 2], Error> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(Error::os("pipe2", io::Error::last_os_error()));
    }
    Ok(fds)
}

/// The named FIFO at `path` (made with `mode` when it is not there, its directories
/// too), opened non-blocking as a read end and then a write end: two open files of it,
/// as a pipe's two ends.
fn open_fifo(id: u32, mode: u32, path: &[u8]) -> Result<[RawFd; 2], Error> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let p = super::path_of(path);
    let what = |step: &str| format!("fifo {id} ({}): {step}", p.display());
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.file_type().is_fifo() => {}
        Ok(_) => return Err(Error::Invalid(what("something else is at its path"))),
        Err(_) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::os(what("make its directory"), e))?;
            }
            let c =
                std::ffi::CString::new(path).map_err(|_| Error::Invalid(what("NUL in path")))?;
            // SAFETY: mkfifo reads a NUL-terminated path.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(Error::os(what("mkfifo"), io::Error::last_os_error()));
            }
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(|e| Error::os(what("chmod"), e))?;
        }
    }
    let c = std::ffi::CString::new(path).map_err(|_| Error::Invalid(what("NUL in path")))?;
    let open = |flags: libc::c_int| {
        // SAFETY: opens a NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            Err(Error::os(what("open"), io::Error::last_os_error()))
        } else {
            Ok(fd)
        }
    };
    let r = open(libc::O_RDONLY)?;
    match open(libc::O_WRONLY) {
        Ok(w) => Ok([r, w]),
        Err(e) => {
            // SAFETY: closes the read end opened above.
            unsafe { libc::close(r) };
            Err(e)
        }
    }
}

fn make_one(p: &PipeRec, above: RawFd, mem: &MemSource) -> Result<Ends, Error> {
    let [r0, w0] = match &p.named {
        None => new_pipe()?,
        Some((mode, path)) => open_fifo(p.id, *mode, path)?,
    };
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
        let high = |fd: RawFd| move_above(fd, above, || format!("pipe {}", p.id));
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

/// A socket of `s`: bound (with `SO_REUSEADDR`: the old kernel's connections are gone),
/// listening for TCP, moved above `above`.
fn make_inet(s: &InetRec, above: RawFd) -> Result<RawFd, Error> {
    let family = libc::c_int::try_from(s.family).unwrap_or(libc::AF_INET);
    let ty = if s.sock_type == 2 {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    let what = |step: &str| format!("socket {}: {step}", s.id);
    // SAFETY: a new socket; the descriptor is ours.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::os(what("socket"), io::Error::last_os_error()));
    }
    let fail = |step: &str| {
        let e = Error::os(what(step), io::Error::last_os_error());
        // SAFETY: closes the socket made here.
        unsafe { libc::close(fd) };
        e
    };
    let one: libc::c_int = 1;
    let len = socklen::<libc::c_int>();
    // SAFETY: setsockopt with a pointer to a local int and its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            len,
        );
    }
    let bound = if family == libc::AF_INET6 {
        let v6only = libc::c_int::from(s.v6only);
        // SAFETY: as above.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&raw const v6only).cast(),
                len,
            );
        }
        // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid start.
        let mut a: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        a.sin6_family = libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(10);
        a.sin6_port = s.port.to_be();
        a.sin6_addr.s6_addr = s.addr;
        // SAFETY: binds to the address in a local struct of the size given.
        unsafe { libc::bind(fd, (&raw const a).cast(), socklen::<libc::sockaddr_in6>()) }
    } else {
        // SAFETY: as above, for sockaddr_in.
        let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        a.sin_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2);
        a.sin_port = s.port.to_be();
        a.sin_addr.s_addr = u32::from_ne_bytes([s.addr[0], s.addr[1], s.addr[2], s.addr[3]]);
        // SAFETY: as above.
        unsafe { libc::bind(fd, (&raw const a).cast(), socklen::<libc::sockaddr_in>()) }
    };
    if bound != 0 {
        return Err(fail(&format!("bind port {}", s.port)));
    }
    if ty == libc::SOCK_STREAM {
        let backlog = libc::c_int::try_from(s.backlog.max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: listen on the socket made here.
        if unsafe { libc::listen(fd, backlog) } != 0 {
            return Err(fail("listen"));
        }
    }
    let high = move_above(fd, above, || format!("socket {}", s.id));
    // SAFETY: closes the original; `high` (if made) stays.
    unsafe { libc::close(fd) };
    high
}

/// The size of `T` as a `socklen_t` (the structs passed here are a few bytes long).
fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0)
}

/// A socket pair for `u` (and its `peer`): `u`'s end first, the peer's end when it is held
/// (else closed once `u`'s messages are in).
fn make_unix(
    u: &UnixRec,
    peer: Option<&UnixRec>,
    above: RawFd,
    mem: &MemSource,
    table: &PipeTable,
) -> Result<(RawFd, Option<RawFd>), Error> {
    let ty = match u.sock_type {
        2 => libc::SOCK_DGRAM,
        5 => libc::SOCK_SEQPACKET,
        _ => libc::SOCK_STREAM,
    };
    let mut sv = [-1 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(Error::os(
            format!("unix socket {}: socketpair", u.id),
            io::Error::last_os_error(),
        ));
    }
    let [a, b] = sv;
    let close = |fds: &[RawFd]| {
        for &fd in fds {
            // SAFETY: closes descriptors made here.
            unsafe { libc::close(fd) };
        }
    };
    let r = (|| {
        // Messages for `u` go in at the peer's end, and the other way round.
        let mut pair = vec![(u.id, a)];
        pair.extend(peer.map(|p| (p.id, b)));
        let ctx = Passing { pair: &pair, table };
        send_all(b, a, u, mem, &ctx)?;
        if let Some(p) = peer {
            send_all(a, b, p, mem, &ctx)?;
        }
        let high = |fd: RawFd| {
            let h = move_above(fd, above, || format!("unix socket {}", u.id))?;
            // SAFETY: fcntl on the descriptor just made: blocking, as socketpair's.
            unsafe { libc::fcntl(h, libc::F_SETFL, 0) };
            Ok::<RawFd, Error>(h)
        };
        let ha = high(a)?;
        let hb = match peer {
            Some(_) => match high(b) {
                Ok(h) => Some(h),
                Err(e) => {
                    close(&[ha]);
                    return Err(e);
                }
            },
            None => None,
        };
        Ok((ha, hb))
    })();
    close(&[a, b]);
    r
}

/// Where the descriptors in flight of a pair's messages come from: the pair's own ends,
/// then everything made before it.
struct Passing<'a> {
    pair: &'a [(u32, RawFd)],
    table: &'a PipeTable,
}

/// Sends `to`'s queued messages into `from` (nonblocking), one `sendmsg` per message with
/// its descriptors in flight, with the buffers made big enough for them. A descriptor that
/// cannot be made is left out of its message, with a log line.
fn send_all(
    from: RawFd,
    to: RawFd,
    u: &UnixRec,
    mem: &MemSource,
    ctx: &Passing<'_>,
) -> Result<(), Error> {
    let total: u64 = u.runs().map(|r| r.len).sum();
    if total == 0 && u.msgs.is_empty() {
        return Ok(());
    }
    // Each queued message costs its buffer's overhead (about 1 KiB) on top of its bytes.
    let msgs = u64::try_from(u.msgs.len()).unwrap_or(u64::MAX);
    let want = libc::c_int::try_from(
        total
            .saturating_add(msgs.saturating_mul(2048))
            .saturating_add(1 << 16),
    )
    .unwrap_or(libc::c_int::MAX);
    let len = socklen::<libc::c_int>();
    // SAFETY: setsockopt with a pointer to a local int and its size; the agent is root, so
    // the FORCE variants pass the system limits.
    unsafe {
        libc::setsockopt(
            from,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&raw const want).cast(),
            len,
        );
        libc::setsockopt(
            to,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const want).cast(),
            len,
        );
    }
    // One mapping over all of its messages' bytes (one mmap, not one per message: each
    // system call is slow in the crash kernel here).
    let runs = u.runs();
    let lo = runs.clone().map(|r| r.gpa).min().unwrap_or(0);
    let hi = runs.map(|r| r.gpa.saturating_add(r.len)).max().unwrap_or(0);
    let map = if hi > lo {
        Some(mem.map(lo, hi - lo)?)
    } else {
        None
    };
    let bytes = map.as_ref().map_or(&[][..], |m| m.bytes());
    for (i, m) in u.msgs.iter().enumerate() {
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(m.data.len());
        for r in &m.data {
            let at = usize::try_from(r.gpa - lo).unwrap_or(usize::MAX);
            let n = usize::try_from(r.len).unwrap_or(usize::MAX);
            let chunk = bytes.get(at..at.saturating_add(n)).ok_or_else(|| {
                Error::Invalid(format!("unix socket {}: data outside its map", u.id))
            })?;
            iov.push(libc::iovec {
                iov_base: chunk.as_ptr().cast_mut().cast(),
                iov_len: chunk.len(),
            });
        }
        let want: usize = iov.iter().map(|v| v.iov_len).sum();
        let mut held = Vec::with_capacity(m.fds.len());
        for r in &m.fds {
            match super::passed::open_passed(r, ctx.pair, ctx.table) {
                Ok(h) => held.push(h),
                Err(e) => crate::log!(
                    "resurrect: unix socket {}: message {i}: descriptor {} in flight left out: {}",
                    u.id,
                    r.fd,
                    super::reason(&e)
                ),
            }
        }
        let fds: Vec<RawFd> = held.iter().map(super::passed::Held::fd).collect();
        let sent = super::passed::send(from, &iov, &fds);
        if sent.as_ref().ok() != Some(&want) {
            return Err(Error::os(
                format!(
                    "unix socket {}: queue {want} bytes with {} descriptors",
                    u.id,
                    fds.len()
                ),
                sent.err()
                    .unwrap_or_else(|| io::Error::from(io::ErrorKind::WriteZero)),
            ));
        }
    }
    Ok(())
}

/// A close-on-exec copy of `fd` at `above` or higher (`what` names it in the error).
pub(super) fn move_above(
    fd: RawFd,
    above: RawFd,
    what: impl Fn() -> String,
) -> Result<RawFd, Error> {
    // SAFETY: duplicates a descriptor the caller owns.
    let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above) };
    if h < 0 {
        Err(Error::os(
            format!("{}: move above fd {above}", what()),
            io::Error::last_os_error(),
        ))
    } else {
        Ok(h)
    }
}

/// A listening Unix socket bound at `l.path` again: a file-system name's directories are
/// made and a stale socket file there is removed first (the dead kernel's socket is gone).
fn make_ulisten(l: &UnixListenRec, above: RawFd) -> Result<RawFd, Error> {
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::FileTypeExt as _;
    let what = |step: &str| format!("unix listener {}: {step}", l.id);
    let ty = if l.sock_type == 5 {
        libc::SOCK_SEQPACKET
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid start.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if l.path.is_empty() || l.path.len() > a.sun_path.len() {
        return Err(Error::Invalid(what("bad path length")));
    }
    a.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or(1);
    for (d, s) in a.sun_path.iter_mut().zip(&l.path) {
        *d = libc::c_char::from_ne_bytes([*s]);
    }
    if l.path[0] != 0 {
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&l.path));
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(p);
        }
    }
    // SAFETY: a new socket; the descriptor is ours.
    let fd = unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::os(what("socket"), io::Error::last_os_error()));
    }
    let len = libc::socklen_t::try_from(2 + l.path.len()).unwrap_or(0);
    let backlog = libc::c_int::try_from(l.backlog.max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: binds to the address in a local struct, of the length given; listen on the
    // socket made here.
    let ok = unsafe {
        libc::bind(fd, (&raw const a).cast(), len) == 0 && libc::listen(fd, backlog) == 0
    };
    if !ok {
        let e = Error::os(what("bind and listen"), io::Error::last_os_error());
        // SAFETY: closes the socket made here.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    let high = move_above(fd, above, || format!("unix listener {}", l.id));
    // SAFETY: closes the original; `high` (if made) stays.
    unsafe { libc::close(fd) };
    high
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::resurrect::manifest::PipeRun;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    /// A named FIFO is made at its path with its mode, holds its bytes, and its two ends
    /// are the read and the write end of that FIFO.
    #[test]
    fn a_named_fifo_comes_back_at_its_path_with_its_bytes() {
        let dir = std::env::temp_dir().join(format!("owvmm-fifo-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let memfile = dir.join("mem");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(&memfile, b"12\n13\n").expect("memory");
        let mem = MemSource::open(&memfile, 0, 6).expect("window");
        let path = dir.join("sub/q");
        let rec = PipeRec {
            id: 9,
            size: 65536,
            named: Some((0o640, path.as_os_str().as_encoded_bytes().to_vec())),
            data: vec![PipeRun { gpa: 0, len: 6 }],
        };
        let (t, failed) = PipeTable::make(std::slice::from_ref(&rec), 200, &mem);
        assert!(failed.is_empty(), "{:?}", failed.first().map(|f| &f.1));
        let meta = std::fs::symlink_metadata(&path).expect("the fifo is there");
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        let ends = t.pipes[0].1;
        assert!(ends.read >= 200 && ends.write >= 200);
        let mut buf = [0u8; 16];
        // SAFETY: reads into a local buffer from the read end this table owns.
        let n = unsafe { libc::read(ends.read, buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..usize::try_from(n).unwrap_or(0)], b"12\n13\n");
        // A new opener of the path reaches the same FIFO: what it writes, the end reads.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"14\n"))
            .expect("write through the path");
        // SAFETY: as above.
        let n = unsafe { libc::read(ends.read, buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..usize::try_from(n).unwrap_or(0)], b"14\n");
        drop(t);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
