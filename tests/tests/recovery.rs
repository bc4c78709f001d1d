//! Unmodified programs survive a guest kernel crash (issue 3, tests (a)–(e)).
//!
//! One guest is cold-booted with the programs of `tests/guest-programs/owtest.c` (a static
//! one with a checksummed heap, a dynamically linked one with threads, an appended file and
//! a SIGUSR1 handler, one blocked in `nanosleep`) plus a console reader that can panic the
//! kernel from inside, and snapshotted once they all run. Each test restores that snapshot
//! with `--on-crash microreboot`, crashes the kernel and checks that the very same
//! processes go on in the crash kernel.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use owvmm_tests::{
    default_image, fields, last_line, num, owtest_libraries, owtest_programs, scratch, standby_dir,
    tail, wait_console_after, wait_program, wait_recovery, Conn, Vm,
};
use serde_json::{json, Value};

const HEAP_MIB: u32 = 16;
const LOG: &str = "/tmp/owtest-threads.log";
/// Panics the kernel from inside on the console line `sysrq-crash`; runs
/// `owtest-static corrupt ...` on a line `corrupt ...`.
const SYSRQ_READER: &str = "while read line < /dev/ttyS0; do \
     case \"$line\" in sysrq-crash) echo c > /proc/sysrq-trigger;; \
     corrupt*) /opt/owtest/owtest-static $line & ;; esac; done";

struct Fixture {
    snapshot: PathBuf,
    /// pids of the programs, by mode (`heap`, `threads`, `sleeper`).
    pids: HashMap<String, u32>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // The standby first: the cold boot below then has both cores.
        standby_dir(2);
        let (st, dy) = owtest_programs();
        let dir = scratch("survivors");
        let mut adds = vec![
            format!("{}:/opt/owtest/owtest-static", st.display()),
            format!("{}:/opt/owtest/owtest-dyn", dy.display()),
        ];
        for (host, guest) in owtest_libraries() {
            adds.push(format!("{}:{guest}", host.display()));
        }
        let heap = format!("/opt/owtest/owtest-static heap {HEAP_MIB}");
        let threads = format!("/opt/owtest/owtest-dyn threads {LOG}");
        let mut args = vec!["--vcpus", "2", "--on-crash", "exit"];
        for a in &adds {
            args.extend(["--add", a.as_str()]);
        }
        args.extend([
            "--exec",
            &heap,
            "--exec",
            &threads,
            "--exec",
            "/opt/owtest/owtest-static sleeper",
            "--exec",
            SYSRQ_READER,
        ]);
        let mut vm = Vm::boot(&dir, &args);
        vm.wait_agent_ready(Duration::from_secs(1200));
        let pids = wait_console_after(&mut vm, 0, Duration::from_secs(900), "all programs", |c| {
            let h = last_line(c, "heap").filter(|l| num(l, "count") >= 2)?;
            let t = last_line(c, "threads").filter(|l| num(l, "count") >= 2)?;
            let s = last_line(c, "sleeper")?;
            Some(
                [("heap", h), ("threads", t), ("sleeper", s)]
                    .iter()
                    .map(|(m, l)| ((*m).to_owned(), u32::try_from(num(l, "pid")).unwrap_or(0)))
                    .collect::<HashMap<_, _>>(),
            )
        });
        let snapshot = dir.join("snap");
        let r = vm.call(json!({"cmd": "snapshot", "dir": snapshot.display().to_string()}));
        assert_eq!(r["ok"], json!(true), "snapshot failed: {r}");
        assert_eq!(vm.stop(), 5);
        Fixture { snapshot, pids }
    })
}

/// One recovery at a time: each resurrection is minutes of emulated kernel code here, and
/// four at once on a two-core host stretch each past its time limits.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

/// Restores the fixture with `--on-crash microreboot` (the standby comes from the cache).
fn restore(name: &str) -> Vm {
    let f = fixture();
    let dir = scratch(name);
    let snap = f.snapshot.display().to_string();
    Vm::start_with_input(&dir, &["--restore", &snap, "--on-crash", "microreboot"])
}

/// Crashes the guest with `how`, waits for the recovery, then checks every program.
fn crash_and_check(vm: &mut Vm, ev: &mut Conn, how: &str, round: usize) {
    let f = fixture();
    let before = vm.console();
    let heap_before = last_line(&before, "heap").map_or(0, |l| num(l, "count"));
    let threads_line = last_line(&before, "threads").unwrap_or("").to_owned();
    let from = before.len();
    match how {
        "ctl" => {
            let r = vm.call(json!({"cmd": "crash"}));
            assert_eq!(r["ok"], json!(true), "round {round}: {r}");
        }
        _ => vm.type_console("sysrq-crash\n"),
    }
    let (done, restored) = wait_recovery(ev);
    for mode in ["heap", "threads", "sleeper"] {
        let pid = f.pids[mode];
        assert!(
            restored.contains(&u64::from(pid)),
            "round {round}: {mode} (pid {pid}) not restored: {restored:?}; {done}\nstderr: {}",
            vm.stderr()
        );
    }
    // (a) same pid, the count goes on, the checksum holds.
    // A whole line (the dying kernel's panic message can cut the last one in two).
    let heap = wait_program(vm, from, "heap", f.pids["heap"], |l| {
        num(l, "count") > heap_before && l.contains(" sum=") && l.contains(" f=")
    });
    assert!(heap.contains("sum=ok"), "round {round}: {heap}");
    let after = vm.console();
    assert!(
        !after[from..].contains("sum=BAD"),
        "round {round}: heap checksum broken: {}",
        tail(&after, 3000)
    );
    assert!(
        !after[from..].contains(&format!("heap pid={} count=1 ", f.pids["heap"])),
        "round {round}: the heap program started over"
    );
    // (b) threads: the file is whole, its offset goes on, the workers run, SIGUSR1's
    // handler still counts.
    let t_before = num(&threads_line, "count");
    let off_before = num(&threads_line, "off");
    let usr1_before = num(&threads_line, "usr1");
    // A whole line again: it ends with `usr1=N` (a kernel message can cut one in two).
    let t = wait_program(vm, from, "threads", f.pids["threads"], |l| {
        num(l, "count") >= t_before + 3
            && l.contains(" file=")
            && l.rsplit_once(" usr1=")
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    assert!(t.contains("file=ok"), "round {round}: {t}");
    assert!(
        num(&t, "off") > off_before,
        "round {round}: {t} vs {threads_line}"
    );
    assert!(
        num(&t, "usr1") > usr1_before,
        "round {round}: {t} vs {threads_line}"
    );
    let workers: Vec<u64> = fields(&t)
        .get("t")
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    assert_eq!(workers.len(), 3, "{t}");
    // (c) the sleeper's nanosleep returned EINTR and it retried.
    let s = wait_program(vm, from, "sleeper", f.pids["sleeper"], |l| {
        l.contains("EINTR")
    });
    assert!(s.contains("retrying"), "{s}");
    eprintln!(
        "round {round} ({how}): recovered in {:.0} ms (resurrect {:.0} ms); {heap}; {t}",
        done["total_ms"].as_f64().unwrap_or(0.0),
        done["resurrect_ms"].as_f64().unwrap_or(0.0)
    );
}

#[test]
fn programs_survive_ctl_crash_with_pid_memory_threads_files_and_eintr() {
    let _one = one_at_a_time();
    let mut vm = restore("survive-ctl");
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    crash_and_check(&mut vm, &mut ev, "ctl", 0);
    let st = vm.call(json!({"cmd": "status"}));
    assert_eq!(st["state"], "running", "{st}");
    let rec = &st["crashes"][0]["recovery"];
    assert!(rec["restored"].as_u64().unwrap_or(0) >= 3, "{st}");
    assert!(
        rec["rss_after_mib"].as_u64() <= rec["rss_before_mib"].as_u64(),
        "{st}"
    );
    assert_eq!(vm.stop(), 5);
}

#[test]
fn programs_survive_three_crashes_in_a_row() {
    let _one = one_at_a_time();
    let mut vm = restore("survive-three");
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    for round in 0..3 {
        crash_and_check(&mut vm, &mut ev, "ctl", round);
        ev.wait_event("heartbeat", Duration::from_secs(60));
    }
    let st = vm.call(json!({"cmd": "status"}));
    assert_eq!(st["crashes"].as_array().map(Vec::len), Some(3), "{st}");
    assert_eq!(vm.stop(), 5);
}

#[test]
fn programs_survive_a_panic_raised_inside_the_guest() {
    let _one = one_at_a_time();
    let mut vm = restore("survive-sysrq");
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    crash_and_check(&mut vm, &mut ev, "sysrq", 0);
    let st = vm.call(json!({"cmd": "status"}));
    assert!(
        st["crashes"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("sysrq"),
        "{st}"
    );
    assert_eq!(vm.stop(), 5);
}

#[test]
fn a_crash_of_the_crash_kernel_during_recovery_is_reported_and_the_vmm_stays_up() {
    let _one = one_at_a_time();
    let mut vm = restore("crash-in-recovery");
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    let r = vm.call(json!({"cmd": "crash"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    ev.wait_event("crash-kernel-running", Duration::from_secs(120));
    // The crash kernel is busy resurrecting (seconds here): crash it too.
    ev.wait_event("guest-clock-set", Duration::from_secs(60));
    let r = vm.call(json!({"cmd": "crash"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let failed = ev.wait_event("recovery-failed", Duration::from_secs(120));
    assert_eq!(failed["cause"], "panic", "{failed}");
    let st = vm.call(json!({"cmd": "status"}));
    assert_eq!(st["ok"], json!(true), "{st}");
    assert_eq!(st["crashes"].as_array().map(Vec::len), Some(2), "{st}");
    assert_eq!(vm.stop(), 5);
}

/// Sends `status` on a fresh connection and waits at most a second for the answer.
fn status_within_a_second(vm: &Vm, what: &str) -> Value {
    let mut c = Conn::open(&vm.sock);
    c.send(&json!({"cmd": "status"}));
    let st = c
        .recv(Duration::from_secs(1))
        .unwrap_or_else(|| panic!("status was not answered within a second {what}"));
    assert_eq!(st["ok"], json!(true), "{st}");
    st
}

/// `pid=N:ok` of a `corrupt` line's field `key`.
fn victim(line: &str, key: &str) -> u64 {
    let v = fields(line).get(key).copied().unwrap_or("");
    assert!(v.ends_with(":ok"), "corruption {key} failed: {line}");
    v.split(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_dead_kernel_with_corrupted_structures_costs_only_the_processes_it_corrupted() {
    let _one = one_at_a_time();
    use owvmm_recovery::{btf::Btf, symbols::SymbolTable};
    let mut vm = restore("hostile");
    let mut ev = vm.events();
    ev.wait_event("heartbeat", Duration::from_secs(60));
    // Where the corrupter must write, from the kernel's own BTF and System.map.
    let (kdir, _) = default_image();
    let btf = Btf::parse(&std::fs::read(kdir.join("vmlinux.btf")).expect("vmlinux.btf"))
        .expect("BTF parses");
    let map = std::fs::read_to_string(kdir.join("System.map")).expect("System.map");
    let syms = SymbolTable::parse_system_map(&map).expect("System.map parses");
    let off = |s: &str, m: &str| btf.member(s, m).expect("member in BTF").offset_bytes;
    let line = format!(
        "corrupt {:x} {} {} {} {}",
        syms.addr_of("init_task").expect("init_task"),
        off("task_struct", "tasks"),
        off("task_struct", "pid"),
        off("task_struct", "mm"),
        off("mm_struct", "mm_mt") + off("maple_tree", "ma_root"),
    );
    let from = vm.console().len();
    vm.type_console(&format!("{line}\n"));
    let done = wait_console_after(&mut vm, from, Duration::from_secs(120), "corrupt", |c| {
        c.lines()
            .map(str::trim)
            .find(|l| l.starts_with("corrupt pid=") && l.contains(" cycle="))
            .map(str::to_owned)
    });
    let (wild, maple, cycle) = (
        victim(&done, "wild"),
        victim(&done, "maple"),
        victim(&done, "cycle"),
    );
    let r = vm.call(json!({"cmd": "crash"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    // Throughout the recovery the VMM answers at once.
    let mut restored = Vec::new();
    let mut extraction = Value::Null;
    let mut recovered = Value::Null;
    for round in 0..3000 {
        status_within_a_second(
            &vm,
            &format!("(round {round} of polling during the recovery)"),
        );
        while let Some(e) = ev.recv(Duration::from_millis(200)) {
            match e["event"].as_str() {
                Some("process-restored") => restored.push(e["pid"].as_u64().unwrap_or(0)),
                Some("extraction-done") => extraction = e,
                Some("recovery-failed") | Some("microreboot-failed") => {
                    panic!("recovery failed: {e}\nstderr: {}", vm.stderr())
                }
                Some("recovery-done") => recovered = e,
                _ => {}
            }
        }
        if !recovered.is_null() {
            break;
        }
    }
    assert!(
        !recovered.is_null(),
        "no recovery-done; stderr: {}",
        vm.stderr()
    );
    let f = fixture();
    for mode in ["heap", "threads", "sleeper"] {
        let pid = u64::from(f.pids[mode]);
        assert!(
            restored.contains(&pid),
            "{mode} (pid {pid}) not restored: {restored:?}; {recovered}"
        );
    }
    let excluded = recovered["excluded"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let reason = |pid: u64| {
        excluded
            .iter()
            .find(|x| x["pid"].as_u64() == Some(pid))
            .and_then(|x| x["reason"].as_str().map(str::to_owned))
    };
    for (what, pid) in [("wild mm", wild), ("self-pointing maple node", maple)] {
        assert!(!restored.contains(&pid), "{what}: pid {pid} was restored");
        let why =
            reason(pid).unwrap_or_else(|| panic!("{what}: pid {pid} not reported: {recovered}"));
        assert!(!why.is_empty(), "{what}: empty reason");
        eprintln!("{what}: pid {pid} not restored: {why}");
    }
    // The task-list cycle is repaired from the other side or costs its own task only.
    let problems = extraction["problems"].to_string();
    assert!(
        problems.contains("task list"),
        "no task-list problem reported: {extraction}"
    );
    eprintln!(
        "cycle: pid {cycle} {}",
        if restored.contains(&cycle) {
            "restored"
        } else {
            "not restored"
        }
    );
    assert_eq!(vm.stop(), 5);
}
