//! Ignition import: what maps is imported, everything else is listed in one error.

use basalt_config::{FileMode, Format, MachineConfig, Mode, ParseError, parse::detect_format};

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn err(name: &str) -> String {
    match MachineConfig::parse(data(name).as_bytes()) {
        Ok(_) => panic!("{name} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn carried_config_becomes_the_config_and_files_are_merged() {
    let text = data("ignition-config-carried.json");
    assert_eq!(detect_format(&text), Format::Ignition);
    let imported = MachineConfig::parse(text.as_bytes()).unwrap();
    let mut expected = MachineConfig::from_yaml(&data("worker.yaml")).unwrap();
    // The carried config predates machine.token in worker.yaml.
    expected.machine.token = None;
    expected.machine.files.push(basalt_config::MachineFile {
        path: "/var/etc/motd".parse().unwrap(),
        permissions: FileMode::new(0o644).unwrap(),
        content: "hello from ignition\n".into(),
    });
    expected.machine.files.push(basalt_config::MachineFile {
        path: "/var/etc/empty".parse().unwrap(),
        permissions: FileMode::default(),
        content: String::new(),
    });
    assert_eq!(imported, expected);
    assert_eq!(
        imported.machine.hostname.as_ref().map(|h| h.as_str()),
        Some("worker-1")
    );
    imported.validate(Mode::Metal).unwrap();
}

#[test]
fn everything_unsupported_is_listed_in_one_error() {
    assert_eq!(
        err("ignition-unsupported.json"),
        "the Ignition config uses 15 things that Basalt cannot import, so nothing was imported:
  storage.files[5].contnets: not part of the Ignition schema for this version
  kernelArguments: kernel arguments are part of the Basalt image's boot entry
  passwd: Basalt has no login users: no shell, no SSH, operators use the API
  systemd: Basalt has no systemd units: machined supervises its own services
  ignition.config: Basalt fetches and merges no further configs
  storage.directories: machine.files has no links or directories
  storage.disks: Basalt partitions and formats its own disk, see machine.install
  storage.filesystems: Basalt partitions and formats its own disk, see machine.install
  storage.links: machine.files has no links or directories
  storage.luks: Basalt partitions and formats its own disk, see machine.install
  storage.raid: Basalt partitions and formats its own disk, see machine.install
  storage.files[1].contents.source: remote sources are refused, inline the contents as a data: URL
  storage.files[2].append: machine.files has no file ownership, appending or other file options
  storage.files[3].user: machine.files has no file ownership, appending or other file options
  storage.files[4].contents.compression: compression, verification and HTTP headers are not supported"
    );
}

#[test]
fn refusals_without_a_machine_config() {
    assert_eq!(
        err("ignition-no-machine-config.json"),
        "the Ignition config carries no machine config: put one (YAML or JSON) in a file at /etc/basalt/config.yaml"
    );
    assert_eq!(
        err("ignition-version-2.json"),
        "not a valid Ignition 3.x config: unsupported Ignition version 2.2.0: Basalt reads spec 3.0 to 3.6"
    );
    let embedded = MachineConfig::parse(data("ignition-bad-embedded-config.json").as_bytes());
    let Err(ParseError::Ignition(e)) = embedded else {
        panic!("{embedded:?}")
    };
    assert_eq!(
        e.to_string(),
        "the machine config in the Ignition file /etc/basalt/config.yaml (storage.files[0]): machine.netwrok: unknown field `netwrok`, expected one of `type`, `hostname`, `install`, `network`, `time`, `kubelet`, `sysctls`, `files`, `kernel`, `registries`, `ca`, `certSANs`, `token`"
    );
}

#[test]
fn hostname_file_must_agree_with_the_config() {
    let text = data("ignition-config-carried.json").replace("worker-1%0A", "other%0A");
    assert_eq!(
        MachineConfig::parse(text.as_bytes())
            .unwrap_err()
            .to_string(),
        "the Ignition config uses one thing that Basalt cannot import, so nothing was imported:
  storage.files[2].contents: it says other but the machine config's machine.hostname says worker-1"
    );
}
