//! Filesystem type and label from a device's first bytes (what blkid would say), for the
//! three filesystems Basalt meets: ext4 (STATE, EPHEMERAL), vfat and iso9660 (config drives).

/// Bytes to read from the start of a device: covers the ISO 9660 primary volume
/// descriptor at 32 KiB.
pub const PROBE_LEN: usize = 34 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filesystem {
    /// Only zeros: nothing was ever written here.
    None,
    Ext4 {
        label: String,
    },
    Vfat {
        label: String,
    },
    Iso9660 {
        label: String,
    },
    /// Data that is none of the above; Basalt never formats over it.
    Unknown,
}

impl Filesystem {
    pub fn label(&self) -> Option<&str> {
        match self {
            Filesystem::Ext4 { label }
            | Filesystem::Vfat { label }
            | Filesystem::Iso9660 { label } => Some(label),
            Filesystem::None | Filesystem::Unknown => None,
        }
    }

    /// The type name `mount(2)` wants.
    pub fn fstype(&self) -> Option<&'static str> {
        match self {
            Filesystem::Ext4 { .. } => Some("ext4"),
            Filesystem::Vfat { .. } => Some("vfat"),
            Filesystem::Iso9660 { .. } => Some("iso9660"),
            Filesystem::None | Filesystem::Unknown => None,
        }
    }
}

impl std::fmt::Display for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Filesystem::None => f.write_str("nothing (all zeros)"),
            Filesystem::Ext4 { label } => write!(f, "ext4 labelled {label:?}"),
            Filesystem::Vfat { label } => write!(f, "FAT labelled {label:?}"),
            Filesystem::Iso9660 { label } => write!(f, "ISO 9660 labelled {label:?}"),
            Filesystem::Unknown => f.write_str("data of an unknown kind"),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// Identifies the filesystem whose first bytes are `head` (up to `PROBE_LEN`; shorter
/// input simply rules out the filesystems whose superblock lies beyond it).
pub fn probe(head: &[u8]) -> Filesystem {
    // ext2/3/4: superblock at 1024, magic 0xEF53 at +56, 16-byte volume name at +120.
    if head.len() >= 1024 + 136 && head[1024 + 56..1024 + 58] == [0x53, 0xEF] {
        return Filesystem::Ext4 {
            label: text(&head[1024 + 120..1024 + 136]),
        };
    }
    // ISO 9660: primary volume descriptor in 2 KiB sector 16; volume id at +40 (32 bytes).
    // Checked before FAT because hybrid ISOs also carry a boot signature at 510.
    let pvd = 16 * 2048;
    if head.len() >= pvd + 72 && head[pvd] == 1 && &head[pvd + 1..pvd + 6] == b"CD001" {
        return Filesystem::Iso9660 {
            label: text(&head[pvd + 40..pvd + 72]),
        };
    }
    // FAT: boot signature, then the FAT32 or FAT12/16 extended BPB with its label.
    if head.len() >= 512 && head[510..512] == [0x55, 0xAA] {
        let (sig, label_at) = if &head[82..87] == b"FAT32" {
            (true, 71)
        } else {
            (&head[54..57] == b"FAT", 43)
        };
        if sig && head[label_at - 5] == 0x29 {
            return Filesystem::Vfat {
                label: text(&head[label_at..label_at + 11]),
            };
        }
    }
    if head.iter().all(|&b| b == 0) {
        Filesystem::None
    } else {
        Filesystem::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_none_and_garbage_is_unknown() {
        assert_eq!(probe(&vec![0u8; PROBE_LEN]), Filesystem::None);
        let mut g = vec![0u8; PROBE_LEN];
        g[5000] = 7;
        assert_eq!(probe(&g), Filesystem::Unknown);
    }

    #[test]
    fn ext4_label() {
        let mut d = vec![0u8; PROBE_LEN];
        d[1024 + 56] = 0x53;
        d[1024 + 57] = 0xEF;
        d[1024 + 120..1024 + 125].copy_from_slice(b"STATE");
        assert_eq!(
            probe(&d),
            Filesystem::Ext4 {
                label: "STATE".into()
            }
        );
    }

    #[test]
    fn iso9660_label_space_padded() {
        let mut d = vec![0u8; PROBE_LEN];
        let pvd = 32768;
        d[pvd] = 1;
        d[pvd + 1..pvd + 6].copy_from_slice(b"CD001");
        d[pvd + 40..pvd + 72].fill(b' ');
        d[pvd + 40..pvd + 46].copy_from_slice(b"cidata");
        d[510] = 0x55;
        d[511] = 0xAA;
        assert_eq!(
            probe(&d),
            Filesystem::Iso9660 {
                label: "cidata".into()
            }
        );
    }

    #[test]
    fn fat16_and_fat32_labels() {
        let mut d = vec![0u8; 512];
        d[510] = 0x55;
        d[511] = 0xAA;
        d[38] = 0x29;
        d[43..54].copy_from_slice(b"config-2   ");
        d[54..62].copy_from_slice(b"FAT16   ");
        assert_eq!(
            probe(&d),
            Filesystem::Vfat {
                label: "config-2".into()
            }
        );
        let mut d = vec![0u8; 512];
        d[510] = 0x55;
        d[511] = 0xAA;
        d[66] = 0x29;
        d[71..82].copy_from_slice(b"CIDATA     ");
        d[82..90].copy_from_slice(b"FAT32   ");
        assert_eq!(
            probe(&d),
            Filesystem::Vfat {
                label: "CIDATA".into()
            }
        );
    }

    #[test]
    fn an_mbr_is_not_a_fat_filesystem() {
        let mut d = vec![0u8; 512];
        d[446 + 4] = 0xEE;
        d[510] = 0x55;
        d[511] = 0xAA;
        assert_eq!(probe(&d), Filesystem::Unknown);
    }

    #[test]
    fn short_input_is_handled() {
        assert_eq!(probe(&[]), Filesystem::None);
        assert_eq!(probe(&[1, 2, 3]), Filesystem::Unknown);
    }
}
