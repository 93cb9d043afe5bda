//! `kubernetes:` and `kubernetes+http://` URLs, and the names the API server accepts.

use crate::connect::redact;
use crate::{Error, Result};

/// Where the API server is, and which namespace holds the election's Leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// `kubernetes:`: in a pod, the in-cluster configuration (the service account's token and
    /// CA, `KUBERNETES_SERVICE_HOST`/`PORT`); elsewhere, or with `context=` or `kubeconfig=`,
    /// the kubeconfig.
    Infer {
        namespace: Option<String>,
        context: Option<String>,
        kubeconfig: Option<String>,
    },
    /// `kubernetes+http://HOST:PORT`: a plain-HTTP API server, such as `kubectl proxy`.
    Http {
        base: String,
        namespace: Option<String>,
    },
}

const FORMS: &str = "kubernetes:[?namespace=NS&context=CTX&kubeconfig=PATH] or kubernetes+http://HOST:PORT[?namespace=NS]";

/// Parse a store URL whose scheme is `kubernetes` or `kubernetes+http`.
pub(super) fn parse_url(url: &str) -> Result<Target> {
    let shown = redact(url);
    let bad = |why: String| Error::Config(format!("{shown:?}: {why}; expected {FORMS}"));
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| bad("not a store URL".into()))?;
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, q),
        None => (rest, ""),
    };
    let mut namespace = None;
    let mut context = None;
    let mut kubeconfig = None;
    let http = scheme.eq_ignore_ascii_case("kubernetes+http");
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value).map_err(|e| bad(format!("option {name}: {e}")))?;
        if value.is_empty() {
            return Err(bad(format!("the option {name} has no value")));
        }
        match name {
            "namespace" => {
                check_label(&value).map_err(|why| {
                    bad(format!(
                        "the namespace {value:?} is not a valid namespace name: {why}"
                    ))
                })?;
                namespace = Some(value);
            }
            "context" if !http => context = Some(value),
            "kubeconfig" if !http => kubeconfig = Some(value),
            "context" | "kubeconfig" => {
                return Err(bad(format!(
                    "{name}= belongs to kubernetes: URLs (a kubeconfig); a kubernetes+http:// URL names its server itself"
                )));
            }
            other => {
                return Err(bad(format!(
                    "unknown option {other:?} (known: namespace{})",
                    if http { "" } else { ", context, kubeconfig" }
                )));
            }
        }
    }
    if http {
        let authority = before_query
            .strip_prefix("//")
            .ok_or_else(|| bad("write kubernetes+http://HOST:PORT".into()))?;
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.is_empty() {
            return Err(bad("no HOST:PORT".into()));
        }
        if authority.contains('/') {
            return Err(bad(
                "a path is not supported: the API server's root is the URL".into(),
            ));
        }
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not supported: use a kubeconfig (kubernetes:?kubeconfig=PATH) for a server that needs them".into(),
            ));
        }
        Ok(Target::Http {
            base: format!("http://{authority}"),
            namespace,
        })
    } else {
        let location = before_query.strip_prefix("//").unwrap_or(before_query);
        if !location.trim_matches('/').is_empty() {
            return Err(bad(
                "kubernetes: takes no host (it uses the in-cluster configuration or the kubeconfig); for a plain-HTTP server write kubernetes+http://HOST:PORT".into(),
            ));
        }
        Ok(Target::Infer {
            namespace,
            context,
            kubeconfig,
        })
    }
}

/// Decode `%XX` escapes (and nothing else: `+` stays `+`). The errors do not repeat `s`: the
/// caller names the option and shows the URL redacted, and `s` may be a secret.
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

/// The rule for a Lease's name: a DNS-1123 subdomain (the API server's
/// `ValidateObjectMeta` with `NameIsDNSSubdomain`), at most 253 characters of lowercase
/// letters, digits, `-` and `.`, each dot-separated part starting and ending with a letter or
/// digit.
pub(super) fn check_name(key: &str) -> Result<()> {
    check_subdomain(key).map_err(|why| {
        Error::Config(format!(
            "the election key {key:?} cannot be a Kubernetes Lease name: {why}; use lowercase letters, digits, '-' and '.', e.g. \"my-service-leader\""
        ))
    })
}

fn check_subdomain(s: &str) -> std::result::Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > 253 {
        return Err(format!(
            "it is {} characters long, at most 253 are allowed",
            s.len()
        ));
    }
    for part in s.split('.') {
        check_part(part)?;
    }
    Ok(())
}

/// A DNS-1123 label: a namespace's name (at most 63 characters, no dots).
fn check_label(s: &str) -> std::result::Result<(), String> {
    if s.len() > 63 {
        return Err(format!(
            "it is {} characters long, at most 63 are allowed",
            s.len()
        ));
    }
    check_part(s)
}

fn check_part(part: &str) -> std::result::Result<(), String> {
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(if c.is_ascii_uppercase() {
            format!("it has an upper-case letter ({c:?})")
        } else {
            format!("it has the character {c:?}")
        });
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(part.chars().next()) || !edge_ok(part.chars().last()) {
        return Err(if part.is_empty() {
            "it has an empty part between dots".into()
        } else {
            format!("{part:?} must start and end with a letter or digit")
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        parse_url(url).unwrap_err().to_string()
    }

    #[test]
    fn forms() {
        assert_eq!(
            parse_url("kubernetes:").unwrap(),
            Target::Infer {
                namespace: None,
                context: None,
                kubeconfig: None
            }
        );
        assert_eq!(
            parse_url("kubernetes://").unwrap(),
            parse_url("kubernetes:").unwrap()
        );
        assert_eq!(
            parse_url("kubernetes:?namespace=jobs&context=prod&kubeconfig=/tmp/k%20c").unwrap(),
            Target::Infer {
                namespace: Some("jobs".into()),
                context: Some("prod".into()),
                kubeconfig: Some("/tmp/k c".into()),
            }
        );
        assert_eq!(
            parse_url("kubernetes+http://127.0.0.1:8001?namespace=x").unwrap(),
            Target::Http {
                base: "http://127.0.0.1:8001".into(),
                namespace: Some("x".into())
            }
        );
        assert_eq!(
            parse_url("kubernetes+http://localhost:8001/").unwrap(),
            Target::Http {
                base: "http://localhost:8001".into(),
                namespace: None
            }
        );
    }

    #[test]
    fn mistakes_say_what_is_wrong() {
        assert!(err("kubernetes://cluster.example:6443").contains("takes no host"));
        assert!(err("kubernetes:?namespace=Prod").contains("upper-case"));
        assert!(err("kubernetes:?ns=x").contains("unknown option \"ns\""));
        assert!(err("kubernetes:?namespace=").contains("no value"));
        assert!(err("kubernetes+http://h:1/api").contains("path"));
        assert!(err("kubernetes+http:h").contains("kubernetes+http://HOST:PORT"));
        assert!(err("kubernetes+http://h:1?context=x").contains("belongs to kubernetes:"));
        let msg = err("kubernetes+http://u:hunter2@h:1");
        assert!(msg.contains("credentials"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn lease_names() {
        for ok in ["a", "my-job", "my.job-1", "0abc", &"a".repeat(253)] {
            check_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("", "empty"),
            ("My-Job", "upper-case"),
            ("my_job", "'_'"),
            ("-job", "start and end"),
            ("job.", "empty part"),
            ("a/b", "'/'"),
        ] {
            let msg = check_name(bad).unwrap_err().to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(msg.contains("Lease name"), "{msg}");
        }
        assert!(
            check_name(&"a".repeat(254))
                .unwrap_err()
                .to_string()
                .contains("254")
        );
    }
}
