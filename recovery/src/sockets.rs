//! Sockets and epoll instances of a dead kernel, read through BTF and bounded.
//!
//! A socket is recreated exactly when it is an IPv4/IPv6 TCP socket listening, or a UDP
//! socket bound to a port: its address, port, backlog and `IPV6_V6ONLY` are read from its
//! `struct sock`; an established TCP connection is read for TCP repair ([`crate::tcp`]).
//! Any other socket (a connection being set up or closed, a Unix socket, ...) comes back as a
//! stand-in whose peer is gone ([`Socket::Reset`]): the program sees end of file and `EPIPE`
//! and drops it, as after a reset, and is never left out for holding it.
//!
//! An epoll instance is its interest list: the `struct epitem`s of the `eventpoll`'s
//! red-black tree (`rbr`), each the descriptor number it was added with, its file, and its
//! `epoll_event` (events and data).

use crate::kernel::{is_kernel_addr, Kernel, KernelError};

/// `SOCKFS_MAGIC`: the superblock of sockets.
pub const SOCKFS_MAGIC: u64 = 0x534F_434B;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const SOCK_STREAM: u64 = 1;
const SOCK_DGRAM: u64 = 2;
const IPPROTO_TCP: u64 = 6;
const IPPROTO_UDP: u64 = 17;
const TCP_LISTEN: u64 = 10;
/// Most interest-list entries read from one epoll instance.
pub const MAX_EPOLL_ITEMS: usize = 1 << 16;

/// Why a socket or an epoll instance could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocketError {
    /// A field could not be read.
    #[error("{what}")]
    Read {
        /// Which.
        what: &'static str,
        /// Why.
        #[source]
        source: KernelError,
    },
    /// A pointer that should be a kernel address is not.
    #[error("{what} {addr:#x} is not a kernel address")]
    BadPointer {
        /// Which.
        what: &'static str,
        /// Its value.
        addr: u64,
    },
    /// A message carries more descriptors than the kernel allows (garbage).
    #[error("{0} descriptors in flight with one message (at most {SCM_MAX_FD})")]
    TooManyPassed(u64),
    /// The interest list has more entries than we read, or a cycle.
    #[error("epoll interest list longer than {MAX_EPOLL_ITEMS} entries (or looped)")]
    TooManyItems,
    /// A TCP queue's bytes do not add up to what its sequence numbers say.
    #[error("{queue} queue holds {got} bytes, its sequence numbers say {want}")]
    QueueLength {
        /// `send` or `receive`.
        queue: &'static str,
        got: u64,
        want: u64,
    },
    /// A TCP queue too long to read (or a loop in it).
    #[error("{queue} queue: too many buffers or bytes, or a loop")]
    QueueTooBig {
        /// `send` or `receive`.
        queue: &'static str,
    },
    /// A TCP buffer chains further buffers (`frag_list`).
    #[error("a buffer of the {queue} queue has a fragment list")]
    FragList {
        /// `send` or `receive`.
        queue: &'static str,
    },
    /// A TCP buffer's page fragment is not a `struct page`.
    #[error("a fragment's page {page:#x} is not a struct page")]
    BadPage {
        /// The pointer.
        page: u64,
    },
}

/// What a socket is, for its recreation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Socket {
    /// An IPv4/IPv6 socket to make again: TCP listening, or UDP bound.
    Inet(InetSocket),
    /// An established TCP connection, to repair.
    Tcp(Box<crate::tcp::TcpConn>),
    /// Anything else: comes back as a socket whose peer is gone; `why` says what it was.
    Reset {
        /// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_SEQPACKET`, ...
        sock_type: u32,
        /// What was lost (`tcp connection 10.0.0.1:80`, `unix socket`, ...).
        why: String,
    },
}

/// An IPv4/IPv6 listening or bound socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetSocket {
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    /// `SOCK_STREAM` (listening) or `SOCK_DGRAM` (bound).
    pub sock_type: u32,
    /// Local port, host order.
    pub port: u16,
    /// Local address (IPv4 in the first 4 bytes, network order).
    pub addr: [u8; 16],
    /// `sk_max_ack_backlog` (listening only).
    pub backlog: u32,
    /// `IPV6_V6ONLY`.
    pub v6only: bool,
}

impl InetSocket {
    /// The address as text (`0.0.0.0`, `::1`, ...).
    pub fn addr_text(&self) -> String {
        if u64::from(self.family) == AF_INET {
            std::net::Ipv4Addr::new(self.addr[0], self.addr[1], self.addr[2], self.addr[3])
                .to_string()
        } else {
            std::net::Ipv6Addr::from(self.addr).to_string()
        }
    }
}

pub(crate) fn rd(what: &'static str, r: Result<u64, KernelError>) -> Result<u64, SocketError> {
    r.map_err(|source| SocketError::Read { what, source })
}

/// Reads the socket behind the `struct file` at `file` (a file of sockfs).
pub fn read_socket(k: &Kernel<'_>, file: u64) -> Result<Socket, SocketError> {
    let sock = rd(
        "file private_data",
        k.read_field("file", "private_data", file),
    )?;
    if !is_kernel_addr(sock) {
        return Err(SocketError::BadPointer {
            what: "socket",
            addr: sock,
        });
    }
    let sock_type = rd("socket type", k.read_field("socket", "type", sock))? & 0xffff;
    let sk = rd("socket sk", k.read_field("socket", "sk", sock))?;
    let ty = u32::try_from(sock_type).unwrap_or(0);
    if !is_kernel_addr(sk) {
        return Ok(Socket::Reset {
            sock_type: ty,
            why: "a socket without a sock".into(),
        });
    }
    let f = |what: &'static str, path: &'static str| rd(what, k.read_field("sock", path, sk));
    let family = f("sock family", "__sk_common.skc_family")? & 0xffff;
    let state = f("sock state", "__sk_common.skc_state")? & 0xff;
    let protocol = f("sock protocol", "sk_protocol")? & 0xffff;
    let port = u16::try_from(f("sock port", "__sk_common.skc_num")? & 0xffff).unwrap_or(0);
    let name = match family {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        1 => "unix",
        16 => "netlink",
        17 => "packet",
        _ => "other",
    };
    let inet = family == AF_INET || family == AF_INET6;
    let listening =
        inet && sock_type == SOCK_STREAM && protocol == IPPROTO_TCP && state == TCP_LISTEN;
    let bound_udp = inet && sock_type == SOCK_DGRAM && protocol == IPPROTO_UDP && port != 0;
    if inet
        && sock_type == SOCK_STREAM
        && protocol == IPPROTO_TCP
        && state == crate::tcp::TCP_ESTABLISHED
    {
        return Ok(match crate::tcp::read_tcp(k, sk, family) {
            Ok(c) => Socket::Tcp(Box::new(c)),
            Err(e) => Socket::Reset {
                sock_type: ty,
                why: format!(
                    "{name} tcp connection, port {port}, not repairable ({})",
                    crate::error_chain(&e)
                ),
            },
        });
    }
    if !listening && !bound_udp {
        let why = match (inet, sock_type) {
            (true, SOCK_STREAM) => format!("{name} tcp connection (state {state}), port {port}"),
            (true, SOCK_DGRAM) => format!("{name} udp socket without a port"),
            _ => format!("{name} socket (type {sock_type})"),
        };
        return Ok(Socket::Reset { sock_type: ty, why });
    }
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let a = f("sock address", "__sk_common.skc_rcv_saddr")? & 0xffff_ffff;
        // The field is network order; read as little-endian, its bytes are in order.
        addr[..4].copy_from_slice(&u32::try_from(a).unwrap_or(0).to_le_bytes());
    } else {
        let off = rd(
            "sock v6 address",
            k.offset_of("sock", "__sk_common.skc_v6_rcv_saddr"),
        )?;
        k.read_bytes(sk.wrapping_add(off), &mut addr)
            .map_err(|source| SocketError::Read {
                what: "sock v6 address",
                source,
            })?;
    }
    let backlog = if listening {
        u32::try_from(f("sock backlog", "sk_max_ack_backlog")? & 0xffff_ffff).unwrap_or(0)
    } else {
        0
    };
    let v6only = family == AF_INET6
        && k.read_field("sock", "__sk_common.skc_ipv6only", sk)
            .is_ok_and(|v| v != 0);
    Ok(Socket::Inet(InetSocket {
        family: u32::try_from(family).unwrap_or(0),
        sock_type: ty,
        port,
        addr,
        backlog,
        v6only,
    }))
}

/// True when the `struct file` at `file` is an epoll instance (its `f_op` is
/// `eventpoll_fops`).
pub fn is_epoll(k: &Kernel<'_>, file: u64) -> bool {
    let (Ok(fops), Ok(sym)) = (
        k.read_field("file", "f_op", file),
        k.symbol("eventpoll_fops"),
    ) else {
        return false;
    };
    fops == sym
}

/// One entry of an epoll interest list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollItem {
    /// The descriptor number it was added with.
    pub fd: i32,
    /// Its `struct file`.
    pub file: u64,
    /// `epoll_event.events`.
    pub events: u32,
    /// `epoll_event.data`.
    pub data: u64,
}

/// Reads the interest list of the epoll instance of the `struct file` at `file`, in tree
/// order.
pub fn read_epoll(k: &Kernel<'_>, file: u64) -> Result<Vec<EpollItem>, SocketError> {
    let ep = rd(
        "epoll private_data",
        k.read_field("file", "private_data", file),
    )?;
    if !is_kernel_addr(ep) {
        return Err(SocketError::BadPointer {
            what: "eventpoll",
            addr: ep,
        });
    }
    let root = rd(
        "eventpoll rbr",
        k.read_field("eventpoll", "rbr.rb_root.rb_node", ep),
    )?;
    let off = |what: &'static str, s: &'static str, p: &'static str| rd(what, k.offset_of(s, p));
    let rbn = off("epitem rbn", "epitem", "rbn")?;
    let left = off("rb_node left", "rb_node", "rb_left")?;
    let right = off("rb_node right", "rb_node", "rb_right")?;
    let mut out = Vec::new();
    // In-order walk with an explicit stack; every node is counted, so a cycle ends it.
    let mut stack: Vec<u64> = Vec::new();
    let mut cur = root;
    let mut visits = 0usize;
    loop {
        while cur != 0 {
            if !is_kernel_addr(cur) {
                return Err(SocketError::BadPointer {
                    what: "rb_node",
                    addr: cur,
                });
            }
            visits += 1;
            if visits > MAX_EPOLL_ITEMS || stack.len() > 64 {
                return Err(SocketError::TooManyItems);
            }
            stack.push(cur);
            cur = rd("rb_node left", k.read_u64(cur.wrapping_add(left)))?;
        }
        let Some(node) = stack.pop() else {
            break;
        };
        let item = node.wrapping_sub(rbn);
        let g = |what: &'static str, p: &'static str| rd(what, k.read_field("epitem", p, item));
        let fd = g("epitem fd", "ffd.fd")? & 0xffff_ffff;
        out.push(EpollItem {
            fd: i32::from_ne_bytes(u32::try_from(fd).unwrap_or(0).to_ne_bytes()),
            file: g("epitem file", "ffd.file")?,
            events: u32::try_from(g("epitem events", "event.events")? & 0xffff_ffff).unwrap_or(0),
            data: g("epitem data", "event.data")?,
        });
        cur = rd("rb_node right", k.read_u64(node.wrapping_add(right)))?;
    }
    Ok(out)
}

/// Most queued messages read from one Unix socket.
pub const MAX_UNIX_SKBS: usize = 4096;
/// Most queued bytes read from one Unix socket.
pub const MAX_UNIX_BYTES: u64 = 16 << 20;

/// A connected Unix socket: its peer and the bytes queued for it to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixEnd {
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub sock_type: u32,
    /// The inode number of the peer's socket, when a file holds it.
    pub peer_ino: Option<u64>,
    /// The queued messages, in order (a stream's first message without the bytes
    /// already read).
    pub queued: Vec<UnixQueued>,
}

/// Most descriptors one message carries (`SCM_MAX_FD`).
pub const SCM_MAX_FD: u64 = 253;

/// One message queued on a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnixQueued {
    /// Its bytes, as guest-physical runs.
    pub runs: Vec<(u64, u64)>,
    /// The `struct file`s passed with it (`SCM_RIGHTS`), in order.
    pub files: Vec<u64>,
}

/// Reads the connected Unix socket behind `file`: `Ok(None)` when it is not a connected
/// Unix socket (listening, unbound, ...); an error when its queue cannot be copied
/// exactly (a paged buffer, too much data, an unreadable list of descriptors in flight).
pub fn read_unix(k: &Kernel<'_>, file: u64) -> Result<Option<UnixEnd>, SocketError> {
    let sock = rd(
        "file private_data",
        k.read_field("file", "private_data", file),
    )?;
    if !is_kernel_addr(sock) {
        return Ok(None);
    }
    let sock_type = rd("socket type", k.read_field("socket", "type", sock))? & 0xffff;
    let sk = rd("socket sk", k.read_field("socket", "sk", sock))?;
    if !is_kernel_addr(sk) {
        return Ok(None);
    }
    let family = rd(
        "sock family",
        k.read_field("sock", "__sk_common.skc_family", sk),
    )? & 0xffff;
    if family != 1 || ![1, 2, 5].contains(&sock_type) {
        return Ok(None);
    }
    let peer = rd("unix peer", k.read_field("unix_sock", "peer", sk))?;
    if !is_kernel_addr(peer) {
        return Ok(None);
    }
    // The peer's inode number: peer sock -> its socket -> its file -> inode.
    let peer_ino = (|| {
        let psock = k.read_field("sock", "sk_socket", peer).ok()?;
        let pfile = k.read_field("socket", "file", psock).ok()?;
        let pinode = k.read_field("file", "f_inode", pfile).ok()?;
        k.read_field("inode", "i_ino", pinode).ok()
    })();
    let qoff = rd("receive queue", k.offset_of("sock", "sk_receive_queue"))?;
    let head = sk.wrapping_add(qoff);
    let cb = rd("skb cb", k.offset_of("sk_buff", "cb"))?;
    let (fp_off, consumed_off) = (
        k.offset_of("unix_skb_parms", "fp").unwrap_or(16),
        k.offset_of("unix_skb_parms", "consumed").unwrap_or(24),
    );
    let mut queued = Vec::new();
    let mut total = 0u64;
    let mut skb = rd("queue head", k.read_field("sk_buff_head", "next", head))?;
    while skb != head {
        if !is_kernel_addr(skb) || queued.len() >= MAX_UNIX_SKBS {
            return Err(SocketError::TooManyItems);
        }
        let g = |what: &'static str, p: &'static str| rd(what, k.read_field("sk_buff", p, skb));
        let len = g("skb len", "len")? & 0xffff_ffff;
        let data_len = g("skb data_len", "data_len")? & 0xffff_ffff;
        let data = g("skb data", "data")?;
        let fp = rd("skb fds", k.read_u64(skb.wrapping_add(cb + fp_off)))?;
        if data_len != 0 {
            return Err(SocketError::BadPointer {
                what: "paged data at skb",
                addr: skb,
            });
        }
        let files = if fp == 0 {
            Vec::new()
        } else {
            read_fp_list(k, fp)?
        };
        let skip = if sock_type == 1 {
            rd(
                "skb consumed",
                k.read_u64(skb.wrapping_add(cb + consumed_off)),
            )? & 0xffff_ffff
        } else {
            0
        };
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut va = data.wrapping_add(skip);
        let mut left = len.saturating_sub(skip);
        total = total.saturating_add(left);
        if total > MAX_UNIX_BYTES {
            return Err(SocketError::TooManyItems);
        }
        while left > 0 {
            let in_page = (4096 - (va & 0xfff)).min(left);
            let pa = k.virt_to_phys(va).map_err(|source| SocketError::Read {
                what: "skb data",
                source,
            })?;
            match runs.last_mut() {
                Some(r) if r.0 + r.1 == pa => r.1 += in_page,
                _ => runs.push((pa, in_page)),
            }
            va = va.wrapping_add(in_page);
            left -= in_page;
        }
        if !runs.is_empty() || !files.is_empty() || sock_type != 1 {
            queued.push(UnixQueued { runs, files });
        }
        skb = g("skb next", "next")?;
    }
    Ok(Some(UnixEnd {
        sock_type: u32::try_from(sock_type).unwrap_or(1),
        peer_ino,
        queued,
    }))
}

/// The files of the `struct scm_fp_list` at `fp` (descriptors passed with a message).
fn read_fp_list(k: &Kernel<'_>, fp: u64) -> Result<Vec<u64>, SocketError> {
    if !is_kernel_addr(fp) {
        return Err(SocketError::BadPointer {
            what: "descriptor list",
            addr: fp,
        });
    }
    let count = rd("descriptor count", k.read_field("scm_fp_list", "count", fp))? & 0xffff;
    if count > SCM_MAX_FD {
        return Err(SocketError::TooManyPassed(count));
    }
    let at = fp.wrapping_add(rd("descriptor array", k.offset_of("scm_fp_list", "fp"))?);
    let mut files = Vec::new();
    for i in 0..count {
        let file = rd("passed file", k.read_u64(at.wrapping_add(i * 8)))?;
        if !is_kernel_addr(file) || file & 7 != 0 {
            return Err(SocketError::BadPointer {
                what: "passed file",
                addr: file,
            });
        }
        files.push(file);
    }
    Ok(files)
}

/// A listening Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListener {
    /// `SOCK_STREAM` or `SOCK_SEQPACKET`.
    pub sock_type: u32,
    /// `sk_max_ack_backlog`.
    pub backlog: u32,
    /// `sun_path` as bound (a leading NUL: an abstract name).
    pub path: Vec<u8>,
}

/// Reads the listening Unix socket behind `file` (None: not one, or not bound).
pub fn read_unix_listener(k: &Kernel<'_>, file: u64) -> Option<UnixListener> {
    let sock = k.read_field("file", "private_data", file).ok()?;
    let sock_type = k.read_field("socket", "type", sock).ok()? & 0xffff;
    let sk = k.read_field("socket", "sk", sock).ok()?;
    if !is_kernel_addr(sk) {
        return None;
    }
    let family = k.read_field("sock", "__sk_common.skc_family", sk).ok()? & 0xffff;
    let state = k.read_field("sock", "__sk_common.skc_state", sk).ok()? & 0xff;
    if family != 1 || state != TCP_LISTEN || ![1, 5].contains(&sock_type) {
        return None;
    }
    let addr = k.read_field("unix_sock", "addr", sk).ok()?;
    if !is_kernel_addr(addr) {
        return None;
    }
    let len = k.read_field("unix_address", "len", addr).ok()? & 0xffff_ffff;
    // sockaddr_un: the family (2 bytes), then at most 108 bytes of path.
    if !(3..=110).contains(&len) {
        return None;
    }
    let name = addr.wrapping_add(k.offset_of("unix_address", "name").ok()?);
    let mut path = vec![0u8; usize::try_from(len - 2).ok()?];
    k.read_bytes(name.wrapping_add(2), &mut path).ok()?;
    // A filesystem name is NUL-terminated within `len`.
    if path.first() != Some(&0) {
        if let Some(end) = path.iter().position(|&b| b == 0) {
            path.truncate(end);
        }
    }
    Some(UnixListener {
        sock_type: u32::try_from(sock_type).unwrap_or(1),
        backlog: u32::try_from(k.read_field("sock", "sk_max_ack_backlog", sk).ok()? & 0xffff_ffff)
            .unwrap_or(0),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::build::Builder;
    use crate::btf::Btf;
    use crate::kernel::testmem::{dm, Mem};
    use crate::symbols::SymbolTable;

    const MAP: &str = "\
ffffffff81000000 T _text
ffffffff81100100 D phys_base
ffffffff81101000 D init_top_pgt
ffffffff81400000 B _end
";

    #[test]
    fn the_files_in_flight_with_a_message_bounded_and_checked() {
        let mut b = Builder::new();
        let short = b.int("short int", 2);
        let ptr = b.int("long unsigned int", 8);
        let arr = b.array(ptr, ptr, 253);
        b.strukt(
            "scm_fp_list",
            16 + 253 * 8,
            &[
                ("count", short, 0),
                ("max", short, 16),
                ("user", ptr, 64),
                ("fp", arr, 128),
            ],
        );
        let btf = Btf::parse(&b.finish()).expect("btf");
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let mut m = Mem::new(0x120_0000);
        let fp = 0x100_0000;
        m.put_u32(fp, 2);
        m.put_u64(fp + 16, dm(0x100_1000));
        m.put_u64(fp + 24, dm(0x100_2000));
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert_eq!(
            read_fp_list(&k, dm(fp)).expect("list"),
            vec![dm(0x100_1000), dm(0x100_2000)]
        );
        // A user address among them: not believed.
        m.put_u64(fp + 24, 0x7fff_0000_1000);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert!(matches!(
            read_fp_list(&k, dm(fp)),
            Err(SocketError::BadPointer {
                what: "passed file",
                ..
            })
        ));
        // More than SCM_MAX_FD: garbage.
        m.put_u32(fp, 254);
        let k = Kernel::new(&m, &syms, &btf).expect("kernel");
        assert!(matches!(
            read_fp_list(&k, dm(fp)),
            Err(SocketError::TooManyPassed(254))
        ));
        assert!(read_fp_list(&k, 0x1000).is_err());
    }
}
