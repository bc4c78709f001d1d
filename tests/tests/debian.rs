//! Debian's own `redis-server` (and `memcached`) in a guest booted with `--with
//! redis-server,memcached` (the root
//! image built from Debian's packages), reached by the host's `redis-cli` inside a network
//! namespace of the test's own (tap `owt0`, 169.254.78.0/24, nothing leaves it): `SET`, and
//! `SAVE` writing its dump to a `--disk`. The VM is snapshotted with its devices and
//! restored in a new owvmm, where redis still has the key and saves again. Then the kernel
//! crashes: the crash kernel merges the same root image and mounts the disk again before a
//! shell loop of the image's dash comes back, and a memcached client connected across the
//! crash keeps its connection (TCP repair). `ctl shutdown` leaves the disk clean, and
//! `debugfs` on the host finds the dump with both keys in it.
//!
//! The last test boots the default guest, whose root is the image of Debian's base.
//!
//! Cold-boots one guest per test. Enabled by the `kvm` feature; needs root, iproute2, e2fsprogs
//! and redis-tools on the host, and Debian's package lists (apt) to build the image.
#![cfg(feature = "kvm")]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use owvmm_tests::{
    assert_fsck_clean, crash_and_go_on, debugfs_cat, mkfs, run_to_end, scratch, standby_dir, tail,
    wait_looper, Netns, Vm,
};
use serde_json::json;

const HOST_IP: &str = "169.254.78.1";
const GUEST_IP: &str = "169.254.78.2";

/// The guest's programs: Debian's redis-server (its dumps go to the disk), and a counter in
/// the image's shell (`/bin/sh` is Debian's dash).
const REDIS: &str = "exec redis-server --bind 0.0.0.0 --protected-mode no --dir /data \
    --save '' --appendonly no --daemonize no --unixsocket /run/redis.sock";
/// A client in the guest on redis's Unix socket, once a second (Debian's redis-cli).
const UNIX_CLIENT: &str = "i=0; while :; do i=$((i+1)); \
    r=$(redis-cli -s /run/redis.sock get owvmm:key 2>&1); \
    echo \"unixcli pid=$$ n=$i got=$r\"; sleep 1; done";
/// Debian's memcached with 4 worker threads (their notification pipes and epoll come back).
const MEMCACHED: &str = "exec memcached -u root -l 0.0.0.0 -p 11211 -t 4";
const COUNTER: &str = "ok=ok; case $(readlink -f /bin/sh) in */dash) echo sh-is-dash-$ok;; esac; \
    i=0; while :; do i=$((i+1)); echo \"counter pid=$$ n=$i\"; sleep 1; done";

/// One memcached text-protocol exchange on `c`: `req`, then the reply up to `until`
/// (bounded by the stream's read timeout).
fn memcached_ask(c: &mut TcpStream, req: &str, until: &str) -> std::io::Result<String> {
    c.write_all(req.as_bytes())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&got).contains(until) && got.len() < 4096 {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// A new connection to the guest's memcached, from inside the namespace.
fn memcached_connect(ns: &Netns) -> TcpStream {
    ns.connect(GUEST_IP, 11211)
}

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
    // The root image first, outside the namespace: the guest's namespace has no way to
    // Debian's mirror, and must not.
    let (code, out, err) = run_to_end(&["image", "build", "--with", "redis-server,memcached"]);
    assert_eq!(
        code, 0,
        "owvmm image build --with redis-server,memcached: {err}"
    );
    assert!(out.contains("root "), "{out}");
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
            "redis-server,memcached",
            "--disk",
            &disk_arg,
            "--net",
            &net_arg,
            "--exec",
            REDIS,
            "--exec",
            MEMCACHED,
            "--exec",
            UNIX_CLIENT,
            "--exec",
            COUNTER,
        ],
    );
    vm.wait_agent_ready(Duration::from_secs(1500));
    let counter = wait_looper(&mut vm, "counter", 3);
    let c = vm.console();
    assert!(c.contains("root image merged"), "{}", tail(&c, 3000));
    // The package's programs, not busybox's applets, are what the shell runs.
    assert!(c.contains("sh-is-dash-ok"), "{}", tail(&c, 3000));

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

    // A snapshot with the devices in it; this VM stops, and the snapshot goes on in a new
    // owvmm: the same disk and tap reopened, the queues where the drivers left them.
    let snap = dir.join("snap");
    let r = vm.call(json!({"cmd": "snapshot", "dir": snap.display().to_string()}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(vm.stop(), 5, "{}", vm.stderr());
    let rdir = dir.join("restored");
    std::fs::create_dir_all(&rdir).expect("dir");
    let mut vm = Vm::restore_in_netns(&rdir, &ns.name, &snap);
    let mut ev = vm.events();
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let (code, out) = redis_cli(&ns, &["get", "owvmm:key"]);
        if code == 0 && !out.trim().is_empty() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the restored redis did not answer ({code}: {out}): {}",
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(got.trim(), value, "the restored redis lost the key");
    // Its disk takes writes: a second key, saved again.
    assert_eq!(
        redis_cli(&ns, &["set", "owvmm:restored", "yes-restored"])
            .1
            .trim(),
        "OK"
    );
    assert_eq!(redis_cli(&ns, &["save"]).1.trim(), "OK");
    wait_looper(&mut vm, "counter", 1);
    let redis_pid = |ns: &Netns| {
        let (_, info) = redis_cli(ns, &["info", "server"]);
        info.lines()
            .find_map(|l| l.trim().strip_prefix("process_id:").map(str::to_owned))
            .unwrap_or_default()
    };
    let pid_before = redis_pid(&ns);
    assert!(!pid_before.is_empty(), "no process_id in redis's INFO");
    let mut kept = memcached_connect(&ns);
    let stored = memcached_ask(&mut kept, "set owvmm 0 0 5\r\nhello\r\n", "\r\n").expect("set");
    assert_eq!(stored.trim(), "STORED");

    // The kernel crashes. The counter's shell is the image's dash, with the image's libc:
    // it comes back only if the crash kernel merged the root image before resurrecting.
    // redis comes back with its listening socket, its epoll instance and its pipe: a new
    // client gets the keys from the same process, and a key set now is saved too.
    let at_crash = vm.console().len();
    let (done, _, after) = crash_and_go_on(&mut vm, &mut ev, "counter", counter, 4);
    assert!(
        after.contains("root image merged"),
        "the crash kernel did not merge the root image:\n{}",
        tail(&after, 3000)
    );
    let excluded = done["excluded"].as_array().cloned().unwrap_or_default();
    // Only the old init (the crash kernel has its own) stays behind.
    assert!(
        excluded.iter().all(|e| e["pid"] == json!(1)),
        "left out: {done}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, out) = redis_cli(&ns, &["get", "owvmm:restored"]);
        if code == 0 && out.trim() == "yes-restored" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "redis did not answer after the crash ({code}: {out}): {}\n{}",
            done,
            tail(&vm.console(), 3000)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(redis_cli(&ns, &["get", "owvmm:key"]).1.trim(), value);
    assert_eq!(redis_pid(&ns), pid_before, "redis is not the same process");
    // redis's Unix socket listens at its path again: the guest's client gets the key.
    let want = format!("got={value}");
    owvmm_tests::wait_console_after(
        &mut vm,
        at_crash,
        Duration::from_secs(60),
        "the unix client",
        |c| {
            c.lines()
                .filter(|l| l.trim().starts_with("unixcli "))
                .any(|l| l.trim().ends_with(&want))
                .then_some(())
        },
    );
    // memcached kept its item; a new client gets it.
    let mut fresh = memcached_connect(&ns);
    let got = memcached_ask(&mut fresh, "get owvmm\r\n", "END\r\n").expect("get");
    assert!(got.contains("VALUE owvmm 0 5\r\nhello"), "{got:?}");
    // The connection made before the crash was repaired (TCP repair): the same client
    // socket, never reconnected, gets the item again.
    let reply = memcached_ask(&mut kept, "get owvmm\r\n", "END\r\n")
        .unwrap_or_else(|e| panic!("the connection kept across the crash: {e}\n{done}"));
    assert!(reply.contains("VALUE owvmm 0 5\r\nhello"), "{reply:?}");
    assert_eq!(
        redis_cli(&ns, &["set", "owvmm:crashed", "yes-after-crash"])
            .1
            .trim(),
        "OK"
    );
    assert_eq!(redis_cli(&ns, &["save"]).1.trim(), "OK");

    let r = vm.call(json!({"cmd": "shutdown"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(vm.wait_exit(Duration::from_secs(180)), 0, "{}", vm.stderr());
    assert_fsck_clean(&data);
    let dump = debugfs_cat(&data, "/dump.rdb");
    assert!(
        dump.starts_with("REDIS")
            && dump.contains("owvmm:key")
            && dump.contains(&value)
            && dump.contains("yes-restored")
            && dump.contains("yes-after-crash"),
        "no dump with the key on the disk: {:?}",
        tail(&dump, 300)
    );
}

/// The default guest (no `--kernel`, `--initrd` or `--with`) boots Debian's base from a
/// read-only ext4 disk: `/bin/sh` is the image's dash, `/usr` refuses writes, `/tmp` takes
/// them, and owvmm did not fall back to the initramfs root.
#[test]
fn the_default_guest_boots_debians_base_from_a_read_only_disk() {
    let (code, out, err) = run_to_end(&["image", "build"]);
    assert_eq!(code, 0, "owvmm image build: {err}");
    assert!(
        out.lines().any(|l| l.starts_with("root ")),
        "image build printed no root image: {out}{err}"
    );
    let dir = scratch("default-root");
    let script = "grep ' /.owvmm/root ' /proc/mounts; echo sh=$(readlink -f /bin/sh); \
        if touch /usr/owvmm-w 2>/dev/null; then echo usr-writable; else echo usr-read-only; fi; \
        echo t > /tmp/t && echo tmp-writable";
    let mut vm = Vm::start(&dir, &["--exec", script, "--on-crash", "exit"]);
    let code = vm.wait_exit(Duration::from_secs(900));
    let console = vm.console();
    let stderr = vm.stderr();
    assert_eq!(code, 0, "{}\n{}", tail(&console, 3000), tail(&stderr, 2000));
    assert!(!stderr.contains("warning: no root image"), "{stderr}");
    for want in [
        "/dev/vda /.owvmm/root ext4 ro",
        "sh=/usr/bin/dash",
        "usr-read-only",
        "tmp-writable",
    ] {
        assert!(
            console.contains(want),
            "no {want:?} in {}",
            tail(&console, 3000)
        );
    }
}
