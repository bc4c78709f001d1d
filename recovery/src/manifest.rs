//! The resurrection manifest (`docs/resurrection.md`, version 1): what the crash kernel's
//! agent needs to recreate each process of the dead kernel, built from a [`Report`].
//!
//! A process goes into the manifest only when everything about it was read cleanly and can
//! be restored; otherwise it is listed in [`Manifest::excluded`] with the reason, so that
//! nothing is resumed in a wrong state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::inspect::Report;
use crate::kernel::Kernel;
use crate::mm::{MmInfo, Vma, VM_EXEC, VM_GROWSDOWN, VM_READ, VM_SHARED, VM_WRITE};
use crate::pages::{file_pages, FileContent};
use crate::process::{file_inode, FileKind, InodeInfo, ProcessInfo, O_CLOEXEC};
use crate::regs::{final_user_regs, CpuUserState, UserRegs};
use crate::tasks::{FxSave, Task, ROBUST_LIST_HEAD_LEN, USER_CS};

/// The first line of a version-1 manifest.
pub const HEADER: &str = "owvmm-manifest 1";

/// A process left out of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    /// Process id.
    pub pid: i32,
    /// Why (`fd 5: cannot restore sock`, ...).
    pub reason: String,
}

/// A built manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The manifest text (ends with a newline).
    pub text: String,
    /// Pids of the processes in it, in order.
    pub processes: Vec<i32>,
    /// User processes not in it, with reasons.
    pub excluded: Vec<Excluded>,
    /// Things worth knowing that did not exclude anything (fallbacks taken).
    pub notes: Vec<String>,
}

/// Writes `s` as a manifest path/name field: bytes outside printable ASCII and `%` become
/// `%xx` (lower-case hex).
pub fn encode_field(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b == b'%' || !(0x20..=0x7e).contains(&b) {
            let _ = write!(out, "%{b:02x}");
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// A `vma` record's kind.
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
    fn name(self) -> &'static str {
        match self {
            VmaKind::Anon | VmaKind::SharedAnon => "anon",
            VmaKind::File => "file",
            VmaKind::Heap => "heap",
            VmaKind::Stack => "stack",
            VmaKind::Vdso => "vdso",
            VmaKind::Vvar => "vvar",
        }
    }
}

/// A regular file on an in-memory filesystem to recreate.
#[derive(Debug, Clone)]
struct FileRecord {
    path: String,
    inode: InodeInfo,
    overwrite: bool,
}

/// What one process needs beyond its own text: files, and the failures found while
/// rendering it.
struct Rendered {
    text: String,
    files: Vec<FileRecord>,
}

fn deleted(path: &str) -> bool {
    path.ends_with(" (deleted)")
}

fn classify_vma(k: &Kernel<'_>, v: &Vma) -> Result<(VmaKind, Option<InodeInfo>), String> {
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
        return Err(format!(
            "vma {at:#x}: special mapping {}",
            v.name.as_deref().unwrap_or("without a file")
        ));
    }
    let inode = file_inode(k, v.file_addr).map_err(|e| format!("vma {at:#x}: {e}"))?;
    let path = v
        .file
        .as_deref()
        .ok_or_else(|| format!("vma {at:#x}: file path unknown"))?;
    if v.flags & VM_SHARED != 0
        && inode.s_magic == crate::process::TMPFS_MAGIC
        && path == "/dev/zero (deleted)"
    {
        return Ok((VmaKind::SharedAnon, Some(inode)));
    }
    if inode.kind() != FileKind::Reg {
        return Err(format!(
            "vma {at:#x}: maps a {} file ({path})",
            inode.kind().manifest_name()
        ));
    }
    if deleted(path) || path.starts_with('[') {
        return Err(format!(
            "vma {at:#x}: maps a file that cannot be reopened ({path})"
        ));
    }
    Ok((VmaKind::File, Some(inode)))
}

fn prot(flags: u64) -> String {
    let f = |bit, c| if flags & bit != 0 { c } else { '-' };
    let mut s: String = [f(VM_READ, 'r'), f(VM_WRITE, 'w'), f(VM_EXEC, 'x')]
        .iter()
        .collect();
    s.push(' ');
    s.push(if flags & VM_SHARED != 0 { 's' } else { 'p' });
    if flags & VM_GROWSDOWN != 0 {
        s.push('g');
    }
    s
}

/// The registers and FPU image a thread resumes with.
fn thread_state(
    t: &Task,
    live: Option<&CpuUserState>,
    syscall_entry: Option<u64>,
    notes: &mut Vec<String>,
) -> Result<(UserRegs, FxSave), String> {
    let mem_fpu = t.fpu;
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
                mem_fpu.ok_or_else(|| format!("thread {}: FPU state unreadable", t.pid))?
            };
            Ok((r, fpu))
        }
        Some(c) if c.cpl3 => {
            let fpu = if t.fpu_live_in_cpu() {
                c.fxsave
            } else {
                mem_fpu.ok_or_else(|| format!("thread {}: FPU state unreadable", t.pid))?
            };
            Ok((c.regs.normalized(), fpu))
        }
        _ => {
            let mut pt = t
                .regs
                .ok_or_else(|| format!("thread {}: no saved user registers", t.pid))?;
            if unstarted(pt.ip, pt.cs) {
                pt.ip = pt.cx.wrapping_sub(2);
                pt.flags = pt.r11;
                pt.orig_ax = u64::MAX;
            }
            if pt.cs != USER_CS {
                return Err(format!(
                    "thread {}: not a 64-bit user frame (cs {:#x})",
                    t.pid, pt.cs
                ));
            }
            if !pt.is_user() {
                return Err(format!("thread {}: saved frame is not a user frame", t.pid));
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
                    mem_fpu.ok_or_else(|| format!("thread {}: FPU state unreadable", t.pid))?
                }
            };
            Ok((final_user_regs(&pt, t.fsbase, t.gsbase), fpu))
        }
    }
}

fn hex_words(words: &[u64]) -> String {
    let mut s = String::new();
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{w:x}");
    }
    s
}

/// Copies of a shared anonymous area: its shmem object's cached pages at `pgoff..`.
fn shared_anon_copies(
    k: &Kernel<'_>,
    v: &Vma,
    inode: &InodeInfo,
    out: &mut String,
) -> Result<(), String> {
    let content = file_pages(k, inode.addr);
    if let Some(p) = content.problems.first() {
        return Err(format!("vma {:#x}: shared memory: {p}", v.start));
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
    for (va, phys, len) in runs {
        let _ = writeln!(out, "copy {va:x} {phys:x} {len:x}");
    }
    Ok(())
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
) -> Result<Rendered, String> {
    let mut out = String::new();
    let mut files: Vec<FileRecord> = Vec::new();
    let mut want_file = |path: &str, inode: InodeInfo, writable: bool| {
        if inode.kind() == FileKind::Reg && inode.in_memory_fs() {
            files.push(FileRecord {
                path: path.to_owned(),
                inode,
                overwrite: writable,
            });
        }
    };
    let _ = writeln!(out, "process {} {}", leader.pid, encode_field(&leader.comm));
    let exe = mm.exe.as_deref().ok_or("executable unknown")?;
    if deleted(exe) {
        return Err(format!("executable was deleted ({exe})"));
    }
    if mm.exe_file != 0 {
        if let Ok(inode) = file_inode(k, mm.exe_file) {
            want_file(exe, inode, false);
        }
    }
    let _ = writeln!(out, "exe {}", encode_field(exe));
    let cwd = proc_.cwd.as_deref().ok_or("current directory unknown")?;
    if deleted(cwd) {
        return Err(format!("current directory was deleted ({cwd})"));
    }
    let _ = writeln!(out, "cwd {}", encode_field(cwd));
    let _ = writeln!(
        out,
        "mm {}",
        hex_words(&[
            mm.start_code,
            mm.end_code,
            mm.start_data,
            mm.end_data,
            mm.start_brk,
            mm.brk,
            mm.start_stack,
            mm.arg_start,
            mm.arg_end,
            mm.env_start,
            mm.env_end,
        ])
    );
    if mm.auxv.is_empty() {
        return Err("saved auxv unreadable".to_owned());
    }
    let _ = writeln!(out, "auxv {}", hex_words(&mm.auxv));

    for v in &mm.vmas {
        let (kind, inode) = classify_vma(k, v)?;
        if let Some(p) = v.pages.problems.first() {
            return Err(format!("vma {:#x}: pages: {p}", v.start));
        }
        let pgoff = if kind == VmaKind::File {
            v.pgoff.wrapping_mul(4096)
        } else {
            0
        };
        let _ = write!(
            out,
            "vma {:x} {:x} {} {:x} {}",
            v.start,
            v.end,
            prot(v.flags),
            pgoff,
            kind.name()
        );
        if kind == VmaKind::File {
            let path = v.file.as_deref().unwrap_or_default();
            let _ = write!(out, " {}", encode_field(path));
            if let Some(inode) = inode {
                want_file(path, inode, false);
            }
        }
        out.push('\n');
        let shared = v.flags & VM_SHARED != 0;
        match kind {
            VmaKind::Vdso | VmaKind::Vvar => {}
            VmaKind::SharedAnon => {
                if let Some(inode) = inode {
                    shared_anon_copies(k, v, &inode, &mut out)?;
                }
            }
            VmaKind::File if shared => {}
            _ => {
                let only_anon = kind == VmaKind::File;
                for r in &v.pages.value.runs {
                    if only_anon && !r.anon {
                        continue;
                    }
                    let _ = writeln!(out, "copy {:x} {:x} {:x}", r.vaddr, r.phys, r.len);
                }
            }
        }
    }

    for f in &proc_.files {
        let kind = f.kind();
        if !matches!(kind, FileKind::Reg | FileKind::Chr | FileKind::Dir) {
            return Err(format!(
                "fd {}: cannot restore {}",
                f.fd,
                kind.manifest_name()
            ));
        }
        let path = f
            .path
            .as_deref()
            .ok_or_else(|| format!("fd {}: path unknown", f.fd))?;
        if deleted(path) || path.starts_with('[') {
            return Err(format!("fd {}: cannot reopen {path}", f.fd));
        }
        if let Some(inode) = f.inode {
            want_file(path, inode, f.writable());
        }
        let flags = f.flags | if f.cloexec { O_CLOEXEC } else { 0 };
        let _ = writeln!(
            out,
            "fd {} {:x} {:x} {} {}",
            f.fd,
            flags,
            f.pos,
            kind.manifest_name(),
            encode_field(path)
        );
    }
    for a in &proc_.sigactions {
        let _ = writeln!(
            out,
            "sig {} {:x} {:x} {:x} {:x}",
            a.signo, a.handler, a.flags, a.restorer, a.mask
        );
    }
    let syscall_entry = k.symbol("entry_SYSCALL_64").ok();
    for t in threads {
        let (regs, fpu) = thread_state(t, live.get(&t.addr).copied(), syscall_entry, notes)?;
        let _ = writeln!(out, "thread {} {}", t.pid, encode_field(&t.comm));
        let _ = writeln!(out, "regs {}", hex_words(&regs.to_array()));
        let _ = writeln!(out, "fpu {}", fpu.to_hex());
        let _ = writeln!(out, "sigmask {:x}", t.effective_sigmask());
        let _ = writeln!(out, "tid-address {:x}", t.clear_child_tid);
        let _ = writeln!(
            out,
            "robust-list {:x} {:x}",
            t.robust_list, ROBUST_LIST_HEAD_LEN
        );
        if let Some(r) = t.rseq {
            let _ = writeln!(out, "rseq {:x} {:x} {:x}", r.addr, r.len, r.sig);
        }
    }
    out.push_str("end\n");
    Ok(Rendered { text: out, files })
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
        let check = || -> Result<(&MmInfo, &ProcessInfo), String> {
            if let Some(other) = mm_users
                .get(&leader.mm)
                .and_then(|s| s.iter().find(|&&p| p != tgid))
            {
                return Err(format!(
                    "address space shared with pid {other} (vfork or CLONE_VM)"
                ));
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
                if let Some(w) = what {
                    return Err(format!("thread {} has its own {w}", t.pid));
                }
            }
            let mm = report.mm_of(leader).ok_or("address space not read")?;
            if let Some(p) = report.mm_problems.get(&leader.mm).and_then(|p| p.first()) {
                return Err(format!("address space: {p}"));
            }
            let p = report
                .processes
                .get(&tgid)
                .ok_or("process state not read")?;
            if let Some(e) = p.problems.first() {
                return Err(e.clone());
            }
            Ok((mm, &p.value))
        };
        let (mm, proc_) = match check() {
            Ok(v) => v,
            Err(e) => {
                exclude(e);
                continue;
            }
        };
        match render_process(kernel, leader, &threads, mm, proc_, &live, &mut m.notes) {
            Ok(r) => rendered.push((tgid, r)),
            Err(e) => exclude(e),
        }
    }

    // Files: deduplicated by inode; a file whose content cannot be read excludes its users.
    let mut files: BTreeMap<u64, FileRecord> = BTreeMap::new();
    for (_, r) in &rendered {
        for f in &r.files {
            files
                .entry(f.inode.addr)
                .and_modify(|e| e.overwrite |= f.overwrite)
                .or_insert_with(|| f.clone());
        }
    }
    let mut contents: BTreeMap<u64, Result<FileContent, String>> = BTreeMap::new();
    for (&inode, f) in &files {
        let c = file_pages(kernel, inode);
        contents.insert(
            inode,
            match c.problems.first() {
                None => Ok(c.value),
                Some(p) => Err(format!("file {}: content: {p}", f.path)),
            },
        );
    }
    let mut used: BTreeSet<u64> = BTreeSet::new();
    let mut body = String::new();
    for (tgid, r) in rendered {
        let bad = r
            .files
            .iter()
            .find_map(|f| contents.get(&f.inode.addr).and_then(|c| c.as_ref().err()));
        if let Some(e) = bad {
            m.excluded.push(Excluded {
                pid: tgid,
                reason: e.clone(),
            });
            continue;
        }
        used.extend(r.files.iter().map(|f| f.inode.addr));
        body.push_str(&r.text);
        m.processes.push(tgid);
    }

    m.text.push_str(HEADER);
    m.text.push('\n');
    for inode in used {
        let (Some(f), Some(Ok(c))) = (files.get(&inode), contents.get(&inode)) else {
            continue;
        };
        let _ = writeln!(
            m.text,
            "file {:x} {:x} {} {}",
            c.size,
            f.inode.mode & 0o7777,
            u8::from(f.overwrite),
            encode_field(&f.path)
        );
        for (off, gpa, len) in c.runs() {
            let _ = writeln!(m.text, "fcopy {off:x} {gpa:x} {len:x}");
        }
    }
    m.text.push_str(&body);
    m.excluded.sort_by_key(|e| e.pid);
    m
}

/// Counts found by [`parse_manifest`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestSummary {
    /// `file` records.
    pub files: usize,
    /// `process` records.
    pub processes: usize,
    /// `thread` records.
    pub threads: usize,
    /// Bytes of `copy` runs.
    pub copy_bytes: u64,
}

/// Checks a manifest against the version-1 format: header, known records in the documented
/// order, field counts, number syntax. Used by tests and the fuzz target.
pub fn parse_manifest(text: &str) -> Result<ManifestSummary, String> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, HEADER)) => {}
        other => return Err(format!("bad header {other:?}")),
    }
    let hex = |s: &str| {
        u64::from_str_radix(s, 16)
            .ok()
            .filter(|_| s == s.to_lowercase())
    };
    let dec = |s: &str| s.parse::<u64>().ok();
    let mut sum = ManifestSummary::default();
    // State: 0 files, 1 in process before threads, 2 in a thread, 3 between processes.
    let mut in_process = false;
    let mut after_file = false;
    let mut after_vma = false;
    let mut in_thread = false;
    for (n, line) in lines {
        let err = |what: &str| Err(format!("line {}: {what}: {line:?}", n + 1));
        let (ty, rest) = line.split_once(' ').unwrap_or((line, ""));
        let f: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split(' ').collect()
        };
        let nums = |count: usize, decimal_first: usize| -> bool {
            f.len() >= count
                && f[..count].iter().enumerate().all(|(i, v)| {
                    if i < decimal_first {
                        dec(v).is_some()
                    } else {
                        hex(v).is_some()
                    }
                })
        };
        let path_ok = |from: usize| {
            rest.splitn(from + 1, ' ')
                .nth(from)
                .is_some_and(|p| !p.is_empty())
        };
        let ok = match ty {
            "file" if !in_process => {
                after_file = true;
                sum.files += 1;
                nums(3, 0) && path_ok(3)
            }
            "fcopy" if after_file && !in_process => f.len() == 3 && nums(3, 0),
            "process" if !in_process => {
                in_process = true;
                after_file = false;
                sum.processes += 1;
                nums(1, 1) && path_ok(1)
            }
            "exe" | "cwd" if in_process && !in_thread => !rest.is_empty(),
            "mm" if in_process && !in_thread => f.len() == 11 && nums(11, 0),
            "auxv" if in_process && !in_thread => {
                !f.is_empty() && f.len() & 1 == 0 && nums(f.len(), 0)
            }
            "vma" if in_process && !in_thread => {
                after_vma = true;
                f.len() >= 6
                    && hex(f[0]).is_some()
                    && hex(f[1]).is_some()
                    && f[2].len() == 3
                    && matches!(f[3], "p" | "s" | "pg" | "sg")
                    && hex(f[4]).is_some()
                    && matches!(
                        f[5],
                        "anon" | "file" | "heap" | "stack" | "vdso" | "vvar" | "vsyscall"
                    )
                    && (f[5] == "file") == (f.len() > 6)
            }
            "copy" if after_vma && !in_thread => {
                if let Some(l) = f.get(2).and_then(|v| hex(v)) {
                    sum.copy_bytes += l;
                }
                f.len() == 3 && nums(3, 0)
            }
            "fd" if in_process && !in_thread => {
                after_vma = false;
                nums(3, 1)
                    && matches!(
                        f.get(3),
                        Some(&("reg" | "chr" | "dir" | "fifo" | "sock" | "other"))
                    )
                    && path_ok(4)
            }
            "sig" if in_process && !in_thread => f.len() == 5 && nums(5, 1),
            "thread" if in_process => {
                after_vma = false;
                in_thread = true;
                sum.threads += 1;
                nums(1, 1) && path_ok(1)
            }
            "regs" if in_thread => f.len() == 27 && nums(27, 0),
            "fpu" if in_thread => {
                f.len() == 1
                    && f[0].len() == 1024
                    && f[0]
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            }
            "sigmask" | "tid-address" if in_thread => f.len() == 1 && nums(1, 0),
            "robust-list" if in_thread => f.len() == 2 && nums(2, 0),
            "rseq" if in_thread => f.len() == 3 && nums(3, 0),
            "end" if in_process && in_thread => {
                in_process = false;
                in_thread = false;
                after_vma = false;
                f.is_empty()
            }
            _ => return err("unexpected record"),
        };
        if !ok {
            return err("bad fields");
        }
        if ty == "fcopy" || ty == "file" {
            // fine
        } else if !in_process && ty != "end" {
            return err("record outside a process");
        }
    }
    if in_process {
        return Err("last process has no end".to_owned());
    }
    Ok(sum)
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
            fpu: Some(fx),
        }
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
        let (r, _) = thread_state(&t, None, Some(ENTRY), &mut notes).expect("state");
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
        let (r, _) = thread_state(&t, Some(&c), Some(ENTRY), &mut notes).expect("state");
        assert_eq!((r.rip, r.rax, r.eflags), (0x40_2000, 230, 0x202));
        // Without the symbol, such a frame is refused rather than resumed in the kernel.
        assert!(thread_state(&t, None, None, &mut notes).is_err());
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
        let reasons: Vec<(i32, &str)> = man
            .excluded
            .iter()
            .map(|e| (e.pid, e.reason.as_str()))
            .collect();
        assert_eq!(reasons[0].0, 1);
        assert_eq!(reasons[1], (7, "fd 3: cannot restore sock"));
        assert_eq!(reasons[2], (8, "exiting"));
        let sum = parse_manifest(&man.text).expect("parses");
        assert_eq!(
            (sum.files, sum.processes, sum.threads, sum.copy_bytes),
            (1, 1, 2, 0x3000)
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

    #[test]
    fn encodes_fields_and_rejects_bad_manifests() {
        assert_eq!(encode_field("a b%c\n\u{e9}"), "a b%25c%0a%c3%a9");
        assert!(parse_manifest("").is_err());
        assert!(parse_manifest("owvmm-manifest 2\n").is_err());
        assert!(parse_manifest("owvmm-manifest 1\nbogus 1\n").is_err());
        assert!(parse_manifest("owvmm-manifest 1\nprocess 5 x\nexe /x\n").is_err());
        assert!(parse_manifest("owvmm-manifest 1\ncopy 1 2 3\n").is_err());
        assert!(parse_manifest("owvmm-manifest 1\nfile 10 1a4 0 /x\nfcopy 0 1000 10\n").is_ok());
        assert!(parse_manifest("owvmm-manifest 1\nfile 10 1A4 0 /x\n").is_err());
    }
}
