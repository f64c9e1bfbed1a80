//! Where a lab lives on the host and what `lab.yaml` records about it.
//!
//! ```text
//! <labs root>/<name>/          ($BASALT_LABS_DIR or ~/.basalt/labs, or --state-dir)
//!   lab.yaml                   this module's LabRecord: nodes, pids, ports, paths
//!   secrets.yaml controlplane.yaml worker.yaml basaltconfig      (mode 0600)
//!   <node>.log                 serial console
//!   <node>.qemu-stderr.log     QEMU's own errors
//!   <node>.monitor.sock        human monitor      <node>.qmp.sock   QMP
//!   <node>.raw                 the node's disk    <node>.OVMF_VARS.fd (disk boots)
//!   <node>.pid                 QEMU's pid (= its process group)
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plan::{LabName, NodeRole};

/// Overrides the labs root (default `~/.basalt/labs`).
pub const LABS_DIR_ENV: &str = "BASALT_LABS_DIR";
/// The record's file name inside a state directory.
pub const RECORD_FILE: &str = "lab.yaml";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "neither {LABS_DIR_ENV} nor HOME is set, so there is no default labs directory: pass --state-dir"
    )]
    NoHome,
    #[error("no lab at {dir}: {file} does not exist (create one with `basaltctl lab create`)")]
    NoLab { dir: PathBuf, file: PathBuf },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a lab record: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("serialising the lab record: {0}")]
    Serialise(#[from] serde_yaml::Error),
}

/// The labs root: `$BASALT_LABS_DIR`, else `$HOME/.basalt/labs`.
pub fn labs_root() -> Result<PathBuf, StateError> {
    labs_root_from(
        std::env::var_os(LABS_DIR_ENV).map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn labs_root_from(env: Option<PathBuf>, home: Option<PathBuf>) -> Result<PathBuf, StateError> {
    match (env, home) {
        (Some(dir), _) if !dir.as_os_str().is_empty() => Ok(dir),
        (_, Some(home)) if !home.as_os_str().is_empty() => Ok(home.join(".basalt").join("labs")),
        _ => Err(StateError::NoHome),
    }
}

/// The state directory of a lab: `--state-dir` if given, else `<labs root>/<name>`.
pub fn state_dir(name: &LabName, explicit: Option<&Path>) -> Result<PathBuf, StateError> {
    match explicit {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Ok(labs_root()?.join(name.as_str())),
    }
}

/// The paths of one lab's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layout { dir: dir.into() }
    }
    pub fn record(&self) -> PathBuf {
        self.dir.join(RECORD_FILE)
    }
    pub fn secrets(&self) -> PathBuf {
        self.dir.join("secrets.yaml")
    }
    pub fn controlplane_config(&self) -> PathBuf {
        self.dir.join("controlplane.yaml")
    }
    pub fn worker_config(&self) -> PathBuf {
        self.dir.join("worker.yaml")
    }
    pub fn basaltconfig(&self) -> PathBuf {
        self.dir.join("basaltconfig")
    }
    /// The serial console; the QEMU builder puts the monitor socket and QEMU's stderr
    /// next to it (`<node>.monitor.sock`, `<node>.qemu-stderr.log`).
    pub fn console_log(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.log"))
    }
    pub fn monitor_socket(&self, node: &str) -> PathBuf {
        self.console_log(node).with_extension("monitor.sock")
    }
    pub fn qmp_socket(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.qmp.sock"))
    }
    pub fn disk(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.raw"))
    }
    pub fn ovmf_vars(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.OVMF_VARS.fd"))
    }
    pub fn pid_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.pid"))
    }
}

/// Host ports forwarded to one node (on 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodePorts {
    /// → the node API (50000).
    pub api: u16,
    /// → the Kubernetes API server (6443).
    pub kubernetes: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    pub role: NodeRole,
    /// QEMU's pid, which is also its process group; `None` until QEMU started.
    pub pid: Option<u32>,
    pub ports: NodePorts,
    pub console_log: PathBuf,
    /// `None` for a diskless (`--pxe --no-disk`) node.
    pub disk: Option<PathBuf>,
    pub monitor_socket: PathBuf,
    pub qmp_socket: PathBuf,
}

/// `lab.yaml`: everything `lab destroy`, `lab list` and `lab console` need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabRecord {
    pub name: LabName,
    pub state_dir: PathBuf,
    pub image_dir: PathBuf,
    pub pxe: bool,
    /// `kvm` or `tcg`.
    pub accel: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub disk_size: String,
    pub created_unix: u64,
    pub basaltconfig: PathBuf,
    pub nodes: Vec<NodeRecord>,
}

impl LabRecord {
    pub fn load(dir: &Path) -> Result<LabRecord, StateError> {
        let path = Layout::new(dir).record();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NoLab {
                    dir: dir.to_path_buf(),
                    file: path,
                });
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        serde_yaml::from_str(&text).map_err(|source| StateError::Parse { path, source })
    }

    /// Writes atomically (temp file + rename) so a crash never leaves half a record.
    pub fn save(&self) -> Result<(), StateError> {
        let path = Layout::new(&self.state_dir).record();
        let tmp = path.with_extension("yaml.tmp");
        let text = serde_yaml::to_string(self)?;
        std::fs::write(&tmp, text).map_err(|source| StateError::Write {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| StateError::Write { path, source })
    }

    /// Every host port this lab holds.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .flat_map(|n| [n.ports.api, n.ports.kubernetes])
    }
}

/// The labs under `root` (directories holding a lab.yaml), sorted by directory name;
/// a record that does not parse is returned as its error, not skipped.
pub fn list_labs(root: &Path) -> Result<Vec<Result<LabRecord, StateError>>, StateError> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateError::Read {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| Layout::new(p).record().is_file())
        .collect();
    dirs.sort();
    Ok(dirs.iter().map(|d| LabRecord::load(d)).collect())
}

/// Host ports recorded by the labs under `root`.
pub fn taken_ports(root: &Path) -> BTreeSet<u16> {
    list_labs(root)
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .flat_map(|r| r.ports().collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn record(dir: &Path, name: &str, api: u16) -> LabRecord {
        let layout = Layout::new(dir);
        LabRecord {
            name: name.parse().unwrap(),
            state_dir: dir.to_path_buf(),
            image_dir: "/img".into(),
            pxe: false,
            accel: "tcg".into(),
            memory_mib: 2048,
            cpus: 2,
            disk_size: "4G".into(),
            created_unix: 1,
            basaltconfig: layout.basaltconfig(),
            nodes: vec![NodeRecord {
                name: "controlplane-1".into(),
                role: NodeRole::Controlplane,
                pid: Some(4242),
                ports: NodePorts {
                    api,
                    kubernetes: api + 1,
                },
                console_log: layout.console_log("controlplane-1"),
                disk: Some(layout.disk("controlplane-1")),
                monitor_socket: layout.monitor_socket("controlplane-1"),
                qmp_socket: layout.qmp_socket("controlplane-1"),
            }],
        }
    }

    #[test]
    fn layout_names_every_file_after_its_node() {
        let l = Layout::new("/s/lab");
        assert_eq!(l.record(), Path::new("/s/lab/lab.yaml"));
        assert_eq!(l.basaltconfig(), Path::new("/s/lab/basaltconfig"));
        assert_eq!(l.console_log("cp-1"), Path::new("/s/lab/cp-1.log"));
        // Must match where the QEMU builder opens the monitor for that console log.
        assert_eq!(
            l.monitor_socket("cp-1"),
            Path::new("/s/lab/cp-1.monitor.sock")
        );
        assert_eq!(l.qmp_socket("cp-1"), Path::new("/s/lab/cp-1.qmp.sock"));
        assert_eq!(l.disk("cp-1"), Path::new("/s/lab/cp-1.raw"));
        assert_eq!(l.pid_file("cp-1"), Path::new("/s/lab/cp-1.pid"));
    }

    #[test]
    fn labs_root_prefers_the_environment_then_home() {
        assert_eq!(
            labs_root_from(Some("/x".into()), Some("/home/a".into())).unwrap(),
            Path::new("/x")
        );
        assert_eq!(
            labs_root_from(None, Some("/home/a".into())).unwrap(),
            Path::new("/home/a/.basalt/labs")
        );
        assert!(matches!(
            labs_root_from(Some("".into()), None),
            Err(StateError::NoHome)
        ));
        let name: LabName = "lab".parse().unwrap();
        assert_eq!(
            state_dir(&name, Some(Path::new("/elsewhere"))).unwrap(),
            Path::new("/elsewhere")
        );
    }

    #[test]
    fn record_round_trips_and_lists_with_ports() {
        let root = tempfile::tempdir().unwrap();
        for (name, port) in [("b", 40010), ("a", 40020)] {
            let dir = root.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            record(&dir, name, port).save().unwrap();
        }
        std::fs::create_dir(root.path().join("not-a-lab")).unwrap();
        std::fs::create_dir(root.path().join("broken")).unwrap();
        std::fs::write(root.path().join("broken/lab.yaml"), "name: [").unwrap();

        let loaded = LabRecord::load(&root.path().join("a")).unwrap();
        assert_eq!(loaded, record(&root.path().join("a"), "a", 40020));
        let labs = list_labs(root.path()).unwrap();
        assert_eq!(labs.len(), 3);
        assert_eq!(labs[0].as_ref().unwrap().name.as_str(), "a");
        assert!(
            matches!(labs[2], Err(StateError::Parse { .. })),
            "{:?}",
            labs[2]
        );
        assert_eq!(
            taken_ports(root.path()),
            [40010, 40011, 40020, 40021].into()
        );
        assert!(list_labs(&root.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_missing_lab_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = LabRecord::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("lab.yaml does not exist"), "{err}");
        assert!(err.contains("basaltctl lab create"), "{err}");
    }
}
