//! Thin I/O over block devices: sizes, sector reads and writes, partition re-reading,
//! partition device lookup through sysfs. Every decision lives in `gpt`, `plan`, `label`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::DiskError;
use super::gpt::Partition;

nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blk_sszget, nix::request_code_none!(0x12, 104), libc::c_int);
nix::ioctl_none!(blk_rrpart, 0x12, 95);
nix::ioctl_write_ptr_bad!(blk_pg, nix::request_code_none!(0x12, 105), BlkpgIoctlArg);

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

const BLKPG_ADD_PARTITION: libc::c_int = 1;

/// An open whole-disk block device (or a regular file standing in for one).
pub struct Disk {
    pub path: PathBuf,
    file: File,
    pub sector_size: u64,
    pub total_sectors: u64,
}

impl Disk {
    pub fn open(path: &Path, write: bool) -> Result<Disk, DiskError> {
        let io = |source| DiskError::Io {
            action: "opening",
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?;
        let fd = file.as_raw_fd();
        let (bytes, sector_size) = if file.metadata().map_err(io)?.is_file() {
            (file.metadata().map_err(io)?.len(), 512)
        } else {
            let mut bytes = 0u64;
            let mut ss: libc::c_int = 0;
            // SAFETY: fd is an open descriptor and the out-pointers are valid for the call.
            unsafe { blk_getsize64(fd, &mut bytes) }.map_err(|e| DiskError::Ioctl {
                ioctl: "BLKGETSIZE64",
                device: path.to_path_buf(),
                source: e,
            })?;
            // SAFETY: as above.
            unsafe { blk_sszget(fd, &mut ss) }.map_err(|e| DiskError::Ioctl {
                ioctl: "BLKSSZGET",
                device: path.to_path_buf(),
                source: e,
            })?;
            (bytes, ss as u64)
        };
        Ok(Disk {
            path: path.to_path_buf(),
            file,
            sector_size,
            total_sectors: bytes / sector_size,
        })
    }

    pub fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let mut buf = vec![0u8; len];
        self.file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.read_exact(&mut buf))
            .map_err(|source| DiskError::Io {
                action: "reading",
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// Writes every (offset, bytes) pair and flushes them to the medium before returning,
    /// so the kernel re-reads a table that is really on disk.
    pub fn write_all_at(&mut self, writes: &[(u64, Vec<u8>)]) -> Result<(), DiskError> {
        for (offset, bytes) in writes {
            self.file
                .seek(SeekFrom::Start(*offset))
                .and_then(|_| self.file.write_all(bytes))
                .map_err(|source| DiskError::Io {
                    action: "writing the partition table to",
                    path: self.path.clone(),
                    source,
                })?;
        }
        self.file.sync_all().map_err(|source| DiskError::Io {
            action: "flushing",
            path: self.path.clone(),
            source,
        })
    }

    /// Asks the kernel to re-read the whole table (BLKRRPART). EBUSY (a partition of
    /// the disk is in use, say EFI mounted) is not an error: [`Disk::add_partition`]
    /// then registers the new partitions one by one.
    pub fn reread(&self) -> Result<(), DiskError> {
        // SAFETY: BLKRRPART takes no argument.
        match unsafe { blk_rrpart(self.file.as_raw_fd()) } {
            Ok(_) | Err(nix::errno::Errno::EBUSY) => Ok(()),
            Err(e) => Err(DiskError::Ioctl {
                ioctl: "BLKRRPART",
                device: self.path.clone(),
                source: e,
            }),
        }
    }

    /// Registers one partition with the kernel (BLKPG_ADD_PARTITION), which works on a
    /// busy disk and on kernels without a GPT parser. EBUSY means it already exists.
    pub fn add_partition(&self, p: &Partition) -> Result<(), DiskError> {
        let mut part = BlkpgPartition {
            start: (p.first_lba * self.sector_size) as libc::c_longlong,
            length: (p.sectors() * self.sector_size) as libc::c_longlong,
            pno: p.number as libc::c_int,
            devname: [0; 64],
            volname: [0; 64],
        };
        let arg = BlkpgIoctlArg {
            op: BLKPG_ADD_PARTITION,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
            data: (&mut part as *mut BlkpgPartition).cast(),
        };
        // SAFETY: arg points at a live BlkpgPartition of the size it declares.
        match unsafe { blk_pg(self.file.as_raw_fd(), &arg) } {
            Ok(_) | Err(nix::errno::Errno::EBUSY) => Ok(()),
            Err(e) => Err(DiskError::Ioctl {
                ioctl: "BLKPG_ADD_PARTITION",
                device: self.path.clone(),
                source: e,
            }),
        }
    }
}

/// Whether the kernel has partition `number` of `disk` (sysfs).
pub fn kernel_has_partition(sys: &Path, disk: &str, number: u32) -> bool {
    std::fs::read_dir(sys.join("class/block").join(disk))
        .map(|entries| {
            entries.flatten().any(|e| {
                std::fs::read_to_string(e.path().join("partition"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    == Some(number)
            })
        })
        .unwrap_or(false)
}

/// Kernel name of a /dev path, following symlinks (`/dev/disk/by-id/…` → `vda`).
pub fn kernel_name(dev: &Path) -> Result<String, DiskError> {
    let real = std::fs::canonicalize(dev).map_err(|source| DiskError::Io {
        action: "resolving",
        path: dev.to_path_buf(),
        source,
    })?;
    real.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| DiskError::NotADisk(dev.to_path_buf()))
}

/// The /dev node of partition `number` of `disk`, found through sysfs (partition names
/// differ: `vda2`, `nvme0n1p2`, `loop0p2`). Waits up to `timeout` for the kernel and
/// devtmpfs to create it after a re-read.
pub fn partition_path(
    sys: &Path,
    dev: &Path,
    disk: &str,
    number: u32,
    timeout: Duration,
) -> Result<PathBuf, DiskError> {
    let start = Instant::now();
    loop {
        if let Ok(entries) = std::fs::read_dir(sys.join("class/block").join(disk)) {
            for entry in entries.flatten() {
                let n = std::fs::read_to_string(entry.path().join("partition"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                if n == Some(number) {
                    let node = dev.join(entry.file_name());
                    if node.exists() {
                        return Ok(node);
                    }
                }
            }
        }
        if start.elapsed() >= timeout {
            return Err(DiskError::PartitionDeviceMissing {
                disk: disk.to_string(),
                number,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whole disks known to the kernel (sysfs /sys/block), by kernel name.
pub fn whole_disks(sys: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys.join("block"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every block device (disks and partitions) by kernel name, for label scans.
pub fn all_block_devices(sys: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys.join("class/block"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Reads up to `len` bytes from the start of a device; devices smaller than `len` (a
/// tiny config-drive image) return what they have.
pub fn read_head(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let mut buf = Vec::with_capacity(len);
    (&mut f).take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}
