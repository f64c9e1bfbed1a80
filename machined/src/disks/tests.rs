//! The executor against real loop devices: a sparse file laid out like the image
//! builder's disk (GPT, one EFI partition, table sized for a smaller image), grown,
//! attached with partition scanning, then prepared exactly as on a node.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::config_source::tests::{Loop, require_root, run};

use super::*;

/// `MOUNTS` is process-wide and `unmount_all` empties it: tests that mount run one at
/// a time.
static SERIAL: Mutex<()> = Mutex::new(());

const MIB: u64 = 1024 * 1024;

/// What every test that touches a device starts from: root checked, the other mounting
/// tests kept out until this one is done, and the node's mount points in a temp dir.
struct Node {
    tmp: tempfile::TempDir,
    paths: Paths,
    _serial: MutexGuard<'static, ()>,
}

fn node() -> Node {
    require_root();
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let paths = Paths {
        sys: "/sys".into(),
        dev: "/dev".into(),
        state_mount: tmp.path().join("system/state"),
        ephemeral_mount: tmp.path().join("var"),
    };
    Node {
        tmp,
        paths,
        _serial: serial,
    }
}

impl Node {
    /// A disk file whose first `image_mib` look like the image builder's output (GPT
    /// with one 32 MiB EFI System partition at 1 MiB, backup GPT at the image's end),
    /// grown to `disk_mib` as `dd` onto a larger disk leaves it, attached with
    /// partition scanning.
    fn image_disk(&self, image_mib: u64, disk_mib: u64) -> Loop {
        let file = self.tmp.path().join("disk.raw");
        sized_file(&file, image_mib * MIB);
        sfdisk_write(
            &file,
            "label: gpt\nstart=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=EFI\n",
        );
        sized_file(&file, disk_mib * MIB);
        Loop::attach(&file, true)
    }
}

/// Creates `file` (sparse) or grows it to `len` bytes, as a larger disk would be.
fn sized_file(file: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Writes a partition table with sfdisk's script syntax, without asking the kernel to
/// re-read it (the tests attach or scan the device themselves).
fn sfdisk_write(target: &Path, script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("sfdisk")
        .args(["--quiet", "--no-reread", target.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk package) is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// The device node of partition `number` of a loop device.
fn partition(lo: &Loop, number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/{}p{number}", lo.name()))
}

fn sfdisk_json(dev: &Path) -> serde_json::Value {
    serde_json::from_str(&run("sfdisk", &["--json", dev.to_str().unwrap()])).unwrap()
}

fn blkid(dev: &Path, tag: &str) -> String {
    run(
        "blkid",
        &["-p", "-o", "value", "-s", tag, dev.to_str().unwrap()],
    )
    .trim()
    .to_string()
}

fn is_mounted(target: &Path) -> bool {
    let t = target.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(t))
}

#[test]
fn first_boot_creates_formats_and_mounts_then_second_boot_reuses() {
    let n = node();
    let lo = n.image_disk(64, 512);

    // First boot.
    let outcome = prepare_disk(&lo.dev, &n.paths).unwrap().unwrap();
    let p2 = partition(&lo, 2);
    let p3 = partition(&lo, 3);
    assert_eq!(
        outcome,
        DiskOutcome::Disk {
            device: lo.dev.clone(),
            state: p2.clone(),
            ephemeral: p3.clone(),
            created: vec!["STATE", "EPHEMERAL"],
        }
    );

    // The table, as util-linux reads it: valid, grown to the end of the disk.
    run("sfdisk", &["--verify", lo.dev.to_str().unwrap()]);
    let t = &sfdisk_json(&lo.dev)["partitiontable"];
    assert_eq!(t["label"], "gpt");
    assert_eq!(t["lastlba"], 512 * 2048 - 34);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0]["name"], "EFI");
    assert_eq!(
        (parts[0]["start"].as_u64(), parts[0]["size"].as_u64()),
        (Some(2048), Some(65536))
    );
    assert_eq!(parts[1]["name"], "STATE");
    assert_eq!(parts[1]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[1]["start"], 33 * 2048, "next MiB after EFI");
    assert_eq!(parts[1]["size"], 100 * 2048);
    assert_eq!(parts[2]["name"], "EPHEMERAL");
    assert_eq!(parts[2]["start"], 133 * 2048);
    assert_eq!(
        parts[2]["start"].as_u64().unwrap() + parts[2]["size"].as_u64().unwrap() - 1,
        512 * 2048 - 34
    );

    // Filesystems, as blkid reads them.
    assert_eq!(blkid(&p2, "TYPE"), "ext4");
    assert_eq!(blkid(&p2, "LABEL"), "STATE");
    assert_eq!(blkid(&p3, "TYPE"), "ext4");
    assert_eq!(blkid(&p3, "LABEL"), "EPHEMERAL");

    // Mounted and writable; persisting a config on STATE works there.
    assert!(is_mounted(&n.paths.state_mount));
    assert!(is_mounted(&n.paths.ephemeral_mount));
    std::fs::write(n.paths.ephemeral_mount.join("marker"), b"var survives").unwrap();
    let valid = include_bytes!("../../tests/data/config-valid-worker.yaml");
    crate::config_source::persist_config(&n.paths.state_mount, valid, basalt_config::Mode::Metal)
        .unwrap();

    // Shutdown: everything unmounted, journals clean.
    unmount_all().unwrap();
    assert!(!is_mounted(&n.paths.state_mount));
    assert!(!is_mounted(&n.paths.ephemeral_mount));
    for p in [&p2, &p3] {
        let dump = run("dumpe2fs", &["-h", p.to_str().unwrap()]);
        assert!(
            dump.lines()
                .any(|l| l.starts_with("Filesystem state:") && l.trim_end().ends_with("clean")),
            "{} not clean after unmount_all:\n{dump}",
            p.display()
        );
    }

    // Second boot: nothing created or formatted, data still there.
    let outcome = prepare_disk(&lo.dev, &n.paths).unwrap().unwrap();
    assert!(matches!(outcome, DiskOutcome::Disk { ref created, .. } if created.is_empty()));
    assert_eq!(
        std::fs::read(n.paths.ephemeral_mount.join("marker")).unwrap(),
        b"var survives"
    );
    assert_eq!(
        crate::config_source::read_persisted(&n.paths.state_mount)
            .unwrap()
            .unwrap(),
        valid
    );
    unmount_all().unwrap();
}

#[test]
fn busy_disk_gets_its_partitions_through_blkpg() {
    let n = node();
    let lo = n.image_disk(64, 256);
    // The EFI partition is mounted (ext4 here: the host kernel has no vfat), so
    // BLKRRPART answers EBUSY and the executor must fall back to BLKPG.
    let p1 = partition(&lo, 1);
    // What the kernel would have done at boot: register the image's EFI partition
    // (partx uses BLKPG; this host kernel has no GPT parser of its own).
    if !p1.exists() {
        run("partx", &["--add", lo.dev.to_str().unwrap()]);
    }
    run("mkfs.ext4", &["-q", "-F", p1.to_str().unwrap()]);
    let efi = n.tmp.path().join("efi");
    std::fs::create_dir_all(&efi).unwrap();
    nix::mount::mount(
        Some(&p1),
        &efi,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();

    let result = prepare_disk(&lo.dev, &n.paths);
    nix::mount::umount(&efi).unwrap();
    let outcome = result.unwrap().unwrap();
    assert!(matches!(outcome, DiskOutcome::Disk { ref created, .. } if created.len() == 2));
    assert_eq!(blkid(&partition(&lo, 3), "LABEL"), "EPHEMERAL");
    assert!(is_mounted(&n.paths.ephemeral_mount));
    unmount_all().unwrap();
}

#[test]
fn interrupted_first_boot_formats_only_the_empty_partition() {
    let n = node();
    let lo = n.image_disk(64, 256);
    prepare_disk(&lo.dev, &n.paths).unwrap().unwrap();
    std::fs::write(n.paths.state_mount.join("keep"), b"1").unwrap();
    unmount_all().unwrap();
    // Power lost after the table was written and STATE formatted, before EPHEMERAL's
    // mkfs: its superblock area is still zeros.
    let p3 = partition(&lo, 3);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&p3).unwrap();
        f.write_all(&vec![0u8; 1 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let outcome = prepare_disk(&lo.dev, &n.paths).unwrap().unwrap();
    assert!(matches!(outcome, DiskOutcome::Disk { ref created, .. } if created.is_empty()));
    assert_eq!(blkid(&p3, "LABEL"), "EPHEMERAL");
    assert_eq!(
        std::fs::read(n.paths.state_mount.join("keep")).unwrap(),
        b"1"
    );
    unmount_all().unwrap();

    // Somebody else's filesystem where EPHEMERAL should be: refused, left alone.
    run(
        "mkfs.ext4",
        &["-q", "-F", "-L", "precious", p3.to_str().unwrap()],
    );
    let err = prepare_disk(&lo.dev, &n.paths).unwrap_err();
    assert!(
        matches!(
            err,
            DiskError::ForeignFilesystem {
                label: "EPHEMERAL",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(
            "holds ext4 labelled \"precious\", not an ext4 filesystem labelled EPHEMERAL"
        ),
        "{err}"
    );
    assert_eq!(blkid(&p3, "LABEL"), "precious");
    // STATE was mounted before EPHEMERAL was refused; shutdown still cleans up.
    unmount_all().unwrap();
}

#[test]
fn disk_without_a_table_is_left_alone() {
    let n = node();
    let file = n.tmp.path().join("blank.raw");
    sized_file(&file, 256 * MIB);
    let lo = Loop::attach(&file, true);
    assert_eq!(prepare_disk(&lo.dev, &n.paths).unwrap(), None);
    assert!(std::fs::read(&file).unwrap().iter().all(|&b| b == 0));
    // Through the phase entry point: tmpfs, said so.
    let outcome = prepare(Some(&lo.dev), &n.paths).unwrap();
    assert!(
        matches!(outcome, DiskOutcome::Tmpfs { ref reason } if reason.contains("no partition table")),
        "{outcome:?}"
    );
    assert!(is_mounted(&n.paths.state_mount));
    unmount_all().unwrap();
}

#[test]
fn no_disk_means_tmpfs() {
    let mut n = node();
    // A machine with no block devices at all (PXE, -kernel without a disk).
    let sys = n.tmp.path().join("sys");
    std::fs::create_dir_all(sys.join("block")).unwrap();
    n.paths.sys = sys;
    let outcome = prepare(None, &n.paths).unwrap();
    assert!(matches!(outcome, DiskOutcome::Tmpfs { .. }), "{outcome:?}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for t in [&n.paths.state_mount, &n.paths.ephemeral_mount] {
        let line = info
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(t.to_str().unwrap()))
            .unwrap_or_else(|| panic!("{} not mounted", t.display()));
        assert!(line.contains(" - tmpfs "), "{line}");
    }
    unmount_all().unwrap();
    assert!(!is_mounted(&n.paths.state_mount));
}

#[test]
fn existing_state_is_mounted_before_config_acquisition() {
    let mut n = node();
    let lo = n.image_disk(64, 256);
    n.paths.sys = sys_with_only(n.tmp.path(), &lo.name());

    // First boot: nothing to mount yet, and nothing is created by this call.
    assert_eq!(mount_existing_state(&n.paths).unwrap(), None);
    assert_eq!(
        sfdisk_json(&lo.dev)["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The disks phase with machine.install.disk naming it.
    prepare(Some(&lo.dev), &n.paths).unwrap();
    unmount_all().unwrap();

    // Next boot: STATE found by its partition name and mounted; the disks phase then
    // reuses that mount.
    assert_eq!(
        mount_existing_state(&n.paths).unwrap(),
        Some(partition(&lo, 2))
    );
    assert!(is_mounted(&n.paths.state_mount));
    let outcome = prepare(None, &n.paths).unwrap();
    assert!(matches!(outcome, DiskOutcome::Disk { ref created, .. } if created.is_empty()));
    unmount_all().unwrap();
}

/// A sysfs in which only `disk` exists (the host may have other GPT disks), its
/// partitions the real ones.
fn sys_with_only(root: &Path, disk: &str) -> PathBuf {
    let sys = root.join("sys");
    std::fs::create_dir_all(sys.join("block").join(disk)).unwrap();
    std::fs::create_dir_all(sys.join("class/block")).unwrap();
    std::os::unix::fs::symlink(
        Path::new("/sys/class/block").join(disk),
        sys.join("class/block").join(disk),
    )
    .unwrap();
    sys
}

fn efi_variable(text: &str) -> Vec<u8> {
    let mut raw = vec![0x06, 0, 0, 0]; // BOOTSERVICE_ACCESS | RUNTIME_ACCESS
    for unit in text.encode_utf16().chain([0]) {
        raw.extend_from_slice(&unit.to_le_bytes());
    }
    raw
}

#[test]
fn loader_variable_parses() {
    let g = loader_partuuid(&efi_variable("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")).unwrap();
    assert_eq!(g.to_string(), "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE");
    assert_eq!(loader_partuuid(&[6, 0, 0]), None);
    assert_eq!(loader_partuuid(&efi_variable("not-a-guid")), None);
}

#[test]
fn boot_disk_is_found_by_the_loaders_partuuid() {
    let mut n = node();
    let lo = n.image_disk(64, 256);
    n.paths.sys = sys_with_only(n.tmp.path(), &lo.name());
    assert_eq!(
        boot_disk(&n.paths),
        None,
        "no EFI variable: not booted from a disk"
    );
    let efi_uuid = sfdisk_json(&lo.dev)["partitiontable"]["partitions"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let vars = n.paths.sys.join("firmware/efi/efivars");
    std::fs::create_dir_all(&vars).unwrap();
    let var = n.paths.sys.join(LOADER_DEVICE_PART_UUID);
    std::fs::write(&var, efi_variable("00000000-0000-0000-0000-000000000001")).unwrap();
    assert_eq!(boot_disk(&n.paths), None, "booted from some other disk");
    std::fs::write(&var, efi_variable(&efi_uuid.to_lowercase())).unwrap();
    assert_eq!(boot_disk(&n.paths), Some(lo.dev.clone()));
    // The disks phase with no install disk configured uses it.
    let outcome = prepare(None, &n.paths).unwrap();
    assert!(
        matches!(outcome, DiskOutcome::Disk { ref device, ref created, .. } if *device == lo.dev && created.len() == 2),
        "{outcome:?}"
    );
    unmount_all().unwrap();
}

#[test]
fn install_disk_comes_from_the_config() {
    let valid = include_bytes!("../../tests/data/config-valid-worker.yaml");
    let c = basalt_config::MachineConfig::parse(valid).unwrap();
    assert_eq!(install_disk(&c), Some(Path::new("/dev/vda")));
    let mut c = c;
    c.machine.install = None;
    assert_eq!(install_disk(&c), None);
}

/// The image builder's real raw disk, `dd`-ed onto a 1 GiB disk. Needs a built image,
/// so it is opt-in: `BASALT_IMAGE_RAW=out/basalt-0.1.0-amd64.raw cargo test -p machined
/// -- --ignored image_builder`.
#[test]
#[ignore = "needs a built image: set BASALT_IMAGE_RAW to out/basalt-*-amd64.raw"]
fn image_builder_disk_gets_state_and_ephemeral() {
    require_root();
    let raw = std::env::var_os("BASALT_IMAGE_RAW")
        .map(PathBuf::from)
        .expect("BASALT_IMAGE_RAW names the image builder's raw disk");
    let n = node();
    let file = n.tmp.path().join("disk.raw");
    std::fs::copy(&raw, &file).unwrap();
    let image_len = std::fs::metadata(&file).unwrap().len();
    sized_file(&file, 1024 * MIB);
    let before = sfdisk_json(&file)["partitiontable"]["partitions"][0].clone();
    let lo = Loop::attach(&file, true);
    let outcome = prepare_disk(&lo.dev, &n.paths).unwrap().unwrap();
    assert!(matches!(outcome, DiskOutcome::Disk { ref created, .. } if created.len() == 2));
    run("sfdisk", &["--verify", lo.dev.to_str().unwrap()]);
    let t = &sfdisk_json(&lo.dev)["partitiontable"];
    assert_eq!(t["lastlba"], 1024 * 2048 - 34);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    // The EFI partition is untouched, byte for byte in its table entry.
    for k in ["start", "size", "type", "uuid", "name"] {
        assert_eq!(parts[0][k], before[k], "{k}");
    }
    assert_eq!(parts[1]["name"], "STATE");
    assert_eq!(parts[2]["name"], "EPHEMERAL");
    assert!(parts[1]["start"].as_u64().unwrap() * 512 >= image_len - MIB);
    std::fs::write(n.paths.state_mount.join("probe"), b"ok").unwrap();
    unmount_all().unwrap();
    // And the ESP content is what the image had.
    let esp_bytes = before["size"].as_u64().unwrap() * 512;
    let esp_at = before["start"].as_u64().unwrap() * 512;
    let read = |p: &Path| {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(p).unwrap();
        f.seek(SeekFrom::Start(esp_at)).unwrap();
        let mut b = vec![0u8; esp_bytes as usize];
        f.read_exact(&mut b).unwrap();
        b
    };
    assert!(read(&raw) == read(&lo.dev), "the ESP was modified");
}

#[test]
fn four_k_sector_disk() {
    let n = node();
    let file = n.tmp.path().join("4k.raw");
    sized_file(&file, 512 * MIB);
    let lo = Loop::attach_with_sector_size(&file, true, 4096);
    // The image's layout in 4 KiB sectors: EFI from 1 MiB, 32 MiB long.
    sfdisk_write(
        &lo.dev,
        "label: gpt\nstart=256, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=EFI\n",
    );
    let outcome = prepare_disk(&lo.dev, &n.paths).unwrap().unwrap();
    assert!(matches!(outcome, DiskOutcome::Disk { ref created, .. } if created.len() == 2));
    run("sfdisk", &["--verify", lo.dev.to_str().unwrap()]);
    let t = &sfdisk_json(&lo.dev)["partitiontable"];
    assert_eq!(t["sectorsize"], 4096);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts[1]["name"], "STATE");
    assert_eq!(parts[1]["start"], 33 * 256);
    assert_eq!(parts[1]["size"], 100 * 256);
    assert_eq!(parts[2]["name"], "EPHEMERAL");
    assert_eq!(t["lastlba"], 512 * 256 - 6);
    std::fs::write(n.paths.state_mount.join("x"), b"4k").unwrap();
    unmount_all().unwrap();
}
