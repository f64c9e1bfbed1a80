//! Semantic validation: the rules a well-typed config can still break. Parsing already
//! refused anything with a bad value (hostname, token, endpoint, CIDR, PEM envelope …);
//! what is left here are relations between fields and facts only a certificate parser
//! knows. Every rule runs, so one call reports every problem, each with its field path.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use crate::model::{
    CertificateAndKey, InterfaceSelector, MachineConfig, MachineType, NetworkInterface,
};
use crate::pki;
use crate::values::{Cidr, REDACTED};

/// Where the node runs. The mode decides which parts of the config are required or
/// meaningless.
///
/// - `metal`: a physical or virtual machine Basalt installs itself on. Requires
///   `machine.install` (the disk to install to).
/// - `cloud`: a VM booted from a pre-built Basalt disk image; nothing is installed, so
///   `machine.install` is optional (and ignored when present).
/// - `container`: Basalt runs as a container (CI, labs). The container runtime owns the
///   root filesystem, the network and the kernel, so `machine.install`,
///   `machine.network.interfaces` and `machine.kernel.modules` are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Metal,
    Cloud,
    Container,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Metal, Mode::Cloud, Mode::Container];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Metal => "metal",
            Mode::Cloud => "cloud",
            Mode::Container => "container",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name that is not one of `metal`, `cloud`, `container`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode `{0}`: expected metal, cloud or container")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

/// One broken rule: where, and what is wrong, as a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every rule a config breaks, in document order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    pub errors: Vec<ValidationError>,
}

impl ValidationErrors {
    /// The messages as `path: sentence` lines, for tests and for the API.
    pub fn lines(&self) -> Vec<String> {
        self.errors.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.errors.as_slice() {
            [one] => write!(f, "the machine config is invalid: {one}"),
            many => {
                write!(f, "the machine config has {} problems:", many.len())?;
                for e in many {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

struct Report(Vec<ValidationError>);

impl Report {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            path: path.into(),
            message: message.into(),
        });
    }
}

impl MachineConfig {
    /// Checks every semantic rule for a node running in `mode`; see [`Mode`] and
    /// docs/configuration.md ("Validation rules").
    pub fn validate(&self, mode: Mode) -> Result<(), ValidationErrors> {
        let mut r = Report(Vec::new());
        check_mode(self, mode, &mut r);
        check_interfaces(self, &mut r);
        check_files(self, &mut r);
        check_taints(self, &mut r);
        check_cluster_network(self, &mut r);
        check_secrets(self, &mut r);
        if r.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors { errors: r.0 })
        }
    }
}

fn check_mode(c: &MachineConfig, mode: Mode, r: &mut Report) {
    let m = &c.machine;
    match mode {
        Mode::Metal => {
            if m.install.is_none() {
                r.push(
                    "machine.install",
                    "is required in metal mode: set machine.install.disk to the disk Basalt installs itself on",
                );
            }
        }
        Mode::Cloud => {}
        Mode::Container => {
            if m.install.is_some() {
                r.push(
                    "machine.install",
                    "is not allowed in container mode: the container runtime provides the root filesystem",
                );
            }
            if !m.network.interfaces.is_empty() {
                r.push(
                    "machine.network.interfaces",
                    "is not allowed in container mode: the container runtime owns the network",
                );
            }
            if !m.kernel.modules.is_empty() {
                r.push(
                    "machine.kernel.modules",
                    "is not allowed in container mode: a container cannot load kernel modules",
                );
            }
        }
    }
}

fn check_interfaces(c: &MachineConfig, r: &mut Report) {
    let interfaces = &c.machine.network.interfaces;
    let mut by_name = HashMap::new();
    let mut by_mac = HashMap::new();
    let mut first_vip: Option<usize> = None;
    for (i, iface) in interfaces.iter().enumerate() {
        let at = format!("machine.network.interfaces[{i}]");
        match &iface.selector {
            InterfaceSelector::Name(name) => {
                if let Some(j) = by_name.insert(name.clone(), i) {
                    r.push(
                        format!("{at}.interface"),
                        format!("{name} is already configured by machine.network.interfaces[{j}]"),
                    );
                    by_name.insert(name.clone(), j);
                }
            }
            InterfaceSelector::Device(d) => {
                if let Some(j) = by_mac.insert(d.hardware_addr, i) {
                    r.push(
                        format!("{at}.deviceSelector.hardwareAddr"),
                        format!(
                            "{} is already selected by machine.network.interfaces[{j}]",
                            d.hardware_addr
                        ),
                    );
                    by_mac.insert(d.hardware_addr, j);
                }
            }
        }
        if let Some(mtu) = iface.mtu
            && !(68..=65535).contains(&mtu)
        {
            r.push(format!("{at}.mtu"), format!("{mtu} is outside 68..65535"));
        }
        for (k, route) in iface.routes.iter().enumerate() {
            if let Some(gw) = route.gateway
                && gw.ip().is_ipv4() != route.network.addr().is_ipv4()
            {
                r.push(
                    format!("{at}.routes[{k}].gateway"),
                    format!(
                        "{gw} and the route's network {} are of different IP families",
                        route.network
                    ),
                );
            }
        }
        if iface.vip.is_some() {
            check_vip(c, iface, &at, r);
            match first_vip {
                Some(j) => r.push(
                    format!("{at}.vip"),
                    format!(
                        "a node holds at most one VIP, and machine.network.interfaces[{j}] already has one"
                    ),
                ),
                None => first_vip = Some(i),
            }
        }
    }
}

/// The VIP must sit in a subnet the interface has a static address in: that is the
/// subnet its gratuitous ARP reaches. On a DHCP-only interface the subnet is only known
/// once a lease arrives, and may change with the next one, so such a VIP is refused.
fn check_vip(c: &MachineConfig, iface: &NetworkInterface, at: &str, r: &mut Report) {
    let Some(vip) = &iface.vip else { return };
    let ip = vip.ip.ip();
    if c.machine.machine_type == MachineType::Worker {
        r.push(
            format!("{at}.vip"),
            "only control planes hold the shared VIP; remove it from this worker",
        );
        return;
    }
    if iface.addresses.is_empty() {
        let why = if iface.dhcp {
            "is on a DHCP-only interface: add a static address in the VIP's subnet to addresses, because the subnet a DHCP lease gives is not known in advance"
        } else {
            "is on an interface without addresses: add a static address in the VIP's subnet"
        };
        r.push(format!("{at}.vip.ip"), format!("{ip} {why}"));
        return;
    }
    if iface.addresses.iter().any(|a| a.addr() == ip) {
        r.push(
            format!("{at}.vip.ip"),
            format!("{ip} is also a static address of this interface; the VIP must be an otherwise unused address"),
        );
    } else if !iface.addresses.iter().any(|a| a.contains(ip)) {
        let subnets: Vec<String> = iface
            .addresses
            .iter()
            .map(|a| a.network().to_string())
            .collect();
        r.push(
            format!("{at}.vip.ip"),
            format!(
                "{ip} is outside the interface's subnets ({})",
                subnets.join(", ")
            ),
        );
    }
}

fn check_files(c: &MachineConfig, r: &mut Report) {
    let mut seen = HashMap::new();
    for (i, file) in c.machine.files.iter().enumerate() {
        if let Some(j) = seen.insert(file.path.clone(), i) {
            r.push(
                format!("machine.files[{i}].path"),
                format!("{} is already written by machine.files[{j}]", file.path),
            );
            seen.insert(file.path.clone(), j);
        }
    }
}

fn check_taints(c: &MachineConfig, r: &mut Report) {
    for (key, value) in &c.machine.kubelet.node_taints {
        let effect = value.rsplit(':').next().unwrap_or_default();
        if !value.contains(':')
            || !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute")
        {
            r.push(
                format!("machine.kubelet.nodeTaints.{key}"),
                "expected value:Effect with Effect one of NoSchedule, PreferNoSchedule, NoExecute",
            );
        }
    }
}

fn check_cluster_network(c: &MachineConfig, r: &mut Report) {
    let net = &c.cluster.network;
    for (field, list) in [
        ("podSubnets", &net.pod_subnets),
        ("serviceSubnets", &net.service_subnets),
    ] {
        if list.is_empty() {
            r.push(
                format!("cluster.network.{field}"),
                "needs at least one subnet",
            );
        }
        for (i, cidr) in list.iter().enumerate() {
            if !cidr.is_network() {
                r.push(
                    format!("cluster.network.{field}[{i}]"),
                    format!(
                        "{cidr} has host bits set; write the subnet as {}",
                        cidr.network()
                    ),
                );
            }
        }
    }
    for (i, svc) in net.service_subnets.iter().enumerate() {
        for (j, pod) in net.pod_subnets.iter().enumerate() {
            if svc.overlaps(pod) {
                r.push(
                    format!("cluster.network.serviceSubnets[{i}]"),
                    format!(
                        "{svc} overlaps the pod subnet {pod} (cluster.network.podSubnets[{j}]); pod and service addresses must not collide"
                    ),
                );
            }
        }
    }
}

fn check_secrets(c: &MachineConfig, r: &mut Report) {
    let controlplane = c.machine.machine_type == MachineType::Controlplane;
    let cluster = &c.cluster;
    if cluster.token.is_redacted() {
        r.push("cluster.token", redacted_message());
    }
    if c.machine.token.as_ref().is_some_and(|t| t.is_redacted()) {
        r.push("machine.token", redacted_message());
    }
    let cas: [(&str, Option<&CertificateAndKey>, &str); 4] = [
        ("machine.ca", Some(&c.machine.ca), "the node API CA"),
        ("cluster.ca", Some(&cluster.ca), "the Kubernetes CA"),
        (
            "cluster.aggregatorCA",
            cluster.aggregator_ca.as_ref(),
            "the front-proxy CA",
        ),
        ("cluster.etcd.ca", cluster.etcd.ca.as_ref(), "the etcd CA"),
    ];
    for (at, ca, what) in cas {
        match ca {
            None if controlplane => r.push(
                at,
                format!("is required on a control plane: {what}, with its key"),
            ),
            None => {}
            Some(ca) => check_ca(at, ca, what, controlplane, r),
        }
    }
    match &cluster.service_account {
        None if controlplane => r.push(
            "cluster.serviceAccount",
            "is required on a control plane: the key that signs service-account tokens",
        ),
        None => {}
        Some(_) if !controlplane => r.push(
            "cluster.serviceAccount.key",
            "a worker must not carry the service-account signing key: whoever reads the worker's config could forge service-account tokens",
        ),
        Some(sa) if sa.key.is_redacted() => r.push("cluster.serviceAccount.key", redacted_message()),
        Some(sa) => {
            if let Err(e) = pki::parse_private_key_pem(sa.key.as_str()) {
                r.push("cluster.serviceAccount.key", e.to_string());
            }
        }
    }
}

fn redacted_message() -> String {
    format!("is redacted ({REDACTED}); a redacted config can be read but cannot run a node")
}

fn check_ca(at: &str, ca: &CertificateAndKey, what: &str, controlplane: bool, r: &mut Report) {
    let cert_ok = match pki::check_certificate_pem(ca.crt.as_str()) {
        Err(e) => {
            r.push(format!("{at}.crt"), e.to_string());
            false
        }
        Ok(info) if !info.is_ca => {
            r.push(
                format!("{at}.crt"),
                format!(
                    "the certificate for {} is not a certificate authority (basicConstraints CA:TRUE is missing)",
                    info.subject_name()
                ),
            );
            false
        }
        Ok(_) => true,
    };
    match &ca.key {
        None if controlplane => r.push(
            format!("{at}.key"),
            format!("is required on a control plane: {what} signs certificates there"),
        ),
        None => {}
        Some(_) if !controlplane => r.push(
            format!("{at}.key"),
            format!(
                "a worker must not carry the private key of {what}: whoever reads the worker's config could mint certificates"
            ),
        ),
        Some(key) if key.is_redacted() => r.push(format!("{at}.key"), redacted_message()),
        Some(key) => {
            let result = if cert_ok {
                pki::check_key_pair(ca.crt.as_str(), key.as_str())
            } else {
                pki::parse_private_key_pem(key.as_str()).map(drop)
            };
            if let Err(e) = result {
                r.push(format!("{at}.key"), e.to_string());
            }
        }
    }
}

/// Whether two subnet lists share an address; used by generation code that wants to
/// pick non-colliding defaults.
pub fn any_overlap(a: &[Cidr], b: &[Cidr]) -> bool {
    a.iter().any(|x| b.iter().any(|y| x.overlaps(y)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names() {
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), m);
        }
        assert_eq!(
            "vm".parse::<Mode>().unwrap_err().to_string(),
            "unknown mode `vm`: expected metal, cloud or container"
        );
    }

    #[test]
    fn errors_display_as_a_list() {
        let one = ValidationErrors {
            errors: vec![ValidationError {
                path: "a.b".into(),
                message: "is wrong".into(),
            }],
        };
        assert_eq!(
            one.to_string(),
            "the machine config is invalid: a.b: is wrong"
        );
        let two = ValidationErrors {
            errors: vec![one.errors[0].clone(), one.errors[0].clone()],
        };
        assert_eq!(
            two.to_string(),
            "the machine config has 2 problems:\n  a.b: is wrong\n  a.b: is wrong"
        );
    }

    #[test]
    fn overlap_helper() {
        let a: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let b: Vec<Cidr> = vec!["10.1.0.0/16".parse().unwrap()];
        let c: Vec<Cidr> = vec!["192.168.0.0/16".parse().unwrap()];
        assert!(any_overlap(&a, &b));
        assert!(!any_overlap(&a, &c));
    }
}
