//! The KVM VM: guest memory slots, the in-kernel interrupt controllers and PIT, the clock.

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::KVM_TSS_ADDRESS;

/// Errors of the VM layer.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("unsupported KVM API version {0}")]
    ApiVersion(i32),
    /// A capability the VMM needs is missing.
    #[error("KVM lacks capability {0}")]
    MissingCap(&'static str),
    /// A VM ioctl failed.
    #[error("KVM {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

/// The interrupt controllers, PIT and clock of a VM, as kept in snapshots.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IO APIC.
    pub irqchips: Vec<kvm_irqchip>,
    /// The PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

static MSR_INDICES: OnceLock<Vec<u32>> = OnceLock::new();
static XSAVE2_SIZE: OnceLock<Option<usize>> = OnceLock::new();

/// The MSRs KVM can save and restore (filled once the VM is created).
pub fn msr_indices() -> Vec<u32> {
    MSR_INDICES.get().cloned().unwrap_or_default()
}

/// Bytes of a vCPU's XSAVE area as `KVM_GET_XSAVE2`/`KVM_SET_XSAVE` move it
/// (`KVM_CAP_XSAVE2`), or None when this KVM lacks the capability (Linux before 5.17: the
/// legacy 4 KiB `KVM_GET_XSAVE`). Known once /dev/kvm is open.
pub fn xsave2_size() -> Option<usize> {
    XSAVE2_SIZE.get().copied().flatten()
}

/// An open KVM with the facts the VMM needs from it.
pub struct KvmContext {
    /// The /dev/kvm handle.
    pub kvm: Kvm,
    /// CPUID that KVM supports.
    pub cpuid: CpuId,
}

impl KvmContext {
    /// Opens /dev/kvm and checks what the VMM relies on.
    pub fn open() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(VmError::ApiVersion(v));
        }
        use kvm_ioctls::Cap;
        for (cap, name) in [
            (Cap::Irqchip, "IRQCHIP"),
            (Cap::Irqfd, "IRQFD"),
            (Cap::UserMemory, "USER_MEMORY"),
            (Cap::Pit2, "PIT2"),
            (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmError::Kvm("GET_SUPPORTED_CPUID", e))?;
        let list = kvm
            .get_msr_index_list()
            .map_err(|e| VmError::Kvm("GET_MSR_INDEX_LIST", e))?;
        let _ = MSR_INDICES.set(list.as_slice().to_vec());
        let xsave2 = kvm.check_extension_int(Cap::Xsave2);
        let _ = XSAVE2_SIZE.set(usize::try_from(xsave2).ok().filter(|&n| n > 0));
        Ok(KvmContext { kvm, cpuid })
    }

    /// Creates a VM with the in-kernel irqchip and PIT, and registers `mem` with it.
    pub fn create_vm(&self, mem: &GuestMemoryMmap) -> Result<VmFd, VmError> {
        let vm = self
            .kvm
            .create_vm()
            .map_err(|e| VmError::Kvm("CREATE_VM", e))?;
        vm.set_tss_address(usize::try_from(KVM_TSS_ADDRESS).unwrap_or(0))
            .map_err(|e| VmError::Kvm("SET_TSS_ADDR", e))?;
        vm.set_identity_map_address(KVM_TSS_ADDRESS + 3 * 4096)
            .map_err(|e| VmError::Kvm("SET_IDENTITY_MAP_ADDR", e))?;
        vm.create_irq_chip()
            .map_err(|e| VmError::Kvm("CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| VmError::Kvm("CREATE_PIT2", e))?;
        set_memory(&vm, mem, true)?;
        Ok(vm)
    }
}

/// Registers (`add`) or removes the memory slots of `mem`, one slot per region, numbered
/// from 0.
pub fn set_memory(vm: &VmFd, mem: &GuestMemoryMmap, add: bool) -> Result<(), VmError> {
    set_slots(vm, mem, 0, 0, false, add)
}

/// Registers (`add`) or removes `mem` as slots `first_slot..` with every region moved up by
/// `gpa_offset`, read-only to the guest when `read_only` (and the host's KVM can do that).
pub fn set_slots(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    first_slot: u32,
    gpa_offset: u64,
    read_only: bool,
    add: bool,
) -> Result<(), VmError> {
    let flags = if read_only && read_only_memory_supported(vm) {
        kvm_bindings::KVM_MEM_READONLY
    } else {
        0
    };
    for (i, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: u32::try_from(i)
                .ok()
                .and_then(|i| first_slot.checked_add(i))
                .unwrap_or(u32::MAX),
            flags,
            guest_phys_addr: region.start_addr().raw_value().saturating_add(gpa_offset),
            memory_size: if add { region.len() } else { 0 },
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: when adding, the region is a live mapping owned by `mem`, which the VMM
        // keeps registered only while it holds `mem`, and slots do not overlap; removing a
        // slot (size 0) touches no memory.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|e| VmError::Kvm("SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

/// Can this KVM map memory read-only to the guest (`KVM_CAP_READONLY_MEM`)?
fn read_only_memory_supported(vm: &VmFd) -> bool {
    vm.check_extension(kvm_ioctls::Cap::ReadonlyMem)
}

/// Reads the VM-wide state (vCPUs must be paused).
pub fn save_vm_state(vm: &VmFd) -> Result<VmState, VmError> {
    let mut irqchips = Vec::new();
    for chip_id in 0..3 {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip)
            .map_err(|e| VmError::Kvm("GET_IRQCHIP", e))?;
        irqchips.push(chip);
    }
    let pit = vm.get_pit2().map_err(|e| VmError::Kvm("GET_PIT2", e))?;
    let clock = vm.get_clock().map_err(|e| VmError::Kvm("GET_CLOCK", e))?;
    Ok(VmState {
        irqchips,
        pit,
        clock,
    })
}

/// Puts VM-wide state back.
pub fn restore_vm_state(vm: &VmFd, s: &VmState) -> Result<(), VmError> {
    for chip in &s.irqchips {
        vm.set_irqchip(chip)
            .map_err(|e| VmError::Kvm("SET_IRQCHIP", e))?;
    }
    vm.set_pit2(&s.pit)
        .map_err(|e| VmError::Kvm("SET_PIT2", e))?;
    // Only the clock value: the flags KVM reported are not valid input.
    let clock = kvm_clock_data {
        clock: s.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock)
        .map_err(|e| VmError::Kvm("SET_CLOCK", e))
}
