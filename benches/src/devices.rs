//! `owvmm-bench --devices`: the guest with a root image of Debian packages and its virtio
//! devices, against QEMU with KVM (`-M microvm`, virtio-mmio) on the same kernel, the same
//! agent-only initramfs, the same root image, data disk and command line, in one run:
//!
//! 1. cold boot to agent ready: owvmm with the disk root, owvmm with today's initramfs
//!    root (busybox in the initramfs, no devices), QEMU with the disk root;
//! 2. virtio-blk: `dd` in the guest, reading 16 MiB from the data disk's device and
//!    writing 8 MiB to a file on it with `conv=fsync` (timed with the guest's uptime);
//! 3. virtio-net: `redis-benchmark` on the host side (SET and GET) against Debian's
//!    redis-server in the guest, through a tap in a network namespace of the bench's own
//!    (link-local addresses, nothing leaves it).
//!
//! Each run boots each VMM once with everything attached: the time to agent ready, the
//! dd figures and the redis figures come from the same boot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{chain, io, BenchError, Result};
use crate::net::Netns;
use crate::proc::{run_ok, tail, Guard};
use crate::report::{median, num, Table};

/// The namespace's host side and the guest.
const HOST_CIDR: &str = "169.254.79.1/24";
const GUEST_IP: &str = "169.254.79.2";
const MAC: &str = "06:00:00:00:00:01";
const TAP: &str = "owb0";
/// Requests per redis-benchmark test.
const REQUESTS: u32 = 300;

/// The guest's first program: dd on the data disk (found by its serial), then a marker.
const DD: &str =
    "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = disk1 ] && dev=/dev/${d##*/}; done; \
    up() { cut -d' ' -f1 /proc/uptime; }; \
    t0=$(up); dd if=$dev of=/dev/null bs=1M count=16 2>/dev/null; t1=$(up); \
    echo \"dd-read: bytes=16777216 t0=$t0 t1=$t1\"; \
    t0=$(up); dd if=/dev/zero of=/data/f bs=1M count=8 conv=fsync 2>/dev/null; t1=$(up); \
    echo \"dd-write: bytes=8388608 t0=$t0 t1=$t1\"; \
    echo bench-dd-$((6*7))";
/// The second: Debian's redis-server.
const REDIS: &str =
    "exec redis-server --bind 0.0.0.0 --protected-mode no --save '' --appendonly no";

/// What the devices benchmark needs.
pub struct Opts {
    /// The owvmm binary.
    pub owvmm: PathBuf,
    /// The QEMU binary.
    pub qemu: String,
    /// Runs of each VMM.
    pub runs: usize,
    /// Limit for each boot.
    pub timeout: Duration,
    /// The report.
    pub out: PathBuf,
}

/// One boot of one VMM with the devices.
#[derive(Debug, Default, Clone)]
struct DevRun {
    ready_s: Option<f64>,
    dd_read_mb_s: Option<f64>,
    dd_write_mb_s: Option<f64>,
    set_rps: Option<f64>,
    get_rps: Option<f64>,
}

/// The MB/s of a `LABEL: bytes=N t0=UPTIME t1=UPTIME` line (the guest's /proc/uptime
/// around the dd: Debian's busybox dd prints no rate).
pub fn dd_rate(console: &str, label: &str) -> Option<f64> {
    let prefix = format!("{label}: ");
    let line = console
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(&prefix))?;
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))?
            .parse()
            .ok()
    };
    let (bytes, t0, t1) = (field("bytes=")?, field("t0=")?, field("t1=")?);
    let secs = t1 - t0;
    (secs > 0.0).then(|| bytes / secs / 1e6)
}

/// Requests per second of `test` in `redis-benchmark --csv` output.
pub fn csv_rps(csv: &str, test: &str) -> Option<f64> {
    csv.lines().find_map(|l| {
        let mut f = l.split(',').map(|x| x.trim_matches('"'));
        (f.next()? == test).then_some(())?;
        f.next()?.parse().ok()
    })
}

/// The image the guests boot: kernel, agent-only initramfs, root image.
pub struct Image {
    vmlinux: PathBuf,
    agent_initrd: PathBuf,
    full_initrd: PathBuf,
    root: PathBuf,
}

/// `owvmm image build --with PACKAGES`: builds (or finds cached) the root image of these
/// Debian packages, and the kernel and initramfs beside it. Run it outside a network
/// namespace: the build needs Debian's mirror.
pub fn build_image(owvmm: &Path, packages: &str) -> Result<Image> {
    eprintln!("bench: building the root image (owvmm image build --with {packages})");
    let out = crate::proc::output(owvmm, &["image", "build", "--with", packages])?;
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| PathBuf::from(v.trim())))
            .ok_or_else(|| BenchError::Missing(format!("`owvmm image build` printed no {k}")))
    };
    Ok(Image {
        vmlinux: field("kernel ")?,
        agent_initrd: field("root-initramfs ")?,
        full_initrd: field("initramfs ")?,
        root: field("root ")?,
    })
}

/// A fresh 96 MiB ext4 data disk.
fn data_disk(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    run_ok(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "benchdata",
            &path.display().to_string(),
            "96M",
        ],
    )
    .map(drop)
}

/// The agent-only initramfs with the `--exec` list appended, for QEMU (owvmm appends its
/// own at boot).
fn qemu_initrd(agent: &Path, work: &Path) -> Result<PathBuf> {
    let tree = work.join("overlay");
    let etc = tree.join("etc/owvmm");
    std::fs::create_dir_all(&etc).map_err(io("cannot create", &etc))?;
    std::fs::write(etc.join("exec"), format!("{DD}\n{REDIS}\n"))
        .map_err(io("cannot write", &etc))?;
    let mut cpio = Command::new("cpio");
    cpio.args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&tree)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cpio.spawn().map_err(|source| BenchError::Spawn {
        program: "cpio".into(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(b"etc\netc/owvmm\netc/owvmm/exec\n")
            .map_err(io("cannot feed cpio", &tree))?;
    }
    let out = child.wait_with_output().map_err(io("cpio failed", &tree))?;
    let mut data = std::fs::read(agent).map_err(io("cannot read", agent))?;
    while data.len() % 4 != 0 {
        data.push(0);
    }
    data.extend_from_slice(&out.stdout);
    let p = work.join("qemu-initrd.cpio");
    std::fs::write(&p, data).map_err(io("cannot write", &p))?;
    Ok(p)
}

#[derive(Clone, Copy, PartialEq)]
enum Vmm {
    OwvmmDisk,
    OwvmmInitramfs,
    Qemu,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::OwvmmDisk => "owvmm, disk root",
            Vmm::OwvmmInitramfs => "owvmm, initramfs root",
            Vmm::Qemu => "QEMU microvm, disk root",
        }
    }
}

struct Ctx<'a> {
    o: &'a Opts,
    img: Image,
    cmdline: String,
    ns: Netns,
    work: PathBuf,
    qemu_initrd: PathBuf,
}

fn spawn(c: &Ctx<'_>, vmm: Vmm, tag: &str) -> Result<(Guard, PathBuf, PathBuf, Instant)> {
    let console = c.work.join(format!("{tag}.console"));
    let stderr = c.work.join(format!("{tag}.stderr"));
    let data = c.work.join(format!("{tag}.data.img"));
    let ttys1 = c.work.join(format!("{tag}.ttyS1"));
    let _ = std::fs::remove_file(&ttys1);
    let (program, cmd) = match vmm {
        Vmm::OwvmmDisk | Vmm::OwvmmInitramfs => {
            let mut cmd = c.ns.cmd(&c.o.owvmm.display().to_string());
            cmd.arg("run")
                .arg("--kernel")
                .arg(&c.img.vmlinux)
                .arg("--cmdline")
                .arg(&c.cmdline)
                .args(["--mem", "128", "--vcpus", "1", "--on-crash", "exit"]);
            if vmm == Vmm::OwvmmDisk {
                data_disk(&data)?;
                cmd.arg("--initrd")
                    .arg(&c.img.agent_initrd)
                    .arg("--disk")
                    .arg(format!("{}:/:ro", c.img.root.display()))
                    .arg("--disk")
                    .arg(format!("{}:/data", data.display()))
                    .arg("--net")
                    .arg(format!("tap={TAP},ip={GUEST_IP}/24,mac={MAC}"))
                    .arg("--exec")
                    .arg(DD)
                    .arg("--exec")
                    .arg(REDIS);
            } else {
                cmd.arg("--initrd")
                    .arg(&c.img.full_initrd)
                    .args(["--exec", "echo bench-dd-$((6*7)); exec sleep 1000"]);
            }
            ("owvmm", cmd)
        }
        Vmm::Qemu => {
            data_disk(&data)?;
            let mut cmd = c.ns.cmd(&c.o.qemu);
            let append = format!(
                "{} owvmm.disk=disk0:/:ro owvmm.disk=disk1:/data owvmm.net={MAC},{GUEST_IP}/24",
                c.cmdline
            );
            // acpi=off: with microvm's ACPI tables this kernel gets no serial interrupts
            // (the agent's writes to the console and ttyS1 then block); without, the MP
            // table describes the machine, as owvmm's does for a kernel without ACPI.
            cmd.args(["-M", "microvm,rtc=on,acpi=off", "-accel", "kvm", "-cpu"])
                .arg("host,-arch-capabilities")
                .args(["-m", "128", "-smp", "1", "-nographic", "-no-reboot"])
                .arg("-nodefaults")
                .arg("-kernel")
                .arg(&c.img.vmlinux)
                .arg("-initrd")
                .arg(&c.qemu_initrd)
                .arg("-append")
                .arg(append)
                .arg("-chardev")
                .arg(format!("file,id=c0,path={}", console.display()))
                .arg("-chardev")
                .arg(format!("file,id=c1,path={}", ttys1.display()))
                .args([
                    "-serial",
                    "chardev:c0",
                    "-device",
                    "isa-serial,chardev=c1,index=1",
                ])
                .arg("-drive")
                .arg(format!(
                    "id=d0,file={},format=raw,if=none,readonly=on",
                    c.img.root.display()
                ))
                .args(["-device", "virtio-blk-device,drive=d0,serial=disk0"])
                .arg("-drive")
                .arg(format!("id=d1,file={},format=raw,if=none", data.display()))
                .args(["-device", "virtio-blk-device,drive=d1,serial=disk1"])
                .arg("-netdev")
                .arg(format!("tap,id=n0,ifname={TAP},script=no,downscript=no"))
                .arg("-device")
                .arg(format!("virtio-net-device,netdev=n0,mac={MAC}"));
            ("qemu", cmd)
        }
    };
    let out = if vmm == Vmm::Qemu {
        c.work.join(format!("{tag}.stdout"))
    } else {
        console.clone()
    };
    let t0 = Instant::now();
    let guard = Guard::spawn_tree(cmd, program, &out, &stderr)?;
    let ready_file = if vmm == Vmm::Qemu { ttys1 } else { stderr };
    Ok((guard, console, ready_file, t0))
}

fn read(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// Polls until `found` says yes, the process ends or the limit passes.
fn wait_for(
    guard: &mut Guard,
    what: &str,
    t0: Instant,
    limit: Duration,
    logs: &Path,
    mut found: impl FnMut() -> bool,
) -> Result<()> {
    loop {
        if found() {
            return Ok(());
        }
        crate::proc::check_alive(guard, what, t0 + limit, limit, || tail(logs, 10))?;
        std::thread::sleep(crate::runs::POLL);
    }
}

fn one_run(c: &Ctx<'_>, vmm: Vmm, tag: &str) -> Result<DevRun> {
    let (mut guard, console, ready_file, t0) = spawn(c, vmm, tag)?;
    let limit = c.o.timeout;
    let mut r = DevRun::default();
    let ready = |text: &str| match vmm {
        Vmm::Qemu => text.lines().any(|l| l.starts_with("ready ")),
        _ => text.contains("agent ready after"),
    };
    let what = format!("{}: agent ready", vmm.name());
    wait_for(&mut guard, &what, t0, limit, &console, || {
        ready(&read(&ready_file))
    })?;
    r.ready_s = Some(t0.elapsed().as_secs_f64());
    eprintln!(
        "bench: {tag} {}: agent ready after {:.1} s",
        vmm.name(),
        t0.elapsed().as_secs_f64()
    );
    let what = format!("{}: the dd program", vmm.name());
    wait_for(&mut guard, &what, t0, limit, &console, || {
        read(&console).contains("bench-dd-42")
    })?;
    if vmm == Vmm::OwvmmInitramfs {
        guard.kill();
        return Ok(r);
    }
    let text = read(&console);
    r.dd_read_mb_s = dd_rate(&text, "dd-read");
    r.dd_write_mb_s = dd_rate(&text, "dd-write");
    // redis answers once it listens; then the benchmark from the namespace.
    let what = format!("{}: redis PING", vmm.name());
    wait_for(&mut guard, &what, t0, limit, &console, || {
        c.ns.cmd("redis-cli")
            .args(["-h", GUEST_IP, "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    })?;
    let out =
        c.ns.cmd("redis-benchmark")
            .args(["-h", GUEST_IP, "-c", "4", "-t", "set,get", "--csv", "-n"])
            .arg(REQUESTS.to_string())
            .output()
            .map_err(|source| BenchError::Spawn {
                program: "redis-benchmark".into(),
                source,
            })?;
    let csv = String::from_utf8_lossy(&out.stdout);
    r.set_rps = csv_rps(&csv, "SET");
    r.get_rps = csv_rps(&csv, "GET");
    eprintln!(
        "bench: {tag} {}: dd read {} MB/s, write {} MB/s; redis SET {} GET {} req/s",
        vmm.name(),
        num(r.dd_read_mb_s, 1),
        num(r.dd_write_mb_s, 1),
        num(r.set_rps, 0),
        num(r.get_rps, 0)
    );
    guard.kill();
    Ok(r)
}

/// Runs the devices benchmark and writes its report; false when a measurement failed.
pub fn run(o: &Opts, cmdline: String) -> Result<bool> {
    for (p, pkg) in [
        ("redis-benchmark", "redis-tools"),
        ("mkfs.ext4", "e2fsprogs"),
        ("cpio", "cpio"),
        ("ip", "iproute2"),
    ] {
        if crate::proc::first_line("which", &[p]).is_none() {
            return Err(BenchError::Missing(format!(
                "{p} not found (apt-get install {pkg})"
            )));
        }
    }
    let img = build_image(&o.owvmm, "redis-server")?;
    let work = std::env::temp_dir().join(format!("owvmm-bench-dev-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(io("cannot create scratch directory", &work))?;
    let qemu_initrd = qemu_initrd(&img.agent_initrd, &work)?;
    let c = Ctx {
        o,
        img,
        cmdline,
        ns: Netns::new("", TAP, HOST_CIDR)?,
        work: work.clone(),
        qemu_initrd,
    };
    let order = [Vmm::OwvmmDisk, Vmm::Qemu, Vmm::OwvmmInitramfs];
    let mut results: Vec<(Vmm, Vec<std::result::Result<DevRun, String>>)> =
        order.iter().map(|v| (*v, Vec::new())).collect();
    let mut errors = Vec::new();
    for i in 1..=o.runs {
        for (vmm, rs) in &mut results {
            let tag = match vmm {
                Vmm::OwvmmDisk => format!("owvmm-disk-{i}"),
                Vmm::OwvmmInitramfs => format!("owvmm-initramfs-{i}"),
                Vmm::Qemu => format!("qemu-{i}"),
            };
            let r = one_run(&c, *vmm, &tag).map_err(|e| {
                let msg = chain(&e);
                eprintln!("bench: {} run {i} failed: {msg}", vmm.name());
                errors.push(format!("{} run {i}: {msg}", vmm.name()));
                msg
            });
            rs.push(r);
        }
    }
    let md = render(o, &c, &results, &errors);
    if let Some(d) = o.out.parent() {
        std::fs::create_dir_all(d).map_err(io("cannot create report directory", d))?;
    }
    std::fs::write(&o.out, &md).map_err(io("cannot write the report", &o.out))?;
    println!("{md}");
    eprintln!("bench: report written to {}", o.out.display());
    if errors.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(errors.is_empty())
}

fn med(
    rs: &[std::result::Result<DevRun, String>],
    f: impl Fn(&DevRun) -> Option<f64>,
) -> Option<f64> {
    let v: Vec<f64> = rs
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter_map(&f)
        .collect();
    median(&v)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

fn render(
    o: &Opts,
    c: &Ctx<'_>,
    results: &[(Vmm, Vec<std::result::Result<DevRun, String>>)],
    errors: &[String],
) -> String {
    let mut md = String::new();
    let get = |v: Vmm| {
        results
            .iter()
            .find(|(x, _)| *x == v)
            .map(|(_, r)| r.as_slice())
            .unwrap_or(&[])
    };
    let (disk, qemu, initramfs) = (
        get(Vmm::OwvmmDisk),
        get(Vmm::Qemu),
        get(Vmm::OwvmmInitramfs),
    );
    let _ = writeln!(
        md,
        "## Devices: a Debian root image, virtio-blk and virtio-net against QEMU\n"
    );
    let _ = writeln!(
        md,
        "Written by `owvmm-bench --devices` ({} run(s) of each VMM, alternating). Guest: 128 MiB, 1 vCPU, kernel `{}`, \
root image `{}` (`owvmm image build --with redis-server`), initramfs with the agent alone `{}`, a fresh 96 MiB ext4 data disk per boot, \
and a tap in a network namespace of the bench's own (guest {GUEST_IP}). QEMU: `{}` with `-M microvm,rtc=on,acpi=off` (virtio-mmio; with microvm's ACPI tables this kernel got no serial interrupts), the same kernel, \
initramfs (plus the `--exec` list owvmm appends itself), images, tap and command line (microvm adds the virtio-mmio devices to it, as owvmm does). \
The initramfs-root row is owvmm's default guest (busybox and the agent in the initramfs, no devices).\n",
        o.runs,
        c.img.vmlinux.display(),
        c.img.root.display(),
        c.img.agent_initrd.display(),
        o.qemu
    );
    let _ = writeln!(md, "Command line: `{}`\n", c.cmdline);
    let mut t = Table::new(&[
        "measurement",
        "owvmm, disk root (median)",
        "QEMU microvm, disk root (median)",
        "owvmm/QEMU",
    ]);
    type Field = fn(&DevRun) -> Option<f64>;
    let rows: [(&str, Field, usize); 5] = [
        ("cold boot to agent ready (s)", |r| r.ready_s, 1),
        (
            "dd read, 16 MiB from the data disk (MB/s)",
            |r| r.dd_read_mb_s,
            1,
        ),
        ("dd write, 8 MiB + fsync (MB/s)", |r| r.dd_write_mb_s, 1),
        ("redis-benchmark SET (requests/s)", |r| r.set_rps, 0),
        ("redis-benchmark GET (requests/s)", |r| r.get_rps, 0),
    ];
    for (name, f, digits) in rows {
        let (a, b) = (med(disk, f), med(qemu, f));
        t.row(&[
            name.to_string(),
            num(a, digits),
            num(b, digits),
            ratio(a, b),
        ]);
    }
    md.push_str(&t.done());
    let (d, i) = (med(disk, |r| r.ready_s), med(initramfs, |r| r.ready_s));
    let _ = writeln!(
        md,
        "\nCold boot, owvmm with the disk root against owvmm's initramfs root: {} s against {} s (ratio {}).\n",
        num(d, 1),
        num(i, 1),
        ratio(d, i)
    );
    let mut t = Table::new(&[
        "run",
        "VMM",
        "ready (s)",
        "dd read",
        "dd write",
        "SET/s",
        "GET/s",
    ]);
    for (vmm, rs) in results {
        for (i, r) in rs.iter().enumerate() {
            match r {
                Ok(r) => t.row(&[
                    (i + 1).to_string(),
                    vmm.name().to_string(),
                    num(r.ready_s, 1),
                    num(r.dd_read_mb_s, 1),
                    num(r.dd_write_mb_s, 1),
                    num(r.set_rps, 0),
                    num(r.get_rps, 0),
                ]),
                Err(e) => t.row(&[
                    (i + 1).to_string(),
                    vmm.name().to_string(),
                    format!("failed: {}", crate::report::cell(e)),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]),
            }
        }
    }
    md.push_str(&t.done());
    if !errors.is_empty() {
        let _ = writeln!(md, "\n{} measurement(s) failed.", errors.len());
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dd_lines_give_megabytes_per_second() {
        let c = "x\ndd-read: bytes=16777216 t0=10.00 t1=12.00\n\
                 dd-write: bytes=8388608 t0=12.50 t1=16.69\n";
        assert_eq!(dd_rate(c, "dd-read").map(|v| v.round()), Some(8.0));
        assert_eq!(
            dd_rate(c, "dd-write").map(|v| (v * 10.0).round()),
            Some(20.0)
        );
        assert_eq!(dd_rate(c, "dd-other"), None);
        assert_eq!(dd_rate("dd-read: bytes=1 t0=3 t1=3", "dd-read"), None);
        assert_eq!(dd_rate("dd-read: garbage", "dd-read"), None);
    }

    #[test]
    fn redis_benchmark_csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"1234.57\",\"3.1\"\n\"GET\",\"2000.00\",\"2.0\"\n";
        assert_eq!(csv_rps(csv, "SET"), Some(1234.57));
        assert_eq!(csv_rps(csv, "GET"), Some(2000.0));
        assert_eq!(csv_rps(csv, "INCR"), None);
    }
}
