//! basalt-config owns what an operator declares about a node: the machine-config
//! document (model, strict parsing with field paths, semantic validation, redaction),
//! the generation of a cluster's secrets and PKI, and the import of Ignition configs.
//! Every other crate receives configuration through the types defined here, already
//! validated, so nothing further in needs to check a value again.
//!
//! The document is Talos-like: one YAML (or JSON) mapping starting with
//! `version: v1alpha1`, then `machine:` (this node) and `cluster:` (shared by all
//! nodes), with camelCase field names. PEM material is stored as PEM text. See
//! `docs/configuration.md` for every field.

#[doc(hidden)]
pub mod fuzzing;
pub mod ignition;
pub mod model;
pub mod parse;
pub mod redact;
pub mod reference;
pub mod validate;
pub mod values;

pub use model::*;
pub use parse::{Format, ParseError};
pub use validate::{Mode, UnknownMode, ValidationError, ValidationErrors};
pub use values::{
    AbsolutePath, BootstrapToken, Cidr, ClusterName, ContainerImage, DnsName, Endpoint, FileMode,
    Hostname, InterfaceName, IpAddress, KernelModuleName, KernelModuleParameter, KubernetesVersion,
    MacAddress, MirrorEndpoint, PemCertificate, PemPrivateKey, REDACTED, RegistryName,
    SubjectAltName, SysctlKey, SysctlValue, TimeServer, ValueError,
};

// Owned by the PKI/secrets work: certificate authorities and leaf certificates, the
// secrets bundle, generating machine configs from it, config patches, and the client
// config file (`basaltconfig`).
pub mod client_config;
pub mod generate;
pub mod patch;
pub mod pki;
pub mod secrets;
