//! One thread per vCPU, driven by messages (Firecracker's pattern): requests go in, responses
//! come out, and a request reaches a vCPU inside `KVM_RUN` by a kick: `immediate_exit` set
//! from a signal handler, so `KVM_RUN` returns `EINTR`.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_run, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::bus::{MmioBus, PioBus};

/// Errors of the vCPU layer.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {id}: KVM {what} failed")]
    Kvm {
        /// vCPU index.
        id: u8,
        /// The ioctl.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The vCPU thread could not be started.
    #[error("cannot start vCPU thread {0}")]
    Spawn(u8, #[source] std::io::Error),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
    /// The vCPU thread is gone or did not answer in time.
    #[error("vCPU {0} did not answer")]
    NoAnswer(u8),
    /// The vCPU answered something else than asked.
    #[error("vCPU {id}: {msg}")]
    Refused {
        /// vCPU index.
        id: u8,
        /// What it said.
        msg: String,
    },
    /// A saved list (CPUID entries, MSRs) is longer than KVM takes.
    #[error("vCPU {id}: {count} {what} are more than KVM takes")]
    TooMany {
        /// vCPU index.
        id: u8,
        /// What the list holds.
        what: &'static str,
        /// How many there are.
        count: usize,
    },
    /// KVM set only part of the saved MSRs.
    #[error("vCPU {id}: KVM refused MSR {index:#x} ({set} of {total} set)")]
    MsrRefused {
        /// vCPU index.
        id: u8,
        /// The first MSR not set.
        index: u32,
        /// How many were set.
        set: usize,
        /// How many were given.
        total: usize,
    },
    /// The saved XSAVE area is larger than this host's KVM takes: the state was saved on a
    /// host with more (or dynamically enabled) XSAVE features.
    #[error("vCPU {id}: the saved XSAVE area has {saved} bytes, this host's KVM takes {host}")]
    XsaveTooLarge {
        /// vCPU index.
        id: u8,
        /// Bytes saved.
        saved: usize,
        /// Bytes this host's KVM reads and writes.
        host: usize,
    },
}

/// Everything KVM keeps about a vCPU that a snapshot must carry.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the vCPU was booted with (the entries owvmm set; kvm_pvm's
    /// `KVM_GET_CPUID2` answers the host CPU's view instead): a restore sets this one, not
    /// one recomputed from the restoring host.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Multiprocessing state (read first: reading it can deliver pending INIT/SIPI events
    /// into the state the other calls read).
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU/SSE/AVX state: the first 4 KiB of the XSAVE area (all of it when the host's
    /// area fits, or the host has no `KVM_CAP_XSAVE2`).
    pub xsave: kvm_xsave,
    /// The rest of the XSAVE area past the first 4 KiB, in 32-bit words, as
    /// `KVM_GET_XSAVE2` returned it (empty when the area fits in 4 KiB).
    pub xsave_extra: Vec<u32>,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debugregs: kvm_debugregs,
    /// Local APIC.
    pub lapic: kvm_lapic_state,
    /// Model-specific registers.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts, NMIs.
    pub events: kvm_vcpu_events,
}

/// Most XSAVE bytes a saved state may carry (the architectural area with every component
/// known today, AMX included, is about 11 KiB).
pub const MAX_XSAVE_BYTES: usize = 64 << 10;

impl VcpuState {
    /// Bytes of the saved XSAVE area.
    pub fn xsave_bytes(&self) -> usize {
        std::mem::size_of::<kvm_xsave>().saturating_add(self.xsave_extra.len().saturating_mul(4))
    }
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VcpuState {{ rip: {:#x}, cpuid: {}, msrs: {}, xsave: {} bytes }}",
            self.regs.rip,
            self.cpuid.len(),
            self.msrs.len(),
            self.xsave_bytes()
        )
    }
}

/// Facts about a guest that stopped on an instruction KVM could not emulate, or another
/// fatal exit.
#[derive(Debug, Clone, Serialize)]
pub struct FaultInfo {
    /// vCPU index.
    pub vcpu: u8,
    /// What kind of exit.
    pub kind: String,
    /// Instruction pointer.
    pub rip: u64,
    /// Privilege level (0 kernel, 3 user).
    pub cpl: u8,
    /// CR3, to translate the RIP.
    pub cr3: u64,
    /// Extra data KVM gave (suberror, hardware reason).
    pub detail: String,
}

/// A short description of where a vCPU is.
#[derive(Debug, Clone, Serialize)]
pub struct VcpuBrief {
    /// vCPU index.
    pub vcpu: u8,
    /// Instruction pointer.
    pub rip: u64,
    /// Privilege level.
    pub cpl: u8,
    /// CR0 (bit 0: protected mode, bit 31: paging).
    pub cr0: u64,
    /// CR3, to translate the RIP.
    pub cr3: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// KVM multiprocessing state: runnable, uninitialized (waiting for INIT/SIPI), halted...
    pub mp_state: String,
}

/// Requests to a vCPU thread.
#[derive(Debug)]
pub enum VcpuRequest {
    /// Stop running guest code and wait.
    Pause,
    /// Run guest code again.
    Resume,
    /// Read the full state (only when paused).
    SaveState,
    /// Is the vCPU halted with interrupts off (dead halt, e.g. after power-off)?
    ProbeHalted,
    /// Where is it: instruction pointer, mode, multiprocessing state.
    Describe,
    /// Load a saved state (only when paused): the crash kernel's, on a microreboot.
    RestoreState(Box<VcpuState>),
    /// Make the kernel call `rip(rdi)` now, with interrupts off (only when paused and
    /// in kernel mode): how `ctl crash` makes the kernel panic from outside.
    InjectCall {
        /// Function to enter.
        rip: u64,
        /// First argument.
        rdi: u64,
        /// Only if the vCPU is idle (halted), so that no task is cut off in the middle
        /// of a system call.
        idle_only: bool,
    },
    /// Leave the thread.
    Finish,
}

/// Responses from a vCPU thread.
#[derive(Debug)]
pub enum VcpuResponse {
    /// Now paused.
    Paused,
    /// Now running.
    Resumed {
        /// Telling the guest's kvmclock that it was paused (so that its soft-lockup
        /// watchdog does not count the pause) failed; the vCPU runs anyway.
        kvmclock_error: Option<kvm_ioctls::Error>,
    },
    /// The saved state.
    State(Box<VcpuState>),
    /// Halted with interrupts off.
    Halted(bool),
    /// Where the vCPU is.
    Description(VcpuBrief),
    /// The call was set up.
    Injected,
    /// The state was loaded.
    Restored,
    /// The request could not be carried out.
    Error(String),
}

/// Things a vCPU reports without being asked.
#[derive(Debug, Clone)]
pub enum VcpuEvent {
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    Shutdown(u8),
    /// A fatal exit: emulation failure, failed entry, KVM error.
    Fault(FaultInfo),
}

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN_PTR.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer was set by this very thread to its own VcpuFd's kvm_run
            // mapping, which lives as long as the thread's run loop; a volatile byte store is
            // async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static ONCE: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| register_signal_handler(SIGRTMIN(), kick_handler).map_err(|e| e.errno()))
        .map_err(|e| VcpuError::Signal(vmm_sys_util::errno::Error::new(e)))
}

/// A request with its sequence number.
type Numbered<T> = (u64, T);

/// The VMM's end of a vCPU thread.
///
/// Every request carries a sequence number and its answer echoes it, so an answer that
/// comes after its request timed out is recognised and dropped, never taken as the answer
/// to a later request.
pub struct VcpuHandle {
    /// vCPU index.
    pub id: u8,
    tx: Sender<Numbered<VcpuRequest>>,
    rx: Receiver<Numbered<VcpuResponse>>,
    thread: Option<JoinHandle<()>>,
    next_seq: AtomicU64,
    timeout: Duration,
}

/// How long a vCPU may take to answer a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl VcpuHandle {
    fn send(&self, req: VcpuRequest) -> Result<u64, VcpuError> {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send((seq, req))
            .map_err(|_| VcpuError::NoAnswer(self.id))?;
        if let Some(t) = &self.thread {
            // A failed kick only means the thread already left.
            let _ = t.kill(SIGRTMIN());
        }
        Ok(seq)
    }

    /// Sends a request and waits for its answer.
    pub fn request(&self, req: VcpuRequest) -> Result<VcpuResponse, VcpuError> {
        let seq = self.send(req)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                // A late answer to an earlier request that timed out.
                Ok((s, _)) if s != seq => continue,
                Ok((_, VcpuResponse::Error(msg))) => {
                    return Err(VcpuError::Refused { id: self.id, msg })
                }
                Ok((_, r)) => return Ok(r),
                Err(_) => return Err(VcpuError::NoAnswer(self.id)),
            }
        }
    }

    /// Asks the thread to finish and joins it.
    pub fn finish(mut self) {
        let _ = self.send(VcpuRequest::Finish);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A vCPU and what its thread needs.
pub struct Vcpu {
    /// vCPU index.
    pub id: u8,
    fd: VcpuFd,
    /// The CPUID set on this vCPU (at boot, or by the last restore).
    cpuid: Vec<kvm_cpuid_entry2>,
    bus: Arc<PioBus>,
    mmio: Arc<MmioBus>,
    events: Sender<VcpuEvent>,
    events_evt: EventFd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
}

enum Flow {
    Continue,
    Stop,
}

impl Vcpu {
    /// Wraps a configured vCPU; `cpuid` is what was set on it (`regs::setup_cpuid`, or the
    /// restored state's).
    pub fn new(
        id: u8,
        fd: VcpuFd,
        cpuid: Vec<kvm_cpuid_entry2>,
        bus: Arc<PioBus>,
        mmio: Arc<MmioBus>,
        events: Sender<VcpuEvent>,
        events_evt: EventFd,
    ) -> Self {
        Vcpu {
            id,
            fd,
            cpuid,
            bus,
            mmio,
            events,
            events_evt,
        }
    }

    /// Starts the thread; `paused` keeps it from running guest code until resumed.
    pub fn start(self, paused: bool) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let (req_tx, req_rx) = channel();
        let (resp_tx, resp_rx) = channel();
        let id = self.id;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || self.run_loop(req_rx, resp_tx, paused))
            .map_err(|e| VcpuError::Spawn(id, e))?;
        Ok(VcpuHandle {
            id,
            tx: req_tx,
            rx: resp_rx,
            thread: Some(thread),
            next_seq: AtomicU64::new(0),
            timeout: ANSWER_TIMEOUT,
        })
    }

    fn report(&self, e: VcpuEvent) {
        let _ = self.events.send(e);
        let _ = self.events_evt.write(1);
    }

    fn run_loop(
        mut self,
        req: Receiver<Numbered<VcpuRequest>>,
        resp: Sender<Numbered<VcpuResponse>>,
        paused: bool,
    ) {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PTR.with(|p| p.set(run_ptr));
        let mut state = if paused {
            RunState::Paused
        } else {
            RunState::Running
        };
        loop {
            match state {
                RunState::Running => {
                    // Requests that arrived while not in KVM_RUN.
                    while let Ok(r) = req.try_recv() {
                        match self.handle_request(r, &mut state, &resp) {
                            Flow::Continue => {}
                            Flow::Stop => return self.leave(),
                        }
                    }
                    if state != RunState::Running {
                        continue;
                    }
                    if let Some(fatal) = self.run_once() {
                        self.report(fatal);
                        state = RunState::Paused;
                    }
                }
                RunState::Paused => match req.recv() {
                    Ok(r) => {
                        if let Flow::Stop = self.handle_request(r, &mut state, &resp) {
                            return self.leave();
                        }
                    }
                    Err(_) => return self.leave(),
                },
            }
        }
    }

    fn leave(&self) {
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
    }

    fn handle_request(
        &mut self,
        (seq, r): Numbered<VcpuRequest>,
        state: &mut RunState,
        resp: &Sender<Numbered<VcpuResponse>>,
    ) -> Flow {
        let answer = match r {
            VcpuRequest::Pause => {
                *state = RunState::Paused;
                VcpuResponse::Paused
            }
            VcpuRequest::Resume => {
                let kvmclock_error = match *state {
                    RunState::Paused => self.kvmclock_paused(),
                    RunState::Running => None,
                };
                *state = RunState::Running;
                VcpuResponse::Resumed { kvmclock_error }
            }
            VcpuRequest::SaveState if *state == RunState::Paused => match self.save_state() {
                Ok(s) => VcpuResponse::State(Box::new(s)),
                Err(e) => VcpuResponse::Error(crate::error_chain(&e)),
            },
            VcpuRequest::SaveState => VcpuResponse::Error("not paused".into()),
            VcpuRequest::ProbeHalted => VcpuResponse::Halted(self.dead_halted()),
            VcpuRequest::Describe => VcpuResponse::Description(self.describe()),
            VcpuRequest::InjectCall {
                rip,
                rdi,
                idle_only,
            } if *state == RunState::Paused => match self.inject_call(rip, rdi, idle_only) {
                Ok(()) => VcpuResponse::Injected,
                Err(e) => VcpuResponse::Error(e),
            },
            VcpuRequest::InjectCall { .. } => VcpuResponse::Error("not paused".into()),
            VcpuRequest::RestoreState(s) if *state == RunState::Paused => {
                let xsave2 = crate::vstate::vm::xsave2_size();
                match restore_state(&self.fd, self.id, &s, Some(&self.cpuid), xsave2) {
                    Ok(()) => {
                        self.cpuid = s.cpuid;
                        VcpuResponse::Restored
                    }
                    Err(e) => VcpuResponse::Error(crate::error_chain(&e)),
                }
            }
            VcpuRequest::RestoreState(_) => VcpuResponse::Error("not paused".into()),
            VcpuRequest::Finish => return Flow::Stop,
        };
        let _ = resp.send((seq, answer));
        Flow::Continue
    }

    /// Tells KVM the guest was paused (`KVM_KVMCLOCK_CTRL`), so that the guest's
    /// soft-lockup watchdog does not take the pause for a hang. `EINVAL` means the guest
    /// has no kvmclock, which is fine; any other failure is reported (and returned).
    fn kvmclock_paused(&self) -> Option<kvm_ioctls::Error> {
        match self.fd.kvmclock_ctrl() {
            Ok(()) => None,
            Err(e) if e.errno() == libc::EINVAL => None,
            Err(e) => {
                eprintln!(
                    "\r\nowvmm: vCPU {}: KVM_KVMCLOCK_CTRL failed ({e}); the guest may report a soft lockup\r",
                    self.id
                );
                Some(e)
            }
        }
    }

    fn describe(&self) -> VcpuBrief {
        let regs = self.fd.get_regs().unwrap_or_default();
        let sregs = self.fd.get_sregs().unwrap_or_default();
        let mp = self.fd.get_mp_state().map(|m| m.mp_state).ok();
        let mp_state = match mp {
            Some(0) => "runnable",
            Some(1) => "uninitialized (waiting for INIT/SIPI)",
            Some(2) => "init-received",
            Some(3) => "halted",
            Some(4) => "sipi-received",
            Some(_) => "other",
            None => "unknown",
        };
        VcpuBrief {
            vcpu: self.id,
            rip: regs.rip,
            cpl: sregs.cs.dpl,
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            rflags: regs.rflags,
            mp_state: mp_state.into(),
        }
    }

    fn inject_call(&self, rip: u64, rdi: u64, idle_only: bool) -> Result<(), String> {
        const X86_EFLAGS_IF: u64 = 1 << 9;
        const KVM_MP_STATE_HALTED: u32 = 3;
        let sregs = self.fd.get_sregs().map_err(|e| e.to_string())?;
        if sregs.cs.dpl != 0 {
            return Err("in user mode".into());
        }
        if idle_only {
            let mp = self.fd.get_mp_state().map_err(|e| e.to_string())?;
            if mp.mp_state != KVM_MP_STATE_HALTED {
                return Err("not idle".into());
            }
        }
        let mut regs = self.fd.get_regs().map_err(|e| e.to_string())?;
        regs.rip = rip;
        regs.rdi = rdi;
        regs.rax = 0; // no vector registers for a variadic call
                      // As if just called: the stack 16-byte aligned before the (never used) return
                      // address, below whatever the interrupted code had on it.
        regs.rsp = (regs.rsp.wrapping_sub(256) & !0xf).wrapping_sub(8);
        regs.rflags &= !X86_EFLAGS_IF;
        self.fd.set_regs(&regs).map_err(|e| e.to_string())?;
        // A vCPU caught in `hlt` stays halted (and, with interrupts off, forever) unless
        // it is made runnable.
        let runnable = kvm_mp_state { mp_state: 0 };
        self.fd.set_mp_state(runnable).map_err(|e| e.to_string())
    }

    fn dead_halted(&self) -> bool {
        const KVM_MP_STATE_HALTED: u32 = 3;
        const X86_EFLAGS_IF: u64 = 1 << 9;
        let halted = self
            .fd
            .get_mp_state()
            .map(|m| m.mp_state == KVM_MP_STATE_HALTED)
            .unwrap_or(false);
        let if_off = self
            .fd
            .get_regs()
            .map(|r| r.rflags & X86_EFLAGS_IF == 0)
            .unwrap_or(false);
        halted && if_off
    }

    /// Runs guest code until one exit is handled; returns a fatal event if the guest
    /// cannot go on.
    fn run_once(&mut self) -> Option<VcpuEvent> {
        let result = self.fd.run();
        let fault = |kind: &str, detail: String| (kind.to_string(), detail);
        let failed = match result {
            Ok(VcpuExit::IoIn(port, data)) => {
                self.bus.read(port, data);
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                self.bus.write(port, data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Hlt) => None,
            Ok(VcpuExit::Shutdown) => return Some(VcpuEvent::Shutdown(self.id)),
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the
                // active member of the union.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = usize::try_from(internal.ndata)
                    .unwrap_or(0)
                    .min(internal.data.len());
                let data: Vec<String> = internal.data[..n]
                    .iter()
                    .map(|d| format!("{d:#x}"))
                    .collect();
                let kind = if internal.suberror == 1 {
                    "emulation-failure"
                } else {
                    "internal-error"
                };
                Some(fault(
                    kind,
                    format!("suberror {} data [{}]", internal.suberror, data.join(", ")),
                ))
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(fault(
                "entry-failure",
                format!("hardware reason {reason:#x} on host cpu {cpu}"),
            )),
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                Some(fault("system-event", format!("type {kind}")))
            }
            Ok(other) => Some(fault("unexpected-exit", format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR => {
                self.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) if e.errno() == libc::EAGAIN => None,
            Err(e) => Some(fault("kvm-run-error", e.to_string())),
        };
        let (kind, detail) = failed?;
        let regs = self.fd.get_regs().unwrap_or_default();
        let sregs = self.fd.get_sregs().unwrap_or_default();
        Some(VcpuEvent::Fault(FaultInfo {
            vcpu: self.id,
            kind,
            rip: regs.rip,
            cpl: sregs.cs.dpl,
            cr3: sregs.cr3,
            detail,
        }))
    }

    fn kvm<T>(&self, what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, VcpuError> {
        r.map_err(|source| VcpuError::Kvm {
            id: self.id,
            what,
            source,
        })
    }

    /// Reads the vCPU's state, in the order Firecracker uses: `KVM_GET_MP_STATE` first
    /// (it lets KVM accept pending INIT/SIPI events, which changes the registers and the
    /// LAPIC), the LAPIC late (reading it may update it), the pending events last.
    fn save_state(&self) -> Result<VcpuState, VcpuError> {
        let fd = &self.fd;
        let mp_state = self.kvm("GET_MP_STATE", fd.get_mp_state())?;
        let regs = self.kvm("GET_REGS", fd.get_regs())?;
        let sregs = self.kvm("GET_SREGS", fd.get_sregs())?;
        let (xsave, xsave_extra) = match crate::vstate::vm::xsave2_size() {
            Some(size) => self.kvm("GET_XSAVE2", get_xsave2(fd, size))?,
            None => (self.kvm("GET_XSAVE", fd.get_xsave())?, Vec::new()),
        };
        let xcrs = self.kvm("GET_XCRS", fd.get_xcrs())?;
        let debugregs = self.kvm("GET_DEBUGREGS", fd.get_debug_regs())?;
        let lapic = self.kvm("GET_LAPIC", fd.get_lapic())?;
        let msrs = self.kvm("GET_MSRS", read_msrs(fd, &crate::vstate::vm::msr_indices()))?;
        let events = self.kvm("GET_VCPU_EVENTS", fd.get_vcpu_events())?;
        Ok(VcpuState {
            cpuid: self.cpuid.clone(),
            mp_state,
            regs,
            sregs,
            xsave,
            xsave_extra,
            xcrs,
            debugregs,
            lapic,
            msrs,
            events,
        })
    }
}

/// The number of 32-bit words past the first 4 KiB in an XSAVE area of `size` bytes.
fn xsave_extra_words(size: usize) -> usize {
    size.saturating_sub(std::mem::size_of::<kvm_xsave>())
        .div_ceil(std::mem::size_of::<u32>())
}

/// `KVM_GET_XSAVE2` into a buffer of `size` bytes (what `KVM_CAP_XSAVE2` reported): the
/// first 4 KiB and the words past them.
fn get_xsave2(fd: &VcpuFd, size: usize) -> Result<(kvm_xsave, Vec<u32>), kvm_ioctls::Error> {
    let mut x =
        Xsave::new(xsave_extra_words(size)).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
    // SAFETY: `x` holds 4 KiB plus enough words for `size` bytes, the size KVM_CAP_XSAVE2
    // reported for this process; KVM_GET_XSAVE2 writes that many bytes (owvmm never enables
    // XSAVE features dynamically, so the size cannot have grown since).
    unsafe { fd.get_xsave2(&mut x) }?;
    let head = kvm_xsave {
        region: x.as_fam_struct_ref().xsave.region,
        ..Default::default()
    };
    Ok((head, x.as_slice().to_vec()))
}

/// Puts a saved XSAVE area back: with a buffer of the size this host's KVM reads
/// (`KVM_CAP_XSAVE2`; the saved area zero-padded to it), or the legacy 4 KiB
/// `KVM_SET_XSAVE` on a host without that capability.
fn set_xsave(
    fd: &VcpuFd,
    id: u8,
    s: &VcpuState,
    host_size: Option<usize>,
) -> Result<(), VcpuError> {
    let host_words = host_size.map_or(0, xsave_extra_words);
    if s.xsave_extra.len() > host_words {
        return Err(VcpuError::XsaveTooLarge {
            id,
            saved: s.xsave_bytes(),
            host: std::mem::size_of::<kvm_xsave>() + host_words * std::mem::size_of::<u32>(),
        });
    }
    let kvm = |what, source| VcpuError::Kvm { id, what, source };
    if host_size.is_none() {
        // SAFETY: without KVM_CAP_XSAVE2 (Linux before 5.17) KVM_SET_XSAVE reads exactly a
        // 4 KiB kvm_xsave, which `s.xsave` is.
        return unsafe { fd.set_xsave(&s.xsave) }.map_err(|e| kvm("SET_XSAVE", e));
    }
    let mut extra = s.xsave_extra.clone();
    extra.resize(host_words, 0);
    let mut x = Xsave::from_entries(&extra).map_err(|_| VcpuError::XsaveTooLarge {
        id,
        saved: s.xsave_bytes(),
        host: std::mem::size_of::<kvm_xsave>() + host_words * std::mem::size_of::<u32>(),
    })?;
    // SAFETY: only the fixed 4 KiB region is written, not the length of the array behind it.
    unsafe { x.as_mut_fam_struct() }.xsave.region = s.xsave.region;
    // SAFETY: `x` holds 4 KiB plus the words of the size KVM_CAP_XSAVE2 reported for this
    // process, which is what KVM_SET_XSAVE reads (owvmm never enables XSAVE features
    // dynamically, so the size cannot have grown since).
    unsafe { fd.set_xsave2(&x) }.map_err(|e| kvm("SET_XSAVE2", e))
}

/// Reads the given MSRs, skipping any this KVM refuses (it stops at the first it cannot
/// read, so the rest are read one batch at a time past it).
pub fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, kvm_ioctls::Error> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        let n = fd.get_msrs(&mut msrs)?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(rest.len())]);
        // Skip the one that stopped the batch.
        rest = rest.get(n + 1..).unwrap_or(&[]);
    }
    Ok(out)
}

/// Puts a saved state back into a vCPU, in Firecracker's order: CPUID first (it decides
/// which MSRs and XSAVE features exist), the multiprocessing state, registers, XSAVE, LAPIC
/// before the MSRs (the TSC deadline MSR needs it), the pending events last.
///
/// `current_cpuid` is the CPUID the vCPU already has (None for a fresh vCPU): when it is the
/// saved one it is left alone (KVM refuses to change the CPUID of a vCPU that has run);
/// `xsave2_size` is what `KVM_CAP_XSAVE2` reports on this host (None: not offered).
pub fn restore_state(
    fd: &VcpuFd,
    id: u8,
    s: &VcpuState,
    current_cpuid: Option<&[kvm_cpuid_entry2]>,
    xsave2_size: Option<usize>,
) -> Result<(), VcpuError> {
    let kvm = |what, r: Result<(), kvm_ioctls::Error>| {
        r.map_err(|source| VcpuError::Kvm { id, what, source })
    };
    if current_cpuid != Some(s.cpuid.as_slice()) {
        let cpuid = CpuId::from_entries(&s.cpuid).map_err(|_| VcpuError::TooMany {
            id,
            what: "CPUID entries",
            count: s.cpuid.len(),
        })?;
        kvm("SET_CPUID2", fd.set_cpuid2(&cpuid))?;
    }
    kvm("SET_MP_STATE", fd.set_mp_state(s.mp_state))?;
    kvm("SET_REGS", fd.set_regs(&s.regs))?;
    kvm("SET_SREGS", fd.set_sregs(&s.sregs))?;
    set_xsave(fd, id, s, xsave2_size)?;
    kvm("SET_XCRS", fd.set_xcrs(&s.xcrs))?;
    kvm("SET_DEBUGREGS", fd.set_debug_regs(&s.debugregs))?;
    kvm("SET_LAPIC", fd.set_lapic(&s.lapic))?;
    let msrs = Msrs::from_entries(&s.msrs).map_err(|_| VcpuError::TooMany {
        id,
        what: "MSRs",
        count: s.msrs.len(),
    })?;
    let set = fd.set_msrs(&msrs).map_err(|source| VcpuError::Kvm {
        id,
        what: "SET_MSRS",
        source,
    })?;
    if set != s.msrs.len() {
        return Err(VcpuError::MsrRefused {
            id,
            index: s.msrs.get(set).map(|e| e.index).unwrap_or(0),
            set,
            total: s.msrs.len(),
        });
    }
    kvm("SET_VCPU_EVENTS", fd.set_vcpu_events(&s.events))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type FakeVcpu = (
        VcpuHandle,
        Receiver<Numbered<VcpuRequest>>,
        Sender<Numbered<VcpuResponse>>,
    );

    /// A handle whose "vCPU thread" is the test itself.
    fn fake(timeout: Duration) -> FakeVcpu {
        let (req_tx, req_rx) = channel();
        let (resp_tx, resp_rx) = channel();
        let h = VcpuHandle {
            id: 7,
            tx: req_tx,
            rx: resp_rx,
            thread: None,
            next_seq: AtomicU64::new(0),
            timeout,
        };
        (h, req_rx, resp_tx)
    }

    #[test]
    fn a_late_answer_is_not_taken_for_the_next_request() {
        let (h, req_rx, resp_tx) = fake(Duration::from_millis(200));
        // A slow vCPU: it answers the first request only once the second has come, that is
        // after the first timed out; the late answer is queued ahead of the right one.
        let slow = std::thread::spawn(move || {
            let (first, r) = req_rx.recv().expect("first request");
            assert!(matches!(r, VcpuRequest::ProbeHalted));
            let (second, r) = req_rx.recv().expect("second request");
            assert!(matches!(r, VcpuRequest::ProbeHalted));
            assert_ne!(first, second);
            resp_tx
                .send((first, VcpuResponse::Halted(true)))
                .expect("late answer");
            resp_tx
                .send((second, VcpuResponse::Halted(false)))
                .expect("answer");
        });
        assert!(matches!(
            h.request(VcpuRequest::ProbeHalted),
            Err(VcpuError::NoAnswer(7))
        ));
        assert!(matches!(
            h.request(VcpuRequest::ProbeHalted),
            Ok(VcpuResponse::Halted(false))
        ));
        slow.join().expect("responder");
    }

    #[test]
    fn a_late_answer_already_waiting_is_dropped_and_the_wait_goes_on() {
        let (h, req_rx, resp_tx) = fake(Duration::from_millis(100));
        assert!(h.request(VcpuRequest::Describe).is_err());
        let (first, _) = req_rx.recv().expect("first request");
        // The late answer arrives between the two requests.
        resp_tx
            .send((first, VcpuResponse::Paused))
            .expect("late answer");
        let slow = std::thread::spawn(move || {
            let (second, r) = req_rx.recv().expect("second request");
            assert!(matches!(r, VcpuRequest::Pause));
            std::thread::sleep(Duration::from_millis(20));
            resp_tx
                .send((second, VcpuResponse::Injected))
                .expect("answer");
            // Keep the channel open until the handle is done.
            req_rx.recv().ok();
        });
        assert!(matches!(
            h.request(VcpuRequest::Pause),
            Ok(VcpuResponse::Injected)
        ));
        drop(h);
        slow.join().expect("responder");
    }

    #[test]
    fn refusals_and_a_vanished_thread_are_errors() {
        let (h, req_rx, resp_tx) = fake(Duration::from_secs(5));
        let t = std::thread::spawn(move || {
            let (seq, _) = req_rx.recv().expect("request");
            resp_tx
                .send((seq, VcpuResponse::Error("not paused".into())))
                .expect("answer");
            // Then the thread ends: both channel ends go away.
        });
        let e = h.request(VcpuRequest::SaveState).expect_err("refused");
        assert!(matches!(e, VcpuError::Refused { id: 7, .. }));
        t.join().expect("responder");
        let t0 = Instant::now();
        assert!(matches!(
            h.request(VcpuRequest::Describe),
            Err(VcpuError::NoAnswer(7))
        ));
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "no wait for a gone thread"
        );
    }

    /// A vCPU on /dev/kvm in its boot state at a `hlt`, and the CPUID set on it.
    fn kvm_vcpu(
        kvm: &crate::vstate::vm::KvmContext,
    ) -> (kvm_ioctls::VmFd, GuestMemoryMmap, VcpuFd, CpuId) {
        use crate::arch::regs;
        let mem = crate::memory::anonymous(4 << 20).expect("memory");
        let vm = kvm.create_vm(&mem).expect("vm");
        let fd = vm.create_vcpu(0).expect("vcpu");
        let cpuid = regs::setup_cpuid(&fd, &kvm.cpuid, 0, 1).expect("cpuid");
        regs::setup_msrs(&fd).expect("msrs");
        mem.write_obj(0xf4u8, GuestAddress(0x10_0000)).expect("hlt");
        regs::setup_regs(&fd, 0x10_0000).expect("regs");
        regs::setup_sregs(&mem, &fd).expect("sregs");
        regs::setup_fpu(&fd).expect("fpu");
        regs::setup_lapic(&fd).expect("lapic");
        (vm, mem, fd, cpuid)
    }

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    /// Saves a vCPU through its thread and puts the state into a fresh vCPU of another VM:
    /// what a snapshot and a restore do, without a guest kernel.
    #[test]
    fn kvm_state_round_trip_keeps_cpuid_xsave_and_registers() {
        let Ok(kvm) = crate::vstate::vm::KvmContext::open() else {
            eprintln!("no usable /dev/kvm: skipped");
            return;
        };
        let (_vm, _mem, fd, booted) = kvm_vcpu(&kvm);
        let booted_cpuid = booted.as_slice().to_vec();
        let (etx, _erx) = channel();
        let evt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let v = Vcpu::new(
            0,
            fd,
            booted_cpuid.clone(),
            Arc::new(PioBus::default()),
            Arc::new(MmioBus::default()),
            etx,
            evt,
        );
        let h = v.start(true).expect("start");
        // Resuming from a pause tells kvmclock (the guest has none: EINVAL, ignored).
        match h.request(VcpuRequest::Resume) {
            Ok(VcpuResponse::Resumed { kvmclock_error }) => {
                assert!(kvmclock_error.is_none(), "{kvmclock_error:?}")
            }
            other => panic!("resume: {other:?}"),
        }
        assert!(matches!(
            h.request(VcpuRequest::Pause),
            Ok(VcpuResponse::Paused)
        ));
        let mut st = match h.request(VcpuRequest::SaveState) {
            Ok(VcpuResponse::State(s)) => *s,
            other => panic!("save: {other:?}"),
        };
        h.finish();
        eprintln!(
            "KVM_CAP_XSAVE2: {:?}, saved {st:?}",
            crate::vstate::vm::xsave2_size()
        );
        // The CPUID set at boot, not KVM_GET_CPUID2's (the host CPU's on kvm_pvm).
        assert_eq!(st.cpuid, booted_cpuid);
        crate::arch::regs::check_cpuid(kvm.cpuid.as_slice(), &st.cpuid)
            .expect("a state saved here restores here");
        assert_eq!(
            st.xsave_bytes(),
            crate::vstate::vm::xsave2_size().map_or(4096, |n| n.max(4096))
        );
        st.regs.rbx = 0x1234_5678;
        let (_vm2, _mem2, fd2, _) = kvm_vcpu(&kvm);
        // A vCPU set up with other CPUID (not yet run) gets the saved one.
        let other = CpuId::from_entries(&st.cpuid[..1]).expect("cpuid");
        fd2.set_cpuid2(&other).expect("other cpuid");
        let xsave2 = crate::vstate::vm::xsave2_size();
        restore_state(&fd2, 0, &st, Some(other.as_slice()), xsave2).expect("restore");
        let regs = fd2.get_regs().expect("regs");
        assert_eq!((regs.rbx, regs.rip), (0x1234_5678, st.regs.rip));
        let (x, extra) = match crate::vstate::vm::xsave2_size() {
            Some(n) => get_xsave2(&fd2, n).expect("xsave2"),
            None => (fd2.get_xsave().expect("xsave"), Vec::new()),
        };
        assert_eq!(&x.region[..], &st.xsave.region[..]);
        assert_eq!(extra, st.xsave_extra);
        assert_eq!(
            fd2.get_mp_state().expect("mp").mp_state,
            st.mp_state.mp_state
        );
        // An XSAVE area larger than the host's is refused, not cut.
        let host_words = crate::vstate::vm::xsave2_size().map_or(0, xsave_extra_words);
        st.xsave_extra = vec![0; host_words + 1];
        assert!(matches!(
            restore_state(&fd2, 0, &st, None, xsave2),
            Err(VcpuError::XsaveTooLarge { .. })
        ));
    }

    #[test]
    fn xsave_sizes() {
        assert_eq!(xsave_extra_words(0), 0);
        assert_eq!(xsave_extra_words(4096), 0);
        assert_eq!(xsave_extra_words(4097), 1);
        assert_eq!(xsave_extra_words(11008), (11008 - 4096) / 4);
    }
}
