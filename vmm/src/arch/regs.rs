//! Boot-time vCPU state: 64-bit mode with identity page tables, as the Linux 64-bit boot
//! protocol wants it, plus the MSRs, FPU, LAPIC and CPUID set-up rust-vmm VMMs use.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, CpuId, Msrs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

/// Errors while putting a vCPU in its boot state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing boot tables to guest memory failed.
    #[error("cannot write boot tables to guest memory")]
    WriteMemory(#[source] vm_memory::GuestMemoryError),
    /// A KVM vCPU ioctl failed.
    #[error("KVM {0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// KVM took fewer MSRs than given.
    #[error("KVM accepted {set} of {want} boot MSRs")]
    Msrs {
        /// How many were accepted.
        set: usize,
        /// How many were given.
        want: usize,
    },
    /// A saved CPUID (a snapshot's) has features this host's KVM cannot give the guest.
    #[error(
        "the guest was booted with CPUID leaf {function:#x}.{index} {reg} bits {missing:#010x}, \
         which this host's KVM does not support: the snapshot cannot be restored here"
    )]
    CpuidUnsupported {
        /// CPUID leaf.
        function: u32,
        /// Subleaf.
        index: u32,
        /// Register.
        reg: &'static str,
        /// Bits the guest has and the host lacks.
        missing: u32,
    },
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Builds a GDT descriptor from flags, base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn seg_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    // Each field is masked to its width before narrowing.
    let bit = |shift: u32| u8::from((entry >> shift) & 1 == 1);
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: u32::try_from((entry & 0xffff) | ((entry >> 32) & 0xf_0000)).unwrap_or(0),
        selector: u16::from(table_index) * 8,
        type_: u8::try_from((entry >> 40) & 0xf).unwrap_or(0),
        present: bit(47),
        dpl: u8::try_from((entry >> 45) & 0x3).unwrap_or(0),
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: u8::from((entry >> 47) & 1 == 0),
    }
}

/// Writes GDT, IDT and identity page tables, and sets the special registers for 64-bit
/// entry.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<(), RegsError> {
    let gdt = [
        gdt_entry(0, 0, 0),            // NULL
        gdt_entry(0xa09b, 0, 0xfffff), // CODE
        gdt_entry(0xc093, 0, 0xfffff), // DATA
        gdt_entry(0x808b, 0, 0xfffff), // TSS
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::WriteMemory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::WriteMemory)?;

    // Identity-map the first GiB with 2 MiB pages.
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(RegsError::WriteMemory)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(RegsError::WriteMemory)?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | 0x83,
            GuestAddress(PDE_START).unchecked_add(i * 8),
        )
        .map_err(RegsError::WriteMemory)?;
    }

    let mut sregs: kvm_sregs = vcpu
        .get_sregs()
        .map_err(|e| RegsError::Kvm("GET_SREGS", e))?;
    let code = seg_from_gdt(gdt[1], 1);
    let data = seg_from_gdt(gdt[2], 2);
    let tss = seg_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&gdt) - 1).unwrap_or(31);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("SET_SREGS", e))
}

/// Sets the general registers for the 64-bit boot protocol entry.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| RegsError::Kvm("SET_REGS", e))
}

/// Default x87/SSE control words.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("SET_FPU", e))
}

/// The MSRs a vCPU starts with.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, 1),          // fast strings
        entry(MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, write-back default
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        want: entries.len(),
    })?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| RegsError::Kvm("SET_MSRS", e))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            want: entries.len(),
        });
    }
    Ok(())
}

/// LINT0 as ExtINT (the PIC), LINT1 as NMI.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_EXTINT: u32 = 0x7;
    const APIC_MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("GET_LAPIC", e))?;
    let mut set_mode = |offset: usize, mode: u32| {
        let mut raw = [0u8; 4];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = lapic.regs[offset + i].to_ne_bytes()[0];
        }
        let v = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = i8::from_ne_bytes([*b]);
        }
    };
    set_mode(APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("SET_LAPIC", e))
}

/// Adjusts KVM's supported CPUID for one vCPU (APIC IDs, CPU count), sets it and returns
/// it (what a snapshot keeps: kvm_pvm's `KVM_GET_CPUID2` answers the host CPU's view).
///
/// On kvm_pvm hosts the guest sees the host's CPUID whatever is set here (see
/// `host_quirks`); it is still set so that hardware KVM gets the right view.
pub fn setup_cpuid(vcpu: &VcpuFd, base: &CpuId, id: u8, count: u8) -> Result<CpuId, RegsError> {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // Initial APIC ID, logical processor count; hypervisor bit.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31;
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the count field is valid
                }
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| RegsError::Kvm("SET_CPUID2", e))?;
    Ok(cpuid)
}

#[derive(Clone, Copy)]
enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

impl Reg {
    fn of(self, e: &kvm_cpuid_entry2) -> u32 {
        match self {
            Reg::Eax => e.eax,
            Reg::Ebx => e.ebx,
            Reg::Ecx => e.ecx,
            Reg::Edx => e.edx,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reg::Eax => "EAX",
            Reg::Ebx => "EBX",
            Reg::Ecx => "ECX",
            Reg::Edx => "EDX",
        }
    }
}

/// The CPUID registers that hold feature flags (leaf, subleaf, register) and the bits in
/// them a check leaves out: ones owvmm sets itself (hypervisor, HTT) and ones KVM changes
/// at run time from the guest's control registers (OSXSAVE, APIC, OSPKE).
const FEATURE_REGS: &[(u32, u32, Reg, u32)] = &[
    (0x1, 0, Reg::Ecx, (1 << 27) | (1 << 31)),
    (0x1, 0, Reg::Edx, (1 << 9) | (1 << 28)),
    (0x7, 0, Reg::Ebx, 0),
    (0x7, 0, Reg::Ecx, 1 << 4),
    (0x7, 0, Reg::Edx, 0),
    (0x7, 1, Reg::Eax, 0),
    (0xd, 0, Reg::Eax, 0),
    (0xd, 0, Reg::Edx, 0),
    (0xd, 1, Reg::Eax, 0),
    (0x8000_0001, 0, Reg::Ecx, 0),
    (0x8000_0001, 0, Reg::Edx, 0),
    (0x8000_0008, 0, Reg::Ebx, 0),
];

/// Checks that a saved CPUID (the one a snapshot's guest was booted with) asks for no
/// feature that `supported` (this host's `KVM_GET_SUPPORTED_CPUID`) lacks, so that a
/// snapshot from a host with more features is refused with the first missing one instead
/// of a guest that faults on an instruction later.
pub fn check_cpuid(
    supported: &[kvm_cpuid_entry2],
    saved: &[kvm_cpuid_entry2],
) -> Result<(), RegsError> {
    let find = |list: &[kvm_cpuid_entry2], function: u32, index: u32| {
        list.iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
    };
    for &(function, index, reg, ignore) in FEATURE_REGS {
        let Some(want) = find(saved, function, index) else {
            continue;
        };
        let have = find(supported, function, index).map_or(0, |e| reg.of(&e));
        let missing = reg.of(&want) & !have & !ignore;
        if missing != 0 {
            return Err(RegsError::CpuidUnsupported {
                function,
                index,
                reg: reg.name(),
                missing,
            });
        }
    }
    Ok(())
}

/// Lowest address the page tables and boot structures use (for sanity checks).
pub fn boot_structures_end() -> GuestAddress {
    GuestAddress(PDE_START + 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_known_values() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        let s = seg_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((s.selector, s.l, s.present, s.type_), (8, 1, 1, 0xb));
        assert_eq!(s.limit, 0xfffff);
    }

    fn leaf(function: u32, index: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    #[test]
    fn a_cpuid_booted_here_passes_the_check() {
        let supported = [
            leaf(1, 0, 0, 0x0020_2000, 0x0000_0001),
            leaf(7, 0, 0x9, 0, 0),
        ];
        let mut booted = supported.to_vec();
        // What owvmm and KVM add themselves: hypervisor, HTT, OSXSAVE, APIC, APIC IDs.
        booted[0].ecx |= (1 << 31) | (1 << 27);
        booted[0].edx |= (1 << 28) | (1 << 9);
        booted[0].ebx = 0x0102_0000;
        check_cpuid(&supported, &booted).expect("same host");
        // Features the host has and the guest was not given are fine too.
        check_cpuid(&supported, &booted[..1]).expect("subset");
    }

    #[test]
    fn a_cpuid_with_features_this_host_lacks_is_refused() {
        let supported = [leaf(1, 0, 0, 0x0020_2000, 0), leaf(7, 0, 0x9, 0, 0)];
        // AVX2 (leaf 7 EBX bit 5) from a bigger host.
        let saved = [leaf(1, 0, 0, 0x0020_2000, 0), leaf(7, 0, 0x29, 0, 0)];
        let e = check_cpuid(&supported, &saved).expect_err("avx2 missing");
        assert!(matches!(
            e,
            RegsError::CpuidUnsupported {
                function: 7,
                index: 0,
                reg: "EBX",
                missing: 0x20
            }
        ));
        assert!(e.to_string().contains("cannot be restored here"));
        // A whole leaf the host does not have.
        let saved = [leaf(0x8000_0001, 0, 0, 1, 0)];
        assert!(check_cpuid(&supported, &saved).is_err());
    }
}
