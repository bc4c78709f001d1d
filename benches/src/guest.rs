//! What the benchmark learns from owvmm and the source tree: the kernel command line owvmm
//! boots with on this host (asked from the binary), and what the kernel config does for
//! boot time.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{BenchError, Result};

/// The prefix of each stderr line of `owvmm run --print-cmdline` that names an option it
/// added for this host's KVM: `owvmm: added for kvm_pvm: OPT -- WHY`.
const ADDED_PREFIX: &str = "owvmm: added for kvm_pvm: ";

/// The kernel command line owvmm's default guest boots with on this host.
pub struct EffectiveCmdline {
    /// The whole line (`owvmm run --print-cmdline`'s stdout).
    pub cmdline: String,
    /// The options owvmm added for this host's KVM, each with owvmm's reason (empty on
    /// hardware KVM).
    pub added: Vec<(String, String)>,
}

/// Asks `owvmm run --print-cmdline`: owvmm's default command line plus what it adds on
/// this host, so QEMU gets exactly the line owvmm boots with.
pub fn effective_cmdline(owvmm: &Path) -> Result<EffectiveCmdline> {
    // The bench boots the initramfs root on both sides (its guests have no disks).
    let args = ["run", "--print-cmdline", "--initramfs-root"];
    let out = Command::new(owvmm)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::Spawn {
            program: owvmm.display().to_string(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cmdline = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || cmdline.is_empty() {
        return Err(BenchError::Command {
            command: format!("{} {}", owvmm.display(), args.join(" ")),
            status: out.status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(EffectiveCmdline {
        cmdline,
        added: parse_added(&stderr),
    })
}

/// The `(option, reason)` pairs of `owvmm run --print-cmdline`'s stderr.
fn parse_added(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix(ADDED_PREFIX))
        .map(|rest| match rest.split_once(" -- ") {
            Some((opt, why)) => (opt.trim().to_string(), why.trim().to_string()),
            None => (rest.trim().to_string(), String::new()),
        })
        .collect()
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
    fn parses_the_added_options() {
        let err = "owvmm: added for kvm_pvm: owvmm.pvm_quirks=1 -- turns on the patches\n\
                   something else\n\
                   owvmm: added for kvm_pvm: clearcpuid=xsave,popcnt -- a -- b\n\
                   owvmm: added for kvm_pvm: no-kvm-hypercalls\n";
        assert_eq!(
            parse_added(err),
            vec![
                (
                    "owvmm.pvm_quirks=1".to_string(),
                    "turns on the patches".to_string()
                ),
                ("clearcpuid=xsave,popcnt".to_string(), "a -- b".to_string()),
                ("no-kvm-hypercalls".to_string(), String::new()),
            ]
        );
        assert!(parse_added("").is_empty());
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
