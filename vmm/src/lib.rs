//! owvmm: a virtual machine monitor on the rust-vmm crates that lets the programs in a
//! Linux guest survive a crash of the guest's kernel.
//!
//! The layout follows the design map: `arch` (x86-64 boot), `vstate` (KVM VM and vCPU
//! threads), `devices`, `api` (control socket), `snapshot`, `standby` (the crash kernel's), and `host_quirks` (every workaround for this host's KVM, in one place).

pub mod agent;
pub mod api;
pub mod arch;
pub mod cache;
pub mod config;
pub mod cpio;
pub mod crash;
pub mod devices;
pub mod events;
pub mod host_quirks;
pub mod memory;
pub mod snapshot;
pub mod standby;
pub mod terminal;
pub mod vmm;
pub mod vstate;

/// Formats an error and all its causes on one line: `a: b: c` (recovery reports with it too).
pub use owvmm_recovery::error_chain;
