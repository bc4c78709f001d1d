//! The resurrection manifest (version 1, `docs/resurrection.md`): a strict parser.
//!
//! Every bad line is reported with its line number. A bad line inside a `process` ...
//! `end` block makes only that process fail; a bad line anywhere else (the header, the
//! `file` records, the structure) makes the whole manifest fail. The parser never panics and
//! bounds what it accepts (line length, path length, auxv length, error count).

use std::collections::HashSet;
use std::fmt;

/// Page size of the guest (x86-64).
pub const PAGE: u64 = 4096;
/// Longest accepted manifest line (an `fpu` line is about 1030 bytes, a path up to
/// 3 x 4096 when every byte is escaped).
pub const MAX_LINE: usize = 16 * 1024;
/// Longest decoded path (PATH_MAX without the NUL).
pub const MAX_PATH: usize = 4095;
/// Most `auxv` words (the kernel keeps fewer in `saved_auxv`).
pub const MAX_AUXV: usize = 128;
/// Errors kept per manifest (and per process); more are counted but not kept.
pub const MAX_ERRORS: usize = 100;
/// The first line of a version-1 manifest.
pub const HEADER: &str = "owvmm-manifest 1";

/// One bad line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub msg: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

/// A parsed manifest.
#[derive(Debug, Default)]
pub struct Manifest {
    /// The `file` records, in order.
    pub files: Vec<FileRec>,
    /// The `process` blocks, in order; a block with bad lines is an `Err`.
    pub processes: Vec<Result<Process, BadProcess>>,
    /// Bad lines outside process blocks: when there are any, nothing may be restored.
    pub errors: Vec<LineError>,
    /// Errors beyond [`MAX_ERRORS`] that were not kept.
    pub more_errors: usize,
}

/// A process block with at least one bad line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadProcess {
    /// Its PID, or 0 when the `process` line itself was bad.
    pub pid: u32,
    /// Its bad lines (at most [`MAX_ERRORS`]).
    pub errors: Vec<LineError>,
}

/// `file <size> <mode> <overwrite> <path>` and its `fcopy` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRec {
    pub line: usize,
    pub size: u64,
    /// Permission bits (`i_mode & 0o7777`).
    pub mode: u32,
    pub overwrite: bool,
    pub path: Vec<u8>,
    pub runs: Vec<FileRun>,
}

/// `fcopy <offset> <gpa> <len>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRun {
    pub offset: u64,
    pub gpa: u64,
    pub len: u64,
}

/// One process: everything between `process` and `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub line: usize,
    pub pid: u32,
    pub comm: Vec<u8>,
    pub exe: Option<Vec<u8>>,
    pub cwd: Option<Vec<u8>>,
    pub mm: Mm,
    /// `saved_auxv` words up to and including the `AT_NULL` pair.
    pub auxv: Vec<u64>,
    /// Sorted by address, not overlapping.
    pub vmas: Vec<Vma>,
    pub fds: Vec<FdRec>,
    pub sigs: Vec<SigRec>,
    /// The leader first.
    pub threads: Vec<Thread>,
}

/// The `mm` record, in the order of `struct prctl_mm_map`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mm {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// What backs a memory area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmaKind {
    Anon,
    File,
    Heap,
    Stack,
    Vdso,
    Vvar,
    Vsyscall,
}

impl VmaKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "anon" => Self::Anon,
            "file" => Self::File,
            "heap" => Self::Heap,
            "stack" => Self::Stack,
            "vdso" => Self::Vdso,
            "vvar" => Self::Vvar,
            "vsyscall" => Self::Vsyscall,
            _ => return None,
        })
    }

    /// Anonymous memory that the agent maps itself.
    pub fn is_anon(self) -> bool {
        matches!(self, Self::Anon | Self::Heap | Self::Stack)
    }
}

/// `vma <start> <end> <prot> <share> <pgoff> <kind> [path]` and its `copy` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `PROT_READ | PROT_WRITE | PROT_EXEC` bits.
    pub prot: i32,
    pub shared: bool,
    pub growsdown: bool,
    /// File offset in bytes.
    pub pgoff: u64,
    pub kind: VmaKind,
    pub path: Option<Vec<u8>>,
    pub copies: Vec<Copy>,
}

/// `copy <vaddr> <gpa> <len>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy {
    pub vaddr: u64,
    pub gpa: u64,
    pub len: u64,
}

/// The kind of an open file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    Reg,
    Chr,
    Dir,
    Fifo,
    Sock,
    Other,
}

impl FdKind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "reg" => Self::Reg,
            "chr" => Self::Chr,
            "dir" => Self::Dir,
            "fifo" => Self::Fifo,
            "sock" => Self::Sock,
            "other" => Self::Other,
            _ => return None,
        })
    }

    /// The manifest word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Reg => "reg",
            Self::Chr => "chr",
            Self::Dir => "dir",
            Self::Fifo => "fifo",
            Self::Sock => "sock",
            Self::Other => "other",
        }
    }
}

/// `fd <fd> <flags> <pos> <kind> <path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdRec {
    pub fd: i32,
    pub flags: i32,
    pub pos: u64,
    pub kind: FdKind,
    pub path: Vec<u8>,
}

/// `sig <signo> <handler> <flags> <restorer> <mask>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigRec {
    pub signo: i32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// One thread: `thread` and the records after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub line: usize,
    pub tid: u32,
    pub comm: Vec<u8>,
    /// `struct user_regs_struct`, 27 words.
    pub regs: [u64; 27],
    /// The FXSAVE image.
    pub fpu: Box<[u8; 512]>,
    pub sigmask: u64,
    pub tid_address: Option<u64>,
    /// (head, len).
    pub robust_list: Option<(u64, u64)>,
    /// (addr, len, sig).
    pub rseq: Option<(u64, u32, u32)>,
}

/// Parses a whole manifest. Never fails as such: problems are in the result.
pub fn parse(text: &[u8]) -> Manifest {
    let mut p = Parser::default();
    let mut lines = text.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((i, raw)) = lines.next() {
        let n = i + 1;
        // The piece after the final newline is not a line.
        if raw.is_empty() && lines.peek().is_none() {
            break;
        }
        let line = match check_line(raw) {
            Ok(l) => l,
            Err(msg) if n > 1 => {
                p.error(n, msg);
                continue;
            }
            Err(_) => "",
        };
        if n == 1 {
            if line != HEADER {
                p.global(n, format!("not a version-1 manifest (expected '{HEADER}')"));
                return p.finish(n);
            }
            continue;
        }
        p.record(n, line);
    }
    let last = text.split(|&b| b == b'\n').count();
    if text.is_empty() {
        p.global(1, "empty manifest".to_owned());
    }
    p.finish(last)
}

/// A line must be printable ASCII (paths are %-escaped) and not too long.
fn check_line(raw: &[u8]) -> Result<&str, String> {
    if raw.len() > MAX_LINE {
        return Err(format!(
            "line too long ({} bytes, limit {MAX_LINE})",
            raw.len()
        ));
    }
    if raw.is_empty() {
        return Err("empty line".to_owned());
    }
    if let Some(b) = raw.iter().find(|&&b| !(0x20..0x7f).contains(&b)) {
        return Err(format!("byte 0x{b:02x} is not printable ASCII"));
    }
    // All bytes are ASCII, so this cannot fail.
    std::str::from_utf8(raw).map_err(|_| "not ASCII".to_owned())
}

/// Where we are.
#[derive(Default)]
enum State {
    /// After the header, `file` records allowed.
    #[default]
    Files,
    /// Inside a process block.
    Process(Box<ProcBuilder>),
    /// Between process blocks (no more `file`).
    Between,
}

struct ProcBuilder {
    line: usize,
    pid: u32,
    comm: Vec<u8>,
    exe: Option<Vec<u8>>,
    cwd: Option<Vec<u8>>,
    mm: Option<Mm>,
    auxv: Option<Vec<u64>>,
    vmas: Vec<Vma>,
    fds: Vec<FdRec>,
    sigs: Vec<SigRec>,
    threads: Vec<ThreadBuilder>,
    errors: Vec<LineError>,
}

struct ThreadBuilder {
    line: usize,
    tid: u32,
    comm: Vec<u8>,
    regs: Option<[u64; 27]>,
    fpu: Option<Box<[u8; 512]>>,
    sigmask: Option<u64>,
    tid_address: Option<u64>,
    robust_list: Option<(u64, u64)>,
    rseq: Option<(u64, u32, u32)>,
}

#[derive(Default)]
struct Parser {
    state: State,
    out: Manifest,
}

impl Parser {
    /// A bad line: charged to the current process if we are in one.
    fn error(&mut self, line: usize, msg: String) {
        match &mut self.state {
            State::Process(p) => push_error(&mut p.errors, &mut self.out.more_errors, line, msg),
            _ => self.global(line, msg),
        }
    }

    fn global(&mut self, line: usize, msg: String) {
        push_error(&mut self.out.errors, &mut self.out.more_errors, line, msg);
    }

    fn record(&mut self, n: usize, line: &str) {
        let (kind, rest) = match line.split_once(' ') {
            Some((k, r)) => (k, r),
            None => (line, ""),
        };
        let result = match kind {
            "file" | "fcopy" => self.file_record(n, kind, rest),
            "process" => {
                if let State::Process(p) = &self.state {
                    let msg = format!("process {} has no 'end' before this 'process'", p.pid);
                    self.close_process(n, false);
                    self.global(n, msg);
                }
                self.start_process(n, rest);
                Ok(())
            }
            "end" => {
                if !rest.is_empty() {
                    Err("unexpected data after 'end'".to_owned())
                } else if matches!(self.state, State::Process(_)) {
                    self.close_process(n, true);
                    Ok(())
                } else {
                    Err("'end' outside a process".to_owned())
                }
            }
            _ => match &mut self.state {
                State::Process(p) => p.record(n, kind, rest),
                _ if is_process_record(kind) => Err(format!("'{kind}' outside a process")),
                _ => Err(format!("unknown record '{}'", shorten(kind))),
            },
        };
        if let Err(msg) = result {
            self.error(n, msg);
        }
    }

    fn file_record(&mut self, n: usize, kind: &str, rest: &str) -> Result<(), String> {
        if !matches!(self.state, State::Files) {
            return Err(format!("'{kind}' after the first process"));
        }
        if kind == "file" {
            let (f, path) = fields(rest, 3, Tail::Required)?;
            let size = hex(f[0], "size")?;
            let mode = hex(f[1], "mode")?;
            let overwrite = match f[2] {
                "0" => false,
                "1" => true,
                other => return Err(format!("bad <overwrite> '{}'", shorten(other))),
            };
            let path = abs_path(path.unwrap_or(""))?;
            let mode = u32::try_from(mode & 0o7777).map_err(|_| "bad <mode>".to_owned())?;
            self.out.files.push(FileRec {
                line: n,
                size,
                mode,
                overwrite,
                path,
                runs: Vec::new(),
            });
            return Ok(());
        }
        let (f, _) = fields(rest, 3, Tail::None)?;
        let run = FileRun {
            offset: hex(f[0], "offset")?,
            gpa: hex(f[1], "gpa")?,
            len: hex(f[2], "len")?,
        };
        let Some(file) = self.out.files.last_mut() else {
            return Err("'fcopy' without a preceding 'file'".to_owned());
        };
        if run.len == 0 {
            return Err("empty fcopy".to_owned());
        }
        match run.offset.checked_add(run.len) {
            Some(end) if end <= file.size => {}
            _ => return Err("fcopy beyond the file size".to_owned()),
        }
        if run.gpa.checked_add(run.len).is_none() {
            return Err("fcopy <gpa> + <len> overflows".to_owned());
        }
        file.runs.push(run);
        Ok(())
    }

    fn start_process(&mut self, n: usize, rest: &str) {
        let mut b = ProcBuilder {
            line: n,
            pid: 0,
            comm: Vec::new(),
            exe: None,
            cwd: None,
            mm: None,
            auxv: None,
            vmas: Vec::new(),
            fds: Vec::new(),
            sigs: Vec::new(),
            threads: Vec::new(),
            errors: Vec::new(),
        };
        let parsed = fields(rest, 1, Tail::Optional).and_then(|(f, comm)| {
            let pid = dec(f[0], "pid")?;
            if pid == 0 || pid > 4_194_304 {
                return Err(format!("<pid> {pid} out of range"));
            }
            Ok((pid, unescape(comm.unwrap_or(""))?))
        });
        match parsed {
            Ok((pid, comm)) => {
                b.pid = pid;
                b.comm = comm;
            }
            Err(msg) => b.errors.push(LineError { line: n, msg }),
        }
        self.state = State::Process(Box::new(b));
    }

    /// Ends the current process block (`complete`: it ended with `end`).
    fn close_process(&mut self, n: usize, complete: bool) {
        let State::Process(b) = std::mem::replace(&mut self.state, State::Between) else {
            return;
        };
        let mut b = *b;
        if !complete {
            b.errors.push(LineError {
                line: n,
                msg: "process block without 'end'".to_owned(),
            });
        }
        let entry = b.build(n, &mut self.out.more_errors);
        self.out.processes.push(entry);
    }

    fn finish(mut self, last_line: usize) -> Manifest {
        if matches!(self.state, State::Process(_)) {
            self.close_process(last_line, false);
            self.global(last_line, "manifest ends inside a process block".to_owned());
        }
        self.out
    }
}

fn push_error(errors: &mut Vec<LineError>, more: &mut usize, line: usize, msg: String) {
    if errors.len() < MAX_ERRORS {
        errors.push(LineError { line, msg });
    } else {
        *more += 1;
    }
}

fn is_process_record(kind: &str) -> bool {
    matches!(
        kind,
        "exe"
            | "cwd"
            | "mm"
            | "auxv"
            | "vma"
            | "copy"
            | "fd"
            | "sig"
            | "thread"
            | "regs"
            | "fpu"
            | "sigmask"
            | "tid-address"
            | "robust-list"
            | "rseq"
    )
}

impl ProcBuilder {
    fn record(&mut self, n: usize, kind: &str, rest: &str) -> Result<(), String> {
        let in_threads = !self.threads.is_empty();
        let process_level = matches!(
            kind,
            "exe" | "cwd" | "mm" | "auxv" | "vma" | "copy" | "fd" | "sig"
        );
        if process_level && in_threads {
            return Err(format!("'{kind}' after the first 'thread'"));
        }
        match kind {
            "exe" | "cwd" => {
                let (_, path) = fields(rest, 0, Tail::Required)?;
                let path = abs_path(path.unwrap_or(""))?;
                let slot = if kind == "exe" {
                    &mut self.exe
                } else {
                    &mut self.cwd
                };
                if slot.is_some() {
                    return Err(format!("second '{kind}'"));
                }
                *slot = Some(path);
            }
            "mm" => {
                let (f, _) = fields(rest, 11, Tail::None)?;
                let mut v = [0u64; 11];
                for (slot, s) in v.iter_mut().zip(&f) {
                    *slot = hex(s, "mm value")?;
                }
                if self.mm.is_some() {
                    return Err("second 'mm'".to_owned());
                }
                self.mm = Some(Mm {
                    start_code: v[0],
                    end_code: v[1],
                    start_data: v[2],
                    end_data: v[3],
                    start_brk: v[4],
                    brk: v[5],
                    start_stack: v[6],
                    arg_start: v[7],
                    arg_end: v[8],
                    env_start: v[9],
                    env_end: v[10],
                });
            }
            "auxv" => {
                if self.auxv.is_some() {
                    return Err("second 'auxv'".to_owned());
                }
                let words = rest
                    .split(' ')
                    .map(|s| hex(s, "auxv word"))
                    .collect::<Result<Vec<_>, _>>()?;
                if words.len() > MAX_AUXV {
                    return Err(format!("auxv longer than {MAX_AUXV} words"));
                }
                if words.len() < 2 || words.len() % 2 != 0 {
                    return Err("auxv must be (type, value) pairs".to_owned());
                }
                if words[words.len() - 2] != 0 {
                    return Err("auxv does not end with AT_NULL".to_owned());
                }
                self.auxv = Some(words);
            }
            "vma" => self.vma(rest)?,
            "copy" => self.copy(rest)?,
            "fd" => {
                let (f, path) = fields(rest, 4, Tail::Optional)?;
                let fd = dec(f[0], "fd")?;
                let fd = i32::try_from(fd).map_err(|_| format!("<fd> {fd} out of range"))?;
                let flags = hex(f[1], "flags")?;
                let flags = u32::try_from(flags).map_err(|_| "bad <flags>".to_owned())?;
                let pos = hex(f[2], "pos")?;
                let kind =
                    FdKind::parse(f[3]).ok_or_else(|| format!("bad <kind> '{}'", shorten(f[3])))?;
                let path = match (kind, path) {
                    (FdKind::Reg | FdKind::Chr | FdKind::Dir, p) => abs_path(p.unwrap_or(""))?,
                    (_, Some(p)) => unescape(p)?,
                    (_, None) => Vec::new(),
                };
                if self.fds.iter().any(|r| r.fd == fd) {
                    return Err(format!("fd {fd} listed twice"));
                }
                self.fds.push(FdRec {
                    fd,
                    // f_flags are 32 bits; keep them as the int that open(2) takes.
                    flags: i32::from_ne_bytes(flags.to_ne_bytes()),
                    pos,
                    kind,
                    path,
                });
            }
            "sig" => {
                let (f, _) = fields(rest, 5, Tail::None)?;
                let signo = dec(f[0], "signo")?;
                if signo == 0 || signo > 64 {
                    return Err(format!("<signo> {signo} out of range"));
                }
                let signo = i32::try_from(signo).map_err(|_| "bad <signo>".to_owned())?;
                if signo == libc::SIGKILL || signo == libc::SIGSTOP {
                    return Err(format!("signal {signo} cannot have an action"));
                }
                if self.sigs.iter().any(|s| s.signo == signo) {
                    return Err(format!("signal {signo} listed twice"));
                }
                self.sigs.push(SigRec {
                    signo,
                    handler: hex(f[1], "handler")?,
                    flags: hex(f[2], "flags")?,
                    restorer: hex(f[3], "restorer")?,
                    mask: hex(f[4], "mask")?,
                });
            }
            "thread" => {
                let (f, comm) = fields(rest, 1, Tail::Optional)?;
                let tid = dec(f[0], "tid")?;
                if tid == 0 || tid > 4_194_304 {
                    return Err(format!("<tid> {tid} out of range"));
                }
                if self.threads.is_empty() && tid != self.pid {
                    return Err(format!(
                        "the first thread must be the leader ({}), not {tid}",
                        self.pid
                    ));
                }
                if self.threads.iter().any(|t| t.tid == tid) {
                    return Err(format!("thread {tid} listed twice"));
                }
                self.threads.push(ThreadBuilder {
                    line: n,
                    tid,
                    comm: unescape(comm.unwrap_or(""))?,
                    regs: None,
                    fpu: None,
                    sigmask: None,
                    tid_address: None,
                    robust_list: None,
                    rseq: None,
                });
            }
            "regs" | "fpu" | "sigmask" | "tid-address" | "robust-list" | "rseq" => {
                let Some(t) = self.threads.last_mut() else {
                    return Err(format!("'{kind}' before the first 'thread'"));
                };
                t.record(kind, rest)?;
            }
            other => return Err(format!("unknown record '{}'", shorten(other))),
        }
        Ok(())
    }

    fn vma(&mut self, rest: &str) -> Result<(), String> {
        let (f, path) = fields(rest, 6, Tail::Optional)?;
        let start = hex(f[0], "start")?;
        let end = hex(f[1], "end")?;
        let prot = parse_prot(f[2])?;
        let (shared, growsdown) = match f[3] {
            "p" => (false, false),
            "s" => (true, false),
            "pg" => (false, true),
            "sg" => (true, true),
            other => return Err(format!("bad <share> '{}'", shorten(other))),
        };
        let pgoff = hex(f[4], "pgoff")?;
        let kind = VmaKind::parse(f[5]).ok_or_else(|| format!("bad <kind> '{}'", shorten(f[5])))?;
        if start >= end || !start.is_multiple_of(PAGE) || !end.is_multiple_of(PAGE) {
            return Err(format!("bad area {start:x}-{end:x}"));
        }
        if !pgoff.is_multiple_of(PAGE) {
            return Err(format!("<pgoff> {pgoff:x} is not page aligned"));
        }
        let path = match (kind, path) {
            (VmaKind::File, Some(p)) => Some(abs_path(p)?),
            (VmaKind::File, None) => return Err("a 'file' area needs a path".to_owned()),
            (_, Some(_)) => return Err(format!("a '{}' area has no path", f[5])),
            (_, None) => None,
        };
        if let Some(prev) = self.vmas.last() {
            if start < prev.end {
                return Err(format!(
                    "area {start:x}-{end:x} is not above the previous one (ends at {:x})",
                    prev.end
                ));
            }
        }
        self.vmas.push(Vma {
            start,
            end,
            prot,
            shared,
            growsdown,
            pgoff,
            kind,
            path,
            copies: Vec::new(),
        });
        Ok(())
    }

    fn copy(&mut self, rest: &str) -> Result<(), String> {
        let (f, _) = fields(rest, 3, Tail::None)?;
        let c = Copy {
            vaddr: hex(f[0], "vaddr")?,
            gpa: hex(f[1], "gpa")?,
            len: hex(f[2], "len")?,
        };
        let Some(v) = self.vmas.last_mut() else {
            return Err("'copy' without a preceding 'vma'".to_owned());
        };
        if c.len == 0
            || !c.len.is_multiple_of(PAGE)
            || !c.vaddr.is_multiple_of(PAGE)
            || !c.gpa.is_multiple_of(PAGE)
        {
            return Err("copy is not whole, page-aligned pages".to_owned());
        }
        match c.vaddr.checked_add(c.len) {
            Some(end) if c.vaddr >= v.start && end <= v.end => {}
            _ => return Err(format!("copy at {:x} is outside its area", c.vaddr)),
        }
        if c.gpa.checked_add(c.len).is_none() {
            return Err("copy <gpa> + <len> overflows".to_owned());
        }
        if matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall) {
            return Err(format!("copy into a {:?} area", v.kind));
        }
        v.copies.push(c);
        Ok(())
    }

    fn build(self, n: usize, more: &mut usize) -> Result<Process, BadProcess> {
        let mut errors = self.errors;
        let mut err = |line: usize, msg: &str| push_error(&mut errors, more, line, msg.to_owned());
        if self.mm.is_none() {
            err(self.line, "no 'mm' record");
        }
        if self.auxv.is_none() {
            err(self.line, "no 'auxv' record");
        }
        if self.threads.is_empty() {
            err(n, "no 'thread' record");
        }
        let mut threads = Vec::with_capacity(self.threads.len());
        for t in self.threads {
            match (t.regs, t.fpu) {
                (Some(regs), Some(fpu)) => threads.push(Thread {
                    line: t.line,
                    tid: t.tid,
                    comm: t.comm,
                    regs,
                    fpu,
                    sigmask: t.sigmask.unwrap_or(0),
                    tid_address: t.tid_address,
                    robust_list: t.robust_list,
                    rseq: t.rseq,
                }),
                (None, _) => err(t.line, &format!("thread {} has no 'regs'", t.tid)),
                (_, None) => err(t.line, &format!("thread {} has no 'fpu'", t.tid)),
            }
        }
        // Copies of one process must not overlap each other in the target.
        let mut seen = HashSet::new();
        for v in &self.vmas {
            for c in &v.copies {
                if !seen.insert(c.vaddr) {
                    err(self.line, &format!("two copies to {:x}", c.vaddr));
                }
            }
        }
        match (self.mm, self.auxv) {
            (Some(mm), Some(auxv)) if errors.is_empty() => Ok(Process {
                line: self.line,
                pid: self.pid,
                comm: self.comm,
                exe: self.exe,
                cwd: self.cwd,
                mm,
                auxv,
                vmas: self.vmas,
                fds: self.fds,
                sigs: self.sigs,
                threads,
            }),
            _ => Err(BadProcess {
                pid: self.pid,
                errors,
            }),
        }
    }
}

impl ThreadBuilder {
    fn record(&mut self, kind: &str, rest: &str) -> Result<(), String> {
        let dup = || format!("second '{kind}' for thread {}", self.tid);
        match kind {
            "regs" => {
                let (f, _) = fields(rest, 27, Tail::None)?;
                let mut regs = [0u64; 27];
                for (slot, s) in regs.iter_mut().zip(&f) {
                    *slot = hex(s, "register")?;
                }
                if self.regs.replace(regs).is_some() {
                    return Err(dup());
                }
            }
            "fpu" => {
                let (f, _) = fields(rest, 1, Tail::None)?;
                let digits = f[0].as_bytes();
                if digits.len() != 1024 {
                    return Err(format!("fpu needs 1024 hex digits, not {}", digits.len()));
                }
                let mut fpu = Box::new([0u8; 512]);
                for (byte, pair) in fpu.iter_mut().zip(digits.chunks_exact(2)) {
                    let hi = lower_hex_digit(pair[0]);
                    let lo = lower_hex_digit(pair[1]);
                    match (hi, lo) {
                        (Some(h), Some(l)) => *byte = (h << 4) | l,
                        _ => return Err("fpu: not lower-case hex".to_owned()),
                    }
                }
                if self.fpu.replace(fpu).is_some() {
                    return Err(dup());
                }
            }
            "sigmask" => {
                let (f, _) = fields(rest, 1, Tail::None)?;
                if self.sigmask.replace(hex(f[0], "mask")?).is_some() {
                    return Err(dup());
                }
            }
            "tid-address" => {
                let (f, _) = fields(rest, 1, Tail::None)?;
                if self.tid_address.replace(hex(f[0], "addr")?).is_some() {
                    return Err(dup());
                }
            }
            "robust-list" => {
                let (f, _) = fields(rest, 2, Tail::None)?;
                let v = (hex(f[0], "head")?, hex(f[1], "len")?);
                if self.robust_list.replace(v).is_some() {
                    return Err(dup());
                }
            }
            _ => {
                let (f, _) = fields(rest, 3, Tail::None)?;
                let addr = hex(f[0], "addr")?;
                let len = u32::try_from(hex(f[1], "len")?).map_err(|_| "bad <len>".to_owned())?;
                let sig = u32::try_from(hex(f[2], "sig")?).map_err(|_| "bad <sig>".to_owned())?;
                if self.rseq.replace((addr, len, sig)).is_some() {
                    return Err(dup());
                }
            }
        }
        Ok(())
    }
}

/// Whether a record ends in a free-text field (path, comm).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    None,
    Optional,
    Required,
}

/// Splits `rest` into exactly `n` non-empty space-separated fields, plus the tail.
fn fields(rest: &str, n: usize, tail: Tail) -> Result<(Vec<&str>, Option<&str>), String> {
    let mut out = Vec::with_capacity(n);
    let mut left = Some(rest);
    for _ in 0..n {
        let r = left.take().unwrap_or("");
        let (f, r) = match r.split_once(' ') {
            Some((f, r)) => (f, Some(r)),
            None => (r, None),
        };
        if f.is_empty() {
            return Err(format!("expected {n} fields"));
        }
        out.push(f);
        left = r;
    }
    let tail_text = if n == 0 {
        (!rest.is_empty()).then_some(rest)
    } else {
        left
    };
    match (tail, tail_text) {
        (Tail::None, None) => Ok((out, None)),
        (Tail::None, Some(_)) => Err("unexpected trailing data".to_owned()),
        (Tail::Required, None | Some("")) => Err("missing path".to_owned()),
        (_, t) => Ok((out, t.filter(|s| !s.is_empty()))),
    }
}

fn lower_hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Lower-case hex without `0x`, 1 to 16 digits.
fn hex(s: &str, what: &str) -> Result<u64, String> {
    let bad = || format!("bad <{what}> '{}'", shorten(s));
    if s.is_empty() || s.len() > 16 {
        return Err(bad());
    }
    let mut v = 0u64;
    for &b in s.as_bytes() {
        v = (v << 4) | u64::from(lower_hex_digit(b).ok_or_else(bad)?);
    }
    Ok(v)
}

/// A decimal number (pid, tid, fd, signo).
fn dec(s: &str, what: &str) -> Result<u32, String> {
    let bad = || format!("bad <{what}> '{}'", shorten(s));
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

fn parse_prot(s: &str) -> Result<i32, String> {
    let b = s.as_bytes();
    let bad = || format!("bad <prot> '{}'", shorten(s));
    if b.len() != 3 {
        return Err(bad());
    }
    let bit = |c: u8, want: u8, v: i32| match c {
        c if c == want => Ok(v),
        b'-' => Ok(0),
        _ => Err(bad()),
    };
    Ok(bit(b[0], b'r', libc::PROT_READ)?
        | bit(b[1], b'w', libc::PROT_WRITE)?
        | bit(b[2], b'x', libc::PROT_EXEC)?)
}

/// Decodes `%XX` escapes.
fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let digit = |c: u8| (c as char).to_digit(16);
            let v = match (b.get(i + 1), b.get(i + 2)) {
                (Some(&h), Some(&l)) => digit(h).zip(digit(l)).map(|(h, l)| h * 16 + l),
                _ => None,
            };
            let v = v.ok_or_else(|| format!("bad %-escape in '{}'", shorten(s)))?;
            out.push(u8::try_from(v).map_err(|_| "bad %-escape".to_owned())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.len() > MAX_PATH {
        return Err(format!("text longer than {MAX_PATH} bytes"));
    }
    Ok(out)
}

/// A decoded absolute path without NUL bytes.
fn abs_path(s: &str) -> Result<Vec<u8>, String> {
    let p = unescape(s)?;
    if p.first() != Some(&b'/') {
        return Err(format!("path '{}' is not absolute", shorten(s)));
    }
    if p.contains(&0) {
        return Err("NUL byte in path".to_owned());
    }
    Ok(p)
}

fn shorten(s: &str) -> String {
    const LIMIT: usize = 40;
    if s.len() <= LIMIT {
        s.to_owned()
    } else {
        // Lines are ASCII, so every index is a character boundary.
        format!("{}...", s.get(..LIMIT).unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fpu_hex() -> String {
        "0".repeat(1024)
    }

    fn regs_hex() -> String {
        let mut r = vec!["0"; 27];
        r[16] = "401000"; // rip
        r[15] = "ffffffffffffffff"; // orig_rax
        r.join(" ")
    }

    fn good() -> String {
        format!(
            "owvmm-manifest 1\n\
             file 5 1a4 1 /tmp/a%20b\n\
             fcopy 0 3000 5\n\
             process 42 my prog\n\
             exe /bin/prog\n\
             cwd /\n\
             mm 400000 401000 402000 403000 404000 405000 7ffff000 7ffff100 7ffff200 7ffff200 7ffff300\n\
             auxv 6 1000 0 0\n\
             vma 400000 401000 r-x p 0 file /bin/prog\n\
             vma 7ffde000 7ffff000 rw- pg 0 stack\n\
             copy 7fffe000 1000 1000\n\
             vma 7ffff000 7ffff002000 r-x p 0 vdso\n\
             fd 0 8000 0 chr /dev/null\n\
             fd 3 8401 1a reg /tmp/log\n\
             sig 10 401100 14000000 401200 0\n\
             thread 42 my prog\n\
             regs {}\n\
             fpu {}\n\
             sigmask 0\n\
             tid-address 7ffff010\n\
             robust-list 7ffff020 18\n\
             rseq 7ffff040 20 53053053\n\
             thread 43 worker\n\
             regs {}\n\
             fpu {}\n\
             end\n",
            regs_hex(),
            fpu_hex(),
            regs_hex(),
            fpu_hex()
        )
    }

    #[test]
    fn parses_a_good_manifest() {
        let m = parse(good().as_bytes());
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        assert_eq!(m.files.len(), 1);
        let f = &m.files[0];
        assert_eq!(f.path, b"/tmp/a b");
        assert_eq!(f.mode, 0o644);
        assert!(f.overwrite);
        assert_eq!(
            f.runs,
            vec![FileRun {
                offset: 0,
                gpa: 0x3000,
                len: 5
            }]
        );
        assert_eq!(m.processes.len(), 1);
        let p = m.processes[0].as_ref().expect("good process");
        assert_eq!(p.pid, 42);
        assert_eq!(p.comm, b"my prog");
        assert_eq!(p.mm.brk, 0x405000);
        assert_eq!(p.auxv, vec![6, 0x1000, 0, 0]);
        assert_eq!(p.vmas.len(), 3);
        assert_eq!(p.vmas[0].prot, libc::PROT_READ | libc::PROT_EXEC);
        assert!(p.vmas[1].growsdown && !p.vmas[1].shared);
        assert_eq!(p.vmas[1].copies.len(), 1);
        assert_eq!(p.fds[1].flags, 0x8401);
        assert_eq!(p.fds[1].pos, 0x1a);
        assert_eq!(p.sigs[0].signo, 10);
        assert_eq!(p.threads.len(), 2);
        assert_eq!(p.threads[0].regs[16], 0x401000);
        assert_eq!(p.threads[0].rseq, Some((0x7fff_f040, 0x20, 0x5305_3053)));
        assert_eq!(p.threads[1].comm, b"worker");
        assert_eq!(p.threads[1].tid_address, None);
    }

    fn with_line(replace: &str, by: &str) -> Manifest {
        let text = good().replacen(replace, by, 1);
        parse(text.as_bytes())
    }

    fn process_errors(m: &Manifest) -> Vec<LineError> {
        match &m.processes[0] {
            Err(b) => b.errors.clone(),
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn bad_lines_in_a_process_fail_only_that_process() {
        let m = with_line("sigmask 0\n", "sigmask 0x0\nfrob 1\n");
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        let e = process_errors(&m);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].line, 19);
        assert!(e[0].msg.contains("bad <mask>"), "{}", e[0]);
        assert_eq!(e[1].line, 20);
        assert!(e[1].msg.contains("unknown record 'frob'"), "{}", e[1]);
        match &m.processes[0] {
            Err(b) => assert_eq!(b.pid, 42),
            Ok(_) => panic!("must fail"),
        }
    }

    #[test]
    fn structural_errors_are_global() {
        let m = parse(b"owvmm-manifest 2\nprocess 1 x\n");
        assert_eq!(m.errors.len(), 1);
        assert_eq!(m.errors[0].line, 1);
        assert!(m.processes.is_empty());

        let m = parse(b"");
        assert!(!m.errors.is_empty());

        // file after a process, end outside, unknown record outside a process.
        let text = good() + "file 1 1a4 0 /x\nend\nbogus\nregs 1\n";
        let m = parse(text.as_bytes());
        let lines: Vec<usize> = m.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![27, 28, 29, 30], "{:?}", m.errors);
        assert!(m.errors[2].msg.contains("unknown record"));
        assert!(m.errors[3].msg.contains("outside a process"));

        // Missing end.
        let text = good().replace("end\n", "");
        let m = parse(text.as_bytes());
        assert!(!m.errors.is_empty());
        assert!(m.processes[0].is_err());
    }

    #[test]
    fn field_rules() {
        let cases: &[(&str, &str, &str)] = &[
            ("copy 7fffe000 1000 1000", "copy 7fffe000 1000 800", "page"),
            (
                "copy 7fffe000 1000 1000",
                "copy 7ffff000 1000 1000",
                "outside",
            ),
            ("copy 7fffe000 1000 1000", "copy 7fffe000 1000", "fields"),
            (
                "vma 7ffde000 7ffff000 rw- pg 0 stack",
                "vma 7ffde000 7ffff000 rw- pg 0 stack /x",
                "no path",
            ),
            (
                "vma 7ffde000 7ffff000 rw- pg 0 stack",
                "vma 7ffde000 7ffff000 rwz pg 0 stack",
                "prot",
            ),
            (
                "vma 7ffde000 7ffff000 rw- pg 0 stack",
                "vma 7ffde000 7ffff000 rw- q 0 stack",
                "share",
            ),
            (
                "vma 7ffde000 7ffff000 rw- pg 0 stack",
                "vma 300000 3ff000 rw- pg 0 stack",
                "not above",
            ),
            (
                "vma 400000 401000 r-x p 0 file /bin/prog",
                "vma 400000 401000 r-x p 0 file",
                "needs a path",
            ),
            (
                "fd 3 8401 1a reg /tmp/log",
                "fd 3 8401 1a reg tmp/log",
                "absolute",
            ),
            (
                "fd 3 8401 1a reg /tmp/log",
                "fd 0 8401 1a reg /tmp/log",
                "twice",
            ),
            (
                "fd 3 8401 1a reg /tmp/log",
                "fd 3 8401 1A reg /tmp/log",
                "pos",
            ),
            (
                "fd 3 8401 1a reg /tmp/log",
                "fd 3 8401 1a pipe /tmp/log",
                "kind",
            ),
            (
                "sig 10 401100 14000000 401200 0",
                "sig 9 401100 14000000 401200 0",
                "cannot have",
            ),
            ("thread 43 worker", "thread 42 worker", "twice"),
            (
                "tid-address 7ffff010",
                "tid-address 7ffff010\ntid-address 1",
                "second",
            ),
            ("exe /bin/prog", "exe /bin/%zzprog", "escape"),
            ("auxv 6 1000 0 0", "auxv 6 1000 0", "pairs"),
            ("auxv 6 1000 0 0", "auxv 6 1000 7 0", "AT_NULL"),
            ("mm 400000 401000", "mm 400000", "fields"),
            (
                "thread 43 worker\nregs",
                "thread 43 worker\nregz",
                "unknown",
            ),
        ];
        for (from, to, want) in cases {
            let m = with_line(from, to);
            assert!(m.errors.is_empty(), "{to}: {:?}", m.errors);
            let e = process_errors(&m);
            assert!(
                e.iter().any(|e| e.msg.contains(want)),
                "{to}: want '{want}', got {e:?}"
            );
        }
        // The leader must come first and every thread needs regs and fpu.
        let m = with_line("thread 42 my prog", "thread 7 my prog");
        assert!(process_errors(&m)[0].msg.contains("leader"));
        let text = good().replacen(&format!("fpu {}\nend", fpu_hex()), "end", 1);
        let m = parse(text.as_bytes());
        assert!(process_errors(&m)
            .iter()
            .any(|e| e.msg.contains("no 'fpu'")));
        // Global file rules.
        let m = parse(
            good()
                .replacen("fcopy 0 3000 5", "fcopy 0 3000 6", 1)
                .as_bytes(),
        );
        assert!(m.errors[0].msg.contains("beyond"), "{:?}", m.errors);
        let m = parse(
            good()
                .replacen("file 5 1a4 1", "file 5 1a4 2", 1)
                .as_bytes(),
        );
        assert!(m.errors[0].msg.contains("overwrite"), "{:?}", m.errors);
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 0x1234_5678_u32;
        let base = good().into_bytes();
        for _ in 0..2000 {
            let mut text = base.clone();
            for _ in 0..4 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let i = usize::try_from(seed >> 8).unwrap_or(0) % text.len();
                text[i] = u8::try_from(seed >> 24).unwrap_or(b'?');
            }
            let _ = parse(&text);
        }
        let _ = parse(&vec![b'a'; MAX_LINE + 10]);
        let _ = parse(b"owvmm-manifest 1\n\n\n");
        let m = parse(format!("{HEADER}\n{}\n", "x".repeat(MAX_LINE + 1)).as_bytes());
        assert!(m.errors[0].msg.contains("too long"));
    }

    #[test]
    fn error_count_is_bounded() {
        let text = format!("{HEADER}\n{}", "bogus\n".repeat(MAX_ERRORS + 50));
        let m = parse(text.as_bytes());
        assert_eq!(m.errors.len(), MAX_ERRORS);
        assert_eq!(m.more_errors, 50);
    }
}
