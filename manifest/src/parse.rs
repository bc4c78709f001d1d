//! The strict parser.
//!
//! Every bad line is reported with its line number. [`parse_each`] keeps going after a bad
//! line: a bad line inside a `process` ... `end` block fails only that process, a bad line
//! anywhere else (the header, the `file` records, the structure) fails the whole manifest.
//! [`parse`] accepts a manifest only when it has no bad line at all. Neither panics, and
//! both bound what they accept (line and path length, auxv length, counts, error count)
//! rather than allocate it.

use std::collections::HashSet;

use crate::{
    Copy, Creds, EpollRec, Exec, FdKind, FdRec, FileRec, FileRun, FileUpdate, InetRec, InotifyRec,
    Itimer, Limits, Manifest, Mm, Pending, PipeRec, PipeRun, Process, Ptimer, PtyRec, ShmRec,
    ShmRun, SigRec, TcpRec, Termios, Thread, Tree, TtyRec, UnixListenRec, UnixMsg, UnixRec, Vma,
    VmaKind, Winsize, Zombie, HEADER, ITIMER_KINDS, MAX_ARG_STRLEN, MAX_AUXV, MAX_ERRORS,
    MAX_EXEC_COUNT, MAX_EXEC_STRINGS, MAX_FILE_SIZE, MAX_GROUPS, MAX_INOTIFY_WATCHES, MAX_LINE,
    MAX_PASSED_FDS, MAX_PATH, MAX_PENDING, MAX_PID, MAX_PIPES, MAX_PIPE_SIZE, MAX_PTIMERS,
    MAX_PTIMER_ID, MAX_SHM_SIZE, MAX_THREADS, MAX_VMAS, PAGE, PROT_EXEC, PROT_READ, PROT_WRITE,
    PTIMER_CLOCKS, RLIMITS, SIGEV_NONE, SIGEV_THREAD_ID,
};

/// `SIGKILL` and `SIGSTOP` (x86-64 Linux): they cannot have an action.
const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;

/// One bad line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub kind: ErrorKind,
}

/// What is wrong with a line. Texts taken from the input are shortened to 40 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("empty manifest")]
    Empty,
    #[error("not a version-1 manifest (expected '{HEADER}')")]
    NotVersion1,
    #[error("line too long ({len} bytes, limit {MAX_LINE})")]
    LineTooLong { len: usize },
    #[error("empty line")]
    EmptyLine,
    #[error("byte 0x{byte:02x} is not printable ASCII")]
    NotPrintable { byte: u8 },
    #[error("unknown record '{record}'")]
    UnknownRecord { record: String },
    #[error("'{record}' outside a process")]
    OutsideProcess { record: &'static str },
    #[error("'{record}' after the first process")]
    AfterFirstProcess { record: &'static str },
    #[error("'{record}' after the first 'thread'")]
    AfterFirstThread { record: &'static str },
    #[error("'{record}' before the first 'thread'")]
    BeforeFirstThread { record: &'static str },
    #[error("process {pid} has no 'end' before this 'process'")]
    NoEndBeforeProcess { pid: u32 },
    #[error("process block without 'end'")]
    BlockWithoutEnd,
    #[error("manifest ends inside a process block")]
    EndsInsideProcess,
    #[error("'end' outside a process")]
    EndOutsideProcess,
    #[error("unexpected data after 'end'")]
    DataAfterEnd,
    #[error("expected {expected} fields")]
    FieldCount { expected: usize },
    #[error("unexpected trailing data")]
    TrailingData,
    #[error("missing path")]
    MissingPath,
    #[error("bad <{what}> '{text}'")]
    Bad { what: &'static str, text: String },
    #[error("<{what}> {text} out of range")]
    OutOfRange { what: &'static str, text: String },
    #[error("more than {limit} {what}")]
    TooMany { what: &'static str, limit: usize },
    #[error("bad %-escape in '{text}'")]
    BadEscape { text: String },
    #[error("text longer than {MAX_PATH} bytes")]
    TextTooLong,
    #[error("path '{text}' is not absolute")]
    NotAbsolute { text: String },
    #[error("NUL byte in path")]
    NulInPath,
    #[error("second '{record}'")]
    Second { record: &'static str },
    #[error("second '{record}' for thread {tid}")]
    SecondForThread { record: &'static str, tid: u32 },
    #[error("'pdata' without a preceding 'pipe'")]
    PdataWithoutPipe,
    #[error("empty pdata")]
    EmptyPdata,
    #[error("pipe data beyond its size")]
    PipeDataBeyondSize,
    #[error("ptimer {id} is not above the previous one")]
    PtimerOrder { id: u32 },
    #[error("pipe {id} listed twice")]
    PipeTwice { id: u32 },
    #[error("unix {id} listed twice")]
    UnixTwice { id: u32 },
    #[error("'{record}' without a preceding 'unix'")]
    WithoutUnix { record: &'static str },
    #[error("inet {id} listed twice")]
    InetTwice { id: u32 },
    #[error("epoll {epfd} is not an epoll fd listed before")]
    EpollNotFd { epfd: i32 },
    #[error("epoll {epfd}: fd {fd} listed twice")]
    EpollTwice { epfd: i32, fd: i32 },
    #[error("inotify {fd} is not an inotify fd listed before")]
    InotifyNotFd { fd: i32 },
    #[error("inotify {fd}: wd {wd} is not above the previous one")]
    InotifyOrder { fd: i32, wd: i32 },
    #[error("'fcopy' without a preceding 'file'")]
    FcopyWithoutFile,
    #[error("empty fcopy")]
    EmptyFcopy,
    #[error("fcopy beyond the file size")]
    FcopyBeyondSize,
    #[error("{record} <gpa> + <len> overflows")]
    Overflows { record: &'static str },
    #[error("auxv longer than {MAX_AUXV} words")]
    AuxvTooLong,
    #[error("auxv must be (type, value) pairs")]
    AuxvPairs,
    #[error("auxv does not end with AT_NULL")]
    AuxvNoAtNull,
    #[error("bad area {start:x}-{end:x}")]
    BadArea { start: u64, end: u64 },
    #[error("<pgoff> {pgoff:x} is not page aligned")]
    PgoffUnaligned { pgoff: u64 },
    #[error("a 'file' area needs a path")]
    FileAreaNeedsPath,
    #[error("a '{kind}' area has no path")]
    AreaHasNoPath { kind: &'static str },
    #[error("area {start:x}-{end:x} is not above the previous one (ends at {prev_end:x})")]
    NotAbove { start: u64, end: u64, prev_end: u64 },
    #[error("'copy' without a preceding 'vma'")]
    CopyWithoutVma,
    #[error("copy is not whole, page-aligned pages")]
    CopyNotPages,
    #[error("copy at {vaddr:x} is outside its area")]
    CopyOutside { vaddr: u64 },
    #[error("copy into a {kind} area")]
    CopyIntoSpecial { kind: &'static str },
    #[error("two copies to {vaddr:x}")]
    TwoCopies { vaddr: u64 },
    #[error("fd {fd} listed twice")]
    FdTwice { fd: i32 },
    #[error("signal {signo} cannot have an action")]
    SignalWithoutAction { signo: i32 },
    #[error("signal {signo} listed twice")]
    SignalTwice { signo: i32 },
    #[error("the first thread must be the leader ({leader}), not {tid}")]
    NotLeader { leader: u32, tid: u32 },
    #[error("thread {tid} listed twice")]
    ThreadTwice { tid: u32 },
    #[error("fpu needs 1024 hex digits, not {len}")]
    FpuLength { len: usize },
    #[error("fpu: not lower-case hex")]
    FpuHex,
    #[error("no 'mm' record")]
    NoMm,
    #[error("no 'auxv' record")]
    NoAuxv,
    #[error("no 'thread' record")]
    NoThread,
    #[error("thread {tid} has no 'regs'")]
    NoRegs { tid: u32 },
    #[error("thread {tid} has no 'fpu'")]
    NoFpu { tid: u32 },
    #[error("no 'path' record")]
    NoPath,
    #[error("'more' without a preceding 'arg', 'env' or 'more'")]
    MoreWithoutString,
    #[error("empty 'more'")]
    EmptyMore,
    #[error("'arg' after the first 'env'")]
    ArgAfterEnv,
    #[error("string longer than {MAX_ARG_STRLEN} bytes")]
    StringTooLong,
    #[error("strings longer than {MAX_EXEC_STRINGS} bytes in all")]
    StringsTooLong,
}

/// A process block with at least one bad line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadProcess {
    /// Its PID, or 0 when the `process` line itself was bad.
    pub pid: u32,
    /// Its bad lines (at most [`MAX_ERRORS`]), in order.
    pub errors: Vec<ParseError>,
}

/// What [`parse_each`] found: the good parts, and every bad line.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The `file` records, in order.
    pub files: Vec<FileRec>,
    /// The `pipe` records, in order.
    pub pipes: Vec<PipeRec>,
    /// The `shm` records, in order.
    pub shms: Vec<ShmRec>,
    /// The `inet` records, in order.
    pub inets: Vec<InetRec>,
    /// The `unix` records, in order.
    pub unixes: Vec<UnixRec>,
    /// The `ulisten` records, in order.
    pub ulistens: Vec<UnixListenRec>,
    /// The `tcp` records, in order.
    pub tcps: Vec<TcpRec>,
    /// The `pty` records, in order.
    pub ptys: Vec<PtyRec>,
    /// The `tty` records, in order.
    pub ttys: Vec<TtyRec>,
    /// The `zombie` records, in order.
    pub zombies: Vec<Zombie>,
    /// The `process` blocks, in order; a block with bad lines is an `Err`.
    pub processes: Vec<Result<Process, BadProcess>>,
    /// The `exec` blocks, in order; a block with bad lines is an `Err`.
    pub execs: Vec<Result<Exec, BadProcess>>,
    /// Bad lines outside process blocks: when there are any, nothing may be restored.
    pub errors: Vec<ParseError>,
    /// Errors beyond [`MAX_ERRORS`] that were not kept.
    pub more_errors: usize,
}

impl Parsed {
    /// The first bad line: the earliest of the global errors and of each bad process's
    /// first error (a process's later errors, such as a missing `mm` after a bad `mm`
    /// line, are consequences).
    pub fn first_error(&self) -> Option<&ParseError> {
        let in_processes = self
            .processes
            .iter()
            .filter_map(|p| p.as_ref().err())
            .chain(self.execs.iter().filter_map(|e| e.as_ref().err()));
        self.errors
            .first()
            .into_iter()
            .chain(in_processes.filter_map(|b| b.errors.first()))
            .min_by_key(|e| e.line)
    }

    /// The whole manifest, when nothing in it is bad.
    pub fn into_manifest(self) -> Result<Manifest, ParseError> {
        if let Some(e) = self.first_error() {
            return Err(e.clone());
        }
        Ok(Manifest {
            files: self.files,
            pipes: self.pipes,
            shms: self.shms,
            inets: self.inets,
            unixes: self.unixes,
            ulistens: self.ulistens,
            zombies: self.zombies,
            tcps: self.tcps,
            ptys: self.ptys,
            ttys: self.ttys,
            processes: self.processes.into_iter().filter_map(Result::ok).collect(),
            execs: self.execs.into_iter().filter_map(Result::ok).collect(),
        })
    }
}

/// Parses a whole manifest strictly: the first bad line is the error.
pub fn parse(text: &[u8]) -> Result<Manifest, ParseError> {
    parse_each(text).into_manifest()
}

impl std::str::FromStr for Manifest {
    type Err = ParseError;

    /// [`parse`].
    fn from_str(s: &str) -> Result<Self, ParseError> {
        parse(s.as_bytes())
    }
}

/// Parses a whole manifest, going on after bad lines. Never fails as such: problems are in
/// the result.
pub fn parse_each(text: &[u8]) -> Parsed {
    let mut p = Parser::default();
    let mut lines = text.split(|&b| b == b'\n').enumerate().peekable();
    let mut last = 1;
    while let Some((i, raw)) = lines.next() {
        let n = i + 1;
        last = n;
        // The piece after the final newline is not a line.
        if raw.is_empty() && lines.peek().is_none() {
            break;
        }
        let line = match check_line(raw) {
            Ok(l) => l,
            Err(kind) if n > 1 => {
                p.error(n, kind);
                continue;
            }
            Err(_) => "",
        };
        if n == 1 {
            if line != HEADER {
                p.global(n, ErrorKind::NotVersion1);
                return p.finish(n);
            }
            continue;
        }
        p.record(n, line);
    }
    if text.is_empty() {
        p.global(1, ErrorKind::Empty);
    }
    p.finish(last)
}

/// A line must be printable ASCII (paths are %-escaped) and not too long.
fn check_line(raw: &[u8]) -> Result<&str, ErrorKind> {
    if raw.len() > MAX_LINE {
        return Err(ErrorKind::LineTooLong { len: raw.len() });
    }
    if raw.is_empty() {
        return Err(ErrorKind::EmptyLine);
    }
    if let Some(&byte) = raw.iter().find(|&&b| !(0x20..0x7f).contains(&b)) {
        return Err(ErrorKind::NotPrintable { byte });
    }
    // All bytes are printable ASCII, so this cannot fail.
    std::str::from_utf8(raw).map_err(|_| ErrorKind::NotPrintable { byte: 0 })
}

/// Records that belong inside a process block (besides `process` and `end`).
const PROCESS_RECORDS: [&str; 23] = [
    "pending",
    "cred",
    "itimer",
    "ptimer",
    "ptimer-next",
    "exe",
    "cwd",
    "tree",
    "limits",
    "mm",
    "auxv",
    "vma",
    "copy",
    "fd",
    "epoll",
    "inotify",
    "sig",
    "thread",
    "regs",
    "fpu",
    "sigmask",
    "tid-address",
    "robust-list",
];
/// Records of an `exec` block (besides `exec` and `end`).
const EXEC_RECORDS: [&str; 12] = [
    "path", "cwd", "tree", "limits", "cred", "pending", "arg", "env", "more", "fd", "sig",
    "sigmask",
];
/// Records of a thread.
const THREAD_RECORDS: [&str; 6] = [
    "regs",
    "fpu",
    "sigmask",
    "tid-address",
    "robust-list",
    "rseq",
];

fn known(list: &[&'static str], kind: &str) -> Option<&'static str> {
    list.iter().copied().find(|&k| k == kind)
}

/// Where we are.
#[derive(Default)]
enum State {
    /// After the header, `file` records allowed.
    #[default]
    Files,
    /// Inside a process block.
    Process(Box<ProcBuilder>),
    /// Inside an exec block.
    Exec(Box<ExecBuilder>),
    /// Between process blocks (no more `file`).
    Between,
}

struct ProcBuilder {
    line: usize,
    pid: u32,
    comm: Vec<u8>,
    exe: Option<Vec<u8>>,
    cwd: Option<Vec<u8>>,
    tree: Option<Tree>,
    limits: Option<Limits>,
    creds: Option<Creds>,
    pending: Vec<Pending>,
    itimers: Vec<Itimer>,
    ptimers: Vec<Ptimer>,
    ptimer_next: Option<u32>,
    mm: Option<Mm>,
    auxv: Option<Vec<u64>>,
    vmas: Vec<Vma>,
    fds: Vec<FdRec>,
    epoll: Vec<EpollRec>,
    inotify: Vec<InotifyRec>,
    sigs: Vec<SigRec>,
    threads: Vec<ThreadBuilder>,
    errors: Vec<ParseError>,
}

struct ExecBuilder {
    line: usize,
    pid: u32,
    comm: Vec<u8>,
    path: Option<Vec<u8>>,
    cwd: Option<Vec<u8>>,
    tree: Option<Tree>,
    limits: Option<Limits>,
    creds: Option<Creds>,
    pending: Vec<Pending>,
    argv: Vec<Vec<u8>>,
    envp: Vec<Vec<u8>>,
    /// Which list `more` continues: `Some(false)` argv, `Some(true)` envp.
    open: Option<bool>,
    /// Bytes of all strings so far.
    total: usize,
    fds: Vec<FdRec>,
    sigs: Vec<SigRec>,
    sigmask: Option<u64>,
    errors: Vec<ParseError>,
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
    out: Parsed,
}

impl Parser {
    /// A bad line: charged to the current process if we are in one.
    fn error(&mut self, line: usize, kind: ErrorKind) {
        match &mut self.state {
            State::Process(p) => push_error(&mut p.errors, &mut self.out.more_errors, line, kind),
            State::Exec(e) => push_error(&mut e.errors, &mut self.out.more_errors, line, kind),
            _ => self.global(line, kind),
        }
    }

    fn global(&mut self, line: usize, kind: ErrorKind) {
        push_error(&mut self.out.errors, &mut self.out.more_errors, line, kind);
    }

    fn record(&mut self, n: usize, line: &str) {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        let result = match kind {
            "file" => self.file(rest),
            "fcopy" => self.fcopy(rest),
            "pipe" => self.pipe(rest),
            "inet" => self.inet(rest),
            "unix" => self.unix(rest),
            "ulisten" => self.ulisten(rest),
            "zombie" => self.zombie(rest),
            "tcp" => self.tcp(rest),
            "tsend" | "trecv" => self.tcp_data(kind == "tsend", rest),
            "umsg" => self.umsg(rest),
            "udata" => self.udata(rest),
            "ufd" => self.ufd(rest),
            "pdata" => self.pdata(rest),
            "shm" => self.shm(rest),
            "sdata" => self.sdata(rest),
            "pty" => self.pty(rest),
            "tty" => self.tty(rest),
            "ptyin" => self.pty_data("ptyin", rest),
            "ptyout" => self.pty_data("ptyout", rest),
            "ptytyped" => self.pty_data("ptytyped", rest),
            "process" | "exec" => {
                let open = match &self.state {
                    State::Process(p) => Some(p.pid),
                    State::Exec(e) => Some(e.pid),
                    _ => None,
                };
                if let Some(pid) = open {
                    self.close_process(n, false);
                    self.global(n, ErrorKind::NoEndBeforeProcess { pid });
                }
                if kind == "process" {
                    self.start_process(n, rest);
                } else {
                    self.start_exec(n, rest);
                }
                Ok(())
            }
            "end" => {
                if !rest.is_empty() {
                    Err(ErrorKind::DataAfterEnd)
                } else if matches!(self.state, State::Process(_) | State::Exec(_)) {
                    self.close_process(n, true);
                    Ok(())
                } else {
                    Err(ErrorKind::EndOutsideProcess)
                }
            }
            _ => match &mut self.state {
                State::Process(p) => p.record(n, kind, rest),
                State::Exec(e) => e.record(kind, rest),
                _ => Err(
                    match known(&PROCESS_RECORDS, kind)
                        .or(known(&THREAD_RECORDS, kind))
                        .or(known(&EXEC_RECORDS, kind))
                    {
                        Some(record) => ErrorKind::OutsideProcess { record },
                        None => ErrorKind::UnknownRecord {
                            record: shorten(kind),
                        },
                    },
                ),
            },
        };
        if let Err(kind) = result {
            self.error(n, kind);
        }
    }

    fn file(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "file" });
        }
        let (f, path) = fields(rest, 3, Tail::Required)?;
        let size = hex(f[0], "size")?;
        if size > MAX_FILE_SIZE {
            return Err(out_of_range("size", f[0]));
        }
        let mode = hex(f[1], "mode")?;
        let mode = u32::try_from(mode)
            .ok()
            .filter(|m| m & !0o7777 == 0)
            .ok_or_else(|| out_of_range("mode", f[1]))?;
        let update = match f[2] {
            "0" => FileUpdate::IfDiffers,
            "1" => FileUpdate::Overwrite,
            "2" => FileUpdate::Patch,
            other => return Err(bad("update", other)),
        };
        let path = abs_path(path.unwrap_or(""))?;
        self.out.files.push(FileRec {
            size,
            mode,
            update,
            path,
            runs: Vec::new(),
        });
        Ok(())
    }

    fn fcopy(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "fcopy" });
        }
        let (f, _) = fields(rest, 3, Tail::None)?;
        let run = FileRun {
            offset: hex(f[0], "offset")?,
            gpa: hex(f[1], "gpa")?,
            len: hex(f[2], "len")?,
        };
        let Some(file) = self.out.files.last_mut() else {
            return Err(ErrorKind::FcopyWithoutFile);
        };
        if run.len == 0 {
            return Err(ErrorKind::EmptyFcopy);
        }
        match run.offset.checked_add(run.len) {
            Some(end) if end <= file.size => {}
            _ => return Err(ErrorKind::FcopyBeyondSize),
        }
        if run.gpa.checked_add(run.len).is_none() {
            return Err(ErrorKind::Overflows { record: "fcopy" });
        }
        file.runs.push(run);
        Ok(())
    }

    fn tcp(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "tcp" });
        }
        let (f, _) = fields(rest, 20, Tail::None)?;
        let id = dec(f[0], "id")?;
        let family = match f[1] {
            "2" => 2,
            "10" => 10,
            other => return Err(bad("family", other)),
        };
        let port = |s: &str| u16::try_from(dec(s, "port")?).map_err(|_| out_of_range("port", s));
        let mut words = [0u32; 14];
        for (w, s) in words.iter_mut().zip(&f[6..]) {
            *w = u32::try_from(hex(s, "tcp value")?).map_err(|_| out_of_range("tcp value", s))?;
        }
        if self.out.tcps.len() >= MAX_PIPES {
            return Err(ErrorKind::TooMany {
                what: "tcp connections",
                limit: MAX_PIPES,
            });
        }
        if self.out.inets.iter().any(|s| s.id == id) || self.out.tcps.iter().any(|t| t.id == id) {
            return Err(ErrorKind::InetTwice { id });
        }
        self.out.tcps.push(TcpRec {
            id,
            family,
            local: addr16(f[2])?,
            local_port: port(f[3])?,
            remote: addr16(f[4])?,
            remote_port: port(f[5])?,
            words,
            send: Vec::new(),
            recv: Vec::new(),
        });
        Ok(())
    }

    /// `<record> <gpa> <len>` among the records before the first process: the run.
    fn run_record(&self, record: &'static str, rest: &str) -> Result<PipeRun, ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record });
        }
        let (f, _) = fields(rest, 2, Tail::None)?;
        Ok(PipeRun {
            gpa: hex(f[0], "gpa")?,
            len: hex(f[1], "len")?,
        })
    }

    fn tcp_data(&mut self, send: bool, rest: &str) -> Result<(), ErrorKind> {
        let record = if send { "tsend" } else { "trecv" };
        let run = self.run_record(record, rest)?;
        let Some(t) = self.out.tcps.last_mut() else {
            return Err(ErrorKind::OutsideProcess { record });
        };
        if run.len == 0 || run.gpa.checked_add(run.len).is_none() {
            return Err(ErrorKind::Overflows { record });
        }
        let queue = if send { &mut t.send } else { &mut t.recv };
        let total: u64 = queue.iter().map(|r| r.len).sum();
        if total.saturating_add(run.len) > MAX_PIPE_SIZE {
            return Err(ErrorKind::PipeDataBeyondSize);
        }
        queue.push(run);
        Ok(())
    }

    fn zombie(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "zombie" });
        }
        let (f, _) = fields(rest, 5, Tail::None)?;
        let pid = pid(f[0], "pid")?;
        let tree = tree_fields(&f[1..4])?;
        let status =
            u32::try_from(hex(f[4], "status")?).map_err(|_| out_of_range("status", f[4]))?;
        if self.out.zombies.len() >= MAX_PIPES {
            return Err(ErrorKind::TooMany {
                what: "zombies",
                limit: MAX_PIPES,
            });
        }
        if self.out.zombies.iter().any(|z| z.pid == pid) {
            return Err(ErrorKind::Second { record: "zombie" });
        }
        self.out.zombies.push(Zombie { pid, tree, status });
        Ok(())
    }

    fn pipe(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "pipe" });
        }
        let (f, tail) = fields(rest, 2, Tail::Optional)?;
        let id = dec(f[0], "id")?;
        let size = hex(f[1], "size")?;
        if size == 0 || size > MAX_PIPE_SIZE {
            return Err(out_of_range("size", f[1]));
        }
        let named = match tail {
            None => None,
            Some(t) => {
                let (m, path) = fields(t, 1, Tail::Required)?;
                let mode = u32::try_from(hex(m[0], "mode")?)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| out_of_range("mode", m[0]))?;
                let path = unescape_max(path.unwrap_or(""), MAX_PATH)?;
                if !path.starts_with(b"/") {
                    return Err(ErrorKind::MissingPath);
                }
                Some((mode, path))
            }
        };
        if self.out.pipes.len() >= MAX_PIPES {
            return Err(ErrorKind::TooMany {
                what: "pipes",
                limit: MAX_PIPES,
            });
        }
        if self.out.pipes.iter().any(|p| p.id == id) {
            return Err(ErrorKind::PipeTwice { id });
        }
        self.out.pipes.push(PipeRec {
            id,
            size,
            named,
            data: Vec::new(),
        });
        Ok(())
    }

    fn inet(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "inet" });
        }
        let (f, _) = fields(rest, 7, Tail::None)?;
        let id = dec(f[0], "id")?;
        let family = match f[1] {
            "2" => 2,
            "10" => 10,
            other => return Err(bad("family", other)),
        };
        let sock_type = match f[2] {
            "1" => 1,
            "2" => 2,
            other => return Err(bad("type", other)),
        };
        let port = u16::try_from(dec(f[3], "port")?).map_err(|_| out_of_range("port", f[3]))?;
        let backlog = dec(f[4], "backlog")?;
        let v6only = match f[5] {
            "0" => false,
            "1" => true,
            other => return Err(bad("v6only", other)),
        };
        let addr = addr16(f[6])?;
        if self.out.inets.len() >= MAX_PIPES {
            return Err(ErrorKind::TooMany {
                what: "inet sockets",
                limit: MAX_PIPES,
            });
        }
        if self.out.inets.iter().any(|s| s.id == id) || self.out.tcps.iter().any(|t| t.id == id) {
            return Err(ErrorKind::InetTwice { id });
        }
        self.out.inets.push(InetRec {
            id,
            family,
            sock_type,
            port,
            backlog,
            v6only,
            addr,
        });
        Ok(())
    }

    fn unix(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "unix" });
        }
        let (f, _) = fields(rest, 3, Tail::None)?;
        let id = dec(f[0], "id")?;
        let peer = dec(f[1], "peer")?;
        let sock_type = match f[2] {
            "1" => 1,
            "2" => 2,
            "5" => 5,
            other => return Err(bad("type", other)),
        };
        if self.out.unixes.len() >= MAX_PIPES {
            return Err(ErrorKind::TooMany {
                what: "unix sockets",
                limit: MAX_PIPES,
            });
        }
        if self.out.unixes.iter().any(|u| u.id == id) {
            return Err(ErrorKind::UnixTwice { id });
        }
        self.out.unixes.push(UnixRec {
            id,
            peer,
            sock_type,
            msgs: Vec::new(),
        });
        Ok(())
    }

    fn ulisten(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "ulisten" });
        }
        let (f, path) = fields(rest, 3, Tail::Required)?;
        let id = dec(f[0], "id")?;
        let sock_type = match f[1] {
            "1" => 1,
            "5" => 5,
            other => return Err(bad("type", other)),
        };
        let backlog = dec(f[2], "backlog")?;
        let path = unescape_max(path.unwrap_or(""), 108)?;
        if path.is_empty() {
            return Err(ErrorKind::MissingPath);
        }
        if self.out.ulistens.len() >= MAX_PIPES {
            return Err(ErrorKind::TooMany {
                what: "unix listeners",
                limit: MAX_PIPES,
            });
        }
        if self.out.ulistens.iter().any(|u| u.id == id)
            || self.out.unixes.iter().any(|u| u.id == id)
        {
            return Err(ErrorKind::UnixTwice { id });
        }
        self.out.ulistens.push(UnixListenRec {
            id,
            sock_type,
            backlog,
            path,
        });
        Ok(())
    }

    fn umsg(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "umsg" });
        }
        if !rest.is_empty() {
            return Err(ErrorKind::TrailingData);
        }
        let u = self
            .out
            .unixes
            .last_mut()
            .ok_or(ErrorKind::WithoutUnix { record: "umsg" })?;
        if u.msgs.len() >= MAX_VMAS {
            return Err(ErrorKind::TooMany {
                what: "queued messages",
                limit: MAX_VMAS,
            });
        }
        u.msgs.push(UnixMsg::default());
        Ok(())
    }

    fn ufd(&mut self, rest: &str) -> Result<(), ErrorKind> {
        let m = self
            .out
            .unixes
            .last_mut()
            .and_then(|u| u.msgs.last_mut())
            .ok_or(ErrorKind::WithoutUnix { record: "ufd" })?;
        if m.fds.len() >= MAX_PASSED_FDS {
            return Err(ErrorKind::TooMany {
                what: "descriptors in flight in a message",
                limit: MAX_PASSED_FDS,
            });
        }
        let d = fd_record(rest, &m.fds)?;
        m.fds.push(d);
        Ok(())
    }

    fn udata(&mut self, rest: &str) -> Result<(), ErrorKind> {
        let run = self.run_record("udata", rest)?;
        if run.len == 0 {
            return Err(ErrorKind::EmptyPdata);
        }
        if run.gpa.checked_add(run.len).is_none() {
            return Err(ErrorKind::Overflows { record: "udata" });
        }
        let u = self
            .out
            .unixes
            .last_mut()
            .ok_or(ErrorKind::WithoutUnix { record: "udata" })?;
        let total: u64 = u.runs().map(|r| r.len).sum();
        if total.saturating_add(run.len) > MAX_PIPE_SIZE {
            return Err(ErrorKind::PipeDataBeyondSize);
        }
        let m = u
            .msgs
            .last_mut()
            .ok_or(ErrorKind::WithoutUnix { record: "udata" })?;
        m.data.push(run);
        Ok(())
    }

    fn pty(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "pty" });
        }
        let (f, _) = fields(rest, 16, Tail::None)?;
        let id = dec(f[0], "id")?;
        if self.out.ptys.len() >= MAX_PIPES {
            return Err(ErrorKind::TooMany {
                what: "ptys",
                limit: MAX_PIPES,
            });
        }
        if self.out.ptys.iter().any(|p| p.id == id) {
            return Err(ErrorKind::Second { record: "pty" });
        }
        self.out.ptys.push(PtyRec {
            id,
            index: dec(f[1], "index")?,
            sid: dec(f[2], "sid")?,
            pgrp: dec(f[3], "pgrp")?,
            termios: termios_fields(&f[4..12])?,
            winsize: winsize_fields(&f[12..16])?,
            ..PtyRec::default()
        });
        Ok(())
    }

    fn tty(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "tty" });
        }
        let (f, path) = fields(rest, 14, Tail::Required)?;
        let path = unescape_max(path.unwrap_or(""), MAX_PATH)?;
        if !path.starts_with(b"/") {
            return Err(ErrorKind::MissingPath);
        }
        if self.out.ttys.len() >= MAX_PIPES {
            return Err(ErrorKind::TooMany {
                what: "ttys",
                limit: MAX_PIPES,
            });
        }
        self.out.ttys.push(TtyRec {
            sid: dec(f[0], "sid")?,
            pgrp: dec(f[1], "pgrp")?,
            termios: termios_fields(&f[2..10])?,
            winsize: winsize_fields(&f[10..14])?,
            path,
        });
        Ok(())
    }

    fn pty_data(&mut self, record: &'static str, rest: &str) -> Result<(), ErrorKind> {
        let run = self.run_record(record, rest)?;
        let Some(p) = self.out.ptys.last_mut() else {
            return Err(ErrorKind::OutsideProcess { record });
        };
        if run.len == 0 || run.gpa.checked_add(run.len).is_none() {
            return Err(ErrorKind::Overflows { record });
        }
        let total: u64 = p.runs().map(|r| r.len).sum();
        if total.saturating_add(run.len) > MAX_PIPE_SIZE {
            return Err(ErrorKind::PipeDataBeyondSize);
        }
        match record {
            "ptyin" => p.input.push(run),
            "ptyout" => p.output.push(run),
            _ => p.typed.push(run),
        }
        Ok(())
    }

    fn shm(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "shm" });
        }
        let (f, _) = fields(rest, 2, Tail::None)?;
        let id = dec(f[0], "id")?;
        let size = hex(f[1], "size")?;
        if size > MAX_SHM_SIZE {
            return Err(out_of_range("size", f[1]));
        }
        if self.out.shms.len() >= MAX_PIPES {
            return Err(ErrorKind::TooMany {
                what: "shm records",
                limit: MAX_PIPES,
            });
        }
        if self.out.shms.iter().any(|s| s.id == id) {
            return Err(ErrorKind::Second { record: "shm" });
        }
        self.out.shms.push(ShmRec {
            id,
            size,
            data: Vec::new(),
        });
        Ok(())
    }

    fn sdata(&mut self, rest: &str) -> Result<(), ErrorKind> {
        if !matches!(self.state, State::Files) {
            return Err(ErrorKind::AfterFirstProcess { record: "sdata" });
        }
        let (f, _) = fields(rest, 3, Tail::None)?;
        let run = ShmRun {
            offset: hex(f[0], "offset")?,
            gpa: hex(f[1], "gpa")?,
            len: hex(f[2], "len")?,
        };
        let Some(shm) = self.out.shms.last_mut() else {
            return Err(ErrorKind::OutsideProcess { record: "sdata" });
        };
        let end = run.offset.checked_add(run.len);
        if run.len == 0
            || run.gpa.checked_add(run.len).is_none()
            || end.is_none_or(|e| e > shm.size)
        {
            return Err(ErrorKind::Overflows { record: "sdata" });
        }
        if shm
            .data
            .last()
            .is_some_and(|l| l.offset + l.len > run.offset)
        {
            return Err(ErrorKind::Overflows { record: "sdata" });
        }
        if shm.data.len() >= MAX_VMAS {
            return Err(ErrorKind::TooMany {
                what: "sdata records",
                limit: MAX_VMAS,
            });
        }
        shm.data.push(run);
        Ok(())
    }

    fn pdata(&mut self, rest: &str) -> Result<(), ErrorKind> {
        let run = self.run_record("pdata", rest)?;
        let Some(pipe) = self.out.pipes.last_mut() else {
            return Err(ErrorKind::PdataWithoutPipe);
        };
        if run.len == 0 {
            return Err(ErrorKind::EmptyPdata);
        }
        if run.gpa.checked_add(run.len).is_none() {
            return Err(ErrorKind::Overflows { record: "pdata" });
        }
        if pipe.data_len().saturating_add(run.len) > pipe.size {
            return Err(ErrorKind::PipeDataBeyondSize);
        }
        pipe.data.push(run);
        Ok(())
    }

    fn start_process(&mut self, n: usize, rest: &str) {
        let (pid, comm, errors) = block_head(n, rest);
        let b = ProcBuilder {
            line: n,
            pid,
            comm,
            exe: None,
            cwd: None,
            tree: None,
            limits: None,
            creds: None,
            pending: Vec::new(),
            itimers: Vec::new(),
            ptimers: Vec::new(),
            ptimer_next: None,
            mm: None,
            auxv: None,
            vmas: Vec::new(),
            fds: Vec::new(),
            epoll: Vec::new(),
            inotify: Vec::new(),
            sigs: Vec::new(),
            threads: Vec::new(),
            errors,
        };
        self.state = State::Process(Box::new(b));
    }

    fn start_exec(&mut self, n: usize, rest: &str) {
        let (pid, comm, errors) = block_head(n, rest);
        let b = ExecBuilder {
            line: n,
            pid,
            comm,
            path: None,
            cwd: None,
            tree: None,
            limits: None,
            creds: None,
            pending: Vec::new(),
            argv: Vec::new(),
            envp: Vec::new(),
            open: None,
            total: 0,
            fds: Vec::new(),
            sigs: Vec::new(),
            sigmask: None,
            errors,
        };
        self.state = State::Exec(Box::new(b));
    }

    /// Ends the current process or exec block (`complete`: it ended with `end`).
    fn close_process(&mut self, n: usize, complete: bool) {
        let without_end = |errors: &mut Vec<ParseError>| {
            if !complete {
                errors.push(ParseError {
                    line: n,
                    kind: ErrorKind::BlockWithoutEnd,
                });
            }
        };
        match std::mem::replace(&mut self.state, State::Between) {
            State::Process(b) => {
                let mut b = *b;
                without_end(&mut b.errors);
                let entry = b.build(n, &mut self.out.more_errors);
                self.out.processes.push(entry);
            }
            State::Exec(b) => {
                let mut b = *b;
                without_end(&mut b.errors);
                let entry = b.build(&mut self.out.more_errors);
                self.out.execs.push(entry);
            }
            other => self.state = other,
        }
    }

    fn finish(mut self, last_line: usize) -> Parsed {
        if matches!(self.state, State::Process(_) | State::Exec(_)) {
            self.close_process(last_line, false);
            self.global(last_line, ErrorKind::EndsInsideProcess);
        }
        self.out
    }
}

fn push_error(errors: &mut Vec<ParseError>, more: &mut usize, line: usize, kind: ErrorKind) {
    if errors.len() < MAX_ERRORS {
        errors.push(ParseError { line, kind });
    } else {
        *more += 1;
    }
}

impl ProcBuilder {
    fn record(&mut self, n: usize, kind: &str, rest: &str) -> Result<(), ErrorKind> {
        let process_level = [
            "exe",
            "cwd",
            "tree",
            "limits",
            "mm",
            "auxv",
            "vma",
            "copy",
            "fd",
            "epoll",
            "inotify",
            "sig",
            "pending",
            "itimer",
            "ptimer",
            "ptimer-next",
            "cred",
        ];
        if let Some(record) = known(&process_level, kind) {
            if !self.threads.is_empty() {
                return Err(ErrorKind::AfterFirstThread { record });
            }
        }
        match kind {
            "exe" => once_path(&mut self.exe, "exe", rest)?,
            "cwd" => once_path(&mut self.cwd, "cwd", rest)?,
            "tree" => once_tree(&mut self.tree, rest)?,
            "limits" => {
                let l = limits_fields(rest)?;
                if self.limits.replace(l).is_some() {
                    return Err(ErrorKind::Second { record: "limits" });
                }
            }
            "cred" => {
                let c = creds_fields(rest)?;
                if self.creds.replace(c).is_some() {
                    return Err(ErrorKind::Second { record: "cred" });
                }
            }
            "mm" => {
                let (f, _) = fields(rest, 11, Tail::None)?;
                let mut v = [0u64; 11];
                for (slot, s) in v.iter_mut().zip(&f) {
                    *slot = hex(s, "mm value")?;
                }
                if self.mm.is_some() {
                    return Err(ErrorKind::Second { record: "mm" });
                }
                self.mm = Some(Mm::from_array(v));
            }
            "auxv" => {
                if self.auxv.is_some() {
                    return Err(ErrorKind::Second { record: "auxv" });
                }
                let mut words = Vec::new();
                for s in rest.split(' ') {
                    if words.len() == MAX_AUXV {
                        return Err(ErrorKind::AuxvTooLong);
                    }
                    words.push(hex(s, "auxv word")?);
                }
                if words.len() < 2 || words.len() % 2 != 0 {
                    return Err(ErrorKind::AuxvPairs);
                }
                if words.get(words.len() - 2) != Some(&0) {
                    return Err(ErrorKind::AuxvNoAtNull);
                }
                self.auxv = Some(words);
            }
            "vma" => self.vma(rest)?,
            "copy" => self.copy(rest)?,
            "fd" => self.fds.push(fd_record(rest, &self.fds)?),
            "epoll" => {
                let (f, _) = fields(rest, 4, Tail::None)?;
                let epfd =
                    i32::try_from(dec(f[0], "epfd")?).map_err(|_| out_of_range("epfd", f[0]))?;
                let fd = i32::try_from(dec(f[1], "fd")?).map_err(|_| out_of_range("fd", f[1]))?;
                let events = u32::try_from(hex(f[2], "events")?)
                    .map_err(|_| out_of_range("events", f[2]))?;
                let data = hex(f[3], "data")?;
                if !self.fds.iter().any(|r| r.fd == epfd && r.is_epoll()) {
                    return Err(ErrorKind::EpollNotFd { epfd });
                }
                if self.epoll.iter().any(|e| e.epfd == epfd && e.fd == fd) {
                    return Err(ErrorKind::EpollTwice { epfd, fd });
                }
                if self.epoll.len() >= MAX_VMAS {
                    return Err(ErrorKind::TooMany {
                        what: "epoll records",
                        limit: MAX_VMAS,
                    });
                }
                self.epoll.push(EpollRec {
                    epfd,
                    fd,
                    events,
                    data,
                });
            }
            "inotify" => {
                let w = inotify_record(rest)?;
                if !self
                    .fds
                    .iter()
                    .any(|r| r.fd == w.fd && r.inotify_next().is_some())
                {
                    return Err(ErrorKind::InotifyNotFd { fd: w.fd });
                }
                if self.inotify.iter().any(|o| o.fd == w.fd && o.wd >= w.wd) {
                    return Err(ErrorKind::InotifyOrder { fd: w.fd, wd: w.wd });
                }
                if self.inotify.len() >= MAX_INOTIFY_WATCHES {
                    return Err(ErrorKind::TooMany {
                        what: "inotify records",
                        limit: MAX_INOTIFY_WATCHES,
                    });
                }
                self.inotify.push(w);
            }
            "sig" => self.sigs.push(sig_record(rest, &self.sigs)?),
            "pending" => push_pending(&mut self.pending, rest)?,
            "itimer" => {
                let (f, _) = fields(rest, 3, Tail::None)?;
                let which = dec(f[0], "which")?;
                if which >= ITIMER_KINDS {
                    return Err(out_of_range("which", f[0]));
                }
                let value_ns = hex(f[1], "itimer value")?;
                if value_ns == 0 {
                    return Err(out_of_range("itimer value", f[1]));
                }
                let interval_ns = hex(f[2], "itimer interval")?;
                if self.itimers.iter().any(|t| t.which == which) {
                    return Err(ErrorKind::Second { record: "itimer" });
                }
                self.itimers.push(Itimer {
                    which,
                    value_ns,
                    interval_ns,
                });
            }
            "ptimer" => {
                let t = ptimer_record(rest)?;
                if self.ptimers.last().is_some_and(|p| p.id >= t.id) {
                    return Err(ErrorKind::PtimerOrder { id: t.id });
                }
                if self.ptimers.len() >= MAX_PTIMERS {
                    return Err(ErrorKind::TooMany {
                        what: "ptimer records",
                        limit: MAX_PTIMERS,
                    });
                }
                self.ptimers.push(t);
            }
            "ptimer-next" => {
                let (f, _) = fields(rest, 1, Tail::None)?;
                let next = dec(f[0], "ptimer id")?;
                if next > MAX_PTIMER_ID {
                    return Err(out_of_range("ptimer id", f[0]));
                }
                if self.ptimer_next.replace(next).is_some() {
                    return Err(ErrorKind::Second {
                        record: "ptimer-next",
                    });
                }
            }
            "thread" => self.thread(n, rest)?,
            _ => {
                if let Some(record) = known(&THREAD_RECORDS, kind) {
                    let Some(t) = self.threads.last_mut() else {
                        return Err(ErrorKind::BeforeFirstThread { record });
                    };
                    t.record(record, rest)?;
                } else {
                    return Err(ErrorKind::UnknownRecord {
                        record: shorten(kind),
                    });
                }
            }
        }
        Ok(())
    }

    fn vma(&mut self, rest: &str) -> Result<(), ErrorKind> {
        let (f, path) = fields(rest, 6, Tail::Optional)?;
        let start = hex(f[0], "start")?;
        let end = hex(f[1], "end")?;
        let prot = parse_prot(f[2])?;
        let (shared, growsdown) = match f[3] {
            "p" => (false, false),
            "s" => (true, false),
            "pg" => (false, true),
            "sg" => (true, true),
            other => return Err(bad("share", other)),
        };
        let pgoff = hex(f[4], "pgoff")?;
        let kind = VmaKind::from_name(f[5]).ok_or_else(|| bad("kind", f[5]))?;
        if start >= end || !start.is_multiple_of(PAGE) || !end.is_multiple_of(PAGE) {
            return Err(ErrorKind::BadArea { start, end });
        }
        if !pgoff.is_multiple_of(PAGE) {
            return Err(ErrorKind::PgoffUnaligned { pgoff });
        }
        let path = match (kind, path) {
            (VmaKind::File, Some(p)) => Some(abs_path(p)?),
            (VmaKind::File, None) => return Err(ErrorKind::FileAreaNeedsPath),
            (VmaKind::Anon, Some(p)) if shared && p.starts_with("shm:") => {
                let id = dec(&p[4..], "shm id")?;
                Some(format!("shm:{id}").into_bytes())
            }
            (_, Some(_)) => return Err(ErrorKind::AreaHasNoPath { kind: kind.name() }),
            (_, None) => None,
        };
        if let Some(prev) = self.vmas.last() {
            if start < prev.end {
                return Err(ErrorKind::NotAbove {
                    start,
                    end,
                    prev_end: prev.end,
                });
            }
        }
        if self.vmas.len() == MAX_VMAS {
            return Err(ErrorKind::TooMany {
                what: "areas",
                limit: MAX_VMAS,
            });
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

    fn copy(&mut self, rest: &str) -> Result<(), ErrorKind> {
        let (f, _) = fields(rest, 3, Tail::None)?;
        let c = Copy {
            vaddr: hex(f[0], "vaddr")?,
            gpa: hex(f[1], "gpa")?,
            len: hex(f[2], "len")?,
        };
        let Some(v) = self.vmas.last_mut() else {
            return Err(ErrorKind::CopyWithoutVma);
        };
        if c.len == 0
            || !c.len.is_multiple_of(PAGE)
            || !c.vaddr.is_multiple_of(PAGE)
            || !c.gpa.is_multiple_of(PAGE)
        {
            return Err(ErrorKind::CopyNotPages);
        }
        match c.vaddr.checked_add(c.len) {
            Some(end) if c.vaddr >= v.start && end <= v.end => {}
            _ => return Err(ErrorKind::CopyOutside { vaddr: c.vaddr }),
        }
        if c.gpa.checked_add(c.len).is_none() {
            return Err(ErrorKind::Overflows { record: "copy" });
        }
        if v.kind.is_special() {
            return Err(ErrorKind::CopyIntoSpecial {
                kind: v.kind.name(),
            });
        }
        v.copies.push(c);
        Ok(())
    }
}

/// The absolute path of a record that may appear once (`exe`, `cwd`, `path`).
fn once_path(
    slot: &mut Option<Vec<u8>>,
    record: &'static str,
    rest: &str,
) -> Result<(), ErrorKind> {
    let (_, path) = fields(rest, 0, Tail::Required)?;
    let path = abs_path(path.unwrap_or(""))?;
    if slot.is_some() {
        return Err(ErrorKind::Second { record });
    }
    *slot = Some(path);
    Ok(())
}

/// `<pid> [name]` of a `process` or `exec` line `n`: pid 0 and the error when it is bad.
fn block_head(n: usize, rest: &str) -> (u32, Vec<u8>, Vec<ParseError>) {
    let parsed = fields(rest, 1, Tail::Optional)
        .and_then(|(f, name)| Ok((pid(f[0], "pid")?, unescape(name.unwrap_or(""))?)));
    match parsed {
        Ok((pid, name)) => (pid, name, Vec::new()),
        Err(kind) => (0, Vec::new(), vec![ParseError { line: n, kind }]),
    }
}

/// An `fd` record, not one of `fds` again.
fn fd_record(rest: &str, fds: &[FdRec]) -> Result<FdRec, ErrorKind> {
    let (f, path) = fields(rest, 4, Tail::Optional)?;
    let fd = dec(f[0], "fd")?;
    let fd = i32::try_from(fd).map_err(|_| out_of_range("fd", f[0]))?;
    let flags = hex(f[1], "flags")?;
    let flags = u32::try_from(flags).map_err(|_| out_of_range("flags", f[1]))?;
    let pos = hex(f[2], "pos")?;
    let kind = FdKind::from_name(f[3]).ok_or_else(|| bad("kind", f[3]))?;
    let path = match (kind.reopens(), path) {
        (true, p) => abs_path(p.unwrap_or(""))?,
        (false, Some(p)) => unescape(p)?,
        (false, None) => Vec::new(),
    };
    if fds.iter().any(|r| r.fd == fd) {
        return Err(ErrorKind::FdTwice { fd });
    }
    Ok(FdRec {
        fd,
        flags,
        pos,
        kind,
        path,
    })
}

/// `inotify <fd> <wd> <mask> <path>`.
fn inotify_record(rest: &str) -> Result<InotifyRec, ErrorKind> {
    let (f, path) = fields(rest, 3, Tail::Required)?;
    let fd = i32::try_from(dec(f[0], "fd")?).map_err(|_| out_of_range("fd", f[0]))?;
    let wd = i32::try_from(dec(f[1], "wd")?)
        .ok()
        .filter(|&w| w >= 1)
        .ok_or_else(|| out_of_range("wd", f[1]))?;
    let mask = u32::try_from(hex(f[2], "mask")?).map_err(|_| out_of_range("mask", f[2]))?;
    Ok(InotifyRec {
        fd,
        wd,
        mask,
        path: abs_path(path.unwrap_or(""))?,
    })
}

/// A `sig` record, not for a signal of `sigs` again.
fn sig_record(rest: &str, sigs: &[SigRec]) -> Result<SigRec, ErrorKind> {
    let (f, _) = fields(rest, 5, Tail::None)?;
    let signo = dec(f[0], "signo")?;
    let signo = i32::try_from(signo)
        .ok()
        .filter(|s| (1..=64).contains(s))
        .ok_or_else(|| out_of_range("signo", f[0]))?;
    if signo == SIGKILL || signo == SIGSTOP {
        return Err(ErrorKind::SignalWithoutAction { signo });
    }
    if sigs.iter().any(|s| s.signo == signo) {
        return Err(ErrorKind::SignalTwice { signo });
    }
    Ok(SigRec {
        signo,
        handler: hex(f[1], "handler")?,
        flags: hex(f[2], "flags")?,
        restorer: hex(f[3], "restorer")?,
        mask: hex(f[4], "mask")?,
    })
}

impl ProcBuilder {
    fn thread(&mut self, n: usize, rest: &str) -> Result<(), ErrorKind> {
        let (f, comm) = fields(rest, 1, Tail::Optional)?;
        let tid = pid(f[0], "tid")?;
        if self.threads.is_empty() && tid != self.pid {
            return Err(ErrorKind::NotLeader {
                leader: self.pid,
                tid,
            });
        }
        if self.threads.iter().any(|t| t.tid == tid) {
            return Err(ErrorKind::ThreadTwice { tid });
        }
        if self.threads.len() == MAX_THREADS {
            return Err(ErrorKind::TooMany {
                what: "threads",
                limit: MAX_THREADS,
            });
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
        Ok(())
    }

    fn build(self, n: usize, more: &mut usize) -> Result<Process, BadProcess> {
        let mut errors = self.errors;
        let mut err = |line: usize, kind: ErrorKind| push_error(&mut errors, more, line, kind);
        if self.mm.is_none() {
            err(self.line, ErrorKind::NoMm);
        }
        if self.auxv.is_none() {
            err(self.line, ErrorKind::NoAuxv);
        }
        if self.threads.is_empty() {
            err(n, ErrorKind::NoThread);
        }
        let mut threads = Vec::with_capacity(self.threads.len());
        for t in self.threads {
            match (t.regs, t.fpu) {
                (Some(regs), Some(fpu)) => threads.push(Thread {
                    tid: t.tid,
                    comm: t.comm,
                    regs,
                    fpu,
                    sigmask: t.sigmask.unwrap_or(0),
                    tid_address: t.tid_address,
                    robust_list: t.robust_list,
                    rseq: t.rseq,
                }),
                (None, _) => err(t.line, ErrorKind::NoRegs { tid: t.tid }),
                (_, None) => err(t.line, ErrorKind::NoFpu { tid: t.tid }),
            }
        }
        // Copies of one process must not overlap each other in the target.
        let mut seen = HashSet::new();
        for v in &self.vmas {
            for c in &v.copies {
                if !seen.insert(c.vaddr) {
                    err(self.line, ErrorKind::TwoCopies { vaddr: c.vaddr });
                }
            }
        }
        match (self.mm, self.auxv) {
            (Some(mm), Some(auxv)) if errors.is_empty() => Ok(Process {
                pid: self.pid,
                comm: self.comm,
                exe: self.exe,
                cwd: self.cwd,
                tree: self.tree,
                limits: self.limits,
                creds: self.creds,
                pending: self.pending,
                itimers: self.itimers,
                ptimers: self.ptimers,
                ptimer_next: self.ptimer_next,
                mm,
                auxv,
                vmas: self.vmas,
                fds: self.fds,
                epoll: self.epoll,
                inotify: self.inotify,
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

impl ExecBuilder {
    fn record(&mut self, kind: &str, rest: &str) -> Result<(), ErrorKind> {
        // Any record but `more` ends the string `more` would continue.
        let open = self.open.take();
        match kind {
            "path" => once_path(&mut self.path, "path", rest)?,
            "cwd" => once_path(&mut self.cwd, "cwd", rest)?,
            "tree" => once_tree(&mut self.tree, rest)?,
            "limits" => {
                if self.limits.replace(limits_fields(rest)?).is_some() {
                    return Err(ErrorKind::Second { record: "limits" });
                }
            }
            "cred" => {
                if self.creds.replace(creds_fields(rest)?).is_some() {
                    return Err(ErrorKind::Second { record: "cred" });
                }
            }
            "pending" => push_pending(&mut self.pending, rest)?,
            "arg" | "env" => {
                let env = kind == "env";
                if !env && !self.envp.is_empty() {
                    return Err(ErrorKind::ArgAfterEnv);
                }
                if self.argv.len() + self.envp.len() == MAX_EXEC_COUNT {
                    return Err(ErrorKind::TooMany {
                        what: "strings",
                        limit: MAX_EXEC_COUNT,
                    });
                }
                let (_, text) = fields(rest, 0, Tail::Optional)?;
                let bytes = self.string_bytes(text.unwrap_or(""))?;
                if env {
                    self.envp.push(bytes);
                } else {
                    self.argv.push(bytes);
                }
                self.open = Some(env);
            }
            "more" => {
                let Some(env) = open else {
                    return Err(ErrorKind::MoreWithoutString);
                };
                let (_, text) = fields(rest, 0, Tail::Optional)?;
                let bytes = self.string_bytes(text.unwrap_or(""))?;
                if bytes.is_empty() {
                    return Err(ErrorKind::EmptyMore);
                }
                let list = if env { &mut self.envp } else { &mut self.argv };
                let Some(last) = list.last_mut() else {
                    return Err(ErrorKind::MoreWithoutString);
                };
                if last.len() + bytes.len() > MAX_ARG_STRLEN {
                    return Err(ErrorKind::StringTooLong);
                }
                last.extend_from_slice(&bytes);
                self.open = Some(env);
            }
            "fd" => self.fds.push(fd_record(rest, &self.fds)?),
            "sig" => self.sigs.push(sig_record(rest, &self.sigs)?),
            "sigmask" => {
                let (f, _) = fields(rest, 1, Tail::None)?;
                if self.sigmask.replace(hex(f[0], "mask")?).is_some() {
                    return Err(ErrorKind::Second { record: "sigmask" });
                }
            }
            _ => {
                return Err(ErrorKind::UnknownRecord {
                    record: shorten(kind),
                })
            }
        }
        Ok(())
    }

    /// The decoded bytes of one `arg`/`env`/`more` piece, counted against the limits.
    fn string_bytes(&mut self, text: &str) -> Result<Vec<u8>, ErrorKind> {
        let bytes = unescape_max(text, MAX_LINE)?;
        if bytes.len() > MAX_ARG_STRLEN {
            return Err(ErrorKind::StringTooLong);
        }
        // Each string also takes its NUL in the new program's stack.
        self.total = self.total.saturating_add(bytes.len() + 1);
        if self.total > MAX_EXEC_STRINGS {
            return Err(ErrorKind::StringsTooLong);
        }
        Ok(bytes)
    }

    fn build(self, more: &mut usize) -> Result<Exec, BadProcess> {
        let mut errors = self.errors;
        match self.path {
            Some(path) if errors.is_empty() => Ok(Exec {
                pid: self.pid,
                comm: self.comm,
                path,
                cwd: self.cwd,
                argv: self.argv,
                envp: self.envp,
                fds: self.fds,
                sigs: self.sigs,
                sigmask: self.sigmask.unwrap_or(0),
                tree: self.tree,
                limits: self.limits,
                creds: self.creds,
                pending: self.pending,
            }),
            path => {
                if path.is_none() {
                    push_error(&mut errors, more, self.line, ErrorKind::NoPath);
                }
                Err(BadProcess {
                    pid: self.pid,
                    errors,
                })
            }
        }
    }
}

impl ThreadBuilder {
    fn record(&mut self, record: &'static str, rest: &str) -> Result<(), ErrorKind> {
        let tid = self.tid;
        let dup = || ErrorKind::SecondForThread { record, tid };
        match record {
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
                    return Err(ErrorKind::FpuLength { len: digits.len() });
                }
                let mut fpu = Box::new([0u8; 512]);
                for (byte, pair) in fpu.iter_mut().zip(digits.chunks_exact(2)) {
                    match (lower_hex_digit(pair[0]), lower_hex_digit(pair[1])) {
                        (Some(h), Some(l)) => *byte = (h << 4) | l,
                        _ => return Err(ErrorKind::FpuHex),
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
                let len = hex32(f[1], "len")?;
                let sig = hex32(f[2], "sig")?;
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
/// `<iflag> <oflag> <cflag> <lflag> <line> <cc> <ispeed> <ospeed>`, hex.
fn termios_fields(f: &[&str]) -> Result<Termios, ErrorKind> {
    let word = |s: &str, what| u32::try_from(hex(s, what)?).map_err(|_| out_of_range(what, s));
    let line = u8::try_from(hex(f[4], "line")?).map_err(|_| out_of_range("line", f[4]))?;
    let mut cc = [0u8; 19];
    let digits = f[5].as_bytes();
    if digits.len() != 38 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad("cc", f[5]));
    }
    for (c, pair) in cc.iter_mut().zip(digits.chunks(2)) {
        let s = std::str::from_utf8(pair).map_err(|_| bad("cc", f[5]))?;
        *c = u8::from_str_radix(s, 16).map_err(|_| bad("cc", f[5]))?;
    }
    Ok(Termios {
        iflag: word(f[0], "iflag")?,
        oflag: word(f[1], "oflag")?,
        cflag: word(f[2], "cflag")?,
        lflag: word(f[3], "lflag")?,
        line,
        cc,
        ispeed: word(f[6], "ispeed")?,
        ospeed: word(f[7], "ospeed")?,
    })
}

/// `<rows> <cols> <xpixel> <ypixel>`, decimal.
fn winsize_fields(f: &[&str]) -> Result<Winsize, ErrorKind> {
    let w = |s: &str, what| u16::try_from(dec(s, what)?).map_err(|_| out_of_range(what, s));
    Ok(Winsize {
        rows: w(f[0], "rows")?,
        cols: w(f[1], "cols")?,
        xpixel: w(f[2], "xpixel")?,
        ypixel: w(f[3], "ypixel")?,
    })
}

fn fields(rest: &str, n: usize, tail: Tail) -> Result<(Vec<&str>, Option<&str>), ErrorKind> {
    let mut out = Vec::with_capacity(n);
    let mut left = Some(rest);
    for _ in 0..n {
        let r = left.take().unwrap_or("");
        let (f, r) = match r.split_once(' ') {
            Some((f, r)) => (f, Some(r)),
            None => (r, None),
        };
        if f.is_empty() {
            return Err(ErrorKind::FieldCount { expected: n });
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
        (Tail::None, Some(_)) => Err(ErrorKind::TrailingData),
        (Tail::Required, None | Some("")) => Err(ErrorKind::MissingPath),
        (_, t) => Ok((out, t.filter(|s| !s.is_empty()))),
    }
}

fn bad(what: &'static str, text: &str) -> ErrorKind {
    ErrorKind::Bad {
        what,
        text: shorten(text),
    }
}

fn out_of_range(what: &'static str, text: &str) -> ErrorKind {
    ErrorKind::OutOfRange {
        what,
        text: shorten(text),
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
fn hex(s: &str, what: &'static str) -> Result<u64, ErrorKind> {
    if s.is_empty() || s.len() > 16 {
        return Err(bad(what, s));
    }
    let mut v = 0u64;
    for &b in s.as_bytes() {
        v = (v << 4) | u64::from(lower_hex_digit(b).ok_or_else(|| bad(what, s))?);
    }
    Ok(v)
}

/// [`hex`] that must fit 32 bits.
fn hex32(s: &str, what: &'static str) -> Result<u32, ErrorKind> {
    let v = hex(s, what)?;
    u32::try_from(v).map_err(|_| out_of_range(what, s))
}

/// A decimal number (pid, tid, fd, signo).
fn dec(s: &str, what: &'static str) -> Result<u32, ErrorKind> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(what, s));
    }
    s.parse().map_err(|_| bad(what, s))
}

/// 16 bytes as 32 hex digits.
fn addr16(s: &str) -> Result<[u8; 16], ErrorKind> {
    let b = s.as_bytes();
    if b.len() != 32 || !b.iter().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad("addr", s));
    }
    let mut addr = [0u8; 16];
    for (i, a) in addr.iter_mut().enumerate() {
        *a = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad("addr", s))?;
    }
    Ok(addr)
}

/// `ptimer <id> <clock> <notify> <signo> <tid> <abs> <value> <value_ns> <interval_ns>`.
fn ptimer_record(rest: &str) -> Result<Ptimer, ErrorKind> {
    let (f, _) = fields(rest, 9, Tail::None)?;
    let id = dec(f[0], "ptimer id")?;
    if id > MAX_PTIMER_ID {
        return Err(out_of_range("ptimer id", f[0]));
    }
    let clock = dec(f[1], "clock")?;
    if !PTIMER_CLOCKS.contains(&clock) {
        return Err(out_of_range("clock", f[1]));
    }
    let notify = dec(f[2], "notify")?;
    // SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD, each with or without SIGEV_THREAD_ID.
    if notify & !SIGEV_THREAD_ID > 2 {
        return Err(out_of_range("notify", f[2]));
    }
    let signo = dec(f[3], "signo")?;
    // A SIGEV_NONE timer sends nothing: its number is not checked by the kernel either.
    let signo_ok =
        (1..=64).contains(&signo) || (notify & !SIGEV_THREAD_ID == SIGEV_NONE && signo == 0);
    if !signo_ok {
        return Err(out_of_range("signo", f[3]));
    }
    let tid = dec(f[4], "tid")?;
    let wants_tid = notify & SIGEV_THREAD_ID != 0;
    if tid > MAX_PID || wants_tid != (tid != 0) {
        return Err(out_of_range("tid", f[4]));
    }
    let absolute = match f[5] {
        "0" => false,
        "1" => true,
        other => return Err(bad("abs", other)),
    };
    Ok(Ptimer {
        id,
        clock,
        notify,
        signo,
        tid,
        absolute,
        value: hex(f[6], "sigev value")?,
        value_ns: hex(f[7], "ptimer value")?,
        interval_ns: hex(f[8], "ptimer interval")?,
    })
}

/// `ppid pgid sid`: decimal, 0 to [`MAX_PID`] (0: none).
fn tree_fields(f: &[&str]) -> Result<Tree, ErrorKind> {
    let id = |s: &str, what: &'static str| {
        let v = dec(s, what)?;
        if v > MAX_PID {
            return Err(out_of_range(what, s));
        }
        Ok(v)
    };
    Ok(Tree {
        ppid: id(f[0], "ppid")?,
        pgid: id(f[1], "pgid")?,
        sid: id(f[2], "sid")?,
    })
}

/// A `tree` record, at most once per block.
/// Parses a `pending` record onto `pending` (bounded by [`MAX_PENDING`]).
fn push_pending(pending: &mut Vec<Pending>, rest: &str) -> Result<(), ErrorKind> {
    let (f, _) = fields(rest, 2, Tail::None)?;
    let tid = dec(f[0], "tid")?;
    if tid > MAX_PID {
        return Err(out_of_range("tid", f[0]));
    }
    let digits = f[1].as_bytes();
    if digits.len() != 96 {
        return Err(bad("siginfo", f[1]));
    }
    let mut info = [0u8; 48];
    for (byte, pair) in info.iter_mut().zip(digits.chunks_exact(2)) {
        match (lower_hex_digit(pair[0]), lower_hex_digit(pair[1])) {
            (Some(h), Some(l)) => *byte = (h << 4) | l,
            _ => return Err(bad("siginfo", f[1])),
        }
    }
    let q = Pending { tid, info };
    if !(1..=64).contains(&q.signo()) {
        return Err(out_of_range("signo", f[1]));
    }
    if pending.len() >= MAX_PENDING {
        return Err(ErrorKind::TooMany {
            what: "pending signals",
            limit: MAX_PENDING,
        });
    }
    pending.push(q);
    Ok(())
}

/// The fields of a `limits` record.
fn limits_fields(rest: &str) -> Result<Limits, ErrorKind> {
    let (f, _) = fields(rest, 2 + 2 * RLIMITS, Tail::None)?;
    let word = |s: &str, what| u32::try_from(hex(s, what)?).map_err(|_| out_of_range(what, s));
    let mut rlimits = [(0u64, 0u64); RLIMITS];
    for (i, slot) in rlimits.iter_mut().enumerate() {
        let (cur, max) = (hex(f[2 + 2 * i], "rlimit")?, hex(f[3 + 2 * i], "rlimit")?);
        if cur > max {
            return Err(out_of_range("rlimit", f[2 + 2 * i]));
        }
        *slot = (cur, max);
    }
    let umask = word(f[0], "umask")?;
    if umask > 0o777 {
        return Err(out_of_range("umask", f[0]));
    }
    Ok(Limits {
        umask,
        personality: word(f[1], "personality")?,
        rlimits,
    })
}

/// The fields of a `cred` record.
fn creds_fields(rest: &str) -> Result<Creds, ErrorKind> {
    let (f, _) = fields(rest, 16, Tail::None)?;
    let word = |s: &str, what| u32::try_from(hex(s, what)?).map_err(|_| out_of_range(what, s));
    let mut c = Creds::default();
    for (i, slot) in c.uids.iter_mut().enumerate() {
        *slot = word(f[i], "uid")?;
    }
    for (i, slot) in c.gids.iter_mut().enumerate() {
        *slot = word(f[4 + i], "gid")?;
    }
    c.securebits = word(f[8], "securebits")?;
    for (i, slot) in c.caps.iter_mut().enumerate() {
        *slot = hex(f[9 + i], "capabilities")?;
    }
    c.dumpable = word(f[14], "dumpable")?;
    if c.dumpable > 2 {
        return Err(out_of_range("dumpable", f[14]));
    }
    if f[15] != "-" {
        for g in f[15].split(',') {
            if c.groups.len() == MAX_GROUPS {
                return Err(out_of_range("groups", f[15]));
            }
            c.groups.push(word(g, "group")?);
        }
    }
    Ok(c)
}

fn once_tree(slot: &mut Option<Tree>, rest: &str) -> Result<(), ErrorKind> {
    let (f, _) = fields(rest, 3, Tail::None)?;
    let t = tree_fields(&f)?;
    if slot.replace(t).is_some() {
        return Err(ErrorKind::Second { record: "tree" });
    }
    Ok(())
}

/// A pid or tid: decimal, 1 to [`MAX_PID`].
fn pid(s: &str, what: &'static str) -> Result<u32, ErrorKind> {
    let v = dec(s, what)?;
    if v == 0 || v > MAX_PID {
        return Err(out_of_range(what, s));
    }
    Ok(v)
}

fn parse_prot(s: &str) -> Result<i32, ErrorKind> {
    let b = s.as_bytes();
    if b.len() != 3 {
        return Err(bad("prot", s));
    }
    let bit = |c: u8, want: u8, v: i32| match c {
        c if c == want => Ok(v),
        b'-' => Ok(0),
        _ => Err(bad("prot", s)),
    };
    Ok(bit(b[0], b'r', PROT_READ)? | bit(b[1], b'w', PROT_WRITE)? | bit(b[2], b'x', PROT_EXEC)?)
}

/// Decodes `%XX` escapes (either case) of a path or name (at most [`MAX_PATH`] bytes).
fn unescape(s: &str) -> Result<Vec<u8>, ErrorKind> {
    unescape_max(s, MAX_PATH)
}

/// Decodes `%XX` escapes (either case), at most `max` bytes.
fn unescape_max(s: &str, max: usize) -> Result<Vec<u8>, ErrorKind> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len().min(max));
    let mut i = 0;
    while i < b.len() {
        if out.len() == max {
            return Err(ErrorKind::TextTooLong);
        }
        if b[i] == b'%' {
            let digit = |c: Option<&u8>| c.and_then(|&c| char::from(c).to_digit(16));
            let v = match (digit(b.get(i + 1)), digit(b.get(i + 2))) {
                (Some(h), Some(l)) => u8::try_from(h * 16 + l).ok(),
                _ => None,
            };
            out.push(v.ok_or_else(|| ErrorKind::BadEscape { text: shorten(s) })?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A decoded absolute path without NUL bytes.
fn abs_path(s: &str) -> Result<Vec<u8>, ErrorKind> {
    let p = unescape(s)?;
    if p.first() != Some(&b'/') {
        return Err(ErrorKind::NotAbsolute { text: shorten(s) });
    }
    if p.contains(&0) {
        return Err(ErrorKind::NulInPath);
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
