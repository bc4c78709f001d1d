//! Snapshot files: `state.json` (vCPUs, interrupt controllers, clock, devices, config),
//! `state.sha256` (its checksum) and `memory.bin` (guest RAM, regions back to back).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, WriteVolatile};

use crate::devices::serial::SerialSnapshot;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

/// Format name written in every snapshot.
pub const FORMAT: &str = "owvmm-snapshot";
/// Current format version.
pub const VERSION: u32 = 1;
/// Memory image file name.
pub const MEMORY_FILE: &str = "memory.bin";
/// State file name.
pub const STATE_FILE: &str = "state.json";
/// Checksum file name.
pub const CHECKSUM_FILE: &str = "state.sha256";

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

/// Reads and checks a snapshot's state and opens its memory image.
pub fn read(dir: &Path) -> Result<(SnapshotState, File), SnapshotError> {
    let state_path = dir.join(STATE_FILE);
    let sum_path = dir.join(CHECKSUM_FILE);
    let json =
        std::fs::read(&state_path).map_err(|e| SnapshotError::Read(state_path.clone(), e))?;
    let sum =
        std::fs::read_to_string(&sum_path).map_err(|e| SnapshotError::Read(sum_path.clone(), e))?;
    let want = sum.split_whitespace().next().unwrap_or("");
    if hex(&Sha256::digest(&json)) != want {
        return Err(SnapshotError::Checksum(state_path));
    }
    let head: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| SnapshotError::Parse(state_path.clone(), e))?;
    let found = head["format"].as_str().unwrap_or("").to_string();
    let version = u32::try_from(head["version"].as_u64().unwrap_or(0)).unwrap_or(0);
    if found != FORMAT || version != VERSION {
        return Err(SnapshotError::Format {
            path: state_path,
            found,
            version,
        });
    }
    let state: SnapshotState =
        serde_json::from_value(head).map_err(|e| SnapshotError::Parse(state_path.clone(), e))?;
    validate(&state)?;
    let mem_path = dir.join(MEMORY_FILE);
    let f = File::open(&mem_path).map_err(|e| SnapshotError::Read(mem_path.clone(), e))?;
    let actual = f
        .metadata()
        .map_err(|e| SnapshotError::Read(mem_path.clone(), e))?
        .len();
    if actual != state.memory_bytes {
        return Err(SnapshotError::MemorySize {
            path: mem_path,
            expected: state.memory_bytes,
            actual,
        });
    }
    Ok((state, f))
}

fn validate(s: &SnapshotState) -> Result<(), SnapshotError> {
    let bad = |m: String| Err(SnapshotError::Inconsistent(m));
    if s.memory_bytes != s.machine.mem_mib << 20 {
        return bad(format!(
            "memory_bytes {} is not {} MiB",
            s.memory_bytes, s.machine.mem_mib
        ));
    }
    if s.vcpus.len() != usize::from(s.machine.vcpus) || s.vcpus.is_empty() {
        return bad(format!(
            "{} vCPU states for {} vCPUs",
            s.vcpus.len(),
            s.machine.vcpus
        ));
    }
    if s.serial.len() != 2 {
        return bad(format!("{} serial ports, expected 2", s.serial.len()));
    }
    if s.vm.irqchips.len() != 3 {
        return bad(format!("{} irqchips, expected 3", s.vm.irqchips.len()));
    }
    Ok(())
}
