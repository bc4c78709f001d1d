//! A memory file survives two kernel crashes (`owtest memfd`): a memfd held by a
//! descriptor and mapped shared comes back with its size, its contents (a 200 KiB pattern
//! and bytes far into the file), the descriptor's position, and the mapping still the same
//! object as the file (what is written through one is read through the other).
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use owvmm_tests::{boot_owtest, crash_and_go_on, fields, wait_looper};

#[test]
fn a_memfd_keeps_its_size_contents_position_and_mapping_across_two_crashes() {
    let (mut vm, mut ev) = boot_owtest("memfd", "memfd");
    let pid = wait_looper(&mut vm, "memfd", 2);
    for round in 1..=2 {
        let (_, after, _) = crash_and_go_on(&mut vm, &mut ev, "memfd", pid, 1);
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
