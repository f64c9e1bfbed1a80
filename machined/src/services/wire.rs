//! The supervisor as the node API sees it: statuses, logs and events in `basalt-api`'s
//! wire types, and requests that return at once (the API's `NodeState` is synchronous).
//! The supervisor stays the only writer; these functions read or ask.

use std::time::Duration;

use basalt_api::ServiceAction;
use tokio::sync::broadcast;

use super::logs::unix_ms;
use super::{LogLine, ServiceError, ServiceEvent, ServiceStatus, Supervisor};
use crate::api::{Feed, ProviderError};

/// How often a forwarder with no new line checks whether its reader left.
const FORWARDER_IDLE_CHECK: Duration = Duration::from_secs(30);
const FEED_CAPACITY: usize = 1024;

impl ServiceStatus {
    pub fn to_wire(&self) -> basalt_api::ServiceStatus {
        basalt_api::ServiceStatus {
            name: self.name.clone(),
            state: self.state,
            message: self.message.clone(),
            restarts: self.restarts,
            since_unix_ms: Some(unix_ms(self.since)),
        }
    }
}

impl LogLine {
    pub fn to_wire(&self, service: &str) -> basalt_api::LogLine {
        basalt_api::LogLine {
            service: service.to_owned(),
            timestamp_unix_ms: self.unix_ms(),
            message: self.text.clone(),
        }
    }
}

impl ServiceEvent {
    pub fn to_wire(&self) -> basalt_api::Event {
        basalt_api::Event {
            sequence: self.sequence,
            timestamp_unix_ms: unix_ms(self.time),
            kind: "service".to_owned(),
            subject: Some(self.service.clone()),
            message: format!("{} → {}: {}", self.from, self.to, self.message),
        }
    }
}

impl From<ServiceError> for ProviderError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::UnknownService { service } => ProviderError::NotFound {
                what: "service",
                name: service,
            },
            ServiceError::UnknownDependency { .. } | ServiceError::DependencyCycle { .. } => {
                ProviderError::Conflict(e.to_string())
            }
            other => ProviderError::Failed {
                what: "the service supervisor",
                reason: other.to_string(),
            },
        }
    }
}

impl Supervisor {
    pub fn wire_statuses(&self) -> Vec<basalt_api::ServiceStatus> {
        self.statuses().iter().map(ServiceStatus::to_wire).collect()
    }

    /// Asks for `action` and returns at once with what will happen ("stopping etcd");
    /// the outcome shows in the status and the events. Needs a tokio runtime.
    pub fn request(&self, name: &str, action: ServiceAction) -> Result<String, ServiceError> {
        match action {
            ServiceAction::Start => {
                self.start(name)?;
                return Ok(format!("starting {name}"));
            }
            ServiceAction::Stop | ServiceAction::Restart => {}
        }
        // Fail now for an unknown name rather than in the background.
        self.status(name)?;
        let sup = self.clone();
        let owned = name.to_owned();
        tokio::spawn(async move {
            // Errors land in the service's status; nobody waits for this task.
            let _ = match action {
                ServiceAction::Restart => sup.restart(&owned).await,
                _ => sup.stop(&owned).await,
            };
        });
        Ok(match action {
            ServiceAction::Restart => format!("restarting {name}"),
            _ => format!("stopping {name} and what depends on it"),
        })
    }

    /// A service's log ring (and, with `follow`, its new lines) as wire log lines.
    pub fn log_feed(
        &self,
        name: &str,
        follow: bool,
    ) -> Result<Feed<basalt_api::LogLine>, ServiceError> {
        let (backlog, live) = self.logs(name, follow)?.into_parts();
        let service = name.to_owned();
        Ok(Feed {
            backlog: backlog.iter().map(|l| l.to_wire(&service)).collect(),
            live: live.map(|rx| forward(rx, move |l: LogLine| l.to_wire(&service))),
        })
    }

    /// The event ring (and, with `follow`, new transitions) as wire events.
    pub fn event_feed(&self, follow: bool) -> Feed<basalt_api::Event> {
        // Subscribe first: an event between the two calls shows twice rather than never
        // (the sequence number lets a reader drop the duplicate).
        let live = follow.then(|| self.events());
        Feed {
            backlog: self
                .recent_events()
                .iter()
                .map(ServiceEvent::to_wire)
                .collect(),
            live: live.map(|rx| forward(rx, |e: ServiceEvent| e.to_wire())),
        }
    }
}

/// Maps a broadcast of internal records into a broadcast of wire records, until the
/// reader drops its receiver.
fn forward<A, B>(
    mut from: broadcast::Receiver<A>,
    map: impl Fn(A) -> B + Send + 'static,
) -> broadcast::Receiver<B>
where
    A: Clone + Send + 'static,
    B: Clone + Send + 'static,
{
    let (tx, rx) = broadcast::channel(FEED_CAPACITY);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                item = from.recv() => match item {
                    Ok(item) => {
                        if tx.send(map(item)).is_err() {
                            return;
                        }
                    }
                    // The reader's own channel reports its lag; keep going.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep(FORWARDER_IDLE_CHECK) => {
                    if tx.receiver_count() == 0 {
                        return;
                    }
                }
            }
        }
    });
    rx
}
