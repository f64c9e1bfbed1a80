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
    fn refuses_wrong_lengths_and_characters() {
        assert!("SHA256:AB".parse::<Fingerprint>().is_err());
        assert!("zz".repeat(32).parse::<Fingerprint>().is_err());
    }
}
