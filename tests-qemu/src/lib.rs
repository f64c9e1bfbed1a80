//! basalt-tests-qemu owns the end-to-end tests: it builds (or takes) a Basalt image,
//! boots it in QEMU (KVM when it works, TCG otherwise), feeds configs over fw_cfg or the
//! kernel command line, watches the serial console and talks to the node API.
//!
//! The harness is basaltctl's lab machinery (`basaltctl::lab`), re-exported here under
//! the names the tests use, so `basaltctl lab` and the tests boot VMs the same way:
//!
//! ```no_run
//! use basalt_tests_qemu::{Qemu, image_dir};
//! use std::time::Duration;
//! let dir = image_dir()?;
//! let mut vm = Qemu::builder()
//!     .kernel(dir.join("vmlinuz"))
//!     .initrd(dir.join("initramfs.zst"))
//!     .append("basalt.debug")
//!     .memory_mib(1024)
//!     .no_reboot()
//!     .spawn()?;
//! vm.wait_for_console("machined: phase", Duration::from_secs(120))?;
//! # Ok::<(), basalt_tests_qemu::HarnessError>(())
//! ```

pub use basaltctl::lab::accel::{Accel, detect_accel};
pub use basaltctl::lab::console::ConsoleLog;
pub use basaltctl::lab::overlay::{OverlayFile, initrd_with_overlay, newc_archive};
pub use basaltctl::lab::qemu::{
    HostFwd, IMAGE_DIR_ENV, Qemu, QemuBuilder, QemuError as HarnessError, Result, RunningQemu,
    copy_ovmf_vars, free_port, image_dir, image_dir_with,
};
/// Re-exported so tests can run host commands (image builds) with the same version.
pub use xshell;

/// The basaltctl binary the CLI-driven tests run: `$BASALTCTL`, else built from this
/// workspace (debug) into its target dir.
pub fn basaltctl_binary() -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    if let Some(path) = std::env::var_os("BASALTCTL") {
        return PathBuf::from(path);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new(&cargo)
        .args(["build", "-p", "basaltctl", "--bin", "basaltctl"])
        .current_dir(&workspace)
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "cargo build -p basaltctl failed: {status:?}"
    );
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("debug").join("basaltctl");
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}
