//! `consul://` and `consuls://` URLs.

use crate::connect::redact;
use crate::{Error, Result};

/// The HTTP API's default port (`ports.http`).
pub(super) const HTTP_PORT: u16 = 8500;
/// The HTTPS API's conventional port (`ports.https`, off unless configured; 8501 by
/// convention, as in Consul's docs and Helm chart).
pub(super) const HTTPS_PORT: u16 = 8501;

const FORMS: &str = "consul://HOST[:PORT][?token=TOKEN&dc=DC] or consuls://HOST[:PORT][?ca=PATH&cert=PATH&key=PATH&token=TOKEN&dc=DC]";

/// Where the agent is and how to talk to it. Its `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub base: String,
    /// The host name, for TLS.
    pub host: String,
    pub tls: Option<Tls>,
    pub token: Option<String>,
    pub dc: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("base", &self.base)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "****"))
            .field("dc", &self.dc)
            .finish()
    }
}

/// `consuls://` files: a CA to trust instead of the system's, and a client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Tls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// Parse a store URL whose scheme is `consul` or `consuls`.
pub(super) fn parse_url(url: &str) -> Result<Target> {
    let shown = redact(url);
    let bad = |why: String| Error::Config(format!("{shown:?}: {why}; expected {FORMS}"));
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| bad("not a store URL".into()))?;
    let secure = if scheme.eq_ignore_ascii_case("consuls") {
        true
    } else if scheme.eq_ignore_ascii_case("consul") {
        false
    } else {
        return Err(bad(format!(
            "the scheme {scheme:?} is not consul or consuls"
        )));
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = before_query
        .strip_prefix("//")
        .ok_or_else(|| bad(format!("write {scheme}://HOST[:PORT]")))?;
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains('/') {
        return Err(bad(
            "a path is not supported: the election key is --key, not part of the URL".into(),
        ));
    }
    if authority.contains('@') {
        return Err(bad(
            "credentials before the host are not supported: give an ACL token as ?token=TOKEN (or CONSUL_HTTP_TOKEN to the baton command)".into(),
        ));
    }
    let (host, port) = split_host_port(authority).map_err(bad)?;
    let port = port.unwrap_or(if secure { HTTPS_PORT } else { HTTP_PORT });
    let mut target = Target {
        base: format!("{}://{host}:{port}", if secure { "https" } else { "http" }),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        tls: secure.then(Tls::default),
        token: None,
        dc: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).map_err(|e| bad(format!("option {name}: {e}")))?;
        if value.is_empty() {
            return Err(bad(format!("the option {name} has no value")));
        }
        match (name, target.tls.as_mut()) {
            ("token", _) => target.token = Some(value),
            ("dc", _) => {
                if !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(bad(format!("{value:?} is not a datacenter name")));
                }
                target.dc = Some(value);
            }
            ("ca", Some(tls)) => tls.ca = Some(value),
            ("cert", Some(tls)) => tls.cert = Some(value),
            ("key", Some(tls)) => tls.key = Some(value),
            ("ca" | "cert" | "key", None) => {
                return Err(bad(format!(
                    "{name}= is for TLS: write consuls:// to connect with TLS"
                )));
            }
            (other, _) => {
                return Err(bad(format!(
                    "unknown option {other:?} (known: token, dc{})",
                    if secure { ", ca, cert, key" } else { "" }
                )));
            }
        }
    }
    if let Some(tls) = &target.tls
        && tls.cert.is_some() != tls.key.is_some()
    {
        return Err(bad("a client certificate needs both cert= and key=".into()));
    }
    Ok(target)
}

/// `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT`.
fn split_host_port(authority: &str) -> std::result::Result<(String, Option<u16>), String> {
    if authority.is_empty() {
        return Err("no HOST".into());
    }
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => {
                let rest = &authority[end + 1..];
                let port = match rest.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if rest.is_empty() => None,
                    None => return Err(format!("{authority:?} is not HOST[:PORT]")),
                };
                (&authority[..=end], port)
            }
            None => return Err(format!("{authority:?} is not HOST[:PORT]")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no HOST".into());
    }
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("the port {p:?} is not a number from 1 to 65535"))?,
        ),
        None => None,
    };
    Ok((host.to_owned(), port))
}

/// Decode `%XX` escapes (and nothing else: `+` stays `+`).
fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a bad percent escape".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_owned())
}

/// Escape a KV key for a URL path: everything but unreserved characters and `/`.
pub(super) fn escape_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Escape a query value.
pub(super) fn escape_query(value: &str) -> String {
    escape_path(value).replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(url: &str) -> String {
        match parse_url(url) {
            Err(Error::Config(m)) => m,
            other => panic!("{url}: expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn plain_urls_default_to_port_8500() {
        let t = parse_url("consul://127.0.0.1").unwrap();
        assert_eq!(t.base, "http://127.0.0.1:8500");
        assert_eq!((t.tls, t.token, t.dc), (None, None, None));
        let t = parse_url("consul://agent.local:8600/?dc=eu-west_1&token=s%3Acret").unwrap();
        assert_eq!(t.base, "http://agent.local:8600");
        assert_eq!(t.token.as_deref(), Some("s:cret"));
        assert_eq!(t.dc.as_deref(), Some("eu-west_1"));
        let t = parse_url("CONSUL://[::1]:9").unwrap();
        assert_eq!(
            (t.base.as_str(), t.host.as_str()),
            ("http://[::1]:9", "::1")
        );
    }

    #[test]
    fn tls_urls_take_files_and_default_to_port_8501() {
        let t = parse_url("consuls://consul.service?ca=/ca.pem&cert=/c.pem&key=/k.pem").unwrap();
        assert_eq!(t.base, "https://consul.service:8501");
        assert_eq!(
            t.tls,
            Some(Tls {
                ca: Some("/ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            })
        );
        assert_eq!(
            parse_url("consuls://h:1").unwrap().tls,
            Some(Tls::default())
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong_and_never_show_the_token() {
        for (url, words) in [
            ("consul:", "write consul://HOST"),
            ("consul://", "no HOST"),
            ("consul://h:0", "not a number from 1 to 65535"),
            ("consul://h:x", "not a number"),
            ("consul://h/kv", "a path is not supported"),
            ("consul://u:p@h", "credentials"),
            ("consul://h?ca=/x", "write consuls://"),
            ("consul://h?bogus=1", "unknown option \"bogus\""),
            ("consul://h?token=", "has no value"),
            ("consul://h?dc=a/b", "not a datacenter"),
            ("consuls://h?cert=/c", "both cert= and key="),
            ("consul://h?token=hunter2&x=%zz", "bad percent escape"),
        ] {
            let message = config_error(url);
            assert!(message.contains(words), "{url}: {message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn the_target_debug_hides_the_token() {
        let t = parse_url("consul://h?token=hunter2").unwrap();
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("****"),
            "{shown}"
        );
    }

    #[test]
    fn keys_are_escaped_for_paths_and_queries() {
        assert_eq!(escape_path("svc/a b/.lock"), "svc/a%20b/.lock");
        assert_eq!(escape_query("a/b?c"), "a%2Fb%3Fc");
    }
}
