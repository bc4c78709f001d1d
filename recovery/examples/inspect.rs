//! Prints what the recovery layer finds in a guest memory snapshot.
//!
//! Usage: `cargo run -p owvmm-recovery --example inspect -- SNAPSHOT_DIR KERNEL_DIR`
//! where SNAPSHOT_DIR holds `memory.bin` (guest RAM from guest-physical 0, as written by
//! `owvmm ctl snapshot`) and KERNEL_DIR holds `System.map` and `vmlinux.btf`. A third
//! argument `--manifest` prints the resurrection manifest instead (no vCPU state: every
//! thread's registers come from memory).

use std::path::PathBuf;
use std::process::ExitCode;

use owvmm_recovery::btf::Btf;
use owvmm_recovery::kernel::Kernel;
use owvmm_recovery::manifest::build_manifest;
use owvmm_recovery::symbols::SymbolTable;
use owvmm_recovery::{inspect, FlatMemory};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (snap, kdir, manifest) = match args.as_slice() {
        [s, k] => (s, k, false),
        [s, k, m] if m == "--manifest" => (s, k, true),
        _ => {
            eprintln!("usage: inspect SNAPSHOT_DIR KERNEL_DIR [--manifest]");
            return ExitCode::from(2);
        }
    };
    let snap = PathBuf::from(snap);
    let kdir = PathBuf::from(kdir);
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
    let run = || -> Result<(), String> {
        let memory = read(snap.join("memory.bin"))?;
        let map = String::from_utf8(read(kdir.join("System.map"))?)
            .map_err(|e| format!("System.map: {e}"))?;
        let btf = read(kdir.join("vmlinux.btf"))?;
        let start = std::time::Instant::now();
        let mem = FlatMemory(memory);
        let report = inspect(&mem, &map, &btf);
        let took = start.elapsed();
        if manifest {
            let syms = SymbolTable::parse_system_map(&map).map_err(|e| e.to_string())?;
            let btf = Btf::parse(&btf).map_err(|e| e.to_string())?;
            let k = Kernel::new(&mem, &syms, &btf).map_err(|e| e.to_string())?;
            let m = build_manifest(&k, &report, &[]);
            print!("{}", m.text);
            for e in &m.excluded {
                eprintln!("not included: pid {}: {}", e.pid, e.reason);
            }
            for n in &m.notes {
                eprintln!("note: {n}");
            }
            return Ok(());
        }
        print!("{report}");
        eprintln!("inspect took {took:?}");
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inspect: {e}");
            ExitCode::FAILURE
        }
    }
}
