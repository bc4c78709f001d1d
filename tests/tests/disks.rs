//! `--disk` on a real guest: ext4 images made on the host are attached as virtio-blk,
//! mounted by the agent before the programs start, a read-only one refuses writes, what a
//! program writes reaches the image, the disks come back in the crash kernel (probed and
//! mounted after the crash) with the program's open file, and `ctl shutdown` leaves a
//! filesystem that the host's `e2fsck` finds clean and `debugfs` reads. A disk the guest
//! cannot mount ends the run with exit code 6 and the reason.
//!
//! Cold-boots two guests. Enabled by the `kvm`
//! feature; needs e2fsprogs on the host.
#![cfg(feature = "kvm")]

use std::time::Duration;

use owvmm_tests::{
    assert_fsck_clean, crash_and_go_on, debugfs_cat, last_line, mkfs, num, scratch, standby_dir,
    tail, wait_looper, Vm,
};
use serde_json::json;

/// What the guest does: reads the read-only disk, tries to write it, then appends a
/// numbered line to a log on the other disk (an fd the shell keeps open) every 200 ms and
/// says how far it got every 10 lines. It never syncs: at the crash, the last lines are
/// only in the dead kernel's page cache (ext4 writes back after 30 s), and the recovery
/// must write them to the disk.
const PROGRAM: &str = "cat /ref/hello.txt; \
    if echo no > /ref/new 2>/dev/null; then echo ro-write-accepted; else echo ro-write-refused; fi; \
    grep -E ' /(data|ref) ' /proc/mounts | sed 's/^/mounted: /'; \
    mkdir -p /data/out && exec 3>>/data/out/log && i=0; \
    while :; do i=$((i+1)); echo \"tick $i\" >&3; \
    case $i in *0) echo \"logger pid=$$ n=$i\";; esac; sleep 0.2; done";

#[test]
fn disks_are_mounted_kept_across_a_crash_and_left_clean_by_shutdown() {
    // The crash kernel's standby first: the cold boot below then has both cores.
    standby_dir(1);
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
    let mut ev = vm.events();
    let shell = wait_looper(&mut vm, "logger", 10);
    let c = vm.console();
    assert!(
        c.contains("hello from the host image"),
        "{}",
        tail(&c, 3000)
    );
    assert!(c.contains("ro-write-refused"), "{}", tail(&c, 3000));
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

    // The kernel crashes; the crash kernel probes both disks, mounts them (replaying the
    // journal) and the shell goes on appending to its log through the same fd.
    let n_before = last_line(&c, "logger").map_or(0, |l| num(l, "n"));
    let (_, after, _) = crash_and_go_on(&mut vm, &mut ev, "logger", shell, 20);
    let n_after = num(&after, "n");

    let r = vm.call(json!({"cmd": "shutdown"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    ev.wait_event("guest-poweroff-requested", Duration::from_secs(120));
    assert_eq!(vm.wait_exit(Duration::from_secs(120)), 0, "{}", vm.stderr());

    // Unmounted cleanly: nothing for a forced check to fix.
    assert_fsck_clean(&data);
    // Every line, before and after the crash, in order, none lost. (A write(2) the crash
    // caught after its effect but before it returned is done again: one line may repeat.)
    let log = debugfs_cat(&data, "/out/log");
    let ticks: Vec<u64> = log
        .lines()
        .map(|l| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    let repeats = ticks.windows(2).filter(|w| w[0] == w[1]).count();
    let mut distinct = ticks.clone();
    distinct.dedup();
    assert!(
        repeats <= 1
            && distinct.len() as u64 >= n_after
            && distinct.iter().copied().eq(1..=distinct.len() as u64),
        "log lines across the crash (at n={n_before}) are not 1.. ({repeats} repeated): {}",
        tail(&log, 2000)
    );
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
            // No crash kernel: its standby would be prepared twice, here and in the other
            // test.
            "--on-crash",
            "exit",
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
