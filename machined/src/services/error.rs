//! The one error type of the services module.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no service named {service} is registered")]
    UnknownService { service: String },

    #[error("a service named {service} is already registered")]
    AlreadyRegistered { service: String },

    #[error("{name:?} is not a valid service name: {reason}")]
    InvalidName { name: String, reason: &'static str },

    #[error("service {service} depends on {dependency}, which is not registered")]
    UnknownDependency { service: String, dependency: String },

    #[error("services depend on each other in a cycle: {}", cycle.join(" → "))]
    DependencyCycle { cycle: Vec<String> },

    #[error("service {service} cannot be registered outside a tokio runtime")]
    NoRuntime { service: String },

    #[error("service {service} is gone: its supervisor task ended")]
    RunnerGone { service: String },

    #[error(
        "service {service} did not become {wanted} within {seconds}s (it is {state}: {message})"
    )]
    WaitTimedOut {
        service: String,
        wanted: String,
        seconds: u64,
        state: String,
        message: String,
    },

    #[error("stopping every service did not finish within {seconds}s; still running: {}", services.join(", "))]
    StopAllTimedOut { seconds: u64, services: Vec<String> },

    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{registry:?} cannot be used as a registry mirror name: {reason}")]
    InvalidRegistry {
        registry: String,
        reason: &'static str,
    },

    #[error("gRPC call {method} on {socket}: {reason}")]
    Grpc {
        method: &'static str,
        socket: PathBuf,
        reason: String,
    },
}

impl ServiceError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
