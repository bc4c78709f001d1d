//! Harness for the integration tests in `tests/`: runs the real `owvmm` binary on real
//! KVM, watches its console and talks to its control socket.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The `owvmm` binary under test: `$OWVMM_BIN`, else the workspace's release build, else
/// the debug build.
pub fn owvmm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OWVMM_BIN") {
        return p.into();
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let release = target.join("release/owvmm");
    if release.exists() {
        release
    } else {
        target.join("debug/owvmm")
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("owvmm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Runs `owvmm` with `args` to completion; returns (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(owvmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run owvmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The default image's kernel directory and initramfs (built on first use).
pub fn default_image() -> (PathBuf, PathBuf) {
    let (code, out, err) = run_to_end(&["image", "path"]);
    assert_eq!(code, 0, "owvmm image path failed: {err}");
    let mut lines = out.lines();
    let kdir = PathBuf::from(lines.next().expect("kernel dir"));
    let initrd = PathBuf::from(lines.next().expect("initramfs"));
    (kdir, initrd)
}

/// `--kernel` and `--initrd` of the default image, then `args`.
fn with_default_image(args: &[&str]) -> Vec<String> {
    let (kdir, initrd) = default_image();
    let mut all = vec![
        "--kernel".to_string(),
        kdir.join("vmlinux").display().to_string(),
        "--initrd".to_string(),
        initrd.display().to_string(),
    ];
    all.extend(args.iter().map(|a| (*a).to_string()));
    all
}

/// A running `owvmm run`.
pub struct Vm {
    child: Child,
    /// Its control socket.
    pub sock: PathBuf,
    /// File receiving its console (stdout).
    pub console: PathBuf,
    /// File receiving its stderr.
    pub log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Vm {
    /// Starts `owvmm run` with `args` plus a control socket in `dir`.
    pub fn start(dir: &Path, args: &[&str]) -> Vm {
        Self::spawn(dir, args, Stdio::null())
    }

    /// Like [`Vm::start`], with the console's input on a pipe ([`Vm::type_console`]).
    pub fn start_with_input(dir: &Path, args: &[&str]) -> Vm {
        Self::spawn(dir, args, Stdio::piped())
    }

    /// Cold-boots the default image (its vmlinux and initramfs, built on first use) with
    /// `args`.
    pub fn boot(dir: &Path, args: &[&str]) -> Vm {
        Self::spawn(dir, &with_default_image(args), Stdio::null())
    }

    /// Like [`Vm::boot`], with the console's input on a pipe ([`Vm::type_console`]).
    pub fn boot_with_input(dir: &Path, args: &[&str]) -> Vm {
        Self::spawn(dir, &with_default_image(args), Stdio::piped())
    }

    /// Like [`Vm::boot`], with owvmm run inside the network namespace `netns`
    /// (`ip netns exec NETNS owvmm run ...`: `ip` execs owvmm, so the child is owvmm).
    pub fn boot_in_netns(dir: &Path, netns: &str, args: &[&str]) -> Vm {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns]).arg(owvmm_bin());
        Self::spawn_with(c, dir, &with_default_image(args), Stdio::null())
    }

    /// `owvmm run --restore SNAP` inside the network namespace `netns`.
    pub fn restore_in_netns(dir: &Path, netns: &str, snap: &Path) -> Vm {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns]).arg(owvmm_bin());
        let args = ["--restore".to_string(), snap.display().to_string()];
        Self::spawn_with(c, dir, &args, Stdio::null())
    }

    /// Types `text` on the guest console (the VMM's standard input).
    pub fn type_console(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("started with input");
        stdin
            .write_all(text.as_bytes())
            .expect("write console input");
        stdin.flush().expect("flush");
    }

    fn spawn<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S], stdin: Stdio) -> Vm {
        Self::spawn_with(Command::new(owvmm_bin()), dir, args, stdin)
    }

    /// `command` (owvmm, or a prefix that execs it) with `run ARGS --api-sock ...`.
    fn spawn_with<S: AsRef<std::ffi::OsStr>>(
        mut command: Command,
        dir: &Path,
        args: &[S],
        stdin: Stdio,
    ) -> Vm {
        let sock = dir.join("api.sock");
        let console = dir.join("console.log");
        let log = dir.join("stderr.log");
        let child = command
            .arg("run")
            .args(args)
            .arg("--api-sock")
            .arg(&sock)
            .stdin(stdin)
            .stdout(std::fs::File::create(&console).expect("console file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn owvmm");
        let vm = Vm {
            child,
            sock,
            console,
            log,
            exit: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&vm.sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "control socket never appeared; stderr: {}",
                vm.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        vm
    }

    /// Sends one request on a new connection and returns the reply.
    pub fn call(&self, req: Value) -> Value {
        let mut c = Conn::open(&self.sock);
        c.send(&req);
        c.recv(Duration::from_secs(120)).expect("reply")
    }

    /// Opens an event stream.
    pub fn events(&self) -> Conn {
        let mut c = Conn::open(&self.sock);
        c.send(&json!({"cmd": "events"}));
        let r = c.recv(Duration::from_secs(10)).expect("events ack");
        assert_eq!(r["ok"], json!(true), "events refused: {r}");
        c
    }

    /// The console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// The VMM's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the console contains `needle`.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.console();
            if c.contains(needle) {
                return c;
            }
            if let Some(st) = self.try_exit() {
                panic!(
                    "VM exited ({st}) before {needle:?} showed; console tail: {}\nstderr: {}",
                    tail(&c, 2000),
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} on the console in {timeout:?}; tail: {}",
                tail(&c, 2000)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Like [`Vm::wait_console`], but gives up early (with the console) when any of `bad`
    /// shows first.
    pub fn wait_console_unless(
        &mut self,
        needle: &str,
        bad: &[&str],
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.console();
            if let Some(b) = bad.iter().find(|b| c.contains(**b)) {
                return Err(format!("{b:?} showed before {needle:?}"));
            }
            if c.contains(needle) {
                return Ok(c);
            }
            if self.try_exit().is_some() || Instant::now() > deadline {
                return Err(format!("no {needle:?}; console tail: {}", tail(&c, 2000)));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the agent is ready (status says so).
    pub fn wait_agent_ready(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.call(json!({"cmd": "status"}));
            if st["agent"]["ready"] == json!(true) {
                return st;
            }
            if let Some(code) = self.try_exit() {
                panic!(
                    "VM exited ({code}) before the agent was ready; stderr: {}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready after {timeout:?}; console tail: {}",
                tail(&self.console(), 2000)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for the process to end; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "VM still running after {timeout:?}; console tail: {}",
                    tail(&self.console(), 2000)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the VM through the control socket and returns the exit code.
    pub fn stop(&mut self) -> i32 {
        if self.try_exit().is_none() {
            let r = self.call(json!({"cmd": "stop"}));
            assert_eq!(r["ok"], json!(true), "stop refused: {r}");
        }
        self.wait_exit(Duration::from_secs(30))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `n` bytes of `s` (on a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A control-socket connection.
pub struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Conn {
    /// Connects.
    pub fn open(sock: &Path) -> Conn {
        let w = UnixStream::connect(sock).expect("connect control socket");
        let r = BufReader::new(w.try_clone().expect("clone"));
        Conn { w, r }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, b: &[u8]) {
        self.w.write_all(b).expect("send");
    }

    /// Sends a JSON request.
    pub fn send(&mut self, v: &Value) {
        self.send_raw(format!("{v}\n").as_bytes());
    }

    /// Next JSON line, or None on timeout/EOF.
    pub fn recv(&mut self, timeout: Duration) -> Option<Value> {
        self.w.set_read_timeout(Some(timeout)).ok()?;
        let mut s = String::new();
        match self.r.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => serde_json::from_str(&s).ok(),
        }
    }

    /// Reads events until one named `name` arrives (panics after `timeout`).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {name} event within {timeout:?}");
            if let Some(ev) = self.recv(left) {
                if ev["event"] == json!(name) {
                    return ev;
                }
            }
        }
    }
}

/// The crash kernel's warm standby for the default image with `vcpus` vCPUs and 128 MiB
/// (`owvmm standby`: prepared once, then cached; `owvmm run` finds the same one).
pub fn standby_dir(vcpus: u8) -> PathBuf {
    let (code, out, err) = run_to_end(&["standby", "--vcpus", &vcpus.to_string()]);
    assert_eq!(code, 0, "owvmm standby failed: {err}");
    PathBuf::from(out.trim())
}

/// The test programs of `tests/guest-programs/owtest.c`, built once per test process:
/// (static, dynamically linked).
pub fn owtest_programs() -> (PathBuf, PathBuf) {
    static P: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let src = workspace_root().join("tests/guest-programs/owtest.c");
        let dir = std::env::temp_dir().join(format!("owvmm-owtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("owtest dir");
        let build = |out: &Path, extra: &[&str]| {
            let st = Command::new("cc")
                .args(["-O2", "-Wall", "-Wextra", "-Werror"])
                .args(extra)
                .arg("-o")
                .arg(out)
                .arg(&src)
                .arg("-lpthread")
                .status()
                .expect("run cc");
            assert!(st.success(), "cc {} failed", src.display());
        };
        let (st, dy) = (dir.join("owtest-static"), dir.join("owtest-dyn"));
        build(&st, &["-static"]);
        build(&dy, &[]);
        (st, dy)
    })
    .clone()
}

/// Cold-boots the default image in `scratch(name)` with the static test program running
/// `owtest-static MODE`, kernel crashes recovered (microreboot, the 1-vCPU standby made
/// first); waits for the agent. Returns the VM and its event stream.
pub fn boot_owtest(name: &str, mode: &str) -> (Vm, Conn) {
    standby_dir(1);
    let (st, _) = owtest_programs();
    let dir = scratch(name);
    let add = format!("{}:/opt/owtest/owtest-static", st.display());
    let exec = format!("/opt/owtest/owtest-static {mode}");
    let mut vm = Vm::boot(
        &dir,
        &["--add", &add, "--on-crash", "microreboot", "--exec", &exec],
    );
    vm.wait_agent_ready(Duration::from_secs(900));
    let ev = vm.events();
    (vm, ev)
}

/// The shared libraries the dynamically linked test program needs, as `--add` pairs
/// (host path, guest path).
pub fn owtest_libraries() -> Vec<(PathBuf, String)> {
    [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    .iter()
    .map(|p| {
        let host = std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
        (host, (*p).to_owned())
    })
    .collect()
}

/// Polls the console until `f` finds what it wants in the part written after `from`
/// bytes; panics with the console's tail on timeout or if the VM exits.
pub fn wait_console_after<T>(
    vm: &mut Vm,
    from: usize,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let c = vm.console();
        let after = c.get(from..).unwrap_or("");
        if let Some(v) = f(after) {
            return v;
        }
        if let Some(st) = vm.try_exit() {
            panic!(
                "VM exited ({st}) before {what}; console tail: {}\nstderr: {}",
                tail(&c, 3000),
                vm.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no {what} on the console in {timeout:?}; tail: {}",
            tail(&c, 3000)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Vm {
    /// The `owvmm` process's PID (to read its `/proc` entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

// Lines of the owtest programs (tests/guest-programs/owtest.c) and recoveries.

/// `key=value` fields of an owtest line (`heap pid=12 count=3 ...`).
pub fn fields(line: &str) -> HashMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect()
}

/// The last line of `mode` on `console` (a line starting with `"<mode> pid="`).
pub fn last_line<'a>(console: &'a str, mode: &str) -> Option<&'a str> {
    let prefix = format!("{mode} pid=");
    complete_lines(console)
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix))
}

/// The lines of `console` that are whole (ended by a newline): the last one may still be
/// arriving, cut off in the middle.
pub fn complete_lines(console: &str) -> impl DoubleEndedIterator<Item = &str> {
    console
        .split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end_matches(['\n', '\r']))
}

pub fn num(line: &str, key: &str) -> u64 {
    fields(line)
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits for one whole recovery on `ev`; returns `recovery-done` and the pids restored.
pub fn wait_recovery(ev: &mut Conn) -> (Value, Vec<u64>) {
    let crash = ev.wait_event("crash-detected", Duration::from_secs(120));
    assert_eq!(crash["cause"], "panic", "{crash}");
    let mut restored = Vec::new();
    loop {
        let e = ev.recv(Duration::from_secs(600)).expect("recovery events");
        match e["event"].as_str() {
            Some("process-restored") => restored.push(e["pid"].as_u64().unwrap_or(0)),
            Some("process-not-restored") => eprintln!("not restored: {e}"),
            Some("recovery-failed") | Some("microreboot-failed") => {
                panic!("recovery failed: {e}")
            }
            Some("recovery-done") => return (e, restored),
            _ => {}
        }
    }
}

/// After the console position `from`, waits for a line of `mode` from `pid` that
/// satisfies `ok`.
pub fn wait_program(
    vm: &mut Vm,
    from: usize,
    mode: &str,
    pid: u32,
    ok: impl Fn(&str) -> bool,
) -> String {
    let prefix = format!("{mode} pid={pid} ");
    wait_console_after(vm, from, Duration::from_secs(120), &prefix, |c| {
        complete_lines(c)
            .map(str::trim)
            .find(|l| l.starts_with(&prefix) && ok(l))
            .map(str::to_owned)
    })
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

/// A network namespace of the test's own with a tap `owt0` at `host_cidr` (link-local),
/// deleted on drop. The guest's traffic goes only there.
pub struct Netns {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
}

impl Netns {
    /// Makes `owvmm-TAG<pid>` with the tap `owt0` up at `host_cidr`.
    pub fn new(tag: &str, host_cidr: &str) -> Netns {
        let name = format!("owvmm-{tag}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "tuntap", "add", "dev", "owt0", "mode", "tap"]);
        ip(&["-n", n, "addr", "add", host_cidr, "dev", "owt0"]);
        ip(&["-n", n, "link", "set", "owt0", "up"]);
        ns
    }

    /// Runs `f` on a thread that joined the namespace (sockets it makes live there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("open the netns");
            // SAFETY: setns on a namespace file this thread holds open; it changes only
            // this thread's network namespace.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    }

    /// A TCP connection to `addr:port` made inside the namespace, retried while the server
    /// comes up (2 minutes at most), with a 20 s read timeout.
    pub fn connect(&self, addr: &str, port: u16) -> std::net::TcpStream {
        let target: std::net::SocketAddr = format!("{addr}:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let c = self
                .run(move || std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)));
            match c {
                Ok(c) => {
                    c.set_read_timeout(Some(Duration::from_secs(20)))
                        .expect("timeout");
                    return c;
                }
                Err(e) => assert!(Instant::now() < deadline, "{target} does not answer: {e}"),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `ip netns exec NAME PROGRAM ARGS...`, its exit code and standard output.
    pub fn exec(&self, program: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {program}: {e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// An ext4 image of `mib` MiB holding the files of `from` (or empty).
pub fn mkfs(img: &Path, mib: u32, from: Option<&Path>) {
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-L", "owtest"]);
    if let Some(d) = from {
        c.arg("-d").arg(d);
    }
    let out = c
        .arg(img)
        .arg(format!("{mib}M"))
        .output()
        .expect("mkfs.ext4 (e2fsprogs) must be installed");
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
}

/// `debugfs -R "cat PATH" img` on the host.
pub fn debugfs_cat(img: &Path, path: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(img)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (after agent ready) for a looping program's `MODE pid=P n=N` line with
/// `N >= at_least`; its pid.
pub fn wait_looper(vm: &mut Vm, mode: &str, at_least: u64) -> u64 {
    let what = format!("the {mode} program");
    wait_console_after(vm, 0, Duration::from_secs(300), &what, |c| {
        last_line(c, mode)
            .filter(|l| num(l, "n") >= at_least)
            .map(|l| num(l, "pid"))
    })
}

/// Crashes the guest kernel, waits for the recovery and for the looping program `pid` of
/// `mode` to count `more` past where it was. Returns `recovery-done`, the program's
/// line, and the console since the crash.
pub fn crash_and_go_on(
    vm: &mut Vm,
    ev: &mut Conn,
    mode: &str,
    pid: u64,
    more: u64,
) -> (Value, String, String) {
    let n_before = last_line(&vm.console(), mode).map_or(0, |l| num(l, "n"));
    let from = vm.console().len();
    let r = vm.call(json!({"cmd": "crash"}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let (done, restored) = wait_recovery(ev);
    assert!(restored.contains(&pid), "{mode} {pid} not restored: {done}");
    let line = wait_program(vm, from, mode, u32::try_from(pid).unwrap_or(0), |l| {
        num(l, "n") >= n_before + more
    });
    let since = vm.console().get(from..).unwrap_or_default().to_owned();
    (done, line, since)
}

/// Asserts that `e2fsck -f -n` finds nothing to fix in `img`.
pub fn assert_fsck_clean(img: &Path) {
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(img)
        .output()
        .expect("e2fsck (e2fsprogs)");
    assert!(fsck.status.success(), "e2fsck found problems: {fsck:?}");
}
