//! basalt-tests-qemu owns the end-to-end tests: it builds (or takes) a Basalt image,
//! boots it in QEMU (KVM when it works, TCG otherwise), feeds configs over fw_cfg or the
//! kernel command line, watches the serial console and talks to the node API.
