//! The boot, top to bottom. [`boot`] reads as the list of phases a node goes through;
//! each runs through [`phase`], which bounds it with a timeout and logs
//! `phase <name> done (<n> ms)`. Values flow from one phase to the next as ordinary
//! variables (the config the config phase found is what the disks phase prepares for).
//! A phase error or timeout ends the boot (the caller reboots).
//!
//! Without a config the node enters maintenance mode: DHCP on every link, the API with a
//! self-signed certificate whose fingerprint is on the console, waiting for an apply.
//! A valid apply is stored on STATE and the boot continues from the disks phase's
//! output, without a reboot.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basalt_api::{ApplyConfigResponse, ApplyMode, ServiceState};
use basalt_config::{MachineConfig, MachineType, Mode};
use tokio::sync::{Mutex, mpsc};

use crate::api::{
    self, ApiConfig, ApiMode, ApplyCommand, ConfigSink, ProviderError, ServerIdentity,
};
use crate::config_source::{self, AcquireError, Acquired, Environment, StateStore};
use crate::disks::{self, DiskOutcome, Paths};
use crate::log::{error, info, warning};
use crate::network::{self, Intent, Network};
use crate::node::{Node, Stage};
use crate::services::{self, ChildExits, Reaping, Supervisor, SupervisorConfig};
use crate::shutdown::{Hooks, PowerAction};

/// What every phase may use.
pub struct Context {
    /// False when machined runs as a normal process (tests): phases that would change
    /// the host (mounts, sysctls, hostname, network) skip themselves.
    pub pid1: bool,
    pub hooks: Arc<Hooks>,
    pub exits: Arc<ChildExits>,
    /// What the API reads; the sequencer publishes into it as the boot goes.
    pub node: Arc<Node>,
    /// The API's end of the config channel (handed to every API server started).
    pub sink: ConfigSink,
    /// The sequencer's end: applies arrive here, in maintenance mode and after boot.
    pub applies: Mutex<mpsc::Receiver<ApplyCommand>>,
    /// The running network; shared with the shutdown hook that releases DHCP.
    pub network: Arc<Mutex<Option<Network>>>,
    /// The SNTP client for the config's time servers; shared with its shutdown hook.
    pub time: Arc<Mutex<Option<crate::time::TimeSync>>>,
    /// What applying configs to the running node remembers (sysctl values from before).
    pub live: crate::apply::LiveState,
}

impl Context {
    pub fn new(pid1: bool, hooks: Arc<Hooks>, exits: Arc<ChildExits>, node: Arc<Node>) -> Self {
        let (sink, applies) = api::config_channel();
        Self {
            pid1,
            hooks,
            exits,
            node,
            sink,
            applies: Mutex::new(applies),
            network: Arc::new(Mutex::new(None)),
            time: Arc::new(Mutex::new(None)),
            live: Default::default(),
        }
    }
}

/// How a phase ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done, with something the operator should know.
    DoneWith(String),
    /// Deliberately did nothing (not PID 1).
    Skipped(String),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SequencerError {
    #[error("phase {phase} failed: {source}")]
    Failed {
        phase: &'static str,
        source: BoxError,
    },
    #[error("phase {phase} did not finish within {timeout:?}")]
    Timeout {
        phase: &'static str,
        timeout: Duration,
    },
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What the boot settled on, for what runs after it (applies, shutdown).
pub struct Booted {
    pub platform: Mode,
}

/// The boot sequence.
pub async fn boot(cx: &Context) -> Result<Booted, SequencerError> {
    let started = Instant::now();
    if cx.pid1 {
        // The node's kernel modules load in the background; phases wait for theirs.
        crate::modules::start_system();
    }
    phase(cx, "cgroups", secs(10), cgroups(cx)).await?;
    phase(cx, "sysctls", secs(10), sysctls(cx)).await?;
    phase(cx, "hostname", secs(5), hostname(cx)).await?;
    let platform = phase(cx, "platform", secs(1), platform()).await?;
    if !cx.pid1 {
        info!("not PID 1: config, disks, network, api and services leave the host alone");
        finish(cx, started, Duration::ZERO);
        return Ok(Booted { platform });
    }
    phase(cx, "modules", secs(60), crate::modules::early_phase()).await?;
    // STATE first: the config persisted there is one of the sources.
    phase(cx, "state", secs(30), early_state()).await?;
    let env = Environment::system(platform);
    if config_source::needs_network(&env) {
        // basalt.config=<URL>: the config is fetched, so the network comes first.
        phase(cx, "network", secs(120), network(cx, None)).await?;
    }
    let acquired = phase(cx, "config", secs(600), config(&env)).await?;
    let waited = Instant::now();
    let config = match acquired {
        Ok(Some(acquired)) => {
            match phase(cx, "disks", secs(300), disks(Some(&acquired), platform)).await {
                Ok(_) => acquired.config,
                // Rebooting would not bring a missing disk back: stay up and say why.
                Err(failure) => {
                    phase_untimed(
                        cx,
                        "disk-wait",
                        wait_for_disk(cx, platform, acquired.config, failure),
                    )
                    .await?
                }
            }
        }
        Ok(None) => {
            let disk = phase(cx, "disks", secs(300), disks(None, platform)).await?;
            phase_untimed(cx, "maintenance", maintenance(cx, platform, None, &disk)).await?
        }
        Err(problem) => {
            let disk = phase(cx, "disks", secs(300), disks(None, platform)).await?;
            phase_untimed(
                cx,
                "maintenance",
                maintenance(cx, platform, Some(problem), &disk),
            )
            .await?
        }
    };
    // Time spent waiting for an operator in maintenance mode is not boot time.
    let waited = match cx.node.stage() {
        Stage::Maintenance(_) | Stage::Waiting(_) => waited.elapsed(),
        _ => Duration::ZERO,
    };
    cx.node.set_config(config.clone());
    cx.live
        .remember_sysctls(config.machine.sysctls.keys().map(|k| k.as_str()));
    phase(cx, "machine", secs(30), machine(&config)).await?;
    phase(cx, "network", secs(120), network(cx, Some(&config))).await?;
    let supervisor = phase(cx, "api", secs(60), api_phase(cx, &config, platform)).await?;
    phase(cx, "services", secs(300), services(&supervisor, &config)).await?;
    cx.node.set_stage(Stage::Running);
    finish(cx, started, waited);
    Ok(Booted { platform })
}

/// The line the measurements in docs/boot.md come from.
fn finish(cx: &Context, started: Instant, in_maintenance: Duration) {
    let _ = cx;
    let rss = rss_kib().map_or_else(|| "unknown".to_owned(), |k| format!("{k} KiB"));
    let total = started.elapsed().saturating_sub(in_maintenance);
    if in_maintenance.is_zero() {
        info!("boot complete in {} ms, RSS {rss}", total.as_millis());
    } else {
        info!(
            "boot complete in {} ms (plus {} ms waiting in maintenance mode), RSS {rss}",
            total.as_millis(),
            in_maintenance.as_millis()
        );
    }
}

/// Runs one phase: bounded by `timeout`, logged with its duration and outcome.
pub async fn phase<T>(
    cx: &Context,
    name: &'static str,
    timeout: Duration,
    run: impl Future<Output = Result<(T, Outcome), BoxError>>,
) -> Result<T, SequencerError> {
    cx.node.set_stage(Stage::Booting(name));
    let start = Instant::now();
    let result = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| SequencerError::Timeout {
            phase: name,
            timeout,
        })?;
    report(name, start, result)
}

/// A phase that waits on a person (maintenance mode): no timeout.
async fn phase_untimed<T>(
    cx: &Context,
    name: &'static str,
    run: impl Future<Output = Result<(T, Outcome), BoxError>>,
) -> Result<T, SequencerError> {
    let _ = cx;
    let start = Instant::now();
    let result = run.await;
    report(name, start, result)
}

fn report<T>(
    name: &'static str,
    start: Instant,
    result: Result<(T, Outcome), BoxError>,
) -> Result<T, SequencerError> {
    let (value, outcome) = result.map_err(|source| SequencerError::Failed {
        phase: name,
        source,
    })?;
    let took = start.elapsed().as_millis();
    match outcome {
        Outcome::DoneWith(note) => info!("phase {name} done ({took} ms): {note}"),
        Outcome::Skipped(why) => info!("phase {name} skipped: {why}"),
    }
    Ok(value)
}

/// Resident set size from /proc/self/status (budget: 16 MiB after boot).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn not_pid1() -> Outcome {
    Outcome::Skipped("not PID 1, leaving the host alone".to_owned())
}

async fn cgroups(cx: &Context) -> Result<((), Outcome), BoxError> {
    if !cx.pid1 {
        return Ok(((), not_pid1()));
    }
    let plan = crate::cgroups::setup(Path::new(crate::cgroups::CGROUP_ROOT))?;
    let enabled = plan.enable.join(" ");
    let note = if plan.missing_optional.is_empty() {
        format!("controllers {enabled}")
    } else {
        format!(
            "controllers {enabled}; the kernel lacks {}",
            plan.missing_optional.join(" ")
        )
    };
    Ok(((), Outcome::DoneWith(note)))
}

/// Writes a list of sysctls; a key the kernel lacks is a warning naming the module
/// that would provide it.
fn apply_sysctls(list: &[(&str, &str, Option<&'static str>)]) -> Result<Outcome, BoxError> {
    let applied = crate::sysctl::apply(Path::new("/proc/sys"), list)?;
    for (key, needs) in &applied.missing {
        match needs {
            Some(module) => warning!(
                "sysctl {} does not exist: is the {module} module in the image?",
                key.as_str()
            ),
            None => warning!("sysctl {} does not exist in this kernel", key.as_str()),
        }
    }
    Ok(Outcome::DoneWith(if applied.missing.is_empty() {
        format!("{} set", applied.set)
    } else {
        format!("{} set, {} missing", applied.set, applied.missing.len())
    }))
}

async fn sysctls(cx: &Context) -> Result<((), Outcome), BoxError> {
    if !cx.pid1 {
        return Ok(((), not_pid1()));
    }
    // Keys a module provides (bridge-nf-call) are set by the machine phase, once it is loaded.
    let now = crate::sysctl::without_modules(crate::sysctl::NODE_DEFAULTS);
    Ok(((), apply_sysctls(&now)?))
}

#[derive(Debug, thiserror::Error)]
pub enum HostnameError {
    #[error("/etc/hostname holds {0:?}, which is not a hostname")]
    Invalid(String),
    #[error("sethostname({name}): {source}")]
    Set { name: String, source: nix::Error },
}

/// A hostname the kernel accepts and DNS would: 1–64 chars of [a-z0-9-.], no leading
/// or trailing '-' or '.'. The machine config's hostname replaces it in the config phase.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.'])
}

async fn hostname(cx: &Context) -> Result<((), Outcome), BoxError> {
    if !cx.pid1 {
        return Ok(((), not_pid1()));
    }
    let name = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let name = if name.is_empty() {
        "basalt".to_owned()
    } else {
        name
    };
    set_hostname(&name)?;
    Ok(((), Outcome::DoneWith(name)))
}

pub(crate) fn set_hostname(name: &str) -> Result<(), HostnameError> {
    if !valid_hostname(name) {
        return Err(HostnameError::Invalid(name.to_owned()));
    }
    nix::unistd::sethostname(name).map_err(|source| HostnameError::Set {
        name: name.to_owned(),
        source,
    })
}

/// `basalt.platform=` decides which configs validate (metal requires machine.install).
async fn platform() -> Result<(Mode, Outcome), BoxError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let platform = config_source::cmdline::platform(&cmdline)?;
    let note = match platform {
        Some(p) => format!("{} (kernel command line)", p.as_str()),
        None => "metal (no basalt.platform= on the kernel command line)".to_owned(),
    };
    Ok((platform.unwrap_or(Mode::Metal), Outcome::DoneWith(note)))
}

/// Mounts an existing STATE so the config persisted there can be read; never formats.
async fn early_state() -> Result<((), Outcome), BoxError> {
    let note = match disks::mount_existing_state(&Paths::system())? {
        Some(part) => format!("STATE {} mounted", part.display()),
        None => "no STATE partition yet".to_owned(),
    };
    Ok(((), Outcome::DoneWith(note)))
}

/// Tries every config source. A broken config is not a phase failure: it is shown and
/// the node waits in maintenance mode for a good one.
async fn config(
    env: &Environment,
) -> Result<(Result<Option<Acquired>, AcquireError>, Outcome), BoxError> {
    let acquired = config_source::acquire(env).await;
    let note = match &acquired {
        Ok(Some(a)) => format!("from {} ({})", a.source, a.origin),
        Ok(None) => "no config anywhere; maintenance mode".to_owned(),
        Err(_) => "the config is unusable; maintenance mode".to_owned(),
    };
    Ok((acquired, Outcome::DoneWith(note)))
}

/// STATE and EPHEMERAL on the node's disk, or tmpfs without one. A config that came
/// from elsewhere is stored on STATE so the next boot finds it.
async fn disks(
    acquired: Option<&Acquired>,
    platform: Mode,
) -> Result<(DiskOutcome, Outcome), BoxError> {
    let install = acquired.and_then(|a| disks::install_disk(&a.config));
    let outcome = disks::prepare(install, &Paths::system())?;
    let mut note = match &outcome {
        DiskOutcome::Disk {
            device,
            state,
            ephemeral,
            created,
        } => {
            let mut n = format!(
                "{}: STATE {}, EPHEMERAL {} at /var",
                device.display(),
                state.display(),
                ephemeral.display()
            );
            if !created.is_empty() {
                n.push_str(&format!(" (created {})", created.join(", ")));
            }
            n
        }
        DiskOutcome::Tmpfs { reason } => {
            format!("tmpfs ({reason}): nothing survives a reboot")
        }
    };
    if let Some(a) = acquired
        && config_source::keep_on_state(a, &StateStore::system(platform))?
    {
        note.push_str("; config stored on STATE");
    }
    Ok((outcome, Outcome::DoneWith(note)))
}

/// Maintenance mode: the node has no usable config. DHCP on every physical link, the
/// API with a fresh self-signed certificate (fingerprint on the console), and a wait
/// for an apply. A valid one is stored (STATE, or tmpfs without a disk) BEFORE the
/// reply, then the boot goes on with it.
async fn maintenance(
    cx: &Context,
    platform: Mode,
    problem: Option<AcquireError>,
    disk: &DiskOutcome,
) -> Result<(MachineConfig, Outcome), BoxError> {
    let why = match &problem {
        None => "no config".to_owned(),
        Some(e) => e.to_string(),
    };
    cx.node.set_stage(Stage::Maintenance(why));
    if cx.network.lock().await.is_none() {
        network(cx, None).await?;
    }
    let running = api::start(
        ApiConfig::node(ApiMode::Maintenance, platform),
        cx.node.clone(),
        cx.sink.clone(),
    )
    .await?;
    match &problem {
        Some(AcquireError::Invalid {
            from,
            origin,
            errors,
        }) => {
            error!(
                "config from {from} ({origin}) is invalid ({} problem{}):",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            for e in errors {
                error!("config: {e}");
            }
        }
        Some(e) => error!("config: {e}"),
        None => {}
    }
    let stored_where = match disk {
        DiskOutcome::Disk { .. } => "stored on STATE",
        DiskOutcome::Tmpfs { .. } => {
            "stored on tmpfs (no disk): it is NOT persistent and is lost at reboot"
        }
    };
    info!("maintenance mode: waiting for a config (POST /v1/config)");
    let store = StateStore::system(platform);
    let mut applies = cx.applies.lock().await;
    let config = loop {
        let Some(cmd) = applies.recv().await else {
            return Err("the API's config channel closed".into());
        };
        let mode = cmd.apply.mode;
        let config = match store.store_apply(&cmd.apply) {
            Ok(config) => config,
            Err(e) => {
                warning!("maintenance mode: an apply was not stored: {e}");
                let _ = cmd.reply.send(Err(e));
                continue;
            }
        };
        info!("maintenance mode: config received and {stored_where}");
        let (message, reboot, leave) = match mode {
            ApplyMode::Staged => (
                format!("{stored_where}; staged: the node uses it at the next boot"),
                false,
                false,
            ),
            ApplyMode::Reboot => (format!("{stored_where}; rebooting"), true, false),
            _ => (
                format!("{stored_where}; leaving maintenance mode and booting with it"),
                false,
                true,
            ),
        };
        let _ = cmd.reply.send(Ok(ApplyConfigResponse {
            mode,
            message,
            reboot,
            applied_live: Vec::new(),
            needs_reboot: Vec::new(),
        }));
        if reboot {
            let _ = cx.node.power(PowerAction::Reboot);
        }
        if leave {
            break config;
        }
    };
    drop(applies);
    // The reply travels on the maintenance network through the maintenance listener's
    // connection task: give it a moment before both go away.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop();
    Ok((
        config,
        Outcome::DoneWith(format!("config applied through the API, {stored_where}")),
    ))
}

/// How often a node whose disk failed tries it again.
const DISK_RETRY: Duration = Duration::from_secs(10);

/// The config's disk cannot be used (absent, unreadable, no room). The node stays up
/// instead of rebooting in a loop: the config's own API (mutual TLS, the config's CA)
/// answers on the maintenance network so an operator can read why (health, logs, dmesg,
/// disks) and apply a corrected config, and the disk is tried again every
/// [`DISK_RETRY`] (hot-plug, a slow controller). Whichever works first lets the boot go
/// on, without a reboot.
async fn wait_for_disk(
    cx: &Context,
    platform: Mode,
    config: MachineConfig,
    failure: SequencerError,
) -> Result<(MachineConfig, Outcome), BoxError> {
    let why = failure.to_string();
    error!("{why}");
    cx.node.set_stage(Stage::Waiting(why.clone()));
    cx.node.set_config(config.clone());
    if cx.network.lock().await.is_none() {
        network(cx, None).await?;
    }
    let identity = interim_identity(cx, &config).await?;
    let running = api::start(
        ApiConfig::node(ApiMode::Configured(identity), platform),
        cx.node.clone(),
        cx.sink.clone(),
    )
    .await?;
    error!(
        "the node stays up: its API (mutual TLS) answers on :50000; fix the disk or apply a corrected config (the disk is tried again every {} s)",
        DISK_RETRY.as_secs()
    );
    let store = StateStore::system(platform);
    let mut applies = cx.applies.lock().await;
    let mut last = why;
    let (config, how) = loop {
        tokio::select! {
            cmd = applies.recv() => {
                let Some(cmd) = cmd else {
                    return Err("the API's config channel closed".into());
                };
                if cmd.apply.mode == ApplyMode::Staged {
                    let _ = cmd.reply.send(Err(ProviderError::Conflict(
                        "there is no STATE to stage a config on (the disks phase failed); apply with auto to use it now".to_owned(),
                    )));
                    continue;
                }
                let new = cmd.apply.config.clone();
                match prepare_disks(&new).await {
                    Ok(note) => {
                        // STATE exists now: store there what the operator sent.
                        let stored = store.store_apply(&cmd.apply);
                        let failed = stored.is_err();
                        let _ = cmd.reply.send(stored.map(|_| ApplyConfigResponse {
                            mode: cmd.apply.mode,
                            message: format!("{note}; stored on STATE; the boot goes on with it"),
                            reboot: false,
                            applied_live: Vec::new(),
                            needs_reboot: Vec::new(),
                        }));
                        if !failed {
                            break (new, format!("a corrected config from the API: {note}"));
                        }
                    }
                    Err(e) => {
                        let _ = cmd.reply.send(Err(ProviderError::Conflict(format!(
                            "the disk is still unusable with this config: {e}; nothing was stored"
                        ))));
                    }
                }
            }
            () = tokio::time::sleep(DISK_RETRY) => {
                match prepare_disks(&config).await {
                    Ok(note) => break (config, format!("the disk came back: {note}")),
                    Err(e) => {
                        // Once per distinct problem, not every 10 s.
                        let now = e.to_string();
                        if now != last {
                            warning!("disks: still unusable: {now}");
                            last = now;
                        }
                    }
                }
            }
        }
    };
    drop(applies);
    info!("disks: {how}");
    // The reply travels through this listener's connection task: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.stop();
    Ok((config, Outcome::DoneWith(how)))
}

/// The disks phase for a config that did not come from a source (no persisting: the
/// caller stores what it has).
async fn prepare_disks(config: &MachineConfig) -> Result<String, disks::DiskError> {
    match disks::prepare(disks::install_disk(config), &Paths::system())? {
        DiskOutcome::Disk {
            device, ephemeral, ..
        } => Ok(format!(
            "{}: STATE and EPHEMERAL {} mounted",
            device.display(),
            ephemeral.display()
        )),
        DiskOutcome::Tmpfs { reason } => Ok(format!("tmpfs ({reason})")),
    }
}

/// A server certificate for the config's API before the api phase: issued by the API CA
/// on a control plane; self-signed on a worker (clients pin it, as its console says).
async fn interim_identity(
    cx: &Context,
    config: &MachineConfig,
) -> Result<ServerIdentity, BoxError> {
    let hostname = config
        .machine
        .hostname
        .as_ref()
        .map_or_else(|| "basalt".to_owned(), |h| h.as_str().to_owned());
    let addresses = global_addresses(cx).await;
    if config.machine.machine_type == MachineType::Worker {
        let identity = ServerIdentity::self_signed_for_worker(config, &hostname, &addresses)?;
        warning!(
            "api: serving a self-signed certificate (fingerprint {})",
            identity.fingerprint()?
        );
        Ok(identity)
    } else {
        Ok(ServerIdentity::for_node(config, &hostname, &addresses)?)
    }
}

/// The node's global addresses right now (for a serving certificate's names).
async fn global_addresses(cx: &Context) -> Vec<IpAddr> {
    cx.network
        .lock()
        .await
        .as_ref()
        .map(|n| {
            n.state()
                .snapshot()
                .addresses
                .iter()
                .filter(|a| a.scope == "global")
                .map(|a| a.address.addr())
                .collect()
        })
        .unwrap_or_default()
}

/// The config's own settings for the host: sysctls, hostname, files.
async fn machine(config: &MachineConfig) -> Result<((), Outcome), BoxError> {
    let m = &config.machine;
    let modules = crate::modules::machine_phase(&m.kernel.modules).await?;
    if m.sysctls
        .keys()
        .any(|k| k.as_str().starts_with("net.bridge."))
    {
        // These keys exist only once br_netfilter is loaded.
        crate::modules::wait_logged(&["br_netfilter"]).await;
    }
    let list: Vec<(&str, &str, Option<&'static str>)> = m
        .sysctls
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str(), None))
        .collect();
    let sysctls = apply_sysctls(&list)?;
    // No machine.kernel.modules: no note (not an empty one).
    let mut notes: Vec<String> = Some(modules)
        .filter(|m| !m.is_empty())
        .into_iter()
        .collect();
    notes.push(match sysctls {
        Outcome::DoneWith(n) => format!("sysctls {n}"),
        _ => "sysctls".to_owned(),
    });
    if let Some(h) = &m.hostname {
        set_hostname(h.as_str())?;
        write_file(
            Path::new("/etc/hostname"),
            &format!("{}\n", h.as_str()),
            0o644,
        )?;
        notes.push(format!("hostname {}", h.as_str()));
    }
    for f in &m.files {
        write_file(Path::new(f.path.as_str()), &f.content, f.permissions.bits())?;
        info!("machine: wrote {}", f.path.as_str());
    }
    notes.push(format!("{} file(s) written", m.files.len()));
    Ok(((), Outcome::DoneWith(notes.join(", "))))
}

#[derive(Debug, thiserror::Error)]
#[error("machine.files: writing {path}: {source}")]
pub struct FileError {
    path: std::path::PathBuf,
    source: std::io::Error,
}

/// Writes a file atomically (temp + rename) with `mode`; parents are created.
pub(crate) fn write_file(path: &Path, content: &str, mode: u32) -> Result<(), FileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| FileError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".basalt-tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(content.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    // The umask may have narrowed the mode given at creation.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Brings the network up for `config` (maintenance: DHCP on every physical link). A
/// network already running (maintenance, or early for a config URL) is shut down first:
/// its DHCP leases are released and the config's own plan replaces it.
async fn network(cx: &Context, config: Option<&MachineConfig>) -> Result<((), Outcome), BoxError> {
    crate::modules::wait_logged(crate::modules::NETWORK_DRIVERS).await;
    let mut slot = cx.network.lock().await;
    if let Some(old) = slot.take() {
        info!(
            "network: releasing the DHCP-on-every-link network (maintenance or early) to apply the config's"
        );
        cx.node.set_network(None);
        old.shutdown().await;
    }
    let options = network::Options {
        set_kernel_hostname: cx.pid1,
        ..Default::default()
    };
    let net = network::configure(&Intent::from_config(config), &options).await?;
    let snapshot = net.state().snapshot();
    let addresses: Vec<String> = snapshot
        .addresses
        .iter()
        .filter(|a| a.scope == "global")
        .map(|a| a.address.to_string())
        .collect();
    cx.node.set_network(Some(net.state()));
    *slot = Some(net);
    drop(slot);
    if let Some(config) = config {
        restart_time_sync(cx, config).await;
    }
    Ok((
        (),
        Outcome::DoneWith(if addresses.is_empty() {
            "no global address yet".to_owned()
        } else {
            format!("addresses {}", addresses.join(" "))
        }),
    ))
}

/// (Re)starts the SNTP client with `config`'s time servers.
pub(crate) async fn restart_time_sync(cx: &Context, config: &MachineConfig) {
    let mut slot = cx.time.lock().await;
    if let Some(old) = slot.take() {
        old.stop().await;
    }
    *slot = Some(crate::time::spawn(crate::time::SyncOptions::new(
        crate::time::servers_from_config(&config.machine.time),
    )));
}

/// Creates the supervisor and starts the API as its first service (`apid`): mutual TLS
/// against the config's API CA.
async fn api_phase(
    cx: &Context,
    config: &MachineConfig,
    platform: Mode,
) -> Result<(Supervisor, Outcome), BoxError> {
    let supervisor = Supervisor::new(if cx.pid1 {
        SupervisorConfig::node(cx.exits.clone())
    } else {
        SupervisorConfig {
            cgroup_root: None,
            log_dir: None,
            log_limits: Default::default(),
            reaping: Reaping::Direct,
        }
    });
    if cx.node.set_supervisor(supervisor.clone()).is_err() {
        return Err("the supervisor was already created".into());
    }
    let stopping = supervisor.clone();
    // Registered after the network's hook, so it runs before it: services stop while
    // the network is still up.
    cx.hooks.register("services", move || async move {
        if let Err(e) = stopping.stop_all(secs(25)).await {
            warning!("shutdown: {e}");
        }
    });
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "basalt".to_owned());
    let addresses = global_addresses(cx).await;
    let (identity, mut note) = if config.machine.machine_type == MachineType::Worker {
        // A worker has no API CA key: it serves a self-signed certificate until a control
        // plane's trustd signs one, which is swapped in without a restart.
        let identity = ServerIdentity::self_signed_for_worker(config, &hostname, &addresses)?;
        let fingerprint = identity.fingerprint()?;
        let note = match crate::trust::Requester::for_worker(config, &hostname, &addresses) {
            Ok(requester) => {
                let at = format!("{}:{}", requester.host, requester.port);
                crate::trust::spawn_requester(requester, identity.clone());
                format!(
                    "mutual TLS; self-signed server certificate {fingerprint} until trustd at {at} signs one"
                )
            }
            Err(e) => {
                warning!("api: {e}");
                warning!(
                    "api: serving a self-signed certificate (fingerprint {fingerprint}); clients are still verified against the API CA, but must pin this fingerprint to trust the node"
                );
                format!(
                    "mutual TLS; self-signed server certificate {fingerprint} (worker, no machine.token)"
                )
            }
        };
        (identity, note)
    } else {
        (
            ServerIdentity::for_node(config, &hostname, &addresses)?,
            "mutual TLS; server certificate issued by the API CA".to_owned(),
        )
    };
    let trustd = crate::trust::TrustdConfig::node(config, identity.clone());
    supervisor.register(services::apid::service_spec(
        ApiConfig::node(ApiMode::Configured(identity), platform),
        cx.node.clone(),
        cx.sink.clone(),
    ))?;
    supervisor.start("apid")?;
    match trustd {
        Some(trustd) => {
            supervisor.register(services::apid::trustd_spec(trustd))?;
            supervisor.start("trustd")?;
            note.push_str("; trustd signs workers' certificates on :50001");
        }
        None if config.machine.machine_type == MachineType::Controlplane => warning!(
            "api: machine.token is not set: trustd does not run, and workers cannot get an API certificate from this control plane"
        ),
        None => {}
    }
    supervisor
        .wait_for(
            "apid",
            &[ServiceState::Healthy, ServiceState::Running],
            secs(30),
        )
        .await?;
    Ok((supervisor, Outcome::DoneWith(note)))
}

/// containerd (and, later, etcd and kubelet), in dependency order.
async fn services(
    supervisor: &Supervisor,
    config: &MachineConfig,
) -> Result<((), Outcome), BoxError> {
    let prerequisites = crate::modules::container_prerequisites(apply_sysctls).await?;
    services::containerd::register_for_node(supervisor, config)?;
    supervisor.start_all()?;
    let note = match supervisor
        .wait_for("containerd", &[ServiceState::Healthy], secs(120))
        .await
    {
        Ok(status) => format!(
            "containerd healthy: {}",
            status.health.map(|h| h.message).unwrap_or_default()
        ),
        // Not a reason to reboot: the supervisor keeps restarting it and the API shows why.
        Err(e) => {
            warning!("services: {e}");
            format!("containerd not healthy yet: {e}")
        }
    };
    Ok(((), Outcome::DoneWith(format!("{prerequisites}; {note}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context {
        let (power, _) = mpsc::channel(1);
        Context::new(
            false,
            Arc::new(Hooks::default()),
            ChildExits::new(),
            Arc::new(Node::new(power)),
        )
    }

    #[tokio::test]
    async fn outside_pid1_the_sequence_runs_without_touching_the_host() {
        boot(&cx()).await.unwrap();
        let log = crate::log::ring().snapshot();
        let has = |s: &str| log.iter().any(|l| l.message == s);
        assert!(has(
            "phase cgroups skipped: not PID 1, leaving the host alone"
        ));
        assert!(
            log.iter()
                .any(|l| l.message.starts_with("boot complete in "))
        );
    }

    async fn fails() -> Result<((), Outcome), BoxError> {
        Err("no disk named vdz".into())
    }
    async fn hangs() -> Result<((), Outcome), BoxError> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(((), Outcome::DoneWith(String::new())))
    }

    #[tokio::test]
    async fn a_failing_phase_stops_the_boot_with_its_name() {
        let err = phase(&cx(), "disks", secs(1), fails()).await.unwrap_err();
        assert_eq!(err.to_string(), "phase disks failed: no disk named vdz");
    }

    #[tokio::test]
    async fn a_phase_hands_its_value_on() {
        let v = phase(&cx(), "config", secs(1), async {
            Ok((7, Outcome::DoneWith("seven".into())))
        })
        .await
        .unwrap();
        assert_eq!(v, 7);
        assert!(crate::log::ring().snapshot().iter().any(|l| {
            l.message.starts_with("phase config done (") && l.message.ends_with("): seven")
        }));
    }

    #[tokio::test]
    async fn a_hanging_phase_times_out() {
        let err = phase(&cx(), "network", Duration::from_millis(50), hangs())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                SequencerError::Timeout {
                    phase: "network",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn machine_files_are_written_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etc/kubernetes/extra.conf");
        write_file(&path, "x=1\n", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "x=1\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A path that cannot be written names itself.
        let err = write_file(Path::new("/proc/nope/file"), "", 0o644).unwrap_err();
        assert!(err.to_string().contains("/proc/nope/file"), "{err}");
    }

    #[test]
    fn rss_is_readable() {
        assert!(rss_kib().is_some_and(|k| k > 0));
    }

    #[test]
    fn hostnames_are_checked() {
        assert!(valid_hostname("basalt"));
        assert!(valid_hostname("cp-1.example"));
        for bad in ["", "-a", "a-", "a b", "x".repeat(65).as_str(), "a_b"] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
    }
}
