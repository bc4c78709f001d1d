//! `ow-agent`: PID 1 (`/init`) of an owvmm guest. See `README.md`.
//!
//! The binary has no Rust `main`: it exports the C `main` itself, so that the Rust runtime's
//! start-up (which aborts when descriptors 0-2 are closed and /dev/null is missing, as in an
//! initramfs without device nodes) cannot kill PID 1 before it has mounted /dev.
#![cfg_attr(not(test), no_main)]
// The unit tests exercise the pieces without the entry point that uses them.
#![cfg_attr(test, allow(dead_code))]

/// `log!("...")` writes `ow-agent: ...` to the console.
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::agent::log_line(format_args!($($arg)*))
    };
}
pub(crate) use log;

mod agent;

/// The C entry point.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    agent::entry()
}
