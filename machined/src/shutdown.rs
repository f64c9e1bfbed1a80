//! The way down: stop services (hooks registered by their owners, run in reverse
//! order of registration), sync, unmount what can hold dirty data, then reboot or power
//! off. As a normal process (tests) it stops after the hooks and exits instead.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, umount2};

use crate::log::{info, warning};

/// What the node does at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

impl std::fmt::Display for PowerAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerAction::Reboot => "reboot",
            PowerAction::PowerOff => "poweroff",
        })
    }
}

type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Stop hooks. The services module registers "stop everything" here; hooks run last
/// registered first, each bounded by [`HOOK_TIMEOUT`].
#[derive(Default)]
pub struct Hooks {
    hooks: Mutex<Vec<(String, Hook)>>,
}

pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

impl Hooks {
    #[allow(dead_code)] // called by the services phase once it exists
    pub fn register<F, Fut>(&self, name: impl Into<String>, hook: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        hooks.push((name.into(), Box::new(move || Box::pin(hook()))));
    }

    async fn run(&self) {
        let hooks = std::mem::take(&mut *self.hooks.lock().unwrap_or_else(|e| e.into_inner()));
        for (name, hook) in hooks.into_iter().rev() {
            let start = Instant::now();
            match tokio::time::timeout(HOOK_TIMEOUT, hook()).await {
                Ok(()) => info!(
                    "shutdown: {name} stopped ({} ms)",
                    start.elapsed().as_millis()
                ),
                Err(_) => {
                    warning!("shutdown: {name} did not stop within {HOOK_TIMEOUT:?}; going on")
                }
            }
        }
    }
}

/// One line of /proc/self/mountinfo, the fields the unmount plan needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// Parses /proc/self/mountinfo (mount points are octal-escaped: `\040` is a space).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let mount_point = fields.nth(4)?;
            let rest: Vec<&str> = fields.collect();
            let sep = rest.iter().position(|f| *f == "-")?;
            let fstype = rest.get(sep + 1)?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fstype: (*fstype).to_owned(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Kernel-provided filesystems: nothing to flush, and unmounting them would pull the
/// floor from under the rest of the shutdown.
const VIRTUAL: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup2",
    "cgroup",
    "securityfs",
    "debugfs",
    "tracefs",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "configfs",
    "pstore",
    "efivarfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "squashfs",
];

/// Mount points to unmount, newest first, never / and nothing under /dev /proc /sys.
pub fn unmount_plan(mounts: &[Mount]) -> Vec<PathBuf> {
    mounts
        .iter()
        .rev()
        .filter(|m| m.mount_point != std::path::Path::new("/"))
        .filter(|m| !VIRTUAL.contains(&m.fstype.as_str()))
        .filter(|m| {
            !["/dev", "/proc", "/sys"]
                .iter()
                .any(|p| m.mount_point.starts_with(p))
        })
        .map(|m| m.mount_point.clone())
        .collect()
}

fn unmount_all() {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        warning!("shutdown: cannot read /proc/self/mountinfo; not unmounting");
        return;
    };
    for target in unmount_plan(&parse_mountinfo(&text)) {
        match umount2(&target, MntFlags::empty()) {
            Ok(()) => info!("shutdown: unmounted {}", target.display()),
            Err(e) => match umount2(&target, MntFlags::MNT_DETACH) {
                Ok(()) => warning!("shutdown: {} busy ({e}); detached it", target.display()),
                Err(e2) => warning!("shutdown: cannot unmount {}: {e2}", target.display()),
            },
        }
    }
}

/// Runs the whole way down. As PID 1 this never returns.
pub async fn run(hooks: &Hooks, action: PowerAction, pid1: bool) {
    info!("shutdown: {action} requested; stopping services");
    hooks.run().await;
    nix::unistd::sync();
    if !pid1 {
        info!("shutdown: not PID 1, leaving mounts alone and exiting instead of {action}");
        return;
    }
    unmount_all();
    nix::unistd::sync();
    power(action);
}

/// The final syscall. If it fails there is nothing left to do but say so and wait.
pub fn power(action: PowerAction) -> ! {
    use nix::sys::reboot::{RebootMode, reboot};
    info!("shutdown: {action} now");
    let mode = match action {
        PowerAction::Reboot => RebootMode::RB_AUTOBOOT,
        PowerAction::PowerOff => RebootMode::RB_POWER_OFF,
    };
    let err = reboot(mode);
    crate::log::error!("shutdown: {action} failed: {err:?}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MOUNTINFO: &str = "\
22 1 7:0 / / ro,relatime - squashfs /dev/loop0 ro
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw
24 22 0:20 / /proc rw - proc proc rw
25 22 0:21 / /sys rw - sysfs sysfs rw
26 22 0:22 / /run rw - tmpfs tmpfs rw
27 22 0:23 / /etc rw - tmpfs tmpfs rw
30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
31 22 253:3 / /var rw,relatime shared:1 - ext4 /dev/vda3 rw
32 31 253:2 / /var/lib/with\\040space rw - ext4 /dev/vda2 rw
33 23 0:27 / /dev/pts rw - devpts devpts rw
";

    #[test]
    fn mountinfo_parses_with_optional_fields_and_escapes() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 10);
        assert_eq!(m[7].mount_point, PathBuf::from("/var"));
        assert_eq!(m[7].fstype, "ext4");
        assert_eq!(m[8].mount_point, PathBuf::from("/var/lib/with space"));
    }

    #[test]
    fn unmount_plan_is_newest_first_and_skips_kernel_filesystems() {
        let plan = unmount_plan(&parse_mountinfo(MOUNTINFO));
        let plan: Vec<_> = plan
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert_eq!(plan, ["/var/lib/with space", "/var", "/etc", "/run"]);
    }

    #[tokio::test]
    async fn hooks_run_in_reverse_registration_order() {
        let hooks = Hooks::default();
        let order = Arc::new(Mutex::new(Vec::new()));
        for name in ["containerd", "kubelet"] {
            let order = order.clone();
            hooks.register(name, move || async move {
                order.lock().unwrap().push(name);
            });
        }
        run(&hooks, PowerAction::Reboot, false).await;
        assert_eq!(*order.lock().unwrap(), ["kubelet", "containerd"]);
        // Hooks run once: a second shutdown request finds none left.
        hooks.run().await;
        assert_eq!(order.lock().unwrap().len(), 2);
    }
}
