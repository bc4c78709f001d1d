//! The host side of virtio-net: an existing tap device opened by name, as Firecracker
//! does (`/dev/net/tun`, `TUNSETIFF` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), with a
//! 12-byte vnet header (`virtio_net_hdr_v1`) in front of every frame and no offloads.
//!
//! owvmm runs as root, and `TUNSETIFF` on a name that does not exist would *create* a
//! tap: the name is first checked in sysfs (`/sys/class/net/NAME/tun_flags` exists only
//! for tun/tap devices), and anything else is refused.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::frame::HDR_LEN;

/// A tap refused.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface name.
    #[error(
        "tap name {0:?} is not a valid interface name (1 to 15 characters, no '/', no spaces)"
    )]
    BadName(String),
    /// No interface of that name.
    #[error("tap {0} does not exist (create it first: ip tuntap add dev {0} mode tap)")]
    Missing(String),
    /// An interface that is not a tun/tap device.
    #[error("{0} is not a tap device")]
    NotTap(String),
    /// Another process has the tap open.
    #[error("tap {0} is busy (attached to another process)")]
    Busy(String),
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// An ioctl on the tap failed.
    #[error("tap {0}: {1} failed")]
    Ioctl(String, &'static str, #[source] io::Error),
}

/// What moves frames between the device and the host: a tap, or in tests a datagram
/// socket (both keep frame boundaries). Non-blocking: `WouldBlock` when nothing is there.
pub trait Backend: AsRawFd + Send + Sync {
    /// Reads one frame (vnet header first) into `buf`; its length.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (vnet header first).
    fn send(&self, buf: &[u8]) -> io::Result<usize>;
}

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// Checks that `name` can be an interface name (`IFNAMSIZ` with its NUL, no path
/// separators or spaces: it is used as a sysfs path component).
pub fn check_name(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':' && b != b',');
    if ok {
        Ok(())
    } else {
        Err(TapError::BadName(name.into()))
    }
}

/// Checks in `sys_class_net` (`/sys/class/net`) that `name` is an existing tun/tap.
pub fn check_exists(sys_class_net: &Path, name: &str) -> Result<(), TapError> {
    check_name(name)?;
    let dir = sys_class_net.join(name);
    if !dir.exists() {
        return Err(TapError::Missing(name.into()));
    }
    if !dir.join("tun_flags").exists() {
        return Err(TapError::NotTap(name.into()));
    }
    Ok(())
}

fn ioctl_int(
    fd: RawFd,
    name: &str,
    what: &'static str,
    req: libc::Ioctl,
    v: &libc::c_int,
) -> Result<(), TapError> {
    // SAFETY: `req` takes a pointer to an int, which `v` is, alive across the call.
    let rc = unsafe { libc::ioctl(fd, req, v as *const libc::c_int) };
    if rc < 0 {
        return Err(TapError::Ioctl(
            name.into(),
            what,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Tap {
    /// Opens the existing tap `name`, non-blocking, with a 12-byte vnet header and no
    /// offloads.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        check_exists(Path::new("/sys/class/net"), name)?;
        let path = c"/dev/net/tun";
        // SAFETY: a NUL-terminated path; the returned descriptor is checked and owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(TapError::OpenTun(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just opened and nothing else owns it.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = libc::c_char::from_ne_bytes([src]);
        }
        // The flags fit in a short (IFF_VNET_HDR is 0x4000).
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        ifr.ifr_ifru.ifru_flags = i16::try_from(flags).unwrap_or(0);
        // SAFETY: TUNSETIFF reads (and updates) the ifreq, which lives across the call.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETIFF,
                &mut ifr as *mut libc::ifreq,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EBUSY) {
                TapError::Busy(name.into())
            } else {
                TapError::Ioctl(name.into(), "TUNSETIFF", e)
            });
        }
        let hdr = libc::c_int::try_from(HDR_LEN).unwrap_or(12);
        ioctl_int(
            file.as_raw_fd(),
            name,
            "TUNSETVNETHDRSZ",
            libc::TUNSETVNETHDRSZ,
            &hdr,
        )?;
        // TUNSETOFFLOAD takes its argument by value.
        // SAFETY: an integer argument; no memory is involved.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        if rc < 0 {
            return Err(TapError::Ioctl(
                name.into(),
                "TUNSETOFFLOAD",
                io::Error::last_os_error(),
            ));
        }
        Ok(Tap {
            file,
            name: name.into(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn cvt(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl Backend for Tap {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is writable for `buf.len()` bytes; the descriptor is ours.
        cvt(unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is readable for `buf.len()` bytes; the descriptor is ours.
        cvt(unsafe { libc::write(self.file.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
    }
}

impl Backend for std::os::unix::net::UnixDatagram {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::net::UnixDatagram::recv(self, buf)
    }

    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        std::os::unix::net::UnixDatagram::send(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["tap0", "owt0", "a", "x234567890abcde"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "x234567890abcdef",
            "a:b",
            "a,b",
            "t\u{e9}",
        ] {
            assert!(
                matches!(check_name(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_existing_taps_are_accepted() {
        let root = std::env::temp_dir().join(format!("owvmm-tap-{}", std::process::id()));
        std::fs::create_dir_all(root.join("eth0")).expect("mkdir");
        std::fs::create_dir_all(root.join("tap7")).expect("mkdir");
        std::fs::write(root.join("tap7/tun_flags"), "0x5002\n").expect("tun_flags");
        assert!(check_exists(&root, "tap7").is_ok());
        let e = check_exists(&root, "eth0").expect_err("not a tap");
        assert_eq!(e.to_string(), "eth0 is not a tap device");
        let e = check_exists(&root, "nope0").expect_err("missing");
        assert!(e.to_string().starts_with("tap nope0 does not exist"), "{e}");
        assert!(matches!(
            check_exists(&root, "../x"),
            Err(TapError::BadName(_))
        ));
        let _ = std::fs::remove_dir_all(&root);
        // The real sysfs: no tap of that name, and nothing is created by asking.
        assert!(matches!(
            Tap::open("owvmmnosuch0"),
            Err(TapError::Missing(_))
        ));
        assert!(!Path::new("/sys/class/net/owvmmnosuch0").exists());
    }
}
