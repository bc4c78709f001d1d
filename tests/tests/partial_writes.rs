//! A write cut off by the crash returns what the dead kernel had completed (`owtest
//! bigwrite`): a child writes a numbered byte stream into a pipe in 256 KiB writes, far
//! more than the pipe holds, so the crash catches it asleep half way through one; the
//! parent reads it slowly and checks every byte. After each of two crashes the writer's
//! write returns a short count (it goes on from there) instead of `EINTR` (it would write
//! the part already in the pipe again), and the reader still finds every byte once, in
//! order.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use owvmm_tests::{boot_owtest, fields, num, wait_looper, wait_program, wait_recovery};
use serde_json::json;

#[test]
fn a_write_cut_off_by_the_crash_returns_a_short_count_and_nothing_is_written_twice() {
    let (mut vm, mut ev) = boot_owtest("partial-writes", "bigwrite");
    let pid = wait_looper(&mut vm, "bigwrite", 3);
    let line = owvmm_tests::last_line(&vm.console(), "bigwrite")
        .map(str::to_owned)
        .unwrap_or_default();
    let writer = num(&line, "writer");
    let mut read = num(&line, "read");
    for round in 1..=2 {
        let from = vm.console().len();
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "{r}");
        let (done, restored) = wait_recovery(&mut ev);
        assert!(
            restored.contains(&pid) && restored.contains(&writer),
            "round {round}: reader {pid} and writer {writer} not both restored: {done}"
        );
        // The writer reports the write the crash cut short.
        let short = wait_program(
            &mut vm,
            from,
            "bigwrite",
            u32::try_from(writer).unwrap_or(0),
            |l| l.contains(" short="),
        );
        assert_eq!(
            fields(&short).get("short"),
            Some(&round.to_string().as_str()),
            "round {round}: {short}"
        );
        // The reader goes on past the point where the write was cut, every byte right.
        let after = wait_program(
            &mut vm,
            from,
            "bigwrite",
            u32::try_from(pid).unwrap_or(0),
            |l| num(l, "read") > num(&short, "at") + 8192,
        );
        assert_eq!(
            fields(&after).get("ok"),
            Some(&"yes"),
            "round {round}: {after}"
        );
        assert!(num(&after, "read") > read, "round {round}: {after}");
        read = num(&after, "read");
        let since = vm.console();
        let since = since.get(from..).unwrap_or("");
        assert!(
            !since.contains(" eintr ") && !since.contains("bad byte"),
            "round {round}: {since}"
        );
    }
    vm.stop();
}
