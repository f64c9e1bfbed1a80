//! Driving QEMU: a builder for the VM description, spawning it in its own process group,
//! watching its serial console, its monitor and its host port forwards. `basaltctl lab`
//! and the end-to-end tests (basalt-tests-qemu re-exports this module) share it, so a lab
//! boots exactly the way the tests do.
//!
//! ```no_run
//! use basaltctl::lab::qemu::Qemu;
//! use std::time::Duration;
//! let mut vm = Qemu::builder()
//!     .kernel("out/vmlinuz")
//!     .initrd("out/initramfs.zst")
//!     .append("basalt.debug")
//!     .memory_mib(1024)
//!     .no_reboot()
//!     .spawn()?;
//! vm.wait_for_console("machined: phase", Duration::from_secs(120))?;
//! # Ok::<(), basaltctl::lab::qemu::QemuError>(())
//! ```

use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use super::accel::{Accel, detect_accel};
pub use super::console::ConsoleLog;

/// Environment variable naming the directory that holds a built image
/// (`vmlinuz`, `initramfs.zst`, …), as written by `basalt-image build -o DIR`.
pub const IMAGE_DIR_ENV: &str = "BASALT_IMAGE_DIR";

/// Everything that can go wrong while driving QEMU.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "{IMAGE_DIR_ENV} is not set: build an image (`cargo run -p basalt-image -- build -o out`) and export {IMAGE_DIR_ENV}=<that dir>"
    )]
    ImageDirUnset,
    #[error(
        "{IMAGE_DIR_ENV}={dir} does not hold {missing}: build the image first (`cargo run -p basalt-image -- build -o {dir}`)"
    )]
    ImageArtifactMissing { dir: PathBuf, missing: String },
    #[error("the QEMU builder has no {what}")]
    Incomplete { what: &'static str },
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("creating the console log {path}: {source}")]
    ConsoleLogCreate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the console log {path}: {source}")]
    ConsoleLogRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "timed out after {timeout:?} waiting for {pattern:?} on the console ({log}); last lines:\n{tail}"
    )]
    ConsoleTimeout {
        pattern: String,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "QEMU exited ({status}) before {pattern:?} appeared on the console ({log}); last lines:\n{tail}\nQEMU's stderr:\n{qemu_stderr}"
    )]
    ExitedBeforePattern {
        pattern: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
        qemu_stderr: String,
    },
    #[error("QEMU did not exit within {timeout:?} ({log}); last lines:\n{tail}")]
    ExitTimeout {
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("waiting for the QEMU process: {source}")]
    Wait { source: std::io::Error },
    #[error("talking to the QEMU monitor at {path}: {source}")]
    Monitor {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("finding a free TCP port on 127.0.0.1: {source}")]
    FreePort { source: std::io::Error },
    #[error("copying {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = QemuError> = std::result::Result<T, E>;

/// The directory holding a built image, from `BASALT_IMAGE_DIR`. Checks that the boot
/// artifacts every QEMU test needs (`vmlinuz`, `initramfs.zst`) are there, so a test fails
/// with "build the image first" rather than with a QEMU error.
pub fn image_dir() -> Result<PathBuf> {
    let dir = std::env::var_os(IMAGE_DIR_ENV).ok_or(QemuError::ImageDirUnset)?;
    image_dir_from(Path::new(&dir), &["vmlinuz", "initramfs.zst"])
}

/// Like [`image_dir`] but checks for the given artifacts (e.g. `basalt.raw` for disk boots).
pub fn image_dir_with(artifacts: &[&str]) -> Result<PathBuf> {
    let dir = std::env::var_os(IMAGE_DIR_ENV).ok_or(QemuError::ImageDirUnset)?;
    image_dir_from(Path::new(&dir), artifacts)
}

fn image_dir_from(dir: &Path, artifacts: &[&str]) -> Result<PathBuf> {
    for name in artifacts {
        if !dir.join(name).is_file() {
            return Err(QemuError::ImageArtifactMissing {
                dir: dir.to_path_buf(),
                missing: (*name).to_owned(),
            });
        }
    }
    Ok(dir.to_path_buf())
}

/// A TCP port on 127.0.0.1 that was free a moment ago. The listener is dropped before
/// QEMU binds it, so two parallel tests could race; ports come from the kernel's
/// ephemeral range, which makes that unlikely.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|source| QemuError::FreePort { source })?;
    let port = listener
        .local_addr()
        .map_err(|source| QemuError::FreePort { source })?
        .port();
    Ok(port)
}

/// A host→guest TCP port forward of the user-mode network. `host == 0` means "pick a
/// free port at spawn time"; [`RunningQemu::host_port`] tells which one was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFwd {
    pub host: u16,
    pub guest: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct UserNet {
    hostfwd: Vec<HostFwd>,
    tftp: Option<(PathBuf, String)>,
}

/// One end of a point-to-point link between two VMs over a loopback TCP socket
/// (`-netdev socket`): one VM listens, the other connects to the same port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketLink {
    /// `listen=127.0.0.1:PORT`: start this VM first, and wait until it runs (its console
    /// shows the kernel): a refused connect leaves the other VM's NIC unplugged for good,
    /// and probing the port would take the listener's only peer slot.
    Listen(u16),
    /// `connect=127.0.0.1:PORT`: the listening VM must already run.
    Connect(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SocketNic {
    link: SocketLink,
    mac: String,
}

/// Entry point: `Qemu::builder()`.
pub struct Qemu;

impl Qemu {
    pub fn builder() -> QemuBuilder {
        QemuBuilder::default()
    }
}

/// Collects a VM description; [`QemuBuilder::spawn`] starts it. Every machine is a q35
/// PC with virtio devices and its first serial port captured to a log file.
#[derive(Debug, Clone)]
pub struct QemuBuilder {
    qemu: PathBuf,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Vec<String>,
    memory_mib: u32,
    cpus: u32,
    disks: Vec<PathBuf>,
    ovmf: Option<(PathBuf, PathBuf)>,
    fw_cfg_files: Vec<(String, PathBuf)>,
    net: Option<UserNet>,
    socket_nics: Vec<SocketNic>,
    no_reboot: bool,
    console_log: Option<PathBuf>,
    accel: Option<Accel>,
    monitor: bool,
    extra_args: Vec<OsString>,
}

impl Default for QemuBuilder {
    fn default() -> Self {
        QemuBuilder {
            qemu: PathBuf::from("qemu-system-x86_64"),
            kernel: None,
            initrd: None,
            append: Vec::new(),
            memory_mib: 1024,
            cpus: 2,
            disks: Vec::new(),
            ovmf: None,
            fw_cfg_files: Vec::new(),
            net: None,
            socket_nics: Vec::new(),
            no_reboot: false,
            console_log: None,
            accel: None,
            monitor: false,
            extra_args: Vec::new(),
        }
    }
}

impl QemuBuilder {
    /// The QEMU binary (default `qemu-system-x86_64` from PATH).
    pub fn qemu_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.qemu = path.into();
        self
    }
    /// Direct kernel boot (`-kernel`); leave unset to boot from disk/firmware.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }
    /// Appends words to the kernel command line (only used with [`Self::kernel`]).
    /// `console=ttyS0` is added unless a `console=` is given, so the log sees the kernel.
    pub fn append(mut self, cmdline: impl Into<String>) -> Self {
        self.append.push(cmdline.into());
        self
    }
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }
    /// A virtio disk; `.qcow2` files are opened as qcow2, anything else as raw. Disks
    /// appear in the guest in the order they were added (/dev/vda, /dev/vdb, …).
    pub fn disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(path.into());
        self
    }
    /// UEFI firmware. The firmware writes to `vars`: pass a per-test copy
    /// (see [`copy_ovmf_vars`]), never the system's template.
    pub fn ovmf(mut self, code: impl Into<PathBuf>, vars: impl Into<PathBuf>) -> Self {
        self.ovmf = Some((code.into(), vars.into()));
        self
    }
    /// `-fw_cfg name=<name>,file=<path>`, e.g. `opt/dev.basalt/config`.
    pub fn fw_cfg_file(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.fw_cfg_files.push((name.into(), path.into()));
        self
    }
    /// User-mode network on a virtio NIC with TCP forwards `(host, guest)`; a host port
    /// of 0 is replaced by a free port at spawn time.
    pub fn netdev_user(mut self, hostfwd: Vec<(u16, u16)>) -> Self {
        let net = self.net.get_or_insert(UserNet {
            hostfwd: Vec::new(),
            tftp: None,
        });
        net.hostfwd.extend(
            hostfwd
                .into_iter()
                .map(|(host, guest)| HostFwd { host, guest }),
        );
        self
    }
    /// Serves `dir` over the user network's TFTP and announces `bootfile` in DHCP (PXE).
    pub fn netdev_user_tftp(
        mut self,
        dir: impl Into<PathBuf>,
        bootfile: impl Into<String>,
    ) -> Self {
        let net = self.net.get_or_insert(UserNet {
            hostfwd: Vec::new(),
            tftp: None,
        });
        net.tftp = Some((dir.into(), bootfile.into()));
        self
    }
    /// A further virtio NIC with hardware address `mac` (`52:54:00:…`), joined to another
    /// VM's over loopback (see [`SocketLink`]): a private wire between two guests, no
    /// host network or privileges needed. NICs follow the user-network one, in the order
    /// added (eth1, eth2, … in the guest); select them by `mac` in the machine config.
    pub fn netdev_socket(mut self, link: SocketLink, mac: impl Into<String>) -> Self {
        self.socket_nics.push(SocketNic {
            link,
            mac: mac.into(),
        });
        self
    }
    /// A guest reboot makes QEMU exit instead (so a failing boot ends the test quickly).
    pub fn no_reboot(mut self) -> Self {
        self.no_reboot = true;
        self
    }
    /// Where the serial console is written (kept after the VM is gone). Default: a fresh
    /// file under `$TMPDIR/basalt-qemu-<pid>-<n>/console.log`.
    pub fn console_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.console_log = Some(path.into());
        self
    }
    /// Forces an accelerator instead of probing with [`detect_accel`].
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = Some(accel);
        self
    }
    /// Opens QEMU's human monitor on a unix socket next to the console log, for
    /// [`RunningQemu::monitor_command`] (ctrl-alt-del, powerdown, …).
    pub fn monitor(mut self) -> Self {
        self.monitor = true;
        self
    }
    /// Extra raw QEMU arguments, appended last.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// The kernel command line that will be passed with `-append`.
    pub fn cmdline(&self) -> String {
        let mut words: Vec<String> = Vec::new();
        if !self
            .append
            .iter()
            .any(|a| a.split_whitespace().any(|w| w.starts_with("console=")))
        {
            words.push("console=ttyS0".to_owned());
        }
        words.extend(self.append.iter().filter(|a| !a.trim().is_empty()).cloned());
        words.join(" ")
    }

    /// The full QEMU argument list (without the program), for a resolved accelerator,
    /// resolved host forwards and console log path. Pure, so it is unit-tested.
    pub fn args(&self, accel: Accel, hostfwd: &[HostFwd], console_log: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |a: &str| args.push(OsString::from(a));
        push("-nodefaults");
        push("-no-user-config");
        push("-display");
        push("none");
        push("-machine");
        push("q35");
        push("-accel");
        push(accel.qemu_arg());
        push("-cpu");
        push(cpu_model(accel));
        push("-smp");
        push(&self.cpus.to_string());
        push("-m");
        push(&format!("{}M", self.memory_mib));
        push("-serial");
        args.push(prefixed("file:", console_log));
        args.push("-monitor".into());
        if self.monitor {
            args.push(prefixed_with("unix:", &monitor_socket(console_log)));
            if let Some(a) = args.last_mut() {
                a.push(",server=on,wait=off");
            }
        } else {
            args.push("none".into());
        }
        // virtio-rng: without it, early userspace can block on getrandom for minutes under TCG.
        args.push("-device".into());
        args.push("virtio-rng-pci".into());
        if self.no_reboot {
            args.push("-no-reboot".into());
        }
        if let Some((code, vars)) = &self.ovmf {
            args.push("-drive".into());
            args.push(prefixed_with(
                "if=pflash,format=raw,unit=0,readonly=on,file=",
                code,
            ));
            args.push("-drive".into());
            args.push(prefixed_with("if=pflash,format=raw,unit=1,file=", vars));
        }
        if let Some(kernel) = &self.kernel {
            args.push("-kernel".into());
            args.push(kernel.into());
            if let Some(initrd) = &self.initrd {
                args.push("-initrd".into());
                args.push(initrd.into());
            }
            args.push("-append".into());
            args.push(self.cmdline().into());
        }
        for (i, disk) in self.disks.iter().enumerate() {
            let format = if disk.extension().is_some_and(|e| e == "qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            args.push("-drive".into());
            let mut spec = OsString::from(format!("if=none,id=disk{i},format={format},file="));
            spec.push(escape_commas(disk));
            args.push(spec);
            args.push("-device".into());
            args.push(format!("virtio-blk-pci,drive=disk{i},bootindex={}", i + 1).into());
        }
        for (name, path) in &self.fw_cfg_files {
            args.push("-fw_cfg".into());
            let mut spec = OsString::from(format!("name={name},file="));
            spec.push(escape_commas(path));
            args.push(spec);
        }
        if let Some(net) = &self.net {
            let mut spec = OsString::from("user,id=net0");
            for fwd in hostfwd {
                spec.push(format!(
                    ",hostfwd=tcp:127.0.0.1:{}-:{}",
                    fwd.host, fwd.guest
                ));
            }
            if let Some((dir, bootfile)) = &net.tftp {
                spec.push(",tftp=");
                spec.push(escape_commas(dir));
                spec.push(format!(",bootfile={bootfile}"));
            }
            args.push("-netdev".into());
            args.push(spec);
            args.push("-device".into());
            args.push("virtio-net-pci,netdev=net0".into());
        }
        for (i, nic) in self.socket_nics.iter().enumerate() {
            let id = format!("sock{i}");
            let (mode, port) = match nic.link {
                SocketLink::Listen(port) => ("listen", port),
                SocketLink::Connect(port) => ("connect", port),
            };
            args.push("-netdev".into());
            args.push(format!("socket,id={id},{mode}=127.0.0.1:{port}").into());
            args.push("-device".into());
            args.push(format!("virtio-net-pci,netdev={id},mac={}", nic.mac).into());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Resolves free ports, the accelerator and the console log, then starts QEMU in its
    /// own process group (so Drop can kill everything it started).
    pub fn spawn(self) -> Result<RunningQemu> {
        if self.kernel.is_none() && self.disks.is_empty() && self.net.is_none() {
            return Err(QemuError::Incomplete {
                what: "kernel, disk or network to boot from",
            });
        }
        let hostfwd = self
            .net
            .as_ref()
            .map(|n| n.hostfwd.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|f| {
                Ok(HostFwd {
                    host: if f.host == 0 { free_port()? } else { f.host },
                    guest: f.guest,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let console_log = match &self.console_log {
            Some(p) => p.clone(),
            None => default_console_log()?,
        };
        // QEMU appends to an existing file; start from an empty one so a wait never
        // matches a previous run's lines.
        std::fs::File::create(&console_log).map_err(|source| QemuError::ConsoleLogCreate {
            path: console_log.clone(),
            source,
        })?;
        let accel = self.accel.unwrap_or_else(|| detect_accel(&self.qemu));
        let args = self.args(accel, &hostfwd, &console_log);
        let stderr_path = console_log.with_extension("qemu-stderr.log");
        let stderr =
            std::fs::File::create(&stderr_path).map_err(|source| QemuError::ConsoleLogCreate {
                path: stderr_path.clone(),
                source,
            })?;
        let child = spawn_in_own_group(
            Command::new(&self.qemu)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr),
        )
        .map_err(|source| QemuError::Spawn {
            program: self.qemu.display().to_string(),
            source,
        })?;
        Ok(RunningQemu {
            child: Some(child),
            monitor: self.monitor.then(|| monitor_socket(&console_log)),
            console: ConsoleLog::new(console_log),
            hostfwd,
            accel,
            args,
        })
    }
}

/// `host` passes the real CPU through under KVM; `max` is TCG's most capable model.
pub(crate) fn cpu_model(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    }
}

/// The monitor socket of a VM whose console goes to `console_log`.
fn monitor_socket(console_log: &Path) -> PathBuf {
    console_log.with_extension("monitor.sock")
}

fn spawn_in_own_group(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0).spawn()
}

fn default_console_log() -> Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("basalt-qemu-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| QemuError::ConsoleLogCreate {
        path: dir.clone(),
        source,
    })?;
    Ok(dir.join("console.log"))
}

/// QEMU's option parser splits on ',' and reads ",," as a literal comma.
fn escape_commas(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn prefixed(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path);
    s
}

fn prefixed_with(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(escape_commas(path));
    s
}

/// Copies an OVMF variable store template to `dest` so a VM can write its own.
pub fn copy_ovmf_vars(template: &Path, dest: &Path) -> Result<PathBuf> {
    std::fs::copy(template, dest).map_err(|source| QemuError::Copy {
        from: template.to_path_buf(),
        to: dest.to_path_buf(),
        source,
    })?;
    Ok(dest.to_path_buf())
}

/// A started QEMU. Dropping it kills QEMU's whole process group.
pub struct RunningQemu {
    child: Option<Child>,
    console: ConsoleLog,
    hostfwd: Vec<HostFwd>,
    accel: Accel,
    args: Vec<OsString>,
    monitor: Option<PathBuf>,
}

impl RunningQemu {
    /// Sends one human-monitor command (e.g. `sendkey ctrl-alt-delete`,
    /// `system_powerdown`) and returns what QEMU answered. Needs [`QemuBuilder::monitor`].
    pub fn monitor_command(&self, command: &str) -> Result<String> {
        use std::io::{Read, Write};
        use std::os::unix::net::UnixStream;
        let path = self.monitor.clone().ok_or(QemuError::Incomplete {
            what: "monitor (call .monitor() on the builder)",
        })?;
        let io = |source| QemuError::Monitor {
            path: path.clone(),
            source,
        };
        // QEMU creates the socket a moment after it starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(io(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(io)?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .map_err(io)?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // The monitor never closes the connection; read until it goes quiet.
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(io(e)),
            }
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// Waits until a console line contains `pattern` and returns that line. Fails early
    /// if QEMU exits; on timeout the error carries the last 40 console lines.
    pub fn wait_for_console(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_console_after(0, pattern, timeout)
            .map(|(line, _)| line)
    }

    /// QEMU's own error output (bad arguments, accelerator failures).
    pub fn qemu_stderr(&self) -> String {
        std::fs::read_to_string(self.console.path().with_extension("qemu-stderr.log"))
            .unwrap_or_default()
    }

    /// Like [`Self::wait_for_console`] but only looks at console text from byte
    /// `after_offset` on; returns the line and the offset past it, so a test can assert
    /// that events happen in order: `let (_, at) = vm.wait_for_console_after(0, "a", t)?;
    /// vm.wait_for_console_after(at, "b", t)?;`
    pub fn wait_for_console_after(
        &mut self,
        after_offset: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<(String, usize)> {
        let child = &mut self.child;
        let result = self
            .console
            .wait_for_after(after_offset, pattern, timeout, || match child {
                Some(c) => c.try_wait().ok().flatten(),
                None => None,
            });
        match result {
            Err(QemuError::ExitedBeforePattern {
                pattern,
                status,
                log,
                tail,
                ..
            }) => Err(QemuError::ExitedBeforePattern {
                pattern,
                status,
                log,
                tail,
                qemu_stderr: self.qemu_stderr(),
            }),
            other => other,
        }
    }

    /// Everything the serial console printed so far.
    pub fn console_output(&self) -> Result<String> {
        self.console.read()
    }

    pub fn console_log_path(&self) -> &Path {
        self.console.path()
    }

    /// The host port forwarded to `guest` (after free-port resolution).
    pub fn host_port(&self, guest: u16) -> Option<u16> {
        self.hostfwd
            .iter()
            .find(|f| f.guest == guest)
            .map(|f| f.host)
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The arguments QEMU was started with (for error messages and debugging).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// Waits for QEMU to exit by itself (e.g. after a guest poweroff, or a reboot with
    /// `no_reboot`).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child
                    .try_wait()
                    .map_err(|source| QemuError::Wait { source })?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(QemuError::ExitTimeout {
                    timeout,
                    log: self.console.path().to_path_buf(),
                    tail: self.console.tail(40),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// QEMU's process id, which is also its process group id; `None` once killed or
    /// detached.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// QEMU's exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => child
                .try_wait()
                .map_err(|source| QemuError::Wait { source }),
            None => Ok(None),
        }
    }

    /// Lets QEMU outlive this handle (a lab VM outlives `basaltctl lab create`): Drop no
    /// longer kills it. Returns its pid (= process group), which the caller must record
    /// to stop it later.
    pub fn detach(mut self) -> Option<u32> {
        // Dropping a std Child neither kills nor waits; QEMU runs on in its own process
        // group and is reparented to init when this process exits.
        self.child.take().map(|child| child.id())
    }

    /// Kills QEMU (and anything in its process group) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // The group id equals QEMU's pid (process_group(0)).
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RunningQemu {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn direct_kernel_boot_args_carry_kernel_initrd_and_console() {
        let b = Qemu::builder()
            .kernel("/img/vmlinuz")
            .initrd("/img/initramfs.zst")
            .append("basalt.debug")
            .memory_mib(2048)
            .no_reboot();
        let args = strs(&b.args(Accel::Tcg, &[], Path::new("/tmp/c.log")));
        let joined = args.join(" ");
        assert!(
            joined.contains("-accel tcg,thread=single -cpu max"),
            "{joined}"
        );
        assert!(joined.contains("-m 2048M"), "{joined}");
        assert!(joined.contains("-serial file:/tmp/c.log"), "{joined}");
        assert!(
            joined.contains("-kernel /img/vmlinuz -initrd /img/initramfs.zst"),
            "{joined}"
        );
        assert!(joined.contains("-no-reboot"), "{joined}");
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[append + 1], "console=ttyS0 basalt.debug");
    }

    #[test]
    fn monitor_goes_to_a_socket_next_to_the_log() {
        let b = Qemu::builder().kernel("k").monitor();
        let args = strs(&b.args(Accel::Tcg, &[], Path::new("/t/console.log")));
        let at = args.iter().position(|a| a == "-monitor").unwrap();
        assert_eq!(
            args[at + 1],
            "unix:/t/console.monitor.sock,server=on,wait=off"
        );
    }

    /// A real QEMU (no guest needed) answers a monitor command.
    #[test]
    fn monitor_command_reaches_a_real_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let vm = Qemu::builder()
            .arg("-S")
            .netdev_user(vec![])
            .monitor()
            .console_log(dir.path().join("console.log"))
            .accel(Accel::Tcg)
            .spawn()
            .unwrap();
        let answer = vm.monitor_command("info status").unwrap();
        assert!(answer.contains("VM status: paused"), "{answer:?}");
    }

    #[test]
    fn explicit_console_is_not_doubled() {
        let b = Qemu::builder()
            .kernel("k")
            .append("console=ttyS0,115200 quiet");
        assert_eq!(b.cmdline(), "console=ttyS0,115200 quiet");
    }

    #[test]
    fn no_kernel_means_no_append() {
        let b = Qemu::builder().disk("/img/basalt.raw").append("ignored");
        let args = strs(&b.args(Accel::Kvm, &[], Path::new("c.log")));
        assert!(!args.contains(&"-append".to_owned()));
        assert!(args.contains(&"if=none,id=disk0,format=raw,file=/img/basalt.raw".to_owned()));
        assert!(args.contains(&"virtio-blk-pci,drive=disk0,bootindex=1".to_owned()));
        assert!(args.join(" ").contains("-accel kvm -cpu host"));
    }

    #[test]
    fn disks_fw_cfg_ovmf_and_network() {
        let b = Qemu::builder()
            .ovmf("/usr/share/OVMF/OVMF_CODE.fd", "/t/vars,1.fd")
            .disk("/t/a.qcow2")
            .disk("/t/b.raw")
            .fw_cfg_file("opt/dev.basalt/config", "/t/config.yaml")
            .netdev_user(vec![(0, 50000)])
            .netdev_user_tftp("/t/pxe", "boot.ipxe");
        let fwd = [HostFwd {
            host: 40123,
            guest: 50000,
        }];
        let args = strs(&b.args(Accel::Tcg, &fwd, Path::new("c.log")));
        assert!(args.contains(
            &"if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd".to_owned()
        ));
        assert!(args.contains(&"if=pflash,format=raw,unit=1,file=/t/vars,,1.fd".to_owned()));
        assert!(args.contains(&"if=none,id=disk0,format=qcow2,file=/t/a.qcow2".to_owned()));
        assert!(args.contains(&"if=none,id=disk1,format=raw,file=/t/b.raw".to_owned()));
        assert!(args.contains(&"name=opt/dev.basalt/config,file=/t/config.yaml".to_owned()));
        assert!(
            args.contains(
                &"user,id=net0,hostfwd=tcp:127.0.0.1:40123-:50000,tftp=/t/pxe,bootfile=boot.ipxe"
                    .to_owned()
            )
        );
        assert!(args.contains(&"virtio-net-pci,netdev=net0".to_owned()));
    }

    #[test]
    fn socket_links_join_two_vms_after_the_user_network() {
        let listen = Qemu::builder()
            .netdev_user(vec![(0, 50000)])
            .netdev_socket(SocketLink::Listen(40500), "52:54:00:00:05:02");
        let args = strs(&listen.args(Accel::Tcg, &[], Path::new("c.log")));
        let user = args
            .iter()
            .position(|a| a.starts_with("user,id=net0"))
            .unwrap();
        let sock = args
            .iter()
            .position(|a| a == "socket,id=sock0,listen=127.0.0.1:40500")
            .unwrap();
        assert!(user < sock, "the user NIC stays eth0: {args:?}");
        assert_eq!(
            args[sock + 2],
            "virtio-net-pci,netdev=sock0,mac=52:54:00:00:05:02"
        );
        let connect =
            Qemu::builder().netdev_socket(SocketLink::Connect(40500), "52:54:00:00:05:03");
        let args = strs(&connect.args(Accel::Tcg, &[], Path::new("c.log")));
        assert!(args.contains(&"socket,id=sock0,connect=127.0.0.1:40500".to_owned()));
    }

    #[test]
    fn image_dir_reports_the_missing_artifact() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"k").unwrap();
        let err = image_dir_from(dir.path(), &["vmlinuz", "initramfs.zst"]).unwrap_err();
        assert!(
            err.to_string().contains("does not hold initramfs.zst"),
            "{err}"
        );
        std::fs::write(dir.path().join("initramfs.zst"), b"i").unwrap();
        assert_eq!(
            image_dir_from(dir.path(), &["vmlinuz", "initramfs.zst"]).unwrap(),
            dir.path()
        );
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    fn spawn_without_boot_source_is_refused() {
        let err = Qemu::builder().spawn().err().unwrap();
        assert!(matches!(err, QemuError::Incomplete { .. }), "{err}");
    }

    /// A stand-in "QEMU" (a shell script) exercises spawn, console capture, host port
    /// resolution and Drop's process-group kill without an image.
    #[test]
    fn spawned_process_is_watched_and_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-qemu");
        let pidfile = dir.path().join("grandchild.pid");
        // Find the -serial file: argument and write to it like a guest would; start a
        // grandchild that must die with the group.
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in file:*) log=\"${{1#file:}}\";; esac; shift; done\n\
                 sleep 600 & echo $! > {pid}\n\
                 echo 'kernel says hi' >> \"$log\"; sleep 0.2; echo 'basalt-init 0.1.0: starting' >> \"$log\"\n\
                 exec sleep 600\n",
                pid = pidfile.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let log = dir.path().join("console.log");
        let mut vm = Qemu::builder()
            .qemu_binary(&fake)
            .kernel("k")
            .netdev_user(vec![(0, 50000)])
            .console_log(&log)
            .accel(Accel::Tcg)
            .spawn()
            .unwrap();
        let line = vm
            .wait_for_console("basalt-init", Duration::from_secs(10))
            .unwrap();
        assert_eq!(line, "basalt-init 0.1.0: starting");
        assert_eq!(vm.console_log_path(), log);
        assert!(vm.host_port(50000).is_some_and(|p| p != 0));
        let err = vm
            .wait_for_console("never printed", Duration::from_millis(300))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("kernel says hi") && msg.contains("never printed"),
            "{msg}"
        );
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        drop(vm);
        // The grandchild was in QEMU's group, so it is gone (or a zombie of init) now.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let alive = std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
            if !alive {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "grandchild {grandchild} survived Drop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn exit_before_pattern_is_reported_with_status() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-qemu");
        std::fs::write(
            &fake,
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in file:*) log=\"${1#file:}\";; esac; shift; done\n\
             echo 'Kernel panic - not syncing' >> \"$log\"; exit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut vm = Qemu::builder()
            .qemu_binary(&fake)
            .kernel("k")
            .console_log(dir.path().join("c.log"))
            .accel(Accel::Tcg)
            .spawn()
            .unwrap();
        let err = vm
            .wait_for_console("machined", Duration::from_secs(10))
            .unwrap_err();
        match &err {
            QemuError::ExitedBeforePattern { status, tail, .. } => {
                assert_eq!(status.code(), Some(3));
                assert!(tail.contains("Kernel panic"), "{tail}");
            }
            other => panic!("unexpected error: {other}"),
        }
        assert_eq!(
            vm.wait_for_exit(Duration::from_secs(1)).unwrap().code(),
            Some(3)
        );
    }
}
