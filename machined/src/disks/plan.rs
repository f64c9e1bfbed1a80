//! Which partitions a Basalt disk still needs, decided from its partition table and size
//! alone. The executor applies the plan; nothing here touches a device.

use sha2::{Digest, Sha256};

use super::gpt::{Gpt, Guid, Partition, last_usable_lba};
use super::label::Filesystem;

pub const STATE_LABEL: &str = "STATE";
pub const EPHEMERAL_LABEL: &str = "EPHEMERAL";
/// Config plus node identity: a few KiB today, room for growth without ever resizing.
pub const STATE_BYTES: u64 = 100 * 1024 * 1024;
/// Below this, /var cannot hold even containerd's state; refuse rather than build a
/// node that fails later in a confusing way.
pub const EPHEMERAL_MIN_BYTES: u64 = 64 * 1024 * 1024;
const ALIGN_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPartition {
    pub partition: Partition,
    pub label: &'static str,
}

/// What the executor must do to a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// STATE and EPHEMERAL exist: only mount (and format any that lacks a filesystem).
    UseExisting { state: u32, ephemeral: u32 },
    /// Write `table` (the old entries plus `create`, backup header at the disk's end).
    Create {
        table: Gpt,
        create: Vec<NewPartition>,
        state: u32,
        ephemeral: u32,
    },
}

impl Plan {
    pub fn state(&self) -> u32 {
        match self {
            Plan::UseExisting { state, .. } | Plan::Create { state, .. } => *state,
        }
    }
    pub fn ephemeral(&self) -> u32 {
        match self {
            Plan::UseExisting { ephemeral, .. } | Plan::Create { ephemeral, .. } => *ephemeral,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "an EPHEMERAL partition exists without a STATE partition; this is not a layout Basalt writes, so the disk is left alone"
    )]
    EphemeralWithoutState,
    #[error("{count} partitions are named {label}; refusing to guess which one is Basalt's")]
    Duplicate { label: &'static str, count: usize },
    #[error(
        "only {free_bytes} bytes are free after the last partition, {need_bytes} are needed for STATE and EPHEMERAL"
    )]
    NotEnoughSpace { free_bytes: u64, need_bytes: u64 },
    #[error("all 128 GPT entries are in use")]
    NoFreeEntry,
    #[error(
        "the disk has {disk_sectors} sectors but its GPT describes usable space up to LBA {last_usable}; the disk shrank or the table is foreign"
    )]
    DiskSmallerThanTable { disk_sectors: u64, last_usable: u64 },
}

/// Decides the partitions to add to a disk whose table is `table` and size `disk_sectors`.
pub fn plan(table: &Gpt, disk_sectors: u64) -> Result<Plan, PlanError> {
    let count = |label| table.partitions.iter().filter(|p| p.name == label).count();
    for label in [STATE_LABEL, EPHEMERAL_LABEL] {
        let n = count(label);
        if n > 1 {
            return Err(PlanError::Duplicate { label, count: n });
        }
    }
    let ss = table.sector_size;
    let new_last_usable = last_usable_lba(ss, disk_sectors);
    if new_last_usable < table.last_usable {
        return Err(PlanError::DiskSmallerThanTable {
            disk_sectors,
            last_usable: table.last_usable,
        });
    }
    let state = table.by_name(STATE_LABEL).map(|p| p.number);
    let ephemeral = table.by_name(EPHEMERAL_LABEL).map(|p| p.number);
    match (state, ephemeral) {
        (Some(state), Some(ephemeral)) => return Ok(Plan::UseExisting { state, ephemeral }),
        (None, Some(_)) => return Err(PlanError::EphemeralWithoutState),
        _ => {}
    }

    let align = (ALIGN_BYTES / ss).max(1);
    let used_end = table
        .partitions
        .iter()
        .map(|p| p.last_lba + 1)
        .max()
        .unwrap_or(table.first_usable);
    let start = used_end.div_ceil(align) * align;
    let state_sectors = STATE_BYTES / ss;
    let need_bytes = if state.is_some() { 0 } else { STATE_BYTES } + EPHEMERAL_MIN_BYTES;
    let free_sectors = (new_last_usable + 1).saturating_sub(start);
    if free_sectors * ss < need_bytes {
        return Err(PlanError::NotEnoughSpace {
            free_bytes: free_sectors * ss,
            need_bytes,
        });
    }

    let mut free_numbers =
        (1..=super::gpt::ENTRY_COUNT).filter(|n| table.partitions.iter().all(|p| p.number != *n));
    let mut new_table = table.clone();
    new_table.last_usable = new_last_usable;
    let mut create = Vec::new();
    let mut next = start;
    let state = match state {
        Some(n) => n,
        None => {
            let number = free_numbers.next().ok_or(PlanError::NoFreeEntry)?;
            create.push(new_partition(
                table,
                number,
                STATE_LABEL,
                next,
                next + state_sectors - 1,
            ));
            next += state_sectors;
            number
        }
    };
    let number = free_numbers.next().ok_or(PlanError::NoFreeEntry)?;
    create.push(new_partition(
        table,
        number,
        EPHEMERAL_LABEL,
        next,
        new_last_usable,
    ));
    new_table
        .partitions
        .extend(create.iter().map(|c| c.partition.clone()));
    new_table.partitions.sort_by_key(|p| p.number);
    Ok(Plan::Create {
        table: new_table,
        create,
        state,
        ephemeral: number,
    })
}

/// The partition's unique GUID is derived from the disk GUID and its label, so the
/// same image on the same disk yields the same table (reproducible, and no RNG needed
/// this early in boot).
fn new_partition(
    table: &Gpt,
    number: u32,
    label: &'static str,
    first: u64,
    last: u64,
) -> NewPartition {
    let digest = Sha256::new()
        .chain_update(table.disk_guid.0)
        .chain_update(label.as_bytes())
        .finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&digest[..16]);
    // RFC 4122 variant and version 4 bits, as other tools expect of a random-looking GUID.
    g[7] = (g[7] & 0x0F) | 0x40;
    g[8] = (g[8] & 0x3F) | 0x80;
    NewPartition {
        partition: Partition {
            number,
            type_guid: Guid::LINUX_FILESYSTEM,
            unique_guid: Guid(g),
            first_lba: first,
            last_lba: last,
            attributes: 0,
            name: label.to_string(),
        },
        label,
    }
}

/// What to do with a partition, given what its first sectors hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatDecision {
    Mount,
    Format,
    Refuse { found: Filesystem },
}

/// A partition Basalt created is formatted only while it holds no filesystem at all
/// (first boot, or a first boot interrupted before mkfs finished). Anything else but
/// our own ext4 is somebody's data: refuse instead of overwriting it.
pub fn format_decision(found: &Filesystem, label: &str) -> FormatDecision {
    match found {
        Filesystem::None => FormatDecision::Format,
        Filesystem::Ext4 { label: l } if l == label => FormatDecision::Mount,
        other => FormatDecision::Refuse {
            found: other.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::gpt::{self, Gpt, primary_len};
    use super::*;

    const MIB: u64 = 2048; // sectors of 512 bytes

    /// The table as the image builder lays it out (one 32 MiB EFI partition from 1 MiB),
    /// read back from bytes the way the executor reads it from the disk.
    fn table(image_mib: u64) -> Gpt {
        let sectors = image_mib * MIB;
        let written = Gpt {
            sector_size: 512,
            disk_guid: Guid::parse("11111111-2222-3333-4444-555555555555").unwrap(),
            first_usable: gpt::first_usable_lba(512),
            last_usable: gpt::last_usable_lba(512, sectors),
            backup_lba: sectors - 1,
            partitions: vec![Partition {
                number: 1,
                type_guid: Guid::EFI_SYSTEM,
                unique_guid: Guid::parse("AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE").unwrap(),
                first_lba: MIB,
                last_lba: MIB + 32 * MIB - 1,
                attributes: 0,
                name: "EFI".into(),
            }],
        };
        let mut disk = vec![0u8; (sectors * 512) as usize];
        written.write_into(&mut disk).unwrap();
        Gpt::parse(&disk[..primary_len(512)], 512).unwrap()
    }

    fn created(plan: &Plan) -> (&Gpt, &[NewPartition]) {
        match plan {
            Plan::Create { table, create, .. } => (table, create),
            other => panic!("expected Create, got {other:?}"),
        }
    }

    #[test]
    fn fresh_image_on_larger_disk_gets_state_and_ephemeral_to_the_end() {
        let t = table(64);
        let disk = 1024 * MIB;
        let p = plan(&t, disk).unwrap();
        let (new, create) = created(&p);
        assert_eq!(create.len(), 2);
        let state = &create[0].partition;
        let eph = &create[1].partition;
        assert_eq!((state.number, state.name.as_str()), (2, "STATE"));
        assert_eq!((eph.number, eph.name.as_str()), (3, "EPHEMERAL"));
        // EFI ends at 33 MiB; STATE starts on the next MiB boundary.
        assert_eq!(state.first_lba, 33 * MIB);
        assert_eq!(state.sectors() * 512, STATE_BYTES);
        assert_eq!(eph.first_lba, state.last_lba + 1);
        assert_eq!(eph.last_lba, disk - 34);
        assert_eq!(new.last_usable, disk - 34);
        assert_eq!(new.partitions.len(), 3);
        assert_eq!(
            new.partitions[0].name, "EFI",
            "existing entries are kept as they were"
        );
        assert_eq!(p.state(), 2);
        assert_eq!(p.ephemeral(), 3);
        assert_eq!(state.type_guid, Guid::LINUX_FILESYSTEM);
        assert_ne!(state.unique_guid, eph.unique_guid);
    }

    #[test]
    fn same_disk_guid_gives_same_partition_guids() {
        let t = table(64);
        assert_eq!(plan(&t, 1024 * MIB), plan(&t, 1024 * MIB));
    }

    #[test]
    fn existing_layout_is_used_as_is() {
        let t = table(64);
        let Plan::Create { table: new, .. } = plan(&t, 1024 * MIB).unwrap() else {
            panic!()
        };
        assert_eq!(
            plan(&new, 1024 * MIB).unwrap(),
            Plan::UseExisting {
                state: 2,
                ephemeral: 3
            }
        );
        // Even after the disk grew again: Basalt never resizes a live EPHEMERAL.
        assert_eq!(
            plan(&new, 2048 * MIB).unwrap(),
            Plan::UseExisting {
                state: 2,
                ephemeral: 3
            }
        );
    }

    #[test]
    fn state_without_ephemeral_gets_only_ephemeral() {
        let mut t = table(1024);
        t.partitions.push(Partition {
            number: 2,
            type_guid: Guid::LINUX_FILESYSTEM,
            unique_guid: Guid::ZERO,
            first_lba: 33 * MIB,
            last_lba: 133 * MIB - 1,
            attributes: 0,
            name: "STATE".into(),
        });
        let p = plan(&t, 1024 * MIB).unwrap();
        let (_, create) = created(&p);
        assert_eq!(create.len(), 1);
        assert_eq!(create[0].label, "EPHEMERAL");
        assert_eq!(create[0].partition.first_lba, 133 * MIB);
        assert_eq!(p.state(), 2);
        assert_eq!(p.ephemeral(), 3);
    }

    #[test]
    fn free_slot_numbers_are_reused() {
        let mut t = table(1024);
        t.partitions[0].number = 2; // EFI in slot 2, slot 1 empty
        let p = plan(&t, 1024 * MIB).unwrap();
        let (_, create) = created(&p);
        assert_eq!(create[0].partition.number, 1);
        assert_eq!(create[1].partition.number, 3);
    }

    #[test]
    fn ephemeral_without_state_is_refused() {
        let mut t = table(1024);
        t.partitions.push(Partition {
            number: 2,
            type_guid: Guid::LINUX_FILESYSTEM,
            unique_guid: Guid::ZERO,
            first_lba: 33 * MIB,
            last_lba: 500 * MIB,
            attributes: 0,
            name: "EPHEMERAL".into(),
        });
        assert_eq!(plan(&t, 1024 * MIB), Err(PlanError::EphemeralWithoutState));
    }

    #[test]
    fn duplicate_labels_are_refused() {
        let mut t = table(1024);
        for n in [2, 3] {
            t.partitions.push(Partition {
                number: n,
                type_guid: Guid::LINUX_FILESYSTEM,
                unique_guid: Guid::ZERO,
                first_lba: n as u64 * 100 * MIB,
                last_lba: n as u64 * 100 * MIB + 10,
                attributes: 0,
                name: "STATE".into(),
            });
        }
        assert_eq!(
            plan(&t, 1024 * MIB),
            Err(PlanError::Duplicate {
                label: "STATE",
                count: 2
            })
        );
    }

    #[test]
    fn too_small_disk_is_refused_with_the_numbers() {
        let t = table(64);
        // 33 MiB used, 150 MiB disk: ~116 MiB free < 164 MiB needed.
        match plan(&t, 150 * MIB) {
            Err(PlanError::NotEnoughSpace {
                free_bytes,
                need_bytes,
            }) => {
                assert_eq!(need_bytes, STATE_BYTES + EPHEMERAL_MIN_BYTES);
                assert!(free_bytes < need_bytes);
            }
            other => panic!("{other:?}"),
        }
        // Exactly enough fits.
        let exact = 33 * MIB + (STATE_BYTES + EPHEMERAL_MIN_BYTES) / 512 + 33;
        assert!(plan(&t, exact).is_ok());
        assert!(plan(&t, exact - 1).is_err());
    }

    #[test]
    fn disk_smaller_than_its_table_is_refused() {
        let t = table(1024);
        assert!(matches!(
            plan(&t, 512 * MIB),
            Err(PlanError::DiskSmallerThanTable { .. })
        ));
    }

    #[test]
    fn absurdly_small_disk_is_refused_not_underflowed() {
        let t = table(64);
        for sectors in [0, 1, 33, 34] {
            assert!(matches!(
                plan(&t, sectors),
                Err(PlanError::DiskSmallerThanTable { .. })
            ));
        }
    }

    #[test]
    fn full_entry_array_is_refused() {
        let mut t = table(4096);
        t.partitions = (1..=128)
            .map(|n| Partition {
                number: n,
                type_guid: Guid::LINUX_FILESYSTEM,
                unique_guid: Guid::ZERO,
                first_lba: 2048 + n as u64,
                last_lba: 2048 + n as u64,
                attributes: 0,
                name: format!("p{n}"),
            })
            .collect();
        assert_eq!(plan(&t, 4096 * MIB), Err(PlanError::NoFreeEntry));
    }

    #[test]
    fn four_k_sectors_align_to_one_mib() {
        let mut t = table(64);
        t.sector_size = 4096;
        t.first_usable = 6;
        t.partitions[0].first_lba = 256;
        t.partitions[0].last_lba = 256 + 8 * 256 - 1;
        t.last_usable = 64 * 256 - 6;
        let disk = 1024 * 256;
        let p = plan(&t, disk).unwrap();
        let (new, create) = created(&p);
        assert_eq!(create[0].partition.first_lba % 256, 0);
        assert_eq!(create[0].partition.sectors() * 4096, STATE_BYTES);
        // 4 array sectors + backup header.
        assert_eq!(new.last_usable, disk - 1 - 4 - 1);
    }

    #[test]
    fn format_only_what_is_empty_or_ours() {
        assert_eq!(
            format_decision(&Filesystem::None, "STATE"),
            FormatDecision::Format
        );
        assert_eq!(
            format_decision(
                &Filesystem::Ext4 {
                    label: "STATE".into()
                },
                "STATE"
            ),
            FormatDecision::Mount
        );
        for other in [
            Filesystem::Ext4 {
                label: "data".into(),
            },
            Filesystem::Vfat {
                label: "STATE".into(),
            },
            Filesystem::Iso9660 {
                label: "STATE".into(),
            },
        ] {
            assert!(matches!(
                format_decision(&other, "STATE"),
                FormatDecision::Refuse { .. }
            ));
        }
    }
}
