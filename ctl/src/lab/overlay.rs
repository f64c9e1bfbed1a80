//! Initramfs overlays: the kernel unpacks concatenated cpio archives in order, and a
//! later file replaces an earlier one. Tests use this to change one file of a real
//! image (a broken rootfs.sqsh, an extra config) without rebuilding it.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::qemu::{QemuError, Result};

/// One regular file of an overlay: path inside the initramfs (no leading `/`), mode,
/// content.
pub struct OverlayFile<'a> {
    pub path: &'a str,
    pub mode: u32,
    pub content: &'a [u8],
}

/// An uncompressed newc archive holding `files`, ending with the trailer.
pub fn newc_archive(files: &[OverlayFile<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, f) in files.iter().enumerate() {
        push_entry(
            &mut out,
            ino as u32 + 1,
            0o100000 | (f.mode & 0o7777),
            f.path,
            f.content,
        );
    }
    push_entry(&mut out, 0, 0, "TRAILER!!!", &[]);
    out
}

fn push_entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        0, // uid
        0, // gid
        1, // nlink
        0, // mtime
        data.len(),
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        0, // check
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Writes `initrd` followed by an overlay archive to `out` and returns `out`.
pub fn initrd_with_overlay(
    initrd: &Path,
    files: &[OverlayFile<'_>],
    out: &Path,
) -> Result<PathBuf> {
    let copy_err = |source| QemuError::Copy {
        from: initrd.to_path_buf(),
        to: out.to_path_buf(),
        source,
    };
    std::fs::copy(initrd, out).map_err(copy_err)?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(out)
        .map_err(copy_err)?;
    // The kernel skips zero padding between archives; align to 4 like the spec wants.
    let len = file.metadata().map_err(copy_err)?.len();
    let pad = (4 - len % 4) % 4;
    file.write_all(&vec![0u8; pad as usize]).map_err(copy_err)?;
    file.write_all(&newc_archive(files)).map_err(copy_err)?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's cpio must read what we write, names and contents intact.
    #[test]
    fn newc_archive_is_readable_by_cpio() {
        let dir = tempfile::tempdir().unwrap();
        let archive = newc_archive(&[
            OverlayFile {
                path: "rootfs.sqsh",
                mode: 0o644,
                content: b"not a squashfs",
            },
            OverlayFile {
                path: "odd",
                mode: 0o755,
                content: b"12345",
            },
        ]);
        std::fs::write(dir.path().join("a.cpio"), &archive).unwrap();
        let sh = xshell::Shell::new().unwrap();
        sh.change_dir(dir.path());
        let listing = xshell::cmd!(sh, "cpio -i --quiet -F a.cpio")
            .read()
            .unwrap();
        assert_eq!(listing, "");
        assert_eq!(
            std::fs::read(dir.path().join("rootfs.sqsh")).unwrap(),
            b"not a squashfs"
        );
        assert_eq!(std::fs::read(dir.path().join("odd")).unwrap(), b"12345");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("odd"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn overlay_is_appended_after_padding() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::write(&base, b"abcde").unwrap();
        let out = initrd_with_overlay(
            &base,
            &[OverlayFile {
                path: "x",
                mode: 0o644,
                content: b"y",
            }],
            &dir.path().join("out"),
        )
        .unwrap();
        let bytes = std::fs::read(out).unwrap();
        assert_eq!(&bytes[..5], b"abcde");
        assert_eq!(&bytes[5..8], &[0, 0, 0]);
        assert_eq!(&bytes[8..14], b"070701");
    }
}
