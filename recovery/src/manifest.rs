//! The resurrection manifest (`docs/resurrection.md`, version 1): what the crash kernel's
//! agent needs to recreate each process of the dead kernel, built from a [`Report`].
//!
//! A process goes into the manifest only when everything about it was read cleanly and can
//! be restored; otherwise it is listed in [`Manifest::excluded`] with the reason, so that
//! nothing is resumed in a wrong state.
//!
//! The types, the text and its parser are the `owvmm-manifest` crate's (re-exported here
//! as [`wire`]); this module only decides what goes in.

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use owvmm_manifest as wire;
pub use owvmm_manifest::{Excluded, HEADER};

use crate::error_chain;
use crate::exec::{can_restart, find_exec, in_exec, ExecArgs, ExecError};
use crate::inspect::Report;
use crate::kernel::Kernel;
use crate::mm::{MmInfo, Vma, VM_EXEC, VM_GROWSDOWN, VM_READ, VM_SHARED, VM_WRITE};
use crate::pages::{file_pages, FileContent};
use crate::process::{
    file_inode, FileKind, InodeInfo, OpenFile, ProcessError, ProcessInfo, O_CLOEXEC,
};
use crate::regs::{final_user_regs, CpuUserState, UserRegs};
use crate::tasks::{FxSave, Task, ROBUST_LIST_HEAD_LEN, USER_CS};

/// Why a process cannot go into the manifest. [`Manifest::excluded`] holds its full chain
/// as the reason. Problems the readers reported (as text) are carried as `problem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Another thread group uses the same address space.
    #[error("address space shared with pid {other} (vfork or CLONE_VM)")]
    SharedMm {
        /// The other thread group.
        other: i32,
    },
    /// A thread does not share something with its leader.
    #[error("thread {tid} has its own {what}")]
    ThreadOwn {
        /// The thread.
        tid: i32,
        /// What it has of its own.
        what: &'static str,
    },
    /// The address space was not read.
    #[error("address space not read")]
    MmNotRead,
    /// Reading the address space had a problem.
    #[error("address space: {problem}")]
    MmProblem {
        /// The first problem.
        problem: String,
    },
    /// The process's shared state was not read.
    #[error("process state not read")]
    ProcessNotRead,
    /// Reading the process's shared state had a problem.
    #[error("{problem}")]
    ProcessProblem {
        /// The first problem.
        problem: String,
    },
    /// The path of the executable is unknown.
    #[error("executable unknown")]
    ExeUnknown,
    /// The executable was deleted.
    #[error("executable was deleted ({path})")]
    ExeDeleted {
        /// Its path.
        path: String,
    },
    /// The current directory is unknown.
    #[error("current directory unknown")]
    CwdUnknown,
    /// The current directory was deleted.
    #[error("current directory was deleted ({path})")]
    CwdDeleted {
        /// Its path.
        path: String,
    },
    /// `saved_auxv` could not be read.
    #[error("saved auxv unreadable")]
    NoAuxv,
    /// A memory file's pages could not be read.
    #[error("fd {fd}: memfd: {problem}")]
    MemoryFile {
        /// The descriptor.
        fd: u32,
        /// Why.
        problem: String,
    },
    /// The credentials could not be read (restored as root it would gain privilege).
    #[error("credentials unreadable")]
    NoCreds,
    /// A special mapping other than the vDSO and vvar.
    #[error("vma {vma:#x}: special mapping {}", .name.as_deref().unwrap_or("without a file"))]
    SpecialMapping {
        /// Start of the area.
        vma: u64,
        /// Its label.
        name: Option<String>,
    },
    /// The inode of a mapped file could not be read.
    #[error("vma {vma:#x}")]
    VmaInode {
        /// Start of the area.
        vma: u64,
        /// Why.
        #[source]
        source: ProcessError,
    },
    /// The path of a mapped file is unknown.
    #[error("vma {vma:#x}: file path unknown")]
    VmaPathUnknown {
        /// Start of the area.
        vma: u64,
    },
    /// An area maps something other than a regular file.
    #[error("vma {vma:#x}: maps a {kind} file ({path})")]
    VmaFileKind {
        /// Start of the area.
        vma: u64,
        /// The file's kind (its manifest name).
        kind: &'static str,
        /// Its path.
        path: String,
    },
    /// An area maps a deleted or pseudo file.
    #[error("vma {vma:#x}: maps a file that cannot be reopened ({path})")]
    VmaNotReopenable {
        /// Start of the area.
        vma: u64,
        /// Its path.
        path: String,
    },
    /// The page walk of an area had a problem.
    #[error("vma {vma:#x}: pages: {problem}")]
    VmaPages {
        /// Start of the area.
        vma: u64,
        /// The first problem.
        problem: String,
    },
    /// The page cache of a shared anonymous area had a problem.
    #[error("vma {vma:#x}: shared memory: {problem}")]
    SharedMemory {
        /// Start of the area.
        vma: u64,
        /// The first problem.
        problem: String,
    },
    /// An open file of a kind that cannot be reopened.
    #[error("fd {fd}: cannot restore {kind}")]
    FdKind {
        /// The descriptor.
        fd: u32,
        /// The file's kind (its manifest name).
        kind: &'static str,
    },
    /// The path of an open file is unknown.
    #[error("fd {fd}: path unknown")]
    FdPathUnknown {
        /// The descriptor.
        fd: u32,
    },
    /// An open file is deleted or a pseudo file.
    #[error("fd {fd}: cannot reopen {path}")]
    FdNotReopenable {
        /// The descriptor.
        fd: u32,
        /// Its path.
        path: String,
    },
    /// A descriptor number does not fit the manifest.
    #[error("fd {fd}: number too large")]
    FdTooLarge {
        /// The descriptor.
        fd: u32,
    },
    /// A signal number does not fit the manifest.
    #[error("bad signal {0}")]
    BadSignal(u32),
    /// A pid or tid does not fit the manifest.
    #[error("bad pid {0}")]
    BadPid(i32),
    /// A thread's FPU state is needed but was not read.
    #[error("thread {tid}: FPU state unreadable")]
    NoFpu {
        /// The thread.
        tid: i32,
    },
    /// A thread has no user registers saved on its kernel stack.
    #[error("thread {tid}: no saved user registers")]
    NoUserRegs {
        /// The thread.
        tid: i32,
    },
    /// A thread's saved frame is not 64-bit user code.
    #[error("thread {tid}: not a 64-bit user frame (cs {cs:#x})")]
    Not64BitFrame {
        /// The thread.
        tid: i32,
        /// Its saved `cs`.
        cs: u64,
    },
    /// A thread's saved frame is not a user frame.
    #[error("thread {tid}: saved frame is not a user frame")]
    NotUserFrame {
        /// The thread.
        tid: i32,
    },
    /// The task is inside `execve` past its point of no return, and the exec cannot be
    /// done again.
    #[error("caught inside execve, its arguments could not be read")]
    ExecArgs {
        /// Why.
        #[source]
        source: ExecError,
    },
    /// A task caught inside `execve` still has other threads.
    #[error("caught inside execve with {threads} threads")]
    ExecThreads {
        /// Threads not exiting.
        threads: usize,
    },
    /// A descriptor in flight on a Unix socket cannot be passed again.
    #[error("descriptor {n} in flight with message {msg}")]
    Passed {
        /// The message (0: the first queued).
        msg: usize,
        /// Its place among the message's descriptors.
        n: usize,
        /// Why.
        #[source]
        source: Box<ManifestError>,
    },
    /// Descriptors in flight nest too deep.
    #[error("in flight more than {MAX_PASSED_DEPTH} sockets deep")]
    PassedTooDeep,
    /// A descriptor in flight could not be read.
    #[error("unreadable")]
    PassedFile(#[source] ProcessError),
    /// A descriptor in flight of a kind the agent cannot pass.
    #[error("cannot pass a {kind}")]
    PassedKind {
        /// The kind.
        kind: &'static str,
    },
    /// An eventfd, signalfd or timerfd could not be read.
    #[error("fd {fd}")]
    EventFd {
        /// The descriptor.
        fd: u32,
        /// Why.
        #[source]
        source: crate::eventfds::EventFdError,
    },
    /// A terminal could not be read.
    #[error("fd {fd}: terminal")]
    Tty {
        /// The descriptor.
        fd: u32,
        /// Why.
        #[source]
        source: crate::ttys::TtyError,
    },
    /// A pipe's content could not be read.
    #[error("pipe {id}")]
    PipeContent {
        /// Its inode number.
        id: u64,
        /// Why.
        #[source]
        source: crate::pipes::PipeError,
    },
    /// The content of an in-memory file had a problem.
    #[error("file {path}: content: {problem}")]
    FileContent {
        /// The file's path.
        path: String,
        /// The first problem.
        problem: String,
    },
}

/// A built manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest.
    pub manifest: wire::Manifest,
    /// Its text, as [`wire::Manifest::to_text`] writes it (ends with a newline).
    pub text: String,
    /// Pids of the processes in it, in order.
    pub processes: Vec<i32>,
    /// User processes not in it, with reasons.
    pub excluded: Vec<Excluded>,
    /// Things worth knowing that did not exclude anything (fallbacks taken).
    pub notes: Vec<String>,
}

/// A `vma` record's kind, as recovery sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VmaKind {
    Anon,
    /// Shared anonymous memory (a shmem `/dev/zero` object): content from its page cache.
    SharedAnon,
    File,
    Heap,
    Stack,
    Vdso,
    Vvar,
}

impl VmaKind {
    fn wire(self) -> wire::VmaKind {
        match self {
            VmaKind::Anon | VmaKind::SharedAnon => wire::VmaKind::Anon,
            VmaKind::File => wire::VmaKind::File,
            VmaKind::Heap => wire::VmaKind::Heap,
            VmaKind::Stack => wire::VmaKind::Stack,
            VmaKind::Vdso => wire::VmaKind::Vdso,
            VmaKind::Vvar => wire::VmaKind::Vvar,
        }
    }
}

/// A regular file to write before the processes come back: one of an in-memory
/// filesystem, recreated whole, or one on a disk that a process could write, patched with
/// the pages the dead kernel had not written back.
#[derive(Debug, Clone)]
struct FileRecord {
    path: String,
    inode: InodeInfo,
    overwrite: bool,
}

impl FileRecord {
    /// On a disk (its content is there but for the dirty pages).
    fn on_disk(&self) -> bool {
        !self.inode.in_memory_fs()
    }
}

/// What a process becomes in the manifest.
enum Entry {
    /// A `process` block: its image.
    Process(Box<wire::Process>),
    /// An `exec` block: an interrupted exec, done again.
    Exec(Box<wire::Exec>),
}

/// One process, and what it needs made before it.
struct Rendered {
    entry: Entry,
    wanted: Wanted,
}

/// Collects the in-memory files, pipes, sockets and terminals a process needs.
#[derive(Default)]
struct Wanted {
    files: Vec<FileRecord>,
    /// The inodes of the pipes it has ends of (anonymous, and named FIFOs).
    pipes: Vec<InodeInfo>,
    /// The named FIFOs among them: inode address and path.
    fifo_paths: Vec<(u64, String)>,
    /// The inet sockets it holds, by id.
    inets: Vec<(u32, crate::sockets::InetSocket)>,
    /// The connected Unix sockets it holds (or that are in flight on those), by id.
    unixes: Vec<UnixWanted>,
    /// The listening Unix sockets it holds, by id.
    ulistens: Vec<(u32, crate::sockets::UnixListener)>,
    /// The established TCP connections it holds, by id.
    tcps: Vec<(u32, crate::tcp::TcpConn)>,
    /// The pseudo-terminals it has ends of, by id (the pts number).
    ptys: Vec<(u32, crate::ttys::Pty)>,
    /// The other terminals it holds (the console), by path.
    ttys: Vec<wire::TtyRec>,
    /// The memory files (memfd) it holds by a descriptor, with their contents.
    shms: Vec<wire::ShmRec>,
}

/// A connected Unix socket to make again.
#[derive(Debug, Clone)]
struct UnixWanted {
    id: u32,
    end: crate::sockets::UnixEnd,
    /// The descriptors in flight with each of its messages.
    passed: Vec<Vec<wire::FdRec>>,
}

impl Wanted {
    fn want(&mut self, path: &str, inode: InodeInfo, writable: bool) {
        if inode.kind() == FileKind::Reg && (inode.in_memory_fs() || writable) {
            self.files.push(FileRecord {
                path: path.to_owned(),
                inode,
                overwrite: writable,
            });
        }
    }
}

fn deleted(path: &str) -> bool {
    path.ends_with(" (deleted)")
}

fn classify_vma(k: &Kernel<'_>, v: &Vma) -> Result<(VmaKind, Option<InodeInfo>), ManifestError> {
    let at = v.start;
    match v.name.as_deref() {
        Some("[vdso]") => return Ok((VmaKind::Vdso, None)),
        Some("[vvar]") => return Ok((VmaKind::Vvar, None)),
        _ => {}
    }
    if v.ops == 0 {
        // Anonymous (a private /dev/zero mapping keeps vm_file but has no vm_ops).
        return Ok((
            match v.name.as_deref() {
                Some("[heap]") => VmaKind::Heap,
                Some("[stack]") => VmaKind::Stack,
                _ => VmaKind::Anon,
            },
            None,
        ));
    }
    if v.file_addr == 0 {
        return Err(ManifestError::SpecialMapping {
            vma: at,
            name: v.name.clone(),
        });
    }
    let inode =
        file_inode(k, v.file_addr).map_err(|source| ManifestError::VmaInode { vma: at, source })?;
    let path = v
        .file
        .as_deref()
        .ok_or(ManifestError::VmaPathUnknown { vma: at })?;
    // Shared anonymous memory, and memfd or SysV memory (shmem files on the kernel's
    // internal mount, which no path reaches): one memory object, by its inode.
    if v.flags & VM_SHARED != 0
        && inode.s_magic == crate::process::TMPFS_MAGIC
        && (path == "/dev/zero (deleted)" || is_memfd_path(path))
    {
        return Ok((VmaKind::SharedAnon, Some(inode)));
    }
    if inode.kind() != FileKind::Reg {
        return Err(ManifestError::VmaFileKind {
            vma: at,
            kind: inode.kind().manifest_name(),
            path: path.to_owned(),
        });
    }
    if deleted(path) || path.starts_with('[') {
        return Err(ManifestError::VmaNotReopenable {
            vma: at,
            path: path.to_owned(),
        });
    }
    Ok((VmaKind::File, Some(inode)))
}

/// `PROT_*` bits of `vm_flags`.
fn prot(flags: u64) -> i32 {
    let f = |bit, p| if flags & bit != 0 { p } else { 0 };
    f(VM_READ, wire::PROT_READ) | f(VM_WRITE, wire::PROT_WRITE) | f(VM_EXEC, wire::PROT_EXEC)
}

/// The registers and FPU image a thread resumes with.
fn thread_state(
    t: &Task,
    live: Option<&CpuUserState>,
    syscall_entry: Option<u64>,
    moved: Option<u64>,
    notes: &mut Vec<String>,
) -> Result<(UserRegs, FxSave), ManifestError> {
    let mem_fpu = t.fpu.ok_or(ManifestError::NoFpu { tid: t.pid });
    // kvm_pvm leaves a user-mode SYSCALL half done: RCX/R11 loaded, RIP at
    // entry_SYSCALL_64, still in user mode (guest-kernel patch 0003 finishes it from the
    // page-fault handler). Caught there, the system call has not started: resume at the
    // SYSCALL instruction, with RAX still holding its number.
    let unstarted = |ip: u64, cs: u64| syscall_entry == Some(ip) && cs & 3 == 3;
    match live {
        Some(c) if c.cpl3 && unstarted(c.regs.rip, c.regs.cs) => {
            let mut r = c.regs.normalized();
            r.rip = r.rcx.wrapping_sub(2);
            r.eflags = r.r11;
            let fpu = if t.fpu_live_in_cpu() {
                c.fxsave
            } else {
                mem_fpu?
            };
            Ok((r, fpu))
        }
        Some(c) if c.cpl3 => {
            let fpu = if t.fpu_live_in_cpu() {
                c.fxsave
            } else {
                mem_fpu?
            };
            Ok((c.regs.normalized(), fpu))
        }
        _ => {
            let mut pt = t.regs.ok_or(ManifestError::NoUserRegs { tid: t.pid })?;
            if unstarted(pt.ip, pt.cs) {
                pt.ip = pt.cx.wrapping_sub(2);
                pt.flags = pt.r11;
                pt.orig_ax = u64::MAX;
            }
            if pt.cs != USER_CS {
                return Err(ManifestError::Not64BitFrame {
                    tid: t.pid,
                    cs: pt.cs,
                });
            }
            if !pt.is_user() {
                return Err(ManifestError::NotUserFrame { tid: t.pid });
            }
            let fpu = match live {
                // Current in kernel mode: registers in memory, FPU possibly still live.
                Some(c) if t.fpu_live_in_cpu() => c.fxsave,
                _ => {
                    if live.is_none() && t.on_cpu && t.fpu_live_in_cpu() {
                        notes.push(format!(
                            "thread {}: was on a CPU with its FPU loaded but no vCPU matches: FPU from memory",
                            t.pid
                        ));
                    }
                    mem_fpu?
                }
            };
            Ok((final_user_regs(&pt, t.fsbase, t.gsbase, moved), fpu))
        }
    }
}

/// A file of the kernel's internal shmem mount (a memfd, SysV memory): pseudo files
/// named through `d_dname`, `[tmpfs:memfd:NAME]` here (`/memfd:NAME (deleted)` in
/// `/proc`).
fn is_memfd_path(path: &str) -> bool {
    path.starts_with("[tmpfs:") || path.starts_with("/memfd:")
}

/// Largest memory file read (bytes).
const MAX_MEMFD_BYTES: u64 = 1 << 34;

/// The size and pages of the memory file `inode` (id `id`), as `sdata` runs.
fn memfd_content(k: &Kernel<'_>, id: u32, inode: &InodeInfo) -> Result<wire::ShmRec, String> {
    if inode.size > MAX_MEMFD_BYTES.min(wire::MAX_SHM_SIZE) {
        return Err(format!("{} bytes", inode.size));
    }
    let content = file_pages(k, inode.addr);
    if let Some(p) = content.problems.first() {
        return Err(p.clone());
    }
    let mut data: Vec<wire::ShmRun> = Vec::new();
    let mut pages = content.value.pages;
    pages.sort_unstable();
    for (idx, phys) in pages {
        let offset = idx.saturating_mul(4096);
        if offset >= inode.size {
            continue;
        }
        let len = (inode.size - offset).min(4096);
        if let Some(r) = data.last_mut() {
            if r.offset + r.len == offset && r.gpa + r.len == phys && r.len % 4096 == 0 {
                r.len += len;
                continue;
            }
        }
        data.push(wire::ShmRun {
            offset,
            gpa: phys,
            len,
        });
    }
    Ok(wire::ShmRec {
        id,
        size: inode.size,
        data,
    })
}

/// Copies of a shared anonymous area: its shmem object's cached pages at `pgoff..`.
fn shared_anon_copies(
    k: &Kernel<'_>,
    v: &Vma,
    inode: &InodeInfo,
) -> Result<Vec<wire::Copy>, ManifestError> {
    let content = file_pages(k, inode.addr);
    if let Some(p) = content.problems.first() {
        return Err(ManifestError::SharedMemory {
            vma: v.start,
            problem: p.clone(),
        });
    }
    let pages = (v.end - v.start) / 4096;
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for &(idx, phys) in &content.value.pages {
        let Some(rel) = idx.checked_sub(v.pgoff).filter(|&r| r < pages) else {
            continue;
        };
        let va = v.start + rel * 4096;
        if let Some(r) = runs.last_mut() {
            if r.0 + r.2 == va && r.1 + r.2 == phys {
                r.2 += 4096;
                continue;
            }
        }
        runs.push((va, phys, 4096));
    }
    Ok(runs
        .into_iter()
        .map(|(vaddr, gpa, len)| wire::Copy { vaddr, gpa, len })
        .collect())
}

/// `(gpa, len)` runs as the manifest has them.
fn runs(v: &[(u64, u64)]) -> Vec<wire::PipeRun> {
    v.iter()
        .map(|&(gpa, len)| wire::PipeRun { gpa, len })
        .collect()
}

/// A pid or tid as the manifest has it.
fn wire_pid(pid: i32) -> Result<u32, ManifestError> {
    u32::try_from(pid).map_err(|_| ManifestError::BadPid(pid))
}

/// The `fd` records of a process and the `epoll` and `inotify` records of its epoll
/// and inotify descriptors.
struct Fds {
    fds: Vec<wire::FdRec>,
    epoll: Vec<wire::EpollRec>,
    inotify: Vec<wire::InotifyRec>,
}

/// The `fd` records of a process (`after_exec`: without the close-on-exec ones, which an
/// exec closes).
fn render_fds(
    k: &Kernel<'_>,
    proc_: &ProcessInfo,
    after_exec: bool,
    files: &mut Wanted,
    notes: &mut Vec<String>,
) -> Result<Fds, ManifestError> {
    let mut out = Fds {
        fds: Vec::with_capacity(proc_.files.len()),
        epoll: Vec::new(),
        inotify: Vec::new(),
    };
    for f in proc_.files.iter().filter(|f| !(after_exec && f.cloexec)) {
        let fd = i32::try_from(f.fd).map_err(|_| ManifestError::FdTooLarge { fd: f.fd })?;
        let flags = f.flags | if f.cloexec { O_CLOEXEC } else { 0 };
        if let Some(r) = render_fd(k, proc_, f, fd, flags, files, notes, &mut out, 0)? {
            out.fds.push(r);
        }
    }
    // Only descriptors the process has back may be watched.
    let fds = &out.fds;
    out.epoll.retain(|e| fds.iter().any(|f| f.fd == e.fd));
    Ok(out)
}

/// How deep descriptors in flight may nest (a Unix socket passed with a message queued
/// on a Unix socket passed with a message ...).
const MAX_PASSED_DEPTH: u32 = 4;

/// The `fd` record of the open file `f` as descriptor `fd` with the status flags `flags`
/// (None: nothing to restore), with the resources it needs added to `files` and an epoll
/// instance's interest list or an inotify instance's watches to `side`. `depth` counts the messages in flight it was found
/// in (0: a process holds it).
#[allow(clippy::too_many_arguments)]
fn render_fd(
    k: &Kernel<'_>,
    proc_: &ProcessInfo,
    f: &OpenFile,
    fd: i32,
    flags: u32,
    files: &mut Wanted,
    notes: &mut Vec<String>,
    side: &mut Fds,
    depth: u32,
) -> Result<Option<wire::FdRec>, ManifestError> {
    let pid = proc_.tgid;
    let kind = f.kind();
    if let Some(inode) = f
        .inode
        .filter(|i| i.s_magic == crate::sockets::SOCKFS_MAGIC)
    {
        // A Unix socket: a connected one made again as a pair with its queued
        // messages, a listening one bound at its path again.
        let id = u32::try_from(inode.ino).ok();
        let unix = match (id, crate::sockets::read_unix(k, f.file)) {
            (Some(id), Ok(Some(end))) => {
                if files.unixes.iter().any(|u| u.id == id) {
                    Some(id)
                } else {
                    // In the table before its messages' descriptors are read: a socket
                    // in flight on itself (or on its peer) is then found, not read again.
                    files.unixes.push(UnixWanted {
                        id,
                        end: end.clone(),
                        passed: Vec::new(),
                    });
                    match render_passed(k, proc_, &end, files, notes, depth) {
                        Ok(passed) => {
                            if let Some(u) = files.unixes.iter_mut().find(|u| u.id == id) {
                                u.passed = passed;
                            }
                            Some(id)
                        }
                        Err(e) => {
                            files.unixes.retain(|u| u.id != id);
                            notes.push(format!(
                                "pid {pid} fd {fd}: unix socket not copied ({}): comes back reset",
                                error_chain(&e)
                            ));
                            None
                        }
                    }
                }
            }
            (_, Err(e)) => {
                notes.push(format!(
                    "pid {pid} fd {fd}: unix socket not copied ({}): comes back reset",
                    error_chain(&e)
                ));
                None
            }
            (Some(id), Ok(None)) => crate::sockets::read_unix_listener(k, f.file).map(|l| {
                if !files.ulistens.iter().any(|(i, _)| *i == id) {
                    files.ulistens.push((id, l));
                }
                id
            }),
            _ => None,
        };
        if let Some(id) = unix {
            return Ok(Some(wire::FdRec {
                fd,
                flags,
                pos: 0,
                kind: wire::FdKind::Sock,
                path: format!("unix:{id}").into_bytes(),
            }));
        }
        // A socket: made again when it listens (or is a bound UDP socket), else a
        // stand-in whose peer is gone; never a reason to leave the process out.
        let sock = crate::sockets::read_socket(k, f.file).unwrap_or_else(|e| {
            crate::sockets::Socket::Reset {
                sock_type: 1,
                why: format!("unreadable socket: {}", error_chain(&e)),
            }
        });
        let path = match sock {
            crate::sockets::Socket::Inet(s) => match u32::try_from(inode.ino) {
                Ok(id) => {
                    if !files.inets.iter().any(|(i, _)| *i == id) {
                        files.inets.push((id, s));
                    }
                    format!("inet:{id}")
                }
                Err(_) => format!("reset:{}:inet socket", s.sock_type),
            },
            crate::sockets::Socket::Tcp(c) => match u32::try_from(inode.ino) {
                Ok(id) => {
                    if !files.tcps.iter().any(|(i, _)| *i == id) {
                        files.tcps.push((id, *c));
                    }
                    format!("inet:{id}")
                }
                Err(_) => "reset:1:tcp connection".to_owned(),
            },
            crate::sockets::Socket::Reset { sock_type, why } => {
                notes.push(format!("pid {pid} fd {fd}: {why}: comes back reset"));
                // What it was goes along, for a crash procedure's list of what was lost.
                let what: String = why.chars().take(160).collect();
                format!("reset:{sock_type}:{what}")
            }
        };
        return Ok(Some(wire::FdRec {
            fd,
            flags,
            pos: 0,
            kind: wire::FdKind::Sock,
            path: path.into_bytes(),
        }));
    }
    if let Some(ev) = crate::eventfds::read_eventfd(k, f.file) {
        // eventfd, signalfd, timerfd: made again by the child from the path.
        match ev {
            Ok(ev) => {
                return Ok(Some(wire::FdRec {
                    fd,
                    flags,
                    pos: 0,
                    kind: wire::FdKind::Other,
                    path: ev.path().into_bytes(),
                }));
            }
            Err(e) => {
                return Err(ManifestError::EventFd {
                    fd: f.fd,
                    source: e,
                })
            }
        }
    }
    if crate::inotify::is_inotify(k, f.file) {
        // Its watches are added again by path, at their watch descriptors.
        let path = match crate::inotify::read_inotify(k, f.file, proc_.mnt_ns) {
            Ok(i) => {
                for p in &i.problems {
                    notes.push(format!("pid {pid} inotify fd {fd}: {p}: left out"));
                }
                side.inotify
                    .extend(i.watches.iter().map(|w| wire::InotifyRec {
                        fd,
                        wd: w.wd,
                        mask: w.mask,
                        path: w.path.as_bytes().to_vec(),
                    }));
                i.path()
            }
            Err(e) => {
                notes.push(format!(
                    "pid {pid} inotify fd {fd}: unreadable ({}): comes back without watches",
                    error_chain(&e)
                ));
                "inotify:0".to_owned()
            }
        };
        return Ok(Some(wire::FdRec {
            fd,
            flags,
            pos: 0,
            kind: wire::FdKind::Other,
            path: path.into_bytes(),
        }));
    }
    if crate::sockets::is_epoll(k, f.file) {
        match crate::sockets::read_epoll(k, f.file) {
            Ok(items) => {
                for it in items {
                    // The item's fd must still be the same file in this process.
                    let same = proc_
                        .files
                        .iter()
                        .any(|o| i32::try_from(o.fd).ok() == Some(it.fd) && o.file == it.file);
                    if same {
                        side.epoll.push(wire::EpollRec {
                            epfd: fd,
                            fd: it.fd,
                            events: it.events,
                            data: it.data,
                        });
                    } else {
                        notes.push(format!(
                            "pid {pid} epoll fd {fd}: watched fd {} is no longer that file: left out",
                            it.fd
                        ));
                    }
                }
            }
            Err(e) => notes.push(format!(
                "pid {pid} epoll fd {fd}: interest list unreadable ({}): comes back empty",
                error_chain(&e)
            )),
        }
        return Ok(Some(wire::FdRec {
            fd,
            flags,
            pos: 0,
            kind: wire::FdKind::Other,
            path: b"epoll".to_vec(),
        }));
    }
    if let Some(inode) = f
        .inode
        .filter(|i| i.kind() == FileKind::Reg && i.s_magic == crate::process::TMPFS_MAGIC)
        .filter(|_| f.path.as_deref().is_some_and(is_memfd_path))
    {
        // A memory file (memfd): made again by the agent with its pages, and reopened
        // by its holders; areas that map it are the same object.
        let id = u32::try_from(inode.ino).map_err(|_| ManifestError::FdKind {
            fd: f.fd,
            kind: "memfd with a 64-bit inode number",
        })?;
        if !files.shms.iter().any(|s| s.id == id) {
            files.shms.push(
                memfd_content(k, id, &inode)
                    .map_err(|problem| ManifestError::MemoryFile { fd: f.fd, problem })?,
            );
        }
        return Ok(Some(wire::FdRec {
            fd,
            flags,
            pos: f.pos,
            kind: wire::FdKind::Other,
            path: format!("shm:{id}").into_bytes(),
        }));
    }
    if let Some(inode) = f.inode.filter(|i| i.kind() == FileKind::Fifo) {
        // An end of a pipe, named by its inode number: an anonymous one, or a named
        // FIFO, made again at its path.
        let id = u32::try_from(inode.ino).map_err(|_| ManifestError::FdKind {
            fd: f.fd,
            kind: "pipe with a 64-bit inode number",
        })?;
        if inode.s_magic != crate::pipes::PIPEFS_MAGIC {
            let path = f
                .path
                .as_deref()
                .ok_or(ManifestError::FdPathUnknown { fd: f.fd })?;
            if deleted(path) || !path.starts_with('/') {
                return Err(ManifestError::FdNotReopenable {
                    fd: f.fd,
                    path: path.to_owned(),
                });
            }
            if !files.fifo_paths.iter().any(|(a, _)| *a == inode.addr) {
                files.fifo_paths.push((inode.addr, path.to_owned()));
            }
        }
        if !files.pipes.iter().any(|p| p.addr == inode.addr) {
            files.pipes.push(inode);
        }
        return Ok(Some(wire::FdRec {
            fd,
            flags,
            pos: 0,
            kind: wire::FdKind::Fifo,
            path: wire::FdRec::pipe_path(id),
        }));
    }
    match crate::ttys::read_tty(k, f.file) {
        None => {}
        Some(Err(source)) => return Err(ManifestError::Tty { fd: f.fd, source }),
        Some(Ok(crate::ttys::TtyFile::Pty { end, pty })) => {
            // A pty end, whichever path opened it (`/dev/ptmx`, `/dev/pts/N`,
            // `/dev/tty`): the pair is made again before the processes.
            let id = pty.index;
            if !files.ptys.iter().any(|(i, _)| *i == id) {
                notes.extend(pty.notes.iter().map(|n| format!("pid {pid}: {n}")));
                files.ptys.push((id, *pty));
            }
            return Ok(Some(wire::FdRec {
                fd,
                flags,
                pos: 0,
                kind: wire::FdKind::Other,
                path: wire::FdRec::pty_path(id, end == crate::ttys::End::Master),
            }));
        }
        Some(Ok(crate::ttys::TtyFile::Other {
            termios,
            winsize,
            sid,
            pgrp,
            device,
        })) => {
            // The console: reopened by its path below, with its settings put back on
            // the device itself (`/dev/tty` opens only as a controlling terminal).
            if let Some(path) = device.as_deref().or(f.path.as_deref()) {
                if !files.ttys.iter().any(|t| t.path == path.as_bytes()) {
                    files.ttys.push(wire::TtyRec {
                        sid,
                        pgrp,
                        termios,
                        winsize,
                        path: path.as_bytes().to_vec(),
                    });
                }
            }
        }
    }
    if !matches!(kind, FileKind::Reg | FileKind::Chr | FileKind::Dir) {
        return Err(ManifestError::FdKind {
            fd: f.fd,
            kind: kind.manifest_name(),
        });
    }
    let path = f
        .path
        .as_deref()
        .ok_or(ManifestError::FdPathUnknown { fd: f.fd })?;
    if deleted(path) || path.starts_with('[') {
        return Err(ManifestError::FdNotReopenable {
            fd: f.fd,
            path: path.to_owned(),
        });
    }
    if let Some(inode) = f.inode {
        files.want(path, inode, f.writable());
    }
    Ok(Some(wire::FdRec {
        fd,
        flags,
        pos: f.pos,
        kind: match kind {
            FileKind::Reg => wire::FdKind::Reg,
            FileKind::Chr => wire::FdKind::Chr,
            _ => wire::FdKind::Dir,
        },
        path: path.as_bytes().to_vec(),
    }))
}

/// The `fd` records of the descriptors in flight with each message of `end`, found at
/// `depth`: each must be one the agent can make and send (a pipe end, a socket it makes,
/// a pty end, a memory file, a file it opens by path), or the socket is not copied.
fn render_passed(
    k: &Kernel<'_>,
    proc_: &ProcessInfo,
    end: &crate::sockets::UnixEnd,
    files: &mut Wanted,
    notes: &mut Vec<String>,
    depth: u32,
) -> Result<Vec<Vec<wire::FdRec>>, ManifestError> {
    let mut out = Vec::with_capacity(end.queued.len());
    for (msg, q) in end.queued.iter().enumerate() {
        let mut recs = Vec::with_capacity(q.files.len());
        for (n, &file) in q.files.iter().enumerate() {
            let at = |source: ManifestError| ManifestError::Passed {
                msg,
                n,
                source: Box::new(source),
            };
            if depth >= MAX_PASSED_DEPTH {
                return Err(at(ManifestError::PassedTooDeep));
            }
            let nr = u32::try_from(n).unwrap_or(u32::MAX);
            let (of, _) = crate::process::read_open_file(k, nr, file)
                .map_err(|e| at(ManifestError::PassedFile(e)))?;
            let fd = i32::try_from(n).unwrap_or(i32::MAX);
            let mut ep = Fds {
                fds: Vec::new(),
                epoll: Vec::new(),
                inotify: Vec::new(),
            };
            let rec = render_fd(
                k,
                proc_,
                &of,
                fd,
                of.flags,
                files,
                notes,
                &mut ep,
                depth + 1,
            )
            .map_err(at)?
            .ok_or_else(|| at(ManifestError::PassedKind { kind: "file" }))?;
            if !sendable(&rec) {
                return Err(at(ManifestError::PassedKind {
                    kind: rec.kind.name(),
                }));
            }
            recs.push(rec);
        }
        out.push(recs);
    }
    Ok(out)
}

/// Whether the agent can make the descriptor of `r` itself, to pass it with a message.
fn sendable(r: &wire::FdRec) -> bool {
    match r.kind {
        wire::FdKind::Reg | wire::FdKind::Chr | wire::FdKind::Dir => true,
        wire::FdKind::Fifo => r.pipe_id().is_some(),
        wire::FdKind::Sock => r.unix_id().is_some() || r.inet_id().is_some(),
        wire::FdKind::Other => r.pty_end().is_some() || r.shm_id().is_some(),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// The `sig` records of a process (`after_exec`: only the ignored signals, the actions
/// an exec keeps).
fn render_sigs(proc_: &ProcessInfo, after_exec: bool) -> Result<Vec<wire::SigRec>, ManifestError> {
    let mut sigs = Vec::with_capacity(proc_.sigactions.len());
    for a in proc_
        .sigactions
        .iter()
        .filter(|a| !after_exec || a.handler == SIG_IGN)
    {
        sigs.push(wire::SigRec {
            signo: i32::try_from(a.signo).map_err(|_| ManifestError::BadSignal(a.signo))?,
            handler: a.handler,
            flags: a.flags,
            restorer: a.restorer,
            mask: a.mask,
        });
    }
    Ok(sigs)
}

#[allow(clippy::too_many_arguments)]
fn render_process(
    k: &Kernel<'_>,
    leader: &Task,
    threads: &[&Task],
    mm: &MmInfo,
    proc_: &ProcessInfo,
    live: &HashMap<u64, &CpuUserState>,
    notes: &mut Vec<String>,
) -> Result<Rendered, ManifestError> {
    let mut files = Wanted::default();
    let exe = mm.exe.as_deref().ok_or(ManifestError::ExeUnknown)?;
    want_exe(k, exe, mm.exe_file, &mut files)?;
    let cwd = cwd_of(proc_)?;
    if mm.auxv.is_empty() {
        return Err(ManifestError::NoAuxv);
    }

    let mut vmas = Vec::with_capacity(mm.vmas.len());
    for v in &mm.vmas {
        let (kind, inode) = classify_vma(k, v)?;
        if let Some(p) = v.pages.problems.first() {
            return Err(ManifestError::VmaPages {
                vma: v.start,
                problem: p.clone(),
            });
        }
        let mut path = None;
        if kind == VmaKind::File {
            let p = v.file.as_deref().unwrap_or_default();
            if let Some(inode) = inode {
                files.want(p, inode, false);
            }
            path = Some(p.as_bytes().to_vec());
        }
        // Shared anonymous memory is one object for every process that maps it.
        if let (VmaKind::SharedAnon, Some(inode)) = (kind, inode.as_ref()) {
            if let Ok(id) = u32::try_from(inode.ino) {
                path = Some(format!("shm:{id}").into_bytes());
            }
        }
        let shared = v.flags & VM_SHARED != 0;
        let copies = match kind {
            VmaKind::Vdso | VmaKind::Vvar => Vec::new(),
            VmaKind::SharedAnon => match inode {
                Some(inode) => shared_anon_copies(k, v, &inode)?,
                None => Vec::new(),
            },
            VmaKind::File if shared => Vec::new(),
            _ => {
                let only_anon = kind == VmaKind::File;
                v.pages
                    .value
                    .runs
                    .iter()
                    .filter(|r| !only_anon || r.anon)
                    .map(|r| wire::Copy {
                        vaddr: r.vaddr,
                        gpa: r.phys,
                        len: r.len,
                    })
                    .collect()
            }
        };
        vmas.push(wire::Vma {
            start: v.start,
            end: v.end,
            prot: prot(v.flags),
            shared,
            growsdown: v.flags & VM_GROWSDOWN != 0,
            pgoff: if kind == VmaKind::File || path.is_some() {
                v.pgoff.wrapping_mul(4096)
            } else {
                0
            },
            kind: kind.wire(),
            path,
            copies,
        });
    }

    let Fds {
        mut fds,
        epoll,
        inotify,
    } = render_fds(k, proc_, false, &mut files, notes)?;
    let sigs = render_sigs(proc_, false)?;
    let syscall_entry = k.symbol("entry_SYSCALL_64").ok();
    let mut out_threads = Vec::with_capacity(threads.len());
    for t in threads {
        let c = live.get(&t.addr).copied();
        let moved = match c {
            Some(c) if c.cpl3 => None,
            _ => crate::transfer::transfer(k, t, mm.pgd_phys),
        };
        if let Some(m) = moved.filter(|m| m.moved > 0) {
            notes.push(format!(
                "thread {}: {} caught after {} of {} bytes: returns {}",
                t.pid,
                if m.write { "write" } else { "read" },
                m.moved,
                m.len,
                m.moved
            ));
        }
        // The write or read returns its count: the file position moves on with it, as
        // the kernel would have moved it on the way out (an O_APPEND write goes to the end
        // anyway).
        if let Some(m) = moved.filter(|m| m.moved > 0 && m.moves_position) {
            if let Some(r) = fds
                .iter_mut()
                .find(|r| u64::try_from(r.fd).ok() == Some(m.fd) && r.kind == wire::FdKind::Reg)
            {
                r.pos = r.pos.saturating_add(m.moved);
            }
        }
        let (regs, fpu) = thread_state(t, c, syscall_entry, moved.map(|m| m.moved), notes)?;
        out_threads.push(wire::Thread {
            tid: wire_pid(t.pid)?,
            comm: t.comm.as_bytes().to_vec(),
            regs: regs.to_array(),
            fpu: Box::new(fpu.0),
            sigmask: t.effective_sigmask(),
            tid_address: Some(t.clear_child_tid),
            robust_list: Some((t.robust_list, ROBUST_LIST_HEAD_LEN)),
            // An exec caught after start_thread: its rseq registration is the old
            // program's, which the kernel was about to drop.
            rseq: t
                .rseq
                .filter(|_| {
                    !t.regs
                        .as_ref()
                        .is_some_and(crate::regs::exec_succeeded_in_flight)
                })
                .map(|r| (r.addr, r.len, r.sig)),
        });
    }
    let pending = pending_of(k, leader, threads, notes);
    let timers = timers_of(k, leader, threads, notes);
    let process = wire::Process {
        pid: wire_pid(leader.pid)?,
        comm: leader.comm.as_bytes().to_vec(),
        exe: Some(exe.as_bytes().to_vec()),
        cwd: Some(cwd.as_bytes().to_vec()),
        mm: wire::Mm {
            start_code: mm.start_code,
            end_code: mm.end_code,
            start_data: mm.start_data,
            end_data: mm.end_data,
            start_brk: mm.start_brk,
            brk: mm.brk,
            start_stack: mm.start_stack,
            arg_start: mm.arg_start,
            arg_end: mm.arg_end,
            env_start: mm.env_start,
            env_end: mm.env_end,
        },
        auxv: mm.auxv.clone(),
        vmas,
        fds,
        epoll,
        inotify,
        sigs,
        pending,
        itimers: timers.itimers,
        ptimers: timers.ptimers,
        ptimer_next: timers.next_id,
        limits: proc_.limits,
        creds: Some(proc_.creds.clone().ok_or(ManifestError::NoCreds)?),
        tree: tree_of(leader),
        threads: out_threads,
    };
    Ok(Rendered {
        entry: Entry::Process(Box::new(process)),
        wanted: files,
    })
}

/// The signals queued for the process led by `leader` (tid 0) and for each of its
/// `threads`; what cannot be read is a note (those signals are lost).
fn pending_of(
    k: &Kernel<'_>,
    leader: &Task,
    threads: &[&Task],
    notes: &mut Vec<String>,
) -> Vec<wire::Pending> {
    let mut out = Vec::new();
    let mut take = |tid: u32, at: Option<u64>, what: &str| {
        let Some(at) = at else { return };
        let got = crate::pending::read_pending(k, at, what);
        notes.extend(
            got.problems
                .iter()
                .map(|p| format!("pid {}: {p}", leader.tgid)),
        );
        out.extend(
            got.value
                .into_iter()
                .map(|info| wire::Pending { tid, info }),
        );
    };
    let shared = k
        .read_field("task_struct", "signal", leader.addr)
        .ok()
        .zip(k.offset_of("signal_struct", "shared_pending").ok())
        .map(|(s, o)| s.wrapping_add(o));
    take(0, shared, "shared pending signals");
    let own = k.offset_of("task_struct", "pending").ok();
    for t in threads {
        let Ok(tid) = u32::try_from(t.pid) else {
            continue;
        };
        take(tid, own.map(|o| t.addr.wrapping_add(o)), "pending signals");
    }
    out.truncate(wire::MAX_PENDING);
    out
}

/// The interval and POSIX timers of the process led by `leader`; what cannot be read is a
/// note (those timers are lost; a `SIGEV_THREAD_ID` timer whose thread is not one of
/// `threads` too).
fn timers_of(
    k: &Kernel<'_>,
    leader: &Task,
    threads: &[&Task],
    notes: &mut Vec<String>,
) -> crate::timers::Timers {
    let Ok(signal) = k.read_field("task_struct", "signal", leader.addr) else {
        notes.push(format!("pid {}: timers: signal unreadable", leader.tgid));
        return crate::timers::Timers::default();
    };
    let now = crate::eventfds::monotonic_now(k);
    let mut got = crate::timers::read_timers(k, signal, now);
    got.value.ptimers.retain(|t| {
        let ok = t.tid == 0 || threads.iter().any(|th| u32::try_from(th.pid) == Ok(t.tid));
        if !ok {
            got.problems.push(format!(
                "POSIX timer {} not restored: its thread {} is not restored",
                t.id, t.tid
            ));
        }
        ok
    });
    notes.extend(
        got.problems
            .iter()
            .map(|p| format!("pid {}: {p}", leader.tgid)),
    );
    got.value
}

/// `SIG_IGN` as a handler.
const SIG_IGN: u64 = 1;

/// The `tree` record of a process, when its family was read.
fn tree_of(leader: &Task) -> Option<wire::Tree> {
    let f = leader.family?;
    Some(wire::Tree {
        ppid: u32::try_from(f.ppid).ok()?,
        pgid: u32::try_from(f.pgid).ok()?,
        sid: u32::try_from(f.sid).ok()?,
    })
}

/// `EXIT_ZOMBIE` in `exit_state`.
const EXIT_ZOMBIE: u32 = 0x20;

/// The zombies whose parent comes back: each a dead thread-group leader not reaped yet.
fn zombies_of(report: &Report, parents: &BTreeSet<i32>) -> Vec<wire::Zombie> {
    report
        .tasks
        .iter()
        .filter(|t| t.is_leader() && t.exit_state & EXIT_ZOMBIE != 0)
        .filter(|t| t.flags & crate::tasks::PF_KTHREAD == 0)
        .filter_map(|t| {
            let f = t.family?;
            if !parents.contains(&f.ppid) {
                return None;
            }
            Some(wire::Zombie {
                pid: u32::try_from(t.pid).ok().filter(|&p| p > 0)?,
                tree: tree_of(t)?,
                status: u32::from_ne_bytes(f.exit_code.to_ne_bytes()),
            })
        })
        .collect()
}

/// Checks the executable's path and wants its file when it is in memory.
fn want_exe(
    k: &Kernel<'_>,
    exe: &str,
    exe_file: u64,
    files: &mut Wanted,
) -> Result<(), ManifestError> {
    if deleted(exe) {
        return Err(ManifestError::ExeDeleted {
            path: exe.to_owned(),
        });
    }
    if exe_file != 0 {
        if let Ok(inode) = file_inode(k, exe_file) {
            files.want(exe, inode, false);
        }
    }
    Ok(())
}

/// The current directory of a process.
fn cwd_of(proc_: &ProcessInfo) -> Result<&str, ManifestError> {
    let cwd = proc_.cwd.as_deref().ok_or(ManifestError::CwdUnknown)?;
    if deleted(cwd) {
        return Err(ManifestError::CwdDeleted {
            path: cwd.to_owned(),
        });
    }
    Ok(cwd)
}

/// The `exec` block of a process caught inside `execve` past its point of no return: what
/// an exec keeps (open files without close-on-exec, current directory, ignored signals,
/// signal mask) and the exec to run again.
fn render_exec(
    k: &Kernel<'_>,
    leader: &Task,
    proc_: &ProcessInfo,
    args: ExecArgs,
    notes: &mut Vec<String>,
) -> Result<Rendered, ManifestError> {
    let mut files = Wanted::default();
    want_exe(k, &args.path, args.file, &mut files)?;
    let cwd = cwd_of(proc_)?;
    // An epoll or inotify descriptor kept across the exec comes back empty.
    let fds = render_fds(k, proc_, true, &mut files, &mut Vec::new())?.fds;
    let sigs = render_sigs(proc_, true)?;
    let exec = wire::Exec {
        pid: wire_pid(leader.pid)?,
        comm: leader.comm.as_bytes().to_vec(),
        path: args.path.into_bytes(),
        cwd: Some(cwd.as_bytes().to_vec()),
        argv: args.argv,
        envp: args.envp,
        fds,
        sigs,
        sigmask: leader.effective_sigmask(),
        tree: tree_of(leader),
        limits: proc_.limits,
        creds: Some(proc_.creds.clone().ok_or(ManifestError::NoCreds)?),
        pending: pending_of(k, leader, &[leader], notes),
    };
    Ok(Rendered {
        entry: Entry::Exec(Box::new(exec)),
        wanted: files,
    })
}

/// Maps each task that was current on a CPU to the vCPU that ran that CPU: kernel CPU N
/// runs on the vCPU whose per-cpu base (`gs_base` in kernel mode, `kernel_gs_base` in user
/// mode) equals `__per_cpu_offset[N]`.
fn live_tasks<'c>(
    report: &Report,
    cpus: &'c [CpuUserState],
    notes: &mut Vec<String>,
) -> HashMap<u64, &'c CpuUserState> {
    let mut live = HashMap::new();
    for c in &report.cpus {
        let Some(cur) = c.current else { continue };
        let matches: Vec<&CpuUserState> = cpus
            .iter()
            .filter(|v| v.percpu_base() == c.per_cpu_offset)
            .collect();
        match matches.as_slice() {
            [v] => {
                live.insert(cur, *v);
            }
            [] => {
                if !cpus.is_empty() {
                    notes.push(format!(
                        "cpu {}: no vCPU has per-cpu base {:#x}",
                        c.cpu, c.per_cpu_offset
                    ));
                }
            }
            _ => notes.push(format!(
                "cpu {}: several vCPUs have per-cpu base {:#x}: none used",
                c.cpu, c.per_cpu_offset
            )),
        }
    }
    live
}

/// Builds the manifest from a report (see `docs/resurrection.md`). `cpus` is the VMM's view
/// of each vCPU at the crash. Every user process except pid 1 is either in the manifest or
/// in [`Manifest::excluded`].
pub fn build_manifest(kernel: &Kernel<'_>, report: &Report, cpus: &[CpuUserState]) -> Manifest {
    build_manifest_excluding(kernel, report, cpus, &BTreeMap::new())
}

/// [`build_manifest`], leaving out the processes in `left_out` (by pid, with the reason),
/// e.g. the one whose system call crashed the kernel.
pub fn build_manifest_excluding(
    kernel: &Kernel<'_>,
    report: &Report,
    cpus: &[CpuUserState],
    left_out: &BTreeMap<i32, String>,
) -> Manifest {
    let mut m = Manifest::default();
    let live = live_tasks(report, cpus, &mut m.notes);

    // Thread groups, leaders first.
    let mut groups: BTreeMap<i32, Vec<&Task>> = BTreeMap::new();
    for t in report.tasks.iter().filter(|t| t.is_user()) {
        let g = groups.entry(t.tgid).or_default();
        if t.is_leader() {
            g.insert(0, t);
        } else {
            g.push(t);
        }
    }
    let mut mm_users: HashMap<u64, BTreeSet<i32>> = HashMap::new();
    for (tgid, g) in &groups {
        for t in g {
            mm_users.entry(t.mm).or_default().insert(*tgid);
        }
    }

    let mut rendered: Vec<(i32, Rendered)> = Vec::new();
    for (&tgid, group) in &groups {
        let mut exclude = |reason: String| {
            m.excluded.push(Excluded { pid: tgid, reason });
        };
        if tgid == 1 {
            exclude("the old init: replaced by the crash kernel's".to_owned());
            continue;
        }
        if let Some(why) = left_out.get(&tgid) {
            exclude(why.clone());
            continue;
        }
        let Some(leader) = group.first().copied().filter(|t| t.is_leader()) else {
            exclude("thread-group leader has exited".to_owned());
            continue;
        };
        if leader.is_exiting() {
            exclude("exiting".to_owned());
            continue;
        }
        let threads: Vec<&Task> = group
            .iter()
            .copied()
            .filter(|t| {
                let keep = !t.is_exiting();
                if !keep {
                    m.notes
                        .push(format!("pid {tgid}: thread {} is exiting: left out", t.pid));
                }
                keep
            })
            .collect();
        let check = || -> Result<(&MmInfo, &ProcessInfo), ManifestError> {
            if let Some(&other) = mm_users
                .get(&leader.mm)
                .and_then(|s| s.iter().find(|&&p| p != tgid))
            {
                return Err(ManifestError::SharedMm { other });
            }
            for t in &threads {
                let what = if t.mm != leader.mm {
                    Some("address space")
                } else if t.files != leader.files {
                    Some("fd table")
                } else if t.fs != leader.fs {
                    Some("fs (cwd/root)")
                } else if t.sighand != leader.sighand {
                    Some("signal handlers")
                } else {
                    None
                };
                if let Some(what) = what {
                    return Err(ManifestError::ThreadOwn { tid: t.pid, what });
                }
            }
            let mm = report.mm_of(leader).ok_or(ManifestError::MmNotRead)?;
            let p = report
                .processes
                .get(&tgid)
                .ok_or(ManifestError::ProcessNotRead)?;
            if let Some(e) = p.problems.first() {
                return Err(ManifestError::ProcessProblem { problem: e.clone() });
            }
            Ok((mm, &p.value))
        };
        let (mm, proc_) = match check() {
            Ok(v) => v,
            Err(e) => {
                exclude(error_chain(&e));
                continue;
            }
        };
        // The image, when the address space was read cleanly (an exec caught past its point
        // of no return does not restore it, and needs only its areas).
        // A thread caught inside mmap, mprotect, munmap or brk holds the address space
        // for writing: the tree and map_count may disagree by the area being changed.
        // That call is run again (regs::RESTARTED_SYSCALLS), so the areas found stand.
        let in_mm_call = threads.iter().any(|t| {
            t.regs
                .as_ref()
                .and_then(|r| r.syscall())
                .is_some_and(|nr| [9, 10, 11, 12].contains(&nr))
        });
        let mm_problem = report.mm_problems.get(&leader.mm).and_then(|p| {
            p.iter()
                .find(|p| !(in_mm_call && p.contains(crate::mm::MAP_COUNT_MISMATCH)))
        });
        if in_mm_call
            && report
                .mm_problems
                .get(&leader.mm)
                .is_some_and(|p| p.iter().any(|p| p.contains(crate::mm::MAP_COUNT_MISMATCH)))
        {
            m.notes.push(format!(
                "pid {tgid}: caught changing its address space: the areas found are used"
            ));
        }
        let mut image = || match mm_problem {
            Some(p) => Err(ManifestError::MmProblem { problem: p.clone() }),
            None => render_process(kernel, leader, &threads, mm, proc_, &live, &mut m.notes),
        };
        let live_user = live.get(&leader.addr).is_some_and(|c| c.cpl3);
        let result = if !live_user && in_exec(leader, mm) {
            match find_exec(kernel, leader, mm) {
                Ok(_) if threads.len() > 1 => Err(ManifestError::ExecThreads {
                    threads: threads.len(),
                }),
                Ok(args) => render_exec(kernel, leader, proc_, args, &mut m.notes),
                // No new program's mm: the old image is intact and the exec runs again.
                Err(_) if can_restart(leader, mm) => image(),
                Err(source) => Err(ManifestError::ExecArgs { source }),
            }
        } else {
            image()
        };
        match result {
            Ok(r) => rendered.push((tgid, r)),
            Err(e) => exclude(error_chain(&e)),
        }
    }

    // Files: deduplicated by inode; a file whose content cannot be read excludes its users.
    let mut files: BTreeMap<u64, FileRecord> = BTreeMap::new();
    for (_, r) in &rendered {
        for f in &r.wanted.files {
            files
                .entry(f.inode.addr)
                .and_modify(|e| e.overwrite |= f.overwrite)
                .or_insert_with(|| f.clone());
        }
    }
    // What the dead kernel had not written back to a disk file is the user's data whether
    // or not the process that wrote it comes back: every process's files open for writing
    // on a disk, restored or not.
    let mut disk_files: BTreeSet<u64> = BTreeSet::new();
    for p in report.processes.values() {
        for f in &p.value.files {
            let (Some(inode), Some(path)) = (f.inode, f.path.as_deref()) else {
                continue;
            };
            if f.writable()
                && inode.kind() == FileKind::Reg
                && !inode.in_memory_fs()
                && path.starts_with('/')
                && !deleted(path)
            {
                disk_files.insert(inode.addr);
                files.entry(inode.addr).or_insert_with(|| FileRecord {
                    path: path.to_owned(),
                    inode,
                    overwrite: true,
                });
            }
        }
    }
    let mut contents: BTreeMap<u64, Result<FileContent, ManifestError>> = BTreeMap::new();
    for (&inode, f) in &files {
        if f.on_disk() {
            // Its content is on the disk; only what was not written back is wanted. What
            // cannot be read is lost, but does not keep its users from coming back.
            let c = crate::pages::dirty_file_pages(kernel, inode);
            if let Some(p) = c.problems.first() {
                m.notes.push(format!(
                    "{}: unwritten pages not all read, some writes may be lost: {p}",
                    f.path
                ));
            }
            contents.insert(inode, Ok(c.value));
            continue;
        }
        let c = file_pages(kernel, inode);
        contents.insert(
            inode,
            match c.problems.first() {
                None => Ok(c.value),
                Some(p) => Err(ManifestError::FileContent {
                    path: f.path.clone(),
                    problem: p.clone(),
                }),
            },
        );
    }
    // Pipes: deduplicated by inode, read once; one that cannot be read excludes its users.
    let mut pipes: BTreeMap<u64, (u64, Result<crate::pipes::PipeContent, ManifestError>)> =
        BTreeMap::new();
    for (_, r) in &rendered {
        for p in &r.wanted.pipes {
            pipes.entry(p.addr).or_insert_with(|| {
                let c = crate::pipes::read_pipe(kernel, p.addr)
                    .map_err(|source| ManifestError::PipeContent { id: p.ino, source });
                (p.ino, c)
            });
        }
    }
    let named: BTreeMap<u64, (u32, String)> = rendered
        .iter()
        .flat_map(|(_, r)| {
            r.wanted.fifo_paths.iter().filter_map(|(a, path)| {
                let mode = r.wanted.pipes.iter().find(|p| p.addr == *a)?.mode & 0o7777;
                Some((*a, (mode, path.clone())))
            })
        })
        .collect();
    let mut used: BTreeSet<u64> = BTreeSet::new();
    let mut used_pipes: BTreeSet<u64> = BTreeSet::new();
    let mut used_inets: Vec<(u32, crate::sockets::InetSocket)> = Vec::new();
    let mut used_unixes: Vec<UnixWanted> = Vec::new();
    let mut used_ulistens: Vec<(u32, crate::sockets::UnixListener)> = Vec::new();
    let mut used_tcps: Vec<(u32, crate::tcp::TcpConn)> = Vec::new();
    let mut used_ptys: BTreeMap<u32, crate::ttys::Pty> = BTreeMap::new();
    let mut used_ttys: Vec<wire::TtyRec> = Vec::new();
    let mut used_shms: Vec<wire::ShmRec> = Vec::new();
    let (mut processes, mut execs) = (Vec::new(), Vec::new());
    for (tgid, r) in rendered {
        let bad = r
            .wanted
            .files
            .iter()
            .find_map(|f| contents.get(&f.inode.addr).and_then(|c| c.as_ref().err()))
            .or_else(|| {
                r.wanted
                    .pipes
                    .iter()
                    .find_map(|p| pipes.get(&p.addr).and_then(|c| c.1.as_ref().err()))
            });
        if let Some(e) = bad {
            m.excluded.push(Excluded {
                pid: tgid,
                reason: error_chain(e),
            });
            continue;
        }
        used.extend(r.wanted.files.iter().map(|f| f.inode.addr));
        used_pipes.extend(r.wanted.pipes.iter().map(|p| p.addr));
        used_inets.extend(r.wanted.inets.iter().cloned());
        used_unixes.extend(r.wanted.unixes.iter().cloned());
        used_ulistens.extend(r.wanted.ulistens.iter().cloned());
        used_tcps.extend(r.wanted.tcps.iter().cloned());
        for (id, p) in &r.wanted.ptys {
            used_ptys.entry(*id).or_insert_with(|| p.clone());
        }
        for t in &r.wanted.ttys {
            if !used_ttys.iter().any(|u| u.path == t.path) {
                used_ttys.push(t.clone());
            }
        }
        for sh in r.wanted.shms {
            if !used_shms.iter().any(|u| u.id == sh.id) {
                used_shms.push(sh);
            }
        }
        match r.entry {
            Entry::Process(p) => processes.push(*p),
            Entry::Exec(e) => execs.push(*e),
        }
        m.processes.push(tgid);
    }

    let mut out_files = Vec::new();
    used.extend(disk_files);
    for inode in used {
        let (Some(f), Some(Ok(c))) = (files.get(&inode), contents.get(&inode)) else {
            continue;
        };
        if f.on_disk() && c.pages.is_empty() && crate::pages::metadata_committed(kernel, inode) {
            continue; // nothing to write back, and the file is on the disk as it was
        }
        out_files.push(wire::FileRec {
            size: c.size,
            mode: f.inode.mode & 0o7777,
            update: match (f.on_disk(), f.overwrite) {
                (true, _) => wire::FileUpdate::Patch,
                (false, true) => wire::FileUpdate::Overwrite,
                (false, false) => wire::FileUpdate::IfDiffers,
            },
            path: f.path.as_bytes().to_vec(),
            runs: c
                .runs()
                .into_iter()
                .map(|(offset, gpa, len)| wire::FileRun { offset, gpa, len })
                .collect(),
        });
    }
    let mut out_inets: Vec<wire::InetRec> = Vec::new();
    for (id, s) in &used_inets {
        if !out_inets.iter().any(|r| r.id == *id) {
            out_inets.push(wire::InetRec {
                id: *id,
                family: s.family,
                sock_type: s.sock_type,
                port: s.port,
                backlog: s.backlog,
                v6only: s.v6only,
                addr: s.addr,
            });
        }
    }
    let mut out_unixes: Vec<wire::UnixRec> = Vec::new();
    for u in &used_unixes {
        if out_unixes.iter().any(|r| r.id == u.id) {
            continue;
        }
        // The peer is named only when a process that comes back holds it.
        let peer = u
            .end
            .peer_ino
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| used_unixes.iter().any(|o| o.id == *p))
            .unwrap_or(0);
        out_unixes.push(wire::UnixRec {
            id: u.id,
            peer,
            sock_type: u.end.sock_type,
            msgs: u
                .end
                .queued
                .iter()
                .enumerate()
                .map(|(i, m)| wire::UnixMsg {
                    data: runs(&m.runs),
                    fds: u.passed.get(i).cloned().unwrap_or_default(),
                })
                .collect(),
        });
    }
    let mut out_ulistens: Vec<wire::UnixListenRec> = Vec::new();
    for (id, l) in &used_ulistens {
        if !out_ulistens.iter().any(|r| r.id == *id) {
            out_ulistens.push(wire::UnixListenRec {
                id: *id,
                sock_type: l.sock_type,
                backlog: l.backlog,
                path: l.path.clone(),
            });
        }
    }
    let mut out_pipes: Vec<wire::PipeRec> = used_pipes
        .iter()
        .filter_map(|a| match pipes.get(a) {
            Some((ino, Ok(c))) => Some(wire::PipeRec {
                id: u32::try_from(*ino).ok()?,
                size: c.size,
                named: named
                    .get(a)
                    .map(|(mode, path)| (*mode, path.as_bytes().to_vec())),
                data: c
                    .data
                    .iter()
                    .map(|&(gpa, len)| wire::PipeRun { gpa, len })
                    .collect(),
            }),
            _ => None,
        })
        .collect();
    // A named FIFO on a disk has that file system's inode number, which may be an
    // anonymous pipe's too: the second of a pair cannot be named, and its users fail.
    let mut ids = BTreeSet::new();
    out_pipes.retain(|p| {
        let first = ids.insert(p.id);
        if !first {
            m.notes.push(format!(
                "pipe {}: two pipes have this inode number; the second is not made",
                p.id
            ));
        }
        first
    });
    let mut out_tcps: Vec<wire::TcpRec> = Vec::new();
    for (id, c) in &used_tcps {
        if out_tcps.iter().any(|r| r.id == *id) {
            continue;
        }
        out_tcps.push(wire::TcpRec {
            id: *id,
            family: c.family,
            local: c.local,
            local_port: c.local_port,
            remote: c.remote,
            remote_port: c.remote_port,
            words: [
                c.snd_una,
                c.snd_nxt,
                c.write_seq,
                c.rcv_nxt,
                c.snd_wl1,
                c.snd_wnd,
                c.max_window,
                c.rcv_wnd,
                c.rcv_wup,
                c.mss,
                c.snd_wscale,
                c.rcv_wscale,
                c.opts,
                c.timestamp,
            ],
            send: runs(&c.send),
            recv: runs(&c.recv),
        });
    }
    let parents: BTreeSet<i32> = m.processes.iter().copied().collect();
    m.manifest = wire::Manifest {
        zombies: zombies_of(report, &parents),
        tcps: out_tcps,
        files: out_files,
        pipes: out_pipes,
        shms: used_shms,
        inets: out_inets,
        unixes: out_unixes,
        ulistens: out_ulistens,
        processes,
        execs,
        ptys: used_ptys
            .into_iter()
            .map(|(id, p)| wire::PtyRec {
                id,
                index: p.index,
                sid: p.sid,
                pgrp: p.pgrp,
                termios: p.termios,
                winsize: p.winsize,
                input: runs(&p.input),
                output: runs(&p.output),
                typed: runs(&p.typed),
            })
            .collect(),
        ttys: used_ttys,
    };
    m.text = m.manifest.to_text();
    m.excluded.sort_by_key(|e| e.pid);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::testmem::dm;
    use crate::list::tests::MAP;
    use crate::mm::{MmInfo, Vma};
    use crate::pages::{PageRun, PageWalk, DEFAULT_VMEMMAP};
    use crate::process::tests::{btf, world};
    use crate::process::{read_files, ProcessInfo, SigAction};
    use crate::regs::KernelCpu;
    use crate::symbols::SymbolTable;
    use crate::tasks::{PtRegs, PF_EXITING, TIF_NEED_FPU_LOAD};
    use crate::Partial;

    fn task(pid: i32, tgid: i32, mm: u64) -> Task {
        let mut fx = FxSave::init();
        fx.0[200] = 0x11;
        Task {
            addr: dm(0x1_0000 + u64::try_from(pid).expect("pid") * 0x100),
            pid,
            tgid,
            comm: format!("p{pid}"),
            state: 1,
            exit_state: 0,
            flags: 0,
            on_cpu: false,
            cpu: Some(0),
            mm,
            stack: 0,
            regs_addr: 0,
            regs: Some(PtRegs {
                orig_ax: 7,
                ax: u64::from_ne_bytes((-38i64).to_ne_bytes()),
                ip: 0x40_1000,
                cs: 0x33,
                ss: 0x2b,
                sp: 0x7ffe_0000,
                ..PtRegs::default()
            }),
            fsbase: 0x7f00_0000,
            gsbase: 0,
            thread_flags: TIF_NEED_FPU_LOAD,
            clear_child_tid: 0x7f00_1000,
            robust_list: 0x7f00_2000,
            rseq: None,
            blocked: 1 << 9,
            pending: 0,
            saved_sigmask: 0,
            restore_sigmask: false,
            files: 1,
            fs: 2,
            sighand: 3,
            family: Some(crate::tasks::Family {
                ppid: 1,
                pgid: pid,
                sid: pid,
                exit_code: 0,
            }),
            fpu: Some(fx),
        }
    }

    #[test]
    fn zombies_of_resurrected_parents_only() {
        let mut r = Report::default();
        let zombie = |pid: i32, ppid: i32, flags: u32| {
            let mut t = task(pid, pid, 0);
            t.exit_state = EXIT_ZOMBIE;
            t.flags = flags;
            t.family = Some(crate::tasks::Family {
                ppid,
                pgid: 20,
                sid: 10,
                exit_code: 3 << 8,
            });
            t
        };
        r.tasks = vec![
            zombie(21, 20, 0),
            zombie(22, 30, 0),
            zombie(23, 20, crate::tasks::PF_KTHREAD),
            task(24, 24, 0x1000),
        ];
        let z = zombies_of(&r, &BTreeSet::from([20]));
        assert_eq!(
            z,
            vec![wire::Zombie {
                pid: 21,
                tree: wire::Tree {
                    ppid: 20,
                    pgid: 20,
                    sid: 10
                },
                status: 0x300,
            }]
        );
    }

    fn mm(addr: u64) -> MmInfo {
        let runs = vec![
            PageRun {
                vaddr: 0x60_0000,
                phys: 0x20_0000,
                len: 0x2000,
                anon: true,
            },
            PageRun {
                vaddr: 0x60_3000,
                phys: 0x30_0000,
                len: 0x1000,
                anon: false,
            },
        ];
        MmInfo {
            addr,
            exe: Some("/bin/prog".to_owned()),
            auxv: vec![6, 0x1000, 0, 0],
            map_count: 2,
            vmas: vec![
                Vma {
                    addr: 0,
                    start: 0x60_0000,
                    end: 0x61_0000,
                    flags: VM_READ | VM_WRITE,
                    pgoff: 0x600,
                    file_addr: 0,
                    file: None,
                    name: Some("[heap]".to_owned()),
                    ops: 0,
                    pages: Partial::ok(PageWalk {
                        runs,
                        anon_unknown: 0,
                    }),
                },
                Vma {
                    addr: 0,
                    start: 0x7fff_0000,
                    end: 0x7fff_1000,
                    flags: VM_READ | VM_EXEC,
                    pgoff: 0,
                    file_addr: 0,
                    file: None,
                    name: Some("[vdso]".to_owned()),
                    ops: 0xffff_ffff_8100_0000,
                    pages: Partial::default(),
                },
            ],
            ..MmInfo::default()
        }
    }

    #[test]
    fn a_syscall_caught_half_done_at_its_entry_is_run_again() {
        const ENTRY: u64 = 0xffff_ffff_8180_0000;
        let mut t = task(5, 5, 0);
        t.thread_flags = 0;
        t.regs = Some(PtRegs {
            ip: ENTRY,
            cs: 0x33,
            ss: 0x2b,
            cx: 0x40_1002,
            r11: 0x246,
            ax: 35,
            orig_ax: 15,
            ..PtRegs::default()
        });
        let mut notes = Vec::new();
        let (r, _) = thread_state(&t, None, Some(ENTRY), None, &mut notes).expect("state");
        assert_eq!(
            (r.rip, r.rax, r.eflags, r.orig_rax),
            (0x40_1000, 35, 0x246, u64::MAX)
        );
        // The same state seen live on a vCPU still in user mode.
        let c = CpuUserState {
            gs_base: 0,
            kernel_gs_base: 0,
            cpl3: true,
            regs: UserRegs {
                rip: ENTRY,
                cs: 0x33,
                rcx: 0x40_2002,
                r11: 0x202,
                rax: 230,
                ..UserRegs::default()
            },
            fxsave: FxSave::init(),
        };
        let (r, _) = thread_state(&t, Some(&c), Some(ENTRY), None, &mut notes).expect("state");
        assert_eq!((r.rip, r.rax, r.eflags), (0x40_2000, 230, 0x202));
        // Without the symbol, such a frame is refused rather than resumed in the kernel.
        assert!(thread_state(&t, None, None, None, &mut notes).is_err());
    }

    #[test]
    fn threads_that_cannot_resume_are_refused_with_their_variant() {
        let mut notes = Vec::new();
        let mut t = task(5, 5, 0);
        t.regs = None;
        assert!(matches!(
            thread_state(&t, None, None, None, &mut notes),
            Err(ManifestError::NoUserRegs { tid: 5 })
        ));
        let mut t = task(6, 6, 0);
        if let Some(r) = t.regs.as_mut() {
            r.cs = 0x23;
        }
        assert!(matches!(
            thread_state(&t, None, None, None, &mut notes),
            Err(ManifestError::Not64BitFrame { tid: 6, cs: 0x23 })
        ));
        // The FPU is not live on a CPU and was not read from memory either.
        let mut t = task(7, 7, 0);
        t.fpu = None;
        let e = thread_state(&t, None, None, None, &mut notes).expect_err("no FPU");
        assert_eq!(e, ManifestError::NoFpu { tid: 7 });
        assert_eq!(error_chain(&e), "thread 7: FPU state unreadable");
        // A wrapped cause is printed once, after the context.
        let e = ManifestError::VmaInode {
            vma: 0x40_0000,
            source: ProcessError::BadInode(0x10),
        };
        assert_eq!(error_chain(&e), "vma 0x400000: bad inode pointer 0x10");
    }

    #[test]
    fn builds_and_parses_a_manifest() {
        let mut m = world();
        // /data (inode at 0x11_1200) caches one page, pfn 0x42.
        m.put_u64(0x11_1200 + 32, dm(0x14_0000));
        m.put_u64(0x14_0000 + 16, DEFAULT_VMEMMAP + 0x42 * 64);
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let files = read_files(&k, dm(crate::process::tests::FILES));
        assert_eq!(files.value.len(), 3);

        let mut r = Report::default();
        let (mm5, mm7, mm1, mm8) = (dm(0xa000), dm(0xb000), dm(0xc000), dm(0xd000));
        let mut sig_leader = task(5, 5, mm5);
        sig_leader.rseq = Some(crate::tasks::Rseq {
            addr: 0x7f00_3000,
            len: 32,
            sig: 0x53053053,
        });
        let mut t6 = task(6, 5, mm5);
        t6.thread_flags = 0;
        let mut t8 = task(8, 8, mm8);
        t8.flags = PF_EXITING;
        r.tasks = vec![task(1, 1, mm1), sig_leader, t6, task(7, 7, mm7), t8];
        for a in [mm5, mm7, mm1, mm8] {
            r.mms.insert(a, mm(a));
            r.mm_problems.insert(a, Vec::new());
        }
        let proc_ = |tgid: i32, n: usize| {
            Partial::ok(ProcessInfo {
                tgid,
                files: files.value[..n].to_vec(),
                cwd: Some("/tmp dir".to_owned()),
                sigactions: vec![SigAction {
                    signo: 2,
                    handler: 0x40_2000,
                    flags: 0x400_0000,
                    restorer: 0x40_3000,
                    mask: 0,
                }],
                creds: Some(owvmm_manifest::Creds {
                    uids: [1000, 1000, 1000, 1000],
                    gids: [100, 100, 100, 100],
                    caps: [0, 0, 0, (1 << 41) - 1, 0],
                    dumpable: 1,
                    groups: vec![5, 6],
                    ..Default::default()
                }),
                ..ProcessInfo::default()
            })
        };
        r.processes.insert(1, proc_(1, 2));
        r.processes.insert(5, proc_(5, 2));
        r.processes.insert(7, proc_(7, 3));
        r.processes.insert(8, proc_(8, 2));
        r.cpus = vec![KernelCpu {
            cpu: 0,
            per_cpu_offset: dm(0x80_0000),
            current: Some(dm(0x1_0600)),
        }];
        let mut live = UserRegs {
            rip: 0xdead,
            rsp: 0x7ffe_1000,
            fs_base: 0x7f55,
            orig_rax: 3,
            cs: 0x33,
            ..UserRegs::default()
        };
        live.rax = 9;
        let mut vfx = FxSave::init();
        vfx.0[200] = 0x22;
        let cpus = [CpuUserState {
            gs_base: 0,
            kernel_gs_base: dm(0x80_0000),
            cpl3: true,
            regs: live,
            fxsave: vfx,
        }];

        let man = build_manifest(&k, &r, &cpus);
        println!("{}", man.text);
        assert_eq!(man.processes, [5]);
        assert!(
            man.text
                .contains("\ncred 3e8 3e8 3e8 3e8 64 64 64 64 0 0 0 0 1ffffffffff 0 1 5,6\n"),
            "the credentials"
        );
        let reasons: Vec<(i32, &str)> = man
            .excluded
            .iter()
            .map(|e| (e.pid, e.reason.as_str()))
            .collect();
        assert_eq!(reasons[0].0, 1);
        assert_eq!(reasons[1], (7, "fd 3: cannot restore sock"));
        assert_eq!(reasons[2], (8, "exiting"));
        let parsed = wire::parse(man.text.as_bytes()).expect("parses");
        assert_eq!(parsed, man.manifest);
        assert_eq!(
            (
                parsed.files.len(),
                parsed.processes.len(),
                parsed.processes[0].threads.len(),
                parsed.copy_bytes()
            ),
            (1, 1, 2, 0x3000 + 0x1000)
        );
        let t = &man.text;
        assert!(t.starts_with(
            "owvmm-manifest 1\nfile 1388 1a4 1 /data\nfcopy 0 42000 1000\nprocess 5 p5\n"
        ));
        assert!(t.contains("\ncwd /tmp dir\n"));
        assert!(t.contains(
            "\nvma 600000 610000 rw- p 0 heap\ncopy 600000 200000 2000\ncopy 603000 300000 1000\n"
        ));
        assert!(t.contains("\nvma 7fff0000 7fff1000 r-x p 0 vdso\nfd 0 2 123 chr /console\nfd 1 80002 123 reg /data\n"));
        assert!(t.contains("\nsig 2 402000 4000000 403000 0\nthread 5 p5\nregs "));
        // Thread 5: in a system call -> -EINTR, FPU from memory. Thread 6: live in user mode.
        let regs: Vec<Vec<&str>> = t
            .lines()
            .filter(|l| l.starts_with("regs "))
            .map(|l| l.split(' ').collect())
            .collect();
        assert_eq!(
            (regs[0][11], regs[0][16], regs[0][17], regs[0][22]),
            ("fffffffffffffffc", "ffffffffffffffff", "401000", "7f000000")
        );
        assert_eq!(
            (
                regs[1][11],
                regs[1][16],
                regs[1][17],
                regs[1][22],
                regs[1][21]
            ),
            ("9", "ffffffffffffffff", "dead", "7f55", "2b")
        );
        let fpus: Vec<&str> = t.lines().filter(|l| l.starts_with("fpu ")).collect();
        assert_eq!(
            (&fpus[0][4 + 400..4 + 402], &fpus[1][4 + 400..4 + 402]),
            ("11", "22")
        );
        assert!(t.contains("\nsigmask 200\ntid-address 7f001000\nrobust-list 7f002000 18\nrseq 7f003000 20 53053053\nthread 6"));
        assert!(t.ends_with("end\n"));

        // The file's content cannot be read: its user is excluded, the file not listed.
        let mut m2 = m.clone();
        m2.put_u64(0x14_0000 + 16, 0x4141);
        let k2 = Kernel::new(&m2, &syms, &btf).expect("kernel");
        let man = build_manifest(&k2, &r, &cpus);
        assert!(man.processes.is_empty());
        assert!(
            man.excluded
                .iter()
                .any(|e| e.pid == 5 && e.reason.contains("/data")),
            "{:?}",
            man.excluded
        );
        assert_eq!(man.text, "owvmm-manifest 1\n");

        // A broken address space or a thread with its own fd table excludes the process.
        let mut r2 = r.clone();
        r2.mm_problems
            .insert(mm5, vec!["maple tree: boom".to_owned()]);
        let man = build_manifest(&k, &r2, &[]);
        assert!(man
            .excluded
            .iter()
            .any(|e| e.pid == 5 && e.reason.contains("boom")));
        let mut r3 = r.clone();
        r3.tasks[2].files = 99;
        let man = build_manifest(&k, &r3, &[]);
        assert!(man
            .excluded
            .iter()
            .any(|e| e.pid == 5 && e.reason.contains("own fd table")));
    }

    /// A process (pid 9) caught inside `execve("/bin/sleep", ["sleep", "1"], ["PATH=/bin"])`
    /// after `exec_mmap`: one stack area holding the strings, `bprm` on its kernel stack.
    struct ExecWorld {
        m: crate::kernel::testmem::Mem,
        report: Report,
    }

    const EXEC_STACK: u64 = 0x18_0000;
    const BPRM: u64 = 0x18_8000;
    const FILENAME: u64 = 0x18_9000;
    const EXEC_PGD: u64 = 0x19_0000;
    const STRINGS_PAGE: u64 = 0x1a_0000;
    const EXE: u64 = 0x11_4000;
    const AREA: (u64, u64) = (0x7fff_fffd_e000, 0x7fff_ffff_f000);
    /// argv, envp and the filename, at the top of the stack area.
    const EXEC_STRINGS: &[u8] = b"sleep\x001\0PATH=/bin\0/bin/sleep\0";

    fn exec_world() -> ExecWorld {
        let mut m = world();
        crate::process::tests::put_file(
            &mut m,
            EXE,
            "busybox",
            0o100_755,
            0,
            crate::process::tests::SB_TMPFS,
        );
        // Its page cache, and /data's: empty.
        m.put_u64(EXE + 0x200 + 32, dm(0x18_c000));
        m.put_u64(0x11_1200 + 32, dm(0x18_c000));
        // The stack area's top page.
        let top = AREA.1 - 0x1000;
        let idx = |s: u32| (top >> s) & 0x1ff;
        m.put_u64(EXEC_PGD + idx(39) * 8, (EXEC_PGD + 0x1000) | 7);
        m.put_u64(EXEC_PGD + 0x1000 + idx(30) * 8, (EXEC_PGD + 0x2000) | 7);
        m.put_u64(EXEC_PGD + 0x2000 + idx(21) * 8, (EXEC_PGD + 0x3000) | 7);
        m.put_u64(EXEC_PGD + 0x3000 + idx(12) * 8, STRINGS_PAGE | 7);
        let p = AREA.1 - 8 - EXEC_STRINGS.len() as u64;
        m.put(STRINGS_PAGE + (p - top), EXEC_STRINGS);
        m.put(FILENAME, b"/bin/sleep\0");
        let vma = dm(0x18_a000);
        m.put_u64(BPRM, vma);
        m.put_u64(BPRM + 16, 0);
        m.put_u64(BPRM + 24, p);
        m.put_u64(BPRM + 64, dm(EXE));
        m.put_u32(BPRM + 88, 2);
        m.put_u32(BPRM + 92, 1);
        m.put_u64(BPRM + 96, dm(FILENAME));
        // Decoys: a pointer to something else, one past memory, then bprm.
        m.put_u64(EXEC_STACK + 0x3e00, dm(FILENAME));
        m.put_u64(EXEC_STACK + 0x3e08, dm(0x7000_0000));
        m.put_u64(EXEC_STACK + 0x3e10, dm(BPRM));

        let mm_addr = dm(0xe000);
        let mut t = task(9, 9, mm_addr);
        t.stack = dm(EXEC_STACK);
        t.regs = Some(PtRegs {
            orig_ax: 59,
            ax: u64::from_ne_bytes((-38i64).to_ne_bytes()),
            ip: 0x40_1002,
            cx: 0x40_1002,
            di: 0x40_8000,
            cs: 0x33,
            ss: 0x2b,
            sp: 0x7ffe_0000,
            ..PtRegs::default()
        });
        t.blocked = 1 << 12;
        let mut r = Report {
            tasks: vec![t],
            ..Report::default()
        };
        r.mms.insert(
            mm_addr,
            MmInfo {
                addr: mm_addr,
                pgd_phys: EXEC_PGD,
                map_count: 1,
                exe: Some("/busybox".to_owned()),
                exe_file: dm(EXE),
                auxv: vec![0, 0],
                vmas: vec![Vma {
                    addr: vma,
                    start: AREA.0,
                    end: AREA.1,
                    flags: VM_READ | VM_WRITE | VM_GROWSDOWN,
                    pgoff: 0,
                    file_addr: 0,
                    file: None,
                    name: None,
                    ops: 0,
                    pages: Partial::default(),
                }],
                ..MmInfo::default()
            },
        );
        r.mm_problems.insert(mm_addr, Vec::new());
        ExecWorld { m, report: r }
    }

    impl ExecWorld {
        fn kernel_do<T>(&self, f: impl FnOnce(&Kernel<'_>, &Report) -> T) -> T {
            let syms = SymbolTable::parse_system_map(MAP).expect("map");
            let btf = btf();
            let k = Kernel::new(&self.m, &syms, &btf).expect("kernel");
            let mut r = self.report.clone();
            // fd 0 (console) stays open across exec, fd 1 (/data) is close-on-exec.
            let files = read_files(&k, dm(crate::process::tests::FILES));
            r.processes.insert(
                9,
                Partial::ok(ProcessInfo {
                    tgid: 9,
                    creds: Some(owvmm_manifest::Creds::default()),
                    files: files.value[..2].to_vec(),
                    cwd: Some("/tmp".to_owned()),
                    sigactions: vec![
                        SigAction {
                            signo: 2,
                            handler: 0x40_2000,
                            flags: 0,
                            restorer: 0,
                            mask: 0,
                        },
                        SigAction {
                            signo: 13,
                            handler: 1,
                            flags: 0,
                            restorer: 0,
                            mask: 0,
                        },
                    ],
                    ..ProcessInfo::default()
                }),
            );
            f(&k, &r)
        }
    }

    #[test]
    fn a_process_caught_inside_execve_is_an_exec_record() {
        let w = exec_world();
        let (man, args) = w.kernel_do(|k, r| {
            let t = &r.tasks[0];
            let args = find_exec(k, t, r.mm_of(t).expect("mm")).expect("binprm");
            (build_manifest(k, r, &[]), args)
        });
        assert_eq!((args.binprm, args.path.as_str()), (dm(BPRM), "/busybox"));
        assert_eq!(args.filename, b"/bin/sleep");
        assert_eq!(man.processes, [9], "{:?}", man.excluded);
        assert!(man.manifest.processes.is_empty());
        let e = &man.manifest.execs[0];
        assert_eq!(e.path, b"/busybox");
        assert_eq!(e.argv, [b"sleep".to_vec(), b"1".to_vec()]);
        assert_eq!(e.envp, [b"PATH=/bin".to_vec()]);
        assert_eq!(e.cwd.as_deref(), Some(b"/tmp".as_slice()));
        // What an exec keeps: the fd without close-on-exec, the ignored signal, the mask.
        assert_eq!(e.fds.iter().map(|f| f.fd).collect::<Vec<_>>(), [0]);
        assert_eq!(e.sigs.iter().map(|s| s.signo).collect::<Vec<_>>(), [13]);
        assert_eq!(e.sigmask, 1 << 12);
        assert_eq!(wire::parse(man.text.as_bytes()), Ok(man.manifest.clone()));
        assert!(man.text.contains(
            "\nexec 9 p9\npath /busybox\ncwd /tmp\ntree 1 9 9\ncred 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 -\narg sleep\narg 1\nenv PATH=/bin\nfd 0 2 123 chr /console\nsig 13 1 0 0 0\nsigmask 1000\nend\n"
        ));
        // The executable lives in memory: it is recreated first.
        assert!(
            man.text.contains("\nfile 1388 1ed 0 /busybox\n"),
            "{}",
            man.text
        );
    }

    #[test]
    fn strings_not_yet_moved_down_by_setup_arg_pages_are_found_at_the_old_top() {
        // setup_arg_pages has set bprm->p and mm->arg_start to the strings' new place,
        // some pages lower, but shift_arg_pages has not moved them yet: the area is
        // either still the old one (the new p below it) or already stretched over both.
        let p = AREA.1 - 8 - EXEC_STRINGS.len() as u64;
        for stretched in [false, true] {
            let mut w = exec_world();
            let shifted = p - 0x3_5000_0000;
            w.m.put_u64(BPRM + 24, shifted);
            let mm = w.report.mms.values_mut().next().expect("mm");
            mm.arg_start = shifted;
            if stretched {
                mm.vmas[0].start = shifted & !0xfff;
            }
            let args = w.kernel_do(|k, r| {
                let t = &r.tasks[0];
                find_exec(k, t, r.mm_of(t).expect("mm"))
            });
            let args = args.unwrap_or_else(|e| panic!("stretched {stretched}: {e:?}"));
            assert_eq!(args.argv, [b"sleep".to_vec(), b"1".to_vec()]);
            assert_eq!(args.envp, [b"PATH=/bin".to_vec()]);
            // Another page offset than the real one is not taken for them.
            let mut w = exec_world();
            w.m.put_u64(BPRM + 24, shifted + 8);
            let mm = w.report.mms.values_mut().next().expect("mm");
            mm.arg_start = shifted + 8;
            let e = w.kernel_do(|k, r| {
                let t = &r.tasks[0];
                find_exec(k, t, r.mm_of(t).expect("mm"))
            });
            assert!(e.is_err(), "{e:?}");
        }
    }

    #[test]
    fn binprm_candidates_that_fail_a_check_are_rejected() {
        let reason = |w: &ExecWorld| {
            w.kernel_do(|k, r| {
                let t = &r.tasks[0];
                find_exec(k, t, r.mm_of(t).expect("mm")).map(|a| a.binprm)
            })
        };
        let closest = |e: Result<u64, ExecError>| match e {
            Err(ExecError::NotFound {
                closest: Some(c), ..
            }) => *c,
            other => panic!("{other:?}"),
        };
        // Another file than the mm's executable.
        let mut w = exec_world();
        w.m.put_u64(BPRM + 64, dm(0x11_1000));
        assert!(matches!(closest(reason(&w)), ExecError::NotExe { .. }));
        // The new mm not installed yet (bprm->mm is another mm).
        let mut w = exec_world();
        w.m.put_u64(BPRM + 16, dm(0xf000));
        assert!(matches!(reason(&w), Err(ExecError::NotFound { .. })));
        // Absurd counts, and more strings than bytes.
        let mut w = exec_world();
        w.m.put_u32(BPRM + 88, u32::MAX);
        assert!(matches!(closest(reason(&w)), ExecError::Counts { .. }));
        let mut w = exec_world();
        w.m.put_u32(BPRM + 92, 1000);
        assert!(matches!(closest(reason(&w)), ExecError::Counts { .. }));
        // One string too many: the filename is not where it should be.
        let mut w = exec_world();
        w.m.put_u32(BPRM + 92, 2);
        assert!(matches!(
            closest(reason(&w)),
            ExecError::Filename { .. } | ExecError::Unterminated { .. }
        ));
        // Strings outside the stack area, and a vma that is not the task's.
        let mut w = exec_world();
        w.m.put_u64(BPRM + 24, 0x1000);
        assert!(matches!(closest(reason(&w)), ExecError::Outside { .. }));
        let mut w = exec_world();
        w.m.put_u64(BPRM, dm(0x18_b000));
        assert!(matches!(closest(reason(&w)), ExecError::NotItsVma { .. }));
        // The strings' page is not mapped.
        let mut w = exec_world();
        w.m.put_u64(EXEC_PGD + 0x3000 + 0x1fe * 8, 0);
        assert!(matches!(closest(reason(&w)), ExecError::Unreadable { .. }));
    }

    #[test]
    fn a_process_in_execve_without_a_binprm_is_not_restored_with_the_reason() {
        let mut w = exec_world();
        w.m.put_u64(EXEC_STACK + 0x3e10, 0);
        let man = w.kernel_do(|k, r| build_manifest(k, r, &[]));
        assert!(man.processes.is_empty());
        assert_eq!(man.excluded[0].pid, 9);
        assert!(
            man.excluded[0].reason.starts_with(
                "caught inside execve, its arguments could not be read: no struct linux_binprm on its kernel stack"
            ),
            "{}",
            man.excluded[0].reason
        );
        // Still the old program (the new mm is not installed): restored, execve run again.
        let mut w = exec_world();
        w.m.put_u64(EXEC_STACK + 0x3e10, 0);
        let mm = w.report.mms.values_mut().next().expect("mm");
        mm.start_code = 0x40_0000;
        mm.auxv = vec![6, 0x1000, 0, 0];
        let man = w.kernel_do(|k, r| build_manifest(k, r, &[]));
        assert_eq!(man.processes, [9], "{:?}", man.excluded);
        let regs = &man.manifest.processes[0].threads[0].regs;
        assert_eq!((regs[10], regs[16], regs[14]), (59, 0x40_1000, 0x40_8000));
        // ... unless that image was not read cleanly.
        for p in w.report.mm_problems.values_mut() {
            p.push("maple tree: boom".to_owned());
        }
        let man = w.kernel_do(|k, r| build_manifest(k, r, &[]));
        assert_eq!(man.excluded[0].reason, "address space: maple tree: boom");
    }

    #[test]
    fn encodes_fields_and_rejects_bad_manifests() {
        let parse = |t: &str| wire::parse(t.as_bytes());
        assert_eq!(
            wire::encode_field("a b%c\n\u{e9}".as_bytes()),
            "a b%25c%0a%c3%a9"
        );
        assert!(parse("").is_err());
        assert!(parse("owvmm-manifest 2\n").is_err());
        assert!(parse("owvmm-manifest 1\nbogus 1\n").is_err());
        assert!(parse("owvmm-manifest 1\nprocess 5 x\nexe /x\n").is_err());
        assert!(parse("owvmm-manifest 1\ncopy 1 2 3\n").is_err());
        assert!(parse("owvmm-manifest 1\nfile 10 1a4 0 /x\nfcopy 0 1000 10\n").is_ok());
        assert!(parse("owvmm-manifest 1\nfile 10 1A4 0 /x\n").is_err());
    }
}
