//! DHCPv4 client (RFC 2131). Messages are built and read by pure functions; the I/O
//! loop below sends through a UDP socket bound to the link (SO_BINDTODEVICE,
//! SO_BROADCAST, port 68) and receives through an AF_PACKET socket, because a link
//! without an address drops broadcast replies under rp_filter before UDP sees them.

use crate::log::{info, warning};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use ipnet::{IpNet, Ipv4Net};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::plan::{DHCP_ROUTE_METRIC, Mac, PlannedRoute};
use super::state::{DhcpStatus, LeaseStatus};
use super::{NetworkError, Shared};

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;

/// What an ACK granted, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Net,
    pub server: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub hostname: Option<String>,
    pub domain: Option<String>,
    pub mtu: Option<u16>,
    pub lease_time: Duration,
    pub renew_after: Duration,
    pub rebind_after: Duration,
}

impl Lease {
    /// Reads an OFFER or ACK. RFC 2131 §4.4.5 defaults: T1 = 0.5, T2 = 0.875 of the lease.
    pub fn from_reply(msg: &Message, link: &str) -> Result<Lease, NetworkError> {
        let bad = |reason: &str| NetworkError::DhcpBadReply {
            link: link.to_owned(),
            reason: reason.to_owned(),
        };
        let yiaddr = msg.yiaddr();
        if yiaddr.is_unspecified() || yiaddr.is_broadcast() || yiaddr.is_multicast() {
            return Err(bad(&format!(
                "offered address {yiaddr} is not a host address"
            )));
        }
        let opts = msg.opts();
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => return Err(bad("no server identifier (option 54)")),
        };
        let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(t)) => *t,
            _ => return Err(bad("no lease time (option 51)")),
        };
        let prefix = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(mask)) => {
                let bits = u32::from(*mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return Err(bad(&format!("subnet mask {mask} is not contiguous")));
                }
                bits.leading_ones() as u8
            }
            // RFC 2131 lets servers omit it; classful defaults are what clients fall back to.
            _ => match yiaddr.octets()[0] {
                0..=127 => 8,
                128..=191 => 16,
                _ => 24,
            },
        };
        let address = Ipv4Net::new(yiaddr, prefix).map_err(|_| bad("bad prefix"))?;
        let lease_time = Duration::from_secs(u64::from(lease_secs));
        let renew_after = match opts.get(OptionCode::Renewal) {
            Some(DhcpOption::Renewal(t)) => Duration::from_secs(u64::from(*t)),
            _ => lease_time / 2,
        };
        let rebind_after = match opts.get(OptionCode::Rebinding) {
            Some(DhcpOption::Rebinding(t)) => Duration::from_secs(u64::from(*t)),
            _ => lease_time * 7 / 8,
        };
        // Keep T1 <= T2 <= lease even when a server sends nonsense.
        let rebind_after = rebind_after.min(lease_time);
        let renew_after = renew_after.min(rebind_after);
        let routers = match opts.get(OptionCode::Router) {
            Some(DhcpOption::Router(r)) => r.clone(),
            _ => vec![],
        };
        let dns = match opts.get(OptionCode::DomainNameServer) {
            Some(DhcpOption::DomainNameServer(d)) => d.clone(),
            _ => vec![],
        };
        // Both end up in sethostname(2), /etc/hosts and resolv.conf: a server must not be
        // able to smuggle lines or spaces into them.
        let hostname = match opts.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => dns_name(h),
            _ => None,
        };
        let domain = match opts.get(OptionCode::DomainName) {
            Some(DhcpOption::DomainName(d)) => dns_name(d),
            _ => None,
        };
        let mtu = match opts.get(OptionCode::InterfaceMtu) {
            Some(DhcpOption::InterfaceMtu(m)) if *m >= 68 => Some(*m),
            _ => None,
        };
        Ok(Lease {
            address,
            server,
            routers,
            dns,
            hostname,
            domain,
            mtu,
            lease_time,
            renew_after,
            rebind_after,
        })
    }

    /// The default route the lease implies, behind any declared one. The link index is
    /// part of the metric: IPv4 routes with equal destination and metric replace each
    /// other whatever their link, and two DHCP links must not evict each other's route.
    pub fn default_route(&self, link_index: u32) -> Option<PlannedRoute> {
        self.routers.first().map(|gw| PlannedRoute {
            destination: IpNet::V4(Ipv4Net::default()),
            gateway: Some(IpAddr::V4(*gw)),
            metric: DHCP_ROUTE_METRIC.saturating_add(link_index),
        })
    }
}

/// A DHCP-supplied name, lowercased, if it is a valid DNS name (RFC 1123 labels); a
/// trailing dot is tolerated. Anything else is dropped rather than repaired.
pub fn dns_name(raw: &str) -> Option<String> {
    let name = raw.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
    ok.then_some(name)
}

fn base(xid: u32, mac: Mac, ciaddr: Ipv4Addr, kind: MessageType) -> Message {
    let mut m = Message::new_with_id(
        xid,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.0,
    );
    m.set_opcode(Opcode::BootRequest);
    if ciaddr.is_unspecified() {
        // Without an address we cannot receive unicast replies: ask for broadcast.
        m.set_flags(Flags::default().set_broadcast());
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&mac.0);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    m
}

fn want_options(m: &mut Message) {
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::Hostname,
        OptionCode::DomainName,
        OptionCode::InterfaceMtu,
        OptionCode::AddressLeaseTime,
        OptionCode::Renewal,
        OptionCode::Rebinding,
    ]));
    m.opts_mut().insert(DhcpOption::MaxMessageSize(1500));
}

pub fn discover(xid: u32, mac: Mac) -> Message {
    let mut m = base(xid, mac, Ipv4Addr::UNSPECIFIED, MessageType::Discover);
    want_options(&mut m);
    m
}

/// REQUEST in SELECTING state: names the offer and the server that made it.
pub fn request_offer(xid: u32, mac: Mac, offer: &Lease) -> Message {
    let mut m = base(xid, mac, Ipv4Addr::UNSPECIFIED, MessageType::Request);
    m.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.address.addr()));
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(offer.server));
    want_options(&mut m);
    m
}

/// REQUEST in RENEWING (unicast) or REBINDING (broadcast) state: ciaddr carries the
/// address, and RFC 2131 forbids the server identifier and requested address options.
pub fn request_extend(xid: u32, mac: Mac, lease: &Lease) -> Message {
    let mut m = base(xid, mac, lease.address.addr(), MessageType::Request);
    want_options(&mut m);
    m
}

pub fn release(xid: u32, mac: Mac, lease: &Lease) -> Message {
    let mut m = base(xid, mac, lease.address.addr(), MessageType::Release);
    m.opts_mut()
        .insert(DhcpOption::ServerIdentifier(lease.server));
    m
}

/// The reply's message type if it answers our transaction, `None` for anyone else's.
pub fn reply_type(msg: &Message, xid: u32, mac: Mac) -> Option<MessageType> {
    if msg.opcode() != Opcode::BootReply
        || msg.xid() != xid
        || msg.chaddr().get(..6) != Some(&mac.0[..])
    {
        return None;
    }
    msg.opts().msg_type()
}

pub fn encode(msg: &Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(576);
    // Encoding into a Vec only fails on options that do not fit their length byte;
    // every option we build is bounded.
    let _ = msg.encode(&mut Encoder::new(&mut buf));
    buf
}

pub fn decode(bytes: &[u8]) -> Option<Message> {
    Message::decode(&mut Decoder::new(bytes)).ok()
}

/// RFC 2131 §4.1 retransmission: 4, 8, 16, 32, 64, 64 … seconds.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(4u64 << attempt.min(4))
}

/// Extracts the UDP payload sent to port 68 from an IPv4 packet (AF_PACKET, SOCK_DGRAM
/// hands us the frame without its link-layer header).
pub fn udp_payload_to_client(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl + 8 || packet[9] != 17 {
        return None;
    }
    // Fragments never carry a whole DHCP reply we could use.
    let frag = u16::from_be_bytes([packet[6], packet[7]]);
    if frag & 0x3fff != 0 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]])).min(packet.len());
    let udp = packet.get(ihl..total)?;
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if dport != CLIENT_PORT || ulen < 8 || ulen > udp.len() {
        return None;
    }
    Some(&udp[8..ulen])
}

/// Sockets for one link.
struct Sockets {
    link: String,
    index: u32,
    udp: tokio::net::UdpSocket,
}

impl Sockets {
    fn open(link: &str, index: u32) -> Result<Sockets, NetworkError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let err = |source| NetworkError::DhcpSocket {
            link: link.to_owned(),
            source,
        };
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
        s.set_reuse_address(true).map_err(err)?;
        s.set_broadcast(true).map_err(err)?;
        s.bind_device(Some(link.as_bytes())).map_err(err)?;
        s.set_nonblocking(true).map_err(err)?;
        let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT));
        s.bind(&any.into()).map_err(err)?;
        let udp = tokio::net::UdpSocket::from_std(s.into()).map_err(err)?;
        Ok(Sockets {
            link: link.to_owned(),
            index,
            udp,
        })
    }

    fn packet_socket(&self) -> Result<AsyncFd<OwnedFd>, NetworkError> {
        let err = |source| NetworkError::DhcpSocket {
            link: self.link.clone(),
            source,
        };
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2)/bind(2) calls; the fd is owned right after creation and the
        // sockaddr_ll is fully initialised before bind reads it.
        let fd = unsafe {
            let raw = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            );
            if raw < 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = self.index as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if rc < 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            fd
        };
        // SAFETY: the AsyncFd owns the fd and nothing else closes or replaces it.
        unsafe { AsyncFd::register(fd) }.map_err(|e| err(e.into_parts().1))
    }

    async fn send(&self, msg: &Message, to: Ipv4Addr) -> Result<(), NetworkError> {
        self.udp
            .send_to(&encode(msg), SocketAddrV4::new(to, SERVER_PORT))
            .await
            .map_err(|source| NetworkError::DhcpSocket {
                link: self.link.clone(),
                source,
            })?;
        Ok(())
    }

    /// Sends `msg` and waits up to `wait` for a reply to the same transaction.
    async fn exchange(
        &self,
        msg: &Message,
        to: Ipv4Addr,
        mac: Mac,
        wait: Duration,
    ) -> Result<Option<Message>, NetworkError> {
        // Open the capture before sending so a fast server cannot answer into the void.
        let pkt = self.packet_socket()?;
        self.send(msg, to).await?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 2048];
        loop {
            let recv = async {
                loop {
                    let mut guard = pkt.readable().await?;
                    // SAFETY: recv(2) into a buffer we own, with its true length.
                    match guard.try_io(|fd| {
                        let n = unsafe {
                            libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                        };
                        if n < 0 {
                            Err(std::io::Error::last_os_error())
                        } else {
                            Ok(n as usize)
                        }
                    }) {
                        Ok(r) => return r,
                        Err(_would_block) => continue,
                    }
                }
            };
            let n = match tokio::time::timeout_at(deadline, recv).await {
                Err(_) => return Ok(None),
                Ok(r) => r.map_err(|source| NetworkError::DhcpSocket {
                    link: self.link.clone(),
                    source,
                })?,
            };
            let Some(payload) = udp_payload_to_client(&buf[..n]) else {
                continue;
            };
            if let Some(reply) = decode(payload)
                && reply_type(&reply, msg.xid(), mac).is_some()
            {
                return Ok(Some(reply));
            }
        }
    }
}

/// Resolves once shutdown is requested. A dropped sender is not a request: a sequencer
/// that lets go of its [`super::Network`] must not take the node off the network.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One client per link, running until shutdown.
pub(crate) struct Client {
    pub link: String,
    pub index: u32,
    pub mac: Mac,
    /// Declared MTU; DHCP's option 26 only applies without one.
    pub declared_mtu: Option<u32>,
    pub routes_after_dhcp: Vec<PlannedRoute>,
    pub shared: Arc<Shared>,
}

enum Outcome {
    Bound(Lease),
    Shutdown,
}

impl Client {
    /// Runs the client. `first` fires once with whether the first attempt got a lease
    /// before `first_wait` ran out; the client carries on either way.
    pub async fn run(
        self,
        mut shutdown: watch::Receiver<bool>,
        first: tokio::sync::oneshot::Sender<bool>,
        first_wait: Duration,
    ) {
        let mut first = Some(first);
        let started = Instant::now();
        let sockets = match Sockets::open(&self.link, self.index) {
            Ok(s) => s,
            Err(e) => {
                warning!("network: DHCP on {} cannot start: {e}", self.link);
                self.shared.writer.set_dhcp(&self.link, DhcpStatus::Stopped);
                if let Some(f) = first.take() {
                    let _ = f.send(false);
                }
                return;
            }
        };
        let mut attempts = 0u32;
        loop {
            self.shared
                .writer
                .set_dhcp(&self.link, DhcpStatus::Discovering { attempts });
            let outcome = self
                .acquire(
                    &sockets,
                    &mut attempts,
                    &mut shutdown,
                    &mut first,
                    started,
                    first_wait,
                )
                .await;
            let lease = match outcome {
                Outcome::Shutdown => break,
                Outcome::Bound(lease) => lease,
            };
            if let Some(f) = first.take() {
                let _ = f.send(true);
            }
            match self.hold(&sockets, lease, &mut shutdown).await {
                Some(lease) => {
                    // Shutdown while bound: give the address back.
                    let xid = rand::random();
                    if let Err(e) = sockets
                        .send(&release(xid, self.mac, &lease), lease.server)
                        .await
                    {
                        warning!("network: DHCP release on {} failed: {e}", self.link);
                    } else {
                        info!(
                            "network: released the DHCP lease {} on {}",
                            lease.address, self.link
                        );
                    }
                    self.unbind(&lease).await;
                    break;
                }
                None => {
                    attempts = 0;
                    continue;
                }
            }
        }
        self.shared.writer.set_dhcp(&self.link, DhcpStatus::Stopped);
        if let Some(f) = first.take() {
            let _ = f.send(false);
        }
    }

    async fn acquire(
        &self,
        sockets: &Sockets,
        attempts: &mut u32,
        shutdown: &mut watch::Receiver<bool>,
        first: &mut Option<tokio::sync::oneshot::Sender<bool>>,
        started: Instant,
        first_wait: Duration,
    ) -> Outcome {
        loop {
            if *shutdown.borrow() {
                return Outcome::Shutdown;
            }
            if first.is_some() && started.elapsed() >= first_wait {
                warning!(
                    "network: no DHCP lease on {} after {:?}; boot continues, retrying in the background",
                    self.link,
                    first_wait
                );
                if let Some(f) = first.take() {
                    let _ = f.send(false);
                }
            }
            let wait = backoff(*attempts);
            *attempts += 1;
            self.shared.writer.set_dhcp(
                &self.link,
                DhcpStatus::Discovering {
                    attempts: *attempts,
                },
            );
            let attempt = async {
                let xid: u32 = rand::random();
                let offer = match sockets
                    .exchange(
                        &discover(xid, self.mac),
                        Ipv4Addr::BROADCAST,
                        self.mac,
                        wait,
                    )
                    .await?
                {
                    Some(o) if reply_type(&o, xid, self.mac) == Some(MessageType::Offer) => o,
                    _ => return Ok::<_, NetworkError>(None),
                };
                let offer = Lease::from_reply(&offer, &self.link)?;
                let req = request_offer(xid, self.mac, &offer);
                match sockets
                    .exchange(&req, Ipv4Addr::BROADCAST, self.mac, wait)
                    .await?
                {
                    Some(ack) if reply_type(&ack, xid, self.mac) == Some(MessageType::Ack) => {
                        Ok(Some(Lease::from_reply(&ack, &self.link)?))
                    }
                    _ => Ok(None),
                }
            };
            // Bound each round by the time left for boot so `first` fires on time.
            let budget = match first {
                Some(_) => first_wait
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(100)),
                None => wait * 3,
            };
            tokio::select! {
                r = tokio::time::timeout(budget, attempt) => match r {
                    Ok(Ok(Some(lease))) => {
                        if let Err(e) = self.bind(&lease).await {
                            warning!("network: applying DHCP lease on {}: {e}", self.link);
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        return Outcome::Bound(lease);
                    }
                    Ok(Ok(None)) | Err(_) => {}
                    Ok(Err(e)) => {
                        warning!("network: DHCP on {}: {e}", self.link);
                        tokio::time::sleep(wait.min(budget)).await;
                    }
                },
                _ = stopped(shutdown) => return Outcome::Shutdown,
            }
        }
    }

    /// Keeps a lease alive: renew at T1 (unicast), rebind at T2 (broadcast), drop at
    /// expiry. Returns the lease on shutdown, `None` when it was lost.
    async fn hold(
        &self,
        sockets: &Sockets,
        mut lease: Lease,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Lease> {
        let mut since = tokio::time::Instant::now();
        loop {
            let t1 = since + lease.renew_after;
            let t2 = since + lease.rebind_after;
            let expiry = since + lease.lease_time;
            tokio::select! {
                _ = tokio::time::sleep_until(t1) => {}
                _ = stopped(shutdown) => return Some(lease),
            }
            let mut renewed = None;
            while renewed.is_none() {
                let now = tokio::time::Instant::now();
                if now >= expiry {
                    break;
                }
                let rebinding = now >= t2;
                let status = if rebinding {
                    DhcpStatus::Rebinding {
                        lease: self.status(&lease),
                    }
                } else {
                    DhcpStatus::Renewing {
                        lease: self.status(&lease),
                    }
                };
                self.shared.writer.set_dhcp(&self.link, status);
                // RFC 2131 §4.4.5: retry at half the remaining time, at least 60 s apart
                // (scaled down for the very short leases tests use).
                let until = if rebinding { expiry } else { t2 };
                let floor = Duration::from_secs(60)
                    .min(lease.lease_time / 8)
                    .max(Duration::from_millis(500));
                let wait = ((until - now) / 2)
                    .max(floor)
                    .min(until - now + Duration::from_millis(1));
                let xid = rand::random();
                let req = request_extend(xid, self.mac, &lease);
                let to = if rebinding {
                    Ipv4Addr::BROADCAST
                } else {
                    lease.server
                };
                let exchange = sockets.exchange(&req, to, self.mac, wait);
                let started = tokio::time::Instant::now();
                tokio::select! {
                    r = exchange => match r {
                        Ok(Some(reply)) => match reply_type(&reply, xid, self.mac) {
                            Some(MessageType::Ack) => match Lease::from_reply(&reply, &self.link) {
                                Ok(new) => renewed = Some(new),
                                Err(e) => warning!("network: DHCP on {}: {e}", self.link),
                            },
                            Some(MessageType::Nak) => {
                                warning!("network: DHCP server refused to extend {} on {}", lease.address, self.link);
                                self.unbind(&lease).await;
                                return None;
                            }
                            _ => {}
                        },
                        Ok(None) => {}
                        Err(e) => warning!("network: DHCP on {}: {e}", self.link),
                    },
                    _ = stopped(shutdown) => return Some(lease),
                }
                // Errors return at once; keep the retry cadence anyway.
                let elapsed = started.elapsed();
                if renewed.is_none() && elapsed < wait {
                    tokio::select! {
                        _ = tokio::time::sleep(wait - elapsed) => {}
                        _ = stopped(shutdown) => return Some(lease),
                    }
                }
            }
            match renewed {
                Some(new) => {
                    if new.address != lease.address {
                        self.unbind(&lease).await;
                    }
                    if let Err(e) = self.bind(&new).await {
                        warning!("network: applying renewed DHCP lease on {}: {e}", self.link);
                    }
                    lease = new;
                    since = tokio::time::Instant::now();
                }
                None => {
                    warning!(
                        "network: DHCP lease {} on {} expired",
                        lease.address,
                        self.link
                    );
                    self.unbind(&lease).await;
                    return None;
                }
            }
        }
    }

    fn status(&self, lease: &Lease) -> LeaseStatus {
        LeaseStatus {
            link: self.link.clone(),
            address: IpNet::V4(lease.address),
            server: lease.server,
            routers: lease.routers.clone(),
            dns: lease.dns.clone(),
            hostname: lease.hostname.clone(),
            domain: lease.domain.clone(),
            mtu: lease.mtu,
            lease_secs: u32::try_from(lease.lease_time.as_secs()).unwrap_or(u32::MAX),
            acquired_at: SystemTime::now(),
        }
    }

    async fn bind(&self, lease: &Lease) -> Result<(), NetworkError> {
        let nl = &self.shared.netlink;
        let mtu = match self.declared_mtu {
            Some(m) => Some(m),
            None => lease.mtu.map(u32::from),
        };
        nl.set_link(self.index, &self.link, mtu).await?;
        nl.replace_address(
            self.index,
            &self.link,
            IpNet::V4(lease.address),
            Some((lease.lease_time, lease.lease_time)),
        )
        .await?;
        if let Some(route) = lease.default_route(self.index) {
            nl.replace_route(self.index, &self.link, &route).await?;
        }
        for route in &self.routes_after_dhcp {
            nl.replace_route(self.index, &self.link, route).await?;
        }
        info!(
            "network: DHCP lease {} on {} from {} for {:?}",
            lease.address, self.link, lease.server, lease.lease_time
        );
        self.shared.writer.set_dhcp(
            &self.link,
            DhcpStatus::Bound {
                lease: self.status(lease),
            },
        );
        self.shared.publish().await;
        Ok(())
    }

    async fn unbind(&self, lease: &Lease) {
        let nl = &self.shared.netlink;
        // Routes through the address vanish with it; the address is what matters.
        if let Err(e) = nl
            .delete_address(self.index, &self.link, IpNet::V4(lease.address))
            .await
        {
            warning!("network: removing DHCP address from {}: {e}", self.link);
        }
        self.shared
            .writer
            .set_dhcp(&self.link, DhcpStatus::Discovering { attempts: 0 });
        self.shared.publish().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

    fn ack(xid: u32, opts: &[DhcpOption]) -> Message {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 7, 0, 50),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC.0,
        );
        m.set_opcode(Opcode::BootReply);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        for o in opts {
            m.opts_mut().insert(o.clone());
        }
        decode(&encode(&m)).unwrap()
    }

    fn full_ack(xid: u32) -> Message {
        ack(
            xid,
            &[
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 7, 0, 1)),
                DhcpOption::AddressLeaseTime(3600),
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
                DhcpOption::Router(vec![Ipv4Addr::new(10, 7, 0, 1)]),
                DhcpOption::DomainNameServer(vec![
                    Ipv4Addr::new(10, 7, 0, 53),
                    Ipv4Addr::new(10, 7, 0, 54),
                ]),
                DhcpOption::Hostname("node-a".into()),
                DhcpOption::InterfaceMtu(1400),
            ],
        )
    }

    #[test]
    fn ack_parses_into_a_lease_with_rfc_default_timers() {
        let lease = Lease::from_reply(&full_ack(7), "eth0").unwrap();
        assert_eq!(lease.address, "10.7.0.50/24".parse().unwrap());
        assert_eq!(lease.server, Ipv4Addr::new(10, 7, 0, 1));
        assert_eq!(lease.routers, vec![Ipv4Addr::new(10, 7, 0, 1)]);
        assert_eq!(lease.dns.len(), 2);
        assert_eq!(lease.hostname.as_deref(), Some("node-a"));
        assert_eq!(lease.mtu, Some(1400));
        assert_eq!(lease.lease_time, Duration::from_secs(3600));
        assert_eq!(lease.renew_after, Duration::from_secs(1800));
        assert_eq!(lease.rebind_after, Duration::from_secs(3150));
        let route = lease.default_route(3).unwrap();
        assert_eq!(route.destination, "0.0.0.0/0".parse().unwrap());
        assert_eq!(route.metric, DHCP_ROUTE_METRIC + 3);
        assert_ne!(
            lease.default_route(4).unwrap().metric,
            route.metric,
            "two DHCP links keep separate default routes"
        );
    }

    #[test]
    fn explicit_timers_are_used_but_clamped_into_order() {
        let m = ack(
            1,
            &[
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 7, 0, 1)),
                DhcpOption::AddressLeaseTime(100),
                DhcpOption::Renewal(90),
                DhcpOption::Rebinding(500),
            ],
        );
        let lease = Lease::from_reply(&m, "eth0").unwrap();
        assert_eq!(lease.rebind_after, Duration::from_secs(100));
        assert_eq!(lease.renew_after, Duration::from_secs(90));
        assert_eq!(lease.address.prefix_len(), 8, "classful fallback for 10/8");
        assert_eq!(lease.default_route(1), None);
    }

    #[test]
    fn replies_missing_required_options_are_refused_with_the_link() {
        let no_server = ack(1, &[DhcpOption::AddressLeaseTime(100)]);
        let err = Lease::from_reply(&no_server, "eth3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("eth3") && err.contains("option 54"), "{err}");
        let no_time = ack(
            1,
            &[DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 7, 0, 1))],
        );
        assert!(
            Lease::from_reply(&no_time, "eth0")
                .unwrap_err()
                .to_string()
                .contains("option 51")
        );
        let bad_mask = ack(
            1,
            &[
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 7, 0, 1)),
                DhcpOption::AddressLeaseTime(100),
                DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)),
            ],
        );
        assert!(
            Lease::from_reply(&bad_mask, "eth0")
                .unwrap_err()
                .to_string()
                .contains("contiguous")
        );
    }

    #[test]
    fn discover_is_broadcast_with_client_id_and_parameter_list() {
        let m = decode(&encode(&discover(42, MAC))).unwrap();
        assert_eq!(m.xid(), 42);
        assert!(m.flags().broadcast());
        assert_eq!(&m.chaddr()[..6], &MAC.0);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        match m.opts().get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(id)) => {
                assert_eq!(id[..], [1, 0x52, 0x54, 0, 0x12, 0x34, 0x56])
            }
            other => panic!("{other:?}"),
        }
        match m.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(p)) => {
                assert!(p.contains(&OptionCode::Router) && p.contains(&OptionCode::InterfaceMtu))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selecting_request_names_offer_and_server_extend_request_uses_ciaddr() {
        let lease = Lease::from_reply(&full_ack(9), "eth0").unwrap();
        let sel = decode(&encode(&request_offer(9, MAC, &lease))).unwrap();
        assert_eq!(sel.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            sel.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 7, 0, 50)))
        );
        assert_eq!(
            sel.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 7, 0, 1)))
        );
        let ext = decode(&encode(&request_extend(10, MAC, &lease))).unwrap();
        assert_eq!(ext.ciaddr(), Ipv4Addr::new(10, 7, 0, 50));
        assert!(!ext.flags().broadcast());
        assert!(ext.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(ext.opts().get(OptionCode::RequestedIpAddress).is_none());
        let rel = decode(&encode(&release(11, MAC, &lease))).unwrap();
        assert_eq!(rel.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(rel.ciaddr(), Ipv4Addr::new(10, 7, 0, 50));
    }

    #[test]
    fn replies_for_other_transactions_or_clients_are_ignored() {
        let m = full_ack(5);
        assert_eq!(reply_type(&m, 5, MAC), Some(MessageType::Ack));
        assert_eq!(reply_type(&m, 6, MAC), None);
        assert_eq!(reply_type(&m, 5, Mac([0; 6])), None);
        let our_own_request = discover(5, MAC);
        assert_eq!(reply_type(&our_own_request, 5, MAC), None);
    }

    #[test]
    fn hostile_or_malformed_names_from_dhcp_are_dropped() {
        assert_eq!(
            dns_name("Worker-7.Lab.Test."),
            Some("worker-7.lab.test".into())
        );
        for bad in [
            "",
            "evil\n10.0.0.1 kubernetes",
            "two words",
            "-lead",
            "trail-",
            "a..b",
            "under_score",
            &"x".repeat(64),
        ] {
            assert_eq!(dns_name(bad), None, "{bad:?}");
        }
        let m = ack(
            1,
            &[
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 7, 0, 1)),
                DhcpOption::AddressLeaseTime(100),
                DhcpOption::Hostname("node\nnameserver 6.6.6.6".into()),
                DhcpOption::DomainName("lab.test\nsearch evil".into()),
            ],
        );
        let lease = Lease::from_reply(&m, "eth0").unwrap();
        assert_eq!((lease.hostname, lease.domain), (None, None));
    }

    #[test]
    fn backoff_doubles_from_four_seconds_and_caps_at_64() {
        let secs: Vec<u64> = (0..7).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![4, 8, 16, 32, 64, 64, 64]);
    }

    fn ipv4_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let total = (20 + 8 + payload.len()) as u16;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 7, 0, 1, 255, 255, 255, 255,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&67u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn packet_parser_extracts_udp_to_port_68_only() {
        let p = ipv4_udp(68, b"hello");
        assert_eq!(udp_payload_to_client(&p), Some(&b"hello"[..]));
        assert_eq!(udp_payload_to_client(&ipv4_udp(53, b"x")), None);
        let mut tcp = ipv4_udp(68, b"x");
        tcp[9] = 6;
        assert_eq!(udp_payload_to_client(&tcp), None);
        let mut frag = ipv4_udp(68, b"x");
        frag[6] = 0x20; // more fragments
        assert_eq!(udp_payload_to_client(&frag), None);
        assert_eq!(udp_payload_to_client(&p[..25]), None, "truncated");
        assert_eq!(udp_payload_to_client(&[]), None);
        // Ethernet padding after the IP datagram must not leak into the payload.
        let mut padded = ipv4_udp(68, b"hi");
        padded.extend_from_slice(&[0; 16]);
        assert_eq!(udp_payload_to_client(&padded), Some(&b"hi"[..]));
    }
}
