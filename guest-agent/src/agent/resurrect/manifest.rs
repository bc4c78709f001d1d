//! The resurrection manifest (version 1, `docs/resurrection.md`): the types and the strict
//! parser are the `owvmm-manifest` crate's, shared with `recovery/` (which writes it).
//!
//! The agent parses with [`parse_each`]: a bad line inside a `process` ... `end` block
//! makes only that process fail; a bad line anywhere else (the header, the `file` records,
//! the structure) makes the whole manifest fail.

pub use owvmm_manifest::*;
