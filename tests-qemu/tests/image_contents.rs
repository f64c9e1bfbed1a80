//! What the built artifacts contain (BASALT_IMAGE_DIR): no shell or interpreter in the
//! squashfs, the modules contract for basalt-init, the etcd image, and SHA256SUMS that
//! match the files.

use std::process::Command;

use basalt_tests_qemu::image_dir_with;

fn unsquashfs(args: &[&str]) -> String {
    let dir = image_dir_with(&["rootfs.sqsh"]).unwrap();
    let out = Command::new("unsquashfs")
        .args(args)
        .arg(dir.join("rootfs.sqsh"))
        .output()
        .expect("running unsquashfs");
    assert!(
        out.status.success(),
        "unsquashfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cat(path: &str) -> String {
    let dir = image_dir_with(&["rootfs.sqsh"]).unwrap();
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(dir.join("rootfs.sqsh"))
        .arg(path)
        .output()
        .expect("running unsquashfs");
    assert!(
        out.status.success(),
        "unsquashfs -cat {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rootfs_has_no_shell_interpreter_or_package_manager() {
    let listing = unsquashfs(&["-lln"]);
    let forbidden = [
        "sh", "bash", "dash", "busybox", "python3", "perl", "dpkg", "apt", "apt-get",
    ];
    let mut seen = 0;
    for line in listing.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        seen += 1;
        let name = path.rsplit('/').next().unwrap_or("");
        assert!(
            !forbidden.contains(&name)
                && !name.starts_with("python3.")
                && !name.starts_with("perl5"),
            "forbidden file in rootfs.sqsh: {line}"
        );
        // Every file belongs to root.
        assert!(
            line.split_whitespace().nth(1).is_some_and(|o| o == "0/0"),
            "not owned by 0/0: {line}"
        );
    }
    assert!(seen > 100, "listing looks empty:\n{listing}");
    for needed in [
        "/usr/sbin/machined",
        "/usr/bin/containerd",
        "/usr/sbin/runc",
        "/usr/sbin/nft",
        "/usr/sbin/mke2fs",
    ] {
        assert!(
            listing.contains(&format!("squashfs-root{needed}")),
            "{needed} missing from rootfs.sqsh"
        );
    }
}

#[test]
fn rootfs_modules_contract_lists_only_shipped_modules() {
    let listing = unsquashfs(&["-l"]);
    let kdir = listing
        .lines()
        .find_map(|l| {
            l.strip_prefix("squashfs-root/usr/lib/modules/")
                .filter(|r| !r.contains('/'))
        })
        .expect("no /usr/lib/modules/<kver> in rootfs.sqsh")
        .to_owned();
    let dep = cat(&format!("usr/lib/modules/{kdir}/modules.dep"));
    for line in dep.lines() {
        let (module, deps) = line.split_once(':').unwrap();
        for m in std::iter::once(module).chain(deps.split_whitespace()) {
            assert!(m.ends_with(".ko"), "compressed or odd module path {m}");
            assert!(
                listing.contains(&format!("squashfs-root/usr/lib/modules/{kdir}/{m}\n")),
                "{m} is in modules.dep but not shipped"
            );
        }
    }
    let wanted = cat(&format!("usr/lib/modules/{kdir}/modules.basalt"));
    let names: Vec<&str> = wanted
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for must in [
        "virtio_blk",
        "virtio_net",
        "squashfs",
        "overlay",
        "ext4",
        "br_netfilter",
        "nf_tables",
        "vxlan",
    ] {
        assert!(
            names.contains(&must),
            "{must} missing from modules.basalt:\n{wanted}"
        );
    }
}

#[test]
fn etcd_oci_image_is_in_the_rootfs() {
    let listing = unsquashfs(&["-l"]);
    assert!(listing.contains("squashfs-root/usr/share/basalt/images/etcd.oci.tar\n"));
    let dir = tempfile::tempdir().unwrap();
    let img = image_dir_with(&["rootfs.sqsh"]).unwrap();
    let out = Command::new("unsquashfs")
        .arg("-d")
        .arg(dir.path().join("x"))
        .arg(img.join("rootfs.sqsh"))
        .arg("usr/share/basalt/images/etcd.oci.tar")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar = dir.path().join("x/usr/share/basalt/images/etcd.oci.tar");
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(&tar)
        .arg("index.json")
        .output()
        .unwrap();
    let index = String::from_utf8_lossy(&out.stdout);
    assert!(
        index.contains("\"org.opencontainers.image.ref.name\":\"basalt.local/etcd:"),
        "{index}"
    );
}

#[test]
fn sha256sums_match_the_artifacts() {
    let dir = image_dir_with(&["SHA256SUMS"]).unwrap();
    let out = Command::new("sha256sum")
        .arg("--check")
        .arg("--strict")
        .arg("SHA256SUMS")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let names: Vec<&str> = sums
        .lines()
        .map(|l| l.split("  ").nth(1).unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for must in [
        "initramfs.zst",
        "rootfs.sqsh",
        "vmlinuz",
        "sbom.spdx.json",
        "boot.ipxe",
        "cmdline",
    ] {
        assert!(names.contains(&must), "{must} not in SHA256SUMS");
    }
}
