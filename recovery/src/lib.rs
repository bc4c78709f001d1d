//! Read-only introspection of a Linux guest kernel's memory, done from outside the guest.
//!
//! Everything here is a pure function over data taken from the guest, so it can be tested
//! without a VM. Nothing read from the guest is trusted: every walk is bounded, checks the
//! links it follows, and reports what it could not read instead of failing.
//!
//! Layers: [`btf`] (type layout) and [`symbols`] → [`kernel::Kernel`] (kernel virtual reads,
//! typed fields) → [`list`], [`tasks`], [`mm`] (walkers) → [`inspect::inspect`] (a report).

pub mod btf;
pub mod budget;
pub mod eventfds;
pub mod exec;
pub mod inotify;
pub mod inspect;
pub mod kernel;
pub mod list;
pub mod manifest;
pub mod mm;
pub mod pages;
pub mod paging;
pub mod pending;
pub mod pipes;
pub mod process;
pub mod regs;
pub mod sockets;
pub mod symbols;
pub mod tasks;
pub mod tcp;
pub mod timers;
pub mod transfer;
pub mod ttys;

pub use inspect::{inspect, Report};
pub use paging::PhysRead;

pub use owvmm_manifest::error_chain;

/// A result that may be incomplete: what could be recovered, plus why the rest could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partial<T> {
    /// What was recovered.
    pub value: T,
    /// Human-readable reasons the value may be incomplete (empty when it is complete).
    pub problems: Vec<String>,
}

impl<T> Partial<T> {
    /// A complete result.
    pub fn ok(value: T) -> Self {
        Partial {
            value,
            problems: Vec::new(),
        }
    }

    /// True when nothing went wrong.
    pub fn is_complete(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Guest memory held in a byte slice (or anything that derefs to one) whose offset equals the
/// guest-physical address, e.g. a snapshot's `memory.bin` of a guest below 3 GiB.
#[derive(Debug, Clone)]
pub struct FlatMemory<T: AsRef<[u8]>>(pub T);

impl<T: AsRef<[u8]>> PhysRead for FlatMemory<T> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        let data = self.0.as_ref();
        let Ok(start) = usize::try_from(addr) else {
            return false;
        };
        let Some(end) = start.checked_add(buf.len()) else {
            return false;
        };
        match data.get(start..end) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_lists_every_cause_once() {
        let e = Outer(std::io::Error::other("inner"));
        assert_eq!(super::error_chain(&e), "outer: inner");
    }
}
