//! Arbitrary bytes into the machine-config parser; what parses must validate,
//! round-trip and redact without panicking (see basalt_config::fuzzing::exercise).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    basalt_config::fuzzing::exercise(data);
});
