//! An editor in a terminal survives two kernel crashes: Debian's `nano`, run under
//! Debian's `script` (util-linux) from the guest's interactive shell on the serial
//! console, so nano's terminal is a pseudo-terminal whose master `script` holds, and the
//! console is in the raw mode `script` put it in. Text is typed before the first crash,
//! between the crashes and after the second; nano, `script` and the shell come back
//! with the pty (same number, settings, window size, bytes in flight), the console's
//! settings, and their sessions, controlling terminals and foreground groups, so the
//! typing goes on where it was. Then nano saves the file, exits, `script` gives the
//! console back, and the shell prints the file: every line typed, in order.
//!
//! Cold-boots one Debian-root guest. Enabled by the `kvm` feature; needs Debian's package
//! lists (apt) on the host to build the image.
#![cfg(feature = "kvm")]

use std::time::Duration;

use owvmm_tests::{run_to_end, scratch, standby_dir, tail, wait_console_after, wait_recovery, Vm};
use serde_json::json;

const PACKAGES: &str = "nano,bsdutils,ncurses-base";

/// Types `text` and waits until it shows on the console after `from` (nano echoes what is
/// typed by drawing it).
fn type_and_see(vm: &mut Vm, text: &str, see: &str) {
    let from = vm.console().len();
    vm.type_console(text);
    wait_console_after(vm, from, Duration::from_secs(600), see, |after| {
        after.contains(see).then_some(())
    });
}

/// Crashes the kernel and waits for the recovery; every process but the old init must
/// come back (none is left out for its terminal).
fn crash(vm: &mut Vm, ev: &mut owvmm_tests::Conn, round: u32) {
    let r = vm.call(json!({"cmd": "crash"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let (done, restored) = wait_recovery(ev);
    let excluded = done["excluded"].as_array().cloned().unwrap_or_default();
    assert!(
        excluded.iter().all(|e| e["pid"] == json!(1)),
        "round {round}: left out: {done}\n{}",
        tail(&vm.console(), 3000)
    );
    assert!(
        restored.len() >= 3,
        "round {round}: the shell, script and nano should be back: {done}"
    );
}

#[test]
fn nano_in_a_pty_under_script_keeps_its_text_across_two_crashes() {
    let (code, out, err) = run_to_end(&["image", "build", "--with", PACKAGES]);
    assert_eq!(code, 0, "owvmm image build --with {PACKAGES}: {err}");
    assert!(out.contains("root "), "{out}");
    standby_dir(1);
    let dir = scratch("terminal");
    let mut vm = Vm::boot_with_input(&dir, &["--with", PACKAGES, "--on-crash", "microreboot"]);
    vm.wait_agent_ready(Duration::from_secs(1500));
    let mut ev = vm.events();
    // The interactive shell on the console: a window size for nano's pty to inherit.
    type_and_see(
        &mut vm,
        "stty rows 24 cols 80; echo READY-$((6*7))\n",
        "READY-42",
    );
    type_and_see(
        &mut vm,
        "script -qc 'nano /tmp/edit.txt' /dev/null\n",
        "New File",
    );
    let lines = [
        "alpha-typed-before-any-crash",
        "bravo-typed-between-the-crashes",
        "charlie-typed-after-both-crashes",
    ];
    // Enter is a carriage return: the console is raw under script.
    type_and_see(&mut vm, &format!("{}\r", lines[0]), lines[0]);
    crash(&mut vm, &mut ev, 1);
    type_and_see(&mut vm, &format!("{}\r", lines[1]), lines[1]);
    crash(&mut vm, &mut ev, 2);
    type_and_see(&mut vm, &format!("{}\r", lines[2]), lines[2]);
    // ^O and Enter write the file; ^X leaves nano, and script then the console.
    type_and_see(&mut vm, "\x0f", "File Name to Write");
    type_and_see(&mut vm, "\r", "Wrote");
    // The shell's prompt once script has given the console back (what is typed before
    // would go to the closing pty).
    type_and_see(&mut vm, "\x18", "# ");
    type_and_see(&mut vm, "echo BACK-$((1+2))\n", "BACK-3");
    let from = vm.console().len();
    vm.type_console("cat /tmp/edit.txt; echo SAVED-$((40+2))\n");
    let printed = wait_console_after(
        &mut vm,
        from,
        Duration::from_secs(600),
        "the saved file",
        |after| {
            let end = after.find("SAVED-42")?;
            Some(after[..end].to_owned())
        },
    );
    let mut at = 0;
    for l in lines {
        let Some(i) = printed[at..].find(l) else {
            panic!(
                "{l:?} is not in the saved file (in order):\n{printed}\n{}",
                tail(&vm.console(), 3000)
            );
        };
        at += i + l.len();
    }
    assert_eq!(vm.stop(), 5, "{}", vm.stderr());
}
