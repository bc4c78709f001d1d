//! Fuzz target: the virtio-net transmit path. Arbitrary bytes become a descriptor table,
//! an available ring and the contents of the guest's buffers (as the block harness's
//! `FuzzQueue::decode` reads them); the queue is then served by
//! `owvmm::devices::virtio::net::frame::process_tx` into a backend that checks each frame
//! it is handed and drops it.
//!
//! Nothing may panic or hang; a frame handed on fits the device's buffer and carries no
//! offload; a queue served without error used at most as many chains as were made
//! available.
//!
//! Built with `--features libfuzzer` under `cargo fuzz` it is a libFuzzer target; otherwise
//! it is a plain program that runs each file named on its command line (or stdin) once.
#![cfg_attr(all(fuzzing, feature = "libfuzzer"), no_main)]

use std::os::fd::{AsRawFd, RawFd};

use owvmm::devices::virtio::block::harness::FuzzQueue;
use owvmm::devices::virtio::net::frame::{process_tx, NetStats, BUF_LEN};
use owvmm::devices::virtio::net::Backend;

/// A tap that takes every frame and keeps none.
struct Sink;

impl AsRawFd for Sink {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

impl Backend for Sink {
    fn recv(&self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }

    fn send(&self, buf: &[u8]) -> std::io::Result<usize> {
        assert!(buf.len() <= BUF_LEN, "frame of {} bytes", buf.len());
        assert!(buf.len() >= 12 + 14, "frame of {} bytes", buf.len());
        assert_eq!(buf[1], 0, "a GSO frame was handed on");
        Ok(buf.len())
    }
}

fn run_one(data: &[u8]) {
    let Some(mut q) = FuzzQueue::decode(data) else {
        return;
    };
    let mut buf = vec![0u8; BUF_LEN];
    let stats = NetStats::default();
    if process_tx(&mut q.queue, &q.mem, &Sink, &mut buf, &stats).is_ok() {
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
