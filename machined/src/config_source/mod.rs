//! Where the machine config comes from, first hit wins:
//! 1. kernel cmdline `basalt.config=<http(s) URL>` (needs the network),
//! 2. QEMU fw_cfg `opt/dev.basalt/config`,
//! 3. a config drive (FAT/ISO labelled `cidata` or `config-2`),
//! 4. the copy persisted on STATE (`/system/state/config.yaml`).
//!
//! A source that is present is authoritative: if it cannot be read, or what it holds
//! does not parse and validate, acquisition stops with an error naming the source and
//! the node goes to maintenance mode. It never falls through to a lower source, which
//! would silently boot an older config than the one the operator handed over.
//!
//! Sequencer calls, in boot order (see docs/disks.md):
//! 1. before the network: `disks::mount_existing_state(&disks::Paths::system())`,
//!    so the STATE copy is readable;
//! 2. phase "config", after the network when [`needs_network`] says so:
//!    `acquire(&Environment::system(platform)).await` — `Ok(Some(a))` boot with
//!    `a.config`; `Ok(None)` maintenance mode; `Err(e)` maintenance mode showing `e`;
//! 3. phase "disks": `disks::prepare(disks::install_disk(&a.config), &Paths::system())`
//!    (or `prepare(None, …)` in maintenance mode), then
//!    `keep_on_state(&a, &StateStore::system(platform))`;
//! 4. on every `api::ApplyCommand`: `StateStore::system(platform).store_apply(&cmd.apply)`
//!    before replying;
//! 5. shutdown: `disks::unmount_all()`.

#![allow(dead_code, unused_imports)] // until the sequencer (engineer D) calls in

use crate::log::{info, warning};

pub mod cmdline;
pub mod drive;
pub mod http;
pub mod persist;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::path::PathBuf;

use basalt_config::{MachineConfig, Mode};

pub use persist::{PersistError, StateStore, persist_config, read_persisted};

/// Parses (strictly, any of YAML/JSON/Ignition) and validates a config for a node on
/// `platform`; every problem is one line naming its field.
pub fn check(bytes: &[u8], platform: Mode) -> Result<MachineConfig, Vec<String>> {
    let config = MachineConfig::parse(bytes).map_err(|e| vec![e.to_string()])?;
    config.validate(platform).map_err(|e| e.lines())?;
    Ok(config)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Cmdline,
    FwCfg,
    ConfigDrive,
    State,
}

impl SourceKind {
    /// In the order they are tried.
    pub const ORDER: [SourceKind; 4] = [
        SourceKind::Cmdline,
        SourceKind::FwCfg,
        SourceKind::ConfigDrive,
        SourceKind::State,
    ];
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Cmdline => "kernel cmdline basalt.config",
            SourceKind::FwCfg => "fw_cfg",
            SourceKind::ConfigDrive => "config drive",
            SourceKind::State => "STATE",
        })
    }
}

/// What looking at one source found.
#[derive(Debug)]
pub enum Probe {
    /// The source holds a config (`origin` says exactly where: URL, file, device).
    Found { origin: String, bytes: Vec<u8> },
    /// The source is not there; the reason is logged and the next source is tried.
    Absent(String),
    /// The source is there but could not be read.
    Failed(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcquireError {
    #[error("the config from {from} ({origin}) is invalid: {}", .errors.join("; "))]
    Invalid {
        from: SourceKind,
        origin: String,
        errors: Vec<String>,
    },
    #[error("{from} holds a config that could not be read: {reason}")]
    Unreadable { from: SourceKind, reason: String },
}

/// The config the node runs with, and where it came from.
#[derive(Debug, Clone)]
pub struct Acquired {
    pub source: SourceKind,
    pub origin: String,
    /// Exactly the bytes the source held; these are what gets persisted.
    pub bytes: Vec<u8>,
    pub config: MachineConfig,
}

/// The next step after probing one source: the pure rule behind [`acquire`].
#[derive(Debug)]
pub enum Step {
    Take(Box<Acquired>),
    Next,
    Stop(AcquireError),
}

pub fn decide(source: SourceKind, probe: Probe, platform: Mode) -> Step {
    match probe {
        Probe::Absent(_) => Step::Next,
        Probe::Failed(reason) => Step::Stop(AcquireError::Unreadable {
            from: source,
            reason,
        }),
        Probe::Found { origin, bytes } => match check(&bytes, platform) {
            Ok(config) => Step::Take(Box::new(Acquired {
                source,
                origin,
                bytes,
                config,
            })),
            Err(errors) => Step::Stop(AcquireError::Invalid {
                from: source,
                origin,
                errors,
            }),
        },
    }
}

/// Where the sources are; `Environment::system()` on a node, temp paths in tests.
#[derive(Debug, Clone)]
pub struct Environment {
    pub cmdline: PathBuf,
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub state_dir: PathBuf,
    pub drive_mount: PathBuf,
    pub ca_bundle: PathBuf,
    pub retry: http::RetryPolicy,
    /// What the config is validated against (metal requires `machine.install`).
    pub platform: Mode,
}

impl Environment {
    pub fn system(platform: Mode) -> Environment {
        Environment {
            cmdline: "/proc/cmdline".into(),
            sys: "/sys".into(),
            dev: "/dev".into(),
            state_dir: crate::disks::STATE_MOUNT.into(),
            drive_mount: "/run/basalt/config-drive".into(),
            ca_bundle: http::CA_BUNDLE.into(),
            retry: http::RetryPolicy::default(),
            platform,
        }
    }
}

const FW_CFG_ENTRY: &str = "firmware/qemu_fw_cfg/by_name/opt/dev.basalt/config/raw";

/// True when the kernel cmdline names a URL, i.e. acquisition needs the network first.
pub fn needs_network(env: &Environment) -> bool {
    std::fs::read_to_string(&env.cmdline)
        .ok()
        .and_then(|c| cmdline::config_url(&c).ok().flatten())
        .is_some()
}

async fn probe_cmdline(env: &Environment) -> Probe {
    let text = match std::fs::read_to_string(&env.cmdline) {
        Ok(t) => t,
        Err(e) => return Probe::Absent(format!("{} unreadable: {e}", env.cmdline.display())),
    };
    match cmdline::config_url(&text) {
        Ok(None) => Probe::Absent("no basalt.config= parameter".into()),
        Err(e) => Probe::Failed(e.to_string()),
        Ok(Some(url)) => {
            info!("config: fetching {url}");
            match http::fetch(&url, &env.retry, &env.ca_bundle).await {
                Ok(bytes) => Probe::Found {
                    origin: url.to_string(),
                    bytes,
                },
                Err(e) => Probe::Failed(e.to_string()),
            }
        }
    }
}

fn probe_fw_cfg(env: &Environment) -> Probe {
    let root = env.sys.join("firmware/qemu_fw_cfg");
    if !root.is_dir() {
        return Probe::Absent(format!(
            "no {} (not QEMU, or the qemu_fw_cfg module is not loaded)",
            root.display()
        ));
    }
    let entry = env.sys.join(FW_CFG_ENTRY);
    match std::fs::read(&entry) {
        Ok(bytes) => Probe::Found {
            origin: entry.display().to_string(),
            bytes,
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Probe::Absent("QEMU passed no opt/dev.basalt/config".into())
        }
        Err(e) => Probe::Failed(format!("reading {}: {e}", entry.display())),
    }
}

fn probe_drive(env: &Environment) -> Probe {
    let drives = drive::find(&env.sys, &env.dev);
    let Some(d) = drives.first() else {
        return Probe::Absent("no block device labelled cidata or config-2".into());
    };
    if drives.len() > 1 {
        info!(
            "config: {} config drives; using {}",
            drives.len(),
            d.device.display()
        );
    }
    match drive::read_user_data(d, &env.drive_mount) {
        Ok(Some(bytes)) => Probe::Found {
            origin: format!("{}:{}", d.device.display(), d.kind.user_data()),
            bytes,
        },
        Ok(None) => Probe::Absent(format!(
            "{} ({}) has no {}",
            d.device.display(),
            d.label,
            d.kind.user_data()
        )),
        Err(e) => Probe::Failed(e.to_string()),
    }
}

fn probe_state(env: &Environment) -> Probe {
    match read_persisted(&env.state_dir) {
        Ok(Some(bytes)) => Probe::Found {
            origin: env
                .state_dir
                .join(persist::CONFIG_FILE)
                .display()
                .to_string(),
            bytes,
        },
        Ok(None) => Probe::Absent(format!(
            "no {} (first boot, or STATE not mounted)",
            env.state_dir.join(persist::CONFIG_FILE).display()
        )),
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// After the disks phase: stores a config that came from the cmdline, fw_cfg or a
/// config drive on STATE, so the node still boots once that source is gone. A config
/// read from STATE, or identical to the stored one, is not rewritten. Returns whether
/// it wrote.
pub fn keep_on_state(acquired: &Acquired, store: &StateStore) -> Result<bool, PersistError> {
    if acquired.source == SourceKind::State
        || store.read()?.as_deref() == Some(acquired.bytes.as_slice())
    {
        return Ok(false);
    }
    store.persist(&acquired.bytes)?;
    info!(
        "config: stored the config from {} on STATE",
        acquired.source
    );
    Ok(true)
}

/// Tries the sources in order. `Ok(None)`: no source has a config (maintenance mode,
/// waiting for one). `Err`: a source has a broken config (maintenance mode, showing
/// the error). Every source's verdict is logged; the chosen one is named.
pub async fn acquire(env: &Environment) -> Result<Option<Acquired>, AcquireError> {
    for source in SourceKind::ORDER {
        let probe = match source {
            SourceKind::Cmdline => probe_cmdline(env).await,
            SourceKind::FwCfg => probe_fw_cfg(env),
            SourceKind::ConfigDrive => probe_drive(env),
            SourceKind::State => probe_state(env),
        };
        if let Probe::Absent(reason) = &probe {
            info!("config: {source}: {reason}");
        }
        match decide(source, probe, env.platform) {
            Step::Next => {}
            Step::Take(acquired) => {
                info!("config from {source} ({})", acquired.origin);
                return Ok(Some(*acquired));
            }
            Step::Stop(e) => {
                warning!("config: {e}");
                return Err(e);
            }
        }
    }
    info!("config: no source has a config; entering maintenance mode");
    Ok(None)
}
