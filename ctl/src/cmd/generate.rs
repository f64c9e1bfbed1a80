//! `basaltctl gen …`: secrets bundles, machine configs, client configs and client
//! certificates. Every file is prepared in memory first and existing files are checked
//! all at once, so a refused or failed run writes nothing.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use basalt_config::client_config::{self, ClientConfig, Context, Role};
use basalt_config::generate::{self, GenOptions};
use basalt_config::patch::{self, ConfigPatch};
use basalt_config::secrets::{self, SecretsBundle};
use basalt_config::{
    AbsolutePath, ClusterName, Endpoint, KubernetesVersion, MachineConfig, SubjectAltName,
};
use clap::{Args, Subcommand};

use super::{CmdResult, Failure, InvalidInput};

#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Generate a cluster: secrets.yaml, controlplane.yaml, worker.yaml and a basaltconfig.
    Config(Box<ConfigArgs>),
    /// Generate a secrets bundle (CAs, service-account key, bootstrap and machine tokens).
    Secrets(SecretsArgs),
    /// Issue a node API client certificate (or a whole basaltconfig) from a secrets bundle.
    Certificate(CertificateArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The cluster's name (a DNS label).
    pub cluster_name: ClusterName,
    /// The Kubernetes API endpoint, e.g. https://192.0.2.10:6443 (the VIP or load balancer).
    pub endpoint: Endpoint,
    /// The directory to write into (created if missing).
    #[arg(short = 'o', long, value_name = "DIR", default_value = ".")]
    pub output_dir: PathBuf,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
    /// The Kubernetes version the nodes run.
    #[arg(long, value_name = "V", default_value_t = KubernetesVersion::default_version())]
    pub kubernetes_version: KubernetesVersion,
    /// Use this secrets bundle instead of generating one (secrets.yaml is then not written).
    #[arg(long, value_name = "FILE")]
    pub with_secrets: Option<PathBuf>,
    /// A patch for both configs: a YAML/JSON mapping (merge patch) or sequence (JSON
    /// patch), inline or @file. Repeatable; applied in order.
    #[arg(long, value_name = "PATCH")]
    pub config_patch: Vec<String>,
    /// A patch for controlplane.yaml only, applied after --config-patch.
    #[arg(long, value_name = "PATCH")]
    pub config_patch_control_plane: Vec<String>,
    /// A patch for worker.yaml only, applied after --config-patch.
    #[arg(long, value_name = "PATCH")]
    pub config_patch_worker: Vec<String>,
    /// The disk the image is installed on.
    #[arg(long, value_name = "DEVICE", default_value = generate::DEFAULT_INSTALL_DISK)]
    pub install_disk: AbsolutePath,
    /// An extra DNS name or IP address for the API server and node API certificates.
    #[arg(long = "additional-sans", value_name = "SAN")]
    pub additional_sans: Vec<SubjectAltName>,
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    /// Where to write the bundle.
    #[arg(short = 'o', long, value_name = "FILE", default_value = "secrets.yaml")]
    pub output: PathBuf,
    /// Overwrite the file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CertificateArgs {
    /// The role the certificate grants (reader, operator or admin).
    #[arg(long)]
    pub role: Role,
    /// The certificate's common name (who holds it).
    #[arg(long)]
    pub name: String,
    /// The secrets bundle holding the node API CA.
    #[arg(long, value_name = "FILE")]
    pub secrets: PathBuf,
    /// The directory to write NAME.crt and NAME.key into.
    #[arg(short = 'o', long, value_name = "DIR", default_value = ".")]
    pub output_dir: PathBuf,
    /// Write a complete basaltconfig to FILE instead of NAME.crt/NAME.key.
    #[arg(long, value_name = "FILE", requires = "endpoints")]
    pub basaltconfig_out: Option<PathBuf>,
    /// Node API endpoints for --basaltconfig-out (host or host:port). Repeatable.
    #[arg(long = "endpoint", value_name = "HOST", id = "endpoints")]
    pub endpoints: Vec<String>,
    /// The context name for --basaltconfig-out.
    #[arg(long, value_name = "NAME", default_value = "basalt")]
    pub context: String,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

pub fn run(command: GenCommand) -> CmdResult {
    match command {
        GenCommand::Config(args) => config(*args),
        GenCommand::Secrets(args) => secrets(args),
        GenCommand::Certificate(args) => certificate(args),
    }
}

/// A file to write: where, what, and with which mode.
struct Planned {
    path: PathBuf,
    contents: String,
    mode: u32,
}

/// Refuses, all at once, every planned file that exists (unless `force`), then writes
/// them all. Nothing is written when anything is refused.
fn write_all(files: &[Planned], force: bool) -> CmdResult {
    if !force {
        let existing: Vec<String> = files
            .iter()
            .filter(|f| f.path.symlink_metadata().is_ok())
            .map(|f| f.path.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(Failure::Runtime(anyhow::anyhow!(
                "refusing to overwrite {} (pass --force to replace; nothing was written)",
                existing.join(", ")
            )));
        }
    }
    for f in files {
        if let Some(dir) = f.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the directory {}", dir.display()))?;
        }
        secrets::write_file_mode(&f.path, f.contents.as_bytes(), f.mode)
            .with_context(|| format!("writing {}", f.path.display()))?;
        println!("wrote {}", f.path.display());
    }
    Ok(())
}

fn load_patches(args: &[String]) -> CmdResult<Vec<ConfigPatch>> {
    args.iter()
        .map(|a| ConfigPatch::from_arg(a))
        .collect::<Result<Vec<_>, _>>()
        .invalid()
}

fn patched(
    config: &MachineConfig,
    common: &[ConfigPatch],
    specific: &[ConfigPatch],
    what: &str,
) -> CmdResult<MachineConfig> {
    let all: Vec<ConfigPatch> = common.iter().chain(specific).cloned().collect();
    if all.is_empty() {
        return Ok(config.clone());
    }
    let patched = patch::apply_patches(config, &all).invalid_with(|| format!("patching {what}"))?;
    // A patch may add or remove machine.install; validate for what the result is.
    let mode = generate::mode_for(&patched);
    patch::apply_patches_and_validate(config, &all, mode)
        .invalid_with(|| format!("patching {what}"))
}

fn load_secrets(path: &Path) -> CmdResult<SecretsBundle> {
    SecretsBundle::load(path).map_err(|e| match e {
        secrets::SecretsError::Read { .. } => Failure::Runtime(e.into()),
        _ => Failure::Invalid(e.into()),
    })
}

fn config(args: ConfigArgs) -> CmdResult {
    let common = load_patches(&args.config_patch)?;
    let cp_patches = load_patches(&args.config_patch_control_plane)?;
    let worker_patches = load_patches(&args.config_patch_worker)?;
    let (bundle, write_bundle) = match &args.with_secrets {
        Some(path) => (load_secrets(path)?, false),
        None => (SecretsBundle::generate()?, true),
    };

    let mut opts = GenOptions::new(args.cluster_name.clone(), args.endpoint.clone());
    opts.kubernetes_version = args.kubernetes_version.clone();
    opts.install_disk = Some(args.install_disk.clone());
    opts.additional_sans = args.additional_sans.clone();
    let (cp, worker) = generate::machine_configs(&bundle, &opts).invalid()?;
    let cp = patched(&cp, &common, &cp_patches, "controlplane.yaml")?;
    let worker = patched(&worker, &common, &worker_patches, "worker.yaml")?;

    let admin = client_config::issue_client_certificate(
        &bundle.api.ca.cert_and_key(),
        Role::Admin,
        "admin",
    )?;
    let client = ClientConfig::single(
        args.cluster_name.as_str(),
        Context {
            endpoints: vec![
                args.endpoint
                    .ip()
                    .map_or_else(|| args.endpoint.host().to_owned(), |ip| ip.to_string()),
            ],
            nodes: Vec::new(),
            ca: bundle.api.ca.crt.as_str().to_owned(),
            crt: admin.cert_pem,
            key: admin.key_pem,
        },
    );

    let dir = &args.output_dir;
    let mut files = Vec::new();
    if write_bundle {
        files.push(Planned {
            path: dir.join("secrets.yaml"),
            contents: bundle.to_yaml()?,
            mode: 0o600,
        });
    }
    // Both configs hold secrets (the worker's bootstrap token admits nodes to the cluster,
    // its machine token gets API certificates signed).
    files.push(Planned {
        path: dir.join("controlplane.yaml"),
        contents: cp.to_yaml(),
        mode: 0o600,
    });
    files.push(Planned {
        path: dir.join("worker.yaml"),
        contents: worker.to_yaml(),
        mode: 0o600,
    });
    files.push(Planned {
        path: dir.join("basaltconfig"),
        contents: client.to_yaml()?,
        mode: 0o600,
    });
    write_all(&files, args.force)
}

fn secrets(args: SecretsArgs) -> CmdResult {
    let bundle = SecretsBundle::generate()?;
    write_all(
        &[Planned {
            path: args.output,
            contents: bundle.to_yaml()?,
            mode: 0o600,
        }],
        args.force,
    )
}

fn certificate(args: CertificateArgs) -> CmdResult {
    if args.name.is_empty() || args.name.contains(['/', '\0']) {
        return Err(Failure::Invalid(anyhow::anyhow!(
            "--name {:?} must be non-empty and contain no '/'",
            args.name
        )));
    }
    for endpoint in &args.endpoints {
        client_config::parse_endpoint(endpoint).invalid()?;
    }
    let bundle = load_secrets(&args.secrets)?;
    let cert = client_config::issue_client_certificate(
        &bundle.api.ca.cert_and_key(),
        args.role,
        &args.name,
    )?;
    let files = match &args.basaltconfig_out {
        Some(path) => {
            let client = ClientConfig::single(
                &args.context,
                Context {
                    endpoints: args.endpoints.clone(),
                    nodes: Vec::new(),
                    ca: bundle.api.ca.crt.as_str().to_owned(),
                    crt: cert.cert_pem,
                    key: cert.key_pem,
                },
            );
            vec![Planned {
                path: path.clone(),
                contents: client.to_yaml()?,
                mode: 0o600,
            }]
        }
        None => vec![
            Planned {
                path: args.output_dir.join(format!("{}.crt", args.name)),
                contents: cert.cert_pem,
                mode: 0o644,
            },
            Planned {
                path: args.output_dir.join(format!("{}.key", args.name)),
                contents: cert.key_pem,
                mode: 0o600,
            },
        ],
    };
    write_all(&files, args.force)
}
