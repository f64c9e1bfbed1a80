//! The I/O of `basaltctl lab`: checking the image, preparing disks, booting detached
//! QEMU processes, waiting for the node API and stopping the VMs again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use basalt_api::{
    ApplyConfigRequest, ApplyMode, Client, ClientTls, Fingerprint, ServiceState, ServiceStatus,
};
use basalt_config::client_config::ClientConfig;

use super::plan::{DiskSize, GUEST_API_PORT, GUEST_KUBERNETES_PORT};
use super::qemu::{Qemu, QemuError, RunningQemu};
use super::state::{Layout, NodePorts};

/// The fw_cfg name machined reads its config from.
pub const FW_CFG_CONFIG: &str = "opt/dev.basalt/config";
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// What a diskless kernel boot runs as: configs without machine.install validate.
pub const DISKLESS_PLATFORM: &str = "basalt.platform=cloud";
/// The service whose health means "the node is up" for a lab.
pub const READY_SERVICE: &str = "containerd";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the image directory {dir} does not hold {missing}: build the image first (`basalt-image build -o {dir}`)"
    )]
    ImageMissing { dir: PathBuf, missing: String },
    #[error("reading the image directory {dir}: {source}")]
    ImageDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is missing: install the UEFI firmware (`scripts/setup` installs the ovmf package)"
    )]
    Firmware { path: PathBuf },
    #[error(
        "--disk-size {requested} is smaller than the image {image} ({image_bytes} bytes): pass a larger size"
    )]
    DiskTooSmall {
        requested: DiskSize,
        image: PathBuf,
        image_bytes: u64,
    },
    #[error("preparing the disk {path}: {source}")]
    Disk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "a lab already lives in {dir} ({record} exists): destroy it first (`basaltctl lab destroy --name {name}`) or pick another --name"
    )]
    Exists {
        dir: PathBuf,
        record: PathBuf,
        name: String,
    },
    #[error("creating the state directory {dir}: {source}")]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Qemu(#[from] QemuError),
    #[error(
        "QEMU exited ({status}) while waiting for the node; last console lines of {log}:\n{tail}\nQEMU's stderr:\n{stderr}"
    )]
    QemuExited {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
        stderr: String,
    },
    #[error("timed out after {timeout:?} waiting for {what}; last console lines of {log}:\n{tail}")]
    Timeout {
        timeout: Duration,
        what: String,
        log: PathBuf,
        tail: String,
    },
    #[error("the lab's basaltconfig cannot be used: {0}")]
    ClientConfig(String),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("stopping QEMU (pid {pid}): {reason}")]
    Kill { pid: u32, reason: String },
}

/// The files a lab boots from, found in the image directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// UEFI: OVMF → systemd-boot → UKI from a copy of the raw disk image.
    Disk { raw: PathBuf },
    /// -kernel/-initrd with the PXE bundle's command line (what iPXE would boot).
    Kernel {
        vmlinuz: PathBuf,
        initramfs: PathBuf,
        cmdline: String,
    },
}

/// Finds the artifacts `basalt-image build -o DIR` writes for the chosen boot path and
/// names the first one missing.
pub fn find_boot_source(dir: &Path, pxe: bool) -> Result<BootSource, RunError> {
    let missing = |name: &str| RunError::ImageMissing {
        dir: dir.to_path_buf(),
        missing: name.to_owned(),
    };
    if pxe {
        for name in ["vmlinuz", "initramfs.zst", "cmdline"] {
            if !dir.join(name).is_file() {
                return Err(missing(name));
            }
        }
        let cmdline_path = dir.join("cmdline");
        let cmdline =
            std::fs::read_to_string(&cmdline_path).map_err(|source| RunError::ImageDir {
                dir: cmdline_path,
                source,
            })?;
        return Ok(BootSource::Kernel {
            vmlinuz: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.zst"),
            cmdline: cmdline.trim().to_owned(),
        });
    }
    if !dir.is_dir() {
        return Err(missing(
            "basalt-<version>-amd64.raw (the directory does not exist)",
        ));
    }
    let entries = std::fs::read_dir(dir).map_err(|source| RunError::ImageDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    // The raw image carries the OS version in its name; pick the newest-named one.
    let mut raws: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("basalt-") && n.ends_with("-amd64.raw"))
        })
        .collect();
    raws.sort();
    match raws.pop() {
        Some(raw) => Ok(BootSource::Disk { raw }),
        None => Err(missing("basalt-<version>-amd64.raw")),
    }
}

/// The node's disk: a copy of the raw image grown to `size` (sparse, like `qemu-img
/// resize`), or for kernel boots an empty sparse disk of `size` for STATE/EPHEMERAL.
pub fn prepare_disk(source: &BootSource, dest: &Path, size: DiskSize) -> Result<(), RunError> {
    let io = |source| RunError::Disk {
        path: dest.to_path_buf(),
        source,
    };
    if let BootSource::Disk { raw } = source {
        let image_bytes = std::fs::metadata(raw).map_err(io)?.len();
        if image_bytes > size.bytes() {
            return Err(RunError::DiskTooSmall {
                requested: size,
                image: raw.clone(),
                image_bytes,
            });
        }
        std::fs::copy(raw, dest).map_err(io)?;
    } else {
        std::fs::File::create(dest).map_err(io)?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(io)?;
    file.set_len(size.bytes()).map_err(io)?;
    Ok(())
}

/// How to boot one node.
#[derive(Debug, Clone)]
pub struct NodeBoot<'a> {
    pub layout: &'a Layout,
    pub node: &'a str,
    pub source: &'a BootSource,
    pub config: &'a Path,
    /// Attach `<node>.raw` as /dev/vda (false: a diskless kernel boot).
    pub disk: bool,
    pub ports: NodePorts,
    pub memory_mib: u32,
    pub cpus: u32,
}

/// The QEMU description of a lab node: the same builder the end-to-end tests use.
pub fn node_builder(boot: &NodeBoot<'_>) -> Result<super::qemu::QemuBuilder, RunError> {
    let layout = boot.layout;
    let mut qmp = std::ffi::OsString::from("unix:");
    qmp.push(layout.qmp_socket(boot.node));
    qmp.push(",server=on,wait=off");
    let mut b = Qemu::builder()
        .memory_mib(boot.memory_mib)
        .cpus(boot.cpus)
        .fw_cfg_file(FW_CFG_CONFIG, boot.config)
        .netdev_user(vec![
            (boot.ports.api, GUEST_API_PORT),
            (boot.ports.kubernetes, GUEST_KUBERNETES_PORT),
        ])
        .console_log(layout.console_log(boot.node))
        .monitor()
        .arg("-qmp")
        .arg(qmp);
    if boot.disk {
        b = b.disk(layout.disk(boot.node));
    }
    match boot.source {
        BootSource::Disk { .. } => {
            let code = Path::new(OVMF_CODE);
            if !code.is_file() {
                return Err(RunError::Firmware {
                    path: code.to_path_buf(),
                });
            }
            let vars = layout.ovmf_vars(boot.node);
            if !vars.exists() {
                super::qemu::copy_ovmf_vars(Path::new(OVMF_VARS), &vars).map_err(|e| match e {
                    QemuError::Copy { from, .. } if !from.exists() => {
                        RunError::Firmware { path: from }
                    }
                    other => RunError::Qemu(other),
                })?;
            }
            b = b.ovmf(code, vars);
        }
        BootSource::Kernel {
            vmlinuz,
            initramfs,
            cmdline,
        } => {
            b = b.kernel(vmlinuz).initrd(initramfs).append(cmdline.clone());
            if !boot.disk {
                // The image says metal, and metal configs must name an install disk this
                // VM does not have; the last basalt.platform= wins.
                b = b.append(DISKLESS_PLATFORM);
            }
        }
    }
    Ok(b)
}

/// Starts a node's QEMU in its own process group and writes its pid file; the returned
/// handle still kills it on drop until [`RunningQemu::detach`].
pub fn boot_node(boot: &NodeBoot<'_>) -> Result<RunningQemu, RunError> {
    let vm = node_builder(boot)?.spawn()?;
    if let Some(pid) = vm.pid() {
        let path = boot.layout.pid_file(boot.node);
        std::fs::write(&path, format!("{pid}\n"))
            .map_err(|source| RunError::Write { path, source })?;
    }
    Ok(vm)
}

/// What the node reported at the last poll, for the spinner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// No mTLS answer yet (the reason: refused, TLS, timeout …).
    WaitingForApi(String),
    /// The API answered; the ready service is not healthy yet.
    WaitingForService { state: Option<String> },
    /// The node found no config (fw_cfg unreadable) and waits in maintenance mode; the
    /// config is being sent through its API, pinned to the console's fingerprint.
    ApplyingInMaintenance(String),
}

/// The maintenance certificate's fingerprint from the last maintenance banner on the
/// console (a node that rebooted prints a new one).
pub fn maintenance_fingerprint(console: &str) -> Option<Fingerprint> {
    console
        .lines()
        .rev()
        .find_map(basalt_api::fingerprint_from_banner)
}

/// The verdict on one `services` answer: ready when [`READY_SERVICE`] is healthy.
pub fn ready(services: &[ServiceStatus]) -> Result<(), Progress> {
    match services.iter().find(|s| s.name == READY_SERVICE) {
        Some(s) if s.state == ServiceState::Healthy => Ok(()),
        Some(s) => Err(Progress::WaitingForService {
            state: Some(s.state.to_string()),
        }),
        None => Err(Progress::WaitingForService { state: None }),
    }
}

/// Polls the node API with the lab's admin certificate until containerd is healthy,
/// QEMU exits or `timeout` passes. `progress` is told what is awaited at each poll.
///
/// The config normally reaches the node over fw_cfg. A node that cannot read fw_cfg
/// (an image without the qemu_fw_cfg module) enters maintenance mode instead; then
/// `config_yaml` is applied through the maintenance API, pinned to the certificate
/// fingerprint the console shows, as an operator would with `apply-config
/// --cert-fingerprint`.
pub fn wait_until_ready(
    vm: &mut RunningQemu,
    basaltconfig: &ClientConfig,
    config_yaml: &str,
    timeout: Duration,
    mut progress: impl FnMut(&Progress),
) -> Result<(), RunError> {
    let (_, ctx) = basaltconfig
        .context(None)
        .map_err(|e| RunError::ClientConfig(e.to_string()))?;
    let endpoint = ctx
        .endpoints
        .first()
        .ok_or_else(|| RunError::ClientConfig("its context has no endpoint".into()))?;
    let tls = ClientTls::Mutual {
        ca_pem: ctx.ca.clone(),
        cert_pem: ctx.crt.clone(),
        key_pem: ctx.key.clone(),
    };
    let client = Client::new(endpoint, &tls).map_err(|e| RunError::ClientConfig(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let deadline = Instant::now() + timeout;
    // The maintenance certificate the config was applied through, so it is sent once
    // per maintenance boot.
    let mut applied_to: Option<Fingerprint> = None;
    loop {
        if let Some(status) = vm.try_wait()? {
            return Err(RunError::QemuExited {
                status,
                log: vm.console_log_path().to_path_buf(),
                tail: tail(vm.console_log_path(), 30),
                stderr: vm.qemu_stderr(),
            });
        }
        let answer = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(15), client.services()).await
        });
        let mut last = match answer {
            Ok(Ok(services)) => match ready(&services) {
                Ok(()) => return Ok(()),
                Err(p) => p,
            },
            Ok(Err(e)) => Progress::WaitingForApi(e.to_string()),
            Err(_) => Progress::WaitingForApi("no answer within 15s".into()),
        };
        if matches!(last, Progress::WaitingForApi(_))
            && let Some(fp) = maintenance_fingerprint(&vm.console_output().unwrap_or_default())
            && applied_to.as_ref() != Some(&fp)
        {
            progress(&Progress::ApplyingInMaintenance(format!(
                "the node is in maintenance mode (certificate {fp}); sending the config"
            )));
            let pinned = Client::new(endpoint, &ClientTls::Pinned(fp))
                .map_err(|e| RunError::ClientConfig(e.to_string()))?;
            let request = ApplyConfigRequest {
                config: config_yaml.to_owned(),
                mode: ApplyMode::Auto,
                try_timeout_seconds: None,
            };
            let answer = runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), pinned.apply_config(&request)).await
            });
            last = match answer {
                Ok(Ok(answer)) => {
                    applied_to = Some(fp);
                    Progress::ApplyingInMaintenance(format!(
                        "config applied in maintenance mode: {}",
                        answer.message
                    ))
                }
                Ok(Err(e)) => {
                    Progress::ApplyingInMaintenance(format!("applying in maintenance mode: {e}"))
                }
                Err(_) => Progress::ApplyingInMaintenance(
                    "applying in maintenance mode: no answer within 30s".into(),
                ),
            };
        }
        progress(&last);
        if Instant::now() >= deadline {
            let what = match &last {
                Progress::WaitingForApi(why) => {
                    format!("the node API on {endpoint} to answer with mTLS (last: {why})")
                }
                Progress::WaitingForService { state } => format!(
                    "{READY_SERVICE} to be healthy (last state: {})",
                    state.as_deref().unwrap_or("not listed")
                ),
                Progress::ApplyingInMaintenance(what) => {
                    format!("the node to leave maintenance mode (last: {what})")
                }
            };
            return Err(RunError::Timeout {
                timeout,
                what,
                log: vm.console_log_path().to_path_buf(),
                tail: tail(vm.console_log_path(), 30),
            });
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The last `n` lines of a console log (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    super::console::ConsoleLog::new(path).tail(n)
}

/// True when `pid` is a live QEMU of this lab: its command line names the state
/// directory, so a pid the kernel reused for something else is never signalled.
pub fn is_lab_qemu(pid: u32, state_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // A zombie has an empty cmdline anyway, but say it outright.
    if stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
    {
        return false;
    }
    let cmdline = String::from_utf8_lossy(&cmdline);
    let dir = state_dir.to_string_lossy();
    cmdline.contains("qemu") && cmdline.contains(dir.as_ref())
}

/// Stops a lab QEMU: SIGTERM to its process group, SIGKILL after `grace`. Returns false
/// when there was nothing of this lab to stop.
pub fn stop_qemu(pid: u32, state_dir: &Path, grace: Duration) -> Result<bool, RunError> {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    if !is_lab_qemu(pid, state_dir) {
        return Ok(false);
    }
    let raw = i32::try_from(pid).map_err(|_| RunError::Kill {
        pid,
        reason: "not a valid pid".into(),
    })?;
    let group = Pid::from_raw(raw);
    killpg(group, Signal::SIGTERM).map_err(|e| RunError::Kill {
        pid,
        reason: e.to_string(),
    })?;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_lab_qemu(pid, state_dir) {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match killpg(group, Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(true),
        Err(e) => Err(RunError::Kill {
            pid,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: ServiceState) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            state,
            message: String::new(),
            restarts: 0,
            since_unix_ms: None,
        }
    }

    #[test]
    fn maintenance_fingerprint_is_the_last_banner() {
        let a = format!("SHA256:{}", ["AB"; 32].join(":"));
        let b = format!("SHA256:{}", ["CD"; 32].join(":"));
        let console = format!(
            "[ 1.0] machined: maintenance mode: API listening on :50000, certificate fingerprint {a}\n\
             [ 2.0] reboot\n\
             [ 3.0] machined: maintenance mode: API listening on :50000, certificate fingerprint {b}\n\
             [ 3.1] machined: phase api done\n"
        );
        assert_eq!(maintenance_fingerprint(&console), Some(b.parse().unwrap()));
        assert_eq!(maintenance_fingerprint("machined: phase config done"), None);
    }

    #[test]
    fn ready_only_when_containerd_is_healthy() {
        assert_eq!(
            ready(&[status("api", ServiceState::Healthy)]),
            Err(Progress::WaitingForService { state: None })
        );
        assert_eq!(
            ready(&[status("containerd", ServiceState::Running)]),
            Err(Progress::WaitingForService {
                state: Some(ServiceState::Running.to_string())
            })
        );
        assert_eq!(
            ready(&[
                status("api", ServiceState::Healthy),
                status("containerd", ServiceState::Healthy)
            ]),
            Ok(())
        );
    }

    #[test]
    fn boot_source_names_the_missing_artifact_and_the_build_command() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_boot_source(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("basalt-<version>-amd64.raw"), "{err}");
        assert!(err.contains("basalt-image build -o"), "{err}");
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        let err = find_boot_source(dir.path(), true).unwrap_err().to_string();
        assert!(err.contains("does not hold initramfs.zst"), "{err}");

        std::fs::write(dir.path().join("initramfs.zst"), b"i").unwrap();
        std::fs::write(dir.path().join("cmdline"), b"console=ttyS0 panic=10\n").unwrap();
        std::fs::write(dir.path().join("basalt-0.1.0-amd64.raw"), b"r").unwrap();
        assert_eq!(
            find_boot_source(dir.path(), true).unwrap(),
            BootSource::Kernel {
                vmlinuz: dir.path().join("vmlinuz"),
                initramfs: dir.path().join("initramfs.zst"),
                cmdline: "console=ttyS0 panic=10".into(),
            }
        );
        assert_eq!(
            find_boot_source(dir.path(), false).unwrap(),
            BootSource::Disk {
                raw: dir.path().join("basalt-0.1.0-amd64.raw")
            }
        );
    }

    #[test]
    fn disks_are_grown_copies_or_empty_and_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("basalt-0.1.0-amd64.raw");
        std::fs::write(&raw, b"GPT-ish header").unwrap();
        let source = BootSource::Disk { raw: raw.clone() };
        let dest = dir.path().join("node.raw");
        prepare_disk(&source, &dest, "1M".parse().unwrap()).unwrap();
        let bytes = std::fs::read(&dest).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        assert!(bytes.starts_with(b"GPT-ish header"));
        assert!(bytes[14..].iter().all(|&b| b == 0));

        let err = prepare_disk(&source, &dest, DiskSize::from_bytes(4)).unwrap_err();
        assert!(
            matches!(
                err,
                RunError::DiskTooSmall {
                    image_bytes: 14,
                    ..
                }
            ),
            "{err}"
        );

        let kernel = BootSource::Kernel {
            vmlinuz: "k".into(),
            initramfs: "i".into(),
            cmdline: String::new(),
        };
        let empty = dir.path().join("empty.raw");
        prepare_disk(&kernel, &empty, "1G".parse().unwrap()).unwrap();
        let meta = std::fs::metadata(&empty).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 1 << 20, "the disk is not sparse");
    }

    /// The QEMU arguments of a lab node: disk, firmware or kernel, config over fw_cfg,
    /// forwards of the node API and the Kubernetes API, QMP next to the monitor.
    #[test]
    fn node_arguments_carry_config_forwards_and_sockets() {
        let layout = Layout::new("/s/lab");
        let config = layout.controlplane_config();
        let source = BootSource::Kernel {
            vmlinuz: "/img/vmlinuz".into(),
            initramfs: "/img/initramfs.zst".into(),
            cmdline: "console=ttyS0,115200 panic=10".into(),
        };
        let ports = NodePorts {
            api: 41000,
            kubernetes: 41001,
        };
        let boot = NodeBoot {
            layout: &layout,
            node: "controlplane-1",
            source: &source,
            config: &config,
            disk: true,
            ports,
            memory_mib: 2048,
            cpus: 2,
        };
        let b = node_builder(&boot).unwrap();
        let fwd = [
            super::super::qemu::HostFwd {
                host: 41000,
                guest: 50000,
            },
            super::super::qemu::HostFwd {
                host: 41001,
                guest: 6443,
            },
        ];
        let args: Vec<String> = b
            .args(
                super::super::accel::Accel::Tcg,
                &fwd,
                &layout.console_log("controlplane-1"),
            )
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-m 2048M",
            "-smp 2",
            "-kernel /img/vmlinuz -initrd /img/initramfs.zst",
            "-append console=ttyS0,115200 panic=10",
            "-serial file:/s/lab/controlplane-1.log",
            "-monitor unix:/s/lab/controlplane-1.monitor.sock,server=on,wait=off",
            "-qmp unix:/s/lab/controlplane-1.qmp.sock,server=on,wait=off",
            "if=none,id=disk0,format=raw,file=/s/lab/controlplane-1.raw",
            "-fw_cfg name=opt/dev.basalt/config,file=/s/lab/controlplane.yaml",
            "hostfwd=tcp:127.0.0.1:41000-:50000,hostfwd=tcp:127.0.0.1:41001-:6443",
        ] {
            assert!(joined.contains(want), "missing {want:?} in {joined}");
        }
    }

    #[test]
    fn diskless_kernel_boots_run_as_cloud_without_a_disk() {
        let layout = Layout::new("/s/lab");
        let config = layout.controlplane_config();
        let source = BootSource::Kernel {
            vmlinuz: "/img/vmlinuz".into(),
            initramfs: "/img/initramfs.zst".into(),
            cmdline: "console=ttyS0 basalt.platform=metal".into(),
        };
        let boot = NodeBoot {
            layout: &layout,
            node: "controlplane-1",
            source: &source,
            config: &config,
            disk: false,
            ports: NodePorts {
                api: 1,
                kubernetes: 2,
            },
            memory_mib: 2048,
            cpus: 2,
        };
        let b = node_builder(&boot).unwrap();
        assert_eq!(
            b.cmdline(),
            "console=ttyS0 basalt.platform=metal basalt.platform=cloud"
        );
        let args: Vec<String> = b
            .args(
                super::super::accel::Accel::Tcg,
                &[],
                Path::new("/s/lab/c.log"),
            )
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!args.iter().any(|a| a.contains("virtio-blk")), "{args:?}");
    }

    /// A process that is not QEMU of this lab is never signalled.
    #[test]
    fn stop_refuses_foreign_processes() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(!is_lab_qemu(child.id(), dir.path()));
        assert!(!stop_qemu(child.id(), dir.path(), Duration::from_millis(10)).unwrap());
        assert!(child.try_wait().unwrap().is_none(), "sleep was killed");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A real QEMU started for a lab state dir survives its handle being detached and is
    /// stopped by stop_qemu through its process group.
    #[test]
    fn detached_qemu_is_found_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let vm = Qemu::builder()
            .arg("-S")
            .netdev_user(vec![])
            .monitor()
            .console_log(layout.console_log("n"))
            .accel(super::super::accel::Accel::Tcg)
            .spawn()
            .unwrap();
        let pid = vm.detach().unwrap();
        // A failing assertion must not leave the detached QEMU behind.
        struct KillOnDrop(i32);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(self.0),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _guard = KillOnDrop(pid as i32);
        // Reap it from a thread once it dies, as init would after basaltctl exits.
        let reaper = std::thread::spawn(move || {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        });
        // Between fork and exec the child still looks like this test binary.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_lab_qemu(pid, dir.path()) {
            assert!(Instant::now() < deadline, "QEMU {pid} never showed up");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(stop_qemu(pid, dir.path(), Duration::from_secs(5)).unwrap());
        reaper.join().unwrap();
        assert!(!is_lab_qemu(pid, dir.path()));
    }
}
