//! basalt-image library: everything the builder does, as modules the binary wires up.
pub mod apt;
pub mod build;
pub mod debversion;
pub mod fetch;
pub mod lock;
pub mod repro;
