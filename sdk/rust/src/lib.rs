//! Crash procedures for programs in an owvmm guest: the Rust side of `sdk/include/owvmm.h`,
//! with the same wire protocol and behaviour (`docs/crash-procedures.md`).
//!
//! When the guest kernel crashes, owvmm starts a fresh one and its agent (PID 1) recreates
//! the processes of the dead kernel. A program that registered a procedure with
//! [`set_crash_procedure`] has it called once, in its main thread, after it was recreated:
//! the procedure sees what could not be restored ([`CrashInfo::lost`]) and returns
//! [`Decision::Continue`] (go on where it was) or [`Decision::Restart`] (start afresh: same
//! PID, argv, environment and cwd, every fd >= 3 closed, no signal blocked).
//!
//! ```no_run
//! use owvmm_sdk::{set_crash_procedure, CrashInfo, Decision};
//!
//! fn on_crash(info: &CrashInfo<'_>) -> Decision {
//!     // Signal handler context: no allocation, no locks (see below).
//!     if info.lost.is_empty() { Decision::Continue } else { Decision::Restart }
//! }
//! set_crash_procedure(on_crash).expect("signal 63");
//! ```
//!
//! Caveats, as for C: the procedure runs in a handler of signal [`SIGNAL`] (63), at an
//! arbitrary point of the program: if the program was allocating, or holding a lock, when
//! the kernel crashed, allocating or taking that lock deadlocks; use async-signal-safe calls
//! (`libc::write`, `open`, `fsync`, `rename`). It is delivered when signal 63 is unblocked
//! in the main thread. A panic in the procedure aborts the process. The strings in
//! [`Lost`] live until the procedure returns.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// The signal the agent queues (SIGRTMAX-1 on Linux x86-64).
pub const SIGNAL: c_int = 63;
/// The version of the crash block this crate reads.
pub const ABI_VERSION: u32 = 1;
/// The first 8 bytes of the crash block, in memory order.
pub const MAGIC: [u8; 8] = *b"OWCRASH1";

/// What the procedure decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on where the program was.
    Continue,
    /// Start the program afresh: same PID, argv, environment (as at its start) and cwd.
    Restart,
}

/// A procedure: called once per crash, in a signal handler.
pub type CrashProcedure = fn(&CrashInfo<'_>) -> Decision;

/// What a crash took: a file descriptor (or `fd` -1, something else), of a kind
/// (`tcp`, `unix`, `device`, `file`...), and why it could not come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost<'a> {
    pub fd: i32,
    pub kind: &'a CStr,
    pub why: &'a CStr,
}

/// `struct ow_lost`, as the agent writes it.
#[repr(C)]
struct RawLost {
    fd: c_int,
    kind: *const c_char,
    why: *const c_char,
}

/// The entries of the block, read in place (nothing is copied or allocated).
#[derive(Clone, Copy)]
pub struct LostList<'a>(&'a [RawLost]);

impl<'a> LostList<'a> {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<Lost<'a>> {
        self.0.get(i).map(|r| Lost {
            fd: r.fd,
            kind: cstr(r.kind),
            why: cstr(r.why),
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = Lost<'a>> + 'a {
        let list = *self;
        (0..list.len()).filter_map(move |i| list.get(i))
    }
}

impl std::fmt::Debug for LostList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A string of the block (empty for a NULL pointer).
fn cstr<'a>(p: *const c_char) -> &'a CStr {
    if p.is_null() {
        return c"";
    }
    // SAFETY: the agent points the strings at NUL-terminated bytes inside the block, which
    // stays mapped until the procedure returns (the lifetime of the `LostList`).
    unsafe { CStr::from_ptr(p) }
}

/// What the procedure is told.
#[derive(Clone, Copy, Debug)]
pub struct CrashInfo<'a> {
    /// The crashes this process image survived, 1 at the first (an image started by
    /// [`Decision::Restart`] counts from 0 again).
    pub crashes: u32,
    /// What could not be restored.
    pub lost: LostList<'a>,
}

/// The block header, at the page-aligned address the signal carries.
#[repr(C)]
struct Block {
    magic: [u8; 8],
    version: u32,
    n_lost: u32,
    lost: u64,
    map_len: u64,
}

const PAGE: usize = 4096;
/// Bytes of `/proc/self/cmdline`, and of `environ`, a restart reads at most.
const ARGS_CAP: usize = 1 << 20;

static PROC: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());
static CRASHES: AtomicU32 = AtomicU32::new(0);

/// Registers (or replaces) the procedure: installs the handler of signal 63
/// (`SA_SIGINFO | SA_RESTART`, nothing masked), which the agent looks for.
pub fn set_crash_procedure(proc: CrashProcedure) -> std::io::Result<()> {
    install(proc as *mut ())
}

/// Removes the procedure: signal 63 gets its default action again.
pub fn clear_crash_procedure() {
    // Setting SIG_DFL on a valid signal does not fail.
    let _ = install(std::ptr::null_mut());
}

fn install(proc: *mut ()) -> std::io::Result<()> {
    // SAFETY: plain C structs, all-zero is a valid value of each.
    let (mut sa, mut only, mut old): (libc::sigaction, libc::sigset_t, libc::sigset_t) =
        unsafe { std::mem::zeroed() };
    if proc.is_null() {
        sa.sa_sigaction = libc::SIG_DFL;
    } else {
        sa.sa_sigaction = handler as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void)
            as libc::sighandler_t;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    }
    // SAFETY: the sets are valid and owned; blocking signal 63 in this thread keeps the
    // handler from running between the store and the sigaction.
    unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, SIGNAL);
        libc::pthread_sigmask(libc::SIG_BLOCK, &only, &mut old);
        let was = PROC.swap(proc, Ordering::SeqCst);
        let r = libc::sigaction(SIGNAL, &sa, std::ptr::null_mut());
        let err = std::io::Error::last_os_error();
        if r != 0 {
            PROC.store(was, Ordering::SeqCst);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if r == 0 {
            Ok(())
        } else {
            Err(err)
        }
    }
}

/// A checked block: its mapping and its entries.
struct Crash {
    map: *mut c_void,
    map_len: usize,
    lost: &'static [RawLost],
}

/// The block a signal carries, or `None` when it is not the agent's.
///
/// # Safety
/// `si` is null or the siginfo the kernel gave the handler.
unsafe fn crash_of(si: *const libc::siginfo_t) -> Option<Crash> {
    // SAFETY: non-null, the kernel's siginfo; si_value is meaningful for SI_QUEUE.
    let a = unsafe {
        if si.is_null() || (*si).si_code != libc::SI_QUEUE {
            return None;
        }
        (*si).si_value().sival_ptr
    };
    let mut resident = 0u8;
    if a.is_null() || (a as usize) & (PAGE - 1) != 0 {
        return None;
    }
    // SAFETY: mincore only tells whether the page is mapped (a stray value is not read).
    if unsafe { libc::mincore(a, PAGE, &mut resident) } != 0 {
        return None;
    }
    // SAFETY: a mapped, page-aligned page: at least the 32 bytes of the header.
    let b = unsafe { &*a.cast::<Block>() };
    if b.magic != MAGIC || b.version != ABI_VERSION {
        return None;
    }
    let map_len = usize::try_from(b.map_len).ok()?;
    let n = usize::try_from(b.n_lost).ok()?;
    let off = usize::try_from(b.lost).ok()?.checked_sub(a as usize)?;
    let end = off.checked_add(n.checked_mul(std::mem::size_of::<RawLost>())?)?;
    if map_len < std::mem::size_of::<Block>()
        || (n > 0 && (off < std::mem::size_of::<Block>() || end > map_len))
    {
        return None;
    }
    // SAFETY: the n entries lie inside the mapping (checked above), which stays until the
    // handler unmaps it after the procedure; `RawLost` is `struct ow_lost`.
    let lost = unsafe { std::slice::from_raw_parts(a.cast::<u8>().add(off).cast::<RawLost>(), n) };
    Some(Crash {
        map: a,
        map_len,
        lost,
    })
}

extern "C" fn handler(_sig: c_int, si: *mut libc::siginfo_t, _uctx: *mut c_void) {
    // SAFETY: errno is this thread's; restored on the way out.
    let errno = unsafe { *libc::__errno_location() };
    let proc = PROC.load(Ordering::SeqCst);
    // SAFETY: `si` is the kernel's siginfo for this signal.
    if let (Some(c), false) = (unsafe { crash_of(si) }, proc.is_null()) {
        // SAFETY: only `set_crash_procedure` stores a non-null value, a `CrashProcedure`.
        let proc = unsafe { std::mem::transmute::<*mut (), CrashProcedure>(proc) };
        let info = CrashInfo {
            crashes: CRASHES.fetch_add(1, Ordering::SeqCst).wrapping_add(1),
            lost: LostList(c.lost),
        };
        let decision = proc(&info);
        // SAFETY: the agent's mapping, no longer referenced (`info` is not used again).
        unsafe { libc::munmap(c.map, c.map_len) };
        if decision == Decision::Restart {
            restart();
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// One line on stderr, with write(2) alone.
fn say(parts: &[&[u8]]) {
    for p in parts.iter().chain([&b"\n"[..]].iter()) {
        // SAFETY: a valid buffer of that length.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
}

/// The decimal digits of `n`, in `buf`.
fn digits(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789"[(n % 10) as usize];
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// A whole `/proc` file of NUL-separated strings in a fresh mapping, and its
/// NULL-terminated pointer array; `None` (said on stderr) when it cannot be had.
fn strings(path: &CStr) -> Option<*const *const c_char> {
    let what = path.to_bytes();
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        say(&[b"owvmm: crash procedure: cannot open ", what]);
        return None;
    }
    let buf = map(ARGS_CAP + 1);
    let mut len = 0usize;
    let mut failed = buf.is_null();
    while !failed && len <= ARGS_CAP {
        // SAFETY: reads into the rest of the mapping, ARGS_CAP + 1 bytes long.
        let r = unsafe { libc::read(fd, buf.add(len).cast(), ARGS_CAP + 1 - len) };
        match usize::try_from(r) {
            Ok(0) => break,
            Ok(r) => len += r,
            Err(_) if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
            }
            Err(_) => failed = true,
        }
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    if failed || len > ARGS_CAP {
        if !buf.is_null() {
            // SAFETY: the mapping made above.
            unsafe { libc::munmap(buf.cast(), ARGS_CAP + 1) };
        }
        let why: &[u8] = if len > ARGS_CAP {
            b"larger than 1 MiB: "
        } else {
            b"cannot read "
        };
        say(&[b"owvmm: crash procedure: ", why, what]);
        return None;
    }
    // SAFETY: `len` bytes were read into the mapping, one more byte is free.
    let bytes = unsafe {
        if len > 0 && *buf.add(len - 1) != 0 {
            *buf.add(len) = 0;
            len += 1;
        }
        std::slice::from_raw_parts(buf, len)
    };
    let n = bytes.iter().filter(|&&c| c == 0).count();
    let v = map((n + 1) * std::mem::size_of::<*const c_char>()).cast::<*const c_char>();
    if v.is_null() {
        say(&[b"owvmm: crash procedure: out of memory reading ", what]);
        return None;
    }
    let mut k = 0;
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        if c == 0 {
            // SAFETY: k < n, inside the n + 1 pointers mapped.
            unsafe { *v.add(k) = bytes[start..].as_ptr().cast() };
            k += 1;
            start = i + 1;
        }
    }
    // SAFETY: the last of the n + 1 pointers (mmap's zeroes already say NULL).
    unsafe { *v.add(k) = std::ptr::null() };
    Some(v.cast_const())
}

/// A fresh private anonymous mapping (null when there is none).
fn map(len: usize) -> *mut u8 {
    // SAFETY: a new mapping, no existing memory touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

/// [`Decision::Restart`]: returns only when the program cannot be restarted (it goes on).
/// Makes every socket >= 3 close abortively (`SO_LINGER` 0: a reset rather than a FIN),
/// so that the ports of the old connections are free at once for the new image. Raw
/// calls on a stack buffer only (this runs in a signal handler).
fn reset_sockets() {
    let mut buf = [0u8; 4096];
    // SAFETY: opens a directory of our own; the descriptor is closed below.
    let dfd = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dfd < 0 {
        return;
    }
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dfd, buf.as_mut_ptr(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { break };
        if n == 0 {
            break;
        }
        let mut off = 0;
        // A record: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
        while off + 19 <= n {
            let reclen = usize::from(u16::from_ne_bytes([buf[off + 16], buf[off + 17]]));
            if reclen == 0 {
                break;
            }
            let name = &buf[off + 19..(off + reclen).min(n)];
            off += reclen;
            let digits = name.iter().take_while(|b| b.is_ascii_digit());
            let fd = digits.fold(0i64, |a, &b| (a * 10 + i64::from(b - b'0')).min(1 << 24));
            let Ok(fd) = c_int::try_from(fd) else {
                continue;
            };
            if fd < 3 || fd == dfd || !name.first().is_some_and(u8::is_ascii_digit) {
                continue;
            }
            let mut ty: c_int = 0;
            let mut len = libc::socklen_t::try_from(std::mem::size_of::<c_int>()).unwrap_or(4);
            let lg = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let lg_len =
                libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8);
            // SAFETY: getsockopt writes an int into `ty`; setsockopt reads `lg`.
            unsafe {
                if libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_TYPE,
                    (&raw mut ty).cast(),
                    &mut len,
                ) == 0
                {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const lg).cast(),
                        lg_len,
                    );
                }
            }
        }
    }
    // SAFETY: closes the directory opened above.
    unsafe { libc::close(dfd) };
}

fn restart() {
    // SAFETY: a NULL-terminated array built by `strings`: its first entry is readable.
    let argv = strings(c"/proc/self/cmdline").filter(|a| unsafe { !(**a).is_null() });
    let envp = argv.and_then(|_| strings(c"/proc/self/environ"));
    let (Some(argv), Some(envp)) = (argv, envp) else {
        say(&[b"owvmm: crash procedure: cannot restart, the program goes on"]);
        return;
    };
    reset_sockets();
    // SAFETY: closes descriptors only; nothing of ours refers to them past this point.
    unsafe {
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            let mut rl: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0
                && rl.rlim_cur != libc::RLIM_INFINITY
            {
                rl.rlim_cur.min(1 << 20)
            } else {
                1 << 20
            };
            for fd in 3..c_int::try_from(max).unwrap_or(1 << 20) {
                libc::close(fd);
            }
        }
    }
    // SAFETY: the handler's mask would be inherited by the new image; then the arrays
    // built by `strings`, NULL-terminated, of NUL-terminated strings.
    let errno = unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(c"/proc/self/exe".as_ptr(), argv, envp);
        *libc::__errno_location()
    };
    let mut buf = [0u8; 10];
    say(&[
        b"owvmm: crash procedure: execve /proc/self/exe failed, errno ",
        digits(u32::try_from(errno).unwrap_or(0), &mut buf),
    ]);
    // SAFETY: ends the process; nothing to unwind.
    unsafe { libc::_exit(127) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// A block as the agent writes it, in a fresh mapping of `len` bytes.
    fn block(len: usize, lost: &[(i32, &str, &str)]) -> *mut u8 {
        let a = map(len);
        assert!(!a.is_null());
        let base = a as u64;
        let head = std::mem::size_of::<Block>();
        let mut strs = head + lost.len() * std::mem::size_of::<RawLost>();
        // SAFETY: writes inside the fresh mapping of `len` bytes (tests keep it small).
        unsafe {
            let put = |at: usize, bytes: &[u8]| {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), a.add(at), bytes.len())
            };
            put(0, &MAGIC);
            put(8, &ABI_VERSION.to_ne_bytes());
            put(12, &u32::try_from(lost.len()).expect("n").to_ne_bytes());
            put(16, &(base + 32).to_ne_bytes());
            put(24, &(len as u64).to_ne_bytes());
            for (i, (fd, kind, why)) in lost.iter().enumerate() {
                let at = head + i * 24;
                put(at, &fd.to_ne_bytes());
                for (field, s) in [(8, kind), (16, why)] {
                    put(at + field, &(base + strs as u64).to_ne_bytes());
                    put(strs, s.as_bytes());
                    strs += s.len() + 1; // the mapping's zero is the NUL
                }
            }
        }
        a
    }

    /// Queues signal 63 to this thread, as the agent does to the main thread.
    fn send(code: c_int, ptr: *mut u8) {
        // The kernel's siginfo for SI_QUEUE: signo, errno, code, pad, pid, uid, value.
        let mut si = [0u8; 128];
        // SAFETY: getpid and getuid cannot fail.
        let (pid, uid) = unsafe { (libc::getpid(), libc::getuid()) };
        si[0..4].copy_from_slice(&SIGNAL.to_ne_bytes());
        si[8..12].copy_from_slice(&code.to_ne_bytes());
        si[16..20].copy_from_slice(&pid.to_ne_bytes());
        si[20..24].copy_from_slice(&uid.to_ne_bytes());
        si[24..32].copy_from_slice(&(ptr as u64).to_ne_bytes());
        // SAFETY: a 128-byte siginfo to this very thread.
        let r = unsafe {
            let tid = libc::syscall(libc::SYS_gettid);
            libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, SIGNAL, si.as_ptr())
        };
        assert_eq!(
            r,
            0,
            "rt_tgsigqueueinfo: {}",
            std::io::Error::last_os_error()
        );
    }

    fn mapped(p: *mut u8) -> bool {
        let mut v = 0u8;
        // SAFETY: only asks whether the page is mapped.
        unsafe { libc::mincore(p.cast(), PAGE, &mut v) == 0 }
    }

    static CALLS: AtomicUsize = AtomicUsize::new(0);
    type Seen = (u32, Vec<(i32, String, String)>);
    static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

    // Allocates: fine here, the signal arrives at a known point of the test.
    fn record(info: &CrashInfo<'_>) -> Decision {
        CALLS.fetch_add(1, Ordering::SeqCst);
        let lost = info
            .lost
            .iter()
            .map(|l| {
                let s = |c: &CStr| c.to_string_lossy().into_owned();
                (l.fd, s(l.kind), s(l.why))
            })
            .collect();
        SEEN.lock().expect("lock").push((info.crashes, lost));
        Decision::Continue
    }

    fn handler_installed() -> bool {
        // SAFETY: reads the disposition into a zeroed struct.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(SIGNAL, std::ptr::null(), &mut sa), 0);
            sa.sa_flags & libc::SA_SIGINFO != 0
                && sa.sa_sigaction != libc::SIG_DFL
                && sa.sa_sigaction != libc::SIG_IGN
        }
    }

    const TWO: [(i32, &str, &str); 2] = [
        (5, "tcp", "established connection reset"),
        (-1, "device", "cannot restore /dev/foo"),
    ];

    fn owned(l: &[(i32, &str, &str)]) -> Vec<(i32, String, String)> {
        l.iter()
            .map(|(f, k, w)| (*f, k.to_string(), w.to_string()))
            .collect()
    }

    /// One test: the procedure, the counter and the disposition are the process's.
    #[test]
    fn signals() {
        assert!(!handler_installed());
        set_crash_procedure(record).expect("register");
        assert!(handler_installed());

        let b = block(PAGE, &TWO);
        send(libc::SI_QUEUE, b);
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        assert_eq!(SEEN.lock().expect("lock").last(), Some(&(1, owned(&TWO))));
        assert!(!mapped(b), "the block was not unmapped");

        // Not the agent's: ignored, the block left alone.
        let b = block(PAGE, &TWO);
        let ignored = |code, p: *mut u8| {
            send(code, p);
            assert_eq!(CALLS.load(Ordering::SeqCst), 1, "code {code}, {p:?}");
        };
        ignored(0, b); // SI_USER
        ignored(libc::SI_QUEUE, std::ptr::null_mut());
        ignored(libc::SI_QUEUE, 5 as *mut u8);
        // SAFETY: inside the page.
        ignored(libc::SI_QUEUE, unsafe { b.add(8) });
        let gone = block(PAGE, &[]);
        // SAFETY: our mapping.
        unsafe { libc::munmap(gone.cast(), PAGE) };
        ignored(libc::SI_QUEUE, gone);
        // SAFETY: bytes of the header, inside the page.
        unsafe {
            *b = b'X';
            ignored(libc::SI_QUEUE, b);
            *b = b'O';
            *b.add(8) = 2;
            ignored(libc::SI_QUEUE, b);
            *b.add(8) = 1;
            *b.add(12) = 200; // n_lost past the page
            ignored(libc::SI_QUEUE, b);
        }
        assert!(mapped(b));

        send(libc::SI_QUEUE, block(2 * PAGE, &TWO[..1]));
        assert_eq!(CALLS.load(Ordering::SeqCst), 2);
        assert_eq!(
            SEEN.lock().expect("lock").last(),
            Some(&(2, owned(&TWO[..1])))
        );
        send(libc::SI_QUEUE, block(PAGE, &[]));
        assert_eq!(SEEN.lock().expect("lock").last(), Some(&(3, vec![])));

        clear_crash_procedure();
        assert!(!handler_installed());
    }

    const RESTART_DIR: &str = "OWVMM_SDK_RESTART_DIR";
    const KEPT_FD: c_int = 100;

    fn restart_now(_: &CrashInfo<'_>) -> Decision {
        Decision::Restart
    }

    /// Runs `restart_child` in a child process, which restarts itself once.
    #[test]
    fn restart() {
        let dir = std::env::temp_dir().join(format!("owvmm-sdk-restart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "tests::restart_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(RESTART_DIR, &dir)
            .current_dir(&dir)
            .output()
            .expect("run the child");
        let text = String::from_utf8_lossy(&out.stdout);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "child: {out:?}");
        assert!(
            text.contains("first image") && text.contains("restarted ok"),
            "{text}"
        );
    }

    /// In the child only: the first image crashes with `Restart`, the second checks what
    /// it inherited.
    #[test]
    fn restart_child() {
        let Some(dir) = std::env::var_os(RESTART_DIR) else {
            return;
        };
        let marker = std::path::Path::new(&dir).join("pid");
        // SAFETY: getpid cannot fail.
        let pid = unsafe { libc::getpid() };
        let cwd = std::env::current_dir().expect("cwd");
        if let Ok(was) = std::fs::read_to_string(&marker) {
            assert_eq!(was, format!("{pid} {}", cwd.display()), "pid and cwd");
            // SAFETY: queries only.
            unsafe {
                assert_eq!(libc::fcntl(KEPT_FD, libc::F_GETFD), -1, "fd {KEPT_FD} kept");
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
                assert_eq!(libc::sigismember(&set, libc::SIGUSR1), 0);
                assert_eq!(libc::sigismember(&set, SIGNAL), 0);
            }
            assert!(!handler_installed());
            println!("restarted ok");
            return;
        }
        std::fs::write(&marker, format!("{pid} {}", cwd.display())).expect("marker");
        let f = std::fs::File::open(&marker).expect("open");
        // SAFETY: a new descriptor number for an open file; SIGUSR1 blocked in this thread.
        unsafe {
            use std::os::fd::AsRawFd;
            assert_eq!(libc::dup2(f.as_raw_fd(), KEPT_FD), KEPT_FD);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        set_crash_procedure(restart_now).expect("register");
        println!("first image");
        send(libc::SI_QUEUE, block(PAGE, &TWO));
        panic!("still in the first image after Decision::Restart");
    }
}
