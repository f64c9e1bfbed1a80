//! `basaltctl lab create|destroy|list|console`: QEMU labs on this machine. The planning
//! and the QEMU machinery live in the library (`basaltctl::lab`), shared with the
//! end-to-end tests; this module turns arguments into calls and prints.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use basaltctl::lab::plan::{self, DiskSize, LabName, LabSpec, PlanError};
use basaltctl::lab::qemu::free_port;
use basaltctl::lab::run::{self, NodeBoot, Progress, RunError};
use basaltctl::lab::state::{self, LabRecord, Layout, NodePorts, NodeRecord};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{CmdResult, Failure, InvalidInput};
use crate::output::{self, OutputFormat};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Boot a lab from a built image and wait until its node answers.
    Create(Box<CreateArgs>),
    /// Stop a lab's VMs and remove its state directory.
    Destroy(DestroyArgs),
    /// List the labs under the labs directory.
    List(ListArgs),
    /// Show where a lab's serial console goes, print its end or follow it.
    Console(ConsoleArgs),
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The lab's name (also its directory under ~/.basalt/labs).
    #[arg(long, default_value = "lab")]
    pub name: LabName,
    /// The lab's state directory (default: $BASALT_LABS_DIR/NAME or ~/.basalt/labs/NAME).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub lab: NameArgs,
    /// The directory `basalt-image build -o DIR` wrote.
    #[arg(long, value_name = "DIR", default_value = "out")]
    pub image_dir: PathBuf,
    /// Control-plane nodes (only 1 for now).
    #[arg(long, default_value_t = 1)]
    pub controlplanes: u32,
    /// Worker nodes (only 0 for now).
    #[arg(long, default_value_t = 0)]
    pub workers: u32,
    /// Memory per node, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    pub memory: u32,
    /// Virtual CPUs per node.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Each node's disk (the raw image grown to this size).
    #[arg(long, value_name = "SIZE", default_value = "4G")]
    pub disk_size: DiskSize,
    /// Boot the kernel and initramfs directly (the PXE bundle) instead of the disk image.
    #[arg(long)]
    pub pxe: bool,
    /// With --pxe: attach no disk; STATE lives in memory and the config does not survive
    /// a reboot of the VM.
    #[arg(long)]
    pub no_disk: bool,
    /// How long to wait for the node to become ready, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub lab: NameArgs,
    /// Stop the VMs but keep the state directory (configs, disks, console logs).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// How to print the result.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub lab: NameArgs,
    /// The node whose console to show (default: the lab's first node).
    #[arg(long)]
    pub node: Option<String>,
    /// Print the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Print the last lines, then keep printing what the node writes until it stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

pub fn run(command: LabCommand) -> CmdResult {
    match command {
        LabCommand::Create(args) => create(*args),
        LabCommand::Destroy(args) => destroy(args),
        LabCommand::List(args) => list(args),
        LabCommand::Console(args) => console(args),
    }
}

fn plan_failure(e: PlanError) -> Failure {
    match e {
        PlanError::Name { .. }
        | PlanError::DiskSize { .. }
        | PlanError::NodeCount { .. }
        | PlanError::TooSmall { .. }
        | PlanError::DisklessNeedsPxe
        | PlanError::ClusterName { .. } => Failure::Invalid(e.into()),
        other => Failure::Runtime(other.into()),
    }
}

fn state_dir_of(lab: &NameArgs) -> CmdResult<PathBuf> {
    let dir = state::state_dir(&lab.name, lab.state_dir.as_deref())?;
    Ok(absolute(&dir))
}

/// QEMU and the record get absolute paths, so they stay right whatever the cwd.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn create(args: CreateArgs) -> CmdResult {
    let spec = LabSpec {
        name: args.lab.name.clone(),
        controlplanes: args.controlplanes,
        workers: args.workers,
        memory_mib: args.memory,
        cpus: args.cpus,
        disk_size: args.disk_size,
        pxe: args.pxe,
        diskless: args.no_disk,
    };
    spec.validate().map_err(plan_failure)?;
    let image_dir = absolute(&args.image_dir);
    let source = run::find_boot_source(&image_dir, spec.pxe)?;
    let dir = state_dir_of(&args.lab)?;
    let layout = Layout::new(&dir);
    if layout.record().exists() {
        return Err(RunError::Exists {
            dir: dir.clone(),
            record: layout.record(),
            name: spec.name.to_string(),
        }
        .into());
    }
    let created_dir = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(|source| RunError::StateDir {
        dir: dir.clone(),
        source,
    })?;
    match prepare_and_boot(&spec, &source, &image_dir, &layout, args.timeout) {
        Err(Before(e)) => {
            // Nothing runs yet: leave no half-made lab behind.
            if created_dir {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(e)
        }
        Err(After { running, failure }) => {
            let hint = format!(
                "{} Console log: {}\nRemove it with: basaltctl lab destroy {}",
                if running {
                    "The VM was left running for inspection."
                } else {
                    "QEMU is gone; its files were kept for inspection."
                },
                layout.console_log(&spec.nodes()[0].name).display(),
                name_flags(&args.lab)
            );
            // The hint goes after the cause, which main prints last.
            Err(match failure {
                Failure::Runtime(e) => Failure::Runtime(anyhow!("{e:#}\n\n{hint}")),
                Failure::Invalid(e) => Failure::Invalid(anyhow!("{e:#}\n\n{hint}")),
            })
        }
        Ok(record) => {
            print_ready(&record, &args.lab);
            Ok(())
        }
    }
}

/// Where create failed: before anything was started (clean up) or after (keep it).
enum Stage {
    Before(Failure),
    After { running: bool, failure: Failure },
}
use Stage::{After, Before};

fn before<E: Into<Failure>>(e: E) -> Stage {
    Before(e.into())
}

fn prepare_and_boot(
    spec: &LabSpec,
    source: &run::BootSource,
    image_dir: &Path,
    layout: &Layout,
    timeout: u64,
) -> Result<LabRecord, Stage> {
    let node = &spec.nodes()[0];
    let labs_root = state::labs_root().ok();
    let taken = labs_root
        .as_deref()
        .map(state::taken_ports)
        .unwrap_or_default();
    let ports = plan::allocate_ports(2, &taken, free_port).map_err(|e| Before(plan_failure(e)))?;
    let ports = NodePorts {
        api: ports[0],
        kubernetes: ports[1],
    };
    let configs = plan::lab_configs(&spec.name, &node.name, ports.api, spec.diskless)
        .map_err(|e| Before(plan_failure(e)))?;
    let basaltconfig_yaml = configs.basaltconfig.to_yaml().map_err(before)?;
    for (path, text) in [
        (layout.secrets(), configs.secrets_yaml.as_str()),
        (
            layout.controlplane_config(),
            &configs.controlplane.to_yaml(),
        ),
        (layout.worker_config(), &configs.worker.to_yaml()),
        (layout.basaltconfig(), &basaltconfig_yaml),
    ] {
        basalt_config::secrets::write_file_mode(&path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))
            .map_err(before)?;
    }
    if !spec.diskless {
        run::prepare_disk(source, &layout.disk(&node.name), spec.disk_size).map_err(before)?;
    }

    let config = layout.controlplane_config();
    let boot = NodeBoot {
        layout,
        node: &node.name,
        source,
        config: &config,
        disk: !spec.diskless,
        ports,
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
    };
    let mut vm = run::boot_node(&boot).map_err(before)?;
    let record = LabRecord {
        name: spec.name.clone(),
        state_dir: layout.dir.clone(),
        image_dir: image_dir.to_path_buf(),
        pxe: spec.pxe,
        accel: vm.accel().qemu_name().to_owned(),
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        disk_size: spec.disk_size.to_string(),
        created_unix: now_unix(),
        basaltconfig: layout.basaltconfig(),
        nodes: vec![NodeRecord {
            name: node.name.clone(),
            role: node.role,
            pid: vm.pid(),
            ports,
            console_log: layout.console_log(&node.name),
            disk: (!spec.diskless).then(|| layout.disk(&node.name)),
            monitor_socket: layout.monitor_socket(&node.name),
            qmp_socket: layout.qmp_socket(&node.name),
        }],
    };
    // Recorded before waiting, so an interrupted create can still be destroyed.
    record.save().map_err(before)?;
    // From here on QEMU runs for the lab, not for this process.
    eprintln!(
        "booting {} ({}, {} MiB, {} CPUs, {}) — console: {}",
        node.name,
        if record.accel == "kvm" {
            "KVM"
        } else {
            "TCG: no working KVM here, this takes minutes"
        },
        spec.memory_mib,
        spec.cpus,
        if spec.pxe {
            "kernel + initramfs"
        } else {
            "UEFI disk"
        },
        layout.console_log(&node.name).display()
    );
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(format!(
        "waiting for the node API on 127.0.0.1:{} to answer with mTLS",
        ports.api
    ));
    let started = std::time::Instant::now();
    let config_yaml = configs.controlplane.to_yaml();
    let outcome = run::wait_until_ready(
        &mut vm,
        &configs.basaltconfig,
        &config_yaml,
        Duration::from_secs(timeout),
        |p| {
            let secs = started.elapsed().as_secs();
            spinner.set_message(match p {
                Progress::WaitingForApi(why) => format!(
                    "[{secs}s] waiting for the node API on 127.0.0.1:{} to answer with mTLS ({why})",
                    ports.api
                ),
                Progress::WaitingForService { state } => format!(
                    "[{secs}s] node API answers; waiting for {} to be healthy (now: {})",
                    run::READY_SERVICE,
                    state.as_deref().unwrap_or("not started")
                ),
                Progress::ApplyingInMaintenance(what) => format!("[{secs}s] {what}"),
            });
        },
    );
    spinner.finish_and_clear();
    // Keep QEMU running past this process whatever happened (it is gone if it exited).
    let _ = vm.detach();
    match outcome {
        Ok(()) => Ok(record),
        Err(e) => Err(After {
            running: !matches!(e, RunError::QemuExited { .. }),
            failure: Failure::Runtime(e.into()),
        }),
    }
}

fn name_flags(lab: &NameArgs) -> String {
    match &lab.state_dir {
        Some(dir) => format!("--name {} --state-dir {}", lab.name, dir.display()),
        None => format!("--name {}", lab.name),
    }
}

fn print_ready(record: &LabRecord, lab: &NameArgs) {
    let node = &record.nodes[0];
    let cfg = record.basaltconfig.display();
    println!(
        "lab {} is up: {} answers on 127.0.0.1:{}",
        record.name, node.name, node.ports.api
    );
    println!();
    println!("  talk to it:      basaltctl --basaltconfig {cfg} services");
    println!("                   basaltctl --basaltconfig {cfg} logs containerd");
    println!(
        "  console log:     {}   (basaltctl lab console {} -f)",
        node.console_log.display(),
        name_flags(lab)
    );
    println!(
        "  Kubernetes API:  127.0.0.1:{} → {}:6443",
        node.ports.kubernetes,
        plan::GUEST_IP
    );
    println!("  state:           {}", record.state_dir.display());
    println!(
        "  remove it:       basaltctl lab destroy {}",
        name_flags(lab)
    );
}

fn destroy(args: DestroyArgs) -> CmdResult {
    let dir = state_dir_of(&args.lab)?;
    let record = LabRecord::load(&dir)?;
    let layout = Layout::new(&dir);
    for node in &record.nodes {
        let stopped = match node.pid {
            Some(pid) => run::stop_qemu(pid, &dir, Duration::from_secs(10))?,
            None => false,
        };
        println!(
            "{}: {}",
            node.name,
            if stopped {
                "stopped"
            } else {
                "was not running"
            }
        );
        let _ = std::fs::remove_file(layout.pid_file(&node.name));
    }
    if args.keep {
        println!("kept {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the state directory {}", dir.display()))?;
        println!("removed {}", dir.display());
    }
    Ok(())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedLab {
    running: bool,
    #[serde(flatten)]
    record: LabRecord,
}

fn list(args: ListArgs) -> CmdResult {
    let root = state::labs_root()?;
    let mut labs = Vec::new();
    for entry in state::list_labs(&root)? {
        match entry {
            Ok(record) => labs.push(ListedLab {
                running: record.nodes.iter().any(|n| {
                    n.pid
                        .is_some_and(|p| run::is_lab_qemu(p, &record.state_dir))
                }),
                record,
            }),
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    let mut text = String::new();
    if labs.is_empty() {
        text.push_str(&format!("no labs under {}\n", root.display()));
    } else {
        text.push_str(&format!(
            "{:<16} {:<8} {:<6} {:<6} {:<16} {}\n",
            "NAME", "STATE", "NODES", "ACCEL", "NODE API", "STATE DIR"
        ));
        for lab in &labs {
            text.push_str(&format!(
                "{:<16} {:<8} {:<6} {:<6} {:<16} {}\n",
                lab.record.name,
                if lab.running { "running" } else { "stopped" },
                lab.record.nodes.len(),
                lab.record.accel,
                lab.record
                    .nodes
                    .first()
                    .map_or_else(String::new, |n| format!("127.0.0.1:{}", n.ports.api)),
                lab.record.state_dir.display()
            ));
        }
    }
    output::print(args.output, &labs, &text)?;
    Ok(())
}

fn console(args: ConsoleArgs) -> CmdResult {
    let dir = state_dir_of(&args.lab)?;
    let record = LabRecord::load(&dir)?;
    let node = match &args.node {
        Some(name) => record
            .nodes
            .iter()
            .find(|n| &n.name == name)
            .ok_or_else(|| {
                Failure::Invalid(anyhow!(
                    "lab {} has no node {name:?} (it has: {})",
                    record.name,
                    record
                        .nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
        None => record
            .nodes
            .first()
            .ok_or_else(|| anyhow!("lab {} records no nodes", record.name))?,
    };
    let log = &node.console_log;
    if args.tail.is_none() && !args.follow {
        println!("{}", log.display());
        return Ok(());
    }
    let lines = args.tail.unwrap_or(40);
    println!("{}", run::tail(log, lines));
    if !args.follow {
        return Ok(());
    }
    follow(log, node.pid, &dir)
}

/// Prints what is appended to `log` until the node's QEMU is gone.
fn follow(log: &Path, pid: Option<u32>, state_dir: &Path) -> CmdResult {
    let mut file = std::fs::File::open(log)
        .with_context(|| format!("opening {}", log.display()))
        .invalid()?;
    let mut at = file.seek(SeekFrom::End(0))?;
    let mut buf = Vec::new();
    loop {
        let len = file.metadata()?.len();
        if len < at {
            at = 0; // the log was truncated (a new boot of the same lab)
        }
        if len > at {
            file.seek(SeekFrom::Start(at))?;
            buf.clear();
            at += (&mut file).take(len - at).read_to_end(&mut buf)? as u64;
            let text = String::from_utf8_lossy(&buf).replace('\r', "");
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        } else if !pid.is_some_and(|p| run::is_lab_qemu(p, state_dir)) {
            eprintln!("(the node's QEMU is not running)");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
