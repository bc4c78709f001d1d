//! `--disk` on a real guest: ext4 images made on the host are attached as virtio-blk,
//! mounted by the agent before the programs start, a read-only one refuses writes, what a
//! program writes reaches the image, and `ctl shutdown` leaves a filesystem that the host's
//! `e2fsck` finds clean and `debugfs` reads. A disk the guest cannot mount ends the run with
//! exit code 6 and the reason.
//!
//! Cold-boots two guests (snapshots hold no virtio state yet). Enabled by the `kvm`
//! feature; needs e2fsprogs on the host.
#![cfg(feature = "kvm")]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use owvmm_tests::{scratch, tail, Vm};
use serde_json::json;

/// An ext4 image of `mib` MiB holding the files of `from` (or empty).
fn mkfs(img: &Path, mib: u32, from: Option<&Path>) {
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-L", "owtest"]);
    if let Some(d) = from {
        c.arg("-d").arg(d);
    }
    let out = c
        .arg(img)
        .arg(format!("{mib}M"))
        .output()
        .expect("mkfs.ext4 (e2fsprogs) must be installed");
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
}

/// `debugfs -R "cat PATH" img` on the host.
fn debugfs_cat(img: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the guest does: reads the read-only disk, tries to write it, writes the other
/// one and syncs, then waits to be shut down.
const PROGRAM: &str = "cat /ref/hello.txt; \
    if echo no > /ref/new 2>/dev/null; then echo ro-write-accepted; else echo ro-write-refused; fi; \
    mkdir -p /data/out && seq 1 5000 > /data/out/numbers && echo written-by-guest > /data/out/note \
    && sync && echo disk-writes-done; \
    grep -E ' /(data|ref) ' /proc/mounts | sed 's/^/mounted: /'; \
    while :; do sleep 1; done";

#[test]
fn disks_are_mounted_written_and_left_clean_by_shutdown() {
    let dir = scratch("disks");
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).expect("seed dir");
    std::fs::write(seed.join("hello.txt"), "hello from the host image\n").expect("seed file");
    let (data, reference) = (dir.join("data.img"), dir.join("ref.img"));
    mkfs(&data, 32, None);
    mkfs(&reference, 16, Some(&seed));
    let (data_arg, ref_arg) = (
        format!("{}:/data", data.display()),
        format!("{}:/ref:ro", reference.display()),
    );
    let mut vm = Vm::boot(
        &dir,
        &["--disk", &data_arg, "--disk", &ref_arg, "--exec", PROGRAM],
    );
    vm.wait_agent_ready(Duration::from_secs(1200));
    let c = vm.wait_console("disk-writes-done", Duration::from_secs(300));
    assert!(
        c.contains("hello from the host image"),
        "{}",
        tail(&c, 3000)
    );
    assert!(c.contains("ro-write-refused"), "{}", tail(&c, 3000));
    let c = vm.wait_console("mounted: /dev/vdb /ref", Duration::from_secs(60));
    assert!(
        c.contains("mounted: /dev/vda /data ext4 rw"),
        "{}",
        tail(&c, 3000)
    );
    assert!(
        c.contains("mounted: /dev/vdb /ref ext4 ro"),
        "{}",
        tail(&c, 3000)
    );

    let mut ev = vm.events();
    let r = vm.call(json!({"cmd": "shutdown"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    ev.wait_event("guest-poweroff-requested", Duration::from_secs(120));
    assert_eq!(vm.wait_exit(Duration::from_secs(120)), 0, "{}", vm.stderr());

    // Unmounted cleanly: no journal to replay, nothing for a forced check to fix.
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&data)
        .output()
        .expect("e2fsck");
    assert!(fsck.status.success(), "e2fsck found problems: {fsck:?}");
    assert_eq!(debugfs_cat(&data, "/out/note"), "written-by-guest\n");
    let numbers = debugfs_cat(&data, "/out/numbers");
    let want: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    assert!(numbers == want, "numbers: {} bytes", numbers.len());
    // The read-only image is as it was.
    assert_eq!(debugfs_cat(&reference, "/new"), "");
    assert_eq!(
        debugfs_cat(&reference, "/hello.txt"),
        "hello from the host image\n"
    );
}

#[test]
fn a_disk_the_guest_cannot_mount_ends_the_run_with_code_6() {
    let dir = scratch("disk-unmountable");
    // Not a filesystem: 4 MiB of a repeating pattern.
    let img = dir.join("junk.img");
    let junk: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&img, junk).expect("junk image");
    let arg = format!("{}:/junk", img.display());
    let mut vm = Vm::boot(
        &dir,
        &[
            "--disk",
            &arg,
            "--exec",
            "printf 'ran-%s\\n' without-its-disk",
        ],
    );
    let code = vm.wait_exit(Duration::from_secs(1500));
    let err = vm.stderr();
    assert_eq!(code, 6, "{}", tail(&err, 3000));
    assert!(
        err.contains("could not mount its disk at /junk"),
        "{}",
        tail(&err, 3000)
    );
    assert!(!vm.console().contains("ran-without-its-disk"));
}
