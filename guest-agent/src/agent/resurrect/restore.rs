//! Recreates one process (the design at the end of `docs/resurrection.md`).
//!
//! 1. `clone3(set_tid = [pid])`. The child (a copy of the agent) maps a scratch area and
//!    the part of the old-memory window it needs at addresses free in the target layout,
//!    reopens the files at their numbers, `chdir`s, installs the signal actions and stops
//!    itself under `PTRACE_TRACEME`.
//! 2. The agent injects system calls through the scratch area: it unmaps the agent image,
//!    moves the vDSO, maps the target's areas, copies the old pages with a `rep movsb` loop
//!    running in the child, sets the final protections and `PR_SET_MM_MAP`, and creates
//!    the other threads with `clone3(set_tid)`.
//! 3. Per thread: `set_tid_address`, `set_robust_list`, `rseq`, `PR_SET_NAME`, then the
//!    registers, FPU and signal mask. The window and scratch go last, then every thread is
//!    detached.
//!
//! Any failure kills (SIGKILL) and reaps what was built ([`Guard`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use super::creds;
use super::manifest::{Creds, EpollRec, FdKind, FdRec, InotifyRec, Process, SigRec, VmaKind, PAGE};
use super::pipes::PipeTable;
use super::procedure::{self, Lost};
use super::tracer::{self, reg, Injector, Regs, Tid};
use super::{text, Error, MemSource};

/// Size of the scratch area: code, the child's error record, then data.
const SCRATCH_SIZE: usize = 256 << 10;
const SCRATCH_LEN: u64 = SCRATCH_SIZE as u64;
/// Offset of the child's error record: (step, index, errno) as three u64.
const HDR_OFFSET: usize = 0x100;
const HDR_OFF: u64 = HDR_OFFSET as u64;
/// Offset and size of the data part (paths, argument structs, copy lists).
const DATA_OFF: u64 = 0x1000;
/// Triples of the copy loop that fit in the data part.
const MAX_TRIPLES: usize = (SCRATCH_SIZE - 0x1000) / 24;
/// End of the 47-bit user address space (`TASK_SIZE`).
const USER_TOP: u64 = 0x7fff_ffff_f000;
/// Where the search for free holes starts, and the gap kept around what we place.
const HOLE_LOW: u64 = 0x1000_0000_0000;
const HOLE_GUARD: u64 = 1 << 20;
/// `arch_prctl` code that maps the 64-bit vDSO at a given address.
const ARCH_MAP_VDSO_64: u64 = 0x2003;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
/// `sizeof(struct prctl_mm_map)`.
const PRCTL_MM_MAP_SIZE: u64 = 104;
/// `sizeof(struct clone_args)` as far as we fill it (with set_tid).
const CLONE_ARGS_SIZE: u64 = 88;
/// `clone3` flag: reset every signal action to the default in the child.
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
/// `clone3` flag: the child is traced too when the caller is.
const CLONE_PTRACE: u64 = 0x2000;
/// `AT_FDCWD` as a register value.
const AT_FDCWD: u64 = u64::from_ne_bytes((-100_i64).to_ne_bytes());
/// `INOTIFY_IOC_SETNEXTWD` (`_IOW('I', 0, __s32)`, `CONFIG_CHECKPOINT_RESTORE`, which
/// `PR_SET_MM_MAP` needs too): the id the group's next watch is tried with.
const INOTIFY_IOC_SETNEXTWD: libc::c_ulong = 0x4004_4900;
/// `IN_DONT_FOLLOW`.
const IN_DONT_FOLLOW: u32 = 0x0200_0000;

/// Steps of the child, for its error record.
const STEP_WINDOW: u64 = 1;
const STEP_OPEN: u64 = 2;
const STEP_SEEK: u64 = 3;
const STEP_DUP: u64 = 4;
const STEP_CHDIR: u64 = 5;
const STEP_MAKE: u64 = 9;
const STEP_EPOLL: u64 = 10;
const STEP_INOTIFY: u64 = 12;
const STEP_SIGACTION: u64 = 6;
pub(super) const STEP_SIGMASK: u64 = 7;
pub(super) const STEP_EXEC: u64 = 8;
/// The credentials of an exec block (index: which of [`super::creds::steps`]).
pub(super) const STEP_CREDS: u64 = 11;
/// Exit codes of a child that could not even record an error.
pub(super) const EXIT_TRACEME: i32 = 120;
const EXIT_SCRATCH: i32 = 121;
const EXIT_RESUMED: i32 = 122;

/// A part of the window mapped in the child: (address, length, file offset).
type Cluster = (u64, usize, libc::off_t);

/// What the child needs, prepared before `clone3` (the child does not allocate).
pub(super) struct ChildPlan {
    scratch: u64,
    /// The old memory this process needs: fd of the window, then (address, length, file
    /// offset) of each cluster of it mapped into the span reserved for the window.
    window: Option<(RawFd, Vec<Cluster>)>,
    setup: Setup,
}

/// What every recreated process sets up in itself: its files, directory, signal actions.
pub(super) struct Setup {
    fds: Vec<FdPlan>,
    /// The agent's pipe ends and sockets this process `dup3`s (sorted), closed after.
    keep: Vec<RawFd>,
    /// (epoll fd, watched fd, event) to add once every descriptor is in place.
    epoll: Vec<(RawFd, RawFd, libc::epoll_event)>,
    /// inotify watches to add once every descriptor is in place, by increasing wd for
    /// each descriptor.
    inotify: Vec<WatchPlan>,
    /// (inotify fd, the id its next watch gets) to set after its watches.
    inotify_next: Vec<NextWd>,
    cwd: CString,
    /// (signo, kernel `struct sigaction`: handler, flags, restorer, mask).
    sigs: Vec<(i32, [u64; 4])>,
    /// What does not come back exactly (for a crash procedure).
    pub(super) lost: Vec<Lost>,
}

impl Setup {
    /// The plan for `fds`, `cwd` (`/` when none) and `sigs`; pipe ends come from `pipes`.
    /// A descriptor of a kind the agent cannot make fails the plan, unless `lenient` (the
    /// process has a crash procedure to tell): then it becomes `/dev/null` and is listed
    /// in [`Setup::lost`].
    pub(super) fn new(
        fds: &[FdRec],
        cwd: Option<&[u8]>,
        sigs: &[SigRec],
        epoll: &[EpollRec],
        inotify: &[InotifyRec],
        pipes: &PipeTable,
        lenient: bool,
    ) -> Result<Self, Error> {
        let mut keep = Vec::new();
        let mut lost = Vec::new();
        let mut plans = Vec::with_capacity(fds.len());
        for f in fds {
            // f_flags are 32 bits; open(2) takes them as an int.
            let flags = i32::from_ne_bytes(f.flags.to_ne_bytes());
            // Made in the child: an eventfd, signalfd, timerfd or inotify instance, an epoll
            // instance, or a socket whose peer is gone.
            let made = if f.kind == FdKind::Other && !f.is_epoll() && f.pty_end().is_none() {
                event_fd(&f.path)
            } else if f.is_epoll() {
                Some(Made::Epoll)
            } else if pipes.unrepaired(f) {
                lost.push(procedure::reset_lost(
                    f.fd,
                    "tcp connection (its repair failed)",
                ));
                Some(Made::Reset(libc::SOCK_STREAM))
            } else if f.is_reset() {
                // `reset:<type>` or `reset:<type>:<what it was>`.
                let rest = String::from_utf8_lossy(f.path.strip_prefix(b"reset:").unwrap_or(b""));
                let (ty, what) = rest.split_once(':').unwrap_or((&rest, ""));
                lost.push(procedure::reset_lost(f.fd, what));
                let ty = ty
                    .parse::<i32>()
                    .ok()
                    .filter(|t| [libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(t))
                    .unwrap_or(libc::SOCK_STREAM);
                Some(Made::Reset(ty))
            } else {
                None
            };
            if made.is_some() {
                plans.push(FdPlan {
                    fd: f.fd,
                    flags,
                    seek: None,
                    path: CString::default(),
                    dup_from: None,
                    made,
                });
                continue;
            }
            // A memory file (memfd): the agent's copy, opened again by its path (a new
            // open file description of the same file, at the old position).
            if let Some(id) = f.shm_id() {
                let path = pipes.shm_path(id).ok_or_else(|| {
                    Error::Invalid(format!("fd {}: memory file {id} was not made", f.fd))
                })?;
                let seek = libc::off_t::try_from(f.pos).map_err(|_| {
                    Error::Invalid(format!("fd {}: position {:#x} too large", f.fd, f.pos))
                })?;
                plans.push(FdPlan {
                    fd: f.fd,
                    flags: flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL),
                    seek: Some(seek),
                    path: cstring(path)?,
                    dup_from: None,
                    made: None,
                });
                continue;
            }
            let cannot = if f.kind == FdKind::Fifo && f.pipe_id().is_none() {
                Some("named fifo")
            } else if !made_by_agent(f)
                && !matches!(f.kind, FdKind::Reg | FdKind::Chr | FdKind::Dir)
            {
                Some(f.kind.name())
            } else {
                None
            };
            if let Some(kind) = cannot {
                if !lenient {
                    return Err(Error::FdKind { fd: f.fd, kind });
                }
                lost.push(Lost {
                    fd: f.fd,
                    kind: if f.kind == FdKind::Chr {
                        "device"
                    } else {
                        "file"
                    },
                    why: format!("cannot restore {kind} {}: /dev/null instead", text(&f.path)),
                });
                plans.push(FdPlan {
                    fd: f.fd,
                    flags: (flags & (libc::O_CLOEXEC | libc::O_NONBLOCK)) | libc::O_RDWR,
                    seek: None,
                    path: cstring(b"/dev/null")?,
                    dup_from: None,
                    made: None,
                });
                continue;
            }
            if made_by_agent(f) {
                // A pipe end, a socket or a pty end the agent made: its descriptor is
                // `dup3`ed.
                let src = pipes.source_for(f).ok_or_else(|| {
                    Error::Invalid(format!("fd {}: {} was not made", f.fd, text(&f.path)))
                })?;
                if !keep.contains(&src) {
                    keep.push(src);
                }
                plans.push(FdPlan {
                    fd: f.fd,
                    flags,
                    seek: None,
                    path: CString::default(),
                    dup_from: Some(src),
                    made: None,
                });
                continue;
            }
            let mut flags =
                (flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL)) | libc::O_NOCTTY;
            if f.kind == FdKind::Dir {
                flags |= libc::O_DIRECTORY;
            }
            let seek = if f.kind == FdKind::Reg {
                Some(libc::off_t::try_from(f.pos).map_err(|_| {
                    Error::Invalid(format!("fd {}: position {:#x} too large", f.fd, f.pos))
                })?)
            } else {
                None
            };
            plans.push(FdPlan {
                fd: f.fd,
                flags,
                seek,
                path: cstring(&f.path)?,
                dup_from: None,
                made: None,
            });
        }
        keep.sort_unstable();
        let epoll = epoll
            .iter()
            .map(|e| {
                (
                    e.epfd,
                    e.fd,
                    libc::epoll_event {
                        events: e.events,
                        u64: e.data,
                    },
                )
            })
            .collect();
        let (inotify, inotify_next) = watch_plans(fds, inotify, &mut lost)?;
        Ok(Self {
            fds: plans,
            keep,
            epoll,
            inotify,
            inotify_next,
            cwd: cstring(cwd.unwrap_or(b"/"))?,
            sigs: sigs
                .iter()
                .map(|s| (s.signo, [s.handler, s.flags, s.restorer, s.mask]))
                .collect(),
            lost,
        })
    }

    /// The agent's pipe ends and sockets this process takes (sorted).
    pub(super) fn keep(&self) -> &[RawFd] {
        &self.keep
    }

    /// In the child: closes every descriptor inherited from the agent except `keep`
    /// (sorted: the pipe ends this process takes, and what the caller adds).
    ///
    /// # Safety
    /// Raw system calls only (the child of a `clone3` must not allocate).
    pub(super) unsafe fn close_all_but(keep: &[RawFd]) {
        let close = |from: u32, to: u32| {
            // SAFETY: closes a range of our own descriptors.
            if unsafe { libc::syscall(libc::SYS_close_range, from, to, 0u32) } != 0 {
                for n in from..=to.min(from.saturating_add(4096)) {
                    // SAFETY: as above, one at a time.
                    unsafe { libc::close(i32::try_from(n).unwrap_or(-1)) };
                }
            }
        };
        let mut from: u32 = 0;
        for &k in keep {
            let k = u32::try_from(k).unwrap_or(0);
            if k > from {
                close(from, k - 1);
            }
            from = from.max(k.saturating_add(1));
        }
        close(from, u32::MAX);
    }

    /// The highest descriptor number the process gets.
    pub(super) fn max_fd(&self) -> RawFd {
        self.fds.iter().map(|f| f.fd).max().unwrap_or(-1)
    }

    /// In the child: opens the files at their numbers, `chdir`s, installs the signal
    /// actions. On failure, the step and index (errno is left as the call set it).
    ///
    /// # Safety
    /// Only raw, async-signal-safe system calls on this plan's data (the child of a
    /// `clone3` must not allocate).
    pub(super) unsafe fn apply(&self) -> Result<(), (u64, usize)> {
        // SAFETY: raw system calls whose pointers refer to this plan, which lives as long
        // as the call.
        unsafe {
            for (i, f) in self.fds.iter().enumerate() {
                let cloexec = f.flags & libc::O_CLOEXEC;
                let nonblock = f.flags & libc::O_NONBLOCK;
                let made = match f.made {
                    Some(Made::Event { count, semaphore }) => {
                        let sem = if semaphore { libc::EFD_SEMAPHORE } else { 0 };
                        let e = libc::eventfd(0, libc::EFD_CLOEXEC | sem | nonblock);
                        if e < 0 {
                            return Err((STEP_MAKE, i));
                        }
                        if count > 0 && libc::write(e, (&raw const count).cast(), 8) != 8 {
                            return Err((STEP_MAKE, i));
                        }
                        Some(e)
                    }
                    Some(Made::Signal { mask }) => {
                        let e = libc::syscall(
                            libc::SYS_signalfd4,
                            -1,
                            (&raw const mask).cast::<libc::c_void>(),
                            8usize,
                            libc::SFD_CLOEXEC | nonblock,
                        );
                        if e < 0 {
                            return Err((STEP_MAKE, i));
                        }
                        Some(i32::try_from(e).unwrap_or(-1))
                    }
                    Some(Made::Timer {
                        clockid,
                        absolute,
                        value_ns,
                        interval_ns,
                    }) => {
                        let e = libc::timerfd_create(clockid, libc::TFD_CLOEXEC | nonblock);
                        if e < 0 {
                            return Err((STEP_MAKE, i));
                        }
                        let spec = libc::itimerspec {
                            it_interval: timespec(interval_ns),
                            it_value: timespec(value_ns),
                        };
                        let how = if absolute { libc::TFD_TIMER_ABSTIME } else { 0 };
                        if value_ns > 0
                            && libc::timerfd_settime(e, how, &spec, std::ptr::null_mut()) != 0
                        {
                            return Err((STEP_MAKE, i));
                        }
                        Some(e)
                    }
                    Some(Made::Reset(ty)) => {
                        let mut sv = [-1; 2];
                        if libc::socketpair(
                            libc::AF_UNIX,
                            ty | libc::SOCK_CLOEXEC,
                            0,
                            sv.as_mut_ptr(),
                        ) != 0
                        {
                            return Err((STEP_MAKE, i));
                        }
                        libc::close(sv[1]);
                        Some(sv[0])
                    }
                    Some(Made::Epoll) => {
                        let e = libc::epoll_create1(libc::EPOLL_CLOEXEC);
                        if e < 0 {
                            return Err((STEP_MAKE, i));
                        }
                        Some(e)
                    }
                    Some(Made::Inotify) => {
                        let e = libc::inotify_init1(libc::IN_CLOEXEC | nonblock);
                        if e < 0 {
                            return Err((STEP_MAKE, i));
                        }
                        Some(e)
                    }
                    None => None,
                };
                if let Some(fd) = made {
                    if fd != f.fd {
                        if libc::dup3(fd, f.fd, cloexec) < 0 {
                            return Err((STEP_DUP, i));
                        }
                        libc::close(fd);
                    } else if cloexec == 0 {
                        libc::fcntl(fd, libc::F_SETFD, 0);
                    }
                    let status = f.flags & (libc::O_NONBLOCK | libc::O_APPEND);
                    if status != 0 {
                        libc::fcntl(f.fd, libc::F_SETFL, status);
                    }
                    continue;
                }
                if let Some(src) = f.dup_from {
                    // A pipe end or socket: the agent's descriptor (above every target
                    // number).
                    if libc::dup3(src, f.fd, f.flags & libc::O_CLOEXEC) < 0 {
                        return Err((STEP_DUP, i));
                    }
                    continue;
                }
                let fd = libc::open(f.path.as_ptr(), f.flags, 0);
                if fd < 0 {
                    return Err((STEP_OPEN, i));
                }
                if let Some(pos) = f.seek {
                    if libc::lseek(fd, pos, libc::SEEK_SET) < 0 {
                        return Err((STEP_SEEK, i));
                    }
                }
                if fd != f.fd {
                    if libc::dup3(fd, f.fd, f.flags & libc::O_CLOEXEC) < 0 {
                        return Err((STEP_DUP, i));
                    }
                    libc::close(fd);
                }
            }
            for &k in &self.keep {
                libc::close(k);
            }
            for (i, (epfd, fd, ev)) in self.epoll.iter().enumerate() {
                let mut ev = *ev;
                if libc::epoll_ctl(*epfd, libc::EPOLL_CTL_ADD, *fd, &mut ev) != 0 {
                    return Err((STEP_EPOLL, i));
                }
            }
            // Each watch at its old wd: the group's next id set to it, then the watch added
            // (the group is new: no watch holds that id).
            for (i, w) in self.inotify.iter().enumerate() {
                if libc::ioctl(w.fd, INOTIFY_IOC_SETNEXTWD, w.wd) != 0
                    || libc::inotify_add_watch(w.fd, w.path.as_ptr(), w.mask)
                        != i32::try_from(w.wd).unwrap_or(-1)
                {
                    return Err((STEP_INOTIFY, i));
                }
            }
            // The id a new watch would have got.
            for (i, &(fd, next)) in self.inotify_next.iter().enumerate() {
                if libc::ioctl(fd, INOTIFY_IOC_SETNEXTWD, next) != 0 {
                    return Err((STEP_INOTIFY, self.inotify.len() + i));
                }
            }
            if libc::chdir(self.cwd.as_ptr()) != 0 {
                return Err((STEP_CHDIR, 0));
            }
            for (i, (signo, act)) in self.sigs.iter().enumerate() {
                // The kernel's struct sigaction: handler, flags, restorer, mask (8 bytes).
                let r = libc::syscall(
                    libc::SYS_rt_sigaction,
                    *signo,
                    act.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                );
                if r != 0 {
                    return Err((STEP_SIGACTION, i));
                }
            }
            Ok(())
        }
    }

    /// The error for a failed [`Setup::apply`] step.
    pub(super) fn error(&self, step: u64, index: u64, errno: u64) -> Error {
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        let what = match step {
            STEP_WINDOW => "map the window".to_owned(),
            STEP_OPEN | STEP_SEEK | STEP_DUP => {
                let (fd, path) = self.fds.get(i).map_or((-1, String::new()), |f| {
                    (f.fd, f.path.to_string_lossy().into_owned())
                });
                let op = match step {
                    STEP_OPEN => "open",
                    STEP_SEEK => "lseek",
                    _ => "dup3",
                };
                format!("fd {fd}: {op} {path}")
            }
            STEP_CHDIR => format!("chdir {}", self.cwd.to_string_lossy()),
            STEP_MAKE => format!(
                "fd {}: make its socket pair, epoll, eventfd, signalfd or timerfd",
                self.fds.get(i).map_or(-1, |f| f.fd)
            ),
            STEP_EPOLL => {
                let (epfd, fd) = self.epoll.get(i).map_or((-1, -1), |e| (e.0, e.1));
                format!("epoll_ctl(fd {epfd}, add fd {fd})")
            }
            STEP_INOTIFY => match self.inotify.get(i) {
                Some(w) => format!(
                    "inotify fd {}: add watch {} on {}",
                    w.fd,
                    w.wd,
                    w.path.to_string_lossy()
                ),
                None => {
                    let (fd, next) = i
                        .checked_sub(self.inotify.len())
                        .and_then(|j| self.inotify_next.get(j))
                        .copied()
                        .unwrap_or((-1, 0));
                    format!("inotify fd {fd}: set its next wd to {next}")
                }
            },
            STEP_SIGACTION => format!("rt_sigaction({})", self.sigs.get(i).map_or(0, |s| s.0)),
            STEP_SIGMASK => "rt_sigprocmask".to_owned(),
            STEP_EXEC => "execve".to_owned(),
            STEP_CREDS => format!("credentials (step {i})"),
            other => format!("step {other}"),
        };
        Error::Child {
            what,
            source: io::Error::from_raw_os_error(i32::try_from(errno).unwrap_or(libc::EINVAL)),
        }
    }
}

/// `clone3` with `set_tid = [pid]`, signal actions reset, `SIGCHLD` on exit. Returns 0 in
/// the child (a copy of us) and the pid in the parent.
///
/// # Safety
/// The caller must be single-threaded, and the child must make only async-signal-safe
/// calls and never return from the caller's frame.
pub(super) unsafe fn clone_with_pid(pid: i32) -> Result<i64, Error> {
    // SAFETY: the caller's contract is clone_raw's.
    let r = unsafe { clone_raw(pid, false) };
    if r < 0 {
        let e = io::Error::last_os_error();
        let what = if e.raw_os_error() == Some(libc::EEXIST) {
            format!("clone3: pid {pid} is in use")
        } else {
            format!("clone3 with pid {pid}")
        };
        return Err(Error::os(what, e));
    }
    Ok(r)
}

/// The raw `clone3` of [`clone_with_pid`] (-1 and errno on failure), with `CLONE_PTRACE`
/// when `traced`: the child of a traced stub is then traced by the same tracer (the agent)
/// and stops with `SIGSTOP` before it runs anything.
///
/// # Safety
/// As [`clone_with_pid`]; it allocates nothing, so a stub may call it.
pub(super) unsafe fn clone_raw(pid: i32, traced: bool) -> i64 {
    let set_tid: [libc::pid_t; 1] = [pid];
    // SAFETY: clone_args is plain old data; all-zero is its documented default.
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = CLONE_CLEAR_SIGHAND | if traced { CLONE_PTRACE } else { 0 };
    args.exit_signal = u64::from(libc::SIGCHLD.unsigned_abs());
    args.set_tid = set_tid.as_ptr() as u64;
    args.set_tid_size = 1;
    // SAFETY: `args` and `set_tid` are valid for the call. Without CLONE_VM the child gets
    // a copy of our address space and returns with 0 (the caller's contract covers it).
    unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of!(args),
            std::mem::size_of::<libc::clone_args>(),
        )
    }
}

struct FdPlan {
    fd: RawFd,
    flags: i32,
    seek: Option<libc::off_t>,
    path: CString,
    /// A pipe end or socket: the agent's descriptor to `dup3` (no open).
    dup_from: Option<RawFd>,
    /// Made in the child instead of opened.
    made: Option<Made>,
}

/// The eventfd, signalfd or timerfd an `other` fd's path describes
/// (`eventfd:<count>:<semaphore>`, `signalfd:<mask>`,
/// `timerfd:<clockid>:<absolute>:<value>:<interval>:<ticks>`; numbers hex but the clock).
/// A pipe end, a socket or a pty end: made by the agent before any process, and taken
/// by each holder as a copy of the agent's descriptor.
fn made_by_agent(f: &FdRec) -> bool {
    f.pipe_id().is_some() || f.inet_id().is_some() || f.unix_id().is_some() || f.pty_end().is_some()
}

fn event_fd(path: &[u8]) -> Option<Made> {
    let text = std::str::from_utf8(path).ok()?;
    let (kind, rest) = text.split_once(':')?;
    let f: Vec<&str> = rest.split(':').collect();
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    match (kind, f.as_slice()) {
        ("eventfd", [count, sem]) => Some(Made::Event {
            count: hex(count)?,
            semaphore: *sem == "1",
        }),
        ("signalfd", [mask]) => Some(Made::Signal { mask: hex(mask)? }),
        ("inotify", [_next]) => Some(Made::Inotify),
        ("timerfd", [clock, abs, value, interval, _ticks]) => Some(Made::Timer {
            clockid: clock.parse().ok()?,
            absolute: *abs == "1",
            value_ns: hex(value)?,
            interval_ns: hex(interval)?,
        }),
        _ => None,
    }
}

/// A `timespec` of `ns` nanoseconds.
fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(ns / 1_000_000_000).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::try_from(ns % 1_000_000_000).unwrap_or(0),
    }
}

/// Descriptors the child makes itself.
#[derive(Clone, Copy)]
enum Made {
    /// An eventfd with this counter.
    Event { count: u64, semaphore: bool },
    /// A signalfd for these signals.
    Signal { mask: u64 },
    /// A timerfd armed as it was (`value_ns` 0: disarmed).
    Timer {
        clockid: i32,
        absolute: bool,
        value_ns: u64,
        interval_ns: u64,
    },
    /// A socket of this type whose peer is gone (one end of a socket pair, the other
    /// closed): reads see end of file, writes `EPIPE`.
    Reset(i32),
    /// An empty epoll instance (its interest list is added after every descriptor).
    Epoll,
    /// An inotify instance without watches (they are added after every descriptor).
    Inotify,
}

/// An inotify descriptor and the id its next watch gets.
type NextWd = (RawFd, libc::c_ulong);

/// One inotify watch to add again.
struct WatchPlan {
    fd: RawFd,
    /// Its old watch descriptor (1 or more).
    wd: libc::c_ulong,
    mask: u32,
    path: CString,
}

/// The watches of `inotify` to add again, and the next wd of each inotify descriptor of
/// `fds`. A watch whose path is gone is left out, logged and listed in `lost`; its
/// descriptor comes back with the others.
fn watch_plans(
    fds: &[FdRec],
    inotify: &[InotifyRec],
    lost: &mut Vec<Lost>,
) -> Result<(Vec<WatchPlan>, Vec<NextWd>), Error> {
    let mut plans = Vec::with_capacity(inotify.len());
    for w in inotify {
        if !fds
            .iter()
            .any(|f| f.fd == w.fd && f.inotify_next().is_some())
        {
            continue;
        }
        let path = std::ffi::OsStr::from_bytes(&w.path);
        let there = if w.mask & IN_DONT_FOLLOW != 0 {
            std::fs::symlink_metadata(path)
        } else {
            std::fs::metadata(path)
        };
        if let Err(e) = there {
            crate::log!(
                "inotify fd {}: watch {} on {} left out: {e}",
                w.fd,
                w.wd,
                text(&w.path)
            );
            lost.push(Lost {
                fd: w.fd,
                kind: "inotify watch",
                why: format!("watch {} on {}: {e}", w.wd, text(&w.path)),
            });
            continue;
        }
        plans.push(WatchPlan {
            fd: w.fd,
            wd: libc::c_ulong::from(w.wd.unsigned_abs()),
            mask: w.mask,
            path: cstring(&w.path)?,
        });
    }
    let next = fds
        .iter()
        .filter_map(|f| Some((f.fd, f.inotify_next()?)))
        .filter(|&(_, n)| (1..=i32::MAX.unsigned_abs()).contains(&n))
        .map(|(fd, n)| (fd, libc::c_ulong::from(n)))
        .collect();
    Ok((plans, next))
}

/// Kills and reaps a half-built process unless disarmed.
struct Guard {
    /// The leader first, then the threads in creation order.
    tids: Vec<i32>,
    armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(&leader) = self.tids.first() else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; `leader` is our child.
        unsafe { libc::kill(leader, libc::SIGKILL) };
        // Threads first: the leader is reported only once its group is empty.
        for &tid in self.tids.iter().rev() {
            for _ in 0..16 {
                match tracer::wait_tid(tid) {
                    Ok(s) if libc::WIFEXITED(s) || libc::WIFSIGNALED(s) => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }
}

/// One line of `/proc/PID/maps`.
struct MapEntry {
    start: u64,
    end: u64,
    name: String,
}

fn read_maps(pid: &str) -> Result<Vec<MapEntry>, Error> {
    let path = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::os(path.clone(), e))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let range = it.next().unwrap_or("");
        let name = it.nth(4).unwrap_or("").to_owned();
        let parsed = range.split_once('-').and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        });
        let Some((start, end)) = parsed else {
            return Err(Error::Invalid(format!("{path}: bad line '{line}'")));
        };
        out.push(MapEntry { start, end, name });
    }
    Ok(out)
}

/// The first hole of `size` bytes (plus guards) above [`HOLE_LOW`] that `busy` leaves.
fn find_hole(busy: &[(u64, u64)], size: u64) -> Option<u64> {
    let mut sorted = busy.to_vec();
    sorted.sort_unstable();
    let mut cand = HOLE_LOW;
    for &(s, e) in &sorted {
        if e.saturating_add(HOLE_GUARD) <= cand {
            continue;
        }
        if s >= cand.checked_add(size)?.checked_add(HOLE_GUARD)? {
            break;
        }
        cand = cand.max(e.checked_add(HOLE_GUARD)?.next_multiple_of(PAGE));
    }
    (cand.checked_add(size)? <= USER_TOP - HOLE_GUARD).then_some(cand)
}

/// NUL-terminated bytes of a manifest path.
fn cstring(bytes: &[u8]) -> Result<CString, Error> {
    CString::new(bytes.to_vec()).map_err(|_| Error::Invalid(format!("NUL in '{}'", text(bytes))))
}

/// Everything the agent works out for one process before any process is created: the
/// child's plan and where the window and our vDSO are.
pub(super) struct Prepared {
    pub(super) pid: i32,
    pub(super) plan: ChildPlan,
    window: Option<(u64, usize, u64)>,
    own_vdso: Option<(u64, u64)>,
}

/// Plans the restore of `p` (nothing is created yet).
pub(super) fn prepare(p: &Process, mem: &MemSource, pipes: &PipeTable) -> Result<Prepared, Error> {
    let setup = Setup::new(
        &p.fds,
        p.cwd.as_deref(),
        &p.sigs,
        &p.epoll,
        &p.inotify,
        pipes,
        procedure::registered(&p.sigs),
    )?;
    // The part of the window this process needs.
    let mut span: Option<(u64, u64)> = None;
    for c in p.vmas.iter().flat_map(|v| &v.copies) {
        mem.check(c.gpa, c.len)?;
        let (lo, hi) = span.unwrap_or((c.gpa, c.gpa + c.len));
        span = Some((lo.min(c.gpa), hi.max(c.gpa + c.len)));
    }
    if span.is_some() && !mem.base.is_multiple_of(PAGE) {
        return Err(Error::Invalid(format!(
            "window offset {:#x} is not page aligned",
            mem.base
        )));
    }

    // Addresses free both in the target layout and in ours (the child starts as a copy).
    let own = read_maps("self")?;
    let mut busy: Vec<(u64, u64)> = own.iter().map(|m| (m.start, m.end)).collect();
    busy.extend(p.vmas.iter().map(|v| (v.start, v.end)));
    let scratch = find_hole(&busy, SCRATCH_LEN)
        .ok_or_else(|| Error::Invalid("no free address for the scratch area".to_owned()))?;
    busy.push((scratch, scratch + SCRATCH_LEN));
    let window = match span {
        Some((lo, hi)) => {
            let len = hi - lo;
            let addr = find_hole(&busy, len)
                .ok_or_else(|| Error::Invalid("no free address for the window".to_owned()))?;
            let ulen = usize::try_from(len)
                .map_err(|_| Error::Invalid("window part too large".to_owned()))?;
            // Only the parts with pages to copy are mapped: /dev/mem maps eagerly, and
            // every page-table entry the guest kernel writes is slow on some hosts.
            let mut clusters = Vec::new();
            for (clo, chi) in clusters_of(
                p.vmas
                    .iter()
                    .flat_map(|v| &v.copies)
                    .map(|c| (c.gpa, c.len)),
            ) {
                let off = libc::off_t::try_from(mem.base + clo)
                    .map_err(|_| Error::Invalid("window offset too large".to_owned()))?;
                let clen = usize::try_from(chi - clo)
                    .map_err(|_| Error::Invalid("window part too large".to_owned()))?;
                clusters.push((addr + (clo - lo), clen, off));
            }
            Some((addr, ulen, mem.file.as_raw_fd(), clusters, lo))
        }
        None => None,
    };
    // Where our vDSO text sits relative to the start of our [vvar] pages.
    let own_vdso = own.iter().find(|m| m.name == "[vdso]").map(|m| m.start);
    let own_vvar = own
        .iter()
        .filter(|m| m.name.starts_with("[vvar"))
        .map(|m| m.start)
        .min();

    let plan = ChildPlan {
        scratch,
        window: window.as_ref().map(|(_, _, fd, c, _)| (*fd, c.clone())),
        setup,
    };

    let pid = i32::try_from(p.pid).map_err(|_| Error::Invalid("pid out of range".into()))?;
    Ok(Prepared {
        pid,
        plan,
        window: window.map(|w| (w.0, w.1, w.4)),
        own_vdso: own_vdso.zip(own_vvar),
    })
}

/// Builds the process `prep` planned, once its stub exists (made by the agent or, with
/// `by_parent`, by its parent's stub: then it is traced from birth and first stops with
/// the `SIGSTOP` of `CLONE_PTRACE`). Returns its number of threads.
pub(super) fn finish(
    p: &Process,
    prep: &Prepared,
    by_parent: bool,
    pipes: &PipeTable,
) -> Result<u32, Error> {
    let pid = prep.pid;
    let mut guard = Guard {
        tids: vec![pid],
        armed: true,
    };
    if by_parent {
        let leader = Tid(pid);
        match wait_sigstop(leader) {
            Err(Error::Os { source, .. }) if source.raw_os_error() == Some(libc::ECHILD) => {
                guard.armed = false;
                return Err(Error::Invalid("its parent could not create it".to_owned()));
            }
            Err(Error::Invalid(why)) => {
                return Err(Error::Invalid(format!("made by its parent: {why}")))
            }
            other => other?,
        }
        // Let it prepare itself; its own SIGSTOP ends that.
        leader.cont(0)?;
    }
    let threads = build(p, pid, prep, pipes, &mut guard)?;
    guard.armed = false;
    Ok(threads)
}

/// Waits for a stub's `SIGSTOP`. Other signals that stop it on the way (the `SIGCHLD` of a
/// zombie or an exec child it made: a traced process queues even the signals it ignores)
/// are put aside and sent again after the detach.
fn wait_sigstop(leader: Tid) -> Result<(), Error> {
    for _ in 0..64 {
        let status = leader.wait()?;
        if libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGSTOP {
            return Ok(());
        }
        if libc::WIFSTOPPED(status) {
            leader.defer_signal(libc::WSTOPSIG(status))?;
            continue;
        }
        let why = match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(EXIT_TRACEME) => "PTRACE_TRACEME failed".to_owned(),
            Some(EXIT_SCRATCH) => "could not map its scratch area".to_owned(),
            _ => tracer::describe_status(status),
        };
        return Err(Error::Invalid(why));
    }
    Err(Error::Invalid(
        "stopped by signals over and over".to_owned(),
    ))
}

/// The tracer side, from the child's first stop to the detach.
fn build(
    p: &Process,
    pid: i32,
    prep: &Prepared,
    pipes: &PipeTable,
    guard: &mut Guard,
) -> Result<u32, Error> {
    let (plan, window, own_vdso) = (&prep.plan, prep.window, prep.own_vdso);
    let mut phases = Phases::new();
    let leader = Tid(pid);
    wait_sigstop(leader).map_err(|e| match e {
        Error::Invalid(why) => Error::Invalid(format!("child setup: {why}")),
        e => e,
    })?;
    phases.mark("child setup");
    leader.set_options(
        libc::PTRACE_O_TRACECLONE | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACESYSGOOD,
    )?;
    let scratch = plan.scratch;
    let data = scratch + DATA_OFF;
    let inj = Injector::new(pid, scratch)?;

    // Did the child fail while preparing itself?
    let mut hdr = [0u8; 24];
    inj.read(scratch + HDR_OFF, &mut hdr)?;
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&hdr[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    if word(0) != 0 {
        return Err(plan.setup.error(word(0), word(1), word(2)));
    }

    let base = leader.get_regs()?;
    let call = |nr: i64, args: [u64; 6], what: &str| inj.call(leader, &base, nr, args, what);

    // Our rseq area (glibc registers one) is about to disappear: unregister it first.
    if let Some((addr, len, sig)) = leader.rseq_config() {
        call(
            libc::SYS_rseq,
            [
                addr,
                u64::from(len),
                RSEQ_FLAG_UNREGISTER,
                u64::from(sig),
                0,
                0,
            ],
            "rseq unregister",
        )?;
    }

    // Unmap everything but the scratch area and the window: the agent image, heap, stack,
    // vDSO.
    let mut keep = vec![(scratch, scratch + SCRATCH_LEN)];
    if let Some((addr, len, _)) = window {
        keep.push((addr, addr + (len as u64).next_multiple_of(PAGE)));
    }
    keep.sort_unstable();
    let mut from = 0;
    let mut unmaps = Vec::new();
    for &(s, e) in keep.iter().chain(std::iter::once(&(USER_TOP, USER_TOP))) {
        if s > from {
            unmaps.push((libc::SYS_munmap, [from, s - from, 0, 0, 0, 0]));
        }
        from = e;
    }
    inj.batch_ok(leader, &base, data, &unmaps, |_| {
        "munmap agent image".to_owned()
    })?;

    phases.mark("unmap");
    // The vDSO, where the target had it.
    if let Some(v) = p.vmas.iter().find(|v| v.kind == VmaKind::Vdso) {
        let (vdso, vvar) =
            own_vdso.ok_or_else(|| Error::Invalid("the agent has no vDSO to move".to_owned()))?;
        let at = v
            .start
            .checked_sub(vdso - vvar)
            .ok_or_else(|| Error::Invalid("bad vDSO address".to_owned()))?;
        call(
            libc::SYS_arch_prctl,
            [ARCH_MAP_VDSO_64, at, 0, 0, 0, 0],
            "arch_prctl(ARCH_MAP_VDSO_64)",
        )?;
        let maps = read_maps(&pid.to_string())?;
        let got = maps.iter().find(|m| m.name == "[vdso]").map(|m| m.start);
        if got != Some(v.start) {
            return Err(Error::Invalid(format!(
                "vDSO landed at {got:x?}, not at {:#x}",
                v.start
            )));
        }
    }

    phases.mark("vdso");
    // The target's areas, writable while we fill them.
    let mut open_files: Vec<(&[u8], bool, u64)> = Vec::new();
    let result = map_areas(p, pipes, &inj, leader, &base, data, &mut open_files);
    let closes: Vec<(i64, [u64; 6])> = open_files
        .iter()
        .map(|(_, _, fd)| (libc::SYS_close, [*fd, 0, 0, 0, 0, 0]))
        .collect();
    let closed = inj.batch_ok(leader, &base, data, &closes, |_| "close".to_owned());
    result?;
    closed?;

    phases.mark("map");
    // The old pages, copied by the child itself.
    if let Some((waddr, _, lo)) = window {
        copy_pages(p, &inj, leader, &base, data, waddr, lo)?;
    }
    phases.mark("copy");
    let protects: Vec<(i64, [u64; 6])> = p
        .vmas
        .iter()
        .filter(|v| (v.kind.is_anon() || v.kind == VmaKind::File) && fill_prot(v) != v.prot)
        .map(|v| {
            let prot = u64::from(v.prot.unsigned_abs());
            (
                libc::SYS_mprotect,
                [v.start, v.end - v.start, prot, 0, 0, 0],
            )
        })
        .collect();
    inj.batch_ok(leader, &base, data, &protects, |i| {
        format!("mprotect {:#x}", protects.get(i).map_or(0, |c| c.1[0]))
    })?;

    set_mm(p, &inj, leader, &base, data)?;
    phases.mark("mprotect+mm");

    // The other threads, born stopped (PTRACE_O_TRACECLONE).
    let mut threads: Vec<(Tid, Regs)> = vec![(leader, base)];
    for t in p.threads.iter().skip(1) {
        let tid = create_thread(&inj, leader, &base, data, t.tid, guard)?;
        threads.push((tid, tid.get_regs()?));
    }

    phases.mark("threads");
    // Credentials: only when they differ from the stub's (the agent's copy).
    let creds = match &p.creds {
        Some(want) => {
            let have = creds::current(pid)
                .ok_or_else(|| Error::Invalid("the stub's credentials unreadable".to_owned()))?;
            let same = want.securebits == 0
                && Creds {
                    dumpable: want.dumpable,
                    ..have.clone()
                } == *want;
            (!same).then_some((want, have))
        }
        None => None,
    };
    // Per-thread kernel state.
    for ((tid, tbase), t) in threads.iter().zip(&p.threads) {
        let call = |nr: i64, args: [u64; 6], what: &str| inj.call(*tid, tbase, nr, args, what);
        if let Some(a) = t.tid_address {
            call(
                libc::SYS_set_tid_address,
                [a, 0, 0, 0, 0, 0],
                "set_tid_address",
            )?;
        }
        if let Some((head, len)) = t.robust_list {
            call(
                libc::SYS_set_robust_list,
                [head, len, 0, 0, 0, 0],
                "set_robust_list",
            )?;
        }
        if let Some((addr, len, sig)) = t.rseq {
            let args = [addr, u64::from(len), 0, u64::from(sig), 0, 0];
            call(libc::SYS_rseq, args, "rseq")?;
        }
        let mut name = t.comm.iter().copied().take(15).collect::<Vec<u8>>();
        name.push(0);
        inj.write(data, &name)?;
        let pr_set_name = u64::from(libc::PR_SET_NAME.unsigned_abs());
        call(
            libc::SYS_prctl,
            [pr_set_name, data, 0, 0, 0, 0],
            "PR_SET_NAME",
        )?;
        if let Some((want, have)) = &creds {
            creds::apply(&inj, *tid, tbase, data, want, have)?;
        }
    }
    if let Some(want) = p
        .creds
        .as_ref()
        .filter(|w| creds.is_some() || w.dumpable == 0)
    {
        creds::set_dumpable(&inj, leader, &base, want)?;
    }

    // A crash procedure's block, in a fresh mapping of its own.
    let crash_block = if procedure::registered(&p.sigs) {
        let len = procedure::block(0, &plan.setup.lost).len() as u64;
        let rw = u64::from((libc::PROT_READ | libc::PROT_WRITE).unsigned_abs());
        let flags = u64::from((libc::MAP_PRIVATE | libc::MAP_ANONYMOUS).unsigned_abs());
        let at = call(
            libc::SYS_mmap,
            [0, len, rw, flags, u64::MAX, 0],
            "mmap the crash procedure's block",
        )?;
        inj.write(at, &procedure::block(at, &plan.setup.lost))?;
        Some(at)
    } else {
        None
    };

    // Final state of the other threads; they stay stopped until the detach.
    for ((tid, _), t) in threads.iter().zip(&p.threads).skip(1) {
        tid.set_regs(&t.regs)?;
        tid.set_fpregs(&t.fpu)?;
        tid.set_sigmask(t.sigmask)?;
    }

    // Its timers, late (they run from here on), before the limits (a low
    // RLIMIT_SIGPENDING must not refuse a POSIX timer's preallocated signal).
    set_timers(p, &inj, leader, &base, data);

    // Its umask, personality and limits (the limits last, from outside: a lower
    // RLIMIT_AS or RLIMIT_NOFILE must not fail the rebuild).
    if let Some(l) = &p.limits {
        call(
            libc::SYS_umask,
            [u64::from(l.umask), 0, 0, 0, 0, 0],
            "umask",
        )?;
        call(
            libc::SYS_personality,
            [u64::from(l.personality), 0, 0, 0, 0, 0],
            "personality",
        )?;
        set_rlimits(pid, &l.rlimits);
    }

    // The leader: drop the window, then (without int3 from here on, so no SIGTRAP can
    // reset an ignored or blocked SIGTRAP action) the scratch area.
    let lt = &p.threads[0];
    if let Some((addr, len, _)) = window {
        call(
            libc::SYS_munmap,
            [addr, len as u64, 0, 0, 0, 0],
            "munmap window",
        )?;
    }
    leader.set_fpregs(&lt.fpu)?;
    leader.set_sigmask(lt.sigmask)?;
    if let Some(s) = p.sigs.iter().find(|s| s.signo == libc::SIGTRAP) {
        // Earlier int3 stops may have reset it to SIG_DFL: install it again.
        let mut act = Vec::with_capacity(32);
        for w in [s.handler, s.flags, s.restorer, s.mask] {
            act.extend_from_slice(&w.to_ne_bytes());
        }
        inj.write(data, &act)?;
        let sigtrap = u64::from(libc::SIGTRAP.unsigned_abs());
        inj.call_sysstop(
            leader,
            &base,
            libc::SYS_rt_sigaction,
            [sigtrap, data, 0, 8, 0, 0],
            "rt_sigaction(SIGTRAP)",
        )?;
    }
    inj.call_sysstop(
        leader,
        &base,
        libc::SYS_munmap,
        [scratch, SCRATCH_LEN, 0, 0, 0, 0],
        "munmap scratch",
    )?;
    leader.set_regs(&lt.regs)?;

    for (tid, _) in threads.iter().skip(1) {
        tid.detach()?;
    }
    // Queued while it is stopped: the leader runs its crash procedure before anything else.
    if let Some(at) = crash_block {
        procedure::queue(pid, at)
            .map_err(|e| Error::os("rt_tgsigqueueinfo(crash procedure)", e))?;
        crate::log!(
            "resurrect {pid}: its crash procedure is called ({} lost)",
            plan.setup.lost.len()
        );
    }
    queue_pending(pid, &p.pending);
    leader.detach()?;
    phases.mark("thread state+detach");
    crate::log!("resurrect {pid}: {phases}");
    u32::try_from(threads.len()).map_err(|_| Error::Invalid("too many threads".to_owned()))
}

/// Protection while filling: writable when there is something to copy.
fn fill_prot(v: &super::manifest::Vma) -> i32 {
    if v.copies.is_empty() {
        v.prot
    } else {
        v.prot | libc::PROT_READ | libc::PROT_WRITE
    }
}

fn map_areas<'p>(
    p: &'p Process,
    pipes: &'p PipeTable,
    inj: &Injector,
    t: Tid,
    base: &Regs,
    data: u64,
    open_files: &mut Vec<(&'p [u8], bool, u64)>,
) -> Result<(), Error> {
    let areas: Vec<&super::manifest::Vma> = p
        .vmas
        .iter()
        .filter(|v| v.kind.is_anon() || v.kind == VmaKind::File)
        .collect();
    // Shared memory is opened read-write: its pages are filled through the mapping.
    let writable_shared = |v: &super::manifest::Vma| {
        v.shared && (v.prot & libc::PROT_WRITE != 0 || v.shm_id().is_some())
    };
    // What an area maps: its file, or the agent's memfd of its shared memory object.
    let source = |v: &'p super::manifest::Vma| -> Result<Option<&'p [u8]>, Error> {
        match v.shm_id() {
            Some(id) => pipes
                .shm_path(id)
                .map(Some)
                .ok_or_else(|| Error::Invalid(format!("shared memory {id} was not made"))),
            None => Ok(v.path.as_deref()),
        }
    };
    // The files, opened in one batch: paths first in the data area, then the table.
    let mut wanted: Vec<(&'p [u8], bool)> = Vec::new();
    for v in &areas {
        if let Some(path) = source(v)? {
            let key = (path, writable_shared(v));
            if !wanted.contains(&key) {
                wanted.push(key);
            }
        }
    }
    let mut strings = Vec::new();
    let mut opens = Vec::new();
    for (path, rw) in &wanted {
        let at = data + strings.len() as u64;
        strings.extend_from_slice(path);
        strings.push(0);
        let mode = if *rw { libc::O_RDWR } else { libc::O_RDONLY };
        let oflags = u64::from((mode | libc::O_CLOEXEC).unsigned_abs());
        opens.push((libc::SYS_openat, [AT_FDCWD, at, oflags, 0, 0, 0]));
    }
    if !opens.is_empty() {
        inj.write(data, &strings)?;
        let table = (data + strings.len() as u64).next_multiple_of(8);
        let fds = inj.batch(t, base, table, &opens, "open mapped files")?;
        for (fd, (path, rw)) in fds.iter().zip(&wanted) {
            let fd = tracer::checked(*fd, &format!("open {}", text(path)))?;
            open_files.push((path, *rw, fd));
        }
    }
    let mut maps = Vec::new();
    for v in &areas {
        let len = v.end - v.start;
        let prot = fill_prot(v);
        let mut flags = libc::MAP_FIXED_NOREPLACE
            | if v.shared {
                libc::MAP_SHARED
            } else {
                libc::MAP_PRIVATE
            };
        if v.growsdown {
            flags |= libc::MAP_GROWSDOWN;
        }
        let (fd, off) = if let Some(path) = source(v)? {
            let rw = writable_shared(v);
            let fd = open_files
                .iter()
                .find(|f| f.0 == path && f.1 == rw)
                .map(|f| f.2)
                .ok_or_else(|| Error::Invalid(format!("{} was not opened", text(path))))?;
            (fd, v.pgoff)
        } else {
            flags |= libc::MAP_ANONYMOUS;
            let copied: u64 = v.copies.iter().map(|c| c.len).sum();
            if copied.saturating_mul(2) >= len {
                // Mostly present: fault it in with one call instead of page by page.
                flags |= libc::MAP_POPULATE;
            }
            (u64::MAX, 0)
        };
        maps.push((
            libc::SYS_mmap,
            [
                v.start,
                len,
                u64::from(prot.unsigned_abs()),
                u64::from(flags.unsigned_abs()),
                fd,
                off,
            ],
        ));
    }
    let name = |i: usize| {
        areas
            .get(i)
            .map_or_else(String::new, |v| format!("mmap {:#x}-{:#x}", v.start, v.end))
    };
    let got = inj.batch_ok(t, base, data, &maps, name)?;
    for (i, (addr, v)) in got.iter().zip(&areas).enumerate() {
        if *addr != v.start {
            return Err(Error::Invalid(format!("{} landed at {addr:#x}", name(i))));
        }
    }
    Ok(())
}

/// Copies every `copy` run from the window with the child's `rep movsb` loop, in batches
/// of (dst, src, len) triples written into the scratch data.
fn copy_pages(
    p: &Process,
    inj: &Injector,
    t: Tid,
    base: &Regs,
    data: u64,
    waddr: u64,
    lo: u64,
) -> Result<(), Error> {
    const MAX: usize = MAX_TRIPLES;
    let mut triples: Vec<[u64; 3]> = Vec::with_capacity(MAX);
    let flush = |triples: &mut Vec<[u64; 3]>| -> Result<(), Error> {
        if triples.is_empty() {
            return Ok(());
        }
        let bytes: Vec<u8> = triples
            .iter()
            .flat_map(|t| t.iter().flat_map(|w| w.to_ne_bytes()))
            .collect();
        inj.write(data, &bytes)?;
        inj.copy(t, base, data, triples.len() as u64)?;
        triples.clear();
        Ok(())
    };
    for c in p.vmas.iter().flat_map(|v| &v.copies) {
        let src = waddr + (c.gpa - lo);
        // Merge runs that continue both in the target and in the window.
        if let Some(last) = triples.last_mut() {
            if last[0] + last[2] == c.vaddr && last[1] + last[2] == src {
                last[2] += c.len;
                continue;
            }
        }
        if triples.len() == MAX {
            flush(&mut triples)?;
        }
        triples.push([c.vaddr, src, c.len]);
    }
    flush(&mut triples)
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP)` with the `mm` and `auxv` records and the exe file.
fn set_mm(p: &Process, inj: &Injector, t: Tid, base: &Regs, data: u64) -> Result<(), Error> {
    let exe_fd = match &p.exe {
        Some(exe) => {
            let mut z = exe.clone();
            z.push(0);
            inj.write(data, &z)?;
            let oflags = u64::from((libc::O_RDONLY | libc::O_CLOEXEC).unsigned_abs());
            let what = format!("open {}", text(exe));
            Some(inj.call(
                t,
                base,
                libc::SYS_openat,
                [AT_FDCWD, data, oflags, 0, 0, 0],
                &what,
            )?)
        }
        None => None,
    };
    let m = &p.mm;
    let auxv_addr = data + 128;
    let mut buf = Vec::with_capacity(128 + p.auxv.len() * 8);
    for w in [
        m.start_code,
        m.end_code,
        m.start_data,
        m.end_data,
        m.start_brk,
        m.brk,
        m.start_stack,
        m.arg_start,
        m.arg_end,
        m.env_start,
        m.env_end,
        auxv_addr,
    ] {
        buf.extend_from_slice(&w.to_ne_bytes());
    }
    let auxv_size = u32::try_from(p.auxv.len() * 8).unwrap_or(u32::MAX);
    buf.extend_from_slice(&auxv_size.to_ne_bytes());
    let fd32 = exe_fd.map_or(u32::MAX, |fd| u32::try_from(fd).unwrap_or(u32::MAX));
    buf.extend_from_slice(&fd32.to_ne_bytes());
    buf.resize(128, 0);
    for w in &p.auxv {
        buf.extend_from_slice(&w.to_ne_bytes());
    }
    inj.write(data, &buf)?;
    let set_mm = u64::from(libc::PR_SET_MM.unsigned_abs());
    let mm_map = u64::from(libc::PR_SET_MM_MAP.unsigned_abs());
    let r = inj.call(
        t,
        base,
        libc::SYS_prctl,
        [set_mm, mm_map, data, PRCTL_MM_MAP_SIZE, 0, 0],
        "prctl(PR_SET_MM_MAP)",
    );
    if let Some(fd) = exe_fd {
        inj.call(t, base, libc::SYS_close, [fd, 0, 0, 0, 0, 0], "close exe")?;
    }
    r.map(drop)
}

/// Creates one more thread with `clone3(set_tid)` injected into the leader.
fn create_thread(
    inj: &Injector,
    leader: Tid,
    base: &Regs,
    data: u64,
    want: u32,
    guard: &mut Guard,
) -> Result<Tid, Error> {
    let flags = libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM;
    let mut words = [0u64; 11];
    words[0] = u64::from(flags.unsigned_abs());
    words[8] = data + CLONE_ARGS_SIZE; // set_tid
    words[9] = 1; // set_tid_size
    let mut buf: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    buf.truncate(usize::try_from(CLONE_ARGS_SIZE).unwrap_or(88));
    buf.extend_from_slice(&want.to_ne_bytes());
    inj.write(data, &buf)?;
    inj.start(
        leader,
        base,
        libc::SYS_clone3,
        [data, CLONE_ARGS_SIZE, 0, 0, 0, 0],
    )?;
    leader.cont(0)?;
    let status = leader.wait()?;
    let event = libc::SIGTRAP | (libc::PTRACE_EVENT_CLONE << 8);
    if !(libc::WIFSTOPPED(status) && (status >> 8) == event) {
        if libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGTRAP {
            let rax = leader.get_regs()?[reg::RAX];
            let errno = i32::try_from(-i64::from_ne_bytes(rax.to_ne_bytes())).unwrap_or(0);
            return Err(Error::Remote {
                what: format!("clone3 thread {want}"),
                source: io::Error::from_raw_os_error(errno),
            });
        }
        return Err(Error::Invalid(format!(
            "clone3 thread {want}: {}",
            tracer::describe_status(status)
        )));
    }
    let new = i32::try_from(leader.event_msg()?).unwrap_or(0);
    if new > 0 {
        guard.tids.push(new);
    }
    leader.cont(0)?;
    leader.wait_stop(libc::SIGTRAP, "clone3")?;
    if u32::try_from(new).ok() != Some(want) {
        return Err(Error::Invalid(format!(
            "clone3 gave thread {new}, not {want}"
        )));
    }
    let tid = Tid(new);
    tid.wait_stop(libc::SIGSTOP, "thread start")?;
    Ok(tid)
}

/// `PTRACE_TRACEME` in a stub the agent made: its tracer is the agent. Exits on failure.
///
/// # Safety
/// A raw system call; call only in a fresh child of `clone3`.
pub(super) unsafe fn trace_me() {
    // SAFETY: PTRACE_TRACEME takes no pointers; _exit never returns.
    unsafe {
        if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) == -1 {
            libc::_exit(EXIT_TRACEME);
        }
    }
}

/// The child (after [`trace_me`] or born traced, after the stub cloned its own children):
/// prepares itself and stops. Never returns.
///
/// # Safety
/// Call only in the fresh child of `clone3` from a single-threaded process; it makes only
/// async-signal-safe system calls on data prepared before the clone.
pub(super) unsafe fn child(plan: &ChildPlan) -> ! {
    // SAFETY: raw system calls on pre-built arguments; every pointer refers to `plan`
    // (which this copy of the address space keeps alive) or to the scratch area we map
    // here; the function ends in a stop and `_exit`.
    unsafe {
        let s = libc::mmap(
            plan.scratch as *mut libc::c_void,
            SCRATCH_SIZE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        if s as u64 != plan.scratch {
            libc::_exit(EXIT_SCRATCH);
        }
        let s = s.cast::<u8>();
        std::ptr::copy_nonoverlapping(tracer::CODE.as_ptr(), s, tracer::CODE.len());
        let hdr = s.add(HDR_OFFSET).cast::<u64>();
        let fail = |step: u64, index: usize| -> ! {
            let errno = *libc::__errno_location();
            *hdr = step;
            *hdr.add(1) = index as u64;
            *hdr.add(2) = u64::from(errno.unsigned_abs());
            stop()
        };

        if let Some((fd, clusters)) = &plan.window {
            for (i, &(addr, len, off)) in clusters.iter().enumerate() {
                let w = libc::mmap(
                    addr as *mut libc::c_void,
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
                    *fd,
                    off,
                );
                if w as u64 != addr {
                    fail(STEP_WINDOW, i);
                }
            }
        }
        // Nothing of the agent's stays open (the channel, the signal pipe, the window)
        // but the pipe ends this process takes.
        Setup::close_all_but(plan.setup.keep());
        if let Err((step, index)) = plan.setup.apply() {
            fail(step, index);
        }
        // The agent's alternate signal stack (if any) is gone with its memory.
        let ss = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        libc::sigaltstack(&ss, std::ptr::null_mut());
        stop()
    }
}

/// Queues again the signals the dead kernel had pending for process `pid` (tid 0: for
/// the process), with their `siginfo` where the kernel lets another process set it (a
/// negative `si_code` but `SI_TKILL`: `sigqueue`, `kill` from user space); those it made
/// itself (`si_code` >= 0) are sent with `tgkill`/`kill`, their details lost.
pub(super) fn queue_pending(pid: i32, pending: &[super::manifest::Pending]) {
    const SI_TKILL: i32 = -6;
    for q in pending {
        let sig = q.signo();
        let mut info = [0u8; 128];
        info[..q.info.len()].copy_from_slice(&q.info);
        let tid = i32::try_from(q.tid).unwrap_or(0);
        let with_info = q.code() < 0 && q.code() != SI_TKILL;
        // SAFETY: the calls take plain integers and, with info, a 128-byte siginfo buffer
        // that lives across the call.
        let r = unsafe {
            match (tid, with_info) {
                (0, true) => libc::syscall(libc::SYS_rt_sigqueueinfo, pid, sig, info.as_ptr()),
                (0, false) => libc::syscall(libc::SYS_kill, pid, sig),
                (t, true) => libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, t, sig, info.as_ptr()),
                (t, false) => libc::syscall(libc::SYS_tgkill, pid, t, sig),
            }
        };
        if r != 0 {
            crate::log!(
                "resurrect {pid}: pending signal {sig} (thread {tid}) not queued again: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Most `timer_create` calls made for one process (each id below the wanted ones costs
/// one, as the kernel gives ids in increasing order).
const MAX_TIMER_CREATES: usize = super::manifest::MAX_PTIMERS;
/// `SIGEV_NONE`, `TIMER_ABSTIME`.
const SIGEV_NONE: u32 = 1;
const TIMER_ABSTIME: u64 = 1;

/// A `struct sigevent` (64 bytes on x86-64): value, signo, notify, then the thread id.
fn sigevent(value: u64, signo: u32, notify: u32, tid: u32) -> [u8; 64] {
    let mut ev = [0u8; 64];
    ev[..8].copy_from_slice(&value.to_ne_bytes());
    ev[8..12].copy_from_slice(&signo.to_ne_bytes());
    ev[12..16].copy_from_slice(&notify.to_ne_bytes());
    ev[16..20].copy_from_slice(&tid.to_ne_bytes());
    ev
}

/// `struct itimerspec` / `struct itimerval` bytes: the interval, then the value (seconds,
/// then nanoseconds or, with `micro`, microseconds, a value never rounded to 0).
fn timer_value(value_ns: u64, interval_ns: u64, micro: bool) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, ns) in [interval_ns, value_ns].into_iter().enumerate() {
        let (sec, mut frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
        if micro {
            frac /= 1000;
            if i == 1 && sec == 0 && frac == 0 && ns > 0 {
                frac = 1;
            }
        }
        out[i * 16..i * 16 + 8].copy_from_slice(&sec.min(i64::MAX as u64).to_ne_bytes());
        out[i * 16 + 8..i * 16 + 16].copy_from_slice(&frac.to_ne_bytes());
    }
    out
}

/// Arms the interval timers and makes the POSIX timers of `p` again in its stopped leader
/// `t`, each with its old id: the kernel hands ids out in increasing order, so timers are
/// made (and the unwanted ones deleted) until the id comes up, at most
/// [`MAX_TIMER_CREATES`] in all; then the next id is brought where it was. What cannot be
/// done is logged, never fatal (the process then lacks that timer).
fn set_timers(p: &Process, inj: &Injector, t: Tid, base: &Regs, data: u64) {
    let pid = t.0;
    let (slot, ev_at, val_at) = (data, data + 16, data + 96);
    let run = |nr: i64, args: [u64; 6], what: &str| -> Result<u64, Error> {
        inj.call(t, base, nr, args, what)
    };
    let mut budget = MAX_TIMER_CREATES;
    // The id the kernel gives next, once known.
    let mut next: Option<u32> = None;
    // Makes one timer; its id.
    let create = |clock: u32, ev: &[u8; 64]| -> Result<u32, Error> {
        inj.write(ev_at, ev)?;
        inj.write(slot, &[0u8; 4])?;
        run(
            libc::SYS_timer_create,
            [u64::from(clock), ev_at, slot, 0, 0, 0],
            "timer_create",
        )?;
        let mut id = [0u8; 4];
        inj.read(slot, &mut id)?;
        Ok(u32::from_ne_bytes(id))
    };
    let delete = |id: u32| {
        if let Err(e) = run(
            libc::SYS_timer_delete,
            [u64::from(id), 0, 0, 0, 0, 0],
            "timer_delete",
        ) {
            crate::log!("resurrect {pid}: filler timer {id} not deleted: {e}");
        }
    };
    'timers: for pt in &p.ptimers {
        let ev = sigevent(pt.value, pt.signo, pt.notify, pt.tid);
        loop {
            if next.is_some_and(|n| n > pt.id) {
                crate::log!(
                    "resurrect {pid}: POSIX timer {} not restored: the ids are past it",
                    pt.id
                );
                continue 'timers;
            }
            if budget == 0 {
                crate::log!(
                    "resurrect {pid}: POSIX timer {} not restored: more than {MAX_TIMER_CREATES} ids to go through",
                    pt.id
                );
                continue 'timers;
            }
            budget -= 1;
            let id = match create(pt.clock, &ev) {
                Ok(id) => id,
                Err(e) => {
                    crate::log!("resurrect {pid}: POSIX timer {} not restored: {e}", pt.id);
                    continue 'timers;
                }
            };
            next = Some(id.wrapping_add(1));
            if id != pt.id {
                delete(id);
                continue;
            }
            if pt.value_ns > 0 {
                let flags = if pt.absolute { TIMER_ABSTIME } else { 0 };
                let r = inj
                    .write(val_at, &timer_value(pt.value_ns, pt.interval_ns, false))
                    .and_then(|()| {
                        run(
                            libc::SYS_timer_settime,
                            [u64::from(id), flags, val_at, 0, 0, 0],
                            "timer_settime",
                        )
                    });
                if let Err(e) = r {
                    crate::log!("resurrect {pid}: POSIX timer {id} made but not armed: {e}");
                }
            }
            continue 'timers;
        }
    }
    // The next id where it was (ids already past it stay past it).
    if let Some(want) = p.ptimer_next {
        let none = sigevent(0, 0, SIGEV_NONE, 0);
        while budget > 0 && next.is_none_or(|n| n < want) {
            budget -= 1;
            match create(libc::CLOCK_MONOTONIC.unsigned_abs(), &none) {
                Ok(id) => {
                    next = Some(id.wrapping_add(1));
                    delete(id);
                }
                Err(e) => {
                    crate::log!("resurrect {pid}: next POSIX timer id not restored: {e}");
                    break;
                }
            }
        }
    }
    // The interval timers last: the fewer signals stop the injected calls, the better.
    for it in &p.itimers {
        let r = inj
            .write(val_at, &timer_value(it.value_ns, it.interval_ns, true))
            .and_then(|()| {
                run(
                    libc::SYS_setitimer,
                    [u64::from(it.which), val_at, 0, 0, 0, 0],
                    "setitimer",
                )
            });
        if let Err(e) = r {
            crate::log!("resurrect {pid}: itimer {} not restored: {e}", it.which);
        }
    }
}

/// Puts the resource limits `rlimits` (by resource number) on process `pid`; one the
/// crash kernel refuses (a hard limit above `fs.nr_open`) is logged and left as it is.
fn set_rlimits(pid: i32, rlimits: &[(u64, u64)]) {
    for (res, &(cur, max)) in (0u32..).zip(rlimits) {
        let want = libc::rlimit64 {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: prlimit64 reads the local struct; the old value is not asked for.
        let r = unsafe { libc::prlimit64(pid, res, &raw const want, std::ptr::null_mut()) };
        if r != 0 {
            crate::log!(
                "resurrect {pid}: resource limit {res} ({cur:#x}, {max:#x}) not set: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Stops the child for its tracer; if it is ever resumed as it is, it exits.
fn stop() -> ! {
    // SAFETY: raw getpid/kill on ourselves, then _exit; no memory is touched.
    unsafe {
        let me = libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
        libc::_exit(EXIT_RESUMED)
    }
}

/// Time spent in each step of one restore, for the log.
struct Phases {
    last: std::time::Instant,
    done: Vec<(&'static str, u128)>,
}

impl Phases {
    fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.done
            .push((what, now.duration_since(self.last).as_millis()));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (what, ms)) in self.done.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{what} {ms} ms")?;
        }
        Ok(())
    }
}

/// Gap between two runs of old memory below which they share one window mapping.
const CLUSTER_GAP: u64 = 64 << 10;

/// The (start, end) clusters covering the (gpa, len) runs: sorted, merged where less than
/// [`CLUSTER_GAP`] apart.
pub fn clusters_of(runs: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = runs.map(|(g, l)| (g, g + l)).collect();
    runs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (lo, hi) in runs {
        match out.last_mut() {
            Some(last) if lo <= last.1 + CLUSTER_GAP => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_structs_are_laid_out_as_the_kernel_reads_them() {
        let ev = sigevent(0x2a, 34, 4, 77);
        assert_eq!(std::mem::size_of::<libc::sigevent>(), ev.len());
        assert_eq!(std::mem::offset_of!(libc::sigevent, sigev_value), 0);
        assert_eq!(std::mem::offset_of!(libc::sigevent, sigev_signo), 8);
        assert_eq!(std::mem::offset_of!(libc::sigevent, sigev_notify), 12);
        assert_eq!(&ev[..8], &0x2au64.to_ne_bytes());
        assert_eq!(&ev[8..16], &[34, 0, 0, 0, 4, 0, 0, 0]);
        // The thread id is the first word of the union after them.
        assert_eq!(&ev[16..20], &77u32.to_ne_bytes());
        assert_eq!(std::mem::size_of::<libc::itimerspec>(), 32);
        assert_eq!(std::mem::size_of::<libc::itimerval>(), 32);
        let v = timer_value(3_600_000_000_123, 1_000_000_000, false);
        assert_eq!(&v[..8], &1u64.to_ne_bytes());
        assert_eq!(&v[8..16], &0u64.to_ne_bytes());
        assert_eq!(&v[16..24], &3600u64.to_ne_bytes());
        assert_eq!(&v[24..], &123u64.to_ne_bytes());
        // setitimer's microseconds: a value under one is one, never 0 (disarmed).
        let v = timer_value(999, 0, true);
        assert_eq!(&v[16..24], &0u64.to_ne_bytes());
        assert_eq!(&v[24..], &1u64.to_ne_bytes());
        let v = timer_value(1_500_000_000, 0, true);
        assert_eq!(&v[24..], &500_000u64.to_ne_bytes());
    }

    #[test]
    fn clusters_merge_close_runs_only() {
        let runs = [
            (0x10_0000, 0x1000),
            (0x1000, 0x1000),
            (0x3000, 0x2000),
            (0x10_1000, 0x1000),
        ];
        assert_eq!(
            clusters_of(runs.into_iter()),
            [(0x1000, 0x5000), (0x10_0000, 0x10_2000)]
        );
    }

    #[test]
    fn holes_avoid_busy_ranges() {
        let busy = [
            (HOLE_LOW, HOLE_LOW + 0x1000),
            (HOLE_LOW + 0x20_0000, HOLE_LOW + 0x30_0000),
        ];
        let a = find_hole(&busy, 0x4_0000).expect("hole");
        assert!(a >= HOLE_LOW + 0x1000 + HOLE_GUARD);
        assert!(a + 0x4_0000 + HOLE_GUARD <= HOLE_LOW + 0x20_0000 || a >= HOLE_LOW + 0x30_0000);
        assert_eq!(a % PAGE, 0);
        let big = find_hole(&busy, 1 << 40).expect("hole");
        assert!(big >= HOLE_LOW + 0x30_0000 + HOLE_GUARD);
        assert_eq!(find_hole(&[(0, USER_TOP)], 0x1000), None);
        assert_eq!(find_hole(&[], USER_TOP), None);
    }

    #[test]
    fn code_bytes() {
        assert_eq!(&tracer::CODE[..3], &[0x0f, 0x05, 0xcc]);
        assert_eq!(
            tracer::CODE[usize::try_from(tracer::COPY_OFF).unwrap_or(0)],
            0xfc
        );
        assert_eq!(tracer::CODE.last(), Some(&0xcc));
    }
}
