//! Process resurrection: recreates the user processes of a crashed kernel from the manifest
//! that `recovery/` wrote and the dead kernel's memory (the "old-world window").
//! The contract is `docs/resurrection.md`.
//!
//! - [`manifest`] parses the manifest (strictly, every bad line with its number; the
//!   `owvmm-manifest` crate).
//! - [`files`] recreates the files of in-memory file systems (`file` records).
//! - [`pipes`] makes the anonymous pipes again with their unread bytes (`pipe` records).
//! - [`ptys`] makes the pseudo-terminals again with their settings and bytes in flight
//!   (`pty` records) and puts the console's settings back (`tty` records).
//! - [`restore`] recreates one process: `clone3(set_tid)`, then a ptrace-driven rebuild
//!   through system calls injected with [`tracer`].
//! - [`exec`] completes an exec the crash interrupted (`exec` blocks): `clone3(set_tid)`,
//!   what an exec keeps, then `execve`.
//! - [`tcp`] repairs established TCP connections (`tcp` records).
//! - [`procedure`] calls the crash procedure a process registered, with what was lost.
//! - [`tree`] decides who creates whom: a process whose parent comes back too is made by
//!   its parent, in its session and process group; unreaped zombies come back as zombies.

pub mod creds;
pub mod exec;
pub mod files;
pub mod manifest;
pub mod passed;
pub mod pipes;
pub mod procedure;
pub mod ptys;
pub mod restore;
pub mod tcp;
pub mod tracer;
pub mod tree;

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The largest manifest we accept.
pub const MAX_MANIFEST: u64 = 512 << 20;
/// `err` lines sent for a broken manifest, at most.
const MAX_ERR_LINES: usize = 20;

/// Why something could not be restored. The Display text is one step; the full reason
/// ([`reason`]) appends the chain of causes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call of the agent failed.
    #[error("{what}")]
    Os {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A system call injected into the process being built failed.
    #[error("{what}")]
    Remote {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The child failed while preparing itself (before the first stop).
    #[error("{what}")]
    Child {
        what: String,
        #[source]
        source: io::Error,
    },
    /// An open file the agent cannot recreate.
    #[error("fd {fd}: cannot restore {kind}")]
    FdKind { fd: i32, kind: &'static str },
    /// Anything else (bad input, an unexpected stop).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn os(what: impl Into<String>, source: io::Error) -> Self {
        Self::Os {
            what: what.into(),
            source,
        }
    }
}

pub use owvmm_manifest::error_chain as reason;

/// Lossy text of a path or name from the manifest, for messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A path from the manifest.
pub fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

/// Where the old memory is: a file (the guest's `/dev/mem`, a plain file in tests) in
/// which old-physical address `P` is at offset `base + P`, for `P < len`.
pub struct MemSource {
    pub file: File,
    pub base: u64,
    pub len: u64,
}

impl MemSource {
    pub fn open(path: &Path, base: u64, len: u64) -> Result<Self, Error> {
        // Read only, and not O_SYNC: the window is ordinary (cacheable) RAM.
        let file = File::open(path).map_err(|e| Error::os(path.display().to_string(), e))?;
        Ok(Self { file, base, len })
    }

    /// Checks that `[gpa, gpa + len)` lies inside the window.
    pub fn check(&self, gpa: u64, len: u64) -> Result<(), Error> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::Invalid(format!(
                "old memory {gpa:#x}+{len:#x} is outside the window ({:#x} bytes)",
                self.len
            ))),
        }
    }

    /// Maps `[gpa, gpa + len)` of the window read-only into the agent.
    pub fn map(&self, gpa: u64, len: u64) -> Result<Mapping, Error> {
        self.check(gpa, len)?;
        let off = self
            .base
            .checked_add(gpa)
            .ok_or_else(|| Error::Invalid("window offset overflows".to_owned()))?;
        Mapping::new(&self.file, off, len)
    }
}

/// A read-only shared mapping of part of a file.
pub struct Mapping {
    addr: *mut libc::c_void,
    map_len: usize,
    /// Offset of the wanted first byte inside the mapping.
    skew: usize,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `file` from `offset` (any alignment).
    pub fn new(file: &File, offset: u64, len: u64) -> Result<Self, Error> {
        let page = manifest::PAGE;
        let start = offset - offset % page;
        let skew = usize::try_from(offset - start).unwrap_or(0);
        let len = usize::try_from(len).map_err(|_| Error::Invalid("mapping too large".into()))?;
        let map_len = skew
            .checked_add(len)
            .ok_or_else(|| Error::Invalid("mapping too large".to_owned()))?
            .max(1);
        let off = libc::off_t::try_from(start)
            .map_err(|_| Error::Invalid(format!("offset {start:#x} too large")))?;
        // SAFETY: a new read-only shared mapping at an address of the kernel's choosing;
        // it aliases nothing in our address space and is unmapped in Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::os(
                format!("mmap {len:#x} bytes at offset {offset:#x}"),
                io::Error::last_os_error(),
            ));
        }
        Ok(Self {
            addr,
            map_len,
            skew,
            len,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `map_len >= skew + len` bytes long, readable, and lives as
        // long as `self`. Nobody writes to it through this process. (A file that shrinks
        // under us could fault; the window and the manifest are fixed memory.)
        unsafe { std::slice::from_raw_parts(self.addr.cast::<u8>().add(self.skew), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; no slice of it outlives self.
        unsafe { libc::munmap(self.addr, self.map_len) };
    }
}

/// The `resurrect` request.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub manifest_gpa: u64,
    pub manifest_len: u64,
    pub window_gpa: u64,
    pub window_len: u64,
}

/// What [`run`] reports as it goes.
pub enum Event {
    /// A process runs again.
    Restored {
        pid: u32,
        threads: u32,
        ms: u64,
        /// What to call it in `exited` (its executable).
        command: String,
    },
    /// A process could not be restored (and nothing of it runs).
    NotRestored { pid: u32, reason: String },
    /// A problem that is not one process's (sent as `err`).
    Err(String),
    /// A step finished: a good moment for a heartbeat.
    Progress,
}

/// One block of the manifest: a process image, or an exec to complete.
enum Block<'a> {
    Process(&'a manifest::Process),
    Exec(&'a manifest::Exec),
}

/// The totals for `resurrect-done`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub restored: u32,
    pub failed: u32,
    pub ms: u64,
}

fn ms_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs a whole `resurrect` request reading `mem_path`, reporting through `sink`.
pub fn run(req: &Request, mem_path: &Path, sink: &mut dyn FnMut(Event)) -> Summary {
    let t0 = Instant::now();
    let mut sum = Summary::default();
    if req.manifest_len == 0 || req.manifest_len > MAX_MANIFEST {
        sink(Event::Err(format!(
            "resurrect: manifest length {} is not in 1..={MAX_MANIFEST}",
            req.manifest_len
        )));
        sum.ms = ms_since(t0);
        return sum;
    }
    let mem = match MemSource::open(mem_path, req.window_gpa, req.window_len) {
        Ok(m) => m,
        Err(e) => {
            sink(Event::Err(format!("resurrect: {}", reason(&e))));
            sum.ms = ms_since(t0);
            return sum;
        }
    };
    let manifest_map = match Mapping::new(&mem.file, req.manifest_gpa, req.manifest_len) {
        Ok(m) => m,
        Err(e) => {
            sink(Event::Err(format!("resurrect: manifest: {}", reason(&e))));
            sum.ms = ms_since(t0);
            return sum;
        }
    };
    let m = manifest::parse_each(manifest_map.bytes());
    drop(manifest_map);
    if !m.errors.is_empty() {
        for e in m.errors.iter().take(MAX_ERR_LINES) {
            sink(Event::Err(format!("resurrect: manifest {e}")));
        }
        let more = m.errors.len().saturating_sub(MAX_ERR_LINES) + m.more_errors;
        if more > 0 {
            sink(Event::Err(format!(
                "resurrect: manifest: {more} more bad lines"
            )));
        }
        sum.failed = u32::try_from(m.processes.len() + m.execs.len()).unwrap_or(u32::MAX);
        sum.ms = ms_since(t0);
        return sum;
    }
    for f in &m.files {
        if f.update == manifest::FileUpdate::Patch {
            let bytes: u64 = f.runs.iter().map(|r| r.len).sum();
            crate::log!(
                "resurrect: {}: writing back {bytes} bytes the dead kernel had not",
                text(&f.path)
            );
        }
        if let Err(e) = files::recreate(f, &mem) {
            sink(Event::Err(format!(
                "resurrect: file {}: {}",
                text(&f.path),
                reason(&e)
            )));
        }
        sink(Event::Progress);
    }
    // Pipes before any process: each takes its ends from the agent.
    let all_fds = m
        .processes
        .iter()
        .flatten()
        .flat_map(|p| &p.fds)
        .chain(m.execs.iter().flatten().flat_map(|e| &e.fds));
    let above = pipes::first_free_above(all_fds.clone());
    let (mut pipes, failed) = pipes::PipeTable::make(&m.pipes, above, &mem);
    for (id, e) in failed {
        sink(Event::Err(format!("resurrect: pipe {id}: {}", reason(&e))));
    }
    for (id, e) in pipes.make_inets(&m.inets, above) {
        sink(Event::Err(format!(
            "resurrect: socket {id}: {}",
            reason(&e)
        )));
    }
    let unrepaired = pipes.make_tcps(&m.tcps, above, &mem);
    for (id, e) in &unrepaired {
        sink(Event::Err(format!(
            "resurrect: tcp connection {id}: {} (it comes back reset)",
            reason(e)
        )));
    }
    if !m.tcps.is_empty() {
        crate::log!(
            "resurrect: {} of {} established tcp connections repaired",
            m.tcps.len() - unrepaired.len(),
            m.tcps.len()
        );
    }
    let (failed, notes) = pipes.make_ptys(&m.ptys, above, &mem);
    for (id, e) in failed {
        sink(Event::Err(format!("resurrect: pty {id}: {}", reason(&e))));
    }
    for n in notes {
        crate::log!("resurrect: {n}");
    }
    if !m.ptys.is_empty() {
        let bytes: u64 = m.ptys.iter().flat_map(|p| p.runs()).map(|r| r.len).sum();
        crate::log!(
            "resurrect: {} pseudo-terminals made again, {bytes} bytes in flight in them",
            m.ptys.len()
        );
    }
    for e in pipes.apply_ttys(&m.ttys, above) {
        sink(Event::Err(format!("resurrect: {}", reason(&e))));
    }
    let vmas = m.processes.iter().flatten().flat_map(|p| &p.vmas);
    for (id, e) in pipes.make_shms(vmas, &m.shms, &mem) {
        sink(Event::Err(format!(
            "resurrect: shared memory {id}: {}",
            reason(&e)
        )));
    }
    // Unix sockets last: their messages may carry any of the above in flight.
    for (id, e) in pipes.make_ulistens(&m.ulistens, above) {
        sink(Event::Err(format!(
            "resurrect: unix listener {id}: {}",
            reason(&e)
        )));
    }
    for (id, e) in pipes.make_unixes(&m.unixes, above, &mem) {
        sink(Event::Err(format!(
            "resurrect: unix socket {id}: {}",
            reason(&e)
        )));
    }
    let passed = m
        .unixes
        .iter()
        .flat_map(|u| u.msgs.iter().flat_map(|g| &g.fds));
    pipes.set_status_flags(all_fds.chain(passed));
    if !m.pipes.is_empty() {
        let bytes: u64 = m.pipes.iter().map(manifest::PipeRec::data_len).sum();
        crate::log!(
            "resurrect: {} pipes made again, {bytes} unread bytes in them",
            m.pipes.len()
        );
    }
    if !m.unixes.is_empty() {
        crate::log!(
            "resurrect: {} connected unix sockets made again",
            m.unixes.len()
        );
    }
    if !m.ulistens.is_empty() {
        crate::log!(
            "resurrect: {} listening unix sockets bound again",
            m.ulistens.len()
        );
    }
    if !m.inets.is_empty() {
        crate::log!(
            "resurrect: {} listening or bound sockets made again",
            m.inets.len()
        );
    }
    let blocks = m
        .processes
        .iter()
        .map(|p| p.as_ref().map(Block::Process))
        .chain(m.execs.iter().map(|e| e.as_ref().map(Block::Exec)));
    // Every process is planned before any is made: a stub is a copy of the agent, and
    // makes its children from the plans in that copy.
    let mut nodes = Vec::new();
    for entry in blocks {
        let planned = match entry {
            Err(bad) => {
                let first = bad
                    .errors
                    .first()
                    .map_or_else(|| "bad process block".to_owned(), |e| e.to_string());
                let extra = bad.errors.len().saturating_sub(1);
                let reason = if extra > 0 {
                    format!("manifest {first} (and {extra} more bad lines)")
                } else {
                    format!("manifest {first}")
                };
                Err((bad.pid, reason))
            }
            Ok(Block::Process(p)) => restore::prepare(p, &mem, &pipes)
                .map(|prep| {
                    let kind = tree::Kind::Process(p, Box::new(prep));
                    tree::Node::new(i32::try_from(p.pid).unwrap_or(0), kind, p.tree)
                })
                .map_err(|e| (p.pid, reason(&e))),
            Ok(Block::Exec(e)) => exec::prepare(e, &pipes)
                .map(|prep| {
                    let kind = tree::Kind::Exec(e, Box::new(prep));
                    tree::Node::new(i32::try_from(e.pid).unwrap_or(0), kind, e.tree)
                })
                .map_err(|err| (e.pid, reason(&err))),
        };
        match planned {
            Ok(node) => nodes.push(node),
            Err((pid, reason)) => {
                sum.failed += 1;
                sink(Event::NotRestored { pid, reason });
            }
        }
    }
    nodes.extend(tree::zombie_nodes(&m.zombies));
    let mut forest = tree::Forest::link(nodes);
    forest.cttys = pipes.controlling_ttys(&m.ptys);
    let zombies = forest
        .nodes
        .iter()
        .filter(|n| matches!(n.kind, tree::Kind::Zombie(_)))
        .count();
    if zombies > 0 {
        crate::log!("resurrect: {zombies} zombies made again for their parents");
    }
    // Every stub first: each takes copies of the agent's pipe ends and sockets when it is
    // made, so the agent's own can go before any process runs again (a restarted server
    // must be able to bind its port again: the agent's copy of the old listener would be
    // in the way). Then every process, parents first, and the execs last (an exec's status
    // pipe ends only when every stub has closed its copy, which it does as it prepares).
    let mut order: Vec<(usize, Result<(), String>)> = Vec::new();
    let mut execs = Vec::new();
    for root in forest.roots() {
        let created = forest.create(root).map_err(|e| reason(&e));
        for i in forest.finish_order(root) {
            if matches!(forest.nodes[i].kind, tree::Kind::Exec(..)) {
                execs.push((i, created.clone()));
            } else {
                order.push((i, created.clone()));
            }
        }
    }
    pipes.close_handed_out();
    order.extend(execs);
    for (i, created) in order {
        let t = Instant::now();
        let node = &mut forest.nodes[i];
        let by_parent = node.by_parent();
        let (pid, done, command) = match &mut node.kind {
            tree::Kind::Process(p, prep) => (
                p.pid,
                match &created {
                    Ok(()) => restore::finish(p, prep, by_parent, &pipes),
                    Err(e) => Err(Error::Invalid(e.clone())),
                },
                p.exe.as_deref().map_or_else(|| text(&p.comm), text),
            ),
            tree::Kind::Exec(e, prep) => (
                e.pid,
                match &created {
                    Ok(()) => exec::finish(prep).map(|()| {
                        restore::queue_pending(i32::try_from(e.pid).unwrap_or(0), &e.pending);
                        1
                    }),
                    Err(e) => Err(Error::Invalid(e.clone())),
                },
                text(&e.path),
            ),
            tree::Kind::Zombie(_) => continue,
        };
        match done {
            Ok(threads) => {
                sum.restored += 1;
                sink(Event::Restored {
                    pid,
                    threads,
                    ms: ms_since(t),
                    command,
                });
            }
            Err(e) => {
                sum.failed += 1;
                sink(Event::NotRestored {
                    pid,
                    reason: reason(&e),
                });
            }
        }
        sink(Event::Progress);
    }
    sum.ms = ms_since(t0);
    sum
}
