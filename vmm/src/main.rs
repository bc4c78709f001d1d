//! The `owvmm` command line.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use owvmm::api::client::Client;
use owvmm::config::{parse_add, parse_disks, parse_nets, BootConfig, MachineConfig, VmConfig};
use owvmm::error_chain;
use owvmm::vmm::{ConsoleOut, Vmm};
use serde_json::json;

mod demo;
mod image;
mod rootfs;
mod sdk;

/// Exit code for a VMM error at run time.
const EXIT_VMM_ERROR: u8 = 1;
/// Exit code for arguments or configuration refused before starting.
const EXIT_BAD_ARGS: u8 = 2;

#[derive(Parser)]
#[command(
    name = "owvmm",
    version,
    about = "A VMM whose guests' programs survive a crash of the guest kernel",
    long_about = "owvmm runs a Linux guest on KVM. With no command it boots the default guest \
(built on first use into ~/.cache/owvmm) with a shell on the console; Ctrl-A x quits.",
    after_help = "Exit codes of `run`: 0 guest powered off (ctl shutdown, or the programs asked for it), 1 VMM error, 2 bad arguments, \
3 guest reset/reboot, 4 guest kernel crash not recovered, 5 stopped (ctl stop, Ctrl-A x), 6 the guest could not be set up as asked (a --disk it could not mount, a --net it could not configure)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

// Parsed once per process: the size of the `run` arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Boot a guest (or restore a snapshot) and run it until it powers off.
    Run(RunArgs),
    /// Talk to a running owvmm through its control socket.
    Ctl(CtlArgs),
    /// Build or locate the default guest kernel and initramfs.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Show what owvmm does on the default guest: boot, snapshot, restore, then a kernel crash
    /// that the program survives.
    Demo(demo::DemoArgs),
    /// Prepare (or find in the cache) the crash kernel's warm standby for a machine shape,
    /// and print its directory. `owvmm run` does this by itself when it needs one.
    Standby(StandbyArgs),
    /// Write the crash-procedure SDK for guest programs into DIR (a C header and an example).
    ///
    /// DIR/include/owvmm.h lets a program in the guest choose what happens to it after a
    /// kernel crash: go on where it was, or restart afresh after saving its state;
    /// DIR/examples/kvserver.c shows how. Build with `gcc -static -I DIR/include prog.c`.
    /// Rust programs use the owvmm-sdk crate (sdk/rust); see docs/crash-procedures.md.
    Sdk(sdk::SdkArgs),
}

/// What a guest boots and its shape (shared by `run` and `standby`).
#[derive(Args, Clone, Default)]
struct GuestArgs {
    /// Kernel: uncompressed vmlinux (ELF) or bzImage [default: the default image's vmlinux]
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (newc cpio) [default: the default image's, with busybox and ow-agent]
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line [default: guest-kernel/cmdline]; options this host's KVM needs are added
    /// (on kvm_pvm only; `run --print-cmdline` shows the result)
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest memory in MiB
    #[arg(long, default_value_t = 128)]
    mem: u64,
    /// Number of vCPUs
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
}

#[derive(Args)]
struct StandbyArgs {
    #[command(flatten)]
    guest: GuestArgs,
}

#[derive(Args, Clone, Default)]
struct RunArgs {
    #[command(flatten)]
    guest: GuestArgs,
    /// Control socket path (Unix socket, mode 0600, JSON lines; see docs/control-socket.md)
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Copy a host file into the guest: HOST:GUEST (GUEST absolute; repeatable)
    #[arg(long = "add", value_name = "HOST:GUEST")]
    add: Vec<String>,
    /// Start a command at boot, output on the console (repeatable). With --exec the guest
    /// powers off when all commands have exited; without, you get a shell.
    #[arg(long = "exec", value_name = "CMD")]
    exec: Vec<String>,
    /// Attach a raw disk image as virtio-blk: HOST_IMAGE:GUEST_DIR[:ro] (GUEST_DIR absolute,
    /// where the guest is to mount it; `:ro` attaches it read-only; repeatable, at most 7).
    /// The image is locked while the VM runs: one in use by another owvmm is refused
    #[arg(long = "disk", value_name = "HOST_IMAGE:GUEST_DIR[:ro]")]
    disk: Vec<String>,
    /// Attach a network interface (virtio-net) on an existing host tap:
    /// tap=NAME[,ip=ADDR/PREFIX][,gw=ADDR][,mac=MAC]. The tap is opened by name and never
    /// created (make it first: `ip tuntap add dev NAME mode tap`, give it an address, set it
    /// up); one in use by another process is refused. The guest agent gives the interface
    /// ADDR/PREFIX and a default route via gw= (inside the subnet) before the --exec programs
    /// start; without ip= it only sets the link up. MAC: unicast, default 06:00:00:00:00:0N
    /// (locally administered). No offloads; IPv4 only. Repeatable (slots after the disks)
    #[arg(
        long = "net",
        value_name = "tap=NAME[,ip=ADDR/PREFIX][,gw=ADDR][,mac=MAC]"
    )]
    net: Vec<String>,
    /// Boot with Debian packages: PKG[,PKG...] and their dependencies are unpacked into an
    /// ext4 root image (built on first use with apt-get download and dpkg-deb, cached by
    /// the package versions in ~/.cache/owvmm), attached read-only; the guest finds the
    /// programs at their usual paths (/usr/bin/redis-server). /usr is the image's; the rest of
    /// the root is writable, in memory. No maintainer scripts run. Repeatable. The build
    /// needs Debian's mirror: where owvmm runs without one (a network namespace), run
    /// `owvmm image build --with PKG` first
    #[arg(long = "with", value_name = "PKG[,PKG...]")]
    with: Vec<String>,
    /// Boot with the busybox initramfs as the whole root, without Debian's base image.
    /// By default a guest of the default kernel boots with a read-only ext4 root image of
    /// Debian's base (dash, libc, busybox; built on first use like --with, cached) merged into
    /// an initramfs that holds the agent alone; owvmm falls back to this, with a warning,
    /// when the image cannot be built (no Debian mirror)
    #[arg(long, conflicts_with = "with")]
    initramfs_root: bool,
    /// Resume a snapshot written by `owvmm ctl snapshot` instead of booting. Its disks and
    /// taps are reopened by path and name (the snapshotted VM must have stopped)
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd", "cmdline", "add", "exec", "disk", "net", "with", "initramfs_root"])]
    restore: Option<PathBuf>,
    /// Count as a guest hang (a crash) this many seconds without an agent heartbeat while
    /// running (0: never)
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    hang_timeout: u64,
    /// After a guest kernel crash (panic, triple fault, emulation failure, hang):
    /// `microreboot` (start a fresh kernel from its warm standby and bring the processes
    /// back in it), `exit` (code 4) or `pause` (freeze it; inspect or snapshot it through
    /// the control socket)
    #[arg(long, value_enum, default_value_t = owvmm::crash::OnCrash::Microreboot)]
    on_crash: owvmm::crash::OnCrash,
    /// On a crash, write the dead guest's memory and vCPU state here (snapshot format)
    #[arg(long, value_name = "DIR")]
    crash_dump: Option<PathBuf>,
    /// The crash kernel's warm standby for `--on-crash microreboot`: a snapshot of a freshly
    /// booted guest with the same --mem and --vcpus (`owvmm standby` makes one). Default: the
    /// cached standby of this kernel and shape, prepared in the background on first use
    #[arg(long, value_name = "DIR")]
    standby: Option<PathBuf>,
    /// Do not show the guest console
    #[arg(long)]
    no_console: bool,
    /// Print the kernel command line the guest would boot with (--cmdline or the default,
    /// plus the options this host's KVM needs; with --restore the snapshot's) and exit 0
    /// without booting. The added options and why go to stderr
    #[arg(long)]
    print_cmdline: bool,
}

#[derive(Args)]
struct CtlArgs {
    /// The VMM's control socket
    #[arg(long)]
    api_sock: PathBuf,
    #[command(subcommand)]
    what: CtlCmd,
}

#[derive(Subcommand)]
enum CtlCmd {
    /// State, uptime, vCPUs, memory, agent
    Status,
    /// Stop running guest code
    Pause,
    /// Run guest code again
    Resume,
    /// End the VMM at once, the guest not shut down (`run` exits 5)
    Stop,
    /// Orderly power off: the agent stops the programs (SIGTERM, then SIGKILL after a
    /// grace period), syncs and unmounts the disks; `run` exits 0
    Shutdown,
    /// Write memory, vCPU and device state into DIR
    Snapshot {
        /// Directory to write
        dir: PathBuf,
    },
    /// Round trip through the guest agent
    PingAgent,
    /// Where each vCPU is: instruction pointer, kernel symbol, mode, MP state
    Vcpus,
    /// Make the guest kernel crash now, without the agent's help
    Crash {
        /// How to crash it
        #[arg(long, value_enum, default_value_t = CrashHow::Panic)]
        how: CrashHow,
    },
    /// Print events as they happen (one JSON object per line)
    Events,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CrashHow {
    /// The kernel calls panic() on a vCPU that is in kernel mode
    Panic,
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Build the default kernel, initramfs and root image of Debian's base (each cached by a
    /// hash of its inputs), or with --with the root image of those Debian packages
    Build {
        /// Rebuild the kernel even if cached
        #[arg(long)]
        force: bool,
        /// Build the root image with these Debian packages and their dependencies instead of
        /// the base one (what `run --with` boots; cached by the package versions)
        #[arg(long = "with", value_name = "PKG[,PKG...]")]
        with: Vec<String>,
        /// Use this static ow-agent binary instead of building one
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// Print where the default image is (building it if needed)
    Path,
}

fn fail(code: u8, e: &dyn std::error::Error) -> ExitCode {
    eprintln!("owvmm: error: {}", error_chain(e));
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Run(RunArgs::default_run())) {
        Cmd::Run(a) => run(a),
        Cmd::Ctl(a) => ctl(a),
        Cmd::Image(ImageCmd::Build { force, with, agent }) => {
            // Without packages: the default guest's root image, Debian's base.
            let root = match with.is_empty() {
                true => default_root(),
                false => match root_image(&with) {
                    Ok(r) => r,
                    Err(e) => return fail(EXIT_BAD_ARGS, e.as_ref()),
                },
            };
            match crate::image::build(force, agent.as_deref()) {
                Ok(img) => {
                    println!("kernel    {}", img.vmlinux.display());
                    println!("initramfs {}", img.initramfs.display());
                    if let Some(r) = root {
                        println!("root      {}", r.display());
                        // What a guest with that root boots: the agent alone.
                        println!("root-initramfs {}", img.agent_initramfs.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_VMM_ERROR, &e),
            }
        }
        Cmd::Image(ImageCmd::Path) => match crate::image::build(false, None) {
            Ok(img) => {
                // A reader that stops after the first line (`| head -1`) is not an error.
                let _ = writeln!(
                    std::io::stdout(),
                    "{}\n{}",
                    img.kernel_dir.display(),
                    img.initramfs.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_VMM_ERROR, &e),
        },
        Cmd::Demo(a) => demo::run(a),
        Cmd::Standby(a) => standby(a),
        Cmd::Sdk(a) => match a.write() {
            Ok(paths) => {
                for p in paths {
                    println!("{}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) if e.refused() => fail(EXIT_BAD_ARGS, &e),
            Err(e) => fail(EXIT_VMM_ERROR, &e),
        },
    }
}

impl RunArgs {
    fn default_run() -> Self {
        RunArgs {
            guest: GuestArgs {
                mem: 128,
                vcpus: 1,
                ..Default::default()
            },
            hang_timeout: 60,
            ..Default::default()
        }
    }
}

/// The root image of `--with` packages, built when needed (none without packages).
fn root_image(with: &[String]) -> Result<Option<PathBuf>, Box<dyn std::error::Error>> {
    let pkgs = crate::rootfs::parse_packages(with)?;
    if pkgs.is_empty() {
        return Ok(None);
    }
    let img = crate::rootfs::build(&pkgs, &mut |l| eprintln!("owvmm-image: {l}"))?;
    Ok(Some(img))
}

/// Whether `a` boots the default root image: a fresh boot of the default kernel and
/// initramfs, with no packages, no root disk of one's own and no `--initramfs-root`. An
/// `--add` where the image's read-only files are keeps the initramfs root (said once).
fn wants_default_root(a: &RunArgs, disks: &[owvmm::config::DiskConfig]) -> bool {
    let plain = a.restore.is_none()
        && a.with.is_empty()
        && !a.initramfs_root
        && a.guest.kernel.is_none()
        && a.guest.initrd.is_none()
        && !disks.iter().any(owvmm::config::DiskConfig::is_root);
    if !plain {
        return false;
    }
    let under = a.add.iter().find_map(|s| {
        let f = parse_add(s).ok()?;
        owvmm::config::under_root_image(&f.guest).map(|d| (f.guest, d))
    });
    if let Some((guest, dir)) = under {
        eprintln!(
            "owvmm: --add {guest} is under {dir}, which the root image makes read-only: booting \
             the busybox initramfs as the root"
        );
        return false;
    }
    true
}

/// Debian's base as the root image (dash, libc, busybox), built on first use; `None`, with
/// a warning saying why, when it cannot be made: the guest then boots its initramfs root.
pub(crate) fn default_root() -> Option<PathBuf> {
    match crate::rootfs::build(&[], &mut |l| eprintln!("owvmm-image: {l}")) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!(
                "owvmm: warning: no root image of Debian's base ({}); the guest boots its busybox \
                 initramfs as the root instead (--initramfs-root does so without trying)",
                error_chain(&e)
            );
            None
        }
    }
}

/// The disks of `a`, the root image first: the `--with` packages', or the default root's
/// (built when `build`; a placeholder path otherwise, for `--print-cmdline`).
fn run_disks(
    a: &RunArgs,
    build: bool,
) -> Result<Vec<owvmm::config::DiskConfig>, Box<dyn std::error::Error>> {
    let mut disks = parse_disks(&a.disk)?;
    let root = if !a.with.is_empty() {
        if build {
            root_image(&a.with)?
        } else {
            crate::rootfs::parse_packages(&a.with)?;
            Some(PathBuf::new())
        }
    } else if wants_default_root(a, &disks) {
        if build {
            default_root()
        } else {
            Some(PathBuf::new())
        }
    } else {
        None
    };
    if let Some(root) = root {
        disks.insert(0, owvmm::config::DiskConfig::root(root));
    }
    Ok(disks)
}

fn build_config(a: RunArgs) -> Result<VmConfig, Box<dyn std::error::Error>> {
    let add = a
        .add
        .iter()
        .map(|s| parse_add(s))
        .collect::<Result<Vec<_>, _>>()?;
    let disks = run_disks(&a, true)?;
    let nets = parse_nets(&a.net)?;
    // With a root image the default initramfs is the agent alone; the standby keeps the
    // whole one (it is shared by every guest of the shape, and merges the image after a
    // crash).
    let has_root = disks.iter().any(owvmm::config::DiskConfig::is_root);
    let mut standby_initrd = None;
    let (kernel, initrd) = match (&a.restore, a.guest.kernel.clone(), a.guest.initrd.clone()) {
        (Some(_), _, _) => (PathBuf::new(), None),
        // Without `--initrd` the default initramfs is added by `run` once the arguments
        // are checked.
        (None, Some(k), i) => (k, i),
        (None, None, Some(i)) => (crate::image::build(false, None)?.vmlinux, Some(i)),
        (None, None, None) => {
            let img = crate::image::build(false, None)?;
            standby_initrd = Some(img.initramfs.clone());
            let i = if has_root {
                img.agent_initramfs
            } else {
                img.initramfs
            };
            (img.vmlinux, Some(i))
        }
    };
    let cmdline = a
        .guest
        .cmdline
        .clone()
        .unwrap_or_else(crate::image::default_cmdline);
    let standby_auto = if a.on_crash == owvmm::crash::OnCrash::Microreboot && a.standby.is_none() {
        Some(auto_standby(
            &a,
            &kernel,
            standby_initrd.as_ref().or(initrd.as_ref()),
            &cmdline,
        )?)
    } else {
        None
    };
    Ok(VmConfig {
        boot: BootConfig {
            kernel,
            initrd,
            cmdline,
        },
        machine: MachineConfig {
            mem_mib: a.guest.mem,
            vcpus: a.guest.vcpus,
        },
        api_sock: a.api_sock,
        add,
        exec: a.exec,
        disks,
        nets,
        restore: a.restore,
        hang_timeout_s: a.hang_timeout,
        on_crash: a.on_crash,
        crash_dump: a.crash_dump,
        standby: a.standby,
        standby_auto,
    })
}

/// The standby a guest gets when none is given: same kernel, command line and shape, the
/// default image's initramfs unless the guest has its own.
fn auto_standby(
    a: &RunArgs,
    kernel: &std::path::Path,
    initrd: Option<&PathBuf>,
    cmdline: &str,
) -> Result<owvmm::standby::StandbySpec, Box<dyn std::error::Error>> {
    if let Some(dir) = &a.restore {
        let (st, _) = owvmm::snapshot::read(dir)?;
        let img = crate::image::build(false, None)?;
        return Ok(owvmm::standby::StandbySpec {
            kernel: PathBuf::from(&st.machine.kernel),
            initrd: Some(img.initramfs),
            cmdline: crate::image::default_cmdline(),
            mem_mib: st.machine.mem_mib,
            vcpus: st.machine.vcpus,
        });
    }
    // `--add` and `--exec` go into an overlay at boot, not into `initrd`.
    Ok(owvmm::standby::StandbySpec {
        kernel: kernel.to_path_buf(),
        initrd: initrd.cloned(),
        cmdline: cmdline.to_owned(),
        mem_mib: a.guest.mem,
        vcpus: a.guest.vcpus,
    })
}

fn standby(StandbyArgs { guest: a }: StandbyArgs) -> ExitCode {
    let spec = (|| -> Result<owvmm::standby::StandbySpec, Box<dyn std::error::Error>> {
        let (kernel, initrd) = match (a.kernel, a.initrd) {
            (Some(k), Some(i)) => (k, i),
            (Some(k), None) => (k, crate::image::default_initramfs()?),
            (None, i) => {
                let img = crate::image::build(false, None)?;
                (img.vmlinux, i.unwrap_or(img.initramfs))
            }
        };
        Ok(owvmm::standby::StandbySpec {
            kernel,
            initrd: Some(initrd),
            cmdline: a.cmdline.unwrap_or_else(crate::image::default_cmdline),
            mem_mib: a.mem,
            vcpus: a.vcpus,
        })
    })();
    let spec = match spec {
        Ok(s) => s,
        Err(e) => return fail(EXIT_VMM_ERROR, e.as_ref()),
    };
    match spec.prepare(&mut owvmm::standby::log_stderr) {
        Ok(dir) => {
            println!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_VMM_ERROR, &e),
    }
}

/// `run --print-cmdline`: the effective kernel command line on stdout, one line.
fn print_cmdline(a: &RunArgs) -> ExitCode {
    use owvmm::host_quirks;
    let line = if let Some(dir) = &a.restore {
        match owvmm::snapshot::read(dir) {
            Ok((st, _)) => st.machine.cmdline,
            Err(e) => return fail(EXIT_BAD_ARGS, &e),
        }
    } else {
        let base = a
            .guest
            .cmdline
            .clone()
            .unwrap_or_else(crate::image::default_cmdline);
        let host = host_quirks::detect();
        if !host_quirks::quirks_disabled_by_env() {
            for (opt, why) in host_quirks::missing_options(host, &base) {
                eprintln!("owvmm: added for kvm_pvm: {opt} -- {why}");
            }
        }
        // The root image's path is not on the command line: no need to build it.
        let disks = match run_disks(a, false) {
            Ok(d) => d,
            Err(e) => return fail(EXIT_BAD_ARGS, e.as_ref()),
        };
        let nets = match parse_nets(&a.net) {
            Ok(n) => n,
            Err(e) => return fail(EXIT_BAD_ARGS, &e),
        };
        owvmm::config::with_devices(&host_quirks::adjust_cmdline(host, &base), &disks, &nets)
    };
    let _ = writeln!(std::io::stdout(), "{line}");
    ExitCode::SUCCESS
}

fn run(a: RunArgs) -> ExitCode {
    if a.print_cmdline {
        return print_cmdline(&a);
    }
    let console = if a.no_console {
        ConsoleOut::Null
    } else {
        ConsoleOut::Stdout
    };
    let default_initrd =
        a.restore.is_none() && a.guest.kernel.is_some() && a.guest.initrd.is_none();
    let mut cfg = match build_config(a) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_ARGS, e.as_ref()),
    };
    if let Err(e) = cfg.validate() {
        return fail(EXIT_BAD_ARGS, &e);
    }
    if default_initrd {
        // A kernel of one's own with the default initramfs (busybox and the agent).
        match crate::image::default_initramfs() {
            Ok(i) => {
                if let Some(s) = cfg.standby_auto.as_mut() {
                    s.initrd = Some(i.clone());
                }
                cfg.boot.initrd = Some(i);
            }
            Err(e) => return fail(EXIT_VMM_ERROR, &e),
        }
    }
    let vmm = match Vmm::new(&cfg, console) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_VMM_ERROR, &e),
    };
    let sock = cfg.api_sock.clone();
    let result = vmm.run();
    if let Some(p) = sock {
        let _ = std::fs::remove_file(p);
    }
    match result {
        Ok(reason) => {
            eprintln!("\r\nowvmm: guest {}\r", describe(&reason));
            ExitCode::from(u8::try_from(reason.code()).unwrap_or(EXIT_VMM_ERROR))
        }
        Err(e) => fail(EXIT_VMM_ERROR, &e),
    }
}

fn describe(r: &owvmm::vmm::ExitReason) -> String {
    use owvmm::vmm::ExitReason::*;
    match r {
        PowerOff => "powered off".into(),
        Reset => "reset (reboot requested)".into(),
        GuestCrash(_) => "kernel crashed (see above); exiting with code 4".into(),
        Stopped => "stopped".into(),
        GuestSetup(why) => format!("not set up: {why}; exiting with code 6"),
    }
}

fn ctl(a: CtlArgs) -> ExitCode {
    let req = match &a.what {
        CtlCmd::Status => json!({"cmd": "status"}),
        CtlCmd::Pause => json!({"cmd": "pause"}),
        CtlCmd::Resume => json!({"cmd": "resume"}),
        CtlCmd::Stop => json!({"cmd": "stop"}),
        CtlCmd::Shutdown => json!({"cmd": "shutdown"}),
        CtlCmd::Snapshot { dir } => {
            // The VMM may run in another directory: send an absolute path.
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            json!({"cmd": "snapshot", "dir": dir.display().to_string()})
        }
        CtlCmd::PingAgent => json!({"cmd": "ping-agent"}),
        CtlCmd::Vcpus => json!({"cmd": "vcpus"}),
        CtlCmd::Crash { how } => {
            let how = match how {
                CrashHow::Panic => "panic",
            };
            json!({"cmd": "crash", "how": how})
        }
        CtlCmd::Events => json!({"cmd": "events"}),
    };
    let mut c = match Client::connect(&a.api_sock) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_VMM_ERROR, &e),
    };
    let reply = match c.call(&req) {
        Ok(r) => r,
        Err(e) => return fail(EXIT_VMM_ERROR, &e),
    };
    if reply["ok"] != json!(true) {
        eprintln!(
            "owvmm: error: {}",
            reply["error"].as_str().unwrap_or("request failed")
        );
        return ExitCode::from(EXIT_VMM_ERROR);
    }
    if matches!(a.what, CtlCmd::Events) {
        loop {
            match c.next_message() {
                Ok(ev) => println!("{ev}"),
                Err(_) => return ExitCode::SUCCESS,
            }
        }
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&reply).unwrap_or_else(|_| reply.to_string())
    );
    ExitCode::SUCCESS
}
