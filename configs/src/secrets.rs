//! The secrets bundle (`secrets.yaml`): every secret a cluster's machine configs are
//! generated from — the kubeadm PKI (cluster CA, etcd CA, front-proxy CA,
//! service-account key), the node API CA, the bootstrap token and the machine token
//! (`machine.token`, authorising workers' certificate requests). Generating configs
//! again from the same bundle gives configs for the same cluster, so nodes added later
//! trust and are trusted by the ones already running.
//!
//! ```yaml
//! version: v1alpha1
//! cluster:
//!   id: 3f1c…            # 32 hex digits, random; names the cluster's secrets
//! bootstrapToken: abcdef.0123456789abcdef
//! machineToken: q1w2e3.0123456789abcdef   # machine.token of every node
//! kubernetes:
//!   ca: { crt: PEM, key: PEM }
//!   etcdCA: { crt: PEM, key: PEM }
//!   aggregatorCA: { crt: PEM, key: PEM }
//!   serviceAccount: { key: PEM }
//! api:
//!   ca: { crt: PEM, key: PEM }
//! ```

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::model::CertificateAndKey;
use crate::pki::{self, CertAndKey, PkiError};
use crate::values::{BootstrapToken, PemCertificate, PemPrivateKey};

/// Common names of the generated certificate authorities, as kubeadm names them.
pub const KUBERNETES_CA_CN: &str = "kubernetes";
pub const ETCD_CA_CN: &str = "etcd-ca";
pub const AGGREGATOR_CA_CN: &str = "front-proxy-ca";
pub const API_CA_CN: &str = "basalt-api";

/// Everything that can go wrong generating, reading or writing a secrets bundle.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("reading the secrets bundle {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("writing the secrets bundle {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the secrets bundle {origin} is invalid: {field}: {reason}")]
    Parse {
        origin: String,
        field: String,
        reason: String,
    },
    #[error("the secrets bundle {origin} is invalid: {field}: {cause}")]
    Pki {
        origin: String,
        field: String,
        cause: PkiError,
    },
    #[error("generating the {what}: {cause}")]
    Generate { what: &'static str, cause: PkiError },
    #[error("the system random number generator failed while generating the {what}")]
    Random { what: &'static str },
    #[error("serialising the secrets bundle: {0}")]
    Serialise(String),
}

/// The bundle format version. Only `v1alpha1` exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SecretsVersion {
    #[default]
    #[serde(rename = "v1alpha1")]
    V1Alpha1,
}

/// A certificate authority whose key is always present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaSecret {
    pub crt: PemCertificate,
    pub key: PemPrivateKey,
}

impl CaSecret {
    fn generate(common_name: &str, what: &'static str) -> Result<CaSecret, SecretsError> {
        let ca = pki::generate_ca(common_name, None)
            .map_err(|cause| SecretsError::Generate { what, cause })?;
        CaSecret::from_cert_and_key(&ca).map_err(|reason| SecretsError::Parse {
            origin: "(generated)".into(),
            field: what.into(),
            reason,
        })
    }

    fn from_cert_and_key(ca: &CertAndKey) -> Result<CaSecret, String> {
        Ok(CaSecret {
            crt: ca.cert_pem.parse().map_err(|e| format!("{e}"))?,
            key: ca.key_pem.parse().map_err(|e| format!("{e}"))?,
        })
    }

    /// The PEM pair, for signing with [`pki::issue_leaf`].
    pub fn cert_and_key(&self) -> CertAndKey {
        CertAndKey {
            cert_pem: self.crt.as_str().to_owned(),
            key_pem: self.key.as_str().to_owned(),
        }
    }

    /// The machine-config form with the key (control planes).
    pub fn with_key(&self) -> CertificateAndKey {
        CertificateAndKey {
            crt: self.crt.clone(),
            key: Some(self.key.clone()),
        }
    }

    /// The machine-config form without the key (workers).
    pub fn certificate_only(&self) -> CertificateAndKey {
        CertificateAndKey {
            crt: self.crt.clone(),
            key: None,
        }
    }
}

/// `cluster`: the cluster's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSecrets {
    /// 32 random hex digits naming this set of secrets.
    pub id: String,
}

/// `kubernetes`: the kubeadm PKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSecrets {
    /// The cluster CA (kubeadm's ca.crt/ca.key).
    pub ca: CaSecret,
    /// etcd's CA (etcd/ca.crt).
    #[serde(rename = "etcdCA")]
    pub etcd_ca: CaSecret,
    /// The front-proxy / aggregation-layer CA (front-proxy-ca.crt).
    #[serde(rename = "aggregatorCA")]
    pub aggregator_ca: CaSecret,
    pub service_account: ServiceAccountSecret,
}

/// `kubernetes.serviceAccount`: the key signing service-account tokens (sa.key; sa.pub
/// is derived from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAccountSecret {
    pub key: PemPrivateKey,
}

/// `api`: the node API's PKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSecrets {
    pub ca: CaSecret,
}

/// The whole bundle.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretsBundle {
    pub version: SecretsVersion,
    pub cluster: ClusterSecrets,
    pub bootstrap_token: BootstrapToken,
    /// `machine.token` of every node: authorises workers' certificate requests to trustd.
    pub machine_token: BootstrapToken,
    pub kubernetes: KubernetesSecrets,
    pub api: ApiSecrets,
}

impl fmt::Debug for SecretsBundle {
    // Certificates are public, keys are not: print the identity only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsBundle")
            .field("cluster", &self.cluster)
            .field("bootstrap_token", &self.bootstrap_token)
            .finish_non_exhaustive()
    }
}

fn random_bytes<const N: usize>(what: &'static str) -> Result<[u8; N], SecretsError> {
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SecretsError::Random { what })?;
    Ok(bytes)
}

/// A random kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn generate_bootstrap_token() -> Result<BootstrapToken, SecretsError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut chars = String::with_capacity(22);
    // Rejection sampling keeps every character equally likely: 252 = 7 * 36.
    while chars.len() < 22 {
        for b in random_bytes::<32>("bootstrap token")? {
            if b < 252 && chars.len() < 22 {
                chars.push(char::from(ALPHABET[usize::from(b % 36)]));
            }
        }
    }
    BootstrapToken::new(&chars[..6], &chars[6..]).map_err(|e| SecretsError::Parse {
        origin: "(generated)".into(),
        field: "bootstrapToken".into(),
        reason: e.to_string(),
    })
}

impl SecretsBundle {
    /// Generates a fresh bundle: four CAs (ECDSA P-256, ten years), a service-account
    /// key, a bootstrap token and a cluster id.
    pub fn generate() -> Result<SecretsBundle, SecretsError> {
        let sa_key = pki::generate_key_pem().map_err(|cause| SecretsError::Generate {
            what: "service-account key",
            cause,
        })?;
        Ok(SecretsBundle {
            version: SecretsVersion::V1Alpha1,
            cluster: ClusterSecrets {
                id: hex::encode(random_bytes::<16>("cluster id")?),
            },
            bootstrap_token: generate_bootstrap_token()?,
            machine_token: generate_bootstrap_token()?,
            kubernetes: KubernetesSecrets {
                ca: CaSecret::generate(KUBERNETES_CA_CN, "Kubernetes CA")?,
                etcd_ca: CaSecret::generate(ETCD_CA_CN, "etcd CA")?,
                aggregator_ca: CaSecret::generate(AGGREGATOR_CA_CN, "front-proxy CA")?,
                service_account: ServiceAccountSecret {
                    key: sa_key.parse().map_err(|e| SecretsError::Parse {
                        origin: "(generated)".into(),
                        field: "kubernetes.serviceAccount.key".into(),
                        reason: format!("{e}"),
                    })?,
                },
            },
            api: ApiSecrets {
                ca: CaSecret::generate(API_CA_CN, "node API CA")?,
            },
        })
    }

    /// Strictly parses a bundle (unknown fields refused, with their path) and checks it:
    /// every CA certificate is a CA, every key belongs to its certificate, nothing is
    /// redacted. `origin` names the document in errors.
    pub fn from_yaml(origin: &str, text: &str) -> Result<SecretsBundle, SecretsError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let bundle: SecretsBundle =
            crate::parse::deserialize_with_path(de).map_err(|(field, reason)| {
                SecretsError::Parse {
                    origin: origin.to_owned(),
                    field,
                    reason,
                }
            })?;
        bundle.check(origin)?;
        Ok(bundle)
    }

    fn check(&self, origin: &str) -> Result<(), SecretsError> {
        let parse_err = |field: &str, reason: &str| SecretsError::Parse {
            origin: origin.to_owned(),
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        if self.bootstrap_token.is_redacted() {
            return Err(parse_err("bootstrapToken", "is redacted"));
        }
        if self.machine_token.is_redacted() {
            return Err(parse_err("machineToken", "is redacted"));
        }
        if self.cluster.id.len() != 32 || !self.cluster.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(parse_err("cluster.id", "not 32 hex digits"));
        }
        let cas = [
            ("kubernetes.ca", &self.kubernetes.ca),
            ("kubernetes.etcdCA", &self.kubernetes.etcd_ca),
            ("kubernetes.aggregatorCA", &self.kubernetes.aggregator_ca),
            ("api.ca", &self.api.ca),
        ];
        for (field, ca) in cas {
            let pki_err = |sub: &str, cause| SecretsError::Pki {
                origin: origin.to_owned(),
                field: format!("{field}.{sub}"),
                cause,
            };
            if ca.key.is_redacted() {
                return Err(parse_err(&format!("{field}.key"), "is redacted"));
            }
            let info =
                pki::check_certificate_pem(ca.crt.as_str()).map_err(|e| pki_err("crt", e))?;
            if !info.is_ca {
                return Err(parse_err(
                    &format!("{field}.crt"),
                    "is not a certificate authority (basicConstraints CA:TRUE is missing)",
                ));
            }
            pki::check_key_pair(ca.crt.as_str(), ca.key.as_str()).map_err(|e| pki_err("key", e))?;
        }
        let sa = &self.kubernetes.service_account.key;
        if sa.is_redacted() {
            return Err(parse_err("kubernetes.serviceAccount.key", "is redacted"));
        }
        pki::parse_private_key_pem(sa.as_str()).map_err(|cause| SecretsError::Pki {
            origin: origin.to_owned(),
            field: "kubernetes.serviceAccount.key".into(),
            cause,
        })?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<SecretsBundle, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|cause| SecretsError::Read {
            path: path.to_owned(),
            cause,
        })?;
        SecretsBundle::from_yaml(&path.display().to_string(), &text)
    }

    pub fn to_yaml(&self) -> Result<String, SecretsError> {
        serde_yaml::to_string(self).map_err(|e| SecretsError::Serialise(e.to_string()))
    }

    /// Writes the bundle with mode 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<(), SecretsError> {
        let text = self.to_yaml()?;
        write_private_file(path, text.as_bytes()).map_err(|cause| SecretsError::Write {
            path: path.to_owned(),
            cause,
        })
    }

    /// The service-account public key (sa.pub), derived from the private key.
    pub fn service_account_public_key(&self) -> Result<String, PkiError> {
        pki::public_key_pem(self.kubernetes.service_account.key.as_str())
    }
}

/// Writes `bytes` to `path` with mode 0600 (created so from the start, never readable
/// by others even for a moment), through a temporary file in the same directory,
/// fsync and rename, so a reader never sees a partial file.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file_mode(path, bytes, 0o600)
}

/// [`write_private_file`] with any mode (0644 for files without secrets).
pub fn write_file_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_kubeadm_format_and_differ() {
        let a = generate_bootstrap_token().unwrap().to_string();
        let b = generate_bootstrap_token().unwrap().to_string();
        assert_ne!(a, b);
        assert_eq!(a.len(), 23);
        assert_eq!(&a[6..7], ".");
        assert!(
            a.bytes()
                .all(|c| c == b'.' || c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }

    #[test]
    fn bundle_round_trips_through_yaml() {
        let bundle = SecretsBundle::generate().unwrap();
        let text = bundle.to_yaml().unwrap();
        let back = SecretsBundle::from_yaml("t", &text).unwrap();
        assert_eq!(back, bundle);
        assert!(text.contains("etcdCA:") && text.contains("aggregatorCA:"));
    }

    #[test]
    fn unknown_field_is_refused_with_its_path() {
        let text = SecretsBundle::generate().unwrap().to_yaml().unwrap();
        let typo = text.replace("serviceAccount:", "serviceAcount:");
        let err = SecretsBundle::from_yaml("t", &typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubernetes"), "{err}");
        assert!(err.contains("serviceAcount"), "{err}");
    }

    #[test]
    fn swapped_keys_are_refused_with_the_field() {
        let mut bundle = SecretsBundle::generate().unwrap();
        bundle.api.ca.key = bundle.kubernetes.ca.key.clone();
        let text = bundle.to_yaml().unwrap();
        let err = SecretsBundle::from_yaml("t", &text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.ca.key"), "{err}");
    }

    #[test]
    fn save_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.yaml");
        let bundle = SecretsBundle::generate().unwrap();
        bundle.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SecretsBundle::load(&path).unwrap(), bundle);
    }
}
