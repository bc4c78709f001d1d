//! The resurrection manifest handed to the crash kernel's agent (docs/resurrection.md),
//! built by `recovery/` from the dead kernel's memory and the vCPUs frozen at the crash.

use owvmm_recovery::kernel::Kernel;
use std::collections::BTreeMap;

use owvmm_recovery::manifest::build_manifest_excluding;
use owvmm_recovery::regs::{CpuUserState, UserRegs};
use owvmm_recovery::tasks::FxSave;
use serde_json::{json, Value};

use crate::vstate::vcpu::VcpuState;
use owvmm_recovery::Report;

/// A manifest, and what it leaves out.
pub(super) struct Manifest {
    /// The text the agent parses.
    pub text: String,
    /// Pids of the processes in it.
    pub included: Vec<i32>,
    /// Processes left out, each `{pid, comm, reason}`.
    pub excluded: Vec<Value>,
    /// Bytes of memory the agent will copy.
    pub copy_bytes: u64,
    /// What comes back other than it was (a connection reset, ...): recovery's notes.
    pub notes: Vec<String>,
    /// Why no manifest could be built at all.
    pub error: Option<String>,
}

/// What the manifest needs of a vCPU frozen at the crash.
pub(super) struct CpuAtCrash {
    /// General registers.
    pub regs: kvm_bindings::kvm_regs,
    /// Segment registers (CPL, GS base).
    pub sregs: kvm_bindings::kvm_sregs,
    /// `MSR_KERNEL_GS_BASE`.
    pub kernel_gs_base: u64,
    /// The legacy (FXSAVE) part of the vCPU's XSAVE area.
    pub fxsave: [u8; 512],
}

/// `MSR_KERNEL_GS_BASE`.
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

impl CpuAtCrash {
    /// Takes what the manifest needs from a saved vCPU.
    pub fn from_state(s: &VcpuState) -> Self {
        let mut fxsave = [0u8; 512];
        for (chunk, word) in fxsave.chunks_exact_mut(4).zip(s.xsave.region.iter()) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        CpuAtCrash {
            regs: s.regs,
            sregs: s.sregs,
            kernel_gs_base: s
                .msrs
                .iter()
                .find(|m| m.index == MSR_KERNEL_GS_BASE)
                .map_or(0, |m| m.data),
            fxsave,
        }
    }
}

impl CpuAtCrash {
    /// What `recovery/` needs of this vCPU.
    fn user_state(&self) -> CpuUserState {
        let (r, s) = (&self.regs, &self.sregs);
        CpuUserState {
            gs_base: s.gs.base,
            kernel_gs_base: self.kernel_gs_base,
            cpl3: s.cs.selector & 3 == 3,
            regs: UserRegs {
                r15: r.r15,
                r14: r.r14,
                r13: r.r13,
                r12: r.r12,
                rbp: r.rbp,
                rbx: r.rbx,
                r11: r.r11,
                r10: r.r10,
                r9: r.r9,
                r8: r.r8,
                rax: r.rax,
                rcx: r.rcx,
                rdx: r.rdx,
                rsi: r.rsi,
                rdi: r.rdi,
                orig_rax: u64::MAX,
                rip: r.rip,
                cs: u64::from(s.cs.selector),
                eflags: r.rflags,
                rsp: r.rsp,
                ss: u64::from(s.ss.selector),
                fs_base: s.fs.base,
                gs_base: s.gs.base,
                ds: u64::from(s.ds.selector),
                es: u64::from(s.es.selector),
                fs: u64::from(s.fs.selector),
                gs: u64::from(s.gs.selector),
            },
            fxsave: FxSave(self.fxsave),
        }
    }
}

/// Builds the manifest for the processes in `report`.
pub(super) fn build(
    kernel: Result<&Kernel<'_>, &String>,
    report: &Report,
    cpus: &[CpuAtCrash],
    culprit_cpu: Option<u32>,
) -> Manifest {
    let kernel = match kernel {
        Ok(k) => k,
        Err(e) => {
            return Manifest {
                text: String::new(),
                included: Vec::new(),
                excluded: Vec::new(),
                copy_bytes: 0,
                notes: Vec::new(),
                error: Some(e.clone()),
            }
        }
    };
    let states: Vec<CpuUserState> = cpus.iter().map(CpuAtCrash::user_state).collect();
    let mut left_out = BTreeMap::new();
    if let Some(task) = culprit_cpu
        .and_then(|c| report.cpus.iter().find(|k| k.cpu == c))
        .and_then(|k| k.current)
        .and_then(|addr| report.tasks.iter().find(|t| t.addr == addr))
        .filter(|t| t.is_user())
    {
        left_out.insert(
            task.tgid,
            format!(
                "it was running on the CPU that panicked (thread {}): resumed, it would crash the kernel again",
                task.pid
            ),
        );
    }
    let m = build_manifest_excluding(kernel, report, &states, &left_out);
    // From the typed manifest the text was written from: the `copy`, `fcopy` and `pdata` runs.
    let copy_bytes = m.manifest.copy_bytes();
    Manifest {
        text: m.text,
        included: m.processes,
        excluded: m
            .excluded
            .iter()
            .map(|e| {
                let comm = report.task(e.pid).map(|t| t.comm.clone());
                json!({ "pid": e.pid, "comm": comm, "reason": e.reason })
            })
            .collect(),
        copy_bytes,
        notes: m.notes,
        error: None,
    }
}
