//! `apid`: machined's own API server (and `trustd`, the control plane's certificate
//! signer for workers), supervised like any other service so that
//! `basaltctl services` lists it, its failures are restarted with back-off, and it is
//! stopped in order at shutdown. It is a task inside machined, not a process.

use std::sync::Arc;

use super::spec::{ServiceName, ServiceSpec, TaskContext, TaskFn};
use crate::api::{self, ApiConfig, ConfigSink, NodeState};
use crate::trust::{self, TrustdConfig};

/// The `apid` service: each (re)start binds and serves the API with `config`; a stop
/// request closes the listener.
pub fn service_spec(config: ApiConfig, node: Arc<dyn NodeState>, sink: ConfigSink) -> ServiceSpec {
    let task: TaskFn = Arc::new(move |mut ctx: TaskContext| {
        let (config, node, sink) = (config.clone(), node.clone(), sink.clone());
        Box::pin(async move {
            let running = api::start(config, node, sink)
                .await
                .map_err(|e| e.to_string())?;
            ctx.log(&format!("listening on {}", running.local_addr()));
            ctx.stopping().await;
            running.stop();
            ctx.log("stopped listening");
            Ok(())
        })
    });
    let name = ServiceName::new("apid").unwrap_or_else(|_| unreachable!("a valid constant"));
    ServiceSpec::task(name, task)
}

/// The `trustd` service (control planes with a machine token): each (re)start binds port
/// 50001 and signs workers' API certificate requests (see `crate::trust`); a stop request
/// closes the listener. Like apid, a task inside machined.
pub fn trustd_spec(config: TrustdConfig) -> ServiceSpec {
    let task: TaskFn = Arc::new(move |mut ctx: TaskContext| {
        let config = config.clone();
        Box::pin(async move {
            let running = trust::start(config).await.map_err(|e| e.to_string())?;
            ctx.log(&format!(
                "listening on {}: signing workers' API certificates for holders of machine.token",
                running.local_addr()
            ));
            ctx.stopping().await;
            running.stop();
            ctx.log("stopped listening");
            Ok(())
        })
    });
    let name = ServiceName::new("trustd").unwrap_or_else(|_| unreachable!("a valid constant"));
    ServiceSpec::task(name, task)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::services::{State, Supervisor, SupervisorConfig};

    /// The real API server in maintenance mode, started and stopped by the supervisor.
    #[tokio::test]
    async fn apid_serves_while_supervised_and_closes_on_stop() {
        let sup = Supervisor::new(SupervisorConfig {
            cgroup_root: None,
            log_dir: None,
            log_limits: Default::default(),
            reaping: crate::services::Reaping::Direct,
        });
        let mut config = ApiConfig::node(api::ApiMode::Maintenance, basalt_config::Mode::Metal);
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let (sink, _configs) = api::config_channel();
        sup.register(service_spec(config, Arc::new(api::NothingWired), sink))
            .unwrap();
        sup.start("apid").unwrap();
        let status = sup
            .wait_for("apid", &[State::Healthy], Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(status.pid, None, "an internal service has no process");
        let mut logs = sup.logs("apid", true).unwrap();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(20), logs.next())
                .await
                .unwrap()
                .unwrap();
            if let Some(addr) = line.text.strip_prefix("listening on ") {
                break addr.parse::<SocketAddr>().unwrap();
            }
        };
        tokio::net::TcpStream::connect(addr).await.unwrap();
        sup.stop("apid").await.unwrap();
        assert_eq!(sup.status("apid").unwrap().state, State::Stopped);
        // The accept loop is gone: nothing answers on the port any more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    /// trustd as a supervised service: it listens while running and closes on stop.
    #[tokio::test]
    async fn trustd_serves_while_supervised_and_closes_on_stop() {
        let secrets = basalt_config::secrets::SecretsBundle::generate().unwrap();
        let opts = basalt_config::generate::GenOptions::new(
            "t".parse().unwrap(),
            "https://10.5.0.2:6443".parse().unwrap(),
        );
        let (cp, _) = basalt_config::generate::machine_configs(&secrets, &opts).unwrap();
        let identity = api::ServerIdentity::for_node(&cp, "cp-1", &[]).unwrap();
        let mut config = TrustdConfig::node(&cp, identity).unwrap();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let sup = Supervisor::new(SupervisorConfig {
            cgroup_root: None,
            log_dir: None,
            log_limits: Default::default(),
            reaping: crate::services::Reaping::Direct,
        });
        sup.register(trustd_spec(config)).unwrap();
        sup.start("trustd").unwrap();
        sup.wait_for("trustd", &[State::Healthy], Duration::from_secs(20))
            .await
            .unwrap();
        let mut logs = sup.logs("trustd", true).unwrap();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(20), logs.next())
                .await
                .unwrap()
                .unwrap();
            if let Some(rest) = line.text.strip_prefix("listening on ") {
                break rest
                    .split(':')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(":")
                    .parse::<SocketAddr>()
                    .unwrap();
            }
        };
        tokio::net::TcpStream::connect(addr).await.unwrap();
        sup.stop("trustd").await.unwrap();
        assert_eq!(sup.status("trustd").unwrap().state, State::Stopped);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
