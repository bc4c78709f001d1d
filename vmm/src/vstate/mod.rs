//! KVM state: the VM (memory, interrupt controllers, clock) and its vCPU threads.

pub mod vcpu;
pub mod vm;
