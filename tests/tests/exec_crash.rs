//! A shell loop that execs all the time survives repeated kernel crashes: whatever the
//! crash catches (a child inside `execve`, before or after its new mm is installed, a
//! fork, the shell waiting), no process is lost and the loop goes on.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::time::{Duration, Instant};

use owvmm_tests::{last_line, num, scratch, standby_dir, tail, wait_console_after, Vm};
use serde_json::{json, Value};

/// Crashes in one run.
const CRASHES: usize = 5;
/// The loop: `/bin/true` exec'd over and over, a console line every 10 rounds.
const LOOP: &str = "i=0; while true; do /bin/true; i=$((i+1)); \
     case $i in *0) echo \"execloop pid=$$ n=$i\";; esac; done";

#[test]
fn a_loop_that_execs_constantly_loses_no_process_over_repeated_crashes() {
    // The standby first: the cold boot below then has both cores.
    standby_dir(2);
    let dir = scratch("exec-crash");
    let t0 = Instant::now();
    let mut vm = Vm::boot(
        &dir,
        &["--vcpus", "2", "--on-crash", "microreboot", "--exec", LOOP],
    );
    vm.wait_agent_ready(Duration::from_secs(1200));
    let mut ev = vm.events();
    let shell = wait_console_after(&mut vm, 0, Duration::from_secs(900), "the loop", |c| {
        last_line(c, "execloop")
            .filter(|l| num(l, "n") >= 20)
            .map(|l| num(l, "pid"))
    });
    let (mut restored_total, mut in_exec) = (0, 0);
    for round in 0..CRASHES {
        ev.wait_event("heartbeat", Duration::from_secs(60));
        let before = vm.console();
        let n_before = last_line(&before, "execloop").map_or(0, |l| num(l, "n"));
        let from = before.len();
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "round {round}: {r}");
        let crash = ev.wait_event("crash-detected", Duration::from_secs(120));
        assert_eq!(crash["cause"], "panic", "{crash}");
        let (mut restored, mut lost, mut extraction) = (Vec::new(), Vec::new(), Value::Null);
        let done = loop {
            let e = ev.recv(Duration::from_secs(600)).expect("recovery events");
            match e["event"].as_str() {
                Some("extraction-done") => extraction = e,
                Some("process-restored") => restored.push(e["pid"].as_u64().unwrap_or(0)),
                Some("process-not-restored") => lost.push(e),
                Some("recovery-failed" | "microreboot-failed") => {
                    panic!(
                        "round {round}: recovery failed: {e}\nstderr: {}",
                        vm.stderr()
                    )
                }
                Some("recovery-done") => break e,
                _ => {}
            }
        };
        // Every user process but the old init went into the manifest and came back.
        let excluded: Vec<&Value> = extraction["manifest"]["excluded"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["pid"] != json!(1)).collect())
            .unwrap_or_default();
        assert!(
            excluded.is_empty() && lost.is_empty(),
            "round {round}: processes lost: excluded {excluded:?}, not restored {lost:?}"
        );
        assert!(
            restored.contains(&shell),
            "round {round}: the shell {shell} not restored: {restored:?}"
        );
        // What the crash caught: each process's system call and its number of areas (a
        // task in execve with one area is past exec_mmap).
        let caught: Vec<String> = extraction["processes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["pid"] != json!(1))
                    .map(|p| {
                        format!(
                            "{} {} syscall={} vmas={}",
                            p["pid"], p["comm"], p["syscall"], p["vmas"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        in_exec += caught
            .iter()
            .filter(|c| c.contains("syscall=59 ") || c.contains("syscall=322 "))
            .count();
        restored_total += restored.len();
        // The loop goes on.
        let l = wait_console_after(
            &mut vm,
            from,
            Duration::from_secs(180),
            "the loop going on",
            |c| {
                c.lines()
                    .map(str::trim)
                    .filter(|l| l.starts_with(&format!("execloop pid={shell} ")))
                    .find(|l| num(l, "n") >= n_before + 20)
                    .map(str::to_owned)
            },
        );
        eprintln!(
            "round {round}: recovered in {:.0} ms, {} restored {restored:?}, caught: {caught:?}; then {l}",
            done["total_ms"].as_f64().unwrap_or(0.0),
            restored.len()
        );
    }
    eprintln!(
        "{CRASHES} crashes, {restored_total} processes restored, {in_exec} caught in execve, {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let st = vm.call(json!({"cmd": "status"}));
    assert_eq!(
        st["crashes"].as_array().map(Vec::len),
        Some(CRASHES),
        "{}",
        tail(&st.to_string(), 2000)
    );
    assert_eq!(vm.stop(), 5);
}
