//! basaltctl is the operator CLI: it generates cluster configs and secrets, validates
//! configs, and talks to nodes through the node API.
fn main() {}
