//! The microreboot as one state machine: [`Recovery`] owns the crash kernel's standby, the
//! dead guest's memory (the old world), the manifest and the stage a recovery is in; every
//! transition is a method here.
//!
//! ```text
//!  crash() ── freeze fails ──────────────────────────────▶ recovery-failed (stage freeze)
//!    │ vCPUs paused, registers captured (event loop, ms)
//!    ▼
//!  Extracting ── extraction thread: dump, inspect, manifest, under one Limits budget
//!    │ extraction-done (woken through `wake`)
//!    ├── --on-crash exit/pause ─────────────────────────▶ exit 4 / frozen
//!    ▼
//!  WaitingStandby ── standby still being prepared (polled each tick, never blocks)
//!    ▼
//!  CrashKernel ── standby loaded, old RAM in the window, manifest slot; agent booting
//!    ▼ agent's clock set → `resurrect` sent
//!  Resurrecting ── agent answers `resurrect-done` ─────▶ morph: recovery-done
//!       └── time limit / crash of the crash kernel ─────▶ recovery-failed
//! ```
//! Nothing slow runs on the event loop: `status` and `stop` are answered at every stage.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use owvmm_recovery::budget::{Budgeted, Limits};
use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::manifest::{self, CpuAtCrash, Manifest};
use super::{GuestMem, KernelInfo, State, Vmm, VmmError};
use crate::agent::AgentState;
use crate::arch::layout::{
    old_world_window, MANIFEST_BASE, MANIFEST_MAX, MANIFEST_SLOT, WINDOW_FIRST_SLOT,
};
use crate::crash::{CrashCause, OnCrash, PANIC_CPU_INVALID};
use crate::devices::bus::lock;
use crate::snapshot::{self, SnapshotState};
use crate::standby::StandbyError;
use crate::vstate::vcpu::{VcpuRequest, VcpuResponse};
use crate::vstate::vm::set_slots;
use ow_agent::proto::VmmMsg;

/// How long the crash kernel's agent may take to resurrect the processes: a base, plus a
/// time per MiB of memory to copy (each new page is zeroed by the guest kernel first, about
/// 2 ms per page where guest kernel code is emulated, and over 40 ms when several guests
/// share the host's cores). Its own crash is detected at once; this only bounds a stuck one.
const RESURRECT_BASE: Duration = Duration::from_secs(600);
const RESURRECT_PER_MIB: Duration = Duration::from_secs(20);

/// Errors of a microreboot.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Neither `--standby` nor a prepared one (and why, when one was refused).
    #[error("no crash-kernel standby{}", .0.as_deref().map(|w| format!(": {w}")).unwrap_or_default())]
    NoStandby(Option<String>),
    /// Preparing the standby failed.
    #[error("no standby")]
    Prepare(#[source] StandbyError),
    /// The standby preparation thread died.
    #[error("the standby preparation panicked")]
    PreparePanicked,
    /// The standby is of another machine shape.
    #[error("the standby has {standby_mib} MiB and {standby_vcpus} vCPUs, the guest {mib} MiB and {vcpus}")]
    Shape {
        /// The standby's memory.
        standby_mib: u64,
        /// The standby's vCPUs.
        standby_vcpus: usize,
        /// The guest's memory.
        mib: u64,
        /// The guest's vCPUs.
        vcpus: usize,
    },
    /// The standby runs another kernel than the guest.
    #[error("the standby {dir} runs another kernel ({standby:?}) than the guest ({guest:?})")]
    OtherKernel {
        /// The standby.
        dir: PathBuf,
        /// Its banner.
        standby: String,
        /// The guest's banner.
        guest: String,
    },
    /// The standby snapshot cannot be read.
    #[error("cannot load the standby")]
    Snapshot(#[source] snapshot::SnapshotError),
    /// Guest memory for the crash kernel or the manifest.
    #[error("cannot map memory for the crash kernel")]
    Memory(#[source] crate::memory::MemoryError),
    /// KVM refused a memory slot or the VM state.
    #[error("KVM refused the crash kernel's machine state")]
    Vm(#[source] crate::vstate::vm::VmError),
    /// A vCPU failed.
    #[error("a vCPU failed during the microreboot")]
    Vcpu(#[source] crate::vstate::vcpu::VcpuError),
    /// A vCPU answered something else than asked.
    #[error("vCPU {id} answered {answer} to restore")]
    VcpuAnswer {
        /// vCPU index.
        id: u8,
        /// What it said.
        answer: String,
    },
    /// The crash kernel's vCPUs could not be resumed.
    #[error("cannot resume the crash kernel")]
    Resume(#[source] Box<VmmError>),
    /// A serial port's state could not be loaded.
    #[error("cannot load the standby's serial ports")]
    Serial(#[source] crate::devices::serial::SerialError),
    /// The manifest does not fit its slot.
    #[error("the manifest of {0} bytes is larger than its slot")]
    ManifestTooLarge(u64),
    /// The manifest could not be written into its memory.
    #[error("cannot write the manifest")]
    ManifestWrite(#[source] vm_memory::GuestMemoryError),
}

/// Where the crash kernel's standby comes from.
pub(super) enum Standby {
    /// None can be had (`--on-crash` is not microreboot, or preparing it failed).
    None(Option<String>),
    /// Ready in this directory.
    Ready(PathBuf),
    /// Being prepared in the background.
    Preparing(JoinHandle<Result<PathBuf, StandbyError>>),
}

/// What the extraction thread hands back.
struct Extracted {
    /// Summary for the crash record and `extraction-done`; None without BTF or System.map.
    summary: Option<Value>,
    /// The manifest, for a microreboot.
    manifest: Option<Manifest>,
    /// `crash-dump-written` or `crash-dump-failed`, with its fields.
    dump: Option<(&'static str, Value)>,
    ms: f64,
}

/// The stage a recovery is in.
enum Stage {
    /// The extraction thread reads the dead kernel (vCPUs paused).
    Extracting {
        rx: Receiver<Extracted>,
        thread: JoinHandle<()>,
    },
    /// Waiting for the standby, still being prepared.
    WaitingStandby { since: Instant },
    /// The crash kernel runs; its agent has not yet been asked to resurrect.
    CrashKernel,
    /// `resurrect` went to the crash kernel's agent.
    Resurrecting { sent: Instant, limit: Duration },
}

impl Stage {
    fn name(&self) -> &'static str {
        match self {
            Stage::Extracting { .. } => "extracting",
            Stage::WaitingStandby { .. } => "waiting-for-standby",
            Stage::CrashKernel => "crash-kernel-start",
            Stage::Resurrecting { .. } => "resurrection",
        }
    }
}

/// One recovery in progress.
struct Attempt {
    stage: Stage,
    detected: Instant,
    cause: String,
    /// Detection to frozen and captured.
    freeze_ms: f64,
    /// Reading the dead kernel and building the manifest.
    extract_ms: f64,
    /// Standby loaded and running.
    kernel_ms: f64,
    manifest: Option<Manifest>,
}

/// The microreboot machinery of a VMM: its standby, and the recovery in progress.
pub(super) struct Recovery {
    standby: Standby,
    /// The banner of the kernel the guest runs, to check a standby against.
    banner: Option<String>,
    /// Budget of one extraction.
    limits: Limits,
    attempt: Option<Attempt>,
    /// The dead guest's memory while the crash kernel runs.
    old_world: Option<GuestMemoryMmap>,
    /// The manifest's own memory while it is mapped for the crash kernel.
    manifest_mem: Option<GuestMemoryMmap>,
    /// Written by the extraction thread when it is done.
    wake: EventFd,
}

impl Recovery {
    pub(super) fn new(standby: Standby, banner: Option<String>, wake: EventFd) -> Self {
        Recovery {
            standby,
            banner,
            limits: Limits::default(),
            attempt: None,
            old_world: None,
            manifest_mem: None,
            wake,
        }
    }

    /// The eventfd the extraction thread writes when it is done.
    pub(super) fn wake(&self) -> &EventFd {
        &self.wake
    }

    /// The stage of the recovery in progress, for `status`.
    pub(super) fn stage(&self) -> Option<&'static str> {
        self.attempt.as_ref().map(|a| a.stage.name())
    }

    /// Is the crash kernel's agent resurrecting (busy, maybe silent, for minutes)?
    pub(super) fn resurrecting(&self) -> bool {
        matches!(
            self.attempt.as_ref().map(|a| &a.stage),
            Some(Stage::Resurrecting { .. })
        )
    }

    /// Is the dead kernel's memory being read (the guest must stay frozen)?
    pub(super) fn extracting(&self) -> bool {
        matches!(
            self.attempt.as_ref().map(|a| &a.stage),
            Some(Stage::Extracting { .. } | Stage::WaitingStandby { .. })
        )
    }
}

/// Reads the banner (`linux_banner`, with the build number and time) of the kernel in
/// `mem`, through the kernel's own layout (KASLR slide, `phys_base`).
pub(super) fn banner_in(mem: &GuestMemoryMmap, info: &KernelInfo) -> Option<String> {
    let btf = info.types();
    let mem = GuestMem(mem);
    let k = owvmm_recovery::kernel::Kernel::new(&mem, &info.symbols, btf).ok()?;
    if !k.image_found() {
        return None;
    }
    let mut buf = [0u8; 256];
    k.read_bytes(k.symbol("linux_banner").ok()?, &mut buf)
        .ok()?;
    banner_text(&buf)
}

fn banner_text(buf: &[u8]) -> Option<String> {
    let end = buf.iter().position(|&b| b == 0 || b == b'\n')?;
    let s = std::str::from_utf8(&buf[..end]).ok()?;
    s.starts_with("Linux version ").then(|| s.to_owned())
}

/// The banner of the kernel in a standby snapshot (its memory mapped copy-on-write, only
/// the pages read are touched).
pub(super) fn standby_banner(
    dir: &std::path::Path,
    info: &KernelInfo,
) -> Result<Option<String>, RecoveryError> {
    let (st, file) = snapshot::read(dir).map_err(RecoveryError::Snapshot)?;
    let mem = crate::memory::from_file(&file, st.memory_bytes).map_err(RecoveryError::Memory)?;
    Ok(banner_in(&mem, info))
}

/// Checks that the standby in `dir` runs the kernel whose banner is `guest`.
fn check_standby_kernel(
    dir: &std::path::Path,
    info: Option<&KernelInfo>,
    guest: Option<&str>,
) -> Result<(), RecoveryError> {
    let (Some(info), Some(guest)) = (info, guest) else {
        return Ok(());
    };
    match standby_banner(dir, info)? {
        Some(b) if b == guest => Ok(()),
        other => Err(RecoveryError::OtherKernel {
            dir: dir.into(),
            standby: other.unwrap_or_else(|| "no Linux banner".into()),
            guest: guest.into(),
        }),
    }
}

/// Builds the standby source at start-up: `--standby DIR` or the cached one if it runs the
/// guest's kernel, else one prepared in the background (`spec`).
pub(super) fn choose_standby(
    given: Option<PathBuf>,
    spec: Option<&crate::standby::StandbySpec>,
    info: Option<&KernelInfo>,
    banner: Option<&str>,
) -> Standby {
    let mut why = None;
    let cached = spec.and_then(crate::standby::StandbySpec::cached);
    for dir in given.into_iter().chain(cached) {
        match check_standby_kernel(&dir, info, banner) {
            Ok(()) => return Standby::Ready(dir),
            Err(e) => {
                let msg = crate::error_chain(&e);
                eprintln!("owvmm: {msg}; preparing a new one\r");
                if spec.is_some_and(|s| s.dir().ok().as_deref() == Some(dir.as_path())) {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                why = Some(msg);
            }
        }
    }
    match spec {
        Some(spec) => {
            let spec = spec.clone();
            Standby::Preparing(std::thread::spawn(move || {
                spec.prepare(&mut crate::standby::log_stderr)
            }))
        }
        None => Standby::None(why),
    }
}

/// The extraction thread's work: an optional crash dump, then the dead kernel read under
/// one budget, and the manifest.
#[allow(clippy::too_many_arguments)]
fn extract(
    mem: &GuestMemoryMmap,
    info: Option<&KernelInfo>,
    cpus: &[CpuAtCrash],
    culprit_cpu: Option<u32>,
    want_manifest: bool,
    dump: Option<(PathBuf, SnapshotState)>,
    limits: Limits,
) -> Extracted {
    let t0 = Instant::now();
    let dump = dump.map(|(dir, st)| {
        let t1 = Instant::now();
        match snapshot::write(&dir, &st, mem) {
            Ok(bytes) => (
                "crash-dump-written",
                json!({ "dir": dir.display().to_string(), "bytes": bytes, "ms": t1.elapsed().as_secs_f64() * 1000.0 }),
            ),
            Err(e) => (
                "crash-dump-failed",
                json!({ "dir": dir.display().to_string(), "error": crate::error_chain(&e) }),
            ),
        }
    });
    let (summary, manifest) = match info.and_then(|i| i.btf.as_ref().map(|b| (i, b))) {
        Some((info, btf)) => {
            let (s, m) = inspect(mem, info, btf, cpus, culprit_cpu, want_manifest, limits);
            (Some(s), m)
        }
        None => (None, None),
    };
    Extracted {
        summary,
        manifest,
        dump,
        ms: t0.elapsed().as_secs_f64() * 1000.0,
    }
}

fn inspect(
    mem: &GuestMemoryMmap,
    info: &KernelInfo,
    btf: &owvmm_recovery::btf::Btf,
    cpus: &[CpuAtCrash],
    culprit_cpu: Option<u32>,
    want_manifest: bool,
    limits: Limits,
) -> (Value, Option<Manifest>) {
    let t0 = Instant::now();
    let raw = GuestMem(mem);
    let mem = Budgeted::new(&raw, limits);
    // One kernel view serves the report and the manifest (the types were parsed once,
    // when the kernel was loaded).
    let kernel = owvmm_recovery::kernel::Kernel::new(&mem, &info.symbols, btf)
        .map_err(|e| format!("kernel: {}", crate::error_chain(&e)));
    let mut report = owvmm_recovery::Report::default();
    match &kernel {
        Ok(k) => owvmm_recovery::inspect::inspect_kernel(k, &mut report),
        Err(e) => report.problems.push(e.clone()),
    }
    let processes: Vec<Value> = report
        .user_tasks()
        .filter(|t| t.is_leader())
        .map(|t| {
            let mm = report.mm_of(t);
            let threads = report.user_tasks().filter(|x| x.tgid == t.tgid).count();
            json!({
                "pid": t.pid,
                "comm": t.comm,
                "threads": threads,
                "vmas": mm.map(|m| m.vmas.len()),
                "exe": mm.and_then(|m| m.exe.clone()),
                "cmdline": mm.map(|m| m.cmdline.join(" ")),
                "syscall": t.regs.as_ref().and_then(|r| r.syscall()),
            })
        })
        .collect();
    let inspect_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let manifest =
        want_manifest.then(|| manifest::build(kernel.as_ref(), &report, cpus, culprit_cpu));
    if let Some(why) = mem.exhausted() {
        report.problems.push(why.to_string());
    }
    let mut summary = json!({
        "ms": t0.elapsed().as_secs_f64() * 1000.0,
        "inspect_ms": inspect_ms,
        "read_mib": mem.bytes_read() >> 20,
        "budget_exhausted": mem.exhausted().map(|e| e.to_string()),
        "tasks": report.tasks.len(),
        "processes": processes,
        "problems": report.problems,
    });
    if let Some(m) = &manifest {
        summary["manifest"] = json!({
            "bytes": m.text.len(),
            "processes": m.included,
            "excluded": m.excluded,
            "copy_bytes": m.copy_bytes,
        });
    }
    (summary, manifest)
}

impl Vmm {
    /// A crash was detected: freeze and capture on the loop (milliseconds), then read the
    /// dead kernel on the extraction thread.
    /// Drops the pvpanic events of a kernel that was just frozen.
    fn forget_pvpanic(&mut self) {
        let _ = self.pvpanic_evt.read();
        self.pvpanic.clear();
    }

    pub(super) fn crash(&mut self, cause: CrashCause) {
        if self.crashed || self.exit.is_some() {
            return;
        }
        self.crashed = true;
        let t0 = Instant::now();
        let text = cause.describe();
        eprintln!("\r\nowvmm: guest kernel crashed: {text}\r");
        let mut ev = serde_json::to_value(&cause).unwrap_or_default();
        ev["source"] = json!(cause.source());
        ev["description"] = json!(text);
        self.events.publish("crash-detected", ev.clone());
        if let Some(a) = self.recovery.attempt.take() {
            // The crash kernel itself died before the processes were back: say so, keep the
            // VMM up and the guest frozen for inspection.
            let _ = self.pause_all();
            self.state = State::Paused;
            self.forget_pvpanic();
            self.unmap_old_world();
            ev["stage"] = json!(a.stage.name());
            eprintln!(
                "\r\nowvmm: the crash kernel failed during recovery ({text}); guest frozen\r"
            );
            self.events.publish("recovery-failed", ev.clone());
            ev["uptime_ms"] = json!(self.uptime_ms());
            self.crashes.push(ev);
            return;
        }
        let frozen = self.pause_all();
        self.state = State::Paused;
        // A reset the dying kernel requested before it was frozen belongs to this crash, not
        // to whatever runs next; so does a pvpanic event.
        let _ = self.reset_evt.read();
        self.forget_pvpanic();
        let freeze_ms = t0.elapsed().as_secs_f64() * 1000.0;
        if let Some(req) = self.crash_requested.take() {
            ev["detect_ms"] = json!(req.elapsed().as_secs_f64() * 1000.0 - freeze_ms);
        }
        ev["uptime_ms"] = json!(self.uptime_ms());
        let states = match frozen.and_then(|()| self.save_vcpus()) {
            Ok(s) => s,
            Err(e) => {
                // A vCPU that may still run could change the memory being read: stop here.
                let why = crate::error_chain(&e);
                eprintln!("\r\nowvmm: cannot freeze the guest ({why}); no recovery\r");
                ev["recovery_failed"] = json!({ "stage": "freeze", "error": why });
                self.crashes.push(ev);
                self.events.publish(
                    "recovery-failed",
                    json!({ "stage": "freeze", "error": why }),
                );
                if self.on_crash != OnCrash::Pause {
                    self.finish_with(super::ExitReason::GuestCrash(text));
                }
                return;
            }
        };
        let cpus: Vec<CpuAtCrash> = states.iter().map(CpuAtCrash::from_state).collect();
        let capture_ms = t0.elapsed().as_secs_f64() * 1000.0 - freeze_ms;
        self.events.publish(
            "guest-frozen",
            json!({ "freeze_ms": freeze_ms, "capture_ms": capture_ms, "vcpus": states.len() }),
        );
        // A panic the guest raised itself came from the task running on the panicking CPU
        // (e.g. a write to /proc/sysrq-trigger); resurrected, it would do it again. A
        // panic `ctl crash` injected is nobody's fault.
        let culprit_cpu = match (&cause, ev.get("detect_ms")) {
            (CrashCause::Panic { .. }, None) => self
                .read_kernel_u32("panic_cpu")
                .filter(|&c| c != PANIC_CPU_INVALID),
            _ => None,
        };
        let dump = match &self.crash_dump {
            Some(dir) => match self.snapshot_state(states) {
                Ok(st) => Some((dir.clone(), st)),
                Err(e) => {
                    self.events.publish(
                        "crash-dump-failed",
                        json!({ "dir": dir.display().to_string(), "error": crate::error_chain(&e) }),
                    );
                    None
                }
            },
            None => None,
        };
        self.crashes.push(ev);
        let (tx, rx) = std::sync::mpsc::channel();
        let mem = self.mem.clone();
        let info = self.kernel_info.clone();
        let want_manifest = self.on_crash == OnCrash::Microreboot;
        let limits = self.recovery.limits;
        let wake = self.recovery.wake.try_clone();
        let thread = std::thread::Builder::new()
            .name("extract".into())
            .spawn(move || {
                let x = extract(
                    &mem,
                    info.as_deref(),
                    &cpus,
                    culprit_cpu,
                    want_manifest,
                    dump,
                    limits,
                );
                let _ = tx.send(x);
                if let Ok(w) = wake {
                    let _ = w.write(1);
                }
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let why = format!("cannot start the extraction thread: {e}");
                self.events.publish(
                    "recovery-failed",
                    json!({ "stage": "extraction", "error": why }),
                );
                self.finish_with(super::ExitReason::GuestCrash(text));
                return;
            }
        };
        self.recovery.attempt = Some(Attempt {
            stage: Stage::Extracting { rx, thread },
            detected: t0,
            cause: text,
            freeze_ms,
            extract_ms: 0.0,
            kernel_ms: 0.0,
            manifest: None,
        });
    }

    /// Drives the recovery in progress one step, where it can go on without waiting: called
    /// when the extraction thread is done and on every tick.
    pub(super) fn recovery_step(&mut self) {
        let Some(mut a) = self.recovery.attempt.take() else {
            return;
        };
        let next = match std::mem::replace(&mut a.stage, Stage::CrashKernel) {
            Stage::Extracting { rx, thread } => match rx.try_recv() {
                Ok(x) => {
                    let _ = thread.join();
                    self.extracted(&mut a, x);
                    if self.on_crash != OnCrash::Microreboot {
                        self.after_extraction_without_microreboot(&a);
                        return;
                    }
                    self.try_crash_kernel(&mut a)
                }
                Err(TryRecvError::Empty) => Some(Stage::Extracting { rx, thread }),
                Err(TryRecvError::Disconnected) => {
                    let _ = thread.join();
                    self.events.publish(
                        "extraction-failed",
                        json!({ "error": "the extraction thread panicked" }),
                    );
                    if self.on_crash != OnCrash::Microreboot {
                        self.after_extraction_without_microreboot(&a);
                        return;
                    }
                    // The crash kernel still starts; no process comes back.
                    self.try_crash_kernel(&mut a)
                }
            },
            Stage::WaitingStandby { since } => {
                if matches!(&self.recovery.standby, Standby::Preparing(j) if !j.is_finished()) {
                    Some(Stage::WaitingStandby { since })
                } else {
                    self.events.publish(
                        "standby-waited",
                        json!({ "ms": since.elapsed().as_secs_f64() * 1000.0 }),
                    );
                    self.try_crash_kernel(&mut a)
                }
            }
            Stage::CrashKernel => Some(self.send_resurrect(&a)),
            Stage::Resurrecting { sent, limit } => {
                let done = lock(&self.agent).resurrect_done;
                if let Some(done) = done {
                    self.morph(&a, Some((sent.elapsed().as_secs_f64() * 1000.0, done)));
                    return;
                }
                if sent.elapsed() > limit {
                    let secs = limit.as_secs();
                    self.events.publish(
                        "recovery-failed",
                        json!({ "stage": "resurrection", "error": format!("no answer from the crash kernel's agent in {secs} s") }),
                    );
                    self.morph(&a, None);
                    return;
                }
                Some(Stage::Resurrecting { sent, limit })
            }
        };
        if let Some(stage) = next {
            a.stage = stage;
            self.recovery.attempt = Some(a);
        }
    }

    /// Publishes what the extraction found and keeps the manifest.
    fn extracted(&mut self, a: &mut Attempt, x: Extracted) {
        if let Some((name, fields)) = x.dump {
            self.events.publish(name, fields);
        }
        a.extract_ms = x.ms;
        if let Some(m) = &x.manifest {
            if let Some(e) = &m.error {
                self.events
                    .publish("manifest-failed", json!({ "error": e }));
            }
        }
        a.manifest = x.manifest;
        if let Some(s) = x.summary {
            self.events.publish("extraction-done", s.clone());
            if let Some(last) = self.crashes.last_mut() {
                last["extraction"] = s;
            }
        }
    }

    fn after_extraction_without_microreboot(&mut self, a: &Attempt) {
        if self.on_crash == OnCrash::Exit {
            self.finish_with(super::ExitReason::GuestCrash(a.cause.clone()));
        } else {
            eprintln!("\r\nowvmm: guest frozen (--on-crash pause); inspect it with owvmm ctl, or stop it\r");
        }
    }

    /// Starts the crash kernel if the standby is there; waits for it if it is being
    /// prepared; fails the recovery otherwise. Returns the next stage.
    fn try_crash_kernel(&mut self, a: &mut Attempt) -> Option<Stage> {
        if let Standby::Preparing(job) = &self.recovery.standby {
            if !job.is_finished() {
                eprintln!(
                    "\r\nowvmm: waiting for the crash kernel's standby, still being prepared\r"
                );
                return Some(Stage::WaitingStandby {
                    since: Instant::now(),
                });
            }
        }
        match self.start_crash_kernel(a) {
            Ok(()) => Some(Stage::CrashKernel),
            Err(e) => {
                let why = crate::error_chain(&e);
                eprintln!("\r\nowvmm: microreboot failed: {why}\r");
                self.unmap_old_world();
                self.events
                    .publish("microreboot-failed", json!({ "error": why }));
                self.finish_with(super::ExitReason::GuestCrash(a.cause.clone()));
                None
            }
        }
    }

    /// The standby's directory, once it is ready (joins a finished preparation).
    fn standby_ready(&mut self) -> Result<PathBuf, RecoveryError> {
        let standby = std::mem::replace(&mut self.recovery.standby, Standby::None(None));
        let dir = match standby {
            Standby::Ready(d) => d,
            Standby::None(why) => return Err(RecoveryError::NoStandby(why)),
            Standby::Preparing(job) => job
                .join()
                .map_err(|_| RecoveryError::PreparePanicked)?
                .map_err(RecoveryError::Prepare)?,
        };
        check_standby_kernel(
            &dir,
            self.kernel_info.as_deref(),
            self.recovery.banner.as_deref(),
        )?;
        self.recovery.standby = Standby::Ready(dir.clone());
        Ok(dir)
    }

    /// Starts the crash kernel from the warm standby in place of the dead guest: its memory
    /// (mapped copy-on-write from the standby snapshot) replaces the guest's in the KVM
    /// memory slots, its vCPU, interrupt controller, clock and UART state is loaded, and it
    /// runs. The dead guest's memory is kept (`old_world`) until the recovery is done.
    fn start_crash_kernel(&mut self, a: &mut Attempt) -> Result<(), RecoveryError> {
        let dir = self.standby_ready()?;
        let t0 = Instant::now();
        let (st, file) = snapshot::read(&dir).map_err(RecoveryError::Snapshot)?;
        if st.machine.mem_mib != self.machine.mem_mib || st.vcpus.len() != self.vcpus.len() {
            return Err(RecoveryError::Shape {
                standby_mib: st.machine.mem_mib,
                standby_vcpus: st.vcpus.len(),
                mib: self.machine.mem_mib,
                vcpus: self.vcpus.len(),
            });
        }
        let new_mem =
            crate::memory::from_file(&file, st.memory_bytes).map_err(RecoveryError::Memory)?;
        let (window_base, _) = old_world_window(st.memory_bytes);
        crate::vstate::vm::set_memory(&self.vm, &self.mem, false).map_err(RecoveryError::Vm)?;
        crate::vstate::vm::set_memory(&self.vm, &new_mem, true).map_err(RecoveryError::Vm)?;
        let old = std::mem::replace(&mut self.mem, new_mem);
        // The crash kernel does not know the old kernel's virtio devices: stop them (their
        // I/O threads let go of the old memory) and hand them the new memory.
        for t in &self.virtio {
            lock(t).reset_with_memory(self.mem.clone());
        }
        set_slots(&self.vm, &old, WINDOW_FIRST_SLOT, window_base, true, true)
            .map_err(RecoveryError::Vm)?;
        self.recovery.old_world = Some(old);
        self.map_manifest(a.manifest.as_ref())?;
        crate::vstate::vm::restore_vm_state(&self.vm, &st.vm).map_err(RecoveryError::Vm)?;
        for (h, vs) in self.vcpus.iter().zip(st.vcpus) {
            match h
                .request(VcpuRequest::RestoreState(Box::new(vs)))
                .map_err(RecoveryError::Vcpu)?
            {
                VcpuResponse::Restored => {}
                other => {
                    return Err(RecoveryError::VcpuAnswer {
                        id: h.id,
                        answer: format!("{other:?}"),
                    })
                }
            }
        }
        if let [s1, s2] = st.serial.as_slice() {
            lock(&self.com1)
                .replace_state(s1)
                .map_err(RecoveryError::Serial)?;
            lock(&self.com2)
                .replace_state(s2)
                .map_err(RecoveryError::Serial)?;
        }
        *lock(&self.agent) = AgentState {
            ready: st.agent_ready,
            ..AgentState::default()
        };
        lock(&self.agent_in).clear();
        self.clock_synced = false;
        // From now on the running kernel is the standby's: read the next crash with its
        // symbols and types.
        if st.machine.kernel != self.machine.kernel {
            self.kernel_info = super::load_kernel_info(&st.machine.kernel).map(Arc::new);
            self.machine.kernel = st.machine.kernel.clone();
        }
        // The standby's kernel is in place and running.
        self.panic_cpu_armed = true;
        self.poweroff_since = None;
        self.crashed = false;
        self.resume_all()
            .map_err(|e| RecoveryError::Resume(Box::new(e)))?;
        a.kernel_ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.events.publish(
            "crash-kernel-running",
            json!({
                "standby": dir.display().to_string(),
                "start_ms": a.kernel_ms,
                "since_detect_ms": a.detected.elapsed().as_secs_f64() * 1000.0,
            }),
        );
        eprintln!(
            "\r\nowvmm: crash kernel running ({:.0} ms from its standby)\r",
            a.kernel_ms
        );
        Ok(())
    }

    /// Puts the manifest into its own memory slot for the crash kernel's agent.
    fn map_manifest(&mut self, m: Option<&Manifest>) -> Result<(), RecoveryError> {
        let Some(m) = m else {
            return Ok(());
        };
        let len = u64::try_from(m.text.len()).unwrap_or(u64::MAX);
        if len > MANIFEST_MAX {
            return Err(RecoveryError::ManifestTooLarge(len));
        }
        let size = len.div_ceil(4096).max(1) * 4096;
        let mem = crate::memory::anonymous(size).map_err(RecoveryError::Memory)?;
        mem.write_slice(m.text.as_bytes(), GuestAddress(0))
            .map_err(RecoveryError::ManifestWrite)?;
        set_slots(&self.vm, &mem, MANIFEST_SLOT, MANIFEST_BASE, true, true)
            .map_err(RecoveryError::Vm)?;
        self.recovery.manifest_mem = Some(mem);
        Ok(())
    }

    /// Removes the old-world window and the manifest from the guest and frees them.
    fn unmap_old_world(&mut self) {
        if let Some(old) = self.recovery.old_world.take() {
            let (base, _) = old_world_window(0);
            let _ = set_slots(&self.vm, &old, WINDOW_FIRST_SLOT, base, true, false);
        }
        if let Some(m) = self.recovery.manifest_mem.take() {
            let _ = set_slots(&self.vm, &m, MANIFEST_SLOT, MANIFEST_BASE, true, false);
        }
    }

    /// Once the crash kernel's agent answers (its clock is set), hands it the manifest; a
    /// crash kernel without a manifest goes straight to morph.
    fn send_resurrect(&mut self, a: &Attempt) -> Stage {
        if !lock(&self.agent).clock_set {
            return Stage::CrashKernel;
        }
        self.send_disks();
        let (Some(m), Some(old)) = (&a.manifest, &self.recovery.old_world) else {
            self.morph(a, None);
            return Stage::CrashKernel;
        };
        let old_bytes: u64 = vm_memory::GuestMemoryBackend::iter(old)
            .map(vm_memory::GuestMemoryRegion::len)
            .sum();
        let (window_gpa, window_len) = old_world_window(old_bytes);
        let msg = VmmMsg::Resurrect {
            manifest_gpa: MANIFEST_BASE,
            manifest_len: u64::try_from(m.text.len()).unwrap_or(u64::MAX),
            window_gpa,
            window_len,
        };
        eprintln!(
            "\r\nowvmm: crash kernel up; bringing back {} processes ({} MiB to copy)\r",
            m.included.len(),
            m.copy_bytes >> 20
        );
        lock(&self.agent).resurrect_done = None;
        self.send_agent(&msg);
        let copy_mib = u32::try_from(m.copy_bytes >> 20).unwrap_or(u32::MAX);
        Stage::Resurrecting {
            sent: Instant::now(),
            limit: RESURRECT_BASE.saturating_add(RESURRECT_PER_MIB.saturating_mul(copy_mib)),
        }
    }

    /// Asks the crash kernel's agent to probe and mount the user's disks, in order, and to
    /// bring the network interfaces up again, before anything is resurrected (the agent
    /// answers each before it reads the next request). The crash kernel booted without
    /// them, so it reads each disk afresh, after the crash, and replays its journal; the
    /// taps stayed open in the VMM.
    fn send_disks(&mut self) {
        for (i, d) in self.disks.clone().iter().enumerate() {
            let Some((base, irq)) = crate::devices::virtio::slot(i) else {
                continue;
            };
            self.send_agent(&VmmMsg::Disk {
                base,
                irq,
                id: crate::config::disk_id(i),
                read_only: d.read_only,
                dir: d.guest_dir.clone(),
            });
        }
        for (i, n) in self.nets.clone().iter().enumerate() {
            let Some((base, _)) = crate::devices::virtio::slot(self.disks.len() + i) else {
                continue;
            };
            let word = crate::config::net_word(n);
            self.send_agent(&VmmMsg::Net {
                base,
                spec: word.trim_start_matches("owvmm.net=").to_owned(),
            });
        }
    }

    /// The recovery is over: give the old memory back to the host and become an ordinary
    /// guest again. `resurrected` is (host ms, (restored, failed, guest ms)).
    fn morph(&mut self, a: &Attempt, resurrected: Option<(f64, (u64, u64, u64))>) {
        let before = super::rss_bytes();
        self.unmap_old_world();
        self.recovery.attempt = None;
        let after = super::rss_bytes();
        let total_ms = a.detected.elapsed().as_secs_f64() * 1000.0;
        let excluded = a
            .manifest
            .as_ref()
            .map(|m| m.excluded.clone())
            .unwrap_or_default();
        // What came back other than it was (a connection reset, ...), at most 100 lines.
        let notes: Vec<String> = a
            .manifest
            .as_ref()
            .map(|m| m.notes.iter().take(100).cloned().collect())
            .unwrap_or_default();
        let mut info = json!({
            "total_ms": total_ms,
            "notes": notes,
            "freeze_ms": a.freeze_ms,
            "extract_ms": a.extract_ms,
            "crash_kernel_start_ms": a.kernel_ms,
            "rss_before_mib": before >> 20,
            "rss_after_mib": after >> 20,
            "excluded": excluded,
        });
        if let Some((ms, (restored, failed, guest_ms))) = resurrected {
            info["resurrect_ms"] = json!(ms);
            info["resurrect_guest_ms"] = json!(guest_ms);
            info["restored"] = json!(restored);
            info["failed"] = json!(failed);
        }
        if let Some(last) = self.crashes.last_mut() {
            if let Some(d) = last.get("detect_ms") {
                info["detect_ms"] = d.clone();
            }
            last["recovery"] = info.clone();
        }
        self.events.publish("recovery-done", info);
        let procs = match resurrected {
            Some((_, (restored, failed, _))) => {
                format!("{restored} processes back, {failed} lost; ")
            }
            None => String::new(),
        };
        eprintln!(
            "\r\nowvmm: recovered in {total_ms:.0} ms; {procs}old memory given back ({} -> {} MiB resident)\r",
            before >> 20,
            after >> 20
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_text_takes_the_first_line_of_a_linux_banner() {
        let mut buf = [0u8; 64];
        let b = b"Linux version 6.1.0 (root@x) #1 SMP\n";
        buf[..b.len()].copy_from_slice(b);
        assert_eq!(
            banner_text(&buf).as_deref(),
            Some("Linux version 6.1.0 (root@x) #1 SMP")
        );
        assert_eq!(banner_text(b"garbage\0"), None);
        assert_eq!(banner_text(&[b'L'; 64]), None);
    }

    #[test]
    fn stage_names_are_stable() {
        assert_eq!(Stage::CrashKernel.name(), "crash-kernel-start");
        assert_eq!(
            Stage::WaitingStandby {
                since: Instant::now()
            }
            .name(),
            "waiting-for-standby"
        );
    }
}
