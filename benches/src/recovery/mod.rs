//! `owvmm-bench --recovery`: how long a program is gone when the guest kernel crashes under
//! owvmm (`--on-crash microreboot`), against rebooting the guest and restarting the program,
//! for each workload (the heap program, redis-server, memcached, a shell pipeline).
//! See benches/README.md.

mod console;
mod guest;
mod kv;
mod render;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::error::{chain, io, BenchError, Result};
use crate::proc::{self, tail, Guard};
use guest::{BootTime, CrashRun, Env, Guest};
use workload::{StateCheck, Workload};

pub use workload::DEFAULT_SIZES;

/// What `--recovery` was asked to do.
pub struct Opts {
    /// The workloads, in order.
    pub workloads: Vec<Workload>,
    /// How they were given (`--sizes 16,64` or `--workloads ...`), for the report.
    pub how: String,
    /// Also write the results as JSON here.
    pub json: Option<PathBuf>,
    /// Crashes (and reboots) per size.
    pub runs: usize,
    /// The section as its own Markdown file.
    pub out: PathBuf,
    /// Another report to put the section into (replacing an earlier one), if it exists.
    pub splice_into: Option<PathBuf>,
    /// Limit for a cold boot until the program prints.
    pub boot_timeout: Duration,
    /// Limit from a crash request until the program prints again.
    pub recovery_timeout: Duration,
    /// The owvmm binary.
    pub owvmm: PathBuf,
}

/// The crash kernel's standby of one shape (`owvmm standby`).
#[derive(Debug, Clone)]
pub struct StandbyInfo {
    /// Its directory.
    pub dir: String,
    /// How long `owvmm standby` took.
    pub secs: f64,
    /// It was not cached: `owvmm standby` cold-booted and snapshotted a guest.
    pub prepared: bool,
}

/// Everything measured for one workload.
pub struct SizeResult {
    /// The workload.
    pub workload: Workload,
    /// Guest memory, MiB.
    pub mem: u64,
    /// The standby.
    pub standby: std::result::Result<StandbyInfo, String>,
    /// One per crash.
    pub crashes: Vec<CrashRun>,
    /// Cold boots until the program's first line (the peer).
    pub boots: Vec<std::result::Result<BootTime, String>>,
    /// Filling a server: seconds and the state then (one per guest filled).
    pub fills: Vec<std::result::Result<(f64, StateCheck), String>>,
}

/// Facts for the report's header.
pub struct Header {
    /// `date -u`.
    pub date: String,
    /// CPUs, model, host kernel.
    pub host: String,
    /// kvm_pvm or hardware KVM.
    pub pvm: bool,
    /// Guest kernel version and vmlinux.
    pub guest_kernel: String,
    /// The default initramfs.
    pub initrd: String,
    /// `owvmm --version` and path.
    pub owvmm: String,
    /// The compiler that built the program.
    pub cc: String,
}

/// Runs the recovery benchmark; `Ok(true)` when every measurement succeeded.
pub fn run(o: &Opts) -> Result<bool> {
    if !o.owvmm.exists() {
        return Err(BenchError::Missing(format!(
            "no owvmm binary at {}; build it with `cargo build --release -p owvmm` or pass --owvmm",
            o.owvmm.display()
        )));
    }
    let work = std::env::temp_dir().join(format!("owvmm-bench-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(io("cannot create scratch directory", &work))?;
    let program = build_static(
        &crate::root().join("tests/guest-programs/owtest.c"),
        &work.join("owtest-static"),
    )?;
    let pipe_program = build_static(
        &crate::root().join("benches/guest/pipe.c"),
        &work.join("pipe-static"),
    )?;
    // The root images of the servers' packages, built (or found) before the network
    // namespace exists: the build needs Debian's mirror.
    let mut packages: Vec<&str> = o.workloads.iter().filter_map(|w| w.package()).collect();
    packages.sort_unstable();
    packages.dedup();
    for p in &packages {
        crate::devices::build_image(&o.owvmm, p)?;
    }
    let ns = if o.workloads.iter().any(|w| w.networked()) {
        for p in ["ip", "redis-cli"] {
            if proc::first_line("which", &[p]).is_none() {
                return Err(BenchError::Missing(format!("{p} not found")));
            }
        }
        let ns = crate::net::Netns::new("-rec", workload::TAP, workload::HOST_CIDR)?;
        eprintln!(
            "bench: network namespace {} (tap {}, host {}, guest {})",
            ns.name(),
            workload::TAP,
            workload::HOST_CIDR,
            workload::GUEST_IP
        );
        Some(ns)
    } else {
        None
    };

    let (kdir, initrd) = proc::image_paths(&o.owvmm)?;
    let (kdir, initrd) = (kdir.as_str(), initrd.as_str());
    let header = Header {
        date: proc::first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .unwrap_or_else(|| "?".into()),
        host: format!(
            "{} CPUs ({}), Linux {}",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            proc::cpu_model(),
            crate::read_trim("/proc/sys/kernel/osrelease")
        ),
        pvm: Path::new("/sys/module/kvm_pvm").exists(),
        guest_kernel: format!(
            "{} (`{kdir}/vmlinux`)",
            crate::read_trim(Path::new(kdir).join("version"))
        ),
        initrd: initrd.to_string(),
        owvmm: format!(
            "{} (`{}`)",
            proc::first_line(&o.owvmm.display().to_string(), &["--version"])
                .unwrap_or_else(|| "?".into()),
            o.owvmm.display()
        ),
        cc: proc::first_line("cc", &["--version"]).unwrap_or_else(|| "?".into()),
    };
    eprintln!("bench: guest kernel {}", header.guest_kernel);

    let env = Env {
        owvmm: o.owvmm.clone(),
        program,
        pipe_program,
        ns,
        work: work.clone(),
        boot_timeout: o.boot_timeout,
        recovery_timeout: o.recovery_timeout,
    };
    let results: Vec<SizeResult> = o
        .workloads
        .iter()
        .map(|&w| measure_size(&env, w, o.runs))
        .collect();
    drop(env);

    let section = render::section(&header, &results, o);
    let doc = format!("# owvmm benchmarks: recovery\n\n{section}");
    if let Some(d) = o.out.parent() {
        std::fs::create_dir_all(d).map_err(io("cannot create report directory", d))?;
    }
    std::fs::write(&o.out, &doc).map_err(io("cannot write the report", &o.out))?;
    println!("{doc}");
    eprintln!("bench: recovery report written to {}", o.out.display());
    if let Some(j) = &o.json {
        let text = render::json(&results, o.runs);
        std::fs::write(j, text).map_err(io("cannot write the JSON", j))?;
        eprintln!("bench: recovery figures written to {}", j.display());
    }
    if let Some(main) = o.splice_into.as_ref().filter(|p| p.exists()) {
        let old = std::fs::read_to_string(main).map_err(io("cannot read the report", main))?;
        std::fs::write(main, render::splice(&old, &section))
            .map_err(io("cannot write the report", main))?;
        eprintln!("bench: recovery section put into {}", main.display());
    }

    let failed = results
        .iter()
        .map(|r| {
            r.crashes.iter().filter(|c| !c.ok()).count()
                + r.boots.iter().filter(|b| b.is_err()).count()
                + usize::from(r.standby.is_err())
                + r.fills.iter().filter(|f| f.is_err()).count()
        })
        .sum::<usize>();
    if failed == 0 {
        let _ = std::fs::remove_dir_all(&work);
        Ok(true)
    } else {
        eprintln!(
            "bench: {failed} recovery measurement(s) failed; logs kept in {}",
            work.display()
        );
        Ok(false)
    }
}

/// Builds a C program statically (`cc -O2 -static`).
fn build_static(src: &Path, out: &Path) -> Result<PathBuf> {
    let out = out.to_path_buf();
    eprintln!("bench: building {} (static)", src.display());
    let o = Command::new("cc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(src)
        .arg("-lpthread")
        .output()
        .map_err(|source| BenchError::Spawn {
            program: "cc".into(),
            source,
        })?;
    if !o.status.success() {
        return Err(BenchError::Command {
            command: format!(
                "cc -O2 -static -o {} {} -lpthread",
                out.display(),
                src.display()
            ),
            status: o.status.to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// `owvmm standby --mem MEM --vcpus 1`: finds the cached standby or prepares it (a cold
/// boot), with a deadline.
fn prepare_standby(env: &Env, mem: u64) -> Result<StandbyInfo> {
    let out = env.work.join(format!("standby-{mem}m.stdout"));
    let err = env.work.join(format!("standby-{mem}m.stderr"));
    let mut cmd = Command::new(&env.owvmm);
    cmd.args(["standby", "--mem", &mem.to_string(), "--vcpus", "1"]);
    let t0 = Instant::now();
    let mut g = Guard::spawn_tree(cmd, "owvmm standby", &out, &err)?;
    // A cold boot plus a snapshot; the standby preparer has its own, longer limit.
    let limit = env.boot_timeout + Duration::from_secs(120);
    let what = format!("owvmm standby --mem {mem} --vcpus 1");
    let mut told = false;
    let status = loop {
        if let Some(st) = g.exited() {
            break st;
        }
        if !told && t0.elapsed() > Duration::from_secs(3) {
            eprintln!("bench: the standby is not cached: owvmm prepares it (a cold boot) ...");
            told = true;
        }
        if t0.elapsed() > limit {
            g.kill();
            return Err(BenchError::Timeout {
                what,
                secs: limit.as_secs(),
                detail: tail(&err, 10),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let secs = t0.elapsed().as_secs_f64();
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let dir = stdout.lines().map(str::trim).rfind(|l| !l.is_empty());
    match dir {
        Some(d) if status.success() => Ok(StandbyInfo {
            dir: d.to_string(),
            secs,
            prepared: stderr.contains("preparing"),
        }),
        _ => Err(BenchError::Command {
            command: what,
            status: status.to_string(),
            stderr: tail(&err, 10),
        }),
    }
}

fn failed_run(why: String) -> CrashRun {
    CrashRun {
        failure: Some(why),
        ..CrashRun::default()
    }
}

/// The standby, `runs` crashes (in as few guests as possible: a guest is crashed again as
/// long as its program came back intact), and cold boots until there are `runs` of them.
/// A server is filled once per guest, after its first answer (the peer's time).
fn measure_size(env: &Env, w: Workload, runs: usize) -> SizeResult {
    let mem = w.mem();
    let name = w.label();
    eprintln!("bench: recovery, {name} in a {mem} MiB guest");
    let standby = prepare_standby(env, mem).map_err(|e| chain(&e));
    match &standby {
        Ok(s) => eprintln!(
            "bench: standby {} ({:.1} s{})",
            s.dir,
            s.secs,
            if s.prepared {
                ", prepared now"
            } else {
                ", cached"
            }
        ),
        Err(e) => eprintln!("bench: standby failed: {e} (owvmm run will try to prepare its own)"),
    }
    let limit = env.boot_timeout.as_secs();
    let mut res = SizeResult {
        workload: w,
        mem,
        standby,
        crashes: Vec::new(),
        boots: Vec::new(),
        fills: Vec::new(),
    };
    let mut current: Option<Guest> = None;
    for i in 1..=runs {
        let label = format!("{name}: crash {i}/{runs}");
        let mut g = match current.take() {
            Some(g) => g,
            None => {
                let n = res.boots.len() + 1;
                let tag = format!("{}-boot{n}", w.tag());
                eprintln!(
                    "bench: {name}: cold boot {n} (guest for the crashes, limit {limit} s) ..."
                );
                match Guest::boot(env, &tag, w) {
                    Ok((mut g, mut b)) => {
                        eprintln!(
                            "bench: {name}: cold boot {n} ... first line / answer after {:.1} s (pid {})",
                            b.first_line_s, b.pid
                        );
                        b.crashed_later = true;
                        res.boots.push(Ok(b));
                        let ready = if w.networked() {
                            eprintln!(
                                "bench: {name}: filling the server with {} keys ...",
                                w.keys()
                            );
                            g.fill(env, env.boot_timeout).map(|(secs, st)| {
                                eprintln!("bench: {name}: filled in {secs:.1} s: {}", st.text());
                                res.fills.push(Ok((secs, st)));
                            })
                        } else {
                            g.wait_count_above(1, env.boot_timeout).map(drop)
                        };
                        match ready {
                            Ok(()) => g,
                            Err(e) => {
                                let msg = chain(&e);
                                eprintln!("bench: {label} failed: {msg}");
                                if w.networked() {
                                    res.fills.push(Err(msg.clone()));
                                }
                                res.crashes
                                    .push(failed_run(format!("before the crash: {msg}")));
                                g.stop();
                                continue;
                            }
                        }
                    }
                    Err(e) => {
                        let msg = chain(&e);
                        eprintln!("bench: {name}: cold boot {n} failed: {msg}");
                        res.boots.push(Err(msg.clone()));
                        res.crashes
                            .push(failed_run(format!("the guest did not come up: {msg}")));
                        continue;
                    }
                }
            }
        };
        eprintln!(
            "bench: {label}: crashing the guest kernel (limit {} s) ...",
            env.recovery_timeout.as_secs()
        );
        let (run, mut usable) = g.crash(env);
        report_progress(&label, &run);
        if usable {
            if let Err(e) = g.settle() {
                eprintln!(
                    "bench: {label}: the program did not go on after it came back: {}",
                    chain(&e)
                );
                usable = false;
            }
        }
        res.crashes.push(run);
        if usable {
            current = Some(g);
        } else {
            eprintln!(
                "bench: {label}: stopping this guest (console: {}); the next crash gets a fresh one",
                g.console_path().display()
            );
            g.stop();
        }
    }
    if let Some(g) = current.take() {
        g.stop();
    }
    while res.boots.len() < runs {
        let n = res.boots.len() + 1;
        let tag = format!("{}-boot{n}", w.tag());
        eprintln!("bench: {name}: cold boot {n} (reboot + restart, limit {limit} s) ...");
        match Guest::boot(env, &tag, w) {
            Ok((g, b)) => {
                eprintln!(
                    "bench: {name}: cold boot {n} ... first line / answer after {:.1} s",
                    b.first_line_s
                );
                res.boots.push(Ok(b));
                g.stop();
            }
            Err(e) => {
                let msg = chain(&e);
                eprintln!("bench: {name}: cold boot {n} failed: {msg}");
                res.boots.push(Err(msg));
            }
        }
    }
    res
}

fn report_progress(label: &str, r: &CrashRun) {
    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |x| format!("{x:.0}"));
    let parts = format!(
        "detect {} ms, freeze {} ms, extract {} ms, crash kernel {} ms, resurrect {} ms, total {} ms",
        f(r.detect_ms),
        r.freeze_ms.map_or_else(|| "-".into(), |x| format!("{x:.1}")),
        f(r.extract_ms),
        f(r.kernel_start_ms),
        f(r.resurrect_ms),
        f(r.total_ms)
    );
    match (&r.failure, r.again_s, &r.line_after) {
        (None, Some(s), None) => eprintln!(
            "bench: {label} ... served again after {s:.2} s (pid {} as before, {}); {parts}",
            r.pid,
            r.state_after.as_ref().map_or_else(String::new, StateCheck::text)
        ),
        (None, Some(s), Some(h)) => eprintln!(
            "bench: {label} ... program printed again after {s:.2} s (pid {} as before, count {} -> {}, sum=ok); {parts}",
            h.pid, r.count_before, h.count
        ),
        (Some(why), _, _) => eprintln!("bench: {label} ... FAILED: {why}; {parts}"),
        _ => eprintln!("bench: {label} ... FAILED (no line); {parts}"),
    }
}
