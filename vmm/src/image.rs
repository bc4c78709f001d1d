//! The default guest: a Linux 6.1 kernel built from Debian's `linux-source-6.1` with the
//! config fragment and patches of `guest-kernel/` (embedded in this binary), and an
//! initramfs with busybox and the static `ow-agent`. Both are cached under
//! `~/.cache/owvmm/` (or `$OWVMM_CACHE`) by a hash of their inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use owvmm::cpio::CpioWriter;

include!(concat!(env!("OUT_DIR"), "/kernel_inputs.rs"));

/// The default kernel command line (`guest-kernel/cmdline`): neutral, right for any KVM.
/// The options this host's KVM needs are added at boot (`host_quirks::adjust_cmdline`);
/// `owvmm run --print-cmdline` shows the result.
pub fn default_cmdline() -> String {
    KERNEL_INPUTS
        .iter()
        .find(|(n, _)| *n == "cmdline")
        .map(|(_, d)| String::from_utf8_lossy(d).trim().to_string())
        .unwrap_or_else(|| "console=ttyS0 reboot=k panic=-1 quiet".into())
}

/// Errors while building or finding the default image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No home or cache directory.
    #[error(transparent)]
    NoCache(#[from] owvmm::cache::NoCache),
    /// A file operation failed.
    #[error("cannot write {0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// A build tool failed to start.
    #[error("cannot run {0}")]
    Spawn(String, #[source] std::io::Error),
    /// The kernel build failed.
    #[error("guest kernel build failed (exit {0}); see the lines above")]
    KernelBuild(i32),
    /// The agent build failed.
    #[error("ow-agent build failed (exit {0}); see the lines above")]
    AgentBuild(i32),
    /// No agent binary could be found or built.
    #[error("no ow-agent binary: pass --agent PATH, or build owvmm from its source tree")]
    NoAgent,
    /// The agent binary is not static.
    #[error("{0} is dynamically linked; the initramfs has no libc (build it with crt-static)")]
    AgentNotStatic(PathBuf),
    /// busybox is missing.
    #[error("{0} not found; install Debian's busybox-static (apt-get install busybox-static)")]
    NoBusybox(PathBuf),
    /// A package is missing and we are not root.
    #[error("missing Debian packages; run: apt-get install -y {0}")]
    MissingPackages(String),
}

/// The cache root.
pub fn cache_dir() -> Result<PathBuf, ImageError> {
    Ok(owvmm::cache::cache_dir()?)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn dpkg_version(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .ok()?;
    (out.status.success() && !out.stdout.is_empty())
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian package with the kernel source.
const SOURCE_PACKAGE: &str = "linux-source-6.1";

/// The kernel cache key: the embedded inputs and the source package version.
pub fn kernel_key() -> String {
    let mut h = Sha256::new();
    for (name, data) in KERNEL_INPUTS {
        if *name == "cmdline" {
            continue; // the command line does not change the build
        }
        h.update(name.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    h.update(dpkg_version(SOURCE_PACKAGE).unwrap_or_default());
    hex(&h.finalize())[..16].to_string()
}

/// A built default image.
#[derive(Debug, Clone)]
pub struct Image {
    /// Directory with vmlinux, bzImage, System.map, vmlinux.btf.
    pub kernel_dir: PathBuf,
    /// The uncompressed vmlinux.
    pub vmlinux: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// The initramfs with the agent alone, for guests with a root image.
    pub agent_initramfs: PathBuf,
}

/// Debian packages the build needs, with a file that proves each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("linux-source-6.1", "/usr/src/linux-source-6.1.tar.xz"),
    ("busybox-static", "/bin/busybox"),
    ("dwarves", "/usr/bin/pahole"),
    ("flex", "/usr/bin/flex"),
    ("bison", "/usr/bin/bison"),
    ("bc", "/usr/bin/bc"),
    ("libelf-dev", "/usr/include/libelf.h"),
    ("libssl-dev", "/usr/include/openssl/ssl.h"),
    ("cpio", "/usr/bin/cpio"),
    ("xz-utils", "/usr/bin/xz"),
    ("make", "/usr/bin/make"),
    ("gcc", "/usr/bin/gcc"),
];

/// Installs missing build packages when root, or names them.
pub fn ensure_packages() -> Result<(), ImageError> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, f)| !Path::new(f).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ImageError::MissingPackages(list));
    }
    eprintln!("owvmm-image: installing {list}");
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| ImageError::Spawn("apt-get".into(), e))
    };
    run(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(missing.iter());
    let st = run(&args)?;
    if !st.success() {
        return Err(ImageError::MissingPackages(list));
    }
    Ok(())
}

/// Builds the kernel (or finds it in the cache); returns its directory.
pub fn build_kernel(force: bool) -> Result<PathBuf, ImageError> {
    // The key names the source package's version: install it before reading it, or a
    // first run would build under one key and look the kernel up under another.
    if dpkg_version(SOURCE_PACKAGE).is_none() {
        ensure_packages()?;
    }
    let out = cache_dir()?.join(format!("kernel-{}", kernel_key()));
    if out.join("vmlinux").exists() && out.join("version").exists() && !force {
        return Ok(out);
    }
    ensure_packages()?;
    if force && out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| ImageError::Io(out.clone(), e))?;
    }
    let inputs = std::env::temp_dir().join(format!("owvmm-kernel-inputs-{}", std::process::id()));
    for (name, data) in KERNEL_INPUTS {
        let p = inputs.join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| ImageError::Io(d.into(), e))?;
        }
        std::fs::write(&p, data).map_err(|e| ImageError::Io(p.clone(), e))?;
    }
    eprintln!(
        "owvmm-image: building the guest kernel into {} (a few minutes)",
        out.display()
    );
    let status = Command::new("bash")
        .arg(inputs.join("build-kernel.sh"))
        .arg(&out)
        .env("OWVMM_KERNEL_INPUTS", &inputs)
        .status()
        .map_err(|e| ImageError::Spawn("bash build-kernel.sh".into(), e))?;
    let _ = std::fs::remove_dir_all(&inputs);
    if !status.success() {
        return Err(ImageError::KernelBuild(status.code().unwrap_or(-1)));
    }
    Ok(out)
}

fn is_static(path: &Path) -> bool {
    // A static ELF has no PT_INTERP program header.
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let rd = |off: usize, n: usize| -> Option<u64> {
        let b = data.get(off..off + n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd(0x20, 8), rd(0x36, 2), rd(0x38, 2))
    else {
        return false;
    };
    if !data.starts_with(b"\x7fELF") {
        return false;
    }
    (0..phnum).all(|i| {
        let off = usize::try_from(phoff + i * phentsize).unwrap_or(usize::MAX);
        rd(off, 4) != Some(3) // PT_INTERP
    })
}

/// The source tree this binary was built from, when it is still there.
fn source_tree() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    p.join("guest-agent/Cargo.toml").exists().then_some(p)
}

/// Builds the static agent from the source tree.
pub fn build_agent() -> Result<PathBuf, ImageError> {
    let src = source_tree().ok_or(ImageError::NoAgent)?;
    let target = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "ow-agent",
            "--target",
            target,
        ])
        .current_dir(&src)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // Every byte of the initramfs costs boot time here (the kernel unpacks about a MiB
        // in 2.8 s on kvm_pvm): no debug info, and built for size (1.24 MB instead of 1.54).
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .spawn()
        .map_err(|e| ImageError::Spawn("cargo".into(), e))?;
    // An agent that is up to date takes cargo a moment: say something only when it builds.
    let started = std::time::Instant::now();
    let mut said = false;
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .map_err(|e| ImageError::Spawn("cargo".into(), e))?
        {
            break st;
        }
        if !said && started.elapsed() > std::time::Duration::from_secs(2) {
            eprintln!("owvmm-image: building the static ow-agent");
            said = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if !status.success() {
        return Err(ImageError::AgentBuild(status.code().unwrap_or(-1)));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| src.join("target"));
    Ok(target_dir.join(target).join("release/ow-agent"))
}

/// Builds the initramfs for `agent` (or finds it in the cache).
pub fn build_initramfs(agent: &Path) -> Result<PathBuf, ImageError> {
    write_initramfs(agent, true)
}

/// The initramfs of a guest with a root image (`--with`): the agent alone, as the image
/// brings busybox. The kernel unpacks it at every boot, at about 2.8 s a MiB here.
pub fn build_agent_initramfs(agent: &Path) -> Result<PathBuf, ImageError> {
    write_initramfs(agent, false)
}

fn write_initramfs(agent: &Path, with_busybox: bool) -> Result<PathBuf, ImageError> {
    if !is_static(agent) {
        return Err(ImageError::AgentNotStatic(agent.into()));
    }
    let busybox = PathBuf::from("/bin/busybox");
    if with_busybox && !busybox.exists() {
        ensure_packages()?;
    }
    let agent_bytes = std::fs::read(agent).map_err(|e| ImageError::Io(agent.into(), e))?;
    let bb_bytes = if with_busybox {
        std::fs::read(&busybox).map_err(|_| ImageError::NoBusybox(busybox.clone()))?
    } else {
        Vec::new()
    };
    let mut h = Sha256::new();
    h.update(if with_busybox {
        &b"initramfs-v1"[..]
    } else {
        &b"initramfs-agent-v1"[..]
    });
    h.update(&agent_bytes);
    h.update(&bb_bytes);
    let key = &hex(&h.finalize())[..16];
    let out = cache_dir()?.join(format!("initramfs-{key}.cpio"));
    if out.exists() {
        return Ok(out);
    }
    let mut w = CpioWriter::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc",
        "etc/owvmm",
        "root",
        "run",
        "var",
    ] {
        w.dir(d);
    }
    w.chardev("dev/console", 0o600, 5, 1);
    w.chardev("dev/null", 0o666, 1, 3);
    w.chardev("dev/ttyS0", 0o600, 4, 64);
    w.chardev("dev/ttyS1", 0o600, 4, 65);
    w.file("init", 0o755, &agent_bytes);
    if with_busybox {
        let applets = Command::new(&busybox)
            .arg("--list-full")
            .output()
            .map_err(|e| ImageError::Spawn("busybox --list-full".into(), e))?;
        w.file("bin/busybox", 0o755, &bb_bytes);
        for line in String::from_utf8_lossy(&applets.stdout).lines() {
            let name = line.trim().trim_start_matches('/');
            if name.is_empty() || name == "bin/busybox" {
                continue;
            }
            w.symlink(name, "/bin/busybox");
        }
    }
    let data = w.finish();
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).map_err(|e| ImageError::Io(d.into(), e))?;
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, &data).map_err(|e| ImageError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, &out).map_err(|e| ImageError::Io(out.clone(), e))?;
    Ok(out)
}

/// The default initramfs (busybox and the agent), without building the kernel: for a
/// guest that brings its own kernel.
pub fn default_initramfs() -> Result<PathBuf, ImageError> {
    build_initramfs(&build_agent()?)
}

/// Builds (or finds) the whole default image.
pub fn build(force: bool, agent: Option<&Path>) -> Result<Image, ImageError> {
    let kernel_dir = build_kernel(force)?;
    let agent = match agent {
        Some(a) => a.to_path_buf(),
        None => build_agent()?,
    };
    let initramfs = build_initramfs(&agent)?;
    let agent_initramfs = build_agent_initramfs(&agent)?;
    Ok(Image {
        vmlinux: kernel_dir.join("vmlinux"),
        kernel_dir,
        initramfs,
        agent_initramfs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_embedded_and_key_is_stable() {
        assert!(KERNEL_INPUTS.iter().any(|(n, _)| *n == "build-kernel.sh"));
        assert!(KERNEL_INPUTS.iter().any(|(n, _)| *n == "owvmm.config"));
        assert!(KERNEL_INPUTS.iter().any(|(n, _)| n.starts_with("patches/")));
        assert_eq!(kernel_key(), kernel_key());
        assert_eq!(kernel_key().len(), 16);
        assert!(default_cmdline().contains("console=ttyS0"));
    }

    #[test]
    fn static_check_reads_program_headers() {
        // This test binary itself is dynamically linked.
        let me = std::env::current_exe().expect("exe");
        assert!(!is_static(&me));
        assert!(!is_static(Path::new("/nonexistent")));
    }

    #[test]
    fn the_default_command_line_is_neutral() {
        let d = default_cmdline();
        assert!(d.contains("console=ttyS0"), "{d}");
        assert!(
            owvmm::host_quirks::missing_options(owvmm::host_quirks::HostKvm::Pvm, &d).len()
                == owvmm::host_quirks::PVM_CMDLINE.len(),
            "{d}"
        );
        for w in [
            "clearcpuid",
            "noxsave",
            "GLIBC_TUNABLES",
            "owvmm.pvm_quirks",
            "kvm-hypercalls",
        ] {
            assert!(!d.contains(w), "{w} in the default command line: {d}");
        }
    }
}
