//! The node's kernel modules, loaded in the background while the boot goes on.
//!
//! basalt-init loads only what mounting the rootfs needs; everything in the rootfs'
//! `lib/modules/<kver>/modules.basalt` (disks, network, netfilter, overlay …) is loaded
//! here, one finit_module at a time on a thread of its own (finit_module blocks, and
//! parallel loads were slower under TCG), while the sequencer's first phases run. A phase
//! that needs a module awaits exactly it with [`Modules::wait`], which also moves that
//! module's dependency closure to the front of the queue. `machine.kernel.modules` from
//! the config are planned against the same modules.dep ([`Modules::request_config`]).
//!
//! Planning (closure, parameters, what exists) is basalt-kmod's and pure; this module is
//! the queue, the status table and the executor thread.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use basalt_config::KernelModule;
use basalt_kmod::{LoadStep, ModuleDir, ModuleName, Plan, Wanted};
use tokio::sync::watch;

use crate::log::{debug, error, info, warning};
use crate::sequencer::{BoxError, Outcome};

/// Where the rootfs keeps its modules.
pub fn system_dir() -> PathBuf {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    Path::new("/lib/modules").join(release.trim())
}

static SYSTEM: OnceLock<Modules> = OnceLock::new();

/// Starts loading the rootfs' modules (PID 1 only, once). Everything below waits on
/// this loader; without it (not PID 1) every wait returns at once.
pub fn start_system() {
    let _ = SYSTEM.get_or_init(|| Modules::start(&system_dir()));
}

pub fn system() -> Option<&'static Modules> {
    SYSTEM.get()
}

/// Storage drivers the early STATE mount and the disks phase need, each with the virtio
/// device ID it drives (virtio spec 5: 2 block, 8 SCSI host). Once virtio_pci has
/// probed the bus, the phase waits only for the drivers whose device is there, the way
/// udev would load them: a VM without a SCSI controller does not wait for scsi_mod.
/// ext4 and vfat (the file systems of STATE/EPHEMERAL and of a config drive) only matter
/// when a disk is there: a diskless boot does not wait for ext4, the slowest module.
const BLOCK_DRIVERS: &[(&str, u32)] = &[("virtio_blk", 2), ("virtio_scsi", 8)];
/// crc32c_generic is ext4's soft dependency (`softdep: pre: crc32c`, not in modules.dep):
/// without it, mounting a metadata_csum ext4 fails with "Cannot load crc32c driver".
const DISK_FILESYSTEMS: &[&str] = &[
    "crc32c_generic",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "isofs",
];
/// Where a config may come from before any disk: QEMU's fw_cfg.
const CONFIG_DRIVERS: &[&str] = &["qemu_fw_cfg"];
/// Network drivers (the maintenance API listens on them).
pub const NETWORK_DRIVERS: &[&str] = &["virtio_net"];
/// What containerd and pod networking need before they start: the overlay snapshotter
/// and bridge-nf-call (whose sysctls exist only once br_netfilter is loaded).
pub const CONTAINER_MODULES: &[&str] = &["overlay", "br_netfilter"];

/// The `modules` phase: waits for the drivers config acquisition and the STATE mount
/// need. A missing or failed driver is logged, not fatal: the phases after it report
/// the consequence (no disk, no fw_cfg) in their own words.
pub async fn early_phase() -> Result<((), Outcome), BoxError> {
    let Some(m) = system() else {
        return Ok(((), Outcome::Skipped("not PID 1".to_owned())));
    };
    let start = Instant::now();
    let mut missing = m.wait_optional(&["virtio_pci"]).await;
    let devices = virtio_devices(Path::new("/sys/bus/virtio/devices"));
    let mut waited: Vec<&str> = BLOCK_DRIVERS
        .iter()
        .filter(|(_, id)| devices.as_ref().is_none_or(|d| d.contains(id)))
        .map(|(name, _)| *name)
        .chain(CONFIG_DRIVERS.iter().copied())
        .collect();
    missing.extend(m.wait_optional(&waited).await);
    let disks = has_disk(Path::new("/sys/block"));
    if disks {
        missing.extend(m.wait_optional(DISK_FILESYSTEMS).await);
        waited.extend(DISK_FILESYSTEMS);
    }
    for e in &missing {
        warning!("modules: {e}");
    }
    // Next in line, without waiting: the NIC (the network phase is next but for a few
    // fast phases), then what the machine phase waits for.
    m.prioritise_names(CONTAINER_MODULES);
    m.prioritise_names(NETWORK_DRIVERS);
    Ok((
        (),
        Outcome::DoneWith(format!(
            "{} ready after {} ms{}{}",
            waited.join(" "),
            start.elapsed().as_millis(),
            if disks {
                ""
            } else {
                " (no disk: file system modules keep loading in the background)"
            },
            if missing.is_empty() {
                String::new()
            } else {
                format!("; {} missing", missing.len())
            }
        )),
    ))
}

/// Waits for `names` if the loader runs; what is missing is logged and returned.
pub async fn wait_logged(names: &[&str]) -> Vec<ModuleError> {
    let Some(m) = system() else {
        return Vec::new();
    };
    let missing = m.wait_optional(names).await;
    for e in &missing {
        warning!("modules: {e}");
    }
    missing
}

/// The machine phase's part: `machine.kernel.modules` (with parameters and their
/// modules.dep closure), then what containers need, then the sysctls that exist only
/// once their module is loaded. A config module the image lacks or that fails to load
/// is an error in the log naming the module and the config field, not a reboot: the
/// node stays reachable so the config can be fixed. Returns a note for the phase line.
pub async fn machine_phase(config: &[KernelModule]) -> Result<String, BoxError> {
    let Some(m) = system() else {
        return Ok("modules skipped (not PID 1)".to_owned());
    };
    let mut notes = Vec::new();
    if !config.is_empty() {
        match m.load_config(config).await {
            Ok(names) => {
                info!(
                    "modules: machine.kernel.modules loaded: {}",
                    names.join(" ")
                );
                notes.push(format!("kernel modules {}", names.join(" ")));
            }
            Err(e) => {
                error!("modules: {e}");
                notes.push(format!("kernel modules NOT loaded: {e}"));
            }
        }
    }
    Ok(notes.join(", "))
}

/// What containers need before containerd starts: the overlay snapshotter and
/// br_netfilter, then the sysctls that exist only once their module is loaded
/// (bridge-nf-call). Waited for by the services phase, not earlier, so the API does not
/// wait for them.
pub async fn container_prerequisites(
    apply_sysctls: impl Fn(&[crate::sysctl::Entry<'_>]) -> Result<Outcome, BoxError>,
) -> Result<String, BoxError> {
    if system().is_none() {
        return Ok("container modules skipped (not PID 1)".to_owned());
    }
    let (bound, needs) = crate::sysctl::with_modules(crate::sysctl::NODE_DEFAULTS);
    let mut wanted: Vec<&str> = CONTAINER_MODULES.to_vec();
    wanted.extend(needs.iter().filter(|n| !CONTAINER_MODULES.contains(n)));
    wait_logged(&wanted).await;
    Ok(match apply_sysctls(&bound)? {
        Outcome::DoneWith(n) => format!("module sysctls {n}"),
        Outcome::Skipped(why) => format!("module sysctls skipped: {why}"),
    })
}

/// The device IDs on the virtio bus; None when there is no virtio bus (not a VM, or
/// virtio_pci did not load): then every block driver is waited for.
fn virtio_devices(bus: &Path) -> Option<Vec<u32>> {
    let entries = std::fs::read_dir(bus).ok()?;
    let mut ids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("device")).ok())
        .filter_map(|id| u32::from_str_radix(id.trim().trim_start_matches("0x"), 16).ok())
        .collect();
    ids.sort_unstable();
    Some(ids)
}

/// Whether a block device other than loop, ram or zram devices exists.
fn has_disk(sys_block: &Path) -> bool {
    std::fs::read_dir(sys_block).is_ok_and(|entries| {
        entries.filter_map(Result::ok).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| name.starts_with(p))
        })
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    #[error("kernel module {module} is not loaded: {reason}")]
    Failed { module: ModuleName, reason: String },
    #[error(
        "kernel module {module} is not available: this image does not carry it ({dir}/modules.dep does not list it) and the kernel does not have it built in"
    )]
    NotInImage { module: ModuleName, dir: PathBuf },
    #[error("{field}: kernel module {module} does not exist in this image ({reason})")]
    Config {
        field: String,
        module: ModuleName,
        reason: String,
    },
    #[error("{field}: kernel module {module}: {reason}")]
    ConfigLoad {
        field: String,
        module: ModuleName,
        reason: String,
    },
}

/// Where one module stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Queued,
    Loaded,
    /// Built in, or loaded before machined (by init or earlier).
    Present,
    /// An optional module the image does not carry.
    Absent,
    Failed(String),
}

impl Status {
    fn settled(&self) -> bool {
        !matches!(self, Status::Queued)
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<LoadStep>,
    status: HashMap<ModuleName, Status>,
    /// Why a config module is wanted, for its error message (`machine.kernel.modules[0]`).
    fields: HashMap<ModuleName, String>,
    worker: bool,
    loaded: usize,
    /// Optional modules that did not load (efivarfs on a BIOS boot): reported apart.
    optional_failed: Vec<ModuleName>,
    started: Option<Instant>,
}

struct Inner {
    dir: ModuleDir,
    state: Mutex<State>,
    /// Bumped after every settled module; waiters re-check the status table.
    changed: watch::Sender<u64>,
}

/// Cheap to clone; every clone sees the same queue.
#[derive(Clone)]
pub struct Modules {
    inner: Arc<Inner>,
}

impl Modules {
    /// Reads `dir` (modules.basalt, modules.dep, modules.builtin) and starts loading
    /// what modules.basalt wants in the background. An unreadable directory is logged
    /// and leaves every module "not available": phases that need one fail naming it.
    pub fn start(dir: &Path) -> Modules {
        let md = match ModuleDir::read(dir) {
            Ok(md) => md,
            Err(e) => {
                error!("modules: {e}");
                ModuleDir {
                    dir: dir.to_path_buf(),
                    ..ModuleDir::default()
                }
            }
        };
        let wanted = md.wanted.clone();
        let modules = Modules::idle(md);
        modules.enqueue_each(&wanted, false);
        modules.kick();
        modules
    }

    /// A loader with nothing queued (tests plan against it without loading).
    fn idle(dir: ModuleDir) -> Modules {
        Modules {
            inner: Arc::new(Inner {
                dir,
                state: Mutex::new(State::default()),
                changed: watch::Sender::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Plans each wanted module on its own, so one the image lacks does not hold back
    /// the others, and queues the steps (at the front when `urgent`).
    fn enqueue_each(
        &self,
        wanted: &[Wanted],
        urgent: bool,
    ) -> Vec<(ModuleName, Result<(), String>)> {
        let mut results = Vec::new();
        let mut steps = Vec::new();
        let mut st = self.lock();
        for w in wanted {
            match self.inner.dir.plan(std::slice::from_ref(w)) {
                Ok(plan) => {
                    record_plan(&mut st, &plan, &mut steps, urgent);
                    results.push((w.name.clone(), Ok(())));
                }
                Err(e) => {
                    let reason = e.to_string();
                    if w.optional {
                        st.status.entry(w.name.clone()).or_insert(Status::Absent);
                    } else {
                        error!("modules: {reason}");
                        st.status
                            .insert(w.name.clone(), Status::Failed(reason.clone()));
                    }
                    results.push((w.name.clone(), Err(reason)));
                }
            }
        }
        if urgent {
            for s in steps.into_iter().rev() {
                st.queue.push_front(s);
            }
        } else {
            st.queue.extend(steps);
        }
        drop(st);
        self.inner.changed.send_modify(|n| *n += 1);
        results
    }

    /// Starts the executor thread unless one is running.
    fn kick(&self) {
        let mut st = self.lock();
        if st.worker || st.queue.is_empty() {
            return;
        }
        st.worker = true;
        st.started.get_or_insert_with(Instant::now);
        drop(st);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("kmod".to_owned())
            .stack_size(256 * 1024)
            .spawn(move || me.work());
        if let Err(e) = spawned {
            error!("modules: cannot start the loader thread: {e}");
            let mut st = self.lock();
            st.worker = false;
            let reason = format!("the loader thread did not start: {e}");
            for s in std::mem::take(&mut st.queue) {
                st.status.insert(s.name, Status::Failed(reason.clone()));
            }
            drop(st);
            self.inner.changed.send_modify(|n| *n += 1);
        }
    }

    fn work(&self) {
        loop {
            let mut st = self.lock();
            let Some(step) = st.queue.pop_front() else {
                st.worker = false;
                let took = st.started.take().map(|s| s.elapsed()).unwrap_or_default();
                let mut failed: Vec<String> = st
                    .status
                    .iter()
                    .filter(|(n, s)| {
                        matches!(s, Status::Failed(_)) && !st.optional_failed.contains(n)
                    })
                    .map(|(n, _)| n.to_string())
                    .collect();
                failed.sort();
                let optional: Vec<String> =
                    st.optional_failed.iter().map(|n| n.to_string()).collect();
                let loaded = st.loaded;
                drop(st);
                let mut line = format!(
                    "modules: {loaded} kernel modules loaded from {} ({} ms)",
                    self.inner.dir.dir.display(),
                    took.as_millis()
                );
                if !optional.is_empty() {
                    line.push_str(&format!("; optional, not loaded: {}", optional.join(" ")));
                }
                if failed.is_empty() {
                    info!("{line}");
                } else {
                    error!("{line}; FAILED: {}", failed.join(" "));
                }
                return;
            };
            if st.status.get(&step.name).is_some_and(Status::settled) {
                continue;
            }
            let broken_dep = self
                .inner
                .dir
                .dep
                .get(&step.name)
                .into_iter()
                .flat_map(|e| e.deps.iter())
                .find(|d| matches!(st.status.get(*d), Some(Status::Failed(_))))
                .cloned();
            drop(st);
            let status = match broken_dep {
                Some(d) => Status::Failed(format!("its dependency {d} failed to load")),
                None => self.load(&step),
            };
            let mut st = self.lock();
            match &status {
                Status::Loaded => st.loaded += 1,
                Status::Failed(reason) if step.optional => {
                    info!("modules: optional module not loaded, continuing: {reason}");
                    st.optional_failed.push(step.name.clone());
                }
                Status::Failed(reason) => error!("modules: {reason}"),
                _ => {}
            }
            st.status.insert(step.name, status);
            drop(st);
            self.inner.changed.send_modify(|n| *n += 1);
        }
    }

    fn load(&self, step: &LoadStep) -> Status {
        let path = self.inner.dir.dir.join(&step.path);
        let start = Instant::now();
        match basalt_kmod::finit(&step.name, &path, &step.params) {
            Ok(true) => {
                let took = start.elapsed();
                debug!("modules: loaded {} ({} ms)", step.name, took.as_millis());
                if took > Duration::from_millis(200) || !step.params.is_empty() {
                    info!(
                        "modules: loaded {}{} ({} ms)",
                        step.name,
                        if step.params.is_empty() {
                            String::new()
                        } else {
                            format!(" with {}", step.params)
                        },
                        took.as_millis()
                    );
                }
                Status::Loaded
            }
            Ok(false) => Status::Present,
            Err(e) => Status::Failed(e.to_string()),
        }
    }

    /// Waits until each of `names` is loaded (or present), moving what is still queued
    /// to the front. The first one that failed or does not exist is the error.
    pub async fn wait(&self, names: &[&str]) -> Result<(), ModuleError> {
        let names: Vec<ModuleName> = names.iter().map(|n| ModuleName::new(n)).collect();
        self.prioritise(&names);
        self.wait_settled(&names).await
    }

    /// Like [`Modules::wait`], but only reports which of `names` are not there: for
    /// what a phase can do without (a sysctl that then stays missing).
    pub async fn wait_optional(&self, names: &[&str]) -> Vec<ModuleError> {
        let mut missing = Vec::new();
        for n in names {
            if let Err(e) = self.wait(&[n]).await {
                missing.push(e);
            }
        }
        missing
    }

    /// Moves `names` (and their closures) to the front of the queue without waiting.
    pub fn prioritise_names(&self, names: &[&str]) {
        let names: Vec<ModuleName> = names.iter().map(|n| ModuleName::new(n)).collect();
        self.prioritise(&names);
    }

    fn prioritise(&self, names: &[ModuleName]) {
        let mut st = self.lock();
        let mut steps = Vec::new();
        for name in names {
            if st.status.get(name).is_some_and(Status::settled) {
                continue;
            }
            let wanted = Wanted {
                name: name.clone(),
                optional: false,
                params: Vec::new(),
            };
            match self.inner.dir.plan(&[wanted]) {
                Ok(plan) => record_plan(&mut st, &plan, &mut steps, true),
                Err(_) => {
                    st.status.entry(name.clone()).or_insert(Status::Absent);
                }
            }
        }
        for s in steps.into_iter().rev() {
            st.queue.push_front(s);
        }
        drop(st);
        self.kick();
    }

    async fn wait_settled(&self, names: &[ModuleName]) -> Result<(), ModuleError> {
        let mut rx = self.inner.changed.subscribe();
        loop {
            let verdict = {
                let st = self.lock();
                let mut verdict = Some(Ok(()));
                for name in names {
                    match st.status.get(name) {
                        None | Some(Status::Queued) => {
                            verdict = None;
                            break;
                        }
                        Some(Status::Loaded | Status::Present) => {}
                        Some(Status::Absent) => {
                            verdict = Some(Err(ModuleError::NotInImage {
                                module: name.clone(),
                                dir: self.inner.dir.dir.clone(),
                            }));
                            break;
                        }
                        Some(Status::Failed(reason)) => {
                            let err = match st.fields.get(name) {
                                Some(field) => ModuleError::ConfigLoad {
                                    field: field.clone(),
                                    module: name.clone(),
                                    reason: reason.clone(),
                                },
                                None => ModuleError::Failed {
                                    module: name.clone(),
                                    reason: reason.clone(),
                                },
                            };
                            verdict = Some(Err(err));
                            break;
                        }
                    }
                }
                verdict
            };
            if let Some(v) = verdict {
                return v;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `inner`, which we hold: cannot happen; re-check.
                tokio::task::yield_now().await;
            }
        }
    }

    /// `machine.kernel.modules`: planned against the image's modules.dep (a module the
    /// image lacks is an error naming it and the config field), queued at the front,
    /// and awaited. Returns the names loaded, in config order.
    pub async fn load_config(&self, modules: &[KernelModule]) -> Result<Vec<String>, ModuleError> {
        let wanted = config_wanted(modules);
        self.queue_config(&wanted)?;
        self.kick();
        let names: Vec<ModuleName> = wanted.iter().map(|w| w.name.clone()).collect();
        self.wait_settled(&names).await?;
        Ok(names.iter().map(|n| n.to_string()).collect())
    }

    /// The synchronous half of [`Modules::load_config`]: check every module exists,
    /// then queue them all at the front. Nothing is queued when one is missing.
    fn queue_config(&self, wanted: &[Wanted]) -> Result<(), ModuleError> {
        for (i, w) in wanted.iter().enumerate() {
            if let Err(e) = self.inner.dir.plan(std::slice::from_ref(w)) {
                return Err(ModuleError::Config {
                    field: format!("machine.kernel.modules[{i}].name"),
                    module: w.name.clone(),
                    reason: e.to_string(),
                });
            }
        }
        {
            let mut st = self.lock();
            for (i, w) in wanted.iter().enumerate() {
                st.fields
                    .insert(w.name.clone(), format!("machine.kernel.modules[{i}]"));
                if !w.params.is_empty()
                    && matches!(
                        st.status.get(&w.name),
                        Some(Status::Loaded | Status::Present)
                    )
                {
                    // The kernel takes parameters only at load time.
                    warning!(
                        "modules: {} was loaded before the config was read; its parameters from machine.kernel.modules[{i}] ({}) are not applied",
                        w.name,
                        w.params.join(" ")
                    );
                }
                if matches!(st.status.get(&w.name), Some(Status::Queued)) {
                    // Still waiting: re-planned below with the config's parameters.
                    st.queue.retain(|s| s.name != w.name);
                    st.status.remove(&w.name);
                }
            }
        }
        for (name, result) in self.enqueue_each(wanted, true) {
            if let Err(reason) = result {
                let field = self.lock().fields.get(&name).cloned().unwrap_or_default();
                return Err(ModuleError::Config {
                    field,
                    module: name,
                    reason,
                });
            }
        }
        Ok(())
    }

    #[cfg(test)]
    fn queued(&self) -> Vec<String> {
        self.lock()
            .queue
            .iter()
            .map(|s| s.name.to_string())
            .collect()
    }
}

/// Records a plan's steps as queued (skipping what is settled) and its built-in modules
/// as present. With `urgent`, steps already queued further back are taken out so they
/// go first with the rest of the closure (their modules.basalt parameters kept).
fn record_plan(st: &mut State, plan: &Plan, steps: &mut Vec<LoadStep>, urgent: bool) {
    for s in &plan.steps {
        match st.status.get(&s.name) {
            Some(Status::Queued) if urgent => {
                let queued = st.queue.iter().position(|q| q.name == s.name);
                match queued.and_then(|i| st.queue.remove(i)) {
                    Some(q) if s.params.is_empty() => steps.push(q),
                    _ => steps.push(s.clone()),
                }
            }
            Some(_) => {}
            None => {
                st.status.insert(s.name.clone(), Status::Queued);
                steps.push(s.clone());
            }
        }
    }
    for b in &plan.builtin {
        st.status.insert(b.clone(), Status::Present);
    }
}

/// The config's modules as modules.basalt lines: required, with their parameters.
pub fn config_wanted(modules: &[KernelModule]) -> Vec<Wanted> {
    modules
        .iter()
        .map(|m| Wanted {
            name: ModuleName::new(m.name.as_str()),
            optional: false,
            params: m.parameters.iter().map(|p| p.as_str().to_owned()).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/block/nbd.ko:
kernel/drivers/net/dummy.ko:
kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/fs/overlayfs/overlay.ko:
";

    fn dir(basalt: &str) -> ModuleDir {
        ModuleDir {
            dir: PathBuf::from("/lib/modules/test"),
            wanted: basalt_kmod::parse_wanted(basalt).unwrap(),
            dep: basalt_kmod::ModulesDep::parse(DEP).unwrap(),
            builtin: basalt_kmod::parse_builtin("kernel/fs/ext4/ext4.ko\n"),
        }
    }

    fn module(name: &str, params: &[&str]) -> KernelModule {
        KernelModule {
            name: name.parse().unwrap(),
            parameters: params.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn waiting_moves_the_closure_to_the_front() {
        let m = Modules::idle(dir("overlay\nbr_netfilter\n"));
        let wanted = m.inner.dir.wanted.clone();
        m.enqueue_each(&wanted, false);
        assert_eq!(
            m.queued(),
            ["overlay", "llc", "stp", "bridge", "br_netfilter"]
        );
        // What prioritise does, without starting the executor.
        let plan = m
            .inner
            .dir
            .plan(&basalt_kmod::parse_wanted("bridge").unwrap())
            .unwrap();
        let names: Vec<_> = plan.steps.iter().map(|s| s.name.to_string()).collect();
        assert_eq!(names, ["llc", "stp", "bridge"]);
    }

    #[test]
    fn config_modules_carry_their_parameters_and_go_first() {
        let m = Modules::idle(dir("overlay\n"));
        let wanted = m.inner.dir.wanted.clone();
        m.enqueue_each(&wanted, false);
        let config = config_wanted(&[module("nbd", &["nbds_max=2"]), module("br-netfilter", &[])]);
        assert_eq!(config[0].params, ["nbds_max=2"]);
        assert_eq!(config[1].name.as_str(), "br_netfilter");
        m.enqueue_each(&config, true);
        let st = m.lock();
        let q: Vec<_> = st
            .queue
            .iter()
            .map(|s| (s.name.to_string(), s.params.clone()))
            .collect();
        assert_eq!(q[0], ("nbd".to_owned(), "nbds_max=2".to_owned()));
        assert_eq!(q.last().unwrap().0, "overlay");
        assert_eq!(q.len(), 6);
    }

    #[test]
    fn a_disk_is_any_block_device_but_loop_and_ram() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("loop0")).unwrap();
        std::fs::create_dir(d.path().join("ram0")).unwrap();
        assert!(!has_disk(d.path()));
        std::fs::create_dir(d.path().join("vda")).unwrap();
        assert!(has_disk(d.path()));
        assert!(!has_disk(&d.path().join("nope")));
    }

    #[test]
    fn virtio_device_ids_are_read_from_the_bus() {
        let d = tempfile::tempdir().unwrap();
        for (dev, id) in [("virtio1", "0x0002\n"), ("virtio0", "0x0001\n")] {
            std::fs::create_dir(d.path().join(dev)).unwrap();
            std::fs::write(d.path().join(dev).join("device"), id).unwrap();
        }
        assert_eq!(virtio_devices(d.path()), Some(vec![1, 2]));
        assert_eq!(virtio_devices(&d.path().join("none")), None);
    }

    #[tokio::test]
    async fn a_config_module_the_image_lacks_names_the_field() {
        let m = Modules::idle(dir(""));
        let err = m
            .load_config(&[module("dummy", &[]), module("wireguard", &[])])
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("machine.kernel.modules[1].name: kernel module wireguard does not exist in this image"),
            "{text}"
        );
        assert!(
            m.queued().is_empty(),
            "nothing is loaded when the list is wrong"
        );
    }

    #[tokio::test]
    async fn builtin_modules_are_ready_at_once_and_absent_ones_are_named() {
        let m = Modules::idle(dir("absent_mod optional\n"));
        let wanted = m.inner.dir.wanted.clone();
        m.enqueue_each(&wanted, false);
        m.wait(&["ext4"]).await.unwrap();
        let err = m.wait(&["absent_mod"]).await.unwrap_err();
        assert_eq!(
            err,
            ModuleError::NotInImage {
                module: ModuleName::new("absent_mod"),
                dir: PathBuf::from("/lib/modules/test"),
            }
        );
        assert!(
            err.to_string()
                .contains("kernel module absent_mod is not available"),
            "{err}"
        );
        assert_eq!(m.wait_optional(&["ext4", "no_such_mod"]).await.len(), 1);
    }

    #[tokio::test]
    async fn a_failed_load_is_the_waiters_error_and_blocks_its_users() {
        // Not root in tests (or no such file): finit_module fails for real.
        let m = Modules::idle(dir(""));
        m.prioritise(&[ModuleName::new("br_netfilter")]);
        let err = m.wait(&["br_netfilter"]).await.unwrap_err();
        match &err {
            ModuleError::Failed { module, reason } => {
                assert_eq!(module.as_str(), "br_netfilter");
                assert!(
                    reason.contains("llc") || reason.contains("dependency"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
