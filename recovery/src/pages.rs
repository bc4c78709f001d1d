//! Physical pages behind user memory and behind in-memory files.
//!
//! - [`user_page_runs`]: walks a process's page tables (4- or 5-level, 2 MiB and 1 GiB
//!   leaves, `PROT_NONE` entries) over a virtual range and returns the present pages as
//!   runs, each tagged with whether its `struct page` is anonymous.
//! - [`file_pages`]: walks an inode's page cache (`i_mapping->i_pages`, an XArray) and
//!   returns the cached pages by file index.
//!
//! Both walks have fixed depth plus a budget of tables/nodes, and check every pointer, so
//! corrupt or cyclic structures end the walk with a reason instead of a hang.

use std::collections::HashSet;

use crate::kernel::{is_kernel_addr, Kernel, KernelError};
use crate::paging::PTE_ADDR_MASK;
use crate::{error_chain, Partial};

/// `vmemmap_base` default with 4-level paging.
pub const DEFAULT_VMEMMAP: u64 = 0xffff_ea00_0000_0000;
/// `vmemmap_base` default with 5-level paging.
pub const DEFAULT_VMEMMAP_L5: u64 = 0xffd4_0000_0000_0000;
/// `_PAGE_PRESENT`.
const PRESENT: u64 = 1;
/// `_PAGE_PSE`: a huge leaf at PMD/PUD level.
const PSE: u64 = 1 << 7;
/// `_PAGE_PROTNONE` (the global bit, never set in user entries): a `PROT_NONE` page.
const PROTNONE: u64 = 1 << 8;
/// `PAGE_MAPPING_ANON`.
const PAGE_MAPPING_ANON: u64 = 1;
/// Most page tables read per walk (a 3 GiB guest has ~1600 last-level tables in all).
pub const MAX_TABLES: usize = 1 << 15;
/// Most pages reported per walk (16 GiB).
pub const MAX_PAGES: u64 = 1 << 22;
/// Most XArray nodes visited per file.
pub const MAX_XA_NODES: usize = 1 << 16;
/// Most pages reported per file (4 GiB).
pub const MAX_FILE_PAGES: u64 = 1 << 20;

/// Why a page's `struct page` or a file's page cache could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// A kernel read without more to say than the read itself.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The pfn has no `struct page` (outside every memory section).
    #[error("pfn {pfn:#x} is in no memory section")]
    NoSection {
        /// The page frame number.
        pfn: u64,
    },
    /// The `struct page` of a pfn could not be read.
    #[error("struct page of pfn {pfn:#x}")]
    StructPage {
        /// The page frame number.
        pfn: u64,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
    /// An inode's `i_mapping` is not a kernel pointer.
    #[error("bad i_mapping {0:#x}")]
    BadMapping(u64),
}

/// A run of present user pages, contiguous both virtually and physically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// First virtual address (page-aligned).
    pub vaddr: u64,
    /// Guest-physical address of `vaddr`.
    pub phys: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// The pages are anonymous (`struct page` mapping has `PAGE_MAPPING_ANON`): private
    /// copies, as opposed to page-cache pages of a file.
    pub anon: bool,
}

/// Result of a page-table walk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageWalk {
    /// The present pages.
    pub runs: Vec<PageRun>,
    /// Pages whose anon-ness could not be read (taken as anonymous, so they get copied).
    pub anon_unknown: u64,
}

/// `SECTION_SIZE_BITS - PAGE_SHIFT` on x86-64: 128 MiB memory sections.
const PFN_SECTION_SHIFT: u32 = 15;
/// Low bits of `mem_section.section_mem_map` that hold flags, not the address.
const SECTION_MAP_FLAGS: u64 = 0x1f;

/// How pfns map to `struct page` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Model {
    /// `SPARSEMEM_VMEMMAP`: one virtual array from `vmemmap_base`.
    Vmemmap(u64),
    /// Classic `SPARSEMEM` (no vmemmap): per-section arrays, `(first pfn, encoded map)`
    /// where the page of `pfn` is at `map + pfn * sizeof(struct page)`.
    Sections(Vec<(u64, u64)>),
}

/// Where `struct page`s are: per-section maps from `mem_section` when the kernel has it
/// (this works for both the vmemmap and the classic sparse model), else `vmemmap_base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageArray {
    model: Model,
    /// `sizeof(struct page)`.
    pub page_size: u64,
    mapping: u64,
    compound_head: u64,
}

impl PageArray {
    /// Finds the `struct page` array.
    pub fn new(k: &Kernel<'_>) -> Self {
        let page_size = k
            .btf()
            .struct_id("page")
            .and_then(|id| k.btf().size_of(id).ok())
            .filter(|s| (32..=256).contains(s))
            .unwrap_or(64);
        let model = match sections(k, page_size) {
            Some(s) if !s.is_empty() => Model::Sections(s),
            _ => {
                let default = if k.layout().la57 {
                    DEFAULT_VMEMMAP_L5
                } else {
                    DEFAULT_VMEMMAP
                };
                Model::Vmemmap(
                    k.symbol("vmemmap_base")
                        .and_then(|a| k.read_u64(a))
                        .ok()
                        .filter(|&v| is_kernel_addr(v) && v & ((1 << 30) - 1) == 0)
                        .unwrap_or(default),
                )
            }
        };
        PageArray {
            model,
            page_size,
            mapping: k.offset_of("page", "mapping").unwrap_or(24),
            compound_head: k.offset_of("page", "compound_head").unwrap_or(8),
        }
    }

    /// Kernel address of the `struct page` of `pfn` (None outside every memory section).
    pub fn page_of(&self, pfn: u64) -> Option<u64> {
        match &self.model {
            Model::Vmemmap(base) => Some(base.wrapping_add(pfn.wrapping_mul(self.page_size))),
            Model::Sections(secs) => {
                let first = (pfn >> PFN_SECTION_SHIFT) << PFN_SECTION_SHIFT;
                let i = secs.binary_search_by_key(&first, |s| s.0).ok()?;
                Some(secs[i].1.wrapping_add(pfn.wrapping_mul(self.page_size)))
            }
        }
    }

    /// The pfn of the `struct page` at `page`, if it is one.
    pub fn pfn_of(&self, page: u64) -> Option<u64> {
        let from = |base: u64| -> Option<u64> {
            let off = page.checked_sub(base)?;
            (off % self.page_size == 0).then_some(off / self.page_size)
        };
        match &self.model {
            Model::Vmemmap(base) => from(*base).filter(|&pfn| pfn < 1 << 40),
            Model::Sections(secs) => secs.iter().find_map(|&(first, map)| {
                from(map).filter(|&pfn| pfn >= first && pfn < first + (1 << PFN_SECTION_SHIFT))
            }),
        }
    }

    /// True when the page (or the folio it belongs to) is anonymous.
    pub fn is_anon(&self, k: &Kernel<'_>, pfn: u64) -> Result<bool, PageError> {
        let mut page = self.page_of(pfn).ok_or(PageError::NoSection { pfn })?;
        let read = |va: u64| {
            k.read_u64(va)
                .map_err(|source| PageError::StructPage { pfn, source })
        };
        let head = read(page.wrapping_add(self.compound_head))?;
        if head & 1 != 0 {
            page = head - 1;
        }
        let mapping = read(page.wrapping_add(self.mapping))?;
        Ok(mapping & PAGE_MAPPING_ANON != 0)
    }
}

/// Reads the present memory sections from `mem_section` (`SPARSEMEM_EXTREME`: a pointer to
/// an array of root pointers, each to a page of `struct mem_section`).
fn sections(k: &Kernel<'_>, page_size: u64) -> Option<Vec<(u64, u64)>> {
    let sym = k.symbol("mem_section").ok()?;
    let roots = k.read_u64(sym).ok().filter(|&r| is_kernel_addr(r))?;
    let ms_size = k
        .btf()
        .struct_id("mem_section")
        .and_then(|id| k.btf().size_of(id).ok())
        .filter(|s| (8..=64).contains(s) && s.is_power_of_two())
        .unwrap_or(16);
    let per_root = 4096 / ms_size;
    let max_phys_bits = if k.layout().la57 { 52 } else { 46 };
    let nr_roots = (1u64 << (max_phys_bits - 12 - PFN_SECTION_SHIFT)) / per_root;
    let mut root_buf = vec![0u8; usize::try_from(nr_roots * 8).ok()?];
    k.read_bytes(roots, &mut root_buf).ok()?;
    let mut out = Vec::new();
    for (r, chunk) in root_buf.chunks_exact(8).enumerate() {
        let root = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8]));
        if root == 0 || !is_kernel_addr(root) {
            continue;
        }
        let mut secs = [0u8; 4096];
        if k.read_bytes(root, &mut secs).is_err() {
            continue;
        }
        let step = usize::try_from(ms_size).unwrap_or(16);
        for (i, s) in secs.chunks_exact(step).enumerate() {
            let map = u64::from_le_bytes(<[u8; 8]>::try_from(&s[..8]).unwrap_or([0; 8]));
            // SECTION_MARKED_PRESENT and SECTION_HAS_MEM_MAP.
            if map & 3 != 3 {
                continue;
            }
            let nr = r as u64 * per_root + i as u64;
            let first = nr << PFN_SECTION_SHIFT;
            let base = map & !SECTION_MAP_FLAGS;
            // The first page of the section must be addressable.
            let first_page = base.wrapping_add(first.wrapping_mul(page_size));
            if is_kernel_addr(first_page) && k.virt_to_phys(first_page).is_ok() {
                out.push((first, base));
            }
        }
    }
    Some(out)
}

struct Walker<'a, 'k> {
    k: &'a Kernel<'k>,
    pages: PageArray,
    start: u64,
    end: u64,
    tables: usize,
    npages: u64,
    out: Partial<PageWalk>,
    stopped: bool,
}

impl Walker<'_, '_> {
    fn emit(&mut self, vaddr: u64, phys: u64, len: u64, pfn_for_anon: u64) {
        let mut probe = [0u8; 1];
        let last = phys.wrapping_add(len - 1);
        if !self.k.mem().read_phys(phys, &mut probe) || !self.k.mem().read_phys(last, &mut probe) {
            self.out.problems.push(format!(
                "page at {vaddr:#x} maps {phys:#x}..{last:#x}, outside guest memory"
            ));
            return;
        }
        let anon = match self.pages.is_anon(self.k, pfn_for_anon) {
            Ok(a) => a,
            Err(_) => {
                self.out.value.anon_unknown += len / 4096;
                true
            }
        };
        self.npages += len / 4096;
        let runs = &mut self.out.value.runs;
        if let Some(r) = runs.last_mut() {
            if r.anon == anon
                && r.vaddr.wrapping_add(r.len) == vaddr
                && r.phys.wrapping_add(r.len) == phys
            {
                r.len += len;
                return;
            }
        }
        runs.push(PageRun {
            vaddr,
            phys,
            len,
            anon,
        });
    }

    fn walk(&mut self, table: u64, level: u32, base: u64) {
        if self.stopped {
            return;
        }
        if self.tables >= MAX_TABLES {
            self.out
                .problems
                .push(format!("more than {MAX_TABLES} page tables: stopped"));
            self.stopped = true;
            return;
        }
        self.tables += 1;
        let mut buf = [0u8; 4096];
        if !self.k.mem().read_phys(table, &mut buf) {
            self.out.problems.push(format!(
                "level-{level} page table at {table:#x} (for {base:#x}) is outside guest memory"
            ));
            return;
        }
        let shift = 12 + 9 * (level - 1);
        let size = 1u64 << shift;
        for (i, chunk) in buf.chunks_exact(8).enumerate() {
            let va = base.wrapping_add((i as u64) << shift);
            let va_end = va.wrapping_add(size);
            if va_end <= self.start || va >= self.end {
                continue;
            }
            let e = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8]));
            if e == 0 {
                continue;
            }
            let present = e & PRESENT != 0;
            let protnone = !present && e & PROTNONE != 0;
            let leaf_level = level == 1 || ((level == 2 || level == 3) && e & PSE != 0);
            if !(present || (protnone && leaf_level)) {
                self.out.problems.push(format!(
                    "level-{level} entry for {va:#x} is not present but not empty ({e:#x}): swapped out or migrating"
                ));
                continue;
            }
            // L1TF: the frame number of a non-present entry is stored inverted.
            let frame = (if present { e } else { !e }) & PTE_ADDR_MASK;
            if leaf_level {
                // Huge leaves: bit 12 is the PAT bit, not part of the frame.
                let frame = frame & !(size - 1);
                let from = va.max(self.start);
                let to = va_end.min(self.end);
                let phys = frame + (from - va);
                self.emit(from, phys, to - from, frame >> 12);
                if self.npages >= MAX_PAGES {
                    self.out
                        .problems
                        .push(format!("more than {MAX_PAGES} pages: stopped"));
                    self.stopped = true;
                    return;
                }
            } else {
                self.walk(frame, level - 1, va);
                if self.stopped {
                    return;
                }
            }
        }
    }
}

/// Walks the user page tables at guest-physical `pgd_phys` over `[start, end)` and returns
/// the present pages (including `PROT_NONE` ones) as runs merged where virtual and physical
/// addresses are contiguous and anon-ness is equal. Problems: unreadable tables, swapped-out
/// or migrating entries, frames outside guest memory.
pub fn user_page_runs(k: &Kernel<'_>, pgd_phys: u64, start: u64, end: u64) -> Partial<PageWalk> {
    let la57 = k.layout().la57;
    let user_top = if la57 { 1u64 << 56 } else { 1u64 << 47 };
    let mut w = Walker {
        k,
        pages: PageArray::new(k),
        start: start & !0xfff,
        end: end.min(user_top),
        tables: 0,
        npages: 0,
        out: Partial::ok(PageWalk::default()),
        stopped: false,
    };
    if w.start < w.end {
        w.walk(pgd_phys & PTE_ADDR_MASK, if la57 { 5 } else { 4 }, 0);
    }
    w.out
}

/// The cached pages of a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileContent {
    /// Kernel address of the inode.
    pub inode: u64,
    /// `i_size`.
    pub size: u64,
    /// `(page index, guest-physical address)` of each cached page, by index.
    pub pages: Vec<(u64, u64)>,
}

impl FileContent {
    /// The content as `(file offset, guest-physical address, length)` runs, merged where both
    /// are contiguous, clipped to `size`.
    pub fn runs(&self) -> Vec<(u64, u64, u64)> {
        let mut out: Vec<(u64, u64, u64)> = Vec::new();
        for &(idx, phys) in &self.pages {
            let Some(off) = idx.checked_mul(4096) else {
                continue;
            };
            if off >= self.size {
                continue;
            }
            let len = (self.size - off).min(4096);
            if let Some(r) = out.last_mut() {
                if r.0 + r.2 == off && r.1 + r.2 == phys && r.2 % 4096 == 0 {
                    r.2 += len;
                    continue;
                }
            }
            out.push((off, phys, len));
        }
        out
    }
}

/// The pages of a file on a disk that the dead kernel had not written back: cached pages
/// whose `struct page` is dirty or under writeback (a write the device may not have
/// done). `value.size` is `i_size`; problems as for [`file_pages`].
pub fn dirty_file_pages(k: &Kernel<'_>, inode: u64) -> Partial<FileContent> {
    let mut all = file_pages(k, inode);
    if !metadata_committed(k, inode) {
        // The journal replay will not bring the file's last metadata back (a file created
        // or grown since the last commit): its clean pages are not on the disk either, as
        // far as the replayed filesystem knows. Everything cached goes back.
        return all;
    }
    let bit = |name: &str, default: i64| {
        k.btf()
            .enumerator(name)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|&b| b < 64)
            .unwrap_or(u32::try_from(default).unwrap_or(0))
    };
    // Linux 6.1's values when BTF does not say.
    let unwritten = (1u64 << bit("PG_dirty", 3)) | (1u64 << bit("PG_writeback", 15));
    let pa = PageArray::new(k);
    let flags_off = k.offset_of("page", "flags").unwrap_or(0);
    let mut problems = Vec::new();
    all.value.pages.retain(|&(idx, phys)| {
        let pfn = phys >> 12;
        let flags = pa
            .page_of(pfn)
            .ok_or(PageError::NoSection { pfn })
            .and_then(|page| {
                k.read_u64(page.wrapping_add(flags_off))
                    .map_err(|source| PageError::StructPage { pfn, source })
            });
        match flags {
            Ok(f) => f & unwritten != 0,
            Err(e) => {
                if problems.len() < 8 {
                    problems.push(format!(
                        "inode {inode:#x} page {idx}: flags unreadable: {}",
                        error_chain(&e)
                    ));
                }
                false
            }
        }
    });
    all.problems.extend(problems);
    all
}

/// `EXT4_SUPER_MAGIC`.
const EXT4_SUPER_MAGIC: u64 = 0xEF53;

/// True when the ext4 inode at `inode` has no change newer than its journal's last
/// commit (`EXT4_I(inode)->i_sync_tid <= journal->j_commit_sequence`, as tids compare);
/// false when it has, or when that cannot be read (the cautious answer: more is written
/// back).
pub fn metadata_committed(k: &Kernel<'_>, inode: u64) -> bool {
    (|| -> Option<bool> {
        let sb = k.read_field("inode", "i_sb", inode).ok()?;
        if k.read_field("super_block", "s_magic", sb).ok()? != EXT4_SUPER_MAGIC {
            // Another filesystem: what it wrote back is taken to be there.
            return Some(true);
        }
        let vfs = k.offset_of("ext4_inode_info", "vfs_inode").ok()?;
        let ei = inode.checked_sub(vfs)?;
        let sync_tid = k.read_field("ext4_inode_info", "i_sync_tid", ei).ok()? & 0xffff_ffff;
        let sbi = k.read_field("super_block", "s_fs_info", sb).ok()?;
        if !crate::kernel::is_kernel_addr(sbi) {
            return None;
        }
        let journal = k.read_field("ext4_sb_info", "s_journal", sbi).ok()?;
        if journal == 0 {
            // No journal: nothing is replayed, what was written back is what is there.
            return Some(true);
        }
        if !crate::kernel::is_kernel_addr(journal) {
            return None;
        }
        let committed = k
            .read_field("journal_s", "j_commit_sequence", journal)
            .ok()?
            & 0xffff_ffff;
        // tid_geq: (int)(a - b) >= 0.
        let diff = u32::try_from(committed.wrapping_sub(sync_tid) & 0xffff_ffff).ok()?;
        Some(i32::from_ne_bytes(diff.to_ne_bytes()) >= 0)
    })()
    .unwrap_or(false)
}

/// True for an XArray internal entry (low bits `10`).
fn xa_is_internal(e: u64) -> bool {
    e & 3 == 2
}

/// Walks the page cache of the inode at `inode` (`i_mapping->i_pages`) and returns the
/// cached pages with the file size. Value entries (swapped-out shmem pages, shadow entries)
/// are reported as problems: their content is not in memory.
pub fn file_pages(k: &Kernel<'_>, inode: u64) -> Partial<FileContent> {
    let mut out = Partial::ok(FileContent {
        inode,
        ..FileContent::default()
    });
    let setup = (|| -> Result<_, PageError> {
        let size = k.read_field("inode", "i_size", inode)?;
        let mapping = k.read_field("inode", "i_mapping", inode)?;
        let pages_off = k.offset_of("address_space", "i_pages")?;
        let head_off = k.offset_of("xarray", "xa_head")?;
        if !is_kernel_addr(mapping) {
            return Err(PageError::BadMapping(mapping));
        }
        let head = k.read_u64(mapping.wrapping_add(pages_off).wrapping_add(head_off))?;
        Ok((size, head))
    })();
    let (size, head) = match setup {
        Ok(v) => v,
        Err(e) => {
            out.problems
                .push(format!("inode {inode:#x}: {}", error_chain(&e)));
            return out;
        }
    };
    out.value.size = size;
    let pa = PageArray::new(k);
    let slots = k.member("xa_node", "slots");
    let nslots = slots
        .as_ref()
        .ok()
        .and_then(|m| k.btf().array_len(m.type_id))
        .filter(|n| n.is_power_of_two() && (4..=64).contains(n))
        .unwrap_or(64);
    let chunk_shift = nslots.trailing_zeros();
    let slots_off = slots.map(|m| m.offset_bytes).unwrap_or(40);
    let shift_off = k.offset_of("xa_node", "shift").unwrap_or(0);
    let parent_off = k.offset_of("xa_node", "parent").unwrap_or(8);
    let limit = size.div_ceil(4096).min(MAX_FILE_PAGES);
    let what = format!("inode {inode:#x} page cache");

    let leaf = |out: &mut Partial<FileContent>, idx: u64, span: u64, e: u64| {
        if e & 1 != 0 {
            if idx < limit {
                out.problems.push(format!(
                    "{what}: page {idx} is not in memory (value entry {e:#x})"
                ));
            }
            return;
        }
        let Some(pfn) = pa.pfn_of(e) else {
            out.problems
                .push(format!("{what}: index {idx}: {e:#x} is not a struct page"));
            return;
        };
        for j in 0..span {
            let i = idx.saturating_add(j);
            if i >= limit {
                break;
            }
            out.value.pages.push((i, (pfn + j) << 12));
        }
    };

    if head == 0 {
        return out;
    }
    if !xa_is_internal(head) {
        leaf(&mut out, 0, 1, head);
        return out;
    }
    if head <= 4096 {
        return out; // retry/zero entry: nothing cached
    }
    // (node, first index, expected shift (None for the root), expected parent, depth)
    let mut stack: Vec<(u64, u64, Option<u32>, u64, u32)> = vec![(head - 2, 0, None, 0, 0)];
    let mut visited: HashSet<u64> = HashSet::new();
    while let Some((node, base, want_shift, parent, depth)) = stack.pop() {
        if visited.len() >= MAX_XA_NODES {
            out.problems
                .push(format!("{what}: more than {MAX_XA_NODES} nodes, stopped"));
            break;
        }
        if !is_kernel_addr(node) || node & 7 != 0 {
            out.problems
                .push(format!("{what}: bad node pointer {node:#x}"));
            continue;
        }
        if !visited.insert(node) {
            out.problems
                .push(format!("{what}: node {node:#x} reached twice"));
            continue;
        }
        let shift = match k.read_u8(node.wrapping_add(shift_off)) {
            Ok(s) => u32::from(s),
            Err(e) => {
                out.problems.push(format!(
                    "{what}: node {node:#x} unreadable: {}",
                    error_chain(&e)
                ));
                continue;
            }
        };
        if shift % chunk_shift != 0
            || shift + chunk_shift > 64
            || want_shift.is_some_and(|w| w != shift)
        {
            out.problems.push(format!(
                "{what}: node {node:#x} has shift {shift}, expected {want_shift:?}"
            ));
            continue;
        }
        let node_parent = k
            .read_u64(node.wrapping_add(parent_off))
            .unwrap_or(u64::MAX);
        let parent_ok = if parent == 0 {
            node_parent == 0
        } else {
            node_parent == parent
        };
        if !parent_ok {
            out.problems.push(format!(
                "{what}: node {node:#x} has parent {node_parent:#x}, expected {parent:#x}"
            ));
            continue;
        }
        if depth > 64 / chunk_shift {
            out.problems
                .push(format!("{what}: node {node:#x} too deep"));
            continue;
        }
        let mut buf = vec![0u8; usize::try_from(nslots * 8).unwrap_or(512)];
        if let Err(e) = k.read_bytes(node.wrapping_add(slots_off), &mut buf) {
            out.problems.push(format!(
                "{what}: node {node:#x} slots unreadable: {}",
                error_chain(&e)
            ));
            continue;
        }
        let span = 1u64 << shift;
        // The last leaf entry seen in this node: (slot, first index, pfn) for siblings.
        let mut canonical: Option<(u64, u64, u64)> = None;
        for (i, chunk) in buf.chunks_exact(8).enumerate() {
            let e = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8]));
            let i = i as u64;
            let idx = base.saturating_add(i << shift);
            if e == 0 {
                canonical = None;
                continue;
            }
            if idx >= limit {
                break;
            }
            if xa_is_internal(e) {
                if e > 4096 {
                    if shift == 0 {
                        out.problems.push(format!(
                            "{what}: node {node:#x} at shift 0 points to node {e:#x}"
                        ));
                    } else {
                        stack.push((e - 2, idx, Some(shift - chunk_shift), node, depth + 1));
                    }
                } else if (e >> 2) < nslots {
                    // Sibling of a multi-index entry: continues the canonical slot's folio.
                    if let Some((slot, first, pfn)) = canonical {
                        if slot == e >> 2 {
                            let p = pfn + (idx - first);
                            if let Some(page) = pa.page_of(p) {
                                leaf(&mut out, idx, span, page);
                            }
                        }
                    }
                }
                continue;
            }
            leaf(&mut out, idx, span, e);
            canonical = pa.pfn_of(e).map(|pfn| (i, idx, pfn));
        }
    }
    out.value.pages.sort_unstable();
    out.value.pages.dedup_by_key(|p| p.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::Btf;
    use crate::kernel::testmem::{dm, Mem};
    use crate::process::tests::btf;
    use crate::symbols::SymbolTable;

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81100100 D phys_base
ffffffff81101000 D init_top_pgt
ffffffff81102000 B mem_section
ffffffff81103000 D __pgtable_l5_enabled
ffffffff81400000 B _end
";
    const PGD: u64 = 0x40_0000;
    const PAGES: u64 = 0x18_0000;
    const ROOTS: u64 = 0x3a_0000;
    const SECS: u64 = 0x3b_0000;

    fn page(pfn: u64) -> u64 {
        PAGES + pfn * 64
    }

    /// Memory sections: section 0 has its struct pages at PAGES.
    fn base() -> Mem {
        let mut m = Mem::new(0x200_0000);
        m.put_u64(0x110_2000, dm(ROOTS));
        m.put_u64(ROOTS, dm(SECS));
        m.put_u64(SECS, dm(PAGES) | 3);
        m
    }

    fn run<T>(m: &Mem, f: impl FnOnce(&Kernel<'_>) -> T) -> T {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf: Btf = btf();
        let k = Kernel::new(m, &syms, &btf).expect("kernel");
        f(&k)
    }

    /// Page tables for 0x1000_0000 (4 KiB pages), 0x4000_0000 (2 MiB), 0x8000_0000 (1 GiB).
    fn world() -> Mem {
        let mut m = base();
        m.put_u64(PGD, 0x41_0000 | 7);
        // PUD: [0] -> PMD for 0..1G, [1] -> PMD for 1G..2G, [2] -> 1 GiB leaf at phys 0.
        m.put_u64(0x41_0000, 0x42_0000 | 7);
        m.put_u64(0x41_0008, 0x43_0000 | 7);
        m.put_u64(0x41_0010, 0x87);
        // 0x1000_0000: PMD index 128 -> PT.
        m.put_u64(0x42_0000 + 128 * 8, 0x44_0000 | 7);
        let pt = 0x44_0000;
        m.put_u64(pt, 0x50_0000 | 7);
        m.put_u64(pt + 8, 0x50_1000 | 7);
        m.put_u64(pt + 16, 0x50_2000 | 7);
        m.put_u64(pt + 24, !0x60_0000u64 & PTE_ADDR_MASK | PROTNONE | 0x60); // PROT_NONE
        m.put_u64(pt + 32, 0x1234 << 9); // swap entry
        m.put_u64(pt + 40, 0x50_3000 | 7);
        // 0x4000_0000: 2 MiB leaf at 0x80_0000 (PAT bit set: ignored).
        m.put_u64(0x43_0000, 0x80_0000 | PSE | (1 << 12) | 7);
        // struct pages: 0x500, 0x501, 0x800 anon; 0x503 a tail of 0x500; 0x502 page cache.
        for pfn in [0x500, 0x501, 0x800] {
            m.put_u64(page(pfn) + 24, dm(0x1_0000) | 1);
        }
        m.put_u64(page(0x502) + 24, dm(0x2_0000));
        m.put_u64(page(0x503) + 8, dm(page(0x500)) + 1);
        m
    }

    #[test]
    fn walks_small_huge_and_protnone_pages() {
        let m = world();
        let r = run(&m, |k| user_page_runs(k, PGD, 0x1000_0000, 0x1001_0000));
        let runs: Vec<(u64, u64, u64, bool)> = r
            .value
            .runs
            .iter()
            .map(|r| (r.vaddr, r.phys, r.len, r.anon))
            .collect();
        assert_eq!(
            runs,
            [
                (0x1000_0000, 0x50_0000, 0x2000, true),
                (0x1000_2000, 0x50_2000, 0x1000, false),
                (0x1000_3000, 0x60_0000, 0x1000, false),
                (0x1000_5000, 0x50_3000, 0x1000, true),
            ]
        );
        assert_eq!(r.value.anon_unknown, 0);
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].contains("0x10004000"), "{:?}", r.problems);

        // 2 MiB leaf, clipped to the range asked for.
        let r = run(&m, |k| user_page_runs(k, PGD, 0x4000_1000, 0x4000_3000));
        assert!(r.is_complete(), "{:?}", r.problems);
        assert_eq!(
            r.value.runs,
            [PageRun {
                vaddr: 0x4000_1000,
                phys: 0x80_1000,
                len: 0x2000,
                anon: true
            }]
        );
        // 1 GiB leaf at phys 0.
        let r = run(&m, |k| user_page_runs(k, PGD, 0x8010_0000, 0x8010_2000));
        assert!(r.is_complete(), "{:?}", r.problems);
        assert_eq!(
            (r.value.runs[0].phys, r.value.runs[0].len),
            (0x10_0000, 0x2000)
        );
        // Nothing mapped: no runs, no problems, and a huge range is quick.
        let r = run(&m, |k| {
            user_page_runs(k, PGD, 0x100_0000_0000, 0x7fff_ffff_f000)
        });
        assert!(r.is_complete() && r.value.runs.is_empty());
    }

    #[test]
    fn corrupt_page_tables_are_reported_and_bounded() {
        // A table outside memory; a frame outside memory.
        let mut m = world();
        m.put_u64(0x42_0000 + 128 * 8, 0x7000_0000 | 7);
        m.put_u64(0x43_0000, 0x7000_0000 | PSE | 7);
        let r = run(&m, |k| user_page_runs(k, PGD, 0, 0x8000_0000));
        assert!(r.value.runs.is_empty());
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        // Every entry of every level points back at the top table: the budget stops it.
        let mut m = base();
        for i in 0..512 {
            m.put_u64(PGD + i * 8, PGD | 7);
        }
        let r = run(&m, |k| user_page_runs(k, PGD, 0, u64::MAX));
        assert!(
            r.problems.iter().any(|p| p.contains("stopped")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn five_level_tables() {
        let mut m = base();
        m.put_u32(0x110_3000, 1);
        let va = 0x00ff_0000_0000_0000u64 + 0x1000;
        let idx = |s: u32| (va >> s) & 0x1ff;
        m.put_u64(PGD + idx(48) * 8, 0x41_0000 | 7);
        m.put_u64(0x41_0000 + idx(39) * 8, 0x42_0000 | 7);
        m.put_u64(0x42_0000 + idx(30) * 8, 0x43_0000 | 7);
        m.put_u64(0x43_0000 + idx(21) * 8, 0x44_0000 | 7);
        m.put_u64(0x44_0000 + idx(12) * 8, 0x50_0000 | 7);
        let r = run(&m, |k| {
            assert!(k.layout().la57);
            user_page_runs(k, PGD, va - 0x1000, va + 0x1000)
        });
        assert!(r.is_complete(), "{:?}", r.problems);
        assert_eq!(
            (r.value.runs[0].vaddr, r.value.runs[0].phys),
            (va, 0x50_0000)
        );
    }

    const INODE: u64 = 0x70_0000;
    const SUPER: u64 = 0x70_8000;
    const MAPPING: u64 = 0x70_1000;
    const N1: u64 = 0x70_2000;
    const N2: u64 = 0x70_3000;

    /// A page cache: root node (shift 4) -> N2 (shift 0) for indices 0..15 and an order-4
    /// folio at 16..31.
    fn cache() -> Mem {
        let mut m = base();
        // A superblock of another filesystem than ext4 (no journal to compare with).
        m.put_u64(INODE + 24, dm(SUPER));
        m.put_u64(SUPER + 96, 0x9123_683e);
        m.put_u64(INODE + 32, dm(MAPPING));
        m.put_u64(INODE + 56, 32 * 4096 - 100);
        m.put_u64(MAPPING + 16, dm(N1) | 2);
        m.put(N1, &[4]);
        m.put_u64(N1 + 40, dm(N2) | 2);
        m.put_u64(N1 + 48, dm(page(0xa00)));
        m.put(N2, &[0]);
        m.put_u64(N2 + 8, dm(N1));
        m.put_u64(N2 + 40, dm(page(0x900)));
        m.put_u64(N2 + 48, dm(page(0x905)));
        m.put_u64(N2 + 56, (7 << 1) | 1); // value entry: swapped out
        m.put_u64(N2 + 64, dm(page(0x910)));
        m.put_u64(N2 + 72, (3 << 2) | 2); // sibling of slot 3
        m
    }

    #[test]
    fn walks_the_page_cache() {
        let m = cache();
        let r = run(&m, |k| file_pages(k, dm(INODE)));
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].contains("page 2"), "{:?}", r.problems);
        let mut want = vec![
            (0, 0x90_0000),
            (1, 0x90_5000),
            (3, 0x91_0000),
            (4, 0x91_1000),
        ];
        want.extend((16..32).map(|i| (i, 0xa0_0000 + (i - 16) * 4096)));
        assert_eq!(r.value.pages, want);
        assert_eq!(
            r.value.runs(),
            [
                (0, 0x90_0000, 0x1000),
                (0x1000, 0x90_5000, 0x1000),
                (0x3000, 0x91_0000, 0x2000),
                (0x1_0000, 0xa0_0000, 0xff9c),
            ]
        );
        // A single page at the root.
        let mut m = cache();
        m.put_u64(MAPPING + 16, dm(page(0x42)));
        let r = run(&m, |k| file_pages(k, dm(INODE)));
        assert!(r.is_complete());
        assert_eq!(r.value.pages, [(0, 0x4_2000)]);
    }

    #[test]
    fn only_pages_not_yet_written_back_are_dirty() {
        let mut m = cache();
        m.put_u64(page(0x905), 1 << 3); // PG_dirty
        m.put_u64(page(0xa03), 1 << 15); // PG_writeback
        m.put_u64(page(0x910), 1 << 2); // PG_uptodate only: on the disk already
        let r = run(&m, |k| dirty_file_pages(k, dm(INODE)));
        assert_eq!(r.value.pages, [(1, 0x90_5000), (19, 0xa0_3000)]);
        assert_eq!(
            r.value.size,
            run(&m, |k| file_pages(k, dm(INODE))).value.size
        );
        // A clean cache: nothing to write.
        let r = run(&cache(), |k| dirty_file_pages(k, dm(INODE)));
        assert!(r.value.pages.is_empty());
    }

    #[test]
    fn corrupt_page_caches_terminate_with_reasons() {
        // A cycle: the root's third slot points to N2 again; N2's sixth slot to the root.
        let mut m = cache();
        m.put_u64(N1 + 48, dm(N2) | 2);
        m.put_u64(N2 + 80, dm(N1) | 2);
        let r = run(&m, |k| file_pages(k, dm(INODE)));
        assert!(
            r.problems.iter().any(|p| p.contains("twice")),
            "{:?}",
            r.problems
        );
        assert!(
            r.problems.iter().any(|p| p.contains("shift 0 points")),
            "{:?}",
            r.problems
        );
        // The root points to itself.
        let mut m = cache();
        m.put_u64(N1 + 40, dm(N1) | 2);
        let r = run(&m, |k| file_pages(k, dm(INODE)));
        assert!(!r.is_complete());
        // Wild node, wild mapping, garbage slot.
        let mut m = cache();
        m.put_u64(N1 + 40, dm(0x7000_0000) | 2);
        m.put_u64(N1 + 48, 0xffff_8880_0000_1235);
        let r = run(&m, |k| file_pages(k, dm(INODE)));
        assert!(r.value.pages.is_empty());
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        let mut m = cache();
        m.put_u64(INODE + 32, 0x10);
        let r = run(&m, |k| file_pages(k, dm(INODE)));
        assert!(r.problems[0].contains("i_mapping"));
        // A wrong parent pointer loses the subtree.
        let mut m = cache();
        m.put_u64(N2 + 8, dm(N2));
        let r = run(&m, |k| file_pages(k, dm(INODE)));
        assert!(r.problems.iter().any(|p| p.contains("parent")));
        assert_eq!(r.value.pages.len(), 16);
    }
}
