//! Root images from Debian packages (`owvmm image build --with`, `owvmm run --with`).
//!
//! The packages and their dependencies are resolved by apt against an empty package
//! database (so the closure is whole, whatever the host has installed), downloaded with
//! `apt-get download`, unpacked with `dpkg-deb` into a usr-merged tree with busybox for the
//! commands no package brings, and written into an ext4 image with `mkfs.ext4 -d`. No
//! maintainer script runs: the programs are run by path, as root. The image is cached
//! under `~/.cache/owvmm/root-<key>.ext4`, keyed by the resolved package versions and
//! busybox, and attached read-only; the agent merges it into the guest's root
//! (guest-agent/src/agent/root.rs).

use std::io::Read as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest, Sha256};

/// Bump when the layout of the images changes.
const FORMAT: &str = "root-v2";
/// Always in the set: `usr-is-merged` (our tree is usr-merged, and it satisfies the
/// packages that ask for `usrmerge | usr-is-merged` without pulling in perl for
/// `usrmerge`), and `dash` for `/bin/sh`: Debian's busybox shell runs its own applets in
/// preference to the programs on PATH, so with it as `/bin/sh` an `--exec 'vi f'` would
/// get busybox's vi rather than the package's.
const IMPLIED: &[&str] = &["usr-is-merged", "dash"];
/// Top-level links of a usr-merged Debian root.
const MERGED: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];
/// Directories the guest mounts over or writes to.
const SKELETON: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "etc",
    "root",
    "var/tmp",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/lib64",
];
/// Most packages one image may hold (a bound on what apt's answer makes us do).
const MAX_PACKAGES: usize = 2000;

/// Why a root image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A name that cannot be a Debian package.
    #[error("--with {0:?}: not a Debian package name")]
    BadName(String),
    /// apt does not know the package.
    #[error("Debian has no package {0:?} (apt-get: {1})")]
    UnknownPackage(String, String),
    /// apt could not resolve the set.
    #[error("apt-get cannot install {pkgs}: {said}")]
    Unresolvable {
        /// The packages asked for.
        pkgs: String,
        /// What apt said last.
        said: String,
    },
    /// More packages than an image may hold.
    #[error("{0} packages: an image holds at most {MAX_PACKAGES}")]
    TooMany(usize),
    /// A tool did not start.
    #[error("cannot run {0}")]
    Spawn(&'static str, #[source] std::io::Error),
    /// A tool failed.
    #[error("{tool} failed: {said}")]
    Tool {
        /// Which.
        tool: &'static str,
        /// Its last line of output, or its exit status.
        said: String,
    },
    /// A file operation failed.
    #[error("{0}")]
    Io(PathBuf, #[source] std::io::Error),
    /// The cache directory is unknown.
    #[error(transparent)]
    Cache(#[from] owvmm::cache::NoCache),
    /// Root is needed to update the package lists.
    #[error(
        "Debian has no package {0:?} in this host's package lists; run apt-get update (as root)"
    )]
    StaleLists(String),
}

/// A package and the version apt chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Package name.
    pub name: String,
    /// Its version (with epoch).
    pub version: String,
}

/// Splits `--with` values at commas, checks each name, and sorts the set.
pub fn parse_packages(args: &[String]) -> Result<Vec<String>, RootfsError> {
    let mut out: Vec<String> = Vec::new();
    for a in args {
        for p in a.split(',').map(str::trim) {
            if p.is_empty() {
                continue;
            }
            let ok = p.len() <= 100
                && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
                && p.len() >= 2;
            if !ok {
                return Err(RootfsError::BadName(p.to_owned()));
            }
            out.push(p.to_owned());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The `Inst NAME (VERSION ...` lines of `apt-get install -s`.
pub fn parse_simulation(out: &str) -> Vec<Resolved> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let version = rest.strip_prefix('(')?.split(' ').next()?;
            Some(Resolved {
                name: name.to_owned(),
                version: version.to_owned(),
            })
        })
        .collect()
}

/// The package named by apt's "Unable to locate package X" or "Package 'X' has no
/// installation candidate".
fn unknown_package(said: &str) -> Option<String> {
    said.lines().find_map(|l| {
        if let Some(p) = l.split("Unable to locate package ").nth(1) {
            return Some(p.trim().to_owned());
        }
        let p = l.strip_prefix("E: Package '")?;
        let (name, rest) = p.split_once('\'')?;
        rest.contains("no installation candidate")
            .then(|| name.to_owned())
    })
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned()
}

/// Runs `cmd` to its end (stdin from /dev/null); a failure names `tool` and the last line
/// it wrote on stderr.
fn run_tool(cmd: &mut Command, tool: &'static str) -> Result<std::process::Output, RootfsError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| RootfsError::Spawn(tool, e))?;
    if !out.status.success() {
        return Err(RootfsError::Tool {
            tool,
            said: last_line(&String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(out)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Are the host's package lists missing or more than a day old? (Then a package apt does
/// not know may be new, and is worth one `apt-get update`.)
fn lists_are_old() -> bool {
    let newest = std::fs::read_dir("/var/lib/apt/lists")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    newest
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age > std::time::Duration::from_secs(24 * 3600))
}

/// The options that make apt-get act as if nothing were installed, without locks.
fn apt_isolated(status: &Path) -> Vec<String> {
    vec![
        "-o".into(),
        format!("Dir::State::status={}", status.display()),
        "-o".into(),
        "Debug::NoLocking=1".into(),
        "-o".into(),
        "APT::Sandbox::User=root".into(),
    ]
}

/// Resolves `pkgs` and their dependencies (no recommends) into exact versions.
pub fn resolve(pkgs: &[String], log: &mut dyn FnMut(&str)) -> Result<Vec<Resolved>, RootfsError> {
    let cache = owvmm::cache::cache_dir()?;
    std::fs::create_dir_all(&cache).map_err(|e| RootfsError::Io(cache.clone(), e))?;
    let status = cache.join("apt-empty-status");
    std::fs::write(&status, b"").map_err(|e| RootfsError::Io(status.clone(), e))?;
    let mut updated = false;
    loop {
        let out = Command::new("apt-get")
            .args(["install", "-s", "-qq", "--no-install-recommends"])
            .args(apt_isolated(&status))
            .args(pkgs)
            .args(IMPLIED)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| RootfsError::Spawn("apt-get", e))?;
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            let r = parse_simulation(&String::from_utf8_lossy(&out.stdout));
            if r.len() > MAX_PACKAGES {
                return Err(RootfsError::TooMany(r.len()));
            }
            return Ok(r);
        }
        match unknown_package(&said) {
            Some(p) if !updated && is_root() && lists_are_old() => {
                log(&format!(
                    "apt does not know {p:?}: updating the package lists once"
                ));
                let st = Command::new("apt-get")
                    .args(["update", "-qq"])
                    .stdout(Stdio::null())
                    .status()
                    .map_err(|e| RootfsError::Spawn("apt-get", e))?;
                if !st.success() {
                    return Err(RootfsError::Tool {
                        tool: "apt-get update",
                        said: st.to_string(),
                    });
                }
                updated = true;
            }
            Some(p) if !is_root() && lists_are_old() => return Err(RootfsError::StaleLists(p)),
            Some(p) => return Err(RootfsError::UnknownPackage(p, last_line(&said))),
            None => {
                return Err(RootfsError::Unresolvable {
                    pkgs: pkgs.join(","),
                    said: last_line(&said),
                })
            }
        }
    }
}

/// [`resolve`], remembered until the host's package lists change (apt takes seconds to
/// answer, and `run --with` asks at every start).
pub fn resolve_cached(
    pkgs: &[String],
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Resolved>, RootfsError> {
    let mut h = Sha256::new();
    h.update(FORMAT);
    for p in pkgs {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let mut lists: Vec<_> = std::fs::read_dir("/var/lib/apt/lists")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some(format!(
                "{}:{}:{:?}",
                e.file_name().to_string_lossy(),
                m.len(),
                m.modified().ok()
            ))
        })
        .collect();
    lists.sort();
    for l in lists {
        h.update(l.as_bytes());
    }
    let key: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = owvmm::cache::cache_dir()?.join(format!("resolved-{key}"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let set: Vec<Resolved> = text
            .lines()
            .take(MAX_PACKAGES)
            .filter_map(|l| {
                let (name, version) = l.split_once('=')?;
                Some(Resolved {
                    name: name.to_owned(),
                    version: version.to_owned(),
                })
            })
            .collect();
        if !set.is_empty() {
            return Ok(set);
        }
    }
    let set = resolve(pkgs, log)?;
    let text: String = set
        .iter()
        .map(|r| format!("{}={}\n", r.name, r.version))
        .collect();
    let tmp = path.with_extension("tmp");
    // A cache that cannot be written only costs the next run a few seconds.
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
    Ok(set)
}

/// The cache key of an image of `set` with `busybox`.
pub fn image_key(set: &[Resolved], busybox: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT);
    let mut lines: Vec<String> = set
        .iter()
        .map(|r| format!("{}={}\n", r.name, r.version))
        .collect();
    lines.sort();
    for l in lines {
        h.update(l.as_bytes());
    }
    h.update(busybox);
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A `.deb` file name as `apt-get download` writes it: `name_version_arch.deb`, with the
/// epoch's colon written `%3a`.
fn deb_prefix(r: &Resolved) -> String {
    format!("{}_{}_", r.name, r.version.replace(':', "%3a"))
}

fn find_deb(dir: &Path, r: &Resolved) -> Option<PathBuf> {
    let prefix = deb_prefix(r);
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        (n.starts_with(&prefix) && n.ends_with(".deb")).then(|| e.path())
    })
}

/// Builds (or finds in the cache) the root image with `pkgs`; `log` gets progress.
pub fn build(pkgs: &[String], log: &mut dyn FnMut(&str)) -> Result<PathBuf, RootfsError> {
    let busybox_path = Path::new("/bin/busybox");
    if !busybox_path.exists() {
        crate::image::ensure_packages().map_err(|e| RootfsError::Tool {
            tool: "apt-get install busybox-static",
            said: owvmm::error_chain(&e),
        })?;
    }
    let busybox =
        std::fs::read(busybox_path).map_err(|e| RootfsError::Io(busybox_path.into(), e))?;
    let set = resolve_cached(pkgs, log)?;
    let cache = owvmm::cache::cache_dir()?;
    let key = image_key(&set, &busybox);
    let out = cache.join(format!("root-{key}.ext4"));
    if out.exists() {
        return Ok(out);
    }
    let lock_path = out.with_extension("lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| RootfsError::Io(lock_path.clone(), e))?;
    // SAFETY: flock on a descriptor this function owns; blocks until another builder of
    // the same image is done, released when `lock` is dropped.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if out.exists() {
        return Ok(out);
    }
    let t0 = Instant::now();
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| RootfsError::Io(debs.clone(), e))?;
    download(&set, &debs, log)?;
    let staging = out.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&staging);
    let r = (|| {
        unpack(&set, &debs, &staging, log)?;
        add_alternatives(&set, &debs, &staging)?;
        add_busybox(&staging, &busybox)?;
        add_basics(&staging)?;
        make_ext4(&staging, &out, log)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    r?;
    log(&format!(
        "root image with {} packages ready after {:.1} s: {}",
        set.len(),
        t0.elapsed().as_secs_f64(),
        out.display()
    ));
    Ok(out)
}

fn download(set: &[Resolved], debs: &Path, log: &mut dyn FnMut(&str)) -> Result<(), RootfsError> {
    let missing: Vec<&Resolved> = set.iter().filter(|r| find_deb(debs, r).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    log(&format!(
        "downloading {} of {} Debian packages into {}",
        missing.len(),
        set.len(),
        debs.display()
    ));
    let status = debs.join("../apt-empty-status");
    // Batches keep each command line short and show progress on big sets.
    for (i, chunk) in missing.chunks(16).enumerate() {
        run_tool(
            Command::new("apt-get")
                .args(["download", "-qq"])
                .args(apt_isolated(&status))
                .args(chunk.iter().map(|r| format!("{}={}", r.name, r.version)))
                .current_dir(debs)
                .env("LC_ALL", "C"),
            "apt-get download",
        )?;
        let done = ((i + 1) * 16).min(missing.len());
        if missing.len() > 16 {
            log(&format!("downloaded {done}/{}", missing.len()));
        }
    }
    for r in set {
        if find_deb(debs, r).is_none() {
            return Err(RootfsError::Tool {
                tool: "apt-get download",
                said: format!("no .deb for {}={} after it", r.name, r.version),
            });
        }
    }
    Ok(())
}

fn unpack(
    set: &[Resolved],
    debs: &Path,
    staging: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(), RootfsError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| RootfsError::Io(p, e)
    };
    for d in SKELETON {
        let p = staging.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    for (link, to) in MERGED {
        let p = staging.join(link);
        std::os::unix::fs::symlink(to, &p).map_err(io(&p))?;
    }
    log(&format!("unpacking {} packages", set.len()));
    for r in set {
        let deb = find_deb(debs, r).ok_or_else(|| RootfsError::Tool {
            tool: "apt-get download",
            said: format!("no .deb for {}", r.name),
        })?;
        let mut data = Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(&deb)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| RootfsError::Spawn("dpkg-deb", e))?;
        let Some(stdout) = data.stdout.take() else {
            return Err(RootfsError::Tool {
                tool: "dpkg-deb",
                said: "no output pipe".into(),
            });
        };
        // --keep-directory-symlink: a package's /bin/x lands in usr/bin through our link.
        let tar = Command::new("tar")
            .args(["-x", "--keep-directory-symlink", "--no-same-owner", "-C"])
            .arg(staging)
            .stdin(Stdio::from(stdout))
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| RootfsError::Spawn("tar", e))?;
        let mut said = String::new();
        if let Some(mut e) = data.stderr.take() {
            let _ = e.read_to_string(&mut said);
        }
        let st = data.wait().map_err(|e| RootfsError::Spawn("dpkg-deb", e))?;
        if !st.success() || !tar.status.success() {
            let said = if said.trim().is_empty() {
                String::from_utf8_lossy(&tar.stderr).into_owned()
            } else {
                said
            };
            return Err(RootfsError::Tool {
                tool: "dpkg-deb | tar",
                said: format!("{}: {}", deb.display(), last_line(&said)),
            });
        }
    }
    Ok(())
}

/// One `update-alternatives --install LINK NAME PATH PRIORITY` of a maintainer script,
/// with its `--slave LINK NAME PATH`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    /// The generic name (`vi`).
    pub name: String,
    /// The link (`/usr/bin/vi`).
    pub link: String,
    /// What it points to (`/usr/bin/vim.nox`).
    pub path: String,
    /// Higher wins.
    pub priority: i64,
    /// (name, link, path) of the links that follow it.
    pub slaves: Vec<(String, String, String)>,
}

/// The alternatives that a `postinst` script installs. Lines continued with `\` are
/// joined; an argument with a shell expansion in it makes its entry unknowable, and it is
/// skipped.
pub fn parse_alternatives(script: &str) -> Vec<Alternative> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(start) = words.iter().position(|w| *w == "update-alternatives") else {
            continue;
        };
        let w = &words[start + 1..];
        let mut i = 0;
        let mut cur: Option<Alternative> = None;
        while i < w.len() {
            let plain = |k: usize| {
                w.get(k)
                    .filter(|s| !s.contains(['$', '`', '"', '\'']))
                    .copied()
            };
            match w[i] {
                "--install" => {
                    if let Some(a) = cur.take() {
                        out.push(a);
                    }
                    if let (Some(link), Some(name), Some(path), Some(prio)) =
                        (plain(i + 1), plain(i + 2), plain(i + 3), plain(i + 4))
                    {
                        if let Ok(priority) = prio.parse() {
                            cur = Some(Alternative {
                                name: name.into(),
                                link: link.into(),
                                path: path.into(),
                                priority,
                                slaves: Vec::new(),
                            });
                        }
                    }
                    i += 5;
                }
                "--slave" => {
                    if let (Some(a), Some(link), Some(name), Some(path)) =
                        (cur.as_mut(), plain(i + 1), plain(i + 2), plain(i + 3))
                    {
                        a.slaves.push((name.into(), link.into(), path.into()));
                    }
                    i += 4;
                }
                ";" | "&&" | "||" | "then" | "fi" => break,
                _ => i += 1,
            }
        }
        out.extend(cur);
    }
    out
}

/// What `update-alternatives` would have linked in the packages' maintainer scripts
/// (`/usr/bin/vi`, `/usr/bin/awk`, `/bin/nc`): for each name the entry of highest
/// priority whose target exists, linked through `/etc/alternatives` as dpkg does.
fn add_alternatives(set: &[Resolved], debs: &Path, staging: &Path) -> Result<(), RootfsError> {
    let mut best: std::collections::BTreeMap<String, Alternative> = Default::default();
    for r in set {
        let Some(deb) = find_deb(debs, r) else {
            continue;
        };
        let out = Command::new("dpkg-deb")
            .args(["--info"])
            .arg(&deb)
            .arg("postinst")
            .stderr(Stdio::null())
            .output()
            .map_err(|e| RootfsError::Spawn("dpkg-deb", e))?;
        if !out.status.success() {
            continue; // no postinst
        }
        for a in parse_alternatives(&String::from_utf8_lossy(&out.stdout)) {
            if std::fs::metadata(staging.join(merged_path(&a.path))).is_err() {
                continue;
            }
            if best.get(&a.name).is_none_or(|b| a.priority > b.priority) {
                best.insert(a.name.clone(), a);
            }
        }
    }
    let alt_dir = staging.join("etc/alternatives");
    std::fs::create_dir_all(&alt_dir).map_err(|e| RootfsError::Io(alt_dir.clone(), e))?;
    for a in best.values() {
        let links = std::iter::once((a.name.clone(), a.link.clone(), a.path.clone()))
            .chain(a.slaves.iter().cloned());
        for (name, link, path) in links {
            let rel = merged_path(&link);
            if name.contains('/') || rel.contains("..") || !path.starts_with('/') {
                continue;
            }
            let (l, via) = (staging.join(&rel), alt_dir.join(&name));
            if std::fs::symlink_metadata(&l).is_ok() || std::fs::symlink_metadata(&via).is_ok() {
                continue;
            }
            if let Some(d) = l.parent() {
                std::fs::create_dir_all(d).map_err(|e| RootfsError::Io(d.into(), e))?;
            }
            std::os::unix::fs::symlink(&path, &via).map_err(|e| RootfsError::Io(via.clone(), e))?;
            std::os::unix::fs::symlink(format!("/etc/alternatives/{name}"), &l)
                .map_err(|e| RootfsError::Io(l.clone(), e))?;
        }
    }
    Ok(())
}

/// Where a path of `busybox --list-full` lands in a usr-merged tree.
fn merged_path(p: &str) -> String {
    let p = p.trim_start_matches('/');
    for (link, to) in MERGED {
        if let Some(rest) = p.strip_prefix(&format!("{link}/")) {
            return format!("{to}/{rest}");
        }
    }
    p.to_owned()
}

/// busybox at /usr/bin/busybox, linked from each of its commands that no package brought.
fn add_busybox(staging: &Path, busybox: &[u8]) -> Result<(), RootfsError> {
    let bb = staging.join("usr/bin/busybox");
    std::fs::write(&bb, busybox).map_err(|e| RootfsError::Io(bb.clone(), e))?;
    std::fs::set_permissions(&bb, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| RootfsError::Io(bb.clone(), e))?;
    let out = Command::new(&bb)
        .arg("--list-full")
        .output()
        .map_err(|e| RootfsError::Spawn("busybox --list-full", e))?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let rel = merged_path(applet.trim());
        if rel.is_empty() || rel == "usr/bin/busybox" || rel.contains("..") {
            continue;
        }
        let p = staging.join(&rel);
        if std::fs::symlink_metadata(&p).is_ok() {
            continue; // a package's own program wins
        }
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| RootfsError::Io(d.into(), e))?;
        }
        std::os::unix::fs::symlink("/usr/bin/busybox", &p)
            .map_err(|e| RootfsError::Io(p.clone(), e))?;
    }
    Ok(())
}

/// What maintainer scripts would have made and programs look for: users, hosts, and the
/// dynamic linker's cache.
fn add_basics(staging: &Path) -> Result<(), RootfsError> {
    let files: &[(&str, &str)] = &[
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        ("etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
        ("etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n"),
    ];
    for (rel, text) in files {
        let p = staging.join(rel);
        if !p.exists() {
            std::fs::write(&p, text).map_err(|e| RootfsError::Io(p.clone(), e))?;
        }
    }
    run_tool(Command::new("ldconfig").arg("-r").arg(staging), "ldconfig").map(drop)
}

/// Bytes and inodes under `dir` (not following links).
fn tree_size(dir: &Path) -> std::io::Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.metadata()?;
            inodes += 1;
            bytes += m.len().div_ceil(4096) * 4096;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, inodes))
}

fn make_ext4(staging: &Path, out: &Path, log: &mut dyn FnMut(&str)) -> Result<(), RootfsError> {
    let (bytes, inodes) = tree_size(staging).map_err(|e| RootfsError::Io(staging.into(), e))?;
    // Room for metadata, and a little slack; read-only, so no journal.
    let size_k = (bytes + inodes * 512) / 1024 * 5 / 4 + 16 * 1024;
    log(&format!(
        "writing the ext4 image ({} MiB of files, {inodes} inodes)",
        bytes >> 20
    ));
    let tmp = out.with_extension("ext4.tmp");
    let _ = std::fs::remove_file(&tmp);
    let made = run_tool(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "owvmm-root", "-O", "^has_journal", "-N"])
            .arg((inodes + 1024).to_string())
            .args(["-E", "root_owner=0:0", "-d"])
            .arg(staging)
            .arg(&tmp)
            .arg(format!("{size_k}k")),
        "mkfs.ext4",
    );
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made?;
    std::fs::rename(&tmp, out).map_err(|e| RootfsError::Io(out.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_split_checked_and_sorted() {
        let p =
            parse_packages(&["redis-server,sqlite3".into(), "g++, sqlite3".into()]).expect("ok");
        assert_eq!(p, ["g++", "redis-server", "sqlite3"]);
        for bad in ["Redis", "-x", "a b", "x/y", "x;rm", "a"] {
            assert!(
                matches!(parse_packages(&[bad.into()]), Err(RootfsError::BadName(_))),
                "{bad}"
            );
        }
        assert!(parse_packages(&[",,".into()]).expect("ok").is_empty());
    }

    #[test]
    fn apt_simulation_lines_give_names_and_versions() {
        let out = "NOTE: This is only a simulation!\n\
                   Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []\n\
                   Inst redis-server (5:7.0.15-1~deb12u10 Debian-Security:12 [amd64])\n\
                   Conf libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64])\n\
                   Inst broken\n";
        assert_eq!(
            parse_simulation(out),
            vec![
                Resolved {
                    name: "libc6".into(),
                    version: "2.36-9+deb12u14".into()
                },
                Resolved {
                    name: "redis-server".into(),
                    version: "5:7.0.15-1~deb12u10".into()
                },
            ]
        );
    }

    #[test]
    fn apt_errors_name_the_package() {
        assert_eq!(
            unknown_package("Reading...\nE: Unable to locate package nosuchpkg\n").as_deref(),
            Some("nosuchpkg")
        );
        assert_eq!(
            unknown_package("E: Package 'python' has no installation candidate\n").as_deref(),
            Some("python")
        );
        assert_eq!(unknown_package("E: Broken packages\n"), None);
    }

    #[test]
    fn keys_follow_versions_not_order() {
        let a = Resolved {
            name: "a".into(),
            version: "1".into(),
        };
        let b = Resolved {
            name: "b".into(),
            version: "2".into(),
        };
        let b3 = Resolved {
            version: "3".into(),
            ..b.clone()
        };
        assert_eq!(
            image_key(&[a.clone(), b.clone()], b"bb"),
            image_key(&[b.clone(), a.clone()], b"bb")
        );
        assert_ne!(
            image_key(&[a.clone(), b], b"bb"),
            image_key(&[a.clone(), b3], b"bb")
        );
        assert_ne!(
            image_key(std::slice::from_ref(&a), b"bb"),
            image_key(&[a], b"bb2")
        );
    }

    #[test]
    fn alternatives_of_maintainer_scripts() {
        let script = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n\
            update-alternatives --install /usr/bin/vi vi /usr/bin/vim.nox 40 \\\n\
              --slave /usr/share/man/man1/vi.1.gz vi.1.gz /usr/share/man/man1/vim.1.gz\n\
            update-alternatives --install /usr/bin/rvim rvim /usr/bin/vim.nox 40\n\
            update-alternatives --install \"$LINK\" x /usr/bin/x 10\n\
            update-alternatives --install /bin/nc nc /bin/nc.openbsd oops\n\
            update-alternatives --remove vi /usr/bin/vim.basic\n\
            fi\n";
        let a = parse_alternatives(script);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(
            (
                a[0].name.as_str(),
                a[0].link.as_str(),
                a[0].path.as_str(),
                a[0].priority
            ),
            ("vi", "/usr/bin/vi", "/usr/bin/vim.nox", 40)
        );
        assert_eq!(
            a[0].slaves,
            [(
                "vi.1.gz".to_string(),
                "/usr/share/man/man1/vi.1.gz".to_string(),
                "/usr/share/man/man1/vim.1.gz".to_string()
            )]
        );
        assert_eq!(a[1].name, "rvim");
        assert!(a[1].slaves.is_empty());
    }

    #[test]
    fn busybox_paths_land_in_the_merged_tree() {
        assert_eq!(merged_path("/bin/ash"), "usr/bin/ash");
        assert_eq!(merged_path("sbin/ifconfig"), "usr/sbin/ifconfig");
        assert_eq!(merged_path("/usr/bin/awk"), "usr/bin/awk");
        assert_eq!(merged_path("/linuxrc"), "linuxrc");
        assert_eq!(
            deb_prefix(&Resolved {
                name: "redis-server".into(),
                version: "5:7.0.15-1".into()
            }),
            "redis-server_5%3a7.0.15-1_"
        );
    }
}
