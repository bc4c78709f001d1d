//! A dead kernel's interval timers (`setitimer`) and POSIX timers (`timer_create`) of one
//! process, read from its `signal_struct` through BTF, so the agent can arm them again
//! (the `itimer`, `ptimer` and `ptimer-next` records of the manifest).
//!
//! - `ITIMER_REAL` is the hrtimer `real_timer` (armed when enqueued; one that fired and
//!   whose `SIGALRM` is still pending is re-armed by the kernel when the signal is taken,
//!   so it counts as armed for its next period) with `it_real_incr`.
//! - `ITIMER_VIRTUAL`/`ITIMER_PROF` are `it[CPUCLOCK_VIRT]`/`it[CPUCLOCK_PROF]`, absolute
//!   CPU times compared with the process's running totals `cputimer.cputime_atomic`
//!   (kept while `posix_cputimers.timers_active`); without them the time left is a guess
//!   (the interval, or the whole expiry), with a problem.
//! - POSIX timers are the `struct k_itimer`s on `posix_timers` (at most
//!   [`wire::MAX_PTIMERS`]): id, clock, notification, the signal and value of its
//!   preallocated `sigq`, the thread of a `SIGEV_THREAD_ID` timer, the interval and the
//!   expiry of its hrtimer. Only `CLOCK_REALTIME` (kept as an absolute time: the crash
//!   kernel's wall clock is the same), `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` (the guest
//!   never suspends: boot time is monotonic time) timers are kept, and those on the
//!   process's own CPU clock (`CLOCK_PROCESS_CPUTIME_ID`, its expiry compared with
//!   `cputimer.cputime_atomic.sum_exec_runtime`); the others (thread CPU clocks, other
//!   processes' clocks, alarm clocks) are left out with a problem.
//!
//! Relative times are measured from the dead kernel's last monotonic time (the caller's
//! `mono_now`: [`crate::eventfds::monotonic_now`], the timekeeper's last update) and count
//! from when the process runs again: the time the crash and the resurrection took is not
//! counted.

use crate::kernel::{is_kernel_addr, Kernel, KernelError};
use crate::list::walk_list;
use crate::manifest::wire;
use crate::Partial;

/// `HRTIMER_STATE_ENQUEUED`.
const ENQUEUED: u64 = 1;
/// `CPUCLOCK_PROF` and `CPUCLOCK_VIRT`: indices of `signal_struct.it`.
const CPUCLOCK_PROF: u64 = 0;
const CPUCLOCK_VIRT: u64 = 1;
/// `sizeof(struct cpu_itimer)`.
const CPU_ITIMER: u64 = 16;
/// `ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF`.
const ITIMER_REAL: u32 = 0;
const ITIMER_VIRTUAL: u32 = 1;
const ITIMER_PROF: u32 = 2;
/// `PROCESS_CLOCK` (`make_process_cpuclock(0, CPUCLOCK_SCHED)`): what a timer on
/// `CLOCK_PROCESS_CPUTIME_ID` keeps as its clock.
const PROCESS_CLOCK: i32 = -6;
/// `CLOCK_PROCESS_CPUTIME_ID`.
const CLOCK_PROCESS_CPUTIME_ID: u32 = 2;
/// Offset of `si_value` in a timer's `kernel_siginfo` (`_sifields._timer._sigval`).
const SI_VALUE: u64 = 24;

/// What was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timers {
    /// The armed interval timers.
    pub itimers: Vec<wire::Itimer>,
    /// The POSIX timers kept, by increasing id.
    pub ptimers: Vec<wire::Ptimer>,
    /// `next_posix_timer_id` (None: unreadable, or no timer was ever made).
    pub next_id: Option<u32>,
}

/// Why a timer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimerError {
    /// A field could not be read.
    #[error("{what} unreadable")]
    Read {
        /// Which.
        what: &'static str,
        /// Why.
        #[source]
        source: KernelError,
    },
    /// A pointer that must be a kernel address is not.
    #[error("{what} {addr:#x} is not a kernel address")]
    BadPointer {
        /// Which.
        what: &'static str,
        /// Its value.
        addr: u64,
    },
    /// A clock whose timers are not restored.
    #[error("clock {0} is not restored (only CLOCK_REALTIME, CLOCK_MONOTONIC, CLOCK_BOOTTIME and the process's CPU clock)")]
    Clock(i32),
    /// A CPU timer, and the process's CPU time is not known.
    #[error("a CPU timer, and the process's CPU time is unknown")]
    CpuTimeUnknown,
    /// A notification the kernel would not have accepted.
    #[error("bad notification {notify} (signal {signo}, thread {tid})")]
    Notify {
        /// `it_sigev_notify`.
        notify: u32,
        /// Its signal.
        signo: u32,
        /// Its thread.
        tid: u32,
    },
}

fn rd(what: &'static str, r: Result<u64, KernelError>) -> Result<u64, TimerError> {
    r.map_err(|source| TimerError::Read { what, source })
}

/// A 32-bit field as the `int` it is.
fn int(v: u64) -> i32 {
    let [a, b, c, d, ..] = v.to_le_bytes();
    i32::from_le_bytes([a, b, c, d])
}

/// A `ktime_t` that is negative counts as 0.
fn ktime(v: u64) -> u64 {
    if v >> 63 != 0 {
        0
    } else {
        v
    }
}

/// Nanoseconds from `now` until an hrtimer that expires at `expires` fires again, given
/// its `interval` (0: one-shot). One whose expiry has passed fires at its next period, or
/// at once (1 ns) when one-shot.
fn left(expires: u64, now: u64, interval: u64) -> u64 {
    if expires > now {
        expires - now
    } else if interval > 0 {
        interval - (now - expires) % interval
    } else {
        1
    }
}

/// The timers of the process whose `signal_struct` is at `signal`; `mono_now` is the dead
/// kernel's `CLOCK_MONOTONIC` time (None: unknown; relative times are then the interval,
/// with a problem).
pub fn read_timers(k: &Kernel<'_>, signal: u64, mono_now: Option<u64>) -> Partial<Timers> {
    let mut out = Partial::ok(Timers::default());
    if !is_kernel_addr(signal) {
        out.problems
            .push(format!("timers: bad signal_struct {signal:#x}"));
        return out;
    }
    match real_itimer(k, signal, mono_now) {
        Ok(Some(t)) => out.value.itimers.push(t),
        Ok(None) => {}
        Err(e) => out.problems.push(format!(
            "ITIMER_REAL not restored: {}",
            crate::error_chain(&e)
        )),
    }
    for (which, idx) in [
        (ITIMER_VIRTUAL, CPUCLOCK_VIRT),
        (ITIMER_PROF, CPUCLOCK_PROF),
    ] {
        match cpu_itimer(k, signal, which, idx) {
            Ok(Some((t, guessed))) => {
                if guessed {
                    out.problems.push(format!(
                        "itimer {which}: the process's CPU time is unknown, its time left is a guess"
                    ));
                }
                out.value.itimers.push(t);
            }
            Ok(None) => {}
            Err(e) => out.problems.push(format!(
                "itimer {which} not restored: {}",
                crate::error_chain(&e)
            )),
        }
    }
    if mono_now.is_none() && !out.value.itimers.is_empty() {
        out.problems
            .push("timers: the dead kernel's time is unknown, times left are guesses".to_owned());
    }
    let (Ok(head), Ok(entry_off)) = (
        k.offset_of("signal_struct", "posix_timers"),
        k.offset_of("k_itimer", "list"),
    ) else {
        out.problems
            .push("POSIX timers: signal_struct.posix_timers unknown".to_owned());
        return out;
    };
    let cpu_now = process_cpu_time(k, signal);
    let nodes = walk_list(
        k,
        signal.wrapping_add(head),
        wire::MAX_PTIMERS,
        "POSIX timers",
    );
    out.problems.extend(nodes.problems);
    for node in nodes.value {
        let timer = node.wrapping_sub(entry_off);
        let id = k.read_field("k_itimer", "it_id", timer).map(int);
        match (id, posix_timer(k, timer, mono_now, cpu_now)) {
            (Ok(id), Ok(t)) if u32::try_from(id).is_ok_and(|i| i == t.id) => {
                if out.value.ptimers.iter().any(|p| p.id == t.id) {
                    out.problems
                        .push(format!("POSIX timer {id} listed twice: once kept"));
                } else {
                    out.value.ptimers.push(t);
                }
            }
            (Ok(id), Ok(_)) => out.problems.push(format!("POSIX timer: bad id {id}")),
            (Ok(id), Err(e)) => out.problems.push(format!(
                "POSIX timer {id} not restored: {}",
                crate::error_chain(&e)
            )),
            (Err(e), _) => out.problems.push(format!(
                "a POSIX timer unreadable: {}",
                crate::error_chain(&e)
            )),
        }
    }
    out.value.ptimers.sort_by_key(|t| t.id);
    if let Ok(next) = k.read_field("signal_struct", "next_posix_timer_id", signal) {
        let next = u32::try_from(next & u64::from(wire::MAX_PTIMER_ID)).unwrap_or(0);
        out.value.next_id = (next != 0).then_some(next);
    }
    out
}

/// The process's total run time (`sum_exec_runtime`), as its CPU timers see it: kept in
/// `cputimer` while `posix_cputimers.timers_active`.
fn process_cpu_time(k: &Kernel<'_>, signal: u64) -> Option<u64> {
    let f = |path| k.read_field("signal_struct", path, signal).ok();
    if f("posix_cputimers.timers_active")? == 0 {
        return None;
    }
    Some(ktime(f(
        "cputimer.cputime_atomic.sum_exec_runtime.counter",
    )?))
}

/// `ITIMER_REAL`, when armed.
fn real_itimer(
    k: &Kernel<'_>,
    signal: u64,
    mono_now: Option<u64>,
) -> Result<Option<wire::Itimer>, TimerError> {
    let f = |what, path| rd(what, k.read_field("signal_struct", path, signal));
    let state = f("real_timer state", "real_timer.state")?;
    let interval_ns = ktime(f("it_real_incr", "it_real_incr")?);
    // Neither enqueued nor periodic: disarmed (or a one-shot that fired).
    if state & ENQUEUED == 0 && interval_ns == 0 {
        return Ok(None);
    }
    let expires = ktime(f("real_timer expiry", "real_timer.node.expires")?);
    let value_ns = match mono_now {
        Some(now) => left(expires, now, interval_ns),
        None => interval_ns.max(1),
    };
    Ok(Some(wire::Itimer {
        which: ITIMER_REAL,
        value_ns,
        interval_ns,
    }))
}

/// `ITIMER_VIRTUAL` or `ITIMER_PROF` (`it[idx]`), when armed, and whether its time left
/// is a guess.
fn cpu_itimer(
    k: &Kernel<'_>,
    signal: u64,
    which: u32,
    idx: u64,
) -> Result<Option<(wire::Itimer, bool)>, TimerError> {
    let base = rd("it", k.offset_of("signal_struct", "it"))?;
    let at = signal.wrapping_add(base).wrapping_add(idx * CPU_ITIMER);
    let expires = rd("cpu_itimer expires", k.read_u64(at))?;
    let interval_ns = rd("cpu_itimer incr", k.read_u64(at.wrapping_add(8)))?;
    if expires == 0 {
        return Ok(None);
    }
    // The running totals the kernel compares the expiry with, kept while CPU timers are.
    let now = (|| -> Option<u64> {
        let f = |path| k.read_field("signal_struct", path, signal).ok();
        if f("posix_cputimers.timers_active")? == 0 {
            return None;
        }
        let utime = ktime(f("cputimer.cputime_atomic.utime.counter")?);
        let stime = ktime(f("cputimer.cputime_atomic.stime.counter")?);
        Some(if idx == CPUCLOCK_VIRT {
            utime
        } else {
            utime.saturating_add(stime)
        })
    })();
    let (value_ns, guessed) = match now {
        Some(now) => (expires.saturating_sub(now).max(1), false),
        // At most the whole expiry is left (the CPU time so far is not negative).
        None if interval_ns > 0 => (interval_ns, true),
        None => (expires, true),
    };
    Ok(Some((
        wire::Itimer {
            which,
            value_ns,
            interval_ns,
        },
        guessed,
    )))
}

/// One `struct k_itimer` at `timer`.
fn posix_timer(
    k: &Kernel<'_>,
    timer: u64,
    mono_now: Option<u64>,
    cpu_now: Option<u64>,
) -> Result<wire::Ptimer, TimerError> {
    let f = |what, path| rd(what, k.read_field("k_itimer", path, timer));
    let id = u32::try_from(int(f("it_id", "it_id")?)).unwrap_or(u32::MAX);
    let clock = int(f("it_clock", "it_clock")?);
    // The calling process's CPU clock is kept as PROCESS_CLOCK.
    let clock = if clock == PROCESS_CLOCK {
        CLOCK_PROCESS_CPUTIME_ID
    } else {
        u32::try_from(clock)
            .ok()
            .filter(|c| wire::PTIMER_CLOCKS.contains(c) && *c != CLOCK_PROCESS_CPUTIME_ID)
            .ok_or(TimerError::Clock(clock))?
    };
    let notify = u32::try_from(int(f("it_sigev_notify", "it_sigev_notify")?)).unwrap_or(u32::MAX);
    let interval_ns = ktime(f("it_interval", "it_interval")?);
    let sigq = f("sigq", "sigq")?;
    if !is_kernel_addr(sigq) {
        return Err(TimerError::BadPointer {
            what: "sigq",
            addr: sigq,
        });
    }
    let info = rd("sigq info", k.offset_of("sigqueue", "info"))?;
    let signo = rd(
        "signal number",
        k.read_u32(sigq.wrapping_add(info)).map(u64::from),
    )?;
    let signo = u32::try_from(signo).unwrap_or(u32::MAX);
    let value = rd(
        "sigev value",
        k.read_u64(sigq.wrapping_add(info).wrapping_add(SI_VALUE)),
    )?;
    // The signal is queued (not taken yet) while its list is not empty.
    let sigq_list = rd("sigq list", k.offset_of("sigqueue", "list"))?;
    let queued =
        rd("sigq list", k.read_u64(sigq.wrapping_add(sigq_list)))? != sigq.wrapping_add(sigq_list);
    let none = notify & !wire::SIGEV_THREAD_ID == wire::SIGEV_NONE;
    let signo = if none && !(1..=64).contains(&signo) {
        0
    } else {
        signo
    };
    let tid = if notify & wire::SIGEV_THREAD_ID != 0 {
        let pid = f("it_pid", "it_pid")?;
        if !is_kernel_addr(pid) {
            return Err(TimerError::BadPointer {
                what: "it_pid",
                addr: pid,
            });
        }
        let nr =
            rd("it_pid", k.offset_of("pid", "numbers"))? + rd("it_pid", k.offset_of("upid", "nr"))?;
        u32::try_from(int(rd("thread id", k.read_u64(pid.wrapping_add(nr)))?)).unwrap_or(0)
    } else {
        0
    };
    let signo_ok = (1..=64).contains(&signo) || (none && signo == 0);
    if notify & !wire::SIGEV_THREAD_ID > wire::SIGEV_THREAD
        || !signo_ok
        || (notify & wire::SIGEV_THREAD_ID != 0) != (tid != 0)
        || tid > wire::MAX_PID
    {
        return Err(TimerError::Notify { notify, signo, tid });
    }
    if clock == CLOCK_PROCESS_CPUTIME_ID {
        // A CPU timer: its expiry an absolute CPU time (0: disarmed), compared with the
        // process's total run time.
        let cpu_now = cpu_now.ok_or(TimerError::CpuTimeUnknown)?;
        let expires = ktime(f("cpu timer expiry", "it.cpu.node.expires")?);
        let value_ns = if expires != 0 {
            left(expires, cpu_now, interval_ns)
        } else if interval_ns > 0 && queued {
            interval_ns
        } else {
            0
        };
        return Ok(wire::Ptimer {
            id,
            clock,
            notify,
            signo,
            tid,
            absolute: false,
            value,
            value_ns,
            interval_ns,
        });
    }
    let state = f("hrtimer state", "it.real.timer.state")?;
    let expires = ktime(f("hrtimer expiry", "it.real.timer.node.expires")?);
    // Armed: enqueued; or fired with its signal still queued and periodic (the kernel
    // arms it again when the signal is taken); or a SIGEV_NONE timer, never enqueued,
    // that has not expired or is periodic.
    let armed = state & ENQUEUED != 0
        || (interval_ns > 0 && queued)
        || (none && (interval_ns > 0 || mono_now.is_some_and(|n| expires > n)));
    let (absolute, value_ns) = match (armed, clock, mono_now) {
        (false, _, _) => (false, 0),
        (true, 0, _) if state & ENQUEUED != 0 => (true, expires.max(1)),
        (true, 0, _) => (true, expires.saturating_add(interval_ns).max(1)),
        (true, _, Some(now)) => (false, left(expires, now, interval_ns)),
        (true, _, None) => (false, interval_ns.max(1)),
    };
    Ok(wire::Ptimer {
        id,
        clock,
        notify,
        signo,
        tid,
        absolute,
        value,
        value_ns,
        interval_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::build::Builder;
    use crate::btf::Btf;
    use crate::kernel::testmem::{dm, Mem};
    use crate::list::tests::MAP;
    use crate::symbols::SymbolTable;

    // Byte offsets of the test kernel's structures.
    const S_NEXT: u64 = 0;
    const S_TIMERS: u64 = 8;
    const S_REAL: u64 = 0x40; // hrtimer: node.expires at +24, state at +56
    const S_INCR: u64 = 0x80;
    const S_IT: u64 = 0x88;
    const S_CPUT: u64 = 0xa8; // utime, stime, sum_exec_runtime
    const S_ACTIVE: u64 = 0xc0;
    const K_ID: u64 = 16;
    const K_CLOCK: u64 = 20;
    const K_NOTIFY: u64 = 24;
    const K_INTERVAL: u64 = 32;
    const K_PID: u64 = 40;
    const K_SIGQ: u64 = 48;
    const K_TIMER: u64 = 64;
    const Q_INFO: u64 = 24;
    const P_NR: u64 = 0x30;

    /// A byte offset in bits, as BTF members have them.
    fn bits(off: u64) -> u32 {
        u32::try_from(off * 8).expect("small offset")
    }

    fn btf() -> Btf {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let u8t = b.int("unsigned char", 1);
        let u32t = b.int("unsigned int", 4);
        let int = b.int("int", 4);
        let lh = b.strukt("list_head", 16, &[("next", ulong, 0), ("prev", ulong, 64)]);
        let tqn = b.strukt("timerqueue_node", 32, &[("expires", ulong, 24 * 8)]);
        let hr = b.strukt(
            "hrtimer",
            64,
            &[
                ("node", tqn, 0),
                ("_softexpires", ulong, 32 * 8),
                ("state", u8t, 56 * 8),
            ],
        );
        let cit = b.strukt(
            "cpu_itimer",
            16,
            &[("expires", ulong, 0), ("incr", ulong, 64)],
        );
        let its = b.array(cit, u32t, 2);
        let a64 = b.strukt("atomic64_t", 8, &[("counter", ulong, 0)]);
        let tca = b.strukt(
            "task_cputime_atomic",
            24,
            &[
                ("utime", a64, 0),
                ("stime", a64, 64),
                ("sum_exec_runtime", a64, 128),
            ],
        );
        let tgc = b.strukt("thread_group_cputimer", 24, &[("cputime_atomic", tca, 0)]);
        let pct = b.strukt("posix_cputimers", 8, &[("timers_active", u32t, 0)]);
        b.strukt(
            "signal_struct",
            0x100,
            &[
                ("next_posix_timer_id", u32t, bits(S_NEXT)),
                ("posix_timers", lh, bits(S_TIMERS)),
                ("real_timer", hr, bits(S_REAL)),
                ("it_real_incr", ulong, bits(S_INCR)),
                ("it", its, bits(S_IT)),
                ("cputimer", tgc, bits(S_CPUT)),
                ("posix_cputimers", pct, bits(S_ACTIVE)),
            ],
        );
        let real = b.strukt("", 64, &[("timer", hr, 0)]);
        let cput = b.strukt("cpu_timer", 48, &[("node", tqn, 0)]);
        let itu = b.composite(5, "", 64, &[("real", real, 0, 0), ("cpu", cput, 0, 0)]);
        b.strukt(
            "k_itimer",
            0x100,
            &[
                ("list", lh, 0),
                ("it_id", int, bits(K_ID)),
                ("it_clock", int, bits(K_CLOCK)),
                ("it_sigev_notify", int, bits(K_NOTIFY)),
                ("it_interval", ulong, bits(K_INTERVAL)),
                ("it_pid", ulong, bits(K_PID)),
                ("sigq", ulong, bits(K_SIGQ)),
                ("it", itu, bits(K_TIMER)),
            ],
        );
        let info = b.array(u8t, u32t, 48);
        b.strukt(
            "sigqueue",
            80,
            &[("list", lh, 0), ("info", info, bits(Q_INFO))],
        );
        let upid = b.strukt("upid", 16, &[("nr", int, 0), ("ns", ulong, 64)]);
        let numbers = b.array(upid, u32t, 1);
        b.strukt("pid", 0x40, &[("numbers", numbers, bits(P_NR))]);
        Btf::parse(&b.finish()).expect("btf")
    }

    const SIG: u64 = 0x10_0000;
    const T1: u64 = 0x10_1000;
    const T2: u64 = 0x10_2000;
    const T3: u64 = 0x10_3000;
    const PID: u64 = 0x10_4000;
    const S: u64 = 1_000_000_000;
    const NOW: u64 = 500 * S;

    /// A timer at `at` with its sigqueue at `at + 0x800`.
    #[allow(clippy::too_many_arguments)]
    fn put_timer(
        m: &mut Mem,
        at: u64,
        id: u32,
        clock: i32,
        notify: u32,
        signo: u32,
        value: u64,
        interval: u64,
        expires: u64,
        enqueued: bool,
    ) {
        m.put_u32(at + K_ID, id);
        m.put_u32(at + K_CLOCK, clock.cast_unsigned());
        m.put_u32(at + K_NOTIFY, notify);
        m.put_u64(at + K_INTERVAL, interval);
        m.put_u64(at + K_PID, dm(PID));
        let q = at + 0x800;
        m.put_u64(at + K_SIGQ, dm(q));
        m.put_u64(q, dm(q));
        m.put_u64(q + 8, dm(q));
        m.put_u32(q + Q_INFO, signo);
        m.put_u64(q + Q_INFO + SI_VALUE, value);
        m.put_u64(at + K_TIMER + 24, expires);
        m.put(at + K_TIMER + 56, &[u8::from(enqueued)]);
    }

    fn link(m: &mut Mem, ring: &[u64]) {
        for (i, &n) in ring.iter().enumerate() {
            let next = ring[(i + 1) % ring.len()];
            let prev = ring[(i + ring.len() - 1) % ring.len()];
            m.put_u64(n, dm(next));
            m.put_u64(n + 8, dm(prev));
        }
    }

    fn memory() -> Mem {
        let mut m = Mem::new(0x20_0000);
        m.put_u32(SIG + S_NEXT, 4);
        // ITIMER_REAL: 1.5 s left, 1 s interval.
        m.put_u64(SIG + S_REAL + 24, NOW + 3 * S / 2);
        m.put(SIG + S_REAL + 56, &[1]);
        m.put_u64(SIG + S_INCR, S);
        // ITIMER_PROF at 10 s of CPU time, 7 s used (3 + 4).
        m.put_u64(SIG + S_IT, 10 * S);
        m.put_u64(SIG + S_CPUT, 3 * S);
        m.put_u64(SIG + S_CPUT + 8, 4 * S);
        m.put_u64(SIG + S_CPUT + 16, 2 * S);
        m.put_u32(SIG + S_ACTIVE, 1);
        // Timers 3 (monotonic, an hour), 0 (realtime, absolute), 1 (process CPU clock),
        // listed newest first as the kernel does.
        put_timer(&mut m, T1, 3, 1, 0, 34, 42, 0, NOW + 3600 * S, true);
        put_timer(&mut m, T2, 0, 0, 4, 14, 7, S, 0x17e1_f1c5_a4b0_c000, true);
        m.put_u32(PID + P_NR, 77);
        put_timer(&mut m, T3, 1, -6, 0, 10, 0, 0, 5 * S, true);
        link(&mut m, &[SIG + S_TIMERS, T1, T2, T3]);
        m
    }

    #[test]
    fn interval_and_posix_timers_with_their_ids() {
        let m = memory();
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let got = read_timers(&k, dm(SIG), Some(NOW));
        assert_eq!(
            got.value.itimers,
            [
                wire::Itimer {
                    which: ITIMER_REAL,
                    value_ns: 3 * S / 2,
                    interval_ns: S
                },
                wire::Itimer {
                    which: ITIMER_PROF,
                    value_ns: 3 * S,
                    interval_ns: 0
                }
            ]
        );
        let ids: Vec<u32> = got.value.ptimers.iter().map(|t| t.id).collect();
        assert_eq!(ids, [0, 1, 3], "sorted");
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        let cpu = got.value.ptimers[1];
        assert_eq!((cpu.clock, cpu.value_ns, cpu.absolute), (2, 3 * S, false));
        // A thread's CPU clock is not restored.
        let mut m = m;
        m.put_u32(T3 + K_CLOCK, (-2i32).cast_unsigned());
        let k2 = Kernel::new(&m, &syms, &btf).expect("kernel");
        let other = read_timers(&k2, dm(SIG), Some(NOW));
        assert_eq!(other.value.ptimers.len(), 2);
        assert!(
            other.problems[0].contains("POSIX timer 1"),
            "{:?}",
            other.problems
        );
        let rt = got.value.ptimers[0];
        assert!(rt.absolute);
        assert_eq!(rt.value_ns, 0x17e1_f1c5_a4b0_c000);
        assert_eq!((rt.notify, rt.tid, rt.signo, rt.value), (4, 77, 14, 7));
        let mono = got.value.ptimers[2];
        assert_eq!(
            mono,
            wire::Ptimer {
                id: 3,
                clock: 1,
                notify: 0,
                signo: 34,
                tid: 0,
                absolute: false,
                value: 42,
                value_ns: 3600 * S,
                interval_ns: 0
            }
        );
        assert_eq!(got.value.next_id, Some(4));
    }

    #[test]
    fn fired_timers_and_unknown_times() {
        let mut m = memory();
        // ITIMER_REAL fired 0.25 s ago, its SIGALRM pending: 0.75 s to its next period.
        m.put_u64(SIG + S_REAL + 24, NOW - S / 4);
        m.put(SIG + S_REAL + 56, &[0]);
        // Timer 3 one-shot and fired: disarmed, but still there.
        m.put(T1 + K_TIMER + 56, &[0]);
        // CPU totals not kept: a guess.
        m.put_u32(SIG + S_ACTIVE, 0);
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let got = read_timers(&k, dm(SIG), Some(NOW));
        assert_eq!(got.value.itimers[0].value_ns, 3 * S / 4);
        assert_eq!(got.value.itimers[1].value_ns, 10 * S, "the whole expiry");
        assert!(got.problems.iter().any(|p| p.contains("guess")));
        assert_eq!(got.value.ptimers[1].value_ns, 0);
        // No time at all: the interval.
        let got = read_timers(&k, dm(SIG), None);
        assert_eq!(got.value.itimers[0].value_ns, S);
        // A list that loops is cut with a problem, and every timer kept once.
        link(&mut m, &[SIG + S_TIMERS, T1, T2]);
        m.put_u64(T2, dm(T1));
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let got = read_timers(&k, dm(SIG), Some(NOW));
        assert!(!got.problems.is_empty());
        assert!(got.value.ptimers.len() <= 2);
        // A bad signal_struct pointer is a problem, not a panic.
        let got = read_timers(&k, 0x1234, Some(NOW));
        assert!(!got.problems.is_empty());
        assert!(got.value.ptimers.is_empty());
    }

    #[test]
    fn time_left_rules() {
        assert_eq!(left(10, 4, 0), 6);
        assert_eq!(left(10, 10, 0), 1);
        assert_eq!(left(10, 25, 4), 1);
        assert_eq!(left(10, 24, 4), 2);
        assert_eq!(left(10, 26, 4), 4);
    }
}
