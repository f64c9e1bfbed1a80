//! What the API reads and whom it asks to act. The API owns none of the facts it serves
//! (STYLE.md, "one writer per fact"): the supervisor, the network module, the disks module
//! and the sequencer do, and reach the API through [`NodeState`] and [`ConfigSink`].
//!
//! Every [`NodeState`] method has a default that answers "not implemented" (HTTP 501), so
//! an owner wires in what exists and the API never invents data for what does not.

use std::time::Duration;

use basalt_api::{
    ApplyConfigResponse, ApplyMode, Event, Health, Link, LogLine, Resolvers, Route, ServiceAction,
    ServiceStatus,
};
use basalt_config::MachineConfig;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Why a provider cannot answer. Each variant maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No code in this machined serves it yet → 501.
    #[error("{what} is not implemented in this machined yet")]
    NotImplemented { what: &'static str },
    /// It exists but cannot answer now (still booting, owner busy) → 503.
    #[error("{what} is not available yet: {reason}")]
    Unavailable { what: &'static str, reason: String },
    /// The named thing does not exist → 404.
    #[error("{what} {name:?} does not exist")]
    NotFound { what: &'static str, name: String },
    /// The request is understood but refused in the current state → 409.
    #[error("{0}")]
    Conflict(String),
    /// The owner tried and failed → 500.
    #[error("{what} failed: {reason}")]
    Failed { what: &'static str, reason: String },
}

/// A stream of lines: what is kept now, then (when following) what comes next.
pub struct Feed<T> {
    pub backlog: Vec<T>,
    /// New lines, when the caller asked to follow. A lagging receiver skips what it missed.
    pub live: Option<broadcast::Receiver<T>>,
}

/// Read access to the node's state, and requests to the owners that change it.
/// Implemented by machined's main wiring (engineer D) over the supervisor, the network
/// module, the disk module and the logger; every method must return quickly.
pub trait NodeState: Send + Sync + 'static {
    fn health(&self) -> Result<Health, ProviderError> {
        Err(ProviderError::NotImplemented {
            what: "node health",
        })
    }
    fn services(&self) -> Result<Vec<ServiceStatus>, ProviderError> {
        Err(ProviderError::NotImplemented {
            what: "the service list",
        })
    }
    /// Ask the supervisor to act; returns what it will do ("restarting etcd").
    fn service_action(
        &self,
        service: &str,
        action: ServiceAction,
    ) -> Result<String, ProviderError> {
        let _ = (service, action);
        Err(ProviderError::NotImplemented {
            what: "service actions",
        })
    }
    /// A service's lines from the log ring; `follow` asks for `live` too.
    fn logs(&self, service: &str, follow: bool) -> Result<Feed<LogLine>, ProviderError> {
        let _ = (service, follow);
        Err(ProviderError::NotImplemented {
            what: "service logs",
        })
    }
    fn events(&self, follow: bool) -> Result<Feed<Event>, ProviderError> {
        let _ = follow;
        Err(ProviderError::NotImplemented {
            what: "the event stream",
        })
    }
    /// The active machine config (the API redacts it before it leaves the node).
    fn active_config(&self) -> Result<MachineConfig, ProviderError> {
        Err(ProviderError::NotImplemented {
            what: "the active config",
        })
    }
    fn links(&self) -> Result<Vec<Link>, ProviderError> {
        Err(ProviderError::NotImplemented {
            what: "network links",
        })
    }
    fn addresses(&self) -> Result<Vec<basalt_api::Address>, ProviderError> {
        Err(ProviderError::NotImplemented {
            what: "network addresses",
        })
    }
    fn routes(&self) -> Result<Vec<Route>, ProviderError> {
        Err(ProviderError::NotImplemented { what: "routes" })
    }
    fn resolvers(&self) -> Result<Resolvers, ProviderError> {
        Err(ProviderError::NotImplemented { what: "resolvers" })
    }
    /// Ask the sequencer to stop services and reboot; returns once the request is queued.
    fn reboot(&self) -> Result<String, ProviderError> {
        Err(ProviderError::NotImplemented { what: "reboot" })
    }
    fn shutdown(&self) -> Result<String, ProviderError> {
        Err(ProviderError::NotImplemented { what: "shutdown" })
    }
}

/// A provider with nothing wired: every state endpoint answers 501. What maintenance mode
/// uses, and what machined can start with before its modules exist.
pub struct NothingWired;
impl NodeState for NothingWired {}

/// A config that parsed and validated, on its way to the sequencer.
#[derive(Debug)]
pub struct ValidatedApply {
    pub config: MachineConfig,
    /// The document exactly as the operator sent it: what gets stored on STATE.
    pub document: String,
    pub mode: ApplyMode,
    /// `Some` only for [`ApplyMode::Try`].
    pub try_timeout: Option<Duration>,
    /// True when the node was in maintenance mode (no config yet).
    pub maintenance: bool,
}

/// One apply handed to the sequencer. It must store the config atomically (temp file on
/// STATE, fsync, rename) BEFORE replying, then act according to `mode` after replying.
#[derive(Debug)]
pub struct ApplyCommand {
    pub apply: ValidatedApply,
    pub reply: oneshot::Sender<Result<ApplyConfigResponse, ProviderError>>,
}

/// The API's end of the config channel.
#[derive(Clone)]
pub struct ConfigSink {
    tx: mpsc::Sender<ApplyCommand>,
}

/// Creates the config channel: the API keeps the [`ConfigSink`], the sequencer receives
/// [`ApplyCommand`]s from the receiver (one at a time; a second apply waits for the first).
pub fn config_channel() -> (ConfigSink, mpsc::Receiver<ApplyCommand>) {
    let (tx, rx) = mpsc::channel(1);
    (ConfigSink { tx }, rx)
}

/// How long an apply may wait for the sequencer to store the config and answer.
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

impl ConfigSink {
    pub(crate) async fn apply(
        &self,
        apply: ValidatedApply,
    ) -> Result<ApplyConfigResponse, ProviderError> {
        let (reply, answer) = oneshot::channel();
        let unavailable = |reason: &str| ProviderError::Unavailable {
            what: "the config sequencer",
            reason: reason.to_owned(),
        };
        self.tx
            .send(ApplyCommand { apply, reply })
            .await
            .map_err(|_| unavailable("it does not take configs (its channel is closed)"))?;
        match tokio::time::timeout(APPLY_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable("it dropped the request without answering")),
            Err(_) => Err(unavailable("it did not answer within 60s")),
        }
    }
}
