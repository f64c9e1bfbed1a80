//! The containerd service: the config machined renders for it (pure functions, exact
//! text), the registry mirror files, and the service spec with its gRPC health check.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use basalt_config::MachineConfig;

use super::error::ServiceError;
use super::grpc;
use super::spec::{HealthCheck, ProbeFn, ProcessCommand, ServiceName, ServiceSpec};

/// Where the node keeps containerd's configuration.
pub const CONFIG_FILE: &str = "/etc/containerd/config.toml";
/// Debian's containernetworking-plugins (an image input) installs the CNI plugins here.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const DEFAULT_SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// Everything in containerd's config that varies: the node values by default, temp
/// directories in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdSettings {
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
    pub sandbox_image: String,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    /// The `certs.d` directory with one `<registry>/hosts.toml` per mirrored registry.
    pub registry_config_path: PathBuf,
}

impl Default for ContainerdSettings {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/containerd"),
            state: PathBuf::from("/run/containerd"),
            address: PathBuf::from("/run/containerd/containerd.sock"),
            sandbox_image: DEFAULT_SANDBOX_IMAGE.to_owned(),
            cni_bin_dir: PathBuf::from(CNI_BIN_DIR),
            cni_conf_dir: PathBuf::from(CNI_CONF_DIR),
            registry_config_path: PathBuf::from("/etc/containerd/certs.d"),
        }
    }
}

/// Registry mirrors for one registry, in the order containerd should try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryMirror {
    /// `docker.io`, `registry.local:5000`, or `*` for every registry.
    pub registry: String,
    pub endpoints: Vec<String>,
}

impl ContainerdSettings {
    /// The node settings for a machine config: its sandbox image.
    pub fn from_config(config: &MachineConfig) -> Self {
        Self {
            sandbox_image: config.cluster.sandbox_image.to_string(),
            ..Self::default()
        }
    }
}

/// The mirrors a machine config declares (`machine.registries.mirrors`).
pub fn mirrors_from_config(config: &MachineConfig) -> Vec<RegistryMirror> {
    config
        .machine
        .registries
        .mirrors
        .iter()
        .map(|(registry, mirror)| RegistryMirror {
            registry: registry.to_string(),
            endpoints: mirror.endpoints.iter().map(|e| e.to_string()).collect(),
        })
        .collect()
}

/// containerd's config.toml (schema version 2).
pub fn render_config(s: &ContainerdSettings) -> String {
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        "# Rendered by machined; changes are overwritten at boot.\n\
         version = 2\n\
         root = {root}\n\
         state = {state}\n\
         \n\
         [grpc]\n\
         \x20 address = {address}\n\
         \n\
         [{cri}]\n\
         \x20 sandbox_image = {sandbox}\n\
         \n\
         [{cri}.containerd]\n\
         \x20 default_runtime_name = \"runc\"\n\
         \n\
         [{cri}.containerd.runtimes.runc]\n\
         \x20 runtime_type = \"io.containerd.runc.v2\"\n\
         \n\
         [{cri}.containerd.runtimes.runc.options]\n\
         \x20 # No systemd on a Basalt node: runc manages cgroups through cgroupfs.\n\
         \x20 SystemdCgroup = false\n\
         \n\
         [{cri}.cni]\n\
         \x20 bin_dir = {cni_bin}\n\
         \x20 conf_dir = {cni_conf}\n\
         \n\
         [{cri}.registry]\n\
         \x20 config_path = {config_path}\n",
        root = toml_path(&s.root),
        state = toml_path(&s.state),
        address = toml_path(&s.address),
        sandbox = toml_string(&s.sandbox_image),
        cni_bin = toml_path(&s.cni_bin_dir),
        cni_conf = toml_path(&s.cni_conf_dir),
        config_path = toml_path(&s.registry_config_path),
    )
}

/// The directory under `certs.d` containerd looks in for `registry`; `*` is
/// containerd's `_default`, used for every registry without its own directory.
pub fn hosts_dir_name(registry: &str) -> Result<String, ServiceError> {
    let bad = |reason| ServiceError::InvalidRegistry {
        registry: registry.to_owned(),
        reason,
    };
    if registry == "*" {
        return Ok("_default".to_owned());
    }
    if registry.is_empty() || registry.starts_with('.') || registry.starts_with('_') {
        return Err(bad("it must start with a letter or digit"));
    }
    if !registry
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
    {
        return Err(bad(
            "only letters, digits, '.', '-', '_' and ':' are allowed",
        ));
    }
    Ok(registry.to_owned())
}

/// `hosts.toml` for one registry: the mirrors in order, each allowed to pull and resolve;
/// the registry itself stays the fallback (`server`).
pub fn render_hosts_toml(mirror: &RegistryMirror) -> String {
    let mut out = String::from("# Rendered by machined from machine.registries.mirrors.\n");
    if mirror.registry != "*" {
        let upstream = match mirror.registry.as_str() {
            // Docker Hub's name and its API host differ.
            "docker.io" => "https://registry-1.docker.io".to_owned(),
            other => format!("https://{other}"),
        };
        let _ = writeln!(out, "server = {}", toml_string(&upstream));
    }
    for endpoint in &mirror.endpoints {
        let _ = write!(
            out,
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            toml_string(endpoint)
        );
    }
    out
}

/// Writes config.toml and a fresh certs.d tree (stale registries removed).
pub fn write_files(
    config_file: &Path,
    settings: &ContainerdSettings,
    mirrors: &[RegistryMirror],
) -> Result<(), ServiceError> {
    let certs_d = &settings.registry_config_path;
    // Validate every name before touching the disk.
    let dirs: Vec<(String, &RegistryMirror)> = mirrors
        .iter()
        .map(|m| Ok((hosts_dir_name(&m.registry)?, m)))
        .collect::<Result<_, ServiceError>>()?;
    if certs_d.exists() {
        std::fs::remove_dir_all(certs_d)
            .map_err(|e| ServiceError::io("removing the old", certs_d, e))?;
    }
    for (dir, mirror) in dirs {
        write_atomic(
            &certs_d.join(dir).join("hosts.toml"),
            &render_hosts_toml(mirror),
        )?;
    }
    write_atomic(config_file, &render_config(settings))
}

fn write_atomic(path: &Path, content: &str) -> Result<(), ServiceError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ServiceError::io("creating", parent, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, content).map_err(|e| ServiceError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ServiceError::io("renaming into place", path, e))
}

/// The probe behind containerd's health: the `Version` gRPC call. Its success message
/// ("containerd 1.6.20~ds1 (revision …)") is what the API shows as the version.
pub fn version_probe(address: PathBuf) -> ProbeFn {
    Arc::new(move || {
        let address = address.clone();
        Box::pin(async move {
            grpc::containerd_version(&address, Duration::from_secs(5))
                .await
                .map(|v| format!("containerd {} (revision {})", v.version, v.revision))
                .map_err(|e| e.to_string())
        })
    })
}

/// The containerd service: `<binary> --config <config_file>`, healthy while `Version`
/// answers on the socket.
pub fn service_spec(
    binary: &Path,
    config_file: &Path,
    settings: &ContainerdSettings,
) -> ServiceSpec {
    let name = ServiceName::new("containerd").unwrap_or_else(|_| unreachable!("a valid constant"));
    let command = ProcessCommand::new(binary)
        .args(["--config".to_owned(), config_file.display().to_string()]);
    let mut spec = ServiceSpec::process(name, command);
    spec.health = HealthCheck::probe(
        version_probe(settings.address.clone()),
        Duration::from_secs(5),
        Duration::from_secs(5),
        3,
    );
    spec.stop_grace = Duration::from_secs(10);
    spec
}

/// Where Debian's containerd package (an image input) puts the binary.
pub const BINARY: &str = "/usr/bin/containerd";

/// The node's containerd: writes /etc/containerd/config.toml and certs.d from `config`,
/// and registers the service (not started).
pub fn register_for_node(
    supervisor: &super::Supervisor,
    config: &MachineConfig,
) -> Result<(), ServiceError> {
    let settings = ContainerdSettings::from_config(config);
    write_files(
        Path::new(CONFIG_FILE),
        &settings,
        &mirrors_from_config(config),
    )?;
    supervisor.register(service_spec(
        Path::new(BINARY),
        Path::new(CONFIG_FILE),
        &settings,
    ))
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(p: &Path) -> String {
    toml_string(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_node_config_exactly() {
        let expected = r#"# Rendered by machined; changes are overwritten at boot.
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # No systemd on a Basalt node: runc manages cgroups through cgroupfs.
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "/etc/cni/net.d"

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"#;
        assert_eq!(render_config(&ContainerdSettings::default()), expected);
    }

    #[test]
    fn renders_the_sandbox_image_and_escapes_strings() {
        let s = ContainerdSettings {
            sandbox_image: "registry.local:5000/pause:3.9".into(),
            root: PathBuf::from("/tmp/a \"quoted\" dir"),
            ..ContainerdSettings::default()
        };
        let out = render_config(&s);
        assert!(out.contains("  sandbox_image = \"registry.local:5000/pause:3.9\"\n"));
        assert!(out.contains("root = \"/tmp/a \\\"quoted\\\" dir\"\n"));
        assert_eq!(toml_string("a\\b\nc\u{1}"), "\"a\\\\b\\nc\\u0001\"");
    }

    #[test]
    fn renders_hosts_toml_for_docker_hub_with_mirrors_in_order() {
        let m = RegistryMirror {
            registry: "docker.io".into(),
            endpoints: vec![
                "https://mirror.local:5000".into(),
                "http://10.0.0.1:5000".into(),
            ],
        };
        assert_eq!(
            render_hosts_toml(&m),
            r#"# Rendered by machined from machine.registries.mirrors.
server = "https://registry-1.docker.io"

[host."https://mirror.local:5000"]
  capabilities = ["pull", "resolve"]

[host."http://10.0.0.1:5000"]
  capabilities = ["pull", "resolve"]
"#
        );
    }

    #[test]
    fn the_wildcard_registry_is_containerds_default_without_server() {
        let m = RegistryMirror {
            registry: "*".into(),
            endpoints: vec!["https://cache.local".into()],
        };
        assert_eq!(hosts_dir_name("*").unwrap(), "_default");
        assert_eq!(
            render_hosts_toml(&m),
            "# Rendered by machined from machine.registries.mirrors.\n\n\
             [host.\"https://cache.local\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        let m = RegistryMirror {
            registry: "registry.local:5000".into(),
            endpoints: vec![],
        };
        assert!(render_hosts_toml(&m).contains("server = \"https://registry.local:5000\"\n"));
    }

    #[test]
    fn registry_names_cannot_escape_certs_d() {
        for bad in ["", "..", "../etc", "a/b", "_default", ".hidden"] {
            assert!(hosts_dir_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(hosts_dir_name("ghcr.io").unwrap(), "ghcr.io");
    }

    #[test]
    fn writes_config_and_a_fresh_certs_d() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ContainerdSettings {
            registry_config_path: dir.path().join("certs.d"),
            ..ContainerdSettings::default()
        };
        let config = dir.path().join("containerd/config.toml");
        std::fs::create_dir_all(dir.path().join("certs.d/stale.io")).unwrap();
        let mirrors = vec![
            RegistryMirror {
                registry: "docker.io".into(),
                endpoints: vec!["https://m.local".into()],
            },
            RegistryMirror {
                registry: "*".into(),
                endpoints: vec!["https://all.local".into()],
            },
        ];
        write_files(&config, &settings, &mirrors).unwrap();
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            render_config(&settings)
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("certs.d/docker.io/hosts.toml")).unwrap(),
            render_hosts_toml(&mirrors[0])
        );
        assert!(dir.path().join("certs.d/_default/hosts.toml").exists());
        assert!(!dir.path().join("certs.d/stale.io").exists());
        let bad = vec![RegistryMirror {
            registry: "../x".into(),
            endpoints: vec![],
        }];
        assert!(write_files(&config, &settings, &bad).is_err());
        // Refused before anything was removed.
        assert!(dir.path().join("certs.d/docker.io/hosts.toml").exists());
    }

    #[test]
    fn settings_and_mirrors_come_from_the_machine_config() {
        let text = include_str!("../../tests/data/services-containerd-mirrors.yaml");
        let config = MachineConfig::from_yaml(text).unwrap();
        let s = ContainerdSettings::from_config(&config);
        assert_eq!(s.sandbox_image, "registry.local:5000/pause:3.9");
        assert_eq!(
            mirrors_from_config(&config),
            vec![
                RegistryMirror {
                    registry: "*".into(),
                    endpoints: vec!["https://cache.local".into()],
                },
                RegistryMirror {
                    registry: "docker.io".into(),
                    endpoints: vec![
                        "https://mirror.local:5000".into(),
                        "http://10.5.0.2:5000".into()
                    ],
                },
            ]
        );
    }
}
