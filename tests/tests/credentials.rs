//! A process that dropped root keeps exactly the credentials it had across two kernel
//! crashes (`owtest creds`): its real, effective, saved and filesystem user and group ids,
//! its supplementary groups, its five capability sets and its dumpable flag, as the new
//! kernel reports them in `/proc/self/status`, are what the dead kernel reported.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use owvmm_tests::{boot_owtest, crash_and_go_on, fields, last_line, wait_looper};

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
        let (_, after, _) = crash_and_go_on(&mut vm, &mut ev, "creds", pid, 1);
        assert_eq!(creds_of(&after), want, "round {round}: {after}");
    }
    vm.stop();
}
