//! The pvpanic device on a real guest: the default kernel finds it through the VMM's ACPI
//! tables (DSDT device `QEMU0001` on port 0x505), its pvpanic driver binds, and a panic
//! raised inside the guest is reported through the port: `crash-detected` and the crash
//! record in `status` say `"source": "pvpanic"` (not the `panic_cpu` fallback).
//!
//! Cold-boots one guest (a snapshot of an older kernel would not have the driver).
//! Enabled by the `kvm` feature.
#![cfg(feature = "kvm")]

use std::time::Duration;

use owvmm_tests::{scratch, tail, Vm};
use serde_json::json;

/// Says whether the driver bound (its platform device is named after the ACPI id), then
/// panics the kernel from inside. (`printf` builds the marker, so the agent's `started`
/// line, which repeats the command, does not contain it.)
const PANIC_FROM_INSIDE: &str =
    "printf 'pvpanic-%s: %s\\n' bound $(ls /sys/bus/platform/drivers/pvpanic-mmio/ \
     | grep -c QEMU0001); sleep 2; echo c > /proc/sysrq-trigger";

#[test]
fn a_guest_panic_is_reported_through_pvpanic() {
    let dir = scratch("pvpanic");
    let mut vm = Vm::boot(
        &dir,
        &[
            "--vcpus",
            "2",
            "--exec",
            PANIC_FROM_INSIDE,
            "--on-crash",
            "pause",
        ],
    );
    let mut ev = vm.events();
    // A cold boot here takes a minute or two of emulated kernel code; bounded generously.
    let bound = vm.wait_console("pvpanic-bound: ", Duration::from_secs(1200));
    assert!(
        bound.contains("pvpanic-bound: 1"),
        "the pvpanic driver did not bind: {}",
        tail(&bound, 3000)
    );
    let crash = ev.wait_event("crash-detected", Duration::from_secs(300));
    assert_eq!(crash["cause"], "panic", "{crash}");
    assert_eq!(crash["source"], "pvpanic", "{crash}");
    assert!(
        crash["message"].as_str().unwrap_or("").contains("sysrq"),
        "{crash}"
    );
    let st = vm.call(json!({"cmd": "status"}));
    assert_eq!(st["state"], "crashed", "{st}");
    assert_eq!(st["crashes"][0]["source"], "pvpanic", "{st}");
    assert_eq!(vm.stop(), 5);
}
