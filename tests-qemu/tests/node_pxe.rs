//! Real PXE: QEMU's own iPXE ROM gets DHCP from the user network, fetches boot.ipxe
//! over slirp's TFTP, then the kernel and initramfs it names — the PXE bundle exactly
//! as `basalt-image build` wrote it. No config: the node ends in maintenance mode.
//! Needs BASALT_IMAGE_DIR (see `basalt_tests_qemu::image_dir_with`).

mod node_support;

use basalt_tests_qemu::{Qemu, image_dir_with};
use node_support::*;

#[test]
fn ipxe_over_tftp_boots_the_pxe_bundle_to_maintenance_mode() {
    let dir = image_dir_with(&["vmlinuz", "initramfs.zst", "boot.ipxe"]).unwrap();
    let mut vm = Qemu::builder()
        .netdev_user_tftp(&dir, "boot.ipxe")
        .netdev_user(vec![(0, 50000)])
        .arg("-boot")
        .arg("n")
        .memory_mib(1536)
        .no_reboot()
        .spawn()
        .unwrap();
    let lines = expect_in_order(
        &mut vm,
        &[
            // iPXE itself prints on VGA only; the kernel's first lines prove it loaded
            // vmlinuz with boot.ipxe's command line (QEMU was given no -kernel).
            "Command line: console=tty0 console=ttyS0,115200 basalt.platform=metal",
            &format!("basalt-init {}: starting", env!("CARGO_PKG_VERSION")),
            "machined: machined",
            "machined: phase platform done (",
            basalt_api::MAINTENANCE_BANNER,
        ],
    );
    assert!(lines[2].contains("starting as PID 1"), "{}", lines[2]);
    // The command line came from boot.ipxe, not from QEMU.
    assert!(
        lines[3].contains("metal (kernel command line)"),
        "{}",
        lines[3]
    );
    vm.kill();
}
