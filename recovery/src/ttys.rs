//! Terminals of a dead kernel, read through BTF: a descriptor is a terminal when its
//! `f_op` is `tty_fops`, `ptmx_fops` or `console_fops`; its `private_data` is a
//! `struct tty_file_private` naming the `struct tty_struct`.
//!
//! A Unix98 pseudo-terminal (driver type `PTY`, devpts-backed) is made again as a pair
//! with the slave's `termios` and window size, its session and foreground process
//! group, and the bytes in flight, read bounded:
//! - the slave's line discipline buffer (`n_tty_data.read_buf`, `read_tail..read_head`):
//!   input the slave's readers had not read, already edited and echoed;
//! - the slave port's flip buffers: bytes written to the master the line discipline had
//!   not taken in yet;
//! - the master's line discipline buffer and flip buffers: output the master's reader
//!   (a terminal emulator, `script`, `sshd`) had not read.
//!
//! Any other terminal (the serial console) is reopened by its path; its `termios` and
//! window size go along so a program that had made it raw finds it raw.

use crate::kernel::{is_kernel_addr, Kernel, KernelError};
use owvmm_manifest as wire;

/// `TTY_DRIVER_TYPE_PTY`.
const DRIVER_TYPE_PTY: u64 = 4;
/// `PTY_TYPE_MASTER`.
const PTY_TYPE_MASTER: u64 = 1;
/// `PTY_TYPE_SLAVE`.
const PTY_TYPE_SLAVE: u64 = 2;
/// `TTY_DRIVER_DEVPTS_MEM`: a Unix98 pty (legacy BSD ptys are not made again).
const TTY_DRIVER_DEVPTS_MEM: u64 = 0x8;
/// `N_TTY_BUF_SIZE`: the ring of `n_tty_data.read_buf`.
const N_TTY_BUF_SIZE: u64 = 4096;
/// Most flip buffers followed on one port (the kernel limits a port to 64 KiB of them,
/// 256 bytes at least each).
const MAX_FLIP_BUFFERS: usize = 512;
/// Most bytes one flip buffer may hold.
const MAX_FLIP_SIZE: u64 = 64 << 10;
/// Most bytes in flight taken from one pty (more is dropped with a note).
pub const MAX_PTY_BYTES: u64 = 256 << 10;
/// Highest `/dev/pts` number believed (`NR_UNIX98_PTY_MAX`).
const MAX_PTY_INDEX: u64 = 1 << 20;

/// Why a terminal could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtyError {
    /// A field could not be read.
    #[error("{what}")]
    Read {
        /// Which.
        what: &'static str,
        /// Why.
        #[source]
        source: KernelError,
    },
    /// A pointer that must be a kernel address is not.
    #[error("{what} {addr:#x} is not a kernel address")]
    BadPointer {
        /// Which.
        what: &'static str,
        /// Its value.
        addr: u64,
    },
    /// A pty whose other end is missing or is not its pair.
    #[error("pty {index}: other end {link:#x} is not its pair")]
    BadLink {
        /// `tty.index`.
        index: u64,
        /// `tty.link`.
        link: u64,
    },
    /// A pty number out of range.
    #[error("pty number {0} out of range")]
    BadIndex(u64),
    /// The line discipline's read ring holds more than it can.
    #[error("read ring: head {head}, tail {tail}")]
    BadRing {
        /// `read_head`.
        head: u64,
        /// `read_tail`.
        tail: u64,
    },
    /// A flip buffer whose numbers do not make sense.
    #[error("flip buffer {addr:#x}: size {size}, commit {commit}, read {read}")]
    BadFlip {
        /// Its address.
        addr: u64,
        /// `size`.
        size: u64,
        /// `commit`.
        commit: u64,
        /// `read`.
        read: u64,
    },
    /// More flip buffers than a port can have.
    #[error("more than {MAX_FLIP_BUFFERS} flip buffers")]
    TooManyFlipBuffers,
    /// A legacy (BSD) pty.
    #[error("legacy BSD pty ({0}): not made again")]
    Legacy(String),
}

/// Which end of a pty a descriptor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// `/dev/ptmx`.
    Master,
    /// `/dev/pts/N`.
    Slave,
}

/// A pseudo-terminal pair.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pty {
    /// Its `/dev/pts` number.
    pub index: u32,
    /// The session it is the controlling terminal of (0: none).
    pub sid: u32,
    /// Its foreground process group (0: none).
    pub pgrp: u32,
    /// The slave's settings.
    pub termios: wire::Termios,
    /// Its window size.
    pub winsize: wire::Winsize,
    /// Unread input of the slave, as guest-physical runs.
    pub input: Vec<(u64, u64)>,
    /// Unread output at the master.
    pub output: Vec<(u64, u64)>,
    /// Bytes written to the master the slave's line discipline had not taken in.
    pub typed: Vec<(u64, u64)>,
    /// What could not be read of the bytes in flight (they are dropped).
    pub notes: Vec<String>,
}

/// What a terminal descriptor holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtyFile {
    /// An end of a pty pair.
    Pty {
        /// Which end.
        end: End,
        /// The pair.
        pty: Box<Pty>,
    },
    /// Another terminal, reopened by path: its settings and its session.
    Other {
        /// `termios`.
        termios: wire::Termios,
        /// Window size.
        winsize: wire::Winsize,
        /// The session it is the controlling terminal of (0: none).
        sid: u32,
        /// Its foreground process group (0: none).
        pgrp: u32,
        /// Its device path (`/dev/` and its name: `/dev/ttyS0`), whichever alias opened
        /// it (`/dev/tty`, `/dev/console`); None when the name is not a plain one.
        device: Option<String>,
    },
}

fn rd(what: &'static str, r: Result<u64, KernelError>) -> Result<u64, TtyError> {
    r.map_err(|source| TtyError::Read { what, source })
}

fn pointer(what: &'static str, addr: u64) -> Result<u64, TtyError> {
    if is_kernel_addr(addr) {
        Ok(addr)
    } else {
        Err(TtyError::BadPointer { what, addr })
    }
}

/// Reads the terminal behind the `struct file` at `file`, when it is one (None: another
/// kind of file).
pub fn read_tty(k: &Kernel<'_>, file: u64) -> Option<Result<TtyFile, TtyError>> {
    let fops = k.read_field("file", "f_op", file).ok()?;
    let is = |sym: &str| k.symbol(sym).is_ok_and(|a| a == fops);
    if !(is("tty_fops") || is("ptmx_fops") || is("console_fops")) {
        return None;
    }
    Some(read_terminal(k, file))
}

fn read_terminal(k: &Kernel<'_>, file: u64) -> Result<TtyFile, TtyError> {
    let private = pointer(
        "private_data",
        rd("private_data", k.read_field("file", "private_data", file))?,
    )?;
    let tty = pointer(
        "tty",
        rd(
            "tty_file_private.tty",
            k.read_field("tty_file_private", "tty", private),
        )?,
    )?;
    let driver = pointer(
        "driver",
        rd("tty.driver", k.read_field("tty_struct", "driver", tty))?,
    )?;
    let ty = rd("driver type", k.read_field("tty_driver", "type", driver))?;
    if ty != DRIVER_TYPE_PTY {
        return Ok(TtyFile::Other {
            termios: termios(k, tty)?,
            winsize: winsize(k, tty)?,
            sid: ctrl_pid(k, tty, "ctrl.session"),
            pgrp: ctrl_pid(k, tty, "ctrl.pgrp"),
            device: device_path(k, tty),
        });
    }
    let subtype = rd(
        "driver subtype",
        k.read_field("tty_driver", "subtype", driver),
    )?;
    let flags = rd("driver flags", k.read_field("tty_driver", "flags", driver))?;
    let index = rd("tty.index", k.read_field("tty_struct", "index", tty))? & 0xffff_ffff;
    if flags & TTY_DRIVER_DEVPTS_MEM == 0 {
        let name = k
            .offset_of("tty_struct", "name")
            .and_then(|o| k.read_cstr(tty.wrapping_add(o), 64))
            .unwrap_or_default();
        return Err(TtyError::Legacy(name));
    }
    let link = rd("tty.link", k.read_field("tty_struct", "link", tty))?;
    let bad_link = || TtyError::BadLink { index, link };
    if !is_kernel_addr(link)
        || rd("link.link", k.read_field("tty_struct", "link", link))? != tty
        || rd("link.index", k.read_field("tty_struct", "index", link))? & 0xffff_ffff != index
    {
        return Err(bad_link());
    }
    let (end, master, slave) = match subtype {
        PTY_TYPE_MASTER => (End::Master, tty, link),
        PTY_TYPE_SLAVE => (End::Slave, link, tty),
        _ => return Err(bad_link()),
    };
    if index >= MAX_PTY_INDEX {
        return Err(TtyError::BadIndex(index));
    }
    let mut pty = Pty {
        index: u32::try_from(index).map_err(|_| TtyError::BadIndex(index))?,
        sid: ctrl_pid(k, slave, "ctrl.session"),
        pgrp: ctrl_pid(k, slave, "ctrl.pgrp"),
        termios: termios(k, slave)?,
        winsize: winsize(k, slave)?,
        ..Pty::default()
    };
    let mut budget = MAX_PTY_BYTES;
    let mut take =
        |what: &str, r: Result<Vec<(u64, u64)>, TtyError>, notes: &mut Vec<String>| match r {
            Ok(mut runs) => {
                clip(&mut runs, &mut budget, what, notes);
                runs
            }
            Err(e) => {
                notes.push(format!(
                    "pty {index}: {what} not read ({}): dropped",
                    crate::error_chain(&e)
                ));
                Vec::new()
            }
        };
    let mut notes = Vec::new();
    pty.input = take("input", line_buffer(k, slave), &mut notes);
    pty.typed = take("typed input", flip_buffers(k, slave), &mut notes);
    let mut output = take("output", line_buffer(k, master), &mut notes);
    let more = take("output", flip_buffers(k, master), &mut notes);
    append_runs(&mut output, &more);
    pty.output = output;
    pty.notes = notes;
    Ok(TtyFile::Pty {
        end,
        pty: Box::new(pty),
    })
}

/// `/dev/<tty.name>`, when the name is a plain device name.
fn device_path(k: &Kernel<'_>, tty: u64) -> Option<String> {
    let off = k.offset_of("tty_struct", "name").ok()?;
    let name = k.read_cstr(tty.wrapping_add(off), 64).ok()?;
    plain_device_name(&name).then(|| format!("/dev/{name}"))
}

fn plain_device_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Keeps at most `budget` bytes of `runs`, noting what is dropped.
fn clip(runs: &mut Vec<(u64, u64)>, budget: &mut u64, what: &str, notes: &mut Vec<String>) {
    let total: u64 = runs.iter().map(|r| r.1).sum();
    let mut left = *budget;
    runs.retain_mut(|r| {
        let keep = r.1.min(left);
        left -= keep;
        r.1 = keep;
        keep > 0
    });
    if total > *budget {
        notes.push(format!(
            "{what}: {} of {total} bytes kept (the rest dropped)",
            *budget
        ));
    }
    *budget = left;
}

fn append_runs(runs: &mut Vec<(u64, u64)>, more: &[(u64, u64)]) {
    for &(gpa, len) in more {
        match runs.last_mut() {
            Some(last) if last.0 + last.1 == gpa => last.1 += len,
            _ => runs.push((gpa, len)),
        }
    }
}

/// The guest-physical runs of `len` kernel-virtual bytes at `va`, page by page.
fn phys_runs(k: &Kernel<'_>, va: u64, len: u64, out: &mut Vec<(u64, u64)>) -> Result<(), TtyError> {
    let mut done = 0;
    while done < len {
        let cur = va.wrapping_add(done);
        let n = (4096 - (cur & 0xfff)).min(len - done);
        let pa = k.virt_to_phys(cur).map_err(|source| TtyError::Read {
            what: "buffered bytes",
            source,
        })?;
        let mut probe = [0u8; 1];
        if !k.mem().read_phys(pa, &mut probe) || !k.mem().read_phys(pa + n - 1, &mut probe) {
            return Err(TtyError::Read {
                what: "buffered bytes",
                source: KernelError::Unreadable { va: cur, pa },
            });
        }
        append_runs(out, &[(pa, n)]);
        done += n;
    }
    Ok(())
}

/// The pid number of `tty.ctrl.session` or `.pgrp` (0: none or unreadable).
fn ctrl_pid(k: &Kernel<'_>, tty: u64, field: &str) -> u32 {
    let pid = k.read_field("tty_struct", field, tty).unwrap_or(0);
    if !is_kernel_addr(pid) {
        return 0;
    }
    let nr = crate::tasks::pid_nr_offset(k).and_then(|o| k.read_u32(pid.wrapping_add(o)));
    nr.unwrap_or(0)
}

fn termios(k: &Kernel<'_>, tty: u64) -> Result<wire::Termios, TtyError> {
    let base = tty.wrapping_add(rd("tty.termios", k.offset_of("tty_struct", "termios"))?);
    let f = |field: &'static str| {
        rd(field, k.read_field("ktermios", field, base))
            .map(|v| u32::try_from(v & 0xffff_ffff).unwrap_or_default())
    };
    let cc_off = rd("c_cc", k.offset_of("ktermios", "c_cc"))?;
    let mut cc = [0u8; 19];
    k.read_bytes(base.wrapping_add(cc_off), &mut cc)
        .map_err(|source| TtyError::Read {
            what: "c_cc",
            source,
        })?;
    Ok(wire::Termios {
        iflag: f("c_iflag")?,
        oflag: f("c_oflag")?,
        cflag: f("c_cflag")?,
        lflag: f("c_lflag")?,
        line: u8::try_from(f("c_line")? & 0xff).unwrap_or_default(),
        cc,
        ispeed: f("c_ispeed")?,
        ospeed: f("c_ospeed")?,
    })
}

fn winsize(k: &Kernel<'_>, tty: u64) -> Result<wire::Winsize, TtyError> {
    let base = tty.wrapping_add(rd("tty.winsize", k.offset_of("tty_struct", "winsize"))?);
    let f = |field: &'static str| {
        rd(field, k.read_field("winsize", field, base))
            .map(|v| u16::try_from(v & 0xffff).unwrap_or_default())
    };
    Ok(wire::Winsize {
        rows: f("ws_row")?,
        cols: f("ws_col")?,
        xpixel: f("ws_xpixel")?,
        ypixel: f("ws_ypixel")?,
    })
}

/// The unread bytes of the `n_tty` line discipline of `tty` (none under another one).
fn line_buffer(k: &Kernel<'_>, tty: u64) -> Result<Vec<(u64, u64)>, TtyError> {
    let ldisc = rd("tty.ldisc", k.read_field("tty_struct", "ldisc", tty))?;
    if !is_kernel_addr(ldisc) {
        return Ok(Vec::new());
    }
    let ops = rd("ldisc ops", k.read_field("tty_ldisc", "ops", ldisc))?;
    if k.symbol("n_tty_ops").ok() != Some(ops) {
        return Ok(Vec::new());
    }
    let data = pointer(
        "disc_data",
        rd(
            "tty.disc_data",
            k.read_field("tty_struct", "disc_data", tty),
        )?,
    )?;
    let f = |field: &'static str| rd(field, k.read_field("n_tty_data", field, data));
    let head = f("read_head")?;
    let tail = f("read_tail")?;
    let used = head.wrapping_sub(tail);
    if used > N_TTY_BUF_SIZE {
        return Err(TtyError::BadRing { head, tail });
    }
    let buf = data.wrapping_add(rd("read_buf", k.offset_of("n_tty_data", "read_buf"))?);
    let mut out = Vec::new();
    let start = tail & (N_TTY_BUF_SIZE - 1);
    let first = used.min(N_TTY_BUF_SIZE - start);
    phys_runs(k, buf.wrapping_add(start), first, &mut out)?;
    phys_runs(k, buf, used - first, &mut out)?;
    Ok(out)
}

/// The bytes in the flip buffers of `tty`'s port, not yet taken by its line discipline.
fn flip_buffers(k: &Kernel<'_>, tty: u64) -> Result<Vec<(u64, u64)>, TtyError> {
    let port = rd("tty.port", k.read_field("tty_struct", "port", tty))?;
    if !is_kernel_addr(port) {
        return Ok(Vec::new());
    }
    let data_off = rd("tty_buffer.data", k.offset_of("tty_buffer", "data"))?;
    let mut b = rd("buf.head", k.read_field("tty_port", "buf.head", port))?;
    let mut out = Vec::new();
    for _ in 0..MAX_FLIP_BUFFERS {
        if b == 0 {
            return Ok(out);
        }
        let b_ = pointer("flip buffer", b)?;
        let f = |field: &'static str| {
            rd(field, k.read_field("tty_buffer", field, b_)).map(|v| v & 0xffff_ffff)
        };
        let (size, commit, read) = (f("size")?, f("commit")?, f("read")?);
        if size > MAX_FLIP_SIZE || commit > size || read > commit {
            return Err(TtyError::BadFlip {
                addr: b_,
                size,
                commit,
                read,
            });
        }
        phys_runs(
            k,
            b_.wrapping_add(data_off).wrapping_add(read),
            commit - read,
            &mut out,
        )?;
        b = rd("flip next", k.read_field("tty_buffer", "next", b_))?;
    }
    Err(TtyError::TooManyFlipBuffers)
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
ffffffff81200000 D tty_fops
ffffffff81200200 D n_tty_ops
ffffffff81200400 D eventfd_fops
ffffffff81400000 B _end
";
    const TTY_FOPS: u64 = 0xffff_ffff_8120_0000;
    const N_TTY_OPS: u64 = 0xffff_ffff_8120_0200;

    /// Test layouts (bit offsets) of the structures a terminal is read from.
    fn btf() -> Btf {
        let mut b = Builder::new();
        let u8t = b.int("unsigned char", 1);
        let u16t = b.int("short unsigned int", 2);
        let u32t = b.int("unsigned int", 4);
        let int = b.int("int", 4);
        let short = b.int("short int", 2);
        let ulong = b.int("long unsigned int", 8);
        b.strukt(
            "file",
            16,
            &[("f_op", ulong, 0), ("private_data", ulong, 64)],
        );
        b.strukt("tty_file_private", 8, &[("tty", ulong, 0)]);
        b.strukt(
            "tty_driver",
            16,
            &[
                ("type", short, 0),
                ("subtype", short, 16),
                ("flags", ulong, 64),
            ],
        );
        let cc = b.array(u8t, u32t, 19);
        let ktermios = b.strukt(
            "ktermios",
            44,
            &[
                ("c_iflag", u32t, 0),
                ("c_oflag", u32t, 32),
                ("c_cflag", u32t, 64),
                ("c_lflag", u32t, 96),
                ("c_line", u8t, 128),
                ("c_cc", cc, 136),
                ("c_ispeed", u32t, 288),
                ("c_ospeed", u32t, 320),
            ],
        );
        let winsize = b.strukt(
            "winsize",
            8,
            &[
                ("ws_row", u16t, 0),
                ("ws_col", u16t, 16),
                ("ws_xpixel", u16t, 32),
                ("ws_ypixel", u16t, 48),
            ],
        );
        let ctrl = b.strukt("", 16, &[("pgrp", ulong, 0), ("session", ulong, 64)]);
        let name = b.array(u8t, u32t, 64);
        b.strukt(
            "tty_struct",
            256,
            &[
                ("driver", ulong, 0),
                ("index", int, 64),
                ("ldisc", ulong, 128),
                ("termios", ktermios, 192),
                ("winsize", winsize, 576),
                ("ctrl", ctrl, 640),
                ("link", ulong, 768),
                ("disc_data", ulong, 832),
                ("port", ulong, 896),
                ("name", name, 960),
            ],
        );
        b.strukt("tty_ldisc", 8, &[("ops", ulong, 0)]);
        let rbuf = b.array(u8t, u32t, 4096);
        b.strukt(
            "n_tty_data",
            16 + 4096,
            &[
                ("read_head", ulong, 0),
                ("read_tail", ulong, 64),
                ("read_buf", rbuf, 128),
            ],
        );
        let bufhead = b.strukt("tty_bufhead", 8, &[("head", ulong, 0)]);
        b.strukt("tty_port", 8, &[("buf", bufhead, 0)]);
        let data = b.array(ulong, u32t, 0);
        b.strukt(
            "tty_buffer",
            24,
            &[
                ("next", ulong, 0),
                ("size", int, 64),
                ("commit", int, 96),
                ("read", int, 128),
                ("data", data, 192),
            ],
        );
        let upid = b.strukt("upid", 8, &[("nr", int, 0)]);
        let numbers = b.array(upid, u32t, 1);
        b.strukt("pid", 16, &[("numbers", numbers, 64)]);
        Btf::parse(&b.finish()).expect("btf")
    }

    const FILE: u64 = 0x20_0000;
    const PRIV: u64 = 0x20_0100;
    const DRV_M: u64 = 0x20_0200;
    const DRV_S: u64 = 0x20_0300;
    const LDISC: u64 = 0x20_0400;
    const PORT_M: u64 = 0x20_0500;
    const PORT_S: u64 = 0x20_0600;
    const SID: u64 = 0x20_0700;
    const PGRP: u64 = 0x20_0800;
    const MASTER: u64 = 0x20_1000;
    const SLAVE: u64 = 0x20_2000;
    const DATA_M: u64 = 0x20_4000;
    const DATA_S: u64 = 0x20_8000;
    const FLIP: u64 = 0x20_c000;
    /// Where `read_buf` starts in `n_tty_data`.
    const RBUF: u64 = 16;

    fn put_tty(m: &mut Mem, at: u64, drv: u64, link: u64, data: u64, port: u64) {
        m.put_u64(at, dm(drv));
        m.put_u32(at + 8, 3); // /dev/pts/3
        m.put_u64(at + 16, dm(LDISC));
        m.put_u64(at + 96, dm(link));
        m.put_u64(at + 104, dm(data));
        m.put_u64(at + 112, dm(port));
    }

    /// A pty pair: the slave with termios and window size, 5 unread input bytes wrapping
    /// around its ring, 3 typed bytes in its flip buffer; the master with 4 bytes of output.
    fn pty_memory() -> Mem {
        let mut m = Mem::new(0x30_0000);
        m.put_u64(FILE, TTY_FOPS);
        m.put_u64(FILE + 8, dm(PRIV));
        m.put_u64(PRIV, dm(SLAVE));
        for (drv, sub) in [(DRV_M, 1u16), (DRV_S, 2)] {
            m.put(drv, &4u16.to_le_bytes());
            m.put(drv + 2, &sub.to_le_bytes());
            m.put_u64(drv + 8, TTY_DRIVER_DEVPTS_MEM);
        }
        m.put_u64(LDISC, N_TTY_OPS);
        put_tty(&mut m, MASTER, DRV_M, SLAVE, DATA_M, PORT_M);
        put_tty(&mut m, SLAVE, DRV_S, MASTER, DATA_S, PORT_S);
        // The slave's settings.
        m.put_u32(SLAVE + 24, 0x500);
        m.put_u32(SLAVE + 24 + 12, 0x8a3b);
        m.put(SLAVE + 24 + 17, &[3, 0x1c, 0x7f]);
        m.put_u32(SLAVE + 24 + 36, 38400);
        m.put(SLAVE + 72, &[24, 0, 80, 0]);
        m.put_u64(SLAVE + 80, dm(PGRP));
        m.put_u64(SLAVE + 88, dm(SID));
        m.put_u32(SID + 8, 1005);
        m.put_u32(PGRP + 8, 1007);
        // Input: tail 4094, head 4099 (two bytes at the ring's end, three at its start).
        m.put_u64(DATA_S, 4099);
        m.put_u64(DATA_S + 8, 4094);
        // Output: four bytes from 10.
        m.put_u64(DATA_M, 14);
        m.put_u64(DATA_M + 8, 10);
        // Typed: a flip buffer of 32 bytes, 3 committed past the 2 read.
        m.put_u64(PORT_S, dm(FLIP));
        m.put_u32(FLIP + 8, 32);
        m.put_u32(FLIP + 12, 5);
        m.put_u32(FLIP + 16, 2);
        m
    }

    fn read(m: &Mem) -> Option<Result<TtyFile, TtyError>> {
        let syms = SymbolTable::parse_system_map(MAP).expect("map");
        let btf = btf();
        let k = Kernel::new(m, &syms, &btf).expect("kernel");
        read_tty(&k, dm(FILE))
    }

    #[test]
    fn a_pty_slave_is_read_with_its_pair_settings_and_bytes() {
        let Some(Ok(TtyFile::Pty { end, pty })) = read(&pty_memory()) else {
            panic!("not read as a pty: {:?}", read(&pty_memory()));
        };
        assert_eq!(end, End::Slave);
        assert_eq!((pty.index, pty.sid, pty.pgrp), (3, 1005, 1007));
        assert_eq!((pty.termios.iflag, pty.termios.lflag), (0x500, 0x8a3b));
        assert_eq!(&pty.termios.cc[..3], &[3, 0x1c, 0x7f]);
        assert_eq!(pty.termios.ispeed, 38400);
        assert_eq!((pty.winsize.rows, pty.winsize.cols), (24, 80));
        let s = DATA_S + RBUF;
        assert_eq!(pty.input, vec![(s + 4094, 2), (s, 3)]);
        assert_eq!(pty.output, vec![(DATA_M + RBUF + 10, 4)]);
        assert_eq!(pty.typed, vec![(FLIP + 24 + 2, 3)]);
        assert!(pty.notes.is_empty(), "{:?}", pty.notes);
    }

    #[test]
    fn a_master_is_the_same_pair_from_the_other_end() {
        let mut m = pty_memory();
        m.put_u64(PRIV, dm(MASTER));
        let Some(Ok(TtyFile::Pty { end, pty })) = read(&m) else {
            panic!("not a pty");
        };
        assert_eq!((end, pty.index, pty.sid), (End::Master, 3, 1005));
    }

    #[test]
    fn bad_rings_and_links_are_refused_or_dropped_with_a_note() {
        // A ring claiming more than it holds: the input is dropped, the pty still made.
        let mut m = pty_memory();
        m.put_u64(DATA_S, 4094 + 5000);
        let Some(Ok(TtyFile::Pty { pty, .. })) = read(&m) else {
            panic!("not a pty");
        };
        assert!(pty.input.is_empty());
        assert!(
            pty.notes.iter().any(|n| n.contains("input")),
            "{:?}",
            pty.notes
        );
        // A flip buffer chain that loops is cut, with a note.
        let mut m = pty_memory();
        m.put_u64(FLIP, dm(FLIP));
        let Some(Ok(TtyFile::Pty { pty, .. })) = read(&m) else {
            panic!("not a pty");
        };
        assert!(pty.typed.is_empty(), "{:?}", pty.typed);
        // The other end does not link back: refused.
        let mut m = pty_memory();
        m.put_u64(MASTER + 96, dm(MASTER));
        assert!(matches!(read(&m), Some(Err(TtyError::BadLink { .. }))));
        // Not a terminal at all.
        let mut m = pty_memory();
        m.put_u64(FILE, 0xffff_ffff_8120_0400);
        assert!(read(&m).is_none());
    }

    #[test]
    fn a_serial_console_is_read_by_its_settings_and_device_name() {
        let mut m = pty_memory();
        m.put(DRV_S, &3u16.to_le_bytes()); // TTY_DRIVER_TYPE_SERIAL
        m.put(SLAVE + 120, b"ttyS0\0");
        let Some(Ok(TtyFile::Other {
            termios,
            winsize,
            sid,
            device,
            ..
        })) = read(&m)
        else {
            panic!("not a console");
        };
        assert_eq!(termios.lflag, 0x8a3b);
        assert_eq!(winsize.cols, 80);
        assert_eq!(sid, 1005);
        assert_eq!(device.as_deref(), Some("/dev/ttyS0"));
    }

    #[test]
    fn clip_keeps_the_budget_and_says_so() {
        let mut runs = vec![(0x1000, 100), (0x3000, 100)];
        let mut budget = 150;
        let mut notes = Vec::new();
        clip(&mut runs, &mut budget, "input", &mut notes);
        assert_eq!(runs, vec![(0x1000, 100), (0x3000, 50)]);
        assert_eq!(budget, 0);
        assert_eq!(notes.len(), 1);
        let mut more = vec![(0x5000, 10)];
        clip(&mut more, &mut budget, "output", &mut notes);
        assert!(more.is_empty());
    }

    #[test]
    fn device_names_are_plain_words() {
        assert!(plain_device_name("ttyS0"));
        assert!(plain_device_name("hvc0"));
        assert!(!plain_device_name(""));
        assert!(!plain_device_name("../x"));
        assert!(!plain_device_name("pts/0"));
    }

    #[test]
    fn append_merges_contiguous_runs() {
        let mut runs = vec![(0x1000, 0x10)];
        append_runs(&mut runs, &[(0x1010, 0x10), (0x2000, 4)]);
        assert_eq!(runs, vec![(0x1000, 0x20), (0x2000, 4)]);
    }
}
