//! Acquisition order, the no-fall-through rule, http(s) fetching against real loopback
//! servers, config drives on real loop devices.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use basalt_config::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const VALID: &[u8] = include_bytes!("../../tests/data/config-valid-worker.yaml");
const INVALID: &[u8] = include_bytes!("../../tests/data/config-bad-many-problems.yaml");

struct Env {
    _tmp: tempfile::TempDir,
    env: Environment,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::write(root.join("cmdline"), "console=ttyS0 quiet\n").unwrap();
    for d in ["sys", "dev", "state"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let env = Environment {
        cmdline: root.join("cmdline"),
        sys: root.join("sys"),
        dev: root.join("dev"),
        state_dir: root.join("state"),
        drive_mount: root.join("drive"),
        ca_bundle: root.join("ca.pem"),
        retry: http::RetryPolicy {
            attempt_timeout: Duration::from_secs(2),
            total: Duration::from_secs(3),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        },
        platform: Mode::Metal,
    };
    Env { _tmp: tmp, env }
}

fn put_fw_cfg(env: &Environment, bytes: &[u8]) {
    let p = env.sys.join(FW_CFG_ENTRY);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A loopback HTTP server answering the first `failures` requests with 503 and the
/// rest with `body`. Returns its port and a request counter.
async fn serve(body: Vec<u8>, failures: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let n = c.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let resp = if n < failures {
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .to_vec()
                } else {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    r
                };
                let _ = s.write_all(&resp).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, count)
}

#[test]
fn decide_follows_the_rule() {
    assert!(matches!(
        decide(SourceKind::FwCfg, Probe::Absent("x".into()), Mode::Metal),
        Step::Next
    ));
    assert!(matches!(
        decide(SourceKind::FwCfg, Probe::Failed("EIO".into()), Mode::Metal),
        Step::Stop(AcquireError::Unreadable {
            from: SourceKind::FwCfg,
            ..
        })
    ));
    match decide(
        SourceKind::ConfigDrive,
        Probe::Found {
            origin: "/dev/sr0:user-data".into(),
            bytes: VALID.to_vec(),
        },
        Mode::Metal,
    ) {
        Step::Take(a) => {
            assert_eq!(a.source, SourceKind::ConfigDrive);
            assert_eq!(a.bytes, VALID);
            assert_eq!(a.config.machine.hostname.unwrap().to_string(), "worker-1");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn invalid_config_names_the_source_and_every_error() {
    let Step::Stop(e) = decide(
        SourceKind::FwCfg,
        Probe::Found {
            origin: "fw".into(),
            bytes: INVALID.to_vec(),
        },
        Mode::Metal,
    ) else {
        panic!("an invalid config must stop acquisition")
    };
    let AcquireError::Invalid { from, errors, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*from, SourceKind::FwCfg);
    assert!(
        errors.len() > 1,
        "every validation error is reported: {errors:?}"
    );
    let text = e.to_string();
    assert!(
        text.starts_with("the config from fw_cfg (fw) is invalid: "),
        "{text}"
    );
    for err in errors {
        assert!(text.contains(err.as_str()));
    }
    // Syntax errors too.
    let Step::Stop(e) = decide(
        SourceKind::State,
        Probe::Found {
            origin: "s".into(),
            bytes: b"version: [".to_vec(),
        },
        Mode::Metal,
    ) else {
        panic!()
    };
    assert!(e.to_string().contains("STATE"), "{e}");
}

#[test]
fn platform_decides_validity() {
    // metal requires machine.install; cloud does not.
    let text = String::from_utf8(VALID.to_vec()).unwrap();
    let no_install = text.replace("  install:\n    disk: /dev/vda\n", "");
    assert_ne!(no_install, text, "fixture carries an install section");
    assert!(check(no_install.as_bytes(), Mode::Cloud).is_ok());
    let errs = check(no_install.as_bytes(), Mode::Metal).unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("machine.install")),
        "{errs:?}"
    );
}

#[test]
fn nothing_anywhere_means_maintenance() {
    let e = env();
    assert_eq!(
        rt().block_on(acquire(&e.env)).unwrap().map(|a| a.source),
        None
    );
}

#[test]
fn fw_cfg_wins_over_state() {
    let e = env();
    put_fw_cfg(&e.env, VALID);
    persist_config(&e.env.state_dir, VALID, Mode::Metal).unwrap();
    let a = rt().block_on(acquire(&e.env)).unwrap().unwrap();
    assert_eq!(a.source, SourceKind::FwCfg);
    assert!(a.origin.ends_with("opt/dev.basalt/config/raw"));
}

#[test]
fn state_copy_is_the_last_resort() {
    let e = env();
    persist_config(&e.env.state_dir, VALID, Mode::Metal).unwrap();
    let a = rt().block_on(acquire(&e.env)).unwrap().unwrap();
    assert_eq!(a.source, SourceKind::State);
    assert_eq!(a.bytes, VALID);
}

#[test]
fn fw_cfg_without_our_entry_is_skipped() {
    let e = env();
    std::fs::create_dir_all(e.env.sys.join("firmware/qemu_fw_cfg/by_name/opt/org.other")).unwrap();
    assert!(
        matches!(probe_fw_cfg(&e.env), Probe::Absent(r) if r.contains("opt/dev.basalt/config"))
    );
    std::fs::remove_dir_all(e.env.sys.join("firmware")).unwrap();
    assert!(matches!(probe_fw_cfg(&e.env), Probe::Absent(r) if r.contains("qemu_fw_cfg module")));
}

#[test]
fn invalid_fw_cfg_does_not_fall_through_to_state() {
    let e = env();
    put_fw_cfg(&e.env, INVALID);
    persist_config(&e.env.state_dir, VALID, Mode::Metal).unwrap();
    let err = rt().block_on(acquire(&e.env)).unwrap_err();
    assert!(
        matches!(
            err,
            AcquireError::Invalid {
                from: SourceKind::FwCfg,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn cmdline_url_wins_and_is_retried_through_server_errors() {
    let e = env();
    put_fw_cfg(&e.env, INVALID); // would stop acquisition if it were reached
    rt().block_on(async {
        let (port, count) = serve(VALID.to_vec(), 2).await;
        std::fs::write(
            &e.env.cmdline,
            format!("console=ttyS0 basalt.config=http://127.0.0.1:{port}/worker.yaml\n"),
        )
        .unwrap();
        assert!(needs_network(&e.env));
        let a = acquire(&e.env).await.unwrap().unwrap();
        assert_eq!(a.source, SourceKind::Cmdline);
        assert_eq!(a.origin, format!("http://127.0.0.1:{port}/worker.yaml"));
        assert_eq!(a.bytes, VALID);
        assert_eq!(count.load(Ordering::SeqCst), 3, "two 503s, then the config");
    });
}

#[test]
fn unreachable_url_gives_up_in_bounded_time_without_falling_through() {
    let e = env();
    persist_config(&e.env.state_dir, VALID, Mode::Metal).unwrap();
    rt().block_on(async {
        // Bind then drop: nothing listens on the port any more.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            &e.env.cmdline,
            format!("basalt.config=http://127.0.0.1:{port}/c"),
        )
        .unwrap();
        let start = std::time::Instant::now();
        let err = acquire(&e.env).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let AcquireError::Unreadable { from, reason } = &err else {
            panic!("{err}")
        };
        assert_eq!(*from, SourceKind::Cmdline);
        assert!(reason.contains("gave up after"), "{reason}");
    });
}

#[test]
fn bad_cmdline_url_is_an_error() {
    let e = env();
    std::fs::write(&e.env.cmdline, "basalt.config=ftp://h/c").unwrap();
    let err = rt().block_on(acquire(&e.env)).unwrap_err();
    assert!(err.to_string().contains("ftp"), "{err}");
}

#[test]
fn oversized_body_is_refused() {
    let e = env();
    rt().block_on(async {
        let (port, _) = serve(vec![b'#'; http::MAX_CONFIG_BYTES + 1], 0).await;
        let url: cmdline::ConfigUrl = format!("http://127.0.0.1:{port}/big").parse().unwrap();
        let err = http::fetch_once(&url, None).await.unwrap_err();
        assert!(matches!(err, http::FetchError::TooLarge { .. }), "{err}");
        let _ = e;
    });
}

/// An https server on loopback with a certificate for 127.0.0.1 and `localhost`,
/// signed by a CA written to `ca_path`.
async fn serve_tls(body: Vec<u8>, ca_path: &Path) -> u16 {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(ca_path, ca.pem()).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(&body);
                let _ = s.write_all(&r).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

#[test]
fn https_is_verified_against_the_ca_bundle() {
    let e = env();
    rt().block_on(async {
        let port = serve_tls(VALID.to_vec(), &e.env.ca_bundle).await;
        for host in ["127.0.0.1", "localhost"] {
            let url: cmdline::ConfigUrl = format!("https://{host}:{port}/c.yaml").parse().unwrap();
            let got = http::fetch(&url, &e.env.retry, &e.env.ca_bundle)
                .await
                .unwrap();
            assert_eq!(got, VALID, "{host}");
        }
        // A bundle without the server's CA: the handshake fails, every attempt.
        let other = e.env.ca_bundle.with_file_name("other.pem");
        let _ = serve_tls(Vec::new(), &other).await;
        let url: cmdline::ConfigUrl = format!("https://127.0.0.1:{port}/c.yaml").parse().unwrap();
        let err = http::fetch(&url, &e.env.retry, &other).await.unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
        // No bundle at all: said plainly, before any connection.
        let missing = PathBuf::from("/nonexistent/ca.pem");
        let err = http::fetch(&url, &e.env.retry, &missing).await.unwrap_err();
        assert!(matches!(err, http::FetchError::CaBundle { .. }), "{err}");
    });
}

/// A loop device over a file, detached on drop.
pub(crate) struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    pub fn attach(file: &Path, partscan: bool) -> Loop {
        Loop::attach_with_sector_size(file, partscan, 512)
    }

    pub fn attach_with_sector_size(file: &Path, partscan: bool, sector_size: u32) -> Loop {
        require_root();
        let mut cmd = std::process::Command::new("losetup");
        cmd.args(["-f", "--show", "--sector-size", &sector_size.to_string()]);
        if partscan {
            cmd.arg("-P");
        }
        let out = cmd.arg(file).output().expect("losetup runs (util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
        }
    }
    pub fn name(&self) -> String {
        self.dev.file_name().unwrap().to_string_lossy().into_owned()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .arg("-d")
            .arg(&self.dev)
            .status();
    }
}

pub(crate) fn require_root() {
    assert!(
        // SAFETY: geteuid cannot fail and touches no memory.
        unsafe { libc::geteuid() } == 0,
        "these tests attach loop devices and mount filesystems: run them as root"
    );
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A sysfs stand-in listing only `names` (so a scan sees our loop devices and not
/// the host's disks), with the real /dev behind it.
fn only_devices(root: &Path, names: &[String]) -> PathBuf {
    let sys = root.join("sys-only");
    for n in names {
        std::fs::create_dir_all(sys.join("class/block").join(n)).unwrap();
    }
    sys
}

fn vfat_image(dir: &Path, name: &str, label: &str) -> PathBuf {
    let img = dir.join(name);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    run("mkfs.vfat", &["-n", label, img.to_str().unwrap()]);
    img
}

fn iso_image(dir: &Path, name: &str, label: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let content = dir.join(format!("{name}.d"));
    for (path, bytes) in files {
        let p = content.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    std::fs::create_dir_all(&content).unwrap();
    let iso = dir.join(name);
    run(
        "genisoimage",
        &[
            "-quiet",
            "-J",
            "-r",
            "-V",
            label,
            "-o",
            iso.to_str().unwrap(),
            content.to_str().unwrap(),
        ],
    );
    iso
}

#[test]
fn config_drives_are_found_by_label_on_loop_devices() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let nocloud = Loop::attach(&vfat_image(tmp.path(), "a.img", "CIDATA"), false);
    let other = Loop::attach(&vfat_image(tmp.path(), "b.img", "DATA"), false);
    let openstack = Loop::attach(
        &iso_image(
            tmp.path(),
            "c.iso",
            "config-2",
            &[("openstack/latest/user_data", VALID)],
        ),
        false,
    );
    let sys = only_devices(
        tmp.path(),
        &[nocloud.name(), other.name(), openstack.name()],
    );
    let mut drives = drive::find(&sys, Path::new("/dev"));
    drives.sort_by(|a, b| a.device.cmp(&b.device));
    let mut want = [
        (
            nocloud.dev.clone(),
            drive::DriveKind::NoCloud,
            "vfat",
            "CIDATA",
        ),
        (
            openstack.dev.clone(),
            drive::DriveKind::OpenStack,
            "iso9660",
            "config-2",
        ),
    ];
    want.sort();
    let got: Vec<_> = drives
        .iter()
        .map(|d| (d.device.clone(), d.kind, d.fstype, d.label.as_str()))
        .collect();
    let want: Vec<_> = want
        .iter()
        .map(|(d, k, f, l)| (d.clone(), *k, *f, *l))
        .collect();
    assert_eq!(got, want);
}

/// The read path (read-only mount, read, unmount) on a real device. The host kernel
/// here has ext4 but neither vfat nor iso9660, so the drive is ext4-formatted; the
/// image's kernel carries vfat and isofs (tests-qemu boots with a real cidata drive).
#[test]
fn user_data_is_read_through_a_read_only_mount_and_unmounted() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let content = tmp.path().join("content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("user-data"), VALID).unwrap();
    let img = tmp.path().join("drive.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "cidata",
            "-d",
            content.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    let lo = Loop::attach(&img, false);
    let d = drive::Drive {
        device: lo.dev.clone(),
        kind: drive::DriveKind::NoCloud,
        fstype: "ext4",
        label: "cidata".into(),
    };
    let mnt = tmp.path().join("mnt");
    assert_eq!(drive::read_user_data(&d, &mnt).unwrap().unwrap(), VALID);
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(mnt.to_str().unwrap()),
        "the drive is unmounted after reading"
    );
    // Same drive, OpenStack layout: the file is not there, which is not an error.
    let d = drive::Drive {
        kind: drive::DriveKind::OpenStack,
        ..d
    };
    assert_eq!(drive::read_user_data(&d, &mnt).unwrap(), None);
    // And a mount failure names device, type and target.
    let d = drive::Drive {
        fstype: "no-such-fs",
        ..d
    };
    let err = drive::read_user_data(&d, &mnt).unwrap_err().to_string();
    assert!(
        err.contains(lo.dev.to_str().unwrap()) && err.contains("no-such-fs"),
        "{err}"
    );
}

#[test]
fn acquired_config_is_kept_on_state_once() {
    let e = env();
    put_fw_cfg(&e.env, VALID);
    let store = StateStore {
        dir: e.env.state_dir.clone(),
        platform: Mode::Metal,
    };
    let a = rt().block_on(acquire(&e.env)).unwrap().unwrap();
    assert!(keep_on_state(&a, &store).unwrap());
    assert_eq!(store.read().unwrap().unwrap(), VALID);
    assert!(
        !keep_on_state(&a, &store).unwrap(),
        "same bytes: no rewrite"
    );
    // Next boot without fw_cfg: the STATE copy is used and not rewritten.
    std::fs::remove_dir_all(e.env.sys.join("firmware")).unwrap();
    let a = rt().block_on(acquire(&e.env)).unwrap().unwrap();
    assert_eq!(a.source, SourceKind::State);
    assert!(!keep_on_state(&a, &store).unwrap());
}

/// The sequencer runs phases as `Send` futures and boxes their errors.
#[test]
fn futures_are_send_and_errors_box() {
    fn send<T: Send>(_: &T) {}
    fn boxable<E: std::error::Error + Send + Sync + 'static>() {}
    let e = env();
    let fut = acquire(&e.env);
    send(&fut);
    drop(fut);
    boxable::<AcquireError>();
    boxable::<PersistError>();
    boxable::<crate::disks::DiskError>();
}
