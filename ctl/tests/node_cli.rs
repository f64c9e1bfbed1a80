//! basaltctl's node commands, run as the real binary against machined's real API server
//! embedded in this test process (the module is compiled in from machined/src/api), with
//! certificates from basalt-config's PKI.

#[path = "../../machined/src/api/mod.rs"]
mod api;

/// machined's API logs through `crate::log` (kmsg and the console on a node); here its
/// lines go to the test's stderr.
#[allow(unused_macros)]
mod log {
    macro_rules! error { ($($arg:tt)*) => { eprintln!($($arg)*) }; }
    macro_rules! warning { ($($arg:tt)*) => { eprintln!($($arg)*) }; }
    macro_rules! info { ($($arg:tt)*) => { eprintln!($($arg)*) }; }
    macro_rules! debug { ($($arg:tt)*) => { eprintln!($($arg)*) }; }
    #[allow(unused_imports)]
    pub(crate) use {debug, error, info, warning};
}

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::{
    ApiConfig, ApiMode, ApplyCommand, Feed, NodeState, ProviderError, RunningApi, ServerIdentity,
    config_channel,
};
use basalt_api::{ApplyConfigResponse, ApplyMode, LogLine, ServiceState, ServiceStatus};
use basalt_config::client_config::{ClientConfig, Context, Role, issue_client_certificate};
use basalt_config::pki::{self, CertAndKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{broadcast, mpsc};

const CONTROLPLANE: &str = include_str!("../../machined/tests/data/api-apply-controlplane.yaml");
const MANY_PROBLEMS: &str = include_str!("../../machined/tests/data/api-apply-many-problems.yaml");

struct Node {
    log_tx: broadcast::Sender<LogLine>,
}

fn line(n: u64) -> LogLine {
    LogLine {
        service: "etcd".into(),
        timestamp_unix_ms: n,
        message: format!("etcd line {n}"),
    }
}

impl NodeState for Node {
    fn services(&self) -> Result<Vec<ServiceStatus>, ProviderError> {
        Ok(vec![
            ServiceStatus {
                name: "containerd".into(),
                state: ServiceState::Healthy,
                message: "CRI answered".into(),
                restarts: 0,
                since_unix_ms: Some(1),
            },
            ServiceStatus {
                name: "etcd".into(),
                state: ServiceState::Failed,
                message: "exit status 1".into(),
                restarts: 3,
                since_unix_ms: None,
            },
        ])
    }
    fn logs(&self, _service: &str, follow: bool) -> Result<Feed<LogLine>, ProviderError> {
        Ok(Feed {
            backlog: (1..=2).map(line).collect(),
            live: follow.then(|| self.log_tx.subscribe()),
        })
    }
    fn reboot(&self) -> Result<String, ProviderError> {
        Ok("rebooting".into())
    }
}

type Stored = Arc<Mutex<Vec<(String, ApplyMode)>>>;

fn sequencer(mut rx: mpsc::Receiver<ApplyCommand>) -> Stored {
    let stored: Stored = Arc::default();
    let out = stored.clone();
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            stored
                .lock()
                .unwrap()
                .push((cmd.apply.document.clone(), cmd.apply.mode));
            let _ = cmd.reply.send(Ok(ApplyConfigResponse {
                mode: cmd.apply.mode,
                message: "stored on STATE".into(),
                reboot: false,
                applied_live: vec![],
                needs_reboot: vec![],
            }));
        }
    });
    out
}

struct Server {
    api: RunningApi,
    stored: Stored,
    node: Arc<Node>,
    _files: tempfile::TempDir,
}

impl Server {
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.api.local_addr().port())
    }
}

async fn serve(mode: ApiMode) -> Server {
    let files = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(files.path().join("var/log")).unwrap();
    std::fs::write(
        files.path().join("var/log/machined.log"),
        "booted\nserving\n",
    )
    .unwrap();
    let (sink, rx) = config_channel();
    let (log_tx, _) = broadcast::channel(16);
    let node = Arc::new(Node { log_tx });
    let config = ApiConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        mode,
        files_root: files.path().to_owned(),
        kmsg_path: PathBuf::from("/dev/kmsg"),
        platform: basalt_config::Mode::Metal,
        sys_block: PathBuf::from("/sys/block"),
    };
    let api = api::start(config, node.clone(), sink).await.unwrap();
    Server {
        api,
        stored: sequencer(rx),
        node,
        _files: files,
    }
}

struct Cluster {
    ca: CertAndKey,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        Self {
            ca: pki::generate_ca("basalt-api", None).unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A cluster CA and one node serving the configured (mTLS) API with a certificate
    /// from it.
    async fn with_configured_node() -> (Self, Server) {
        let cluster = Self::new();
        let identity = ServerIdentity::issue(
            &cluster.ca,
            "node-1",
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            &[],
        )
        .unwrap();
        let server = serve(ApiMode::Configured(identity)).await;
        (cluster, server)
    }

    /// A basaltconfig for `role` pointing at `server`.
    fn basaltconfig(&self, server: &Server, role: Role) -> PathBuf {
        let cert = issue_client_certificate(&self.ca, role, "test").unwrap();
        let path = self.dir.path().join(format!("basaltconfig-{role}"));
        ClientConfig::single(
            "test",
            Context {
                endpoints: vec![server.endpoint()],
                nodes: vec![],
                ca: self.ca.cert_pem.clone(),
                crt: cert.cert_pem,
                key: cert.key_pem,
            },
        )
        .save(&path)
        .unwrap();
        path
    }
}

fn basaltctl(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_basaltctl"));
    cmd.args(args).env_remove("BASALTCONFIG").kill_on_drop(true);
    cmd
}

async fn run(args: &[&str]) -> Output {
    basaltctl(args).output().await.unwrap()
}

/// Runs basaltctl with the client config at `config`.
async fn run_as(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--basaltconfig", s(config)];
    all.extend_from_slice(args);
    run(&all).await
}

/// Applies the control-plane config with `--insecure`, the maintenance-mode path.
async fn apply_insecure(server: &Server) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "controlplane.yaml", CONTROLPLANE);
    run(&[
        "apply-config",
        "--insecure",
        "--nodes",
        &server.endpoint(),
        "-f",
        s(&file),
    ])
    .await
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
}

fn assert_stdout_has(out: &Output, needle: &str) {
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(needle),
        "{}",
        text(out)
    );
}

fn assert_stderr_has(out: &Output, needle: &str) {
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(needle),
        "{}",
        text(out)
    );
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn apply_config_insecure_reaches_a_node_in_maintenance_mode() {
    let server = serve(ApiMode::Maintenance).await;
    let out = apply_insecure(&server).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "stored on STATE");
    assert_eq!(
        *server.stored.lock().unwrap(),
        vec![(CONTROLPLANE.to_owned(), ApplyMode::Auto)]
    );
}

#[tokio::test]
async fn apply_config_pins_the_fingerprint_and_reports_validation_errors() {
    let server = serve(ApiMode::Maintenance).await;
    let fingerprint = server.api.fingerprint().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "controlplane.yaml", CONTROLPLANE);
    let bad = write(dir.path(), "bad.yaml", MANY_PROBLEMS);
    let endpoint = server.endpoint();

    let wrong = "SHA256:".to_owned() + &"00:".repeat(31) + "00";
    let out = run(&[
        "apply-config",
        "--cert-fingerprint",
        &wrong,
        "-n",
        &endpoint,
        "-f",
        s(&good),
    ])
    .await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "fingerprint");

    let out = run(&[
        "apply-config",
        "--cert-fingerprint",
        &fingerprint,
        "-n",
        &endpoint,
        "-f",
        s(&bad),
    ])
    .await;
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("422"), "{}", text(&out));
    assert!(
        stderr
            .lines()
            .filter(|l| l.trim_start().starts_with("- "))
            .count()
            > 1,
        "{}",
        text(&out)
    );
    assert!(server.stored.lock().unwrap().is_empty());

    let out = run(&[
        "apply-config",
        "--cert-fingerprint",
        &fingerprint,
        "-n",
        &endpoint,
        "-f",
        s(&good),
        "--mode",
        "staged",
        "-o",
        "json",
    ])
    .await;
    assert_exit(&out, 0);
    let answer: ApplyConfigResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer.mode, ApplyMode::Staged);

    let out = run(&[
        "apply-config",
        "--cert-fingerprint",
        "nonsense",
        "-n",
        &endpoint,
        "-f",
        s(&good),
    ])
    .await;
    assert_exit(&out, 2);
}

#[tokio::test]
async fn services_as_json_and_table_through_the_basaltconfig() {
    let (cluster, server) = Cluster::with_configured_node().await;
    let config = cluster.basaltconfig(&server, Role::Reader);

    let out = run_as(&config, &["services", "-o", "json"]).await;
    assert_exit(&out, 0);
    let services: Vec<ServiceStatus> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(services.len(), 2);
    assert_eq!(services[1].state, ServiceState::Failed);

    let out = basaltctl(&["services"])
        .env("BASALTCONFIG", &config)
        .output()
        .await
        .unwrap();
    assert_exit(&out, 0);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("SERVICE"), "{table}");
    assert!(table.contains("etcd         failed"), "{table}");
}

#[tokio::test]
async fn a_reader_cannot_reboot_and_exits_1() {
    let (cluster, server) = Cluster::with_configured_node().await;
    let reader = cluster.basaltconfig(&server, Role::Reader);
    let out = run_as(&reader, &["reboot"]).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "403");

    let operator = cluster.basaltconfig(&server, Role::Operator);
    let out = run_as(&operator, &["reboot"]).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "rebooting");
}

#[tokio::test]
async fn logs_follow_prints_new_lines_as_they_come() {
    let (cluster, server) = Cluster::with_configured_node().await;
    let config = cluster.basaltconfig(&server, Role::Reader);

    let out = run_as(&config, &["logs", "etcd"]).await;
    assert_exit(&out, 0);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "etcd line 1\netcd line 2\n"
    );

    let mut child = basaltctl(&[
        "--basaltconfig",
        s(&config),
        "logs",
        "etcd",
        "-f",
        "-o",
        "json",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for n in 1..=2 {
        let got = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(serde_json::from_str::<LogLine>(&got).unwrap(), line(n));
    }
    server.node.log_tx.send(line(3)).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("no followed line")
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::from_str::<LogLine>(&got).unwrap(), line(3));
    child.kill().await.unwrap();
}

#[tokio::test]
async fn unreachable_or_missing_nodes_are_errors_with_the_right_exit_code() {
    let (cluster, server) = Cluster::with_configured_node().await;
    let config = cluster.basaltconfig(&server, Role::Admin);
    // Port 1 on loopback refuses connections: a runtime failure.
    let out = run_as(&config, &["--nodes", "127.0.0.1:1", "version"]).await;
    assert_exit(&out, 1);
    // A malformed address is the operator's input: exit 2.
    let out = run_as(&config, &["--nodes", "http://x", "version"]).await;
    assert_exit(&out, 2);
    // Maintenance flags against a configured node: the TLS refusal comes with a hint.
    let out = apply_insecure(&server).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "hint: --insecure");
    let out = run_as(&config, &["service", "nope"]).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "no service named");
    let out = run_as(&config, &["version", "-o", "yaml"]).await;
    assert_exit(&out, 0);
    assert_stdout_has(&out, "api_version: v1");
}

#[tokio::test]
async fn ls_and_read_give_admins_files_under_var() {
    let (cluster, server) = Cluster::with_configured_node().await;
    let admin = cluster.basaltconfig(&server, Role::Admin);
    let out = run_as(&admin, &["ls", "/var/log", "-o", "json"]).await;
    assert_exit(&out, 0);
    let entries: Vec<basalt_api::FileEntry> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path, "/var/log/machined.log");
    assert_eq!(entries[0].size, 15);

    let out = run_as(&admin, &["read", "/var/log/machined.log"]).await;
    assert_exit(&out, 0);
    assert_eq!(out.stdout, b"booted\nserving\n");

    let out = run_as(&admin, &["read", "/var/../etc/shadow"]).await;
    assert_exit(&out, 1);
    assert_stderr_has(&out, "traversal");
}
