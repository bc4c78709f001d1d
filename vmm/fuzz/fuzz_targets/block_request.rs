//! Fuzz target: the virtio-blk request path. Arbitrary bytes become a descriptor table,
//! an available ring and the contents of the guest's buffers; the queue is then served
//! by `owvmm::devices::virtio::block::request::process_queue` against a small image file,
//! read-write or read-only.
//!
//! Input: as `FuzzQueue::decode` reads it (the block harness); bit 0 of the flags byte
//! makes the disk read-only.
//!
//! Nothing may panic or hang; a queue served without error used at most as many chains
//! as were made available.
//!
//! Built with `--features libfuzzer` under `cargo fuzz` it is a libFuzzer target; otherwise
//! it is a plain program that runs each file named on its command line (or stdin) once.
#![cfg_attr(all(fuzzing, feature = "libfuzzer"), no_main)]

use std::sync::OnceLock;

use owvmm::devices::virtio::block::harness::FuzzQueue;
use owvmm::devices::virtio::block::request::{process_queue, BOUNCE_SIZE};
use owvmm::devices::virtio::block::Disk;

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

fn run_one(data: &[u8]) {
    let Some(mut q) = FuzzQueue::decode(data) else {
        return;
    };
    let (rw, ro) = disks();
    let disk = if q.flags & 1 != 0 { ro } else { rw };
    let mut bounce = vec![0u8; BOUNCE_SIZE];
    if process_queue(&mut q.queue, &q.mem, disk, &mut bounce).is_ok() {
        q.check_used();
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
