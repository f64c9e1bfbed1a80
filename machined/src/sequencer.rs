//! The boot, top to bottom: a list of named phases, each with a timeout. Reading
//! [`boot_phases`] tells how a node boots. Every phase logs
//! `phase <name> done (<n> ms)`; a phase that does not exist yet says so instead of
//! pretending. A phase error or timeout ends the boot (the caller reboots).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log::{info, warning};
use crate::services::ChildExits;
use crate::shutdown::Hooks;

/// What every phase may use. `hooks` and `exits` are for the phases other modules fill
/// in (services register their stop hook, the supervisor watches its children).
#[allow(dead_code)]
pub struct Context {
    /// False when machined runs as a normal process (tests): phases that would change
    /// the host (mounts, sysctls, hostname) skip themselves.
    pub pid1: bool,
    pub hooks: Arc<Hooks>,
    pub exits: Arc<ChildExits>,
}

/// How a phase ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(dead_code)]
pub enum Outcome {
    Done,
    /// Done, with something the operator should know (missing optional pieces).
    DoneWith(String),
    /// Deliberately did nothing (not PID 1).
    Skipped(String),
    NotImplemented,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type PhaseFuture<'a> = Pin<Box<dyn Future<Output = Result<Outcome, BoxError>> + Send + 'a>>;
pub type PhaseFn = fn(&Context) -> PhaseFuture<'_>;

pub struct Phase {
    pub name: &'static str,
    pub timeout: Duration,
    pub run: PhaseFn,
}

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

/// The boot sequence.
pub fn boot_phases() -> Vec<Phase> {
    vec![
        Phase {
            name: "cgroups",
            timeout: secs(10),
            run: cgroups,
        },
        Phase {
            name: "sysctls",
            timeout: secs(10),
            run: sysctls,
        },
        Phase {
            name: "hostname",
            timeout: secs(5),
            run: hostname,
        },
        // Cmdline URL, fw_cfg, config drive, STATE; maintenance mode when none.
        Phase {
            name: "config",
            timeout: secs(600),
            run: not_yet,
        },
        // STATE (persisted config) and EPHEMERAL (/var).
        Phase {
            name: "disks",
            timeout: secs(300),
            run: not_yet,
        },
        Phase {
            name: "network",
            timeout: secs(120),
            run: not_yet,
        },
        Phase {
            name: "api",
            timeout: secs(30),
            run: not_yet,
        },
        // containerd, etcd, kubelet; then Kubernetes and marking the boot slot good.
        Phase {
            name: "services",
            timeout: secs(300),
            run: not_yet,
        },
    ]
}

/// Runs the phases in order; stops at the first failure.
pub async fn run(phases: &[Phase], cx: &Context) -> Result<(), SequencerError> {
    let boot = Instant::now();
    for phase in phases {
        let start = Instant::now();
        let result = tokio::time::timeout(phase.timeout, (phase.run)(cx))
            .await
            .map_err(|_| SequencerError::Timeout {
                phase: phase.name,
                timeout: phase.timeout,
            })?
            .map_err(|source| SequencerError::Failed {
                phase: phase.name,
                source,
            })?;
        let took = start.elapsed().as_millis();
        match result {
            Outcome::Done => info!("phase {} done ({took} ms)", phase.name),
            Outcome::DoneWith(note) => info!("phase {} done ({took} ms): {note}", phase.name),
            Outcome::Skipped(why) => info!("phase {} skipped: {why}", phase.name),
            Outcome::NotImplemented => info!("phase {}: not yet implemented", phase.name),
        }
    }
    info!(
        "boot sequence finished ({} ms, machined RSS {})",
        boot.elapsed().as_millis(),
        rss_kib().map_or_else(|| "unknown".to_owned(), |k| format!("{k} KiB"))
    );
    Ok(())
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

fn not_yet(_: &Context) -> PhaseFuture<'_> {
    Box::pin(async { Ok(Outcome::NotImplemented) })
}

fn cgroups(cx: &Context) -> PhaseFuture<'_> {
    Box::pin(async move {
        if !cx.pid1 {
            return Ok(not_pid1());
        }
        let plan = crate::cgroups::setup(Path::new(crate::cgroups::CGROUP_ROOT))?;
        let enabled = plan.enable.join(" ");
        if plan.missing_optional.is_empty() {
            Ok(Outcome::DoneWith(format!("controllers {enabled}")))
        } else {
            Ok(Outcome::DoneWith(format!(
                "controllers {enabled}; the kernel lacks {}",
                plan.missing_optional.join(" ")
            )))
        }
    })
}

fn sysctls(cx: &Context) -> PhaseFuture<'_> {
    Box::pin(async move {
        if !cx.pid1 {
            return Ok(not_pid1());
        }
        let applied = crate::sysctl::apply(Path::new("/proc/sys"), crate::sysctl::NODE_DEFAULTS)?;
        for (key, needs) in &applied.missing {
            match needs {
                Some(module) => warning!(
                    "sysctl {} does not exist: is the {module} module in the image?",
                    key.as_str()
                ),
                None => warning!("sysctl {} does not exist in this kernel", key.as_str()),
            }
        }
        if applied.missing.is_empty() {
            Ok(Outcome::DoneWith(format!("{} set", applied.set)))
        } else {
            Ok(Outcome::DoneWith(format!(
                "{} set, {} missing",
                applied.set,
                applied.missing.len()
            )))
        }
    })
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

fn hostname(cx: &Context) -> PhaseFuture<'_> {
    Box::pin(async move {
        if !cx.pid1 {
            return Ok(not_pid1());
        }
        let name = std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let name = if name.is_empty() {
            "basalt".to_owned()
        } else {
            name
        };
        if !valid_hostname(&name) {
            return Err(HostnameError::Invalid(name).into());
        }
        nix::unistd::sethostname(&name).map_err(|source| HostnameError::Set {
            name: name.clone(),
            source,
        })?;
        Ok(Outcome::DoneWith(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context {
        Context {
            pid1: false,
            hooks: Arc::new(Hooks::default()),
            exits: ChildExits::new(),
        }
    }

    #[test]
    fn boot_reads_top_to_bottom() {
        let names: Vec<_> = boot_phases().iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "cgroups", "sysctls", "hostname", "config", "disks", "network", "api", "services"
            ]
        );
    }

    #[tokio::test]
    async fn outside_pid1_the_sequence_runs_without_touching_the_host() {
        run(&boot_phases(), &cx()).await.unwrap();
        let log = crate::log::ring().snapshot();
        let has = |s: &str| log.iter().any(|l| l.message == s);
        assert!(has(
            "phase cgroups skipped: not PID 1, leaving the host alone"
        ));
        assert!(has("phase network: not yet implemented"));
    }

    fn fails(_: &Context) -> PhaseFuture<'_> {
        Box::pin(async { Err("no disk named vdz".into()) })
    }
    fn hangs(_: &Context) -> PhaseFuture<'_> {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Outcome::Done)
        })
    }
    fn done(_: &Context) -> PhaseFuture<'_> {
        Box::pin(async { Ok(Outcome::Done) })
    }

    #[tokio::test]
    async fn a_failing_phase_stops_the_boot_with_its_name() {
        let phases = [
            Phase {
                name: "first",
                timeout: secs(1),
                run: done,
            },
            Phase {
                name: "disks",
                timeout: secs(1),
                run: fails,
            },
            Phase {
                name: "never",
                timeout: secs(1),
                run: hangs,
            },
        ];
        let err = run(&phases, &cx()).await.unwrap_err();
        assert_eq!(err.to_string(), "phase disks failed: no disk named vdz");
    }

    #[tokio::test]
    async fn a_hanging_phase_times_out() {
        let phases = [Phase {
            name: "network",
            timeout: Duration::from_millis(50),
            run: hangs,
        }];
        let err = run(&phases, &cx()).await.unwrap_err();
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
