//! Unified kernel image: systemd's EFI stub with `.osrel`, `.cmdline`, `.initrd` and
//! `.linux` sections appended, written here directly (no objcopy) so every byte is under
//! our control: sections are added after the stub's last one at page-aligned addresses,
//! `.linux` last, then NumberOfSections, SizeOfImage, SizeOfInitializedData and the PE
//! checksum are fixed up.

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("the EFI stub is not a PE32+ image: {0}")]
    NotPe(&'static str),
    #[error("the EFI stub's headers have no room for {wanted} more section headers")]
    NoRoom { wanted: usize },
    #[error("section {name} is too large for a PE image ({size} bytes)")]
    TooLarge { name: String, size: usize },
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, UkiError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(UkiError::NotPe("truncated header"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, UkiError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(UkiError::NotPe("truncated header"))
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

const SCN_INITIALIZED_DATA_READ: u32 = 0x0000_0040 | 0x4000_0000;

/// Append `sections` (name ≤ 8 bytes, data) to the PE image `stub`.
pub fn add_sections(stub: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>, UkiError> {
    if stub.get(0..2) != Some(b"MZ") {
        return Err(UkiError::NotPe("no MZ signature"));
    }
    let pe = u32_at(stub, 0x3c)? as usize;
    if stub.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(UkiError::NotPe("no PE signature"));
    }
    let coff = pe + 4;
    let nsections = u16_at(stub, coff + 2)? as usize;
    let opt_size = u16_at(stub, coff + 16)? as usize;
    let opt = coff + 20;
    if u16_at(stub, opt)? != 0x20b {
        return Err(UkiError::NotPe("optional header is not PE32+"));
    }
    let section_align = u64::from(u32_at(stub, opt + 32)?);
    let file_align = u64::from(u32_at(stub, opt + 36)?);
    let size_of_headers = u32_at(stub, opt + 60)? as usize;
    let table = opt + opt_size;
    let table_end = table + 40 * (nsections + sections.len());
    if table_end > size_of_headers {
        return Err(UkiError::NoRoom {
            wanted: sections.len(),
        });
    }
    // The first free virtual address after the stub's own sections.
    let mut next_va = 0u64;
    for i in 0..nsections {
        let s = table + 40 * i;
        let vsize = u64::from(u32_at(stub, s + 8)?);
        let va = u64::from(u32_at(stub, s + 12)?);
        next_va = next_va.max(va + vsize);
    }
    let page = section_align.max(4096);
    let mut out = stub.to_vec();
    out.resize(align(out.len() as u64, file_align) as usize, 0);
    let mut init_data = u64::from(u32_at(stub, opt + 8)?);
    for (i, (name, data)) in sections.iter().enumerate() {
        let too_large = || UkiError::TooLarge {
            name: (*name).to_owned(),
            size: data.len(),
        };
        next_va = align(next_va, page);
        let raw_ptr = out.len() as u64;
        let raw_size = align(data.len() as u64, file_align);
        let h = table + 40 * (nsections + i);
        let mut name8 = [0u8; 8];
        let nb = name.as_bytes();
        name8[..nb.len().min(8)].copy_from_slice(&nb[..nb.len().min(8)]);
        out[h..h + 8].copy_from_slice(&name8);
        put_u32(
            &mut out,
            h + 8,
            u32::try_from(data.len()).map_err(|_| too_large())?,
        );
        put_u32(
            &mut out,
            h + 12,
            u32::try_from(next_va).map_err(|_| too_large())?,
        );
        put_u32(
            &mut out,
            h + 16,
            u32::try_from(raw_size).map_err(|_| too_large())?,
        );
        put_u32(
            &mut out,
            h + 20,
            u32::try_from(raw_ptr).map_err(|_| too_large())?,
        );
        out[h + 24..h + 40].fill(0);
        put_u32(&mut out, h + 36, SCN_INITIALIZED_DATA_READ);
        out.extend_from_slice(data);
        out.resize((raw_ptr + raw_size) as usize, 0);
        init_data += raw_size;
        next_va += data.len() as u64;
    }
    let total = out.len();
    let too_large = || UkiError::TooLarge {
        name: "image".into(),
        size: total,
    };
    put_u16(
        &mut out,
        coff + 2,
        u16::try_from(nsections + sections.len()).map_err(|_| too_large())?,
    );
    put_u32(
        &mut out,
        opt + 8,
        u32::try_from(init_data).map_err(|_| too_large())?,
    );
    put_u32(
        &mut out,
        opt + 56,
        u32::try_from(align(next_va, section_align)).map_err(|_| too_large())?,
    );
    put_u32(&mut out, opt + 64, 0);
    let sum = pe_checksum(&out, opt + 64);
    put_u32(&mut out, opt + 64, sum);
    Ok(out)
}

/// The PE checksum (ImageHlp's CheckSumMappedFile): 16-bit one's-complement-style sum
/// of the file with the checksum field taken as zero, plus the file length.
pub fn pe_checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < data.len() {
        let word = if i + 1 < data.len() {
            u16::from_le_bytes([data[i], data[i + 1]])
        } else {
            u16::from(data[i])
        };
        if i != checksum_offset && i != checksum_offset + 2 {
            sum += u64::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object, ObjectSection};

    /// A minimal PE32+ with one section, like the stub but tiny.
    fn tiny_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut b, coff, 0x8664);
        put_u16(&mut b, coff + 2, 1);
        put_u16(&mut b, coff + 16, 240);
        put_u16(&mut b, coff + 18, 0x22);
        let opt = coff + 20;
        put_u16(&mut b, opt, 0x20b);
        put_u32(&mut b, opt + 16, 0x1000);
        put_u32(&mut b, opt + 32, 0x1000);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x2000);
        put_u32(&mut b, opt + 60, 0x400);
        put_u16(&mut b, opt + 68, 10);
        put_u32(&mut b, opt + 108, 16);
        let s = opt + 240;
        b[s..s + 5].copy_from_slice(b".text");
        put_u32(&mut b, s + 8, 4);
        put_u32(&mut b, s + 12, 0x1000);
        put_u32(&mut b, s + 16, 0x200);
        put_u32(&mut b, s + 20, 0x400);
        put_u32(&mut b, s + 36, 0x6000_0020);
        b.extend_from_slice(&[0xc3; 0x200]);
        b
    }

    #[test]
    fn appended_sections_parse_back_with_their_bytes() {
        let out = add_sections(
            &tiny_pe(),
            &[
                (".osrel", b"NAME=Basalt\n"),
                (".cmdline", b"console=ttyS0"),
                (".linux", &[7u8; 5000]),
            ],
        )
        .unwrap();
        let file = object::read::pe::PeFile64::parse(&*out).unwrap();
        let osrel = file.section_by_name(".osrel").unwrap();
        assert_eq!(osrel.data().unwrap(), b"NAME=Basalt\n");
        assert_eq!(osrel.address() % 4096, 0);
        let linux = file.section_by_name(".linux").unwrap();
        assert_eq!(&linux.data().unwrap()[..5000], &[7u8; 5000][..]);
        assert!(linux.address() > file.section_by_name(".cmdline").unwrap().address());
        let size_of_image = u32_at(&out, 0x84 + 20 + 56).unwrap() as u64;
        assert!(size_of_image >= linux.address() + 5000);
        // The checksum field holds the checksum of the final file.
        let stored = u32_at(&out, 0x84 + 20 + 64).unwrap();
        assert_eq!(stored, pe_checksum(&out, 0x84 + 20 + 64));
        assert_eq!(
            out,
            add_sections(
                &tiny_pe(),
                &[
                    (".osrel", b"NAME=Basalt\n"),
                    (".cmdline", b"console=ttyS0"),
                    (".linux", &[7u8; 5000])
                ]
            )
            .unwrap()
        );
    }

    #[test]
    fn no_room_for_headers_is_an_error() {
        let many: Vec<(&str, &[u8])> = (0..20).map(|_| (".x", &b"y"[..])).collect();
        assert!(matches!(
            add_sections(&tiny_pe(), &many),
            Err(UkiError::NoRoom { .. })
        ));
        assert!(matches!(
            add_sections(b"nope", &[]),
            Err(UkiError::NotPe(_))
        ));
    }
}
