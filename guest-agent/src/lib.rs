//! ow-agent: the owvmm guest agent.
//!
//! The binary (`ow-agent`) runs as PID 1 (`/init`) in the guest: it mounts the basic file
//! systems, starts the configured programs, reaps zombies, powers the guest off when the
//! programs are done, and talks to the VMM over a serial line (`/dev/ttyS1`).
//!
//! The library holds what both sides need: the line protocol in [`proto`]. It does no I/O
//! and has no side effects, so the VMM links it cheaply. See `README.md` for the protocol
//! and the PID-1 behaviour.

pub mod proto;

/// The agent's version, as sent in the `ready` message.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
