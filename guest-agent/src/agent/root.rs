//! A root image (`owvmm.disk=ID:/:ro`: `owvmm run --with PKG`, or `--disk IMG:/:ro`).
//!
//! The guest's root stays the initramfs (writable, in memory, with the `--add` files and
//! `/etc/owvmm`), and the read-only image is merged into it: its `/usr` is bound over the
//! initramfs's, its top-level links (`bin -> usr/bin`, ...) replace the initramfs's
//! busybox directories, and its other files are copied in where the initramfs has none.
//! So programs run from their usual paths, `/etc` and `/var` stay writable, and a crash
//! kernel, whose standby booted the same initramfs, gets the same root by merging the same
//! image after the crash, before any process is resurrected.

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the image is mounted.
pub const MOUNT_AT: &str = "/.owvmm/root";
/// Where the initramfs's own directories go when the image replaces them.
const SET_ASIDE: &str = ".owvmm/initramfs";
/// Top-level entries of the image left alone: mount points of the running system.
const SKIP: &[&str] = &["proc", "sys", "dev", "tmp", "run", "lost+found", ".owvmm"];
/// The directory that is bound, not copied.
const BOUND: &str = "usr";
/// Most entries copied outside `/usr`.
const MAX_ENTRIES: usize = 50_000;
/// Most bytes copied outside `/usr` (they live in the guest's memory).
const MAX_BYTES: u64 = 256 << 20;

/// Why the root image could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A file operation failed.
    #[error("{0}")]
    Io(PathBuf, #[source] io::Error),
    /// The bind mount of `/usr` failed.
    #[error("bind {0} on /usr")]
    Bind(PathBuf, #[source] io::Error),
    /// Too much outside `/usr` to copy into memory.
    #[error("more than {MAX_ENTRIES} files or {} MiB outside /usr", MAX_BYTES >> 20)]
    TooBig,
}

/// What a merge did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Merged {
    /// Entries copied.
    pub copied: usize,
    /// Bytes copied.
    pub bytes: u64,
    /// Links made at the top level.
    pub links: usize,
    /// Initramfs directories set aside.
    pub set_aside: usize,
}

fn io_err(p: &Path) -> impl FnOnce(io::Error) -> RootError + '_ {
    move |e| RootError::Io(p.to_path_buf(), e)
}

/// Merges the image mounted at `image` into the root at `root`; `bind(src, dst)` binds a
/// directory (a real bind mount in the guest).
pub fn merge(
    image: &Path,
    root: &Path,
    bind: &mut dyn FnMut(&Path, &Path) -> io::Result<()>,
) -> Result<Merged, RootError> {
    let mut done = Merged::default();
    let mut entries: Vec<_> = std::fs::read_dir(image)
        .map_err(io_err(image))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    entries.sort();
    for name in entries {
        let n = name.to_string_lossy();
        if SKIP.contains(&n.as_ref()) {
            continue;
        }
        let src = image.join(&name);
        let dst = root.join(&name);
        let meta = std::fs::symlink_metadata(&src).map_err(io_err(&src))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io_err(&src))?;
            match std::fs::symlink_metadata(&dst) {
                Ok(m) if m.file_type().is_symlink() => {
                    std::fs::remove_file(&dst).map_err(io_err(&dst))?;
                }
                Ok(_) => {
                    set_aside(root, &name, &dst)?;
                    done.set_aside += 1;
                }
                Err(_) => {}
            }
            std::os::unix::fs::symlink(&target, &dst).map_err(io_err(&dst))?;
            done.links += 1;
        } else if ft.is_dir() && n == BOUND {
            if std::fs::symlink_metadata(&dst).is_ok_and(|m| !m.is_dir()) {
                set_aside(root, &name, &dst)?;
            }
            make_dir(&dst, meta.mode())?;
            bind(&src, &dst).map_err(|e| RootError::Bind(src.clone(), e))?;
        } else {
            copy_tree(&src, &dst, &mut done)?;
        }
    }
    Ok(done)
}

fn make_dir(p: &Path, mode: u32) -> Result<(), RootError> {
    match std::fs::DirBuilder::new().mode(mode & 0o7777).create(p) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(RootError::Io(p.into(), e)),
        _ => Ok(()),
    }
}

/// Moves the initramfs's `name` out of the way (into `/.owvmm/initramfs/`).
fn set_aside(root: &Path, name: &std::ffi::OsStr, dst: &Path) -> Result<(), RootError> {
    let dir = root.join(SET_ASIDE);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let to = dir.join(name);
    let _ = std::fs::remove_dir_all(&to);
    std::fs::rename(dst, &to).map_err(io_err(dst))
}

/// Copies `src` to `dst` where `dst` has nothing (what is there wins), within the budget.
fn copy_tree(src: &Path, dst: &Path, done: &mut Merged) -> Result<(), RootError> {
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((s, d)) = stack.pop() {
        done.copied += 1;
        if done.copied > MAX_ENTRIES || done.bytes > MAX_BYTES {
            return Err(RootError::TooBig);
        }
        let meta = std::fs::symlink_metadata(&s).map_err(io_err(&s))?;
        let ft = meta.file_type();
        let there = std::fs::symlink_metadata(&d).ok();
        if ft.is_dir() {
            match &there {
                Some(m) if !m.is_dir() => continue, // a file of the initramfs wins
                Some(_) => {}
                None => make_dir(&d, meta.mode())?,
            }
            for e in std::fs::read_dir(&s).map_err(io_err(&s))?.flatten() {
                stack.push((e.path(), d.join(e.file_name())));
            }
        } else if there.is_some() {
            done.copied -= 1;
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&s).map_err(io_err(&s))?;
            std::os::unix::fs::symlink(t, &d).map_err(io_err(&d))?;
        } else if ft.is_file() {
            done.bytes += meta.len();
            std::fs::copy(&s, &d).map_err(io_err(&d))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io_err(&d))?;
        } else {
            done.copied -= 1; // device nodes, sockets, fifos: the guest makes its own
        }
    }
    Ok(())
}

/// A bind mount of `src` on `dst`, read-only.
pub fn bind_ro(src: &Path, dst: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (s, d) = (c(src)?, c(dst)?);
    super::sys::mount(&s, &d, c"none", libc::MS_BIND)?;
    // The image is mounted read-only already; the bind says so too.
    let _ = super::sys::mount(
        &s,
        &d,
        c"none",
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ow-root-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp");
        d
    }

    #[test]
    fn the_image_is_merged_into_the_initramfs() {
        let (image, root) = (tmp("image"), tmp("root"));
        // The image: usr-merged, with /etc and /var, and mount points to skip.
        for d in ["usr/bin", "etc/redis", "var/lib/redis", "proc", "tmp"] {
            std::fs::create_dir_all(image.join(d)).expect("mkdir");
        }
        std::fs::write(image.join("usr/bin/redis-server"), b"ELF").expect("w");
        std::fs::write(image.join("etc/redis/redis.conf"), b"port 6379\n").expect("w");
        std::fs::write(image.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").expect("w");
        std::fs::write(image.join("tmp/stale"), b"x").expect("w");
        std::os::unix::fs::symlink("usr/bin", image.join("bin")).expect("ln");
        std::os::unix::fs::symlink("/usr/bin/busybox", image.join("etc/redis/link")).expect("ln");
        // The initramfs: busybox in /bin, its own /etc/owvmm and an --add'ed /etc/passwd.
        for d in ["bin", "usr/bin", "etc/owvmm", "tmp"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::write(root.join("bin/busybox"), b"BB").expect("w");
        std::fs::write(root.join("etc/owvmm/exec"), b"redis-server\n").expect("w");
        std::fs::write(root.join("etc/passwd"), b"mine\n").expect("w");

        let mut bound = Vec::new();
        let m = merge(&image, &root, &mut |s, d| {
            bound.push((s.to_path_buf(), d.to_path_buf()));
            Ok(())
        })
        .expect("merge");
        assert_eq!(bound, vec![(image.join("usr"), root.join("usr"))]);
        assert_eq!(
            std::fs::read_link(root.join("bin")).expect("link"),
            PathBuf::from("usr/bin")
        );
        assert!(root.join(".owvmm/initramfs/bin/busybox").exists());
        assert_eq!(
            std::fs::read(root.join("etc/redis/redis.conf")).expect("r"),
            b"port 6379\n"
        );
        assert!(std::fs::read_link(root.join("etc/redis/link")).is_ok());
        assert_eq!(
            std::fs::read(root.join("etc/passwd")).expect("r"),
            b"mine\n"
        );
        assert!(root.join("etc/owvmm/exec").exists());
        assert!(root.join("var/lib/redis").is_dir());
        assert!(!root.join("tmp/stale").exists());
        assert_eq!((m.links, m.set_aside), (1, 1));
        assert_eq!(m.bytes, 10);

        // Merging again (a second boot of the same initramfs would not, but a retry might)
        // changes nothing and fails on nothing.
        let again = merge(&image, &root, &mut |_, _| Ok(())).expect("again");
        assert_eq!((again.bytes, again.set_aside), (0, 0));
        let _ = std::fs::remove_dir_all(&image);
        let _ = std::fs::remove_dir_all(&root);
    }
}
