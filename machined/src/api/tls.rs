//! The server's TLS: mutual TLS against the API CA on a configured node, a fresh
//! self-signed certificate without client authentication in maintenance mode.

use std::net::IpAddr;
use std::sync::Arc;

use basalt_api::{Fingerprint, Role};
use basalt_config::client_config::Role as CertRole;
use basalt_config::pki::{self, CertAndKey, LeafSpec, LeafUsage};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

use super::ApiError;

/// The certificate a configured node serves, and the CA its clients must be issued by.
/// Clones share the served certificate: [`ServerIdentity::replace`] swaps it under a
/// running server (the rustls resolver reads it at every handshake), so a worker moves from
/// its interim self-signed certificate to the one a control plane signed without a restart.
#[derive(Clone)]
pub struct ServerIdentity {
    pub api_ca_pem: String,
    served: Arc<ServedCertificate>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("api_ca_pem", &self.api_ca_pem)
            .field("cert_pem", &self.cert_pem())
            .finish_non_exhaustive()
    }
}

/// The swappable certificate behind [`ServerIdentity`]: what rustls serves.
struct ServedCertificate {
    current: std::sync::RwLock<Served>,
}

struct Served {
    cert_pem: String,
    certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for ServedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServedCertificate")
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete certificate: it is only ever replaced whole.
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(current.certified.clone())
    }
}

fn served(cert_pem: &str, key_pem: &str) -> Result<Served, ApiError> {
    let chain = certs(cert_pem, "server certificate")?;
    let signing = provider()
        .key_provider
        .load_private_key(key(key_pem)?)
        .map_err(|e| ApiError::Identity {
            reason: format!("server key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| ApiError::Identity {
        reason: format!("server certificate and key: {e}"),
    })?;
    Ok(Served {
        cert_pem: cert_pem.to_owned(),
        certified: Arc::new(certified),
    })
}

impl ServerIdentity {
    /// An identity serving `cert_pem` (with `key_pem`) and verifying clients against
    /// `api_ca_pem`; refused when the key does not belong to the certificate.
    pub fn new(api_ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, ApiError> {
        Ok(Self {
            api_ca_pem: api_ca_pem.to_owned(),
            served: Arc::new(ServedCertificate {
                current: std::sync::RwLock::new(served(cert_pem, key_pem)?),
            }),
        })
    }

    /// The certificate served now (PEM).
    pub fn cert_pem(&self) -> String {
        self.served
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cert_pem
            .clone()
    }

    /// Serves `cert_pem` from the next handshake on, in every server built from this
    /// identity or a clone of it. Refused (and the old certificate kept) when the key does
    /// not belong to the certificate.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), ApiError> {
        let next = served(cert_pem, key_pem)?;
        *self
            .served
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }
}

impl ServerIdentity {
    /// Issues the node's server certificate from the API CA (control planes carry its key)
    /// for the hostname and addresses clients dial. Done at every start, so a changed
    /// address never leaves a stale certificate behind.
    pub fn issue(
        api_ca: &CertAndKey,
        hostname: &str,
        addresses: &[IpAddr],
        extra_sans: &[String],
    ) -> Result<Self, ApiError> {
        let sans = node_sans(hostname, addresses, extra_sans);
        let spec = LeafSpec {
            common_name: hostname.to_owned(),
            organization: None,
            usage: LeafUsage::Server,
            sans,
        };
        let leaf = pki::issue_leaf(api_ca, &spec).map_err(|e| ApiError::Identity {
            reason: e.to_string(),
        })?;
        Self::new(&api_ca.cert_pem, &leaf.cert_pem, &leaf.key_pem)
    }

    /// The identity of a configured node from its machine config: the API CA of
    /// `machine.ca` (its key is on control planes only), SANs from the hostname, the
    /// node's addresses and `machine.certSANs`.
    pub fn for_node(
        config: &basalt_config::MachineConfig,
        hostname: &str,
        addresses: &[IpAddr],
    ) -> Result<Self, ApiError> {
        let ca = &config.machine.ca;
        let Some(key) = &ca.key else {
            return Err(ApiError::Identity {
                reason: "machine.ca carries no key on this node (a worker): its API certificate \
                         comes from a control plane's trustd"
                    .to_owned(),
            });
        };
        if key.is_redacted() {
            return Err(ApiError::Identity {
                reason: "machine.ca.key is redacted; a redacted config cannot run a node"
                    .to_owned(),
            });
        }
        let api_ca = CertAndKey {
            cert_pem: ca.crt.as_str().to_owned(),
            key_pem: key.as_str().to_owned(),
        };
        Self::issue(&api_ca, hostname, addresses, &cert_sans(config))
    }

    /// The names a node's API certificate carries (see [`node_sans`]), from its config.
    pub fn sans_for(
        config: &basalt_config::MachineConfig,
        hostname: &str,
        addresses: &[IpAddr],
    ) -> Vec<String> {
        node_sans(hostname, addresses, &cert_sans(config))
    }

    /// trustd's TLS: this identity's served certificate, no client certificate asked
    /// (the machine token authorises a request; a worker has no client certificate).
    pub fn trust_server_config(&self) -> Result<rustls::ServerConfig, ApiError> {
        server_only(self)
    }
}

/// `machine.certSANs` as text.
fn cert_sans(config: &basalt_config::MachineConfig) -> Vec<String> {
    config
        .machine
        .cert_sans
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The names a node's API certificate carries, in order, each once: the hostname,
/// `localhost` and the loopback addresses (a client reaching the node through a port
/// forward dials one of those), the node's addresses, then `extra` (`machine.certSANs`).
fn node_sans(hostname: &str, addresses: &[IpAddr], extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        hostname.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let more = addresses
        .iter()
        .map(IpAddr::to_string)
        .chain(extra.iter().cloned());
    for san in more {
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    sans
}

impl ServerIdentity {
    /// A worker's interim identity: workers carry the API CA's certificate but not its
    /// key, so they cannot issue a server certificate clients would trust. Until a control
    /// plane's trustd signs one (`crate::trust`, swapped in with [`ServerIdentity::replace`]),
    /// the worker serves a self-signed one (clients pin its fingerprint) and still verifies
    /// every client against the API CA, so roles keep working.
    pub fn self_signed_for_worker(
        config: &basalt_config::MachineConfig,
        hostname: &str,
        addresses: &[IpAddr],
    ) -> Result<Self, ApiError> {
        let sans = node_sans(hostname, addresses, &cert_sans(config));
        let generated =
            rcgen::generate_simple_self_signed(sans).map_err(|e| ApiError::Identity {
                reason: format!("generating the worker's self-signed certificate: {e}"),
            })?;
        Self::new(
            config.machine.ca.crt.as_str(),
            &generated.cert.pem(),
            &generated.signing_key.serialize_pem(),
        )
    }

    /// The SHA-256 fingerprint of the served certificate, for pinning.
    pub fn fingerprint(&self) -> Result<Fingerprint, ApiError> {
        let der = certs(&self.cert_pem(), "server certificate")?;
        Ok(Fingerprint::of_der(&der[0]))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, ApiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Identity {
            reason: format!("{what}: {e}"),
        })?;
    if certs.is_empty() {
        return Err(ApiError::Identity {
            reason: format!("{what}: no CERTIFICATE block"),
        });
    }
    Ok(certs)
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, ApiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| ApiError::Identity {
        reason: format!("server key: {e}"),
    })
}

/// A configured node: clients must present a certificate issued by the API CA, or the
/// handshake fails before any HTTP is spoken.
pub fn mutual(identity: &ServerIdentity) -> Result<rustls::ServerConfig, ApiError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for cert in certs(&identity.api_ca_pem, "API CA certificate")? {
        roots.add(cert).map_err(|e| ApiError::Identity {
            reason: format!("API CA certificate: {e}"),
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ApiError::Identity {
            reason: format!("client verifier: {e}"),
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Identity {
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity.served.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Server-side TLS only, with the node's served certificate: trustd's listener, where
/// the machine token authorises a request and a worker has no client certificate yet.
fn server_only(identity: &ServerIdentity) -> Result<rustls::ServerConfig, ApiError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Identity {
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(identity.served.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Maintenance mode: a certificate made now, never stored, identified to the operator only
/// by its fingerprint on the console.
pub fn maintenance() -> Result<(rustls::ServerConfig, Fingerprint), ApiError> {
    let generated = rcgen::generate_simple_self_signed(vec!["basalt-maintenance".to_owned()])
        .map_err(|e| ApiError::Identity {
            reason: format!("generating the maintenance certificate: {e}"),
        })?;
    let der = generated.cert.der().clone();
    let fingerprint = Fingerprint::of_der(&der);
    let key = key(&generated.signing_key.serialize_pem())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ApiError::Identity {
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .map_err(|e| ApiError::Identity {
            reason: format!("maintenance certificate: {e}"),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, fingerprint))
}

/// The role a verified client certificate grants, or why it grants none (answered 403).
pub fn role_of(der: &[u8]) -> Result<Role, String> {
    let role = CertRole::from_certificate_der(der).map_err(|e| e.to_string())?;
    role.organization()
        .parse::<Role>()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn controlplane() -> basalt_config::MachineConfig {
        basalt_config::MachineConfig::from_yaml(include_str!(
            "../../tests/data/api-apply-controlplane.yaml"
        ))
        .unwrap()
    }

    #[test]
    fn a_control_plane_issues_its_own_certificate_for_its_names() {
        let config = controlplane();
        let ip = IpAddr::V4(Ipv4Addr::new(10, 5, 0, 2));
        let identity = ServerIdentity::for_node(&config, "cp-1", &[ip]).unwrap();
        let info = pki::check_certificate_pem(&identity.cert_pem()).unwrap();
        assert!(info.dns_names.contains(&"cp-1".to_owned()));
        assert!(info.ip_addresses.contains(&ip));
        for san in &config.machine.cert_sans {
            let san = san.to_string();
            assert!(
                info.dns_names.contains(&san)
                    || info.ip_addresses.iter().any(|i| i.to_string() == san),
                "{san} missing"
            );
        }
        mutual(&identity).unwrap();
    }

    #[test]
    fn a_worker_without_the_ca_key_cannot_issue_one() {
        let mut config = controlplane();
        config.machine.ca.key = None;
        let err = ServerIdentity::for_node(&config, "w-1", &[]).unwrap_err();
        assert!(err.to_string().contains("no key"), "{err}");
        let redacted = controlplane().redacted();
        assert!(ServerIdentity::for_node(&redacted, "cp-1", &[]).is_err());
    }

    #[test]
    fn a_worker_serves_self_signed_but_verifies_clients_against_the_api_ca() {
        let mut config = controlplane();
        config.machine.ca.key = None;
        let ip = IpAddr::V4(Ipv4Addr::new(10, 5, 0, 3));
        let identity = ServerIdentity::self_signed_for_worker(&config, "w-1", &[ip]).unwrap();
        // Clients are still checked against the cluster's API CA …
        assert_eq!(identity.api_ca_pem, config.machine.ca.crt.as_str());
        mutual(&identity).unwrap();
        // … while the served certificate names the worker and is identified by its pin.
        let info = pki::check_certificate_pem(&identity.cert_pem()).unwrap();
        assert!(info.dns_names.contains(&"w-1".to_owned()));
        assert!(info.ip_addresses.contains(&ip));
        let der = pki::certificate_der(&identity.cert_pem()).unwrap();
        assert_eq!(identity.fingerprint().unwrap(), Fingerprint::of_der(&der));
    }

    #[test]
    fn replace_swaps_the_served_certificate_and_refuses_a_foreign_key() {
        let config = controlplane();
        let identity = ServerIdentity::for_node(&config, "cp-1", &[]).unwrap();
        let clone = identity.clone();
        let other = pki::self_signed_server("w-1", &["w-1".to_owned()]).unwrap();
        clone.replace(&other.cert_pem, &other.key_pem).unwrap();
        // Clones share the served certificate: a running server sees the swap.
        assert_eq!(identity.cert_pem(), other.cert_pem);
        let stranger = pki::self_signed_server("x", &["x".to_owned()]).unwrap();
        let err = identity
            .replace(&other.cert_pem, &stranger.key_pem)
            .unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
        assert_eq!(identity.cert_pem(), other.cert_pem, "the old one stays");
    }

    #[test]
    fn node_names_include_loopback_for_port_forwards_once_each() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 5, 0, 3));
        let sans = node_sans(
            "w-1",
            &[ip],
            &["10.5.0.3".to_owned(), "w.example".to_owned()],
        );
        assert_eq!(
            sans,
            [
                "w-1",
                "localhost",
                "127.0.0.1",
                "::1",
                "10.5.0.3",
                "w.example"
            ]
        );
    }
}
