//! x86-64 page-table walks over untrusted guest memory.

/// Why a translation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// An entry on the way is not present.
    #[error("not mapped (level {level} entry {entry:#x} not present)")]
    NotPresent {
        /// Paging level (5..1) whose entry was not present.
        level: u8,
        /// The raw entry.
        entry: u64,
    },
    /// A table could not be read from guest memory.
    #[error("page table at {0:#x} is outside guest memory")]
    Unreadable(u64),
    /// The address is not canonical.
    #[error("address {0:#x} is not canonical")]
    NonCanonical(u64),
}

/// Physical-address bits of an entry.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;

/// Source of guest-physical memory: fills `buf` from `addr`, or says it cannot.
pub trait PhysRead {
    /// Reads `buf.len()` bytes at guest-physical `addr`; false if any byte is outside.
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool;
}

fn read_u64(mem: &dyn PhysRead, addr: u64) -> Result<u64, WalkError> {
    let mut b = [0u8; 8];
    if mem.read_phys(addr, &mut b) {
        Ok(u64::from_le_bytes(b))
    } else {
        Err(WalkError::Unreadable(addr))
    }
}

/// Translates virtual `va` with the page tables at `cr3` (PCID and flag bits are masked
/// off). `la57` selects 5-level paging. The walk has a fixed number of steps, so corrupt
/// tables cannot make it loop.
pub fn translate(mem: &dyn PhysRead, cr3: u64, va: u64, la57: bool) -> Result<u64, WalkError> {
    let bits = if la57 { 57 } else { 48 };
    let top = va >> (bits - 1);
    let all_ones = (1u64 << (64 - (bits - 1))) - 1;
    if top != 0 && top != all_ones {
        return Err(WalkError::NonCanonical(va));
    }
    let levels: u8 = if la57 { 5 } else { 4 };
    let mut table = cr3 & PTE_ADDR_MASK;
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * u32::from(level - 1);
        let index = (va >> shift) & 0x1ff;
        let entry = read_u64(mem, table + index * 8)?;
        if entry & PRESENT == 0 {
            return Err(WalkError::NotPresent { level, entry });
        }
        let base = entry & PTE_ADDR_MASK;
        if level == 1 || (entry & HUGE != 0 && (level == 2 || level == 3)) {
            let page_mask = (1u64 << shift) - 1;
            return Ok((base & !page_mask) | (va & page_mask));
        }
        table = base;
    }
    Err(WalkError::NotPresent { level: 0, entry: 0 })
}

/// Reads `buf.len()` bytes at virtual `va`, page by page. Returns how many bytes could
/// be read before the first unmapped page.
pub fn read_virt(mem: &dyn PhysRead, cr3: u64, va: u64, la57: bool, buf: &mut [u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        let cur = va.wrapping_add(done as u64);
        let Ok(pa) = translate(mem, cr3, cur, la57) else {
            break;
        };
        let in_page = usize::try_from(4096 - (cur & 0xfff)).unwrap_or(4096);
        let n = in_page.min(buf.len() - done);
        if !mem.read_phys(pa, &mut buf[done..done + n]) {
            break;
        }
        done += n;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem(Vec<u8>);
    impl PhysRead for Mem {
        fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
            let Ok(a) = usize::try_from(addr) else {
                return false;
            };
            match self.0.get(a..a + buf.len()) {
                Some(s) => {
                    buf.copy_from_slice(s);
                    true
                }
                None => false,
            }
        }
    }
    impl Mem {
        fn put(&mut self, addr: u64, v: u64) {
            let a = usize::try_from(addr).expect("small");
            self.0[a..a + 8].copy_from_slice(&v.to_le_bytes());
        }
    }

    // Kernel-style mapping of 0xffffffff81000000: PML4[511] -> PDPT[510] -> PD[8] -> PT.
    fn setup() -> Mem {
        let mut m = Mem(vec![0; 0x40_0000]);
        m.put(0x1000 + 511 * 8, 0x2000 | 3);
        m.put(0x2000 + 510 * 8, 0x3000 | 3);
        m.put(0x3000 + 8 * 8, 0x4000 | 3); // 4 KiB pages
        m.put(0x4000 + 5 * 8, 0x20_0000 | 3);
        m.put(0x3000 + 9 * 8, 0x20_0000 | 3 | HUGE); // one 2 MiB page
        m
    }

    #[test]
    fn walks_4k_and_2m_pages() {
        let m = setup();
        let va = 0xffff_ffff_8100_5123;
        assert_eq!(translate(&m, 0x1000, va, false), Ok(0x20_0123));
        let va2 = 0xffff_ffff_8120_0000 + 0x1_2345;
        assert_eq!(translate(&m, 0x1000 | 0x800, va2, false), Ok(0x21_2345));
        let mut buf = [0u8; 8];
        assert_eq!(read_virt(&m, 0x1000, va, false, &mut buf), 8);
    }

    #[test]
    fn reports_unmapped_noncanonical_and_wild_tables() {
        let mut m = setup();
        assert!(matches!(
            translate(&m, 0x1000, 0xffff_ffff_8100_6000, false),
            Err(WalkError::NotPresent { level: 1, .. })
        ));
        assert_eq!(
            translate(&m, 0x1000, 0x0000_8000_0000_0000, false),
            Err(WalkError::NonCanonical(0x0000_8000_0000_0000))
        );
        // A wild pointer to a table far outside memory.
        m.put(0x1000 + 511 * 8, 0xdead_0000_0000 | 3);
        assert!(matches!(
            translate(&m, 0x1000, 0xffff_ffff_8100_5000, false),
            Err(WalkError::Unreadable(_))
        ));
        let mut buf = [0u8; 16];
        assert_eq!(
            read_virt(&m, 0x1000, 0xffff_ffff_8100_5000, false, &mut buf),
            0
        );
    }
}
