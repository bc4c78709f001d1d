//! The programs the recovery benchmark crashes the guest kernel under: the heap program
//! (`owtest heap S`), Debian's redis-server and memcached filled with keys from the host,
//! and a shell pipeline. What each guest runs, how the bench sees that the program is there
//! (a console line, or a request answered over the guest's network), how the servers are
//! filled and how their state is checked.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::console::{parse_heap, HeapLine};
use super::guest::Env;
use super::kv::{self, Reply};
use crate::net::Netns;

/// Where the heap program is put in the guest.
pub const GUEST_PROGRAM: &str = "/opt/owtest/owtest-static";
/// Where the pipeline's ends are put in the guest.
pub const GUEST_PIPE: &str = "/opt/owbench/pipe";
/// The guest's address on the bench's tap, and the host side's.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 80, 2);
/// The host side of the tap, in the bench's network namespace.
pub const HOST_CIDR: &str = "169.254.80.1/24";
/// The tap, inside the namespace.
pub const TAP: &str = "owr0";
const MAC: &str = "06:00:00:00:00:02";
/// Bytes of each value: 4000 and the allocator's header fill a 4 KiB allocation.
pub const VALUE_SIZE: usize = 4000;
/// Keys whose values are read back after a recovery (spread over the key space).
pub const SAMPLES: u64 = 32;
/// The producer's line interval (ms) and which of its lines the consumer prints.
pub const PIPE_MS: u32 = 50;
/// The consumer prints lines 1, 1 + this, ...
pub const PIPE_EVERY: u64 = 5;
const REDIS_PORT: u16 = 6379;
const MC_PORT: u16 = 11211;
/// Limits of one probe: connecting, and the answer.
const CONNECT: Duration = Duration::from_millis(300);
const ANSWER: Duration = Duration::from_secs(3);

/// One workload of `--workloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `owtest heap MIB`.
    Heap {
        /// Heap size, MiB.
        mib: u64,
    },
    /// redis-server with MIB MiB of values (`DEBUG POPULATE`).
    Redis {
        /// MiB of values.
        mib: u64,
    },
    /// memcached with MIB MiB of values, `set` from the host.
    Memcached {
        /// MiB of values.
        mib: u64,
    },
    /// `pipe produce | busybox awk | pipe consume`.
    Pipeline,
}

/// What the default `--recovery` runs (the heap sizes of `--sizes`' default).
pub const DEFAULT_SIZES: [u64; 3] = [16, 64, 256];

impl Workload {
    /// Parses one `--workloads` item: `heap:MIB`, `redis:MIB`, `memcached:MIB`, `pipeline`.
    pub fn parse(s: &str) -> Result<Workload, String> {
        let (name, size) = match s.split_once(':') {
            Some((n, v)) => (n, Some(v)),
            None => (s, None),
        };
        let mib = |what: &str| -> Result<u64, String> {
            let v = size.ok_or_else(|| format!("{what} needs a size: {what}:MIB"))?;
            v.parse::<u64>()
                .ok()
                .filter(|n| (1..=4096).contains(n))
                .ok_or_else(|| format!("{s}: the size must be 1 to 4096 MiB"))
        };
        match name {
            "heap" => Ok(Workload::Heap { mib: mib("heap")? }),
            "redis" => Ok(Workload::Redis { mib: mib("redis")? }),
            "memcached" => Ok(Workload::Memcached {
                mib: mib("memcached")?,
            }),
            "pipeline" if size.is_none() => Ok(Workload::Pipeline),
            "pipeline" => Err(format!("{s}: pipeline takes no size")),
            _ => Err(format!(
                "unknown workload {s:?} (heap:MIB, redis:MIB, memcached:MIB, pipeline)"
            )),
        }
    }

    /// Parses a comma-separated `--workloads` list.
    pub fn parse_list(s: &str) -> Result<Vec<Workload>, String> {
        let v = s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(Workload::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if v.is_empty() {
            return Err("no workload given".into());
        }
        Ok(v)
    }

    /// `heap`, `redis`, `memcached`, `pipeline` (the JSON's `workload`).
    pub fn kind(self) -> &'static str {
        match self {
            Workload::Heap { .. } => "heap",
            Workload::Redis { .. } => "redis",
            Workload::Memcached { .. } => "memcached",
            Workload::Pipeline => "pipeline",
        }
    }

    /// The size, MiB (none for the pipeline).
    pub fn mib(self) -> Option<u64> {
        match self {
            Workload::Heap { mib } | Workload::Redis { mib } | Workload::Memcached { mib } => {
                Some(mib)
            }
            Workload::Pipeline => None,
        }
    }

    /// As `--workloads` spells it.
    pub fn spec(self) -> String {
        match self.mib() {
            Some(m) => format!("{}:{m}", self.kind()),
            None => self.kind().to_string(),
        }
    }

    /// For file names: `heap16`, `redis64`, `pipeline`.
    pub fn tag(self) -> String {
        self.spec().replace(':', "")
    }

    /// For the report: `heap 16 MiB`, `redis 64 MiB of keys`, `pipeline`.
    pub fn label(self) -> String {
        match self {
            Workload::Heap { mib } => format!("heap {mib} MiB"),
            Workload::Redis { mib } => format!("redis {mib} MiB of keys"),
            Workload::Memcached { mib } => format!("memcached {mib} MiB of keys"),
            Workload::Pipeline => "pipeline".into(),
        }
    }

    /// The Debian package the guest's root image needs (`--with`).
    pub fn package(self) -> Option<&'static str> {
        match self {
            Workload::Redis { .. } => Some("redis-server"),
            Workload::Memcached { .. } => Some("memcached"),
            _ => None,
        }
    }

    /// The bench talks to it over the guest's network (it gets a tap).
    pub fn networked(self) -> bool {
        self.package().is_some()
    }

    /// Guest memory: the size plus ~100 MiB for the kernel, the root and the agent, rounded
    /// up to a power of two (at least 256).
    pub fn mem(self) -> u64 {
        mem_for(self.mib().unwrap_or(0))
    }

    /// Keys the server is filled with: the size in [`VALUE_SIZE`] values.
    pub fn keys(self) -> u64 {
        match self {
            Workload::Redis { mib } | Workload::Memcached { mib } => {
                (mib << 20) / VALUE_SIZE as u64
            }
            _ => 0,
        }
    }

    /// memcached's `-m`: the values in its 4.5 KiB slab chunks, and some room.
    fn memcached_mem(self) -> u64 {
        let m = self.mib().unwrap_or(0);
        m + m / 4 + 16
    }

    /// The `--exec` command of the guest.
    pub fn exec(self) -> String {
        match self {
            Workload::Heap { mib } => format!("{GUEST_PROGRAM} heap {mib}"),
            Workload::Redis { .. } => "exec redis-server --save '' --appendonly no \
                 --enable-debug-command yes --bind 0.0.0.0 --protected-mode no"
                .into(),
            Workload::Memcached { .. } => format!(
                "exec memcached -u root -m {} -t 4 -p {MC_PORT} -U 0",
                self.memcached_mem()
            ),
            Workload::Pipeline => format!(
                "{GUEST_PIPE} produce {PIPE_MS} | busybox awk '/^n=/ {{ print; fflush() }}' \
                 | {GUEST_PIPE} consume {PIPE_EVERY}"
            ),
        }
    }

    /// The `owvmm run` arguments (the control socket is added by the guest driver).
    pub fn run_args(self, env: &Env) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec![
            "--mem".into(),
            self.mem().to_string().into(),
            "--vcpus".into(),
            "1".into(),
        ];
        let add = |host: &std::path::Path, guest: &str| {
            let mut a = OsString::from(host.as_os_str());
            a.push(":");
            a.push(guest);
            a
        };
        match self {
            Workload::Heap { .. } => {
                v.push("--add".into());
                v.push(add(&env.program, GUEST_PROGRAM));
            }
            Workload::Pipeline => {
                v.push("--add".into());
                v.push(add(&env.pipe_program, GUEST_PIPE));
            }
            Workload::Redis { .. } | Workload::Memcached { .. } => {
                v.push("--with".into());
                v.push(self.package().unwrap_or_default().into());
                v.push("--net".into());
                v.push(format!("tap={TAP},ip={GUEST_IP}/24,mac={MAC}").into());
            }
        }
        v.extend([
            "--exec".into(),
            self.exec().into(),
            "--on-crash".into(),
            "microreboot".into(),
        ]);
        v
    }

    /// The program's progress line on the console (heap and pipeline).
    pub fn parse_line(self, l: &str) -> Option<HeapLine> {
        match self {
            Workload::Heap { .. } => parse_heap(l),
            Workload::Pipeline => parse_pipe(l),
            _ => None,
        }
    }

    fn port(self) -> u16 {
        match self {
            Workload::Memcached { .. } => MC_PORT,
            _ => REDIS_PORT,
        }
    }

    fn connect(self, ns: &Netns) -> Result<std::net::TcpStream, String> {
        let addr = SocketAddr::V4(SocketAddrV4::new(GUEST_IP, self.port()));
        let s = ns
            .connect(addr, CONNECT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }

    /// One request on a fresh connection. Before the fill (`filled` false): `PING` /
    /// `version`; after it: the value of `key:0`, which must be the one stored.
    pub fn serve(self, ns: &Netns, filled: bool) -> Answer {
        let mut s = match self.connect(ns) {
            Ok(s) => s,
            Err(e) => return Answer::NotYet(e),
        };
        let deadline = Instant::now() + ANSWER;
        match (self, filled) {
            (Workload::Redis { .. }, false) => match kv::redis(&mut s, &[b"PING"], ANSWER) {
                Ok(Reply::Simple(p)) if p == "PONG" => Answer::Served("PONG".into()),
                Ok(r) => Answer::NotYet(format!("PING answered {r:?}")),
                Err(e) => Answer::NotYet(e),
            },
            (Workload::Redis { .. }, true) => {
                match kv::redis(&mut s, &[b"GET", b"key:0"], ANSWER) {
                    Ok(Reply::Bulk(Some(v))) if v == kv::populate_value(0, VALUE_SIZE) => {
                        Answer::Served(format!("GET key:0: the {VALUE_SIZE} bytes stored"))
                    }
                    Ok(Reply::Bulk(None)) => Answer::Wrong("GET key:0: no such key".into()),
                    Ok(Reply::Bulk(Some(v))) => {
                        Answer::Wrong(format!("GET key:0: another value ({} bytes)", v.len()))
                    }
                    Ok(Reply::Error(e)) if e.starts_with("LOADING") => Answer::NotYet(e),
                    Ok(r) => Answer::Wrong(format!("GET key:0 answered {r:?}")),
                    Err(e) => Answer::NotYet(e),
                }
            }
            (Workload::Memcached { .. }, false) => {
                match kv::exchange(&mut s, b"version\r\n", deadline, kv::parse_line) {
                    Ok(v) if v.starts_with("VERSION ") => Answer::Served(v),
                    Ok(v) => Answer::NotYet(format!("version answered {v:?}")),
                    Err(e) => Answer::NotYet(e),
                }
            }
            (Workload::Memcached { .. }, true) => {
                match kv::exchange(&mut s, b"get key:0\r\n", deadline, kv::parse_get) {
                    Ok(v) => match v.first() {
                        Some(x) if x.data == kv::mc_value(0, VALUE_SIZE) => {
                            Answer::Served(format!("get key:0: the {VALUE_SIZE} bytes stored"))
                        }
                        Some(x) => Answer::Wrong(format!(
                            "get key:0: another value ({} bytes)",
                            x.data.len()
                        )),
                        None => Answer::Wrong("get key:0: no such key".into()),
                    },
                    Err(e) => Answer::NotYet(e),
                }
            }
            _ => Answer::NotYet("not a network workload".into()),
        }
    }

    /// Fills the server with [`Workload::keys`] values, within `limit`.
    pub fn fill(self, ns: &Netns, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let n = self.keys();
        let mut s = self.connect(ns)?;
        match self {
            Workload::Redis { .. } => {
                // The values are made in the guest: `DEBUG POPULATE` stores `value:j`
                // padded with zeros under `key:j`, j = 0..n.
                let (count, size) = (n.to_string(), VALUE_SIZE.to_string());
                let args: [&[u8]; 5] = [
                    b"DEBUG",
                    b"POPULATE",
                    count.as_bytes(),
                    b"key",
                    size.as_bytes(),
                ];
                match kv::redis(&mut s, &args, limit)? {
                    Reply::Simple(ok) if ok == "OK" => Ok(()),
                    r => Err(format!("DEBUG POPULATE answered {r:?}")),
                }
            }
            Workload::Memcached { .. } => {
                use std::io::Write as _;
                let mut batch = Vec::with_capacity(300 * 1024);
                let mut told = 0;
                for j in 0..n {
                    batch.extend_from_slice(
                        format!("set key:{j} 0 0 {VALUE_SIZE} noreply\r\n").as_bytes(),
                    );
                    batch.extend_from_slice(&kv::mc_value(j, VALUE_SIZE));
                    batch.extend_from_slice(b"\r\n");
                    if batch.len() >= 256 * 1024 || j + 1 == n {
                        let left = deadline
                            .checked_duration_since(Instant::now())
                            .filter(|d| !d.is_zero())
                            .ok_or_else(|| {
                                format!("only {j} of {n} keys sent in {} s", limit.as_secs())
                            })?;
                        s.set_write_timeout(Some(left))
                            .map_err(|e| format!("socket: {e}"))?;
                        s.write_all(&batch)
                            .map_err(|e| format!("sending the sets ({j} of {n}): {e}"))?;
                        batch.clear();
                        let pct = (j + 1) * 10 / n;
                        if pct > told {
                            told = pct;
                            eprintln!("bench: memcached: {} of {n} keys sent", j + 1);
                        }
                    }
                }
                // An answered request after the last set: they were all read.
                let last = format!("get key:{}\r\n", n.saturating_sub(1));
                let v = kv::exchange(&mut s, last.as_bytes(), deadline, kv::parse_get)?;
                match v.first() {
                    Some(x) if x.data == kv::mc_value(n.saturating_sub(1), VALUE_SIZE) => Ok(()),
                    _ => Err(format!("after the fill, key:{} is not there", n - 1)),
                }
            }
            _ => Ok(()),
        }
    }

    /// The server's state: its pid, its number of keys and a sample of values (the keys
    /// `key:j` for [`SAMPLES`] j spread over 0..keys).
    pub fn check(self, ns: &Netns) -> Result<StateCheck, String> {
        let mut s = self.connect(ns)?;
        let n = self.keys();
        let sample: Vec<u64> = if n == 0 {
            Vec::new()
        } else {
            let k = SAMPLES.min(n);
            (0..k).map(|i| i * (n - 1) / (k - 1).max(1)).collect()
        };
        let mut st = StateCheck {
            expected: n,
            sampled: sample.len(),
            ..StateCheck::default()
        };
        match self {
            Workload::Redis { .. } => {
                st.keys = match kv::redis(&mut s, &[b"DBSIZE"], ANSWER)? {
                    Reply::Int(k) => u64::try_from(k).ok(),
                    r => return Err(format!("DBSIZE answered {r:?}")),
                };
                let info = kv::redis(&mut s, &[b"INFO", b"server"], ANSWER)?;
                st.pid = kv::reply_text(&info)
                    .and_then(|t| kv::info_field(&t, "process_id")?.parse().ok());
                for &j in &sample {
                    let key = format!("key:{j}");
                    if let Reply::Bulk(Some(v)) =
                        kv::redis(&mut s, &[b"GET", key.as_bytes()], ANSWER)?
                    {
                        if v == kv::populate_value(j, VALUE_SIZE) {
                            st.sampled_ok += 1;
                        }
                    }
                }
            }
            Workload::Memcached { .. } => {
                let deadline = Instant::now() + ANSWER;
                let stats = kv::exchange(&mut s, b"stats\r\n", deadline, kv::parse_stats)?;
                let stat = |k: &str| {
                    stats
                        .iter()
                        .find(|(n, _)| n == k)
                        .and_then(|(_, v)| v.parse::<u64>().ok())
                };
                st.keys = stat("curr_items");
                st.pid = stat("pid").and_then(|p| u32::try_from(p).ok());
                st.evictions = stat("evictions");
                if !sample.is_empty() {
                    let mut req = String::from("get");
                    for j in &sample {
                        req.push_str(&format!(" key:{j}"));
                    }
                    req.push_str("\r\n");
                    let deadline = Instant::now() + ANSWER;
                    let vals = kv::exchange(&mut s, req.as_bytes(), deadline, kv::parse_get)?;
                    for v in vals {
                        let j = v.key.strip_prefix("key:").and_then(|j| j.parse().ok());
                        if j.is_some_and(|j| v.data == kv::mc_value(j, VALUE_SIZE)) {
                            st.sampled_ok += 1;
                        }
                    }
                }
            }
            _ => return Err("not a network workload".into()),
        }
        Ok(st)
    }
}

/// Guest memory for `mib` MiB of program data: plus ~100 MiB for the kernel, the root and
/// the agent, rounded up to a power of two (at least 256).
pub fn mem_for(mib: u64) -> u64 {
    let need = mib.saturating_add(100);
    let mut m = 256u64;
    while m < need {
        m = m.saturating_mul(2);
    }
    m
}

/// What one request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Served right (what was answered).
    Served(String),
    /// No answer (yet): not listening, no connection, a timeout.
    NotYet(String),
    /// Answered, wrongly: the state is not what was stored.
    Wrong(String),
}

/// A server's state as the bench found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCheck {
    /// Its pid (`INFO server` / `stats`).
    pub pid: Option<u32>,
    /// Keys it holds (`DBSIZE` / `curr_items`).
    pub keys: Option<u64>,
    /// Keys the bench stored.
    pub expected: u64,
    /// Values read back, and the right ones among them.
    pub sampled: usize,
    /// Right values.
    pub sampled_ok: usize,
    /// memcached's `evictions`.
    pub evictions: Option<u64>,
}

impl StateCheck {
    /// Every key is there and every sampled value right.
    pub fn kept(&self) -> bool {
        self.keys == Some(self.expected) && self.sampled_ok == self.sampled
    }

    /// `16777 keys, 32/32 values right`.
    pub fn text(&self) -> String {
        let keys = self
            .keys
            .map_or_else(|| "? keys".to_string(), |k| format!("{k} keys"));
        if self.sampled == 0 {
            keys
        } else {
            format!("{keys}, {}/{} values right", self.sampled_ok, self.sampled)
        }
    }
}

/// Parses a consumer line `pipe pid=P n=N ok=1 lines=L` (anywhere in `line`) into the
/// shape of a heap line: count = N, sum_ok = the numbering had no gap.
pub fn parse_pipe(line: &str) -> Option<HeapLine> {
    let start = line.find("pipe pid=")?;
    let (mut pid, mut n, mut ok) = (None, None, None);
    for field in line[start..].split_whitespace().skip(1) {
        match field.split_once('=') {
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("n", v)) => n = v.parse().ok(),
            Some(("ok", v)) => ok = Some(v == "1"),
            _ => {}
        }
    }
    Some(HeapLine {
        pid: pid?,
        count: n?,
        mib: 0,
        sum_ok: ok?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_lists() {
        assert_eq!(
            Workload::parse_list("heap:16, redis:64,memcached:64,pipeline"),
            Ok(vec![
                Workload::Heap { mib: 16 },
                Workload::Redis { mib: 64 },
                Workload::Memcached { mib: 64 },
                Workload::Pipeline
            ])
        );
        assert!(Workload::parse("redis").is_err());
        assert!(Workload::parse("redis:0").is_err());
        assert!(Workload::parse("redis:x").is_err());
        assert!(Workload::parse("pipeline:3").is_err());
        assert!(Workload::parse("mysql:3").is_err());
        assert!(Workload::parse_list(" , ").is_err());
        assert_eq!(Workload::Redis { mib: 64 }.tag(), "redis64");
        assert_eq!(Workload::Pipeline.spec(), "pipeline");
    }

    #[test]
    fn shapes() {
        assert_eq!(mem_for(16), 256);
        assert_eq!(mem_for(156), 256);
        assert_eq!(mem_for(157), 512);
        assert_eq!(Workload::Redis { mib: 64 }.keys(), 16777);
        assert_eq!(Workload::Redis { mib: 256 }.mem(), 512);
        assert_eq!(Workload::Pipeline.mem(), 256);
        assert!(Workload::Memcached { mib: 64 }.exec().contains("-m 96 "));
        assert!(Workload::Memcached { mib: 1 }.networked());
        assert!(!Workload::Pipeline.networked());
    }

    #[test]
    fn pipe_lines() {
        assert_eq!(
            parse_pipe("[ 1.0] pipe pid=80 n=16 ok=1 lines=16"),
            Some(HeapLine {
                pid: 80,
                count: 16,
                mib: 0,
                sum_ok: true
            })
        );
        assert_eq!(
            parse_pipe("pipe pid=80 n=21 ok=0 lines=3").map(|h| h.sum_ok),
            Some(false)
        );
        assert_eq!(parse_pipe("pipe pid=80 n=x ok=1"), None);
        assert_eq!(parse_pipe("heap pid=80 count=1 mib=1 sum=ok"), None);
    }

    #[test]
    fn state_checks() {
        let mut s = StateCheck {
            pid: Some(5),
            keys: Some(10),
            expected: 10,
            sampled: 4,
            sampled_ok: 4,
            evictions: None,
        };
        assert!(s.kept());
        assert_eq!(s.text(), "10 keys, 4/4 values right");
        s.sampled_ok = 3;
        assert!(!s.kept());
        s.keys = Some(0);
        s.sampled = 0;
        s.sampled_ok = 0;
        assert_eq!(s.text(), "0 keys");
    }
}
