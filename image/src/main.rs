//! basalt-image is the reproducible image builder: it resolves and pins Debian inputs
//! (`image/inputs.lock`), assembles the initramfs with its squashfs rootfs, and writes
//! the UKI, the raw disk image, the PXE bundle, SHA256SUMS and an SBOM.

use std::path::PathBuf;

use anyhow::Context;
use basalt_image::apt::Index;
use basalt_image::fetch::Cache;
use basalt_image::lock::{Inputs, Lock, resolve};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(version, about = "Build the reproducible Basalt node image")]
struct Cli {
    /// Workspace root (holds image/inputs.toml, image/inputs.lock, Cargo.lock).
    #[arg(long, global = true, default_value_os_t = default_workspace())]
    workspace: PathBuf,
    /// Content-addressed download cache [default: $XDG_CACHE_HOME/basalt or ~/.cache/basalt].
    #[arg(long, global = true, env = "BASALT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Resolve image/inputs.toml against /var/lib/apt/lists and write image/inputs.lock.
    Lock {
        #[arg(long, default_value = "/var/lib/apt/lists")]
        apt_lists: PathBuf,
    },
    /// Download every locked .deb into the cache and verify its sha256.
    Fetch,
    /// Build all artifacts.
    Build(basalt_image::build::BuildArgs),
    /// Build twice (the second time from a copy of the workspace elsewhere) and compare.
    ReproCheck(basalt_image::build::BuildArgs),
}

fn default_workspace() -> PathBuf {
    // The binary normally runs from the workspace (cargo run); fall back to the
    // directory this crate was compiled in.
    let cwd = std::env::current_dir().unwrap_or_default();
    if cwd.join("image/inputs.toml").is_file() {
        return cwd;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or(cwd)
}

fn main() {
    if let Err(err) = run() {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cache = Cache {
        root: cli.cache_dir.clone().unwrap_or_else(Cache::default_root),
    };
    let inputs_path = cli.workspace.join("image/inputs.toml");
    let lock_path = cli.workspace.join("image/inputs.lock");
    match cli.command {
        Cmd::Lock { apt_lists } => {
            let inputs = Inputs::load(&inputs_path)?;
            let index = Index::load_dir(&apt_lists, &inputs.architecture)?;
            let (lock, log) = resolve(&inputs, &index)?;
            for line in &log.lines {
                eprintln!("{line}");
            }
            lock.write(&lock_path)?;
            eprintln!(
                "wrote {} ({} packages)",
                lock_path.display(),
                lock.packages.len()
            );
        }
        Cmd::Fetch => {
            let lock = Lock::load(&lock_path)?;
            fetch_all(&cache, &lock)?;
        }
        Cmd::Build(args) => {
            let lock = Lock::load(&lock_path)?;
            fetch_all(&cache, &lock)?;
            basalt_image::build::build(&cli.workspace, &cache, &lock, &args)
                .context("building the image")?;
        }
        Cmd::ReproCheck(args) => {
            let lock = Lock::load(&lock_path)?;
            fetch_all(&cache, &lock)?;
            basalt_image::repro::check(&cli.workspace, &cache, &lock, &args)?;
        }
    }
    Ok(())
}

fn fetch_all(cache: &Cache, lock: &Lock) -> anyhow::Result<()> {
    let missing: Vec<_> = lock.packages.iter().filter(|p| !cache.has(p)).collect();
    let total: u64 = lock.packages.iter().map(|p| p.size).sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg:30} [{bar:30}] {bytes}/{total_bytes} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    if missing.is_empty() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    for pkg in &lock.packages {
        bar.set_message(pkg.name.clone());
        cache.ensure(pkg)?;
        bar.inc(pkg.size);
    }
    bar.finish_and_clear();
    if !missing.is_empty() {
        eprintln!(
            "fetched {} packages into {}",
            missing.len(),
            cache.root.join("debs").display()
        );
    }
    Ok(())
}
