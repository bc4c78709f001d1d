//! Requests and replies of the control socket.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A request, one JSON object per line: `{"cmd": "status"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// State, uptime, vCPUs, memory, agent.
    Status,
    /// Stop running guest code.
    Pause,
    /// Run guest code again.
    Resume,
    /// End the VMM (the guest is stopped, not shut down).
    Stop,
    /// Ask the agent for an orderly power off: programs stopped, disks synced and
    /// unmounted; `owvmm run` then exits 0.
    Shutdown,
    /// Write a snapshot into `dir`.
    Snapshot {
        /// Directory to create or fill.
        dir: String,
    },
    /// Ask the agent to answer (round trip through the guest).
    PingAgent,
    /// Where each vCPU is (instruction pointer, symbol, mode, MP state).
    Vcpus,
    /// Make the guest kernel crash now, without the agent's help.
    Crash {
        /// How: `panic` (the kernel calls `panic()`).
        #[serde(default = "default_how")]
        how: String,
    },
    /// Turn this connection into an event stream.
    Events,
}

fn default_how() -> String {
    "panic".into()
}

/// Parses one request line; the error says what is wrong.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Some(cmd) = v.get("cmd") else {
        return Err("missing \"cmd\"".into());
    };
    let Some(cmd) = cmd.as_str().map(str::to_owned) else {
        return Err("\"cmd\" must be a string".into());
    };
    let cmd = cmd.as_str();
    const KNOWN: &[&str] = &[
        "status",
        "pause",
        "resume",
        "stop",
        "shutdown",
        "snapshot",
        "ping-agent",
        "events",
        "vcpus",
        "crash",
    ];
    if !KNOWN.contains(&cmd) {
        return Err(format!("unknown cmd {cmd:?} (known: {})", KNOWN.join(", ")));
    }
    serde_json::from_value(v).map_err(|e| format!("bad {cmd} request: {e}"))
}

/// A success reply with extra fields.
pub fn ok(fields: Value) -> Value {
    let mut v = json!({ "ok": true });
    if let (Some(o), Value::Object(extra)) = (v.as_object_mut(), fields) {
        o.extend(extra);
    }
    v
}

/// An error reply.
pub fn error(msg: impl Into<String>) -> Value {
    json!({ "ok": false, "error": msg.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_requests() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(r#"{"cmd":"shutdown"}"#),
            Ok(Request::Shutdown)
        );
        assert_eq!(
            parse_request(r#"{"cmd":"snapshot","dir":"/tmp/s"}"#),
            Ok(Request::Snapshot {
                dir: "/tmp/s".into()
            })
        );
        assert_eq!(
            parse_request(r#"{"cmd":"ping-agent"}"#),
            Ok(Request::PingAgent)
        );
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(parse_request("status").unwrap_err().starts_with("not JSON"));
        assert_eq!(parse_request("{}").unwrap_err(), "missing \"cmd\"");
        assert!(parse_request(r#"{"cmd":"fly"}"#)
            .unwrap_err()
            .contains("unknown cmd \"fly\""));
        assert!(parse_request(r#"{"cmd":"snapshot"}"#)
            .unwrap_err()
            .contains("dir"));
        assert!(parse_request(r#"{"cmd":7}"#)
            .unwrap_err()
            .contains("string"));
    }

    /// The fuzz target's seeds (`vmm/fuzz/corpus/parse_request`) through its checks: no
    /// panic, a parsed request survives a round trip, an error names something.
    #[test]
    fn the_fuzz_corpus_replays() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/parse_request");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("corpus dir") {
            let data = std::fs::read(entry.expect("entry").path()).expect("seed");
            let line = String::from_utf8_lossy(&data);
            match parse_request(line.trim()) {
                Ok(req) => {
                    let again = serde_json::to_string(&req).expect("serialise");
                    assert_eq!(parse_request(&again), Ok(req), "{line}");
                }
                Err(e) => assert!(!e.is_empty(), "{line}"),
            }
            n += 1;
        }
        assert!(n >= 10, "only {n} seeds");
    }

    #[test]
    fn replies_have_ok_flag() {
        assert_eq!(ok(json!({"a": 1})), json!({"ok": true, "a": 1}));
        assert_eq!(error("x"), json!({"ok": false, "error": "x"}));
    }
}
