//! Every workaround for this workplace's KVM (`kvm_pvm`: guest kernel code is emulated, and
//! a few instructions are not) lives here, each with the reason. None is applied on
//! hardware KVM: the default command line (`guest-kernel/cmdline`) is neutral, and the
//! options below are added only when [`detect`] says [`HostKvm::Pvm`]. The guest-kernel
//! side of the same workarounds is the patch series in `guest-kernel/patches/`, which does
//! nothing unless the kernel gets `owvmm.pvm_quirks=1` (from [`PVM_CMDLINE`]) or
//! `no-kvm-hypercalls`.
//!
//! `owvmm run --print-cmdline` prints the command line a guest gets on this host.

use std::path::Path;

/// The kind of KVM this host provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKvm {
    /// VMX/SVM hardware virtualization.
    Hardware,
    /// `kvm_pvm`: shadow paging, guest kernel mode emulated.
    Pvm,
}

/// Detects the host's KVM flavour.
pub fn detect() -> HostKvm {
    if Path::new("/sys/module/kvm_pvm").exists() {
        HostKvm::Pvm
    } else {
        HostKvm::Hardware
    }
}

/// The kernel parameter that turns on the guest-kernel patches' workarounds (patches
/// 0001-0003 and 0005; `guest-kernel/patches/0000-owvmm-pvm-quirks-switch.patch`).
pub const PVM_KERNEL_SWITCH: &str = "owvmm.pvm_quirks=1";

/// Kernel command-line options a guest needs on a kvm_pvm host, each with why. Added by
/// [`adjust_cmdline`] only there, and only if the command line has no option of the same
/// name already (the user's own value wins).
pub const PVM_CMDLINE: &[(&str, &str)] = &[
    (PVM_KERNEL_SWITCH, "turns on the guest-kernel patches: skip the int3 self-test (int3 at CPL0 not emulated), no fwait in fpu__drop (fwait not emulated), finish a user syscall that faults at entry_SYSCALL_64 (kvm_pvm leaves it half done), no BTF parse at boot (~10 s emulated)"),
    ("clearcpuid=xsave,popcnt,smap,cx16,erms,fsrm,fsgsbase", "xsave/xrstor, popcnt, clac/stac and cmpxchg16b (SLUB) are not emulated in guest kernel mode, and without ERMS/FSRM the kernel copies 8 bytes per emulated step instead of 1; with FSGSBASE the NMI/#DB/#MC entry (paranoid_entry) finds its per-CPU base with lsl, not emulated either (an NMI of panic's stop IPI killed the guest); CPUID cannot be filtered here, so the kernel is told"),
    ("GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-AVX_Fast_Unaligned_Load", "user code runs with the host's XCR0 but the guest kernel (without xsave) does not preserve AVX state: glibc must stay off AVX (init's environment, passed on by ow-agent)"),
    ("no-kvm-hypercalls", "CPUID leaks the host's KVM PV features but vmcall never completes here (guest-kernel patch 0004); without it a second vCPU hangs"),
    ("initcall_blacklist=cubictcp_register,bpf_prog_test_run_init", "the first registration of a BPF kfunc set parses the whole vmlinux BTF (~50-75 s of emulated code here with the networking kernel: 57 s -> 107 s to agent ready); CUBIC and the BPF test-run kfuncs register one at boot, so TCP uses Reno and BPF_PROG_TEST_RUN has no kfuncs (guest-kernel patch 0005 skips the third)"),
];

/// The environment variable that makes [`adjust_cmdline`] pass a command line unchanged
/// even on a kvm_pvm host (for experiments and tests; nothing is added).
pub const NO_QUIRKS_ENV: &str = "OWVMM_NO_CMDLINE_QUIRKS";

/// The name of a command-line word: `clearcpuid` for `clearcpuid=pku`, the word itself
/// when it has no value.
fn key(word: &str) -> &str {
    word.split_once('=').map_or(word, |(k, _)| k)
}

/// The options of `host`'s table that `cmdline` lacks, in table order, with their reasons.
pub fn missing_options(host: HostKvm, cmdline: &str) -> Vec<(&'static str, &'static str)> {
    let table: &[(&str, &str)] = match host {
        HostKvm::Hardware => &[],
        HostKvm::Pvm => PVM_CMDLINE,
    };
    table
        .iter()
        .filter(|(opt, _)| !cmdline.split_whitespace().any(|w| key(w) == key(opt)))
        .copied()
        .collect()
}

/// `cmdline` with the options `host` needs appended, skipping any whose name is already
/// there. Pure: the environment is not consulted (see [`adjust_cmdline`]).
pub fn with_host_options(host: HostKvm, cmdline: &str) -> String {
    let mut out = cmdline.split_whitespace().collect::<Vec<_>>().join(" ");
    for (opt, _why) in missing_options(host, &out) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(opt);
    }
    out
}

/// Whether `OWVMM_NO_CMDLINE_QUIRKS` is set.
pub fn quirks_disabled_by_env() -> bool {
    std::env::var_os(NO_QUIRKS_ENV).is_some()
}

/// The command line a guest boots with on `host`: [`with_host_options`], unless
/// `OWVMM_NO_CMDLINE_QUIRKS` is set, which passes `cmdline` unchanged.
pub fn adjust_cmdline(host: HostKvm, cmdline: &str) -> String {
    if quirks_disabled_by_env() {
        cmdline.trim().to_string()
    } else {
        with_host_options(host, cmdline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEUTRAL: &str = "console=ttyS0 reboot=k panic=-1 quiet";

    #[test]
    fn hardware_gets_nothing_added() {
        assert_eq!(with_host_options(HostKvm::Hardware, NEUTRAL), NEUTRAL);
        assert_eq!(with_host_options(HostKvm::Hardware, ""), "");
        assert!(missing_options(HostKvm::Hardware, "").is_empty());
    }

    #[test]
    fn pvm_gets_every_option_once() {
        let c = with_host_options(HostKvm::Pvm, NEUTRAL);
        assert!(c.starts_with(NEUTRAL), "{c}");
        for (opt, why) in PVM_CMDLINE {
            assert!(!why.is_empty());
            assert_eq!(
                c.split_whitespace().filter(|w| w == opt).count(),
                1,
                "{opt} in {c}"
            );
        }
        assert!(c.contains(PVM_KERNEL_SWITCH));
        assert_eq!(
            c.split_whitespace().count(),
            NEUTRAL.split_whitespace().count() + PVM_CMDLINE.len()
        );
        // Idempotent: applying it again (a standby, a restored guest) adds nothing.
        assert_eq!(with_host_options(HostKvm::Pvm, &c), c);
        assert_eq!(missing_options(HostKvm::Pvm, "").len(), PVM_CMDLINE.len());
    }

    #[test]
    fn user_options_win() {
        let c = with_host_options(
            HostKvm::Pvm,
            "console=ttyS0 clearcpuid=pku owvmm.pvm_quirks=0",
        );
        assert!(c.contains("clearcpuid=pku") && !c.contains("popcnt"), "{c}");
        assert!(
            c.contains("owvmm.pvm_quirks=0") && !c.contains(PVM_KERNEL_SWITCH),
            "{c}"
        );
        assert!(
            c.contains("no-kvm-hypercalls") && c.contains("GLIBC_TUNABLES="),
            "{c}"
        );
        let c = with_host_options(HostKvm::Pvm, "no-kvm-hypercalls");
        assert_eq!(c.matches("no-kvm-hypercalls").count(), 1);
        assert!(c.starts_with("no-kvm-hypercalls "), "{c}");
    }
}
