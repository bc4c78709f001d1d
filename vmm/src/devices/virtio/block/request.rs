//! virtio-blk requests: parsed from a descriptor chain with `virtio-queue`'s `Reader` and
//! `Writer` (framing-agnostic, as VIRTIO_F_VERSION_1 wants) and served against a [`Disk`].
//!
//! The `virtio-blk` crate of rust-vmm's vm-virtio is not published on crates.io, so its
//! `Request::parse` is not used; these are the same checks, on `virtio-queue` 0.18:
//! - every buffer lies inside guest memory (`Reader::new` / `Writer::new` map each
//!   descriptor, and refuse one that does not fit) and the chain is at most 4 GiB long;
//!   a looping chain ends after queue-size descriptors (the chain iterator's limit);
//! - device-readable descriptors come before device-writable ones (2.6.4.2);
//! - the 16-byte header is device-readable; the status byte is the last device-writable
//!   byte; data lengths are whole sectors, and `sector * 512 + length` lies inside the
//!   image;
//! - a read-only disk refuses OUT.
//!
//! A request that fails a check gets `VIRTIO_BLK_S_IOERR` (or `UNSUPP` for an unknown
//! type) when it has room for a status byte, and is returned to the driver with nothing
//! written when it has none. File I/O goes through a bounce buffer of fixed size, so no
//! request makes the VMM allocate.

use std::io::{Read, Write};
use std::ops::Deref;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::disk::{Disk, SECTOR_SIZE};

/// Size of the request header (`struct virtio_blk_outhdr`: type, reserved, sector).
pub const HEADER_SIZE: usize = 16;
/// Size of the bounce buffer between guest memory and the image file.
pub const BOUNCE_SIZE: usize = 128 * 1024;

/// Why a request failed (the driver sees only the status byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// A buffer lies outside guest memory, or the chain is too long.
    BadChain,
    /// A device-readable descriptor follows a device-writable one.
    Order,
    /// Fewer than 16 device-readable bytes for the header.
    ShortHeader,
    /// A data length that is not whole sectors.
    Unaligned,
    /// `sector * 512 + length` lies beyond the end of the image.
    OutOfRange,
    /// A write to a read-only disk.
    ReadOnly,
    /// The host file failed.
    Io,
    /// A request type the device does not offer.
    Unsupported(u32),
}

impl RequestError {
    fn status(self) -> u8 {
        let s = match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        };
        // Status values are single bytes.
        u8::try_from(s).unwrap_or(u8::MAX)
    }
}

/// What serving one chain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes written into the chain's device-writable buffers (the used length).
    pub used_len: u32,
    /// The status byte written, if there was room for one.
    pub status: Option<u8>,
    /// Why the request failed, if it did.
    pub error: Option<RequestError>,
}

/// Checks that no device-readable descriptor follows a device-writable one.
fn in_order<M>(chain: &DescriptorChain<M>) -> bool
where
    M: Deref + Clone,
    M::Target: vm_memory::GuestMemory,
{
    let mut seen_writable = false;
    for d in chain.clone() {
        if d.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return false;
        }
    }
    true
}

fn header(reader: &mut Reader<'_>) -> Result<(u32, u64), RequestError> {
    if reader.available_bytes() < HEADER_SIZE {
        return Err(RequestError::ShortHeader);
    }
    let mut h = [0u8; HEADER_SIZE];
    reader
        .read_exact(&mut h)
        .map_err(|_| RequestError::ShortHeader)?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = h;
    Ok((
        u32::from_le_bytes([t0, t1, t2, t3]),
        u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    ))
}

/// The byte offset of a `len`-byte transfer at `sector`, checked.
fn data_range(disk: &Disk, sector: u64, len: usize) -> Result<u64, RequestError> {
    let len = u64::try_from(len).map_err(|_| RequestError::OutOfRange)?;
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::Unaligned);
    }
    disk.check_range(sector, len)
        .ok_or(RequestError::OutOfRange)
}

fn execute(
    disk: &Disk,
    reader: &mut Reader<'_>,
    data: &mut Writer<'_>,
    bounce: &mut [u8],
) -> Result<(), RequestError> {
    let (kind, sector) = header(reader)?;
    match kind {
        VIRTIO_BLK_T_IN => {
            let len = data.available_bytes();
            let mut offset = data_range(disk, sector, len)?;
            let mut left = len;
            while left > 0 {
                let n = left.min(bounce.len());
                let buf = &mut bounce[..n];
                disk.read_at(buf, offset).map_err(|_| RequestError::Io)?;
                data.write_all(buf).map_err(|_| RequestError::BadChain)?;
                left -= n;
                offset += n as u64;
            }
            Ok(())
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only() {
                return Err(RequestError::ReadOnly);
            }
            let len = reader.available_bytes();
            let mut offset = data_range(disk, sector, len)?;
            let mut left = len;
            while left > 0 {
                let n = left.min(bounce.len());
                let buf = &mut bounce[..n];
                reader.read_exact(buf).map_err(|_| RequestError::BadChain)?;
                disk.write_at(buf, offset).map_err(|_| RequestError::Io)?;
                left -= n;
                offset += n as u64;
            }
            Ok(())
        }
        VIRTIO_BLK_T_FLUSH => {
            if !disk.read_only() {
                disk.flush().map_err(|_| RequestError::Io)?;
            }
            Ok(())
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = data.available_bytes().min(disk.id().len());
            data.write_all(&disk.id()[..n])
                .map_err(|_| RequestError::BadChain)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Serves one request chain against `disk`; never fails, whatever the chain holds.
pub fn serve(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &Disk,
    bounce: &mut [u8],
) -> Outcome {
    let nothing = |error| Outcome {
        used_len: 0,
        status: None,
        error: Some(error),
    };
    let ordered = in_order(&chain);
    let (mut reader, mut writer) = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain))
    {
        (Ok(r), Ok(w)) => (r, w),
        _ => return nothing(RequestError::BadChain),
    };
    let Some(data_len) = writer.available_bytes().checked_sub(1) else {
        // No room for a status byte: the driver gets the chain back, untouched.
        return nothing(RequestError::BadChain);
    };
    let Ok(mut status_slot) = writer.split_at(data_len) else {
        return nothing(RequestError::BadChain);
    };
    let result = if ordered {
        execute(disk, &mut reader, &mut writer, bounce)
    } else {
        Err(RequestError::Order)
    };
    let status = match result {
        Ok(()) => u8::try_from(VIRTIO_BLK_S_OK).unwrap_or(0),
        Err(e) => e.status(),
    };
    let written = writer.bytes_written();
    if status_slot.write_all(&[status]).is_err() {
        return Outcome {
            used_len: u32::try_from(written).unwrap_or(u32::MAX),
            status: None,
            error: Some(result.err().unwrap_or(RequestError::BadChain)),
        };
    }
    Outcome {
        // The chain is at most 4 GiB (the chain iterator stops there), so this fits.
        used_len: u32::try_from(written + 1).unwrap_or(u32::MAX),
        status: Some(status),
        error: result.err(),
    }
}

/// A queue the driver broke (its available index ran ahead by more than the queue size,
/// or its rings became unreadable).
#[derive(Debug, thiserror::Error)]
#[error("virtio-blk queue broken by the driver")]
pub struct QueueBroken(#[source] pub virtio_queue::Error);

/// Serves every available request of `queue`; returns whether the driver must be
/// interrupted (buffers were used and the driver did not suppress the interrupt).
pub fn process_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    disk: &Disk,
    bounce: &mut [u8],
) -> Result<bool, QueueBroken> {
    let mut used_any = false;
    loop {
        queue.disable_notification(mem).map_err(QueueBroken)?;
        let mut served = 0u32;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let out = serve(mem, chain, disk, bounce);
            queue
                .add_used(mem, head, out.used_len)
                .map_err(QueueBroken)?;
            served += 1;
            used_any = true;
        }
        if !queue.enable_notification(mem).map_err(QueueBroken)? {
            break;
        }
        if served == 0 {
            // More is available, yet nothing could be taken: the available index is
            // more than a queue ahead (pop_descriptor_chain refuses it). Waiting for the
            // next notification beats spinning on it.
            return Err(QueueBroken(virtio_queue::Error::InvalidAvailRingIndex));
        }
    }
    if !used_any {
        return Ok(false);
    }
    queue.needs_notification(mem).map_err(QueueBroken)
}
