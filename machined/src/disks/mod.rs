//! The node's own disk: STATE (persisted machine config, node identity, mounted at
//! /system/state) and EPHEMERAL (the rest of the disk, mounted at /var), created next to
//! the image's EFI partition on first boot. Without a disk both stay tmpfs.
//!
//! Sequencer calls (see docs/disks.md):
//! - before config acquisition: [`mount_existing_state`], so the STATE copy is a source;
//! - phase "disks", once the config is known: [`prepare`] with `machine.install.disk`;
//! - shutdown / reboot: [`unmount_all`].

#![allow(dead_code)] // until the sequencer (engineer D) calls in

use crate::log::{info, warning};

pub mod device;
/// The partition table codec is shared with the image builder, which writes the table
/// this module grows.
pub use basalt_gpt as gpt;
pub mod label;
pub mod plan;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};

use device::Disk;
use gpt::{Gpt, GptError, Guid};
use label::Filesystem;
use plan::{EPHEMERAL_LABEL, FormatDecision, Plan, PlanError, STATE_LABEL};

pub const STATE_MOUNT: &str = "/system/state";
pub const EPHEMERAL_MOUNT: &str = "/var";

/// systemd-boot (and the UKI stub) export the PARTUUID of the ESP they were loaded from.
const LOADER_DEVICE_PART_UUID: &str =
    "firmware/efi/efivars/LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// mkfs binaries the image may carry, in order of preference (`mke2fs` needs `-t ext4`).
const MKFS: &[&str] = &[
    "/sbin/mkfs.ext4",
    "/usr/sbin/mkfs.ext4",
    "/sbin/mke2fs",
    "/usr/sbin/mke2fs",
];

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{ioctl} on {device}: {source}")]
    Ioctl {
        ioctl: &'static str,
        device: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{0} is not a block device Basalt can name")]
    NotADisk(PathBuf),
    #[error("reading the partition table of {device}: {source}")]
    Table {
        device: PathBuf,
        #[source]
        source: GptError,
    },
    #[error("planning STATE and EPHEMERAL on {device}: {source}")]
    Plan {
        device: PathBuf,
        #[source]
        source: PlanError,
    },
    #[error("partition {number} of {disk} did not appear in /dev after re-reading the table")]
    PartitionDeviceMissing { disk: String, number: u32 },
    #[error(
        "{device} ({label}) holds {found}, not an ext4 filesystem labelled {label}; refusing to format over it (zero its first MiB to have Basalt format it)"
    )]
    ForeignFilesystem {
        device: PathBuf,
        label: &'static str,
        found: Filesystem,
    },
    #[error("no mkfs.ext4 or mke2fs in the image (looked for {})", MKFS.join(", "))]
    NoMkfs,
    #[error("{program} {device} failed ({status}): {stderr}")]
    Mkfs {
        program: String,
        device: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("unmounting at shutdown failed for: {}", .0.join("; "))]
    Unmount(Vec<String>),
}

/// Where the node keeps its state this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOutcome {
    Disk {
        device: PathBuf,
        state: PathBuf,
        ephemeral: PathBuf,
        /// Partitions created this boot (first boot).
        created: Vec<&'static str>,
    },
    /// No disk: STATE and /var are tmpfs and vanish at reboot.
    Tmpfs { reason: String },
}

/// Where things live; `Paths::system()` on a node, temp dirs in tests.
#[derive(Debug, Clone)]
pub struct Paths {
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub state_mount: PathBuf,
    pub ephemeral_mount: PathBuf,
}

impl Paths {
    pub fn system() -> Paths {
        Paths {
            sys: "/sys".into(),
            dev: "/dev".into(),
            state_mount: STATE_MOUNT.into(),
            ephemeral_mount: EPHEMERAL_MOUNT.into(),
        }
    }
}

/// Mounts made by this module, in order, so shutdown can undo them in reverse.
static MOUNTS: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

fn mounted_here(target: &Path) -> Option<String> {
    let mounts = MOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    mounts
        .iter()
        .find(|(t, _)| t == target)
        .map(|(_, what)| what.clone())
}

fn mount(what: &Path, target: &Path, fstype: &str, flags: MsFlags) -> Result<(), DiskError> {
    std::fs::create_dir_all(target).map_err(|source| DiskError::Io {
        action: "creating the mount point",
        path: target.to_path_buf(),
        source,
    })?;
    nix::mount::mount(Some(what), target, Some(fstype), flags, None::<&str>).map_err(|source| {
        DiskError::Mount {
            what: what.display().to_string(),
            target: target.to_path_buf(),
            source,
        }
    })?;
    MOUNTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((target.to_path_buf(), what.display().to_string()));
    Ok(())
}

/// STATE holds only data: nothing on it is ever executed.
fn state_flags() -> MsFlags {
    MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC
}

fn ephemeral_flags() -> MsFlags {
    MsFlags::MS_NOATIME
}

/// Reads and parses the primary GPT of `disk`; `Ok(None)` when it carries none.
fn read_table(disk: &mut Disk) -> Result<Option<Gpt>, DiskError> {
    let head = disk.read_at(0, gpt::primary_len(disk.sector_size))?;
    match Gpt::parse(&head, disk.sector_size) {
        Ok(t) => Ok(Some(t)),
        Err(GptError::NoSignature) => Ok(None),
        Err(source) => Err(DiskError::Table {
            device: disk.path.clone(),
            source,
        }),
    }
}

fn mkfs(device: &Path, label: &str) -> Result<(), DiskError> {
    let program = MKFS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or(DiskError::NoMkfs)?;
    let mut cmd = Command::new(program);
    if program.ends_with("mke2fs") {
        cmd.args(["-t", "ext4"]);
    }
    let out = cmd
        .args(["-q", "-F", "-L", label])
        .arg(device)
        .output()
        .map_err(|source| DiskError::Io {
            action: "running",
            path: PathBuf::from(program),
            source,
        })?;
    if !out.status.success() {
        return Err(DiskError::Mkfs {
            program: program.to_string(),
            device: device.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Makes sure the kernel knows partition `number`: after BLKRRPART it normally does,
/// but not when the disk was busy or the kernel has no GPT parser.
fn register(
    disk: &Disk,
    sys: &Path,
    name: &str,
    table: &Gpt,
    number: u32,
) -> Result<(), DiskError> {
    if device::kernel_has_partition(sys, name, number) {
        return Ok(());
    }
    match table.partitions.iter().find(|p| p.number == number) {
        Some(p) => disk.add_partition(p),
        None => Ok(()),
    }
}

/// Applies STATE/EPHEMERAL to `device` (a whole disk holding the image's GPT): plans,
/// writes the grown table, re-reads it, formats what is new, mounts both. Returns
/// `Ok(None)` when the disk has no GPT at all (not installed yet: nothing is touched).
pub fn prepare_disk(device: &Path, paths: &Paths) -> Result<Option<DiskOutcome>, DiskError> {
    let mut disk = Disk::open(device, true)?;
    let Some(table) = read_table(&mut disk)? else {
        return Ok(None);
    };
    let plan = plan::plan(&table, disk.total_sectors).map_err(|source| DiskError::Plan {
        device: device.to_path_buf(),
        source,
    })?;
    let mut created = Vec::new();
    if let Plan::Create { table, create, .. } = &plan {
        disk.write_all_at(&table.serialize(disk.total_sectors))?;
        disk.reread()?;
        created = create.iter().map(|c| c.label).collect();
        info!(
            "disks: created {} on {}",
            created.join(" and "),
            device.display()
        );
    }
    let name = device::kernel_name(device)?;
    let table = match &plan {
        Plan::Create { table, .. } => table.clone(),
        Plan::UseExisting { .. } => table,
    };
    for number in [plan.state(), plan.ephemeral()] {
        register(&disk, &paths.sys, &name, &table, number)?;
    }
    drop(disk);
    let mut parts = Vec::new();
    for (label, number, target, flags) in [
        (STATE_LABEL, plan.state(), &paths.state_mount, state_flags()),
        (
            EPHEMERAL_LABEL,
            plan.ephemeral(),
            &paths.ephemeral_mount,
            ephemeral_flags(),
        ),
    ] {
        let (part, found) = probe_partition(paths, &name, number, Duration::from_secs(10))?;
        // A partition created a moment ago holds whatever bytes the disk had there
        // before; it is ours to format whatever they look like.
        let decision = if created.contains(&label) {
            FormatDecision::Format
        } else {
            plan::format_decision(&found, label)
        };
        match decision {
            FormatDecision::Mount => {}
            FormatDecision::Format => {
                info!("disks: formatting {} as ext4 {label}", part.display());
                mkfs(&part, label)?;
            }
            FormatDecision::Refuse { found } => {
                return Err(DiskError::ForeignFilesystem {
                    device: part,
                    label,
                    found,
                });
            }
        }
        if mounted_here(target).is_none() {
            mount(&part, target, "ext4", flags)?;
        }
        info!(
            "disks: {label} {} mounted at {}",
            part.display(),
            target.display()
        );
        parts.push(part);
    }
    let ephemeral = parts.pop().unwrap_or_default();
    let state = parts.pop().unwrap_or_default();
    Ok(Some(DiskOutcome::Disk {
        device: device.to_path_buf(),
        state,
        ephemeral,
        created,
    }))
}

/// The PARTUUID in an efivarfs `LoaderDevicePartUUID` file: 4 bytes of attributes,
/// then a NUL-terminated UTF-16LE string.
pub fn loader_partuuid(raw: &[u8]) -> Option<Guid> {
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    Guid::parse(&String::from_utf16_lossy(&units))
}

/// The whole disk carrying the ESP systemd-boot was loaded from, if the firmware says.
pub fn boot_disk(paths: &Paths) -> Option<PathBuf> {
    let var = paths.sys.join(LOADER_DEVICE_PART_UUID);
    if !var.exists() {
        let efivars = paths.sys.join("firmware/efi/efivars");
        if efivars.is_dir() {
            // efivarfs is not mounted by basalt-init; mount it to read the loader's
            // variable (EBUSY means it already is).
            let _ = nix::mount::mount(
                Some("efivarfs"),
                &efivars,
                Some("efivarfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            );
        }
    }
    let uuid = loader_partuuid(&std::fs::read(&var).ok()?)?;
    disk_where(paths, |t| {
        t.partitions.iter().any(|p| p.unique_guid == uuid)
    })
}

/// The single whole disk whose GPT has a partition named STATE.
pub fn disk_with_state(paths: &Paths) -> Option<PathBuf> {
    disk_where(paths, |t| t.by_name(STATE_LABEL).is_some())
}

fn disk_where(paths: &Paths, pred: impl Fn(&Gpt) -> bool) -> Option<PathBuf> {
    let mut hits = device::whole_disks(&paths.sys)
        .into_iter()
        .filter(|name| !name.starts_with("ram") && !name.starts_with("zram"))
        .map(|name| paths.dev.join(name))
        .filter(|dev| {
            Disk::open(dev, false)
                .ok()
                .and_then(|mut d| read_table(&mut d).ok().flatten())
                .is_some_and(|t| pred(&t))
        });
    let first = hits.next()?;
    if let Some(second) = hits.next() {
        warning!(
            "disks: both {} and {} qualify; set machine.install.disk to choose",
            first.display(),
            second.display()
        );
        return None;
    }
    Some(first)
}

/// Before config acquisition: mounts an existing STATE (boot disk first, else the one
/// disk that has one) at /system/state so the persisted config can be read. Never
/// creates or formats anything. Returns the STATE device when mounted.
pub fn mount_existing_state(paths: &Paths) -> Result<Option<PathBuf>, DiskError> {
    let Some(device) = boot_disk(paths).or_else(|| disk_with_state(paths)) else {
        info!("disks: no disk with a STATE partition yet");
        return Ok(None);
    };
    let mut disk = Disk::open(&device, false)?;
    let table = read_table(&mut disk)?;
    let Some((table, number)) =
        table.and_then(|t| t.by_name(STATE_LABEL).map(|p| p.number).map(|n| (t, n)))
    else {
        info!(
            "disks: boot disk {} has no STATE partition yet (first boot)",
            device.display()
        );
        return Ok(None);
    };
    let name = device::kernel_name(&device)?;
    register(&disk, &paths.sys, &name, &table, number)?;
    drop(disk);
    let (part, found) = probe_partition(paths, &name, number, Duration::from_secs(5))?;
    if plan::format_decision(&found, STATE_LABEL) != FormatDecision::Mount {
        info!(
            "disks: {} is not formatted yet; the disks phase will do it",
            part.display()
        );
        return Ok(None);
    }
    if mounted_here(&paths.state_mount).is_none() {
        mount(&part, &paths.state_mount, "ext4", state_flags())?;
    }
    info!(
        "disks: STATE {} mounted at {}",
        part.display(),
        paths.state_mount.display()
    );
    Ok(Some(part))
}

/// The disk `machine.install.disk` names, the argument [`prepare`] takes.
pub fn install_disk(config: &basalt_config::MachineConfig) -> Option<&Path> {
    config
        .machine
        .install
        .as_ref()
        .map(|i| Path::new(i.disk.as_str()))
}

/// Phase "disks": picks the node's disk (`install_disk` from `machine.install.disk`,
/// else the disk systemd-boot booted from, else the one disk carrying STATE) and
/// prepares it; with no disk, or a disk not installed yet, mounts tmpfs instead.
pub fn prepare(install_disk: Option<&Path>, paths: &Paths) -> Result<DiskOutcome, DiskError> {
    let chosen = install_disk
        .map(Path::to_path_buf)
        .or_else(|| boot_disk(paths))
        .or_else(|| disk_with_state(paths));
    let outcome = match chosen {
        Some(device) => match prepare_disk(&device, paths)? {
            Some(outcome) => outcome,
            None => DiskOutcome::Tmpfs {
                reason: format!(
                    "{} has no partition table (the image is not installed on it)",
                    device.display()
                ),
            },
        },
        None => DiskOutcome::Tmpfs {
            reason: "no install disk configured and not booted from a disk".into(),
        },
    };
    if let DiskOutcome::Tmpfs { reason } = &outcome {
        warning!("disks: {reason}; STATE and /var are tmpfs, nothing survives a reboot");
        for target in [&paths.state_mount, &paths.ephemeral_mount] {
            if mounted_here(target).is_none() {
                mount(
                    Path::new("tmpfs"),
                    target,
                    "tmpfs",
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                )?;
            }
        }
    }
    Ok(outcome)
}

/// Shutdown: flushes and unmounts everything this module mounted, last first, so the
/// next boot finds clean ext4 journals. A mount still busy is remounted read-only,
/// which also leaves its journal clean; failures are collected, never stop the rest.
pub fn unmount_all() -> Result<(), DiskError> {
    nix::unistd::sync();
    let mut mounts = MOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let mut failed = Vec::new();
    while let Some((target, what)) = mounts.pop() {
        match nix::mount::umount2(&target, MntFlags::empty()) {
            Ok(()) => info!("disks: unmounted {}", target.display()),
            Err(e) => {
                let ro = nix::mount::mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                );
                failed.push(match ro {
                    Ok(()) => format!(
                        "{} ({what}) busy ({e}), remounted read-only",
                        target.display()
                    ),
                    Err(e2) => format!(
                        "{} ({what}): {e}; read-only remount: {e2}",
                        target.display()
                    ),
                });
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(DiskError::Unmount(failed))
    }
}

/// Waits for partition `number` of disk `name` to appear and reads which filesystem
/// it holds, so first-boot formatting and the early STATE mount decide from the same
/// probe.
fn probe_partition(
    paths: &Paths,
    name: &str,
    number: u32,
    timeout: Duration,
) -> Result<(PathBuf, label::Filesystem), DiskError> {
    let part = device::partition_path(&paths.sys, &paths.dev, name, number, timeout)?;
    let head = device::read_head(&part, label::PROBE_LEN).map_err(|source| DiskError::Io {
        action: "reading the superblock of",
        path: part.clone(),
        source,
    })?;
    Ok((part, label::probe(&head)))
}
