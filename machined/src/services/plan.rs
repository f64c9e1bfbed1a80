//! The supervisor's decisions, as pure functions over plain data: the lifecycle state
//! machine of one service, the restart back-off, and the start/stop order derived from
//! the dependency graph. Nothing here touches a process, a file or a clock; the executor
//! (`runner.rs`) feeds inputs in and carries the returned effects out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use basalt_api::types::ServiceState as State;

use super::error::ServiceError;

/// When a service that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Whatever the exit status: a node service is meant to run until machined stops it.
    Always,
    /// Only after a failure; a clean exit (status 0) leaves it stopped.
    OnFailure,
    /// Never: one run, then stopped (clean exit) or failed.
    Never,
}

/// Exponential back-off between restarts: `initial`, doubling up to `max`; a run that
/// lasted at least `reset_after` counts as stable and starts the doubling over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackOff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for BackOff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(120),
        }
    }
}

/// The delay before restart number `consecutive_failures` (1 for the first failure of a
/// streak): initial · 2^(n-1), capped at max.
pub fn backoff_delay(backoff: &BackOff, consecutive_failures: u32) -> Duration {
    let exponent = consecutive_failures.saturating_sub(1).min(31);
    backoff
        .initial
        .saturating_mul(1u32 << exponent)
        .min(backoff.max)
}

/// What happened to a service, as the executor observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An operator or the sequencer asked for the service to run.
    Start,
    /// Every dependency is healthy.
    DepsReady,
    /// The process (or internal task) exists now.
    Spawned,
    /// It could not be started at all (missing binary, bad working directory …).
    SpawnFailed(String),
    /// A health probe succeeded, with what it reported ("containerd 1.6.20").
    ProbeOk(String),
    /// A health probe failed or timed out.
    ProbeFailed(String),
    /// A probe failed while the service is still in its start period (it has never been
    /// healthy in this run and is allowed time to come up): reported, not counted.
    ProbeNotYet(String),
    /// The process ended on its own.
    Exited {
        success: bool,
        description: String,
        ran_for: Duration,
    },
    /// The back-off delay after a failure is over.
    BackOffElapsed,
    /// An operator or the sequencer asked for the service to stop.
    Stop,
    /// The stop sequence finished: nothing of the service is left running.
    Terminated,
}

/// What the executor must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Nothing,
    /// Wait until every dependency is healthy, then feed `DepsReady`.
    WaitForDependencies,
    /// Start the process (or task) now.
    Spawn,
    /// Feed `BackOffElapsed` after this delay (unless stopped first).
    RestartAfter(Duration),
    /// SIGTERM, grace period, SIGKILL, kill the cgroup; then feed `Terminated`.
    Terminate,
}

/// One accepted input: where the service was, where it is, why, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub from: State,
    pub to: State,
    pub message: String,
    pub effect: Effect,
}

impl Step {
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

/// How the service's lifecycle reacts: restart policy, back-off and how many failed
/// probes in a row make it unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub backoff: BackOff,
    pub failure_threshold: u32,
}

/// The lifecycle of one service. Only the supervisor holds one per service, so the
/// service's state has exactly one writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    state: State,
    /// Restarts the supervisor performed on its own since registration.
    restarts: u32,
    /// Failures since the last stable run; drives the back-off exponent.
    consecutive_failures: u32,
    /// Failed probes in a row.
    probe_failures: u32,
    /// In `Failed`: a restart is scheduled (back-off), as opposed to given up.
    restart_pending: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A registered service that was never started.
    pub fn new() -> Self {
        Self {
            state: State::Stopped,
            restarts: 0,
            consecutive_failures: 0,
            probe_failures: 0,
            restart_pending: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn restart_pending(&self) -> bool {
        self.restart_pending
    }

    /// Applies one input. `None` means the input does not apply in the current state
    /// (a `Start` while running, a stale probe result after an exit …) and changed
    /// nothing.
    pub fn on(&mut self, input: Input, policy: &Policy) -> Option<Step> {
        use State as S;
        let from = self.state;
        let (to, message, effect) = match (from, input) {
            (S::Stopped | S::Failed, Input::Start) => {
                // An explicit start is a fresh attempt: the operator fixed something.
                self.consecutive_failures = 0;
                self.restart_pending = false;
                (
                    S::Waiting,
                    "waiting for dependencies".to_owned(),
                    Effect::WaitForDependencies,
                )
            }
            (S::Waiting, Input::DepsReady) => (S::Starting, "starting".to_owned(), Effect::Spawn),
            (S::Waiting, Input::Stop) => (
                S::Stopped,
                "stopped before it started".to_owned(),
                Effect::Nothing,
            ),
            (S::Starting, Input::Spawned) => {
                self.probe_failures = 0;
                (S::Running, "started".to_owned(), Effect::Nothing)
            }
            (S::Starting, Input::SpawnFailed(error)) => self.after_end(
                false,
                format!("could not start: {error}"),
                Duration::ZERO,
                policy,
            ),
            (S::Running | S::Healthy | S::Unhealthy, Input::ProbeOk(message)) => {
                self.probe_failures = 0;
                (S::Healthy, message, Effect::Nothing)
            }
            (S::Running, Input::ProbeNotYet(error)) => (
                S::Running,
                format!("not ready yet: {error}"),
                Effect::Nothing,
            ),
            (S::Running | S::Healthy | S::Unhealthy, Input::ProbeFailed(error)) => {
                self.probe_failures = self.probe_failures.saturating_add(1);
                let to = if self.probe_failures >= policy.failure_threshold.max(1) {
                    S::Unhealthy
                } else {
                    from
                };
                (
                    to,
                    format!(
                        "health check failed ({} in a row): {error}",
                        self.probe_failures
                    ),
                    Effect::Nothing,
                )
            }
            (
                S::Starting | S::Running | S::Healthy | S::Unhealthy,
                Input::Exited {
                    success,
                    description,
                    ran_for,
                },
            ) => self.after_end(success, description, ran_for, policy),
            (S::Failed, Input::BackOffElapsed) if self.restart_pending => {
                self.restart_pending = false;
                self.restarts = self.restarts.saturating_add(1);
                (
                    S::Starting,
                    format!("restarting (restart {})", self.restarts),
                    Effect::Spawn,
                )
            }
            (S::Failed, Input::Stop) if self.restart_pending => {
                self.restart_pending = false;
                (
                    S::Stopped,
                    "stopped; pending restart cancelled".to_owned(),
                    Effect::Nothing,
                )
            }
            (S::Starting | S::Running | S::Healthy | S::Unhealthy, Input::Stop) => {
                (S::Stopping, "stopping".to_owned(), Effect::Terminate)
            }
            (S::Stopping, Input::Exited { description, .. }) => (
                S::Stopping,
                format!("main process ended ({description}); cleaning up"),
                Effect::Nothing,
            ),
            (S::Stopping, Input::Terminated) => {
                self.restart_pending = false;
                (S::Stopped, "stopped".to_owned(), Effect::Nothing)
            }
            _ => return None,
        };
        self.state = to;
        Some(Step {
            from,
            to,
            message,
            effect,
        })
    }

    /// The process ended (or never started): restart after a back-off, or stay down.
    fn after_end(
        &mut self,
        success: bool,
        description: String,
        ran_for: Duration,
        policy: &Policy,
    ) -> (State, String, Effect) {
        if ran_for >= policy.backoff.reset_after {
            self.consecutive_failures = 0;
        }
        let restart = match policy.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if !restart {
            let to = if success {
                State::Stopped
            } else {
                State::Failed
            };
            return (
                to,
                format!("{description}; not restarting"),
                Effect::Nothing,
            );
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.restart_pending = true;
        let delay = backoff_delay(&policy.backoff, self.consecutive_failures);
        (
            State::Failed,
            format!(
                "{description}; restarting in {} (failure {} in a row)",
                human(delay),
                self.consecutive_failures
            ),
            Effect::RestartAfter(delay),
        )
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The dependency graph: service name → the services it needs healthy first.
pub type Graph = BTreeMap<String, Vec<String>>;

/// The order to start `targets` in: every transitive dependency first, each service
/// once, ties broken by name so the order is reproducible.
pub fn start_order(graph: &Graph, targets: &[String]) -> Result<Vec<String>, ServiceError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        InProgress,
        Done,
    }
    fn visit(
        graph: &Graph,
        name: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ServiceError> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::InProgress) => {
                let begin = path.iter().position(|p| p == name).unwrap_or(0);
                let mut cycle = path[begin..].to_vec();
                cycle.push(name.to_owned());
                return Err(ServiceError::DependencyCycle { cycle });
            }
            None => {}
        }
        let deps = graph
            .get(name)
            .ok_or_else(|| ServiceError::UnknownService {
                service: name.to_owned(),
            })?;
        marks.insert(name.to_owned(), Mark::InProgress);
        path.push(name.to_owned());
        let mut sorted: Vec<&String> = deps.iter().collect();
        sorted.sort();
        for dep in sorted {
            if !graph.contains_key(dep) {
                return Err(ServiceError::UnknownDependency {
                    service: name.to_owned(),
                    dependency: dep.clone(),
                });
            }
            visit(graph, dep, marks, path, order)?;
        }
        path.pop();
        marks.insert(name.to_owned(), Mark::Done);
        order.push(name.to_owned());
        Ok(())
    }

    let mut marks = BTreeMap::new();
    let mut order = Vec::new();
    let mut sorted: Vec<&String> = targets.iter().collect();
    sorted.sort();
    for target in sorted {
        visit(graph, target, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// The order to stop `targets` in: every service that (transitively) depends on one of
/// them first, then the targets; the reverse of a start order.
pub fn stop_order(graph: &Graph, targets: &[String]) -> Result<Vec<String>, ServiceError> {
    for target in targets {
        if !graph.contains_key(target) {
            return Err(ServiceError::UnknownService {
                service: target.clone(),
            });
        }
    }
    let mut affected: BTreeSet<String> = targets.iter().cloned().collect();
    loop {
        let before = affected.len();
        for (name, deps) in graph {
            if deps.iter().any(|d| affected.contains(d)) {
                affected.insert(name.clone());
            }
        }
        if affected.len() == before {
            break;
        }
    }
    // A dependency that is not registered cannot be running: leave it out.
    let known: Graph = graph
        .iter()
        .map(|(name, deps)| {
            let deps = deps
                .iter()
                .filter(|d| graph.contains_key(*d))
                .cloned()
                .collect();
            (name.clone(), deps)
        })
        .collect();
    let all: Vec<String> = affected.iter().cloned().collect();
    let mut order: Vec<String> = start_order(&known, &all)?
        .into_iter()
        .filter(|n| affected.contains(n))
        .collect();
    order.reverse();
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATES: [State; 8] = [
        State::Waiting,
        State::Starting,
        State::Running,
        State::Healthy,
        State::Unhealthy,
        State::Stopping,
        State::Stopped,
        State::Failed,
    ];

    fn policy(restart: RestartPolicy) -> Policy {
        Policy {
            restart,
            backoff: BackOff::default(),
            failure_threshold: 3,
        }
    }

    fn exited(success: bool, secs: u64) -> Input {
        Input::Exited {
            success,
            description: if success {
                "exited with status 0".into()
            } else {
                "exited with status 3".into()
            },
            ran_for: Duration::from_secs(secs),
        }
    }

    fn all_inputs() -> Vec<Input> {
        vec![
            Input::Start,
            Input::DepsReady,
            Input::Spawned,
            Input::SpawnFailed("ENOENT".into()),
            Input::ProbeOk("ok".into()),
            Input::ProbeFailed("refused".into()),
            Input::ProbeNotYet("refused".into()),
            exited(true, 1),
            exited(false, 1),
            Input::BackOffElapsed,
            Input::Stop,
            Input::Terminated,
        ]
    }

    fn in_state(state: State, restart_pending: bool) -> Lifecycle {
        Lifecycle {
            state,
            restarts: 0,
            consecutive_failures: 0,
            probe_failures: 0,
            restart_pending,
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_to_the_cap() {
        let b = BackOff::default();
        let got: Vec<u64> = (1..=9).map(|n| backoff_delay(&b, n).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff_delay(&b, 0), Duration::from_secs(1));
        assert_eq!(backoff_delay(&b, u32::MAX), Duration::from_secs(60));
    }

    /// Every (state, input) pair: the table of what is accepted and where it leads.
    #[test]
    fn transition_table_is_exhaustive() {
        use State as S;
        let p = policy(RestartPolicy::Always);
        for state in ALL_STATES {
            for pending in [false, true] {
                for input in all_inputs() {
                    let mut lc = in_state(state, pending);
                    let got = lc.on(input.clone(), &p).map(|s| (s.to, s.effect));
                    let restart_effect = Effect::RestartAfter(Duration::from_secs(1));
                    let expected = match (state, &input) {
                        (S::Stopped | S::Failed, Input::Start) => {
                            Some((S::Waiting, Effect::WaitForDependencies))
                        }
                        (S::Waiting, Input::DepsReady) => Some((S::Starting, Effect::Spawn)),
                        (S::Waiting, Input::Stop) => Some((S::Stopped, Effect::Nothing)),
                        (S::Starting, Input::Spawned) => Some((S::Running, Effect::Nothing)),
                        (S::Starting, Input::SpawnFailed(_)) => Some((S::Failed, restart_effect)),
                        (S::Running | S::Healthy | S::Unhealthy, Input::ProbeOk(_)) => {
                            Some((S::Healthy, Effect::Nothing))
                        }
                        // One failure is below the threshold of 3: the state stays.
                        (S::Running, Input::ProbeNotYet(_)) => Some((S::Running, Effect::Nothing)),
                        (S::Running | S::Healthy | S::Unhealthy, Input::ProbeFailed(_)) => {
                            Some((state, Effect::Nothing))
                        }
                        (
                            S::Starting | S::Running | S::Healthy | S::Unhealthy,
                            Input::Exited { .. },
                        ) => Some((S::Failed, restart_effect)),
                        (S::Failed, Input::BackOffElapsed) if pending => {
                            Some((S::Starting, Effect::Spawn))
                        }
                        (S::Failed, Input::Stop) if pending => Some((S::Stopped, Effect::Nothing)),
                        (S::Starting | S::Running | S::Healthy | S::Unhealthy, Input::Stop) => {
                            Some((S::Stopping, Effect::Terminate))
                        }
                        (S::Stopping, Input::Exited { .. }) => Some((S::Stopping, Effect::Nothing)),
                        (S::Stopping, Input::Terminated) => Some((S::Stopped, Effect::Nothing)),
                        _ => None,
                    };
                    assert_eq!(
                        got, expected,
                        "state {state}, pending {pending}, input {input:?}"
                    );
                    if expected.is_none() {
                        assert_eq!(
                            lc,
                            in_state(state, pending),
                            "ignored input changed nothing"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn crash_loop_backs_off_exponentially_and_counts_restarts() {
        let p = policy(RestartPolicy::Always);
        let mut lc = Lifecycle::new();
        lc.on(Input::Start, &p).unwrap();
        lc.on(Input::DepsReady, &p).unwrap();
        let mut delays = Vec::new();
        for _ in 0..8 {
            lc.on(Input::Spawned, &p).unwrap();
            let step = lc.on(exited(false, 0), &p).unwrap();
            assert_eq!(step.to, State::Failed);
            assert!(
                step.message.contains("exited with status 3; restarting in"),
                "{}",
                step.message
            );
            let Effect::RestartAfter(d) = step.effect else {
                panic!("expected a restart, got {:?}", step.effect)
            };
            delays.push(d.as_secs());
            let step = lc.on(Input::BackOffElapsed, &p).unwrap();
            assert_eq!((step.to, step.effect), (State::Starting, Effect::Spawn));
        }
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(lc.restarts(), 8);
        assert_eq!(lc.consecutive_failures(), 8);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let p = policy(RestartPolicy::Always);
        let mut lc = in_state(State::Running, false);
        lc.consecutive_failures = 6;
        let step = lc.on(exited(false, 300), &p).unwrap();
        assert_eq!(step.effect, Effect::RestartAfter(Duration::from_secs(1)));
        assert_eq!(lc.consecutive_failures(), 1);
        // A short run does not reset it.
        let mut lc = in_state(State::Running, false);
        lc.consecutive_failures = 2;
        let step = lc.on(exited(false, 5), &p).unwrap();
        assert_eq!(step.effect, Effect::RestartAfter(Duration::from_secs(4)));
    }

    #[test]
    fn restart_policies_decide_what_an_exit_leads_to() {
        use RestartPolicy as R;
        for (restart, success, to, restarts) in [
            (R::Always, true, State::Failed, true),
            (R::Always, false, State::Failed, true),
            (R::OnFailure, true, State::Stopped, false),
            (R::OnFailure, false, State::Failed, true),
            (R::Never, true, State::Stopped, false),
            (R::Never, false, State::Failed, false),
        ] {
            let mut lc = in_state(State::Healthy, false);
            let step = lc.on(exited(success, 1), &policy(restart)).unwrap();
            assert_eq!(step.to, to, "{restart:?} success={success}");
            assert_eq!(
                lc.restart_pending(),
                restarts,
                "{restart:?} success={success}"
            );
            assert_eq!(
                matches!(step.effect, Effect::RestartAfter(_)),
                restarts,
                "{restart:?} success={success}"
            );
            if !restarts {
                assert!(step.message.ends_with("not restarting"), "{}", step.message);
                // Given up: the back-off timer no longer applies.
                assert_eq!(lc.clone().on(Input::BackOffElapsed, &policy(restart)), None);
            }
        }
    }

    #[test]
    fn unhealthy_after_threshold_failures_and_healthy_again_on_success() {
        let p = policy(RestartPolicy::Always);
        let mut lc = in_state(State::Healthy, false);
        for n in 1..=2 {
            let step = lc.on(Input::ProbeFailed("refused".into()), &p).unwrap();
            assert_eq!(step.to, State::Healthy);
            assert!(!step.changed());
            assert!(step.message.contains(&format!("{n} in a row")));
        }
        let step = lc.on(Input::ProbeFailed("refused".into()), &p).unwrap();
        assert_eq!((step.from, step.to), (State::Healthy, State::Unhealthy));
        let step = lc.on(Input::ProbeOk("1.6.20".into()), &p).unwrap();
        assert_eq!((step.to, step.message.as_str()), (State::Healthy, "1.6.20"));
        // The streak starts over after a success.
        let step = lc.on(Input::ProbeFailed("refused".into()), &p).unwrap();
        assert_eq!(step.to, State::Healthy);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let p = policy(RestartPolicy::Always);
        let mut lc = in_state(State::Running, false);
        for _ in 0..10 {
            let step = lc.on(Input::ProbeNotYet("refused".into()), &p).unwrap();
            assert_eq!(step.to, State::Running);
            assert_eq!(step.message, "not ready yet: refused");
        }
        let step = lc.on(Input::ProbeFailed("refused".into()), &p).unwrap();
        assert!(step.message.contains("(1 in a row)"), "{}", step.message);
    }

    #[test]
    fn a_threshold_of_zero_behaves_as_one() {
        let mut p = policy(RestartPolicy::Always);
        p.failure_threshold = 0;
        let mut lc = in_state(State::Running, false);
        let step = lc.on(Input::ProbeFailed("x".into()), &p).unwrap();
        assert_eq!(step.to, State::Unhealthy);
    }

    #[test]
    fn explicit_start_after_failure_resets_the_streak() {
        let p = policy(RestartPolicy::Never);
        let mut lc = in_state(State::Running, false);
        lc.consecutive_failures = 5;
        lc.on(exited(false, 1), &p).unwrap();
        assert_eq!(lc.state(), State::Failed);
        lc.on(Input::Start, &p).unwrap();
        assert_eq!(lc.consecutive_failures(), 0);
        assert_eq!(lc.state(), State::Waiting);
    }

    #[test]
    fn stop_during_backoff_cancels_the_restart() {
        let p = policy(RestartPolicy::Always);
        let mut lc = in_state(State::Running, false);
        lc.on(exited(false, 1), &p).unwrap();
        let step = lc.on(Input::Stop, &p).unwrap();
        assert_eq!(step.to, State::Stopped);
        assert_eq!(lc.on(Input::BackOffElapsed, &p), None);
    }

    fn graph(edges: &[(&str, &[&str])]) -> Graph {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn start_order_puts_dependencies_first() {
        let g = graph(&[
            ("kubelet", &["containerd", "apid"]),
            ("etcd", &["containerd"]),
            ("containerd", &[]),
            ("apid", &[]),
        ]);
        assert_eq!(
            start_order(&g, &names(&["kubelet", "etcd"])).unwrap(),
            names(&["containerd", "etcd", "apid", "kubelet"])
        );
        assert_eq!(
            start_order(&g, &names(&["etcd"])).unwrap(),
            names(&["containerd", "etcd"])
        );
        let all: Vec<String> = g.keys().cloned().collect();
        let order = start_order(&g, &all).unwrap();
        assert_eq!(order.len(), 4);
        for (name, deps) in &g {
            let at = order.iter().position(|n| n == name).unwrap();
            for dep in deps {
                assert!(order.iter().position(|n| n == dep).unwrap() < at);
            }
        }
    }

    #[test]
    fn stop_order_stops_dependents_first() {
        let g = graph(&[
            ("kubelet", &["containerd"]),
            ("etcd", &["containerd"]),
            ("containerd", &[]),
            ("apid", &[]),
        ]);
        assert_eq!(
            stop_order(&g, &names(&["containerd"])).unwrap(),
            names(&["kubelet", "etcd", "containerd"])
        );
        assert_eq!(stop_order(&g, &names(&["apid"])).unwrap(), names(&["apid"]));
        assert_eq!(
            stop_order(&g, &names(&["kubelet"])).unwrap(),
            names(&["kubelet"])
        );
    }

    #[test]
    fn cycles_are_refused_with_the_cycle_named() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        let err = start_order(&g, &names(&["d"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "services depend on each other in a cycle: a → b → c → a"
        );
        let g = graph(&[("self", &["self"])]);
        assert_eq!(
            start_order(&g, &names(&["self"])).unwrap_err().to_string(),
            "services depend on each other in a cycle: self → self"
        );
    }

    #[test]
    fn unknown_names_are_refused() {
        let g = graph(&[("kubelet", &["containerd"])]);
        assert_eq!(
            start_order(&g, &names(&["kubelet"]))
                .unwrap_err()
                .to_string(),
            "service kubelet depends on containerd, which is not registered"
        );
        assert_eq!(
            start_order(&g, &names(&["etcd"])).unwrap_err().to_string(),
            "no service named etcd is registered"
        );
        assert!(stop_order(&g, &names(&["etcd"])).is_err());
        assert_eq!(
            stop_order(&g, &names(&["kubelet"])).unwrap(),
            names(&["kubelet"]),
            "an unregistered dependency cannot be running"
        );
    }
}
