//! The crash procedure example (`sdk/examples/kvserver.c`, built with `owvmm sdk`'s
//! header) on both of its paths, across two kernel crashes. Two servers run in the guest:
//! one whose procedure continues, one whose procedure saves its table and restarts. A
//! client connection is held open to each across each crash: TCP repair brings it back,
//! so nothing is lost (`0 lost`), and the continuing server answers on it; the restarted
//! one closed it (a restart closes every descriptor but 0-2), and its client sees that,
//! not a hang. Afterwards both servers have every key, under the same pid; the continuing
//! one counts its crashes (1, then 2), the restarted one starts from its saved file each
//! time.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on).
#![cfg(feature = "kvm")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use owvmm_tests::{
    run_to_end, scratch, standby_dir, tail, wait_console_after, wait_recovery, workspace_root,
    Netns, Vm,
};
use serde_json::json;

const HOST_IP: &str = "169.254.79.1";
const GUEST_IP: &str = "169.254.79.2";
/// The server whose procedure continues, and the one whose procedure restarts.
const CONTINUE: u16 = 7070;
const RESTART: u16 = 7071;

/// The SDK as a user gets it (`owvmm sdk DIR`), and the example built with it, static.
fn kvserver() -> PathBuf {
    let dir = scratch("crash-procedure-sdk");
    let (code, out, err) = run_to_end(&["sdk", &dir.display().to_string(), "--force"]);
    assert_eq!(code, 0, "owvmm sdk: {err}");
    assert!(out.contains("owvmm.h"), "{out}");
    let bin = dir.join("kvserver");
    let st = Command::new("cc")
        .args(["-O2", "-static", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(dir.join("include"))
        .arg("-o")
        .arg(&bin)
        .arg(dir.join("examples/kvserver.c"))
        .status()
        .expect("run cc");
    assert!(st.success(), "cc kvserver.c failed");
    assert!(workspace_root().join("sdk/include/owvmm.h").exists());
    bin
}

/// A connection to the server on `port`, from inside the namespace.
fn connect(ns: &Netns, port: u16) -> TcpStream {
    ns.connect(GUEST_IP, port)
}

/// Sends each request on a new connection and returns the reply lines.
fn ask(ns: &Netns, port: u16, requests: &[&str]) -> Vec<String> {
    let c = connect(ns, port);
    let mut r = BufReader::new(c.try_clone().expect("clone"));
    let mut w = c;
    requests
        .iter()
        .map(|q| {
            w.write_all(format!("{q}\n").as_bytes()).expect("send");
            let mut line = String::new();
            r.read_line(&mut line).expect("reply");
            line.trim().to_owned()
        })
        .collect()
}

/// Uses a connection held across a crash to the restarted server: it was closed, so it
/// must fail (reset or end of file), not hang or answer.
fn held_is_closed(mut c: TcpStream, port: u16) {
    let _ = c.write_all(b"COUNT\n");
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "kvserver {port}: a connection from before its restart answered {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "kvserver {port}: a connection from before its restart hangs"
        ),
    }
}

/// Uses a connection held across a crash to the continuing server: repaired, it answers.
fn held_answers(c: TcpStream, port: u16, want: &str) {
    let mut w = c.try_clone().expect("clone");
    w.write_all(b"COUNT\n")
        .expect("send on the kept connection");
    let mut line = String::new();
    BufReader::new(c)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("kvserver {port}: the kept connection: {e}"));
    assert_eq!(line.trim(), want, "kvserver {port}: the kept connection");
}

/// The pid a server printed when it started listening (the last time).
fn listening_pid(console: &str, port: u16) -> Option<u64> {
    let prefix = format!("kvserver: listening on port {port} (pid ");
    console.lines().rev().find_map(|l| {
        let rest = l.trim().strip_prefix(&prefix)?;
        rest.trim_end_matches(')').parse().ok()
    })
}

#[test]
fn the_example_servers_procedure_continues_or_saves_and_restarts_over_two_crashes() {
    let bin = kvserver();
    standby_dir(1);
    let dir = scratch("crash-procedure");
    let ns = Netns::new("owcp", &format!("{HOST_IP}/24"));
    let add = format!("{}:/opt/kvserver", bin.display());
    let net = format!("tap=owt0,ip={GUEST_IP}/24");
    let cont = format!("/opt/kvserver --port {CONTINUE} --on-crash continue --state /var/lib/kv/c");
    let rest = format!("/opt/kvserver --port {RESTART} --on-crash restart --state /var/lib/kv/r");
    let mut vm = Vm::boot_in_netns(
        &dir,
        &ns.name,
        &[
            "--add",
            &add,
            "--net",
            &net,
            "--on-crash",
            "microreboot",
            "--exec",
            &cont,
            "--exec",
            &rest,
        ],
    );
    vm.wait_agent_ready(Duration::from_secs(900));
    let mut ev = vm.events();
    let pids = wait_console_after(&mut vm, 0, Duration::from_secs(300), "both servers", |c| {
        Some((listening_pid(c, CONTINUE)?, listening_pid(c, RESTART)?))
    });
    for port in [CONTINUE, RESTART] {
        let sets: Vec<String> = (1..=5).map(|i| format!("SET k{i} v{i}-{port}")).collect();
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        assert!(ask(&ns, port, &sets).iter().all(|r| r == "OK"));
    }
    for round in 1..=2u32 {
        let held: Vec<TcpStream> = [CONTINUE, RESTART]
            .iter()
            .map(|&p| {
                let c = connect(&ns, p);
                let mut w = c.try_clone().expect("clone");
                w.write_all(b"COUNT\n").expect("send");
                let mut line = String::new();
                BufReader::new(c.try_clone().expect("clone"))
                    .read_line(&mut line)
                    .expect("count");
                assert!(line.starts_with("COUNT "), "{line}");
                c
            })
            .collect();
        let from = vm.console().len();
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "{r}");
        let (done, restored) = wait_recovery(&mut ev);
        for p in [pids.0, pids.1] {
            assert!(
                restored.contains(&p),
                "round {round}: {p} not restored: {done}"
            );
        }
        // The continuing server: its procedure ran, heard of the lost connection, and it
        // goes on with the same table.
        let want = format!("kvserver: crash procedure: crash {round}, 0 lost");
        wait_console_after(&mut vm, from, Duration::from_secs(120), &want, |c| {
            c.contains(&want).then_some(())
        });
        // The restarting one: saved, restarted (same pid), loaded its file back.
        let saved = "keys to /var/lib/kv/r, restarting";
        let loaded = format!("kvserver: loaded {} keys from /var/lib/kv/r", 4 + round);
        let listening = format!("kvserver: listening on port {RESTART} ");
        wait_console_after(&mut vm, from, Duration::from_secs(120), &loaded, |c| {
            (c.contains(saved) && c.contains(&loaded) && c.contains(&listening)).then_some(())
        });
        let since = vm.console().get(from..).unwrap_or_default().to_owned();
        assert_eq!(
            listening_pid(&since, RESTART),
            Some(pids.1),
            "round {round}: the restarted server has another pid\n{}",
            tail(&since, 3000)
        );
        assert!(
            since.contains("kvserver: crash procedure: crash 1, 0 lost"),
            "round {round}: the restarted image counts from 1 again\n{}",
            tail(&since, 3000)
        );
        let mut held = held.into_iter();
        if let (Some(kept), Some(closed)) = (held.next(), held.next()) {
            held_answers(kept, CONTINUE, &format!("COUNT {}", 4 + round));
            held_is_closed(closed, RESTART);
        }
        for port in [CONTINUE, RESTART] {
            let n = 4 + round;
            let got = ask(&ns, port, &["GET k1", &format!("GET k{n}"), "COUNT"]);
            assert_eq!(
                got,
                [
                    format!("VALUE v1-{port}"),
                    format!("VALUE v{n}-{port}"),
                    format!("COUNT {n}")
                ],
                "round {round}, server {port}\n{}",
                tail(&vm.console(), 3000)
            );
            let next = format!("SET k{} v{}-{port}", n + 1, n + 1);
            assert_eq!(ask(&ns, port, &[&next]), ["OK"]);
        }
    }
    vm.stop();
}
