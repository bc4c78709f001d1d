//! Interval timers and POSIX timers survive two kernel crashes (`owtest timers`): after
//! each recovery the program is back with its pid, its 1 s `ITIMER_REAL` still sends
//! `SIGALRM`s (the count goes on rising), its fast `CLOCK_MONOTONIC` timer still sends
//! `SIGRTMIN` with its value, both POSIX timer ids still work (`timer_gettime`,
//! `timer_getoverrun`: same ids), and the hour-long `CLOCK_BOOTTIME` timer has about as
//! much time left as before the crash: less by no more than the wall time that passed
//! (the time the recovery took is not counted), never reset to an hour or to nothing.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::time::Instant;

use owvmm_tests::{boot_owtest, fields, last_line, num, wait_looper, wait_program, wait_recovery};
use serde_json::json;

#[test]
fn itimers_and_posix_timers_keep_their_ids_and_times_across_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("timers", "timers");
    let pid = wait_looper(&mut vm, "timers", 3);
    let pid32 = u32::try_from(pid).unwrap_or(0);
    let first = last_line(&vm.console(), "timers")
        .map(str::to_owned)
        .expect("a timers line");
    let f = fields(&first);
    assert_eq!(f.get("ok"), Some(&"yes"), "{first}");
    let (fast, slow) = (num(&first, "fast"), num(&first, "slow"));
    assert_ne!(fast, slow, "{first}");
    for round in 1..=2 {
        let before = last_line(&vm.console(), "timers")
            .map(str::to_owned)
            .expect("a timers line");
        let seen = Instant::now();
        let from = vm.console().len();
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "{r}");
        let (done, restored) = wait_recovery(&mut ev);
        assert!(
            restored.contains(&pid),
            "round {round}: not restored: {done}"
        );
        eprintln!("round {round}: recovery notes: {}", done["notes"]);
        let after = wait_program(&mut vm, from, "timers", pid32, |l| l.contains(" n="));
        let elapsed = seen.elapsed();
        let f = fields(&after);
        assert_eq!(f.get("ok"), Some(&"yes"), "round {round}: {after}");
        assert_eq!(f.get("value"), Some(&"ok"), "round {round}: {after}");
        assert_eq!(num(&after, "fast"), fast, "round {round}: {after}");
        assert_eq!(num(&after, "slow"), slow, "round {round}: {after}");
        // The hour-long timer: no more left than before (slack: the dead kernel's time is
        // read from jiffies, a tick behind at most and late by when its tick started),
        // and less by no more than the wall time since the line before the crash.
        let (left0, left1) = (num(&before, "left"), num(&after, "left"));
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        assert!(
            left1 > 0 && left1 <= left0 + 1_000,
            "round {round}: left {left0} -> {left1} ms: {before} / {after}"
        );
        assert!(
            left1 + elapsed_ms + 5_000 >= left0,
            "round {round}: left {left0} -> {left1} ms in {elapsed_ms} ms: {before} / {after}"
        );
        assert!(left1 < 3_600_000 - 2_000, "round {round}: reset? {after}");
        // The alarms and the fast timer's signals go on.
        let (alarms, rt) = (num(&after, "alarms"), num(&after, "rt"));
        assert!(
            alarms >= num(&before, "alarms"),
            "round {round}: {before} / {after}"
        );
        let later = wait_program(&mut vm, from, "timers", pid32, |l| {
            num(l, "alarms") >= alarms + 2 && num(l, "rt") >= rt + 4
        });
        let f = fields(&later);
        assert_eq!(f.get("ok"), Some(&"yes"), "round {round}: {later}");
        assert_eq!(f.get("value"), Some(&"ok"), "round {round}: {later}");
        assert_eq!(num(&later, "slowrt"), 0, "round {round}: {later}");
    }
    vm.stop();
}
