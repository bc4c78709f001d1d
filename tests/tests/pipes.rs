//! A shell pipeline survives two kernel crashes with data in its pipe: a fast producer
//! fills the pipe and blocks, a slow consumer reads one number at a time. After each
//! recovery the consumer goes on with the next number: nothing in the pipe is lost or
//! read twice, and no process is left out for holding a pipe. A second producer and
//! consumer do the same through a named FIFO (`mkfifo`), which comes back at its path.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::time::Duration;

use owvmm_tests::{scratch, standby_dir, tail, wait_console_after, wait_recovery, Vm};
use serde_json::json;

/// 200 000 numbers are far more than a 64 KiB pipe holds: the producer stays blocked in
/// `write` with the pipe full, the consumer prints one number every 0.2 s.
const PIPELINE: &str = "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); echo $i; done | \
    while read n; do echo \"piped n=$n\"; sleep 0.2; done";

/// The same through a named FIFO in the in-memory root, which the crash kernel does not
/// have: it comes back at its path. Its consumer runs with a umask and a descriptor limit
/// of its own and prints them (from a subshell, which inherits them) with each number.
const FIFO: &str = "mkdir -p /tmp; rm -f /tmp/q; mkfifo /tmp/q; \
    (i=0; while [ $i -lt 200000 ]; do i=$((i+1)); echo $i; done > /tmp/q) & \
    umask 027; ulimit -n 777; \
    while read n; do echo \"fifo n=$n umask=$(umask) nofile=$(ulimit -n)\"; sleep 0.2; \
    done < /tmp/q";

/// The numbers a consumer printed (`prefix`: `piped` or `fifo`), in console order.
fn numbers_of(console: &str, prefix: &str) -> Vec<u64> {
    let prefix = format!("{prefix} n=");
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .filter_map(|n| n.split_whitespace().next()?.parse().ok())
        .collect()
}

fn numbers(console: &str) -> Vec<u64> {
    numbers_of(console, "piped")
}

#[test]
fn a_pipeline_with_data_in_its_pipe_loses_and_repeats_nothing_over_two_crashes() {
    standby_dir(1);
    let dir = scratch("pipes");
    let mut vm = Vm::boot(
        &dir,
        &[
            "--on-crash",
            "microreboot",
            "--exec",
            PIPELINE,
            "--exec",
            FIFO,
        ],
    );
    vm.wait_agent_ready(Duration::from_secs(900));
    let mut ev = vm.events();
    wait_console_after(&mut vm, 0, Duration::from_secs(300), "the consumer", |c| {
        (numbers(c).len() >= 5 && numbers_of(c, "fifo").len() >= 5).then_some(())
    });
    for round in 1..=2 {
        let before = numbers(&vm.console()).last().copied().unwrap_or(0);
        let fifo_before = numbers_of(&vm.console(), "fifo")
            .last()
            .copied()
            .unwrap_or(0);
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "{r}");
        let (done, restored) = wait_recovery(&mut ev);
        let excluded = done["excluded"].as_array().cloned().unwrap_or_default();
        assert!(
            excluded
                .iter()
                .all(|e| !e.to_string().contains("fifo") && !e.to_string().contains("pipe")),
            "round {round}: a process left out for its pipe: {done}"
        );
        assert!(restored.len() >= 4, "round {round}: {done}");
        let what = format!("the consumer after crash {round}");
        wait_console_after(&mut vm, 0, Duration::from_secs(120), &what, |c| {
            let fifo = numbers_of(c, "fifo").last().copied().unwrap_or(0);
            (numbers(c).last().copied().unwrap_or(0) >= before + 4 && fifo >= fifo_before + 4)
                .then_some(())
        });
    }
    for prefix in ["piped", "fifo"] {
        let seen = numbers_of(&vm.console(), prefix);
        // The console may show a line twice only if the program printed it twice.
        for (i, w) in seen.windows(2).enumerate() {
            assert_eq!(
                w[1],
                w[0] + 1,
                "{prefix}: after line {i}: {} then {}; console: {}",
                w[0],
                w[1],
                tail(&vm.console(), 3000)
            );
        }
        assert_eq!(
            seen.first(),
            Some(&1),
            "{prefix}: {}",
            tail(&vm.console(), 3000)
        );
    }
    // The consumer's umask and descriptor limit came back with it, twice.
    let c = vm.console();
    let last = c
        .lines()
        .rev()
        .find(|l| l.trim().starts_with("fifo n="))
        .unwrap_or_default();
    assert!(
        last.contains("umask=0027 nofile=777"),
        "the consumer's umask or limit changed: {last}"
    );
    vm.stop();
}
