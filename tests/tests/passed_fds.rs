//! Descriptors in flight on a Unix socket (`SCM_RIGHTS`) survive two kernel crashes
//! (`owtest passfd`): one message is always queued with three descriptors that nothing but
//! the message holds (the read end of a pipe with bytes in it, a file open at position 5,
//! and one end of a socket pair with bytes queued for it). After each recovery the program
//! receives the message with its three descriptors and finds the pipe's bytes, the file's
//! position and contents, and the socket's bytes; no socket came back reset.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use owvmm_tests::{boot_owtest, crash_and_go_on, fields, num, tail, wait_looper};

#[test]
fn descriptors_in_flight_arrive_with_their_message_after_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("passed-fds", "passfd");
    let pid = wait_looper(&mut vm, "passfd", 2);
    for round in 1..=2 {
        let (done, line, since) = crash_and_go_on(&mut vm, &mut ev, "passfd", pid, 2);
        let f = fields(&line);
        assert_eq!(
            f.get("bad"),
            Some(&"0"),
            "round {round}: {line}; {done}\n{}",
            tail(&since, 3000)
        );
        assert_eq!(num(&line, "ok"), num(&line, "n"), "round {round}: {line}");
        let notes = done["notes"].to_string();
        assert!(!notes.contains("reset"), "round {round}: {done}");
        assert!(
            !since.contains("in flight left out"),
            "round {round}: {}",
            tail(&since, 3000)
        );
    }
    vm.stop();
}
