//! `--net` on a real guest: a tap in a network namespace of the test's own, owvmm run
//! inside it, the guest configured by its agent (169.254.77.2/24, default route via .1). The guest pings the
//! host side of the tap (169.254.77.1) and serves a TCP echo (busybox `nc -ll -e cat`);
//! the test sends 1 MiB through it from inside the namespace and checks what comes back.
//! Then the kernel crashes, and the crash kernel must answer on the same address.
//! Traffic stays inside the namespace, on link-local addresses.
//!
//! Cold-boots one guest. Enabled by the `kvm` feature;
//! needs root and `ip` (iproute2).
#![cfg(feature = "kvm")]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use owvmm_tests::{scratch, standby_dir, tail, wait_recovery, Netns, Vm};

const HOST_IP: &str = "169.254.77.1";
const GUEST_IP: &str = "169.254.77.2";
const PORT: u16 = 7000;
/// Bytes echoed through the guest.
const ECHO_BYTES: usize = 1 << 20;

/// Connects to the guest's echo server, retrying while it is not listening yet.
fn connect() -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match TcpStream::connect_timeout(
            &format!("{GUEST_IP}:{PORT}").parse().expect("addr"),
            Duration::from_secs(30),
        ) {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot connect to the guest: {e}"
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// What the guest runs: a ping of the host, then the echo server. (Its markers are built
/// from `$ok` so that the agent's `started ...` line, which quotes the command, does not
/// contain them.)
const PROGRAM: &str = "ok=ok; echo \"guest-mac-$(cat /sys/class/net/eth0/address)\"; \
    if awk '$2==\"00000000\" && $3==\"014DFEA9\" {f=1} END {exit !f}' /proc/net/route; \
    then echo gw-route-$ok; fi; \
    if ping -c 3 -W 10 169.254.77.1; then echo ping-result-$ok; else echo ping-result-failed; fi; \
    echo echo-server-$ok; exec busybox nc -ll -p 7000 -e cat";

#[test]
fn the_guest_pings_the_host_echoes_a_mebibyte_and_is_reachable_after_a_crash() {
    // The crash kernel's standby first: the cold boot below then has both cores.
    standby_dir(1);
    let dir = scratch("net");
    let ns = Netns::new("net", &format!("{HOST_IP}/24"));
    let mut vm = Vm::boot_in_netns(
        &dir,
        &ns.name,
        &[
            "--net",
            &format!("tap=owt0,ip={GUEST_IP}/24,gw={HOST_IP}"),
            "--exec",
            PROGRAM,
        ],
    );
    let c = vm.wait_console("echo-server-ok", Duration::from_secs(1500));
    assert!(
        c.contains("guest-mac-06:00:00:00:00:01"),
        "{}",
        tail(&c, 3000)
    );
    assert!(c.contains("ping-result-ok"), "{}", tail(&c, 3000));
    // gw= gave the guest a default route via the host side (169.254.77.1, little-endian
    // hex in /proc/net/route).
    assert!(c.contains("gw-route-ok"), "{}", tail(&c, 3000));
    assert!(c.contains("3 packets received"), "{}", tail(&c, 3000));

    let data: Vec<u8> = (0..ECHO_BYTES)
        .map(|i| u8::try_from((i * 7 + i / 4096) % 251).unwrap_or(0))
        .collect();
    let sent = data.clone();
    let (got, secs) = ns.run(move || {
        let s = connect();
        s.set_read_timeout(Some(Duration::from_secs(300)))
            .expect("timeout");
        let t0 = Instant::now();
        let mut w = s.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            w.write_all(&sent).expect("send to the guest");
            w.shutdown(Shutdown::Write).expect("shutdown");
        });
        let mut got = Vec::with_capacity(ECHO_BYTES);
        let mut r = s;
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < ECHO_BYTES {
            let n = r.read(&mut buf).expect("read the echo");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.join().expect("writer");
        (got, t0.elapsed().as_secs_f64())
    });
    eprintln!(
        "net: {ECHO_BYTES} bytes echoed by the guest in {secs:.1} s ({:.0} KiB/s each way)",
        ECHO_BYTES as f64 / 1024.0 / secs
    );
    assert_eq!(got.len(), data.len(), "echo length");
    assert!(got == data, "the echo differs from what was sent");

    // The kernel crashes. The echo server holds sockets, which are not restored yet, so
    // nothing listens afterwards; but the crash kernel brings the interface up again
    // before anything is resurrected, so a connection to the guest is refused by its TCP
    // stack (a reset), where a guest without a network would let it time out.
    let mut ev = vm.events();
    let r = vm.call(serde_json::json!({"cmd": "crash"}));
    assert_eq!(r["ok"], serde_json::json!(true), "{r}");
    let (done, _) = wait_recovery(&mut ev);
    let answered = ns.run(|| {
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = format!("{GUEST_IP}:{}", PORT + 1).parse().expect("addr");
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
                other if Instant::now() > deadline => return Err(format!("{other:?}")),
                _ => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    });
    assert!(
        answered.is_ok(),
        "the guest's network did not come back after the crash ({done}): {answered:?}\n{}",
        tail(&vm.console(), 3000)
    );
    assert_eq!(vm.stop(), 5, "{}", vm.stderr());
}
