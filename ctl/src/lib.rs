//! The library half of basaltctl: what the CLI and the end-to-end tests share. The
//! command-line tree itself lives in the binary (`main.rs`, `cli.rs`, `cmd/`).

pub mod lab;
