//! Thin, safe wrappers over the few system calls the agent makes.
//!
//! Every wrapper returns `io::Result` (or a plain value where the call cannot fail) so that
//! the caller can log and carry on: PID 1 must never die.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Turns a `-1` return into the current `errno`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Our own PID.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// Milliseconds since boot (`CLOCK_BOOTTIME`), used both for scheduling and as the
/// `uptime_ms` the protocol reports.
pub fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every kernel
    // this agent supports (>= 2.6.39).
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if ret != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

/// Sets `CLOCK_REALTIME`.
pub fn set_realtime(secs: u64, nanos: u32) -> io::Result<()> {
    let tv_sec = libc::time_t::try_from(secs)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seconds out of range"))?;
    let ts = libc::timespec {
        tv_sec,
        tv_nsec: libc::c_long::from(nanos),
    };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) }).map(drop)
}

/// `mount(2)` with no data.
pub fn mount(source: &CStr, target: &CStr, fstype: &CStr, flags: libc::c_ulong) -> io::Result<()> {
    // SAFETY: all strings are NUL-terminated and live across the call; data is NULL.
    cvt(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// `umount2(target, 0)`.
pub fn umount(target: &CStr) -> io::Result<()> {
    // SAFETY: the string is NUL-terminated and lives across the call.
    cvt(unsafe { libc::umount2(target.as_ptr(), 0) }).map(drop)
}

/// Remounts the filesystem at `target` read-only (its journal flushed and marked clean).
pub fn remount_ro(target: &CStr) -> io::Result<()> {
    // SAFETY: target is NUL-terminated and lives across the call; the other strings and
    // data are NULL, which MS_REMOUNT allows.
    cvt(unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Is `fd` an open file descriptor?
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table; an invalid fd yields EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the descriptor's flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) }).map(drop)
}

/// `dup2(old, new)`.
pub fn dup2(old: RawFd, new: RawFd) -> io::Result<()> {
    // SAFETY: dup2 only manipulates the descriptor table; we never use `new` as an owned
    // Rust object elsewhere (it is one of the standard descriptors 0..=2).
    cvt(unsafe { libc::dup2(old, new) }).map(drop)
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Non-blocking `read(2)`; `Ok(0)` is end of file, `WouldBlock` means no data now.
pub fn read(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `write(2)`.
pub fn write(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// `poll(2)` over `fds`, waiting at most `timeout_ms`. Returns the number of ready
/// descriptors (0 on timeout or on EINTR).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: u64) -> io::Result<usize> {
    let timeout = libc::c_int::try_from(timeout_ms).unwrap_or(libc::c_int::MAX);
    let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    // SAFETY: `fds` is a valid array of `nfds` pollfd structures.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(usize::try_from(ret).unwrap_or(0))
}

/// Sleeps up to `ms` milliseconds, waking early when `fd` becomes readable.
pub fn wait_readable(fd: &impl AsRawFd, ms: u64) {
    let mut pfd = [libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let _ = poll(&mut pfd, ms);
}

/// Puts a terminal into raw mode: no echo, no line editing, no signals, no output
/// processing, 8N1, CLOCAL (ignore modem lines), 115200 baud.
pub fn set_raw_tty(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: termios is plain old data; all-zero is a valid (if meaningless) value that
    // tcgetattr overwrites.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid, writable termios.
    cvt(unsafe { libc::tcgetattr(fd, &mut t) })?;
    // SAFETY: `t` is a valid termios obtained from tcgetattr.
    unsafe { libc::cfmakeraw(&mut t) };
    t.c_cflag |= libc::CLOCAL | libc::CREAD;
    t.c_cflag &= !libc::CRTSCTS;
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    // 115200 baud, set in c_cflag directly: the libc crate binds cfset[io]speed to
    // versioned glibc symbols that a static (crt-static) link cannot resolve. The input
    // speed follows the output speed (no IBSHIFT bits). A virtual UART ignores it anyway.
    t.c_cflag = (t.c_cflag & !libc::CBAUD) | libc::B115200;
    // SAFETY: `t` is a valid termios that outlives the call.
    cvt(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) }).map(drop)
}

/// Bytes still waiting in a terminal's output queue (`TIOCOUTQ`).
pub fn tty_outq(fd: &impl AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int to the pointer we pass, which is valid.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) })?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// One reaped child: its PID and raw wait status.
pub struct Reaped {
    pub pid: libc::pid_t,
    pub status: libc::c_int,
}

/// `waitpid(-1, WNOHANG)`: `Ok(Some(..))` for a reaped child, `Ok(None)` if children exist
/// but none has exited, `Err` with ECHILD if there are no children at all.
pub fn reap_one() -> io::Result<Option<Reaped>> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid, writable c_int.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        match pid {
            0 => return Ok(None),
            p if p > 0 => return Ok(Some(Reaped { pid: p, status })),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Is `err` the "no child processes" error?
pub fn is_echild(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ECHILD)
}

/// Decodes a wait status into (exit code) or (terminating signal).
pub fn decode_status(status: libc::c_int) -> ow_agent::proto::ExitStatus {
    use ow_agent::proto::ExitStatus;
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(u8::try_from(libc::WTERMSIG(status)).unwrap_or(u8::MAX))
    } else {
        ExitStatus::Code(u8::try_from(libc::WEXITSTATUS(status)).unwrap_or(u8::MAX))
    }
}

/// `kill(pid, sig)`; `pid == -1` means every process we may signal except ourselves.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill has no memory-safety preconditions.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Flushes file system buffers.
pub fn sync() {
    // SAFETY: sync has no preconditions and cannot fail.
    unsafe { libc::sync() }
}

/// `reboot(2)` with one of the `RB_*` commands; only returns on failure.
pub fn reboot(cmd: libc::c_int) -> io::Error {
    // SAFETY: reboot has no memory-safety preconditions; on success it does not return.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// Makes us the reaper of orphaned descendants (for running outside PID 1).
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain integer argument.
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }).map(drop)
}

// ---------------------------------------------------------------------------------------
// Signals: a self-pipe. The handler writes the signal number as one byte into a
// non-blocking pipe that the main loop polls.

/// Write end of the self-pipe, or -1 before it exists.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    if IN_CHILD.load(Ordering::Relaxed) {
        // A forked child between fork and exec: the pipe belongs to the parent.
        return;
    }
    let byte = u8::try_from(sig).unwrap_or(0);
    // SAFETY: errno is thread-local; __errno_location always returns a valid pointer. We
    // save and restore it so the interrupted code does not see a changed errno. write(2) is
    // async-signal-safe; if the pipe is full the wakeup is already pending, so a failed
    // write loses nothing.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        libc::write(fd, std::ptr::addr_of!(byte).cast(), 1);
        *errno = saved;
    }
}

/// Set in a forked child before it execs, so that the inherited handler stays quiet.
static IN_CHILD: AtomicBool = AtomicBool::new(false);

/// Call first thing in a forked child (async-signal-safe).
pub fn in_child_after_fork() {
    IN_CHILD.store(true, Ordering::Relaxed);
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: closing the child's copy of the pipe's write end; the handler no longer
        // uses it (IN_CHILD is set).
        unsafe { libc::close(fd) };
    }
}

/// Installs the self-pipe handler for `signals` and returns the read end of the pipe.
pub fn install_signal_pipe(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let (rd, wr) = pipe()?;
    // The write end lives for the rest of the process: the handler may run at any time.
    let wr_raw = wr.as_raw_fd();
    std::mem::forget(wr);
    SIGNAL_PIPE.store(wr_raw, Ordering::Relaxed);
    for &sig in signals {
        // SAFETY: sigaction is plain old data; zeroed is a valid empty value that we fill.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: `sa` is fully initialised and the handler is async-signal-safe.
        cvt(unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) })?;
    }
    Ok(rd)
}
