//! The crash kernel's warm standby: a snapshot of a freshly booted guest (agent ready,
//! nothing else running) with the same kernel, memory size and vCPU count as the guest it
//! stands in for. Prepared once per shape by booting a second `owvmm run` and snapshotting
//! it, and cached under `~/.cache/owvmm/standby-<key>`, so a microreboot never cold-boots.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::client::Client;

/// What a standby is made of.
#[derive(Debug, Clone)]
pub struct StandbySpec {
    /// vmlinux or bzImage.
    pub kernel: PathBuf,
    /// The initramfs (the base image: no `--add` files, no `--exec` programs).
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// vCPU count.
    pub vcpus: u8,
}

/// Errors of standby preparation.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    /// The cache directory is unknown.
    #[error("no cache directory")]
    Cache(#[source] crate::cache::NoCache),
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    /// The standby guest did not come up.
    #[error("the standby guest {0}")]
    Boot(String),
    /// The control socket failed.
    #[error("standby control socket")]
    Client(#[source] crate::api::client::ClientError),
}

/// How long a standby cold boot may take (guest kernels are slow on this host's KVM).
const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);

impl StandbySpec {
    /// The cache key: what the standby is built from (file identities, not contents, to
    /// stay cheap; image files are themselves content-addressed in the cache).
    pub fn key(&self) -> String {
        let mut h = Sha256::new();
        for p in std::iter::once(&self.kernel).chain(self.initrd.as_ref()) {
            h.update(p.display().to_string().as_bytes());
            if let Ok(m) = std::fs::metadata(p) {
                h.update(m.len().to_le_bytes());
                if let Ok(t) = m.modified() {
                    h.update(format!("{t:?}").as_bytes());
                }
            }
            h.update([0]);
        }
        h.update(self.guest_cmdline().as_bytes());
        h.update(self.mem_mib.to_le_bytes());
        h.update([self.vcpus]);
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        h.update(crate::snapshot::VERSION.to_le_bytes());
        let d = h.finalize();
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Where this standby is cached.
    pub fn dir(&self) -> Result<PathBuf, StandbyError> {
        let cache = crate::cache::cache_dir().map_err(StandbyError::Cache)?;
        Ok(cache.join(format!(
            "standby-{}m-{}c-{}",
            self.mem_mib,
            self.vcpus,
            self.key()
        )))
    }

    /// The cached standby, if it exists and reads back.
    pub fn cached(&self) -> Option<PathBuf> {
        let dir = self.dir().ok()?;
        crate::snapshot::read(&dir).ok().map(|_| dir)
    }

    /// Returns the cached standby, or boots one and caches it (one preparer per standby at a
    /// time; others wait). `log` gets progress lines.
    pub fn prepare(&self, log: &mut dyn FnMut(&str)) -> Result<PathBuf, StandbyError> {
        if let Some(d) = self.cached() {
            return Ok(d);
        }
        let dir = self.dir()?;
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| StandbyError::Io(format!("cannot create {}", parent.display()), e))?;
        let lock_path = dir.with_extension("lock");
        let lock = std::fs::File::create(&lock_path)
            .map_err(|e| StandbyError::Io(format!("cannot create {}", lock_path.display()), e))?;
        // SAFETY: flock on a file descriptor this function owns; blocks until the lock is
        // free, released when `lock` is dropped.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if let Some(d) = self.cached() {
            return Ok(d);
        }
        log(&format!(
            "preparing the crash kernel's standby ({} MiB, {} vCPUs): one cold boot, cached in {}",
            self.mem_mib,
            self.vcpus,
            dir.display()
        ));
        let t0 = Instant::now();
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .map_err(|e| StandbyError::Io(format!("cannot create {}", tmp.display()), e))?;
        let sock = tmp.join("api.sock");
        let mut child = self.spawn(&tmp, &sock)?;
        // Why it failed is the last thing the standby's owvmm said.
        let r = wait_and_snapshot(&mut child, &sock, &tmp.join("snap")).map_err(|e| match e {
            StandbyError::Boot(what) => {
                let said = std::fs::read_to_string(tmp.join("stderr.log")).unwrap_or_default();
                match said.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
                    Some(last) => {
                        let last = last.strip_prefix("owvmm: error: ").unwrap_or(last);
                        StandbyError::Boot(format!("{what}: {last}"))
                    }
                    None => StandbyError::Boot(what),
                }
            }
            other => other,
        });
        let _ = child.kill();
        let _ = child.wait();
        r?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(tmp.join("snap"), &dir).map_err(|e| {
            StandbyError::Io(format!("cannot move the standby to {}", dir.display()), e)
        })?;
        let _ = std::fs::remove_dir_all(&tmp);
        log(&format!(
            "standby ready after {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
        Ok(dir)
    }

    /// The standby's kernel command line: the guest's, the agent told it is a standby, and
    /// every virtio-mmio slot. The standby has no devices, so the driver finds nothing
    /// there and leaves each slot's platform device unbound; after a crash, the crash
    /// kernel's agent binds the slots of the VM's devices, and the driver then reads them
    /// afresh (`disk` requests, docs/design.md).
    fn guest_cmdline(&self) -> String {
        let mut c = format!("{} OW_AGENT_STANDBY=1", self.cmdline);
        for (base, irq) in
            (0..crate::devices::virtio::MAX_DEVICES).filter_map(crate::devices::virtio::slot)
        {
            c.push(' ');
            c.push_str(&crate::devices::virtio::cmdline_option(base, irq));
        }
        c
    }

    fn spawn(&self, tmp: &Path, sock: &Path) -> Result<Child, StandbyError> {
        let exe = std::env::current_exe()
            .map_err(|e| StandbyError::Io("cannot find the owvmm executable".into(), e))?;
        let console = std::fs::File::create(tmp.join("console.log"))
            .map_err(|e| StandbyError::Io("cannot create the standby's console log".into(), e))?;
        let stderr = std::fs::File::create(tmp.join("stderr.log"))
            .map_err(|e| StandbyError::Io("cannot create the standby's log".into(), e))?;
        let mut cmd = Command::new(exe);
        // The agent learns from its environment (the kernel hands unknown KEY=VALUE words
        // of the command line to init) that it is a standby: it then keeps the PIDs from
        // 1000 up free for the processes it will take in.
        cmd.arg("run")
            .arg("--kernel")
            .arg(&self.kernel)
            .arg("--cmdline")
            .arg(self.guest_cmdline())
            .arg("--mem")
            .arg(self.mem_mib.to_string())
            .arg("--vcpus")
            .arg(self.vcpus.to_string())
            .arg("--api-sock")
            .arg(sock)
            .args(["--on-crash", "exit", "--hang-timeout", "0"]);
        if let Some(i) = &self.initrd {
            cmd.arg("--initrd").arg(i);
        }
        // SAFETY: the closure runs in the child between fork and exec and only makes one
        // async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| {
                // The standby guest must not outlive the owvmm that wanted it.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(stderr))
            .spawn()
            .map_err(|e| StandbyError::Io("cannot start the standby guest".into(), e))
    }
}

/// Waits until the standby's agent is ready, then snapshots it into `snap`.
fn wait_and_snapshot(child: &mut Child, sock: &Path, snap: &Path) -> Result<(), StandbyError> {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StandbyError::Boot(format!("exited early ({status})")));
        }
        if t0.elapsed() > BOOT_TIMEOUT {
            return Err(StandbyError::Boot(format!(
                "was not ready after {} s",
                BOOT_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
        let Ok(mut c) = Client::connect(sock) else {
            continue;
        };
        let Ok(st) = c.call(&json!({"cmd": "status"})) else {
            continue;
        };
        if st["agent"]["ready"] == json!(true) {
            let r = c
                .call(&json!({"cmd": "snapshot", "dir": snap.display().to_string()}))
                .map_err(StandbyError::Client)?;
            if r["ok"] != json!(true) {
                return Err(StandbyError::Boot(format!("could not be snapshotted: {r}")));
            }
            let _ = c.call(&json!({"cmd": "stop"}));
            return Ok(());
        }
    }
}

/// Prints progress on stderr, prefixed.
pub fn log_stderr(line: &str) {
    let _ = writeln!(std::io::stderr(), "owvmm: {line}");
}
