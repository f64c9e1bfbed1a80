//! basalt-config owns what an operator declares about a node: the machine-config
//! document (model, strict parsing with field paths, semantic validation, redaction),
//! the generation of a cluster's secrets and PKI, and the import of Ignition configs.
//! Every other crate receives configuration through the types defined here, already
//! validated, so nothing further in needs to check a value again.

// Owned by the PKI/secrets work: certificate authorities and leaf certificates, the
// secrets bundle, generating machine configs from it, config patches, and the client
// config file (`basaltconfig`).
pub mod client_config;
pub mod generate;
pub mod patch;
pub mod pki;
pub mod secrets;
