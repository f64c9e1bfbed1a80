//! The field reference of docs/configuration.md, kept in code next to the model. The
//! table below is rendered into the document between two marker comments; a test
//! compares the committed document with the rendering and another compares the table's
//! paths with every path a fully populated config has, so neither can drift from the
//! model. Regenerate with `BASALT_UPDATE_DOCS=1 cargo test -p basalt-config --test docs`.

/// One row of the reference: a field path (`[]` for list elements, `<name>` for a map
/// key the operator chooses), its type, its default, an example and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDoc {
    pub path: &'static str,
    pub ty: &'static str,
    pub default: &'static str,
    pub example: &'static str,
    pub description: &'static str,
}

const fn f(
    path: &'static str,
    ty: &'static str,
    default: &'static str,
    example: &'static str,
    description: &'static str,
) -> FieldDoc {
    FieldDoc {
        path,
        ty,
        default,
        example,
        description,
    }
}

const REQ: &str = "required";
const CP_ONLY: &str = "absent; required on control planes";

/// Maps whose keys the operator chooses but whose values are structured: the reference
/// documents their values under this placeholder key.
pub const MAP_KEY_PLACEHOLDERS: &[(&str, &str)] = &[("machine.registries.mirrors", "<registry>")];

/// Every field of the document, in document order.
pub const FIELDS: &[FieldDoc] = &[
    f(
        "version",
        "string",
        REQ,
        "v1alpha1",
        "Document format version. Only `v1alpha1` exists; anything else is refused with the list of valid versions.",
    ),
    f(
        "machine",
        "object",
        REQ,
        "",
        "This node: its role, disks, network and host settings.",
    ),
    f(
        "machine.type",
        "`controlplane` \\| `worker`",
        REQ,
        "controlplane",
        "Control planes run etcd and the Kubernetes control plane and carry the CA keys; workers run kubelet only and carry no private key.",
    ),
    f(
        "machine.hostname",
        "hostname (RFC 1123, lowercase)",
        "absent: machined picks one (DHCP-provided or generated)",
        "cp-1",
        "Host name, also the Kubernetes node name.",
    ),
    f(
        "machine.install",
        "object",
        "absent",
        "",
        "Where Basalt installs itself on first boot. Required in `metal` mode, refused in `container` mode.",
    ),
    f(
        "machine.install.disk",
        "absolute path",
        REQ,
        "/dev/vda",
        "Whole disk to partition (EFI, STATE, EPHEMERAL).",
    ),
    f(
        "machine.install.wipe",
        "bool",
        "false",
        "true",
        "Wipe the disk even when it already holds a Basalt installation.",
    ),
    f("machine.network", "object", "{}", "", "Host networking."),
    f(
        "machine.network.interfaces",
        "list",
        "[]: DHCP on every link",
        "",
        "Interfaces configured explicitly. Refused in `container` mode.",
    ),
    f(
        "machine.network.interfaces[].interface",
        "interface name (at most 15 bytes)",
        "exactly one of `interface` and `deviceSelector`",
        "eth0",
        "Selects the link by kernel name.",
    ),
    f(
        "machine.network.interfaces[].deviceSelector",
        "object",
        "exactly one of `interface` and `deviceSelector`",
        "",
        "Selects the link by hardware.",
    ),
    f(
        "machine.network.interfaces[].deviceSelector.hardwareAddr",
        "MAC address",
        REQ,
        "52:54:00:12:34:56",
        "Permanent hardware address of the link (written lowercase).",
    ),
    f(
        "machine.network.interfaces[].dhcp",
        "bool",
        "false",
        "true",
        "Run DHCP (v4) on this link, in addition to any static address.",
    ),
    f(
        "machine.network.interfaces[].addresses",
        "list of CIDR",
        "[]",
        "[10.5.0.2/24]",
        "Static addresses with their prefix length.",
    ),
    f(
        "machine.network.interfaces[].routes",
        "list",
        "[]",
        "",
        "Static routes through this link.",
    ),
    f(
        "machine.network.interfaces[].routes[].network",
        "CIDR",
        REQ,
        "0.0.0.0/0",
        "Destination.",
    ),
    f(
        "machine.network.interfaces[].routes[].gateway",
        "IP address",
        "absent: on-link route",
        "10.5.0.1",
        "Next hop; same IP family as `network`.",
    ),
    f(
        "machine.network.interfaces[].routes[].metric",
        "integer",
        "absent: kernel default",
        "1024",
        "Route priority (lower wins).",
    ),
    f(
        "machine.network.interfaces[].mtu",
        "integer 68–65535",
        "absent: link default",
        "1500",
        "Link MTU.",
    ),
    f(
        "machine.network.interfaces[].vip",
        "object",
        "absent",
        "",
        "Shared control-plane address this node competes for (etcd election, gratuitous ARP). Control planes only.",
    ),
    f(
        "machine.network.interfaces[].vip.ip",
        "IP address",
        REQ,
        "10.5.0.10",
        "The VIP; must lie in the subnet of one of the interface's static `addresses` and differ from them.",
    ),
    f(
        "machine.network.nameservers",
        "list of IP address",
        "[]: the ones DHCP provides",
        "[10.5.0.1]",
        "DNS resolvers.",
    ),
    f("machine.time", "object", "{}", "", "Time synchronisation."),
    f(
        "machine.time.servers",
        "list of host name or IP",
        "[]: pool.ntp.org",
        "[pool.ntp.org]",
        "NTP servers.",
    ),
    f("machine.kubelet", "object", "{}", "", "kubelet settings."),
    f(
        "machine.kubelet.extraArgs",
        "map of string to string",
        "{}",
        "{max-pods: \"150\"}",
        "Extra kubelet flags, by name without dashes.",
    ),
    f(
        "machine.kubelet.nodeIP",
        "object",
        "{}",
        "",
        "Which address kubelet advertises.",
    ),
    f(
        "machine.kubelet.nodeIP.validSubnets",
        "list of CIDR",
        "[]: kubelet's choice",
        "[10.5.0.0/24]",
        "The node IP is the first address in one of these subnets.",
    ),
    f(
        "machine.kubelet.nodeLabels",
        "map of string to string",
        "{}",
        "{topology.kubernetes.io/zone: lab-a}",
        "Labels kubelet registers the node with.",
    ),
    f(
        "machine.kubelet.nodeTaints",
        "map of string to `value:Effect`",
        "{}",
        "{dedicated: \"infra:NoSchedule\"}",
        "Taints kubelet registers the node with; Effect is NoSchedule, PreferNoSchedule or NoExecute.",
    ),
    f(
        "machine.sysctls",
        "map of sysctl key to string",
        "{}",
        "{net.ipv4.ip_forward: \"1\"}",
        "Kernel parameters set at boot (integers are accepted and stored as text).",
    ),
    f(
        "machine.files",
        "list",
        "[]",
        "",
        "Files machined writes at boot.",
    ),
    f(
        "machine.files[].path",
        "absolute path",
        REQ,
        "/var/etc/motd",
        "Where to write; normalised (no `..`), unique.",
    ),
    f(
        "machine.files[].permissions",
        "file mode",
        "0o644",
        "0o600",
        "Permission bits; the YAML integer 0o600 and the strings \"0o600\"/\"0600\" are accepted, written as '0o600'.",
    ),
    f(
        "machine.files[].content",
        "string",
        REQ,
        "\"hello\\n\"",
        "File content (UTF-8).",
    ),
    f("machine.kernel", "object", "{}", "", "Kernel settings."),
    f(
        "machine.kernel.modules",
        "list",
        "[]",
        "",
        "Modules machined loads at boot. Refused in `container` mode.",
    ),
    f(
        "machine.kernel.modules[].name",
        "module name",
        REQ,
        "ip_vs",
        "Module name as modprobe knows it.",
    ),
    f(
        "machine.kernel.modules[].parameters",
        "list of `name=value`",
        "[]",
        "[conn_tab_bits=12]",
        "Module parameters.",
    ),
    f(
        "machine.registries",
        "object",
        "{}",
        "",
        "Container registry settings for containerd.",
    ),
    f(
        "machine.registries.mirrors",
        "map of registry name to object",
        "{}",
        "",
        "Mirrors by registry (`docker.io`, `registry.local:5000`, or `*` for all).",
    ),
    f(
        "machine.registries.mirrors.<registry>",
        "object",
        "",
        "",
        "The mirrors of one registry.",
    ),
    f(
        "machine.registries.mirrors.<registry>.endpoints",
        "list of http(s) URL",
        REQ,
        "[https://mirror.example]",
        "Mirror URLs, tried in order before the registry itself.",
    ),
    f(
        "machine.ca",
        "object",
        REQ,
        "",
        "CA of the node API (basaltctl ↔ machined).",
    ),
    f(
        "machine.ca.crt",
        "PEM certificate",
        REQ,
        "-----BEGIN CERTIFICATE-----…",
        "CA certificate (must be a CA: basicConstraints CA:TRUE).",
    ),
    f(
        "machine.ca.key",
        "PEM private key (PKCS#8)",
        CP_ONLY,
        "-----BEGIN PRIVATE KEY-----…",
        "CA key; must match `crt`. Refused on workers.",
    ),
    f(
        "machine.certSANs",
        "list of DNS name or IP",
        "[]",
        "[cp-1.lab.example, 10.5.0.2]",
        "Extra names in the node API's serving certificate.",
    ),
    f(
        "machine.token",
        "token `[a-z0-9]{6}.[a-z0-9]{16}`",
        "absent",
        "q1w2e3.0123456789abcdef",
        "Machine token shared by the cluster's nodes; authorises a worker's request to trustd (port 50001 of the control plane) for its API serving certificate. Without it a worker serves a self-signed certificate clients must pin. Generated by `basaltctl gen config`.",
    ),
    f(
        "cluster",
        "object",
        REQ,
        "",
        "What every node of the cluster shares.",
    ),
    f(
        "cluster.name",
        "DNS label",
        REQ,
        "demo",
        "Cluster name (kubeconfig context, certificate subjects).",
    ),
    f(
        "cluster.controlPlane",
        "object",
        REQ,
        "",
        "How nodes reach the control plane.",
    ),
    f(
        "cluster.controlPlane.endpoint",
        "https URL with host and port",
        REQ,
        "https://10.5.0.10:6443",
        "The Kubernetes API endpoint: the VIP or a load balancer. No path.",
    ),
    f(
        "cluster.kubernetesVersion",
        "`v<major>.<minor>.<patch>`",
        "v1.31.2",
        "v1.31.2",
        "Kubernetes release; picks the default control-plane images.",
    ),
    f(
        "cluster.network",
        "object",
        "the defaults below",
        "",
        "Cluster networking.",
    ),
    f(
        "cluster.network.podSubnets",
        "list of CIDR",
        "[10.244.0.0/16]",
        "[10.244.0.0/16]",
        "Pod addresses; no host bits; must not overlap `serviceSubnets`.",
    ),
    f(
        "cluster.network.serviceSubnets",
        "list of CIDR",
        "[10.96.0.0/12]",
        "[10.96.0.0/12]",
        "Service addresses; no host bits.",
    ),
    f(
        "cluster.network.dnsDomain",
        "DNS name",
        "cluster.local",
        "cluster.local",
        "Cluster DNS domain.",
    ),
    f(
        "cluster.network.cni",
        "object",
        "{name: flannel}",
        "",
        "CNI machined installs.",
    ),
    f(
        "cluster.network.cni.name",
        "`flannel` \\| `none`",
        "flannel",
        "none",
        "`none`: the operator installs a CNI.",
    ),
    f(
        "cluster.token",
        "bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`",
        REQ,
        "abcdef.0123456789abcdef",
        "kubeadm bootstrap token nodes join with.",
    ),
    f("cluster.ca", "object", REQ, "", "Kubernetes CA."),
    f(
        "cluster.ca.crt",
        "PEM certificate",
        REQ,
        "-----BEGIN CERTIFICATE-----…",
        "CA certificate.",
    ),
    f(
        "cluster.ca.key",
        "PEM private key (PKCS#8)",
        CP_ONLY,
        "-----BEGIN PRIVATE KEY-----…",
        "CA key; must match `crt`. Refused on workers.",
    ),
    f(
        "cluster.aggregatorCA",
        "object",
        CP_ONLY,
        "",
        "Front-proxy (aggregation layer) CA.",
    ),
    f(
        "cluster.aggregatorCA.crt",
        "PEM certificate",
        REQ,
        "-----BEGIN CERTIFICATE-----…",
        "CA certificate.",
    ),
    f(
        "cluster.aggregatorCA.key",
        "PEM private key (PKCS#8)",
        CP_ONLY,
        "-----BEGIN PRIVATE KEY-----…",
        "CA key. Refused on workers.",
    ),
    f(
        "cluster.serviceAccount",
        "object",
        CP_ONLY,
        "",
        "Service-account token signing. Refused on workers.",
    ),
    f(
        "cluster.serviceAccount.key",
        "PEM private key (PKCS#8)",
        REQ,
        "-----BEGIN PRIVATE KEY-----…",
        "Signing key.",
    ),
    f("cluster.etcd", "object", "{}", "", "etcd settings."),
    f("cluster.etcd.ca", "object", CP_ONLY, "", "etcd CA."),
    f(
        "cluster.etcd.ca.crt",
        "PEM certificate",
        REQ,
        "-----BEGIN CERTIFICATE-----…",
        "CA certificate.",
    ),
    f(
        "cluster.etcd.ca.key",
        "PEM private key (PKCS#8)",
        CP_ONLY,
        "-----BEGIN PRIVATE KEY-----…",
        "CA key. Refused on workers.",
    ),
    f(
        "cluster.etcd.extraArgs",
        "map of string to string",
        "{}",
        "{election-timeout: \"5000\"}",
        "Extra etcd flags.",
    ),
    f(
        "cluster.etcd.advertisedSubnets",
        "list of CIDR",
        "[]: the node IP",
        "[10.5.0.0/24]",
        "etcd advertises its peer address from these subnets.",
    ),
    f("cluster.apiServer", "object", "{}", "", "kube-apiserver."),
    f(
        "cluster.apiServer.image",
        "image reference",
        "registry.k8s.io/kube-apiserver:<kubernetesVersion>",
        "registry.k8s.io/kube-apiserver:v1.31.2",
        "Image.",
    ),
    f(
        "cluster.apiServer.extraArgs",
        "map of string to string",
        "{}",
        "{audit-log-maxage: \"30\"}",
        "Extra flags.",
    ),
    f(
        "cluster.apiServer.certSANs",
        "list of DNS name or IP",
        "[]",
        "[10.5.0.10]",
        "Extra names in the API server certificate (the endpoint host is always included).",
    ),
    f(
        "cluster.controllerManager",
        "object",
        "{}",
        "",
        "kube-controller-manager.",
    ),
    f(
        "cluster.controllerManager.image",
        "image reference",
        "registry.k8s.io/kube-controller-manager:<kubernetesVersion>",
        "registry.k8s.io/kube-controller-manager:v1.31.2",
        "Image.",
    ),
    f(
        "cluster.controllerManager.extraArgs",
        "map of string to string",
        "{}",
        "{node-cidr-mask-size: \"24\"}",
        "Extra flags.",
    ),
    f("cluster.scheduler", "object", "{}", "", "kube-scheduler."),
    f(
        "cluster.scheduler.image",
        "image reference",
        "registry.k8s.io/kube-scheduler:<kubernetesVersion>",
        "registry.k8s.io/kube-scheduler:v1.31.2",
        "Image.",
    ),
    f(
        "cluster.scheduler.extraArgs",
        "map of string to string",
        "{}",
        "{v: \"2\"}",
        "Extra flags.",
    ),
    f("cluster.proxy", "object", "{}", "", "kube-proxy."),
    f(
        "cluster.proxy.image",
        "image reference",
        "registry.k8s.io/kube-proxy:<kubernetesVersion>",
        "registry.k8s.io/kube-proxy:v1.31.2",
        "Image.",
    ),
    f(
        "cluster.proxy.extraArgs",
        "map of string to string",
        "{}",
        "{proxy-mode: ipvs}",
        "Extra flags.",
    ),
    f(
        "cluster.proxy.disabled",
        "bool",
        "false",
        "true",
        "Do not deploy kube-proxy.",
    ),
    f("cluster.coreDNS", "object", "{}", "", "CoreDNS."),
    f(
        "cluster.coreDNS.image",
        "image reference",
        "registry.k8s.io/coredns/coredns:v1.11.3",
        "registry.k8s.io/coredns/coredns:v1.11.3",
        "Image.",
    ),
    f(
        "cluster.allowSchedulingOnControlPlanes",
        "bool",
        "false",
        "true",
        "Do not taint control planes NoSchedule.",
    ),
    f(
        "cluster.sandboxImage",
        "image reference",
        "registry.k8s.io/pause:3.10",
        "registry.k8s.io/pause:3.10",
        "Pod sandbox (pause) image for containerd.",
    ),
];

/// Marks the start of the generated part of docs/configuration.md.
pub const BEGIN_MARKER: &str = "<!-- BEGIN GENERATED FIELD REFERENCE: edit configs/src/reference.rs, then run BASALT_UPDATE_DOCS=1 cargo test -p basalt-config --test docs -->";
/// Marks its end.
pub const END_MARKER: &str = "<!-- END GENERATED FIELD REFERENCE -->";

fn cell(text: &str, code: bool) -> String {
    let escaped = text.replace('|', "\\|").replace("\\\\|", "\\|");
    if text.is_empty() {
        String::new()
    } else if code {
        format!("`{}`", escaped.replace('`', ""))
    } else {
        escaped
    }
}

/// The field table, as Markdown.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| Field | Type | Default | Example | Description |\n|---|---|---|---|---|\n");
    for field in FIELDS {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            field.path,
            cell(field.ty, false),
            cell(field.default, false),
            cell(field.example, true),
            cell(field.description, false),
        ));
    }
    out
}

/// Replaces the generated part of `document` (between the markers) with the current
/// table. `None` when the markers are missing or out of order.
pub fn render_into(document: &str) -> Option<String> {
    let start = document.find(BEGIN_MARKER)? + BEGIN_MARKER.len();
    let end = document.find(END_MARKER)?;
    if end < start {
        return None;
    }
    Some(format!(
        "{}\n{}{}",
        &document[..start],
        markdown_table(),
        &document[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_unique_and_parents_come_first() {
        let mut seen = std::collections::HashSet::new();
        for field in FIELDS {
            assert!(seen.insert(field.path), "{} twice", field.path);
            if let Some((parent, _)) = field.path.rsplit_once('.') {
                let parent = parent.trim_end_matches("[]");
                assert!(
                    seen.contains(parent),
                    "{} comes before its parent",
                    field.path
                );
            }
        }
    }

    #[test]
    fn pipes_are_escaped_once() {
        assert_eq!(cell("`a` \\| `b`", false), "`a` \\| `b`");
        assert_eq!(cell("a | b", false), "a \\| b");
        assert_eq!(cell("x|y", true), "`x\\|y`");
    }
}
