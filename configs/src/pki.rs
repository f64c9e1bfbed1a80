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
    #[error("the certificate signing request cannot be read: {reason}")]
    CsrUnreadable { reason: String },
    #[error("refusing the certificate signing request: {reason}")]
    CsrRefused { reason: String },
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

/// How long a server certificate signed from a node's CSR ([`sign_server_csr`]) is valid.
/// Shorter than other leaves: the worker asks again at every boot and before expiry.
pub const CSR_SERVER_VALIDITY: Duration = Duration::days(90);
/// The most subject alternative names a CSR may ask for; a node has a handful.
pub const MAX_CSR_SANS: usize = 64;
/// The largest CSR accepted, PEM text (one P-256 key and [`MAX_CSR_SANS`] names fit).
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;

/// A PKCS#10 certificate signing request (PEM) for a TLS server: `common_name` as the
/// subject, `sans` (DNS names and IP addresses) as subject alternative names, signed with
/// `key_pem` (PKCS#8 P-256). Asks for exactly what [`sign_server_csr`] grants.
pub fn server_csr(key_pem: &str, common_name: &str, sans: &[String]) -> Result<String, PkiError> {
    let key = parse_private_key_pem(key_pem)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<Vec<_>, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| PkiError::Issue {
            subject: common_name.to_owned(),
            reason: format!("building the certificate signing request: {e}"),
        })?;
    Ok(csr)
}

/// Signs a node's CSR as a TLS server certificate, with `ca`. The policy, checked before
/// anything is signed: the request's signature is valid, its key is ECDSA P-256, its
/// subject is a common name only (an Organization would be a role), it names 1 to
/// [`MAX_CSR_SANS`] DNS names or IP addresses, and it asks for nothing beyond a server
/// leaf (no CA, key usages within digitalSignature + keyEncipherment, extended key usage
/// serverAuth only, no other extension). The certificate is built from the policy, not
/// from the request: CA:FALSE, keyUsage digitalSignature + keyEncipherment, serverAuth,
/// the requested names, valid for [`CSR_SERVER_VALIDITY`].
///
/// `reserved` names (the cluster endpoint's host: the control planes' name) are refused,
/// so a token holder cannot get a certificate clients would take for the control plane.
pub fn sign_server_csr(
    ca: &CertAndKey,
    csr_pem: &str,
    reserved: &[String],
) -> Result<String, PkiError> {
    let refused = |reason: String| PkiError::CsrRefused { reason };
    if csr_pem.len() > MAX_CSR_PEM_BYTES {
        return Err(refused(format!(
            "it is {} bytes, more than the {MAX_CSR_PEM_BYTES} a node's request needs",
            csr_pem.len()
        )));
    }
    let request =
        rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::UnsupportedExtension => refused(
                "it asks for an extension other than subjectAltName, keyUsage, \
                 extendedKeyUsage and basicConstraints"
                    .to_owned(),
            ),
            other => PkiError::CsrUnreadable {
                reason: other.to_string(),
            },
        })?;
    let raw = rcgen::PublicKeyData::der_bytes(&request.public_key);
    if request.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256
        || raw.len() != 65
        || raw[0] != 0x04
    {
        return Err(refused("its key is not ECDSA P-256".to_owned()));
    }
    let wanted = &request.params;
    if let IsCa::Ca(_) = wanted.is_ca {
        return Err(refused(
            "it asks to be a certificate authority (basicConstraints CA:TRUE)".to_owned(),
        ));
    }
    if let Some(usage) = wanted.key_usages.iter().find(|u| {
        !matches!(
            u,
            KeyUsagePurpose::DigitalSignature | KeyUsagePurpose::KeyEncipherment
        )
    }) {
        return Err(refused(format!(
            "it asks for key usage {usage:?}; a server certificate gets digitalSignature and keyEncipherment only"
        )));
    }
    if let Some(usage) = wanted
        .extended_key_usages
        .iter()
        .find(|u| **u != ExtendedKeyUsagePurpose::ServerAuth)
    {
        return Err(refused(format!(
            "it asks for extended key usage {usage:?}; only serverAuth is signed"
        )));
    }
    let mut common_name = None;
    for (ty, value) in wanted.distinguished_name.iter() {
        match (ty, value) {
            (DnType::CommonName, value) => common_name = Some(dn_text(value)),
            (other, _) => {
                return Err(refused(format!(
                    "its subject carries {other:?}; only a common name is accepted (an organization would grant an API role)"
                )));
            }
        }
    }
    if wanted.subject_alt_names.is_empty() {
        return Err(refused(
            "it names no DNS name or IP address to serve".to_owned(),
        ));
    }
    if wanted.subject_alt_names.len() > MAX_CSR_SANS {
        return Err(refused(format!(
            "it names {} subject alternative names, more than {MAX_CSR_SANS}",
            wanted.subject_alt_names.len()
        )));
    }
    for name in &wanted.subject_alt_names {
        let text = match name {
            SanType::DnsName(dns) => dns.as_str().to_ascii_lowercase(),
            SanType::IpAddress(ip) => ip.to_string(),
            other => {
                return Err(refused(format!(
                    "it names {other:?}; only DNS names and IP addresses are signed"
                )));
            }
        };
        if reserved.iter().any(|r| r.eq_ignore_ascii_case(&text)) {
            return Err(refused(format!(
                "it names {text}, the control plane's endpoint; a node certificate cannot claim it"
            )));
        }
    }
    let common_name = common_name.unwrap_or_else(|| match &wanted.subject_alt_names[0] {
        SanType::DnsName(name) => name.as_str().to_owned(),
        SanType::IpAddress(ip) => ip.to_string(),
        _ => String::new(),
    });

    let ca_info = check_certificate_pem(&ca.cert_pem)?;
    if !ca_info.is_ca {
        return Err(PkiError::NotACertificateAuthority {
            subject: ca_info.subject_name(),
        });
    }
    check_key_pair(&ca.cert_pem, &ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, parse_private_key_pem(&ca.key_pem)?)
        .map_err(|e| PkiError::CertificateDer {
            reason: format!("reading the CA {}: {e}", ca_info.subject_name()),
        })?;
    let mut params = base_params(&common_name, None, CSR_SERVER_VALIDITY)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = wanted.subject_alt_names.clone();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&request.public_key, &issuer)
        .map_err(|e| PkiError::Issue {
            subject: common_name.clone(),
            reason: e.to_string(),
        })?;
    Ok(cert.pem())
}

fn dn_text(value: &rcgen::DnValue) -> String {
    match value {
        rcgen::DnValue::Utf8String(s) => s.clone(),
        rcgen::DnValue::PrintableString(s) => s.as_str().to_owned(),
        rcgen::DnValue::Ia5String(s) => s.as_str().to_owned(),
        rcgen::DnValue::TeletexString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
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

    // --- CSR signing policy (trustd) ---

    fn csr_with(key: &KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> String {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "w-1");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san("w-1").unwrap(), san("10.5.0.3").unwrap()];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        edit(&mut params);
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn refusal(ca: &CertAndKey, csr: &str) -> String {
        match sign_server_csr(ca, csr, &["10.5.0.2".to_owned()]) {
            Err(PkiError::CsrRefused { reason }) => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_server_csr_is_signed_as_a_bounded_server_leaf_for_its_names() {
        let ca = generate_ca("basalt-api", None).unwrap();
        let key = generate_key_pem().unwrap();
        let csr = server_csr(
            &key,
            "w-1",
            &["w-1".into(), "localhost".into(), "10.5.0.3".into()],
        )
        .unwrap();
        let cert = sign_server_csr(&ca, &csr, &[]).unwrap();
        // The certificate carries the requester's key, not one the signer made up.
        check_key_pair(&cert, &key).unwrap();
        let info = check_certificate_pem(&cert).unwrap();
        assert!(!info.is_ca);
        assert_eq!(info.common_name.as_deref(), Some("w-1"));
        assert_eq!(info.dns_names, ["w-1", "localhost"]);
        assert_eq!(info.ip_addresses, ["10.5.0.3".parse::<IpAddr>().unwrap()]);
        let lifetime = info.not_after - info.not_before;
        assert!(lifetime <= CSR_SERVER_VALIDITY + BACKDATE, "{lifetime}");
        let der = certificate_der(&cert).unwrap();
        let (_, x509) = X509Certificate::from_der(&der).unwrap();
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth && !eku.any && eku.other.is_empty());
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
        // Issued by the CA: the signature checks with the CA's public key.
        let ca_der = certificate_der(&ca.cert_pem).unwrap();
        let (_, ca_x509) = X509Certificate::from_der(&ca_der).unwrap();
        x509.verify_signature(Some(ca_x509.public_key())).unwrap();
    }

    #[test]
    fn a_csr_asking_for_more_than_a_server_leaf_is_refused() {
        let ca = generate_ca("basalt-api", None).unwrap();
        let key = generate_key().unwrap();
        let cases: Vec<(&str, String)> = vec![
            (
                "certificate authority",
                csr_with(&key, |p| {
                    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
                }),
            ),
            (
                "ClientAuth",
                csr_with(&key, |p| {
                    p.extended_key_usages
                        .push(ExtendedKeyUsagePurpose::ClientAuth)
                }),
            ),
            (
                "KeyCertSign",
                csr_with(&key, |p| p.key_usages = vec![KeyUsagePurpose::KeyCertSign]),
            ),
            (
                "OrganizationName",
                csr_with(&key, |p| {
                    p.distinguished_name
                        .push(DnType::OrganizationName, "basalt:admin")
                }),
            ),
            (
                "no DNS name",
                csr_with(&key, |p| p.subject_alt_names.clear()),
            ),
            (
                "the control plane's endpoint",
                csr_with(&key, |p| p.subject_alt_names.push(san("10.5.0.2").unwrap())),
            ),
            (
                "only DNS names and IP addresses",
                csr_with(&key, |p| {
                    p.subject_alt_names
                        .push(SanType::Rfc822Name("a@b.example".try_into().unwrap()))
                }),
            ),
            (
                "more than 64",
                csr_with(&key, |p| {
                    p.subject_alt_names = (0..65)
                        .map(|i| san(&format!("n{i}.example")).unwrap())
                        .collect()
                }),
            ),
        ];
        for (expect, csr) in cases {
            let reason = refusal(&ca, &csr);
            assert!(reason.contains(expect), "{expect}: {reason}");
        }
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        assert!(refusal(&ca, &csr_with(&p384, |_| ())).contains("P-256"));
        let huge = "x".repeat(MAX_CSR_PEM_BYTES + 1);
        assert!(refusal(&ca, &huge).contains("bytes"));
    }

    #[test]
    fn a_tampered_or_garbage_csr_is_unreadable() {
        let ca = generate_ca("basalt-api", None).unwrap();
        let key = generate_key_pem().unwrap();
        let csr = server_csr(&key, "w-1", &["w-1".into()]).unwrap();
        let (_, block) = x509_parser::pem::parse_x509_pem(csr.as_bytes()).unwrap();
        let mut der = block.contents;
        // Flip a bit inside the signed part (the subject's CN): the signature no longer holds.
        let at = der.windows(3).position(|w| w == b"w-1").unwrap();
        der[at] ^= 0x01;
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(&der);
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"
        );
        for bad in [tampered.as_str(), "not a csr"] {
            assert!(
                matches!(
                    sign_server_csr(&ca, bad, &[]),
                    Err(PkiError::CsrUnreadable { .. })
                ),
                "{bad}"
            );
        }
    }
}
