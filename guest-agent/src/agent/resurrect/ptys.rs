//! Terminals: the pseudo-terminal pairs (`pty` records) made again before any process,
//! each at its old `/dev/pts` number where that is free, with the slave's settings, its
//! window size and the bytes that were in flight; and the settings of other terminals
//! (`tty` records: the serial console) put back.
//!
//! The bytes go back the way they first came, so each lands where it was:
//! - output the master's reader had not read is written to the slave with output
//!   processing off (it was processed once already);
//! - input the slave's line discipline held (edited and echoed already) is pushed into it
//!   with `TIOCSTI` while echo, signals and input mapping are off, canonical mode as it
//!   was, so complete lines stay lines and a half-typed line stays editable;
//! - bytes written to the master that the line discipline had not taken in yet are
//!   written to the master once the real settings are on, and are echoed and edited then.
//!
//! A pty's session and foreground process group are set by the stubs ([`super::tree`]):
//! the session leader takes it as its controlling terminal after `setsid`.

use std::io;
use std::os::fd::RawFd;

use super::manifest::{PipeRun, PtyRec, Termios, TtyRec, Winsize};
use super::{path_of, text, Error, MemSource};

/// Placeholder ptys opened at most to reach an old number (the rest are taken as they
/// come).
const MAX_PLACEHOLDERS: usize = 4096;
/// `N_TTY_BUF_SIZE - 1`: what a line discipline's buffer takes through `TIOCSTI`.
const MAX_PUSHED: usize = 4095;

/// The kernel's `struct termios2` (`TCSETS2`): the manifest's fields, in its layout.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Termios2 {
    iflag: u32,
    oflag: u32,
    cflag: u32,
    lflag: u32,
    line: u8,
    cc: [u8; 19],
    ispeed: u32,
    ospeed: u32,
}

/// `_IOW('T', 0x2B, struct termios2)`.
const TCSETS2: libc::c_ulong = 0x402C_542B;
/// `_IO('T', 0x41)`: opens the slave of a master.
const TIOCGPTPEER: libc::c_ulong = 0x5441;

impl From<&Termios> for Termios2 {
    fn from(t: &Termios) -> Self {
        Self {
            iflag: t.iflag,
            oflag: t.oflag,
            cflag: t.cflag,
            lflag: t.lflag,
            line: t.line,
            cc: t.cc,
            ispeed: t.ispeed,
            ospeed: t.ospeed,
        }
    }
}

impl Termios2 {
    /// The settings under which already-processed input is pushed back: canonical mode
    /// as it was, nothing echoed, no signal characters, no input mapping; output
    /// processing off for the output written back.
    fn replay(&self) -> Self {
        let mut t = *self;
        t.lflag &= !(libc::ECHO
            | libc::ECHOE
            | libc::ECHOK
            | libc::ECHONL
            | libc::ECHOCTL
            | libc::ECHOPRT
            | libc::ECHOKE
            | libc::ISIG
            | libc::IEXTEN
            | libc::TOSTOP);
        t.iflag &= !(libc::ICRNL
            | libc::INLCR
            | libc::IGNCR
            | libc::ISTRIP
            | libc::IUCLC
            | libc::IXON
            | libc::IXOFF
            | libc::INPCK
            | libc::PARMRK);
        t.oflag &= !libc::OPOST;
        t
    }
}

/// The two ends of a pty the agent made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtyEnds {
    pub master: RawFd,
    pub slave: RawFd,
    /// The `/dev/pts` number it got.
    pub index: u32,
}

/// What [`make_all`] made.
#[derive(Debug, Default)]
pub struct Made {
    /// The ends, by id.
    pub ends: Vec<(u32, PtyEnds)>,
    /// What went wrong with one (left out: its users fail).
    pub failed: Vec<(u32, Error)>,
    /// What is not exactly as before (another number, bytes dropped).
    pub notes: Vec<String>,
}

/// Makes every pty of `ptys` (ends at `above` or higher), lowest old number first.
pub fn make_all(ptys: &[PtyRec], above: RawFd, mem: &MemSource) -> Made {
    let mut order: Vec<&PtyRec> = ptys.iter().collect();
    order.sort_by_key(|p| p.index);
    let (mut made, mut failed, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    let mut placeholders: Vec<RawFd> = Vec::new();
    for p in order {
        match make_one(p, above, mem, &mut placeholders, &mut notes) {
            Ok(ends) => {
                if ends.index != p.index {
                    notes.push(format!(
                        "pty {}: /dev/pts/{} was taken, it is /dev/pts/{} now",
                        p.id, p.index, ends.index
                    ));
                }
                made.push((p.id, ends));
            }
            Err(e) => failed.push((p.id, e)),
        }
    }
    for fd in placeholders {
        // SAFETY: closes placeholder masters opened here, once.
        unsafe { libc::close(fd) };
    }
    Made {
        ends: made,
        failed,
        notes,
    }
}

fn close(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: closes descriptors made here.
        unsafe { libc::close(fd) };
    }
}

fn os(what: String) -> Error {
    Error::os(what, io::Error::last_os_error())
}

/// A new master and its number.
fn open_master() -> Result<(RawFd, u32), Error> {
    // SAFETY: opens a device by a NUL-terminated path.
    let fd = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(os("open /dev/ptmx".to_owned()));
    }
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int.
    if unsafe { libc::ioctl(fd, libc::TIOCGPTN, &raw mut n) } != 0 {
        let e = os("TIOCGPTN".to_owned());
        close(&[fd]);
        return Err(e);
    }
    Ok((fd, n))
}

fn make_one(
    p: &PtyRec,
    above: RawFd,
    mem: &MemSource,
    placeholders: &mut Vec<RawFd>,
    notes: &mut Vec<String>,
) -> Result<PtyEnds, Error> {
    let what = |step: &str| format!("pty {}: {step}", p.id);
    // The kernel hands out the lowest free number: hold the lower ones until it is ours.
    let (master, index) = loop {
        let (fd, n) = open_master()?;
        if n >= p.index || placeholders.len() >= MAX_PLACEHOLDERS {
            break (fd, n);
        }
        placeholders.push(fd);
    };
    let result = (|| {
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads an int.
        if unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &raw const unlock) } != 0 {
            return Err(os(what("unlock")));
        }
        let slave = open_slave(master, index).map_err(|e| Error::os(what("open slave"), e))?;
        let ends = (|| {
            fill(p, master, slave, mem, notes)?;
            let m = super::pipes::move_above(master, above, || what("master"))?;
            match super::pipes::move_above(slave, above, || what("slave")) {
                Ok(s) => Ok(PtyEnds {
                    master: m,
                    slave: s,
                    index,
                }),
                Err(e) => {
                    close(&[m]);
                    Err(e)
                }
            }
        })();
        close(&[slave]);
        ends
    })();
    close(&[master]);
    result
}

/// The slave of `master` (number `index`), not as a controlling terminal.
fn open_slave(master: RawFd, index: u32) -> io::Result<RawFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let fd = unsafe { libc::ioctl(master, TIOCGPTPEER, flags) };
    if fd >= 0 {
        return Ok(fd);
    }
    // Before Linux 4.13: by its path.
    let path = std::ffi::CString::new(format!("/dev/pts/{index}")).map_err(io::Error::other)?;
    // SAFETY: opens a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd)
    }
}

fn set_termios(fd: RawFd, t: &Termios2) -> io::Result<()> {
    // SAFETY: TCSETS2 reads a struct termios2, which `t` is.
    if unsafe { libc::ioctl(fd, TCSETS2, std::ptr::from_ref(t)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_winsize(fd: RawFd, w: &Winsize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: w.rows,
        ws_col: w.cols,
        ws_xpixel: w.xpixel,
        ws_ypixel: w.ypixel,
    };
    // SAFETY: TIOCSWINSZ reads a struct winsize.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &raw const ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes what `runs` hold to `fd` without blocking; returns the bytes not taken.
fn write_runs(fd: RawFd, runs: &[PipeRun], mem: &MemSource) -> Result<u64, Error> {
    let total: u64 = runs.iter().map(|r| r.len).sum();
    let mut written = 0u64;
    for run in runs {
        let m = mem.map(run.gpa, run.len)?;
        let mut left = m.bytes();
        while !left.is_empty() {
            // SAFETY: writes from the mapping, which lives across the call.
            let n = unsafe { libc::write(fd, left.as_ptr().cast(), left.len()) };
            let Ok(n) = usize::try_from(n) else {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Ok(total - written);
            };
            if n == 0 {
                return Ok(total - written);
            }
            written += n as u64;
            left = &left[n..];
        }
    }
    Ok(0)
}

fn set_nonblocking(fd: RawFd, on: bool) {
    // SAFETY: fcntl on a descriptor made here.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            let fl = if on {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            libc::fcntl(fd, libc::F_SETFL, fl);
        }
    }
}

/// Puts back the settings and the bytes in flight of `p` on its new pair.
fn fill(
    p: &PtyRec,
    master: RawFd,
    slave: RawFd,
    mem: &MemSource,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    let what = |step: &str| format!("pty {}: {step}", p.id);
    let real = Termios2::from(&p.termios);
    set_termios(slave, &real.replay()).map_err(|e| Error::os(what("set replay termios"), e))?;
    set_nonblocking(slave, true);
    set_nonblocking(master, true);
    let lost = write_runs(slave, &p.output, mem)?;
    if lost > 0 {
        notes.push(what(&format!("{lost} bytes of output dropped (no room)")));
    }
    let mut pushed = 0usize;
    'runs: for run in &p.input {
        let m = mem.map(run.gpa, run.len)?;
        for b in m.bytes() {
            // SAFETY: TIOCSTI reads one byte.
            if pushed >= MAX_PUSHED || unsafe { libc::ioctl(slave, libc::TIOCSTI, b) } != 0 {
                let total: u64 = p.input.iter().map(|r| r.len).sum();
                notes.push(what(&format!(
                    "{} of {total} bytes of unread input dropped ({})",
                    total - pushed as u64,
                    if pushed >= MAX_PUSHED {
                        "no room".to_owned()
                    } else {
                        io::Error::last_os_error().to_string()
                    }
                )));
                break 'runs;
            }
            pushed += 1;
        }
    }
    set_termios(slave, &real).map_err(|e| Error::os(what("set termios"), e))?;
    set_winsize(master, &p.winsize).map_err(|e| Error::os(what("set window size"), e))?;
    let lost = write_runs(master, &p.typed, mem)?;
    if lost > 0 {
        notes.push(what(&format!("{lost} typed bytes dropped (no room)")));
    }
    set_nonblocking(slave, false);
    set_nonblocking(master, false);
    Ok(())
}

/// Puts the settings of `t` back on the terminal at its path (the serial console); returns
/// a descriptor of it (not as the agent's controlling terminal).
pub fn apply_tty(t: &TtyRec) -> Result<RawFd, Error> {
    let path = path_of(&t.path);
    let what = |step: &str| format!("terminal {}: {step}", text(&t.path));
    let c = std::ffi::CString::new(path.into_os_string().into_encoded_bytes())
        .map_err(|_| Error::Invalid(what("path with a NUL")))?;
    // SAFETY: opens a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(os(what("open")));
    }
    let r = set_termios(fd, &Termios2::from(&t.termios))
        .map_err(|e| Error::os(what("set termios"), e))
        .and_then(|()| {
            if t.winsize == Winsize::default() {
                return Ok(()); // never set (a serial line knows no size)
            }
            set_winsize(fd, &t.winsize).map_err(|e| Error::os(what("set window size"), e))
        });
    match r {
        Ok(()) => Ok(fd),
        Err(e) => {
            close(&[fd]);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termios2_is_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<Termios2>(), 44);
        assert_eq!(std::mem::offset_of!(Termios2, cc), 17);
        assert_eq!(std::mem::offset_of!(Termios2, ispeed), 36);
    }

    #[test]
    fn replay_keeps_canonical_mode_and_drops_echo_and_mapping() {
        let t = Termios2 {
            iflag: libc::ICRNL | libc::IXON | libc::IUTF8,
            oflag: libc::OPOST | libc::ONLCR,
            cflag: libc::CS8 | libc::CREAD,
            lflag: libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN | libc::ECHOE,
            line: 0,
            cc: [3; 19],
            ispeed: 38400,
            ospeed: 38400,
        };
        let r = t.replay();
        assert_eq!(r.lflag, libc::ICANON);
        assert_eq!(r.iflag, libc::IUTF8);
        assert_eq!(r.oflag, libc::ONLCR);
        assert_eq!((r.cflag, r.cc), (t.cflag, t.cc));
    }

    /// A real pty of the host: what was
    /// pushed back reads back in order, the settings hold, and the output is at the
    /// master.
    #[test]
    fn a_pair_gets_its_bytes_and_settings_back() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "TIOCSTI needs root, as the agent is");
        let dir = std::env::temp_dir().join(format!("owvmm-pty-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let memfile = dir.join("mem");
        let (input, output) = (&b"line one\npartial"[..], &b"\x1b[1mout\r\nput"[..]);
        std::fs::write(&memfile, [input, output].concat()).expect("write memory file");
        let (ilen, olen) = (input.len() as u64, output.len() as u64);
        let mem = MemSource::open(&memfile, 0, ilen + olen).expect("memory");
        let run = |gpa: u64, len: u64| PipeRun { gpa, len };
        let mut termios = Termios {
            iflag: libc::ICRNL,
            oflag: libc::OPOST | libc::ONLCR,
            cflag: libc::CS8 | libc::CREAD | libc::B38400,
            lflag: libc::ICANON | libc::ECHO | libc::ISIG,
            line: 0,
            cc: [0; 19],
            ispeed: 38400,
            ospeed: 38400,
        };
        termios.cc[libc::VERASE] = 0x7f;
        termios.cc[libc::VKILL] = 0x15;
        termios.cc[libc::VEOF] = 4;
        let p = PtyRec {
            id: 7,
            index: 0,
            termios,
            winsize: Winsize {
                rows: 33,
                cols: 101,
                xpixel: 0,
                ypixel: 0,
            },
            input: vec![run(0, ilen)],
            output: vec![run(ilen, olen)],
            typed: Vec::new(),
            ..PtyRec::default()
        };
        let made = make_all(std::slice::from_ref(&p), 100, &mem);
        assert!(
            made.failed.is_empty(),
            "{:?}",
            made.failed.first().map(|f| &f.1)
        );
        let ends = made.ends[0].1;
        assert!(ends.master >= 100 && ends.slave >= 100);
        // The complete line reads back as one canonical read; the partial one waits.
        set_nonblocking(ends.slave, true);
        let mut buf = [0u8; 64];
        // SAFETY: reads into a local buffer.
        let n = unsafe { libc::read(ends.slave, buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..usize::try_from(n).unwrap_or(0)], b"line one\n");
        // SAFETY: as above.
        let n = unsafe { libc::read(ends.slave, buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(n, -1, "the half-typed line is not readable yet");
        // The output reaches the master unchanged (not processed twice).
        let mut got = Vec::new();
        for _ in 0..100 {
            // SAFETY: as above.
            let n = unsafe { libc::read(ends.master, buf.as_mut_ptr().cast(), buf.len()) };
            if let Ok(n) = usize::try_from(n) {
                got.extend_from_slice(&buf[..n]);
            }
            if got.len() >= output.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, output);
        let mut ws: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a struct winsize.
        unsafe { libc::ioctl(ends.slave, libc::TIOCGWINSZ, &raw mut ws) };
        assert_eq!((ws.ws_row, ws.ws_col), (33, 101));
        close(&[ends.master, ends.slave]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
