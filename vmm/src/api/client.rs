//! `owvmm ctl`: sends one request and prints the reply (or the event stream).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Errors of the control client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect to control socket {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    /// Talking failed.
    #[error("control socket connection failed")]
    Io(#[source] std::io::Error),
    /// The VMM closed the connection without answering.
    #[error("the VMM closed the connection without answering")]
    Closed,
    /// The reply is not JSON.
    #[error("the VMM's reply is not JSON")]
    BadReply(#[source] serde_json::Error),
}

/// A connection to a VMM's control socket.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| ClientError::Connect(path.into(), e))?;
        let reader = BufReader::new(stream.try_clone().map_err(ClientError::Io)?);
        Ok(Client { stream, reader })
    }

    /// Sends a request object and reads the reply.
    pub fn call(&mut self, req: &Value) -> Result<Value, ClientError> {
        let mut line = req.to_string();
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .map_err(ClientError::Io)?;
        self.next_message()
    }

    /// Reads the next JSON line (a reply or an event).
    pub fn next_message(&mut self) -> Result<Value, ClientError> {
        let mut s = String::new();
        let n = self.reader.read_line(&mut s).map_err(ClientError::Io)?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        serde_json::from_str(&s).map_err(ClientError::BadReply)
    }
}
