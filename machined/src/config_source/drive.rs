//! Config drives: a FAT or ISO 9660 filesystem labelled `cidata` (NoCloud) or
//! `config-2` (OpenStack), found by reading each block device's superblock.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use crate::disks::{device, label};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DriveKind {
    NoCloud,
    OpenStack,
}

impl DriveKind {
    /// Labels are compared case-insensitively: ISO 9660 tools upper-case them.
    pub fn from_label(label: &str) -> Option<DriveKind> {
        if label.eq_ignore_ascii_case("cidata") {
            Some(DriveKind::NoCloud)
        } else if label.eq_ignore_ascii_case("config-2") {
            Some(DriveKind::OpenStack)
        } else {
            None
        }
    }

    /// Where the user data sits on the drive.
    pub fn user_data(self) -> &'static str {
        match self {
            DriveKind::NoCloud => "user-data",
            DriveKind::OpenStack => "openstack/latest/user_data",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    pub device: PathBuf,
    pub kind: DriveKind,
    pub fstype: &'static str,
    pub label: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("mounting config drive {device} ({fstype}) read-only on {target}: {source}")]
    Mount {
        device: PathBuf,
        fstype: &'static str,
        target: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Config drives among the block devices in `sys`, in kernel-name order.
pub fn find(sys: &Path, dev: &Path) -> Vec<Drive> {
    device::all_block_devices(sys)
        .into_iter()
        .filter_map(|name| {
            let path = dev.join(&name);
            // Unreadable devices (an empty CD tray: ENOMEDIUM) cannot be config drives.
            let head = device::read_head(&path, label::PROBE_LEN).ok()?;
            let fs = label::probe(&head);
            let kind = DriveKind::from_label(fs.label()?)?;
            let fstype = match fs {
                label::Filesystem::Vfat { .. } | label::Filesystem::Iso9660 { .. } => {
                    fs.fstype()?
                }
                _ => return None,
            };
            Some(Drive {
                device: path,
                kind,
                fstype,
                label: fs.label()?.to_string(),
            })
        })
        .collect()
}

/// Mounts `drive` read-only on `mount_dir`, reads its user data, unmounts.
/// `Ok(None)` when the drive has no user-data file.
pub fn read_user_data(drive: &Drive, mount_dir: &Path) -> Result<Option<Vec<u8>>, DriveError> {
    std::fs::create_dir_all(mount_dir).map_err(|source| DriveError::Io {
        action: "creating",
        path: mount_dir.to_path_buf(),
        source,
    })?;
    nix::mount::mount(
        Some(&drive.device),
        mount_dir,
        Some(drive.fstype),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|source| DriveError::Mount {
        device: drive.device.clone(),
        fstype: drive.fstype,
        target: mount_dir.to_path_buf(),
        source,
    })?;
    let path = mount_dir.join(drive.kind.user_data());
    let read = match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DriveError::Io {
            action: "reading",
            path: path.clone(),
            source,
        }),
    };
    // Read-only, so a failed unmount loses nothing; a lazy detach frees the mount point.
    if nix::mount::umount2(mount_dir, MntFlags::empty()).is_err() {
        let _ = nix::mount::umount2(mount_dir, MntFlags::MNT_DETACH);
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_map_to_kinds_case_insensitively() {
        assert_eq!(DriveKind::from_label("cidata"), Some(DriveKind::NoCloud));
        assert_eq!(DriveKind::from_label("CIDATA"), Some(DriveKind::NoCloud));
        assert_eq!(
            DriveKind::from_label("config-2"),
            Some(DriveKind::OpenStack)
        );
        assert_eq!(
            DriveKind::from_label("CONFIG-2"),
            Some(DriveKind::OpenStack)
        );
        assert_eq!(DriveKind::from_label("STATE"), None);
        assert_eq!(DriveKind::from_label("cidata2"), None);
        assert_eq!(
            DriveKind::OpenStack.user_data(),
            "openstack/latest/user_data"
        );
    }
}
