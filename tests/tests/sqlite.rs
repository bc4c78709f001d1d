//! Debian's `sqlite3` with its database on a `--disk`, a transaction open across two kernel
//! crashes: a shell feeds it, through a pipe, one INSERT and one SELECT every 0.3 s inside
//! `BEGIN`, then `COMMIT`. The sqlite3 process, the shell and its `sleep`s come back as
//! one family with the pipe between them, its rollback journal on the disk (never synced
//! by anything) is written back by the recovery, and the transaction commits with every
//! row: 60 rows summing to 1830, and `PRAGMA integrity_check` says ok.
//!
//! Enabled by the `kvm` feature (the README's test command turns it on). Builds the root
//! image with sqlite3 first (needs Debian's mirror, as the other `--with` tests do).
#![cfg(feature = "kvm")]

use std::time::Duration;

use owvmm_tests::{
    mkfs, run_to_end, scratch, standby_dir, tail, wait_console_after, wait_recovery, Vm,
};
use serde_json::json;

const SCRIPT: &str = "{ echo 'CREATE TABLE IF NOT EXISTS t(i INTEGER);'; echo 'BEGIN;'; \
    i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo \"INSERT INTO t VALUES($i);\"; \
    echo \"SELECT 'sql n=' || count(*) FROM t;\"; sleep 0.3; done; echo 'COMMIT;'; \
    echo \"SELECT 'sql committed=' || count(*) || ' sum=' || sum(i) FROM t;\"; } \
    | sqlite3 /data/test.db; echo \"sqlite exit=$?\"; \
    sqlite3 /data/test.db 'PRAGMA integrity_check;' | sed 's/^/sql check=/'";

/// The last `sql n=` count on the console.
fn last_n(console: &str) -> u64 {
    console
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("sql n=")?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn sqlite3_keeps_an_open_transaction_on_its_disk_across_two_crashes() {
    let (code, _, err) = run_to_end(&["image", "build", "--with", "sqlite3"]);
    assert_eq!(code, 0, "owvmm image build --with sqlite3: {err}");
    standby_dir(1);
    let dir = scratch("sqlite");
    let data = dir.join("data.img");
    mkfs(&data, 32, None);
    let disk = format!("{}:/data", data.display());
    let mut vm = Vm::boot(
        &dir,
        &[
            "--with",
            "sqlite3",
            "--disk",
            &disk,
            "--on-crash",
            "microreboot",
            "--exec",
            SCRIPT,
        ],
    );
    vm.wait_agent_ready(Duration::from_secs(900));
    let mut ev = vm.events();
    wait_console_after(&mut vm, 0, Duration::from_secs(300), "sqlite3", |c| {
        (last_n(c) >= 3).then_some(())
    });
    for round in 1..=2 {
        let before = last_n(&vm.console());
        let from = vm.console().len();
        let r = vm.call(json!({"cmd": "crash"}));
        assert_eq!(r["ok"], json!(true), "{r}");
        let (done, restored) = wait_recovery(&mut ev);
        assert!(
            restored.len() >= 3,
            "round {round}: the shell, its feeder and sqlite3 come back: {done}"
        );
        let what = format!("sqlite3 after crash {round}");
        wait_console_after(&mut vm, from, Duration::from_secs(120), &what, |c| {
            (last_n(c) >= before + 3).then_some(())
        });
    }
    wait_console_after(&mut vm, 0, Duration::from_secs(300), "the commit", |c| {
        // A line of its own (the agent's "started" line quotes the script).
        c.lines()
            .any(|l| l.trim().starts_with("sql check="))
            .then_some(())
    });
    let c = vm.console();
    let seen: Vec<u64> = c
        .lines()
        .filter_map(|l| l.trim().strip_prefix("sql n=")?.trim().parse().ok())
        .collect();
    for w in seen.windows(2) {
        assert_eq!(w[1], w[0] + 1, "a row lost or twice: {}", tail(&c, 3000));
    }
    assert!(
        c.contains("sql committed=60 sum=1830"),
        "{}",
        tail(&c, 3000)
    );
    assert!(c.contains("sqlite exit=0"), "{}", tail(&c, 3000));
    assert!(
        c.lines().any(|l| l.trim() == "sql check=ok"),
        "{}",
        tail(&c, 3000)
    );
    vm.stop();
}
