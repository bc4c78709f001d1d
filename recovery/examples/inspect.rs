//! Prints what the recovery layer finds in a guest memory snapshot.
//!
//! Usage: `cargo run -p owvmm-recovery --example inspect -- SNAPSHOT_DIR KERNEL_DIR`
//! where SNAPSHOT_DIR holds `memory.bin` (guest RAM from guest-physical 0, as written by
//! `owvmm ctl snapshot`) and KERNEL_DIR holds `System.map` and `vmlinux.btf`.

use std::path::PathBuf;
use std::process::ExitCode;

use owvmm_recovery::{inspect, FlatMemory};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [snap, kdir] = args.as_slice() else {
        eprintln!("usage: inspect SNAPSHOT_DIR KERNEL_DIR");
        return ExitCode::from(2);
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
        let report = inspect(&FlatMemory(memory), &map, &btf);
        let took = start.elapsed();
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
