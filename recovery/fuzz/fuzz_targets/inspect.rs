//! Fuzz target: arbitrary bytes as guest memory, through `inspect` and `build_manifest`.
//!
//! The bytes are seen cyclically (address `a` reads byte `a % len`), so every address of the
//! first 4 GiB is readable and every walk runs on garbage as deep as its bounds allow. The
//! kernel's System.map and BTF come from `OWVMM_FUZZ_KERNEL_DIR` (a directory with
//! `System.map` and `vmlinux.btf`) when set; otherwise a one-symbol map and a one-type BTF
//! are used (only the outer layers run).
//!
//! Built with `--features libfuzzer` under `cargo fuzz` it is a libFuzzer target; otherwise
//! it is a plain program that runs each file named on its command line (or stdin) once.
#![cfg_attr(all(fuzzing, feature = "libfuzzer"), no_main)]

use std::sync::OnceLock;

use owvmm_recovery::btf::Btf;
use owvmm_recovery::kernel::Kernel;
use owvmm_recovery::manifest::{build_manifest, wire};
use owvmm_recovery::regs::{CpuUserState, UserRegs};
use owvmm_recovery::symbols::SymbolTable;
use owvmm_recovery::tasks::FxSave;
use owvmm_recovery::{inspect, PhysRead};

/// Memory made of the input repeated; nothing above 4 GiB.
struct Cyclic<'a>(&'a [u8]);

impl PhysRead for Cyclic<'_> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> bool {
        let len = self.0.len() as u64;
        if len == 0 || addr >= 1 << 32 {
            return false;
        }
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.0[usize::try_from((addr + i as u64) % len).unwrap_or(0)];
        }
        true
    }
}

/// `(System.map text, BTF blob)`.
fn kernel_files() -> &'static (String, Vec<u8>) {
    static FILES: OnceLock<(String, Vec<u8>)> = OnceLock::new();
    FILES.get_or_init(|| {
        if let Some(dir) = std::env::var_os("OWVMM_FUZZ_KERNEL_DIR") {
            let dir = std::path::PathBuf::from(dir);
            if let (Ok(map), Ok(btf)) = (
                std::fs::read_to_string(dir.join("System.map")),
                std::fs::read(dir.join("vmlinux.btf")),
            ) {
                return (map, btf);
            }
        }
        // A BTF blob with one type, `int`.
        let mut blob = Vec::new();
        blob.extend_from_slice(&0xeb9fu16.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, 16, 16, 5] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        for v in [1u32, 1 << 24, 4, 32] {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        blob.extend_from_slice(b"\0int\0");
        let map = "ffffffff81000000 T _text\nffffffff81100100 D phys_base\n\
                   ffffffff81101000 D init_top_pgt\nffffffff81110000 D init_task\n\
                   ffffffff81400000 B _end\n";
        (map.to_owned(), blob)
    })
}

fn run_one(data: &[u8]) {
    let (map, btf_blob) = kernel_files();
    let mem = Cyclic(data);
    let report = inspect(&mem, map, btf_blob);
    let (Ok(syms), Ok(btf)) = (SymbolTable::parse_system_map(map), Btf::parse(btf_blob)) else {
        return;
    };
    let Ok(k) = Kernel::new(&mem, &syms, &btf) else {
        return;
    };
    let cpus: Vec<CpuUserState> = report
        .cpus
        .iter()
        .map(|c| CpuUserState {
            gs_base: c.per_cpu_offset,
            kernel_gs_base: c.per_cpu_offset,
            cpl3: data.first().is_some_and(|b| b & 1 != 0),
            regs: UserRegs::default(),
            fxsave: FxSave::init(),
        })
        .collect();
    let m = build_manifest(&k, &report, &cpus);
    match wire::parse(m.text.as_bytes()) {
        Ok(parsed) => assert!(parsed == m.manifest, "manifest reads back differently\n{}", m.text),
        Err(e) => panic!("manifest does not parse: {e}\n{}", m.text),
    }
}

#[cfg(all(fuzzing, feature = "libfuzzer"))]
libfuzzer_sys::fuzz_target!(|data: &[u8]| run_one(data));

// The stable replay runner that every fuzz target of the project shares.
#[cfg(not(all(fuzzing, feature = "libfuzzer")))]
#[path = "../../../vmm/fuzz/fuzz_targets/replay.rs"]
mod replay;

#[cfg(not(all(fuzzing, feature = "libfuzzer")))]
fn main() {
    replay::main(run_one);
}
