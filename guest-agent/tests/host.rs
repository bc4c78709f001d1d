//! Runs the real `ow-agent` binary on the host (not as PID 1) with a pseudo-terminal as
//! its channel, and checks the protocol end to end: start and exit reports, ready,
//! heartbeat, requests, power-off when the programs are done, and the shutdown triggers.
//!
//! Outside PID 1 the agent does not mount, set the clock, signal `-1` or call reboot(2):
//! "power off" means it sends `poweroff` and exits with status 0.

use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;
use common::{openpty, Pty};

const TIMEOUT: Duration = Duration::from_secs(15);

/// Waits until `f` is readable or `deadline` passes.
fn readable(f: &File, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut pfd = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0
}

struct Running {
    child: Child,
    chan: Pty,
    pending: Vec<u8>,
    dir: PathBuf,
    /// Every line received, for failure messages.
    seen: Vec<String>,
}

impl Running {
    fn start(name: &str, exec: Option<&str>, shell_tty: Option<&Path>) -> Self {
        let dir = std::env::temp_dir().join(format!("ow-agent-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let exec_path = dir.join("exec");
        if let Some(text) = exec {
            fs::write(&exec_path, text).expect("write exec file");
        }
        let console = dir.join("console");
        File::create(&console).expect("console file");
        let chan = openpty();
        let child = Command::new(env!("CARGO_BIN_EXE_ow-agent"))
            .env("OW_AGENT_CHANNEL", &chan.slave_path)
            .env("OW_AGENT_EXEC", &exec_path)
            .env("OW_AGENT_CONSOLE", &console)
            .env(
                "OW_AGENT_SHELL_TTY",
                shell_tty.unwrap_or(Path::new("/nonexistent/tty")),
            )
            .spawn()
            .expect("spawn ow-agent");
        Self {
            child,
            chan,
            pending: Vec::new(),
            dir,
            seen: Vec::new(),
        }
    }

    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                let line = String::from_utf8(line).expect("utf-8 line");
                let line = line.trim_end_matches('\n').to_owned();
                self.seen.push(line.clone());
                return Some(line);
            }
            if !readable(&self.chan.master, deadline) {
                return None;
            }
            let mut buf = [0u8; 4096];
            match self.chan.master.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// Returns the next line that starts with `prefix`, skipping heartbeats only.
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.next_line(deadline) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(l) if l.starts_with("hb ") => {}
                Some(l) => panic!("expected '{prefix}...', got '{l}'; seen {:?}", self.seen),
                None => panic!("timed out waiting for '{prefix}'; seen {:?}", self.seen),
            }
        }
    }

    fn send(&mut self, line: &str) {
        self.chan
            .master
            .write_all(line.as_bytes())
            .expect("write to channel");
    }

    fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "agent did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn console(&self) -> String {
        fs::read_to_string(self.dir.join("console")).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn field(line: &str, n: usize) -> &str {
    line.split(' ').nth(n).unwrap_or("")
}

#[test]
fn exec_commands_requests_heartbeat_and_poweroff() {
    let mut a = Running::start(
        "exec",
        Some("# comment\n\necho hello from exec; sleep 2\nexit 3\nkill -9 $$\n"),
        None,
    );
    let s1 = a.expect("started ");
    assert!(s1.ends_with(" echo hello from exec; sleep 2"), "{s1}");
    let s2 = a.expect("started ");
    assert!(s2.ends_with(" exit 3"), "{s2}");
    let s3 = a.expect("started ");
    assert!(s3.ends_with(" kill -9 $$"), "{s3}");
    let ready = a.expect("ready ");
    assert_eq!(field(&ready, 2), ow_agent::VERSION);

    a.send("ping 7\n");
    a.send("time 1700000000.000000001\r\n");
    a.send("frob x\n");
    a.send("ping\n");
    a.send(&format!("{}\n", "x".repeat(5000)));
    a.send("\n");
    a.send("ping a b c\n");

    // Replies come in order; `exited` lines of the quick commands may come in between.
    let mut replies = Vec::new();
    let mut exits = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    let mut hb = None;
    while replies.len() < 6 || hb.is_none() || exits.len() < 3 {
        let line = a.next_line(deadline).expect("line before timeout");
        if line.starts_with("exited ") {
            exits.push(line);
        } else if line.starts_with("hb ") {
            hb.get_or_insert(line);
        } else {
            replies.push(line);
        }
    }
    assert_eq!(
        replies,
        vec![
            "pong 7".to_owned(),
            "time-set 1700000000.000000001".to_owned(),
            "err unknown request 'frob'".to_owned(),
            "err ping: missing field <token>".to_owned(),
            "err line too long (5000 bytes, limit 4096)".to_owned(),
            "pong a b c".to_owned(),
        ]
    );
    let hb = hb.unwrap_or_default();
    assert_eq!(field(&hb, 1), "1", "{hb}");
    let pid = |l: &str| field(l, 1).to_owned();
    assert!(
        exits.contains(&format!("exited {} 3 exit 3", pid(&s2))),
        "{exits:?}"
    );
    assert!(
        exits.contains(&format!("exited {} sig9 kill -9 $$", pid(&s3))),
        "{exits:?}"
    );
    assert!(
        exits.contains(&format!(
            "exited {} 0 echo hello from exec; sleep 2",
            pid(&s1)
        )),
        "{exits:?}"
    );
    assert_eq!(a.expect("poweroff"), "poweroff");
    assert_eq!(a.wait_exit(), 0);
    assert!(a.console().contains("hello from exec"), "{}", a.console());
}

#[test]
fn poweroff_request_ends_running_programs() {
    let mut a = Running::start("poweroff", Some("sleep 100\n"), None);
    let started = a.expect("started ");
    a.expect("ready ");
    a.send("poweroff\n");
    let exited = a.expect("exited ");
    // SIGTERM normally ends it; on a loaded machine the signal can land before the child
    // has execve'd and then the SIGKILL that follows 3 s later does. Either way it ends.
    let pid = field(&started, 1);
    assert!(
        exited == format!("exited {pid} sig15 sleep 100")
            || exited == format!("exited {pid} sig9 sleep 100"),
        "{exited}"
    );
    a.expect("poweroff");
    assert_eq!(a.wait_exit(), 0);
}

fn signal_test(name: &str, sig: libc::c_int, last: &str) {
    let mut a = Running::start(name, Some("sleep 100\n"), None);
    a.expect("started ");
    a.expect("ready ");
    let pid = libc::pid_t::try_from(a.child.id()).expect("pid");
    // SAFETY: plain kill(2) to the agent we spawned.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    a.expect("exited ");
    assert_eq!(a.expect(last), last);
    assert_eq!(a.wait_exit(), 0);
}

#[test]
fn sigterm_reboots() {
    signal_test("sigterm", libc::SIGTERM, "reboot");
}

#[test]
fn sigusr2_powers_off() {
    signal_test("sigusr2", libc::SIGUSR2, "poweroff");
}

#[test]
fn sigusr1_halts_as_poweroff() {
    signal_test("sigusr1", libc::SIGUSR1, "poweroff");
}

#[test]
fn no_exec_file_starts_a_shell_on_the_tty() {
    let mut tty = openpty();
    let mut a = Running::start("shell", None, Some(&tty.slave_path));
    let started = a.expect("started ");
    // bash here on the host; busybox's ash in the default guest.
    assert!(
        ["/bin/bash", "/bin/ash", "/bin/sh"]
            .iter()
            .any(|sh| started.contains(&format!("{sh} (interactive"))),
        "{started}"
    );
    a.expect("ready ");
    tty.master
        .write_all(b"echo \"env:$TERM:$HOME:$PATH\"; exit 5\n")
        .expect("write to shell");
    let exited = a.expect("exited ");
    assert_eq!(field(&exited, 1), field(&started, 1));
    assert_eq!(field(&exited, 2), "5");
    a.expect("poweroff");
    assert_eq!(a.wait_exit(), 0);
    // The shell ran with our environment and on that terminal.
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    while readable(&tty.master, deadline) {
        match tty.master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.contains("env:linux:/:/bin:/sbin:/usr/bin:/usr/sbin"),
        "{out}"
    );
}

#[test]
fn nothing_startable_powers_off() {
    // No exec file and no terminal for the shell: report it and power off.
    let mut a = Running::start("nothing", None, None);
    let err = a.expect("err ");
    assert!(
        err.starts_with("err start failed: /bin/") && err.contains("(interactive"),
        "{err}"
    );
    a.expect("ready ");
    a.expect("poweroff");
    assert_eq!(a.wait_exit(), 0);
}
