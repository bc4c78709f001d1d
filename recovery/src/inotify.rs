//! inotify descriptors of a dead kernel, read through BTF and bounded: the file's `f_op`
//! is `inotify_fops` and its `private_data` the `struct fsnotify_group`, whose
//! `marks_list` links the watches (`struct inotify_inode_mark`: an `fsnotify_mark` and its
//! `wd`). Each watch is named by a path to its inode (an alias dentry, under a mount of
//! the process's mount namespace whose superblock is the inode's), so the agent can add
//! it again with the same watch descriptor. Events queued and not read are not kept.

use crate::kernel::{is_kernel_addr, Kernel, KernelError};
use crate::mm::{dentry_path, MmError};

/// Most watches read from one inotify instance.
pub const MAX_WATCHES: usize = 1 << 16;
/// Most mounts looked at in a mount namespace.
const MAX_MOUNTS: usize = 4096;
/// Most parents of a dentry looked at for the mount it is under.
const MAX_DEPTH: usize = 256;

/// `FSNOTIFY_MARK_FLAG_ATTACHED`: the mark is on its object.
const MARK_ATTACHED: u64 = 0x2;
/// `FSNOTIFY_MARK_FLAG_EXCL_UNLINK`.
const MARK_EXCL_UNLINK: u64 = 0x10;
/// `FSNOTIFY_MARK_FLAG_IN_ONESHOT`.
const MARK_IN_ONESHOT: u64 = 0x20;
/// `FSNOTIFY_OBJ_TYPE_INODE`.
const OBJ_TYPE_INODE: u64 = 0;
/// `IN_ALL_EVENTS` (`INOTIFY_USER_MASK`: the events a mark keeps of the user's mask).
pub const IN_ALL_EVENTS: u32 = 0xfff;
/// `IN_DONT_FOLLOW`: given for a watch on a symbolic link itself.
pub const IN_DONT_FOLLOW: u32 = 0x0200_0000;
/// `IN_EXCL_UNLINK`.
pub const IN_EXCL_UNLINK: u32 = 0x0400_0000;
/// `IN_ONESHOT`.
pub const IN_ONESHOT: u32 = 0x8000_0000;
/// `S_IFMT` and `S_IFLNK`.
const S_IFMT: u64 = 0o170_000;
const S_IFLNK: u64 = 0o120_000;

/// Why an inotify instance, or one of its watches, could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InotifyError {
    /// A field could not be read.
    #[error("{what}")]
    Read {
        /// Which.
        what: &'static str,
        /// Why.
        #[source]
        source: KernelError,
    },
    /// A pointer that should be a kernel address is not.
    #[error("{what} {addr:#x} is not a kernel address")]
    BadPointer {
        /// Which.
        what: &'static str,
        /// Its value.
        addr: u64,
    },
    /// The watched object is not an inode (a mount or filesystem mark).
    #[error("mark on an object of type {0}, not an inode")]
    NotInode(u64),
    /// The inode has no dentry left to name it by.
    #[error("inode {0:#x} has no dentry")]
    NoDentry(u64),
    /// No mount of the process's namespace shows the inode.
    #[error("no mount of the process shows inode {0:#x}")]
    NoMount(u64),
    /// The inode was deleted.
    #[error("{0} was deleted")]
    Deleted(String),
    /// Its path could not be made.
    #[error("path of inode {inode:#x}")]
    Path {
        /// The inode.
        inode: u64,
        /// Why.
        #[source]
        source: MmError,
    },
}

fn rd(what: &'static str, r: Result<u64, KernelError>) -> Result<u64, InotifyError> {
    r.map_err(|source| InotifyError::Read { what, source })
}

fn kptr(what: &'static str, addr: u64) -> Result<u64, InotifyError> {
    if is_kernel_addr(addr) {
        Ok(addr)
    } else {
        Err(InotifyError::BadPointer { what, addr })
    }
}

/// One watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// Its watch descriptor.
    pub wd: i32,
    /// The mask to add it again with: its events, `IN_EXCL_UNLINK`, `IN_ONESHOT`, and
    /// `IN_DONT_FOLLOW` when the inode is a symbolic link.
    pub mask: u32,
    /// The path of the watched inode.
    pub path: String,
}

/// An inotify instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inotify {
    /// The id the next watch would have been tried with (`idr_next` of the group's idr;
    /// 0: never set).
    pub next_wd: u32,
    /// Its watches, by increasing watch descriptor.
    pub watches: Vec<Watch>,
    /// The watches left out, and why (`wd <n>: ...`), and a cut-off walk.
    pub problems: Vec<String>,
}

impl Inotify {
    /// The `fd` path of kind `other` that names it in the manifest.
    pub fn path(&self) -> String {
        format!("inotify:{}", self.next_wd)
    }
}

/// True when the `struct file` at `file` is an inotify instance.
pub fn is_inotify(k: &Kernel<'_>, file: u64) -> bool {
    match (k.read_field("file", "f_op", file), k.symbol("inotify_fops")) {
        (Ok(fops), Ok(sym)) => fops == sym,
        _ => false,
    }
}

/// Reads the inotify instance of the `struct file` at `file` of a process whose mount
/// namespace is at `mnt_ns` (0: unknown, every watch then left out). Unreadable watches
/// are left out and listed in [`Inotify::problems`].
pub fn read_inotify(k: &Kernel<'_>, file: u64, mnt_ns: u64) -> Result<Inotify, InotifyError> {
    let group = kptr(
        "private_data",
        rd("private_data", k.read_field("file", "private_data", file))?,
    )?;
    let next = rd(
        "idr_next",
        k.read_field("fsnotify_group", "inotify_data.idr.idr_next", group),
    )?;
    let mut out = Inotify {
        next_wd: u32::try_from(next & 0xffff_ffff).unwrap_or(0),
        ..Inotify::default()
    };
    let head = group.wrapping_add(rd(
        "marks_list",
        k.offset_of("fsnotify_group", "marks_list"),
    )?);
    let g_list = rd("g_list", k.offset_of("fsnotify_mark", "g_list"))?;
    let fsn_mark = rd("fsn_mark", k.offset_of("inotify_inode_mark", "fsn_mark"))?;
    let wd_off = rd("wd", k.offset_of("inotify_inode_mark", "wd"))?;
    let marks = crate::list::walk_list(k, head, MAX_WATCHES, "inotify marks");
    out.problems.extend(marks.problems);
    let mounts = Mounts::new(k, mnt_ns);
    for node in marks.value {
        let mark = node.wrapping_sub(g_list);
        let Ok(wd) = k.read_u32(mark.wrapping_sub(fsn_mark).wrapping_add(wd_off)) else {
            out.problems
                .push(format!("mark {mark:#x}: its wd is unreadable"));
            continue;
        };
        let wd = i32::from_ne_bytes(wd.to_ne_bytes());
        if wd <= 0 {
            // Being removed (inotify_remove_from_idr sets -1).
            continue;
        }
        match read_watch(k, mark, &mounts) {
            Ok(Some((mask, path))) => out.watches.push(Watch { wd, mask, path }),
            Ok(None) => {}
            Err(e) => out
                .problems
                .push(format!("wd {wd}: {}", crate::error_chain(&e))),
        }
    }
    out.watches.sort_by_key(|w| w.wd);
    out.watches.dedup_by_key(|w| w.wd);
    Ok(out)
}

/// The mask and path of the mark at `mark` (None: a mark being taken off).
fn read_watch(
    k: &Kernel<'_>,
    mark: u64,
    mounts: &Mounts,
) -> Result<Option<(u32, String)>, InotifyError> {
    let f = |what: &'static str, field: &str| rd(what, k.read_field("fsnotify_mark", field, mark));
    let flags = f("mark flags", "flags")?;
    if flags & MARK_ATTACHED == 0 {
        return Ok(None);
    }
    let conn = kptr("connector", f("mark connector", "connector")?)?;
    let ty = rd(
        "connector type",
        k.read_field("fsnotify_mark_connector", "type", conn),
    )?;
    if ty != OBJ_TYPE_INODE {
        return Err(InotifyError::NotInode(ty));
    }
    let obj = kptr(
        "connector object",
        rd(
            "connector object",
            k.read_field("fsnotify_mark_connector", "obj", conn),
        )?,
    )?;
    let inode = obj.wrapping_sub(rd(
        "i_fsnotify_marks",
        k.offset_of("inode", "i_fsnotify_marks"),
    )?);
    let mode = rd("i_mode", k.read_field("inode", "i_mode", inode))?;
    let events = u32::try_from(f("mark mask", "mask")? & u64::from(IN_ALL_EVENTS)).unwrap_or(0);
    let mut mask = events;
    if flags & MARK_EXCL_UNLINK != 0 {
        mask |= IN_EXCL_UNLINK;
    }
    if flags & MARK_IN_ONESHOT != 0 {
        mask |= IN_ONESHOT;
    }
    if mode & S_IFMT == S_IFLNK {
        mask |= IN_DONT_FOLLOW;
    }
    Ok(Some((mask, inode_path(k, inode, mounts)?)))
}

/// The path of `inode`: its first alias dentry, under a mount that shows it.
fn inode_path(k: &Kernel<'_>, inode: u64, mounts: &Mounts) -> Result<String, InotifyError> {
    let sb = rd("i_sb", k.read_field("inode", "i_sb", inode))?;
    let first = rd("i_dentry", k.read_field("inode", "i_dentry.first", inode))?;
    if first == 0 {
        return Err(InotifyError::NoDentry(inode));
    }
    let alias = kptr("alias", first)?;
    let dentry = alias.wrapping_sub(rd("d_alias", k.offset_of("dentry", "d_u.d_alias"))?);
    // The dentry and its parents up to its filesystem's root.
    let mut up = vec![dentry];
    let mut cur = dentry;
    while up.len() < MAX_DEPTH {
        let parent = rd("d_parent", k.read_field("dentry", "d_parent", cur))?;
        if parent == cur || !is_kernel_addr(parent) {
            break;
        }
        up.push(parent);
        cur = parent;
    }
    let vfsmnt = mounts
        .0
        .iter()
        .find(|m| m.sb == sb && up.contains(&m.root))
        .map(|m| m.vfsmnt)
        .ok_or(InotifyError::NoMount(inode))?;
    let path =
        dentry_path(k, dentry, vfsmnt).map_err(|source| InotifyError::Path { inode, source })?;
    if path.ends_with(" (deleted)") || !path.starts_with('/') {
        return Err(InotifyError::Deleted(path));
    }
    Ok(path)
}

/// One mount of a namespace.
struct Mount {
    /// Its `struct vfsmount`.
    vfsmnt: u64,
    /// `mnt_sb`.
    sb: u64,
    /// `mnt_root`.
    root: u64,
}

/// The mounts of a mount namespace (`mnt_namespace.list` of `mount.mnt_list`), those that
/// could be read.
struct Mounts(Vec<Mount>);

impl Mounts {
    fn new(k: &Kernel<'_>, mnt_ns: u64) -> Self {
        let offsets = (|| -> Result<(u64, u64, u64), KernelError> {
            Ok((
                k.offset_of("mnt_namespace", "list")?,
                k.offset_of("mount", "mnt_list")?,
                k.offset_of("mount", "mnt")?,
            ))
        })();
        let Ok((list, mnt_list, mnt)) = offsets else {
            return Mounts(Vec::new());
        };
        if !is_kernel_addr(mnt_ns) {
            return Mounts(Vec::new());
        }
        let nodes = crate::list::walk_list(k, mnt_ns.wrapping_add(list), MAX_MOUNTS, "mounts");
        Mounts(
            nodes
                .value
                .into_iter()
                .filter_map(|n| {
                    let vfsmnt = n.wrapping_sub(mnt_list).wrapping_add(mnt);
                    Some(Mount {
                        vfsmnt,
                        sb: k.read_field("vfsmount", "mnt_sb", vfsmnt).ok()?,
                        root: k.read_field("vfsmount", "mnt_root", vfsmnt).ok()?,
                    })
                })
                .collect(),
        )
    }
}

/// The mount namespace of the task at `task` (`nsproxy->mnt_ns`; 0 when unreadable).
pub fn task_mnt_ns(k: &Kernel<'_>, task: u64) -> u64 {
    k.read_field("task_struct", "nsproxy", task)
        .ok()
        .filter(|&ns| is_kernel_addr(ns))
        .and_then(|ns| k.read_field("nsproxy", "mnt_ns", ns).ok())
        .unwrap_or(0)
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
ffffffff81180000 d inotify_fops
ffffffff81400000 B _end
";

    fn btf() -> Btf {
        let mut b = Builder::new();
        let u16t = b.int("short unsigned int", 2);
        let u32t = b.int("unsigned int", 4);
        let int = b.int("int", 4);
        let ulong = b.int("long unsigned int", 8);
        let lh = b.strukt("list_head", 16, &[("next", ulong, 0), ("prev", ulong, 64)]);
        let hh = b.strukt("hlist_head", 8, &[("first", ulong, 0)]);
        let hn = b.strukt(
            "hlist_node",
            16,
            &[("next", ulong, 0), ("pprev", ulong, 64)],
        );
        b.strukt(
            "file",
            64,
            &[("f_op", ulong, 0), ("private_data", ulong, 8 * 8)],
        );
        let idr = b.strukt(
            "idr",
            24,
            &[("idr_base", u32t, 16 * 8), ("idr_next", u32t, 20 * 8)],
        );
        let data = b.strukt("inotify_group_private_data", 40, &[("idr", idr, 8 * 8)]);
        let un = b.composite(5, "", 40, &[("inotify_data", data, 0, 0)]);
        b.strukt(
            "fsnotify_group",
            96,
            &[("marks_list", lh, 16 * 8), ("", un, 48 * 8)],
        );
        let mark = b.strukt(
            "fsnotify_mark",
            64,
            &[
                ("mask", u32t, 0),
                ("g_list", lh, 16 * 8),
                ("connector", ulong, 40 * 8),
                ("flags", u32t, 52 * 8),
            ],
        );
        b.strukt(
            "inotify_inode_mark",
            72,
            &[("fsn_mark", mark, 0), ("wd", int, 64 * 8)],
        );
        let cun = b.composite(5, "", 8, &[("obj", ulong, 0, 0)]);
        b.strukt(
            "fsnotify_mark_connector",
            32,
            &[("type", u16t, 4 * 8), ("", cun, 16 * 8)],
        );
        let iun = b.composite(5, "", 8, &[("i_dentry", hh, 0, 0)]);
        b.strukt(
            "inode",
            128,
            &[
                ("i_mode", u16t, 0),
                ("i_sb", ulong, 8 * 8),
                ("", iun, 16 * 8),
                ("i_fsnotify_marks", ulong, 32 * 8),
            ],
        );
        let anon = b.strukt("", 8, &[("hash", u32t, 0), ("len", u32t, 32)]);
        let qstr = b.strukt("qstr", 16, &[("", anon, 0), ("name", ulong, 64)]);
        let dun = b.composite(5, "", 16, &[("d_alias", hn, 0, 0)]);
        b.strukt(
            "dentry",
            128,
            &[
                ("d_parent", ulong, 24 * 8),
                ("d_name", qstr, 32 * 8),
                ("d_u", dun, 64 * 8),
            ],
        );
        let vfsmount = b.strukt(
            "vfsmount",
            16,
            &[("mnt_root", ulong, 0), ("mnt_sb", ulong, 8 * 8)],
        );
        b.strukt(
            "mount",
            96,
            &[
                ("mnt_parent", ulong, 0),
                ("mnt_mountpoint", ulong, 8 * 8),
                ("mnt", vfsmount, 16 * 8),
                ("mnt_list", lh, 48 * 8),
            ],
        );
        b.strukt("mnt_namespace", 32, &[("list", lh, 8 * 8)]);
        Btf::parse(&b.finish()).expect("btf")
    }

    const FILE: u64 = 0x10_0000;
    const GROUP: u64 = 0x10_1000;
    const NS: u64 = 0x10_2000;
    /// The root mount, and /mnt mounted on its dentry `MNT_DIR`.
    const M_ROOT: u64 = 0x10_3000;
    const M_SUB: u64 = 0x10_3100;
    const SB_ROOT: u64 = 0x10_4000;
    const SB_SUB: u64 = 0x10_4100;
    const D_ROOT: u64 = 0x11_0000;
    const D_TMP: u64 = 0x11_0100;
    const D_MNT: u64 = 0x11_0200;
    const D_SUB_ROOT: u64 = 0x11_0300;
    const NAMES: u64 = 0x12_0000;

    fn dentry(m: &mut Mem, pa: u64, parent: u64, name: &str) {
        m.put_u64(pa + 24, dm(parent));
        let npa = NAMES + ((pa >> 4) & 0xfff0);
        m.put(npa, name.as_bytes());
        m.put_u32(pa + 36, u32::try_from(name.len()).expect("small"));
        m.put_u64(pa + 40, dm(npa));
        // Hashed (d_hash.pprev) is not in this layout: never taken for deleted.
    }

    fn mount(m: &mut Mem, pa: u64, parent: u64, mountpoint: u64, root: u64, sb: u64) {
        m.put_u64(pa, dm(parent));
        m.put_u64(pa + 8, dm(mountpoint));
        m.put_u64(pa + 16, dm(root));
        m.put_u64(pa + 24, dm(sb));
    }

    /// A mark at `pa` (its inode at `pa + 0x100`, its connector at `pa + 0x200`) for
    /// `wd` on a file named `name` in the directory dentry `dir`.
    fn watch(m: &mut Mem, pa: u64, wd: i32, mask: u32, flags: u32, at: (&str, u64, u64)) {
        let (name, dir, sb) = at;
        let inode = pa + 0x100;
        let conn = pa + 0x200;
        let d = pa + 0x300;
        m.put_u32(pa, mask);
        m.put_u64(pa + 40, dm(conn));
        m.put_u32(pa + 52, flags);
        m.put_u32(pa + 64, u32::from_ne_bytes(wd.to_ne_bytes()));
        m.put_u64(conn + 16, dm(inode + 32));
        m.put(inode, &0o100_644u16.to_le_bytes());
        m.put_u64(inode + 8, dm(sb));
        m.put_u64(inode + 16, dm(d + 64));
        dentry(m, d, dir, name);
    }

    fn link(m: &mut Mem, nodes: &[u64]) {
        for (i, &n) in nodes.iter().enumerate() {
            let next = nodes[(i + 1) % nodes.len()];
            let prev = nodes[(i + nodes.len() - 1) % nodes.len()];
            m.put_u64(n, dm(next));
            m.put_u64(n + 8, dm(prev));
        }
    }

    fn world() -> Mem {
        let mut m = Mem::new(0x20_0000);
        m.put_u64(FILE, 0xffff_ffff_8118_0000);
        m.put_u64(FILE + 8, dm(GROUP));
        m.put_u32(GROUP + 48 + 8 + 20, 5);
        dentry(&mut m, D_ROOT, D_ROOT, "/");
        dentry(&mut m, D_TMP, D_ROOT, "tmp dir");
        dentry(&mut m, D_MNT, D_ROOT, "mnt");
        dentry(&mut m, D_SUB_ROOT, D_SUB_ROOT, "/");
        mount(&mut m, M_ROOT, M_ROOT, D_ROOT, D_ROOT, SB_ROOT);
        mount(&mut m, M_SUB, M_ROOT, D_MNT, D_SUB_ROOT, SB_SUB);
        link(&mut m, &[NS + 8, M_ROOT + 48, M_SUB + 48]);
        // wd 4 on /mnt/b (oneshot), wd 1 on "/tmp dir/a" (excl_unlink), wd 3 taken off.
        watch(
            &mut m,
            0x13_0000,
            4,
            0x8000_0102,
            0x23,
            ("b", D_SUB_ROOT, SB_SUB),
        );
        watch(
            &mut m,
            0x13_1000,
            1,
            0x0800_0002,
            0x13,
            ("a", D_TMP, SB_ROOT),
        );
        watch(&mut m, 0x13_2000, 3, 0x2, 0x1, ("gone", D_TMP, SB_ROOT));
        link(&mut m, &[GROUP + 16, 0x13_0010, 0x13_1010, 0x13_2010]);
        m
    }

    fn with<T>(m: &Mem, f: impl FnOnce(&Kernel<'_>) -> T) -> T {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let k = Kernel::new(m, &syms, &btf).expect("kernel");
        f(&k)
    }

    #[test]
    fn reads_the_watches_with_their_wds_masks_and_paths() {
        let m = world();
        let r = with(&m, |k| {
            assert!(is_inotify(k, dm(FILE)));
            read_inotify(k, dm(FILE), dm(NS))
        })
        .expect("inotify");
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.next_wd, 5);
        assert_eq!(r.path(), "inotify:5");
        let got: Vec<(i32, u32, &str)> = r
            .watches
            .iter()
            .map(|w| (w.wd, w.mask, w.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 0x2 | IN_EXCL_UNLINK, "/tmp dir/a"),
                (4, 0x102 | IN_ONESHOT, "/mnt/b"),
            ]
        );
    }

    #[test]
    fn a_watch_no_mount_shows_is_left_out_with_a_problem() {
        let mut m = world();
        // Only the root mount: /mnt/b's filesystem is not mounted.
        link(&mut m, &[NS + 8, M_ROOT + 48]);
        let r = with(&m, |k| read_inotify(k, dm(FILE), dm(NS))).expect("inotify");
        assert_eq!(r.watches.len(), 1);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(
            r.problems[0].starts_with("wd 4: no mount"),
            "{:?}",
            r.problems
        );
        // No namespace: every watch is left out, the instance still comes back.
        let r = with(&m, |k| read_inotify(k, dm(FILE), 0)).expect("inotify");
        assert!(r.watches.is_empty());
        assert_eq!(r.problems.len(), 2);
        // A wild group pointer is an error.
        m.put_u64(FILE + 8, 0x1234);
        assert!(with(&m, |k| read_inotify(k, dm(FILE), dm(NS))).is_err());
    }

    #[test]
    fn a_looped_mark_list_is_bounded() {
        let mut m = world();
        // The last mark points back at the first, not at the head.
        m.put_u64(0x13_2010, dm(0x13_0010));
        let r = with(&m, |k| read_inotify(k, dm(FILE), dm(NS))).expect("inotify");
        assert!(!r.problems.is_empty());
        assert!(r.watches.len() <= 2);
    }
}
