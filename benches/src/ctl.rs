//! A small client for owvmm's control socket (docs/control-socket.md): JSON lines, one
//! reply per request, or an event stream after `{"cmd":"events"}`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::error::{io, BenchError, Result};

/// One connection.
pub struct Conn {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    pending: Vec<u8>,
}

impl Conn {
    /// Connects once.
    pub fn connect(path: &Path) -> std::io::Result<Conn> {
        let stream = UnixStream::connect(path)?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Conn {
            path: path.to_path_buf(),
            stream,
            reader,
            pending: Vec::new(),
        })
    }

    fn protocol(&self, msg: impl Into<String>) -> BenchError {
        BenchError::Protocol {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    /// Sends one request without waiting for the reply.
    pub fn send(&mut self, req: &Value) -> Result<()> {
        let mut line = req.to_string();
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .map_err(io("cannot write to control socket", &self.path))
    }

    /// The next JSON line, or `None` when nothing complete arrived within `wait`.
    pub fn next(&mut self, wait: Duration) -> Result<Option<Value>> {
        self.stream
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(io("cannot set a read timeout", &self.path))?;
        match self.reader.read_until(b'\n', &mut self.pending) {
            Ok(0) => Err(self.protocol("the VMM closed the connection")),
            Ok(_) if self.pending.ends_with(b"\n") => {
                let v = serde_json::from_slice(&self.pending);
                self.pending.clear();
                v.map(Some)
                    .map_err(|e| self.protocol(format!("reply is not JSON: {e}")))
            }
            Ok(_) => Ok(None),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(io("cannot read from control socket", &self.path)(e)),
        }
    }

    /// Sends a request and waits up to `wait` for its reply; refuses `"ok": false`.
    pub fn call(&mut self, req: &Value, wait: Duration) -> Result<Value> {
        self.send(req)?;
        let deadline = Instant::now() + wait;
        loop {
            if let Some(v) = self.next(Duration::from_millis(200))? {
                if v["ok"] == json!(true) {
                    return Ok(v);
                }
                return Err(self.protocol(format!("{req} was refused: {v}")));
            }
            if Instant::now() > deadline {
                return Err(self.protocol(format!("no reply to {req} in {wait:?}")));
            }
        }
    }

    /// Turns this connection into an event stream.
    pub fn subscribe(mut self) -> Result<Conn> {
        self.call(&json!({"cmd": "events"}), Duration::from_secs(10))?;
        Ok(self)
    }
}

/// One request on a fresh connection.
pub fn call(path: &Path, req: &Value, wait: Duration) -> Result<Value> {
    let mut c = Conn::connect(path).map_err(io("cannot connect to control socket", path))?;
    c.call(req, wait)
}
