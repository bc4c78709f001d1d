//! `file` records: files of the dead kernel's in-memory file systems, rewritten from its
//! page cache before the processes that use them come back.

use std::fs::{self, OpenOptions, Permissions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};

use super::manifest::FileRec;
use super::{path_of, Error, MemSource};

/// Recreates one file when it is missing, has another size, or `overwrite` is set.
/// Returns whether it was written.
pub fn recreate(f: &FileRec, mem: &MemSource) -> Result<bool, Error> {
    let path = path_of(&f.path);
    match fs::metadata(&path) {
        Ok(md) if md.is_dir() => {
            return Err(Error::Invalid("is a directory".to_owned()));
        }
        Ok(md) if md.len() == f.size && !f.overwrite => return Ok(false),
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
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(f.mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| Error::os("open", e))?;
    // Map only the span of the old memory this file needs.
    let lo = f.runs.iter().map(|r| r.gpa).min();
    let hi = f.runs.iter().map(|r| r.gpa + r.len).max();
    if let (Some(lo), Some(hi)) = (lo, hi) {
        let map = mem.map(lo, hi - lo)?;
        let bytes = map.bytes();
        for r in &f.runs {
            let a = usize::try_from(r.gpa - lo).map_err(|_| Error::Invalid("run".into()))?;
            let b = usize::try_from(r.len).map_err(|_| Error::Invalid("run".into()))?;
            let chunk = bytes
                .get(a..a.saturating_add(b))
                .ok_or_else(|| Error::Invalid("fcopy outside its mapping".to_owned()))?;
            out.write_all_at(chunk, r.offset)
                .map_err(|e| Error::os(format!("write at {:#x}", r.offset), e))?;
        }
    }
    out.set_len(f.size).map_err(|e| Error::os("truncate", e))?;
    out.set_permissions(Permissions::from_mode(f.mode))
        .map_err(|e| Error::os("chmod", e))?;
    Ok(true)
}
