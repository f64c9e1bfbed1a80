//! What a service is: its name, what it needs, how it runs, how its health is judged and
//! what happens when it ends.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::error::ServiceError;
use super::logs::{LogRing, LogStream};
use super::plan::{BackOff, Policy, RestartPolicy};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A service name: it becomes a cgroup directory and a log file name, so it is a short
/// lower-case identifier (`[a-z0-9][a-z0-9-]{0,62}`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn new(name: &str) -> Result<Self, ServiceError> {
        let bad = |reason| ServiceError::InvalidName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.len() > 63 {
            return Err(bad("it must be 1 to 63 characters long"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("only a-z, 0-9 and '-' are allowed"));
        }
        if name.starts_with('-') {
            return Err(bad("it must not start with '-'"));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host process: executed directly (no shell), with exactly this environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessCommand {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
}

impl ProcessCommand {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            args: Vec::new(),
            env: vec![(
                "PATH".to_owned(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            )],
            working_dir: None,
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// What an internal service's task gets: a stop request it must honour, and its log.
#[derive(Clone)]
pub struct TaskContext {
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) log: Arc<LogRing>,
}

impl TaskContext {
    /// Resolves once the supervisor asks the task to stop; the task then has the grace
    /// period to return before it is aborted.
    pub async fn stopping(&mut self) {
        // Err means the supervisor dropped the sender: treat as a stop request too.
        let _ = self.shutdown.wait_for(|stop| *stop).await;
    }

    pub fn log(&self, text: &str) {
        self.log.push(LogStream::Stdout, text);
    }
}

/// The body of an internal service: called once per (re)start.
pub type TaskFn = Arc<dyn Fn(TaskContext) -> BoxFuture<Result<(), String>> + Send + Sync>;

/// How a service runs.
#[derive(Clone)]
pub enum Runnable {
    /// A host process in its own cgroup.
    Process(ProcessCommand),
    /// A task inside machined (the API server, logind): no PID, no cgroup, same
    /// lifecycle, logs and health checks.
    Task(TaskFn),
}

impl fmt::Debug for Runnable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Process(c) => f.debug_tuple("Process").field(c).finish(),
            Self::Task(_) => f.write_str("Task(..)"),
        }
    }
}

/// A probe returns a short description of what it saw ("containerd 1.6.20") or why it
/// failed.
pub type ProbeFn = Arc<dyn Fn() -> BoxFuture<Result<String, String>> + Send + Sync>;

#[derive(Clone)]
pub enum HealthKind {
    /// Healthy as soon as the process (or task) runs.
    Running,
    /// Healthy while the probe succeeds.
    Probe(ProbeFn),
}

impl fmt::Debug for HealthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running => f.write_str("Running"),
            Self::Probe(_) => f.write_str("Probe(..)"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed probes in a row before the service is reported unhealthy.
    pub failure_threshold: u32,
    /// After each start, failures do not count until the first success or until this
    /// much time has passed, and the probe runs on the quick schedule of
    /// [`HealthCheck::start_period_wait`]: a service that needs a moment to come up is
    /// neither reported unhealthy for it nor made to wait a whole interval to become
    /// healthy.
    pub start_period: Duration,
}

/// How long after a start the first probe runs. Probing at the very moment of the spawn
/// only ever finds a process that has not opened its socket yet; a tenth of a second
/// later a quick service can already answer.
pub const FIRST_PROBE_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between two probes in the start period, so a service that takes
/// seconds to come up is found healthy at most this long after it is.
pub const START_PERIOD_MAX_WAIT: Duration = Duration::from_millis(500);

impl HealthCheck {
    pub fn running() -> Self {
        Self {
            kind: HealthKind::Running,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            failure_threshold: 1,
            start_period: Duration::ZERO,
        }
    }

    /// The wait before the first probe after a start.
    pub fn first_probe_wait(&self) -> Duration {
        FIRST_PROBE_DELAY.min(self.interval)
    }

    /// The wait before the next probe after one that found the service not ready yet in
    /// the start period: half as long again as the wait before, from
    /// [`FIRST_PROBE_DELAY`] up to [`START_PERIOD_MAX_WAIT`], never longer than
    /// `interval`. Quick at first, when most services come up, then easing off so a slow
    /// one is not asked several times a second for half a minute.
    pub fn start_period_wait(&self, previous: Duration) -> Duration {
        (previous + previous / 2)
            .clamp(FIRST_PROBE_DELAY, START_PERIOD_MAX_WAIT)
            .min(self.interval)
    }

    /// A probe with a 30 s start period.
    pub fn probe(probe: ProbeFn, interval: Duration, timeout: Duration, threshold: u32) -> Self {
        Self {
            kind: HealthKind::Probe(probe),
            interval,
            timeout,
            failure_threshold: threshold,
            start_period: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: ServiceName,
    /// Services that must be healthy before this one starts.
    pub depends_on: Vec<ServiceName>,
    pub run: Runnable,
    pub health: HealthCheck,
    pub restart: RestartPolicy,
    pub backoff: BackOff,
    /// Between SIGTERM (or the task's stop request) and SIGKILL.
    pub stop_grace: Duration,
}

impl ServiceSpec {
    /// A process service with the node defaults: restart always, 1 s → 60 s back-off,
    /// healthy while running, 10 s stop grace.
    pub fn process(name: ServiceName, command: ProcessCommand) -> Self {
        Self::with_runnable(name, Runnable::Process(command))
    }

    pub fn task(name: ServiceName, task: TaskFn) -> Self {
        Self::with_runnable(name, Runnable::Task(task))
    }

    fn with_runnable(name: ServiceName, run: Runnable) -> Self {
        Self {
            name,
            depends_on: Vec::new(),
            run,
            health: HealthCheck::running(),
            restart: RestartPolicy::Always,
            backoff: BackOff::default(),
            stop_grace: Duration::from_secs(10),
        }
    }

    pub(crate) fn policy(&self) -> Policy {
        Policy {
            restart: self.restart,
            backoff: self.backoff,
            failure_threshold: self.health.failure_threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_every(interval: Duration) -> HealthCheck {
        let probe: ProbeFn = Arc::new(|| Box::pin(async { Ok(String::new()) }));
        HealthCheck::probe(probe, interval, Duration::from_secs(1), 3)
    }

    #[test]
    fn start_period_probes_come_quickly_then_ease_off() {
        let h = probe_every(Duration::from_secs(5));
        assert_eq!(h.first_probe_wait(), Duration::from_millis(100));
        let mut wait = h.first_probe_wait();
        let mut waits = vec![wait];
        for _ in 0..8 {
            wait = h.start_period_wait(wait);
            waits.push(wait);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 150, 225, 337, 500, 500, 500, 500, 500]);
        // Two probes a second at most once eased off: 30 s of start period ask ~60 times,
        // not 120 (a fixed 250 ms) or 300 (a fixed 100 ms).
        let mut at = Duration::ZERO;
        let mut wait = h.first_probe_wait();
        let mut probes = 0;
        while at + wait <= Duration::from_secs(30) {
            at += wait;
            probes += 1;
            wait = h.start_period_wait(wait);
        }
        assert_eq!(probes, 62);
    }

    #[test]
    fn start_period_waits_never_exceed_the_interval() {
        let h = probe_every(Duration::from_millis(40));
        assert_eq!(h.first_probe_wait(), Duration::from_millis(40));
        assert_eq!(
            h.start_period_wait(Duration::from_millis(40)),
            Duration::from_millis(40)
        );
        let h = probe_every(Duration::from_millis(200));
        assert_eq!(
            h.start_period_wait(Duration::from_millis(150)),
            Duration::from_millis(200)
        );
        // A zero previous wait (never the case in the runner) still starts at the floor.
        let h = probe_every(Duration::from_secs(5));
        assert_eq!(h.start_period_wait(Duration::ZERO), FIRST_PROBE_DELAY);
    }

    #[test]
    fn service_names_are_validated() {
        for ok in ["containerd", "apid", "kube-let", "etcd3"] {
            assert_eq!(ServiceName::new(ok).unwrap().as_str(), ok);
        }
        for (bad, why) in [
            ("", "1 to 63"),
            ("Containerd", "only a-z"),
            ("../etc", "only a-z"),
            ("a/b", "only a-z"),
            ("-x", "must not start"),
            (&"x".repeat(64), "1 to 63"),
        ] {
            let err = ServiceName::new(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
