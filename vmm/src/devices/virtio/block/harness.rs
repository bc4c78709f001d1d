//! Queues laid out by hand in a guest memory, for the unit tests and the `block_request`
//! and `net_tx` fuzz targets (which decode their input with [`FuzzQueue::decode`]): a descriptor table, an available ring and a used ring at fixed addresses,
//! written raw, so that a test can build any chain a driver could, broken ones included.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Queue size of the harness's queue.
pub const SIZE: u16 = 16;
/// The descriptor table.
pub const DESC: u64 = 0x0;
/// The available ring.
pub const AVAIL: u64 = 0x1000;
/// The used ring.
pub const USED: u64 = 0x2000;
/// Where test buffers start.
pub const DATA: u64 = 0x1_0000;
/// Guest memory size of [`memory`].
pub const MEM_SIZE: usize = 0x4_0000;

/// `VRING_DESC_F_NEXT`.
pub const NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE` (device-writable).
pub const WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`.
pub const INDIRECT: u16 = 4;

/// One raw descriptor.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// `NEXT`, `WRITE`, `INDIRECT`.
    pub flags: u16,
    /// Next descriptor's index (with `NEXT`).
    pub next: u16,
}

/// A guest memory of [`MEM_SIZE`] bytes at address 0.
pub fn memory() -> Option<GuestMemoryMmap> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()
}

/// Writes `descs` as the descriptor table, makes `heads` available, and returns a ready
/// queue over them (with the event index if `event_idx`). `None` if memory refuses.
pub fn queue(
    mem: &GuestMemoryMmap,
    descs: &[Desc],
    heads: &[u16],
    event_idx: bool,
) -> Option<Queue> {
    for (i, d) in descs.iter().take(usize::from(SIZE)).enumerate() {
        let at = DESC + 16 * u64::try_from(i).ok()?;
        mem.write_obj(d.addr.to_le(), GuestAddress(at)).ok()?;
        mem.write_obj(d.len.to_le(), GuestAddress(at + 8)).ok()?;
        mem.write_obj(d.flags.to_le(), GuestAddress(at + 12)).ok()?;
        mem.write_obj(d.next.to_le(), GuestAddress(at + 14)).ok()?;
    }
    let heads = &heads[..heads.len().min(usize::from(SIZE))];
    for (i, h) in heads.iter().enumerate() {
        let at = AVAIL + 4 + 2 * u64::try_from(i).ok()?;
        mem.write_obj(h.to_le(), GuestAddress(at)).ok()?;
    }
    mem.write_obj(0u16, GuestAddress(AVAIL)).ok()?;
    let idx = u16::try_from(heads.len()).ok()?;
    mem.write_obj(idx.to_le(), GuestAddress(AVAIL + 2)).ok()?;
    let mut q = Queue::new(SIZE).ok()?;
    q.try_set_desc_table_address(GuestAddress(DESC)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(AVAIL)).ok()?;
    q.try_set_used_ring_address(GuestAddress(USED)).ok()?;
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// The used ring's index and its `i`-th element (id, len).
pub fn used(mem: &GuestMemoryMmap, i: u16) -> Option<(u16, u32, u32)> {
    let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).ok()?;
    let at = USED + 4 + 8 * u64::from(i % SIZE);
    let id: u32 = mem.read_obj(GuestAddress(at)).ok()?;
    let len: u32 = mem.read_obj(GuestAddress(at + 4)).ok()?;
    Some((u16::from_le(idx), u32::from_le(id), u32::from_le(len)))
}

/// A request header (type, sector) at `addr`.
pub fn write_header(mem: &GuestMemoryMmap, addr: u64, kind: u32, sector: u64) -> Option<()> {
    mem.write_obj(kind.to_le(), GuestAddress(addr)).ok()?;
    mem.write_obj(0u32, GuestAddress(addr + 4)).ok()?;
    mem.write_obj(sector.to_le(), GuestAddress(addr + 8)).ok()
}

/// A queue a fuzz target built from its input bytes (see [`FuzzQueue::decode`]).
pub struct FuzzQueue {
    /// Byte 0 of the input, for the target's own switches; bit 1 is the event index.
    pub flags: u8,
    /// The guest memory, the buffers written at [`DATA`].
    pub mem: GuestMemoryMmap,
    /// The queue, ready.
    pub queue: Queue,
    /// How many heads were made available.
    pub heads: usize,
}

impl FuzzQueue {
    /// Decodes a fuzz input: byte 0 flags (bit 1 event index), byte 1 the number of
    /// available heads (at most [`SIZE`]), then that many head indices (one byte each),
    /// then up to [`SIZE`] descriptors of 16 bytes (address, length, flags, next;
    /// little-endian: an address or length with its top bit clear is folded into guest
    /// memory's size, so most land near it, and one with the top bit set is taken as it
    /// is), then the bytes of the guest's buffer area. `None` when too short.
    pub fn decode(data: &[u8]) -> Option<FuzzQueue> {
        let (&flags, rest) = data.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n).min(usize::from(SIZE)).min(rest.len());
        let (heads, mut rest) = rest.split_at(n);
        let heads: Vec<u16> = heads.iter().map(|&h| u16::from(h) % SIZE).collect();
        let fold =
            |raw: u64, top: u64, modulus: u64| if raw & top != 0 { raw } else { raw % modulus };
        let mem_size = u64::try_from(MEM_SIZE).ok()?;
        let mut descs = Vec::new();
        while descs.len() < usize::from(SIZE) {
            let Some((d, r)) = rest.split_first_chunk::<16>() else {
                break;
            };
            rest = r;
            let addr = u64::from_le_bytes(d[0..8].try_into().ok()?);
            let len = u32::from_le_bytes(d[8..12].try_into().ok()?);
            descs.push(Desc {
                addr: fold(addr, 1 << 63, mem_size + 0x1000),
                len: u32::try_from(fold(u64::from(len), 1 << 31, 0x4000)).unwrap_or(u32::MAX),
                flags: u16::from_le_bytes([d[12], d[13]]),
                next: u16::from_le_bytes([d[14], d[15]]),
            });
        }
        let mem = memory()?;
        let room = MEM_SIZE - usize::try_from(DATA).ok()?;
        mem.write_slice(&rest[..rest.len().min(room)], GuestAddress(DATA))
            .ok()?;
        let queue = queue(&mem, &descs, &heads, flags & 2 != 0)?;
        Some(FuzzQueue {
            flags,
            mem,
            queue,
            heads: heads.len(),
        })
    }

    /// Checks what serving the queue left: the used index is written last, after each
    /// chain, and never beyond the chains made available. (The used elements are not
    /// checked: a driver may point a later chain's buffers at the used ring itself.)
    pub fn check_used(&self) {
        let (idx, _, _) = used(&self.mem, 0).unwrap_or((0, 0, 0));
        assert!(
            usize::from(idx) <= self.heads,
            "{idx} used of {}",
            self.heads
        );
    }
}
