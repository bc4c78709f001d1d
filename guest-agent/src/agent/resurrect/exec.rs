//! Completes an exec that the crash interrupted past its point of no return (an `exec`
//! block of the manifest): the process is created with its pid (`clone3(set_tid)`, as
//! [`super::restore`] does), gets what an exec keeps (its open files without close-on-exec,
//! its directory, its ignored signals and signal mask) and runs `execve(path, argv, envp)`.
//!
//! The child reports a failure before the exec through a close-on-exec pipe (step, index,
//! errno, as three u64) and exits; end of file on the pipe means the exec happened.

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;

use super::creds::{self, Step};
use super::manifest::Exec;
use super::pipes::PipeTable;
use super::restore::{Setup, STEP_CREDS, STEP_EXEC, STEP_SIGMASK};
use super::{text, Error};

/// Exit code of a child whose exec failed (the reason went through the pipe).
const EXIT_EXEC_FAILED: i32 = 127;

/// What the child needs, prepared before `clone3` (the child does not allocate).
pub(super) struct ExecPlan {
    setup: Setup,
    path: CString,
    /// NULL-terminated pointer arrays into `strings`.
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// Owns what `argv` and `envp` point to.
    _strings: Vec<CString>,
    sigmask: u64,
    /// `umask` and the resource limits as `struct rlimit64` pairs, by resource number.
    limits: Option<(u32, Vec<[u64; 2]>)>,
    /// The calls that give it its credentials, and the bytes they read (their pointers
    /// point into these).
    creds: Option<(Vec<Step>, Box<[u8]>)>,
    /// The pipe's write end, and the number it moves to (above every fd of the target).
    status: RawFd,
    status_at: RawFd,
    /// What the child keeps of the agent's descriptors (sorted).
    keep: Vec<RawFd>,
}

/// NUL-free bytes as a C string.
fn c_string(what: &str, bytes: &[u8]) -> Result<CString, Error> {
    CString::new(bytes.to_vec())
        .map_err(|_| Error::Invalid(format!("NUL in {what} '{}'", text(bytes))))
}

/// An exec planned before any process is created: the child's plan and the read end of
/// its status pipe.
pub(super) struct Prepared {
    pub(super) pid: i32,
    pub(super) plan: ExecPlan,
    status: RawFd,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: closes the pipe ends this plan opened (the write end may be closed
        // already: `close_writer` sets it to -1).
        unsafe {
            libc::close(self.status);
            if self.plan.status >= 0 {
                libc::close(self.plan.status);
            }
        }
    }
}

impl Prepared {
    /// Closes the agent's copy of the write end, once the child exists.
    pub(super) fn close_writer(&mut self) {
        if self.plan.status >= 0 {
            // SAFETY: closes our own descriptor, once.
            unsafe { libc::close(self.plan.status) };
            self.plan.status = -1;
        }
    }
}

/// Plans the interrupted exec of `e` (nothing is created yet).
pub(super) fn prepare(e: &Exec, pipes: &PipeTable) -> Result<Prepared, Error> {
    // A new program has no crash procedure yet: nothing may be lost.
    let setup = Setup::new(&e.fds, e.cwd.as_deref(), &e.sigs, &[], &[], pipes, false)?;
    let mut strings = Vec::with_capacity(e.argv.len() + e.envp.len());
    for a in &e.argv {
        strings.push(c_string("argument", a)?);
    }
    for v in &e.envp {
        strings.push(c_string("environment string", v)?);
    }
    let ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    let (args, envs) = ptrs.split_at(e.argv.len());
    let nul = std::iter::once(std::ptr::null());
    let argv: Vec<_> = args.iter().copied().chain(nul.clone()).collect();
    let envp: Vec<_> = envs.iter().copied().chain(nul).collect();

    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::os("pipe2", io::Error::last_os_error()));
    }
    let [rd, wr] = fds;
    let status_at = setup.max_fd().max(2) + 1;
    // What the child keeps of ours: its pipe ends and the status pipe.
    let mut keep = setup.keep().to_vec();
    keep.push(status_at);
    keep.sort_unstable();
    let limits = e
        .limits
        .as_ref()
        .map(|l| (l.umask, l.rlimits.iter().map(|&(c, m)| [c, m]).collect()));
    // Only when they differ from ours (the child starts as our copy).
    let cred_steps = match &e.creds {
        Some(want) => {
            let have = creds::current(std::process::id().try_into().unwrap_or(0))
                .ok_or_else(|| Error::Invalid("the agent's credentials unreadable".into()))?;
            let same = want.securebits == 0
                && super::manifest::Creds {
                    dumpable: want.dumpable,
                    ..have.clone()
                } == *want;
            (!same).then(|| {
                let bytes: Box<[u8]> = creds::steps(want, &have, 0).1.into();
                let at = bytes.as_ptr() as u64;
                (creds::steps(want, &have, at).0, bytes)
            })
        }
        None => None,
    };
    let plan = ExecPlan {
        setup,
        path: c_string("path", &e.path)?,
        argv,
        envp,
        _strings: strings,
        sigmask: e.sigmask,
        limits,
        creds: cred_steps,
        status: wr,
        status_at,
        keep,
    };
    let pid = i32::try_from(e.pid).map_err(|_| Error::Invalid("pid out of range".into()))?;
    Ok(Prepared {
        pid,
        plan,
        status: rd,
    })
}

/// Waits until the child of `prep` (made by the agent or by its parent's stub) has run
/// its exec, or reports why it could not. Every other holder of the status pipe's write
/// end must have closed it (the agent's copy: [`Prepared::close_writer`]).
pub(super) fn finish(prep: &mut Prepared) -> Result<(), Error> {
    prep.close_writer();
    wait_exec(prep.status, prep.pid, &prep.plan.setup)
}

/// Reads the child's report: end of file (its exec closed the pipe) is success.
fn wait_exec(rd: RawFd, pid: i32, setup: &Setup) -> Result<(), Error> {
    let mut rec = [0u8; 24];
    let mut got = 0;
    while got < rec.len() {
        // SAFETY: reads into the unfilled part of `rec`.
        let n = unsafe { libc::read(rd, rec[got..].as_mut_ptr().cast(), rec.len() - got) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::os("read the exec status", err));
        }
        if n == 0 {
            break;
        }
        got += usize::try_from(n).unwrap_or(0);
    }
    if got == 0 {
        return Ok(());
    }
    // The child failed before its exec and exits: reap it if it is ours (one its parent's
    // stub made is reaped by that parent).
    let mut st = 0;
    // SAFETY: waits for a child by pid; ECHILD when it is not ours.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if got < rec.len() {
        return Err(Error::Invalid(format!(
            "the child sent a {got}-byte status"
        )));
    }
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&rec[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    Err(setup.error(word(0), word(1), word(2)))
}

/// The child: sets itself up and execs. Never returns.
///
/// # Safety
/// Call only in the fresh child of `clone3` from a single-threaded process; it makes only
/// async-signal-safe system calls on data prepared before the clone.
pub(super) unsafe fn child(plan: &ExecPlan) -> ! {
    // SAFETY: raw system calls on pre-built arguments; every pointer refers to `plan`,
    // which this copy of the address space keeps alive; the function ends in execve or
    // `_exit`.
    unsafe {
        let status = plan.status_at;
        let fail = |step: u64, index: usize| -> ! {
            let errno = *libc::__errno_location();
            let rec = [step, index as u64, u64::from(errno.unsigned_abs())];
            libc::write(status, rec.as_ptr().cast(), 24);
            libc::_exit(EXIT_EXEC_FAILED)
        };
        // The status pipe goes above the target's fds; nothing else of the agent's stays.
        if plan.status != status && libc::dup3(plan.status, status, libc::O_CLOEXEC) < 0 {
            libc::_exit(EXIT_EXEC_FAILED);
        }
        Setup::close_all_but(&plan.keep);
        // Signals the agent ignores would stay ignored across the exec: only the target's
        // (in the plan) may.
        let default = [0u64; 4];
        for signo in (1..=64).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP) {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signo,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
        if let Err((step, index)) = plan.setup.apply() {
            fail(step, index);
        }
        let mask = plan.sigmask;
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            std::ptr::addr_of!(mask),
            std::ptr::null_mut::<u64>(),
            8usize,
        ) != 0
        {
            fail(STEP_SIGMASK, 0);
        }
        if let Some((umask, rlimits)) = &plan.limits {
            libc::syscall(libc::SYS_umask, *umask);
            // A limit the kernel refuses stays at its default (the exec would meet it).
            for (res, lim) in rlimits.iter().enumerate() {
                libc::syscall(
                    libc::SYS_prlimit64,
                    0,
                    res,
                    lim.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                );
            }
        }
        if let Some((steps, _)) = &plan.creds {
            for (i, (nr, a, _)) in steps.iter().enumerate() {
                if libc::syscall(*nr, a[0], a[1], a[2], a[3], a[4], a[5]) < 0 {
                    fail(STEP_CREDS, i);
                }
            }
        }
        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(STEP_EXEC, 0)
    }
}
