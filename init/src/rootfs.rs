//! Mounts and the switch to the real root. Each function is one step of the boot log.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MsFlags, mount};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("mounting {fstype} on {target}: {target} does not exist in the rootfs image")]
    NoMountPoint {
        fstype: &'static str,
        target: PathBuf,
    },
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("copying the /etc template {from} to {to}: {source}")]
    CopyEtc {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("moving {from} to {to}: {source}")]
    Move {
        from: PathBuf,
        to: PathBuf,
        source: nix::Error,
    },
    #[error("switch_root to {newroot} ({step}): {source}")]
    SwitchRoot {
        newroot: PathBuf,
        step: &'static str,
        source: nix::Error,
    },
    #[error("reading the initramfs root: {0}")]
    ReadRoot(std::io::Error),
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(RootfsError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn mount_fs(
    fstype: &'static str,
    source: &str,
    target: &Path,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), RootfsError> {
    mount(Some(source), target, Some(fstype), flags, data).map_err(|e| {
        if e == nix::Error::ENOENT && !target.exists() {
            RootfsError::NoMountPoint {
                fstype,
                target: target.to_path_buf(),
            }
        } else {
            RootfsError::Mount {
                fstype,
                target: target.to_path_buf(),
                source: e,
            }
        }
    })
}

/// /dev, /proc, /sys and /run of the initramfs. A kernel or bootloader may have mounted
/// some already (CONFIG_DEVTMPFS_MOUNT, a previous stage): EBUSY is fine.
pub fn mount_kernel_filesystems() -> Result<(), RootfsError> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mounts: [(&'static str, &str, MsFlags, Option<&str>); 4] = [
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        ("proc", "/proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", nosuid_nodev_noexec, None),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    for (fstype, target, flags, data) in mounts {
        let target = Path::new(target);
        mkdir(target)?;
        match mount_fs(fstype, fstype, target, flags, data) {
            Err(RootfsError::Mount {
                source: nix::Error::EBUSY,
                ..
            }) => {}
            other => other?,
        }
    }
    Ok(())
}

pub fn uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_secs_f64(secs))
}

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn mount_squashfs(device: &Path, target: &Path) -> Result<(), RootfsError> {
    mkdir(target)?;
    let source = device.to_string_lossy();
    mount_fs(
        "squashfs",
        &source,
        target,
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )
}

/// Where the writable /etc came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcSource {
    /// The rootfs' `/usr/share/basalt/etc`, the image builder's template.
    Template,
    /// The image carries no template: the minimal /etc below.
    Minimal,
}

impl std::fmt::Display for EtcSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EtcSource::Template => "the image template /usr/share/basalt/etc",
            EtcSource::Minimal => "built-in defaults (the image has no /usr/share/basalt/etc)",
        })
    }
}

/// The template path inside the rootfs; the image builder puts /etc's initial content here.
pub const ETC_TEMPLATE: &str = "usr/share/basalt/etc";

/// tmpfs on /etc, /tmp and /var of the new root (the squashfs is read-only); /etc gets
/// the image's template. /var stays tmpfs until machined mounts EPHEMERAL over it.
pub fn prepare_writable(newroot: &Path) -> Result<EtcSource, RootfsError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let etc = newroot.join("etc");
    mount_fs("tmpfs", "tmpfs", &etc, flags, Some("mode=0755,size=16m"))?;
    mount_fs(
        "tmpfs",
        "tmpfs",
        &newroot.join("tmp"),
        flags,
        Some("mode=1777"),
    )?;
    mount_fs(
        "tmpfs",
        "tmpfs",
        &newroot.join("var"),
        flags,
        Some("mode=0755"),
    )?;
    let template = newroot.join(ETC_TEMPLATE);
    if template.is_dir() {
        copy_tree(&template, &etc).map_err(|source| RootfsError::CopyEtc {
            from: template.clone(),
            to: etc.clone(),
            source,
        })?;
        Ok(EtcSource::Template)
    } else {
        write_minimal_etc(&etc).map_err(|source| RootfsError::Create {
            path: etc.clone(),
            source,
        })?;
        Ok(EtcSource::Minimal)
    }
}

/// Just enough for libc and the tools machined runs; machined rewrites hostname, hosts
/// and resolv.conf from the machine config.
pub fn write_minimal_etc(etc: &Path) -> std::io::Result<()> {
    std::fs::write(etc.join("hostname"), "basalt\n")?;
    std::fs::write(
        etc.join("hosts"),
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
    )?;
    std::fs::write(etc.join("resolv.conf"), "")?;
    std::os::unix::fs::symlink("../usr/lib/os-release", etc.join("os-release"))?;
    std::os::unix::fs::symlink("../proc/self/mounts", etc.join("mtab"))?;
    Ok(())
}

/// Copies a directory tree (files, directories, symlinks) keeping permission bits.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}

/// MS_MOVE of the initramfs' /dev, /proc, /sys and /run to the same places in the new root.
pub fn move_kernel_filesystems(newroot: &Path) -> Result<(), RootfsError> {
    for dir in ["dev", "proc", "sys", "run"] {
        let from = Path::new("/").join(dir);
        let to = newroot.join(dir);
        mount(
            Some(&from),
            &to,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|source| RootfsError::Move {
            from: from.clone(),
            to: to.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Deletes the initramfs' files to give their memory back, without descending into
/// anything mounted on it (the new root). rootfs.sqsh stays allocated while the loop
/// device holds it open; everything else is freed. Returns the bytes unlinked.
pub fn delete_initramfs() -> Result<u64, RootfsError> {
    let root_dev = std::fs::symlink_metadata("/")
        .map_err(RootfsError::ReadRoot)?
        .dev();
    Ok(delete_children(Path::new("/"), root_dev))
}

/// Best effort: a file that cannot be removed costs memory, not correctness.
fn delete_children(dir: &Path, root_dev: u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut freed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != root_dev {
            continue;
        }
        if meta.is_dir() {
            freed += delete_children(&path, root_dev);
            // Fails (EBUSY) for mount points such as /newroot, which is what we want.
            let _ = std::fs::remove_dir(&path);
        } else if std::fs::remove_file(&path).is_ok() {
            freed += meta.len();
        }
    }
    freed
}

/// Bind-mounts every regular file under `preload` read-only over the same path below
/// `newroot` (which must exist: a placeholder or the same file). The mounts keep the
/// files alive after the initramfs is emptied. Returns how many were bound.
pub fn bind_preloaded(preload: &Path, newroot: &Path) -> Result<usize, RootfsError> {
    let mut stack = vec![preload.to_path_buf()];
    let mut bound = 0;
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(RootfsError::ReadRoot)?;
        for entry in entries {
            let path = entry.map_err(RootfsError::ReadRoot)?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(RootfsError::ReadRoot)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(preload).unwrap_or(&path);
                bind_file(&path, &newroot.join(rel))?;
                bound += 1;
            }
        }
    }
    Ok(bound)
}

fn bind_file(source: &Path, target: &Path) -> Result<(), RootfsError> {
    let fail = |source| RootfsError::Mount {
        fstype: "bind",
        target: target.to_path_buf(),
        source,
    };
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(fail)?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(fail)
}

/// Makes `newroot` the root: move it onto /, chroot into it.
pub fn switch_root(newroot: &Path) -> Result<(), RootfsError> {
    let fail = |step: &'static str| {
        let newroot = newroot.to_path_buf();
        move |source| RootfsError::SwitchRoot {
            newroot,
            step,
            source,
        }
    };
    nix::unistd::chdir(newroot).map_err(fail("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(fail("move onto /"))?;
    nix::unistd::chroot(".").map_err(fail("chroot"))?;
    nix::unistd::chdir("/").map_err(fail("chdir /"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_etc_has_the_files_libc_needs() {
        let dir = tempfile::tempdir().unwrap();
        write_minimal_etc(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("hostname")).unwrap(),
            "basalt\n"
        );
        assert!(
            std::fs::read_to_string(dir.path().join("hosts"))
                .unwrap()
                .contains("127.0.0.1 localhost")
        );
        assert!(dir.path().join("resolv.conf").is_file());
        assert_eq!(
            std::fs::read_link(dir.path().join("os-release")).unwrap(),
            Path::new("../usr/lib/os-release")
        );
    }

    #[test]
    fn copy_tree_keeps_modes_symlinks_and_subdirs() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join("ssl")).unwrap();
        std::fs::write(src.path().join("ssl/cert.pem"), "pem").unwrap();
        std::fs::write(src.path().join("secret"), "s").unwrap();
        std::fs::set_permissions(
            src.path().join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", src.path().join("os-release")).unwrap();
        copy_tree(src.path(), dst.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.path().join("ssl/cert.pem")).unwrap(),
            "pem"
        );
        let mode = std::fs::metadata(dst.path().join("secret")).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_link(dst.path().join("os-release")).unwrap(),
            Path::new("../usr/lib/os-release")
        );
    }

    #[test]
    fn delete_children_stays_on_one_filesystem() {
        // /proc is another filesystem than the temp dir: a symlink to it is removed as a
        // link, never followed, and the files count only once.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("g"), [0u8; 20]).unwrap();
        std::os::unix::fs::symlink("/proc", dir.path().join("proc-link")).unwrap();
        let dev = std::fs::metadata(dir.path()).unwrap().dev();
        let freed = delete_children(dir.path(), dev);
        assert!(freed >= 120, "{freed}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(Path::new("/proc/self").exists());
    }
}
