//! The service supervisor: runs host processes (containerd, kubelet …) and machined's own
//! tasks (apid) through one lifecycle — dependencies, health checks, restarts with
//! exponential back-off, a cgroup per process service, and logs kept in memory and in
//! /var/log. See docs/services.md.
//!
//! Layout: `plan` decides (pure), `runner` executes (one tokio task per service, the only
//! writer of that service's state), this file is the handle everybody else holds.

// The sequencer and the API wire this in; until main calls them, most items look unused.
#![allow(dead_code, unused_imports)]

pub mod apid;
pub mod cgroup;
pub mod containerd;
mod error;
pub mod grpc;
pub mod logs;
pub mod plan;
pub mod reaper;
mod runner;
pub mod spec;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use error::ServiceError;
pub use logs::{LogFollower, LogLimits, LogLine, LogRing, LogStream};
pub use plan::{BackOff, RestartPolicy, State};
pub use reaper::{ChildExits, Reaping};
pub use spec::{
    HealthCheck, HealthKind, ProbeFn, ProcessCommand, Runnable, ServiceName, ServiceSpec,
    TaskContext, TaskFn,
};

use plan::{Input, Lifecycle, Step};

/// How many transitions the event ring keeps for late readers.
const EVENT_RING: usize = 512;
/// How many of a service's last log lines its status carries.
const STATUS_LOG_LINES: usize = 10;

/// Where the supervisor puts things on the node.
#[derive(Clone)]
pub struct SupervisorConfig {
    /// Parent of the per-service cgroups; `None` runs services without cgroups.
    pub cgroup_root: Option<PathBuf>,
    /// Directory of the `<service>.log` files; `None` keeps logs in memory only.
    pub log_dir: Option<PathBuf>,
    pub log_limits: LogLimits,
    pub reaping: Reaping,
}

impl SupervisorConfig {
    /// The node layout: /sys/fs/cgroup/basalt/<service>, /var/log/<service>.log.
    /// `exits` is fed by machined's PID-1 reaper; when machined does not run as PID 1
    /// (and so runs no reaper), set `reaping` to [`Reaping::Direct`] instead.
    pub fn node(exits: Arc<ChildExits>) -> Self {
        Self {
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup/basalt")),
            log_dir: Some(PathBuf::from("/var/log")),
            log_limits: LogLimits::default(),
            reaping: Reaping::External(exits),
        }
    }
}

/// The last health-check result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub healthy: bool,
    /// What the probe saw ("containerd 1.6.20 (revision …)") or why it failed.
    pub message: String,
    pub checked: SystemTime,
}

/// A service as the API shows it. Read-only snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    pub name: String,
    pub state: State,
    /// Why it is in that state ("exited with status 3; restarting in 4s …").
    pub message: String,
    pub health: Option<HealthReport>,
    /// Main PID of a running process service.
    pub pid: Option<u32>,
    /// Restarts the supervisor performed on its own.
    pub restarts: u32,
    /// Failures since the last stable run (a crash loop shows a growing number).
    pub consecutive_failures: u32,
    /// When it entered `state`.
    pub since: SystemTime,
    pub last_error: Option<String>,
    /// In back-off: when the next start happens.
    pub next_restart: Option<SystemTime>,
    pub last_log_lines: Vec<LogLine>,
    pub depends_on: Vec<String>,
}

/// One state transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEvent {
    /// Increases by one per event, across all services.
    pub sequence: u64,
    pub time: SystemTime,
    pub service: String,
    pub from: State,
    pub to: State,
    pub message: String,
}

pub(crate) enum Command {
    Start,
    Stop(oneshot::Sender<()>),
}

pub(crate) struct StatusRecord {
    lifecycle: Lifecycle,
    message: String,
    since: SystemTime,
    pid: Option<u32>,
    health: Option<HealthReport>,
    last_error: Option<String>,
    next_restart: Option<SystemTime>,
}

pub(crate) struct ServiceHandle {
    spec: ServiceSpec,
    status: Mutex<StatusRecord>,
    log: Arc<LogRing>,
    commands: mpsc::UnboundedSender<Command>,
}

pub(crate) struct Shared {
    config: SupervisorConfig,
    services: Mutex<BTreeMap<String, Arc<ServiceHandle>>>,
    events: broadcast::Sender<ServiceEvent>,
    event_ring: Mutex<VecDeque<ServiceEvent>>,
    sequence: AtomicU64,
    /// Bumped on every state change; dependents waiting in `waiting` watch it.
    changed: watch::Sender<u64>,
}

/// The handle to the supervisor; cheap to clone, shared by the sequencer and the API.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Shared>,
}

impl Supervisor {
    pub fn new(config: SupervisorConfig) -> Self {
        let (events, _) = broadcast::channel(EVENT_RING);
        let (changed, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                config,
                services: Mutex::new(BTreeMap::new()),
                events,
                event_ring: Mutex::new(VecDeque::new()),
                sequence: AtomicU64::new(0),
                changed,
            }),
        }
    }

    /// Adds a service (stopped). Must be called inside a tokio runtime: it spawns the
    /// service's runner task. Dependencies may be registered later; they are checked
    /// when something is started.
    pub fn register(&self, spec: ServiceSpec) -> Result<(), ServiceError> {
        let name = spec.name.as_str().to_owned();
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ServiceError::NoRuntime {
                service: name.clone(),
            })?;
        let mut services = lock(&self.shared.services);
        if services.contains_key(&name) {
            return Err(ServiceError::AlreadyRegistered { service: name });
        }
        let log = Arc::new(LogRing::new(self.shared.config.log_limits));
        if let Some(dir) = &self.shared.config.log_dir {
            log.set_file(Some(dir.join(format!("{name}.log"))));
        }
        let (commands, rx) = mpsc::unbounded_channel();
        let handle = Arc::new(ServiceHandle {
            spec,
            status: Mutex::new(StatusRecord {
                lifecycle: Lifecycle::new(),
                message: "registered".to_owned(),
                since: SystemTime::now(),
                pid: None,
                health: None,
                last_error: None,
                next_restart: None,
            }),
            log,
            commands,
        });
        services.insert(name, handle.clone());
        drop(services);
        runtime.spawn(runner::run(self.shared.clone(), handle, rx));
        Ok(())
    }

    /// Starts `name` and, first, everything it depends on. Returns once requested; each
    /// service waits in `waiting` until its dependencies are healthy.
    pub fn start(&self, name: &str) -> Result<(), ServiceError> {
        self.start_many(&[name.to_owned()])
    }

    /// Starts every registered service, in dependency order.
    pub fn start_all(&self) -> Result<(), ServiceError> {
        let names: Vec<String> = lock(&self.shared.services).keys().cloned().collect();
        self.start_many(&names)
    }

    fn start_many(&self, names: &[String]) -> Result<(), ServiceError> {
        let order = plan::start_order(&self.graph(), names)?;
        for name in order {
            self.handle(&name)?
                .commands
                .send(Command::Start)
                .map_err(|_| ServiceError::RunnerGone { service: name })?;
        }
        Ok(())
    }

    /// Stops `name` after everything that depends on it (dependents first), each with
    /// its grace period. Returns when all of them are stopped.
    pub async fn stop(&self, name: &str) -> Result<(), ServiceError> {
        let order = plan::stop_order(&self.graph(), &[name.to_owned()])?;
        for name in order {
            self.stop_one(&name).await?;
        }
        Ok(())
    }

    /// Stops and starts `name` alone; its dependents keep running.
    pub async fn restart(&self, name: &str) -> Result<(), ServiceError> {
        self.stop_one(name).await?;
        self.start(name)
    }

    /// Stops every service in reverse dependency order, within `timeout` overall.
    pub async fn stop_all(&self, timeout: Duration) -> Result<(), ServiceError> {
        let names: Vec<String> = lock(&self.shared.services).keys().cloned().collect();
        // A graph that cannot start (a cycle) has nothing running in dependency order;
        // stop it in name order rather than not at all.
        let order = plan::stop_order(&self.graph(), &names).unwrap_or(names);
        let all = async {
            for name in &order {
                self.stop_one(name).await?;
            }
            Ok::<(), ServiceError>(())
        };
        match tokio::time::timeout(timeout, all).await {
            Ok(result) => result,
            Err(_) => Err(ServiceError::StopAllTimedOut {
                seconds: timeout.as_secs(),
                services: self
                    .statuses()
                    .into_iter()
                    .filter(|s| !matches!(s.state, State::Stopped | State::Failed))
                    .map(|s| s.name)
                    .collect(),
            }),
        }
    }

    async fn stop_one(&self, name: &str) -> Result<(), ServiceError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ServiceError::RunnerGone {
            service: name.to_owned(),
        };
        self.handle(name)?
            .commands
            .send(Command::Stop(tx))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub fn statuses(&self) -> Vec<ServiceStatus> {
        let services: Vec<Arc<ServiceHandle>> =
            lock(&self.shared.services).values().cloned().collect();
        services.iter().map(|h| status_of(h)).collect()
    }

    pub fn status(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        Ok(status_of(self.handle(name)?.as_ref()))
    }

    /// The service's log ring, then (with `follow`) new lines as they come.
    pub fn logs(&self, name: &str, follow: bool) -> Result<LogFollower, ServiceError> {
        Ok(self.handle(name)?.log.stream(follow))
    }

    /// Every transition from now on.
    pub fn events(&self) -> broadcast::Receiver<ServiceEvent> {
        self.shared.events.subscribe()
    }

    /// The last transitions (bounded), oldest first.
    pub fn recent_events(&self) -> Vec<ServiceEvent> {
        lock(&self.shared.event_ring).iter().cloned().collect()
    }

    /// Waits until `name` is in one of `wanted`, or fails after `timeout` naming the
    /// state it is stuck in.
    pub async fn wait_for(
        &self,
        name: &str,
        wanted: &[State],
        timeout: Duration,
    ) -> Result<ServiceStatus, ServiceError> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status(name)?;
            if wanted.contains(&status.state) {
                return Ok(status);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(ServiceError::WaitTimedOut {
                        service: name.to_owned(),
                        wanted: wanted
                            .iter()
                            .map(|s| s.to_string())
                            .collect::<Vec<_>>()
                            .join(" or "),
                        seconds: timeout.as_secs(),
                        state: status.state.to_string(),
                        message: status.message,
                    });
                }
            }
        }
    }

    fn handle(&self, name: &str) -> Result<Arc<ServiceHandle>, ServiceError> {
        lock(&self.shared.services)
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::UnknownService {
                service: name.to_owned(),
            })
    }

    fn graph(&self) -> plan::Graph {
        lock(&self.shared.services)
            .iter()
            .map(|(name, h)| {
                (
                    name.clone(),
                    h.spec
                        .depends_on
                        .iter()
                        .map(|d| d.as_str().to_owned())
                        .collect(),
                )
            })
            .collect()
    }
}

fn status_of(h: &ServiceHandle) -> ServiceStatus {
    let st = lock(&h.status);
    let last_log_lines = {
        let mut lines: Vec<LogLine> = h
            .log
            .tail(STATUS_LOG_LINES * 4)
            .into_iter()
            .filter(|l| l.stream != LogStream::Supervisor)
            .collect();
        let skip = lines.len().saturating_sub(STATUS_LOG_LINES);
        lines.drain(..skip);
        lines
    };
    ServiceStatus {
        name: h.spec.name.as_str().to_owned(),
        state: st.lifecycle.state(),
        message: st.message.clone(),
        health: st.health.clone(),
        pid: st.pid,
        restarts: st.lifecycle.restarts(),
        consecutive_failures: st.lifecycle.consecutive_failures(),
        since: st.since,
        last_error: st.last_error.clone(),
        next_restart: st.next_restart,
        last_log_lines,
        depends_on: h
            .spec
            .depends_on
            .iter()
            .map(|d| d.as_str().to_owned())
            .collect(),
    }
}

impl Shared {
    /// The only place a service's lifecycle changes: feeds `input` to the planner,
    /// records the result and publishes the transition.
    pub(crate) fn apply(&self, h: &ServiceHandle, input: Input) -> Option<Step> {
        let is_error = match &input {
            Input::SpawnFailed(_) | Input::ProbeFailed(_) => true,
            Input::Exited { success, .. } => !success,
            _ => false,
        };
        let probe = match &input {
            Input::ProbeOk(m) => Some((true, m.clone())),
            Input::ProbeFailed(m) | Input::ProbeNotYet(m) => Some((false, m.clone())),
            _ => None,
        };
        let policy = h.spec.policy();
        let mut st = lock(&h.status);
        let step = st.lifecycle.on(input, &policy)?;
        if let Some((healthy, message)) = probe {
            st.health = Some(HealthReport {
                healthy,
                message,
                checked: SystemTime::now(),
            });
        }
        if is_error && step.to != State::Stopping {
            st.last_error = Some(step.message.clone());
        }
        st.message = step.message.clone();
        if !matches!(
            step.to,
            State::Running | State::Healthy | State::Unhealthy | State::Stopping
        ) {
            st.pid = None;
        }
        if step.to != State::Failed {
            st.next_restart = None;
        }
        if !step.changed() {
            drop(st);
            // Repeated successful probes would flood the log; everything else is news.
            if !matches!(step.to, State::Healthy) {
                h.log.push(
                    LogStream::Supervisor,
                    &format!("{}: {}", step.to, step.message),
                );
            }
            return Some(step);
        }
        st.since = SystemTime::now();
        if matches!(step.to, State::Stopped | State::Waiting) {
            st.health = None;
        }
        let event = ServiceEvent {
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
            time: st.since,
            service: h.spec.name.as_str().to_owned(),
            from: step.from,
            to: step.to,
            message: step.message.clone(),
        };
        drop(st);
        let line = format!("{} → {}: {}", event.from, event.to, event.message);
        // machined's own log (console, kmsg) tells the story of the node's services too.
        if matches!(event.to, State::Failed | State::Unhealthy) {
            crate::log::warning!("service {}: {line}", event.service);
        } else {
            crate::log::info!("service {}: {line}", event.service);
        }
        h.log.push(LogStream::Supervisor, &line);
        {
            let mut ring = lock(&self.event_ring);
            if ring.len() == EVENT_RING {
                ring.pop_front();
            }
            ring.push_back(event.clone());
        }
        // Nobody listening is fine.
        let _ = self.events.send(event);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        Some(step)
    }

    pub(crate) fn set_pid(&self, h: &ServiceHandle, pid: Option<u32>) {
        lock(&h.status).pid = pid;
    }

    pub(crate) fn set_next_restart(&self, h: &ServiceHandle, at: Option<SystemTime>) {
        lock(&h.status).next_restart = at;
    }

    pub(crate) fn is_healthy(&self, name: &str) -> bool {
        let handle = lock(&self.services).get(name).cloned();
        handle.is_some_and(|h| lock(&h.status).lifecycle.state() == State::Healthy)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic (single assignments); keep going
    // rather than take PID 1 down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
