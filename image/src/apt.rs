//! The apt package metadata of this host (`/var/lib/apt/lists/*_Packages[.lz4|.xz|.gz]`):
//! stanzas, relationship fields and the virtual packages `Provides` declares.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::debversion::{DebVersion, VersionError};

#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("reading apt lists directory {path}: {source}")]
    ListDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no *_Packages index in {path}: run `apt-get update` first")]
    NoIndex { path: PathBuf },
    #[error("reading package index {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("package index {path}, stanza of {package:?}: field {field} is missing")]
    MissingField {
        path: PathBuf,
        package: String,
        field: &'static str,
    },
    #[error("package index {path}, package {package:?}: {source}")]
    Version {
        path: PathBuf,
        package: String,
        source: VersionError,
    },
    #[error("package index {path}, package {package:?}: relation {relation:?} cannot be parsed")]
    Relation {
        path: PathBuf,
        package: String,
        relation: String,
    },
}

/// Version operator of a relation (`<<`, `<=`, `=`, `>=`, `>>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

impl Op {
    pub fn admits(self, candidate: &DebVersion, wanted: &DebVersion) -> bool {
        use std::cmp::Ordering::*;
        let ord = candidate.cmp(wanted);
        match self {
            Op::Lt => ord == Less,
            Op::Le => ord != Greater,
            Op::Eq => ord == Equal,
            Op::Ge => ord != Less,
            Op::Gt => ord == Greater,
        }
    }
}

/// One alternative of a relation: `name [(op version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atom {
    pub name: String,
    pub constraint: Option<(Op, DebVersion)>,
}

impl Atom {
    pub fn admits(&self, version: &DebVersion) -> bool {
        self.constraint
            .as_ref()
            .is_none_or(|(op, v)| op.admits(version, v))
    }
}

impl std::fmt::Display for Atom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.constraint {
            None => f.write_str(&self.name),
            Some((op, v)) => {
                let op = match op {
                    Op::Lt => "<<",
                    Op::Le => "<=",
                    Op::Eq => "=",
                    Op::Ge => ">=",
                    Op::Gt => ">>",
                };
                write!(f, "{} ({op} {v})", self.name)
            }
        }
    }
}

/// `a | b`: any one alternative satisfies it.
pub type Alternatives = Vec<Atom>;

#[derive(Debug, Clone)]
pub struct PackageRecord {
    pub name: String,
    pub version: DebVersion,
    pub architecture: String,
    pub depends: Vec<Alternatives>,
    pub provides: Vec<Atom>,
    pub filename: String,
    pub sha256: String,
    pub size: u64,
}

/// Every package version the host's indices know, by name.
#[derive(Debug, Default)]
pub struct Index {
    pub packages: BTreeMap<String, Vec<PackageRecord>>,
    /// virtual name → (provider name, provider version)
    pub providers: BTreeMap<String, Vec<(String, DebVersion)>>,
}

impl Index {
    pub fn load_dir(dir: &Path, arch: &str) -> Result<Self, AptError> {
        let entries = std::fs::read_dir(dir).map_err(|source| AptError::ListDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let base = name
                    .trim_end_matches(".lz4")
                    .trim_end_matches(".xz")
                    .trim_end_matches(".gz");
                base.ends_with(&format!("binary-{arch}_Packages"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(AptError::NoIndex {
                path: dir.to_owned(),
            });
        }
        let mut index = Index::default();
        for file in files {
            let text = read_maybe_compressed(&file)?;
            index.add_text(&file, &text, arch)?;
        }
        for versions in index.packages.values_mut() {
            versions.sort_by(|a, b| b.version.cmp(&a.version));
            versions.dedup_by(|a, b| a.version == b.version);
        }
        Ok(index)
    }

    pub fn add_text(&mut self, path: &Path, text: &str, arch: &str) -> Result<(), AptError> {
        for stanza in text.split("\n\n") {
            let fields = parse_stanza(stanza);
            let Some(name) = fields.get("Package") else {
                continue;
            };
            let field = |f: &'static str| {
                fields
                    .get(f)
                    .cloned()
                    .ok_or_else(|| AptError::MissingField {
                        path: path.to_owned(),
                        package: name.clone(),
                        field: f,
                    })
            };
            let architecture = field("Architecture")?;
            if architecture != arch && architecture != "all" {
                continue;
            }
            let version: DebVersion =
                field("Version")?
                    .parse()
                    .map_err(|source| AptError::Version {
                        path: path.to_owned(),
                        package: name.clone(),
                        source,
                    })?;
            let rel = |f: &str| -> Result<Vec<Alternatives>, AptError> {
                match fields.get(f) {
                    None => Ok(Vec::new()),
                    Some(text) => parse_relations(text).ok_or_else(|| AptError::Relation {
                        path: path.to_owned(),
                        package: name.clone(),
                        relation: text.clone(),
                    }),
                }
            };
            let mut depends = rel("Pre-Depends")?;
            depends.extend(rel("Depends")?);
            let provides: Vec<Atom> = rel("Provides")?.into_iter().flatten().collect();
            for p in &provides {
                self.providers
                    .entry(p.name.clone())
                    .or_default()
                    .push((name.clone(), version.clone()));
            }
            let size = field("Size")?.parse().unwrap_or(0);
            let record = PackageRecord {
                name: name.clone(),
                version,
                architecture,
                depends,
                provides,
                filename: field("Filename")?,
                sha256: field("SHA256")?,
                size,
            };
            self.packages.entry(name.clone()).or_default().push(record);
        }
        Ok(())
    }

    /// Newest version of `name` that satisfies `atom`'s constraint.
    pub fn best(&self, atom: &Atom) -> Option<&PackageRecord> {
        self.packages
            .get(&atom.name)?
            .iter()
            .find(|r| atom.admits(&r.version))
    }

    pub fn exact(&self, name: &str, version: &DebVersion) -> Option<&PackageRecord> {
        self.packages
            .get(name)?
            .iter()
            .find(|r| &r.version == version)
    }
}

fn read_maybe_compressed(path: &Path) -> Result<String, AptError> {
    let err = |source| AptError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut reader: Box<dyn Read> = match path.extension().and_then(|e| e.to_str()) {
        Some("lz4") => Box::new(lz4_flex::frame::FrameDecoder::new(file)),
        Some("xz") => Box::new(xz2::read::XzDecoder::new(file)),
        Some("gz") => Box::new(flate2::read::GzDecoder::new(file)),
        _ => Box::new(file),
    };
    let mut text = String::new();
    reader.read_to_string(&mut text).map_err(err)?;
    Ok(text)
}

/// deb822 fields of one stanza; continuation lines are joined with spaces (enough for
/// relation fields, which are all this builder reads from multi-line values).
fn parse_stanza(stanza: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in stanza.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(v) = current.as_ref().and_then(|key| fields.get_mut(key)) {
                let v: &mut String = v;
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.to_owned(), v.trim().to_owned());
            current = Some(k.to_owned());
        }
    }
    fields
}

/// `a (>= 1) | b:any, c [amd64] <!nocheck>` → [[a>=1, b], [c]].
pub fn parse_relations(text: &str) -> Option<Vec<Alternatives>> {
    let mut out = Vec::new();
    for group in text.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut alts = Vec::new();
        for alt in group.split('|').map(str::trim) {
            alts.push(parse_atom(alt)?);
        }
        out.push(alts);
    }
    Some(out)
}

fn parse_atom(text: &str) -> Option<Atom> {
    // Drop architecture and build-profile restrictions; they never apply to binary indices
    // in a way this builder cares about.
    let text = match text.find(')') {
        Some(end) => &text[..=end],
        None => text.split(['[', '<']).next().unwrap_or(text),
    };
    let (name_part, constraint) = match text.split_once('(') {
        Some((n, c)) => {
            let c = c.trim().trim_end_matches(')').trim();
            let (op, v) = ["<<", "<=", ">=", ">>", "=", "<", ">"]
                .iter()
                .find_map(|op| c.strip_prefix(op).map(|v| (*op, v.trim())))?;
            let op = match op {
                "<<" => Op::Lt,
                "<=" | "<" => Op::Le,
                "=" => Op::Eq,
                ">=" | ">" => Op::Ge,
                _ => Op::Gt,
            };
            (n, Some((op, v.parse().ok()?)))
        }
        None => (text, None),
    };
    let name = name_part.trim().split(':').next()?.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    Some(Atom {
        name: name.to_owned(),
        constraint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relations_with_alternatives_versions_and_qualifiers() {
        let mut r = parse_relations("runc (>= 0.1.0~) <!nocheck>, python3 (<< 3.12), libc6:any (>= 2.34), debconf (>= 0.5) | debconf-2.0, foo [amd64]")
            .unwrap();
        assert_eq!(r.len(), 5);
        assert_eq!(r.remove(1)[0].to_string(), "python3 (<< 3.12)");
        assert_eq!(r[0][0].name, "runc");
        assert_eq!(r[1][0].name, "libc6");
        assert!(r[1][0].admits(&"2.36-9".parse().unwrap()));
        assert!(!r[1][0].admits(&"2.31".parse().unwrap()));
        assert_eq!(r[2].len(), 2);
        assert_eq!(r[2][1].name, "debconf-2.0");
        assert_eq!(r[3][0].name, "foo");
        assert!(parse_relations("a (~ 1)").is_none());
    }

    #[test]
    fn stanza_parsing_picks_arch_and_newest() {
        let text = "Package: a\nVersion: 1.0-1\nArchitecture: amd64\nDepends: b\nFilename: pool/a1.deb\nSize: 10\nSHA256: aa\n\n\
                    Package: a\nVersion: 1.0-2\nArchitecture: amd64\nFilename: pool/a2.deb\nSize: 10\nSHA256: bb\n\n\
                    Package: a\nVersion: 9\nArchitecture: arm64\nFilename: pool/a9.deb\nSize: 10\nSHA256: cc\n\n\
                    Package: c\nVersion: 1\nArchitecture: all\nProvides: virt (= 2)\nFilename: pool/c.deb\nSize: 1\nSHA256: dd\n";
        let mut index = Index::default();
        index.add_text(Path::new("t"), text, "amd64").unwrap();
        for v in index.packages.values_mut() {
            v.sort_by(|a, b| b.version.cmp(&a.version));
        }
        let a = index
            .best(&Atom {
                name: "a".into(),
                constraint: None,
            })
            .unwrap();
        assert_eq!(a.version.to_string(), "1.0-2");
        assert_eq!(index.providers["virt"][0].0, "c");
    }

    #[test]
    fn missing_sha256_is_an_error_naming_the_package() {
        let mut index = Index::default();
        let err = index
            .add_text(
                Path::new("idx"),
                "Package: z\nVersion: 1\nArchitecture: all\nFilename: f\nSize: 1\n",
                "amd64",
            )
            .unwrap_err();
        assert!(err.to_string().contains("\"z\""), "{err}");
        assert!(err.to_string().contains("SHA256"), "{err}");
    }
}
