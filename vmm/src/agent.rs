//! The VMM's end of the agent channel (the guest's ttyS1): turns the agent's output into
//! messages, keeps what it said, and publishes events.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ow_agent::proto::{AgentMsg, ExitStatus};
use serde_json::json;

use crate::devices::bus::lock;
use crate::events::EventBus;

/// Longest line accepted from the agent (without its `\n`, as `ow_agent::proto::MAX_LINE`).
/// A longer one is discarded up to the next `\n`, and never buffered beyond this.
pub const MAX_LINE: usize = ow_agent::proto::MAX_LINE;

/// What the VMM knows of the agent.
#[derive(Debug, Default, Clone)]
pub struct AgentState {
    /// The agent said `ready` (or the restored snapshot had it ready).
    pub ready: bool,
    /// Its version.
    pub version: Option<String>,
    /// When it said ready.
    pub ready_at: Option<Instant>,
    /// Heartbeats seen.
    pub heartbeats: u64,
    /// Last message of any kind.
    pub last_seen: Option<Instant>,
    /// Guest uptime from the last heartbeat.
    pub guest_uptime_ms: u64,
    /// The agent announced a power-off.
    pub poweroff: bool,
    /// The agent announced a reboot.
    pub reboot: bool,
    /// Lines that did not parse (over-long ones included).
    pub bad_lines: u64,
    /// Lines longer than [`MAX_LINE`], discarded unread.
    pub long_lines: u64,
    /// The agent confirmed it set the clock (it is alive and answering).
    pub clock_set: bool,
    /// The agent finished a `resurrect` request: (restored, failed, guest ms).
    pub resurrect_done: Option<(u64, u64, u64)>,
    /// A `--disk` the agent could not mount: (guest directory, reason).
    pub mount_failed: Option<(String, String)>,
    /// A `--net` interface the agent could not configure: the reason.
    pub net_failed: Option<String>,
}

/// Parser state plus shared agent state; the COM2 device writes into it.
pub struct AgentLink {
    line: Vec<u8>,
    overlong: bool,
    state: Arc<Mutex<AgentState>>,
    events: EventBus,
}

impl AgentLink {
    /// A link publishing on `events`.
    pub fn new(state: Arc<Mutex<AgentState>>, events: EventBus) -> Self {
        AgentLink {
            line: Vec::new(),
            overlong: false,
            state,
            events,
        }
    }

    /// The line being read just went over [`MAX_LINE`]: what it held is discarded, the rest
    /// of it will be, and one event says so.
    fn overflow(&mut self) {
        self.overlong = true;
        self.line.clear();
        let mut st = lock(&self.state);
        st.bad_lines += 1;
        st.long_lines += 1;
        let n = st.long_lines;
        drop(st);
        self.events.publish(
            "agent-line-dropped",
            json!({
                "limit": MAX_LINE,
                "lines_dropped": n,
                "reason": format!("a line longer than {MAX_LINE} bytes on the agent channel; discarded up to the next newline"),
            }),
        );
    }

    fn handle_line(&mut self) {
        if std::mem::take(&mut self.overlong) {
            return;
        }
        let line = std::mem::take(&mut self.line);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\r');
        if text.is_empty() {
            return;
        }
        let msg = match AgentMsg::parse(text) {
            Ok(m) => m,
            Err(e) => {
                lock(&self.state).bad_lines += 1;
                self.events
                    .publish("agent-garbled", json!({ "error": e.to_string() }));
                return;
            }
        };
        let now = Instant::now();
        let mut st = lock(&self.state);
        st.last_seen = Some(now);
        match msg {
            AgentMsg::Ready { uptime_ms, version } => {
                st.ready = true;
                st.ready_at = Some(now);
                st.guest_uptime_ms = uptime_ms;
                st.version = Some(version.clone());
                drop(st);
                self.events.publish(
                    "agent-ready",
                    json!({ "guest_uptime_ms": uptime_ms, "version": version }),
                );
            }
            AgentMsg::Heartbeat { seq, uptime_ms } => {
                st.heartbeats += 1;
                st.guest_uptime_ms = uptime_ms;
                // A restored guest's agent goes on with heartbeats, not `ready`.
                st.ready = true;
                drop(st);
                self.events.publish(
                    "heartbeat",
                    json!({ "seq": seq, "guest_uptime_ms": uptime_ms }),
                );
            }
            AgentMsg::Started { pid, command } => {
                drop(st);
                self.events
                    .publish("program-started", json!({ "pid": pid, "command": command }));
            }
            AgentMsg::Exited {
                pid,
                status,
                command,
            } => {
                drop(st);
                let (code, signal) = match status {
                    ExitStatus::Code(c) => (Some(c), None),
                    ExitStatus::Signal(s) => (None, Some(s)),
                };
                self.events.publish(
                    "program-exited",
                    json!({ "pid": pid, "code": code, "signal": signal, "command": command }),
                );
            }
            AgentMsg::Pong { token } => {
                drop(st);
                self.events.publish("agent-pong", json!({ "token": token }));
            }
            AgentMsg::TimeSet(t) => {
                st.clock_set = true;
                drop(st);
                self.events
                    .publish("guest-clock-set", json!({ "unix_time": t.to_string() }));
            }
            AgentMsg::Err { text } => {
                drop(st);
                self.events.publish("agent-error", json!({ "text": text }));
            }
            AgentMsg::Poweroff => {
                st.poweroff = true;
                drop(st);
                self.events.publish("guest-poweroff-requested", json!({}));
            }
            AgentMsg::Restored { pid, threads, ms } => {
                drop(st);
                self.events.publish(
                    "process-restored",
                    json!({ "pid": pid, "threads": threads, "guest_ms": ms }),
                );
            }
            AgentMsg::NotRestored { pid, reason } => {
                drop(st);
                self.events.publish(
                    "process-not-restored",
                    json!({ "pid": pid, "reason": reason }),
                );
            }
            AgentMsg::ResurrectDone {
                restored,
                failed,
                ms,
            } => {
                st.resurrect_done = Some((u64::from(restored), u64::from(failed), ms));
                drop(st);
                self.events.publish(
                    "resurrect-done",
                    json!({ "restored": restored, "failed": failed, "guest_ms": ms }),
                );
            }
            AgentMsg::MountFailed { dir, reason } => {
                st.mount_failed = Some((dir.clone(), reason.clone()));
                drop(st);
                self.events
                    .publish("disk-mount-failed", json!({ "dir": dir, "reason": reason }));
            }
            AgentMsg::Mounted { id, dir } => {
                drop(st);
                self.events
                    .publish("disk-mounted", json!({ "id": id, "dir": dir }));
            }
            AgentMsg::NetFailed { reason } => {
                st.net_failed = Some(reason.clone());
                drop(st);
                self.events
                    .publish("net-setup-failed", json!({ "reason": reason }));
            }
            AgentMsg::Reboot => {
                st.reboot = true;
                drop(st);
                self.events.publish("guest-reboot-requested", json!({}));
            }
        }
    }
}

impl Write for AgentLink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.handle_line();
            } else if self.overlong {
                // Still inside a discarded line.
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.overflow();
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_split_across_writes() {
        let state = Arc::new(Mutex::new(AgentState::default()));
        let bus = EventBus::new(Instant::now());
        let rx = bus.subscribe();
        let mut link = AgentLink::new(state.clone(), bus);
        link.write_all(b"rea").expect("w");
        link.write_all(b"dy 1500 0.1.0\nhb 1 2500\n").expect("w");
        let st = lock(&state).clone();
        assert!(st.ready);
        assert_eq!(st.heartbeats, 1);
        assert_eq!(st.guest_uptime_ms, 2500);
        let event = |l: crate::events::EventLine| {
            serde_json::from_str::<serde_json::Value>(&l).expect("json")["event"].clone()
        };
        assert_eq!(event(rx.try_recv().expect("ev")), "agent-ready");
        assert_eq!(event(rx.try_recv().expect("ev")), "heartbeat");
    }

    #[test]
    fn garbage_and_overlong_lines_are_counted_not_fatal() {
        let state = Arc::new(Mutex::new(AgentState::default()));
        let mut link = AgentLink::new(state.clone(), EventBus::new(Instant::now()));
        link.write_all(b"\x00\xffnonsense 1 2\n").expect("w");
        link.write_all(&vec![b'a'; MAX_LINE + 10]).expect("w");
        link.write_all(b"\npoweroff\n").expect("w");
        let st = lock(&state).clone();
        assert_eq!(st.bad_lines, 2);
        assert_eq!(st.long_lines, 1);
        assert!(st.poweroff);
        assert!(!st.ready);
    }

    #[test]
    fn a_16_mib_line_is_not_buffered_and_is_reported_once() {
        let state = Arc::new(Mutex::new(AgentState::default()));
        let bus = EventBus::new(Instant::now());
        let rx = bus.subscribe();
        let mut link = AgentLink::new(state.clone(), bus);
        link.write_all(b"hb 1 1000\nerr this line goes on ")
            .expect("w");
        // 16 MiB without a newline, written the way a UART delivers it and in big chunks.
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..256 {
            link.write_all(&chunk).expect("w");
            assert!(link.line.capacity() <= MAX_LINE, "{}", link.line.capacity());
        }
        for _ in 0..1000 {
            link.write_all(b"y").expect("w");
        }
        assert!(link.line.capacity() <= MAX_LINE);
        // The next newline ends it; what follows is read normally.
        link.write_all(b"still the long line\nhb 2 2000\n")
            .expect("w");
        let st = lock(&state).clone();
        assert_eq!((st.heartbeats, st.guest_uptime_ms), (2, 2000));
        assert_eq!((st.long_lines, st.bad_lines), (1, 1));
        let events: Vec<serde_json::Value> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|l| serde_json::from_str(&l).expect("json"))
            .collect();
        let names: Vec<_> = events.iter().map(|e| e["event"].clone()).collect();
        assert_eq!(
            names,
            ["heartbeat", "agent-line-dropped", "heartbeat"],
            "{events:?}"
        );
        assert_eq!(events[1]["limit"], MAX_LINE);
        assert_eq!(events[1]["lines_dropped"], 1);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted() {
        let state = Arc::new(Mutex::new(AgentState::default()));
        let mut link = AgentLink::new(state.clone(), EventBus::new(Instant::now()));
        let mut line = b"err ".to_vec();
        line.resize(MAX_LINE, b'z');
        line.push(b'\n');
        link.write_all(&line).expect("w");
        line.insert(0, b'z');
        link.write_all(&line).expect("w");
        let st = lock(&state).clone();
        // The first is an `err` message, the second one byte too long.
        assert_eq!((st.long_lines, st.bad_lines), (1, 1));
        assert!(st.last_seen.is_some());
    }
}
