//! The recovery benchmark's Markdown section.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::guest::{BootTime, CrashRun};
use super::workload::{self, Workload, GUEST_PROGRAM};
use super::{Header, Opts, SizeResult};
use crate::report::{cell, median, num, Table};

/// Marks the section in a report it was put into (see [`splice`]).
pub const BEGIN: &str = "<!-- owvmm-bench --recovery: begin -->";
/// End mark.
pub const END: &str = "<!-- owvmm-bench --recovery: end -->";

/// `doc` with its recovery section (between [`BEGIN`] and [`END`]) replaced by `section`,
/// or with `section` appended when it has none.
pub fn splice(doc: &str, section: &str) -> String {
    let marked = format!("{BEGIN}\n\n{}\n\n{END}\n", section.trim_end());
    if let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) {
        if b < e {
            let rest = doc[e + END.len()..].trim_start_matches('\n');
            return format!(
                "{}{marked}{}{rest}",
                &doc[..b],
                if rest.is_empty() { "" } else { "\n" }
            );
        }
    }
    format!("{}\n\n{marked}", doc.trim_end())
}

/// Text with its line breaks (log tails in errors) folded into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The median over the runs where the program came back.
fn med_good(runs: &[CrashRun], f: impl Fn(&CrashRun) -> Option<f64>) -> Option<f64> {
    median(
        &runs
            .iter()
            .filter(|r| r.ok())
            .filter_map(f)
            .collect::<Vec<_>>(),
    )
}

/// A median over the runs where the program came back; over all runs that have the value
/// (marked `*`) when none did.
fn med(runs: &[CrashRun], f: impl Fn(&CrashRun) -> Option<f64>, digits: usize) -> String {
    let good: Vec<f64> = runs.iter().filter(|r| r.ok()).filter_map(&f).collect();
    if !good.is_empty() {
        return num(median(&good), digits);
    }
    let all: Vec<f64> = runs.iter().filter_map(&f).collect();
    match median(&all) {
        Some(m) => format!("{}*", num(Some(m), digits)),
        None => "-".into(),
    }
}

#[allow(clippy::cast_precision_loss)] // MiB counts far below 2^52
fn mib_f(v: Option<u64>) -> Option<f64> {
    v.map(|x| x as f64)
}

fn ok_boots(r: &SizeResult) -> Vec<&BootTime> {
    r.boots.iter().filter_map(|b| b.as_ref().ok()).collect()
}

/// Median time until the program prints again over the good runs, and of the reboots.
fn headline(r: &SizeResult) -> (Option<f64>, Option<f64>) {
    let again = median(
        &r.crashes
            .iter()
            .filter(|c| c.ok())
            .filter_map(|c| c.again_s)
            .collect::<Vec<_>>(),
    );
    let reboot = median(
        &ok_boots(r)
            .iter()
            .map(|b| b.first_line_s)
            .collect::<Vec<_>>(),
    );
    (again, reboot)
}

/// What a workload's state was after the crash (from the first run that came back).
fn state_after_crash(r: &SizeResult) -> String {
    let Some(c) = r.crashes.iter().find(|c| c.ok()) else {
        return match r.crashes.iter().find_map(|c| c.state_after.as_ref()) {
            Some(st) => format!("not kept: {}", st.text()),
            None => "-".into(),
        };
    };
    match (&c.state_after, &c.line_after) {
        (Some(st), _) => format!("kept: {}, same pid", st.text()),
        (None, Some(h)) if r.workload == Workload::Pipeline => format!(
            "kept: n={} → n={}{}, no line missing, same pid",
            c.count_before,
            h.count,
            if h.count == c.count_before + workload::PIPE_EVERY {
                " (the next one)"
            } else {
                " (not the next printed one: a console line was lost)"
            }
        ),
        (None, Some(h)) => format!(
            "kept: count {} → {}, sum=ok, same pid",
            c.count_before, h.count
        ),
        (None, None) => "-".into(),
    }
}

/// What the program held after reboot + restart.
fn state_after_reboot(r: &SizeResult) -> String {
    let Some(b) = ok_boots(r).into_iter().next() else {
        return "-".into();
    };
    match (&b.state, r.workload) {
        (Some(st), _) if st.kept() => format!("kept?: {}", st.text()),
        (Some(st), _) => {
            let refill = r
                .fills
                .iter()
                .find_map(|f| f.as_ref().ok())
                .map_or_else(String::new, |(s, _)| {
                    format!(" (filling it took {s:.1} s in this run)")
                });
            format!(
                "lost: {} of {} keys{refill}",
                st.keys.map_or_else(|| "?".to_string(), |k| k.to_string()),
                st.expected
            )
        }
        (None, Workload::Pipeline) => format!("lost: numbering starts again (n={})", b.count),
        (None, _) => format!("lost: count={}, a new heap", b.count),
    }
}

/// The section (starts with its `##` heading).
pub fn section(h: &Header, results: &[SizeResult], o: &Opts) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Recovery after a guest kernel crash\n");
    let _ = writeln!(
        md,
        "Written by `owvmm-bench --recovery` (`cargo run --release -p owvmm-benches -- --recovery {how} --runs {runs}`) \
         on {date}; {host}; {kvm}. Guest kernel {kernel}, initramfs `{initrd}` (owvmm's defaults); {owvmm}.\n",
        how = o.how,
        runs = o.runs,
        date = h.date,
        host = cell(&h.host),
        kvm = if h.pvm {
            "`kvm_pvm` (guest kernel code runs roughly 1000x slower than on hardware KVM)"
        } else {
            "hardware KVM"
        },
        kernel = h.guest_kernel,
        initrd = h.initrd,
        owvmm = h.owvmm,
    );
    let kinds: Vec<Workload> = results.iter().map(|r| r.workload).collect();
    md.push_str("The workloads (each guest `owvmm run --mem M --vcpus 1 ... --on-crash microreboot --api-sock SOCK`, console on owvmm's \
         stdout, read by the bench; the crash kernel's standby was prepared beforehand with `owvmm standby --mem M --vcpus 1` and \
         `owvmm run` finds it in the cache):\n\n");
    if kinds.iter().any(|w| matches!(w, Workload::Heap { .. })) {
        let _ = writeln!(
            md,
            "- **heap S**: `owtest heap S` (`tests/guest-programs/owtest.c`, built with `cc -O2 -static`, {cc}; `--add owtest-static:{GUEST_PROGRAM}`): \
             it fills S MiB with checksummed data, then every second changes one word, re-adds the whole heap and prints \
             `heap pid=P count=N mib=S sum=ok|BAD`. *Back* is the first `heap` line the new kernel shows, with the same pid, a higher \
             count than the last line before the crash, and `sum=ok` (the whole heap re-checked); it includes up to one second of the \
             program's own sleep and one pass over its heap.",
            cc = cell(&h.cc),
        );
    }
    if kinds.iter().any(|w| w.networked()) {
        let _ = writeln!(
            md,
            "- **redis N / memcached N**: Debian's servers on a root image with the package (`--with redis-server` / `--with memcached`), \
             with `--net tap={tap},ip={ip}/24`: the tap is in a network namespace of the bench's own (host side {host}, link-local; \
             `owvmm run` runs in it, the bench connects from it; nothing leaves it). redis: `{redis}`; memcached: `{mc}`. After the \
             server's first answer the bench fills it with N MiB of {vs}-byte values under `key:0`... (redis: `DEBUG POPULATE K key {vs}` \
             in the guest; memcached: `set key:j 0 0 {vs} noreply` pipelined from the host over TCP, then a `get` of the last key), and \
             checks the count (`DBSIZE` / `curr_items`) and {samples} values spread over the keys. *Back* is the first request \
             served right from a fresh connection after the crash: `GET key:0` / `get key:0` answering the stored value (asked every \
             {probe} ms once the dead kernel is frozen, each attempt bounded: 300 ms to connect, 3 s for the answer). Then, not \
             timed, the bench checks the state again: all the keys, the sampled values, the same pid (`INFO server` / `stats`).",
            tap = workload::TAP,
            ip = workload::GUEST_IP,
            host = workload::HOST_CIDR,
            redis = Workload::Redis { mib: 1 }.exec(),
            mc = Workload::Memcached { mib: 64 }.exec().replace("-m 96", "-m N+N/4+16"),
            vs = workload::VALUE_SIZE,
            samples = workload::SAMPLES,
            probe = 100,
        );
    }
    if kinds.contains(&Workload::Pipeline) {
        let _ = writeln!(
            md,
            "- **pipeline**: `{exec}` (`benches/guest/pipe.c`, `cc -O2 -static`): the producer writes `n=1`, `n=2`, ... every \
             {ms} ms, busybox awk passes them on (flushing each line), the consumer checks that each number is the one before plus 1 and \
             prints `pipe pid=P n=N ok=1|0` for every {every}th. *Back* is the first consumer line the new kernel shows, with the same pid, \
             a higher number than the last line before the crash and `ok=1` (no line lost or doubled in the pipes).",
            exec = Workload::Pipeline.exec(),
            ms = workload::PIPE_MS,
            every = workload::PIPE_EVERY,
        );
    }
    md.push_str(
        "- **Recovery**: once the program runs (printed `count=2` or more; a server: filled), the bench sends `{\"cmd\":\"crash\"}` (`owvmm ctl crash`: a vCPU in \
         kernel mode is made to call `panic()`). *detect* is the crash request until the VMM saw the kernel die (`detect_ms`); *freeze* \
         stopping the vCPUs (`freeze_ms`; reading their state, `capture_ms`, is in the per-run table); *extract* reading the dead kernel's \
         processes and building the manifest; *crash kernel start* mapping the standby and loading its state; *resurrect* the crash \
         kernel's agent recreating the processes (from the VMM's request to the agent's answer); *total* the VMM's `total_ms` from detection \
         to `recovery-done` (it also holds the crash kernel's agent coming up, not a column of its own). All from the VMM's events. \
         *Back after the crash* is the bench's own wall time from the crash request to the program being back (above). A guest whose \
         program came back is crashed again; otherwise the next crash gets a fresh guest.\n",
    );
    md.push_str(
        "- **Reboot + restart** (the peer, same run, same machine): a cold boot of the same guest with the same program, from spawning \
         `owvmm run` to the program's first line (`count=1`, `n=1`) or a server's first request served (`PING` / `version` from a fresh \
         connection, asked every 100 ms from the spawn on); what the program held is lost there (its count and heap, the pipeline's \
         numbering, the servers' keys: the bench counts them on the rebooted server). The cold boots of the guests that were then \
         crashed count, and more are run until there are as many as crashes.\n",
    );
    md.push_str(
        "- *Ratio* = median reboot + restart / median back after the crash. *RSS* is the VMM's resident memory when the recovery ends, \
         before and after the dead kernel's memory is given back. Medians are over the runs where the program came back; `*` marks a \
         median over failed runs (none came back).\n\n",
    );

    let mut t = Table::new(&[
        "workload",
        "guest (MiB)",
        "programs back",
        "detect (ms)",
        "freeze (ms)",
        "extract (ms)",
        "crash kernel start (ms)",
        "resurrect (ms)",
        "total (ms)",
        "back after the crash (s)",
        "reboot + restart (s)",
        "ratio",
        "state after the crash",
        "state after reboot + restart",
        "RSS before → after (MiB)",
    ]);
    for r in results {
        let c = &r.crashes;
        let (again, reboot) = headline(r);
        let ratio = reboot.zip(again).map(|(b, a)| b / a);
        t.row(&[
            r.workload.label(),
            r.mem.to_string(),
            format!("{}/{}", c.iter().filter(|x| x.ok()).count(), c.len()),
            med(c, |x| x.detect_ms, 0),
            med(c, |x| x.freeze_ms, 1),
            med(c, |x| x.extract_ms, 0),
            med(c, |x| x.kernel_start_ms, 0),
            med(c, |x| x.resurrect_ms, 0),
            med(c, |x| x.total_ms, 0),
            num(again, 2),
            num(reboot, 1),
            ratio.map_or_else(|| "-".into(), |x| format!("**{x:.1}x**")),
            cell(&state_after_crash(r)),
            cell(&state_after_reboot(r)).replacen("lost:", "**lost**:", 1),
            format!(
                "{} → {}",
                med(c, |x| mib_f(x.rss_before_mib), 0),
                med(c, |x| mib_f(x.rss_after_mib), 0)
            ),
        ]);
    }
    md.push_str(&t.done());

    let mut failures = Vec::new();
    for r in results {
        size_detail(&mut md, r, &mut failures);
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "### Failed recovery measurements\n");
        for f in &failures {
            let _ = writeln!(md, "- {}", one_line(f));
        }
        md.push('\n');
    }
    md
}

fn size_detail(md: &mut String, r: &SizeResult, failures: &mut Vec<String>) {
    let name = r.workload.label();
    let _ = writeln!(md, "### {name}, {} MiB guest\n", r.mem);
    match &r.standby {
        Ok(s) => {
            let _ = writeln!(
                md,
                "Standby `{}`: {} (`owvmm standby` took {:.1} s).\n",
                s.dir,
                if s.prepared {
                    "prepared by this run (one cold boot)"
                } else {
                    "found in the cache"
                },
                s.secs
            );
        }
        Err(e) => {
            let _ = writeln!(md, "Standby: **failed**: {}\n", cell(&one_line(e)));
            failures.push(format!("{name}: standby: {e}"));
        }
    }
    for (i, f) in r.fills.iter().enumerate() {
        match f {
            Ok((secs, st)) => {
                let _ = writeln!(
                    md,
                    "Fill {}: {} keys of {} bytes in {secs:.1} s ({:.2} MB/s); then {}.\n",
                    i + 1,
                    r.workload.keys(),
                    workload::VALUE_SIZE,
                    (r.workload.mib().unwrap_or(0) << 20) as f64 / secs.max(1e-3) / 1e6,
                    st.text()
                );
            }
            Err(e) => {
                let _ = writeln!(md, "Fill {}: **failed**: {}\n", i + 1, cell(&one_line(e)));
                failures.push(format!("{name}: fill {}: {e}", i + 1));
            }
        }
    }
    let mut t = Table::new(&[
        "crash",
        "program",
        "pid",
        "state before → after",
        "detect (ms)",
        "freeze + capture (ms)",
        "extract (ms)",
        "crash kernel start (ms)",
        "resurrect, VMM / agent (ms)",
        "total (ms)",
        "back (s)",
        "restored / failed",
        "RSS (MiB)",
        "notes",
    ]);
    let f = |v: Option<f64>, d: usize| num(v, d);
    for (i, c) in r.crashes.iter().enumerate() {
        let result = if c.ok() {
            match r.workload {
                Workload::Heap { .. } => "back, same pid, sum=ok",
                Workload::Pipeline => "back, same pid, ok=1",
                _ => "serves, same pid, keys kept",
            }
            .to_string()
        } else {
            failures.push(format!(
                "{name} crash {}: {}",
                i + 1,
                c.failure
                    .as_deref()
                    .unwrap_or("the program did not print again")
            ));
            "**not back**".to_string()
        };
        let mut notes = c.notes.clone();
        if c.extracted == Some(false) {
            notes.push("the program was not among the extracted processes".into());
        }
        if let Some(b) = c.copy_bytes {
            notes.push(format!("manifest copies {} MiB", b >> 20));
        }
        if let Some(why) = c.failure.as_ref().filter(|w| !notes.contains(w)) {
            notes.push(why.clone());
        }
        t.row(&[
            (i + 1).to_string(),
            result,
            if c.pid == 0 {
                "-".into()
            } else {
                c.pid.to_string()
            },
            match (&c.state_before, &c.line_after) {
                (Some(b), _) => format!(
                    "{} → {}",
                    b.text(),
                    c.state_after
                        .as_ref()
                        .map_or_else(|| "-".to_string(), |a| a.text())
                ),
                (None, Some(h)) => format!(
                    "{} → {}{}",
                    c.count_before,
                    h.count,
                    if h.pid == c.pid { "" } else { " (other pid)" }
                ),
                (None, None) if c.pid != 0 => format!("{} → -", c.count_before),
                (None, None) => "-".into(),
            },
            f(c.detect_ms, 0),
            format!("{} + {}", f(c.freeze_ms, 1), f(c.capture_ms, 1)),
            f(c.extract_ms, 0),
            f(c.kernel_start_ms, 0),
            format!("{} / {}", f(c.resurrect_ms, 0), f(c.resurrect_guest_ms, 0)),
            f(c.total_ms, 0),
            f(c.again_s, 2),
            match (c.restored, c.failed) {
                (None, None) => "-".into(),
                (a, b) => format!(
                    "{} / {}",
                    a.map_or("-".into(), |x| x.to_string()),
                    b.map_or("-".into(), |x| x.to_string())
                ),
            },
            match (c.rss_before_mib, c.rss_after_mib) {
                (Some(a), Some(b)) => format!("{a} → {b}"),
                _ => "-".into(),
            },
            cell(&one_line(&notes.join("; "))),
        ]);
    }
    md.push_str(&t.done());

    let mut t = Table::new(&[
        "cold boot",
        "guest then",
        "spawn to the program's first line / answer (s)",
        "spawn to agent ready (s)",
        "state then",
    ]);
    for (i, b) in r.boots.iter().enumerate() {
        match b {
            Ok(b) => t.row(&[
                (i + 1).to_string(),
                if b.crashed_later {
                    "crashed (recovery runs)"
                } else {
                    "stopped"
                }
                .to_string(),
                format!(
                    "{:.1}{}",
                    b.first_line_s,
                    if b.count == 1 {
                        String::new()
                    } else {
                        format!(" (count={})", b.count)
                    }
                ),
                num(b.agent_ready_s, 1),
                match &b.state {
                    Some(st) => st.text(),
                    None if r.workload == Workload::Pipeline => format!("n={}", b.count),
                    None => format!("count={}", b.count),
                },
            ]),
            Err(e) => {
                failures.push(format!("{name} cold boot {}: {e}", i + 1));
                t.row(&[
                    (i + 1).to_string(),
                    "-".into(),
                    format!("error: {}", cell(&one_line(e))),
                    "-".into(),
                    "-".into(),
                ]);
            }
        }
    }
    md.push_str(&t.done());
}

/// The figures as JSON: `{"recovery": [one entry per workload]}`.
pub fn json(results: &[SizeResult], runs: usize) -> String {
    let entries: Vec<Value> = results
        .iter()
        .map(|r| {
            let w = r.workload;
            let (again, reboot) = headline(r);
            let c = &r.crashes;
            let back = c.iter().filter(|x| x.ok()).count();
            let mut e = json!({
                "workload": w.kind(),
                "guest_mib": r.mem,
                "runs": runs,
                "crashes": c.len(),
                "programs_back": back,
                "program_back_s": again,
                "reboot_restart_s": reboot,
                "ratio": reboot.zip(again).map(|(b, a)| b / a),
                // Every run that came back had its state checked (the heap's checksum, the
                // pipeline's numbering, the servers' keys and values).
                "state_checked": back > 0,
                "state_kept": back > 0 && back == c.len(),
                "state_after_crash": state_after_crash(r),
                "state_after_reboot": state_after_reboot(r),
                "state_lost_on_reboot": ok_boots(r).first().map(|b| match &b.state {
                    Some(st) => st.keys != Some(st.expected),
                    None => b.count == 1,
                }),
                "detect_ms": med_good(c, |x| x.detect_ms),
                "freeze_ms": med_good(c, |x| x.freeze_ms),
                "extract_ms": med_good(c, |x| x.extract_ms),
                "crash_kernel_start_ms": med_good(c, |x| x.kernel_start_ms),
                "resurrect_ms": med_good(c, |x| x.resurrect_ms),
                "total_ms": med_good(c, |x| x.total_ms),
                "rss_before_mib": med_good(c, |x| mib_f(x.rss_before_mib)),
                "rss_after_mib": med_good(c, |x| mib_f(x.rss_after_mib)),
                "failures": c.iter().filter_map(|x| x.failure.clone()).collect::<Vec<_>>(),
            });
            match w {
                Workload::Heap { mib } => e["heap_mib"] = json!(mib),
                Workload::Pipeline => {}
                _ => {
                    e["mib"] = json!(w.mib());
                    e["keys"] = json!(w.keys());
                    e["fill_s"] = json!(r
                        .fills
                        .iter()
                        .find_map(|f| f.as_ref().ok().map(|(s, _)| *s)));
                }
            }
            e
        })
        .collect();
    let mut text =
        serde_json::to_string_pretty(&json!({ "recovery": entries })).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::super::console::HeapLine;
    use super::super::StandbyInfo;
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn good(again: f64, total: f64) -> CrashRun {
        CrashRun {
            pid: 60,
            count_before: 5,
            detect_ms: Some(40.0),
            freeze_ms: Some(0.5),
            capture_ms: Some(2.0),
            extract_ms: Some(300.0),
            kernel_start_ms: Some(20.0),
            resurrect_ms: Some(900.0),
            resurrect_guest_ms: Some(850.0),
            total_ms: Some(total),
            again_s: Some(again),
            line_after: Some(HeapLine {
                pid: 60,
                count: 6,
                mib: 16,
                sum_ok: true,
            }),
            restored: Some(1),
            failed: Some(0),
            rss_before_mib: Some(300),
            rss_after_mib: Some(160),
            ..CrashRun::default()
        }
    }

    fn opts() -> Opts {
        Opts {
            workloads: vec![Workload::Heap { mib: 16 }],
            how: "--sizes 16".into(),
            json: None,
            runs: 3,
            out: PathBuf::from("x.md"),
            splice_into: None,
            boot_timeout: Duration::from_secs(1),
            recovery_timeout: Duration::from_secs(1),
            owvmm: PathBuf::from("owvmm"),
        }
    }

    fn header() -> Header {
        Header {
            date: "today".into(),
            host: "2 CPUs".into(),
            pvm: true,
            guest_kernel: "6.1".into(),
            initrd: "i.cpio".into(),
            owvmm: "owvmm 0.1.0".into(),
            cc: "cc 12".into(),
        }
    }

    fn boot(s: f64) -> std::result::Result<BootTime, String> {
        Ok(BootTime {
            first_line_s: s,
            agent_ready_s: Some(s - 2.0),
            pid: 60,
            count: 1,
            crashed_later: false,
            state: None,
        })
    }

    #[test]
    fn medians_ratio_and_failures() {
        let failed = CrashRun {
            pid: 60,
            count_before: 9,
            total_ms: Some(99_999.0),
            failure: Some("recovery-done without resurrection".into()),
            ..CrashRun::default()
        };
        let r = SizeResult {
            workload: Workload::Heap { mib: 16 },
            mem: 256,
            standby: Ok(StandbyInfo {
                dir: "/c/standby".into(),
                secs: 0.1,
                prepared: false,
            }),
            crashes: vec![good(2.0, 1500.0), failed, good(4.0, 2500.0)],
            boots: vec![boot(30.0), boot(40.0), Err("timed out".into())],
            fills: Vec::new(),
        };
        let md = section(&header(), &[r], &opts());
        // Medians over the two good runs only; ratio 35 / 3.
        assert!(md.contains("| heap 16 MiB | 256 | 2/3 | 40 | 0.5 | 300 | 20 | 900 | 2000 | 3.00 | 35.0 | **11.7x** | kept: count 5 → 6, sum=ok, same pid | **lost**: count=1, a new heap | 300 → 160 |"), "{md}");
        assert!(md.contains("**not back**"));
        assert!(md.contains("- heap 16 MiB crash 2: recovery-done without resurrection"));
        assert!(md.contains("- heap 16 MiB cold boot 3: timed out"));
        assert!(md.contains("| 1 | back, same pid, sum=ok | 60 | 5 → 6 |"));
    }

    #[test]
    fn all_failed_is_marked() {
        let failed = CrashRun {
            pid: 60,
            freeze_ms: Some(0.25),
            failure: Some("no".into()),
            ..CrashRun::default()
        };
        let r = SizeResult {
            workload: Workload::Heap { mib: 64 },
            mem: 256,
            standby: Err("boom".into()),
            crashes: vec![failed],
            boots: vec![boot(30.0)],
            fills: Vec::new(),
        };
        let md = section(&header(), &[r], &opts());
        assert!(
            md.contains("| heap 64 MiB | 256 | 0/1 | - | 0.2* |"),
            "{md}"
        );
        assert!(md.contains("| - | 30.0 | - |"), "{md}");
        assert!(md.contains("heap 64 MiB: standby: boom"));
    }

    fn server_result() -> SizeResult {
        use super::super::workload::StateCheck;
        let w = Workload::Redis { mib: 64 };
        let st = |keys| StateCheck {
            pid: Some(300),
            keys: Some(keys),
            expected: 16777,
            sampled: 32,
            sampled_ok: if keys == 0 { 0 } else { 32 },
            evictions: None,
        };
        let mut c = good(40.0, 39_000.0);
        c.pid = 300;
        c.line_after = None;
        c.state_before = Some(st(16777));
        c.state_after = Some(st(16777));
        let mut b = boot(60.0);
        if let Ok(b) = b.as_mut() {
            b.state = Some(st(0));
        }
        SizeResult {
            workload: w,
            mem: 256,
            standby: Err("x".into()),
            crashes: vec![c],
            boots: vec![b],
            fills: vec![Ok((35.0, st(16777)))],
        }
    }

    #[test]
    fn servers_state_kept_and_lost() {
        let mut o = opts();
        o.workloads = vec![Workload::Redis { mib: 64 }];
        let md = section(&header(), &[server_result()], &o);
        assert!(md.contains("| redis 64 MiB of keys | 256 | 1/1 |"), "{md}");
        assert!(md.contains("| 40.00 | 60.0 | **1.5x** | kept: 16777 keys, 32/32 values right, same pid | **lost**: 0 of 16777 keys (filling it took 35.0 s in this run) |"), "{md}");
        assert!(
            md.contains("16777 keys, 32/32 values right → 16777 keys, 32/32 values right"),
            "{md}"
        );
        assert!(
            md.contains("Fill 1: 16777 keys of 4000 bytes in 35.0 s"),
            "{md}"
        );
        assert!(md.contains("**redis N / memcached N**"));
    }

    #[test]
    fn json_entries() {
        let heap = SizeResult {
            workload: Workload::Heap { mib: 16 },
            mem: 256,
            standby: Err("x".into()),
            crashes: vec![good(2.0, 1500.0)],
            boots: vec![boot(30.0)],
            fills: Vec::new(),
        };
        let text = json(&[heap, server_result()], 1);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        let r = &v["recovery"];
        assert_eq!(r[0]["workload"], json!("heap"));
        assert_eq!(r[0]["heap_mib"], json!(16));
        assert_eq!(r[0]["ratio"], json!(15.0));
        assert_eq!(r[1]["workload"], json!("redis"));
        assert_eq!(r[1]["mib"], json!(64));
        assert_eq!(r[1]["runs"], json!(1));
        assert_eq!(r[1]["programs_back"], json!(1));
        assert_eq!(r[1]["program_back_s"], json!(40.0));
        assert_eq!(r[1]["reboot_restart_s"], json!(60.0));
        assert_eq!(r[1]["ratio"], json!(1.5));
        assert_eq!(r[1]["state_checked"], json!(true));
        assert_eq!(r[1]["state_lost_on_reboot"], json!(true));
        assert_eq!(r[1]["keys"], json!(16777));
        assert_eq!(r[1]["fill_s"], json!(35.0));
    }

    #[test]
    fn splicing() {
        let doc = "# r\n\n## A\n\ntext\n";
        let once = splice(doc, "## Recovery\n\nv1\n");
        assert!(once.starts_with("# r\n\n## A\n\ntext\n\n<!--"));
        assert!(once.contains("v1"));
        let twice = splice(&once, "## Recovery\n\nv2\n");
        assert!(!twice.contains("v1") && twice.contains("v2"));
        assert_eq!(twice.matches(BEGIN).count(), 1);
        let mid = format!("{}\n## After\n", once.trim_end());
        let again = splice(&mid, "## Recovery\n\nv3\n");
        assert!(
            again.contains("v3") && again.ends_with("## After\n"),
            "{again}"
        );
        assert!(!again.contains("v1"));
    }
}
