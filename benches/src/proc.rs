//! Child processes that are killed if the benchmark leaves early.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io, BenchError, Result};

/// A running child; dropping it kills and reaps it.
pub struct Guard {
    child: Child,
    name: String,
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
        })
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

    /// Kills and reaps the child.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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
