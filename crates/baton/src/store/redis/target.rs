//! From a URL and the builder's certificates to what a [`RedisStore`](super::RedisStore)
//! connects to.
//!
//! redis-rs parses single-server URLs itself; this module adds what it does not know: the
//! `redis+cluster://` and `redis+sentinel://` host lists, and the `ca=`, `cert=` and `key=`
//! options, which it strips before redis-rs sees the URL. Every error shows the URL with its
//! password redacted and says how to fix it.

use std::path::{Path, PathBuf};

use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion,
    RedisConnectionInfo, TlsCertificates,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result};

/// The URL forms, for error messages.
pub(super) const FORMS: &str = "redis://[user:password@]host[:port][/db], rediss://... (TLS), \
     redis+cluster://[user:password@]host:port[,host:port...] or \
     redis+sentinel://[user:password@]host:26379[,host:26379...]/MASTER_NAME[/db]";

const DEFAULT_PORT: u16 = 6379;
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// What the URL names.
pub(super) enum Kind {
    /// One server, or one name in front of several (a proxy, a managed endpoint that fails over
    /// behind its DNS name).
    Single(ConnectionInfo),
    /// Seed nodes of a Redis Cluster; the rest of the cluster is discovered from them.
    Cluster(Vec<ConnectionInfo>),
    /// The master that Sentinel names for `service`.
    Sentinel {
        /// How to reach each Sentinel (no credentials: those in the URL are the master's).
        sentinels: Vec<ConnectionInfo>,
        /// The master's name in Sentinel's configuration.
        service: String,
        /// Credentials, database and protocol for the master, wherever Sentinel says it is.
        master: RedisConnectionInfo,
    },
}

/// A parsed URL.
pub(super) struct Target {
    pub kind: Kind,
    /// Whether every connection uses TLS (`rediss`, `rediss+cluster`, `rediss+sentinel`).
    pub tls: bool,
    /// Certificate files named by `ca=`, `cert=` and `key=`.
    pub files: TlsFiles,
    /// `host:port`, or a comma-separated list of them, for error messages.
    pub address: String,
}

/// Certificate files named in the URL's query.
#[derive(Debug, Default)]
pub(super) struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Single,
    Cluster,
    Sentinel,
}

/// Parse a store URL. `location` is the URL with its password redacted.
pub(super) fn parse(url: &str, location: &str) -> Result<Target> {
    let invalid = |why: &str| {
        Error::Config(format!(
            "invalid Redis URL {location}: {why}; expected {FORMS}"
        ))
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid("no scheme"));
    };
    let scheme = scheme.to_ascii_lowercase();
    let (tls, family) = match scheme.as_str() {
        "redis" => (false, Family::Single),
        "rediss" => (true, Family::Single),
        "redis+cluster" => (false, Family::Cluster),
        "rediss+cluster" => (true, Family::Cluster),
        "redis+sentinel" => (false, Family::Sentinel),
        "rediss+sentinel" => (true, Family::Sentinel),
        _ => return Err(invalid(&format!("unknown scheme {scheme:?}"))),
    };
    if rest.contains('#') {
        return Err(Error::Config(format!(
            "the Redis URL {location} has a fragment (such as #insecure): Baton always checks the \
             server's certificate; pass the CA that signed it instead, with ?ca=/path/to/ca.pem"
        )));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, query),
        None => (rest, ""),
    };
    let files = parse_query(query, tls, location)?;
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, path),
        None => (rest, ""),
    };
    let base = if tls { "rediss" } else { "redis" };

    if family == Family::Single {
        let info = format!("{base}://{rest}")
            .into_connection_info()
            .map_err(|e| invalid(&e.to_string()))?;
        let address = match info.addr() {
            ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
            other => other.to_string(),
        };
        let settings = resp3(info.redis_settings());
        return Ok(Target {
            kind: Kind::Single(info.set_redis_settings(settings)),
            tls,
            files,
            address,
        });
    }

    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let default_port = match family {
        Family::Sentinel => DEFAULT_SENTINEL_PORT,
        _ => DEFAULT_PORT,
    };
    let nodes = parse_hosts(hosts, default_port).map_err(|why| invalid(&why))?;
    let address = nodes
        .iter()
        .map(|(host, port)| format!("{}:{port}", bracketed(host)))
        .collect::<Vec<_>>()
        .join(",");
    let credentials = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let node_info = |credentials: &str, (host, port): &(String, u16), db: &str| {
        format!("{base}://{credentials}{}:{port}/{db}", bracketed(host))
            .into_connection_info()
            .map_err(|e| invalid(&e.to_string()))
    };

    let kind = if family == Family::Cluster {
        if !matches!(path, "" | "0") {
            return Err(Error::Config(format!(
                "the Redis URL {location} names database /{path}, but Redis Cluster has only \
                 database 0: drop the path"
            )));
        }
        let nodes = nodes
            .iter()
            .map(|node| {
                let info = node_info(&credentials, node, "")?;
                let settings = resp3(info.redis_settings());
                Ok(info.set_redis_settings(settings))
            })
            .collect::<Result<Vec<_>>>()?;
        Kind::Cluster(nodes)
    } else {
        let (service, db) = match path.split_once('/') {
            Some((service, db)) => (service, db.trim_end_matches('/')),
            None => (path, ""),
        };
        if service.is_empty() {
            return Err(Error::Config(format!(
                "the Redis URL {location} names no master: write \
                 redis+sentinel://host:26379/MASTER_NAME, with the name from sentinel.conf \
                 (`sentinel monitor MASTER_NAME ...`)"
            )));
        }
        let service = percent_decode(service);
        // The credentials and database are the master's; redis-rs parses them for us from a URL
        // on any host.
        let master = resp3(node_info(&credentials, &nodes[0], db)?.redis_settings());
        let sentinels = nodes
            .iter()
            .map(|node| node_info("", node, ""))
            .collect::<Result<Vec<_>>>()?;
        Kind::Sentinel {
            sentinels,
            service,
            master,
        }
    };
    Ok(Target {
        kind,
        tls,
        files,
        address,
    })
}

/// RESP3 carries push messages on the same multiplexed connection as commands.
fn resp3(settings: &RedisConnectionInfo) -> RedisConnectionInfo {
    settings.clone().set_protocol(ProtocolVersion::RESP3)
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `host[:port],host[:port],...`; IPv6 addresses in brackets.
fn parse_hosts(hosts: &str, default_port: u16) -> std::result::Result<Vec<(String, u16)>, String> {
    let mut nodes = Vec::new();
    for entry in hosts.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(format!("empty host in the host list {hosts:?}"));
        }
        let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(format!("unclosed '[' in {entry:?}"));
            };
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("unexpected {after:?} after [{host}]")),
                },
            }
        } else {
            match entry.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(format!(
                        "{entry:?} is ambiguous: write IPv6 addresses in brackets, [::1]:6379"
                    ));
                }
                Some((host, port)) => (host, Some(port)),
                None => (entry, None),
            }
        };
        let port = match port {
            None => default_port,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("bad port {port:?} in {entry:?}"))?,
        };
        nodes.push((host.to_owned(), port));
    }
    Ok(nodes)
}

/// The URL's own options: `ca`, `cert` and `key` (file paths). `protocol` is accepted only as
/// RESP3, which Baton always speaks.
fn parse_query(query: &str, tls: bool, location: &str) -> Result<TlsFiles> {
    let mut files = TlsFiles::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        let slot = match name {
            "ca" => &mut files.ca,
            "cert" => &mut files.cert,
            "key" => &mut files.key,
            "protocol" if matches!(value.as_str(), "3" | "resp3") => continue,
            "protocol" => {
                return Err(Error::Config(format!(
                    "the Redis URL {location} asks for protocol={value}, but Baton speaks RESP3 \
                     (it carries the push messages of the handoff): drop protocol= from the URL"
                )));
            }
            _ => {
                return Err(Error::Config(format!(
                    "unknown option {name:?} in the Redis URL {location}: the options are \
                     ca=, cert= and key=, paths of PEM files for TLS"
                )));
            }
        };
        if value.is_empty() {
            return Err(Error::Config(format!(
                "{name}= in the Redis URL {location} is empty: give the path of a PEM file"
            )));
        }
        if slot.replace(PathBuf::from(value)).is_some() {
            return Err(Error::Config(format!(
                "{name}= appears twice in the Redis URL {location}: give it once"
            )));
        }
    }
    let any = files.ca.is_some() || files.cert.is_some() || files.key.is_some();
    if any && !tls {
        return Err(Error::Config(format!(
            "ca=, cert= and key= configure TLS, but {location} does not use it: write rediss:// \
             (or rediss+cluster://, rediss+sentinel://)"
        )));
    }
    Ok(files)
}

/// `%XX` escapes in a URL component (paths with spaces, master names with odd characters).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Certificates for TLS, from the builder or from the URL's files (the builder's win). `None`
/// when neither gives any: the system's trust store, no client certificate.
pub(super) fn certificates(
    tls: bool,
    files: &TlsFiles,
    ca_pem: Option<Vec<u8>>,
    client_pem: Option<(Vec<u8>, Vec<u8>)>,
    location: &str,
) -> Result<Option<TlsCertificates>> {
    let ca = match (ca_pem, &files.ca) {
        (Some(pem), _) => Some(check_certificates(
            pem,
            "the CA certificate given to RedisStoreBuilder::ca_cert_pem",
        )?),
        (None, Some(path)) => {
            let pem = read(path, "CA certificate", "ca")?;
            Some(check_certificates(
                pem,
                &format!("the CA certificate file {} (ca=)", path.display()),
            )?)
        }
        (None, None) => None,
    };
    let client = match (client_pem, &files.cert, &files.key) {
        (Some((cert, key)), _, _) => Some((
            check_certificates(
                cert,
                "the client certificate given to RedisStoreBuilder::client_cert_pem",
            )?,
            check_private_key(
                key,
                "the client key given to RedisStoreBuilder::client_cert_pem",
            )?,
        )),
        (None, Some(cert), Some(key)) => Some((
            check_certificates(
                read(cert, "client certificate", "cert")?,
                &format!("the client certificate file {} (cert=)", cert.display()),
            )?,
            check_private_key(
                read(key, "client key", "key")?,
                &format!("the client key file {} (key=)", key.display()),
            )?,
        )),
        (None, None, None) => None,
        (None, _, _) => {
            return Err(Error::Config(format!(
                "the Redis URL {location} has only one of cert= and key=: a client certificate \
                 needs both, cert=/path/client.pem&key=/path/client.key"
            )));
        }
    };
    if ca.is_none() && client.is_none() {
        return Ok(None);
    }
    if !tls {
        return Err(Error::Config(format!(
            "a CA or client certificate was given for {location}, which does not use TLS: write \
             rediss:// (or rediss+cluster://, rediss+sentinel://)"
        )));
    }
    Ok(Some(TlsCertificates {
        client_tls: client.map(|(client_cert, client_key)| ClientTlsConfig {
            client_cert,
            client_key,
        }),
        root_cert: ca,
    }))
}

fn read(path: &Path, what: &str, option: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the {what} file {} ({option}= in the Redis URL): {e}; check the path and \
             that this user may read it",
            path.display()
        ))
    })
}

/// At least one certificate, all of them valid PEM.
fn check_certificates(pem: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    let count = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Config(format!(
                "{what} is not valid PEM ({e}): expected -----BEGIN CERTIFICATE----- blocks"
            ))
        })?
        .len();
    if count == 0 {
        return Err(Error::Config(format!(
            "{what} holds no certificate: expected PEM with -----BEGIN CERTIFICATE-----"
        )));
    }
    Ok(pem)
}

fn check_private_key(pem: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Error::Config(format!(
            "{what} holds no private key ({e}): expected PEM with -----BEGIN PRIVATE KEY----- \
             (or RSA PRIVATE KEY, EC PRIVATE KEY)"
        ))
    })?;
    Ok(pem)
}

/// redis-rs builds its TLS configuration with rustls's process-wide crypto provider. Install
/// ring's when the application has not installed one; an application that has keeps its own.
pub(super) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only when another thread installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::redact;

    fn config_error(url: &str) -> String {
        match parse(url, &redact(url)) {
            Err(Error::Config(msg)) => msg,
            Err(other) => panic!("{url}: expected a config error, got {other}"),
            Ok(_) => panic!("{url}: expected an error"),
        }
    }

    #[test]
    fn single_server_urls() {
        let t = parse("redis://u:p@h:7000/3", "").unwrap();
        assert!(!t.tls);
        assert_eq!(t.address, "h:7000");
        let Kind::Single(info) = t.kind else {
            panic!("single")
        };
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().password(), Some("p"));
        assert_eq!(info.redis_settings().protocol(), ProtocolVersion::RESP3);

        let t = parse("REDISS://h/?ca=/tmp/ca%20x.pem&protocol=resp3", "").unwrap();
        assert!(t.tls);
        assert_eq!(t.address, "h:6379");
        assert_eq!(t.files.ca.as_deref(), Some(Path::new("/tmp/ca x.pem")));
    }

    #[test]
    fn cluster_urls() {
        let t = parse("redis+cluster://:pw@a:7000,b,[::1]:7002", "").unwrap();
        assert_eq!(t.address, "a:7000,b:6379,[::1]:7002");
        let Kind::Cluster(nodes) = t.kind else {
            panic!("cluster")
        };
        assert_eq!(nodes.len(), 3);
        assert!(
            nodes
                .iter()
                .all(|n| n.redis_settings().password() == Some("pw"))
        );
        assert!(matches!(nodes[2].addr(), ConnectionAddr::Tcp(h, 7002) if h == "::1"));
        assert!(parse("rediss+cluster://a:1,b:2/0", "").unwrap().tls);
        assert!(config_error("redis+cluster://a:1,b:2/3").contains("only database 0"));
        assert!(config_error("redis+cluster://a:1,,b:2").contains("empty host"));
        assert!(config_error("redis+cluster://a:x").contains("bad port"));
        assert!(config_error("redis+cluster://::1:7000").contains("brackets"));
    }

    #[test]
    fn sentinel_urls() {
        let t = parse("redis+sentinel://u:s3cret@s1,s2:26380/my%20master/2", "").unwrap();
        assert_eq!(t.address, "s1:26379,s2:26380");
        let Kind::Sentinel {
            sentinels,
            service,
            master,
        } = t.kind
        else {
            panic!("sentinel")
        };
        assert_eq!(service, "my master");
        assert_eq!(master.db(), 2);
        assert_eq!(master.username(), Some("u"));
        assert_eq!(master.password(), Some("s3cret"));
        assert!(
            sentinels
                .iter()
                .all(|s| s.redis_settings().password().is_none())
        );
        let msg = config_error("redis+sentinel://u:s3cret@s1");
        assert!(msg.contains("names no master"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn options_and_fragments() {
        assert!(config_error("redis://h/?ca=/x.pem").contains("rediss://"));
        assert!(config_error("rediss://h/?cacert=/x.pem").contains("unknown option"));
        assert!(config_error("rediss://h/?ca=").contains("empty"));
        assert!(config_error("rediss://h/?ca=/a&ca=/b").contains("twice"));
        assert!(config_error("redis://h/?protocol=2").contains("RESP3"));
        assert!(config_error("rediss://h/#insecure").contains("?ca="));
        assert!(config_error("redis+pool://h").contains("unknown scheme"));
    }

    #[test]
    fn certificate_files_name_the_file_and_the_fix() {
        let files = TlsFiles {
            ca: Some("/nonexistent/baton-ca.pem".into()),
            ..TlsFiles::default()
        };
        let msg = certificates(true, &files, None, None, "rediss://h")
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("/nonexistent/baton-ca.pem"), "{msg}");
        assert!(msg.contains("ca="), "{msg}");

        let files = TlsFiles {
            cert: Some("/x.pem".into()),
            ..TlsFiles::default()
        };
        let msg = certificates(true, &files, None, None, "rediss://h")
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("cert= and key="), "{msg}");

        let msg = certificates(
            true,
            &TlsFiles::default(),
            Some(b"not pem".to_vec()),
            None,
            "rediss://h",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(msg.contains("holds no certificate"), "{msg}");
        assert!(
            certificates(true, &TlsFiles::default(), None, None, "rediss://h")
                .unwrap()
                .is_none()
        );
    }
}
