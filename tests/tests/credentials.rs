//! A process that dropped root keeps exactly the credentials it had across two kernel
//! crashes (`owtest creds`): its real, effective, saved and filesystem user and group ids,
//! its supplementary groups, its five capability sets and its dumpable flag, as the new
//! kernel reports them in `/proc/self/status`, are what the dead kernel reported.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use owvmm_tests::{boot_owtest, fields, last_line, num, wait_looper, wait_program, wait_recovery};
use serde_json::json;

/// The line without its count.
fn creds_of(line: &str) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = fields(line)
        .into_iter()
        .filter(|(k, _)| *k != "n")
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    f.sort();
    f
}

#[test]
fn ids_groups_and_capabilities_survive_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("credentials", "creds");
    let pid = wait_looper(&mut vm, "creds", 2);
    let before = last_line(&vm.console(), "creds")
        .map(str::to_owned)
        .unwrap_or_default();
    let want = creds_of(&before);
    let f = fields(&before);
    assert_eq!(f.get("uid"), Some(&"1000,1001,1002,1001"), "{before}");
    assert_eq!(f.get("groups"), Some(&"5,27"), "{before}");
    for round in 1..=2 {
        let from = vm.console().len();
        let n = num(last_line(&vm.console(), "creds").unwrap_or_default(), "n");
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "{r}");
        let (done, restored) = wait_recovery(&mut ev);
        assert!(
            restored.contains(&pid),
            "round {round}: not restored: {done}"
        );
        let after = wait_program(
            &mut vm,
            from,
            "creds",
            u32::try_from(pid).unwrap_or(0),
            |l| num(l, "n") > n,
        );
        assert_eq!(creds_of(&after), want, "round {round}: {after}");
    }
    vm.stop();
}
