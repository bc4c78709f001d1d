//! Snapshot files: `state.json` (vCPUs, interrupt controllers, clock, devices, config),
//! `state.sha256` (its checksum) and `memory.bin` (guest RAM, regions back to back).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, WriteVolatile};

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES};

use crate::config::{MachineConfig, MachineError};
use crate::devices::serial::SerialSnapshot;
use crate::vstate::vcpu::{VcpuState, MAX_XSAVE_BYTES};
use crate::vstate::vm::VmState;

/// Format name written in every snapshot.
pub const FORMAT: &str = "owvmm-snapshot";
/// Current format version (2: vCPU states carry their CPUID and the whole XSAVE area).
pub const VERSION: u32 = 2;
/// Memory image file name.
pub const MEMORY_FILE: &str = "memory.bin";
/// State file name.
pub const STATE_FILE: &str = "state.json";
/// Checksum file name.
pub const CHECKSUM_FILE: &str = "state.sha256";
/// Largest state file read (64 vCPUs take a few MiB).
pub const MAX_STATE_BYTES: u64 = 64 << 20;
/// Longest kernel path or command line a snapshot may name.
pub const MAX_TEXT_BYTES: usize = 64 << 10;
/// Bytes a serial port's receive FIFO holds.
const SERIAL_FIFO_BYTES: usize = 64;

/// Errors while writing or reading snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be written.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// Guest memory could not be written out.
    #[error("cannot write guest memory to {0}")]
    WriteMemory(PathBuf, #[source] vm_memory::VolatileMemoryError),
    /// A file could not be read.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The state does not match its checksum.
    #[error("{0} is corrupt: its checksum does not match state.sha256")]
    Checksum(PathBuf),
    /// The state is not valid JSON of the expected shape.
    #[error("{0} is not a valid owvmm snapshot state")]
    Parse(PathBuf, #[source] serde_json::Error),
    /// Not this format or version.
    #[error("{path}: format {found:?} version {version} is not {FORMAT} version {VERSION}")]
    Format {
        /// State file.
        path: PathBuf,
        /// Format name found.
        found: String,
        /// Version found.
        version: u32,
    },
    /// The memory image is not the size the state says.
    #[error("{path} has {actual} bytes, the snapshot needs {expected} (truncated or wrong file)")]
    MemorySize {
        /// Memory file.
        path: PathBuf,
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
    /// The state is internally inconsistent.
    #[error("snapshot state is inconsistent: {0}")]
    Inconsistent(String),
    /// A file is larger than any snapshot's.
    #[error("{path} has {size} bytes, more than the {max} a snapshot's can have")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The memory image is not a regular file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// The snapshot's machine is not one owvmm runs.
    #[error("the snapshot's machine is refused")]
    Machine(#[source] MachineError),
    /// The memory size in bytes does not match the size in MiB.
    #[error("memory_bytes {memory_bytes} is not {mem_mib} MiB")]
    MemoryBytes {
        /// Bytes the state gives.
        memory_bytes: u64,
        /// MiB the machine has.
        mem_mib: u64,
    },
    /// A list has the wrong number of entries.
    #[error("{found} {what}, expected {expected}")]
    Count {
        /// What the list holds.
        what: &'static str,
        /// Entries found.
        found: usize,
        /// Entries expected.
        expected: usize,
    },
    /// A list or field is longer than allowed.
    #[error("{what}: {found} is more than the {max} allowed")]
    TooLong {
        /// What it is.
        what: &'static str,
        /// Length found.
        found: usize,
        /// Most allowed.
        max: usize,
    },
    /// vCPU state without CPUID.
    #[error("vCPU {0} has no CPUID")]
    NoCpuid(usize),
    /// The interrupt controllers are not the PIC master, PIC slave and IO APIC.
    #[error("irqchip {index} has chip id {chip_id}, expected {index}")]
    IrqchipId {
        /// Position in the list.
        index: usize,
        /// Id found.
        chip_id: u32,
    },
}

/// How the guest was configured, kept so a restore recreates the same machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MachineInfo {
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPU count.
    pub vcpus: u8,
    /// Kernel the guest booted (for symbol lookup).
    pub kernel: String,
    /// Command line it booted with.
    pub cmdline: String,
}

impl MachineInfo {
    /// The shape, to check as a boot's is.
    pub fn shape(&self) -> MachineConfig {
        MachineConfig {
            mem_mib: self.mem_mib,
            vcpus: self.vcpus,
        }
    }

    /// Guest RAM in bytes (refused, never wrapped, when too large).
    pub fn mem_bytes(&self) -> Result<u64, MachineError> {
        self.shape().mem_bytes()
    }
}

/// The whole non-memory state.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// When it was taken (Unix seconds).
    pub created_unix: u64,
    /// The machine.
    pub machine: MachineInfo,
    /// Bytes of memory.bin.
    pub memory_bytes: u64,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Each vCPU.
    pub vcpus: Vec<VcpuState>,
    /// COM1 (console) and COM2 (agent).
    pub serial: Vec<SerialSnapshot>,
    /// Whether the agent had said ready.
    pub agent_ready: bool,
    /// The virtio devices, in slot order: the disks, then the network interfaces, each
    /// reopened at restore (the same image files and taps), and their transports' state.
    #[serde(default)]
    pub devices: DevicesState,
}

/// The virtio devices of a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// `--disk`s (and the `--with` root image), in slot order.
    pub disks: Vec<crate::config::DiskConfig>,
    /// `--net`s, after the disks.
    pub nets: Vec<crate::config::NetConfig>,
    /// One per device, disks first.
    pub transports: Vec<crate::devices::virtio::mmio::TransportState>,
}

fn atomic_write(path: &Path, data: &[u8]) -> Result<(), SnapshotError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| SnapshotError::Write(tmp.clone(), e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| SnapshotError::Write(tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| SnapshotError::Write(path.into(), e))
}

/// Writes the snapshot into `dir` (created if missing). Memory first, state last, so a
/// directory with a valid state always has its memory.
pub fn write(
    dir: &Path,
    state: &SnapshotState,
    mem: &GuestMemoryMmap,
) -> Result<u64, SnapshotError> {
    std::fs::create_dir_all(dir).map_err(|e| SnapshotError::Write(dir.into(), e))?;
    let mem_path = dir.join(MEMORY_FILE);
    let tmp = mem_path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| SnapshotError::Write(tmp.clone(), e))?;
    let mut total = 0u64;
    for region in mem.iter() {
        let len = usize::try_from(region.len()).unwrap_or(usize::MAX);
        let slice = region
            .get_slice(vm_memory::MemoryRegionAddress(0), len)
            .map_err(|e| SnapshotError::Inconsistent(format!("memory region: {e}")))?;
        f.write_all_volatile(&slice)
            .map_err(|e| SnapshotError::WriteMemory(tmp.clone(), e))?;
        total += region.len();
    }
    f.sync_all()
        .map_err(|e| SnapshotError::Write(tmp.clone(), e))?;
    std::fs::rename(&tmp, &mem_path).map_err(|e| SnapshotError::Write(mem_path.clone(), e))?;

    let json =
        serde_json::to_vec(state).map_err(|e| SnapshotError::Parse(dir.join(STATE_FILE), e))?;
    let sum = hex(&Sha256::digest(&json));
    atomic_write(
        &dir.join(CHECKSUM_FILE),
        format!("{sum}  {STATE_FILE}\n").as_bytes(),
    )?;
    atomic_write(&dir.join(STATE_FILE), &json)?;
    Ok(total + json.len() as u64)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Just the fields that say what a state file is (the rest is skipped unread).
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    format: String,
    #[serde(default)]
    version: u64,
}

/// Reads `path`, refusing one larger than `max` bytes.
fn read_limited(path: &Path, max: u64) -> Result<Vec<u8>, SnapshotError> {
    let read = |e| SnapshotError::Read(path.into(), e);
    let f = File::open(path).map_err(read)?;
    let size = f.metadata().map_err(read)?.len();
    if size > max {
        return Err(SnapshotError::FileTooLarge {
            path: path.into(),
            size,
            max,
        });
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    // The file may grow while read: never read past the limit.
    f.take(max.saturating_add(1))
        .read_to_end(&mut data)
        .map_err(read)?;
    if data.len() as u64 > max {
        return Err(SnapshotError::FileTooLarge {
            path: path.into(),
            size: data.len() as u64,
            max,
        });
    }
    Ok(data)
}

/// Reads and checks a snapshot's state and opens its memory image: format and version,
/// checksum, the machine against the limits a boot has, every size and count against the
/// others, the memory image's size.
pub fn read(dir: &Path) -> Result<(SnapshotState, File), SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let sum_path = dir.join(CHECKSUM_FILE);
    let json = read_limited(&state_path, MAX_STATE_BYTES)?;
    let sum = read_limited(&sum_path, 4096)?;
    let sum = String::from_utf8_lossy(&sum);
    let want = sum.split_whitespace().next().unwrap_or("");
    if hex(&Sha256::digest(&json)) != want {
        return Err(SnapshotError::Checksum(state_path));
    }
    let head: Head =
        serde_json::from_slice(&json).map_err(|e| SnapshotError::Parse(state_path.clone(), e))?;
    if head.format != FORMAT || head.version != u64::from(VERSION) {
        return Err(SnapshotError::Format {
            path: state_path,
            found: head.format,
            version: u32::try_from(head.version).unwrap_or(u32::MAX),
        });
    }
    let state: SnapshotState =
        serde_json::from_slice(&json).map_err(|e| SnapshotError::Parse(state_path.clone(), e))?;
    validate(&state)?;
    let mem_path = dir.join(MEMORY_FILE);
    let f = File::open(&mem_path).map_err(|e| SnapshotError::Read(mem_path.clone(), e))?;
    let meta = f
        .metadata()
        .map_err(|e| SnapshotError::Read(mem_path.clone(), e))?;
    if !meta.is_file() {
        return Err(SnapshotError::NotAFile(mem_path));
    }
    if meta.len() != state.memory_bytes {
        return Err(SnapshotError::MemorySize {
            path: mem_path,
            expected: state.memory_bytes,
            actual: meta.len(),
        });
    }
    Ok((state, f))
}

fn at_most(what: &'static str, found: usize, max: usize) -> Result<(), SnapshotError> {
    if found > max {
        return Err(SnapshotError::TooLong { what, found, max });
    }
    Ok(())
}

fn count(what: &'static str, found: usize, expected: usize) -> Result<(), SnapshotError> {
    if found != expected {
        return Err(SnapshotError::Count {
            what,
            found,
            expected,
        });
    }
    Ok(())
}

/// Checks a state that parsed: the machine as a boot's is checked, and every size and
/// count against the others and against what KVM takes.
pub fn validate(s: &SnapshotState) -> Result<(), SnapshotError> {
    let m = &s.machine;
    m.shape().check().map_err(SnapshotError::Machine)?;
    let bytes = m.mem_bytes().map_err(SnapshotError::Machine)?;
    if s.memory_bytes != bytes {
        return Err(SnapshotError::MemoryBytes {
            memory_bytes: s.memory_bytes,
            mem_mib: m.mem_mib,
        });
    }
    at_most("kernel path bytes", m.kernel.len(), MAX_TEXT_BYTES)?;
    at_most("command line bytes", m.cmdline.len(), MAX_TEXT_BYTES)?;
    count("vCPU states", s.vcpus.len(), usize::from(m.vcpus))?;
    for (i, v) in s.vcpus.iter().enumerate() {
        if v.cpuid.is_empty() {
            return Err(SnapshotError::NoCpuid(i));
        }
        at_most("CPUID entries", v.cpuid.len(), KVM_MAX_CPUID_ENTRIES)?;
        at_most("MSRs", v.msrs.len(), KVM_MAX_MSR_ENTRIES)?;
        at_most("XSAVE bytes", v.xsave_bytes(), MAX_XSAVE_BYTES)?;
    }
    count("serial ports", s.serial.len(), 2)?;
    for p in &s.serial {
        at_most(
            "bytes in a serial port's FIFO",
            p.in_buffer.len(),
            SERIAL_FIFO_BYTES,
        )?;
    }
    let d = &s.devices;
    at_most(
        "virtio devices",
        d.disks.len() + d.nets.len(),
        crate::devices::virtio::MAX_DEVICES,
    )?;
    count(
        "virtio device states",
        d.transports.len(),
        d.disks.len() + d.nets.len(),
    )?;
    for t in &d.transports {
        at_most("virtio queues", t.queues.len(), 2)?;
    }
    for disk in &d.disks {
        at_most(
            "disk path bytes",
            disk.host.as_os_str().len() + disk.guest_dir.len(),
            MAX_TEXT_BYTES,
        )?;
    }
    count("irqchips", s.vm.irqchips.len(), 3)?;
    for (index, chip) in s.vm.irqchips.iter().enumerate() {
        if usize::try_from(chip.chip_id).ok() != Some(index) {
            return Err(SnapshotError::IrqchipId {
                index,
                chip_id: chip.chip_id,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_cpuid_entry2, kvm_irqchip, kvm_msr_entry};

    fn vcpu() -> VcpuState {
        VcpuState {
            cpuid: vec![kvm_cpuid_entry2 {
                function: 1,
                ..Default::default()
            }],
            mp_state: Default::default(),
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xsave_extra: Vec::new(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: Vec::new(),
            events: Default::default(),
        }
    }

    fn serial() -> SerialSnapshot {
        SerialSnapshot {
            baud_divisor: [1, 0],
            interrupt_enable: 0,
            interrupt_identification: 1,
            line_control: 3,
            line_status: 0x60,
            modem_control: 8,
            modem_status: 0xb0,
            scratch: 0,
            in_buffer: Vec::new(),
        }
    }

    /// A valid state of a 1 MiB guest with `vcpus` vCPUs.
    fn state(vcpus: u8) -> SnapshotState {
        SnapshotState {
            format: FORMAT.into(),
            version: VERSION,
            created_unix: 0,
            machine: MachineInfo {
                mem_mib: 1,
                vcpus,
                kernel: "/k/vmlinux".into(),
                cmdline: "console=ttyS0".into(),
            },
            memory_bytes: 1 << 20,
            vm: VmState {
                irqchips: (0..3)
                    .map(|chip_id| kvm_irqchip {
                        chip_id,
                        ..Default::default()
                    })
                    .collect(),
                pit: Default::default(),
                clock: Default::default(),
            },
            vcpus: (0..vcpus).map(|_| vcpu()).collect(),
            serial: vec![serial(), serial()],
            agent_ready: true,
            devices: DevicesState::default(),
        }
    }

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("owvmm-snap-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        Dir(d)
    }

    /// Writes a snapshot of `st` with 1 MiB of guest memory.
    fn written(name: &str, st: &SnapshotState) -> Dir {
        let d = scratch(name);
        let mem = crate::memory::anonymous(1 << 20).expect("memory");
        write(&d.0, st, &mem).expect("write");
        d
    }

    /// Replaces the state file with `json` and a checksum that matches it (as a hostile
    /// snapshot would have).
    fn put_state(d: &Dir, json: &[u8]) {
        std::fs::write(d.0.join(STATE_FILE), json).expect("state");
        let sum = hex(&Sha256::digest(json));
        std::fs::write(d.0.join(CHECKSUM_FILE), format!("{sum}  {STATE_FILE}\n")).expect("sum");
    }

    fn put(d: &Dir, st: &SnapshotState) {
        put_state(d, &serde_json::to_vec(st).expect("json"));
    }

    /// `read` of a snapshot whose state is `st` (written as is) over 1 MiB of memory.
    fn read_state(name: &str, st: &SnapshotState) -> Result<(), SnapshotError> {
        let d = written(name, &state(1));
        put(&d, st);
        read(&d.0).map(|_| ())
    }

    #[test]
    fn a_written_snapshot_reads_back() {
        let mut st = state(2);
        st.vcpus[1].xsave_extra = vec![7; 100];
        st.vcpus[1].msrs = vec![kvm_msr_entry {
            index: 0x10,
            data: 42,
            ..Default::default()
        }];
        st.vcpus[1].xsave.region[3] = 0xdead;
        let d = written("ok", &st);
        let (back, f) = read(&d.0).expect("read");
        assert_eq!(f.metadata().expect("meta").len(), 1 << 20);
        assert_eq!(back.machine, st.machine);
        assert_eq!(back.vcpus.len(), 2);
        assert_eq!(back.vcpus[1].xsave_extra, vec![7; 100]);
        assert_eq!(back.vcpus[1].xsave.region[3], 0xdead);
        assert_eq!(back.vcpus[1].cpuid, st.vcpus[1].cpuid);
        assert_eq!(back.vcpus[1].msrs[0].data, 42);
    }

    #[test]
    fn another_format_or_version_is_refused() {
        let mut st = state(1);
        st.version = 1;
        let e = read_state("v1", &st).expect_err("old version");
        assert!(matches!(e, SnapshotError::Format { version: 1, .. }), "{e}");
        let mut st = state(1);
        st.format = "qemu".into();
        assert!(matches!(
            read_state("fmt", &st),
            Err(SnapshotError::Format { .. })
        ));
        // Not even an object, and a version that is no number.
        let d = written("junk", &state(1));
        put_state(&d, b"[1,2,3]");
        assert!(matches!(read(&d.0), Err(SnapshotError::Parse(..))));
        put_state(&d, br#"{"format":"owvmm-snapshot","version":"2"}"#);
        assert!(matches!(read(&d.0), Err(SnapshotError::Parse(..))));
        put_state(&d, br#"{"format":"owvmm-snapshot","version":99999999999}"#);
        assert!(matches!(
            read(&d.0),
            Err(SnapshotError::Format {
                version: u32::MAX,
                ..
            })
        ));
    }

    #[test]
    fn a_bad_checksum_is_refused() {
        let d = written("sum", &state(1));
        let mut json = std::fs::read(d.0.join(STATE_FILE)).expect("state");
        json.push(b' ');
        std::fs::write(d.0.join(STATE_FILE), json).expect("state");
        assert!(matches!(read(&d.0), Err(SnapshotError::Checksum(_))));
    }

    #[test]
    fn mismatched_memory_sizes_are_refused() {
        let mut st = state(1);
        st.memory_bytes = 2 << 20;
        assert!(matches!(
            read_state("bytes", &st),
            Err(SnapshotError::MemoryBytes {
                memory_bytes: 0x20_0000,
                mem_mib: 1
            })
        ));
        let mut st = state(1);
        st.machine.mem_mib = 0;
        st.memory_bytes = 0;
        assert!(matches!(
            read_state("nomem", &st),
            Err(SnapshotError::Machine(MachineError::NoMemory))
        ));
        let mut st = state(1);
        st.machine.mem_mib = 65537;
        st.memory_bytes = 65537 << 20;
        assert!(matches!(
            read_state("huge", &st),
            Err(SnapshotError::Machine(MachineError::MemTooLarge(65537)))
        ));
    }

    #[test]
    fn memory_sizes_that_wrap_are_refused() {
        // 2^44 MiB is 2^64 bytes: `mem_mib << 20` wraps to 0, which an empty memory file
        // matches.
        let mut st = state(1);
        st.machine.mem_mib = 1 << 44;
        st.memory_bytes = 0;
        let d = written("wrap", &state(1));
        put(&d, &st);
        std::fs::write(d.0.join(MEMORY_FILE), b"").expect("empty memory");
        let e = read(&d.0).map(|_| ()).expect_err("wrapping size");
        assert!(
            matches!(
                e,
                SnapshotError::Machine(MachineError::MemTooLarge(0x1000_0000_0000))
            ),
            "{e}"
        );
        // Off by one bit: 2^44 + 1 MiB wraps to 1 MiB, the size of the real file.
        st.machine.mem_mib = (1 << 44) + 1;
        st.memory_bytes = 1 << 20;
        assert!(matches!(
            read_state("wrap1", &st),
            Err(SnapshotError::Machine(MachineError::MemTooLarge(_)))
        ));
    }

    #[test]
    fn vcpu_counts_are_checked() {
        let mut st = state(65);
        assert!(matches!(
            read_state("65", &st),
            Err(SnapshotError::Machine(MachineError::Vcpus(65)))
        ));
        st = state(0);
        assert!(matches!(
            read_state("0", &st),
            Err(SnapshotError::Machine(MachineError::Vcpus(0)))
        ));
        st = state(2);
        st.vcpus.pop();
        assert!(matches!(
            read_state("fewer", &st),
            Err(SnapshotError::Count {
                what: "vCPU states",
                found: 1,
                expected: 2
            })
        ));
        st = state(2);
        st.vcpus.push(vcpu());
        assert!(matches!(
            read_state("more", &st),
            Err(SnapshotError::Count { found: 3, .. })
        ));
        assert!(validate(&state(64)).is_ok());
    }

    #[test]
    fn oversized_lists_are_refused() {
        let mut st = state(1);
        st.vcpus[0].cpuid.clear();
        assert!(matches!(
            read_state("nocpuid", &st),
            Err(SnapshotError::NoCpuid(0))
        ));
        let mut st = state(1);
        st.vcpus[0].cpuid = vec![Default::default(); KVM_MAX_CPUID_ENTRIES + 1];
        assert!(matches!(
            validate(&st),
            Err(SnapshotError::TooLong {
                what: "CPUID entries",
                ..
            })
        ));
        let mut st = state(1);
        st.vcpus[0].msrs = vec![Default::default(); KVM_MAX_MSR_ENTRIES + 1];
        assert!(matches!(
            validate(&st),
            Err(SnapshotError::TooLong { what: "MSRs", .. })
        ));
        let mut st = state(1);
        st.vcpus[0].xsave_extra = vec![0; MAX_XSAVE_BYTES / 4];
        assert!(matches!(
            validate(&st),
            Err(SnapshotError::TooLong {
                what: "XSAVE bytes",
                ..
            })
        ));
        let mut st = state(1);
        st.serial[1].in_buffer = vec![b'x'; 65];
        assert!(matches!(validate(&st), Err(SnapshotError::TooLong { .. })));
        let mut st = state(1);
        st.serial.pop();
        assert!(matches!(validate(&st), Err(SnapshotError::Count { .. })));
        let mut st = state(1);
        st.vm.irqchips[2].chip_id = 0;
        assert!(matches!(
            validate(&st),
            Err(SnapshotError::IrqchipId {
                index: 2,
                chip_id: 0
            })
        ));
        let mut st = state(1);
        st.vm.irqchips.pop();
        assert!(matches!(validate(&st), Err(SnapshotError::Count { .. })));
        let mut st = state(1);
        st.machine.cmdline = "x".repeat(MAX_TEXT_BYTES + 1);
        assert!(matches!(validate(&st), Err(SnapshotError::TooLong { .. })));
    }

    #[test]
    fn a_truncated_or_missing_memory_file_is_refused() {
        let d = written("trunc", &state(1));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.0.join(MEMORY_FILE))
            .expect("open");
        f.set_len((1 << 20) - 4096).expect("truncate");
        let e = read(&d.0).map(|_| ()).expect_err("truncated");
        assert!(matches!(
            e,
            SnapshotError::MemorySize {
                expected: 0x10_0000,
                actual: 0xf_f000,
                ..
            }
        ));
        assert!(e.to_string().contains("truncated"));
        std::fs::remove_file(d.0.join(MEMORY_FILE)).expect("rm");
        std::fs::create_dir(d.0.join(MEMORY_FILE)).expect("dir");
        assert!(read(&d.0).is_err());
        std::fs::remove_dir(d.0.join(MEMORY_FILE)).expect("rmdir");
        assert!(matches!(read(&d.0), Err(SnapshotError::Read(..))));
    }

    #[test]
    fn a_huge_state_file_is_not_read() {
        let d = written("big", &state(1));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.0.join(STATE_FILE))
            .expect("open");
        // Sparse: no disk space used.
        f.set_len(MAX_STATE_BYTES + 1).expect("grow");
        assert!(matches!(
            read(&d.0),
            Err(SnapshotError::FileTooLarge { .. })
        ));
    }
}
