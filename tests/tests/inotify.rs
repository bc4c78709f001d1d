//! inotify watches survive two kernel crashes (`owtest inotify`): watches at wds 1 and 3
//! (2 was removed) on a directory and a file keep their wds and go on reporting creates,
//! deletes and writes, and a watch added after the recovery gets the wd it would have had
//! (the program adds and removes one each second; the kernel hands wds out in turn).
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use owvmm_tests::{boot_owtest, crash_and_go_on, fields, num, tail, wait_looper};

#[test]
fn inotify_watches_keep_their_wds_and_events_across_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("inotify", "inotify");
    let pid = wait_looper(&mut vm, "inotify", 2);
    for round in 1..=2 {
        let (done, line, since) = crash_and_go_on(&mut vm, &mut ev, "inotify", pid, 2);
        let f = fields(&line);
        let why = format!("round {round}: {line}; {done}\n{}", tail(&since, 3000));
        assert_eq!(f.get("wds"), Some(&"1,3"), "{why}");
        assert_eq!(f.get("events"), Some(&"7"), "{why}");
        assert_eq!(f.get("bad"), Some(&"0"), "{why}");
        assert_eq!(num(&line, "probe"), num(&line, "n") + 3, "{why}");
        let notes = done["notes"].to_string();
        assert!(!notes.contains("inotify"), "{why}");
    }
    vm.stop();
}
