//! Attaching a file to a free loop device, read-only, with the kernel's loop ioctls.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const LO_FLAGS_READ_ONLY: u32 = 1;
/// The device detaches itself when the last user (the squashfs mount) goes away.
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

nix::ioctl_none!(loop_ctl_get_free, b'L', 0x82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("asking /dev/loop-control for a free loop device: {0}")]
    GetFree(nix::Error),
    #[error("attaching {file} to {device}: {source}")]
    Attach {
        file: PathBuf,
        device: PathBuf,
        source: nix::Error,
    },
}

fn info_for(file: &Path) -> LoopInfo64 {
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; LO_NAME_SIZE],
        lo_crypt_name: [0; LO_NAME_SIZE],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    let name = file.as_os_str().as_encoded_bytes();
    let n = name.len().min(LO_NAME_SIZE - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    info
}

/// An attached loop device. With LO_FLAGS_AUTOCLEAR the kernel detaches the device at
/// the last close: this handle must stay open until the filesystem on it is mounted.
#[derive(Debug)]
pub struct Attached {
    pub path: PathBuf,
    _device: File,
}

/// Attaches `file` read-only to a free loop device.
pub fn attach_read_only(file: &Path) -> Result<Attached, LoopError> {
    let open = |path: &Path, write: bool| -> Result<File, LoopError> {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|source| LoopError::Open {
                path: path.to_path_buf(),
                source,
            })
    };
    let backing = open(file, false)?;
    let control = open(Path::new("/dev/loop-control"), true)?;
    // Another process could take the device between GET_FREE and configure (EBUSY);
    // nobody else runs this early, but retrying costs nothing.
    let mut attempt = 0;
    loop {
        attempt += 1;
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { loop_ctl_get_free(control.as_raw_fd()) }.map_err(LoopError::GetFree)?;
        let device = PathBuf::from(format!("/dev/loop{n}"));
        let dev = open(&device, false)?;
        let fd = u32::try_from(backing.as_raw_fd()).unwrap_or(u32::MAX);
        let config = LoopConfig {
            fd,
            block_size: 0,
            info: info_for(file),
            reserved: [0; 8],
        };
        // SAFETY: config is a valid, fully initialised struct loop_config.
        let result = match unsafe { loop_configure(dev.as_raw_fd(), &config) } {
            // Kernels before 5.8 lack LOOP_CONFIGURE: the two-step way.
            Err(nix::Error::EINVAL | nix::Error::ENOTTY) => {
                set_fd_then_status(&dev, &backing, file)
            }
            other => other.map(drop),
        };
        match result {
            Ok(()) => {
                return Ok(Attached {
                    path: device,
                    _device: dev,
                });
            }
            Err(nix::Error::EBUSY) if attempt < 5 => continue,
            Err(source) => {
                return Err(LoopError::Attach {
                    file: file.to_path_buf(),
                    device,
                    source,
                });
            }
        }
    }
}

fn set_fd_then_status(dev: &File, backing: &File, file: &Path) -> nix::Result<()> {
    // SAFETY: LOOP_SET_FD takes the backing file descriptor as an int.
    unsafe { loop_set_fd(dev.as_raw_fd(), backing.as_raw_fd()) }?;
    let info = info_for(file);
    // SAFETY: info is a valid struct loop_info64.
    if let Err(e) = unsafe { loop_set_status64(dev.as_raw_fd(), &info) } {
        // SAFETY: LOOP_CLR_FD takes no argument.
        let _ = unsafe { loop_clr_fd(dev.as_raw_fd()) };
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layouts_match_the_kernel_abi() {
        // include/uapi/linux/loop.h: loop_info64 is 232 bytes, loop_config 304.
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn long_file_names_are_truncated_and_terminated() {
        let long = "/".to_owned() + &"x".repeat(100);
        let info = info_for(Path::new(&long));
        assert_eq!(info.lo_file_name[LO_NAME_SIZE - 1], 0);
        assert_eq!(info.lo_file_name[0], b'/');
        assert_eq!(info.lo_flags, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR);
    }
}
