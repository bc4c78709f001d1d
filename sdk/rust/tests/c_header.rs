//! The C side of the SDK on the host, no VM: `sdk/include/owvmm.h` through
//! `sdk/tests/selftest.c` (which plays the agent's part on itself), and the example
//! `sdk/examples/kvserver.c`, served over TCP on 127.0.0.1 and crashed from here.
//! Needs the system gcc (and nm, from binutils): without them these tests fail.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

const STRICT: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"];

fn sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Compiles `src` with the header into `out`.
fn gcc(src: &Path, out: &Path, flags: &[&str]) {
    let include = sdk().join("include");
    let r = Command::new("gcc")
        .args(STRICT)
        .args(flags)
        .arg("-I")
        .arg(&include)
        .arg(src)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run gcc ({e}): these tests need the system C compiler (apt-get install gcc libc6-dev)")
        });
    assert!(
        r.status.success(),
        "gcc {flags:?} {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&r.stderr)
    );
}

fn expect_ok(what: &str, out: &Output, needle: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains(needle),
        "{what}: {:?}\nstdout:\n{text}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn selftest_dynamic_and_static() {
    let d = scratch("selftest");
    for (name, flags) in [("dynamic", &[][..]), ("static", &["-static"][..])] {
        let exe = d.join(format!("selftest-{name}"));
        gcc(&sdk().join("tests/selftest.c"), &exe, flags);

        let out = Command::new(&exe).arg("continue").output().expect("run");
        expect_ok(name, &out, "selftest: continue ok");

        let state = d.join(format!("state-{name}"));
        let cwd = d.join(format!("cwd-{name}"));
        std::fs::create_dir_all(&state).expect("mkdir");
        std::fs::create_dir_all(&cwd).expect("mkdir");
        let out = Command::new(&exe)
            .arg("restart")
            .arg(&state)
            .arg("two words")
            .env("OW_SELFTEST", "1")
            .current_dir(&cwd)
            .output()
            .expect("run");
        let text = expect_ok(name, &out, "selftest: restart ok");
        assert!(
            text.contains("first image") && text.contains("restarted, pid"),
            "{text}"
        );

        // An environment over the SDK's 1 MiB: no restart, the program goes on.
        let mut cmd = Command::new(&exe);
        for i in 0..9 {
            cmd.env(format!("OW_BIG{i}"), "x".repeat(120_000));
        }
        let out = cmd.arg("toobig").output().expect("run");
        expect_ok(name, &out, "selftest: toobig ok");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("larger than 1 MiB: /proc/self/environ")
                && err.contains("cannot restart, the program goes on"),
            "{err}"
        );
    }
}

/// A running kvserver, killed when dropped; its stdout and stderr lines, in order.
struct Server {
    child: Child,
    lines: Receiver<String>,
    port: u16,
    /// What it printed before it listened.
    before: Vec<String>,
}

impl Server {
    fn start(exe: &Path, state: &Path, on_crash: &str) -> Server {
        // stdout and stderr into one pipe, to keep the order of their lines.
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills the two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are fresh descriptors of ours, owned by one File each.
        let (read, write) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let child = Command::new(exe)
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--on-crash",
                on_crash,
                "--state",
            ])
            .arg(state)
            .stdout(write.try_clone().expect("dup"))
            .stderr(write)
            .spawn()
            .expect("start kvserver");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(read).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut s = Server {
            child,
            lines,
            port: 0,
            before: Vec::new(),
        };
        loop {
            let l = s.line();
            if l.starts_with("kvserver: listening on port ") {
                s.port = s.listening_line(&l);
                return s;
            }
            s.before.push(l);
        }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line from kvserver within 10 s")
    }

    /// Waits for "listening on port P (pid X)", checks X, returns P.
    fn listening(&self) -> u16 {
        self.listening_line(&self.line())
    }

    fn listening_line(&self, l: &str) -> u16 {
        let rest = l
            .strip_prefix("kvserver: listening on port ")
            .unwrap_or_else(|| panic!("not the listening line: {l:?}"));
        let (port, pid) = rest.split_once(" (pid ").expect("pid");
        assert_eq!(pid, format!("{})", self.child.id()), "{l}");
        port.parse().expect("port")
    }

    fn connect(&self) -> Client {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Client(BufReader::new(s))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client(BufReader<TcpStream>);

impl Client {
    fn ask(&mut self, line: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
        let mut answer = String::new();
        self.0.read_line(&mut answer).expect("answer");
        answer
    }

    fn closed(&mut self) -> bool {
        let mut rest = String::new();
        matches!(self.0.read_line(&mut rest), Ok(0) | Err(_))
    }
}

fn kvserver(d: &Path) -> PathBuf {
    let exe = d.join("kvserver");
    // Not position-independent: the crash test finds a page of it by symbol (below).
    gcc(
        &sdk().join("examples/kvserver.c"),
        &exe,
        &["-O2", "-static", "-no-pie"],
    );
    exe
}

#[test]
fn kvserver_serves_and_loads_its_state() {
    let d = scratch("kvserver-state");
    let exe = kvserver(&d);
    let state = d.join("state");
    std::fs::write(
        &state,
        "# kvserver state 1\nalpha 1\ngreeting hello%20world\np%25c 100%25\nempty \n",
    )
    .expect("state");
    let s = Server::start(&exe, &state, "restart");
    assert_eq!(
        s.before,
        [format!("kvserver: loaded 4 keys from {}", state.display())]
    );

    let (mut a, mut b) = (s.connect(), s.connect());
    assert_eq!(a.ask("GET greeting"), "VALUE hello world\n");
    assert_eq!(b.ask("GET p%c"), "VALUE 100%\n");
    assert_eq!(a.ask("GET empty"), "VALUE \n");
    assert_eq!(a.ask("GET missing"), "NONE\n");
    assert_eq!(a.ask("SET new value with spaces"), "OK\n");
    assert_eq!(b.ask("GET new"), "VALUE value with spaces\n");
    assert_eq!(b.ask("SET alpha 2\r"), "OK\n");
    assert_eq!(a.ask("GET alpha"), "VALUE 2\n");
    assert_eq!(a.ask("COUNT"), "COUNT 5\n");
    assert!(a.ask("FROB").starts_with("ERR usage"));
    // 4096 bytes and no newline yet: too long (exactly that many, so that the server has
    // read all of it when it closes, and the close is not a reset that could beat the answer).
    a.0.get_mut().write_all(&[b'x'; 4096]).expect("send");
    let mut answer = String::new();
    a.0.read_line(&mut answer).expect("answer");
    assert_eq!(answer, "ERR line too long\n");
    assert!(a.closed());
    b.0.get_mut().write_all(b"QUIT\n").expect("quit");
    assert!(b.closed());
    assert_eq!(s.connect().ask("COUNT"), "COUNT 5\n");
}

const PAGE: u64 = 4096;

/// What the agent does after a crash, from outside: the block written into the server and
/// signal 63 queued to its main thread. The agent maps a fresh page in the process; a test
/// cannot, so an unused page of kvserver's own `clients` array stands in for it (the server
/// is built static and not PIE, and the test uses only its first few entries).
fn crash(s: &Server, exe: &Path, lost: &[(i32, &str, &str)]) {
    let nm = Command::new("nm")
        .arg("-S")
        .arg(exe)
        .output()
        .expect("cannot run nm (binutils)");
    let syms = String::from_utf8_lossy(&nm.stdout);
    let (addr, size) = syms
        .lines()
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [a, n, _, "clients"] => Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(n, 16).ok()?,
            )),
            _ => None,
        })
        .expect("kvserver's clients array in nm -S");
    let page = (addr + size / 2).next_multiple_of(PAGE);
    assert!(page + PAGE <= addr + size, "clients too small for a page");

    let mut blk = Vec::new();
    blk.extend_from_slice(b"OWCRASH1");
    blk.extend_from_slice(&1u32.to_ne_bytes());
    blk.extend_from_slice(&u32::try_from(lost.len()).expect("n").to_ne_bytes());
    blk.extend_from_slice(&(page + 32).to_ne_bytes());
    blk.extend_from_slice(&PAGE.to_ne_bytes());
    let mut strs = Vec::new();
    let base = page + 32 + 24 * lost.len() as u64;
    for (fd, kind, why) in lost {
        blk.extend_from_slice(&fd.to_ne_bytes());
        blk.extend_from_slice(&[0; 4]);
        for s in [kind, why] {
            blk.extend_from_slice(&(base + strs.len() as u64).to_ne_bytes());
            strs.extend_from_slice(s.as_bytes());
            strs.push(0);
        }
    }
    blk.extend_from_slice(&strs);
    assert!(blk.len() as u64 <= PAGE);

    let pid = libc::pid_t::try_from(s.child.id()).expect("pid");
    let local = libc::iovec {
        iov_base: blk.as_mut_ptr().cast(),
        iov_len: blk.len(),
    };
    let remote = libc::iovec {
        iov_base: usize::try_from(page).expect("address") as *mut libc::c_void,
        iov_len: blk.len(),
    };
    // SAFETY: reads our buffer, writes into the child's memory (not ours).
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    assert_eq!(
        usize::try_from(n).ok(),
        Some(blk.len()),
        "process_vm_writev: {}",
        std::io::Error::last_os_error()
    );
    // The kernel's siginfo for SI_QUEUE: signo, errno, code, pad, pid, uid, value.
    let mut si = [0u8; 128];
    si[0..4].copy_from_slice(&63i32.to_ne_bytes());
    si[8..12].copy_from_slice(&libc::SI_QUEUE.to_ne_bytes());
    // SAFETY: getpid and getuid cannot fail.
    let (me, uid) = unsafe { (libc::getpid(), libc::getuid()) };
    si[16..20].copy_from_slice(&me.to_ne_bytes());
    si[20..24].copy_from_slice(&uid.to_ne_bytes());
    si[24..32].copy_from_slice(&page.to_ne_bytes());
    // SAFETY: a 128-byte siginfo for the child's main thread.
    let r = unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, pid, 63, si.as_ptr()) };
    assert_eq!(
        r,
        0,
        "rt_tgsigqueueinfo: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn kvserver_crash_procedure_restarts_with_its_table() {
    let d = scratch("kvserver-restart");
    let exe = kvserver(&d);
    let state = d.join("made/by/kvserver/state");
    let mut s = Server::start(&exe, &state, "restart");
    let mut c = s.connect();
    assert_eq!(c.ask("SET k1 one"), "OK\n");
    assert_eq!(c.ask("SET k2 two % words"), "OK\n");

    // fd 3 is the listener, 4 the client.
    crash(&s, &exe, &[(4, "tcp", "established connection reset")]);
    assert_eq!(
        s.line(),
        "kvserver: crash procedure: crash 1, 1 lost: tcp 4 established connection reset"
    );
    assert_eq!(
        s.line(),
        format!("kvserver: saved 2 keys to {}, restarting", state.display())
    );
    assert_eq!(
        s.line(),
        format!("kvserver: loaded 2 keys from {}", state.display())
    );
    s.port = s.listening(); // the same pid, a new port (--port 0)
    assert!(c.closed(), "the old connection survived the restart");
    let saved = std::fs::read_to_string(&state).expect("state");
    assert_eq!(saved, "# kvserver state 1\nk1 one\nk2 two%20%25%20words\n");
    let mut c = s.connect();
    assert_eq!(c.ask("GET k2"), "VALUE two % words\n");
    assert_eq!(c.ask("COUNT"), "COUNT 2\n");
}

#[test]
fn kvserver_crash_procedure_continues() {
    let d = scratch("kvserver-continue");
    let exe = kvserver(&d);
    let s = Server::start(&exe, &d.join("state"), "continue");
    let mut c = s.connect();
    assert_eq!(c.ask("SET k v"), "OK\n");
    crash(
        &s,
        &exe,
        &[
            (4, "tcp", "established connection reset"),
            (-1, "device", "cannot restore /dev/foo"),
        ],
    );
    assert_eq!(
        s.line(),
        "kvserver: crash procedure: crash 1, 2 lost: tcp 4 established connection reset; \
         device - cannot restore /dev/foo"
    );
    // The lost connection is dropped, the table kept, the server goes on.
    assert!(c.closed());
    assert_eq!(s.connect().ask("GET k"), "VALUE v\n");
    assert!(!d.join("state").exists());
}
