//! One module per command. Each returns [`Failure`], which tells `main` the exit code.

pub mod generate;
pub mod lab;
pub mod node;
pub mod validate;

use crate::cli::{Cli, Command};

/// How a command failed: [`Failure::Invalid`] means the operator's input was wrong
/// (exit 2), [`Failure::Runtime`] that something else went wrong (exit 1).
#[derive(Debug)]
pub enum Failure {
    Invalid(anyhow::Error),
    Runtime(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Runtime(e.into())
    }
}

pub type CmdResult<T = ()> = Result<T, Failure>;

/// Marks an error as the operator's input being wrong.
pub trait InvalidInput<T> {
    fn invalid(self) -> CmdResult<T>;
    fn invalid_with(self, context: impl FnOnce() -> String) -> CmdResult<T>;
}

impl<T, E: Into<anyhow::Error>> InvalidInput<T> for Result<T, E> {
    fn invalid(self) -> CmdResult<T> {
        self.map_err(|e| Failure::Invalid(e.into()))
    }
    fn invalid_with(self, context: impl FnOnce() -> String) -> CmdResult<T> {
        self.map_err(|e| Failure::Invalid(e.into().context(context())))
    }
}

pub fn run(cli: Cli) -> CmdResult {
    match cli.command {
        Command::Gen(command) => generate::run(command),
        Command::Validate(args) => validate::run(args),
        Command::Node(command) => node::run(command, cli.basaltconfig.as_deref(), &cli.target),
        Command::Lab(command) => lab::run(command),
    }
}
