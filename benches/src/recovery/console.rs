//! The guest console (owvmm's stdout, a file) read as it grows, and the lines of the
//! heap program (`owtest heap MIB`: `heap pid=P count=N mib=M sum=ok f=...`).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use crate::error::{io, Result};

/// One line of the heap program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapLine {
    /// Its `getpid()`.
    pub pid: u32,
    /// Its loop counter (1 for the first line after start).
    pub count: u64,
    /// The heap size it was started with.
    pub mib: u64,
    /// The checksum of the whole heap held (`sum=ok`).
    pub sum_ok: bool,
}

/// Parses a heap line anywhere in `line` (kernel messages may precede it on the same
/// console line). `None` for anything else, including `heap pid=P malloc failed`.
pub fn parse_heap(line: &str) -> Option<HeapLine> {
    let start = line.find("heap pid=")?;
    let (mut pid, mut count, mut mib, mut sum) = (None, None, None, None);
    for field in line[start..].split_whitespace().skip(1) {
        match field.split_once('=') {
            Some(("pid", v)) => pid = v.parse().ok(),
            Some(("count", v)) => count = v.parse().ok(),
            Some(("mib", v)) => mib = v.parse().ok(),
            Some(("sum", v)) => sum = Some(v == "ok"),
            _ => {}
        }
    }
    Some(HeapLine {
        pid: pid?,
        count: count?,
        mib: mib.unwrap_or(0),
        sum_ok: sum?,
    })
}

/// Did the heap program say it could not allocate its heap?
pub fn is_malloc_failure(line: &str) -> bool {
    line.contains("heap pid=") && line.contains("malloc failed")
}

/// A console file read incrementally, line by line.
pub struct Console {
    path: PathBuf,
    file: Option<File>,
    partial: Vec<u8>,
}

impl Console {
    /// Follows `path` (it may not exist yet).
    pub fn new(path: &Path) -> Console {
        Console {
            path: path.to_path_buf(),
            file: None,
            partial: Vec::new(),
        }
    }

    /// The complete lines written since the last call (without `\r`/`\n`).
    pub fn poll(&mut self) -> Result<Vec<String>> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io("cannot open the console log", &self.path)(e)),
            }
        }
        if let Some(f) = self.file.as_mut() {
            f.read_to_end(&mut self.partial)
                .map_err(io("cannot read the console log", &self.path))?;
        }
        Ok(split_lines(&mut self.partial))
    }
}

/// Takes the complete lines out of `buf`, leaving an unfinished last line in it.
fn split_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    let rest = buf.split_off(last_nl + 1);
    let done = std::mem::replace(buf, rest);
    String::from_utf8_lossy(&done)
        .split('\n')
        .map(|l| l.trim_matches(['\r', '\0']).to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_lines() {
        assert_eq!(
            parse_heap("heap pid=57 count=12 mib=16 sum=ok f=1.0012"),
            Some(HeapLine {
                pid: 57,
                count: 12,
                mib: 16,
                sum_ok: true
            })
        );
        let bad = parse_heap("[ 3.1] x heap pid=57 count=3 mib=16 sum=BAD f=1.0003");
        assert_eq!(bad.map(|h| (h.count, h.sum_ok)), Some((3, false)));
        assert_eq!(parse_heap("heap pid=57 malloc failed"), None);
        assert!(is_malloc_failure("heap pid=57 malloc failed"));
        assert_eq!(parse_heap("threads pid=3 count=2"), None);
        assert_eq!(parse_heap("heap pid=57 count=1 mib=16"), None);
    }

    #[test]
    fn lines_are_split_incrementally() {
        let mut buf = b"a\r\nb\npar".to_vec();
        assert_eq!(split_lines(&mut buf), vec!["a", "b"]);
        assert_eq!(buf, b"par");
        buf.extend_from_slice(b"tial\n\n");
        assert_eq!(split_lines(&mut buf), vec!["partial"]);
        assert!(buf.is_empty());
        assert!(split_lines(&mut buf).is_empty());
    }
}
