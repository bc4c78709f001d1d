//! Bad input is refused before anything starts, with one line saying what and why.
//! These run the real binary but need no KVM: every case fails before a VM is made.

use std::os::unix::net::UnixListener;

use owvmm_tests::{run_to_end, scratch};

fn fake_elf(dir: &std::path::Path, machine: u8) -> String {
    let mut elf = vec![0u8; 8192];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[18] = machine;
    let p = dir.join(format!("vmlinux-{machine}"));
    std::fs::write(&p, elf).expect("write");
    p.display().to_string()
}

fn refused(args: &[&str], needle: &str) {
    let (code, _out, err) = run_to_end(args);
    assert_eq!(
        code, 2,
        "expected exit 2 for {args:?}, got {code}; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line for {args:?}, got: {err}");
    assert!(
        lines[0].starts_with("owvmm: error: ") && lines[0].contains(needle),
        "{args:?}: {:?} does not say {needle:?}",
        lines[0]
    );
}

#[test]
fn missing_or_unreadable_kernel_and_initrd() {
    let d = scratch("cli-missing");
    let k = fake_elf(&d, 62);
    refused(
        &["run", "--kernel", "/nonexistent/vmlinux"],
        "kernel /nonexistent/vmlinux cannot be read",
    );
    refused(
        &["run", "--kernel", &k, "--initrd", "/nonexistent/initrd"],
        "initrd /nonexistent/initrd cannot be read",
    );
    refused(&["run", "--kernel", "/tmp"], "not a regular file");
}

#[test]
fn kernel_that_is_not_x86_64() {
    let d = scratch("cli-arch");
    let arm = fake_elf(&d, 183);
    refused(&["run", "--kernel", &arm], "ELF machine is not x86-64");
    let script = d.join("script");
    std::fs::write(&script, "#!/bin/sh\n").expect("write");
    refused(
        &["run", "--kernel", &script.display().to_string()],
        "not an x86-64 vmlinux or bzImage",
    );
}

#[test]
fn bad_machine_sizes() {
    let d = scratch("cli-size");
    let k = fake_elf(&d, 62);
    refused(
        &["run", "--kernel", &k, "--vcpus", "0"],
        "--vcpus must be between 1 and 64",
    );
    refused(
        &["run", "--kernel", &k, "--mem", "4"],
        "--mem 4 MiB is too small",
    );
}

#[test]
fn add_path_that_does_not_exist_and_bad_add_syntax() {
    let d = scratch("cli-add");
    let k = fake_elf(&d, 62);
    refused(
        &[
            "run",
            "--kernel",
            &k,
            "--add",
            "/nonexistent/file:/opt/file",
        ],
        "--add file /nonexistent/file cannot be read",
    );
    refused(
        &["run", "--kernel", &k, "--add", "relative-guest"],
        "expected HOST:GUEST",
    );
}

#[test]
fn socket_path_already_in_use() {
    let d = scratch("cli-sock");
    let k = fake_elf(&d, 62);
    let sock = d.join("busy.sock");
    let _listener = UnixListener::bind(&sock).expect("bind");
    refused(
        &[
            "run",
            "--kernel",
            &k,
            "--api-sock",
            &sock.display().to_string(),
        ],
        "already in use",
    );
    let file = d.join("plain");
    std::fs::write(&file, "x").expect("write");
    refused(
        &[
            "run",
            "--kernel",
            &k,
            "--api-sock",
            &file.display().to_string(),
        ],
        "is not a socket",
    );
}

#[test]
fn restore_of_missing_snapshot() {
    refused(
        &["run", "--restore", "/nonexistent/snap"],
        "cannot read /nonexistent/snap/state.json",
    );
}

#[test]
fn ctl_without_vmm_says_why() {
    let (code, _, err) = run_to_end(&["ctl", "--api-sock", "/nonexistent/sock", "status"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to control socket /nonexistent/sock"),
        "{err}"
    );
}

#[test]
fn help_explains_exit_codes() {
    let (code, out, _) = run_to_end(&["run", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--vcpus") && out.contains("--restore") && out.contains("--exec"));
    let (_, out, _) = run_to_end(&["--help"]);
    assert!(out.contains("Exit codes"), "{out}");
}
