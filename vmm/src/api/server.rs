//! The control socket server: one thread accepts, one thread per client reads requests and
//! hands them to the VMM's event loop, which answers through a channel.
//!
//! Clients cannot make the VMM hold unbounded memory or threads ([`Limits`]): at most
//! [`MAX_CLIENTS`] connections are served at once (more get an error line and are closed by
//! the accept thread itself), a request line is at most [`MAX_REQUEST`] bytes and must
//! arrive within [`IDLE_TIMEOUT`], a write that blocks for [`WRITE_TIMEOUT`] ends the
//! connection, and an `events` connection that falls behind is dropped by the event bus
//! (`crate::events`).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmm_sys_util::eventfd::EventFd;

use super::protocol::{error, parse_request, Request};
use crate::events::{EventBus, RecvEnd, Subscription};

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

/// Limits that keep clients from holding the VMM's memory or threads.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are refused with an error line.
    pub max_clients: usize,
    /// Longest request line, without its `\n`.
    pub max_request: usize,
    /// How long a request connection may take to send a complete line (idle or not).
    pub idle_timeout: Duration,
    /// How long one write to a client may block (a client that stops reading).
    pub write_timeout: Duration,
}

/// Connections served at once.
pub const MAX_CLIENTS: usize = 64;
/// Longest request line accepted, without its `\n`.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A request connection that sends no complete line for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A write to a client that blocks for this long closes the connection. As long as the
/// idle timeout: an `events` client that stopped reading is normally dropped by the event
/// bus first (its queue fills), and then has this long to read its last line.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_clients: MAX_CLIENTS,
            max_request: MAX_REQUEST,
            idle_timeout: IDLE_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// Binds the socket and starts serving; requests arrive on `calls`, with `wake` written.
pub fn start(
    path: &Path,
    calls: Sender<ApiCall>,
    wake: EventFd,
    events: EventBus,
) -> Result<(), ApiError> {
    start_with(path, calls, wake, events, Limits::default())
}

/// [`start`] with other [`Limits`].
pub fn start_with(
    path: &Path,
    calls: Sender<ApiCall>,
    wake: EventFd,
    events: EventBus,
    limits: Limits,
) -> Result<(), ApiError> {
    check_path(path)?;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| ApiError::Bind(path.into(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| ApiError::Bind(path.into(), e))?;
    let server = Server {
        calls,
        wake,
        events,
        limits,
        clients: Arc::default(),
    };
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => server.admit(s),
                    // Out of descriptors or memory: wait for clients to leave.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })
        .map_err(ApiError::Thread)?;
    Ok(())
}

/// What the accept thread hands to each client thread.
struct Server {
    calls: Sender<ApiCall>,
    wake: EventFd,
    events: EventBus,
    limits: Limits,
    /// Connections being served.
    clients: Arc<AtomicUsize>,
}

/// A client thread's place in [`Server::clients`], given back when the thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Writes one line to a client that is not going to be served, without ever blocking the
/// accept thread (a fresh socket's buffer has room for it).
fn refuse(stream: &UnixStream, msg: String) {
    let _ = stream.set_nonblocking(true);
    let mut line = error(msg).to_string();
    line.push('\n');
    let _ = (&*stream).write(line.as_bytes());
}

impl Server {
    /// Serves `stream` on a thread of its own, or refuses it when too many are served.
    fn admit(&self, stream: UnixStream) {
        let max = self.limits.max_clients;
        if self.clients.fetch_add(1, Ordering::SeqCst) >= max {
            self.clients.fetch_sub(1, Ordering::SeqCst);
            refuse(
                &stream,
                format!("too many clients ({max}); close another connection and try again"),
            );
            return;
        }
        let slot = Slot(self.clients.clone());
        let Ok(wake) = self.wake.try_clone() else {
            refuse(
                &stream,
                "cannot serve this connection: out of descriptors".into(),
            );
            return;
        };
        let spare = stream.try_clone();
        let client = Client {
            calls: self.calls.clone(),
            wake,
            events: self.events.clone(),
            limits: self.limits,
        };
        let spawned = std::thread::Builder::new()
            .name("api-client".into())
            .spawn(move || {
                let _slot = slot;
                client.serve(stream);
            });
        if spawned.is_err() {
            if let Ok(s) = spare {
                refuse(&s, "cannot serve this connection: no thread".into());
            }
        }
    }
}

/// One client's thread.
struct Client {
    calls: Sender<ApiCall>,
    wake: EventFd,
    events: EventBus,
    limits: Limits,
}

/// How long a request may take the VMM to answer (a snapshot of a large guest takes a while).
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// How often an `events` connection with nothing to send checks that its client is still
/// there.
const HANGUP_CHECK: Duration = Duration::from_secs(1);

fn send_line(stream: &mut UnixStream, line: &str) -> bool {
    let mut b = Vec::with_capacity(line.len() + 1);
    b.extend_from_slice(line.as_bytes());
    b.push(b'\n');
    stream.write_all(&b).is_ok()
}

fn send(stream: &mut UnixStream, v: &Value) -> bool {
    send_line(stream, &v.to_string())
}

/// What reading a request line gave.
#[derive(Debug, PartialEq, Eq)]
enum ReadLine {
    /// A line (without its `\n`; the last one may lack it) is in the buffer.
    Line,
    /// The client closed the connection.
    Eof,
    /// The line is longer than the limit (what was read of it is discarded).
    TooLong,
    /// No complete line before the deadline.
    Idle,
    /// The connection failed.
    Failed,
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads one line into `buf` by `deadline`, never holding more than `max` bytes of it (plus
/// the reader's buffer).
fn read_line(
    reader: &mut BufReader<UnixStream>,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
) -> ReadLine {
    buf.clear();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return ReadLine::Idle;
        }
        if reader.get_ref().set_read_timeout(Some(left)).is_err() {
            return ReadLine::Failed;
        }
        let avail = match reader.fill_buf() {
            Ok(a) => a,
            Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return ReadLine::Failed,
        };
        if avail.is_empty() {
            return if buf.is_empty() {
                ReadLine::Eof
            } else {
                ReadLine::Line
            };
        }
        let (take, end) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (avail.len(), false),
        };
        if buf.len().saturating_add(take) > max {
            return ReadLine::TooLong;
        }
        buf.extend_from_slice(&avail[..take]);
        reader.consume(if end { take + 1 } else { take });
        if end {
            return ReadLine::Line;
        }
    }
}

/// Whether the client of an `events` connection has gone (reads and discards whatever it
/// sent after `events`).
fn hung_up(reader: &mut BufReader<UnixStream>) -> bool {
    let n = reader.buffer().len();
    reader.consume(n);
    if reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(1)))
        .is_err()
    {
        return true;
    }
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        match reader.get_mut().read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if is_timeout(&e) || e.kind() == std::io::ErrorKind::Interrupted => {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

impl Client {
    fn serve(self, stream: UnixStream) {
        if stream
            .set_write_timeout(Some(self.limits.write_timeout))
            .is_err()
        {
            return;
        }
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        let max = self.limits.max_request;
        loop {
            let deadline = Instant::now() + self.limits.idle_timeout;
            match read_line(&mut reader, &mut buf, max, deadline) {
                ReadLine::Line => {}
                ReadLine::Eof | ReadLine::Failed => return,
                ReadLine::TooLong => {
                    send(
                        &mut out,
                        &error(format!(
                            "request line longer than {max} bytes; closing the connection"
                        )),
                    );
                    return;
                }
                ReadLine::Idle => {
                    send(
                        &mut out,
                        &error(format!(
                            "no complete request line within {:?}; closing the connection",
                            self.limits.idle_timeout
                        )),
                    );
                    return;
                }
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
                let sub = self.events.subscribe();
                if send(
                    &mut out,
                    &super::protocol::ok(serde_json::json!({"streaming": true})),
                ) {
                    stream_events(&mut reader, &mut out, &sub);
                }
                return;
            }
            if !self.call(request, &mut out) {
                return;
            }
        }
    }

    /// Hands `request` to the event loop and writes its reply; false if the connection is
    /// over.
    fn call(&self, request: Request, out: &mut UnixStream) -> bool {
        let (tx, rx) = channel();
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        if self.calls.send(ApiCall { request, reply: tx }).is_err() {
            send(out, &error("the VMM is shutting down"));
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let _ = self.wake.write(1);
        let reply = rx
            .recv_timeout(REPLY_TIMEOUT)
            .unwrap_or_else(|_| error("the VMM did not answer"));
        let sent = send(out, &reply);
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        sent
    }
}

/// Writes events until the client goes, a write times out, or the bus drops this
/// subscriber (then the `dropped` line is the last one).
fn stream_events(reader: &mut BufReader<UnixStream>, out: &mut UnixStream, sub: &Subscription) {
    loop {
        match sub.recv_timeout(HANGUP_CHECK) {
            Ok(line) => {
                if !send_line(out, &line) {
                    return;
                }
            }
            Err(RecvEnd::Timeout) => {
                if hung_up(reader) {
                    return;
                }
            }
            Err(RecvEnd::Dropped(line)) => {
                send_line(out, &line);
                return;
            }
            Err(RecvEnd::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A server on a fresh socket whose "event loop" answers every request at once.
    fn serve(name: &str, limits: Limits) -> (PathBuf, EventBus) {
        let dir = std::env::temp_dir().join(format!("owvmm-api-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("api.sock");
        let (tx, rx) = channel::<ApiCall>();
        std::thread::spawn(move || {
            for call in rx {
                let req = format!("{:?}", call.request);
                let _ = call
                    .reply
                    .send(super::super::protocol::ok(json!({ "req": req })));
            }
        });
        let bus = EventBus::new(Instant::now());
        let wake = EventFd::new(0).expect("eventfd");
        start_with(&path, tx, wake, bus.clone(), limits).expect("start");
        (path, bus)
    }

    struct Conn {
        w: UnixStream,
        r: BufReader<UnixStream>,
    }

    impl Conn {
        fn open(path: &Path) -> Conn {
            let w = UnixStream::connect(path).expect("connect");
            let r = BufReader::new(w.try_clone().expect("clone"));
            Conn { w, r }
        }

        /// The next line (None at EOF), waiting at most 60 s.
        fn line(&mut self) -> Option<Value> {
            self.w
                .set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            let mut s = String::new();
            match self.r.read_line(&mut s) {
                Ok(0) => None,
                Ok(_) => Some(serde_json::from_str(&s).expect("JSON line")),
                Err(e) => panic!("read: {e}"),
            }
        }

        /// Whether the server closed the connection (EOF, or a reset because the server
        /// closed it with unread input).
        fn closed(&mut self) -> bool {
            let mut s = String::new();
            match self.r.read_line(&mut s) {
                Ok(0) => true,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                Ok(_) => false,
            }
        }

        /// Sends `req` and a newline (a server that closed early may not take all of it),
        /// and reads a line.
        fn call(&mut self, req: &str) -> Option<Value> {
            let _ = self.w.write_all(req.as_bytes());
            let _ = self.w.write_all(b"\n");
            self.line()
        }
    }

    /// Polls `f` every 10 ms for at most 60 s.
    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < end, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn small(max_clients: usize) -> Limits {
        Limits {
            max_clients,
            ..Limits::default()
        }
    }

    #[test]
    fn clients_beyond_the_cap_are_refused_with_a_reason() {
        let (path, _bus) = serve("cap", small(3));
        let mut served: Vec<Conn> = (0..3).map(|_| Conn::open(&path)).collect();
        for c in &mut served {
            assert_eq!(c.call(r#"{"cmd":"status"}"#).expect("reply")["ok"], true);
        }
        for _ in 0..20 {
            let mut extra = Conn::open(&path);
            let r = extra.line().expect("refusal");
            assert_eq!(r["ok"], false);
            let msg = r["error"].as_str().unwrap_or("");
            assert!(msg.starts_with("too many clients (3)"), "{msg}");
            assert!(extra.line().is_none(), "a refused connection stays open");
        }
        // The ones being served are unaffected; when one leaves, a new one gets its place.
        assert_eq!(
            served[0].call(r#"{"cmd":"vcpus"}"#).expect("reply")["ok"],
            true
        );
        served.pop();
        wait_until("no place after a client left", || {
            Conn::open(&path)
                .call(r#"{"cmd":"status"}"#)
                .map(|r| r["ok"] == true)
                == Some(true)
        });
    }

    #[test]
    fn a_client_that_sends_no_complete_line_is_closed_with_a_reason() {
        let (path, _bus) = serve(
            "idle",
            Limits {
                idle_timeout: Duration::from_millis(300),
                ..Limits::default()
            },
        );
        let mut c = Conn::open(&path);
        c.w.write_all(br#"{"cmd":"#).expect("write");
        let r = c.line().expect("error line");
        assert!(
            r["error"]
                .as_str()
                .unwrap_or("")
                .contains("no complete request line"),
            "{r}"
        );
        assert!(c.line().is_none());
        // An idle connection that never sent anything is closed too.
        let mut c = Conn::open(&path);
        assert_eq!(c.line().expect("error line")["ok"], false);
        assert!(c.line().is_none());
    }

    #[test]
    fn a_16_mib_request_gets_an_error_and_the_server_goes_on() {
        let (path, _bus) = serve("long", Limits::default());
        let mut c = Conn::open(&path);
        let mut w = c.w.try_clone().expect("clone");
        // The server stops reading after the limit; the rest of the write fails.
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..16 {
                if w.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = w.write_all(b"\n");
        });
        let r = c.line().expect("error line");
        let msg = r["error"].as_str().unwrap_or("");
        assert!(
            msg.contains(&format!("longer than {MAX_REQUEST} bytes")),
            "{msg}"
        );
        assert!(c.closed());
        writer.join().expect("writer");
        // A line of exactly the limit is a request.
        let mut line = r#"{"cmd":"status"}"#.to_string();
        line.push_str(&" ".repeat(MAX_REQUEST - line.len()));
        let r = Conn::open(&path).call(&line).expect("reply");
        assert_eq!(r["ok"], true, "{r}");
        line.push(' ');
        let r = Conn::open(&path).call(&line).expect("reply");
        assert_eq!(r["ok"], false, "{r}");
    }

    #[test]
    fn a_deaf_events_client_gets_dropped_with_a_last_line_saying_why() {
        let (path, bus) = serve("deaf", Limits::default());
        let mut deaf = Conn::open(&path);
        assert_eq!(
            deaf.call(r#"{"cmd":"events"}"#).expect("ack")["streaming"],
            true
        );
        let mut reader = Conn::open(&path);
        assert_eq!(
            reader.call(r#"{"cmd":"events"}"#).expect("ack")["streaming"],
            true
        );
        wait_until("subscribers", || bus.subscribers() == 2);
        // Publish until the bus gives up on the deaf one (its socket buffer and then its
        // queue fill up) and says so; the reader reads along and loses nothing.
        let mut seq = 0u64;
        let mut notice = None;
        wait_until("the deaf subscriber was never dropped", || {
            for _ in 0..100 {
                bus.publish("heartbeat", json!({ "seq": seq, "pad": "p".repeat(100) }));
                let mut e = reader.line().expect("event");
                if e["event"] == "subscriber-dropped" {
                    notice = Some(e);
                    e = reader.line().expect("event");
                }
                assert_eq!(e["seq"], seq, "{e}");
                seq += 1;
            }
            notice.is_some()
        });
        assert_eq!(bus.subscribers(), 1);
        let notice = notice.unwrap_or_default();
        assert_eq!(notice["dropped"], 1, "{notice}");
        // Now the deaf one reads: the events it had, then why it was dropped, then EOF.
        let mut last = Value::Null;
        let mut n = 0u64;
        while let Some(e) = deaf.line() {
            if e["event"] == "heartbeat" {
                assert_eq!(e["seq"], n);
                n += 1;
            }
            last = e;
        }
        assert_eq!(last["event"], "dropped", "{last}");
        let reason = last["reason"].as_str().unwrap_or("");
        assert!(
            reason.contains(&format!(
                "queue of {} events full",
                crate::events::QUEUE_EVENTS
            )),
            "{reason}"
        );
        assert!(n >= crate::events::QUEUE_EVENTS as u64, "{n}");
        // The reader still gets events.
        bus.publish("paused", json!({}));
        assert_eq!(reader.line().expect("event")["event"], "paused");
    }

    #[test]
    fn an_events_client_that_hangs_up_is_noticed_without_events() {
        let (path, bus) = serve("hangup", small(1));
        let mut c = Conn::open(&path);
        assert_eq!(c.call(r#"{"cmd":"events"}"#).expect("ack")["ok"], true);
        wait_until("subscribed", || bus.subscribers() == 1);
        drop(c);
        // Nothing is published: the connection thread notices the hang-up by itself, and
        // gives its place back.
        wait_until("the hang-up was not noticed", || bus.subscribers() == 0);
        wait_until("no place after the events client left", || {
            Conn::open(&path)
                .call(r#"{"cmd":"status"}"#)
                .map(|r| r["ok"] == true)
                == Some(true)
        });
    }
}
