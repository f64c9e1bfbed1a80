//! basalt-config owns what an operator declares about a node: the machine-config
//! document (model, strict parsing with field paths, semantic validation, redaction),
//! the generation of a cluster's secrets and PKI, and the import of Ignition configs.
//! Every other crate receives configuration through the types defined here, already
//! validated, so nothing further in needs to check a value again.
