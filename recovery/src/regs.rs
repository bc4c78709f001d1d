//! Final user registers of a thread: the interrupted-system-call rule applied to the frame
//! saved at the top of its kernel stack, or the registers a vCPU held when it was caught in
//! user mode; and which task each kernel CPU was running.

use crate::kernel::Kernel;
use crate::tasks::{PtRegs, USER_CS, USER_DS};
use crate::{error_chain, Partial};

/// `ENOSYS`: what the entry code puts in `ax` before the system call runs.
pub const ENOSYS: i64 = 38;
/// `EINTR`.
pub const EINTR: i64 = 4;
/// `ERESTARTSYS`.
pub const ERESTARTSYS: i64 = 512;
/// `ERESTARTNOINTR`.
pub const ERESTARTNOINTR: i64 = 513;
/// `ERESTARTNOHAND`.
pub const ERESTARTNOHAND: i64 = 514;
/// `ERESTART_RESTARTBLOCK`.
pub const ERESTART_RESTARTBLOCK: i64 = 516;
/// Most CPUs looked at (`NR_CPUS` is at most 8192 on x86-64).
pub const MAX_CPUS: u32 = 8192;
/// System calls that are run again rather than failed with EINTR when the crash caught
/// them in progress: clone, fork, vfork, clone3 (they have no effect visible to the
/// caller until they return, and the kernel never lets them fail with EINTR); and mmap,
/// mprotect, munmap, brk, stat, fstat, lstat, newfstatat and statx, which programs do not
/// expect to fail with EINTR (the dynamic loader gives up: "cannot map zero-fill pages")
/// and which are safe to repeat (the same mapping, protection or answer again; an mmap
/// without MAP_FIXED whose area the dead kernel had made leaves that area unused).
pub const RESTARTED_SYSCALLS: [u64; 13] = [56, 57, 58, 435, 9, 10, 11, 12, 4, 5, 6, 262, 332];
/// Blocking system calls that, caught sleeping, had taken or given nothing yet, so running
/// them again is exact, and that a program without a signal handler never sees fail with
/// EINTR (the kernel restarts them when no handler runs, and the crash ran none): read,
/// readv, recvfrom and recvmsg without `MSG_WAITALL` (a read sleeps only when it has
/// nothing), accept, accept4, wait4, waitid, pause, rt_sigsuspend, flock, msgrcv; write and
/// sendto of at most `PIPE_BUF` bytes (a pipe write that small is atomic: it sleeps until
/// there is room for all of it). The waits for descriptors with no time limit (poll and
/// epoll_wait with a negative timeout, ppoll, select, pselect6 and epoll_pwait2 without
/// one) are run again too: the kernel restarts them when no handler runs, and a program
/// that blocks its signals (util-linux's `script`, on a signalfd) takes EINTR from them
/// as a fatal error. Timed sleeps (nanosleep, a poll or select with a time limit, futex)
/// still return EINTR: run again they would wait their whole time again.
pub const REPEATED_WHEN_SLEEPING: [u64; 14] =
    [0, 19, 45, 47, 43, 288, 61, 247, 34, 130, 73, 70, 1, 44];
/// `PIPE_BUF`.
const PIPE_BUF: u64 = 4096;
/// `MSG_WAITALL`.
const MSG_WAITALL: u64 = 0x100;

/// True when `nr`, caught sleeping with these arguments, is run again (see
/// [`REPEATED_WHEN_SLEEPING`]).
fn repeated_when_sleeping(nr: u64, regs: &PtRegs) -> bool {
    match nr {
        1 | 44 => regs.dx <= PIPE_BUF,
        45 => regs.r10 & MSG_WAITALL == 0,
        47 => regs.dx & MSG_WAITALL == 0,
        // poll(fds, n, int timeout); epoll_wait and epoll_pwait (epfd, events, n, int
        // timeout): a negative timeout waits for ever.
        7 => regs.dx & 0x8000_0000 != 0,
        232 | 281 => regs.r10 & 0x8000_0000 != 0,
        // ppoll(fds, n, tsp), select and pselect6 (n, r, w, x, timeout), epoll_pwait2(...,
        // timeout): no time limit when the pointer is NULL.
        271 => regs.dx == 0,
        23 | 270 => regs.r8 == 0,
        441 => regs.r10 == 0,
        _ => REPEATED_WHEN_SLEEPING.contains(&nr),
    }
}
/// `execve` and `execveat`. Caught in progress with the program's own frame, the exec has
/// not replaced the program yet (`recovery::exec` handles the one caught after its point of
/// no return): it is run again, in the new world, from the intact old image. Caught after
/// `start_thread` rewrote the frame for the new program, it has succeeded: it returns 0.
pub const EXEC_SYSCALLS: [u64; 2] = [59, 322];

fn signed(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

fn unsigned(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// Where a thread was with respect to system calls when its frame was saved (section 6 of
/// the introspection notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallState {
    /// Case 1: `orig_ax < 0`, the frame was saved by an interrupt or exception. Resume as is.
    NotInSyscall,
    /// Case 2: `orig_ax >= 0` and `ax == -ENOSYS`: the system call `nr` was still running
    /// (typically sleeping).
    InProgress {
        /// System call number.
        nr: u64,
    },
    /// Case 3: `ax` is one of the `-ERESTART*` codes: interrupted on its way out.
    RestartOnExit {
        /// System call number.
        nr: u64,
        /// The (negative) restart code.
        code: i64,
    },
    /// Case 4: the system call `nr` finished with result `ret`.
    Finished {
        /// System call number.
        nr: u64,
        /// Its return value.
        ret: i64,
    },
}

impl SyscallState {
    /// True for the cases that resume with `-EINTR` (in progress, or restarting).
    pub fn interrupted(&self) -> bool {
        matches!(
            self,
            SyscallState::InProgress { .. } | SyscallState::RestartOnExit { .. }
        )
    }
}

/// Classifies a saved user frame.
pub fn classify_syscall(regs: &PtRegs) -> SyscallState {
    let orig = signed(regs.orig_ax);
    if orig < 0 {
        return SyscallState::NotInSyscall;
    }
    let nr = regs.orig_ax;
    let ax = signed(regs.ax);
    if ax == -ENOSYS {
        return SyscallState::InProgress { nr };
    }
    if [
        -ERESTARTSYS,
        -ERESTARTNOINTR,
        -ERESTARTNOHAND,
        -ERESTART_RESTARTBLOCK,
    ]
    .contains(&ax)
    {
        return SyscallState::RestartOnExit { nr, code: ax };
    }
    SyscallState::Finished { nr, ret: ax }
}

/// `struct user_regs_struct` (x86-64), the order of the manifest's `regs` record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl UserRegs {
    /// The 27 values in `user_regs_struct` order.
    pub fn to_array(&self) -> [u64; 27] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }

    /// The inverse of [`UserRegs::to_array`].
    pub fn from_array(v: [u64; 27]) -> Self {
        let [r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs] =
            v;
        UserRegs {
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            eflags,
            rsp,
            ss,
            fs_base,
            gs_base,
            ds,
            es,
            fs,
            gs,
        }
    }

    /// Values the agent can set as they are: `orig_rax = -1` (no restart logic), 64-bit user
    /// selectors (`cs 0x33`, `ss 0x2b`, data selectors 0).
    pub fn normalized(mut self) -> Self {
        self.orig_rax = u64::MAX;
        self.cs = USER_CS;
        self.ss = USER_DS;
        self.ds = 0;
        self.es = 0;
        self.fs = 0;
        self.gs = 0;
        self
    }
}

/// True when the frame shows an `execve`/`execveat` that has succeeded (`start_thread`
/// loaded the new program's registers) but not returned: the kernel drops the rseq
/// registration after that point (`rseq_execve`), so the task's rseq fields still name
/// the old program's area, which the new memory does not have.
pub fn exec_succeeded_in_flight(regs: &PtRegs) -> bool {
    matches!(classify_syscall(regs), SyscallState::InProgress { nr } if EXEC_SYSCALLS.contains(&nr))
        && !exec_frame_intact(regs)
}

/// True when the saved frame is still the one `syscall` made (`cx == ip`): no exec has
/// loaded a new program's registers into it.
pub fn exec_frame_intact(regs: &PtRegs) -> bool {
    regs.cx == regs.ip
}

/// The registers a thread resumes with, from its saved frame: an in-progress or restarting
/// system call returns `-EINTR` (rip unchanged); `orig_rax` is -1; segments as in
/// [`UserRegs::normalized`]; `fs_base`/`gs_base` as given (the task's saved bases).
/// `moved`: what a read or write in progress had moved ([`crate::transfer`]), when known:
/// it returns that count (what the kernel returns when a signal cuts a transfer short),
/// or runs again when that is nothing.
pub fn final_user_regs(regs: &PtRegs, fs_base: u64, gs_base: u64, moved: Option<u64>) -> UserRegs {
    let (rax, rip) = match classify_syscall(regs) {
        SyscallState::InProgress { nr }
            if crate::transfer::TRANSFER_SYSCALLS.contains(&nr) && moved.is_some() =>
        {
            match moved {
                Some(n) if n > 0 => (n, regs.ip),
                _ => (nr, regs.ip.wrapping_sub(2)),
            }
        }
        // `syscall` left the return address in both `cx` and `ip`; `start_thread` sets `ip`
        // to the new program's entry and `ELF_PLAT_INIT` clears `cx`.
        SyscallState::InProgress { nr } if EXEC_SYSCALLS.contains(&nr) => {
            if exec_frame_intact(regs) {
                (nr, regs.ip.wrapping_sub(2))
            } else {
                (0, regs.ip)
            }
        }
        // Never seen as EINTR by a program: run them again (the kernel restarts these
        // itself: fork and friends return -ERESTARTNOINTR on a signal).
        SyscallState::InProgress { nr } if RESTARTED_SYSCALLS.contains(&nr) => {
            (nr, regs.ip.wrapping_sub(2))
        }
        SyscallState::RestartOnExit { nr, code } if code == -ERESTARTNOINTR => {
            (nr, regs.ip.wrapping_sub(2))
        }
        SyscallState::InProgress { nr } if repeated_when_sleeping(nr, regs) => {
            (nr, regs.ip.wrapping_sub(2))
        }
        // On its way out to restart: no handler will run (the pending signal is the dead
        // kernel's), so it restarts as the kernel would without one.
        SyscallState::RestartOnExit { nr, code }
            if (code == -ERESTARTSYS || code == -ERESTARTNOHAND)
                && repeated_when_sleeping(nr, regs) =>
        {
            (nr, regs.ip.wrapping_sub(2))
        }
        s if s.interrupted() => (unsigned(-EINTR), regs.ip),
        _ => (regs.ax, regs.ip),
    };
    UserRegs {
        r15: regs.r15,
        r14: regs.r14,
        r13: regs.r13,
        r12: regs.r12,
        rbp: regs.bp,
        rbx: regs.bx,
        r11: regs.r11,
        r10: regs.r10,
        r9: regs.r9,
        r8: regs.r8,
        rax,
        rcx: regs.cx,
        rdx: regs.dx,
        rsi: regs.si,
        rdi: regs.di,
        orig_rax: regs.orig_ax,
        rip,
        cs: regs.cs,
        eflags: regs.flags,
        rsp: regs.sp,
        ss: regs.ss,
        fs_base,
        gs_base,
        ..UserRegs::default()
    }
    .normalized()
}

/// What the VMM knows of one vCPU at the crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuUserState {
    /// `MSR_GS_BASE` (the per-cpu base while in kernel mode).
    pub gs_base: u64,
    /// `MSR_KERNEL_GS_BASE` (the per-cpu base while in user mode, after `swapgs`).
    pub kernel_gs_base: u64,
    /// The vCPU was in user mode (CPL 3).
    pub cpl3: bool,
    /// Its registers in `user_regs_struct` form (meaningful when `cpl3`), including
    /// `fs_base` and `gs_base`.
    pub regs: UserRegs,
    /// Its FXSAVE image (legacy area of `KVM_GET_XSAVE`).
    pub fxsave: crate::tasks::FxSave,
}

impl CpuUserState {
    /// The per-cpu base of the kernel CPU this vCPU runs: `gs_base` in kernel mode,
    /// `kernel_gs_base` in user mode.
    pub fn percpu_base(&self) -> u64 {
        if self.cpl3 {
            self.kernel_gs_base
        } else {
            self.gs_base
        }
    }
}

/// One kernel CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelCpu {
    /// CPU number.
    pub cpu: u32,
    /// `__per_cpu_offset[cpu]`.
    pub per_cpu_offset: u64,
    /// The task it was running (`current_task`, else `runqueues.curr`), when known.
    pub current: Option<u64>,
}

/// Reads `__per_cpu_offset[0..nr_cpu_ids]` and each CPU's current task.
pub fn read_cpus(k: &Kernel<'_>) -> Partial<Vec<KernelCpu>> {
    let mut out = Partial::ok(Vec::new());
    let offsets = match k.symbol("__per_cpu_offset") {
        Ok(a) => a,
        Err(e) => {
            out.problems.push(format!("cpus: {}", error_chain(&e)));
            return out;
        }
    };
    let nr = match k.symbol("nr_cpu_ids").and_then(|a| k.read_u32(a)) {
        Ok(n) if (1..=MAX_CPUS).contains(&n) => n,
        other => {
            out.problems
                .push(format!("cpus: nr_cpu_ids reads {other:?}: assuming 1"));
            1
        }
    };
    let syms = k.symbols();
    let current_task = syms.percpu_offset_of("current_task");
    let rq = syms
        .percpu_offset_of("runqueues")
        .and_then(|r| k.offset_of("rq", "curr").ok().map(|c| r.wrapping_add(c)));
    if current_task.is_none() && rq.is_none() {
        out.problems
            .push("cpus: no current_task or runqueues per-cpu symbol".to_owned());
    }
    for cpu in 0..nr {
        let off = match k.read_u64(offsets.wrapping_add(u64::from(cpu) * 8)) {
            Ok(o) => o,
            Err(e) => {
                out.problems.push(format!(
                    "cpu {cpu}: __per_cpu_offset unreadable: {}",
                    error_chain(&e)
                ));
                continue;
            }
        };
        let read_cur = |field: Option<u64>| {
            field
                .and_then(|f| k.read_u64(off.wrapping_add(f)).ok())
                .filter(|&t| crate::kernel::is_kernel_addr(t))
        };
        let current = read_cur(current_task).or_else(|| read_cur(rq));
        if current.is_none() && (current_task.is_some() || rq.is_some()) {
            out.problems
                .push(format!("cpu {cpu}: current task unreadable"));
        }
        out.value.push(KernelCpu {
            cpu,
            per_cpu_offset: off,
            current,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(orig_ax: i64, ax: i64) -> PtRegs {
        PtRegs {
            orig_ax: unsigned(orig_ax),
            ax: unsigned(ax),
            ip: 0x40_1000,
            cx: 0x40_1000,
            sp: 0x7ffe_0000,
            cs: USER_CS,
            ss: USER_DS,
            di: 3,
            ..PtRegs::default()
        }
    }

    #[test]
    fn classifies_the_four_cases() {
        assert_eq!(classify_syscall(&frame(-1, 42)), SyscallState::NotInSyscall);
        assert_eq!(
            classify_syscall(&frame(-1, -ENOSYS)),
            SyscallState::NotInSyscall
        );
        assert_eq!(
            classify_syscall(&frame(7, -ENOSYS)),
            SyscallState::InProgress { nr: 7 }
        );
        for code in [512, 513, 514, 516] {
            assert_eq!(
                classify_syscall(&frame(35, -code)),
                SyscallState::RestartOnExit {
                    nr: 35,
                    code: -code
                }
            );
        }
        assert_eq!(
            classify_syscall(&frame(0, 5)),
            SyscallState::Finished { nr: 0, ret: 5 }
        );
        assert_eq!(
            classify_syscall(&frame(0, -515)),
            SyscallState::Finished { nr: 0, ret: -515 }
        );
    }

    #[test]
    fn final_registers_apply_the_eintr_rule() {
        for (orig, ax, want) in [
            (7, -ENOSYS, unsigned(-EINTR)),
            (35, -ERESTART_RESTARTBLOCK, unsigned(-EINTR)),
            (35, -ERESTARTSYS, unsigned(-EINTR)),
            (0, 17, 17),
            (-1, 99, 99),
        ] {
            let r = final_user_regs(&frame(orig, ax), 0x1111, 0x2222, None);
            assert_eq!(r.rax, want, "orig {orig} ax {ax}");
            assert_eq!(r.rip, 0x40_1000);
            assert_eq!(r.orig_rax, u64::MAX);
            assert_eq!(
                (r.cs, r.ss, r.ds, r.es, r.fs, r.gs),
                (0x33, 0x2b, 0, 0, 0, 0)
            );
            assert_eq!(
                (r.fs_base, r.gs_base, r.rdi, r.rsp),
                (0x1111, 0x2222, 3, 0x7ffe_0000)
            );
        }
        assert_eq!(unsigned(-EINTR), 0xffff_ffff_ffff_fffc);
        // fork/clone caught in progress, or on its way out to restart: run again.
        // So are mmap, mprotect, munmap, brk and the stat family, which never fail with
        // EINTR in Linux (the loader caught mapping a library would give up).
        for (orig, ax) in [
            (56, -ENOSYS),
            (57, -ERESTARTNOINTR),
            (435, -ENOSYS),
            (9, -ENOSYS),
            (10, -ENOSYS),
            (12, -ENOSYS),
            (262, -ENOSYS),
        ] {
            let r = final_user_regs(&frame(orig, ax), 0, 0, None);
            assert_eq!((r.rax, r.rip), (unsigned(orig), 0x40_0ffe), "orig {orig}");
        }
        // execve/execveat in progress with the caller's frame: run again (not EINTR, which
        // a shell's child would report and exit on), arguments as saved.
        for nr in [59, 322] {
            let r = final_user_regs(&frame(nr, -ENOSYS), 0, 0, None);
            assert_eq!(
                (r.rax, r.rip, r.rdi),
                (unsigned(nr), 0x40_0ffe, 3),
                "nr {nr}"
            );
        }
        // ... and once start_thread put the new program's entry in the frame: it succeeded.
        let mut f = frame(59, -ENOSYS);
        (f.ip, f.cx, f.di) = (0x7f00_1234, 0, 0);
        let r = final_user_regs(&f, 0, 0, None);
        assert_eq!((r.rax, r.rip), (0, 0x7f00_1234));
        assert!(exec_succeeded_in_flight(&f));
        assert!(!exec_succeeded_in_flight(&frame(59, -ENOSYS)));
        assert!(!exec_succeeded_in_flight(&frame(1, -ENOSYS)));
        // A wait for descriptors with no time limit is run again; one with a limit fails
        // with EINTR (run again it would wait its whole time again).
        for (nr, set) in [
            (7, (|f: &mut PtRegs| f.dx = 0xffff_ffff) as fn(&mut PtRegs)),
            (232, |f| f.r10 = u64::MAX),
            (281, |f| f.r10 = 0xffff_ffff),
            (271, |f| f.dx = 0),
            (23, |f| f.r8 = 0),
            (270, |f| f.r8 = 0),
            (441, |f| f.r10 = 0),
        ] {
            let mut f = frame(nr, -ENOSYS);
            (f.dx, f.r8, f.r10) = (100, 0x7ffe_1000, 100);
            let timed = final_user_regs(&f, 0, 0, None);
            assert_eq!(timed.rax, unsigned(-EINTR), "nr {nr} with a time limit");
            set(&mut f);
            let r = final_user_regs(&f, 0, 0, None);
            assert_eq!(
                (r.rax, r.rip),
                (unsigned(nr), 0x40_0ffe),
                "nr {nr} for ever"
            );
            let mut out = frame(nr, -ERESTARTNOHAND);
            (out.dx, out.r8, out.r10) = (f.dx, f.r8, f.r10);
            let r = final_user_regs(&out, 0, 0, None);
            assert_eq!(r.rax, unsigned(nr), "nr {nr} on its way out to restart");
        }
        // A read, accept or wait caught asleep had taken nothing: run again; so is a write
        // of at most PIPE_BUF bytes, but not a bigger one (it may have written a part) nor
        // a recv with MSG_WAITALL (it may have received a part).
        for nr in [0, 43, 61, 247, 34] {
            let r = final_user_regs(&frame(nr, -ENOSYS), 0, 0, None);
            assert_eq!((r.rax, r.rip), (unsigned(nr), 0x40_0ffe), "nr {nr}");
            let r = final_user_regs(&frame(nr, -ERESTARTSYS), 0, 0, None);
            assert_eq!((r.rax, r.rip), (unsigned(nr), 0x40_0ffe), "nr {nr}");
        }
        let mut w = frame(1, -ENOSYS);
        w.dx = 4096;
        assert_eq!(final_user_regs(&w, 0, 0, None).rax, 1);
        w.dx = 4097;
        assert_eq!(final_user_regs(&w, 0, 0, None).rax, unsigned(-EINTR));
        let mut rcv = frame(45, -ENOSYS);
        rcv.r10 = 0x100;
        assert_eq!(final_user_regs(&rcv, 0, 0, None).rax, unsigned(-EINTR));
        // A write or read whose progress is known returns what it moved, or runs again
        // when that is nothing; another call ignores it.
        let mut w = frame(1, -ENOSYS);
        w.dx = 1 << 20;
        assert_eq!(
            (
                final_user_regs(&w, 0, 0, Some(65536)).rax,
                final_user_regs(&w, 0, 0, Some(65536)).rip
            ),
            (65536, 0x40_1000)
        );
        assert_eq!(final_user_regs(&w, 0, 0, Some(0)).rax, 1);
        assert_eq!(final_user_regs(&w, 0, 0, Some(0)).rip, 0x40_0ffe);
        assert_eq!(
            final_user_regs(&frame(35, -ENOSYS), 0, 0, Some(9)).rax,
            unsigned(-EINTR)
        );
        let r = final_user_regs(&frame(1, 2), 3, 4, None);
        assert_eq!(UserRegs::from_array(r.to_array()), r);
        assert_eq!(r.to_array()[21], 3);
    }
}
