//! Fuzz target: arbitrary bytes as one control-socket request line, through
//! `owvmm::api::protocol::parse_request` the way the server hands it over (lossy UTF-8,
//! trimmed, at most `MAX_REQUEST` bytes).
//!
//! Nothing may panic; a request that parses must survive a round trip (serialised with
//! serde and parsed again it is the same request); an error must name a problem.
//!
//! Built with `--features libfuzzer` under `cargo fuzz` it is a libFuzzer target; otherwise
//! it is a plain program that runs each file named on its command line (or stdin) once.
#![cfg_attr(all(fuzzing, feature = "libfuzzer"), no_main)]

use owvmm::api::protocol::parse_request;
use owvmm::api::server::MAX_REQUEST;

fn run_one(data: &[u8]) {
    if data.len() > MAX_REQUEST {
        return;
    }
    let line = String::from_utf8_lossy(data);
    let line = line.trim();
    match parse_request(line) {
        Ok(req) => {
            let again = serde_json::to_string(&req).expect("a request serialises");
            match parse_request(&again) {
                Ok(back) => assert_eq!(back, req, "round trip of {line:?} via {again}"),
                Err(e) => panic!("{line:?} parsed, but its serialisation {again} did not: {e}"),
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "empty error for {line:?}"),
    }
}

#[cfg(all(fuzzing, feature = "libfuzzer"))]
libfuzzer_sys::fuzz_target!(|data: &[u8]| run_one(data));

#[cfg(not(all(fuzzing, feature = "libfuzzer")))]
mod replay;

#[cfg(not(all(fuzzing, feature = "libfuzzer")))]
fn main() {
    replay::main(run_one);
}
