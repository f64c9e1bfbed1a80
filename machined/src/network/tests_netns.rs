//! Executor and DHCP tests against real kernel objects in throwaway network namespaces.
//! Fixtures (namespaces, veth pairs, the DHCP server) are built with `ip` and dnsmasq on
//! the host; the code under test talks rtnetlink and raw sockets only. These tests need
//! root and fail, not skip, without it: CI runs as root.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipnet::IpNet;

use super::netlink::Netlink;
use super::plan::{self, DEFAULT_ROUTE_METRIC, DHCP_ROUTE_METRIC, PlannedRoute};
use super::*;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed (these tests need root and iproute2): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!(
            "basalt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        Netns { name }
    }

    fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// Runs `f` on a fresh thread that has entered this namespace, with a current-thread
    /// tokio runtime, so every socket the code opens lives in the namespace.
    fn run<F, Fut, R>(&self, f: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = R>,
        R: Send,
    {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).unwrap();
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f())
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn opts(etc: &Path) -> Options {
    Options {
        etc_dir: etc.to_owned(),
        // Nothing is physical in a test namespace; configs name links explicitly.
        sys_class_net: PathBuf::from("/nonexistent"),
        dhcp_wait: Duration::from_secs(20),
        set_kernel_hostname: false,
        refresh_interval: Duration::from_millis(200),
    }
}

fn by_name(name: &str) -> InterfaceSelector {
    InterfaceSelector::Name(name.into())
}

#[test]
fn executor_applies_a_static_plan_and_reapplying_changes_nothing() {
    let ns = Netns::new("static");
    ns.ip(&["link", "add", "st0", "type", "veth", "peer", "name", "st1"]);
    let etc = tempfile::tempdir().unwrap();
    let spec = NetworkSpec {
        hostname: Some("cp1.lab".into()),
        nameservers: vec!["10.77.0.53".parse().unwrap()],
        interfaces: vec![
            InterfaceSpec {
                selector: by_name("st0"),
                dhcp: false,
                addresses: vec![net("10.77.0.2/24"), net("fd77::2/64")],
                routes: vec![
                    RouteSpec {
                        network: net("0.0.0.0/0"),
                        gateway: Some("10.77.0.1".parse().unwrap()),
                        metric: None,
                    },
                    RouteSpec {
                        network: net("10.88.0.0/16"),
                        gateway: Some("10.77.0.1".parse().unwrap()),
                        metric: Some(50),
                    },
                    RouteSpec {
                        network: net("10.66.0.0/16"),
                        gateway: None,
                        metric: Some(7),
                    },
                ],
                mtu: Some(1400),
            },
            InterfaceSpec {
                selector: by_name("st1"),
                dhcp: false,
                addresses: vec![net("10.77.0.1/24")],
                routes: vec![],
                mtu: None,
            },
        ],
    };
    let intent = Intent::Configured(spec);
    let etc_path = etc.path().to_owned();
    ns.run(|| async move {
        let network = configure(&intent, &opts(&etc_path)).await.unwrap();
        let snap = network.state().snapshot();

        let st0 = snap.links.iter().find(|l| l.name == "st0").unwrap();
        let lo = snap.links.iter().find(|l| l.name == "lo").unwrap();
        assert!(st0.up && lo.up, "{snap:#?}");
        assert_eq!(st0.mtu, 1400);
        assert_eq!(st0.kind.as_deref(), Some("veth"));
        assert!(st0.mac.is_some());

        let on = |idx: u32| -> Vec<IpNet> {
            snap.addresses
                .iter()
                .filter(|a| a.link_index == idx)
                .map(|a| a.address)
                .collect()
        };
        let st0_addrs = on(st0.index);
        assert!(st0_addrs.contains(&net("10.77.0.2/24")), "{st0_addrs:?}");
        assert!(st0_addrs.contains(&net("fd77::2/64")), "{st0_addrs:?}");
        assert!(on(lo.index).contains(&net("127.0.0.1/8")));
        assert!(
            snap.addresses
                .iter()
                .filter(|a| a.address == net("10.77.0.2/24"))
                .all(|a| a.valid_lifetime_secs.is_none()),
            "static addresses are forever"
        );

        let route = |dst: &str| {
            snap.routes
                .iter()
                .find(|r| r.destination == net(dst))
                .unwrap_or_else(|| panic!("no route to {dst}: {:#?}", snap.routes))
                .clone()
        };
        let default = route("0.0.0.0/0");
        assert_eq!(default.gateway, Some("10.77.0.1".parse().unwrap()));
        assert_eq!(default.metric, DEFAULT_ROUTE_METRIC);
        assert_eq!(default.link_index, Some(st0.index));
        assert_eq!(default.protocol, "static");
        let r88 = route("10.88.0.0/16");
        assert_eq!(
            (r88.metric, r88.gateway),
            (50, Some("10.77.0.1".parse().unwrap()))
        );
        let r66 = route("10.66.0.0/16");
        assert_eq!((r66.metric, r66.gateway), (7, None));

        assert_eq!(
            snap.resolvers,
            vec!["10.77.0.53".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(snap.hostname.as_deref(), Some("cp1.lab"));
        let resolv = std::fs::read_to_string(etc_path.join("resolv.conf")).unwrap();
        assert!(resolv.contains("nameserver 10.77.0.53\n"), "{resolv}");
        let hosts = std::fs::read_to_string(etc_path.join("hosts")).unwrap();
        assert!(hosts.contains("10.77.0.2\tcp1.lab cp1\n"), "{hosts}");

        // Idempotence: applying the same plan again succeeds and changes nothing.
        let nl = Netlink::connect().unwrap();
        for link in &network.plan().links {
            nl.apply_link(link).await.unwrap();
        }
        network.refresh().await;
        let again = network.state().snapshot();
        assert_eq!(again.links, snap.links);
        assert_eq!(again.addresses, snap.addresses);
        assert_eq!(again.routes, snap.routes);

        // Someone else (a CNI plugin, say) adds an address: the background refresher
        // shows it without anyone asking.
        nl.replace_address(st0.index, "st0", net("10.55.0.9/24"), None)
            .await
            .unwrap();
        let mut seen = false;
        for _ in 0..25 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if network
                .state()
                .snapshot()
                .addresses
                .iter()
                .any(|a| a.address == net("10.55.0.9/24"))
            {
                seen = true;
                break;
            }
        }
        assert!(seen, "refresher did not pick up an external change");
        network.shutdown().await;
    });
}

#[test]
fn mtu_is_changed_in_place_and_unplanned_links_are_left_alone() {
    let ns = Netns::new("mtu");
    ns.ip(&["link", "add", "mt0", "type", "veth", "peer", "name", "mt1"]);
    ns.ip(&["link", "set", "mt0", "mtu", "9000"]);
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let observed = nl.observe(Path::new("/nonexistent")).await.unwrap();
        assert!(observed.iter().all(|l| l.kind != LinkKind::Physical));
        let intent = Intent::Configured(NetworkSpec {
            interfaces: vec![InterfaceSpec {
                selector: InterfaceSelector::HardwareAddr(
                    observed
                        .iter()
                        .find(|l| l.name == "mt0")
                        .unwrap()
                        .mac
                        .unwrap(),
                ),
                dhcp: false,
                addresses: vec![],
                routes: vec![],
                mtu: Some(1280),
            }],
            ..NetworkSpec::default()
        });
        let p = plan::plan(&intent, &observed).unwrap();
        for link in &p.links {
            nl.apply_link(link).await.unwrap();
        }
        let links = nl.links().await.unwrap();
        let mt0 = links.iter().find(|l| l.name == "mt0").unwrap();
        let mt1 = links.iter().find(|l| l.name == "mt1").unwrap();
        assert_eq!((mt0.mtu, mt0.up), (1280, true));
        assert!(!mt1.up, "mt1 is not in the plan and must stay down");
    });
}

#[test]
fn planning_error_names_the_missing_interface_from_a_real_kernel() {
    let ns = Netns::new("missing");
    let etc = tempfile::tempdir().unwrap();
    let intent = Intent::Configured(NetworkSpec {
        interfaces: vec![InterfaceSpec {
            selector: by_name("eth7"),
            dhcp: true,
            addresses: vec![],
            routes: vec![],
            mtu: None,
        }],
        ..NetworkSpec::default()
    });
    let etc_path = etc.path().to_owned();
    let err = ns.run(|| async move { configure(&intent, &opts(&etc_path)).await.err().unwrap() });
    let msg = err.to_string();
    assert!(
        msg.contains("eth7") && msg.contains("this node has: lo"),
        "{msg}"
    );
    assert!(
        !etc.path().join("resolv.conf").exists(),
        "nothing may be written on a planning error"
    );
}

/// dnsmasq serving DHCP in its own namespace; killed on drop.
struct Dnsmasq {
    child: Child,
    _leases: tempfile::TempDir,
}

impl Dnsmasq {
    fn start(ns: &Netns, iface: &str, extra: &[&str]) -> Dnsmasq {
        let leases = tempfile::tempdir().unwrap();
        let leasefile = format!(
            "--dhcp-leasefile={}",
            leases.path().join("leases").display()
        );
        let mut args = vec![
            "netns",
            "exec",
            &ns.name,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--pid-file",
            "--port=0",
            "--bind-interfaces",
            "--log-dhcp",
            "--dhcp-authoritative",
            &leasefile,
        ];
        let iface_arg = format!("--interface={iface}");
        args.push(&iface_arg);
        args.extend_from_slice(extra);
        let child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq must be installed for the DHCP tests (apt-get install dnsmasq-base)");
        // Give it time to bind port 67 before the client's first DISCOVER.
        std::thread::sleep(Duration::from_millis(500));
        Dnsmasq {
            child,
            _leases: leases,
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CLIENT_MAC: &str = "52:54:00:aa:bb:cc";

/// What every DHCP test sets up: a server namespace with dnsmasq on `ds0`
/// (10.99.0.1/24), a client namespace whose `dc0` (MAC [`CLIENT_MAC`]) is the other end,
/// and an /etc for the client's resolv.conf and hosts.
struct DhcpLab {
    server: Netns,
    client: Netns,
    dnsmasq: Mutex<Option<Dnsmasq>>,
    etc: tempfile::TempDir,
}

impl DhcpLab {
    fn start(tag: &str, dnsmasq_args: &[&str]) -> DhcpLab {
        let server = Netns::new(&format!("{tag}-srv"));
        let client = Netns::new(&format!("{tag}-cli"));
        client.ip(&[
            "link",
            "add",
            "dc0",
            "type",
            "veth",
            "peer",
            "name",
            "ds0",
            "netns",
            &server.name,
        ]);
        client.ip(&["link", "set", "dc0", "address", CLIENT_MAC]);
        server.ip(&["addr", "add", "10.99.0.1/24", "dev", "ds0"]);
        server.ip(&["link", "set", "ds0", "up"]);
        server.ip(&["link", "set", "lo", "up"]);
        let dnsmasq = Dnsmasq::start(&server, "ds0", dnsmasq_args);
        DhcpLab {
            server,
            client,
            dnsmasq: Mutex::new(Some(dnsmasq)),
            etc: tempfile::tempdir().unwrap(),
        }
    }

    fn opts(&self) -> Options {
        opts(self.etc.path())
    }

    /// Configures the client for [`dhcp_intent`] (call inside `client.run`).
    async fn configure(&self) -> Network {
        configure(&dhcp_intent(), &self.opts()).await.unwrap()
    }

    /// Stops the DHCP server.
    fn stop_server(&self) {
        self.dnsmasq.lock().unwrap().take();
    }

    /// Starts a DHCP server again, with other arguments (after [`Self::stop_server`]).
    fn start_server(&self, dnsmasq_args: &[&str]) {
        let dnsmasq = Dnsmasq::start(&self.server, "ds0", dnsmasq_args);
        *self.dnsmasq.lock().unwrap() = Some(dnsmasq);
    }
}

/// The lease the client holds right after `configure` returned.
fn first_lease(state: &NetworkState) -> LeaseStatus {
    state
        .snapshot()
        .leases()
        .next()
        .cloned()
        .expect("no first lease")
}

/// Asks `probe` every 250 ms, at most `tries` times, until it finds something.
async fn poll<T>(tries: u32, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..tries {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(found) = probe() {
            return Some(found);
        }
    }
    None
}

fn dhcp_intent() -> Intent {
    Intent::Configured(NetworkSpec {
        interfaces: vec![InterfaceSpec {
            selector: by_name("dc0"),
            dhcp: true,
            addresses: vec![],
            routes: vec![RouteSpec {
                network: net("172.30.0.0/16"),
                gateway: Some("10.99.0.254".parse().unwrap()),
                metric: Some(30),
            }],
            mtu: None,
        }],
        ..NetworkSpec::default()
    })
}

#[test]
fn dhcp_client_gets_a_lease_from_dnsmasq_and_installs_it() {
    let lab = DhcpLab::start(
        "dhcp",
        &[
            "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,10m",
            "--dhcp-option=option:router,10.99.0.1",
            "--dhcp-option=option:dns-server,10.99.0.53",
            "--dhcp-option=option:mtu,1420",
            "--dhcp-option=option:domain-name,lab.test",
            "--dhcp-host=52:54:00:aa:bb:cc,worker-7",
        ],
    );
    let etc_path = lab.etc.path();
    lab.client.run(|| async {
        let network = lab.configure().await;
        let snap = network.state().snapshot();
        let lease = snap
            .leases()
            .next()
            .unwrap_or_else(|| panic!("no lease: {:#?}", snap.dhcp))
            .clone();
        assert_eq!(lease.link, "dc0");
        assert_eq!(
            lease.server,
            "10.99.0.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(lease.lease_secs, 600);
        let IpAddr::V4(ip) = lease.address.addr() else {
            panic!()
        };
        assert!((50..=60).contains(&ip.octets()[3]), "{ip}");
        assert_eq!(lease.address.prefix_len(), 24);

        let dc0 = snap.links.iter().find(|l| l.name == "dc0").unwrap();
        assert_eq!(
            dc0.mtu, 1420,
            "option 26 applies when the config sets no MTU"
        );
        let addr = snap
            .addresses
            .iter()
            .find(|a| a.address == lease.address)
            .unwrap_or_else(|| panic!("lease address not installed: {:#?}", snap.addresses));
        assert_eq!(addr.link_index, dc0.index);
        let valid = addr
            .valid_lifetime_secs
            .expect("DHCP address must carry the lease lifetime");
        assert!((590..=600).contains(&valid), "{valid}");

        let default = snap
            .routes
            .iter()
            .find(|r| r.destination == net("0.0.0.0/0"))
            .unwrap_or_else(|| panic!("no default route: {:#?}", snap.routes));
        assert_eq!(default.gateway, Some("10.99.0.1".parse().unwrap()));
        assert_eq!(default.metric, DHCP_ROUTE_METRIC + dc0.index);
        let declared = snap
            .routes
            .iter()
            .find(|r| r.destination == net("172.30.0.0/16"))
            .unwrap_or_else(|| {
                panic!(
                    "declared route waiting for DHCP missing: {:#?}",
                    snap.routes
                )
            });
        assert_eq!(
            (declared.metric, declared.gateway),
            (30, Some("10.99.0.254".parse().unwrap()))
        );

        assert_eq!(
            snap.resolvers,
            vec!["10.99.0.53".parse::<IpAddr>().unwrap()]
        );
        let resolv = std::fs::read_to_string(etc_path.join("resolv.conf")).unwrap();
        assert!(resolv.contains("nameserver 10.99.0.53\n"), "{resolv}");
        assert!(resolv.contains("search lab.test\n"), "{resolv}");
        assert_eq!(snap.api_resolvers().search, vec!["lab.test".to_owned()]);
        // No hostname in the config: DHCP's is used and maps to the leased address.
        assert_eq!(snap.hostname.as_deref(), Some("worker-7"));
        let hosts = std::fs::read_to_string(etc_path.join("hosts")).unwrap();
        assert!(
            hosts.contains(&format!("{}\tworker-7\n", lease.address.addr())),
            "{hosts}"
        );

        // Shutdown releases the lease and removes the address.
        let state = network.state();
        network.shutdown().await;
        let nl = Netlink::connect().unwrap();
        let left = nl.addresses().await.unwrap();
        assert!(
            left.iter().all(|a| a.address != lease.address),
            "address survived the release: {left:#?}"
        );
        assert!(matches!(
            state.snapshot().dhcp.first(),
            Some((_, DhcpStatus::Stopped))
        ));
    });
}

#[test]
fn dhcp_client_renews_at_t1_by_unicast() {
    // dnsmasq's shortest lease is two minutes; T1/T2 options make it renew early.
    let lab = DhcpLab::start(
        "renew",
        &[
            "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,2m",
            "--dhcp-option=option:router,10.99.0.1",
            "--dhcp-option=option:T1,3",
            "--dhcp-option=option:T2,100",
        ],
    );
    lab.client.run(|| async {
        let network = lab.configure().await;
        let state = network.state();
        let first = first_lease(&state);
        let renewed = poll(40, || {
            let snap = state.snapshot();
            snap.leases()
                .next()
                .filter(|l| l.acquired_at > first.acquired_at)
                .filter(|_| matches!(snap.dhcp[0].1, DhcpStatus::Bound { .. }))
                .cloned()
        })
        .await
        .expect("lease was not renewed within 10 s of T1 = 3 s");
        assert_eq!(renewed.address, first.address, "renewal keeps the address");
        network.shutdown().await;
    });
}

#[test]
fn dhcp_without_a_server_times_out_instead_of_blocking_boot() {
    let ns = Netns::new("nodhcp");
    ns.ip(&["link", "add", "nd0", "type", "veth", "peer", "name", "nd1"]);
    ns.ip(&["link", "set", "nd1", "up"]);
    let etc = tempfile::tempdir().unwrap();
    let etc_path = etc.path().to_owned();
    ns.run(|| async move {
        let mut o = opts(&etc_path);
        o.dhcp_wait = Duration::from_secs(2);
        let intent = Intent::Configured(NetworkSpec {
            interfaces: vec![InterfaceSpec {
                selector: by_name("nd0"),
                dhcp: true,
                addresses: vec![net("192.168.50.2/24")],
                routes: vec![],
                mtu: None,
            }],
            ..NetworkSpec::default()
        });
        let started = std::time::Instant::now();
        let network = configure(&intent, &o).await.unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(6),
            "configure blocked for {took:?}"
        );
        let snap = network.state().snapshot();
        assert!(snap.leases().next().is_none());
        assert!(
            matches!(snap.dhcp[0].1, DhcpStatus::Discovering { attempts } if attempts >= 1),
            "{:?}",
            snap.dhcp
        );
        // The static address is there regardless of DHCP.
        assert!(
            snap.addresses
                .iter()
                .any(|a| a.address == net("192.168.50.2/24"))
        );
        let started = std::time::Instant::now();
        network.shutdown().await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "shutdown must interrupt retries"
        );
    });
}

/// The sequencer boxes phase futures as `Send`; this stops compiling if configure's
/// future ever holds something that is not.
#[test]
fn configure_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let intent = Intent::Maintenance;
    let o = Options::default();
    let fut = configure(&intent, &o);
    assert_send(&fut);
    let shutdown_of = |n: Network| n.shutdown();
    let _ = shutdown_of;
}

#[test]
fn maintenance_mode_runs_dhcp_on_links_sysfs_calls_physical() {
    let lab = DhcpLab::start(
        "maint",
        &[
            "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,10m",
            "--dhcp-option=option:router,10.99.0.1",
        ],
    );
    // The test namespace's veth has no device; a stand-in /sys/class/net says dc0 has one.
    let sys = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(sys.path().join("dc0/device")).unwrap();
    // A second virtual link must be ignored by maintenance mode.
    lab.client
        .ip(&["link", "add", "vx0", "type", "veth", "peer", "name", "vx1"]);
    let mut o = lab.opts();
    o.sys_class_net = sys.path().to_owned();
    lab.client.run(|| async move {
        let network = configure(&Intent::Maintenance, &o).await.unwrap();
        let names: Vec<&str> = network
            .plan()
            .links
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(names, vec!["lo", "dc0"]);
        let snap = network.state().snapshot();
        let lease = snap.leases().next().expect("maintenance mode got no lease");
        assert_eq!(lease.link, "dc0");
        assert!(
            snap.links
                .iter()
                .filter(|l| l.name.starts_with("vx"))
                .all(|l| !l.up),
            "virtual links stay down in maintenance mode"
        );
        network.shutdown().await;
    });
}

#[test]
fn dhcp_nak_on_renewal_drops_the_address_and_starts_over() {
    let lab = DhcpLab::start(
        "nak",
        &[
            "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,2m",
            "--dhcp-option=option:T1,3",
            "--dhcp-option=option:T2,100",
        ],
    );
    lab.client.run(|| async {
        let network = lab.configure().await;
        let state = network.state();
        let first = first_lease(&state);
        // The network is renumbered: an authoritative server that does not know the old
        // address must NAK the renewal.
        lab.stop_server();
        lab.start_server(&["--dhcp-range=10.99.0.100,10.99.0.110,255.255.255.0,2m"]);
        let moved = poll(60, || {
            state
                .snapshot()
                .leases()
                .next()
                .filter(|l| l.address != first.address)
                .cloned()
        })
        .await
        .expect("client did not move to the new range after a NAK");
        let IpAddr::V4(ip) = moved.address.addr() else {
            panic!()
        };
        assert!((100..=110).contains(&ip.octets()[3]), "{ip}");
        let nl = Netlink::connect().unwrap();
        let addrs = nl.addresses().await.unwrap();
        assert!(
            addrs.iter().all(|a| a.address != first.address),
            "the NAKed address is still installed: {addrs:#?}"
        );
        assert!(addrs.iter().any(|a| a.address == moved.address));
        network.shutdown().await;
    });
}

#[test]
fn dhcp_rebinds_by_broadcast_at_t2_when_the_server_is_gone() {
    let lab = DhcpLab::start(
        "rebind",
        &[
            "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,2m",
            "--dhcp-option=option:T1,3",
            "--dhcp-option=option:T2,6",
        ],
    );
    lab.client.run(|| async {
        let network = lab.configure().await;
        let state = network.state();
        let first = first_lease(&state);
        assert_eq!(first.server, std::net::Ipv4Addr::new(10, 99, 0, 1));
        // The server moves to another address: unicast renewals to 10.99.0.1 go
        // unanswered, only the broadcast at T2 reaches it.
        lab.stop_server();
        lab.server
            .ip(&["addr", "del", "10.99.0.1/24", "dev", "ds0"]);
        lab.server
            .ip(&["addr", "add", "10.99.0.2/24", "dev", "ds0"]);
        lab.start_server(&["--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,2m"]);
        let rebound = poll(60, || match state.snapshot().dhcp.first() {
            Some((_, DhcpStatus::Bound { lease }))
                if lease.server == std::net::Ipv4Addr::new(10, 99, 0, 2) =>
            {
                Some(lease.clone())
            }
            _ => None,
        })
        .await
        .expect("lease was not rebound with the moved server");
        assert_eq!(
            rebound.address, first.address,
            "rebinding keeps the address"
        );
        network.shutdown().await;
    });
}

/// Why DHCP default routes carry the link index in their metric: with equal metrics the
/// second link's route replaces the first's, with distinct ones both stay.
#[test]
fn default_routes_of_two_links_coexist_only_with_distinct_metrics() {
    let ns = Netns::new("metric");
    ns.ip(&["link", "add", "ma0", "type", "veth", "peer", "name", "ma1"]);
    ns.ip(&["link", "add", "mb0", "type", "veth", "peer", "name", "mb1"]);
    ns.run(|| async {
        let nl = Netlink::connect().unwrap();
        let links = nl.links().await.unwrap();
        let idx = |n: &str| links.iter().find(|l| l.name == n).unwrap().index;
        for (name, addr) in [("ma0", "10.61.0.2/24"), ("mb0", "10.62.0.2/24")] {
            nl.set_link(idx(name), name, None).await.unwrap();
            nl.replace_address(idx(name), name, net(addr), None)
                .await
                .unwrap();
        }
        let default_via = |gw: &str, metric| PlannedRoute {
            destination: net("0.0.0.0/0"),
            gateway: Some(gw.parse().unwrap()),
            metric,
        };
        let defaults = |routes: Vec<super::state::RouteStatus>| {
            routes
                .into_iter()
                .filter(|r| r.destination == net("0.0.0.0/0"))
                .count()
        };
        nl.replace_route(idx("ma0"), "ma0", &default_via("10.61.0.1", 2048))
            .await
            .unwrap();
        nl.replace_route(idx("mb0"), "mb0", &default_via("10.62.0.1", 2048))
            .await
            .unwrap();
        assert_eq!(
            defaults(nl.routes().await.unwrap()),
            1,
            "equal metrics replace"
        );
        nl.replace_route(
            idx("ma0"),
            "ma0",
            &default_via("10.61.0.1", 2048 + idx("ma0")),
        )
        .await
        .unwrap();
        nl.replace_route(
            idx("mb0"),
            "mb0",
            &default_via("10.62.0.1", 2048 + idx("mb0")),
        )
        .await
        .unwrap();
        assert_eq!(
            defaults(nl.routes().await.unwrap()),
            3,
            "distinct metrics coexist"
        );
    });
}

#[test]
fn dropping_the_handle_keeps_dhcp_running() {
    let lab = DhcpLab::start(
        "drop",
        &[
            "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,2m",
            "--dhcp-option=option:T1,3",
            "--dhcp-option=option:T2,100",
        ],
    );
    lab.client.run(|| async {
        let network = lab.configure().await;
        let state = network.state();
        let first = first_lease(&state);
        drop(network);
        // The client still renews at T1 and the address stays.
        let renewed = poll(40, || {
            state
                .snapshot()
                .leases()
                .next()
                .is_some_and(|l| l.acquired_at > first.acquired_at)
                .then_some(())
        })
        .await;
        assert!(
            renewed.is_some(),
            "client stopped when the handle was dropped"
        );
        let nl = Netlink::connect().unwrap();
        assert!(
            nl.addresses()
                .await
                .unwrap()
                .iter()
                .any(|a| a.address == first.address)
        );
    });
}
