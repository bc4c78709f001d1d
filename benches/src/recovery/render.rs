//! The recovery benchmark's Markdown section.

use std::fmt::Write as _;

use super::guest::{BootTime, CrashRun, GUEST_PROGRAM};
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

/// The section (starts with its `##` heading).
pub fn section(h: &Header, results: &[SizeResult], o: &Opts) -> String {
    let mut md = String::new();
    let sizes = o
        .sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let _ = writeln!(md, "## Recovery after a guest kernel crash\n");
    let _ = writeln!(
        md,
        "Written by `owvmm-bench --recovery` (`cargo run --release -p owvmm-benches -- --recovery --sizes {sizes} --runs {runs}`) \
         on {date}; {host}; {kvm}. Guest kernel {kernel}, initramfs `{initrd}` (owvmm's defaults); {owvmm}.\n",
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
    let _ = writeln!(
        md,
        "The program is `owtest heap S` (`tests/guest-programs/owtest.c`, built with `cc -O2 -static`, {cc}): it fills S MiB \
         with checksummed data, then every second changes one word, re-adds the whole heap and prints \
         `heap pid=P count=N mib=S sum=ok|BAD`. Each guest is `owvmm run --mem M --vcpus 1 --add owtest-static:{GUEST_PROGRAM} \
         --exec \"{GUEST_PROGRAM} heap S\" --on-crash microreboot --api-sock SOCK` (console on owvmm's stdout, read by the bench); the crash \
         kernel's standby was prepared beforehand with `owvmm standby --mem M --vcpus 1` and `owvmm run` finds it in the cache.\n",
        cc = cell(&h.cc),
    );
    md.push_str(
        "- **Recovery**: once the program printed `count=2` or more, the bench sends `{\"cmd\":\"crash\"}` (`owvmm ctl crash`: a vCPU in \
         kernel mode is made to call `panic()`). *detect* is the crash request until the VMM saw the kernel die (`detect_ms`); *freeze* \
         stopping the vCPUs (`freeze_ms`; reading their state, `capture_ms`, is in the per-run table); *extract* reading the dead kernel's \
         processes and building the manifest; *crash kernel start* mapping the standby and loading its state; *resurrect* the crash \
         kernel's agent recreating the processes (from the VMM's request to the agent's answer); *total* the VMM's `total_ms` from detection \
         to `recovery-done` (it also holds the crash kernel's agent coming up, not a column of its own). All from the VMM's events. \
         *Program prints again* is the bench's own wall time from the crash request to the first `heap` line the new kernel shows; \
         it counts only if that line has the same pid, a higher count than the last line before the crash, and `sum=ok` (the whole \
         heap re-checked). It includes up to one second of the program's own sleep and one pass over its heap. A guest whose \
         program came back is crashed again; otherwise the next crash gets a fresh guest.\n",
    );
    md.push_str(
        "- **Reboot + restart** (the peer, same run, same machine): a cold boot of the same guest with the same program, from spawning \
         `owvmm run` to the program's first line (`count=1`); the program's in-memory state (its count, its heap) is lost. The cold \
         boots of the guests that were then crashed count, and more are run until there are as many as crashes.\n",
    );
    md.push_str(
        "- *Ratio* = median reboot + restart / median program prints again. *RSS* is the VMM's resident memory when the recovery ends, \
         before and after the dead kernel's memory is given back. Medians are over the runs where the program came back; `*` marks a \
         median over failed runs (none came back).\n\n",
    );

    let mut t = Table::new(&[
        "heap (MiB)",
        "guest (MiB)",
        "programs back",
        "detect (ms)",
        "freeze (ms)",
        "extract (ms)",
        "crash kernel start (ms)",
        "resurrect (ms)",
        "total (ms)",
        "program prints again (s)",
        "reboot + restart (s)",
        "ratio",
        "RSS before → after (MiB)",
    ]);
    for r in results {
        let c = &r.crashes;
        let (again, reboot) = headline(r);
        let ratio = reboot.zip(again).map(|(b, a)| b / a);
        t.row(&[
            r.mib.to_string(),
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
    let _ = writeln!(md, "### {} MiB heap, {} MiB guest\n", r.mib, r.mem);
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
            failures.push(format!("{} MiB: standby: {e}", r.mib));
        }
    }
    let mut t = Table::new(&[
        "crash",
        "program",
        "pid",
        "count before → after",
        "detect (ms)",
        "freeze + capture (ms)",
        "extract (ms)",
        "crash kernel start (ms)",
        "resurrect, VMM / agent (ms)",
        "total (ms)",
        "prints again (s)",
        "restored / failed",
        "RSS (MiB)",
        "notes",
    ]);
    let f = |v: Option<f64>, d: usize| num(v, d);
    for (i, c) in r.crashes.iter().enumerate() {
        let result = if c.ok() {
            "back, same pid, sum=ok".to_string()
        } else {
            failures.push(format!(
                "{} MiB crash {}: {}",
                r.mib,
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
            match &c.line_after {
                Some(h) => format!(
                    "{} → {}{}",
                    c.count_before,
                    h.count,
                    if h.pid == c.pid { "" } else { " (other pid)" }
                ),
                None if c.pid != 0 => format!("{} → -", c.count_before),
                None => "-".into(),
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
        "spawn to the program's first line (s)",
        "spawn to agent ready (s)",
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
            ]),
            Err(e) => {
                failures.push(format!("{} MiB cold boot {}: {e}", r.mib, i + 1));
                t.row(&[
                    (i + 1).to_string(),
                    "-".into(),
                    format!("error: {}", cell(&one_line(e))),
                    "-".into(),
                ]);
            }
        }
    }
    md.push_str(&t.done());
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
            sizes: vec![16],
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
            mib: 16,
            mem: 256,
            standby: Ok(StandbyInfo {
                dir: "/c/standby".into(),
                secs: 0.1,
                prepared: false,
            }),
            crashes: vec![good(2.0, 1500.0), failed, good(4.0, 2500.0)],
            boots: vec![boot(30.0), boot(40.0), Err("timed out".into())],
        };
        let md = section(&header(), &[r], &opts());
        // Medians over the two good runs only; ratio 35 / 3.
        assert!(md.contains("| 16 | 256 | 2/3 | 40 | 0.5 | 300 | 20 | 900 | 2000 | 3.00 | 35.0 | **11.7x** | 300 → 160 |"), "{md}");
        assert!(md.contains("**not back**"));
        assert!(md.contains("- 16 MiB crash 2: recovery-done without resurrection"));
        assert!(md.contains("- 16 MiB cold boot 3: timed out"));
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
            mib: 64,
            mem: 256,
            standby: Err("boom".into()),
            crashes: vec![failed],
            boots: vec![boot(30.0)],
        };
        let md = section(&header(), &[r], &opts());
        assert!(md.contains("| 64 | 256 | 0/1 | - | 0.2* |"), "{md}");
        assert!(md.contains("| - | 30.0 | - |"), "{md}");
        assert!(md.contains("64 MiB: standby: boom"));
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
