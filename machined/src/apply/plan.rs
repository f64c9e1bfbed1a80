//! What changing the running config into another one takes: the pure half of applying
//! a config to a running node. [`plan`] compares two configs and sorts every difference
//! into something machined can do live or a field that needs a reboot.
//!
//! The reboot side is computed generically (every field that is not explicitly live is
//! compared), so a field added to the model later is "needs a reboot" until someone
//! teaches this module to apply it live: never silently ignored.

use std::collections::{BTreeMap, BTreeSet};

use basalt_config::{KernelModule, MachineConfig, MachineFile};

/// One thing machined changes on a running node.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveChange {
    /// `machine.hostname`: sethostname and /etc/hostname (`None`: back to the boot name).
    Hostname(Option<String>),
    /// `machine.sysctls`: keys to write, and keys no longer declared (their value from
    /// before machined first wrote them is restored).
    Sysctls {
        set: Vec<(String, String)>,
        removed: Vec<String>,
    },
    /// `machine.files`: files to (re)write and files no longer declared (deleted).
    Files {
        write: Vec<MachineFile>,
        remove: Vec<String>,
    },
    /// `machine.network`: the network is re-planned; stale static addresses and routes go.
    Network,
    /// `machine.time`: the SNTP client restarts with the new servers.
    TimeServers,
    /// `machine.kernel.modules`: modules that were not declared before are loaded.
    LoadModules(Vec<KernelModule>),
    /// `machine.registries`: containerd's certs.d is rewritten (read at every pull).
    RegistryMirrors,
    /// `cluster.sandboxImage`: containerd's config changes; containerd restarts (running
    /// containers keep running: their shims do not belong to containerd's process).
    SandboxImage,
}

impl LiveChange {
    /// The config field this change comes from, for messages.
    pub fn field(&self) -> &'static str {
        match self {
            LiveChange::Hostname(_) => "machine.hostname",
            LiveChange::Sysctls { .. } => "machine.sysctls",
            LiveChange::Files { .. } => "machine.files",
            LiveChange::Network => "machine.network",
            LiveChange::TimeServers => "machine.time",
            LiveChange::LoadModules(_) => "machine.kernel.modules",
            LiveChange::RegistryMirrors => "machine.registries",
            LiveChange::SandboxImage => "cluster.sandboxImage",
        }
    }
}

/// Everything that differs between the running config and a new one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChangePlan {
    pub live: Vec<LiveChange>,
    /// Field paths (`cluster.controlPlane.endpoint`, `machine.install`) whose new value
    /// only takes effect through a reboot.
    pub needs_reboot: Vec<String>,
}

impl ChangePlan {
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.needs_reboot.is_empty()
    }

    /// The live part as field names, for replies and logs.
    pub fn live_fields(&self) -> Vec<String> {
        self.live.iter().map(|c| c.field().to_owned()).collect()
    }
}

/// Keys of the serialized config that [`plan`] handles itself; everything else is
/// compared as a whole and needs a reboot when it differs.
const LIVE_KEYS: &[(&str, &str)] = &[
    ("machine", "hostname"),
    ("machine", "sysctls"),
    ("machine", "files"),
    ("machine", "network"),
    ("machine", "time"),
    ("machine", "kernel"),
    ("machine", "registries"),
    ("cluster", "sandboxImage"),
];

/// Compares the running config with `new`.
pub fn plan(running: &MachineConfig, new: &MachineConfig) -> ChangePlan {
    let (r, n) = (&running.machine, &new.machine);
    let mut live = Vec::new();
    let mut needs_reboot = Vec::new();

    if r.hostname != n.hostname {
        live.push(LiveChange::Hostname(
            n.hostname.as_ref().map(|h| h.as_str().to_owned()),
        ));
    }
    let old_sysctls: BTreeMap<&str, &str> = r
        .sysctls
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let new_sysctls: BTreeMap<&str, &str> = n
        .sysctls
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let set: Vec<(String, String)> = new_sysctls
        .iter()
        .filter(|(k, v)| old_sysctls.get(*k) != Some(*v))
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let removed: Vec<String> = old_sysctls
        .keys()
        .filter(|k| !new_sysctls.contains_key(*k))
        .map(|k| (*k).to_owned())
        .collect();
    if !set.is_empty() || !removed.is_empty() {
        live.push(LiveChange::Sysctls { set, removed });
    }
    let write: Vec<MachineFile> = n
        .files
        .iter()
        .filter(|f| !r.files.contains(f))
        .cloned()
        .collect();
    let new_paths: BTreeSet<&str> = n.files.iter().map(|f| f.path.as_str()).collect();
    let remove: Vec<String> = r
        .files
        .iter()
        .map(|f| f.path.as_str())
        .filter(|p| !new_paths.contains(p))
        .map(str::to_owned)
        .collect();
    if !write.is_empty() || !remove.is_empty() {
        live.push(LiveChange::Files { write, remove });
    }
    if r.network != n.network {
        live.push(LiveChange::Network);
    }
    if r.time != n.time {
        live.push(LiveChange::TimeServers);
    }
    let (load, unload) = module_changes(&r.kernel.modules, &n.kernel.modules);
    if !load.is_empty() {
        live.push(LiveChange::LoadModules(load));
    }
    for name in unload {
        // The kernel may be using it; unloading is not something to do behind a
        // running node's back.
        needs_reboot.push(format!(
            "machine.kernel.modules ({name} removed or changed)"
        ));
    }
    if r.registries != n.registries {
        live.push(LiveChange::RegistryMirrors);
    }
    if running.cluster.sandbox_image != new.cluster.sandbox_image {
        live.push(LiveChange::SandboxImage);
    }

    let (mut old_rest, mut new_rest) = (without_live_keys(running), without_live_keys(new));
    differing_paths("", &mut old_rest, &mut new_rest, &mut needs_reboot);
    ChangePlan { live, needs_reboot }
}

/// Modules to load (declared now, not before) and names whose declaration went away or
/// changed its parameters (a loaded module keeps the parameters it was loaded with).
fn module_changes(old: &[KernelModule], new: &[KernelModule]) -> (Vec<KernelModule>, Vec<String>) {
    let by_name = |list: &[KernelModule]| -> BTreeMap<String, KernelModule> {
        list.iter()
            .map(|m| (m.name.as_str().replace('-', "_"), m.clone()))
            .collect()
    };
    let (old, new) = (by_name(old), by_name(new));
    let load = new
        .iter()
        .filter(|(name, _)| !old.contains_key(*name))
        .map(|(_, m)| m.clone())
        .collect();
    let unload = old
        .iter()
        .filter(|(name, m)| new.get(*name) != Some(m))
        .map(|(name, _)| name.clone())
        .collect();
    (load, unload)
}

fn without_live_keys(config: &MachineConfig) -> serde_json::Value {
    // MachineConfig is plain data with string keys: serializing cannot fail.
    let mut value = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    for (section, key) in LIVE_KEYS {
        if let Some(obj) = value.get_mut(*section).and_then(|s| s.as_object_mut()) {
            obj.remove(*key);
        }
    }
    value
}

/// Appends the paths where `a` and `b` differ: object members one by one, anything else
/// (lists included: their order means something) as a whole.
fn differing_paths(
    path: &str,
    a: &mut serde_json::Value,
    b: &mut serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<String> = a.keys().chain(b.keys()).cloned().collect();
            for key in keys {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let mut x = a.remove(&key).unwrap_or(Value::Null);
                let mut y = b.remove(&key).unwrap_or(Value::Null);
                differing_paths(&child, &mut x, &mut y, out);
            }
        }
        (a, b) if a != b => out.push(path.to_owned()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = include_str!("../../tests/data/config-valid-worker.yaml");

    fn config(yaml: &str) -> MachineConfig {
        MachineConfig::parse(yaml.as_bytes()).unwrap()
    }

    fn edited(f: impl FnOnce(&mut MachineConfig)) -> MachineConfig {
        let mut c = config(BASE);
        f(&mut c);
        c
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let c = config(BASE);
        assert!(plan(&c, &c.clone()).is_empty());
    }

    #[test]
    fn hostname_sysctls_and_files_are_live() {
        let old = edited(|c| {
            c.machine.sysctls.insert(
                "net.core.somaxconn".parse().unwrap(),
                "1024".parse().unwrap(),
            );
            c.machine.sysctls.insert(
                "vm.max_map_count".parse().unwrap(),
                "262144".parse().unwrap(),
            );
        });
        let new = edited(|c| {
            c.machine.hostname = Some("renamed".parse().unwrap());
            c.machine.sysctls.insert(
                "net.core.somaxconn".parse().unwrap(),
                "4096".parse().unwrap(),
            );
            c.machine.files.push(MachineFile {
                path: "/etc/basalt-test".parse().unwrap(),
                permissions: Default::default(),
                content: "x".to_owned(),
            });
        });
        let p = plan(&old, &new);
        assert!(p.needs_reboot.is_empty(), "{:?}", p.needs_reboot);
        assert_eq!(
            p.live,
            vec![
                LiveChange::Hostname(Some("renamed".to_owned())),
                LiveChange::Sysctls {
                    set: vec![("net.core.somaxconn".to_owned(), "4096".to_owned())],
                    removed: vec!["vm.max_map_count".to_owned()],
                },
                LiveChange::Files {
                    write: new.machine.files.clone(),
                    remove: vec![],
                },
            ]
        );
        // And back: the file is removed, nothing is written.
        let back = plan(&new, &old);
        assert!(back.live.contains(&LiveChange::Files {
            write: vec![],
            remove: vec!["/etc/basalt-test".to_owned()]
        }));
    }

    #[test]
    fn identity_and_cluster_fields_need_a_reboot_and_are_named() {
        let old = config(BASE);
        let new = edited(|c| {
            c.machine.install = None;
            c.cluster.name = "other".parse().unwrap();
            c.machine.hostname = Some("renamed".parse().unwrap());
        });
        let p = plan(&old, &new);
        assert_eq!(p.needs_reboot, vec!["cluster.name", "machine.install"]);
        assert_eq!(p.live_fields(), vec!["machine.hostname"]);
    }

    #[test]
    fn adding_a_module_is_live_removing_one_is_not() {
        let with_dummy = edited(|c| {
            c.machine.kernel.modules.push(KernelModule {
                name: "dummy".parse().unwrap(),
                parameters: vec![],
            })
        });
        let without = config(BASE);
        let p = plan(&without, &with_dummy);
        assert_eq!(p.live_fields(), vec!["machine.kernel.modules"]);
        assert!(p.needs_reboot.is_empty());
        let back = plan(&with_dummy, &without);
        assert!(back.live.is_empty());
        assert_eq!(
            back.needs_reboot,
            vec!["machine.kernel.modules (dummy removed or changed)"]
        );
    }

    #[test]
    fn network_time_registries_and_sandbox_image_are_live() {
        let old = config(BASE);
        let new = edited(|c| {
            c.machine.network.nameservers = vec!["192.0.2.53".parse().unwrap()];
            c.machine.time.servers = vec!["192.0.2.123".parse().unwrap()];
            c.cluster.sandbox_image = "registry.local/pause:1".parse().unwrap();
        });
        let p = plan(&old, &new);
        assert!(p.needs_reboot.is_empty(), "{:?}", p.needs_reboot);
        assert_eq!(
            p.live_fields(),
            vec!["machine.network", "machine.time", "cluster.sandboxImage"]
        );
    }
}
