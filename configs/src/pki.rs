//! X.509 certificates and keys for a Basalt cluster: checking PEM material an operator
//! hands in (does it parse, does the key belong to the certificate), creating certificate
//! authorities and issuing leaf certificates from them.
//!
//! Every key is ECDSA P-256 (see docs/pki.md for why not Ed25519 or RSA). Certificate
//! authorities are valid for ten years, leaf certificates for one; both are backdated by
//! five minutes, as kubeadm does, so a node whose clock lags slightly accepts them.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::digest;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How long a certificate authority is valid: ten years, like kubeadm's CAs.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a leaf certificate is valid: one year, like kubeadm's leaves.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// How far `notBefore` lies in the past, to tolerate a node clock that lags (kubeadm: 5 min).
pub const BACKDATE: Duration = Duration::minutes(5);

/// Everything that can go wrong while reading, checking or issuing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("the certificate is not valid PEM: {reason}")]
    CertificatePem { reason: String },
    #[error("the certificate PEM block is labelled {label:?}, expected \"CERTIFICATE\"")]
    CertificateLabel { label: String },
    #[error("the certificate is not a valid X.509 certificate: {reason}")]
    CertificateDer { reason: String },
    #[error("the private key is not valid PEM: {reason}")]
    PrivateKeyPem { reason: String },
    #[error(
        "the private key is a {label:?} PEM block; Basalt reads unencrypted PKCS#8 \
         (\"PRIVATE KEY\"); convert it with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    PrivateKeyFormat { label: String },
    #[error("the private key cannot be read: {reason}")]
    PrivateKey { reason: String },
    #[error(
        "the private key does not belong to the certificate for {subject}: their public keys differ"
    )]
    KeyMismatch { subject: String },
    #[error("generating a key pair: {reason}")]
    KeyGeneration { reason: String },
    #[error("the certificate for {subject} is not a certificate authority and cannot sign")]
    NotACertificateAuthority { subject: String },
    #[error("{san:?} is not a valid subject alternative name (DNS name or IP address): {reason}")]
    InvalidSan { san: String, reason: String },
    #[error("issuing the certificate for {subject}: {reason}")]
    Issue { subject: String, reason: String },
}

/// What [`check_certificate_pem`] learned about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
    /// The subject's organizations; Basalt client certificates carry their role here.
    pub organizations: Vec<String>,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// SHA-256 of the DER, in [`fingerprint_sha256`]'s form.
    pub fingerprint_sha256: String,
    /// The DER-encoded SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
}

impl CertificateInfo {
    /// A name for messages: the CN, or "(no common name)".
    pub fn subject_name(&self) -> String {
        self.common_name
            .clone()
            .unwrap_or_else(|| "(no common name)".to_owned())
    }
}

/// Decodes the first PEM block of `pem` and insists that it is a certificate.
pub fn certificate_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| PkiError::CertificatePem {
            reason: e.to_string(),
        })?;
    if block.label != "CERTIFICATE" {
        return Err(PkiError::CertificateLabel { label: block.label });
    }
    Ok(block.contents)
}

/// Parses an X.509 certificate in PEM form and reports its subject, CA flag, validity,
/// SANs and fingerprint.
pub fn check_certificate_pem(pem: &str) -> Result<CertificateInfo, PkiError> {
    let der = certificate_der(pem)?;
    certificate_info_der(&der)
}

/// Like [`check_certificate_pem`], for a DER-encoded certificate (as a TLS peer presents it).
pub fn certificate_info_der(der: &[u8]) -> Result<CertificateInfo, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| PkiError::CertificateDer {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::CertificateDer {
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    let text = |attr: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        attr.as_str()
            .map(str::to_owned)
            .map_err(|e| PkiError::CertificateDer {
                reason: format!("a subject attribute is not a string: {e}"),
            })
    };
    let subject = cert.subject();
    let common_name = subject.iter_common_name().next().map(text).transpose()?;
    let organizations = subject
        .iter_organization()
        .map(text)
        .collect::<Result<Vec<_>, _>>()?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::CertificateDer {
            reason: format!("the subjectAltName extension is malformed: {e}"),
        })?;
    if let Some(sans) = sans {
        for name in &sans.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        ip_addresses.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    let time = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| PkiError::CertificateDer {
            reason: format!("a validity date is out of range: {e}"),
        })
    };
    Ok(CertificateInfo {
        common_name,
        organizations,
        is_ca: cert.is_ca(),
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
        dns_names,
        ip_addresses,
        fingerprint_sha256: fingerprint_der(der),
        public_key_der: cert.public_key().raw.to_vec(),
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Reads an unencrypted PKCS#8 private key ("PRIVATE KEY" PEM block), the form every key
/// Basalt generates has.
pub fn parse_private_key_pem(key_pem: &str) -> Result<KeyPair, PkiError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(key_pem.as_bytes()).map_err(|e| {
        PkiError::PrivateKeyPem {
            reason: e.to_string(),
        }
    })?;
    if block.label != "PRIVATE KEY" {
        return Err(PkiError::PrivateKeyFormat { label: block.label });
    }
    KeyPair::try_from(block.contents.as_slice()).map_err(|e| PkiError::PrivateKey {
        reason: e.to_string(),
    })
}

/// Checks that `key_pem` parses and is the private half of the certificate's public key.
pub fn check_key_pair(cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    let info = check_certificate_pem(cert_pem)?;
    let key = parse_private_key_pem(key_pem)?;
    use rcgen::PublicKeyData;
    if key.subject_public_key_info() != info.public_key_der {
        return Err(PkiError::KeyMismatch {
            subject: info.subject_name(),
        });
    }
    Ok(())
}

/// The SHA-256 fingerprint of a certificate in PEM form, written as OpenSSL writes it
/// (`openssl x509 -noout -fingerprint -sha256`): upper-case hex byte pairs joined by `:`.
pub fn fingerprint_sha256(cert_pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint_der(&certificate_der(cert_pem)?))
}

/// [`fingerprint_sha256`] for a DER-encoded certificate.
pub fn fingerprint_der(der: &[u8]) -> String {
    let hash = digest::digest(&digest::SHA256, der);
    hash.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A certificate and the private key that belongs to it, both PEM (the key as PKCS#8).
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    // The key stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// What a leaf certificate may be used for (its extendedKeyUsage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafUsage {
    /// TLS server (serverAuth); SANs name the server.
    Server,
    /// TLS client (clientAuth); the subject names the client.
    Client,
    /// Both, as etcd's peer and server certificates need.
    ServerAndClient,
}

/// The subject and use of a leaf certificate to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    pub common_name: String,
    /// The subject organization (a Kubernetes group, a Basalt role). One at most:
    /// rcgen writes a single value per attribute type, and no Basalt or kubeadm
    /// certificate needs more.
    pub organization: Option<String>,
    pub usage: LeafUsage,
    /// DNS names and IP addresses; every entry that parses as an IP address is an IP SAN.
    pub sans: Vec<String>,
}

/// Generates a fresh ECDSA P-256 key pair.
pub fn generate_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| PkiError::KeyGeneration {
        reason: e.to_string(),
    })
}

/// Generates a fresh ECDSA P-256 private key as PKCS#8 PEM (for the service-account key).
pub fn generate_key_pem() -> Result<String, PkiError> {
    Ok(generate_key()?.serialize_pem())
}

/// The public half of a PKCS#8 private key, as a "PUBLIC KEY" (SubjectPublicKeyInfo) PEM.
pub fn public_key_pem(key_pem: &str) -> Result<String, PkiError> {
    Ok(parse_private_key_pem(key_pem)?.public_key_pem())
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::KeyGeneration {
            reason: "the system random number generator failed".to_owned(),
        })?;
    // A serial is a positive INTEGER: clear the sign bit, and keep it non-zero.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn base_params(
    common_name: &str,
    organization: Option<&str>,
    validity: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// Creates a self-signed certificate authority: basicConstraints critical CA:TRUE,
/// keyUsage critical keyCertSign + cRLSign + digitalSignature, a subject key identifier,
/// valid for [`CA_VALIDITY`].
pub fn generate_ca(common_name: &str, organization: Option<&str>) -> Result<CertAndKey, PkiError> {
    let mut params = base_params(common_name, organization, CA_VALIDITY)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    let key = generate_key()?;
    let cert = params.self_signed(&key).map_err(|e| PkiError::Issue {
        subject: common_name.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn san(value: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |reason: &str| PkiError::InvalidSan {
        san: value.to_owned(),
        reason: reason.to_owned(),
    };
    if value.is_empty() || value.len() > 253 {
        return Err(invalid("a DNS name has 1 to 253 characters"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !value.split('.').all(label_ok) {
        return Err(invalid(
            "a DNS name is dot-separated labels of letters, digits and '-'",
        ));
    }
    let name = value
        .to_owned()
        .try_into()
        .map_err(|e: rcgen::Error| invalid(&e.to_string()))?;
    Ok(SanType::DnsName(name))
}

/// Issues a leaf certificate signed by `ca`, with a fresh ECDSA P-256 key: keyUsage
/// digitalSignature (+ keyEncipherment for servers, which old TLS clients expect),
/// extendedKeyUsage per [`LeafUsage`], SANs, subject and authority key identifiers,
/// valid for [`LEAF_VALIDITY`].
pub fn issue_leaf(ca: &CertAndKey, spec: &LeafSpec) -> Result<CertAndKey, PkiError> {
    let ca_info = check_certificate_pem(&ca.cert_pem)?;
    if !ca_info.is_ca {
        return Err(PkiError::NotACertificateAuthority {
            subject: ca_info.subject_name(),
        });
    }
    check_key_pair(&ca.cert_pem, &ca.key_pem)?;
    let ca_key = parse_private_key_pem(&ca.key_pem)?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| PkiError::CertificateDer {
            reason: format!("reading the CA {}: {e}", ca_info.subject_name()),
        })?;

    let mut params = base_params(
        &spec.common_name,
        spec.organization.as_deref(),
        LEAF_VALIDITY,
    )?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = spec
        .sans
        .iter()
        .map(|s| san(s))
        .collect::<Result<Vec<_>, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match spec.usage {
        LeafUsage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        LeafUsage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        LeafUsage::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    if spec.usage != LeafUsage::Client {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    let key = generate_key()?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| PkiError::Issue {
            subject: spec.common_name.clone(),
            reason: e.to_string(),
        })?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A self-signed server certificate (serverAuth, CA:FALSE) with a fresh key, for a
/// node in maintenance mode: it has no API CA yet, so the operator checks the
/// certificate's [`fingerprint_sha256`] printed on the console instead of a chain.
pub fn self_signed_server(common_name: &str, sans: &[String]) -> Result<CertAndKey, PkiError> {
    let mut params = base_params(common_name, None, LEAF_VALIDITY)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<Vec<_>, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = generate_key()?;
    let cert = params.self_signed(&key).map_err(|e| PkiError::Issue {
        subject: common_name.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_spec() -> LeafSpec {
        LeafSpec {
            common_name: "kube-apiserver".into(),
            organization: None,
            usage: LeafUsage::Server,
            sans: vec!["kubernetes.default".into(), "10.96.0.1".into()],
        }
    }

    #[test]
    fn ca_is_a_ca_and_its_key_matches() {
        let ca = generate_ca("kubernetes", None).unwrap();
        let info = check_certificate_pem(&ca.cert_pem).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.common_name.as_deref(), Some("kubernetes"));
        let years = (info.not_after - info.not_before).whole_days();
        assert!((3649..=3651).contains(&years), "{years}");
        check_key_pair(&ca.cert_pem, &ca.key_pem).unwrap();
    }

    #[test]
    fn leaf_carries_sans_and_is_not_a_ca() {
        let ca = generate_ca("kubernetes", None).unwrap();
        let leaf = issue_leaf(&ca, &server_spec()).unwrap();
        let info = check_certificate_pem(&leaf.cert_pem).unwrap();
        assert!(!info.is_ca);
        assert_eq!(info.dns_names, vec!["kubernetes.default".to_owned()]);
        assert_eq!(
            info.ip_addresses,
            vec!["10.96.0.1".parse::<IpAddr>().unwrap()]
        );
        check_key_pair(&leaf.cert_pem, &leaf.key_pem).unwrap();
    }

    #[test]
    fn a_key_from_another_pair_is_refused() {
        let a = generate_ca("a", None).unwrap();
        let b = generate_ca("b", None).unwrap();
        let err = check_key_pair(&a.cert_pem, &b.key_pem).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { ref subject } if subject == "a"));
    }

    #[test]
    fn a_leaf_cannot_sign() {
        let ca = generate_ca("kubernetes", None).unwrap();
        let leaf = issue_leaf(&ca, &server_spec()).unwrap();
        let err = issue_leaf(&leaf, &server_spec()).unwrap_err();
        assert!(matches!(err, PkiError::NotACertificateAuthority { .. }));
    }

    #[test]
    fn garbage_and_wrong_labels_are_refused() {
        assert!(matches!(
            check_certificate_pem("hello"),
            Err(PkiError::CertificatePem { .. })
        ));
        let ca = generate_ca("x", None).unwrap();
        assert!(matches!(
            check_certificate_pem(&ca.key_pem),
            Err(PkiError::CertificateLabel { .. })
        ));
        let sec1 = ca.key_pem.replace("PRIVATE KEY", "EC PRIVATE KEY");
        assert!(matches!(
            check_key_pair(&ca.cert_pem, &sec1),
            Err(PkiError::PrivateKeyFormat { .. })
        ));
    }

    #[test]
    fn invalid_sans_are_refused_by_name() {
        let ca = generate_ca("kubernetes", None).unwrap();
        let mut spec = server_spec();
        spec.sans = vec!["not a host".into()];
        let err = issue_leaf(&ca, &spec).unwrap_err();
        assert!(err.to_string().contains("\"not a host\""), "{err}");
    }

    #[test]
    fn self_signed_server_is_not_a_ca_and_names_its_sans() {
        let cert =
            self_signed_server("maintenance", &["192.0.2.5".into(), "node-1".into()]).unwrap();
        let info = check_certificate_pem(&cert.cert_pem).unwrap();
        assert!(!info.is_ca);
        assert_eq!(info.dns_names, vec!["node-1".to_owned()]);
        assert_eq!(
            info.ip_addresses,
            vec!["192.0.2.5".parse::<IpAddr>().unwrap()]
        );
        check_key_pair(&cert.cert_pem, &cert.key_pem).unwrap();
    }

    #[test]
    fn fingerprint_is_openssl_style() {
        let ca = generate_ca("x", None).unwrap();
        let fp = fingerprint_sha256(&ca.cert_pem).unwrap();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.split(':').all(|p| {
            p.len() == 2
                && p.chars()
                    .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c))
        }));
    }
}
