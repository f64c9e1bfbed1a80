//! /etc/resolv.conf and /etc/hosts: rendered purely, written atomically (temp file in the
//! same directory, fsync, rename) so a reader never sees half a file.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use super::NetworkError;

/// glibc reads at most three `nameserver` lines (MAXNS); more would be silently ignored.
pub const MAX_NAMESERVERS: usize = 3;

/// Declared nameservers win; without them, DHCP's, in lease order, without duplicates.
pub fn pick_resolvers(declared: &[IpAddr], from_dhcp: &[IpAddr]) -> Vec<IpAddr> {
    let source = if declared.is_empty() {
        from_dhcp
    } else {
        declared
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in source {
        if !out.contains(ip) {
            out.push(*ip);
        }
    }
    out.truncate(MAX_NAMESERVERS);
    out
}

pub fn render_resolv_conf(nameservers: &[IpAddr], search: &[String]) -> String {
    let mut s = String::from("# Written by machined from the machine config or DHCP.\n");
    if !search.is_empty() {
        s.push_str(&format!("search {}\n", search.join(" ")));
    }
    for ns in nameservers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    s
}

pub fn render_hosts(hostname: Option<&str>, node_ip: Option<IpAddr>) -> String {
    let mut s = String::from("# Written by machined.\n127.0.0.1\tlocalhost\n");
    s.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(name) = hostname {
        // Without an address the name still has to resolve for kubelet and etcd.
        let ip = node_ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1, 1)));
        let short = name.split('.').next().unwrap_or(name);
        if short != name {
            s.push_str(&format!("{ip}\t{name} {short}\n"));
        } else {
            s.push_str(&format!("{ip}\t{name}\n"));
        }
    }
    s
}

/// Rewrites only when the content differs, so renewals do not churn /etc every few
/// minutes. Returns whether it wrote.
pub fn write_if_changed(path: &Path, contents: &str) -> Result<bool, NetworkError> {
    if fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(false);
    }
    write_atomic(path, contents)?;
    Ok(true)
}

pub fn write_atomic(path: &Path, contents: &str) -> Result<(), NetworkError> {
    let err = |source| NetworkError::WriteFile {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(err)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.machined-tmp"));
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn declared_nameservers_beat_dhcp() {
        assert_eq!(
            pick_resolvers(&[ip("1.1.1.1")], &[ip("10.0.0.1")]),
            vec![ip("1.1.1.1")]
        );
        assert_eq!(pick_resolvers(&[], &[ip("10.0.0.1")]), vec![ip("10.0.0.1")]);
        assert!(pick_resolvers(&[], &[]).is_empty());
    }

    #[test]
    fn resolvers_are_deduplicated_and_capped_at_three() {
        let dhcp = [
            ip("10.0.0.1"),
            ip("10.0.0.1"),
            ip("10.0.0.2"),
            ip("10.0.0.3"),
            ip("10.0.0.4"),
        ];
        assert_eq!(
            pick_resolvers(&[], &dhcp),
            vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")]
        );
    }

    #[test]
    fn resolv_conf_lists_search_then_nameservers() {
        let s = render_resolv_conf(&[ip("10.0.0.1"), ip("fd00::1")], &["lab.local".into()]);
        assert_eq!(
            s,
            "# Written by machined from the machine config or DHCP.\nsearch lab.local\nnameserver 10.0.0.1\nnameserver fd00::1\n"
        );
    }

    #[test]
    fn hosts_maps_hostname_to_node_ip_with_short_alias() {
        let s = render_hosts(Some("cp1.lab.local"), Some(ip("10.5.0.2")));
        assert!(s.contains("127.0.0.1\tlocalhost\n"));
        assert!(s.ends_with("10.5.0.2\tcp1.lab.local cp1\n"), "{s}");
        let s = render_hosts(Some("cp1"), None);
        assert!(s.ends_with("127.0.1.1\tcp1\n"), "{s}");
        let s = render_hosts(None, Some(ip("10.5.0.2")));
        assert!(!s.contains("10.5.0.2"));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/resolv.conf");
        write_atomic(&p, "a\n").unwrap();
        write_atomic(&p, "b\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "b\n");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("resolv.conf")]);
    }

    #[test]
    fn unchanged_content_is_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        assert!(write_if_changed(&p, "a\n").unwrap());
        assert!(!write_if_changed(&p, "a\n").unwrap());
        assert!(write_if_changed(&p, "b\n").unwrap());
        assert_eq!(fs::read_to_string(&p).unwrap(), "b\n");
    }

    #[test]
    fn atomic_write_reports_the_path_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        fs::write(&file, "x").unwrap();
        let err = write_atomic(&file.join("resolv.conf"), "a").unwrap_err();
        assert!(err.to_string().contains("plain/resolv.conf"), "{err}");
    }
}
