//! machined is PID 1 stage 2 of a Basalt node: it runs the boot sequence, acquires and
//! persists the machine config, owns network state, supervises services, serves the
//! node API and provisions Kubernetes.
//!
//! It never exits as PID 1: a fatal error is logged and the node reboots after
//! `basalt.panic_reboot` seconds. Started by hand (not PID 1, e.g. in tests) it leaves
//! the host alone and exits on SIGTERM/SIGINT.
mod api;
mod apply;
mod cgroups;
mod config_source;
mod disks;
mod log;
mod modules;
mod network;
mod node;
mod pid1;
mod sequencer;
mod services;
mod shutdown;
mod sysctl;
mod time;
mod trust;

use std::sync::Arc;
use std::time::Duration;

use log::{error, info};
use shutdown::PowerAction;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const DEFAULT_PANIC_REBOOT: Duration = Duration::from_secs(30);

fn main() {
    let is_pid1 = pid1::is_pid1();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let debug = cmdline.split_whitespace().any(|w| w == "basalt.debug");
    log::init(is_pid1, debug);
    info!(
        "machined {VERSION}: starting as {}",
        if is_pid1 {
            "PID 1".to_owned()
        } else {
            format!("pid {}", std::process::id())
        }
    );
    if let Some(up) = uptime() {
        info!("kernel uptime at machined start: {:.3} s", up.as_secs_f64());
    }
    if is_pid1 {
        // The release profile aborts on panic; PID 1 dying is a kernel panic that shows
        // no reason. Say why, then reboot like any other fatal error.
        let delay = panic_reboot(&cmdline);
        std::panic::set_hook(Box::new(move |info| {
            log::emergency(&format!("machined: FATAL: panic: {info}"));
            log::emergency(&format!(
                "machined: rebooting in {} s (basalt.panic_reboot=<seconds> on the kernel command line changes this)",
                delay.as_secs()
            ));
            std::thread::sleep(delay);
            nix::unistd::sync();
            // Not shutdown::power: it logs through the lock the panic may hold.
            let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
            log::emergency(&format!("machined: reboot failed: {err:?}"));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }));
    }
    // One thread: machined mostly waits, and every thread costs stack and RSS.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fatal(
            is_pid1,
            &cmdline,
            &format!("starting the async runtime: {e}"),
        ),
    };
    runtime.block_on(run(is_pid1, &cmdline));
}

async fn run(is_pid1: bool, cmdline: &str) {
    let exits = services::ChildExits::new();
    let hooks = Arc::new(shutdown::Hooks::default());
    if is_pid1 {
        pid1::disable_ctrl_alt_del();
        let exits = exits.clone();
        tokio::spawn(async move {
            if let Err(e) = pid1::reap_forever(exits).await {
                error!("the orphan reaper stopped: {e}");
            }
        });
    }
    // Power requests come from signals (ctrl-alt-del, SIGPWR) and from the API.
    let (power_tx, mut power_rx) = tokio::sync::mpsc::channel(4);
    let signals = power_tx.clone();
    tokio::spawn(async move {
        if let Err(e) = pid1::power_signals(signals).await {
            error!("cannot listen for power signals: {e}");
        }
    });
    let node = Arc::new(node::Node::new(power_tx));
    let cx = sequencer::Context::new(is_pid1, hooks.clone(), exits, node);
    // Hooks run last registered first: disks are unmounted after the network released
    // its leases, which happens after the services (registered by the api phase) stopped.
    if is_pid1 {
        hooks.register("disks", || async {
            if let Err(e) = disks::unmount_all() {
                error!("shutdown: {e}");
            }
        });
    }
    let network = cx.network.clone();
    hooks.register("network", move || async move {
        if let Some(net) = network.lock().await.take() {
            net.shutdown().await;
        }
    });
    let time = cx.time.clone();
    hooks.register("time sync", move || async move {
        if let Some(sync) = time.lock().await.take() {
            sync.stop().await;
        }
    });
    let boot = sequencer::boot(&cx);
    tokio::pin!(boot);
    let booted = tokio::select! {
        result = &mut boot => match result {
            Ok(booted) => booted,
            Err(e) => {
                error!("boot failed: {e}");
                shutdown_after_failure(&hooks, is_pid1, cmdline).await;
                return;
            }
        },
        Some(action) = power_rx.recv() => {
            shutdown::run(&hooks, action, is_pid1).await;
            return;
        }
    };
    let action = tokio::select! {
        () = apply::serve_applies(&cx, &booted) => power_rx.recv().await,
        action = power_rx.recv() => action,
    };
    shutdown::run(&hooks, action.unwrap_or(PowerAction::Reboot), is_pid1).await;
}

/// A failed boot: say why, give a human time to read it, go down cleanly, reboot.
async fn shutdown_after_failure(hooks: &shutdown::Hooks, is_pid1: bool, cmdline: &str) {
    let delay = panic_reboot(cmdline);
    if is_pid1 {
        error!(
            "rebooting in {} s (basalt.panic_reboot=<seconds> on the kernel command line changes this)",
            delay.as_secs()
        );
        tokio::time::sleep(delay).await;
    }
    shutdown::run(hooks, PowerAction::Reboot, is_pid1).await;
    std::process::exit(1);
}

fn panic_reboot(cmdline: &str) -> Duration {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("basalt.panic_reboot="))
        .filter_map(|v| v.parse().ok())
        .next_back()
        .map_or(DEFAULT_PANIC_REBOOT, Duration::from_secs)
}

/// Before the runtime exists there is no clean way down: log, wait, reboot.
fn fatal(is_pid1: bool, cmdline: &str, what: &str) -> ! {
    error!("FATAL: {what}");
    if !is_pid1 {
        std::process::exit(1);
    }
    std::thread::sleep(panic_reboot(cmdline));
    nix::unistd::sync();
    shutdown::power(PowerAction::Reboot)
}

fn uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    Duration::try_from_secs_f64(text.split_whitespace().next()?.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_reboot_reads_the_last_valid_word() {
        assert_eq!(panic_reboot("quiet"), DEFAULT_PANIC_REBOOT);
        assert_eq!(
            panic_reboot("basalt.panic_reboot=5 basalt.panic_reboot=x"),
            Duration::from_secs(5)
        );
        assert_eq!(panic_reboot("basalt.panic_reboot=0"), Duration::ZERO);
    }
}
