//! A program in an epoll loop over a timerfd and a signalfd, keeping a count in an eventfd
//! (`owtest events`), goes on across two kernel crashes: its epoll instance comes back with
//! both descriptors in its interest list and their data, the periodic timer ticks again,
//! the blocked signal still arrives through the signalfd, and the eventfd holds exactly
//! what the program had added ("efd=ok").
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use owvmm_tests::{boot_owtest, crash_and_go_on, fields, last_line, tail, wait_looper};

#[test]
fn an_epoll_loop_over_timerfd_signalfd_and_eventfd_goes_on_across_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("eventfds", "events");
    let pid = wait_looper(&mut vm, "events", 4);
    for round in 1..=2 {
        let before = last_line(&vm.console(), "events")
            .map(|l| {
                fields(l)
                    .get("sig")
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        let (done, line, _) = crash_and_go_on(&mut vm, &mut ev, "events", pid, 6);
        let f = fields(&line);
        assert_eq!(f.get("efd"), Some(&"ok"), "round {round}: {line}");
        let sig: u64 = f.get("sig").and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(
            sig > before + 2,
            "round {round}: signals stopped at {before} -> {sig}: {line}; {done}\n{}",
            tail(&vm.console(), 2000)
        );
    }
    assert!(
        !vm.console().contains("unknown epoll data"),
        "{}",
        tail(&vm.console(), 2000)
    );
    vm.stop();
}
