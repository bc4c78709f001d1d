//! Debian's own `redis-server` in a guest booted with `--with redis-server` (the root
//! image built from Debian's packages), reached by the host's `redis-cli` inside a network
//! namespace of the test's own (tap `owt0`, 169.254.78.0/24, nothing leaves it): `SET`, and
//! `SAVE` writing its dump to a `--disk`. Then the kernel crashes: the crash kernel merges
//! the same root image and mounts the disk again before a shell loop that runs from the
//! image's busybox comes back. `ctl shutdown` leaves the disk clean, and `debugfs` on the
//! host finds the dump with the key in it.
//!
//! Cold-boots one guest. Enabled by the `kvm` feature; needs root, iproute2, e2fsprogs
//! and redis-tools on the host, and Debian's package lists (apt) to build the image.
#![cfg(feature = "kvm")]

use std::process::Command;
use std::time::{Duration, Instant};

use owvmm_tests::{
    assert_fsck_clean, crash_and_go_on, debugfs_cat, mkfs, scratch, standby_dir, tail, wait_looper,
    Netns, Vm,
};
use serde_json::json;

const HOST_IP: &str = "169.254.78.1";
const GUEST_IP: &str = "169.254.78.2";

/// The guest's programs: Debian's redis-server (its dumps go to the disk), and a counter in
/// the image's shell.
const REDIS: &str = "exec redis-server --bind 0.0.0.0 --protected-mode no --dir /data \
    --save '' --appendonly no --daemonize no";
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo \"counter pid=$$ n=$i\"; sleep 1; done";

/// `redis-cli -h GUEST ARGS...` from inside the namespace: its exit code and output.
fn redis_cli(ns: &Netns, args: &[&str]) -> (i32, String) {
    let mut all = vec!["-h", GUEST_IP, "-p", "6379"];
    all.extend_from_slice(args);
    ns.exec("redis-cli", &all)
}

#[test]
fn debian_redis_answers_saves_to_its_disk_and_the_root_image_comes_back_after_a_crash() {
    assert!(
        Command::new("redis-cli").arg("--version").output().is_ok(),
        "the host needs redis-cli (apt-get install redis-tools)"
    );
    standby_dir(1);
    let dir = scratch("debian");
    let data = dir.join("data.img");
    mkfs(&data, 32, None);
    let ns = Netns::new("deb", &format!("{HOST_IP}/24"));
    let disk_arg = format!("{}:/data", data.display());
    let net_arg = format!("tap=owt0,ip={GUEST_IP}/24");
    let mut vm = Vm::boot_in_netns(
        &dir,
        &ns.name,
        &[
            "--with",
            "redis-server",
            "--disk",
            &disk_arg,
            "--net",
            &net_arg,
            "--exec",
            REDIS,
            "--exec",
            COUNTER,
        ],
    );
    vm.wait_agent_ready(Duration::from_secs(1500));
    let mut ev = vm.events();
    let counter = wait_looper(&mut vm, "counter", 3);
    let c = vm.console();
    assert!(c.contains("root image merged"), "{}", tail(&c, 3000));

    // redis answers the host's redis-cli once it listens (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (code, out) = redis_cli(&ns, &["ping"]);
        if code == 0 && out.trim() == "PONG" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis did not answer PING ({code}: {out}):\n{}",
            tail(&vm.console(), 3000)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let value = format!("kept-{}", std::process::id());
    assert_eq!(redis_cli(&ns, &["set", "owvmm:key", &value]).1.trim(), "OK");
    assert_eq!(redis_cli(&ns, &["get", "owvmm:key"]).1.trim(), value);
    assert_eq!(redis_cli(&ns, &["save"]).1.trim(), "OK");

    // The kernel crashes. The counter's shell runs from the image's /usr (its busybox): it
    // comes back only if the crash kernel merged the root image before resurrecting.
    // (redis holds sockets, which are not restored yet.)
    let (_, _, after) = crash_and_go_on(&mut vm, &mut ev, "counter", counter, 4);
    assert!(
        after.contains("root image merged"),
        "the crash kernel did not merge the root image:\n{}",
        tail(&after, 3000)
    );

    let r = vm.call(json!({"cmd": "shutdown"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(vm.wait_exit(Duration::from_secs(180)), 0, "{}", vm.stderr());
    assert_fsck_clean(&data);
    let dump = debugfs_cat(&data, "/dump.rdb");
    assert!(
        dump.starts_with("REDIS") && dump.contains("owvmm:key") && dump.contains(&value),
        "no dump with the key on the disk: {:?}",
        tail(&dump, 300)
    );
}
