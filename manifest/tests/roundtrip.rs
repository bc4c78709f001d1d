//! Round trip over generated manifests: `parse(write(m)) == m` and `write(parse(x)) == x`
//! for `x = write(m)`. A small seeded generator (no dependency); it makes only manifests the
//! parser must accept, with awkward names (escapes, spaces, non-ASCII), extreme numbers and
//! every optional record both present and absent.

use owvmm_manifest::{
    parse, Copy, EpollRec, Exec, FdKind, FdRec, FileRec, FileRun, InetRec, InotifyRec, Manifest,
    Mm, PipeRec, PipeRun, Process, PtyRec, SigRec, TcpRec, Termios, Thread, Tree, TtyRec,
    UnixListenRec, UnixMsg, UnixRec, Vma, VmaKind, Winsize, Zombie, EXEC_CHUNK, MAX_FILE_SIZE,
    MAX_PID, MAX_PIPE_SIZE, PAGE,
};

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn idx(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("fits")
    }

    fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }

    /// A number: small, full-range or an edge.
    fn word(&mut self) -> u64 {
        match self.below(4) {
            0 => self.below(16),
            1 => [0, 1, u64::MAX, 1 << 63][self.idx(4)],
            2 => self.below(1 << 32),
            _ => self.next(),
        }
    }

    fn u32(&mut self) -> u32 {
        u32::try_from(self.word() & 0xffff_ffff).expect("masked")
    }

    /// Name bytes: printable, `%`, space, controls, non-ASCII.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.idx(max + 1);
        (0..n)
            .map(|_| match self.below(4) {
                0 => b' ',
                1 => b'%',
                2 => u8::try_from(self.below(256)).expect("byte"),
                _ => b'a' + u8::try_from(self.below(26)).expect("letter"),
            })
            .collect()
    }

    fn path(&mut self) -> Vec<u8> {
        let mut p = vec![b'/'];
        p.extend(
            self.bytes(40)
                .into_iter()
                .map(|b| if b == 0 { b'0' } else { b }),
        );
        p
    }

    fn page(&mut self) -> u64 {
        self.below(1 << 30) * PAGE
    }
}

fn file(r: &mut Rng) -> FileRec {
    let size = if r.bool() {
        r.below(1 << 20)
    } else {
        r.below(MAX_FILE_SIZE + 1)
    };
    let mut runs = Vec::new();
    let mut off = 0;
    for _ in 0..r.below(4) {
        if off >= size {
            break;
        }
        let start = off + r.below(size - off);
        let len = 1 + r.below(size - start);
        runs.push(FileRun {
            offset: start,
            gpa: r.below(u64::MAX - len),
            len,
        });
        off = start + len;
    }
    FileRec {
        size,
        mode: u32::try_from(r.below(0o10000)).expect("mode"),
        update: [
            owvmm_manifest::FileUpdate::IfDiffers,
            owvmm_manifest::FileUpdate::Overwrite,
            owvmm_manifest::FileUpdate::Patch,
        ][usize::try_from(r.below(3)).unwrap_or(0)],
        path: r.path(),
        runs,
    }
}

fn pipe(r: &mut Rng, id: u32) -> PipeRec {
    let size = 1 + r.below(MAX_PIPE_SIZE);
    let mut data = Vec::new();
    let mut left = size;
    for _ in 0..r.below(4) {
        if left == 0 {
            break;
        }
        let len = 1 + r.below(left);
        data.push(PipeRun {
            gpa: r.below(u64::MAX - len),
            len,
        });
        left -= len;
    }
    let named = (r.below(2) == 0).then(|| {
        let mut p = r.bytes(40);
        p.insert(0, b'/');
        (u32::try_from(r.below(0o10000)).expect("mode"), p)
    });
    PipeRec {
        id,
        size,
        named,
        data,
    }
}

fn vmas(r: &mut Rng) -> Vec<Vma> {
    let mut out = Vec::new();
    let mut at = r.page();
    for _ in 0..r.below(6) {
        let start = at + r.below(4) * PAGE;
        let pages = 1 + r.below(64);
        let end = start + pages * PAGE;
        let kind = VmaKind::ALL[r.idx(VmaKind::ALL.len())];
        let mut copies = Vec::new();
        if !kind.is_special() {
            let mut p = 0;
            while p < pages && r.below(3) != 0 {
                let first = p + r.below(pages - p);
                let n = 1 + r.below(pages - first);
                copies.push(Copy {
                    vaddr: start + first * PAGE,
                    gpa: r.page(),
                    len: n * PAGE,
                });
                p = first + n;
            }
        }
        let shared = r.bool();
        let path = match kind {
            VmaKind::File => Some(r.path()),
            VmaKind::Anon if shared && r.bool() => Some(format!("shm:{}", r.u32()).into_bytes()),
            _ => None,
        };
        out.push(Vma {
            start,
            end,
            prot: i32::try_from(r.below(8)).expect("prot"),
            shared,
            growsdown: r.bool(),
            pgoff: r.below(1 << 40) * PAGE,
            kind,
            path,
            copies,
        });
        at = end;
    }
    out
}

fn thread(r: &mut Rng, tid: u32) -> Thread {
    let mut regs = [0u64; 27];
    regs.iter_mut().for_each(|w| *w = r.word());
    let mut fpu = Box::new([0u8; 512]);
    fpu.iter_mut()
        .for_each(|b| *b = u8::try_from(r.below(256)).expect("byte"));
    Thread {
        tid,
        comm: r.bytes(16),
        regs,
        fpu,
        sigmask: r.word(),
        tid_address: r.bool().then(|| r.word()),
        robust_list: r.bool().then(|| (r.word(), r.word())),
        rseq: r.bool().then(|| (r.word(), r.u32(), r.u32())),
    }
}

fn fds(r: &mut Rng) -> Vec<FdRec> {
    let mut fds: Vec<FdRec> = Vec::new();
    for _ in 0..r.below(5) {
        let fd = if r.bool() {
            i32::try_from(r.below(8)).expect("fd")
        } else {
            i32::try_from(r.below(1 << 31)).expect("fd")
        };
        if fds.iter().any(|f| f.fd == fd) {
            continue;
        }
        let kind = FdKind::ALL[r.idx(FdKind::ALL.len())];
        fds.push(FdRec {
            fd,
            flags: r.u32(),
            pos: r.word(),
            kind,
            path: if kind.reopens() {
                r.path()
            } else {
                r.bytes(20)
            },
        });
    }
    fds
}

fn sigs(r: &mut Rng) -> Vec<SigRec> {
    let mut sigs: Vec<SigRec> = Vec::new();
    for _ in 0..r.below(5) {
        let signo = i32::try_from(1 + r.below(64)).expect("signo");
        if signo == 9 || signo == 19 || sigs.iter().any(|s| s.signo == signo) {
            continue;
        }
        sigs.push(SigRec {
            signo,
            handler: r.word(),
            flags: r.word(),
            restorer: r.word(),
            mask: r.word(),
        });
    }
    sigs
}

/// Argument or environment strings: some empty, some longer than one line holds.
fn strings(r: &mut Rng) -> Vec<Vec<u8>> {
    (0..r.below(5))
        .map(|_| match r.below(8) {
            0 => Vec::new(),
            1 => (0..EXEC_CHUNK * 2 + r.idx(100))
                .map(|i| u8::try_from(i % 256).expect("byte"))
                .collect(),
            _ => r.bytes(30),
        })
        .collect()
}

fn exec(r: &mut Rng) -> Exec {
    let pid = u32::try_from(1 + r.below(u64::from(MAX_PID))).expect("pid");
    Exec {
        pid,
        comm: r.bytes(16),
        path: r.path(),
        cwd: r.bool().then(|| r.path()),
        argv: strings(r),
        envp: strings(r),
        fds: fds(r),
        sigs: sigs(r),
        sigmask: r.word(),
        tree: r.bool().then(|| tree(r)),
        limits: r.bool().then(|| limits(r)),
        creds: r.bool().then(|| creds(r)),
        pending: pending(r, pid),
    }
}

fn pending(r: &mut Rng, pid: u32) -> Vec<owvmm_manifest::Pending> {
    (0..r.below(3))
        .map(|_| {
            let mut info = [0u8; 48];
            for b in &mut info {
                *b = u8::try_from(r.below(256)).expect("byte");
            }
            let signo = 1 + u32::try_from(r.below(64)).expect("signo");
            info[..4].copy_from_slice(&signo.to_le_bytes());
            owvmm_manifest::Pending {
                tid: if r.bool() { 0 } else { pid },
                info,
            }
        })
        .collect()
}

fn limits(r: &mut Rng) -> owvmm_manifest::Limits {
    let mut rlimits = [(0, 0); owvmm_manifest::RLIMITS];
    for l in &mut rlimits {
        let max = if r.bool() {
            u64::MAX
        } else {
            r.below(u64::MAX)
        };
        *l = (r.below(max), max);
    }
    owvmm_manifest::Limits {
        umask: u32::try_from(r.below(0o1000)).expect("umask"),
        personality: r.u32(),
        rlimits,
    }
}

fn creds(r: &mut Rng) -> owvmm_manifest::Creds {
    owvmm_manifest::Creds {
        uids: [r.u32(), r.u32(), r.u32(), r.u32()],
        gids: [r.u32(), r.u32(), r.u32(), r.u32()],
        securebits: r.u32(),
        caps: [
            r.below(u64::MAX),
            r.below(1 << 41),
            0,
            u64::MAX,
            r.below(u64::MAX),
        ],
        dumpable: u32::try_from(r.below(3)).expect("dumpable"),
        groups: (0..r.below(5)).map(|_| r.u32()).collect(),
    }
}

fn tree(r: &mut Rng) -> Tree {
    let mut id = || u32::try_from(r.below(u64::from(MAX_PID) + 1)).expect("id");
    Tree {
        ppid: id(),
        pgid: id(),
        sid: id(),
    }
}

fn process(r: &mut Rng) -> Process {
    let pid = u32::try_from(1 + r.below(u64::from(MAX_PID))).expect("pid");
    let mut mm = [0u64; 11];
    mm.iter_mut().for_each(|w| *w = r.word());
    let mut auxv = Vec::new();
    for _ in 0..r.below(5) {
        auxv.extend([1 + r.below(50), r.word()]);
    }
    auxv.extend([0, r.word()]);
    let mut fds = fds(r);
    // An epoll descriptor above the others, watching some of them.
    let epfd = fds
        .iter()
        .map(|f| f.fd)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let mut epoll = Vec::new();
    if r.bool() && epfd > 0 {
        for fd in fds.iter().map(|f| f.fd).collect::<Vec<_>>() {
            if r.bool() {
                continue;
            }
            epoll.push(EpollRec {
                epfd,
                fd,
                events: r.u32(),
                data: r.word(),
            });
        }
        fds.push(FdRec {
            fd: epfd,
            flags: 0,
            pos: 0,
            kind: FdKind::Other,
            path: b"epoll".to_vec(),
        });
    }
    // An inotify descriptor above those, with watches by increasing wd.
    let ifd = epfd.saturating_add(1);
    let mut inotify = Vec::new();
    if r.bool() && ifd > 0 {
        let mut wd = 0i32;
        for _ in 0..r.below(4) {
            wd = wd.saturating_add(1 + i32::try_from(r.below(5)).expect("small"));
            inotify.push(InotifyRec {
                fd: ifd,
                wd,
                mask: r.u32(),
                path: r.path(),
            });
        }
        fds.push(FdRec {
            fd: ifd,
            flags: 0o4000,
            pos: 0,
            kind: FdKind::Other,
            path: format!("inotify:{}", wd + 1).into_bytes(),
        });
    }
    let sigs = sigs(r);
    let mut threads = vec![thread(r, pid)];
    for _ in 0..r.below(3) {
        let tid = u32::try_from(1 + r.below(u64::from(MAX_PID))).expect("tid");
        if threads.iter().all(|t| t.tid != tid) {
            threads.push(thread(r, tid));
        }
    }
    Process {
        pid,
        comm: r.bytes(16),
        exe: r.bool().then(|| r.path()),
        cwd: r.bool().then(|| r.path()),
        mm: Mm::from_array(mm),
        auxv,
        vmas: vmas(r),
        fds,
        epoll,
        inotify,
        sigs,
        tree: r.bool().then(|| tree(r)),
        limits: r.bool().then(|| limits(r)),
        creds: r.bool().then(|| creds(r)),
        pending: pending(r, pid),
        itimers: {
            let mut out = Vec::new();
            for which in 0..3u32 {
                if r.bool() {
                    out.push(owvmm_manifest::Itimer {
                        which,
                        value_ns: 1 + r.below(u64::MAX - 1),
                        interval_ns: if r.bool() { 0 } else { r.below(u64::MAX) },
                    });
                }
            }
            out
        },
        ptimers: {
            let mut id = 0u32;
            (0..r.below(4))
                .map(|_| {
                    id += 1 + u32::try_from(r.below(1000)).expect("small");
                    let notify = [0, 1, 2, 4, 5, 6][usize::try_from(r.below(6)).expect("small")];
                    owvmm_manifest::Ptimer {
                        id,
                        clock: [0, 1, 2, 7][usize::try_from(r.below(4)).expect("small")],
                        notify,
                        signo: 1 + u32::try_from(r.below(64)).expect("signo"),
                        tid: if notify & 4 != 0 { pid } else { 0 },
                        absolute: r.bool(),
                        value: r.below(u64::MAX),
                        value_ns: r.below(u64::MAX),
                        interval_ns: r.below(u64::MAX),
                    }
                })
                .collect()
        },
        ptimer_next: r
            .bool()
            .then(|| u32::try_from(r.below(0x8000_0000)).expect("id")),
        threads,
    }
}

fn termios(r: &mut Rng) -> Termios {
    Termios {
        iflag: r.u32(),
        oflag: r.u32(),
        cflag: r.u32(),
        lflag: r.u32(),
        line: u8::try_from(r.below(256)).expect("byte"),
        cc: std::array::from_fn(|_| u8::try_from(r.below(256)).expect("byte")),
        ispeed: r.u32(),
        ospeed: r.u32(),
    }
}

fn winsize(r: &mut Rng) -> Winsize {
    let mut w = || u16::try_from(r.below(65536)).expect("u16");
    Winsize {
        rows: w(),
        cols: w(),
        xpixel: w(),
        ypixel: w(),
    }
}

fn runs(r: &mut Rng) -> Vec<PipeRun> {
    (0..r.below(3))
        .map(|_| PipeRun {
            gpa: r.below(1 << 40),
            len: 1 + r.below(1 << 12),
        })
        .collect()
}

fn manifest(r: &mut Rng) -> Manifest {
    Manifest {
        files: (0..r.below(4)).map(|_| file(r)).collect(),
        pipes: (0..u32::try_from(r.below(4)).expect("n"))
            .map(|i| pipe(r, i * 7))
            .collect(),
        shms: (0..u32::try_from(r.below(3)).expect("n"))
            .map(|i| {
                let size = r.below(1 << 30);
                let mut at = 0;
                let mut data = Vec::new();
                while data.len() < 3 && at + 4096 <= size {
                    at += r.below(1 << 20) & !4095;
                    if at + 4096 > size {
                        break;
                    }
                    data.push(owvmm_manifest::ShmRun {
                        offset: at,
                        gpa: r.below(1 << 40) & !4095,
                        len: 4096,
                    });
                    at += 4096;
                }
                owvmm_manifest::ShmRec {
                    id: i * 3 + 1,
                    size,
                    data,
                }
            })
            .collect(),
        unixes: (0..u32::try_from(r.below(3)).expect("n"))
            .map(|i| UnixRec {
                id: i * 5 + 2,
                peer: if r.bool() { 0 } else { i * 5 + 3 },
                sock_type: [1, 2, 5][r.idx(3)],
                msgs: (0..r.below(3))
                    .map(|_| UnixMsg {
                        data: (0..r.below(3))
                            .map(|_| PipeRun {
                                gpa: r.below(1 << 40),
                                len: 1 + r.below(1 << 16),
                            })
                            .collect(),
                        fds: (0..r.below(3))
                            .map(|n| FdRec {
                                fd: i32::try_from(n).expect("n"),
                                flags: 2,
                                pos: r.below(1 << 20),
                                kind: FdKind::Sock,
                                path: format!("unix:{}", r.below(100)).into_bytes(),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        ulistens: (0..u32::try_from(r.below(3)).expect("n"))
            .map(|i| UnixListenRec {
                id: 1_000_000 + i,
                sock_type: if r.bool() { 1 } else { 5 },
                backlog: r.u32(),
                path: {
                    let mut p = r.bytes(100);
                    p.insert(0, if r.bool() { 0 } else { b'/' });
                    p
                },
            })
            .collect(),
        inets: (0..u32::try_from(r.below(3)).expect("n"))
            .map(|i| InetRec {
                id: i * 3 + 1,
                family: if r.bool() { 2 } else { 10 },
                sock_type: if r.bool() { 1 } else { 2 },
                port: u16::try_from(r.below(65536)).expect("port"),
                backlog: r.u32(),
                v6only: r.bool(),
                addr: std::array::from_fn(|_| u8::try_from(r.below(256)).expect("byte")),
            })
            .collect(),
        tcps: (0..u32::try_from(r.below(3)).expect("n"))
            .map(|i| TcpRec {
                id: 2_000_000 + i,
                family: if r.bool() { 2 } else { 10 },
                local: std::array::from_fn(|_| u8::try_from(r.below(256)).expect("byte")),
                local_port: u16::try_from(r.below(65536)).expect("port"),
                remote: std::array::from_fn(|_| u8::try_from(r.below(256)).expect("byte")),
                remote_port: u16::try_from(r.below(65536)).expect("port"),
                words: std::array::from_fn(|_| r.u32()),
                send: (0..r.below(3))
                    .map(|_| PipeRun {
                        gpa: r.below(1 << 40),
                        len: 1 + r.below(1 << 16),
                    })
                    .collect(),
                recv: (0..r.below(3))
                    .map(|_| PipeRun {
                        gpa: r.below(1 << 40),
                        len: 1 + r.below(1 << 16),
                    })
                    .collect(),
            })
            .collect(),
        ptys: (0..u32::try_from(r.below(3)).expect("n"))
            .map(|i| PtyRec {
                id: i * 2 + 1,
                index: u32::try_from(r.below(64)).expect("index"),
                sid: u32::try_from(r.below(1000)).expect("sid"),
                pgrp: u32::try_from(r.below(1000)).expect("pgrp"),
                termios: termios(r),
                winsize: winsize(r),
                input: runs(r),
                output: runs(r),
                typed: runs(r),
            })
            .collect(),
        ttys: (0..r.below(2))
            .map(|_| TtyRec {
                sid: r.u32(),
                pgrp: r.u32(),
                termios: termios(r),
                winsize: winsize(r),
                path: {
                    let mut p = r.bytes(60);
                    p.insert(0, b'/');
                    p
                },
            })
            .collect(),
        zombies: (0..u32::try_from(r.below(3)).expect("n"))
            .map(|i| Zombie {
                pid: 100 + i,
                tree: tree(r),
                status: r.u32(),
            })
            .collect(),
        processes: (0..r.below(4)).map(|_| process(r)).collect(),
        execs: (0..r.below(3)).map(|_| exec(r)).collect(),
    }
}

#[test]
fn write_then_parse_gives_the_same_manifest() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut runs, mut threads, mut escapes, mut strings, mut long) = (0, 0, 0, 0, 0);
    for i in 0..3000 {
        let m = manifest(&mut r);
        runs += m.files.iter().map(|f| f.runs.len()).sum::<usize>();
        let vmas = m.processes.iter().flat_map(|p| &p.vmas);
        runs += vmas.map(|v| v.copies.len()).sum::<usize>();
        threads += m.processes.iter().map(|p| p.threads.len()).sum::<usize>();
        let all = m.execs.iter().flat_map(|e| e.argv.iter().chain(&e.envp));
        strings += all.clone().count();
        long += all.filter(|s| s.len() > EXEC_CHUNK).count();
        let text = m.to_text();
        let back = match parse(text.as_bytes()) {
            Ok(b) => b,
            Err(e) => panic!("case {i}: {e}\n{text}"),
        };
        assert_eq!(back, m, "case {i}\n{text}");
        assert_eq!(back.to_text(), text, "case {i}");
        let copies: u64 = m
            .processes
            .iter()
            .flat_map(|p| &p.vmas)
            .flat_map(|v| &v.copies)
            .map(|c| c.len)
            .sum::<u64>()
            + m.files
                .iter()
                .flat_map(|f| &f.runs)
                .map(|r| r.len)
                .sum::<u64>()
            + m.pipes.iter().map(PipeRec::data_len).sum::<u64>()
            + m.unixes
                .iter()
                .flat_map(UnixRec::runs)
                .map(|r| r.len)
                .sum::<u64>()
            + m.tcps
                .iter()
                .map(|t| t.send_len() + t.recv_len())
                .sum::<u64>()
            + m.ptys
                .iter()
                .flat_map(PtyRec::runs)
                .map(|r| r.len)
                .sum::<u64>();
        assert_eq!(m.copy_bytes(), copies, "case {i}");
        escapes += text.matches('%').count();
    }
    // The generator covers what it should.
    assert!(
        runs > 3000 && threads > 3000 && escapes > 3000 && strings > 3000 && long > 300,
        "{runs} {threads} {escapes} {strings} {long}"
    );
}

#[test]
fn the_empty_manifest_is_the_header() {
    let m = Manifest::default();
    assert_eq!(m.to_text(), "owvmm-manifest 1\n");
    assert_eq!(parse(b"owvmm-manifest 1\n"), Ok(m.clone()));
    // The final newline may be missing.
    assert_eq!(parse(b"owvmm-manifest 1"), Ok(m.clone()));
    assert_eq!("owvmm-manifest 1\n".parse::<Manifest>(), Ok(m));
}
