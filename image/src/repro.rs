//! `basalt-image repro-check`: build twice — the second time from a copy of the
//! workspace's git-tracked files in another directory — and compare SHA256SUMS. On a
//! difference, name the artifacts and the first file inside them that differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::build::BuildArgs;
use crate::fetch::Cache;
use crate::lock::Lock;

fn sums(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("SHA256SUMS"))
        .with_context(|| format!("reading {}/SHA256SUMS", dir.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            l.split_once("  ")
                .map(|(h, n)| (n.to_owned(), h.to_owned()))
        })
        .collect())
}

/// Build products and caches that never belong to a workspace copy.
const NOT_SOURCES: &[&str] = &[".git", "target", "out", ".cache"];

/// The workspace's source files, relative: git-tracked files when it is a git checkout,
/// otherwise every file outside [`NOT_SOURCES`].
fn source_files(workspace: &Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(workspace)
        .output();
    if let Some(out) = out.ok().filter(|o| o.status.success()) {
        return Ok(out
            .stdout
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect());
    }
    Ok(files_under(workspace)
        .into_iter()
        .filter(|(rel, p)| {
            let top = rel.split('/').next().unwrap_or("");
            !NOT_SOURCES.contains(&top) && std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir())
        })
        .map(|(rel, _)| rel)
        .collect())
}

/// Copy the workspace's sources (as they are in the working tree) to `dest`.
fn copy_tracked(workspace: &Path, dest: &Path) -> anyhow::Result<()> {
    for rel in source_files(workspace)? {
        let src = workspace.join(&rel);
        let dst = dest.join(&rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let meta = match std::fs::symlink_metadata(&src) {
            Ok(m) => m,
            Err(_) => continue, // deleted in the working tree
        };
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    Ok(())
}

fn files_under(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.insert(rel, p);
        }
    }
    out
}

/// First path whose presence, type, target or content differs between two trees.
pub fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let fa = files_under(a);
    let fb = files_under(b);
    let names: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    for n in names {
        match (fa.get(n), fb.get(n)) {
            (Some(pa), Some(pb)) => {
                let (ma, mb) = (
                    std::fs::symlink_metadata(pa).ok()?,
                    std::fs::symlink_metadata(pb).ok()?,
                );
                if ma.file_type() != mb.file_type() {
                    return Some(format!("{n}: file type differs"));
                }
                if ma.file_type().is_symlink() {
                    if std::fs::read_link(pa).ok() != std::fs::read_link(pb).ok() {
                        return Some(format!("{n}: symlink target differs"));
                    }
                } else if ma.is_file() && std::fs::read(pa).ok() != std::fs::read(pb).ok() {
                    return Some(format!("{n}: content differs"));
                }
            }
            (Some(_), None) => return Some(format!("{n}: only in the first build")),
            (None, Some(_)) => return Some(format!("{n}: only in the second build")),
            (None, None) => {}
        }
    }
    None
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Unpack an artifact into a directory so two builds can be compared file by file.
fn unpack(artifact: &Path, dest: &Path) -> anyhow::Result<bool> {
    let name = artifact
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::create_dir_all(dest)?;
    if name == "rootfs.sqsh" {
        run(Command::new("unsquashfs")
            .arg("-q")
            .arg("-n")
            .arg("-f")
            .arg("-d")
            .arg(dest.join("root"))
            .arg(artifact))?;
        return Ok(true);
    }
    if name == "initramfs.zst" {
        let raw = zstd::stream::decode_all(std::fs::File::open(artifact)?)?;
        let cpio = dest.join("initramfs.cpio");
        std::fs::write(&cpio, raw)?;
        let root = dest.join("root");
        std::fs::create_dir_all(&root)?;
        run(Command::new("cpio")
            .args(["-idm", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&cpio)
            .current_dir(&root))?;
        std::fs::remove_file(&cpio)?;
        return Ok(true);
    }
    Ok(false)
}

fn explain(a: &Path, b: &Path, name: &str) -> anyhow::Result<()> {
    let (fa, fb) = (a.join(name), b.join(name));
    if which("diffoscope") {
        let out = Command::new("diffoscope")
            .arg("--text")
            .arg("-")
            .arg(&fa)
            .arg(&fb)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("{}", text.lines().take(60).collect::<Vec<_>>().join("\n"));
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let (ua, ub) = (tmp.path().join("a"), tmp.path().join("b"));
    if unpack(&fa, &ua)? && unpack(&fb, &ub)? {
        match first_difference(&ua, &ub) {
            Some(d) => eprintln!("  first difference inside {name}: {d}"),
            None => eprintln!("  {name}: contents are identical, only metadata or layout differs"),
        }
    } else {
        let (da, db) = (std::fs::read(&fa)?, std::fs::read(&fb)?);
        let at = da
            .iter()
            .zip(&db)
            .position(|(x, y)| x != y)
            .unwrap_or(da.len().min(db.len()));
        eprintln!(
            "  {name}: first differing byte at offset {at} (sizes {} and {})",
            da.len(),
            db.len()
        );
    }
    Ok(())
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The first build goes to `--output` (so tests can use it afterwards), the second to
/// the temporary copy; when they differ the second is kept as `<output>/repro-second`.
pub fn check(workspace: &Path, cache: &Cache, lock: &Lock, args: &BuildArgs) -> anyhow::Result<()> {
    let first = args.output.clone();
    let kept = first.join("repro-second");
    if kept.exists() {
        std::fs::remove_dir_all(&kept).with_context(|| format!("removing {}", kept.display()))?;
    }
    eprintln!(
        "repro-check: first build in {} → {}",
        workspace.display(),
        first.display()
    );
    crate::build::build(
        workspace,
        cache,
        lock,
        &BuildArgs {
            output: first.clone(),
            ..args.clone()
        },
    )?;

    let copy = tempfile::Builder::new()
        .prefix("basalt-repro-")
        .tempdir()
        .context("creating the second workspace")?;
    let ws2 = copy.path().join("elsewhere/basalt");
    copy_tracked(workspace, &ws2)?;
    let second = copy.path().join("out");
    eprintln!(
        "repro-check: second build in {} → {}",
        ws2.display(),
        second.display()
    );
    let lock2 = Lock::load(&ws2.join("image/inputs.lock"))?;
    crate::build::build(
        &ws2,
        cache,
        &lock2,
        &BuildArgs {
            output: second.clone(),
            ..args.clone()
        },
    )?;

    let (sa, sb) = (sums(&first)?, sums(&second)?);
    let differing: Vec<&String> = sa
        .keys()
        .chain(sb.keys())
        .filter(|n| sa.get(*n) != sb.get(*n))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if differing.is_empty() {
        eprintln!(
            "repro-check: identical — {} artifacts, SHA256SUMS match",
            sa.len()
        );
        return Ok(());
    }
    for n in &differing {
        eprintln!("repro-check: {n} differs");
    }
    // The rootfs feeds everything else; explain the most upstream difference first.
    let order = ["rootfs.sqsh", "initramfs.zst"];
    let first_diff = order
        .iter()
        .find(|o| differing.iter().any(|d| d == *o))
        .map(|s| (*s).to_owned())
        .unwrap_or_else(|| differing[0].clone());
    explain(&first, &second, &first_diff)?;
    copy_dir(&second, &kept)?;
    bail!(
        "the two builds differ in {} (second build kept in {})",
        differing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        kept.display()
    )
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let p = e?.path();
        if let Some(name) = p.file_name().filter(|_| p.is_file()) {
            std::fs::copy(&p, to.join(name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_outside_git_skip_build_products() {
        let ws = tempfile::tempdir().unwrap();
        for f in [
            "Cargo.toml",
            "image/src/main.rs",
            "target/debug/x",
            "out/rootfs.sqsh",
        ] {
            let p = ws.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        let mut files = source_files(ws.path()).unwrap();
        files.sort();
        assert_eq!(files, ["Cargo.toml", "image/src/main.rs"]);
    }

    #[test]
    fn first_difference_names_the_path() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir_all(d.join("usr/bin")).unwrap();
            std::fs::write(d.join("usr/bin/x"), "same").unwrap();
        }
        assert_eq!(first_difference(a.path(), b.path()), None);
        std::fs::write(b.path().join("usr/bin/y"), "new").unwrap();
        std::fs::write(a.path().join("usr/bin/x"), "other").unwrap();
        assert_eq!(
            first_difference(a.path(), b.path()).unwrap(),
            "usr/bin/x: content differs"
        );
    }
}
