//! `basalt-image build`: from the lock, the cache and the workspace's binaries to every
//! artifact in the output directory. Each step is a function over plain data; the
//! orchestration below reads top to bottom like the boot chain it produces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::fetch::Cache;
use crate::lock::{Lock, Role};
use crate::modules::{KernelModules, ModulePlan, parse_wanted};
use crate::rootfs::{
    Universe, add_foreign_binary, add_usr_merge_links, ca_bundle, forbidden_entries,
};
use crate::tree::{Content, Node, Tree};

#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Output directory for the artifacts.
    #[arg(short, long, default_value = "out")]
    pub output: PathBuf,
    /// Use prebuilt `DIR/basalt-init` and `DIR/machined` instead of building them.
    #[arg(long, value_name = "DIR")]
    pub binaries: Option<PathBuf>,
    /// Kubernetes inputs: `DIR/bin/kubelet` (required), `DIR/bin/kubectl`, `DIR/images/*.tar`.
    #[arg(long, value_name = "DIR")]
    pub kubernetes: Option<PathBuf>,
    /// Also write a zstd-compressed copy of the raw disk image.
    #[arg(long)]
    pub raw_zst: bool,
}

/// Version of the image: the workspace version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Kernel command line of every boot path. ttyS0 comes last so /dev/console is the
/// serial port (what QEMU tests and most servers' SOL read).
pub fn cmdline() -> String {
    "console=tty0 console=ttyS0,115200 basalt.platform=metal panic=10".to_owned()
}

/// Files the initramfs carries for the rootfs, under their rootfs path below this
/// directory: machined and the shared libraries it loads. basalt-init bind-mounts each
/// over the same path of the rootfs before switch_root. Executed from the xz squashfs
/// with 1 MiB blocks, every page fault decompresses a whole block: ~1.2 s of TCG boot
/// for machined alone, ~0.5 s more for libc and the loader (measured, docs/performance.md).
pub const PRELOAD_DIR: &str = "/preload";

/// Modules the initramfs carries: what basalt-init needs to mount rootfs.sqsh.
pub const EARLY_MODULES: &str = "squashfs\nloop\n";

/// Modules machined loads from the rootfs in the background (basalt-init no longer
/// does: it only mounts the rootfs): disks, network, file systems, and what kube-proxy
/// (iptables-nft), flannel and containerd need. Listed in the order the boot needs them
/// (machined moves a module a phase waits for to the front anyway): the virtio block
/// driver and fw_cfg for the config, the NIC for the API, then SCSI, the file systems
/// and netfilter; squashfs
/// and loop, which init loaded already, last.
pub const NODE_MODULES: &str = "\
virtio_pci
virtio_blk
qemu_fw_cfg optional
virtio_net
virtio_scsi
virtio_rng optional
virtio_console optional
crc32c_generic
ext4
vfat
nls_cp437
nls_iso8859-1
nls_ascii
isofs
efivarfs optional
overlay
bridge
br_netfilter
veth
vxlan
8021q optional
tun optional
nf_conntrack
nf_nat
nf_tables
nft_compat
nft_chain_nat
nft_ct optional
nft_masq
nft_nat optional
nft_reject_inet optional
nft_fib_inet optional
nft_counter optional
xt_MASQUERADE
xt_conntrack
xt_comment
xt_mark
xt_addrtype
xt_multiport
xt_statistic
xt_nat optional
xt_tcpudp optional
xt_physdev optional
xt_set optional
ipt_REJECT optional
ip6t_REJECT optional
iptable_nat optional
iptable_filter optional
iptable_mangle optional
ip6table_nat optional
ip6table_filter optional
ip6table_mangle optional
ip_vs optional
ip_vs_rr optional
ip_vs_wrr optional
ip_vs_sh optional
squashfs
loop
";

/// Modules the rootfs carries (in modules.dep, with their closure) without loading them
/// at boot: what `machine.kernel.modules` may ask for beyond NODE_MODULES. The kernel
/// package has ~4000 modules, far more than the 40 MB initramfs budget holds, so this
/// is a chosen list; a module outside it is refused by machined naming the config field.
pub const AVAILABLE_MODULES: &str = "\
dummy
nbd
wireguard
xfs
";

/// CNI plugins shipped in /usr/lib/cni (what a flannel/bridge conflist delegates to).
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback", "portmap"];

/// Files taken from the pinned packages (plus their shared libraries).
pub const ROOTFS_FILES: &[&str] = &[
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/sbin/runc",
    "/usr/bin/runc",
    "/sbin/mke2fs",
    "/sbin/mkfs.ext4",
    "/sbin/e2fsck",
    "/sbin/fsck.ext4",
    "/sbin/resize2fs",
    "/sbin/tune2fs",
    "/etc/mke2fs.conf",
    "/usr/sbin/xtables-nft-multi",
    "/usr/sbin/iptables-nft",
    "/usr/sbin/iptables-nft-save",
    "/usr/sbin/iptables-nft-restore",
    "/usr/sbin/ip6tables-nft",
    "/usr/sbin/ip6tables-nft-save",
    "/usr/sbin/ip6tables-nft-restore",
    "/usr/lib/x86_64-linux-gnu/xtables",
    "/usr/sbin/nft",
    // dlopen()ed by glibc for /etc/nsswitch.conf, invisible to DT_NEEDED.
    "/lib/x86_64-linux-gnu/libnss_files.so.2",
    "/lib/x86_64-linux-gnu/libnss_dns.so.2",
];

/// `update-alternatives` would create these in postinst; we pick nft mode ourselves.
const IPTABLES_LINKS: &[&str] = &[
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
];

pub const IMAGES_DIR: &str = "/usr/share/basalt/images";

/// The unpacked inputs one build works from.
pub struct BuildInputs {
    pub kernel_dir: PathBuf,
    pub kver: String,
    pub stub: PathBuf,
    pub systemd_boot: PathBuf,
    pub universe: Universe,
    pub etcd_version: String,
}

/// `--kubernetes DIR`, checked: kubelet must be there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesInputs {
    pub kubelet: PathBuf,
    pub kubectl: Option<PathBuf>,
    /// `DIR/images/*.tar`, sorted by name.
    pub images: Vec<PathBuf>,
}

impl KubernetesInputs {
    pub fn scan(dir: &Path) -> anyhow::Result<Self> {
        let kubelet = dir.join("bin/kubelet");
        if !kubelet.is_file() {
            bail!(
                "--kubernetes {}: {} is missing (the directory must hold bin/kubelet, optionally bin/kubectl and images/*.tar)",
                dir.display(),
                kubelet.display()
            );
        }
        let kubectl = Some(dir.join("bin/kubectl")).filter(|p| p.is_file());
        let mut images = Vec::new();
        let images_dir = dir.join("images");
        if images_dir.is_dir() {
            for e in std::fs::read_dir(&images_dir)
                .with_context(|| format!("reading {}", images_dir.display()))?
            {
                let p = e?.path();
                if p.is_file() && p.extension().is_some_and(|e| e == "tar") {
                    images.push(p);
                }
            }
        }
        images.sort();
        Ok(KubernetesInputs {
            kubelet,
            kubectl,
            images,
        })
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_message(what.to_owned());
    b
}

/// End a step's progress display and log how long it took.
fn done(s: ProgressBar) {
    let (msg, took) = (s.message(), s.elapsed());
    s.finish_and_clear();
    eprintln!("{msg}: {:.1}s", took.as_secs_f64());
}

fn spinner(what: &str) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message(what.to_owned());
    s.enable_steady_tick(std::time::Duration::from_millis(200));
    s
}

pub fn gather_inputs(cache: &Cache, lock: &Lock) -> anyhow::Result<BuildInputs> {
    let b = bar(lock.packages.len() as u64, "unpacking packages");
    let mut dirs = BTreeMap::new();
    for p in &lock.packages {
        dirs.insert(p.name.clone(), crate::deb::extracted(cache, p)?);
        b.inc(1);
    }
    done(b);
    let mut kernel = None;
    let mut stub = None;
    for p in lock.packages.iter().filter(|p| p.role == Role::Boot) {
        let dir = &dirs[&p.name];
        let modules = dir.join("lib/modules");
        if modules.is_dir() {
            let kver = std::fs::read_dir(&modules)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .next()
                .with_context(|| format!("{} has an empty lib/modules", p.name))?;
            kernel = Some((dir.clone(), kver));
        }
        let efi = dir.join("usr/lib/systemd/boot/efi");
        if efi.join("linuxx64.efi.stub").is_file() {
            stub = Some(efi);
        }
    }
    let (kernel_dir, kver) =
        kernel.context("no boot package of the lock ships a kernel (lib/modules/<kver>)")?;
    let efi = stub.context(
        "no boot package of the lock ships systemd's linuxx64.efi.stub (systemd-boot-efi)",
    )?;
    let packages = lock
        .rootfs()
        .map(|p| (p.name.clone(), dirs[&p.name].clone()))
        .collect();
    let etcd_version = lock
        .get("etcd-server")
        .map(|p| p.version.clone())
        .context("etcd-server is not in the lock")?;
    Ok(BuildInputs {
        kernel_dir,
        kver,
        stub: efi.join("linuxx64.efi.stub"),
        systemd_boot: efi.join("systemd-bootx64.efi"),
        universe: Universe { packages },
        etcd_version,
    })
}

/// Build (or take) basalt-init and machined. Remapped path prefixes keep the binaries
/// identical whatever directory the workspace, CARGO_HOME or the toolchain live in.
fn workspace_binaries(
    workspace: &Path,
    prebuilt: Option<&Path>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let Some(dir) = prebuilt {
        let (init, machined) = (dir.join("basalt-init"), dir.join("machined"));
        for f in [&init, &machined] {
            if !f.is_file() {
                bail!("--binaries {}: {} is missing", dir.display(), f.display());
            }
        }
        return Ok((init, machined));
    }
    let target = workspace.join("target/image");
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let mut flags = vec![
        format!("--remap-path-prefix={}=/basalt", workspace.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ];
    if let Some(s) = sysroot.filter(|s| !s.is_empty()) {
        flags.push(format!("--remap-path-prefix={s}=/rustc-sysroot"));
    }
    let s = spinner("building basalt-init and machined (release)");
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "basalt-init",
            "-p",
            "machined",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"))
        .env_remove("RUSTFLAGS")
        .output()
        .context("running cargo build for basalt-init and machined")?;
    done(s);
    if !out.status.success() {
        bail!(
            "cargo build --release -p basalt-init -p machined failed (or use --binaries DIR):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rel = target.join("release");
    Ok((rel.join("basalt-init"), rel.join("machined")))
}

fn os_release() -> String {
    format!(
        "NAME=\"Basalt\"\nPRETTY_NAME=\"Basalt {VERSION}\"\nID=basalt\nVERSION=\"{VERSION}\"\nVERSION_ID={VERSION}\nIMAGE_ID=basalt\nIMAGE_VERSION={VERSION}\nHOME_URL=\"https://example.invalid/basalt\"\n"
    )
}

/// Add modules of `plan` under lib/modules/<kver>, decompressed, with modules.dep and
/// modules.basalt.
fn add_modules(tree: &mut Tree, km: &KernelModules, plan: &ModulePlan) -> anyhow::Result<()> {
    let base = format!("/usr/lib/modules/{}", km.kver);
    for (rel, _) in plan.modules.values() {
        let src = km.dir.join(rel);
        let shipped = crate::modules::shipped_path(rel);
        let content = if shipped == *rel {
            Content::Source(src)
        } else {
            let raw = std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            Content::Bytes(
                crate::modules::decompress_module(rel, raw)
                    .with_context(|| format!("decompressing {}", src.display()))?,
            )
        };
        tree.file(&format!("{base}/{shipped}"), content, 0o644)?;
    }
    tree.bytes(&format!("{base}/modules.dep"), plan.modules_dep(), 0o644)?;
    tree.bytes(
        &format!("{base}/modules.basalt"),
        plan.modules_basalt(),
        0o644,
    )?;
    Ok(())
}

/// Drivers on the way to the API (the config sources' and the NIC's), with their
/// modules.dep closure: machined loads them from the initramfs copy (see PRELOAD_DIR)
/// while the rest of NODE_MODULES still comes from the squashfs in the background.
pub const PRELOAD_MODULES: &str = "\
virtio_pci
virtio_blk
virtio_scsi
qemu_fw_cfg
virtio_net
";

/// The files basalt-init binds over the rootfs from the initramfs (see PRELOAD_DIR), by
/// rootfs path: machined and the libraries it needs, the /etc template init copies,
/// the rootfs' modules.dep and modules.basalt, and the PRELOAD_MODULES files. Only regular files: symlinks and the module lists
/// stay the rootfs' own.
fn preload(
    u: &Universe,
    machined: &Path,
    km: &KernelModules,
    rootfs: &Tree,
) -> anyhow::Result<Vec<(String, Node)>> {
    let mut hot = Tree::default();
    add_usr_merge_links(&mut hot)?;
    add_foreign_binary(u, &mut hot, "/usr/sbin/machined", machined)?;
    add_modules(&mut hot, km, &km.plan(&parse_wanted(PRELOAD_MODULES)?)?)?;
    let template = format!("{ETC_TEMPLATE}/");
    let lists = format!("/usr/lib/modules/{}/modules.", km.kver);
    // The template, and the rootfs' own module lists machined reads first thing.
    let etc = rootfs
        .nodes
        .iter()
        .filter(|(p, _)| p.starts_with(&template) || p.starts_with(&lists))
        .map(|(p, n)| (p.clone(), n.clone()));
    Ok(hot
        .nodes
        .into_iter()
        // The PRELOAD_MODULES plan's own lists are not the rootfs' (etc carries those).
        .filter(|(p, _)| !p.starts_with(&lists))
        .chain(etc)
        .filter(|(_, n)| matches!(n, Node::File { .. }))
        .collect())
}

/// NODE_MODULES (loaded at boot) plus AVAILABLE_MODULES (carried, listed in modules.dep,
/// loaded only on request): modules.basalt names only the former.
fn node_modules_plan(km: &KernelModules) -> anyhow::Result<ModulePlan> {
    let node = parse_wanted(NODE_MODULES)?;
    let mut all = node.clone();
    all.extend(parse_wanted(AVAILABLE_MODULES)?);
    let mut plan = km.plan(&all)?;
    plan.wanted
        .retain(|w| node.iter().any(|n| n.name == w.name));
    Ok(plan)
}

pub struct Staged {
    pub rootfs: Tree,
    pub extras: Vec<crate::sbom::ExtraInput>,
    pub module_log: Vec<String>,
}

/// The rootfs tree: selected package files, machined, /etc template, modules, the etcd
/// image and the Kubernetes inputs. Refuses a tree with a shell or interpreter in it.
pub fn stage_rootfs(
    inputs: &BuildInputs,
    km: &KernelModules,
    machined: &Path,
    kubernetes: Option<&KubernetesInputs>,
    epoch: u64,
) -> anyhow::Result<Staged> {
    let u = &inputs.universe;
    let mut t = Tree::default();
    add_usr_merge_links(&mut t)?;
    for d in [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/var",
        "/etc",
        "/mnt",
        // STATE's mount point: the rootfs is read-only, so machined cannot create it.
        "/system/state",
        "/opt/cni/bin",
        "/usr/local/bin",
    ] {
        t.dir(d, 0o755)?;
    }
    t.dir("/tmp", 0o1777)?;
    for f in ROOTFS_FILES {
        u.add(&mut t, f)?;
    }
    for p in CNI_PLUGINS {
        u.add(&mut t, &format!("/usr/lib/cni/{p}"))?;
    }
    for l in IPTABLES_LINKS {
        t.symlink(&format!("/usr/sbin/{l}"), "xtables-nft-multi")?;
    }
    let ca = u
        .packages
        .iter()
        .find(|(n, _)| n == "ca-certificates")
        .map(|(_, d)| d.join("usr/share/ca-certificates"))
        .context("ca-certificates is not in the lock")?;
    t.bytes("/etc/ssl/certs/ca-certificates.crt", ca_bundle(&ca)?, 0o644)?;
    t.bytes("/usr/lib/os-release", os_release(), 0o644)?;
    t.symlink("/etc/os-release", "../usr/lib/os-release")?;
    t.bytes(
        "/etc/hosts",
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    t.bytes("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n", 0o644)?;
    t.bytes("/etc/protocols", "ip\t0\tIP\nicmp\t1\tICMP\nigmp\t2\tIGMP\ntcp\t6\tTCP\nudp\t17\tUDP\nipv6\t41\tIPv6\ngre\t47\tGRE\nesp\t50\tIPSEC-ESP\nah\t51\tIPSEC-AH\nipv6-icmp\t58\tIPv6-ICMP\nsctp\t132\tSCTP\n", 0o644)?;
    t.bytes(
        "/etc/passwd",
        "root:x:0:0:root:/root:/usr/sbin/nologin\n",
        0o644,
    )?;
    t.bytes("/etc/group", "root:x:0:\n", 0o644)?;
    t.bytes("/etc/hostname", "basalt\n", 0o644)?;
    t.bytes("/etc/resolv.conf", "", 0o644)?;
    t.symlink("/etc/mtab", "../proc/self/mounts")?;
    add_foreign_binary(u, &mut t, "/usr/sbin/machined", machined)?;
    // The binary itself travels in the initramfs (PRELOAD_DIR), which basalt-init
    // bind-mounts over this placeholder: /usr/sbin/machined is machined at run time. The
    // libraries stay here too (other programs use them); their initramfs copies are
    // bound over them the same way.
    t.bytes("/usr/sbin/machined", Vec::new(), 0o755)?;

    let node_plan = node_modules_plan(km)?;
    add_modules(&mut t, km, &node_plan)?;

    // etcd runs as a container from this image; the binary itself is not in the rootfs.
    let mut layer = Tree::default();
    add_usr_merge_links(&mut layer)?;
    u.add(&mut layer, "/usr/bin/etcd")?;
    let etcd_bin = match layer.nodes.remove("/usr/bin/etcd") {
        Some(Node::File { content, .. }) => content,
        _ => bail!("etcd-server does not ship /usr/bin/etcd as a file"),
    };
    layer.nodes.retain(|p, _| p != "/usr/bin");
    layer.file("/usr/local/bin/etcd", etcd_bin, 0o755)?;
    layer.dir("/tmp", 0o1777)?;
    layer.dir("/var/lib/etcd", 0o700)?;
    let reference = crate::oci::etcd_ref(&inputs.etcd_version);
    let archive = crate::oci::image_archive(&layer, &["/usr/local/bin/etcd"], &reference, epoch)?;
    t.bytes(&format!("{IMAGES_DIR}/etcd.oci.tar"), archive, 0o644)?;

    let mut extras = Vec::new();
    if let Some(k) = kubernetes {
        let bins = std::iter::once(("kubelet", &k.kubelet))
            .chain(k.kubectl.iter().map(|p| ("kubectl", p)));
        for (name, src) in bins {
            add_foreign_binary(u, &mut t, &format!("/usr/bin/{name}"), src)?;
            extras.push(crate::sbom::ExtraInput {
                name: format!("kubernetes/bin/{name}"),
                sha256: crate::fetch::sha256_file(src)?,
            });
        }
        for tar in &k.images {
            let name = tar
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            t.file(
                &format!("{IMAGES_DIR}/{name}"),
                Content::Source(tar.clone()),
                0o644,
            )?;
            extras.push(crate::sbom::ExtraInput {
                name: format!("kubernetes/images/{name}"),
                sha256: crate::fetch::sha256_file(tar)?,
            });
        }
    }
    relocate_etc(&mut t)?;
    let bad = forbidden_entries(&t);
    if !bad.is_empty() {
        bail!(
            "the rootfs would contain a shell or interpreter: {}",
            bad.join(", ")
        );
    }
    Ok(Staged {
        rootfs: t,
        extras,
        module_log: node_plan.log,
    })
}

/// basalt-init mounts a tmpfs on /etc and fills it from this template, so /etc in the
/// squashfs is only an empty mount point.
pub const ETC_TEMPLATE: &str = "/usr/share/basalt/etc";

fn relocate_etc(t: &mut Tree) -> anyhow::Result<()> {
    let etc: Vec<(String, Node)> = t
        .nodes
        .iter()
        .filter(|(p, _)| p.starts_with("/etc/"))
        .map(|(p, n)| (p.clone(), n.clone()))
        .collect();
    t.dir(ETC_TEMPLATE, 0o755)?;
    for (path, node) in etc {
        t.nodes.remove(&path);
        t.insert(&format!("{ETC_TEMPLATE}{}", &path[4..]), node)?;
    }
    Ok(())
}

fn mksquashfs_version() -> String {
    Command::new("mksquashfs")
        .arg("-version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.split_whitespace().nth(2).unwrap_or("").to_owned())
        })
        .unwrap_or_default()
}

/// rootfs.sqsh from the staged tree: xz (x86 BCJ), root-owned, every time = epoch. mksquashfs
/// (≥ 4.4) writes the same image whatever the number of threads; repro-check verifies.
fn squash(tree: &Tree, dest: &Path, epoch: u64) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("creating the rootfs staging directory")?;
    let root = tmp.path().join("rootfs");
    std::fs::create_dir(&root)?;
    tree.write_to(&root)?;
    let _ = std::fs::remove_file(dest);
    let s = spinner("mksquashfs rootfs");
    let out = Command::new("mksquashfs")
        .arg(&root)
        .arg(dest)
        .args([
            "-noappend",
            "-all-root",
            "-no-xattrs",
            // xz with the x86 branch filter packs the Go and Rust binaries that make up
            // most of the rootfs 12 % tighter than zstd -19 (33.7 vs 38.5 MB measured),
            // which keeps the initramfs inside its 40 MB budget.
            "-comp",
            "xz",
            "-Xbcj",
            "x86",
            "-b",
            "1M",
            "-no-progress",
        ])
        .args([
            "-mkfs-time",
            &epoch.to_string(),
            "-all-time",
            &epoch.to_string(),
        ])
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .context("running mksquashfs (apt-get install squashfs-tools)")?;
    done(s);
    if !out.status.success() {
        bail!(
            "mksquashfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn zstd_bytes(data: &[u8], level: i32) -> anyhow::Result<Vec<u8>> {
    // Single-threaded streaming encoder: same bytes on any machine.
    Ok(zstd::stream::encode_all(data, level)?)
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub fn uki_name() -> String {
    format!("basalt-{VERSION}.efi")
}

pub fn raw_name() -> String {
    format!("basalt-{VERSION}-amd64.raw")
}

pub fn build(workspace: &Path, cache: &Cache, lock: &Lock, args: &BuildArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let epoch = lock.source_date_epoch;
    let out = &args.output;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    // Check the Kubernetes inputs before the long steps.
    let kubernetes = args
        .kubernetes
        .as_deref()
        .map(KubernetesInputs::scan)
        .transpose()?;
    let inputs = gather_inputs(cache, lock)?;
    let km = KernelModules::scan(&inputs.kernel_dir.join("lib/modules").join(&inputs.kver))?;
    let (init_bin, machined_bin) = workspace_binaries(workspace, args.binaries.as_deref())?;

    // Rootfs.
    let staged = stage_rootfs(&inputs, &km, &machined_bin, kubernetes.as_ref(), epoch)?;
    for l in &staged.module_log {
        eprintln!("{l}");
    }
    let sqsh = out.join("rootfs.sqsh");
    squash(&staged.rootfs, &sqsh, epoch)?;

    // Initramfs: /init, the early modules, the rootfs.
    let mut initrd = Tree::default();
    add_usr_merge_links(&mut initrd)?;
    for d in ["/proc", "/sys", "/run", "/tmp"] {
        initrd.dir(d, 0o755)?;
    }
    initrd.insert(
        "/dev/console",
        Node::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )?;
    add_foreign_binary(&inputs.universe, &mut initrd, "/init", &init_bin)?;
    let early = km.plan(&parse_wanted(EARLY_MODULES)?)?;
    add_modules(&mut initrd, &km, &early)?;
    for (path, node) in preload(&inputs.universe, &machined_bin, &km, &staged.rootfs)? {
        initrd.insert(&format!("{PRELOAD_DIR}{path}"), node)?;
    }
    initrd.file("/rootfs.sqsh", Content::Source(sqsh.clone()), 0o644)?;
    let mut cpio = Vec::new();
    crate::cpio::write(&initrd, epoch, &mut cpio)?;
    let s = spinner("compressing initramfs");
    let initramfs = zstd_bytes(&cpio, 9)?;
    done(s);
    write(&out.join("initramfs.zst"), &initramfs)?;

    // PXE bundle.
    let vmlinuz = std::fs::read(
        inputs
            .kernel_dir
            .join("boot")
            .join(format!("vmlinuz-{}", inputs.kver)),
    )?;
    write(&out.join("vmlinuz"), &vmlinuz)?;
    let cmdline = cmdline();
    write(&out.join("cmdline"), format!("{cmdline}\n").as_bytes())?;
    write(
        &out.join("boot.ipxe"),
        format!("#!ipxe\n# Basalt {VERSION}: files are fetched relative to this script's URL.\nkernel vmlinuz {cmdline}\ninitrd initramfs.zst\nboot\n").as_bytes(),
    )?;

    // UKI.
    let stub = std::fs::read(&inputs.stub)
        .with_context(|| format!("reading {}", inputs.stub.display()))?;
    let osrel = os_release();
    let uki = crate::uki::add_sections(
        &stub,
        &[
            (".osrel", osrel.as_bytes()),
            (".cmdline", cmdline.as_bytes()),
            (".initrd", &initramfs),
            (".linux", &vmlinuz),
        ],
    )?;
    write(&out.join(uki_name()), &uki)?;

    // Raw disk.
    let sd_boot = std::fs::read(&inputs.systemd_boot)
        .with_context(|| format!("reading {}", inputs.systemd_boot.display()))?;
    let loader_conf =
        b"timeout 0\ndefault basalt-*\neditor no\nauto-entries no\nauto-firmware no\n";
    let esp_content = crate::disk::EspContent {
        files: vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), &sd_boot[..]),
            ("EFI/systemd/systemd-bootx64.efi".into(), &sd_boot[..]),
            ("loader/loader.conf".into(), &loader_conf[..]),
            ("EFI/Linux/basalt-A+3.efi".into(), &uki[..]),
        ],
    };
    let uki_hash = Sha256::digest(&uki);
    let esp_size = crate::disk::esp_size(uki.len() as u64, 2 * sd_boot.len() as u64);
    let volume_id = u32::from_le_bytes([uki_hash[0], uki_hash[1], uki_hash[2], uki_hash[3]]);
    let s = spinner("writing the raw disk image");
    let esp = crate::disk::build_esp(esp_size, &esp_content, epoch, volume_id)?;
    let disk = crate::disk::build_disk(
        &esp,
        crate::disk::derived_guid("basalt-disk", &uki_hash),
        crate::disk::derived_guid("basalt-esp", &uki_hash),
    );
    write(&out.join(raw_name()), &disk)?;
    if args.raw_zst {
        write(
            &out.join(format!("{}.zst", raw_name())),
            &zstd_bytes(&disk, 9)?,
        )?;
    } else {
        let _ = std::fs::remove_file(out.join(format!("{}.zst", raw_name())));
    }
    done(s);

    // SBOM and sums.
    let cargo_lock =
        std::fs::read_to_string(workspace.join("Cargo.lock")).context("reading Cargo.lock")?;
    let sbom = crate::sbom::document(
        lock,
        &cargo_lock,
        &staged.extras,
        VERSION,
        &[("squashfs-tools".into(), mksquashfs_version())],
    )?;
    write(
        &out.join("sbom.spdx.json"),
        format!("{}\n", serde_json::to_string_pretty(&sbom)?).as_bytes(),
    )?;
    let mut names: Vec<String> = vec![
        "rootfs.sqsh".into(),
        "initramfs.zst".into(),
        "vmlinuz".into(),
        "cmdline".into(),
        "boot.ipxe".into(),
        uki_name(),
        raw_name(),
        "sbom.spdx.json".into(),
    ];
    if args.raw_zst {
        names.push(format!("{}.zst", raw_name()));
    }
    names.sort();
    let mut sums = String::new();
    let mut table = Vec::new();
    for n in &names {
        let data = std::fs::read(out.join(n)).with_context(|| format!("reading back {n}"))?;
        sums.push_str(&format!("{}  {n}\n", sha256(&data)));
        table.push((n.clone(), data.len()));
    }
    write(&out.join("SHA256SUMS"), sums.as_bytes())?;

    eprintln!("{:<32} {:>12}", "artifact", "size");
    for (n, size) in table {
        eprintln!("{n:<32} {:>9.1} MiB", size as f64 / 1048576.0);
    }
    eprintln!("built into {} in {:.0?}", out.display(), started.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_dir_without_kubelet_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/kubectl"), "x").unwrap();
        let err = KubernetesInputs::scan(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bin/kubelet is missing"), "{err}");
    }

    #[test]
    fn kubernetes_dir_lists_binaries_and_sorted_image_tars() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::fs::write(dir.path().join("bin/kubelet"), "x").unwrap();
        for f in ["pause.tar", "apiserver.tar", "README"] {
            std::fs::write(dir.path().join("images").join(f), "x").unwrap();
        }
        let k = KubernetesInputs::scan(dir.path()).unwrap();
        assert_eq!(k.kubectl, None);
        let names: Vec<_> = k
            .images
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["apiserver.tar", "pause.tar"]);
    }

    #[test]
    fn cmdline_puts_serial_console_last() {
        let c = cmdline();
        assert!(c.find("console=tty0").unwrap() < c.find("console=ttyS0").unwrap());
        assert!(c.contains("basalt.platform=metal"));
    }
}
