//! Walking a kernel `struct list_head` ring in untrusted memory.
//!
//! The walk goes forward from the head with a visited set, a node cap, and the
//! `next->prev == prev` check of `lib/list_debug.c`. If the forward walk breaks before it is
//! back at the head, a second walk goes backward from `head->prev` (checking
//! `prev->next == next`) until it meets the forward part, so a single corrupted link loses at
//! most the node it points out of. Every break is reported; nothing panics or loops.

use std::collections::HashSet;

use crate::kernel::{is_kernel_addr, Kernel};
use crate::Partial;

/// Reads `(next, prev)` of the `list_head` at `node`.
fn links(k: &Kernel<'_>, node: u64) -> Result<(u64, u64), String> {
    let next = k.read_u64(node).map_err(|e| e.to_string())?;
    let prev = k
        .read_u64(node.wrapping_add(8))
        .map_err(|e| e.to_string())?;
    Ok((next, prev))
}

fn plausible(p: u64) -> bool {
    is_kernel_addr(p) && p & 7 == 0
}

/// Walks the ring whose head is the `list_head` at `head` and returns the addresses of the
/// member `list_head`s (not including `head`), in forward order. At most `cap` nodes.
/// `what` names the list in problem messages.
pub fn walk_list(k: &Kernel<'_>, head: u64, cap: usize, what: &str) -> Partial<Vec<u64>> {
    let mut out = Partial::ok(Vec::new());
    let (head_next, head_prev) = match links(k, head) {
        Ok(l) => l,
        Err(e) => {
            out.problems
                .push(format!("{what}: head {head:#x} unreadable: {e}"));
            return out;
        }
    };
    let mut accepted: HashSet<u64> = HashSet::new();
    let mut seen: HashSet<u64> = HashSet::from([head]);

    // Forward.
    let mut prev = head;
    let mut cur = head_next;
    let complete = loop {
        if cur == head {
            break true;
        }
        if out.value.len() >= cap {
            out.problems
                .push(format!("{what}: more than {cap} entries, stopped"));
            // A cap is not corruption to repair from the other side.
            return out;
        }
        if !plausible(cur) {
            out.problems
                .push(format!("{what}: bad next pointer {cur:#x} in {prev:#x}"));
            break false;
        }
        if !seen.insert(cur) {
            out.problems.push(format!(
                "{what}: cycle at {cur:#x} (reached again from {prev:#x})"
            ));
            break false;
        }
        let (next, back) = match links(k, cur) {
            Ok(l) => l,
            Err(e) => {
                out.problems.push(format!(
                    "{what}: entry {cur:#x} (after {prev:#x}) unreadable: {e}"
                ));
                break false;
            }
        };
        if back != prev {
            out.problems.push(format!(
                "{what}: entry {cur:#x} has prev {back:#x}, expected {prev:#x}"
            ));
            break false;
        }
        accepted.insert(cur);
        out.value.push(cur);
        prev = cur;
        cur = next;
    };
    if complete {
        return out;
    }

    // Backward from the head, until we meet an entry the forward walk accepted.
    let mut tail = Vec::new();
    let mut back_seen: HashSet<u64> = HashSet::from([head]);
    let mut next = head;
    let mut cur = head_prev;
    loop {
        if cur == head || accepted.contains(&cur) {
            break;
        }
        if out.value.len() + tail.len() >= cap {
            out.problems
                .push(format!("{what}: more than {cap} entries, stopped"));
            break;
        }
        if !plausible(cur) {
            out.problems.push(format!(
                "{what}: backward walk: bad prev pointer {cur:#x} in {next:#x}"
            ));
            break;
        }
        if !back_seen.insert(cur) {
            out.problems
                .push(format!("{what}: backward walk: cycle at {cur:#x}"));
            break;
        }
        let (fwd, p) = match links(k, cur) {
            Ok(l) => l,
            Err(e) => {
                out.problems.push(format!(
                    "{what}: backward walk: entry {cur:#x} unreadable: {e}"
                ));
                break;
            }
        };
        if fwd != next {
            out.problems.push(format!(
                "{what}: backward walk: entry {cur:#x} has next {fwd:#x}, expected {next:#x}"
            ));
            break;
        }
        tail.push(cur);
        next = cur;
        cur = p;
    }
    if !tail.is_empty() {
        out.problems.push(format!(
            "{what}: recovered {} entries walking backward",
            tail.len()
        ));
    }
    out.value.extend(tail.into_iter().rev());
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::btf::Btf;
    use crate::kernel::testmem::{dm, Mem};
    use crate::symbols::SymbolTable;

    pub(crate) const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81100100 D phys_base
ffffffff81101000 D init_top_pgt
ffffffff81400000 B _end
";

    pub(crate) fn empty_btf() -> Btf {
        let mut b = crate::btf::build::Builder::new();
        b.int("int", 4);
        Btf::parse(&b.finish()).expect("btf")
    }

    /// A ring head -> n1 -> ... -> head, node i at phys 0x1000 * (i + 1).
    fn ring(m: &mut Mem, n: u64) -> Vec<u64> {
        let nodes: Vec<u64> = (0..=n).map(|i| dm(0x1000 * (i + 1))).collect();
        for i in 0..nodes.len() {
            let next = nodes[(i + 1) % nodes.len()];
            let prev = nodes[(i + nodes.len() - 1) % nodes.len()];
            let pa = 0x1000 * (i as u64 + 1);
            m.put_u64(pa, next);
            m.put_u64(pa + 8, prev);
        }
        nodes
    }

    fn setup(n: u64) -> (Mem, Vec<u64>) {
        let mut m = Mem::new(0x20_0000);
        let nodes = ring(&mut m, n);
        (m, nodes)
    }

    fn walk(m: &Mem, head: u64, cap: usize) -> Partial<Vec<u64>> {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = empty_btf();
        let k = Kernel::new(m, &syms, &btf).expect("kernel");
        walk_list(&k, head, cap, "l")
    }

    #[test]
    fn walks_a_good_ring() {
        let (m, nodes) = setup(5);
        let r = walk(&m, nodes[0], 100);
        assert!(r.is_complete(), "{:?}", r.problems);
        assert_eq!(r.value, nodes[1..]);
        // Empty list.
        let mut m = Mem::new(0x10000);
        m.put_u64(0x1000, dm(0x1000));
        m.put_u64(0x1008, dm(0x1000));
        let r = walk(&m, dm(0x1000), 100);
        assert!(r.is_complete() && r.value.is_empty());
    }

    #[test]
    fn broken_head_next_is_recovered_backward() {
        let (mut m, nodes) = setup(5);
        m.put_u64(0x1000, 0); // head.next = NULL
        let r = walk(&m, nodes[0], 100);
        assert_eq!(r.value, nodes[1..]);
        assert!(r
            .problems
            .iter()
            .any(|p| p.contains("bad next pointer 0x0")));
        assert!(r.problems.iter().any(|p| p.contains("backward")));
    }

    #[test]
    fn wild_pointer_outside_memory() {
        let (mut m, nodes) = setup(5);
        m.put_u64(0x3000, dm(0x4000_0000)); // node 2 -> beyond memory
        let r = walk(&m, nodes[0], 100);
        assert_eq!(r.value, nodes[1..]);
        assert!(
            r.problems.iter().any(|p| p.contains("unreadable")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn self_pointing_and_cyclic_lists_terminate() {
        // Node 3 points to itself both ways: forward stops at the back-check.
        let (mut m, nodes) = setup(5);
        m.put_u64(0x4000, nodes[3]);
        m.put_u64(0x4008, nodes[3]);
        let r = walk(&m, nodes[0], 100);
        assert!(!r.is_complete());
        assert!(r.value.len() <= 5);
        // A cycle that never returns to the head: 3.next -> 1 (the backward walk still
        // finds 5 and 4).
        let (mut m, nodes) = setup(5);
        m.put_u64(0x4000, nodes[1]);
        let r = walk(&m, nodes[0], 100);
        assert_eq!(r.value, nodes[1..]);
        assert!(
            r.problems.iter().any(|p| p.contains("cycle")),
            "{:?}",
            r.problems
        );
        // Cap.
        let (m, nodes) = setup(50);
        let r = walk(&m, nodes[0], 10);
        assert_eq!(r.value.len(), 10);
        assert!(r.problems.iter().any(|p| p.contains("more than 10")));
    }

    #[test]
    fn unreadable_head() {
        let m = Mem::new(0x1000);
        let r = walk(&m, dm(0x10_0000), 10);
        assert!(r.value.is_empty());
        assert!(r.problems[0].contains("head"));
    }
}
