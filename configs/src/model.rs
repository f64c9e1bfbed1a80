//! The machine-config document, `version: v1alpha1`. Field names are camelCase in
//! YAML/JSON; every struct refuses unknown fields. Fields that default to "nothing"
//! (false, empty list/map, absent) are left out when serialising; fields whose default
//! is a real value (pod/service subnets, DNS domain, CNI, Kubernetes version, sandbox
//! image) are always written, so a generated config shows what the node will run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::values::{
    AbsolutePath, BootstrapToken, Cidr, ClusterName, ContainerImage, DnsName, Endpoint, FileMode,
    Hostname, InterfaceName, IpAddress, KernelModuleName, KernelModuleParameter, KubernetesVersion,
    MacAddress, MirrorEndpoint, PemCertificate, PemPrivateKey, RegistryName, SubjectAltName,
    SysctlKey, SysctlValue, TimeServer,
};

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// One machine config document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub struct MachineConfig {
    pub version: ConfigVersion,
    pub machine: MachineSpec,
    pub cluster: ClusterSpec,
}

/// The document format version. Only `v1alpha1` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfigVersion {
    #[default]
    V1Alpha1,
}

impl ConfigVersion {
    pub const ALL: &[ConfigVersion] = &[ConfigVersion::V1Alpha1];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfigVersion::V1Alpha1 => "v1alpha1",
        }
    }
}

impl Serialize for ConfigVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ConfigVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ConfigVersion::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == text)
            .ok_or_else(|| {
                let valid: Vec<&str> = ConfigVersion::ALL.iter().map(|v| v.as_str()).collect();
                serde::de::Error::custom(format!(
                    "unsupported config version `{text}`: valid versions are {}",
                    valid.join(", ")
                ))
            })
    }
}

/// What this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// Runs etcd and the Kubernetes control plane; carries the CA keys.
    Controlplane,
    /// Runs kubelet only; carries no private key of the cluster.
    Worker,
}

/// `machine`: everything about this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct MachineSpec {
    #[serde(rename = "type")]
    pub machine_type: MachineType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub network: NetworkSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub time: TimeSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub kubelet: KubeletSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<SysctlKey, SysctlValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<MachineFile>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub kernel: KernelSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub registries: RegistriesSpec,
    /// The CA of the node API (basaltctl ↔ machined). The key only on control planes.
    pub ca: CertificateAndKey,
    /// Extra names/addresses for the node API's serving certificate.
    #[serde(rename = "certSANs", default, skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<SubjectAltName>,
    /// The machine token (Talos: `machine.token`), shared by the cluster's nodes: it
    /// authorises a worker's request to a control plane's trustd for an API serving
    /// certificate. A worker without it serves a self-signed certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<BootstrapToken>,
}

/// `machine.install`: where the image goes on first boot (metal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct InstallSpec {
    /// The whole disk to partition (`/dev/vda`, `/dev/disk/by-id/...`).
    pub disk: AbsolutePath,
    /// Wipe the disk even when it already holds a Basalt installation.
    #[serde(default, skip_serializing_if = "is_default")]
    pub wipe: bool,
}

/// `machine.network`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct NetworkSpec {
    /// Interfaces configured explicitly. With none, machined runs DHCP on every
    /// interface that has a link.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddress>,
}

/// How an interface entry picks its link: by kernel name or by hardware address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceSelector {
    Name(InterfaceName),
    Device(DeviceSelector),
}

/// `deviceSelector`: matches a link by its permanent hardware address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct DeviceSelector {
    pub hardware_addr: MacAddress,
}

/// `machine.network.interfaces[]`. Exactly one of `interface` and `deviceSelector`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NetworkInterfaceDoc", into = "NetworkInterfaceDoc")]
pub struct NetworkInterface {
    pub selector: InterfaceSelector,
    pub dhcp: bool,
    pub addresses: Vec<Cidr>,
    pub routes: Vec<Route>,
    pub mtu: Option<u32>,
    pub vip: Option<Vip>,
}

impl NetworkInterface {
    /// An interface entry for `name` with nothing configured yet (no DHCP, no address).
    pub fn named(name: InterfaceName) -> Self {
        NetworkInterface {
            selector: InterfaceSelector::Name(name),
            dhcp: false,
            addresses: Vec::new(),
            routes: Vec::new(),
            mtu: None,
            vip: None,
        }
    }
}

/// The document shape of [`NetworkInterface`]; the selector is two optional fields here
/// and one enum in the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub(crate) struct NetworkInterfaceDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interface: Option<InterfaceName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_selector: Option<DeviceSelector>,
    #[serde(default, skip_serializing_if = "is_default")]
    dhcp: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vip: Option<Vip>,
}

impl TryFrom<NetworkInterfaceDoc> for NetworkInterface {
    type Error = String;
    fn try_from(doc: NetworkInterfaceDoc) -> Result<Self, String> {
        let selector = match (doc.interface, doc.device_selector) {
            (Some(name), None) => InterfaceSelector::Name(name),
            (None, Some(device)) => InterfaceSelector::Device(device),
            (Some(_), Some(_)) => {
                return Err("set either `interface` or `deviceSelector`, not both".to_owned());
            }
            (None, None) => {
                return Err("one of `interface` or `deviceSelector` is required".to_owned());
            }
        };
        Ok(NetworkInterface {
            selector,
            dhcp: doc.dhcp,
            addresses: doc.addresses,
            routes: doc.routes,
            mtu: doc.mtu,
            vip: doc.vip,
        })
    }
}

impl From<NetworkInterface> for NetworkInterfaceDoc {
    fn from(i: NetworkInterface) -> Self {
        let (interface, device_selector) = match i.selector {
            InterfaceSelector::Name(n) => (Some(n), None),
            InterfaceSelector::Device(d) => (None, Some(d)),
        };
        NetworkInterfaceDoc {
            interface,
            device_selector,
            dhcp: i.dhcp,
            addresses: i.addresses,
            routes: i.routes,
            mtu: i.mtu,
            vip: i.vip,
        }
    }
}

/// `machine.network.interfaces[].routes[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct Route {
    pub network: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
}

/// `machine.network.interfaces[].vip`: the shared control-plane address this interface
/// competes for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct Vip {
    pub ip: IpAddress,
}

/// `machine.time`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct TimeSpec {
    /// NTP servers; empty means machined's built-in default (`pool.ntp.org`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<TimeServer>,
}

/// `machine.kubelet`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct KubeletSpec {
    /// Extra `--flag=value` arguments, by flag name without the dashes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<String, String>,
    #[serde(rename = "nodeIP", default, skip_serializing_if = "is_default")]
    pub node_ip: NodeIpSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_labels: BTreeMap<String, String>,
    /// Taints as `key: value:Effect`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_taints: BTreeMap<String, String>,
}

/// `machine.kubelet.nodeIP`: which of the node's addresses kubelet advertises.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct NodeIpSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid_subnets: Vec<Cidr>,
}

/// `machine.files[]`: a file machined writes at boot (under /var or /etc overlays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct MachineFile {
    pub path: AbsolutePath,
    #[serde(default, skip_serializing_if = "is_default_mode")]
    pub permissions: FileMode,
    pub content: String,
}

fn is_default_mode(m: &FileMode) -> bool {
    *m == FileMode::default()
}

/// `machine.kernel`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct KernelSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<KernelModule>,
}

/// `machine.kernel.modules[]`: a module machined loads at boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct KernelModule {
    pub name: KernelModuleName,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<KernelModuleParameter>,
}

/// `machine.registries`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct RegistriesSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mirrors: BTreeMap<RegistryName, RegistryMirror>,
}

/// `machine.registries.mirrors.<registry>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct RegistryMirror {
    pub endpoints: Vec<MirrorEndpoint>,
}

/// A certificate authority: its certificate, and its key where this node signs with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct CertificateAndKey {
    pub crt: PemCertificate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PemPrivateKey>,
}

/// `cluster`: what every node of the cluster shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct ClusterSpec {
    pub name: ClusterName,
    pub control_plane: ControlPlaneSpec,
    #[serde(default = "KubernetesVersion::default_version")]
    pub kubernetes_version: KubernetesVersion,
    #[serde(default)]
    pub network: ClusterNetworkSpec,
    /// The kubeadm bootstrap token nodes join with.
    pub token: BootstrapToken,
    /// The Kubernetes CA. The key only on control planes.
    pub ca: CertificateAndKey,
    /// The front-proxy (aggregation layer) CA; control planes only, with its key.
    #[serde(
        rename = "aggregatorCA",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub aggregator_ca: Option<CertificateAndKey>,
    /// The key signing service-account tokens; control planes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub etcd: EtcdSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub api_server: ApiServerSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub controller_manager: ComponentSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub scheduler: ComponentSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub proxy: ProxySpec,
    #[serde(rename = "coreDNS", default, skip_serializing_if = "is_default")]
    pub core_dns: CoreDnsSpec,
    #[serde(default, skip_serializing_if = "is_default")]
    pub allow_scheduling_on_control_planes: bool,
    #[serde(default = "default_sandbox_image")]
    pub sandbox_image: ContainerImage,
}

pub(crate) const DEFAULT_SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";

pub fn default_sandbox_image() -> ContainerImage {
    // A constant that passes ContainerImage's check; the test below keeps it that way.
    DEFAULT_SANDBOX_IMAGE
        .parse()
        .unwrap_or_else(|_| unreachable!())
}

impl ClusterSpec {
    fn k8s_image(&self, component: &str, spec: Option<&ContainerImage>) -> String {
        match spec {
            Some(image) => image.to_string(),
            None => format!("registry.k8s.io/{component}:{}", self.kubernetes_version),
        }
    }
    /// The kube-apiserver image: `apiServer.image`, or upstream's for `kubernetesVersion`.
    pub fn api_server_image(&self) -> String {
        self.k8s_image("kube-apiserver", self.api_server.image.as_ref())
    }
    pub fn controller_manager_image(&self) -> String {
        self.k8s_image(
            "kube-controller-manager",
            self.controller_manager.image.as_ref(),
        )
    }
    pub fn scheduler_image(&self) -> String {
        self.k8s_image("kube-scheduler", self.scheduler.image.as_ref())
    }
    pub fn proxy_image(&self) -> String {
        self.k8s_image("kube-proxy", self.proxy.image.as_ref())
    }
    /// CoreDNS has its own release train; the default is the one kubeadm pins for 1.31.
    pub fn core_dns_image(&self) -> String {
        match &self.core_dns.image {
            Some(image) => image.to_string(),
            None => DEFAULT_COREDNS_IMAGE.to_owned(),
        }
    }
}

pub(crate) const DEFAULT_COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.11.3";

/// `cluster.controlPlane`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct ControlPlaneSpec {
    /// Where the Kubernetes API is reached: the VIP or a load balancer, with its port.
    pub endpoint: Endpoint,
}

/// `cluster.network`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct ClusterNetworkSpec {
    #[serde(default = "default_pod_subnets")]
    pub pod_subnets: Vec<Cidr>,
    #[serde(default = "default_service_subnets")]
    pub service_subnets: Vec<Cidr>,
    #[serde(default = "default_dns_domain")]
    pub dns_domain: DnsName,
    #[serde(default)]
    pub cni: CniSpec,
}

impl Default for ClusterNetworkSpec {
    fn default() -> Self {
        ClusterNetworkSpec {
            pod_subnets: default_pod_subnets(),
            service_subnets: default_service_subnets(),
            dns_domain: default_dns_domain(),
            cni: CniSpec::default(),
        }
    }
}

fn default_pod_subnets() -> Vec<Cidr> {
    vec![Cidr::new(ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(
        [10, 244, 0, 0].into(),
        16,
    )))]
}

fn default_service_subnets() -> Vec<Cidr> {
    vec![Cidr::new(ipnet::IpNet::V4(ipnet::Ipv4Net::new_assert(
        [10, 96, 0, 0].into(),
        12,
    )))]
}

fn default_dns_domain() -> DnsName {
    "cluster.local".parse().unwrap_or_else(|_| unreachable!())
}

/// `cluster.network.cni`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct CniSpec {
    pub name: CniName,
}

/// Which CNI machined installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CniName {
    /// flannel (VXLAN), applied by machined after the API server answers.
    #[default]
    Flannel,
    /// No CNI: the operator installs one.
    None,
}

/// `cluster.serviceAccount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct ServiceAccountSpec {
    pub key: PemPrivateKey,
}

/// `cluster.etcd`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct EtcdSpec {
    /// The etcd CA; control planes only, with its key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertificateAndKey>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<String, String>,
    /// Which of the node's subnets etcd advertises its peer address from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advertised_subnets: Vec<Cidr>,
}

/// `cluster.apiServer`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct ApiServerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ContainerImage>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<String, String>,
    #[serde(rename = "certSANs", default, skip_serializing_if = "Vec::is_empty")]
    pub cert_sans: Vec<SubjectAltName>,
}

/// `cluster.controllerManager` and `cluster.scheduler`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct ComponentSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ContainerImage>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<String, String>,
}

/// `cluster.proxy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct ProxySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ContainerImage>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_args: BTreeMap<String, String>,
    /// Do not deploy kube-proxy (a CNI replaces it).
    #[serde(default, skip_serializing_if = "is_default")]
    pub disabled: bool,
}

/// `cluster.coreDNS`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct CoreDnsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ContainerImage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_constants_are_valid() {
        assert_eq!(default_sandbox_image().as_str(), DEFAULT_SANDBOX_IMAGE);
        assert_eq!(default_dns_domain().as_str(), "cluster.local");
        assert!(DEFAULT_COREDNS_IMAGE.parse::<ContainerImage>().is_ok());
    }
}
