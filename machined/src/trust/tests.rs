//! The signing decision and its guards as pure functions, then trustd and a worker's
//! requester talking real TLS on loopback, the worker's real API server swapping its
//! certificate under a client that verifies against the API CA.

use std::net::Ipv4Addr;
use std::sync::Arc;

use basalt_api::{Client, ClientTls};
use basalt_config::client_config::{Role, issue_client_certificate};
use basalt_config::generate::{GenOptions, machine_configs};
use basalt_config::secrets::SecretsBundle;

use super::*;
use crate::api::{self, ApiConfig, ApiMode};

struct Cluster {
    secrets: SecretsBundle,
    controlplane: MachineConfig,
    worker: MachineConfig,
}

fn cluster() -> Cluster {
    let secrets = SecretsBundle::generate().unwrap();
    let opts = GenOptions::new(
        "trust".parse().unwrap(),
        "https://127.0.0.1:6443".parse().unwrap(),
    );
    let (controlplane, worker) = machine_configs(&secrets, &opts).unwrap();
    Cluster {
        secrets,
        controlplane,
        worker,
    }
}

fn request(csr: String, token: &str) -> TrustCertificateRequest {
    TrustCertificateRequest {
        csr,
        token: token.to_owned(),
    }
}

#[test]
fn the_token_check_compares_whole_values() {
    let token = "q1w2e3.0123456789abcdef";
    assert!(token_matches(token, token));
    for wrong in [
        "",
        "q1w2e3",
        "q1w2e3.0123456789abcdeg",
        "Q1w2e3.0123456789abcdef",
        "q1w2e3.0123456789abcdef ",
    ] {
        assert!(!token_matches(token, wrong), "{wrong:?}");
    }
}

#[test]
fn the_signer_checks_the_token_before_looking_at_the_csr() {
    let c = cluster();
    let signer = TrustdConfig::node(
        &c.controlplane,
        ServerIdentity::for_node(&c.controlplane, "cp-1", &[]).unwrap(),
    )
    .unwrap()
    .signer;
    let token = c.secrets.machine_token.to_string();
    let key = pki::generate_key_pem().unwrap();
    let csr = pki::server_csr(&key, "w-1", &["w-1".to_owned(), "10.5.0.3".to_owned()]).unwrap();

    assert_eq!(
        signer.sign(&request(csr.clone(), "aaaaaa.bbbbbbbbbbbbbbbb")),
        Err(Refusal::BadToken)
    );
    // Even garbage is refused for the token first: nothing about the policy leaks.
    assert_eq!(
        signer.sign(&request("garbage".into(), "")),
        Err(Refusal::BadToken)
    );
    assert!(matches!(
        signer.sign(&request("garbage".into(), &token)),
        Err(Refusal::Unreadable(_))
    ));
    let signed = signer.sign(&request(csr, &token)).unwrap();
    assert_eq!(signed.ca, c.secrets.api.ca.crt.as_str());
    pki::check_key_pair(&signed.certificate, &key).unwrap();

    // The control planes' endpoint is not for a worker to claim.
    let endpoint_csr =
        pki::server_csr(&key, "w-1", &["w-1".to_owned(), "10.5.0.2".to_owned()]).unwrap();
    let mut cp = c.controlplane.clone();
    cp.cluster.control_plane.endpoint = "https://10.5.0.2:6443".parse().unwrap();
    let identity = ServerIdentity::for_node(&cp, "cp-1", &[]).unwrap();
    let strict = TrustdConfig::node(&cp, identity).unwrap().signer;
    let refusal = strict.sign(&request(endpoint_csr, &token)).unwrap_err();
    assert!(refusal.message().contains("endpoint"), "{refusal:?}");

    // A CSR asking for a CA is a policy refusal (403), said in a sentence.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["w-1".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_csr = params.serialize_request(&ca_key).unwrap().pem().unwrap();
    let refusal = signer.sign(&request(ca_csr, &token)).unwrap_err();
    assert_eq!(refusal.status(), StatusCode::FORBIDDEN);
    assert!(
        refusal.message().contains("certificate authority"),
        "{refusal:?}"
    );
}

#[test]
fn trustd_runs_only_on_a_control_plane_with_a_token() {
    let c = cluster();
    let identity = ServerIdentity::for_node(&c.controlplane, "cp-1", &[]).unwrap();
    let config = TrustdConfig::node(&c.controlplane, identity.clone()).unwrap();
    assert_eq!(config.listen.port(), 50001);
    assert!(TrustdConfig::node(&c.worker, identity.clone()).is_none());
    let mut tokenless = c.controlplane.clone();
    tokenless.machine.token = None;
    assert!(TrustdConfig::node(&tokenless, identity.clone()).is_none());
    assert!(TrustdConfig::node(&c.controlplane.redacted(), identity).is_none());
}

#[test]
fn a_worker_without_a_token_says_so() {
    let c = cluster();
    let mut worker = c.worker.clone();
    worker.machine.token = None;
    let err = Requester::for_worker(&worker, "w-1", &[]).unwrap_err();
    assert!(
        err.to_string().contains("machine.token is not set"),
        "{err}"
    );
    let err = Requester::for_worker(&c.worker.redacted(), "w-1", &[]).unwrap_err();
    assert!(matches!(err, TrustError::RedactedToken), "{err}");
    // trustd's host is the cluster endpoint's, on port 50001; the names include loopback.
    let r =
        Requester::for_worker(&c.worker, "w-1", &[IpAddr::V4(Ipv4Addr::new(10, 5, 0, 3))]).unwrap();
    assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", 50001));
    assert_eq!(
        r.sans[..5],
        ["w-1", "localhost", "127.0.0.1", "::1", "10.5.0.3"]
    );
    // The endpoint's host is never asked for, even when it is one of the worker's names.
    let mut on_endpoint = c.worker.clone();
    on_endpoint.cluster.control_plane.endpoint = "https://10.5.0.3:6443".parse().unwrap();
    let r = Requester::for_worker(
        &on_endpoint,
        "w-1",
        &[IpAddr::V4(Ipv4Addr::new(10, 5, 0, 3))],
    )
    .unwrap();
    assert!(!r.sans.contains(&"10.5.0.3".to_owned()), "{:?}", r.sans);
}

#[test]
fn the_rate_limit_allows_a_burst_then_refills() {
    let t0 = Instant::now();
    let mut rate = RateLimit::new(3.0, 2.0, t0);
    assert!((0..3).all(|_| rate.take(t0)));
    assert!(!rate.take(t0));
    assert!(rate.take(t0 + Duration::from_millis(500)));
    assert!(!rate.take(t0 + Duration::from_millis(500)));
    // Never more than the burst, however long it rested.
    let later = t0 + Duration::from_secs(3600);
    assert!((0..3).all(|_| rate.take(later)));
    assert!(!rate.take(later));
}

#[test]
fn back_off_and_renewal_are_bounded() {
    assert_eq!(retry_delay(1), Duration::from_secs(2));
    assert_eq!(retry_delay(2), Duration::from_secs(4));
    assert_eq!(retry_delay(6), Duration::from_secs(60));
    assert_eq!(retry_delay(u32::MAX), Duration::from_secs(60));
    assert_eq!(renew_after(90_000, 0), Duration::from_secs(60_000));
    assert_eq!(renew_after(10, 100), Duration::from_secs(60));
}

/// trustd on loopback with the control plane's real identity; a worker's real API
/// server with its interim self-signed certificate; the requester swaps the signed one in
/// and a client verifying against the API CA (no pinning) gets through.
#[tokio::test]
async fn a_worker_gets_its_certificate_from_trustd_and_serves_it_without_restarting() {
    let c = cluster();
    let cp_identity = ServerIdentity::for_node(&c.controlplane, "cp-1", &[]).unwrap();
    let mut trust_config = TrustdConfig::node(&c.controlplane, cp_identity).unwrap();
    trust_config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let trustd = start(trust_config).await.unwrap();
    let trust_port = trustd.local_addr().port();

    let worker_identity = ServerIdentity::self_signed_for_worker(&c.worker, "w-1", &[]).unwrap();
    let mut api_config = ApiConfig::node(
        ApiMode::Configured(worker_identity.clone()),
        basalt_config::Mode::Cloud,
    );
    api_config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (sink, _configs) = api::config_channel();
    let worker_api = api::start(api_config, Arc::new(api::NothingWired), sink)
        .await
        .unwrap();
    let ca = c.secrets.api.ca.cert_and_key();
    let admin = issue_client_certificate(&ca, Role::Admin, "test").unwrap();
    let client = Client::new(
        &format!("127.0.0.1:{}", worker_api.local_addr().port()),
        &ClientTls::Mutual {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: admin.cert_pem,
            key_pem: admin.key_pem,
        },
    )
    .unwrap();
    // The interim certificate is self-signed: a client trusting the API CA refuses it.
    let err = client.version().await.unwrap_err();
    assert!(err.status().is_none(), "TLS must fail: {err}");

    let mut requester = Requester::for_worker(&c.worker, "w-1", &[]).unwrap();
    requester.port = trust_port;

    // A wrong token is refused with 401 and the sentence trustd gave.
    let wrong = requester.clone().with_token("aaaaaa.bbbbbbbbbbbbbbbb");
    match wrong.request_once().await {
        Err(TrustError::Refused {
            status, message, ..
        }) => {
            assert_eq!(status, 401);
            assert!(message.contains("machine token"), "{message}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|i| i.cert_pem)),
    }
    // A worker that trusts another CA does not talk to this trustd at all.
    let mut stranger = requester.clone();
    stranger.api_ca_pem = pki::generate_ca("other", None).unwrap().cert_pem;
    assert!(matches!(
        stranger.request_once().await,
        Err(TrustError::Connect { .. })
    ));

    let task = spawn_requester(requester, worker_identity.clone());
    let version = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match client.version().await {
                Ok(v) => break v,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the worker never served a certificate the API CA verifies");
    assert!(!version.maintenance);
    let info = pki::check_certificate_pem(&worker_identity.cert_pem()).unwrap();
    assert!(!info.is_ca);
    assert!(info.dns_names.contains(&"w-1".to_owned()));
    task.abort();
    worker_api.stop();
    trustd.stop();
}

/// Oversized bodies and wrong paths are answered without reading further.
#[tokio::test]
async fn trustd_refuses_oversized_and_unknown_requests() {
    let c = cluster();
    let cp_identity = ServerIdentity::for_node(&c.controlplane, "cp-1", &[]).unwrap();
    let mut trust_config = TrustdConfig::node(&c.controlplane, cp_identity).unwrap();
    trust_config.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let trustd = start(trust_config).await.unwrap();
    let mut requester = Requester::for_worker(&c.worker, "w-1", &[]).unwrap();
    requester.port = trustd.local_addr().port();
    let addr = requester.addr();
    let huge = Bytes::from(vec![b'x'; MAX_REQUEST_BYTES + 1]);
    match requester.post(&addr, huge).await {
        Err(TrustError::Refused { status, .. }) => assert_eq!(status, 413),
        other => panic!("{:?}", other.map(|_| ())),
    }
    match requester
        .post(&addr, Bytes::from_static(b"{\"csr\":1}"))
        .await
    {
        Err(TrustError::Refused {
            status, message, ..
        }) => {
            assert_eq!(status, 400);
            assert!(message.contains("not a certificate request"), "{message}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    trustd.stop();
}
