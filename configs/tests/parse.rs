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

/// Each fixture is refused with exactly this message: the field path, then a sentence.
#[test]
fn bad_fixtures_name_the_field() {
    let cases = [
        (
            "bad-unknown-field.yaml",
            "machine.netwrok: unknown field `netwrok`, expected one of `type`, `hostname`, `install`, `network`, `time`, `kubelet`, `sysctls`, `files`, `kernel`, `registries`, `ca`, `certSANs`, `token`",
        ),
        (
            "bad-version.yaml",
            "version: unsupported config version `v1alpha2`: valid versions are v1alpha1",
        ),
        (
            "bad-vip-not-ip.yaml",
            "machine.network.interfaces[0].vip.ip: not an IPv4/IPv6 address",
        ),
        (
            "bad-wrong-type.yaml",
            "machine.network.interfaces[0].dhcp: invalid type: string \"yes please\", expected a boolean",
        ),
        (
            "bad-interface-both-selectors.yaml",
            "machine.network.interfaces[0]: set either `interface` or `deviceSelector`, not both",
        ),
        (
            "bad-interface-no-selector.yaml",
            "machine.network.interfaces[0]: one of `interface` or `deviceSelector` is required",
        ),
        (
            "bad-token.yaml",
            "cluster.token: not a bootstrap token: expected [a-z0-9]{6}.[a-z0-9]{16}",
        ),
        (
            "bad-hostname.yaml",
            "machine.hostname: not a hostname (RFC 1123): only lowercase letters, digits, `-` and `.` are allowed (Kubernetes node names are lowercase)",
        ),
        (
            "bad-endpoint-http.yaml",
            "cluster.controlPlane.endpoint: not an endpoint: the scheme must be https://",
        ),
        (
            "bad-endpoint-no-port.yaml",
            "cluster.controlPlane.endpoint: not an endpoint: the port is missing (the Kubernetes API usually listens on 6443)",
        ),
        ("bad-missing-field.yaml", "cluster: missing field `name`"),
        (
            "bad-machine-type.yaml",
            "machine.type: unknown variant `master`, expected `controlplane` or `worker`",
        ),
        (
            "bad-duplicate-key.yaml",
            "the config is not valid YAML: cluster.network: duplicate entry with key \"dnsDomain\" at line 30 column 5",
        ),
        (
            "bad-cidr-syntax.yaml",
            "cluster.network.podSubnets[0]: not a CIDR: expected an address and prefix length such as 10.244.0.0/16 or fd00::/64",
        ),
        (
            "bad-pem-label.yaml",
            "machine.ca.crt: not a PEM certificate: the END line is missing or does not match the BEGIN line",
        ),
        (
            "bad-file-mode.yaml",
            "machine.files[0].permissions: not a file mode: expected octal permissions 0o0000 to 0o7777, such as 0o644",
        ),
    ];
    for (fixture, expected) in cases {
        assert_eq!(parse_err(&data(fixture)), expected, "{fixture}");
    }
}

#[test]
fn json_errors_name_the_field_too() {
    let json = MachineConfig::from_yaml(&data("worker.yaml"))
        .unwrap()
        .to_json();
    let bad = json.replacen(
        "\"dhcp\": true",
        "\"dhcp\": true, \"vip\": {\"ip\": \"nope\"}",
        1,
    );
    assert_ne!(bad, json);
    assert_eq!(
        parse_err(&bad),
        "machine.network.interfaces[0].vip.ip: not an IPv4/IPv6 address"
    );
    let err = MachineConfig::from_json(&bad).unwrap_err();
    assert_eq!(err.path(), Some("machine.network.interfaces[0].vip.ip"));
    assert_eq!(
        parse_err("{\"version\": \"v1alpha1\", \"machine\": "),
        "the config is not valid JSON: EOF while parsing a value at line 1 column 35"
    );
}

#[test]
fn degenerate_documents() {
    assert!(matches!(MachineConfig::parse(b""), Err(ParseError::Empty)));
    assert!(matches!(
        MachineConfig::parse(b"  \n# only a comment\n"),
        Err(ParseError::Empty)
    ));
    assert!(matches!(
        MachineConfig::parse(&[0xff, 0xfe, 0x00]),
        Err(ParseError::NotUtf8)
    ));
    assert_eq!(
        parse_err("- a"),
        "(document): invalid type: sequence, expected a mapping"
    );
    assert_eq!(
        parse_err("version: v1alpha1\nmachine: 3\n"),
        "machine: invalid type: integer `3`, expected a mapping"
    );
    assert_eq!(
        parse_err("a: [b"),
        "the config is not valid YAML: did not find expected ',' or ']' at line 2 column 1, while parsing a flow sequence at line 1 column 4"
    );
}

#[test]
fn accepted_spellings_are_normalised() {
    // Integers where a string is canonical, uppercase MACs: accepted, written canonically.
    let text = data("controlplane.yaml")
        .replace("permissions: '0o600'", "permissions: 0o600")
        .replace("net.ipv4.ip_forward: '1'", "net.ipv4.ip_forward: 1")
        .replace("52:54:00:12:34:56", "52:54:00:12:34:5A");
    let config = MachineConfig::from_yaml(&text).unwrap();
    assert_eq!(
        config.to_yaml(),
        data("controlplane.yaml").replace("52:54:00:12:34:56", "52:54:00:12:34:5a")
    );
}

#[test]
fn yaml_flow_mapping_is_not_mistaken_for_json() {
    let json = MachineConfig::from_yaml(&data("worker.yaml"))
        .unwrap()
        .to_json();
    let tree: serde_json::Value = serde_json::from_str(&json).unwrap();
    // serde_json writes valid JSON; strip the quotes from keys to make it YAML-only.
    let flow = tree.to_string().replace("\"version\":", "version: ");
    assert!(serde_json::from_str::<serde_json::Value>(&flow).is_err());
    assert_eq!(
        MachineConfig::parse(flow.as_bytes()).unwrap(),
        MachineConfig::from_json(&json).unwrap()
    );
}
