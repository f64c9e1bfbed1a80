//! The node API server: HTTPS + JSON on port 50000 (DESIGN.md, "The node API").
//!
//! On a configured node every client presents a certificate issued by the API CA; the
//! TLS layer refuses anyone else before HTTP is spoken. The role is read from the
//! certificate's subject Organization and checked against the route table in
//! `basalt_api::ENDPOINTS`. In maintenance mode the server has a fresh self-signed
//! certificate (its fingerprint goes to the console), asks for no client certificate, and
//! serves only `GET /v1/version` and `POST /v1/config`.
//!
//! The API owns no state: it reads through [`NodeState`] and hands validated configs to the
//! sequencer through the [`ConfigSink`] channel.

// machined's main wires the server in once the sequencer exists; until then the public
// surface below is only exercised by the tests.
#![allow(dead_code, unused_imports)]

mod body;
mod files;
mod kmsg;
mod provider;
mod sysfs;
#[cfg(test)]
mod tests;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use basalt_api::{
    ActionAccepted, ApplyConfigRequest, ApplyMode, ConfigDocument, Endpoint, ErrorBody,
    Fingerprint, Method, Role, RouteMatch, ServiceAction, ValidationError, VersionInfo,
};
use basalt_config::MachineConfig;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use body::ApiBody;
pub use files::FilesError;
pub use provider::{
    ApplyCommand, ConfigSink, Feed, NodeState, NothingWired, ProviderError, ValidatedApply,
    config_channel,
};
pub use tls::ServerIdentity;

/// The port the API listens on (DESIGN.md).
pub const API_PORT: u16 = 50000;
/// The largest request body accepted: a machine config with inline files and PKI fits.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// A client that does not finish its TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that does not send a request's headers in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the listen backlog. Each costs a TLS session
/// and buffers, and machined's memory budget is small.
const MAX_CONNECTIONS: usize = 64;

/// Everything that can keep the API from starting.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("setting up the API server's TLS identity: {reason}")]
    Identity { reason: String },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Which server the node runs.
#[derive(Debug, Clone)]
pub enum ApiMode {
    /// A configured node: mutual TLS against the API CA, every endpoint by role.
    Configured(ServerIdentity),
    /// No config yet: self-signed certificate, no client certificates, apply only.
    Maintenance,
}

/// Where and how the server runs. [`ApiConfig::node`] is what a real node uses; tests
/// point `listen`, `files_root` and `kmsg_path` elsewhere.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub mode: ApiMode,
    /// The directory /var and /etc are read from ("/" on a node).
    pub files_root: PathBuf,
    /// The kernel log device ("/dev/kmsg" on a node).
    pub kmsg_path: PathBuf,
    /// Where this node runs: decides which configs validate (see `basalt_config::Mode`).
    pub platform: basalt_config::Mode,
    /// The kernel's block device directory ("/sys/block" on a node).
    pub sys_block: PathBuf,
}

impl ApiConfig {
    /// The node's settings: every address (IPv6 and, dual-stack, IPv4; IPv4 alone when the
    /// kernel has no IPv6), port 50000, the real /var, /etc, /dev/kmsg and /sys/block.
    pub fn node(mode: ApiMode, platform: basalt_config::Mode) -> Self {
        Self {
            listen: SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, API_PORT)),
            mode,
            files_root: PathBuf::from("/"),
            kmsg_path: PathBuf::from("/dev/kmsg"),
            platform,
            sys_block: PathBuf::from("/sys/block"),
        }
    }
}

/// A started server. Dropping it leaves the server running; [`RunningApi::stop`] ends it.
pub struct RunningApi {
    local_addr: SocketAddr,
    fingerprint: Option<Fingerprint>,
    task: JoinHandle<()>,
}

impl RunningApi {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The maintenance certificate's fingerprint; `None` on a configured node.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// Stops accepting connections (open ones end with their task).
    pub fn stop(self) {
        self.task.abort();
    }
}

struct Shared {
    node: Arc<dyn NodeState>,
    sink: ConfigSink,
    files_root: PathBuf,
    kmsg_path: PathBuf,
    platform: basalt_config::Mode,
    sys_block: PathBuf,
    maintenance: bool,
}

/// Who is calling, as the TLS session established it.
#[derive(Clone)]
enum Caller {
    Maintenance,
    Role(Role),
    /// A certificate the CA issued, but without a usable role: every request gets 403.
    NoRole(String),
}

/// Binds the listener and serves in a background task on the current tokio runtime.
/// In maintenance mode, prints the certificate fingerprint on the console (stderr).
pub async fn start(
    config: ApiConfig,
    node: Arc<dyn NodeState>,
    sink: ConfigSink,
) -> Result<RunningApi, ApiError> {
    let (server_config, fingerprint) = match &config.mode {
        ApiMode::Configured(identity) => (tls::mutual(identity)?, None),
        ApiMode::Maintenance => {
            let (c, fp) = tls::maintenance()?;
            (c, Some(fp))
        }
    };
    let listener = bind(config.listen).await?;
    let local_addr = listener.local_addr().map_err(|source| ApiError::Bind {
        addr: config.listen,
        source,
    })?;
    if let Some(fp) = &fingerprint {
        // Through machined's logger, so the banner reaches the console (and the log ring)
        // as `machined: maintenance mode: …` like every other line.
        let banner = basalt_api::maintenance_banner(local_addr.port(), fp);
        crate::log::info!("{}", banner.strip_prefix("machined: ").unwrap_or(&banner));
    }
    let shared = Arc::new(Shared {
        node,
        sink,
        files_root: config.files_root,
        kmsg_path: config.kmsg_path,
        platform: config.platform,
        sys_block: config.sys_block,
        maintenance: fingerprint.is_some(),
    });
    let acceptor = TlsAcceptor::from(Arc::new(server_config));
    let task = tokio::spawn(accept_loop(listener, acceptor, shared));
    Ok(RunningApi {
        local_addr,
        fingerprint,
        task,
    })
}

/// Binds `addr`; the IPv6 wildcard falls back to the IPv4 one on a kernel without IPv6
/// (`ipv6.disable=1`), so the API is reachable either way.
async fn bind(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e)
            if addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                && e.raw_os_error() == Some(libc::EAFNOSUPPORT) =>
        {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            TcpListener::bind(v4)
                .await
                .map_err(|source| ApiError::Bind { addr: v4, source })
        }
        Err(source) => Err(ApiError::Bind { addr, source }),
    }
}

/// Accepts TLS connections, at most `max` at once, and runs `serve` on each. A failed
/// accept (EMFILE and friends) backs off instead of spinning; a handshake that fails or
/// takes longer than `handshake` ends the connection (a failed handshake is the
/// client's answer: rustls has already sent the alert). Shared by the API and trustd.
pub(crate) async fn accept_tls<F, Fut>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    max: usize,
    handshake: Duration,
    what: &'static str,
    serve: F,
) where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let serve = Arc::new(serve);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                crate::log::warning!("{what}: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let serve = serve.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) = tokio::time::timeout(handshake, acceptor.accept(tcp)).await else {
                return;
            };
            serve(tls, peer).await;
        });
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let serve = move |tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
                      _peer: SocketAddr| {
        let shared = shared.clone();
        async move {
            let caller = if shared.maintenance {
                Caller::Maintenance
            } else {
                match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    Some(der) => match tls::role_of(der) {
                        Ok(role) => Caller::Role(role),
                        Err(reason) => Caller::NoRole(reason),
                    },
                    None => Caller::NoRole("no client certificate was presented".to_owned()),
                }
            };
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let caller = caller.clone();
                async move { Ok::<_, Infallible>(handle(&shared, &caller, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
        }
    };
    accept_tls(
        listener,
        acceptor,
        MAX_CONNECTIONS,
        HANDSHAKE_TIMEOUT,
        "api",
        serve,
    )
    .await;
}

/// A refusal: status, sentence, and for configs the full list of problems.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    message: String,
    validation_errors: Vec<ValidationError>,
}

impl HttpError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            validation_errors: Vec::new(),
        }
    }

    fn into_response(self) -> Response<ApiBody> {
        json_response(
            self.status,
            &ErrorBody {
                error: self.message,
                validation_errors: self.validation_errors,
            },
        )
    }
}

impl From<ProviderError> for HttpError {
    fn from(e: ProviderError) -> Self {
        let status = match &e {
            ProviderError::NotImplemented { .. } => StatusCode::NOT_IMPLEMENTED,
            ProviderError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProviderError::NotFound { .. } => StatusCode::NOT_FOUND,
            ProviderError::Conflict(_) => StatusCode::CONFLICT,
            ProviderError::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<FilesError> for HttpError {
    fn from(e: FilesError) -> Self {
        let status = match &e {
            FilesError::NotAbsolute { .. } | FilesError::NotAFile { .. } => StatusCode::BAD_REQUEST,
            FilesError::Traversal { .. } | FilesError::Outside { .. } => StatusCode::FORBIDDEN,
            FilesError::NotFound { .. } => StatusCode::NOT_FOUND,
            FilesError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<ApiBody> {
    // Every wire type serialises (no maps with non-string keys, no failing Serialize impls).
    let bytes = serde_json::to_vec(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"serialising the answer: {e}\"}}").into_bytes());
    let mut response = Response::new(ApiBody::full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn ok<T: Serialize>(value: &T) -> Result<Response<ApiBody>, HttpError> {
    Ok(json_response(StatusCode::OK, value))
}

fn stream_response(rx: mpsc::Receiver<Bytes>, content_type: &'static str) -> Response<ApiBody> {
    let mut response = Response::new(ApiBody::Stream(rx));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn ndjson_line<T: Serialize>(value: &T) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// A stream that fails midway cannot change its status any more: it ends with this line.
pub(crate) fn error_line(message: &str) -> Bytes {
    ndjson_line(&ErrorBody {
        error: message.to_owned(),
        validation_errors: Vec::new(),
    })
}

async fn handle(shared: &Shared, caller: &Caller, req: Request<Incoming>) -> Response<ApiBody> {
    let method = match *req.method() {
        hyper::Method::GET => Method::Get,
        hyper::Method::POST => Method::Post,
        ref other => {
            return HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{other} is not used by this API (only GET and POST)"),
            )
            .into_response();
        }
    };
    let path = req.uri().path().to_owned();
    let (spec, params) = match basalt_api::route(method, &path) {
        RouteMatch::Found { spec, params } => (spec, params),
        RouteMatch::MethodNotAllowed => {
            return HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} does not accept {}", method.as_str()),
            )
            .into_response();
        }
        RouteMatch::NotFound => {
            return HttpError::new(StatusCode::NOT_FOUND, format!("no endpoint {path}"))
                .into_response();
        }
    };
    match caller {
        Caller::Maintenance if !spec.maintenance => {
            return HttpError::new(
                StatusCode::FORBIDDEN,
                "the node is in maintenance mode: it serves only GET /v1/version and POST /v1/config until it has a config",
            )
            .into_response();
        }
        Caller::Maintenance => {}
        Caller::NoRole(reason) => {
            return HttpError::new(StatusCode::FORBIDDEN, reason.clone()).into_response();
        }
        Caller::Role(role) if *role < spec.min_role => {
            return HttpError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} {} requires the role {} or higher; your certificate grants {role}",
                    method.as_str(),
                    spec.path,
                    spec.min_role
                ),
            )
            .into_response();
        }
        Caller::Role(_) => {}
    }
    let query = match Query::parse(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let params: Vec<String> = params.iter().map(|p| percent_decode(p)).collect();
    dispatch(shared, spec.endpoint, &params, &query, req)
        .await
        .unwrap_or_else(HttpError::into_response)
}

async fn dispatch(
    shared: &Shared,
    endpoint: Endpoint,
    params: &[String],
    query: &Query,
    req: Request<Incoming>,
) -> Result<Response<ApiBody>, HttpError> {
    let node = &shared.node;
    match endpoint {
        Endpoint::Version => ok(&VersionInfo {
            name: "basalt".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: "v1".to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
            maintenance: shared.maintenance,
        }),
        Endpoint::Health => ok(&node.health()?),
        Endpoint::OpenApi => ok(&basalt_api::openapi::document(env!("CARGO_PKG_VERSION"))),
        Endpoint::Services => ok(&node.services()?),
        Endpoint::ServiceAction => {
            let [name, action] = params else {
                return Err(HttpError::new(
                    StatusCode::NOT_FOUND,
                    "no such service action",
                ));
            };
            let action: ServiceAction =
                action.parse().map_err(|e: basalt_api::ParseEnumError| {
                    HttpError::new(StatusCode::BAD_REQUEST, e.to_string())
                })?;
            let message = node.service_action(name, action)?;
            ok(&ActionAccepted { message })
        }
        Endpoint::Logs => {
            let service = params.first().map(String::as_str).unwrap_or_default();
            let feed = node.logs(service, query.follow()?)?;
            Ok(feed_response(feed, query.tail()?))
        }
        Endpoint::Events => {
            let feed = node.events(query.follow()?)?;
            Ok(feed_response(feed, None))
        }
        Endpoint::Dmesg => {
            let follow = query.follow()?;
            let fd = kmsg::open(&shared.kmsg_path).map_err(|e| {
                HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("opening the kernel log {}: {e}", shared.kmsg_path.display()),
                )
            })?;
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(kmsg::stream(fd, follow, tx));
            Ok(stream_response(rx, "application/x-ndjson"))
        }
        Endpoint::ConfigGet => {
            let config = node.active_config()?;
            ok(&ConfigDocument {
                config: redacted_yaml(&config)?,
            })
        }
        Endpoint::ConfigApply => apply_config(shared, req).await,
        Endpoint::Links => ok(&node.links()?),
        Endpoint::Addresses => ok(&node.addresses()?),
        Endpoint::Routes => ok(&node.routes()?),
        Endpoint::Resolvers => ok(&node.resolvers()?),
        Endpoint::Disks => ok(&sysfs::disks(&shared.sys_block).map_err(|e| {
            HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("listing {}: {e}", shared.sys_block.display()),
            )
        })?),
        Endpoint::Reboot => ok(&ActionAccepted {
            message: node.reboot()?,
        }),
        Endpoint::Shutdown => ok(&ActionAccepted {
            message: node.shutdown()?,
        }),
        Endpoint::FilesList => {
            let path = query.required("path")?;
            ok(&files::list(&shared.files_root, path)?)
        }
        Endpoint::FilesRead => {
            let path = query.required("path")?;
            let file = tokio::fs::File::from_std(files::open(&shared.files_root, path)?);
            let (tx, rx) = mpsc::channel(8);
            let path = path.to_owned();
            tokio::spawn(stream_file(file, path, tx));
            Ok(stream_response(rx, "application/octet-stream"))
        }
    }
}

async fn stream_file(mut file: tokio::fs::File, path: String, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // The status is sent; cutting the body short is all that is left to do.
                crate::log::warning!("api: reading {path}: {e}");
                return;
            }
        }
    }
}

/// The active config as YAML with every private key and the bootstrap token replaced.
fn redacted_yaml(config: &MachineConfig) -> Result<String, HttpError> {
    Ok(config.redacted().to_yaml())
}

/// Parses and validates a machine config completely for a node on `platform`. Parsing
/// stops at the first malformed field; semantic validation reports every broken rule.
pub fn validate_document(
    document: &str,
    platform: basalt_config::Mode,
) -> Result<MachineConfig, Vec<ValidationError>> {
    let config = MachineConfig::parse(document.as_bytes()).map_err(|e| {
        let (path, message) = match &e {
            basalt_config::ParseError::Field { path, message } => (path.clone(), message.clone()),
            other => (String::new(), other.to_string()),
        };
        vec![ValidationError { path, message }]
    })?;
    config.validate(platform).map_err(|errors| {
        errors
            .errors
            .into_iter()
            .map(|e| ValidationError {
                path: e.path,
                message: e.message,
            })
            .collect::<Vec<_>>()
    })?;
    Ok(config)
}

async fn apply_config(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<ApiBody>, HttpError> {
    let body = Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading the request (at most {MAX_REQUEST_BYTES} bytes): {e}"),
            )
        })?
        .to_bytes();
    let request: ApplyConfigRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not an apply-config request: {e}"),
        )
    })?;
    let try_timeout = request
        .check()
        .map_err(|m| HttpError::new(StatusCode::BAD_REQUEST, m))?;
    if shared.maintenance && matches!(request.mode, ApplyMode::Try | ApplyMode::NoReboot) {
        return Err(HttpError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "mode {} needs a running config to apply to; a node in maintenance mode takes auto, reboot or staged",
                request.mode
            ),
        ));
    }
    let config =
        validate_document(&request.config, shared.platform).map_err(|errors| HttpError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!(
                "the config is invalid ({} problem{}); nothing was stored",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            ),
            validation_errors: errors,
        })?;
    let response = shared
        .sink
        .apply(ValidatedApply {
            config,
            document: request.config,
            mode: request.mode,
            try_timeout: try_timeout.map(Duration::from_secs),
            maintenance: shared.maintenance,
        })
        .await?;
    ok(&response)
}

/// Streams a provider's feed as NDJSON; `tail` keeps only the last lines of the backlog.
fn feed_response<T>(feed: Feed<T>, tail: Option<usize>) -> Response<ApiBody>
where
    T: Serialize + Clone + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let skip = tail.map_or(0, |t| feed.backlog.len().saturating_sub(t));
        for item in feed.backlog.into_iter().skip(skip) {
            if tx.send(ndjson_line(&item)).await.is_err() {
                return;
            }
        }
        let Some(mut live) = feed.live else {
            return;
        };
        loop {
            tokio::select! {
                item = live.recv() => match item {
                    Ok(item) => {
                        if tx.send(ndjson_line(&item)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let note = error_line(&format!("{missed} lines were dropped: the reader fell behind"));
                        if tx.send(note).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tx.closed() => return,
            }
        }
    });
    stream_response(rx, "application/x-ndjson")
}

/// The decoded query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Result<Self, HttpError> {
        let pairs = raw
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, HttpError> {
        self.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("the query parameter {name} is required"),
            )
        })
    }

    fn follow(&self) -> Result<bool, HttpError> {
        match self.get("follow") {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("follow={other:?} is not true or false"),
            )),
        }
    }

    fn tail(&self) -> Result<Option<usize>, HttpError> {
        self.get("tail")
            .map(|t| {
                t.parse().map_err(|_| {
                    HttpError::new(
                        StatusCode::BAD_REQUEST,
                        format!("tail={t:?} is not a line count"),
                    )
                })
            })
            .transpose()
    }
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
