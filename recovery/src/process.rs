//! Per-process state shared by a thread group: signal actions (`sighand->action[]`), open
//! files (`files->fdt`), current directory (`fs->pwd`).
//!
//! The fd table is untrusted: `max_fds` is capped, the open-fds bitmap is read in one bounded
//! piece (or, when unreadable, the fd array is scanned in bounded chunks), and every `struct
//! file *` is checked before it is followed.

use crate::kernel::{is_kernel_addr, Kernel, KernelError};
use crate::mm::{dentry_path, file_path, MmError};
use crate::tasks::Task;
use crate::{error_chain, Partial};

/// Largest fd table looked at (`NR_OPEN`, the kernel's own limit for `max_fds`).
pub const MAX_FDS: u64 = 1 << 20;
/// Most open files returned per process.
pub const MAX_OPEN_FILES: usize = 1 << 16;
/// How many fd-array slots are scanned when the open-fds bitmap cannot be read.
const FALLBACK_SCAN: u64 = 1 << 16;
/// `_NSIG`.
pub const NSIG: usize = 64;
/// `O_CLOEXEC`.
pub const O_CLOEXEC: u32 = 0o2_000_000;
/// `O_ACCMODE`.
pub const O_ACCMODE: u32 = 3;
/// `O_WRONLY`.
pub const O_WRONLY: u32 = 1;
/// `O_RDWR`.
pub const O_RDWR: u32 = 2;
/// `RAMFS_MAGIC`.
pub const RAMFS_MAGIC: u64 = 0x8584_58f6;
/// `TMPFS_MAGIC`.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;

/// The type of an inode, from `i_mode & S_IFMT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `S_IFREG`.
    Reg,
    /// `S_IFCHR`.
    Chr,
    /// `S_IFBLK`.
    Blk,
    /// `S_IFDIR`.
    Dir,
    /// `S_IFIFO`.
    Fifo,
    /// `S_IFSOCK`.
    Sock,
    /// `S_IFLNK`.
    Lnk,
    /// No type bits (anonymous inodes: eventfd, epoll, timerfd, ...) or garbage.
    Other,
}

impl FileKind {
    /// Kind of an `i_mode`.
    pub fn from_mode(i_mode: u32) -> Self {
        match i_mode & 0o170_000 {
            0o100_000 => FileKind::Reg,
            0o020_000 => FileKind::Chr,
            0o060_000 => FileKind::Blk,
            0o040_000 => FileKind::Dir,
            0o010_000 => FileKind::Fifo,
            0o140_000 => FileKind::Sock,
            0o120_000 => FileKind::Lnk,
            _ => FileKind::Other,
        }
    }

    /// The manifest's name for it: `reg`, `chr`, `dir`, `fifo`, `sock` or `other`.
    pub fn manifest_name(self) -> &'static str {
        match self {
            FileKind::Reg => "reg",
            FileKind::Chr => "chr",
            FileKind::Dir => "dir",
            FileKind::Fifo => "fifo",
            FileKind::Sock => "sock",
            FileKind::Blk | FileKind::Lnk | FileKind::Other => "other",
        }
    }
}

/// What an open file's inode says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InodeInfo {
    /// Kernel address of the `struct inode`.
    pub addr: u64,
    /// `i_mode` (type and permission bits).
    pub mode: u32,
    /// `i_size`.
    pub size: u64,
    /// `i_sb->s_magic`.
    pub s_magic: u64,
    /// `i_rdev` (device number of a device file).
    pub rdev: u32,
    /// `i_ino`.
    pub ino: u64,
}

impl InodeInfo {
    /// The file kind.
    pub fn kind(&self) -> FileKind {
        FileKind::from_mode(self.mode)
    }

    /// True when the content lives only in memory (ramfs or tmpfs).
    pub fn in_memory_fs(&self) -> bool {
        self.s_magic == RAMFS_MAGIC || self.s_magic == TMPFS_MAGIC
    }
}

/// One open file descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFile {
    /// The descriptor number.
    pub fd: u32,
    /// Kernel address of the `struct file`.
    pub file: u64,
    /// `f_flags` (`O_*`).
    pub flags: u32,
    /// `f_mode` (`FMODE_*`).
    pub f_mode: u32,
    /// `f_pos`.
    pub pos: u64,
    /// The descriptor is close-on-exec (`close_on_exec` bitmap).
    pub cloexec: bool,
    /// Path (`[pipefs:...]`-style names for pseudo files), when it could be resolved.
    pub path: Option<String>,
    /// The inode, when it could be read.
    pub inode: Option<InodeInfo>,
}

impl OpenFile {
    /// The file kind (`Other` when the inode could not be read).
    pub fn kind(&self) -> FileKind {
        self.inode.map_or(FileKind::Other, |i| i.kind())
    }

    /// Open for writing (`O_WRONLY` or `O_RDWR`).
    pub fn writable(&self) -> bool {
        matches!(self.flags & O_ACCMODE, O_WRONLY | O_RDWR)
    }
}

/// One signal action that is not `SIG_DFL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigAction {
    /// Signal number (1..=64).
    pub signo: u32,
    /// `sa_handler` (1 = `SIG_IGN`).
    pub handler: u64,
    /// `sa_flags`.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// `sa_mask`.
    pub mask: u64,
}

/// The state a thread group shares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Process id.
    pub tgid: i32,
    /// Signal actions other than `SIG_DFL`, by signal number.
    pub sigactions: Vec<SigAction>,
    /// Open files by descriptor number.
    pub files: Vec<OpenFile>,
    /// Current directory.
    pub cwd: Option<String>,
    /// Root directory (`/` unless chrooted).
    pub root: Option<String>,
    /// `signal->shared_pending.signal`: signals pending for the whole process (reporting).
    pub shared_pending: u64,
    /// `fs->umask`, `personality` and `signal->rlim[]` (None when any is unreadable: the
    /// process then gets the crash kernel's defaults).
    pub limits: Option<owvmm_manifest::Limits>,
    /// The leader's credentials and its mm's dumpable flag (None when unreadable: the
    /// process is then not restored, never with more privilege than it had).
    pub creds: Option<owvmm_manifest::Creds>,
    /// Its mount namespace (`nsproxy->mnt_ns`; 0 when unreadable), where the paths of its
    /// inotify watches are looked for.
    pub mnt_ns: u64,
}

/// Why a process's files, inodes or directories could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// A kernel read without more to say than the read itself.
    #[error(transparent)]
    Kernel(#[from] KernelError),
    /// A `group_info` holds more groups than any kernel allows.
    #[error("{0} supplementary groups")]
    Groups(u64),
    /// An inode pointer is not a kernel pointer.
    #[error("bad inode pointer {0:#x}")]
    BadInode(u64),
    /// A field of a `struct inode` could not be read.
    #[error("inode {inode:#x}: {field}")]
    Inode {
        /// The inode.
        inode: u64,
        /// The field.
        field: &'static str,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
    /// The superblock of an inode could not be read.
    #[error("inode {inode:#x}: superblock {sb:#x}")]
    Superblock {
        /// The inode.
        inode: u64,
        /// Its `i_sb`.
        sb: u64,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
    /// A `struct file *` in the fd table is not a plausible kernel pointer.
    #[error("fd {fd}: bad file pointer {file:#x}")]
    BadFile {
        /// The descriptor.
        fd: u32,
        /// The pointer.
        file: u64,
    },
    /// A field of an open `struct file` could not be read.
    #[error("fd {fd}: file {file:#x}: {field}")]
    File {
        /// The descriptor.
        fd: u32,
        /// The `struct file`.
        file: u64,
        /// The field.
        field: &'static str,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
    /// The path of an open file could not be resolved.
    #[error("fd {fd}: path")]
    FdPath {
        /// The descriptor.
        fd: u32,
        /// Why.
        #[source]
        source: MmError,
    },
    /// The inode of an open file could not be read.
    #[error("fd {fd}")]
    FdInode {
        /// The descriptor.
        fd: u32,
        /// Why.
        #[source]
        source: Box<ProcessError>,
    },
    /// `fs->pwd` or `fs->root` points at no dentry.
    #[error("bad dentry {0:#x}")]
    BadDentry(u64),
    /// A directory's path could not be resolved.
    #[error(transparent)]
    Path(#[from] MmError),
}

/// Reads the inode of the `struct file` at `file`.
pub fn file_inode(k: &Kernel<'_>, file: u64) -> Result<InodeInfo, ProcessError> {
    let inode = k.read_field("file", "f_inode", file)?;
    read_inode(k, inode)
}

/// Reads the interesting fields of the `struct inode` at `inode`.
pub fn read_inode(k: &Kernel<'_>, inode: u64) -> Result<InodeInfo, ProcessError> {
    if !is_kernel_addr(inode) {
        return Err(ProcessError::BadInode(inode));
    }
    let f = |field: &'static str| {
        k.read_field("inode", field, inode)
            .map_err(|source| ProcessError::Inode {
                inode,
                field,
                source,
            })
    };
    let mode = u32::try_from(f("i_mode")?).unwrap_or(0);
    let size = f("i_size")?;
    let rdev = u32::try_from(f("i_rdev").unwrap_or(0)).unwrap_or(0);
    let ino = f("i_ino").unwrap_or(0);
    let sb = f("i_sb")?;
    let s_magic = k
        .read_field("super_block", "s_magic", sb)
        .map_err(|source| ProcessError::Superblock { inode, sb, source })?;
    Ok(InodeInfo {
        addr: inode,
        mode,
        size,
        s_magic,
        rdev,
        ino,
    })
}

/// Reads the `struct file` at `file`, open as descriptor `fd`. Path and inode failures are
/// returned as problems alongside the partial record.
pub fn read_open_file(
    k: &Kernel<'_>,
    fd: u32,
    file: u64,
) -> Result<(OpenFile, Vec<ProcessError>), ProcessError> {
    if !is_kernel_addr(file) || file & 7 != 0 {
        return Err(ProcessError::BadFile { fd, file });
    }
    let f = |field: &'static str| {
        k.read_field("file", field, file)
            .map_err(|source| ProcessError::File {
                fd,
                file,
                field,
                source,
            })
    };
    let flags = u32::try_from(f("f_flags")?).unwrap_or(0);
    let f_mode = u32::try_from(f("f_mode")?).unwrap_or(0);
    let pos = f("f_pos")?;
    let mut problems = Vec::new();
    let path = match file_path(k, file) {
        Ok(p) => Some(p),
        Err(source) => {
            problems.push(ProcessError::FdPath { fd, source });
            None
        }
    };
    let inode = match file_inode(k, file) {
        Ok(i) => Some(i),
        Err(e) => {
            problems.push(ProcessError::FdInode {
                fd,
                source: Box::new(e),
            });
            None
        }
    };
    Ok((
        OpenFile {
            fd,
            file,
            flags,
            f_mode,
            pos,
            cloexec: false,
            path,
            inode,
        },
        problems,
    ))
}

/// Reads a bitmap of `bits` bits at `addr` (whole u64 words).
fn read_bitmap(k: &Kernel<'_>, addr: u64, bits: u64) -> Result<Vec<u64>, KernelError> {
    let words = usize::try_from(bits.div_ceil(64)).unwrap_or(0);
    let mut buf = vec![0u8; words * 8];
    k.read_bytes(addr, &mut buf)?;
    Ok(buf
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(<[u8; 8]>::try_from(c).unwrap_or([0; 8])))
        .collect())
}

/// Walks the fd table of the `files_struct` at `files`.
pub fn read_files(k: &Kernel<'_>, files: u64) -> Partial<Vec<OpenFile>> {
    let mut out = Partial::ok(Vec::new());
    if files == 0 {
        return out;
    }
    let fdt = match k.read_field("files_struct", "fdt", files) {
        Ok(f) if is_kernel_addr(f) => f,
        Ok(f) => {
            out.problems
                .push(format!("files {files:#x}: bad fdt pointer {f:#x}"));
            return out;
        }
        Err(e) => {
            out.problems
                .push(format!("files {files:#x}: fdt: {}", error_chain(&e)));
            return out;
        }
    };
    let field = |p: &str| k.read_field("fdtable", p, fdt);
    let (max_fds, fd_array, open_fds, cloexec) = match (
        field("max_fds"),
        field("fd"),
        field("open_fds"),
        field("close_on_exec"),
    ) {
        (Ok(m), Ok(a), Ok(o), Ok(c)) => (m, a, o, c),
        (m, a, o, c) => {
            let e = [m, a, o, c].into_iter().find_map(Result::err);
            out.problems.push(format!(
                "fdtable {fdt:#x} unreadable: {}",
                e.map_or_else(String::new, |e| error_chain(&e))
            ));
            return out;
        }
    };
    let mut max = max_fds;
    if max > MAX_FDS {
        out.problems.push(format!(
            "fdtable {fdt:#x}: max_fds {max_fds} is above {MAX_FDS}: only the first {MAX_FDS} looked at"
        ));
        max = MAX_FDS;
    }
    let (candidates, scanning): (Vec<u64>, bool) = match read_bitmap(k, open_fds, max) {
        Ok(words) => (
            words
                .iter()
                .enumerate()
                .flat_map(|(w, &bits)| {
                    (0..64u64)
                        .filter(move |b| bits & (1 << b) != 0)
                        .map(move |b| w as u64 * 64 + b)
                })
                .filter(|&fd| fd < max)
                .collect(),
            false,
        ),
        Err(e) => {
            out.problems.push(format!(
                "fdtable {fdt:#x}: open_fds bitmap {open_fds:#x} unreadable ({}): scanning the fd array",
                error_chain(&e)
            ));
            ((0..max.min(FALLBACK_SCAN)).collect(), true)
        }
    };
    let cloexec_bits = read_bitmap(k, cloexec, max).unwrap_or_else(|e| {
        out.problems.push(format!(
            "fdtable {fdt:#x}: close_on_exec bitmap unreadable: {}",
            error_chain(&e)
        ));
        Vec::new()
    });
    // Read the fd array page by page, only where candidates are.
    let mut page_cache: Option<(u64, Result<Vec<u8>, KernelError>)> = None;
    for fd in candidates {
        if out.value.len() >= MAX_OPEN_FILES {
            out.problems.push(format!(
                "fdtable {fdt:#x}: more than {MAX_OPEN_FILES} open files, stopped"
            ));
            break;
        }
        let slot = fd_array.wrapping_add(fd * 8);
        let page = slot & !0xfff;
        if page_cache.as_ref().map(|(p, _)| *p) != Some(page) {
            let mut buf = vec![0u8; 4096];
            let r = k.read_bytes(page, &mut buf).map(|()| buf);
            page_cache = Some((page, r));
        }
        let ptr = match page_cache.as_ref().map(|(_, r)| r) {
            Some(Ok(buf)) => {
                let o = usize::try_from(slot & 0xfff).unwrap_or(0);
                buf.get(o..o + 8)
                    .and_then(|s| <[u8; 8]>::try_from(s).ok())
                    .map_or(0, u64::from_le_bytes)
            }
            Some(Err(e)) => {
                out.problems.push(format!(
                    "fdtable {fdt:#x}: fd array {fd_array:#x} unreadable at fd {fd}: {}",
                    error_chain(e)
                ));
                if scanning {
                    break;
                }
                continue;
            }
            None => 0,
        };
        // Marked open without a file: a number an open, socket or accept in progress has
        // reserved (`get_unused_fd_flags`) and not yet installed. The call comes back with
        // EINTR or runs again, so the number is simply free: not a reason to leave the
        // process out.
        if ptr == 0 {
            continue;
        }
        let fd32 = u32::try_from(fd).unwrap_or(u32::MAX);
        match read_open_file(k, fd32, ptr) {
            Ok((mut f, p)) => {
                let w = usize::try_from(fd / 64).unwrap_or(usize::MAX);
                f.cloexec = cloexec_bits
                    .get(w)
                    .is_some_and(|b| b & (1 << (fd % 64)) != 0);
                out.problems.extend(p.iter().map(|e| error_chain(e)));
                out.value.push(f);
            }
            Err(e) => out.problems.push(error_chain(&e)),
        }
    }
    out
}

/// Reads every signal action of the `sighand_struct` at `sighand` that is not `SIG_DFL`.
pub fn read_sigactions(k: &Kernel<'_>, sighand: u64) -> Partial<Vec<SigAction>> {
    let mut out = Partial::ok(Vec::new());
    let layout = (|| -> Result<_, KernelError> {
        let action = k.member("sighand_struct", "action")?;
        let elem = k
            .btf()
            .array_elem(action.type_id)
            .map(|e| k.btf().size_of(e))
            .transpose()?
            .unwrap_or(32);
        Ok((
            action.offset_bytes,
            elem,
            k.btf().array_len(action.type_id).unwrap_or(64),
            k.offset_of("k_sigaction", "sa.sa_handler")?,
            k.offset_of("k_sigaction", "sa.sa_flags")?,
            k.offset_of("k_sigaction", "sa.sa_restorer")?,
            k.offset_of("k_sigaction", "sa.sa_mask")?,
        ))
    })();
    let (action, elem, n, h, fl, r, m) = match layout {
        Ok(l) => l,
        Err(e) => {
            out.problems
                .push(format!("signal actions: {}", error_chain(&e)));
            return out;
        }
    };
    let n = usize::try_from(n.min(NSIG as u64)).unwrap_or(NSIG);
    let elem_len = usize::try_from(elem).unwrap_or(0);
    if !(32..=256).contains(&elem_len) {
        out.problems
            .push(format!("signal actions: k_sigaction of {elem} bytes"));
        return out;
    }
    if !is_kernel_addr(sighand) {
        out.problems
            .push(format!("signal actions: bad sighand pointer {sighand:#x}"));
        return out;
    }
    let mut buf = vec![0u8; n * elem_len];
    if let Err(e) = k.read_bytes(sighand.wrapping_add(action), &mut buf) {
        out.problems.push(format!(
            "signal actions: sighand {sighand:#x}: {}",
            error_chain(&e)
        ));
        return out;
    }
    let word = |chunk: &[u8], off: u64| {
        let o = usize::try_from(off).unwrap_or(usize::MAX);
        chunk
            .get(o..o.saturating_add(8))
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .map_or(0, u64::from_le_bytes)
    };
    for (i, chunk) in buf.chunks_exact(elem_len).enumerate() {
        let handler = word(chunk, h);
        if handler == 0 {
            continue;
        }
        out.value.push(SigAction {
            signo: u32::try_from(i + 1).unwrap_or(0),
            handler,
            flags: word(chunk, fl),
            restorer: word(chunk, r),
            mask: word(chunk, m),
        });
    }
    out
}

/// Reads `fs->pwd` and `fs->root` of the `fs_struct` at `fs` as paths.
pub fn read_fs(k: &Kernel<'_>, fs: u64) -> Partial<(Option<String>, Option<String>)> {
    let mut out = Partial::ok((None, None));
    if !is_kernel_addr(fs) {
        out.problems
            .push(format!("fs: bad fs_struct pointer {fs:#x}"));
        return out;
    }
    let path = |which: &str| -> Result<String, ProcessError> {
        let dentry = k.read_field("fs_struct", &format!("{which}.dentry"), fs)?;
        let mnt = k.read_field("fs_struct", &format!("{which}.mnt"), fs)?;
        if !is_kernel_addr(dentry) {
            return Err(ProcessError::BadDentry(dentry));
        }
        Ok(dentry_path(k, dentry, mnt)?)
    };
    match path("pwd") {
        Ok(p) => out.value.0 = Some(p),
        Err(e) => out.problems.push(format!("cwd: {}", error_chain(&e))),
    }
    match path("root") {
        Ok(p) => out.value.1 = Some(p),
        Err(e) => out.problems.push(format!("root: {}", error_chain(&e))),
    }
    out
}

/// Reads the shared state of the process led by `leader`.
pub fn read_process(k: &Kernel<'_>, leader: &Task) -> Partial<ProcessInfo> {
    let mut out = Partial::ok(ProcessInfo {
        tgid: leader.tgid,
        mnt_ns: crate::inotify::task_mnt_ns(k, leader.addr),
        ..ProcessInfo::default()
    });
    let sig = read_sigactions(k, leader.sighand);
    out.value.sigactions = sig.value;
    out.problems.extend(sig.problems);
    let files = read_files(k, leader.files);
    out.value.files = files.value;
    out.problems.extend(files.problems);
    let fs = read_fs(k, leader.fs);
    (out.value.cwd, out.value.root) = fs.value;
    out.problems.extend(fs.problems);
    if let Ok(signal) = k.read_field("task_struct", "signal", leader.addr) {
        if let Ok(p) = k.read_field("signal_struct", "shared_pending.signal", signal) {
            out.value.shared_pending = p;
        }
        out.value.limits = read_limits(k, leader, signal).ok();
    }
    match read_creds(k, leader) {
        Ok((c, cut)) => {
            if cut {
                out.problems.push(format!(
                    "credentials: more than {} supplementary groups: the first kept",
                    owvmm_manifest::MAX_GROUPS
                ));
            }
            out.value.creds = Some(c);
        }
        Err(e) => out.problems.push(format!(
            "credentials unreadable: {}",
            crate::error_chain(&e)
        )),
    }
    out
}

/// `NGROUPS_MAX`: the most supplementary groups a kernel holds.
const NGROUPS_MAX: u64 = 65536;

/// The credentials of `leader` (`real_cred`: ids, capability sets, securebits, groups)
/// and its mm's dumpable flag. True with them when the groups were cut to
/// [`owvmm_manifest::MAX_GROUPS`].
fn read_creds(
    k: &Kernel<'_>,
    leader: &Task,
) -> Result<(owvmm_manifest::Creds, bool), ProcessError> {
    let cred = k.read_field("task_struct", "real_cred", leader.addr)?;
    if !is_kernel_addr(cred) {
        return Err(KernelError::NotKernel(cred).into());
    }
    let id = |f: &str| -> Result<u32, KernelError> {
        Ok(u32::try_from(k.read_field("cred", f, cred)? & 0xffff_ffff).unwrap_or(u32::MAX))
    };
    let mut c = owvmm_manifest::Creds::default();
    for (slot, f) in c
        .uids
        .iter_mut()
        .zip(["uid.val", "euid.val", "suid.val", "fsuid.val"])
    {
        *slot = id(f)?;
    }
    for (slot, f) in c
        .gids
        .iter_mut()
        .zip(["gid.val", "egid.val", "sgid.val", "fsgid.val"])
    {
        *slot = id(f)?;
    }
    c.securebits = id("securebits")?;
    let sets = [
        "cap_inheritable",
        "cap_permitted",
        "cap_effective",
        "cap_bset",
        "cap_ambient",
    ];
    for (slot, f) in c.caps.iter_mut().zip(sets) {
        // kernel_cap_t: two u32 words (6.1) or one u64 (6.3 on): the same 8 bytes.
        *slot = k.read_u64(cred.wrapping_add(k.offset_of("cred", f)?))?;
    }
    let mut cut = false;
    let gi = k.read_field("cred", "group_info", cred)?;
    if gi != 0 {
        if !is_kernel_addr(gi) {
            return Err(KernelError::NotKernel(gi).into());
        }
        let n = k.read_field("group_info", "ngroups", gi)? & 0xffff_ffff;
        if n > NGROUPS_MAX {
            return Err(ProcessError::Groups(n));
        }
        let keep = n.min(owvmm_manifest::MAX_GROUPS as u64);
        cut = keep < n;
        let at = gi.wrapping_add(k.offset_of("group_info", "gid")?);
        let mut raw = vec![0u8; usize::try_from(keep * 4).unwrap_or(0)];
        k.read_bytes(at, &mut raw)?;
        c.groups = raw
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
    }
    // MMF_DUMPABLE_MASK: the two low bits of mm->flags.
    c.dumpable = match k.read_field("mm_struct", "flags", leader.mm) {
        Ok(f) => u32::try_from(f & 3).unwrap_or(1),
        Err(_) => 1,
    };
    Ok((c, cut))
}

/// The umask, personality and resource limits of the process led by `leader` (its
/// `signal_struct` at `signal`).
fn read_limits(
    k: &Kernel<'_>,
    leader: &Task,
    signal: u64,
) -> Result<owvmm_manifest::Limits, KernelError> {
    if !is_kernel_addr(signal) || !is_kernel_addr(leader.fs) {
        return Err(KernelError::NotKernel(signal));
    }
    let umask = k.read_field("fs_struct", "umask", leader.fs)? & 0o777;
    let personality = k.read_field("task_struct", "personality", leader.addr)? & 0xffff_ffff;
    let rlim = signal.wrapping_add(k.offset_of("signal_struct", "rlim")?);
    let mut rlimits = [(0, 0); owvmm_manifest::RLIMITS];
    for (i, slot) in (0u64..).zip(rlimits.iter_mut()) {
        let cur = k.read_u64(rlim.wrapping_add(i * 16))?;
        let max = k.read_u64(rlim.wrapping_add(i * 16 + 8))?;
        // The kernel keeps cur <= max; a torn pair is made consistent.
        *slot = (cur.min(max), max);
    }
    Ok(owvmm_manifest::Limits {
        umask: u32::try_from(umask).unwrap_or(0o22),
        personality: u32::try_from(personality).unwrap_or(0),
        rlimits,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::btf::build::Builder;
    use crate::btf::Btf;
    use crate::kernel::testmem::{dm, Mem};
    use crate::list::tests::MAP;
    use crate::symbols::SymbolTable;

    #[test]
    fn reads_ids_capabilities_groups_and_dumpable() {
        let mut b = Builder::new();
        let u32t = b.int("unsigned int", 4);
        let ulong = b.int("long unsigned int", 8);
        let kid = b.strukt("kuid_t", 4, &[("val", u32t, 0)]);
        let cap = b.strukt("kernel_cap_t", 8, &[("cap", ulong, 0)]);
        let ids = [
            "uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid",
        ];
        let mut members: Vec<(&str, u32, u32)> = (0u32..)
            .zip(ids)
            .map(|(i, n)| (n, kid, 32 + 32 * i))
            .collect();
        members.push(("securebits", u32t, 288));
        let sets = [
            "cap_inheritable",
            "cap_permitted",
            "cap_effective",
            "cap_bset",
            "cap_ambient",
        ];
        members.extend((0u32..).zip(sets).map(|(i, n)| (n, cap, 320 + 64 * i)));
        members.push(("group_info", ulong, 640));
        b.strukt("cred", 96, &members);
        b.strukt("group_info", 8, &[("ngroups", u32t, 32), ("gid", u32t, 64)]);
        b.strukt("task_struct", 16, &[("real_cred", ulong, 0)]);
        b.strukt("mm_struct", 8, &[("flags", ulong, 0)]);
        let btf = Btf::parse(&b.finish()).expect("btf");
        const TASK: u64 = 0x10_0000;
        const CRED: u64 = 0x10_1000;
        const GI: u64 = 0x10_2000;
        const MM: u64 = 0x10_3000;
        let mut m = Mem::new(0x20_0000);
        m.put_u64(TASK, dm(CRED));
        for (i, v) in (0u64..).zip([1000u32, 100, 1002, 102, 1001, 101, 1003, 103]) {
            m.put_u32(CRED + 4 + 4 * i, v);
        }
        m.put_u32(CRED + 36, 0x10);
        for (i, v) in (0u64..).zip([0x400u64, 0x420, 0x420, 0x1ff_fffe_ffff, 0x400]) {
            m.put_u64(CRED + 40 + 8 * i, v);
        }
        m.put_u64(CRED + 80, dm(GI));
        m.put_u32(GI + 4, 2);
        m.put_u32(GI + 8, 5);
        m.put_u32(GI + 12, 27);
        m.put_u64(MM, 0x2_0000_0001);
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let mut t = Task::for_tests(dm(TASK), 7);
        t.mm = dm(MM);
        let (c, cut) = read_creds(&k, &t).expect("creds");
        assert!(!cut);
        assert_eq!(c.uids, [1000, 1001, 1002, 1003]);
        assert_eq!(c.gids, [100, 101, 102, 103]);
        assert_eq!(c.securebits, 0x10);
        assert_eq!(c.caps, [0x400, 0x420, 0x420, 0x1ff_fffe_ffff, 0x400]);
        assert_eq!(c.groups, [5, 27]);
        assert_eq!(c.dumpable, 1);
        // An absurd group count or a wild cred pointer is refused, never read on.
        m.put_u32(GI + 4, 1 << 20);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert!(read_creds(&k, &t).is_err());
        m.put_u64(TASK, 0x1234);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert!(read_creds(&k, &t).is_err());
    }

    /// Types for files, inodes, signal actions, fs_struct and the page cache.
    pub(crate) fn btf() -> Btf {
        let mut b = Builder::new();
        let u8t = b.int("unsigned char", 1);
        let u16t = b.int("short unsigned int", 2);
        let u32t = b.int("unsigned int", 4);
        let ulong = b.int("long unsigned int", 8);
        let path = b.strukt("path", 16, &[("mnt", ulong, 0), ("dentry", ulong, 64)]);
        b.strukt("files_struct", 64, &[("fdt", ulong, 32 * 8)]);
        b.strukt(
            "fdtable",
            40,
            &[
                ("max_fds", u32t, 0),
                ("fd", ulong, 64),
                ("close_on_exec", ulong, 128),
                ("open_fds", ulong, 192),
            ],
        );
        b.strukt(
            "file",
            128,
            &[
                ("f_path", path, 16 * 8),
                ("f_inode", ulong, 32 * 8),
                ("f_flags", u32t, 64 * 8),
                ("f_mode", u32t, 68 * 8),
                ("f_pos", ulong, 104 * 8),
            ],
        );
        b.strukt(
            "inode",
            128,
            &[
                ("i_mode", u16t, 0),
                ("i_sb", ulong, 24 * 8),
                ("i_mapping", ulong, 32 * 8),
                ("i_rdev", u32t, 52 * 8),
                ("i_size", ulong, 56 * 8),
            ],
        );
        b.strukt("super_block", 128, &[("s_magic", ulong, 96 * 8)]);
        let int = b.int("int", 4);
        b.strukt(
            "linux_binprm",
            128,
            &[
                ("vma", ulong, 0),
                ("mm", ulong, 16 * 8),
                ("p", ulong, 24 * 8),
                ("file", ulong, 64 * 8),
                ("argc", int, 88 * 8),
                ("envc", int, 92 * 8),
                ("filename", ulong, 96 * 8),
            ],
        );
        let sa = b.strukt(
            "sigaction",
            32,
            &[
                ("sa_handler", ulong, 0),
                ("sa_flags", ulong, 64),
                ("sa_restorer", ulong, 128),
                ("sa_mask", ulong, 192),
            ],
        );
        let ksa = b.strukt("k_sigaction", 32, &[("sa", sa, 0)]);
        let actions = b.array(ksa, u32t, 64);
        b.strukt("sighand_struct", 32 + 2048, &[("action", actions, 32 * 8)]);
        b.strukt(
            "fs_struct",
            56,
            &[("root", path, 24 * 8), ("pwd", path, 40 * 8)],
        );
        let anon = b.strukt("", 8, &[("hash", u32t, 0), ("len", u32t, 32)]);
        let qstr = b.strukt("qstr", 16, &[("", anon, 0), ("name", ulong, 64)]);
        b.strukt(
            "dentry",
            64,
            &[("d_parent", ulong, 24 * 8), ("d_name", qstr, 32 * 8)],
        );
        let xa = b.strukt(
            "xarray",
            16,
            &[("xa_lock", u32t, 0), ("xa_head", ulong, 64)],
        );
        b.strukt(
            "address_space",
            64,
            &[("host", ulong, 0), ("i_pages", xa, 64)],
        );
        let slots = b.array(ulong, u32t, 16);
        b.strukt(
            "xa_node",
            168,
            &[
                ("shift", u8t, 0),
                ("parent", ulong, 64),
                ("slots", slots, 40 * 8),
            ],
        );
        b.strukt(
            "page",
            64,
            &[
                ("flags", ulong, 0),
                ("compound_head", ulong, 64),
                ("mapping", ulong, 24 * 8),
            ],
        );
        Btf::parse(&b.finish()).expect("btf")
    }

    pub(crate) fn with_kernel<T>(m: &Mem, f: impl FnOnce(&Kernel<'_>) -> T) -> T {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let k = Kernel::new(m, &syms, &btf).expect("kernel");
        f(&k)
    }

    pub(crate) const FILES: u64 = 0x10_0000;
    const FDT: u64 = 0x10_1000;
    const FDARR: u64 = 0x10_2000;
    const OPEN: u64 = 0x10_3000;
    const CLOEXEC: u64 = 0x10_3100;
    pub(crate) const SB_TMPFS: u64 = 0x10_4000;
    const SB_DEV: u64 = 0x10_4100;
    const ROOT: u64 = 0x10_5000;
    const NAMES: u64 = 0x13_0000;

    fn put_dentry(m: &mut Mem, pa: u64, parent: u64, name: &str) {
        m.put_u64(pa + 24, dm(parent));
        let npa = NAMES + ((pa >> 4) & 0xfff0);
        m.put(npa, name.as_bytes());
        m.put_u32(pa + 36, u32::try_from(name.len()).expect("small"));
        m.put_u64(pa + 40, dm(npa));
    }

    /// A file at `pa` named `/name` with inode at `pa + 0x200`.
    pub(crate) fn put_file(m: &mut Mem, pa: u64, name: &str, mode: u16, flags: u32, sb: u64) {
        let dentry = pa + 0x400;
        put_dentry(m, dentry, ROOT, name);
        m.put_u64(pa + 24, dm(dentry));
        m.put_u64(pa + 32, dm(pa + 0x200));
        m.put_u32(pa + 64, flags);
        m.put_u64(pa + 104, 0x123);
        m.put(pa + 0x200, &mode.to_le_bytes());
        m.put_u64(pa + 0x200 + 24, dm(sb));
        m.put_u64(pa + 0x200 + 56, 5000);
    }

    /// fds 0 (chr /console), 1 (reg /data, O_RDWR, cloexec), 3 (sock).
    pub(crate) fn world() -> Mem {
        let mut m = Mem::new(0x20_0000);
        put_dentry(&mut m, ROOT, ROOT, "/");
        m.put_u64(SB_TMPFS + 96, TMPFS_MAGIC);
        m.put_u64(SB_DEV + 96, 0x1373);
        m.put_u64(FILES + 32, dm(FDT));
        m.put_u32(FDT, 64);
        m.put_u64(FDT + 8, dm(FDARR));
        m.put_u64(FDT + 16, dm(CLOEXEC));
        m.put_u64(FDT + 24, dm(OPEN));
        m.put_u64(OPEN, 0b1011);
        m.put_u64(CLOEXEC, 0b10);
        for (fd, pa, name, mode, flags, sb) in [
            (0u64, 0x11_0000u64, "console", 0o20620u16, 2u32, SB_DEV),
            (1, 0x11_1000, "data", 0o100644, O_RDWR, SB_TMPFS),
            (3, 0x11_2000, "sock", 0o140777, 2, SB_DEV),
        ] {
            put_file(&mut m, pa, name, mode, flags, sb);
            m.put_u64(FDARR + fd * 8, dm(pa));
        }
        m
    }

    #[test]
    fn reads_the_fd_table() {
        let m = world();
        let r = with_kernel(&m, |k| read_files(k, dm(FILES)));
        assert!(r.is_complete(), "{:?}", r.problems);
        let fds: Vec<(u32, FileKind, Option<&str>, bool)> = r
            .value
            .iter()
            .map(|f| (f.fd, f.kind(), f.path.as_deref(), f.cloexec))
            .collect();
        assert_eq!(
            fds,
            [
                (0, FileKind::Chr, Some("/console"), false),
                (1, FileKind::Reg, Some("/data"), true),
                (3, FileKind::Sock, Some("/sock"), false),
            ]
        );
        let data = &r.value[1];
        assert!(data.writable() && data.pos == 0x123);
        let ino = data.inode.expect("inode");
        assert!(ino.in_memory_fs() && ino.size == 5000 && ino.mode & 0o7777 == 0o644);
        assert!(!r.value[0].inode.expect("inode").in_memory_fs());
    }

    #[test]
    fn corrupt_fd_tables_are_bounded_and_reported() {
        // Wild fdt pointer.
        let mut m = world();
        m.put_u64(FILES + 32, 0x4141_4141_4141_4141);
        let r = with_kernel(&m, |k| read_files(k, dm(FILES)));
        assert!(r.value.is_empty() && r.problems[0].contains("bad fdt"));
        // fdt beyond memory.
        let mut m = world();
        m.put_u64(FILES + 32, dm(0x4000_0000));
        let r = with_kernel(&m, |k| read_files(k, dm(FILES)));
        assert!(r.value.is_empty() && r.problems[0].contains("unreadable"));
        // Huge max_fds: capped; the bitmap past memory falls back to a bounded scan.
        let mut m = world();
        m.put_u32(FDT, u32::MAX);
        let r = with_kernel(&m, |k| read_files(k, dm(FILES)));
        assert!(
            r.problems.iter().any(|p| p.contains("max_fds")),
            "{:?}",
            r.problems
        );
        assert!(r.value.len() <= 3);
        // Wild fd array and a wild file pointer.
        let mut m = world();
        m.put_u64(FDT + 8, dm(0x7000_0000));
        let r = with_kernel(&m, |k| read_files(k, dm(FILES)));
        assert!(r.value.is_empty() && !r.problems.is_empty());
        let mut m = world();
        m.put_u64(FDARR + 8, 0xdead);
        m.put_u64(FDARR + 24, dm(0x7000_0000));
        let r = with_kernel(&m, |k| read_files(k, dm(FILES)));
        assert_eq!(r.value.len(), 1);
        assert!(r
            .problems
            .iter()
            .any(|p| p.contains("fd 1: bad file pointer")));
        assert!(
            r.problems.iter().any(|p| p.starts_with("fd 3")),
            "{:?}",
            r.problems
        );
        // Unreadable bitmap: scan finds the files anyway.
        let mut m = world();
        m.put_u64(FDT + 24, dm(0x7000_0000));
        let r = with_kernel(&m, |k| read_files(k, dm(FILES)));
        assert_eq!(r.value.len(), 3);
        assert!(r.problems.iter().any(|p| p.contains("scanning")));
        // A set bit without a file (a number reserved by an open in progress): not open,
        // and no problem.
        let mut m = world();
        m.put_u64(OPEN, 0b1111);
        let r = with_kernel(&m, |k| read_files(k, dm(FILES)));
        assert!(r.value.iter().all(|f| f.fd != 2), "{:?}", r.value);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn open_file_failures_are_typed() {
        let data = 0x11_1000u64;
        let mut m = world();
        m.put_u64(data + 32, 0x4242); // f_inode
        with_kernel(&m, |k| {
            assert_eq!(
                read_open_file(k, 9, 0x4242).map(|_| ()),
                Err(ProcessError::BadFile {
                    fd: 9,
                    file: 0x4242
                })
            );
            // A bad inode loses the inode only, as a problem of the fd.
            let (f, problems) = read_open_file(k, 1, dm(data)).expect("file");
            assert_eq!(f.path.as_deref(), Some("/data"));
            assert_eq!(
                problems,
                [ProcessError::FdInode {
                    fd: 1,
                    source: Box::new(ProcessError::BadInode(0x4242))
                }]
            );
            assert_eq!(error_chain(&problems[0]), "fd 1: bad inode pointer 0x4242");
        });
        // An unreadable superblock keeps the kernel error as the source.
        let mut m = world();
        m.put_u64(data + 0x200 + 24, dm(0x7000_0000)); // i_sb
        with_kernel(&m, |k| {
            let e = file_inode(k, dm(data)).expect_err("no superblock");
            assert!(
                matches!(
                    &e,
                    ProcessError::Superblock { inode, source: KernelError::Unreadable { .. }, .. }
                        if *inode == dm(data + 0x200)
                ),
                "{e:?}"
            );
        });
    }

    #[test]
    fn reads_signal_actions_and_cwd() {
        let mut m = world();
        let sh = 0x12_0000u64;
        // SIGINT (2): handler; SIGQUIT (3): SIG_IGN; SIGTERM (15): default.
        let act = |i: u64| sh + 32 + (i - 1) * 32;
        m.put_u64(act(2), 0x40_1000);
        m.put_u64(act(2) + 8, 0x0400_0000);
        m.put_u64(act(2) + 16, 0x40_2000);
        m.put_u64(act(2) + 24, 1 << 1);
        m.put_u64(act(3), 1);
        m.put_u64(act(15) + 8, 0x0400_0000);
        let fs = 0x12_1000u64;
        let d = 0x12_2000u64;
        put_dentry(&mut m, d, ROOT, "tmp");
        m.put_u64(fs + 40 + 8, dm(d));
        m.put_u64(fs + 24 + 8, dm(ROOT));
        with_kernel(&m, |k| {
            let r = read_sigactions(k, dm(sh));
            assert!(r.is_complete());
            assert_eq!(
                r.value,
                [
                    SigAction {
                        signo: 2,
                        handler: 0x40_1000,
                        flags: 0x0400_0000,
                        restorer: 0x40_2000,
                        mask: 2
                    },
                    SigAction {
                        signo: 3,
                        handler: 1,
                        flags: 0,
                        restorer: 0,
                        mask: 0
                    }
                ]
            );
            let f = read_fs(k, dm(fs));
            assert!(f.is_complete(), "{:?}", f.problems);
            assert_eq!(f.value, (Some("/tmp".to_owned()), Some("/".to_owned())));
            assert!(!read_sigactions(k, 0x10).is_complete());
            assert!(!read_sigactions(k, dm(0x7000_0000)).is_complete());
            assert!(!read_fs(k, 0).is_complete());
        });
    }

    #[test]
    fn file_kinds() {
        assert_eq!(FileKind::from_mode(0o100644), FileKind::Reg);
        assert_eq!(FileKind::from_mode(0o010600).manifest_name(), "fifo");
        assert_eq!(FileKind::from_mode(0o600).manifest_name(), "other");
        assert_eq!(FileKind::from_mode(0o060600).manifest_name(), "other");
        assert_eq!(FileKind::from_mode(0o040755).manifest_name(), "dir");
    }
}
