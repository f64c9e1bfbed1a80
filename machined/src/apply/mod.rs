//! Configs applied to a running node (`POST /v1/config` after boot).
//!
//! [`plan::plan`] sorts the differences between the running config and the new one into
//! live changes and fields that need a reboot; this module carries the live ones out and
//! runs the modes:
//!
//! * `auto`: live when nothing needs a reboot, else stored and rebooted;
//! * `no-reboot`: live, or refused (409, nothing stored) naming the fields that would
//!   need a reboot;
//! * `try`: like `no-reboot` but NOT stored: when the timeout ends the node goes back to
//!   the config it ran before (any other apply in between ends the trial);
//! * `reboot`: stored, then a reboot; `staged`: stored for the next boot, nothing else.
//!
//! A live apply is all or nothing: the changes run one by one and, when one fails, the
//! reverse plan restores what ran before (every live change is "make it so", so applying
//! the old config's values over a half-applied state restores it), and nothing is stored.

pub mod plan;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use basalt_api::{ApplyConfigResponse, ApplyMode};
use basalt_config::MachineConfig;
use tokio::time::Instant;

use crate::api::{ApplyCommand, NodeState, ProviderError};
use crate::config_source::StateStore;
use crate::log::{info, warning};
use crate::network::{self, Intent};
use crate::sequencer::{Booted, Context};
use crate::shutdown::PowerAction;
use plan::{ChangePlan, LiveChange};

/// The hostname a node has when its config declares none (what the image ships).
const DEFAULT_HOSTNAME: &str = "basalt";

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("{field}: {reason}")]
    Change { field: &'static str, reason: String },
}

fn change_error(field: &'static str) -> impl Fn(String) -> LiveError {
    move |reason| LiveError::Change { field, reason }
}

/// What live changes need to remember between applies.
#[derive(Default)]
pub struct LiveState {
    /// Each sysctl's value before machined first wrote it, so that a key removed from
    /// the config gets the kernel's value back. `None`: the key did not exist then.
    sysctl_baseline: Mutex<BTreeMap<String, Option<String>>>,
}

impl LiveState {
    /// Reads, before they are first written, the current values of `keys`.
    pub fn remember_sysctls<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut baseline = lock(&self.sysctl_baseline);
        for key in keys {
            baseline
                .entry(key.to_owned())
                .or_insert_with(|| read_sysctl(key));
        }
    }

    fn baseline(&self, key: &str) -> Option<Option<String>> {
        lock(&self.sysctl_baseline).get(key).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_sysctl(key: &str) -> Option<String> {
    let key: crate::sysctl::SysctlKey = key.parse().ok()?;
    std::fs::read_to_string(key.path_under(Path::new("/proc/sys")))
        .ok()
        .map(|v| v.trim().to_owned())
}

/// A `try` in progress: where to go back to, and when.
struct Trial {
    revert_to: MachineConfig,
    deadline: Instant,
    seconds: u64,
}

/// Serves applies after boot, one at a time, until the config channel closes.
pub async fn serve_applies(cx: &Context, booted: &Booted) {
    let store = StateStore::system(booted.platform);
    let mut applies = cx.applies.lock().await;
    let mut trial: Option<Trial> = None;
    loop {
        let cmd = match &trial {
            Some(t) => {
                tokio::select! {
                    cmd = applies.recv() => cmd,
                    () = tokio::time::sleep_until(t.deadline) => {
                        if let Some(t) = trial.take() {
                            end_trial(cx, t).await;
                        }
                        continue;
                    }
                }
            }
            None => applies.recv().await,
        };
        let Some(cmd) = cmd else { return };
        let ApplyCommand { apply, reply } = cmd;
        let result = match cx.node.active_config() {
            Ok(running) => {
                one_apply(
                    cx,
                    &store,
                    &running,
                    apply.config,
                    &apply.document,
                    apply.mode,
                    apply.try_timeout,
                    &mut trial,
                )
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            warning!("config: an apply was refused: {e}");
        }
        let reboot = matches!(&result, Ok(r) if r.reboot);
        let _ = reply.send(result);
        if reboot {
            let _ = cx.node.power(PowerAction::Reboot);
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_apply(
    cx: &Context,
    store: &StateStore,
    running: &MachineConfig,
    new: MachineConfig,
    document: &str,
    mode: ApplyMode,
    try_timeout: Option<Duration>,
    trial: &mut Option<Trial>,
) -> Result<ApplyConfigResponse, ProviderError> {
    let changes = plan::plan(running, &new);
    let response = |message: String, reboot: bool, changes: &ChangePlan| ApplyConfigResponse {
        mode,
        message,
        reboot,
        applied_live: if reboot {
            Vec::new()
        } else {
            changes.live_fields()
        },
        needs_reboot: changes.needs_reboot.clone(),
    };
    let store_it = || {
        store.store_apply(&crate::api::ValidatedApply {
            config: new.clone(),
            document: document.to_owned(),
            mode,
            try_timeout,
            maintenance: false,
        })
    };
    match mode {
        ApplyMode::Staged => {
            store_it()?;
            info!("config: new config stored on STATE, staged for the next boot");
            Ok(response(
                "stored on STATE; staged for the next boot".to_owned(),
                false,
                &ChangePlan {
                    live: Vec::new(),
                    ..changes
                },
            ))
        }
        ApplyMode::Reboot => {
            store_it()?;
            info!("config: new config stored on STATE (reboot); rebooting to apply it");
            Ok(response(
                "stored on STATE; rebooting to apply it".to_owned(),
                true,
                &changes,
            ))
        }
        ApplyMode::Auto if !changes.needs_reboot.is_empty() => {
            store_it()?;
            info!(
                "config: new config stored on STATE (auto); rebooting for {}",
                changes.needs_reboot.join(", ")
            );
            Ok(response(
                format!(
                    "stored on STATE; rebooting because {} cannot change on a running node",
                    changes.needs_reboot.join(", ")
                ),
                true,
                &changes,
            ))
        }
        ApplyMode::NoReboot | ApplyMode::Try if !changes.needs_reboot.is_empty() => {
            Err(ProviderError::Conflict(format!(
                "mode {mode} cannot change {} without a reboot; nothing was stored or changed (use auto or reboot)",
                changes.needs_reboot.join(", ")
            )))
        }
        ApplyMode::Auto | ApplyMode::NoReboot => {
            live_apply(cx, running, &new, &changes).await?;
            if let Err(e) = store_it() {
                // The node must not run what it would not boot with: undo.
                undo(cx, &new, running).await;
                return Err(e);
            }
            *trial = None;
            cx.node.set_config(new);
            Ok(response(
                applied_message("stored on STATE", &changes),
                false,
                &changes,
            ))
        }
        ApplyMode::Try => {
            // A second try keeps the first one's way back.
            let revert_to = trial.as_ref().map_or(running, |t| &t.revert_to).clone();
            let back = plan::plan(&new, &revert_to);
            if !back.needs_reboot.is_empty() {
                return Err(ProviderError::Conflict(format!(
                    "mode try cannot take this config: going back would need a reboot for {}; nothing was changed (use no-reboot)",
                    back.needs_reboot.join(", ")
                )));
            }
            live_apply(cx, running, &new, &changes).await?;
            let seconds = try_timeout.unwrap_or(Duration::from_secs(60)).as_secs();
            info!(
                "config: trying a new config for {seconds} s (not stored); it reverts by itself unless applied again with another mode"
            );
            *trial = Some(Trial {
                revert_to,
                deadline: Instant::now() + Duration::from_secs(seconds),
                seconds,
            });
            cx.node.set_config(new);
            Ok(response(
                applied_message(
                    &format!(
                        "NOT stored; reverting in {seconds} s unless applied again with mode no-reboot or auto"
                    ),
                    &changes,
                ),
                false,
                &changes,
            ))
        }
    }
}

fn applied_message(stored: &str, changes: &ChangePlan) -> String {
    if changes.is_empty() {
        format!("{stored}; nothing differs from the running config")
    } else {
        format!(
            "{stored}; applied without a reboot: {}",
            changes.live_fields().join(", ")
        )
    }
}

/// The trial's time is up: back to the config from before it.
async fn end_trial(cx: &Context, trial: Trial) {
    let Ok(current) = cx.node.active_config() else {
        return;
    };
    let back = plan::plan(&current, &trial.revert_to);
    info!(
        "config: the {} s try period ended; reverting {}",
        trial.seconds,
        if back.live.is_empty() {
            "(nothing differs)".to_owned()
        } else {
            back.live_fields().join(", ")
        }
    );
    match live_apply(cx, &current, &trial.revert_to, &back).await {
        Ok(()) => {
            cx.node.set_config(trial.revert_to);
            info!("config: reverted to the stored config");
        }
        Err(e) => warning!("config: reverting the tried config failed: {e}"),
    }
}

/// Carries out `changes` (from `running` to `new`); on a failure, restores `running`.
async fn live_apply(
    cx: &Context,
    running: &MachineConfig,
    new: &MachineConfig,
    changes: &ChangePlan,
) -> Result<(), ProviderError> {
    match execute(cx, running, new, changes).await {
        Ok(()) => {
            for field in changes.live_fields() {
                info!("config: {field} applied without a reboot");
            }
            Ok(())
        }
        Err(e) => {
            warning!("config: applying live failed at {e}; restoring the running config");
            undo(cx, new, running).await;
            Err(ProviderError::Failed {
                what: "applying the config live",
                reason: format!("{e}; the running config was restored and nothing was stored"),
            })
        }
    }
}

/// Best effort: makes the node match `to` again after a partial change from it.
async fn undo(cx: &Context, from: &MachineConfig, to: &MachineConfig) {
    let back = plan::plan(from, to);
    if let Err(e) = execute(cx, from, to, &back).await {
        warning!("config: restoring the running config failed too: {e}");
    }
}

async fn execute(
    cx: &Context,
    running: &MachineConfig,
    new: &MachineConfig,
    changes: &ChangePlan,
) -> Result<(), LiveError> {
    if !cx.pid1 {
        return Ok(());
    }
    // The network goes first: it is planned before anything changes, so a link the node
    // does not have fails the apply while nothing has happened yet.
    let network_changes = changes
        .live
        .iter()
        .any(|c| matches!(c, LiveChange::Network | LiveChange::Hostname(_)));
    if network_changes && network_intent(running) != network_intent(new) {
        replan_network(cx, new).await?;
    }
    for change in &changes.live {
        let field = change.field();
        let err = change_error(field);
        match change {
            LiveChange::Network => {}
            LiveChange::Hostname(name) => {
                let name = name.as_deref().unwrap_or(DEFAULT_HOSTNAME);
                crate::sequencer::set_hostname(name).map_err(|e| err(e.to_string()))?;
                crate::sequencer::write_file(
                    Path::new("/etc/hostname"),
                    &format!("{name}\n"),
                    0o644,
                )
                .map_err(|e| err(e.to_string()))?;
            }
            LiveChange::Sysctls { set, removed } => {
                cx.live
                    .remember_sysctls(set.iter().map(|(k, _)| k.as_str()));
                let list: Vec<(&str, &str, Option<&'static str>)> = set
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str(), None))
                    .collect();
                let applied = crate::sysctl::apply(Path::new("/proc/sys"), &list)
                    .map_err(|e| err(e.to_string()))?;
                if let Some((key, _)) = applied.missing.first() {
                    return Err(err(format!(
                        "{} does not exist in this kernel",
                        key.as_str()
                    )));
                }
                for key in removed {
                    match cx.live.baseline(key) {
                        Some(Some(value)) => {
                            crate::sysctl::apply(
                                Path::new("/proc/sys"),
                                &[(key.as_str(), value.as_str(), None)],
                            )
                            .map_err(|e| err(e.to_string()))?;
                        }
                        _ => warning!(
                            "config: {key} is no longer declared; its value before machined set it is unknown, so it stays until the next boot"
                        ),
                    }
                }
            }
            LiveChange::Files { write, remove } => {
                for f in write {
                    crate::sequencer::write_file(
                        Path::new(f.path.as_str()),
                        &f.content,
                        f.permissions.bits(),
                    )
                    .map_err(|e| err(e.to_string()))?;
                }
                for path in remove {
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(err(format!("removing {path}: {e}"))),
                    }
                }
            }
            LiveChange::TimeServers => crate::sequencer::restart_time_sync(cx, new).await,
            LiveChange::LoadModules(_) => load_modules(new).await.map_err(err)?,
            LiveChange::RegistryMirrors | LiveChange::SandboxImage => {
                use crate::services::containerd;
                containerd::write_files(
                    Path::new(containerd::CONFIG_FILE),
                    &containerd::ContainerdSettings::from_config(new),
                    &containerd::mirrors_from_config(new),
                )
                .map_err(|e| err(e.to_string()))?;
                if matches!(change, LiveChange::SandboxImage)
                    && let Some(supervisor) = cx.node.supervisor()
                {
                    supervisor
                        .restart("containerd")
                        .await
                        .map_err(|e| err(format!("restarting containerd: {e}")))?;
                }
            }
        }
    }
    Ok(())
}

/// Kernel modules the config declares, loaded on a running node. The whole list goes
/// to the loader (already loaded ones are no-ops) so its errors name the right index of
/// `machine.kernel.modules`.
async fn load_modules(new: &MachineConfig) -> Result<(), String> {
    let Some(loader) = crate::modules::system() else {
        return Err("the module loader is not running".to_owned());
    };
    loader
        .load_config(&new.machine.kernel.modules)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn network_intent(config: &MachineConfig) -> Intent {
    Intent::from_config(Some(config))
}

/// Replaces the running network with `new`'s plan, keeping the old one when the new
/// one cannot even be planned.
async fn replan_network(cx: &Context, new: &MachineConfig) -> Result<(), LiveError> {
    let err = change_error("machine.network");
    let mut slot = cx.network.lock().await;
    let Some(old) = slot.take() else {
        return Err(err("the network is not running".to_owned()));
    };
    let options = network::Options {
        set_kernel_hostname: cx.pid1,
        ..Default::default()
    };
    match network::reconfigure(old, &network_intent(new), &options).await {
        Ok(net) => {
            cx.node.set_network(Some(net.state()));
            *slot = Some(net);
            Ok(())
        }
        Err((kept, e)) => {
            cx.node.set_network(kept.as_ref().map(|n| n.state()));
            *slot = kept;
            Err(err(e.to_string()))
        }
    }
}
