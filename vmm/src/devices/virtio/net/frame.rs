//! Frames between the queues and the host backend, through `virtio-queue`'s descriptor
//! chains, `Reader` and `Writer` (every guest address checked by vm-memory, a looping
//! chain ended at the queue size by the chain iterator):
//! - tx: the chain's device-readable bytes are one `virtio_net_hdr_v1` (12 bytes,
//!   VIRTIO_F_VERSION_1) and one Ethernet frame; at most [`MAX_FRAME`] bytes of frame,
//!   copied into a host buffer and written to the backend as they are. A chain too big,
//!   too short, outside guest memory or asking for an offload that was not offered is
//!   dropped (and counted); the chain always goes back to the driver.
//! - rx: a frame read from the backend (header first) is copied into the next
//!   device-writable chain, with the header's flags cleared and `num_buffers` 1. When the
//!   driver posted no buffer, the frame waits in the host buffer and the backend is not
//!   read again until the driver adds buffers (rx backpressure: the tap's own queue
//!   fills, and the host kernel drops there).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::tap::Backend;

/// `sizeof(struct virtio_net_hdr_v1)`.
pub const HDR_LEN: usize = 12;
/// Largest frame (after the header) moved in either direction.
pub const MAX_FRAME: usize = 64 * 1024;
/// Size of each host buffer: header and the largest frame.
pub const BUF_LEN: usize = HDR_LEN + MAX_FRAME;
/// Most frames received in one go before the event loop looks at the other queues.
const RX_BATCH: usize = 256;

/// `VIRTIO_NET_HDR_GSO_NONE`.
const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const F_NEEDS_CSUM: u8 = 1;

/// Counters of the device (host side, for the logs and the tests).
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames sent to the host.
    pub tx_frames: AtomicU64,
    /// Guest frames dropped: malformed chain, too short, too big, or an offload asked for.
    pub tx_dropped: AtomicU64,
    /// Frames the backend refused (its queue full, link down).
    pub tx_errors: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Host frames dropped: too short, an offload, or larger than the guest's buffer.
    pub rx_dropped: AtomicU64,
    /// Guest rx buffers returned unused because they were malformed.
    pub rx_bad_buffers: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A queue the driver broke (its rings became unreadable, or its available index ran
/// ahead by more than the queue size).
#[derive(Debug, thiserror::Error)]
#[error("virtio-net {0} queue broken by the driver")]
pub struct QueueBroken(pub &'static str, #[source] pub virtio_queue::Error);

/// Why a tx chain was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxDrop {
    /// A buffer outside guest memory, or a chain that overflows.
    BadChain,
    /// Fewer bytes than a header and an Ethernet header.
    Short,
    /// More than [`MAX_FRAME`] bytes of frame.
    TooBig,
    /// A header asking for checksum or segmentation offload (none offered).
    Offload,
}

/// Shortest frame accepted: the header and an Ethernet header.
const MIN_LEN: usize = HDR_LEN + 14;

/// Copies the device-readable part of `chain` (header and frame) into `buf`; its length.
pub fn read_tx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, TxDrop> {
    let mut reader = Reader::new(mem, chain).map_err(|_| TxDrop::BadChain)?;
    let len = reader.available_bytes();
    if len < MIN_LEN {
        return Err(TxDrop::Short);
    }
    if len > BUF_LEN || len > buf.len() {
        return Err(TxDrop::TooBig);
    }
    reader
        .read_exact(&mut buf[..len])
        .map_err(|_| TxDrop::BadChain)?;
    if buf[0] & F_NEEDS_CSUM != 0 || buf[1] != GSO_NONE {
        return Err(TxDrop::Offload);
    }
    Ok(len)
}

/// Sends every available chain of the tx `queue` to `backend`; whether the driver must
/// be interrupted.
pub fn process_tx(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &dyn Backend,
    buf: &mut [u8],
    stats: &NetStats,
) -> Result<bool, QueueBroken> {
    let broken = |e| QueueBroken("tx", e);
    let mut used_any = false;
    loop {
        queue.disable_notification(mem).map_err(broken)?;
        let mut served = 0u32;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match read_tx_chain(mem, chain, buf) {
                Ok(len) => match backend.send(&buf[..len]) {
                    Ok(_) => bump(&stats.tx_frames),
                    Err(_) => bump(&stats.tx_errors),
                },
                Err(_) => bump(&stats.tx_dropped),
            }
            queue.add_used(mem, head, 0).map_err(broken)?;
            served += 1;
            used_any = true;
        }
        if !queue.enable_notification(mem).map_err(broken)? {
            break;
        }
        if served == 0 {
            // More is available, yet nothing could be taken: the available index is more
            // than a queue ahead. The next notification will try again.
            return Err(broken(virtio_queue::Error::InvalidAvailRingIndex));
        }
    }
    if !used_any {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(broken)
}

/// Why a received frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    /// The frame is shorter than a header and an Ethernet header.
    Short,
    /// The host handed a header with an offload (none negotiated).
    Offload,
}

/// Checks a frame from the backend and makes its header what the driver expects: no
/// flags (no checksum offered), `num_buffers` 1.
pub fn fix_rx_header(frame: &mut [u8]) -> Result<(), RxDrop> {
    if frame.len() < MIN_LEN {
        return Err(RxDrop::Short);
    }
    if frame[0] & F_NEEDS_CSUM != 0 || frame[1] != GSO_NONE {
        return Err(RxDrop::Offload);
    }
    frame[0] = 0;
    frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    Ok(())
}

/// What became of one rx chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxChain {
    /// The frame is in it; the used length.
    Filled(u32),
    /// The chain is too small for the frame (it can take another).
    TooSmall,
    /// The chain is unusable (outside guest memory, overflowing): give it back empty.
    Bad,
}

/// Copies `frame` into the device-writable part of `chain`.
pub fn write_rx_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> RxChain {
    let Ok(mut writer) = Writer::new(mem, chain) else {
        return RxChain::Bad;
    };
    let cap = writer.available_bytes();
    if cap < MIN_LEN {
        return RxChain::Bad;
    }
    if cap < frame.len() {
        return RxChain::TooSmall;
    }
    if writer.write_all(frame).is_err() {
        return RxChain::Bad;
    }
    // Frames are at most BUF_LEN bytes.
    RxChain::Filled(u32::try_from(frame.len()).unwrap_or(u32::MAX))
}

/// The rx side's host buffer: a frame read from the backend, waiting for a guest buffer.
pub struct RxState {
    buf: Vec<u8>,
    pending: Option<usize>,
}

impl Default for RxState {
    fn default() -> Self {
        RxState {
            buf: vec![0u8; BUF_LEN],
            pending: None,
        }
    }
}

impl RxState {
    /// Whether a frame waits for a guest buffer.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }
}

/// How [`process_rx`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxStop {
    /// The backend has nothing more (or the batch is done): keep watching it.
    Drained,
    /// The driver posted no buffer: stop reading the backend until it adds some (a
    /// notification on the rx queue).
    NoBuffers,
}

/// Delivers frames from `backend` into the rx `queue` until the backend is empty or the
/// driver's buffers run out; (whether the driver must be interrupted, why it stopped).
pub fn process_rx(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    backend: &dyn Backend,
    rx: &mut RxState,
    stats: &NetStats,
) -> Result<(bool, RxStop), QueueBroken> {
    let broken = |e| QueueBroken("rx", e);
    let mut used_any = false;
    let mut stop = RxStop::Drained;
    let mut frames = 0usize;
    while frames < RX_BATCH {
        let len = match rx.pending {
            Some(n) => n,
            None => match backend.recv(&mut rx.buf) {
                Ok(n) => {
                    let frame = &mut rx.buf[..n.min(BUF_LEN)];
                    if fix_rx_header(frame).is_err() {
                        bump(&stats.rx_dropped);
                        frames += 1;
                        continue;
                    }
                    rx.pending = Some(frame.len());
                    frame.len()
                }
                // Empty (WouldBlock), or failing: wait for the next readiness.
                Err(_) => break,
            },
        };
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // No buffer: ask the driver to notify when it adds one, and look once more
            // in case it just did.
            if queue.enable_notification(mem).map_err(broken)? {
                if queue.pop_descriptor_chain(mem).is_none() {
                    return Err(broken(virtio_queue::Error::InvalidAvailRingIndex));
                }
                // Put it back: the next round takes it.
                queue.go_to_previous_position();
                continue;
            }
            stop = RxStop::NoBuffers;
            break;
        };
        let head = chain.head_index();
        match write_rx_chain(mem, chain, &rx.buf[..len]) {
            RxChain::Filled(used) => {
                queue.add_used(mem, head, used).map_err(broken)?;
                bump(&stats.rx_frames);
                used_any = true;
                rx.pending = None;
                frames += 1;
            }
            RxChain::TooSmall => {
                // The frame cannot be delivered in any buffer of this size: drop it, and
                // keep the buffer for the next one.
                queue.go_to_previous_position();
                bump(&stats.rx_dropped);
                rx.pending = None;
                frames += 1;
            }
            RxChain::Bad => {
                queue.add_used(mem, head, 0).map_err(broken)?;
                bump(&stats.rx_bad_buffers);
                used_any = true;
            }
        }
    }
    if !used_any {
        return Ok((false, stop));
    }
    Ok((queue.needs_notification(mem).map_err(broken)?, stop))
}
