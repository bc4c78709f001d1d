//! The user's network interfaces: `owvmm.net=MAC[,ADDR/PREFIX[,GW]]` words of the kernel
//! command line, one per `--net` of `owvmm run`. The guest kernel has no IP
//! autoconfiguration: before the programs start, the agent finds each interface by its
//! MAC (`/sys/class/net/*/address`), gives it the address and netmask, sets it up, adds
//! the default route through `GW`, and sets `lo` up (the kernel gives it 127.0.0.1), all
//! with the classic ioctls on an `AF_INET` datagram socket.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long an interface may take to show up in sysfs (the virtio driver probes before
/// init, so it is normally there at once).
const APPEAR_WAIT: Duration = Duration::from_secs(5);

/// One `owvmm.net=` word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// Address and prefix length.
    pub ip: Option<(Ipv4Addr, u8)>,
    /// Default gateway.
    pub gw: Option<Ipv4Addr>,
}

/// Why an interface was not configured.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No interface has that MAC.
    #[error("no network interface with MAC {0}")]
    NotFound(String),
    /// The socket for the ioctls cannot be made.
    #[error("socket(AF_INET)")]
    Socket(#[source] io::Error),
    /// An ioctl failed.
    #[error("{what} on {iface}")]
    Ioctl {
        /// Which one (`SIOCSIFADDR`, ...).
        what: &'static str,
        /// The interface.
        iface: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        let p = parts.next().filter(|p| p.len() == 2)?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    (s.split('.').count() == 4)
        .then(|| s.parse().ok())
        .flatten()
}

pub fn parse_word(v: &str) -> Option<NetSpec> {
    let mut parts = v.split(',');
    let mac = parse_mac(parts.next()?)?;
    let ip = match parts.next() {
        None => None,
        Some(p) => {
            let (a, len) = p.split_once('/')?;
            let len: u8 = len.parse().ok()?;
            if !(1..=32).contains(&len) {
                return None;
            }
            Some((parse_ipv4(a)?, len))
        }
    };
    let gw = match parts.next() {
        None => None,
        Some(g) => Some(parse_ipv4(g)?),
    };
    parts.next().is_none().then_some(NetSpec { mac, ip, gw })
}

/// The `owvmm.net=` words of a kernel command line; malformed ones are skipped (the VMM
/// checked them before starting).
pub fn parse_cmdline(cmdline: &str) -> Vec<NetSpec> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("owvmm.net="))
        .filter_map(parse_word)
        .collect()
}

/// The netmask of a prefix length.
pub fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix.min(32)))
            .unwrap_or(0),
    )
}

/// The name of the interface whose MAC is `mac`, looked up in `sys_class_net`.
pub fn find_interface(sys_class_net: &Path, mac: &[u8; 6]) -> Option<String> {
    for e in std::fs::read_dir(sys_class_net).ok()?.flatten() {
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if parse_mac(&addr).as_ref() == Some(mac) {
            return e.file_name().into_string().ok();
        }
    }
    None
}

/// `struct rtentry` (`<net/route.h>`; not in the libc crate for glibc targets).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// An `AF_INET` socket address of `a`, as a `struct sockaddr`.
fn sockaddr(a: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr = unsafe { std::mem::zeroed() };
    sa.sa_family = libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2);
    // sockaddr_in: port (2 bytes, 0), then the address in network order.
    for (d, s) in sa.sa_data[2..6].iter_mut().zip(a.octets()) {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    sa
}

/// The ioctl socket.
struct Ctl {
    fd: OwnedFd,
}

impl Ctl {
    fn new() -> Result<Ctl, NetError> {
        // SAFETY: socket(2) with constant arguments; the result is checked and owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(NetError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just made and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Ctl { fd })
    }

    fn ifreq(iface: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr
            .ifr_name
            .iter_mut()
            .take(libc::IFNAMSIZ - 1)
            .zip(iface.bytes())
        {
            *d = libc::c_char::from_ne_bytes([s]);
        }
        ifr
    }

    fn ioctl_ifr(
        &self,
        what: &'static str,
        req: libc::c_ulong,
        iface: &str,
        ifr: &mut libc::ifreq,
    ) -> Result<(), NetError> {
        // SAFETY: the SIOC*IF* requests read or write one ifreq, which lives across the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), req, ifr as *mut libc::ifreq) };
        if rc < 0 {
            return Err(NetError::Ioctl {
                what,
                iface: iface.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn set_addr(
        &self,
        what: &'static str,
        req: libc::c_ulong,
        iface: &str,
        a: Ipv4Addr,
    ) -> Result<(), NetError> {
        let mut ifr = Self::ifreq(iface);
        ifr.ifr_ifru.ifru_addr = sockaddr(a);
        self.ioctl_ifr(what, req, iface, &mut ifr)
    }

    fn up(&self, iface: &str) -> Result<(), NetError> {
        let mut ifr = Self::ifreq(iface);
        self.ioctl_ifr("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, iface, &mut ifr)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        let up = libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        ifr.ifr_ifru.ifru_flags = flags | up;
        self.ioctl_ifr("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, iface, &mut ifr)
    }

    fn default_route(&self, iface: &str, gw: Ipv4Addr) -> Result<(), NetError> {
        let flags = libc::c_ushort::try_from(libc::RTF_UP | libc::RTF_GATEWAY).unwrap_or(3);
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(gw),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: flags,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: std::ptr::null_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT reads one rtentry, which lives across the call; its pointers
        // are NULL (no device name: the kernel picks the interface of the gateway).
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SIOCADDRT,
                &mut rt as *mut RtEntry,
            )
        };
        if rc < 0 {
            return Err(NetError::Ioctl {
                what: "SIOCADDRT (default route)",
                iface: iface.into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// Sets `lo` up (the kernel adds 127.0.0.1/8 to it).
pub fn loopback_up() -> Result<(), NetError> {
    Ctl::new()?.up("lo")
}

/// Configures the interface of `spec`; its name.
pub fn configure(spec: &NetSpec, sys_class_net: &Path) -> Result<String, NetError> {
    let deadline = Instant::now() + APPEAR_WAIT;
    let iface = loop {
        if let Some(i) = find_interface(sys_class_net, &spec.mac) {
            break i;
        }
        if Instant::now() > deadline {
            return Err(NetError::NotFound(format_mac(&spec.mac)));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ctl = Ctl::new()?;
    if let Some((addr, prefix)) = spec.ip {
        ctl.set_addr("SIOCSIFADDR", libc::SIOCSIFADDR, &iface, addr)?;
        ctl.set_addr(
            "SIOCSIFNETMASK",
            libc::SIOCSIFNETMASK,
            &iface,
            netmask(prefix),
        )?;
    }
    ctl.up(&iface)?;
    if let Some(gw) = spec.gw {
        ctl.default_route(&iface, gw)?;
    }
    Ok(iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_words() {
        let specs = parse_cmdline(
            "console=ttyS0 owvmm.net=06:00:00:00:00:01,169.254.77.2/24,169.254.77.1 \
             owvmm.net=02:ab:cd:ef:00:09 owvmm.net=06:00:00:00:00:02,10.0.0.2/8 \
             owvmm.net=06:00:00:00:00 owvmm.net=06:00:00:00:00:03,10.0.0.2 \
             owvmm.net=06:00:00:00:00:04,10.0.0.2/33 owvmm.net=06:00:00:00:00:05,1.2.3.4/8,x \
             owvmm.net=06:00:00:00:00:06,1.2.3.4/8,1.2.3.1,extra owvmm.net=",
        );
        assert_eq!(
            specs,
            vec![
                NetSpec {
                    mac: [6, 0, 0, 0, 0, 1],
                    ip: Some((Ipv4Addr::new(169, 254, 77, 2), 24)),
                    gw: Some(Ipv4Addr::new(169, 254, 77, 1)),
                },
                NetSpec {
                    mac: [2, 0xab, 0xcd, 0xef, 0, 9],
                    ip: None,
                    gw: None,
                },
                NetSpec {
                    mac: [6, 0, 0, 0, 0, 2],
                    ip: Some((Ipv4Addr::new(10, 0, 0, 2), 8)),
                    gw: None,
                },
            ]
        );
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(format_mac(&[6, 0, 0, 0xab, 0, 1]), "06:00:00:ab:00:01");
    }

    #[test]
    fn interface_found_by_mac() {
        let root = std::env::temp_dir().join(format!("ow-net-{}", std::process::id()));
        for (name, addr) in [
            ("lo", "00:00:00:00:00:00\n"),
            ("eth0", "06:00:00:00:00:01\n"),
        ] {
            std::fs::create_dir_all(root.join(name)).expect("mkdir");
            std::fs::write(root.join(name).join("address"), addr).expect("address");
        }
        assert_eq!(
            find_interface(&root, &[6, 0, 0, 0, 0, 1]).as_deref(),
            Some("eth0")
        );
        assert_eq!(find_interface(&root, &[6, 0, 0, 0, 0, 2]), None);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn sockaddr_layout() {
        let sa = sockaddr(Ipv4Addr::new(169, 254, 77, 2));
        assert_eq!(i32::from(sa.sa_family), libc::AF_INET);
        let bytes: Vec<u8> = sa.sa_data[..6].iter().map(|c| c.to_ne_bytes()[0]).collect();
        assert_eq!(bytes, [0, 0, 169, 254, 77, 2]);
        // The layout of <net/route.h> on x86-64.
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }
}
