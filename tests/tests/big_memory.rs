//! A guest with RAM above 4 GiB (`--mem 3200`: 128 MiB of it from 4 GiB up, where the
//! kernel puts user pages first) recovers a checksummed program, twice. Its own test binary:
//! its two cold boots (the 3200 MiB standby and the guest) then never compete for the CPU
//! with the other recovery tests' guests (cargo runs test binaries one after the other).
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::time::Duration;

use owvmm_tests::{
    last_line, num, owtest_programs, run_to_end, scratch, wait_console_after, wait_program,
    wait_recovery, Vm,
};
use serde_json::json;

const HEAP_MIB: u32 = 16;

/// The checksummed heap program of a cold-booted `--mem 3200` guest: 128 MiB of its RAM lie
/// above 4 GiB, where the kernel puts user pages first.
#[test]
fn a_guest_with_memory_above_4_gib_recovers_a_checksummed_program_twice() {
    let (code, out, err) = run_to_end(&["standby", "--mem", "3200", "--vcpus", "1"]);
    assert_eq!(code, 0, "owvmm standby --mem 3200 failed: {err}");
    assert!(!out.trim().is_empty());
    let (st, _) = owtest_programs();
    let dir = scratch("above-4g");
    let add = format!("{}:/opt/owtest/owtest-static", st.display());
    let heap = format!("/opt/owtest/owtest-static heap {HEAP_MIB}");
    let mut vm = Vm::boot_with_input(
        &dir,
        &[
            "--mem",
            "3200",
            "--vcpus",
            "1",
            "--add",
            &add,
            "--exec",
            &heap,
            "--on-crash",
            "microreboot",
        ],
    );
    vm.wait_agent_ready(Duration::from_secs(1200));
    let first = wait_console_after(&mut vm, 0, Duration::from_secs(300), "heap", |c| {
        last_line(c, "heap")
            .filter(|l| num(l, "count") >= 2)
            .map(str::to_owned)
    });
    let pid = u32::try_from(num(&first, "pid")).unwrap_or(0);
    let mut ev = vm.events();
    for round in 0..2 {
        let before = vm.console();
        let count = last_line(&before, "heap").map_or(0, |l| num(l, "count"));
        let from = before.len();
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "round {round}: {r}");
        let (done, restored) = wait_recovery(&mut ev);
        assert!(
            restored.contains(&u64::from(pid)),
            "round {round}: heap (pid {pid}) not restored: {done}\nstderr: {}",
            vm.stderr()
        );
        let line = wait_program(&mut vm, from, "heap", pid, |l| {
            num(l, "count") > count && l.contains(" sum=") && l.contains(" f=")
        });
        assert!(line.contains("sum=ok"), "round {round}: {line}");
        eprintln!("--mem 3200 round {round}: {line}");
    }
    assert_eq!(vm.stop(), 5);
}
