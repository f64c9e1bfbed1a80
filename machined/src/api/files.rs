//! `GET /v1/files` and `/v1/files/content`: read-only access to /var and /etc, nothing else.
//! A path is checked twice: lexically (absolute, no `..`, under /var or /etc) and after
//! resolving symlinks, so a link under /var pointing at /root is refused too.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use basalt_api::{FileEntry, FileKind};

/// The directories the files endpoints may read.
pub const ALLOWED: [&str; 2] = ["var", "etc"];
/// The most entries one listing returns; a longer directory is cut (the caller narrows).
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilesError {
    #[error("{path:?} is not an absolute path")]
    NotAbsolute { path: String },
    #[error("{path:?} contains '..'; path traversal is refused")]
    Traversal { path: String },
    #[error("{path:?} is outside /var and /etc, the only trees the API reads")]
    Outside { path: String },
    #[error("{path:?} does not exist")]
    NotFound { path: String },
    #[error("{path:?} is not a regular file")]
    NotAFile { path: String },
    #[error("reading {path:?}: {reason}")]
    Io { path: String, reason: String },
}

/// Maps a node path to the host path under `root` ("/" on a node, a temp dir in tests),
/// refusing anything that is or resolves outside /var and /etc.
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, FilesError> {
    let path = Path::new(requested);
    if !path.is_absolute() || requested.contains('\0') {
        return Err(FilesError::NotAbsolute {
            path: requested.to_owned(),
        });
    }
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(FilesError::Traversal {
                    path: requested.to_owned(),
                });
            }
            Component::Normal(c) => relative.push(c),
            Component::Prefix(_) => {
                return Err(FilesError::NotAbsolute {
                    path: requested.to_owned(),
                });
            }
        }
    }
    let top = relative
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str());
    if !top.is_some_and(|t| ALLOWED.contains(&t)) {
        return Err(FilesError::Outside {
            path: requested.to_owned(),
        });
    }
    let joined = root.join(&relative);
    let resolved = joined.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FilesError::NotFound {
            path: requested.to_owned(),
        },
        _ => FilesError::Io {
            path: requested.to_owned(),
            reason: e.to_string(),
        },
    })?;
    let inside = ALLOWED.iter().any(|dir| {
        root.join(dir)
            .canonicalize()
            .is_ok_and(|allowed| resolved.starts_with(allowed))
    });
    if !inside {
        return Err(FilesError::Outside {
            path: requested.to_owned(),
        });
    }
    Ok(resolved)
}

fn entry(node_path: String, name: String, meta: &std::fs::Metadata) -> FileEntry {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Directory
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    FileEntry {
        name,
        path: node_path,
        kind,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        modified_unix: Some(meta.mtime()),
    }
}

/// Lists a directory (sorted by name), or describes a single file.
pub fn list(root: &Path, requested: &str) -> Result<Vec<FileEntry>, FilesError> {
    let host = resolve(root, requested)?;
    let io = |e: std::io::Error| FilesError::Io {
        path: requested.to_owned(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(&host).map_err(io)?;
    let base = requested.trim_end_matches('/');
    if !meta.is_dir() {
        let name = host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![entry(base.to_owned(), name, &meta)]);
    }
    let mut entries = Vec::new();
    for item in std::fs::read_dir(&host).map_err(io)? {
        let item = item.map_err(io)?;
        let name = item.file_name().to_string_lossy().into_owned();
        // An entry that vanished between readdir and lstat is simply not listed.
        let Ok(meta) = item.path().symlink_metadata() else {
            continue;
        };
        entries.push(entry(format!("{base}/{name}"), name, &meta));
        if entries.len() >= MAX_ENTRIES {
            break;
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Opens a regular file for reading.
pub fn open(root: &Path, requested: &str) -> Result<std::fs::File, FilesError> {
    let host = resolve(root, requested)?;
    let io = |e: std::io::Error| FilesError::Io {
        path: requested.to_owned(),
        reason: e.to_string(),
    };
    let meta = std::fs::metadata(&host).map_err(io)?;
    if !meta.is_file() {
        return Err(FilesError::NotAFile {
            path: requested.to_owned(),
        });
    }
    std::fs::File::open(&host).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("var/log")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("root")).unwrap();
        std::fs::write(root.join("var/log/machined.log"), "hello\n").unwrap();
        std::fs::write(root.join("root/secret"), "no").unwrap();
        std::os::unix::fs::symlink(root.join("root/secret"), root.join("var/escape")).unwrap();
        std::os::unix::fs::symlink(root.join("var/log/machined.log"), root.join("etc/inside"))
            .unwrap();
        dir
    }

    #[test]
    fn allows_var_and_etc_only() {
        let dir = tree();
        let root = dir.path();
        assert!(resolve(root, "/var/log/machined.log").is_ok());
        assert!(resolve(root, "/etc").is_ok());
        assert!(matches!(
            resolve(root, "/root/secret"),
            Err(FilesError::Outside { .. })
        ));
        assert!(matches!(
            resolve(root, "/"),
            Err(FilesError::Outside { .. })
        ));
        assert!(matches!(
            resolve(root, "var/log"),
            Err(FilesError::NotAbsolute { .. })
        ));
        assert!(matches!(
            resolve(root, "/variable"),
            Err(FilesError::Outside { .. })
        ));
    }

    #[test]
    fn refuses_traversal_lexically_and_through_symlinks() {
        let dir = tree();
        let root = dir.path();
        assert!(matches!(
            resolve(root, "/var/../root/secret"),
            Err(FilesError::Traversal { .. })
        ));
        assert!(matches!(
            resolve(root, "/var/log/../../etc"),
            Err(FilesError::Traversal { .. })
        ));
        assert!(matches!(
            resolve(root, "/var/escape"),
            Err(FilesError::Outside { .. })
        ));
        // A link that stays inside the allowed trees is fine.
        assert!(resolve(root, "/etc/inside").is_ok());
    }

    #[test]
    fn lists_sorted_entries_with_node_paths() {
        let dir = tree();
        let entries = list(dir.path(), "/var").unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["escape", "log"]);
        assert_eq!(entries[1].path, "/var/log");
        assert_eq!(entries[1].kind, FileKind::Directory);
        assert_eq!(entries[0].kind, FileKind::Symlink);
        let file = list(dir.path(), "/var/log/machined.log").unwrap();
        assert_eq!(file[0].size, 6);
        assert!(matches!(
            open(dir.path(), "/var/log"),
            Err(FilesError::NotAFile { .. })
        ));
    }
}
