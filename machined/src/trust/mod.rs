//! trustd: how a worker gets an API serving certificate clients can verify (Talos'
//! trustd, docs/pki.md "Worker certificates").
//!
//! A worker carries the API CA's certificate but not its key, so it cannot issue its own
//! server certificate. A control plane can: it runs `trustd` on port 50001 (server-side
//! TLS with its own API certificate, no client certificate), and signs a certificate
//! signing request when it comes with the cluster's machine token (`machine.token`). The
//! signing policy is `basalt_config::pki::sign_server_csr`: a bounded serverAuth leaf for
//! the names in the request, nothing else.
//!
//! The worker boots with an interim self-signed certificate, asks in the background
//! (forever, with back-off) and swaps the signed certificate into its running API server
//! ([`ServerIdentity::replace`]); it asks again before the certificate expires.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use basalt_api::{
    ErrorBody, TRUST_CERTIFICATE_PATH, TRUST_PORT, TrustCertificateRequest,
    TrustCertificateResponse,
};
use basalt_config::pki::{self, CertAndKey, PkiError};
use basalt_config::{MachineConfig, MachineType};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::api::ServerIdentity;
use crate::log::{info, warning};

/// The largest request body trustd reads: a CSR (bounded by the policy) and a token.
const MAX_REQUEST_BYTES: usize = pki::MAX_CSR_PEM_BYTES + 1024;
/// The largest answer a worker reads: a certificate and the CA.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Connections trustd serves at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 16;
/// A peer that does not finish TLS, or a request, in this time is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Signing requests accepted in a burst, then [`RATE_PER_SECOND`]: a reboot of every
/// worker at once is served within a minute; a token-guessing loop gets 429s.
const RATE_BURST: f64 = 20.0;
const RATE_PER_SECOND: f64 = 2.0;
/// A wrong token is answered this late, so guessing is slow even within the rate.
const BAD_TOKEN_DELAY: Duration = Duration::from_secs(1);
/// A worker's retry back-off: first wait, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Everything trustd and its clients can fail at.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("setting up trustd's TLS identity: {reason}")]
    Identity { reason: String },
    #[error("trustd listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "machine.token is not set: this worker cannot ask a control plane for an API certificate and keeps serving a self-signed one (set machine.token to the cluster's, as `basaltctl gen config` does)"
    )]
    NoToken,
    #[error("machine.token is redacted; a redacted config cannot authorise a certificate request")]
    RedactedToken,
    #[error("building the certificate request: {0}")]
    Request(#[source] PkiError),
    #[error("connecting to trustd at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("talking to trustd at {addr}: {reason}")]
    Http { addr: String, reason: String },
    #[error("trustd at {addr} refused the request ({status}): {message}")]
    Refused {
        addr: String,
        status: u16,
        message: String,
    },
    #[error("the certificate trustd at {addr} returned is unusable: {reason}")]
    Certificate { addr: String, reason: String },
}

/// Whether `given` is the machine token, in time that does not depend on where the two
/// differ: both are hashed first, so lengths do not leak either.
pub fn token_matches(expected: &str, given: &str) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(given.as_bytes());
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Why a request was not signed, and the HTTP status that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no or a wrong machine token.
    BadToken,
    /// 400: the body or the CSR cannot be read.
    Unreadable(String),
    /// 403: the CSR asks for something the policy does not sign.
    Policy(String),
    /// 500: the CA itself is unusable (a broken config on this control plane).
    Internal(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::BadToken => StatusCode::UNAUTHORIZED,
            Refusal::Unreadable(_) => StatusCode::BAD_REQUEST,
            Refusal::Policy(_) => StatusCode::FORBIDDEN,
            Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::BadToken => "the machine token is wrong".to_owned(),
            Refusal::Unreadable(m) | Refusal::Policy(m) | Refusal::Internal(m) => m.clone(),
        }
    }
}

/// The control plane's signing decision: the API CA and the token that authorises.
pub struct Signer {
    ca: CertAndKey,
    token: String,
    /// Names no node certificate may claim: the cluster endpoint's host.
    reserved: Vec<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(ca: CertAndKey, token: String, reserved: Vec<String>) -> Self {
        Self {
            ca,
            token,
            reserved,
        }
    }

    /// Checks the token, then signs the CSR under the policy of
    /// [`pki::sign_server_csr`].
    pub fn sign(
        &self,
        request: &TrustCertificateRequest,
    ) -> Result<TrustCertificateResponse, Refusal> {
        if !token_matches(&self.token, &request.token) {
            return Err(Refusal::BadToken);
        }
        match pki::sign_server_csr(&self.ca, &request.csr, &self.reserved) {
            Ok(certificate) => Ok(TrustCertificateResponse {
                certificate,
                ca: self.ca.cert_pem.clone(),
            }),
            Err(e @ PkiError::CsrRefused { .. }) => Err(Refusal::Policy(e.to_string())),
            Err(e @ PkiError::CsrUnreadable { .. }) => Err(Refusal::Unreadable(e.to_string())),
            Err(e) => Err(Refusal::Internal(e.to_string())),
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    last: Instant,
    burst: f64,
    per_second: f64,
}

impl RateLimit {
    pub fn new(burst: f64, per_second: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
            burst,
            per_second,
        }
    }

    /// Takes one request's token at `now`; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where and with what trustd runs. [`TrustdConfig::node`] is what a control plane uses.
#[derive(Debug, Clone)]
pub struct TrustdConfig {
    pub listen: SocketAddr,
    /// The TLS identity trustd serves: the control plane's API certificate.
    pub identity: ServerIdentity,
    pub signer: Arc<Signer>,
}

impl TrustdConfig {
    /// A control plane's trustd: port 50001 on every address, signing with `machine.ca`
    /// for holders of `machine.token`. None on a worker, or when the config has no
    /// usable token or CA key (nothing to authorise with or to sign with).
    pub fn node(config: &MachineConfig, identity: ServerIdentity) -> Option<Self> {
        if config.machine.machine_type != MachineType::Controlplane {
            return None;
        }
        let token = config.machine.token.as_ref().filter(|t| !t.is_redacted())?;
        let key = config
            .machine
            .ca
            .key
            .as_ref()
            .filter(|k| !k.is_redacted())?;
        Some(Self {
            listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, TRUST_PORT)),
            identity,
            signer: Arc::new(Signer::new(
                CertAndKey {
                    cert_pem: config.machine.ca.crt.as_str().to_owned(),
                    key_pem: key.as_str().to_owned(),
                },
                token.to_string(),
                reserved_names(&config.cluster.control_plane.endpoint),
            )),
        })
    }
}

/// The names trustd refuses to sign: the cluster endpoint's host (the control planes'
/// name, often a VIP). A loopback endpoint reserves nothing: every node is its own
/// loopback, and node certificates carry it for port forwards.
fn reserved_names(endpoint: &basalt_config::Endpoint) -> Vec<String> {
    match endpoint.ip() {
        Some(ip) if ip.is_loopback() => Vec::new(),
        Some(ip) => vec![ip.to_string()],
        None if endpoint.host().eq_ignore_ascii_case("localhost") => Vec::new(),
        None => vec![endpoint.host().to_ascii_lowercase()],
    }
}

/// A started trustd; [`RunningTrustd::stop`] ends it.
pub struct RunningTrustd {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningTrustd {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

struct Shared {
    signer: Arc<Signer>,
    rate: Mutex<RateLimit>,
}

/// Binds trustd's listener and serves in a background task.
pub async fn start(config: TrustdConfig) -> Result<RunningTrustd, TrustError> {
    let tls = config
        .identity
        .trust_server_config()
        .map_err(|e| TrustError::Identity {
            reason: e.to_string(),
        })?;
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        // A kernel without IPv6: the IPv4 wildcard, as the API does.
        Err(e)
            if config.listen.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, config.listen.port()));
            TcpListener::bind(v4)
                .await
                .map_err(|source| TrustError::Bind { addr: v4, source })?
        }
        Err(source) => {
            return Err(TrustError::Bind {
                addr: config.listen,
                source,
            });
        }
    };
    let local_addr = listener.local_addr().map_err(|source| TrustError::Bind {
        addr: config.listen,
        source,
    })?;
    let shared = Arc::new(Shared {
        signer: config.signer,
        rate: Mutex::new(RateLimit::new(RATE_BURST, RATE_PER_SECOND, Instant::now())),
    });
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let task = tokio::spawn(accept_loop(listener, acceptor, shared));
    Ok(RunningTrustd { local_addr, task })
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let serve = move |tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
                      peer: std::net::SocketAddr| {
        let shared = shared.clone();
        async move {
            // On the dual-stack listener an IPv4 peer is ::ffff:a.b.c.d; log it as a.b.c.d.
            let peer = peer.ip().to_canonical();
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, peer, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(IO_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    };
    crate::api::accept_tls(
        listener,
        acceptor,
        MAX_CONNECTIONS,
        IO_TIMEOUT,
        "trustd",
        serve,
    )
    .await;
}

fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"serialising the answer: {e}\"}}").into_bytes());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorBody {
            error: message.into(),
            validation_errors: Vec::new(),
        },
    )
}

async fn handle(shared: &Shared, peer: IpAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != TRUST_CERTIFICATE_PATH {
        return error(
            StatusCode::NOT_FOUND,
            format!("trustd serves only POST {TRUST_CERTIFICATE_PATH}"),
        );
    }
    if req.method() != hyper::Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{TRUST_CERTIFICATE_PATH} takes POST"),
        );
    }
    let allowed = shared
        .rate
        .lock()
        .map(|mut r| r.take(Instant::now()))
        .unwrap_or(false);
    if !allowed {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many certificate requests; retry in a few seconds",
        );
    }
    let body = match tokio::time::timeout(
        IO_TIMEOUT,
        Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a certificate request is at most {MAX_REQUEST_BYTES} bytes"),
            );
        }
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("reading the request: {e}")),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body came too slowly",
            );
        }
    };
    let request: TrustCertificateRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not a certificate request ({{\"csr\", \"token\"}}): {e}"),
            );
        }
    };
    // Signing is CPU work (one ECDSA signature): off the async threads.
    let signer = shared.signer.clone();
    let signed = tokio::task::spawn_blocking(move || signer.sign(&request))
        .await
        .unwrap_or_else(|e| Err(Refusal::Internal(format!("the signing task failed: {e}"))));
    match signed {
        Ok(answer) => {
            let names = pki::check_certificate_pem(&answer.certificate)
                .map(|i| {
                    let mut names = i.dns_names;
                    names.extend(i.ip_addresses.iter().map(IpAddr::to_string));
                    names.join(", ")
                })
                .unwrap_or_default();
            info!(
                "trustd: signed an API server certificate for {} requested from {} (names: {names})",
                pki::check_certificate_pem(&answer.certificate)
                    .map(|i| i.subject_name())
                    .unwrap_or_default(),
                peer
            );
            json(StatusCode::OK, &answer)
        }
        Err(refusal) => {
            warning!(
                "trustd: refused a certificate request from {}: {}",
                peer,
                refusal.message()
            );
            if refusal == Refusal::BadToken {
                tokio::time::sleep(BAD_TOKEN_DELAY).await;
            }
            error(refusal.status(), refusal.message())
        }
    }
}

/// A worker's request for its API certificate: where trustd is, the CA to verify it
/// with, the token, and the names to ask for.
#[derive(Clone)]
pub struct Requester {
    /// trustd's host: the cluster endpoint's host.
    pub host: String,
    pub port: u16,
    pub api_ca_pem: String,
    token: String,
    pub common_name: String,
    pub sans: Vec<String>,
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("common_name", &self.common_name)
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

/// A signed certificate and the key it was requested for, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Seconds since the epoch the certificate stops being valid.
    pub not_after: i64,
}

impl Requester {
    /// A worker's request from its config: trustd at the host of
    /// `cluster.controlPlane.endpoint`, port 50001, verified against `machine.ca.crt`;
    /// names from [`ServerIdentity::sans_for`]. Fails when the config has no usable token.
    pub fn for_worker(
        config: &MachineConfig,
        hostname: &str,
        addresses: &[IpAddr],
    ) -> Result<Self, TrustError> {
        let token = config.machine.token.as_ref().ok_or(TrustError::NoToken)?;
        if token.is_redacted() {
            return Err(TrustError::RedactedToken);
        }
        Ok(Self {
            host: config.cluster.control_plane.endpoint.host().to_owned(),
            port: TRUST_PORT,
            api_ca_pem: config.machine.ca.crt.as_str().to_owned(),
            token: token.to_string(),
            common_name: hostname.to_owned(),
            // trustd refuses the endpoint's host: asking for it would fail forever.
            sans: {
                let reserved = reserved_names(&config.cluster.control_plane.endpoint);
                ServerIdentity::sans_for(config, hostname, addresses)
                    .into_iter()
                    .filter(|san| !reserved.iter().any(|r| r.eq_ignore_ascii_case(san)))
                    .collect()
            },
        })
    }

    /// Overrides the token (tests).
    #[cfg(test)]
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = token.to_owned();
        self
    }

    fn addr(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    /// One attempt: a fresh P-256 key, a CSR for the names, POSTed with the token over
    /// TLS verified against the API CA; the answer checked against the key.
    pub async fn request_once(&self) -> Result<Issued, TrustError> {
        let addr = self.addr();
        let key_pem = pki::generate_key_pem().map_err(TrustError::Request)?;
        let csr = pki::server_csr(&key_pem, &self.common_name, &self.sans)
            .map_err(TrustError::Request)?;
        let body = serde_json::to_vec(&TrustCertificateRequest {
            csr,
            token: self.token.clone(),
        })
        .map_err(|e| TrustError::Http {
            addr: addr.clone(),
            reason: format!("encoding the request: {e}"),
        })?;
        let answer =
            tokio::time::timeout(Duration::from_secs(30), self.post(&addr, Bytes::from(body)))
                .await
                .map_err(|_| TrustError::Http {
                    addr: addr.clone(),
                    reason: "no answer within 30 s".to_owned(),
                })??;
        let unusable = |reason: String| TrustError::Certificate {
            addr: addr.clone(),
            reason,
        };
        pki::check_key_pair(&answer.certificate, &key_pem).map_err(|e| unusable(e.to_string()))?;
        let info =
            pki::check_certificate_pem(&answer.certificate).map_err(|e| unusable(e.to_string()))?;
        if info.is_ca {
            return Err(unusable("it is a certificate authority".to_owned()));
        }
        Ok(Issued {
            cert_pem: answer.certificate,
            key_pem,
            not_after: info.not_after.unix_timestamp(),
        })
    }

    async fn post(&self, addr: &str, body: Bytes) -> Result<TrustCertificateResponse, TrustError> {
        let connect = |reason: String| TrustError::Connect {
            addr: addr.to_owned(),
            reason,
        };
        let http = |reason: String| TrustError::Http {
            addr: addr.to_owned(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.api_ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| connect(format!("machine.ca.crt: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| connect(format!("machine.ca.crt: {e}")))?;
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| connect(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = match self.host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(self.host.clone())
                .map_err(|e| connect(format!("{:?} is not a server name: {e}", self.host)))?,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let stream = TlsConnector::from(Arc::new(tls))
            .connect(server_name, tcp)
            .await
            .map_err(|e| connect(format!("TLS (verified against machine.ca.crt): {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let request = Request::post(TRUST_CERTIFICATE_PATH)
            .header(hyper::header::HOST, addr)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| http(format!("reading the answer: {e}")))?
            .to_bytes();
        conn.abort();
        if status != StatusCode::OK {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(TrustError::Refused {
                addr: addr.to_owned(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| http(format!("the answer: {e}")))
    }
}

/// When to ask again for a certificate valid until `not_after` (epoch seconds): after
/// two thirds of what is left, at least a minute from `now`.
pub fn renew_after(not_after: i64, now: i64) -> Duration {
    let left = (not_after - now).max(0) as u64;
    Duration::from_secs((left * 2 / 3).max(60))
}

/// The wait before retry number `attempt` (1-based): doubling from 2 s, at most 60 s.
pub fn retry_delay(attempt: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

fn now_epoch() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Asks trustd for the worker's certificate until it gets one, swaps it into `identity`
/// (every server built from it serves it from the next handshake), then asks again
/// before it expires. Never returns; the boot does not wait for it.
pub fn spawn_requester(requester: Requester, identity: ServerIdentity) -> JoinHandle<()> {
    tokio::spawn(async move {
        info!(
            "trustd: asking the control plane at {} for this worker's API certificate (names: {})",
            requester.addr(),
            requester.sans.join(", ")
        );
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match requester.request_once().await {
                Ok(issued) => match identity.replace(&issued.cert_pem, &issued.key_pem) {
                    Ok(()) => {
                        let fingerprint = identity
                            .fingerprint()
                            .map(|f| f.to_string())
                            .unwrap_or_default();
                        info!(
                            "trustd: the API now serves the certificate signed by the control plane at {} ({fingerprint}); clients verify it against the API CA",
                            requester.addr()
                        );
                        attempt = 0;
                        tokio::time::sleep(renew_after(issued.not_after, now_epoch())).await;
                        continue;
                    }
                    Err(e) => warning!("trustd: the signed certificate cannot be served: {e}"),
                },
                Err(e) => {
                    warning!(
                        "trustd: attempt {attempt}: {e}; serving the self-signed certificate meanwhile, retrying in {} s",
                        retry_delay(attempt).as_secs()
                    );
                }
            }
            tokio::time::sleep(retry_delay(attempt)).await;
        }
    })
}

#[cfg(test)]
mod tests;
