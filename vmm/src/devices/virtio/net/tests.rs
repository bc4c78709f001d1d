//! virtio-net against well-formed and malformed descriptor chains, rx backpressure, and
//! the whole device through the transport with its I/O thread (a datagram socket pair
//! stands in for the tap: it keeps frame boundaries as a tap does).

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::frame::{process_rx, process_tx, RxState, RxStop, BUF_LEN, HDR_LEN, MAX_FRAME};
use super::*;
use crate::devices::bus::MmioDevice;
use crate::devices::virtio::block::harness::{self, Desc, DATA, INDIRECT, MEM_SIZE, NEXT, WRITE};
use crate::devices::virtio::mmio::MmioTransport;

fn d(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
    Desc {
        addr,
        len,
        flags,
        next,
    }
}

fn pair() -> (UnixDatagram, UnixDatagram) {
    let (a, b) = UnixDatagram::pair().expect("socketpair");
    a.set_nonblocking(true).expect("nonblocking");
    b.set_nonblocking(true).expect("nonblocking");
    // Frames up to the largest the device moves.
    for s in [&a, &b] {
        let size = libc::c_int::try_from(2 * BUF_LEN).expect("size");
        // SAFETY: setsockopt with a pointer to an int that lives across the call.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(s),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                4,
            )
        };
        assert_eq!(rc, 0);
    }
    (a, b)
}

/// A frame: a zero vnet header and `len` bytes of Ethernet frame.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| seed.wrapping_add(u8::try_from(i % 251).unwrap_or(0))));
    f
}

fn mem() -> GuestMemoryMmap {
    harness::memory().expect("memory")
}

fn tx(mem: &GuestMemoryMmap, descs: &[Desc], dev: &UnixDatagram) -> (u32, NetStats) {
    let stats = NetStats::default();
    let mut q = harness::queue(mem, descs, &[0], false).expect("queue");
    let mut buf = vec![0u8; BUF_LEN];
    let notify = process_tx(&mut q, mem, dev, &mut buf, &stats).expect("queue works");
    assert!(notify);
    let (idx, id, len) = harness::used(mem, 0).expect("used");
    assert_eq!((idx, id), (1, 0), "the chain always comes back");
    (len, stats)
}

#[test]
fn tx_sends_header_and_frame_as_they_are() {
    let m = mem();
    let (dev, peer) = pair();
    let f = frame(1000, 7);
    m.write_slice(&f[..HDR_LEN], GuestAddress(DATA))
        .expect("hdr");
    m.write_slice(&f[HDR_LEN..], GuestAddress(DATA + 0x1000))
        .expect("frame");
    // Header and frame in two descriptors, as Linux sends them.
    let descs = [d(DATA, 12, NEXT, 1), d(DATA + 0x1000, 1000, 0, 0)];
    let (len, stats) = tx(&m, &descs, &dev);
    assert_eq!(len, 0);
    let mut got = vec![0u8; BUF_LEN];
    let n = peer.recv(&mut got).expect("frame sent");
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(stats.tx_frames.load(Ordering::Relaxed), 1);
    // One descriptor, at the largest size.
    let big = frame(MAX_FRAME, 3);
    m.write_slice(&big, GuestAddress(DATA)).expect("big");
    let one = [d(DATA, u32::try_from(big.len()).expect("len"), 0, 0)];
    let (_, stats) = tx(&m, &one, &dev);
    assert_eq!(stats.tx_frames.load(Ordering::Relaxed), 1, "{stats:?}");
    let n = peer.recv(&mut got).expect("big frame sent");
    assert_eq!(n, big.len());
}

#[test]
fn malformed_tx_chains_are_dropped_and_come_back() {
    let m = mem();
    let (dev, peer) = pair();
    m.write_slice(&frame(2000, 1), GuestAddress(DATA))
        .expect("frame");
    let too_big = u32::try_from(BUF_LEN + 1).expect("len");
    let mut offload = frame(100, 1);
    offload[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    m.write_slice(&offload, GuestAddress(DATA + 0x2_0000))
        .expect("offload");
    let mut csum = frame(100, 1);
    csum[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    m.write_slice(&csum, GuestAddress(DATA + 0x2_8000))
        .expect("csum");
    let cases: Vec<(&str, Vec<Desc>)> = vec![
        ("outside memory", vec![d(MEM_SIZE as u64, 100, 0, 0)]),
        (
            "straddling the end",
            vec![d(MEM_SIZE as u64 - 50, 100, 0, 0)],
        ),
        ("address overflow", vec![d(u64::MAX - 10, 100, 0, 0)]),
        ("zero length", vec![d(DATA, 0, 0, 0)]),
        ("only a header", vec![d(DATA, 12, 0, 0)]),
        ("device-writable only", vec![d(DATA, 1500, WRITE, 0)]),
        ("too big", vec![d(DATA, too_big, 0, 0)]),
        ("gso asked", vec![d(DATA + 0x2_0000, 112, 0, 0)]),
        ("checksum asked", vec![d(DATA + 0x2_8000, 112, 0, 0)]),
        (
            "loop",
            vec![d(DATA, 12, NEXT, 1), d(DATA + 12, 100, NEXT, 0)],
        ),
        ("next beyond the queue", vec![d(DATA, 12, NEXT, 200)]),
        (
            "indirect outside memory",
            vec![d(MEM_SIZE as u64, 64, INDIRECT, 0)],
        ),
    ];
    for (what, descs) in cases {
        let (len, stats) = tx(&m, &descs, &dev);
        assert_eq!(len, 0, "{what}");
        let mut got = vec![0u8; BUF_LEN];
        if let Ok(n) = peer.recv(&mut got) {
            // A loop is cut at the queue size: what was read is one odd but bounded frame.
            assert_eq!(what, "loop", "{what} sent {n} bytes");
            assert!(n <= BUF_LEN);
        } else {
            assert_eq!(stats.tx_dropped.load(Ordering::Relaxed), 1, "{what}");
        }
    }
}

#[test]
fn a_broken_available_ring_is_reported_not_fatal() {
    let m = mem();
    let (dev, _peer) = pair();
    let mut q = harness::queue(&m, &[d(DATA, 100, 0, 0)], &[0], false).expect("queue");
    m.write_obj(100u16, GuestAddress(harness::AVAIL + 2))
        .expect("idx");
    let mut buf = vec![0u8; BUF_LEN];
    let stats = NetStats::default();
    assert!(process_tx(&mut q, &m, &dev, &mut buf, &stats).is_err());
    let mut rx = RxState::default();
    _peer.send(&frame(100, 0)).expect("send");
    assert!(process_rx(&mut q, &m, &dev, &mut rx, &stats).is_err());
}

/// Makes one more buffer (descriptor `head`) available on the harness queue.
fn post(m: &GuestMemoryMmap, slot: u16, head: u16) {
    let at = harness::AVAIL + 4 + 2 * u64::from(slot % harness::SIZE);
    m.write_obj(head.to_le(), GuestAddress(at)).expect("ring");
    m.write_obj((slot + 1).to_le(), GuestAddress(harness::AVAIL + 2))
        .expect("idx");
}

#[test]
fn rx_delivers_fixes_the_header_and_waits_for_buffers() {
    let m = mem();
    let (dev, peer) = pair();
    let stats = NetStats::default();
    let mut rx = RxState::default();
    // Two buffers of 1526 bytes (header and a full-MTU frame); none available yet.
    let descs = [
        d(DATA, 1526, WRITE, 0),
        d(DATA + 0x1000, 12, WRITE | NEXT, 2),
        d(DATA + 0x2000, 1514, WRITE, 0),
    ];
    let mut q = harness::queue(&m, &descs, &[], false).expect("queue");
    let mut f = frame(1514, 9);
    f[0] = 2; // VIRTIO_NET_HDR_F_DATA_VALID: cleared on the way in
    peer.send(&f).expect("send");
    peer.send(&frame(60, 1)).expect("send");
    let (notify, stop) = process_rx(&mut q, &m, &dev, &mut rx, &stats).expect("rx");
    assert_eq!((notify, stop), (false, RxStop::NoBuffers));
    assert!(rx.has_pending(), "the frame waits in the host buffer");
    // The driver posts one buffer: the waiting frame goes in.
    post(&m, 0, 0);
    let (notify, stop) = process_rx(&mut q, &m, &dev, &mut rx, &stats).expect("rx");
    assert_eq!((notify, stop), (true, RxStop::NoBuffers));
    assert_eq!(harness::used(&m, 0), Some((1, 0, 1526)));
    let mut got = vec![0u8; 1526];
    m.read_slice(&mut got, GuestAddress(DATA)).expect("read");
    let mut want = f.clone();
    want[0] = 0;
    want[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(got, want);
    // A chained buffer takes the second frame across its descriptors.
    post(&m, 1, 1);
    let (notify, stop) = process_rx(&mut q, &m, &dev, &mut rx, &stats).expect("rx");
    assert_eq!((notify, stop), (true, RxStop::Drained));
    assert_eq!(harness::used(&m, 1), Some((2, 1, 72)));
    let mut body = vec![0u8; 60];
    m.read_slice(&mut body, GuestAddress(DATA + 0x2000))
        .expect("read");
    assert_eq!(body, frame(60, 1)[HDR_LEN..]);
    assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 2);
    assert!(!rx.has_pending());
}

#[test]
fn rx_drops_what_does_not_fit_and_returns_bad_buffers() {
    let m = mem();
    let (dev, peer) = pair();
    let stats = NetStats::default();
    let mut rx = RxState::default();
    let descs = [
        d(DATA, 100, WRITE, 0),
        d(MEM_SIZE as u64, 1526, WRITE, 0),
        d(DATA, 1526, 0, 0),
    ];
    // A small buffer: a big frame is dropped and the buffer kept for a small one.
    let mut q = harness::queue(&m, &descs, &[0], false).expect("queue");
    peer.send(&frame(1000, 0)).expect("send");
    peer.send(&frame(50, 0)).expect("send");
    let (notify, _) = process_rx(&mut q, &m, &dev, &mut rx, &stats).expect("rx");
    assert!(notify);
    assert_eq!(stats.rx_dropped.load(Ordering::Relaxed), 1);
    assert_eq!(harness::used(&m, 0), Some((1, 0, 62)));
    // A buffer outside memory, or one the device cannot write: given back empty.
    for head in [1u16, 2] {
        let mut q = harness::queue(&m, &descs, &[head], false).expect("queue");
        peer.send(&frame(50, 0)).expect("send");
        let _ = process_rx(&mut q, &m, &dev, &mut rx, &stats).expect("rx");
        assert_eq!(
            harness::used(&m, 0).map(|u| (u.1, u.2)),
            Some((u32::from(head), 0))
        );
        // The frame still waits for a good buffer.
        assert!(rx.has_pending());
    }
    assert_eq!(stats.rx_bad_buffers.load(Ordering::Relaxed), 2);
    // Runt frames from the host (shorter than a header and an Ethernet header).
    let (dev, peer) = pair();
    let mut rx = RxState::default();
    let mut q = harness::queue(&m, &descs, &[], false).expect("queue");
    peer.send(&[0u8; 20]).expect("send");
    let _ = process_rx(&mut q, &m, &dev, &mut rx, &stats).expect("rx");
    assert!(!rx.has_pending());
    assert_eq!(stats.rx_dropped.load(Ordering::Relaxed), 2);
}

#[test]
fn rx_with_event_index_asks_to_be_notified_when_out_of_buffers() {
    let m = mem();
    let (dev, peer) = pair();
    let stats = NetStats::default();
    let mut rx = RxState::default();
    let descs = [d(DATA, 1526, WRITE, 0)];
    let mut q = harness::queue(&m, &descs, &[0], true).expect("queue");
    peer.send(&frame(60, 0)).expect("send");
    peer.send(&frame(60, 0)).expect("send");
    let (_, stop) = process_rx(&mut q, &m, &dev, &mut rx, &stats).expect("rx");
    assert_eq!(stop, RxStop::NoBuffers);
    // avail_event (after the used ring's entries) says: notify me at the next buffer.
    let avail_event = GuestAddress(harness::USED + 4 + 8 * u64::from(harness::SIZE));
    let ev: u16 = m.read_obj(avail_event).expect("avail_event");
    assert_eq!(u16::from_le(ev), 1);
}

/// Queue `i`'s rings for the device test: rx at the harness's addresses, tx after them.
fn rings(i: u64) -> (u64, u64, u64) {
    (
        harness::DESC + i * 0x8000,
        harness::AVAIL + i * 0x8000,
        harness::USED + i * 0x8000,
    )
}

fn wr(t: &mut MmioTransport, reg: u32, v: u32) {
    t.write(u64::from(reg), &v.to_le_bytes());
}

fn write_desc(m: &GuestMemoryMmap, q: u64, i: u64, desc: Desc) {
    let at = rings(q).0 + 16 * i;
    m.write_obj(desc.addr.to_le(), GuestAddress(at))
        .expect("desc");
    m.write_obj(desc.len.to_le(), GuestAddress(at + 8))
        .expect("desc");
    m.write_obj(desc.flags.to_le(), GuestAddress(at + 12))
        .expect("desc");
    m.write_obj(desc.next.to_le(), GuestAddress(at + 14))
        .expect("desc");
}

fn avail(m: &GuestMemoryMmap, q: u64, slot: u16, head: u16) {
    let base = rings(q).1;
    m.write_obj(head.to_le(), GuestAddress(base + 4 + 2 * u64::from(slot)))
        .expect("ring");
    m.write_obj((slot + 1).to_le(), GuestAddress(base + 2))
        .expect("idx");
}

fn used_idx(m: &GuestMemoryMmap, q: u64) -> u16 {
    u16::from_le(m.read_obj(GuestAddress(rings(q).2 + 2)).expect("used"))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what}: the I/O thread never did it"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn served_on_its_own_thread_through_the_transport() {
    use virtio_bindings::virtio_config::*;
    use virtio_bindings::virtio_mmio::*;
    let m = mem();
    let (dev, peer) = pair();
    let mac = [0x06, 0, 0, 0, 0, 1];
    let net = Net::new(Arc::new(dev), mac, "net-test");
    let stats = net.stats();
    assert_eq!(net.device_type(), 1);
    let mut cfg = [0u8; 8];
    net.read_config(0, &mut cfg);
    assert_eq!(cfg, [6, 0, 0, 0, 0, 1, 0, 0]);
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let irq_probe = irq.try_clone().expect("clone");
    let mut t = MmioTransport::new(Box::new(net), m.clone(), irq).expect("transport");
    wr(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    let drv = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    wr(&mut t, VIRTIO_MMIO_STATUS, drv);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1 << VIRTIO_NET_F_MAC);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        drv | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    for q in 0..2u32 {
        let (desc, av, used) = rings(u64::from(q));
        wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, q);
        wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        wr(
            &mut t,
            VIRTIO_MMIO_QUEUE_DESC_LOW,
            u32::try_from(desc).expect("addr"),
        );
        wr(
            &mut t,
            VIRTIO_MMIO_QUEUE_AVAIL_LOW,
            u32::try_from(av).expect("addr"),
        );
        wr(
            &mut t,
            VIRTIO_MMIO_QUEUE_USED_LOW,
            u32::try_from(used).expect("addr"),
        );
        wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    }
    // A frame from the host before the driver has rx buffers: it waits.
    let incoming = frame(200, 5);
    peer.send(&incoming).expect("send");
    let ok = drv | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK;
    wr(&mut t, VIRTIO_MMIO_STATUS, ok);
    assert!(t.is_active());

    // The driver sends a frame.
    let out = frame(300, 11);
    m.write_slice(&out, GuestAddress(DATA)).expect("frame");
    write_desc(&m, 1, 0, d(DATA, 312, 0, 0));
    avail(&m, 1, 0, 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    wait_for("tx", || used_idx(&m, 1) == 1);
    let mut got = vec![0u8; BUF_LEN];
    let n = peer.recv(&mut got).expect("frame out");
    assert_eq!(&got[..n], &out[..]);
    assert_eq!(irq_probe.read().expect("irqfd written"), 1);

    // The driver posts an rx buffer: the waiting frame arrives, then another.
    write_desc(&m, 0, 0, d(DATA + 0x1000, 1526, WRITE, 0));
    write_desc(&m, 0, 1, d(DATA + 0x2000, 1526, WRITE, 0));
    avail(&m, 0, 0, 0);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    wait_for("rx of the waiting frame", || used_idx(&m, 0) == 1);
    let mut body = vec![0u8; 200];
    m.read_slice(&mut body, GuestAddress(DATA + 0x1000 + 12))
        .expect("read");
    assert_eq!(body, incoming[HDR_LEN..]);
    avail(&m, 0, 1, 1);
    wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    peer.send(&frame(100, 6)).expect("send");
    wait_for("rx of a new frame", || used_idx(&m, 0) == 2);
    assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 2);
    assert_eq!(stats.tx_frames.load(Ordering::Relaxed), 1);

    // Out of buffers: frames wait; reset stops the thread.
    peer.send(&frame(100, 7)).expect("send");
    wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    assert!(!t.is_active());
    assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 2);
}
