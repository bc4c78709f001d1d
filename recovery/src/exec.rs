//! A task caught inside `execve` after its point of no return.
//!
//! Linux 6.1: `do_execveat_common` allocates a `struct linux_binprm`, copies the filename,
//! the environment and the arguments into a fresh mm's stack area (from the top down: the
//! filename highest, then `envp`, then `argv`, `bprm->p` below them), and `begin_new_exec`
//! installs that mm (`exec_mmap`, then `bprm->mm = NULL`). From there until `start_thread`
//! puts the new program's entry in the saved frame, the task's memory is neither the old
//! program nor a runnable new one, so it cannot be restored as an image; but the exec can
//! be done again: the executable is `bprm->file`, and the strings are still in the stack
//! area. The `linux_binprm` is referenced only from the task's kernel stack (a local of
//! `do_execveat_common` passed down), so the stack is scanned for direct-map pointers and
//! each candidate is checked field by field (through BTF) against the task's mm before its
//! strings are read.
//!
//! `setup_arg_pages` shifts `bprm->p` and sets `mm->arg_start` to where the strings will
//! be *before* `shift_arg_pages` moves the area down, so a task caught in between has its
//! strings still at the top of the old area (ending 8 bytes below it, where `bprm_mm_init`
//! started them), at an address equal to the shifted one modulo the page size: both
//! places are tried.

use std::collections::HashSet;

use crate::kernel::{is_kernel_addr, Kernel, KernelError};
use crate::mm::{file_path, MmError, MmInfo};
use crate::regs::{classify_syscall, exec_frame_intact, SyscallState, EXEC_SYSCALLS};
use crate::tasks::Task;

/// `MAX_ARG_STRINGS`.
pub const MAX_ARG_STRINGS: u64 = 0x7fff_ffff;
/// `MAX_ARG_STRLEN` (32 pages), the NUL included.
pub const MAX_ARG_STRLEN: usize = 32 * 4096;
/// Most bytes of strings read (the kernel's own limit is a quarter of the stack rlimit).
pub const MAX_STRINGS: u64 = owvmm_manifest::MAX_EXEC_STRINGS as u64;
/// Longest `bprm->filename` read.
const MAX_FILENAME: usize = 4096;
/// Largest kernel stack scanned.
const MAX_STACK: u64 = 64 << 10;

/// Why no `linux_binprm` of a task could be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The task has no kernel stack pointer.
    #[error("no kernel stack")]
    NoStack,
    /// The kernel stack could not be read.
    #[error("kernel stack {stack:#x} unreadable")]
    Stack {
        /// `task->stack`.
        stack: u64,
        /// Why.
        #[source]
        source: KernelError,
    },
    /// No candidate on the stack passed the checks.
    #[error("no struct linux_binprm on its kernel stack ({candidates} pointers checked)")]
    NotFound {
        /// Direct-map pointers looked at.
        candidates: usize,
        /// The candidate that passed the most checks, and why it failed.
        #[source]
        closest: Option<Box<ExecError>>,
    },
    /// A field of a candidate could not be read.
    #[error("binprm {at:#x}: {field}")]
    Field {
        /// The candidate.
        at: u64,
        /// The field.
        field: &'static str,
        /// Why.
        #[source]
        source: KernelError,
    },
    /// `bprm->mm` is another mm (the new one is not installed yet).
    #[error("binprm {at:#x}: mm {mm:#x} is not the task's")]
    OtherMm {
        /// The candidate.
        at: u64,
        /// Its `mm`.
        mm: u64,
    },
    /// `bprm->vma` is none of the task's areas.
    #[error("binprm {at:#x}: vma {vma:#x} is not an area of the task")]
    NotItsVma {
        /// The candidate.
        at: u64,
        /// Its `vma`.
        vma: u64,
    },
    /// The strings do not start inside the stack area.
    #[error("binprm {at:#x}: strings at {p:#x} are outside its stack area {start:#x}-{end:#x}")]
    Outside {
        /// The candidate.
        at: u64,
        /// Where the strings start.
        p: u64,
        /// The area.
        start: u64,
        /// Its end.
        end: u64,
    },
    /// `bprm->file` is NULL or not a kernel pointer.
    #[error("binprm {at:#x}: bad file pointer {file:#x}")]
    BadFile {
        /// The candidate.
        at: u64,
        /// Its `file`.
        file: u64,
    },
    /// `bprm->file` is not the mm's `exe_file`.
    #[error("binprm {at:#x}: file {file:#x} is not the executable {exe:#x}")]
    NotExe {
        /// The candidate.
        at: u64,
        /// Its `file`.
        file: u64,
        /// `mm->exe_file`.
        exe: u64,
    },
    /// `argc`/`envc` out of range or more strings than bytes.
    #[error("binprm {at:#x}: argc {argc} and envc {envc} do not fit {bytes} bytes of strings")]
    Counts {
        /// The candidate.
        at: u64,
        #[allow(missing_docs)]
        argc: u64,
        #[allow(missing_docs)]
        envc: u64,
        /// Bytes from the strings' start to the end of the area.
        bytes: u64,
    },
    /// The string area could not be read through the mm's page tables.
    #[error("strings at {at:#x}: only {got} of {want} bytes readable")]
    Unreadable {
        /// Start of the strings.
        at: u64,
        /// Bytes read.
        got: usize,
        /// Bytes wanted.
        want: u64,
    },
    /// A string is not NUL-terminated within its limit.
    #[error("string {index} at {at:#x} is not terminated")]
    Unterminated {
        /// Its position (argv, then envp, then the filename).
        index: u64,
        /// Its address.
        at: u64,
    },
    /// The string after the environment is not `bprm->filename`.
    #[error("binprm {at:#x}: the string after the environment is not the filename {filename:?}")]
    Filename {
        /// The candidate.
        at: u64,
        /// `bprm->filename`.
        filename: String,
    },
    /// The executable's path could not be resolved.
    #[error("executable path")]
    Path(#[source] MmError),
}

impl ExecError {
    /// How far a candidate got through the checks (for choosing which failure to report).
    fn depth(&self) -> u8 {
        match self {
            ExecError::NotItsVma { .. } => 1,
            ExecError::BadFile { .. } | ExecError::NotExe { .. } => 3,
            ExecError::Counts { .. } => 4,
            ExecError::Outside { .. }
            | ExecError::Unreadable { .. }
            | ExecError::Unterminated { .. } => 5,
            ExecError::Filename { .. } | ExecError::Path(_) => 6,
            _ => 0,
        }
    }
}

/// What an interrupted exec needs to be done again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecArgs {
    /// The `linux_binprm`.
    pub binprm: u64,
    /// `bprm->file` (the executable; the interpreter of a `#!` script).
    pub file: u64,
    /// Its path.
    pub path: String,
    /// `argv`, without the NULs.
    pub argv: Vec<Vec<u8>>,
    /// `envp`.
    pub envp: Vec<Vec<u8>>,
    /// `bprm->filename` (the name the program was started by).
    pub filename: Vec<u8>,
}

/// True when the task's saved frame says it is inside `execve`/`execveat` and
/// `start_thread` has not yet put the new program's entry and stack (`mm->start_stack`)
/// in it: it may be past the point of no return. (`ELF_PLAT_INIT`, just before
/// `start_thread`, clears `cx`, so a frame may be no longer intact and still not loaded.)
pub fn in_exec(t: &Task, mm: &MmInfo) -> bool {
    t.regs.is_some_and(|r| {
        let loaded = !exec_frame_intact(&r) && mm.start_stack != 0 && r.sp == mm.start_stack;
        matches!(classify_syscall(&r), SyscallState::InProgress { nr } if EXEC_SYSCALLS.contains(&nr))
            && !loaded
    })
}

/// True when a task [`in_exec`] can simply run its exec again: its frame is the one
/// `syscall` made and its mm is still a loaded program's (`start_code` set), so the exec
/// has not replaced anything yet.
pub fn can_restart(t: &Task, mm: &MmInfo) -> bool {
    t.regs.is_some_and(|r| exec_frame_intact(&r)) && mm.start_code != 0
}

/// Finds the `linux_binprm` of a task caught in exec with its new mm `mm` installed, and
/// reads what the exec needs. Every read is bounded and checked.
pub fn find_exec(k: &Kernel<'_>, t: &Task, mm: &MmInfo) -> Result<ExecArgs, ExecError> {
    if t.stack == 0 {
        return Err(ExecError::NoStack);
    }
    let size = k.layout().thread_size.clamp(8, MAX_STACK);
    let mut stack = vec![0u8; usize::try_from(size).unwrap_or(0)];
    k.read_bytes(t.stack, &mut stack)
        .map_err(|source| ExecError::Stack {
            stack: t.stack,
            source,
        })?;
    let mut seen = HashSet::new();
    let mut closest: Option<ExecError> = None;
    for w in stack.chunks_exact(8) {
        let v = u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or([0; 8]));
        if v & 7 != 0 || !k.is_direct_map(v) || v == t.addr || v == mm.addr || !seen.insert(v) {
            continue;
        }
        match check(k, v, mm) {
            Ok(a) => return Ok(a),
            Err(e) => {
                if closest.as_ref().is_none_or(|c| e.depth() > c.depth()) {
                    closest = Some(e);
                }
            }
        }
    }
    Err(ExecError::NotFound {
        candidates: seen.len(),
        closest: closest.filter(|c| c.depth() > 0).map(Box::new),
    })
}

/// Checks the candidate `linux_binprm` at `at` against `mm` and reads its strings.
fn check(k: &Kernel<'_>, at: u64, mm: &MmInfo) -> Result<ExecArgs, ExecError> {
    let field = |field: &'static str| {
        k.read_field("linux_binprm", field, at)
            .map_err(|source| ExecError::Field { at, field, source })
    };
    // exec_mmap installed it and begin_new_exec cleared bprm->mm.
    let bmm = field("mm")?;
    if bmm != 0 && bmm != mm.addr {
        return Err(ExecError::OtherMm { at, mm: bmm });
    }
    let vma_addr = field("vma")?;
    let vma = mm
        .vmas
        .iter()
        .find(|v| v.addr == vma_addr && vma_addr != 0)
        .ok_or(ExecError::NotItsVma { at, vma: vma_addr })?;
    // setup_arg_pages moves the area and records the strings' start in mm->arg_start;
    // before it, they start at bprm->p. (create_elf_tables later moves bprm->p below them.)
    let p = if mm.arg_start != 0 {
        mm.arg_start
    } else {
        field("p")?
    };
    let file = field("file")?;
    if !is_kernel_addr(file) || file & 7 != 0 {
        return Err(ExecError::BadFile { at, file });
    }
    if mm.exe_file != 0 && file != mm.exe_file {
        return Err(ExecError::NotExe {
            at,
            file,
            exe: mm.exe_file,
        });
    }
    let argc = field("argc")?;
    let envc = field("envc")?;
    // Each string takes at least its NUL; the filename comes after the environment.
    let strings = argc.saturating_add(envc).saturating_add(1);
    if argc > MAX_ARG_STRINGS || envc > MAX_ARG_STRINGS || strings > MAX_STRINGS {
        return Err(ExecError::Counts {
            at,
            argc,
            envc,
            bytes: MAX_STRINGS,
        });
    }
    let fname_ptr = field("filename")?;
    let filename = k
        .read_cstr(fname_ptr, MAX_FILENAME)
        .map_err(|source| ExecError::Field {
            at,
            field: "*filename",
            source,
        })?;
    let mut list = match strings_at(k, mm, at, vma, p, strings) {
        Ok(list) => list,
        Err(moved) => {
            let (start, top) = read_top(k, mm.pgd_phys, vma.start, vma.end);
            unmoved_strings(&top, start, p, strings).ok_or(moved)?
        }
    };
    let last = list.pop().unwrap_or_default();
    if String::from_utf8_lossy(&last) != filename {
        return Err(ExecError::Filename { at, filename });
    }
    let envp = list.split_off(usize::try_from(argc).unwrap_or(usize::MAX).min(list.len()));
    let path = file_path(k, file).map_err(ExecError::Path)?;
    Ok(ExecArgs {
        binprm: at,
        file,
        path,
        argv: list,
        envp,
        filename: last,
    })
}

/// The `count` strings at `p`, where `setup_arg_pages` has put them (or `bprm->p` before it).
fn strings_at(
    k: &Kernel<'_>,
    mm: &MmInfo,
    at: u64,
    vma: &crate::mm::Vma,
    p: u64,
    count: u64,
) -> Result<Vec<Vec<u8>>, ExecError> {
    if p < vma.start || p >= vma.end {
        return Err(ExecError::Outside {
            at,
            p,
            start: vma.start,
            end: vma.end,
        });
    }
    let bytes = vma.end - p;
    if count > bytes {
        return Err(ExecError::Counts {
            at,
            argc: count,
            envc: 0,
            bytes,
        });
    }
    let want = bytes.min(MAX_STRINGS);
    let area = k.read_user(mm.pgd_phys, p, usize::try_from(want).unwrap_or(0));
    split_strings(&area, p, count, want)
}

/// The readable pages at the top of the area `start..end` (at most [`MAX_STRINGS`] and
/// a page), read downwards from `end` until one is not mapped: where they start, and them.
fn read_top(k: &Kernel<'_>, pgd_phys: u64, start: u64, end: u64) -> (u64, Vec<u8>) {
    const PAGE: u64 = 4096;
    let lowest = end.saturating_sub(MAX_STRINGS + PAGE).max(start);
    let mut pages: Vec<Vec<u8>> = Vec::new();
    let mut at = end & !(PAGE - 1);
    while at >= lowest + PAGE {
        let page = k.read_user(pgd_phys, at - PAGE, 4096);
        if page.len() != 4096 {
            break;
        }
        pages.push(page);
        at -= PAGE;
    }
    pages.reverse();
    (at, pages.concat())
}

/// The `count` strings of an area not yet moved by `shift_arg_pages`: `top` is its
/// highest bytes, read from `start` up to the area's end. They end 8 bytes below the end
/// and start at an address equal to the shifted `p` modulo the page size; the one start
/// from which exactly `count` strings fill that space is taken.
fn unmoved_strings(top: &[u8], start: u64, p: u64, count: u64) -> Option<Vec<Vec<u8>>> {
    const PAGE: u64 = 4096;
    let end = start.checked_add(top.len() as u64)?;
    let last = end.checked_sub(8)?;
    if top.len() < 8 || top[top.len() - 8..].iter().any(|&b| b != 0) {
        return None;
    }
    // The highest start below `last` with p's page offset, then one page lower each time.
    let mut from = (last & !(PAGE - 1)) | (p & (PAGE - 1));
    if from >= last {
        from = from.checked_sub(PAGE)?;
    }
    while from >= start {
        let off = usize::try_from(from - start).ok()?;
        let len = last - from;
        let area = &top[off..top.len() - 8];
        if let Ok(list) = split_strings(area, from, count, len) {
            let used: u64 = list.iter().map(|s| s.len() as u64 + 1).sum();
            if used == len {
                return Some(list);
            }
        }
        from = from.checked_sub(PAGE)?;
    }
    None
}

/// The first `count` NUL-terminated strings of `area` (read from `at`, `want` bytes
/// asked for), each at most [`MAX_ARG_STRLEN`] long.
fn split_strings(area: &[u8], at: u64, count: u64, want: u64) -> Result<Vec<Vec<u8>>, ExecError> {
    let mut out = Vec::new();
    let mut rest = area;
    for index in 0..count {
        let here = at + (area.len() - rest.len()) as u64;
        let limit = rest.len().min(MAX_ARG_STRLEN);
        let Some(n) = rest[..limit].iter().position(|&b| b == 0) else {
            return Err(if (area.len() as u64) < want && limit < MAX_ARG_STRLEN {
                ExecError::Unreadable {
                    at,
                    got: area.len(),
                    want,
                }
            } else {
                ExecError::Unterminated { index, at: here }
            });
        };
        out.push(rest[..n].to_vec());
        rest = &rest[n + 1..];
    }
    Ok(out)
}
