//! `GET /v1/openapi.json`, generated from the route table so it lists exactly the routes
//! machined serves. Schemas are named, not spelled out field by field: docs/api.md and the
//! Rust types in this crate are the field-level reference.

use serde_json::{Map, Value, json};

use crate::endpoints::{Body, ENDPOINTS, Endpoint, Method};

/// What one answer (or, for NDJSON, one line) of an endpoint is.
enum Answer {
    One(&'static str),
    List(&'static str),
    Lines(&'static str),
    Any,
    Bytes,
}

fn answer(endpoint: Endpoint) -> Answer {
    match endpoint {
        Endpoint::Version => Answer::One("VersionInfo"),
        Endpoint::Health => Answer::One("Health"),
        Endpoint::OpenApi => Answer::Any,
        Endpoint::Services => Answer::List("ServiceStatus"),
        Endpoint::ServiceAction | Endpoint::Reboot | Endpoint::Shutdown => {
            Answer::One("ActionAccepted")
        }
        Endpoint::Logs => Answer::Lines("LogLine"),
        Endpoint::Dmesg => Answer::Lines("KernelLogLine"),
        Endpoint::ConfigGet => Answer::One("ConfigDocument"),
        Endpoint::ConfigApply => Answer::One("ApplyConfigResponse"),
        Endpoint::Links => Answer::List("Link"),
        Endpoint::Addresses => Answer::List("Address"),
        Endpoint::Routes => Answer::List("Route"),
        Endpoint::Resolvers => Answer::One("Resolvers"),
        Endpoint::Disks => Answer::List("Disk"),
        Endpoint::FilesList => Answer::List("FileEntry"),
        Endpoint::FilesRead => Answer::Bytes,
        Endpoint::Events => Answer::Lines("Event"),
    }
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn answer_schema(answer: &Answer) -> (String, Value) {
    match answer {
        Answer::One(name) => ((*name).to_owned(), reference(name)),
        Answer::List(name) => (
            format!("array of {name}"),
            json!({"type": "array", "items": reference(name)}),
        ),
        Answer::Lines(name) => (format!("NDJSON, one {name} per line"), reference(name)),
        Answer::Any => ("OpenAPI document".to_owned(), json!({"type": "object"})),
        Answer::Bytes => (
            "file contents".to_owned(),
            json!({"type": "string", "format": "binary"}),
        ),
    }
}

const S: &str = "string";
const I: &str = "integer";
const B: &str = "boolean";

/// A field: name, JSON type (or a schema), nullable.
enum F {
    T(&'static str, &'static str),
    N(&'static str, &'static str),
    V(&'static str, Value),
}

fn object(fields: Vec<F>) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in fields {
        let (name, schema) = match f {
            F::T(n, t) => (n, json!({"type": t})),
            F::N(n, t) => (n, json!({"type": t, "nullable": true})),
            F::V(n, v) => (n, v),
        };
        required.push(Value::from(name));
        props.insert(name.to_owned(), schema);
    }
    json!({"type": "object", "required": required, "properties": props})
}

fn string_list() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn strings(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

/// The schema of every wire type, by its Rust name. A test serialises a sample of each
/// type and checks it against these, so a renamed or added field cannot go unnoticed.
pub fn schemas() -> Map<String, Value> {
    use F::*;
    let states = strings(&[
        "waiting",
        "starting",
        "running",
        "healthy",
        "unhealthy",
        "stopping",
        "stopped",
        "failed",
    ]);
    let modes = strings(&["auto", "no-reboot", "reboot", "staged", "try"]);
    let list = |item: &str| json!({"type": "array", "items": {"type": item}});
    let mut m = Map::new();
    let mut put = |name: &str, v: Value| {
        m.insert(name.to_owned(), v);
    };
    put(
        "VersionInfo",
        object(vec![
            T("name", S),
            T("version", S),
            T("api_version", S),
            T("arch", S),
            T("maintenance", B),
        ]),
    );
    put(
        "HealthCheck",
        object(vec![T("name", S), T("healthy", B), T("message", S)]),
    );
    put(
        "Health",
        object(vec![
            T("healthy", B),
            V(
                "checks",
                json!({"type": "array", "items": reference("HealthCheck")}),
            ),
        ]),
    );
    put(
        "ServiceStatus",
        object(vec![
            T("name", S),
            V("state", states),
            T("message", S),
            T("restarts", I),
            N("since_unix_ms", I),
        ]),
    );
    put("ActionAccepted", object(vec![T("message", S)]));
    put(
        "LogLine",
        object(vec![
            T("service", S),
            T("timestamp_unix_ms", I),
            T("message", S),
        ]),
    );
    put(
        "KernelLogLine",
        object(vec![
            T("facility", I),
            T("level", I),
            T("sequence", I),
            T("timestamp_us", I),
            T("message", S),
        ]),
    );
    put("ConfigDocument", object(vec![T("config", S)]));
    put(
        "ApplyConfigResponse",
        object(vec![
            V("mode", modes.clone()),
            T("message", S),
            T("reboot", B),
            V("applied_live", string_list()),
            V("needs_reboot", string_list()),
        ]),
    );
    put(
        "Link",
        object(vec![
            T("name", S),
            T("index", I),
            T("kind", S),
            N("mac", S),
            T("mtu", I),
            T("up", B),
            T("oper_state", S),
        ]),
    );
    put(
        "Address",
        object(vec![T("link", S), T("address", S), T("scope", S)]),
    );
    put(
        "Route",
        object(vec![
            T("destination", S),
            N("gateway", S),
            N("link", S),
            N("metric", I),
            T("table", I),
        ]),
    );
    put(
        "Resolvers",
        object(vec![V("nameservers", list(S)), V("search", list(S))]),
    );
    put(
        "Disk",
        object(vec![
            T("name", S),
            T("path", S),
            T("size_bytes", I),
            N("model", S),
            N("serial", S),
            T("rotational", B),
            T("removable", B),
            T("read_only", B),
        ]),
    );
    put(
        "FileEntry",
        object(vec![
            T("name", S),
            T("path", S),
            V("kind", strings(&["file", "directory", "symlink", "other"])),
            T("size", I),
            T("mode", I),
            N("modified_unix", I),
        ]),
    );
    put(
        "Event",
        object(vec![
            T("sequence", I),
            T("timestamp_unix_ms", I),
            T("kind", S),
            N("subject", S),
            T("message", S),
        ]),
    );
    put(
        "ValidationError",
        object(vec![T("path", S), T("message", S)]),
    );
    let mut error_body = object(vec![
        T("error", S),
        V(
            "validation_errors",
            json!({"type": "array", "items": reference("ValidationError")}),
        ),
    ]);
    // Left out of the body when empty.
    error_body["required"] = json!(["error"]);
    put("ErrorBody", error_body);
    let mut apply = object(vec![
        V(
            "config",
            json!({"type": "string", "description": "machine config, YAML or JSON"}),
        ),
        V("mode", modes),
        V(
            "try_timeout_seconds",
            json!({"type": "integer", "minimum": 1, "maximum": crate::MAX_TRY_TIMEOUT_SECONDS}),
        ),
    ]);
    apply["required"] = json!(["config"]);
    apply["additionalProperties"] = json!(false);
    put("ApplyConfigRequest", apply);
    m
}

/// The OpenAPI 3.0 document for the whole route table.
pub fn document(version: &str) -> Value {
    let mut paths = Map::new();
    for spec in ENDPOINTS {
        let entry = paths
            .entry(spec.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let mut parameters: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(spec.query.iter().map(|(name, description)| {
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
        }));
        let content_type = match spec.body {
            Body::Json => "application/json",
            Body::Ndjson => "application/x-ndjson",
            Body::Bytes => "application/octet-stream",
        };
        let (description, schema) = answer_schema(&answer(spec.endpoint));
        let mut op = json!({
            "operationId": format!("{:?}", spec.endpoint),
            "summary": spec.summary,
            "x-basalt-min-role": spec.min_role.organization(),
            "x-basalt-maintenance": spec.maintenance,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": description,
                    "content": {content_type: {"schema": schema}}
                },
                "default": {
                    "description": "ErrorBody",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
                }
            }
        });
        if spec.endpoint == Endpoint::ConfigApply {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ApplyConfigRequest"}}}
            });
        }
        let method = match spec.method {
            Method::Get => "get",
            Method::Post => "post",
        };
        if let Value::Object(map) = entry {
            map.insert(method.to_owned(), op);
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Basalt node API",
            "version": version,
            "description": "HTTPS + JSON on port 50000 with mutual TLS; the client role sits in the client certificate's subject Organization (basalt:reader < basalt:operator < basalt:admin)."
        },
        "paths": paths,
        "components": {"schemas": schemas()}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    /// Checks `value` against `schema` the way a client generated from the document would.
    fn check(schema: &Value, value: &Value, all: &Map<String, Value>, at: &str) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/components/schemas/");
            let target = all
                .get(name)
                .unwrap_or_else(|| panic!("{at}: no schema {name}"));
            return check(target, value, all, at);
        }
        if value.is_null() {
            assert_eq!(schema["nullable"], true, "{at} is null but not nullable");
            return;
        }
        match schema["type"].as_str() {
            Some("object") => {
                let obj = value
                    .as_object()
                    .unwrap_or_else(|| panic!("{at}: not an object"));
                let props = schema["properties"].as_object().unwrap();
                for (key, v) in obj {
                    let sub = props
                        .get(key)
                        .unwrap_or_else(|| panic!("{at}.{key} is sent but not described"));
                    check(sub, v, all, &format!("{at}.{key}"));
                }
                for key in schema["required"].as_array().unwrap() {
                    let key = key.as_str().unwrap();
                    assert!(obj.contains_key(key), "{at}.{key} is required but not sent");
                }
            }
            Some("array") => {
                for (i, item) in value.as_array().unwrap().iter().enumerate() {
                    check(&schema["items"], item, all, &format!("{at}[{i}]"));
                }
            }
            Some("string") => {
                let text = value
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}: not a string"));
                if let Some(allowed) = schema["enum"].as_array() {
                    assert!(
                        allowed.iter().any(|a| a == text),
                        "{at}: {text} not in enum"
                    );
                }
            }
            Some("integer") => assert!(value.is_u64() || value.is_i64(), "{at}: not an integer"),
            Some("boolean") => assert!(value.is_boolean(), "{at}: not a boolean"),
            other => panic!("{at}: schema type {other:?}"),
        }
    }

    fn samples() -> Vec<(&'static str, Value)> {
        let v = |x: &dyn erased::Ser| x.value();
        vec![
            (
                "VersionInfo",
                v(&VersionInfo {
                    name: "basalt".into(),
                    version: "0.1.0".into(),
                    api_version: "v1".into(),
                    arch: "x86_64".into(),
                    maintenance: true,
                }),
            ),
            (
                "Health",
                v(&Health {
                    healthy: false,
                    checks: vec![HealthCheck {
                        name: "etcd".into(),
                        healthy: false,
                        message: "down".into(),
                    }],
                }),
            ),
            (
                "ServiceStatus",
                v(&ServiceStatus {
                    name: "etcd".into(),
                    state: ServiceState::Unhealthy,
                    message: "m".into(),
                    restarts: 2,
                    since_unix_ms: Some(5),
                }),
            ),
            (
                "ServiceStatus",
                v(&ServiceStatus {
                    name: "etcd".into(),
                    state: ServiceState::Stopping,
                    message: "m".into(),
                    restarts: 0,
                    since_unix_ms: None,
                }),
            ),
            (
                "ActionAccepted",
                v(&ActionAccepted {
                    message: "ok".into(),
                }),
            ),
            (
                "LogLine",
                v(&LogLine {
                    service: "etcd".into(),
                    timestamp_unix_ms: 1,
                    message: "x".into(),
                }),
            ),
            (
                "KernelLogLine",
                v(&KernelLogLine {
                    facility: 0,
                    level: 6,
                    sequence: 1,
                    timestamp_us: 2,
                    message: "x".into(),
                }),
            ),
            (
                "ConfigDocument",
                v(&ConfigDocument {
                    config: "version: v1alpha1".into(),
                }),
            ),
            (
                "ApplyConfigRequest",
                v(&ApplyConfigRequest {
                    config: "c".into(),
                    mode: ApplyMode::Try,
                    try_timeout_seconds: Some(5),
                }),
            ),
            (
                "ApplyConfigRequest",
                v(&ApplyConfigRequest {
                    config: "c".into(),
                    mode: ApplyMode::NoReboot,
                    try_timeout_seconds: None,
                }),
            ),
            (
                "ApplyConfigResponse",
                v(&ApplyConfigResponse {
                    mode: ApplyMode::Staged,
                    message: "m".into(),
                    reboot: false,
                    applied_live: vec!["machine.sysctls".into()],
                    needs_reboot: vec!["cluster.name".into()],
                }),
            ),
            (
                "Link",
                v(&Link {
                    name: "eth0".into(),
                    index: 2,
                    kind: "ether".into(),
                    mac: Some("52:54:00:00:00:01".into()),
                    mtu: 1500,
                    up: true,
                    oper_state: "up".into(),
                }),
            ),
            (
                "Link",
                v(&Link {
                    name: "lo".into(),
                    index: 1,
                    kind: "loopback".into(),
                    mac: None,
                    mtu: 65536,
                    up: true,
                    oper_state: "unknown".into(),
                }),
            ),
            (
                "Address",
                v(&Address {
                    link: "eth0".into(),
                    address: "10.5.0.2/24".into(),
                    scope: "global".into(),
                }),
            ),
            (
                "Route",
                v(&Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: Some("10.5.0.1".parse().unwrap()),
                    link: Some("eth0".into()),
                    metric: Some(1024),
                    table: 254,
                }),
            ),
            (
                "Route",
                v(&Route {
                    destination: "10.5.0.0/24".into(),
                    gateway: None,
                    link: None,
                    metric: None,
                    table: 254,
                }),
            ),
            (
                "Resolvers",
                v(&Resolvers {
                    nameservers: vec!["10.5.0.1".parse().unwrap()],
                    search: vec!["lab".into()],
                }),
            ),
            (
                "Disk",
                v(&Disk {
                    name: "vda".into(),
                    path: "/dev/vda".into(),
                    size_bytes: 1,
                    model: None,
                    serial: Some("s".into()),
                    rotational: true,
                    removable: false,
                    read_only: false,
                }),
            ),
            (
                "FileEntry",
                v(&FileEntry {
                    name: "a".into(),
                    path: "/var/a".into(),
                    kind: FileKind::Symlink,
                    size: 1,
                    mode: 0o644,
                    modified_unix: None,
                }),
            ),
            (
                "Event",
                v(&Event {
                    sequence: 1,
                    timestamp_unix_ms: 2,
                    kind: "service".into(),
                    subject: None,
                    message: "m".into(),
                }),
            ),
            (
                "ErrorBody",
                v(&ErrorBody {
                    error: "e".into(),
                    validation_errors: vec![ValidationError {
                        path: "machine".into(),
                        message: "m".into(),
                    }],
                }),
            ),
            (
                "ErrorBody",
                v(&ErrorBody {
                    error: "e".into(),
                    validation_errors: vec![],
                }),
            ),
        ]
    }

    /// Lets `samples` hold values of different types in one list.
    mod erased {
        pub trait Ser {
            fn value(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn value(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap()
            }
        }
    }

    #[test]
    fn every_wire_type_matches_its_schema() {
        let all = schemas();
        let mut covered = std::collections::BTreeSet::new();
        for (name, value) in samples() {
            check(&reference(name), &value, &all, name);
            covered.insert(name);
        }
        // HealthCheck and ValidationError are checked inside Health and ErrorBody.
        for name in all.keys() {
            assert!(
                covered.contains(name.as_str())
                    || ["HealthCheck", "ValidationError"].contains(&name.as_str()),
                "schema {name} has no sample"
            );
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document("test");
        let text = doc.to_string();
        let all = schemas();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(all.contains_key(&name), "dangling reference {name}");
        }
    }

    #[test]
    fn every_route_is_described() {
        let doc = document("test");
        for spec in ENDPOINTS {
            let method = spec.method.as_str().to_lowercase();
            let op = &doc["paths"][spec.path][&method];
            assert!(
                op.is_object(),
                "{} {} missing",
                spec.method.as_str(),
                spec.path
            );
            assert_eq!(op["x-basalt-min-role"], spec.min_role.organization());
        }
    }
}
