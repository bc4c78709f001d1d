//! `file` records: files of the dead kernel's in-memory file systems, rewritten from its
//! page cache before the processes that use them come back, and files on the user's disks
//! patched with the pages it had not written back yet.

use std::fs::{self, OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use super::manifest::{FileRec, FileUpdate};
use super::restore::clusters_of;
use super::{path_of, Error, MemSource};

/// Recreates one file when it is missing, has another size, or `overwrite` is set.
/// Returns whether it was written.
pub fn recreate(f: &FileRec, mem: &MemSource) -> Result<bool, Error> {
    if f.update == FileUpdate::Patch {
        return patch(f, mem).map(|()| true);
    }
    let path = path_of(&f.path);
    match fs::metadata(&path) {
        Ok(md) if md.is_dir() => {
            return Err(Error::Invalid("is a directory".to_owned()));
        }
        Ok(md) if md.len() == f.size && f.update == FileUpdate::IfDiffers => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::os("stat", e)),
    }
    for r in &f.runs {
        mem.check(r.gpa, r.len)?;
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::os("create parent directories", e))?;
    }
    // Read and write: a shared writable mapping needs both.
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(f.mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Error::os("open", e))?;
    out.set_len(f.size).map_err(|e| Error::os("truncate", e))?;
    // The content is copied in user space, through a shared mapping of the new file: the
    // copy then runs at native speed, where a write(2) would copy in the (on some hosts
    // emulated) kernel. The old memory is mapped only where the file has pages.
    if f.size > 0 && !f.runs.is_empty() {
        let dst = SharedMap::new(&out, f.size)?;
        each_run(f, mem, |offset, chunk| dst.write_at(offset, chunk))?;
    }
    out.set_permissions(Permissions::from_mode(f.mode))
        .map_err(|e| Error::os("chmod", e))?;
    Ok(true)
}

/// Writes the runs of a file on a disk (mounted again by now) into it, keeping the rest of
/// its content, sets its length and syncs it: what the dead kernel had in its page cache
/// and had not written back yet is on the disk before its writers come back. A file that
/// never reached the disk is created.
fn patch(f: &FileRec, mem: &MemSource) -> Result<(), Error> {
    let path = path_of(&f.path);
    for r in &f.runs {
        mem.check(r.gpa, r.len)?;
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::os("create parent directories", e))?;
    }
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(f.mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Error::os("open", e))?;
    each_run(f, mem, |offset, chunk| {
        out.write_all_at(chunk, offset)
            .map_err(|e| Error::os("write", e))
    })?;
    out.set_len(f.size).map_err(|e| Error::os("truncate", e))?;
    out.sync_data().map_err(|e| Error::os("fsync", e))
}

/// Calls `put(offset, bytes)` for each run of `f` (clipped to its size), with the bytes
/// read from the old memory, mapped a cluster of nearby runs at a time.
fn each_run(
    f: &FileRec,
    mem: &MemSource,
    mut put: impl FnMut(u64, &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    for (lo, hi) in clusters_of(f.runs.iter().map(|r| (r.gpa, r.len))) {
        let src = mem.map(lo, hi - lo)?;
        let bytes = src.bytes();
        for r in f.runs.iter().filter(|r| r.gpa >= lo && r.gpa + r.len <= hi) {
            let a = usize::try_from(r.gpa - lo).map_err(|_| Error::Invalid("run".into()))?;
            let end = r.offset.saturating_add(r.len).min(f.size);
            let n = usize::try_from(end.saturating_sub(r.offset))
                .map_err(|_| Error::Invalid("run".into()))?;
            let chunk = bytes
                .get(a..a.saturating_add(n))
                .ok_or_else(|| Error::Invalid("fcopy outside its mapping".to_owned()))?;
            put(r.offset, chunk)?;
        }
    }
    Ok(())
}

/// A writable shared mapping of a whole file.
struct SharedMap {
    addr: *mut u8,
    len: usize,
}

impl SharedMap {
    fn new(file: &fs::File, size: u64) -> Result<Self, Error> {
        let len = usize::try_from(size).map_err(|_| Error::Invalid("file too large".into()))?;
        // SAFETY: a new shared mapping of `len` bytes of a file we own, at an address of
        // the kernel's choosing; it aliases nothing and is unmapped in Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::os(
                "mmap the new file",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self {
            addr: addr.cast(),
            len,
        })
    }

    /// Copies `data` to file offset `at` (bounds-checked against the file size).
    fn write_at(&self, at: u64, data: &[u8]) -> Result<(), Error> {
        let at = usize::try_from(at).map_err(|_| Error::Invalid("offset".into()))?;
        if at.checked_add(data.len()).is_none_or(|end| end > self.len) {
            return Err(Error::Invalid(format!(
                "fcopy at {at:#x} beyond the file size"
            )));
        }
        // SAFETY: `at + data.len() <= self.len` was checked, the mapping is writable and
        // lives as long as `self`; `data` comes from another mapping, so they do not
        // overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr.add(at), data.len()) };
        Ok(())
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}
