//! The boot chain on a real image: kernel → basalt-init (/init) → switch_root →
//! machined as PID 1 → the sequencer's phases; and the way down on ctrl-alt-del.
//! Needs BASALT_IMAGE_DIR (see `basalt_tests_qemu::image_dir`).

mod node_support;

use std::time::Duration;

use basalt_config::KernelModule;
use basalt_config::client_config::Role;
use basalt_tests_qemu::{OverlayFile, Qemu, RunningQemu, image_dir, initrd_with_overlay};

/// TCG is slow and CI machines are busy: generous, but a hung boot still ends.
const STEP: Duration = Duration::from_secs(240);

fn boot(extra_cmdline: &str) -> RunningQemu {
    let dir = image_dir().unwrap();
    Qemu::builder()
        .kernel(dir.join("vmlinuz"))
        .initrd(dir.join("initramfs.zst"))
        .append(format!("basalt.panic_reboot=1 {extra_cmdline}"))
        .memory_mib(1536)
        .no_reboot()
        .monitor()
        .spawn()
        .unwrap()
}

/// Waits for each pattern in turn, each strictly after the previous one.
fn expect_lines(vm: &mut RunningQemu, patterns: &[&str]) -> Vec<String> {
    let mut at = 0;
    let mut lines = Vec::new();
    for pattern in patterns {
        let (line, next) = vm
            .wait_for_console_after(at, pattern, STEP)
            .unwrap_or_else(|e| panic!("{e}"));
        at = next;
        lines.push(line);
    }
    lines
}

#[test]
fn init_switches_root_and_machined_runs_the_sequence() {
    // basalt.debug makes init log every module; the bad panic_reboot value must be
    // reported and ignored (the later valid word wins anyway).
    let mut vm = boot("basalt.debug basalt.panic_reboot=soon basalt.panic_reboot=1");
    let version = env!("CARGO_PKG_VERSION");
    let lines = expect_lines(
        &mut vm,
        &[
            &format!("basalt-init {version}: starting"),
            "basalt-init: mounted /dev /proc /sys /run (",
            "basalt-init: kernel command line: basalt.panic_reboot=soon: not a number",
            "basalt-init: initramfs: loaded squashfs (",
            "built in) from /lib/modules/",
            "basalt-init: attached /rootfs.sqsh to /dev/loop",
            "basalt-init: rootfs mounted: /dev/loop",
            // machined, its libraries, the /etc template and the boot drivers come from
            // the initramfs, not the xz squashfs.
            "files of /preload over the rootfs (machined, its libraries, the /etc template, the boot drivers)",
            "basalt-init: mounted tmpfs on /etc /tmp /var",
            "basalt-init: moved /dev /proc /sys /run into the new root",
            "basalt-init: freed the initramfs",
            "basalt-init: switch_root done",
            "basalt-init: exec /sbin/machined",
            "machined: machined",
            "machined: phase cgroups done (",
            "machined: phase sysctls done (",
            "machined: phase hostname done (",
            // The node's modules load in the background; this phase waits only for the
            // storage and fw_cfg drivers the config sources need.
            "machined: phase modules done (",
            // No config anywhere: maintenance mode (the wired sequencer, docs/boot.md).
            "machined: phase config done (",
            "machined: phase disks done (",
            "machined: maintenance mode: API listening on",
        ],
    );
    assert!(
        lines[13].contains("starting as PID 1"),
        "machined must be PID 1 after exec: {}",
        lines[13]
    );
    // Every controller kubelet needs was enabled.
    for c in ["cpu", "memory", "pids"] {
        assert!(
            lines[14].split_whitespace().any(|w| w == c),
            "{c}: {}",
            lines[14]
        );
    }
    // init left the rootfs' modules to machined, which loaded every one of them.
    let (done, _) = vm
        .wait_for_console_after(0, "kernel modules loaded from /lib/modules/", STEP)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(done.contains("machined: modules: "), "{done}");
    assert!(!done.contains("FAILED"), "{done}");
    let console = vm.console_output().unwrap();
    assert!(
        !console.contains("from /newroot/lib/modules/"),
        "init must not load the rootfs' modules:\n{console}"
    );
    assert!(!console.contains("FATAL"), "a step failed:\n{console}");
    assert!(
        !console.contains("Kernel panic"),
        "the kernel panicked:\n{console}"
    );
}

/// ctrl-alt-del reaches machined as SIGINT (CAD is disabled, so the kernel does not
/// reboot by itself) and becomes a graceful reboot; with -no-reboot QEMU then exits.
#[test]
fn ctrl_alt_del_reboots_gracefully() {
    let mut vm = boot("");
    vm.wait_for_console("machined: maintenance mode: API listening on", STEP)
        .unwrap();
    vm.monitor_command("sendkey ctrl-alt-delete").unwrap();
    expect_lines(
        &mut vm,
        &[
            "machined: shutdown: reboot requested",
            "machined: shutdown: unmounted /var",
            "machined: shutdown: reboot now",
        ],
    );
    let status = vm
        .wait_for_exit(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exit status {status}");
}

/// A broken image fails loudly: init names the failing step and its error, waits
/// basalt.panic_reboot seconds and reboots (QEMU exits with -no-reboot) instead of
/// returning from PID 1, which would be a kernel panic without a word of why.
/// The rootfs.sqsh of the real image is replaced through an initramfs overlay.
#[test]
fn a_broken_rootfs_is_reported_and_the_node_reboots() {
    let dir = image_dir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let initrd = initrd_with_overlay(
        &dir.join("initramfs.zst"),
        &[OverlayFile {
            path: "rootfs.sqsh",
            mode: 0o644,
            content: &[0x55; 8192],
        }],
        &work.path().join("initramfs-broken"),
    )
    .unwrap();
    let mut vm = Qemu::builder()
        .kernel(dir.join("vmlinuz"))
        .initrd(&initrd)
        .append("basalt.panic_reboot=2")
        .memory_mib(1536)
        .no_reboot()
        .spawn()
        .unwrap();
    let lines = expect_lines(
        &mut vm,
        &[
            "basalt-init: attached /rootfs.sqsh to /dev/loop",
            "basalt-init: FATAL: mounting squashfs on /newroot: ",
            "basalt-init: rebooting in 2 s",
        ],
    );
    let status = vm
        .wait_for_exit(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "QEMU exit status {status}: {}", lines[1]);
    let console = vm.console_output().unwrap();
    assert!(console.contains("reboot: Restarting system"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
    assert!(
        !console.contains("machined:"),
        "machined must not start:\n{console}"
    );
}

/// `machine.kernel.modules` from a config handed over fw_cfg: machined plans them against
/// the image's modules.dep and loads them with their parameters. Seen from outside
/// through the API: `nbds_max=3` makes exactly nbd0..nbd2 (the default is 16), which
/// the disks endpoint lists, and machined's load lines are in the kernel log (dmesg).
#[test]
fn config_kernel_modules_are_loaded_with_their_parameters() {
    let mut cluster = node_support::cluster(None);
    cluster.controlplane.machine.kernel.modules = vec![
        KernelModule {
            name: "nbd".parse().unwrap(),
            parameters: vec!["nbds_max=3".parse().unwrap()],
        },
        KernelModule {
            name: "dummy".parse().unwrap(),
            parameters: vec![],
        },
    ];
    let work = tempfile::tempdir().unwrap();
    let path = node_support::write_config(
        work.path(),
        "controlplane.yaml",
        &cluster.controlplane.to_yaml(),
    );
    let dir = image_dir().unwrap();
    let mut vm = Qemu::builder()
        .kernel(dir.join("vmlinuz"))
        .initrd(dir.join("initramfs.zst"))
        .append("basalt.panic_reboot=1 basalt.platform=cloud")
        .memory_mib(1536)
        .netdev_user(vec![(0, 50000)])
        .fw_cfg_file("opt/dev.basalt/config", &path)
        .no_reboot()
        .spawn()
        .unwrap();
    let lines = expect_lines(
        &mut vm,
        &[
            "machined: modules: loaded nbd with nbds_max=3 (",
            "machined: modules: machine.kernel.modules loaded: nbd dummy",
            "machined: phase machine done (",
            "machined: phase api done (",
            "machined: phase services done (",
        ],
    );
    assert!(
        lines[2].contains("kernel modules nbd dummy"),
        "{}",
        lines[2]
    );
    // bridge-nf-call exists once br_netfilter is loaded: set before containerd starts.
    assert!(lines[4].contains("module sysctls 2 set"), "{}", lines[4]);
    let port = vm.host_port(50000).unwrap();
    let client = cluster.client(port, Role::Reader);
    let rt = node_support::runtime();
    let disks = rt.block_on(node_support::eventually(
        "the disks endpoint",
        STEP,
        || async { client.disks().await.map_err(|e| e.to_string()) },
    ));
    let mut nbd: Vec<&str> = disks
        .iter()
        .map(|d| d.name.as_str())
        .filter(|n| n.starts_with("nbd"))
        .collect();
    nbd.sort_unstable();
    assert_eq!(nbd, ["nbd0", "nbd1", "nbd2"], "{disks:?}");
    let kmsg = rt
        .block_on(async { client.dmesg(false).await.unwrap().collect().await })
        .unwrap();
    let messages: Vec<&str> = kmsg.iter().map(|l| l.message.as_str()).collect();
    for wanted in [
        "machined: modules: loaded nbd with nbds_max=3 (",
        "machined: modules: machine.kernel.modules loaded: nbd dummy",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(wanted)),
            "{wanted:?} is not in dmesg:\n{}",
            messages.join("\n")
        );
    }
    vm.kill();
}
