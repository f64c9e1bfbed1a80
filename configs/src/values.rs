//! Validated value types: every string in a machine config that has a grammar is one of
//! these, built only through `FromStr`, so code past the parser never checks a value
//! again. serde goes through `FromStr` too, which is how a bad value fails with the path
//! of its field. Error messages never repeat the offending value: the field path already
//! locates it, and some values (tokens, keys) are secrets.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// What a redacted secret (private key, bootstrap token) is replaced with. A redacted
/// config still parses and serialises, but validation refuses it: it cannot run a node.
pub const REDACTED: &str = "******";

/// Why a value was refused. Every message starts with "not a …" so that, behind the
/// field path, it reads as a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("not a hostname (RFC 1123): {0}")]
    Hostname(&'static str),
    #[error("not a DNS name (RFC 1123): {0}")]
    DnsName(&'static str),
    #[error("not a cluster name: {0}")]
    ClusterName(&'static str),
    #[error("not a CIDR: expected an address and prefix length such as 10.244.0.0/16 or fd00::/64")]
    Cidr,
    #[error("not an IPv4/IPv6 address")]
    IpAddress,
    #[error("not a bootstrap token: expected [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    BootstrapToken,
    #[error("not an endpoint: {0}")]
    Endpoint(&'static str),
    #[error("not a registry mirror endpoint: expected an http:// or https:// URL with a host")]
    MirrorEndpoint,
    #[error("not a registry name: expected a host name with an optional :port, or `*`")]
    RegistryName,
    #[error("not a PEM certificate: {0}")]
    PemCertificate(&'static str),
    #[error("not a PEM private key: {0}")]
    PemPrivateKey(&'static str),
    #[error("not an interface name: {0}")]
    InterfaceName(&'static str),
    #[error(
        "not a MAC address: expected six hex octets separated by colons, such as 52:54:00:12:34:56"
    )]
    MacAddress,
    #[error("not a file mode: expected octal permissions 0o0000 to 0o7777, such as 0o644")]
    FileMode,
    #[error("not a kernel module name: expected 1 to 55 characters from [A-Za-z0-9_-]")]
    KernelModuleName,
    #[error("not a kernel module parameter: expected name=value or name, without spaces")]
    KernelModuleParameter,
    #[error(
        "not a sysctl key: expected segments of [A-Za-z0-9_-] separated by `.` or `/`, such as net.ipv4.ip_forward"
    )]
    SysctlKey,
    #[error("not a sysctl value: expected a single line")]
    SysctlValue,
    #[error("not an absolute path: {0}")]
    AbsolutePath(&'static str),
    #[error(
        "not a container image reference: expected a non-empty reference without spaces, such as registry.k8s.io/pause:3.10"
    )]
    ContainerImage,
    #[error("not a Kubernetes version: expected v<major>.<minor>.<patch>, such as v1.31.2")]
    KubernetesVersion,
    #[error("not a time server: expected a host name or an IP address")]
    TimeServer,
    #[error(
        "not a subject alternative name: expected a DNS name (optionally *.-prefixed) or an IP address"
    )]
    SubjectAltName,
}

/// Implements Display/Serialize (as the canonical string) and Deserialize (from a string,
/// through `FromStr`) for a newtype.
macro_rules! string_value {
    ($ty:ident, $expecting:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// A string newtype whose canonical form is the text it was parsed from.
macro_rules! text_newtype {
    ($(#[$m:meta])* $ty:ident, $expecting:literal, $check:expr) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $ty {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, ValueError> {
                let check: fn(&str) -> Result<(), ValueError> = $check;
                check(s)?;
                Ok($ty(s.to_owned()))
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        string_value!($ty, $expecting);
    };
}

fn check_dns_labels(s: &str, err: fn(&'static str) -> ValueError) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(err("must not be empty"));
    }
    if s.len() > 253 {
        return Err(err("longer than 253 characters"));
    }
    for label in s.split('.') {
        if label.is_empty() {
            return Err(err(
                "empty label (two dots in a row, or a leading or trailing dot)",
            ));
        }
        if label.len() > 63 {
            return Err(err("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err(
                "only lowercase letters, digits, `-` and `.` are allowed (Kubernetes node names are lowercase)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err("a label must not start or end with `-`"));
        }
    }
    Ok(())
}

text_newtype!(
    /// A node host name: RFC 1123 labels, lowercase (it becomes the Kubernetes node name).
    Hostname,
    "a hostname",
    |s| check_dns_labels(s, ValueError::Hostname)
);

text_newtype!(
    /// A DNS name such as the cluster DNS domain (`cluster.local`).
    DnsName,
    "a DNS name",
    |s| check_dns_labels(s, ValueError::DnsName)
);

text_newtype!(
    /// The cluster name: one RFC 1123 label, because it ends up in kubeconfig context
    /// names and certificate subjects.
    ClusterName,
    "a cluster name",
    |s| {
        if s.contains('.') {
            return Err(ValueError::ClusterName("a single label without dots is expected"));
        }
        check_dns_labels(s, ValueError::ClusterName)
    }
);

text_newtype!(
    /// A network interface name as the kernel accepts it (IFNAMSIZ: at most 15 bytes).
    InterfaceName,
    "an interface name",
    |s| {
        if s.is_empty() {
            return Err(ValueError::InterfaceName("must not be empty"));
        }
        if s.len() > 15 {
            return Err(ValueError::InterfaceName("longer than 15 bytes (the kernel's IFNAMSIZ)"));
        }
        if s == "." || s == ".." {
            return Err(ValueError::InterfaceName("`.` and `..` are reserved"));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':') {
            return Err(ValueError::InterfaceName(
                "only printable ASCII without spaces, `/` or `:` is allowed",
            ));
        }
        Ok(())
    }
);

text_newtype!(
    /// A kernel module name (MODULE_NAME_LEN is 56 including the terminating NUL).
    KernelModuleName,
    "a kernel module name",
    |s| {
        if s.is_empty()
            || s.len() > 55
            || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ValueError::KernelModuleName);
        }
        Ok(())
    }
);

text_newtype!(
    /// One module parameter as modprobe takes it: `name=value` or a bare `name`.
    KernelModuleParameter,
    "a kernel module parameter",
    |s| {
        let name = s.split('=').next().unwrap_or_default();
        if name.is_empty()
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || !s.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ValueError::KernelModuleParameter);
        }
        Ok(())
    }
);

text_newtype!(
    /// A sysctl name in dotted (`net.ipv4.ip_forward`) or slash form.
    SysctlKey,
    "a sysctl key",
    |s| {
        let ok = !s.is_empty()
            && s.split(['.', '/']).all(|seg| {
                !seg.is_empty()
                    && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if ok { Ok(()) } else { Err(ValueError::SysctlKey) }
    }
);

text_newtype!(
    /// An absolute, normalised path: no `..`, no `.` segment, no empty segment.
    AbsolutePath,
    "an absolute path",
    |s| {
        let Some(rest) = s.strip_prefix('/') else {
            return Err(ValueError::AbsolutePath("must start with `/`"));
        };
        if rest.is_empty() {
            return Ok(());
        }
        if s.contains('\0') {
            return Err(ValueError::AbsolutePath("must not contain NUL"));
        }
        if rest.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            return Err(ValueError::AbsolutePath(
                "must be normalised: no `//`, no `.` or `..` segment, no trailing `/`",
            ));
        }
        Ok(())
    }
);

text_newtype!(
    /// A container image reference (`registry.k8s.io/kube-apiserver:v1.31.2`).
    ContainerImage,
    "a container image reference",
    |s| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValueError::ContainerImage);
        }
        Ok(())
    }
);

text_newtype!(
    /// A Kubernetes release: `v<major>.<minor>.<patch>` with an optional `-pre` or `+build`.
    KubernetesVersion,
    "a Kubernetes version",
    |s| {
        let core = s.strip_prefix('v').ok_or(ValueError::KubernetesVersion)?;
        let (core, suffix) = match core.find(['-', '+']) {
            Some(i) => (&core[..i], Some(&core[i + 1..])),
            None => (core, None),
        };
        let parts: Vec<&str> = core.split('.').collect();
        let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if parts.len() != 3 || !parts.iter().all(numeric) {
            return Err(ValueError::KubernetesVersion);
        }
        if let Some(suffix) = suffix
            && (suffix.is_empty()
                || !suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'+'))
        {
            return Err(ValueError::KubernetesVersion);
        }
        Ok(())
    }
);

impl KubernetesVersion {
    /// The release this crate's defaults (images) were written for.
    pub fn default_version() -> Self {
        KubernetesVersion("v1.31.2".to_owned())
    }
}

text_newtype!(
    /// A registry a mirror is declared for: `docker.io`, `registry.local:5000`, or `*`.
    RegistryName,
    "a registry name",
    |s| {
        if s == "*" {
            return Ok(());
        }
        let host = match s.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => s,
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return Err(ValueError::RegistryName);
        }
        Ok(())
    }
);

text_newtype!(
    /// A registry mirror URL (http or https, with a host).
    MirrorEndpoint,
    "a registry mirror endpoint URL",
    |s| {
        let url = url::Url::parse(s).map_err(|_| ValueError::MirrorEndpoint)?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ValueError::MirrorEndpoint);
        }
        Ok(())
    }
);

text_newtype!(
    /// An NTP server: a host name or an IP address.
    TimeServer,
    "a time server",
    |s| {
        if s.parse::<IpAddr>().is_ok()
            || check_dns_labels(&s.to_ascii_lowercase(), ValueError::DnsName).is_ok()
        {
            Ok(())
        } else {
            Err(ValueError::TimeServer)
        }
    }
);

text_newtype!(
    /// A certificate subject alternative name: an IP address or a DNS name, optionally a
    /// `*.` wildcard.
    SubjectAltName,
    "a subject alternative name",
    |s| {
        let name = s.strip_prefix("*.").unwrap_or(s);
        if s.parse::<IpAddr>().is_ok()
            || check_dns_labels(&name.to_ascii_lowercase(), ValueError::DnsName).is_ok()
        {
            Ok(())
        } else {
            Err(ValueError::SubjectAltName)
        }
    }
);

/// A sysctl value. Written as a string; an integer in the document is accepted and
/// stored as its decimal text, because that is what ends up in /proc/sys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysctlValue(String);

impl SysctlValue {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SysctlValue {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s.contains(['\n', '\r', '\0']) {
            return Err(ValueError::SysctlValue);
        }
        Ok(SysctlValue(s.to_owned()))
    }
}

impl fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SysctlValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SysctlValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SysctlValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sysctl value (string or integer)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SysctlValue, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SysctlValue, E> {
                Ok(SysctlValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// An IP network in CIDR notation. Host bits may be set (`10.5.0.2/24` is an interface
/// address in the 10.5.0.0/24 subnet); `network()` gives the subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(ipnet::IpNet);

impl Cidr {
    pub fn new(net: ipnet::IpNet) -> Self {
        Cidr(net)
    }
    pub fn ip_net(&self) -> ipnet::IpNet {
        self.0
    }
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }
    /// The subnet with host bits cleared.
    pub fn network(&self) -> ipnet::IpNet {
        self.0.trunc()
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip)
    }
    /// True when the two subnets share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let (a, b) = (self.network(), other.network());
        a.contains(&b.network()) || b.contains(&a.network())
    }
    /// True when no host bits are set (`10.244.0.0/16`, not `10.244.1.0/16`).
    pub fn is_network(&self) -> bool {
        self.0.trunc() == self.0
    }
}

impl FromStr for Cidr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        s.parse::<ipnet::IpNet>()
            .map(Cidr)
            .map_err(|_| ValueError::Cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_value!(Cidr, "a CIDR such as 10.244.0.0/16");

/// An IPv4 or IPv6 address. `std::net::IpAddr` with this crate's error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpAddress(pub IpAddr);

impl IpAddress {
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

impl FromStr for IpAddress {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        s.parse().map(IpAddress).map_err(|_| ValueError::IpAddress)
    }
}

impl fmt::Display for IpAddress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_value!(IpAddress, "an IPv4/IPv6 address");

/// A MAC address, stored as bytes and written in lowercase colon form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    pub fn new(octets: [u8; 6]) -> Self {
        MacAddress(octets)
    }
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl FromStr for MacAddress {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(ValueError::MacAddress)?;
            if part.len() != 2 {
                return Err(ValueError::MacAddress);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ValueError::MacAddress)?;
        }
        if parts.next().is_some() {
            return Err(ValueError::MacAddress);
        }
        Ok(MacAddress(out))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}
string_value!(MacAddress, "a MAC address");

/// File permission bits (at most 0o7777). Written as the string `0o644`; the YAML
/// integer `0o644` (or `420`) and the strings `0644` / `0o644` are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileMode(u32);

impl FileMode {
    pub fn new(mode: u32) -> Result<Self, ValueError> {
        if mode > 0o7777 {
            return Err(ValueError::FileMode);
        }
        Ok(FileMode(mode))
    }
    pub fn bits(&self) -> u32 {
        self.0
    }
}

impl Default for FileMode {
    fn default() -> Self {
        FileMode(0o644)
    }
}

impl FromStr for FileMode {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(ValueError::FileMode);
        }
        let mode = u32::from_str_radix(digits, 8).map_err(|_| ValueError::FileMode)?;
        FileMode::new(mode)
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "0o{:03o}", self.0)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("file permissions such as 0o644")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileMode, E> {
                u32::try_from(v)
                    .map_err(|_| ValueError::FileMode)
                    .and_then(FileMode::new)
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileMode, E> {
                u32::try_from(v)
                    .map_err(|_| ValueError::FileMode)
                    .and_then(FileMode::new)
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`, or the redaction marker.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BootstrapToken(TokenRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum TokenRepr {
    Token { id: String, secret: String },
    Redacted,
}

impl BootstrapToken {
    /// Builds a token from its two parts, checking both.
    pub fn new(id: &str, secret: &str) -> Result<Self, ValueError> {
        format!("{id}.{secret}").parse()
    }
    /// The token with its value replaced by [`REDACTED`].
    pub fn redacted() -> Self {
        BootstrapToken(TokenRepr::Redacted)
    }
    pub fn is_redacted(&self) -> bool {
        matches!(self.0, TokenRepr::Redacted)
    }
    /// The public half (`abcdef`); [`REDACTED`] for a redacted token.
    pub fn id(&self) -> &str {
        match &self.0 {
            TokenRepr::Token { id, .. } => id,
            TokenRepr::Redacted => REDACTED,
        }
    }
    /// The secret half; [`REDACTED`] for a redacted token.
    pub fn secret(&self) -> &str {
        match &self.0 {
            TokenRepr::Token { secret, .. } => secret,
            TokenRepr::Redacted => REDACTED,
        }
    }
}

// Debug never prints the secret half, so a token cannot leak through a log line.
impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "BootstrapToken({}.{REDACTED})", self.id())
    }
}

impl FromStr for BootstrapToken {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s == REDACTED {
            return Ok(BootstrapToken::redacted());
        }
        let token_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        match s.split_once('.') {
            Some((id, secret))
                if id.len() == 6
                    && secret.len() == 16
                    && id.bytes().all(token_char)
                    && secret.bytes().all(token_char) =>
            {
                Ok(BootstrapToken(TokenRepr::Token {
                    id: id.to_owned(),
                    secret: secret.to_owned(),
                }))
            }
            _ => Err(ValueError::BootstrapToken),
        }
    }
}

/// The full token text (`id.secret`), as kubeadm expects it.
impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.0 {
            TokenRepr::Token { id, secret } => write!(f, "{id}.{secret}"),
            TokenRepr::Redacted => f.write_str(REDACTED),
        }
    }
}
string_value!(BootstrapToken, "a bootstrap token");

/// The cluster endpoint: an `https://` URL with a host and an explicit port and nothing
/// else (no path, query, fragment or user info). Kept as written so it round-trips.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    text: String,
    host: String,
    port: u16,
}

impl Endpoint {
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// The host as it appears in the URL (IPv6 addresses keep their brackets).
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }
}

impl FromStr for Endpoint {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        // url::Url silently strips surrounding blanks and drops tabs and newlines; the
        // endpoint is kept as written, so refuse them instead.
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValueError::Endpoint(
                "spaces and control characters are not allowed",
            ));
        }
        let url = url::Url::parse(s).map_err(|_| {
            ValueError::Endpoint("expected an https:// URL such as https://192.0.2.10:6443")
        })?;
        if url.scheme() != "https" {
            return Err(ValueError::Endpoint("the scheme must be https://"));
        }
        let host = url
            .host_str()
            .ok_or(ValueError::Endpoint("the URL has no host"))?
            .to_owned();
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ValueError::Endpoint("user info is not allowed"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(ValueError::Endpoint(
                "a path, query or fragment is not allowed",
            ));
        }
        // url::Url forgets a port equal to the scheme's default, so look at the text.
        let authority = s
            .split_once("://")
            .map_or(s, |(_, rest)| rest)
            .trim_end_matches('/');
        let port = match url.port() {
            Some(p) => p,
            None if authority.ends_with(":443") => 443,
            None => {
                return Err(ValueError::Endpoint(
                    "the port is missing (the Kubernetes API usually listens on 6443)",
                ));
            }
        };
        Ok(Endpoint {
            text: s.to_owned(),
            host,
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.text)
    }
}
string_value!(Endpoint, "an https:// endpoint URL");

/// Checks the PEM envelope: one block, BEGIN/END lines with the same label, a base64
/// body. Returns the label.
fn pem_label(s: &str) -> Result<&str, &'static str> {
    let text = s.trim();
    let first = text.lines().next().unwrap_or_default();
    let label = first
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or("expected a -----BEGIN ...----- line")?;
    let end = format!("-----END {label}-----");
    let body_and_end = &text[first.len()..];
    let body = body_and_end
        .trim_end()
        .strip_suffix(end.as_str())
        .ok_or("the END line is missing or does not match the BEGIN line")?;
    if body.contains("-----") {
        return Err("expected exactly one PEM block");
    }
    let b64: String = body.split_whitespace().collect();
    if b64.is_empty() {
        return Err("the PEM block is empty");
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the PEM body is not valid base64")?;
    Ok(label)
}

/// An X.509 certificate in PEM form. Only the envelope is checked at parse time; the
/// DER inside is checked by validation through [`crate::pki`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PemCertificate(String);

impl PemCertificate {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PemCertificate {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let label = pem_label(s).map_err(ValueError::PemCertificate)?;
        if label != "CERTIFICATE" {
            return Err(ValueError::PemCertificate(
                "the PEM label must be CERTIFICATE",
            ));
        }
        Ok(PemCertificate(canonical_pem(s)))
    }
}

impl fmt::Display for PemCertificate {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_value!(PemCertificate, "a PEM certificate");

/// PEM text always ends with exactly one newline, so YAML writes it as a `|` block and
/// reading it back gives the same string.
fn canonical_pem(s: &str) -> String {
    let mut out = s.trim().to_owned();
    out.push('\n');
    out
}

/// A private key in PEM form (`... PRIVATE KEY`), or the redaction marker. Debug never
/// prints the key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PemPrivateKey(String);

impl PemPrivateKey {
    /// The key with its value replaced by [`REDACTED`].
    pub fn redacted() -> Self {
        PemPrivateKey(REDACTED.to_owned())
    }
    pub fn is_redacted(&self) -> bool {
        self.0 == REDACTED
    }
    /// The PEM text ([`REDACTED`] for a redacted key).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PemPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("PemPrivateKey(<hidden>)")
    }
}

impl FromStr for PemPrivateKey {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if s == REDACTED {
            return Ok(PemPrivateKey::redacted());
        }
        let label = pem_label(s).map_err(ValueError::PemPrivateKey)?;
        if !label.ends_with("PRIVATE KEY") {
            return Err(ValueError::PemPrivateKey(
                "the PEM label must end in PRIVATE KEY",
            ));
        }
        Ok(PemPrivateKey(canonical_pem(s)))
    }
}

impl fmt::Display for PemPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_value!(PemPrivateKey, "a PEM private key");

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: FromStr<Err = ValueError>>(s: &str) -> String {
        match s.parse::<T>() {
            Ok(_) => panic!("{s:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn hostname_rules() {
        assert!("cp-1".parse::<Hostname>().is_ok());
        assert!("node.example.com".parse::<Hostname>().is_ok());
        assert_eq!(
            err::<Hostname>("-cp"),
            "not a hostname (RFC 1123): a label must not start or end with `-`"
        );
        assert_eq!(
            err::<Hostname>("CP1"),
            "not a hostname (RFC 1123): only lowercase letters, digits, `-` and `.` are allowed (Kubernetes node names are lowercase)"
        );
        assert_eq!(
            err::<Hostname>(""),
            "not a hostname (RFC 1123): must not be empty"
        );
        assert_eq!(
            err::<Hostname>("a..b"),
            "not a hostname (RFC 1123): empty label (two dots in a row, or a leading or trailing dot)"
        );
        assert_eq!(
            err::<Hostname>(&"a".repeat(64)),
            "not a hostname (RFC 1123): a label is longer than 63 characters"
        );
    }

    #[test]
    fn bootstrap_token_rules() {
        let t: BootstrapToken = "abcdef.0123456789abcdef".parse().unwrap();
        assert_eq!((t.id(), t.secret()), ("abcdef", "0123456789abcdef"));
        assert_eq!(t.to_string(), "abcdef.0123456789abcdef");
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdefg",
            "abcdef.0123456789abcde",
        ] {
            assert_eq!(
                err::<BootstrapToken>(bad),
                "not a bootstrap token: expected [a-z0-9]{6}.[a-z0-9]{16}"
            );
        }
        assert!(REDACTED.parse::<BootstrapToken>().unwrap().is_redacted());
    }

    #[test]
    fn endpoint_rules() {
        let e: Endpoint = "https://192.0.2.10:6443".parse().unwrap();
        assert_eq!((e.host(), e.port()), ("192.0.2.10", 6443));
        assert_eq!(e.to_string(), "https://192.0.2.10:6443");
        assert_eq!(
            "https://k8s.example:443"
                .parse::<Endpoint>()
                .unwrap()
                .port(),
            443
        );
        assert_eq!(
            "https://[fd00::1]:6443".parse::<Endpoint>().unwrap().ip(),
            Some("fd00::1".parse().unwrap())
        );
        assert_eq!(
            err::<Endpoint>("http://192.0.2.10:6443"),
            "not an endpoint: the scheme must be https://"
        );
        assert_eq!(
            err::<Endpoint>("https://192.0.2.10"),
            "not an endpoint: the port is missing (the Kubernetes API usually listens on 6443)"
        );
        assert_eq!(
            err::<Endpoint>("192.0.2.10:6443"),
            "not an endpoint: expected an https:// URL such as https://192.0.2.10:6443"
        );
        assert_eq!(
            err::<Endpoint>("not-a-url"),
            "not an endpoint: expected an https:// URL such as https://192.0.2.10:6443"
        );
        assert_eq!(
            err::<Endpoint>(" https://192.0.2.10:6443"),
            "not an endpoint: spaces and control characters are not allowed"
        );
        assert_eq!(
            err::<Endpoint>("https://a:6443/api"),
            "not an endpoint: a path, query or fragment is not allowed"
        );
    }

    #[test]
    fn cidr_overlap() {
        let a: Cidr = "10.96.0.0/12".parse().unwrap();
        let b: Cidr = "10.100.0.0/16".parse().unwrap();
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(!"10.5.0.2/24".parse::<Cidr>().unwrap().is_network());
        assert_eq!(
            err::<Cidr>("10.0.0.0"),
            "not a CIDR: expected an address and prefix length such as 10.244.0.0/16 or fd00::/64"
        );
    }

    #[test]
    fn mac_and_mode_and_names() {
        let m: MacAddress = "52:54:00:AB:cd:EF".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert!("52:54:00:ab:cd".parse::<MacAddress>().is_err());
        assert!("52:54:00:ab:cd:ef:01".parse::<MacAddress>().is_err());
        assert_eq!("0o644".parse::<FileMode>().unwrap().bits(), 0o644);
        assert_eq!("0755".parse::<FileMode>().unwrap().to_string(), "0o755");
        assert_eq!(
            err::<FileMode>("0o8"),
            "not a file mode: expected octal permissions 0o0000 to 0o7777, such as 0o644"
        );
        assert!("17777".parse::<FileMode>().is_err());
        assert_eq!(
            err::<InterfaceName>("a-very-long-name0"),
            "not an interface name: longer than 15 bytes (the kernel's IFNAMSIZ)"
        );
        assert!("eth0".parse::<InterfaceName>().is_ok());
        assert!("net.ipv4.ip_forward".parse::<SysctlKey>().is_ok());
        assert!(
            "net/ipv4/conf/eth0.100/rp_filter"
                .parse::<SysctlKey>()
                .is_ok()
        );
        assert!("net..ipv4".parse::<SysctlKey>().is_err());
        assert!("ip_vs".parse::<KernelModuleName>().is_ok());
        assert!("ip vs".parse::<KernelModuleName>().is_err());
        assert!("v1.31.2".parse::<KubernetesVersion>().is_ok());
        assert!("v1.32.0-rc.1".parse::<KubernetesVersion>().is_ok());
        assert!("1.31.2".parse::<KubernetesVersion>().is_err());
        assert!("/var/etc/x".parse::<AbsolutePath>().is_ok());
        assert_eq!(
            err::<AbsolutePath>("/var/../etc"),
            "not an absolute path: must be normalised: no `//`, no `.` or `..` segment, no trailing `/`"
        );
        assert!("docker.io".parse::<RegistryName>().is_ok());
        assert!("registry.local:5000".parse::<RegistryName>().is_ok());
        assert!("https://docker.io".parse::<RegistryName>().is_err());
    }

    #[test]
    fn pem_envelope() {
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";
        assert_eq!(
            cert.parse::<PemCertificate>().unwrap().as_str(),
            format!("{cert}\n")
        );
        assert_eq!(
            err::<PemCertificate>("-----BEGIN CERTIFICATE-----\nMIIB\n-----END PRIVATE KEY-----"),
            "not a PEM certificate: the END line is missing or does not match the BEGIN line"
        );
        assert_eq!(
            err::<PemCertificate>(
                "-----BEGIN EC PRIVATE KEY-----\nMIIB\n-----END EC PRIVATE KEY-----"
            ),
            "not a PEM certificate: the PEM label must be CERTIFICATE"
        );
        assert_eq!(
            err::<PemPrivateKey>(
                "-----BEGIN EC PRIVATE KEY-----\nM!IB\n-----END EC PRIVATE KEY-----"
            ),
            "not a PEM private key: the PEM body is not valid base64"
        );
        assert!(
            format!(
                "{:?}",
                "-----BEGIN EC PRIVATE KEY-----\nMIIB\n-----END EC PRIVATE KEY-----"
                    .parse::<PemPrivateKey>()
                    .unwrap()
            )
            .contains("hidden")
        );
    }
}
