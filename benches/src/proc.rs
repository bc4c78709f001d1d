//! Child processes that are killed if the benchmark leaves early.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io, BenchError, Result};

/// A running child; dropping it kills and reaps it.
pub struct Guard {
    child: Child,
    name: String,
    /// Kill its descendants too (see [`Guard::spawn_tree`]).
    tree: bool,
}

impl Guard {
    /// Spawns `cmd` with stdin from /dev/null and stdout/stderr into the given files.
    pub fn spawn(mut cmd: Command, name: &str, stdout: &Path, stderr: &Path) -> Result<Guard> {
        let out = std::fs::File::create(stdout).map_err(io("cannot create log", stdout))?;
        let err = std::fs::File::create(stderr).map_err(io("cannot create log", stderr))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| BenchError::Spawn {
                program: name.to_string(),
                source,
            })?;
        Ok(Guard {
            child,
            name: name.to_string(),
            tree: false,
        })
    }

    /// Like [`Guard::spawn`], for a program that starts children of its own (`owvmm
    /// standby` boots a second owvmm, `owvmm run` may prepare a standby): killing it kills
    /// every process descended from it as well.
    pub fn spawn_tree(cmd: Command, name: &str, stdout: &Path, stderr: &Path) -> Result<Guard> {
        let mut g = Guard::spawn(cmd, name, stdout, stderr)?;
        g.tree = true;
        Ok(g)
    }

    /// The exit status if the child has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for the child to end by itself; kills it after that.
    pub fn finish(mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "bench: {} did not exit in {:?}; killing it",
            self.name, limit
        );
        self.kill();
        None
    }

    /// Kills and reaps the child (and, for [`Guard::spawn_tree`], its descendants, found
    /// while it still lives: once it is gone they are no longer its descendants).
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let others = if self.tree {
                descendants(self.child.id())
            } else {
                Vec::new()
            };
            let _ = self.child.kill();
            let _ = self.child.wait();
            kill_pids(&others);
        }
    }
}

/// The processes descended from `root`, from /proc (each one's parent in `stat`).
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_in_stat(&stat)?))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, parent) in &parents {
            if parent == p && !out.contains(&pid) {
                out.push(pid);
                frontier.push(pid);
            }
        }
    }
    out
}

/// The parent pid in a `/proc/PID/stat` line (`pid (comm) state ppid ...`; `comm` may
/// hold spaces and parentheses, so the fields are counted after the last `)`).
fn parent_in_stat(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILLs these processes (by id; the ones that are gone already are ignored).
fn kill_pids(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let mut cmd = Command::new("kill");
    cmd.arg("-KILL").arg("--");
    for p in pids {
        cmd.arg(p.to_string());
    }
    let _ = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a log file, indented, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(n);
    let mut s = format!("\n  last lines of {}:", path.display());
    for l in &lines[start..] {
        s.push_str("\n    ");
        s.push_str(l.trim_end());
    }
    s
}

/// Runs a short command to completion and returns its stdout; fails with its stderr.
pub fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::Spawn {
            program: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(BenchError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a short command to completion and returns its stdout (stderr goes to ours).
pub fn output(program: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| BenchError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(BenchError::Command {
            command: format!("{} {}", program.display(), args.join(" ")),
            status: out.status.to_string(),
            stderr: "see above".into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first line of a command's stdout, or `None` if it cannot run.
pub fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines().next().map(|l| l.trim().to_string())
}

/// The default image's kernel directory and initramfs, from `owvmm image path` (which
/// builds them on first use).
pub fn image_paths(owvmm: &Path) -> Result<(String, String)> {
    eprintln!("bench: locating the default image (`owvmm image path`; builds it on first use)");
    let paths = output(owvmm, &["image", "path"])?;
    let mut lines = paths.lines().map(str::trim).filter(|l| !l.is_empty());
    match (lines.next(), lines.next()) {
        (Some(kdir), Some(initrd)) => Ok((kdir.to_owned(), initrd.to_owned())),
        _ => Err(BenchError::Missing(format!(
            "`owvmm image path` printed {paths:?}, not two paths"
        ))),
    }
}

/// Fails if the process behind `guard` has ended or `deadline` passed (`limit` is the
/// limit it came from); `logs` gives the details for the error.
pub fn check_alive(
    guard: &mut Guard,
    what: &str,
    deadline: Instant,
    limit: Duration,
    logs: impl FnOnce() -> String,
) -> Result<()> {
    if let Some(st) = guard.exited() {
        return Err(BenchError::Exited {
            what: what.to_string(),
            status: st.to_string(),
            detail: logs(),
        });
    }
    if Instant::now() > deadline {
        return Err(BenchError::Timeout {
            what: what.to_string(),
            secs: limit.as_secs(),
            detail: logs(),
        });
    }
    Ok(())
}

/// The host CPU's model name (`?` when /proc/cpuinfo does not say).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parent() {
        assert_eq!(parent_in_stat("42 (a b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parent_in_stat("garbage"), None);
    }

    #[test]
    fn own_children_are_descendants() {
        let me = std::process::id();
        let mut c = Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        assert!(descendants(me).contains(&c.id()));
        let _ = c.kill();
        let _ = c.wait();
    }
}
