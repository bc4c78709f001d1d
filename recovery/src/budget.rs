//! One budget for a whole extraction: every walk has its own caps, but caps multiply (tasks
//! × areas × page tables × files), so a dead kernel with hostile structures could keep the
//! reader busy for very long. [`Budgeted`] wraps the memory every walk reads through and
//! refuses all reads once a deadline has passed or a byte budget is spent; the walks then
//! end at once with partial results, and [`Budgeted::exhausted`] says why.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::paging::PhysRead;

/// Why reads were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    /// The deadline passed.
    #[error("extraction stopped: its time limit of {0:?} ran out")]
    Deadline(Duration),
    /// The byte budget was spent.
    #[error("extraction stopped: it read its budget of {0} MiB of guest memory")]
    Bytes(u64),
}

/// Limits of one extraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest the extraction may take.
    pub time: Duration,
    /// Most bytes it may read.
    pub bytes: u64,
}

impl Default for Limits {
    /// Generous for real kernels (a 64 GiB guest's page tables are ~128 MiB), small enough
    /// that a hostile one cannot hold the recovery for long.
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(20),
            bytes: 4 << 30,
        }
    }
}

/// Deadline checks are made every this many reads (reading the clock costs more than most
/// reads).
const CLOCK_EVERY: u32 = 64;

/// Guest memory read under a [`Limits`] budget.
pub struct Budgeted<'a> {
    inner: &'a dyn PhysRead,
    limits: Limits,
    deadline: Instant,
    left: Cell<u64>,
    reads: Cell<u32>,
    exhausted: Cell<Option<Exhausted>>,
}

impl<'a> Budgeted<'a> {
    /// Starts the clock now.
    pub fn new(inner: &'a dyn PhysRead, limits: Limits) -> Self {
        let now = Instant::now();
        Budgeted {
            inner,
            limits,
            deadline: now.checked_add(limits.time).unwrap_or(now),
            left: Cell::new(limits.bytes),
            reads: Cell::new(0),
            exhausted: Cell::new(None),
        }
    }

    /// Why reads are being refused, once they are.
    pub fn exhausted(&self) -> Option<Exhausted> {
        self.exhausted.get()
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.limits.bytes - self.left.get()
    }

    fn stop(&self, why: Exhausted) -> bool {
        self.exhausted.set(Some(why));
        false
    }
}

impl PhysRead for Budgeted<'_> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        if self.exhausted.get().is_some() {
            return false;
        }
        let n = self.reads.get().wrapping_add(1);
        self.reads.set(n);
        if n.is_multiple_of(CLOCK_EVERY) && Instant::now() >= self.deadline {
            return self.stop(Exhausted::Deadline(self.limits.time));
        }
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        let Some(left) = self.left.get().checked_sub(len) else {
            return self.stop(Exhausted::Bytes(self.limits.bytes >> 20));
        };
        self.left.set(left);
        self.inner.read_phys(addr, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FlatMemory;

    #[test]
    fn refuses_every_read_once_the_bytes_are_spent() {
        let mem = FlatMemory(vec![7u8; 4096]);
        let b = Budgeted::new(
            &mem,
            Limits {
                time: Duration::from_secs(60),
                bytes: 100,
            },
        );
        let mut buf = [0u8; 40];
        assert!(b.read_phys(0, &mut buf));
        assert!(b.read_phys(40, &mut buf));
        assert_eq!(b.bytes_read(), 80);
        assert!(!b.read_phys(80, &mut buf));
        assert_eq!(b.exhausted(), Some(Exhausted::Bytes(0)));
        // Even a read that would fit is refused from now on.
        assert!(!b.read_phys(0, &mut [0u8; 1]));
    }

    #[test]
    fn refuses_reads_after_the_deadline() {
        let mem = FlatMemory(vec![0u8; 4096]);
        let b = Budgeted::new(
            &mem,
            Limits {
                time: Duration::ZERO,
                bytes: u64::MAX,
            },
        );
        let mut ok = 0;
        for _ in 0..(2 * CLOCK_EVERY) {
            if b.read_phys(0, &mut [0u8; 8]) {
                ok += 1;
            }
        }
        assert!(ok < CLOCK_EVERY);
        assert_eq!(b.exhausted(), Some(Exhausted::Deadline(Duration::ZERO)));
    }

    #[test]
    fn reads_outside_memory_still_fail_without_spending_the_budget_forever() {
        let mem = FlatMemory(vec![0u8; 16]);
        let b = Budgeted::new(&mem, Limits::default());
        assert!(!b.read_phys(1 << 40, &mut [0u8; 8]));
        assert_eq!(b.exhausted(), None);
    }
}
