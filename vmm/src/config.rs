//! What the user asked for, checked before anything starts (Firecracker-style: one struct
//! per resource, validated as a whole).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::arch::boot::{kernel_footprint, min_memory_for, probe_kernel, BootError};

/// Boot source: kernel, initramfs, command line.
#[derive(Debug, Clone, Default)]
pub struct BootConfig {
    /// vmlinux (ELF) or bzImage.
    pub kernel: PathBuf,
    /// Initramfs (cpio, possibly compressed).
    pub initrd: Option<PathBuf>,
    /// Kernel command line (host-specific options are added at boot).
    pub cmdline: String,
}

/// CPUs and memory.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
}

/// Most vCPUs a guest may have.
pub const MAX_VCPUS: u8 = 64;
/// Most guest RAM, in MiB.
pub const MAX_MEM_MIB: u64 = 65536;

/// A machine shape owvmm does not run (a fresh boot's or a snapshot's alike).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// vCPU count out of range.
    #[error("{0} vCPUs: owvmm runs 1 to {MAX_VCPUS}")]
    Vcpus(u8),
    /// More memory than owvmm supports (or than a byte count can hold).
    #[error("{0} MiB of memory: owvmm supports at most {MAX_MEM_MIB} MiB")]
    MemTooLarge(u64),
    /// No memory at all.
    #[error("0 MiB of memory")]
    NoMemory,
}

/// Bytes of `mem_mib` MiB, refused above [`MAX_MEM_MIB`] (so it can never wrap).
pub fn mem_bytes(mem_mib: u64) -> Result<u64, MachineError> {
    if mem_mib > MAX_MEM_MIB {
        return Err(MachineError::MemTooLarge(mem_mib));
    }
    mem_mib
        .checked_mul(1 << 20)
        .ok_or(MachineError::MemTooLarge(mem_mib))
}

impl MachineConfig {
    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> Result<u64, MachineError> {
        mem_bytes(self.mem_mib)
    }

    /// Checks the shape: 1 to [`MAX_VCPUS`] vCPUs, 1 to [`MAX_MEM_MIB`] MiB.
    pub fn check(&self) -> Result<(), MachineError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(MachineError::Vcpus(self.vcpus));
        }
        if self.mem_bytes()? == 0 {
            return Err(MachineError::NoMemory);
        }
        Ok(())
    }
}

/// A file copied into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddFile {
    /// On the host.
    pub host: PathBuf,
    /// Absolute path in the guest.
    pub guest: String,
}

/// A disk image attached as virtio-blk (`--disk HOST_IMAGE:GUEST_DIR[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskConfig {
    /// The raw image on the host.
    pub host: PathBuf,
    /// Where the agent mounts it in the guest (absolute).
    pub guest_dir: String,
    /// Attached read-only (`VIRTIO_BLK_F_RO`, writes refused).
    pub read_only: bool,
}

impl DiskConfig {
    /// A root image (`run --with`): read-only, merged into the guest's root by the agent.
    pub fn root(host: PathBuf) -> Self {
        DiskConfig {
            host,
            guest_dir: "/".into(),
            read_only: true,
        }
    }

    /// Is this a root image (`GUEST_DIR` `/`)?
    pub fn is_root(&self) -> bool {
        self.guest_dir == "/"
    }
}

/// Where a root image's files are, and so where `--add` cannot put any: its `/usr` is
/// bound over the guest's, and these are links into it.
pub const ROOT_IMAGE_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64"];

/// The directory of [`ROOT_IMAGE_DIRS`] that guest path `p` is in, if any.
pub fn under_root_image(p: &str) -> Option<&'static str> {
    ROOT_IMAGE_DIRS
        .iter()
        .copied()
        .find(|d| p == *d || p.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
}

/// Longest `GUEST_DIR` accepted (it goes on the kernel command line).
pub const GUEST_DIR_MAX: usize = 256;

/// Parses `HOST_IMAGE:GUEST_DIR[:ro]`.
pub fn parse_disk(s: &str) -> Result<DiskConfig, ConfigError> {
    let (rest, read_only) = match s.strip_suffix(":ro") {
        Some(r) => (r, true),
        None => (s, false),
    };
    let (host, guest) = rest
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::DiskSyntax(s.into()))?;
    if host.is_empty() || guest.is_empty() {
        return Err(ConfigError::DiskSyntax(s.into()));
    }
    if !guest.starts_with('/') {
        return Err(ConfigError::DiskGuestDir(s.into(), "not an absolute path"));
    }
    if guest.len() > GUEST_DIR_MAX {
        return Err(ConfigError::DiskGuestDir(s.into(), "longer than 256 bytes"));
    }
    // It travels on the kernel command line: one word, no quotes or separators.
    if guest
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | ',' | ':'))
    {
        return Err(ConfigError::DiskGuestDir(
            s.into(),
            "has a space, control character, quote, comma or colon",
        ));
    }
    if guest.split('/').any(|c| c == "..") {
        return Err(ConfigError::DiskGuestDir(s.into(), "has a .. component"));
    }
    if guest == "/" && !read_only {
        return Err(ConfigError::DiskGuestDir(
            s.into(),
            "/ (a root image) must be attached read-only (:ro)",
        ));
    }
    Ok(DiskConfig {
        host: host.into(),
        guest_dir: guest.into(),
        read_only,
    })
}

/// Parses every `--disk` argument; a root image (`IMG:/:ro`) goes first, as the agent
/// mounts the disks in order.
pub fn parse_disks(args: &[String]) -> Result<Vec<DiskConfig>, ConfigError> {
    let mut disks = args
        .iter()
        .map(|s| parse_disk(s))
        .collect::<Result<Vec<_>, _>>()?;
    disks.sort_by_key(|d| !d.is_root());
    Ok(disks)
}

/// The kernel command-line options for `disks`: for the `i`-th disk the virtio-mmio
/// device (`virtio_mmio.device=4K@ADDR:IRQ`) and `owvmm.disk=diskI:GUEST_DIR[:ro]` for the
/// agent, where `diskI` is also the device's serial (`VIRTIO_BLK_T_GET_ID`, readable in
/// the guest as `/sys/block/vdX/serial`).
pub fn disk_cmdline(disks: &[DiskConfig]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let Some((base, irq)) = crate::devices::virtio::slot(i) else {
            break;
        };
        out.push(crate::devices::virtio::cmdline_option(base, irq));
        let ro = if d.read_only { ":ro" } else { "" };
        out.push(format!("owvmm.disk={}:{}{ro}", disk_id(i), d.guest_dir));
    }
    out
}

/// The serial of the `i`-th disk.
pub fn disk_id(i: usize) -> String {
    format!("disk{i}")
}

/// `cmdline` with the disks' options appended.
pub fn with_disks(cmdline: &str, disks: &[DiskConfig]) -> String {
    with_devices(cmdline, disks, &[])
}

/// A network interface attached as virtio-net on a host tap
/// (`--net tap=NAME[,ip=ADDR/PREFIX][,gw=ADDR][,mac=MAC]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// The existing host tap device.
    pub tap: String,
    /// The guest's MAC address (unicast; default locally administered, `06:00:00:00:00:0N`).
    pub mac: [u8; 6],
    /// The guest's IPv4 address and prefix length, set by the agent.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// The guest's default gateway (inside `ip`'s subnet).
    pub gw: Option<Ipv4Addr>,
}

/// A `--net` argument refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetArgError {
    /// A `key=value` item with another key.
    #[error("--net {0:?}: unknown key {1:?} (expected tap=, ip=, gw=, mac=)")]
    UnknownKey(String, String),
    /// An item without `=`, or a key given twice.
    #[error("--net {0:?}: {1:?} is not one key=value item (or its key is given twice)")]
    Item(String, String),
    /// No `tap=`.
    #[error("--net {0:?}: tap=NAME is missing")]
    NoTap(String),
    /// A tap name that cannot be an interface name.
    #[error("--net {0:?}: tap name {1:?} is not a valid interface name (1 to 15 characters, no '/', ',' or ':')")]
    TapName(String, String),
    /// `ip=` not `ADDR/PREFIX`, or an address no interface can have.
    #[error("--net {0:?}: ip={1:?} is not a unicast IPv4 ADDR/PREFIX (prefix 1 to 32)")]
    Ip(String, String),
    /// `gw=` not an address in the subnet of `ip=`.
    #[error("--net {0:?}: gw={1:?} {2}")]
    Gw(String, String, &'static str),
    /// `mac=` not six hex bytes, or a multicast or all-zero address.
    #[error("--net {0:?}: mac={1:?} {2}")]
    Mac(String, String, &'static str),
}

fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    // Four decimal numbers only (no shorthand such as "10.1").
    (s.split('.').count() == 4)
        .then(|| s.parse().ok())
        .flatten()
}

/// A MAC address `aa:bb:cc:dd:ee:ff`: unicast and not all zero.
pub fn parse_mac(s: &str) -> Result<[u8; 6], &'static str> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err("is not six hex bytes aa:bb:cc:dd:ee:ff");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err("is not six hex bytes aa:bb:cc:dd:ee:ff");
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| "is not six hex bytes aa:bb:cc:dd:ee:ff")?;
    }
    if mac[0] & 1 != 0 {
        return Err("is a multicast address (the first byte must be even)");
    }
    if mac == [0; 6] {
        return Err("is all zero");
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The default MAC of the `i`-th interface: locally administered, unicast.
pub fn default_mac(i: usize) -> [u8; 6] {
    let n = u8::try_from(i + 1).unwrap_or(u8::MAX);
    [0x06, 0, 0, 0, 0, n]
}

/// The netmask of a prefix length (1 to 32).
pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    Ipv4Addr::from(bits)
}

/// Parses the `i`-th `--net` argument.
pub fn parse_net(i: usize, s: &str) -> Result<NetConfig, NetArgError> {
    let (mut tap, mut ip, mut gw, mut mac) = (None, None, None, None);
    for item in s.split(',') {
        let Some((k, v)) = item.split_once('=') else {
            return Err(NetArgError::Item(s.into(), item.into()));
        };
        let slot = match k {
            "tap" => &mut tap,
            "ip" => &mut ip,
            "gw" => &mut gw,
            "mac" => &mut mac,
            _ => return Err(NetArgError::UnknownKey(s.into(), k.into())),
        };
        if slot.replace(v).is_some() {
            return Err(NetArgError::Item(s.into(), item.into()));
        }
    }
    let tap = tap.ok_or_else(|| NetArgError::NoTap(s.into()))?;
    if crate::devices::virtio::net::tap::check_name(tap).is_err() {
        return Err(NetArgError::TapName(s.into(), tap.into()));
    }
    let ip = match ip {
        None => None,
        Some(v) => {
            let bad = || NetArgError::Ip(s.into(), v.into());
            let (a, p) = v.split_once('/').ok_or_else(bad)?;
            let addr = parse_ipv4(a).ok_or_else(bad)?;
            let prefix: u8 = p.parse().map_err(|_| bad())?;
            if !(1..=32).contains(&prefix)
                || addr.is_unspecified()
                || addr.is_multicast()
                || addr.is_broadcast()
            {
                return Err(bad());
            }
            Some((addr, prefix))
        }
    };
    let gw = match gw {
        None => None,
        Some(v) => {
            let bad = |why| NetArgError::Gw(s.into(), v.into(), why);
            let g = parse_ipv4(v).ok_or_else(|| bad("is not an IPv4 address"))?;
            let Some((addr, prefix)) = ip else {
                return Err(bad("needs ip=ADDR/PREFIX"));
            };
            let m = u32::from(netmask(prefix));
            if u32::from(g) & m != u32::from(addr) & m || g == addr {
                return Err(bad("is not another address in the subnet of ip="));
            }
            Some(g)
        }
    };
    let mac = match mac {
        None => default_mac(i),
        Some(v) => parse_mac(v).map_err(|why| NetArgError::Mac(s.into(), v.into(), why))?,
    };
    Ok(NetConfig {
        tap: tap.into(),
        mac,
        ip,
        gw,
    })
}

/// Parses every `--net` argument.
pub fn parse_nets(args: &[String]) -> Result<Vec<NetConfig>, NetArgError> {
    args.iter()
        .enumerate()
        .map(|(i, s)| parse_net(i, s))
        .collect()
}

/// The agent's word for `net`: `owvmm.net=MAC[,ADDR/PREFIX[,GW]]`.
pub fn net_word(net: &NetConfig) -> String {
    let mut w = format!("owvmm.net={}", format_mac(&net.mac));
    if let Some((a, p)) = net.ip {
        w.push_str(&format!(",{a}/{p}"));
        if let Some(g) = net.gw {
            w.push_str(&format!(",{g}"));
        }
    }
    w
}

/// `cmdline` with the virtio devices' options appended: the disks in the first slots,
/// then the network interfaces (the order [`crate::devices::virtio::slot`] numbers them).
pub fn with_devices(cmdline: &str, disks: &[DiskConfig], nets: &[NetConfig]) -> String {
    let mut words: Vec<String> = cmdline.split_whitespace().map(String::from).collect();
    words.extend(disk_cmdline(disks));
    for (i, n) in nets.iter().enumerate() {
        let Some((base, irq)) = crate::devices::virtio::slot(disks.len() + i) else {
            break;
        };
        words.push(crate::devices::virtio::cmdline_option(base, irq));
        words.push(net_word(n));
    }
    words.join(" ")
}

/// Everything `owvmm run` needs.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// What to boot (ignored on restore).
    pub boot: BootConfig,
    /// CPUs and memory (ignored on restore: the snapshot's are used).
    pub machine: MachineConfig,
    /// Control socket path.
    pub api_sock: Option<PathBuf>,
    /// Files to put into the guest.
    pub add: Vec<AddFile>,
    /// Commands the agent starts at boot.
    pub exec: Vec<String>,
    /// Disk images attached as virtio-blk, in device order.
    pub disks: Vec<DiskConfig>,
    /// Network interfaces attached as virtio-net, after the disks.
    pub nets: Vec<NetConfig>,
    /// Snapshot to resume instead of booting.
    pub restore: Option<PathBuf>,
    /// Seconds without an agent heartbeat, while running, that count as a hang (0: never).
    pub hang_timeout_s: u64,
    /// What to do after a crash.
    pub on_crash: crate::crash::OnCrash,
    /// Where to write the dead guest's memory and vCPU state when it crashes.
    pub crash_dump: Option<PathBuf>,
    /// Snapshot of a freshly booted guest of the same shape: the crash kernel's standby.
    pub standby: Option<PathBuf>,
    /// Without `standby`: what to prepare (or take from the cache) as the standby.
    pub standby_auto: Option<crate::standby::StandbySpec>,
}

/// A configuration refused before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--vcpus` out of range.
    #[error("--vcpus must be between 1 and {MAX_VCPUS}, not {0}")]
    Vcpus(u8),
    /// `--mem` too small or too large.
    #[error("--mem {got} MiB is too small: kernel and initramfs need at least {need} MiB")]
    MemTooSmall {
        /// Asked.
        got: u64,
        /// Needed.
        need: u64,
    },
    /// `--mem` over the limit.
    #[error("--mem {0} MiB is more than the {MAX_MEM_MIB} MiB owvmm supports")]
    MemTooLarge(u64),
    /// A file the configuration names cannot be read.
    #[error("{what} {path} cannot be read")]
    Unreadable {
        /// Which option.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel image is unusable.
    #[error("kernel image refused")]
    Kernel(#[source] BootError),
    /// An `--add` argument is malformed.
    #[error("--add {0:?}: expected HOST:GUEST with an absolute guest path")]
    AddSyntax(String),
    /// A `--disk` argument is malformed.
    #[error("--disk {0:?}: expected HOST_IMAGE:GUEST_DIR or HOST_IMAGE:GUEST_DIR:ro")]
    DiskSyntax(String),
    /// A `--disk` GUEST_DIR is refused.
    #[error("--disk {0:?}: GUEST_DIR {1}")]
    DiskGuestDir(String, &'static str),
    /// More disks than virtio-mmio slots.
    #[error("{0} --disk options: owvmm attaches at most {max}", max = crate::devices::virtio::MAX_DEVICES)]
    TooManyDisks(usize),
    /// More disks and network interfaces than virtio-mmio slots.
    #[error("{0} --disk and --net options: owvmm attaches at most {max} virtio devices", max = crate::devices::virtio::MAX_DEVICES)]
    TooManyDevices(usize),
    /// A `--net` argument is malformed.
    #[error(transparent)]
    Net(#[from] NetArgError),
    /// A `--net` tap cannot be used.
    #[error("--net refused")]
    Tap(#[source] crate::devices::virtio::net::TapError),
    /// Two `--net` on one tap.
    #[error("--net: tap {0} given twice")]
    TapTwice(String),
    /// `--net` with `--restore`: the snapshot has its own.
    #[error("--net cannot be used with --restore (a snapshot reattaches its own taps)")]
    NetWithRestore,
    /// An `--add` file where a root image's files are.
    #[error("--add {0}: {1} comes from the root image, read-only; put the file elsewhere (/opt, /etc, /tmp, ...)")]
    AddUnderRootImage(String, &'static str),
    /// Two disks to be mounted at the same guest directory.
    #[error("--disk: two disks for GUEST_DIR {0}")]
    DiskDirTwice(String),
    /// A disk image cannot be used.
    #[error("--disk {0} refused")]
    Disk(PathBuf, #[source] crate::devices::virtio::block::DiskError),
    /// `--disk` with `--restore`: the snapshot has its own.
    #[error("--disk cannot be used with --restore (a snapshot reattaches its own disks)")]
    DiskWithRestore,
    /// An `--exec` command is empty or has a newline.
    #[error("--exec {0:?}: a command must be one non-empty line")]
    Exec(String),
    /// The control socket cannot be used.
    #[error("--api-sock refused")]
    ApiSock(#[source] crate::api::server::ApiError),
    /// The snapshot cannot be used.
    #[error("--restore refused")]
    Restore(#[source] crate::snapshot::SnapshotError),
    /// The standby cannot be used.
    #[error("--standby refused")]
    Standby(#[source] crate::snapshot::SnapshotError),
    /// Microreboot needs a standby.
    #[error("--on-crash microreboot needs --standby DIR (a snapshot of a freshly booted guest with the same --mem and --vcpus)")]
    NoStandby,
}

/// Parses `HOST:GUEST`.
pub fn parse_add(s: &str) -> Result<AddFile, ConfigError> {
    let (host, guest) = s
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::AddSyntax(s.into()))?;
    if host.is_empty() || !guest.starts_with('/') || guest.ends_with('/') || guest.contains("/../")
    {
        return Err(ConfigError::AddSyntax(s.into()));
    }
    Ok(AddFile {
        host: host.into(),
        guest: guest.into(),
    })
}

fn file_size(what: &'static str, path: &Path) -> Result<u64, ConfigError> {
    let unreadable = |source| ConfigError::Unreadable {
        what,
        path: path.into(),
        source,
    };
    let f = std::fs::File::open(path).map_err(unreadable)?;
    let m = f.metadata().map_err(unreadable)?;
    if !m.is_file() {
        return Err(unreadable(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    Ok(m.len())
}

impl VmConfig {
    /// Checks the disks: count, distinct guest directories, and every image opened and
    /// locked the way the VM will (all at once, so one image named twice is refused as
    /// in use). The images are closed again; the VM opens them anew.
    fn check_disks(&self) -> Result<(), ConfigError> {
        if self.disks.is_empty() {
            return Ok(());
        }
        if self.restore.is_some() {
            return Err(ConfigError::DiskWithRestore);
        }
        if self.disks.len() > crate::devices::virtio::MAX_DEVICES {
            return Err(ConfigError::TooManyDisks(self.disks.len()));
        }
        let mut open = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            if self.disks[..i].iter().any(|o| o.guest_dir == d.guest_dir) {
                return Err(ConfigError::DiskDirTwice(d.guest_dir.clone()));
            }
            let disk = crate::devices::virtio::block::Disk::open(&d.host, d.read_only, &disk_id(i))
                .map_err(|e| ConfigError::Disk(d.host.clone(), e))?;
            open.push(disk);
        }
        Ok(())
    }

    /// Checks the network interfaces: count, distinct taps, each tap existing and free
    /// (opened and closed again, as the disks are; the VM opens it anew).
    fn check_nets(&self) -> Result<(), ConfigError> {
        if self.nets.is_empty() {
            return Ok(());
        }
        if self.restore.is_some() {
            return Err(ConfigError::NetWithRestore);
        }
        let n = self.disks.len() + self.nets.len();
        if n > crate::devices::virtio::MAX_DEVICES {
            return Err(ConfigError::TooManyDevices(n));
        }
        for (i, net) in self.nets.iter().enumerate() {
            if self.nets[..i].iter().any(|o| o.tap == net.tap) {
                return Err(ConfigError::TapTwice(net.tap.clone()));
            }
        }
        let mut open = Vec::new();
        for net in &self.nets {
            open.push(crate::devices::virtio::net::Tap::open(&net.tap).map_err(ConfigError::Tap)?);
        }
        Ok(())
    }

    /// Checks everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for cmd in &self.exec {
            if cmd.trim().is_empty() || cmd.contains('\n') {
                return Err(ConfigError::Exec(cmd.clone()));
            }
        }
        for a in &self.add {
            file_size("--add file", &a.host)?;
            if self.disks.iter().any(DiskConfig::is_root) {
                if let Some(d) = under_root_image(&a.guest) {
                    return Err(ConfigError::AddUnderRootImage(a.guest.clone(), d));
                }
            }
        }
        self.check_disks()?;
        self.check_nets()?;
        if self.on_crash == crate::crash::OnCrash::Microreboot
            && self.standby.is_none()
            && self.standby_auto.is_none()
        {
            return Err(ConfigError::NoStandby);
        }
        if let Some(dir) = self.standby.as_ref() {
            let (st, _) = crate::snapshot::read(dir).map_err(ConfigError::Standby)?;
            let (mem, vcpus) = match &self.restore {
                Some(r) => {
                    let (s, _) = crate::snapshot::read(r).map_err(ConfigError::Restore)?;
                    (s.machine.mem_mib, s.machine.vcpus)
                }
                None => (self.machine.mem_mib, self.machine.vcpus),
            };
            if (st.machine.mem_mib, st.machine.vcpus) != (mem, vcpus) {
                return Err(ConfigError::Standby(
                    crate::snapshot::SnapshotError::Inconsistent(format!(
                        "standby has {} MiB and {} vCPUs, the guest {mem} MiB and {vcpus}",
                        st.machine.mem_mib, st.machine.vcpus
                    )),
                ));
            }
        }
        if let Some(p) = &self.api_sock {
            crate::api::server::check_path(p).map_err(ConfigError::ApiSock)?;
        }
        if let Some(dir) = &self.restore {
            // Reading checks the snapshot's machine against the same limits as a boot's
            // (`MachineConfig::check`), and its sizes and counts against each other.
            crate::snapshot::read(dir).map_err(ConfigError::Restore)?;
            return Ok(());
        }
        let m = &self.machine;
        match m.check() {
            Ok(()) => {}
            Err(MachineError::Vcpus(n)) => return Err(ConfigError::Vcpus(n)),
            Err(MachineError::MemTooLarge(n)) => return Err(ConfigError::MemTooLarge(n)),
            // The kernel's minimum below says how much is needed.
            Err(MachineError::NoMemory) => {}
        }
        file_size("kernel", &self.boot.kernel)?;
        probe_kernel(&self.boot.kernel).map_err(ConfigError::Kernel)?;
        let ksize = kernel_footprint(&self.boot.kernel).map_err(ConfigError::Kernel)?;
        let isize = match &self.boot.initrd {
            Some(p) => file_size("initrd", p)?,
            None => 0,
        };
        let extra: u64 = self
            .add
            .iter()
            .map(|a| std::fs::metadata(&a.host).map(|m| m.len()).unwrap_or(0))
            .sum();
        let need = min_memory_for(ksize, isize + extra).div_ceil(1 << 20);
        if m.mem_mib < need {
            return Err(ConfigError::MemTooSmall {
                got: m.mem_mib,
                need,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_root_image() {
        assert_eq!(under_root_image("/usr"), Some("/usr"));
        assert_eq!(under_root_image("/usr/local/bin/x"), Some("/usr"));
        assert_eq!(under_root_image("/lib64/ld.so"), Some("/lib64"));
        assert_eq!(under_root_image("/libexec/x"), None);
        assert_eq!(under_root_image("/usrdata"), None);
        assert_eq!(under_root_image("/opt/usr/x"), None);
    }

    #[test]
    fn add_syntax() {
        let a = parse_add("/tmp/x:/opt/x").expect("ok");
        assert_eq!(a.guest, "/opt/x");
        assert!(parse_add("nocolon").is_err());
        assert!(parse_add("/tmp/x:relative").is_err());
        assert!(parse_add(":/x").is_err());
        assert!(parse_add("/tmp/x:/opt/").is_err());
    }

    fn base() -> VmConfig {
        VmConfig {
            boot: BootConfig {
                kernel: "/nonexistent/vmlinux".into(),
                initrd: None,
                cmdline: String::new(),
            },
            machine: MachineConfig {
                mem_mib: 128,
                vcpus: 1,
            },
            api_sock: None,
            add: vec![],
            exec: vec![],
            disks: vec![],
            nets: vec![],
            restore: None,
            hang_timeout_s: 0,
            on_crash: crate::crash::OnCrash::Exit,
            crash_dump: None,
            standby: None,
            standby_auto: None,
        }
    }

    #[test]
    fn refuses_bad_input_with_reason() {
        let mut c = base();
        c.machine.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(0))));
        let c = base();
        let e = c.validate().expect_err("missing kernel");
        assert!(e
            .to_string()
            .contains("kernel /nonexistent/vmlinux cannot be read"));
        let mut c = base();
        c.exec = vec!["".into()];
        assert!(matches!(c.validate(), Err(ConfigError::Exec(_))));
        let mut c = base();
        c.add = vec![parse_add("/nonexistent/f:/f").expect("syntax")];
        assert!(c
            .validate()
            .expect_err("missing add")
            .to_string()
            .contains("--add file"));
    }

    #[test]
    fn refuses_non_kernel_and_small_memory() {
        let dir = std::env::temp_dir().join(format!("owvmm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk");
        std::fs::write(&junk, b"#!/bin/sh\necho not a kernel\n").expect("write");
        let mut c = base();
        c.boot.kernel = junk;
        let e = c.validate().expect_err("junk kernel");
        assert!(matches!(e, ConfigError::Kernel(_)));

        let mut elf = vec![0u8; 4096];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[18] = 62;
        let k = dir.join("vmlinux");
        std::fs::write(&k, &elf).expect("write");
        let mut c = base();
        c.boot.kernel = k;
        c.machine.mem_mib = 8;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemTooSmall { got: 8, .. })
        ));
        c.machine.mem_mib = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemTooSmall { got: 0, .. })
        ));
        c.machine.mem_mib = 65537;
        assert!(matches!(c.validate(), Err(ConfigError::MemTooLarge(65537))));
        c.machine.mem_mib = 128;
        c.machine.vcpus = 65;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(65))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn disk_syntax() {
        let d = parse_disk("/img/a.raw:/data").expect("ok");
        assert_eq!(
            d,
            DiskConfig {
                host: "/img/a.raw".into(),
                guest_dir: "/data".into(),
                read_only: false
            }
        );
        let d = parse_disk("rel/a:b.raw:/mnt/x:ro").expect("colon in host");
        assert_eq!(d.host, PathBuf::from("rel/a:b.raw"));
        assert!(d.read_only);
        for bad in ["nocolon", ":/data", "/img:", "/img::ro"] {
            assert!(
                matches!(parse_disk(bad), Err(ConfigError::DiskSyntax(_))),
                "{bad}"
            );
        }
        for bad in [
            "/img:data",
            "/img:data:ro",
            "/img:/da ta",
            "/img:/a,b",
            "/img:/a/../b",
            "/img:/a\"x",
        ] {
            let e = parse_disk(bad).expect_err(bad);
            assert!(matches!(e, ConfigError::DiskGuestDir(..)), "{bad}: {e}");
        }
        let e = parse_disk("/img:data").expect_err("relative");
        assert_eq!(
            e.to_string(),
            "--disk \"/img:data\": GUEST_DIR not an absolute path"
        );
    }

    #[test]
    fn disks_on_the_command_line() {
        let disks = [
            parse_disk("/a:/data").expect("ok"),
            parse_disk("/b:/srv/ro:ro").expect("ok"),
        ];
        assert_eq!(
            with_disks("console=ttyS0  quiet", &disks),
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5 owvmm.disk=disk0:/data \
             virtio_mmio.device=4K@0xd0001000:6 owvmm.disk=disk1:/srv/ro:ro"
        );
        assert_eq!(with_disks("quiet", &[]), "quiet");
    }

    #[test]
    fn a_root_image_is_read_only_mounted_first_and_keeps_add_files_out_of_usr() {
        let e = parse_disk("/root.img:/").expect_err("rw root");
        assert!(e.to_string().contains("read-only"), "{e}");
        let disks = parse_disks(&["/d.img:/data".into(), "/root.img:/:ro".into()]).expect("ok");
        assert!(disks[0].is_root() && !disks[1].is_root(), "{disks:?}");
        assert_eq!(disks[0], DiskConfig::root("/root.img".into()));

        let dir = std::env::temp_dir().join(format!("owvmm-cfg-root-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (img, file) = (dir.join("root.img"), dir.join("f"));
        std::fs::write(&img, vec![0u8; 4096]).expect("image");
        std::fs::write(&file, b"x").expect("file");
        let mut c = base();
        c.disks = vec![DiskConfig::root(img)];
        for (guest, ok) in [
            ("/usr/bin/x", false),
            ("/lib64/x", false),
            ("/bin/sh", false),
            ("/usrx/a", true),
            ("/opt/db", true),
        ] {
            c.add = vec![parse_add(&format!("{}:{guest}", file.display())).expect("add")];
            // The kernel is missing: a path that passes goes on to that error.
            let r = c.validate();
            assert_eq!(
                !matches!(r, Err(ConfigError::AddUnderRootImage(..))),
                ok,
                "{guest}: {r:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_bad_disks_before_starting() {
        let dir = std::env::temp_dir().join(format!("owvmm-cfg-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let img = dir.join("a.raw");
        std::fs::write(&img, vec![0u8; 4096]).expect("image");
        let mut c = base();
        c.disks = vec![parse_disk("/nonexistent/a.raw:/data").expect("syntax")];
        let e = c.validate().expect_err("missing image");
        assert!(matches!(e, ConfigError::Disk(..)), "{e}");
        assert!(crate::error_chain(&e).contains("cannot be opened"), "{e}");
        // The same image twice: the second is in use.
        c.disks = vec![
            parse_disk(&format!("{}:/a", img.display())).expect("syntax"),
            parse_disk(&format!("{}:/b:ro", img.display())).expect("syntax"),
        ];
        let e = c.validate().expect_err("twice");
        assert!(
            crate::error_chain(&e).contains("in use by another process"),
            "{e}"
        );
        c.disks[1].guest_dir = "/a".into();
        assert!(matches!(c.validate(), Err(ConfigError::DiskDirTwice(_))));
        // Held by someone else (another owvmm): refused.
        let held = crate::devices::virtio::block::Disk::open(&img, false, "other").expect("lock");
        c.disks = vec![parse_disk(&format!("{}:/a:ro", img.display())).expect("syntax")];
        assert!(crate::error_chain(&c.validate().expect_err("locked")).contains("in use"));
        drop(held);
        c.disks = vec![c.disks[0].clone(); 8];
        assert!(matches!(c.validate(), Err(ConfigError::TooManyDisks(8))));
        c.disks.truncate(1);
        c.restore = Some(dir.clone());
        assert!(matches!(c.validate(), Err(ConfigError::DiskWithRestore)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn net_syntax() {
        let n = parse_net(0, "tap=owt0,ip=169.254.77.2/24,gw=169.254.77.1").expect("ok");
        assert_eq!(
            n,
            NetConfig {
                tap: "owt0".into(),
                mac: [6, 0, 0, 0, 0, 1],
                ip: Some((Ipv4Addr::new(169, 254, 77, 2), 24)),
                gw: Some(Ipv4Addr::new(169, 254, 77, 1)),
            }
        );
        let n = parse_net(2, "mac=02:AB:cd:00:00:09,tap=tap1").expect("ok");
        assert_eq!((n.mac, n.ip, n.gw), ([2, 0xab, 0xcd, 0, 0, 9], None, None));
        assert_eq!(parse_net(2, "tap=t").expect("ok").mac, [6, 0, 0, 0, 0, 3]);
        let bad = [
            ("ip=10.0.0.1/8", "tap=NAME is missing"),
            ("", "is not one key=value"),
            ("tap=t,,ip=1.2.3.4/8", "is not one key=value"),
            ("tap=t,tap=u", "is not one key=value"),
            ("tap=t,dns=1.1.1.1", "unknown key \"dns\""),
            ("tap=", "not a valid interface name"),
            ("tap=a/b", "not a valid interface name"),
            ("tap=waytoolongname01", "not a valid interface name"),
            ("tap=t,ip=10.0.0.1", "is not a unicast IPv4"),
            ("tap=t,ip=10.0.0.1/33", "is not a unicast IPv4"),
            ("tap=t,ip=10.0.0.1/0", "is not a unicast IPv4"),
            ("tap=t,ip=10.0.0/24", "is not a unicast IPv4"),
            ("tap=t,ip=10.0.0.256/24", "is not a unicast IPv4"),
            ("tap=t,ip=224.0.0.1/24", "is not a unicast IPv4"),
            ("tap=t,ip=0.0.0.0/24", "is not a unicast IPv4"),
            ("tap=t,gw=10.0.0.1", "needs ip="),
            (
                "tap=t,ip=10.0.0.2/24,gw=10.0.1.1",
                "not another address in the subnet",
            ),
            (
                "tap=t,ip=10.0.0.2/24,gw=10.0.0.2",
                "not another address in the subnet",
            ),
            ("tap=t,ip=10.0.0.2/24,gw=x", "is not an IPv4 address"),
            ("tap=t,mac=01:00:00:00:00:01", "multicast"),
            ("tap=t,mac=ff:ff:ff:ff:ff:ff", "multicast"),
            ("tap=t,mac=00:00:00:00:00:00", "all zero"),
            ("tap=t,mac=06:00:00:00:00", "six hex bytes"),
            ("tap=t,mac=06:00:00:00:00:0g", "six hex bytes"),
            ("tap=t,mac=6:0:0:0:0:1", "six hex bytes"),
        ];
        for (arg, want) in bad {
            let e = parse_net(0, arg).expect_err(arg);
            assert!(e.to_string().contains(want), "{arg}: {e}");
            assert!(e.to_string().starts_with(&format!("--net {arg:?}")), "{e}");
        }
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(1), Ipv4Addr::new(128, 0, 0, 0));
    }

    #[test]
    fn nets_follow_the_disks_on_the_command_line() {
        let disks = [parse_disk("/a:/data").expect("ok")];
        let nets = [
            parse_net(0, "tap=owt0,ip=169.254.77.2/24,gw=169.254.77.1").expect("ok"),
            parse_net(1, "tap=owt1").expect("ok"),
        ];
        assert_eq!(
            with_devices("quiet", &disks, &nets),
            "quiet virtio_mmio.device=4K@0xd0000000:5 owvmm.disk=disk0:/data \
             virtio_mmio.device=4K@0xd0001000:6 \
             owvmm.net=06:00:00:00:00:01,169.254.77.2/24,169.254.77.1 \
             virtio_mmio.device=4K@0xd0002000:7 owvmm.net=06:00:00:00:00:02"
        );
        assert_eq!(with_devices("quiet", &[], &[]), "quiet");
    }

    #[test]
    fn refuses_bad_nets_before_starting() {
        let mut c = base();
        c.nets = vec![parse_net(0, "tap=owvmmnosuch0").expect("syntax")];
        let e = c.validate().expect_err("missing tap");
        assert_eq!(
            crate::error_chain(&e),
            "--net refused: tap owvmmnosuch0 does not exist (create it first: ip tuntap add dev owvmmnosuch0 mode tap)"
        );
        c.nets = vec![
            parse_net(0, "tap=lo").expect("syntax"),
            parse_net(1, "tap=lo").expect("syntax"),
        ];
        assert!(matches!(c.validate(), Err(ConfigError::TapTwice(_))));
        c.nets.truncate(1);
        assert_eq!(
            crate::error_chain(&c.validate().expect_err("lo")),
            "--net refused: lo is not a tap device"
        );
        c.disks = vec![parse_disk("/a:/data").expect("syntax"); 7];
        assert!(matches!(
            c.check_nets(),
            Err(ConfigError::TooManyDevices(8))
        ));
        c.disks.clear();
        c.restore = Some("/nonexistent".into());
        assert!(matches!(c.validate(), Err(ConfigError::NetWithRestore)));
    }

    #[test]
    fn memory_sizes_never_wrap() {
        let m = |mem_mib, vcpus| MachineConfig { mem_mib, vcpus };
        assert_eq!(m(1, 1).mem_bytes(), Ok(1 << 20));
        assert_eq!(m(MAX_MEM_MIB, 1).mem_bytes(), Ok(64 << 30));
        assert_eq!(
            m(MAX_MEM_MIB + 1, 1).mem_bytes(),
            Err(MachineError::MemTooLarge(MAX_MEM_MIB + 1))
        );
        // 2^44 MiB << 20 is 2^64: it would wrap to 0.
        assert_eq!(
            m(1 << 44, 1).mem_bytes(),
            Err(MachineError::MemTooLarge(1 << 44))
        );
        assert_eq!(
            m(u64::MAX, 1).mem_bytes(),
            Err(MachineError::MemTooLarge(u64::MAX))
        );
        assert_eq!(m(128, 1).check(), Ok(()));
        assert_eq!(m(128, MAX_VCPUS).check(), Ok(()));
        assert_eq!(m(128, 0).check(), Err(MachineError::Vcpus(0)));
        assert_eq!(m(128, 65).check(), Err(MachineError::Vcpus(65)));
        assert_eq!(m(0, 1).check(), Err(MachineError::NoMemory));
    }
}
