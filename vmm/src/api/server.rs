//! The control socket server: one thread accepts, one thread per client reads requests and
//! hands them to the VMM's event loop, which answers through a channel.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use serde_json::Value;
use vmm_sys_util::eventfd::EventFd;

use super::protocol::{error, parse_request, Request};
use crate::events::EventBus;

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another process is serving this path.
    #[error("control socket {0} is already in use by a running process")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("control socket path {0} exists and is not a socket")]
    NotSocket(PathBuf),
    /// Binding or setting permissions failed.
    #[error("cannot create control socket {0}")]
    Bind(PathBuf, #[source] std::io::Error),
    /// The accept thread could not start.
    #[error("cannot start the control socket thread")]
    Thread(#[source] std::io::Error),
}

/// A request on its way to the VMM, with the way back.
pub struct ApiCall {
    /// The request.
    pub request: Request,
    /// Where the reply goes.
    pub reply: Sender<Value>,
}

/// Requests taken from clients whose replies have not been written back yet.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Waits (at most `limit`) until every reply the VMM gave has reached its client: the
/// reply to `stop` must not be lost to the process exiting.
pub fn drain(limit: std::time::Duration) {
    let end = std::time::Instant::now() + limit;
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Checks that `path` can be bound: refuses a live socket or a non-socket file.
pub fn check_path(path: &Path) -> Result<(), ApiError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if !m.file_type().is_socket() => Err(ApiError::NotSocket(path.into())),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(ApiError::InUse(path.into())),
            Err(_) => Ok(()), // stale socket from a dead process
        },
    }
}

/// Binds the socket and starts serving; requests arrive on `calls`, with `wake` written.
pub fn start(
    path: &Path,
    calls: Sender<ApiCall>,
    wake: EventFd,
    events: EventBus,
) -> Result<(), ApiError> {
    check_path(path)?;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| ApiError::Bind(path.into(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ApiError::Bind(path.into(), e))?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let calls = calls.clone();
                let wake = wake.try_clone();
                let events = events.clone();
                let _ = std::thread::Builder::new()
                    .name("api-client".into())
                    .spawn(move || {
                        if let Ok(wake) = wake {
                            serve_client(stream, calls, wake, events);
                        }
                    });
            }
        })
        .map_err(ApiError::Thread)?;
    Ok(())
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// How long the VMM may take to answer (a snapshot of a large guest takes a while).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

fn send(stream: &mut UnixStream, v: &Value) -> bool {
    let mut line = v.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).is_ok()
}

fn serve_client(stream: UnixStream, calls: Sender<ApiCall>, wake: EventFd, events: EventBus) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match std::io::Read::take(&mut reader, MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if n > MAX_REQUEST {
            send(
                &mut out,
                &error(format!("request longer than {MAX_REQUEST} bytes")),
            );
            return;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let request = match parse_request(line) {
            Ok(r) => r,
            Err(msg) => {
                if !send(&mut out, &error(msg)) {
                    return;
                }
                continue;
            }
        };
        if request == Request::Events {
            let rx = events.subscribe();
            if !send(
                &mut out,
                &super::protocol::ok(serde_json::json!({"streaming": true})),
            ) {
                return;
            }
            for ev in rx {
                if !send(&mut out, &ev) {
                    return;
                }
            }
            return;
        }
        let (tx, rx) = channel();
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        if calls.send(ApiCall { request, reply: tx }).is_err() {
            send(&mut out, &error("the VMM is shutting down"));
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let _ = wake.write(1);
        let reply = rx
            .recv_timeout(REPLY_TIMEOUT)
            .unwrap_or_else(|_| error("the VMM did not answer"));
        let sent = send(&mut out, &reply);
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        if !sent {
            return;
        }
    }
}
