//! Detecting a guest kernel panic (`panic_cpu`), and `ctl crash`, which makes the kernel
//! panic from outside.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress};

use super::{State, Vmm};
use crate::crash::{
    CRASH_MESSAGE, CRASH_MESSAGE_GPA, DEFAULT_PAGE_OFFSET, PANIC_CPU_INVALID, START_KERNEL_MAP,
};
use crate::vstate::vcpu::{VcpuRequest, VcpuResponse};

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
