//! A raw disk image: a host file opened read-only or read-write and locked against other
//! users.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;

/// A disk image refused.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The image cannot be opened (missing, no permission, ...).
    #[error("disk image {0} cannot be opened")]
    Open(PathBuf, #[source] std::io::Error),
    /// The image is not a regular file.
    #[error("disk image {0} is not a regular file")]
    NotAFile(PathBuf),
    /// The image is smaller than one sector.
    #[error("disk image {0} is smaller than one {SECTOR_SIZE}-byte sector")]
    TooSmall(PathBuf),
    /// Another process (another owvmm) holds a conflicting lock.
    #[error("disk image {0} is in use by another process (it holds a lock on it)")]
    Locked(PathBuf),
    /// Locking failed for another reason.
    #[error("disk image {0} cannot be locked")]
    Lock(PathBuf, #[source] std::io::Error),
}

/// An open, locked disk image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    /// Usable size in bytes: the file's, rounded down to whole sectors.
    size: u64,
    read_only: bool,
    /// What `VIRTIO_BLK_T_GET_ID` answers (NUL-padded).
    id: [u8; 20],
}

impl Disk {
    /// Opens `path` (read-write unless `read_only`) and locks it: shared for a read-only
    /// disk, exclusive otherwise, so two VMMs never write one image, and none writes an
    /// image another reads. The lock lives as long as the `Disk`.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Disk, DiskError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| DiskError::Open(path.into(), e))?;
        let meta = file
            .metadata()
            .map_err(|e| DiskError::Open(path.into(), e))?;
        if !meta.is_file() {
            return Err(DiskError::NotAFile(path.into()));
        }
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                DiskError::Locked(path.into())
            } else {
                DiskError::Lock(path.into(), e)
            });
        }
        let size = meta.len() / SECTOR_SIZE * SECTOR_SIZE;
        if size == 0 {
            return Err(DiskError::TooSmall(path.into()));
        }
        let mut id_bytes = [0u8; 20];
        let n = id.len().min(id_bytes.len());
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Disk {
            file,
            size,
            read_only,
            id: id_bytes,
        })
    }

    /// Usable size in bytes (whole sectors).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Capacity in sectors (the config space's `capacity`).
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The device ID string.
    pub fn id(&self) -> &[u8; 20] {
        &self.id
    }

    /// Checks that `len` bytes from sector `sector` lie inside the disk; the byte offset.
    pub fn check_range(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.size).then_some(start)
    }

    /// Reads exactly `buf.len()` bytes at byte `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at byte `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes written data durable (fdatasync).
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn image(name: &str, len: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("owvmm-disk-{}-{name}", std::process::id()));
        let f = File::create(&p).expect("create image");
        f.set_len(len).expect("size image");
        p
    }

    #[test]
    fn opens_locks_and_refuses() {
        let p = image("lock", 4096 + 100);
        let d = Disk::open(&p, false, "disk0").expect("open");
        assert_eq!(d.size(), 4096, "rounded down to whole sectors");
        assert_eq!(d.sectors(), 8);
        assert_eq!(&d.id()[..6], b"disk0\0");
        // A second user, read-write or read-only, is refused while the first holds it.
        assert!(matches!(
            Disk::open(&p, false, "x"),
            Err(DiskError::Locked(_))
        ));
        assert!(matches!(
            Disk::open(&p, true, "x"),
            Err(DiskError::Locked(_))
        ));
        drop(d);
        // Read-only users share.
        let r1 = Disk::open(&p, true, "x").expect("ro");
        let _r2 = Disk::open(&p, true, "x").expect("ro shared");
        assert!(r1.read_only());
        assert!(matches!(
            Disk::open(&p, false, "x"),
            Err(DiskError::Locked(_))
        ));
        let _ = std::fs::remove_file(&p);

        let e = Disk::open(Path::new("/nonexistent/disk.img"), true, "x").expect_err("missing");
        assert!(matches!(e, DiskError::Open(..)));
        assert!(matches!(
            Disk::open(Path::new("/"), true, "x"),
            Err(DiskError::NotAFile(_)) | Err(DiskError::Open(..))
        ));
        let small = image("small", 511);
        assert!(matches!(
            Disk::open(&small, true, "x"),
            Err(DiskError::TooSmall(_))
        ));
        let _ = std::fs::remove_file(&small);
    }

    #[test]
    fn ranges_are_checked_without_overflow() {
        let p = image("range", 4096);
        let d = Disk::open(&p, true, "x").expect("open");
        assert_eq!(d.check_range(0, 4096), Some(0));
        assert_eq!(d.check_range(7, 512), Some(3584));
        assert_eq!(d.check_range(7, 513), None);
        assert_eq!(d.check_range(8, 0), Some(4096));
        assert_eq!(d.check_range(9, 0), None);
        assert_eq!(d.check_range(u64::MAX, 0), None);
        assert_eq!(d.check_range(1, u64::MAX), None);
        let _ = std::fs::remove_file(&p);
    }
}
