//! What an ELF file needs at run time: its program interpreter (PT_INTERP), its
//! DT_NEEDED libraries and the DT_RUNPATH/DT_RPATH directories to look for them in.

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct DynamicInfo {
    pub interpreter: Option<String>,
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
}

pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// `None` for anything that is not a 64-bit little-endian ELF.
pub fn dynamic_info(data: &[u8]) -> Option<DynamicInfo> {
    let header = elf::FileHeader64::<object::LittleEndian>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let mut info = DynamicInfo::default();
    for ph in header.program_headers(endian, data).ok()? {
        if let Ok(Some(interp)) = ph.interpreter(endian, data) {
            info.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let sections = header.sections(endian, data).ok()?;
    for section in sections.iter() {
        let Ok(Some((dyns, link))) = section.dynamic(endian, data) else {
            continue;
        };
        let strings = sections.strings(endian, data, link).ok()?;
        for d in dyns {
            let tag = d.tag32(endian);
            let Ok(value) = d.string(endian, strings) else {
                continue;
            };
            let value = String::from_utf8_lossy(value).into_owned();
            match tag {
                Some(elf::DT_NEEDED) => info.needed.push(value),
                Some(elf::DT_RUNPATH | elf::DT_RPATH) => {
                    info.runpath.extend(value.split(':').map(str::to_owned))
                }
                _ => {}
            }
        }
    }
    Some(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binary_has_interpreter_and_libc() {
        // The test binary itself is a dynamically linked glibc ELF on this platform.
        let data = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = dynamic_info(&data).unwrap();
        assert_eq!(
            info.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(
            info.needed.iter().any(|n| n == "libc.so.6"),
            "{:?}",
            info.needed
        );
    }

    #[test]
    fn non_elf_is_none() {
        assert!(dynamic_info(b"#!/bin/sh\n").is_none());
    }
}
