//! ptrace plumbing: stops, registers, and system calls injected through the scratch area.
//!
//! The scratch area is an RWX mapping in the tracee whose first bytes are `syscall; int3`
//! and a small `rep movsb` copy loop. To run a system call in a stopped thread we point
//! its `rip` at the `syscall`, load the number and arguments, set `orig_rax = -1` (no
//! restart logic for the stop we leave) and let it run into the `int3`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::Error;

/// `struct user_regs_struct` as 27 words, in the order of the manifest's `regs` record.
pub type Regs = [u64; 27];

/// Indexes into [`Regs`].
pub mod reg {
    pub const R14: usize = 1;
    pub const R13: usize = 2;
    pub const R12: usize = 3;
    pub const R10: usize = 7;
    pub const R9: usize = 8;
    pub const R8: usize = 9;
    pub const RAX: usize = 10;
    pub const RDX: usize = 12;
    pub const RSI: usize = 13;
    pub const RDI: usize = 14;
    pub const ORIG_RAX: usize = 15;
    pub const RIP: usize = 16;
}

/// Offset of `syscall; int3` in the scratch area.
pub const SYSCALL_OFF: u64 = 0;
/// Offset of the copy loop: `r8` = array of (dst, src, len) triples, `r9` = their count;
/// ends in `int3`.
pub const COPY_OFF: u64 = 0x10;
/// Offset of the batch loop: `r12` = table of (nr, 6 arguments) entries, `r13` = their
/// count, `r14` = where each result goes; stops after the first error; ends in `int3`.
pub const BATCH_OFF: u64 = 0x30;
/// The code placed at the start of the scratch area.
pub const CODE: [u8; 0x30 + 66] = [
    0x0f, 0x05, // syscall
    0xcc, // int3
    0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, // padding
    0xfc, // cld
    0x4d, 0x85, 0xc9, // test r9, r9
    0x74, 0x16, // jz done
    0x49, 0x8b, 0x38, // next: mov rdi, [r8]
    0x49, 0x8b, 0x70, 0x08, // mov rsi, [r8 + 8]
    0x49, 0x8b, 0x48, 0x10, // mov rcx, [r8 + 16]
    0xf3, 0xa4, // rep movsb
    0x49, 0x83, 0xc0, 0x18, // add r8, 24
    0x49, 0xff, 0xc9, // dec r9
    0x75, 0xea, // jnz next
    0xcc, // done: int3
    0x90, 0x90, 0x90, // padding to BATCH_OFF
    0x4d, 0x85, 0xed, // loop: test r13, r13
    0x74, 0x3c, // jz done
    0x49, 0x8b, 0x04, 0x24, // mov rax, [r12]
    0x49, 0x8b, 0x7c, 0x24, 0x08, // mov rdi, [r12 + 8]
    0x49, 0x8b, 0x74, 0x24, 0x10, // mov rsi, [r12 + 16]
    0x49, 0x8b, 0x54, 0x24, 0x18, // mov rdx, [r12 + 24]
    0x4d, 0x8b, 0x54, 0x24, 0x20, // mov r10, [r12 + 32]
    0x4d, 0x8b, 0x44, 0x24, 0x28, // mov r8, [r12 + 40]
    0x4d, 0x8b, 0x4c, 0x24, 0x30, // mov r9, [r12 + 48]
    0x0f, 0x05, // syscall
    0x49, 0x89, 0x06, // mov [r14], rax
    0x49, 0x83, 0xc6, 0x08, // add r14, 8
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax, -4095
    0x73, 0x09, // jae done (an error)
    0x49, 0x83, 0xc4, 0x38, // add r12, 56
    0x49, 0xff, 0xcd, // dec r13
    0xeb, 0xbf, // jmp loop
    0xcc, // done: int3
];

/// `waitpid` status helpers.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else if libc::WIFSTOPPED(status) {
        format!(
            "stopped by signal {} (status {status:#x})",
            libc::WSTOPSIG(status)
        )
    } else {
        format!("status {status:#x}")
    }
}

fn ptrace(req: libc::c_uint, tid: i32, addr: u64, data: u64) -> io::Result<libc::c_long> {
    // SAFETY: every caller passes, as `addr`/`data`, either plain integers or pointers to
    // live buffers of the size the request writes or reads (see the wrappers below).
    let r = unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        // PTRACE_PEEK* may legitimately return -1; we use none of them.
        if e.raw_os_error().unwrap_or(0) != 0 {
            return Err(e);
        }
    }
    Ok(r)
}

fn ptr<T>(p: &T) -> u64 {
    p as *const T as u64
}

fn ptr_mut<T>(p: &mut T) -> u64 {
    p as *mut T as u64
}

/// A traced thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tid(pub i32);

impl Tid {
    fn err(self, what: &str, e: io::Error) -> Error {
        Error::os(format!("{what} on thread {}", self.0), e)
    }

    pub fn set_options(self, opts: i32) -> Result<(), Error> {
        let opts = u64::from(opts.unsigned_abs());
        ptrace(libc::PTRACE_SETOPTIONS, self.0, 0, opts)
            .map(drop)
            .map_err(|e| self.err("PTRACE_SETOPTIONS", e))
    }

    pub fn get_regs(self) -> Result<Regs, Error> {
        let mut regs: Regs = [0; 27];
        // Regs has the size and layout of user_regs_struct (27 u64).
        ptrace(libc::PTRACE_GETREGS, self.0, 0, ptr_mut(&mut regs))
            .map_err(|e| self.err("PTRACE_GETREGS", e))?;
        Ok(regs)
    }

    pub fn set_regs(self, regs: &Regs) -> Result<(), Error> {
        ptrace(libc::PTRACE_SETREGS, self.0, 0, ptr(regs))
            .map(drop)
            .map_err(|e| self.err("PTRACE_SETREGS", e))
    }

    pub fn set_fpregs(self, fpu: &[u8; 512]) -> Result<(), Error> {
        ptrace(libc::PTRACE_SETFPREGS, self.0, 0, ptr(fpu))
            .map(drop)
            .map_err(|e| self.err("PTRACE_SETFPREGS", e))
    }

    pub fn set_sigmask(self, mask: u64) -> Result<(), Error> {
        ptrace(libc::PTRACE_SETSIGMASK, self.0, 8, ptr(&mask))
            .map(drop)
            .map_err(|e| self.err("PTRACE_SETSIGMASK", e))
    }

    pub fn event_msg(self) -> Result<u64, Error> {
        let mut msg: libc::c_ulong = 0;
        ptrace(libc::PTRACE_GETEVENTMSG, self.0, 0, ptr_mut(&mut msg))
            .map_err(|e| self.err("PTRACE_GETEVENTMSG", e))?;
        Ok(msg)
    }

    /// The rseq area the thread has registered, if any (`None` also when the kernel
    /// cannot tell: then nothing is registered that we know of).
    pub fn rseq_config(self) -> Option<(u64, u32, u32)> {
        let mut c = libc::ptrace_rseq_configuration {
            rseq_abi_pointer: 0,
            rseq_abi_size: 0,
            signature: 0,
            flags: 0,
            pad: 0,
        };
        let size = std::mem::size_of_val(&c) as u64;
        ptrace(
            libc::PTRACE_GET_RSEQ_CONFIGURATION,
            self.0,
            size,
            ptr_mut(&mut c),
        )
        .ok()?;
        (c.rseq_abi_pointer != 0).then_some((c.rseq_abi_pointer, c.rseq_abi_size, c.signature))
    }

    pub fn cont(self, sig: i32) -> Result<(), Error> {
        let sig = u64::from(sig.unsigned_abs());
        ptrace(libc::PTRACE_CONT, self.0, 0, sig)
            .map(drop)
            .map_err(|e| self.err("PTRACE_CONT", e))
    }

    pub fn cont_syscall(self) -> Result<(), Error> {
        ptrace(libc::PTRACE_SYSCALL, self.0, 0, 0)
            .map(drop)
            .map_err(|e| self.err("PTRACE_SYSCALL", e))
    }

    /// Detaches, then sends again the signals that stopped the thread while it was being
    /// rebuilt ([`Tid::wait_stop`] put them aside).
    pub fn detach(self) -> Result<(), Error> {
        ptrace(libc::PTRACE_DETACH, self.0, 0, 0)
            .map(drop)
            .map_err(|e| self.err("PTRACE_DETACH", e))?;
        for sig in take_deferred(self.0) {
            // SAFETY: tgkill takes plain integers; the thread is ours (its group is its pid
            // as read from /proc, or itself when that fails).
            unsafe {
                libc::syscall(libc::SYS_tgkill, tgid_of(self.0), self.0, sig);
            }
        }
        Ok(())
    }

    /// Puts aside a signal that stopped the thread on its way (a child of it exited while
    /// the agent injected calls: `SIGCHLD`) and lets it go on; [`Tid::detach`] sends it
    /// again.
    pub fn defer_signal(self, sig: i32) -> Result<(), Error> {
        self.put_aside(sig);
        self.cont(0)
    }

    fn put_aside(self, sig: i32) {
        if let Ok(mut d) = DEFERRED.lock() {
            if d.len() < MAX_DEFERRED && !d.contains(&(self.0, sig)) {
                d.push((self.0, sig));
            }
        }
    }

    /// `waitpid(tid, __WALL)`.
    pub fn wait(self) -> Result<i32, Error> {
        wait_tid(self.0).map_err(|e| self.err("waitpid", e))
    }

    /// Waits for a stop by `sig` (or a `PTRACE_EVENT`/syscall stop whose `status >> 8` is
    /// `sig`); anything else is an error naming `what`.
    pub fn wait_stop(self, sig: i32, what: &str) -> Result<(), Error> {
        let mut status = self.wait()?;
        for _ in 0..MAX_DEFERRED {
            if libc::WIFSTOPPED(status) && (status >> 8) == sig {
                return Ok(());
            }
            // Another signal's delivery stop (not an event or syscall stop): put aside.
            let other = libc::WSTOPSIG(status);
            if libc::WIFSTOPPED(status)
                && status >> 16 == 0
                && other != libc::SIGTRAP
                && other & 0x80 == 0
            {
                // Resumed the way the caller resumed it: a wait for a syscall stop
                // (PTRACE_SYSCALL) must not miss the stop at the syscall's exit.
                self.put_aside(other);
                if sig & 0x80 != 0 {
                    self.cont_syscall()?;
                } else {
                    self.cont(0)?;
                }
                status = self.wait()?;
                continue;
            }
            break;
        }
        let mut msg = format!(
            "thread {} {} during {what}",
            self.0,
            describe_status(status)
        );
        if libc::WIFSTOPPED(status) {
            if let Ok(r) = self.get_regs() {
                msg.push_str(&format!(" at rip {:#x}", r[reg::RIP]));
            }
        }
        Err(Error::Invalid(msg))
    }
}

/// Most signals put aside at once.
const MAX_DEFERRED: usize = 64;
/// Signals put aside by [`Tid::defer_signal`]: (tid, signal).
static DEFERRED: std::sync::Mutex<Vec<(i32, i32)>> = std::sync::Mutex::new(Vec::new());

/// The signals put aside for `tid`, removed from the list.
fn take_deferred(tid: i32) -> Vec<i32> {
    let Ok(mut d) = DEFERRED.lock() else {
        return Vec::new();
    };
    let mine = d
        .iter()
        .filter(|(t, _)| *t == tid)
        .map(|(_, s)| *s)
        .collect();
    d.retain(|(t, _)| *t != tid);
    mine
}

/// The thread group of `tid` (`Tgid:` of its status), or `tid` itself.
fn tgid_of(tid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

/// `waitpid(tid, __WALL)`, retried on EINTR.
pub fn wait_tid(tid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid, writable int.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == tid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Runs system calls and code in a stopped tracee through its scratch area.
pub struct Injector {
    /// Address of the scratch area in the tracee.
    pub scratch: u64,
    /// `/proc/PID/mem` of the tracee, for small writes into the scratch area.
    mem: File,
}

/// `rax` values from -4095 to -1 are errors.
fn syscall_error(rax: u64) -> Option<io::Error> {
    let v = i64::from_ne_bytes(rax.to_ne_bytes());
    (-4095..0).contains(&v).then(|| {
        let errno = i32::try_from(-v).unwrap_or(libc::EINVAL);
        io::Error::from_raw_os_error(errno)
    })
}

/// `rax` as a result, a negative errno as an error naming `what`.
pub fn checked(rax: u64, what: &str) -> Result<u64, Error> {
    match syscall_error(rax) {
        Some(e) => Err(Error::Remote {
            what: what.to_owned(),
            source: e,
        }),
        None => Ok(rax),
    }
}

impl Injector {
    pub fn new(pid: i32, scratch: u64) -> Result<Self, Error> {
        let path = format!("/proc/{pid}/mem");
        let mem = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::os(path, e))?;
        Ok(Self { scratch, mem })
    }

    /// Writes a few bytes into the tracee (scratch data: paths, argument structs, copy
    /// lists; never page contents).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), Error> {
        self.mem
            .write_all_at(data, addr)
            .map_err(|e| Error::os(format!("write tracee memory at {addr:#x}"), e))
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.mem
            .read_exact_at(buf, addr)
            .map_err(|e| Error::os(format!("read tracee memory at {addr:#x}"), e))
    }

    /// Runs `nr(args)` in stopped thread `t` (whose normal registers are `base`) and
    /// returns the raw `rax`.
    pub fn raw(
        &self,
        t: Tid,
        base: &Regs,
        nr: i64,
        args: [u64; 6],
        what: &str,
    ) -> Result<u64, Error> {
        self.start(t, base, nr, args)?;
        t.cont(0)?;
        t.wait_stop(libc::SIGTRAP, what)?;
        Ok(t.get_regs()?[reg::RAX])
    }

    /// Like [`Injector::raw`], but a negative errno is an error naming `what`.
    pub fn call(
        &self,
        t: Tid,
        base: &Regs,
        nr: i64,
        args: [u64; 6],
        what: &str,
    ) -> Result<u64, Error> {
        let rax = self.raw(t, base, nr, args, what)?;
        checked(rax, what)
    }

    /// Loads the registers for `nr(args)` at the scratch `syscall`, without running it.
    pub fn start(&self, t: Tid, base: &Regs, nr: i64, args: [u64; 6]) -> Result<(), Error> {
        let mut r = *base;
        r[reg::RIP] = self.scratch + SYSCALL_OFF;
        r[reg::RAX] = u64::from_ne_bytes(nr.to_ne_bytes());
        r[reg::ORIG_RAX] = u64::MAX;
        r[reg::RDI] = args[0];
        r[reg::RSI] = args[1];
        r[reg::RDX] = args[2];
        r[reg::R10] = args[3];
        r[reg::R8] = args[4];
        r[reg::R9] = args[5];
        t.set_regs(&r)
    }

    /// Runs `nr(args)` without the `int3`: stops at syscall entry and exit
    /// (`PTRACE_SYSCALL`), so the call may unmap the scratch area itself and no SIGTRAP is
    /// ever raised. The thread is left in its syscall-exit stop.
    pub fn call_sysstop(
        &self,
        t: Tid,
        base: &Regs,
        nr: i64,
        args: [u64; 6],
        what: &str,
    ) -> Result<u64, Error> {
        self.start(t, base, nr, args)?;
        t.cont_syscall()?;
        t.wait_stop(libc::SIGTRAP | 0x80, what)?;
        t.cont_syscall()?;
        t.wait_stop(libc::SIGTRAP | 0x80, what)?;
        let rax = t.get_regs()?[reg::RAX];
        checked(rax, what)
    }

    /// Runs `calls` one after the other inside thread `t` with one stop: the table goes to
    /// `table` in the tracee, the results after it. Returns the results of the calls that
    /// ran; the run ends at the first error, which is then the last result.
    pub fn batch(
        &self,
        t: Tid,
        base: &Regs,
        table: u64,
        calls: &[(i64, [u64; 6])],
        what: &str,
    ) -> Result<Vec<u64>, Error> {
        let n = calls.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut bytes = Vec::with_capacity(n * 64);
        for (nr, args) in calls {
            bytes.extend_from_slice(&nr.to_ne_bytes());
            for a in args {
                bytes.extend_from_slice(&a.to_ne_bytes());
            }
        }
        const UNSET: u64 = 0x0bad_0bad_0bad_0bad;
        for _ in 0..n {
            bytes.extend_from_slice(&UNSET.to_ne_bytes());
        }
        self.write(table, &bytes)?;
        let results_at = table + 56 * n as u64;
        let mut r = *base;
        r[reg::RIP] = self.scratch + BATCH_OFF;
        r[reg::ORIG_RAX] = u64::MAX;
        r[reg::R12] = table;
        r[reg::R13] = n as u64;
        r[reg::R14] = results_at;
        t.set_regs(&r)?;
        t.cont(0)?;
        t.wait_stop(libc::SIGTRAP, what)?;
        let mut raw = vec![0u8; n * 8];
        self.read(results_at, &mut raw)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_ne_bytes(w)
            })
            .take_while(|&v| v != UNSET)
            .collect())
    }

    /// [`Injector::batch`] where every call must succeed: the first error names its call
    /// with `names(i)`.
    pub fn batch_ok(
        &self,
        t: Tid,
        base: &Regs,
        table: u64,
        calls: &[(i64, [u64; 6])],
        names: impl Fn(usize) -> String,
    ) -> Result<Vec<u64>, Error> {
        let out = self.batch(t, base, table, calls, &names(0))?;
        if let Some(&last) = out.last() {
            checked(last, &names(out.len() - 1))?;
        }
        if out.len() != calls.len() {
            return Err(Error::Invalid(format!(
                "{}: the batch stopped after {} of {} calls",
                names(0),
                out.len(),
                calls.len()
            )));
        }
        Ok(out)
    }

    /// Runs the copy loop over `count` (dst, src, len) triples stored at `list`.
    pub fn copy(&self, t: Tid, base: &Regs, list: u64, count: u64) -> Result<(), Error> {
        let mut r = *base;
        r[reg::RIP] = self.scratch + COPY_OFF;
        r[reg::ORIG_RAX] = u64::MAX;
        r[reg::R8] = list;
        r[reg::R9] = count;
        t.set_regs(&r)?;
        t.cont(0)?;
        t.wait_stop(libc::SIGTRAP, "the memory copy")
    }
}
