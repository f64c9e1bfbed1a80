//! The real server on 127.0.0.1:0 with certificates from basalt-config's PKI, driven by the
//! real basalt-api client. Only the node state behind the server is a small stand-in,
//! because the supervisor and sequencer it stands for live elsewhere.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use basalt_api::{
    ApplyConfigRequest, ApplyConfigResponse, ApplyMode, Client, ClientError, ClientTls,
    Fingerprint, LogLine, ServiceAction, ServiceState, ServiceStatus,
};
use basalt_config::client_config::{Role as CertRole, issue_client_certificate};
use basalt_config::pki::{self, CertAndKey};
use tokio::sync::{broadcast, mpsc};

use super::*;

// include_str! resolves next to this file, so the fixtures are found whichever crate
// compiles the module (basaltctl's tests embed this server too).
fn data(name: &str) -> String {
    match name {
        "api-apply-controlplane.yaml" => {
            include_str!("../../tests/data/api-apply-controlplane.yaml").to_owned()
        }
        "api-apply-many-problems.yaml" => {
            include_str!("../../tests/data/api-apply-many-problems.yaml").to_owned()
        }
        other => panic!("no fixture {other}"),
    }
}

struct Pki {
    ca: CertAndKey,
    admin: CertAndKey,
    operator: CertAndKey,
    reader: CertAndKey,
    foreign_ca: CertAndKey,
    foreign_admin: CertAndKey,
}

fn pki() -> Pki {
    let ca = pki::generate_ca("basalt-api", None).unwrap();
    let foreign_ca = pki::generate_ca("basalt-api", None).unwrap();
    Pki {
        admin: issue_client_certificate(&ca, CertRole::Admin, "admin").unwrap(),
        operator: issue_client_certificate(&ca, CertRole::Operator, "operator").unwrap(),
        reader: issue_client_certificate(&ca, CertRole::Reader, "reader").unwrap(),
        foreign_admin: issue_client_certificate(&foreign_ca, CertRole::Admin, "admin").unwrap(),
        foreign_ca,
        ca,
    }
}

/// Stands in for the supervisor: two services, a log ring with a live feed, and a record
/// of every action asked of it.
struct TestNode {
    actions: Mutex<Vec<String>>,
    log_tx: broadcast::Sender<LogLine>,
}

impl TestNode {
    fn new() -> Arc<Self> {
        let (log_tx, _) = broadcast::channel(16);
        Arc::new(Self {
            actions: Mutex::new(Vec::new()),
            log_tx,
        })
    }
}

fn line(n: u64) -> LogLine {
    LogLine {
        service: "etcd".into(),
        timestamp_unix_ms: n,
        message: format!("line {n}"),
    }
}

impl NodeState for TestNode {
    fn services(&self) -> Result<Vec<ServiceStatus>, ProviderError> {
        Ok(vec![ServiceStatus {
            name: "etcd".into(),
            state: ServiceState::Running,
            message: "started".into(),
            restarts: 0,
            since_unix_ms: Some(1),
        }])
    }
    fn service_action(
        &self,
        service: &str,
        action: ServiceAction,
    ) -> Result<String, ProviderError> {
        if service != "etcd" {
            return Err(ProviderError::NotFound {
                what: "service",
                name: service.to_owned(),
            });
        }
        self.actions
            .lock()
            .unwrap()
            .push(format!("{action} {service}"));
        Ok(format!("{action} {service} requested"))
    }
    fn logs(&self, service: &str, follow: bool) -> Result<Feed<LogLine>, ProviderError> {
        assert_eq!(service, "etcd");
        Ok(Feed {
            backlog: (1..=3).map(line).collect(),
            live: follow.then(|| self.log_tx.subscribe()),
        })
    }
    fn active_config(&self) -> Result<basalt_config::MachineConfig, ProviderError> {
        Ok(basalt_config::MachineConfig::from_yaml(&data("api-apply-controlplane.yaml")).unwrap())
    }
    fn reboot(&self) -> Result<String, ProviderError> {
        self.actions.lock().unwrap().push("reboot".into());
        Ok("rebooting".into())
    }
}

struct Harness {
    api: RunningApi,
    files: tempfile::TempDir,
    stored: Arc<Mutex<Vec<(String, ApplyMode)>>>,
}

impl Harness {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.api.local_addr().port())
    }
}

/// Stands in for the sequencer's end of the config channel: stores what arrives, answers.
fn sequencer(mut rx: mpsc::Receiver<ApplyCommand>) -> Arc<Mutex<Vec<(String, ApplyMode)>>> {
    let stored = Arc::new(Mutex::new(Vec::new()));
    let out = stored.clone();
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            stored
                .lock()
                .unwrap()
                .push((cmd.apply.document.clone(), cmd.apply.mode));
            let _ = cmd.reply.send(Ok(ApplyConfigResponse {
                mode: cmd.apply.mode,
                message: "stored".into(),
                reboot: false,
                applied_live: vec![],
                needs_reboot: vec![],
            }));
        }
    });
    out
}

async fn start_server(mode: ApiMode, node: Arc<dyn NodeState>) -> Harness {
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(files.path().join("var/log")).unwrap();
    std::fs::create_dir_all(files.path().join("root")).unwrap();
    std::fs::write(files.path().join("var/log/machined.log"), "booted\n").unwrap();
    std::fs::write(files.path().join("root/secret"), "no").unwrap();
    let (sink, rx) = config_channel();
    let config = ApiConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        mode,
        files_root: files.path().to_owned(),
        kmsg_path: PathBuf::from("/dev/kmsg"),
        platform: basalt_config::Mode::Metal,
        sys_block: PathBuf::from("/sys/block"),
    };
    let api = start(config, node, sink).await.unwrap();
    Harness {
        api,
        files,
        stored: sequencer(rx),
    }
}

async fn configured(pki: &Pki, node: Arc<dyn NodeState>) -> Harness {
    let identity =
        ServerIdentity::issue(&pki.ca, "node-1", &[IpAddr::V4(Ipv4Addr::LOCALHOST)], &[]).unwrap();
    start_server(ApiMode::Configured(identity), node).await
}

fn client(h: &Harness, ca: &CertAndKey, cert: &CertAndKey) -> Client {
    Client::new(
        &h.endpoint(),
        &ClientTls::Mutual {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: cert.cert_pem.clone(),
            key_pem: cert.key_pem.clone(),
        },
    )
    .unwrap()
}

fn apply(config: String, mode: ApplyMode) -> ApplyConfigRequest {
    ApplyConfigRequest {
        config,
        mode,
        try_timeout_seconds: None,
    }
}

fn status(e: ClientError) -> u16 {
    e.status()
        .unwrap_or_else(|| panic!("expected an HTTP answer, got {e}"))
}

#[tokio::test]
async fn admin_reads_state_acts_and_applies() {
    let pki = pki();
    let node = TestNode::new();
    let h = configured(&pki, node.clone()).await;
    let admin = client(&h, &pki.ca, &pki.admin);

    let version = admin.version().await.unwrap();
    assert!(!version.maintenance);
    assert_eq!(version.api_version, "v1");
    let services = admin.services().await.unwrap();
    assert_eq!(services[0].name, "etcd");
    admin
        .service_action("etcd", ServiceAction::Restart)
        .await
        .unwrap();
    let missing = admin
        .service_action("nope", ServiceAction::Start)
        .await
        .unwrap_err();
    assert_eq!(status(missing), 404);
    admin.reboot().await.unwrap();
    assert_eq!(
        *node.actions.lock().unwrap(),
        vec!["restart etcd", "reboot"]
    );

    let doc = data("api-apply-controlplane.yaml");
    let answer = admin
        .apply_config(&apply(doc.clone(), ApplyMode::Staged))
        .await
        .unwrap();
    assert_eq!(answer.mode, ApplyMode::Staged);
    assert_eq!(*h.stored.lock().unwrap(), vec![(doc, ApplyMode::Staged)]);

    let disks = admin.disks().await.unwrap();
    assert!(disks.iter().all(|d| d.path.starts_with("/dev/")));
    // What no module provides yet is an explicit 501, never made-up data.
    assert_eq!(status(admin.links().await.unwrap_err()), 501);
    let health = admin.health().await.unwrap_err();
    assert_eq!(status(health), 501);
}

#[tokio::test]
async fn reader_is_refused_everything_that_changes_state() {
    let pki = pki();
    let node = TestNode::new();
    let h = configured(&pki, node.clone()).await;
    let reader = client(&h, &pki.ca, &pki.reader);

    assert_eq!(reader.services().await.unwrap().len(), 1);
    let doc = data("api-apply-controlplane.yaml");
    assert_eq!(
        status(
            reader
                .apply_config(&apply(doc, ApplyMode::Auto))
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(status(reader.reboot().await.unwrap_err()), 403);
    assert_eq!(status(reader.shutdown().await.unwrap_err()), 403);
    assert_eq!(
        status(
            reader
                .service_action("etcd", ServiceAction::Stop)
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(status(reader.list_files("/var").await.unwrap_err()), 403);
    assert!(node.actions.lock().unwrap().is_empty());
    assert!(h.stored.lock().unwrap().is_empty());
}

#[tokio::test]
async fn operator_acts_but_cannot_apply_or_read_files() {
    let pki = pki();
    let node = TestNode::new();
    let h = configured(&pki, node.clone()).await;
    let operator = client(&h, &pki.ca, &pki.operator);
    operator
        .service_action("etcd", ServiceAction::Stop)
        .await
        .unwrap();
    let doc = data("api-apply-controlplane.yaml");
    let err = operator
        .apply_config(&apply(doc, ApplyMode::Auto))
        .await
        .unwrap_err();
    assert_eq!(status(err), 403);
    assert_eq!(
        status(
            operator
                .read_file("/var/log/machined.log")
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(*node.actions.lock().unwrap(), vec!["stop etcd"]);
}

#[tokio::test]
async fn clients_without_a_certificate_of_the_api_ca_get_only_a_tls_failure() {
    let pki = pki();
    let h = configured(&pki, TestNode::new()).await;

    let foreign = client(&h, &pki.ca, &pki.foreign_admin);
    let err = foreign.version().await.unwrap_err();
    assert!(err.is_transport(), "{err}");

    let anonymous = Client::new(&h.endpoint(), &ClientTls::Insecure).unwrap();
    let err = anonymous.version().await.unwrap_err();
    assert!(err.is_transport(), "{err}");

    // And the client refuses a server whose certificate another CA issued.
    let wrong_ca = client(&h, &pki.foreign_ca, &pki.admin);
    let err = wrong_ca.version().await.unwrap_err();
    assert!(err.is_transport(), "{err}");
}

#[tokio::test]
async fn maintenance_mode_takes_a_config_from_a_pinned_client() {
    let h = start_server(ApiMode::Maintenance, Arc::new(NothingWired)).await;
    let fingerprint = h.api.fingerprint().unwrap();
    let pinned = Client::new(&h.endpoint(), &ClientTls::Pinned(fingerprint)).unwrap();

    assert!(pinned.version().await.unwrap().maintenance);
    let refused = pinned.services().await.unwrap_err();
    assert_eq!(status(refused), 403);

    let invalid = pinned
        .apply_config(&apply(
            data("api-apply-many-problems.yaml"),
            ApplyMode::Auto,
        ))
        .await
        .unwrap_err();
    match invalid {
        ClientError::Status {
            status,
            validation_errors,
            ..
        } => {
            assert_eq!(status, 422);
            assert!(validation_errors.len() > 1, "{validation_errors:?}");
            assert!(validation_errors.iter().all(|e| !e.path.is_empty()));
        }
        other => panic!("{other}"),
    }
    assert!(
        h.stored.lock().unwrap().is_empty(),
        "an invalid config was stored"
    );

    let try_mode = pinned
        .apply_config(&apply(data("api-apply-controlplane.yaml"), ApplyMode::Try))
        .await
        .unwrap_err();
    assert_eq!(status(try_mode), 400);

    let doc = data("api-apply-controlplane.yaml");
    pinned
        .apply_config(&apply(doc.clone(), ApplyMode::Auto))
        .await
        .unwrap();
    assert_eq!(*h.stored.lock().unwrap(), vec![(doc, ApplyMode::Auto)]);

    let wrong: Fingerprint = Fingerprint::of_der(b"another certificate");
    let err = Client::new(&h.endpoint(), &ClientTls::Pinned(wrong))
        .unwrap()
        .version()
        .await
        .unwrap_err();
    assert!(err.is_transport(), "{err}");
    assert!(err.to_string().contains("fingerprint"), "{err}");
}

#[tokio::test]
async fn logs_follow_streams_backlog_then_new_lines() {
    let pki = pki();
    let node = TestNode::new();
    let h = configured(&pki, node.clone()).await;
    let reader = client(&h, &pki.ca, &pki.reader);

    let all = reader
        .logs("etcd", false, None)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(all, (1..=3).map(line).collect::<Vec<_>>());
    let tail = reader
        .logs("etcd", false, Some(1))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(tail, vec![line(3)]);

    let mut stream = reader.logs("etcd", true, None).await.unwrap();
    for n in 1..=3 {
        assert_eq!(stream.next().await.unwrap().unwrap(), line(n));
    }
    // The server subscribed before answering, so this line reaches the open stream.
    node.log_tx.send(line(4)).unwrap();
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
        .await
        .expect("the followed stream delivered nothing");
    assert_eq!(next.unwrap().unwrap(), line(4));
}

#[tokio::test]
async fn dmesg_reads_and_follows_the_kernel_log() {
    let pki = pki();
    let h = configured(&pki, TestNode::new()).await;
    let reader = client(&h, &pki.ca, &pki.reader);
    let backlog = reader.dmesg(false).await.unwrap().collect().await.unwrap();
    assert!(!backlog.is_empty());

    let mut stream = reader.dmesg(true).await.unwrap();
    let marker = format!("basalt-api-test {}", std::process::id());
    std::fs::write("/dev/kmsg", format!("{marker}\n")).unwrap();
    let found = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(item) = stream.next().await {
            if item.unwrap().message.contains(&marker) {
                return true;
            }
        }
        false
    })
    .await
    .expect("the marker never arrived");
    assert!(found);
}

#[tokio::test]
async fn files_are_admin_only_and_confined_to_var_and_etc() {
    let pki = pki();
    let h = configured(&pki, TestNode::new()).await;
    let admin = client(&h, &pki.ca, &pki.admin);
    let listing = admin.list_files("/var/log").await.unwrap();
    assert_eq!(listing[0].path, "/var/log/machined.log");
    assert_eq!(
        admin.read_file("/var/log/machined.log").await.unwrap(),
        b"booted\n"
    );
    assert_eq!(
        status(admin.read_file("/root/secret").await.unwrap_err()),
        403
    );
    assert_eq!(
        status(admin.read_file("/var/../root/secret").await.unwrap_err()),
        403
    );
    assert_eq!(
        status(admin.list_files("/var/nothing").await.unwrap_err()),
        404
    );
    assert!(h.files.path().join("root/secret").exists());
}

#[tokio::test]
async fn openapi_lists_every_route_the_server_serves() {
    let pki = pki();
    let h = configured(&pki, TestNode::new()).await;
    let doc = client(&h, &pki.ca, &pki.reader).openapi().await.unwrap();
    for spec in basalt_api::ENDPOINTS {
        let op = &doc["paths"][spec.path][spec.method.as_str().to_lowercase()];
        assert!(op.is_object(), "{} {}", spec.method.as_str(), spec.path);
    }
}

#[test]
fn query_values_are_decoded() {
    let q = Query::parse("path=%2Fvar%2Flog%20x&follow=true").unwrap();
    assert_eq!(q.get("path"), Some("/var/log x"));
    assert!(q.follow().unwrap());
    assert!(Query::parse("follow=maybe").unwrap().follow().is_err());
    assert_eq!(percent_decode("100%"), "100%");
}

#[tokio::test]
async fn the_config_leaves_the_node_only_redacted() {
    let pki = pki();
    let h = configured(&pki, TestNode::new()).await;
    let reader = client(&h, &pki.ca, &pki.reader);
    let doc = reader.config().await.unwrap().config;
    assert!(!doc.contains("PRIVATE KEY"), "{doc}");
    assert!(
        !doc.contains("0123456789abcdef"),
        "the bootstrap token leaked"
    );
    assert!(doc.contains("******"));
    // Still the same config apart from its secrets.
    let back = basalt_config::MachineConfig::from_yaml(&doc).unwrap();
    assert_eq!(
        back.machine.hostname.map(|h| h.to_string()).as_deref(),
        Some("cp-1")
    );
}

#[tokio::test]
async fn the_node_listener_is_dual_stack() {
    // Port 0 instead of 50000: the node settings otherwise.
    let mut config = ApiConfig::node(ApiMode::Maintenance, basalt_config::Mode::Metal);
    config.listen.set_port(0);
    let (sink, _rx) = config_channel();
    let api = start(config, Arc::new(NothingWired), sink).await.unwrap();
    let port = api.local_addr().port();
    let fp = api.fingerprint().unwrap();
    for host in ["127.0.0.1", "[::1]"] {
        let client = Client::new(&format!("{host}:{port}"), &ClientTls::Pinned(fp)).unwrap();
        assert!(client.version().await.unwrap().maintenance, "{host}");
    }
    api.stop();
}
