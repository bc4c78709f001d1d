//! Fuzz target: the virtio-blk request path. Arbitrary bytes become a descriptor table,
//! an available ring and the contents of the guest's buffers; the queue is then served
//! by `owvmm::devices::virtio::block::request::process_queue` against a small image file,
//! read-write or read-only.
//!
//! Input: byte 0 flags (bit 0 read-only disk, bit 1 event index), byte 1 the number of
//! available heads (at most 16), then that many head indices (one byte each), then 16
//! descriptors of 16 bytes (address, length, flags, next; little-endian: an address or
//! length with its top bit clear is folded into guest memory's size, so most land near
//! it, and one with the top bit set is taken as it is), then the bytes of the guest's
//! buffer area (headers, data).
//!
//! Nothing may panic or hang; a queue served without error used at most as many chains
//! as were made available.
//!
//! Built with `--features libfuzzer` under `cargo fuzz` it is a libFuzzer target; otherwise
//! it is a plain program that runs each file named on its command line (or stdin) once.
#![cfg_attr(all(fuzzing, feature = "libfuzzer"), no_main)]

use std::sync::OnceLock;

use owvmm::devices::virtio::block::harness::{self, Desc, DATA, MEM_SIZE, SIZE};
use owvmm::devices::virtio::block::request::{process_queue, BOUNCE_SIZE};
use owvmm::devices::virtio::block::Disk;
use vm_memory::{Bytes, GuestAddress};

/// The read-write and the read-only image, 64 sectors each, made once per process.
fn disks() -> &'static (Disk, Disk) {
    static DISKS: OnceLock<(Disk, Disk)> = OnceLock::new();
    DISKS.get_or_init(|| {
        let dir = std::env::temp_dir();
        let open = |name: &str, ro: bool| {
            let p = dir.join(format!("owvmm-fuzz-blk-{}-{name}", std::process::id()));
            std::fs::write(&p, vec![0xa5u8; 64 * 512]).expect("image");
            let d = Disk::open(&p, ro, "fuzz").expect("disk");
            // The open file keeps the image; the name is not needed.
            let _ = std::fs::remove_file(&p);
            d
        };
        (open("rw", false), open("ro", true))
    })
}

fn fold(raw: u64, top: u64, modulus: u64) -> u64 {
    if raw & top != 0 {
        raw
    } else {
        raw % modulus
    }
}

fn run_one(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n).min(usize::from(SIZE)).min(rest.len());
    let (heads, rest) = rest.split_at(n);
    let heads: Vec<u16> = heads.iter().map(|&h| u16::from(h) % SIZE).collect();
    let mem_size = MEM_SIZE as u64;
    let mut descs = Vec::new();
    let mut rest = rest;
    while descs.len() < usize::from(SIZE) {
        let Some((d, r)) = rest.split_first_chunk::<16>() else {
            break;
        };
        rest = r;
        let addr = u64::from_le_bytes(d[0..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(d[8..12].try_into().expect("4 bytes"));
        descs.push(Desc {
            addr: fold(addr, 1 << 63, mem_size + 0x1000),
            len: u32::try_from(fold(u64::from(len), 1 << 31, 0x4000)).unwrap_or(u32::MAX),
            flags: u16::from_le_bytes([d[12], d[13]]),
            next: u16::from_le_bytes([d[14], d[15]]),
        });
    }
    let Some(mem) = harness::memory() else {
        return;
    };
    let room = MEM_SIZE - usize::try_from(DATA).unwrap_or(MEM_SIZE);
    let buffers = &rest[..rest.len().min(room)];
    if mem.write_slice(buffers, GuestAddress(DATA)).is_err() {
        return;
    }
    let Some(mut queue) = harness::queue(&mem, &descs, &heads, flags & 2 != 0) else {
        return;
    };
    let (rw, ro) = disks();
    let disk = if flags & 1 != 0 { ro } else { rw };
    let mut bounce = vec![0u8; BOUNCE_SIZE];
    if process_queue(&mut queue, &mem, disk, &mut bounce).is_ok() {
        // The used index is written last, after each chain; the used elements are not
        // checked: a driver may point a later request's buffers at the used ring itself.
        let (idx, _, _) = harness::used(&mem, 0).expect("used ring readable");
        assert!(
            usize::from(idx) <= heads.len(),
            "{idx} used of {}",
            heads.len()
        );
    }
}

#[cfg(all(fuzzing, feature = "libfuzzer"))]
libfuzzer_sys::fuzz_target!(|data: &[u8]| run_one(data));

#[cfg(not(all(fuzzing, feature = "libfuzzer")))]
mod replay;

#[cfg(not(all(fuzzing, feature = "libfuzzer")))]
fn main() {
    replay::main(run_one);
}
