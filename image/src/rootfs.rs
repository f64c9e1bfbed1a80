//! Staging: which files of the pinned packages (and of the workspace's own binaries) the
//! node carries. Nothing is copied wholesale; every file is named here or pulled in as a
//! shared library (DT_NEEDED / PT_INTERP) of something named here.

use std::path::{Path, PathBuf};

use crate::elf;
use crate::tree::{Content, Node, Tree, TreeError, normalise};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{path} is in none of the staged packages ({packages})")]
    NotFound { path: String, packages: String },
    #[error("{binary} needs {library}, which none of the staged packages provides")]
    LibraryMissing { binary: String, library: String },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// Library search path of the Debian loader for amd64, in its order.
const LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib",
    "/usr/lib",
];

/// Map a package path onto the merged-/usr layout the image uses
/// (`/lib`, `/bin`, `/sbin`, `/lib64` are symlinks into `/usr`).
pub fn merged_usr(path: &str) -> String {
    for top in ["/lib64", "/lib", "/bin", "/sbin"] {
        if path == top || path.starts_with(&format!("{top}/")) {
            return format!("/usr{path}");
        }
    }
    path.to_owned()
}

/// The top-level merged-/usr symlinks.
pub fn add_usr_merge_links(tree: &mut Tree) -> Result<(), TreeError> {
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        tree.symlink(link, target)?;
    }
    Ok(())
}

/// The unpacked packages files are taken from, searched in order.
pub struct Universe {
    pub packages: Vec<(String, PathBuf)>,
}

enum Found {
    File { host: PathBuf, mode: u32 },
    Symlink { target: String },
    Dir { host: PathBuf },
}

impl Universe {
    fn names(&self) -> String {
        self.packages
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn lookup(&self, path: &str) -> Result<Option<Found>, StageError> {
        use std::os::unix::fs::PermissionsExt;
        let canon = merged_usr(path);
        // A package may ship either spelling (/lib/x or /usr/lib/x).
        let unmerged = canon.strip_prefix("/usr").filter(|rest| {
            ["/lib64", "/lib", "/bin", "/sbin"]
                .iter()
                .any(|t| rest == t || rest.starts_with(&format!("{t}/")))
        });
        for (_, dir) in &self.packages {
            for candidate in std::iter::once(canon.as_str()).chain(unmerged) {
                let host = dir.join(&candidate[1..]);
                let Ok(meta) = std::fs::symlink_metadata(&host) else {
                    continue;
                };
                let ft = meta.file_type();
                if ft.is_symlink() {
                    let target = std::fs::read_link(&host).map_err(|source| StageError::Io {
                        path: host.clone(),
                        source,
                    })?;
                    return Ok(Some(Found::Symlink {
                        target: target.to_string_lossy().into_owned(),
                    }));
                } else if ft.is_dir() {
                    return Ok(Some(Found::Dir { host }));
                } else if ft.is_file() {
                    return Ok(Some(Found::File {
                        host,
                        mode: meta.permissions().mode(),
                    }));
                }
            }
        }
        Ok(None)
    }

    fn exists(&self, path: &str) -> Result<bool, StageError> {
        Ok(self.lookup(path)?.is_some())
    }

    /// Copy `path` (file, symlink chain or directory) into the tree under its merged-/usr
    /// name, with the libraries every ELF among them needs.
    pub fn add(&self, tree: &mut Tree, path: &str) -> Result<(), StageError> {
        let canon = merged_usr(path);
        if tree.contains(&canon) {
            return Ok(());
        }
        match self.lookup(path)? {
            None => {
                return Err(StageError::NotFound {
                    path: path.to_owned(),
                    packages: self.names(),
                });
            }
            Some(Found::Symlink { target }) => {
                let base = canon.rsplit_once('/').map_or("/", |(b, _)| b).to_owned();
                let resolved = if target.starts_with('/') {
                    target.clone()
                } else {
                    normalise(&format!("{base}/{target}"))
                };
                tree.symlink(&canon, &target)?;
                self.add(tree, &resolved)?;
            }
            Some(Found::Dir { host }) => {
                tree.dir(&canon, 0o755)?;
                let mut names: Vec<String> = std::fs::read_dir(&host)
                    .map_err(|source| StageError::Io {
                        path: host.clone(),
                        source,
                    })?
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect();
                names.sort();
                for n in names {
                    self.add(tree, &format!("{canon}/{n}"))?;
                }
            }
            Some(Found::File { host, mode }) => {
                let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
                tree.file(&canon, Content::Source(host.clone()), mode)?;
                self.add_needed(tree, &canon, &host)?;
            }
        }
        Ok(())
    }

    /// Add the loader and DT_NEEDED closure of the ELF at `host` (staged as `name`).
    pub fn add_needed(&self, tree: &mut Tree, name: &str, host: &Path) -> Result<(), StageError> {
        let data = std::fs::read(host).map_err(|source| StageError::Io {
            path: host.to_owned(),
            source,
        })?;
        if !elf::is_elf(&data) {
            return Ok(());
        }
        let Some(info) = elf::dynamic_info(&data) else {
            return Ok(());
        };
        if let Some(interp) = &info.interpreter {
            self.add(tree, interp)?;
            // The loader is looked up by its PT_INTERP spelling at run time.
            if tree.resolve(interp).is_none() {
                return Err(StageError::LibraryMissing {
                    binary: name.to_owned(),
                    library: interp.clone(),
                });
            }
        }
        let origin = name.rsplit_once('/').map_or("/", |(b, _)| b).to_owned();
        for lib in &info.needed {
            let dirs: Vec<String> = info
                .runpath
                .iter()
                .map(|d| d.replace("$ORIGIN", &origin).replace("${ORIGIN}", &origin))
                .chain(LIB_DIRS.iter().map(|d| (*d).to_owned()))
                .collect();
            let mut found = false;
            for d in dirs {
                let candidate = format!("{d}/{lib}");
                if self.exists(&candidate)? {
                    self.add(tree, &candidate)?;
                    found = true;
                    break;
                }
            }
            if !found {
                return Err(StageError::LibraryMissing {
                    binary: name.to_owned(),
                    library: lib.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Add an ELF that is not from a package (the workspace's binaries) plus its libraries.
pub fn add_foreign_binary(
    universe: &Universe,
    tree: &mut Tree,
    dest: &str,
    host: &Path,
) -> Result<(), StageError> {
    tree.file(dest, Content::Source(host.to_owned()), 0o755)?;
    universe.add_needed(tree, dest, host)
}

/// Concatenate every CA certificate the package ships (what update-ca-certificates does
/// with the default configuration), sorted by path so the bundle is reproducible.
pub fn ca_bundle(ca_dir: &Path) -> Result<Vec<u8>, StageError> {
    let mut files = Vec::new();
    let mut stack = vec![ca_dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|source| StageError::Io {
            path: d.clone(),
            source,
        })? {
            let p = e
                .map_err(|source| StageError::Io {
                    path: d.clone(),
                    source,
                })?
                .path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "crt") {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let mut pem = std::fs::read(&f).map_err(|source| StageError::Io {
            path: f.clone(),
            source,
        })?;
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        out.extend(pem);
    }
    Ok(out)
}

/// Names that must never be in a node's rootfs, wherever they hide.
pub const FORBIDDEN: &[&str] = &[
    "sh", "bash", "dash", "busybox", "python3", "perl", "ash", "zsh",
];

/// Paths of the tree whose file name is one of [`FORBIDDEN`] (or `python3.*`, `perl5*`).
pub fn forbidden_entries(tree: &Tree) -> Vec<String> {
    tree.nodes
        .iter()
        .filter(|(path, node)| {
            let name = path.rsplit('/').next().unwrap_or("");
            !matches!(node, Node::Dir { .. })
                && (FORBIDDEN.contains(&name)
                    || name.starts_with("python3.")
                    || name.starts_with("perl5"))
        })
        .map(|(p, _)| p.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_maps_only_whole_components() {
        assert_eq!(
            merged_usr("/lib/x86_64-linux-gnu/libc.so.6"),
            "/usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(merged_usr("/sbin/mke2fs"), "/usr/sbin/mke2fs");
        assert_eq!(
            merged_usr("/lib64/ld-linux-x86-64.so.2"),
            "/usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(merged_usr("/libexec/x"), "/libexec/x");
        assert_eq!(merged_usr("/etc/mke2fs.conf"), "/etc/mke2fs.conf");
    }

    #[test]
    fn forbidden_names_are_found_anywhere() {
        let mut t = Tree::default();
        t.bytes("/usr/bin/sh", "x", 0o755).unwrap();
        t.symlink("/usr/local/bin/python3.11", "x").unwrap();
        t.bytes("/usr/bin/shellcheck", "x", 0o755).unwrap();
        assert_eq!(
            forbidden_entries(&t),
            ["/usr/bin/sh", "/usr/local/bin/python3.11"]
        );
    }

    #[test]
    fn package_symlinks_and_libraries_are_followed() {
        let pkg = tempfile::tempdir().unwrap();
        let root = pkg.path();
        std::fs::create_dir_all(root.join("lib/x86_64-linux-gnu")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("lib64")).unwrap();
        // A real dynamic ELF: this test binary (needs libc.so.6 etc. and the loader).
        let me = std::env::current_exe().unwrap();
        std::fs::copy(&me, root.join("usr/bin/tool")).unwrap();
        std::os::unix::fs::symlink("tool", root.join("usr/bin/alias")).unwrap();
        let info = elf::dynamic_info(&std::fs::read(&me).unwrap()).unwrap();
        for lib in &info.needed {
            std::fs::write(root.join("lib/x86_64-linux-gnu").join(lib), b"not elf").unwrap();
        }
        std::fs::write(
            root.join("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            b"ld",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            root.join("lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        let u = Universe {
            packages: vec![("p".into(), root.to_owned())],
        };
        let mut t = Tree::default();
        add_usr_merge_links(&mut t).unwrap();
        u.add(&mut t, "/usr/bin/alias").unwrap();
        assert!(matches!(t.nodes["/usr/bin/alias"], Node::Symlink { .. }));
        assert!(t.contains("/usr/bin/tool"));
        assert!(t.contains("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(matches!(
            t.nodes["/usr/lib64/ld-linux-x86-64.so.2"],
            Node::Symlink { .. }
        ));
        assert!(t.contains("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"));
        assert_eq!(
            t.resolve("/lib64/ld-linux-x86-64.so.2").as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        );

        // A library nobody ships is an error naming binary and library.
        std::fs::remove_file(root.join("lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        let mut t = Tree::default();
        add_usr_merge_links(&mut t).unwrap();
        let err = u.add(&mut t, "/usr/bin/tool").unwrap_err().to_string();
        assert!(err.contains("/usr/bin/tool needs libc.so.6"), "{err}");
    }
}
