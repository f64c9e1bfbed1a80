//! SHA-256 certificate fingerprints, the way an operator pins a maintenance-mode node.

use std::fmt;
use std::str::FromStr;

/// The SHA-256 digest of a DER certificate. Displays as `SHA256:AB:CD:…` (the form machined
/// prints on the console); parses that form, OpenSSL's `AB:CD:…`, or plain hex, in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// The console line machined prints when it enters maintenance mode, e.g.
/// `machined: maintenance mode: API listening on :50000, certificate fingerprint SHA256:AB:…`.
pub fn maintenance_banner(port: u16, fingerprint: &Fingerprint) -> String {
    format!("{MAINTENANCE_BANNER} :{port}, certificate fingerprint {fingerprint}")
}

/// The fixed start of [`maintenance_banner`], to wait for on a console.
pub const MAINTENANCE_BANNER: &str = "machined: maintenance mode: API listening on";

/// Finds the maintenance banner in a console line (kernel or serial prefixes before it are
/// fine) and returns the fingerprint it announces.
pub fn fingerprint_from_banner(line: &str) -> Option<Fingerprint> {
    let rest = &line[line.find(MAINTENANCE_BANNER)?..];
    let (_, fp) = rest.split_once("certificate fingerprint ")?;
    fp.split_whitespace().next()?.parse().ok()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not a SHA-256 certificate fingerprint: {reason} \
     (expected SHA256: followed by 32 hex byte pairs, colons optional)"
)]
pub struct FingerprintError {
    pub value: String,
    pub reason: &'static str,
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| FingerprintError {
            value: s.to_owned(),
            reason,
        };
        let trimmed = s.trim();
        let hex_part = match trimmed.split_once(':') {
            Some((prefix, rest)) if prefix.eq_ignore_ascii_case("sha256") => rest,
            _ => trimmed,
        };
        let hex: Vec<u8> = hex_part.bytes().filter(|b| *b != b':').collect();
        if hex.len() != 64 {
            return Err(err("it does not have 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            let digit = |c: u8| {
                (c as char)
                    .to_digit(16)
                    .ok_or_else(|| err("it contains a non-hex character"))
            };
            out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_form_and_round_trips() {
        let fp = Fingerprint::of_der(b"certificate");
        let shown = fp.to_string();
        assert!(shown.starts_with("SHA256:"));
        assert_eq!(shown.parse::<Fingerprint>().unwrap(), fp);
        let openssl = shown.trim_start_matches("SHA256:");
        assert_eq!(openssl.parse::<Fingerprint>().unwrap(), fp);
        let plain = openssl.replace(':', "").to_lowercase();
        assert_eq!(plain.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            format!("sha256:{plain}").parse::<Fingerprint>().unwrap(),
            fp
        );
    }

    #[test]
    fn the_banner_carries_the_fingerprint_to_a_console_reader() {
        let fp = Fingerprint::of_der(b"maintenance");
        let line = format!("[    5.123] {}\r", maintenance_banner(50000, &fp));
        assert!(line.contains("API listening on :50000, certificate fingerprint SHA256:"));
        assert_eq!(fingerprint_from_banner(&line), Some(fp));
        assert_eq!(fingerprint_from_banner("machined: booting"), None);
    }

    #[test]
    fn refuses_wrong_lengths_and_characters() {
        assert!("SHA256:AB".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }
}
