//! One cgroup v2 per service: every process a service forks stays inside it, so stopping
//! the service kills all of them (`cgroup.kill`), not only the main process.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ServiceError;

/// A service's cgroup directory, e.g. /sys/fs/cgroup/basalt/containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<root>/<service>` (and `root` itself) if missing.
    pub fn create(root: &Path, service: &str) -> Result<Self, ServiceError> {
        let path = root.join(service);
        std::fs::create_dir_all(&path)
            .map_err(|e| ServiceError::io("creating cgroup", &path, e))?;
        // A plain directory (no cgroup2 mount) would "work" and contain nothing.
        if !path.join("cgroup.procs").exists() {
            return Err(ServiceError::io(
                "creating cgroup",
                &path,
                std::io::Error::other("no cgroup.procs: not on a cgroup2 file system"),
            ));
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cgroup.procs` opened for writing. The child writes "0" to it between fork and
    /// exec (see `runner.rs`), which moves itself in before the service's binary runs,
    /// so not even the first instruction runs outside the cgroup. The descriptor is
    /// close-on-exec: the service never inherits it.
    pub fn procs_fd(&self) -> Result<OwnedFd, ServiceError> {
        let path = self.path.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map(OwnedFd::from)
            .map_err(|e| ServiceError::io("opening", &path, e))
    }

    /// The PIDs currently in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        // cgroup.events says "populated 0" once no process is left in the subtree.
        match std::fs::read_to_string(self.path.join("cgroup.events")) {
            Ok(events) => events.lines().any(|l| l.trim() == "populated 0"),
            Err(_) => self.pids().is_empty(),
        }
    }

    /// SIGKILLs every process in the cgroup. `cgroup.kill` (Linux ≥ 5.14) does it
    /// atomically, even for processes forking right now; older kernels get a loop over
    /// `cgroup.procs`.
    pub fn kill_all(&self) -> Result<(), ServiceError> {
        let kill = self.path.join("cgroup.kill");
        if kill.exists() {
            let mut f = OpenOptions::new()
                .write(true)
                .open(&kill)
                .map_err(|e| ServiceError::io("opening", &kill, e))?;
            return f
                .write_all(b"1")
                .map_err(|e| ServiceError::io("writing", &kill, e));
        }
        for pid in self.pids() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Ok(())
    }

    /// Kills what is left, waits (bounded) until the cgroup is empty and removes it.
    pub async fn kill_and_remove(&self, timeout: Duration) -> Result<(), ServiceError> {
        if !self.path.exists() {
            return Ok(());
        }
        self.kill_all()?;
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::io(
                    "emptying cgroup",
                    &self.path,
                    std::io::Error::other(format!(
                        "processes {:?} still alive after {}ms",
                        self.pids(),
                        timeout.as_millis()
                    )),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // rmdir can race the kernel's last bookkeeping of the dead tasks: retry briefly.
        let mut last = None;
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(ServiceError::io(
            "removing cgroup",
            &self.path,
            last.unwrap_or_else(|| std::io::Error::other("busy")),
        ))
    }
}

/// Where a host mounts cgroup2: /sys/fs/cgroup on a pure-v2 system (the Basalt node),
/// /sys/fs/cgroup/unified on hybrid hosts. `None` when neither is cgroup2.
pub fn cgroup2_mount() -> Option<PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                return false;
            };
            // SAFETY: statfs writes into the zeroed struct we own; the path is a valid C string.
            let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::statfs(c.as_ptr(), &mut buf) };
            rc == 0 && buf.f_type as i64 == CGROUP2_SUPER_MAGIC
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creating_under_a_plain_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Cgroup::create(dir.path(), "svc").unwrap_err();
        assert!(
            err.to_string().contains("not on a cgroup2 file system"),
            "{err}"
        );
    }

    /// Needs root and a writable cgroup2 mount; the supervisor tests in runner.rs cover
    /// the full stop sequence against real processes.
    #[tokio::test]
    async fn kill_and_remove_empties_a_real_cgroup() {
        let mount = cgroup2_mount().expect("this test needs a cgroup2 mount");
        let root = mount.join(format!("basalt-test-cg-{}", std::process::id()));
        let cg = Cgroup::create(&root, "sleeper").unwrap();
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("600")
            .spawn()
            .unwrap();
        std::fs::write(cg.path().join("cgroup.procs"), child.id().to_string()).unwrap();
        assert_eq!(cg.pids(), vec![child.id() as i32]);
        assert!(!cg.is_empty());
        let reaper = std::thread::spawn(move || child.wait().unwrap());
        cg.kill_and_remove(Duration::from_secs(5)).await.unwrap();
        let status = reaper.join().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(!cg.path().exists());
        std::fs::remove_dir(&root).unwrap();
    }
}
