//! Pure network planning: from what the operator declared (or maintenance mode) and the
//! links the kernel reports, decide which links come up with which MTU, addresses, routes
//! and which run DHCP. No I/O here, so every rule is unit-tested without a kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::Serialize;

use super::NetworkError;

/// Metric for routes the operator gave without one; the kernel's own IPv6 default, and
/// low enough to win over DHCP's default route (metric [`DHCP_ROUTE_METRIC`]).
pub const DEFAULT_ROUTE_METRIC: u32 = 1024;
/// DHCP-learned default routes sit behind static ones so a declared gateway always wins.
pub const DHCP_ROUTE_METRIC: u32 = 2048;
/// RFC 791 minimum and the largest value an IFLA_MTU carries in practice.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

/// An Ethernet hardware address, parsed once at the border.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Builds a MAC from the raw bytes netlink reports; `None` for anything that is not a
    /// 6-byte Ethernet address (loopback has 6 zero bytes, tunnels have none or 4).
    pub fn from_bytes(bytes: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(bytes).ok().map(Mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Mac> for String {
    fn from(mac: Mac) -> String {
        mac.to_string()
    }
}

impl FromStr for Mac {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Mac, NetworkError> {
        let bad = || NetworkError::BadMac {
            value: s.to_owned(),
        };
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

/// How the operator names a link: by kernel name or by hardware address
/// (`deviceSelector.hardwareAddr`), which survives renames across kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterfaceSelector {
    Name(String),
    HardwareAddr(Mac),
}

impl fmt::Display for InterfaceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterfaceSelector::Name(n) => write!(f, "interface {n:?}"),
            InterfaceSelector::HardwareAddr(m) => write!(f, "hardware address {m}"),
        }
    }
}

/// One declared route. `gateway: None` means an on-link route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    pub network: IpNet,
    pub gateway: Option<IpAddr>,
    pub metric: Option<u32>,
}

/// One entry of `machine.network.interfaces[]`, as far as the network module cares
/// (the VIP belongs to the control-plane VIP controller, not here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub selector: InterfaceSelector,
    pub dhcp: bool,
    pub addresses: Vec<IpNet>,
    pub routes: Vec<RouteSpec>,
    pub mtu: Option<u32>,
}

/// The network part of a machine config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    pub hostname: Option<String>,
    pub interfaces: Vec<InterfaceSpec>,
    pub nameservers: Vec<IpAddr>,
}

impl NetworkSpec {
    /// The network-relevant part of a validated machine config. The VIP is left to the
    /// control-plane VIP controller; names and CIDRs were already validated by
    /// basalt-config, so nothing here can fail.
    pub fn from_machine(machine: &basalt_config::MachineSpec) -> NetworkSpec {
        use basalt_config::InterfaceSelector as Sel;
        NetworkSpec {
            hostname: machine.hostname.as_ref().map(|h| h.as_str().to_owned()),
            nameservers: machine.network.nameservers.iter().map(|n| n.ip()).collect(),
            interfaces: machine
                .network
                .interfaces
                .iter()
                .map(|i| InterfaceSpec {
                    selector: match &i.selector {
                        Sel::Name(n) => InterfaceSelector::Name(n.as_str().to_owned()),
                        Sel::Device(d) => {
                            InterfaceSelector::HardwareAddr(Mac(d.hardware_addr.octets()))
                        }
                    },
                    dhcp: i.dhcp,
                    addresses: i.addresses.iter().map(|c| c.ip_net()).collect(),
                    routes: i
                        .routes
                        .iter()
                        .map(|r| RouteSpec {
                            network: r.network.ip_net(),
                            gateway: r.gateway.as_ref().map(|g| g.ip()),
                            metric: r.metric,
                        })
                        .collect(),
                    mtu: i.mtu,
                })
                .collect(),
        }
    }
}

/// What the node is asked to do with its network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// No config yet: DHCP on every physical link so the operator can reach the API.
    Maintenance,
    Configured(NetworkSpec),
}

impl Intent {
    /// The sequencer's view: no config yet means maintenance mode.
    pub fn from_config(config: Option<&basalt_config::MachineConfig>) -> Intent {
        match config {
            Some(c) => Intent::Configured(NetworkSpec::from_machine(&c.machine)),
            None => Intent::Maintenance,
        }
    }
}

/// How a link came to exist, which decides whether maintenance mode runs DHCP on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Loopback,
    /// Backed by a device (`/sys/class/net/<if>/device` exists): a NIC.
    Physical,
    /// Created in software: veth, bridge, bond, vlan, tun, …
    Virtual,
}

/// A link as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLink {
    pub name: String,
    pub index: u32,
    pub mac: Option<Mac>,
    pub kind: LinkKind,
}

/// A route the executor installs on one link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedRoute {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub metric: u32,
}

/// Everything the executor does to one link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkPlan {
    pub name: String,
    pub index: u32,
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub addresses: Vec<IpNet>,
    /// Routes whose gateway is reachable through `addresses`; installed at once.
    pub routes: Vec<PlannedRoute>,
    /// Routes whose gateway only becomes reachable once DHCP assigns an address;
    /// installed by the DHCP client on every bind.
    pub routes_after_dhcp: Vec<PlannedRoute>,
    pub dhcp: bool,
}

/// The whole decision: links in kernel index order, then name resolution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkPlan {
    pub links: Vec<LinkPlan>,
    /// Declared nameservers; empty means "take them from DHCP".
    pub nameservers: Vec<IpAddr>,
    /// Declared hostname; `None` means "take it from DHCP if offered".
    pub hostname: Option<String>,
    /// The address /etc/hosts maps the hostname to before DHCP says otherwise: the first
    /// static address in config order (kernel index order says nothing about intent).
    pub node_ip: Option<IpAddr>,
}

impl NetworkPlan {
    pub fn dhcp_links(&self) -> impl Iterator<Item = &LinkPlan> {
        self.links.iter().filter(|l| l.dhcp)
    }
}

/// Static addresses `old` installed that `new` does not declare on the same link: what a
/// live network change must remove (DHCP addresses go with their client's release).
pub fn stale_addresses(old: &NetworkPlan, new: &NetworkPlan) -> Vec<(u32, String, IpNet)> {
    stale(old, new, |l| l.addresses.clone())
}

/// Routes `old` installed (at once or after DHCP) that `new` does not declare on the same
/// link.
pub fn stale_routes(old: &NetworkPlan, new: &NetworkPlan) -> Vec<(u32, String, PlannedRoute)> {
    stale(old, new, |l| {
        l.routes
            .iter()
            .chain(&l.routes_after_dhcp)
            .cloned()
            .collect()
    })
}

fn stale<T: PartialEq>(
    old: &NetworkPlan,
    new: &NetworkPlan,
    items: impl Fn(&LinkPlan) -> Vec<T>,
) -> Vec<(u32, String, T)> {
    let mut out = Vec::new();
    for link in &old.links {
        let kept = new
            .links
            .iter()
            .find(|l| l.index == link.index)
            .map(&items)
            .unwrap_or_default();
        for item in items(link) {
            if !kept.contains(&item) {
                out.push((link.index, link.name.clone(), item));
            }
        }
    }
    out
}

/// Decides the network configuration. Loopback always comes up; in maintenance mode (and
/// when a config declares no interfaces at all) every physical link runs DHCP; otherwise
/// exactly the declared links are touched.
pub fn plan(intent: &Intent, observed: &[ObservedLink]) -> Result<NetworkPlan, NetworkError> {
    let mut links: BTreeMap<u32, LinkPlan> = BTreeMap::new();
    for lo in observed.iter().filter(|l| l.kind == LinkKind::Loopback) {
        links.insert(lo.index, bare_link(lo));
    }

    let (spec, dhcp_everywhere) = match intent {
        Intent::Maintenance => (None, true),
        Intent::Configured(spec) => (Some(spec), spec.interfaces.is_empty()),
    };

    if dhcp_everywhere {
        for link in observed.iter().filter(|l| l.kind == LinkKind::Physical) {
            let mut p = bare_link(link);
            p.dhcp = true;
            links.insert(link.index, p);
        }
    }

    let mut claimed: BTreeMap<u32, usize> = BTreeMap::new();
    if let Some(spec) = spec {
        for (position, iface) in spec.interfaces.iter().enumerate() {
            let link = resolve(position, &iface.selector, observed)?;
            if let Some(&first) = claimed.get(&link.index) {
                return Err(NetworkError::InterfaceClaimedTwice {
                    first,
                    second: position,
                    name: link.name.clone(),
                });
            }
            claimed.insert(link.index, position);
            links.insert(link.index, plan_link(position, iface, link)?);
        }
    }

    let (nameservers, hostname, node_ip) = match spec {
        Some(s) => (
            s.nameservers.clone(),
            s.hostname.clone(),
            s.interfaces
                .iter()
                .flat_map(|i| i.addresses.iter())
                .map(|a| a.addr())
                .next(),
        ),
        None => (Vec::new(), None, None),
    };
    Ok(NetworkPlan {
        links: links.into_values().collect(),
        nameservers,
        hostname,
        node_ip,
    })
}

fn bare_link(link: &ObservedLink) -> LinkPlan {
    LinkPlan {
        name: link.name.clone(),
        index: link.index,
        mac: link.mac,
        mtu: None,
        addresses: Vec::new(),
        routes: Vec::new(),
        routes_after_dhcp: Vec::new(),
        dhcp: false,
    }
}

fn resolve<'a>(
    position: usize,
    selector: &InterfaceSelector,
    observed: &'a [ObservedLink],
) -> Result<&'a ObservedLink, NetworkError> {
    match selector {
        InterfaceSelector::Name(name) => {
            observed
                .iter()
                .find(|l| &l.name == name)
                .ok_or_else(|| NetworkError::NoSuchInterface {
                    position,
                    name: name.clone(),
                    available: names(observed),
                })
        }
        InterfaceSelector::HardwareAddr(mac) => {
            let matching: Vec<&ObservedLink> =
                observed.iter().filter(|l| l.mac == Some(*mac)).collect();
            // Bonds, VLANs and bridges inherit their parent's MAC; the operator means the NIC.
            let physical: Vec<&ObservedLink> = matching
                .iter()
                .copied()
                .filter(|l| l.kind == LinkKind::Physical)
                .collect();
            let candidates = if physical.is_empty() {
                matching
            } else {
                physical
            };
            match candidates.as_slice() {
                [] => Err(NetworkError::MacMatchesNothing {
                    position,
                    mac: *mac,
                    available: observed
                        .iter()
                        .filter_map(|l| l.mac.map(|m| format!("{}={m}", l.name)))
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
                [one] => Ok(one),
                many => Err(NetworkError::MacMatchesMany {
                    position,
                    mac: *mac,
                    names: many
                        .iter()
                        .map(|l| l.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
            }
        }
    }
}

fn names(observed: &[ObservedLink]) -> String {
    observed
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn plan_link(
    position: usize,
    iface: &InterfaceSpec,
    link: &ObservedLink,
) -> Result<LinkPlan, NetworkError> {
    if let Some(mtu) = iface.mtu
        && !MTU_RANGE.contains(&mtu)
    {
        return Err(NetworkError::MtuOutOfRange {
            position,
            name: link.name.clone(),
            mtu,
        });
    }
    let mut addresses: Vec<IpNet> = Vec::new();
    for a in &iface.addresses {
        if addresses.contains(a) {
            return Err(NetworkError::DuplicateAddress {
                position,
                name: link.name.clone(),
                address: *a,
            });
        }
        addresses.push(*a);
    }

    let mut routes = Vec::new();
    let mut routes_after_dhcp = Vec::new();
    for r in &iface.routes {
        let planned = PlannedRoute {
            destination: r.network.trunc(),
            gateway: r.gateway,
            metric: r.metric.unwrap_or(DEFAULT_ROUTE_METRIC),
        };
        match r.gateway {
            None => routes.push(planned),
            Some(gw) => {
                if gw.is_ipv4() != r.network.addr().is_ipv4() {
                    return Err(NetworkError::GatewayFamilyMismatch {
                        position,
                        name: link.name.clone(),
                        network: r.network,
                        gateway: gw,
                    });
                }
                // IPv6 gateways are usually link-local and always reachable on the link.
                let on_link = addresses.iter().any(|a| a.contains(&gw))
                    || matches!(gw, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
                if on_link {
                    routes.push(planned);
                } else if iface.dhcp {
                    routes_after_dhcp.push(planned);
                } else {
                    return Err(NetworkError::GatewayUnreachable {
                        position,
                        name: link.name.clone(),
                        gateway: gw,
                    });
                }
            }
        }
    }
    if routes
        .iter()
        .chain(&routes_after_dhcp)
        .enumerate()
        .any(|(i, a)| {
            routes
                .iter()
                .chain(&routes_after_dhcp)
                .skip(i + 1)
                .any(|b| b.destination == a.destination && b.metric == a.metric)
        })
    {
        return Err(NetworkError::DuplicateRoute {
            position,
            name: link.name.clone(),
        });
    }

    Ok(LinkPlan {
        name: link.name.clone(),
        index: link.index,
        mac: link.mac,
        mtu: iface.mtu,
        addresses,
        routes,
        routes_after_dhcp,
        dhcp: iface.dhcp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, index: u32, mac: Option<&str>, kind: LinkKind) -> ObservedLink {
        ObservedLink {
            name: name.into(),
            index,
            mac: mac.map(|m| m.parse().unwrap()),
            kind,
        }
    }

    fn lab() -> Vec<ObservedLink> {
        vec![
            link("lo", 1, Some("00:00:00:00:00:00"), LinkKind::Loopback),
            link("eth0", 2, Some("52:54:00:00:00:01"), LinkKind::Physical),
            link("eth1", 3, Some("52:54:00:00:00:02"), LinkKind::Physical),
            link("veth9", 4, Some("aa:bb:cc:dd:ee:ff"), LinkKind::Virtual),
        ]
    }

    fn iface(sel: InterfaceSelector) -> InterfaceSpec {
        InterfaceSpec {
            selector: sel,
            dhcp: false,
            addresses: vec![],
            routes: vec![],
            mtu: None,
        }
    }

    fn configured(ifaces: Vec<InterfaceSpec>) -> Intent {
        Intent::Configured(NetworkSpec {
            interfaces: ifaces,
            ..NetworkSpec::default()
        })
    }

    fn name(n: &str) -> InterfaceSelector {
        InterfaceSelector::Name(n.into())
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_live_change_removes_exactly_what_the_new_plan_no_longer_declares() {
        let mut eth0 = iface(name("eth0"));
        eth0.addresses = vec![net("10.0.0.2/24"), net("10.0.0.3/24")];
        let mut eth1 = iface(name("eth1"));
        eth1.addresses = vec![net("10.1.0.2/24")];
        eth1.routes = vec![RouteSpec {
            network: net("10.9.0.0/16"),
            gateway: Some("10.1.0.1".parse().unwrap()),
            metric: None,
        }];
        let old = plan(&configured(vec![eth0.clone(), eth1]), &lab()).unwrap();
        eth0.addresses = vec![net("10.0.0.3/24"), net("10.0.0.4/24")];
        let new = plan(&configured(vec![eth0]), &lab()).unwrap();
        assert_eq!(
            stale_addresses(&old, &new),
            vec![
                (2, "eth0".to_owned(), net("10.0.0.2/24")),
                (3, "eth1".to_owned(), net("10.1.0.2/24")),
            ]
        );
        assert!(stale_addresses(&new, &new).is_empty());
        let routes = stale_routes(&old, &new);
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(
            (routes[0].0, routes[0].2.destination),
            (3, net("10.9.0.0/16"))
        );
        assert!(stale_routes(&new, &new).is_empty());
    }

    #[test]
    fn mac_parses_colon_and_dash_forms_and_prints_lowercase() {
        let m: Mac = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!("52-54-00-ab-cd-01".parse::<Mac>().unwrap(), m);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad} parsed");
        }
        assert_eq!(Mac::from_bytes(&[1, 2, 3, 4]), None);
    }

    #[test]
    fn maintenance_runs_dhcp_on_physical_links_only_and_brings_lo_up() {
        let p = plan(&Intent::Maintenance, &lab()).unwrap();
        let got: Vec<(&str, bool)> = p.links.iter().map(|l| (l.name.as_str(), l.dhcp)).collect();
        assert_eq!(got, vec![("lo", false), ("eth0", true), ("eth1", true)]);
        assert!(p.nameservers.is_empty());
        assert_eq!(p.hostname, None);
    }

    #[test]
    fn config_without_interfaces_falls_back_to_dhcp_everywhere_but_keeps_names() {
        let intent = Intent::Configured(NetworkSpec {
            hostname: Some("cp1".into()),
            interfaces: vec![],
            nameservers: vec!["10.0.0.53".parse().unwrap()],
        });
        let p = plan(&intent, &lab()).unwrap();
        assert_eq!(p.dhcp_links().count(), 2);
        assert_eq!(p.hostname.as_deref(), Some("cp1"));
        assert_eq!(p.nameservers, vec!["10.0.0.53".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn configured_links_only_touch_what_was_declared() {
        let mut i = iface(name("eth1"));
        i.addresses = vec![net("10.5.0.2/24")];
        i.mtu = Some(9000);
        i.routes = vec![RouteSpec {
            network: net("0.0.0.0/0"),
            gateway: Some("10.5.0.1".parse().unwrap()),
            metric: None,
        }];
        let p = plan(&configured(vec![i]), &lab()).unwrap();
        assert_eq!(p.links.len(), 2, "lo + eth1: {p:?}");
        let eth1 = &p.links[1];
        assert_eq!(eth1.name, "eth1");
        assert_eq!(eth1.index, 3);
        assert_eq!(eth1.mtu, Some(9000));
        assert!(!eth1.dhcp);
        assert_eq!(eth1.addresses, vec![net("10.5.0.2/24")]);
        assert_eq!(
            eth1.routes,
            vec![PlannedRoute {
                destination: net("0.0.0.0/0"),
                gateway: Some("10.5.0.1".parse().unwrap()),
                metric: DEFAULT_ROUTE_METRIC
            }]
        );
        assert_eq!(p.node_ip, Some("10.5.0.2".parse().unwrap()));
    }

    #[test]
    fn selects_by_mac_case_insensitively() {
        let i = iface(InterfaceSelector::HardwareAddr(
            "52:54:00:00:00:02".parse().unwrap(),
        ));
        let p = plan(&configured(vec![i]), &lab()).unwrap();
        assert_eq!(p.links[1].name, "eth1");
    }

    #[test]
    fn mac_shared_with_a_bond_or_vlan_resolves_to_the_physical_nic() {
        let mut obs = lab();
        obs.push(link(
            "eth0.100",
            5,
            Some("52:54:00:00:00:01"),
            LinkKind::Virtual,
        ));
        let i = iface(InterfaceSelector::HardwareAddr(
            "52:54:00:00:00:01".parse().unwrap(),
        ));
        let p = plan(&configured(vec![i]), &obs).unwrap();
        assert_eq!(p.links[1].name, "eth0");
    }

    #[test]
    fn mac_on_two_virtual_links_is_ambiguous() {
        let obs = vec![
            link("br0", 1, Some("02:00:00:00:00:01"), LinkKind::Virtual),
            link("bond0", 2, Some("02:00:00:00:00:01"), LinkKind::Virtual),
        ];
        let i = iface(InterfaceSelector::HardwareAddr(
            "02:00:00:00:00:01".parse().unwrap(),
        ));
        let err = plan(&configured(vec![i]), &obs).unwrap_err();
        assert!(matches!(err, NetworkError::MacMatchesMany { .. }), "{err}");
        assert!(err.to_string().contains("br0, bond0"), "{err}");
    }

    #[test]
    fn unknown_name_is_refused_with_the_available_links() {
        let err = plan(&configured(vec![iface(name("enp1s0"))]), &lab()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            NetworkError::NoSuchInterface { position: 0, .. }
        ));
        assert!(
            msg.contains("enp1s0") && msg.contains("lo, eth0, eth1, veth9"),
            "{msg}"
        );
        assert!(msg.contains("interfaces[0]"), "{msg}");
    }

    #[test]
    fn unknown_mac_is_refused() {
        let i = iface(InterfaceSelector::HardwareAddr(
            "de:ad:be:ef:00:00".parse().unwrap(),
        ));
        let err = plan(&configured(vec![iface(name("eth0")), i]), &lab()).unwrap_err();
        assert!(
            matches!(err, NetworkError::MacMatchesNothing { position: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("de:ad:be:ef:00:00"), "{err}");
    }

    #[test]
    fn the_same_link_claimed_by_name_and_mac_is_refused() {
        let by_mac = iface(InterfaceSelector::HardwareAddr(
            "52:54:00:00:00:01".parse().unwrap(),
        ));
        let err = plan(&configured(vec![iface(name("eth0")), by_mac]), &lab()).unwrap_err();
        assert!(
            matches!(
                err,
                NetworkError::InterfaceClaimedTwice {
                    first: 0,
                    second: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn mtu_outside_the_kernel_range_is_refused() {
        for bad in [0, 67, 65536] {
            let mut i = iface(name("eth0"));
            i.mtu = Some(bad);
            let err = plan(&configured(vec![i]), &lab()).unwrap_err();
            assert!(matches!(err, NetworkError::MtuOutOfRange { mtu, .. } if mtu == bad));
        }
        for good in [68, 1500, 65535] {
            let mut i = iface(name("eth0"));
            i.mtu = Some(good);
            assert!(plan(&configured(vec![i]), &lab()).is_ok());
        }
    }

    #[test]
    fn duplicate_address_is_refused() {
        let mut i = iface(name("eth0"));
        i.addresses = vec![net("10.0.0.2/24"), net("10.0.0.2/24")];
        assert!(matches!(
            plan(&configured(vec![i]), &lab()).unwrap_err(),
            NetworkError::DuplicateAddress { .. }
        ));
    }

    #[test]
    fn gateway_outside_static_subnets_is_refused_without_dhcp() {
        let mut i = iface(name("eth0"));
        i.addresses = vec![net("10.0.0.2/24")];
        i.routes = vec![RouteSpec {
            network: net("0.0.0.0/0"),
            gateway: Some("192.168.1.1".parse().unwrap()),
            metric: Some(10),
        }];
        let err = plan(&configured(vec![i]), &lab()).unwrap_err();
        assert!(
            matches!(err, NetworkError::GatewayUnreachable { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("192.168.1.1"));
    }

    #[test]
    fn gateway_outside_static_subnets_waits_for_dhcp_when_dhcp_is_on() {
        let mut i = iface(name("eth0"));
        i.dhcp = true;
        i.routes = vec![RouteSpec {
            network: net("172.16.0.0/12"),
            gateway: Some("192.168.1.1".parse().unwrap()),
            metric: Some(10),
        }];
        let p = plan(&configured(vec![i]), &lab()).unwrap();
        let eth0 = &p.links[1];
        assert!(eth0.routes.is_empty());
        assert_eq!(eth0.routes_after_dhcp.len(), 1);
        assert_eq!(eth0.routes_after_dhcp[0].metric, 10);
    }

    #[test]
    fn on_link_routes_and_ipv6_link_local_gateways_apply_at_once() {
        let mut i = iface(name("eth0"));
        i.routes = vec![
            RouteSpec {
                network: net("10.9.0.0/16"),
                gateway: None,
                metric: None,
            },
            RouteSpec {
                network: net("::/0"),
                gateway: Some("fe80::1".parse().unwrap()),
                metric: None,
            },
        ];
        let p = plan(&configured(vec![i]), &lab()).unwrap();
        assert_eq!(p.links[1].routes.len(), 2);
    }

    #[test]
    fn route_destination_is_normalised_to_its_network() {
        let mut i = iface(name("eth0"));
        i.addresses = vec![net("10.0.0.2/24")];
        i.routes = vec![RouteSpec {
            network: net("10.9.3.7/16"),
            gateway: Some("10.0.0.1".parse().unwrap()),
            metric: None,
        }];
        let p = plan(&configured(vec![i]), &lab()).unwrap();
        assert_eq!(p.links[1].routes[0].destination, net("10.9.0.0/16"));
    }

    #[test]
    fn gateway_family_must_match_the_network() {
        let mut i = iface(name("eth0"));
        i.addresses = vec![net("10.0.0.2/24")];
        i.routes = vec![RouteSpec {
            network: net("::/0"),
            gateway: Some("10.0.0.1".parse().unwrap()),
            metric: None,
        }];
        assert!(matches!(
            plan(&configured(vec![i]), &lab()).unwrap_err(),
            NetworkError::GatewayFamilyMismatch { .. }
        ));
    }

    #[test]
    fn duplicate_route_with_same_metric_is_refused_but_different_metrics_coexist() {
        let mk = |metric| RouteSpec {
            network: net("0.0.0.0/0"),
            gateway: Some("10.0.0.1".parse().unwrap()),
            metric,
        };
        let mut i = iface(name("eth0"));
        i.addresses = vec![net("10.0.0.2/24")];
        i.routes = vec![mk(Some(5)), mk(Some(5))];
        assert!(matches!(
            plan(&configured(vec![i.clone()]), &lab()).unwrap_err(),
            NetworkError::DuplicateRoute { .. }
        ));
        i.routes = vec![mk(Some(5)), mk(Some(6))];
        assert_eq!(
            plan(&configured(vec![i]), &lab()).unwrap().links[1]
                .routes
                .len(),
            2
        );
    }

    #[test]
    fn virtual_links_can_be_configured_explicitly() {
        let mut i = iface(name("veth9"));
        i.dhcp = true;
        let p = plan(&configured(vec![i]), &lab()).unwrap();
        assert_eq!(p.links[1].name, "veth9");
        assert!(p.links[1].dhcp);
    }

    #[test]
    fn links_come_out_in_kernel_index_order_whatever_the_config_order() {
        let p = plan(
            &configured(vec![iface(name("veth9")), iface(name("eth0"))]),
            &lab(),
        )
        .unwrap();
        let idx: Vec<u32> = p.links.iter().map(|l| l.index).collect();
        assert_eq!(idx, vec![1, 2, 4]);
    }

    #[test]
    fn node_ip_follows_config_order_not_kernel_index_order() {
        let mut first = iface(name("veth9"));
        first.addresses = vec![net("10.9.0.9/24")];
        let mut second = iface(name("eth0"));
        second.addresses = vec![net("10.0.0.2/24")];
        let p = plan(&configured(vec![first, second]), &lab()).unwrap();
        assert_eq!(p.links[1].name, "eth0", "links stay in index order");
        assert_eq!(p.node_ip, Some("10.9.0.9".parse().unwrap()));
    }

    #[test]
    fn machine_config_maps_onto_the_network_spec() {
        let cfg = basalt_config::MachineConfig::from_yaml(include_str!(
            "../../tests/data/network-static-and-mac.yaml"
        ))
        .unwrap();
        assert_eq!(Intent::from_config(None), Intent::Maintenance);
        let Intent::Configured(spec) = Intent::from_config(Some(&cfg)) else {
            panic!("a config must give a configured intent")
        };
        assert_eq!(spec.hostname.as_deref(), Some("cp-1"));
        assert_eq!(
            spec.nameservers,
            vec!["10.5.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(spec.interfaces.len(), 2);
        let eth0 = &spec.interfaces[0];
        assert_eq!(eth0.selector, name("eth0"));
        assert_eq!(eth0.addresses, vec![net("10.5.0.2/24")]);
        assert_eq!(eth0.mtu, Some(1500));
        assert_eq!(
            eth0.routes,
            vec![RouteSpec {
                network: net("0.0.0.0/0"),
                gateway: Some("10.5.0.1".parse().unwrap()),
                metric: Some(1024)
            }]
        );
        assert_eq!(
            spec.interfaces[1].selector,
            InterfaceSelector::HardwareAddr("52:54:00:12:34:56".parse().unwrap())
        );
        assert!(spec.interfaces[1].dhcp);
        // And it plans against a node that has both NICs.
        let obs = vec![
            link("lo", 1, None, LinkKind::Loopback),
            link("eth0", 2, Some("52:54:00:00:00:01"), LinkKind::Physical),
            link("enp0s4", 3, Some("52:54:00:12:34:56"), LinkKind::Physical),
        ];
        let p = plan(&Intent::Configured(spec), &obs).unwrap();
        assert_eq!(p.links.len(), 3);
        assert!(p.links[2].dhcp && p.links[2].name == "enp0s4");
        assert_eq!(p.node_ip, Some("10.5.0.2".parse().unwrap()));
    }

    #[test]
    fn no_links_at_all_gives_an_empty_plan() {
        let p = plan(&Intent::Maintenance, &[]).unwrap();
        assert!(p.links.is_empty());
        assert_eq!(p.node_ip, None);
    }
}
