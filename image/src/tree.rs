//! The staged filesystem tree every archive format is written from: an ordered map from
//! absolute path to node, so iteration order (and thus every archive) is deterministic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an absolute, normalised path")]
    BadPath { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Bytes of a file on disk (an extracted package, a built binary).
    Source(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    File {
        content: Content,
        mode: u32,
    },
    Symlink {
        target: String,
    },
    /// Character device (only the initramfs carries one: /dev/console, which the kernel
    /// opens for init's stdio before devtmpfs exists).
    CharDev {
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// Keys are absolute paths without a trailing slash ("/usr/bin/runc"); "/" is implicit.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
}

impl Tree {
    fn check(path: &str) -> Result<(), TreeError> {
        let ok = path.starts_with('/')
            && path.len() > 1
            && !path.ends_with('/')
            && path
                .split('/')
                .skip(1)
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if ok {
            Ok(())
        } else {
            Err(TreeError::BadPath {
                path: path.to_owned(),
            })
        }
    }

    /// Add parents as 0755 directories, so no archive has an entry without its parent.
    fn parents(&mut self, path: &str) {
        let mut cur = String::new();
        let comps: Vec<&str> = path.split('/').skip(1).collect();
        for comp in &comps[..comps.len().saturating_sub(1)] {
            cur.push('/');
            cur.push_str(comp);
            self.nodes
                .entry(cur.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
    }

    pub fn insert(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        Self::check(path)?;
        self.parents(path);
        self.nodes.insert(path.to_owned(), node);
        Ok(())
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        self.insert(path, Node::Dir { mode })
    }

    pub fn file(&mut self, path: &str, content: Content, mode: u32) -> Result<(), TreeError> {
        self.insert(path, Node::File { content, mode })
    }

    pub fn bytes(
        &mut self,
        path: &str,
        data: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<(), TreeError> {
        self.file(path, Content::Bytes(data.into()), mode)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), TreeError> {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_owned(),
            },
        )
    }

    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    /// Follows symlinks inside the tree (absolute and relative) to the final path.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut path = path.to_owned();
        for _ in 0..40 {
            // Resolve the first symlinked component, if any.
            let comps: Vec<&str> = path.split('/').skip(1).collect();
            let mut prefix = String::new();
            let mut changed = false;
            for (i, c) in comps.iter().enumerate() {
                prefix.push('/');
                prefix.push_str(c);
                if let Some(Node::Symlink { target }) = self.nodes.get(&prefix) {
                    let base = prefix.rsplit_once('/').map_or("", |(b, _)| b);
                    let joined = if target.starts_with('/') {
                        target.clone()
                    } else {
                        format!("{base}/{target}")
                    };
                    let rest = comps[i + 1..].join("/");
                    let full = if rest.is_empty() {
                        joined
                    } else {
                        format!("{joined}/{rest}")
                    };
                    path = normalise(&full);
                    changed = true;
                    break;
                }
            }
            if !changed {
                return self.nodes.contains_key(&path).then_some(path);
            }
        }
        None
    }

    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>, TreeError> {
        match self.nodes.get(path) {
            Some(Node::File { content, .. }) => content.read().map(Some),
            _ => Ok(None),
        }
    }

    /// Materialise the tree under `root` (for mksquashfs). Owners and times are left to
    /// the packer (`-all-root`, `-all-time`); modes are set exactly.
    pub fn write_to(&self, root: &Path) -> Result<(), TreeError> {
        use std::os::unix::fs::PermissionsExt;
        for (path, node) in &self.nodes {
            let dest = root.join(&path[1..]);
            let werr = |source| TreeError::Write {
                path: dest.clone(),
                source,
            };
            match node {
                Node::Dir { mode } => {
                    std::fs::create_dir_all(&dest).map_err(werr)?;
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*mode))
                        .map_err(werr)?;
                }
                Node::File { content, mode } => {
                    match content {
                        Content::Source(src) => {
                            std::fs::copy(src, &dest).map_err(werr)?;
                        }
                        Content::Bytes(b) => std::fs::write(&dest, b).map_err(werr)?,
                    }
                    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(*mode))
                        .map_err(werr)?;
                }
                Node::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &dest).map_err(werr)?
                }
                // Device nodes never go through a host directory (mksquashfs input).
                Node::CharDev { .. } => {}
            }
        }
        Ok(())
    }
}

impl Content {
    pub fn read(&self) -> Result<Vec<u8>, TreeError> {
        match self {
            Content::Bytes(b) => Ok(b.clone()),
            Content::Source(p) => std::fs::read(p).map_err(|source| TreeError::Read {
                path: p.clone(),
                source,
            }),
        }
    }
}

/// Lexically normalise an absolute path ("." and ".." components).
pub fn normalise(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_added_and_paths_checked() {
        let mut t = Tree::default();
        t.bytes("/a/b/c", "x", 0o644).unwrap();
        assert!(t.contains("/a") && t.contains("/a/b"));
        assert!(t.bytes("/a/../c", "x", 0o644).is_err());
        assert!(t.bytes("rel", "x", 0o644).is_err());
    }

    #[test]
    fn resolve_follows_relative_and_absolute_links() {
        let mut t = Tree::default();
        t.symlink("/lib", "usr/lib").unwrap();
        t.bytes("/usr/lib/x86_64-linux-gnu/libc.so.6", "elf", 0o755)
            .unwrap();
        t.symlink(
            "/usr/lib/x86_64-linux-gnu/libc.so",
            "/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(
            t.resolve("/lib/x86_64-linux-gnu/libc.so").as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(t.resolve("/lib/missing"), None);
    }
}
