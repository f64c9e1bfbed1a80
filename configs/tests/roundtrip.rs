//! Generated configs survive serialisation: parse(serialize(x)) == x in YAML and JSON,
//! and the canonical YAML is a fixed point.

use std::collections::BTreeMap;

use basalt_config::*;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

const MACHINE_CA_CRT: &str = include_str!("data/pki/machine-ca.crt");
const MACHINE_CA_KEY: &str = include_str!("data/pki/machine-ca.key");
const CLUSTER_CA_CRT: &str = include_str!("data/pki/cluster-ca.crt");
const CLUSTER_CA_KEY: &str = include_str!("data/pki/cluster-ca.key");

/// A strategy producing values of a newtype from strings matching `regex`; values the
/// type refuses are filtered out (the regexes are chosen so that few are).
fn parsed<T>(regex: &'static str) -> impl Strategy<Value = T>
where
    T: std::str::FromStr + std::fmt::Debug,
{
    proptest::string::string_regex(regex)
        .unwrap_or_else(|e| panic!("{regex}: {e}"))
        .prop_filter_map("refused by FromStr", |s| s.parse().ok())
}

fn ipv4() -> impl Strategy<Value = std::net::Ipv4Addr> {
    any::<[u8; 4]>().prop_map(std::net::Ipv4Addr::from)
}

fn ip() -> impl Strategy<Value = IpAddress> {
    prop_oneof![
        ipv4().prop_map(|a| IpAddress(a.into())),
        any::<[u16; 8]>().prop_map(|s| IpAddress(std::net::Ipv6Addr::from(s).into())),
    ]
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop_oneof![
        (ipv4(), 0u8..=32).prop_map(|(a, p)| Cidr::new(ipnet::Ipv4Net::new_assert(a, p).into())),
        (any::<[u16; 8]>(), 0u8..=128)
            .prop_map(|(s, p)| { Cidr::new(ipnet::Ipv6Net::new_assert(s.into(), p).into()) }),
    ]
}

/// Free text, including what YAML finds awkward: leading/trailing spaces, line breaks,
/// `#`, quotes, things that look like numbers, booleans or null.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "[ -~\\n\\t]{0,60}",
        "[\\x00-\\x7f]{0,20}",
        Just("yes".to_owned()),
        Just("null".to_owned()),
        Just("~".to_owned()),
        Just("0o644".to_owned()),
        Just("1e3".to_owned()),
        Just("".to_owned()),
        Just("  leading and trailing  \n\n".to_owned()),
        Just("- not a list".to_owned()),
        Just("key: value".to_owned()),
    ]
}

fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[a-z][a-z0-9.-]{0,12}", text(), 0..3)
}

fn interface() -> impl Strategy<Value = NetworkInterface> {
    let selector = prop_oneof![
        parsed::<InterfaceName>("[a-z][a-z0-9]{0,14}").prop_map(InterfaceSelector::Name),
        any::<[u8; 6]>().prop_map(|m| {
            InterfaceSelector::Device(DeviceSelector {
                hardware_addr: MacAddress::new(m),
            })
        }),
    ];
    let route = (cidr(), option::of(ip()), option::of(any::<u32>())).prop_map(
        |(network, gateway, metric)| Route {
            network,
            gateway,
            metric,
        },
    );
    (
        selector,
        any::<bool>(),
        vec(cidr(), 0..3),
        vec(route, 0..3),
        option::of(any::<u32>()),
        option::of(ip().prop_map(|ip| Vip { ip })),
    )
        .prop_map(
            |(selector, dhcp, addresses, routes, mtu, vip)| NetworkInterface {
                selector,
                dhcp,
                addresses,
                routes,
                mtu,
                vip,
            },
        )
}

fn ca(with_key: bool) -> CertificateAndKey {
    let (crt, key) = if with_key {
        (MACHINE_CA_CRT, Some(MACHINE_CA_KEY))
    } else {
        (CLUSTER_CA_CRT, None)
    };
    CertificateAndKey {
        crt: crt.parse().unwrap(),
        key: key.map(|k| k.parse().unwrap()),
    }
}

fn image() -> impl Strategy<Value = ContainerImage> {
    parsed("[a-z0-9.]{1,12}/[a-z0-9-]{1,12}:v?[0-9.]{1,8}")
}

fn machine() -> impl Strategy<Value = MachineSpec> {
    let files = vec(
        (
            parsed::<AbsolutePath>("(/[a-z0-9._-]{1,8}){1,4}"),
            (0u32..=0o7777),
            text(),
        )
            .prop_map(|(path, mode, content)| MachineFile {
                path,
                permissions: FileMode::new(mode).unwrap(),
                content,
            }),
        0..3,
    );
    let modules = vec(
        (
            parsed::<KernelModuleName>("[a-z_][a-z0-9_]{0,20}"),
            vec(
                parsed::<KernelModuleParameter>("[a-z_]{1,8}(=[a-z0-9,]{0,8})?"),
                0..3,
            ),
        )
            .prop_map(|(name, parameters)| KernelModule { name, parameters }),
        0..3,
    );
    let mirrors = btree_map(
        parsed::<RegistryName>("[a-z0-9.-]{1,12}(:[0-9]{1,5})?"),
        vec(
            parsed::<MirrorEndpoint>("https?://[a-z0-9.-]{1,12}(:[0-9]{2,4})?(/[a-z]{0,6})?"),
            1..3,
        )
        .prop_map(|endpoints| RegistryMirror { endpoints }),
        0..3,
    );
    let kubelet = (string_map(), vec(cidr(), 0..2), string_map(), string_map()).prop_map(
        |(extra_args, valid_subnets, node_labels, node_taints)| KubeletSpec {
            extra_args,
            node_ip: NodeIpSpec { valid_subnets },
            node_labels,
            node_taints,
        },
    );
    (
        (
            prop_oneof![Just(MachineType::Controlplane), Just(MachineType::Worker)],
            option::of(parsed::<Hostname>(
                "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,6}){0,2}",
            )),
            option::of(
                (parsed::<AbsolutePath>("/dev/[a-z]{3,5}"), any::<bool>())
                    .prop_map(|(disk, wipe)| InstallSpec { disk, wipe }),
            ),
            vec(interface(), 0..3),
            vec(ip(), 0..3),
            vec(parsed::<TimeServer>("[a-z]{1,8}\\.[a-z]{2,5}"), 0..2),
        ),
        (
            kubelet,
            btree_map(
                parsed::<SysctlKey>("[a-z0-9_]{1,8}(\\.[a-z0-9_-]{1,8}){0,3}"),
                parsed::<SysctlValue>("[ -~]{0,10}"),
                0..3,
            ),
            files,
            modules,
            mirrors,
            any::<bool>(),
            vec(
                parsed::<SubjectAltName>("[a-z]{1,8}\\.example|10\\.[0-9]\\.[0-9]\\.[0-9]"),
                0..3,
            ),
            option::of(parsed::<BootstrapToken>("[a-z0-9]{6}\\.[a-z0-9]{16}")),
        ),
    )
        .prop_map(
            |(
                (machine_type, hostname, install, interfaces, nameservers, servers),
                (kubelet, sysctls, files, modules, mirrors, key, cert_sans, token),
            )| MachineSpec {
                machine_type,
                hostname,
                install,
                network: NetworkSpec {
                    interfaces,
                    nameservers,
                },
                time: TimeSpec { servers },
                kubelet,
                sysctls,
                files,
                kernel: KernelSpec { modules },
                registries: RegistriesSpec { mirrors },
                ca: ca(key),
                cert_sans,
                token,
            },
        )
}

fn component() -> impl Strategy<Value = ComponentSpec> {
    (option::of(image()), string_map())
        .prop_map(|(image, extra_args)| ComponentSpec { image, extra_args })
}

fn cluster() -> impl Strategy<Value = ClusterSpec> {
    (
        (
            parsed::<ClusterName>("[a-z]([a-z0-9-]{0,10}[a-z0-9])?"),
            parsed::<Endpoint>("https://([a-z]{1,8}\\.example|10\\.0\\.0\\.[0-9]{1,2}|\\[fd00::[0-9]{1,2}\\]):[0-9]{3,5}"),
            parsed::<KubernetesVersion>("v1\\.[0-9]{1,2}\\.[0-9]{1,2}(-rc\\.[0-9])?"),
            vec(cidr(), 0..3),
            vec(cidr(), 0..3),
            parsed::<DnsName>("[a-z]{1,8}\\.[a-z]{2,5}"),
            prop_oneof![Just(CniName::Flannel), Just(CniName::None)],
            prop_oneof![
                "[a-z0-9]{6}\\.[a-z0-9]{16}".prop_map(|t| t.parse::<BootstrapToken>().unwrap()),
                Just(BootstrapToken::redacted()),
            ],
        ),
        (
            any::<[bool; 4]>(),
            string_map(),
            vec(cidr(), 0..2),
            (option::of(image()), string_map(), vec(parsed::<SubjectAltName>("[a-z]{1,8}\\.example"), 0..2)),
            component(),
            component(),
            (option::of(image()), string_map(), any::<bool>()),
            option::of(image()),
            any::<bool>(),
            image(),
        ),
    )
        .prop_map(
            |(
                (name, endpoint, kubernetes_version, pod_subnets, service_subnets, dns_domain, cni, token),
                (
                    keys,
                    etcd_args,
                    advertised_subnets,
                    (api_image, api_args, cert_sans),
                    controller_manager,
                    scheduler,
                    (proxy_image, proxy_args, disabled),
                    core_dns_image,
                    allow_scheduling_on_control_planes,
                    sandbox_image,
                ),
            )| ClusterSpec {
                name,
                control_plane: ControlPlaneSpec { endpoint },
                kubernetes_version,
                network: ClusterNetworkSpec {
                    pod_subnets,
                    service_subnets,
                    dns_domain,
                    cni: CniSpec { name: cni },
                },
                token,
                ca: ca(keys[0]),
                aggregator_ca: keys[1].then(|| ca(keys[0])),
                service_account: keys[2].then(|| ServiceAccountSpec {
                    key: if keys[3] { PemPrivateKey::redacted() } else { CLUSTER_CA_KEY.parse().unwrap() },
                }),
                etcd: EtcdSpec {
                    ca: keys[3].then(|| ca(keys[1])),
                    extra_args: etcd_args,
                    advertised_subnets,
                },
                api_server: ApiServerSpec { image: api_image, extra_args: api_args, cert_sans },
                controller_manager,
                scheduler,
                proxy: ProxySpec { image: proxy_image, extra_args: proxy_args, disabled },
                core_dns: CoreDnsSpec { image: core_dns_image },
                allow_scheduling_on_control_planes,
                sandbox_image,
            },
        )
}

fn config() -> impl Strategy<Value = MachineConfig> {
    (machine(), cluster()).prop_map(|(machine, cluster)| MachineConfig {
        version: ConfigVersion::V1Alpha1,
        machine,
        cluster,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn yaml_round_trip(config in config()) {
        let yaml = config.to_yaml();
        let back = MachineConfig::from_yaml(&yaml)
            .unwrap_or_else(|e| panic!("{e}\n--- canonical YAML ---\n{yaml}"));
        prop_assert_eq!(&back, &config);
        prop_assert_eq!(back.to_yaml(), yaml);
        prop_assert_eq!(MachineConfig::parse(config.to_yaml().as_bytes()).unwrap(), config.clone());
        prop_assert_eq!(back.redacted().redacted(), config.redacted());
    }

    #[test]
    fn json_round_trip(config in config()) {
        let json = config.to_json();
        let back = MachineConfig::parse(json.as_bytes())
            .unwrap_or_else(|e| panic!("{e}\n--- JSON ---\n{json}"));
        prop_assert_eq!(back, config);
    }

    /// Validation never panics, whatever the generated config holds.
    #[test]
    fn validation_is_total(config in config()) {
        for mode in Mode::ALL {
            let _ = config.validate(mode);
        }
    }
}
