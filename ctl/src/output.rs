//! How commands print data: `-o text|json|yaml`.

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text.
    #[default]
    Text,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML; for text, prints `text` instead.
pub fn print<T: Serialize>(format: OutputFormat, value: &T, text: &str) -> anyhow::Result<()> {
    match format {
        OutputFormat::Text => print!("{text}"),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Yaml => print!("{}", serde_yaml::to_string(value)?),
    }
    Ok(())
}
