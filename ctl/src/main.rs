//! basaltctl is the operator CLI: it generates cluster configs and secrets, validates
//! configs, and talks to nodes through the node API.
//!
//! `main` only runs [`run`] and turns its outcome into an exit code: 0 ok, 1 a runtime
//! failure, 2 invalid input (a bad argument, config, patch or secrets file). Errors are
//! printed as `error: ` followed by the whole cause chain in Display form.

mod cli;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::Parser;

use crate::cmd::Failure;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, error) = match failure {
                Failure::Invalid(e) => (2, e),
                Failure::Runtime(e) => (1, e),
            };
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}
