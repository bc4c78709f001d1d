//! Pieces shared by the agent's host tests.

use std::fs::{self, File};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// A pseudo-terminal: our master side and the path of the slave side.
pub struct Pty {
    pub master: File,
    pub slave_path: PathBuf,
    /// Kept open until the agent has opened its side.
    pub _slave: OwnedFd,
}

pub fn openpty() -> Pty {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: the out-pointers are valid; name, termios and winsize may be NULL.
    let ret = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(ret, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty succeeded; both descriptors are open and owned by nobody else.
    let (master, slave) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let slave_path =
        fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())).expect("pty slave path");
    Pty {
        master,
        slave_path,
        _slave: slave,
    }
}
