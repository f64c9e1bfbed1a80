//! Strict reading and canonical writing of a machine config.
//!
//! Text is first read into a generic tree (`serde_yaml::Value` / `serde_json::Value`),
//! which catches syntax errors with their line and column; the tree is then turned into
//! the model through `serde_path_to_error`, so every type or value error names the
//! field it happened at (`machine.network.interfaces[0].vip.ip: not an IPv4/IPv6
//! address`), and an unknown field lists the keys valid at that place.

use serde::de::DeserializeOwned;

use crate::ignition;
use crate::model::MachineConfig;

/// Which syntax a document was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    Ignition,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Format::Yaml => "YAML",
            Format::Json => "JSON",
            Format::Ignition => "Ignition",
        })
    }
}

/// Why a document could not be read as a machine config.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the config is not UTF-8 text")]
    NotUtf8,
    #[error("the config is empty")]
    Empty,
    #[error("the config is not valid {format}: {message}")]
    Syntax { format: Format, message: String },
    /// A field has the wrong type, an invalid value, is unknown or is missing.
    #[error("{path}: {message}")]
    Field { path: String, message: String },
    /// An Ignition document could not be imported.
    #[error(transparent)]
    Ignition(#[from] ignition::IgnitionError),
}

impl ParseError {
    /// The dotted path of the offending field, when the error is about one.
    pub fn path(&self) -> Option<&str> {
        match self {
            ParseError::Field { path, .. } => Some(path),
            _ => None,
        }
    }
}

fn from_tree<'de, D, T>(tree: D) -> Result<T, ParseError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: DeserializeOwned,
{
    deserialize_with_path(tree).map_err(|(path, message)| ParseError::Field { path, message })
}

/// Deserialises strictly and, on failure, returns the dotted path of the offending
/// field (`(document)` for the root) with serde's message — the one shape every
/// document this crate reads (configs, secrets bundles, client configs) reports.
pub(crate) fn deserialize_with_path<'de, D, T>(de: D) -> Result<T, (String, String)>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: DeserializeOwned,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(document)".to_owned()
        } else {
            path
        };
        (path, e.into_inner().to_string())
    })
}

/// Reads any model type from YAML text, strictly.
pub(crate) fn yaml_to<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let tree: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ParseError::Syntax {
        format: Format::Yaml,
        message: e.to_string(),
    })?;
    if tree.is_null() {
        return Err(ParseError::Empty);
    }
    from_tree(tree)
}

/// Reads any model type from a JSON tree, strictly.
pub(crate) fn json_value_to<T: DeserializeOwned>(tree: serde_json::Value) -> Result<T, ParseError> {
    if tree.is_null() {
        return Err(ParseError::Empty);
    }
    from_tree(tree)
}

fn json_tree(text: &str) -> Result<serde_json::Value, ParseError> {
    serde_json::from_str(text).map_err(|e| ParseError::Syntax {
        format: Format::Json,
        message: e.to_string(),
    })
}

/// Guesses the syntax: a document whose first non-blank character is `{` is JSON (YAML
/// flow mappings at the top level are rare enough, and JSON is valid YAML anyway), and
/// JSON with a top-level `ignition` object is Ignition.
pub fn detect_format(text: &str) -> Format {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if !trimmed.starts_with('{') {
        return Format::Yaml;
    }
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(serde_json::Value::Object(map)) if map.contains_key("ignition") => Format::Ignition,
        _ => Format::Json,
    }
}

impl MachineConfig {
    /// Parses a YAML document.
    pub fn from_yaml(text: &str) -> Result<MachineConfig, ParseError> {
        yaml_to(text)
    }

    /// Parses a JSON document.
    pub fn from_json(text: &str) -> Result<MachineConfig, ParseError> {
        json_value_to(json_tree(text)?)
    }

    /// Parses a config in whichever format it is written: YAML, JSON, or an Ignition
    /// (spec 3.x) document (see [`crate::ignition`]).
    pub fn parse(bytes: &[u8]) -> Result<MachineConfig, ParseError> {
        let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
        let text = text.trim_start_matches('\u{feff}');
        if text.trim().is_empty() {
            return Err(ParseError::Empty);
        }
        match detect_format(text) {
            Format::Yaml => MachineConfig::from_yaml(text),
            // `{` may also open a YAML flow mapping (`{version: v1alpha1, ...}`), which
            // is not JSON; when the text is valid YAML, read it as such, otherwise the
            // JSON error is the one that helps.
            Format::Json => match json_tree(text) {
                Ok(tree) => json_value_to(tree),
                Err(json_error) => match serde_yaml::from_str::<serde_yaml::Value>(text) {
                    Ok(tree) => from_tree(tree),
                    Err(_) => Err(json_error),
                },
            },
            Format::Ignition => ignition::import(text),
        }
    }

    /// The canonical YAML form. Parsing it gives back an equal config, and writing that
    /// again gives the same text.
    pub fn to_yaml(&self) -> String {
        // Every map key in the model serialises to a string and no value can fail, so
        // serde_yaml has nothing to refuse here.
        serde_yaml::to_string(self).unwrap_or_else(|e| unreachable!("serialising the model: {e}"))
    }

    /// The canonical JSON form (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| unreachable!("serialising the model: {e}"))
    }
}
