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
    let nr = k
        .offset_of("pid", "numbers")
        .and_then(|n| Ok(n + k.offset_of("upid", "nr")?))
        .and_then(|o| k.read_u32(pid.wrapping_add(o)));
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
