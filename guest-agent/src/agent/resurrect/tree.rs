//! The process tree: who creates whom, so that parents find their children again.
//!
//! A process whose parent is resurrected too is created by its parent: the agent makes the
//! stub of each tree's root (`clone3(set_tid)`), and each stub, before it prepares itself,
//! makes the stubs of its own children the same way, with `CLONE_PTRACE` so that the agent
//! traces them from birth. `waitpid` in a parent then works across the crash, and a child
//! that had exited and was not reaped (a zombie) comes back as a child that ends the same
//! way. Sessions and process groups follow: a session leader makes its session again
//! (`setsid`) before it makes its children, so they inherit it, and takes its pty again as
//! its controlling terminal (`TIOCSCTTY`, then `TIOCSPGRP` for the foreground group once
//! its children are made); a parent puts each child in its process group (`setpgid`, as
//! a shell does) right after making it.
//!
//! Only a `process` block can be a parent: a process caught inside an exec is made by its
//! parent, but its own children are made by the agent. Anything the tree gets wrong (a
//! loop of parents in a corrupt manifest, a group that no longer exists) degrades to what
//! the agent would do without it: the process is a root, in its own session.

use std::collections::HashMap;

use super::manifest::{Exec, Process, Tree, Zombie};
use super::restore::{self, clone_raw, clone_with_pid, trace_me};
use super::{exec, Error};

/// What one stub becomes.
pub(super) enum Kind<'m> {
    Process(&'m Process, Box<restore::Prepared>),
    Exec(&'m Exec, Box<exec::Prepared>),
    /// A zombie: the wait status it ends with.
    Zombie(u32),
}

/// One process to create.
pub(super) struct Node<'m> {
    pub(super) pid: i32,
    pub(super) kind: Kind<'m>,
    tree: Option<Tree>,
    /// Index of the parent in [`Forest::nodes`], when the parent is created too.
    parent: Option<usize>,
    /// Indexes of the children, in manifest order.
    children: Vec<usize>,
}

impl<'m> Node<'m> {
    pub(super) fn new(pid: i32, kind: Kind<'m>, tree: Option<Tree>) -> Self {
        Self {
            pid,
            kind,
            tree,
            parent: None,
            children: Vec::new(),
        }
    }

    fn is_process(&self) -> bool {
        matches!(self.kind, Kind::Process(..))
    }

    /// Made by its parent's stub (so traced from birth), not by the agent.
    pub(super) fn by_parent(&self) -> bool {
        self.parent.is_some()
    }

    /// Makes its own session: a session leader, or a root (it cannot join anyone's).
    fn makes_session(&self) -> bool {
        self.parent.is_none() || self.tree.is_some_and(|t| t.sid == self.pid.unsigned_abs())
    }

    /// The process group its parent puts it in (none for a session leader).
    fn group(&self) -> Option<i32> {
        let t = self.tree?;
        if self.makes_session() || t.pgid == 0 {
            return None;
        }
        i32::try_from(t.pgid).ok()
    }
}

/// A pty to take again as the controlling terminal of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ctty {
    /// The session (its leader's pid).
    pub(crate) sid: i32,
    /// The agent's descriptor of its slave (every stub has a copy).
    pub(crate) slave: libc::c_int,
    /// Its foreground process group (0: the leader's own).
    pub(crate) pgrp: i32,
}

/// Every process to create, linked into trees.
pub(super) struct Forest<'m> {
    pub(super) nodes: Vec<Node<'m>>,
    /// The controlling terminals the session leaders take.
    pub(super) cttys: Vec<Ctty>,
}

/// The longest chain of parents followed (a manifest cannot hold a deeper real tree: pids
/// are bounded; this only stops a corrupt one).
const MAX_DEPTH: usize = 4096;

impl<'m> Forest<'m> {
    /// Links `nodes`: each to its parent when the parent is a process being created, the
    /// rest (and any node on a loop) as roots. Zombies without such a parent are dropped.
    pub(super) fn link(nodes: Vec<Node<'m>>) -> Self {
        let keys: Vec<(i32, bool, Option<Tree>)> = nodes
            .iter()
            .map(|n| (n.pid, n.is_process(), n.tree))
            .collect();
        let mut forest = Self {
            nodes,
            cttys: Vec::new(),
        };
        for (n, p) in forest.nodes.iter_mut().zip(parents(&keys)) {
            n.parent = p;
        }
        let orphans: Vec<usize> = (0..forest.nodes.len())
            .filter(|&i| {
                matches!(forest.nodes[i].kind, Kind::Zombie(_)) && forest.nodes[i].parent.is_none()
            })
            .collect();
        forest.drop_nodes(&orphans);
        for i in 0..forest.nodes.len() {
            if let Some(p) = forest.nodes[i].parent {
                forest.nodes[p].children.push(i);
            }
        }
        forest
    }

    /// Removes the nodes at `gone` (none of them a parent), fixing every index.
    fn drop_nodes(&mut self, gone: &[usize]) {
        if gone.is_empty() {
            return;
        }
        let mut map = Vec::with_capacity(self.nodes.len());
        let mut next = 0;
        for i in 0..self.nodes.len() {
            if gone.contains(&i) {
                map.push(None);
            } else {
                map.push(Some(next));
                next += 1;
            }
        }
        let mut i = 0;
        self.nodes.retain(|_| {
            let keep = map[i].is_some();
            i += 1;
            keep
        });
        for n in &mut self.nodes {
            n.parent = n.parent.and_then(|p| map[p]);
        }
    }

    /// The roots, in manifest order.
    pub(super) fn roots(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].parent.is_none())
            .collect()
    }

    /// The tree under `root`, every parent before its children (zombies, which need no
    /// finishing, left out). The caller finishes the execs after every process.
    pub(super) fn finish_order(&self, root: usize) -> Vec<usize> {
        let mut order = Vec::new();
        let mut stack = vec![root];
        while let Some(i) = stack.pop() {
            if !matches!(self.nodes[i].kind, Kind::Zombie(_)) {
                order.push(i);
            }
            stack.extend(self.nodes[i].children.iter().rev());
        }
        order
    }

    /// Creates the stub of the root `root`, which creates the rest of its tree. Returns
    /// when the root exists (its descendants appear as the stubs run).
    pub(super) fn create(&mut self, root: usize) -> Result<(), Error> {
        let pid = self.nodes[root].pid;
        // SAFETY: the agent is single-threaded; the child runs only `stub`, which never
        // returns and makes only raw system calls on the plans (its copy of our memory).
        if unsafe { clone_with_pid(pid) }? == 0 {
            // SAFETY: we are the fresh child of a single-threaded process.
            unsafe { self.stub(root) }
        }
        // The agent's copies of the exec status pipes of this tree: the stubs have theirs.
        for i in self.finish_order(root) {
            if let Kind::Exec(_, e) = &mut self.nodes[i].kind {
                e.close_writer();
            }
        }
        Ok(())
    }

    /// A stub: takes its place in the tree, makes its children, then becomes what its
    /// node says. Never returns.
    ///
    /// # Safety
    /// Call only in a fresh child of `clone3` from a single-threaded process; it makes only
    /// raw system calls on data prepared before the clone.
    unsafe fn stub(&self, at: usize) -> ! {
        let node = &self.nodes[at];
        // SAFETY: raw system calls on plain values and on the plans, which this copy of
        // the agent's memory keeps alive; every path ends in a stop, an exec or `_exit`.
        unsafe {
            if node.parent.is_none() && node.is_process() {
                trace_me();
            }
            let leader = node.tree.is_some_and(|t| t.sid == node.pid.unsigned_abs());
            if node.makes_session() {
                libc::setsid();
                // Its terminal again, before its children are made: they inherit it.
                for c in self.cttys.iter().filter(|c| leader && c.sid == node.pid) {
                    libc::ioctl(c.slave, libc::TIOCSCTTY, 0);
                }
            }
            for &c in &node.children {
                let child = &self.nodes[c];
                let r = clone_raw(child.pid, child.is_process());
                if r == 0 {
                    self.stub(c);
                }
                // The parent's half of the shell's race-free `setpgid` (the child cannot
                // do it before it runs; a zombie may be gone from its group already).
                if r > 0 {
                    if let Some(g) = child.group() {
                        libc::setpgid(child.pid, g);
                    }
                }
            }
            // The foreground group, once the children that lead groups are in theirs
            // (the leader is in the foreground now, so this raises no SIGTTOU).
            for c in self.cttys.iter().filter(|c| leader && c.sid == node.pid) {
                if c.pgrp > 0 && c.pgrp != node.pid {
                    libc::ioctl(c.slave, libc::TIOCSPGRP, &raw const c.pgrp);
                }
            }
            // A zombie's SIGCHLD must come before the stub stops for the agent (which
            // drops it then), not while the agent injects calls: wait until each is
            // dead, without reaping it.
            for &c in &node.children {
                if matches!(self.nodes[c].kind, Kind::Zombie(_)) {
                    let mut info: libc::siginfo_t = std::mem::zeroed();
                    let id = libc::id_t::try_from(self.nodes[c].pid).unwrap_or(0);
                    while libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT)
                        != 0
                        && *libc::__errno_location() == libc::EINTR
                    {}
                }
            }
            match &node.kind {
                Kind::Process(_, p) => restore::child(&p.plan),
                Kind::Exec(_, e) => exec::child(&e.plan),
                Kind::Zombie(status) => zombie(*status),
            }
        }
    }
}

/// Ends the way a process that exited with wait status `status` did. Never returns.
///
/// # Safety
/// Raw system calls only; call in a stub.
unsafe fn zombie(status: u32) -> ! {
    // SAFETY: raw system calls on local values; ends in _exit.
    unsafe {
        restore::Setup::close_all_but(&[]);
        let sig = i32::try_from(status & 0x7f).unwrap_or(0);
        if sig != 0 && sig != 0x7f && sig != libc::SIGKILL && sig != libc::SIGSTOP {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            let default = [0u64; 4];
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
            let mask = 0u64;
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                std::ptr::addr_of!(mask),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
            libc::syscall(libc::SYS_kill, libc::syscall(libc::SYS_getpid), sig);
        } else if sig == libc::SIGKILL {
            libc::syscall(libc::SYS_kill, libc::syscall(libc::SYS_getpid), sig);
        }
        libc::_exit(i32::try_from((status >> 8) & 0xff).unwrap_or(0))
    }
}

/// The parent of each of `items` (pid, is a process, tree record): the index of the
/// process whose pid is its `ppid`, or none; a node on a loop of parents (only a corrupt
/// manifest has one) or under a chain longer than [`MAX_DEPTH`] is a root.
fn parents(items: &[(i32, bool, Option<Tree>)]) -> Vec<Option<usize>> {
    let by_pid: HashMap<i32, usize> = items
        .iter()
        .enumerate()
        .filter(|(_, (_, process, _))| *process)
        .map(|(i, (pid, _, _))| (*pid, i))
        .collect();
    let mut out: Vec<Option<usize>> = items
        .iter()
        .enumerate()
        .map(|(i, (_, _, tree))| {
            tree.and_then(|t| i32::try_from(t.ppid).ok())
                .and_then(|pp| by_pid.get(&pp).copied())
                .filter(|&p| p != i)
        })
        .collect();
    for i in 0..out.len() {
        let mut at = out[i];
        let mut steps = 0;
        while let Some(p) = at {
            steps += 1;
            if p == i || steps > MAX_DEPTH {
                out[i] = None;
                break;
            }
            at = out[p];
        }
    }
    out
}

/// Builds the nodes of the `zombie` records.
pub(super) fn zombie_nodes(zombies: &[Zombie]) -> Vec<Node<'_>> {
    zombies
        .iter()
        .filter_map(|z| {
            let pid = i32::try_from(z.pid).ok()?;
            Some(Node::new(pid, Kind::Zombie(z.status), Some(z.tree)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ppid: u32, pgid: u32, sid: u32) -> Option<Tree> {
        Some(Tree { ppid, pgid, sid })
    }

    fn n(pid: i32, kind: Kind<'static>, tree: Option<Tree>) -> Node<'static> {
        Node::new(pid, kind, tree)
    }

    #[test]
    fn parents_are_processes_and_loops_become_roots() {
        let items = [
            (10, true, t(1, 10, 10)),   // 0: a root (init's child)
            (11, true, t(10, 10, 10)),  // 1: child of 10
            (12, false, t(11, 10, 10)), // 2: an exec, child of 11
            (13, true, t(12, 10, 10)),  // 3: parent is an exec: a root
            (14, true, t(15, 14, 14)),  // 4: 14 <-> 15 loop
            (15, true, t(14, 14, 14)),  // 5
            (16, true, t(16, 16, 16)),  // 6: its own parent
            (17, true, None),           // 7: no tree record
        ];
        let p = parents(&items);
        assert_eq!(p[..4], [None, Some(0), Some(1), None]);
        assert!(p[4].is_none() || p[5].is_none(), "a loop is broken: {p:?}");
        assert_eq!(p[6..], [None, None]);
    }

    #[test]
    fn zombies_without_a_parent_are_dropped() {
        let f = Forest::link(vec![
            n(20, Kind::Zombie(0), t(1, 20, 20)),
            n(30, Kind::Zombie(0), t(40, 40, 40)),
        ]);
        assert!(f.nodes.is_empty());
    }

    #[test]
    fn sessions_and_groups() {
        let mut a = n(5, Kind::Zombie(0), t(1, 5, 5));
        a.parent = None;
        assert!(a.makes_session());
        assert_eq!(a.group(), None);
        let mut b = n(6, Kind::Zombie(0), t(5, 5, 5));
        b.parent = Some(0);
        assert!(!b.makes_session());
        assert_eq!(b.group(), Some(5));
        let mut c = n(7, Kind::Zombie(0), t(5, 7, 7));
        c.parent = Some(0);
        assert!(c.makes_session(), "sid == pid: a session leader");
        assert_eq!(c.group(), None);
        let mut d = n(8, Kind::Zombie(0), t(5, 8, 5));
        d.parent = Some(0);
        assert_eq!(
            d.group(),
            Some(8),
            "a group of its own in its parent's session"
        );
    }
}
