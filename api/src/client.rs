//! The async client of the node API: one HTTPS/1.1 connection per request (a CLI makes few
//! requests and a node may reboot between them, so pooling would buy nothing), mutual TLS
//! for configured nodes, a pinned or unchecked server certificate for maintenance mode.

use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::fingerprint::Fingerprint;
use crate::types::*;

/// The port machined listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 50000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the client authenticates itself and the node.
#[derive(Debug, Clone)]
pub enum ClientTls {
    /// A configured node: the server must present a certificate issued by `ca_pem` for the
    /// address dialled, and the client proves its role with `cert_pem` + `key_pem`.
    Mutual {
        ca_pem: String,
        cert_pem: String,
        key_pem: String,
    },
    /// Maintenance mode: no client certificate; the server's certificate must have this
    /// SHA-256 fingerprint (the one printed on the node's console).
    Pinned(Fingerprint),
    /// Maintenance mode without checking who answers. Anyone on the path can read the
    /// config sent, so only for labs.
    Insecure,
}

/// Everything that can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{value:?} is not a node endpoint: {reason}")]
    InvalidEndpoint { value: String, reason: String },
    #[error("reading the {what}: {reason}")]
    Credentials { what: &'static str, reason: String },
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("connecting to {endpoint}: no answer within {seconds}s")]
    ConnectTimeout { endpoint: String, seconds: u64 },
    #[error("TLS handshake with {endpoint} failed: {source}")]
    Tls {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("talking to {endpoint}: {}", chain(.source))]
    Http {
        endpoint: String,
        source: hyper::Error,
    },
    #[error("{endpoint} answered {status}: {error}{}", format_validation(.validation_errors))]
    Status {
        endpoint: String,
        status: u16,
        error: String,
        validation_errors: Vec<ValidationError>,
    },
    #[error("decoding the {what} {endpoint} sent: {source}")]
    Decode {
        endpoint: String,
        what: &'static str,
        source: serde_json::Error,
    },
}

/// hyper's errors say "connection error" and keep the reason (a TLS alert, a reset) in
/// their source; show the whole chain.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

fn format_validation(errors: &[ValidationError]) -> String {
    errors.iter().map(|e| format!("\n  - {e}")).collect()
}

impl ClientError {
    /// The HTTP status, when the node answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the connection or the TLS session failed before any HTTP answer: what a
    /// client without a valid certificate sees.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::ConnectTimeout { .. }
                | Self::Tls { .. }
                | Self::Http { .. }
        )
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client bound to one node.
#[derive(Clone)]
pub struct Client {
    /// `host:port` as given, for messages.
    endpoint: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    connector: TlsConnector,
}

/// Splits `https://host:port`, `host:port`, `[v6]:port`, `v6` or `host` into host and port.
pub fn parse_endpoint(value: &str) -> Result<(String, u16), ClientError> {
    let invalid = |reason: &str| ClientError::InvalidEndpoint {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = value.strip_prefix("https://").unwrap_or(value);
    if rest.contains("://") {
        return Err(invalid("only https:// is spoken"));
    }
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(invalid("it is empty"));
    }
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed '['"))?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| invalid("not an IPv6 address between brackets"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| invalid("the port is not a number 1-65535"))?,
            None if after.is_empty() => DEFAULT_PORT,
            None => return Err(invalid("unexpected text after ']'")),
        };
        return Ok((host.to_owned(), port));
    }
    if rest.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((rest.to_owned(), DEFAULT_PORT));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| invalid("the port is not a number 1-65535"))?,
        ),
        None => (rest, DEFAULT_PORT),
    };
    if host.is_empty() || host.contains('/') {
        return Err(invalid("no host name or address"));
    }
    if port == 0 {
        return Err(invalid("port 0 cannot be dialled"));
    }
    Ok((host.to_owned(), port))
}

impl Client {
    /// A client for `endpoint` (`host`, `host:port`, `https://host:port`; port 50000 by default).
    pub fn new(endpoint: &str, tls: &ClientTls) -> Result<Self, ClientError> {
        let (host, port) = parse_endpoint(endpoint)?;
        let server_name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => {
                ServerName::try_from(host.clone()).map_err(|e| ClientError::InvalidEndpoint {
                    value: endpoint.to_owned(),
                    reason: e.to_string(),
                })?
            }
        };
        let config = client_config(tls)?;
        Ok(Self {
            endpoint: format!("{host}:{port}"),
            host,
            port,
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// `host:port` this client dials.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let endpoint = &self.endpoint;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            endpoint: endpoint.clone(),
            seconds: CONNECT_TIMEOUT.as_secs(),
        })?
        .map_err(|source| ClientError::Connect {
            endpoint: endpoint.clone(),
            source,
        })?;
        let tls = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            endpoint: endpoint.clone(),
            seconds: CONNECT_TIMEOUT.as_secs(),
        })?
        .map_err(|source| ClientError::Tls {
            endpoint: endpoint.clone(),
            source,
        })?;
        let http_err = |source| ClientError::Http {
            endpoint: endpoint.clone(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(http_err)?;
        // The connection task ends when the response body is dropped or finished.
        tokio::spawn(conn);
        let host_header = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host_header)
            .header(
                hyper::header::USER_AGENT,
                concat!("basalt-api/", env!("CARGO_PKG_VERSION")),
            );
        let request = match body {
            Some(bytes) => builder
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(bytes))),
            None => builder.body(Full::new(Bytes::new())),
        }
        .map_err(|e| ClientError::InvalidEndpoint {
            value: format!("{endpoint}{path}"),
            reason: e.to_string(),
        })?;
        let response = sender.send_request(request).await.map_err(http_err)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(http_err)?
            .to_bytes();
        let (error, validation_errors) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => (body.error, body.validation_errors),
            Err(_) => (
                format!(
                    "{} {}",
                    status.canonical_reason().unwrap_or(""),
                    String::from_utf8_lossy(&bytes).trim()
                ),
                Vec::new(),
            ),
        };
        Err(ClientError::Status {
            endpoint: endpoint.clone(),
            status: status.as_u16(),
            error,
            validation_errors,
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<Vec<u8>>,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|source| ClientError::Http {
                endpoint: self.endpoint.clone(),
                source,
            })?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            endpoint: self.endpoint.clone(),
            what,
            source,
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &'static str,
    ) -> Result<T, ClientError> {
        self.json(hyper::Method::GET, path, None, what).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            endpoint: self.endpoint.clone(),
            what: "request body",
            source,
        })?;
        self.json(hyper::Method::POST, path, Some(bytes), what)
            .await
    }

    async fn stream<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &'static str,
    ) -> Result<NdjsonStream<T>, ClientError> {
        let response = self.send(hyper::Method::GET, path, None).await?;
        Ok(NdjsonStream {
            endpoint: self.endpoint.clone(),
            what,
            body: response.into_body(),
            buf: Vec::new(),
            done: false,
            _item: PhantomData,
        })
    }

    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        self.get("/v1/version", "version").await
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/v1/health", "health").await
    }

    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/v1/openapi.json", "OpenAPI document").await
    }

    pub async fn services(&self) -> Result<Vec<ServiceStatus>, ClientError> {
        self.get("/v1/services", "service list").await
    }

    pub async fn service_action(
        &self,
        service: &str,
        action: ServiceAction,
    ) -> Result<ActionAccepted, ClientError> {
        let path = format!("/v1/services/{}/{action}", encode(service));
        self.post(&path, &serde_json::json!({}), "service action answer")
            .await
    }

    pub async fn logs(
        &self,
        service: &str,
        follow: bool,
        tail: Option<u32>,
    ) -> Result<NdjsonStream<LogLine>, ClientError> {
        let mut path = format!("/v1/logs/{}?follow={follow}", encode(service));
        if let Some(n) = tail {
            path.push_str(&format!("&tail={n}"));
        }
        self.stream(&path, "log line").await
    }

    pub async fn dmesg(&self, follow: bool) -> Result<NdjsonStream<KernelLogLine>, ClientError> {
        self.stream(&format!("/v1/dmesg?follow={follow}"), "kernel log line")
            .await
    }

    pub async fn events(&self, follow: bool) -> Result<NdjsonStream<Event>, ClientError> {
        self.stream(&format!("/v1/events?follow={follow}"), "event")
            .await
    }

    pub async fn config(&self) -> Result<ConfigDocument, ClientError> {
        self.get("/v1/config", "config").await
    }

    pub async fn apply_config(
        &self,
        request: &ApplyConfigRequest,
    ) -> Result<ApplyConfigResponse, ClientError> {
        self.post("/v1/config", request, "apply answer").await
    }

    pub async fn links(&self) -> Result<Vec<Link>, ClientError> {
        self.get("/v1/network/links", "link list").await
    }

    pub async fn addresses(&self) -> Result<Vec<Address>, ClientError> {
        self.get("/v1/network/addresses", "address list").await
    }

    pub async fn routes(&self) -> Result<Vec<Route>, ClientError> {
        self.get("/v1/network/routes", "route list").await
    }

    pub async fn resolvers(&self) -> Result<Resolvers, ClientError> {
        self.get("/v1/network/resolvers", "resolvers").await
    }

    pub async fn disks(&self) -> Result<Vec<Disk>, ClientError> {
        self.get("/v1/disks", "disk list").await
    }

    pub async fn reboot(&self) -> Result<ActionAccepted, ClientError> {
        self.post("/v1/reboot", &serde_json::json!({}), "reboot answer")
            .await
    }

    pub async fn shutdown(&self) -> Result<ActionAccepted, ClientError> {
        self.post("/v1/shutdown", &serde_json::json!({}), "shutdown answer")
            .await
    }

    pub async fn list_files(&self, path: &str) -> Result<Vec<FileEntry>, ClientError> {
        self.get(&format!("/v1/files?path={}", encode(path)), "file list")
            .await
    }

    /// A file's contents, read whole (see [`Client::read_file_stream`] for large files).
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let mut stream = self.read_file_stream(path).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next_chunk().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// A file's contents as the node sends them, chunk by chunk.
    pub async fn read_file_stream(&self, path: &str) -> Result<ByteStream, ClientError> {
        let response = self
            .send(
                hyper::Method::GET,
                &format!("/v1/files/content?path={}", encode(path)),
                None,
            )
            .await?;
        Ok(ByteStream {
            endpoint: self.endpoint.clone(),
            body: response.into_body(),
        })
    }
}

/// A raw response body read chunk by chunk.
pub struct ByteStream {
    endpoint: String,
    body: Incoming,
}

impl ByteStream {
    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(source) => {
                    return Some(Err(ClientError::Http {
                        endpoint: self.endpoint.clone(),
                        source,
                    }));
                }
            }
        }
    }
}

/// A newline-delimited JSON response read one object at a time.
pub struct NdjsonStream<T> {
    endpoint: String,
    what: &'static str,
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
    _item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> NdjsonStream<T> {
    /// The next object; `None` once the node ended the stream.
    pub async fn next(&mut self) -> Option<Result<T, ClientError>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(self.decode(line));
            }
            if self.done {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return None;
                }
                let rest = std::mem::take(&mut self.buf);
                return Some(self.decode(&rest));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(source)) => {
                    self.done = true;
                    return Some(Err(ClientError::Http {
                        endpoint: self.endpoint.clone(),
                        source,
                    }));
                }
                None => self.done = true,
            }
        }
    }

    fn decode(&self, line: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(line).map_err(|source| ClientError::Decode {
            endpoint: self.endpoint.clone(),
            what: self.what,
            source,
        })
    }

    /// Reads the stream to its end (only sensible without `follow`).
    pub async fn collect(mut self) -> Result<Vec<T>, ClientError> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item?);
        }
        Ok(out)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `/`, so that a path
/// such as `/var/log/a b` survives as one query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn client_config(tls: &ClientTls) -> Result<rustls::ClientConfig, ClientError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Credentials {
            what: "TLS settings",
            reason: e.to_string(),
        })?;
    match tls {
        ClientTls::Mutual {
            ca_pem,
            cert_pem,
            key_pem,
        } => {
            let mut roots = RootCertStore::empty();
            for cert in parse_certs(ca_pem, "API CA certificate")? {
                roots.add(cert).map_err(|e| ClientError::Credentials {
                    what: "API CA certificate",
                    reason: e.to_string(),
                })?;
            }
            let chain = parse_certs(cert_pem, "client certificate")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
                ClientError::Credentials {
                    what: "client key",
                    reason: e.to_string(),
                }
            })?;
            builder
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Credentials {
                    what: "client certificate and key",
                    reason: e.to_string(),
                })
        }
        ClientTls::Pinned(fp) => Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MaintenanceVerifier {
                pin: Some(*fp),
                provider,
            }))
            .with_no_client_auth()),
        ClientTls::Insecure => Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MaintenanceVerifier {
                pin: None,
                provider,
            }))
            .with_no_client_auth()),
    }
}

fn parse_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::Credentials {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ClientError::Credentials {
            what,
            reason: "no CERTIFICATE block in it".to_owned(),
        });
    }
    Ok(certs)
}

/// Checks a maintenance-mode server: the certificate is self-signed, so there is no chain
/// to verify; what matters is that it is the one the console showed (or, with `--insecure`,
/// nothing). The handshake signature is still verified, so the server must hold the key.
#[derive(Debug)]
struct MaintenanceVerifier {
    pin: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MaintenanceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) => {
                let got = Fingerprint::of_der(end_entity);
                if got == pin {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::General(format!(
                        "the server certificate's fingerprint is {got}, not the pinned {pin}"
                    )))
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_default_port() {
        assert_eq!(
            parse_endpoint("10.5.0.2").unwrap(),
            ("10.5.0.2".into(), 50000)
        );
        assert_eq!(
            parse_endpoint("https://node1:443/").unwrap(),
            ("node1".into(), 443)
        );
        assert_eq!(
            parse_endpoint("[fd00::1]:5").unwrap(),
            ("fd00::1".into(), 5)
        );
        assert_eq!(
            parse_endpoint("fd00::1").unwrap(),
            ("fd00::1".into(), 50000)
        );
        assert!(parse_endpoint("http://node").is_err());
        assert!(parse_endpoint("node:x").is_err());
        assert!(parse_endpoint("").is_err());
        assert!(parse_endpoint("node:0").is_err());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("/var/log/a b&c"), "/var/log/a%20b%26c");
    }
}
