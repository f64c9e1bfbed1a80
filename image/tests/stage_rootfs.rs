//! Staging the rootfs from the real pinned packages (downloaded into the cache if they
//! are not there yet): no shell or interpreter, and every ELF finds its loader and
//! every DT_NEEDED library inside the tree — not on the build host.

use std::path::{Path, PathBuf};

use basalt_image::build::{gather_inputs, stage_rootfs};
use basalt_image::elf::dynamic_info;
use basalt_image::fetch::Cache;
use basalt_image::lock::Lock;
use basalt_image::modules::KernelModules;
use basalt_image::rootfs::forbidden_entries;
use basalt_image::tree::Node;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn staged_rootfs_has_no_shell_and_resolves_every_library_from_the_lock() {
    let lock = Lock::load(&workspace().join("image/inputs.lock")).unwrap();
    let root = std::env::var_os("BASALT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(Cache::default_root);
    let cache = Cache { root };
    for p in &lock.packages {
        cache.ensure(p).unwrap_or_else(|e| panic!("{e}"));
    }
    let inputs = gather_inputs(&cache, &lock).unwrap();
    let km =
        KernelModules::scan(&inputs.kernel_dir.join("lib/modules").join(&inputs.kver)).unwrap();
    // A dynamically linked ELF whose libraries the lock carries stands in for machined.
    let placeholder = inputs
        .universe
        .packages
        .iter()
        .map(|(_, dir)| dir.join("usr/sbin/nft"))
        .find(|p| p.is_file())
        .expect("nftables ships /usr/sbin/nft");
    let staged = stage_rootfs(&inputs, &km, &placeholder, None, lock.source_date_epoch).unwrap();
    let t = &staged.rootfs;

    assert_eq!(forbidden_entries(t), Vec::<String>::new());
    for p in [
        "/bin/sh",
        "/usr/bin/sh",
        "/bin/bash",
        "/usr/bin/perl",
        "/usr/bin/python3",
        "/usr/bin/busybox",
    ] {
        assert!(t.resolve(p).is_none(), "{p} exists in the staged rootfs");
    }
    for p in [
        "/sbin/machined",
        "/usr/bin/containerd",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/sbin/mkfs.ext4",
        "/usr/sbin/iptables",
        "/usr/sbin/iptables-restore",
        "/usr/sbin/nft",
        "/usr/share/basalt/etc/ssl/certs/ca-certificates.crt",
        "/usr/lib/os-release",
        "/usr/share/basalt/images/etcd.oci.tar",
    ] {
        assert!(
            t.resolve(p).is_some(),
            "{p} is missing from the staged rootfs"
        );
    }
    // Relative to /etc once basalt-init copied the template there.
    assert_eq!(
        t.nodes.get("/usr/share/basalt/etc/os-release"),
        Some(&Node::Symlink {
            target: "../usr/lib/os-release".into()
        })
    );
    // /etc is only a mount point; its content lives in the template.
    assert!(!t.nodes.keys().any(|k| k.starts_with("/etc/")));
    // No etcd binary in the rootfs itself (it runs from the OCI image).
    assert!(t.resolve("/usr/bin/etcd").is_none());

    let mut elves = 0;
    for (path, node) in &t.nodes {
        let Node::File { content, .. } = node else {
            continue;
        };
        let data = content.read().unwrap();
        let Some(info) = dynamic_info(&data) else {
            continue;
        };
        elves += 1;
        if let Some(interp) = &info.interpreter {
            assert!(
                t.resolve(interp).is_some(),
                "{path}: loader {interp} is not in the tree"
            );
        }
        for lib in &info.needed {
            let found = [
                "/usr/lib/x86_64-linux-gnu",
                "/lib/x86_64-linux-gnu",
                "/usr/lib",
            ]
            .iter()
            .any(|d| t.resolve(&format!("{d}/{lib}")).is_some());
            assert!(found, "{path} needs {lib}, which is not in the tree");
        }
    }
    assert!(elves > 20, "only {elves} ELF files staged");
    let ca = t
        .read("/usr/share/basalt/etc/ssl/certs/ca-certificates.crt")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ca)
            .matches("BEGIN CERTIFICATE")
            .count()
            > 100
    );
}
