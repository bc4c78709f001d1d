//! Small clients for the key-value servers of the recovery benchmark: redis (RESP) and
//! memcached (its text protocol). Parsers take bytes and say "need more" (`Ok(None)`),
//! so that replies are read in bounded pieces; every size a server announces is checked
//! against a limit before anything is allocated for it.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The largest reply the bench accepts (a bulk string, a `get` answer, `INFO`).
pub const MAX_REPLY: usize = 1 << 20;
/// The most elements of a RESP array the bench accepts.
const MAX_ARRAY: usize = 1024;
/// How deep RESP arrays may nest.
const MAX_DEPTH: usize = 4;

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$N` and N bytes; `None` for `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*N` and N replies; `None` for `*-1`.
    Array(Option<Vec<Reply>>),
}

/// One RESP command (an array of bulk strings).
pub fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The line at the start of `buf` (without `\r\n`) and the bytes it takes; `None` when
/// it is not complete yet. Lines longer than `MAX_LINE` are refused.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, String> {
    const MAX_LINE: usize = 4096;
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(i) if i <= MAX_LINE => Ok(Some((&buf[..i], i + 2))),
        Some(_) => Err("reply line too long".into()),
        None if buf.len() > MAX_LINE => Err("reply line too long".into()),
        None => Ok(None),
    }
}

fn int(b: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not a number: {:?}", String::from_utf8_lossy(b)))
}

/// A length announced by the server: -1 (none) or 0..=`max`.
fn length(b: &[u8], max: usize) -> Result<Option<usize>, String> {
    match int(b)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .map(Some)
            .ok_or_else(|| format!("length {n} out of range (at most {max})")),
    }
}

/// Parses one RESP reply at the start of `buf`: the reply and the bytes it took, or
/// `None` when `buf` does not hold all of it yet.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], depth: usize) -> Result<Option<(Reply, usize)>, String> {
    let Some((l, used)) = line(buf)? else {
        return Ok(None);
    };
    let Some((&kind, rest)) = l.split_first() else {
        return Err("empty reply line".into());
    };
    let text = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()), used))),
        b'-' => Ok(Some((Reply::Error(text()), used))),
        b':' => Ok(Some((Reply::Int(int(rest)?), used))),
        b'$' => {
            let Some(n) = length(rest, MAX_REPLY)? else {
                return Ok(Some((Reply::Bulk(None), used)));
            };
            let end = used + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string without its \\r\\n".into());
            }
            Ok(Some((Reply::Bulk(Some(buf[used..end].to_vec())), end + 2)))
        }
        b'*' => {
            if depth >= MAX_DEPTH {
                return Err("arrays nested too deep".into());
            }
            let Some(n) = length(rest, MAX_ARRAY)? else {
                return Ok(Some((Reply::Array(None), used)));
            };
            let mut at = used;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let Some((r, k)) = parse_at(&buf[at..], depth + 1)? else {
                    return Ok(None);
                };
                items.push(r);
                at += k;
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        other => Err(format!("unknown reply type {:?}", char::from(other))),
    }
}

/// The `field:value` lines of a redis `INFO` reply.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        let (k, v) = l.trim_end().split_once(':')?;
        (k == field).then_some(v)
    })
}

/// One `VALUE` of a memcached `get` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McValue {
    /// The key.
    pub key: String,
    /// The client flags.
    pub flags: u32,
    /// The data.
    pub data: Vec<u8>,
}

/// Parses a memcached `get` answer (`VALUE k f n\r\n<data>\r\n`... `END\r\n`) at the start
/// of `buf`: the values and the bytes taken, `None` when incomplete. A server error
/// (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`) is an error.
pub fn parse_get(buf: &[u8]) -> Result<Option<(Vec<McValue>, usize)>, String> {
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        let Some((l, used)) = line(&buf[at..])? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(l);
        if text == "END" {
            return Ok(Some((out, at + used)));
        }
        let mut f = text.split(' ');
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some("VALUE"), Some(key), Some(flags), Some(n)) => {
                let flags = flags
                    .parse()
                    .map_err(|_| format!("bad flags in {text:?}"))?;
                let n = length(n.as_bytes(), MAX_REPLY)?
                    .ok_or_else(|| format!("bad length in {text:?}"))?;
                let start = at + used;
                let end = start + n;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err("value without its \\r\\n".into());
                }
                out.push(McValue {
                    key: key.to_string(),
                    flags,
                    data: buf[start..end].to_vec(),
                });
                at = end + 2;
            }
            _ => return Err(format!("memcached answered {text:?}")),
        }
    }
}

/// A parser's result: the parsed value and the bytes it took, `None` when incomplete.
pub type Parsed<T> = Result<Option<(T, usize)>, String>;

/// Parses a memcached `stats` answer (`STAT name value\r\n`... `END\r\n`): the pairs and
/// the bytes taken, `None` when incomplete.
pub fn parse_stats(buf: &[u8]) -> Parsed<Vec<(String, String)>> {
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        let Some((l, used)) = line(&buf[at..])? else {
            return Ok(None);
        };
        at += used;
        let text = String::from_utf8_lossy(l);
        if text == "END" {
            return Ok(Some((out, at)));
        }
        match text.strip_prefix("STAT ").and_then(|s| s.split_once(' ')) {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => return Err(format!("memcached answered {text:?}")),
        }
        if out.len() > 1000 {
            return Err("too many stats".into());
        }
    }
}

/// One line answer of memcached (`VERSION 1.6.18`, `STORED`), `None` when incomplete.
pub fn parse_line(buf: &[u8]) -> Result<Option<(String, usize)>, String> {
    Ok(line(buf)?.map(|(l, n)| (String::from_utf8_lossy(l).into_owned(), n)))
}

/// Sends `req` on `s` and reads until `parse` finds a complete answer, at most
/// [`MAX_REPLY`] bytes and until `deadline`.
pub fn exchange<T>(
    s: &mut TcpStream,
    req: &[u8],
    deadline: Instant,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, String>,
) -> Result<T, String> {
    let left = |d: Instant| {
        d.checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| "no answer in time".to_string())
    };
    s.set_write_timeout(Some(left(deadline)?))
        .map_err(|e| format!("socket: {e}"))?;
    s.write_all(req).map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some((v, _)) = parse(&buf)? {
            return Ok(v);
        }
        if buf.len() > MAX_REPLY + 4096 {
            return Err(format!("answer longer than {MAX_REPLY} bytes"));
        }
        s.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| format!("socket: {e}"))?;
        match s.read(&mut chunk) {
            Ok(0) => return Err("the server closed the connection".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err("no answer in time".into())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
}

/// One redis command and its reply.
pub fn redis(s: &mut TcpStream, args: &[&[u8]], wait: Duration) -> Result<Reply, String> {
    exchange(s, &resp_command(args), Instant::now() + wait, parse_reply)
}

/// A redis reply's text (simple or bulk string).
pub fn reply_text(r: &Reply) -> Option<String> {
    match r {
        Reply::Simple(s) => Some(s.clone()),
        Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The value `DEBUG POPULATE n key size` gives key `key:j`: `value:j`, padded with zero
/// bytes (or cut) to `size`.
pub fn populate_value(j: u64, size: usize) -> Vec<u8> {
    let mut v = format!("value:{j}").into_bytes();
    v.resize(size, 0);
    v
}

/// The value the bench stores in memcached under `key:j`: `value:j:` and then a letter
/// that depends on `j`, to `size` bytes.
pub fn mc_value(j: u64, size: usize) -> Vec<u8> {
    let mut v = format!("value:{j}:").into_bytes();
    // j % 26 < 26: the cast cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let fill = b'a' + (j % 26) as u8;
    v.resize(size, fill);
    v.truncate(size);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies() {
        assert_eq!(
            resp_command(&[b"GET", b"key:1"]),
            b"*2\r\n$3\r\nGET\r\n$5\r\nkey:1\r\n"
        );
        assert_eq!(
            parse_reply(b"+PONG\r\n"),
            Ok(Some((Reply::Simple("PONG".into()), 7)))
        );
        assert_eq!(parse_reply(b"+PON"), Ok(None));
        assert_eq!(
            parse_reply(b":16777\r\nx"),
            Ok(Some((Reply::Int(16777), 8)))
        );
        assert_eq!(
            parse_reply(b"-ERR unknown\r\n"),
            Ok(Some((Reply::Error("ERR unknown".into()), 14)))
        );
        assert_eq!(
            parse_reply(b"$5\r\nab\0de\r\n"),
            Ok(Some((Reply::Bulk(Some(b"ab\0de".to_vec())), 11)))
        );
        assert_eq!(parse_reply(b"$5\r\nab"), Ok(None));
        assert_eq!(parse_reply(b"$-1\r\n"), Ok(Some((Reply::Bulk(None), 5))));
        assert!(parse_reply(b"$5\r\nabcdefg\r\n").is_err());
        assert!(parse_reply(b"$99999999999\r\n").is_err());
        assert!(parse_reply(b"$-7\r\n").is_err());
        assert_eq!(
            parse_reply(b"*2\r\n:1\r\n$1\r\na\r\n"),
            Ok(Some((
                Reply::Array(Some(vec![Reply::Int(1), Reply::Bulk(Some(b"a".to_vec()))])),
                15
            )))
        );
        assert_eq!(parse_reply(b"*2\r\n:1\r\n"), Ok(None));
        assert!(parse_reply(b"*5000\r\n").is_err());
        assert!(parse_reply(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
        assert!(parse_reply(b"?\r\n").is_err());
        assert!(parse_reply(b"\r\n").is_err());
        assert!(parse_reply(&[b'+'; 5000]).is_err());
    }

    #[test]
    fn redis_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:512\r\n";
        assert_eq!(info_field(info, "process_id"), Some("512"));
        assert_eq!(info_field(info, "redis_version"), Some("7.0.15"));
        assert_eq!(info_field(info, "pid"), None);
    }

    #[test]
    fn memcached_answers() {
        let a = b"VALUE key:1 0 5\r\nab\r\nc\r\nVALUE key:2 7 0\r\n\r\nEND\r\n";
        let (vals, n) = parse_get(a).expect("parses").expect("complete");
        assert_eq!(n, a.len());
        assert_eq!(vals.len(), 2);
        assert_eq!(vals[0].data, b"ab\r\nc");
        assert_eq!((vals[1].key.as_str(), vals[1].flags), ("key:2", 7));
        assert_eq!(parse_get(b"END\r\n"), Ok(Some((vec![], 5))));
        assert_eq!(parse_get(b"VALUE key:1 0 5\r\nab"), Ok(None));
        assert!(parse_get(b"SERVER_ERROR out of memory\r\n").is_err());
        assert!(parse_get(b"VALUE k 0 99999999\r\n").is_err());
        assert!(parse_get(b"VALUE k x 1\r\na\r\nEND\r\n").is_err());
        let s = b"STAT pid 77\r\nSTAT curr_items 12\r\nEND\r\n";
        let (st, _) = parse_stats(s).expect("parses").expect("complete");
        assert_eq!(
            st,
            vec![
                ("pid".to_string(), "77".to_string()),
                ("curr_items".to_string(), "12".to_string())
            ]
        );
        assert_eq!(parse_stats(b"STAT pid 77\r\n"), Ok(None));
        assert!(parse_stats(b"ERROR\r\n").is_err());
        assert_eq!(
            parse_line(b"VERSION 1.6.18\r\n"),
            Ok(Some(("VERSION 1.6.18".into(), 16)))
        );
    }

    #[test]
    fn values() {
        assert_eq!(populate_value(12, 10), b"value:12\0\0");
        assert_eq!(populate_value(123_456, 4), b"valu");
        assert_eq!(mc_value(1, 12), b"value:1:bbbb");
        assert_eq!(mc_value(27, 4), b"valu");
    }
}
