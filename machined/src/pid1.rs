//! What being PID 1 demands: reap every orphan, turn signals into power requests, and
//! have ctrl-alt-del delivered as a signal instead of an instant kernel reboot.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::log::{debug, warning};
use crate::services::ChildExits;
use crate::shutdown::PowerAction;

pub fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}

/// With CAD disabled the kernel sends SIGINT to PID 1 on ctrl-alt-del (and QEMU's
/// `system_reset` via the keyboard), which becomes a graceful reboot.
pub fn disable_ctrl_alt_del() {
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        warning!("cannot route ctrl-alt-del to machined: {e}");
    }
}

/// Collects every exited child: waitpid(-1) until nothing is left, on each SIGCHLD.
/// Every status is published on `exits`, where the supervisor picks up its own
/// children's. Signals coalesce, so one SIGCHLD may stand for many exits.
pub async fn reap_forever(exits: Arc<ChildExits>) -> std::io::Result<()> {
    let mut sigchld = signal(SignalKind::child())?;
    loop {
        reap_now(&exits);
        sigchld.recv().await;
    }
}

/// One sweep over every child: returns how many were reaped.
pub fn reap_now(exits: &ChildExits) -> usize {
    reap(exits, -1)
}

/// `which` is waitpid's first argument: -1 for any child (production); tests name their
/// own child so they never steal other tests' children in the same process.
fn reap(exits: &ChildExits, which: libc::pid_t) -> usize {
    // std's spawn waits for a child whose exec failed; the supervisor holds this lock
    // across spawn so the sweep cannot steal that status (see services::reaper).
    let _sweep = exits.reaping_lock();
    let mut reaped = 0;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(which, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            // 0: children exist but none exited; -1/ECHILD: no children at all.
            return reaped;
        }
        reaped += 1;
        let status = ExitStatus::from_raw(status);
        debug!("reaped pid {pid}: {status}");
        exits.notify(pid, status);
    }
}

/// Turns SIGTERM / SIGINT (ctrl-alt-del) into a reboot request and SIGPWR into a
/// poweroff request. Runs until the receiver is gone.
pub async fn power_signals(tx: mpsc::Sender<PowerAction>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut pwr = signal(SignalKind::from_raw(libc::SIGPWR))?;
    loop {
        let action = tokio::select! {
            _ = term.recv() => PowerAction::Reboot,
            _ = int.recv() => PowerAction::Reboot,
            _ = pwr.recv() => PowerAction::PowerOff,
        };
        if tx.send(action).await.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A real child, reaped by the sweep, its status published where a supervisor
    /// watching that pid gets it.
    #[tokio::test]
    async fn reaped_status_reaches_the_watcher() {
        let exits = ChildExits::new();
        let spawned_at = Instant::now();
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let mut rx = exits.watch(pid, spawned_at);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            reap(&exits, pid);
            if let Ok(status) = rx.try_recv() {
                assert_eq!(status.code(), Some(7));
                break;
            }
            assert!(Instant::now() < deadline, "child {pid} was never reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(child);
    }
}
