//! Starting the guest's programs: the commands of `/etc/owvmm/exec`, or an interactive
//! shell on the first serial port.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::sys;

/// The shell that runs every program.
pub const SHELL: &str = "/bin/sh";

/// The console's interactive shell: bash when the root has it, else busybox's ash (line
/// editing and history; with a root image `/bin/sh` is dash, which has neither), else sh.
pub fn interactive_shell() -> &'static str {
    ["/bin/bash", "/bin/ash"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or(SHELL)
}

/// The environment every program gets (and nothing else).
const ENV: &[(&str, &str)] = &[
    ("HOME", "/"),
    ("PATH", "/bin:/sbin:/usr/bin:/usr/sbin"),
    ("TERM", "linux"),
];

/// The commands of an exec file: one per line; blank lines and lines whose first
/// non-blank character is `#` are skipped; surrounding white space is trimmed.
pub fn parse_exec_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Reads the exec file; a missing file is no commands, other errors are logged.
pub fn read_exec_file(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_exec_file(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            crate::log!("{}: {e}", path.display());
            Vec::new()
        }
    }
}

/// Standard input that reads as empty: /dev/null, or the read end of a pipe whose write
/// end is closed when /dev/null is missing.
fn null_input() -> io::Result<OwnedFd> {
    match File::open("/dev/null") {
        Ok(f) => Ok(f.into()),
        Err(_) => {
            // `_wr` is closed when it drops here, so reads see end-of-file at once.
            let (rd, _wr) = sys::pipe()?;
            Ok(rd)
        }
    }
}

fn open_rw_noctty(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// Programs get PIDs from here on (see [`raise_pid_floor`]).
pub const USER_PID_FLOOR: u32 = 1000;

/// Is this agent a crash kernel's standby (`OW_AGENT_STANDBY=1` on the kernel command line,
/// set by `owvmm standby`)?
pub fn is_standby() -> bool {
    std::env::var_os("OW_AGENT_STANDBY").is_some_and(|v| v == "1")
}

/// Before starting a program: moves the kernel's next PID up to [`USER_PID_FLOOR`] when it
/// is below. A crash kernel is a freshly booted guest whose kernel threads hold the low
/// PIDs; programs that must get their PIDs back there after a crash
/// (docs/resurrection.md) must not have low ones. A standby does not do this: its PIDs
/// from the floor up must stay free for the processes it will take in (its own shell keeps
/// a low PID); it moves up after a resurrection ([`raise_pid_floor_now`]).
pub fn raise_pid_floor() {
    if !is_standby() {
        raise_pid_floor_now();
    }
}

/// [`raise_pid_floor`], also in a standby. No-op without
/// `/proc/sys/kernel/ns_last_pid` (CONFIG_PID_NS, CONFIG_CHECKPOINT_RESTORE), and when not
/// the guest's init (tests run the agent on a host).
pub fn raise_pid_floor_now() {
    const PATH: &str = "/proc/sys/kernel/ns_last_pid";
    if std::process::id() != 1 {
        return;
    }
    let last = std::fs::read_to_string(PATH)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if let Some(last) = last {
        if last < USER_PID_FLOOR - 1 {
            if let Err(e) = std::fs::write(PATH, format!("{}", USER_PID_FLOOR - 1)) {
                crate::log!("{PATH}: {e}");
            }
        }
    }
}

/// Starts `/bin/sh -c CMD` in a new session, stdin from /dev/null, stdout and stderr on
/// `console` (or on ours if that cannot be opened). Returns its PID.
pub fn spawn_command(cmd: &str, console: &Path) -> io::Result<libc::pid_t> {
    raise_pid_floor();
    let stdin = null_input()?;
    let out: OwnedFd = match open_rw_noctty(console) {
        Ok(f) => f.into(),
        Err(e) => {
            crate::log!("{}: {e}; output goes where ours does", console.display());
            io::stderr().as_fd().try_clone_to_owned()?
        }
    };
    let spec = Spec::new(&[SHELL, "-c", cmd])?;
    spec.spawn([stdin.as_raw_fd(), out.as_raw_fd(), out.as_raw_fd()], false)
}

/// Starts an interactive `/bin/sh` with `tty` as its controlling terminal and its
/// standard descriptors. Returns its PID.
pub fn spawn_shell(tty: &Path) -> io::Result<libc::pid_t> {
    raise_pid_floor();
    let t = open_rw_noctty(tty)?;
    let fd = t.as_raw_fd();
    Spec::new(&[interactive_shell()])?.spawn([fd, fd, fd], true)
}

/// Everything the child needs, prepared before fork: the child may not allocate.
struct Spec {
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl Spec {
    fn new(args: &[&str]) -> io::Result<Self> {
        let cstring = |s: String| {
            CString::new(s)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in argument"))
        };
        let mut strings = Vec::new();
        for a in args {
            strings.push(cstring((*a).to_owned())?);
        }
        let argc = strings.len();
        for (k, v) in ENV {
            strings.push(cstring(format!("{k}={v}"))?);
        }
        // Passed on from init's own environment (the kernel gives init the KEY=VALUE words
        // of its command line that it does not know): GLIBC_TUNABLES keeps glibc off AVX
        // on hosts that do not preserve AVX state across context switches
        // (guest-kernel/README.md).
        if let Some(v) = std::env::var_os("GLIBC_TUNABLES") {
            strings.push(cstring(format!("GLIBC_TUNABLES={}", v.to_string_lossy()))?);
        }
        // The CStrings' heap buffers do not move when `strings` is moved into Self.
        let mut argv: Vec<_> = strings[..argc].iter().map(|s| s.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<_> = strings[argc..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(Self {
            _strings: strings,
            argv,
            envp,
        })
    }

    /// fork + exec with `stdio` as descriptors 0, 1 and 2, in a new session; with `ctty`,
    /// descriptor 0 (a terminal) becomes the controlling terminal. An exec failure shows up
    /// as exit status 127.
    ///
    /// Not `std::process::Command`: std reports exec errors over a `socketpair(AF_UNIX)`,
    /// which a kernel without `CONFIG_UNIX` (such as our tiny guest kernel) fails with
    /// ENOSYS.
    fn spawn(&self, stdio: [RawFd; 3], ctty: bool) -> io::Result<libc::pid_t> {
        // SAFETY: we are single-threaded, so the child is a faithful copy of this thread;
        // it only makes async-signal-safe calls on data prepared before the fork
        // (see `child`) and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            // SAFETY: we are the new child; `child` never returns.
            0 => unsafe { self.child(stdio, ctty) },
            pid => Ok(pid),
        }
    }

    /// The child side of [`Spec::spawn`].
    ///
    /// # Safety
    /// Call only in a freshly forked child of a single-threaded process.
    unsafe fn child(&self, stdio: [RawFd; 3], ctty: bool) -> ! {
        // SAFETY: only async-signal-safe system calls on valid, pre-built arguments; the
        // process ends in execve or _exit.
        unsafe {
            sys::in_child_after_fork();
            libc::setsid();
            for (target, fd) in (0..).zip(stdio) {
                if fd == target {
                    // dup2 onto itself would keep FD_CLOEXEC: clear it instead.
                    libc::fcntl(fd, libc::F_SETFD, 0);
                } else {
                    libc::dup2(fd, target);
                }
            }
            if ctty {
                // Take the terminal (stealing it from another session if need be); a shell
                // without job control is better than none, so failure is ignored.
                libc::ioctl(0, libc::TIOCSCTTY, 1);
            }
            libc::chdir(c"/".as_ptr());
            libc::execve(self.argv[0], self.argv.as_ptr(), self.envp.as_ptr());
            let msg = b"ow-agent: cannot exec /bin/sh\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_file_parsing() {
        let text = "\n# a comment\necho hello from exec; sleep 3\n   \n  # indented comment\n  \
                    ls -l /  \r\nfoo # not a comment\n";
        assert_eq!(
            parse_exec_file(text),
            vec![
                "echo hello from exec; sleep 3".to_owned(),
                "ls -l /".to_owned(),
                "foo # not a comment".to_owned()
            ]
        );
        assert!(parse_exec_file("").is_empty());
        assert!(parse_exec_file("# only\n\n").is_empty());
    }
}
