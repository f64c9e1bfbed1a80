//! The executor against real host processes, real cgroups (this host mounts cgroup2;
//! the tests need root) and a real containerd.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::cgroup::cgroup2_mount;
use super::*;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A supervisor with its own cgroup root and log directory.
struct Harness {
    sup: Supervisor,
    cgroup_root: PathBuf,
    logs: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let mount = cgroup2_mount().expect("these tests need a cgroup2 mount");
        let cgroup_root = mount.join(format!(
            "basalt-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let logs = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(SupervisorConfig {
            log_dir: Some(logs.path().to_owned()),
            ..config(Some(cgroup_root.clone()), Reaping::Direct)
        });
        Self {
            sup,
            cgroup_root,
            logs,
        }
    }

    /// Registers `spec` and asks it to start.
    fn launch(&self, spec: ServiceSpec) {
        let service = spec.name.as_str().to_owned();
        self.sup.register(spec).unwrap();
        self.sup.start(&service).unwrap();
    }

    /// Makes `probe` answer "ready" and says how long `service` then took to be reported
    /// healthy (at most 3 s).
    async fn healthy_after_ready(&self, service: &str, probe: &FlagProbe) -> Duration {
        probe.set_ready();
        let ready_at = std::time::Instant::now();
        self.sup
            .wait_for(service, &[State::Healthy], Duration::from_secs(3))
            .await
            .unwrap();
        ready_at.elapsed()
    }

    async fn finish(self) {
        self.sup.stop_all(Duration::from_secs(30)).await.unwrap();
        // Every service cgroup is gone after a stop, so the root (created with the first
        // process service) must be removable.
        match std::fs::remove_dir(&self.cgroup_root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.unwrap(),
        }
    }
}

/// A test that panics never reaches `finish`: kill whatever it left running and remove
/// its cgroups, so a failure does not leak processes (containerd) or directories.
impl Drop for Harness {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.cgroup_root) else {
            return;
        };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let cg = entry.path();
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
            for _ in 0..100 {
                if std::fs::remove_dir(&cg).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup_root);
    }
}

/// A supervisor configuration without a log directory.
fn config(cgroup_root: Option<PathBuf>, reaping: Reaping) -> SupervisorConfig {
    SupervisorConfig {
        cgroup_root,
        log_dir: None,
        log_limits: LogLimits::default(),
        reaping,
    }
}

/// The text of every line in `service`'s log ring so far.
fn log_texts(sup: &Supervisor, service: &str) -> Vec<String> {
    sup.logs(service, false)
        .unwrap()
        .collect_now()
        .into_iter()
        .map(|l| l.text)
        .collect()
}

fn name(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

fn sh(service: &str, script: &str) -> ServiceSpec {
    let mut spec = ServiceSpec::process(
        name(service),
        ProcessCommand::new("/bin/sh").args(["-c", script]),
    );
    spec.stop_grace = Duration::from_secs(2);
    spec
}

fn fast_backoff() -> BackOff {
    BackOff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        reset_after: Duration::from_secs(60),
    }
}

const T: Duration = Duration::from_secs(20);

async fn wait_log(sup: &Supervisor, service: &str, needle: &str) -> String {
    let mut logs = sup.logs(service, true).unwrap();
    let found = tokio::time::timeout(T, async {
        while let Some(line) = logs.next().await {
            if line.text.contains(needle) {
                return line.text;
            }
        }
        panic!("log of {service} ended without {needle:?}");
    });
    found
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in the log of {service}"))
}

fn alive(pid: i32) -> bool {
    // A zombie re-parented to a host init that does not reap counts as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn runs_a_process_in_its_cgroup_captures_logs_and_stops_it() {
    let h = Harness::new();
    let mut events = h.sup.events();
    h.launch(sh(
        "echoer",
        "echo hello from stdout; echo oops >&2; exec sleep 600",
    ));
    let status = h
        .sup
        .wait_for("echoer", &[State::Healthy], T)
        .await
        .unwrap();
    let pid = status.pid.expect("a running process has a pid");
    let cgroup = h.cgroup_root.join("echoer");
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert_eq!(
        procs.trim(),
        pid.to_string(),
        "the child was placed before exec"
    );

    wait_log(&h.sup, "echoer", "hello from stdout").await;
    wait_log(&h.sup, "echoer", "oops").await;
    let status = h.sup.status("echoer").unwrap();
    let texts: Vec<(LogStream, String)> = status
        .last_log_lines
        .iter()
        .map(|l| (l.stream, l.text.clone()))
        .collect();
    assert!(
        texts.contains(&(LogStream::Stdout, "hello from stdout".into())),
        "{texts:?}"
    );
    assert!(
        texts.contains(&(LogStream::Stderr, "oops".into())),
        "{texts:?}"
    );
    let file = std::fs::read_to_string(h.logs.path().join("echoer.log")).unwrap();
    assert!(file.contains(" stdout hello from stdout\n"), "{file}");

    h.sup.stop("echoer").await.unwrap();
    let status = h.sup.status("echoer").unwrap();
    assert_eq!(status.state, State::Stopped);
    assert_eq!(status.pid, None);
    assert!(!alive(pid as i32));
    assert!(!cgroup.exists(), "the service cgroup is removed on stop");

    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        assert_eq!(e.service, "echoer");
        seen.push((e.from, e.to));
    }
    use State as S;
    assert_eq!(
        seen,
        vec![
            (S::Stopped, S::Waiting),
            (S::Waiting, S::Starting),
            (S::Starting, S::Running),
            (S::Running, S::Healthy),
            (S::Healthy, S::Stopping),
            (S::Stopping, S::Stopped),
        ]
    );
    let recent = h.sup.recent_events();
    assert_eq!(recent.len(), 6);
    assert!(
        recent
            .windows(2)
            .all(|w| w[0].sequence + 1 == w[1].sequence)
    );
    h.finish().await;
}

#[tokio::test]
async fn a_crash_loop_is_reported_and_backs_off() {
    let h = Harness::new();
    let mut spec = sh("crasher", "echo boom; exit 3");
    spec.backoff = fast_backoff();
    h.launch(spec);
    let deadline = tokio::time::Instant::now() + T;
    let status = loop {
        let status = h.sup.status("crasher").unwrap();
        if status.restarts >= 4 && status.state == State::Failed {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.consecutive_failures >= 4, "{status:?}");
    assert!(status.next_restart.is_some(), "{status:?}");
    assert!(
        status
            .message
            .starts_with("exited with status 3; restarting in "),
        "{status:?}"
    );
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("exited with status 3"),
        "{status:?}"
    );
    assert!(
        status.last_log_lines.iter().any(|l| l.text == "boom"),
        "{status:?}"
    );
    // The delays grow, then stay at the cap (200ms).
    let delays: Vec<String> = h
        .sup
        .recent_events()
        .into_iter()
        .filter(|e| e.to == State::Failed)
        .filter_map(|e| {
            e.message
                .split("restarting in ")
                .nth(1)
                .map(|s| s.split(' ').next().unwrap().to_owned())
        })
        .collect();
    assert_eq!(&delays[..4], &["50ms", "100ms", "200ms", "200ms"]);

    // Stopping during back-off cancels the restart.
    h.sup.stop("crasher").await.unwrap();
    let status = h.sup.status("crasher").unwrap();
    assert_eq!(status.state, State::Stopped);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.sup.status("crasher").unwrap().state, State::Stopped);
    h.finish().await;
}

#[tokio::test]
async fn a_missing_binary_fails_with_the_reason() {
    let h = Harness::new();
    let mut spec = ServiceSpec::process(name("ghost"), ProcessCommand::new("/nonexistent/ghostd"));
    spec.restart = RestartPolicy::Never;
    h.launch(spec);
    let status = h.sup.wait_for("ghost", &[State::Failed], T).await.unwrap();
    assert!(
        status
            .message
            .starts_with("could not start: /nonexistent/ghostd: No such file or directory"),
        "{status:?}"
    );
    assert_eq!(status.restarts, 0);
    assert!(
        !h.cgroup_root.join("ghost").exists(),
        "no cgroup is left behind by a failed spawn"
    );
    h.finish().await;
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_kills_the_whole_cgroup() {
    let h = Harness::new();
    // The shell ignores SIGTERM (and so does its background child, which inherits it).
    let mut spec = sh(
        "stubborn",
        "trap '' TERM; sleep 600 & echo grandchild=$!; wait; wait",
    );
    spec.stop_grace = Duration::from_millis(300);
    h.launch(spec);
    let status = h
        .sup
        .wait_for("stubborn", &[State::Healthy], T)
        .await
        .unwrap();
    let main_pid = status.pid.unwrap() as i32;
    let line = wait_log(&h.sup, "stubborn", "grandchild=").await;
    let grandchild: i32 = line.trim_start_matches("grandchild=").parse().unwrap();
    assert!(alive(grandchild));
    let procs = std::fs::read_to_string(h.cgroup_root.join("stubborn/cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l == grandchild.to_string()),
        "{procs}"
    );

    let started = std::time::Instant::now();
    h.sup.stop("stubborn").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "SIGTERM was ignored: grace elapsed"
    );
    assert!(!alive(main_pid));
    assert!(!alive(grandchild), "the grandchild died with the cgroup");
    let lines = log_texts(&h.sup, "stubborn");
    assert!(
        lines.iter().any(|l| l.contains("after SIGTERM: SIGKILL")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("main process ended (killed by signal 9 (SIGKILL))")),
        "{lines:?}"
    );
    assert_eq!(h.sup.status("stubborn").unwrap().state, State::Stopped);
    h.finish().await;
}

#[tokio::test]
async fn leftovers_are_killed_when_the_main_process_exits() {
    let h = Harness::new();
    let mut spec = sh("forker", "sleep 600 & echo orphan=$!; exit 0");
    spec.restart = RestartPolicy::OnFailure;
    h.launch(spec);
    let line = wait_log(&h.sup, "forker", "orphan=").await;
    let orphan: i32 = line.trim_start_matches("orphan=").parse().unwrap();
    let status = h
        .sup
        .wait_for("forker", &[State::Stopped], T)
        .await
        .unwrap();
    assert_eq!(status.message, "exited with status 0; not restarting");
    assert!(!alive(orphan), "the background sleep died with the service");
    assert!(!h.cgroup_root.join("forker").exists());
    h.finish().await;
}

/// A health probe the test controls: "not ready yet" until [`FlagProbe::set_ready`],
/// with a record of when it was asked.
#[derive(Clone, Default)]
struct FlagProbe {
    ready: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl FlagProbe {
    fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    fn calls(&self) -> Vec<std::time::Instant> {
        self.calls.lock().unwrap().clone()
    }

    /// An [`idle_task`] judged by this probe every `interval`, unhealthy after one
    /// counted failure.
    fn task(&self, service: &str, interval: Duration) -> ServiceSpec {
        let this = self.clone();
        let probe: ProbeFn = Arc::new(move || {
            this.calls.lock().unwrap().push(std::time::Instant::now());
            let ready = this.ready.load(Ordering::SeqCst);
            Box::pin(async move {
                if ready {
                    Ok("ready".to_owned())
                } else {
                    Err("not ready yet".to_owned())
                }
            })
        });
        let mut spec = idle_task(service);
        spec.health = HealthCheck::probe(probe, interval, Duration::from_secs(1), 1);
        spec
    }
}

/// An internal service: logs, then runs until asked to stop.
fn idle_task(service: &str) -> ServiceSpec {
    let task: TaskFn = Arc::new(|mut ctx: TaskContext| {
        Box::pin(async move {
            ctx.log("serving");
            ctx.stopping().await;
            ctx.log("shutting down");
            Ok(())
        })
    });
    ServiceSpec::task(name(service), task)
}

#[tokio::test]
async fn dependencies_start_first_and_stop_last() {
    let h = Harness::new();
    let ready = FlagProbe::default();
    let mut base = ready.task("base", Duration::from_millis(20));
    // Counted at once: the test wants `unhealthy` while base is not ready.
    base.health.start_period = Duration::ZERO;
    let mut top = sh("top", "exec sleep 600");
    top.depends_on = vec![name("base")];
    h.sup.register(top).unwrap();
    h.sup.register(base).unwrap();
    let mut events = h.sup.events();

    h.sup.start("top").unwrap();
    h.sup
        .wait_for("base", &[State::Unhealthy], T)
        .await
        .unwrap();
    let waiting = h.sup.status("top").unwrap();
    assert_eq!(
        waiting.state,
        State::Waiting,
        "top waits for an unhealthy base"
    );
    assert_eq!(waiting.depends_on, vec!["base".to_owned()]);
    ready.set_ready();
    h.sup.wait_for("top", &[State::Healthy], T).await.unwrap();
    let base = h.sup.status("base").unwrap();
    assert_eq!((base.state, base.pid), (State::Healthy, None));
    assert_eq!(
        base.health.as_ref().map(|r| r.message.as_str()),
        Some("ready")
    );

    h.sup.stop("base").await.unwrap();
    let mut order = Vec::new();
    while let Ok(e) = events.try_recv() {
        if e.to == State::Stopped {
            order.push(e.service);
        }
    }
    assert_eq!(order, vec!["top", "base"], "the dependent stops first");
    let log = log_texts(&h.sup, "base");
    assert!(
        log.contains(&"serving".to_owned()) && log.contains(&"shutting down".to_owned()),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("main process ended (task returned)")),
        "{log:?}"
    );
    h.finish().await;
}

#[tokio::test]
async fn the_start_period_probes_fast_and_does_not_count_failures() {
    let h = Harness::new();
    let ready = FlagProbe::default();
    // A long interval: only the start period's fast probing can make it healthy quickly.
    h.launch(ready.task("slowstart", Duration::from_secs(3600)));
    h.sup
        .wait_for("slowstart", &[State::Running], T)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let status = h.sup.status("slowstart").unwrap();
    assert_eq!(
        status.state,
        State::Running,
        "failures in the start period do not count"
    );
    assert_eq!(status.message, "not ready yet: not ready yet");
    let took = h.healthy_after_ready("slowstart", &ready).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    h.finish().await;
}

#[tokio::test]
async fn the_first_probes_come_quickly_then_ease_off_without_hammering() {
    let h = Harness::new();
    let ready = FlagProbe::default();
    // containerd's interval: a service that missed the first probe must not wait for it.
    let started = std::time::Instant::now();
    h.launch(ready.task("quickprobe", Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = ready.calls();
    assert_eq!(h.sup.status("quickprobe").unwrap().state, State::Running);
    // Not at the spawn (nothing can answer yet), but well before a whole interval.
    let first = seen[0] - started;
    assert!(
        first >= Duration::from_millis(90) && first < Duration::from_millis(600),
        "first probe after {first:?}"
    );
    // Quick at first, then easing off: never more often than the first wait, never more
    // than two a second once eased off, so 2 s of "not yet" is a handful of probes.
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        (4..=7).contains(&seen.len()),
        "{} probes in 2 s, gaps {gaps:?}",
        seen.len()
    );
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(90)),
        "{gaps:?}"
    );
    assert!(
        gaps.windows(2)
            .all(|w| w[1] + Duration::from_millis(50) >= w[0]),
        "waits only grow: {gaps:?}"
    );
    // Ready now: found within one eased-off wait, not one 5 s interval later.
    let took = h.healthy_after_ready("quickprobe", &ready).await;
    assert!(
        took < Duration::from_millis(900),
        "healthy {took:?} after it was ready"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_task_that_ignores_stop_is_aborted_after_the_grace_period() {
    let h = Harness::new();
    let task: TaskFn = Arc::new(|_ctx| Box::pin(std::future::pending()));
    let mut spec = ServiceSpec::task(name("deaf"), task);
    spec.stop_grace = Duration::from_millis(100);
    h.launch(spec);
    h.sup.wait_for("deaf", &[State::Healthy], T).await.unwrap();
    h.sup.stop("deaf").await.unwrap();
    assert_eq!(h.sup.status("deaf").unwrap().state, State::Stopped);
    h.finish().await;
}

#[tokio::test]
async fn restart_and_stop_all() {
    let h = Harness::new();
    h.sup.register(sh("one", "exec sleep 600")).unwrap();
    let mut two = sh("two", "exec sleep 600");
    two.depends_on = vec![name("one")];
    h.sup.register(two).unwrap();
    h.sup.start_all().unwrap();
    let before = h.sup.wait_for("two", &[State::Healthy], T).await.unwrap();
    h.sup.restart("two").await.unwrap();
    let after = h.sup.wait_for("two", &[State::Healthy], T).await.unwrap();
    assert_ne!(before.pid, after.pid);
    assert!(!alive(before.pid.unwrap() as i32));
    // Operator restarts are not crash restarts.
    assert_eq!(after.restarts, 0);
    h.sup.stop_all(Duration::from_secs(10)).await.unwrap();
    assert!(h.sup.statuses().iter().all(|s| s.state == State::Stopped));
    h.finish().await;
}

#[tokio::test]
async fn api_errors_name_the_service() {
    let h = Harness::new();
    h.sup.register(sh("a", "exit 0")).unwrap();
    assert_eq!(
        h.sup.register(sh("a", "exit 0")).unwrap_err().to_string(),
        "a service named a is already registered"
    );
    assert_eq!(
        h.sup.start("nope").unwrap_err().to_string(),
        "no service named nope is registered"
    );
    let mut b = sh("b", "exit 0");
    b.depends_on = vec![name("missing")];
    h.sup.register(b).unwrap();
    assert_eq!(
        h.sup.start("b").unwrap_err().to_string(),
        "service b depends on missing, which is not registered"
    );
    assert!(h.sup.logs("nope", false).is_err());
    h.finish().await;
}

/// containerd from Debian (`apt-get install containerd`), run by the supervisor with a
/// config machined rendered, answering the gRPC Version call on its socket.
#[tokio::test]
async fn supervises_a_real_containerd_and_reads_its_version() {
    let binary = Path::new("/usr/bin/containerd");
    assert!(
        binary.exists(),
        "install containerd: apt-get install -y containerd"
    );
    let h = Harness::new();
    let dir = tempfile::tempdir().unwrap();
    let settings = containerd::ContainerdSettings {
        root: dir.path().join("root"),
        state: dir.path().join("state"),
        address: dir.path().join("state/containerd.sock"),
        registry_config_path: dir.path().join("certs.d"),
        cni_conf_dir: dir.path().join("cni"),
        ..containerd::ContainerdSettings::default()
    };
    let config_file = dir.path().join("config.toml");
    let mirrors = [containerd::RegistryMirror {
        registry: "docker.io".into(),
        endpoints: vec!["https://mirror.local:5000".into()],
    }];
    containerd::write_files(&config_file, &settings, &mirrors).unwrap();
    let mut spec = containerd::service_spec(binary, &config_file, &settings);
    spec.health.interval = Duration::from_millis(200);
    h.launch(spec);
    let status = match h
        .sup
        .wait_for("containerd", &[State::Healthy], Duration::from_secs(60))
        .await
    {
        Ok(s) => s,
        Err(e) => panic!("{e}\n{}", log_texts(&h.sup, "containerd").join("\n")),
    };
    let health = status.health.unwrap();
    assert!(
        health.message.starts_with("containerd 1.6.20"),
        "{}",
        health.message
    );
    let version = grpc::containerd_version(&settings.address, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(version.version.starts_with("1.6.20"), "{version:?}");
    // It logs to the ring like any service (containerd writes to stderr).
    wait_log(&h.sup, "containerd", "containerd successfully booted").await;
    // A crash (SIGKILL from outside) is restarted after the first back-off step.
    let crashed = status.pid.unwrap() as i32;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(crashed, libc::SIGKILL) };
    h.sup
        .wait_for("containerd", &[State::Failed], T)
        .await
        .unwrap();
    let status = h
        .sup
        .wait_for("containerd", &[State::Healthy], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(status.restarts, 1);
    assert_ne!(status.pid, Some(crashed as u32));
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("killed by signal 9 (SIGKILL); restarting in 1s"),
        "{status:?}"
    );
    let pid = status.pid.unwrap() as i32;
    h.sup.stop("containerd").await.unwrap();
    assert!(!alive(pid));
    let status = h.sup.status("containerd").unwrap();
    assert_eq!(status.state, State::Stopped);
    // A clean stop: containerd honours SIGTERM within the grace period.
    assert!(
        !log_texts(&h.sup, "containerd")
            .iter()
            .any(|l| l.contains("after SIGTERM: SIGKILL")),
    );
    let err = grpc::containerd_version(&settings.address, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connecting"), "{err}");
    h.finish().await;
}

/// What the API's `NodeState` wiring calls: wire statuses, immediate action requests,
/// log and event feeds.
#[tokio::test]
async fn the_api_view_reads_and_requests() {
    let h = Harness::new();
    h.sup
        .register(sh("web", "echo up; exec sleep 600"))
        .unwrap();
    let events = h.sup.event_feed(true);
    assert!(events.backlog.is_empty());
    let mut live_events = events.live.unwrap();

    assert_eq!(
        h.sup
            .request("web", basalt_api::ServiceAction::Start)
            .unwrap(),
        "starting web"
    );
    h.sup.wait_for("web", &[State::Healthy], T).await.unwrap();
    let wire = h.sup.wire_statuses();
    assert_eq!(wire.len(), 1);
    assert_eq!(
        (wire[0].name.as_str(), wire[0].state),
        ("web", State::Healthy)
    );
    assert!(wire[0].since_unix_ms.unwrap() > 1_600_000_000_000);

    let first = live_events.recv().await.unwrap();
    assert_eq!(first.kind, "service");
    assert_eq!(first.subject.as_deref(), Some("web"));
    assert_eq!(first.message, "stopped → waiting: waiting for dependencies");

    wait_log(&h.sup, "web", "up").await;
    let feed = h.sup.log_feed("web", true).unwrap();
    assert!(
        feed.backlog
            .iter()
            .any(|l| l.service == "web" && l.message == "up")
    );
    let mut live_logs = feed.live.unwrap();

    assert_eq!(
        h.sup
            .request("web", basalt_api::ServiceAction::Stop)
            .unwrap(),
        "stopping web and what depends on it"
    );
    h.sup.wait_for("web", &[State::Stopped], T).await.unwrap();
    let line = tokio::time::timeout(T, live_logs.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line.message, "healthy → stopping: stopping");

    let err = h
        .sup
        .request("nope", basalt_api::ServiceAction::Restart)
        .unwrap_err();
    assert!(matches!(
        crate::api::ProviderError::from(err),
        crate::api::ProviderError::NotFound { .. }
    ));
    h.finish().await;
}

/// The PID-1 mode: the supervisor never waits for its children; a reaper hands exit
/// statuses over through `ChildExits`. The reaper here waits for the PIDs the statuses
/// show, standing in for machined's `waitpid(-1)` loop, which would also reap the
/// children of the other tests running in this process.
#[tokio::test]
async fn external_reaping_delivers_exits_through_child_exits() {
    let exits = ChildExits::new();
    let mount = cgroup2_mount().unwrap();
    let cgroup_root = mount.join(format!("basalt-test-ext-{}", std::process::id()));
    let sup = Supervisor::new(config(
        Some(cgroup_root.clone()),
        Reaping::External(exits.clone()),
    ));
    let mut spec = sh("reaped", "sleep 0.2; exit 4");
    spec.restart = RestartPolicy::Never;
    sup.register(spec).unwrap();
    let mut spec = sh("stopped", "exec sleep 600");
    spec.restart = RestartPolicy::Never;
    sup.register(spec).unwrap();

    // A failed exec is waited for by std inside spawn (under the spawn lock), never by
    // the reaper.
    let mut spec = ServiceSpec::process(name("ghost"), ProcessCommand::new("/nonexistent/x"));
    spec.restart = RestartPolicy::Never;
    sup.register(spec).unwrap();
    let reaper_sup = sup.clone();
    let reaper = tokio::spawn(async move {
        loop {
            {
                let _sweep = exits.reaping_lock();
                for status in reaper_sup.statuses() {
                    let Some(pid) = status.pid else { continue };
                    let mut raw = 0;
                    // SAFETY: waitpid writes the status into our local.
                    let rc = unsafe { libc::waitpid(pid as i32, &mut raw, libc::WNOHANG) };
                    if rc == pid as i32 {
                        exits.notify(rc, std::os::unix::process::ExitStatusExt::from_raw(raw));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    sup.start_all().unwrap();
    let status = sup.wait_for("reaped", &[State::Failed], T).await.unwrap();
    assert_eq!(status.message, "exited with status 4; not restarting");
    sup.wait_for("stopped", &[State::Healthy], T).await.unwrap();
    let ghost = sup.wait_for("ghost", &[State::Failed], T).await.unwrap();
    assert!(
        ghost
            .message
            .starts_with("could not start: /nonexistent/x: No such file"),
        "{ghost:?}"
    );
    sup.stop("stopped").await.unwrap();
    let log = log_texts(&sup, "stopped");
    assert!(
        log.iter()
            .any(|l| l.contains("main process ended (killed by signal 15 (SIGTERM))")),
        "{log:?}"
    );
    reaper.abort();
    std::fs::remove_dir(&cgroup_root).unwrap();
}

/// Without a usable cgroup (here: a root that is not on cgroup2) the service still runs,
/// the log says why it has no cgroup, and a stop kills its whole process group.
#[tokio::test]
async fn without_cgroups_services_run_and_stop_by_process_group() {
    let not_cgroup = tempfile::tempdir().unwrap();
    let sup = Supervisor::new(config(Some(not_cgroup.path().to_owned()), Reaping::Direct));
    sup.register(sh("plain", "sleep 600 & echo child=$!; wait"))
        .unwrap();
    sup.start("plain").unwrap();
    sup.wait_for("plain", &[State::Healthy], T).await.unwrap();
    let line = wait_log(&sup, "plain", "child=").await;
    let child: i32 = line.trim_start_matches("child=").parse().unwrap();
    let log = log_texts(&sup, "plain");
    assert!(
        log.iter()
            .any(|l| l.starts_with("warning: running without a cgroup: ")
                && l.contains("not on a cgroup2 file system")),
        "{log:?}"
    );
    sup.stop("plain").await.unwrap();
    assert!(!alive(child), "the process group was killed");
}

#[test]
fn registering_outside_a_runtime_is_an_error_not_a_panic() {
    let sup = Supervisor::new(config(None, Reaping::Direct));
    assert_eq!(
        sup.register(sh("early", "exit 0")).unwrap_err().to_string(),
        "service early cannot be registered outside a tokio runtime"
    );
}
