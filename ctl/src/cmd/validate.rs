//! `basaltctl validate`: strict parsing plus semantic validation of a machine config,
//! printing every problem at once.

use std::path::PathBuf;

use anyhow::Context as _;
use basalt_config::{MachineConfig, validate};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::{CmdResult, Failure};
use crate::output::{self, OutputFormat};

/// Where the node runs; some checks differ (an install disk matters on metal only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Metal,
    Cloud,
    Container,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The config file: YAML, JSON or Ignition (spec 3.x).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Where the node runs.
    #[arg(long, value_enum, default_value_t = Mode::Metal)]
    pub mode: Mode,
    /// How to print the result.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Serialize)]
struct Report {
    file: String,
    ok: bool,
    problems: Vec<String>,
}

pub fn run(args: ValidateArgs) -> CmdResult {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let problems = match MachineConfig::parse(&bytes) {
        Ok(config) => problems(&config, args.mode),
        Err(e) => vec![e.to_string()],
    };
    let report = Report {
        file: args.file.display().to_string(),
        ok: problems.is_empty(),
        problems,
    };
    let text = if report.ok {
        "ok\n".to_owned()
    } else {
        report
            .problems
            .iter()
            .map(|p| format!("{}: {p}\n", report.file))
            .collect()
    };
    output::print(args.output, &report, &text)?;
    if report.ok {
        Ok(())
    } else {
        Err(Failure::Invalid(anyhow::anyhow!(
            "{} is invalid ({} problem{})",
            report.file,
            report.problems.len(),
            if report.problems.len() == 1 { "" } else { "s" }
        )))
    }
}

fn problems(config: &MachineConfig, mode: Mode) -> Vec<String> {
    let mode = match mode {
        Mode::Metal => validate::Mode::Metal,
        Mode::Cloud => validate::Mode::Cloud,
        Mode::Container => validate::Mode::Container,
    };
    match config.validate(mode) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.lines(),
    }
}
