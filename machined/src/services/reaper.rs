//! How the supervisor learns that one of its children exited.
//!
//! As PID 1, machined must reap every zombie on the node (orphans are re-parented to
//! it), so one reaper loop calls `waitpid(-1)` — and then nobody else may call
//! `waitpid` for a specific child, or the two race and one of them loses the status.
//! The supervisor therefore does not wait for its children itself in that mode: the
//! reaper hands every status it collects to [`ChildExits::notify`], and the supervisor
//! subscribes to the PIDs it spawned.
//!
//! Outside PID 1 (tests, development on a host) [`Reaping::Direct`] waits for each child
//! itself, on a blocking thread.

use std::collections::{HashMap, VecDeque};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::oneshot;

/// Which code calls `waitpid` for the supervisor's children.
#[derive(Clone)]
pub enum Reaping {
    /// The supervisor waits for each child itself. Only correct when no other code in
    /// the process calls `waitpid(-1)`.
    Direct,
    /// machined's PID-1 reaper collects every exit and publishes it here.
    External(Arc<ChildExits>),
}

/// Exits the reaper collected for PIDs nobody watched yet are kept this long (bounded
/// by count too): the child can exit and be reaped between `fork` returning and the
/// supervisor calling `watch`.
const RECENT_CAPACITY: usize = 256;

struct Recent {
    pid: i32,
    status: ExitStatus,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    watchers: HashMap<i32, oneshot::Sender<ExitStatus>>,
    recent: VecDeque<Recent>,
}

/// The hand-over point between the PID-1 reaper and the supervisor.
#[derive(Default)]
pub struct ChildExits {
    inner: Mutex<Inner>,
    /// Held by the supervisor across `Command::spawn`, and by the reaper across each
    /// `waitpid(-1)` sweep. When exec fails, std's `spawn` waits for the failed child
    /// itself and panics if that child was already reaped: a race only a reaper running
    /// on another thread can win, and which this lock rules out.
    spawning: Mutex<()>,
}

impl ChildExits {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Called by the PID-1 reaper for every child `waitpid(-1, …)` returned, with the raw
    /// wait status turned into an `ExitStatus` (`ExitStatusExt::from_raw(status)`).
    pub fn notify(&self, pid: i32, status: ExitStatus) {
        let mut inner = lock(&self.inner);
        if let Some(tx) = inner.watchers.remove(&pid) {
            // The watcher may have given up (service stopped); nothing to do then.
            let _ = tx.send(status);
            return;
        }
        if inner.recent.len() == RECENT_CAPACITY {
            inner.recent.pop_front();
        }
        inner.recent.push_back(Recent {
            pid,
            status,
            at: Instant::now(),
        });
    }

    /// Taken by the reaper around each `waitpid(-1)` sweep (see the `spawning` field).
    pub fn reaping_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.spawning)
    }

    /// Taken by the supervisor around `spawn`.
    pub(crate) fn spawn_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.spawning)
    }

    /// Resolves with `pid`'s exit status. `spawned_at` is taken just before the fork: an
    /// exit of the same PID recorded earlier belongs to an older process that had this
    /// PID, and is ignored.
    pub fn watch(&self, pid: i32, spawned_at: Instant) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut inner = lock(&self.inner);
        let recorded = inner
            .recent
            .iter()
            .rposition(|r| r.pid == pid && r.at >= spawned_at);
        if let Some(r) = recorded.and_then(|i| inner.recent.remove(i)) {
            let _ = tx.send(r.status);
            return rx;
        }
        inner.watchers.insert(pid, tx);
        rx
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn code(c: i32) -> ExitStatus {
        ExitStatus::from_raw(c << 8)
    }

    #[tokio::test]
    async fn exit_after_watch_is_delivered() {
        let exits = ChildExits::new();
        let rx = exits.watch(42, Instant::now());
        exits.notify(42, code(3));
        assert_eq!(rx.await.unwrap().code(), Some(3));
    }

    #[tokio::test]
    async fn exit_reaped_before_watch_is_delivered() {
        let exits = ChildExits::new();
        let spawned_at = Instant::now();
        exits.notify(42, code(7));
        assert_eq!(exits.watch(42, spawned_at).await.unwrap().code(), Some(7));
    }

    #[tokio::test]
    async fn a_stale_exit_of_a_reused_pid_is_ignored() {
        let exits = ChildExits::new();
        exits.notify(42, code(1));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let mut rx = exits.watch(42, Instant::now());
        assert!(rx.try_recv().is_err(), "the old exit must not be delivered");
        exits.notify(42, code(0));
        assert_eq!(rx.await.unwrap().code(), Some(0));
    }

    #[test]
    fn unwatched_exits_are_bounded() {
        let exits = ChildExits::new();
        for pid in 0..1000 {
            exits.notify(pid, code(0));
        }
        assert_eq!(lock(&exits.inner).recent.len(), RECENT_CAPACITY);
    }
}
