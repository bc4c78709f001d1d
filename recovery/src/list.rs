//! Walking a kernel `struct list_head` ring in untrusted memory.
//!
//! The walk goes forward from the head with a visited set, a node cap, and the
//! `next->prev == prev` check of `lib/list_debug.c`. If the forward walk breaks before it is
//! back at the head, a second walk goes backward from `head->prev` (checking
//! `prev->next == next`) until it meets the forward part, so a single corrupted link loses at
//! most the node it points out of. Every break is reported; nothing panics or loops.

use std::collections::HashSet;

use crate::kernel::{is_kernel_addr, Kernel, KernelError};
use crate::{error_chain, Partial};

/// Why a list walk lost entries (or had to repair itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// The head's links could not be read: nothing was walked.
    #[error("head {head:#x} unreadable")]
    HeadUnreadable {
        /// The `list_head` of the head.
        head: u64,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
    /// The walk reached its node cap.
    #[error("more than {cap} entries, stopped")]
    TooMany {
        /// The cap.
        cap: usize,
    },
    /// A `next` pointer is not a plausible kernel pointer.
    #[error("bad next pointer {next:#x} in {node:#x}")]
    BadNext {
        /// The pointer.
        next: u64,
        /// The node holding it.
        node: u64,
    },
    /// The forward walk came back to a node other than the head.
    #[error("cycle at {node:#x} (reached again from {from:#x})")]
    Cycle {
        /// The node reached twice.
        node: u64,
        /// The node whose `next` led back to it.
        from: u64,
    },
    /// A node's links could not be read.
    #[error("entry {node:#x} (after {prev:#x}) unreadable")]
    EntryUnreadable {
        /// The node.
        node: u64,
        /// The node before it.
        prev: u64,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
    /// `next->prev != prev`.
    #[error("entry {node:#x} has prev {found:#x}, expected {expected:#x}")]
    BadPrevLink {
        /// The node.
        node: u64,
        /// Its `prev`.
        found: u64,
        /// The node the walk came from.
        expected: u64,
    },
    /// A `prev` pointer met walking backward is not a plausible kernel pointer.
    #[error("backward walk: bad prev pointer {prev:#x} in {node:#x}")]
    BackBadPrev {
        /// The pointer.
        prev: u64,
        /// The node holding it.
        node: u64,
    },
    /// The backward walk came back to a node other than the head.
    #[error("backward walk: cycle at {node:#x}")]
    BackCycle {
        /// The node reached twice.
        node: u64,
    },
    /// A node's links could not be read walking backward.
    #[error("backward walk: entry {node:#x} unreadable")]
    BackEntryUnreadable {
        /// The node.
        node: u64,
        /// Why the read failed.
        #[source]
        source: KernelError,
    },
    /// `prev->next != next`.
    #[error("backward walk: entry {node:#x} has next {found:#x}, expected {expected:#x}")]
    BackBadNextLink {
        /// The node.
        node: u64,
        /// Its `next`.
        found: u64,
        /// The node the walk came from.
        expected: u64,
    },
    /// Entries past a broken forward link were found walking backward.
    #[error("recovered {count} entries walking backward")]
    RecoveredBackward {
        /// How many.
        count: usize,
    },
}

/// Reads `(next, prev)` of the `list_head` at `node`.
fn links(k: &Kernel<'_>, node: u64) -> Result<(u64, u64), KernelError> {
    let next = k.read_u64(node)?;
    let prev = k.read_u64(node.wrapping_add(8))?;
    Ok((next, prev))
}

fn plausible(p: u64) -> bool {
    is_kernel_addr(p) && p & 7 == 0
}

/// Walks the ring whose head is the `list_head` at `head` and returns the addresses of the
/// member `list_head`s (not including `head`), in forward order. At most `cap` nodes.
/// `what` names the list in problem messages.
pub fn walk_list(k: &Kernel<'_>, head: u64, cap: usize, what: &str) -> Partial<Vec<u64>> {
    let (value, errors) = walk_ring(k, head, cap);
    Partial {
        value,
        problems: errors
            .iter()
            .map(|e| format!("{what}: {}", error_chain(e)))
            .collect(),
    }
}

/// [`walk_list`] with its problems as they were found.
fn walk_ring(k: &Kernel<'_>, head: u64, cap: usize) -> (Vec<u64>, Vec<ListError>) {
    let mut nodes = Vec::new();
    let mut errors = Vec::new();
    let (head_next, head_prev) = match links(k, head) {
        Ok(l) => l,
        Err(source) => {
            errors.push(ListError::HeadUnreadable { head, source });
            return (nodes, errors);
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
        if nodes.len() >= cap {
            errors.push(ListError::TooMany { cap });
            // A cap is not corruption to repair from the other side.
            return (nodes, errors);
        }
        if !plausible(cur) {
            errors.push(ListError::BadNext {
                next: cur,
                node: prev,
            });
            break false;
        }
        if !seen.insert(cur) {
            errors.push(ListError::Cycle {
                node: cur,
                from: prev,
            });
            break false;
        }
        let (next, back) = match links(k, cur) {
            Ok(l) => l,
            Err(source) => {
                errors.push(ListError::EntryUnreadable {
                    node: cur,
                    prev,
                    source,
                });
                break false;
            }
        };
        if back != prev {
            errors.push(ListError::BadPrevLink {
                node: cur,
                found: back,
                expected: prev,
            });
            break false;
        }
        accepted.insert(cur);
        nodes.push(cur);
        prev = cur;
        cur = next;
    };
    if complete {
        return (nodes, errors);
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
        if nodes.len() + tail.len() >= cap {
            errors.push(ListError::TooMany { cap });
            break;
        }
        if !plausible(cur) {
            errors.push(ListError::BackBadPrev {
                prev: cur,
                node: next,
            });
            break;
        }
        if !back_seen.insert(cur) {
            errors.push(ListError::BackCycle { node: cur });
            break;
        }
        let (fwd, p) = match links(k, cur) {
            Ok(l) => l,
            Err(source) => {
                errors.push(ListError::BackEntryUnreadable { node: cur, source });
                break;
            }
        };
        if fwd != next {
            errors.push(ListError::BackBadNextLink {
                node: cur,
                found: fwd,
                expected: next,
            });
            break;
        }
        tail.push(cur);
        next = cur;
        cur = p;
    }
    if !tail.is_empty() {
        errors.push(ListError::RecoveredBackward { count: tail.len() });
    }
    nodes.extend(tail.into_iter().rev());
    (nodes, errors)
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

    fn walk_typed(m: &Mem, head: u64, cap: usize) -> (Vec<u64>, Vec<ListError>) {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = empty_btf();
        let k = Kernel::new(m, &syms, &btf).expect("kernel");
        walk_ring(&k, head, cap)
    }

    #[test]
    fn a_cycle_is_reported_as_its_variant() {
        // 3.next -> 1: the forward walk meets node 1 again coming from node 3.
        let (mut m, nodes) = setup(5);
        m.put_u64(0x4000, nodes[1]);
        let (found, errors) = walk_typed(&m, nodes[0], 100);
        assert_eq!(found, nodes[1..]);
        assert_eq!(
            errors,
            [
                ListError::Cycle {
                    node: nodes[1],
                    from: nodes[3]
                },
                ListError::RecoveredBackward { count: 2 }
            ]
        );
        // The cap stops both walks with its own variant, once.
        let (m, nodes) = setup(50);
        let (found, errors) = walk_typed(&m, nodes[0], 10);
        assert_eq!(found.len(), 10);
        assert_eq!(errors, [ListError::TooMany { cap: 10 }]);
    }

    #[test]
    fn an_unreadable_head_keeps_the_kernel_error_as_its_source() {
        let m = Mem::new(0x1000);
        let head = dm(0x10_0000);
        let (found, errors) = walk_typed(&m, head, 10);
        assert!(found.is_empty());
        let [e @ ListError::HeadUnreadable { source, .. }] = errors.as_slice() else {
            panic!("{errors:?}");
        };
        assert!(matches!(source, KernelError::Unreadable { va, .. } if *va == head));
        // The message names the head; the cause follows once, from the chain.
        assert_eq!(
            error_chain(e),
            "head 0xffff888000100000 unreadable: \
             0xffff888000100000 (phys 0x100000) is outside guest memory"
        );
    }

    #[test]
    fn unreadable_head() {
        let m = Mem::new(0x1000);
        let r = walk(&m, dm(0x10_0000), 10);
        assert!(r.value.is_empty());
        assert!(r.problems[0].contains("head"));
    }
}
