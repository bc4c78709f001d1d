//! Fuzz target: arbitrary bytes through the manifest parser.
//!
//! Nothing may panic or hang, and whatever the strict parser accepts must survive the
//! writer: `parse(write(parse(x))) == parse(x)`. The lenient parser (`parse_each`) must
//! agree with the strict one: no bad line exactly when `parse` succeeds, and every error
//! names a line.
//!
//! Built with `--features libfuzzer` under `cargo fuzz` it is a libFuzzer target; otherwise
//! it is a plain program that runs each file named on its command line (or stdin) once.
#![cfg_attr(all(fuzzing, feature = "libfuzzer"), no_main)]

fn run_one(data: &[u8]) {
    let each = owvmm_manifest::parse_each(data);
    let clean = each.first_error().is_none();
    match owvmm_manifest::parse(data) {
        Ok(m) => {
            assert!(clean, "parse accepted what parse_each refused");
            let text = m.to_text();
            match owvmm_manifest::parse(text.as_bytes()) {
                Ok(back) => assert!(back == m, "written manifest reads back differently\n{text}"),
                Err(e) => panic!("written manifest does not parse: {e}\n{text}"),
            }
        }
        Err(e) => {
            assert!(!clean, "parse refused what parse_each accepted: {e}");
            assert!(e.line >= 1, "error without a line: {e}");
        }
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
