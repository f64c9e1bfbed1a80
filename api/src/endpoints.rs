//! The route table: every endpoint, its method and path template, and the least role that
//! may call it. machined routes requests from this table, `GET /v1/openapi.json` is
//! generated from it and docs/api.md mirrors it, so the three cannot drift apart.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A client's role, carried in its certificate's subject Organization (machined reads it with
/// `basalt_config::client_config::Role::from_certificate_der`: exactly one `basalt:` value,
/// several are refused as ambiguous). Roles are ordered:
/// each may do everything the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-only: state, logs, the redacted config.
    Reader,
    /// Reader + service actions, reboot, shutdown.
    Operator,
    /// Operator + config apply, files, secrets-bearing endpoints.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Self::Reader, Self::Operator, Self::Admin];

    /// The subject Organization that grants this role (`basalt:admin` …).
    pub fn organization(self) -> &'static str {
        match self {
            Self::Reader => "basalt:reader",
            Self::Operator => "basalt:operator",
            Self::Admin => "basalt:admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.organization())
    }
}

impl FromStr for Role {
    type Err = crate::ParseEnumError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.organization() == s)
            .ok_or_else(|| crate::ParseEnumError {
                what: "role organization",
                value: s.to_owned(),
                expected: "basalt:reader, basalt:operator, basalt:admin",
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

/// Every endpoint of the node API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Version,
    Health,
    OpenApi,
    Services,
    ServiceAction,
    Logs,
    Dmesg,
    ConfigGet,
    ConfigApply,
    Links,
    Addresses,
    Routes,
    Resolvers,
    Disks,
    Reboot,
    Shutdown,
    FilesList,
    FilesRead,
    Events,
}

/// How an endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// One JSON document.
    Json,
    /// Newline-delimited JSON, one object per line; `?follow=true` keeps the stream open.
    Ndjson,
    /// Raw bytes (`application/octet-stream`).
    Bytes,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct EndpointSpec {
    pub endpoint: Endpoint,
    pub method: Method,
    /// Path template; `{name}` segments are parameters.
    pub path: &'static str,
    /// The least role allowed to call it.
    pub min_role: Role,
    /// Served in maintenance mode (no client certificate, self-signed server).
    pub maintenance: bool,
    pub body: Body,
    /// Query parameters it understands: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    pub summary: &'static str,
}

const FOLLOW: (&str, &str) = ("follow", "true keeps the stream open and sends new lines");
const TAIL: (&str, &str) = ("tail", "only the last N lines of the backlog");

/// The route table. Order matters only for documentation.
pub const ENDPOINTS: &[EndpointSpec] = &[
    EndpointSpec {
        endpoint: Endpoint::Version,
        method: Method::Get,
        path: "/v1/version",
        min_role: Role::Reader,
        maintenance: true,
        body: Body::Json,
        query: &[],
        summary: "machined version and whether the node is in maintenance mode",
    },
    EndpointSpec {
        endpoint: Endpoint::Health,
        method: Method::Get,
        path: "/v1/health",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "node health: every check and its message",
    },
    EndpointSpec {
        endpoint: Endpoint::OpenApi,
        method: Method::Get,
        path: "/v1/openapi.json",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "this API described as OpenAPI 3.0",
    },
    EndpointSpec {
        endpoint: Endpoint::Services,
        method: Method::Get,
        path: "/v1/services",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "every supervised service and its state",
    },
    EndpointSpec {
        endpoint: Endpoint::ServiceAction,
        method: Method::Post,
        path: "/v1/services/{name}/{action}",
        min_role: Role::Operator,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "start, stop or restart a service (action: start|stop|restart)",
    },
    EndpointSpec {
        endpoint: Endpoint::Logs,
        method: Method::Get,
        path: "/v1/logs/{service}",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Ndjson,
        query: &[FOLLOW, TAIL],
        summary: "a service's log lines from machined's log ring",
    },
    EndpointSpec {
        endpoint: Endpoint::Dmesg,
        method: Method::Get,
        path: "/v1/dmesg",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Ndjson,
        query: &[FOLLOW],
        summary: "the kernel log (/dev/kmsg)",
    },
    EndpointSpec {
        endpoint: Endpoint::ConfigGet,
        method: Method::Get,
        path: "/v1/config",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "the active machine config with its secrets redacted",
    },
    EndpointSpec {
        endpoint: Endpoint::ConfigApply,
        method: Method::Post,
        path: "/v1/config",
        min_role: Role::Admin,
        maintenance: true,
        body: Body::Json,
        query: &[],
        summary: "validate and apply a machine config (modes auto|no-reboot|reboot|staged|try)",
    },
    EndpointSpec {
        endpoint: Endpoint::Links,
        method: Method::Get,
        path: "/v1/network/links",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "network links",
    },
    EndpointSpec {
        endpoint: Endpoint::Addresses,
        method: Method::Get,
        path: "/v1/network/addresses",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "addresses on every link",
    },
    EndpointSpec {
        endpoint: Endpoint::Routes,
        method: Method::Get,
        path: "/v1/network/routes",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "the routing table",
    },
    EndpointSpec {
        endpoint: Endpoint::Resolvers,
        method: Method::Get,
        path: "/v1/network/resolvers",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "DNS nameservers and search domains",
    },
    EndpointSpec {
        endpoint: Endpoint::Disks,
        method: Method::Get,
        path: "/v1/disks",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "block devices",
    },
    EndpointSpec {
        endpoint: Endpoint::Reboot,
        method: Method::Post,
        path: "/v1/reboot",
        min_role: Role::Operator,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "stop services gracefully and reboot",
    },
    EndpointSpec {
        endpoint: Endpoint::Shutdown,
        method: Method::Post,
        path: "/v1/shutdown",
        min_role: Role::Operator,
        maintenance: false,
        body: Body::Json,
        query: &[],
        summary: "stop services gracefully and power off",
    },
    EndpointSpec {
        endpoint: Endpoint::FilesList,
        method: Method::Get,
        path: "/v1/files",
        min_role: Role::Admin,
        maintenance: false,
        body: Body::Json,
        query: &[("path", "absolute path under /var or /etc")],
        summary: "list a directory (or stat a file) under /var or /etc",
    },
    EndpointSpec {
        endpoint: Endpoint::FilesRead,
        method: Method::Get,
        path: "/v1/files/content",
        min_role: Role::Admin,
        maintenance: false,
        body: Body::Bytes,
        query: &[("path", "absolute path of a regular file under /var or /etc")],
        summary: "read a file under /var or /etc",
    },
    EndpointSpec {
        endpoint: Endpoint::Events,
        method: Method::Get,
        path: "/v1/events",
        min_role: Role::Reader,
        maintenance: false,
        body: Body::Ndjson,
        query: &[FOLLOW],
        summary: "machined's event stream (service changes, config, sequencer, power)",
    },
];

impl Endpoint {
    /// This endpoint's row of [`ENDPOINTS`].
    pub fn spec(self) -> &'static EndpointSpec {
        ENDPOINTS
            .iter()
            .find(|s| s.endpoint == self)
            // Every variant has a row; the `every_endpoint_has_one_row` test holds that.
            .unwrap_or(&ENDPOINTS[0])
    }
}

/// The result of matching a request path against the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    Found {
        spec: &'static EndpointSpec,
        /// Values of the `{…}` segments, in template order.
        params: Vec<String>,
    },
    /// The path exists, but not for this method.
    MethodNotAllowed,
    NotFound,
}

impl PartialEq for EndpointSpec {
    fn eq(&self, other: &Self) -> bool {
        self.endpoint == other.endpoint
    }
}
impl Eq for EndpointSpec {}

/// Finds the endpoint for a method and path (without query). Parameter segments match one
/// non-empty path segment.
pub fn route(method: Method, path: &str) -> RouteMatch {
    let mut path_matched = false;
    for spec in ENDPOINTS {
        if let Some(params) = match_template(spec.path, path) {
            if spec.method == method {
                return RouteMatch::Found { spec, params };
            }
            path_matched = true;
        }
    }
    if path_matched {
        RouteMatch::MethodNotAllowed
    } else {
        RouteMatch::NotFound
    }
}

fn match_template(template: &str, path: &str) -> Option<Vec<String>> {
    let mut t = template.split('/');
    let mut p = path.split('/');
    let mut params = Vec::new();
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(ts), Some(ps)) if ts.starts_with('{') && ts.ends_with('}') => {
                if ps.is_empty() {
                    return None;
                }
                params.push(ps.to_owned());
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Endpoint; 19] = [
        Endpoint::Version,
        Endpoint::Health,
        Endpoint::OpenApi,
        Endpoint::Services,
        Endpoint::ServiceAction,
        Endpoint::Logs,
        Endpoint::Dmesg,
        Endpoint::ConfigGet,
        Endpoint::ConfigApply,
        Endpoint::Links,
        Endpoint::Addresses,
        Endpoint::Routes,
        Endpoint::Resolvers,
        Endpoint::Disks,
        Endpoint::Reboot,
        Endpoint::Shutdown,
        Endpoint::FilesList,
        Endpoint::FilesRead,
        Endpoint::Events,
    ];

    #[test]
    fn every_endpoint_has_one_row() {
        for e in ALL {
            assert_eq!(
                ENDPOINTS.iter().filter(|s| s.endpoint == e).count(),
                1,
                "{e:?}"
            );
        }
        assert_eq!(ENDPOINTS.len(), ALL.len());
    }

    #[test]
    fn only_version_and_apply_are_served_in_maintenance() {
        let served: Vec<_> = ENDPOINTS
            .iter()
            .filter(|s| s.maintenance)
            .map(|s| s.endpoint)
            .collect();
        assert_eq!(served, vec![Endpoint::Version, Endpoint::ConfigApply]);
    }

    #[test]
    fn state_changing_endpoints_need_more_than_reader() {
        for spec in ENDPOINTS {
            if spec.method == Method::Post {
                assert!(spec.min_role > Role::Reader, "{:?}", spec.endpoint);
            }
        }
        assert_eq!(Endpoint::ConfigApply.spec().min_role, Role::Admin);
        assert_eq!(Endpoint::FilesRead.spec().min_role, Role::Admin);
        assert_eq!(Endpoint::Reboot.spec().min_role, Role::Operator);
    }

    #[test]
    fn routing_matches_templates_and_methods() {
        match route(Method::Post, "/v1/services/etcd/restart") {
            RouteMatch::Found { spec, params } => {
                assert_eq!(spec.endpoint, Endpoint::ServiceAction);
                assert_eq!(params, vec!["etcd", "restart"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            route(Method::Get, "/v1/services/etcd/restart"),
            RouteMatch::MethodNotAllowed
        );
        assert_eq!(
            route(Method::Get, "/v1/services//restart"),
            RouteMatch::NotFound
        );
        assert_eq!(route(Method::Get, "/v1/nothing"), RouteMatch::NotFound);
        assert!(
            matches!(route(Method::Get, "/v1/config"), RouteMatch::Found { spec, .. } if spec.endpoint == Endpoint::ConfigGet)
        );
        assert!(
            matches!(route(Method::Post, "/v1/config"), RouteMatch::Found { spec, .. } if spec.endpoint == Endpoint::ConfigApply)
        );
    }

    #[test]
    fn roles_parse_from_their_organization_and_are_ordered() {
        for role in Role::ALL {
            assert_eq!(role.organization().parse::<Role>().unwrap(), role);
        }
        assert!("admin".parse::<Role>().is_err());
        assert!(Role::Reader < Role::Operator && Role::Operator < Role::Admin);
    }
}
