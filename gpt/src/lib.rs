//! GUID Partition Table, parsed from and serialised to plain bytes. No I/O here: callers
//! read or write the sectors, this crate decides what they mean and which sectors a table
//! consists of, so every rule is testable on a `Vec<u8>`.
//!
//! Two writers share it: the image builder lays out the raw disk's first table, and
//! machined re-reads that table on first boot to grow it and add STATE and EPHEMERAL.
//! One encoder means the table machined parses is by construction one it could have
//! written.

use std::fmt;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
/// The UEFI spec's minimum array size; every tool (and Basalt's image builder) uses it.
pub const ENTRY_COUNT: u32 = 128;
pub const ENTRY_SIZE: u32 = 128;
const NAME_UNITS: usize = 36;

/// A GUID in the on-disk (mixed-endian) byte order GPT uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);
    /// "Linux filesystem data" — what sfdisk and the image builder call type `linux`.
    pub const LINUX_FILESYSTEM: Guid = Guid::from_fields(
        0x0FC6_3DAF,
        0x8483,
        0x4772,
        [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
    );
    pub const EFI_SYSTEM: Guid = Guid::from_fields(
        0xC12A_7328,
        0xF81F,
        0x11D2,
        [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
    );

    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Guid {
        let a = a.to_le_bytes();
        let b = b.to_le_bytes();
        let c = c.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5],
            d[6], d[7],
        ])
    }

    /// Parses the textual form (`C12A7328-F81F-11D2-BA4B-00A0C93EC93B`, any case), as
    /// systemd-boot exports it in `LoaderDevicePartUUID`.
    pub fn parse(text: &str) -> Option<Guid> {
        let text = text.trim().trim_matches(char::from(0));
        let groups: Vec<&str> = text.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
            return None;
        }
        let hex: String = groups.concat();
        let mut raw = [0u8; 16];
        for (i, byte) in raw.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        let a = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let b = u16::from_be_bytes([raw[4], raw[5]]);
        let c = u16::from_be_bytes([raw[6], raw[7]]);
        let mut d = [0u8; 8];
        d.copy_from_slice(&raw[8..]);
        Some(Guid::from_fields(a, b, c, d))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
            u16::from_le_bytes([g[4], g[5]]),
            u16::from_le_bytes([g[6], g[7]]),
            g[8],
            g[9],
            g[10],
            g[11],
            g[12],
            g[13],
            g[14],
            g[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One used slot of the partition array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based slot number: the kernel names the device after it (`vda2`, `loop0p2`).
    pub number: u32,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Partition {
    pub fn sectors(&self) -> u64 {
        self.last_lba - self.first_lba + 1
    }
}

/// A parsed, CRC-checked GPT (from the primary header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub sector_size: u64,
    pub disk_guid: Guid,
    pub first_usable: u64,
    pub last_usable: u64,
    /// Where the backup header sits; differs from the last sector when the disk is
    /// larger than the image it was written from.
    pub backup_lba: u64,
    pub partitions: Vec<Partition>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    #[error("sector 1 carries no GPT signature, so the disk has no GUID partition table")]
    NoSignature,
    #[error("the GPT header is {0} bytes; only the 92-byte revision 1.0 header is understood")]
    UnsupportedHeader(u32),
    #[error(
        "the GPT header checksum does not match (stored {stored:#010x}, computed {computed:#010x})"
    )]
    HeaderCrc { stored: u32, computed: u32 },
    #[error(
        "the GPT partition array checksum does not match (stored {stored:#010x}, computed {computed:#010x})"
    )]
    EntriesCrc { stored: u32, computed: u32 },
    #[error(
        "the GPT partition array has {count} entries of {size} bytes; Basalt only edits the standard 128×128"
    )]
    UnsupportedArray { count: u32, size: u32 },
    #[error(
        "the GPT partition array starts at LBA {0}; Basalt only edits tables whose array follows the header at LBA 2"
    )]
    UnsupportedArrayLocation(u64),
    #[error("{have} bytes were read for the GPT but {need} are needed")]
    ShortRead { have: usize, need: usize },
    #[error(
        "a buffer of {len} bytes cannot hold a GPT whose usable space ends at LBA {last_usable} with {sector_size}-byte sectors"
    )]
    BufferTooSmall {
        len: usize,
        sector_size: u64,
        last_usable: u64,
    },
    #[error(
        "partition {number} spans LBA {first}..={last}, outside the usable {usable_first}..={usable_last}"
    )]
    OutOfRange {
        number: u32,
        first: u64,
        last: u64,
        usable_first: u64,
        usable_last: u64,
    },
}

/// Sectors the 128×128 partition array occupies.
pub fn array_sectors(sector_size: u64) -> u64 {
    (u64::from(ENTRY_COUNT) * u64::from(ENTRY_SIZE)).div_ceil(sector_size)
}

/// First LBA a partition may use: after the protective MBR, the primary header and the
/// primary array.
pub fn first_usable_lba(sector_size: u64) -> u64 {
    2 + array_sectors(sector_size)
}

/// Last LBA a partition may use on a disk of `total_sectors`: before the backup array
/// and the backup header in the last sector. Zero when the disk cannot hold a table.
pub fn last_usable_lba(sector_size: u64, total_sectors: u64) -> u64 {
    total_sectors.saturating_sub(2 + array_sectors(sector_size))
}

/// Bytes the executor must read from the start of the disk to parse the primary GPT.
pub fn primary_len(sector_size: u64) -> usize {
    ((2 + array_sectors(sector_size)) * sector_size) as usize
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    Guid(g)
}

impl Gpt {
    /// Parses the primary GPT from the first `primary_len(sector_size)` bytes of a disk.
    pub fn parse(start_of_disk: &[u8], sector_size: u64) -> Result<Gpt, GptError> {
        let need = primary_len(sector_size);
        if start_of_disk.len() < need {
            return Err(GptError::ShortRead {
                have: start_of_disk.len(),
                need,
            });
        }
        let ss = sector_size as usize;
        let h = &start_of_disk[ss..2 * ss];
        if &h[0..8] != SIGNATURE {
            return Err(GptError::NoSignature);
        }
        let header_size = le32(h, 12);
        if header_size != HEADER_SIZE {
            return Err(GptError::UnsupportedHeader(header_size));
        }
        let stored = le32(h, 16);
        let mut copy = h[..HEADER_SIZE as usize].to_vec();
        copy[16..20].fill(0);
        let computed = crc32fast::hash(&copy);
        if stored != computed {
            return Err(GptError::HeaderCrc { stored, computed });
        }
        let entries_lba = le64(h, 72);
        let count = le32(h, 80);
        let size = le32(h, 84);
        if count != ENTRY_COUNT || size != ENTRY_SIZE {
            return Err(GptError::UnsupportedArray { count, size });
        }
        if entries_lba != 2 {
            return Err(GptError::UnsupportedArrayLocation(entries_lba));
        }
        let array = &start_of_disk[2 * ss..2 * ss + (count * size) as usize];
        let stored = le32(h, 88);
        let computed = crc32fast::hash(array);
        if stored != computed {
            return Err(GptError::EntriesCrc { stored, computed });
        }
        let first_usable = le64(h, 40);
        let last_usable = le64(h, 48);
        let mut partitions = Vec::new();
        for (i, e) in array.chunks_exact(size as usize).enumerate() {
            let type_guid = guid_at(e, 0);
            if type_guid == Guid::ZERO {
                continue;
            }
            let units: Vec<u16> = e[56..56 + 2 * NAME_UNITS]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            let p = Partition {
                number: i as u32 + 1,
                type_guid,
                unique_guid: guid_at(e, 16),
                first_lba: le64(e, 32),
                last_lba: le64(e, 40),
                attributes: le64(e, 48),
                name: String::from_utf16_lossy(&units),
            };
            if p.first_lba < first_usable || p.last_lba > last_usable || p.last_lba < p.first_lba {
                return Err(GptError::OutOfRange {
                    number: p.number,
                    first: p.first_lba,
                    last: p.last_lba,
                    usable_first: first_usable,
                    usable_last: last_usable,
                });
            }
            partitions.push(p);
        }
        Ok(Gpt {
            sector_size,
            disk_guid: guid_at(h, 56),
            first_usable,
            last_usable,
            backup_lba: le64(h, 32),
            partitions,
        })
    }

    pub fn by_name(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// The writes (byte offset, bytes) that put this table on a disk of `total_sectors`:
    /// protective MBR, primary header + array, backup array + header at the very end.
    /// When the old backup sat elsewhere (disk grown since the image was written) its
    /// header sector is zeroed, so no tool mistakes it for a live table.
    pub fn serialize(&self, total_sectors: u64) -> Vec<(u64, Vec<u8>)> {
        let ss = self.sector_size;
        let last = total_sectors - 1;
        let arr_sectors = array_sectors(ss);
        let mut array = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
        for p in &self.partitions {
            let at = ((p.number - 1) * ENTRY_SIZE) as usize;
            let e = &mut array[at..at + ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(&p.type_guid.0);
            e[16..32].copy_from_slice(&p.unique_guid.0);
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (i, unit) in p.name.encode_utf16().take(NAME_UNITS).enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
            }
        }
        let array_crc = crc32fast::hash(&array);
        let header = |my_lba: u64, alt_lba: u64, entries_lba: u64| {
            let mut h = vec![0u8; ss as usize];
            h[0..8].copy_from_slice(SIGNATURE);
            h[8..12].copy_from_slice(&REVISION.to_le_bytes());
            h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
            h[24..32].copy_from_slice(&my_lba.to_le_bytes());
            h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
            h[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
            h[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
            h[56..72].copy_from_slice(&self.disk_guid.0);
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
            h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
            h[88..92].copy_from_slice(&array_crc.to_le_bytes());
            let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            h
        };
        let mut mbr = vec![0u8; ss as usize];
        // One 0xEE partition covering the disk (capped at 2^32-1 sectors), as the spec asks.
        let entry = &mut mbr[446..462];
        entry[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        entry[4] = 0xEE;
        entry[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        entry[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
        entry[12..16].copy_from_slice(&size.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xAA;

        let mut writes = vec![
            (0, mbr),
            (ss, header(1, last, 2)),
            (2 * ss, array.clone()),
            ((last - arr_sectors) * ss, array),
            (last * ss, header(last, 1, last - arr_sectors)),
        ];
        if self.backup_lba != last && self.backup_lba > 1 && self.backup_lba < last {
            writes.push((self.backup_lba * ss, vec![0u8; ss as usize]));
        }
        writes
    }

    /// Puts this table into `disk`, a whole disk image in memory whose length sets the
    /// disk size (the backup lands in its last sector). Refuses a buffer that is not whole
    /// sectors or too short for the usable range the table declares.
    pub fn write_into(&self, disk: &mut [u8]) -> Result<(), GptError> {
        let ss = self.sector_size;
        let total_sectors = disk.len() as u64 / ss;
        // MBR + two headers + two arrays is the least a table needs, whatever it declares.
        if !(disk.len() as u64).is_multiple_of(ss)
            || total_sectors < 3 + 2 * array_sectors(ss)
            || last_usable_lba(ss, total_sectors) < self.last_usable
        {
            return Err(GptError::BufferTooSmall {
                len: disk.len(),
                sector_size: ss,
                last_usable: self.last_usable,
            });
        }
        for (off, bytes) in self.serialize(total_sectors) {
            let off = off as usize;
            disk[off..off + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SS: u64 = 512;

    /// The layout the image builder writes: one EFI partition from 1 MiB on a disk of
    /// `total` sectors.
    fn one_partition_table(total: u64) -> Gpt {
        Gpt {
            sector_size: SS,
            disk_guid: Guid::parse("11111111-2222-3333-4444-555555555555").unwrap(),
            first_usable: first_usable_lba(SS),
            last_usable: last_usable_lba(SS, total),
            backup_lba: total - 1,
            partitions: vec![Partition {
                number: 1,
                type_guid: Guid::EFI_SYSTEM,
                unique_guid: Guid::parse("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE").unwrap(),
                first_lba: 2048,
                last_lba: 2048 + 16 * 2048 - 1,
                attributes: 0,
                name: "EFI".into(),
            }],
        }
    }

    fn disk_with(gpt: &Gpt, total: u64) -> Vec<u8> {
        let mut disk = vec![0u8; (total * gpt.sector_size) as usize];
        gpt.write_into(&mut disk).unwrap();
        disk
    }

    /// Re-signs the primary header after a test edited it, so only the edit is wrong.
    fn reseal_header(disk: &mut [u8]) {
        let h = &mut disk[512..512 + HEADER_SIZE as usize];
        h[16..20].fill(0);
        let crc = crc32fast::hash(h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn reseal_array(disk: &mut [u8]) {
        let crc = crc32fast::hash(&disk[1024..1024 + 128 * 128]);
        disk[512 + 88..512 + 92].copy_from_slice(&crc.to_le_bytes());
        reseal_header(disk);
    }

    #[test]
    fn guid_text_round_trips_in_mixed_endian() {
        let g = Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").unwrap();
        assert_eq!(g, Guid::EFI_SYSTEM);
        assert_eq!(g.0[0], 0x28, "first field is little-endian on disk");
        assert_eq!(g.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(
            Guid::LINUX_FILESYSTEM.to_string(),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        assert_eq!(
            Guid::parse(&Guid::LINUX_FILESYSTEM.to_string()),
            Some(Guid::LINUX_FILESYSTEM)
        );
        assert_eq!(Guid::parse("C12A7328F81F11D2BA4B00A0C93EC93B"), None);
        assert_eq!(Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93G"), None);
        // systemd-boot's EFI variable is a NUL-terminated UTF-16 string.
        assert_eq!(
            Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B\0"),
            Some(Guid::EFI_SYSTEM)
        );
    }

    #[test]
    fn lba_arithmetic_matches_the_standard_layout() {
        assert_eq!(array_sectors(512), 32);
        assert_eq!(array_sectors(4096), 4);
        assert_eq!(first_usable_lba(512), 34);
        assert_eq!(first_usable_lba(4096), 6);
        assert_eq!(last_usable_lba(512, 65536), 65536 - 34);
        assert_eq!(last_usable_lba(4096, 1024), 1024 - 6);
        assert_eq!(last_usable_lba(512, 10), 0);
        assert_eq!(primary_len(512), 34 * 512);
        assert_eq!(primary_len(4096), 6 * 4096);
    }

    #[test]
    fn serialised_table_parses_back() {
        let gpt = one_partition_table(65536);
        let disk = disk_with(&gpt, 65536);
        assert_eq!(Gpt::parse(&disk[..primary_len(SS)], SS).unwrap(), gpt);
        assert_eq!(gpt.by_name("EFI").map(|p| p.number), Some(1));
        assert_eq!(gpt.by_name("STATE"), None);
        // Backup header at the last sector, pointing back at the primary.
        let last = &disk[65535 * 512..];
        assert_eq!(&last[0..8], SIGNATURE);
        assert_eq!(le64(last, 24), 65535);
        assert_eq!(le64(last, 32), 1);
        assert_eq!(le64(last, 72), 65535 - 32);
        // Backup array is the primary array, byte for byte.
        assert_eq!(
            &disk[1024..1024 + 16384],
            &disk[(65535 - 32) * 512..(65535 - 32) * 512 + 16384]
        );
        // Protective MBR covering the disk.
        assert_eq!(disk[446 + 4], 0xEE);
        assert_eq!(le32(&disk, 446 + 8), 1);
        assert_eq!(le32(&disk, 446 + 12), 65535);
        assert_eq!(&disk[510..512], &[0x55, 0xAA]);
    }

    #[test]
    fn many_partitions_and_4k_sectors_round_trip() {
        let total = 64 * 256; // 64 MiB of 4 KiB sectors
        let mut gpt = one_partition_table(total);
        gpt.sector_size = 4096;
        gpt.first_usable = first_usable_lba(4096);
        gpt.last_usable = last_usable_lba(4096, total);
        gpt.backup_lba = total - 1;
        gpt.partitions = (1..=ENTRY_COUNT)
            .filter(|n| n % 40 == 1)
            .map(|n| Partition {
                number: n,
                type_guid: Guid::LINUX_FILESYSTEM,
                unique_guid: Guid::from_fields(n, 1, 2, [3; 8]),
                first_lba: 100 * u64::from(n),
                last_lba: 100 * u64::from(n) + 49,
                attributes: 1 << 60,
                name: format!("part-{n}-ä"),
            })
            .collect();
        let disk = disk_with(&gpt, total);
        let back = Gpt::parse(&disk[..primary_len(4096)], 4096).unwrap();
        assert_eq!(back, gpt);
        assert_eq!(back.partitions.len(), 4);
        assert_eq!(back.partitions[3].number, 121);
        assert_eq!(back.partitions[0].sectors(), 50);
    }

    #[test]
    fn corrupted_header_or_array_is_refused() {
        let good = disk_with(&one_partition_table(65536), 65536);
        let parse = |d: &[u8]| Gpt::parse(&d[..primary_len(SS)], SS);

        let mut disk = good.clone();
        disk[512 + 40] ^= 1;
        assert!(matches!(parse(&disk), Err(GptError::HeaderCrc { .. })));

        let mut disk = good.clone();
        disk[1024 + 200] ^= 1;
        assert!(matches!(parse(&disk), Err(GptError::EntriesCrc { .. })));

        let mut disk = good.clone();
        disk[512] = b'X';
        assert_eq!(parse(&disk), Err(GptError::NoSignature));

        let mut disk = good.clone();
        disk[512 + 12..512 + 16].copy_from_slice(&96u32.to_le_bytes());
        assert_eq!(parse(&disk), Err(GptError::UnsupportedHeader(96)));

        let mut disk = good.clone();
        disk[512 + 80..512 + 84].copy_from_slice(&64u32.to_le_bytes());
        reseal_header(&mut disk);
        assert_eq!(
            parse(&disk),
            Err(GptError::UnsupportedArray {
                count: 64,
                size: 128
            })
        );

        let mut disk = good.clone();
        disk[512 + 72..512 + 80].copy_from_slice(&3u64.to_le_bytes());
        reseal_header(&mut disk);
        assert_eq!(parse(&disk), Err(GptError::UnsupportedArrayLocation(3)));

        // A CRC-valid table whose partition leaves the usable range is still refused.
        let mut disk = good.clone();
        disk[1024 + 40..1024 + 48].copy_from_slice(&65535u64.to_le_bytes());
        reseal_array(&mut disk);
        assert!(matches!(
            parse(&disk),
            Err(GptError::OutOfRange {
                number: 1,
                last: 65535,
                ..
            })
        ));

        // A partition that ends before it starts.
        let mut disk = good.clone();
        disk[1024 + 40..1024 + 48].copy_from_slice(&100u64.to_le_bytes());
        reseal_array(&mut disk);
        assert!(matches!(
            parse(&disk),
            Err(GptError::OutOfRange { number: 1, .. })
        ));

        let blank = vec![0u8; primary_len(SS)];
        assert_eq!(Gpt::parse(&blank, SS), Err(GptError::NoSignature));
        assert_eq!(
            Gpt::parse(&good[..100], SS),
            Err(GptError::ShortRead {
                have: 100,
                need: primary_len(SS)
            })
        );
    }

    #[test]
    fn grown_disk_moves_backup_and_zeroes_the_old_one() {
        let disk = disk_with(&one_partition_table(65536), 65536);
        let mut gpt = Gpt::parse(&disk[..primary_len(SS)], SS).unwrap();
        assert_eq!(gpt.backup_lba, 65535, "backup still where the image ended");
        gpt.last_usable = last_usable_lba(SS, 131072);
        let writes = gpt.serialize(131072);
        assert!(writes.iter().any(|(off, _)| *off == 131071 * 512));
        let zeroing = writes.iter().find(|(off, _)| *off == 65535 * 512).unwrap();
        assert!(zeroing.1.iter().all(|&b| b == 0));

        let mut grown = disk.clone();
        grown.resize(131072 * 512, 0);
        gpt.write_into(&mut grown).unwrap();
        let back = Gpt::parse(&grown[..primary_len(SS)], SS).unwrap();
        assert_eq!(back.backup_lba, 131071);
        assert_eq!(back.last_usable, 131072 - 34);
        assert!(grown[65535 * 512..65536 * 512].iter().all(|&b| b == 0));
    }

    #[test]
    fn long_names_are_truncated_to_36_units() {
        let mut gpt = one_partition_table(65536);
        gpt.partitions[0].name = "X".repeat(50);
        let disk = disk_with(&gpt, 65536);
        let back = Gpt::parse(&disk[..primary_len(SS)], SS).unwrap();
        assert_eq!(back.partitions[0].name, "X".repeat(36));
    }

    #[test]
    fn write_into_refuses_a_buffer_the_table_does_not_fit() {
        let gpt = one_partition_table(65536);
        let mut small = vec![0u8; 65535 * 512];
        assert_eq!(
            gpt.write_into(&mut small),
            Err(GptError::BufferTooSmall {
                len: 65535 * 512,
                sector_size: 512,
                last_usable: 65536 - 34
            })
        );
        assert!(small.iter().all(|&b| b == 0), "nothing written on refusal");
        let mut ragged = vec![0u8; 65536 * 512 + 1];
        assert!(gpt.write_into(&mut ragged).is_err());
        let mut tiny_table = gpt.clone();
        tiny_table.last_usable = 0;
        assert!(tiny_table.write_into(&mut vec![0u8; 512]).is_err());
    }
}
