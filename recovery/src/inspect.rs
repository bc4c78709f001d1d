//! One call from raw guest memory to a report of every task and address space.

use std::collections::BTreeMap;
use std::fmt;

use crate::btf::Btf;
use crate::kernel::{Kernel, Layout};
use crate::mm::{read_mm, MmInfo};
use crate::paging::PhysRead;
use crate::process::{read_process, ProcessInfo};
use crate::regs::{read_cpus, KernelCpu};
use crate::symbols::SymbolTable;
use crate::tasks::{walk_tasks, Task};
use crate::{error_chain, Partial};

/// Everything found in a kernel image, and what went wrong finding it.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Address-space layout found (None when the kernel could not be located at all).
    pub layout: Option<Layout>,
    /// Every task found: leaders in task-list order, each followed by its threads.
    pub tasks: Vec<Task>,
    /// Address spaces of user tasks, by `mm_struct` address.
    pub mms: BTreeMap<u64, MmInfo>,
    /// What went wrong reading each address space (also in [`Report::problems`]).
    pub mm_problems: BTreeMap<u64, Vec<String>>,
    /// Shared state of each user process (by tgid), with what went wrong reading it.
    pub processes: BTreeMap<i32, Partial<ProcessInfo>>,
    /// The kernel's CPUs and the task each was running.
    pub cpus: Vec<KernelCpu>,
    /// Why the report may be incomplete (empty when the walk was clean).
    pub problems: Vec<String>,
}

impl Report {
    /// The address space of a task, if it has one and it was read.
    pub fn mm_of(&self, task: &Task) -> Option<&MmInfo> {
        self.mms.get(&task.mm)
    }

    /// User tasks only.
    pub fn user_tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.iter().filter(|t| t.is_user())
    }

    /// The task with thread id `pid`.
    pub fn task(&self, pid: i32) -> Option<&Task> {
        self.tasks.iter().find(|t| t.pid == pid)
    }
}

/// Parses the symbol map and BTF, finds the kernel in `mem`, and walks its tasks and their
/// address spaces. Never fails: what cannot be read ends up in [`Report::problems`].
pub fn inspect(mem: &dyn PhysRead, system_map: &str, btf: &[u8]) -> Report {
    let mut report = Report::default();
    let syms = match SymbolTable::parse_system_map(system_map) {
        Ok(s) => s,
        Err(e) => {
            report
                .problems
                .push(format!("System.map: {}", error_chain(&e)));
            return report;
        }
    };
    let btf = match Btf::parse(btf) {
        Ok(b) => b,
        Err(e) => {
            report.problems.push(format!("BTF: {}", error_chain(&e)));
            return report;
        }
    };
    let kernel = match Kernel::new(mem, &syms, &btf) {
        Ok(k) => k,
        Err(e) => {
            report.problems.push(format!("kernel: {}", error_chain(&e)));
            return report;
        }
    };
    inspect_kernel(&kernel, &mut report);
    report
}

/// [`inspect`] with an already constructed [`Kernel`].
pub fn inspect_kernel(kernel: &Kernel<'_>, report: &mut Report) {
    report.layout = Some(kernel.layout().clone());
    report
        .problems
        .extend(kernel.notes().iter().map(|n| format!("layout: {n}")));
    let tasks = walk_tasks(kernel);
    report.problems.extend(tasks.problems);
    report.tasks = tasks.value;
    for t in &report.tasks {
        if !t.is_user() || report.mms.contains_key(&t.mm) {
            continue;
        }
        let mm = read_mm(kernel, t.mm);
        report
            .problems
            .extend(mm.problems.iter().map(|p| format!("pid {}: {p}", t.tgid)));
        report.mm_problems.insert(t.mm, mm.problems);
        report.mms.insert(t.mm, mm.value);
    }
    for t in &report.tasks {
        if !t.is_user() || !t.is_leader() || report.processes.contains_key(&t.tgid) {
            continue;
        }
        let p = read_process(kernel, t);
        report
            .problems
            .extend(p.problems.iter().map(|p| format!("pid {}: {p}", t.tgid)));
        report.processes.insert(t.tgid, p);
    }
    let cpus = read_cpus(kernel);
    report.problems.extend(cpus.problems);
    report.cpus = cpus.value;
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.layout {
            writeln!(
                f,
                "kernel: phys_base={:#x} page_offset_base={:#x} THREAD_SIZE={:#x} la57={}",
                l.phys_base, l.page_offset_base, l.thread_size, l.la57
            )?;
        }
        let users = self.user_tasks().count();
        writeln!(
            f,
            "{} tasks ({} user, {} kernel), {} address spaces, {} problems",
            self.tasks.len(),
            users,
            self.tasks.len() - users,
            self.mms.len(),
            self.problems.len()
        )?;
        writeln!(
            f,
            "{:>6} {:>6} {:<16} {:1} {:>3} {:<18} {:<14} {:<14} {:<14}",
            "PID", "TGID", "COMM", "S", "CPU", "TASK", "IP", "SP", "FSBASE"
        )?;
        for t in &self.tasks {
            let cpu = match (t.on_cpu, t.cpu) {
                (true, Some(c)) => format!("*{c}"),
                (false, Some(c)) => c.to_string(),
                (_, None) => "-".to_owned(),
            };
            let (ip, sp) = match &t.regs {
                Some(r) => (format!("{:#x}", r.ip), format!("{:#x}", r.sp)),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let comm = if t.is_kernel_thread() {
                format!("[{}]", t.comm)
            } else {
                t.comm.clone()
            };
            writeln!(
                f,
                "{:>6} {:>6} {:<16} {:1} {:>3} {:#018x} {:<14} {:<14} {:#x}",
                t.pid,
                t.tgid,
                comm,
                t.state_char(),
                cpu,
                t.addr,
                ip,
                sp,
                t.fsbase
            )?;
        }
        for t in self.tasks.iter().filter(|t| t.is_user() && t.is_leader()) {
            let Some(mm) = self.mm_of(t) else { continue };
            writeln!(f)?;
            writeln!(
                f,
                "pid {} {} exe={} cmdline={:?}",
                t.pid,
                t.comm,
                mm.exe.as_deref().unwrap_or("?"),
                mm.cmdline
            )?;
            writeln!(
                f,
                "  mm {:#x} pgd {:#x} (phys {:#x}) code {:#x}-{:#x} brk {:#x}-{:#x} stack {:#x} args {:#x}-{:#x} map_count {}",
                mm.addr,
                mm.pgd,
                mm.pgd_phys,
                mm.start_code,
                mm.end_code,
                mm.start_brk,
                mm.brk,
                mm.start_stack,
                mm.arg_start,
                mm.arg_end,
                mm.map_count
            )?;
            if let Some(r) = &t.regs {
                writeln!(f, "  regs {r} ({:?})", crate::regs::classify_syscall(r))?;
            }
            for v in &mm.vmas {
                let pages: u64 = v.pages.value.runs.iter().map(|r| r.len / 4096).sum();
                let anon: u64 = v
                    .pages
                    .value
                    .runs
                    .iter()
                    .filter(|r| r.anon)
                    .map(|r| r.len / 4096)
                    .sum();
                let unknown = v.pages.value.anon_unknown;
                writeln!(f, "  {v}  [{pages} pages, {anon} anon, {unknown} unknown]")?;
            }
            if let Some(p) = self.processes.get(&t.tgid) {
                let p = &p.value;
                writeln!(
                    f,
                    "  cwd {} root {}",
                    p.cwd.as_deref().unwrap_or("?"),
                    p.root.as_deref().unwrap_or("?")
                )?;
                for o in &p.files {
                    writeln!(
                        f,
                        "  fd {} {:?} flags {:#o} pos {} {}{}",
                        o.fd,
                        o.kind(),
                        o.flags,
                        o.pos,
                        o.path.as_deref().unwrap_or("?"),
                        if o.cloexec { " (cloexec)" } else { "" }
                    )?;
                }
                for a in &p.sigactions {
                    writeln!(
                        f,
                        "  sig {} handler {:#x} flags {:#x} mask {:#x}",
                        a.signo, a.handler, a.flags, a.mask
                    )?;
                }
            }
        }
        for c in &self.cpus {
            writeln!(
                f,
                "cpu {} per_cpu_offset {:#x} current {:x?}",
                c.cpu, c.per_cpu_offset, c.current
            )?;
        }
        if !self.problems.is_empty() {
            writeln!(f)?;
            writeln!(f, "problems:")?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
        }
        Ok(())
    }
}
