//! Loading a Linux kernel, its initramfs and command line, and writing the zero page.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::layout::*;

/// Errors while loading the guest's boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened or read.
    #[error("cannot read kernel {0}")]
    KernelFile(String, #[source] std::io::Error),
    /// The kernel file is neither an x86-64 ELF nor a 64-bit bzImage.
    #[error("kernel {0} is not an x86-64 vmlinux or bzImage: {1}")]
    NotX86_64(String, &'static str),
    /// linux-loader refused the image.
    #[error("cannot load kernel {0}")]
    Load(String, #[source] loader::Error),
    /// The initramfs does not fit.
    #[error("initramfs of {size} bytes does not fit in guest memory below {max:#x} above the kernel (end {kernel_end:#x}); give more --mem")]
    InitrdTooLarge {
        /// Size of the initramfs.
        size: u64,
        /// Highest address it may end at.
        max: u64,
        /// Where the kernel ends.
        kernel_end: u64,
    },
    /// Writing the initramfs failed.
    #[error("cannot write the initramfs to guest memory")]
    InitrdWrite(#[source] vm_memory::GuestMemoryError),
    /// The command line is too long or invalid.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing the command line failed.
    #[error("cannot write the command line to guest memory")]
    CmdlineWrite(#[source] loader::Error),
    /// Writing the zero page failed.
    #[error("cannot write the zero page")]
    ZeroPage(#[source] vm_memory::GuestMemoryError),
}

/// What kind of kernel image a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// Uncompressed ELF `vmlinux`.
    Elf,
    /// Compressed `bzImage`.
    BzImage,
}

/// Recognises an x86-64 kernel image from its first bytes, without loading it.
pub fn probe_kernel(path: &Path) -> Result<KernelKind, BootError> {
    let name = path.display().to_string();
    let mut f = File::open(path).map_err(|e| BootError::KernelFile(name.clone(), e))?;
    let mut head = vec![0u8; 0x240];
    let n = read_up_to(&mut f, &mut head).map_err(|e| BootError::KernelFile(name.clone(), e))?;
    head.truncate(n);
    classify(&head).map_err(|why| BootError::NotX86_64(name, why))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Classifies image bytes; the error says why they are not a usable kernel.
pub fn classify(head: &[u8]) -> Result<KernelKind, &'static str> {
    if head.starts_with(b"\x7fELF") {
        if head.get(4) != Some(&2) {
            return Err("ELF is not 64-bit");
        }
        let machine = head.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
        return match machine {
            Some(62) => Ok(KernelKind::Elf),
            Some(_) => Err("ELF machine is not x86-64"),
            None => Err("ELF header is truncated"),
        };
    }
    if head.get(0x202..0x206) == Some(b"HdrS") {
        let xloadflags = head
            .get(0x236..0x238)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .unwrap_or(0);
        return if xloadflags & 1 == 1 {
            Ok(KernelKind::BzImage)
        } else {
            Err("bzImage has no 64-bit entry point")
        };
    }
    Err("unknown format (no ELF or bzImage header)")
}

/// Where the kernel landed and how to enter it.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// 64-bit entry point.
    pub entry: u64,
    /// First byte after the kernel image.
    pub end: u64,
    /// Setup header of a bzImage.
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Loads the kernel image into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let name = path.display().to_string();
    let kind = probe_kernel(path)?;
    let mut f = File::open(path).map_err(|e| BootError::KernelFile(name.clone(), e))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let res = match kind {
        KernelKind::Elf => Elf::load(mem, None, &mut f, himem),
        KernelKind::BzImage => BzImage::load(mem, None, &mut f, himem),
    }
    .map_err(|e| BootError::Load(name, e))?;
    let entry = match kind {
        KernelKind::Elf => res.kernel_load.raw_value(),
        // The 64-bit entry of a bzImage is 0x200 past its 32-bit one.
        KernelKind::BzImage => res.kernel_load.raw_value() + 0x200,
    };
    Ok(LoadedKernel {
        entry,
        end: res.kernel_end,
        setup_header: res.setup_header,
    })
}

/// Places the initramfs at the top of low memory; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    data: &[u8],
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let size = data.len() as u64;
    let low_end = mem
        .iter()
        .filter(|r| r.start_addr().raw_value() == 0)
        .map(|r| r.len())
        .next()
        .unwrap_or(0);
    let max = low_end.min(INITRD_ADDR_MAX);
    let too_large = BootError::InitrdTooLarge {
        size,
        max,
        kernel_end,
    };
    let Some(start) = max.checked_sub(size) else {
        return Err(too_large);
    };
    let start = start & !0xfff;
    if start < kernel_end {
        return Err(too_large);
    }
    mem.write_slice(data, GuestAddress(start))
        .map_err(BootError::InitrdWrite)?;
    Ok((start, size))
}

/// Builds the kernel command line object.
pub fn make_cmdline(text: &str) -> Result<Cmdline, BootError> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    c.insert_str(text).map_err(BootError::Cmdline)?;
    Ok(c)
}

/// The e820 memory map for the guest.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    const E820_RAM: u32 = 1;
    const E820_RESERVED: u32 = 2;
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        // EBDA, MP table (`MPTABLE_START`), ACPI tables (`ACPI_START..ACPI_END`), BIOS.
        boot_e820_entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            r#type: E820_RESERVED,
        },
    ];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            map.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    map
}

/// Writes the command line and the zero page; `rsdp` is where the ACPI tables start, if
/// there are any (boot protocol 2.14 `acpi_rsdp_addr`; a kernel that does not read it
/// finds the RSDP by its scan of the BIOS area).
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::CmdlineWrite)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .map_err(BootError::Cmdline)?;

    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = 0x5372_6448; // "HdrS"
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).unwrap_or(0);
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(0);
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = u32::try_from(addr).unwrap_or(0);
        params.hdr.ramdisk_size = u32::try_from(size).unwrap_or(0);
    }
    if let Some(addr) = rsdp {
        params.acpi_rsdp_addr = addr;
    }
    let map = e820_map(mem);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = *e;
    }
    params.e820_entries = u8::try_from(map.len().min(params.e820_table.len())).unwrap_or(0);
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::ZeroPage)
}

/// Guest memory needed for a kernel file and an initramfs, with room to run.
pub fn min_memory_for(kernel_footprint: u64, initrd_size: u64) -> u64 {
    // The kernel is loaded at 16 MiB and needs its loaded size, its own data at run time,
    // the initramfs and what unpacking it takes.
    HIMEM_START.max(16 << 20) + kernel_footprint + 2 * initrd_size + (16 << 20)
}

/// Bytes of guest memory the kernel image at `path` occupies once loaded: the span of an
/// ELF's `PT_LOAD` segments, or a bzImage's `init_size` (what it needs to decompress and
/// start). A `vmlinux` file is mostly debug information and BTF that is never loaded, so
/// its file size overstates it several times over. Falls back to the file size when the
/// headers say nothing usable.
pub fn kernel_footprint(path: &Path) -> Result<u64, BootError> {
    let name = path.display().to_string();
    let io = |e| BootError::KernelFile(name.clone(), e);
    let mut f = File::open(path).map_err(io)?;
    let file_size = f.metadata().map_err(io)?.len();
    let mut head = vec![0u8; 0x270];
    let n = read_up_to(&mut f, &mut head).map_err(io)?;
    head.truncate(n);
    let found = match classify(&head).map_err(|why| BootError::NotX86_64(name.clone(), why))? {
        KernelKind::BzImage => bzimage_init_size(&head),
        KernelKind::Elf => {
            let (phoff, count) = elf_phdrs(&head).unwrap_or((0, 0));
            let mut table = vec![0u8; count * ELF_PHDR_SIZE];
            use std::io::{Seek, SeekFrom};
            let ok = count > 0
                && f.seek(SeekFrom::Start(phoff)).is_ok()
                && read_up_to(&mut f, &mut table).map_err(io)? == table.len();
            if ok {
                elf_load_span(&table)
            } else {
                None
            }
        }
    };
    Ok(found.filter(|&s| s > 0).unwrap_or(file_size))
}

/// Size of one ELF64 program header.
const ELF_PHDR_SIZE: usize = 56;
/// Most program headers read.
const MAX_PHDRS: usize = 64;

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// `init_size` of a bzImage setup header (boot protocol 2.10 and later).
fn bzimage_init_size(head: &[u8]) -> Option<u64> {
    let version = le_u16(head, 0x206)?;
    (version >= 0x20a).then(|| le_u32(head, 0x260).map(u64::from))?
}

/// Where an ELF64's program headers are and how many (bounded).
fn elf_phdrs(head: &[u8]) -> Option<(u64, usize)> {
    let phoff = le_u64(head, 0x20)?;
    let entsize = usize::from(le_u16(head, 0x36)?);
    let count = usize::from(le_u16(head, 0x38)?);
    (entsize == ELF_PHDR_SIZE && count <= MAX_PHDRS).then_some((phoff, count))
}

/// From the lowest `PT_LOAD` physical address to the highest end.
fn elf_load_span(table: &[u8]) -> Option<u64> {
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for ph in table.chunks_exact(ELF_PHDR_SIZE) {
        if le_u32(ph, 0)? != 1 {
            continue;
        }
        let (paddr, memsz) = (le_u64(ph, 0x18)?, le_u64(ph, 0x28)?);
        lo = lo.min(paddr);
        hi = hi.max(paddr.checked_add(memsz)?);
    }
    hi.checked_sub(lo).filter(|_| lo != u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_is_the_loaded_span_not_the_file_size() {
        let ph = |kind: u32, paddr: u64, memsz: u64| {
            let mut p = vec![0u8; ELF_PHDR_SIZE];
            p[..4].copy_from_slice(&kind.to_le_bytes());
            p[0x18..0x20].copy_from_slice(&paddr.to_le_bytes());
            p[0x28..0x30].copy_from_slice(&memsz.to_le_bytes());
            p
        };
        let table = [
            ph(1, 0x100_0000, 0xcf_d53c),
            ph(4, 0, 0x1000_0000), // PT_NOTE: not loaded
            ph(1, 0x1ee_0000, 0x13_6000),
        ]
        .concat();
        assert_eq!(elf_load_span(&table), Some(0x201_6000 - 0x100_0000));
        assert_eq!(elf_load_span(&ph(4, 0, 1)), None);
        assert_eq!(elf_load_span(&ph(1, u64::MAX, 2)), None);

        let mut head = vec![0u8; 0x40];
        head[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        head[0x36] = 56;
        head[0x38] = 3;
        assert_eq!(elf_phdrs(&head), Some((64, 3)));
        head[0x38] = 200;
        assert_eq!(elf_phdrs(&head), None);

        let mut bz = vec![0u8; 0x270];
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x260..0x264].copy_from_slice(&0x2a0_0000u32.to_le_bytes());
        assert_eq!(bzimage_init_size(&bz), Some(0x2a0_0000));
        bz[0x206..0x208].copy_from_slice(&0x209u16.to_le_bytes());
        assert_eq!(bzimage_init_size(&bz), None);

        // A real file: a vmlinux-like ELF with a big unloaded tail.
        let dir = std::env::temp_dir().join(format!("owvmm-footprint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 62;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36] = 56;
        elf[0x38] = 3;
        elf.extend_from_slice(&table);
        elf.resize(8 << 20, 0);
        let path = dir.join("vmlinux");
        std::fs::write(&path, &elf).expect("write");
        assert_eq!(kernel_footprint(&path).expect("footprint"), 0x101_6000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn classifies_images() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 62;
        assert_eq!(classify(&elf), Ok(KernelKind::Elf));
        elf[18] = 183; // aarch64
        assert_eq!(classify(&elf), Err("ELF machine is not x86-64"));
        elf[4] = 1;
        assert_eq!(classify(&elf), Err("ELF is not 64-bit"));

        let mut bz = vec![0u8; 0x240];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert!(classify(&bz).is_err());
        bz[0x236] = 1;
        assert_eq!(classify(&bz), Ok(KernelKind::BzImage));
        assert!(classify(b"#!/bin/sh\n").is_err());
        assert!(classify(b"").is_err());
    }

    #[test]
    fn e820_covers_ram_and_skips_legacy_hole() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("memory");
        let map = e820_map(&mem);
        assert_eq!(map.len(), 3);
        let (a0, s0, t1) = (map[0].addr, map[0].size, map[1].r#type);
        let (a2, s2) = (map[2].addr, map[2].size);
        assert_eq!((a0, s0, t1), (0, EBDA_START, 2));
        assert_eq!((a2, s2), (HIMEM_START, (64 << 20) - HIMEM_START));
    }

    #[test]
    fn initrd_goes_high_and_refuses_overlap() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("memory");
        let data = vec![7u8; 5000];
        let (addr, size) = load_initrd(&mem, &data, 20 << 20).expect("fits");
        assert_eq!(size, 5000);
        assert_eq!(addr % 4096, 0);
        assert!(addr + size <= 64 << 20);
        let big = vec![0u8; 50 << 20];
        assert!(matches!(
            load_initrd(&mem, &big, 20 << 20),
            Err(BootError::InitrdTooLarge { .. })
        ));
    }
}
