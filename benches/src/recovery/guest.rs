//! One owvmm guest running a workload: cold boot until the program prints (or serves its
//! first request), crash and recovery with every event recorded, stop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::console::{is_malloc_failure, Console, HeapLine};
use super::workload::{Answer, StateCheck, Workload};
use crate::ctl::{self, Conn};
use crate::error::{BenchError, Result};
use crate::proc::{tail, Guard};

/// How often the console file and the event stream are looked at.
pub const POLL: Duration = Duration::from_millis(20);
/// After `recovery-done` without the program among the restored ones: how long a heap
/// line may still take before the run counts as failed.
const NOT_RESTORED_GRACE: Duration = Duration::from_secs(10);
/// How long the program may take for its next line after it came back (before the next
/// crash in the same guest).
const SETTLE: Duration = Duration::from_secs(120);
/// How often a network workload is asked whether it serves again.
const PROBE_EVERY: Duration = Duration::from_millis(100);

/// What every guest of the recovery benchmark shares.
pub struct Env {
    /// The owvmm binary.
    pub owvmm: PathBuf,
    /// The static heap program on the host.
    pub program: PathBuf,
    /// The static pipeline program on the host.
    pub pipe_program: PathBuf,
    /// The network namespace with the tap (when a workload needs it).
    pub ns: Option<crate::net::Netns>,
    /// Logs, sockets.
    pub work: PathBuf,
    /// Limit for a cold boot until the program prints.
    pub boot_timeout: Duration,
    /// Limit from the crash request until the program prints again.
    pub recovery_timeout: Duration,
}

/// A cold boot until the program's first line.
#[derive(Debug, Clone)]
pub struct BootTime {
    /// Spawn of `owvmm run` until the first heap line, seconds.
    pub first_line_s: f64,
    /// Spawn until `agent-ready`, seconds (if the event was seen).
    pub agent_ready_s: Option<f64>,
    /// The program's pid.
    pub pid: u32,
    /// The count of that first line (1 unless the console was read late).
    pub count: u64,
    /// The guest was then crashed (it is the guest of the recovery runs), or only booted.
    pub crashed_later: bool,
    /// What the fresh program holds (a server's keys after the reboot).
    pub state: Option<StateCheck>,
}

/// One crash and recovery.
#[derive(Debug, Clone, Default)]
pub struct CrashRun {
    /// The program's pid and last count before the crash.
    pub pid: u32,
    /// Its last count printed before the crash (updated to the last line the dead kernel
    /// printed).
    pub count_before: u64,
    /// Crash request until the VMM saw the kernel die (its `detect_ms`).
    pub detect_ms: Option<f64>,
    /// Crash request until the `crash-detected` event reached the bench.
    pub detect_host_ms: Option<f64>,
    /// Stopping the vCPUs.
    pub freeze_ms: Option<f64>,
    /// Reading their state.
    pub capture_ms: Option<f64>,
    /// Reading the dead kernel's processes and building the manifest.
    pub extract_ms: Option<f64>,
    /// Starting the crash kernel from its standby.
    pub kernel_start_ms: Option<f64>,
    /// The crash kernel's agent recreating the processes (VMM's view, and the agent's own).
    pub resurrect_ms: Option<f64>,
    /// The agent's own time for it.
    pub resurrect_guest_ms: Option<f64>,
    /// Detection until the recovery was done (`recovery-done`'s `total_ms`).
    pub total_ms: Option<f64>,
    /// Crash request until `recovery-done` reached the bench.
    pub done_host_ms: Option<f64>,
    /// Crash request until the first heap line of the new kernel, seconds.
    pub again_s: Option<f64>,
    /// That line.
    pub line_after: Option<HeapLine>,
    /// Processes restored / not restored (`recovery-done`).
    pub restored: Option<u64>,
    /// Processes that could not be restored.
    pub failed: Option<u64>,
    /// The VMM's resident memory when the recovery ended, before and after the dead
    /// kernel's memory was given back.
    pub rss_before_mib: Option<u64>,
    /// After.
    pub rss_after_mib: Option<u64>,
    /// The program was among the extracted processes / in the manifest.
    pub extracted: Option<bool>,
    /// Bytes of process memory the manifest asks to copy.
    pub copy_bytes: Option<u64>,
    /// What else happened (not-restored reasons, standby waits, ...).
    pub notes: Vec<String>,
    /// A server's state before the crash, and after it came back.
    pub state_before: Option<StateCheck>,
    /// After.
    pub state_after: Option<StateCheck>,
    /// What the first request after the crash was answered.
    pub served: Option<String>,
    /// Why the measurement failed; `None` when the program came back intact.
    pub failure: Option<String>,
}

impl CrashRun {
    /// The program came back with the same pid, a higher count and an intact heap (a
    /// server: the same pid, all its keys, the sampled values right).
    pub fn ok(&self) -> bool {
        self.failure.is_none() && self.again_s.is_some()
    }
}

fn ms(v: &Value, key: &str) -> Option<f64> {
    v[key].as_f64()
}

/// A running `owvmm run` with a workload.
pub struct Guest {
    guard: Guard,
    workload: Workload,
    tag: String,
    sock: PathBuf,
    stderr: PathBuf,
    console_path: PathBuf,
    console: Console,
    ev: Option<Conn>,
    /// The program's last line.
    pub last: Option<HeapLine>,
    /// A server's state after it was filled.
    pub state: Option<StateCheck>,
}

/// What one look at the guest found.
#[derive(Default)]
struct Step {
    events: Vec<(Value, Instant)>,
    lines: Vec<(String, Instant)>,
}

impl Guest {
    /// Cold-boots a guest running `w` and waits for the program's first line (a server:
    /// its first request served, on a fresh connection).
    pub fn boot(env: &Env, tag: &str, w: Workload) -> Result<(Guest, BootTime)> {
        let sock = env.work.join(format!("{tag}.sock"));
        let stderr = env.work.join(format!("{tag}.stderr"));
        let console_path = env.work.join(format!("{tag}.console"));
        let _ = std::fs::remove_file(&sock);
        let ns = net(env, w)?;
        let mut cmd = match ns {
            Some(ns) => ns.cmd(&env.owvmm.display().to_string()),
            None => Command::new(&env.owvmm),
        };
        cmd.arg("run")
            .args(w.run_args(env))
            .arg("--api-sock")
            .arg(&sock);
        let t0 = Instant::now();
        let guard = Guard::spawn_tree(cmd, "owvmm", &console_path, &stderr)?;
        let mut g = Guest {
            guard,
            workload: w,
            tag: tag.to_string(),
            sock,
            stderr,
            console: Console::new(&console_path),
            console_path,
            ev: None,
            last: None,
            state: None,
        };
        let deadline = t0 + env.boot_timeout;
        g.subscribe(deadline, env.boot_timeout)?;
        let what = if ns.is_some() {
            format!("{tag}: waiting for the server's first answer")
        } else {
            format!("{tag}: waiting for the program's first line")
        };
        let mut agent_ready_s = None;
        let mut probed = Instant::now();
        let mut last_answer = String::new();
        loop {
            let step = g.step(&what, deadline, env.boot_timeout)?;
            for (e, at) in &step.events {
                match e["event"].as_str() {
                    Some("agent-ready") => {
                        agent_ready_s = Some(at.duration_since(t0).as_secs_f64());
                    }
                    Some("program-exited") => {
                        return Err(g.failed(&what, format!("the program exited: {e}")))
                    }
                    _ => {}
                }
            }
            if let Some(ns) = ns {
                if probed.elapsed() >= PROBE_EVERY {
                    probed = Instant::now();
                    match w.serve(ns, false) {
                        Answer::Served(_) => {
                            let first_line_s = t0.elapsed().as_secs_f64();
                            // Not timed: what the fresh server holds, and its pid.
                            let state = w.check(ns).map_err(|e| {
                                g.failed(&what, format!("after the first answer: {e}"))
                            })?;
                            let boot = BootTime {
                                first_line_s,
                                agent_ready_s,
                                pid: state.pid.unwrap_or(0),
                                count: 1,
                                crashed_later: false,
                                state: Some(state),
                            };
                            return Ok((g, boot));
                        }
                        Answer::NotYet(why) | Answer::Wrong(why) => last_answer = why,
                    }
                }
                if Instant::now() + PROBE_EVERY > deadline {
                    return Err(g.failed(&what, format!("no answer: {last_answer}")));
                }
            }
            for (l, at) in &step.lines {
                if is_malloc_failure(l) {
                    return Err(g.failed(&what, format!("the program says: {l}")));
                }
                if let Some(h) = w.parse_line(l) {
                    let boot = BootTime {
                        first_line_s: at.duration_since(t0).as_secs_f64(),
                        agent_ready_s,
                        pid: h.pid,
                        count: h.count,
                        crashed_later: false,
                        state: None,
                    };
                    if !h.sum_ok {
                        return Err(g.failed(&what, format!("checksum broken at start: {l}")));
                    }
                    g.last = Some(h);
                    return Ok((g, boot));
                }
            }
        }
    }

    fn subscribe(&mut self, deadline: Instant, limit: Duration) -> Result<()> {
        loop {
            if let Ok(c) = Conn::connect(&self.sock) {
                self.ev = Some(c.subscribe()?);
                return Ok(());
            }
            self.check("waiting for the control socket", deadline, limit)?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn logs(&self) -> String {
        format!("{}{}", tail(&self.stderr, 12), tail(&self.console_path, 12))
    }

    fn failed(&self, what: &str, why: String) -> BenchError {
        BenchError::Exited {
            what: what.to_string(),
            status: why,
            detail: self.logs(),
        }
    }

    fn check(&mut self, what: &str, deadline: Instant, limit: Duration) -> Result<()> {
        let logs = self.logs();
        crate::proc::check_alive(&mut self.guard, what, deadline, limit, || logs)
    }

    /// Waits up to [`POLL`] for events, then reads the new console lines. Fails when owvmm
    /// ended (or said `vmm-exit`) or the deadline passed.
    fn step(&mut self, what: &str, deadline: Instant, limit: Duration) -> Result<Step> {
        let mut s = Step::default();
        let mut closed = None;
        if let Some(ev) = self.ev.as_mut() {
            let mut wait = POLL;
            loop {
                match ev.next(wait) {
                    Ok(Some(v)) => {
                        s.events.push((v, Instant::now()));
                        wait = Duration::from_millis(1);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        closed = Some(e);
                        break;
                    }
                }
            }
        } else {
            std::thread::sleep(POLL);
        }
        let now = Instant::now();
        s.lines = self.console.poll()?.into_iter().map(|l| (l, now)).collect();
        let w = self.workload;
        if let Some(h) = s.lines.iter().rev().find_map(|(l, _)| w.parse_line(l)) {
            self.last = Some(h);
        }
        if let Some((e, _)) = s
            .events
            .iter()
            .find(|(e, _)| e["event"] == json!("vmm-exit"))
        {
            // Whatever came before it in this batch says why; the caller may want that.
            let why = s
                .events
                .iter()
                .filter_map(|(e, _)| {
                    let n = e["event"].as_str()?;
                    matches!(
                        n,
                        "recovery-failed" | "microreboot-failed" | "program-exited"
                    )
                    .then(|| format!("{n}: {e}; "))
                })
                .collect::<String>();
            return Err(self.failed(what, format!("{why}vmm-exit {e}")));
        }
        if let Some(e) = closed {
            // The stream ended: most likely owvmm exited; say how.
            self.ev = None;
            std::thread::sleep(Duration::from_millis(300));
            self.check(what, deadline, limit)?;
            return Err(e);
        }
        self.check(what, deadline, limit)?;
        Ok(s)
    }

    /// Waits until the program prints a line with a count above `above`.
    pub fn wait_count_above(&mut self, above: u64, limit: Duration) -> Result<HeapLine> {
        let deadline = Instant::now() + limit;
        let what = format!("{}: waiting for a line with count > {above}", self.tag);
        let w = self.workload;
        loop {
            let step = self.step(&what, deadline, limit)?;
            for (l, _) in &step.lines {
                if let Some(h) = w.parse_line(l).filter(|h| h.count > above) {
                    if !h.sum_ok {
                        return Err(self.failed(&what, format!("checksum broken: {l}")));
                    }
                    return Ok(h);
                }
            }
        }
    }

    /// Crashes the guest kernel (`crash`) and follows the recovery until the program prints
    /// again. Returns the measurement and whether this guest can be crashed again (it runs
    /// the program, intact).
    pub fn crash(&mut self, env: &Env) -> (CrashRun, bool) {
        let mut r = CrashRun::default();
        let w = self.workload;
        let ns = match net(env, w) {
            Ok(ns) => ns,
            Err(e) => {
                r.failure = Some(crate::error::chain(&e));
                return (r, false);
            }
        };
        if ns.is_some() {
            let Some(st) = self.state.clone() else {
                r.failure = Some("the server was not filled before the crash".into());
                return (r, false);
            };
            r.pid = st.pid.unwrap_or(0);
            r.state_before = Some(st);
        } else {
            let Some(before) = self.last.clone() else {
                r.failure = Some("the program had not printed before the crash".into());
                return (r, false);
            };
            r.pid = before.pid;
            r.count_before = before.count;
        }
        let mut probed = Instant::now();
        let mut last_answer = String::new();
        // Lines already written belong to the old kernel.
        match self.console.poll() {
            Ok(lines) => {
                if let Some(h) = lines.iter().rev().find_map(|l| w.parse_line(l)) {
                    r.count_before = r.count_before.max(h.count);
                }
            }
            Err(e) => {
                r.failure = Some(crate::error::chain(&e));
                return (r, false);
            }
        }
        let t_crash = Instant::now();
        if let Err(e) = ctl::call(
            &self.sock,
            &json!({"cmd": "crash"}),
            Duration::from_secs(60),
        ) {
            r.failure = Some(format!("crash request: {}", crate::error::chain(&e)));
            return (r, self.guard.exited().is_none());
        }
        let deadline = t_crash + env.recovery_timeout;
        let what = format!("{}: recovery after the crash", self.tag);
        // The dead kernel's last lines may still be in the console file when the first
        // recovery events arrive: lines count as the new kernel's only after the guest
        // was frozen (or a later stage was reached) and the console read up to there.
        let mut frozen = false;
        let mut done_at: Option<Instant> = None;
        let mut restored_pid = false;
        let mut not_restored: Option<String> = None;
        let mut terminal: Option<String> = None;
        loop {
            // The deadline is checked below, where the stage reached is known.
            let late = deadline + Duration::from_secs(5);
            let step = match self.step(&what, late, env.recovery_timeout) {
                Ok(s) => s,
                Err(e) => {
                    r.failure = Some(crate::error::chain(&e));
                    return (r, false);
                }
            };
            // Lines read in the step that brought the freeze were written before it (the
            // console is read after the events): they are the dead kernel's too.
            let was_frozen = frozen;
            for (e, at) in &step.events {
                let name = e["event"].as_str().unwrap_or("");
                let since = at.duration_since(t_crash).as_secs_f64() * 1000.0;
                match name {
                    "crash-detected" => r.detect_host_ms = Some(since),
                    "guest-frozen" => {
                        r.freeze_ms = ms(e, "freeze_ms");
                        r.capture_ms = ms(e, "capture_ms");
                    }
                    "capture-failed" => r.notes.push(format!("capture failed: {}", e["error"])),
                    "extraction-done" => {
                        r.extracted = Some(
                            e["processes"]
                                .as_array()
                                .is_some_and(|ps| ps.iter().any(|p| p["pid"] == json!(r.pid))),
                        );
                        r.copy_bytes = e["manifest"]["copy_bytes"].as_u64();
                        if let Some(x) = e["manifest"]["excluded"]
                            .as_array()
                            .filter(|x| !x.is_empty())
                        {
                            let list = x
                                .iter()
                                .map(|p| {
                                    format!(
                                        "{} {} ({})",
                                        p["pid"],
                                        p["comm"].as_str().unwrap_or("?"),
                                        p["reason"].as_str().unwrap_or("?")
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(", ");
                            r.notes.push(format!("not in the manifest: {list}"));
                        }
                    }
                    "manifest-failed" => r.notes.push(format!("manifest failed: {}", e["error"])),
                    "standby-waited" => r.notes.push(format!(
                        "waited {:.0} ms for the standby to be prepared",
                        ms(e, "ms").unwrap_or(0.0)
                    )),
                    "crash-kernel-running" => r.kernel_start_ms = ms(e, "start_ms"),
                    "process-restored" if e["pid"] == json!(r.pid) => restored_pid = true,
                    "process-not-restored" => {
                        let why = format!("pid {} not restored: {}", e["pid"], e["reason"]);
                        if e["pid"] == json!(r.pid) {
                            not_restored = Some(why.clone());
                        }
                        r.notes.push(why);
                    }
                    "recovery-done" => {
                        done_at = Some(*at);
                        r.done_host_ms = Some(since);
                        r.detect_ms = ms(e, "detect_ms");
                        r.freeze_ms = ms(e, "freeze_ms").or(r.freeze_ms);
                        r.extract_ms = ms(e, "extract_ms");
                        r.kernel_start_ms = ms(e, "crash_kernel_start_ms").or(r.kernel_start_ms);
                        r.resurrect_ms = ms(e, "resurrect_ms");
                        r.resurrect_guest_ms = ms(e, "resurrect_guest_ms");
                        r.total_ms = ms(e, "total_ms");
                        r.restored = e["restored"].as_u64();
                        r.failed = e["failed"].as_u64();
                        r.rss_before_mib = e["rss_before_mib"].as_u64();
                        r.rss_after_mib = e["rss_after_mib"].as_u64();
                    }
                    "recovery-failed" | "microreboot-failed" => {
                        terminal = Some(format!("{name}: {e}"));
                    }
                    _ => {}
                }
                if !frozen
                    && matches!(
                        name,
                        "guest-frozen"
                            | "capture-failed"
                            | "extraction-done"
                            | "crash-kernel-running"
                    )
                {
                    frozen = true;
                    // Everything in the console file now was written by the dead kernel.
                    match self.console.poll() {
                        Ok(lines) => {
                            if let Some(h) = lines.iter().rev().find_map(|l| w.parse_line(l)) {
                                r.count_before = r.count_before.max(h.count);
                            }
                        }
                        Err(e) => terminal = Some(crate::error::chain(&e)),
                    }
                }
            }
            if !was_frozen {
                for (l, _) in &step.lines {
                    if let Some(h) = w.parse_line(l) {
                        r.count_before = r.count_before.max(h.count);
                    }
                }
            } else if r.line_after.is_none() {
                if let Some((h, at)) = step
                    .lines
                    .iter()
                    .find_map(|(l, at)| w.parse_line(l).map(|h| (h, *at)))
                {
                    r.again_s = Some(at.duration_since(t_crash).as_secs_f64());
                    if h.pid != r.pid {
                        r.failure = Some(format!(
                            "a different heap process printed (pid {} count={}, was pid {}): the program started over",
                            h.pid, h.count, r.pid
                        ));
                    } else if h.count <= r.count_before {
                        r.failure = Some(format!(
                            "the program's count went back ({} after {}): its memory was not kept",
                            h.count, r.count_before
                        ));
                    } else if !h.sum_ok {
                        r.failure = Some(format!(
                            "heap checksum broken after the recovery (count={})",
                            h.count
                        ));
                    }
                    r.line_after = Some(h);
                }
            }
            // A server counts as back when a fresh connection gets the stored value (asked
            // only once the dead kernel is frozen: before, the old one may still answer).
            if let Some(ns) = ns.filter(|_| frozen && r.again_s.is_none()) {
                if probed.elapsed() >= PROBE_EVERY {
                    probed = Instant::now();
                    match w.serve(ns, true) {
                        Answer::Served(what) => {
                            r.again_s = Some(t_crash.elapsed().as_secs_f64());
                            r.served = Some(what);
                            // Not timed: all the keys, a sample of values, the pid.
                            match w.check(ns) {
                                Ok(st) => {
                                    if !st.kept() {
                                        r.failure = Some(format!(
                                            "the server's state was not kept: {} of {}",
                                            st.text(),
                                            st.expected
                                        ));
                                    } else if st.pid != Some(r.pid) {
                                        r.failure = Some(format!(
                                            "another server process answered (pid {:?}, was {})",
                                            st.pid, r.pid
                                        ));
                                    }
                                    r.state_after = Some(st);
                                }
                                Err(e) => {
                                    r.failure =
                                        Some(format!("checking the keys after the crash: {e}"));
                                }
                            }
                        }
                        Answer::Wrong(why) => {
                            r.again_s = Some(t_crash.elapsed().as_secs_f64());
                            r.failure = Some(format!("served, wrongly: {why}"));
                        }
                        Answer::NotYet(why) => last_answer = why,
                    }
                }
            }
            if let Some(t) = terminal {
                r.failure.get_or_insert(t);
                return (r, false);
            }
            if let Some(done) = done_at {
                if r.again_s.is_some() {
                    let usable = r.ok();
                    return (r, usable);
                }
                if !restored_pid && (not_restored.is_some() || done.elapsed() > NOT_RESTORED_GRACE)
                {
                    r.failure = Some(not_restored.unwrap_or_else(|| match r.restored {
                        None => "recovery-done without resurrection (no `restored` in it): the program is not back".into(),
                        Some(n) => format!(
                            "recovery-done with {n} restored, {} failed, the program (pid {}) not among them",
                            r.failed.unwrap_or(0),
                            r.pid
                        ),
                    }));
                    return (r, false);
                }
            }
            if Instant::now() > deadline {
                if !last_answer.is_empty() {
                    r.notes.push(format!("last probe: {last_answer}"));
                }
                r.failure = Some(format!(
                    "timed out after {} s ({}){}",
                    env.recovery_timeout.as_secs(),
                    if done_at.is_some() {
                        "recovery-done came, the program was not back"
                    } else if r.kernel_start_ms.is_some() {
                        "the crash kernel runs, no recovery-done"
                    } else if frozen {
                        "the guest was frozen, the crash kernel did not start"
                    } else if r.detect_host_ms.is_some() {
                        "the crash was detected, the guest not frozen"
                    } else {
                        "the crash was not detected"
                    },
                    self.logs()
                ));
                return (r, false);
            }
        }
    }

    /// Fills the server with its keys (not timed as part of anything) and records its
    /// state; fails unless every key is there.
    pub fn fill(&mut self, env: &Env, limit: Duration) -> Result<(f64, StateCheck)> {
        let w = self.workload;
        let what = format!("{}: filling the server", self.tag);
        let Some(ns) = net(env, w)? else {
            return Err(self.failed(&what, "not a network workload".into()));
        };
        let t0 = Instant::now();
        w.fill(ns, limit).map_err(|e| self.failed(&what, e))?;
        let secs = t0.elapsed().as_secs_f64();
        let st = w.check(ns).map_err(|e| self.failed(&what, e))?;
        if !st.kept() {
            return Err(self.failed(&what, format!("after the fill: {}", st.text())));
        }
        self.state = Some(st.clone());
        Ok((secs, st))
    }

    /// After a good recovery: waits for one more line, so that the program runs steadily
    /// before the next crash (a server: nothing to wait for).
    pub fn settle(&mut self) -> Result<()> {
        if self.workload.networked() {
            return Ok(());
        }
        let above = self.last.as_ref().map_or(0, |h| h.count);
        self.wait_count_above(above, SETTLE).map(|_| ())
    }

    /// The console log.
    pub fn console_path(&self) -> &Path {
        &self.console_path
    }

    /// Stops the VMM (control socket), kills it (and what it started) if it does not end.
    pub fn stop(self) {
        let _ = ctl::call(&self.sock, &json!({"cmd": "stop"}), Duration::from_secs(10));
        self.guard.finish(Duration::from_secs(20));
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// The namespace a networked workload needs.
fn net(env: &Env, w: Workload) -> Result<Option<&crate::net::Netns>> {
    if !w.networked() {
        return Ok(None);
    }
    env.ns.as_ref().map(Some).ok_or_else(|| {
        BenchError::Missing(format!("{}: no network namespace was set up", w.spec()))
    })
}
