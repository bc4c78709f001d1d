//! A parent and its children come back as a family across two kernel crashes
//! (`owtest family`): the child the parent had not reaped yet is still a zombie, the living
//! child is still the parent's child in its own process group, the two still share their
//! `MAP_SHARED` anonymous page (what one writes the other reads), the parent keeps its
//! session and group, and after the crashes `waitpid` reaps both with their exit
//! statuses (3 and 7) instead of failing with ECHILD.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::time::Duration;

use owvmm_tests::{
    boot_owtest, fields, last_line, num, tail, wait_console_after, wait_looper, wait_program,
    wait_recovery,
};
use serde_json::json;

#[test]
fn waitpid_zombies_sessions_and_groups_survive_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("process-tree", "family");
    let pid = wait_looper(&mut vm, "family", 2);
    let first = last_line(&vm.console(), "family")
        .expect("a family line")
        .to_owned();
    let f = fields(&first);
    assert_eq!(f.get("zombie"), Some(&"yes"), "{first}");
    let child: u64 = f.get("child").and_then(|c| c.parse().ok()).expect("child");
    assert_eq!(f.get("child_pgid"), f.get("child"), "{first}");
    for round in 1..=2 {
        let n_before = last_line(&vm.console(), "family").map_or(0, |l| num(l, "n"));
        let from = vm.console().len();
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "{r}");
        let (done, restored) = wait_recovery(&mut ev);
        for p in [pid, child] {
            assert!(
                restored.contains(&p),
                "round {round}: {p} not restored: {done}"
            );
        }
        // The parent goes on first (parents are rebuilt before their children): wait for
        // a tick after the child is back too, when the child copies the word again.
        let line = wait_program(
            &mut vm,
            from,
            "family",
            u32::try_from(pid).unwrap_or(0),
            |l| num(l, "n") >= n_before + 2 && fields(l).get("shared") == Some(&"yes"),
        );
        let g = fields(&line);
        for key in ["sid", "pgid", "child", "child_pgid"] {
            assert_eq!(
                g.get(key),
                f.get(key),
                "round {round}: {key} changed: {first} -> {line}\n{done}"
            );
        }
        assert_eq!(
            g.get("shared"),
            Some(&"yes"),
            "round {round}: parent and child no longer share their page: {line}\n{done}"
        );
        assert_eq!(
            g.get("zombie"),
            Some(&"yes"),
            "round {round}: the unreaped child is gone: {line}\n{}",
            tail(&vm.console(), 2000)
        );
    }
    let prefix = format!("family pid={pid} done");
    wait_console_after(&mut vm, 0, Duration::from_secs(120), &prefix, |c| {
        c.contains(&prefix).then_some(())
    });
    let console = vm.console();
    let reaped = |what: &str| {
        console
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&format!("family pid={pid} reaped {what}=")))
            .unwrap_or_default()
            .to_owned()
    };
    let c = reaped("child");
    assert_eq!(fields(&c).get("ok"), Some(&"yes"), "{c}");
    assert_eq!(fields(&c).get("status"), Some(&"3"), "{c}");
    let z = reaped("zombie");
    assert_eq!(fields(&z).get("ok"), Some(&"yes"), "{z}");
    assert_eq!(fields(&z).get("status"), Some(&"7"), "{z}");
    vm.stop();
}
