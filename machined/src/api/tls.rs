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
use rustls::server::WebPkiClientVerifier;

use super::ApiError;

/// The certificate a configured node serves, and the CA its clients must be issued by.
#[derive(Clone)]
pub struct ServerIdentity {
    pub api_ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("api_ca_pem", &self.api_ca_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
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
        let mut sans = vec![hostname.to_owned(), "localhost".to_owned()];
        sans.extend(addresses.iter().map(IpAddr::to_string));
        for san in extra_sans {
            if !sans.contains(san) {
                sans.push(san.clone());
            }
        }
        let spec = LeafSpec {
            common_name: hostname.to_owned(),
            organization: None,
            usage: LeafUsage::Server,
            sans,
        };
        let leaf = pki::issue_leaf(api_ca, &spec).map_err(|e| ApiError::Identity {
            reason: e.to_string(),
        })?;
        Ok(Self {
            api_ca_pem: api_ca.cert_pem.clone(),
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
        })
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
                         must come from a control plane, which is not implemented yet"
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
        let extra: Vec<String> = config
            .machine
            .cert_sans
            .iter()
            .map(ToString::to_string)
            .collect();
        Self::issue(&api_ca, hostname, addresses, &extra)
    }
}

impl ServerIdentity {
    /// A worker's identity: workers carry the API CA's certificate but not its key, so
    /// they cannot issue a server certificate clients would trust. Until a control plane
    /// signs worker certificates, the worker serves a self-signed one (clients pin its
    /// fingerprint or skip the check) and still verifies every client against the API CA,
    /// so roles keep working.
    pub fn self_signed_for_worker(
        config: &basalt_config::MachineConfig,
        hostname: &str,
        addresses: &[IpAddr],
    ) -> Result<Self, ApiError> {
        let mut sans = vec![hostname.to_owned(), "localhost".to_owned()];
        sans.extend(addresses.iter().map(IpAddr::to_string));
        sans.extend(config.machine.cert_sans.iter().map(ToString::to_string));
        sans.dedup();
        let generated =
            rcgen::generate_simple_self_signed(sans).map_err(|e| ApiError::Identity {
                reason: format!("generating the worker's self-signed certificate: {e}"),
            })?;
        Ok(Self {
            api_ca_pem: config.machine.ca.crt.as_str().to_owned(),
            cert_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
        })
    }

    /// The SHA-256 fingerprint of the served certificate, for pinning.
    pub fn fingerprint(&self) -> Result<Fingerprint, ApiError> {
        let der = certs(&self.cert_pem, "server certificate")?;
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
        .with_single_cert(
            certs(&identity.cert_pem, "server certificate")?,
            key(&identity.key_pem)?,
        )
        .map_err(|e| ApiError::Identity {
            reason: format!("server certificate and key: {e}"),
        })?;
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
        let info = pki::check_certificate_pem(&identity.cert_pem).unwrap();
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
        let info = pki::check_certificate_pem(&identity.cert_pem).unwrap();
        assert!(info.dns_names.contains(&"w-1".to_owned()));
        assert!(info.ip_addresses.contains(&ip));
        let der = pki::certificate_der(&identity.cert_pem).unwrap();
        assert_eq!(identity.fingerprint().unwrap(), Fingerprint::of_der(&der));
    }
}
