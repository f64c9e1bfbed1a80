//! `GET /v1/disks`: block devices as the kernel lists them under /sys/block. Reading sysfs
//! is a read of kernel state, not of another module's, so the API does it itself (as it
//! reads /dev/kmsg); the disks module owns partitioning, not the listing.

use std::path::Path;

use basalt_api::Disk;

/// Devices that are not disks an operator installs to or inspects: loop devices (the
/// image's own squashfs), RAM disks, compressed swap.
const NOT_DISKS: [&str; 3] = ["loop", "ram", "zram"];

fn attr(dir: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn flag(dir: &Path, name: &str) -> bool {
    attr(dir, name).as_deref() == Some("1")
}

/// Every disk under `sys_block` ("/sys/block" on a node), sorted by name.
pub fn disks(sys_block: &Path) -> Result<Vec<Disk>, std::io::Error> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(sys_block)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if NOT_DISKS.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = entry.path();
        // `size` counts 512-byte sectors whatever the device's block size.
        let sectors: u64 = attr(&dir, "size").and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push(Disk {
            path: format!("/dev/{name}"),
            size_bytes: sectors * 512,
            model: attr(&dir, "device/model"),
            // virtio-blk puts the serial on the block device, SCSI/NVMe on the device.
            serial: attr(&dir, "serial").or_else(|| attr(&dir, "device/serial")),
            rotational: flag(&dir, "queue/rotational"),
            removable: flag(&dir, "removable"),
            read_only: flag(&dir, "ro"),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(root: &Path, name: &str, files: &[(&str, &str)]) {
        for (file, value) in files {
            let path = root.join(name).join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("{value}\n")).unwrap();
        }
    }

    #[test]
    fn lists_disks_with_their_attributes_and_skips_loop_devices() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        device(
            root,
            "vda",
            &[
                ("size", "41943040"),
                ("serial", "basalt-disk"),
                ("queue/rotational", "1"),
                ("ro", "0"),
            ],
        );
        device(
            root,
            "nvme0n1",
            &[
                ("size", "8"),
                ("device/model", "QEMU NVMe Ctrl"),
                ("removable", "0"),
            ],
        );
        device(root, "loop0", &[("size", "100")]);
        device(root, "zram0", &[("size", "100")]);
        let disks = disks(root).unwrap();
        let names: Vec<_> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["nvme0n1", "vda"]);
        assert_eq!(disks[1].size_bytes, 20 * 1024 * 1024 * 1024);
        assert_eq!(disks[1].serial.as_deref(), Some("basalt-disk"));
        assert!(disks[1].rotational);
        assert_eq!(disks[0].model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(disks[0].path, "/dev/nvme0n1");
    }

    #[test]
    fn reads_this_machines_sysfs() {
        // Whatever the host has, every entry must be a block device with a /dev path.
        for disk in disks(Path::new("/sys/block")).unwrap() {
            assert_eq!(disk.path, format!("/dev/{}", disk.name));
        }
    }
}
