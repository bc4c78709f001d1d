//! The user's disks: `owvmm.disk=ID:DIR[:ro]` words of the kernel command line, one per
//! `--disk` of `owvmm run`. The VMM names each virtio-blk device by its serial (`ID`,
//! `/sys/block/vdX/serial`); the agent mounts it at `DIR` before the programs start.

use std::ffi::CString;
use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::sys;

/// Filesystems tried, in order (what the default image and `mkfs.ext4` make).
const FSTYPES: &[&str] = &["ext4"];

/// How long a disk may take to show up in sysfs (the virtio driver probes before init,
/// so it is normally there at once).
const APPEAR_WAIT: Duration = Duration::from_secs(5);

/// One `owvmm.disk=` word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The device's serial (`disk0`, ...).
    pub id: String,
    /// Where to mount it (absolute).
    pub dir: PathBuf,
    /// Mount read-only.
    pub read_only: bool,
}

impl DiskSpec {
    /// A root image, merged into the root rather than mounted at a directory.
    pub fn is_root(&self) -> bool {
        self.dir == Path::new("/")
    }
}

/// Why a disk was not mounted.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The root image was mounted but not merged.
    #[error("root image")]
    Root(#[source] super::root::RootError),
    /// No block device with that serial.
    #[error("no block device with serial {0}")]
    NotFound(String),
    /// The mount point could not be made.
    #[error("mount point {0}")]
    MountPoint(PathBuf, #[source] io::Error),
    /// A path with a NUL byte.
    #[error("bad path {0}")]
    BadPath(PathBuf),
    /// The virtio-mmio driver did not take the device.
    #[error("virtio-mmio device at {0:#x} not probed")]
    Probe(u64, #[source] io::Error),
    /// Neither `umount2(2)` nor a read-only remount worked.
    #[error("unmount {dir}")]
    Unmount {
        /// The mount point.
        dir: PathBuf,
        /// Why the unmount failed.
        #[source]
        source: io::Error,
    },
    /// `mount(2)` failed.
    #[error("mount {dev} on {dir} ({fstype})")]
    Mount {
        /// The device node.
        dev: PathBuf,
        /// The mount point.
        dir: PathBuf,
        /// The filesystem tried last.
        fstype: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The `owvmm.disk=` words of a kernel command line; malformed ones are skipped (the VMM
/// checked them before starting).
pub fn parse_cmdline(cmdline: &str) -> Vec<DiskSpec> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("owvmm.disk="))
        .filter_map(|v| {
            let mut parts = v.split(':');
            let id = parts.next().filter(|s| !s.is_empty())?;
            let dir = parts.next().filter(|d| d.starts_with('/'))?;
            let read_only = match parts.next() {
                None => false,
                Some("ro") => true,
                Some(_) => return None,
            };
            parts.next().is_none().then(|| DiskSpec {
                id: id.to_owned(),
                dir: PathBuf::from(dir),
                read_only,
            })
        })
        .collect()
}

/// The device node of the block device whose serial is `id`, looked up in `sys_block`
/// (`/sys/block`) and named in `dev` (`/dev`).
pub fn find_device(sys_block: &Path, dev: &Path, id: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    for e in entries.flatten() {
        let serial = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        if serial.trim() == id {
            return Some(dev.join(e.file_name()));
        }
    }
    None
}

/// Mounts `spec`'s device at its directory.
pub fn mount(spec: &DiskSpec, sys_block: &Path, dev_dir: &Path) -> Result<(), DiskError> {
    let deadline = Instant::now() + APPEAR_WAIT;
    let dev = loop {
        if let Some(d) = find_device(sys_block, dev_dir, &spec.id) {
            break d;
        }
        if Instant::now() > deadline {
            return Err(DiskError::NotFound(spec.id.clone()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A root image is mounted aside and merged into the root (root.rs).
    let target = if spec.is_root() {
        PathBuf::from(super::root::MOUNT_AT)
    } else {
        spec.dir.clone()
    };
    match DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&target)
    {
        Ok(()) => {}
        Err(e) => return Err(DiskError::MountPoint(target, e)),
    }
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| DiskError::BadPath(p.into()))
    };
    let (dev_c, dir_c) = (c(&dev)?, c(&target)?);
    let flags = if spec.read_only { libc::MS_RDONLY } else { 0 } | libc::MS_NOATIME;
    let mut last = None;
    for fstype in FSTYPES {
        let fs_c = CString::new(*fstype).map_err(|_| DiskError::BadPath(spec.dir.clone()))?;
        match sys::mount(&dev_c, &dir_c, &fs_c, flags) {
            Ok(()) if spec.is_root() => {
                let merged = super::root::merge(&target, Path::new("/"), &mut super::root::bind_ro)
                    .map_err(DiskError::Root)?;
                crate::log!(
                    "root image merged: /usr bound, {} files ({} KiB) copied, {} links",
                    merged.copied,
                    merged.bytes >> 10,
                    merged.links
                );
                return Ok(());
            }
            Ok(()) => return Ok(()),
            Err(e) => last = Some((*fstype, e)),
        }
    }
    let (fstype, source) = last.unwrap_or(("none", io::Error::from_raw_os_error(libc::ENODEV)));
    Err(DiskError::Mount {
        dev,
        dir: target,
        fstype,
        source,
    })
}

/// The virtio-mmio driver's `bind` file.
const MMIO_BIND: &str = "/sys/bus/platform/drivers/virtio-mmio/bind";

/// Makes the kernel probe the virtio-mmio device at `base` now. A crash kernel's standby
/// booted with every slot on its command line but no device behind them, so each slot is a
/// platform device (`virtio-mmio.N`, its register window in `/proc/iomem`) that no driver
/// took; binding it makes the driver read the device afresh.
pub fn probe_mmio(base: u64) -> Result<(), DiskError> {
    let iomem = std::fs::read_to_string("/proc/iomem").map_err(|e| DiskError::Probe(base, e))?;
    let name = mmio_device_name(&iomem, base).ok_or_else(|| {
        DiskError::Probe(
            base,
            io::Error::new(io::ErrorKind::NotFound, "no virtio-mmio slot there"),
        )
    })?;
    if Path::new("/sys/bus/platform/drivers/virtio-mmio")
        .join(&name)
        .exists()
    {
        return Ok(()); // bound already
    }
    std::fs::write(MMIO_BIND, &name).map_err(|e| DiskError::Probe(base, e))
}

/// The platform device whose register window starts at `base`, from `/proc/iomem` lines
/// such as `  d0000000-d0000fff : virtio-mmio.0`.
fn mmio_device_name(iomem: &str, base: u64) -> Option<String> {
    iomem.lines().find_map(|l| {
        let (range, name) = l.trim().split_once(" : ")?;
        let start = u64::from_str_radix(range.split_once('-')?.0, 16).ok()?;
        (start == base && name.starts_with("virtio-mmio.")).then(|| name.trim().to_owned())
    })
}

/// In place of a disk that a crash kernel could not mount: an empty read-only
/// filesystem, so that nothing meant for the disk is written into the root instead (the
/// processes with files there are then not restored, each with its reason).
pub fn cover(spec: &DiskSpec) -> Result<(), DiskError> {
    if spec.is_root() {
        return Ok(()); // the initramfs stays the root; what needed the image is not restored
    }
    if let Err(e) = DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&spec.dir)
    {
        return Err(DiskError::MountPoint(spec.dir.clone(), e));
    }
    let c = |s: &[u8]| CString::new(s).map_err(|_| DiskError::BadPath(spec.dir.clone()));
    let dir = c(spec.dir.as_os_str().as_encoded_bytes())?;
    let none = c(b"none")?;
    let tmpfs = c(b"tmpfs")?;
    sys::mount(&none, &dir, &tmpfs, libc::MS_RDONLY).map_err(|source| DiskError::Mount {
        dev: PathBuf::from("none"),
        dir: spec.dir.clone(),
        fstype: "tmpfs",
        source,
    })
}

/// Unmounts `spec`'s directory at power off (the programs are gone); when something
/// still holds it, remounts it read-only instead so the filesystem is left clean.
pub fn unmount(spec: &DiskSpec) -> Result<(), DiskError> {
    if spec.is_root() {
        return Ok(()); // read-only: nothing to write back
    }
    let dir = CString::new(spec.dir.as_os_str().as_encoded_bytes())
        .map_err(|_| DiskError::BadPath(spec.dir.clone()))?;
    match sys::umount(&dir) {
        Ok(()) => Ok(()),
        Err(busy) => sys::remount_ro(&dir).map_err(|_| DiskError::Unmount {
            dir: spec.dir.clone(),
            source: busy,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_words() {
        let specs = parse_cmdline(
            "console=ttyS0 owvmm.disk=disk0:/data owvmm.disk=disk1:/ref:ro owvmm.disk=x:rel \
             owvmm.disk=disk2:/a:rw owvmm.disk=:/b owvmm.disk=disk3:/c:ro:extra",
        );
        assert_eq!(
            specs,
            vec![
                DiskSpec {
                    id: "disk0".into(),
                    dir: "/data".into(),
                    read_only: false
                },
                DiskSpec {
                    id: "disk1".into(),
                    dir: "/ref".into(),
                    read_only: true
                },
            ]
        );
    }

    #[test]
    fn slots_are_found_by_their_register_window() {
        let iomem = "00000000-00000fff : Reserved\n\
                     d0000000-d0000fff : virtio-mmio.0\n\
                     d0001000-d0001fff : virtio-mmio.1\n\
                     fee00000-fee00fff : Local APIC\n";
        assert_eq!(
            mmio_device_name(iomem, 0xd000_1000).as_deref(),
            Some("virtio-mmio.1")
        );
        assert_eq!(
            mmio_device_name(iomem, 0xd000_0000).as_deref(),
            Some("virtio-mmio.0")
        );
        assert_eq!(mmio_device_name(iomem, 0xfee0_0000), None);
        assert_eq!(mmio_device_name(iomem, 0xd000_2000), None);
    }

    #[test]
    fn device_found_by_serial() {
        let root = std::env::temp_dir().join(format!("ow-disks-{}", std::process::id()));
        for (name, serial) in [("vda", "disk0\n"), ("vdb", "disk1")] {
            let d = root.join("block").join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("serial"), serial).expect("serial");
        }
        std::fs::create_dir_all(root.join("block/loop0")).expect("mkdir");
        let dev = Path::new("/dev");
        assert_eq!(
            find_device(&root.join("block"), dev, "disk1"),
            Some(PathBuf::from("/dev/vdb"))
        );
        assert_eq!(
            find_device(&root.join("block"), dev, "disk0"),
            Some(PathBuf::from("/dev/vda"))
        );
        assert_eq!(find_device(&root.join("block"), dev, "disk9"), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
