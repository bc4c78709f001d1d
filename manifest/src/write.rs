//! The writer: a [`Manifest`] as version-1 text.

use std::fmt::{self, Display, Formatter, Write as _};

use crate::{
    EpollRec, Exec, FdRec, FileRec, InetRec, InotifyRec, Manifest, PipeRec, Process, PtyRec,
    SigRec, TcpRec, Termios, Thread, Tree, UnixListenRec, UnixRec, Vma, Winsize, EXEC_CHUNK,
    HEADER, PROT_EXEC, PROT_READ, PROT_WRITE,
};

/// Writes `bytes` as a manifest path/name field: bytes outside printable ASCII and `%`
/// become `%xx` (lower-case hex).
pub fn encode_field(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b == b'%' || !(0x20..=0x7e).contains(&b) {
            let _ = write!(out, "%{b:02x}");
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// A field written through [`encode_field`] without allocating.
struct Field<'a>(&'a [u8]);

impl Display for Field<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if b == b'%' || !(0x20..=0x7e).contains(&b) {
                write!(f, "%{b:02x}")?;
            } else {
                f.write_char(char::from(b))?;
            }
        }
        Ok(())
    }
}

/// ` <field>`, or nothing when the field is empty.
struct Tail<'a>(&'a [u8]);

impl Display for Tail<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, " {}", Field(self.0))
        }
    }
}

/// Space-separated lower-case hex words.
struct Words<'a>(&'a [u64]);

impl Display for Words<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for (i, w) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(' ')?;
            }
            write!(f, "{w:x}")?;
        }
        Ok(())
    }
}

impl Display for Manifest {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "{HEADER}")?;
        for file in &self.files {
            write_file(f, file)?;
        }
        for p in &self.pipes {
            write_pipe(f, p)?;
        }
        for m in &self.shms {
            writeln!(f, "shm {} {:x}", m.id, m.size)?;
            for r in &m.data {
                writeln!(f, "sdata {:x} {:x} {:x}", r.offset, r.gpa, r.len)?;
            }
        }
        for s in &self.inets {
            write_inet(f, s)?;
        }
        for t in &self.tcps {
            write_tcp(f, t)?;
        }
        for u in &self.unixes {
            write_unix(f, u)?;
        }
        for l in &self.ulistens {
            write_ulisten(f, l)?;
        }
        for p in &self.ptys {
            write_pty(f, p)?;
        }
        for t in &self.ttys {
            writeln!(
                f,
                "tty {} {} {} {} {}",
                t.sid,
                t.pgrp,
                TermiosWords(&t.termios),
                WinsizeWords(&t.winsize),
                Field(&t.path)
            )?;
        }
        for z in &self.zombies {
            writeln!(
                f,
                "zombie {} {} {} {} {:x}",
                z.pid, z.tree.ppid, z.tree.pgid, z.tree.sid, z.status
            )?;
        }
        for p in &self.processes {
            write_process(f, p)?;
        }
        for e in &self.execs {
            write_exec(f, e)?;
        }
        Ok(())
    }
}

fn write_file(f: &mut Formatter<'_>, file: &FileRec) -> fmt::Result {
    writeln!(
        f,
        "file {:x} {:x} {} {}",
        file.size,
        file.mode,
        file.update.code(),
        Field(&file.path)
    )?;
    for r in &file.runs {
        writeln!(f, "fcopy {:x} {:x} {:x}", r.offset, r.gpa, r.len)?;
    }
    Ok(())
}

fn write_pipe(f: &mut Formatter<'_>, p: &PipeRec) -> fmt::Result {
    match &p.named {
        None => writeln!(f, "pipe {} {:x}", p.id, p.size)?,
        Some((mode, path)) => writeln!(f, "pipe {} {:x} {mode:x} {}", p.id, p.size, Field(path))?,
    }
    for r in &p.data {
        writeln!(f, "pdata {:x} {:x}", r.gpa, r.len)?;
    }
    Ok(())
}

fn write_inet(f: &mut Formatter<'_>, s: &InetRec) -> fmt::Result {
    write!(
        f,
        "inet {} {} {} {} {} {} ",
        s.id,
        s.family,
        s.sock_type,
        s.port,
        s.backlog,
        u8::from(s.v6only)
    )?;
    for b in s.addr {
        write!(f, "{b:02x}")?;
    }
    writeln!(f)
}

fn write_tcp(f: &mut Formatter<'_>, t: &TcpRec) -> fmt::Result {
    write!(f, "tcp {} {} ", t.id, t.family)?;
    for b in t.local {
        write!(f, "{b:02x}")?;
    }
    write!(f, " {} ", t.local_port)?;
    for b in t.remote {
        write!(f, "{b:02x}")?;
    }
    write!(f, " {}", t.remote_port)?;
    for w in t.words {
        write!(f, " {w:x}")?;
    }
    writeln!(f)?;
    for r in &t.send {
        writeln!(f, "tsend {:x} {:x}", r.gpa, r.len)?;
    }
    for r in &t.recv {
        writeln!(f, "trecv {:x} {:x}", r.gpa, r.len)?;
    }
    Ok(())
}

fn write_unix(f: &mut Formatter<'_>, u: &UnixRec) -> fmt::Result {
    writeln!(f, "unix {} {} {}", u.id, u.peer, u.sock_type)?;
    for m in &u.msgs {
        writeln!(f, "umsg")?;
        for r in &m.data {
            writeln!(f, "udata {:x} {:x}", r.gpa, r.len)?;
        }
        for d in &m.fds {
            f.write_char('u')?;
            write_fd(f, d)?;
        }
    }
    Ok(())
}

fn write_ulisten(f: &mut Formatter<'_>, l: &UnixListenRec) -> fmt::Result {
    writeln!(
        f,
        "ulisten {} {} {} {}",
        l.id,
        l.sock_type,
        l.backlog,
        Field(&l.path)
    )
}

/// `<iflag> <oflag> <cflag> <lflag> <line> <cc> <ispeed> <ospeed>`, hex.
struct TermiosWords<'a>(&'a Termios);

impl Display for TermiosWords<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let t = self.0;
        write!(
            f,
            "{:x} {:x} {:x} {:x} {:x} ",
            t.iflag, t.oflag, t.cflag, t.lflag, t.line
        )?;
        for c in t.cc {
            write!(f, "{c:02x}")?;
        }
        write!(f, " {:x} {:x}", t.ispeed, t.ospeed)
    }
}

/// `<rows> <cols> <xpixel> <ypixel>`, decimal.
struct WinsizeWords<'a>(&'a Winsize);

impl Display for WinsizeWords<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let w = self.0;
        write!(f, "{} {} {} {}", w.rows, w.cols, w.xpixel, w.ypixel)
    }
}

fn write_pty(f: &mut Formatter<'_>, p: &PtyRec) -> fmt::Result {
    writeln!(
        f,
        "pty {} {} {} {} {} {}",
        p.id,
        p.index,
        p.sid,
        p.pgrp,
        TermiosWords(&p.termios),
        WinsizeWords(&p.winsize)
    )?;
    for (name, runs) in [
        ("ptyin", &p.input),
        ("ptyout", &p.output),
        ("ptytyped", &p.typed),
    ] {
        for r in runs {
            writeln!(f, "{name} {:x} {:x}", r.gpa, r.len)?;
        }
    }
    Ok(())
}

fn write_tree(f: &mut Formatter<'_>, t: Option<&Tree>) -> fmt::Result {
    match t {
        Some(t) => writeln!(f, "tree {} {} {}", t.ppid, t.pgid, t.sid),
        None => Ok(()),
    }
}

fn write_epoll(f: &mut Formatter<'_>, e: &EpollRec) -> fmt::Result {
    writeln!(f, "epoll {} {} {:x} {:x}", e.epfd, e.fd, e.events, e.data)
}

fn write_inotify(f: &mut Formatter<'_>, w: &InotifyRec) -> fmt::Result {
    writeln!(
        f,
        "inotify {} {} {:x} {}",
        w.fd,
        w.wd,
        w.mask,
        Field(&w.path)
    )
}

fn write_pending(f: &mut Formatter<'_>, pending: &[crate::Pending]) -> fmt::Result {
    for q in pending {
        write!(f, "pending {} ", q.tid)?;
        for b in q.info {
            write!(f, "{b:02x}")?;
        }
        writeln!(f)?;
    }
    Ok(())
}

fn write_limits(f: &mut Formatter<'_>, l: &crate::Limits) -> fmt::Result {
    write!(f, "limits {:x} {:x}", l.umask, l.personality)?;
    for (cur, max) in l.rlimits {
        write!(f, " {cur:x} {max:x}")?;
    }
    writeln!(f)
}

fn write_creds(f: &mut Formatter<'_>, c: &crate::Creds) -> fmt::Result {
    write!(f, "cred")?;
    for v in c.uids.iter().chain(&c.gids).chain([&c.securebits]) {
        write!(f, " {v:x}")?;
    }
    for v in c.caps {
        write!(f, " {v:x}")?;
    }
    write!(f, " {:x} ", c.dumpable)?;
    if c.groups.is_empty() {
        write!(f, "-")?;
    }
    for (i, g) in c.groups.iter().enumerate() {
        write!(f, "{}{g:x}", if i == 0 { "" } else { "," })?;
    }
    writeln!(f)
}

fn write_process(f: &mut Formatter<'_>, p: &Process) -> fmt::Result {
    writeln!(f, "process {}{}", p.pid, Tail(&p.comm))?;
    if let Some(exe) = &p.exe {
        writeln!(f, "exe {}", Field(exe))?;
    }
    if let Some(cwd) = &p.cwd {
        writeln!(f, "cwd {}", Field(cwd))?;
    }
    write_tree(f, p.tree.as_ref())?;
    if let Some(l) = &p.limits {
        write_limits(f, l)?;
    }
    if let Some(c) = &p.creds {
        write_creds(f, c)?;
    }
    writeln!(f, "mm {}", Words(&p.mm.to_array()))?;
    writeln!(f, "auxv {}", Words(&p.auxv))?;
    for v in &p.vmas {
        write_vma(f, v)?;
    }
    for fd in &p.fds {
        write_fd(f, fd)?;
    }
    for e in &p.epoll {
        write_epoll(f, e)?;
    }
    for w in &p.inotify {
        write_inotify(f, w)?;
    }
    for s in &p.sigs {
        write_sig(f, s)?;
    }
    write_pending(f, &p.pending)?;
    for t in &p.itimers {
        writeln!(f, "itimer {} {:x} {:x}", t.which, t.value_ns, t.interval_ns)?;
    }
    for t in &p.ptimers {
        writeln!(
            f,
            "ptimer {} {} {} {} {} {} {:x} {:x} {:x}",
            t.id,
            t.clock,
            t.notify,
            t.signo,
            t.tid,
            u8::from(t.absolute),
            t.value,
            t.value_ns,
            t.interval_ns
        )?;
    }
    if let Some(next) = p.ptimer_next {
        writeln!(f, "ptimer-next {next}")?;
    }
    for t in &p.threads {
        write_thread(f, t)?;
    }
    writeln!(f, "end")
}

fn write_exec(f: &mut Formatter<'_>, e: &Exec) -> fmt::Result {
    writeln!(f, "exec {}{}", e.pid, Tail(&e.comm))?;
    writeln!(f, "path {}", Field(&e.path))?;
    if let Some(cwd) = &e.cwd {
        writeln!(f, "cwd {}", Field(cwd))?;
    }
    write_tree(f, e.tree.as_ref())?;
    if let Some(l) = &e.limits {
        write_limits(f, l)?;
    }
    if let Some(c) = &e.creds {
        write_creds(f, c)?;
    }
    write_pending(f, &e.pending)?;
    for (record, strings) in [("arg", &e.argv), ("env", &e.envp)] {
        for s in strings {
            // Long strings go in pieces: the first on `arg`/`env`, the rest on `more`.
            let mut chunks = s.chunks(EXEC_CHUNK);
            writeln!(f, "{record}{}", Tail(chunks.next().unwrap_or(&[])))?;
            for c in chunks {
                writeln!(f, "more {}", Field(c))?;
            }
        }
    }
    for fd in &e.fds {
        write_fd(f, fd)?;
    }
    for s in &e.sigs {
        write_sig(f, s)?;
    }
    writeln!(f, "sigmask {:x}", e.sigmask)?;
    writeln!(f, "end")
}

fn write_sig(f: &mut Formatter<'_>, s: &SigRec) -> fmt::Result {
    writeln!(
        f,
        "sig {} {:x} {:x} {:x} {:x}",
        s.signo, s.handler, s.flags, s.restorer, s.mask
    )
}

fn write_vma(f: &mut Formatter<'_>, v: &Vma) -> fmt::Result {
    let bit = |b: i32, c: char| if v.prot & b != 0 { c } else { '-' };
    write!(
        f,
        "vma {:x} {:x} {}{}{} {}{} {:x} {}",
        v.start,
        v.end,
        bit(PROT_READ, 'r'),
        bit(PROT_WRITE, 'w'),
        bit(PROT_EXEC, 'x'),
        if v.shared { 's' } else { 'p' },
        if v.growsdown { "g" } else { "" },
        v.pgoff,
        v.kind.name()
    )?;
    if let Some(path) = &v.path {
        write!(f, " {}", Field(path))?;
    }
    f.write_char('\n')?;
    for c in &v.copies {
        writeln!(f, "copy {:x} {:x} {:x}", c.vaddr, c.gpa, c.len)?;
    }
    Ok(())
}

fn write_fd(f: &mut Formatter<'_>, fd: &FdRec) -> fmt::Result {
    writeln!(
        f,
        "fd {} {:x} {:x} {}{}",
        fd.fd,
        fd.flags,
        fd.pos,
        fd.kind.name(),
        Tail(&fd.path)
    )
}

fn write_thread(f: &mut Formatter<'_>, t: &Thread) -> fmt::Result {
    writeln!(f, "thread {}{}", t.tid, Tail(&t.comm))?;
    writeln!(f, "regs {}", Words(&t.regs))?;
    f.write_str("fpu ")?;
    for b in t.fpu.iter() {
        write!(f, "{b:02x}")?;
    }
    f.write_char('\n')?;
    writeln!(f, "sigmask {:x}", t.sigmask)?;
    if let Some(a) = t.tid_address {
        writeln!(f, "tid-address {a:x}")?;
    }
    if let Some((head, len)) = t.robust_list {
        writeln!(f, "robust-list {head:x} {len:x}")?;
    }
    if let Some((addr, len, sig)) = t.rseq {
        writeln!(f, "rseq {addr:x} {len:x} {sig:x}")?;
    }
    Ok(())
}
