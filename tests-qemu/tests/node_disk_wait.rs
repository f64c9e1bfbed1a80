//! A metal config whose install disk does not exist: the node must not reboot in a loop.
//! It stays up with the config's API (mutual TLS), reports why through health and its
//! log, refuses a config that still names a missing disk (nothing stored), and goes on
//! booting — without a reboot — once a corrected config names a disk it has.
//! Needs BASALT_IMAGE_DIR (see `basalt_tests_qemu::image_dir`).

mod node_support;

use std::time::Duration;

use basalt_api::{ApplyConfigRequest, ApplyMode};
use basalt_config::client_config::Role;
use node_support::*;

#[test]
fn missing_install_disk_waits_with_the_api_up_and_a_corrected_config_goes_on() {
    let absent = cluster(Some("/dev/vdb"));
    let work = tempfile::tempdir().unwrap();
    let path = write_config(work.path(), "cp.yaml", &absent.controlplane.to_yaml());
    // A blank disk the node does have (/dev/vda): no partition table, so the corrected
    // config's boot runs from tmpfs; what matters is that the boot goes on.
    let blank = work.path().join("blank.raw");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let mut vm = kernel_boot("basalt.platform=metal")
        .disk(&blank)
        .fw_cfg_file("opt/dev.basalt/config", &path)
        .spawn()
        .unwrap();
    let lines = expect_in_order(
        &mut vm,
        &[
            "machined: phase disks failed: ",
            "machined: the node stays up: its API (mutual TLS) answers on :50000",
        ],
    );
    assert!(lines[0].contains("/dev/vdb"), "{}", lines[0]);

    let rt = runtime();
    let admin = absent.client(vm.host_port(50000).unwrap(), Role::Admin);
    let health = rt.block_on(eventually(
        "the waiting node's API",
        Duration::from_secs(60),
        || async { admin.health().await.map_err(|e| e.to_string()) },
    ));
    assert!(!health.healthy, "{health:?}");
    let boot = health.checks.iter().find(|c| c.name == "boot").unwrap();
    assert!(
        boot.message.starts_with("waiting: phase disks failed")
            && boot.message.contains("/dev/vdb"),
        "{boot:?}"
    );
    // The reason is in machined's log, read through the API.
    let log = rt
        .block_on(async { admin.logs("machined", false, None).await?.collect().await })
        .unwrap();
    assert!(
        log.iter()
            .any(|l| l.message.starts_with("phase disks failed") && l.message.contains("/dev/vdb")),
        "{log:?}"
    );

    // Still the wrong disk: refused, the node keeps waiting.
    let err = rt
        .block_on(admin.apply_config(&ApplyConfigRequest {
            config: absent.controlplane.to_yaml(),
            mode: ApplyMode::Auto,
            try_timeout_seconds: None,
        }))
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(err.to_string().contains("/dev/vdb"), "{err}");

    // The disk it has: accepted, and the boot goes on in the same machined.
    let mut fixed = absent.controlplane.clone();
    fixed.machine.install.as_mut().unwrap().disk = "/dev/vda".parse().unwrap();
    let answer = rt
        .block_on(admin.apply_config(&ApplyConfigRequest {
            config: fixed.to_yaml(),
            mode: ApplyMode::Auto,
            try_timeout_seconds: None,
        }))
        .unwrap();
    assert!(!answer.reboot, "{answer:?}");
    vm.wait_for_console("machined: boot complete in ", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    let console = vm.console_output().unwrap();
    assert_booted_once(
        &console,
        "waiting for the disk and going on must not reboot",
    );
    assert!(
        !console.contains("rebooting in"),
        "a missing disk must not reboot the node"
    );
    let health = rt.block_on(eventually(
        "a healthy node after the corrected config",
        Duration::from_secs(120),
        || async {
            let h = admin.health().await.map_err(|e| e.to_string())?;
            if h.healthy {
                Ok(h)
            } else {
                Err(format!("{h:?}"))
            }
        },
    ));
    assert!(
        health.checks.iter().any(|c| c.name == "containerd"),
        "{health:?}"
    );
    vm.kill();
}
