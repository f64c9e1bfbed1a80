//! Generating a cluster's machine configs from its secrets bundle: one config for
//! control-plane nodes (carrying the CA keys) and one for workers (carrying only the CA
//! certificates they need to trust the cluster).

use crate::model::{
    ApiServerSpec, ClusterNetworkSpec, ClusterSpec, ConfigVersion, ControlPlaneSpec, EtcdSpec,
    InstallSpec, MachineConfig, MachineSpec, MachineType, ServiceAccountSpec,
};
use crate::secrets::SecretsBundle;
use crate::validate::{Mode, ValidationErrors};
use crate::values::{
    AbsolutePath, ClusterName, Endpoint, KubernetesVersion, SubjectAltName, ValueError,
};

/// The disk `gen config` installs to unless told otherwise: the first virtio disk, which
/// is what QEMU labs and most clouds' KVM guests have.
pub const DEFAULT_INSTALL_DISK: &str = "/dev/vda";

/// Why configs could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the endpoint host {host:?} cannot be a subject alternative name: {cause}")]
    EndpointSan { host: String, cause: ValueError },
    #[error("the generated {machine_type} config does not validate: {errors}")]
    Invalid {
        machine_type: &'static str,
        errors: ValidationErrors,
    },
}

/// What `gen config` takes besides the secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    pub cluster_name: ClusterName,
    /// The Kubernetes API endpoint (the VIP or load balancer), `https://host:port`.
    pub endpoint: Endpoint,
    pub kubernetes_version: KubernetesVersion,
    /// Where the image is installed; `None` leaves `machine.install` out (nodes that
    /// boot from PXE or QEMU -kernel every time).
    pub install_disk: Option<AbsolutePath>,
    /// Extra names/addresses for the Kubernetes API server's and the node API's
    /// certificates (the endpoint host is always added).
    pub additional_sans: Vec<SubjectAltName>,
    /// Pod and service subnets, DNS domain, CNI (flannel); defaults 10.244.0.0/16 and
    /// 10.96.0.0/12.
    pub network: ClusterNetworkSpec,
}

impl GenOptions {
    /// Options with every default: Kubernetes [`KubernetesVersion::default_version`],
    /// install disk [`DEFAULT_INSTALL_DISK`], no extra SANs, default network.
    pub fn new(cluster_name: ClusterName, endpoint: Endpoint) -> GenOptions {
        GenOptions {
            cluster_name,
            endpoint,
            kubernetes_version: KubernetesVersion::default_version(),
            // A constant that parses; the unit test below keeps it so.
            install_disk: DEFAULT_INSTALL_DISK.parse().ok(),
            additional_sans: Vec::new(),
            network: ClusterNetworkSpec::default(),
        }
    }
}

/// The SANs for the API server and node API certificates: the endpoint host, then the
/// operator's extras, without duplicates.
fn sans(opts: &GenOptions) -> Result<Vec<SubjectAltName>, GenerateError> {
    let host = opts
        .endpoint
        .ip()
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| opts.endpoint.host().to_owned());
    let endpoint_san: SubjectAltName = host
        .parse()
        .map_err(|cause| GenerateError::EndpointSan { host, cause })?;
    let mut out = vec![endpoint_san];
    for san in &opts.additional_sans {
        if !out.contains(san) {
            out.push(san.clone());
        }
    }
    Ok(out)
}

/// Builds the control-plane and the worker config of a cluster.
///
/// The control plane carries every CA with its key, the service-account key and the
/// bootstrap token. The worker carries the Kubernetes CA and the node API CA
/// certificates without keys, and the bootstrap token to join with; no etcd or
/// front-proxy material at all.
pub fn machine_configs(
    secrets: &SecretsBundle,
    opts: &GenOptions,
) -> Result<(MachineConfig, MachineConfig), GenerateError> {
    let sans = sans(opts)?;
    let install = opts.install_disk.as_ref().map(|disk| InstallSpec {
        disk: disk.clone(),
        wipe: false,
    });
    let k8s = &secrets.kubernetes;

    let machine = |machine_type: MachineType| MachineSpec {
        machine_type,
        hostname: None,
        install: install.clone(),
        network: Default::default(),
        time: Default::default(),
        kubelet: Default::default(),
        sysctls: Default::default(),
        files: Vec::new(),
        kernel: Default::default(),
        registries: Default::default(),
        ca: match machine_type {
            MachineType::Controlplane => secrets.api.ca.with_key(),
            MachineType::Worker => secrets.api.ca.certificate_only(),
        },
        // The endpoint's host names the control planes: a worker's certificate must not
        // claim it (trustd refuses to sign it).
        cert_sans: match machine_type {
            MachineType::Controlplane => sans.clone(),
            MachineType::Worker => sans[1..].to_vec(),
        },
        token: Some(secrets.machine_token.clone()),
    };
    let cluster_common = ClusterSpec {
        name: opts.cluster_name.clone(),
        control_plane: ControlPlaneSpec {
            endpoint: opts.endpoint.clone(),
        },
        kubernetes_version: opts.kubernetes_version.clone(),
        network: opts.network.clone(),
        token: secrets.bootstrap_token.clone(),
        ca: k8s.ca.certificate_only(),
        aggregator_ca: None,
        service_account: None,
        etcd: EtcdSpec::default(),
        api_server: ApiServerSpec::default(),
        controller_manager: Default::default(),
        scheduler: Default::default(),
        proxy: Default::default(),
        core_dns: Default::default(),
        allow_scheduling_on_control_planes: false,
        sandbox_image: crate::model::default_sandbox_image(),
    };

    let controlplane = MachineConfig {
        version: ConfigVersion::V1Alpha1,
        machine: machine(MachineType::Controlplane),
        cluster: ClusterSpec {
            ca: k8s.ca.with_key(),
            aggregator_ca: Some(k8s.aggregator_ca.with_key()),
            service_account: Some(ServiceAccountSpec {
                key: k8s.service_account.key.clone(),
            }),
            etcd: EtcdSpec {
                ca: Some(k8s.etcd_ca.with_key()),
                ..EtcdSpec::default()
            },
            api_server: ApiServerSpec {
                cert_sans: sans.clone(),
                ..ApiServerSpec::default()
            },
            ..cluster_common.clone()
        },
    };
    let worker = MachineConfig {
        version: ConfigVersion::V1Alpha1,
        machine: machine(MachineType::Worker),
        cluster: cluster_common,
    };
    let mode = mode_for(&controlplane);
    for (machine_type, config) in [("controlplane", &controlplane), ("worker", &worker)] {
        config
            .validate(mode)
            .map_err(|errors| GenerateError::Invalid {
                machine_type,
                errors,
            })?;
    }
    Ok((controlplane, worker))
}

/// The mode a generated config is meant for: `metal` when it names an install disk,
/// `cloud` (boots a pre-built disk image) when it does not.
pub fn mode_for(config: &MachineConfig) -> Mode {
    if config.machine.install.is_some() {
        Mode::Metal
    } else {
        Mode::Cloud
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> GenOptions {
        GenOptions::new(
            "demo".parse().unwrap(),
            "https://192.0.2.10:6443".parse().unwrap(),
        )
    }

    #[test]
    fn default_install_disk_parses() {
        assert_eq!(
            opts().install_disk.map(|d| d.to_string()).as_deref(),
            Some(DEFAULT_INSTALL_DISK)
        );
    }

    #[test]
    fn both_configs_validate_with_and_without_an_install_disk() {
        let secrets = SecretsBundle::generate().unwrap();
        let (cp, worker) = machine_configs(&secrets, &opts()).unwrap();
        cp.validate(Mode::Metal).unwrap();
        worker.validate(Mode::Metal).unwrap();
        let mut o = opts();
        o.install_disk = None;
        let (cp, worker) = machine_configs(&secrets, &o).unwrap();
        assert_eq!(mode_for(&cp), Mode::Cloud);
        cp.validate(Mode::Cloud).unwrap();
        worker.validate(Mode::Cloud).unwrap();
        assert!(cp.validate(Mode::Metal).is_err());
    }

    #[test]
    fn worker_carries_no_private_key() {
        let secrets = SecretsBundle::generate().unwrap();
        let (cp, worker) = machine_configs(&secrets, &opts()).unwrap();
        let worker_yaml = worker.to_yaml();
        assert!(!worker_yaml.contains("PRIVATE KEY"), "{worker_yaml}");
        assert!(worker_yaml.contains(secrets.kubernetes.ca.crt.as_str().lines().nth(1).unwrap()));
        let cp_yaml = cp.to_yaml();
        assert_eq!(cp_yaml.matches("BEGIN PRIVATE KEY").count(), 5, "{cp_yaml}");
    }

    #[test]
    fn both_configs_carry_the_bundles_machine_token() {
        let secrets = SecretsBundle::generate().unwrap();
        assert_ne!(secrets.machine_token, secrets.bootstrap_token);
        let (cp, worker) = machine_configs(&secrets, &opts()).unwrap();
        assert_eq!(cp.machine.token.as_ref(), Some(&secrets.machine_token));
        assert_eq!(worker.machine.token.as_ref(), Some(&secrets.machine_token));
    }

    #[test]
    fn generated_configs_round_trip() {
        let secrets = SecretsBundle::generate().unwrap();
        let (cp, worker) = machine_configs(&secrets, &opts()).unwrap();
        assert_eq!(MachineConfig::from_yaml(&cp.to_yaml()).unwrap(), cp);
        assert_eq!(MachineConfig::from_yaml(&worker.to_yaml()).unwrap(), worker);
    }

    #[test]
    fn endpoint_host_and_extra_sans_are_in_the_certificate_sans() {
        let secrets = SecretsBundle::generate().unwrap();
        let mut o = opts();
        o.additional_sans = vec![
            "api.example.org".parse().unwrap(),
            "192.0.2.10".parse().unwrap(),
        ];
        let (cp, _) = machine_configs(&secrets, &o).unwrap();
        let sans: Vec<String> = cp
            .cluster
            .api_server
            .cert_sans
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(sans, vec!["192.0.2.10", "api.example.org"]);
        let node_sans = |c: &MachineConfig| -> Vec<String> {
            c.machine.cert_sans.iter().map(|s| s.to_string()).collect()
        };
        let (cp, worker) = machine_configs(&secrets, &o).unwrap();
        assert_eq!(node_sans(&cp), ["192.0.2.10", "api.example.org"]);
        // The endpoint names the control planes: a worker does not claim it.
        assert_eq!(node_sans(&worker), ["api.example.org"]);
    }
}
