//! The generated PKI checked by the real `openssl` binary: chains verify for their
//! purpose, extensions are what kube-apiserver, etcd and kubelet expect, keys are sound.

use std::path::{Path, PathBuf};
use std::process::Command;

use basalt_config::client_config::{Role, issue_client_certificate};
use basalt_config::pki::{self, CertAndKey, LeafSpec, LeafUsage};
use basalt_config::secrets::SecretsBundle;

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed: {text}");
    text
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

struct Written {
    ca: PathBuf,
    crt: PathBuf,
    key: PathBuf,
}

fn write_pair(dir: &Path, name: &str, ca: &CertAndKey, leaf: &CertAndKey) -> Written {
    Written {
        ca: write(dir, &format!("{name}-ca.crt"), &ca.cert_pem),
        crt: write(dir, &format!("{name}.crt"), &leaf.cert_pem),
        key: write(dir, &format!("{name}.key"), &leaf.key_pem),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Verifies the chain for `purpose`, and that the leaf's key is sound and belongs to it.
fn verify(w: &Written, purpose: &str) {
    let out = openssl(&[
        "verify",
        "-purpose",
        purpose,
        "-CAfile",
        s(&w.ca),
        s(&w.crt),
    ]);
    assert!(out.contains(": OK"), "{out}");
    let out = openssl(&["pkey", "-check", "-noout", "-in", s(&w.key)]);
    assert!(out.contains("Key is valid"), "{out}");
    let from_key = openssl(&["pkey", "-pubout", "-in", s(&w.key)]);
    let from_crt = openssl(&["x509", "-noout", "-pubkey", "-in", s(&w.crt)]);
    assert_eq!(from_key, from_crt);
}

#[test]
fn every_leaf_verifies_against_its_ca_for_its_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = SecretsBundle::generate().unwrap();
    let cluster_ca = bundle.kubernetes.ca.cert_and_key();
    let etcd_ca = bundle.kubernetes.etcd_ca.cert_and_key();
    let proxy_ca = bundle.kubernetes.aggregator_ca.cert_and_key();
    let api_ca = bundle.api.ca.cert_and_key();

    let apiserver = pki::issue_leaf(
        &cluster_ca,
        &LeafSpec {
            common_name: "kube-apiserver".into(),
            organization: None,
            usage: LeafUsage::Server,
            sans: vec![
                "kubernetes".into(),
                "kubernetes.default.svc.cluster.local".into(),
                "10.96.0.1".into(),
                "192.0.2.10".into(),
            ],
        },
    )
    .unwrap();
    let w = write_pair(dir.path(), "apiserver", &cluster_ca, &apiserver);
    verify(&w, "sslserver");
    let text = openssl(&["x509", "-noout", "-text", "-in", s(&w.crt)]);
    assert!(
        text.contains("DNS:kubernetes.default.svc.cluster.local"),
        "{text}"
    );
    assert!(text.contains("IP Address:10.96.0.1"), "{text}");
    assert!(text.contains("IP Address:192.0.2.10"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(!text.contains("TLS Web Client Authentication"), "{text}");
    assert!(
        text.contains("X509v3 Basic Constraints: critical\n                CA:FALSE"),
        "{text}"
    );
    assert!(
        text.contains(
            "X509v3 Key Usage: critical\n                Digital Signature, Key Encipherment"
        ),
        "{text}"
    );
    assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(text.contains("ASN1 OID: prime256v1"), "{text}");

    let kubelet_client = pki::issue_leaf(
        &cluster_ca,
        &LeafSpec {
            common_name: "kube-apiserver-kubelet-client".into(),
            organization: Some("kubeadm:cluster-admins".into()),
            usage: LeafUsage::Client,
            sans: vec![],
        },
    )
    .unwrap();
    let w = write_pair(dir.path(), "kubelet-client", &cluster_ca, &kubelet_client);
    verify(&w, "sslclient");
    let text = openssl(&["x509", "-noout", "-text", "-in", s(&w.crt)]);
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");

    let etcd_peer = pki::issue_leaf(
        &etcd_ca,
        &LeafSpec {
            common_name: "cp1".into(),
            organization: None,
            usage: LeafUsage::ServerAndClient,
            sans: vec!["cp1".into(), "localhost".into(), "127.0.0.1".into()],
        },
    )
    .unwrap();
    let w = write_pair(dir.path(), "etcd-peer", &etcd_ca, &etcd_peer);
    verify(&w, "sslserver");
    verify(&w, "sslclient");

    let proxy_client = pki::issue_leaf(
        &proxy_ca,
        &LeafSpec {
            common_name: "front-proxy-client".into(),
            organization: None,
            usage: LeafUsage::Client,
            sans: vec![],
        },
    )
    .unwrap();
    verify(
        &write_pair(dir.path(), "front-proxy-client", &proxy_ca, &proxy_client),
        "sslclient",
    );

    let admin = issue_client_certificate(&api_ca, Role::Admin, "admin").unwrap();
    let w = write_pair(dir.path(), "admin", &api_ca, &admin);
    verify(&w, "sslclient");
    let subject = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-nameopt",
        "RFC2253",
        "-in",
        s(&w.crt),
    ]);
    assert!(subject.contains("O=basalt:admin"), "{subject}");
    assert!(subject.contains("CN=admin"), "{subject}");

    // A leaf does not verify against another CA.
    let wrong = write(dir.path(), "wrong-ca.crt", &etcd_ca.cert_pem);
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", s(&wrong), s(&w.crt)])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn cas_are_critical_ca_true_with_signing_usages() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = SecretsBundle::generate().unwrap();
    for (name, ca) in [
        ("kubernetes", &bundle.kubernetes.ca),
        ("etcd-ca", &bundle.kubernetes.etcd_ca),
        ("front-proxy-ca", &bundle.kubernetes.aggregator_ca),
        ("basalt-api", &bundle.api.ca),
    ] {
        let path = write(dir.path(), &format!("{name}.crt"), ca.crt.as_str());
        let text = openssl(&["x509", "-noout", "-text", "-in", s(&path)]);
        assert!(
            text.contains("X509v3 Basic Constraints: critical"),
            "{text}"
        );
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
        assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
        assert!(text.contains(&format!("Subject: CN = {name}\n")), "{text}");
        // Self-signed CAs verify against themselves.
        let out = openssl(&["verify", "-CAfile", s(&path), s(&path)]);
        assert!(out.contains(": OK"), "{out}");
        // Ten years, give or take the backdating.
        let end = openssl(&[
            "x509",
            "-noout",
            "-checkend",
            &(9 * 365 * 86400).to_string(),
            "-in",
            s(&path),
        ]);
        assert!(end.contains("will not expire"), "{end}");
    }
}

#[test]
fn keys_pass_openssl_checks_and_match_their_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = SecretsBundle::generate().unwrap();
    let keys = [
        (
            "ca",
            bundle.kubernetes.ca.key.as_str(),
            Some(bundle.kubernetes.ca.crt.as_str()),
        ),
        (
            "api-ca",
            bundle.api.ca.key.as_str(),
            Some(bundle.api.ca.crt.as_str()),
        ),
        ("sa", bundle.kubernetes.service_account.key.as_str(), None),
    ];
    for (name, key, crt) in keys {
        let key_path = write(dir.path(), &format!("{name}.key"), key);
        let out = openssl(&["pkey", "-check", "-noout", "-in", s(&key_path)]);
        assert!(out.contains("Key is valid"), "{out}");
        let out = openssl(&["ec", "-check", "-noout", "-in", s(&key_path)]);
        assert!(out.contains("EC Key valid"), "{out}");
        let pub_from_key = openssl(&["pkey", "-pubout", "-in", s(&key_path)]);
        if let Some(crt) = crt {
            let crt_path = write(dir.path(), &format!("{name}.crt"), crt);
            let pub_from_crt = openssl(&["x509", "-noout", "-pubkey", "-in", s(&crt_path)]);
            assert_eq!(pub_from_key, pub_from_crt);
        } else {
            // sa.pub as machined will write it equals what openssl derives.
            let ours = bundle.service_account_public_key().unwrap();
            assert_eq!(pub_from_key.trim(), ours.trim());
        }
    }
}

#[test]
fn fingerprint_matches_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::generate_ca("basalt-maintenance", None).unwrap();
    let path = write(dir.path(), "ca.crt", &ca.cert_pem);
    let out = openssl(&["x509", "-noout", "-fingerprint", "-sha256", "-in", s(&path)]);
    let theirs = out.trim().rsplit('=').next().unwrap();
    assert_eq!(pki::fingerprint_sha256(&ca.cert_pem).unwrap(), theirs);
}
