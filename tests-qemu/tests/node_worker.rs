//! A control plane and a worker booted from the real image (-kernel/-initrd, config over
//! fw_cfg, platform cloud: no disk), joined by a private wire (QEMU socket netdev over
//! loopback) with static addresses 10.5.0.2 and 10.5.0.3, the cluster endpoint on the
//! control plane. The worker asks the control plane's trustd (10.5.0.2:50001) for its API
//! certificate and swaps it in; a client that verifies the worker against the API CA —
//! no fingerprint pinning — then talks to it through its port forward.
//! Needs BASALT_IMAGE_DIR (see `basalt_tests_qemu::image_dir`).

mod node_support;

use std::time::Duration;

use basalt_api::{Client, ClientTls, ServiceState};
use basalt_config::client_config::{Role, issue_client_certificate};
use basalt_config::generate::{GenOptions, machine_configs};
use basalt_config::secrets::SecretsBundle;
use basalt_config::{DeviceSelector, InterfaceSelector, MachineConfig, NetworkInterface};
use basalt_tests_qemu::{Qemu, RunningQemu, free_port, image_dir};
use basaltctl::lab::qemu::SocketLink;
use node_support::{eventually, runtime};

/// Two TCG guests share two host cores: everything takes about twice as long.
const SLOW: Duration = Duration::from_secs(600);
const CP_MAC: &str = "52:54:00:00:05:02";
const WORKER_MAC: &str = "52:54:00:00:05:03";

/// eth0 on QEMU's user network (DHCP; the API's port forward), the wire NIC selected by
/// its MAC with a static address.
fn wire(config: &mut MachineConfig, hostname: &str, mac: &str, address: &str) {
    let m = &mut config.machine;
    m.hostname = Some(hostname.parse().unwrap());
    m.network.interfaces = vec![
        NetworkInterface {
            dhcp: true,
            ..NetworkInterface::named("eth0".parse().unwrap())
        },
        NetworkInterface {
            selector: InterfaceSelector::Device(DeviceSelector {
                hardware_addr: mac.parse().unwrap(),
            }),
            dhcp: false,
            addresses: vec![address.parse().unwrap()],
            routes: Vec::new(),
            mtu: None,
            vip: None,
        },
    ];
}

fn boot(config: &std::path::Path, link: SocketLink, mac: &str) -> RunningQemu {
    let dir = image_dir().unwrap();
    Qemu::builder()
        .kernel(dir.join("vmlinuz"))
        .initrd(dir.join("initramfs.zst"))
        .append("basalt.panic_reboot=1 basalt.platform=cloud")
        .memory_mib(1536)
        .cpus(1)
        .fw_cfg_file("opt/dev.basalt/config", config)
        .netdev_user(vec![(0, 50000)])
        .netdev_socket(link, mac)
        .no_reboot()
        .spawn()
        .unwrap()
}

fn wait(vm: &mut RunningQemu, what: &str, pattern: &str) -> String {
    vm.wait_for_console(pattern, SLOW)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn a_worker_serves_an_api_certificate_signed_by_the_control_plane() {
    let secrets = SecretsBundle::generate().unwrap();
    let mut opts = GenOptions::new(
        "wire".parse().unwrap(),
        "https://10.5.0.2:6443".parse().unwrap(),
    );
    // No install disk: platform cloud without a disk keeps STATE on tmpfs.
    opts.install_disk = None;
    let (mut controlplane, mut worker) = machine_configs(&secrets, &opts).unwrap();
    wire(&mut controlplane, "cp-1", CP_MAC, "10.5.0.2/24");
    wire(&mut worker, "w-1", WORKER_MAC, "10.5.0.3/24");
    let work = tempfile::tempdir().unwrap();
    let cp_path = work.path().join("controlplane.yaml");
    let worker_path = work.path().join("worker.yaml");
    std::fs::write(&cp_path, controlplane.to_yaml()).unwrap();
    std::fs::write(&worker_path, worker.to_yaml()).unwrap();

    // The listening end first: the connecting QEMU fails without it.
    let wire_port = free_port().unwrap();
    let mut cp = boot(&cp_path, SocketLink::Listen(wire_port), CP_MAC);
    // QEMU binds its sockets before the guest runs: once the kernel talks, the wire's
    // listener is there. (A probe connection would take the listener's only peer slot,
    // and a connect that is refused leaves the other end unplugged for good.)
    wait(&mut cp, "the control plane's kernel", "Linux version");
    let mut w = boot(&worker_path, SocketLink::Connect(wire_port), WORKER_MAC);

    let asking = wait(
        &mut w,
        "the worker asks trustd",
        "machined: trustd: asking the control plane at 10.5.0.2:50001",
    );
    assert!(asking.contains("w-1"), "{asking}");
    let served = wait(
        &mut w,
        "the worker swaps in the signed certificate",
        "machined: trustd: the API now serves the certificate signed by the control plane",
    );
    eprintln!("worker: {served}");
    let signed = wait(
        &mut cp,
        "the control plane signs",
        "machined: trustd: signed an API server certificate for w-1 requested from 10.5.0.3",
    );
    eprintln!("control plane: {signed}");
    assert!(signed.contains("10.5.0.3"), "{signed}");
    assert!(
        !signed.contains("10.5.0.2,") && !signed.ends_with("10.5.0.2)"),
        "the endpoint is not the worker's to claim: {signed}"
    );

    // The admin client as basaltctl builds it: verifies the server against the API CA,
    // no pinning. Through the port forward it dials 127.0.0.1 and localhost; both are in
    // the worker's certificate.
    let ca = secrets.api.ca.cert_and_key();
    let admin = issue_client_certificate(&ca, Role::Admin, "qemu-test").unwrap();
    let tls = ClientTls::Mutual {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: admin.cert_pem,
        key_pem: admin.key_pem,
    };
    let worker_port = w.host_port(50000).unwrap();
    let rt = runtime();
    for host in ["127.0.0.1", "localhost"] {
        let client = Client::new(&format!("{host}:{worker_port}"), &tls).unwrap();
        let version = rt.block_on(eventually(
            &format!("the worker's API at {host} verified against the API CA"),
            Duration::from_secs(120),
            || async { client.version().await.map_err(|e| e.to_string()) },
        ));
        assert!(!version.maintenance, "{version:?}");
        let services = rt.block_on(client.services()).unwrap();
        let apid = services.iter().find(|s| s.name == "apid").unwrap();
        assert!(
            matches!(apid.state, ServiceState::Healthy | ServiceState::Running),
            "{apid:?}"
        );
        assert!(
            services.iter().all(|s| s.name != "trustd"),
            "a worker signs nothing: {services:?}"
        );
    }

    // The control plane lists trustd as a service, and its log holds the signing.
    let cp_client =
        Client::new(&format!("127.0.0.1:{}", cp.host_port(50000).unwrap()), &tls).unwrap();
    let services = rt.block_on(eventually(
        "the control plane's API",
        Duration::from_secs(120),
        || async { cp_client.services().await.map_err(|e| e.to_string()) },
    ));
    let trustd = services.iter().find(|s| s.name == "trustd").unwrap();
    assert!(
        matches!(trustd.state, ServiceState::Healthy | ServiceState::Running),
        "{trustd:?}"
    );
    let log = rt
        .block_on(async {
            cp_client
                .logs("machined", false, None)
                .await?
                .collect()
                .await
        })
        .unwrap();
    assert!(
        log.iter().any(|l| l
            .message
            .starts_with("trustd: signed an API server certificate for w-1")),
        "machined's log on the control plane"
    );

    w.kill();
    cp.kill();
}
