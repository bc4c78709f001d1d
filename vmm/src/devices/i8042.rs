//! The piece of the i8042 keyboard controller a Linux guest uses to reset the machine
//! (`reboot=k`: command 0xFE written to port 0x64).

use vmm_sys_util::eventfd::EventFd;

use super::bus::PioDevice;

/// Ports 0x60..0x65, reset line only.
pub struct I8042 {
    reset: EventFd,
}

const CMD_RESET_CPU: u8 = 0xfe;

impl I8042 {
    /// A controller that writes `reset` when the guest pulses the reset line.
    pub fn new(reset: EventFd) -> Self {
        I8042 { reset }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // Status 0: input buffer empty, so `kb_wait()` in the guest returns at once.
        data.fill(0);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == 4 && data.first() == Some(&CMD_RESET_CPU) {
            // If the eventfd is full the reset is already pending.
            let _ = self.reset.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = I8042::new(evt.try_clone().expect("clone"));
        dev.write(0, &[CMD_RESET_CPU]);
        assert!(evt.read().is_err(), "data port write must not reset");
        dev.write(4, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().expect("reset"), 1);
    }
}
