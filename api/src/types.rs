//! The request and response bodies of every endpoint. Field names are the wire names
//! (snake_case JSON); enums serialise as lower-case or kebab-case strings so that a
//! person reading `curl` output or an NDJSON log understands them without this crate.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `GET /v1/version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Always "basalt".
    pub name: String,
    /// The machined version (the workspace version it was built from).
    pub version: String,
    /// The wire-contract version; bumped on incompatible changes ("v1").
    pub api_version: String,
    /// CPU architecture of the node (`std::env::consts::ARCH`).
    pub arch: String,
    /// True while the node waits for a config and serves only `POST /v1/config`.
    pub maintenance: bool,
}

/// `GET /v1/health`: healthy when every check is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    pub checks: Vec<HealthCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub name: String,
    pub healthy: bool,
    pub message: String,
}

/// The supervisor's state machine, as DESIGN.md names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Waiting,
    Starting,
    Running,
    Healthy,
    Unhealthy,
    Stopping,
    Stopped,
    Failed,
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Waiting => "waiting",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        };
        f.write_str(s)
    }
}

/// One entry of `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// The last health-check or state-change message ("listening on 2379", "exit status 1").
    pub message: String,
    /// How often the supervisor restarted it since boot.
    pub restarts: u32,
    /// When it entered `state`, milliseconds since the Unix epoch.
    pub since_unix_ms: Option<u64>,
}

/// `POST /v1/services/{name}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

impl ServiceAction {
    pub const ALL: [ServiceAction; 3] = [Self::Start, Self::Stop, Self::Restart];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
        }
    }
}

impl fmt::Display for ServiceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceAction {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ParseEnumError {
                what: "service action",
                value: s.to_owned(),
                expected: "start, stop, restart",
            })
    }
}

/// A string that is not one of an enum's wire names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid {what} (expected one of: {expected})")]
pub struct ParseEnumError {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// The answer to a service action, a reboot or a shutdown: the owner accepted the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionAccepted {
    pub message: String,
}

/// One line of `GET /v1/logs/{service}` (NDJSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub service: String,
    pub timestamp_unix_ms: u64,
    pub message: String,
}

/// One record of `GET /v1/dmesg` (NDJSON), decoded from /dev/kmsg.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelLogLine {
    /// syslog facility (0 = kernel).
    pub facility: u8,
    /// syslog level, 0 (emerg) … 7 (debug).
    pub level: u8,
    pub sequence: u64,
    /// Microseconds since boot (CLOCK_MONOTONIC), as the kernel stamps it.
    pub timestamp_us: u64,
    pub message: String,
}

/// `GET /v1/config`: the active machine config with every secret replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDocument {
    /// YAML text of the redacted config.
    pub config: String,
}

/// What to do once an applied config is stored (DESIGN.md, "The node API").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyMode {
    /// Apply live when the change allows it, reboot otherwise.
    #[default]
    Auto,
    /// Apply live; refuse a change that needs a reboot.
    NoReboot,
    /// Store, then reboot.
    Reboot,
    /// Store for the next boot; change nothing now.
    Staged,
    /// Apply live, then revert to the previous config when the timeout ends; to keep it,
    /// apply it again with another mode before then.
    Try,
}

impl ApplyMode {
    pub const ALL: [ApplyMode; 5] = [
        Self::Auto,
        Self::NoReboot,
        Self::Reboot,
        Self::Staged,
        Self::Try,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::NoReboot => "no-reboot",
            Self::Reboot => "reboot",
            Self::Staged => "staged",
            Self::Try => "try",
        }
    }
}

impl fmt::Display for ApplyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApplyMode {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ParseEnumError {
                what: "apply mode",
                value: s.to_owned(),
                expected: "auto, no-reboot, reboot, staged, try",
            })
    }
}

/// How long a `try` apply waits for confirmation when the request names no timeout.
pub const DEFAULT_TRY_TIMEOUT_SECONDS: u64 = 60;
/// The longest a `try` apply may wait: past this, the operator should use `auto`.
pub const MAX_TRY_TIMEOUT_SECONDS: u64 = 24 * 3600;

/// `POST /v1/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyConfigRequest {
    /// The machine config, YAML or JSON text.
    pub config: String,
    #[serde(default)]
    pub mode: ApplyMode,
    /// Only with `mode: try`: seconds before the node reverts to the previous config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub try_timeout_seconds: Option<u64>,
}

impl ApplyConfigRequest {
    /// The request's shape rules, checked before the config itself: a timeout only goes
    /// with `try`, and within bounds. Returns the effective try timeout.
    pub fn check(&self) -> Result<Option<u64>, String> {
        match (self.mode, self.try_timeout_seconds) {
            (ApplyMode::Try, None) => Ok(Some(DEFAULT_TRY_TIMEOUT_SECONDS)),
            (ApplyMode::Try, Some(0)) => Err("try_timeout_seconds must be at least 1".to_owned()),
            (ApplyMode::Try, Some(t)) if t > MAX_TRY_TIMEOUT_SECONDS => Err(format!(
                "try_timeout_seconds is {t}, the maximum is {MAX_TRY_TIMEOUT_SECONDS}"
            )),
            (ApplyMode::Try, Some(t)) => Ok(Some(t)),
            (mode, Some(_)) => Err(format!(
                "try_timeout_seconds only applies to mode try, not {mode}"
            )),
            (_, None) => Ok(None),
        }
    }
}

/// The answer to an accepted `POST /v1/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyConfigResponse {
    pub mode: ApplyMode,
    /// What the node does now ("stored; rebooting", "staged for the next boot").
    pub message: String,
    /// True when the node reboots to apply it.
    pub reboot: bool,
    /// The config fields changed on the running node without a reboot (live modes).
    #[serde(default)]
    pub applied_live: Vec<String>,
    /// The config fields whose change waits for a reboot (`auto` reboots for them;
    /// `staged` leaves them for the next boot).
    #[serde(default)]
    pub needs_reboot: Vec<String>,
}

/// One problem found in a machine config: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    /// Field path, e.g. `machine.network.interfaces[0].vip.ip`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every non-2xx answer carries this body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A sentence saying what went wrong.
    pub error: String,
    /// For a refused config: every problem found, not only the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_errors: Vec<ValidationError>,
}

/// `GET /v1/network/links`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// Link kind ("ether", "loopback", "bridge", "vlan" …).
    pub kind: String,
    pub mac: Option<String>,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// RFC 2863 operational state ("up", "down", "unknown" …).
    pub oper_state: String,
}

/// `GET /v1/network/addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub link: String,
    /// `address/prefix`, e.g. `10.5.0.2/24`.
    pub address: String,
    pub scope: String,
}

/// `GET /v1/network/routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `network/prefix`; `0.0.0.0/0` for the default route.
    pub destination: String,
    pub gateway: Option<IpAddr>,
    pub link: Option<String>,
    pub metric: Option<u32>,
    pub table: u32,
}

/// `GET /v1/network/resolvers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolvers {
    pub nameservers: Vec<IpAddr>,
    pub search: Vec<String>,
}

/// `GET /v1/disks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name ("vda", "nvme0n1").
    pub name: String,
    /// Device path ("/dev/vda").
    pub path: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub rotational: bool,
    pub removable: bool,
    pub read_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "file",
            Self::Directory => "directory",
            Self::Symlink => "symlink",
            Self::Other => "other",
        })
    }
}

/// One entry of `GET /v1/files?path=…` (a directory listing, or the file itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    /// Absolute path on the node.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub modified_unix: Option<i64>,
}

/// One line of `GET /v1/events` (NDJSON): something machined did or noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub sequence: u64,
    pub timestamp_unix_ms: u64,
    /// What kind of fact: "service", "config", "sequencer", "power" …
    pub kind: String,
    /// The thing it is about (a service name, a phase), when there is one.
    pub subject: Option<String>,
    pub message: String,
}

// ---- trustd: a worker's API serving certificate, signed by a control plane ----

/// The port a control plane's trustd listens on (Talos uses the same one).
pub const TRUST_PORT: u16 = 50001;
/// The path trustd signs certificate requests on.
pub const TRUST_CERTIFICATE_PATH: &str = "/v1/certificate";

/// `POST /v1/certificate` on trustd: a node's CSR (PEM, ECDSA P-256) and the cluster's
/// machine token (`machine.token`), which authorises the request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustCertificateRequest {
    pub csr: String,
    pub token: String,
}

impl std::fmt::Debug for TrustCertificateRequest {
    // The token is a cluster secret: never in logs or panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustCertificateRequest")
            .field("csr", &self.csr)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// trustd's answer: the signed server certificate and the CA that signed it (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustCertificateResponse {
    pub certificate: String,
    pub ca: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_mode_wire_names_round_trip() {
        for mode in ApplyMode::ALL {
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
            assert_eq!(mode.as_str().parse::<ApplyMode>().unwrap(), mode);
        }
        assert!("no_reboot".parse::<ApplyMode>().is_err());
    }

    #[test]
    fn try_timeout_rules() {
        let req = |mode, t| ApplyConfigRequest {
            config: String::new(),
            mode,
            try_timeout_seconds: t,
        };
        assert_eq!(req(ApplyMode::Try, None).check(), Ok(Some(60)));
        assert_eq!(req(ApplyMode::Try, Some(5)).check(), Ok(Some(5)));
        assert!(req(ApplyMode::Try, Some(0)).check().is_err());
        assert!(
            req(ApplyMode::Try, Some(MAX_TRY_TIMEOUT_SECONDS + 1))
                .check()
                .is_err()
        );
        assert!(req(ApplyMode::Auto, Some(5)).check().is_err());
        assert_eq!(req(ApplyMode::Staged, None).check(), Ok(None));
    }

    #[test]
    fn apply_request_refuses_unknown_fields() {
        let err = serde_json::from_str::<ApplyConfigRequest>(r#"{"config":"","mod":"try"}"#);
        assert!(err.is_err());
    }
}
