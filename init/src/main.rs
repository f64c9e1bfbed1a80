//! basalt-init is /init in the initramfs, PID 1 stage 1: it mounts the kernel
//! filesystems, loads the kernel modules the initramfs carries, mounts the read-only
//! rootfs.sqsh, switches root and hands PID 1 to machined.
fn main() {}
