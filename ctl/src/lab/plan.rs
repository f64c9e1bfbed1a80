//! Planning a lab, apart from any I/O: validated arguments, the cluster's configs for
//! QEMU's user-mode network, and host port allocation. `lab::run` does the I/O.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use basalt_config::client_config::{self, ClientConfig, Context, Role};
use basalt_config::generate::{self, GenOptions};
use basalt_config::patch::{self, ConfigPatch};
use basalt_config::secrets::SecretsBundle;
use basalt_config::{ClusterName, Endpoint, MachineConfig, SubjectAltName};

/// The address QEMU's user-mode network (slirp) gives the guest by DHCP. The node sees
/// itself there, so the cluster endpoint and the certificates name it.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The node API's port inside the guest.
pub const GUEST_API_PORT: u16 = 50000;
/// The Kubernetes API server's port inside the guest.
pub const GUEST_KUBERNETES_PORT: u16 = 6443;
/// The NIC QEMU's single virtio-net device becomes in a kernel without udev renames.
pub const GUEST_INTERFACE: &str = "eth0";
/// The node's disk as the guest sees it (the first virtio-blk device).
pub const GUEST_INSTALL_DISK: &str = "/dev/vda";

/// Why a lab cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "lab name {name:?} is not usable: {reason} (1-40 characters a-z, 0-9 and '-', not starting or ending with '-')"
    )]
    Name { name: String, reason: &'static str },
    #[error("disk size {value:?} is not a size: {reason} (examples: 4G, 8192M, 20G)")]
    DiskSize { value: String, reason: &'static str },
    #[error(
        "this lab would have {controlplanes} control plane(s) and {workers} worker(s), but only one control plane and no workers are supported for now: multi-node labs land with the lab issue"
    )]
    NodeCount { controlplanes: u32, workers: u32 },
    #[error("--{field} {value} is too small: a node needs at least {minimum}")]
    TooSmall {
        field: &'static str,
        value: u64,
        minimum: u64,
    },
    #[error("--no-disk needs --pxe: a UEFI disk boot has nothing to boot from without the disk")]
    DisklessNeedsPxe,
    #[error("the lab name {name:?} is not a valid cluster name: {reason}")]
    ClusterName { name: String, reason: String },
    #[error("generating the lab's secrets: {0}")]
    Secrets(#[from] basalt_config::secrets::SecretsError),
    #[error("generating the lab's machine configs: {0}")]
    Generate(#[from] generate::GenerateError),
    #[error("adapting the control-plane config to QEMU's network: {0}")]
    Patch(#[from] patch::PatchError),
    #[error("issuing the lab's admin client certificate: {0}")]
    ClientConfig(#[from] client_config::ClientConfigError),
    #[error(
        "could not find {wanted} distinct free host ports (got {got:?} after {attempts} tries; in use by other labs: {taken:?})"
    )]
    Ports {
        wanted: usize,
        got: Vec<u16>,
        attempts: usize,
        taken: Vec<u16>,
    },
    #[error("finding a free host port: {0}")]
    Probe(#[from] super::qemu::QemuError),
}

/// A lab's name: it names the state directory and the cluster, so it is a DNS label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

impl LabName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LabName {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let refuse = |reason| PlanError::Name {
            name: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(refuse("it is empty"));
        }
        if s.len() > 40 {
            return Err(refuse("it is longer than 40 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(refuse("it contains a character other than a-z, 0-9, '-'"));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(refuse("it starts or ends with '-'"));
        }
        Ok(LabName(s.to_owned()))
    }
}

impl TryFrom<String> for LabName {
    type Error = PlanError;
    fn try_from(s: String) -> Result<Self, PlanError> {
        s.parse()
    }
}

impl From<LabName> for String {
    fn from(n: LabName) -> String {
        n.0
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad, not write_str: `lab list` aligns names in columns.
        f.pad(&self.0)
    }
}

/// A disk size in bytes, written like qemu-img's: a number with an optional K, M, G or
/// T suffix (powers of 1024); a bare number is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DiskSize(u64);

impl DiskSize {
    pub const fn from_bytes(bytes: u64) -> Self {
        DiskSize(bytes)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for DiskSize {
    type Err = PlanError;
    fn from_str(s: &str) -> Result<Self, PlanError> {
        let refuse = |reason| PlanError::DiskSize {
            value: s.to_owned(),
            reason,
        };
        let t = s.trim();
        let (digits, shift) = match t.char_indices().last() {
            None => return Err(refuse("it is empty")),
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    'T' => 40,
                    _ => return Err(refuse("the unit is not one of K, M, G, T")),
                };
                (&t[..i], shift)
            }
            Some(_) => (t, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse("it is not a whole number with an optional unit"));
        }
        let n: u64 = digits.parse().map_err(|_| refuse("it is too large"))?;
        let bytes = n
            .checked_mul(1u64 << shift)
            .ok_or_else(|| refuse("it is too large"))?;
        if bytes == 0 {
            return Err(refuse("it is zero"));
        }
        Ok(DiskSize(bytes))
    }
}

impl fmt::Display for DiskSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// What the operator asked for, validated by [`LabSpec::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    pub name: LabName,
    pub controlplanes: u32,
    pub workers: u32,
    pub memory_mib: u32,
    pub cpus: u32,
    pub disk_size: DiskSize,
    /// Boot with -kernel/-initrd (the PXE bundle's files) instead of the disk image.
    pub pxe: bool,
    /// No disk at all (only with `pxe`): STATE lives in memory, so the config does not
    /// survive a reboot of the VM.
    pub diskless: bool,
}

/// Below this, containerd and machined do not fit next to the tmpfs root.
pub const MIN_MEMORY_MIB: u32 = 1024;
/// The disk must hold STATE and EPHEMERAL (containerd's content) next to the ESP.
pub const MIN_DISK: DiskSize = DiskSize(1 << 30);

impl LabSpec {
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.controlplanes != 1 || self.workers != 0 {
            return Err(PlanError::NodeCount {
                controlplanes: self.controlplanes,
                workers: self.workers,
            });
        }
        if self.diskless && !self.pxe {
            return Err(PlanError::DisklessNeedsPxe);
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(PlanError::TooSmall {
                field: "memory",
                value: self.memory_mib.into(),
                minimum: MIN_MEMORY_MIB.into(),
            });
        }
        if self.cpus == 0 {
            return Err(PlanError::TooSmall {
                field: "cpus",
                value: 0,
                minimum: 1,
            });
        }
        if self.disk_size < MIN_DISK {
            return Err(PlanError::TooSmall {
                field: "disk-size",
                value: self.disk_size.bytes(),
                minimum: MIN_DISK.bytes(),
            });
        }
        Ok(())
    }

    /// The nodes of this lab, in boot order.
    pub fn nodes(&self) -> Vec<NodePlan> {
        (1..=self.controlplanes)
            .map(|i| NodePlan {
                name: format!("controlplane-{i}"),
                role: NodeRole::Controlplane,
            })
            .chain((1..=self.workers).map(|i| NodePlan {
                name: format!("worker-{i}"),
                role: NodeRole::Worker,
            }))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Controlplane,
    Worker,
}

/// One VM of a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// Also names its files in the state directory (`<name>.log`, `<name>.raw`).
    pub name: String,
    pub role: NodeRole,
}

/// The files `lab create` writes into the state directory, as text.
#[derive(Debug, Clone)]
pub struct LabConfigs {
    pub secrets_yaml: String,
    pub controlplane: MachineConfig,
    pub worker: MachineConfig,
    /// Client config whose endpoint is the host side of the node API forward.
    pub basaltconfig: ClientConfig,
}

/// The cluster's endpoint as the node itself reaches its API server: under user-mode
/// networking the guest is [`GUEST_IP`], and 127.0.0.1 inside the guest would be the
/// node's own loopback too, but the endpoint must be the address peers use.
pub fn cluster_endpoint() -> Endpoint {
    // A constant URL; the unit test keeps it parsing.
    format!("https://{GUEST_IP}:{GUEST_KUBERNETES_PORT}")
        .parse()
        .unwrap_or_else(|_| unreachable!("the lab endpoint is a valid URL"))
}

/// The patch that fits a generated control-plane config to a QEMU user-mode VM: DHCP on
/// its single NIC and a hostname after the node.
pub fn qemu_patch(node_name: &str) -> Result<ConfigPatch, PlanError> {
    let text = format!(
        "machine:\n  hostname: {node_name}\n  network:\n    interfaces:\n      - interface: {GUEST_INTERFACE}\n        dhcp: true\n"
    );
    Ok(ConfigPatch::from_text(
        "the lab's QEMU network patch".to_owned(),
        &text,
    )?)
}

fn localhost_san() -> SubjectAltName {
    // A constant address; the config unit test checks it lands in certSANs.
    IpAddr::V4(Ipv4Addr::LOCALHOST)
        .to_string()
        .parse()
        .unwrap_or_else(|_| unreachable!("127.0.0.1 is a valid SAN"))
}

/// Generates a lab's secrets and configs in memory: `gen config <name>
/// https://10.0.2.15:6443` with 127.0.0.1 as an extra SAN (the host reaches the node
/// through forwards on loopback), /dev/vda as the install disk (none for a diskless
/// node: a config naming a disk the VM lacks fails machined's disks phase), DHCP on
/// eth0, and a basaltconfig pointing at `127.0.0.1:<api_host_port>`.
pub fn lab_configs(
    name: &LabName,
    node_name: &str,
    api_host_port: u16,
    diskless: bool,
) -> Result<LabConfigs, PlanError> {
    let cluster_name: ClusterName =
        name.as_str()
            .parse()
            .map_err(|e: basalt_config::ValueError| PlanError::ClusterName {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
    let bundle = SecretsBundle::generate()?;
    let mut opts = GenOptions::new(cluster_name, cluster_endpoint());
    opts.install_disk = if diskless {
        None
    } else {
        GUEST_INSTALL_DISK.parse().ok()
    };
    opts.additional_sans = vec![localhost_san()];
    let (cp, worker) = generate::machine_configs(&bundle, &opts)?;
    let mode = generate::mode_for(&cp);
    let cp = patch::apply_patches_and_validate(&cp, &[qemu_patch(node_name)?], mode)?;
    let admin = client_config::issue_client_certificate(
        &bundle.api.ca.cert_and_key(),
        Role::Admin,
        "admin",
    )?;
    let basaltconfig = ClientConfig::single(
        name.as_str(),
        Context {
            endpoints: vec![format!("127.0.0.1:{api_host_port}")],
            nodes: Vec::new(),
            ca: bundle.api.ca.crt.as_str().to_owned(),
            crt: admin.cert_pem,
            key: admin.key_pem,
        },
    );
    Ok(LabConfigs {
        secrets_yaml: bundle.to_yaml()?,
        controlplane: cp,
        worker,
        basaltconfig,
    })
}

/// Picks `wanted` distinct host ports from `probe` (which returns a port that was free a
/// moment ago), skipping ports other labs recorded: their VMs may be stopped right now,
/// but their forwards will want the same ports back.
pub fn allocate_ports(
    wanted: usize,
    taken: &BTreeSet<u16>,
    mut probe: impl FnMut() -> Result<u16, super::qemu::QemuError>,
) -> Result<Vec<u16>, PlanError> {
    let mut got: Vec<u16> = Vec::with_capacity(wanted);
    let max_attempts = wanted * 20 + 20;
    let mut attempts = 0;
    while got.len() < wanted {
        if attempts == max_attempts {
            return Err(PlanError::Ports {
                wanted,
                got,
                attempts,
                taken: taken.iter().copied().collect(),
            });
        }
        attempts += 1;
        let port = probe()?;
        if port != 0 && !taken.contains(&port) && !got.contains(&port) {
            got.push(port);
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_config::Mode;

    fn spec() -> LabSpec {
        LabSpec {
            name: "lab".parse().unwrap(),
            controlplanes: 1,
            workers: 0,
            memory_mib: 2048,
            cpus: 2,
            disk_size: "4G".parse().unwrap(),
            pxe: false,
            diskless: false,
        }
    }

    #[test]
    fn lab_names_are_dns_labels() {
        for good in ["lab", "a", "my-lab-2"] {
            assert_eq!(good.parse::<LabName>().unwrap().as_str(), good);
        }
        for (bad, why) in [
            ("", "empty"),
            ("Lab", "character"),
            ("a/b", "character"),
            ("..", "character"),
            ("-lab", "starts or ends"),
            (&"x".repeat(41), "longer"),
        ] {
            let err = bad.parse::<LabName>().unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn disk_sizes_read_like_qemu_img() {
        assert_eq!("4G".parse::<DiskSize>().unwrap().bytes(), 4 << 30);
        assert_eq!("512m".parse::<DiskSize>().unwrap().bytes(), 512 << 20);
        assert_eq!("1048576".parse::<DiskSize>().unwrap().bytes(), 1 << 20);
        assert_eq!("4G".parse::<DiskSize>().unwrap().to_string(), "4G");
        assert_eq!(DiskSize::from_bytes(1536 << 20).to_string(), "1536M");
        for bad in ["", "G", "4X", "-1G", "1.5G", "0", "99999999999T"] {
            assert!(bad.parse::<DiskSize>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn only_one_control_plane_is_accepted_for_now() {
        spec().validate().unwrap();
        for (cp, w) in [(3, 0), (1, 1), (0, 0), (0, 2)] {
            let err = LabSpec {
                controlplanes: cp,
                workers: w,
                ..spec()
            }
            .validate()
            .unwrap_err();
            assert!(matches!(err, PlanError::NodeCount { .. }), "{err}");
            assert!(
                err.to_string()
                    .contains("multi-node labs land with the lab issue")
            );
        }
    }

    #[test]
    fn too_little_memory_cpu_or_disk_is_refused_by_name() {
        let cases = [
            (
                LabSpec {
                    memory_mib: 512,
                    ..spec()
                },
                "--memory 512",
            ),
            (LabSpec { cpus: 0, ..spec() }, "--cpus 0"),
            (
                LabSpec {
                    disk_size: "100M".parse().unwrap(),
                    ..spec()
                },
                "--disk-size",
            ),
        ];
        for (s, field) in cases {
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn diskless_only_with_kernel_boot() {
        let err = LabSpec {
            diskless: true,
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(err, PlanError::DisklessNeedsPxe), "{err}");
        LabSpec {
            diskless: true,
            pxe: true,
            ..spec()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn node_names_follow_their_role() {
        let nodes = spec().nodes();
        assert_eq!(
            nodes,
            vec![NodePlan {
                name: "controlplane-1".into(),
                role: NodeRole::Controlplane
            }]
        );
    }

    #[test]
    fn endpoint_is_the_guest_address() {
        assert_eq!(cluster_endpoint().to_string(), "https://10.0.2.15:6443");
    }

    /// The control-plane config a lab boots validates in metal mode, installs to the
    /// virtio disk, runs DHCP on eth0, and its certificates name both the guest address
    /// and the host loopback the forwards listen on.
    #[test]
    fn lab_configs_fit_qemu_user_networking() {
        let name: LabName = "lab".parse().unwrap();
        let c = lab_configs(&name, "controlplane-1", 41234, false).unwrap();
        c.controlplane.validate(Mode::Metal).unwrap();
        let yaml = c.controlplane.to_yaml();
        let doc: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let m = &doc["machine"];
        assert_eq!(m["type"], "controlplane");
        assert_eq!(m["install"]["disk"], "/dev/vda");
        assert_eq!(m["hostname"], "controlplane-1");
        assert_eq!(m["network"]["interfaces"][0]["interface"], "eth0");
        assert_eq!(m["network"]["interfaces"][0]["dhcp"], true);
        let sans: Vec<&str> = m["certSANs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(
            sans.contains(&"10.0.2.15") && sans.contains(&"127.0.0.1"),
            "{sans:?}"
        );
        assert_eq!(
            doc["cluster"]["controlPlane"]["endpoint"],
            "https://10.0.2.15:6443"
        );
        assert_eq!(doc["cluster"]["name"], "lab");
        // The worker carries no CA keys; it validates as generated.
        c.worker.validate(Mode::Metal).unwrap();
        let (ctx_name, ctx) = c.basaltconfig.context(None).unwrap();
        assert_eq!(ctx_name, "lab");
        assert_eq!(ctx.endpoints, vec!["127.0.0.1:41234".to_owned()]);
        assert_eq!(ctx.role().unwrap(), Role::Admin);
        // The secrets round-trip, so `gen config --with-secrets` can reuse them.
        SecretsBundle::from_yaml("secrets.yaml", &c.secrets_yaml).unwrap();
    }

    /// A diskless node gets no machine.install (cloud mode): machined would otherwise
    /// try to open /dev/vda, which the VM does not have.
    #[test]
    fn diskless_configs_name_no_install_disk() {
        let name: LabName = "lab".parse().unwrap();
        let c = lab_configs(&name, "controlplane-1", 41234, true).unwrap();
        assert!(c.controlplane.machine.install.is_none());
        assert!(c.worker.machine.install.is_none());
        c.controlplane.validate(Mode::Cloud).unwrap();
        let doc: serde_yaml::Value = serde_yaml::from_str(&c.controlplane.to_yaml()).unwrap();
        assert_eq!(
            doc["machine"]["network"]["interfaces"][0]["interface"],
            "eth0"
        );
    }

    #[test]
    fn ports_skip_other_labs_and_duplicates() {
        let taken: BTreeSet<u16> = [40001, 40002].into();
        let mut offered = vec![40001, 40003, 40003, 0, 40002, 40004].into_iter();
        let ports = allocate_ports(2, &taken, || Ok(offered.next().unwrap())).unwrap();
        assert_eq!(ports, vec![40003, 40004]);
    }

    #[test]
    fn ports_give_up_with_what_they_saw() {
        let taken: BTreeSet<u16> = [40001].into();
        let err = allocate_ports(1, &taken, || Ok(40001)).unwrap_err();
        assert!(matches!(err, PlanError::Ports { wanted: 1, .. }), "{err}");
        assert!(err.to_string().contains("40001"), "{err}");
    }

    #[test]
    fn real_ports_are_distinct_and_nonzero() {
        let ports = allocate_ports(3, &BTreeSet::new(), super::super::qemu::free_port).unwrap();
        assert_eq!(ports.len(), 3);
        assert!(ports.iter().all(|&p| p != 0));
        let set: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(set.len(), 3);
    }
}
