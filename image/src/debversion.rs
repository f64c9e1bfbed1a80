//! Debian version numbers and their ordering (Debian Policy §5.6.12), so the resolver
//! picks the same candidate apt would and checks `(>= x)` constraints itself.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A parsed `[epoch:]upstream[-revision]` version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DebVersion {
    epoch: u64,
    upstream: String,
    revision: String,
    text: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{text:?} is not a Debian version: {reason}")]
pub struct VersionError {
    pub text: String,
    pub reason: &'static str,
}

impl FromStr for DebVersion {
    type Err = VersionError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| VersionError {
            text: text.to_owned(),
            reason,
        };
        if text.is_empty() || text.chars().any(char::is_whitespace) {
            return Err(err("empty or contains whitespace"));
        }
        let (epoch, rest) = match text.split_once(':') {
            Some((e, rest)) => (
                e.parse::<u64>().map_err(|_| err("epoch is not a number"))?,
                rest,
            ),
            None => (0, text),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        if !upstream.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(err("upstream version must start with a digit"));
        }
        Ok(Self {
            epoch,
            upstream: upstream.to_owned(),
            revision: revision.to_owned(),
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for DebVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for DebVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| compare_part(&self.upstream, &other.upstream))
            .then_with(|| compare_part(&self.revision, &other.revision))
    }
}

impl PartialOrd for DebVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Weight of one non-digit character: `~` sorts before the end of the string, letters
/// before everything else.
fn char_order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefix, character by character.
        loop {
            let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
            let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
            if ca.is_none() && cb.is_none() {
                break;
            }
            let ord = char_order(ca).cmp(&char_order(cb));
            if ord != Ordering::Equal {
                return ord;
            }
            a = &a[1..];
            b = &b[1..];
        }
        // Digit run, numerically (leading zeros ignored, no overflow).
        let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
        let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let na = trim_zeros(&a[..da]);
        let nb = trim_zeros(&b[..db]);
        let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[da..];
        b = &b[db..];
    }
    Ordering::Equal
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let n = digits.iter().take_while(|&&c| c == b'0').count();
    &digits[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> DebVersion {
        s.parse().unwrap()
    }

    #[test]
    fn policy_examples_order_like_dpkg() {
        assert!(v("1.0~rc1") < v("1.0"));
        assert!(v("1.0") < v("1.0+deb12u1"));
        assert!(v("1.0-1") < v("1.0-1+b1"));
        assert!(v("1:0.1") > v("9.9"));
        assert!(v("6.1.192-2") > v("6.1.176-1"));
        assert!(v("1.6.20~ds1-1+deb12u3") > v("1.6.20~ds1-1+deb12u2"));
        assert!(v("252.39-1~deb12u2") > v("252.38-1~deb12u1"));
        assert!(v("1.10") > v("1.9"));
        assert!(v("1.01") == v("1.01"));
        assert_eq!(v("1.01").cmp(&v("1.1")), Ordering::Equal);
        assert!(v("2.0a") > v("2.0"));
        assert!(v("2.0a") < v("2.0+"));
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        assert_eq!(
            "x1".parse::<DebVersion>().unwrap_err().reason,
            "upstream version must start with a digit"
        );
        assert!("a:1".parse::<DebVersion>().is_err());
        assert!("".parse::<DebVersion>().is_err());
    }
}
