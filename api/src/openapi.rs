//! `GET /v1/openapi.json`, generated from the route table so it lists exactly the routes
//! machined serves. Schemas are named, not spelled out field by field: docs/api.md and the
//! Rust types in this crate are the field-level reference.

use serde_json::{Map, Value, json};

use crate::endpoints::{Body, ENDPOINTS, Endpoint, Method};

fn response_schema(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Version => "VersionInfo",
        Endpoint::Health => "Health",
        Endpoint::OpenApi => "OpenApiDocument",
        Endpoint::Services => "ServiceStatus[]",
        Endpoint::ServiceAction | Endpoint::Reboot | Endpoint::Shutdown => "ActionAccepted",
        Endpoint::Logs => "LogLine (NDJSON)",
        Endpoint::Dmesg => "KernelLogLine (NDJSON)",
        Endpoint::ConfigGet => "ConfigDocument",
        Endpoint::ConfigApply => "ApplyConfigResponse",
        Endpoint::Links => "Link[]",
        Endpoint::Addresses => "Address[]",
        Endpoint::Routes => "Route[]",
        Endpoint::Resolvers => "Resolvers",
        Endpoint::Disks => "Disk[]",
        Endpoint::FilesList => "FileEntry[]",
        Endpoint::FilesRead => "bytes",
        Endpoint::Events => "Event (NDJSON)",
    }
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
        let mut op = json!({
            "operationId": format!("{:?}", spec.endpoint),
            "summary": spec.summary,
            "x-basalt-min-role": spec.min_role.organization(),
            "x-basalt-maintenance": spec.maintenance,
            "parameters": parameters,
            "responses": {
                "200": {
                    "description": response_schema(spec.endpoint),
                    "content": {content_type: {"schema": {"x-basalt-type": response_schema(spec.endpoint)}}}
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
        "components": {"schemas": {
            "ErrorBody": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {"type": "string"},
                    "validation_errors": {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}
                }
            },
            "ValidationError": {
                "type": "object",
                "required": ["path", "message"],
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}}
            },
            "ApplyConfigRequest": {
                "type": "object",
                "required": ["config"],
                "properties": {
                    "config": {"type": "string", "description": "machine config, YAML or JSON"},
                    "mode": {"type": "string", "enum": ["auto", "no-reboot", "reboot", "staged", "try"], "default": "auto"},
                    "try_timeout_seconds": {"type": "integer", "minimum": 1}
                }
            }
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
