//! The image's boot paths, on the artifacts `basalt-image build` wrote (BASALT_IMAGE_DIR):
//! the PXE/QEMU path (vmlinuz + initramfs.zst + the `cmdline` file) and the disk path
//! (OVMF → systemd-boot → UKI), including systemd-boot's boot counting on the ESP.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use basalt_tests_qemu::{Qemu, copy_ovmf_vars, image_dir_with};

const BOOT: Duration = Duration::from_secs(300);
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

fn banner() -> String {
    format!("basalt-init {}: starting", env!("CARGO_PKG_VERSION"))
}

fn uki_name() -> String {
    format!("basalt-{}.efi", env!("CARGO_PKG_VERSION"))
}

fn raw_name() -> String {
    format!("basalt-{}-amd64.raw", env!("CARGO_PKG_VERSION"))
}

/// Names in a directory of the ESP (the FAT at 1 MiB of the raw image), via mtools.
fn esp_dir(disk: &Path, dir: &str) -> Vec<String> {
    let out = Command::new("mdir")
        .args(["-b", "-i"])
        .arg(format!("{}@@1M", disk.display()))
        .arg(format!("::{dir}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .expect("running mdir (apt-get install mtools)");
    assert!(
        out.status.success(),
        "mdir {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit('/').next().map(str::to_owned))
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn pxe_bundle_boots_into_basalt_init_with_the_image_cmdline() {
    let dir = image_dir_with(&["vmlinuz", "initramfs.zst", "cmdline", "boot.ipxe"]).unwrap();
    let cmdline = std::fs::read_to_string(dir.join("cmdline")).unwrap();
    let cmdline = cmdline.trim();
    assert!(
        cmdline.ends_with("panic=10") && cmdline.contains("console=tty0 console=ttyS0"),
        "{cmdline}"
    );
    let ipxe = std::fs::read_to_string(dir.join("boot.ipxe")).unwrap();
    assert!(ipxe.starts_with("#!ipxe\n"), "{ipxe}");
    assert!(
        ipxe.contains(&format!("kernel vmlinuz {cmdline}\n")),
        "{ipxe}"
    );
    assert!(ipxe.contains("initrd initramfs.zst\n"), "{ipxe}");

    let mut vm = Qemu::builder()
        .kernel(dir.join("vmlinuz"))
        .initrd(dir.join("initramfs.zst"))
        .append(cmdline)
        .memory_mib(1024)
        .no_reboot()
        .spawn()
        .unwrap();
    vm.wait_for_console(&banner(), BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    // The rootfs inside the initramfs is the one the kernel modules come from.
    vm.wait_for_console("basalt-init: rootfs mounted", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.kill();
}

#[test]
fn raw_disk_boots_through_systemd_boot_and_counts_the_try() {
    let dir = image_dir_with(&[&raw_name(), &uki_name()]).unwrap();
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.raw");
    std::fs::copy(dir.join(raw_name()), &disk).unwrap();
    let vars = copy_ovmf_vars(Path::new(OVMF_VARS), &work.path().join("OVMF_VARS.fd")).unwrap();

    // As built: systemd-boot as the fallback loader, loader.conf and slot A with 3 tries.
    let linux = esp_dir(&disk, "EFI/Linux");
    assert_eq!(linux, ["basalt-A+3.efi"], "{linux:?}");
    let boot = esp_dir(&disk, "EFI/BOOT");
    assert_eq!(boot, ["BOOTX64.EFI"], "{boot:?}");

    let mut vm = Qemu::builder()
        .ovmf(OVMF_CODE, &vars)
        .disk(&disk)
        .memory_mib(1024)
        .no_reboot()
        .spawn()
        .unwrap();
    // The kernel only got this far through the UKI's own .cmdline (no -append here).
    vm.wait_for_console("basalt.platform=metal", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for_console(&banner(), BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    vm.kill();

    // systemd-boot renamed the entry before starting it: one try used, two left.
    let linux = esp_dir(&disk, "EFI/Linux");
    assert_eq!(linux, ["basalt-A+2-1.efi"], "{linux:?}");
}
