//! basalt-api owns the wire contract of the node API: the request and response types
//! machined serves on port 50000 and basaltctl sends, the client roles, and an async
//! client used by basaltctl and the end-to-end tests.

pub mod client;
pub mod endpoints;
pub mod fingerprint;
pub mod openapi;
pub mod types;

pub use client::{ByteStream, Client, ClientError, ClientTls, DEFAULT_PORT, NdjsonStream};
pub use endpoints::{ENDPOINTS, Endpoint, EndpointSpec, Method, Role, RouteMatch, route};
pub use fingerprint::{
    Fingerprint, FingerprintError, MAINTENANCE_BANNER, fingerprint_from_banner, maintenance_banner,
};
pub use types::*;
