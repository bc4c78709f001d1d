//! The dead kernel's tasks: `init_task.tasks` (thread-group leaders), then each group's
//! `signal->thread_head` list (threads), with per-task identity, state, and user registers.

use std::collections::HashSet;
use std::fmt;

use crate::btf::Member;
use crate::kernel::{Kernel, KernelError};
use crate::list::walk_list;
use crate::{error_chain, Partial};

/// `PF_KTHREAD`: the task is a kernel thread.
pub const PF_KTHREAD: u32 = 0x0020_0000;
/// `PF_EXITING`.
pub const PF_EXITING: u32 = 0x0000_0004;
/// 64-bit user code segment selector (`__USER_CS`).
pub const USER_CS: u64 = 0x33;
/// 32-bit compat user code segment selector (`__USER32_CS`).
pub const USER32_CS: u64 = 0x23;
/// User data/stack segment selector (`__USER_DS`).
pub const USER_DS: u64 = 0x2b;
/// Most thread-group leaders walked.
pub const MAX_TASKS: usize = 1 << 16;
/// Most threads walked per group.
pub const MAX_THREADS: usize = 1 << 14;
/// Highest PID the kernel can hand out (`PID_MAX_LIMIT` on 64-bit).
const PID_MAX_LIMIT: i64 = 4 * 1024 * 1024;

/// Why a task, or its FPU state, could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// A field the task cannot be listed without could not be read.
    #[error("task at {addr:#x}: {field} unreadable")]
    Field {
        /// The `task_struct`.
        addr: u64,
        /// The field.
        field: &'static str,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
    /// The pid or tgid is out of range: not a task.
    #[error("task at {addr:#x}: implausible pid {pid} / tgid {tgid}")]
    ImplausiblePid {
        /// The `task_struct`.
        addr: u64,
        /// Its `pid`.
        pid: i32,
        /// Its `tgid`.
        tgid: i32,
    },
    /// BTF has no `thread.fpu.fpstate`.
    #[error("no thread.fpu.fpstate in BTF")]
    NoFpstateField,
    /// The `fpstate` pointer could not be read.
    #[error("fpstate pointer unreadable")]
    FpstatePointer(#[source] KernelError),
    /// The `fpstate` pointer is bad and there is no inline fpstate to fall back to.
    #[error("fpstate pointer {0:#x} is bad")]
    BadFpstate(u64),
    /// The FXSAVE image could not be read.
    #[error("fpstate {fpstate:#x}")]
    Fpstate {
        /// The `struct fpstate`.
        fpstate: u64,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
}

/// The user-mode registers saved at the top of a task's kernel stack (`struct pt_regs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct PtRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub bp: u64,
    pub bx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
    pub orig_ax: u64,
    pub ip: u64,
    pub cs: u64,
    pub flags: u64,
    pub sp: u64,
    pub ss: u64,
}

/// Field names of `struct pt_regs`, in [`PtRegs`] order.
pub const PT_REGS_FIELDS: [&str; 21] = [
    "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx", "dx", "si", "di",
    "orig_ax", "ip", "cs", "flags", "sp", "ss",
];

impl PtRegs {
    fn from_array(v: [u64; 21]) -> Self {
        let [r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss] =
            v;
        PtRegs {
            r15,
            r14,
            r13,
            r12,
            bp,
            bx,
            r11,
            r10,
            r9,
            r8,
            ax,
            cx,
            dx,
            si,
            di,
            orig_ax,
            ip,
            cs,
            flags,
            sp,
            ss,
        }
    }

    /// The system call the task was in (`orig_ax`), or None when the frame was saved by an
    /// interrupt or exception (`orig_ax == -1`).
    pub fn syscall(&self) -> Option<u64> {
        (i64::from_ne_bytes(self.orig_ax.to_ne_bytes()) >= 0).then_some(self.orig_ax)
    }

    /// True when the frame was saved on entry from 64- or 32-bit user mode with a canonical
    /// user instruction pointer.
    pub fn is_user(&self) -> bool {
        (self.cs == USER_CS || self.cs == USER32_CS) && is_user_addr(self.ip)
    }
}

/// True for canonical lower-half (user) addresses of 4-level paging.
pub fn is_user_addr(va: u64) -> bool {
    va < 0x0000_8000_0000_0000
}

/// One task (thread) of the dead kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Kernel address of the `task_struct`.
    pub addr: u64,
    /// Thread id.
    pub pid: i32,
    /// Thread-group (process) id.
    pub tgid: i32,
    /// `comm`.
    pub comm: String,
    /// `__state` (0 running, 1 interruptible, 2 uninterruptible, ...).
    pub state: u32,
    /// `exit_state` (zombie/dead bits).
    pub exit_state: u32,
    /// `flags` (`PF_*`).
    pub flags: u32,
    /// `on_cpu`: the task was on a CPU (its registers may be live in a vCPU).
    pub on_cpu: bool,
    /// `thread_info.cpu`: the CPU it last ran on.
    pub cpu: Option<u32>,
    /// `mm` (0 for kernel threads and exited tasks).
    pub mm: u64,
    /// `stack`: base of the kernel stack.
    pub stack: u64,
    /// Where [`Task::regs`] was read (`task_pt_regs`).
    pub regs_addr: u64,
    /// User registers from `task_pt_regs` (None for kernel threads or when unreadable).
    pub regs: Option<PtRegs>,
    /// `thread.fsbase` (valid for tasks switched out; see introspection notes).
    pub fsbase: u64,
    /// `thread.gsbase`.
    pub gsbase: u64,
    /// `thread_info.flags` (`TIF_*`; see [`TIF_NEED_FPU_LOAD`]).
    pub thread_flags: u64,
    /// `clear_child_tid` (the `set_tid_address` pointer, 0 when none).
    pub clear_child_tid: u64,
    /// `robust_list`: the user address of the robust futex list head (0 when none).
    pub robust_list: u64,
    /// The registered rseq area (None when none is registered or the kernel has no rseq).
    pub rseq: Option<Rseq>,
    /// `blocked`: the signal mask.
    pub blocked: u64,
    /// `pending.signal`: signals pending for this thread alone (for reporting).
    pub pending: u64,
    /// `saved_sigmask`.
    pub saved_sigmask: u64,
    /// `restore_sigmask`: `saved_sigmask` replaces `blocked` on the way back to user mode.
    pub restore_sigmask: bool,
    /// `files` (the fd table, normally shared by all threads of a process).
    pub files: u64,
    /// `fs` (root and current directory).
    pub fs: u64,
    /// `sighand` (signal actions; shared by all threads of a process).
    pub sighand: u64,
    /// Its place in the process tree (None when this kernel's BTF or memory did not say).
    pub family: Option<Family>,
    /// The user FPU/SSE state saved in memory (`thread.fpu.fpstate->regs`), as an FXSAVE
    /// image. It is the task's state unless the task was current on a CPU with
    /// `TIF_NEED_FPU_LOAD` clear; see [`Task::fpu_live_in_cpu`].
    pub fpu: Option<FxSave>,
}

/// Where a task sits in the process tree, read from `real_parent` and `signal->pids`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Family {
    /// The thread-group id of `real_parent` (0 when the parent is the swapper).
    pub ppid: i32,
    /// Process group id (`PIDTYPE_PGID`).
    pub pgid: i32,
    /// Session id (`PIDTYPE_SID`).
    pub sid: i32,
    /// `exit_code`: the `wait` status of a zombie.
    pub exit_code: i32,
}

/// `PIDTYPE_PGID` and `PIDTYPE_SID`: indexes of `signal_struct.pids`.
const PIDTYPE_PGID: u64 = 2;
const PIDTYPE_SID: u64 = 3;

/// `TIF_NEED_FPU_LOAD`: the task's FPU registers are in memory, not in the CPU.
pub const TIF_NEED_FPU_LOAD: u64 = 1 << 14;
/// `sizeof(struct robust_list_head)` on x86-64: the only length `set_robust_list` accepts.
pub const ROBUST_LIST_HEAD_LEN: u64 = 24;
/// Size of an FXSAVE image (`struct user_i387_struct`).
pub const FXSAVE_LEN: usize = 512;

/// A thread's registered restartable-sequences area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rseq {
    /// `rseq`: user address of `struct rseq`.
    pub addr: u64,
    /// `rseq_len`, when this kernel records it (6.3+); 32 otherwise.
    pub len: u32,
    /// `rseq_sig`: the abort-handler signature.
    pub sig: u32,
}

/// A 512-byte FXSAVE image (legacy x87/SSE area, `struct user_i387_struct` layout).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FxSave(pub [u8; FXSAVE_LEN]);

impl FxSave {
    /// The state after `FNINIT` + default MXCSR: what a fresh thread has.
    pub fn init() -> Self {
        let mut b = [0u8; FXSAVE_LEN];
        b[0..2].copy_from_slice(&0x037fu16.to_le_bytes());
        b[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
        b[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        FxSave(b)
    }

    /// x87 control word.
    pub fn fcw(&self) -> u16 {
        u16::from_le_bytes([self.0[0], self.0[1]])
    }

    /// MXCSR.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes([self.0[24], self.0[25], self.0[26], self.0[27]])
    }

    /// Lower-case hex of the 512 bytes (1024 digits), as the manifest writes it.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(FXSAVE_LEN * 2);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Applies the XSAVE "init optimisation": components whose `XSTATE_BV` bit is clear
    /// were not written and are in their initial state. Bit 0: x87, bit 1: SSE (XMM regs);
    /// MXCSR is written when SSE or AVX (bit 2) is in use.
    pub fn apply_xstate_bv(&mut self, xstate_bv: u64) {
        let init = FxSave::init();
        if xstate_bv & 1 == 0 {
            // FCW..FDP (0..24) and ST0-7 (32..160).
            self.0[0..24].copy_from_slice(&init.0[0..24]);
            self.0[32..160].fill(0);
        }
        if xstate_bv & 2 == 0 {
            self.0[160..416].fill(0);
        }
        if xstate_bv & 6 == 0 {
            self.0[24..28].copy_from_slice(&init.0[24..28]);
        }
    }
}

impl fmt::Debug for FxSave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FxSave {{ fcw: {:#x}, mxcsr: {:#x} }}",
            self.fcw(),
            self.mxcsr()
        )
    }
}

impl Task {
    /// A user task at `addr` with nothing else known, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(addr: u64, pid: i32) -> Task {
        Task {
            addr,
            pid,
            tgid: pid,
            comm: String::new(),
            state: 1,
            exit_state: 0,
            flags: 0,
            on_cpu: false,
            cpu: None,
            mm: 1,
            stack: 0,
            regs_addr: 0,
            regs: None,
            fsbase: 0,
            gsbase: 0,
            thread_flags: 0,
            clear_child_tid: 0,
            robust_list: 0,
            rseq: None,
            blocked: 0,
            pending: 0,
            saved_sigmask: 0,
            restore_sigmask: false,
            files: 0,
            fs: 0,
            sighand: 0,
            family: None,
            fpu: None,
        }
    }

    /// A kernel thread: `PF_KTHREAD`, or no `mm`.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0 || self.mm == 0
    }

    /// A user task (the opposite of [`Task::is_kernel_thread`]).
    pub fn is_user(&self) -> bool {
        !self.is_kernel_thread()
    }

    /// The thread-group leader (`pid == tgid`).
    pub fn is_leader(&self) -> bool {
        self.pid == self.tgid
    }

    /// Exiting or dead: `PF_EXITING` or a non-zero `exit_state` (zombie, dead).
    pub fn is_exiting(&self) -> bool {
        self.flags & PF_EXITING != 0 || self.exit_state != 0
    }

    /// True when, if this task was current on a CPU, its FPU registers were live in that CPU
    /// rather than in memory (`TIF_NEED_FPU_LOAD` clear).
    pub fn fpu_live_in_cpu(&self) -> bool {
        self.thread_flags & TIF_NEED_FPU_LOAD == 0
    }

    /// The mask to restore for this thread: `saved_sigmask` when `restore_sigmask` is set
    /// (the thread was inside `sigsuspend`/`ppoll`/`pselect`/`epoll_pwait`), else `blocked`.
    pub fn effective_sigmask(&self) -> u64 {
        if self.restore_sigmask {
            self.saved_sigmask
        } else {
            self.blocked
        }
    }

    /// One-letter state like `ps` (`R`, `S`, `D`, `T`, `t`, `X`, `Z`, `I`).
    pub fn state_char(&self) -> char {
        if self.exit_state & 0x20 != 0 {
            return 'Z';
        }
        if self.exit_state & 0x10 != 0 {
            return 'X';
        }
        match self.state {
            0 => 'R',
            s if s & 0x402 == 0x402 => 'I',
            s if s & 1 != 0 => 'S',
            s if s & 2 != 0 => 'D',
            s if s & 4 != 0 => 'T',
            s if s & 8 != 0 => 't',
            _ => '?',
        }
    }
}

impl fmt::Display for PtRegs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ip={:#x} sp={:#x} cs={:#x} ss={:#x} flags={:#x} ax={:#x} orig_ax={:#x}",
            self.ip,
            self.sp,
            self.cs,
            self.ss,
            self.flags,
            self.ax,
            i64::from_ne_bytes(self.orig_ax.to_ne_bytes())
        )
    }
}

/// Offsets resolved once from BTF.
struct TaskLayout {
    tasks: u64,
    thread_node: u64,
    pid: u64,
    tgid: u64,
    comm: u64,
    comm_len: usize,
    state: u64,
    exit_state: u64,
    flags: u64,
    on_cpu: Option<u64>,
    cpu: Option<u64>,
    mm: u64,
    stack: u64,
    signal: u64,
    fsbase: u64,
    gsbase: u64,
    thread_head: u64,
    regs: [u64; 21],
    regs_size: u64,
    extra: ExtraLayout,
}

/// Offsets of the fields needed to recreate a thread. Each is optional: a kernel without a
/// field (no rseq) just does not report it; a missing essential field is reported once.
#[derive(Debug, Default)]
struct ExtraLayout {
    thread_flags: Option<u64>,
    clear_child_tid: Option<u64>,
    robust_list: Option<u64>,
    rseq: Option<u64>,
    rseq_sig: Option<u64>,
    rseq_len: Option<Member>,
    blocked: Option<u64>,
    pending: Option<u64>,
    saved_sigmask: Option<u64>,
    restore_sigmask: Option<Member>,
    files: Option<u64>,
    fs: Option<u64>,
    sighand: Option<u64>,
    /// `thread.fpu.fpstate` (pointer).
    fpstate_ptr: Option<u64>,
    /// `thread.fpu.__fpstate` (the inline fpstate, used when the pointer is bad).
    fpstate_inline: Option<u64>,
    /// `real_parent`, `exit_code`, `signal_struct.pids` and `pid.numbers[0].nr`, for
    /// [`Family`] (all or nothing).
    family: Option<FamilyLayout>,
    /// `fpstate.regs` and `fpstate.size`.
    fpstate_regs: u64,
    fpstate_size: Option<u64>,
    /// Essential fields missing from BTF.
    missing: Vec<String>,
}

/// Where a `struct pid` holds its number in the initial namespace (`numbers[0].nr`).
pub(crate) fn pid_nr_offset(k: &Kernel<'_>) -> Result<u64, KernelError> {
    Ok(k.offset_of("pid", "numbers")? + k.offset_of("upid", "nr")?)
}

#[derive(Debug)]
struct FamilyLayout {
    real_parent: u64,
    tgid: u64,
    exit_code: u64,
    signal: u64,
    pids: u64,
    nr: u64,
}

impl FamilyLayout {
    fn new(k: &Kernel<'_>) -> Result<Self, KernelError> {
        let t = |p: &str| k.offset_of("task_struct", p);
        Ok(Self {
            real_parent: t("real_parent")?,
            tgid: t("tgid")?,
            exit_code: t("exit_code")?,
            signal: t("signal")?,
            pids: k.offset_of("signal_struct", "pids")?,
            nr: pid_nr_offset(k)?,
        })
    }
}

impl ExtraLayout {
    fn new(k: &Kernel<'_>) -> Self {
        let mut missing = Vec::new();
        let mut need = |p: &str| match k.offset_of("task_struct", p) {
            Ok(o) => Some(o),
            Err(e) => {
                missing.push(format!("task_struct.{p}: {}", error_chain(&e)));
                None
            }
        };
        let thread_flags = need("thread_info.flags");
        let clear_child_tid = need("clear_child_tid");
        let robust_list = need("robust_list");
        let blocked = need("blocked");
        let pending = need("pending.signal");
        let saved_sigmask = need("saved_sigmask");
        let files = need("files");
        let fs = need("fs");
        let sighand = need("sighand");
        let fpstate_ptr = need("thread.fpu.fpstate");
        let restore_sigmask = match k.member("task_struct", "restore_sigmask") {
            Ok(m) => Some(m),
            Err(e) => {
                missing.push(format!("task_struct.restore_sigmask: {}", error_chain(&e)));
                None
            }
        };
        let opt = |p: &str| k.offset_of("task_struct", p).ok();
        ExtraLayout {
            thread_flags,
            clear_child_tid,
            robust_list,
            rseq: opt("rseq"),
            rseq_sig: opt("rseq_sig"),
            rseq_len: k.member("task_struct", "rseq_len").ok(),
            blocked,
            pending,
            saved_sigmask,
            restore_sigmask,
            files,
            fs,
            sighand,
            fpstate_ptr,
            fpstate_inline: opt("thread.fpu.__fpstate"),
            family: match FamilyLayout::new(k) {
                Ok(f) => Some(f),
                Err(e) => {
                    missing.push(format!("process tree fields: {}", error_chain(&e)));
                    None
                }
            },
            fpstate_regs: k.offset_of("fpstate", "regs").unwrap_or(64),
            fpstate_size: k.offset_of("fpstate", "size").ok(),
            missing,
        }
    }
}

impl TaskLayout {
    fn new(k: &Kernel<'_>) -> Result<Self, KernelError> {
        let t = |p: &str| k.offset_of("task_struct", p);
        let comm = k.member("task_struct", "comm")?;
        let mut regs = [0u64; 21];
        for (slot, name) in regs.iter_mut().zip(PT_REGS_FIELDS) {
            *slot = k.offset_of("pt_regs", name)?;
        }
        let regs_size = k
            .btf()
            .struct_id("pt_regs")
            .map(|id| k.btf().size_of(id))
            .transpose()?
            .unwrap_or(168);
        Ok(TaskLayout {
            tasks: t("tasks")?,
            thread_node: t("thread_node")?,
            pid: t("pid")?,
            tgid: t("tgid")?,
            comm: comm.offset_bytes,
            comm_len: usize::try_from(comm.size.min(64)).unwrap_or(16),
            state: t("__state").or_else(|_| t("state"))?,
            exit_state: t("exit_state")?,
            flags: t("flags")?,
            on_cpu: t("on_cpu").ok(),
            cpu: t("thread_info.cpu").or_else(|_| t("cpu")).ok(),
            mm: t("mm")?,
            stack: t("stack")?,
            signal: t("signal")?,
            fsbase: t("thread.fsbase")?,
            gsbase: t("thread.gsbase")?,
            thread_head: k.offset_of("signal_struct", "thread_head")?,
            regs,
            regs_size,
            extra: ExtraLayout::new(k),
        })
    }
}

fn read_task(k: &Kernel<'_>, l: &TaskLayout, addr: u64) -> Result<(Task, Vec<String>), TaskError> {
    let mut problems = Vec::new();
    let u32_at = |off: u64| k.read_u32(addr.wrapping_add(off));
    let u64_at = |off: u64| k.read_u64(addr.wrapping_add(off));
    let e = |field: &'static str| {
        move |source: KernelError| TaskError::Field {
            addr,
            field,
            source,
        }
    };
    let pid = u32_at(l.pid).map_err(e("pid"))?;
    let tgid = u32_at(l.tgid).map_err(e("tgid"))?;
    let (pid, tgid) = (
        i32::from_ne_bytes(pid.to_ne_bytes()),
        i32::from_ne_bytes(tgid.to_ne_bytes()),
    );
    if !(0..PID_MAX_LIMIT).contains(&i64::from(pid))
        || !(0..PID_MAX_LIMIT).contains(&i64::from(tgid))
    {
        return Err(TaskError::ImplausiblePid { addr, pid, tgid });
    }
    let mut comm = vec![0u8; l.comm_len];
    k.read_bytes(addr.wrapping_add(l.comm), &mut comm)
        .map_err(e("comm"))?;
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    let comm = String::from_utf8_lossy(&comm[..end]).into_owned();
    let flags = u32_at(l.flags).map_err(e("flags"))?;
    let mm = u64_at(l.mm).map_err(e("mm"))?;
    let stack = u64_at(l.stack).map_err(e("stack"))?;
    let mut soft = |what: &str, r: Result<u64, KernelError>| match r {
        Ok(v) => v,
        Err(err) => {
            problems.push(format!(
                "task {pid}: {what} unreadable: {}",
                error_chain(&err)
            ));
            0
        }
    };
    let state = soft("__state", u32_at(l.state).map(u64::from));
    let exit_state = soft("exit_state", u32_at(l.exit_state).map(u64::from));
    let fsbase = soft("thread.fsbase", u64_at(l.fsbase));
    let gsbase = soft("thread.gsbase", u64_at(l.gsbase));
    let on_cpu = l
        .on_cpu
        .map(|o| soft("on_cpu", u32_at(o).map(u64::from)) != 0);
    let cpu = l.cpu.and_then(|o| u32_at(o).ok());
    let mut task = Task {
        addr,
        pid,
        tgid,
        comm,
        state: u32::try_from(state).unwrap_or(u32::MAX),
        exit_state: u32::try_from(exit_state).unwrap_or(u32::MAX),
        flags,
        on_cpu: on_cpu.unwrap_or(false),
        cpu,
        mm,
        stack,
        regs_addr: 0,
        regs: None,
        fsbase,
        gsbase,
        thread_flags: 0,
        clear_child_tid: 0,
        robust_list: 0,
        rseq: None,
        blocked: 0,
        pending: 0,
        saved_sigmask: 0,
        restore_sigmask: false,
        files: 0,
        fs: 0,
        sighand: 0,
        family: None,
        fpu: None,
    };
    read_extra(k, &l.extra, &mut task, &mut problems);
    if task.is_user() {
        let regs_addr = stack
            .wrapping_add(k.layout().thread_size)
            .wrapping_sub(l.regs_size);
        task.regs_addr = regs_addr;
        let mut buf = vec![0u8; usize::try_from(l.regs_size).unwrap_or(168)];
        match k.read_bytes(regs_addr, &mut buf) {
            Err(err) => problems.push(format!(
                "task {pid}: stack unreadable ({stack:#x}): {}",
                error_chain(&err)
            )),
            Ok(()) => {
                let mut v = [0u64; 21];
                for (slot, &off) in v.iter_mut().zip(&l.regs) {
                    let o = usize::try_from(off).unwrap_or(usize::MAX);
                    *slot = buf
                        .get(o..o.saturating_add(8))
                        .and_then(|s| <[u8; 8]>::try_from(s).ok())
                        .map(u64::from_le_bytes)
                        .unwrap_or(0);
                }
                let regs = PtRegs::from_array(v);
                if !regs.is_user() {
                    problems.push(format!(
                        "task {pid}: pt_regs do not look like a user frame (cs={:#x} ip={:#x})",
                        regs.cs, regs.ip
                    ));
                }
                task.regs = Some(regs);
            }
        }
    }
    Ok((task, problems))
}

/// Reads the per-thread state needed to recreate a thread (see [`ExtraLayout`]).
fn read_extra(k: &Kernel<'_>, l: &ExtraLayout, task: &mut Task, problems: &mut Vec<String>) {
    let addr = task.addr;
    let pid = task.pid;
    let mut get = |what: &str, off: Option<u64>, size: u64| -> u64 {
        let Some(off) = off else { return 0 };
        match k.read_uint(addr.wrapping_add(off), size) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!(
                    "task {pid}: {what} unreadable: {}",
                    error_chain(&e)
                ));
                0
            }
        }
    };
    task.thread_flags = get("thread_info.flags", l.thread_flags, 8);
    task.clear_child_tid = get("clear_child_tid", l.clear_child_tid, 8);
    task.robust_list = get("robust_list", l.robust_list, 8);
    task.blocked = get("blocked", l.blocked, 8);
    task.pending = get("pending", l.pending, 8);
    task.saved_sigmask = get("saved_sigmask", l.saved_sigmask, 8);
    task.files = get("files", l.files, 8);
    task.fs = get("fs", l.fs, 8);
    task.sighand = get("sighand", l.sighand, 8);
    let rseq = get("rseq", l.rseq, 8);
    let rseq_sig = get("rseq_sig", l.rseq_sig, 4);
    if let Some(m) = &l.restore_sigmask {
        match k.read_member(m, addr) {
            Ok(v) => task.restore_sigmask = v != 0,
            Err(e) => problems.push(format!(
                "task {pid}: restore_sigmask unreadable: {}",
                error_chain(&e)
            )),
        }
    }
    if let Some(f) = &l.family {
        match read_family(k, f, addr) {
            Ok(v) => task.family = Some(v),
            Err(e) => problems.push(format!(
                "task {pid}: parent or session unreadable: {}",
                error_chain(&e)
            )),
        }
    }
    if rseq != 0 {
        let len = match &l.rseq_len {
            Some(m) => k
                .read_member(m, addr)
                .ok()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(32),
            None => 32,
        };
        task.rseq = Some(Rseq {
            addr: rseq,
            len,
            sig: u32::try_from(rseq_sig).unwrap_or(0),
        });
    }
    if task.is_user() {
        match read_fpu(k, l, addr) {
            Ok((fx, note)) => {
                task.fpu = Some(fx);
                if let Some(n) = note {
                    problems.push(format!("task {pid}: {n}"));
                }
            }
            Err(e) => problems.push(format!("task {pid}: fpu: {}", error_chain(&e))),
        }
    }
}

/// Reads a task's parent, process group, session and exit code.
fn read_family(k: &Kernel<'_>, l: &FamilyLayout, task: u64) -> Result<Family, KernelError> {
    let signed = |v: u32| i32::from_ne_bytes(v.to_ne_bytes());
    let parent = k.read_u64(task.wrapping_add(l.real_parent))?;
    let ppid = if parent == 0 {
        0
    } else {
        signed(k.read_u32(parent.wrapping_add(l.tgid))?)
    };
    let exit_code = signed(k.read_u32(task.wrapping_add(l.exit_code))?);
    let signal = k.read_u64(task.wrapping_add(l.signal))?;
    let nr_of = |ty: u64| -> Result<i32, KernelError> {
        let pid = k.read_u64(signal.wrapping_add(l.pids).wrapping_add(ty * 8))?;
        if pid == 0 {
            return Ok(0);
        }
        Ok(signed(k.read_u32(pid.wrapping_add(l.nr))?))
    };
    Ok(Family {
        ppid,
        pgid: nr_of(PIDTYPE_PGID)?,
        sid: nr_of(PIDTYPE_SID)?,
        exit_code,
    })
}

/// Reads the first 512 bytes of `thread.fpu.fpstate->regs` (the FXSAVE image, also the
/// legacy area of an XSAVE buffer). A bad `fpstate` pointer falls back to the inline
/// `__fpstate` with a note.
fn read_fpu(
    k: &Kernel<'_>,
    l: &ExtraLayout,
    task: u64,
) -> Result<(FxSave, Option<String>), TaskError> {
    let ptr_off = l.fpstate_ptr.ok_or(TaskError::NoFpstateField)?;
    let mut note = None;
    let inline = l.fpstate_inline.map(|o| task.wrapping_add(o));
    let mut fpstate = k
        .read_u64(task.wrapping_add(ptr_off))
        .map_err(TaskError::FpstatePointer)?;
    let readable =
        |p: u64| crate::kernel::is_kernel_addr(p) && p & 63 == 0 && k.virt_to_phys(p).is_ok();
    if !readable(fpstate) {
        match inline {
            Some(i) => {
                note = Some(format!(
                    "fpstate pointer {fpstate:#x} is bad: using the inline fpstate"
                ));
                fpstate = i;
            }
            None => return Err(TaskError::BadFpstate(fpstate)),
        }
    }
    let mut fx = [0u8; FXSAVE_LEN];
    k.read_bytes(fpstate.wrapping_add(l.fpstate_regs), &mut fx)
        .map_err(|source| TaskError::Fpstate { fpstate, source })?;
    let mut fx = FxSave(fx);
    // An XSAVE-format buffer (size > 512) may hold components in their init state.
    if let Some(size_off) = l.fpstate_size {
        let size = k.read_u32(fpstate.wrapping_add(size_off)).unwrap_or(0);
        if size >= 512 + 64 {
            if let Ok(bv) = k.read_u64(
                fpstate
                    .wrapping_add(l.fpstate_regs)
                    .wrapping_add(FXSAVE_LEN as u64),
            ) {
                fx.apply_xstate_bv(bv);
            }
        }
    }
    Ok((fx, note))
}

/// Walks every task of the kernel: `init_task` and the `tasks` ring of thread-group leaders,
/// and each leader's threads. Tasks that cannot be read are reported, not returned.
pub fn walk_tasks(k: &Kernel<'_>) -> Partial<Vec<Task>> {
    let mut out = Partial::ok(Vec::new());
    let layout = match TaskLayout::new(k) {
        Ok(l) => l,
        Err(e) => {
            out.problems
                .push(format!("task layout: {}", error_chain(&e)));
            return out;
        }
    };
    out.problems.extend(
        layout
            .extra
            .missing
            .iter()
            .map(|m| format!("task layout: {m}")),
    );
    let init_task = match k.symbol("init_task") {
        Ok(a) => a,
        Err(e) => {
            out.problems.push(format!("task list: {}", error_chain(&e)));
            return out;
        }
    };
    let leaders = walk_list(
        k,
        init_task.wrapping_add(layout.tasks),
        MAX_TASKS,
        "task list",
    );
    out.problems.extend(leaders.problems);
    let mut seen: HashSet<u64> = HashSet::new();
    let leader_addrs = std::iter::once(init_task)
        .chain(leaders.value.iter().map(|n| n.wrapping_sub(layout.tasks)));
    for leader in leader_addrs {
        if !seen.insert(leader) {
            continue;
        }
        let (task, problems) = match read_task(k, &layout, leader) {
            Ok(t) => t,
            Err(e) => {
                out.problems.push(error_chain(&e));
                continue;
            }
        };
        out.problems.extend(problems);
        let pid = task.pid;
        let signal = k.read_u64(leader.wrapping_add(layout.signal));
        out.value.push(task);
        let signal = match signal {
            Ok(s) => s,
            Err(e) => {
                out.problems.push(format!(
                    "task {pid}: signal unreadable: {}",
                    error_chain(&e)
                ));
                continue;
            }
        };
        let threads = walk_list(
            k,
            signal.wrapping_add(layout.thread_head),
            MAX_THREADS,
            &format!("task {pid} threads"),
        );
        out.problems.extend(threads.problems);
        let own_node = leader.wrapping_add(layout.thread_node);
        if !threads.value.contains(&own_node) {
            out.problems
                .push(format!("task {pid}: not in its own thread list"));
        }
        for node in threads.value {
            let addr = node.wrapping_sub(layout.thread_node);
            if !seen.insert(addr) {
                continue;
            }
            match read_task(k, &layout, addr) {
                Ok((t, problems)) => {
                    out.problems.extend(problems);
                    if t.tgid != pid {
                        out.problems.push(format!(
                            "task {}: in thread group {pid} but has tgid {}",
                            t.pid, t.tgid
                        ));
                    }
                    out.value.push(t);
                }
                Err(e) => out.problems.push(error_chain(&e)),
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::btf::build::Builder;
    use crate::btf::Btf;
    use crate::kernel::testmem::{dm, Mem};
    use crate::symbols::SymbolTable;

    pub(crate) const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81100100 D phys_base
ffffffff81101000 D init_top_pgt
ffffffff81110000 D init_task
ffffffff81200000 D init_stack
ffffffff81204000 D __end_init_task
ffffffff81400000 B _end
";

    /// Synthetic layout: task_struct of 0x400 bytes.
    pub(crate) mod off {
        pub const STATE: u64 = 0x18;
        pub const STACK: u64 = 0x20;
        pub const FLAGS: u64 = 0x2c;
        pub const ON_CPU: u64 = 0x34;
        pub const TASKS: u64 = 0x40;
        pub const MM: u64 = 0x50;
        pub const EXIT_STATE: u64 = 0x58;
        pub const PID: u64 = 0x60;
        pub const TGID: u64 = 0x64;
        pub const THREAD_NODE: u64 = 0x70;
        pub const COMM: u64 = 0x80;
        pub const SIGNAL: u64 = 0x90;
        pub const FSBASE: u64 = 0x100;
        pub const REAL_PARENT: u64 = 0x38;
        pub const EXIT_CODE: u64 = 0x68;
        pub const THREAD_HEAD: u64 = 0x10;
        pub const CLEAR_CHILD_TID: u64 = 0x98;
        pub const ROBUST_LIST: u64 = 0xa0;
        pub const BLOCKED: u64 = 0xa8;
        pub const SAVED_SIGMASK: u64 = 0xb0;
        pub const PENDING: u64 = 0xb8;
        pub const RESTORE_SIGMASK: u64 = 0xd0;
        pub const FILES: u64 = 0xd8;
        pub const FS: u64 = 0xe0;
        pub const SIGHAND: u64 = 0xe8;
        pub const RSEQ: u64 = 0xf0;
        pub const RSEQ_SIG: u64 = 0xf8;
        pub const FPSTATE_PTR: u64 = 0x150;
        pub const FPSTATE: u64 = 0x180;
        pub const FPREGS: u64 = 0x1c0;
    }

    pub(crate) fn add_task_types(b: &mut Builder) {
        let u32t = b.int("unsigned int", 4);
        let int = b.int("int", 4);
        let ulong = b.int("long unsigned int", 8);
        let ch = b.int("char", 1);
        let comm = b.array(ch, u32t, 16);
        let lh = b.strukt("list_head", 16, &[("next", ulong, 0), ("prev", ulong, 64)]);
        let ti = b.strukt(
            "thread_info",
            24,
            &[("flags", ulong, 0), ("cpu", u32t, 160)],
        );
        let uch = b.int("unsigned char", 1);
        let fpregs = b.array(uch, u32t, 576);
        let fpstate = b.strukt("fpstate", 640, &[("size", u32t, 0), ("regs", fpregs, 512)]);
        let fpu = b.strukt(
            "fpu",
            704,
            &[
                ("last_cpu", u32t, 0),
                ("fpstate", ulong, 128),
                ("__fpstate", fpstate, 512),
            ],
        );
        let th = b.strukt(
            "thread_struct",
            0x300,
            &[
                ("fsbase", ulong, 0),
                ("gsbase", ulong, 64),
                ("fpu", fpu, 512),
            ],
        );
        let sigset = b.int("sigset_t", 8);
        let sigpending = b.strukt(
            "sigpending",
            24,
            &[("list", lh, 0), ("signal", sigset, 128)],
        );
        let regs: Vec<(&str, u32, u32)> = PT_REGS_FIELDS
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, ulong, u32::try_from(i * 64).expect("small")))
            .collect();
        b.strukt("pt_regs", 168, &regs);
        let pids = b.array(ulong, u32t, 4);
        b.strukt(
            "signal_struct",
            0x40,
            &[("thread_head", lh, 0x80), ("pids", pids, 0x100)],
        );
        let upid = b.strukt("upid", 16, &[("nr", int, 0), ("ns", ulong, 64)]);
        let numbers = b.array(upid, u32t, 1);
        b.strukt("pid", 0x40, &[("numbers", numbers, 0x180)]);
        let o = |v: u64| u32::try_from(v * 8).expect("small");
        let mut task = vec![
            ("clear_child_tid", ulong, o(off::CLEAR_CHILD_TID), 0),
            ("robust_list", ulong, o(off::ROBUST_LIST), 0),
            ("blocked", sigset, o(off::BLOCKED), 0),
            ("saved_sigmask", sigset, o(off::SAVED_SIGMASK), 0),
            ("pending", sigpending, o(off::PENDING), 0),
            ("restore_sigmask", u32t, o(off::RESTORE_SIGMASK) + 4, 1),
            ("files", ulong, o(off::FILES), 0),
            ("fs", ulong, o(off::FS), 0),
            ("sighand", ulong, o(off::SIGHAND), 0),
            ("rseq", ulong, o(off::RSEQ), 0),
            ("rseq_sig", u32t, o(off::RSEQ_SIG), 0),
            ("real_parent", ulong, o(off::REAL_PARENT), 0),
            ("exit_code", int, o(off::EXIT_CODE), 0),
        ];
        let plain: Vec<(&str, u32, u32, u32)> = [
            ("thread_info", ti, 0),
            ("__state", u32t, o(off::STATE)),
            ("stack", ulong, o(off::STACK)),
            ("flags", u32t, o(off::FLAGS)),
            ("on_cpu", int, o(off::ON_CPU)),
            ("tasks", lh, o(off::TASKS)),
            ("mm", ulong, o(off::MM)),
            ("exit_state", int, o(off::EXIT_STATE)),
            ("pid", int, o(off::PID)),
            ("tgid", int, o(off::TGID)),
            ("thread_node", lh, o(off::THREAD_NODE)),
            ("comm", comm, o(off::COMM)),
            ("signal", ulong, o(off::SIGNAL)),
            ("thread", th, o(off::FSBASE)),
        ]
        .iter()
        .map(|&(n, t, bo)| (n, t, bo, 0))
        .collect();
        task.extend(plain);
        b.composite(4, "task_struct", 0x400, &task);
    }

    pub(crate) fn task_btf() -> Btf {
        let mut b = Builder::new();
        add_task_types(&mut b);
        Btf::parse(&b.finish()).expect("btf")
    }

    /// init_task's physical address (image at phys 0x100_0000 = link 0xffffffff81000000).
    pub(crate) const INIT_TASK_PA: u64 = 0x111_0000;

    pub(crate) struct World {
        pub m: Mem,
    }

    /// Puts a task at `pa`. Signal struct at `sig_pa`, stack at `stack_pa`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put_task(
        m: &mut Mem,
        pa: u64,
        pid: i32,
        tgid: i32,
        comm: &str,
        mm: u64,
        sig_pa: u64,
        stack_pa: u64,
    ) {
        m.put_u32(pa + off::PID, u32::from_ne_bytes(pid.to_ne_bytes()));
        m.put_u32(pa + off::TGID, u32::from_ne_bytes(tgid.to_ne_bytes()));
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        m.put(pa + off::COMM, &c);
        m.put_u64(pa + off::MM, mm);
        m.put_u64(pa + off::STACK, dm(stack_pa));
        m.put_u64(pa + off::SIGNAL, dm(sig_pa));
        m.put_u32(pa + off::STATE, 1);
        m.put_u64(pa + off::FSBASE, 0x7f00_0000_0000 + pa);
        m.put_u64(pa + off::FPSTATE_PTR, kva(pa + off::FPSTATE));
        m.put_u32(pa + off::FPSTATE, 512);
        let mut fx = crate::tasks::FxSave::init();
        fx.0[160] = u8::try_from(pid & 0x7f).expect("small"); // xmm0 low byte = pid
        m.put(pa + off::FPREGS, &fx.0);
        m.put_u64(pa + off::BLOCKED, 1 << 9);
        m.put_u64(pa + off::CLEAR_CHILD_TID, 0x7f00_0000_1000 + pa);
        m.put_u64(pa + off::ROBUST_LIST, 0x7f00_0000_2000 + pa);
        // pt_regs at the top of the 16 KiB stack.
        let regs = stack_pa + 0x4000 - 168;
        for i in 0..21u64 {
            m.put_u64(regs + i * 8, 0x100 + i);
        }
        m.put_u64(regs + 16 * 8, 0x40_1000 + pa); // ip
        m.put_u64(regs + 17 * 8, USER_CS);
        m.put_u64(regs + 20 * 8, USER_DS);
    }

    /// The kernel's own address for `pa`: image addresses inside the image, else direct map.
    pub(crate) fn kva(pa: u64) -> u64 {
        if (0x100_0000..0x140_0000).contains(&pa) {
            pa - 0x100_0000 + 0xffff_ffff_8100_0000
        } else {
            dm(pa)
        }
    }

    /// Links `nodes` (physical addresses of list_heads) into a ring.
    pub(crate) fn link(m: &mut Mem, nodes: &[u64]) {
        for i in 0..nodes.len() {
            let next = nodes[(i + 1) % nodes.len()];
            let prev = nodes[(i + nodes.len() - 1) % nodes.len()];
            m.put_u64(nodes[i], kva(next));
            m.put_u64(nodes[i] + 8, kva(prev));
        }
    }

    /// init_task + 3 processes; process 2 has 3 threads.
    pub(crate) fn world() -> World {
        let mut m = Mem::new(0x200_0000);
        let mut procs = vec![INIT_TASK_PA];
        put_task(
            &mut m,
            INIT_TASK_PA,
            0,
            0,
            "swapper/0",
            0,
            0x2_0000,
            0x3_0000,
        );
        m.put_u32(INIT_TASK_PA + off::FLAGS, PF_KTHREAD);
        link(
            &mut m,
            &[0x2_0000 + off::THREAD_HEAD, INIT_TASK_PA + off::THREAD_NODE],
        );
        for (i, (pid, comm)) in [(1, "init"), (2, "sh"), (3, "kthreadd")].iter().enumerate() {
            let base = 0x10_0000 * (i as u64 + 1);
            let sig = base + 0x8000;
            put_task(
                &mut m,
                base,
                *pid,
                *pid,
                comm,
                dm(0x9_0000),
                sig,
                base + 0x4_0000,
            );
            let mut group = vec![sig + off::THREAD_HEAD, base + off::THREAD_NODE];
            if *pid == 2 {
                for t in 1..=2u64 {
                    let tpa = base + 0x1000 * t;
                    let tid = 100 + i32::try_from(t).expect("small");
                    put_task(
                        &mut m,
                        tpa,
                        tid,
                        2,
                        "worker",
                        dm(0x9_0000),
                        sig,
                        base + 0x4_0000 * (t + 1),
                    );
                    group.push(tpa + off::THREAD_NODE);
                }
            }
            if *pid == 3 {
                m.put_u64(base + off::MM, 0);
                m.put_u32(base + off::FLAGS, PF_KTHREAD);
            }
            link(&mut m, &group);
            procs.push(base);
        }
        let ring: Vec<u64> = procs.iter().map(|p| p + off::TASKS).collect();
        link(&mut m, &ring);
        World { m }
    }

    pub(crate) fn run(m: &Mem) -> Partial<Vec<Task>> {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = task_btf();
        let k = Kernel::new(m, &syms, &btf).expect("kernel");
        walk_tasks(&k)
    }

    #[test]
    fn finds_leaders_threads_and_registers() {
        let w = world();
        let r = run(&w.m);
        assert!(r.is_complete(), "{:?}", r.problems);
        let pids: Vec<i32> = r.value.iter().map(|t| t.pid).collect();
        assert_eq!(pids, [0, 1, 2, 101, 102, 3]);
        let sh = &r.value[2];
        assert_eq!((sh.comm.as_str(), sh.tgid, sh.state_char()), ("sh", 2, 'S'));
        let regs = sh.regs.expect("regs");
        assert_eq!(
            (regs.cs, regs.ss, regs.r15, regs.orig_ax),
            (USER_CS, USER_DS, 0x100, 0x10f)
        );
        assert_eq!(regs.ip, 0x40_1000 + 0x20_0000);
        assert_eq!(sh.fsbase, 0x7f00_0000_0000 + 0x20_0000);
        assert!(r.value[4].is_user() && !r.value[4].is_leader());
        assert!(r.value[0].is_kernel_thread() && r.value[0].regs.is_none());
        assert!(r.value[5].is_kernel_thread());
        // Thread state for recreation.
        assert_eq!(sh.blocked, 1 << 9);
        assert_eq!(sh.effective_sigmask(), 1 << 9);
        assert_eq!(sh.clear_child_tid, 0x7f00_0000_1000 + 0x20_0000);
        assert_eq!(sh.robust_list, 0x7f00_0000_2000 + 0x20_0000);
        assert!(sh.rseq.is_none() && !sh.restore_sigmask);
        let fx = sh.fpu.expect("fpu");
        assert_eq!((fx.fcw(), fx.mxcsr(), fx.0[160]), (0x37f, 0x1f80, 2));
        assert_eq!(r.value[3].fpu.expect("fpu").0[160], 101);
        assert!(sh.fpu_live_in_cpu());
    }

    #[test]
    fn reads_rseq_sigmask_bits_and_xsave_init_state() {
        let mut w = world();
        let t = 0x20_0000;
        w.m.put_u64(t + off::RSEQ, 0x7f00_0000_3000);
        w.m.put_u32(t + off::RSEQ_SIG, 0x5305_3053);
        w.m.put_u32(t + off::RESTORE_SIGMASK, 1 << 4);
        w.m.put_u64(t + off::SAVED_SIGMASK, 1 << 2);
        w.m.put_u64(t, TIF_NEED_FPU_LOAD);
        // An XSAVE buffer whose XSTATE_BV says x87 and SSE are in their init state.
        w.m.put_u32(t + off::FPSTATE, 1024);
        w.m.put(t + off::FPREGS, &[0xaa; 512]);
        w.m.put_u64(t + off::FPREGS + 512, 0);
        let r = run(&w.m);
        assert!(r.is_complete(), "{:?}", r.problems);
        let sh = &r.value[2];
        assert_eq!(
            sh.rseq,
            Some(Rseq {
                addr: 0x7f00_0000_3000,
                len: 32,
                sig: 0x5305_3053
            })
        );
        assert!(sh.restore_sigmask);
        assert_eq!(sh.effective_sigmask(), 1 << 2);
        assert!(!sh.fpu_live_in_cpu());
        let fx = sh.fpu.expect("fpu");
        assert_eq!((fx.fcw(), fx.mxcsr()), (0x37f, 0x1f80));
        assert!(fx.0[160..416].iter().all(|&b| b == 0));
        assert!(fx.0[416..].iter().all(|&b| b == 0xaa));
        assert_eq!(fx.to_hex().len(), 1024);

        // A wild fpstate pointer falls back to the inline fpstate, with a note.
        let mut w = world();
        w.m.put_u64(t + off::FPSTATE_PTR, 0xdead_beef);
        let r = run(&w.m);
        assert_eq!(r.value[2].fpu.expect("fpu").0[160], 2);
        assert!(
            r.problems.iter().any(|p| p.contains("fpstate pointer")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn broken_task_list_gives_partial_results() {
        // init_task.tasks.next = garbage inside memory: back-check fails, backward walk
        // recovers everything.
        let mut w = world();
        w.m.put_u64(INIT_TASK_PA + off::TASKS, dm(0x50_0000));
        let r = run(&w.m);
        let pids: Vec<i32> = r.value.iter().map(|t| t.pid).collect();
        assert_eq!(pids, [0, 1, 2, 101, 102, 3]);
        assert!(
            r.problems.iter().any(|p| p.contains("task list")),
            "{:?}",
            r.problems
        );

        // A thread's stack pointer is wild.
        let mut w = world();
        w.m.put_u64(0x20_1000 + off::STACK, 0xffff_c900_dead_0000);
        let r = run(&w.m);
        assert!(
            r.problems
                .iter()
                .any(|p| p.contains("task 101: stack unreadable")),
            "{:?}",
            r.problems
        );
        assert_eq!(r.value.len(), 6);

        // A task whose pid is garbage is dropped with a reason.
        let mut w = world();
        w.m.put_u32(0x10_0000 + off::PID, 0xffff_fff0);
        let r = run(&w.m);
        assert_eq!(r.value.len(), 5);
        assert!(r.problems.iter().any(|p| p.contains("implausible pid")));

        // A kernel-mode frame where user registers should be.
        let mut w = world();
        w.m.put_u64(0x10_0000 + 0x4_0000 + 0x4000 - 168 + 17 * 8, 0x10);
        let r = run(&w.m);
        assert!(r.problems.iter().any(|p| p.contains("task 1: pt_regs")));
    }

    #[test]
    fn thread_list_cycle_terminates() {
        let mut w = world();
        // worker 102's thread_node.next -> worker 101's node (cycle, skipping the head).
        w.m.put_u64(
            0x20_2000 + off::THREAD_NODE,
            dm(0x20_1000 + off::THREAD_NODE),
        );
        let r = run(&w.m);
        assert!(
            r.problems.iter().any(|p| p.contains("task 2 threads")),
            "{:?}",
            r.problems
        );
        assert!(r.value.iter().any(|t| t.pid == 102));
    }
}
