//! Established TCP connections of a dead kernel, for TCP repair (as CRIU restores them):
//! the addresses and ports, the sequence numbers, the windows and the options agreed with
//! the peer, a timestamp to go on from, and the bytes of both queues: what the program had
//! sent and the peer had not acknowledged (the retransmit queue, then the unsent write
//! queue: from `snd_una` to `write_seq`) and what had arrived that the program had not read
//! (from `copied_seq` to `rcv_nxt`). Every length is checked against the sequence numbers:
//! a connection whose queues do not add up is not repaired (it comes back reset). Only
//! `ESTABLISHED` connections are read: no FIN has been sent or received, so every byte of
//! the sequence space is data.

use crate::kernel::{is_kernel_addr, Kernel};
use crate::pages::PageArray;
use crate::sockets::{rd, SocketError};

/// `TCP_ESTABLISHED`.
pub const TCP_ESTABLISHED: u64 = 1;
/// Most socket buffers read from one queue.
const MAX_SKBS: usize = 1 << 16;
/// Most bytes of one queue (the kernel's own limits are far lower).
const MAX_QUEUE: u64 = 64 << 20;

/// One established connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConn {
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    pub local: [u8; 16],
    pub local_port: u16,
    pub remote: [u8; 16],
    pub remote_port: u16,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub write_seq: u32,
    pub rcv_nxt: u32,
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
    /// `rx_opt.mss_clamp`.
    pub mss: u32,
    pub snd_wscale: u32,
    pub rcv_wscale: u32,
    /// `TCPI_OPT_*`-like bits: 1 timestamps, 2 SACK, 4 window scaling.
    pub opts: u32,
    /// The timestamp the dead kernel would have sent now (`tcp_mstamp` in ms plus
    /// `tsoffset`): the repaired socket goes on from it, so the peer's PAWS check passes.
    pub timestamp: u32,
    /// Bytes from `snd_una` to `write_seq`, as guest-physical runs.
    pub send: Vec<(u64, u64)>,
    /// Bytes from `rcv_nxt - recv length` (what the program had not read) to `rcv_nxt`.
    pub recv: Vec<(u64, u64)>,
}

/// Why a connection cannot be repaired: a [`SocketError`].
pub type TcpError = SocketError;

fn u32_of(v: u64) -> u32 {
    u32::try_from(v & 0xffff_ffff).unwrap_or(0)
}

/// Reads the established TCP connection `sk` (a `struct tcp_sock`).
pub fn read_tcp(k: &Kernel<'_>, sk: u64, family: u64) -> Result<TcpConn, TcpError> {
    let t = |what: &'static str, path: &'static str| rd(what, k.read_field("tcp_sock", path, sk));
    let c = |what: &'static str, path: &'static str| rd(what, k.read_field("sock", path, sk));
    let (mut local, mut remote) = ([0u8; 16], [0u8; 16]);
    if family == 2 {
        let l = c("local address", "__sk_common.skc_rcv_saddr")?;
        let r = c("remote address", "__sk_common.skc_daddr")?;
        // Network order in memory: read little-endian, the bytes are in order.
        local[..4].copy_from_slice(&u32_of(l).to_le_bytes());
        remote[..4].copy_from_slice(&u32_of(r).to_le_bytes());
    } else {
        for (buf, path, what) in [
            (
                &mut local,
                "__sk_common.skc_v6_rcv_saddr",
                "local v6 address",
            ),
            (&mut remote, "__sk_common.skc_v6_daddr", "remote v6 address"),
        ] {
            let off = rd(what, k.offset_of("sock", path))?;
            k.read_bytes(sk.wrapping_add(off), buf)
                .map_err(|source| TcpError::Read { what, source })?;
        }
    }
    let local_port = u16::try_from(c("local port", "__sk_common.skc_num")? & 0xffff).unwrap_or(0);
    // skc_dport is network order.
    let dport = u16::try_from(c("remote port", "__sk_common.skc_dport")? & 0xffff).unwrap_or(0);
    let remote_port = u16::from_be(dport);
    let snd_una = u32_of(t("snd_una", "snd_una")?);
    let snd_nxt = u32_of(t("snd_nxt", "snd_nxt")?);
    let write_seq = u32_of(t("write_seq", "write_seq")?);
    let rcv_nxt = u32_of(t("rcv_nxt", "rcv_nxt")?);
    let copied_seq = u32_of(t("copied_seq", "copied_seq")?);
    let tstamp_ok = t("tstamp_ok", "rx_opt.tstamp_ok")? != 0;
    let sack_ok = t("sack_ok", "rx_opt.sack_ok")? != 0;
    let wscale_ok = t("wscale_ok", "rx_opt.wscale_ok")? != 0;
    let mstamp = t("tcp_mstamp", "tcp_mstamp")?;
    let tsoffset = u32_of(t("tsoffset", "tsoffset")?);
    let pages = PageArray::new(k);
    let skb = SkbLayout::new(k)?;

    // What the program had sent and the peer had not acknowledged, in sequence order:
    // the retransmit queue (a red-black tree by sequence), then the write queue.
    let mut send = Vec::new();
    let mut sent = 0u64;
    let rtx_off = rd("rtx queue", k.offset_of("sock", "tcp_rtx_queue"))?;
    let root = rd("rtx queue root", k.read_u64(sk.wrapping_add(rtx_off)))?;
    for node in rb_in_order(k, root, "send")? {
        let b = node.wrapping_sub(skb.rbnode);
        sent += skb.payload(k, &pages, b, None, "send", &mut send)?;
    }
    let wq = sk.wrapping_add(rd("write queue", k.offset_of("sock", "sk_write_queue"))?);
    for b in list(k, wq, "send")? {
        sent += skb.payload(k, &pages, b, None, "send", &mut send)?;
    }
    let want = u64::from(write_seq.wrapping_sub(snd_una));
    if sent != want {
        return Err(TcpError::QueueLength {
            queue: "send",
            got: sent,
            want,
        });
    }
    // What had arrived and the program had not read: from copied_seq on.
    let mut recv = Vec::new();
    let mut got = 0u64;
    let rq = sk.wrapping_add(rd(
        "receive queue",
        k.offset_of("sock", "sk_receive_queue"),
    )?);
    for b in list(k, rq, "receive")? {
        got += skb.payload(k, &pages, b, Some(copied_seq), "receive", &mut recv)?;
    }
    let want = u64::from(rcv_nxt.wrapping_sub(copied_seq));
    if got != want {
        return Err(TcpError::QueueLength {
            queue: "receive",
            got,
            want,
        });
    }
    let ms = u32::try_from((mstamp / 1000) & 0xffff_ffff).unwrap_or(0);
    Ok(TcpConn {
        family: u32::try_from(family).unwrap_or(2),
        local,
        local_port,
        remote,
        remote_port,
        snd_una,
        snd_nxt,
        write_seq,
        rcv_nxt,
        snd_wl1: u32_of(t("snd_wl1", "snd_wl1")?),
        snd_wnd: u32_of(t("snd_wnd", "snd_wnd")?),
        max_window: u32_of(t("max_window", "max_window")?),
        rcv_wnd: u32_of(t("rcv_wnd", "rcv_wnd")?),
        rcv_wup: u32_of(t("rcv_wup", "rcv_wup")?),
        mss: u32_of(t("mss_clamp", "rx_opt.mss_clamp")?),
        snd_wscale: u32_of(t("snd_wscale", "rx_opt.snd_wscale")?),
        rcv_wscale: u32_of(t("rcv_wscale", "rx_opt.rcv_wscale")?),
        opts: u32::from(tstamp_ok) | u32::from(sack_ok) << 1 | u32::from(wscale_ok) << 2,
        timestamp: ms.wrapping_add(tsoffset),
        send,
        recv,
    })
}

/// The nodes of a red-black tree in order (leftmost first), bounded.
fn rb_in_order(k: &Kernel<'_>, root: u64, queue: &'static str) -> Result<Vec<u64>, TcpError> {
    let (left, right) = (
        rd("rb_left", k.offset_of("rb_node", "rb_left"))?,
        rd("rb_right", k.offset_of("rb_node", "rb_right"))?,
    );
    let mut out = Vec::new();
    let mut stack: Vec<u64> = Vec::new();
    let mut at = root;
    loop {
        while at != 0 {
            if !is_kernel_addr(at) {
                return Err(TcpError::BadPointer {
                    what: "rtx queue node",
                    addr: at,
                });
            }
            if stack.len() >= 64 {
                return Err(TcpError::QueueTooBig { queue });
            }
            stack.push(at);
            at = rd("rb_left", k.read_u64(at.wrapping_add(left)))?;
        }
        let Some(n) = stack.pop() else { break };
        if out.len() >= MAX_SKBS {
            return Err(TcpError::QueueTooBig { queue });
        }
        out.push(n);
        at = rd("rb_right", k.read_u64(n.wrapping_add(right)))?;
    }
    Ok(out)
}

/// The buffers of a `sk_buff_head` list, bounded.
fn list(k: &Kernel<'_>, head: u64, queue: &'static str) -> Result<Vec<u64>, TcpError> {
    let mut out = Vec::new();
    let mut at = rd("queue head", k.read_field("sk_buff_head", "next", head))?;
    while at != head {
        if !is_kernel_addr(at) {
            return Err(TcpError::BadPointer {
                what: "queue buffer",
                addr: at,
            });
        }
        if out.len() >= MAX_SKBS {
            return Err(TcpError::QueueTooBig { queue });
        }
        out.push(at);
        at = rd("skb next", k.read_field("sk_buff", "next", at))?;
    }
    Ok(out)
}

/// Offsets in `sk_buff`, `tcp_skb_cb` and `skb_shared_info`.
struct SkbLayout {
    rbnode: u64,
    cb: u64,
    frags: u64,
    frag_size: u64,
}

impl SkbLayout {
    fn new(k: &Kernel<'_>) -> Result<Self, TcpError> {
        let frag_size = k
            .btf()
            .struct_id("bio_vec")
            .and_then(|id| k.btf().size_of(id).ok())
            .unwrap_or(16);
        Ok(Self {
            rbnode: rd("skb rbnode", k.offset_of("sk_buff", "rbnode"))?,
            cb: rd("skb cb", k.offset_of("sk_buff", "cb"))?,
            frags: rd("skb frags", k.offset_of("skb_shared_info", "frags"))?,
            frag_size,
        })
    }

    /// Appends the payload of TCP buffer `b` (from sequence `from` when given) to `runs`;
    /// returns its length in bytes.
    fn payload(
        &self,
        k: &Kernel<'_>,
        pages: &PageArray,
        b: u64,
        from: Option<u32>,
        queue: &'static str,
        runs: &mut Vec<(u64, u64)>,
    ) -> Result<u64, TcpError> {
        let g = |what: &'static str, p: &'static str| rd(what, k.read_field("sk_buff", p, b));
        let seq = u32_of(rd(
            "skb seq",
            k.read_u32(b.wrapping_add(self.cb)).map(u64::from),
        )?);
        let len = g("skb len", "len")? & 0xffff_ffff;
        let data_len = g("skb data_len", "data_len")? & 0xffff_ffff;
        let data = g("skb data", "data")?;
        let head = g("skb head", "head")?;
        let end = g("skb end", "end")? & 0xffff_ffff;
        // Skip what the program already read (a buffer read in part: `from` is after its
        // start; the buffers after it start after `from`).
        let skip = from.map_or(0, |f| {
            let d = i32::from_ne_bytes(f.wrapping_sub(seq).to_ne_bytes());
            u64::try_from(d.max(0)).unwrap_or(0).min(len)
        });
        let linear = len.saturating_sub(data_len);
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        if linear > 0 {
            let mut va = data;
            let mut left = linear;
            while left > 0 {
                let n = (4096 - (va & 0xfff)).min(left);
                let pa = k.virt_to_phys(va).map_err(|source| TcpError::Read {
                    what: "skb data",
                    source,
                })?;
                pieces.push((pa, n));
                va = va.wrapping_add(n);
                left -= n;
            }
        }
        if data_len > 0 {
            let shinfo = head.wrapping_add(end);
            let nr = rd(
                "nr_frags",
                k.read_field("skb_shared_info", "nr_frags", shinfo),
            )?;
            let frag_list = rd(
                "frag_list",
                k.read_field("skb_shared_info", "frag_list", shinfo),
            )?;
            if frag_list != 0 {
                return Err(TcpError::FragList { queue });
            }
            for i in 0..nr.min(17) {
                let f = shinfo.wrapping_add(self.frags + i * self.frag_size);
                let page = rd("frag page", k.read_field("bio_vec", "bv_page", f))?;
                let flen = rd("frag len", k.read_field("bio_vec", "bv_len", f))? & 0xffff_ffff;
                let off = rd("frag offset", k.read_field("bio_vec", "bv_offset", f))? & 0xffff_ffff;
                let pfn = pages.pfn_of(page).ok_or(TcpError::BadPage { page })?;
                pieces.push((pfn * 4096 + off, flen));
            }
        }
        let total: u64 = pieces.iter().map(|p| p.1).sum();
        if total != len {
            return Err(TcpError::QueueLength {
                queue,
                got: total,
                want: len,
            });
        }
        // Drop the first `skip` bytes, merge what touches, bound the queue.
        let kept = len - skip;
        let mut skip = skip;
        for (pa, n) in pieces {
            let (pa, n) = if skip >= n {
                skip -= n;
                continue;
            } else {
                let r = (pa + skip, n - skip);
                skip = 0;
                r
            };
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == pa => r.1 += n,
                _ => runs.push((pa, n)),
            }
        }
        let total_runs: u64 = runs.iter().map(|r| r.1).sum();
        if total_runs > MAX_QUEUE {
            return Err(TcpError::QueueTooBig { queue });
        }
        Ok(kept)
    }
}
