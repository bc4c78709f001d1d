//! Early PID-1 setup: the basic file systems and the standard descriptors.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::sys;

struct Mount {
    target: &'static CStr,
    fstype: &'static CStr,
    flags: libc::c_ulong,
    /// Failure is expected on small kernels and only logged at low volume.
    optional: bool,
}

const MOUNTS: &[Mount] = &[
    Mount {
        target: c"/proc",
        fstype: c"proc",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        optional: false,
    },
    Mount {
        target: c"/sys",
        fstype: c"sysfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        optional: false,
    },
    Mount {
        target: c"/dev",
        fstype: c"devtmpfs",
        flags: libc::MS_NOSUID,
        optional: false,
    },
    Mount {
        target: c"/dev/pts",
        fstype: c"devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        optional: true,
    },
    Mount {
        target: c"/tmp",
        fstype: c"tmpfs",
        flags: libc::MS_NOSUID | libc::MS_NODEV,
        optional: true,
    },
];

/// Mounts /proc, /sys, /dev, /dev/pts and /tmp, skipping those that already are mount
/// points, and makes sure descriptors 0, 1 and 2 are open (on /dev/console if possible)
/// before anything else gets a descriptor.
pub fn early_setup() {
    for m in MOUNTS {
        if let Err(e) = mount_one(m) {
            let target = m.target.to_string_lossy();
            if m.optional {
                crate::log!("{target} not mounted ({e}), going on without it");
            } else {
                crate::log!("mount {target}: {e}");
            }
        }
    }
    sanitize_std_fds();
}

fn mount_one(m: &Mount) -> io::Result<()> {
    let target = Path::new(m.target.to_str().map_err(io::Error::other)?);
    let parent = target.parent().unwrap_or(Path::new("/"));
    match std::fs::DirBuilder::new().mode(0o755).create(target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Already a mount point (its device differs from its parent's)? Then leave it.
            let (Ok(t), Ok(p)) = (std::fs::metadata(target), std::fs::metadata(parent)) else {
                return Err(e);
            };
            if t.dev() != p.dev() {
                return Ok(());
            }
        }
        Err(e) => return Err(e),
    }
    match sys::mount(m.fstype, m.target, m.fstype, m.flags) {
        // EBUSY: something is mounted there already (a race or an overmount rule).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other,
    }
}

/// The kernel starts /init with 0, 1 and 2 on /dev/console only if the initramfs has
/// that node; otherwise they are closed and the first files we open would land there.
fn sanitize_std_fds() {
    if (0..3).all(sys::fd_is_open) {
        return;
    }
    let file = ["/dev/console", "/dev/null"].iter().find_map(|p| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(p)
            .ok()
    });
    let Some(file) = file else {
        return;
    };
    let raw = file.as_raw_fd();
    for fd in 0..3 {
        if fd != raw && !sys::fd_is_open(fd) {
            let _ = sys::dup2(raw, fd);
        }
    }
    if raw < 3 {
        // The file landed on one of 0..=2 itself: keep it there, and let children
        // inherit it (std opens files close-on-exec).
        let _ = sys::set_cloexec(raw, false);
        std::mem::forget(file);
    }
}
