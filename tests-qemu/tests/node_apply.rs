//! Configs applied to a running node (real image, kernel boot, config over fw_cfg):
//! `no-reboot` changes hostname, sysctls, files and the network live; a change that
//! needs a reboot is refused by `no-reboot` and `try` with the field named and nothing
//! changed; `try` reverts by itself when its timeout ends.
//! Needs BASALT_IMAGE_DIR (see `basalt_tests_qemu::image_dir`).

mod node_support;

use std::time::Duration;

use basalt_api::{ApplyConfigRequest, ApplyConfigResponse, ApplyMode, Client};
use basalt_config::client_config::Role;
use basalt_config::{MachineConfig, MachineFile};
use node_support::*;

const LIVE_FILE: &str = "/var/lib/basalt-test/live.txt";
const TRY_FILE: &str = "/var/lib/basalt-test/tried.txt";
const EXTRA_ADDRESS: &str = "10.0.2.99/24";

fn apply(
    rt: &tokio::runtime::Runtime,
    admin: &Client,
    config: &MachineConfig,
    mode: ApplyMode,
    try_timeout_seconds: Option<u64>,
) -> Result<ApplyConfigResponse, basalt_api::ClientError> {
    rt.block_on(admin.apply_config(&ApplyConfigRequest {
        config: config.to_yaml(),
        mode,
        try_timeout_seconds,
    }))
}

fn file(path: &str, content: &str) -> MachineFile {
    MachineFile {
        path: path.parse().unwrap(),
        permissions: Default::default(),
        content: content.to_owned(),
    }
}

fn running_hostname(rt: &tokio::runtime::Runtime, admin: &Client) -> String {
    let config = rt.block_on(admin.config()).unwrap().config;
    MachineConfig::parse(config.as_bytes())
        .unwrap()
        .machine
        .hostname
        .map(|h| h.to_string())
        .unwrap_or_default()
}

fn has_address(rt: &tokio::runtime::Runtime, admin: &Client, address: &str) -> bool {
    rt.block_on(admin.addresses())
        .unwrap()
        .iter()
        .any(|a| a.address == address)
}

#[test]
fn live_modes_change_a_running_node_and_try_reverts() {
    let cluster = cluster(None);
    let work = tempfile::tempdir().unwrap();
    let path = write_config(work.path(), "cp.yaml", &cluster.controlplane.to_yaml());
    let mut vm = kernel_boot("basalt.platform=cloud")
        .fw_cfg_file("opt/dev.basalt/config", &path)
        .spawn()
        .unwrap();
    vm.wait_for_console("machined: boot complete in ", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = runtime();
    let admin = cluster.client(vm.host_port(50000).unwrap(), Role::Admin);

    // no-reboot: hostname, a sysctl, a file and a second address on eth0, all live.
    let mut live = cluster.controlplane.clone();
    live.machine.hostname = Some("renamed".parse().unwrap());
    live.machine.sysctls.insert(
        "net.core.somaxconn".parse().unwrap(),
        "4096".parse().unwrap(),
    );
    live.machine.files.push(file(LIVE_FILE, "applied live\n"));
    live.machine.network.interfaces[0].addresses = vec![EXTRA_ADDRESS.parse().unwrap()];
    let answer = apply(&rt, &admin, &live, ApplyMode::NoReboot, None).unwrap();
    assert!(!answer.reboot, "{answer:?}");
    assert_eq!(
        answer.applied_live,
        vec![
            "machine.hostname",
            "machine.sysctls",
            "machine.files",
            "machine.network"
        ],
        "{answer:?}"
    );
    assert!(answer.needs_reboot.is_empty(), "{answer:?}");
    // The API answers on the re-planned network; everything reads back.
    let got = rt.block_on(admin.read_file(LIVE_FILE)).unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), "applied live\n");
    let etc_hostname = rt.block_on(admin.read_file("/etc/hostname")).unwrap();
    assert_eq!(String::from_utf8(etc_hostname).unwrap().trim(), "renamed");
    assert_eq!(running_hostname(&rt, &admin), "renamed");
    assert!(has_address(&rt, &admin, EXTRA_ADDRESS));
    let hosts = String::from_utf8(rt.block_on(admin.read_file("/etc/hosts")).unwrap()).unwrap();
    assert!(hosts.contains("renamed"), "{hosts}");

    // A field that needs a reboot: refused by no-reboot and try, named, nothing changed.
    let mut rename_cluster = live.clone();
    rename_cluster.cluster.name = "another".parse().unwrap();
    rename_cluster.machine.hostname = Some("not-applied".parse().unwrap());
    for mode in [ApplyMode::NoReboot, ApplyMode::Try] {
        let err = apply(&rt, &admin, &rename_cluster, mode, None).unwrap_err();
        assert_eq!(err.status(), Some(409), "{mode}: {err}");
        assert!(err.to_string().contains("cluster.name"), "{mode}: {err}");
    }
    assert_eq!(running_hostname(&rt, &admin), "renamed");

    // try: applied at once, NOT kept: after its 8 s the node runs `live` again.
    let mut tried = live.clone();
    tried
        .machine
        .files
        .push(file(TRY_FILE, "only for a while\n"));
    tried.machine.network.interfaces[0].addresses.clear();
    let answer = apply(&rt, &admin, &tried, ApplyMode::Try, Some(8)).unwrap();
    assert!(answer.message.contains("NOT stored"), "{answer:?}");
    assert!(rt.block_on(admin.read_file(TRY_FILE)).is_ok());
    assert!(
        !has_address(&rt, &admin, EXTRA_ADDRESS),
        "the address the tried config drops is gone while it runs"
    );
    vm.wait_for_console("machined: config: reverted to the stored config", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    let err = rt.block_on(admin.read_file(TRY_FILE)).unwrap_err();
    assert_eq!(err.status(), Some(404), "the tried file is removed: {err}");
    assert!(
        has_address(&rt, &admin, EXTRA_ADDRESS),
        "the stored config's address is back"
    );

    // Back to the boot config with no-reboot: the extra address and file go away.
    let answer = apply(
        &rt,
        &admin,
        &cluster.controlplane,
        ApplyMode::NoReboot,
        None,
    )
    .unwrap();
    assert!(!answer.reboot, "{answer:?}");
    assert!(!has_address(&rt, &admin, EXTRA_ADDRESS));
    assert_eq!(
        rt.block_on(admin.read_file(LIVE_FILE))
            .unwrap_err()
            .status(),
        Some(404)
    );
    assert_eq!(running_hostname(&rt, &admin), TEST_HOSTNAME);

    // auto with a reboot-only change answers that it reboots, and does.
    let answer = apply(&rt, &admin, &rename_cluster, ApplyMode::Auto, None).unwrap();
    assert!(answer.reboot, "{answer:?}");
    assert_eq!(answer.needs_reboot, vec!["cluster.name"], "{answer:?}");
    // -no-reboot turns the guest's reboot into QEMU exiting.
    let status = vm.wait_for_exit(Duration::from_secs(120)).unwrap();
    assert!(status.success(), "{status:?}");
}
