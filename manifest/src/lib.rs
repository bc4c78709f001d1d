//! The resurrection manifest (`docs/resurrection.md`, version 1): what the crash kernel's
//! agent needs to recreate the processes of a dead kernel.
//!
//! One crate for both sides: `recovery/` builds a [`Manifest`] and writes it with its
//! [`Display`](std::fmt::Display) implementation ([`Manifest::to_text`]); the agent reads it
//! with [`parse`] (or [`parse_each`], which fails only the process whose block is bad). No
//! I/O, no dependencies beyond `thiserror`: the agent is a static binary.
//!
//! Round trip: for every manifest `m` the parser accepts, `parse(m.to_text()) == m`.

mod parse;
mod write;

pub use parse::{parse, parse_each, BadProcess, ErrorKind, ParseError, Parsed};
pub use write::encode_field;

/// An error and its causes on one line, `outer: cause: root cause` (the form every
/// message of the project prints; kept here, the crate all the others use).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Largest `pipe` capacity (the kernel's own ceiling for `F_SETPIPE_SZ` is lower).
pub const MAX_PIPE_SIZE: u64 = 1 << 30;
/// Most `pipe` records in one manifest.
pub const MAX_PIPES: usize = 1 << 16;
/// Most descriptors passed with one Unix socket message (the kernel's `SCM_MAX_FD`).
pub const MAX_PASSED_FDS: usize = 253;

/// Page size of the guest (x86-64).
pub const PAGE: u64 = 4096;
/// The manifest format version this crate reads and writes.
pub const VERSION: u32 = 1;
/// The first line of a version-1 manifest.
pub const HEADER: &str = "owvmm-manifest 1";
/// Longest accepted manifest line (an `fpu` line is about 1030 bytes, a path up to
/// 3 x 4096 when every byte is escaped).
pub const MAX_LINE: usize = 16 * 1024;
/// Longest decoded path or name (PATH_MAX without the NUL).
pub const MAX_PATH: usize = 4095;
/// Most `auxv` words (the kernel keeps fewer in `saved_auxv`).
pub const MAX_AUXV: usize = 128;
/// Most `vma` records in one process.
pub const MAX_VMAS: usize = 1 << 20;
/// Most `thread` records in one process.
pub const MAX_THREADS: usize = 1 << 16;
/// Largest `file` size (the agent makes the file this long and maps it).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Largest pid or tid (`PID_MAX_LIMIT`).
pub const MAX_PID: u32 = 4_194_304;
/// Errors kept per manifest (and per process); more are counted but not kept.
pub const MAX_ERRORS: usize = 100;
/// Longest argument or environment string of an `exec` block (`MAX_ARG_STRLEN`, 32
/// pages, the NUL not counted).
pub const MAX_ARG_STRLEN: usize = 32 * 4096;
/// Most bytes of all argument and environment strings of one `exec` block together.
pub const MAX_EXEC_STRINGS: usize = 2 << 20;
/// Most argument plus environment strings of one `exec` block.
pub const MAX_EXEC_COUNT: usize = 1 << 18;
/// Raw bytes of a string the writer puts on one `arg`/`env`/`more` line (a line of
/// escaped bytes stays under [`MAX_LINE`]).
pub const EXEC_CHUNK: usize = 4096;

/// `PROT_READ`, as in Linux.
pub const PROT_READ: i32 = 1;
/// `PROT_WRITE`, as in Linux.
pub const PROT_WRITE: i32 = 2;
/// `PROT_EXEC`, as in Linux.
pub const PROT_EXEC: i32 = 4;

/// A whole manifest: the files to recreate, then the processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The `file` records, in order.
    pub files: Vec<FileRec>,
    /// The `pipe` records, in order (after the files, before the processes).
    pub pipes: Vec<PipeRec>,
    /// The `shm` records: memory files (memfd) held by a descriptor, with their contents.
    pub shms: Vec<ShmRec>,
    /// The `inet` records, in order (after the pipes, before the processes).
    pub inets: Vec<InetRec>,
    /// The `unix` records, in order (after the inet sockets, before the processes).
    pub unixes: Vec<UnixRec>,
    /// The `ulisten` records, in order (after the `unix` records).
    pub ulistens: Vec<UnixListenRec>,
    /// The `tcp` records, in order (after the `inet` records).
    pub tcps: Vec<TcpRec>,
    /// The `pty` records, in order (after the sockets).
    pub ptys: Vec<PtyRec>,
    /// The `tty` records, in order (after the `pty` records).
    pub ttys: Vec<TtyRec>,
    /// The `zombie` records, in order (after the sockets, before the processes).
    pub zombies: Vec<Zombie>,
    /// The `process` blocks, in order.
    pub processes: Vec<Process>,
    /// The `exec` blocks, in order (written after the `process` blocks).
    pub execs: Vec<Exec>,
}

impl Manifest {
    /// Bytes of old memory the agent will copy: the lengths of all `copy`, `fcopy` and
    /// `pdata` runs.
    pub fn copy_bytes(&self) -> u64 {
        let files = self.files.iter().flat_map(|f| &f.runs).map(|r| r.len);
        let pipes = self
            .pipes
            .iter()
            .flat_map(|p| &p.data)
            .chain(self.unixes.iter().flat_map(UnixRec::runs))
            .chain(self.tcps.iter().flat_map(|t| t.send.iter().chain(&t.recv)))
            .chain(self.ptys.iter().flat_map(PtyRec::runs))
            .map(|r| r.len);
        let copies = self
            .processes
            .iter()
            .flat_map(|p| &p.vmas)
            .flat_map(|v| &v.copies)
            .map(|c| c.len);
        files
            .chain(pipes)
            .chain(copies)
            .fold(0, u64::saturating_add)
    }

    /// The manifest text (its `Display`), ending with a newline.
    pub fn to_text(&self) -> String {
        self.to_string()
    }
}

/// How a `file` record is applied (its third field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileUpdate {
    /// `0`: written whole when missing or of another size (a file of an in-memory
    /// filesystem nobody had open for writing).
    IfDiffers,
    /// `1`: written whole (some process had it open for writing).
    Overwrite,
    /// `2`: a file on a disk: only the runs (the pages the dead kernel had not written
    /// back yet) are written into it, the rest kept; then its length set to `size`.
    Patch,
}

impl FileUpdate {
    /// The wire form.
    pub fn code(self) -> u8 {
        match self {
            FileUpdate::IfDiffers => 0,
            FileUpdate::Overwrite => 1,
            FileUpdate::Patch => 2,
        }
    }
}

/// `pipe <id> <size> [<mode> <path>]` and its `pdata` runs: an anonymous pipe, or with a
/// path a named FIFO, with the bytes it held, unread, in order. Its ends are the `fd`
/// records of kind `fifo` with the path `pipe:<id>` (read or write end by their flags), in
/// any process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeRec {
    /// Unique in the manifest.
    pub id: u32,
    /// Its capacity in bytes (`F_SETPIPE_SZ`).
    pub size: u64,
    /// A named FIFO: its permission bits (`i_mode & 0o7777`, hex) and absolute path.
    pub named: Option<(u32, Vec<u8>)>,
    /// The unread bytes, in order: `pdata <gpa> <len>`.
    pub data: Vec<PipeRun>,
}

impl PipeRec {
    /// Unread bytes in all.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|r| r.len).fold(0, u64::saturating_add)
    }
}

/// `shm <id> <size>`: a memory file (a memfd, or another file of the kernel's internal
/// shmem mount) that a process holds by a descriptor, made again before the processes
/// with this size and filled from the old memory: `sdata <offset> <gpa> <len>` (hex), the
/// pages it had, at their offsets (holes read as zeros). Its holders are the `fd` records
/// of kind `other` with the path `shm:<id>`; areas that map it have the same path, so it
/// is the same object for both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShmRec {
    /// Its inode number (the id of `shm:<id>` paths).
    pub id: u32,
    /// `i_size`.
    pub size: u64,
    pub data: Vec<ShmRun>,
}

/// Bytes of a memory file at `offset`, in old guest memory at `gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShmRun {
    pub offset: u64,
    pub gpa: u64,
    pub len: u64,
}

/// Largest memory file (`shm` size) accepted.
pub const MAX_SHM_SIZE: u64 = 1 << 40;

/// `inet <id> <family> <type> <port> <backlog> <v6only> <addr>`: an IPv4/IPv6 socket made
/// again before the processes: TCP (`type` 1) bound and listening with `backlog`, or UDP
/// (`type` 2) bound. `addr` is 32 hex digits (the 16 address bytes; IPv4 in the first 4).
/// Its holders are the `fd` records of kind `sock` with the path `inet:<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InetRec {
    pub id: u32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u32,
    /// `SOCK_STREAM` (1) or `SOCK_DGRAM` (2).
    pub sock_type: u32,
    pub port: u16,
    pub backlog: u32,
    pub v6only: bool,
    pub addr: [u8; 16],
}

/// `tcp <id> <family> <local> <lport> <remote> <rport> <snd_una> <snd_nxt> <write_seq>
/// <rcv_nxt> <snd_wl1> <snd_wnd> <max_window> <rcv_wnd> <rcv_wup> <mss> <snd_wscale>
/// <rcv_wscale> <opts> <timestamp>`, then `tsend <gpa> <len>` runs (the bytes from
/// `snd_una` to `write_seq`) and `trecv <gpa> <len>` runs (the bytes received and not
/// read, up to `rcv_nxt`): an established TCP connection, made again with TCP repair.
/// `id` (decimal) shares the `inet` ids' space: its holders are the `fd` records of kind
/// `sock` with the path `inet:<id>`. Addresses are 32 hex digits (an IPv4 one in the first
/// 4 bytes), ports decimal, the rest hex; `opts` bits: 1 timestamps, 2 SACK, 4 window
/// scaling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRec {
    pub id: u32,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u32,
    pub local: [u8; 16],
    pub local_port: u16,
    pub remote: [u8; 16],
    pub remote_port: u16,
    /// `snd_una snd_nxt write_seq rcv_nxt snd_wl1 snd_wnd max_window rcv_wnd rcv_wup mss
    /// snd_wscale rcv_wscale opts timestamp`, in record order.
    pub words: [u32; 14],
    pub send: Vec<PipeRun>,
    pub recv: Vec<PipeRun>,
}

impl TcpRec {
    pub fn snd_una(&self) -> u32 {
        self.words[0]
    }
    pub fn snd_nxt(&self) -> u32 {
        self.words[1]
    }
    pub fn write_seq(&self) -> u32 {
        self.words[2]
    }
    pub fn rcv_nxt(&self) -> u32 {
        self.words[3]
    }
    /// `snd_wl1 snd_wnd max_window rcv_wnd rcv_wup` (`struct tcp_repair_window`).
    pub fn window(&self) -> [u32; 5] {
        [
            self.words[4],
            self.words[5],
            self.words[6],
            self.words[7],
            self.words[8],
        ]
    }
    pub fn mss(&self) -> u32 {
        self.words[9]
    }
    pub fn snd_wscale(&self) -> u32 {
        self.words[10]
    }
    pub fn rcv_wscale(&self) -> u32 {
        self.words[11]
    }
    pub fn opts(&self) -> u32 {
        self.words[12]
    }
    pub fn timestamp(&self) -> u32 {
        self.words[13]
    }
    /// Bytes of the send queue.
    pub fn send_len(&self) -> u64 {
        self.send.iter().map(|r| r.len).sum()
    }
    /// Bytes of the receive queue.
    pub fn recv_len(&self) -> u64 {
        self.recv.iter().map(|r| r.len).sum()
    }
}

/// `unix <id> <peer> <type>`, then per queued message `umsg`, its `udata <gpa> <len>`
/// runs and its `ufd <n> <flags> <pos> <kind> <path>` descriptors in flight: one end of a
/// connected Unix socket (`type` 1 stream, 2 datagram, 5 seqpacket) and the messages
/// queued for it to read. `peer` is the other end's id (0: no process holds it). Its
/// holders are the `fd` records of kind `sock` with the path `unix:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixRec {
    pub id: u32,
    pub peer: u32,
    pub sock_type: u32,
    /// The queued messages, in order.
    pub msgs: Vec<UnixMsg>,
}

impl UnixRec {
    /// The runs of old memory of all of its messages, in order.
    pub fn runs(&self) -> impl Iterator<Item = &PipeRun> + Clone {
        self.msgs.iter().flat_map(|m| &m.data)
    }

    /// The Unix sockets its messages carry in flight (`unix:<id>` descriptors).
    pub fn passed_unixes(&self) -> impl Iterator<Item = u32> + '_ {
        self.msgs
            .iter()
            .flat_map(|m| &m.fds)
            .filter_map(FdRec::unix_id)
    }
}

/// One message queued on a Unix socket: its bytes, and the descriptors passed with it
/// (`SCM_RIGHTS`), each described as an `fd` record is (`fd` is its place in the message).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnixMsg {
    /// Runs of old memory.
    pub data: Vec<PipeRun>,
    /// The files in flight with it, in order.
    pub fds: Vec<FdRec>,
}

/// `ulisten <id> <type> <backlog> <path>`: a listening Unix socket (`type` 1 stream, 5
/// seqpacket) bound at `path` (raw bytes; a leading NUL is an abstract name). Its holders
/// are the `fd` records of kind `sock` with the path `unix:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListenRec {
    pub id: u32,
    pub sock_type: u32,
    pub backlog: u32,
    pub path: Vec<u8>,
}

/// A terminal's settings (`struct termios2`): the flag words, the line discipline, the
/// 19 control characters and the speeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Termios {
    pub iflag: u32,
    pub oflag: u32,
    pub cflag: u32,
    pub lflag: u32,
    pub line: u8,
    pub cc: [u8; 19],
    pub ispeed: u32,
    pub ospeed: u32,
}

/// A terminal's window size (`struct winsize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Winsize {
    pub rows: u16,
    pub cols: u16,
    pub xpixel: u16,
    pub ypixel: u16,
}

/// `pty <id> <index> <sid> <pgrp> <termios> <winsize>`, then its `ptyin`, `ptyout` and
/// `ptytyped` runs: a pseudo-terminal pair (`/dev/pts/<index>`) made again before the
/// processes, with the slave's settings. `termios` is `<iflag> <oflag> <cflag> <lflag>
/// <line> <cc> <ispeed> <ospeed>` (hex; `cc` 38 hex digits), `winsize` `<rows> <cols>
/// <xpixel> <ypixel>` (decimal). `sid` is the session whose controlling terminal it is
/// and `pgrp` its foreground process group (0: none). Its holders are the `fd` records of
/// kind `other` with the path `pty:<id>:m` (the master) or `pty:<id>:s` (the slave).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PtyRec {
    /// Unique in the manifest.
    pub id: u32,
    /// The `/dev/pts` number it had.
    pub index: u32,
    pub sid: u32,
    pub pgrp: u32,
    pub termios: Termios,
    pub winsize: Winsize,
    /// `ptyin <gpa> <len>`: bytes the slave's readers had not read, as its line discipline
    /// left them (edited, echoed, mapped).
    pub input: Vec<PipeRun>,
    /// `ptyout <gpa> <len>`: bytes the master's readers had not read (the programs' output).
    pub output: Vec<PipeRun>,
    /// `ptytyped <gpa> <len>`: bytes written to the master that the slave's line
    /// discipline had not taken in yet (they are echoed and edited when they arrive).
    pub typed: Vec<PipeRun>,
}

impl PtyRec {
    /// Every run, input first.
    pub fn runs(&self) -> impl Iterator<Item = &PipeRun> {
        self.input.iter().chain(&self.output).chain(&self.typed)
    }
}

/// `tty <sid> <pgrp> <termios> <winsize> <path>`: a terminal that is not a
/// pseudo-terminal (the serial console), whose holders reopen it by `path`: its settings
/// are put back before they run, and the session `sid` (0: none) takes it again as its
/// controlling terminal with `pgrp` in the foreground.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtyRec {
    pub sid: u32,
    pub pgrp: u32,
    pub termios: Termios,
    pub winsize: Winsize,
    pub path: Vec<u8>,
}

/// `pdata <gpa> <len>`: bytes of a pipe in old guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipeRun {
    pub gpa: u64,
    pub len: u64,
}

/// `file <size> <mode> <update> <path>` and its `fcopy` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRec {
    /// The final length.
    pub size: u64,
    /// Permission bits (`i_mode & 0o7777`).
    pub mode: u32,
    /// How it is written.
    pub update: FileUpdate,
    /// Absolute path (raw bytes).
    pub path: Vec<u8>,
    /// The cached content.
    pub runs: Vec<FileRun>,
}

/// `fcopy <offset> <gpa> <len>`: `len` bytes of a file at `offset` from old memory `gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRun {
    pub offset: u64,
    pub gpa: u64,
    pub len: u64,
}

/// One process: everything between `process` and `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// `comm` (raw bytes, may be empty).
    pub comm: Vec<u8>,
    /// The executable's path.
    pub exe: Option<Vec<u8>>,
    /// The current directory.
    pub cwd: Option<Vec<u8>>,
    pub mm: Mm,
    /// `saved_auxv` words up to and including the `AT_NULL` pair.
    pub auxv: Vec<u64>,
    /// Sorted by address, not overlapping.
    pub vmas: Vec<Vma>,
    pub fds: Vec<FdRec>,
    /// The interest lists of its epoll descriptors.
    pub epoll: Vec<EpollRec>,
    /// The watches of its inotify descriptors, by descriptor and increasing watch
    /// descriptor.
    pub inotify: Vec<InotifyRec>,
    pub sigs: Vec<SigRec>,
    /// Its place in the process tree (absent in manifests of older writers).
    pub tree: Option<Tree>,
    /// Its umask, personality and resource limits (absent in manifests of older writers).
    pub limits: Option<Limits>,
    /// Signals queued and not delivered, in queue order.
    pub pending: Vec<Pending>,
    /// Its credentials (absent in manifests of older writers).
    pub creds: Option<Creds>,
    /// Its armed interval timers (`setitimer`), at most one of each kind.
    pub itimers: Vec<Itimer>,
    /// Its POSIX timers (`timer_create`), by increasing id.
    pub ptimers: Vec<Ptimer>,
    /// The id its next `timer_create` would have tried (`ptimer-next`; absent: not known).
    pub ptimer_next: Option<u32>,
    /// The leader first.
    pub threads: Vec<Thread>,
}

/// Most supplementary groups in a `cred` record (the line must stay under [`MAX_LINE`]).
pub const MAX_GROUPS: usize = 1024;

/// `cred <ruid> <euid> <suid> <fsuid> <rgid> <egid> <sgid> <fsgid> <securebits>
/// <inheritable> <permitted> <effective> <bounding> <ambient> <dumpable> <groups>` (hex;
/// `groups` comma-separated, `-` for none): a process's user and group ids, capability
/// sets, securebits and supplementary groups (`task->real_cred` of its leader), and its
/// mm's dumpable flag, which a change of ids resets. Put on every thread after the
/// rebuild, the privileged steps first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Creds {
    /// Real, effective, saved and filesystem user ids.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem group ids.
    pub gids: [u32; 4],
    pub securebits: u32,
    /// Inheritable, permitted, effective, bounding and ambient capability sets.
    pub caps: [u64; 5],
    /// `SUID_DUMP_DISABLE` 0, `SUID_DUMP_USER` 1, `SUID_DUMP_ROOT` 2.
    pub dumpable: u32,
    pub groups: Vec<u32>,
}

/// Most `pending` records in a process (a process's queue is bounded by its
/// `RLIMIT_SIGPENDING`; the standard signals add one each at most).
pub const MAX_PENDING: usize = 4096;

/// `pending <tid> <siginfo>`: a signal the dead kernel had queued and not delivered, for
/// the whole process (`tid` 0) or for one of its threads, with its `siginfo` (the kernel's
/// 48-byte `kernel_siginfo`, 96 hex digits: `si_signo`, `si_errno`, `si_code`, then the
/// union), queued again before the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub tid: u32,
    pub info: [u8; 48],
}

impl Pending {
    /// `si_signo`.
    pub fn signo(&self) -> i32 {
        i32::from_le_bytes([self.info[0], self.info[1], self.info[2], self.info[3]])
    }

    /// `si_code`.
    pub fn code(&self) -> i32 {
        i32::from_le_bytes([self.info[8], self.info[9], self.info[10], self.info[11]])
    }
}

/// `ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF`: the kinds of [`Itimer`].
pub const ITIMER_KINDS: u32 = 3;

/// `itimer <which> <value_ns> <interval_ns>`: an armed interval timer of the process
/// (`which`: 0 `ITIMER_REAL`, 1 `ITIMER_VIRTUAL`, 2 `ITIMER_PROF`, decimal), its time
/// left (nanoseconds of wall or CPU time from when the process runs again, not 0) and
/// its interval (0: one-shot), hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Itimer {
    pub which: u32,
    pub value_ns: u64,
    pub interval_ns: u64,
}

/// Most `ptimer` records in a process (the agent scans this many ids at most too).
pub const MAX_PTIMERS: usize = 4096;
/// Highest POSIX timer id (the kernel keeps them positive `int`s).
pub const MAX_PTIMER_ID: u32 = 0x7fff_ffff;
/// `SIGEV_SIGNAL`, `SIGEV_NONE`, `SIGEV_THREAD` and the `SIGEV_THREAD_ID` flag.
pub const SIGEV_SIGNAL: u32 = 0;
pub const SIGEV_NONE: u32 = 1;
pub const SIGEV_THREAD: u32 = 2;
pub const SIGEV_THREAD_ID: u32 = 4;
/// The clocks a `ptimer` may have: `CLOCK_REALTIME`, `CLOCK_MONOTONIC`,
/// `CLOCK_PROCESS_CPUTIME_ID` (the process's own), `CLOCK_BOOTTIME`.
pub const PTIMER_CLOCKS: [u32; 4] = [0, 1, 2, 7];

/// `ptimer <id> <clock> <notify> <signo> <tid> <abs> <value> <value_ns> <interval_ns>`:
/// a POSIX timer of the process, made again with the same id. `id`, `clock`, `notify`,
/// `signo` and `tid` decimal (`tid`: the thread a `SIGEV_THREAD_ID` timer signals, else
/// 0), `abs` 0 or 1, the rest hex: `value` is the `sigev_value` its signals carry,
/// `value_ns` when it fires next (0: disarmed; with `abs` 1 an absolute `CLOCK_REALTIME`
/// time, else nanoseconds from when the process runs again), `interval_ns` its period
/// (0: one-shot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ptimer {
    pub id: u32,
    pub clock: u32,
    pub notify: u32,
    pub signo: u32,
    pub tid: u32,
    pub absolute: bool,
    pub value: u64,
    pub value_ns: u64,
    pub interval_ns: u64,
}

/// `RLIM_NLIMITS` on Linux.
pub const RLIMITS: usize = 16;

/// `limits <umask> <personality> <cur0> <max0> ... <cur15> <max15>` (hex): a process's
/// file-mode creation mask, its execution domain (`personality(2)`) and its resource
/// limits (`RLIMIT_CPU` .. `RLIMIT_RTTIME`, `ffffffffffffffff` for unlimited), put back
/// before it runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub umask: u32,
    pub personality: u32,
    /// `(rlim_cur, rlim_max)` by resource number.
    pub rlimits: [(u64, u64); RLIMITS],
}

/// `tree <ppid> <pgid> <sid>`: a process's parent (its thread-group id), process group
/// and session in the dead kernel. The agent creates a process as the child of its parent
/// when the parent is resurrected too, so that `waitpid` goes on working; a session
/// leader (`sid == pid`) makes its session again and the parent puts each child in its
/// group, where that group exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tree {
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
}

/// `zombie <pid> <ppid> <pgid> <sid> <status>`: a process that had exited and that its
/// parent had not reaped. When the parent is resurrected, the agent makes a child with the
/// same pid that ends the same way (`status` is the `wait` status, hex), so the parent's
/// `waitpid` finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Zombie {
    pub pid: u32,
    pub tree: Tree,
    pub status: u32,
}

/// `epoll <epfd> <fd> <events> <data>`: `fd` is in the interest list of the epoll
/// descriptor `epfd` (an `fd` record of kind `other`, path `epoll`) with this
/// `epoll_event`. Written after the process's `fd` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollRec {
    pub epfd: i32,
    pub fd: i32,
    pub events: u32,
    pub data: u64,
}

/// `inotify <fd> <wd> <mask> <path>`: a watch of the inotify descriptor `fd` (an `fd`
/// record of kind `other`, path `inotify:<next wd>`) with watch descriptor `wd` (1 or
/// more), added with `mask` (hex, the `inotify_add_watch` mask) on the absolute `path`.
/// Written after the process's `fd` records, by increasing `wd` for each `fd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyRec {
    pub fd: i32,
    pub wd: i32,
    pub mask: u32,
    pub path: Vec<u8>,
}

/// Most `inotify` records in one process.
pub const MAX_INOTIFY_WATCHES: usize = 1 << 16;

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

impl Mm {
    /// The 11 words in record order.
    pub fn to_array(&self) -> [u64; 11] {
        [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
        ]
    }

    /// From the 11 words in record order.
    pub fn from_array(v: [u64; 11]) -> Self {
        let [start_code, end_code, start_data, end_data, start_brk, brk, start_stack, arg_start, arg_end, env_start, env_end] =
            v;
        Self {
            start_code,
            end_code,
            start_data,
            end_data,
            start_brk,
            brk,
            start_stack,
            arg_start,
            arg_end,
            env_start,
            env_end,
        }
    }
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
    /// Every kind, in no particular order.
    pub const ALL: [VmaKind; 7] = [
        Self::Anon,
        Self::File,
        Self::Heap,
        Self::Stack,
        Self::Vdso,
        Self::Vvar,
        Self::Vsyscall,
    ];

    /// The manifest word.
    pub fn name(self) -> &'static str {
        match self {
            Self::Anon => "anon",
            Self::File => "file",
            Self::Heap => "heap",
            Self::Stack => "stack",
            Self::Vdso => "vdso",
            Self::Vvar => "vvar",
            Self::Vsyscall => "vsyscall",
        }
    }

    /// The kind named `s`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Anonymous memory that the agent maps itself.
    pub fn is_anon(self) -> bool {
        matches!(self, Self::Anon | Self::Heap | Self::Stack)
    }

    /// Kernel-provided areas that take no `copy`.
    pub fn is_special(self) -> bool {
        matches!(self, Self::Vdso | Self::Vvar | Self::Vsyscall)
    }
}

/// `vma <start> <end> <prot> <share> <pgoff> <kind> [path]` and its `copy` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// [`PROT_READ`] | [`PROT_WRITE`] | [`PROT_EXEC`] bits.
    pub prot: i32,
    pub shared: bool,
    pub growsdown: bool,
    /// File offset in bytes.
    pub pgoff: u64,
    pub kind: VmaKind,
    /// Present for [`VmaKind::File`]; for shared anonymous memory that several processes
    /// share, `shm:<id>` (see [`Vma::shm_id`]).
    pub path: Option<Vec<u8>>,
    pub copies: Vec<Copy>,
}

impl Vma {
    /// The shared memory object a shared anonymous area maps (`shm:<id>`, `id` the
    /// kernel's inode number): areas with the same id, in any process, are one memory.
    /// `pgoff` is then the offset in that object.
    pub fn shm_id(&self) -> Option<u32> {
        if self.kind != VmaKind::Anon || !self.shared {
            return None;
        }
        decimal_id(self.path.as_deref()?.strip_prefix(b"shm:")?)
    }
}

/// `copy <vaddr> <gpa> <len>`: put `len` bytes from old memory `gpa` at `vaddr`.
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
    /// Every kind.
    pub const ALL: [FdKind; 6] = [
        Self::Reg,
        Self::Chr,
        Self::Dir,
        Self::Fifo,
        Self::Sock,
        Self::Other,
    ];

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

    /// The kind named `s`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Kinds reopened by path (their path must be absolute).
    pub fn reopens(self) -> bool {
        matches!(self, Self::Reg | Self::Chr | Self::Dir)
    }
}

/// `fd <fd> <flags> <pos> <kind> <path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdRec {
    pub fd: i32,
    /// `f_flags` (with `O_CLOEXEC` when close-on-exec).
    pub flags: u32,
    pub pos: u64,
    pub kind: FdKind,
    /// Absolute for [`FdKind::reopens`] kinds; may be empty for the others.
    pub path: Vec<u8>,
}

impl FdRec {
    /// The `pipe` an end of kind `fifo` refers to (`pipe:<id>`).
    pub fn pipe_id(&self) -> Option<u32> {
        if self.kind != FdKind::Fifo {
            return None;
        }
        decimal_id(self.path.strip_prefix(b"pipe:")?)
    }

    /// The path of an end of pipe `id`.
    pub fn pipe_path(id: u32) -> Vec<u8> {
        format!("pipe:{id}").into_bytes()
    }

    /// The `inet` socket a descriptor of kind `sock` holds (`inet:<id>`).
    pub fn inet_id(&self) -> Option<u32> {
        if self.kind != FdKind::Sock {
            return None;
        }
        decimal_id(self.path.strip_prefix(b"inet:")?)
    }

    /// The `unix` socket a descriptor of kind `sock` holds (`unix:<id>`).
    pub fn unix_id(&self) -> Option<u32> {
        if self.kind != FdKind::Sock {
            return None;
        }
        decimal_id(self.path.strip_prefix(b"unix:")?)
    }

    /// The memory file (`shm` record) a descriptor of kind `other` holds (`shm:<id>`).
    pub fn shm_id(&self) -> Option<u32> {
        if self.kind != FdKind::Other {
            return None;
        }
        decimal_id(self.path.strip_prefix(b"shm:")?)
    }

    /// A socket that comes back with its peer gone (kind `sock`, path `reset:<type>` or `reset:<type>:<what it was>`).
    pub fn is_reset(&self) -> bool {
        self.kind == FdKind::Sock && self.path.starts_with(b"reset:")
    }

    /// The `pty` an end of kind `other` refers to (`pty:<id>:m` or `pty:<id>:s`), and
    /// whether it is the master.
    pub fn pty_end(&self) -> Option<(u32, bool)> {
        if self.kind != FdKind::Other {
            return None;
        }
        let rest = self.path.strip_prefix(b"pty:")?;
        let (id, end) = rest.split_at(rest.len().checked_sub(2)?);
        let master = match end {
            b":m" => true,
            b":s" => false,
            _ => return None,
        };
        Some((decimal_id(id)?, master))
    }

    /// The path of an end of pty `id`.
    pub fn pty_path(id: u32, master: bool) -> Vec<u8> {
        format!("pty:{id}:{}", if master { 'm' } else { 's' }).into_bytes()
    }

    /// An epoll descriptor (kind `other`, path `epoll`).
    pub fn is_epoll(&self) -> bool {
        self.kind == FdKind::Other && self.path == b"epoll"
    }

    /// An inotify descriptor (kind `other`, path `inotify:<next wd>`): the id its group
    /// would have given the next watch (0: not known).
    pub fn inotify_next(&self) -> Option<u32> {
        if self.kind != FdKind::Other {
            return None;
        }
        decimal_id(self.path.strip_prefix(b"inotify:")?)
    }
}

/// A decimal u32 of at most 10 digits.
fn decimal_id(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 10 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
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
    pub tid: u32,
    pub comm: Vec<u8>,
    /// `struct user_regs_struct`, 27 words.
    pub regs: [u64; 27],
    /// The FXSAVE image.
    pub fpu: Box<[u8; 512]>,
    /// Blocked signals (0 when the record is absent).
    pub sigmask: u64,
    pub tid_address: Option<u64>,
    /// (head, len).
    pub robust_list: Option<(u64, u64)>,
    /// (addr, len, sig).
    pub rseq: Option<(u64, u32, u32)>,
}

/// One process caught inside `execve` after its point of no return: everything between
/// `exec` and `end`. The agent creates it with its pid, restores what survives an exec
/// (open files without `O_CLOEXEC`, current directory, ignored signals, signal mask) and
/// runs `execve(path, argv, envp)` in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub pid: u32,
    /// `comm` (raw bytes, may be empty).
    pub comm: Vec<u8>,
    /// The file to execute (absolute).
    pub path: Vec<u8>,
    /// The current directory.
    pub cwd: Option<Vec<u8>>,
    /// `argv`, in order (each without its NUL; may be empty strings).
    pub argv: Vec<Vec<u8>>,
    /// `envp`, in order.
    pub envp: Vec<Vec<u8>>,
    pub fds: Vec<FdRec>,
    /// Signal actions to install (only `SIG_IGN` survives an exec).
    pub sigs: Vec<SigRec>,
    /// Blocked signals.
    pub sigmask: u64,
    /// Its place in the process tree.
    pub tree: Option<Tree>,
    /// Its umask and resource limits (the personality is the exec's to set).
    pub limits: Option<Limits>,
    /// Its credentials as the exec had made them.
    pub creds: Option<Creds>,
    /// Signals queued and not delivered (they survive an exec), in queue order.
    pub pending: Vec<Pending>,
}

/// A process left out of a manifest, and why (not part of the text: the VMM reports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    pub pid: i32,
    /// `fd 5: cannot restore sock`, ...
    pub reason: String,
}
