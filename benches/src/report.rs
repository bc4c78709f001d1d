//! Turning measurements into Markdown.

use std::fmt::Write as _;

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// `PASS`/`FAIL` against a target, `FAIL (no data)` without a value.
pub fn verdict(value: Option<f64>, ok: impl Fn(f64) -> bool) -> &'static str {
    match value {
        Some(v) if ok(v) => "PASS",
        Some(_) => "FAIL",
        None => "FAIL (no data)",
    }
}

/// A number with `digits` decimals, or `-`.
pub fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// Text safe inside a Markdown table cell.
pub fn cell(s: &str) -> String {
    let s = s.replace('|', "\\|").replace('`', "'");
    let s = s.trim();
    if s.chars().count() > 110 {
        format!("{}…", s.chars().take(110).collect::<String>())
    } else {
        s.to_string()
    }
}

/// The timing profile of a kernel console log with `[ seconds]` timestamps.
#[derive(Debug, Default)]
pub struct ConsoleProfile {
    /// Number of timestamped lines.
    pub lines: usize,
    /// The largest gaps: (gap s, timestamp of the line after it, that line).
    pub gaps: Vec<(f64, f64, String)>,
    /// Timestamp of `Run /init`.
    pub run_init: Option<f64>,
    /// The last timestamp.
    pub last: Option<f64>,
}

/// Parses `[   12.345678] text` into its time and text.
fn stamped(line: &str) -> Option<(f64, &str)> {
    let l = line.trim_start_matches(['\r', '\0']).trim_start();
    let rest = l.strip_prefix('[')?;
    let (ts, text) = rest.split_once(']')?;
    Some((ts.trim().parse().ok()?, text.trim()))
}

/// The `top` largest gaps between consecutive timestamped lines, and when `Run /init` came.
pub fn profile_console(text: &str, top: usize) -> ConsoleProfile {
    let mut p = ConsoleProfile::default();
    let mut prev: Option<f64> = None;
    let mut gaps = Vec::new();
    for (t, line) in text.lines().filter_map(stamped) {
        p.lines += 1;
        if let Some(pt) = prev {
            gaps.push((t - pt, t, line.to_string()));
        }
        if p.run_init.is_none() && line.contains("Run /init") {
            p.run_init = Some(t);
        }
        prev = Some(t);
        p.last = Some(t);
    }
    gaps.sort_by(|a, b| b.0.total_cmp(&a.0));
    gaps.truncate(top);
    p.gaps = gaps;
    p
}

/// A Markdown table.
pub struct Table {
    out: String,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        let mut out = format!("| {} |\n|", headers.join(" | "));
        for _ in headers {
            out.push_str("---|");
        }
        out.push('\n');
        Table { out }
    }

    /// Adds a row.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        let cells: Vec<&str> = cells.iter().map(AsRef::as_ref).collect();
        let _ = writeln!(self.out, "| {} |", cells.join(" | "));
    }

    /// The finished table, with a blank line after it.
    pub fn done(mut self) -> String {
        self.out.push('\n');
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn console_gaps() {
        let log = "noise\n[    0.000000] Linux version 6.1\n[    1.500000] a\n\
                   [    1.600000] b\n[   10.000000] Run /init as init process\nhello\n";
        let p = profile_console(log, 2);
        assert_eq!(p.lines, 4);
        assert_eq!(p.run_init, Some(10.0));
        assert_eq!(p.gaps.len(), 2);
        assert!((p.gaps[0].0 - 8.4).abs() < 1e-9);
        assert_eq!(p.gaps[0].2, "Run /init as init process");
        assert!((p.gaps[1].0 - 1.5).abs() < 1e-9);
    }

    #[test]
    fn cells_are_escaped() {
        assert_eq!(cell(" a|b `c` "), "a\\|b 'c'");
        assert_eq!(verdict(Some(0.9), |r| r <= 1.0), "PASS");
        assert_eq!(verdict(None, |r| r <= 1.0), "FAIL (no data)");
    }
}
