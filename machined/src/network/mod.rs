// The sequencer wires configure() in; until then parts of the API are unused.
#![allow(dead_code)]
//! The network module: the only writer of network state on a node.
//!
//! [`configure`] observes the links over rtnetlink, plans ([`plan::plan`], pure), applies
//! the static part, writes /etc/resolv.conf and /etc/hosts, starts one DHCPv4 client per
//! DHCP link and returns once every client has a lease or the boot wait ran out. The
//! clients keep running (renew, rebind, retry) until [`Network::shutdown`].

pub mod dhcp;
pub mod files;
pub mod netlink;
pub mod plan;
pub mod state;
#[cfg(test)]
mod tests_netns;

use crate::log::warning;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

// The surface the sequencer and the API server use; unused until they are wired in.
#[allow(unused_imports)]
pub use plan::{
    Intent, InterfaceSelector, InterfaceSpec, LinkKind, Mac, NetworkPlan, NetworkSpec,
    ObservedLink, RouteSpec,
};
#[allow(unused_imports)]
pub use state::{DhcpStatus, LeaseStatus, NetworkSnapshot, NetworkState};

use netlink::Netlink;
use state::StateWriter;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{value:?} is not a MAC address (want six hex pairs like 52:54:00:12:34:56)")]
    BadMac { value: String },
    #[error(
        "machine.network.interfaces[{position}]: no interface named {name:?} (this node has: {available})"
    )]
    NoSuchInterface {
        position: usize,
        name: String,
        available: String,
    },
    #[error(
        "machine.network.interfaces[{position}].deviceSelector.hardwareAddr: {mac} matches no interface (this node has: {available})"
    )]
    MacMatchesNothing {
        position: usize,
        mac: Mac,
        available: String,
    },
    #[error(
        "machine.network.interfaces[{position}].deviceSelector.hardwareAddr: {mac} matches several interfaces ({names}); select one by name"
    )]
    MacMatchesMany {
        position: usize,
        mac: Mac,
        names: String,
    },
    #[error(
        "machine.network.interfaces[{second}] selects {name}, which interfaces[{first}] already configures"
    )]
    InterfaceClaimedTwice {
        first: usize,
        second: usize,
        name: String,
    },
    #[error("machine.network.interfaces[{position}].mtu: {mtu} for {name} is outside 68..=65535")]
    MtuOutOfRange {
        position: usize,
        name: String,
        mtu: u32,
    },
    #[error(
        "machine.network.interfaces[{position}].addresses: {address} is listed twice for {name}"
    )]
    DuplicateAddress {
        position: usize,
        name: String,
        address: IpNet,
    },
    #[error(
        "machine.network.interfaces[{position}].routes: gateway {gateway} for {network} on {name} is not of the same IP family"
    )]
    GatewayFamilyMismatch {
        position: usize,
        name: String,
        network: IpNet,
        gateway: IpAddr,
    },
    #[error(
        "machine.network.interfaces[{position}].routes: gateway {gateway} is not inside any address of {name} and DHCP is off, so it can never be reached"
    )]
    GatewayUnreachable {
        position: usize,
        name: String,
        gateway: IpAddr,
    },
    #[error(
        "machine.network.interfaces[{position}].routes: two routes on {name} share destination and metric"
    )]
    DuplicateRoute { position: usize, name: String },
    #[error("opening the rtnetlink socket: {source}")]
    NetlinkConnect { source: std::io::Error },
    #[error("{action}: {source}")]
    Netlink {
        action: String,
        source: rtnetlink::Error,
    },
    #[error("route {destination} on {name} cannot be expressed: {reason}")]
    BadRoute {
        name: String,
        destination: IpNet,
        reason: String,
    },
    #[error("DHCP socket on {link}: {source}")]
    DhcpSocket {
        link: String,
        source: std::io::Error,
    },
    #[error("DHCP reply on {link} is unusable: {reason}")]
    DhcpBadReply { link: String, reason: String },
    #[error("writing {path}: {source}")]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("setting the hostname to {hostname:?}: {source}")]
    Hostname {
        hostname: String,
        source: nix::Error,
    },
}

/// Where the module writes and how long boot waits for DHCP.
#[derive(Clone, Debug)]
pub struct Options {
    /// Directory for resolv.conf and hosts; `/etc` on a node (a tmpfs there).
    pub etc_dir: PathBuf,
    /// `/sys/class/net`: decides which links are physical.
    pub sys_class_net: PathBuf,
    /// How long [`configure`] waits for the first DHCP leases before boot moves on.
    pub dhcp_wait: Duration,
    /// Set the kernel hostname (declared, else DHCP's). Off in tests, which share the
    /// host's UTS namespace.
    pub set_kernel_hostname: bool,
    /// How stale the API's view of links, addresses and routes may get when others
    /// (CNI, kube-proxy) change them.
    pub refresh_interval: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            etc_dir: PathBuf::from("/etc"),
            sys_class_net: PathBuf::from("/sys/class/net"),
            dhcp_wait: Duration::from_secs(30),
            set_kernel_hostname: true,
            refresh_interval: Duration::from_secs(5),
        }
    }
}

/// State shared by configure and the DHCP clients.
pub(crate) struct Shared {
    pub(crate) netlink: Netlink,
    pub(crate) writer: StateWriter,
    plan: NetworkPlan,
    options: Options,
    /// Serialises kernel re-reads and file writes between DHCP clients.
    publish_lock: Mutex<()>,
}

impl Shared {
    /// Re-reads the kernel, recomputes resolvers and hostname, rewrites the files.
    /// Failures are logged, not returned: a DHCP renewal must not die on a full /etc.
    pub(crate) async fn publish(&self) {
        if let Err(e) = self.try_publish().await {
            warning!("network: publishing state: {e}");
        }
    }

    /// Re-reads links, addresses and routes only; what the periodic refresher runs.
    async fn refresh_kernel_view(&self) -> Result<(), NetworkError> {
        let _guard = self.publish_lock.lock().await;
        self.read_kernel().await
    }

    async fn read_kernel(&self) -> Result<(), NetworkError> {
        let links = self.netlink.links().await?;
        let addresses = self.netlink.addresses().await?;
        let routes = self.netlink.routes().await?;
        self.writer.update(|s| {
            s.links = links;
            s.addresses = addresses;
            s.routes = routes;
        });
        Ok(())
    }

    async fn try_publish(&self) -> Result<(), NetworkError> {
        let _guard = self.publish_lock.lock().await;
        self.read_kernel().await?;
        let mut leases: Vec<LeaseStatus> = Vec::new();
        self.writer
            .update(|s| leases = s.leases().cloned().collect());
        let dhcp_dns: Vec<IpAddr> = leases
            .iter()
            .flat_map(|l| l.dns.iter().map(|d| IpAddr::V4(*d)))
            .collect();
        let resolvers = files::pick_resolvers(&self.plan.nameservers, &dhcp_dns);
        let hostname = self
            .plan
            .hostname
            .clone()
            .or_else(|| leases.iter().find_map(|l| l.hostname.clone()));
        let node_ip = self
            .plan
            .node_ip
            .or_else(|| leases.first().map(|l| l.address.addr()));
        // Search domains follow the resolvers' source: DHCP's only when DHCP's servers are used.
        let search: Vec<String> = if self.plan.nameservers.is_empty() {
            let mut v: Vec<String> = Vec::new();
            for d in leases.iter().filter_map(|l| l.domain.clone()) {
                if !v.contains(&d) {
                    v.push(d);
                }
            }
            v
        } else {
            Vec::new()
        };
        files::write_if_changed(
            &self.options.etc_dir.join("resolv.conf"),
            &files::render_resolv_conf(&resolvers, &search),
        )?;
        files::write_if_changed(
            &self.options.etc_dir.join("hosts"),
            &files::render_hosts(hostname.as_deref(), node_ip),
        )?;
        if self.options.set_kernel_hostname
            && let Some(h) = &hostname
        {
            nix::unistd::sethostname(h).map_err(|source| NetworkError::Hostname {
                hostname: h.clone(),
                source,
            })?;
        }
        self.writer.update(|s| {
            s.resolvers = resolvers;
            s.search = search;
            s.hostname = hostname;
        });
        Ok(())
    }
}

/// The running network module, held by the sequencer.
pub struct Network {
    shared: Arc<Shared>,
    state: NetworkState,
    shutdown: watch::Sender<bool>,
    /// DHCP clients and the kernel-view refresher.
    tasks: Vec<JoinHandle<()>>,
}

impl Network {
    /// Read-only view for the API server.
    pub fn state(&self) -> NetworkState {
        self.state.clone()
    }

    pub fn plan(&self) -> &NetworkPlan {
        &self.shared.plan
    }

    /// Re-reads links, addresses and routes at once so the snapshot shows changes made
    /// by others (CNI, kube-proxy); a background task does the same every
    /// [`Options::refresh_interval`].
    pub async fn refresh(&self) {
        if let Err(e) = self.shared.refresh_kernel_view().await {
            warning!("network: refreshing the kernel view: {e}");
        }
    }

    /// Stops the DHCP clients; each releases its lease and removes its address.
    /// Dropping a `Network` without calling this leaves everything running.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for c in self.tasks {
            let _ = c.await;
        }
    }
}

/// Brings the network up. Must run inside a tokio runtime (the rtnetlink connection and
/// the DHCP clients are tasks on it). Returns a planning error before touching anything
/// when the config names links this machine does not have.
pub async fn configure(intent: &Intent, options: &Options) -> Result<Network, NetworkError> {
    let (netlink, plan) = prepare(intent, options).await?;
    start(netlink, plan, options).await
}

/// Replaces a running network with the plan for `intent`, for a config applied live.
/// The new plan is made first: when it cannot be (a link the node does not have), the
/// old network keeps running and the error says why. Then the old DHCP clients release
/// their leases, static addresses and routes the new plan no longer declares are
/// removed, and the new plan is applied.
pub async fn reconfigure(
    old: Network,
    intent: &Intent,
    options: &Options,
) -> Result<Network, (Option<Network>, NetworkError)> {
    let (netlink, plan) = match prepare(intent, options).await {
        Ok(prepared) => prepared,
        Err(e) => return Err((Some(old), e)),
    };
    let old_plan = old.plan().clone();
    old.shutdown().await;
    for (index, name, address) in plan::stale_addresses(&old_plan, &plan) {
        if let Err(e) = netlink.delete_address(index, &name, address).await {
            warning!("network: removing {address} from {name}: {e}");
        }
    }
    for (index, name, route) in plan::stale_routes(&old_plan, &plan) {
        if let Err(e) = netlink.delete_route(index, &name, &route).await {
            warning!(
                "network: removing the route to {} from {name}: {e}",
                route.destination
            );
        }
    }
    let error = match start(netlink, plan, options).await {
        Ok(net) => return Ok(net),
        Err(e) => e,
    };
    // Half-applied: go back to the old plan so the node stays reachable as it was.
    warning!("network: applying the new plan failed ({error}); restoring the previous one");
    let restored = match Netlink::connect() {
        Ok(netlink) => start(netlink, old_plan, options).await,
        Err(e) => Err(e),
    };
    match restored {
        Ok(net) => Err((Some(net), error)),
        Err(e) => {
            warning!("network: restoring the previous plan failed too: {e}");
            Err((None, error))
        }
    }
}

/// Connects to rtnetlink, observes the links and plans: nothing on the host changes.
async fn prepare(
    intent: &Intent,
    options: &Options,
) -> Result<(Netlink, NetworkPlan), NetworkError> {
    let netlink = Netlink::connect()?;
    let observed = netlink.observe(&options.sys_class_net).await?;
    let plan = plan::plan(intent, &observed)?;
    Ok((netlink, plan))
}

/// Applies a plan and starts its DHCP clients and the kernel-view refresher.
async fn start(
    netlink: Netlink,
    plan: NetworkPlan,
    options: &Options,
) -> Result<Network, NetworkError> {
    for link in &plan.links {
        netlink.apply_link(link).await?;
    }

    let (writer, state) = StateWriter::new();
    let shared = Arc::new(Shared {
        netlink,
        writer,
        plan,
        options: options.clone(),
        publish_lock: Mutex::new(()),
    });
    shared.try_publish().await?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut clients = Vec::new();
    let mut firsts = Vec::new();
    for link in shared.plan.dhcp_links() {
        let Some(mac) = link.mac else {
            warning!(
                "network: {} has no Ethernet address; DHCP skipped",
                link.name
            );
            continue;
        };
        let client = dhcp::Client {
            link: link.name.clone(),
            index: link.index,
            mac,
            declared_mtu: link.mtu,
            routes_after_dhcp: link.routes_after_dhcp.clone(),
            shared: shared.clone(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        firsts.push((link.name.clone(), rx));
        clients.push(tokio::spawn(client.run(
            shutdown_rx.clone(),
            tx,
            options.dhcp_wait,
        )));
    }
    for (name, rx) in firsts {
        match rx.await {
            Ok(true) => {}
            _ => warning!("network: {name} has no DHCP lease yet"),
        }
    }
    shared.publish().await;

    let refresher = shared.clone();
    let refresh_interval = options.refresh_interval;
    let mut stop = shutdown_rx.clone();
    clients.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(refresh_interval) => {}
                _ = dhcp::stopped(&mut stop) => return,
            }
            if let Err(e) = refresher.refresh_kernel_view().await {
                warning!("network: refreshing the kernel view: {e}");
            }
        }
    }));

    Ok(Network {
        state,
        shared,
        shutdown,
        tasks: clients,
    })
}
