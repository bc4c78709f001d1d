//! The measured runs: owvmm cold boot, QEMU cold boot, owvmm restore, and one owvmm boot
//! with its console captured.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::ctl::{self, Conn};
use crate::error::{io, BenchError, Result};
use crate::proc::{tail, Guard};

/// What every run shares.
pub struct Setup {
    /// The owvmm binary.
    pub owvmm: PathBuf,
    /// The QEMU binary.
    pub qemu: String,
    /// The kernel (uncompressed vmlinux with a PVH note).
    pub vmlinux: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The full kernel command line given to both VMMs.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub mem: u64,
    /// Limit for each boot.
    pub timeout: Duration,
    /// Scratch directory for sockets, logs and the snapshot.
    pub work: PathBuf,
}

/// Polling interval while waiting for the guest (the same for every VMM).
pub const POLL: Duration = Duration::from_millis(50);

/// One cold boot.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Spawn to agent ready, seconds of wall time.
    pub wall_s: f64,
    /// The guest's CLOCK_BOOTTIME when the agent said `ready`, seconds.
    pub guest_uptime_s: Option<f64>,
    /// Readiness was seen by status polling (the event came before we subscribed).
    pub late: bool,
}

/// A snapshot taken after a boot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its directory.
    pub dir: PathBuf,
    /// Bytes written.
    pub bytes: u64,
    /// How long the VMM took to write it.
    pub ms: f64,
    /// The command line the snapshotted guest was booted with (from state.json).
    pub cmdline: Option<String>,
}

/// One restore.
#[derive(Debug, Clone)]
pub struct Restore {
    /// Spawn to the agent's answer, milliseconds of wall time.
    pub wall_ms: f64,
    /// The event that marked the answer (`guest-clock-set`, or `agent-pong` if we subscribed
    /// too late to be sure to see the clock answer).
    pub answered_by: &'static str,
    /// The VMM's own restore time from its `restored` event.
    pub restore_ms: Option<f64>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A running owvmm with its control socket and logs.
struct Owvmm {
    guard: Guard,
    sock: PathBuf,
    stderr: PathBuf,
    console: PathBuf,
}

impl Owvmm {
    fn start(s: &Setup, tag: &str, args: Vec<OsString>) -> Result<(Owvmm, Instant)> {
        let sock = s.work.join(format!("{tag}.sock"));
        let stderr = s.work.join(format!("{tag}.stderr"));
        let console = s.work.join(format!("{tag}.console"));
        let _ = std::fs::remove_file(&sock);
        let mut cmd = Command::new(&s.owvmm);
        cmd.arg("run").args(args).arg("--api-sock").arg(&sock);
        let t0 = Instant::now();
        let guard = Guard::spawn(cmd, "owvmm", &console, &stderr)?;
        Ok((
            Owvmm {
                guard,
                sock,
                stderr,
                console,
            },
            t0,
        ))
    }

    fn logs(&self) -> String {
        format!("{}{}", tail(&self.stderr, 10), tail(&self.console, 10))
    }

    /// Fails if owvmm has ended or the deadline passed.
    fn check(&mut self, what: &str, deadline: Instant, limit: Duration) -> Result<()> {
        let logs = self.logs();
        crate::proc::check_alive(&mut self.guard, what, deadline, limit, || logs)
    }

    /// Connects as soon as the socket accepts (polling every millisecond) and subscribes.
    fn subscribe(&mut self, deadline: Instant, limit: Duration) -> Result<Conn> {
        loop {
            if let Ok(c) = Conn::connect(&self.sock) {
                return c.subscribe();
            }
            self.check("waiting for the control socket", deadline, limit)?;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The next event, or an error naming the exit if the stream ends.
    fn next_event(
        &mut self,
        ev: &mut Conn,
        what: &str,
        deadline: Instant,
        limit: Duration,
    ) -> Result<Option<Value>> {
        match ev.next(POLL) {
            Ok(Some(v)) if v["event"] == json!("vmm-exit") => Err(BenchError::Exited {
                what: what.to_string(),
                status: format!("vmm-exit {v}"),
                detail: self.logs(),
            }),
            Ok(v) => {
                self.check(what, deadline, limit)?;
                Ok(v)
            }
            Err(e) => {
                // The stream ended: most likely owvmm exited; say how.
                std::thread::sleep(Duration::from_millis(200));
                self.check(what, deadline, limit)?;
                Err(e)
            }
        }
    }

    /// Asks owvmm to stop and reaps it.
    fn stop(self) {
        let _ = ctl::call(&self.sock, &json!({"cmd": "stop"}), Duration::from_secs(10));
        self.guard.finish(Duration::from_secs(15));
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// Boots owvmm to agent-ready. With `snapshot`, waits for the clock resync and snapshots
/// into that directory before stopping. With `console`, the guest console is kept in the
/// returned file.
pub fn owvmm_boot(
    s: &Setup,
    tag: &str,
    cmdline: &str,
    console: bool,
    snapshot: Option<&Path>,
) -> Result<(Boot, Option<Snapshot>, PathBuf)> {
    let mut args: Vec<OsString> = vec![
        "--kernel".into(),
        s.vmlinux.clone().into(),
        "--initrd".into(),
        s.initrd.clone().into(),
        "--cmdline".into(),
        cmdline.into(),
        "--mem".into(),
        s.mem.to_string().into(),
        "--vcpus".into(),
        "1".into(),
    ];
    if !console {
        args.push("--no-console".into());
    }
    let (mut vm, t0) = Owvmm::start(s, tag, args)?;
    let deadline = t0 + s.timeout;
    let what = format!("owvmm {tag}: waiting for agent-ready");
    let mut ev = vm.subscribe(deadline, s.timeout)?;
    // The agent may have come up before we subscribed: the status tells.
    let st = ctl::call(&vm.sock, &json!({"cmd": "status"}), Duration::from_secs(10))?;
    let boot = if st["agent"]["ready"] == json!(true) {
        late_ready(&mut vm, t0, deadline, s.timeout, &what)?
    } else {
        loop {
            if let Some(e) = vm.next_event(&mut ev, &what, deadline, s.timeout)? {
                if e["event"] == json!("agent-ready") {
                    break Boot {
                        wall_s: secs(t0.elapsed()),
                        guest_uptime_s: e["guest_uptime_ms"].as_f64().map(|v| v / 1000.0),
                        late: false,
                    };
                }
            }
        }
    };
    let snap = match snapshot {
        Some(dir) => Some(take_snapshot(&mut vm, &mut ev, dir, s.timeout)?),
        None => None,
    };
    let console_file = vm.console.clone();
    vm.stop();
    Ok((boot, snap, console_file))
}

/// Readiness that happened before we subscribed: polls status every POLL (it was already
/// true at the first poll, so this returns at once).
fn late_ready(
    vm: &mut Owvmm,
    t0: Instant,
    deadline: Instant,
    limit: Duration,
    what: &str,
) -> Result<Boot> {
    loop {
        let st = ctl::call(&vm.sock, &json!({"cmd": "status"}), Duration::from_secs(10))?;
        if st["agent"]["ready"] == json!(true) {
            return Ok(Boot {
                wall_s: secs(t0.elapsed()),
                guest_uptime_s: None,
                late: true,
            });
        }
        vm.check(what, deadline, limit)?;
        std::thread::sleep(POLL);
    }
}

fn take_snapshot(vm: &mut Owvmm, ev: &mut Conn, dir: &Path, limit: Duration) -> Result<Snapshot> {
    // Let the VMM's clock resync finish first, so the snapshot is of a settled guest.
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        match vm.next_event(
            ev,
            "waiting for guest-clock-set before the snapshot",
            settle,
            limit,
        ) {
            Ok(Some(e)) if e["event"] == json!("guest-clock-set") => break,
            Ok(_) => {}
            Err(BenchError::Timeout { .. }) => {
                eprintln!(
                    "bench: no guest-clock-set within 60 s after agent-ready; snapshotting anyway"
                );
                break;
            }
            Err(e) => return Err(e),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    let r = ctl::call(
        &vm.sock,
        &json!({"cmd": "snapshot", "dir": dir.display().to_string()}),
        Duration::from_secs(300),
    )?;
    let state = dir.join("state.json");
    let cmdline = std::fs::read(&state)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["machine"]["cmdline"].as_str().map(str::to_string));
    Ok(Snapshot {
        dir: dir.to_path_buf(),
        bytes: r["bytes"].as_u64().unwrap_or(0),
        ms: r["ms"].as_f64().unwrap_or(0.0),
        cmdline,
    })
}

/// Restores `dir` and waits until the agent answers the VMM's clock resync.
pub fn owvmm_restore(s: &Setup, tag: &str, dir: &Path) -> Result<Restore> {
    let args: Vec<OsString> = vec!["--restore".into(), dir.into(), "--no-console".into()];
    let (mut vm, t0) = Owvmm::start(s, tag, args)?;
    let deadline = t0 + s.timeout;
    let what = format!("owvmm {tag}: waiting for guest-clock-set");
    let mut ev = vm.subscribe(deadline, s.timeout)?;
    let subscribed = Instant::now();
    let mut restore_ms = None;
    let mut pinged = false;
    let result = loop {
        // `restored` is published right after the socket opens. If it did not come, we may
        // have subscribed after the clock answer too: then a ping's answer also counts.
        if restore_ms.is_none() && !pinged && subscribed.elapsed() > Duration::from_millis(200) {
            ev_ping(&vm.sock)?;
            pinged = true;
        }
        let Some(e) = vm.next_event(&mut ev, &what, deadline, s.timeout)? else {
            continue;
        };
        match e["event"].as_str() {
            Some("restored") => restore_ms = e["restore_ms"].as_f64(),
            Some("guest-clock-set") => break ("guest-clock-set", t0.elapsed()),
            Some("agent-pong") if pinged => break ("agent-pong", t0.elapsed()),
            _ => {}
        }
    };
    vm.stop();
    Ok(Restore {
        wall_ms: result.1.as_secs_f64() * 1000.0,
        answered_by: result.0,
        restore_ms,
    })
}

fn ev_ping(sock: &Path) -> Result<()> {
    ctl::call(sock, &json!({"cmd": "ping-agent"}), Duration::from_secs(10)).map(|_| ())
}

/// The QEMU command line used for the peer (without the serial files).
pub fn qemu_args(s: &Setup) -> Vec<String> {
    vec![
        "-accel".into(),
        "kvm".into(),
        "-cpu".into(),
        "host,-arch-capabilities".into(),
        "-m".into(),
        s.mem.to_string(),
        "-smp".into(),
        "1".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-nodefaults".into(),
        "-kernel".into(),
        s.vmlinux.display().to_string(),
        "-initrd".into(),
        s.initrd.display().to_string(),
        "-append".into(),
        s.cmdline.clone(),
    ]
}

/// Boots the same guest under QEMU+KVM until the agent writes `ready ` on ttyS1.
pub fn qemu_boot(s: &Setup, tag: &str) -> Result<Boot> {
    let console = s.work.join(format!("{tag}.console"));
    let ttys1 = s.work.join(format!("{tag}.ttyS1"));
    let out = s.work.join(format!("{tag}.stdout"));
    let err = s.work.join(format!("{tag}.stderr"));
    for p in [&console, &ttys1] {
        if p.to_string_lossy().contains(',') {
            return Err(BenchError::Missing(format!(
                "QEMU cannot take a serial file path with a comma: {}",
                p.display()
            )));
        }
        let _ = std::fs::remove_file(p);
    }
    let mut cmd = Command::new(&s.qemu);
    cmd.args(qemu_args(s))
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", ttys1.display()));
    let t0 = Instant::now();
    let mut guard = Guard::spawn(cmd, &s.qemu, &out, &err)?;
    let deadline = t0 + s.timeout;
    let what = format!("QEMU {tag}: waiting for `ready` on ttyS1");
    let logs = || format!("{}{}", tail(&err, 10), tail(&console, 10));
    loop {
        let text = match std::fs::read(&ttys1) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("cannot read QEMU's ttyS1 file", &ttys1)(e)),
        };
        if let Some(line) = text.lines().find(|l| l.starts_with("ready ")) {
            let wall_s = secs(t0.elapsed());
            let guest_uptime_s = line
                .split(' ')
                .nth(1)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|ms| ms / 1000.0);
            guard.kill();
            return Ok(Boot {
                wall_s,
                guest_uptime_s,
                late: false,
            });
        }
        if let Some(st) = guard.exited() {
            return Err(BenchError::Exited {
                what,
                status: st.to_string(),
                detail: logs(),
            });
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what,
                secs: s.timeout.as_secs(),
                detail: logs(),
            });
        }
        std::thread::sleep(POLL);
    }
}
