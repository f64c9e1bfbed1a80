//! Strict parsing: every refusal names the field path; canonical output round-trips.

use basalt_config::{MachineConfig, ParseError};

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parse_err(text: &str) -> String {
    match MachineConfig::parse(text.as_bytes()) {
        Ok(_) => panic!("the document was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn fixtures_round_trip_canonically() {
    for name in ["controlplane.yaml", "worker.yaml"] {
        let text = data(name);
        let config = MachineConfig::from_yaml(&text).unwrap();
        let yaml = config.to_yaml();
        assert_eq!(MachineConfig::from_yaml(&yaml).unwrap(), config, "{name}");
        assert_eq!(
            MachineConfig::from_yaml(&yaml).unwrap().to_yaml(),
            yaml,
            "{name}"
        );
        // The fixtures are written in canonical form, so the text itself comes back.
        assert_eq!(yaml, text, "{name} is not canonical");
        let json = config.to_json();
        assert_eq!(MachineConfig::from_json(&json).unwrap(), config, "{name}");
        assert_eq!(
            MachineConfig::parse(json.as_bytes()).unwrap(),
            config,
            "{name}"
        );
    }
}
