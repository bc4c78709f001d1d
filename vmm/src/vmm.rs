//! The running VMM: builds a VM (fresh boot or snapshot restore), then runs the event loop
//! that serves the console, the agent channel, the control socket and the vCPUs' reports.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::VmFd;
use ow_agent::proto::{UnixTime, VmmMsg};
use owvmm_recovery::paging::{read_virt, PhysRead};
use owvmm_recovery::symbols::SymbolTable;
use serde_json::{json, Value};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::agent::{AgentLink, AgentState};
use crate::api::protocol::{error, ok, Request};
use crate::api::server::ApiCall;
use crate::arch::{acpi, boot, mptable, regs};
use crate::config::VmConfig;
use crate::crash::{ConsoleTail, CrashCause, OnCrash, PanicSource, TeeConsole};
use crate::devices::acpi_pm::{AcpiPm, PM_BASE, PM_PORTS};
use crate::devices::bus::{lock, MmioBus, PioBus};
use crate::devices::i8042::I8042;
use crate::devices::pvpanic::{PvPanic, PvPanicState, PVPANIC_PORT};
use crate::devices::serial::{SerialInput, SerialOut, SerialPort};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::mmio::MmioTransport;
use crate::events::EventBus;
use crate::host_quirks::{self, HostKvm};
use crate::snapshot::{self, MachineInfo, SnapshotState};
use crate::terminal::ConsoleInput;
use crate::vstate::vcpu::{
    restore_state, FaultInfo, Vcpu, VcpuEvent, VcpuHandle, VcpuRequest, VcpuResponse, VcpuState,
};
use crate::vstate::vm::{restore_vm_state, save_vm_state, KvmContext};

mod api;
mod detect;
mod manifest;
mod recovery;

use recovery::Recovery;
pub use recovery::RecoveryError;

/// Errors while building or running the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// KVM set-up failed.
    #[error("KVM set-up failed")]
    Vm(#[from] crate::vstate::vm::VmError),
    /// Guest memory failed.
    #[error("guest memory set-up failed")]
    Memory(#[from] crate::memory::MemoryError),
    /// Loading the kernel or initramfs failed.
    #[error("boot set-up failed")]
    Boot(#[from] boot::BootError),
    /// vCPU set-up failed.
    #[error("vCPU set-up failed")]
    Regs(#[from] regs::RegsError),
    /// vCPU thread failure.
    #[error("vCPU failure")]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    /// MP table failure.
    #[error("MP table set-up failed")]
    Mptable(#[from] mptable::MptableError),
    /// ACPI tables failure.
    #[error("ACPI table set-up failed")]
    Acpi(#[from] acpi::AcpiError),
    /// Device set-up failed.
    #[error("device set-up failed")]
    Bus(#[from] crate::devices::bus::BusError),
    /// A virtio device could not be made.
    #[error("virtio device set-up failed")]
    Virtio(#[from] crate::devices::virtio::VirtioError),
    /// A disk image could not be opened.
    #[error("disk set-up failed")]
    Disk(#[from] crate::devices::virtio::block::DiskError),
    /// A tap could not be opened.
    #[error("network set-up failed")]
    Tap(#[from] crate::devices::virtio::net::TapError),
    /// A serial port could not be restored.
    #[error("serial port set-up failed")]
    Serial(#[from] crate::devices::serial::SerialError),
    /// Snapshot read or write failed.
    #[error("snapshot failed")]
    Snapshot(#[from] snapshot::SnapshotError),
    /// The machine's shape is refused.
    #[error("machine refused")]
    Machine(#[from] crate::config::MachineError),
    /// Control socket failed.
    #[error("control socket failed")]
    Api(#[from] crate::api::server::ApiError),
    /// An initramfs or added file could not be read.
    #[error("cannot read {0}")]
    ReadFile(PathBuf, #[source] std::io::Error),
    /// The event loop failed.
    #[error("event loop failed")]
    EventLoop(#[source] event_manager::Error),
    /// A vCPU answered something else than asked.
    #[error("vCPU {id} answered {answer} to {asked}")]
    VcpuAnswer {
        /// vCPU index.
        id: u8,
        /// The request.
        asked: &'static str,
        /// What it said.
        answer: String,
    },
    /// The microreboot failed.
    #[error("microreboot failed")]
    Recovery(#[from] RecoveryError),
    /// A host resource (eventfd, timerfd) could not be made.
    #[error("cannot create {0}")]
    Host(&'static str, #[source] std::io::Error),
}

/// How a VMM run ended; each has its own process exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (exit code 0).
    PowerOff,
    /// The guest reset itself / rebooted (exit code 3).
    Reset,
    /// The guest kernel died: triple fault, emulation failure (exit code 4).
    GuestCrash(String),
    /// `owvmm ctl stop` or Ctrl-A x (exit code 5).
    Stopped,
    /// The guest could not be set up as asked: a `--disk` it could not mount, a `--net` it
    /// could not configure (exit code 6).
    GuestSetup(String),
}

impl ExitReason {
    /// The process exit code.
    pub fn code(&self) -> i32 {
        match self {
            ExitReason::PowerOff => 0,
            ExitReason::Reset => 3,
            ExitReason::GuestCrash(_) => 4,
            ExitReason::Stopped => 5,
            ExitReason::GuestSetup(_) => 6,
        }
    }

    /// A short name for events and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ExitReason::PowerOff => "poweroff",
            ExitReason::Reset => "reset",
            ExitReason::GuestCrash(_) => "guest-crash",
            ExitReason::Stopped => "stopped",
            ExitReason::GuestSetup(_) => "guest-setup-failed",
        }
    }
}

/// Where the console's output goes.
pub enum ConsoleOut {
    /// The terminal (standard output).
    Stdout,
    /// Discard.
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Paused,
}

/// Resident memory of this process, in bytes (from /proc/self/statm).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

struct GuestMem<'a>(&'a GuestMemoryMmap);

impl PhysRead for GuestMem<'_> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.0.read_slice(buf, GuestAddress(addr)).is_ok()
    }
}

/// The VMM.
pub struct Vmm {
    vm: VmFd,
    mem: GuestMemoryMmap,
    vcpus: Vec<VcpuHandle>,
    com1: Arc<Mutex<SerialPort>>,
    com2: Arc<Mutex<SerialPort>>,
    /// The virtio-mmio devices (disks); reset when a microreboot swaps the memory.
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    /// The `--disk`s, in device order (a crash kernel is asked to mount them again).
    disks: Vec<crate::config::DiskConfig>,
    /// The `--net`s, after the disks (a crash kernel is asked to configure them again).
    nets: Vec<crate::config::NetConfig>,
    agent: Arc<Mutex<AgentState>>,
    /// Console input waiting for room in COM1's FIFO (its own subscriber; fed from stdin).
    console_in: Arc<Mutex<SerialInput>>,
    /// The VMM's messages to the agent waiting for room in COM2's FIFO.
    agent_in: Arc<Mutex<SerialInput>>,
    /// Written by the console input on `Ctrl-A x`.
    stop_evt: EventFd,
    events: EventBus,
    vcpu_events: Receiver<VcpuEvent>,
    vcpu_evt: EventFd,
    reset_evt: EventFd,
    /// Written by the pvpanic device on a `PVPANIC_PANICKED` event.
    pvpanic_evt: EventFd,
    /// What the pvpanic device saw.
    pvpanic: Arc<PvPanicState>,
    /// The control socket's queue and eventfd, until `run` gives them to their subscriber.
    api: Option<(Receiver<ApiCall>, EventFd)>,
    timer: TimerFd,
    state: State,
    started: Instant,
    exit: Option<ExitReason>,
    kernel_info: Option<Arc<KernelInfo>>,
    machine: MachineInfo,
    host: HostKvm,
    restored_from: Option<PathBuf>,
    hang_timeout: Option<Duration>,
    hang_ref: Instant,
    on_crash: OnCrash,
    crash_dump: Option<PathBuf>,
    crashes: Vec<Value>,
    crashed: bool,
    console_tail: ConsoleTail,
    /// The standby, the recovery in progress and its stage.
    recovery: Recovery,
    panic_seen: Option<Instant>,
    /// When `ctl crash` asked for a panic (for the detection time).
    crash_requested: Option<Instant>,
    /// `panic_cpu` was seen unset since the kernel is in place (or a snapshot was
    /// restored): from then on a set one means a panic.
    panic_cpu_armed: bool,
    poweroff_since: Option<Instant>,
    clock_synced: bool,
}

// The VMM's own endpoints; the console, the serial inputs and the control socket are
// subscribers of their own.
const DATA_VCPU: u32 = 2;
const DATA_RESET: u32 = 3;
const DATA_STOP: u32 = 4;
const DATA_TIMER: u32 = 5;
const DATA_RECOVERY: u32 = 6;
const DATA_PVPANIC: u32 = 9;

/// Most console input kept for the guest while its FIFO is full (what a user pastes); more
/// is dropped, as a terminal would when the other side does not read.
const CONSOLE_INPUT_MAX: usize = 64 * 1024;
/// Most VMM messages kept for the agent while COM2's FIFO is full (the largest is a
/// resurrect request of a few hundred bytes).
const AGENT_INPUT_MAX: usize = 1024 * 1024;

/// Serial ports: COM1 is the console, COM2 the agent channel.
const COM1: (u16, u32) = (0x3f8, 4);
const COM2: (u16, u32) = (0x2f8, 3);
/// Longest a powering-off guest may take to halt before the VMM ends it anyway.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(100);
/// How long a kernel may be seen panicking before the VMM calls it a crash.
const PANIC_GRACE: Duration = Duration::from_millis(300);
/// The same when the kernel's pvpanic driver bound to the device: it reports the panic
/// itself from its panic notifier, after the panic message, the stack dump and stopping
/// the other CPUs (a second or so here); `panic_cpu` decides only if that never comes.
const PVPANIC_GRACE: Duration = Duration::from_secs(5);

fn eventfd(what: &'static str) -> Result<EventFd, VmmError> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::Host(what, e))
}

struct Devices {
    bus: PioBus,
    mmio: MmioBus,
    /// The virtio-mmio transports (the disks), in device order.
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    com1: Arc<Mutex<SerialPort>>,
    com2: Arc<Mutex<SerialPort>>,
    /// Bytes waiting for COM1's / COM2's input FIFO.
    console_in: Arc<Mutex<SerialInput>>,
    agent_in: Arc<Mutex<SerialInput>>,
    reset_evt: EventFd,
    pvpanic_evt: EventFd,
    pvpanic: Arc<PvPanicState>,
}

fn console_writer(out: ConsoleOut, tail: ConsoleTail) -> SerialOut {
    let out: SerialOut = match out {
        ConsoleOut::Stdout => Box::new(std::io::stdout()),
        ConsoleOut::Null => Box::new(std::io::sink()),
    };
    Box::new(TeeConsole { out, tail })
}

/// Puts `device` on the `index`-th virtio-mmio slot: its MMIO window, an irqfd for its
/// interrupt and an ioeventfd for each queue's QueueNotify.
fn attach_virtio(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    index: usize,
    device: Box<dyn crate::devices::virtio::VirtioDevice>,
    mmio: &mut MmioBus,
) -> Result<Arc<Mutex<MmioTransport>>, VmmError> {
    use crate::devices::virtio::{slot, VirtioError};
    use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
    let (base, irq) = slot(index).ok_or(crate::devices::bus::BusError::Overlap {
        base: crate::devices::virtio::MMIO_BASE,
        len: crate::devices::virtio::MMIO_SIZE,
    })?;
    let irqfd = eventfd("virtio irqfd")?;
    vm.register_irqfd(&irqfd, irq)
        .map_err(|e| VirtioError::Kvm("IRQFD", e))?;
    let t = MmioTransport::new(device, mem.clone(), irqfd)?;
    for (q, evt) in (0u32..).zip(t.notifiers()) {
        let addr = kvm_ioctls::IoEventAddress::Mmio(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
        vm.register_ioevent(evt, &addr, q)
            .map_err(|e| VirtioError::Kvm("IOEVENTFD", e))?;
    }
    let t = Arc::new(Mutex::new(t));
    mmio.insert(base, crate::devices::virtio::MMIO_SIZE, t.clone())?;
    Ok(t)
}

/// The virtio devices, in slot order: a virtio-blk for each of `disks`, then a
/// virtio-net for each of `nets` (its tap opened by name).
fn make_virtio(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    disks: &[crate::config::DiskConfig],
    nets: &[crate::config::NetConfig],
    mmio: &mut MmioBus,
) -> Result<Vec<Arc<Mutex<MmioTransport>>>, VmmError> {
    let mut out = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let id = crate::config::disk_id(i);
        let disk = crate::devices::virtio::block::Disk::open(&d.host, d.read_only, &id)?;
        out.push(attach_virtio(
            vm,
            mem,
            out.len(),
            Box::new(Block::new(disk, &id)),
            mmio,
        )?);
    }
    for (i, n) in nets.iter().enumerate() {
        let tap = crate::devices::virtio::net::Tap::open(&n.tap)?;
        let dev = crate::devices::virtio::net::Net::new(Arc::new(tap), n.mac, &format!("net{i}"));
        out.push(attach_virtio(vm, mem, out.len(), Box::new(dev), mmio)?);
    }
    Ok(out)
}

fn make_devices(
    vm: &VmFd,
    console: ConsoleOut,
    tail: ConsoleTail,
    link: AgentLink,
    saved: Option<&[crate::devices::serial::SerialSnapshot]>,
) -> Result<Devices, VmmError> {
    let irq1 = eventfd("COM1 irqfd")?;
    let irq2 = eventfd("COM2 irqfd")?;
    vm.register_irqfd(&irq1, COM1.1)
        .map_err(|e| crate::vstate::vm::VmError::Kvm("IRQFD", e))?;
    vm.register_irqfd(&irq2, COM2.1)
        .map_err(|e| crate::vstate::vm::VmError::Kvm("IRQFD", e))?;
    let out1 = console_writer(console, tail);
    let out2: SerialOut = Box::new(link);
    let room = [eventfd("COM1 room eventfd")?, eventfd("COM2 room eventfd")?];
    let clone = |e: &EventFd| e.try_clone().map_err(|e| VmmError::Host("room eventfd", e));
    let (r1, r2) = (Some(clone(&room[0])?), Some(clone(&room[1])?));
    let (p1, p2) = match saved {
        Some([s1, s2]) => (
            SerialPort::from_snapshot(s1, irq1, r1, out1)?,
            SerialPort::from_snapshot(s2, irq2, r2, out2)?,
        ),
        _ => (
            SerialPort::new(irq1, r1, out1)?,
            SerialPort::new(irq2, r2, out2)?,
        ),
    };
    let com1 = Arc::new(Mutex::new(p1));
    let com2 = Arc::new(Mutex::new(p2));
    let reset_evt = eventfd("reset eventfd")?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        reset_evt
            .try_clone()
            .map_err(|e| VmmError::Host("reset eventfd", e))?,
    )));
    let pvpanic_evt = eventfd("pvpanic eventfd")?;
    let pvpanic = Arc::new(PvPanicState::default());
    let pvpanic_dev = Arc::new(Mutex::new(PvPanic::new(
        pvpanic.clone(),
        pvpanic_evt
            .try_clone()
            .map_err(|e| VmmError::Host("pvpanic eventfd", e))?,
    )));
    let mut bus = PioBus::default();
    bus.insert(COM1.0, 8, com1.clone())?;
    bus.insert(COM2.0, 8, com2.clone())?;
    bus.insert(0x60, 5, i8042)?;
    bus.insert(PVPANIC_PORT, 1, pvpanic_dev)?;
    bus.insert(PM_BASE, PM_PORTS, Arc::new(Mutex::new(AcpiPm::default())))?;
    let [room1, room2] = room;
    Ok(Devices {
        bus,
        mmio: MmioBus::default(),
        virtio: Vec::new(),
        console_in: Arc::new(Mutex::new(SerialInput::new(
            com1.clone(),
            room1,
            CONSOLE_INPUT_MAX,
        ))),
        agent_in: Arc::new(Mutex::new(SerialInput::new(
            com2.clone(),
            room2,
            AGENT_INPUT_MAX,
        ))),
        com1,
        com2,
        reset_evt,
        pvpanic_evt,
        pvpanic,
    })
}

/// The run-time overlay appended to the initramfs: `--add` files and the `--exec` list.
fn overlay(cfg: &VmConfig) -> Result<Vec<u8>, VmmError> {
    let mut w = crate::cpio::CpioWriter::new();
    for a in &cfg.add {
        let data = std::fs::read(&a.host).map_err(|e| VmmError::ReadFile(a.host.clone(), e))?;
        let perm = std::fs::metadata(&a.host)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .unwrap_or(0o644);
        w.parents(&a.guest);
        w.file(&a.guest, perm, &data);
    }
    if !cfg.exec.is_empty() {
        let mut list = cfg.exec.join("\n");
        list.push('\n');
        w.parents("/etc/owvmm/exec");
        w.file("/etc/owvmm/exec", 0o644, list.as_bytes());
    }
    Ok(w.finish())
}

/// What introspection needs from the kernel's build: its symbols (`System.map`) and the
/// raw BTF, found next to the kernel image.
struct KernelInfo {
    symbols: SymbolTable,
    /// The kernel's types, parsed once.
    btf: Option<owvmm_recovery::btf::Btf>,
}

impl KernelInfo {
    /// The types, or none (for the address layout alone) without BTF.
    fn types(&self) -> &owvmm_recovery::btf::Btf {
        static NONE: std::sync::OnceLock<owvmm_recovery::btf::Btf> = std::sync::OnceLock::new();
        self.btf
            .as_ref()
            .unwrap_or_else(|| NONE.get_or_init(owvmm_recovery::btf::Btf::empty))
    }
}

fn load_kernel_info(kernel: &str) -> Option<KernelInfo> {
    let dir = std::path::Path::new(kernel).parent()?;
    let system_map = std::fs::read_to_string(dir.join("System.map")).ok()?;
    let symbols = SymbolTable::parse_system_map(&system_map).ok()?;
    let btf = std::fs::read(dir.join("vmlinux.btf"))
        .ok()
        .and_then(|b| owvmm_recovery::btf::Btf::parse(&b).ok());
    Some(KernelInfo { symbols, btf })
}

fn unix_now() -> UnixTime {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UnixTime {
        secs: d.as_secs(),
        nanos: d.subsec_nanos(),
    }
}

impl Vmm {
    /// Boots a fresh guest (`cfg.restore` unset) or restores a snapshot.
    pub fn new(cfg: &VmConfig, console: ConsoleOut) -> Result<Self, VmmError> {
        let started = Instant::now();
        let host = host_quirks::detect();
        let kvm = KvmContext::open()?;
        let events = EventBus::new(started);
        let agent = Arc::new(Mutex::new(AgentState::default()));
        let link = AgentLink::new(agent.clone(), events.clone());
        let (vtx, vcpu_events) = channel();
        let console_tail = ConsoleTail::default();
        let vcpu_evt = eventfd("vCPU eventfd")?;

        let mut disks = cfg.disks.clone();
        let mut nets = cfg.nets.clone();
        let (vm, mem, devices, fds, machine, saved) = if let Some(dir) = &cfg.restore {
            let (st, file) = snapshot::read(dir)?;
            let mem = crate::memory::from_file(&file, st.memory_bytes)?;
            let vm = kvm.create_vm(&mem)?;
            restore_vm_state(&vm, &st.vm)?;
            let mut devices =
                make_devices(&vm, console, console_tail.clone(), link, Some(&st.serial))?;
            // The same disk images and taps, reopened (and locked) by path and name; the
            // transports take their registers and queues back.
            (disks, nets) = (st.devices.disks.clone(), st.devices.nets.clone());
            devices.virtio = make_virtio(&vm, &mem, &disks, &nets, &mut devices.mmio)?;
            for (t, ts) in devices.virtio.iter().zip(&st.devices.transports) {
                lock(t).restore(ts)?;
            }
            let mut fds = Vec::new();
            for (i, vs) in st.vcpus.iter().enumerate() {
                let id = u8::try_from(i).unwrap_or(u8::MAX);
                let fd = vm
                    .create_vcpu(u64::from(id))
                    .map_err(|e| crate::vstate::vm::VmError::Kvm("CREATE_VCPU", e))?;
                regs::check_cpuid(kvm.cpuid.as_slice(), &vs.cpuid)?;
                restore_state(&fd, id, vs, None, crate::vstate::vm::xsave2_size())?;
                fds.push((fd, vs.cpuid.clone()));
            }
            lock(&agent).ready = st.agent_ready;
            (vm, mem, devices, fds, st.machine, true)
        } else {
            let mem_bytes = cfg.machine.mem_bytes()?;
            let mem = crate::memory::anonymous(mem_bytes)?;
            let vm = kvm.create_vm(&mem)?;
            let mut devices = make_devices(&vm, console, console_tail.clone(), link, None)?;
            devices.virtio = make_virtio(&vm, &mem, &cfg.disks, &cfg.nets, &mut devices.mmio)?;
            let kernel = boot::load_kernel(&mem, &cfg.boot.kernel)?;
            let initrd = match &cfg.boot.initrd {
                Some(p) => {
                    let mut data =
                        std::fs::read(p).map_err(|e| VmmError::ReadFile(p.clone(), e))?;
                    if !cfg.add.is_empty() || !cfg.exec.is_empty() {
                        // The kernel wants each archive to start 4-byte aligned.
                        while !data.len().is_multiple_of(4) {
                            data.push(0);
                        }
                        data.extend_from_slice(&overlay(cfg)?);
                    }
                    Some(boot::load_initrd(&mem, &data, kernel.end)?)
                }
                None => None,
            };
            let cmdline = crate::config::with_devices(
                &host_quirks::adjust_cmdline(host, &cfg.boot.cmdline),
                &cfg.disks,
                &cfg.nets,
            );
            let c = boot::make_cmdline(&cmdline)?;
            // ACPI (MADT, and the DSDT naming the pvpanic device) for kernels with ACPI;
            // the MP table for kernels without.
            let rsdp = acpi::setup(&mem, cfg.machine.vcpus)?;
            boot::write_boot_params(&mem, &kernel, &c, initrd, Some(rsdp))?;
            mptable::setup(&mem, cfg.machine.vcpus)?;
            let mut fds = Vec::new();
            for id in 0..cfg.machine.vcpus {
                let fd = vm
                    .create_vcpu(u64::from(id))
                    .map_err(|e| crate::vstate::vm::VmError::Kvm("CREATE_VCPU", e))?;
                let cpuid = regs::setup_cpuid(&fd, &kvm.cpuid, id, cfg.machine.vcpus)?;
                regs::setup_msrs(&fd)?;
                regs::setup_regs(&fd, kernel.entry)?;
                regs::setup_sregs(&mem, &fd)?;
                regs::setup_fpu(&fd)?;
                regs::setup_lapic(&fd)?;
                fds.push((fd, cpuid.as_slice().to_vec()));
            }
            let machine = MachineInfo {
                mem_mib: cfg.machine.mem_mib,
                vcpus: cfg.machine.vcpus,
                kernel: cfg.boot.kernel.display().to_string(),
                cmdline,
            };
            (vm, mem, devices, fds, machine, false)
        };

        let bus = Arc::new(devices.bus);
        let mmio = Arc::new(devices.mmio);
        let mut vcpus = Vec::new();
        for (i, (fd, cpuid)) in fds.into_iter().enumerate() {
            let id = u8::try_from(i).unwrap_or(u8::MAX);
            let evt = vcpu_evt
                .try_clone()
                .map_err(|e| VmmError::Host("vCPU eventfd", e))?;
            let v = Vcpu::new(id, fd, cpuid, bus.clone(), mmio.clone(), vtx.clone(), evt);
            vcpus.push(v.start(false)?);
        }

        let (api_tx, api_rx) = channel();
        let api_evt = eventfd("API eventfd")?;
        if let Some(path) = &cfg.api_sock {
            crate::api::server::start(
                path,
                api_tx,
                api_evt
                    .try_clone()
                    .map_err(|e| VmmError::Host("API eventfd", e))?,
                events.clone(),
            )?;
        }
        let mut timer = TimerFd::new()
            .map_err(|e| VmmError::Host("timerfd", std::io::Error::from_raw_os_error(e.errno())))?;
        timer
            .reset(TICK, Some(TICK))
            .map_err(|e| VmmError::Host("timerfd", std::io::Error::from_raw_os_error(e.errno())))?;

        let kernel_info = load_kernel_info(&machine.kernel).map(Arc::new);
        let banner = kernel_info
            .as_deref()
            .and_then(|k| recovery::banner_in(&mem, k));
        let standby = if cfg.on_crash == OnCrash::Microreboot {
            recovery::choose_standby(
                cfg.standby.clone(),
                cfg.standby_auto.as_ref(),
                kernel_info.as_deref(),
                banner.as_deref(),
            )
        } else {
            recovery::Standby::None(None)
        };
        let recovery = Recovery::new(standby, banner, eventfd("recovery eventfd")?);
        let restored_from = if saved { cfg.restore.clone() } else { None };
        let vmm = Vmm {
            vm,
            mem,
            vcpus,
            com1: devices.com1,
            com2: devices.com2,
            virtio: devices.virtio,
            disks,
            nets,
            agent,
            console_in: devices.console_in,
            agent_in: devices.agent_in,
            stop_evt: eventfd("stop eventfd")?,
            events,
            vcpu_events,
            vcpu_evt,
            reset_evt: devices.reset_evt,
            pvpanic_evt: devices.pvpanic_evt,
            pvpanic: devices.pvpanic,
            api: Some((api_rx, api_evt)),
            timer,
            state: State::Running,
            started,
            exit: None,
            kernel_info,
            machine,
            host,
            restored_from,
            hang_timeout: (cfg.hang_timeout_s > 0).then(|| Duration::from_secs(cfg.hang_timeout_s)),
            hang_ref: Instant::now(),
            on_crash: cfg.on_crash,
            crash_dump: cfg.crash_dump.clone(),
            crashes: Vec::new(),
            crashed: false,
            console_tail,
            recovery,
            panic_seen: None,
            crash_requested: None,
            panic_cpu_armed: saved,
            poweroff_since: None,
            clock_synced: false,
        };
        if saved && vmm.kernel_has_pvpanic() {
            // A restored guest does not probe the port again: its driver bound at its boot.
            vmm.pvpanic.set_probed();
        }
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Some(dir) = &vmm.restored_from {
            vmm.events.publish(
                "restored",
                json!({ "snapshot": dir.display().to_string(), "restore_ms": ms }),
            );
        } else {
            vmm.events.publish("booting", json!({ "setup_ms": ms }));
        }
        Ok(vmm)
    }

    /// The event bus (to subscribe before running).
    pub fn events(&self) -> EventBus {
        self.events.clone()
    }

    /// Runs until the guest powers off, resets, crashes, or the VMM is stopped.
    pub fn run(mut self) -> Result<ExitReason, VmmError> {
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber>>> =
            EventManager::new().map_err(VmmError::EventLoop)?;
        let api = self.api.take();
        let console = ConsoleInput::new(
            self.console_in.clone(),
            self.stop_evt
                .try_clone()
                .map_err(|e| VmmError::Host("stop eventfd", e))?,
        );
        em.add_subscriber(self.console_in.clone());
        em.add_subscriber(self.agent_in.clone());
        em.add_subscriber(Arc::new(Mutex::new(console)));
        let vmm = Arc::new(Mutex::new(self));
        em.add_subscriber(vmm.clone());
        if let Some((calls, evt)) = api {
            em.add_subscriber(Arc::new(Mutex::new(api::ApiAdapter::new(
                vmm.clone(),
                calls,
                evt,
            ))));
        }
        let raw = crate::terminal::RawMode::enter();
        let result = loop {
            if let Err(e) = em.run() {
                break Err(VmmError::EventLoop(e));
            }
            if let Some(reason) = lock(&vmm).exit.clone() {
                break Ok(reason);
            }
        };
        drop(raw);
        let mut v = lock(&vmm);
        for h in v.vcpus.drain(..) {
            h.finish();
        }
        drop(v);
        crate::api::server::drain(Duration::from_secs(2));
        result
    }

    /// The guest kernel's symbols, when `System.map` was found next to it.
    fn symbols(&self) -> Option<&SymbolTable> {
        self.kernel_info.as_ref().map(|k| &k.symbols)
    }

    fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn finish_with(&mut self, reason: ExitReason) {
        if self.exit.is_none() {
            let detail = match &reason {
                ExitReason::GuestCrash(d) | ExitReason::GuestSetup(d) => d.clone(),
                _ => String::new(),
            };
            self.events.publish(
                "vmm-exit",
                json!({ "reason": reason.name(), "code": reason.code(), "detail": detail }),
            );
            self.exit = Some(reason);
        }
    }

    fn send_agent(&mut self, msg: &VmmMsg) {
        // `encode` ends the line with its newline.
        let line = msg.encode();
        if lock(&self.agent_in).push(line.as_bytes()) < line.len() {
            eprintln!("\r\nowvmm: the agent does not read its channel; a message to it was cut\r");
        }
    }

    fn pause_all(&mut self) -> Result<(), VmmError> {
        for h in &self.vcpus {
            h.request(VcpuRequest::Pause)?;
        }
        self.state = State::Paused;
        Ok(())
    }

    fn resume_all(&mut self) -> Result<(), VmmError> {
        for h in &self.vcpus {
            h.request(VcpuRequest::Resume)?;
        }
        self.state = State::Running;
        self.hang_ref = Instant::now();
        Ok(())
    }

    /// Reads every vCPU's state (vCPUs must be paused).
    fn save_vcpus(&self) -> Result<Vec<VcpuState>, VmmError> {
        let mut vcpus = Vec::new();
        for h in &self.vcpus {
            match h.request(VcpuRequest::SaveState)? {
                VcpuResponse::State(s) => vcpus.push(*s),
                other => {
                    return Err(VmmError::VcpuAnswer {
                        id: h.id,
                        asked: "save-state",
                        answer: format!("{other:?}"),
                    })
                }
            }
        }
        Ok(vcpus)
    }

    fn take_snapshot(&mut self, dir: &std::path::Path) -> Result<Value, VmmError> {
        let t0 = Instant::now();
        let was_running = self.state == State::Running;
        if was_running {
            self.pause_all()?;
        }
        let result = self
            .save_vcpus()
            .and_then(|vcpus| self.snapshot_state(vcpus))
            .and_then(|st| Ok(snapshot::write(dir, &st, &self.mem)?));
        // The devices' I/O threads stopped for their state; memory is written now.
        for t in &self.virtio {
            lock(t).resume();
        }
        if was_running {
            self.resume_all()?;
        }
        let bytes = result?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let info = json!({ "dir": dir.display().to_string(), "bytes": bytes, "ms": ms });
        self.events.publish("snapshot-done", info.clone());
        Ok(info)
    }

    /// The state of a paused guest with the given vCPU states, for a snapshot.
    fn snapshot_state(&self, vcpus: Vec<VcpuState>) -> Result<SnapshotState, VmmError> {
        Ok(SnapshotState {
            format: snapshot::FORMAT.into(),
            version: snapshot::VERSION,
            created_unix: unix_now().secs,
            machine: self.machine.clone(),
            memory_bytes: self.machine.mem_bytes()?,
            vm: save_vm_state(&self.vm)?,
            vcpus,
            serial: vec![lock(&self.com1).snapshot(), lock(&self.com2).snapshot()],
            agent_ready: lock(&self.agent).ready,
            devices: snapshot::DevicesState {
                disks: self.disks.clone(),
                nets: self.nets.clone(),
                transports: self.virtio.iter().map(|t| lock(t).save()).collect(),
            },
        })
    }

    fn status(&self) -> Value {
        let a = lock(&self.agent).clone();
        let now = Instant::now();
        json!({
            "state": match (self.crashed, self.state) {
                (true, _) => "crashed",
                (false, State::Running) => "running",
                (false, State::Paused) => "paused",
            },
            "crashes": self.crashes,
            "recovery": self.recovery.stage(),
            "uptime_ms": self.uptime_ms(),
            "vcpus": self.machine.vcpus,
            "memory_mib": self.machine.mem_mib,
            "kernel": self.machine.kernel,
            "host_kvm": self.host,
            "restored_from": self.restored_from.as_ref().map(|p| p.display().to_string()),
            "agent": {
                "ready": a.ready,
                "version": a.version,
                "heartbeats": a.heartbeats,
                "guest_uptime_ms": a.guest_uptime_ms,
                "last_seen_ms_ago": a.last_seen.map(|t| u64::try_from(now.duration_since(t).as_millis()).unwrap_or(u64::MAX)),
            },
        })
    }

    fn handle_api(&mut self, call: ApiCall) {
        let reply = match call.request {
            Request::Status => ok(self.status()),
            Request::Pause => match self.pause_all() {
                Ok(()) => {
                    self.events.publish("paused", json!({}));
                    ok(json!({}))
                }
                Err(e) => error(crate::error_chain(&e)),
            },
            Request::Resume if self.recovery.extracting() => {
                error("the guest's dead kernel is being read for its recovery; it stays frozen")
            }
            Request::Resume => match self.resume_all() {
                Ok(()) => {
                    self.events.publish("resumed", json!({}));
                    ok(json!({}))
                }
                Err(e) => error(crate::error_chain(&e)),
            },
            Request::Stop => {
                self.finish_with(ExitReason::Stopped);
                ok(json!({}))
            }
            Request::Shutdown if self.crashed || self.recovery.stage().is_some() => {
                error("the guest is recovering from a crash; shut it down once it is running")
            }
            Request::Shutdown if !lock(&self.agent).ready => {
                error("the agent is not ready yet; `ctl stop` ends the VMM without it")
            }
            Request::Shutdown => {
                self.send_agent(&VmmMsg::Poweroff);
                self.events.publish("shutdown-requested", json!({}));
                ok(
                    json!({ "note": "the agent stops the programs, syncs and unmounts the disks, then powers off; owvmm run exits 0" }),
                )
            }
            Request::Snapshot { dir } => match self.take_snapshot(std::path::Path::new(&dir)) {
                Ok(info) => ok(info),
                Err(e) => error(crate::error_chain(&e)),
            },
            Request::PingAgent => {
                if !lock(&self.agent).ready {
                    error("the agent is not ready yet")
                } else {
                    let token = format!("{}", self.uptime_ms());
                    self.send_agent(&VmmMsg::Ping {
                        token: token.clone(),
                    });
                    ok(
                        json!({ "sent": token, "note": "the answer arrives as an agent-pong event" }),
                    )
                }
            }
            Request::Vcpus => self.describe_vcpus(),
            Request::Crash { how } if how == "panic" => match self.inject_panic() {
                Ok(v) => ok(v),
                Err(e) => error(e),
            },
            Request::Crash { how } => error(format!("unknown crash kind {how:?} (known: panic)")),
            Request::Events => error("events is handled by the connection"),
        };
        let _ = call.reply.send(reply);
    }

    fn describe_vcpus(&self) -> Value {
        let mut out = Vec::new();
        for h in &self.vcpus {
            match h.request(VcpuRequest::Describe) {
                Ok(VcpuResponse::Description(b)) => {
                    let sym = self
                        .symbols()
                        .and_then(|s| s.resolve(b.rip, 0))
                        .map(|r| r.to_string());
                    let mut v = serde_json::to_value(&b).unwrap_or_default();
                    v["rip"] = json!(format!("{:#x}", b.rip));
                    v["symbol"] = json!(sym);
                    out.push(v);
                }
                Ok(other) => out.push(json!({ "vcpu": h.id, "error": format!("{other:?}") })),
                Err(e) => out.push(json!({ "vcpu": h.id, "error": crate::error_chain(&e) })),
            }
        }
        ok(json!({ "vcpus": out }))
    }

    fn describe_fault(&self, f: &FaultInfo) -> String {
        let mut bytes = [0u8; 16];
        let la57 = false;
        let n = read_virt(&GuestMem(&self.mem), f.cr3, f.rip, la57, &mut bytes);
        let hex: Vec<String> = bytes[..n].iter().map(|b| format!("{b:02x}")).collect();
        let sym = self
            .symbols()
            .and_then(|s| s.resolve(f.rip, 0))
            .map(|r| r.to_string())
            .unwrap_or_else(|| "?".into());
        format!(
            "{} on vCPU {} at RIP {:#x} ({sym}) CPL {} bytes [{}] {}",
            f.kind,
            f.vcpu,
            f.rip,
            f.cpl,
            hex.join(" "),
            f.detail
        )
    }

    fn handle_vcpu_events(&mut self) {
        while let Ok(e) = self.vcpu_events.try_recv() {
            match e {
                VcpuEvent::Shutdown(id) => {
                    self.events
                        .publish("guest-fault", json!({ "kind": "triple-fault", "vcpu": id }));
                    self.crash(CrashCause::TripleFault { vcpu: id });
                }
                VcpuEvent::Fault(f) => {
                    let text = self.describe_fault(&f);
                    self.events.publish(
                        "guest-fault",
                        json!({ "kind": f.kind, "vcpu": f.vcpu, "rip": format!("{:#x}", f.rip), "description": text }),
                    );
                    self.crash(CrashCause::EmulationFailure { description: text });
                }
            }
        }
    }

    fn tick(&mut self) {
        let a = lock(&self.agent).clone();
        if a.ready && !self.clock_synced {
            self.clock_synced = true;
            let ready_ms = self.uptime_ms();
            eprintln!(
                "\r\nowvmm: agent ready after {:.1} s{}\r",
                ready_ms as f64 / 1000.0,
                if self.restored_from.is_some() {
                    " (restored)"
                } else {
                    ""
                }
            );
            self.send_agent(&VmmMsg::Time(unix_now()));
        }
        self.recovery_step();
        // A panicking kernel sets `panic_cpu` first; it may then take long to reset (its
        // one-second waits for other CPUs run emulated here) or never do. Give it a moment
        // to print its message, then call it.
        if !self.crashed && self.state == State::Running && self.guest_panicked() {
            let seen = *self.panic_seen.get_or_insert_with(Instant::now);
            let grace = if self.pvpanic.probed() {
                PVPANIC_GRACE
            } else {
                PANIC_GRACE
            };
            if seen.elapsed() >= grace {
                self.crash(self.panic_cause(PanicSource::PanicCpu));
            }
        } else {
            self.panic_seen = None;
        }
        // While the crash kernel's agent resurrects, one big process can keep it busy
        // (and silent) for minutes; the resurrection has its own time limit.
        let resurrecting = self.recovery.resurrecting();
        if let Some(limit) = self.hang_timeout.filter(|_| !resurrecting) {
            let since = a.last_seen.map_or(self.hang_ref, |t| t.max(self.hang_ref));
            if a.ready && self.state == State::Running && since.elapsed() > limit {
                self.crash(CrashCause::Hang {
                    seconds: since.elapsed().as_secs(),
                });
            }
        }
        let failed = [
            a.mount_failed
                .as_ref()
                .map(|(dir, reason)| format!("mount its disk at {dir}: {reason}")),
            a.net_failed
                .as_ref()
                .map(|reason| format!("configure its network: {reason}")),
        ];
        for what in failed.into_iter().flatten() {
            if self.crashes.is_empty() {
                self.finish_with(ExitReason::GuestSetup(format!(
                    "the guest could not {what}"
                )));
            } else {
                // A crash kernel could not set it up again: the processes that need it are
                // not restored (each reported); the others go on.
                eprintln!("\r\nowvmm: the crash kernel could not {what}\r");
                let mut st = lock(&self.agent);
                st.mount_failed = None;
                st.net_failed = None;
            }
        }
        if a.poweroff {
            let since = *self.poweroff_since.get_or_insert_with(Instant::now);
            let halted = self.vcpus.iter().all(|h| {
                matches!(
                    h.request(VcpuRequest::ProbeHalted),
                    Ok(VcpuResponse::Halted(true))
                )
            });
            if halted {
                self.finish_with(ExitReason::PowerOff);
            } else if since.elapsed() > POWEROFF_GRACE {
                eprintln!("\r\nowvmm: guest announced power-off but did not halt within {} s; stopping it\r", POWEROFF_GRACE.as_secs());
                self.finish_with(ExitReason::PowerOff);
            }
        }
    }
}

impl MutEventSubscriber for Vmm {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            DATA_STOP => {
                let _ = self.stop_evt.read();
                self.finish_with(ExitReason::Stopped);
            }
            DATA_VCPU => {
                let _ = self.vcpu_evt.read();
                self.handle_vcpu_events();
            }
            DATA_RESET => {
                let _ = self.reset_evt.read();
                if self.pvpanic.panicked() {
                    // The pvpanic eventfd may not have been served yet.
                    self.crash(self.panic_cause(PanicSource::Pvpanic));
                } else if self.guest_panicked() {
                    self.crash(self.panic_cause(PanicSource::PanicCpu));
                } else {
                    self.events.publish("guest-reset", json!({}));
                    self.finish_with(ExitReason::Reset);
                }
            }
            DATA_PVPANIC => {
                let _ = self.pvpanic_evt.read();
                if self.pvpanic.panicked() {
                    self.crash(self.panic_cause(PanicSource::Pvpanic));
                }
            }
            DATA_RECOVERY => {
                let _ = self.recovery.wake().read();
                self.recovery_step();
            }
            DATA_TIMER => {
                let _ = self.timer.wait();
                self.tick();
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data(&self.vcpu_evt, DATA_VCPU, EventSet::IN));
        let _ = ops.add(Events::with_data(&self.reset_evt, DATA_RESET, EventSet::IN));
        let _ = ops.add(Events::with_data(
            &self.pvpanic_evt,
            DATA_PVPANIC,
            EventSet::IN,
        ));
        let _ = ops.add(Events::with_data(&self.stop_evt, DATA_STOP, EventSet::IN));
        let _ = ops.add(Events::with_data(
            self.recovery.wake(),
            DATA_RECOVERY,
            EventSet::IN,
        ));
        let _ = ops.add(Events::with_data_raw(
            self.timer.as_raw_fd(),
            DATA_TIMER,
            EventSet::IN,
        ));
    }
}
