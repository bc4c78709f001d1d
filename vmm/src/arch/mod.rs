//! x86-64 specifics: memory layout, boot protocol, vCPU boot state, MP table, ACPI tables.

pub mod acpi;
pub mod boot;
pub mod layout;
pub mod mptable;
pub mod regs;
