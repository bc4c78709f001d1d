//! Where things go in guest-physical memory at boot (x86-64).

/// GDT used to enter the kernel.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (empty) used to enter the kernel.
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT and PD.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line the VMM accepts (the kernel's own limit on x86 is 2048 by default).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// MP floating pointer and configuration table (top of base memory, like an EBDA).
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of the low RAM block below the legacy hole.
pub const EBDA_START: u64 = 0x9fc00;
/// The ACPI tables (RSDP first): the BIOS area, where a kernel that is not told the RSDP's
/// address scans for it, and reserved in the e820 map (`EBDA_START..HIMEM_START`).
pub const ACPI_START: u64 = 0xe0000;
/// End of the room for the ACPI tables.
pub const ACPI_END: u64 = 0x10_0000;
/// Start of high memory: the kernel is loaded at or above this.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (LAPIC, IOAPIC live at its top).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
/// Highest address an initrd may end at (`initrd_addr_max` of old kernels).
pub const INITRD_ADDR_MAX: u64 = 0x3800_0000;
/// Local APIC physical address.
pub const APIC_BASE: u32 = 0xfee0_0000;
/// IO APIC physical address.
pub const IOAPIC_BASE: u32 = 0xfec0_0000;
/// KVM's TSS (three pages) and identity map page, inside the MMIO hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// The guest RAM ranges for `mem_size` bytes: one block below the MMIO hole, and the
/// rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, mem_size - MMIO_HOLE_START),
        ]
    }
}

/// The largest guest RAM `--mem` accepts, in MiB.
pub const MAX_MEM_MIB: u64 = 65536;

/// One past the highest guest-physical RAM address of a guest with `mem_size` bytes (not
/// the sum of the ranges' lengths: above 3 GiB the RAM continues at 4 GiB).
pub fn ram_end(mem_size: u64) -> u64 {
    ram_ranges(mem_size)
        .iter()
        .map(|&(start, len)| start.saturating_add(len))
        .max()
        .unwrap_or(0)
}

/// One past the highest RAM address of the largest guest (`MAX_MEM_MIB`): 65 GiB.
pub const RAM_END_MAX: u64 = (MAX_MEM_MIB << 20) + (MMIO_HOLE_END - MMIO_HOLE_START);

/// Where the resurrection manifest is mapped for the crash kernel: above the crash kernel's
/// RAM at the largest `--mem`, below the old-world window.
pub const MANIFEST_BASE: u64 = 0x1f_0000_0000;
/// Longest manifest the slot holds (the gap up to the window).
pub const MANIFEST_MAX: u64 = WINDOW_BASE - MANIFEST_BASE;
/// Where the dead guest's RAM is mapped for the crash kernel (docs/resurrection.md): old
/// guest-physical address `P` is at `WINDOW_BASE + P`, outside the crash kernel's e820 map
/// and above its RAM and the manifest at every accepted `--mem`.
pub const WINDOW_BASE: u64 = 0x20_0000_0000;
/// First KVM slot of the old-world window (the guest's own RAM uses slots from 0).
pub const WINDOW_FIRST_SLOT: u32 = 16;
/// KVM slot of the manifest.
pub const MANIFEST_SLOT: u32 = 32;

// The crash kernel's RAM, the manifest and the window never overlap, and the window fits in
// the 48-bit guest-physical space with room to spare (2^39 = 512 GiB: the smallest common
// physical address width of x86-64 hosts).
const _: () = assert!(RAM_END_MAX <= MANIFEST_BASE);
const _: () = assert!(MANIFEST_BASE < WINDOW_BASE);
const _: () = assert!(WINDOW_BASE + RAM_END_MAX <= 1 << 39);

/// The old-world window for a guest of `mem_size` bytes: (base, length). It spans every RAM
/// address of that guest, the MMIO hole included (no slot is mapped there).
pub fn old_world_window(mem_size: u64) -> (u64, u64) {
    (WINDOW_BASE, ram_end(mem_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, 1 << 30)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn ram_end_is_the_highest_address_not_the_sum() {
        assert_eq!(ram_end(128 * MIB), 128 * MIB);
        assert_eq!(ram_end(MMIO_HOLE_START), MMIO_HOLE_START);
        // One MiB over 3 GiB lands at 4 GiB.
        assert_eq!(ram_end(MMIO_HOLE_START + MIB), MMIO_HOLE_END + MIB);
        // --mem 3200: 128 MiB above 4 GiB (the sum of the lengths would end at 3200 MiB).
        assert_eq!(ram_end(3200 * MIB), MMIO_HOLE_END + 128 * MIB);
        assert_eq!(ram_end(4608 * MIB), MMIO_HOLE_END + 1536 * MIB);
        assert_eq!(ram_end(MAX_MEM_MIB * MIB), RAM_END_MAX);
    }

    #[test]
    fn window_covers_every_ram_byte_at_the_edges() {
        for mib in [
            1,
            128,
            3071,
            3072,
            3073,
            3200,
            4096,
            4608,
            32768,
            MAX_MEM_MIB,
        ] {
            let (base, len) = old_world_window(mib * MIB);
            assert_eq!(base, WINDOW_BASE);
            for (start, rlen) in ram_ranges(mib * MIB) {
                assert!(
                    start + rlen <= len,
                    "--mem {mib}: {start:#x}+{rlen:#x} outside {len:#x}"
                );
            }
        }
    }

    #[test]
    fn slots_never_overlap_at_the_largest_memory() {
        let ram = ram_ranges(MAX_MEM_MIB * MIB);
        let crash_kernel_top = ram.iter().map(|r| r.0 + r.1).max().unwrap_or(0);
        assert!(crash_kernel_top <= MANIFEST_BASE);
        let (wbase, wlen) = old_world_window(MAX_MEM_MIB * MIB);
        assert!(MANIFEST_BASE + MANIFEST_MAX <= wbase);
        // Every old range moved by WINDOW_BASE stays above the manifest and inside the window.
        for (start, len) in ram {
            assert!(wbase + start >= MANIFEST_BASE + MANIFEST_MAX);
            assert!(start + len <= wlen);
        }
        assert!(
            ram_ranges(MAX_MEM_MIB * MIB).len() <= (MANIFEST_SLOT - WINDOW_FIRST_SLOT) as usize
        );
    }
}

#[cfg(test)]
mod layout_edges {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn total(r: &[(u64, u64)]) -> u64 {
        r.iter().map(|x| x.1).sum()
    }

    #[test]
    fn exactly_3_gib_fills_the_space_below_the_hole() {
        let r = ram_ranges(3 * GIB);
        assert_eq!(r, vec![(0, MMIO_HOLE_START)]);
        assert_eq!(r[0].0 + r[0].1, MMIO_HOLE_START);
    }

    #[test]
    fn one_mib_more_than_3_gib_goes_above_4_gib() {
        let r = ram_ranges(3 * GIB + MIB);
        assert_eq!(r, vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, MIB)]);
        assert_eq!(total(&r), 3 * GIB + MIB);
    }

    #[test]
    fn the_largest_guest_64_gib_ends_at_65_gib() {
        let r = ram_ranges(64 * GIB);
        assert_eq!(r, vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, 61 * GIB)]);
        assert_eq!(total(&r), 64 * GIB);
        assert_eq!(r[1].0 + r[1].1, 65 * GIB);
    }

    #[test]
    fn no_range_touches_the_mmio_hole() {
        for size in [
            MIB,
            3 * GIB - MIB,
            3 * GIB,
            3 * GIB + MIB,
            4 * GIB,
            64 * GIB,
        ] {
            let r = ram_ranges(size);
            assert_eq!(total(&r), size, "{size:#x}");
            for &(start, len) in &r {
                let end = start + len;
                assert!(
                    end <= MMIO_HOLE_START || start >= MMIO_HOLE_END,
                    "{size:#x}: {start:#x}..{end:#x}"
                );
            }
        }
    }
}
