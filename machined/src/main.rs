//! machined is PID 1 stage 2 of a Basalt node: it runs the boot sequence, acquires and
//! persists the machine config, owns network state, supervises services, serves the
//! node API and provisions Kubernetes.
mod api;
mod config_source;
mod disks;
mod network;
mod services;
mod time;

fn main() {}
