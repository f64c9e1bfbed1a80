//! Downloading pinned .debs into a content-addressed cache (`<cache>/debs/<sha256>.deb`)
//! and verifying them. A second build finds every file in the cache and stays offline.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::lock::LockedPackage;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("creating cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("running apt-get download for {package}: {source}")]
    Spawn {
        package: String,
        source: std::io::Error,
    },
    #[error(
        "the archive no longer offers {package} {version} ({detail}); run `basalt-image lock` to re-pin the inputs"
    )]
    Gone {
        package: String,
        version: String,
        detail: String,
    },
    #[error("apt-get download {package}={version} failed: {detail}")]
    Download {
        package: String,
        version: String,
        detail: String,
    },
    #[error("apt-get download {package}={version} produced no .deb in {dir}")]
    NoFile {
        package: String,
        version: String,
        dir: PathBuf,
    },
    #[error(
        "checksum mismatch for {package} {version}: expected sha256 {expected}, got {actual} ({path})"
    )]
    Checksum {
        package: String,
        version: String,
        expected: String,
        actual: String,
        path: PathBuf,
    },
    #[error("storing {package} in the cache at {path}: {source}")]
    Store {
        package: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = std::fs::File::open(path).map_err(|source| FetchError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|source| FetchError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(hex::encode(hasher.finalize()))
}

/// The cache: `debs/` holds verified packages by sha256.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

impl Cache {
    /// `--cache-dir`, else `$XDG_CACHE_HOME/basalt`, else `~/.cache/basalt`.
    pub fn default_root() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("basalt");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".cache").join("basalt")
    }

    pub fn deb_path(&self, pkg: &LockedPackage) -> PathBuf {
        self.root.join("debs").join(format!("{}.deb", pkg.sha256))
    }

    pub fn has(&self, pkg: &LockedPackage) -> bool {
        self.deb_path(pkg).is_file()
    }

    /// Make sure `pkg` is in the cache and verified; downloads it otherwise.
    pub fn ensure(&self, pkg: &LockedPackage) -> Result<PathBuf, FetchError> {
        let dest = self.deb_path(pkg);
        if dest.is_file() {
            // Content-addressed, but the cache may have been tampered with or truncated.
            verify(pkg, &dest)?;
            return Ok(dest);
        }
        let dir = self.root.join("debs");
        std::fs::create_dir_all(&dir).map_err(|source| FetchError::CacheDir {
            path: dir.clone(),
            source,
        })?;
        let tmp = tempfile::tempdir_in(&dir).map_err(|source| FetchError::CacheDir {
            path: dir.clone(),
            source,
        })?;
        let spec = format!("{}={}", pkg.name, pkg.version);
        let out = Command::new("apt-get")
            .args(["download", "-q", &spec])
            .current_dir(tmp.path())
            .output()
            .map_err(|source| FetchError::Spawn {
                package: pkg.name.clone(),
                source,
            })?;
        if !out.status.success() {
            let detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Err(if archive_lacks_version(&detail) {
                FetchError::Gone {
                    package: pkg.name.clone(),
                    version: pkg.version.clone(),
                    detail,
                }
            } else {
                FetchError::Download {
                    package: pkg.name.clone(),
                    version: pkg.version.clone(),
                    detail,
                }
            });
        }
        let file = std::fs::read_dir(tmp.path())
            .map_err(|source| FetchError::Read {
                path: tmp.path().to_owned(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| FetchError::NoFile {
                package: pkg.name.clone(),
                version: pkg.version.clone(),
                dir: tmp.path().to_owned(),
            })?;
        verify(pkg, &file)?;
        std::fs::rename(&file, &dest).map_err(|source| FetchError::Store {
            package: pkg.name.clone(),
            path: dest.clone(),
            source,
        })?;
        Ok(dest)
    }
}

/// Whether apt-get's complaint means the pinned version (or package) is gone from the
/// archive — the lock is stale — rather than a network or disk problem.
pub fn archive_lacks_version(apt_stderr: &str) -> bool {
    [
        "was not found",
        "Can't find a source to download",
        "Unable to locate package",
    ]
    .iter()
    .any(|m| apt_stderr.contains(m))
}

pub fn verify(pkg: &LockedPackage, path: &Path) -> Result<(), FetchError> {
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(&pkg.sha256) {
        return Err(FetchError::Checksum {
            package: pkg.name.clone(),
            version: pkg.version.clone(),
            expected: pkg.sha256.clone(),
            actual,
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::Role;

    #[test]
    fn apt_messages_for_a_vanished_version_mean_a_stale_lock() {
        assert!(archive_lacks_version(
            "E: Version '9.9' for 'containerd' was not found"
        ));
        assert!(archive_lacks_version(
            "E: Unable to locate package nonexistentpkg"
        ));
        assert!(!archive_lacks_version(
            "E: Failed to fetch http://deb.debian.org/... Temporary failure resolving"
        ));
        let err = FetchError::Gone {
            package: "runc".into(),
            version: "1".into(),
            detail: "gone".into(),
        }
        .to_string();
        assert!(err.contains("run `basalt-image lock`"), "{err}");
    }

    #[test]
    fn tampered_cache_entry_is_a_checksum_error_naming_package_and_both_sums() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            root: dir.path().to_owned(),
        };
        let pkg = LockedPackage {
            name: "runc".into(),
            version: "1.1".into(),
            architecture: "amd64".into(),
            sha256: "00".repeat(32),
            size: 3,
            filename: "pool/r.deb".into(),
            role: Role::Rootfs,
        };
        std::fs::create_dir_all(dir.path().join("debs")).unwrap();
        std::fs::write(cache.deb_path(&pkg), b"abc").unwrap();
        let err = cache.ensure(&pkg).unwrap_err().to_string();
        assert!(err.contains("runc 1.1"), "{err}");
        assert!(err.contains(&"00".repeat(32)), "{err}");
        assert!(
            err.contains("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            "{err}"
        );
    }
}
