//! Build orchestration.
use std::path::{Path, PathBuf};

use crate::fetch::Cache;
use crate::lock::Lock;

#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Output directory for the artifacts.
    #[arg(short, long, default_value = "out")]
    pub output: PathBuf,
}

pub fn build(_workspace: &Path, _cache: &Cache, _lock: &Lock, _args: &BuildArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
