//! How far a read or write caught in progress had got. The system call consumes a `struct
//! iov_iter` that lives on its kernel stack (`new_sync_write`'s, `sock_write_iter`'s copy in
//! its `msghdr`, `__sys_sendto`'s ...): for a user buffer (`ITER_UBUF`) `iov_offset` is what
//! was moved and `count` what was left; for a vector (`ITER_IOVEC`) `iov` points at the
//! current segment and `count` is what was left of the whole. The stack is scanned for an
//! iterator of the call's shape (its type, direction, buffer or segments, and
//! `moved + left == length`); what it moved is in the pipe, socket or file already (or in
//! the program's buffer, for a read), so the call returns that count, as the kernel would
//! have on a signal, instead of `EINTR`.

use crate::kernel::{is_kernel_addr, Kernel};
use crate::regs::{classify_syscall, SyscallState};
use crate::tasks::{PtRegs, Task};

/// `MAX_RW_COUNT` (`INT_MAX & PAGE_MASK`): the kernel clamps one transfer to it.
const MAX_RW_COUNT: u64 = 0x7fff_f000;
/// `UIO_MAXIOV`: most segments in one vector.
const UIO_MAXIOV: u64 = 1024;
/// `read`, `write`, `pread64`, `pwrite64`, `readv`, `writev`, `sendto`, `recvfrom`,
/// `sendmsg`, `recvmsg`, `preadv`, `pwritev`, `preadv2`, `pwritev2`.
pub const TRANSFER_SYSCALLS: [u64; 14] = [0, 1, 17, 18, 19, 20, 44, 45, 46, 47, 295, 296, 327, 328];

/// What a read or write was moving.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// One user buffer (`ITER_UBUF` for read/write, a one-segment `ITER_IOVEC` for
    /// sendto/recvfrom).
    Buf { buf: u64, len: u64, ubuf: bool },
    /// The user's segments (`ITER_IOVEC`).
    Vec(Vec<(u64, u64)>),
}

impl Shape {
    fn total(&self) -> u64 {
        match self {
            Shape::Buf { len, .. } => *len,
            Shape::Vec(segs) => segs.iter().map(|s| s.1).sum(),
        }
    }
}

/// A transfer found on a stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes moved before the crash.
    pub moved: u64,
    /// Bytes asked for.
    pub len: u64,
    /// It was a write (data from the program).
    pub write: bool,
    /// The descriptor (the call's first argument).
    pub fd: u64,
    /// It moves the file position (read, write, readv, writev: the kernel would have
    /// advanced it by `moved` on its way out; the p* calls and sockets do not).
    pub moves_position: bool,
}

/// The shape of system call `nr` with arguments `regs`, and whether it writes; user
/// vectors are read through the page tables at `pgd_phys`.
fn shape(k: &Kernel<'_>, regs: &PtRegs, pgd_phys: u64) -> Option<(Shape, bool)> {
    let nr = regs.orig_ax;
    let write = matches!(nr, 1 | 18 | 20 | 44 | 46 | 296 | 328);
    let buf = |ubuf| Shape::Buf {
        buf: regs.si,
        len: regs.dx.min(MAX_RW_COUNT),
        ubuf,
    };
    let shape = match nr {
        0 | 1 | 17 | 18 => buf(true),
        44 | 45 => buf(false),
        19 | 20 | 295 | 296 | 327 | 328 => Shape::Vec(user_iovecs(k, pgd_phys, regs.si, regs.dx)?),
        46 | 47 => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
            let h = k.read_user(pgd_phys, regs.si, 32);
            let iov = u64_at(&h, 16)?;
            let n = u64_at(&h, 24)?;
            Shape::Vec(user_iovecs(k, pgd_phys, iov, n)?)
        }
        _ => return None,
    };
    (shape.total() > 0 && shape.total() <= MAX_RW_COUNT).then_some((shape, write))
}

fn user_iovecs(k: &Kernel<'_>, pgd_phys: u64, at: u64, n: u64) -> Option<Vec<(u64, u64)>> {
    if n == 0 || n > UIO_MAXIOV {
        return None;
    }
    let bytes = usize::try_from(n * 16).ok()?;
    let raw = k.read_user(pgd_phys, at, bytes);
    if raw.len() != bytes {
        return None;
    }
    raw.chunks_exact(16)
        .map(|c| Some((u64_at(c, 0)?, u64_at(c, 8)?)))
        .collect()
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at.checked_add(8)?)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map(u64::from_le_bytes)
}

/// Offsets in `struct iov_iter` and the two iterator types looked for.
struct IterLayout {
    size: usize,
    ty: usize,
    source: usize,
    user: usize,
    offset: usize,
    count: usize,
    ptr: usize,
    nr_segs: usize,
    iovec: u8,
    ubuf: u8,
}

impl IterLayout {
    fn read(k: &Kernel<'_>) -> Option<IterLayout> {
        let off = |f: &str| {
            k.offset_of("iov_iter", f)
                .ok()
                .and_then(|o| usize::try_from(o).ok())
        };
        let id = k.btf().struct_id("iov_iter")?;
        let size = usize::try_from(k.btf().size_of(id).ok()?).ok()?;
        let val = |e: &str| k.btf().enumerator(e).and_then(|v| u8::try_from(v).ok());
        Some(IterLayout {
            size,
            ty: off("iter_type")?,
            source: off("data_source")?,
            user: off("user_backed")?,
            offset: off("iov_offset")?,
            count: off("count")?,
            ptr: off("iov")?,
            nr_segs: off("nr_segs")?,
            iovec: val("ITER_IOVEC")?,
            ubuf: val("ITER_UBUF")?,
        })
    }
}

/// What the read or write `task` was in had moved, when its saved frame shows one in
/// progress and an iterator of its shape is on its kernel stack (the live part, from
/// `thread.sp`, for a task that was switched out). `pgd_phys`: its page tables. None when
/// it was not in one, or nothing matching was found (the caller keeps its rule).
pub fn transfer(k: &Kernel<'_>, task: &Task, pgd_phys: u64) -> Option<Transfer> {
    let regs = task.regs?;
    match classify_syscall(&regs) {
        SyscallState::InProgress { nr } if TRANSFER_SYSCALLS.contains(&nr) => {}
        _ => return None,
    }
    let (shape, write) = shape(k, &regs, pgd_phys)?;
    let l = IterLayout::read(k)?;
    let top = task.regs_addr;
    let base = task.stack;
    if !is_kernel_addr(base) || top <= base || top - base > k.layout().thread_size {
        return None;
    }
    let sp = k
        .read_field("task_struct", "thread.sp", task.addr)
        .ok()
        .filter(|&sp| !task.on_cpu && sp > base && sp < top)
        .unwrap_or(base)
        & !7;
    let mut stack = vec![0u8; usize::try_from(top - sp).ok()?];
    k.read_bytes(sp, &mut stack).ok()?;
    let total = shape.total();
    let source = u8::from(write);
    let mut best: Option<u64> = None;
    for p in (0..stack.len().saturating_sub(l.size)).step_by(8) {
        let s = &stack[p..p + l.size];
        let (ty, src, user) = (s[l.ty], s[l.source], s[l.user]);
        if src != source || user != 1 {
            continue;
        }
        let (Some(off), Some(count), Some(ptr), Some(nr)) = (
            u64_at(s, l.offset),
            u64_at(s, l.count),
            u64_at(s, l.ptr),
            u64_at(s, l.nr_segs),
        ) else {
            continue;
        };
        if count == 0 || count > total {
            continue;
        }
        let moved = match &shape {
            Shape::Buf {
                buf,
                len,
                ubuf: true,
            } if ty == l.ubuf && ptr == *buf && off.checked_add(count) == Some(*len) => off,
            Shape::Buf {
                buf,
                len,
                ubuf: false,
            } if ty == l.iovec => match vec_moved(k, &[(*buf, *len)], off, count, ptr, nr) {
                Some(m) => m,
                None => continue,
            },
            Shape::Vec(segs) if ty == l.iovec => match vec_moved(k, segs, off, count, ptr, nr) {
                Some(m) => m,
                None => continue,
            },
            _ => continue,
        };
        best = Some(best.map_or(moved, |b| b.max(moved)));
    }
    best.map(|moved| Transfer {
        moved,
        len: total,
        write,
        fd: regs.di,
        moves_position: matches!(regs.orig_ax, 0 | 1 | 19 | 20),
    })
}

/// What an `ITER_IOVEC` over `segs` at (`off` in the current segment, `count` left,
/// current segment `ptr`, `nr` segments left) had moved, if it is one over them.
fn vec_moved(
    k: &Kernel<'_>,
    segs: &[(u64, u64)],
    off: u64,
    count: u64,
    ptr: u64,
    nr: u64,
) -> Option<u64> {
    let nr = usize::try_from(nr).ok()?;
    let cur = segs.len().checked_sub(nr)?;
    if nr == 0 || !is_kernel_addr(ptr) {
        return None;
    }
    let (base, len) = (k.read_u64(ptr).ok()?, k.read_u64(ptr.wrapping_add(8)).ok()?);
    if (base, len) != segs[cur] || off >= len {
        return None;
    }
    let moved = segs[..cur].iter().map(|s| s.1).sum::<u64>() + off;
    (moved.checked_add(count)? == segs.iter().map(|s| s.1).sum::<u64>()).then_some(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::build::Builder;
    use crate::btf::Btf;
    use crate::kernel::testmem::{dm, Mem};
    use crate::list::tests::MAP;
    use crate::symbols::SymbolTable;
    use crate::tasks::{USER_CS, USER_DS};

    const TASK: u64 = 0x10_0000;
    const STACK: u64 = 0x11_0000;
    const TOP: u64 = STACK + 0x4000 - 168;
    const ENOSYS: u64 = 38u64.wrapping_neg();

    fn btf() -> Btf {
        let mut b = Builder::new();
        let ulong = b.int("long unsigned int", 8);
        let u8t = b.int("unsigned char", 1);
        b.enumeration(
            "iter_type",
            &[("ITER_IOVEC", 0), ("ITER_KVEC", 1), ("ITER_UBUF", 6)],
        );
        b.strukt(
            "iov_iter",
            40,
            &[
                ("iter_type", u8t, 0),
                ("nofault", u8t, 8),
                ("data_source", u8t, 16),
                ("user_backed", u8t, 24),
                ("iov_offset", ulong, 64),
                ("count", ulong, 128),
                ("iov", ulong, 192),
                ("nr_segs", ulong, 256),
            ],
        );
        let th = b.strukt("thread_struct", 8, &[("sp", ulong, 0)]);
        b.strukt("task_struct", 64, &[("thread", th, 0)]);
        Btf::parse(&b.finish()).expect("btf")
    }

    fn task(nr: u64, si: u64, dx: u64) -> Task {
        let mut t = Task::for_tests(dm(TASK), 100);
        t.stack = dm(STACK);
        t.regs_addr = dm(TOP);
        t.regs = Some(PtRegs {
            orig_ax: nr,
            ax: ENOSYS,
            si,
            dx,
            cs: USER_CS,
            ss: USER_DS,
            ..PtRegs::default()
        });
        t
    }

    #[allow(clippy::too_many_arguments)]
    fn put_iter(m: &mut Mem, at: u64, ty: u8, src: u8, off: u64, count: u64, ptr: u64, nr: u64) {
        m.put(at, &[ty, 0, src, 1]);
        m.put_u64(at + 8, off);
        m.put_u64(at + 16, count);
        m.put_u64(at + 24, ptr);
        m.put_u64(at + 32, nr);
    }

    #[test]
    fn a_write_caught_half_way_moved_what_its_iterator_says() {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let mut m = Mem::new(0x20_0000);
        m.put_u64(TASK, dm(STACK + 0x3000));
        // The write of 1 MiB at 0x7000_0000: a stale copy (nothing moved) and the live
        // one (64 KiB moved), and one of another buffer.
        put_iter(&mut m, STACK + 0x3100, 6, 1, 0, 1 << 20, 0x7000_0000, 0);
        put_iter(
            &mut m,
            STACK + 0x3200,
            6,
            1,
            65536,
            (1 << 20) - 65536,
            0x7000_0000,
            0,
        );
        put_iter(&mut m, STACK + 0x3300, 6, 1, 4096, 4096, 0x7100_0000, 0);
        // Below thread.sp: dead frames, not looked at.
        put_iter(
            &mut m,
            STACK + 0x2000,
            6,
            1,
            99999,
            (1 << 20) - 99999,
            0x7000_0000,
            0,
        );
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let t = task(1, 0x7000_0000, 1 << 20);
        let got = transfer(&k, &t, 0).expect("found");
        assert_eq!(
            got,
            Transfer {
                moved: 65536,
                len: 1 << 20,
                write: true,
                fd: 0,
                moves_position: true,
            }
        );
        // The same frames for a read of that buffer: the direction does not match.
        assert_eq!(transfer(&k, &task(0, 0x7000_0000, 1 << 20), 0), None);
        // Another length: no iterator is consistent with it.
        assert_eq!(transfer(&k, &task(1, 0x7000_0000, 1 << 19), 0), None);
        // Not a transfer, or not in progress.
        assert_eq!(transfer(&k, &task(7, 0x7000_0000, 1 << 20), 0), None);
        let mut done = task(1, 0x7000_0000, 1 << 20);
        if let Some(r) = done.regs.as_mut() {
            r.ax = 5;
        }
        assert_eq!(transfer(&k, &done, 0), None);
    }

    #[test]
    fn a_sendto_caught_half_way_is_a_one_segment_vector() {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let mut m = Mem::new(0x20_0000);
        m.put_u64(TASK, dm(STACK + 0x3000));
        // The kernel's struct iovec {buf, len} on the stack, and the iterator over it.
        m.put_u64(STACK + 0x3800, 0x7000_0000);
        m.put_u64(STACK + 0x3808, 300_000);
        put_iter(
            &mut m,
            STACK + 0x3400,
            0,
            1,
            1000,
            299_000,
            dm(STACK + 0x3800),
            1,
        );
        // One whose segment is another buffer.
        m.put_u64(STACK + 0x3900, 0x7100_0000);
        m.put_u64(STACK + 0x3908, 300_000);
        put_iter(
            &mut m,
            STACK + 0x3500,
            0,
            1,
            5000,
            295_000,
            dm(STACK + 0x3900),
            1,
        );
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let got = transfer(&k, &task(44, 0x7000_0000, 300_000), 0).expect("found");
        assert_eq!((got.moved, got.len, got.write), (1000, 300_000, true));
        // A wild segment pointer is skipped, not followed.
        put_iter(&mut m, STACK + 0x3400, 0, 1, 1000, 299_000, 0x1234, 1);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(transfer(&k, &task(44, 0x7000_0000, 300_000), 0), None);
    }

    #[test]
    fn a_bad_stack_gives_nothing() {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let m = Mem::new(0x20_0000);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        let mut t = task(1, 0x7000_0000, 1 << 20);
        t.stack = 0x1000;
        assert_eq!(transfer(&k, &t, 0), None);
        let mut t = task(1, 0x7000_0000, 1 << 20);
        t.regs_addr = t.stack + (1 << 30);
        assert_eq!(transfer(&k, &t, 0), None);
    }
}
