//! Two processes talking over a Unix socket pair survive two kernel crashes: a parent
//! writes numbers until the socket is full, a child reads them slowly (`owtest
//! unixpair`). After each recovery the pair is one again, with the bytes that were queued
//! in it: the child goes on with the next number, none lost or repeated.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::time::Duration;

use owvmm_tests::{crash_and_go_on, owtest_programs, scratch, standby_dir, tail, wait_looper, Vm};

#[test]
fn a_unix_socket_pair_with_queued_bytes_keeps_them_over_two_crashes() {
    standby_dir(1);
    let (st, _) = owtest_programs();
    let dir = scratch("unix-sockets");
    let add = format!("{}:/opt/owtest/owtest-static", st.display());
    let mut vm = Vm::boot(
        &dir,
        &[
            "--add",
            &add,
            "--on-crash",
            "microreboot",
            "--exec",
            "/opt/owtest/owtest-static unixpair",
        ],
    );
    vm.wait_agent_ready(Duration::from_secs(900));
    let mut ev = vm.events();
    let reader = wait_looper(&mut vm, "unixpair", 5);
    for round in 1..=2 {
        let (done, line, since) = crash_and_go_on(&mut vm, &mut ev, "unixpair", reader, 5);
        assert!(
            line.contains("ok=yes") && !since.contains("ok=NO") && !since.contains("eof"),
            "round {round}: {line}; {done}\n{}",
            tail(&since, 3000)
        );
        let notes = done["notes"].to_string();
        assert!(!notes.contains("unix"), "round {round}: {done}");
    }
    let c = vm.console();
    assert!(!c.contains("ok=NO"), "{}", tail(&c, 3000));
    vm.stop();
}
