//! The VMM's end of the agent channel (the guest's ttyS1): turns the agent's output into
//! messages, keeps what it said, and publishes events.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ow_agent::proto::{AgentMsg, ExitStatus};
use serde_json::json;

use crate::devices::bus::lock;
use crate::events::EventBus;

/// Longest line accepted from the agent; longer ones are dropped as garbage.
const MAX_LINE: usize = 4096;

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
    /// Lines that did not parse.
    pub bad_lines: u64,
    /// The agent confirmed it set the clock (it is alive and answering).
    pub clock_set: bool,
    /// The agent finished a `resurrect` request: (restored, failed, guest ms).
    pub resurrect_done: Option<(u64, u64, u64)>,
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

    fn handle_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.overlong) {
            lock(&self.state).bad_lines += 1;
            return;
        }
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
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            } else {
                self.overlong = true;
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
        assert_eq!(rx.try_recv().expect("ev")["event"], "agent-ready");
        assert_eq!(rx.try_recv().expect("ev")["event"], "heartbeat");
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
        assert!(st.poweroff);
        assert!(!st.ready);
    }
}
