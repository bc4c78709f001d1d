//! A network namespace of the bench's own with a tap in it, for guests with `--net`: the
//! VMMs run inside it (`ip netns exec`), the bench's own connections are made in it, and
//! only link-local addresses are used, so nothing leaves it.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::proc::run_ok;

/// A network namespace holding one tap (with the host side's address), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `owvmm-bench-<what><pid>` (an old one of that name is deleted
    /// first) with tap `tap` at `host_cidr`, up. `host_cidr` must be link-local
    /// (169.254.0.0/16).
    pub fn new(what: &str, tap: &str, host_cidr: &str) -> Result<Netns> {
        debug_assert!(host_cidr.starts_with("169.254."));
        let name = format!("owvmm-bench{what}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Netns { name };
        let n = ns.name.as_str();
        for args in [
            vec!["netns", "add", n],
            vec!["-n", n, "tuntap", "add", "dev", tap, "mode", "tap"],
            vec!["-n", n, "addr", "add", host_cidr, "dev", tap],
            vec!["-n", n, "link", "set", tap, "up"],
        ] {
            run_ok("ip", &args)?;
        }
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to be run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// A TCP connection made from inside the namespace: the socket is created there (the
    /// calling thread enters the namespace for the `connect` and goes back; a socket stays
    /// in the namespace it was created in).
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        let target = File::open(format!("/run/netns/{}", self.name))?;
        let home = File::open("/proc/thread-self/ns/net")?;
        enter(&target)?;
        let r = TcpStream::connect_timeout(&addr, timeout);
        // Going back cannot fail for a namespace we were in a moment ago, short of the
        // kernel refusing; then the bench must not go on in the wrong namespace.
        enter(&home).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot go back to the bench's own network namespace: {e}"),
            )
        })?;
        r
    }
}

/// setns(2) of the calling thread into the network namespace `ns` refers to.
fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns only reads its two integer arguments; `ns` is an open file that
    // outlives the call, and a bad descriptor or type is reported through errno.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    /// Needs root and iproute2: `cargo test -p owvmm-benches -- --ignored netns`.
    #[test]
    #[ignore = "needs root (ip netns)"]
    fn netns_connections_are_made_inside() {
        let home = std::fs::read_link("/proc/thread-self/ns/net").expect("own namespace");
        let ns = Netns::new("-test", "owt0", "169.254.81.1/24").expect("netns");
        // Connections to the namespace's own address go through its loopback.
        run_ok("ip", &["-n", ns.name(), "link", "set", "lo", "up"]).expect("lo up");
        let mut srv = ns
            .cmd("busybox")
            .args(["nc", "-l", "-p", "7077", "-e", "echo", "hi"])
            .spawn()
            .expect("nc");
        let addr: SocketAddr = "169.254.81.1:7077".parse().expect("addr");
        let mut got = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = ns.connect(addr, Duration::from_millis(200)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read_to_string(&mut got);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = srv.kill();
        let _ = srv.wait();
        assert_eq!(got.trim(), "hi");
        // Back in the bench's own namespace.
        let now = std::fs::read_link("/proc/thread-self/ns/net").expect("own namespace");
        assert_eq!(home, now);
    }
}
