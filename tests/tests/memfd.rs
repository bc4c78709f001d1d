//! A memory file survives two kernel crashes (`owtest memfd`): a memfd held by a
//! descriptor and mapped shared comes back with its size, its contents (a 200 KiB pattern
//! and bytes far into the file), the descriptor's position, and the mapping still the same
//! object as the file (what is written through one is read through the other).
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use owvmm_tests::{boot_owtest, fields, last_line, num, wait_looper, wait_program, wait_recovery};
use serde_json::json;

#[test]
fn a_memfd_keeps_its_size_contents_position_and_mapping_across_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("memfd", "memfd");
    let pid = wait_looper(&mut vm, "memfd", 2);
    for round in 1..=2 {
        let from = vm.console().len();
        let n = num(last_line(&vm.console(), "memfd").unwrap_or_default(), "n");
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
            "memfd",
            u32::try_from(pid).unwrap_or(0),
            |l| num(l, "n") > n,
        );
        let f = fields(&after);
        for (k, v) in [
            ("size", "1048581"),
            ("pos", "12345"),
            ("data", "ok"),
            ("shared", "ok"),
        ] {
            assert_eq!(f.get(k), Some(&v), "round {round}: {after}");
        }
    }
    vm.stop();
}
