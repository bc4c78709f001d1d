//! The fixed ACPI registers a full (not hardware-reduced) FADT must name: the PM1a event
//! block (status and enable) and the PM1a control block. The guest is always in ACPI mode
//! (`SCI_EN` set, no SMI command port), raises no fixed events and has no sleep states,
//! so the registers only have to read back sensibly.
//!
//! Why not hardware-reduced ACPI: on x86 Linux then replaces the 8259 PIC with a null one
//! (`acpi_generic_reduced_hw_init`), so the ISA IRQs get no fixed numbers and the legacy
//! serial ports' IRQ 3 and 4 would have to be described in the DSDT and claimed again
//! through PNP (another probe of each port, seconds here).

use super::bus::PioDevice;

/// First port of the block: PM1a_EVT_BLK (QEMU's PIIX4 uses the same base).
pub const PM_BASE: u16 = 0x600;
/// PM1a_EVT_BLK: status (2 bytes) and enable (2 bytes).
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a_CNT_BLK, right after the event block.
pub const PM1_CNT: u16 = PM_BASE + PM1_EVT_LEN as u16;
/// PM1 control is 2 bytes.
pub const PM1_CNT_LEN: u8 = 2;
/// Ports the device covers.
pub const PM_PORTS: u16 = PM1_EVT_LEN as u16 + PM1_CNT_LEN as u16;

/// PM1 control: the system is in ACPI mode (SCI interrupts, not SMIs).
const SCI_EN: u16 = 1;
/// PM1 control: sleep enable, write-only (reads 0).
const SLP_EN: u16 = 1 << 13;

/// The PM1a registers.
#[derive(Debug, Default)]
pub struct AcpiPm {
    enable: u16,
    control: u16,
}

impl AcpiPm {
    fn reg(&self, offset: u16) -> Option<u16> {
        match offset {
            0 | 1 => Some(0), // status: no event is ever pending
            2 | 3 => Some(self.enable),
            4 | 5 => Some(self.control | SCI_EN),
            _ => None,
        }
    }
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        for (i, b) in data.iter_mut().enumerate() {
            let Some(off) = u16::try_from(i).ok().and_then(|i| offset.checked_add(i)) else {
                break;
            };
            if let Some(v) = self.reg(off) {
                *b = v.to_le_bytes()[usize::from(off & 1)];
            }
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let Some(off) = u16::try_from(i).ok().and_then(|i| offset.checked_add(i)) else {
                break;
            };
            let target = match off {
                2 | 3 => &mut self.enable,
                4 | 5 => &mut self.control,
                _ => continue, // status is write-1-to-clear, and nothing is set
            };
            let mut bytes = target.to_le_bytes();
            bytes[usize::from(off & 1)] = b;
            *target = u16::from_le_bytes(bytes);
        }
        self.control &= !SLP_EN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_acpi_mode_and_enables() {
        let mut pm = AcpiPm::default();
        let mut w = [0xffu8; 2];
        pm.read(0, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0, "no status bit set");
        pm.read(4, &mut w);
        assert_eq!(u16::from_le_bytes(w) & SCI_EN, SCI_EN);
        pm.write(2, &0x0120u16.to_le_bytes());
        pm.read(2, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0120);
        // A 4-byte read of the event block: status then enable.
        let mut d = [0u8; 4];
        pm.read(0, &mut d);
        assert_eq!(d, [0, 0, 0x20, 0x01]);
        // Writing status (write-1-to-clear) changes nothing.
        pm.write(0, &[0xff, 0xff]);
        pm.read(0, &mut w);
        assert_eq!(w, [0, 0]);
        // SLP_EN reads back 0.
        pm.write(4, &(SLP_EN | (5 << 10)).to_le_bytes());
        pm.read(4, &mut w);
        assert_eq!(u16::from_le_bytes(w), (5 << 10) | SCI_EN);
    }
}
