//! What the benchmark learns from the source tree: the default kernel command line, the
//! options owvmm adds on a kvm_pvm host, and what the kernel config does for boot time.

use std::path::Path;

/// owvmm's built-in command line when `guest-kernel/cmdline` is absent
/// (`vmm/src/image/mod.rs`, `default_cmdline`).
const BUILTIN_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Used only if `vmm/src/host_quirks.rs` cannot be read or parsed: a copy of its
/// `PVM_CMDLINE` options at the time of writing.
const PVM_FALLBACK: &[&str] = &[
    "noxsave",
    "clearcpuid=popcnt,smap,cx16",
    "nopti",
    "nofsgsbase",
    "no-kvm-hypercalls",
];

/// The default command line and where it came from.
pub fn default_cmdline(root: &Path) -> (String, String) {
    let p = root.join("guest-kernel/cmdline");
    match std::fs::read_to_string(&p) {
        Ok(t) => (
            t.split_whitespace().collect::<Vec<_>>().join(" "),
            "guest-kernel/cmdline".into(),
        ),
        Err(_) => (
            BUILTIN_CMDLINE.into(),
            "owvmm's built-in default; there is no guest-kernel/cmdline".into(),
        ),
    }
}

/// The options owvmm adds on a kvm_pvm host, with the reason for each, parsed from the
/// `PVM_CMDLINE` table in `vmm/src/host_quirks.rs`.
pub fn pvm_options(root: &Path) -> (Vec<(String, String)>, bool) {
    let parsed = std::fs::read_to_string(root.join("vmm/src/host_quirks.rs"))
        .ok()
        .map(|src| parse_pvm_table(&src))
        .unwrap_or_default();
    if parsed.is_empty() {
        let v = PVM_FALLBACK
            .iter()
            .map(|o| ((*o).to_string(), String::new()))
            .collect();
        (v, false)
    } else {
        (parsed, true)
    }
}

fn parse_pvm_table(src: &str) -> Vec<(String, String)> {
    let Some(start) = src.find("PVM_CMDLINE") else {
        return Vec::new();
    };
    let body = &src[start..];
    let end = body.find("];").unwrap_or(body.len());
    body[..end]
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let inner = l.strip_prefix("(\"")?;
            let (opt, rest) = inner.split_once('"')?;
            let why = rest
                .split_once('"')
                .and_then(|(_, r)| r.rsplit_once('"'))
                .map(|(w, _)| w.to_string())
                .unwrap_or_default();
            Some((opt.to_string(), why))
        })
        .collect()
}

/// Appends `opts` to `cmdline`, skipping an option whose key is already there (the same
/// rule as owvmm's `host_quirks::adjust_cmdline`).
pub fn add_options(cmdline: &str, opts: &[(String, String)]) -> String {
    let mut out = cmdline.trim().to_string();
    for (opt, _) in opts {
        let key = opt.split('=').next().unwrap_or(opt);
        let present = out
            .split_whitespace()
            .any(|w| w == opt || w.split('=').next() == Some(key));
        if !present {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(opt);
        }
    }
    out
}

/// The command line for the console-profile boot: no `quiet`, `loglevel=7`, timestamps on.
pub fn verbose_cmdline(cmdline: &str) -> String {
    let mut words: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|w| *w != "quiet" && !w.starts_with("loglevel=") && !w.starts_with("printk.time="))
        .collect();
    words.push("loglevel=7");
    words.push("printk.time=1");
    words.join(" ")
}

/// Markdown for "what the default config does to shorten boot": the boot-related
/// sections of `guest-kernel/README.md` if it has them, then the annotated choices of
/// `guest-kernel/owvmm.config`.
pub fn boot_config_summary(root: &Path) -> String {
    let mut out = String::new();
    if let Ok(readme) = std::fs::read_to_string(root.join("guest-kernel/README.md")) {
        let sections = boot_sections(&readme);
        if sections.is_empty() {
            out.push_str("`guest-kernel/README.md` has no section about boot time; its lines that mention boot:\n\n");
            for l in readme.lines().filter(|l| l.to_lowercase().contains("boot")) {
                out.push_str(&format!("> {}\n", l.trim()));
            }
            out.push('\n');
        } else {
            out.push_str("From `guest-kernel/README.md`:\n\n");
            for s in sections {
                for l in s.lines() {
                    // Quote it, one level below our own headings.
                    let l = if l.starts_with('#') {
                        format!("#{l}")
                    } else {
                        l.to_string()
                    };
                    out.push_str(&format!("> {l}\n").replace("> \n", ">\n"));
                }
                out.push('\n');
            }
        }
    } else {
        out.push_str("(`guest-kernel/README.md` is not there yet.)\n\n");
    }
    if let Ok(cfg) = std::fs::read_to_string(root.join("guest-kernel/owvmm.config")) {
        let choices = annotated_choices(&cfg);
        if !choices.is_empty() {
            out.push_str(
                "Choices in `guest-kernel/owvmm.config` (a fragment on top of `make tinyconfig`) \
                 that carry a reason:\n\n",
            );
            for (opt, why) in choices {
                out.push_str(&format!("- `{opt}`: {why}\n"));
            }
            out.push('\n');
        }
        let off: Vec<String> = cfg
            .lines()
            .filter_map(|l| l.strip_prefix("# ")?.strip_suffix(" is not set"))
            .map(|s| format!("`{s}`"))
            .collect();
        if !off.is_empty() {
            out.push_str(&format!("Turned off: {}.\n\n", off.join(", ")));
        }
    }
    out
}

/// Sections (heading to next heading of the same or higher level) whose heading mentions
/// boot time.
fn boot_sections(md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, String)> = None;
    for l in md.lines() {
        let level = l.chars().take_while(|c| *c == '#').count();
        if level > 0 && l[level..].starts_with(' ') {
            if let Some((lv, text)) = cur.take() {
                if level > lv {
                    cur = Some((lv, text + l + "\n"));
                    continue;
                }
                out.push(text);
            }
            let h = l.to_lowercase();
            if h.contains("boot") || h.contains("fast") || h.contains("speed") || h.contains("slow")
            {
                cur = Some((level, format!("{l}\n")));
            }
            continue;
        }
        if let Some((_, text)) = cur.as_mut() {
            text.push_str(l);
            text.push('\n');
        }
    }
    if let Some((_, text)) = cur {
        out.push(text);
    }
    out.into_iter().map(|s| s.trim_end().to_string()).collect()
}

/// `CONFIG_UNWINDER_ORC` -> `CONFIG_UNWINDER`.
fn family(opt: &str) -> String {
    opt.split(['_', '=', ' '])
        .take(2)
        .collect::<Vec<_>>()
        .join("_")
}

/// `(options, reason)` for each group of config lines that follows a plain comment.
fn annotated_choices(cfg: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut why: Vec<String> = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut flush = |why: &mut Vec<String>, opts: &mut Vec<String>| {
        if !why.is_empty() && !opts.is_empty() {
            out.push((opts.join(", "), why.join(" ")));
        }
        why.clear();
        opts.clear();
    };
    // The file's header comment (up to the first blank line) is not a reason.
    let body = cfg.split_once("\n\n").map_or(cfg, |(_, b)| b);
    for l in body.lines() {
        let l = l.trim();
        if l.is_empty() {
            flush(&mut why, &mut opts);
            continue;
        }
        let opt = match l.strip_prefix('#').map(str::trim) {
            Some(c) if c.starts_with("---") => {
                flush(&mut why, &mut opts);
                continue;
            }
            Some(c) if c.starts_with("CONFIG_") => match c.strip_suffix(" is not set") {
                Some(o) => format!("{o} off"),
                None => continue,
            },
            Some(c) => {
                if !opts.is_empty() {
                    flush(&mut why, &mut opts);
                }
                why.push(c.to_string());
                continue;
            }
            None => l.to_string(),
        };
        // A reason covers the lines right after it that belong to the same family
        // (CONFIG_UNWINDER_*, CONFIG_CRYPTO*), not an unrelated neighbour.
        if let Some(first) = opts.first() {
            if family(first) != family(&opt) {
                flush(&mut why, &mut opts);
            }
        }
        if !why.is_empty() {
            opts.push(opt);
        }
    }
    flush(&mut why, &mut opts);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_pvm_table() {
        let src = r#"
pub const PVM_CMDLINE: &[(&str, &str)] = &[
    ("noxsave", "xsave/xrstor are not emulated"),
    ("clearcpuid=popcnt,smap,cx16", "popcnt, \"quoted\" and cx16"),
];
"#;
        let t = parse_pvm_table(src);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            ("noxsave".into(), "xsave/xrstor are not emulated".into())
        );
        assert_eq!(t[1].0, "clearcpuid=popcnt,smap,cx16");
    }

    #[test]
    fn adds_options_once() {
        let opts = vec![
            ("noxsave".to_string(), String::new()),
            ("clearcpuid=popcnt".to_string(), String::new()),
        ];
        assert_eq!(
            add_options("console=ttyS0", &opts),
            "console=ttyS0 noxsave clearcpuid=popcnt"
        );
        assert_eq!(
            add_options("clearcpuid=pku noxsave", &opts),
            "clearcpuid=pku noxsave"
        );
    }

    #[test]
    fn verbose_drops_quiet() {
        assert_eq!(
            verbose_cmdline("console=ttyS0 quiet loglevel=1"),
            "console=ttyS0 loglevel=7 printk.time=1"
        );
    }

    #[test]
    fn finds_boot_sections_and_choices() {
        let md = "# Kernel\nintro\n## Boot time\n- a\n### detail\nb\n## Other\nc\n";
        let s = boot_sections(md);
        assert_eq!(s, vec!["## Boot time\n- a\n### detail\nb".to_string()]);
        let cfg = "# header\n\n# --- x ---\nCONFIG_A=y\n# why b\nCONFIG_B=y\n# why c\n# CONFIG_C_X is not set\nCONFIG_C_Y=y\n# CONFIG_D is not set\n\nCONFIG_E=y\n";
        let c = annotated_choices(cfg);
        assert_eq!(
            c,
            vec![
                ("CONFIG_B=y".to_string(), "why b".to_string()),
                (
                    "CONFIG_C_X off, CONFIG_C_Y=y".to_string(),
                    "why c".to_string()
                )
            ]
        );
    }
}
