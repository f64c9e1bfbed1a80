//! A node installed on a disk, booted the way hardware boots it: OVMF → systemd-boot →
//! UKI, the config handed over fw_cfg. First boot partitions the disk (STATE,
//! EPHEMERAL), stores the config on STATE and serves the API with mutual TLS from the
//! config's API CA. A graceful reboot through the API unmounts cleanly; the second
//! boot, without fw_cfg, reads the config from STATE and finds clean ext4 journals;
//! a shutdown through the API powers the machine off (QEMU exits by itself).
//! Needs BASALT_IMAGE_DIR (see `basalt_tests_qemu::image_dir_with`).

mod node_support;

use std::path::Path;
use std::time::Duration;

use basalt_api::{ApplyConfigRequest, ApplyMode, Client, ClientTls, ServiceState};
use basalt_config::client_config::{Role, issue_client_certificate};
use basalt_tests_qemu::{Qemu, RunningQemu, copy_ovmf_vars, image_dir_with};
use node_support::*;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

fn raw_name() -> String {
    format!("basalt-{}-amd64.raw", env!("CARGO_PKG_VERSION"))
}

fn disk_boot(disk: &Path, vars: &Path, fw_cfg: Option<&Path>) -> RunningQemu {
    let mut b = Qemu::builder()
        .ovmf(OVMF_CODE, vars)
        .disk(disk)
        .memory_mib(1536)
        .netdev_user(vec![(0, 50000)])
        .no_reboot();
    if let Some(path) = fw_cfg {
        b = b.fw_cfg_file("opt/dev.basalt/config", path);
    }
    b.spawn().unwrap()
}

/// What ext4 prints when it replays a journal or cleans orphans: a dirty unmount.
fn assert_no_journal_recovery(console: &str) {
    for dirty in ["recovery complete", "orphan cleanup", "recovering journal"] {
        assert!(
            !console.contains(dirty),
            "the previous shutdown left a dirty ext4 ({dirty:?} on the console)"
        );
    }
}

#[test]
fn disk_boot_with_fw_cfg_mtls_reboot_reads_state_and_shuts_down() {
    let dir = image_dir_with(&[&raw_name()]).unwrap();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.raw");
    std::fs::copy(dir.join(raw_name()), &disk).unwrap();
    // Grown to 2 GiB like `qemu-img resize -f raw` does (a sparse extension of the
    // file): the first boot must find the free space and its GPT backup header moved.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let vars = copy_ovmf_vars(Path::new(OVMF_VARS), &work.path().join("OVMF_VARS.fd")).unwrap();
    let cluster = cluster(Some("/dev/vda"));
    let config = write_config(work.path(), "cp.yaml", &cluster.controlplane.to_yaml());

    // First boot: config over fw_cfg, disk partitioned, API with mTLS.
    let mut vm = disk_boot(&disk, &vars, Some(&config));
    let lines = expect_in_order(
        &mut vm,
        &[
            "machined: config from fw_cfg",
            "machined: phase disks done (",
            "machined: phase api done (",
            "machined: boot complete in ",
        ],
    );
    assert!(
        lines[1].contains("STATE")
            && lines[1].contains("EPHEMERAL")
            && lines[1].contains("config stored on STATE"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("issued by the API CA"), "{}", lines[2]);
    let port = vm.host_port(50000).unwrap();
    let rt = runtime();
    let admin = cluster.client(port, Role::Admin);
    let health = rt.block_on(eventually(
        "the configured API answers an admin",
        Duration::from_secs(60),
        || async { admin.health().await.map_err(|e| e.to_string()) },
    ));
    assert!(health.checks.iter().any(|c| c.name == "apid"), "{health:?}");
    let disks = rt.block_on(admin.disks()).unwrap();
    let vda = disks.iter().find(|d| d.name == "vda").expect("vda listed");
    assert_eq!(vda.size_bytes, 2 << 30);
    // /var is EPHEMERAL: machine.files landed there.
    let file = rt.block_on(admin.read_file(TEST_FILE)).unwrap();
    assert_eq!(String::from_utf8(file).unwrap(), TEST_FILE_CONTENT);

    // A reader may read but not apply.
    let reader = cluster.client(port, Role::Reader);
    rt.block_on(reader.services()).unwrap();
    let err = rt
        .block_on(reader.apply_config(&ApplyConfigRequest {
            config: cluster.controlplane.to_yaml(),
            mode: ApplyMode::Staged,
            try_timeout_seconds: None,
        }))
        .unwrap_err();
    assert_eq!(err.status(), Some(403), "{err}");

    // An admin's apply on a running node: a change that needs a reboot is refused by
    // no-reboot before anything is stored (node_apply covers the live changes); staged
    // stores for the next boot.
    let mut renamed = cluster.controlplane.clone();
    renamed.cluster.name = "elsewhere".parse().unwrap();
    let err = rt
        .block_on(admin.apply_config(&ApplyConfigRequest {
            config: renamed.to_yaml(),
            mode: ApplyMode::NoReboot,
            try_timeout_seconds: None,
        }))
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(err.to_string().contains("cluster.name"), "{err}");
    let staged = rt
        .block_on(admin.apply_config(&ApplyConfigRequest {
            config: cluster.controlplane.to_yaml(),
            mode: ApplyMode::Staged,
            try_timeout_seconds: None,
        }))
        .unwrap();
    assert!(!staged.reboot, "{staged:?}");
    assert_eq!(staged.message, "stored on STATE; staged for the next boot");

    // A certificate from another CA does not get past TLS.
    let other = basalt_config::secrets::SecretsBundle::generate().unwrap();
    let other_ca = other.api.ca.cert_and_key();
    let stranger_cert = issue_client_certificate(&other_ca, Role::Admin, "stranger").unwrap();
    let stranger = Client::new(
        &format!("localhost:{port}"),
        &ClientTls::Mutual {
            // It trusts the real node (right CA) but proves itself with a foreign cert.
            ca_pem: cluster.secrets.api.ca.cert_and_key().cert_pem,
            cert_pem: stranger_cert.cert_pem,
            key_pem: stranger_cert.key_pem,
        },
    )
    .unwrap();
    let err = rt.block_on(stranger.services()).unwrap_err();
    assert!(err.status().is_none(), "a foreign CA must fail TLS: {err}");
    // Nor does a client without any certificate, pinning or not.
    let anonymous = Client::new(&format!("localhost:{port}"), &ClientTls::Insecure).unwrap();
    assert!(
        rt.block_on(anonymous.services())
            .unwrap_err()
            .status()
            .is_none()
    );

    // Graceful reboot: services stop in reverse order, DHCP released, disks unmounted.
    let at = vm.console_output().unwrap().len();
    let answer = rt.block_on(admin.reboot()).unwrap();
    assert!(answer.message.starts_with("reboot requested"), "{answer:?}");
    let status = vm.wait_for_exit(BOOT).unwrap();
    assert!(
        status.success(),
        "QEMU exits on the guest's reboot (-no-reboot): {status}"
    );
    let console = vm.console_output().unwrap();
    let down = &console[at..];
    for expected in [
        "machined: shutdown: reboot requested",
        "machined: service containerd: ",
        "machined: shutdown: services stopped",
        "machined: network: released the DHCP lease",
        "machined: shutdown: network stopped",
        "machined: disks: unmounted /var",
        "machined: disks: unmounted /system/state",
        "machined: shutdown: reboot now",
    ] {
        assert!(
            down.contains(expected),
            "{expected:?} missing after the reboot request:\n{down}"
        );
    }
    let order = |s: &str| down.find(s).unwrap();
    assert!(order("shutdown: services stopped") < order("shutdown: network stopped"));
    assert!(order("shutdown: network stopped") < order("disks: unmounted /var"));
    drop(vm);

    // Second boot, no fw_cfg: the config comes from STATE, journals are clean.
    let mut vm = disk_boot(&disk, &vars, None);
    let lines = expect_in_order(
        &mut vm,
        &[
            "machined: disks: STATE ",
            "machined: config: fw_cfg: QEMU passed no opt/dev.basalt/config",
            "machined: config from STATE",
            "machined: phase api done (",
            "machined: boot complete in ",
        ],
    );
    assert!(
        lines[0].contains("mounted at /system/state"),
        "{}",
        lines[0]
    );
    assert_no_journal_recovery(&vm.console_output().unwrap());
    let admin = cluster.client(vm.host_port(50000).unwrap(), Role::Admin);
    let services = rt.block_on(eventually(
        "the API after the second boot",
        Duration::from_secs(60),
        || async { admin.services().await.map_err(|e| e.to_string()) },
    ));
    assert!(
        services.iter().any(|s| s.name == "apid"
            && matches!(s.state, ServiceState::Healthy | ServiceState::Running))
    );

    // Shutdown: QEMU exits by itself.
    let answer = rt.block_on(admin.shutdown()).unwrap();
    assert!(
        answer.message.starts_with("poweroff requested"),
        "{answer:?}"
    );
    let status = vm.wait_for_exit(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "{status}");
    let console = vm.console_output().unwrap();
    assert!(console.contains("machined: shutdown: poweroff now"));
    assert!(console.contains("machined: disks: unmounted /var"));
}
