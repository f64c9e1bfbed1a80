//! Reproducibility check.
use std::path::Path;

use crate::build::BuildArgs;
use crate::fetch::Cache;
use crate::lock::Lock;

pub fn check(
    _workspace: &Path,
    _cache: &Cache,
    _lock: &Lock,
    _args: &BuildArgs,
) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
