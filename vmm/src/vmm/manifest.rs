//! The resurrection manifest handed to the crash kernel's agent (docs/resurrection.md),
//! built by `recovery/` from the dead kernel's memory and the vCPUs frozen at the crash.

use serde_json::Value;

use super::{GuestMem, KernelInfo};
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

/// Builds the manifest for the processes in `report`.
pub(super) fn build(
    _mem: &GuestMem<'_>,
    _info: &KernelInfo,
    _report: &Report,
    _cpus: &[CpuAtCrash],
) -> Manifest {
    Manifest {
        text: "owvmm-manifest 1\n".to_owned(),
        included: Vec::new(),
        excluded: Vec::new(),
        copy_bytes: 0,
        error: None,
    }
}
