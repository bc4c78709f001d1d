//! Detecting a guest kernel panic, and `ctl crash`, which makes the kernel panic from
//! outside. A kernel with a pvpanic driver says it panicked through the pvpanic port
//! (`devices::pvpanic`); `panic_cpu`, read from guest memory (polled, and on a reset), is
//! the fallback for kernels without one. Kernel addresses are translated by
//! `owvmm_recovery::kernel` (KASLR slide, `phys_base`, direct-map base), the same view the
//! extraction uses.

use std::time::{Duration, Instant};

use owvmm_recovery::kernel::{find_kaslr_slide, Kernel, Layout};
use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress};

use super::{GuestMem, State, Vmm};
use crate::crash::{CrashCause, PanicSource, CRASH_MESSAGE, CRASH_MESSAGE_GPA, PANIC_CPU_INVALID};
use crate::vstate::vcpu::{VcpuRequest, VcpuResponse};

impl Vmm {
    /// The running kernel's layout (KASLR slide, `phys_base`, direct-map base), once its
    /// image is in place (not while a bzImage's decompressor still runs, whose data lies
    /// where the kernel will be). Found afresh each time: with the image in place that is a
    /// handful of reads, and a layout kept from before the kernel set itself up (its
    /// paging mode, its direct-map base) could be stale.
    pub(super) fn kernel_layout(&self) -> Option<Layout> {
        let info = self.kernel_info.as_deref()?;
        let btf = info.types();
        let mem = GuestMem(&self.mem);
        let k = Kernel::new(&mem, &info.symbols, btf).ok()?;
        if k.image_found() {
            return Some(k.layout().clone());
        }
        // A KASLR kernel: find its slide through a vCPU's page tables.
        let cr3 = self
            .vcpus
            .first()
            .and_then(|h| match h.request(VcpuRequest::Describe) {
                Ok(VcpuResponse::Description(b)) => Some(b.cr3),
                _ => None,
            })?;
        let slide = find_kaslr_slide(&mem, &info.symbols, cr3, false)?;
        let k = Kernel::with_slide(&mem, &info.symbols, btf, slide).ok()?;
        k.image_found().then(|| k.layout().clone())
    }

    /// Reads the u32 kernel variable `symbol` of the running kernel.
    pub(super) fn read_kernel_u32(&self, symbol: &str) -> Option<u32> {
        let layout = self.kernel_layout()?;
        let info = self.kernel_info.as_deref()?;
        let btf = info.types();
        let mem = GuestMem(&self.mem);
        let k = Kernel::from_layout(&mem, &info.symbols, btf, layout);
        k.read_u32(k.symbol(symbol).ok()?).ok()
    }

    /// Did the guest kernel panic? (`panic_cpu` is set by `panic()` before it resets.) Only
    /// once `panic_cpu` was seen unset: while a bzImage's decompressor writes the kernel
    /// into place, the banner can be there before `panic_cpu`'s initial value is.
    pub(super) fn guest_panicked(&mut self) -> bool {
        match self.read_kernel_u32("panic_cpu") {
            Some(PANIC_CPU_INVALID) => {
                self.panic_cpu_armed = true;
                false
            }
            Some(_) => self.panic_cpu_armed,
            None => false,
        }
    }

    /// A panic seen by `source`, with the panic line from the console if it was printed.
    pub(super) fn panic_cause(&self, source: PanicSource) -> CrashCause {
        CrashCause::Panic {
            message: self.console_tail.panic_line(),
            source,
        }
    }

    /// The kernel has the pvpanic driver built in (its `System.map` names the probe).
    pub(super) fn kernel_has_pvpanic(&self) -> bool {
        self.symbols()
            .and_then(|s| s.addr_of("pvpanic_mmio_probe"))
            .is_some()
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
        // The kernel's own layout (KASLR slide, direct map), when it was found.
        let (slide, page_offset) = self
            .kernel_layout()
            .map_or((0, owvmm_recovery::kernel::DEFAULT_PAGE_OFFSET), |l| {
                (l.slide, l.page_offset_base)
            });
        let panic = panic.wrapping_add(slide);
        self.mem
            .write_slice(CRASH_MESSAGE, GuestAddress(CRASH_MESSAGE_GPA))
            .map_err(|e| format!("cannot write the panic message: {e}"))?;
        let message = page_offset.wrapping_add(CRASH_MESSAGE_GPA);
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
