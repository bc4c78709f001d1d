//! The benchmark's errors.

use std::path::PathBuf;

/// Everything that can go wrong in a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A bad command-line argument.
    #[error("{0}\n\n{usage}", usage = crate::USAGE)]
    Usage(String),
    /// A file or socket operation failed.
    #[error("{what} ({path})")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file or socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A required program is missing.
    #[error("{0}")]
    Missing(String),
    /// A helper command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr.
        stderr: String,
    },
    /// A wait ran out of time.
    #[error("{what}: timed out after {secs} s{detail}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// The limit.
        secs: u64,
        /// The end of the guest's logs, if any.
        detail: String,
    },
    /// A VMM or QEMU ended before the awaited moment.
    #[error("{what}: the process ended early ({status}){detail}")]
    Exited {
        /// What we waited for.
        what: String,
        /// Its exit status.
        status: String,
        /// The end of its logs.
        detail: String,
    },
    /// The control socket said something unexpected.
    #[error("control socket {path}: {msg}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Wraps an I/O error with what and where.
pub fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.into();
    move |source| BenchError::Io { what, path, source }
}

pub use owvmm_manifest::error_chain as chain;
