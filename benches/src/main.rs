//! `owvmm-bench`: measures owvmm against QEMU+KVM (and against itself: restore vs cold
//! boot) in one run on one machine, and writes the results as Markdown.
//! See benches/README.md.

mod ctl;
mod devices;
mod error;
mod guest;
mod net;
mod proc;
mod recovery;
mod report;
mod runs;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use error::{chain, io, BenchError, Result};
use report::{cell, median, num, verdict, Table};
use runs::{Boot, Restore, Setup, Snapshot};

/// Usage text.
pub const USAGE: &str = "\
usage: owvmm-bench [--runs N] [--mem MIB] [--out FILE] [--timeout-secs S]
                   [--owvmm PATH] [--qemu PATH]
       owvmm-bench --recovery [--workloads LIST | --sizes MIB,MIB,...] [--runs N]
                   [--out FILE] [--json FILE] [--timeout-secs S]
                   [--recovery-timeout-secs S] [--owvmm PATH]
       owvmm-bench --devices [--runs N] [--out FILE] [--timeout-secs S]
                   [--owvmm PATH] [--qemu PATH]

  --runs N           cold boots of each VMM and restores (default 3)
  --mem MIB          guest memory for every VM (default 128)
  --out FILE         Markdown report (default benches/results/latest.md in the workspace)
  --timeout-secs S   limit for each boot or restore (default 600)
  --owvmm PATH       owvmm binary (default $OWVMM_BIN, else target/release/owvmm)
  --qemu PATH        QEMU binary (default qemu-system-x86_64)

  --recovery         instead: the recovery benchmark (programs survive guest kernel
                     crashes; against reboot + restart of the same program)
  --workloads LIST   what --recovery runs, comma-separated, in this order:
                       heap:MIB       owtest heap MIB (console lines, checksummed heap)
                       redis:MIB      Debian's redis-server (--with redis-server) with
                                      MIB MiB of 4000-byte values (DEBUG POPULATE)
                       memcached:MIB  Debian's memcached (--with memcached), MIB MiB of
                                      4000-byte values set from the host over TCP
                       pipeline       producer | busybox awk | consumer on the console
                     e.g. heap:16,redis:64,redis:256,memcached:64,pipeline. The servers
                     get a tap in a network namespace of the bench's own (169.254.80.0/24);
                     needs root, iproute2, redis-tools and Debian's package lists
  --sizes LIST       shorthand for heap workloads: --sizes 16,64 is
                     --workloads heap:16,heap:64 (the default is 16,64,256)
  --json FILE        with --recovery: also write the figures as JSON
                     ({\"recovery\": [one entry per workload]})
  --recovery-timeout-secs S
                     limit from a crash request until the program prints again
                     (default 300)
  With --recovery, --runs is the number of crashes (and cold boots) per workload, and --out
  defaults to benches/results/recovery.md; with that default the section is also put into
  benches/results/latest.md (replacing an earlier one) when that file exists.

  --devices          instead: a root image of Debian packages (redis-server), a data disk
                     and a tap, against QEMU -M microvm on the same inputs: cold boot, dd
                     on virtio-blk, redis-benchmark over virtio-net (in a network namespace
                     of its own); --out defaults to benches/results/devices.md. Needs root,
                     iproute2, e2fsprogs, cpio, redis-tools and QEMU

Exit status: 0 when every measurement ran (PASS or FAIL against the targets),
1 when a measurement failed (the report still shows the rest), 2 bad arguments.";

/// The workspace root (benches/..).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

struct Args {
    runs: usize,
    mem: u64,
    out: PathBuf,
    timeout: Duration,
    owvmm: PathBuf,
    qemu: String,
    recovery: bool,
    devices: bool,
    sizes: Vec<u64>,
    workloads: Option<Vec<recovery::workload::Workload>>,
    json: Option<PathBuf>,
    recovery_timeout: Duration,
    mem_given: bool,
    out_given: bool,
    sizes_given: bool,
}

fn parse_args() -> Result<Args> {
    match parse_args_from(std::env::args().skip(1))? {
        Some(a) => Ok(a),
        None => {
            println!("{USAGE}");
            std::process::exit(0);
        }
    }
}

/// The arguments; `None` for `--help`.
fn parse_args_from(args: impl Iterator<Item = String>) -> Result<Option<Args>> {
    let mut a = Args {
        runs: 3,
        mem: 128,
        out: root().join("benches/results/latest.md"),
        timeout: Duration::from_secs(600),
        owvmm: std::env::var_os("OWVMM_BIN")
            .map_or_else(|| root().join("target/release/owvmm"), PathBuf::from),
        qemu: "qemu-system-x86_64".into(),
        recovery: false,
        devices: false,
        sizes: recovery::DEFAULT_SIZES.to_vec(),
        workloads: None,
        json: None,
        recovery_timeout: Duration::from_secs(300),
        mem_given: false,
        out_given: false,
        sizes_given: false,
    };
    let mut it = args;
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        if flag == "--recovery" {
            a.recovery = true;
            continue;
        }
        if flag == "--devices" {
            a.devices = true;
            continue;
        }
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let value = inline
            .or_else(|| it.next())
            .ok_or_else(|| BenchError::Usage(format!("{name} needs a value")))?;
        let number = |v: &str| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| BenchError::Usage(format!("{name}: not a positive number: {v}")))
        };
        match name.as_str() {
            "--runs" => a.runs = usize::try_from(number(&value)?).unwrap_or(usize::MAX),
            "--mem" => {
                a.mem = number(&value)?;
                a.mem_given = true;
            }
            "--out" => {
                a.out = PathBuf::from(value);
                a.out_given = true;
            }
            "--timeout-secs" => a.timeout = Duration::from_secs(number(&value)?),
            "--sizes" => {
                a.sizes = value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(number)
                    .collect::<Result<Vec<_>>>()?;
                if a.sizes.is_empty() {
                    return Err(BenchError::Usage("--sizes: no size given".into()));
                }
                a.sizes_given = true;
            }
            "--workloads" => {
                a.workloads = Some(
                    recovery::workload::Workload::parse_list(&value)
                        .map_err(|e| BenchError::Usage(format!("--workloads: {e}")))?,
                );
            }
            "--json" => a.json = Some(PathBuf::from(value)),
            "--recovery-timeout-secs" => {
                a.recovery_timeout = Duration::from_secs(number(&value)?);
            }
            "--owvmm" => a.owvmm = PathBuf::from(value),
            "--qemu" => a.qemu = value,
            _ => return Err(BenchError::Usage(format!("unknown option {name}"))),
        }
    }
    if a.recovery && a.mem_given {
        return Err(BenchError::Usage(
            "--mem does not apply to --recovery: the guest memory follows each heap size".into(),
        ));
    }
    if a.recovery && a.devices {
        return Err(BenchError::Usage(
            "--recovery and --devices are two benchmarks: run one at a time".into(),
        ));
    }
    if !a.recovery && (a.sizes_given || a.workloads.is_some() || a.json.is_some()) {
        return Err(BenchError::Usage(
            "--sizes, --workloads and --json need --recovery".into(),
        ));
    }
    if a.sizes_given && a.workloads.is_some() {
        return Err(BenchError::Usage(
            "--sizes and --workloads: give the heap sizes in --workloads (heap:16,...)".into(),
        ));
    }
    Ok(Some(a))
}

/// Facts about the machine and the inputs, for the report's header.
struct Context {
    nproc: usize,
    host_kernel: String,
    cpu: String,
    pvm: bool,
    date: String,
    owvmm_version: String,
    qemu_version: String,
    guest_kernel: String,
    kernel_dir: PathBuf,
    pvm_options: Vec<(String, String)>,
}

/// Everything measured.
#[derive(Default)]
struct Results {
    owvmm: Vec<std::result::Result<Boot, String>>,
    qemu: Vec<std::result::Result<Boot, String>>,
    snapshot: Option<Snapshot>,
    restores: Vec<std::result::Result<Restore, String>>,
    profile: Option<std::result::Result<(Boot, String, report::ConsoleProfile), String>>,
    errors: Vec<String>,
}

fn record<T>(errors: &mut Vec<String>, what: &str, r: Result<T>) -> std::result::Result<T, String> {
    r.map_err(|e| {
        let msg = chain(&e);
        eprintln!("bench: {what} failed: {msg}");
        errors.push(format!("{what}: {msg}"));
        msg
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e @ BenchError::Usage(_)) => {
            eprintln!("owvmm-bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("owvmm-bench: error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<bool> {
    let args = parse_args()?;
    let root = root();
    if args.recovery {
        let default_out = root.join("benches/results/recovery.md");
        let how = match &args.workloads {
            Some(w) => format!(
                "--workloads {}",
                w.iter().map(|w| w.spec()).collect::<Vec<_>>().join(",")
            ),
            None => format!(
                "--sizes {}",
                args.sizes
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        };
        let workloads = args.workloads.unwrap_or_else(|| {
            args.sizes
                .iter()
                .map(|&mib| recovery::workload::Workload::Heap { mib })
                .collect()
        });
        return recovery::run(&recovery::Opts {
            workloads,
            how,
            json: args.json,
            runs: args.runs,
            out: if args.out_given {
                args.out
            } else {
                default_out
            },
            splice_into: (!args.out_given).then(|| root.join("benches/results/latest.md")),
            boot_timeout: args.timeout,
            recovery_timeout: args.recovery_timeout,
            owvmm: args.owvmm,
        });
    }
    if !args.owvmm.exists() {
        return Err(BenchError::Missing(format!(
            "no owvmm binary at {}; build it with `cargo build --release -p owvmm` or pass --owvmm",
            args.owvmm.display()
        )));
    }
    let qemu_version = proc::first_line(&args.qemu, &["--version"]).ok_or_else(|| {
        BenchError::Missing(format!(
            "cannot run {} --version; install QEMU (apt-get install qemu-system-x86) or pass --qemu",
            args.qemu
        ))
    })?;

    if args.devices {
        let guest::EffectiveCmdline { cmdline, .. } = guest::effective_cmdline(&args.owvmm)?;
        return devices::run(
            &devices::Opts {
                owvmm: args.owvmm,
                qemu: args.qemu,
                runs: args.runs,
                timeout: args.timeout,
                out: if args.out_given {
                    args.out
                } else {
                    root.join("benches/results/devices.md")
                },
            },
            cmdline,
        );
    }

    let (kdir, initrd) = proc::image_paths(&args.owvmm)?;
    let (kdir, initrd) = (kdir.as_str(), initrd.as_str());
    let kernel_dir = PathBuf::from(kdir);
    let vmlinux = kernel_dir.join("vmlinux");
    if !vmlinux.exists() {
        return Err(BenchError::Missing(format!(
            "no vmlinux in {}",
            kernel_dir.display()
        )));
    }

    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    // The line owvmm boots its default guest with here (default + this host's quirks);
    // QEMU gets the same string.
    let guest::EffectiveCmdline {
        cmdline,
        added: pvm_options,
    } = guest::effective_cmdline(&args.owvmm)?;

    let work = std::env::temp_dir().join(format!("owvmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(io("cannot create scratch directory", &work))?;
    let setup = Setup {
        owvmm: args.owvmm.clone(),
        qemu: args.qemu.clone(),
        vmlinux,
        initrd: PathBuf::from(initrd),
        cmdline,
        mem: args.mem,
        timeout: args.timeout,
        work: work.clone(),
    };
    let ctx = Context {
        nproc: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        host_kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpu: proc::cpu_model(),
        pvm,
        date: proc::first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .unwrap_or_else(|| "?".into()),
        owvmm_version: proc::first_line(&args.owvmm.display().to_string(), &["--version"])
            .unwrap_or_else(|| "?".into()),
        qemu_version,
        guest_kernel: read_trim(kernel_dir.join("version")),
        kernel_dir,
        pvm_options,
    };
    eprintln!(
        "bench: kernel {} ({})",
        setup.vmlinux.display(),
        ctx.guest_kernel
    );
    eprintln!("bench: initramfs {}", setup.initrd.display());
    eprintln!("bench: cmdline {}", setup.cmdline);

    let res = measure(&setup, args.runs);
    let md = render(&setup, &ctx, &res, args.runs);
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d).map_err(io("cannot create report directory", d))?;
    }
    std::fs::write(&args.out, &md).map_err(io("cannot write the report", &args.out))?;
    println!("{md}");
    eprintln!("bench: report written to {}", args.out.display());
    if res.errors.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
        Ok(true)
    } else {
        eprintln!(
            "bench: {} measurement(s) failed; logs kept in {}",
            res.errors.len(),
            work.display()
        );
        Ok(false)
    }
}

fn read_trim(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

fn measure(s: &Setup, runs: usize) -> Results {
    let mut r = Results::default();
    let limit = s.timeout.as_secs();
    let snap_dir = s.work.join("snapshot");
    for i in 1..=runs {
        let what = format!("owvmm cold boot {i}/{runs}");
        eprintln!("bench: {what} (limit {limit} s) ...");
        let want_snapshot = r.snapshot.is_none().then_some(snap_dir.as_path());
        let out = runs::owvmm_boot(
            s,
            &format!("owvmm-boot-{i}"),
            &s.cmdline,
            false,
            want_snapshot,
        );
        let out = record(&mut r.errors, &what, out);
        if let Ok((boot, snap, _)) = &out {
            eprintln!("bench: {what} ... {:.1} s", boot.wall_s);
            if let Some(sn) = snap {
                eprintln!(
                    "bench: snapshot of that guest: {} MiB in {:.0} ms",
                    sn.bytes >> 20,
                    sn.ms
                );
                r.snapshot = Some(sn.clone());
            }
        }
        r.owvmm.push(out.map(|(b, _, _)| b));

        let what = format!("QEMU cold boot {i}/{runs}");
        eprintln!("bench: {what} (limit {limit} s) ...");
        let out = record(
            &mut r.errors,
            &what,
            runs::qemu_boot(s, &format!("qemu-boot-{i}")),
        );
        if let Ok(b) = &out {
            eprintln!("bench: {what} ... {:.1} s", b.wall_s);
        }
        r.qemu.push(out);
    }

    if let Some(sn) = r.snapshot.clone() {
        for i in 1..=runs {
            let what = format!("owvmm restore {i}/{runs}");
            eprintln!("bench: {what} ...");
            let out = runs::owvmm_restore(s, &format!("owvmm-restore-{i}"), &sn.dir);
            let out = record(&mut r.errors, &what, out);
            if let Ok(x) = &out {
                eprintln!("bench: {what} ... {:.0} ms ({})", x.wall_ms, x.answered_by);
            }
            r.restores.push(out);
        }
    } else {
        r.errors
            .push("restore: no snapshot (no owvmm boot succeeded)".into());
    }
    let _ = std::fs::remove_dir_all(&snap_dir);

    let what = "owvmm boot with the console kept (not part of the medians)";
    eprintln!("bench: {what} (limit {limit} s) ...");
    let cmdline = guest::verbose_cmdline(&s.cmdline);
    let out = runs::owvmm_boot(s, "owvmm-console", &cmdline, true, None).and_then(|(b, _, f)| {
        let text = std::fs::read(&f).map_err(io("cannot read the console log", &f))?;
        let p = report::profile_console(&String::from_utf8_lossy(&text), 8);
        Ok((b, cmdline.clone(), p))
    });
    let out = record(&mut r.errors, what, out);
    if let Ok((b, _, p)) = &out {
        eprintln!(
            "bench: console boot ... {:.1} s, Run /init at {} s guest time",
            b.wall_s,
            num(p.run_init, 1)
        );
    }
    r.profile = Some(out);
    r
}

fn oks<T: Clone>(v: &[std::result::Result<T, String>]) -> Vec<T> {
    v.iter().filter_map(|x| x.as_ref().ok().cloned()).collect()
}

fn render(s: &Setup, ctx: &Context, r: &Results, runs: usize) -> String {
    let mut md = String::new();
    let owvmm_med = median(&oks(&r.owvmm).iter().map(|b| b.wall_s).collect::<Vec<_>>());
    let qemu_med = median(&oks(&r.qemu).iter().map(|b| b.wall_s).collect::<Vec<_>>());
    let rest = oks(&r.restores);
    let rest_med = median(&rest.iter().map(|x| x.wall_ms).collect::<Vec<_>>());
    let boot_ratio = owvmm_med.zip(qemu_med).map(|(o, q)| o / q);
    let restore_ratio = owvmm_med.zip(rest_med).map(|(o, x)| o * 1000.0 / x);

    let _ = writeln!(md, "# owvmm benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `owvmm-bench` (`benches/`, run with `cargo run --release -p owvmm-benches -- --runs {runs}`). \
         Every number below comes from one run on one machine; the peer (QEMU with KVM) ran in the \
         same run, alternating with owvmm, on the same kernel, initramfs, memory, vCPU count and \
         command line. On this kind of host absolute times mean little (see the machine); the \
         ratios are the result.\n"
    );

    let _ = writeln!(md, "## Summary\n");
    let mut t = Table::new(&[
        "measurement",
        "owvmm (median)",
        "compared with (median)",
        "ratio",
        "target",
        "result",
    ]);
    t.row(&[
        "cold boot to agent ready".to_string(),
        format!("{} s", num(owvmm_med, 1)),
        format!("QEMU+KVM {} s", num(qemu_med, 1)),
        format!("owvmm/QEMU = {}", num(boot_ratio, 2)),
        "<= 1.0".into(),
        verdict(boot_ratio, |x| x <= 1.0).into(),
    ]);
    t.row(&[
        "restore to agent answering".to_string(),
        format!("{} ms", num(rest_med, 0)),
        format!("owvmm cold boot {} s", num(owvmm_med, 1)),
        format!("cold/restore = {}x", num(restore_ratio, 0)),
        ">= 100x".into(),
        verdict(restore_ratio, |x| x >= 100.0).into(),
    ]);
    md.push_str(&t.done());
    if !r.errors.is_empty() {
        let _ = writeln!(md, "Failed measurements (left out of the medians):\n");
        for e in &r.errors {
            let _ = writeln!(md, "- {}", e.replace('\n', " "));
        }
        md.push('\n');
    }

    let _ = writeln!(md, "## Machine and inputs\n");
    let mut t = Table::new(&["", ""]);
    t.row(&["date", &ctx.date]);
    t.row(&[
        "host".to_string(),
        format!(
            "{} CPUs ({}), Linux {}",
            ctx.nproc,
            cell(&ctx.cpu),
            ctx.host_kernel
        ),
    ]);
    t.row(&[
        "KVM".to_string(),
        if ctx.pvm {
            "`kvm_pvm` (/sys/module/kvm_pvm exists): guest kernel code is emulated, roughly 1000x slower than hardware KVM".into()
        } else {
            "hardware KVM (no /sys/module/kvm_pvm)".to_string()
        },
    ]);
    t.row(&[
        "guest kernel".to_string(),
        format!(
            "{} (`{}/vmlinux`)",
            cell(&ctx.guest_kernel),
            ctx.kernel_dir.display()
        ),
    ]);
    t.row(&["initramfs".to_string(), format!("`{}`", s.initrd.display())]);
    t.row(&["memory, vCPUs".to_string(), format!("{} MiB, 1", s.mem)]);
    t.row(&[
        "owvmm".to_string(),
        format!("{} (`{}`)", ctx.owvmm_version, s.owvmm.display()),
    ]);
    t.row(&["QEMU".to_string(), cell(&ctx.qemu_version)]);
    md.push_str(&t.done());
    let _ = writeln!(
        md,
        "Kernel command line, the same string for both VMMs:\n\n    {}\n",
        s.cmdline
    );
    md.push_str(
        "It is what `owvmm run --print-cmdline` prints: owvmm's default command line \
         (`guest-kernel/cmdline`, the same on every host)",
    );
    if !ctx.pvm_options.is_empty() {
        md.push_str(
            " plus the options owvmm adds on a kvm_pvm host (`PVM_CMDLINE` in \
             `vmm/src/host_quirks.rs`), with owvmm's reasons:\n\n",
        );
        for (opt, why) in &ctx.pvm_options {
            let _ = writeln!(
                md,
                "- `{opt}`{}{}",
                if why.is_empty() { "" } else { ": " },
                why
            );
        }
    } else if ctx.pvm {
        md.push_str(" (kvm_pvm host, but owvmm added nothing: `OWVMM_NO_CMDLINE_QUIRKS` set?).\n");
    } else {
        md.push_str(" (hardware KVM: owvmm adds nothing).\n");
    }
    md.push('\n');
    if let Some(sn) = &r.snapshot {
        match &sn.cmdline {
            Some(c) if *c == s.cmdline => md.push_str(
                "Check: the snapshotted owvmm guest's `state.json` records exactly this command line.\n\n",
            ),
            Some(c) => {
                let _ = writeln!(md, "**Warning**: owvmm booted with a different command line than QEMU got: `{c}`\n");
            }
            None => {}
        }
    }

    let _ = writeln!(md, "## 1. Cold boot to agent ready: owvmm vs QEMU+KVM\n");
    let _ = writeln!(
        md,
        "Wall time from spawning the VMM to the guest agent's `ready` line (`ready <uptime_ms> <version>` on ttyS1). \
         owvmm: `owvmm run --kernel K --initrd I --cmdline C --mem {mem} --vcpus 1 --api-sock S --no-console`; \
         the bench subscribes to the control socket's `events` as soon as the socket accepts and stops at `agent-ready` \
         (if the agent was already ready when it subscribed, it falls back to `status` polling; marked *late*). \
         QEMU: `{qemu} {args} -serial file:CONSOLE -serial file:TTYS1`; the bench polls the ttyS1 file every {poll} ms \
         for a line starting with `ready ` (so QEMU's times carry up to {poll} ms of polling delay). Runs alternate \
         owvmm, QEMU, owvmm, QEMU, ...\n",
        mem = s.mem,
        qemu = s.qemu,
        args = runs::qemu_args(s)
            .iter()
            .map(|a| if a.contains(' ') { "'C'".to_string() } else if *a == s.vmlinux.display().to_string() { "K/vmlinux".into() } else if *a == s.initrd.display().to_string() { "I".into() } else { a.clone() })
            .collect::<Vec<_>>()
            .join(" "),
        poll = runs::POLL.as_millis(),
    );
    let mut t = Table::new(&[
        "run",
        "owvmm (s)",
        "owvmm guest uptime at ready (s)",
        "QEMU (s)",
        "QEMU guest uptime at ready (s)",
    ]);
    let boot_cells = |b: Option<&std::result::Result<Boot, String>>| -> (String, String) {
        match b {
            Some(Ok(b)) => (
                format!("{:.1}{}", b.wall_s, if b.late { " (late)" } else { "" }),
                num(b.guest_uptime_s, 1),
            ),
            Some(Err(e)) => (format!("error: {}", cell(e)), "-".into()),
            None => ("-".into(), "-".into()),
        }
    };
    for i in 0..runs {
        let (ow, owu) = boot_cells(r.owvmm.get(i));
        let (qe, qeu) = boot_cells(r.qemu.get(i));
        t.row(&[(i + 1).to_string(), ow, owu, qe, qeu]);
    }
    t.row(&[
        "**median**".to_string(),
        format!("**{}**", num(owvmm_med, 1)),
        String::new(),
        format!("**{}**", num(qemu_med, 1)),
        String::new(),
    ]);
    md.push_str(&t.done());
    let _ = writeln!(
        md,
        "owvmm/QEMU = **{}** (target <= 1.0): **{}**\n",
        num(boot_ratio, 3),
        verdict(boot_ratio, |x| x <= 1.0)
    );

    let _ = writeln!(md, "## 2. Restore to agent answering vs cold boot\n");
    match &r.snapshot {
        Some(sn) => {
            let _ = writeln!(
                md,
                "The guest of the first owvmm cold boot that succeeded was snapshotted after its agent was ready and had set \
                 the guest clock: {} MiB written in {:.0} ms. Then `owvmm run --restore DIR --api-sock S --no-console`, run \
                 {runs} time(s): wall time from spawn to the `guest-clock-set` event, which is the restored agent answering the VMM's clock \
                 resync. `restore_ms` is the VMM's own time to map the snapshot and load its state (its `restored` event; `-` \
                 when that event was published before the bench had subscribed). If the bench subscribed too late to be sure \
                 to see the clock answer, it also pinged the agent and took whichever answer came first (column \"answered by\").\n",
                sn.bytes >> 20,
                sn.ms
            );
        }
        None => {
            md.push_str("Not measured: no owvmm cold boot succeeded, so there was no snapshot.\n\n")
        }
    }
    let mut t = Table::new(&[
        "run",
        "spawn to agent answering (ms)",
        "answered by",
        "VMM restore_ms",
    ]);
    for (i, x) in r.restores.iter().enumerate() {
        match x {
            Ok(x) => t.row(&[
                (i + 1).to_string(),
                format!("{:.0}", x.wall_ms),
                format!("`{}`", x.answered_by),
                num(x.restore_ms, 1),
            ]),
            Err(e) => t.row(&[
                (i + 1).to_string(),
                format!("error: {}", cell(e)),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    let rms = median(&rest.iter().filter_map(|x| x.restore_ms).collect::<Vec<_>>());
    t.row(&[
        "**median**".to_string(),
        format!("**{}**", num(rest_med, 0)),
        String::new(),
        num(rms, 1),
    ]);
    md.push_str(&t.done());
    let _ = writeln!(
        md,
        "cold boot median / restore median = {} s / {} ms = **{}x** (target >= 100x): **{}**\n",
        num(owvmm_med, 1),
        num(rest_med, 0),
        num(restore_ratio, 0),
        verdict(restore_ratio, |x| x >= 100.0)
    );

    let _ = writeln!(md, "## 3. Where cold boot time goes\n");
    match &r.profile {
        Some(Ok((b, cmdline, p))) => {
            let _ = writeln!(
                md,
                "One more owvmm cold boot (not part of the medians) with the console kept and the command line \
                 `{cmdline}`. It reached agent ready after {:.1} s of wall time. The console has {} timestamped kernel \
                 lines (guest clock); `Run /init` came at **{} s**, the last kernel line at {} s. The biggest gaps \
                 between consecutive lines, with the line that ends each gap (the time went into what that line reports, \
                 or into what ran between the two lines):\n",
                b.wall_s,
                p.lines,
                num(p.run_init, 2),
                num(p.last, 2)
            );
            let mut t = Table::new(&["#", "gap (s)", "at (s)", "line after the gap"]);
            for (i, (gap, at, line)) in p.gaps.iter().enumerate() {
                t.row(&[
                    (i + 1).to_string(),
                    format!("{gap:.2}"),
                    format!("{at:.2}"),
                    format!("`{}`", cell(line)),
                ]);
            }
            md.push_str(&t.done());
            let top: f64 = p.gaps.iter().map(|g| g.0).sum();
            if let Some(ri) = p.run_init.filter(|x| *x > 0.0) {
                let _ = writeln!(
                    md,
                    "These {} gaps add up to {top:.1} s, {:.0}% of the time to `Run /init`.\n",
                    p.gaps.len(),
                    top * 100.0 / ri
                );
            }
        }
        Some(Err(e)) => {
            let _ = writeln!(md, "Not measured: {}\n", cell(e));
        }
        None => md.push_str("Not measured.\n\n"),
    }

    let _ = writeln!(md, "## What the default config does to shorten boot\n");
    md.push_str(&guest::boot_config_summary(&root()));
    md.trim_end().to_string() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use recovery::workload::Workload;

    fn parse(line: &str) -> Result<Option<Args>> {
        parse_args_from(line.split_whitespace().map(String::from))
    }

    #[test]
    fn recovery_workloads_and_sizes() {
        let a = parse("--recovery --workloads heap:16,redis:64,pipeline --runs 1 --json /tmp/j")
            .expect("parses")
            .expect("not help");
        assert!(a.recovery);
        assert_eq!(a.runs, 1);
        assert_eq!(
            a.workloads,
            Some(vec![
                Workload::Heap { mib: 16 },
                Workload::Redis { mib: 64 },
                Workload::Pipeline
            ])
        );
        assert_eq!(a.json, Some(PathBuf::from("/tmp/j")));
        let a = parse("--recovery --sizes=16,64")
            .expect("parses")
            .expect("not help");
        assert_eq!(a.sizes, vec![16, 64]);
        assert_eq!(a.workloads, None);
        assert!(parse("--help").expect("parses").is_none());
    }

    #[test]
    fn refused_combinations() {
        for bad in [
            "--workloads heap:16",
            "--json x.json",
            "--sizes 16",
            "--recovery --sizes 16 --workloads heap:16",
            "--recovery --workloads redis",
            "--recovery --workloads",
            "--recovery --mem 256",
            "--recovery --devices",
            "--bogus 1",
        ] {
            assert!(
                matches!(parse(bad), Err(BenchError::Usage(_))),
                "{bad} was accepted"
            );
        }
    }
}
