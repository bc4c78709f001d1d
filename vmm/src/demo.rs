//! `owvmm demo`: boots the default guest with a counting program, snapshots it while it
//! runs, restores the snapshot and shows the program going on from where it was; then
//! crashes the guest kernel and shows the same program going on in a fresh kernel, with
//! the recovery's timings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use owvmm::api::client::Client;
use owvmm::error_chain;
use serde_json::{json, Value};

#[derive(Args)]
pub struct DemoArgs {
    /// Where to keep the demo's snapshot [default: ~/.cache/owvmm/demo-snapshot]
    #[arg(long)]
    snapshot_dir: Option<PathBuf>,
    /// Give up when the guest is not ready after this many seconds
    #[arg(long, default_value_t = 900)]
    timeout: u64,
}

#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("cannot build the default image")]
    Image(#[from] crate::image::ImageError),
    #[error("cannot start owvmm")]
    Spawn(#[source] std::io::Error),
    #[error("control socket")]
    Client(#[from] owvmm::api::client::ClientError),
    #[error("{0}")]
    Step(String),
}

const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo \"demo counter: $i (pid $$)\"; sleep 1; done";

/// The highest `demo counter: N` the guest console has shown.
#[derive(Clone, Default)]
struct Counter(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Counter {
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the counter passes `than`; false on timeout.
    fn wait_above(&self, than: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.get() > than {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

/// Spawns `owvmm` with its console passed through to ours and watched for the counter.
fn spawn_watched(args: &[&str], counter: &Counter) -> Result<Child, DemoError> {
    use std::io::{BufRead, BufReader, Write};
    let exe = std::env::current_exe().map_err(DemoError::Spawn)?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(DemoError::Spawn)?;
    if let Some(out) = child.stdout.take() {
        let counter = counter.clone();
        std::thread::spawn(move || {
            let mut stdout = std::io::stdout();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = writeln!(stdout, "{line}");
                if let Some(n) = line
                    .trim()
                    .strip_prefix("demo counter: ")
                    .and_then(|n| n.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    counter.0.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
    }
    Ok(child)
}

fn connect(sock: &Path, deadline: Instant) -> Result<Client, DemoError> {
    loop {
        match Client::connect(sock) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Waits on an event stream for `name`; returns the event.
fn wait_event(sock: &Path, name: &str, deadline: Instant) -> Result<Value, DemoError> {
    let mut c = connect(sock, deadline)?;
    c.call(&json!({"cmd": "events"}))?;
    // The event may have happened before we subscribed: status tells for agent readiness.
    if name == "agent-ready" {
        let mut s = connect(sock, deadline)?;
        let st = s.call(&json!({"cmd": "status"}))?;
        if st["agent"]["ready"] == json!(true) {
            return Ok(st);
        }
    }
    loop {
        if Instant::now() > deadline {
            return Err(DemoError::Step(format!("no {name} event in time")));
        }
        let ev = c.next_message()?;
        if ev["event"] == json!(name) {
            return Ok(ev);
        }
        if ev["event"] == json!("vmm-exit") {
            return Err(DemoError::Step(format!("the VM ended: {ev}")));
        }
    }
}

fn stop(sock: &Path, mut child: Child) {
    if let Ok(mut c) = Client::connect(sock) {
        let _ = c.call(&json!({"cmd": "stop"}));
    }
    let _ = child.wait();
}

fn steps(a: &DemoArgs) -> Result<(), DemoError> {
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    eprintln!("== owvmm demo: 1/6 default guest image (built once, then cached)");
    let img = crate::image::build(false, None)?;
    // The default guest's root: Debian's base on a read-only disk (or the initramfs, said why).
    let root = crate::default_root();
    eprintln!("\n== 2/6 the crash kernel's warm standby: a freshly booted guest, frozen (prepared once, then cached)");
    let spec = owvmm::standby::StandbySpec {
        kernel: img.vmlinux.clone(),
        initrd: Some(img.initramfs.clone()),
        cmdline: crate::image::default_cmdline(),
        mem_mib: 128,
        vcpus: 1,
    };
    let standby = spec
        .prepare(&mut |l| eprintln!("   {l}"))
        .map_err(|e| DemoError::Step(error_chain(&e)))?;
    eprintln!("   {}", standby.display());
    let snap = match &a.snapshot_dir {
        Some(d) => d.clone(),
        None => crate::image::cache_dir()?.join("demo-snapshot"),
    };
    let sock = std::env::temp_dir().join(format!("owvmm-demo-{}.sock", std::process::id()));
    let sock_s = sock.display().to_string();

    eprintln!("\n== 3/6 cold boot: a program that counts, started by the agent at boot");
    eprintln!("   (guest kernel code is slow on this host's KVM; this takes a while)");
    // The image built in step 1, named: the timed boot below builds nothing.
    let kernel_s = img.vmlinux.display().to_string();
    let (initrd, root_disk) = match &root {
        Some(r) => (&img.agent_initramfs, Some(format!("{}:/:ro", r.display()))),
        None => (&img.initramfs, None),
    };
    let initrd_s = initrd.display().to_string();
    let mut args = vec![
        "run",
        "--kernel",
        &kernel_s,
        "--initrd",
        &initrd_s,
        "--api-sock",
        &sock_s,
        "--exec",
        COUNTER,
        "--on-crash",
        "exit",
    ];
    if let Some(d) = &root_disk {
        args.extend(["--disk", d.as_str()]);
    }
    let t0 = Instant::now();
    let before = Counter::default();
    let child = spawn_watched(&args, &before)?;
    let boot = wait_event(&sock, "agent-ready", deadline);
    let boot_s = t0.elapsed().as_secs_f64();
    if let Err(e) = boot {
        stop(&sock, child);
        return Err(e);
    }

    before.wait_above(2, Duration::from_secs(120));

    eprintln!(
        "\n== 4/6 snapshot of the running guest into {}",
        snap.display()
    );
    let mut c = connect(&sock, deadline)?;
    // Pause first, so the counter the console shows is the one the snapshot holds.
    c.call(&json!({"cmd": "pause"}))?;
    std::thread::sleep(Duration::from_millis(200));
    let at_snapshot = before.get();
    let r = c.call(&json!({"cmd": "snapshot", "dir": snap.display().to_string()}))?;
    stop(&sock, child);
    if r["ok"] != json!(true) {
        return Err(DemoError::Step(format!("snapshot failed: {}", r["error"])));
    }

    eprintln!("\n== 5/6 restore: the same guest, the counter goes on where it was");
    let t1 = Instant::now();
    let snap_s = snap.display().to_string();
    let after = Counter::default();
    let child = spawn_watched(
        &[
            "run",
            "--api-sock",
            &sock_s,
            "--restore",
            &snap_s,
            "--on-crash",
            "exit",
        ],
        &after,
    )?;
    let restored = wait_event(&sock, "guest-clock-set", deadline);
    let restore_s = t1.elapsed().as_secs_f64();
    let went_on = after.wait_above(at_snapshot, Duration::from_secs(60));
    stop(&sock, child);
    restored?;
    if went_on {
        eprintln!(
            "\n== the snapshot held the counter at {at_snapshot}; the restored guest went on: {}",
            after.get()
        );
    } else {
        eprintln!("\n== the restored guest did not print its counter within 60 s");
    }
    eprintln!(
        "\n== cold boot to agent ready: {boot_s:.1} s; restore to agent answering: {:.0} ms ({:.0}x faster)",
        restore_s * 1000.0,
        boot_s / restore_s.max(1e-6)
    );
    crash_step(&sock, &snap, &standby, deadline)
}

/// Restores the snapshot once more and crashes its kernel: owvmm detects it, freezes the
/// guest, reads the dead kernel's processes, starts a fresh kernel from the standby and
/// brings the processes back in it.
fn crash_step(
    sock: &Path,
    snap: &Path,
    standby: &Path,
    deadline: Instant,
) -> Result<(), DemoError> {
    eprintln!("\n== 6/6 the guest kernel crashes (owvmm ctl crash); owvmm brings the counter back in a fresh kernel");
    let sock_s = sock.display().to_string();
    let snap_s = snap.display().to_string();
    let standby_s = standby.display().to_string();
    let counter = Counter::default();
    let child = spawn_watched(
        &[
            "run",
            "--api-sock",
            &sock_s,
            "--restore",
            &snap_s,
            "--on-crash",
            "microreboot",
            "--standby",
            &standby_s,
        ],
        &counter,
    )?;
    let result = watch_crash(sock, &counter, deadline);
    stop(sock, child);
    result
}

fn watch_crash(sock: &Path, counter: &Counter, deadline: Instant) -> Result<(), DemoError> {
    let mut events = connect(sock, deadline)?;
    events.call(&json!({"cmd": "events"}))?;
    let mut c = connect(sock, deadline)?;
    // Let the restored counter print once, so the value at the crash is known.
    let _ = wait_event(sock, "guest-clock-set", deadline);
    let resumed_at = counter.get();
    counter.wait_above(resumed_at, Duration::from_secs(30));
    let t = Instant::now();
    let r = c.call(&json!({"cmd": "crash"}))?;
    if r["ok"] != json!(true) {
        return Err(DemoError::Step(format!("crash refused: {}", r["error"])));
    }
    let at_crash = counter.get();
    loop {
        if Instant::now() > deadline {
            return Err(DemoError::Step("no recovery in time".into()));
        }
        let ev = events.next_message()?;
        match ev["event"].as_str() {
            Some("crash-detected") => eprintln!(
                "\n   {} ms: crash detected: {}",
                t.elapsed().as_millis(),
                ev["description"].as_str().unwrap_or("?")
            ),
            Some("guest-frozen") => eprintln!(
                "   vCPUs frozen in {:.1} ms, their state captured in {:.1} ms",
                ev["freeze_ms"].as_f64().unwrap_or(0.0),
                ev["capture_ms"].as_f64().unwrap_or(0.0)
            ),
            Some("extraction-done") => {
                eprintln!(
                    "   the dead kernel's processes, read from its memory in {:.1} ms:",
                    ev["ms"].as_f64().unwrap_or(0.0)
                );
                for p in ev["processes"].as_array().cloned().unwrap_or_default() {
                    let cmd: String = p["cmdline"]
                        .as_str()
                        .unwrap_or("")
                        .chars()
                        .take(70)
                        .collect();
                    eprintln!(
                        "     pid {:>4} {:<6} {:>3} memory areas  {cmd}",
                        p["pid"],
                        p["comm"].as_str().unwrap_or("?"),
                        p["vmas"]
                    );
                }
            }
            Some("crash-kernel-running") => eprintln!(
                "   fresh kernel running from its standby in {:.0} ms",
                ev["start_ms"].as_f64().unwrap_or(0.0)
            ),
            Some("process-restored") => eprintln!(
                "   pid {} restored ({} threads) in {} ms",
                ev["pid"], ev["threads"], ev["guest_ms"]
            ),
            Some("process-not-restored") => eprintln!(
                "   pid {} not restored: {}",
                ev["pid"],
                ev["reason"].as_str().unwrap_or("?")
            ),
            Some("recovery-done") => {
                let ms = |k: &str| ev[k].as_f64().unwrap_or(0.0);
                eprintln!(
                    "   recovered in {:.0} ms: freeze {:.0}, extract {:.0}, fresh kernel {:.0}, resurrect {:.0}; memory {} -> {} MiB",
                    ms("total_ms"),
                    ms("freeze_ms"),
                    ms("extract_ms"),
                    ms("crash_kernel_start_ms"),
                    ms("resurrect_ms"),
                    ev["rss_before_mib"],
                    ev["rss_after_mib"]
                );
                break;
            }
            Some("recovery-failed") | Some("microreboot-failed") => {
                return Err(DemoError::Step(format!("recovery failed: {ev}")));
            }
            _ => {}
        }
    }
    if counter.wait_above(at_crash + 2, Duration::from_secs(60)) {
        eprintln!(
            "\n== the counter was at {at_crash} when the kernel crashed; in the fresh kernel it went on: {}",
            counter.get()
        );
        Ok(())
    } else {
        Err(DemoError::Step(format!(
            "the counter did not go on past {at_crash} after the recovery"
        )))
    }
}

pub fn run(a: DemoArgs) -> ExitCode {
    match steps(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("owvmm: demo failed: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}
