//! basalt-image is the reproducible image builder: it resolves and pins Debian inputs
//! (`image/inputs.lock`), assembles the initramfs with its squashfs rootfs, and writes
//! the UKI, the raw disk image, the PXE bundle, SHA256SUMS and an SBOM.
fn main() {}
