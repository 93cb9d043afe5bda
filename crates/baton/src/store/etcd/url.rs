//! The `etcd://` and `etcds://` URLs (the table in the [store's docs](super)).

use crate::{Error, Result};

/// The default client port of etcd.
const DEFAULT_PORT: u16 = 2379;

/// What an `etcd://` URL names.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub tls: bool,
    /// `host:port`, IPv6 hosts in brackets.
    pub hosts: Vec<String>,
    /// The user name and password, percent-decoded.
    pub user: Option<(String, String)>,
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// Parse `url`; errors name it as `location` (the URL with its password redacted).
pub(super) fn parse_url(url: &str, location: &str) -> Result<Target> {
    let usage = "expected etcd://[user:password@]host[:port][,host[:port]...] or etcds://...";
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::Config(format!("{location:?} is not an etcd URL: {usage}")))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "etcd" => false,
        "etcds" => true,
        other => {
            return Err(Error::Config(format!(
                "{location:?}: the scheme {other:?} is not etcd's: {usage}"
            )));
        }
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !path.trim_matches('/').is_empty() {
        return Err(Error::Config(format!(
            "{location:?}: an etcd URL has no path (the election name is the key): {usage}"
        )));
    }
    let (user, hosts) = match authority.rfind('@') {
        Some(at) => {
            let (name, password) = authority[..at]
                .split_once(':')
                .unwrap_or((&authority[..at], ""));
            (
                Some((percent_decode(name), percent_decode(password))),
                &authority[at + 1..],
            )
        }
        None => (None, authority),
    };
    let mut parsed = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        if host.is_empty() {
            return Err(Error::Config(format!(
                "{location:?} names no host: {usage}"
            )));
        }
        let has_port = match host.rfind(':') {
            Some(i) => !host[i..].contains(']'),
            None => false,
        };
        if has_port {
            let port = &host[host.rfind(':').unwrap_or(0) + 1..];
            if port.parse::<u16>().is_err() {
                return Err(Error::Config(format!(
                    "{location:?}: {port:?} is not a port number"
                )));
            }
            parsed.push(host.to_owned());
        } else {
            parsed.push(format!("{host}:{DEFAULT_PORT}"));
        }
    }
    let mut target = Target {
        tls,
        hosts: parsed,
        user,
        ca: None,
        cert: None,
        key: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match name {
            "ca" => &mut target.ca,
            "cert" => &mut target.cert,
            "key" => &mut target.key,
            other => {
                return Err(Error::Config(format!(
                    "{location:?}: unknown option {other:?}; etcd URLs take ca=, cert= and key= (with etcds://)"
                )));
            }
        };
        *slot = Some(percent_decode(value));
    }
    if !tls && (target.ca.is_some() || target.cert.is_some() || target.key.is_some()) {
        return Err(Error::Config(format!(
            "{location:?}: ca=, cert= and key= need TLS: write etcds://"
        )));
    }
    Ok(target)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::redact;

    fn parse(url: &str) -> Result<Target> {
        parse_url(url, &redact(url))
    }

    #[test]
    fn urls() {
        let t = parse("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(t.hosts, ["127.0.0.1:2379"]);
        assert!(!t.tls && t.user.is_none());
        let t = parse("etcd://app:p%40ss@a,b:1234,[::1]:5,[::1]").unwrap();
        assert_eq!(t.hosts, ["a:2379", "b:1234", "[::1]:5", "[::1]:2379"]);
        assert_eq!(t.user, Some(("app".into(), "p@ss".into())));
        let t = parse("etcds://h/?ca=/x/ca.pem&cert=/c&key=/k").unwrap();
        assert!(t.tls);
        assert_eq!(t.ca.as_deref(), Some("/x/ca.pem"));
        for bad in [
            "etcd://",
            "etcd://h:port",
            "etcd://h/name",
            "etcd://h?ca=/x",
            "etcds://h?colour=red",
            "etcd:h",
        ] {
            assert!(matches!(parse(bad), Err(Error::Config(_))), "{bad}");
        }
    }
}
