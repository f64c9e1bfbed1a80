//! basalt-image library: everything the builder does, as modules the binary wires up.
pub mod apt;
pub mod build;
pub mod cpio;
pub mod deb;
pub mod debversion;
pub mod disk;
pub mod elf;
pub mod fetch;
pub mod lock;
pub mod modules;
pub mod oci;
pub mod repro;
pub mod rootfs;
pub mod sbom;
pub mod tree;
pub mod uki;
