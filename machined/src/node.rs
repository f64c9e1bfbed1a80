//! The node as the API sees it: [`Node`] implements [`NodeState`] over the facts other
//! modules own. The sequencer publishes into it as the boot goes (the config it runs
//! with, the network's read-only view, the supervisor); the API only reads, and asks for
//! power actions through the same channel the power signals use.

use std::sync::{Mutex, OnceLock};

use basalt_api::{Event, Health, HealthCheck, Link, LogLine, Resolvers, Route, ServiceAction};
use basalt_api::{ServiceState, ServiceStatus};
use basalt_config::MachineConfig;
use tokio::sync::mpsc;

use crate::api::{Feed, NodeState, ProviderError};
use crate::network::NetworkState;
use crate::services::Supervisor;
use crate::shutdown::PowerAction;

/// Where the boot is, for `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Booting(&'static str),
    Maintenance(String),
    /// Configured, but a phase cannot go on (the install disk is missing): the node waits
    /// with its API up instead of rebooting in a loop.
    Waiting(String),
    Running,
}

/// What the sequencer has published so far. Each field has one writer: the sequencer.
pub struct Node {
    config: Mutex<Option<MachineConfig>>,
    network: Mutex<Option<NetworkState>>,
    supervisor: OnceLock<Supervisor>,
    stage: Mutex<Stage>,
    power: mpsc::Sender<PowerAction>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    pub fn new(power: mpsc::Sender<PowerAction>) -> Node {
        Node {
            config: Mutex::new(None),
            network: Mutex::new(None),
            supervisor: OnceLock::new(),
            stage: Mutex::new(Stage::Booting("early")),
            power,
        }
    }

    pub fn stage(&self) -> Stage {
        lock(&self.stage).clone()
    }

    pub fn set_stage(&self, stage: Stage) {
        *lock(&self.stage) = stage;
    }

    pub fn set_config(&self, config: MachineConfig) {
        *lock(&self.config) = Some(config);
    }

    pub fn set_network(&self, state: Option<NetworkState>) {
        *lock(&self.network) = state;
    }

    /// The supervisor is created once, in the api phase; a second call is a bug the
    /// caller hears about.
    pub fn set_supervisor(&self, supervisor: Supervisor) -> Result<(), Supervisor> {
        self.supervisor.set(supervisor)
    }

    pub fn supervisor(&self) -> Option<&Supervisor> {
        self.supervisor.get()
    }

    fn network(&self, what: &'static str) -> Result<NetworkState, ProviderError> {
        lock(&self.network)
            .clone()
            .ok_or_else(|| ProviderError::Unavailable {
                what,
                reason: "the network phase has not run yet".to_owned(),
            })
    }

    fn services_or_unavailable(&self, what: &'static str) -> Result<&Supervisor, ProviderError> {
        self.supervisor().ok_or_else(|| ProviderError::Unavailable {
            what,
            reason: format!("the node is {}", self.stage_text()),
        })
    }

    fn stage_text(&self) -> String {
        match &*lock(&self.stage) {
            Stage::Booting(phase) => format!("booting (phase {phase})"),
            Stage::Maintenance(why) => format!("in maintenance mode ({why})"),
            Stage::Waiting(why) => format!("waiting: {why}"),
            Stage::Running => "running".to_owned(),
        }
    }

    pub fn power(&self, action: PowerAction) -> Result<String, ProviderError> {
        self.power
            .try_send(action)
            .map_err(|e| ProviderError::Unavailable {
                what: "power actions",
                reason: format!("the sequencer does not take the request: {e}"),
            })?;
        Ok(format!(
            "{action} requested: stopping services, releasing DHCP leases, unmounting disks"
        ))
    }
}

/// A service counts as healthy when it runs and its health check (if any) passes.
fn service_healthy(s: &ServiceStatus) -> bool {
    matches!(s.state, ServiceState::Healthy | ServiceState::Running)
}

impl NodeState for Node {
    fn health(&self) -> Result<Health, ProviderError> {
        let stage = lock(&self.stage).clone();
        let mut checks = vec![HealthCheck {
            name: "boot".to_owned(),
            healthy: stage == Stage::Running,
            message: self.stage_text(),
        }];
        if let Some(sup) = self.supervisor() {
            for s in sup.wire_statuses() {
                checks.push(HealthCheck {
                    name: s.name.clone(),
                    healthy: service_healthy(&s),
                    message: format!("{}: {}", s.state, s.message),
                });
            }
        }
        Ok(Health {
            healthy: checks.iter().all(|c| c.healthy),
            checks,
        })
    }

    fn services(&self) -> Result<Vec<ServiceStatus>, ProviderError> {
        Ok(self
            .services_or_unavailable("the service list")?
            .wire_statuses())
    }

    fn service_action(
        &self,
        service: &str,
        action: ServiceAction,
    ) -> Result<String, ProviderError> {
        Ok(self
            .services_or_unavailable("service actions")?
            .request(service, action)?)
    }

    fn logs(&self, service: &str, follow: bool) -> Result<Feed<LogLine>, ProviderError> {
        if service == crate::log::SERVICE {
            let ring = crate::log::ring();
            // Subscribe first: a line between the two calls shows twice, never not at all.
            let live = follow.then(|| ring.subscribe());
            return Ok(Feed {
                backlog: ring.snapshot(),
                live,
            });
        }
        Ok(self
            .services_or_unavailable("service logs")?
            .log_feed(service, follow)?)
    }

    fn events(&self, follow: bool) -> Result<Feed<Event>, ProviderError> {
        Ok(self
            .services_or_unavailable("the event stream")?
            .event_feed(follow))
    }

    fn active_config(&self) -> Result<MachineConfig, ProviderError> {
        lock(&self.config)
            .clone()
            .ok_or_else(|| ProviderError::Unavailable {
                what: "the active config",
                reason: format!("the node is {}", self.stage_text()),
            })
    }

    fn links(&self) -> Result<Vec<Link>, ProviderError> {
        Ok(self.network("network links")?.snapshot().api_links())
    }

    fn addresses(&self) -> Result<Vec<basalt_api::Address>, ProviderError> {
        Ok(self
            .network("network addresses")?
            .snapshot()
            .api_addresses())
    }

    fn routes(&self) -> Result<Vec<Route>, ProviderError> {
        Ok(self.network("routes")?.snapshot().api_routes())
    }

    fn resolvers(&self) -> Result<Resolvers, ProviderError> {
        Ok(self.network("resolvers")?.snapshot().api_resolvers())
    }

    fn reboot(&self) -> Result<String, ProviderError> {
        self.power(PowerAction::Reboot)
    }

    fn shutdown(&self) -> Result<String, ProviderError> {
        self.power(PowerAction::PowerOff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn power_requests_reach_the_sequencer_channel() {
        let (tx, mut rx) = mpsc::channel(4);
        let node = Node::new(tx);
        let message = node.shutdown().unwrap();
        assert!(message.starts_with("poweroff requested"), "{message}");
        assert_eq!(rx.recv().await, Some(PowerAction::PowerOff));
        node.reboot().unwrap();
        assert_eq!(rx.recv().await, Some(PowerAction::Reboot));
    }

    #[test]
    fn health_follows_the_boot_stage() {
        let (tx, _rx) = mpsc::channel(1);
        let node = Node::new(tx);
        let h = node.health().unwrap();
        assert!(!h.healthy);
        assert_eq!(h.checks[0].message, "booting (phase early)");
        node.set_stage(Stage::Running);
        assert!(node.health().unwrap().healthy);
        // Without a supervisor the service list is "not yet", not "not implemented".
        assert!(matches!(
            node.services(),
            Err(ProviderError::Unavailable { .. })
        ));
        assert!(matches!(
            node.active_config(),
            Err(ProviderError::Unavailable { .. })
        ));
    }

    #[test]
    fn machined_logs_come_from_the_ring() {
        let (tx, _rx) = mpsc::channel(1);
        let node = Node::new(tx);
        crate::log::info!("node test marker 7");
        let feed = node.logs("machined", false).unwrap();
        assert!(feed.live.is_none());
        assert!(
            feed.backlog
                .iter()
                .any(|l| l.message == "node test marker 7")
        );
    }
}
