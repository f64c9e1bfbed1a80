//! SPDX 2.3 JSON SBOM: every pinned Debian package, every crate of Cargo.lock and the
//! Kubernetes inputs, with a namespace and creation time that depend only on the inputs.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::lock::Lock;

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("parsing Cargo.lock: {0}")]
    CargoLock(#[from] toml::de::Error),
}

#[derive(Debug, serde::Deserialize)]
struct CargoLock {
    #[serde(default)]
    package: Vec<CargoPackage>,
}

#[derive(Debug, serde::Deserialize)]
struct CargoPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
}

/// An extra input file (kubelet, an image tarball) and its sha256.
pub struct ExtraInput {
    pub name: String,
    pub sha256: String,
}

fn spdx_id(prefix: &str, name: &str, version: &str) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect::<String>()
    };
    format!("SPDXRef-{prefix}-{}-{}", clean(name), clean(version))
}

pub fn document(
    lock: &Lock,
    cargo_lock: &str,
    extras: &[ExtraInput],
    image_version: &str,
    tools: &[(String, String)],
) -> Result<Value, SbomError> {
    let cargo: CargoLock = toml::from_str(cargo_lock)?;
    let mut packages = Vec::new();
    let mut ids = Vec::new();
    for p in &lock.packages {
        let id = spdx_id("deb", &p.name, &p.version);
        ids.push(id.clone());
        packages.push(json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "supplier": "Organization: Debian",
            "downloadLocation": format!("https://deb.debian.org/debian/{}", p.filename),
            "filesAnalyzed": false,
            "checksums": [{ "algorithm": "SHA256", "checksumValue": p.sha256 }],
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:deb/debian/{}@{}?arch={}", p.name, purl_escape(&p.version), p.architecture),
            }],
        }));
    }
    for c in &cargo.package {
        let id = spdx_id("crate", &c.name, &c.version);
        ids.push(id.clone());
        let mut pkg = json!({
            "SPDXID": id,
            "name": c.name,
            "versionInfo": c.version,
            "downloadLocation": if c.source.is_some() { format!("https://crates.io/api/v1/crates/{}/{}/download", c.name, c.version) } else { "NOASSERTION".into() },
            "filesAnalyzed": false,
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:cargo/{}@{}", c.name, c.version),
            }],
        });
        if let Some(sum) = &c.checksum {
            pkg["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": sum }]);
        }
        packages.push(pkg);
    }
    for e in extras {
        let id = spdx_id("input", &e.name, "file");
        ids.push(id.clone());
        packages.push(json!({
            "SPDXID": id,
            "name": e.name,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "checksums": [{ "algorithm": "SHA256", "checksumValue": e.sha256 }],
        }));
    }
    let mut h = Sha256::new();
    h.update(lock.to_toml().unwrap_or_default());
    h.update(cargo_lock);
    for e in extras {
        h.update(&e.name);
        h.update(&e.sha256);
    }
    let inputs_hash = hex::encode(h.finalize());
    let mut creators = vec!["Tool: basalt-image".to_owned()];
    creators.extend(tools.iter().map(|(n, v)| format!("Tool: {n}-{v}")));
    let relationships: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": id }))
        .collect();
    Ok(json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("basalt-{image_version}"),
        "documentNamespace": format!("https://example.invalid/basalt/spdx/basalt-{image_version}-{}", &inputs_hash[..16]),
        "creationInfo": { "created": crate::disk::rfc3339(lock.source_date_epoch), "creators": creators },
        "packages": packages,
        "relationships": relationships,
    }))
}

fn purl_escape(v: &str) -> String {
    v.replace('%', "%25")
        .replace('+', "%2B")
        .replace(':', "%3A")
        .replace('~', "%7E")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::{LockedPackage, Role};

    #[test]
    fn every_input_is_described_with_purl_and_checksum() {
        let lock = Lock {
            source_date_epoch: 1_747_699_200,
            architecture: "amd64".into(),
            packages: vec![LockedPackage {
                name: "runc".into(),
                version: "1.1.5+ds1-1+deb12u1".into(),
                architecture: "amd64".into(),
                sha256: "ab".repeat(32),
                size: 1,
                filename: "pool/r.deb".into(),
                role: Role::Rootfs,
            }],
        };
        let cargo = "version = 4\n[[package]]\nname = \"serde\"\nversion = \"1.0.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"cd\"\n\n[[package]]\nname = \"machined\"\nversion = \"0.1.0\"\n";
        let extras = [ExtraInput {
            name: "kubelet".into(),
            sha256: "ef".repeat(32),
        }];
        let doc = document(&lock, cargo, &extras, "0.1.0", &[]).unwrap();
        let text = doc.to_string();
        assert!(
            text.contains("pkg:deb/debian/runc@1.1.5%2Bds1-1%2Bdeb12u1?arch=amd64"),
            "{text}"
        );
        assert!(text.contains("pkg:cargo/serde@1.0.0"));
        assert!(text.contains("pkg:cargo/machined@0.1.0"));
        assert!(text.contains(&"ef".repeat(32)));
        assert_eq!(doc["creationInfo"]["created"], "2025-05-20T00:00:00Z");
        assert_eq!(doc["packages"].as_array().unwrap().len(), 4);
        assert_eq!(doc, document(&lock, cargo, &extras, "0.1.0", &[]).unwrap());
    }
}
