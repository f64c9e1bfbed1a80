//! Redaction: a copy of a config that is safe to print, log or return from the API.
//! Every private key, the bootstrap token and the machine token are replaced by [`REDACTED`](crate::values::REDACTED); certificates
//! stay, since they are public and useful when debugging trust problems.

use crate::model::{CertificateAndKey, MachineConfig};
use crate::values::{BootstrapToken, PemPrivateKey};

fn redact_ca(ca: &mut CertificateAndKey) {
    if let Some(key) = &mut ca.key {
        *key = PemPrivateKey::redacted();
    }
}

impl MachineConfig {
    /// This config with every private key, the bootstrap token and the machine token replaced by
    /// [`REDACTED`](crate::values::REDACTED) (`******`). The result serialises and parses like any config, but
    /// [`MachineConfig::validate`] refuses it: it cannot run a node.
    pub fn redacted(&self) -> MachineConfig {
        let mut c = self.clone();
        redact_ca(&mut c.machine.ca);
        redact_ca(&mut c.cluster.ca);
        if let Some(ca) = &mut c.cluster.aggregator_ca {
            redact_ca(ca);
        }
        if let Some(ca) = &mut c.cluster.etcd.ca {
            redact_ca(ca);
        }
        if let Some(sa) = &mut c.cluster.service_account {
            sa.key = PemPrivateKey::redacted();
        }
        c.cluster.token = BootstrapToken::redacted();
        if let Some(token) = &mut c.machine.token {
            *token = BootstrapToken::redacted();
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use crate::{MachineConfig, Mode};

    const CONTROLPLANE: &str = include_str!("../tests/data/controlplane.yaml");

    #[test]
    fn no_key_and_no_token_survive() {
        let config = MachineConfig::from_yaml(CONTROLPLANE).unwrap();
        assert!(CONTROLPLANE.contains("PRIVATE KEY"));
        let redacted = config.redacted();
        for text in [
            redacted.to_yaml(),
            redacted.to_json(),
            format!("{redacted:?}"),
        ] {
            assert!(!text.contains("PRIVATE KEY"), "{text}");
            assert!(!text.contains("0123456789abcdef"), "{text}");
            assert!(!text.contains("abcdef.0123456789abcdef"), "{text}");
            assert!(!text.contains("fedcba9876543210"), "machine.token: {text}");
            assert!(
                text.contains("BEGIN CERTIFICATE"),
                "certificates are public and stay"
            );
        }
        // Five keys and two tokens (bootstrap, machine) became the marker.
        assert_eq!(redacted.to_yaml().matches("'******'").count(), 7);
    }

    #[test]
    fn redacted_config_round_trips_but_does_not_validate() {
        let redacted = MachineConfig::from_yaml(CONTROLPLANE).unwrap().redacted();
        let yaml = redacted.to_yaml();
        assert_eq!(MachineConfig::from_yaml(&yaml).unwrap(), redacted);
        let lines = redacted.validate(Mode::Metal).unwrap_err().lines();
        let marker = "is redacted (******); a redacted config can be read but cannot run a node";
        assert_eq!(
            lines,
            [
                format!("cluster.token: {marker}"),
                format!("machine.token: {marker}"),
                format!("machine.ca.key: {marker}"),
                format!("cluster.ca.key: {marker}"),
                format!("cluster.aggregatorCA.key: {marker}"),
                format!("cluster.etcd.ca.key: {marker}"),
                format!("cluster.serviceAccount.key: {marker}"),
            ]
        );
    }
}
