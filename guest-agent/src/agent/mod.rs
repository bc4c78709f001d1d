//! The init loop: PID 1 of the guest.
//!
//! One thread. `poll(2)` waits on the signal self-pipe and the channel with a timeout
//! that lands on the next heartbeat; children are reaped with `waitpid(WNOHANG)` after
//! every SIGCHLD and once per heartbeat as a safety net.

mod channel;
mod disks;
mod net;
mod programs;
mod resurrect;
mod root;
mod setup;
mod sys;

use std::fmt;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use ow_agent::proto::{AgentMsg, ProtoError, VmmMsg};

use channel::{Channel, Line};

/// Heartbeat period.
const HB_MS: u64 = 1000;
/// How long programs get between SIGTERM and SIGKILL at shutdown.
const TERM_GRACE_MS: u64 = 3000;
/// How long we wait for the last channel message to leave before reboot(2).
const DRAIN_MS: u64 = 2000;

/// Writes `ow-agent: ...` to our standard error (the console when we are PID 1).
pub fn log_line(args: fmt::Arguments<'_>) {
    // One write(2) per line: each system call is expensive in the guest, and whole lines
    // do not interleave with the output of other programs on the console.
    let line = format!("ow-agent: {args}\n");
    let _ = io::stderr().write_all(line.as_bytes());
}

/// Where things are. Each path can be overridden through the environment (the kernel
/// passes unknown `NAME=value` command-line words to /init), which tests use to run the
/// agent outside a guest.
struct Config {
    /// `OW_AGENT_CHANNEL`, default `/dev/ttyS1`.
    channel: PathBuf,
    /// `OW_AGENT_EXEC`, default `/etc/owvmm/exec`.
    exec_file: PathBuf,
    /// `OW_AGENT_CONSOLE`, default `/dev/console`: output of exec commands.
    console: PathBuf,
    /// `OW_AGENT_SHELL_TTY`, default `/dev/ttyS0`: the interactive shell's terminal.
    shell_tty: PathBuf,
    /// `OW_AGENT_MEM`, default `/dev/mem`: where `resurrect` reads the manifest and the old
    /// memory (its GPAs are offsets in this file).
    mem: PathBuf,
    /// Are we PID 1? If not (tests), we do not mount, signal every process, set the clock
    /// or call reboot(2); "power off" then means exit.
    pid1: bool,
    /// Set CLOCK_REALTIME on `time` requests: always as PID 1, otherwise only with
    /// `OW_AGENT_SET_CLOCK=1`.
    set_clock: bool,
}

impl Config {
    fn from_env(pid1: bool) -> Self {
        let path = |var: &str, default: &str| {
            PathBuf::from(std::env::var_os(var).unwrap_or_else(|| default.into()))
        };
        Self {
            channel: path("OW_AGENT_CHANNEL", "/dev/ttyS1"),
            exec_file: path("OW_AGENT_EXEC", "/etc/owvmm/exec"),
            console: path("OW_AGENT_CONSOLE", "/dev/console"),
            shell_tty: path("OW_AGENT_SHELL_TTY", "/dev/ttyS0"),
            mem: path("OW_AGENT_MEM", "/dev/mem"),
            pid1,
            set_clock: pid1 || std::env::var_os("OW_AGENT_SET_CLOCK").is_some_and(|v| v == "1"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Poweroff,
    Reboot,
}

/// A program we started and report on.
struct Program {
    pid: libc::pid_t,
    command: String,
}

struct Agent {
    cfg: Config,
    chan: Channel,
    /// Read end of the signal self-pipe.
    signals: Option<OwnedFd>,
    programs: Vec<Program>,
    ready_sent: bool,
    hb_seq: u64,
    /// `uptime_ms` at which the next heartbeat is due.
    next_hb: u64,
    reap_due: bool,
    stop: Option<Stop>,
    /// A standby with nothing to run yet: not a reason to power off.
    standby_idle: bool,
    /// The disks mounted, in order (unmounted at power off).
    mounted: Vec<disks::DiskSpec>,
}

/// Entry point of the binary. Returns only when not running as PID 1.
pub fn entry() -> libc::c_int {
    let pid1 = sys::getpid() == 1;
    if pid1 {
        setup::early_setup();
    } else if let Err(e) = sys::set_child_subreaper() {
        crate::log!("PR_SET_CHILD_SUBREAPER: {e}");
    }
    let mut agent = Agent::new(Config::from_env(pid1));
    let mut started = false;
    loop {
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            if !started {
                started = true;
                agent.start();
            }
            agent.run()
        }));
        match result {
            Ok(code) => return code,
            Err(_) => {
                // The panic message is already on stderr. Carry on with the same state,
                // but not in a tight loop.
                crate::log!("internal error, continuing");
                std::thread::sleep(Duration::from_millis(HB_MS));
            }
        }
    }
}

impl Agent {
    fn new(cfg: Config) -> Self {
        let chan = Channel::new(cfg.channel.clone());
        Self {
            cfg,
            chan,
            signals: None,
            programs: Vec::new(),
            ready_sent: false,
            hb_seq: 0,
            next_hb: 0,
            reap_due: false,
            stop: None,
            standby_idle: false,
            mounted: Vec::new(),
        }
    }

    /// Opens the channel, starts the programs and sends `ready`.
    fn start(&mut self) {
        match sys::install_signal_pipe(&[
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ]) {
            Ok(fd) => self.signals = Some(fd),
            Err(e) => crate::log!("signal handlers: {e}; reaping once a second only"),
        }
        self.chan.try_open();
        if self.cfg.pid1 {
            // Every guest (and crash kernel) has lo, with or without --net: servers listen
            // on 127.0.0.1. Programs may still do without it, so a failure is only logged.
            if let Err(e) = net::loopback_up() {
                crate::log!("lo: {}", resurrect::reason(&e));
            }
        }

        let commands = programs::read_exec_file(&self.cfg.exec_file);
        if commands.is_empty() && programs::is_standby() {
            // A crash kernel's standby: it runs nothing until it takes in the processes of
            // a crashed guest (`resurrect`); a shell here would share the console with
            // theirs.
            crate::log!("standby: waiting for a resurrect request");
            self.standby_idle = true;
        } else if let Err(failed) = self.configure_net() {
            // The programs would talk on a network they do not have: start none, and say
            // why.
            self.chan.send(&failed);
        } else if self.mount_disks().is_err() {
            // The programs would write where their disk is not: start none (the VMM was
            // told why).
        } else if commands.is_empty() {
            let tty = self.cfg.shell_tty.clone();
            let name = format!(
                "{} (interactive, {})",
                programs::interactive_shell(),
                tty.display()
            );
            let result = programs::spawn_shell(&tty);
            self.started(name, result);
        } else {
            for cmd in commands {
                let result = programs::spawn_command(&cmd, &self.cfg.console);
                self.started(cmd, result);
            }
        }

        let now = sys::uptime_ms();
        self.chan.send(&AgentMsg::Ready {
            uptime_ms: now,
            version: ow_agent::VERSION.to_owned(),
        });
        self.ready_sent = true;
        self.next_hb = now.saturating_add(HB_MS);
        // Children that exited before the handler saw them.
        self.reap_due = true;
    }

    /// Unmounts the disks mounted, the last first (at power off).
    fn unmount_disks(&mut self) {
        while let Some(spec) = self.mounted.pop() {
            match disks::unmount(&spec) {
                Ok(()) => crate::log!("disk {} unmounted from {}", spec.id, spec.dir.display()),
                Err(e) => crate::log!("disk {}: {}", spec.id, resurrect::reason(&e)),
            }
        }
    }

    /// Sets `lo` up and configures the network interfaces of the command line; the first
    /// failure as the message to send.
    fn configure_net(&self) -> Result<(), AgentMsg> {
        if !self.cfg.pid1 {
            return Ok(());
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let specs = net::parse_cmdline(&cmdline);
        let fail = |e: &net::NetError| {
            let reason = resurrect::reason(e);
            crate::log!("network not configured: {reason}");
            AgentMsg::NetFailed { reason }
        };
        if specs.is_empty() {
            return Ok(());
        }
        for spec in specs {
            match net::configure(&spec, std::path::Path::new("/sys/class/net")) {
                Ok(iface) => {
                    let ip = spec
                        .ip
                        .map(|(a, p)| format!(" {a}/{p}"))
                        .unwrap_or_default();
                    let gw = spec.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                    crate::log!(
                        "network {iface} ({}) up{ip}{gw}",
                        net::format_mac(&spec.mac)
                    );
                }
                Err(e) => return Err(fail(&e)),
            }
        }
        Ok(())
    }

    /// Mounts the disks of the command line; the first failure as the message to send.
    fn mount_disks(&mut self) -> Result<(), AgentMsg> {
        if !self.cfg.pid1 {
            return Ok(());
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        for spec in disks::parse_cmdline(&cmdline) {
            let msg = self.mount_one(spec);
            let failed = matches!(msg, AgentMsg::MountFailed { .. });
            self.chan.send(&msg);
            if failed {
                return Err(msg);
            }
        }
        Ok(())
    }

    /// Mounts one disk: `mounted`, or `mount-failed` with the reason.
    fn mount_one(&mut self, spec: disks::DiskSpec) -> AgentMsg {
        match disks::mount(
            &spec,
            std::path::Path::new("/sys/block"),
            std::path::Path::new("/dev"),
        ) {
            Ok(()) => {
                crate::log!(
                    "disk {} mounted at {}{}",
                    spec.id,
                    spec.dir.display(),
                    if spec.read_only { " (read-only)" } else { "" }
                );
                let msg = AgentMsg::Mounted {
                    id: spec.id.clone(),
                    dir: spec.dir.display().to_string(),
                };
                self.mounted.push(spec);
                msg
            }
            Err(e) => {
                let reason = resurrect::reason(&e);
                crate::log!(
                    "disk {} not mounted at {}: {reason}",
                    spec.id,
                    spec.dir.display()
                );
                AgentMsg::MountFailed {
                    dir: spec.dir.display().to_string(),
                    reason,
                }
            }
        }
    }

    /// A crash kernel's `net` request: probe the device (it booted without it) and
    /// configure the interface; the failure to send, if any.
    fn attach_net(&mut self, base: u64, spec: &str) -> Option<AgentMsg> {
        let fail = |reason: String| {
            crate::log!("network not configured: {reason}");
            Some(AgentMsg::NetFailed { reason })
        };
        let Some(parsed) = net::parse_word(spec) else {
            return fail(format!("bad network spec {spec:?}"));
        };
        if let Err(e) = disks::probe_mmio(base) {
            return fail(resurrect::reason(&e));
        }
        match net::configure(&parsed, std::path::Path::new("/sys/class/net")) {
            Ok(iface) => {
                crate::log!("network {iface} up again ({spec})");
                None
            }
            Err(e) => fail(resurrect::reason(&e)),
        }
    }

    /// A crash kernel's `disk` request: probe the device now (it booted without it) and
    /// mount it, so the resurrected processes find their files where they were.
    fn attach_disk(&mut self, base: u64, spec: disks::DiskSpec) -> AgentMsg {
        let msg = match disks::probe_mmio(base) {
            Ok(()) => self.mount_one(spec.clone()),
            Err(e) => {
                let reason = resurrect::reason(&e);
                crate::log!("disk {}: {reason}", spec.id);
                AgentMsg::MountFailed {
                    dir: spec.dir.display().to_string(),
                    reason,
                }
            }
        };
        if matches!(msg, AgentMsg::MountFailed { .. }) {
            if let Err(e) = disks::cover(&spec) {
                crate::log!("disk {}: {}", spec.id, resurrect::reason(&e));
            }
        }
        msg
    }

    fn started(&mut self, command: String, result: io::Result<libc::pid_t>) {
        match result {
            Ok(pid) => {
                crate::log!("started {pid}: {command}");
                self.chan.send(&AgentMsg::Started {
                    pid: pid.unsigned_abs(),
                    command: command.clone(),
                });
                self.programs.push(Program { pid, command });
            }
            Err(e) => {
                crate::log!("cannot start '{command}': {e}");
                self.chan.send(&AgentMsg::Err {
                    text: format!("start failed: {command}: {e}"),
                });
            }
        }
    }

    /// The main loop; returns only after a shutdown when not PID 1.
    fn run(&mut self) -> libc::c_int {
        loop {
            if let Some(stop) = self.stop {
                return self.shutdown(stop);
            }
            self.step();
        }
    }

    fn step(&mut self) {
        if self.reap_due {
            self.reap();
        }
        if self.programs.is_empty() && !self.standby_idle {
            crate::log!("all programs have exited");
            self.stop = Some(Stop::Poweroff);
            return;
        }
        let now = sys::uptime_ms();
        if self.next_hb > now.saturating_add(HB_MS) {
            // The clock went backwards (a restored snapshot): do not wait for it to catch up.
            self.next_hb = now.saturating_add(HB_MS);
        }
        if now >= self.next_hb {
            self.tick(now);
        }
        let timeout = self.next_hb.saturating_sub(sys::uptime_ms()).min(HB_MS);

        let mut fds = Vec::with_capacity(2);
        if let Some(sig) = &self.signals {
            fds.push(libc::pollfd {
                fd: sig.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let sig_n = fds.len();
        if let Some(fd) = self.chan.raw_fd() {
            let mut events = libc::POLLIN;
            if self.chan.wants_write() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
        }
        if let Err(e) = sys::poll(&mut fds, timeout) {
            crate::log!("poll: {e}");
            std::thread::sleep(Duration::from_millis(timeout));
        }

        if sig_n == 1 && fds[0].revents & libc::POLLIN != 0 {
            self.handle_signals();
        }
        if let Some(pfd) = fds.get(sig_n) {
            if pfd.revents & libc::POLLOUT != 0 {
                self.chan.flush();
            }
            let hangup = pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
            if hangup || pfd.revents & libc::POLLIN != 0 {
                let (lines, broken) = self.chan.read_lines();
                for line in lines {
                    self.handle_line(line);
                }
                // A hang-up would make every poll return at once: close, reopen next tick.
                if broken || hangup {
                    crate::log!("channel closed, will reopen");
                    self.chan.close();
                }
            }
        }
    }

    /// Once a second: heartbeat, reopen the channel if needed, reap as a safety net.
    fn tick(&mut self, now: u64) {
        if !self.chan.is_open() {
            self.chan.try_open();
        }
        if self.ready_sent && self.chan.is_open() {
            self.hb_seq += 1;
            self.chan.send(&AgentMsg::Heartbeat {
                seq: self.hb_seq,
                uptime_ms: now,
            });
        }
        self.reap_due = true;
        self.next_hb = self.next_hb.saturating_add(HB_MS);
        if self.next_hb <= now {
            // We fell behind (a stopped VM, a slow guest): skip, do not burst.
            self.next_hb = now.saturating_add(HB_MS);
        }
    }

    fn handle_signals(&mut self) {
        let Some(fd) = self.signals.as_ref() else {
            return;
        };
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        loop {
            match sys::read(fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        for sig in got.into_iter().map(libc::c_int::from) {
            match sig {
                libc::SIGCHLD => self.reap_due = true,
                libc::SIGTERM => self.request_stop(Stop::Reboot, "SIGTERM"),
                libc::SIGUSR1 => self.request_stop(Stop::Poweroff, "SIGUSR1 (halt)"),
                libc::SIGUSR2 => self.request_stop(Stop::Poweroff, "SIGUSR2"),
                _ => {}
            }
        }
    }

    fn request_stop(&mut self, stop: Stop, why: &str) {
        if self.stop.is_none() {
            crate::log!("{why}: {stop:?} requested");
            self.stop = Some(stop);
        }
    }

    fn handle_line(&mut self, line: Line) {
        let reply = match line {
            Line::Text(text) if text.trim_end_matches('\r').is_empty() => return,
            Line::Text(text) => match VmmMsg::parse(&text) {
                Ok(VmmMsg::Ping { token }) => AgentMsg::Pong { token },
                Ok(VmmMsg::Time(t)) => {
                    if self.cfg.set_clock {
                        match sys::set_realtime(t.secs, t.nanos) {
                            Ok(()) => AgentMsg::TimeSet(t),
                            Err(e) => AgentMsg::Err {
                                text: format!("time {t}: {e}"),
                            },
                        }
                    } else {
                        // Not PID 1 (a test on the host): do not touch the host's clock.
                        AgentMsg::TimeSet(t)
                    }
                }
                Ok(VmmMsg::Poweroff) => {
                    self.request_stop(Stop::Poweroff, "poweroff request");
                    return;
                }
                Ok(VmmMsg::Net { base, spec }) => match self.attach_net(base, &spec) {
                    Some(failed) => failed,
                    None => return,
                },
                Ok(VmmMsg::Disk {
                    base,
                    irq: _,
                    id,
                    read_only,
                    dir,
                }) => self.attach_disk(
                    base,
                    disks::DiskSpec {
                        id,
                        dir: dir.into(),
                        read_only,
                    },
                ),
                Ok(VmmMsg::Resurrect {
                    manifest_gpa,
                    manifest_len,
                    window_gpa,
                    window_len,
                }) => self.resurrect(&resurrect::Request {
                    manifest_gpa,
                    manifest_len,
                    window_gpa,
                    window_len,
                }),
                Err(e) => AgentMsg::Err {
                    text: e.to_string(),
                },
            },
            Line::TooLong(n) => AgentMsg::Err {
                text: ProtoError::TooLong(n).to_string(),
            },
            Line::NotUtf8 => AgentMsg::Err {
                text: "request is not valid UTF-8".to_owned(),
            },
        };
        self.chan.send(&reply);
    }

    /// Handles `resurrect`: one `restored`/`not-restored` line per process as it is done,
    /// heartbeats in between, and returns the closing `resurrect-done`.
    fn resurrect(&mut self, req: &resurrect::Request) -> AgentMsg {
        crate::log!(
            "resurrect: manifest {:#x}+{}, window {:#x}+{:#x}",
            req.manifest_gpa,
            req.manifest_len,
            req.window_gpa,
            req.window_len
        );
        let mem = self.cfg.mem.clone();
        let sum = resurrect::run(req, &mem, &mut |ev| {
            match ev {
                resurrect::Event::Restored {
                    pid,
                    threads,
                    ms,
                    command,
                } => {
                    crate::log!("resurrected {pid} ({threads} threads, {ms} ms): {command}");
                    self.chan.send(&AgentMsg::Restored { pid, threads, ms });
                    if let Ok(pid) = libc::pid_t::try_from(pid) {
                        self.programs.push(Program { pid, command });
                    }
                }
                resurrect::Event::NotRestored { pid, reason } => {
                    crate::log!("not resurrected {pid}: {reason}");
                    self.chan.send(&AgentMsg::NotRestored { pid, reason });
                }
                resurrect::Event::Err(text) => {
                    crate::log!("{text}");
                    self.chan.send(&AgentMsg::Err { text });
                }
                resurrect::Event::Progress => {}
            }
            // Keep the heartbeat going through a long resurrection.
            let now = sys::uptime_ms();
            if now >= self.next_hb {
                self.tick(now);
            }
            self.chan.flush();
        });
        crate::log!(
            "resurrect: {} restored, {} failed, {} ms",
            sum.restored,
            sum.failed,
            sum.ms
        );
        // From now on this is the guest: what starts here must be resurrectable too.
        programs::raise_pid_floor_now();
        if self.standby_idle {
            self.standby_idle = false;
            if self.programs.is_empty() {
                // Nothing came back: give the console a shell, as a fresh boot would.
                let tty = self.cfg.shell_tty.clone();
                let name = format!(
                    "{} (interactive, {})",
                    programs::interactive_shell(),
                    tty.display()
                );
                let result = programs::spawn_shell(&tty);
                self.started(name, result);
            }
        }
        AgentMsg::ResurrectDone {
            restored: sum.restored,
            failed: sum.failed,
            ms: sum.ms,
        }
    }

    /// Reaps every exited child, reporting the ones we started. Returns false when we have
    /// no children left at all.
    fn reap(&mut self) -> bool {
        self.reap_due = false;
        loop {
            match sys::reap_one() {
                Ok(Some(r)) => {
                    let Some(i) = self.programs.iter().position(|p| p.pid == r.pid) else {
                        continue; // an orphan we inherited
                    };
                    let p = self.programs.remove(i);
                    let status = sys::decode_status(r.status);
                    crate::log!("exited {} ({status}): {}", p.pid, p.command);
                    self.chan.send(&AgentMsg::Exited {
                        pid: p.pid.unsigned_abs(),
                        status,
                        command: p.command,
                    });
                }
                Ok(None) => return true,
                Err(e) => {
                    if !sys::is_echild(&e) {
                        crate::log!("waitpid: {e}");
                        return true;
                    }
                    return false;
                }
            }
        }
    }

    /// Reaps until no children are left or `ms` have passed.
    fn wait_children(&mut self, ms: u64) {
        let deadline = sys::uptime_ms().saturating_add(ms);
        while self.reap() {
            let now = sys::uptime_ms();
            if now >= deadline {
                return;
            }
            match &self.signals {
                Some(fd) => {
                    // Drain wakeups so the next poll sleeps until the next SIGCHLD.
                    let mut buf = [0u8; 64];
                    while matches!(sys::read(fd, &mut buf), Ok(n) if n > 0) {}
                    sys::wait_readable(fd, (deadline - now).min(100));
                }
                None => std::thread::sleep(Duration::from_millis((deadline - now).min(50))),
            }
        }
    }

    /// Ends every process, says goodbye on the channel, syncs and calls reboot(2).
    /// Returns only when not PID 1.
    fn shutdown(&mut self, stop: Stop) -> libc::c_int {
        crate::log!(
            "{}",
            match stop {
                Stop::Poweroff => "powering off",
                Stop::Reboot => "rebooting",
            }
        );
        if self.cfg.pid1 {
            // Every process but us (kernel threads ignore this).
            let _ = sys::kill(-1, libc::SIGTERM);
            self.wait_children(TERM_GRACE_MS);
            let _ = sys::kill(-1, libc::SIGKILL);
            self.wait_children(HB_MS);
        } else {
            // Never signal -1 outside a guest: only our own programs' process groups.
            for sig in [libc::SIGTERM, libc::SIGKILL] {
                for p in &self.programs {
                    // The group, and the process itself in case it has not called
                    // setsid yet.
                    let _ = sys::kill(-p.pid, sig);
                    let _ = sys::kill(p.pid, sig);
                }
                self.wait_children(if sig == libc::SIGTERM {
                    TERM_GRACE_MS
                } else {
                    HB_MS
                });
            }
        }
        self.chan.send(&match stop {
            Stop::Poweroff => AgentMsg::Poweroff,
            Stop::Reboot => AgentMsg::Reboot,
        });
        self.chan.drain(DRAIN_MS);
        if !self.cfg.pid1 {
            return 0;
        }
        sys::sync();
        self.unmount_disks();
        let cmd = match stop {
            Stop::Poweroff => libc::RB_POWER_OFF,
            Stop::Reboot => libc::RB_AUTOBOOT,
        };
        let e = sys::reboot(cmd);
        crate::log!("reboot(2): {e}; idling");
        loop {
            self.reap();
            std::thread::sleep(Duration::from_millis(10 * HB_MS));
        }
    }
}
