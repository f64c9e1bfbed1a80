//! The executor: applies a [`LinkPlan`] over rtnetlink and reads links, addresses and
//! routes back. Every write is a "replace", so applying the same plan twice is a no-op.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope, CacheInfo};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use super::NetworkError;
use super::plan::{LinkKind, LinkPlan, Mac, ObservedLink, PlannedRoute};
use super::state::{AddressStatus, LinkStatus, RouteStatus};

/// A connection to the kernel's routing socket in the network namespace of the thread
/// that created it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn nl(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let action = action.into();
    move |source| NetworkError::Netlink { action, source }
}

impl Netlink {
    /// Opens the socket and drives it on the current tokio runtime.
    pub fn connect() -> Result<Netlink, NetworkError> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|source| NetworkError::NetlinkConnect { source })?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    async fn link_messages(&self) -> Result<Vec<LinkMessage>, NetworkError> {
        self.handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing links"))
    }

    /// Links as the planner needs them. `sys_class_net` is normally `/sys/class/net`; a
    /// link is physical when `<sys_class_net>/<name>/device` exists.
    pub async fn observe(&self, sys_class_net: &Path) -> Result<Vec<ObservedLink>, NetworkError> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .map(|l| {
                let kind = if l.loopback {
                    LinkKind::Loopback
                } else if sys_class_net.join(&l.name).join("device").exists() {
                    LinkKind::Physical
                } else {
                    LinkKind::Virtual
                };
                ObservedLink {
                    name: l.name,
                    index: l.index,
                    mac: l.mac,
                    kind,
                }
            })
            .collect())
    }

    pub async fn links(&self) -> Result<Vec<LinkStatus>, NetworkError> {
        let mut out: Vec<LinkStatus> = self
            .link_messages()
            .await?
            .iter()
            .map(link_status)
            .collect();
        out.sort_by_key(|l| l.index);
        Ok(out)
    }

    pub async fn addresses(&self) -> Result<Vec<AddressStatus>, NetworkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        let mut out: Vec<AddressStatus> = msgs.iter().filter_map(address_status).collect();
        out.sort_by_key(|a| (a.link_index, a.address));
        Ok(out)
    }

    /// Routes of the main table (what `ip route` and `ip -6 route` show).
    pub async fn routes(&self) -> Result<Vec<RouteStatus>, NetworkError> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let msg = match version {
                IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            };
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing routes"))?;
            out.extend(msgs.iter().filter_map(route_status));
        }
        Ok(out)
    }

    /// Brings a link up (with its MTU when the plan sets one), then installs its
    /// addresses and routes.
    pub async fn apply_link(&self, plan: &LinkPlan) -> Result<(), NetworkError> {
        self.set_link(plan.index, &plan.name, plan.mtu).await?;
        for address in &plan.addresses {
            self.replace_address(plan.index, &plan.name, *address, None)
                .await?;
        }
        for route in &plan.routes {
            self.replace_route(plan.index, &plan.name, route).await?;
        }
        Ok(())
    }

    pub async fn set_link(
        &self,
        index: u32,
        name: &str,
        mtu: Option<u32>,
    ) -> Result<(), NetworkError> {
        let mut builder = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        self.handle
            .link()
            .set(builder.build())
            .execute()
            .await
            .map_err(nl(format!("bringing link {name} up")))
    }

    /// Adds or refreshes an address. `lifetime` (valid, preferred) makes the kernel drop a
    /// DHCP address by itself when the lease runs out, even if machined is stuck.
    pub async fn replace_address(
        &self,
        index: u32,
        name: &str,
        address: IpNet,
        lifetime: Option<(Duration, Duration)>,
    ) -> Result<(), NetworkError> {
        let mut req = self
            .handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .replace();
        if let Some((valid, preferred)) = lifetime {
            let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
            let mut info = CacheInfo::default();
            info.ifa_preferred = secs(preferred);
            info.ifa_valid = secs(valid);
            req.message_mut()
                .attributes
                .push(AddressAttribute::CacheInfo(info));
        }
        req.execute()
            .await
            .map_err(nl(format!("adding address {address} to {name}")))
    }

    pub async fn delete_address(
        &self,
        index: u32,
        name: &str,
        address: IpNet,
    ) -> Result<(), NetworkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(address.addr())
            .set_prefix_length_filter(address.prefix_len())
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("looking up address {address} on {name}")))?;
        for msg in msgs {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(nl(format!("removing address {address} from {name}")))?;
        }
        Ok(())
    }

    pub async fn replace_route(
        &self,
        index: u32,
        name: &str,
        route: &PlannedRoute,
    ) -> Result<(), NetworkError> {
        let msg = checked_route_message(index, name, route)?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding route {} on {name}", route.destination)))
    }

    pub async fn delete_route(
        &self,
        index: u32,
        name: &str,
        route: &PlannedRoute,
    ) -> Result<(), NetworkError> {
        let msg = checked_route_message(index, name, route)?;
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(nl(format!(
                "removing route {} on {name}",
                route.destination
            )))
    }
}

/// [`route_message`], with a refusal reported as the route of link `name` it concerns:
/// adding and deleting a route must build (and refuse) the same message.
fn checked_route_message(
    index: u32,
    name: &str,
    route: &PlannedRoute,
) -> Result<RouteMessage, NetworkError> {
    route_message(index, route).map_err(|reason| NetworkError::BadRoute {
        name: name.to_owned(),
        destination: route.destination,
        reason,
    })
}

fn route_message(index: u32, route: &PlannedRoute) -> Result<RouteMessage, String> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.destination.addr(), route.destination.prefix_len())
        .map_err(|e| e.to_string())?
        .output_interface(index)
        .priority(route.metric);
    match route.gateway {
        Some(gw) => b = b.gateway(gw).map_err(|e| e.to_string())?,
        // On-link routes are scope link, like `ip route add 10.9.0.0/16 dev eth0`.
        None => b = b.scope(RouteScope::Link),
    }
    Ok(b.build())
}

fn link_status(msg: &LinkMessage) -> LinkStatus {
    let mut name = String::new();
    let mut mac = None;
    let mut mtu = 0;
    let mut kind = None;
    let mut oper_state = String::from("unknown");
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::OperState(s) => oper_state = format!("{s:?}").to_lowercase(),
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Address(a) => mac = Mac::from_bytes(a),
            LinkAttribute::Mtu(m) => mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = Some(info_kind_name(k));
                    }
                }
            }
            _ => {}
        }
    }
    let loopback = msg.header.flags.contains(LinkFlags::Loopback);
    LinkStatus {
        name,
        index: msg.header.index,
        mac: if loopback { None } else { mac },
        mtu,
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        loopback,
        kind,
        oper_state,
    }
}

fn info_kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Other(s) => s.clone(),
        other => other.to_string(),
    }
}

fn address_status(msg: &AddressMessage) -> Option<AddressStatus> {
    let mut local = None;
    let mut address = None;
    let mut valid = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            AddressAttribute::CacheInfo(c) => {
                valid = (c.ifa_valid != u32::MAX).then_some(u64::from(c.ifa_valid))
            }
            _ => {}
        }
    }
    // For point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is always ours.
    let ip = local.or(address)?;
    let address = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some(AddressStatus {
        link_index: msg.header.index,
        address,
        valid_lifetime_secs: valid,
        scope: match msg.header.scope {
            AddressScope::Universe => "global".into(),
            AddressScope::Site => "site".into(),
            AddressScope::Link => "link".into(),
            AddressScope::Host => "host".into(),
            AddressScope::Nowhere => "nowhere".into(),
            AddressScope::Other(n) => n.to_string(),
            other => format!("{other:?}").to_lowercase(),
        },
    })
}

fn route_status(msg: &RouteMessage) -> Option<RouteStatus> {
    if msg.header.table != RouteHeader::RT_TABLE_MAIN || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut dst = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    let unspecified = match msg.header.address_family {
        netlink_packet_route::AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let destination = IpNet::new(
        dst.unwrap_or(unspecified),
        msg.header.destination_prefix_length,
    )
    .ok()?;
    Some(RouteStatus {
        destination,
        gateway,
        link_index: oif,
        metric,
        protocol: match msg.header.protocol {
            RouteProtocol::Kernel => "kernel".into(),
            RouteProtocol::Boot => "boot".into(),
            RouteProtocol::Static => "static".into(),
            RouteProtocol::Dhcp => "dhcp".into(),
            RouteProtocol::Ra => "ra".into(),
            other => format!("{other:?}").to_lowercase(),
        },
        table: u32::from(msg.header.table),
    })
}
