//! A small SNTP client (RFC 4330): ask the configured servers in order, take the first
//! valid answer, step or slew the clock, and re-sync periodically. Certificates and etcd
//! need a sane clock, which is why machined carries this instead of an NTP daemon.

// The sequencer starts the time sync; until it is wired in parts stay unused.
#![allow(dead_code)]

use crate::log::{info, warning};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Seconds from the NTP era 0 epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
pub const NTP_PORT: u16 = 123;
pub const PACKET_LEN: usize = 48;
/// Offsets below this are slewed with adjtime(3) so time never jumps backwards under
/// running services; larger ones are stepped, as ntpd does (its default step threshold).
pub const STEP_THRESHOLD: Duration = Duration::from_millis(128);
/// What `machine.time.servers` means when it is empty (documented by basalt-config).
pub const DEFAULT_SERVER: &str = "pool.ntp.org";

#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    #[error("resolving time server {server}: {source}")]
    Resolve {
        server: String,
        source: std::io::Error,
    },
    #[error("time server {server} resolves to no address")]
    NoAddress { server: String },
    #[error("talking to time server {server}: {source}")]
    Socket {
        server: String,
        source: std::io::Error,
    },
    #[error("time server {server} did not answer within {timeout:?}")]
    NoReply { server: String, timeout: Duration },
    #[error("time server {server} sent an unusable reply: {reason}")]
    BadReply { server: String, reason: String },
    #[error("time server {server} told us to go away (kiss-of-death {code:?})")]
    KissOfDeath { server: String, code: String },
    #[error("setting the system clock: {source}")]
    SetClock { source: nix::Error },
    #[error("no time server answered ({tried})")]
    NoServerAnswered { tried: String },
}

/// A 64-bit NTP timestamp: seconds since 1900 in the high half, fraction in the low.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    pub fn from_system(t: SystemTime) -> NtpTimestamp {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() + NTP_UNIX_OFFSET;
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        // Era wrap-around (2036) is handled by truncation, as RFC 4330 §3 prescribes.
        NtpTimestamp(((secs & 0xffff_ffff) << 32) | frac)
    }

    /// Nanoseconds since the Unix epoch, assuming era 1 after 2036 when the seconds
    /// field has wrapped (RFC 4330 §3: values with the top bit clear are era 1).
    pub fn unix_nanos(self) -> i128 {
        let secs = self.0 >> 32;
        let secs = if secs & 0x8000_0000 == 0 {
            secs + (1 << 32)
        } else {
            secs
        };
        let frac = self.0 & 0xffff_ffff;
        (i128::from(secs) - i128::from(NTP_UNIX_OFFSET)) * 1_000_000_000
            + ((i128::from(frac) * 1_000_000_000) >> 32)
    }
}

/// A client request: LI 0, version 4, mode 3 (client); the transmit timestamp is echoed
/// back as the originate timestamp, which is how we match the reply.
pub fn encode_request(transmit: NtpTimestamp) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = (4 << 3) | 3;
    p[40..48].copy_from_slice(&transmit.0.to_be_bytes());
    p
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub leap: u8,
    pub version: u8,
    pub mode: u8,
    pub stratum: u8,
    pub reference_id: [u8; 4],
    pub originate: NtpTimestamp,
    pub receive: NtpTimestamp,
    pub transmit: NtpTimestamp,
}

/// Why a reply was refused; turned into [`TimeError`] with the server's name.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyProblem {
    Bad(String),
    KissOfDeath(String),
}

/// Parses and checks a server reply against the request we sent (RFC 4330 §5).
pub fn decode_reply(buf: &[u8], sent: NtpTimestamp) -> Result<Reply, ReplyProblem> {
    if buf.len() < PACKET_LEN {
        return Err(ReplyProblem::Bad(format!("{} bytes, need 48", buf.len())));
    }
    let ts = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[at..at + 8]);
        NtpTimestamp(u64::from_be_bytes(b))
    };
    let r = Reply {
        leap: buf[0] >> 6,
        version: (buf[0] >> 3) & 7,
        mode: buf[0] & 7,
        stratum: buf[1],
        reference_id: [buf[12], buf[13], buf[14], buf[15]],
        originate: ts(24),
        receive: ts(32),
        transmit: ts(40),
    };
    if r.mode != 4 {
        return Err(ReplyProblem::Bad(format!(
            "mode {} is not a server reply",
            r.mode
        )));
    }
    if !(1..=4).contains(&r.version) {
        return Err(ReplyProblem::Bad(format!(
            "unknown NTP version {}",
            r.version
        )));
    }
    if r.stratum == 0 {
        let code = String::from_utf8_lossy(&r.reference_id).into_owned();
        return Err(ReplyProblem::KissOfDeath(code));
    }
    if r.leap == 3 {
        return Err(ReplyProblem::Bad(
            "server clock is not synchronised (LI=3)".into(),
        ));
    }
    if r.originate != sent {
        return Err(ReplyProblem::Bad(
            "originate timestamp does not match our request".into(),
        ));
    }
    if r.transmit.0 == 0 || r.receive.0 == 0 {
        return Err(ReplyProblem::Bad("zero timestamp".into()));
    }
    Ok(r)
}

/// Clock offset and round-trip delay from the four timestamps (RFC 4330 §5):
/// t1 sent, t2 server received, t3 server sent, t4 received; all in Unix nanoseconds.
pub fn offset_and_delay(t1: i128, t2: i128, t3: i128, t4: i128) -> (i128, i128) {
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    let delay = (t4 - t1) - (t3 - t2);
    (offset, delay)
}

/// One successful exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub server: String,
    pub address: SocketAddr,
    /// How far the local clock is behind the server (positive: we are slow).
    pub offset_nanos: i128,
    pub delay_nanos: i128,
    pub stratum: u8,
}

/// `host`, `ip`, `host:port` or `[v6]:port` → addresses to try.
async fn resolve(server: &str) -> Result<Vec<SocketAddr>, TimeError> {
    if let Ok(sa) = server.parse::<SocketAddr>() {
        return Ok(vec![sa]);
    }
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, NTP_PORT)]);
    }
    let target = if server.contains(':') {
        server.to_owned()
    } else {
        format!("{server}:{NTP_PORT}")
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .map_err(|source| TimeError::Resolve {
            server: server.to_owned(),
            source,
        })?
        .collect();
    if addrs.is_empty() {
        return Err(TimeError::NoAddress {
            server: server.to_owned(),
        });
    }
    Ok(addrs)
}

/// Asks one server once.
pub async fn query(server: &str, timeout: Duration) -> Result<Sample, TimeError> {
    let addr = resolve(server).await?[0];
    let sock_err = |source| TimeError::Socket {
        server: server.to_owned(),
        source,
    };
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| TimeError::NoAddress {
            server: server.to_owned(),
        })?
    } else {
        "[::]:0".parse().map_err(|_| TimeError::NoAddress {
            server: server.to_owned(),
        })?
    };
    let sock = UdpSocket::bind(bind).await.map_err(sock_err)?;
    // connect() makes the kernel drop datagrams from anyone but the server.
    sock.connect(addr).await.map_err(sock_err)?;
    let sent_at = SystemTime::now();
    let sent = NtpTimestamp::from_system(sent_at);
    sock.send(&encode_request(sent)).await.map_err(sock_err)?;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Err(_) => {
                return Err(TimeError::NoReply {
                    server: server.to_owned(),
                    timeout,
                });
            }
            Ok(r) => r.map_err(sock_err)?,
        };
        let received_at = SystemTime::now();
        let reply = match decode_reply(&buf[..n], sent) {
            Ok(r) => r,
            // A stale or spoofed answer: keep waiting for ours.
            Err(ReplyProblem::Bad(reason)) if reason.contains("originate") => continue,
            Err(ReplyProblem::Bad(reason)) => {
                return Err(TimeError::BadReply {
                    server: server.to_owned(),
                    reason,
                });
            }
            Err(ReplyProblem::KissOfDeath(code)) => {
                return Err(TimeError::KissOfDeath {
                    server: server.to_owned(),
                    code,
                });
            }
        };
        let nanos = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as i128)
                .unwrap_or_default()
        };
        let (offset, delay) = offset_and_delay(
            nanos(sent_at),
            reply.receive.unix_nanos(),
            reply.transmit.unix_nanos(),
            nanos(received_at),
        );
        return Ok(Sample {
            server: server.to_owned(),
            address: addr,
            offset_nanos: offset,
            delay_nanos: delay,
            stratum: reply.stratum,
        });
    }
}

/// Tries the servers in order and returns the first answer.
pub async fn first_answer(servers: &[String], timeout: Duration) -> Result<Sample, TimeError> {
    let mut tried = Vec::new();
    for server in servers {
        match query(server, timeout).await {
            Ok(s) => return Ok(s),
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(TimeError::NoServerAnswered {
        tried: if tried.is_empty() {
            "no servers configured".into()
        } else {
            tried.join("; ")
        },
    })
}

/// Applies an offset: slew small ones, step large ones.
pub fn correct_clock(offset_nanos: i128) -> Result<(), TimeError> {
    if offset_nanos.unsigned_abs() < STEP_THRESHOLD.as_nanos() {
        let delta = libc::timeval {
            tv_sec: (offset_nanos / 1_000_000_000) as libc::time_t,
            tv_usec: ((offset_nanos % 1_000_000_000) / 1000) as libc::suseconds_t,
        };
        // SAFETY: adjtime reads a valid timeval and accepts NULL for the old delta.
        let rc = unsafe { libc::adjtime(&delta, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(TimeError::SetClock {
                source: nix::Error::last(),
            });
        }
        return Ok(());
    }
    use nix::time::{ClockId, clock_gettime, clock_settime};
    let now =
        clock_gettime(ClockId::CLOCK_REALTIME).map_err(|source| TimeError::SetClock { source })?;
    let now_ns = i128::from(now.tv_sec()) * 1_000_000_000 + i128::from(now.tv_nsec());
    let target = now_ns + offset_nanos;
    let ts = nix::sys::time::TimeSpec::new(
        (target.div_euclid(1_000_000_000)) as libc::time_t,
        (target.rem_euclid(1_000_000_000)) as libc::c_long,
    );
    clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(|source| TimeError::SetClock { source })
}

/// The configured servers, or the documented default when none are.
pub fn servers_from_config(time: &basalt_config::TimeSpec) -> Vec<String> {
    if time.servers.is_empty() {
        vec![DEFAULT_SERVER.to_owned()]
    } else {
        time.servers.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimeStatus {
    pub servers: Vec<String>,
    pub last_sample: Option<Sample>,
    pub last_sync: Option<SystemTime>,
    pub last_error: Option<String>,
    pub synced: bool,
}

#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub servers: Vec<String>,
    pub interval: Duration,
    /// Retry interval while no server answered yet.
    pub retry: Duration,
    pub timeout: Duration,
    /// Off in tests: they must not move the host's clock.
    pub set_clock: bool,
}

impl SyncOptions {
    pub fn new(servers: Vec<String>) -> SyncOptions {
        SyncOptions {
            servers,
            interval: Duration::from_secs(1024),
            retry: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            set_clock: true,
        }
    }
}

/// The background time sync; its status is read-only for everyone else.
pub struct TimeSync {
    status: Arc<RwLock<TimeStatus>>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl TimeSync {
    pub fn status(&self) -> TimeStatus {
        match self.status.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Starts syncing in the background and returns at once: a missing time server never
/// holds up boot. With no servers it logs and does nothing.
pub fn spawn(options: SyncOptions) -> TimeSync {
    let status = Arc::new(RwLock::new(TimeStatus {
        servers: options.servers.clone(),
        ..TimeStatus::default()
    }));
    let (shutdown, mut rx) = watch::channel(false);
    if options.servers.is_empty() {
        info!("time: no time servers configured; clock left as the firmware set it");
        return TimeSync {
            status,
            shutdown,
            task: None,
        };
    }
    let st = status.clone();
    let task = tokio::spawn(async move {
        loop {
            let result = first_answer(&options.servers, options.timeout).await;
            let wait = {
                let mut g = match st.write() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                match result {
                    Ok(sample) => {
                        let applied = if options.set_clock {
                            correct_clock(sample.offset_nanos)
                        } else {
                            Ok(())
                        };
                        match applied {
                            Ok(()) => {
                                if !g.synced {
                                    info!(
                                        "time: synced with {} (offset {} ms)",
                                        sample.server,
                                        sample.offset_nanos / 1_000_000
                                    );
                                }
                                g.synced = true;
                                g.last_sync = Some(SystemTime::now());
                                g.last_error = None;
                                g.last_sample = Some(sample);
                                options.interval
                            }
                            Err(e) => {
                                warning!("time: {e}");
                                g.last_error = Some(e.to_string());
                                options.retry
                            }
                        }
                    }
                    Err(e) => {
                        warning!("time: {e}");
                        g.last_error = Some(e.to_string());
                        options.retry
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = rx.changed() => return,
            }
        }
    });
    TimeSync {
        status,
        shutdown,
        task: Some(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_ntp_format() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let n = NtpTimestamp::from_system(t);
        assert_eq!(n.0 >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        let back = n.unix_nanos();
        let want = 1_700_000_000_123_456_789i128;
        assert!((back - want).abs() <= 1, "{back} vs {want}");
    }

    #[test]
    fn timestamps_after_the_2036_era_wrap_decode_into_era_one() {
        // 2040-01-01 is past 2036-02-07, where the 32-bit seconds field wraps.
        let t = UNIX_EPOCH + Duration::from_secs(2_208_988_800);
        let n = NtpTimestamp::from_system(t);
        assert!(n.0 >> 32 < 0x8000_0000, "wrapped");
        assert_eq!(n.unix_nanos(), 2_208_988_800 * 1_000_000_000);
    }

    #[test]
    fn request_is_version_4_client_mode_with_our_transmit_time() {
        let p = encode_request(NtpTimestamp(0x0102_0304_0506_0708));
        assert_eq!(p[0], 0b00_100_011);
        assert!(p[1..40].iter().all(|b| *b == 0));
        assert_eq!(&p[40..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    fn reply(sent: NtpTimestamp) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = (4 << 3) | 4;
        p[1] = 2;
        p[12..16].copy_from_slice(b"GPS\0");
        p[24..32].copy_from_slice(&sent.0.to_be_bytes());
        p[32..40].copy_from_slice(&(sent.0 + (1 << 32)).to_be_bytes());
        p[40..48].copy_from_slice(&(sent.0 + (1 << 32) + 1).to_be_bytes());
        p
    }

    #[test]
    fn valid_reply_decodes() {
        let sent = NtpTimestamp(0xE000_0000_0000_0000);
        let r = decode_reply(&reply(sent), sent).unwrap();
        assert_eq!((r.mode, r.version, r.stratum), (4, 4, 2));
        assert_eq!(r.originate, sent);
        assert_eq!(r.receive.0, sent.0 + (1 << 32));
    }

    #[test]
    fn invalid_replies_are_refused_with_a_reason() {
        let sent = NtpTimestamp(0xE000_0000_0000_0000);
        let bad = |f: &dyn Fn(&mut [u8; 48])| {
            let mut p = reply(sent);
            f(&mut p);
            decode_reply(&p, sent).unwrap_err()
        };
        assert!(
            matches!(decode_reply(&[0; 47], sent), Err(ReplyProblem::Bad(r)) if r.contains("47"))
        );
        assert!(
            matches!(bad(&|p| p[0] = (4 << 3) | 3), ReplyProblem::Bad(r) if r.contains("mode 3"))
        );
        assert!(
            matches!(bad(&|p| p[0] = (7 << 3) | 4), ReplyProblem::Bad(r) if r.contains("version"))
        );
        assert!(matches!(bad(&|p| p[0] |= 0xC0), ReplyProblem::Bad(r) if r.contains("LI=3")));
        assert!(matches!(bad(&|p| p[31] ^= 1), ReplyProblem::Bad(r) if r.contains("originate")));
        assert!(matches!(bad(&|p| p[40..48].fill(0)), ReplyProblem::Bad(r) if r.contains("zero")));
        assert_eq!(
            bad(&|p| {
                p[1] = 0;
                p[12..16].copy_from_slice(b"RATE");
            }),
            ReplyProblem::KissOfDeath("RATE".into())
        );
    }

    #[test]
    fn offset_and_delay_follow_rfc_4330() {
        // Server 5 s ahead, 100 ms each way, 10 ms processing.
        let s = 1_000_000_000i128;
        let t1 = 0;
        let t2 = 5 * s + 100_000_000;
        let t3 = t2 + 10_000_000;
        let t4 = 210_000_000;
        let (offset, delay) = offset_and_delay(t1, t2, t3, t4);
        assert_eq!(offset, 5 * s);
        assert_eq!(delay, 200_000_000);
    }

    /// A one-shot SNTP server on loopback whose clock runs `skew` ahead of ours.
    fn fake_server(
        skew: Duration,
        kiss: bool,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 48];
            let (_, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!(buf[0] & 7, 3, "client mode");
            let now = NtpTimestamp::from_system(SystemTime::now() + skew);
            let mut p = [0u8; 48];
            p[0] = (4 << 3) | 4;
            p[1] = if kiss { 0 } else { 1 };
            p[12..16].copy_from_slice(if kiss { b"DENY" } else { b"LOCL" });
            p[24..32].copy_from_slice(&buf[40..48]);
            p[32..40].copy_from_slice(&now.0.to_be_bytes());
            p[40..48].copy_from_slice(&now.0.to_be_bytes());
            // A stray datagram with the wrong originate must be ignored, not believed.
            let mut stray = p;
            stray[24] ^= 0xff;
            sock.send_to(&stray, from).unwrap();
            sock.send_to(&p, from).unwrap();
        });
        (addr, h)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn query_measures_the_offset_of_a_real_udp_server() {
        let (addr, h) = fake_server(Duration::from_secs(5), false);
        let sample = query(&addr.to_string(), Duration::from_secs(5))
            .await
            .unwrap();
        h.join().unwrap();
        let off = sample.offset_nanos;
        assert!((off - 5_000_000_000).abs() < 200_000_000, "offset {off}");
        assert_eq!(sample.stratum, 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn first_answer_skips_dead_servers_and_reports_kiss_of_death() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (addr, h) = fake_server(Duration::ZERO, false);
        let servers = vec![silent.local_addr().unwrap().to_string(), addr.to_string()];
        let s = first_answer(&servers, Duration::from_millis(300))
            .await
            .unwrap();
        h.join().unwrap();
        assert_eq!(s.address, addr);

        let (addr, h) = fake_server(Duration::ZERO, true);
        let err = first_answer(&[addr.to_string()], Duration::from_secs(2))
            .await
            .unwrap_err();
        h.join().unwrap();
        assert!(err.to_string().contains("DENY"), "{err}");

        let err = first_answer(&[], Duration::from_secs(1)).await.unwrap_err();
        assert!(err.to_string().contains("no servers configured"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn background_sync_records_status_without_touching_the_clock() {
        let (addr, h) = fake_server(Duration::from_secs(2), false);
        let mut o = SyncOptions::new(vec![addr.to_string()]);
        o.set_clock = false;
        let sync = spawn(o);
        for _ in 0..50 {
            if sync.status().synced {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.join().unwrap();
        let st = sync.status();
        assert!(st.synced, "{st:?}");
        assert!(st.last_sample.unwrap().offset_nanos > 1_500_000_000);
        sync.stop().await;

        let none = spawn(SyncOptions::new(vec![]));
        assert!(!none.status().synced);
        none.stop().await;
    }

    #[test]
    fn empty_config_means_the_documented_default_server() {
        let t = basalt_config::TimeSpec::default();
        assert_eq!(servers_from_config(&t), vec![DEFAULT_SERVER.to_owned()]);
    }
}
