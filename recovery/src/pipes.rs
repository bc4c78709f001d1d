//! Pipes: the unread bytes of a dead kernel's `struct pipe_inode_info`, read through BTF
//! and bounded, as guest-physical runs the crash kernel's agent writes into a new pipe.
//!
//! A pipe's data is a ring of `struct pipe_buffer` (`bufs[ring_size]`, power of two),
//! slots `tail..head` in use (both free-running `unsigned int`s), each `len` bytes at
//! `offset` in `page`.

use crate::kernel::{is_kernel_addr, Kernel, KernelError};
use crate::pages::PageArray;

/// `PIPEFS_MAGIC`: the superblock of anonymous pipes.
pub const PIPEFS_MAGIC: u64 = 0x5049_5045;
/// `PIPE_BUF_FLAG_PACKET`: a buffer of an `O_DIRECT` (packet mode) pipe.
const PIPE_BUF_FLAG_PACKET: u64 = 0x08;
/// Most ring slots a pipe may have (`pipe_max_size` of 1 GiB in pages would be more; no
/// real pipe comes near).
const MAX_RING: u64 = 1 << 16;
/// Most bytes a `pipe_buffer` may hold (a compound page of 2 MiB).
const MAX_BUF_LEN: u64 = 2 << 20;

/// Why a pipe's content could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipeError {
    /// A field of the pipe could not be read.
    #[error("pipe {what}")]
    Read {
        /// Which field.
        what: &'static str,
        /// Why.
        #[source]
        source: KernelError,
    },
    /// `i_pipe` is not a kernel address.
    #[error("inode has no pipe ({0:#x})")]
    NoPipe(u64),
    /// The ring's numbers do not make sense.
    #[error("pipe ring: size {ring_size}, head {head}, tail {tail}, max_usage {max_usage}")]
    BadRing {
        /// `ring_size`.
        ring_size: u64,
        /// `head`.
        head: u64,
        /// `tail`.
        tail: u64,
        /// `max_usage`.
        max_usage: u64,
    },
    /// A buffer's page is not a `struct page`, or its bytes are out of the page.
    #[error("pipe buffer {slot}: page {page:#x}, offset {offset:#x}, len {len:#x}")]
    BadBuffer {
        /// The ring slot.
        slot: u64,
        /// `page`.
        page: u64,
        /// `offset`.
        offset: u64,
        /// `len`.
        len: u64,
    },
    /// A packet-mode (`O_DIRECT`) pipe: its message boundaries would be lost.
    #[error("packet-mode (O_DIRECT) pipe")]
    Packet,
    /// A notification pipe (`O_NOTIFICATION_PIPE`).
    #[error("notification pipe")]
    WatchQueue,
}

/// What a pipe holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipeContent {
    /// Its capacity in bytes (`max_usage` pages, what `F_GETPIPE_SZ` says).
    pub size: u64,
    /// The unread bytes, in order, as `(guest-physical address, length)`, merged where
    /// contiguous.
    pub data: Vec<(u64, u64)>,
}

impl PipeContent {
    /// Unread bytes in all.
    pub fn len(&self) -> u64 {
        self.data.iter().map(|d| d.1).sum()
    }

    /// True when nothing is unread.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Reads the pipe of the inode at `inode` (its `i_pipe`).
pub fn read_pipe(k: &Kernel<'_>, inode: u64) -> Result<PipeContent, PipeError> {
    let rd = |what: &'static str, r: Result<u64, KernelError>| {
        r.map_err(|source| PipeError::Read { what, source })
    };
    let pipe = rd("i_pipe", k.read_field("inode", "i_pipe", inode))?;
    if !is_kernel_addr(pipe) {
        return Err(PipeError::NoPipe(pipe));
    }
    let f = |field: &'static str| rd(field, k.read_field("pipe_inode_info", field, pipe));
    let head = f("head")? & 0xffff_ffff;
    let tail = f("tail")? & 0xffff_ffff;
    let ring_size = f("ring_size")? & 0xffff_ffff;
    let max_usage = f("max_usage")? & 0xffff_ffff;
    let bufs = f("bufs")?;
    // Absent before 5.8 and without CONFIG_WATCH_QUEUE: then it cannot be one.
    if k.read_field("pipe_inode_info", "watch_queue", pipe)
        .is_ok_and(|w| w != 0)
    {
        return Err(PipeError::WatchQueue);
    }
    let used = head.wrapping_sub(tail) & 0xffff_ffff;
    if ring_size == 0
        || !ring_size.is_power_of_two()
        || ring_size > MAX_RING
        || max_usage == 0
        || max_usage > ring_size
        || used > ring_size
        || (used > 0 && !is_kernel_addr(bufs))
    {
        return Err(PipeError::BadRing {
            ring_size,
            head,
            tail,
            max_usage,
        });
    }
    let buf_size = k
        .btf()
        .struct_id("pipe_buffer")
        .and_then(|id| k.btf().size_of(id).ok())
        .filter(|s| (24..=128).contains(s))
        .unwrap_or(40);
    let off = |field: &'static str| rd(field, k.offset_of("pipe_buffer", field));
    let (page_off, offset_off, len_off, flags_off) =
        (off("page")?, off("offset")?, off("len")?, off("flags")?);
    let pages = PageArray::new(k);
    let mut out = PipeContent {
        size: max_usage * 4096,
        data: Vec::new(),
    };
    for i in 0..used {
        let slot = (tail + i) & (ring_size - 1);
        let b = bufs.wrapping_add(slot * buf_size);
        let word = |o: u64, what| rd(what, k.read_u64(b.wrapping_add(o)));
        let page = word(page_off, "buffer page")?;
        let both = word(offset_off, "buffer offset")?;
        // `offset` and `len` are adjacent `unsigned int`s.
        let (offset, len) = if len_off == offset_off + 4 {
            (both & 0xffff_ffff, both >> 32)
        } else {
            (
                both & 0xffff_ffff,
                word(len_off, "buffer len")? & 0xffff_ffff,
            )
        };
        let flags = word(flags_off, "buffer flags")? & 0xffff_ffff;
        if flags & PIPE_BUF_FLAG_PACKET != 0 {
            return Err(PipeError::Packet);
        }
        let bad = || PipeError::BadBuffer {
            slot,
            page,
            offset,
            len,
        };
        if len == 0 {
            continue;
        }
        if len > MAX_BUF_LEN || offset.saturating_add(len) > MAX_BUF_LEN {
            return Err(bad());
        }
        let pfn = pages.pfn_of(page).ok_or_else(bad)?;
        let gpa = pfn
            .checked_mul(4096)
            .and_then(|p| p.checked_add(offset))
            .ok_or_else(bad)?;
        // The bytes must be in guest memory.
        let mut probe = [0u8; 1];
        if !k.mem().read_phys(gpa, &mut probe) || !k.mem().read_phys(gpa + len - 1, &mut probe) {
            return Err(bad());
        }
        match out.data.last_mut() {
            Some(last) if last.0 + last.1 == gpa => last.1 += len,
            _ => out.data.push((gpa, len)),
        }
    }
    // Spliced buffers may hold more than a page each: the new pipe must take it all.
    out.size = out.size.max(out.len().next_power_of_two());
    Ok(out)
}
