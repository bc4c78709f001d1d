//! A typed view of a (dead) kernel's memory: kernel virtual addresses, symbols, BTF fields.
//!
//! Kernel virtual addresses are translated the way the kernel does it:
//! - kernel image (`__START_KERNEL_map` .. `_end`): `va - 0xffffffff80000000 + phys_base`
//!   (the link-time rule; a KASLR slide is subtracted first),
//! - direct map (`page_offset_base` .. +64 TiB): `va - page_offset_base`,
//! - anything else (vmalloc, VMAP stacks, modules): a walk of `init_top_pgt`.
//!
//! `phys_base` and `page_offset_base` are read from guest memory and checked for sanity.

use crate::btf::{Btf, BtfError, Member};
use crate::paging::{self, PhysRead, WalkError};
use crate::symbols::SymbolTable;

/// Start of the kernel image mapping (`__START_KERNEL_map`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// Default direct-map base with 4-level paging (no `CONFIG_RANDOMIZE_MEMORY`).
pub const DEFAULT_PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
/// Default direct-map base with 5-level paging.
pub const DEFAULT_PAGE_OFFSET_L5: u64 = 0xff11_0000_0000_0000;
/// Size of the direct-map region with 4-level paging (64 TiB).
const DIRECT_MAP_SIZE: u64 = 1 << 46;
/// Kernel image size when `_end` is unknown (`KERNEL_IMAGE_SIZE` without KASLR).
const DEFAULT_IMAGE_SIZE: u64 = 512 << 20;
/// Default `THREAD_SIZE` on x86-64 without KASAN.
pub const DEFAULT_THREAD_SIZE: u64 = 16 << 10;
/// `CONFIG_PHYSICAL_ALIGN` default; `phys_base` candidates are multiples of it.
const PHYSICAL_ALIGN: u64 = 2 << 20;
/// How many `phys_base` candidates to try when 0 does not check out (covers 64 GiB).
const PHYS_BASE_CANDIDATES: u64 = 1 << 15;

/// Why a kernel read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// A symbol the reader needs is not in the symbol table.
    #[error("symbol {0} not found")]
    NoSymbol(String),
    /// A type or member is missing from BTF.
    #[error("btf")]
    Btf(#[from] BtfError),
    /// The address's physical page is outside guest memory.
    #[error("{va:#x} (phys {pa:#x}) is outside guest memory")]
    Unreadable {
        /// Kernel virtual address.
        va: u64,
        /// Physical address it translated to.
        pa: u64,
    },
    /// The page-table walk for a non-linear address failed.
    #[error("{va:#x}")]
    Walk {
        /// Kernel virtual address.
        va: u64,
        /// Why the walk failed.
        #[source]
        err: WalkError,
    },
    /// The address is not a kernel address at all (user half, NULL, non-canonical).
    #[error("{0:#x} is not a kernel address")]
    NotKernel(u64),
    /// A field has a size that cannot be read as an integer.
    #[error("{0}: field of {1} bytes is not an integer")]
    NotInteger(String, u64),
}

/// How the kernel's address space was laid out, as found in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// KASLR virtual slide (runtime minus link-time address). 0 without KASLR.
    pub slide: u64,
    /// The kernel's `phys_base`: physical load shift of the image minus the KASLR slide
    /// (wrapping), so that `pa = va - __START_KERNEL_map + phys_base` for image addresses.
    pub phys_base: u64,
    /// Base of the direct map.
    pub page_offset_base: u64,
    /// 5-level paging.
    pub la57: bool,
    /// Physical address of `init_top_pgt` (the kernel's own page tables).
    pub init_top_pgt_phys: u64,
    /// `THREAD_SIZE`.
    pub thread_size: u64,
    /// End of the image mapping (runtime `_end`).
    pub image_end: u64,
}

/// A read-only view of a kernel in guest memory.
pub struct Kernel<'a> {
    mem: &'a dyn PhysRead,
    syms: &'a SymbolTable,
    btf: &'a Btf,
    layout: Layout,
    notes: Vec<String>,
}

impl std::fmt::Debug for Kernel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("layout", &self.layout)
            .field("notes", &self.notes)
            .finish_non_exhaustive()
    }
}

/// Largest KASLR virtual slide (`KERNEL_IMAGE_SIZE` with `CONFIG_RANDOMIZE_BASE`: 1 GiB).
const MAX_SLIDE: u64 = 1 << 30;

/// Finds the KASLR virtual slide with a vCPU's page tables: the multiple of 2 MiB below
/// 1 GiB at which `linux_banner` reads `"Linux version"` through `cr3`. Pass the result to
/// [`Kernel::with_slide`]. `None` without the symbol or when no candidate matches. A PTI user
/// CR3 (bit 12 set, user half only) is retried as the kernel PGD next to it.
pub fn find_kaslr_slide(
    mem: &dyn PhysRead,
    syms: &SymbolTable,
    cr3: u64,
    la57: bool,
) -> Option<u64> {
    let banner = syms.addr_of("linux_banner")?;
    let mut roots = vec![cr3 & paging::PTE_ADDR_MASK];
    if cr3 & (1 << 12) != 0 {
        roots.push(cr3 & paging::PTE_ADDR_MASK & !(1 << 12));
    }
    for root in roots {
        for i in 0..MAX_SLIDE / PHYSICAL_ALIGN {
            let slide = i * PHYSICAL_ALIGN;
            let mut buf = [0u8; 13];
            let n = paging::read_virt(mem, root, banner.wrapping_add(slide), la57, &mut buf);
            if n == buf.len() && &buf == b"Linux version" {
                return Some(slide);
            }
        }
    }
    None
}

/// True for addresses in the kernel half of a 4- or 5-level address space.
pub fn is_kernel_addr(va: u64) -> bool {
    va >= 0xff00_0000_0000_0000
}

impl<'a> Kernel<'a> {
    /// Finds the layout of a kernel linked at its System.map addresses (no KASLR slide).
    pub fn new(
        mem: &'a dyn PhysRead,
        syms: &'a SymbolTable,
        btf: &'a Btf,
    ) -> Result<Kernel<'a>, KernelError> {
        Self::with_slide(mem, syms, btf, 0)
    }

    /// Like [`Kernel::new`] for a kernel whose virtual addresses are shifted by `slide`.
    pub fn with_slide(
        mem: &'a dyn PhysRead,
        syms: &'a SymbolTable,
        btf: &'a Btf,
        slide: u64,
    ) -> Result<Kernel<'a>, KernelError> {
        let mut notes = Vec::new();
        let sym = |name: &str| {
            syms.addr_of(name)
                .map(|a| a.wrapping_add(slide))
                .ok_or_else(|| KernelError::NoSymbol(name.to_owned()))
        };
        let image_end = sym("_end").unwrap_or_else(|_| {
            notes.push("no _end symbol: assuming a 512 MiB image".to_owned());
            START_KERNEL_MAP
                .wrapping_add(slide)
                .wrapping_add(DEFAULT_IMAGE_SIZE)
        });
        // The kernel's own __pa() for image addresses: the runtime (slid) address minus
        // __START_KERNEL_map plus phys_base; phys_base absorbs the KASLR slide.
        let image_phys = |va: u64, pb: u64| va.wrapping_sub(START_KERNEL_MAP).wrapping_add(pb);
        let read_u64_phys = |pa: u64| {
            let mut b = [0u8; 8];
            mem.read_phys(pa, &mut b).then(|| u64::from_le_bytes(b))
        };

        // phys_base: the variable lives inside the image, so its own address depends on
        // it. The image's physical shift from its link address (phys_base + slide) is a
        // multiple of PHYSICAL_ALIGN: try 0 first, then upwards, and accept a candidate when
        // the value stored in the variable equals it and the banner reads right.
        let pb_sym = sym("phys_base")?;
        let banner = sym("linux_banner").ok();
        let banner_ok = |pb: u64| match banner {
            None => true,
            Some(b) => {
                let mut buf = [0u8; 13];
                mem.read_phys(image_phys(b, pb), &mut buf) && &buf == b"Linux version"
            }
        };
        let mut phys_base = None;
        for i in 0..PHYS_BASE_CANDIDATES {
            let cand = (i * PHYSICAL_ALIGN).wrapping_sub(slide);
            if read_u64_phys(image_phys(pb_sym, cand)) == Some(cand) && banner_ok(cand) {
                phys_base = Some(cand);
                break;
            }
        }
        let phys_base = match phys_base {
            Some(p) => p,
            None => {
                notes.push(
                    "phys_base not found in memory: assuming the image is at its link address"
                        .to_owned(),
                );
                0u64.wrapping_sub(slide)
            }
        };

        let la57 = match syms.addr_of("__pgtable_l5_enabled") {
            Some(a) => {
                let mut b = [0u8; 4];
                mem.read_phys(image_phys(a.wrapping_add(slide), phys_base), &mut b)
                    && u32::from_le_bytes(b) != 0
            }
            None => false,
        };
        let default_pob = if la57 {
            DEFAULT_PAGE_OFFSET_L5
        } else {
            DEFAULT_PAGE_OFFSET
        };
        let page_offset_base = match syms.addr_of("page_offset_base") {
            None => default_pob,
            Some(a) => match read_u64_phys(image_phys(a.wrapping_add(slide), phys_base)) {
                // Randomised bases are PUD (1 GiB) aligned and below the vmalloc area.
                Some(v)
                    if is_kernel_addr(v) && v & ((1 << 30) - 1) == 0 && v < START_KERNEL_MAP =>
                {
                    v
                }
                other => {
                    notes.push(format!(
                        "page_offset_base reads {other:x?}: using {default_pob:#x}"
                    ));
                    default_pob
                }
            },
        };
        let init_top_pgt_phys = image_phys(sym("init_top_pgt")?, phys_base);

        let thread_size = match btf.struct_id("thread_union").map(|id| btf.size_of(id)) {
            Some(Ok(s)) if s.is_power_of_two() && (4096..=(1 << 20)).contains(&s) => s,
            _ => match (syms.addr_of("__end_init_task"), syms.addr_of("init_stack")) {
                (Some(end), Some(start))
                    if end > start && (end - start).is_power_of_two() && end - start <= 1 << 20 =>
                {
                    end - start
                }
                _ => {
                    notes.push(format!(
                        "THREAD_SIZE unknown (no thread_union in BTF): using {DEFAULT_THREAD_SIZE}"
                    ));
                    DEFAULT_THREAD_SIZE
                }
            },
        };

        Ok(Kernel {
            mem,
            syms,
            btf,
            layout: Layout {
                slide,
                phys_base,
                page_offset_base,
                la57,
                init_top_pgt_phys,
                thread_size,
                image_end,
            },
            notes,
        })
    }

    /// A view with a layout found before (by [`Kernel::new`] or [`Kernel::with_slide`] over
    /// the same kernel), without searching memory again: for callers that read a few
    /// variables often, such as a VMM polling `panic_cpu`.
    pub fn from_layout(
        mem: &'a dyn PhysRead,
        syms: &'a SymbolTable,
        btf: &'a Btf,
        layout: Layout,
    ) -> Kernel<'a> {
        Kernel {
            mem,
            syms,
            btf,
            layout,
            notes: Vec::new(),
        }
    }

    /// True when the image's `phys_base` was found in memory (the kernel is in place), not
    /// assumed.
    pub fn image_found(&self) -> bool {
        !self
            .notes
            .iter()
            .any(|n| n.starts_with("phys_base not found"))
    }

    /// The layout found in memory.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Assumptions made while finding the layout (defaults taken, odd values).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The guest memory.
    pub fn mem(&self) -> &'a dyn PhysRead {
        self.mem
    }

    /// The type information.
    pub fn btf(&self) -> &'a Btf {
        self.btf
    }

    /// The symbol table.
    pub fn symbols(&self) -> &'a SymbolTable {
        self.syms
    }

    /// Runtime address of a symbol.
    pub fn symbol(&self, name: &str) -> Result<u64, KernelError> {
        self.syms
            .addr_of(name)
            .map(|a| a.wrapping_add(self.layout.slide))
            .ok_or_else(|| KernelError::NoSymbol(name.to_owned()))
    }

    /// True for an address in the direct map (where slab objects such as a
    /// `linux_binprm` live).
    pub fn is_direct_map(&self, va: u64) -> bool {
        let base = self.layout.page_offset_base;
        va >= base && va - base < DIRECT_MAP_SIZE
    }

    /// Guest-physical address of a kernel virtual address.
    pub fn virt_to_phys(&self, va: u64) -> Result<u64, KernelError> {
        let l = &self.layout;
        let image_start = START_KERNEL_MAP.wrapping_add(l.slide);
        if !is_kernel_addr(va) {
            return Err(KernelError::NotKernel(va));
        }
        if va >= image_start && va < l.image_end {
            return Ok(va.wrapping_sub(START_KERNEL_MAP).wrapping_add(l.phys_base));
        }
        if va >= l.page_offset_base && va - l.page_offset_base < DIRECT_MAP_SIZE {
            return Ok(va - l.page_offset_base);
        }
        paging::translate(self.mem, l.init_top_pgt_phys, va, l.la57)
            .map_err(|err| KernelError::Walk { va, err })
    }

    /// Reads `buf.len()` bytes at kernel virtual `va` (page by page).
    pub fn read_bytes(&self, va: u64, buf: &mut [u8]) -> Result<(), KernelError> {
        let mut done = 0usize;
        while done < buf.len() {
            let cur = va.wrapping_add(done as u64);
            let pa = self.virt_to_phys(cur)?;
            let in_page = usize::try_from(4096 - (cur & 0xfff)).unwrap_or(4096);
            let n = in_page.min(buf.len() - done);
            if !self.mem.read_phys(pa, &mut buf[done..done + n]) {
                return Err(KernelError::Unreadable { va: cur, pa });
            }
            done += n;
        }
        Ok(())
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, va: u64) -> Result<u64, KernelError> {
        let mut b = [0u8; 8];
        self.read_bytes(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a little-endian u32.
    pub fn read_u32(&self, va: u64) -> Result<u32, KernelError> {
        let mut b = [0u8; 4];
        self.read_bytes(va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian u16.
    pub fn read_u16(&self, va: u64) -> Result<u16, KernelError> {
        let mut b = [0u8; 2];
        self.read_bytes(va, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a byte.
    pub fn read_u8(&self, va: u64) -> Result<u8, KernelError> {
        let mut b = [0u8; 1];
        self.read_bytes(va, &mut b)?;
        Ok(b[0])
    }

    /// Reads an unsigned integer of `size` 1, 2, 4 or 8 bytes, zero-extended.
    pub fn read_uint(&self, va: u64, size: u64) -> Result<u64, KernelError> {
        match size {
            1 => self.read_u8(va).map(u64::from),
            2 => self.read_u16(va).map(u64::from),
            4 => self.read_u32(va).map(u64::from),
            8 => self.read_u64(va),
            _ => Err(KernelError::NotInteger(format!("{va:#x}"), size)),
        }
    }

    /// Reads a NUL-terminated string of at most `max` bytes (lossy UTF-8).
    pub fn read_cstr(&self, va: u64, max: usize) -> Result<String, KernelError> {
        let mut buf = vec![0u8; max];
        // Read page-wise so a string ending just before an unmapped page still works.
        let mut got = 0;
        while got < max {
            let cur = va.wrapping_add(got as u64);
            let in_page = usize::try_from(4096 - (cur & 0xfff)).unwrap_or(4096);
            let n = in_page.min(max - got);
            match self.read_bytes(cur, &mut buf[got..got + n]) {
                Ok(()) => {}
                Err(e) if got == 0 => return Err(e),
                Err(_) => break,
            }
            if buf[got..got + n].contains(&0) {
                got += n;
                break;
            }
            got += n;
        }
        buf.truncate(got);
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    /// A member of a struct, from BTF.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<Member, KernelError> {
        Ok(self.btf.member(struct_name, path)?)
    }

    /// Byte offset of a member path.
    pub fn offset_of(&self, struct_name: &str, path: &str) -> Result<u64, KernelError> {
        Ok(self.member(struct_name, path)?.offset_bytes)
    }

    /// Reads an integer field (any size 1..8, bitfields extracted) of the struct at `base`.
    pub fn read_field(&self, struct_name: &str, path: &str, base: u64) -> Result<u64, KernelError> {
        let m = self.member(struct_name, path)?;
        self.read_member(&m, base).map_err(|e| match e {
            KernelError::NotInteger(_, size) => {
                KernelError::NotInteger(format!("{struct_name}.{path}"), size)
            }
            other => other,
        })
    }

    /// [`Kernel::read_field`] under the name the rest of the code base uses.
    pub fn read_field_u64(
        &self,
        struct_name: &str,
        path: &str,
        base: u64,
    ) -> Result<u64, KernelError> {
        self.read_field(struct_name, path, base)
    }

    /// Reads an integer member already looked up (see [`Kernel::member`]).
    pub fn read_member(&self, m: &Member, base: u64) -> Result<u64, KernelError> {
        let va = base.wrapping_add(m.offset_bytes);
        if m.bit_size == 0 {
            return self.read_uint(va, m.size);
        }
        // Bitfield: read the bytes that hold it.
        let nbytes = (u64::from(m.bit_shift) + u64::from(m.bit_size)).div_ceil(8);
        if nbytes > 8 {
            return Err(KernelError::NotInteger(format!("{va:#x}"), nbytes));
        }
        let mut b = [0u8; 8];
        let n = usize::try_from(nbytes).unwrap_or(8);
        self.read_bytes(va, &mut b[..n])?;
        let raw = u64::from_le_bytes(b) >> m.bit_shift;
        let mask = if m.bit_size >= 64 {
            u64::MAX
        } else {
            (1u64 << m.bit_size) - 1
        };
        Ok(raw & mask)
    }

    /// Reads `count` bytes of user memory at `va` through the page tables at guest-physical
    /// `pgd_phys`. Returns what could be read before the first unmapped page.
    pub fn read_user(&self, pgd_phys: u64, va: u64, count: usize) -> Vec<u8> {
        let mut buf = vec![0u8; count];
        let n = paging::read_virt(self.mem, pgd_phys, va, self.layout.la57, &mut buf);
        buf.truncate(n);
        buf
    }
}

/// Test helpers: a flat guest memory with a kernel image at phys 0x100_0000 and a tiny
/// page-table tree, used by the walkers' unit tests.
#[cfg(test)]
pub(crate) mod testmem {
    use crate::paging::PhysRead;

    /// Flat memory: file offset equals physical address.
    #[derive(Clone)]
    pub struct Mem(pub Vec<u8>);

    impl PhysRead for Mem {
        fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
            let Ok(a) = usize::try_from(addr) else {
                return false;
            };
            let Some(end) = a.checked_add(buf.len()) else {
                return false;
            };
            match self.0.get(a..end) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
    }

    /// Direct-map address of a physical address.
    pub fn dm(pa: u64) -> u64 {
        super::DEFAULT_PAGE_OFFSET + pa
    }

    impl Mem {
        pub fn new(size: usize) -> Self {
            Mem(vec![0; size])
        }
        pub fn put(&mut self, pa: u64, bytes: &[u8]) {
            let a = usize::try_from(pa).expect("small");
            self.0[a..a + bytes.len()].copy_from_slice(bytes);
        }
        pub fn put_u64(&mut self, pa: u64, v: u64) {
            self.put(pa, &v.to_le_bytes());
        }
        pub fn put_u32(&mut self, pa: u64, v: u32) {
            self.put(pa, &v.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testmem::{dm, Mem};
    use super::*;
    use crate::btf::build::Builder;

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81100000 D linux_banner
ffffffff81100100 D phys_base
ffffffff81101000 D init_top_pgt
ffffffff81200000 D init_stack
ffffffff81204000 D __end_init_task
ffffffff81400000 B _end
";

    fn btf() -> Btf {
        let mut b = Builder::new();
        let u8t = b.int("unsigned char", 1);
        let u32t = b.int("unsigned int", 4);
        let u64t = b.int("long unsigned int", 8);
        b.composite(
            4,
            "thing",
            24,
            &[
                ("a", u64t, 0, 0),
                ("b", u32t, 64, 0),
                ("c", u8t, 96, 0),
                ("bf", u32t, 100, 7),
            ],
        );
        Btf::parse(&b.finish()).expect("btf")
    }

    /// Image loaded at phys `load` (link phys 0x100_0000): phys_base = load - 0x100_0000.
    fn image(load: u64) -> Mem {
        let mut m = Mem::new(0x80_0000 + usize::try_from(load).expect("small"));
        let pb = load - 0x100_0000;
        m.put(load + 0x10_0000, b"Linux version 6.1");
        m.put_u64(load + 0x10_0100, pb);
        m
    }

    #[test]
    fn finds_phys_base_and_translates() {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        for load in [0x100_0000u64, 0x300_0000] {
            let m = image(load);
            let k = Kernel::new(&m, &syms, &btf).expect("kernel");
            assert_eq!(k.layout().phys_base, load - 0x100_0000);
            assert_eq!(k.layout().thread_size, 0x4000);
            assert_eq!(k.layout().page_offset_base, DEFAULT_PAGE_OFFSET);
            assert_eq!(k.virt_to_phys(0xffff_ffff_8110_0000), Ok(load + 0x10_0000));
            assert_eq!(k.virt_to_phys(dm(0x1234)), Ok(0x1234));
            assert_eq!(
                k.read_cstr(0xffff_ffff_8110_0000, 64).expect("banner"),
                "Linux version 6.1"
            );
            assert!(matches!(
                k.virt_to_phys(0x4000),
                Err(KernelError::NotKernel(_))
            ));
        }
    }

    #[test]
    fn reads_fields_and_bitfields() {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let mut m = image(0x100_0000);
        m.put_u64(0x5000, 0x1122_3344_5566_7788);
        m.put_u32(0x5008, 0xdead_beef);
        m.put(0x500c, &[0x42 | (0x55 << 4), 0x55 >> 4]);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let base = dm(0x5000);
        assert_eq!(
            k.read_field_u64("thing", "a", base),
            Ok(0x1122_3344_5566_7788)
        );
        assert_eq!(k.read_field("thing", "b", base), Ok(0xdead_beef));
        assert_eq!(k.read_field("thing", "c", base), Ok(0x52));
        assert_eq!(k.read_field("thing", "bf", base), Ok(0x55));
        let e = k
            .read_field("thing", "zz", base)
            .expect_err("no such member");
        assert!(matches!(e, KernelError::Btf(_)));
        assert_eq!(crate::error_chain(&e), "btf: thing: no member \"zz\"");
        // Past the end of memory.
        assert!(matches!(
            k.read_u64(dm(0x7f_fffc + 0x100_0000)),
            Err(KernelError::Unreadable { .. })
        ));
    }

    #[test]
    fn walks_page_tables_for_vmalloc_addresses() {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let mut m = image(0x100_0000);
        // init_top_pgt at phys 0x110_1000. Map 0xffffc90000000000 -> 0x6000.
        let va: u64 = 0xffff_c900_0000_0000;
        let pml4 = 0x110_1000;
        m.put_u64(pml4 + ((va >> 39) & 0x1ff) * 8, 0x7000 | 3);
        m.put_u64(0x7000 + ((va >> 30) & 0x1ff) * 8, 0x8000 | 3);
        m.put_u64(0x8000 + ((va >> 21) & 0x1ff) * 8, 0x9000 | 3);
        m.put_u64(0x9000 + ((va >> 12) & 0x1ff) * 8, 0x6000 | 3);
        m.put_u64(0x6010, 77);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(k.read_u64(va + 0x10), Ok(77));
        let e = k.read_u64(va + 0x1000).expect_err("unmapped");
        assert!(matches!(e, KernelError::Walk { .. }));
        // The walk's reason is the source, printed once after the address.
        assert_eq!(
            crate::error_chain(&e),
            "0xffffc90000001000: not mapped (level 1 entry 0x0 not present)"
        );
    }

    #[test]
    fn kaslr_slide_is_found_and_applied() {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        // Image physically 32 MiB above its link address, virtually slid by 64 MiB.
        let (shift, slide) = (0x200_0000u64, 0x400_0000u64);
        let mut m = image(0x100_0000 + shift);
        let pb = shift.wrapping_sub(slide);
        m.put_u64(0x110_0100 + shift, pb);
        // Page tables at 0x10000: 0xffffffff80000000 + slide + 16 MiB -> phys 0x300_0000.
        let va = 0xffff_ffff_8100_0000 + slide;
        m.put_u64(0x1_0000 + 511 * 8, 0x1_1000 | 3);
        m.put_u64(0x1_1000 + 510 * 8, 0x1_2000 | 3);
        let pd = ((va >> 21) & 0x1ff) * 8;
        m.put_u64(0x1_2000 + pd, (0x100_0000 + shift) | 0x83);
        m.put_u64(0x1_2000 + pd + 8, (0x120_0000 + shift) | 0x83);
        assert_eq!(find_kaslr_slide(&m, &syms, 0x1_0000, false), Some(slide));
        assert_eq!(find_kaslr_slide(&m, &syms, 0x2_0000, false), None);
        let k = Kernel::with_slide(&m, &syms, &btf, slide).expect("kernel");
        assert_eq!(k.layout().phys_base, pb);
        assert!(k.notes().is_empty(), "{:?}", k.notes());
        assert_eq!(k.symbol("linux_banner"), Ok(0xffff_ffff_8110_0000 + slide));
        assert_eq!(
            k.virt_to_phys(0xffff_ffff_8110_0000 + slide),
            Ok(0x110_0000 + shift)
        );
        assert_eq!(k.layout().init_top_pgt_phys, 0x110_1000 + shift);
        let banner = k
            .read_cstr(0xffff_ffff_8110_0000 + slide, 32)
            .expect("banner");
        assert_eq!(banner, "Linux version 6.1");
    }

    #[test]
    fn missing_phys_base_falls_back_with_a_note() {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let m = Mem::new(0x1000);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(k.layout().phys_base, 0);
        assert!(!k.notes().is_empty());
        let syms = SymbolTable::parse_system_map("ffffffff81000000 T _text\n").expect("map");
        assert!(matches!(
            Kernel::new(&m, &syms, &btf),
            Err(KernelError::NoSymbol(_))
        ));
    }
}
