//! Import of Ignition documents (spec 3.0–3.6), for provisioning tools that only speak
//! Ignition.
//!
//! Only what maps cleanly onto a machine config is taken: the machine config itself,
//! carried as a file at [`CONFIG_PATH`]; `/etc/hostname`; and every other
//! `storage.files` entry with inline (`data:` URL) contents, which becomes a
//! `machine.files` entry. Everything else that carries a value — `passwd`, `systemd`,
//! the other `storage` sections, remote file sources, file ownership, appends,
//! compression, verification, `ignition.config`/`proxy`/`security`/`timeouts`, keys
//! the schema does not know — is listed, by JSON path, in a single error. Nothing is
//! silently dropped. The `ignition-config` crate checks the document against the
//! schema of its declared version first.

use base64::Engine as _;
use serde_json::Value;

use crate::model::MachineConfig;
use crate::model::MachineFile;
use crate::parse::{self, Format, ParseError};
use crate::values::{FileMode, Hostname};

/// Where an Ignition document carries the Basalt machine config (YAML or JSON).
pub const CONFIG_PATH: &str = "/etc/basalt/config.yaml";

/// Something in an Ignition document that has no place in a machine config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// JSON path in the Ignition document (`storage.files[2].contents.source`).
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Why an Ignition document could not become a machine config.
#[derive(Debug, thiserror::Error)]
pub enum IgnitionError {
    #[error("not a valid Ignition 3.x config: {0}")]
    Invalid(String),
    #[error(
        "the Ignition config carries no machine config: put one (YAML or JSON) in a file at {CONFIG_PATH}"
    )]
    NoMachineConfig,
    #[error(
        "the machine config in the Ignition file {CONFIG_PATH} (storage.files[{index}]): {source}"
    )]
    MachineConfig {
        index: usize,
        #[source]
        source: Box<ParseError>,
    },
    #[error("the Ignition config uses {} that Basalt cannot import, so nothing was imported:{}", count(.0.len()), list(.0))]
    Unsupported(Vec<Unsupported>),
}

fn count(n: usize) -> String {
    if n == 1 {
        "one thing".to_owned()
    } else {
        format!("{n} things")
    }
}

fn list(items: &[Unsupported]) -> String {
    items.iter().map(|u| format!("\n  {u}")).collect()
}

/// `$.storage.files.0.foo` (the crate's notation) → `storage.files[0].foo`.
fn crate_path(path: &str) -> String {
    let mut out = String::new();
    for seg in path
        .trim_start_matches('$')
        .split('.')
        .filter(|s| !s.is_empty())
    {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Null, `{}`, `[]`, and objects made only of those say nothing and may be ignored.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_empty),
        _ => false,
    }
}

struct Import {
    unsupported: Vec<Unsupported>,
}

impl Import {
    /// Records a refusal; a path already refused keeps its first reason.
    fn refuse(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        let path = path.into();
        if !self.unsupported.iter().any(|u| u.path == path) {
            self.unsupported.push(Unsupported {
                path,
                reason: reason.into(),
            });
        }
    }

    /// Refuses every non-empty member of `obj` not in `allowed`.
    fn refuse_others(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        at: &str,
        allowed: &[&str],
        reason: fn(&str) -> &'static str,
    ) {
        for (key, value) in obj {
            if !allowed.contains(&key.as_str()) && !is_empty(value) {
                let path = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                self.refuse(path, reason(key));
            }
        }
    }
}

/// A file entry after its checks.
struct IgnFile {
    index: usize,
    path: String,
    mode: Option<u64>,
    contents: Option<Vec<u8>>,
}

/// Decodes a `data:` URL (RFC 2397): `data:[<media type>][;base64],<data>`.
fn decode_data_url(url: &str) -> Result<Vec<u8>, &'static str> {
    let rest = url.strip_prefix("data:").ok_or("not a data: URL")?;
    let (header, data) = rest
        .split_once(',')
        .ok_or("a data: URL needs a `,` before its data")?;
    if header.ends_with(";base64") {
        base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|_| "the data: URL's base64 payload is invalid")
    } else {
        percent_decode(data).ok_or("the data: URL has an invalid %-escape")
    }
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

fn check_file(
    imp: &mut Import,
    index: usize,
    file: &serde_json::Map<String, Value>,
) -> Option<IgnFile> {
    let refused_before = imp.unsupported.len();
    let at = format!("storage.files[{index}]");
    imp.refuse_others(
        file,
        &at,
        &["path", "mode", "contents", "overwrite"],
        |_| "machine.files has no file ownership, appending or other file options",
    );
    let path = file
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mode = file.get("mode").and_then(Value::as_u64);
    let mut contents = None;
    let mut ok = true;
    if let Some(Value::Object(c)) = file.get("contents") {
        imp.refuse_others(
            c,
            &format!("{at}.contents"),
            &["source"],
            |_| "compression, verification and HTTP headers are not supported",
        );
        match c.get("source").and_then(Value::as_str) {
            None => contents = Some(Vec::new()),
            Some(src) if src.starts_with("data:") => match decode_data_url(src) {
                Ok(bytes) => contents = Some(bytes),
                Err(why) => {
                    imp.refuse(format!("{at}.contents.source"), why);
                    ok = false;
                }
            },
            Some(_) => {
                imp.refuse(
                    format!("{at}.contents.source"),
                    "remote sources are refused, inline the contents as a data: URL",
                );
                ok = false;
            }
        }
    }
    // A file with any refused option is not imported half-way.
    let ok = ok && imp.unsupported.len() == refused_before;
    ok.then_some(IgnFile {
        index,
        path,
        mode,
        contents,
    })
}

/// Turns an Ignition document into a machine config, or lists everything that stands
/// in the way.
pub(crate) fn import(text: &str) -> Result<MachineConfig, ParseError> {
    // The crate checks the version and the schema; keys it does not know come back as
    // warnings, which are unsupported here like anything else.
    let warnings = match ignition_config::Config::parse_str(text) {
        Ok((_, warnings)) => warnings,
        Err(ignition_config::Error::UnknownVersion(v)) => {
            return Err(IgnitionError::Invalid(format!(
                "unsupported Ignition version {v}: Basalt reads spec 3.0 to 3.6"
            ))
            .into());
        }
        Err(e) => return Err(IgnitionError::Invalid(e.to_string()).into()),
    };
    let tree: Value =
        serde_json::from_str(text).map_err(|e| IgnitionError::Invalid(e.to_string()))?;
    let mut imp = Import {
        unsupported: Vec::new(),
    };
    for w in warnings {
        let path = match &w {
            ignition_config::Warning::UnusedKey(path) => crate_path(path),
            other => other.to_string(),
        };
        imp.refuse(path, "not part of the Ignition schema for this version");
    }
    let Value::Object(root) = &tree else {
        return Err(IgnitionError::Invalid("the document is not a JSON object".into()).into());
    };
    imp.refuse_others(root, "", &["ignition", "storage"], |key| match key {
        "passwd" => "Basalt has no login users: no shell, no SSH, operators use the API",
        "systemd" => "Basalt has no systemd units: machined supervises its own services",
        "kernelArguments" => "kernel arguments are part of the Basalt image's boot entry",
        _ => "not supported by Basalt's Ignition import",
    });
    if let Some(Value::Object(ign)) = root.get("ignition") {
        imp.refuse_others(ign, "ignition", &["version"], |key| match key {
            "config" => "Basalt fetches and merges no further configs",
            _ => "Basalt has no proxy, TLS or timeout settings for fetching configs",
        });
    }
    let mut files = Vec::new();
    if let Some(Value::Object(storage)) = root.get("storage") {
        imp.refuse_others(storage, "storage", &["files"], |key| match key {
            "links" | "directories" => "machine.files has no links or directories",
            _ => "Basalt partitions and formats its own disk, see machine.install",
        });
        if let Some(Value::Array(list)) = storage.get("files") {
            for (i, f) in list.iter().enumerate() {
                if let Value::Object(f) = f
                    && let Some(file) = check_file(&mut imp, i, f)
                {
                    files.push(file);
                }
            }
        }
    }

    let mut config: Option<MachineConfig> = None;
    let mut hostname: Option<(usize, Hostname)> = None;
    let mut machine_files = Vec::new();
    for file in files {
        let at = format!("storage.files[{}]", file.index);
        let bytes = file.contents.unwrap_or_default();
        let Ok(text) = String::from_utf8(bytes) else {
            imp.refuse(
                format!("{at}.contents"),
                "the contents are not UTF-8 text, which machine.files cannot carry",
            );
            continue;
        };
        if file.path == CONFIG_PATH {
            let parsed = match parse::detect_format(&text) {
                Format::Yaml => MachineConfig::from_yaml(&text),
                Format::Json => MachineConfig::from_json(&text),
                Format::Ignition => {
                    imp.refuse(
                        format!("{at}.contents"),
                        "an Ignition document cannot nest another one",
                    );
                    continue;
                }
            };
            match parsed {
                Ok(c) => config = Some(c),
                Err(e) => {
                    return Err(IgnitionError::MachineConfig {
                        index: file.index,
                        source: Box::new(e),
                    }
                    .into());
                }
            }
            continue;
        }
        if file.path == "/etc/hostname" {
            match text.trim().parse::<Hostname>() {
                Ok(h) => hostname = Some((file.index, h)),
                Err(e) => imp.refuse(format!("{at}.contents"), e.to_string()),
            }
            continue;
        }
        let path = match file.path.parse() {
            Ok(p) => p,
            Err(e) => {
                imp.refuse(
                    format!("{at}.path"),
                    crate::values::ValueError::to_string(&e),
                );
                continue;
            }
        };
        let permissions = match file.mode {
            None => FileMode::default(),
            Some(m) => match u32::try_from(m)
                .map_err(|_| crate::values::ValueError::FileMode)
                .and_then(FileMode::new)
            {
                Ok(mode) => mode,
                Err(e) => {
                    imp.refuse(format!("{at}.mode"), e.to_string());
                    continue;
                }
            },
        };
        machine_files.push(MachineFile {
            path,
            permissions,
            content: text,
        });
    }

    if !imp.unsupported.is_empty() {
        return Err(IgnitionError::Unsupported(imp.unsupported).into());
    }
    let mut config = config.ok_or(IgnitionError::NoMachineConfig)?;
    if let Some((index, h)) = hostname {
        match &config.machine.hostname {
            Some(existing) if *existing != h => {
                return Err(IgnitionError::Unsupported(vec![Unsupported {
                    path: format!("storage.files[{index}].contents"),
                    reason: format!(
                        "it says {h} but the machine config's machine.hostname says {existing}"
                    ),
                }])
                .into());
            }
            _ => config.machine.hostname = Some(h),
        }
    }
    config.machine.files.extend(machine_files);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls() {
        assert_eq!(
            decode_data_url("data:,hello%20world").unwrap(),
            b"hello world"
        );
        assert_eq!(
            decode_data_url("data:text/plain;base64,aGk=").unwrap(),
            b"hi"
        );
        assert_eq!(
            decode_data_url("data:;base64,!!").unwrap_err(),
            "the data: URL's base64 payload is invalid"
        );
        assert_eq!(
            decode_data_url("data:,%zz").unwrap_err(),
            "the data: URL has an invalid %-escape"
        );
        assert_eq!(
            decode_data_url("data:abc").unwrap_err(),
            "a data: URL needs a `,` before its data"
        );
    }

    #[test]
    fn crate_paths_become_ours() {
        assert_eq!(crate_path("$.storage.files.0.foo"), "storage.files[0].foo");
        assert_eq!(crate_path("$.bogus"), "bogus");
    }

    #[test]
    fn emptiness() {
        assert!(is_empty(
            &serde_json::json!({"users": [], "x": {"y": null}})
        ));
        assert!(!is_empty(&serde_json::json!({"a": false})));
    }
}
