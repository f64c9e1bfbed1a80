//! Network state as the rest of machined sees it. Only the network module holds a
//! [`StateWriter`]; the API gets a [`NetworkState`], which can only read.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ipnet::IpNet;
use serde::Serialize;

use super::plan::Mac;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    pub name: String,
    pub index: u32,
    pub mac: Option<Mac>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier present (IFF_LOWER_UP).
    pub lower_up: bool,
    pub loopback: bool,
    /// rtnetlink's IFLA_INFO_KIND (`veth`, `bridge`, `vlan` …); `None` for NICs and lo.
    pub kind: Option<String>,
    /// RFC 2863 operational state, lowercase (`up`, `down`, `lowerlayerdown`, `unknown` …).
    pub oper_state: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AddressStatus {
    pub link_index: u32,
    pub address: IpNet,
    /// Seconds the kernel keeps the address; `None` means forever (static).
    pub valid_lifetime_secs: Option<u64>,
    /// `global`, `link`, `host` …
    pub scope: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub link_index: Option<u32>,
    pub metric: u32,
    /// Who installed it: `kernel`, `static`, `dhcp`, `boot` …
    pub protocol: String,
    /// Routing table; only the main table (254) is reported.
    pub table: u32,
}

/// One DHCPv4 lease as the client holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    pub link: String,
    pub address: IpNet,
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    /// Option 15; becomes the resolv.conf search domain.
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    pub lease_secs: u32,
    pub acquired_at: SystemTime,
}

/// DHCP progress per link, so an operator can tell "no server answers" from "bound".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum DhcpStatus {
    Discovering { attempts: u32 },
    Bound { lease: LeaseStatus },
    Renewing { lease: LeaseStatus },
    Rebinding { lease: LeaseStatus },
    Stopped,
}

impl DhcpStatus {
    pub fn lease(&self) -> Option<&LeaseStatus> {
        match self {
            DhcpStatus::Bound { lease }
            | DhcpStatus::Renewing { lease }
            | DhcpStatus::Rebinding { lease } => Some(lease),
            _ => None,
        }
    }
}

/// Everything the API reports about the network.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkSnapshot {
    pub links: Vec<LinkStatus>,
    pub addresses: Vec<AddressStatus>,
    pub routes: Vec<RouteStatus>,
    /// What /etc/resolv.conf says right now.
    pub resolvers: Vec<IpAddr>,
    pub search: Vec<String>,
    pub hostname: Option<String>,
    /// Keyed by link name, in link order.
    pub dhcp: Vec<(String, DhcpStatus)>,
}

impl NetworkSnapshot {
    pub fn leases(&self) -> impl Iterator<Item = &LeaseStatus> {
        self.dhcp.iter().filter_map(|(_, s)| s.lease())
    }
}

/// Conversions to the node API's wire types, so the API provider is a one-liner per
/// endpoint and the translation lives next to the facts it translates.
impl NetworkSnapshot {
    fn link_name(&self, index: u32) -> Option<String> {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
    }

    pub fn api_links(&self) -> Vec<basalt_api::Link> {
        self.links
            .iter()
            .map(|l| basalt_api::Link {
                name: l.name.clone(),
                index: l.index,
                kind: match (&l.kind, l.loopback, l.mac) {
                    (_, true, _) => "loopback".into(),
                    (Some(k), _, _) => k.clone(),
                    (None, _, Some(_)) => "ether".into(),
                    (None, _, None) => "none".into(),
                },
                mac: l.mac.map(|m| m.to_string()),
                mtu: l.mtu,
                up: l.up,
                oper_state: l.oper_state.clone(),
            })
            .collect()
    }

    pub fn api_addresses(&self) -> Vec<basalt_api::Address> {
        self.addresses
            .iter()
            .map(|a| basalt_api::Address {
                link: self
                    .link_name(a.link_index)
                    .unwrap_or_else(|| format!("#{}", a.link_index)),
                address: a.address.to_string(),
                scope: a.scope.clone(),
            })
            .collect()
    }

    pub fn api_routes(&self) -> Vec<basalt_api::Route> {
        self.routes
            .iter()
            .map(|r| basalt_api::Route {
                destination: r.destination.to_string(),
                gateway: r.gateway,
                link: r.link_index.and_then(|i| self.link_name(i)),
                metric: Some(r.metric),
                table: r.table,
            })
            .collect()
    }

    pub fn api_resolvers(&self) -> basalt_api::Resolvers {
        basalt_api::Resolvers {
            nameservers: self.resolvers.clone(),
            search: self.search.clone(),
        }
    }
}

/// Read-only view for the API and anything else that wants to look.
#[derive(Clone, Default)]
pub struct NetworkState {
    inner: Arc<RwLock<NetworkSnapshot>>,
}

impl NetworkState {
    /// The state as of the network module's last change (configure, DHCP bind, renew,
    /// expiry). Cheap: a clone under a read lock.
    pub fn snapshot(&self) -> NetworkSnapshot {
        match self.inner.read() {
            Ok(g) => g.clone(),
            // A writer panicked mid-update; what it left is still the best we know.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The one writer of network state; lives inside the network module.
#[derive(Clone)]
pub(crate) struct StateWriter {
    inner: Arc<RwLock<NetworkSnapshot>>,
}

impl StateWriter {
    pub(crate) fn new() -> (StateWriter, NetworkState) {
        let state = NetworkState::default();
        (
            StateWriter {
                inner: state.inner.clone(),
            },
            state,
        )
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut NetworkSnapshot)) {
        let mut g = match self.inner.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut g);
    }

    pub(crate) fn set_dhcp(&self, link: &str, status: DhcpStatus) {
        self.update(|s| match s.dhcp.iter_mut().find(|(l, _)| l == link) {
            Some((_, slot)) => *slot = status,
            None => s.dhcp.push((link.to_owned(), status)),
        });
    }
}
