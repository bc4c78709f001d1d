//! eventfd, signalfd and timerfd descriptors of a dead kernel, read through BTF: each is
//! told by its `f_op` (`eventfd_fops`, `signalfd_fops`, `timerfd_fops`) and described by
//! its `private_data`, so the agent can make it again (the `other` fd paths of the
//! manifest: [`EventFd::path`]).

use crate::kernel::{is_kernel_addr, Kernel, KernelError};

/// `EFD_SEMAPHORE`.
const EFD_SEMAPHORE: u64 = 1;
/// `INITIAL_JIFFIES` on 64-bit: `(unsigned long)(unsigned int)(-300 * HZ)`.
fn initial_jiffies(hz: u64) -> u64 {
    (300 * hz).wrapping_neg() & 0xffff_ffff
}

/// Why such a descriptor could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventFdError {
    /// A field could not be read.
    #[error("{what}")]
    Read {
        /// Which.
        what: &'static str,
        /// Why.
        #[source]
        source: KernelError,
    },
    /// `private_data` is not a kernel address.
    #[error("private_data {0:#x} is not a kernel address")]
    BadContext(u64),
}

/// What the descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFd {
    /// `eventfd`: its counter and whether it is a semaphore.
    Event {
        /// The counter.
        count: u64,
        /// `EFD_SEMAPHORE`.
        semaphore: bool,
    },
    /// `signalfd`: the signals it reads.
    Signal {
        /// The mask (bit N-1 for signal N).
        mask: u64,
    },
    /// `timerfd`.
    Timer {
        /// `CLOCK_*`.
        clockid: u32,
        /// When it fires: nanoseconds from now (0: not armed; expired timers whose ticks
        /// were not read count as 1), or with `absolute` the `CLOCK_REALTIME` time.
        remaining_ns: u64,
        /// `remaining_ns` is an absolute `CLOCK_REALTIME` time (`TFD_TIMER_ABSTIME`): the
        /// crash kernel's wall clock is the same as the dead one's.
        absolute: bool,
        /// Its interval in nanoseconds (0: one-shot).
        interval_ns: u64,
        /// Expirations not yet read.
        ticks: u64,
    },
}

impl EventFd {
    /// The `fd` path of kind `other` that names it in the manifest.
    pub fn path(&self) -> String {
        match *self {
            EventFd::Event { count, semaphore } => {
                format!("eventfd:{count:x}:{}", u8::from(semaphore))
            }
            EventFd::Signal { mask } => format!("signalfd:{mask:x}"),
            EventFd::Timer {
                clockid,
                remaining_ns,
                absolute,
                interval_ns,
                ticks,
            } => format!(
                "timerfd:{clockid}:{}:{remaining_ns:x}:{interval_ns:x}:{ticks:x}",
                u8::from(absolute)
            ),
        }
    }
}

fn rd(what: &'static str, r: Result<u64, KernelError>) -> Result<u64, EventFdError> {
    r.map_err(|source| EventFdError::Read { what, source })
}

/// Reads the descriptor behind the `struct file` at `file`, when its `f_op` is one of
/// these (None: another kind of file).
pub fn read_eventfd(k: &Kernel<'_>, file: u64) -> Option<Result<EventFd, EventFdError>> {
    let fops = k.read_field("file", "f_op", file).ok()?;
    let is = |sym: &str| k.symbol(sym).is_ok_and(|a| a == fops);
    let which = if is("eventfd_fops") {
        0
    } else if is("signalfd_fops") {
        1
    } else if is("timerfd_fops") {
        2
    } else {
        return None;
    };
    Some((|| {
        let ctx = rd("private_data", k.read_field("file", "private_data", file))?;
        if !is_kernel_addr(ctx) {
            return Err(EventFdError::BadContext(ctx));
        }
        match which {
            0 => Ok(EventFd::Event {
                count: rd("eventfd count", k.read_field("eventfd_ctx", "count", ctx))?,
                semaphore: rd("eventfd flags", k.read_field("eventfd_ctx", "flags", ctx))?
                    & EFD_SEMAPHORE
                    != 0,
            }),
            1 => {
                let off = rd("signalfd mask", k.offset_of("signalfd_ctx", "sigmask"))?;
                // The kernel keeps the complement (signalfd4: `signotset`), without
                // SIGKILL and SIGSTOP.
                let stored = rd("signalfd mask", k.read_u64(ctx.wrapping_add(off)))?;
                let kill_stop = (1u64 << (9 - 1)) | (1u64 << (19 - 1));
                Ok(EventFd::Signal {
                    mask: !stored & !kill_stop,
                })
            }
            _ => read_timer(k, ctx),
        }
    })())
}

/// Offset of `timekeeper` in `tk_core` (`struct { seqcount_raw_spinlock_t seq; struct
/// timekeeper timekeeper; }`, an anonymous type: the 4-byte sequence count without lockdep,
/// aligned to 8). What is read there is checked before it is believed.
const TK_CORE_TIMEKEEPER: u64 = 8;
/// How far the timekeeper's monotonic time may be ahead of the jiffies' (its start: the
/// time before the tick began, e.g. a TSC that counted while the VMM loaded the guest).
const TK_AHEAD_MAX: u64 = 3600 * 1_000_000_000;

/// The dead kernel's `CLOCK_MONOTONIC` time in nanoseconds, as its timekeeper had it at its
/// last update (`tk_core.timekeeper.tkr_mono`: `base + (xtime_nsec >> shift)`; updated on
/// every tick and when a CPU leaves idle, so it is late by at most the time since), or
/// else from `jiffies_64` and `tick_nsec` (good to a tick, but counting only from when
/// the tick started, which may be seconds after the monotonic clock did). The
/// timekeeper's value is taken when it is sane: a clocksource pointer, a shift of at most
/// 32, a non-zero multiplier, not behind the jiffies' time by more than two ticks nor
/// ahead by more than an hour. None when neither can be read.
pub fn monotonic_now(k: &Kernel<'_>) -> Option<u64> {
    let jiffies = jiffies_now(k);
    let tk = timekeeper_now(k);
    match (tk, jiffies) {
        (Some(t), Some((j, tick)))
            if t.saturating_add(2 * tick) >= j && t <= j.saturating_add(TK_AHEAD_MAX) =>
        {
            Some(t)
        }
        (Some(t), None) => Some(t),
        (_, j) => j.map(|(j, _)| j),
    }
}

/// `tk_core.timekeeper.tkr_mono`'s time, when it looks like a timekeeper's.
fn timekeeper_now(k: &Kernel<'_>) -> Option<u64> {
    let tk = k.symbol("tk_core").ok()?.wrapping_add(TK_CORE_TIMEKEEPER);
    let f = |path| k.read_field("timekeeper", path, tk).ok();
    let clock = f("tkr_mono.clock")?;
    let shift = f("tkr_mono.shift")?;
    let mult = f("tkr_mono.mult")?;
    if !is_kernel_addr(clock) || shift > 32 || mult == 0 {
        return None;
    }
    let base = f("tkr_mono.base")?;
    let nsec = f("tkr_mono.xtime_nsec")? >> shift;
    if base >> 63 != 0 {
        return None;
    }
    Some(base.saturating_add(nsec))
}

/// `jiffies_64` as nanoseconds since the tick started, and the tick's length.
fn jiffies_now(k: &Kernel<'_>) -> Option<(u64, u64)> {
    let tick_ns = k
        .symbol("tick_nsec")
        .ok()
        .and_then(|a| k.read_u64(a).ok())?;
    if !(1_000_000..=10_000_000).contains(&tick_ns) {
        return None;
    }
    let hz = 1_000_000_000 / tick_ns;
    let j = k
        .symbol("jiffies_64")
        .ok()
        .and_then(|a| k.read_u64(a).ok())?;
    Some((
        j.wrapping_sub(initial_jiffies(hz)).saturating_mul(tick_ns),
        tick_ns,
    ))
}

fn read_timer(k: &Kernel<'_>, ctx: u64) -> Result<EventFd, EventFdError> {
    let f = |what: &'static str, p: &'static str| rd(what, k.read_field("timerfd_ctx", p, ctx));
    let clockid = u32::try_from(f("timerfd clockid", "clockid")? & 0xffff_ffff).unwrap_or(1);
    let interval = f("timerfd interval", "tintv")?;
    let ticks = f("timerfd ticks", "ticks")?;
    // The hrtimer (or the alarm's, which starts with one) is first in the context.
    let expires = f("timerfd expiry", "t.tmr.node.expires")?;
    let state = f("timerfd state", "t.tmr.state")? & 0xff;
    // A negative ktime is no interval.
    let interval_ns = if interval >> 63 != 0 { 0 } else { interval };
    let armed = state & 1 != 0;
    // CLOCK_REALTIME(_ALARM) timers expire at a wall-clock time, the same after the crash;
    // an alarm's hrtimer is not where a timer's is, so its interval stands in.
    match clockid {
        0 if armed => {
            return Ok(EventFd::Timer {
                clockid,
                remaining_ns: expires,
                absolute: true,
                interval_ns,
                ticks,
            })
        }
        8 | 9 => {
            return Ok(EventFd::Timer {
                clockid,
                remaining_ns: if armed || ticks > 0 {
                    interval_ns.max(1)
                } else {
                    0
                },
                absolute: false,
                interval_ns,
                ticks,
            })
        }
        _ => {}
    }
    let now = monotonic_now(k);
    let remaining_ns = match (armed, now) {
        (true, Some(now)) => expires.saturating_sub(now).max(1),
        (true, None) => interval_ns.max(1),
        (false, _) if ticks > 0 => 1,
        (false, _) => 0,
    };
    Ok(EventFd::Timer {
        clockid,
        remaining_ns,
        absolute: false,
        interval_ns,
        ticks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::build::Builder;
    use crate::btf::Btf;
    use crate::kernel::testmem::Mem;
    use crate::symbols::SymbolTable;

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81100100 D phys_base
ffffffff81101000 D init_top_pgt
ffffffff81180000 D jiffies_64
ffffffff81180100 B tick_nsec
ffffffff81180200 b tk_core
ffffffff81400000 B _end
";
    /// Where the image's symbols above are in the test memory.
    const JIFFIES: u64 = 0x118_0000;
    const TICK: u64 = 0x118_0100;
    const TK: u64 = 0x118_0200 + TK_CORE_TIMEKEEPER;

    #[test]
    fn monotonic_time_from_the_timekeeper_or_the_jiffies() {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let u32t = b.int("unsigned int", 4);
        let trb = b.strukt(
            "tk_read_base",
            56,
            &[
                ("clock", ulong, 0),
                ("mult", u32t, 24 * 8),
                ("shift", u32t, 28 * 8),
                ("xtime_nsec", ulong, 32 * 8),
                ("base", ulong, 40 * 8),
            ],
        );
        b.strukt("timekeeper", 112, &[("tkr_mono", trb, 0)]);
        let btf = Btf::parse(&b.finish()).expect("btf");
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let mut m = Mem::new(0x120_0000);
        // HZ 100; 1000 s of ticks.
        m.put_u64(TICK, 10_000_000);
        m.put_u64(JIFFIES, initial_jiffies(100).wrapping_add(100_000));
        let jiffies_ns = 1000 * 1_000_000_000;
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(
            monotonic_now(&k),
            Some(jiffies_ns),
            "no timekeeper: the jiffies"
        );
        // The timekeeper 2.5 s ahead (its clock started before the tick did).
        m.put_u64(TK, 0xffff_8880_0000_1000);
        m.put_u32(TK + 24, 1 << 20);
        m.put_u32(TK + 28, 8);
        m.put_u64(TK + 32, 5 << 8);
        m.put_u64(TK + 40, jiffies_ns + 2_500_000_000);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(monotonic_now(&k), Some(jiffies_ns + 2_500_000_005));
        // Behind the jiffies: not believed.
        m.put_u64(TK + 40, jiffies_ns - 1_000_000_000);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(monotonic_now(&k), Some(jiffies_ns));
        // Not a timekeeper (a zero multiplier): not believed.
        m.put_u64(TK + 40, jiffies_ns + 1);
        m.put_u32(TK + 24, 0);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(monotonic_now(&k), Some(jiffies_ns));
    }

    #[test]
    fn paths_and_initial_jiffies() {
        assert_eq!(initial_jiffies(100), 0xffff_8ad0);
        assert_eq!(initial_jiffies(250), 0xfffe_db08);
        let e = EventFd::Event {
            count: 0x1_0000_0000,
            semaphore: true,
        };
        assert_eq!(e.path(), "eventfd:100000000:1");
        assert_eq!(EventFd::Signal { mask: 1 << 9 }.path(), "signalfd:200");
        let t = EventFd::Timer {
            clockid: 1,
            remaining_ns: 0x10,
            absolute: false,
            interval_ns: 0,
            ticks: 2,
        };
        assert_eq!(t.path(), "timerfd:1:0:10:0:2");
    }
}
