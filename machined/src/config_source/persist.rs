//! The machine config's copy on STATE: `config.yaml`, replaced atomically.
//!
//! A new config is validated, written to `.config.yaml.tmp` in the same directory,
//! fsynced, renamed over `config.yaml`, and the directory is fsynced. A crash at any
//! point leaves either the old or the new file, never a mix, and an invalid config is
//! never written at all.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use basalt_config::{MachineConfig, Mode};

use crate::api::{ProviderError, ValidatedApply};

pub const CONFIG_FILE: &str = "config.yaml";
const TEMP_FILE: &str = ".config.yaml.tmp";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("the config was not stored because it is invalid: {}", .errors.join("; "))]
    Invalid { errors: Vec<String> },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A validated config written to the temp file and flushed, not yet visible.
/// `commit` makes it the stored config; dropping it instead (a crash, in effect)
/// leaves the previous one in place.
#[derive(Debug)]
pub struct Staged {
    dir: PathBuf,
    config: MachineConfig,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PersistError {
    let path = path.to_path_buf();
    move |source| PersistError::Io {
        action,
        path,
        source,
    }
}

/// Validates `bytes` for `platform` and writes them to the temp file in `dir`, flushed.
pub fn stage(dir: &Path, bytes: &[u8], platform: Mode) -> Result<Staged, PersistError> {
    let config =
        super::check(bytes, platform).map_err(|errors| PersistError::Invalid { errors })?;
    let temp = dir.join(TEMP_FILE);
    // The config carries private keys: owner-only from the first byte written.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&temp)
        .map_err(io("creating", &temp))?;
    f.write_all(bytes).map_err(io("writing", &temp))?;
    f.sync_all().map_err(io("flushing", &temp))?;
    Ok(Staged {
        dir: dir.to_path_buf(),
        config,
    })
}

impl Staged {
    /// Renames the temp file over `config.yaml` and flushes the directory entry.
    pub fn commit(self) -> Result<MachineConfig, PersistError> {
        let temp = self.dir.join(TEMP_FILE);
        let target = self.dir.join(CONFIG_FILE);
        std::fs::rename(&temp, &target).map_err(io("renaming into place", &target))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("flushing the directory", &self.dir))?;
        Ok(self.config)
    }
}

/// Stores `bytes` as the node's config in `dir` (normally /system/state), atomically.
/// Returns the parsed config so the caller hands on exactly what was stored.
pub fn persist_config(
    dir: &Path,
    bytes: &[u8],
    platform: Mode,
) -> Result<MachineConfig, PersistError> {
    stage(dir, bytes, platform)?.commit()
}

/// The stored config's bytes; `Ok(None)` when none was ever stored. A temp file left
/// by a crash is ignored: it was never committed.
pub fn read_persisted(dir: &Path) -> Result<Option<Vec<u8>>, PersistError> {
    let path = dir.join(CONFIG_FILE);
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", &path)(e)),
    }
}

/// Persistence on STATE as a value other modules hold: the API's maintenance-mode
/// apply hands it the operator's config.
#[derive(Debug, Clone)]
pub struct StateStore {
    pub dir: PathBuf,
    pub platform: Mode,
}

impl StateStore {
    pub fn system(platform: Mode) -> StateStore {
        StateStore {
            dir: crate::disks::STATE_MOUNT.into(),
            platform,
        }
    }

    pub fn persist(&self, bytes: &[u8]) -> Result<MachineConfig, PersistError> {
        persist_config(&self.dir, bytes, self.platform)
    }

    /// Stores an apply the API validated (see `api::ApplyCommand`: the config must be on
    /// STATE before the sequencer replies). Validation runs again here, because this is
    /// the one place that writes the file and it never writes an invalid config.
    pub fn store_apply(&self, apply: &ValidatedApply) -> Result<MachineConfig, ProviderError> {
        self.persist(apply.document.as_bytes())
            .map_err(|e| match e {
                PersistError::Invalid { errors } => ProviderError::Conflict(format!(
                    "the config was not stored because it is invalid: {}",
                    errors.join("; ")
                )),
                e @ PersistError::Io { .. } => ProviderError::Failed {
                    what: "storing the config on STATE",
                    reason: e.to_string(),
                },
            })
    }

    pub fn read(&self) -> Result<Option<Vec<u8>>, PersistError> {
        read_persisted(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const VALID: &[u8] = include_bytes!("../../tests/data/config-valid-worker.yaml");
    const INVALID: &[u8] = include_bytes!("../../tests/data/config-bad-many-problems.yaml");

    fn second_config() -> Vec<u8> {
        String::from_utf8(VALID.to_vec())
            .unwrap()
            .replace("hostname: worker-1", "hostname: worker-2")
            .into_bytes()
    }

    #[test]
    fn persisted_config_reads_back_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_persisted(dir.path()).unwrap(), None);
        let c = persist_config(dir.path(), VALID, Mode::Metal).unwrap();
        assert_eq!(c.machine.hostname.unwrap().to_string(), "worker-1");
        assert_eq!(read_persisted(dir.path()).unwrap().unwrap(), VALID);
        let mode = std::fs::metadata(dir.path().join(CONFIG_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the config carries private keys");
        assert!(!dir.path().join(TEMP_FILE).exists());
        // Replacing works and leaves no temp file behind.
        persist_config(dir.path(), &second_config(), Mode::Metal).unwrap();
        assert_eq!(
            read_persisted(dir.path()).unwrap().unwrap(),
            second_config()
        );
        assert!(!dir.path().join(TEMP_FILE).exists());
    }

    #[test]
    fn invalid_config_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        persist_config(dir.path(), VALID, Mode::Metal).unwrap();
        let err = persist_config(dir.path(), INVALID, Mode::Metal).unwrap_err();
        let PersistError::Invalid { errors } = &err else {
            panic!("{err}")
        };
        assert!(errors.len() > 1);
        assert_eq!(read_persisted(dir.path()).unwrap().unwrap(), VALID);
        assert!(!dir.path().join(TEMP_FILE).exists(), "nothing was staged");
    }

    #[test]
    fn crash_between_write_and_rename_keeps_the_old_config() {
        let dir = tempfile::tempdir().unwrap();
        persist_config(dir.path(), VALID, Mode::Metal).unwrap();
        // Staged and flushed, then the machine "dies" before the rename.
        let staged = stage(dir.path(), &second_config(), Mode::Metal).unwrap();
        drop(staged);
        assert!(dir.path().join(TEMP_FILE).exists());
        assert_eq!(read_persisted(dir.path()).unwrap().unwrap(), VALID);
        // The next boot's persist overwrites the leftover and commits cleanly.
        persist_config(dir.path(), &second_config(), Mode::Metal).unwrap();
        assert_eq!(
            read_persisted(dir.path()).unwrap().unwrap(),
            second_config()
        );
    }

    #[test]
    fn failed_rename_keeps_the_old_config() {
        let dir = tempfile::tempdir().unwrap();
        persist_config(dir.path(), VALID, Mode::Metal).unwrap();
        let staged = stage(dir.path(), &second_config(), Mode::Metal).unwrap();
        // Something removes the temp file before the rename (a reset racing an apply).
        std::fs::remove_file(dir.path().join(TEMP_FILE)).unwrap();
        let err = staged.commit().unwrap_err();
        assert!(err.to_string().starts_with("renaming into place"), "{err}");
        assert_eq!(read_persisted(dir.path()).unwrap().unwrap(), VALID);
    }

    #[test]
    fn missing_state_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("not-mounted");
        let err = persist_config(&gone, VALID, Mode::Metal).unwrap_err();
        assert!(err.to_string().contains("not-mounted"), "{err}");
    }

    #[test]
    fn store_apply_maps_errors_for_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore {
            dir: dir.path().to_path_buf(),
            platform: Mode::Metal,
        };
        assert_eq!(store.read().unwrap(), None);
        store.persist(VALID).unwrap();
        assert_eq!(store.read().unwrap().unwrap(), VALID);
    }
}
