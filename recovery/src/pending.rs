//! Signals a dead kernel had queued and not delivered: the `struct sigqueue` entries of a
//! thread's `pending` list and of its process's `signal->shared_pending` list, each with
//! its `kernel_siginfo`, read bounded. A signal whose bit is set in the pending mask
//! without an entry (the kernel could not allocate one, or a standard signal sent by the
//! kernel without its details) gets a bare `siginfo` with only its number.

use crate::kernel::{is_kernel_addr, Kernel};
use crate::list::walk_list;
use crate::Partial;

/// Most queued signals read from one list (a queue is bounded by `RLIMIT_SIGPENDING`).
const MAX_QUEUED: usize = 1024;
/// `sizeof(kernel_siginfo)` on x86-64.
pub const SIGINFO: usize = 48;
/// `SI_KERNEL`: the si_code of a signal with no details.
const SI_KERNEL: i32 = 0x80;

/// The signals queued on the `struct sigpending` at `sigpending`, in queue order, then
/// any set in its mask without an entry.
pub fn read_pending(k: &Kernel<'_>, sigpending: u64, what: &str) -> Partial<Vec<[u8; SIGINFO]>> {
    let mut out = Partial::ok(Vec::new());
    if !is_kernel_addr(sigpending) {
        out.problems
            .push(format!("{what}: bad sigpending {sigpending:#x}"));
        return out;
    }
    let (Ok(list), Ok(mask), Ok(info_off)) = (
        k.offset_of("sigpending", "list"),
        k.read_field("sigpending", "signal", sigpending),
        k.offset_of("sigqueue", "info"),
    ) else {
        out.problems.push(format!("{what}: sigpending unreadable"));
        return out;
    };
    if mask == 0 {
        return out;
    }
    let nodes = walk_list(k, sigpending.wrapping_add(list), MAX_QUEUED, what);
    out.problems.extend(nodes.problems);
    let mut listed = 0u64;
    // `sigqueue.list` is its first member: a node is the entry.
    let entry_off = k.offset_of("sigqueue", "list").unwrap_or(0);
    for node in nodes.value {
        let mut info = [0u8; SIGINFO];
        if let Err(e) = k.read_bytes(
            node.wrapping_sub(entry_off).wrapping_add(info_off),
            &mut info,
        ) {
            out.problems.push(format!(
                "{what}: a queued signal unreadable: {}",
                crate::error_chain(&e)
            ));
            continue;
        }
        let signo = i32::from_le_bytes([info[0], info[1], info[2], info[3]]);
        // Only signals the mask says are pending (an entry being dequeued may linger).
        let Some(bit) = u32::try_from(signo).ok().filter(|s| (1..=64).contains(s)) else {
            out.problems
                .push(format!("{what}: queued signal number {signo}"));
            continue;
        };
        if mask & (1 << (bit - 1)) == 0 {
            continue;
        }
        listed |= 1 << (bit - 1);
        out.value.push(info);
    }
    for bit in (1..=64u32).filter(|b| mask & !listed & (1 << (b - 1)) != 0) {
        out.value.push(bare(bit));
    }
    out
}

/// A `siginfo` with only the signal's number (and `SI_KERNEL`).
fn bare(signo: u32) -> [u8; SIGINFO] {
    let mut info = [0u8; SIGINFO];
    info[..4].copy_from_slice(&signo.to_le_bytes());
    info[8..12].copy_from_slice(&SI_KERNEL.to_le_bytes());
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::build::Builder;
    use crate::btf::Btf;
    use crate::kernel::testmem::{dm, Mem};
    use crate::list::tests::MAP;
    use crate::symbols::SymbolTable;

    fn btf() -> Btf {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let u8t = b.int("unsigned char", 1);
        let u32t = b.int("unsigned int", 4);
        let lh = b.strukt("list_head", 16, &[("next", ulong, 0), ("prev", ulong, 64)]);
        b.strukt("sigpending", 24, &[("list", lh, 0), ("signal", ulong, 128)]);
        let info = b.array(u8t, u32t, 48);
        b.strukt("sigqueue", 80, &[("list", lh, 0), ("info", info, 192)]);
        Btf::parse(&b.finish()).expect("btf")
    }

    const HEAD: u64 = 0x10_0000;
    const Q1: u64 = 0x10_1000;
    const Q2: u64 = 0x10_2000;

    fn put_info(m: &mut Mem, at: u64, signo: u32, code: i32, value: u32) {
        m.put_u32(at + 24, signo);
        m.put_u32(at + 24 + 8, code.cast_unsigned());
        m.put_u32(at + 24 + 24, value);
    }

    #[test]
    fn queued_signals_in_order_then_bits_without_an_entry() {
        let mut m = Mem::new(0x20_0000);
        // head -> Q1 (SIGRTMIN 34, sigqueue value 42) -> Q2 (SIGUSR1) -> head.
        m.put_u64(HEAD, dm(Q1));
        m.put_u64(HEAD + 8, dm(Q2));
        m.put_u64(Q1, dm(Q2));
        m.put_u64(Q1 + 8, dm(HEAD));
        m.put_u64(Q2, dm(HEAD));
        m.put_u64(Q2 + 8, dm(Q1));
        put_info(&mut m, Q1, 34, -1, 42);
        put_info(&mut m, Q2, 10, 0, 0);
        // SIGUSR1, SIGUSR2 (no entry), SIGRTMIN.
        m.put_u64(HEAD + 16, (1 << 9) | (1 << 11) | (1 << 33));
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let got = read_pending(&k, dm(HEAD), "pending");
        assert!(got.problems.is_empty(), "{:?}", got.problems);
        let signos: Vec<u8> = got.value.iter().map(|i| i[0]).collect();
        assert_eq!(signos, [34, 10, 12]);
        assert_eq!(got.value[0][24], 42, "the value sent with it");
        assert_eq!(
            i32::from_le_bytes(got.value[0][8..12].try_into().expect("4")),
            -1
        );
        assert_eq!(got.value[2], bare(12));
        // A list that loops is cut with a problem, and no signal is invented.
        m.put_u64(Q2, dm(Q1));
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let got = read_pending(&k, dm(HEAD), "pending");
        assert!(!got.problems.is_empty());
        assert!(got.value.len() <= 3);
    }
}
