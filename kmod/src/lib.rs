//! Kernel modules: the contract with the image builder is two files under
//! `lib/modules/<kver>/`:
//!
//! * `modules.dep` — standard depmod format, `path.ko: dep.ko dep2.ko`, paths relative
//!   to the directory, plain (uncompressed) `.ko` files;
//! * `modules.basalt` — one wanted module per line: `name [optional] [param=value …]`,
//!   `#` starts a comment. Names use the file stem; `-` and `_` are the same.
//!
//! Parsing and planning (closure, dependencies first) are pure; [`load`] and [`finit`]
//! are the thin executor around finit_module(2). basalt-init (the initramfs' modules)
//! and machined (the rootfs' node modules and `machine.kernel.modules`) share this
//! crate so the contract with the image builder is written once.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// A module name normalised the way the kernel does (`-` → `_`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleName(String);

impl ModuleName {
    pub fn new(raw: &str) -> ModuleName {
        ModuleName(raw.replace('-', "_"))
    }

    /// The module name of a `.ko` path (`kernel/fs/squashfs/squashfs.ko` → `squashfs`).
    pub fn from_path(path: &str) -> ModuleName {
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split('.').next().unwrap_or(file);
        ModuleName::new(stem)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ModuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{file} line {line}: {problem}")]
    Line {
        file: &'static str,
        line: usize,
        problem: String,
    },
}

/// One module's entry in modules.dep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    pub path: String,
    pub deps: Vec<ModuleName>,
}

/// modules.dep, keyed by module name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModulesDep {
    entries: BTreeMap<ModuleName, DepEntry>,
}

impl ModulesDep {
    pub fn parse(text: &str) -> Result<ModulesDep, ParseError> {
        let mut entries = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (path, deps) = line.split_once(':').ok_or_else(|| ParseError::Line {
                file: "modules.dep",
                line: i + 1,
                problem: format!("expected `module.ko: deps…`, got {line:?}"),
            })?;
            let path = path.trim().to_owned();
            let deps = deps.split_whitespace().map(ModuleName::from_path).collect();
            entries.insert(ModuleName::from_path(&path), DepEntry { path, deps });
        }
        Ok(ModulesDep { entries })
    }

    pub fn get(&self, name: &ModuleName) -> Option<&DepEntry> {
        self.entries.get(name)
    }
}

/// One line of modules.basalt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: ModuleName,
    pub optional: bool,
    pub params: Vec<String>,
}

pub fn parse_wanted(text: &str) -> Result<Vec<Wanted>, ParseError> {
    let mut wanted = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        if name.contains('=') || name.contains('/') {
            return Err(ParseError::Line {
                file: "modules.basalt",
                line: i + 1,
                problem: format!("{name:?} is not a module name"),
            });
        }
        let mut w = Wanted {
            name: ModuleName::new(name),
            optional: false,
            params: Vec::new(),
        };
        for word in words {
            if word == "optional" {
                w.optional = true;
            } else if word.split_once('=').is_some_and(|(k, _)| !k.is_empty()) {
                w.params.push(word.to_owned());
            } else {
                return Err(ParseError::Line {
                    file: "modules.basalt",
                    line: i + 1,
                    problem: format!("{word:?} after {name}: expected `optional` or `param=value`"),
                });
            }
        }
        wanted.push(w);
    }
    Ok(wanted)
}

/// One finit_module call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadStep {
    pub name: ModuleName,
    /// Relative to lib/modules/<kver>/.
    pub path: String,
    pub params: String,
    /// Only optional modules need it: a failure to load it is a warning.
    pub optional: bool,
}

/// What to load, in order, and what was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<LoadStep>,
    /// Wanted modules the kernel has built in (nothing to load).
    pub builtin: Vec<ModuleName>,
    /// Optional modules the image does not carry.
    pub missing_optional: Vec<ModuleName>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("required kernel module {0} is not in modules.dep and not built into the kernel")]
    MissingRequired(ModuleName),
    #[error("kernel module {module} depends on {dependency}, which modules.dep does not list")]
    MissingDependency {
        module: ModuleName,
        dependency: ModuleName,
    },
    #[error("modules.dep has a dependency cycle through {0}")]
    Cycle(ModuleName),
}

/// The load order: for each wanted module its dependency closure, dependencies first,
/// every module once. Parameters apply to the wanted module only.
pub fn plan(
    dep: &ModulesDep,
    wanted: &[Wanted],
    is_builtin: impl Fn(&ModuleName) -> bool,
) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    let mut done: HashSet<ModuleName> = HashSet::new();
    for w in wanted {
        if dep.get(&w.name).is_none() {
            if is_builtin(&w.name) {
                plan.builtin.push(w.name.clone());
            } else if w.optional {
                plan.missing_optional.push(w.name.clone());
            } else {
                return Err(PlanError::MissingRequired(w.name.clone()));
            }
            continue;
        }
        let mut visiting = Vec::new();
        let params = w.params.join(" ");
        let mut ctx = Visit {
            dep,
            done: &mut done,
            visiting: &mut visiting,
            steps: &mut plan.steps,
            optional: w.optional,
        };
        ctx.visit(&w.name, &params)?;
    }
    Ok(plan)
}

struct Visit<'a> {
    dep: &'a ModulesDep,
    done: &'a mut HashSet<ModuleName>,
    visiting: &'a mut Vec<ModuleName>,
    steps: &'a mut Vec<LoadStep>,
    optional: bool,
}

impl Visit<'_> {
    fn visit(&mut self, name: &ModuleName, params: &str) -> Result<(), PlanError> {
        if self.done.contains(name) {
            return Ok(());
        }
        if self.visiting.contains(name) {
            return Err(PlanError::Cycle(name.clone()));
        }
        let Some(entry) = self.dep.get(name) else {
            return Err(PlanError::MissingRequired(name.clone()));
        };
        self.visiting.push(name.clone());
        for d in &entry.deps {
            if self.dep.get(d).is_none() {
                return Err(PlanError::MissingDependency {
                    module: name.clone(),
                    dependency: d.clone(),
                });
            }
            self.visit(d, "")?;
        }
        self.visiting.pop();
        self.done.insert(name.clone());
        self.steps.push(LoadStep {
            name: name.clone(),
            path: entry.path.clone(),
            params: params.to_owned(),
            optional: self.optional,
        });
        Ok(())
    }
}

/// Names listed in modules.builtin (paths like modules.dep's, one per line).
pub fn parse_builtin(text: &str) -> HashSet<ModuleName> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(ModuleName::from_path)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(#[from] ParseError),
    #[error("{dir}: {source}")]
    Plan { dir: PathBuf, source: PlanError },
    #[error("parameters of {module} contain a NUL byte")]
    BadParams { module: ModuleName },
    #[error("loading kernel module {module} from {path}: {source}{}", load_hint(*source))]
    Load {
        module: ModuleName,
        path: PathBuf,
        source: nix::Error,
    },
}

/// finit_module's ENOENT does not mean the file is missing (it was open): the module's
/// init asked for another module that is not loaded — usually a soft dependency.
fn load_hint(e: nix::Error) -> &'static str {
    if e == nix::Error::ENOENT {
        " (the module requested another module at init that is not loaded, typically a \
         soft dependency such as crc32c_generic for libcrc32c: modules.dep must list it \
         as a dependency or modules.basalt before it)"
    } else {
        ""
    }
}

/// The three files of one `lib/modules/<kver>` directory, read and parsed.
#[derive(Debug, Clone, Default)]
pub struct ModuleDir {
    pub dir: PathBuf,
    /// modules.basalt; empty when the directory has none.
    pub wanted: Vec<Wanted>,
    pub dep: ModulesDep,
    pub builtin: HashSet<ModuleName>,
}

impl ModuleDir {
    /// Reads `dir`. Missing files mean "nothing": an image may carry no modules at one
    /// of the two stages.
    pub fn read(dir: &Path) -> Result<ModuleDir, LoadError> {
        let read = |name: &str| -> Result<String, LoadError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(t) => Ok(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(source) => Err(LoadError::Read { path, source }),
            }
        };
        Ok(ModuleDir {
            dir: dir.to_path_buf(),
            wanted: parse_wanted(&read("modules.basalt")?)?,
            dep: ModulesDep::parse(&read("modules.dep")?)?,
            builtin: parse_builtin(&read("modules.builtin")?),
        })
    }

    /// Built into the kernel, or already loaded (`/sys/module/<name>` exists).
    pub fn is_builtin(&self, name: &ModuleName) -> bool {
        self.builtin.contains(name) || Path::new("/sys/module").join(name.as_str()).exists()
    }

    /// [`plan`] against this directory.
    pub fn plan(&self, wanted: &[Wanted]) -> Result<Plan, LoadError> {
        plan(&self.dep, wanted, |m| self.is_builtin(m)).map_err(|source| LoadError::Plan {
            dir: self.dir.clone(),
            source,
        })
    }
}

/// What [`load`] did, for the log.
#[derive(Debug, Default)]
pub struct Outcome {
    pub loaded: Vec<(ModuleName, std::time::Duration)>,
    pub already: Vec<ModuleName>,
    pub builtin: Vec<ModuleName>,
    pub missing_optional: Vec<ModuleName>,
    /// Optional modules (or their dependencies) that failed to load, with the reason.
    pub failed_optional: Vec<LoadError>,
}

/// Loads what `dir/modules.basalt` asks for. A directory without modules.basalt wants
/// nothing (an image may carry no modules at one of the two stages).
pub fn load(dir: &Path) -> Result<Outcome, LoadError> {
    let md = ModuleDir::read(dir)?;
    let plan = md.plan(&md.wanted)?;
    let mut outcome = Outcome {
        builtin: plan.builtin,
        missing_optional: plan.missing_optional,
        ..Outcome::default()
    };
    for step in plan.steps {
        let path = dir.join(&step.path);
        let start = std::time::Instant::now();
        match finit(&step.name, &path, &step.params) {
            Ok(true) => outcome.loaded.push((step.name, start.elapsed())),
            Ok(false) => outcome.already.push(step.name),
            Err(e) if step.optional => outcome.failed_optional.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(outcome)
}

/// finit_module(2); Ok(false) when the kernel already has the module.
pub fn finit(name: &ModuleName, path: &Path, params: &str) -> Result<bool, LoadError> {
    let file = std::fs::File::open(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let params = CString::new(params).map_err(|_| LoadError::BadParams {
        module: name.clone(),
    })?;
    match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) => Ok(true),
        Err(nix::Error::EEXIST) => Ok(false),
        Err(source) => Err(LoadError::Load {
            module: name.clone(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/fs/squashfs/squashfs.ko:
kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
";

    fn names(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn names_normalise_dashes_and_extensions() {
        assert_eq!(ModuleName::new("br-netfilter").as_str(), "br_netfilter");
        assert_eq!(
            ModuleName::from_path("kernel/drivers/net/virtio-net.ko").as_str(),
            "virtio_net"
        );
        assert_eq!(ModuleName::from_path("a/b/zstd.ko.xz").as_str(), "zstd");
    }

    #[test]
    fn closure_loads_dependencies_first_and_once() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let wanted = parse_wanted("virtio_pci\nvirtio-blk\nbr_netfilter\n").unwrap();
        let plan = plan(&dep, &wanted, |_| false).unwrap();
        assert_eq!(
            names(&plan),
            [
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "llc",
                "stp",
                "bridge",
                "br_netfilter",
            ]
        );
        assert_eq!(plan.steps[5].path, "kernel/drivers/block/virtio_blk.ko");
    }

    #[test]
    fn every_module_comes_after_its_dependencies() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let wanted = parse_wanted("br_netfilter\nvirtio_blk\nvirtio_pci\nsquashfs").unwrap();
        let plan = plan(&dep, &wanted, |_| false).unwrap();
        for (i, step) in plan.steps.iter().enumerate() {
            for d in &dep.get(&step.name).unwrap().deps {
                let at = plan.steps.iter().position(|s| &s.name == d).unwrap();
                assert!(at < i, "{d} must load before {}", step.name);
            }
        }
        assert_eq!(plan.steps.len(), 11);
    }

    #[test]
    fn params_go_to_the_wanted_module_only() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let wanted = parse_wanted("bridge  # comment\nbr_netfilter foo=1 bar=x,y\n").unwrap();
        let plan = plan(&dep, &wanted, |_| false).unwrap();
        let brnf = plan
            .steps
            .iter()
            .find(|s| s.name.as_str() == "br_netfilter")
            .unwrap();
        assert_eq!(brnf.params, "foo=1 bar=x,y");
        assert!(
            plan.steps
                .iter()
                .filter(|s| s.name.as_str() != "br_netfilter")
                .all(|s| s.params.is_empty())
        );
    }

    #[test]
    fn missing_required_is_an_error_missing_optional_is_reported() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let err = plan(&dep, &parse_wanted("nvme").unwrap(), |_| false).unwrap_err();
        assert_eq!(err, PlanError::MissingRequired(ModuleName::new("nvme")));
        assert!(err.to_string().contains("required kernel module nvme"));
        let plan = plan(
            &dep,
            &parse_wanted("nvme optional\nsquashfs").unwrap(),
            |_| false,
        )
        .unwrap();
        assert_eq!(plan.missing_optional, [ModuleName::new("nvme")]);
        assert_eq!(names(&plan), ["squashfs"]);
    }

    #[test]
    fn builtin_modules_need_no_loading() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let plan = plan(&dep, &parse_wanted("loop\nsquashfs").unwrap(), |m| {
            m.as_str() == "loop"
        })
        .unwrap();
        assert_eq!(plan.builtin, [ModuleName::new("loop")]);
        assert_eq!(names(&plan), ["squashfs"]);
        let builtin = parse_builtin("kernel/drivers/block/loop.ko\nkernel/fs/ext4/ext4.ko\n");
        assert!(builtin.contains(&ModuleName::new("ext4")));
    }

    #[test]
    fn steps_pulled_in_by_optional_modules_are_optional() {
        let dep = ModulesDep::parse(DEP).unwrap();
        let wanted = parse_wanted("stp\nbr_netfilter optional").unwrap();
        let plan = plan(&dep, &wanted, |_| false).unwrap();
        let optional: Vec<_> = plan
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.optional))
            .collect();
        assert_eq!(
            optional,
            [
                ("llc", false),
                ("stp", false),
                ("bridge", true),
                ("br_netfilter", true)
            ]
        );
    }

    #[test]
    fn dangling_dependency_and_cycles_are_errors() {
        let dep = ModulesDep::parse("a.ko: b.ko\n").unwrap();
        let err = plan(&dep, &parse_wanted("a").unwrap(), |_| false).unwrap_err();
        assert!(matches!(err, PlanError::MissingDependency { .. }), "{err}");
        let dep = ModulesDep::parse("a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        let err = plan(&dep, &parse_wanted("a").unwrap(), |_| false).unwrap_err();
        assert!(matches!(err, PlanError::Cycle(_)), "{err}");
    }

    #[test]
    fn modules_basalt_syntax_errors_name_the_line() {
        let err = parse_wanted("squashfs\nloop maybe\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "modules.basalt line 2: \"maybe\" after loop: expected `optional` or `param=value`"
        );
        assert!(parse_wanted("=x\n").is_err());
        let w = parse_wanted("# only comments\n\n  virtio_net optional napi_tx=1 # x\n").unwrap();
        assert_eq!(
            w,
            [Wanted {
                name: ModuleName::new("virtio_net"),
                optional: true,
                params: vec!["napi_tx=1".into()]
            }]
        );
    }

    #[test]
    fn enoent_from_finit_module_explains_soft_dependencies() {
        let e = LoadError::Load {
            module: ModuleName::new("libcrc32c"),
            path: PathBuf::from("/lib/modules/k/kernel/lib/libcrc32c.ko"),
            source: nix::Error::ENOENT,
        };
        assert!(e.to_string().contains("soft dependency"), "{e}");
        let e = LoadError::Load {
            module: ModuleName::new("x"),
            path: PathBuf::from("x.ko"),
            source: nix::Error::EINVAL,
        };
        assert_eq!(
            e.to_string(),
            "loading kernel module x from x.ko: EINVAL: Invalid argument"
        );
    }

    #[test]
    fn a_module_dir_reads_its_three_files_and_plans_against_them() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("modules.dep"), DEP).unwrap();
        std::fs::write(
            d.path().join("modules.basalt"),
            "virtio_blk\nabsent_nic optional\n",
        )
        .unwrap();
        std::fs::write(d.path().join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let md = ModuleDir::read(d.path()).unwrap();
        assert_eq!(md.wanted.len(), 2);
        let plan = md.plan(&md.wanted).unwrap();
        assert_eq!(names(&plan), ["virtio_ring", "virtio", "virtio_blk"]);
        assert_eq!(plan.missing_optional, [ModuleName::new("absent_nic")]);
        let ext4 = md.plan(&parse_wanted("ext4").unwrap()).unwrap();
        assert_eq!(ext4.builtin, [ModuleName::new("ext4")]);
        let err = md.plan(&parse_wanted("absent_vpn").unwrap()).unwrap_err();
        assert!(
            err.to_string().ends_with("required kernel module absent_vpn is not in modules.dep and not built into the kernel"),
            "{err}"
        );
        // A stage without modules wants nothing.
        let empty = ModuleDir::read(&d.path().join("none")).unwrap();
        assert!(empty.wanted.is_empty());
        assert!(load(&d.path().join("none")).unwrap().loaded.is_empty());
    }

    #[test]
    fn modules_dep_syntax_error_names_the_line() {
        let err = ModulesDep::parse("a.ko:\nbroken line\n").unwrap_err();
        assert!(err.to_string().starts_with("modules.dep line 2:"), "{err}");
    }
}
