//! Resurrection on the host, end to end: a real process is stopped with ptrace, dumped
//! into a manifest (the format of `docs/resurrection.md`) plus a "window file" holding its
//! memory, killed, and then recreated by the real `ow-agent` binary (not PID 1) from a
//! `resurrect` request on its channel, with the same PID. The test then checks that the
//! program simply continues.
//!
//! The manifest builder here is test code: it reads /proc and ptrace instead of a dead
//! kernel's memory (the real one lives in `recovery/`). Needs root (ptrace, clone3 with
//! set_tid, PR_SET_MM_MAP, /proc/PID/pagemap), a C compiler and a static libc.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const PAGE: u64 = 4096;
const PAGE_SZ: usize = 4096;
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The agent on a pty (as in tests/host.rs).

struct Agent {
    child: Child,
    master: File,
    buf: Vec<u8>,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, mem: &Path) -> Self {
        let common::Pty {
            master,
            slave_path,
            _slave: slave,
        } = common::openpty();
        let exec = dir.join("exec");
        fs::write(&exec, "sleep 1000\n").expect("exec file");
        let log = dir.join("agent.log");
        // OW_AGENT_BIN runs another build (e.g. the static release binary of the guest).
        let bin = std::env::var_os("OW_AGENT_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_ow-agent")),
            PathBuf::from,
        );
        let child = Command::new(bin)
            .env("OW_AGENT_CHANNEL", &slave_path)
            .env("OW_AGENT_EXEC", &exec)
            .env("OW_AGENT_CONSOLE", dir.join("console.log"))
            .env("OW_AGENT_MEM", mem)
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("log"))
            .stderr(File::options().append(true).open(&log).expect("log"))
            .spawn()
            .expect("spawn ow-agent");
        drop(slave);
        Self {
            child,
            master,
            buf: Vec::new(),
            log,
        }
    }

    fn send(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to agent");
    }

    /// The next line that is not a heartbeat.
    fn line(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if line.starts_with("hb ") {
                    continue;
                }
                return line;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timeout; agent log:\n{}", self.log_text());
            let mut pfd = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            let mut chunk = [0u8; 4096];
            if let Ok(n) = self.master.read(&mut chunk) {
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    /// Skips lines until one starts with `prefix`.
    fn expect(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line();
            if l.starts_with(prefix) {
                return l;
            }
            eprintln!("agent: {l}");
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers.

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ow-resurrect-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("tmpdir");
    d
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timeout waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ptrace(req: libc::c_uint, tid: i32, addr: u64, data: u64) -> i64 {
    // SAFETY: callers pass integers or pointers to buffers of the size `req` uses.
    unsafe {
        libc::ptrace(
            req,
            tid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    }
}

fn waitpid(tid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: `status` is a valid int.
    let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
    assert_eq!(r, tid, "waitpid {tid}: {}", std::io::Error::last_os_error());
    status
}

/// Manifest escaping: bytes outside printable ASCII and `%` as `%XX`.
fn esc(s: &[u8]) -> String {
    let mut out = String::new();
    for &b in s {
        if (0x21..0x7f).contains(&b) && b != b'%' || b == b' ' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn path_bytes(p: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().to_vec()
}

/// The "old memory": page contents at growing offsets (our stand-in for GPAs).
#[derive(Default)]
struct Window {
    data: Vec<u8>,
}

impl Window {
    fn put(&mut self, bytes: &[u8]) -> u64 {
        let gpa = self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        let pad = (PAGE_SZ - self.data.len() % PAGE_SZ) % PAGE_SZ;
        self.data.resize(self.data.len() + pad, 0);
        gpa
    }
}

// ---------------------------------------------------------------------------------------
// The manifest builder (test only).

struct Dump {
    manifest: String,
    window: Window,
}

/// Dumps stopped process `pid` (threads `tids`, stopped by us with ptrace).
fn dump(pid: i32, tids: &[i32], report: &str, files: &[PathBuf]) -> Dump {
    let mut m = String::from("owvmm-manifest 1\n");
    let mut w = Window::default();

    // Files of "in-memory file systems": their content comes from the window.
    for f in files {
        let content = fs::read(f).expect("read file");
        let _ = writeln!(m, "file {:x} 1a4 1 {}", content.len(), esc(&path_bytes(f)));
        for (i, chunk) in content.chunks(PAGE_SZ).enumerate() {
            let gpa = w.put(chunk);
            let _ = writeln!(m, "fcopy {:x} {gpa:x} {:x}", i as u64 * PAGE, chunk.len());
        }
    }

    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
    let _ = writeln!(m, "process {pid} {}", esc(comm.trim_end().as_bytes()));
    let exe = fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    let _ = writeln!(m, "exe {}", esc(&path_bytes(&exe)));
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).expect("cwd");
    let _ = writeln!(m, "cwd {}", esc(&path_bytes(&cwd)));

    // mm: /proc/PID/stat, plus the brk the program reported.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|s| {
            s.parse::<i64>()
                .map_or(0, |v| u64::from_ne_bytes(v.to_ne_bytes()))
        })
        .collect();
    let field = |n: usize| f[n - 3];
    let report_word = |key: &str| -> Vec<String> {
        report
            .lines()
            .filter(|l| l.starts_with(&format!("{key} ")))
            .map(str::to_owned)
            .collect()
    };
    let brk = u64::from_str_radix(report_word("brk")[0].split(' ').nth(1).expect("brk"), 16)
        .expect("brk");
    let _ = writeln!(
        m,
        "mm {:x} {:x} {:x} {:x} {:x} {brk:x} {:x} {:x} {:x} {:x} {:x}",
        field(26),
        field(27),
        field(45),
        field(46),
        field(47),
        field(28),
        field(48),
        field(49),
        field(50),
        field(51)
    );
    let auxv = fs::read(format!("/proc/{pid}/auxv")).expect("auxv");
    let mut words = Vec::new();
    for pair in auxv.chunks_exact(16) {
        let k = u64::from_ne_bytes(pair[..8].try_into().expect("8"));
        let v = u64::from_ne_bytes(pair[8..].try_into().expect("8"));
        words.push(format!("{k:x}"));
        words.push(format!("{v:x}"));
        if k == 0 {
            break;
        }
    }
    let _ = writeln!(m, "auxv {}", words.join(" "));

    // Memory areas, and the pages to copy (pagemap: present/swapped, anonymous).
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let vmflags: Vec<&str> = smaps
        .lines()
        .filter_map(|l| l.strip_prefix("VmFlags:"))
        .collect();
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).expect("pagemap");
    let mem = File::open(format!("/proc/{pid}/mem")).expect("mem");
    for (i, line) in maps.lines().enumerate() {
        let mut it = line.split_whitespace();
        let (s, e) = it.next().expect("range").split_once('-').expect("range");
        let start = u64::from_str_radix(s, 16).expect("start");
        let end = u64::from_str_radix(e, 16).expect("end");
        let perms = it.next().expect("perms").as_bytes().to_vec();
        let off = u64::from_str_radix(it.next().expect("off"), 16).expect("off");
        let name = it.nth(2).unwrap_or("");
        let kind = match name {
            "[heap]" => "heap",
            "[stack]" => "stack",
            "[vdso]" => "vdso",
            "[vsyscall]" => "vsyscall",
            n if n.starts_with("[vvar") => "vvar",
            n if n.starts_with('/') => "file",
            _ => "anon",
        };
        let shared = perms[3] == b's';
        let gd = vmflags[i].split_whitespace().any(|f| f == "gd");
        let prot = String::from_utf8(perms[..3].to_vec()).expect("perms");
        let share = format!(
            "{}{}",
            if shared { "s" } else { "p" },
            if gd { "g" } else { "" }
        );
        let pgoff = if kind == "file" { off } else { 0 };
        let path = if kind == "file" {
            format!(" {}", esc(name.as_bytes()))
        } else {
            String::new()
        };
        let _ = writeln!(
            m,
            "vma {start:x} {end:x} {prot} {share} {pgoff:x} {kind}{path}"
        );
        if matches!(kind, "vdso" | "vvar" | "vsyscall") || (kind == "file" && shared) {
            continue;
        }
        let npages = ((end - start) / PAGE) as usize;
        let mut pm = vec![0u8; npages * 8];
        pagemap
            .read_exact_at(&mut pm, start / PAGE * 8)
            .expect("pagemap read");
        let mut run: Option<(u64, u64, u64)> = None; // (vaddr, gpa, len)
        for p in 0..npages {
            let e = u64::from_ne_bytes(pm[p * 8..p * 8 + 8].try_into().expect("8"));
            let present = e >> 63 & 1 == 1;
            let swapped = e >> 62 & 1 == 1;
            let filepage = e >> 61 & 1 == 1;
            let want = if kind == "file" {
                present && !filepage
            } else {
                present || swapped
            };
            if !want {
                continue;
            }
            let va = start + p as u64 * PAGE;
            let mut page = vec![0u8; PAGE_SZ];
            mem.read_exact_at(&mut page, va).expect("read page");
            let gpa = w.put(&page);
            run = match run {
                Some((v, g, l)) if v + l == va && g + l == gpa => Some((v, g, l + PAGE)),
                Some((v, g, l)) => {
                    let _ = writeln!(m, "copy {v:x} {g:x} {l:x}");
                    Some((va, gpa, PAGE))
                }
                None => Some((va, gpa, PAGE)),
            };
        }
        if let Some((v, g, l)) = run {
            let _ = writeln!(m, "copy {v:x} {g:x} {l:x}");
        }
    }

    // Open files.
    let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .map(|e| {
            e.expect("fd")
                .file_name()
                .to_string_lossy()
                .parse()
                .expect("fd")
        })
        .collect();
    fds.sort_unstable();
    for fd in fds {
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).expect("fdinfo");
        let get = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .expect("fdinfo field")
                .trim()
                .to_owned()
        };
        let pos: u64 = get("pos:").parse().expect("pos");
        let flags = u64::from_str_radix(&get("flags:"), 8).expect("flags");
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd link");
        let ft = fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .expect("fd stat")
            .file_type();
        let kind = if ft.is_file() {
            "reg"
        } else if ft.is_char_device() {
            "chr"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "sock"
        } else {
            "other"
        };
        let _ = writeln!(
            m,
            "fd {fd} {flags:x} {pos:x} {kind} {}",
            esc(&path_bytes(&target))
        );
    }
    for s in report_word("sig") {
        let _ = writeln!(m, "{s}");
    }

    // Threads.
    let tid_addr = |tid: i32| {
        report_word("tid")
            .iter()
            .find_map(|l| {
                let mut it = l.split(' ').skip(1);
                (it.next()? == tid.to_string()).then(|| it.next().map(str::to_owned))?
            })
            .expect("tid address in the report")
    };
    for &tid in tids {
        let comm = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).expect("comm");
        let _ = writeln!(m, "thread {tid} {}", esc(comm.trim_end().as_bytes()));
        let mut regs = [0u64; 27];
        assert_eq!(
            ptrace(libc::PTRACE_GETREGS, tid, 0, regs.as_mut_ptr() as u64),
            0
        );
        // The interrupted-system-call rule the VMM applies: a call in progress returns
        // -EINTR, and no restart logic runs.
        let rax = i64::from_ne_bytes(regs[10].to_ne_bytes());
        if regs[15] != u64::MAX && matches!(rax, -516 | -514 | -513 | -512) {
            regs[10] = u64::from_ne_bytes(i64::from(-libc::EINTR).to_ne_bytes());
        }
        regs[15] = u64::MAX;
        let words: Vec<String> = regs.iter().map(|r| format!("{r:x}")).collect();
        let _ = writeln!(m, "regs {}", words.join(" "));
        let mut fpu = [0u8; 512];
        assert_eq!(
            ptrace(libc::PTRACE_GETFPREGS, tid, 0, fpu.as_mut_ptr() as u64),
            0
        );
        let hex: String = fpu.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(m, "fpu {hex}");
        let mut mask = 0u64;
        assert_eq!(
            ptrace(
                libc::PTRACE_GETSIGMASK,
                tid,
                8,
                &mut mask as *mut u64 as u64
            ),
            0
        );
        let _ = writeln!(m, "sigmask {mask:x}");
        let _ = writeln!(m, "tid-address {}", tid_addr(tid));
        let mut head = 0u64;
        let mut len = 0usize;
        // SAFETY: valid out-pointers for get_robust_list.
        let r = unsafe {
            libc::syscall(
                libc::SYS_get_robust_list,
                tid,
                &mut head as *mut u64,
                &mut len as *mut usize,
            )
        };
        if r == 0 && head != 0 {
            let _ = writeln!(m, "robust-list {head:x} {len:x}");
        }
        let mut rc = libc::ptrace_rseq_configuration {
            rseq_abi_pointer: 0,
            rseq_abi_size: 0,
            signature: 0,
            flags: 0,
            pad: 0,
        };
        let r = ptrace(
            libc::PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            std::mem::size_of_val(&rc) as u64,
            &mut rc as *mut _ as u64,
        );
        if r > 0 && rc.rseq_abi_pointer != 0 {
            let _ = writeln!(
                m,
                "rseq {:x} {:x} {:x}",
                rc.rseq_abi_pointer, rc.rseq_abi_size, rc.signature
            );
        }
    }
    m.push_str("end\n");
    Dump {
        manifest: m,
        window: w,
    }
}

/// Ticks in the program's stdout: (pid, counter, checksum ok, worker counter, usr1).
fn ticks(out: &Path) -> Vec<(i32, u64, u32, u64, u64)> {
    let text = fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() != 6 || f[0] != "tick" {
                return None;
            }
            Some((
                f[1].parse().ok()?,
                f[2].parse().ok()?,
                f[3].parse().ok()?,
                f[4].parse().ok()?,
                f[5].parse().ok()?,
            ))
        })
        .collect()
}

/// A free pid from `from` on (tests running at the same time start apart).
fn free_pid_from(from: i32) -> i32 {
    (from..from + 500)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid")
}

#[test]
fn resurrects_a_stopped_process_with_the_same_pid() {
    let dir = tmpdir();
    // The test program, static so that only its own file is mapped.
    let target = dir.join("resurrect_target");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/resurrect_target.c");
    let st = Command::new("cc")
        .args(["-static", "-O1", "-pthread", "-o"])
        .arg(&target)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(st.success(), "cc failed");

    let data = dir.join("state/data.txt");
    fs::create_dir_all(data.parent().expect("parent")).expect("mkdir");
    let report = dir.join("report");
    let out = dir.join("out.log");
    let mut cmd = Command::new(&target);
    // SAFETY: close_range is async-signal-safe. It drops descriptors that cargo's
    // jobserver leaves open (a fifo the manifest could not restore).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let prog = cmd
        .arg(&data)
        .arg(&report)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("out"))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn target");
    let pid = i32::try_from(prog.id()).expect("pid");
    wait_for("the report", || report.exists());
    wait_for("a few ticks", || ticks(&out).len() >= 5);
    let report_text = fs::read_to_string(&report).expect("report");

    // Stop every thread.
    let mut tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .map(|e| {
            e.expect("task")
                .file_name()
                .to_string_lossy()
                .parse()
                .expect("tid")
        })
        .collect();
    tids.sort_unstable();
    assert_eq!(tids.len(), 2, "two threads");
    assert_eq!(tids[0], pid);
    for &t in &tids {
        assert_eq!(ptrace(libc::PTRACE_SEIZE, t, 0, 0), 0, "seize {t}");
        assert_eq!(ptrace(libc::PTRACE_INTERRUPT, t, 0, 0), 0);
        let s = waitpid(t);
        assert!(libc::WIFSTOPPED(s), "{t}: {s:#x}");
    }
    let before = ticks(&out);
    let last = *before.last().expect("ticks");
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let maps_before = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let auxv_before = fs::read(format!("/proc/{pid}/auxv")).expect("auxv");
    let d = dump(pid, &tids, &report_text, std::slice::from_ref(&data));

    // The old process dies (threads first, then the leader is reaped).
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    waitpid(tids[1]);
    waitpid(pid);
    drop(prog);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    // The "fresh tmpfs": the data file is gone, the manifest brings it back.
    fs::remove_dir_all(data.parent().expect("parent")).expect("rm data");

    // The memory file: three manifests, then the window.
    let bad_pid = free_pid_from(31000);
    let zero_regs = {
        let mut r = vec!["0"; 27];
        r[15] = "ffffffffffffffff";
        r.join(" ")
    };
    // Two doomed processes: one fails in the child (an fd), one in the traced phase (a
    // mapped file that is gone).
    let bad_pid2 = bad_pid + 1;
    assert!(!Path::new(&format!("/proc/{bad_pid2}")).exists());
    let doomed = |pid: i32, extra: &str| {
        format!(
            "process {pid} doomed\n\
             mm 400000 401000 402000 403000 404000 404000 7ff000 7ff100 7ff200 7ff200 7ff300\n\
             auxv 0 0\n{extra}thread {pid} doomed\nregs {zero_regs}\nfpu {}\nend\n",
            "0".repeat(1024)
        )
    };
    let fails_in_child = format!(
        "owvmm-manifest 1\n{}{}",
        doomed(bad_pid, "fd 3 0 0 reg /nonexistent/x\n"),
        doomed(
            bad_pid2,
            "vma 400000 401000 r-x p 0 file /nonexistent/exe\n"
        )
    );
    let broken = "owvmm-manifest 1\nbogus record\nfile 1 1a4 0 relative\n".to_owned();
    let manifests = [d.manifest.clone(), fails_in_child, broken];
    let mut mem = Vec::new();
    let mut offs = Vec::new();
    for text in &manifests {
        offs.push((mem.len() as u64, text.len() as u64));
        mem.extend_from_slice(text.as_bytes());
        mem.resize(mem.len().next_multiple_of(PAGE_SZ), 0);
    }
    let window_gpa = mem.len() as u64;
    let window_len = d.window.data.len() as u64;
    mem.extend_from_slice(&d.window.data);
    let mem_path = dir.join("oldmem");
    fs::write(&mem_path, &mem).expect("write mem file");
    fs::write(dir.join("manifest.txt"), &d.manifest).expect("keep manifest");

    let mut agent = Agent::start(&dir, &mem_path);
    agent.expect("ready ");

    // A manifest with bad lines: each reported, nothing restored.
    agent.send(&format!(
        "resurrect {} {} {window_gpa} {window_len}",
        offs[2].0, offs[2].1
    ));
    let l = agent.expect("err ");
    assert_eq!(l, "err resurrect: manifest line 2: unknown record 'bogus'");
    let l = agent.expect("err ");
    assert!(l.starts_with("err resurrect: manifest line 3: "), "{l}");
    assert!(l.contains("not absolute"), "{l}");
    let l = agent.expect("resurrect-done ");
    assert!(l.starts_with("resurrect-done 0 0 "), "{l}");

    // A process that fails in the child: not restored, and nothing of it is left.
    agent.send(&format!(
        "resurrect {} {} {window_gpa} {window_len}",
        offs[1].0, offs[1].1
    ));
    let l = agent.expect("not-restored ");
    assert!(
        l.starts_with(&format!(
            "not-restored {bad_pid} fd 3: open /nonexistent/x: "
        )),
        "{l}"
    );
    let l = agent.expect("not-restored ");
    assert!(
        l.starts_with(&format!(
            "not-restored {bad_pid2} open /nonexistent/exe: No such file"
        )),
        "{l}"
    );
    let l = agent.expect("resurrect-done ");
    assert!(l.starts_with("resurrect-done 0 2 "), "{l}");
    assert!(!Path::new(&format!("/proc/{bad_pid}")).exists());
    assert!(!Path::new(&format!("/proc/{bad_pid2}")).exists());

    // The real one.
    agent.send(&format!(
        "resurrect {} {} {window_gpa} {window_len}",
        offs[0].0, offs[0].1
    ));
    let l = agent.expect("restored ");
    let f: Vec<&str> = l.split(' ').collect();
    assert_eq!(f[1], pid.to_string(), "{l}\n{}", agent.log_text());
    assert_eq!(f[2], "2", "{l}");
    let l = agent.expect("resurrect-done ");
    assert!(l.starts_with("resurrect-done 1 0 "), "{l}");

    // Same PID, same threads, same exe and command line.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert!(status.contains("\nThreads:\t2\n"), "{status}");
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        target
    );
    assert_eq!(
        fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline"),
        cmdline
    );
    // The same address space, line by line ([heap], [stack], [vdso] where they were),
    // and the same auxiliary vector.
    let maps_after = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    assert_eq!(maps_after, maps_before);
    assert_eq!(
        fs::read(format!("/proc/{pid}/auxv")).expect("auxv"),
        auxv_before
    );
    assert_eq!(
        fs::read_to_string(format!("/proc/{pid}/task/{}/comm", tids[1])).expect("comm"),
        "worker\n"
    );

    // It continues: the counter goes on from where it was, the heap checksum holds, the
    // worker thread counts, and every tick says the same getpid().
    wait_for("new ticks", || {
        ticks(&out).last().is_some_and(|t| t.1 >= last.1 + 10)
    });
    let after = ticks(&out);
    for (i, t) in after.iter().enumerate() {
        assert_eq!(t.1, i as u64 + 1, "ticks are consecutive: {after:?}");
        assert_eq!(t.0, pid);
        assert_eq!(t.2, 1, "checksum intact");
    }
    assert!(after.last().expect("tick").3 > last.3, "the worker runs");

    // The SIGUSR1 handler still works.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    wait_for("the handler", || {
        ticks(&out).last().is_some_and(|t| t.4 == last.4 + 1)
    });

    // The data file was recreated and written on at the old position.
    let text = fs::read_to_string(&data).expect("data file");
    let n = text.lines().count();
    assert!(n as u64 > last.1, "{n} lines");
    for (i, l) in text.lines().enumerate() {
        assert_eq!(l, format!("line {}", i + 1));
    }

    // Its end is reported like a started program's.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let l = agent.expect(&format!("exited {pid} "));
    assert_eq!(l, format!("exited {pid} sig15 {}", target.display()));

    agent.send("poweroff");
    agent.expect("poweroff");
    let st = agent.child.wait().expect("agent exit");
    assert!(st.success());
    eprintln!("agent log:\n{}", agent.log_text());
    // OW_RESURRECT_KEEP=1 keeps the directory (manifest, window, logs) for inspection.
    if std::env::var_os("OW_RESURRECT_KEEP").is_none() {
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn completes_an_interrupted_exec_with_the_same_pid() {
    let dir = std::env::temp_dir().join(format!("ow-exec-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("tmpdir");
    let input = dir.join("input");
    fs::write(&input, "0123456789\n").expect("input");
    let out = dir.join("out");
    let (pid, bad) = (free_pid_from(31500), free_pid_from(31500) + 1);
    let d = esc(&path_bytes(&dir));
    // What the shell prints: its arguments and environment, pid, directory, the kept fd
    // (read from where it was) and its ignored SIGPIPE; then it stays.
    let script = "echo \"$0 $X\"; echo $$; pwd; cat <&5; grep SigIgn /proc/$$/status; sleep 30";
    let text = format!(
        "owvmm-manifest 1\n\
         exec {pid} sh\npath /bin/sh\ncwd {d}\narg sh\narg -c\narg {}\narg hello\nenv X=world\nenv PATH=/usr/bin:/bin\n\
         fd 1 1 0 reg {}\nfd 5 0 4 reg {}\nsig 13 1 0 0 0\nsigmask 0\nend\n\
         exec {bad} nothing\npath /nonexistent/prog\narg prog\nend\n",
        esc(script.as_bytes()),
        esc(&path_bytes(&out)),
        esc(&path_bytes(&input)),
    );
    fs::write(&out, "").expect("out");
    let mem_path = dir.join("oldmem");
    let mut mem = text.clone().into_bytes();
    mem.resize(mem.len().next_multiple_of(PAGE_SZ), 0);
    fs::write(&mem_path, &mem).expect("mem");

    let mut agent = Agent::start(&dir, &mem_path);
    agent.expect("ready ");
    agent.send(&format!("resurrect 0 {} {} 0", text.len(), mem.len()));
    let l = agent.expect("restored ");
    assert!(l.starts_with(&format!("restored {pid} 1 ")), "{l}");
    let l = agent.expect("not-restored ");
    assert!(
        l.starts_with(&format!(
            "not-restored {bad} execve: No such file or directory"
        )),
        "{l}"
    );
    let l = agent.expect("resurrect-done ");
    assert!(l.starts_with("resurrect-done 1 1 "), "{l}");
    assert!(!Path::new(&format!("/proc/{bad}")).exists());
    let deadline = Instant::now() + TIMEOUT;
    while fs::read_to_string(&out).is_ok_and(|t| t.lines().count() < 5) {
        let got = fs::read_to_string(&out).unwrap_or_default();
        assert!(Instant::now() < deadline, "the shell's output: {got:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = fs::read_to_string(&out).expect("out");
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "hello world", "{got}");
    assert_eq!(lines[1], pid.to_string());
    assert_eq!(Path::new(lines[2]), dir);
    assert_eq!(lines[3], "456789");
    assert_eq!(
        lines[4], "SigIgn:\t0000000000001000",
        "only SIGPIPE ignored: {got}"
    );
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/exe")).expect("exe"),
        fs::canonicalize("/bin/sh").expect("sh")
    );

    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    agent.expect(&format!("exited {pid} "));
    agent.send("poweroff");
    agent.expect("poweroff");
    let st = agent.child.wait().expect("agent exit");
    assert!(st.success());
    let _ = fs::remove_dir_all(&dir);
}
