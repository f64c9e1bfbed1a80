//! Reading Debian packages without dpkg: a .deb is an `ar` archive whose `data.tar.*`
//! (xz, zstd or gzip) holds the files. Each package is unpacked once into
//! `<cache>/extracted/<sha256>/` and reused by later builds.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::fetch::Cache;
use crate::lock::LockedPackage;

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} has no data.tar member (is it a .deb?)")]
    NoData { path: PathBuf },
    #[error("{path}: unsupported compression of member {member}")]
    Compression { path: PathBuf, member: String },
    #[error("unpacking {member} of {path}: {source}")]
    Unpack {
        path: PathBuf,
        member: String,
        source: std::io::Error,
    },
}

/// Decompressing reader for a tar member named `*.tar.{xz,zst,gz}` or plain `*.tar`.
pub fn decompressor<'a>(name: &str, reader: impl Read + 'a) -> Option<Box<dyn Read + 'a>> {
    if name.ends_with(".xz") {
        Some(Box::new(xz2::read::XzDecoder::new(reader)))
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(reader)
            .ok()
            .map(|d| Box::new(d) as Box<dyn Read>)
    } else if name.ends_with(".gz") {
        Some(Box::new(flate2::read::GzDecoder::new(reader)))
    } else if name.ends_with(".tar") {
        Some(Box::new(reader))
    } else {
        None
    }
}

/// Unpack the data.tar of `deb` into `dest` (which must not exist yet).
pub fn unpack_data(deb: &Path, dest: &Path) -> Result<(), DebError> {
    let io = |source| DebError::Io {
        path: deb.to_owned(),
        source,
    };
    let file = std::fs::File::open(deb).map_err(io)?;
    let mut archive = ar::Archive::new(file);
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(io)?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if !name.starts_with("data.tar") {
            continue;
        }
        let reader = decompressor(&name, entry).ok_or_else(|| DebError::Compression {
            path: deb.to_owned(),
            member: name.clone(),
        })?;
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        tar.set_preserve_mtime(false);
        tar.set_unpack_xattrs(false);
        tar.unpack(dest).map_err(|source| DebError::Unpack {
            path: deb.to_owned(),
            member: name,
            source,
        })?;
        return Ok(());
    }
    Err(DebError::NoData {
        path: deb.to_owned(),
    })
}

/// The unpacked tree of a locked package, extracting it on first use.
pub fn extracted(cache: &Cache, pkg: &LockedPackage) -> Result<PathBuf, DebError> {
    let dir = cache.root.join("extracted").join(&pkg.sha256);
    let marker = dir.join(".basalt-complete");
    if marker.is_file() {
        return Ok(dir);
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DebError::Io { path, source }
    };
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    let tmp = cache
        .root
        .join("extracted")
        .join(format!("{}.partial", pkg.sha256));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    unpack_data(&cache.deb_path(pkg), &tmp)?;
    std::fs::write(tmp.join(".basalt-complete"), b"").map_err(io(&tmp))?;
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    Ok(dir)
}
