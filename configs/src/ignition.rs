//! Import of Ignition (spec 3.x) documents. Filled in by the Ignition work; until then
//! every Ignition document is refused.

use crate::model::MachineConfig;
use crate::parse::ParseError;

/// Why an Ignition document could not become a machine config.
#[derive(Debug, thiserror::Error)]
pub enum IgnitionError {
    #[error("Ignition import is not implemented yet")]
    NotImplemented,
}

pub(crate) fn import(_text: &str) -> Result<MachineConfig, ParseError> {
    Err(IgnitionError::NotImplemented.into())
}
