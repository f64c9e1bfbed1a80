//! The command-line tree. Each subcommand's arguments live next to its implementation
//! in `cmd/`; this file only assembles them. A new command is one variant here and one
//! module in `cmd/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cmd;

/// Operate Basalt nodes and clusters: generate configs and secrets, talk to nodes through their API, run QEMU labs.
#[derive(Debug, Parser)]
#[command(
    name = "basaltctl",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The client config file (default: $BASALTCONFIG, then ~/.basalt/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub basaltconfig: Option<PathBuf>,

    /// The context and nodes node commands talk to.
    #[command(flatten)]
    pub target: cmd::node::Target,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate secrets, machine configs, client configs and certificates.
    #[command(subcommand)]
    Gen(cmd::generate::GenCommand),
    /// Check a machine config (YAML, JSON or Ignition) and report every problem.
    Validate(cmd::validate::ValidateArgs),
    /// Node commands: apply-config, version, services, logs … (through the node API).
    #[command(flatten)]
    Node(cmd::node::NodeCommand),
    /// QEMU labs on this machine: create, destroy, list, console.
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
}
