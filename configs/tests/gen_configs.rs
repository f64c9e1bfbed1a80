//! Generating a cluster's configs through the library: what each role carries, and that
//! the material is usable (keys match, leaves can be issued from the configs' CAs).

use basalt_config::generate::{GenOptions, machine_configs};
use basalt_config::pki::{self, LeafSpec, LeafUsage};
use basalt_config::secrets::SecretsBundle;
use basalt_config::{CertificateAndKey, MachineConfig, MachineType, Mode};

fn generate() -> (SecretsBundle, MachineConfig, MachineConfig) {
    let secrets = SecretsBundle::generate().unwrap();
    let opts = GenOptions::new(
        "demo".parse().unwrap(),
        "https://192.0.2.10:6443".parse().unwrap(),
    );
    let (cp, worker) = machine_configs(&secrets, &opts).unwrap();
    (secrets, cp, worker)
}

fn pair(ca: &CertificateAndKey) -> pki::CertAndKey {
    pki::CertAndKey {
        cert_pem: ca.crt.as_str().to_owned(),
        key_pem: ca.key.as_ref().expect("a key").as_str().to_owned(),
    }
}

#[test]
fn control_plane_carries_every_ca_with_a_matching_key() {
    let (secrets, cp, _) = generate();
    assert_eq!(cp.machine.machine_type, MachineType::Controlplane);
    let etcd = cp.cluster.etcd.ca.as_ref().unwrap();
    let aggregator = cp.cluster.aggregator_ca.as_ref().unwrap();
    for ca in [&cp.cluster.ca, etcd, aggregator, &cp.machine.ca] {
        let pair = pair(ca);
        pki::check_key_pair(&pair.cert_pem, &pair.key_pem).unwrap();
        assert!(pki::check_certificate_pem(&pair.cert_pem).unwrap().is_ca);
        // The node can issue its leaves from what the config carries.
        let leaf = pki::issue_leaf(
            &pair,
            &LeafSpec {
                common_name: "cp-1".into(),
                organization: None,
                usage: LeafUsage::ServerAndClient,
                sans: vec!["cp-1".into(), "192.0.2.21".into()],
            },
        )
        .unwrap();
        pki::check_key_pair(&leaf.cert_pem, &leaf.key_pem).unwrap();
    }
    assert_eq!(etcd.crt, secrets.kubernetes.etcd_ca.crt);
    assert_eq!(aggregator.crt, secrets.kubernetes.aggregator_ca.crt);
    assert_eq!(
        cp.cluster.service_account.as_ref().unwrap().key,
        secrets.kubernetes.service_account.key
    );
    assert_eq!(cp.cluster.token, secrets.bootstrap_token);
    cp.validate(Mode::Metal).unwrap();
}

#[test]
fn worker_trusts_the_cluster_but_holds_no_key() {
    let (secrets, _, worker) = generate();
    assert_eq!(worker.machine.machine_type, MachineType::Worker);
    assert_eq!(worker.cluster.ca.crt, secrets.kubernetes.ca.crt);
    assert!(worker.cluster.ca.key.is_none());
    assert_eq!(worker.machine.ca.crt, secrets.api.ca.crt);
    assert!(worker.machine.ca.key.is_none());
    assert!(worker.cluster.etcd.ca.is_none());
    assert!(worker.cluster.aggregator_ca.is_none());
    assert!(worker.cluster.service_account.is_none());
    assert_eq!(worker.cluster.token, secrets.bootstrap_token);
    assert_eq!(worker.machine.token.as_ref(), Some(&secrets.machine_token));
    assert!(!worker.to_yaml().contains("PRIVATE KEY"));
    assert!(!worker.to_json().contains("PRIVATE KEY"));
    worker.validate(Mode::Metal).unwrap();
}

#[test]
fn defaults_are_the_documented_ones() {
    let (_, cp, worker) = generate();
    for c in [&cp, &worker] {
        assert_eq!(c.cluster.kubernetes_version.to_string(), "v1.31.2");
        assert_eq!(
            c.machine.install.as_ref().unwrap().disk.to_string(),
            "/dev/vda"
        );
        let net = &c.cluster.network;
        assert_eq!(net.pod_subnets[0].to_string(), "10.244.0.0/16");
        assert_eq!(net.service_subnets[0].to_string(), "10.96.0.0/12");
        assert_eq!(
            c.cluster.control_plane.endpoint.as_str(),
            "https://192.0.2.10:6443"
        );
    }
    // The endpoint names the control planes; a worker's certificate does not claim it.
    assert_eq!(cp.machine.cert_sans[0].to_string(), "192.0.2.10");
    assert!(worker.machine.cert_sans.is_empty());
}

#[test]
fn two_generations_share_nothing_secret() {
    let (a, _, _) = generate();
    let (b, _, _) = generate();
    assert_ne!(a.cluster.id, b.cluster.id);
    assert_ne!(a.bootstrap_token, b.bootstrap_token);
    assert_ne!(a.kubernetes.ca.key, b.kubernetes.ca.key);
    assert_ne!(a.api.ca.key, b.api.ca.key);
}
