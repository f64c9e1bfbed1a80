//! Maintenance mode on a real image booted with -kernel/-initrd (no disk): no config →
//! DHCP → API with a self-signed certificate whose fingerprint is on the console →
//! an apply pinned to that fingerprint → the node leaves maintenance mode without a
//! reboot and comes up with mTLS and services. And a broken config handed over fw_cfg:
//! maintenance mode, every validation error on the console and from the API.
//! Needs BASALT_IMAGE_DIR (see `basalt_tests_qemu::image_dir`).

mod node_support;

use std::time::{Duration, Instant};

use basalt_api::{ApplyConfigRequest, ApplyMode, Client, ClientTls, ServiceState};
use basalt_config::client_config::Role;
use basalt_tests_qemu::RunningQemu;
use node_support::*;

fn boot(cmdline: &str, fw_cfg: Option<&std::path::Path>) -> RunningQemu {
    let mut b = kernel_boot(cmdline);
    if let Some(path) = fw_cfg {
        b = b.fw_cfg_file("opt/dev.basalt/config", path);
    }
    b.spawn().unwrap()
}

#[test]
fn no_config_maintenance_then_apply_boots_without_reboot() {
    let qemu_start = Instant::now();
    let cluster = cluster(None);
    let mut vm = boot("basalt.platform=cloud", None);
    let lines = expect_in_order(
        &mut vm,
        &[
            "machined: config: no source has a config; entering maintenance mode",
            "machined: phase disks done (",
            basalt_api::MAINTENANCE_BANNER,
        ],
    );
    let maintenance_at = qemu_start.elapsed();
    assert!(
        lines[1].contains("tmpfs"),
        "no disk: STATE is tmpfs: {}",
        lines[1]
    );
    let banner = &lines[2];
    assert!(
        banner.contains(
            "machined: maintenance mode: API listening on :50000, certificate fingerprint SHA256:"
        ),
        "{banner}"
    );
    let fingerprint = basalt_api::fingerprint_from_banner(banner).unwrap();
    let port = vm.host_port(50000).unwrap();
    let rt = runtime();

    // A client that pins another fingerprint must not talk to this node.
    let wrong = basalt_api::Fingerprint::of_der(b"not the node's certificate");
    let impostor = Client::new(&format!("127.0.0.1:{port}"), &ClientTls::Pinned(wrong)).unwrap();
    let err = rt.block_on(impostor.version()).unwrap_err();
    assert!(err.status().is_none(), "a wrong pin must fail TLS: {err}");

    let pinned = Client::new(
        &format!("127.0.0.1:{port}"),
        &ClientTls::Pinned(fingerprint),
    )
    .unwrap();
    let version = rt.block_on(pinned.version()).unwrap();
    assert!(version.maintenance);
    // In maintenance mode nothing but version and apply is served.
    let err = rt.block_on(pinned.services()).unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");

    // The operator's way: basaltctl apply-config --insecure, as the console suggests.
    let work = tempfile::tempdir().unwrap();
    let cp = write_config(
        work.path(),
        "controlplane.yaml",
        &cluster.controlplane.to_yaml(),
    );
    let node = format!("127.0.0.1:{port}");
    let answer = basaltctl(&[
        "apply-config",
        "--insecure",
        "--nodes",
        &node,
        "-f",
        cp.to_str().unwrap(),
        "-o",
        "json",
    ]);
    // One node: its answer, as the API sent it.
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["reboot"], false, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains("NOT persistent")),
        "diskless: the answer must say the config does not survive a reboot: {answer}"
    );

    // The boot goes on from the same machined: no second init banner.
    let at = vm.console_output().unwrap().len();
    let lines = {
        let mut out = Vec::new();
        let mut pos = at;
        for p in [
            "machined: phase maintenance done (",
            "machined: phase machine done (",
            "machined: phase network done (",
            "machined: phase api done (",
            "machined: phase services done (",
            "machined: boot complete in ",
        ] {
            let (line, next) = vm
                .wait_for_console_after(pos, p, BOOT)
                .unwrap_or_else(|e| panic!("{e}"));
            pos = next;
            out.push(line);
        }
        out
    };
    let api_at = qemu_start.elapsed();
    assert!(
        lines[1].contains("sysctls 1 set") && lines[1].contains("hostname node-1"),
        "{}",
        lines[1]
    );
    assert!(lines[3].contains("issued by the API CA"), "{}", lines[3]);
    assert_booted_once(
        &vm.console_output().unwrap(),
        "leaving maintenance mode must not reboot",
    );

    let admin = cluster.client(port, Role::Admin);
    let services = rt.block_on(eventually(
        "containerd healthy through the API",
        Duration::from_secs(120),
        || async {
            let s = admin.services().await.map_err(|e| e.to_string())?;
            let c = s
                .iter()
                .find(|s| s.name == "containerd")
                .ok_or("no containerd")?;
            if c.state == ServiceState::Healthy {
                Ok(s)
            } else {
                Err(format!("{c:?}"))
            }
        },
    ));
    let healthy_at = qemu_start.elapsed();
    // And the operator's view of it: basaltctl with a basaltconfig.
    let basaltconfig = cluster.basaltconfig(work.path(), port);
    let listed = basaltctl(&[
        "--basaltconfig",
        basaltconfig.to_str().unwrap(),
        "services",
        "-o",
        "json",
    ]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let listed_containerd = listed
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "containerd"))
        .unwrap_or_else(|| panic!("no containerd in {listed}"));
    assert_eq!(listed_containerd["state"], "healthy", "{listed}");
    let containerd = services.iter().find(|s| s.name == "containerd").unwrap();
    assert!(
        containerd.message.starts_with("containerd ") && containerd.message.contains("revision"),
        "the status carries containerd's Version answer: {containerd:?}"
    );
    let apid = services.iter().find(|s| s.name == "apid").unwrap();
    assert!(
        matches!(apid.state, ServiceState::Healthy | ServiceState::Running),
        "{apid:?}"
    );
    // machine.files and the hostname, read back through the API.
    let file = rt.block_on(admin.read_file(TEST_FILE)).unwrap();
    assert_eq!(String::from_utf8(file).unwrap(), TEST_FILE_CONTENT);
    let hostname = rt.block_on(admin.read_file("/etc/hostname")).unwrap();
    assert_eq!(String::from_utf8(hostname).unwrap().trim(), TEST_HOSTNAME);
    // machined's own log is served from its ring.
    let log = rt
        .block_on(async { admin.logs("machined", false, None).await?.collect().await })
        .unwrap();
    assert!(
        log.iter()
            .any(|l| l.message.starts_with("maintenance mode: config received"))
    );
    let health = rt.block_on(admin.health()).unwrap();
    assert!(health.healthy, "{health:?}");
    let complete = &lines[5];
    eprintln!(
        "timings (host clock since QEMU start): maintenance banner {:.1} s, configured API {:.1} s, containerd healthy {:.1} s; {}",
        maintenance_at.as_secs_f64(),
        api_at.as_secs_f64(),
        healthy_at.as_secs_f64(),
        complete
    );
    vm.kill();
}

#[test]
fn bad_config_over_fw_cfg_is_shown_and_refused_again_by_the_api() {
    // Two problems: metal requires machine.install, and a file written twice.
    let mut cluster = cluster(None);
    let again = cluster.controlplane.machine.files[0].clone();
    cluster.controlplane.machine.files.push(again);
    let work = tempfile::tempdir().unwrap();
    let bad = cluster.controlplane.to_yaml();
    let path = write_config(work.path(), "bad.yaml", &bad);
    let mut vm = boot("basalt.platform=metal", Some(&path));
    let lines = expect_in_order(
        &mut vm,
        &[
            "machined: config: the config from fw_cfg",
            basalt_api::MAINTENANCE_BANNER,
            "machined: config from fw_cfg",
        ],
    );
    assert!(lines[0].contains("is invalid"), "{}", lines[0]);
    assert!(
        lines[2].ends_with("is invalid (2 problems):"),
        "{}",
        lines[2]
    );
    // Every problem on a line of its own.
    vm.wait_for_console(
        "machined: config: machine.install: is required in metal mode",
        BOOT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_console(
        "machined: config: machine.files[1].path: /var/lib/basalt-test/hello.txt is already written by machine.files[0]",
        BOOT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let fingerprint = basalt_api::fingerprint_from_banner(&lines[1]).unwrap();
    let port = vm.host_port(50000).unwrap();
    let rt = runtime();
    let pinned = Client::new(
        &format!("127.0.0.1:{port}"),
        &ClientTls::Pinned(fingerprint),
    )
    .unwrap();
    let err = rt
        .block_on(pinned.apply_config(&ApplyConfigRequest {
            config: bad,
            mode: ApplyMode::Auto,
            try_timeout_seconds: None,
        }))
        .unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    let text = err.to_string();
    assert!(text.contains("machine.install"), "{text}");
    assert!(text.contains("machine.files[1].path"), "{text}");
    // Still in maintenance mode.
    assert!(rt.block_on(pinned.version()).unwrap().maintenance);
    vm.kill();
}

/// `basalt.config=<URL>`: the network comes up before the config phase (the config is
/// fetched over it), then is replaced by the config's own network. The URL is served by
/// this test on the host; QEMU's user network reaches the host as 10.0.2.2.
#[test]
fn config_from_a_cmdline_url_brings_the_network_up_first() {
    use std::io::{Read, Write};
    let cluster = cluster(None);
    let body = cluster.controlplane.to_yaml();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        // One request is all the node makes when the config is good.
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 4096];
        let n = stream.read(&mut request).unwrap();
        let request = String::from_utf8_lossy(&request[..n]).into_owned();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        request
    });
    let mut vm = boot(
        &format!("basalt.platform=cloud basalt.config=http://10.0.2.2:{port}/cp.yaml"),
        None,
    );
    let lines = expect_in_order(
        &mut vm,
        &[
            "machined: phase network done (",
            &format!("machined: config: fetching http://10.0.2.2:{port}/cp.yaml"),
            "machined: config from kernel cmdline basalt.config",
            "machined: phase disks done (",
            "machined: network: releasing the ",
            "machined: phase network done (",
            "machined: phase api done (",
        ],
    );
    assert!(lines[0].contains("10.0.2.15"), "{}", lines[0]);
    assert!(lines[3].contains("config stored on STATE"), "{}", lines[3]);
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /cp.yaml HTTP/1.1\r\n"),
        "{request}"
    );
    let admin = cluster.client(
        vm.host_port(50000).unwrap(),
        basalt_config::client_config::Role::Admin,
    );
    let rt = runtime();
    let health = rt.block_on(eventually(
        "the API of a node configured from a URL",
        Duration::from_secs(60),
        || async { admin.health().await.map_err(|e| e.to_string()) },
    ));
    assert!(health.checks.iter().any(|c| c.name == "apid"), "{health:?}");
    vm.kill();
}
