//! The body of the `parse_config` fuzz target (fuzz/fuzz_targets/parse_config.rs), kept
//! here so the stable corpus-replay test (tests/corpus_replay.rs) runs exactly the
//! same code as the fuzzer.

use crate::model::MachineConfig;
use crate::validate::Mode;

/// Parses `bytes` as a config. What parses must validate without panicking in every
/// mode, serialise, parse back to the same config (YAML and JSON), and redact.
/// Panics when one of these invariants breaks — that is what the fuzzer looks for.
pub fn exercise(bytes: &[u8]) {
    let Ok(config) = MachineConfig::parse(bytes) else {
        return;
    };
    for mode in Mode::ALL {
        let _ = config.validate(mode);
    }
    let yaml = config.to_yaml();
    match MachineConfig::from_yaml(&yaml) {
        Ok(back) => assert_eq!(back, config, "YAML round trip changed the config:\n{yaml}"),
        Err(e) => panic!("the canonical YAML does not parse: {e}\n{yaml}"),
    }
    let json = config.to_json();
    match MachineConfig::from_json(&json) {
        Ok(back) => assert_eq!(back, config, "JSON round trip changed the config:\n{json}"),
        Err(e) => panic!("the canonical JSON does not parse: {e}\n{json}"),
    }
    let redacted = config.redacted().to_yaml();
    assert!(
        !redacted.contains("PRIVATE KEY"),
        "a key survived redaction"
    );
}
