//! Opening a store from a URL: the factory behind the CLI's `--store URL`.
//!
//! The CLI picks its store at run time, so it needs one function that turns a string into an
//! `Arc<dyn LeaseStore>`, with errors a user can act on. That function is [`store_from_url`].
//! [`redact`] hides passwords in URLs, so that no error, log line or banner ever shows one.
//!
//! | URL | store | built when |
//! |---|---|---|
//! | `memory:` | [`MemoryStore`]: in this process only | always |
//! | `sqlite:PATH`, `sqlite://PATH`, `sqlite:///abs/path` | `SqliteStore`: one file shared by the processes of one machine | feature `sqlite` |
//! | `redis://`, `rediss://`, `redis+cluster://`, `redis+sentinel://` (and `rediss+...`) | `RedisStore`: one server, TLS, a Redis Cluster, Sentinel's master | feature `redis` |
//! | `etcd://`, `etcds://` | `EtcdStore`: an etcd cluster, speaking `concurrency.Election` (`etcdctl elect`) | feature `etcd` |
//! | `postgres://`, `postgresql://` | `PostgresStore`: a lease table, `LISTEN`/`NOTIFY` push | feature `postgres` |
//! | `mysql://`, `mariadb://` | `MysqlStore`: a lease table, push through a named lock per term | feature `mysql` |
//! | `kubernetes:`, `kubernetes+http://` | `KubernetesStore`: Lease objects, compatible with client-go's `LeaseLock` | feature `kubernetes` |
//! | `consul://`, `consuls://` | `ConsulStore`: a session per candidate and a KV lock, compatible with `consul lock` | feature `consul` |
//!
//! [`STORE_KINDS`] is that table as data, and the only list of schemes: [`store_from_url`]
//! picks the store from it, and [`supported_schemes`] (the CLI's `--store` help, the error
//! for an unknown scheme) and [`planned_schemes`] describe it, so none of them can leave a
//! scheme out when a store is added.
//!
//! Like the rest of the library, this module never reads the environment and never prints.

use std::sync::Arc;

use crate::{Error, LeaseStore, MemoryStore, Result};

/// A kind of store, as store URLs name it: one row of the table in the [module
/// documentation](self).
#[derive(Debug, Clone, Copy)]
pub struct StoreKind {
    /// The store's name, as [`StoreInfo::name`](crate::StoreInfo::name) reports it:
    /// `"sqlite"`, `"redis"`, ...
    pub name: &'static str,
    /// The URL schemes that open it, lowercase and without the `:`; the first is the main one.
    pub schemes: &'static [&'static str],
    /// The shape of its URL, for help texts: `sqlite:PATH`, `redis://HOST[:PORT]`.
    pub form: &'static str,
    /// Whether this build can open it.
    pub status: Status,
    /// Opens a URL of one of `schemes` (`rest` is what follows `scheme:`).
    open: fn(url: &str, rest: &str) -> Result<Arc<dyn LeaseStore>>,
}

/// Whether a [`StoreKind`] can be opened by this build. More states may be added in minor
/// releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Built into this binary.
    Built,
    /// Built by Baton, but not into this binary: it needs this cargo feature of the
    /// `baton-election` package.
    NeedsFeature(&'static str),
    /// Designed (DESIGN.md §4) but not built yet.
    Planned,
}

/// `Built` when `on` (a `cfg!(feature = ...)`), else the feature it needs.
const fn feature(on: bool, name: &'static str) -> Status {
    if on {
        Status::Built
    } else {
        Status::NeedsFeature(name)
    }
}

/// Every kind of store a URL can name, built or not, in the order help texts list them: the
/// embedded default first, `memory:` (for trying things out) after the real stores, the
/// planned ones last.
pub const STORE_KINDS: &[StoreKind] = &[
    StoreKind {
        name: "sqlite",
        schemes: &["sqlite"],
        form: "sqlite:PATH",
        status: feature(cfg!(feature = "sqlite"), "sqlite"),
        open: open_sqlite,
    },
    StoreKind {
        name: "redis",
        schemes: &[
            "redis",
            "rediss",
            "redis+cluster",
            "rediss+cluster",
            "redis+sentinel",
            "rediss+sentinel",
        ],
        form: "redis://HOST[:PORT]",
        status: feature(cfg!(feature = "redis"), "redis"),
        open: open_redis,
    },
    StoreKind {
        name: "postgres",
        schemes: &["postgres", "postgresql"],
        form: "postgres://USER@HOST/DB",
        status: feature(cfg!(feature = "postgres"), "postgres"),
        open: open_postgres,
    },
    StoreKind {
        name: "mysql",
        schemes: &["mysql", "mariadb"],
        form: "mysql://USER@HOST/DB",
        status: feature(cfg!(feature = "mysql"), "mysql"),
        open: open_mysql,
    },
    StoreKind {
        name: "etcd",
        schemes: &["etcd", "etcds"],
        form: "etcd://HOST[:PORT]",
        status: feature(cfg!(feature = "etcd"), "etcd"),
        open: open_etcd,
    },
    StoreKind {
        name: "kubernetes",
        schemes: &["kubernetes", "kubernetes+http"],
        form: "kubernetes:[?namespace=NS]",
        status: feature(cfg!(feature = "kubernetes"), "kubernetes"),
        open: open_kubernetes,
    },
    StoreKind {
        name: "consul",
        schemes: &["consul", "consuls"],
        form: "consul://HOST[:PORT]",
        status: feature(cfg!(feature = "consul"), "consul"),
        open: open_consul,
    },
    StoreKind {
        name: "memory",
        schemes: &["memory"],
        form: "memory:",
        status: Status::Built,
        open: open_memory,
    },
];

impl StoreKind {
    /// The kind a scheme (any case, without the `:`) names, if any.
    pub fn of_scheme(scheme: &str) -> Option<&'static StoreKind> {
        STORE_KINDS
            .iter()
            .find(|k| k.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)))
    }

    /// `form`, followed by the other schemes: `redis://HOST[:PORT] (also rediss://, ...)`.
    fn describe(&self) -> String {
        let others: Vec<String> = self.schemes[1..]
            .iter()
            .map(|s| format!("{s}://"))
            .collect();
        if others.is_empty() {
            self.form.to_owned()
        } else {
            format!("{} (also {})", self.form, others.join(", "))
        }
    }
}

/// The URLs this build can open, for help texts and errors: every scheme of every built store,
/// in [`STORE_KINDS`] order, e.g. `sqlite:PATH, redis://HOST[:PORT] (also rediss://, ...), ...
/// or memory:`.
///
/// ```
/// let text = baton::connect::supported_schemes();
/// assert!(text.starts_with("sqlite:PATH") && text.ends_with("or memory:"));
/// ```
pub fn supported_schemes() -> String {
    let built: Vec<String> = STORE_KINDS
        .iter()
        .filter(|k| k.status == Status::Built)
        .map(StoreKind::describe)
        .collect();
    match built.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The stores that are planned but not built yet, by name (none at the moment).
pub fn planned_schemes() -> String {
    STORE_KINDS
        .iter()
        .filter(|k| k.status == Status::Planned)
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Query parameter names whose values are secrets.
const SECRET_PARAMS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "pwd",
    "secret",
    "token",
    "auth",
    "access_token",
    "api_key",
    "apikey",
];

/// Open the store a URL names, by its scheme in [`STORE_KINDS`].
///
/// * `memory:` is an in-process [`MemoryStore`]: useful to try things out, but every process
///   gets its own, so it elects nothing across processes.
/// * `sqlite:PATH` (also `sqlite://PATH` and `sqlite:///abs/path`) opens or creates the SQLite
///   file at `PATH`. Its directory must exist. Needs the `sqlite` feature.
/// * `redis://`, `rediss://`, `redis+cluster://`, `redis+sentinel://` (and `rediss+cluster://`,
///   `rediss+sentinel://`) open a `RedisStore`; see `baton::store::redis` for the forms and
///   their options. Needs the `redis` feature, and a tokio runtime to be running.
/// * `postgres://`, `postgresql://` and `mysql://`, `mariadb://` open the SQL stores (features
///   `postgres`, `mysql`; see `baton::store::sql`), `etcd://`, `etcds://` the etcd store
///   (feature `etcd`). They too need a tokio runtime.
///
/// Synchronous: opening a store only parses and, for SQLite, opens a local file; for the
/// others it reads the certificate files the URL names, and connects on first use.
///
/// # Errors
///
/// [`Error::Config`] for a malformed URL, an unknown scheme (the message lists the supported
/// and the planned schemes), a store not built into this binary, or a SQLite path whose
/// directory does not exist; whatever the store's own `open` returns otherwise. Messages show
/// the URL with any password redacted.
///
/// ```
/// let store = baton::connect::store_from_url("memory:").unwrap();
/// assert_eq!(store.info().name, "memory");
///
/// let err = baton::connect::store_from_url("zookeeper://zk:2181").unwrap_err();
/// assert!(err.to_string().contains("unknown store scheme"));
/// ```
pub fn store_from_url(url: &str) -> Result<Arc<dyn LeaseStore>> {
    let url = url.trim();
    let (scheme, rest) = split_scheme(url)?;
    match StoreKind::of_scheme(&scheme) {
        Some(kind) => (kind.open)(url, rest),
        None => {
            let planned = planned_schemes();
            Err(Error::Config(format!(
                "unknown store scheme {scheme:?} in {:?}: supported now: {}{}",
                redact(url),
                supported_schemes(),
                if planned.is_empty() {
                    String::new()
                } else {
                    format!("; planned: {planned}")
                },
            )))
        }
    }
}

fn open_memory(url: &str, rest: &str) -> Result<Arc<dyn LeaseStore>> {
    if !rest.trim_start_matches('/').is_empty() {
        return Err(Error::Config(format!(
            "the memory store takes no location, got {:?}: use \"memory:\"",
            redact(url)
        )));
    }
    Ok(Arc::new(MemoryStore::new()))
}

// No store is planned at the moment; the next one (NATS KV, ZooKeeper) opens with this.
#[allow(dead_code)]
fn open_planned(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    let family = split_scheme(url)
        .ok()
        .and_then(|(scheme, _)| StoreKind::of_scheme(&scheme))
        .map_or("this", |k| k.name);
    Err(Error::Config(format!(
        "the {family} store ({}) is planned but not built yet; stores available now: {}",
        redact(url),
        supported_schemes(),
    )))
}

/// Split `scheme:rest`, checking the scheme's syntax (RFC 3986: a letter, then letters, digits,
/// `+`, `-` or `.`). The scheme is lowercased.
fn split_scheme(url: &str) -> Result<(String, &str)> {
    let example = "e.g. sqlite:/path/to/baton.db or memory:";
    if url.is_empty() {
        return Err(Error::Config(format!(
            "the store URL is empty: pass one, {example}"
        )));
    }
    let Some((scheme, rest)) = url.split_once(':') else {
        let hint = if url.ends_with(".db") || url.ends_with(".sqlite") || url.contains('/') {
            format!("; for a SQLite file write sqlite:{url}")
        } else {
            String::new()
        };
        return Err(Error::Config(format!(
            "{:?} is not a store URL: expected SCHEME:LOCATION, {example}{hint}",
            redact(url)
        )));
    };
    let valid = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err(Error::Config(format!(
            "{:?} is not a store URL: the scheme {scheme:?} is not valid; expected SCHEME:LOCATION, {example}",
            redact(url)
        )));
    }
    Ok((scheme.to_ascii_lowercase(), rest))
}

/// The file path of a `sqlite:` URL (`rest` is what follows `sqlite:`).
///
/// `sqlite:PATH` is taken literally. With `//`, the rest is the path, as sqlx and SQLAlchemy
/// read it: `sqlite://rel.db` is relative, `sqlite:///abs/path` absolute.
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
fn sqlite_path(url: &str, rest: &str) -> Result<String> {
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(Error::Config(format!(
            "{:?} names no file: write sqlite:PATH, e.g. sqlite:/var/lib/myapp/baton.db",
            redact(url)
        )));
    }
    Ok(path.to_owned())
}

#[cfg(feature = "sqlite")]
fn open_sqlite(url: &str, rest: &str) -> Result<Arc<dyn LeaseStore>> {
    use std::path::Path;

    let path = sqlite_path(url, rest)?;
    let file = Path::new(&path);
    if file.is_dir() {
        return Err(Error::Config(format!(
            "{path} is a directory: the sqlite store needs a file path, e.g. sqlite:{}",
            file.join("baton.db").display()
        )));
    }
    if let Some(dir) = file.parent()
        && !dir.as_os_str().is_empty()
        && !dir.is_dir()
    {
        return Err(Error::Config(format!(
            "cannot open the sqlite store at {path}: the directory {} does not exist; create it or choose another path",
            dir.display()
        )));
    }
    let store = crate::store::sqlite::SqliteStore::open(file)?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
fn open_sqlite(url: &str, rest: &str) -> Result<Arc<dyn LeaseStore>> {
    let _ = sqlite_path(url, rest)?;
    Err(not_built(url))
}

#[cfg(feature = "redis")]
fn open_redis(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Ok(Arc::new(crate::store::redis::RedisStore::open(url)?))
}

#[cfg(not(feature = "redis"))]
fn open_redis(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Err(not_built(url))
}

#[cfg(feature = "etcd")]
fn open_etcd(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Ok(Arc::new(crate::store::etcd::EtcdStore::open(url)?))
}

#[cfg(not(feature = "etcd"))]
fn open_etcd(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Err(not_built(url))
}

#[cfg(feature = "kubernetes")]
fn open_kubernetes(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Ok(Arc::new(crate::store::kubernetes::KubernetesStore::open(
        url,
    )?))
}

#[cfg(not(feature = "kubernetes"))]
fn open_kubernetes(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Err(not_built(url))
}

#[cfg(feature = "consul")]
fn open_consul(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Ok(Arc::new(crate::store::consul::ConsulStore::open(url)?))
}

#[cfg(not(feature = "consul"))]
fn open_consul(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Err(not_built(url))
}

#[cfg(feature = "postgres")]
fn open_postgres(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Ok(Arc::new(crate::store::sql::postgres::PostgresStore::open(
        url,
    )?))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Err(not_built(url))
}

#[cfg(feature = "mysql")]
fn open_mysql(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Ok(Arc::new(crate::store::sql::mysql::MysqlStore::open(url)?))
}

#[cfg(not(feature = "mysql"))]
fn open_mysql(url: &str, _rest: &str) -> Result<Arc<dyn LeaseStore>> {
    Err(not_built(url))
}

/// The error for a URL of a store this build leaves out: which feature brings it in.
#[cfg_attr(
    all(
        feature = "sqlite",
        feature = "redis",
        feature = "etcd",
        feature = "postgres",
        feature = "mysql",
        feature = "kubernetes"
    ),
    allow(dead_code)
)]
fn not_built(url: &str) -> Error {
    let kind = split_scheme(url)
        .ok()
        .and_then(|(scheme, _)| StoreKind::of_scheme(&scheme));
    let (name, feature) = match kind {
        Some(StoreKind {
            name,
            status: Status::NeedsFeature(feature),
            ..
        }) => (*name, *feature),
        _ => ("this", "matching"),
    };
    Error::Config(format!(
        "this build has no {name} store ({}): build baton with the `{feature}` feature; stores available now: {}",
        redact(url),
        supported_schemes(),
    ))
}

/// `url` with every password replaced by `****`: the password of the user info
/// (`redis://user:****@host`) and the values of secret-looking query parameters
/// (`?password=****`). Safe to print, log or put in an error.
///
/// Strings that are not URLs come back unchanged, apart from those two patterns.
///
/// ```
/// use baton::connect::redact;
/// assert_eq!(redact("redis://app:s3cret@cache:6379/0"), "redis://app:****@cache:6379/0");
/// assert_eq!(redact("postgres://db/x?user=a&password=p"), "postgres://db/x?user=a&password=****");
/// assert_eq!(redact("sqlite:/tmp/baton.db"), "sqlite:/tmp/baton.db");
/// ```
pub fn redact(url: &str) -> String {
    let (main, fragment) = match url.split_once('#') {
        Some((m, f)) => (m, Some(f)),
        None => (url, None),
    };
    let (before_query, query) = match main.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (main, None),
    };
    let mut out = redact_userinfo(before_query);
    if let Some(query) = query {
        out.push('?');
        out.push_str(&redact_query(query));
    }
    // A fragment is no place for options, but a mistyped URL may put them there.
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(&redact_query(fragment));
    }
    out
}

/// Hide the password in `scheme://user:password@host...`.
fn redact_userinfo(s: &str) -> String {
    let Some(start) = s.find("://").map(|i| i + 3) else {
        return s.to_owned();
    };
    let authority_end = s[start..].find(['/', '#']).map_or(s.len(), |i| start + i);
    let authority = &s[start..authority_end];
    // The last '@' ends the user info: passwords may contain '@' when not percent-encoded.
    let Some(at) = authority.rfind('@') else {
        return s.to_owned();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return s.to_owned();
    };
    format!(
        "{}{}:****{}",
        &s[..start],
        &userinfo[..colon],
        &s[start + at..]
    )
}

/// Hide the values of secret-looking `name=value` pairs of a query string.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(redact_pair)
        .collect::<Vec<_>>()
        .join("&")
}

/// One `name=value` pair, its value hidden if a secret's name comes before any of its `=`:
/// `password=`, and in a mistyped URL `??token=`, `x-token=` or `=?token=` too.
fn redact_pair(pair: &str) -> String {
    for (i, _) in pair.match_indices('=') {
        let word = pair[..i]
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        if i + 1 < pair.len() && SECRET_PARAMS.iter().any(|s| word.eq_ignore_ascii_case(s)) {
            return format!("{}=****", &pair[..i]);
        }
    }
    pair.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(url: &str) -> String {
        match store_from_url(url) {
            Err(Error::Config(msg)) => msg,
            Err(other) => panic!("{url}: expected a config error, got {other}"),
            Ok(store) => panic!("{url}: expected an error, got {store:?}"),
        }
    }

    /// The one list of schemes is what the factory opens and what its errors list: every
    /// scheme of a built store opens that store (or fails for its own reasons, never as an
    /// unknown scheme), and the error for an unknown scheme names every one of them.
    #[tokio::test]
    async fn the_factory_opens_every_listed_scheme_and_its_errors_list_them_all() {
        let unknown = config_error("zookeeper://zk:2181");
        let dir = std::env::temp_dir().join(format!("baton-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut seen = Vec::new();
        for kind in STORE_KINDS {
            for scheme in kind.schemes {
                assert!(!seen.contains(scheme), "{scheme} is listed twice");
                seen.push(scheme);
                assert_eq!(
                    StoreKind::of_scheme(scheme).map(|k| k.name),
                    Some(kind.name)
                );
                let url = match kind.name {
                    "memory" => "memory:".to_owned(),
                    "sqlite" => format!("{scheme}:{}", dir.join("b.db").display()),
                    _ => format!("{scheme}://127.0.0.1:1/x"),
                };
                let opened = store_from_url(&url);
                match kind.status {
                    Status::Built => {
                        let shown = if kind.schemes[0] == *scheme {
                            kind.form.to_owned()
                        } else {
                            format!("{scheme}://")
                        };
                        assert!(unknown.contains(&shown), "{shown} missing from: {unknown}");
                        assert!(supported_schemes().contains(&shown), "{shown}");
                        match opened {
                            Ok(store) => assert_eq!(store.info().name, kind.name, "{url}"),
                            Err(e) => assert!(
                                !e.to_string().contains("unknown store scheme")
                                    && !e.to_string().contains("planned"),
                                "{url}: {e}"
                            ),
                        }
                    }
                    Status::NeedsFeature(feature) => {
                        let msg = opened.unwrap_err().to_string();
                        assert!(msg.contains(&format!("`{feature}` feature")), "{msg}");
                    }
                    Status::Planned => {
                        assert!(planned_schemes().contains(kind.name));
                        assert!(unknown.contains(kind.name), "{unknown}");
                        let msg = opened.unwrap_err().to_string();
                        assert!(msg.contains("planned"), "{msg}");
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn memory_url_opens_a_memory_store() {
        for url in ["memory:", "MEMORY:", "memory://", " memory: "] {
            assert_eq!(store_from_url(url).unwrap().info().name, "memory", "{url}");
        }
        assert!(config_error("memory:elsewhere").contains("takes no location"));
    }

    #[test]
    fn unknown_scheme_lists_supported_and_planned() {
        let msg = config_error("zookeeper://zk:2181");
        assert!(msg.contains("unknown store scheme \"zookeeper\""), "{msg}");
        assert!(msg.contains("memory:"), "{msg}");
        assert!(msg.contains("consul"), "{msg}");
        if cfg!(feature = "redis") {
            for scheme in [
                "redis://",
                "rediss://",
                "redis+cluster://",
                "redis+sentinel://",
            ] {
                assert!(msg.contains(scheme), "{msg}");
            }
        }
    }

    #[cfg(not(feature = "redis"))]
    #[test]
    fn redis_without_the_feature_says_how_to_get_it_and_redacts() {
        let msg = config_error("redis://app:hunter2@cache:6379");
        assert!(msg.contains("`redis` feature"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(config_error("redis+sentinel://s/m").contains("`redis` feature"));
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn redis_schemes_open_redis_stores_lazily() {
        for url in [
            "redis://app:hunter2@127.0.0.1:1/0",
            "REDISS://127.0.0.1:1",
            "redis+cluster://127.0.0.1:1,127.0.0.1:2",
            "rediss+cluster://127.0.0.1:1",
            "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/1",
            "rediss+sentinel://127.0.0.1:1/mymaster",
        ] {
            let store = store_from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            let info = store.info();
            assert_eq!(info.name, "redis", "{url}");
            assert!(!info.location.contains("hunter2"), "{}", info.location);
            assert!(!format!("{store:?}").contains("hunter2"));
        }
        let msg = config_error("rediss://h:6380/?ca=/nonexistent/baton/ca.pem");
        assert!(msg.contains("/nonexistent/baton/ca.pem"), "{msg}");
        let msg = config_error("redis+sentinel://app:hunter2@s1,s2");
        assert!(msg.contains("names no master"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_outside_a_tokio_runtime_is_an_error_not_a_panic() {
        assert!(config_error("redis://127.0.0.1:1").contains("tokio runtime"));
    }

    #[cfg(not(feature = "consul"))]
    #[test]
    fn consul_without_the_feature_says_how_to_get_it_and_redacts() {
        let msg = config_error("consul://app:hunter2@db:8500/x");
        assert!(msg.contains("`consul` feature"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(config_error("consuls://h?token=hunter2").contains("`consul` feature"));
    }

    #[cfg(feature = "consul")]
    #[test]
    fn consul_schemes_open_consul_stores_lazily_and_redact() {
        for url in [
            "consul://127.0.0.1:1?token=hunter2",
            "CONSULS://127.0.0.1:1?token=hunter2&dc=dc2",
        ] {
            let store = store_from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            let info = store.info();
            assert_eq!(info.name, "consul", "{url}");
            assert!(!info.location.contains("hunter2"), "{}", info.location);
            assert!(!format!("{store:?}").contains("hunter2"));
        }
        let msg = config_error("consul://app:hunter2@db:8500/x");
        assert!(
            msg.contains("a path is not supported") || msg.contains("credentials"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        let msg = config_error("consuls://h?ca=/nonexistent/baton/ca.pem&token=hunter2");
        assert!(msg.contains("/nonexistent/baton/ca.pem"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_schemes_open_etcd_stores_lazily_and_redact() {
        for url in [
            "etcd://127.0.0.1:1",
            "ETCD://app:hunter2@127.0.0.1:1,127.0.0.1:2",
            "etcds://app:hunter2@localhost:1",
        ] {
            let store = store_from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            let info = store.info();
            assert_eq!(info.name, "etcd", "{url}");
            assert!(!info.location.contains("hunter2"), "{}", info.location);
            assert!(!format!("{store:?}").contains("hunter2"));
        }
        let msg = config_error("etcd://app:hunter2@h:2379/some/path");
        assert!(msg.contains("no path"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[cfg(feature = "kubernetes")]
    #[test]
    fn kubernetes_schemes_open_kubernetes_stores_lazily() {
        for url in [
            "kubernetes:",
            "KUBERNETES:?namespace=jobs&context=prod",
            "kubernetes+http://127.0.0.1:1?namespace=jobs",
        ] {
            let store = store_from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(store.info().name, "kubernetes", "{url}");
            assert!(store.info().can_watch);
        }
        let msg = config_error("kubernetes://cluster:6443");
        assert!(msg.contains("kubernetes+http://HOST:PORT"), "{msg}");
    }

    #[cfg(not(feature = "kubernetes"))]
    #[test]
    fn kubernetes_without_the_feature_says_how_to_get_it() {
        let msg = config_error("kubernetes:?namespace=x");
        assert!(msg.contains("`kubernetes` feature"), "{msg}");
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_without_the_feature_says_how_to_get_it_and_redacts() {
        let msg = config_error("etcd://app:hunter2@h:2379");
        assert!(msg.contains("`etcd` feature"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[cfg(not(feature = "postgres"))]
    #[test]
    fn postgres_without_the_feature_says_how_to_get_it_and_redacts() {
        let msg = config_error("postgres://app:hunter2@db:5432/x");
        assert!(msg.contains("`postgres` feature"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(config_error("postgresql://h/db").contains("`postgres` feature"));
    }

    #[cfg(not(feature = "mysql"))]
    #[test]
    fn mysql_without_the_feature_says_how_to_get_it_and_redacts() {
        let msg = config_error("mysql://app:hunter2@db/x");
        assert!(msg.contains("`mysql` feature"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(config_error("mariadb://h/db").contains("`mysql` feature"));
    }

    #[cfg(all(feature = "postgres", feature = "mysql"))]
    #[tokio::test]
    async fn sql_schemes_open_sql_stores_lazily_and_redact() {
        for (url, name) in [
            ("postgres://app:hunter2@127.0.0.1:1/db", "postgres"),
            (
                "POSTGRESQL://127.0.0.1:1/db?sslmode=require&table=my_leases",
                "postgres",
            ),
            ("mysql://app:hunter2@127.0.0.1:1/db", "mysql"),
            (
                "mariadb://app:hunter2@127.0.0.1:1/db?ssl-mode=required&poll=10ms",
                "mysql",
            ),
        ] {
            let store = store_from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            let info = store.info();
            assert_eq!(info.name, name, "{url}");
            assert!(!info.location.contains("hunter2"), "{}", info.location);
            assert!(!format!("{store:?}").contains("hunter2"));
        }
        let msg = config_error("postgres://app:hunter2@h/db?table=no-dashes");
        assert!(msg.contains("table name"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn malformed_urls_are_config_errors() {
        assert!(config_error("").contains("empty"));
        assert!(config_error("/tmp/baton.db").contains("write sqlite:/tmp/baton.db"));
        assert!(config_error("1sqlite:/x").contains("not valid"));
        assert!(config_error("sq lite:/x").contains("not valid"));
        assert!(config_error("sqlite:").contains("names no file"));
        assert!(config_error("sqlite://").contains("names no file"));
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("", "/abs/b.db").unwrap(), "/abs/b.db");
        assert_eq!(sqlite_path("", "rel/b.db").unwrap(), "rel/b.db");
        assert_eq!(sqlite_path("", "//rel.db").unwrap(), "rel.db");
        assert_eq!(sqlite_path("", "///abs/b.db").unwrap(), "/abs/b.db");
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_in_a_missing_directory_names_the_directory() {
        let msg = config_error("sqlite:/nonexistent-baton-dir/sub/baton.db");
        assert!(
            msg.contains("/nonexistent-baton-dir/sub does not exist"),
            "{msg}"
        );
        let msg = config_error(&format!("sqlite:{}", std::env::temp_dir().display()));
        assert!(msg.contains("is a directory"), "{msg}");
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("redis://:pw@h:6379"), "redis://:****@h:6379");
        assert_eq!(redact("redis://u:p@ss@h/0"), "redis://u:****@h/0");
        assert_eq!(redact("redis://user@h"), "redis://user@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact("etcd://h:2379/p@th"), "etcd://h:2379/p@th");
        assert_eq!(
            redact("mysql://u:p@h/db?ssl=true&Password=x#frag"),
            "mysql://u:****@h/db?ssl=true&Password=****#frag"
        );
        assert_eq!(redact("memory:"), "memory:");
        assert_eq!(redact("not a url"), "not a url");
    }
}
