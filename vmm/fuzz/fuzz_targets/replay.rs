//! The stable replay runner shared by the targets: without libFuzzer a target is a plain
//! program that runs each file named on its command line (or stdin) once.

/// Runs `run_one` over each file named in the arguments, or over stdin without any.
pub fn main(run_one: fn(&[u8])) {
    use std::io::Read as _;
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        let mut data = Vec::new();
        if std::io::stdin().read_to_end(&mut data).is_ok() {
            run_one(&data);
        }
    }
    for f in files {
        match std::fs::read(&f) {
            Ok(data) => run_one(&data),
            Err(e) => eprintln!("{f}: {e}"),
        }
    }
}
