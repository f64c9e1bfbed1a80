//! Kernel parameters a Kubernetes node needs, written under /proc/sys. The list is
//! data; applying it is a loop of writes.

use std::path::{Path, PathBuf};

/// A sysctl key in dotted form (`net.ipv4.ip_forward`). Validated so it cannot
/// escape /proc/sys: no empty segments, no `..`, no slashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlKey(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SysctlError {
    #[error("{key:?} is not a sysctl key (dotted words, no slashes or empty parts)")]
    BadKey { key: String },
    #[error("writing {value:?} to {path}: {kind}")]
    Write {
        path: PathBuf,
        value: String,
        kind: std::io::ErrorKind,
    },
}

impl std::str::FromStr for SysctlKey {
    type Err = SysctlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.split('.').all(|part| {
                !part.is_empty() && part != ".." && !part.contains('/') && !part.contains('\0')
            });
        if ok {
            Ok(SysctlKey(s.to_owned()))
        } else {
            Err(SysctlError::BadKey { key: s.to_owned() })
        }
    }
}

impl SysctlKey {
    /// The file under /proc/sys (dots become directory separators).
    pub fn path_under(&self, proc_sys: &Path) -> PathBuf {
        self.0
            .split('.')
            .fold(proc_sys.to_path_buf(), |p, part| p.join(part))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What kubelet checks with --protect-kernel-defaults, plus what pod networking needs.
/// `needs` names the module that provides a key that is missing without it.
pub const NODE_DEFAULTS: &[(&str, &str, Option<&str>)] = &[
    ("net.ipv4.ip_forward", "1", None),
    ("net.ipv6.conf.all.forwarding", "1", None),
    (
        "net.bridge.bridge-nf-call-iptables",
        "1",
        Some("br_netfilter"),
    ),
    (
        "net.bridge.bridge-nf-call-ip6tables",
        "1",
        Some("br_netfilter"),
    ),
    ("vm.overcommit_memory", "1", None),
    ("vm.panic_on_oom", "0", None),
    ("kernel.panic", "10", None),
    ("kernel.panic_on_oops", "1", None),
    ("kernel.keys.root_maxkeys", "1000000", None),
    ("kernel.keys.root_maxbytes", "25000000", None),
    ("fs.inotify.max_user_watches", "524288", None),
    ("fs.inotify.max_user_instances", "8192", None),
];

/// A sysctl list entry: key, value, the module that provides the key.
pub type Entry<'a> = (&'a str, &'a str, Option<&'static str>);

/// The entries whose keys the kernel has without any module: set at once, before the
/// node's modules finish loading.
pub fn without_modules<'a>(list: &[Entry<'a>]) -> Vec<Entry<'a>> {
    list.iter().filter(|e| e.2.is_none()).copied().collect()
}

/// The entries that exist only once a module is loaded, and those modules (deduplicated,
/// in list order): set after waiting for exactly them.
pub fn with_modules<'a>(list: &[Entry<'a>]) -> (Vec<Entry<'a>>, Vec<&'static str>) {
    let entries: Vec<Entry<'a>> = list.iter().filter(|e| e.2.is_some()).copied().collect();
    let mut modules: Vec<&'static str> = Vec::new();
    for m in entries.iter().filter_map(|e| e.2) {
        if !modules.contains(&m) {
            modules.push(m);
        }
    }
    (entries, modules)
}

/// The outcome of applying a list: what was set, and what the kernel does not have.
#[derive(Debug, Default)]
pub struct Applied {
    pub set: usize,
    /// Keys missing from /proc/sys, with the module that would provide them.
    pub missing: Vec<(SysctlKey, Option<&'static str>)>,
}

/// Writes each value. A key that does not exist is reported (a module may be absent
/// from the image), any other failure is an error.
pub fn apply(
    proc_sys: &Path,
    list: &[(&str, &str, Option<&'static str>)],
) -> Result<Applied, SysctlError> {
    let mut applied = Applied::default();
    for &(key, value, needs) in list {
        let key: SysctlKey = key.parse()?;
        let path = key.path_under(proc_sys);
        match std::fs::write(&path, format!("{value}\n")) {
            Ok(()) => applied.set += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                applied.missing.push((key, needs))
            }
            Err(e) => {
                return Err(SysctlError::Write {
                    path,
                    value: value.to_owned(),
                    kind: e.kind(),
                });
            }
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!("net.ipv4.ip_forward".parse::<SysctlKey>().is_ok());
        assert!(
            "net.bridge.bridge-nf-call-iptables"
                .parse::<SysctlKey>()
                .is_ok()
        );
        for bad in ["", "net..ipv4", "net/ipv4", ".net", "net.", "a.../b"] {
            assert!(bad.parse::<SysctlKey>().is_err(), "{bad}");
        }
        let k: SysctlKey = "net.ipv4.ip_forward".parse().unwrap();
        assert_eq!(
            k.path_under(Path::new("/proc/sys")),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
    }

    #[test]
    fn defaults_are_valid_and_cover_what_kubelet_checks() {
        for (key, _, _) in NODE_DEFAULTS {
            key.parse::<SysctlKey>().unwrap();
        }
        let get = |k: &str| {
            NODE_DEFAULTS
                .iter()
                .find(|(key, _, _)| *key == k)
                .map(|e| e.1)
        };
        assert_eq!(get("vm.overcommit_memory"), Some("1"));
        assert_eq!(get("kernel.panic"), Some("10"));
        assert_eq!(get("kernel.panic_on_oops"), Some("1"));
        assert_eq!(get("net.ipv4.ip_forward"), Some("1"));
        assert_eq!(get("net.bridge.bridge-nf-call-iptables"), Some("1"));
    }

    #[test]
    fn apply_writes_values_and_reports_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("net/ipv4")).unwrap();
        std::fs::write(dir.path().join("net/ipv4/ip_forward"), "0\n").unwrap();
        let applied = apply(
            dir.path(),
            &[
                ("net.ipv4.ip_forward", "1", None),
                (
                    "net.bridge.bridge-nf-call-iptables",
                    "1",
                    Some("br_netfilter"),
                ),
            ],
        )
        .unwrap();
        assert_eq!(applied.set, 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("net/ipv4/ip_forward")).unwrap(),
            "1\n"
        );
        assert_eq!(applied.missing.len(), 1);
        assert_eq!(
            applied.missing[0].0.as_str(),
            "net.bridge.bridge-nf-call-iptables"
        );
        assert_eq!(applied.missing[0].1, Some("br_netfilter"));
    }

    #[test]
    fn module_bound_keys_are_split_off_with_their_modules() {
        let now = without_modules(NODE_DEFAULTS);
        let (later, modules) = with_modules(NODE_DEFAULTS);
        assert_eq!(now.len() + later.len(), NODE_DEFAULTS.len());
        assert!(now.iter().all(|e| !e.0.starts_with("net.bridge.")));
        assert_eq!(
            later.iter().map(|e| e.0).collect::<Vec<_>>(),
            [
                "net.bridge.bridge-nf-call-iptables",
                "net.bridge.bridge-nf-call-ip6tables"
            ]
        );
        assert_eq!(modules, ["br_netfilter"]);
    }

    #[test]
    fn other_write_errors_fail() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: EISDIR, not "missing".
        std::fs::create_dir_all(dir.path().join("kernel/panic")).unwrap();
        let err = apply(dir.path(), &[("kernel.panic", "10", None)]).unwrap_err();
        assert!(err.to_string().starts_with("writing \"10\" to "), "{err}");
    }
}
