//! Semantic validation: one fixture per rule, each asserting the exact messages, and a
//! fixture breaking several rules at once to show that all are reported together.

use basalt_config::{MachineConfig, Mode, ValidationErrors};

fn data(name: &str) -> String {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn problems(fixture: &str, mode: Mode) -> Vec<String> {
    let config = MachineConfig::from_yaml(&data(fixture)).unwrap();
    match config.validate(mode) {
        Ok(()) => Vec::new(),
        Err(ValidationErrors { errors }) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn valid_fixtures_pass() {
    for (fixture, modes) in [
        ("controlplane.yaml", &[Mode::Metal, Mode::Cloud][..]),
        ("worker.yaml", &[Mode::Metal, Mode::Cloud]),
        ("container-worker.yaml", &[Mode::Cloud, Mode::Container]),
        ("bad-metal-no-install.yaml", &[Mode::Cloud]),
    ] {
        for &mode in modes {
            assert_eq!(
                problems(fixture, mode),
                Vec::<String>::new(),
                "{fixture} in {mode} mode"
            );
        }
    }
}

#[test]
fn each_rule_reports_its_field_and_a_sentence() {
    let cases: &[(&str, &[&str])] = &[
        (
            "bad-cidr-overlap.yaml",
            &[
                "cluster.network.serviceSubnets[0]: 10.240.0.0/12 overlaps the pod subnet 10.244.0.0/16 (cluster.network.podSubnets[0]); pod and service addresses must not collide",
            ],
        ),
        (
            "bad-subnet-host-bits.yaml",
            &[
                "cluster.network.podSubnets[0]: 10.244.1.0/16 has host bits set; write the subnet as 10.244.0.0/16",
            ],
        ),
        (
            "bad-worker-with-ca-key.yaml",
            &[
                "cluster.ca.key: a worker must not carry the private key of the Kubernetes CA: whoever reads the worker's config could mint certificates",
            ],
        ),
        (
            "bad-worker-with-service-account-key.yaml",
            &[
                "cluster.serviceAccount.key: a worker must not carry the service-account signing key: whoever reads the worker's config could forge service-account tokens",
            ],
        ),
        (
            "bad-vip-outside-subnet.yaml",
            &[
                "machine.network.interfaces[0].vip.ip: 10.6.0.10 is outside the interface's subnets (10.5.0.0/24)",
            ],
        ),
        (
            "bad-vip-on-dhcp-interface.yaml",
            &[
                "machine.network.interfaces[1].vip.ip: 10.5.0.10 is on a DHCP-only interface: add a static address in the VIP's subnet to addresses, because the subnet a DHCP lease gives is not known in advance",
            ],
        ),
        (
            "bad-vip-on-worker.yaml",
            &[
                "machine.network.interfaces[0].vip: only control planes hold the shared VIP; remove it from this worker",
            ],
        ),
        (
            "bad-duplicate-interface-name.yaml",
            &[
                "machine.network.interfaces[2].interface: eth0 is already configured by machine.network.interfaces[0]",
            ],
        ),
        (
            "bad-duplicate-interface-mac.yaml",
            &[
                "machine.network.interfaces[2].deviceSelector.hardwareAddr: 52:54:00:12:34:56 is already selected by machine.network.interfaces[1]",
            ],
        ),
        (
            "bad-certificate-garbage.yaml",
            &[
                "cluster.ca.crt: the certificate is not a valid X.509 certificate: Parsing Error: NomError(Eof)",
            ],
        ),
        (
            "bad-key-mismatch.yaml",
            &[
                "cluster.ca.key: the private key does not belong to the certificate for cluster-ca: their public keys differ",
            ],
        ),
        (
            "bad-not-a-ca.yaml",
            &[
                "machine.ca.crt: the certificate for leaf is not a certificate authority (basicConstraints CA:TRUE is missing)",
            ],
        ),
        (
            "bad-controlplane-missing-keys.yaml",
            &[
                "machine.ca.key: is required on a control plane: the node API CA signs certificates there",
                "cluster.ca.key: is required on a control plane: the Kubernetes CA signs certificates there",
                "cluster.aggregatorCA: is required on a control plane: the front-proxy CA, with its key",
                "cluster.etcd.ca: is required on a control plane: the etcd CA, with its key",
                "cluster.serviceAccount: is required on a control plane: the key that signs service-account tokens",
            ],
        ),
        (
            "bad-route-family.yaml",
            &[
                "machine.network.interfaces[0].routes[0].gateway: fd00::1 and the route's network 0.0.0.0/0 are of different IP families",
            ],
        ),
        (
            "bad-duplicate-file.yaml",
            &["machine.files[1].path: /var/etc/motd is already written by machine.files[0]"],
        ),
        (
            "bad-taint.yaml",
            &[
                "machine.kubelet.nodeTaints.dedicated: expected value:Effect with Effect one of NoSchedule, PreferNoSchedule, NoExecute",
            ],
        ),
        (
            "bad-mtu.yaml",
            &["machine.network.interfaces[0].mtu: 70000 is outside 68..65535"],
        ),
        (
            "bad-metal-no-install.yaml",
            &[
                "machine.install: is required in metal mode: set machine.install.disk to the disk Basalt installs itself on",
            ],
        ),
    ];
    for (fixture, expected) in cases {
        assert_eq!(problems(fixture, Mode::Metal), *expected, "{fixture}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    assert_eq!(
        problems("bad-many-problems.yaml", Mode::Metal),
        [
            "machine.install: is required in metal mode: set machine.install.disk to the disk Basalt installs itself on",
            "machine.network.interfaces[0].vip: only control planes hold the shared VIP; remove it from this worker",
            "machine.network.interfaces[1].interface: eth0 is already configured by machine.network.interfaces[0]",
            "cluster.network.serviceSubnets[0]: 10.244.0.0/12 has host bits set; write the subnet as 10.240.0.0/12",
            "cluster.network.serviceSubnets[0]: 10.244.0.0/12 overlaps the pod subnet 10.244.0.0/16 (cluster.network.podSubnets[0]); pod and service addresses must not collide",
            "cluster.ca.key: a worker must not carry the private key of the Kubernetes CA: whoever reads the worker's config could mint certificates",
        ]
    );
    let err = MachineConfig::from_yaml(&data("bad-many-problems.yaml"))
        .unwrap()
        .validate(Mode::Metal)
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the machine config has 6 problems:\n  machine.install: ")
    );
}

#[test]
fn container_mode_refuses_what_the_runtime_owns() {
    assert_eq!(
        problems("controlplane.yaml", Mode::Container),
        [
            "machine.install: is not allowed in container mode: the container runtime provides the root filesystem",
            "machine.network.interfaces: is not allowed in container mode: the container runtime owns the network",
            "machine.kernel.modules: is not allowed in container mode: a container cannot load kernel modules",
        ]
    );
}
