//! The executor: one tokio task per service turns the planner's effects into processes,
//! signals, cgroups, health probes and timers, and feeds what it observes back as
//! inputs. It is the only writer of its service's state (through `Shared::apply`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use super::cgroup::Cgroup;
use super::logs::{LogRing, LogStream};
use super::plan::{Effect, Input};
use super::reaper::Reaping;
use super::spec::{BoxFuture, HealthKind, ProcessCommand, Runnable, TaskContext};
use super::{Command, ServiceHandle, Shared};

/// After SIGKILL, how long to wait for the exit to be reported.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How long leftovers in a cgroup get to die after `cgroup.kill`.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(5);
/// How long the log pumps get to drain the pipes after the service ended.
const PUMP_DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How a run of the service ended.
enum Ended {
    /// It ended on its own; the input describes how.
    Exited(Input),
    /// Stopped on request; the reply tells the requester.
    Stopped(oneshot::Sender<()>),
    /// The supervisor is gone (all senders dropped): everything was killed.
    Closed,
}

struct ExitInfo {
    success: bool,
    description: String,
}

/// Something running: a process (pid, cgroup, pipes) or a task (stop signal, abort).
enum Instance {
    Process {
        pid: i32,
        cgroup: Option<Cgroup>,
        pumps: Vec<tokio::task::JoinHandle<()>>,
    },
    Task {
        shutdown: watch::Sender<bool>,
        abort: AbortHandle,
    },
}

type ExitFuture = Pin<Box<dyn std::future::Future<Output = ExitInfo> + Send>>;

pub(crate) async fn run(
    shared: Arc<Shared>,
    svc: Arc<ServiceHandle>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    loop {
        // Idle: stopped, or failed for good.
        let Some(command) = commands.recv().await else {
            return;
        };
        match command {
            Command::Stop(reply) => {
                // Already down; nothing to stop.
                let _ = reply.send(());
                continue;
            }
            Command::Start => {}
        }
        if shared.apply(&svc, Input::Start).is_none() {
            continue;
        }
        match wait_dependencies(&shared, &svc, &mut commands).await {
            Waited::Ready => {}
            Waited::Stop(reply) => {
                shared.apply(&svc, Input::Stop);
                let _ = reply.send(());
                continue;
            }
            Waited::Closed => return,
        }
        shared.apply(&svc, Input::DepsReady);
        // Starting: run, and restart as the planner says.
        loop {
            let ended = run_once(&shared, &svc, &mut commands).await;
            let input = match ended {
                Ended::Exited(input) => input,
                Ended::Stopped(reply) => {
                    let _ = reply.send(());
                    break;
                }
                Ended::Closed => return,
            };
            let Some(Effect::RestartAfter(delay)) = shared.apply(&svc, input).map(|s| s.effect)
            else {
                break;
            };
            shared.set_next_restart(&svc, Some(SystemTime::now() + delay));
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            let restart = tokio::select! {
                () = &mut sleep => true,
                command = commands.recv() => match command {
                    None => return,
                    // An explicit start skips the rest of the back-off.
                    Some(Command::Start) => true,
                    Some(Command::Stop(reply)) => {
                        shared.apply(&svc, Input::Stop);
                        let _ = reply.send(());
                        false
                    }
                },
            };
            if !restart {
                break;
            }
            shared.apply(&svc, Input::BackOffElapsed);
        }
    }
}

enum Waited {
    Ready,
    Stop(oneshot::Sender<()>),
    Closed,
}

async fn wait_dependencies(
    shared: &Shared,
    svc: &ServiceHandle,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Waited {
    let mut changed = shared.changed.subscribe();
    loop {
        if svc
            .spec
            .depends_on
            .iter()
            .all(|d| shared.is_healthy(d.as_str()))
        {
            return Waited::Ready;
        }
        tokio::select! {
            _ = changed.changed() => {}
            command = commands.recv() => match command {
                None => return Waited::Closed,
                Some(Command::Start) => {}
                Some(Command::Stop(reply)) => return Waited::Stop(reply),
            },
        }
    }
}

/// One run, from `starting` until it ended or was stopped.
async fn run_once(
    shared: &Shared,
    svc: &ServiceHandle,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Ended {
    let started = Instant::now();
    let (instance, mut exit) = match &svc.spec.run {
        Runnable::Process(command) => match spawn_process(shared, svc, command) {
            Ok(spawned) => spawned,
            Err(error) => {
                svc.log.push(
                    LogStream::Supervisor,
                    &format!("could not start {}: {error}", command.path.display()),
                );
                return Ended::Exited(Input::SpawnFailed(format!(
                    "{}: {error}",
                    command.path.display()
                )));
            }
        },
        Runnable::Task(task) => {
            let (shutdown, rx) = watch::channel(false);
            let ctx = TaskContext {
                shutdown: rx,
                log: svc.log.clone(),
            };
            let handle = tokio::spawn(task(ctx));
            let abort = handle.abort_handle();
            let exit: ExitFuture = Box::pin(async move {
                match handle.await {
                    Ok(Ok(())) => ExitInfo {
                        success: true,
                        description: "task returned".to_owned(),
                    },
                    Ok(Err(error)) => ExitInfo {
                        success: false,
                        description: format!("task failed: {error}"),
                    },
                    Err(join) if join.is_cancelled() => ExitInfo {
                        success: false,
                        description: "task aborted".to_owned(),
                    },
                    Err(_) => ExitInfo {
                        success: false,
                        description: "task panicked".to_owned(),
                    },
                }
            });
            (Instance::Task { shutdown, abort }, exit)
        }
    };
    shared.apply(svc, Input::Spawned);
    if let Instance::Process { pid, .. } = &instance {
        shared.set_pid(svc, u32::try_from(*pid).ok());
    }

    let probe = match &svc.spec.health.kind {
        HealthKind::Running => {
            shared.apply(svc, Input::ProbeOk("running".to_owned()));
            None
        }
        HealthKind::Probe(probe) => Some(probe.clone()),
    };
    let health = &svc.spec.health;
    // The first probe runs a moment after the spawn; then every interval, on a quick but
    // easing schedule during the start period.
    let start_period_ends = started + health.start_period;
    let mut in_start_period = !health.start_period.is_zero();
    let mut wait = health.first_probe_wait();
    let mut next_probe = tokio::time::Instant::now() + wait;
    let mut in_flight: Option<BoxFuture<Result<String, String>>> = None;

    loop {
        tokio::select! {
            info = &mut exit => {
                cleanup(svc, instance).await;
                return Ended::Exited(Input::Exited {
                    success: info.success,
                    description: info.description,
                    ran_for: started.elapsed(),
                });
            }
            () = tokio::time::sleep_until(next_probe), if probe.is_some() && in_flight.is_none() => {
                if let Some(probe) = &probe {
                    let call = probe();
                    let timeout = health.timeout;
                    in_flight = Some(Box::pin(async move {
                        match tokio::time::timeout(timeout, call).await {
                            Ok(result) => result,
                            Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
                        }
                    }));
                }
            }
            result = async { in_flight.as_mut().expect("guarded by the select condition").await }, if in_flight.is_some() => {
                in_flight = None;
                in_start_period &= result.is_err() && Instant::now() < start_period_ends;
                match result {
                    Ok(message) => shared.apply(svc, Input::ProbeOk(message)),
                    Err(error) if in_start_period => shared.apply(svc, Input::ProbeNotYet(error)),
                    Err(error) => shared.apply(svc, Input::ProbeFailed(error)),
                };
                wait = if in_start_period {
                    health.start_period_wait(wait)
                } else {
                    health.interval
                };
                next_probe = tokio::time::Instant::now() + wait.max(Duration::from_millis(10));
            }
            command = commands.recv() => match command {
                None => {
                    terminate(svc, instance, &mut exit).await;
                    return Ended::Closed;
                }
                Some(Command::Start) => {}
                Some(Command::Stop(reply)) => {
                    shared.apply(svc, Input::Stop);
                    let info = terminate(svc, instance, &mut exit).await;
                    if let Some(info) = info {
                        shared.apply(svc, Input::Exited {
                            success: info.success,
                            description: info.description,
                            ran_for: started.elapsed(),
                        });
                    }
                    shared.apply(svc, Input::Terminated);
                    return Ended::Stopped(reply);
                }
            },
        }
    }
}

/// Creates the cgroup (or warns and goes on without), spawns the process inside it,
/// starts the log pumps and the exit watch.
fn spawn_process(
    shared: &Shared,
    svc: &ServiceHandle,
    command: &ProcessCommand,
) -> io::Result<(Instance, ExitFuture)> {
    let name = svc.spec.name.as_str();
    let cgroup = match &shared.config.cgroup_root {
        None => None,
        Some(root) => match Cgroup::create(root, name).and_then(|cg| {
            let fd = cg.procs_fd()?;
            Ok((cg, fd))
        }) {
            Ok(pair) => Some(pair),
            Err(error) => {
                let line = format!("warning: running without a cgroup: {error}");
                crate::log::warning!("service {name}: {line}");
                svc.log.push(LogStream::Supervisor, &line);
                None
            }
        },
    };
    // An earlier run may have left processes behind if machined lost track of them.
    if let Some((cg, _)) = cgroup.as_ref().filter(|(cg, _)| !cg.is_empty()) {
        svc.log.push(
            LogStream::Supervisor,
            &format!(
                "killing leftovers {:?} in {}",
                cg.pids(),
                cg.path().display()
            ),
        );
        let _ = cg.kill_all();
    }
    let spawned_at = Instant::now();
    let spawn_lock = match &shared.config.reaping {
        Reaping::External(exits) => Some(exits.spawn_lock()),
        Reaping::Direct => None,
    };
    let spawned = build_command(command, cgroup.as_ref().map(|(_, fd)| fd)).spawn();
    drop(spawn_lock);
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            // Nothing ran in it; do not leave an empty cgroup behind.
            if let Some((cg, _)) = &cgroup {
                let _ = std::fs::remove_dir(cg.path());
            }
            return Err(error);
        }
    };
    let pid = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(OwnedFd::from(out), svc.log.clone(), LogStream::Stdout));
    }
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(OwnedFd::from(err), svc.log.clone(), LogStream::Stderr));
    }
    let status_rx: oneshot::Receiver<ExitStatus> = match &shared.config.reaping {
        Reaping::External(exits) => {
            // The PID-1 reaper owns waitpid; std's Child does nothing on drop.
            drop(child);
            exits.watch(pid, spawned_at)
        }
        Reaping::Direct => {
            let (tx, rx) = oneshot::channel();
            tokio::task::spawn_blocking(move || {
                if let Ok(status) = child.wait() {
                    let _ = tx.send(status);
                }
            });
            rx
        }
    };
    let exit: ExitFuture = Box::pin(async move {
        match status_rx.await {
            Ok(status) => ExitInfo {
                success: status.success(),
                description: describe(status),
            },
            Err(_) => ExitInfo {
                success: false,
                description: "its exit status was lost".to_owned(),
            },
        }
    });
    Ok((
        Instance::Process {
            pid,
            cgroup: cgroup.map(|(cg, _)| cg),
            pumps,
        },
        exit,
    ))
}

fn build_command(
    command: &ProcessCommand,
    cgroup_procs: Option<&OwnedFd>,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(&command.path);
    cmd.args(&command.args)
        .env_clear()
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &command.working_dir {
        cmd.current_dir(dir);
    }
    let procs = cgroup_procs.map(AsRawFd::as_raw_fd);
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (setsid, write) on a descriptor the parent keeps open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // Own session and process group: a service never gets machined's terminal
            // signals, and without a cgroup its group can still be killed as a whole.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = procs {
                // "0" moves the writing process itself into the cgroup.
                if libc::write(fd, b"0".as_ptr().cast(), 1) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

fn pump(fd: OwnedFd, log: Arc<LogRing>, stream: LogStream) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let reader = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            Ok(r) => r,
            Err(error) => {
                log.push(
                    LogStream::Supervisor,
                    &format!("cannot read {}: {error}", stream.as_str()),
                );
                return;
            }
        };
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => log.push(stream, &String::from_utf8_lossy(&buf)),
            }
        }
    })
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(signal) = status.signal() {
        format!("killed by signal {signal} ({})", signal_name(signal))
    } else {
        format!("ended ({status})")
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// After the main process ended on its own: kill what it left behind, drain the pipes.
async fn cleanup(svc: &ServiceHandle, instance: Instance) {
    if let Instance::Process { pid, cgroup, pumps } = instance {
        kill_rest(svc, pid, cgroup.as_ref()).await;
        drain(pumps).await;
    }
}

async fn kill_rest(svc: &ServiceHandle, pid: i32, cgroup: Option<&Cgroup>) {
    match cgroup {
        Some(cg) => {
            if let Err(error) = cg.kill_and_remove(CGROUP_EMPTY_WAIT).await {
                crate::log::warning!("service {}: {error}", svc.spec.name);
                svc.log
                    .push(LogStream::Supervisor, &format!("warning: {error}"));
            }
        }
        None => {
            // SAFETY: kill(2) has no memory-safety preconditions. The group id is the
            // pid of our setsid'd child; ESRCH (group already gone) is fine.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            // kill(2) returns before the targets are gone: wait (bounded) until the group
            // is empty, so a stop really ends the service. Zombies still count as members
            // until their new parent reaps them, hence the bound.
            let deadline = tokio::time::Instant::now() + CGROUP_EMPTY_WAIT;
            // SAFETY: signal 0 only checks for existence.
            while unsafe { libc::kill(-pid, 0) } == 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn drain(pumps: Vec<tokio::task::JoinHandle<()>>) {
    for pump in pumps {
        let abort = pump.abort_handle();
        if tokio::time::timeout(PUMP_DRAIN_WAIT, pump).await.is_err() {
            // Something outside the cgroup still holds the pipe; stop reading it.
            abort.abort();
        }
    }
}

/// SIGTERM (or the task's stop request), the grace period, SIGKILL (or abort), then
/// everything left in the cgroup. Returns how the main process ended, if it was seen.
async fn terminate(
    svc: &ServiceHandle,
    instance: Instance,
    exit: &mut ExitFuture,
) -> Option<ExitInfo> {
    let grace = svc.spec.stop_grace;
    match instance {
        Instance::Process { pid, cgroup, pumps } => {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child,
            // not yet reaped (its exit future has not resolved).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let info = match tokio::time::timeout(grace, &mut *exit).await {
                Ok(info) => Some(info),
                Err(_) => {
                    svc.log.push(
                        LogStream::Supervisor,
                        &format!("still running {}s after SIGTERM: SIGKILL", grace.as_secs()),
                    );
                    // SAFETY: as above.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    tokio::time::timeout(KILL_WAIT, &mut *exit).await.ok()
                }
            };
            kill_rest(svc, pid, cgroup.as_ref()).await;
            drain(pumps).await;
            info
        }
        Instance::Task { shutdown, abort } => {
            let _ = shutdown.send(true);
            match tokio::time::timeout(grace, &mut *exit).await {
                Ok(info) => Some(info),
                Err(_) => {
                    abort.abort();
                    tokio::time::timeout(KILL_WAIT, &mut *exit).await.ok()
                }
            }
        }
    }
}
