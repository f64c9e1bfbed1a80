//! basalt-api owns the wire contract of the node API: the request and response types
//! machined serves on port 50000 and basaltctl sends, the client roles, and an async
//! client used by basaltctl and the end-to-end tests.
