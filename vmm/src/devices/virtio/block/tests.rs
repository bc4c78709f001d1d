//! virtio-blk against well-formed and malformed descriptor chains, and through the
//! transport with its I/O thread.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::harness::{self, Desc, DATA, INDIRECT, MEM_SIZE, NEXT, WRITE};
use super::request::{process_queue, BOUNCE_SIZE};
use super::*;
use crate::devices::bus::MmioDevice;
use crate::devices::virtio::mmio::MmioTransport;

const OK: u8 = 0;
const IOERR: u8 = 1;
const UNSUPP: u8 = 2;
/// Where the header, data and status buffers of the tests' chains are.
const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS: u64 = DATA + 0x100;

fn image(name: &str, sectors: u64) -> PathBuf {
    let p = std::env::temp_dir().join(format!("owvmm-blk-{}-{name}", std::process::id()));
    let data: Vec<u8> = (0..sectors * 512)
        .map(|i| u8::try_from(i / 512).unwrap_or(0xff))
        .collect();
    std::fs::write(&p, data).expect("image");
    p
}

struct Setup {
    mem: GuestMemoryMmap,
    disk: Disk,
    path: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn setup(name: &str, read_only: bool) -> Setup {
    let path = image(name, 16);
    let disk = Disk::open(&path, read_only, "disk0").expect("disk");
    Setup {
        mem: harness::memory().expect("memory"),
        disk,
        path,
    }
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

/// The usual three-part chain: header, data, status.
fn chain(data_flags: u16, data_len: u32) -> Vec<Desc> {
    vec![
        d(HDR, 16, NEXT, 1),
        d(BUF, data_len, data_flags | NEXT, 2),
        d(STATUS, 1, WRITE, 0),
    ]
}

/// Runs the queue over `descs` (head 0) and returns the used element's length and the
/// status byte.
fn run(s: &Setup, descs: &[Desc]) -> (u32, u8) {
    s.mem
        .write_obj(0xeeu8, GuestAddress(STATUS))
        .expect("status");
    let mut q = harness::queue(&s.mem, descs, &[0], false).expect("queue");
    let mut bounce = vec![0u8; BOUNCE_SIZE];
    let notify = process_queue(&mut q, &s.mem, &s.disk, &mut bounce).expect("queue works");
    assert!(notify);
    let (idx, id, len) = harness::used(&s.mem, 0).expect("used");
    assert_eq!((idx, id), (1, 0), "the chain always comes back");
    let status: u8 = s.mem.read_obj(GuestAddress(STATUS)).expect("status");
    (len, status)
}

#[test]
fn reads_writes_flushes_and_gets_the_id() {
    let s = setup("rw", false);
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 3).expect("hdr");
    assert_eq!(run(&s, &chain(WRITE, 1024)), (1025, OK));
    let mut got = [0u8; 1024];
    s.mem.read_slice(&mut got, GuestAddress(BUF)).expect("read");
    assert!(got[..512].iter().all(|&b| b == 3) && got[512..].iter().all(|&b| b == 4));

    s.mem
        .write_slice(&[0x5a; 512], GuestAddress(BUF))
        .expect("fill");
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_OUT, 15).expect("hdr");
    assert_eq!(run(&s, &chain(0, 512)), (1, OK));
    let file = std::fs::read(&s.path).expect("image");
    assert!(file[15 * 512..].iter().all(|&b| b == 0x5a));

    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_FLUSH, 0).expect("hdr");
    let flush = [d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)];
    assert_eq!(run(&s, &flush), (1, OK));

    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_GET_ID, 0).expect("hdr");
    assert_eq!(run(&s, &chain(WRITE, 20)), (21, OK));
    let mut id = [0u8; 20];
    s.mem.read_slice(&mut id, GuestAddress(BUF)).expect("id");
    assert_eq!(&id[..6], b"disk0\0");

    harness::write_header(&s.mem, HDR, 77, 0).expect("hdr");
    assert_eq!(run(&s, &flush), (1, UNSUPP));
}

#[test]
fn requests_past_the_end_get_ioerr() {
    let s = setup("end", false);
    // The last sector is fine, one more is not, nor is a sector number that overflows.
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 15).expect("hdr");
    assert_eq!(run(&s, &chain(WRITE, 512)), (513, OK));
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 15).expect("hdr");
    assert_eq!(run(&s, &chain(WRITE, 1024)), (1, IOERR));
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_OUT, 16).expect("hdr");
    assert_eq!(run(&s, &chain(0, 512)), (1, IOERR));
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, u64::MAX / 256).expect("hdr");
    assert_eq!(run(&s, &chain(WRITE, 512)), (1, IOERR));
    // Not whole sectors.
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 0).expect("hdr");
    assert_eq!(run(&s, &chain(WRITE, 100)), (1, IOERR));
    assert_eq!(std::fs::metadata(&s.path).expect("image").len(), 16 * 512);
}

#[test]
fn a_read_only_disk_refuses_writes() {
    let s = setup("ro", true);
    s.mem
        .write_slice(&[0x77; 512], GuestAddress(BUF))
        .expect("fill");
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_OUT, 0).expect("hdr");
    assert_eq!(run(&s, &chain(0, 512)), (1, IOERR));
    assert!(std::fs::read(&s.path).expect("image")[..512]
        .iter()
        .all(|&b| b == 0));
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 1).expect("hdr");
    assert_eq!(run(&s, &chain(WRITE, 512)), (513, OK));
    let dev = Block::new(Disk::open(&s.path, true, "ro").expect("disk"), "blk-test");
    assert_ne!(dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 16);
}

#[test]
fn malformed_chains_never_crash_and_always_come_back() {
    let s = setup("bad", false);
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 0).expect("hdr");

    // A loop: header -> data -> header ...: the iterator stops after the queue size, and
    // the readable header after a writable descriptor is refused.
    let looped = [d(HDR, 16, NEXT, 1), d(BUF, 512, WRITE | NEXT, 0)];
    let (len, status) = run(&s, &looped);
    assert!(len <= 1, "{len}");
    assert_ne!(status, OK);

    // A data buffer outside guest memory, or straddling its end.
    let outside = chain(WRITE, 512);
    let mut o = outside.clone();
    o[1].addr = MEM_SIZE as u64;
    assert_eq!(run(&s, &o), (0, 0xee));
    o[1].addr = MEM_SIZE as u64 - 256;
    assert_eq!(run(&s, &o), (0, 0xee));
    o[1].addr = u64::MAX - 100;
    assert_eq!(run(&s, &o), (0, 0xee));

    // Zero-length header: too short.
    let mut z = chain(WRITE, 512);
    z[0].len = 0;
    assert_eq!(run(&s, &z), (1, IOERR));
    // Zero-length data: nothing to transfer, but still checked against the image.
    let mut z = chain(WRITE, 0);
    z[1].len = 0;
    assert_eq!(run(&s, &z), (1, OK));

    // A write-only header is no header.
    let mut w = chain(WRITE, 512);
    w[0].flags |= WRITE;
    let (len, status) = run(&s, &w);
    assert_eq!(status, IOERR);
    assert_eq!(len, 1, "nothing but the status written");

    // No room for a status byte: returned untouched.
    let mut st = chain(WRITE, 512);
    st[2].len = 0;
    st[1].flags = NEXT;
    assert_eq!(run(&s, &st), (0, 0xee));
    let no_status = [d(HDR, 16, 0, 0)];
    assert_eq!(run(&s, &no_status), (0, 0xee));

    // An indirect table outside memory ends the chain early: no status either.
    let ind = [d(MEM_SIZE as u64, 64, INDIRECT, 0)];
    assert_eq!(run(&s, &ind), (0, 0xee));

    // A next index beyond the queue ends the chain.
    let far = [d(HDR, 16, NEXT, 200)];
    assert_eq!(run(&s, &far), (0, 0xee));
}

#[test]
fn a_broken_available_ring_is_reported_not_fatal() {
    let s = setup("ring", false);
    let mut q = harness::queue(&s.mem, &chain(WRITE, 512), &[0], false).expect("queue");
    // The driver claims 100 new buffers in a 16-entry queue.
    s.mem
        .write_obj(100u16, GuestAddress(harness::AVAIL + 2))
        .expect("idx");
    let mut bounce = vec![0u8; BOUNCE_SIZE];
    assert!(process_queue(&mut q, &s.mem, &s.disk, &mut bounce).is_err());
}

#[test]
fn served_on_its_own_thread_through_the_transport() {
    let s = setup("thread", false);
    let second = image("thread2", 16);
    let dev = Block::new(
        Disk::open(&second, false, "disk0").expect("disk"),
        "blk-test",
    );
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let irq_probe = irq.try_clone().expect("clone");
    let mut t = MmioTransport::new(Box::new(dev), s.mem.clone(), irq).expect("transport");
    let features = (1u64 << 32) | (1 << VIRTIO_BLK_F_FLUSH);
    crate::devices::virtio::mmio::tests::bring_up(
        &mut t,
        features,
        (harness::DESC, harness::AVAIL, harness::USED),
    );
    assert!(t.is_active());
    // The driver queues a read and notifies.
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 2).expect("hdr");
    harness::queue(&s.mem, &chain(WRITE, 512), &[0], false).expect("rings");
    t.write(0x50, &0u32.to_le_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    while harness::used(&s.mem, 0).map(|u| u.0) != Some(1) {
        assert!(Instant::now() < deadline, "the I/O thread never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(harness::used(&s.mem, 0), Some((1, 0, 513)));
    let status: u8 = s.mem.read_obj(GuestAddress(STATUS)).expect("status");
    assert_eq!(status, OK);
    let mut isr = [0u8; 4];
    t.read(0x60, &mut isr);
    assert_eq!(u32::from_le_bytes(isr), 1, "used-buffer interrupt");
    assert_eq!(irq_probe.read().expect("irqfd written"), 1);
    // Reset stops the thread.
    t.write(0x70, &0u32.to_le_bytes());
    assert!(!t.is_active());
    let _ = std::fs::remove_file(second);
}

#[test]
fn event_index_decides_the_interrupt() {
    let s = setup("evidx", false);
    harness::write_header(&s.mem, HDR, VIRTIO_BLK_T_IN, 0).expect("hdr");
    let used_event = GuestAddress(harness::AVAIL + 4 + 2 * u64::from(harness::SIZE));
    let mut bounce = vec![0u8; BOUNCE_SIZE];
    for (event, want) in [(0u16, true), (5, false)] {
        let mut q = harness::queue(&s.mem, &chain(WRITE, 512), &[0], true).expect("queue");
        s.mem.write_obj(event, used_event).expect("used_event");
        s.mem
            .write_obj(0u16, GuestAddress(harness::USED + 2))
            .expect("used idx");
        let notify = process_queue(&mut q, &s.mem, &s.disk, &mut bounce).expect("queue");
        assert_eq!(notify, want, "used_event {event}");
    }
}
