//! What the VMM does when the guest kernel dies: detect (panic), freeze and capture,
//! extract the dead kernel's processes, start the crash kernel from its standby, morph
//! back into an ordinary guest; and `ctl crash`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress};

use super::*;

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

    /// Did the guest kernel panic? (`panic_cpu` is set by `panic()` before it resets.)
    pub(super) fn guest_panicked(&self) -> bool {
        let Some(addr) = self.symbols().and_then(|s| s.addr_of("panic_cpu")) else {
            return false;
        };
        if !self.kernel_in_place() {
            return false;
        }
        self.read_kernel_u32(addr)
            .is_some_and(|cpu| cpu != PANIC_CPU_INVALID)
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

        let frozen = self.pause_all();
        // A reset the dying kernel requested before it was frozen belongs to this crash, not
        // to whatever runs next.
        let _ = self.reset_evt.read();
        let freeze_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let captured = frozen.and_then(|()| self.save_vcpus());
        match captured {
            Ok(states) => {
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
        if let Some(x) = self.extract() {
            ev["extraction"] = x;
        }
        ev["uptime_ms"] = json!(self.uptime_ms());
        self.crashes.push(ev);
        match self.on_crash {
            OnCrash::Microreboot => match self.microreboot(t0) {
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
    /// `extraction-done`, and returns a summary for the crash record.
    pub(super) fn extract(&self) -> Option<Value> {
        let info = self.kernel_info.as_ref()?;
        let btf = info.btf.as_deref()?;
        let t0 = Instant::now();
        let report = owvmm_recovery::inspect(&GuestMem(&self.mem), &info.system_map, btf);
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
        let summary = json!({
            "ms": t0.elapsed().as_secs_f64() * 1000.0,
            "tasks": report.tasks.len(),
            "processes": processes,
            "problems": report.problems,
        });
        self.events.publish("extraction-done", summary.clone());
        Some(summary)
    }

    /// Starts the crash kernel from the warm standby in place of the dead guest: its memory
    /// (mapped copy-on-write from the standby snapshot) replaces the guest's in the KVM
    /// memory slots, its vCPU, interrupt controller, clock and UART state is loaded, and it
    /// runs. The dead guest's memory is kept (`old_world`) until the recovery is done.
    pub(super) fn microreboot(&mut self, detected: Instant) -> Result<(), VmmError> {
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
        self.old_world = Some(std::mem::replace(&mut self.mem, new_mem));
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
        self.recovering = Some(Recovering {
            detected,
            kernel_ms,
        });
        Ok(())
    }

    /// The crash kernel's agent answered: give the old memory back to the host and become
    /// an ordinary guest again.
    pub(super) fn morph(&mut self) {
        let Some(r) = self.recovering.take() else {
            return;
        };
        let before = rss_bytes();
        drop(self.old_world.take());
        let after = rss_bytes();
        let total_ms = r.detected.elapsed().as_secs_f64() * 1000.0;
        let info = json!({
            "total_ms": total_ms,
            "crash_kernel_start_ms": r.kernel_ms,
            "rss_before_mib": before >> 20,
            "rss_after_mib": after >> 20,
        });
        if let Some(last) = self.crashes.last_mut() {
            last["recovery"] = info.clone();
        }
        self.events.publish("recovery-done", info);
        eprintln!(
            "\r\nowvmm: recovered in {total_ms:.0} ms; old memory given back ({} -> {} MiB resident)\r",
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
        let was_paused = self.state == State::Paused;
        for _ in 0..300 {
            self.pause_all().map_err(|e| crate::error_chain(&e))?;
            for h in &self.vcpus {
                if let Ok(VcpuResponse::Injected) = h.request(VcpuRequest::InjectCall {
                    rip: panic,
                    rdi: message,
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
