//! The raw disk: a GPT with one EFI System Partition (FAT32) holding systemd-boot,
//! loader.conf and the first UKI as `EFI/Linux/basalt-A+3.efi`. Every identifier (disk
//! and partition GUIDs, FAT volume id) is derived from the content, every timestamp is
//! SOURCE_DATE_EPOCH. STATE and EPHEMERAL are created by the node on first boot.

use std::io::{Cursor, Write};

use basalt_gpt::{Gpt, Guid, Partition};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("formatting the EFI system partition ({size} bytes): {source}")]
    Format { size: u64, source: std::io::Error },
    #[error("writing {path} into the EFI system partition: {source}")]
    EspWrite {
        path: String,
        source: std::io::Error,
    },
}

pub const SECTOR: u64 = 512;
const MIB: u64 = 1024 * 1024;

/// A version-4-shaped GUID derived from `seed`, so the same content always gets the same
/// disk and partition identifiers.
pub fn derived_guid(label: &str, seed: &[u8]) -> Guid {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update(seed);
    let digest = h.finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&digest[..16]);
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    Guid(g)
}

/// What goes on the ESP, by path ("EFI/BOOT/BOOTX64.EFI").
pub struct EspContent<'a> {
    pub files: Vec<(String, &'a [u8])>,
}

/// FAT time for SOURCE_DATE_EPOCH (UTC; FAT cannot express dates before 1980).
#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 UTC timestamp of `epoch` seconds.
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn fat_time(epoch: u64) -> fatfs::DateTime {
    let (y, m, d) = civil_from_days((epoch / 86_400) as i64);
    let secs = epoch % 86_400;
    fatfs::DateTime {
        date: fatfs::Date {
            year: y.clamp(1980, 2107) as u16,
            month: m as u16,
            day: d as u16,
        },
        time: fatfs::Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

/// Size of the ESP: room for two UKIs (A/B) plus the boot manager and slack, in whole
/// 16 MiB steps, at least 64 MiB (FAT32 needs ≥ 65525 clusters).
pub fn esp_size(uki_len: u64, other_len: u64) -> u64 {
    let want = 2 * uki_len + other_len + 16 * MIB;
    want.div_ceil(16 * MIB).max(4) * 16 * MIB
}

/// Build the FAT32 file system image of the ESP.
pub fn build_esp(
    size: u64,
    content: &EspContent<'_>,
    epoch: u64,
    volume_id: u32,
) -> Result<Vec<u8>, DiskError> {
    let fmt = |source| DiskError::Format { size, source };
    let mut cluster = 4096u32;
    while cluster > 512 && size / u64::from(cluster) < 70_000 {
        cluster /= 2;
    }
    let mut img = Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(
        &mut img,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_cluster(cluster)
            .volume_id(volume_id)
            .volume_label(*b"BASALT-EFI "),
    )
    .map_err(fmt)?;
    // fatfs wants a &'static provider; one small leak per image build.
    let provider: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
    {
        let fs = fatfs::FileSystem::new(
            &mut img,
            fatfs::FsOptions::new()
                .time_provider(provider)
                .update_accessed_date(false),
        )
        .map_err(fmt)?;
        let mut files: Vec<&(String, &[u8])> = content.files.iter().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, data) in files {
            let werr = |source| DiskError::EspWrite {
                path: path.clone(),
                source,
            };
            let root = fs.root_dir();
            let mut dir = root.clone();
            let comps: Vec<&str> = path.split('/').collect();
            for c in &comps[..comps.len() - 1] {
                dir = match dir.open_dir(c) {
                    Ok(d) => d,
                    Err(_) => dir.create_dir(c).map_err(werr)?,
                };
            }
            let mut f = dir.create_file(comps[comps.len() - 1]).map_err(werr)?;
            f.truncate().map_err(werr)?;
            f.write_all(data).map_err(werr)?;
            f.flush().map_err(werr)?;
        }
        fs.unmount().map_err(fmt)?;
    }
    Ok(img.into_inner())
}

/// GPT disk: protective MBR, primary header + entries, the ESP at 1 MiB, backup entries
/// and header at the end, with 1 MiB of slack after the ESP. The table is the one
/// machined parses and grows on first boot, encoded by the same crate.
pub fn build_disk(esp: &[u8], disk_guid: Guid, esp_guid: Guid) -> Vec<u8> {
    let esp_start = MIB / SECTOR;
    let esp_sectors = (esp.len() as u64).div_ceil(SECTOR);
    let total = esp_start + esp_sectors + MIB / SECTOR;
    let table = Gpt {
        sector_size: SECTOR,
        disk_guid,
        first_usable: basalt_gpt::first_usable_lba(SECTOR),
        last_usable: basalt_gpt::last_usable_lba(SECTOR, total),
        backup_lba: total - 1,
        partitions: vec![Partition {
            number: 1,
            type_guid: Guid::EFI_SYSTEM,
            unique_guid: esp_guid,
            first_lba: esp_start,
            last_lba: esp_start + esp_sectors - 1,
            attributes: 0,
            name: "EFI".into(),
        }],
    };
    let mut disk = vec![0u8; (total * SECTOR) as usize];
    // `total` was sized above to hold the table, so the writes always fit.
    for (off, bytes) in table.serialize(total) {
        let off = off as usize;
        disk[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    let off = (esp_start * SECTOR) as usize;
    disk[off..off + esp.len()].copy_from_slice(esp);
    disk
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn dates_convert_like_date_does() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_747_699_200), "2025-05-20T00:00:00Z");
        assert_eq!(rfc3339(951_825_600), "2000-02-29T12:00:00Z");
    }

    #[test]
    fn derived_guids_are_stable_and_version_4_shaped() {
        let g = derived_guid("disk", b"x");
        assert_eq!(g, derived_guid("disk", b"x"));
        assert_ne!(g, derived_guid("esp", b"x"));
        let text = g.to_string();
        assert_eq!(&text[14..15], "4", "{text}");
        assert!(matches!(&text[19..20], "8" | "9" | "A" | "B"), "{text}");
    }

    #[test]
    fn esp_holds_files_with_fixed_times_and_is_reproducible() {
        let content = EspContent {
            files: vec![
                ("EFI/Linux/basalt-A+3.efi".into(), &b"uki"[..]),
                ("loader/loader.conf".into(), &b"timeout 0\n"[..]),
            ],
        };
        let a = build_esp(64 * MIB, &content, 1_747_699_200, 0x1234_5678).unwrap();
        let b = build_esp(64 * MIB, &content, 1_747_699_200, 0x1234_5678).unwrap();
        assert!(a == b, "same inputs must give the same ESP bytes");
        let fs = fatfs::FileSystem::new(Cursor::new(a), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32);
        assert_eq!(fs.volume_id(), 0x1234_5678);
        let mut s = String::new();
        fs.root_dir()
            .open_file("EFI/Linux/basalt-A+3.efi")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "uki");
        let e = fs
            .root_dir()
            .open_dir("loader")
            .unwrap()
            .iter()
            .find(|e| e.as_ref().unwrap().file_name() == "loader.conf")
            .unwrap()
            .unwrap();
        assert_eq!(
            e.modified().date,
            fatfs::Date {
                year: 2025,
                month: 5,
                day: 20
            }
        );
    }

    #[test]
    fn disk_table_is_the_one_machined_parses() {
        let esp = vec![0u8; (4 * MIB) as usize + 100];
        let disk_guid = derived_guid("disk", b"t");
        let esp_guid = derived_guid("esp", b"t");
        let disk = build_disk(&esp, disk_guid, esp_guid);
        let sectors = disk.len() as u64 / SECTOR;
        // ESP rounded up to whole sectors, 1 MiB before and after it.
        assert_eq!(sectors, 2048 + 8193 + 2048);
        let table = Gpt::parse(&disk[..basalt_gpt::primary_len(SECTOR)], SECTOR).unwrap();
        assert_eq!(table.disk_guid, disk_guid);
        assert_eq!(table.backup_lba, sectors - 1);
        assert_eq!((table.first_usable, table.last_usable), (34, sectors - 34));
        let efi = table.by_name("EFI").unwrap();
        assert_eq!((efi.number, efi.type_guid), (1, Guid::EFI_SYSTEM));
        assert_eq!(efi.unique_guid, esp_guid);
        assert_eq!((efi.first_lba, efi.last_lba), (2048, 2048 + 8193 - 1));
    }

    #[test]
    fn gpt_is_accepted_by_sfdisk() {
        let esp = vec![0u8; (4 * MIB) as usize];
        let disk = build_disk(&esp, derived_guid("disk", b"t"), derived_guid("esp", b"t"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        std::fs::write(&path, &disk).unwrap();
        let out = std::process::Command::new("sfdisk")
            .args(["--json"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("\"label\": \"gpt\""), "{text}");
        assert!(
            text.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            "{text}"
        );
        assert!(text.contains("\"start\": 2048"), "{text}");
        assert!(text.contains("\"name\": \"EFI\""), "{text}");
        assert!(
            text.contains(&derived_guid("disk", b"t").to_string()),
            "{text}"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).is_empty(),
            "sfdisk warns: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
