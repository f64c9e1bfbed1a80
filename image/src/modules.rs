//! Kernel modules: pick the wanted ones and their dependency closure out of the kernel
//! package, and write the two files basalt-init (initramfs) and machined (rootfs) read
//! through basalt-kmod:
//!
//! * `lib/modules/<kver>/modules.dep` — depmod format, restricted to the shipped modules:
//!   `kernel/fs/squashfs/squashfs.ko:` followed by the module's full transitive
//!   dependency list; loading that list from LAST to FIRST and then the module itself
//!   satisfies every symbol (the order modprobe uses).
//! * `lib/modules/<kver>/modules.basalt` — the CONTRACT with basalt-kmod: one wanted
//!   module per line, `name [optional] [param=value ...]`; `#` starts a comment. Names
//!   are module names (`-` and `_` are equivalent). `optional` means "load failure is a
//!   warning, not a boot failure". Built-in modules never appear.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a kernel module: {reason}")]
    BadModule { path: PathBuf, reason: String },
    #[error(
        "kernel module {name} is wanted but neither shipped as a .ko nor built into kernel {kver}"
    )]
    Missing { name: String, kver: String },
    #[error("module line {line:?} in the wanted list cannot be parsed")]
    BadWanted { line: String },
}

/// One line of modules.basalt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub optional: bool,
    pub params: Vec<String>,
}

impl std::str::FromStr for Wanted {
    type Err = ModuleError;
    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let mut words = line.split_whitespace();
        let bad = || ModuleError::BadWanted {
            line: line.to_owned(),
        };
        let name = words.next().ok_or_else(bad)?;
        if name.contains(['=', '/']) {
            return Err(bad());
        }
        let mut optional = false;
        let mut params = Vec::new();
        for w in words {
            if w == "optional" && params.is_empty() {
                optional = true;
            } else if w.contains('=') {
                params.push(w.to_owned());
            } else {
                return Err(bad());
            }
        }
        Ok(Wanted {
            name: canonical(name),
            optional,
            params,
        })
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if self.optional {
            f.write_str(" optional")?;
        }
        for p in &self.params {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

/// Module names treat `-` and `_` alike; the kernel reports `_`.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Parse a wanted list (the same syntax as modules.basalt).
pub fn parse_wanted(text: &str) -> Result<Vec<Wanted>, ModuleError> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::parse)
        .collect()
}

/// The kernel's modules directory (`lib/modules/<kver>` of the unpacked kernel package).
#[derive(Debug)]
pub struct KernelModules {
    pub kver: String,
    pub dir: PathBuf,
    /// canonical name → path relative to `dir` (`kernel/fs/squashfs/squashfs.ko`)
    pub modules: BTreeMap<String, String>,
    pub builtin: BTreeSet<String>,
    /// alias → module, for the crypto modules soft dependencies name by alias
    /// ("softdep pre: crc32c"), filled on first use.
    crypto_aliases: std::cell::OnceCell<BTreeMap<String, Vec<String>>>,
}

/// The closure chosen for one image.
#[derive(Debug, Default)]
pub struct ModulePlan {
    /// canonical name → (relative path, direct deps by canonical name)
    pub modules: BTreeMap<String, (String, Vec<String>)>,
    pub wanted: Vec<Wanted>,
    pub log: Vec<String>,
}

impl KernelModules {
    pub fn scan(dir: &Path) -> Result<Self, ModuleError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ModuleError::Io { path, source }
        };
        let kver = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut modules = BTreeMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(io(&d))? {
                let e = e.map_err(io(&d))?;
                let p = e.path();
                if e.file_type().map_err(io(&p))?.is_dir() {
                    stack.push(p);
                } else if let Some(name) =
                    p.file_name().and_then(|n| n.to_str()).and_then(module_stem)
                {
                    let rel = p
                        .strip_prefix(dir)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned();
                    modules.insert(canonical(name), rel);
                }
            }
        }
        let builtin_path = dir.join("modules.builtin");
        let builtin = std::fs::read_to_string(&builtin_path)
            .map_err(io(&builtin_path))?
            .lines()
            .filter_map(|l| l.rsplit('/').next().and_then(module_stem).map(canonical))
            .collect();
        Ok(KernelModules {
            kver,
            dir: dir.to_owned(),
            modules,
            builtin,
            crypto_aliases: std::cell::OnceCell::new(),
        })
    }

    fn modinfo(&self, rel: &str) -> Result<Vec<String>, ModuleError> {
        let path = self.dir.join(rel);
        let raw = std::fs::read(&path).map_err(|source| ModuleError::Io {
            path: path.clone(),
            source,
        })?;
        let data = decompress_module(rel, raw).map_err(|source| ModuleError::Io {
            path: path.clone(),
            source,
        })?;
        let bad = |reason: String| ModuleError::BadModule {
            path: path.clone(),
            reason,
        };
        let file = object::File::parse(&*data).map_err(|e| bad(e.to_string()))?;
        let modinfo = file
            .section_by_name(".modinfo")
            .ok_or_else(|| bad("no .modinfo section".into()))?;
        let bytes = modinfo.data().map_err(|e| bad(e.to_string()))?;
        Ok(bytes
            .split(|&b| b == 0)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect())
    }

    fn crypto_aliases(&self) -> Result<&BTreeMap<String, Vec<String>>, ModuleError> {
        if let Some(map) = self.crypto_aliases.get() {
            return Ok(map);
        }
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, rel) in &self.modules {
            if !(rel.starts_with("kernel/crypto/") || rel.starts_with("kernel/arch/x86/crypto/")) {
                continue;
            }
            for field in self.modinfo(rel)? {
                if let Some(alias) = field.strip_prefix("alias=") {
                    map.entry(alias.to_owned()).or_default().push(name.clone());
                }
            }
        }
        Ok(self.crypto_aliases.get_or_init(|| map))
    }

    /// A soft dependency names a module or an alias; for an alias the generic
    /// implementation is preferred, since CPU-specific ones refuse to load on CPUs
    /// without the instructions (ENODEV) and would fail the boot.
    fn resolve_soft(&self, name: &str) -> Result<Option<String>, ModuleError> {
        if self.modules.contains_key(name) || self.builtin.contains(name) {
            return Ok(Some(name.to_owned()));
        }
        let aliases = self.crypto_aliases()?;
        let Some(providers) = aliases
            .get(name)
            .or_else(|| aliases.get(&format!("crypto-{name}")))
        else {
            return Ok(None);
        };
        Ok(providers
            .iter()
            .find(|p| p.ends_with("_generic"))
            .or_else(|| providers.first())
            .cloned())
    }

    /// The `.modinfo` of a module: its `depends=` and `softdep=pre:` names.
    fn deps(&self, rel: &str) -> Result<Vec<String>, ModuleError> {
        let mut deps = Vec::new();
        for field in self.modinfo(rel)? {
            if let Some(d) = field.strip_prefix("depends=") {
                deps.extend(d.split(',').filter(|s| !s.is_empty()).map(canonical));
            } else if let Some(s) = field.strip_prefix("softdep=") {
                // "pre: a b post: c" — only `pre:` modules must be there first.
                let mut pre = false;
                for w in s.split_whitespace() {
                    match w {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        w if pre => {
                            if let Some(m) = self.resolve_soft(&canonical(w))? {
                                deps.push(m);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        deps.sort();
        deps.dedup();
        Ok(deps)
    }

    pub fn plan(&self, wanted: &[Wanted]) -> Result<ModulePlan, ModuleError> {
        let mut plan = ModulePlan::default();
        let mut queue: Vec<(String, bool)> = Vec::new();
        for w in wanted {
            if self.builtin.contains(&w.name) {
                plan.log.push(format!(
                    "module {} is built into {}; not shipped",
                    w.name, self.kver
                ));
            } else if self.modules.contains_key(&w.name) {
                plan.wanted.push(w.clone());
                queue.push((w.name.clone(), w.optional));
            } else if w.optional {
                plan.log.push(format!(
                    "optional module {} does not exist in {}; skipped",
                    w.name, self.kver
                ));
            } else {
                return Err(ModuleError::Missing {
                    name: w.name.clone(),
                    kver: self.kver.clone(),
                });
            }
        }
        while let Some((name, optional)) = queue.pop() {
            if plan.modules.contains_key(&name) || self.builtin.contains(&name) {
                continue;
            }
            let Some(rel) = self.modules.get(&name) else {
                // A soft dependency may be built in or absent; a hard one cannot.
                if optional {
                    continue;
                }
                return Err(ModuleError::Missing {
                    name,
                    kver: self.kver.clone(),
                });
            };
            let deps: Vec<String> = self
                .deps(rel)?
                .into_iter()
                .filter(|d| !self.builtin.contains(d) && self.modules.contains_key(d))
                .collect();
            for d in &deps {
                queue.push((d.clone(), false));
            }
            plan.modules.insert(name, (rel.clone(), deps));
        }
        Ok(plan)
    }
}

fn module_stem(file: &str) -> Option<&str> {
    file.strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))
}

/// Plain `.ko` bytes, so basalt-init can finit_module without a decompressor.
pub fn decompress_module(rel: &str, raw: Vec<u8>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    if rel.ends_with(".xz") {
        xz2::read::XzDecoder::new(&raw[..]).read_to_end(&mut out)?;
    } else if rel.ends_with(".zst") {
        zstd::stream::read::Decoder::new(&raw[..])?.read_to_end(&mut out)?;
    } else if rel.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out)?;
    } else {
        return Ok(raw);
    }
    Ok(out)
}

/// Path a module is shipped under: always plain `.ko`.
pub fn shipped_path(rel: &str) -> String {
    match module_stem(rel) {
        Some(stem) if !rel.ends_with(".ko") => format!("{stem}.ko"),
        _ => rel.to_owned(),
    }
}

impl ModulePlan {
    /// Transitive dependencies of `name`, ordered so that reading from the end loads
    /// dependencies before their users (depmod's convention).
    fn transitive(&self, name: &str) -> Vec<String> {
        fn visit(
            plan: &ModulePlan,
            name: &str,
            seen: &mut BTreeSet<String>,
            order: &mut Vec<String>,
        ) {
            let Some((_, deps)) = plan.modules.get(name) else {
                return;
            };
            for d in deps {
                if seen.insert(d.clone()) {
                    visit(plan, d, seen, order);
                    order.push(d.clone());
                }
            }
        }
        let mut seen = BTreeSet::new();
        let mut order = Vec::new(); // deps-first
        visit(self, name, &mut seen, &mut order);
        order.reverse();
        order
    }

    pub fn modules_dep(&self) -> String {
        let mut out = String::new();
        for (name, (rel, _)) in &self.modules {
            out.push_str(&shipped_path(rel));
            out.push(':');
            for d in self.transitive(name) {
                if let Some((drel, _)) = self.modules.get(&d) {
                    out.push(' ');
                    out.push_str(&shipped_path(drel));
                }
            }
            out.push('\n');
        }
        out
    }

    pub fn modules_basalt(&self) -> String {
        let mut out = String::from(
            "# Modules loaded at boot (with their modules.dep closure), in this order: the\n\
             # initramfs' by basalt-init, the rootfs' by machined in the background.\n\
             # Format: name [optional] [param=value ...]\n",
        );
        for w in &self.wanted {
            out.push_str(&w.to_string());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_lines_parse_and_print_back() {
        let w = parse_wanted("# c\nsquashfs\nip_vs optional\nnf-conntrack hashsize=1024 # x\n")
            .unwrap();
        assert_eq!(w.len(), 3);
        assert!(w[1].optional);
        assert_eq!(w[2].name, "nf_conntrack");
        assert_eq!(w[2].to_string(), "nf_conntrack hashsize=1024");
        assert!(parse_wanted("a b").is_err());
        assert!(parse_wanted("a=1").is_err());
    }

    #[test]
    fn modules_dep_lists_transitive_deps_deepest_last() {
        let mut plan = ModulePlan::default();
        plan.modules
            .insert("a".into(), ("kernel/a.ko".into(), vec!["b".into()]));
        plan.modules
            .insert("b".into(), ("kernel/b.ko.xz".into(), vec!["c".into()]));
        plan.modules
            .insert("c".into(), ("kernel/c.ko".into(), vec![]));
        let dep = plan.modules_dep();
        assert!(
            dep.contains("kernel/a.ko: kernel/b.ko kernel/c.ko\n"),
            "{dep}"
        );
        assert!(dep.contains("kernel/b.ko: kernel/c.ko\n"), "{dep}");
        assert!(dep.contains("kernel/c.ko:\n"), "{dep}");
    }
}
