//! The `basaltconfig` client file (what talosconfig or kubeconfig are to their tools):
//! which node API endpoints to talk to and the mutual-TLS material to do it with, per
//! named context. Also the Basalt roles and the client certificates that carry them.
//!
//! ```yaml
//! context: demo
//! contexts:
//!   demo:
//!     endpoints: [192.0.2.10]
//!     nodes: []
//!     ca: |            # the API CA certificate: the client trusts node certificates it signed
//!       -----BEGIN CERTIFICATE-----
//!     crt: |           # the client certificate, O=basalt:<role>
//!       -----BEGIN CERTIFICATE-----
//!     key: |
//!       -----BEGIN PRIVATE KEY-----
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::pki::{self, CertAndKey, LeafSpec, LeafUsage, PkiError};

/// The environment variable naming the client config file.
pub const ENV_VAR: &str = "BASALTCONFIG";
/// The port of the node API, used when an endpoint names none.
pub const DEFAULT_API_PORT: u16 = 50000;

/// Everything that can go wrong with a client config or a client certificate.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    #[error(
        "no client config: pass --basaltconfig, set ${ENV_VAR}, or create ~/.basalt/config (HOME is not set)"
    )]
    NoPath,
    #[error("reading the client config {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("writing the client config {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the client config {path} is invalid: {field}: {reason}")]
    Parse {
        path: String,
        field: String,
        reason: String,
    },
    #[error("the client config {path} is invalid: {field}: {cause}")]
    Pki {
        path: String,
        field: String,
        cause: PkiError,
    },
    #[error(
        "the client config {path} selects context {context:?}, which it does not define (defined: {defined})"
    )]
    UnknownContext {
        path: String,
        context: String,
        defined: String,
    },
    #[error(
        "{endpoint:?} is not a node API endpoint: expected host, host:port, [IPv6] or [IPv6]:port"
    )]
    Endpoint { endpoint: String },
    #[error("serialising the client config: {0}")]
    Serialise(String),
    #[error(
        "{0:?} is not a Basalt role (expected admin, operator or reader, optionally prefixed basalt:)"
    )]
    UnknownRole(String),
    #[error(
        "the client certificate for {subject} carries no Basalt role in its organizations ({organizations})"
    )]
    NoRole {
        subject: String,
        organizations: String,
    },
    #[error(
        "the client certificate for {subject} carries more than one Basalt role ({roles}); refusing to guess"
    )]
    AmbiguousRole { subject: String, roles: String },
    #[error("reading the client certificate: {0}")]
    Certificate(PkiError),
    #[error("issuing a client certificate for {name}: {cause}")]
    Issue { name: String, cause: PkiError },
}

/// What a node API client may do. The role is the certificate's subject Organization
/// (`O=basalt:admin`), so the node needs nothing but the certificate to authorise a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read state: versions, services, logs (never secrets).
    Reader,
    /// Reader, plus operations that change state without exposing secrets: restart
    /// services, reboot, upgrade.
    Operator,
    /// Everything, including reading secrets (kubeconfig) and applying configs.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Reader];

    /// The Organization value carried in the certificate, e.g. `basalt:admin`.
    pub fn organization(self) -> &'static str {
        match self {
            Role::Admin => "basalt:admin",
            Role::Operator => "basalt:operator",
            Role::Reader => "basalt:reader",
        }
    }

    /// Reads the role out of a DER client certificate (as a TLS server sees the peer's
    /// certificate). Exactly one `basalt:*` organization must be present; organizations
    /// that do not start with `basalt:` are ignored; an unknown `basalt:*` value is refused.
    pub fn from_certificate_der(der: &[u8]) -> Result<Role, ClientConfigError> {
        let info = pki::certificate_info_der(der).map_err(ClientConfigError::Certificate)?;
        Role::from_organizations(&info.subject_name(), &info.organizations)
    }

    /// [`Role::from_certificate_der`] for a PEM certificate.
    pub fn from_certificate_pem(pem: &str) -> Result<Role, ClientConfigError> {
        let der = pki::certificate_der(pem).map_err(ClientConfigError::Certificate)?;
        Role::from_certificate_der(&der)
    }

    fn from_organizations(
        subject: &str,
        organizations: &[String],
    ) -> Result<Role, ClientConfigError> {
        let roles = organizations
            .iter()
            .filter(|o| o.starts_with("basalt:"))
            .map(|o| o.parse::<Role>())
            .collect::<Result<Vec<_>, _>>()?;
        match roles.as_slice() {
            [role] => Ok(*role),
            [] => Err(ClientConfigError::NoRole {
                subject: subject.to_owned(),
                organizations: organizations.join(", "),
            }),
            _ => Err(ClientConfigError::AmbiguousRole {
                subject: subject.to_owned(),
                roles: organizations.join(", "),
            }),
        }
    }
}

/// Accepts `admin` and `basalt:admin` (and the same for the other roles).
impl FromStr for Role {
    type Err = ClientConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("basalt:").unwrap_or(s) {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "reader" => Ok(Role::Reader),
            _ => Err(ClientConfigError::UnknownRole(s.to_owned())),
        }
    }
}

/// Writes the certificate form, `basalt:admin`.
impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.organization())
    }
}

/// Issues a client certificate for the node API: CN=`name`, O=`basalt:<role>`,
/// clientAuth, signed by the API CA, with a fresh ECDSA P-256 key.
pub fn issue_client_certificate(
    api_ca: &CertAndKey,
    role: Role,
    name: &str,
) -> Result<CertAndKey, ClientConfigError> {
    let spec = LeafSpec {
        common_name: name.to_owned(),
        organization: Some(role.organization().to_owned()),
        usage: LeafUsage::Client,
        sans: vec![],
    };
    pki::issue_leaf(api_ca, &spec).map_err(|cause| ClientConfigError::Issue {
        name: name.to_owned(),
        cause,
    })
}

/// Splits a node API endpoint (`host`, `host:port`, `IPv6`, `[IPv6]`, `[IPv6]:port`)
/// into host and port; the port defaults to [`DEFAULT_API_PORT`]. IPv6 hosts come back
/// without brackets.
pub fn parse_endpoint(endpoint: &str) -> Result<(String, u16), ClientConfigError> {
    let bad = || ClientConfigError::Endpoint {
        endpoint: endpoint.to_owned(),
    };
    if endpoint.parse::<std::net::Ipv6Addr>().is_ok() {
        return Ok((endpoint.to_owned(), DEFAULT_API_PORT));
    }
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match endpoint.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (endpoint, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?,
        None => DEFAULT_API_PORT,
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !host_ok {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// The whole client file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The context used when none is named.
    pub context: String,
    pub contexts: BTreeMap<String, Context>,
}

/// How to reach one cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Node API endpoints (`host` or `host:port`, port 50000 by default); the client
    /// connects to these.
    pub endpoints: Vec<String>,
    /// Default target nodes, reached through an endpoint; empty = the endpoint itself.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The API CA certificate (PEM).
    pub ca: String,
    /// The client certificate (PEM).
    pub crt: String,
    /// The client private key (PKCS#8 PEM).
    pub key: String,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("endpoints", &self.endpoints)
            .field("nodes", &self.nodes)
            .field("ca", &self.ca)
            .field("crt", &self.crt)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Context {
    /// The role the context's certificate carries.
    pub fn role(&self) -> Result<Role, ClientConfigError> {
        Role::from_certificate_pem(&self.crt)
    }
}

impl ClientConfig {
    /// A config with one context, selected.
    pub fn single(name: &str, context: Context) -> Self {
        ClientConfig {
            context: name.to_owned(),
            contexts: BTreeMap::from([(name.to_owned(), context)]),
        }
    }

    /// Where the client config lives: `explicit` (--basaltconfig), else $BASALTCONFIG,
    /// else ~/.basalt/config.
    pub fn resolve_path(explicit: Option<&Path>) -> Result<PathBuf, ClientConfigError> {
        if let Some(p) = explicit {
            return Ok(p.to_owned());
        }
        if let Some(p) = std::env::var_os(ENV_VAR).filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or(ClientConfigError::NoPath)?;
        Ok(PathBuf::from(home).join(".basalt").join("config"))
    }

    /// Resolves the path (see [`ClientConfig::resolve_path`]) and loads the file.
    pub fn load(explicit: Option<&Path>) -> Result<(PathBuf, ClientConfig), ClientConfigError> {
        let path = ClientConfig::resolve_path(explicit)?;
        let config = ClientConfig::load_from(&path)?;
        Ok((path, config))
    }

    pub fn load_from(path: &Path) -> Result<ClientConfig, ClientConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ClientConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        ClientConfig::parse(&path.display().to_string(), &text)
    }

    /// Strictly parses and checks a client config: unknown fields are refused, the
    /// selected context exists, every certificate and key parses and each key belongs
    /// to its certificate. `origin` names the document in errors.
    pub fn parse(origin: &str, text: &str) -> Result<ClientConfig, ClientConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: ClientConfig =
            crate::parse::deserialize_with_path(de).map_err(|(field, reason)| {
                ClientConfigError::Parse {
                    path: origin.to_owned(),
                    field,
                    reason,
                }
            })?;
        config.check(origin)?;
        Ok(config)
    }

    fn check(&self, origin: &str) -> Result<(), ClientConfigError> {
        if !self.contexts.contains_key(&self.context) {
            return Err(ClientConfigError::UnknownContext {
                path: origin.to_owned(),
                context: self.context.clone(),
                defined: self.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        for (name, ctx) in &self.contexts {
            let field = |f: &str| format!("contexts.{name}.{f}");
            let pki_err = |f: &str, cause| ClientConfigError::Pki {
                path: origin.to_owned(),
                field: field(f),
                cause,
            };
            if ctx.endpoints.is_empty() {
                return Err(ClientConfigError::Parse {
                    path: origin.to_owned(),
                    field: field("endpoints"),
                    reason: "at least one endpoint is needed".into(),
                });
            }
            for (i, endpoint) in ctx.endpoints.iter().enumerate() {
                parse_endpoint(endpoint).map_err(|e| ClientConfigError::Parse {
                    path: origin.to_owned(),
                    field: field(&format!("endpoints[{i}]")),
                    reason: e.to_string(),
                })?;
            }
            pki::check_certificate_pem(&ctx.ca).map_err(|e| pki_err("ca", e))?;
            pki::check_certificate_pem(&ctx.crt).map_err(|e| pki_err("crt", e))?;
            pki::check_key_pair(&ctx.crt, &ctx.key).map_err(|e| pki_err("key", e))?;
        }
        Ok(())
    }

    /// The selected context (or `name`, when given).
    pub fn context(&self, name: Option<&str>) -> Result<(&str, &Context), ClientConfigError> {
        let wanted = name.unwrap_or(&self.context);
        self.contexts
            .get_key_value(wanted)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or_else(|| ClientConfigError::UnknownContext {
                path: "(loaded)".into(),
                context: wanted.to_owned(),
                defined: self.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    pub fn to_yaml(&self) -> Result<String, ClientConfigError> {
        serde_yaml::to_string(self).map_err(|e| ClientConfigError::Serialise(e.to_string()))
    }

    /// Writes the file with mode 0600 (it holds a private key), through a temporary file
    /// and a rename so a reader never sees half of it.
    pub fn save(&self, path: &Path) -> Result<(), ClientConfigError> {
        let text = self.to_yaml()?;
        crate::secrets::write_private_file(path, text.as_bytes()).map_err(|cause| {
            ClientConfigError::Write {
                path: path.to_owned(),
                cause,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> (CertAndKey, Context) {
        let ca = pki::generate_ca("basalt-api", None).unwrap();
        let admin = issue_client_certificate(&ca, Role::Admin, "admin").unwrap();
        let ctx = Context {
            endpoints: vec!["192.0.2.10".into()],
            nodes: vec![],
            ca: ca.cert_pem.clone(),
            crt: admin.cert_pem,
            key: admin.key_pem,
        };
        (ca, ctx)
    }

    #[test]
    fn roles_round_trip_through_text_and_certificates() {
        let ca = pki::generate_ca("basalt-api", None).unwrap();
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
            let cert = issue_client_certificate(&ca, role, "someone").unwrap();
            assert_eq!(Role::from_certificate_pem(&cert.cert_pem).unwrap(), role);
        }
        assert_eq!("operator".parse::<Role>().unwrap(), Role::Operator);
        assert!("root".parse::<Role>().is_err());
        assert!("basalt:root".parse::<Role>().is_err());
    }

    #[test]
    fn a_certificate_without_a_role_is_refused() {
        let ca = pki::generate_ca("basalt-api", None).unwrap();
        let leaf = pki::issue_leaf(
            &ca,
            &LeafSpec {
                common_name: "x".into(),
                organization: Some("system:masters".into()),
                usage: LeafUsage::Client,
                sans: vec![],
            },
        )
        .unwrap();
        let err = Role::from_certificate_pem(&leaf.cert_pem).unwrap_err();
        assert!(matches!(err, ClientConfigError::NoRole { .. }), "{err}");
        // rcgen cannot write two organizations; the rule is checked on the list itself.
        let two = ["basalt:reader".to_owned(), "basalt:admin".to_owned()];
        let err = Role::from_organizations("x", &two).unwrap_err();
        assert!(
            matches!(err, ClientConfigError::AmbiguousRole { .. }),
            "{err}"
        );
        let unknown = ["basalt:root".to_owned()];
        assert!(Role::from_organizations("x", &unknown).is_err());
        let other = ["system:masters".to_owned(), "basalt:reader".to_owned()];
        assert_eq!(Role::from_organizations("x", &other).unwrap(), Role::Reader);
    }

    #[test]
    fn endpoints_get_the_default_port() {
        let ok = |s: &str| parse_endpoint(s).unwrap();
        assert_eq!(ok("192.0.2.10"), ("192.0.2.10".into(), 50000));
        assert_eq!(ok("node-1:50001"), ("node-1".into(), 50001));
        assert_eq!(ok("fd00::1"), ("fd00::1".into(), 50000));
        assert_eq!(ok("[fd00::1]"), ("fd00::1".into(), 50000));
        assert_eq!(ok("[fd00::1]:7"), ("fd00::1".into(), 7));
        for bad in [
            "",
            ":50000",
            "host:0",
            "host:x",
            "[fd00::1",
            "[nothost]:1",
            "a b",
            "https://x",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn save_and_load_round_trip_with_private_mode() {
        let (_, ctx) = context();
        let config = ClientConfig::single("demo", ctx);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("basaltconfig");
        config.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = ClientConfig::load(Some(&path)).unwrap().1;
        assert_eq!(loaded, config);
        assert_eq!(loaded.context(None).unwrap().1.role().unwrap(), Role::Admin);
    }

    #[test]
    fn unknown_fields_and_contexts_are_refused() {
        let (_, ctx) = context();
        let text = ClientConfig::single("demo", ctx).to_yaml().unwrap();
        let typo = text.replace("endpoints:", "endpoint:");
        let err = ClientConfig::parse("t", &typo).unwrap_err().to_string();
        assert!(err.contains("endpoint"), "{err}");
        let other = text.replacen("context: demo", "context: prod", 1);
        let err = ClientConfig::parse("t", &other).unwrap_err();
        assert!(
            matches!(err, ClientConfigError::UnknownContext { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_key_that_does_not_match_is_refused_with_its_field() {
        let (_, mut ctx) = context();
        ctx.key = pki::generate_key_pem().unwrap();
        let text = ClientConfig::single("demo", ctx).to_yaml().unwrap();
        let err = ClientConfig::parse("t", &text).unwrap_err().to_string();
        assert!(err.contains("contexts.demo.key"), "{err}");
    }
}
