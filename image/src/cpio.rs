//! newc ("070701") cpio writer for the initramfs: entries in tree order (sorted), owner
//! 0:0, every mtime = SOURCE_DATE_EPOCH, inode numbers counted from 1, no hard links.

use std::io::Write;

use crate::tree::{Node, Tree, TreeError};

#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("writing the cpio archive: {0}")]
    Write(#[from] std::io::Error),
    #[error("{path} is too large for a newc cpio entry ({size} bytes)")]
    TooLarge { path: String, size: usize },
}

struct Entry<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &'a str,
}

fn header(out: &mut impl Write, e: Entry<'_>) -> std::io::Result<u64> {
    let Entry {
        ino,
        mode,
        nlink,
        mtime,
        size,
        rdev,
        name,
    } = e;
    let namesize = name.len() + 1;
    let h = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    out.write_all(h.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let written = 110 + namesize;
    let pad = (4 - written % 4) % 4;
    out.write_all(&[0u8; 3][..pad])?;
    Ok((written + pad) as u64)
}

fn pad_data(out: &mut impl Write, len: usize) -> std::io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

/// Write `tree` as a newc archive (with the `TRAILER!!!` entry).
pub fn write(tree: &Tree, mtime: u64, out: &mut impl Write) -> Result<(), CpioError> {
    let mtime = u32::try_from(mtime).unwrap_or(u32::MAX);
    for (ino, (path, node)) in (1u32..).zip(tree.nodes.iter()) {
        let name = &path[1..];
        match node {
            Node::Dir { mode } => {
                header(
                    out,
                    Entry {
                        ino,
                        mode: 0o040000 | mode,
                        nlink: 2,
                        mtime,
                        size: 0,
                        rdev: (0, 0),
                        name,
                    },
                )?;
            }
            Node::Symlink { target } => {
                let size = u32::try_from(target.len()).map_err(|_| CpioError::TooLarge {
                    path: path.clone(),
                    size: target.len(),
                })?;
                header(
                    out,
                    Entry {
                        ino,
                        mode: 0o120777,
                        nlink: 1,
                        mtime,
                        size,
                        rdev: (0, 0),
                        name,
                    },
                )?;
                out.write_all(target.as_bytes())?;
                pad_data(out, target.len())?;
            }
            Node::File { content, mode } => {
                let data = content.read()?;
                let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
                    path: path.clone(),
                    size: data.len(),
                })?;
                header(
                    out,
                    Entry {
                        ino,
                        mode: 0o100000 | mode,
                        nlink: 1,
                        mtime,
                        size,
                        rdev: (0, 0),
                        name,
                    },
                )?;
                out.write_all(&data)?;
                pad_data(out, data.len())?;
            }
            Node::CharDev { mode, major, minor } => {
                header(
                    out,
                    Entry {
                        ino,
                        mode: 0o020000 | mode,
                        nlink: 1,
                        mtime,
                        size: 0,
                        rdev: (*major, *minor),
                        name,
                    },
                )?;
            }
        }
    }
    header(
        out,
        Entry {
            ino: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            size: 0,
            rdev: (0, 0),
            name: "TRAILER!!!",
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cpio_lists_what_we_wrote_with_fixed_metadata() {
        let mut t = Tree::default();
        t.bytes("/init", "#!", 0o755).unwrap();
        t.bytes("/lib/modules/k/modules.dep", "a.ko:\n", 0o644)
            .unwrap();
        t.symlink("/bin", "usr/bin").unwrap();
        t.insert(
            "/dev/console",
            Node::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        )
        .unwrap();
        let mut buf = Vec::new();
        write(&t, 1_747_699_200, &mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        // Same tree, same bytes.
        let mut again = Vec::new();
        write(&t, 1_747_699_200, &mut again).unwrap();
        assert_eq!(buf, again);
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, &buf).unwrap();
        let out = std::process::Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{listing}");
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 8, "{listing}");
        assert!(
            lines.iter().any(|l| l.starts_with("crw-------")
                && l.contains("5,")
                && l.ends_with("dev/console")),
            "{listing}"
        );
        assert!(
            lines
                .iter()
                .all(|l| l.contains(" root ") || l.contains(" 0 ")),
            "{listing}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("init")),
            "{listing}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("lrwxrwxrwx") && l.ends_with("bin -> usr/bin")),
            "{listing}"
        );
        assert!(
            listing.contains("2025"),
            "mtime is SOURCE_DATE_EPOCH: {listing}"
        );
    }
}
