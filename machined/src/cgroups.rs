//! The unified cgroup hierarchy: mounted on /sys/fs/cgroup with the controllers
//! kubelet and the supervisor need enabled for child cgroups.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Controllers child cgroups get. `true` = required (kubelet refuses to run without).
pub const CONTROLLERS: &[(&str, bool)] = &[
    ("cpuset", false),
    ("cpu", true),
    ("io", false),
    ("memory", true),
    ("pids", true),
    ("hugetlb", false),
];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("mounting cgroup2 on {target}: {source}")]
    Mount { target: PathBuf, source: nix::Error },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("enabling {controllers:?} in {path}: {source}")]
    Enable {
        path: PathBuf,
        controllers: String,
        source: std::io::Error,
    },
    #[error(
        "the kernel lacks the required cgroup controllers {missing:?} (it offers {available:?})"
    )]
    Missing {
        missing: Vec<String>,
        available: String,
    },
}

/// Which controllers to enable out of what `cgroup.controllers` offers.
#[derive(Debug, PartialEq, Eq)]
pub struct ControllerPlan {
    pub enable: Vec<&'static str>,
    pub missing_optional: Vec<&'static str>,
    pub missing_required: Vec<&'static str>,
}

impl ControllerPlan {
    /// The line to write to cgroup.subtree_control: `+cpu +memory …`.
    pub fn subtree_control(&self) -> String {
        self.enable
            .iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub fn plan(available: &str) -> ControllerPlan {
    let have: Vec<&str> = available.split_whitespace().collect();
    let mut plan = ControllerPlan {
        enable: Vec::new(),
        missing_optional: Vec::new(),
        missing_required: Vec::new(),
    };
    for &(name, required) in CONTROLLERS {
        if have.contains(&name) {
            plan.enable.push(name);
        } else if required {
            plan.missing_required.push(name);
        } else {
            plan.missing_optional.push(name);
        }
    }
    plan
}

/// Mounts cgroup2 (EBUSY: already mounted, fine) and enables the controllers.
pub fn setup(root: &Path) -> Result<ControllerPlan, CgroupError> {
    match mount(
        Some("cgroup2"),
        root,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME,
        Some("nsdelegate,memory_recursiveprot"),
    ) {
        Ok(()) | Err(nix::Error::EBUSY) => {}
        Err(source) => {
            return Err(CgroupError::Mount {
                target: root.to_path_buf(),
                source,
            });
        }
    }
    enable(root)
}

/// Enables the planned controllers under `root` (also used on a test directory).
pub fn enable(root: &Path) -> Result<ControllerPlan, CgroupError> {
    let path = root.join("cgroup.controllers");
    let available =
        std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
    let plan = plan(&available);
    if !plan.missing_required.is_empty() {
        return Err(CgroupError::Missing {
            missing: plan
                .missing_required
                .iter()
                .map(|s| s.to_string())
                .collect(),
            available: available.trim().to_owned(),
        });
    }
    let path = root.join("cgroup.subtree_control");
    let controllers = plan.subtree_control();
    std::fs::write(&path, &controllers).map_err(|source| CgroupError::Enable {
        path,
        controllers,
        source,
    })?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_enables_what_exists_and_names_what_does_not() {
        let p = plan("cpuset cpu io memory pids rdma misc\n");
        assert_eq!(p.enable, ["cpuset", "cpu", "io", "memory", "pids"]);
        assert_eq!(p.missing_optional, ["hugetlb"]);
        assert!(p.missing_required.is_empty());
        assert_eq!(p.subtree_control(), "+cpuset +cpu +io +memory +pids");
        let p = plan("cpu io");
        assert_eq!(p.missing_required, ["memory", "pids"]);
    }

    #[test]
    fn enable_writes_subtree_control_and_refuses_without_memory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpu memory pids io\n",
        )
        .unwrap();
        let p = enable(dir.path()).unwrap();
        assert_eq!(p.enable, ["cpu", "io", "memory", "pids"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +io +memory +pids"
        );
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        let err = enable(dir.path()).unwrap_err();
        assert!(err.to_string().contains("[\"memory\"]"), "{err}");
    }
}
