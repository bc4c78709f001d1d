//! The host terminal: raw mode while the guest console owns it.

/// True when standard input is a terminal.
pub fn is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(0) == 1 }
}

/// Raw mode on standard input, undone on drop.
pub struct RawMode {
    saved: Option<libc::termios>,
}

impl RawMode {
    /// Enters raw mode when standard input is a terminal; does nothing otherwise.
    pub fn enter() -> Self {
        if !is_tty() {
            return RawMode { saved: None };
        }
        // SAFETY: termios is plain data; zeroed is a valid value to be filled by tcgetattr.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is a terminal and `t` is a valid termios to fill.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return RawMode { saved: None };
        }
        let saved = t;
        // SAFETY: `t` is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: fd 0 is a terminal and `t` a valid termios.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the settings read from the same terminal.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        }
    }
}
