//! Every workaround for this workplace's KVM (`kvm_pvm`: guest kernel code is emulated, and
//! a few instructions are not) lives here, each with the reason. None is applied on
//! hardware KVM. The guest-kernel side of the same workarounds is the patch series in
//! `guest-kernel/patches/`.

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

/// Kernel command-line options a guest needs on this host, each with why.
pub const PVM_CMDLINE: &[(&str, &str)] = &[
    ("clearcpuid=xsave,popcnt,smap,cx16,erms,fsrm", "xsave/xrstor, popcnt, clac/stac and cmpxchg16b (SLUB) are not emulated in guest kernel mode, and without ERMS/FSRM the kernel copies 8 bytes per emulated step instead of 1; CPUID cannot be filtered here, so the kernel is told"),
    ("GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-AVX_Fast_Unaligned_Load", "user code runs with the host's XCR0 but the guest kernel (without xsave) does not preserve AVX state: glibc must stay off AVX (init's environment, passed on by ow-agent)"),
    ("no-kvm-hypercalls", "CPUID leaks the host's KVM PV features but vmcall never completes here (guest-kernel patch 0004); without it a second vCPU hangs"),
];

/// Adds the options `host` needs to a user's command line, skipping ones already there.
pub fn adjust_cmdline(host: HostKvm, cmdline: &str) -> String {
    let mut out = cmdline.trim().to_string();
    // For experiments: OWVMM_NO_CMDLINE_QUIRKS=1 passes the command line unchanged.
    if host == HostKvm::Pvm && std::env::var_os("OWVMM_NO_CMDLINE_QUIRKS").is_none() {
        for (opt, _why) in PVM_CMDLINE {
            let key = opt.split('=').next().unwrap_or(opt);
            let present = out
                .split_whitespace()
                .any(|w| w == *opt || w.split('=').next() == Some(key));
            if !present {
                out.push(' ');
                out.push_str(opt);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_missing_options_once() {
        let c = adjust_cmdline(HostKvm::Pvm, "console=ttyS0 no-kvm-hypercalls");
        assert!(c.starts_with("console=ttyS0 no-kvm-hypercalls clearcpuid=xsave,popcnt,smap,cx16"));
        assert!(c.contains(" GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,"));
        assert_eq!(c.matches("no-kvm-hypercalls").count(), 1);
        assert_eq!(adjust_cmdline(HostKvm::Pvm, &c), c);
        assert_eq!(
            adjust_cmdline(HostKvm::Hardware, "console=ttyS0"),
            "console=ttyS0"
        );
        // A user's own clearcpuid wins.
        let c = adjust_cmdline(HostKvm::Pvm, "clearcpuid=pku");
        assert!(c.contains("clearcpuid=pku") && !c.contains("popcnt"));
    }
}
