//! The line protocol spoken on the agent channel (`/dev/ttyS1` in the guest).
//!
//! One message per line, ASCII (free-text fields may carry UTF-8), `\n` terminated,
//! fields separated by single spaces. The last field of a message may contain spaces.
//! A line is at most [`MAX_LINE`] bytes long, not counting the terminating `\n`
//! (a trailing `\r` is tolerated and ignored by [`AgentMsg::parse`] and [`VmmMsg::parse`]).
//!
//! | direction | line | meaning |
//! |---|---|---|
//! | agent → VMM | `ready <uptime_ms> <agent_version>` | channel open, programs started |
//! | agent → VMM | `hb <seq> <uptime_ms>` | heartbeat, every second, `seq` starts at 1 |
//! | agent → VMM | `started <pid> <command...>` | a program was started |
//! | agent → VMM | `exited <pid> <code or sigN> <command...>` | a started program ended |
//! | agent → VMM | `pong <token>` | reply to `ping` |
//! | agent → VMM | `time-set <secs>.<nanos9>` | reply to `time` |
//! | agent → VMM | `err <text>` | a request it did not understand, or a local failure |
//! | agent → VMM | `poweroff` / `reboot` | sent right before `reboot(2)` |
//! | agent → VMM | `restored <pid> <threads> <ms>` | one process of a `resurrect` is running again |
//! | agent → VMM | `not-restored <pid> <reason...>` | one process could not be restored (it was killed) |
//! | agent → VMM | `resurrect-done <restored> <failed> <ms>` | the answer to `resurrect`, after the per-process lines |
//! | agent → VMM | `mount-failed <dir> <reason...>` | a `--disk` could not be mounted; no program was started |
//! | agent → VMM | `mounted <id> <dir...>` | a `--disk` is mounted (at boot, or in a crash kernel after `disk`) |
//! | agent → VMM | `net-failed <reason...>` | a `--net` interface could not be configured; no program was started |
//! | VMM → agent | `ping <token>` | liveness probe |
//! | VMM → agent | `time <secs>.<nanos9>` | set `CLOCK_REALTIME` |
//! | VMM → agent | `poweroff` | orderly power off |
//! | VMM → agent | `disk <base> <irq> <id> <ro or rw> <dir...>` | (crash kernel) probe the virtio-mmio disk at `base`/`irq` and mount it at `dir`, answered with `mounted` or `mount-failed` |
//! | VMM → agent | `net <base> <mac>[,<addr>/<prefix>[,<gw>]]` | (crash kernel) probe the virtio-mmio network device at `base` and configure it, answered with `net-failed` if it cannot |
//! | VMM → agent | `resurrect <manifest_gpa> <manifest_len> <window_gpa> <window_len>` | recreate the processes of a crashed kernel (`docs/resurrection.md`) |
//!
//! This module is pure (no I/O, no libc) so that the VMM can use it as well.

use std::fmt;

/// Longest accepted line in bytes, without the terminating `\n`.
pub const MAX_LINE: usize = 4096;

/// Errors from parsing a protocol line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The line was empty.
    #[error("empty line")]
    Empty,
    /// The line is longer than [`MAX_LINE`] bytes.
    #[error("line too long ({0} bytes, limit {MAX_LINE})")]
    TooLong(usize),
    /// The line contains a control character (other than a trailing `\r`/`\n`).
    #[error("control character 0x{0:02x} in line")]
    ControlChar(u8),
    /// The first field is not a known message verb.
    #[error("unknown request '{0}'")]
    UnknownVerb(String),
    /// A required field is missing (or empty).
    #[error("{verb}: missing field <{field}>")]
    MissingField {
        /// The message verb.
        verb: &'static str,
        /// The name of the missing field.
        field: &'static str,
    },
    /// A numeric field did not parse.
    #[error("{verb}: bad <{field}> '{value}'")]
    BadNumber {
        /// The message verb.
        verb: &'static str,
        /// The name of the field.
        field: &'static str,
        /// The offending text (shortened).
        value: String,
    },
    /// There was more on the line than the message has fields.
    #[error("{verb}: unexpected trailing data")]
    TrailingData {
        /// The message verb.
        verb: &'static str,
    },
}

/// A wall-clock time: seconds and nanoseconds since the Unix epoch.
///
/// On the wire: `<secs>.<nanos>` with exactly nine digits of nanoseconds, e.g.
/// `1764300000.000000042`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub secs: u64,
    /// Nanoseconds, `0..1_000_000_000`.
    pub nanos: u32,
}

impl UnixTime {
    /// Parses `<secs>.<nanos9>`.
    fn parse_field(verb: &'static str, field: &'static str, s: &str) -> Result<Self, ProtoError> {
        let bad = || ProtoError::BadNumber {
            verb,
            field,
            value: shorten(s),
        };
        let (secs, nanos) = s.split_once('.').ok_or_else(bad)?;
        if nanos.len() != 9 {
            return Err(bad());
        }
        let secs = parse_digits::<u64>(secs).ok_or_else(bad)?;
        let nanos = parse_digits::<u32>(nanos).ok_or_else(bad)?;
        if nanos >= 1_000_000_000 {
            return Err(bad());
        }
        Ok(Self { secs, nanos })
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nanos)
    }
}

/// How a started program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// Normal exit with this code (`0`..`255`). Wire form: the number.
    Code(u8),
    /// Killed by this signal. Wire form: `sig<N>`, e.g. `sig9`.
    Signal(u8),
}

impl ExitStatus {
    fn parse_field(verb: &'static str, s: &str) -> Result<Self, ProtoError> {
        let bad = || ProtoError::BadNumber {
            verb,
            field: "status",
            value: shorten(s),
        };
        match s.strip_prefix("sig") {
            Some(n) => parse_digits::<u8>(n).map(Self::Signal).ok_or_else(bad),
            None => parse_digits::<u8>(s).map(Self::Code).ok_or_else(bad),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(c) => write!(f, "{c}"),
            Self::Signal(s) => write!(f, "sig{s}"),
        }
    }
}

/// A message from the agent to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMsg {
    /// `ready <uptime_ms> <agent_version>`: the channel is open and the programs are started.
    Ready {
        /// Guest uptime (`CLOCK_BOOTTIME`) in milliseconds.
        uptime_ms: u64,
        /// The agent's version string.
        version: String,
    },
    /// `hb <seq> <uptime_ms>`: heartbeat, once a second; `seq` starts at 1.
    Heartbeat {
        /// Sequence number, 1 for the first heartbeat.
        seq: u64,
        /// Guest uptime in milliseconds.
        uptime_ms: u64,
    },
    /// `started <pid> <command...>`.
    Started {
        /// Guest PID of the program.
        pid: u32,
        /// The command line as configured.
        command: String,
    },
    /// `exited <pid> <code-or-sigN> <command...>`.
    Exited {
        /// Guest PID of the program.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// The command line as configured.
        command: String,
    },
    /// `pong <token>`: reply to [`VmmMsg::Ping`].
    Pong {
        /// The token from the ping, verbatim.
        token: String,
    },
    /// `time-set <secs>.<nanos9>`: reply to [`VmmMsg::Time`], the time that was set.
    TimeSet(UnixTime),
    /// `err <text>`: a request the agent did not understand (naming it), or a local failure.
    Err {
        /// Free text.
        text: String,
    },
    /// `poweroff`: the agent is about to power the guest off.
    Poweroff,
    /// `reboot`: the agent is about to reboot the guest.
    Reboot,
    /// `restored <pid> <threads> <ms>`: a process of a [`VmmMsg::Resurrect`] runs again.
    Restored {
        /// Its PID (the same as before the crash).
        pid: u32,
        /// How many threads it has.
        threads: u32,
        /// How long its restore took, in milliseconds.
        ms: u64,
    },
    /// `not-restored <pid> <reason...>`: a process of a [`VmmMsg::Resurrect`] could not be
    /// restored. Whatever had been built of it was killed first.
    NotRestored {
        /// Its PID (`0` when the manifest did not even name it).
        pid: u32,
        /// Free text.
        reason: String,
    },
    /// `mount-failed <dir> <reason...>`: a disk of the command line (`owvmm.disk=`) could
    /// not be mounted at `dir`; the agent started no program.
    MountFailed {
        /// The mount point.
        dir: String,
        /// Free text.
        reason: String,
    },
    /// `mounted <id> <dir...>`: the disk with serial `id` is mounted at `dir`.
    Mounted {
        /// The device's serial.
        id: String,
        /// The mount point.
        dir: String,
    },
    /// `net-failed <reason...>`: a network interface of the command line (`owvmm.net=`)
    /// could not be configured; the agent started no program.
    NetFailed {
        /// Free text.
        reason: String,
    },
    /// `resurrect-done <restored> <failed> <ms>`: the end of the answer to
    /// [`VmmMsg::Resurrect`].
    ResurrectDone {
        /// Processes restored.
        restored: u32,
        /// Processes not restored.
        failed: u32,
        /// Total time in milliseconds.
        ms: u64,
    },
}

/// A message from the VMM to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmMsg {
    /// `ping <token>`: answered with [`AgentMsg::Pong`].
    Ping {
        /// Any non-empty text (may contain spaces).
        token: String,
    },
    /// `time <secs>.<nanos9>`: set `CLOCK_REALTIME`, answered with [`AgentMsg::TimeSet`].
    Time(UnixTime),
    /// `poweroff`: orderly power off.
    Poweroff,
    /// `disk <base> <irq> <id> <ro|rw> <dir...>`: a crash kernel, which booted without
    /// the user's disks, probes the virtio-mmio device at `base`/`irq` (a fresh view of the
    /// disk, read after the crash) and mounts it at `dir`, replaying its journal. Answered
    /// with [`AgentMsg::Mounted`] or [`AgentMsg::MountFailed`].
    Disk {
        /// Guest-physical address of the device's register window.
        base: u64,
        /// Its interrupt.
        irq: u32,
        /// The device's serial.
        id: String,
        /// Mount read-only.
        read_only: bool,
        /// The mount point (absolute).
        dir: String,
    },
    /// `net <base> <spec>`: a crash kernel probes the virtio-mmio network device at `base`
    /// and configures the interface as `spec` says (the value of an `owvmm.net=` word).
    /// Answered with [`AgentMsg::NetFailed`] when it cannot, else nothing.
    Net {
        /// Guest-physical address of the device's register window.
        base: u64,
        /// `MAC[,ADDR/PREFIX[,GW]]`.
        spec: String,
    },
    /// `resurrect <manifest_gpa> <manifest_len> <window_gpa> <window_len>`: recreate the
    /// processes described by the manifest, reading the dead kernel's memory through the
    /// window (see `docs/resurrection.md`). Answered with one [`AgentMsg::Restored`] or
    /// [`AgentMsg::NotRestored`] per process, then [`AgentMsg::ResurrectDone`].
    Resurrect {
        /// Guest-physical address of the manifest text.
        manifest_gpa: u64,
        /// Its length in bytes.
        manifest_len: u64,
        /// Guest-physical address where old-physical address 0 appears.
        window_gpa: u64,
        /// Length of the window in bytes.
        window_len: u64,
    },
}

impl AgentMsg {
    /// Parses one line (without or with its trailing `\n`).
    pub fn parse(line: &str) -> Result<Self, ProtoError> {
        let mut f = Fields::new(line)?;
        let msg = match f.verb {
            "ready" => {
                let v = "ready";
                Self::Ready {
                    uptime_ms: f.number(v, "uptime_ms")?,
                    version: f.rest(v, "agent_version")?,
                }
            }
            "hb" => {
                let v = "hb";
                Self::Heartbeat {
                    seq: f.number(v, "seq")?,
                    uptime_ms: f.number(v, "uptime_ms")?,
                }
            }
            "started" => {
                let v = "started";
                Self::Started {
                    pid: f.number(v, "pid")?,
                    command: f.rest(v, "command")?,
                }
            }
            "exited" => {
                let v = "exited";
                Self::Exited {
                    pid: f.number(v, "pid")?,
                    status: ExitStatus::parse_field(v, f.field(v, "status")?)?,
                    command: f.rest(v, "command")?,
                }
            }
            "pong" => Self::Pong {
                token: f.rest("pong", "token")?,
            },
            "time-set" => {
                let v = "time-set";
                Self::TimeSet(UnixTime::parse_field(v, "time", f.field(v, "time")?)?)
            }
            "err" => Self::Err {
                text: f.rest("err", "text")?,
            },
            "poweroff" => Self::Poweroff,
            "reboot" => Self::Reboot,
            "restored" => {
                let v = "restored";
                Self::Restored {
                    pid: f.number(v, "pid")?,
                    threads: f.number(v, "threads")?,
                    ms: f.number(v, "ms")?,
                }
            }
            "mount-failed" => {
                let v = "mount-failed";
                Self::MountFailed {
                    dir: f.field(v, "dir")?.to_owned(),
                    reason: f.rest(v, "reason")?,
                }
            }
            "mounted" => {
                let v = "mounted";
                Self::Mounted {
                    id: f.field(v, "id")?.to_owned(),
                    dir: f.rest(v, "dir")?,
                }
            }
            "net-failed" => Self::NetFailed {
                reason: f.rest("net-failed", "reason")?,
            },
            "not-restored" => {
                let v = "not-restored";
                Self::NotRestored {
                    pid: f.number(v, "pid")?,
                    reason: f.rest(v, "reason")?,
                }
            }
            "resurrect-done" => {
                let v = "resurrect-done";
                Self::ResurrectDone {
                    restored: f.number(v, "restored")?,
                    failed: f.number(v, "failed")?,
                    ms: f.number(v, "ms")?,
                }
            }
            other => return Err(ProtoError::UnknownVerb(shorten(other))),
        };
        f.finish(msg.verb())?;
        Ok(msg)
    }

    /// The first field of the line.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ready { .. } => "ready",
            Self::Heartbeat { .. } => "hb",
            Self::Started { .. } => "started",
            Self::Exited { .. } => "exited",
            Self::Pong { .. } => "pong",
            Self::TimeSet(_) => "time-set",
            Self::Err { .. } => "err",
            Self::Poweroff => "poweroff",
            Self::Reboot => "reboot",
            Self::Restored { .. } => "restored",
            Self::NotRestored { .. } => "not-restored",
            Self::MountFailed { .. } => "mount-failed",
            Self::Mounted { .. } => "mounted",
            Self::NetFailed { .. } => "net-failed",
            Self::ResurrectDone { .. } => "resurrect-done",
        }
    }

    /// The wire form, including the terminating `\n`. See [`encode_line`] for how
    /// unsafe text is made safe.
    pub fn encode(&self) -> String {
        encode_line(self)
    }
}

impl VmmMsg {
    /// Parses one line (without or with its trailing `\n`).
    pub fn parse(line: &str) -> Result<Self, ProtoError> {
        let mut f = Fields::new(line)?;
        let msg = match f.verb {
            "ping" => Self::Ping {
                token: f.rest("ping", "token")?,
            },
            "time" => Self::Time(UnixTime::parse_field(
                "time",
                "time",
                f.field("time", "time")?,
            )?),
            "poweroff" => Self::Poweroff,
            "disk" => {
                let v = "disk";
                Self::Disk {
                    base: f.number(v, "base")?,
                    irq: f.number(v, "irq")?,
                    id: f.field(v, "id")?.to_owned(),
                    read_only: match f.field(v, "mode")? {
                        "ro" => true,
                        "rw" => false,
                        other => {
                            return Err(ProtoError::BadNumber {
                                verb: v,
                                field: "mode",
                                value: shorten(other),
                            })
                        }
                    },
                    dir: f.rest(v, "dir")?,
                }
            }
            "net" => Self::Net {
                base: f.number("net", "base")?,
                spec: f.field("net", "spec")?.to_owned(),
            },
            "resurrect" => {
                let v = "resurrect";
                Self::Resurrect {
                    manifest_gpa: f.number(v, "manifest_gpa")?,
                    manifest_len: f.number(v, "manifest_len")?,
                    window_gpa: f.number(v, "window_gpa")?,
                    window_len: f.number(v, "window_len")?,
                }
            }
            other => return Err(ProtoError::UnknownVerb(shorten(other))),
        };
        f.finish(msg.verb())?;
        Ok(msg)
    }

    /// The first field of the line.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ping { .. } => "ping",
            Self::Time(_) => "time",
            Self::Poweroff => "poweroff",
            Self::Disk { .. } => "disk",
            Self::Net { .. } => "net",
            Self::Resurrect { .. } => "resurrect",
        }
    }

    /// The wire form, including the terminating `\n`. See [`encode_line`].
    pub fn encode(&self) -> String {
        encode_line(self)
    }
}

impl fmt::Display for AgentMsg {
    /// The line without its `\n`. Free-text fields are written verbatim; use
    /// [`AgentMsg::encode`] to get a line that is always safe to send.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready { uptime_ms, version } => write!(f, "ready {uptime_ms} {version}"),
            Self::Heartbeat { seq, uptime_ms } => write!(f, "hb {seq} {uptime_ms}"),
            Self::Started { pid, command } => write!(f, "started {pid} {command}"),
            Self::Exited {
                pid,
                status,
                command,
            } => write!(f, "exited {pid} {status} {command}"),
            Self::Pong { token } => write!(f, "pong {token}"),
            Self::TimeSet(t) => write!(f, "time-set {t}"),
            Self::Err { text } => write!(f, "err {text}"),
            Self::Poweroff => f.write_str("poweroff"),
            Self::Reboot => f.write_str("reboot"),
            Self::Restored { pid, threads, ms } => write!(f, "restored {pid} {threads} {ms}"),
            Self::NotRestored { pid, reason } => write!(f, "not-restored {pid} {reason}"),
            Self::MountFailed { dir, reason } => write!(f, "mount-failed {dir} {reason}"),
            Self::Mounted { id, dir } => write!(f, "mounted {id} {dir}"),
            Self::NetFailed { reason } => write!(f, "net-failed {reason}"),
            Self::ResurrectDone {
                restored,
                failed,
                ms,
            } => write!(f, "resurrect-done {restored} {failed} {ms}"),
        }
    }
}

impl fmt::Display for VmmMsg {
    /// The line without its `\n`. Use [`VmmMsg::encode`] for a line that is always safe to send.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ping { token } => write!(f, "ping {token}"),
            Self::Time(t) => write!(f, "time {t}"),
            Self::Poweroff => f.write_str("poweroff"),
            Self::Disk {
                base,
                irq,
                id,
                read_only,
                dir,
            } => write!(
                f,
                "disk {base} {irq} {id} {} {dir}",
                if *read_only { "ro" } else { "rw" }
            ),
            Self::Net { base, spec } => write!(f, "net {base} {spec}"),
            Self::Resurrect {
                manifest_gpa,
                manifest_len,
                window_gpa,
                window_len,
            } => write!(
                f,
                "resurrect {manifest_gpa} {manifest_len} {window_gpa} {window_len}"
            ),
        }
    }
}

/// Formats a message as a line that the receiver's `parse` accepts: control characters
/// are replaced by `?`, an empty last field becomes `-`, the line is cut (at a character
/// boundary) to [`MAX_LINE`] bytes, and `\n` is appended. For messages whose text fields are
/// already clean and short, the result is exactly `format!("{msg}\n")`.
pub fn encode_line(msg: &impl fmt::Display) -> String {
    let raw = msg.to_string();
    let mut out = String::with_capacity(raw.len().min(MAX_LINE) + 2);
    for c in raw.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_LINE {
            break;
        }
        out.push(c);
    }
    // A message whose last (free-text) field is empty would end in a space and parse as
    // "missing field"; give it a placeholder instead.
    if out.ends_with(' ') {
        if out.len() < MAX_LINE {
            out.push('-');
        } else {
            out.pop();
        }
    }
    out.push('\n');
    out
}

/// Cuts `s` to at most 64 bytes (at a character boundary) for use in error messages.
fn shorten(s: &str) -> String {
    const LIMIT: usize = 64;
    if s.len() <= LIMIT {
        return s.to_owned();
    }
    let mut end = LIMIT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Parses a plain unsigned decimal (no sign, no spaces, at least one digit).
fn parse_digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A cursor over the fields of one line.
struct Fields<'a> {
    verb: &'a str,
    /// What follows the verb and its separating space, `None` if nothing followed.
    rest: Option<&'a str>,
}

impl<'a> Fields<'a> {
    fn new(line: &'a str) -> Result<Self, ProtoError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > MAX_LINE {
            return Err(ProtoError::TooLong(line.len()));
        }
        if let Some(b) = line.bytes().find(|b| b.is_ascii_control()) {
            return Err(ProtoError::ControlChar(b));
        }
        if line.is_empty() {
            return Err(ProtoError::Empty);
        }
        let (verb, rest) = match line.split_once(' ') {
            Some((v, r)) => (v, Some(r)),
            None => (line, None),
        };
        if verb.is_empty() {
            return Err(ProtoError::UnknownVerb(String::new()));
        }
        Ok(Self { verb, rest })
    }

    /// The next space-separated field (must be non-empty).
    fn field(&mut self, verb: &'static str, field: &'static str) -> Result<&'a str, ProtoError> {
        let rest = self.rest.take().unwrap_or("");
        let (f, r) = match rest.split_once(' ') {
            Some((f, r)) => (f, Some(r)),
            None => (rest, None),
        };
        if f.is_empty() {
            return Err(ProtoError::MissingField { verb, field });
        }
        self.rest = r;
        Ok(f)
    }

    /// The next field as an unsigned number.
    fn number<T: std::str::FromStr>(
        &mut self,
        verb: &'static str,
        field: &'static str,
    ) -> Result<T, ProtoError> {
        let s = self.field(verb, field)?;
        parse_digits(s).ok_or_else(|| ProtoError::BadNumber {
            verb,
            field,
            value: shorten(s),
        })
    }

    /// Everything that is left, spaces included (must be non-empty).
    fn rest(&mut self, verb: &'static str, field: &'static str) -> Result<String, ProtoError> {
        match self.rest.take() {
            Some(r) if !r.is_empty() => Ok(r.to_owned()),
            _ => Err(ProtoError::MissingField { verb, field }),
        }
    }

    /// Checks that nothing is left over.
    fn finish(&self, verb: &'static str) -> Result<(), ProtoError> {
        match self.rest {
            None => Ok(()),
            Some(_) => Err(ProtoError::TrailingData { verb }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_round_trip(msg: AgentMsg, line: &str) {
        assert_eq!(msg.to_string(), line);
        assert_eq!(msg.encode(), format!("{line}\n"));
        assert_eq!(AgentMsg::parse(line), Ok(msg.clone()));
        assert_eq!(AgentMsg::parse(&msg.encode()), Ok(msg));
    }

    fn vmm_round_trip(msg: VmmMsg, line: &str) {
        assert_eq!(msg.to_string(), line);
        assert_eq!(msg.encode(), format!("{line}\n"));
        assert_eq!(VmmMsg::parse(line), Ok(msg.clone()));
        assert_eq!(VmmMsg::parse(&msg.encode()), Ok(msg));
    }

    #[test]
    fn agent_messages_round_trip() {
        agent_round_trip(
            AgentMsg::Ready {
                uptime_ms: 123_456,
                version: "0.1.0".into(),
            },
            "ready 123456 0.1.0",
        );
        agent_round_trip(
            AgentMsg::Heartbeat {
                seq: 1,
                uptime_ms: 130_001,
            },
            "hb 1 130001",
        );
        agent_round_trip(
            AgentMsg::Started {
                pid: 42,
                command: "echo hello from exec; sleep 3".into(),
            },
            "started 42 echo hello from exec; sleep 3",
        );
        agent_round_trip(
            AgentMsg::Exited {
                pid: 42,
                status: ExitStatus::Code(0),
                command: "echo hi".into(),
            },
            "exited 42 0 echo hi",
        );
        agent_round_trip(
            AgentMsg::Exited {
                pid: 7,
                status: ExitStatus::Signal(9),
                command: "sleep 100".into(),
            },
            "exited 7 sig9 sleep 100",
        );
        agent_round_trip(
            AgentMsg::Exited {
                pid: 8,
                status: ExitStatus::Code(255),
                command: "false".into(),
            },
            "exited 8 255 false",
        );
        agent_round_trip(AgentMsg::Pong { token: "7".into() }, "pong 7");
        agent_round_trip(
            AgentMsg::Pong {
                token: "a token with spaces".into(),
            },
            "pong a token with spaces",
        );
        agent_round_trip(
            AgentMsg::TimeSet(UnixTime {
                secs: 1_764_300_000,
                nanos: 42,
            }),
            "time-set 1764300000.000000042",
        );
        agent_round_trip(
            AgentMsg::Err {
                text: "unknown request 'frob'".into(),
            },
            "err unknown request 'frob'",
        );
        agent_round_trip(AgentMsg::Poweroff, "poweroff");
        agent_round_trip(AgentMsg::Reboot, "reboot");
        agent_round_trip(
            AgentMsg::Restored {
                pid: 312,
                threads: 2,
                ms: 17,
            },
            "restored 312 2 17",
        );
        agent_round_trip(
            AgentMsg::NotRestored {
                pid: 313,
                reason: "fd 4: cannot restore sock".into(),
            },
            "not-restored 313 fd 4: cannot restore sock",
        );
        agent_round_trip(
            AgentMsg::MountFailed {
                dir: "/data".into(),
                reason: "mount /dev/vda on /data (ext4): Invalid argument".into(),
            },
            "mount-failed /data mount /dev/vda on /data (ext4): Invalid argument",
        );
        agent_round_trip(
            AgentMsg::Mounted {
                id: "disk0".into(),
                dir: "/data".into(),
            },
            "mounted disk0 /data",
        );
        agent_round_trip(
            AgentMsg::NetFailed {
                reason: "no interface with MAC 06:00:00:00:00:01".into(),
            },
            "net-failed no interface with MAC 06:00:00:00:00:01",
        );
        agent_round_trip(
            AgentMsg::ResurrectDone {
                restored: 1,
                failed: 1,
                ms: 40,
            },
            "resurrect-done 1 1 40",
        );
    }

    #[test]
    fn resurrect_messages_reject_bad_lines() {
        use ProtoError::{BadNumber, MissingField, TrailingData};
        assert!(matches!(
            AgentMsg::parse("restored 1 2"),
            Err(MissingField {
                verb: "restored",
                field: "ms"
            })
        ));
        assert!(matches!(
            AgentMsg::parse("restored 1 x 3"),
            Err(BadNumber {
                verb: "restored",
                field: "threads",
                ..
            })
        ));
        assert!(matches!(
            AgentMsg::parse("restored 1 2 3 4"),
            Err(TrailingData { verb: "restored" })
        ));
        assert!(matches!(
            AgentMsg::parse("not-restored 5"),
            Err(MissingField {
                verb: "not-restored",
                field: "reason"
            })
        ));
        assert!(matches!(
            AgentMsg::parse("resurrect-done 1 -1 3"),
            Err(BadNumber {
                verb: "resurrect-done",
                field: "failed",
                ..
            })
        ));
        assert!(matches!(
            VmmMsg::parse("resurrect 1 2 3"),
            Err(MissingField {
                verb: "resurrect",
                field: "window_len"
            })
        ));
        assert!(matches!(
            VmmMsg::parse("resurrect 0x10 2 3 4"),
            Err(BadNumber {
                verb: "resurrect",
                field: "manifest_gpa",
                ..
            })
        ));
        assert!(matches!(
            VmmMsg::parse("resurrect 1 2 3 4 5"),
            Err(TrailingData { verb: "resurrect" })
        ));
        // The empty reason placeholder still parses.
        let m = AgentMsg::NotRestored {
            pid: 9,
            reason: String::new(),
        };
        assert_eq!(m.encode(), "not-restored 9 -\n");
    }

    #[test]
    fn vmm_messages_round_trip() {
        vmm_round_trip(VmmMsg::Ping { token: "7".into() }, "ping 7");
        vmm_round_trip(
            VmmMsg::Ping {
                token: "x y  z".into(),
            },
            "ping x y  z",
        );
        vmm_round_trip(
            VmmMsg::Time(UnixTime {
                secs: 0,
                nanos: 999_999_999,
            }),
            "time 0.999999999",
        );
        vmm_round_trip(
            VmmMsg::Time(UnixTime {
                secs: 1_764_300_000,
                nanos: 500_000_000,
            }),
            "time 1764300000.500000000",
        );
        vmm_round_trip(VmmMsg::Poweroff, "poweroff");
        vmm_round_trip(
            VmmMsg::Disk {
                base: 0xd000_1000,
                irq: 6,
                id: "disk1".into(),
                read_only: true,
                dir: "/srv/my data".into(),
            },
            "disk 3489665024 6 disk1 ro /srv/my data",
        );
        vmm_round_trip(
            VmmMsg::Net {
                base: 0xd000_2000,
                spec: "06:00:00:00:00:01,169.254.77.2/24".into(),
            },
            "net 3489669120 06:00:00:00:00:01,169.254.77.2/24",
        );
        assert!(VmmMsg::parse("net 1 a b").is_err());
        assert!(VmmMsg::parse("disk 1 2 disk0 rx /d").is_err());
        assert!(VmmMsg::parse("disk 1 2 disk0 rw").is_err());
        vmm_round_trip(
            VmmMsg::Resurrect {
                manifest_gpa: 0xf_f000_0000,
                manifest_len: 12_345,
                window_gpa: 0x10_0000_0000,
                window_len: 3 << 30,
            },
            "resurrect 68451041280 12345 68719476736 3221225472",
        );
    }

    #[test]
    fn crlf_and_lf_are_stripped() {
        assert_eq!(
            VmmMsg::parse("ping 7\r\n"),
            Ok(VmmMsg::Ping { token: "7".into() })
        );
        assert_eq!(VmmMsg::parse("poweroff\n"), Ok(VmmMsg::Poweroff));
    }

    #[test]
    fn unknown_verbs() {
        assert_eq!(
            VmmMsg::parse("frob 1"),
            Err(ProtoError::UnknownVerb("frob".into()))
        );
        // Agent-to-VMM verbs are not requests.
        assert_eq!(
            VmmMsg::parse("hb 1 2"),
            Err(ProtoError::UnknownVerb("hb".into()))
        );
        assert_eq!(
            AgentMsg::parse("ping 1"),
            Err(ProtoError::UnknownVerb("ping".into()))
        );
        assert_eq!(
            VmmMsg::parse(" ping 1"),
            Err(ProtoError::UnknownVerb(String::new()))
        );
        // Verbs are case sensitive.
        assert_eq!(
            VmmMsg::parse("PING 1"),
            Err(ProtoError::UnknownVerb("PING".into()))
        );
        let e = VmmMsg::parse("frob").expect_err("must fail").to_string();
        assert!(e.contains("frob"), "{e}");
    }

    #[test]
    fn missing_fields() {
        use ProtoError::MissingField;
        assert_eq!(
            VmmMsg::parse("ping"),
            Err(MissingField {
                verb: "ping",
                field: "token"
            })
        );
        assert_eq!(
            VmmMsg::parse("ping "),
            Err(MissingField {
                verb: "ping",
                field: "token"
            })
        );
        assert_eq!(
            VmmMsg::parse("time"),
            Err(MissingField {
                verb: "time",
                field: "time"
            })
        );
        assert_eq!(
            AgentMsg::parse("hb 1"),
            Err(MissingField {
                verb: "hb",
                field: "uptime_ms"
            })
        );
        assert_eq!(
            AgentMsg::parse("ready 5"),
            Err(MissingField {
                verb: "ready",
                field: "agent_version"
            })
        );
        assert_eq!(
            AgentMsg::parse("started 5"),
            Err(MissingField {
                verb: "started",
                field: "command"
            })
        );
        assert_eq!(
            AgentMsg::parse("exited 5 0"),
            Err(MissingField {
                verb: "exited",
                field: "command"
            })
        );
        assert_eq!(
            AgentMsg::parse("exited 5"),
            Err(MissingField {
                verb: "exited",
                field: "status"
            })
        );
        assert_eq!(
            AgentMsg::parse("err"),
            Err(MissingField {
                verb: "err",
                field: "text"
            })
        );
        // Double space = empty field.
        assert_eq!(
            AgentMsg::parse("hb  1 2"),
            Err(MissingField {
                verb: "hb",
                field: "seq"
            })
        );
    }

    #[test]
    fn bad_numbers() {
        let bad = |line: &str| match AgentMsg::parse(line) {
            Err(ProtoError::BadNumber { .. }) => {}
            other => panic!("{line:?}: {other:?}"),
        };
        bad("hb x 2");
        bad("hb 1 -2");
        bad("hb +1 2");
        bad("hb 1 99999999999999999999999");
        bad("started -1 sh");
        bad("started 4294967296 sh");
        bad("exited 5 256 sh");
        bad("exited 5 sig sh");
        bad("exited 5 sig300 sh");
        bad("exited 5 SIG9 sh");
        bad("time-set 12");
        bad("time-set 12.5");
        bad("time-set 12.0000000001");
        bad("time-set .000000000");
        bad("time-set 12.-00000001");
        bad("ready abc 0.1.0");
        let vbad = |line: &str| match VmmMsg::parse(line) {
            Err(ProtoError::BadNumber { .. }) => {}
            other => panic!("{line:?}: {other:?}"),
        };
        vbad("time 1.5");
        vbad("time x.000000000");
        vbad("time 1,000000000");
        vbad("time 1.00000000a");
        vbad("time 18446744073709551616.000000000");
    }

    #[test]
    fn trailing_data() {
        assert_eq!(
            VmmMsg::parse("poweroff now"),
            Err(ProtoError::TrailingData { verb: "poweroff" })
        );
        assert_eq!(
            VmmMsg::parse("time 1.000000000 x"),
            Err(ProtoError::TrailingData { verb: "time" })
        );
        assert_eq!(
            AgentMsg::parse("hb 1 2 3"),
            Err(ProtoError::TrailingData { verb: "hb" })
        );
        assert_eq!(
            AgentMsg::parse("poweroff "),
            Err(ProtoError::TrailingData { verb: "poweroff" })
        );
    }

    #[test]
    fn empty_and_control_chars() {
        assert_eq!(VmmMsg::parse(""), Err(ProtoError::Empty));
        assert_eq!(VmmMsg::parse("\n"), Err(ProtoError::Empty));
        assert_eq!(VmmMsg::parse("\r\n"), Err(ProtoError::Empty));
        assert_eq!(VmmMsg::parse("ping a\0b"), Err(ProtoError::ControlChar(0)));
        assert_eq!(
            VmmMsg::parse("ping a\nb"),
            Err(ProtoError::ControlChar(b'\n'))
        );
        assert_eq!(
            VmmMsg::parse("ping\t1"),
            Err(ProtoError::ControlChar(b'\t'))
        );
    }

    #[test]
    fn over_long_lines_are_rejected() {
        let token = "x".repeat(MAX_LINE - "ping ".len());
        let ok = format!("ping {token}");
        assert_eq!(ok.len(), MAX_LINE);
        assert_eq!(VmmMsg::parse(&ok), Ok(VmmMsg::Ping { token }));
        assert_eq!(VmmMsg::parse(&format!("{ok}\n")).map(|_| ()), Ok(()));
        let long = format!("{ok}y");
        assert_eq!(VmmMsg::parse(&long), Err(ProtoError::TooLong(MAX_LINE + 1)));
        assert_eq!(
            AgentMsg::parse(&format!("err {}", "e".repeat(5000))),
            Err(ProtoError::TooLong(5004))
        );
    }

    #[test]
    fn encode_makes_any_text_safe() {
        // Control characters and newlines are replaced.
        let m = AgentMsg::Started {
            pid: 1,
            command: "a\nb\tc".into(),
        };
        assert_eq!(m.encode(), "started 1 a?b?c\n");
        assert!(AgentMsg::parse(&m.encode()).is_ok());
        // Over-long text is cut to the limit (at a char boundary).
        let m = AgentMsg::Err {
            text: "é".repeat(MAX_LINE),
        };
        let line = m.encode();
        assert!(line.len() <= MAX_LINE + 1);
        assert!(line.ends_with('\n'));
        assert!(AgentMsg::parse(&line).is_ok());
        // An empty free-text field gets a placeholder.
        let m = AgentMsg::Err {
            text: String::new(),
        };
        assert_eq!(m.encode(), "err -\n");
        assert!(AgentMsg::parse(&m.encode()).is_ok());
        // UTF-8 text survives.
        let m = AgentMsg::Started {
            pid: 3,
            command: "echo grüße".into(),
        };
        assert_eq!(AgentMsg::parse(&m.encode()), Ok(m));
    }

    #[test]
    fn error_messages_name_the_request() {
        let e = VmmMsg::parse("time 1.5")
            .expect_err("must fail")
            .to_string();
        assert_eq!(e, "time: bad <time> '1.5'");
        let e = VmmMsg::parse("ping").expect_err("must fail").to_string();
        assert_eq!(e, "ping: missing field <token>");
        let long_verb = "v".repeat(100);
        let e = VmmMsg::parse(&long_verb)
            .expect_err("must fail")
            .to_string();
        assert!(e.len() < 100, "{e}");
    }
}
