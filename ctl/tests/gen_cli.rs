//! basaltctl's gen and validate commands, run as the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use basalt_config::MachineConfig;
use basalt_config::client_config::{ClientConfig, Role};
use basalt_config::secrets::SecretsBundle;

const ENDPOINT: &str = "https://192.0.2.10:6443";
const FILES: [&str; 4] = [
    "secrets.yaml",
    "controlplane.yaml",
    "worker.yaml",
    "basaltconfig",
];

fn basaltctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_basaltctl"))
        .args(args)
        .env_remove("BASALTCONFIG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn gen_config(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["gen", "config", "demo", ENDPOINT, "-o", s(dir)];
    args.extend_from_slice(extra);
    basaltctl(&args)
}

fn validate(file: &Path) -> Output {
    basaltctl(&["validate", "-f", s(file)])
}

#[test]
fn gen_config_writes_four_private_files_that_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let out = gen_config(&dir, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for name in FILES {
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    for name in ["controlplane.yaml", "worker.yaml"] {
        let out = validate(&dir.join(name));
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    }
    let worker = std::fs::read_to_string(dir.join("worker.yaml")).unwrap();
    assert!(!worker.contains("PRIVATE KEY"), "{worker}");
    let worker = MachineConfig::from_yaml(&worker).unwrap();
    let cp =
        MachineConfig::from_yaml(&std::fs::read_to_string(dir.join("controlplane.yaml")).unwrap())
            .unwrap();
    let bundle = SecretsBundle::load(&dir.join("secrets.yaml")).unwrap();
    assert_eq!(cp.cluster.ca.crt, bundle.kubernetes.ca.crt);
    assert_eq!(cp.cluster.ca.key.as_ref(), Some(&bundle.kubernetes.ca.key));
    assert_eq!(worker.cluster.ca.crt, bundle.kubernetes.ca.crt);
    assert_eq!(worker.cluster.token, bundle.bootstrap_token);

    let client = ClientConfig::load_from(&dir.join("basaltconfig")).unwrap();
    let (name, ctx) = client.context(None).unwrap();
    assert_eq!(name, "demo");
    assert_eq!(ctx.endpoints, vec!["192.0.2.10".to_owned()]);
    assert_eq!(ctx.role().unwrap(), Role::Admin);
    assert_eq!(ctx.ca, bundle.api.ca.crt.as_str());
}

#[test]
fn existing_files_are_refused_without_force_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Only one of the four exists: the other three must not be written either.
    std::fs::write(dir.join("worker.yaml"), "mine\n").unwrap();
    let out = gen_config(dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: refusing to overwrite"),
        "{stderr}"
    );
    assert!(stderr.contains("worker.yaml"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("worker.yaml")).unwrap(),
        "mine\n"
    );
    for name in ["secrets.yaml", "controlplane.yaml", "basaltconfig"] {
        assert!(!dir.join(name).exists(), "{name} was written");
    }

    let out = gen_config(dir, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_ne!(
        std::fs::read_to_string(dir.join("worker.yaml")).unwrap(),
        "mine\n"
    );

    let before = std::fs::read(dir.join("secrets.yaml")).unwrap();
    let out = gen_config(dir, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(std::fs::read(dir.join("secrets.yaml")).unwrap(), before);
}

#[test]
fn a_typo_is_refused_naming_the_field_and_the_valid_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = gen_config(tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let cp = std::fs::read_to_string(tmp.path().join("controlplane.yaml")).unwrap();
    let typo = cp.replacen(
        "machine:\n",
        "machine:\n  netwrok:\n    nameservers: [192.0.2.1]\n",
        1,
    );
    assert_ne!(typo, cp);
    let path = tmp.path().join("typo.yaml");
    std::fs::write(&path, typo).unwrap();
    let out = validate(&path);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("machine.netwrok"), "{all}");
    assert!(
        all.contains("`network`") && all.contains("`install`"),
        "{all}"
    );
    assert!(all.contains("error: "), "{all}");

    let out = basaltctl(&["validate", "-f", s(&path), "-o", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .contains("machine.netwrok")
    );
}

#[test]
fn validate_reports_a_missing_file_as_a_runtime_error() {
    let out = basaltctl(&["validate", "-f", "/nonexistent/config.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/config.yaml"));
}

#[test]
fn merge_and_json_patches_apply_per_role() {
    let tmp = tempfile::tempdir().unwrap();
    let patch_file = tmp.path().join("worker-patch.yaml");
    std::fs::write(
        &patch_file,
        "- op: add\n  path: /machine/hostname\n  value: worker-1\n",
    )
    .unwrap();
    let worker_patch = format!("@{}", s(&patch_file));
    let dir = tmp.path().join("out");
    let out = gen_config(
        &dir,
        &[
            "--config-patch",
            "machine: {install: {disk: /dev/sda}}",
            "--config-patch-control-plane",
            r#"{"cluster": {"allowSchedulingOnControlPlanes": true}}"#,
            "--config-patch-worker",
            &worker_patch,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let read = |name: &str| {
        MachineConfig::from_yaml(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let cp = read("controlplane.yaml");
    let worker = read("worker.yaml");
    for c in [&cp, &worker] {
        assert_eq!(
            c.machine.install.as_ref().unwrap().disk.to_string(),
            "/dev/sda"
        );
    }
    assert!(cp.cluster.allow_scheduling_on_control_planes);
    assert!(!worker.cluster.allow_scheduling_on_control_planes);
    assert_eq!(
        worker.machine.hostname.as_ref().unwrap().to_string(),
        "worker-1"
    );
    assert!(cp.machine.hostname.is_none());
    for name in ["controlplane.yaml", "worker.yaml"] {
        let out = validate(&dir.join(name));
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
    }
}

#[test]
fn a_bad_patch_is_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 4] = [
        ("machine: {netwrok: {}}", "machine.netwrok"),
        (
            r#"[{"op": "remove", "path": "/machine/nope"}]"#,
            "/machine/nope",
        ),
        ("[{op: frobnicate, path: /x}]", "JSON patch"),
        (
            "machine: {install: {disk: relative/path}}",
            "machine.install.disk",
        ),
    ];
    for (patch, expected) in cases {
        let dir = tmp.path().join("out");
        let out = gen_config(&dir, &["--config-patch", patch]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{patch}: {all}");
        assert!(all.contains(expected), "{patch}: {all}");
        assert!(!dir.exists(), "{patch}: something was written");
    }
    let out = gen_config(
        &tmp.path().join("out"),
        &["--config-patch", "@/nonexistent/p.yaml"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/p.yaml"));
}

#[test]
fn with_secrets_reuses_the_bundle_and_does_not_write_it() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets.yaml");
    let out = basaltctl(&["gen", "secrets", "-o", s(&secrets)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = basaltctl(&["gen", "secrets", "-o", s(&secrets)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    let dir = tmp.path().join("out");
    let out = gen_config(&dir, &["--with-secrets", s(&secrets)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!dir.join("secrets.yaml").exists());
    let bundle = SecretsBundle::load(&secrets).unwrap();
    let cp =
        MachineConfig::from_yaml(&std::fs::read_to_string(dir.join("controlplane.yaml")).unwrap())
            .unwrap();
    assert_eq!(cp.cluster.ca.crt, bundle.kubernetes.ca.crt);
    assert_eq!(cp.machine.ca.crt, bundle.api.ca.crt);
    assert_eq!(cp.cluster.token, bundle.bootstrap_token);

    let broken = tmp.path().join("broken.yaml");
    std::fs::write(&broken, "version: v1alpha1\n").unwrap();
    let out = gen_config(&tmp.path().join("out2"), &["--with-secrets", s(&broken)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn gen_certificate_issues_role_certificates_and_basaltconfigs() {
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tmp.path().join("secrets.yaml");
    assert_eq!(
        basaltctl(&["gen", "secrets", "-o", s(&secrets)])
            .status
            .code(),
        Some(0)
    );
    let bundle = SecretsBundle::load(&secrets).unwrap();

    let dir = tmp.path().join("certs");
    let out = basaltctl(&[
        "gen",
        "certificate",
        "--role",
        "reader",
        "--name",
        "alice",
        "--secrets",
        s(&secrets),
        "-o",
        s(&dir),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let crt = std::fs::read_to_string(dir.join("alice.crt")).unwrap();
    let key = std::fs::read_to_string(dir.join("alice.key")).unwrap();
    assert_eq!(
        std::fs::metadata(dir.join("alice.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(Role::from_certificate_pem(&crt).unwrap(), Role::Reader);
    basalt_config::pki::check_key_pair(&crt, &key).unwrap();
    let ca = tmp.path().join("api-ca.crt");
    std::fs::write(&ca, bundle.api.ca.crt.as_str()).unwrap();
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&ca),
            s(&dir.join("alice.crt")),
        ])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
    let subject = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-nameopt",
            "RFC2253",
            "-in",
            s(&dir.join("alice.crt")),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&subject.stdout).contains("O=basalt:reader"));

    let cfg = tmp.path().join("ops-config");
    let out = basaltctl(&[
        "gen",
        "certificate",
        "--role",
        "basalt:operator",
        "--name",
        "bob",
        "--secrets",
        s(&secrets),
        "--basaltconfig-out",
        s(&cfg),
        "--endpoint",
        "192.0.2.10",
        "--endpoint",
        "192.0.2.11:50000",
        "--context",
        "prod",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let client = ClientConfig::load_from(&cfg).unwrap();
    let (name, ctx) = client.context(None).unwrap();
    assert_eq!(name, "prod");
    assert_eq!(ctx.endpoints, vec!["192.0.2.10", "192.0.2.11:50000"]);
    assert_eq!(ctx.role().unwrap(), Role::Operator);

    let out = basaltctl(&[
        "gen",
        "certificate",
        "--role",
        "admin",
        "--name",
        "x",
        "--secrets",
        s(&secrets),
        "--basaltconfig-out",
        s(&tmp.path().join("bad-endpoint")),
        "--endpoint",
        "https://192.0.2.10",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!tmp.path().join("bad-endpoint").exists());

    let out = basaltctl(&[
        "gen",
        "certificate",
        "--role",
        "root",
        "--name",
        "eve",
        "--secrets",
        s(&secrets),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("root"));
}

#[test]
fn invalid_arguments_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        vec!["gen", "config", "demo", "http://192.0.2.10:6443"],
        vec!["gen", "config", "demo", "https://192.0.2.10"],
        vec!["gen", "config", "Not_A_Name", ENDPOINT],
        vec!["gen", "config", "demo", ENDPOINT, "--install-disk", "sda"],
        vec![
            "gen",
            "config",
            "demo",
            ENDPOINT,
            "--kubernetes-version",
            "1.31",
        ],
        vec![
            "gen",
            "config",
            "demo",
            ENDPOINT,
            "--additional-sans",
            "not a name",
        ],
        vec!["validate"],
        vec!["frobnicate"],
    ] {
        let mut args = args;
        if args.starts_with(&["gen", "config"]) {
            args.extend(["-o", s(tmp.path())]);
        }
        let out = basaltctl(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["gen", "--help"],
        vec!["gen", "config", "--help"],
        vec!["gen", "secrets", "--help"],
        vec!["gen", "certificate", "--help"],
        vec!["validate", "--help"],
    ] {
        let out = basaltctl(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: basaltctl"));
    }
}

#[test]
fn semantic_problems_are_all_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = gen_config(tmp.path(), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let worker = std::fs::read_to_string(tmp.path().join("worker.yaml")).unwrap();
    // Two independent problems: overlapping subnets, and no install disk on metal.
    let broken = worker
        .replace("- 10.244.0.0/16", "- 10.96.0.0/16")
        .replace("  install:\n    disk: /dev/vda\n", "");
    let path = tmp.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = validate(&path);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.contains("machine.install"), "{stdout}");
    assert!(stdout.contains("podSubnets"), "{stdout}");
    // In cloud mode the missing install disk is fine; the overlap is not.
    let out = basaltctl(&["validate", "-f", s(&path), "--mode", "cloud"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn a_patch_breaking_a_semantic_rule_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let patch = "cluster: {network: {serviceSubnets: [10.244.0.0/24]}}";
    let out = gen_config(&dir, &["--config-patch", patch]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let all = text(&out);
    assert!(
        all.contains(patch) && all.contains("serviceSubnets"),
        "{all}"
    );
    assert!(!dir.exists());
}

/// The model's own fixtures, through the CLI: every good one is `ok`, every bad one
/// exits 2 with at least one `file: path: message` line.
#[test]
fn validate_agrees_with_the_config_fixtures() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/tests/data");
    let mut checked = 0;
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if path.is_dir() || name.starts_with('.') {
            continue;
        }
        let mode = if name.starts_with("container-") {
            "container"
        } else {
            "metal"
        };
        let out = basaltctl(&["validate", "-f", s(&path), "--mode", mode]);
        let bad = name.starts_with("bad-")
            || (name.starts_with("ignition-") && name != "ignition-config-carried.json");
        if bad {
            assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
            assert!(
                String::from_utf8_lossy(&out.stdout).starts_with(&format!("{}: ", s(&path))),
                "{name}: {}",
                text(&out)
            );
        } else {
            assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} fixtures found in {}",
        data.display()
    );
}
