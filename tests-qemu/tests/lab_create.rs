//! `basaltctl lab create` against the real image: the real binary boots a detached QEMU
//! from BASALT_IMAGE_DIR's raw disk, hands the config over fw_cfg and waits for the node
//! API (mTLS) and a healthy containerd; then `services` through the lab's basaltconfig,
//! `lab list` and `lab destroy` must agree that the lab existed and is gone.
//!
//! Needs BASALT_IMAGE_DIR (see `basalt_tests_qemu::image_dir`). The basaltctl binary is
//! built by the test (`cargo build -p basaltctl`) unless BASALTCTL names one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basalt_tests_qemu::{basaltctl_binary, image_dir_with};

fn raw_name() -> String {
    format!("basalt-{}-amd64.raw", env!("CARGO_PKG_VERSION"))
}

struct Lab {
    bin: PathBuf,
    labs_root: tempfile::TempDir,
    name: &'static str,
}

impl Lab {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.bin)
            .args(args)
            .env("BASALT_LABS_DIR", self.labs_root.path())
            .output()
            .expect("running basaltctl");
        eprintln!(
            "$ basaltctl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    fn state_dir(&self) -> PathBuf {
        self.labs_root.path().join(self.name)
    }
}

impl Drop for Lab {
    /// A failed assertion must not leave a detached QEMU running.
    fn drop(&mut self) {
        if self.state_dir().join("lab.yaml").exists() {
            let _ = Command::new(&self.bin)
                .args(["lab", "destroy", "--name", self.name])
                .env("BASALT_LABS_DIR", self.labs_root.path())
                .output();
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// The README's path: UEFI → systemd-boot → UKI from a grown copy of the raw image.
#[test]
fn lab_from_the_raw_disk_answers_and_destroy_removes_it() {
    let image = image_dir_with(&[&raw_name()]).unwrap();
    create_check_destroy(&image, &[]);
}

/// -kernel/-initrd without any disk: STATE in memory.
#[test]
fn diskless_kernel_boot_lab_answers_and_destroy_removes_it() {
    let image = image_dir_with(&["vmlinuz", "initramfs.zst", "cmdline"]).unwrap();
    create_check_destroy(&image, &["--pxe", "--no-disk"]);
}

fn create_check_destroy(image: &Path, extra: &[&str]) {
    let lab = Lab {
        bin: basaltctl_binary(),
        labs_root: tempfile::tempdir().unwrap(),
        name: "e2e",
    };
    let image = image.to_str().unwrap().to_owned();
    // TCG on 2 cores: machined in ~8 s, containerd later; BASALT_LAB_TIMEOUT shortens a
    // run that is known to fail.
    let timeout = std::env::var("BASALT_LAB_TIMEOUT").unwrap_or_else(|_| "600".to_owned());
    let mut args = vec![
        "lab",
        "create",
        "--name",
        lab.name,
        "--image-dir",
        &image,
        "--timeout",
        &timeout,
    ];
    args.extend_from_slice(extra);
    let created = lab.run(&args);
    let console = lab.state_dir().join("controlplane-1.log");
    assert!(
        created.status.success(),
        "lab create failed ({}); console tail:\n{}",
        created.status,
        basalt_tests_qemu::ConsoleLog::new(&console).tail(60)
    );
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(stdout.contains("lab e2e is up"), "{stdout}");
    let basaltconfig = lab.state_dir().join("basaltconfig");
    assert!(
        stdout.contains(&format!(
            "basaltctl --basaltconfig {} services",
            basaltconfig.display()
        )),
        "{stdout}"
    );

    // The node answers the operator the way the output says, with the lab's admin cert.
    let services = lab.run(&[
        "--basaltconfig",
        basaltconfig.to_str().unwrap(),
        "services",
        "-o",
        "json",
    ]);
    assert!(services.status.success(), "services failed");
    let services: serde_json::Value = serde_json::from_slice(&services.stdout).unwrap();
    let containerd = services
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "containerd"))
        .unwrap_or_else(|| panic!("no containerd in {services}"));
    assert_eq!(containerd["state"], "healthy", "{containerd}");

    let listed = lab.run(&["lab", "list", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["name"], "e2e", "{listed}");
    assert_eq!(listed[0]["running"], true, "{listed}");
    let pid = listed[0]["nodes"][0]["pid"].as_u64().unwrap() as u32;
    assert!(pid_alive(pid));

    let destroyed = lab.run(&["lab", "destroy", "--name", lab.name]);
    assert!(destroyed.status.success());
    assert!(!lab.state_dir().exists(), "the state dir survived destroy");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pid_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU {pid} survived destroy"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
