//! The control socket: a Unix socket (mode 0600) carrying one JSON object per line.
//! See `docs/control-socket.md` for the protocol.

pub mod client;
pub mod protocol;
pub mod server;
