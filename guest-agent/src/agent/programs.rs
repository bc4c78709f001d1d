//! Starting the guest's programs: the commands of `/etc/owvmm/exec`, or an interactive
//! shell on the first serial port.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::sys;

/// The shell that runs every program.
pub const SHELL: &str = "/bin/sh";

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

fn base_command() -> Command {
    let mut c = Command::new(SHELL);
    c.env_clear().envs(ENV.iter().copied()).current_dir("/");
    c
}

/// Standard input that reads as empty: /dev/null, or the read end of a closed pipe when
/// /dev/null is missing.
fn null_input() -> io::Result<Stdio> {
    match File::open("/dev/null") {
        Ok(f) => Ok(Stdio::from(f)),
        Err(_) => {
            // The write end is closed when `_wr` drops here, so reads see end-of-file at once.
            let (rd, _wr) = sys::pipe()?;
            Ok(Stdio::from(rd))
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

/// Starts `/bin/sh -c CMD` in a new session, stdin from /dev/null, stdout and stderr on
/// `console`. Returns its PID.
pub fn spawn_command(cmd: &str, console: &Path) -> io::Result<u32> {
    let mut c = base_command();
    c.arg("-c").arg(cmd).stdin(null_input()?);
    match open_rw_noctty(console) {
        Ok(out) => {
            let err = out.try_clone()?;
            c.stdout(out).stderr(err);
        }
        Err(e) => crate::log!("{}: {e}; output goes where ours does", console.display()),
    }
    // SAFETY: the closure runs between fork and exec and only calls setsid, which is
    // async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(c.spawn()?.id())
}

/// Starts an interactive `/bin/sh` with `tty` as its controlling terminal and its
/// standard descriptors. Returns its PID.
pub fn spawn_shell(tty: &Path) -> io::Result<u32> {
    let t = open_rw_noctty(tty)?;
    let mut c = base_command();
    c.stdin(t.try_clone()?).stdout(t.try_clone()?).stderr(t);
    // SAFETY: the closure runs between fork and exec (after std has set up descriptors 0-2)
    // and only calls setsid and ioctl, both async-signal-safe; it allocates nothing.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Take the terminal as our controlling tty (stealing it if another session has
            // it); a shell without job control is still better than none, so ignore errors.
            libc::ioctl(0, libc::TIOCSCTTY, 1);
            Ok(())
        });
    }
    Ok(c.spawn()?.id())
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
