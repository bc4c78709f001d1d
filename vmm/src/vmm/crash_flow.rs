//! What the VMM does when the guest kernel dies: detect (panic), freeze and capture,
//! extract the dead kernel's processes, start the crash kernel from its standby, morph
//! back into an ordinary guest; and `ctl crash`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress};

use super::manifest::{self, CpuAtCrash};
use super::*;
use crate::arch::layout::{MANIFEST_BASE, MANIFEST_SLOT, WINDOW_BASE, WINDOW_FIRST_SLOT};
use crate::vstate::vm::set_slots;

/// How long the crash kernel's agent may take to resurrect the processes: a base, plus a
/// time per MiB of memory to copy (each new page is zeroed by the guest kernel first, about
/// 2 ms per page where guest kernel code is emulated).
const RESURRECT_BASE: Duration = Duration::from_secs(300);
const RESURRECT_PER_MIB: Duration = Duration::from_secs(4);

impl Vmm {
    /// Reads a u32 of the kernel image (link address `va`), for kernels loaded where
    /// they were linked (the VMM loads vmlinux at its physical address; no KASLR).
    pub(super) fn read_kernel_u32(&self, va: u64) -> Option<u32> {
        let pa = va.checked_sub(START_KERNEL_MAP)?;
        self.mem.read_obj::<u32>(GuestAddress(pa)).ok()
    }

    /// Is the kernel image in place (its banner readable where it was linked)? Not while
    /// a bzImage's decompressor still runs, whose data lies where the kernel will be.
    fn kernel_in_place(&self) -> bool {
        let Some(addr) = self.symbols().and_then(|s| s.addr_of("linux_banner")) else {
            return false;
        };
        let Some(pa) = addr.checked_sub(START_KERNEL_MAP) else {
            return false;
        };
        let mut buf = [0u8; 14];
        self.mem.read_slice(&mut buf, GuestAddress(pa)).is_ok() && &buf == b"Linux version "
    }

    /// Did the guest kernel panic? (`panic_cpu` is set by `panic()` before it resets.) Only
    /// once `panic_cpu` was seen unset: while a bzImage's decompressor writes the kernel
    /// into place, the banner can be there before `panic_cpu`'s initial value is.
    pub(super) fn guest_panicked(&mut self) -> bool {
        let Some(addr) = self.symbols().and_then(|s| s.addr_of("panic_cpu")) else {
            return false;
        };
        if !self.kernel_in_place() {
            return false;
        }
        match self.read_kernel_u32(addr) {
            Some(PANIC_CPU_INVALID) => {
                self.panic_cpu_armed = true;
                false
            }
            Some(_) => self.panic_cpu_armed,
            None => false,
        }
    }

    /// A crash was detected: freeze, capture, then exit or stay paused.
    pub(super) fn crash(&mut self, cause: CrashCause) {
        if self.crashed || self.exit.is_some() {
            return;
        }
        self.crashed = true;
        let t0 = Instant::now();
        let text = cause.describe();
        eprintln!("\r\nowvmm: guest kernel crashed: {text}\r");
        let mut ev = serde_json::to_value(&cause).unwrap_or_default();
        ev["description"] = json!(text);
        self.events.publish("crash-detected", ev.clone());

        if let Some(r) = self.recovering.take() {
            // The crash kernel itself died before the processes were back: say so, keep the
            // VMM up and the guest frozen for inspection.
            let _ = self.pause_all();
            self.state = State::Paused;
            self.unmap_old_world();
            ev["stage"] = json!(if r.resurrect_sent.is_some() {
                "resurrection"
            } else {
                "crash-kernel start"
            });
            eprintln!(
                "\r\nowvmm: the crash kernel failed during recovery ({text}); guest frozen\r"
            );
            self.events.publish("recovery-failed", ev.clone());
            ev["uptime_ms"] = json!(self.uptime_ms());
            self.crashes.push(ev);
            return;
        }
        let frozen = self.pause_all();
        // A reset the dying kernel requested before it was frozen belongs to this crash, not
        // to whatever runs next.
        let _ = self.reset_evt.read();
        let freeze_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let captured = frozen.and_then(|()| self.save_vcpus());
        let mut cpus = Vec::new();
        match captured {
            Ok(states) => {
                cpus = states.iter().map(CpuAtCrash::from_state).collect();
                let capture_ms = t0.elapsed().as_secs_f64() * 1000.0 - freeze_ms;
                self.events.publish(
                    "guest-frozen",
                    json!({ "freeze_ms": freeze_ms, "capture_ms": capture_ms, "vcpus": states.len() }),
                );
                if let Some(dir) = self.crash_dump.clone() {
                    let t1 = Instant::now();
                    match self.write_snapshot(&dir, states) {
                        Ok(bytes) => self.events.publish(
                            "crash-dump-written",
                            json!({ "dir": dir.display().to_string(), "bytes": bytes, "ms": t1.elapsed().as_secs_f64() * 1000.0 }),
                        ),
                        Err(e) => self.events.publish(
                            "crash-dump-failed",
                            json!({ "dir": dir.display().to_string(), "error": crate::error_chain(&e) }),
                        ),
                    }
                }
            }
            Err(e) => self
                .events
                .publish("capture-failed", json!({ "error": crate::error_chain(&e) })),
        }
        // A panic the guest raised itself came from the task running on the panicking CPU
        // (e.g. a write to /proc/sysrq-trigger); resurrected, it would do it again. A
        // panic `ctl crash` injected is nobody's fault.
        let culprit_cpu = match (&cause, self.crash_requested) {
            (CrashCause::Panic { .. }, None) => self
                .symbols()
                .and_then(|s| s.addr_of("panic_cpu"))
                .and_then(|a| self.read_kernel_u32(a))
                .filter(|&c| c != PANIC_CPU_INVALID),
            _ => None,
        };
        let t_extract = Instant::now();
        if let Some(x) = self.extract(&cpus, culprit_cpu) {
            ev["extraction"] = x;
        }
        let extract_ms = t_extract.elapsed().as_secs_f64() * 1000.0;
        if let Some(req) = self.crash_requested.take() {
            ev["detect_ms"] =
                json!(req.elapsed().as_secs_f64() * 1000.0 - t0.elapsed().as_secs_f64() * 1000.0);
        }
        ev["uptime_ms"] = json!(self.uptime_ms());
        self.crashes.push(ev);
        match self.on_crash {
            OnCrash::Microreboot => match self.microreboot(t0, freeze_ms, extract_ms) {
                Ok(()) => {}
                Err(e) => {
                    let why = crate::error_chain(&e);
                    eprintln!("\r\nowvmm: microreboot failed: {why}\r");
                    self.events
                        .publish("microreboot-failed", json!({ "error": why }));
                    self.finish_with(ExitReason::GuestCrash(text));
                }
            },
            OnCrash::Exit => self.finish_with(ExitReason::GuestCrash(text)),
            OnCrash::Pause => {
                self.state = State::Paused;
                eprintln!("\r\nowvmm: guest frozen (--on-crash pause); inspect it with owvmm ctl, or stop it\r");
            }
        }
    }

    /// Reads the dead kernel's processes from its frozen memory (recovery/), publishes
    /// `extraction-done`, builds the resurrection manifest when a microreboot follows, and
    /// returns a summary for the crash record.
    pub(super) fn extract(
        &mut self,
        cpus: &[CpuAtCrash],
        culprit_cpu: Option<u32>,
    ) -> Option<Value> {
        let info = self.kernel_info.as_ref()?;
        let btf_blob = info.btf.as_deref()?;
        let t0 = Instant::now();
        let mem = GuestMem(&self.mem);
        // One parse of the types and one kernel view serve the report and the manifest.
        let btf = owvmm_recovery::btf::Btf::parse(btf_blob).map_err(|e| format!("BTF: {e}"));
        let kernel = btf.as_ref().map_err(Clone::clone).and_then(|b| {
            owvmm_recovery::kernel::Kernel::new(&mem, &info.symbols, b)
                .map_err(|e| format!("kernel: {e}"))
        });
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
        let manifest = if self.on_crash == OnCrash::Microreboot {
            let m = manifest::build(kernel.as_ref(), &report, cpus, culprit_cpu);
            if let Some(e) = &m.error {
                self.events
                    .publish("manifest-failed", json!({ "error": e }));
            }
            Some(m)
        } else {
            None
        };
        let mut summary = json!({
            "ms": t0.elapsed().as_secs_f64() * 1000.0,
            "inspect_ms": inspect_ms,
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
        self.manifest = manifest;
        self.events.publish("extraction-done", summary.clone());
        Some(summary)
    }

    /// Starts the crash kernel from the warm standby in place of the dead guest: its memory
    /// (mapped copy-on-write from the standby snapshot) replaces the guest's in the KVM
    /// memory slots, its vCPU, interrupt controller, clock and UART state is loaded, and it
    /// runs. The dead guest's memory is kept (`old_world`) until the recovery is done.
    pub(super) fn microreboot(
        &mut self,
        detected: Instant,
        freeze_ms: f64,
        extract_ms: f64,
    ) -> Result<(), VmmError> {
        if self.standby.is_none() {
            if let Some(job) = self.standby_job.take() {
                eprintln!(
                    "\r\nowvmm: waiting for the crash kernel's standby, still being prepared\r"
                );
                let t = Instant::now();
                let dir = job
                    .join()
                    .map_err(|_| VmmError::EventLoop("the standby preparation panicked".into()))?
                    .map_err(|e| {
                        VmmError::EventLoop(format!("no standby: {}", crate::error_chain(&e)))
                    })?;
                self.events.publish(
                    "standby-waited",
                    json!({ "ms": t.elapsed().as_secs_f64() * 1000.0, "dir": dir.display().to_string() }),
                );
                self.standby = Some(dir);
            }
        }
        let t0 = Instant::now();
        let dir = self
            .standby
            .clone()
            .ok_or_else(|| VmmError::EventLoop("no crash-kernel standby (--standby)".into()))?;
        let (st, file) = snapshot::read(&dir)?;
        if st.machine.mem_mib != self.machine.mem_mib || st.vcpus.len() != self.vcpus.len() {
            return Err(VmmError::Snapshot(snapshot::SnapshotError::Inconsistent(
                format!(
                    "standby has {} MiB and {} vCPUs, the guest {} MiB and {}",
                    st.machine.mem_mib,
                    st.vcpus.len(),
                    self.machine.mem_mib,
                    self.vcpus.len()
                ),
            )));
        }
        let new_mem = crate::memory::from_file(&file, st.memory_bytes)?;
        crate::vstate::vm::set_memory(&self.vm, &self.mem, false)?;
        crate::vstate::vm::set_memory(&self.vm, &new_mem, true)?;
        let old = std::mem::replace(&mut self.mem, new_mem);
        set_slots(&self.vm, &old, WINDOW_FIRST_SLOT, WINDOW_BASE, true, true)?;
        self.old_world = Some(old);
        self.map_manifest()?;
        restore_vm_state(&self.vm, &st.vm)?;
        for (h, vs) in self.vcpus.iter().zip(st.vcpus) {
            match h.request(VcpuRequest::RestoreState(Box::new(vs)))? {
                VcpuResponse::Restored => {}
                other => {
                    return Err(VmmError::EventLoop(format!(
                        "vCPU {} answered {other:?} to restore",
                        h.id
                    )))
                }
            }
        }
        if let [s1, s2] = st.serial.as_slice() {
            lock(&self.com1).replace_state(s1)?;
            lock(&self.com2).replace_state(s2)?;
        }
        *lock(&self.agent) = AgentState {
            ready: st.agent_ready,
            ..AgentState::default()
        };
        self.agent_tx.clear();
        self.clock_synced = false;
        // The standby's kernel is in place and running.
        self.panic_cpu_armed = true;
        self.poweroff_since = None;
        self.crashed = false;
        self.resume_all()?;
        let kernel_ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.events.publish(
            "crash-kernel-running",
            json!({
                "standby": dir.display().to_string(),
                "start_ms": kernel_ms,
                "since_detect_ms": detected.elapsed().as_secs_f64() * 1000.0,
            }),
        );
        eprintln!("\r\nowvmm: crash kernel running ({kernel_ms:.0} ms from its standby)\r");
        let excluded = self
            .manifest
            .as_ref()
            .map(|m| m.excluded.clone())
            .unwrap_or_default();
        let copy_mib = self
            .manifest
            .as_ref()
            .map_or(0, |m| u32::try_from(m.copy_bytes >> 20).unwrap_or(u32::MAX));
        self.recovering = Some(Recovering {
            detected,
            freeze_ms,
            extract_ms,
            kernel_ms,
            resurrect_sent: None,
            resurrect_limit: RESURRECT_BASE
                .saturating_add(RESURRECT_PER_MIB.saturating_mul(copy_mib)),
            excluded,
        });
        Ok(())
    }

    /// Puts the manifest into its own memory slot for the crash kernel's agent.
    fn map_manifest(&mut self) -> Result<(), VmmError> {
        let Some(m) = &self.manifest else {
            return Ok(());
        };
        let len = u64::try_from(m.text.len()).unwrap_or(u64::MAX);
        let size = len.div_ceil(4096).max(1) * 4096;
        let mem = crate::memory::anonymous(size)?;
        mem.write_slice(m.text.as_bytes(), GuestAddress(0))
            .map_err(|e| VmmError::EventLoop(format!("cannot write the manifest: {e}")))?;
        set_slots(&self.vm, &mem, MANIFEST_SLOT, MANIFEST_BASE, true, true)?;
        self.manifest_mem = Some(mem);
        Ok(())
    }

    /// Removes the old-world window and the manifest from the guest and frees them.
    fn unmap_old_world(&mut self) {
        if let Some(old) = self.old_world.take() {
            let _ = set_slots(&self.vm, &old, WINDOW_FIRST_SLOT, WINDOW_BASE, true, false);
        }
        if let Some(m) = self.manifest_mem.take() {
            let _ = set_slots(&self.vm, &m, MANIFEST_SLOT, MANIFEST_BASE, true, false);
        }
        self.manifest = None;
    }

    /// Drives a recovery in progress: once the crash kernel's agent answers, hand it the
    /// manifest; once it has resurrected the processes (or gave up), morph.
    pub(super) fn recovery_tick(&mut self, a: &AgentState) {
        let Some(r) = &mut self.recovering else {
            return;
        };
        if !a.clock_set {
            return;
        }
        let Some(sent) = r.resurrect_sent else {
            let (Some(m), Some(old)) = (&self.manifest, &self.old_world) else {
                self.morph(None);
                return;
            };
            let window_len: u64 = vm_memory::GuestMemoryBackend::iter(old)
                .map(vm_memory::GuestMemoryRegion::len)
                .sum();
            let msg = VmmMsg::Resurrect {
                manifest_gpa: MANIFEST_BASE,
                manifest_len: u64::try_from(m.text.len()).unwrap_or(u64::MAX),
                window_gpa: WINDOW_BASE,
                window_len,
            };
            r.resurrect_sent = Some(Instant::now());
            eprintln!(
                "\r\nowvmm: crash kernel up; bringing back {} processes ({} MiB to copy)\r",
                m.included.len(),
                m.copy_bytes >> 20
            );
            lock(&self.agent).resurrect_done = None;
            self.send_agent(&msg);
            return;
        };
        if let Some(done) = a.resurrect_done {
            self.morph(Some((sent.elapsed().as_secs_f64() * 1000.0, done)));
        } else if sent.elapsed() > r.resurrect_limit {
            let secs = r.resurrect_limit.as_secs();
            self.events.publish(
                "recovery-failed",
                json!({ "stage": "resurrection", "error": format!("no answer from the crash kernel's agent in {secs} s") }),
            );
            self.morph(None);
        }
    }

    /// The recovery is over: give the old memory back to the host and become an ordinary
    /// guest again. `resurrected` is (host ms, (restored, failed, guest ms)).
    fn morph(&mut self, resurrected: Option<(f64, (u64, u64, u64))>) {
        let Some(r) = self.recovering.take() else {
            return;
        };
        let before = rss_bytes();
        self.unmap_old_world();
        let after = rss_bytes();
        let total_ms = r.detected.elapsed().as_secs_f64() * 1000.0;
        let mut info = json!({
            "total_ms": total_ms,
            "freeze_ms": r.freeze_ms,
            "extract_ms": r.extract_ms,
            "crash_kernel_start_ms": r.kernel_ms,
            "rss_before_mib": before >> 20,
            "rss_after_mib": after >> 20,
            "excluded": r.excluded,
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

    /// `ctl crash`: makes a vCPU that is in kernel mode call `panic()`.
    pub(super) fn inject_panic(&mut self) -> Result<Value, String> {
        if self.crashed {
            return Err("the guest has already crashed".into());
        }
        let panic = self
            .symbols()
            .and_then(|s| s.addr_of("panic"))
            .ok_or("no System.map next to the kernel: cannot find panic()")?;
        self.mem
            .write_slice(CRASH_MESSAGE, GuestAddress(CRASH_MESSAGE_GPA))
            .map_err(|e| format!("cannot write the panic message: {e}"))?;
        let message = DEFAULT_PAGE_OFFSET + CRASH_MESSAGE_GPA;
        self.crash_requested = Some(Instant::now());
        let was_paused = self.state == State::Paused;
        for attempt in 0..300 {
            self.pause_all().map_err(|e| crate::error_chain(&e))?;
            // An idle vCPU first (in the first attempts), so that no program is cut off in
            // the middle of a system call with side effects, as a write half done.
            let passes: &[bool] = if attempt < 20 { &[true] } else { &[false] };
            for h in passes
                .iter()
                .flat_map(|&idle_only| self.vcpus.iter().map(move |h| (h, idle_only)))
            {
                let (h, idle_only) = h;
                if let Ok(VcpuResponse::Injected) = h.request(VcpuRequest::InjectCall {
                    rip: panic,
                    rdi: message,
                    idle_only,
                }) {
                    let id = h.id;
                    self.resume_all().map_err(|e| crate::error_chain(&e))?;
                    return Ok(json!({ "vcpu": id, "how": "panic" }));
                }
            }
            // Every vCPU was in user mode: let them run a little and try again.
            self.resume_all().map_err(|e| crate::error_chain(&e))?;
            std::thread::sleep(Duration::from_millis(10));
        }
        if was_paused {
            let _ = self.pause_all();
        }
        Err("no vCPU reached kernel mode in time".into())
    }
}
