//! Shared by the node_* tests: configs generated the way `basaltctl gen config` does,
//! patched for QEMU's user network, API clients for each trust mode, and console waits.

#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::time::{Duration, Instant};

use basalt_api::{Client, ClientTls};
use basalt_config::client_config::{Role, issue_client_certificate};
use basalt_config::generate::{GenOptions, machine_configs};
use basalt_config::secrets::SecretsBundle;
use basalt_config::{MachineConfig, MachineFile, NetworkInterface};
use basalt_tests_qemu::RunningQemu;

/// A TCG boot takes 10–20 s here; this bounds a hung one.
pub const BOOT: Duration = Duration::from_secs(240);

/// The file machine.files writes; the tests read it back through the API.
pub const TEST_FILE: &str = "/var/lib/basalt-test/hello.txt";
pub const TEST_FILE_CONTENT: &str = "written by machined from machine.files\n";
pub const TEST_HOSTNAME: &str = "node-1";

pub struct Cluster {
    pub secrets: SecretsBundle,
    pub controlplane: MachineConfig,
    pub worker: MachineConfig,
}

/// A cluster's configs, as `basaltctl gen config`, with eth0 on DHCP (QEMU user-net),
/// a hostname, one sysctl and one file. `install_disk` None drops machine.install
/// (platform cloud, or the bad-config test).
pub fn cluster(install_disk: Option<&str>) -> Cluster {
    let secrets = SecretsBundle::generate().unwrap();
    let mut opts = GenOptions::new(
        "qemu".parse().unwrap(),
        "https://10.0.2.15:6443".parse().unwrap(),
    );
    opts.install_disk = install_disk.map(|d| d.parse().unwrap());
    let (mut controlplane, mut worker) = machine_configs(&secrets, &opts).unwrap();
    for config in [&mut controlplane, &mut worker] {
        let m = &mut config.machine;
        m.network.interfaces = vec![NetworkInterface {
            dhcp: true,
            ..NetworkInterface::named("eth0".parse().unwrap())
        }];
        m.hostname = Some(TEST_HOSTNAME.parse().unwrap());
        m.sysctls.insert(
            "vm.max_map_count".parse().unwrap(),
            "262144".parse().unwrap(),
        );
        m.files.push(MachineFile {
            path: TEST_FILE.parse().unwrap(),
            permissions: basalt_config::FileMode::new(0o640).unwrap(),
            content: TEST_FILE_CONTENT.to_owned(),
        });
    }
    Cluster {
        secrets,
        controlplane,
        worker,
    }
}

impl Cluster {
    /// Mutual TLS as `role`, trusting the cluster's API CA.
    /// A basaltconfig file for `basaltctl --basaltconfig`, reaching the node at
    /// localhost:`port` as admin.
    pub fn basaltconfig(&self, dir: &Path, port: u16) -> std::path::PathBuf {
        let ca = self.secrets.api.ca.cert_and_key();
        let cert = issue_client_certificate(&ca, Role::Admin, "qemu-test").unwrap();
        let config = basalt_config::client_config::ClientConfig::single(
            "qemu",
            basalt_config::client_config::Context {
                endpoints: vec![format!("localhost:{port}")],
                nodes: Vec::new(),
                ca: ca.cert_pem,
                crt: cert.cert_pem,
                key: cert.key_pem,
            },
        );
        let path = dir.join("basaltconfig");
        config.save(&path).unwrap();
        path
    }

    pub fn client(&self, port: u16, role: Role) -> Client {
        let ca = self.secrets.api.ca.cert_and_key();
        let cert = issue_client_certificate(&ca, role, "qemu-test").unwrap();
        Client::new(
            &format!("localhost:{port}"),
            &ClientTls::Mutual {
                ca_pem: ca.cert_pem,
                cert_pem: cert.cert_pem,
                key_pem: cert.key_pem,
            },
        )
        .unwrap()
    }
}

/// A kernel boot (`-kernel/-initrd`) of the image under test with user networking and the
/// API port forwarded; `basalt.panic_reboot=1` and `-no-reboot` make a reboot end QEMU.
pub fn kernel_boot(cmdline: &str) -> basalt_tests_qemu::QemuBuilder {
    let dir = basalt_tests_qemu::image_dir().unwrap();
    basalt_tests_qemu::Qemu::builder()
        .kernel(dir.join("vmlinuz"))
        .initrd(dir.join("initramfs.zst"))
        .append(format!("basalt.panic_reboot=1 {cmdline}"))
        .memory_mib(1536)
        .netdev_user(vec![(0, 50000)])
        .no_reboot()
}

/// The console shows exactly one boot: basalt-init started once.
pub fn assert_booted_once(console: &str, why: &str) {
    let banner = format!("basalt-init {}: starting", env!("CARGO_PKG_VERSION"));
    assert_eq!(console.matches(&banner).count(), 1, "{why}");
}

/// Runs basaltctl with `args`; returns stdout, or panics with both streams.
pub fn basaltctl(args: &[&str]) -> String {
    let out = std::process::Command::new(basalt_tests_qemu::basaltctl_binary())
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "basaltctl {} failed ({}):\n{stdout}{stderr}",
        args.join(" "),
        out.status
    );
    stdout
}

/// Writes `text` where QEMU's fw_cfg can read it.
pub fn write_config(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits for each pattern in turn, each after the previous one; returns the lines.
pub fn expect_in_order(vm: &mut RunningQemu, patterns: &[&str]) -> Vec<String> {
    let mut at = 0;
    let mut lines = Vec::new();
    for pattern in patterns {
        let (line, next) = vm
            .wait_for_console_after(at, pattern, BOOT)
            .unwrap_or_else(|e| panic!("{e}"));
        at = next;
        lines.push(line);
    }
    lines
}

/// Retries `f` until it returns Some or `timeout` passes (the API comes up while the
/// test polls; the guest is slow under TCG).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => panic!("{what}: still failing: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The console line's timestamp-free part after `machined: `, for timing reports.
pub fn kernel_seconds(line: &str) -> Option<f64> {
    let open = line.find('[')?;
    let close = line[open..].find(']')? + open;
    line[open + 1..close].trim().parse().ok()
}
