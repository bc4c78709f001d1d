//! Kernel symbol tables: parse a `System.map` and turn addresses into `symbol+offset`.

use std::fmt;

/// Errors while reading a symbol table.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// A line of the map is not `ADDRESS TYPE NAME`.
    #[error("line {line}: not `ADDRESS TYPE NAME`")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// An address is not hexadecimal.
    #[error("line {line}: bad address")]
    BadAddress {
        /// 1-based line number.
        line: usize,
        /// The parse failure.
        #[source]
        source: std::num::ParseIntError,
    },
    /// The map had no usable symbol.
    #[error("no symbols")]
    Empty,
}

/// One symbol of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Link-time address.
    pub addr: u64,
    /// `nm` type letter (`T`, `t`, `D`, ...).
    pub kind: char,
    /// Name.
    pub name: String,
}

/// A sorted symbol table.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    syms: Vec<Symbol>,
    /// Per-cpu symbols (`D`/`d`/`B`/`b` below the kernel half): offsets into a CPU's area.
    percpu: Vec<Symbol>,
}

/// An address resolved against the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The closest symbol at or below the address.
    pub name: &'a str,
    /// Distance from that symbol.
    pub offset: u64,
}

impl fmt::Display for Resolved<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.name, self.offset)
    }
}

/// Largest distance from a symbol that still counts as "inside" it. Kernel functions are
/// far smaller; past this an address is more likely outside the image.
const MAX_SYMBOL_SPAN: u64 = 1 << 20;

impl SymbolTable {
    /// Parses `System.map` text (`ffffffff81000000 T _stext`, one per line).
    pub fn parse_system_map(text: &str) -> Result<Self, SymbolError> {
        let mut syms = Vec::new();
        let mut percpu = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let mut parts = raw.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(SymbolError::BadLine { line });
            };
            let addr = u64::from_str_radix(addr, 16)
                .map_err(|source| SymbolError::BadAddress { line, source })?;
            let mut kinds = kind.chars();
            let (Some(kind), None) = (kinds.next(), kinds.next()) else {
                return Err(SymbolError::BadLine { line });
            };
            // Absolute and per-cpu offsets ('A'/'a', and the small per-cpu values) are not
            // code or data addresses; keep only symbols inside the kernel's upper half.
            if matches!(kind, 'A' | 'a') {
                continue;
            }
            if addr < 0xffff_0000_0000_0000 {
                // Per-cpu variables are linked at small offsets (`current_task`, `runqueues`).
                if matches!(kind, 'D' | 'd' | 'B' | 'b') && addr < 1 << 32 {
                    percpu.push(Symbol {
                        addr,
                        kind,
                        name: name.to_owned(),
                    });
                }
                continue;
            }
            syms.push(Symbol {
                addr,
                kind,
                name: name.to_owned(),
            });
        }
        if syms.is_empty() {
            return Err(SymbolError::Empty);
        }
        syms.sort_by_key(|s| s.addr);
        Ok(SymbolTable { syms, percpu })
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// True when the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Address of a symbol by exact name.
    pub fn addr_of(&self, name: &str) -> Option<u64> {
        self.syms.iter().find(|s| s.name == name).map(|s| s.addr)
    }

    /// Offset of a per-cpu variable (`current_task`, `runqueues`) inside a CPU's per-cpu
    /// area; add `__per_cpu_offset[cpu]` to get its address. Not shifted by KASLR.
    pub fn percpu_offset_of(&self, name: &str) -> Option<u64> {
        self.percpu.iter().find(|s| s.name == name).map(|s| s.addr)
    }

    /// The symbol containing `addr` (closest at or below it), when `addr` lies within the
    /// image. `slide` is the KASLR shift (runtime minus link-time address).
    pub fn resolve(&self, addr: u64, slide: u64) -> Option<Resolved<'_>> {
        let link = addr.wrapping_sub(slide);
        let idx = self.syms.partition_point(|s| s.addr <= link);
        let sym = self.syms.get(idx.checked_sub(1)?)?;
        let offset = link - sym.addr;
        (offset < MAX_SYMBOL_SPAN).then_some(Resolved {
            name: &sym.name,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
0000000000000000 D __per_cpu_start
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t helper
ffffffff81200000 T int3_selftest
ffffffff82000000 D init_task
ffffffff82000100 A __absolute
";

    #[test]
    fn resolves_inside_and_between_symbols() {
        let t = SymbolTable::parse_system_map(MAP).expect("parse");
        assert_eq!(t.len(), 5);
        let r = t.resolve(0xffff_ffff_8100_1010, 0).expect("resolve");
        assert_eq!((r.name, r.offset), ("helper", 0x10));
        assert_eq!(r.to_string(), "helper+0x10");
        let r = t.resolve(0xffff_ffff_8200_0000, 0).expect("resolve");
        assert_eq!(r.name, "init_task");
    }

    #[test]
    fn applies_kaslr_slide() {
        let t = SymbolTable::parse_system_map(MAP).expect("parse");
        let slide = 0x0400_0000;
        let r = t
            .resolve(0xffff_ffff_8120_0004 + slide, slide)
            .expect("resolve");
        assert_eq!((r.name, r.offset), ("int3_selftest", 4));
    }

    #[test]
    fn refuses_addresses_outside_the_image() {
        let t = SymbolTable::parse_system_map(MAP).expect("parse");
        assert!(t.resolve(0x1000, 0).is_none());
        assert!(t.resolve(0xffff_ffff_9000_0000, 0).is_none());
        assert_eq!(t.addr_of("startup_64"), Some(0xffff_ffff_8100_0000));
        assert_eq!(t.addr_of("__absolute"), None);
        assert_eq!(t.percpu_offset_of("__per_cpu_start"), Some(0));
        assert_eq!(t.percpu_offset_of("startup_64"), None);
    }

    #[test]
    fn reports_bad_lines() {
        assert!(matches!(
            SymbolTable::parse_system_map("ffffffff81000000 T\n"),
            Err(SymbolError::BadLine { line: 1 })
        ));
        assert!(matches!(
            SymbolTable::parse_system_map("\nzz T x\n"),
            Err(SymbolError::BadAddress { line: 2, .. })
        ));
        assert!(matches!(
            SymbolTable::parse_system_map(""),
            Err(SymbolError::Empty)
        ));
    }
}
