//! Signals a program had blocked and not yet taken survive two kernel crashes (`owtest
//! pending`): a standard signal sent with `kill` and a real-time signal queued twice with
//! `sigqueue` are still pending after each recovery, and when the program takes them it
//! gets each once, the real-time one twice with the values it was sent with, in order.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::time::Duration;

use owvmm_tests::{
    boot_owtest, fields, wait_console_after, wait_looper, wait_program, wait_recovery,
};
use serde_json::json;

#[test]
fn blocked_signals_stay_pending_with_their_values_across_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("pending-signals", "pending");
    let pid = wait_looper(&mut vm, "pending", 2);
    let mut from = 0;
    for round in 1..=2 {
        from = vm.console().len();
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "{r}");
        let (done, restored) = wait_recovery(&mut ev);
        assert!(
            restored.contains(&pid),
            "round {round}: not restored: {done}"
        );
        let line = wait_program(
            &mut vm,
            from,
            "pending",
            u32::try_from(pid).unwrap_or(0),
            |l| l.contains(" n="),
        );
        let f = fields(&line);
        assert_eq!(f.get("usr1"), Some(&"yes"), "round {round}: {line}");
        assert_eq!(f.get("rtmin"), Some(&"yes"), "round {round}: {line}");
    }
    let got = wait_console_after(
        &mut vm,
        from,
        Duration::from_secs(600),
        "the signals taken",
        |c| {
            c.lines().find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("pending pid={pid} got="))
                    .map(str::to_owned)
            })
        },
    );
    assert_eq!(got, "10,rtmin:42,rtmin:43,", "what the program took");
    vm.stop();
}
