//! docs/configuration.md cannot drift: its field table is rendered from
//! `basalt_config::reference::FIELDS`, and that table must list exactly the paths a
//! config with every field set has. Regenerate the document with
//! `BASALT_UPDATE_DOCS=1 cargo test -p basalt-config --test docs`.

use std::collections::BTreeSet;

use basalt_config::MachineConfig;
use basalt_config::reference::{FIELDS, MAP_KEY_PLACEHOLDERS, render_into};

fn doc_path() -> String {
    format!("{}/../docs/configuration.md", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_reference_matches_the_generator() {
    let path = doc_path();
    let committed = std::fs::read_to_string(&path).unwrap();
    let rendered = render_into(&committed).expect("docs/configuration.md lost its markers");
    if std::env::var_os("BASALT_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    assert!(
        committed == rendered,
        "docs/configuration.md is stale: run BASALT_UPDATE_DOCS=1 cargo test -p basalt-config --test docs"
    );
}

/// Every path of a JSON tree: objects and lists are recorded and descended into
/// (list elements as `[]`); maps of plain values are leaves; maps listed in
/// MAP_KEY_PLACEHOLDERS are descended with the placeholder as key.
fn walk(value: &serde_json::Value, path: &str, out: &mut BTreeSet<String>) {
    if !path.is_empty() {
        out.insert(path.to_owned());
    }
    let placeholder = MAP_KEY_PLACEHOLDERS.iter().find(|(map, _)| *map == path);
    let is_plain_map = FIELDS
        .iter()
        .any(|f| f.path == path && f.ty.starts_with("map of"));
    if is_plain_map && placeholder.is_none() {
        return;
    }
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let key = placeholder.map_or(key.as_str(), |(_, p)| p);
                let child_path = if path.is_empty() {
                    key.to_owned()
                } else {
                    format!("{path}.{key}")
                };
                walk(child, &child_path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_object()) {
                for (key, child) in item.as_object().into_iter().flatten() {
                    walk(child, &format!("{path}[].{key}"), out);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn reference_lists_exactly_the_model_fields() {
    let text = std::fs::read_to_string(format!(
        "{}/tests/data/reference-every-field.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let config = MachineConfig::from_yaml(&text).unwrap();
    let tree = serde_json::to_value(&config).unwrap();
    let mut model_paths = BTreeSet::new();
    walk(&tree, "", &mut model_paths);
    let documented: BTreeSet<String> = FIELDS.iter().map(|f| f.path.to_owned()).collect();
    let undocumented: Vec<_> = model_paths.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&model_paths).collect();
    assert!(
        undocumented.is_empty(),
        "fields missing from reference.rs: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "reference.rs documents fields the model (or reference-every-field.yaml) lacks: {stale:?}"
    );
}

/// The defaults the reference states are the ones the model applies.
#[test]
fn documented_defaults_are_the_model_defaults() {
    let minimal = std::fs::read_to_string(format!(
        "{}/tests/data/minimal-defaults.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let config = MachineConfig::from_yaml(&minimal).unwrap();
    let default = |path: &str| {
        FIELDS
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} is not documented"))
            .default
    };
    let list = |items: &[basalt_config::Cidr]| {
        format!(
            "[{}]",
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let c = &config.cluster;
    assert_eq!(
        default("cluster.kubernetesVersion"),
        c.kubernetes_version.as_str()
    );
    assert_eq!(
        default("cluster.network.podSubnets"),
        list(&c.network.pod_subnets)
    );
    assert_eq!(
        default("cluster.network.serviceSubnets"),
        list(&c.network.service_subnets)
    );
    assert_eq!(
        default("cluster.network.dnsDomain"),
        c.network.dns_domain.as_str()
    );
    assert_eq!(default("cluster.network.cni"), "{name: flannel}");
    assert_eq!(c.network.cni.name, basalt_config::CniName::Flannel);
    assert_eq!(default("cluster.network.cni.name"), "flannel");
    assert_eq!(default("cluster.sandboxImage"), c.sandbox_image.as_str());
    assert_eq!(default("cluster.coreDNS.image"), c.core_dns_image());
    let versioned = |path: &str| default(path).replace("<kubernetesVersion>", "v1.31.2");
    assert_eq!(versioned("cluster.apiServer.image"), c.api_server_image());
    assert_eq!(
        versioned("cluster.controllerManager.image"),
        c.controller_manager_image()
    );
    assert_eq!(versioned("cluster.scheduler.image"), c.scheduler_image());
    assert_eq!(versioned("cluster.proxy.image"), c.proxy_image());
    assert_eq!(
        default("machine.files[].permissions"),
        config.machine.files[0].permissions.to_string()
    );
    let falses = [
        (
            "machine.install.wipe",
            config.machine.install.as_ref().unwrap().wipe,
        ),
        (
            "machine.network.interfaces[].dhcp",
            config.machine.network.interfaces[0].dhcp,
        ),
        ("cluster.proxy.disabled", c.proxy.disabled),
        (
            "cluster.allowSchedulingOnControlPlanes",
            c.allow_scheduling_on_control_planes,
        ),
    ];
    for (path, value) in falses {
        assert_eq!(default(path), "false", "{path}");
        assert!(!value, "{path}");
    }
}
