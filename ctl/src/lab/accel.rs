//! Choosing between KVM and TCG. /dev/kvm can exist, answer KVM_GET_API_VERSION and
//! even create VMs while guests still hang (nested setups with a broken CPU model), so
//! the only reliable test is to run a guest: SeaBIOS with its debug console, which
//! reaches "No bootable device" in well under a second when the accelerator works.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The `-accel` value a node runs with. TCG runs every vCPU in one host thread:
    /// with one thread per vCPU (MTTCG, QEMU's default) a guest that loads modules on
    /// one CPU while the other runs code being live-patched (`text_poke_bp`: jump labels
    /// in a loading module) can livelock on the int3 — seen here as "soft lockup …
    /// do_free_init / kmod" and a boot that never ends, once in about forty boots.
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg,thread=single",
        }
    }
}

/// Overrides the probe: `BASALT_QEMU_ACCEL=kvm|tcg`.
pub const ACCEL_ENV: &str = "BASALT_QEMU_ACCEL";

const PROBE_TIMEOUT: Duration = Duration::from_secs(8);
const PROBE_DONE: &str = "No bootable device";

/// KVM if a probe guest runs under it, TCG otherwise. Probed once per process, and the
/// verdict is cached per host boot in $TMPDIR so every test binary does not pay for it.
pub fn detect_accel(qemu: &Path) -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| {
        match std::env::var(ACCEL_ENV).as_deref() {
            Ok("kvm") => return Accel::Kvm,
            Ok("tcg") => return Accel::Tcg,
            _ => {}
        }
        let cache = cache_path();
        if let Some(cached) = cache.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            match cached.trim() {
                "kvm" => return Accel::Kvm,
                "tcg" => return Accel::Tcg,
                _ => {}
            }
        }
        let accel = if kvm_device_answers() && probe_guest_runs(qemu, Accel::Kvm) {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        if let Some(p) = cache {
            let _ = std::fs::write(p, accel.qemu_name());
        }
        accel
    })
}

fn cache_path() -> Option<std::path::PathBuf> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(std::env::temp_dir().join(format!("basalt-qemu-accel-v2-{}", boot_id.trim())))
}

/// Cheap first check: /dev/kvm opens and speaks the stable API version (12).
fn kvm_device_answers() -> bool {
    use std::os::fd::AsRawFd;
    let Ok(kvm) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return false;
    };
    nix::ioctl_none!(kvm_get_api_version, 0xAE, 0x00);
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int.
    matches!(unsafe { kvm_get_api_version(kvm.as_raw_fd()) }, Ok(12))
}

/// Runs SeaBIOS under `accel` and waits until its debug console says it gave up
/// looking for a boot device, i.e. the guest really executed.
pub fn probe_guest_runs(qemu: &Path, accel: Accel) -> bool {
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let debug_log = dir.path().join("seabios.log");
    let mut chardev = std::ffi::OsString::from("file,id=dbg,path=");
    chardev.push(&debug_log);
    let Ok(mut child) = Command::new(qemu)
        .args([
            "-accel",
            accel.qemu_name(),
            "-machine",
            "q35",
            "-display",
            "none",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        // The CPU model real runs use: a host whose KVM runs SeaBIOS with the default
        // CPU can still abort on `-cpu host` MSRs (seen: "failed to set MSR 0x10a").
        .args(["-cpu", super::qemu::cpu_model(accel), "-smp", "2"])
        .args(["-serial", "none", "-m", "256", "-chardev"])
        .arg(chardev)
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let ran = loop {
        if std::fs::read(&debug_log).is_ok_and(|b| String::from_utf8_lossy(&b).contains(PROBE_DONE))
        {
            break true;
        }
        if Instant::now() >= deadline || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TCG always works where QEMU is installed, so the probe must say yes to it; this
    /// guards the probe itself against always answering "no".
    #[test]
    fn probe_accepts_tcg() {
        assert!(probe_guest_runs(
            Path::new("qemu-system-x86_64"),
            Accel::Tcg
        ));
    }

    #[test]
    fn probe_rejects_a_missing_qemu() {
        assert!(!probe_guest_runs(
            Path::new("/nonexistent/qemu-system-x86_64"),
            Accel::Kvm
        ));
    }

    /// On this host KVM hangs guests; wherever it does, detection must fall back.
    #[test]
    fn detection_agrees_with_the_kvm_probe() {
        let qemu = Path::new("qemu-system-x86_64");
        let expected = if std::env::var(ACCEL_ENV).is_ok() {
            return;
        } else if kvm_device_answers() && probe_guest_runs(qemu, Accel::Kvm) {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        assert_eq!(detect_accel(qemu), expected);
    }
}
