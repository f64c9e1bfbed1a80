//! `basalt.config=<url>` on the kernel command line.

use std::fmt;

/// An http:// or https:// URL with a host: the only thing `basalt.config=` may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigUrl(url::Url);

impl ConfigUrl {
    pub fn url(&self) -> &url::Url {
        &self.0
    }
    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }
}

impl fmt::Display for ConfigUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("basalt.config={value}: {reason}")]
    BadUrl { value: String, reason: String },
    #[error("basalt.platform={value}: {reason}")]
    BadPlatform { value: String, reason: String },
}

impl std::str::FromStr for ConfigUrl {
    type Err = CmdlineError;
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| CmdlineError::BadUrl {
            value: value.to_string(),
            reason,
        };
        let url = url::Url::parse(value).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "scheme {} is not supported, use http:// or https://",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("the URL has no host".into()));
        }
        Ok(ConfigUrl(url))
    }
}

/// Splits a command line the way the kernel does: on whitespace, with double quotes
/// grouping (`basalt.config="http://h/a b"` is one parameter).
fn params(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The `basalt.config=` URL, if the command line has one. Given several, the last wins,
/// as for kernel parameters (a boot loader appends the operator's edits).
pub fn config_url(cmdline: &str) -> Result<Option<ConfigUrl>, CmdlineError> {
    params(cmdline)
        .iter()
        .filter_map(|p| p.strip_prefix("basalt.config="))
        .next_back()
        .map(str::parse)
        .transpose()
}

/// `basalt.platform=` (metal, cloud, container): what configs are validated against.
/// `None` when absent; the image's command line always carries it.
pub fn platform(cmdline: &str) -> Result<Option<basalt_config::Mode>, CmdlineError> {
    params(cmdline)
        .iter()
        .filter_map(|p| p.strip_prefix("basalt.platform="))
        .next_back()
        .map(|v| {
            v.parse()
                .map_err(|e: basalt_config::UnknownMode| CmdlineError::BadPlatform {
                    value: v.to_string(),
                    reason: e.to_string(),
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parameter() {
        use basalt_config::Mode;
        let c = "console=tty0 console=ttyS0,115200 basalt.platform=metal panic=10";
        assert_eq!(platform(c).unwrap(), Some(Mode::Metal));
        assert_eq!(
            platform("basalt.platform=cloud").unwrap(),
            Some(Mode::Cloud)
        );
        assert_eq!(platform("quiet").unwrap(), None);
        assert!(matches!(
            platform("basalt.platform=baremetal"),
            Err(CmdlineError::BadPlatform { .. })
        ));
    }

    #[test]
    fn finds_the_url_among_other_parameters() {
        let c =
            "BOOT_IMAGE=/vmlinuz console=ttyS0 basalt.config=http://10.0.2.2:8080/cp.yaml quiet\n";
        assert_eq!(
            config_url(c).unwrap().unwrap().to_string(),
            "http://10.0.2.2:8080/cp.yaml"
        );
    }

    #[test]
    fn absent_parameter_is_none() {
        assert_eq!(config_url("console=ttyS0 basalt.configx=1").unwrap(), None);
        assert_eq!(config_url("").unwrap(), None);
    }

    #[test]
    fn last_one_wins_and_quotes_group() {
        let c = r#"basalt.config=http://a/1 "basalt.config=https://b/x y""#;
        let url = config_url(c).unwrap().unwrap();
        assert!(url.is_https());
        assert_eq!(url.url().host_str(), Some("b"));
        assert_eq!(url.url().path(), "/x%20y");
    }

    #[test]
    fn bad_urls_are_errors_not_skips() {
        for bad in [
            "basalt.config=ftp://h/c",
            "basalt.config=file:///etc/c",
            "basalt.config=not a url",
            "basalt.config=",
            "basalt.config=http://",
        ] {
            assert!(
                matches!(config_url(bad), Err(CmdlineError::BadUrl { .. })),
                "{bad}"
            );
        }
    }
}
