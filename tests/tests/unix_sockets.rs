//! Two processes talking over a Unix socket pair survive two kernel crashes: a parent
//! writes numbers until the socket is full, a child reads them slowly (`owtest
//! unixpair`). After each recovery the pair is one again, with the bytes that were queued
//! in it: the child goes on with the next number, none lost or repeated.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use owvmm_tests::{boot_owtest, crash_and_go_on, tail, wait_looper};

#[test]
fn a_unix_socket_pair_with_queued_bytes_keeps_them_over_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("unix-sockets", "unixpair");
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
