//! Read-only introspection of a Linux guest kernel's memory, done from outside the guest.
//!
//! Everything here is a pure function over data taken from the guest, so it can be tested
//! without a VM. Nothing read from the guest is trusted.

pub mod paging;
pub mod symbols;
