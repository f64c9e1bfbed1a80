//! basalt-init is /init in the initramfs, PID 1 stage 1: it mounts the kernel
//! filesystems, loads the kernel modules the initramfs carries (only what mounting the
//! rootfs needs), mounts the read-only rootfs.sqsh, switches root and hands PID 1 to
//! machined, which loads the node's modules from the rootfs.
//!
//! It must never return: PID 1 exiting is a kernel panic without a word of why. Every
//! failure is printed and followed by a reboot after `basalt.panic_reboot` seconds.

mod cmdline;
mod log;
mod loopdev;
mod rootfs;

use basalt_kmod as modules;

use std::convert::Infallible;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use log::{error, info};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The squashfs image the builder places at the initramfs root.
const ROOTFS_IMAGE: &str = "/rootfs.sqsh";
const NEWROOT: &str = "/newroot";
const MACHINED: &str = "/sbin/machined";
/// Files the initramfs carries for the rootfs under their rootfs path (machined, which
/// has only a placeholder in the rootfs, its libraries, the /etc template and the boot
/// drivers): read from the xz squashfs they cost seconds of decompression under TCG.
const PRELOAD_DIR: &str = "/preload";

static CMDLINE: OnceLock<cmdline::Cmdline> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("basalt-init must run as PID 1 (it is PID {0}); refusing to touch this system")]
    NotPid1(i32),
    #[error("{0}")]
    Rootfs(#[from] rootfs::RootfsError),
    #[error("{stage} kernel modules: {source}")]
    Modules {
        stage: &'static str,
        source: modules::LoadError,
    },
    #[error("{0}")]
    Loop(#[from] loopdev::LoopError),
    #[error("{ROOTFS_IMAGE} is missing from the initramfs: the image is incomplete")]
    NoRootfsImage,
    #[error("executing {MACHINED}: {0}")]
    Exec(nix::Error),
}

fn main() {
    let pid = nix::unistd::getpid().as_raw();
    // Lines wait in memory until /dev exists; the banner is still the first one.
    log::reopen();
    log::banner(&format!("basalt-init {VERSION}: starting"));
    if pid != 1 {
        // Never reboot a developer's machine because the binary was run by hand.
        error!("{}", InitError::NotPid1(pid));
        std::process::exit(1);
    }
    // panic=abort would end PID 1 and the kernel would panic with no word of why; a
    // bug must look like any other failure: a message, then a reboot.
    std::panic::set_hook(Box::new(|info| {
        log::emergency(&format!("basalt-init: FATAL: panic: {info}"));
        reboot_after_delay()
    }));
    match run() {
        Ok(never) => match never {},
        Err(e) => fatal(&e),
    }
}

/// Measures one step and logs `<what> (<n> ms)` when it succeeds.
fn step<T, E>(what: impl Fn(&T) -> String, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let start = Instant::now();
    let value = f()?;
    info!("{} ({})", what(&value), ms(start.elapsed()));
    Ok(value)
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn debug() -> bool {
    CMDLINE.get().is_some_and(|c| c.debug)
}

fn run() -> Result<Infallible, InitError> {
    let started = Instant::now();
    step(
        |_| "mounted /dev /proc /sys /run".to_owned(),
        rootfs::mount_kernel_filesystems,
    )?;
    log::reopen();
    // /dev/kmsg rate-limits writers to ten lines per five seconds by default; the boot
    // log is worth more than that. machined inherits this.
    let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
    if let Some(up) = rootfs::uptime() {
        info!("kernel uptime at init start: {:.3} s", up.as_secs_f64());
    }
    let (cmdline, warnings) =
        cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for w in warnings {
        error!("kernel command line: {w}");
    }
    let _ = CMDLINE.set(cmdline);

    let kver = rootfs::kernel_release();
    load_modules("initramfs", &Path::new("/lib/modules").join(&kver))?;

    let image = Path::new(ROOTFS_IMAGE);
    if !image.exists() {
        return Err(InitError::NoRootfsImage);
    }
    let device = step(
        |d: &loopdev::Attached| format!("attached {ROOTFS_IMAGE} to {}", d.path.display()),
        || loopdev::attach_read_only(image),
    )?;
    step(
        |_| {
            format!(
                "rootfs mounted: {} on {NEWROOT} (squashfs, read-only)",
                device.path.display()
            )
        },
        || rootfs::mount_squashfs(&device.path, Path::new(NEWROOT)),
    )?;
    // The mount holds the device now; closing our handle lets autoclear detach it when
    // the squashfs is unmounted at shutdown.
    drop(device);
    // The rootfs' own modules (disks, network, netfilter …) are machined's: it loads them
    // in the background while its first phases run, instead of init holding up the boot.
    let newroot = Path::new(NEWROOT);
    // Before /etc is copied: the template is among the preloaded files.
    if Path::new(PRELOAD_DIR).is_dir() {
        step(
            |n: &usize| {
                format!(
                    "bound {n} files of {PRELOAD_DIR} over the rootfs (machined, its libraries, the /etc template, the boot drivers)"
                )
            },
            || rootfs::bind_preloaded(Path::new(PRELOAD_DIR), newroot),
        )?;
    }
    let etc_source = step(
        |s: &rootfs::EtcSource| format!("mounted tmpfs on /etc /tmp /var, /etc from {s}"),
        || rootfs::prepare_writable(newroot),
    )?;
    let _ = etc_source;
    step(
        |_| "moved /dev /proc /sys /run into the new root".to_owned(),
        || rootfs::move_kernel_filesystems(newroot),
    )?;
    step(
        |freed: &u64| format!("freed the initramfs ({} KiB)", freed / 1024),
        rootfs::delete_initramfs,
    )?;
    step(
        |_| "switch_root done".to_owned(),
        || rootfs::switch_root(newroot),
    )?;
    info!(
        "exec {MACHINED} ({} since init start)",
        ms(started.elapsed())
    );
    log::close();
    Err(InitError::Exec(exec_machined()))
}

fn load_modules(stage: &'static str, dir: &Path) -> Result<(), InitError> {
    let start = Instant::now();
    let outcome = modules::load(dir).map_err(|source| InitError::Modules { stage, source })?;
    for name in &outcome.missing_optional {
        info!("{stage}: optional kernel module {name} is not in this image, skipped");
    }
    for e in &outcome.failed_optional {
        info!("{stage}: optional module not loaded, continuing: {e}");
    }
    if debug() {
        for (name, took) in &outcome.loaded {
            info!("{stage}: loaded {name} ({})", ms(*took));
        }
        for name in &outcome.already {
            info!("{stage}: {name} was already loaded");
        }
        for name in &outcome.builtin {
            info!("{stage}: {name} is built into the kernel");
        }
    }
    info!(
        "{stage}: loaded {} kernel modules ({} already loaded, {} built in) from {} ({})",
        outcome.loaded.len(),
        outcome.already.len(),
        outcome.builtin.len(),
        dir.display(),
        ms(start.elapsed())
    );
    Ok(())
}

fn exec_machined() -> nix::Error {
    use std::ffi::CString;
    let path = c"/sbin/machined";
    let argv = [CString::from(path)];
    let env: Vec<CString> = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/", "TERM=linux"]
        .iter()
        .filter_map(|s| CString::new(*s).ok())
        .collect();
    match nix::unistd::execve(path, &argv, &env) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Prints the failure, waits so a human can read it, reboots. Never returns.
fn fatal(e: &InitError) -> ! {
    log::reopen();
    error!("FATAL: {e}");
    reboot_after_delay()
}

fn reboot_after_delay() -> ! {
    let delay = CMDLINE
        .get()
        .map_or(cmdline::DEFAULT_PANIC_REBOOT, |c| c.panic_reboot);
    log::emergency(&format!(
        "basalt-init: rebooting in {} s (basalt.panic_reboot=<seconds> on the kernel command line changes this)",
        delay.as_secs()
    ));
    std::thread::sleep(delay);
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    log::emergency(&format!(
        "basalt-init: reboot failed: {err:?}; halting here"
    ));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
