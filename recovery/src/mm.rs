//! A process's address space: `mm_struct` bounds, the VMAs in its maple tree (`mm_mt`), the
//! files they map, and the command line read from user memory.
//!
//! The maple-tree walk is breadth-first with a node cap, a visited set, range sanity
//! (`min <= pivot <= max`, pivots increasing), a parent-pointer check, and a check that each
//! VMA covers exactly the range the tree files it under. A bad node loses its subtree and
//! is reported; nothing panics or loops.

use std::collections::{HashSet, VecDeque};
use std::fmt;

use crate::kernel::{is_kernel_addr, Kernel, KernelError};
use crate::pages::{user_page_runs, PageWalk};
use crate::tasks::is_user_addr;
use crate::{error_chain, Partial};

/// `VM_READ`.
pub const VM_READ: u64 = 0x1;
/// `VM_WRITE`.
pub const VM_WRITE: u64 = 0x2;
/// `VM_EXEC`.
pub const VM_EXEC: u64 = 0x4;
/// `VM_SHARED`.
pub const VM_SHARED: u64 = 0x8;
/// `VM_GROWSDOWN`.
pub const VM_GROWSDOWN: u64 = 0x100;
/// `VM_PFNMAP`: raw frames without `struct page` (device memory, vvar).
pub const VM_PFNMAP: u64 = 0x400;
/// `VM_IO`: memory-mapped I/O.
pub const VM_IO: u64 = 0x4000;
/// Longest `saved_auxv` read (`AT_VECTOR_SIZE` is 46 on x86-64).
const MAX_AUXV_WORDS: u64 = 128;

/// Most maple nodes visited per tree.
pub const MAX_MAPLE_NODES: usize = 1 << 16;
/// The words of the problem reported when the areas found and `map_count` disagree (a
/// crash in the middle of an mmap, munmap, mprotect or brk, which the manifest tolerates).
pub const MAP_COUNT_MISMATCH: &str = "VMAs but map_count is";
/// Most VMAs returned per mm (`sysctl vm.max_map_count` defaults to 65530).
pub const MAX_VMAS: usize = 1 << 18;
/// Deepest maple tree accepted (real trees are far shallower).
const MAX_MAPLE_DEPTH: u32 = 32;
/// Most path components followed up a dentry chain.
const MAX_PATH_COMPONENTS: usize = 256;
/// Longest path assembled.
const MAX_PATH_LEN: usize = 4096;
/// Longest command line read.
pub const MAX_CMDLINE: u64 = 4096;
/// `XA_ZERO_ENTRY`, a reserved maple-tree value.
const XA_ZERO_ENTRY: u64 = 1030;

/// Why a path, an area or the auxiliary vector of an address space could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmError {
    /// A kernel read without more to say than the read itself.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// The dentry chain is longer than [`MAX_PATH_COMPONENTS`] (or cyclic).
    #[error("dentry {dentry:#x}: path deeper than {MAX_PATH_COMPONENTS}")]
    PathTooDeep {
        /// The dentry whose path was asked for.
        dentry: u64,
    },
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("dentry {dentry:#x}: path longer than {MAX_PATH_LEN}")]
    PathTooLong {
        /// The dentry whose path was asked for.
        dentry: u64,
    },
    /// A `d_parent` is not a kernel pointer.
    #[error("dentry {dentry:#x}: bad d_parent {parent:#x}")]
    BadParent {
        /// The dentry holding it.
        dentry: u64,
        /// The pointer.
        parent: u64,
    },
    /// A dentry's name is longer than any name can be.
    #[error("dentry {dentry:#x}: name length {len}")]
    NameLength {
        /// The dentry.
        dentry: u64,
        /// The length it claims.
        len: u64,
    },
    /// `saved_auxv` has no terminating `AT_NULL` pair.
    #[error("no AT_NULL in {words} words")]
    NoAtNull {
        /// Words read.
        words: u64,
    },
    /// A maple-tree entry is not a plausible `vm_area_struct *`.
    #[error("maple entry {first:#x}..{last:#x}: bad VMA pointer {vma:#x}")]
    BadVma {
        /// First index of the entry.
        first: u64,
        /// Last index of the entry.
        last: u64,
        /// The pointer.
        vma: u64,
    },
    /// A field of a `vm_area_struct` could not be read.
    #[error("vma {vma:#x}: {field}")]
    VmaField {
        /// The `vm_area_struct`.
        vma: u64,
        /// The field.
        field: &'static str,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
    /// A VMA's range is not the one the tree files it under.
    #[error(
        "vma {vma:#x}: covers {start:#x}..{end:#x} but the tree files it under {first:#x}..={last:#x}"
    )]
    VmaRange {
        /// The `vm_area_struct`.
        vma: u64,
        /// Its `vm_start`.
        start: u64,
        /// Its `vm_end`.
        end: u64,
        /// First index of the tree entry.
        first: u64,
        /// Last index of the tree entry.
        last: u64,
    },
    /// A VMA belongs to another address space.
    #[error("vma {vma:#x} ({start:#x}): belongs to mm {vm_mm:#x}, not this one")]
    ForeignVma {
        /// The `vm_area_struct`.
        vma: u64,
        /// Its `vm_start`.
        start: u64,
        /// Its `vm_mm`.
        vm_mm: u64,
    },
    /// The path of a VMA's file could not be resolved.
    #[error("vma {vma:#x} ({start:#x}): file")]
    VmaFile {
        /// The `vm_area_struct`.
        vma: u64,
        /// Its `vm_start`.
        start: u64,
        /// Why.
        #[source]
        source: Box<MmError>,
    },
}

/// One memory area (`vm_area_struct`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// Kernel address of the `vm_area_struct`.
    pub addr: u64,
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `vm_flags` (`VM_*`).
    pub flags: u64,
    /// `vm_pgoff`: file offset in pages.
    pub pgoff: u64,
    /// Kernel address of `vm_file` (0 when anonymous).
    pub file_addr: u64,
    /// Path of the mapped file, when it could be resolved.
    pub file: Option<String>,
    /// A label like `/proc/PID/maps`: `[heap]`, `[stack]`, `[vdso]`, `[vvar]`.
    pub name: Option<String>,
    /// `vm_ops` (0 for anonymous memory).
    pub ops: u64,
    /// The present pages (not walked for `VM_IO`/`VM_PFNMAP` areas and the vDSO/vvar).
    pub pages: Partial<PageWalk>,
}

impl Vma {
    /// `rwxp`-style permissions.
    pub fn perms(&self) -> String {
        let f = |bit, c| if self.flags & bit != 0 { c } else { '-' };
        [
            f(VM_READ, 'r'),
            f(VM_WRITE, 'w'),
            f(VM_EXEC, 'x'),
            if self.flags & VM_SHARED != 0 {
                's'
            } else {
                'p'
            },
        ]
        .iter()
        .collect()
    }
}

/// A process's memory description (`mm_struct`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MmInfo {
    /// Kernel address of the `mm_struct`.
    pub addr: u64,
    /// `pgd` (a direct-map address).
    pub pgd: u64,
    /// Guest-physical address of the top page table (for user-memory reads).
    pub pgd_phys: u64,
    /// `map_count`: how many VMAs the kernel says there are.
    pub map_count: u32,
    #[allow(missing_docs)]
    pub start_code: u64,
    #[allow(missing_docs)]
    pub end_code: u64,
    #[allow(missing_docs)]
    pub start_data: u64,
    #[allow(missing_docs)]
    pub end_data: u64,
    #[allow(missing_docs)]
    pub start_brk: u64,
    #[allow(missing_docs)]
    pub brk: u64,
    #[allow(missing_docs)]
    pub start_stack: u64,
    #[allow(missing_docs)]
    pub arg_start: u64,
    #[allow(missing_docs)]
    pub arg_end: u64,
    #[allow(missing_docs)]
    pub env_start: u64,
    #[allow(missing_docs)]
    pub env_end: u64,
    /// The command line (argv), read from user memory.
    pub cmdline: Vec<String>,
    /// Path of `exe_file`.
    pub exe: Option<String>,
    /// The VMAs, sorted by address.
    pub vmas: Vec<Vma>,
    /// Kernel address of `exe_file` (0 when none).
    pub exe_file: u64,
    /// `saved_auxv` up to and including the `AT_NULL` pair.
    pub auxv: Vec<u64>,
}

impl fmt::Display for Vma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:012x}-{:012x} {} {:08x}",
            self.start,
            self.end,
            self.perms(),
            // Like /proc/PID/maps: the file offset, 0 for anonymous memory.
            if self.file_addr != 0 {
                self.pgoff.wrapping_mul(4096)
            } else {
                0
            }
        )?;
        match (&self.file, &self.name) {
            (Some(p), _) => write!(f, " {p}"),
            (None, Some(n)) => write!(f, " {n}"),
            (None, None) if self.file_addr != 0 => write!(f, " <file {:#x}>", self.file_addr),
            (None, None) => Ok(()),
        }
    }
}

/// One maple-tree entry: inclusive range and the stored pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapleEntry {
    /// First index.
    pub first: u64,
    /// Last index (inclusive).
    pub last: u64,
    /// The stored value (a `vm_area_struct *` in `mm_mt`).
    pub value: u64,
}

fn xa_is_internal(v: u64) -> bool {
    v & 3 == 2
}

fn xa_is_node(v: u64) -> bool {
    xa_is_internal(v) && v > 4096
}

/// A slot of an internal maple node holds an encoded child: the 256-byte aligned node
/// address | type << 3 | `MAPLE_ENODE_NULL` (4); only the root carries `MAPLE_ROOT_NODE` (2).
fn mte_is_child_node(v: u64) -> bool {
    v & 0x4 != 0 && v & 0x3 == 0 && (v & !0xff) > 4096
}

/// Node geometry: (pivots offset, pivot count, slots offset, slot count, meta.end offset).
#[derive(Debug, Clone, Copy)]
struct NodeShape {
    pivots: usize,
    npivots: usize,
    slots: usize,
    nslots: usize,
    meta_end: usize,
}

/// Offsets inside `struct maple_node` (from BTF when present; the 6.1 layout otherwise).
#[derive(Debug, Clone, Copy)]
struct MapleLayout {
    range: NodeShape,
    arange: NodeShape,
}

impl MapleLayout {
    fn new(k: &Kernel<'_>) -> Self {
        let shape = |s: &str, default: NodeShape| -> NodeShape {
            let get = || -> Result<NodeShape, KernelError> {
                let piv = k.member(s, "pivot")?;
                let slot = k.member(s, "slot")?;
                let meta = k.member(s, "meta.end")?;
                let n = |m: &crate::btf::Member| {
                    k.btf()
                        .array_len(m.type_id)
                        .and_then(|v| usize::try_from(v).ok())
                        .unwrap_or(0)
                };
                let us = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
                Ok(NodeShape {
                    pivots: us(piv.offset_bytes),
                    npivots: n(&piv),
                    slots: us(slot.offset_bytes),
                    nslots: n(&slot),
                    meta_end: us(meta.offset_bytes),
                })
            };
            match get() {
                Ok(sh)
                    if sh.npivots >= 1
                        && sh.npivots + 1 == sh.nslots
                        && sh.slots + sh.nslots * 8 <= 256
                        && sh.pivots + sh.npivots * 8 <= 256
                        && sh.meta_end < 256 =>
                {
                    sh
                }
                _ => default,
            }
        };
        MapleLayout {
            range: shape(
                "maple_range_64",
                NodeShape {
                    pivots: 8,
                    npivots: 15,
                    slots: 128,
                    nslots: 16,
                    meta_end: 248,
                },
            ),
            arange: shape(
                "maple_arange_64",
                NodeShape {
                    pivots: 8,
                    npivots: 9,
                    slots: 80,
                    nslots: 10,
                    meta_end: 240,
                },
            ),
        }
    }
}

fn word(buf: &[u8; 256], off: usize) -> u64 {
    buf.get(off..off + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// Walks the maple tree at kernel address `tree` (a `struct maple_tree`) and returns its
/// non-empty entries in index order.
pub fn walk_maple_tree(k: &Kernel<'_>, tree: u64, what: &str) -> Partial<Vec<MapleEntry>> {
    let mut out = Partial::ok(Vec::new());
    let root_off = k.offset_of("maple_tree", "ma_root").unwrap_or(8);
    let root = match k.read_u64(tree.wrapping_add(root_off)) {
        Ok(r) => r,
        Err(e) => {
            out.problems
                .push(format!("{what}: root unreadable: {}", error_chain(&e)));
            return out;
        }
    };
    if root == 0 {
        return out;
    }
    if !xa_is_node(root) {
        if !xa_is_internal(root) {
            out.value.push(MapleEntry {
                first: 0,
                last: 0,
                value: root,
            });
        }
        return out;
    }
    let layout = MapleLayout::new(k);
    // (encoded node, min, max, expected parent node (0 = root), depth)
    let mut queue: VecDeque<(u64, u64, u64, u64, u32)> = VecDeque::new();
    queue.push_back((root, 0, u64::MAX, 0, 0));
    let mut visited: HashSet<u64> = HashSet::new();
    while let Some((enode, min, max, parent, depth)) = queue.pop_front() {
        let node = enode & !0xff;
        let ty = (enode >> 3) & 0xf;
        if visited.len() >= MAX_MAPLE_NODES {
            out.problems.push(format!(
                "{what}: more than {MAX_MAPLE_NODES} nodes, stopped"
            ));
            break;
        }
        if depth > MAX_MAPLE_DEPTH {
            out.problems.push(format!(
                "{what}: node {node:#x} deeper than {MAX_MAPLE_DEPTH}"
            ));
            continue;
        }
        if !is_kernel_addr(node) {
            out.problems
                .push(format!("{what}: bad node pointer {enode:#x}"));
            continue;
        }
        if !visited.insert(node) {
            out.problems
                .push(format!("{what}: node {node:#x} reached twice"));
            continue;
        }
        if min > max {
            out.problems.push(format!(
                "{what}: node {node:#x} has range {min:#x}..{max:#x}"
            ));
            continue;
        }
        let mut buf = [0u8; 256];
        if let Err(e) = k.read_bytes(node, &mut buf) {
            out.problems.push(format!(
                "{what}: node {node:#x} unreadable: {}",
                error_chain(&e)
            ));
            continue;
        }
        let node_parent = word(&buf, 0);
        if node_parent & !0xff == node {
            out.problems.push(format!(
                "{what}: node {node:#x} is dead (parent points to itself)"
            ));
            continue;
        }
        if parent == 0 {
            // The root's parent is the tree itself with MA_ROOT_PARENT (bit 0) set.
            if node_parent & 1 == 0 || node_parent & !1 != tree {
                out.problems.push(format!(
                    "{what}: root node {node:#x} has parent {node_parent:#x}, expected {:#x}",
                    tree | 1
                ));
            }
        } else if node_parent & !0xff != parent {
            out.problems.push(format!(
                "{what}: node {node:#x} has parent {node_parent:#x}, expected {parent:#x}"
            ));
            continue;
        }
        let leaf = ty < 2;
        let (shape, end) = match ty {
            // maple_dense: 31 single-index slots after the parent pointer.
            0 => {
                for i in 0..31u64 {
                    let v = word(&buf, 8 + usize::try_from(i).unwrap_or(0) * 8);
                    let Some(idx) = min.checked_add(i) else { break };
                    if idx > max {
                        break;
                    }
                    if v != 0 && !xa_is_internal(v) {
                        out.value.push(MapleEntry {
                            first: idx,
                            last: idx,
                            value: v,
                        });
                    }
                }
                continue;
            }
            1 | 2 => {
                let sh = layout.range;
                let last_pivot = word(&buf, sh.pivots + (sh.npivots - 1) * 8);
                let end = if last_pivot == 0 {
                    usize::from(buf[sh.meta_end])
                } else if last_pivot == max {
                    sh.npivots - 1
                } else {
                    sh.npivots
                };
                (sh, end)
            }
            3 => {
                let sh = layout.arange;
                (sh, usize::from(buf[sh.meta_end]))
            }
            _ => {
                out.problems
                    .push(format!("{what}: node {node:#x} has unknown type {ty}"));
                continue;
            }
        };
        if end >= shape.nslots {
            out.problems.push(format!(
                "{what}: node {node:#x} claims {end} as its last slot"
            ));
            continue;
        }
        let mut prev = min;
        for i in 0..=end {
            let piv = if i < end {
                word(&buf, shape.pivots + i * 8)
            } else {
                max
            };
            if piv < prev || piv > max {
                out.problems.push(format!(
                    "{what}: node {node:#x} slot {i}: pivot {piv:#x} outside {prev:#x}..{max:#x}"
                ));
                break;
            }
            let slot = word(&buf, shape.slots + i * 8);
            if leaf {
                if slot != 0 && !xa_is_internal(slot) {
                    if out.value.len() >= MAX_VMAS {
                        out.problems
                            .push(format!("{what}: more than {MAX_VMAS} entries, stopped"));
                        return out;
                    }
                    out.value.push(MapleEntry {
                        first: prev,
                        last: piv,
                        value: slot,
                    });
                } else if slot != 0 && slot != XA_ZERO_ENTRY {
                    out.problems.push(format!(
                        "{what}: leaf {node:#x} slot {i} holds internal entry {slot:#x}"
                    ));
                }
            } else if slot != 0 {
                if mte_is_child_node(slot) {
                    queue.push_back((slot, prev, piv, node, depth + 1));
                } else {
                    out.problems.push(format!(
                        "{what}: node {node:#x} slot {i} is not a node ({slot:#x})"
                    ));
                }
            }
            if piv == u64::MAX {
                break;
            }
            prev = piv + 1;
        }
    }
    out.value.sort_by_key(|e| e.first);
    out
}

/// Resolves the path of `struct file` at `file`: dentry names up to the root, crossing
/// mounts. Pseudo files (pipes, sockets, anon inodes) give `"[...]"` names.
pub fn file_path(k: &Kernel<'_>, file: u64) -> Result<String, MmError> {
    let dentry = k.read_field("file", "f_path.dentry", file)?;
    let vfsmnt = k.read_field("file", "f_path.mnt", file)?;
    dentry_path(k, dentry, vfsmnt)
}

/// Path of `dentry` under the `vfsmount` at `vfsmnt` (0 = do not cross mounts).
pub fn dentry_path(k: &Kernel<'_>, dentry: u64, vfsmnt: u64) -> Result<String, MmError> {
    let d_parent = k.offset_of("dentry", "d_parent")?;
    let d_name_len = k.member("dentry", "d_name.len")?;
    let d_name_ptr = k.offset_of("dentry", "d_name.name")?;
    // Pseudo filesystems name their files through d_op->d_dname.
    if let (Ok(d_op_off), Ok(dname_off)) = (
        k.offset_of("dentry", "d_op"),
        k.offset_of("dentry_operations", "d_dname"),
    ) {
        let d_op = k.read_u64(dentry.wrapping_add(d_op_off))?;
        if d_op != 0 && k.read_u64(d_op.wrapping_add(dname_off)).unwrap_or(0) != 0 {
            // Like drgn: name it by filesystem type (pipefs, sockfs, anon_inodefs, ...).
            let fstype = (|| -> Result<String, KernelError> {
                let sb = k.read_field("dentry", "d_sb", dentry)?;
                let ty = k.read_field("super_block", "s_type", sb)?;
                let name = k.read_field("file_system_type", "name", ty)?;
                k.read_cstr(name, 64)
            })()
            .unwrap_or_default();
            let name = read_dname(k, dentry, &d_name_len, d_name_ptr).unwrap_or_default();
            return Ok(match (fstype.is_empty(), name.is_empty()) {
                (false, false) => format!("[{fstype}:{name}]"),
                (false, true) => format!("[{fstype}]"),
                (true, _) => format!("[{name}]"),
            });
        }
    }
    // Mount crossing, when the layout is known.
    let mnt_layout = (|| -> Result<(u64, u64, u64, u64), KernelError> {
        Ok((
            k.offset_of("mount", "mnt")?,
            k.offset_of("mount", "mnt_parent")?,
            k.offset_of("mount", "mnt_mountpoint")?,
            k.offset_of("vfsmount", "mnt_root")?,
        ))
    })()
    .ok()
    .filter(|_| vfsmnt != 0);
    let mut mount = mnt_layout.map(|(mnt_off, ..)| vfsmnt.wrapping_sub(mnt_off));

    let deleted = is_unhashed(k, dentry);
    let mut parts: Vec<String> = Vec::new();
    let mut total = 0usize;
    let mut cur = dentry;
    let mut steps = 0usize;
    loop {
        steps += 1;
        if steps > MAX_PATH_COMPONENTS {
            return Err(MmError::PathTooDeep { dentry });
        }
        if let (Some((mnt_off, parent_off, mp_off, root_off)), Some(m)) = (mnt_layout, mount) {
            let mnt_root = k.read_u64(m.wrapping_add(mnt_off).wrapping_add(root_off))?;
            if cur == mnt_root {
                let parent = k.read_u64(m.wrapping_add(parent_off))?;
                if parent == m || parent == 0 {
                    break;
                }
                cur = k.read_u64(m.wrapping_add(mp_off))?;
                mount = Some(parent);
                continue;
            }
        }
        let parent = k.read_u64(cur.wrapping_add(d_parent))?;
        if parent == cur {
            break;
        }
        if !is_kernel_addr(parent) {
            return Err(MmError::BadParent {
                dentry: cur,
                parent,
            });
        }
        let name = read_dname(k, cur, &d_name_len, d_name_ptr)?;
        total += name.len() + 1;
        if total > MAX_PATH_LEN {
            return Err(MmError::PathTooLong { dentry });
        }
        parts.push(name);
        cur = parent;
    }
    let mut path = String::with_capacity(total + 1);
    for p in parts.iter().rev() {
        path.push('/');
        path.push_str(p);
    }
    if path.is_empty() {
        path.push('/');
    }
    if deleted {
        path.push_str(" (deleted)");
    }
    Ok(path)
}

fn read_dname(
    k: &Kernel<'_>,
    dentry: u64,
    len_m: &crate::btf::Member,
    ptr_off: u64,
) -> Result<String, MmError> {
    let len = k.read_member(len_m, dentry)?;
    let ptr = k.read_u64(dentry.wrapping_add(ptr_off))?;
    if len > 255 {
        return Err(MmError::NameLength { dentry, len });
    }
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
    k.read_bytes(ptr, &mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A dentry that is not hashed (and not a root) has been deleted.
fn is_unhashed(k: &Kernel<'_>, dentry: u64) -> bool {
    let (Ok(pprev), Ok(parent)) = (
        k.read_field("dentry", "d_hash.pprev", dentry),
        k.read_field("dentry", "d_parent", dentry),
    ) else {
        return false;
    };
    pprev == 0 && parent != dentry
}

/// Reads the `mm_struct` at `mm`: bounds, VMAs (with file paths and labels), command line.
pub fn read_mm(k: &Kernel<'_>, mm: u64) -> Partial<MmInfo> {
    let mut out = Partial::ok(MmInfo {
        addr: mm,
        ..MmInfo::default()
    });
    let info = &mut out.value;
    let problems = &mut out.problems;
    let mut field = |name: &str| match k.read_field("mm_struct", name, mm) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("mm {mm:#x}: {name}: {}", error_chain(&e)));
            0
        }
    };
    info.pgd = field("pgd");
    info.map_count = u32::try_from(field("map_count")).unwrap_or(u32::MAX);
    info.start_code = field("start_code");
    info.end_code = field("end_code");
    info.start_data = field("start_data");
    info.end_data = field("end_data");
    info.start_brk = field("start_brk");
    info.brk = field("brk");
    info.start_stack = field("start_stack");
    info.arg_start = field("arg_start");
    info.arg_end = field("arg_end");
    info.env_start = field("env_start");
    info.env_end = field("env_end");
    let exe_file = k.read_field("mm_struct", "exe_file", mm).unwrap_or(0);
    info.exe_file = exe_file;
    match read_auxv(k, mm) {
        Ok(a) => info.auxv = a,
        Err(e) => problems.push(format!("mm {mm:#x}: saved_auxv: {}", error_chain(&e))),
    }
    if exe_file != 0 {
        info.exe = file_path(k, exe_file)
            .map_err(|e| problems.push(format!("mm {mm:#x}: exe_file: {}", error_chain(&e))))
            .ok();
    }

    match k.virt_to_phys(info.pgd) {
        Ok(p) if info.pgd != 0 => info.pgd_phys = p,
        Ok(_) => problems.push(format!("mm {mm:#x}: pgd is NULL")),
        Err(e) => problems.push(format!(
            "mm {mm:#x}: pgd {:#x}: {}",
            info.pgd,
            error_chain(&e)
        )),
    }
    if info.pgd_phys != 0 && info.arg_end > info.arg_start && is_user_addr(info.arg_end) {
        let len = (info.arg_end - info.arg_start).min(MAX_CMDLINE);
        let bytes = k.read_user(
            info.pgd_phys,
            info.arg_start,
            usize::try_from(len).unwrap_or(0),
        );
        if (bytes.len() as u64) < len {
            problems.push(format!(
                "mm {mm:#x}: command line at {:#x} only {} of {len} bytes readable",
                info.arg_start,
                bytes.len()
            ));
        }
        info.cmdline = bytes
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
    }

    let mt_off = match k.offset_of("mm_struct", "mm_mt") {
        Ok(o) => o,
        Err(e) => {
            problems.push(format!("mm {mm:#x}: {}", error_chain(&e)));
            return out;
        }
    };
    let entries = walk_maple_tree(
        k,
        mm.wrapping_add(mt_off),
        &format!("mm {mm:#x} maple tree"),
    );
    problems.extend(entries.problems);
    let special = [
        k.symbol("special_mapping_vmops").ok(),
        k.symbol("legacy_special_mapping_vmops").ok(),
    ];
    for e in entries.value {
        match read_vma(k, mm, e, &special) {
            Ok((vma, p)) => {
                problems.extend(p.iter().map(|e| error_chain(e)));
                info.vmas.push(vma);
            }
            Err(e) => problems.push(error_chain(&e)),
        }
    }
    // Labels like /proc/PID/maps.
    for v in &mut info.vmas {
        if v.name.is_none() && v.file_addr == 0 {
            if v.start <= info.start_stack && info.start_stack < v.end {
                v.name = Some("[stack]".to_owned());
            } else if v.start < info.brk.max(info.start_brk.saturating_add(1))
                && info.start_brk < v.end
            {
                v.name = Some("[heap]".to_owned());
            }
        }
    }
    if info.pgd_phys != 0 {
        for v in &mut info.vmas {
            let special = v.file_addr == 0 && v.ops != 0 && v.name.is_some();
            if v.flags & (VM_IO | VM_PFNMAP) != 0 || special {
                continue;
            }
            v.pages = user_page_runs(k, info.pgd_phys, v.start, v.end);
        }
    }
    let n = info.vmas.len();
    if u64::try_from(n).ok() != Some(u64::from(info.map_count)) {
        problems.push(format!(
            "mm {mm:#x}: found {n} {MAP_COUNT_MISMATCH} {}",
            info.map_count
        ));
    }
    out
}

/// Reads `mm->saved_auxv` up to and including the `AT_NULL` pair.
fn read_auxv(k: &Kernel<'_>, mm: u64) -> Result<Vec<u64>, MmError> {
    let m = k.member("mm_struct", "saved_auxv")?;
    let n = (m.size / 8).min(MAX_AUXV_WORDS);
    let mut buf = vec![0u8; usize::try_from(n * 8).unwrap_or(0)];
    k.read_bytes(mm.wrapping_add(m.offset_bytes), &mut buf)?;
    let words: Vec<u64> = buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(<[u8; 8]>::try_from(c).unwrap_or([0; 8])))
        .collect();
    for (i, pair) in words.chunks_exact(2).enumerate() {
        if pair[0] == 0 {
            return Ok(words[..2 * i + 2].to_vec());
        }
    }
    Err(MmError::NoAtNull { words: n })
}

fn read_vma(
    k: &Kernel<'_>,
    mm: u64,
    e: MapleEntry,
    special_ops: &[Option<u64>],
) -> Result<(Vma, Vec<MmError>), MmError> {
    let va = e.value;
    let mut problems = Vec::new();
    let f = |field: &'static str| {
        k.read_field("vm_area_struct", field, va)
            .map_err(|source| MmError::VmaField {
                vma: va,
                field,
                source,
            })
    };
    if !is_kernel_addr(va) {
        return Err(MmError::BadVma {
            first: e.first,
            last: e.last,
            vma: va,
        });
    }
    let start = f("vm_start")?;
    let end = f("vm_end")?;
    if start != e.first || end.wrapping_sub(1) != e.last {
        return Err(MmError::VmaRange {
            vma: va,
            start,
            end,
            first: e.first,
            last: e.last,
        });
    }
    let vm_mm = f("vm_mm")?;
    if vm_mm != mm {
        return Err(MmError::ForeignVma {
            vma: va,
            start,
            vm_mm,
        });
    }
    let file_addr = f("vm_file").unwrap_or(0);
    let file = if file_addr != 0 {
        match file_path(k, file_addr) {
            Ok(p) => Some(p),
            Err(err) => {
                problems.push(MmError::VmaFile {
                    vma: va,
                    start,
                    source: Box::new(err),
                });
                None
            }
        }
    } else {
        None
    };
    let mut name = None;
    let vm_ops = f("vm_ops").unwrap_or(0);
    if vm_ops != 0 && special_ops.contains(&Some(vm_ops)) {
        if let Ok(private) = f("vm_private_data") {
            let name_off = k.offset_of("vm_special_mapping", "name").unwrap_or(0);
            if let Ok(p) = k.read_u64(private.wrapping_add(name_off)) {
                name = k.read_cstr(p, 64).ok();
            }
        }
    }
    Ok((
        Vma {
            addr: va,
            start,
            end,
            flags: f("vm_flags")?,
            pgoff: f("vm_pgoff")?,
            file_addr,
            file,
            name,
            ops: vm_ops,
            pages: Partial::default(),
        },
        problems,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::build::Builder;
    use crate::btf::Btf;
    use crate::kernel::testmem::{dm, Mem};
    use crate::symbols::SymbolTable;

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81100100 D phys_base
ffffffff81101000 D init_top_pgt
ffffffff81102000 d special_mapping_vmops
ffffffff81400000 B _end
";

    // Physical addresses of the pieces.
    const MM: u64 = 0x5_0000;
    const MT_OFF: u64 = 0x40;
    const ROOT: u64 = 0x6_0000;
    const LEAF1: u64 = 0x6_0100;
    const LEAF2: u64 = 0x6_0200;
    const VMAS: u64 = 0x7_0000;
    const FILE: u64 = 0x8_0000;
    const FILE2: u64 = 0x8_0100;
    const MOUNT1: u64 = 0x8_1000;
    const MOUNT2: u64 = 0x8_1100;
    const D_ROOT: u64 = 0x8_2000;
    const D_BIN: u64 = 0x8_2100;
    const D_BUSYBOX: u64 = 0x8_2200;
    const D_LIB: u64 = 0x8_2300;
    const D_ROOT2: u64 = 0x8_2400;
    const D_XSO: u64 = 0x8_2500;
    const NAMES: u64 = 0x8_3000;
    const PGD: u64 = 0x9_0000;
    const VDSO_PRIV: u64 = 0x8_4000;

    const A: (u64, u64) = (0x40_0000, 0x40_1000);
    const B: (u64, u64) = (0x40_1000, 0x40_5000);
    const C: (u64, u64) = (0x60_0000, 0x60_1000);
    const D: (u64, u64) = (0x7ffe_0000_0000, 0x7ffe_0002_1000);
    const E: (u64, u64) = (0x7ffe_0003_0000, 0x7ffe_0003_1000);
    const ARGS: u64 = 0x7ffe_0002_0f00;

    fn btf() -> Btf {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        let ulong = b.int("long unsigned int", 8);
        let mt = b.strukt(
            "maple_tree",
            24,
            &[
                ("ma_lock", u32t, 0),
                ("ma_root", ulong, 64),
                ("ma_flags", u32t, 128),
            ],
        );
        let o = |v: u64| u32::try_from(v * 8).expect("small");
        let mut mm: Vec<(&str, u32, u32)> = vec![
            ("mm_mt", mt, o(MT_OFF)),
            ("pgd", ulong, o(0x08)),
            ("map_count", u32t, o(0x10)),
            ("exe_file", ulong, o(0x18)),
        ];
        let names = [
            "start_code",
            "end_code",
            "start_data",
            "end_data",
            "start_brk",
            "brk",
            "start_stack",
            "arg_start",
            "arg_end",
            "env_start",
            "env_end",
        ];
        for (i, n) in names.iter().enumerate() {
            mm.push((n, ulong, o(0x60 + 8 * i as u64)));
        }
        let auxv = b.array(ulong, u32t, 8);
        mm.push(("saved_auxv", auxv, o(0xc0)));
        b.strukt("mm_struct", 0x100, &mm);
        let vma: Vec<(&str, u32, u32)> = [
            "vm_start",
            "vm_end",
            "vm_mm",
            "vm_flags",
            "vm_pgoff",
            "vm_file",
            "vm_ops",
            "vm_private_data",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, ulong, o(8 * i as u64)))
        .collect();
        b.strukt("vm_area_struct", 64, &vma);
        let path = b.strukt("path", 16, &[("mnt", ulong, 0), ("dentry", ulong, 64)]);
        b.strukt("file", 64, &[("f_path", path, o(16))]);
        let hl = b.strukt(
            "hlist_bl_node",
            16,
            &[("next", ulong, 0), ("pprev", ulong, 64)],
        );
        let anon = b.strukt("", 8, &[("hash", u32t, 0), ("len", u32t, 32)]);
        let un = b.composite(5, "", 8, &[("", anon, 0, 0), ("hash_len", ulong, 0, 0)]);
        let qstr = b.strukt("qstr", 16, &[("", un, 0), ("name", ulong, 64)]);
        b.strukt(
            "dentry",
            128,
            &[
                ("d_hash", hl, o(8)),
                ("d_parent", ulong, o(24)),
                ("d_name", qstr, o(32)),
                ("d_op", ulong, o(96)),
                ("d_sb", ulong, o(104)),
            ],
        );
        b.strukt("dentry_operations", 128, &[("d_dname", ulong, o(72))]);
        let vfsmount = b.strukt("vfsmount", 32, &[("mnt_root", ulong, 0)]);
        b.strukt(
            "mount",
            128,
            &[
                ("mnt_parent", ulong, o(16)),
                ("mnt_mountpoint", ulong, o(24)),
                ("mnt", vfsmount, o(32)),
            ],
        );
        b.strukt("vm_special_mapping", 16, &[("name", ulong, 0)]);
        b.strukt("super_block", 64, &[("s_type", ulong, o(40))]);
        b.strukt("file_system_type", 16, &[("name", ulong, 0)]);
        Btf::parse(&b.finish()).expect("btf")
    }

    /// An encoded child node as the kernel stores it (`mt_mk_node`).
    fn enc(pa: u64, ty: u64) -> u64 {
        dm(pa) | (ty << 3) | 4
    }

    /// The encoded root (`mte_mk_root`: `MAPLE_ROOT_NODE` added).
    fn enc_root(pa: u64, ty: u64) -> u64 {
        enc(pa, ty) | 2
    }

    fn put_dentry(m: &mut Mem, pa: u64, parent: u64, name: &str, hashed: bool) {
        m.put_u64(pa + 16, if hashed { dm(0x10) } else { 0 });
        m.put_u64(pa + 24, dm(parent));
        let npa = NAMES + (pa & 0xfff);
        m.put(npa, name.as_bytes());
        m.put_u32(pa + 36, u32::try_from(name.len()).expect("small"));
        m.put_u64(pa + 40, dm(npa));
    }

    fn put_vma(m: &mut Mem, i: u64, r: (u64, u64), flags: u64, file: u64) -> u64 {
        let pa = VMAS + i * 0x100;
        let pgoff = if file == 0 { r.0 >> 12 } else { 0 };
        let vals = [r.0, r.1, dm(MM), flags, pgoff, file, 0, 0];
        for (j, v) in vals.iter().enumerate() {
            m.put_u64(pa + 8 * j as u64, *v);
        }
        dm(pa)
    }

    /// Maps user page `va` to physical `pa` under PGD.
    fn map_user(m: &mut Mem, va: u64, pa: u64) {
        let idx = |s: u32| (va >> s) & 0x1ff;
        m.put_u64(PGD + idx(39) * 8, 0xa_0000 | 7);
        m.put_u64(0xa_0000 + idx(30) * 8, 0xa_1000 | 7);
        m.put_u64(0xa_1000 + idx(21) * 8, 0xa_2000 | 7);
        m.put_u64(0xa_2000 + idx(12) * 8, pa | 7);
    }

    fn world() -> Mem {
        let mut m = Mem::new(0x200_0000);
        // mm
        m.put_u64(MM + 0x08, dm(PGD));
        m.put_u32(MM + 0x10, 5);
        m.put_u64(MM + 0x18, dm(FILE));
        for (i, v) in [6u64, 4096, 25, 0x7ffe_0002_0000, 0, 0].iter().enumerate() {
            m.put_u64(MM + 0xc0 + 8 * i as u64, *v);
        }
        let vals = [
            A.0,
            A.1,
            B.0,
            B.1,
            C.0,
            C.1,
            D.1 - 0x100,
            ARGS,
            ARGS + 11,
            ARGS + 11,
            ARGS + 11,
        ];
        for (i, v) in vals.iter().enumerate() {
            m.put_u64(MM + 0x60 + 8 * i as u64, *v);
        }
        // files: /bin/busybox on mount 1, /lib/x.so on mount 2 (mounted on /lib)
        m.put_u64(FILE + 16, dm(MOUNT1 + 32));
        m.put_u64(FILE + 24, dm(D_BUSYBOX));
        m.put_u64(FILE2 + 16, dm(MOUNT2 + 32));
        m.put_u64(FILE2 + 24, dm(D_XSO));
        m.put_u64(MOUNT1 + 16, dm(MOUNT1));
        m.put_u64(MOUNT1 + 32, dm(D_ROOT));
        m.put_u64(MOUNT2 + 16, dm(MOUNT1));
        m.put_u64(MOUNT2 + 24, dm(D_LIB));
        m.put_u64(MOUNT2 + 32, dm(D_ROOT2));
        put_dentry(&mut m, D_ROOT, D_ROOT, "/", false);
        put_dentry(&mut m, D_BIN, D_ROOT, "bin", true);
        put_dentry(&mut m, D_BUSYBOX, D_BIN, "busybox", true);
        put_dentry(&mut m, D_LIB, D_ROOT, "lib", true);
        put_dentry(&mut m, D_ROOT2, D_ROOT2, "/", false);
        put_dentry(&mut m, D_XSO, D_ROOT2, "x.so", false); // deleted
                                                           // VMAs
        let a = put_vma(&mut m, 0, A, VM_READ, dm(FILE));
        let b = put_vma(&mut m, 1, B, VM_READ | VM_EXEC, dm(FILE2));
        let c = put_vma(&mut m, 2, C, VM_READ | VM_WRITE, 0);
        let d = put_vma(&mut m, 3, D, VM_READ | VM_WRITE | VM_GROWSDOWN, 0);
        let e = put_vma(&mut m, 4, E, VM_READ | VM_EXEC, 0);
        m.put_u64(VMAS + 4 * 0x100 + 48, 0xffff_ffff_8110_2000); // vm_ops
        m.put_u64(VMAS + 4 * 0x100 + 56, dm(VDSO_PRIV));
        m.put_u64(VDSO_PRIV, dm(VDSO_PRIV + 0x80));
        m.put(VDSO_PRIV + 0x80, b"[vdso]\0");
        // maple tree: arange root with two leaves.
        m.put_u64(MM + MT_OFF + 8, enc_root(ROOT, 3));
        m.put_u64(ROOT, dm(MM + MT_OFF) | 1);
        m.put_u64(ROOT + 8, 0x5f_ffff);
        m.put_u64(ROOT + 80, enc(LEAF1, 1));
        m.put_u64(ROOT + 88, enc(LEAF2, 1));
        m.put(ROOT + 240, &[1]);
        m.put_u64(LEAF1, dm(ROOT) | 0x0c);
        for (i, p) in [0x3f_ffff, A.1 - 1, B.1 - 1].iter().enumerate() {
            m.put_u64(LEAF1 + 8 + 8 * i as u64, *p);
        }
        m.put_u64(LEAF1 + 128 + 8, a);
        m.put_u64(LEAF1 + 128 + 16, b);
        m.put(LEAF1 + 248, &[3]);
        m.put_u64(LEAF2, dm(ROOT) | 0x14);
        for (i, p) in [C.1 - 1, D.0 - 1, D.1 - 1, E.0 - 1, E.1 - 1]
            .iter()
            .enumerate()
        {
            m.put_u64(LEAF2 + 8 + 8 * i as u64, *p);
        }
        m.put_u64(LEAF2 + 128, c);
        m.put_u64(LEAF2 + 128 + 16, d);
        m.put_u64(LEAF2 + 128 + 32, e);
        m.put(LEAF2 + 248, &[5]);
        // command line "prog\0-v\0x\0" across the arg page
        map_user(&mut m, ARGS & !0xfff, 0xb_0000);
        m.put(0xb_0000 + (ARGS & 0xfff), b"prog\0-v\0xy\0");
        m
    }

    fn run(m: &Mem) -> Partial<MmInfo> {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let k = Kernel::new(m, &syms, &btf).expect("kernel");
        read_mm(&k, dm(MM))
    }

    fn starts(r: &Partial<MmInfo>) -> Vec<u64> {
        r.value.vmas.iter().map(|v| v.start).collect()
    }

    #[test]
    fn reads_a_good_address_space() {
        let m = world();
        let r = run(&m);
        assert!(r.is_complete(), "{:?}", r.problems);
        let mm = &r.value;
        assert_eq!(starts(&r), [A.0, B.0, C.0, D.0, E.0]);
        assert_eq!(mm.cmdline, ["prog", "-v", "xy"]);
        assert_eq!(mm.exe.as_deref(), Some("/bin/busybox"));
        assert_eq!(mm.pgd_phys, PGD);
        assert_eq!(mm.auxv, [6, 4096, 25, 0x7ffe_0002_0000, 0, 0]);
        assert_eq!(mm.exe_file, dm(FILE));
        // The stack VMA has one present page (the argument page), the others none.
        let stack = &mm.vmas[3].pages;
        assert!(stack.is_complete(), "{:?}", stack.problems);
        assert_eq!(stack.value.runs.len(), 1);
        assert_eq!(
            (stack.value.runs[0].vaddr, stack.value.runs[0].phys),
            (ARGS & !0xfff, 0xb_0000)
        );
        assert!(mm.vmas[0].pages.value.runs.is_empty());
        let v = &mm.vmas;
        assert_eq!(v[0].file.as_deref(), Some("/bin/busybox"));
        assert_eq!(v[1].file.as_deref(), Some("/lib/x.so (deleted)"));
        assert_eq!(v[1].perms(), "r-xp");
        assert_eq!(v[2].name.as_deref(), Some("[heap]"));
        assert_eq!(v[3].name.as_deref(), Some("[stack]"));
        assert_eq!(v[4].name.as_deref(), Some("[vdso]"));
        assert_eq!(
            v[0].to_string(),
            "000000400000-000000401000 r--p 00000000 /bin/busybox"
        );
    }

    #[test]
    fn unreadable_child_loses_only_its_subtree() {
        let mut m = world();
        m.put_u64(ROOT + 88, enc(0x1_0000_0000, 1)); // leaf 2 beyond memory
        let r = run(&m);
        assert_eq!(starts(&r), [A.0, B.0]);
        assert!(
            r.problems.iter().any(|p| p.contains("unreadable")),
            "{:?}",
            r.problems
        );
        assert!(r.problems.iter().any(|p| p.contains("map_count is 5")));
    }

    #[test]
    fn loops_in_the_tree_terminate() {
        // The root's second child is the root itself.
        let mut m = world();
        m.put_u64(ROOT + 88, enc(ROOT, 3));
        let r = run(&m);
        assert_eq!(starts(&r), [A.0, B.0]);
        assert!(!r.is_complete());
        // Leaf 2's parent pointer names leaf 1 (and leaf 1 appears twice).
        let mut m = world();
        m.put_u64(ROOT + 88, enc(LEAF1, 1));
        let r = run(&m);
        assert_eq!(starts(&r), [A.0, B.0]);
        assert!(
            r.problems.iter().any(|p| p.contains("reached twice")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn smashed_nodes_are_reported() {
        // Decreasing pivots in leaf 2: entries before the bad pivot survive.
        let mut m = world();
        m.put_u64(LEAF2 + 16, 0x10);
        let r = run(&m);
        assert_eq!(starts(&r), [A.0, B.0, C.0]);
        assert!(
            r.problems.iter().any(|p| p.contains("pivot")),
            "{:?}",
            r.problems
        );
        // Garbage meta.end in the root.
        let mut m = world();
        m.put(ROOT + 240, &[200]);
        let r = run(&m);
        assert!(r.value.vmas.is_empty());
        assert!(r.problems.iter().any(|p| p.contains("claims 200")));
        // Dead node.
        let mut m = world();
        m.put_u64(LEAF1, dm(LEAF1));
        let r = run(&m);
        assert_eq!(starts(&r), [C.0, D.0, E.0]);
        assert!(r.problems.iter().any(|p| p.contains("dead")));
        // Unknown node type.
        let mut m = world();
        m.put_u64(ROOT + 80, enc(LEAF1, 7));
        let r = run(&m);
        assert!(r.problems.iter().any(|p| p.contains("unknown type 7")));
        // Whole node filled with 0xff.
        let mut m = world();
        m.put(LEAF2, &[0xff; 256]);
        let r = run(&m);
        assert_eq!(starts(&r), [A.0, B.0]);
        assert!(!r.is_complete());
        // A VMA that does not cover its range, and one with a wild pointer.
        let mut m = world();
        m.put_u64(VMAS + 0x100, B.0 + 0x1000);
        m.put_u64(LEAF2 + 128, 0x1234_5678_0000);
        let r = run(&m);
        assert_eq!(starts(&r), [A.0, D.0, E.0]);
        assert!(r.problems.iter().any(|p| p.contains("tree files it under")));
        assert!(r.problems.iter().any(|p| p.contains("bad VMA pointer")));
    }

    #[test]
    fn pseudo_files_are_named_by_filesystem() {
        let mut m = world();
        let (file, dentry, ops, sb, fst) = (0x8_5000, 0x8_5100, 0x8_5200, 0x8_5300, 0x8_5400);
        m.put_u64(file + 16, dm(MOUNT1 + 32));
        m.put_u64(file + 24, dm(dentry));
        put_dentry(&mut m, dentry, dentry, "", false);
        m.put_u64(dentry + 96, dm(ops));
        m.put_u64(ops + 72, 0xffff_ffff_8100_1234);
        m.put_u64(dentry + 104, dm(sb));
        m.put_u64(sb + 40, dm(fst));
        m.put_u64(fst, dm(fst + 0x80));
        m.put(fst + 0x80, b"pipefs\0");
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(file_path(&k, dm(file)).as_deref(), Ok("[pipefs]"));
        assert_eq!(file_path(&k, dm(FILE)).as_deref(), Ok("/bin/busybox"));
        assert!(file_path(&k, 0x10).is_err());
    }

    #[test]
    fn path_failures_are_typed_and_chained_once() {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        // Dentry loop: bin's parent is busybox, busybox's is bin.
        let mut m = world();
        m.put_u64(D_BIN + 24, dm(D_BUSYBOX));
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(
            file_path(&k, dm(FILE)),
            Err(MmError::PathTooDeep {
                dentry: dm(D_BUSYBOX)
            })
        );
        // The VMA mapping it keeps the cause under its own context.
        let r = run(&m);
        let want = format!(
            "vma {:#x} ({:#x}): file: dentry {:#x}: path deeper than {MAX_PATH_COMPONENTS}",
            dm(VMAS),
            A.0,
            dm(D_BUSYBOX)
        );
        assert!(r.problems.contains(&want), "{:?}", r.problems);
        // A wild d_parent.
        let mut m = world();
        m.put_u64(D_BIN + 24, 0x1234);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(
            file_path(&k, dm(FILE)),
            Err(MmError::BadParent {
                dentry: dm(D_BIN),
                parent: 0x1234
            })
        );
        // Not a kernel pointer at all: the kernel read's own error.
        assert!(matches!(
            file_path(&k, 0x10),
            Err(MmError::Kernel(KernelError::NotKernel(_)))
        ));
    }

    #[test]
    fn odd_roots_and_paths() {
        // Empty tree and a single-entry root.
        let mut m = world();
        m.put_u64(MM + MT_OFF + 8, 0);
        m.put_u32(MM + 0x10, 0);
        let r = run(&m);
        assert!(
            r.is_complete() && r.value.vmas.is_empty(),
            "{:?}",
            r.problems
        );
        // Dentry loop: bin's parent is busybox.
        let mut m = world();
        m.put_u64(D_BIN + 24, dm(D_BUSYBOX));
        m.put_u64(D_BUSYBOX + 24, dm(D_BIN));
        let r = run(&m);
        assert!(r.value.vmas[0].file.is_none());
        assert!(
            r.problems.iter().any(|p| p.contains("deeper than")),
            "{:?}",
            r.problems
        );
        // Unreadable command line page.
        let mut m = world();
        m.put_u64(0xa_2000 + ((ARGS >> 12) & 0x1ff) * 8, 0);
        let r = run(&m);
        assert!(r.value.cmdline.is_empty());
        assert!(r.problems.iter().any(|p| p.contains("command line")));
    }
}
