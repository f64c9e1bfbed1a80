//! Fetching `basalt.config=` over http(s), retrying with back-off inside a bounded time.

use crate::log::warning;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use super::cmdline::ConfigUrl;

/// A config is a few tens of KiB; anything near this is not a config.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// One connect + request + body read.
    pub attempt_timeout: Duration,
    /// No new attempt starts after this much time.
    pub total: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Two minutes covers DHCP, a config server starting alongside the VMs, and a slow
    /// network, yet a node with a wrong URL reaches maintenance mode in reasonable time.
    fn default() -> Self {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(15),
            total: Duration::from_secs(120),
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {status}")]
    Status {
        url: String,
        status: hyper::StatusCode,
    },
    #[error("{url}: the body exceeds {MAX_CONFIG_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url}: no answer within {seconds}s")]
    Timeout { url: String, seconds: u64 },
    #[error("reading the CA bundle {path}: {message}")]
    CaBundle { path: PathBuf, message: String },
    #[error("{url}: gave up after {attempts} attempts in {seconds}s; last error: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        seconds: u64,
        last: Box<FetchError>,
    },
}

/// Trust anchors for https: the image's CA bundle (Debian's ca-certificates).
pub fn tls_config(ca_bundle: &Path) -> Result<Arc<rustls::ClientConfig>, FetchError> {
    let err = |message: String| FetchError::CaBundle {
        path: ca_bundle.to_path_buf(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_bundle).map_err(|e| err(e.to_string()))? {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificates in it".into()));
    }
    // An explicit provider: machined links other rustls users, and a process-wide
    // default would be a race between them.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn request<S>(io: S, url: &ConfigUrl) -> Result<Vec<u8>, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let u = url.url();
    let transport = |e: &dyn std::fmt::Display| FetchError::Transport {
        url: url.to_string(),
        message: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| transport(&e))?;
    let conn = tokio::spawn(conn);
    let mut path = u.path().to_string();
    if let Some(q) = u.query() {
        path.push('?');
        path.push_str(q);
    }
    let host = match u.port() {
        Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
        None => u.host_str().unwrap_or_default().to_string(),
    };
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "basalt-machined")
        .body(Empty::<Bytes>::new())
        .map_err(|e| transport(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| transport(&e))?;
    if resp.status() != hyper::StatusCode::OK {
        conn.abort();
        return Err(FetchError::Status {
            url: url.to_string(),
            status: resp.status(),
        });
    }
    let body = Limited::new(resp.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge {
                    url: url.to_string(),
                }
            } else {
                transport(&e)
            }
        })?;
    conn.abort();
    Ok(body.to_bytes().to_vec())
}

/// One attempt: resolve, connect, TLS when https, GET, read the body.
pub async fn fetch_once(
    url: &ConfigUrl,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Vec<u8>, FetchError> {
    let u = url.url();
    let transport = |e: &dyn std::fmt::Display| FetchError::Transport {
        url: url.to_string(),
        message: e.to_string(),
    };
    let port = u.port_or_known_default().unwrap_or(80);
    let stream = match u.host() {
        Some(url::Host::Ipv4(ip)) => tokio::net::TcpStream::connect((ip, port)).await,
        Some(url::Host::Ipv6(ip)) => tokio::net::TcpStream::connect((ip, port)).await,
        Some(url::Host::Domain(d)) => tokio::net::TcpStream::connect((d, port)).await,
        None => return Err(transport(&"no host")),
    }
    .map_err(|e| transport(&e))?;
    if !url.is_https() {
        return request(stream, url).await;
    }
    let tls = tls.ok_or_else(|| transport(&"https without trust anchors"))?;
    let name = match u.host() {
        Some(url::Host::Ipv4(ip)) => ServerName::IpAddress(std::net::IpAddr::V4(ip).into()),
        Some(url::Host::Ipv6(ip)) => ServerName::IpAddress(std::net::IpAddr::V6(ip).into()),
        Some(url::Host::Domain(d)) => {
            ServerName::try_from(d.to_string()).map_err(|e| transport(&e))?
        }
        None => return Err(transport(&"no host")),
    };
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, stream)
        .await
        .map_err(|e| transport(&e))?;
    request(stream, url).await
}

/// The delay before attempt `n + 1` (n ≥ 1): doubling from `first`, capped at `max`.
pub fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    policy
        .first_backoff
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
        .min(policy.max_backoff)
}

/// Fetches `url`, retrying every failure (the network or the server may not be up
/// yet) until `policy.total` has passed.
pub async fn fetch(
    url: &ConfigUrl,
    policy: &RetryPolicy,
    ca_bundle: &Path,
) -> Result<Vec<u8>, FetchError> {
    let tls = if url.is_https() {
        Some(tls_config(ca_bundle)?)
    } else {
        None
    };
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match tokio::time::timeout(policy.attempt_timeout, fetch_once(url, tls.as_ref()))
            .await
        {
            Ok(Ok(bytes)) => return Ok(bytes),
            Ok(Err(e)) => e,
            Err(_) => FetchError::Timeout {
                url: url.to_string(),
                seconds: policy.attempt_timeout.as_secs(),
            },
        };
        let wait = backoff(policy, attempts);
        if start.elapsed() + wait >= policy.total {
            return Err(FetchError::GaveUp {
                url: url.to_string(),
                attempts,
                seconds: start.elapsed().as_secs(),
                last: Box::new(err),
            });
        }
        warning!(
            "config: attempt {attempts} failed ({err}); retrying in {}ms",
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            attempt_timeout: Duration::from_secs(1),
            total: Duration::from_secs(60),
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(3),
        };
        let got: Vec<u128> = (1..=5).map(|n| backoff(&p, n).as_millis()).collect();
        assert_eq!(got, vec![500, 1000, 2000, 3000, 3000]);
        assert_eq!(backoff(&p, 200), Duration::from_secs(3));
    }
}
