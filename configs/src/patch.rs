//! Config patches: changes an operator layers over a generated machine config.
//!
//! A patch is YAML or JSON, given inline or as `@path/to/file`. A mapping is an RFC 7396
//! JSON merge patch (keys replace, `null` deletes); a sequence is an RFC 6902 JSON patch
//! (`[{op: add, path: /machine/install/disk, value: /dev/sda}]`). Patches apply, in
//! order, to the config's serialised tree; after each one the tree is strictly parsed
//! again, so a patch that introduces an unknown field or a bad value is refused by name
//! with the field's path.

use std::fmt;
use std::path::PathBuf;

use crate::model::MachineConfig;
use crate::parse::ParseError;
use crate::validate::{Mode, ValidationErrors};

/// Why a patch could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("reading the config patch file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("the config patch {patch} is not valid YAML or JSON: {reason}")]
    Syntax { patch: String, reason: String },
    #[error(
        "the config patch {patch} is neither a mapping (JSON merge patch) nor a sequence (JSON patch)"
    )]
    Shape { patch: String },
    #[error("the config patch {patch} is not a valid JSON patch (RFC 6902): {reason}")]
    JsonPatchSyntax { patch: String, reason: String },
    #[error("applying the config patch {patch}: {reason}")]
    Apply { patch: String, reason: String },
    #[error("the config patch {patch} makes the config invalid: {cause}")]
    Invalid { patch: String, cause: ParseError },
    #[error("after the config patches {patches}: {errors}")]
    InvalidResult {
        patches: String,
        errors: ValidationErrors,
    },
    #[error("serialising the config to patch it: {0}")]
    Serialise(String),
}

#[derive(Debug, Clone, PartialEq)]
enum PatchKind {
    /// RFC 7396.
    Merge(serde_json::Value),
    /// RFC 6902.
    Json(json_patch::Patch),
}

/// One parsed patch and where it came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigPatch {
    label: String,
    kind: PatchKind,
}

impl fmt::Display for ConfigPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl ConfigPatch {
    /// Reads a command-line argument: `@file` reads the file, anything else is the
    /// patch itself.
    pub fn from_arg(arg: &str) -> Result<ConfigPatch, PatchError> {
        match arg.strip_prefix('@') {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|cause| PatchError::Read {
                    path: PathBuf::from(path),
                    cause,
                })?;
                ConfigPatch::from_text(format!("@{path}"), &text)
            }
            None => {
                let label = if arg.len() > 60 {
                    format!("{:?}…", arg.chars().take(60).collect::<String>())
                } else {
                    format!("{arg:?}")
                };
                ConfigPatch::from_text(label, arg)
            }
        }
    }

    /// Parses patch text; `label` names it in errors.
    pub fn from_text(label: String, text: &str) -> Result<ConfigPatch, PatchError> {
        // YAML is a superset of JSON, so one parser reads both.
        let tree: serde_json::Value =
            serde_yaml::from_str(text).map_err(|e| PatchError::Syntax {
                patch: label.clone(),
                reason: e.to_string(),
            })?;
        let kind = match tree {
            serde_json::Value::Object(_) => PatchKind::Merge(tree),
            serde_json::Value::Array(_) => {
                PatchKind::Json(serde_json::from_value(tree).map_err(|e| {
                    PatchError::JsonPatchSyntax {
                        patch: label.clone(),
                        reason: e.to_string(),
                    }
                })?)
            }
            _ => return Err(PatchError::Shape { patch: label }),
        };
        Ok(ConfigPatch { label, kind })
    }

    /// Whether this is a JSON patch (RFC 6902) rather than a merge patch.
    pub fn is_json_patch(&self) -> bool {
        matches!(self.kind, PatchKind::Json(_))
    }

    fn apply_to_tree(&self, tree: &mut serde_json::Value) -> Result<(), PatchError> {
        match &self.kind {
            PatchKind::Merge(patch) => {
                json_patch::merge(tree, patch);
                Ok(())
            }
            PatchKind::Json(patch) => {
                json_patch::patch(tree, patch).map_err(|e| PatchError::Apply {
                    patch: self.label.clone(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// Applies `patches` in order. After each patch the result is strictly parsed again;
/// an error names the patch that broke the config and the offending field.
///
/// Semantic validation (subnet overlaps, keys on workers …) is the caller's, on the
/// result: a sequence of patches may pass through states that only the last one fixes.
pub fn apply_patches(
    config: &MachineConfig,
    patches: &[ConfigPatch],
) -> Result<MachineConfig, PatchError> {
    let mut tree =
        serde_json::to_value(config).map_err(|e| PatchError::Serialise(e.to_string()))?;
    let mut result = config.clone();
    for patch in patches {
        patch.apply_to_tree(&mut tree)?;
        let text =
            serde_json::to_string(&tree).map_err(|e| PatchError::Serialise(e.to_string()))?;
        result = MachineConfig::from_json(&text).map_err(|cause| PatchError::Invalid {
            patch: patch.label.clone(),
            cause,
        })?;
    }
    Ok(result)
}

/// [`apply_patches`], then semantic validation of the result for `mode`; the error
/// names the patches that were applied.
pub fn apply_patches_and_validate(
    config: &MachineConfig,
    patches: &[ConfigPatch],
    mode: Mode,
) -> Result<MachineConfig, PatchError> {
    let result = apply_patches(config, patches)?;
    result
        .validate(mode)
        .map_err(|errors| PatchError::InvalidResult {
            patches: patches
                .iter()
                .map(|p| p.label.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            errors,
        })?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenOptions, machine_configs};
    use crate::secrets::SecretsBundle;

    fn config() -> MachineConfig {
        let secrets = SecretsBundle::generate().unwrap();
        let opts = GenOptions::new(
            "demo".parse().unwrap(),
            "https://192.0.2.10:6443".parse().unwrap(),
        );
        machine_configs(&secrets, &opts).unwrap().0
    }

    #[test]
    fn merge_patch_changes_a_field() {
        let patch = ConfigPatch::from_arg("machine: {install: {disk: /dev/sda}}").unwrap();
        assert!(!patch.is_json_patch());
        let out = apply_patches(&config(), &[patch]).unwrap();
        assert_eq!(out.machine.install.unwrap().disk.to_string(), "/dev/sda");
    }

    #[test]
    fn json_patch_changes_a_field() {
        let patch = ConfigPatch::from_arg(
            r#"[{"op": "replace", "path": "/machine/install/disk", "value": "/dev/sdb"}]"#,
        )
        .unwrap();
        assert!(patch.is_json_patch());
        let out = apply_patches(&config(), &[patch]).unwrap();
        assert_eq!(out.machine.install.unwrap().disk.to_string(), "/dev/sdb");
    }

    #[test]
    fn patches_apply_in_order() {
        let a = ConfigPatch::from_arg("machine: {install: {disk: /dev/sda}}").unwrap();
        let b = ConfigPatch::from_arg("machine: {install: {disk: /dev/sdc}}").unwrap();
        let out = apply_patches(&config(), &[a, b]).unwrap();
        assert_eq!(out.machine.install.unwrap().disk.to_string(), "/dev/sdc");
    }

    #[test]
    fn a_patch_adding_an_unknown_field_is_named() {
        let good = ConfigPatch::from_arg("machine: {install: {disk: /dev/sda}}").unwrap();
        let bad = ConfigPatch::from_arg("machine: {netwrok: {}}").unwrap();
        let err = apply_patches(&config(), &[good, bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("netwrok"), "{err}");
        assert!(err.contains("\"machine: {netwrok: {}}\""), "{err}");
    }

    #[test]
    fn a_patch_that_breaks_a_semantic_rule_is_named() {
        let overlap =
            ConfigPatch::from_arg("cluster: {network: {podSubnets: [10.96.0.0/16]}}").unwrap();
        let config = config();
        // Well-typed, so parsing accepts it …
        apply_patches(&config, std::slice::from_ref(&overlap)).unwrap();
        // … but pod and service subnets overlap.
        let err = apply_patches_and_validate(&config, &[overlap], Mode::Metal)
            .unwrap_err()
            .to_string();
        assert!(err.contains("podSubnets"), "{err}");
        assert!(
            err.contains("\"cluster: {network: {podSubnets: [10.96.0.0/16]}}\""),
            "{err}"
        );
    }

    #[test]
    fn a_json_patch_on_a_missing_path_fails() {
        let bad =
            ConfigPatch::from_arg(r#"[{"op": "remove", "path": "/machine/nothing"}]"#).unwrap();
        let err = apply_patches(&config(), &[bad]).unwrap_err();
        assert!(matches!(err, PatchError::Apply { .. }), "{err}");
    }

    #[test]
    fn scalars_and_bad_operations_are_refused() {
        assert!(matches!(
            ConfigPatch::from_arg("42"),
            Err(PatchError::Shape { .. })
        ));
        assert!(matches!(
            ConfigPatch::from_arg(r#"[{"op": "frobnicate", "path": "/x"}]"#),
            Err(PatchError::JsonPatchSyntax { .. })
        ));
        assert!(matches!(
            ConfigPatch::from_arg("@/nonexistent/patch.yaml"),
            Err(PatchError::Read { .. })
        ));
    }
}
