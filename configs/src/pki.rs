//! X.509 certificates and keys for a Basalt cluster: checking PEM material an operator
//! hands in (does it parse, does the key belong to the certificate), creating certificate
//! authorities and issuing leaf certificates from them.
//!
//! Every key is ECDSA P-256 (see docs/pki.md for why not Ed25519 or RSA). Certificate
//! authorities are valid for ten years, leaf certificates for one; both are backdated by
//! five minutes, as kubeadm does, so a node whose clock lags slightly accepts them.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
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
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| {
        PkiError::CertificatePem {
            reason: e.to_string(),
        }
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
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::CertificateDer {
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
