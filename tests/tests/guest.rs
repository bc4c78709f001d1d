//! Real guests on real KVM. One guest is cold-booted (default image, 2 vCPUs, an added
//! file, two `--exec` programs), snapshotted while its counter runs, and every other test
//! restores that snapshot instead of booting again.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use owvmm_tests::{default_image, run_to_end, scratch, tail, Conn, Vm};
use serde_json::json;

/// Counts to 40, a second apart, then exits (so the guest powers off).
const COUNTER: &str =
    "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo \"count $i\"; sleep 1; done; echo counter-done";
const ADDED: &str = "owvmm-added-file-7f3a";
/// Echoes console lines; `bye` ends it, `sysrq-crash` panics the kernel from inside.
const READER: &str = "while read line < /dev/ttyS0; do echo \"console-input: $line\"; \
     case \"$line\" in bye) break;; sysrq-crash) echo c > /proc/sysrq-trigger;; esac; done";

struct Booted {
    snapshot: PathBuf,
    console: String,
    /// Highest count seen before the snapshot.
    count_at_snapshot: u32,
    boot_secs: f64,
}

fn last_count(console: &str) -> u32 {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("count "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Pauses the guest, reads its console, snapshots it: the snapshot's program state is
/// then exactly what the console showed (a line still in the guest's tty buffer comes out
/// after a restore, and is then the next one anyway).
fn snapshot_paused(vm: &Vm, dir: &std::path::Path) -> String {
    assert_eq!(vm.call(json!({"cmd": "pause"}))["ok"], json!(true));
    std::thread::sleep(Duration::from_millis(200));
    let console = vm.console();
    let r = vm.call(json!({"cmd": "snapshot", "dir": dir.display().to_string()}));
    assert_eq!(r["ok"], json!(true), "snapshot failed: {r}");
    console
}

/// What a kvm_pvm host sometimes does to a freshly started program (docs/design.md,
/// "known host problems"): the boot is retried when it shows.
const HOST_CRASH_SIGNS: &[&str] = &["segfault at", "Segmentation fault", "(sig11)"];

fn booted() -> &'static Booted {
    static B: OnceLock<Booted> = OnceLock::new();
    B.get_or_init(|| {
        let mut last_err = String::new();
        for attempt in 1..=3 {
            match boot_and_snapshot(attempt) {
                Ok(b) => return b,
                Err(e) => {
                    eprintln!("cold boot attempt {attempt} failed: {e}");
                    last_err = e;
                }
            }
        }
        panic!("cold boot failed three times; last: {last_err}");
    })
}

/// Cold-boots the default image's vmlinux with 2 vCPUs and `extra` options.
fn cold_boot(dir: &std::path::Path, extra: &[&str]) -> Vm {
    let mut args = vec!["--vcpus", "2"];
    args.extend_from_slice(extra);
    if !extra.contains(&"--on-crash") {
        args.extend(["--on-crash", "exit"]);
    }
    Vm::boot(dir, &args)
}

fn boot_and_snapshot(attempt: u32) -> Result<Booted, String> {
    let dir = scratch(&format!("boot-{attempt}"));
    let added = dir.join("hello.txt");
    std::fs::write(&added, ADDED).expect("write added file");
    let add = format!("{}:/opt/owvmm/hello.txt", added.display());
    let counter = format!(
        "echo added: $(cat /opt/owvmm/hello.txt); echo cpus: $(grep -c ^processor /proc/cpuinfo); {COUNTER}"
    );
    let t0 = Instant::now();
    let mut vm = cold_boot(&dir, &["--add", &add, "--exec", &counter, "--exec", READER]);
    vm.wait_agent_ready(Duration::from_secs(1200));
    let boot_secs = t0.elapsed().as_secs_f64();
    vm.wait_console_unless("count 2", HOST_CRASH_SIGNS, Duration::from_secs(300))?;
    let snapshot = dir.join("snap");
    let console = snapshot_paused(&vm, &snapshot);
    if let Some(b) = HOST_CRASH_SIGNS.iter().find(|b| console.contains(**b)) {
        return Err(format!("{b:?} on the console before the snapshot"));
    }
    let code = vm.stop();
    assert_eq!(code, 5, "stop must end with exit code 5");
    // scripts/test runs recovery/'s real-image tests on this memory afterwards.
    if let Some(out) = std::env::var_os("OWVMM_TEST_IMAGE_OUT") {
        let out = PathBuf::from(out);
        std::fs::copy(snapshot.join("memory.bin"), out.join("memory.bin"))
            .expect("copy the guest memory for recovery/'s tests");
    }
    Ok(Booted {
        count_at_snapshot: last_count(&console),
        snapshot,
        console,
        boot_secs,
    })
}

/// The crash kernel's warm standby: a freshly booted guest of the same shape (2 vCPUs,
/// 128 MiB) running nothing but the agent (`owvmm standby`, cached).
fn standby() -> &'static PathBuf {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| owvmm_tests::standby_dir(2))
}

fn restore(name: &str) -> Vm {
    restore_with(name, &[])
}

/// Restores the booted guest's snapshot with extra `owvmm run` options.
fn restore_with(name: &str, extra: &[&str]) -> Vm {
    let b = booted();
    let dir = scratch(name);
    let snap = b.snapshot.display().to_string();
    let mut args = vec!["--restore", snap.as_str()];
    args.extend_from_slice(extra);
    // These tests are about detection; recovery has its own (tests/recovery.rs).
    if !extra.contains(&"--on-crash") {
        args.extend(["--on-crash", "exit"]);
    }
    Vm::start_with_input(&dir, &args)
}

#[test]
fn cold_boot_runs_exec_programs_with_added_file_on_two_vcpus() {
    let b = booted();
    assert!(
        b.console.contains(&format!("added: {ADDED}")),
        "{}",
        tail(&b.console, 3000)
    );
    assert!(
        b.console.contains("cpus: 2"),
        "guest did not see 2 vCPUs: {}",
        tail(&b.console, 3000)
    );
    assert!(b.console.contains("count 1"));
    assert!(b.count_at_snapshot >= 2);
    eprintln!("cold boot to agent ready: {:.1} s", b.boot_secs);
}

#[test]
fn restore_continues_the_program_and_the_agent_answers() {
    let b = booted();
    let mut vm = restore("restore");
    let mut ev = vm.events();
    // The VMM resynchronises the guest clock through the agent after a restore.
    let set = ev.wait_event("guest-clock-set", Duration::from_secs(60));
    let guest_now: f64 = set["unix_time"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("unix_time");
    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (host_now - guest_now).abs() < 30.0,
        "guest clock {guest_now} vs host {host_now}"
    );

    let r = vm.call(json!({"cmd": "ping-agent"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let pong = ev.wait_event("agent-pong", Duration::from_secs(60));
    assert_eq!(pong["token"], r["sent"]);

    // The counter goes on from where the snapshot left it, without starting over.
    let next = format!("count {}", b.count_at_snapshot + 1);
    let console = vm.wait_console(&next, Duration::from_secs(120));
    assert!(
        !console.contains("count 1\n"),
        "the program restarted: {}",
        tail(&console, 2000)
    );

    let st = vm.call(json!({"cmd": "status"}));
    assert_eq!(st["state"], "running");
    assert_eq!(st["vcpus"], 2);
    assert_eq!(st["memory_mib"], 128);
    assert_eq!(st["agent"]["ready"], true);
    assert!(st["restored_from"].is_string());

    // When every program has ended (the counter, and the one reading the console once a
    // line is typed), the agent powers the guest off: exit code 0.
    vm.type_console("bye\n");
    vm.wait_console("console-input: bye", Duration::from_secs(60));
    vm.wait_console("counter-done", Duration::from_secs(600));
    let code = vm.wait_exit(Duration::from_secs(120));
    assert_eq!(code, 0, "expected power-off; stderr: {}", vm.stderr());
}

#[test]
fn console_input_reaches_a_program_reading_the_serial_port() {
    // A program of the booted guest sits in read() on ttyS0; type a line on the VMM's
    // standard input.
    let mut vm = restore("console-in");
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    vm.type_console("typed-through-com1\n");
    vm.wait_console("console-input: typed-through-com1", Duration::from_secs(60));
    // A pasted line far longer than the 64-byte FIFO arrives whole and in order: the rest
    // waits in the VMM until the guest has read the FIFO empty.
    let long = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(8);
    vm.type_console(&format!("{long}-end\n"));
    // Each byte is echoed by the guest's tty in emulated kernel code: slow under load.
    vm.wait_console(
        &format!("console-input: {long}-end"),
        Duration::from_secs(600),
    );
    assert_eq!(vm.stop(), 5);
}

#[test]
fn pause_stops_the_guest_and_resume_restarts_it() {
    let mut vm = restore("pause");
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    let r = vm.call(json!({"cmd": "pause"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(vm.call(json!({"cmd": "status"}))["state"], "paused");
    let before = vm.call(json!({"cmd": "status"}))["agent"]["heartbeats"].clone();
    let count_before = last_count(&vm.console());
    std::thread::sleep(Duration::from_secs(4));
    let after = vm.call(json!({"cmd": "status"}))["agent"]["heartbeats"].clone();
    assert_eq!(before, after, "heartbeats went on while paused");
    assert_eq!(
        count_before,
        last_count(&vm.console()),
        "guest ran while paused"
    );
    assert_eq!(vm.call(json!({"cmd": "resume"}))["ok"], json!(true));
    ev.wait_event("heartbeat", Duration::from_secs(60));
    assert_eq!(vm.call(json!({"cmd": "status"}))["state"], "running");
    // Where the vCPUs are is visible to the user.
    let v = vm.call(json!({"cmd": "vcpus"}));
    assert_eq!(v["vcpus"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(vm.stop(), 5);
}

#[test]
fn control_socket_serves_ten_clients_and_survives_bad_requests() {
    let vm = restore("clients");
    let sock = vm.sock.clone();
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let mut c = Conn::open(&sock);
                for _ in 0..5 {
                    c.send(&json!({"cmd": "status"}));
                    let r = c.recv(Duration::from_secs(30)).expect("reply");
                    assert_eq!(r["ok"], json!(true));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let mut c = Conn::open(&sock);
    for (bad, says) in [
        ("this is not json\n", "not JSON"),
        ("{}\n", "missing \"cmd\""),
        ("{\"cmd\":\"fly\"}\n", "unknown cmd \"fly\""),
        ("{\"cmd\":\"snapshot\"}\n", "dir"),
    ] {
        c.send_raw(bad.as_bytes());
        let r = c.recv(Duration::from_secs(10)).expect("error reply");
        assert_eq!(r["ok"], json!(false));
        let msg = r["error"].as_str().unwrap_or("");
        assert!(msg.contains(says), "{bad:?} -> {msg:?}");
    }
    // Still alive and serving on the same connection.
    c.send(&json!({"cmd": "status"}));
    assert_eq!(
        c.recv(Duration::from_secs(10)).expect("status")["ok"],
        json!(true)
    );
    // Mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).expect("sock").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut vm = vm;
    assert_eq!(vm.stop(), 5);
}

#[test]
fn a_restored_guest_can_be_snapshotted_and_restored_again() {
    let b = booted();
    let mut vm = restore("chain");
    let mut ev = vm.events();
    ev.wait_event("guest-clock-set", Duration::from_secs(60));
    let next = format!("count {}", b.count_at_snapshot + 2);
    vm.wait_console(&next, Duration::from_secs(120));
    let snap2 = scratch("chain-snap").join("snap");
    let at = last_count(&snapshot_paused(&vm, &snap2));
    assert_eq!(vm.stop(), 5);
    let dir = scratch("chain-2");
    let snap2 = snap2.display().to_string();
    let mut vm2 = Vm::start(&dir, &["--restore", &snap2, "--on-crash", "exit"]);
    vm2.wait_console(&format!("count {}", at + 1), Duration::from_secs(120));
    assert_eq!(vm2.stop(), 5);
}

#[test]
fn corrupt_or_truncated_snapshots_are_refused() {
    let b = booted();
    let bad = scratch("corrupt");
    let state = std::fs::read_to_string(b.snapshot.join("state.json")).expect("state");
    std::fs::write(
        bad.join("state.json"),
        state.replacen("\"vcpus\"", "\"vCPUs\"", 1),
    )
    .expect("write");
    std::fs::copy(b.snapshot.join("state.sha256"), bad.join("state.sha256")).expect("copy");
    std::fs::write(bad.join("memory.bin"), b"").expect("write");
    let (code, _, err) = run_to_end(&["run", "--restore", &bad.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("corrupt"), "{err}");

    let trunc = scratch("truncated");
    std::fs::copy(b.snapshot.join("state.json"), trunc.join("state.json")).expect("copy");
    std::fs::copy(b.snapshot.join("state.sha256"), trunc.join("state.sha256")).expect("copy");
    std::fs::write(trunc.join("memory.bin"), vec![0u8; 1 << 20]).expect("write");
    let (code, _, err) = run_to_end(&["run", "--restore", &trunc.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn ctl_crash_is_detected_frozen_and_dumped() {
    let dump = scratch("crash-ctl-dump").join("dump");
    let dump_s = dump.display().to_string();
    let mut vm = restore_with(
        "crash-ctl",
        &["--on-crash", "pause", "--crash-dump", &dump_s],
    );
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    let r = vm.call(json!({"cmd": "crash"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let crash = ev.wait_event("crash-detected", Duration::from_secs(120));
    assert_eq!(crash["cause"], "panic", "{crash}");
    let msg = crash["message"].as_str().unwrap_or("");
    assert!(msg.contains("owvmm: crash requested"), "{crash}");
    let frozen = ev.wait_event("guest-frozen", Duration::from_secs(30));
    assert_eq!(frozen["vcpus"], 2);
    let written = ev.wait_event("crash-dump-written", Duration::from_secs(60));
    assert!(written["bytes"].as_u64().unwrap_or(0) >= 128 << 20);
    assert!(dump.join("memory.bin").exists() && dump.join("state.json").exists());
    let st = vm.call(json!({"cmd": "status"}));
    assert_eq!(st["state"], "crashed", "{st}");
    assert_eq!(st["crashes"][0]["cause"], "panic");
    // The VMM stays up and serves requests after the crash.
    assert_eq!(vm.call(json!({"cmd": "vcpus"}))["ok"], json!(true));
    assert_eq!(vm.stop(), 5);
}

#[test]
fn a_panic_raised_inside_the_guest_is_detected() {
    let mut vm = restore("crash-sysrq");
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    vm.type_console("sysrq-crash\n");
    let crash = ev.wait_event("crash-detected", Duration::from_secs(120));
    assert_eq!(crash["cause"], "panic", "{crash}");
    assert!(
        crash["message"].as_str().unwrap_or("").contains("sysrq"),
        "{crash}"
    );
    // --on-crash exit: exit code 4 with the cause on stderr.
    assert_eq!(vm.wait_exit(Duration::from_secs(60)), 4);
    assert!(vm.stderr().contains("kernel panic"), "{}", vm.stderr());
}

#[test]
fn a_bzimage_boots_through_its_64_bit_entry_and_powers_off() {
    let (kdir, _) = default_image();
    let dir = scratch("bzimage");
    // A kernel of one's own and no `--initrd`: the default initramfs (with the agent,
    // which runs `--exec`) comes with it.
    let mut vm = Vm::start(
        &dir,
        &[
            "--kernel",
            &kdir.join("bzImage").display().to_string(),
            "--exec",
            "echo bzimage-boot-ok",
            "--on-crash",
            "exit",
        ],
    );
    vm.wait_console("bzimage-boot-ok", Duration::from_secs(1200));
    assert_eq!(vm.wait_exit(Duration::from_secs(120)), 0, "{}", vm.stderr());
    assert!(vm.stderr().contains("guest powered off"), "{}", vm.stderr());
}

#[test]
fn microreboot_recovers_from_three_crashes_in_a_row() {
    let sb = standby().display().to_string();
    let mut vm = restore_with(
        "microreboot",
        &["--on-crash", "microreboot", "--standby", &sb],
    );
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    for round in 0..3 {
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "round {round}: {r}");
        let crash = ev.wait_event("crash-detected", Duration::from_secs(120));
        assert_eq!(crash["cause"], "panic", "{crash}");
        // The dead kernel's processes, read from its memory.
        let x = ev.wait_event("extraction-done", Duration::from_secs(30));
        let procs = x["processes"].as_array().cloned().unwrap_or_default();
        assert!(procs.iter().any(|p| p["pid"] == 1), "{x}");
        if round == 0 {
            assert!(
                procs
                    .iter()
                    .any(|p| p["cmdline"].as_str().unwrap_or("").contains("count")),
                "the counter was not found in the dead kernel: {x}"
            );
        }
        let started = ev.wait_event("crash-kernel-running", Duration::from_secs(30));
        assert!(
            started["start_ms"].as_f64().unwrap_or(1e9) < 5000.0,
            "{started}"
        );
        // Recovery now includes resurrecting the guest's programs (seconds to minutes when
        // several guests share the 2 cores), as in tests/recovery.rs.
        let done = ev.wait_event("recovery-done", Duration::from_secs(600));
        let (before, after) = (
            done["rss_before_mib"].as_u64(),
            done["rss_after_mib"].as_u64(),
        );
        assert!(after <= before, "old memory not given back: {done}");
        let st = vm.call(json!({"cmd": "status"}));
        assert_eq!(st["state"], "running", "{st}");
        assert_eq!(st["crashes"].as_array().map(Vec::len), Some(round + 1));
        assert!(
            st["crashes"][round]["recovery"]["total_ms"].is_number(),
            "{st}"
        );
        // The crash kernel's agent lives.
        ev.wait_event("heartbeat", Duration::from_secs(60));
    }
    assert_eq!(vm.stop(), 5);
}

#[test]
fn an_instruction_kvm_cannot_emulate_is_reported_with_rip_bytes_and_symbol() {
    // Without the host workarounds on the command line, this host's KVM stops the guest
    // kernel at SLUB's cmpxchg16b early in boot (docs/design.md).
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("hardware KVM: no instruction here that KVM cannot emulate; skipped");
        return;
    }
    let (kdir, initrd) = default_image();
    let out = std::process::Command::new(owvmm_tests::owvmm_bin())
        .args([
            "run",
            "--kernel",
            &kdir.join("vmlinux").display().to_string(),
            "--initrd",
            &initrd.display().to_string(),
            "--cmdline",
            "console=ttyS0 reboot=k panic=-1 noxsave clearcpuid=popcnt,smap nopti",
            "--no-console",
        ])
        .env("OWVMM_NO_CMDLINE_QUIRKS", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run owvmm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains("emulation-failure on vCPU 0 at RIP 0xffffffff"),
        "{err}"
    );
    assert!(err.contains("___slab_alloc"), "no symbol: {err}");
    assert!(
        err.contains("bytes [f0 49 0f c7"),
        "no instruction bytes: {err}"
    );
}
