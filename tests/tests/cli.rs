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

/// `owvmm run --print-cmdline` with `env` set, to completion: (exit code, stdout, stderr).
fn print_cmdline(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = std::process::Command::new(owvmm_tests::owvmm_bin())
        .args(["run", "--print-cmdline"])
        .args(args)
        .env_remove("OWVMM_NO_CMDLINE_QUIRKS")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run owvmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn print_cmdline_adds_the_host_quirks_only_on_kvm_pvm() {
    const SWITCH: &str = "owvmm.pvm_quirks=1";
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let has = |line: &str, word: &str| line.split_whitespace().any(|w| w == word);

    // The default: neutral line, plus this host's options (kvm_pvm only), each once.
    let (code, out, err) = print_cmdline(&[], &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    let line = out.trim();
    assert!(line.starts_with("console=ttyS0 "), "{line}");
    assert!(has(line, "reboot=k") && has(line, "panic=-1"), "{line}");
    assert_eq!(has(line, SWITCH), pvm, "{line}");
    assert_eq!(has(line, "no-kvm-hypercalls"), pvm, "{line}");
    assert_eq!(line.contains("clearcpuid="), pvm, "{line}");
    assert_eq!(line.contains("GLIBC_TUNABLES="), pvm, "{line}");
    assert_eq!(line.contains("initcall_blacklist="), pvm, "{line}");
    assert_eq!(line.matches(SWITCH).count(), usize::from(pvm), "{line}");
    // The default guest's root is the base image on the first disk, read-only; with
    // --initramfs-root, or a kernel of one's own, there is no root disk.
    assert!(has(line, "owvmm.disk=disk0:/:ro"), "{line}");
    for args in [
        &["--initramfs-root"][..],
        &["--kernel", "/nonexistent/vmlinux"],
    ] {
        let (code, out, err) = print_cmdline(args, &[]);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!out.contains("owvmm.disk="), "{args:?}: {out}");
    }
    if pvm {
        assert!(
            err.contains(&format!("owvmm: added for kvm_pvm: {SWITCH} -- ")),
            "{err}"
        );
    } else {
        assert!(err.trim().is_empty(), "{err}");
    }

    // The user's command line, with the options of `run`: the user's values win.
    let (code, out, err) = print_cmdline(
        &[
            "--cmdline",
            "console=ttyS0 clearcpuid=pku",
            "--mem",
            "256",
            "--vcpus",
            "2",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let line = out.trim();
    assert!(line.starts_with("console=ttyS0 clearcpuid=pku"), "{line}");
    assert!(!line.contains("popcnt"), "{line}");
    assert_eq!(has(line, SWITCH), pvm, "{line}");
    let (_, out, _) = print_cmdline(&["--cmdline", "console=ttyS0 owvmm.pvm_quirks=0"], &[]);
    assert!(!has(out.trim(), SWITCH), "{out}");

    // OWVMM-side quirks turned off: exactly the neutral default, nothing added.
    let (code, out, err) = print_cmdline(&[], &[("OWVMM_NO_CMDLINE_QUIRKS", "1")]);
    assert_eq!(code, 0, "{err}");
    let line = out.trim();
    assert!(line.starts_with("console=ttyS0 "), "{line}");
    for w in [
        "owvmm.pvm_quirks",
        "clearcpuid",
        "no-kvm-hypercalls",
        "GLIBC_TUNABLES",
        "initcall_blacklist",
    ] {
        assert!(!line.contains(w), "{w} in {line}");
    }
    assert!(err.trim().is_empty(), "{err}");

    // A snapshot's command line is what it booted with; a missing one is refused.
    refused(
        &["run", "--print-cmdline", "--restore", "/nonexistent/snap"],
        "cannot read /nonexistent/snap/state.json",
    );
}

#[test]
fn bad_net_options() {
    let d = scratch("cli-net");
    let k = fake_elf(&d, 62);
    let net = |arg: &str, needle: &str| {
        refused(&["run", "--kernel", &k, "--net", arg], needle);
    };
    // A tap that does not exist is refused, never created.
    net(
        "tap=doesnotexist0",
        "--net refused: tap doesnotexist0 does not exist",
    );
    assert!(!std::path::Path::new("/sys/class/net/doesnotexist0").exists());
    net("tap=lo", "lo is not a tap device");
    net(
        "tap=t0,mac=01:00:5e:00:00:01",
        "mac=\"01:00:5e:00:00:01\" is a multicast address",
    );
    net("tap=t0,mac=06:00:00:00:00", "is not six hex bytes");
    net(
        "tap=t0,ip=169.254.77.300/24",
        "is not a unicast IPv4 ADDR/PREFIX",
    );
    net(
        "tap=t0,ip=169.254.77.2",
        "is not a unicast IPv4 ADDR/PREFIX",
    );
    net(
        "tap=t0,ip=169.254.77.2/24,gw=10.0.0.1",
        "not another address in the subnet",
    );
    net("ip=169.254.77.2/24", "tap=NAME is missing");
    net("tap=t0,mtu=9000", "unknown key \"mtu\"");
}

#[test]
fn with_packages_that_debian_does_not_have() {
    let d = scratch("cli-with");
    let k = fake_elf(&d, 62);
    refused(
        &["run", "--kernel", &k, "--with", "Not_A_Name"],
        "--with \"Not_A_Name\": not a Debian package name",
    );
    // apt is asked; the package is named in the one line that ends the run (apt may first
    // say that it updates old package lists).
    let (code, _, err) = run_to_end(&["run", "--kernel", &k, "--with", "owvmm-no-such-package"]);
    assert_eq!(code, 2, "{err}");
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(
        last.starts_with("owvmm: error: Debian has no package \"owvmm-no-such-package\""),
        "{err}"
    );
}
