//! Minimal ACPI tables, built with the `acpi_tables` crate: RSDP, XSDT, FADT (+ FACS),
//! MADT and a DSDT whose only device is the pvpanic port (`QEMU0001`), so that the stock
//! Linux pvpanic driver binds. Written into the BIOS area (`ACPI_START`), which the e820
//! map reserves; the zero page's `acpi_rsdp_addr` points at the RSDP.
//!
//! With ACPI the kernel takes the CPUs and the IO APIC from the MADT and ignores the MP
//! table (which stays for kernels built or booted without ACPI, `acpi=off`); the two say
//! the same: one local APIC per vCPU (ids 0..n), the IO APIC with id n+1 at `IOAPIC_BASE`
//! with GSIs from 0, ISA IRQs identity-mapped, NMI on LINT1.
//!
//! The FADT is a full one, not hardware-reduced: on x86 a hardware-reduced FADT makes
//! Linux drop the 8259 and with it the fixed ISA IRQ numbers the legacy serial ports use
//! (see `devices::acpi_pm`). Its fixed registers (PM1a event and control) are the tiny
//! `AcpiPm` device; there is no SMI command port (the system is always in ACPI mode), no
//! PM timer, no GPE block, no sleep state (`_S5`), no reset register.

use acpi_tables::aml;
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{ACPI_END, ACPI_START, APIC_BASE, IOAPIC_BASE};
use crate::devices::acpi_pm::{PM1_CNT, PM1_CNT_LEN, PM1_EVT_LEN, PM_BASE};
use crate::devices::pvpanic::PVPANIC_PORT;

/// Errors while building or writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// More vCPUs than the MADT's 8-bit APIC ids can name (the IO APIC takes id n+1).
    #[error("too many vCPUs for the MADT: {0} (at most 254)")]
    TooManyCpus(u8),
    /// The tables do not fit in the BIOS area.
    #[error("the ACPI tables ({0} bytes) do not fit in {ACPI_START:#x}..{ACPI_END:#x}")]
    TooLarge(u64),
    /// Writing the tables to guest memory failed.
    #[error("cannot write the ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const OEM_ID: [u8; 6] = *b"OWVMM ";
const OEM_TABLE_ID: [u8; 8] = *b"OWVMM   ";
const OEM_REVISION: u32 = 1;

/// The interrupt the FADT names as the SCI (never raised: no fixed or general-purpose
/// events exist). ISA IRQ 9, as on a PC.
pub const SCI_IRQ: u8 = 9;

/// FADT `IAPC_BOOT_ARCH`: VGA must not be probed.
const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
/// FADT `IAPC_BOOT_ARCH`: no CMOS RTC (the VMM has none).
const BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;
/// MADT flags: the machine also has dual 8259s (KVM's in-kernel PIC).
const MADT_PCAT_COMPAT: u32 = 1;

/// One table and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Guest-physical address.
    pub addr: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// The whole set, RSDP first.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// The tables in address order: RSDP, XSDT, FADT, FACS, MADT, DSDT.
    pub tables: Vec<Table>,
}

impl AcpiTables {
    /// Where the RSDP is.
    pub fn rsdp_addr(&self) -> u64 {
        self.tables.first().map_or(ACPI_START, |t| t.addr)
    }

    /// The table with this signature (`RSD PTR ` for the RSDP).
    pub fn find(&self, signature: &[u8]) -> Option<&Table> {
        self.tables.iter().find(|t| t.bytes.starts_with(signature))
    }
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Sets an SDT's length field to its size and fixes its checksum (after raw edits).
fn seal(table: &mut [u8]) {
    let len = u32::try_from(table.len()).unwrap_or(u32::MAX);
    table[4..8].copy_from_slice(&len.to_le_bytes());
    table[9] = 0;
    table[9] = checksum(table);
}

/// The DSDT: `\_SB.PEVT`, the pvpanic device (`QEMU0001`) on its one I/O port.
fn dsdt() -> Vec<u8> {
    let port = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let crs = aml::ResourceTemplate::new(vec![&port]);
    let hid = aml::Name::new("_HID".into(), &"QEMU0001");
    let crs = aml::Name::new("_CRS".into(), &crs);
    let dev = aml::Device::new("PEVT".into(), vec![&hid, &crs]);
    let sb = aml::Scope::new("\\_SB_".into(), vec![&dev]);
    let mut table = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sb.to_aml_bytes(&mut table);
    let mut bytes = table.as_slice().to_vec();
    seal(&mut bytes);
    bytes
}

/// The MADT: a local APIC per vCPU, the IO APIC, the SCI's override (level, active
/// high, as QEMU declares it) and NMI on every CPU's LINT1.
fn madt(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus + 1;
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_BASE),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(ioapic_id, IOAPIC_BASE, 0));
    let mut bytes = to_bytes(&madt);
    // Flags (after the header and the local APIC address).
    bytes[40..44].copy_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    // Interrupt source override: ISA IRQ 9 -> GSI 9, active high (01), level (11 << 2).
    bytes.extend_from_slice(&[2, 10, 0, SCI_IRQ]);
    bytes.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    bytes.extend_from_slice(&0x000du16.to_le_bytes());
    // Local APIC NMI: all processors (uid 0xff), flags "conforms to the bus", LINT1.
    bytes.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    seal(&mut bytes);
    bytes
}

/// The FADT, pointing at the FACS and the DSDT.
fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .flag(Flags::Wbinvd)
        .flag(Flags::PwrButton) // no fixed power button
        .flag(Flags::SlpButton) // no fixed sleep button
        .flag(Flags::FixRtc); // no RTC wake status in PM1
    b.sci_int = u16::from(SCI_IRQ).into();
    b.smi_cmd = 0.into(); // always in ACPI mode
    b.pm1a_evt_blk = u32::from(PM_BASE).into();
    b.pm1a_cnt_blk = u32::from(PM1_CNT).into();
    b.pm1_evt_len = PM1_EVT_LEN;
    b.pm1_cnt_len = PM1_CNT_LEN;
    b.iapc_boot_arch = (BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC).into();
    to_bytes(&b.finalize())
}

fn align(addr: u64, to: u64) -> u64 {
    addr.div_ceil(to) * to
}

/// Builds the tables for `cpus` vCPUs, laid out from `ACPI_START`.
pub fn build(cpus: u8) -> Result<AcpiTables, AcpiError> {
    if cpus == 0 || cpus > 254 {
        return Err(AcpiError::TooManyCpus(cpus));
    }
    // Fixed sizes first, so that every address is known before the tables that name them.
    let rsdp_addr = ACPI_START;
    let xsdt_addr = align(rsdp_addr + Rsdp::len() as u64, 64);
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align(xsdt_addr + xsdt_len, 64);
    let facs_addr = align(fadt_addr + acpi_tables::fadt::FADT::len() as u64, 64);
    let madt_addr = align(facs_addr + FACS::len() as u64, 64);
    let madt = madt(cpus);
    let dsdt_addr = align(madt_addr + madt.len() as u64, 64);
    let dsdt = dsdt();
    let end = dsdt_addr + dsdt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge(end - ACPI_START));
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let tables = vec![
        Table {
            addr: rsdp_addr,
            bytes: to_bytes(&Rsdp::new(OEM_ID, xsdt_addr)),
        },
        Table {
            addr: xsdt_addr,
            bytes: to_bytes(&xsdt),
        },
        Table {
            addr: fadt_addr,
            bytes: fadt(facs_addr, dsdt_addr),
        },
        Table {
            addr: facs_addr,
            bytes: to_bytes(&FACS::new()),
        },
        Table {
            addr: madt_addr,
            bytes: madt,
        },
        Table {
            addr: dsdt_addr,
            bytes: dsdt,
        },
    ];
    Ok(AcpiTables { tables })
}

/// Writes the tables for `cpus` vCPUs; returns the RSDP's address.
pub fn setup(mem: &GuestMemoryMmap, cpus: u8) -> Result<u64, AcpiError> {
    let set = build(cpus)?;
    for t in &set.tables {
        mem.write_slice(&t.bytes, GuestAddress(t.addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(set.rsdp_addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(v)
    }

    #[test]
    fn checksums_lengths_and_pointers_are_valid() {
        let set = build(2).expect("build");
        let rsdp = set.find(b"RSD PTR ").expect("rsdp");
        assert_eq!(rsdp.addr, ACPI_START);
        assert_eq!(
            rsdp.addr % 16,
            0,
            "the BIOS-area scan looks at 16-byte boundaries"
        );
        assert_eq!(sum(&rsdp.bytes[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&rsdp.bytes), 0, "extended checksum");
        assert_eq!(rsdp.bytes[15], 2, "revision 2: has an XSDT");
        for t in set.tables.iter().skip(1) {
            let sig = String::from_utf8_lossy(&t.bytes[..4]).into_owned();
            assert_eq!(u32_at(&t.bytes, 4) as usize, t.bytes.len(), "{sig} length");
            if sig != "FACS" {
                assert_eq!(sum(&t.bytes), 0, "{sig} checksum");
            }
            assert!(t.addr >= ACPI_START && t.addr + t.bytes.len() as u64 <= ACPI_END);
        }
        // No two tables overlap.
        for w in set.tables.windows(2) {
            assert!(w[0].addr + w[0].bytes.len() as u64 <= w[1].addr);
        }
        // RSDP -> XSDT -> FADT, MADT; FADT -> FACS, DSDT.
        let xsdt = set.find(b"XSDT").expect("xsdt");
        assert_eq!(u64_at(&rsdp.bytes, 24), xsdt.addr);
        let fadt = set.find(b"FACP").expect("fadt");
        let madt = set.find(b"APIC").expect("madt");
        assert_eq!(u64_at(&xsdt.bytes, 36), fadt.addr);
        assert_eq!(u64_at(&xsdt.bytes, 44), madt.addr);
        let facs = set.find(b"FACS").expect("facs");
        let dsdt = set.find(b"DSDT").expect("dsdt");
        assert_eq!(facs.addr % 64, 0, "the FACS must be 64-byte aligned");
        assert_eq!(u64_at(&fadt.bytes, 132), facs.addr, "X_FIRMWARE_CTRL");
        assert_eq!(u64_at(&fadt.bytes, 140), dsdt.addr, "X_DSDT");
        // Full (not hardware-reduced) FADT with the PM1a blocks of AcpiPm and SCI 9.
        assert_eq!(
            u32_at(&fadt.bytes, 112) & (1 << 20),
            0,
            "not HW_REDUCED_ACPI"
        );
        assert_eq!(u16::from_le_bytes([fadt.bytes[46], fadt.bytes[47]]), 9);
        assert_eq!(u32_at(&fadt.bytes, 48), 0, "no SMI command port");
        assert_eq!(u32_at(&fadt.bytes, 56), u32::from(PM_BASE));
        assert_eq!(u32_at(&fadt.bytes, 64), u32::from(PM1_CNT));
        assert_eq!((fadt.bytes[88], fadt.bytes[89]), (4, 2));
    }

    #[test]
    fn dsdt_names_the_pvpanic_device_and_its_port() {
        let set = build(1).expect("build");
        let dsdt = &set.find(b"DSDT").expect("dsdt").bytes;
        let aml = &dsdt[36..];
        let has = |needle: &[u8]| aml.windows(needle.len()).any(|w| w == needle);
        // Name (_HID, "QEMU0001"): NameOp, name, StringPrefix, string, NUL.
        assert!(has(b"\x08_HID\x0dQEMU0001\x00"));
        // IO (Decode16, 0x505, 0x505, 1, 1) in a resource template.
        assert!(has(&[0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01]));
        assert!(has(b"PEVT"));
        assert!(has(b"_SB_"));
    }

    #[test]
    fn madt_has_one_local_apic_per_vcpu_and_the_io_apic() {
        for cpus in [1u8, 2, 4, 32, 254] {
            let set = build(cpus).expect("build");
            let madt = &set.find(b"APIC").expect("madt").bytes;
            assert_eq!(u32_at(madt, 36), APIC_BASE);
            assert_eq!(u32_at(madt, 40) & MADT_PCAT_COMPAT, MADT_PCAT_COMPAT);
            let mut lapics = Vec::new();
            let mut ioapics = Vec::new();
            let mut off = 44;
            while off < madt.len() {
                let (ty, len) = (madt[off], usize::from(madt[off + 1]));
                assert!(len >= 2, "entry length");
                match ty {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(u32_at(madt, off + 4) & 1, 1, "enabled");
                        lapics.push(madt[off + 3]);
                    }
                    1 => {
                        ioapics.push((madt[off + 2], u32_at(madt, off + 4), u32_at(madt, off + 8)))
                    }
                    _ => {}
                }
                off += len;
            }
            assert_eq!(off, madt.len());
            assert_eq!(lapics, (0..cpus).collect::<Vec<_>>(), "{cpus} vCPUs");
            // The same IO APIC as the MP table: id n+1, at IOAPIC_BASE, GSI base 0.
            assert_eq!(ioapics, vec![(cpus + 1, IOAPIC_BASE, 0)]);
        }
    }

    #[test]
    fn refuses_bad_cpu_counts() {
        assert!(matches!(build(0), Err(AcpiError::TooManyCpus(0))));
        assert!(matches!(build(255), Err(AcpiError::TooManyCpus(255))));
    }

    #[test]
    fn tables_lie_in_memory_the_e820_map_reserves() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("memory");
        let rsdp = setup(&mem, 2).expect("setup");
        let map = super::super::boot::e820_map(&mem);
        let set = build(2).expect("build");
        for t in &set.tables {
            let (start, end) = (t.addr, t.addr + t.bytes.len() as u64);
            assert!(
                map.iter().any(|e| {
                    let (a, s, ty) = (e.addr, e.size, e.r#type);
                    ty == 2 && a <= start && end <= a + s
                }),
                "table at {start:#x} not in a reserved e820 range"
            );
        }
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(rsdp)).expect("read");
        assert_eq!(&sig, b"RSD PTR ");
    }
}
