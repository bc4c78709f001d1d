//! The parser on good and malformed input: every error names its line.

use owvmm_manifest::{
    parse, parse_each, ErrorKind, FileRun, ParseError, Parsed, HEADER, MAX_ERRORS, MAX_LINE,
    PROT_EXEC, PROT_READ,
};

fn fpu_hex() -> String {
    "0".repeat(1024)
}

fn regs_hex() -> String {
    let mut r = vec!["0"; 27];
    r[16] = "401000"; // rip
    r[15] = "ffffffffffffffff"; // orig_rax
    r.join(" ")
}

fn good() -> String {
    format!(
        "owvmm-manifest 1\n\
         file 5 1a4 1 /tmp/a%20b\n\
         fcopy 0 3000 5\n\
         process 42 my prog\n\
         exe /bin/prog\n\
         cwd /\n\
         mm 400000 401000 402000 403000 404000 405000 7ffff000 7ffff100 7ffff200 7ffff200 7ffff300\n\
         auxv 6 1000 0 0\n\
         vma 400000 401000 r-x p 0 file /bin/prog\n\
         vma 7ffde000 7ffff000 rw- pg 0 stack\n\
         copy 7fffe000 1000 1000\n\
         vma 7ffff000 7ffff002000 r-x p 0 vdso\n\
         fd 0 8000 0 chr /dev/null\n\
         fd 3 8401 1a reg /tmp/log\n\
         sig 10 401100 14000000 401200 0\n\
         thread 42 my prog\n\
         regs {}\n\
         fpu {}\n\
         sigmask 0\n\
         tid-address 7ffff010\n\
         robust-list 7ffff020 18\n\
         rseq 7ffff040 20 53053053\n\
         thread 43 worker\n\
         regs {}\n\
         fpu {}\n\
         end\n",
        regs_hex(),
        fpu_hex(),
        regs_hex(),
        fpu_hex()
    )
}

#[test]
fn parses_a_good_manifest() {
    let m = parse(good().as_bytes()).expect("good manifest");
    assert_eq!(m.files.len(), 1);
    let f = &m.files[0];
    assert_eq!(f.path, b"/tmp/a b");
    assert_eq!(f.mode, 0o644);
    assert_eq!(f.update, owvmm_manifest::FileUpdate::Overwrite);
    assert_eq!(
        f.runs,
        vec![FileRun {
            offset: 0,
            gpa: 0x3000,
            len: 5
        }]
    );
    assert_eq!(m.processes.len(), 1);
    let p = &m.processes[0];
    assert_eq!(p.pid, 42);
    assert_eq!(p.comm, b"my prog");
    assert_eq!(p.mm.brk, 0x405000);
    assert_eq!(p.auxv, vec![6, 0x1000, 0, 0]);
    assert_eq!(p.vmas.len(), 3);
    assert_eq!(p.vmas[0].prot, PROT_READ | PROT_EXEC);
    assert!(p.vmas[1].growsdown && !p.vmas[1].shared);
    assert_eq!(p.vmas[1].copies.len(), 1);
    assert_eq!(p.fds[1].flags, 0x8401);
    assert_eq!(p.fds[1].pos, 0x1a);
    assert_eq!(p.sigs[0].signo, 10);
    assert_eq!(p.threads.len(), 2);
    assert_eq!(p.threads[0].regs[16], 0x401000);
    assert_eq!(p.threads[0].rseq, Some((0x7fff_f040, 0x20, 0x5305_3053)));
    assert_eq!(p.threads[1].comm, b"worker");
    assert_eq!(p.threads[1].tid_address, None);
    assert_eq!(m.copy_bytes(), 0x1005);
    // The writer gives the same manifest back (the input's %20 is written as a space).
    assert_eq!(parse(m.to_text().as_bytes()), Ok(m));
}

fn with_line(replace: &str, by: &str) -> Parsed {
    let text = good().replacen(replace, by, 1);
    parse_each(text.as_bytes())
}

fn process_errors(m: &Parsed) -> Vec<ParseError> {
    match &m.processes[0] {
        Err(b) => b.errors.clone(),
        Ok(_) => Vec::new(),
    }
}

#[test]
fn bad_lines_in_a_process_fail_only_that_process() {
    let m = with_line("sigmask 0\n", "sigmask 0x0\nfrob 1\n");
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    let e = process_errors(&m);
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(e[0].line, 19);
    assert_eq!(e[0].to_string(), "line 19: bad <mask> '0x0'");
    assert_eq!(e[1].to_string(), "line 20: unknown record 'frob'");
    match &m.processes[0] {
        Err(b) => assert_eq!(b.pid, 42),
        Ok(_) => panic!("must fail"),
    }
    // The strict parser refuses the whole manifest with the first bad line.
    let text = good().replacen("sigmask 0\n", "sigmask 0x0\nfrob 1\n", 1);
    assert_eq!(parse(text.as_bytes()).map(|_| ()), Err(e[0].clone()));
}

#[test]
fn structural_errors_are_global() {
    let m = parse_each(b"owvmm-manifest 2\nprocess 1 x\n");
    assert_eq!(m.errors.len(), 1);
    assert_eq!(m.errors[0].line, 1);
    assert_eq!(m.errors[0].kind, ErrorKind::NotVersion1);
    assert!(m.processes.is_empty());

    let e = parse(b"").expect_err("empty");
    assert_eq!((e.line, e.kind), (1, ErrorKind::Empty));

    // file after a process, end outside, unknown record outside a process.
    let text = good() + "file 1 1a4 0 /x\nend\nbogus\nregs 1\n";
    let m = parse_each(text.as_bytes());
    let lines: Vec<usize> = m.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![27, 28, 29, 30], "{:?}", m.errors);
    assert_eq!(
        m.errors[0].kind,
        ErrorKind::AfterFirstProcess { record: "file" }
    );
    assert_eq!(m.errors[1].kind, ErrorKind::EndOutsideProcess);
    assert_eq!(m.errors[2].to_string(), "line 29: unknown record 'bogus'");
    assert_eq!(m.errors[3].to_string(), "line 30: 'regs' outside a process");
    assert_eq!(parse(text.as_bytes()).expect_err("bad").line, 27);

    // Missing end.
    let text = good().replace("end\n", "");
    let m = parse_each(text.as_bytes());
    assert_eq!(m.errors[0].kind, ErrorKind::EndsInsideProcess);
    assert!(m.processes[0].is_err());

    // A process without its end before the next one.
    let text = good().replace("end\n", "") + "process 50 x\nend\n";
    let first = good().lines().position(|l| l == "end").expect("end") + 1;
    let m = parse_each(text.as_bytes());
    assert_eq!(
        m.errors[0],
        ParseError {
            line: first,
            kind: ErrorKind::NoEndBeforeProcess { pid: 42 }
        },
        "{:?}",
        m.errors
    );
}

#[test]
fn field_rules() {
    let cases: &[(&str, &str, usize, &str)] = &[
        (
            "copy 7fffe000 1000 1000",
            "copy 7fffe000 1000 800",
            11,
            "page",
        ),
        (
            "copy 7fffe000 1000 1000",
            "copy 7ffff000 1000 1000",
            11,
            "outside",
        ),
        (
            "copy 7fffe000 1000 1000",
            "copy 7fffe000 1000",
            11,
            "fields",
        ),
        (
            "vma 7ffde000 7ffff000 rw- pg 0 stack",
            "vma 7ffde000 7ffff000 rw- pg 0 stack /x",
            10,
            "no path",
        ),
        (
            "vma 7ffde000 7ffff000 rw- pg 0 stack",
            "vma 7ffde000 7ffff000 rwz pg 0 stack",
            10,
            "prot",
        ),
        (
            "vma 7ffde000 7ffff000 rw- pg 0 stack",
            "vma 7ffde000 7ffff000 rw- q 0 stack",
            10,
            "share",
        ),
        (
            "vma 7ffde000 7ffff000 rw- pg 0 stack",
            "vma 300000 3ff000 rw- pg 0 stack",
            10,
            "not above",
        ),
        (
            "vma 7ffde000 7ffff000 rw- pg 0 stack",
            "vma 7ffde000 7ffff000 rw- pg 800 stack",
            10,
            "page aligned",
        ),
        (
            "vma 400000 401000 r-x p 0 file /bin/prog",
            "vma 400000 401000 r-x p 0 file",
            9,
            "needs a path",
        ),
        (
            "vma 7ffff000 7ffff002000 r-x p 0 vdso",
            "vma 7ffff000 7ffff002000 r-x p 0 vdso\ncopy 7ffff000 0 1000",
            13,
            "into a vdso",
        ),
        (
            "fd 3 8401 1a reg /tmp/log",
            "fd 3 8401 1a reg tmp/log",
            14,
            "absolute",
        ),
        (
            "fd 3 8401 1a reg /tmp/log",
            "fd 0 8401 1a reg /tmp/log",
            14,
            "twice",
        ),
        (
            "fd 3 8401 1a reg /tmp/log",
            "fd 3 8401 1A reg /tmp/log",
            14,
            "pos",
        ),
        (
            "fd 3 8401 1a reg /tmp/log",
            "fd 3 8401 1a pipe /tmp/log",
            14,
            "kind",
        ),
        (
            "fd 3 8401 1a reg /tmp/log",
            "fd 3 108401 1a reg /tmp/log",
            14,
            "",
        ),
        (
            "fd 3 8401 1a reg /tmp/log",
            "fd 3 100000000 1a reg /tmp/log",
            14,
            "out of range",
        ),
        (
            "sig 10 401100 14000000 401200 0",
            "sig 9 401100 14000000 401200 0",
            15,
            "cannot have",
        ),
        (
            "sig 10 401100 14000000 401200 0",
            "sig 65 401100 14000000 401200 0",
            15,
            "<signo> 65 out of range",
        ),
        ("thread 43 worker", "thread 42 worker", 23, "twice"),
        (
            "thread 43 worker",
            "thread 0 worker",
            23,
            "<tid> 0 out of range",
        ),
        (
            "tid-address 7ffff010",
            "tid-address 7ffff010\ntid-address 1",
            21,
            "second 'tid-address' for thread 42",
        ),
        ("exe /bin/prog", "exe /bin/%zzprog", 5, "escape"),
        ("exe /bin/prog", "exe /bin/prog\nexe /x", 6, "second 'exe'"),
        ("cwd /", "cwd /\nfpu 0", 7, "before the first 'thread'"),
        ("auxv 6 1000 0 0", "auxv 6 1000 0", 8, "pairs"),
        ("auxv 6 1000 0 0", "auxv 6 1000 7 0", 8, "AT_NULL"),
        ("mm 400000 401000", "mm 400000", 7, "fields"),
        (
            "sigmask 0",
            "sigmask 0\nfd 9 0 0 chr /x",
            20,
            "after the first 'thread'",
        ),
        (
            "rseq 7ffff040 20 53053053",
            "rseq 7ffff040 20 153053053",
            22,
            "<sig>",
        ),
        (
            "robust-list 7ffff020 18",
            "robust-list 7ffff020 18 0",
            21,
            "trailing",
        ),
        (
            "thread 43 worker\nregs",
            "thread 43 worker\nregz",
            24,
            "unknown",
        ),
    ];
    for (from, to, line, want) in cases {
        let m = with_line(from, to);
        if want.is_empty() {
            assert!(m.errors.is_empty() && process_errors(&m).is_empty(), "{to}");
            continue;
        }
        assert!(m.errors.is_empty(), "{to}: {:?}", m.errors);
        let e = process_errors(&m);
        assert!(
            e.iter()
                .any(|e| e.line == *line && e.to_string().contains(want)),
            "{to}: want line {line} '{want}', got {e:?}"
        );
    }
    // The leader must come first and every thread needs regs and fpu.
    let m = with_line("thread 42 my prog", "thread 7 my prog");
    assert!(process_errors(&m)[0].to_string().contains("leader"));
    let text = good().replacen(&format!("fpu {}\nend", fpu_hex()), "end", 1);
    let e = parse(text.as_bytes()).expect_err("no fpu");
    assert_eq!((e.line, e.kind), (23, ErrorKind::NoFpu { tid: 43 }));
    let text = good().replacen("auxv 6 1000 0 0\n", "", 1);
    let e = parse(text.as_bytes()).expect_err("no auxv");
    assert_eq!(e.to_string(), "line 4: no 'auxv' record");
    let text = good().replacen(
        "copy 7fffe000 1000 1000\n",
        "copy 7fffe000 1000 1000\ncopy 7fffe000 2000 1000\n",
        1,
    );
    let e = parse(text.as_bytes()).expect_err("two copies");
    assert_eq!(e.kind, ErrorKind::TwoCopies { vaddr: 0x7fff_e000 });
    // Global file rules.
    let m = with_line("fcopy 0 3000 5", "fcopy 0 3000 6");
    assert_eq!(
        m.errors[0].to_string(),
        "line 3: fcopy beyond the file size"
    );
    let m = with_line("file 5 1a4 1", "file 5 1a4 3");
    assert_eq!(m.errors[0].to_string(), "line 2: bad <update> '3'");
    let m = with_line("file 5 1a4 1", "file 5 11a4 1");
    assert_eq!(m.errors[0].line, 2);
    assert!(
        m.errors[0].to_string().contains("<mode>"),
        "{}",
        m.errors[0]
    );
    let m = with_line("file 5 1a4 1", "file 100000000000000 1a4 1");
    assert!(
        m.errors[0].to_string().contains("<size>"),
        "{}",
        m.errors[0]
    );
    let m = with_line("fcopy 0 3000 5", "fcopy 0 3000 0");
    assert_eq!(m.errors[0].kind, ErrorKind::EmptyFcopy);
    let m = parse_each(format!("{HEADER}\nfcopy 0 0 1\n").as_bytes());
    assert_eq!(m.errors[0].kind, ErrorKind::FcopyWithoutFile);
    let m = parse_each(format!("{HEADER}\nfile 5 1a4 0 /a%00b\n").as_bytes());
    assert_eq!(m.errors[0].kind, ErrorKind::NulInPath);
}

#[test]
fn bounds() {
    let m = parse_each(format!("{HEADER}\n{}\n", "x".repeat(MAX_LINE + 1)).as_bytes());
    assert_eq!(
        m.errors[0],
        ParseError {
            line: 2,
            kind: ErrorKind::LineTooLong { len: MAX_LINE + 1 }
        }
    );
    let m = parse_each(format!("{HEADER}\n\nfile\t1\n").as_bytes());
    assert_eq!(m.errors[0].to_string(), "line 2: empty line");
    assert_eq!(
        m.errors[1].to_string(),
        "line 3: byte 0x09 is not printable ASCII"
    );
    let long = format!("/{}", "a".repeat(4095));
    let m = parse_each(format!("{HEADER}\nfile 0 0 0 {long}\n").as_bytes());
    assert_eq!(m.errors[0].kind, ErrorKind::TextTooLong);
    let auxv = vec!["1"; 130].join(" ");
    let m = with_line("auxv 6 1000 0 0", &format!("auxv {auxv}"));
    assert_eq!(process_errors(&m)[0].kind, ErrorKind::AuxvTooLong);
    let text = format!("{HEADER}\n{}", "bogus\n".repeat(MAX_ERRORS + 50));
    let m = parse_each(text.as_bytes());
    assert_eq!(m.errors.len(), MAX_ERRORS);
    assert_eq!(m.more_errors, 50);
}

#[test]
fn never_panics_on_garbage() {
    let mut seed = 0x1234_5678_u32;
    let base = good().into_bytes();
    for _ in 0..2000 {
        let mut text = base.clone();
        for _ in 0..4 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let i = usize::try_from(seed >> 8).unwrap_or(0) % text.len();
            text[i] = u8::try_from(seed >> 24).unwrap_or(b'?');
        }
        // Whatever parses is written back to the same manifest.
        if let Ok(m) = parse(&text) {
            assert_eq!(parse(m.to_text().as_bytes()), Ok(m));
        }
    }
    let _ = parse(&vec![b'a'; MAX_LINE + 10]);
    let _ = parse(b"owvmm-manifest 1\n\n\n");
}

fn exec_block(body: &str) -> String {
    format!("{HEADER}\nexec 77 sleep\npath /bin/sleep\n{body}end\n")
}

#[test]
fn parses_exec_blocks() {
    let text = exec_block(
        "cwd /tmp\narg sleep\narg\narg a%20b\nmore cd\nenv PATH=/bin\nfd 1 1 0 chr /dev/console\nsig 13 1 0 0 0\nsigmask 4000\n",
    );
    let m = parse(text.as_bytes()).expect("exec block");
    assert!(m.processes.is_empty());
    let e = &m.execs[0];
    assert_eq!((e.pid, e.comm.as_slice()), (77, b"sleep".as_slice()));
    assert_eq!(e.path, b"/bin/sleep");
    assert_eq!(e.cwd.as_deref(), Some(b"/tmp".as_slice()));
    let argv: Vec<&[u8]> = e.argv.iter().map(Vec::as_slice).collect();
    assert_eq!(argv, [b"sleep".as_slice(), b"", b"a bcd"]);
    assert_eq!(e.envp, [b"PATH=/bin".to_vec()]);
    assert_eq!((e.fds.len(), e.sigs.len(), e.sigmask), (1, 1, 0x4000));
    assert_eq!(
        m.to_text(),
        text.replace("arg a%20b\nmore cd\n", "arg a bcd\n")
    );

    // Strict: path required, order, continuation, bounds, unknown records.
    let err = |body: &str| {
        parse_each(exec_block(body).as_bytes()).execs[0]
            .as_ref()
            .map(|_| ())
            .expect_err("bad block")
            .errors[0]
            .kind
            .clone()
    };
    assert_eq!(
        parse_each(format!("{HEADER}\nexec 5\nend\n").as_bytes()).execs[0]
            .as_ref()
            .map(|_| ())
            .expect_err("no path")
            .errors[0]
            .kind,
        ErrorKind::NoPath
    );
    assert_eq!(err("more x\n"), ErrorKind::MoreWithoutString);
    assert_eq!(
        err("arg a\nsigmask 0\nmore x\n"),
        ErrorKind::MoreWithoutString
    );
    assert_eq!(err("arg a\nmore\n"), ErrorKind::EmptyMore);
    assert_eq!(err("env A=1\narg a\n"), ErrorKind::ArgAfterEnv);
    assert_eq!(err("path /x\n"), ErrorKind::Second { record: "path" });
    assert!(matches!(err("cwd x\n"), ErrorKind::NotAbsolute { .. }));
    assert!(matches!(err("mm 0\n"), ErrorKind::UnknownRecord { .. }));
    assert!(matches!(
        err("thread 77\n"),
        ErrorKind::UnknownRecord { .. }
    ));
    let chunk = "a".repeat(8000);
    let mut long = format!("arg {chunk}\n");
    for _ in 0..16 {
        long.push_str(&format!("more {chunk}\n"));
    }
    assert_eq!(err(&long), ErrorKind::StringTooLong);
    let mut many = String::new();
    for _ in 0..300 {
        many.push_str(&format!("env {chunk}\n"));
    }
    assert_eq!(err(&many), ErrorKind::StringsTooLong);
    // Exec records outside a block, and a block left open, are structural errors.
    let m = parse_each(format!("{HEADER}\narg x\n").as_bytes());
    assert_eq!(
        m.errors[0].kind,
        ErrorKind::OutsideProcess { record: "arg" }
    );
    let m = parse_each(format!("{HEADER}\nexec 5\npath /x\nprocess 6\n").as_bytes());
    assert_eq!(m.errors[0].kind, ErrorKind::NoEndBeforeProcess { pid: 5 });
    assert!(parse(format!("{HEADER}\nexec 5\npath /x\nend\nfile 0 0 0 /x\n").as_bytes()).is_err());
}

#[test]
fn pipes_and_their_data() {
    let text = good().replace(
        "process 42 my prog\n",
        "pipe 3 10000\npdata 5000 7\npdata 9000 1000\nprocess 42 my prog\n",
    );
    let text = text.replace(
        "fd 3 8401 1a reg /tmp/log\n",
        "fd 3 8401 1a reg /tmp/log\nfd 4 1 0 fifo pipe:3\n",
    );
    let m = parse(text.as_bytes()).expect("parses");
    assert_eq!(m.pipes.len(), 1);
    assert_eq!((m.pipes[0].id, m.pipes[0].size), (3, 0x10000));
    assert_eq!(m.pipes[0].data_len(), 0x1007);
    assert_eq!(m.processes[0].fds[2].pipe_id(), Some(3));
    assert_eq!(m.processes[0].fds[1].pipe_id(), None);
    assert!(m.copy_bytes() >= 0x1007);
    let err = |from: &str, to: &str| {
        let t = text.replace(from, to);
        parse(t.as_bytes()).expect_err(to).kind.to_string()
    };
    assert!(err("pdata 5000 7\n", "pdata 5000 0\n").contains("empty"));
    assert!(err("pipe 3 10000\n", "pipe 3 1000\n").contains("beyond"));
    assert!(err("pipe 3 10000\n", "pipe 3 0\n").contains("range"));
    assert!(err("pipe 3 10000\n", "pipe 3 10000\npipe 3 10\n").contains("twice"));
    assert!(err("pipe 3 10000\npdata 5000 7\n", "pdata 5000 7\n").contains("without"));
    assert!(err("pdata 9000 1000\n", "pdata ffffffffffffffff 1000\n").contains("overflows"));
    assert!(err("end\n", "end\npipe 9 10\n").contains("after the first process"));
    // Ends whose path is not a pipe reference name no pipe.
    for bad in ["pipe:", "pipe:x", "pipe:-1", "pipe:99999999999", "/pipe:3"] {
        let t = text.replace("fifo pipe:3", &format!("fifo {bad}"));
        let m = parse(t.as_bytes()).expect("parses");
        assert_eq!(m.processes[0].fds[2].pipe_id(), None, "{bad}");
    }
}

#[test]
fn inet_sockets_and_epoll_interest_lists() {
    let addr = "7f000001000000000000000000000000";
    let text = good()
        .replace(
            "process 42 my prog\n",
            &format!("inet 9 2 1 6379 511 0 {addr}\nprocess 42 my prog\n"),
        )
        .replace(
            "fd 3 8401 1a reg /tmp/log\n",
            "fd 3 8401 1a reg /tmp/log\nfd 5 802 0 sock inet:9\nfd 6 2 0 sock reset:1\nfd 7 80000 0 other epoll\nepoll 7 5 1 5\nepoll 7 6 2019 6\n",
        );
    let m = parse(text.as_bytes()).expect("parses");
    assert_eq!(m.inets.len(), 1);
    let s = m.inets[0];
    assert_eq!(
        (s.id, s.family, s.sock_type, s.port, s.backlog),
        (9, 2, 1, 6379, 511)
    );
    assert_eq!(s.addr[..4], [127, 0, 0, 1]);
    let p = &m.processes[0];
    assert_eq!(p.fds[2].inet_id(), Some(9));
    assert!(p.fds[3].is_reset() && p.fds[4].is_epoll());
    assert_eq!(p.epoll.len(), 2);
    assert_eq!(
        (p.epoll[1].fd, p.epoll[1].events, p.epoll[1].data),
        (6, 0x2019, 6)
    );
    let err = |from: &str, to: &str| {
        let t = text.replace(from, to);
        parse(t.as_bytes()).expect_err(to).kind.to_string()
    };
    assert!(err("inet 9 2 1", "inet 9 3 1").contains("family"));
    assert!(err("inet 9 2 1", "inet 9 2 5").contains("type"));
    assert!(err("6379 511 0", "70000 511 0").contains("range"));
    assert!(err(addr, "7f00").contains("addr"));
    assert!(err("epoll 7 5", "epoll 3 5").contains("not an epoll"));
    assert!(err("epoll 7 6 2019 6", "epoll 7 5 2019 6").contains("twice"));
    assert!(err(
        &format!("inet 9 2 1 6379 511 0 {addr}\n"),
        &format!("inet 9 2 1 6379 511 0 {addr}\ninet 9 2 2 53 0 0 {addr}\n")
    )
    .contains("twice"));
}

#[test]
fn interval_and_posix_timers() {
    let timers = "itimer 0 3b9aca00 3b9aca00\n\
                  itimer 2 10 0\n\
                  ptimer 0 1 0 34 0 0 2a 3b9aca00 0\n\
                  ptimer 3 0 4 14 43 1 0 17e1f1c5a4b0c000 5f5e100\n\
                  ptimer 5 7 1 0 0 0 0 0 0\n\
                  ptimer-next 6\n\
                  thread 42";
    let m = parse(good().replacen("thread 42", timers, 1).as_bytes()).expect("timers parse");
    let p = &m.processes[0];
    assert_eq!(p.itimers.len(), 2);
    assert_eq!(p.itimers[0].value_ns, 1_000_000_000);
    assert_eq!(p.itimers[1].which, 2);
    assert_eq!(p.ptimers.len(), 3);
    assert_eq!(p.ptimers[0].value, 42);
    assert_eq!(p.ptimers[0].signo, 34);
    assert!(p.ptimers[1].absolute);
    assert_eq!(p.ptimers[1].tid, 43);
    assert_eq!(p.ptimers[1].interval_ns, 100_000_000);
    assert_eq!(p.ptimer_next, Some(6));
    assert_eq!(
        parse(m.to_text().as_bytes()).expect("again"),
        m,
        "round trip"
    );
    // Each bad line fails the process, never the parser.
    for bad in [
        "itimer 3 1 0",
        "itimer 0 0 0",
        "itimer 0 1",
        "ptimer 2147483648 1 0 34 0 0 0 1 0",
        "ptimer 1 3 0 34 0 0 0 1 0",
        "ptimer 1 1 3 34 0 0 0 1 0",
        "ptimer 1 1 0 0 0 0 0 1 0",
        "ptimer 1 1 0 65 0 0 0 1 0",
        "ptimer 1 1 4 34 0 0 0 1 0",
        "ptimer 1 1 0 34 43 0 0 1 0",
        "ptimer 1 1 0 34 0 2 0 1 0",
        "ptimer 1 1 0 34 0 0 0 1 0 9",
        "ptimer-next x",
        "ptimer-next 2147483648",
    ] {
        let m = with_line("thread 42", &format!("{bad}\nthread 42"));
        assert!(!process_errors(&m).is_empty(), "{bad} accepted");
        assert!(m.errors.is_empty(), "{bad}: {:?}", m.errors);
    }
    for twice in [
        "itimer 0 1 0\nitimer 0 2 0",
        "ptimer 4 1 0 34 0 0 0 1 0\nptimer 4 1 0 34 0 0 0 1 0",
        "ptimer 4 1 0 34 0 0 0 1 0\nptimer 3 1 0 34 0 0 0 1 0",
        "ptimer-next 1\nptimer-next 1",
    ] {
        let m = with_line("thread 42", &format!("{twice}\nthread 42"));
        assert_eq!(process_errors(&m).len(), 1, "{twice}");
    }
    // After the first thread they are misplaced.
    let m = with_line("thread 43", "ptimer 1 1 0 34 0 0 0 1 0\nthread 43");
    assert!(matches!(
        process_errors(&m)[0].kind,
        ErrorKind::AfterFirstThread { record: "ptimer" }
    ));
}
