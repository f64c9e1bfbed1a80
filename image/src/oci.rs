//! A reproducible OCI image layout archive for the etcd container machined runs: one
//! uncompressed layer (sorted entries, owner 0:0, mtime SOURCE_DATE_EPOCH), a config with
//! the etcd entrypoint and an index.json naming it `basalt.local/etcd:<tag>`.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::tree::{Node, Tree, TreeError};

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("writing tar entry {path}: {source}")]
    Tar {
        path: String,
        source: std::io::Error,
    },
}

/// The reference the etcd image is tagged with; Debian's `+` and `~` are not valid in a
/// tag, so they become `_` (3.4.23-4+b4 → 3.4.23-4_b4).
pub fn etcd_ref(debian_version: &str) -> String {
    let tag: String = debian_version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("basalt.local/etcd:{tag}")
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    // ustar user/group names are left empty: only numeric ids matter.
    h
}

/// Tar of `tree` (paths relative, directories with a trailing slash).
pub fn tar_of_tree(tree: &Tree, mtime: u64) -> Result<Vec<u8>, OciError> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, node) in &tree.nodes {
        let rel = &path[1..];
        let terr = |source| OciError::Tar {
            path: path.clone(),
            source,
        };
        match node {
            Node::Dir { mode } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0, mtime);
                b.append_data(&mut h, format!("{rel}/"), std::io::empty())
                    .map_err(terr)?;
            }
            Node::File { content, mode } => {
                let data = content.read()?;
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64, mtime);
                b.append_data(&mut h, rel, &data[..]).map_err(terr)?;
            }
            Node::Symlink { target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                b.append_link(&mut h, rel, target).map_err(terr)?;
            }
            Node::CharDev { mode, major, minor } => {
                let mut h = header(tar::EntryType::Char, *mode, 0, mtime);
                h.set_device_major(*major).map_err(terr)?;
                h.set_device_minor(*minor).map_err(terr)?;
                b.append_data(&mut h, rel, std::io::empty()).map_err(terr)?;
            }
        }
    }
    b.into_inner().map_err(|source| OciError::Tar {
        path: "(end)".into(),
        source,
    })
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The OCI image layout archive (`oci-layout`, `index.json`, `blobs/sha256/*`).
pub fn image_archive(
    layer_tree: &Tree,
    entrypoint: &[&str],
    reference: &str,
    epoch: u64,
) -> Result<Vec<u8>, OciError> {
    let layer = tar_of_tree(layer_tree, epoch)?;
    let layer_digest = digest(&layer);
    let created = crate::disk::rfc3339(epoch);
    let config = serde_json::to_vec(&json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created": created, "created_by": "basalt-image" }],
    }))
    .unwrap_or_default();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len() }],
    }))
    .unwrap_or_default();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": reference },
        }],
    }))
    .unwrap_or_default();
    let mut outer = Tree::default();
    outer.bytes(
        "/oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        0o644,
    )?;
    outer.bytes("/index.json", index, 0o644)?;
    for blob in [config, manifest, layer] {
        let name = format!("/blobs/sha256/{}", &digest(&blob)[7..]);
        outer.bytes(&name, blob, 0o644)?;
    }
    tar_of_tree(&outer, epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn reference_tag_is_valid() {
        assert_eq!(etcd_ref("3.4.23-4+b4"), "basalt.local/etcd:3.4.23-4_b4");
        assert_eq!(etcd_ref("1:2~rc1"), "basalt.local/etcd:1_2_rc1");
    }

    #[test]
    fn layout_is_consistent_and_reproducible() {
        let mut t = Tree::default();
        t.bytes("/usr/local/bin/etcd", "ELF", 0o755).unwrap();
        let a = image_archive(&t, &["/usr/local/bin/etcd"], "basalt.local/etcd:1", 42).unwrap();
        assert_eq!(
            a,
            image_archive(&t, &["/usr/local/bin/etcd"], "basalt.local/etcd:1", 42).unwrap()
        );
        let mut files = std::collections::BTreeMap::new();
        for e in tar::Archive::new(&a[..]).entries().unwrap() {
            let mut e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 42);
            assert_eq!(e.header().uid().unwrap(), 0);
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(e.path().unwrap().to_string_lossy().into_owned(), data);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "basalt.local/etcd:1"
        );
        let mdigest = m["digest"].as_str().unwrap();
        let manifest_bytes = &files[&format!("blobs/sha256/{}", &mdigest[7..])];
        assert_eq!(digest(manifest_bytes), mdigest);
        let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes).unwrap();
        let ldigest = manifest["layers"][0]["digest"].as_str().unwrap();
        let layer = &files[&format!("blobs/sha256/{}", &ldigest[7..])];
        let names: Vec<String> = tar::Archive::new(&layer[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/etcd"]
        );
    }
}
