//! The kernel command line words basalt-init reads. Parsing is pure: it takes the
//! text of /proc/cmdline and never fails — a bad value is reported and the default kept,
//! because refusing to boot over a typo in a debug knob would be worse.

use std::time::Duration;

/// How long to show a fatal error on the console before rebooting.
pub const DEFAULT_PANIC_REBOOT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `basalt.panic_reboot=<seconds>`: delay before rebooting after a fatal error.
    pub panic_reboot: Duration,
    /// `basalt.debug`: log every module and mount individually.
    pub debug: bool,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            panic_reboot: DEFAULT_PANIC_REBOOT,
            debug: false,
        }
    }
}

/// The parsed command line plus one warning per word that could not be used.
pub fn parse(text: &str) -> (Cmdline, Vec<String>) {
    let mut cmdline = Cmdline::default();
    let mut warnings = Vec::new();
    // Only our own words matter here, and none of them needs quoting, so splitting on
    // whitespace is enough; quoted values of other parameters are skipped harmlessly.
    for word in text.split_whitespace() {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        match (key, value) {
            ("basalt.debug", None | Some("1" | "true" | "yes" | "on")) => cmdline.debug = true,
            ("basalt.debug", Some("0" | "false" | "no" | "off")) => cmdline.debug = false,
            ("basalt.debug", Some(v)) => warnings.push(format!(
                "basalt.debug={v}: expected no value, 1 or 0; ignored"
            )),
            ("basalt.panic_reboot", Some(v)) => match v.parse::<u64>() {
                Ok(secs) => cmdline.panic_reboot = Duration::from_secs(secs),
                Err(_) => warnings.push(format!(
                    "basalt.panic_reboot={v}: not a number of seconds; using {}",
                    cmdline.panic_reboot.as_secs()
                )),
            },
            ("basalt.panic_reboot", None) => warnings.push(format!(
                "basalt.panic_reboot needs a value in seconds; using {}",
                cmdline.panic_reboot.as_secs()
            )),
            _ => {}
        }
    }
    (cmdline, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_our_words() {
        let (c, w) = parse("console=ttyS0 root=/dev/sda quiet\n");
        assert_eq!(c, Cmdline::default());
        assert!(w.is_empty());
    }

    #[test]
    fn reads_debug_and_panic_reboot() {
        let (c, w) = parse("console=ttyS0 basalt.debug basalt.panic_reboot=5");
        assert!(c.debug);
        assert_eq!(c.panic_reboot, Duration::from_secs(5));
        assert!(w.is_empty());
        let (c, _) = parse("basalt.debug=1 basalt.panic_reboot=0");
        assert!(c.debug);
        assert_eq!(c.panic_reboot, Duration::ZERO);
    }

    #[test]
    fn last_word_wins() {
        let (c, _) =
            parse("basalt.debug basalt.debug=0 basalt.panic_reboot=1 basalt.panic_reboot=2");
        assert!(!c.debug);
        assert_eq!(c.panic_reboot, Duration::from_secs(2));
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let (c, w) = parse("basalt.panic_reboot=soon basalt.debug=maybe basalt.panic_reboot");
        assert_eq!(c, Cmdline::default());
        assert_eq!(w.len(), 3);
        assert!(w[0].contains("basalt.panic_reboot=soon"), "{w:?}");
        assert!(w[1].contains("basalt.debug=maybe"), "{w:?}");
    }

    #[test]
    fn similar_prefixes_are_not_ours() {
        let (c, w) = parse("basalt.debugger=1 xbasalt.debug basalt.panic_reboot_ms=3");
        assert_eq!(c, Cmdline::default());
        assert!(w.is_empty());
    }
}
