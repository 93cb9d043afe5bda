//! Effective settings: flags, then environment, then the config file, then defaults.
//!
//! clap already merges flags over `BATON_*` variables and says which one a value came from;
//! this module adds the config file and the defaults, parses durations, and names the source of
//! a bad value in its error, so `BATON_LEASE=2x` is reported as coming from `BATON_LEASE`.
//!
//! Config files come in two shapes:
//! * TOML with `store`, `key`, `id`, `lease`, `renew`, `grace` (durations as strings, `"2s"`);
//! * JSON in the seed's `appsettings.json` shape: `Redis.ConnectionString` and
//!   `LeaderElection.{LockKey, LeaseDurationSeconds, RenewIntervalSeconds, GracePeriodSeconds,
//!   InstanceId}`. Section and field names match case-insensitively, as .NET configuration does.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton::ElectionOptions;
use baton::connect::redact;
use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;
use serde_json::Value;

use crate::cli::GlobalArgs;
use crate::failure::Failure;

/// The key used when none is given.
pub const DEFAULT_KEY: &str = "baton:leader";

/// Everything a command needs to know about the election.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The store URL. May contain a password: show it only through [`Settings::store_display`].
    pub store: String,
    pub key: String,
    pub options: ElectionOptions,
    /// The candidate's priority (`--priority`, `BATON_PRIORITY`; not in config files).
    pub priority: u32,
    /// Where each setting came from, for `baton config`: (name, origin).
    pub origins: Vec<(&'static str, String)>,
}

impl Settings {
    /// The store URL with any password hidden.
    pub fn store_display(&self) -> String {
        redact(&self.store)
    }
}

/// A `consul://` or `consuls://` URL without `token=` takes the token in `CONSUL_HTTP_TOKEN`,
/// as Consul's own tools do; the library never reads the environment (DESIGN.md §1), so the
/// command puts it in the URL, which every message shows redacted.
fn with_consul_token(store: String, env_token: Option<String>) -> String {
    let Some(token) = env_token.filter(|t| !t.is_empty()) else {
        return store;
    };
    let lower = store.trim().to_ascii_lowercase();
    if !(lower.starts_with("consul://") || lower.starts_with("consuls://")) {
        return store;
    }
    let has_token = store
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("token=")));
    if has_token {
        return store;
    }
    let escaped: String = token
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let separator = if store.contains('?') { '&' } else { '?' };
    format!("{}{separator}token={escaped}", store.trim())
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File(PathBuf, &'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "--{flag}"),
            Origin::Env(var) => f.write_str(var),
            Origin::File(path, field) => write!(f, "{field} in {}", path.display()),
        }
    }
}

/// A value given as a duration: text from a flag, a variable or TOML; seconds from JSON.
#[derive(Debug, Clone)]
enum DurationValue {
    Text(String),
    Seconds(f64),
}

/// Settings read from a config file; `None` where the file is silent.
#[derive(Debug, Default)]
struct FileSettings {
    path: PathBuf,
    store: Option<String>,
    key: Option<String>,
    id: Option<String>,
    lease: Option<(DurationValue, &'static str)>,
    renew: Option<(DurationValue, &'static str)>,
    grace: Option<(DurationValue, &'static str)>,
}

/// Merge flags, environment, config file and defaults into the settings, and validate them.
pub fn resolve(args: &GlobalArgs, matches: &ArgMatches) -> Result<Settings, Failure> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => match default_config_path().filter(|p| p.is_file()) {
            Some(path) => load_file(&path)?,
            None => FileSettings::default(),
        },
    };
    let mut origins: Vec<(&'static str, String)> = Vec::new();
    let default = || "default".to_owned();
    let cli = |name: &'static str, env: &'static str, value: &Option<String>| {
        value.clone().map(|v| {
            let origin = match value_source(matches, name) {
                Some(ValueSource::EnvVariable) => Origin::Env(env),
                _ => Origin::Flag(name),
            };
            (v, origin)
        })
    };
    let from_file = |value: &Option<String>, field: &'static str| {
        value
            .clone()
            .map(|v| (v, Origin::File(file.path.clone(), field)))
    };

    let store = match cli("store", "BATON_STORE", &args.store)
        .or_else(|| from_file(&file.store, "store"))
    {
        Some((url, origin)) => {
            origins.push(("store", origin.to_string()));
            url
        }
        None => {
            origins.push(("store", default()));
            default_store_url()?
        }
    };
    let store = with_consul_token(store, std::env::var("CONSUL_HTTP_TOKEN").ok());
    let key = match cli("key", "BATON_KEY", &args.key).or_else(|| from_file(&file.key, "key")) {
        Some((key, origin)) if key.trim().is_empty() => {
            return Err(Failure::new(format!(
                "the key from {origin} is empty: pass a name such as myapp:leader"
            )));
        }
        Some((key, origin)) if key.chars().any(char::is_control) => {
            return Err(Failure::new(format!(
                "the key from {origin} ({key:?}) contains a control character, which would break baton's line-by-line output: use printable characters, e.g. myapp:leader"
            )));
        }
        Some((key, origin)) => {
            origins.push(("key", origin.to_string()));
            key
        }
        None => {
            origins.push(("key", default()));
            DEFAULT_KEY.to_owned()
        }
    };
    let id = match cli("id", "BATON_ID", &args.id).or_else(|| from_file(&file.id, "id")) {
        Some((id, origin)) if id.chars().any(char::is_control) => {
            return Err(Failure::new(format!(
                "the id from {origin} ({id:?}) contains a control character, which would break baton's line-by-line output: use printable characters, e.g. worker-1"
            )));
        }
        Some((id, origin)) => {
            origins.push(("id", origin.to_string()));
            Some(id)
        }
        None => None,
    };
    if id.is_none() {
        origins.push(("id", "default: <hostname>-<pid>".to_owned()));
    }

    let priority = match cli("priority", "BATON_PRIORITY", &args.priority) {
        Some((text, origin)) => {
            let priority = text.trim().parse::<u32>().map_err(|_| {
                Failure::new(format!(
                    "the priority from {origin} ({text:?}) is not a whole number from 0 to {}: e.g. --priority 10",
                    u32::MAX
                ))
            })?;
            origins.push(("priority", origin.to_string()));
            priority
        }
        None => {
            origins.push(("priority", "default: 0".to_owned()));
            0
        }
    };

    let defaults = ElectionOptions::default();
    let mut duration = |name: &'static str,
                        env: &'static str,
                        value: &Option<String>,
                        in_file: &Option<(DurationValue, &'static str)>,
                        default: Duration|
     -> Result<Duration, Failure> {
        let picked = cli(name, env, value)
            .map(|(v, origin)| (DurationValue::Text(v), origin))
            .or_else(|| {
                in_file
                    .clone()
                    .map(|(v, field)| (v, Origin::File(file.path.clone(), field)))
            });
        match picked {
            None => {
                origins.push((name, "default".to_owned()));
                Ok(default)
            }
            Some((v, origin)) => {
                origins.push((name, origin.to_string()));
                parse_duration(name, &v, &origin)
            }
        }
    };
    let mut options = ElectionOptions::new();
    options.lease_duration = duration(
        "lease",
        "BATON_LEASE",
        &args.lease,
        &file.lease,
        defaults.lease_duration,
    )?;
    options.renew_interval = duration(
        "renew",
        "BATON_RENEW",
        &args.renew,
        &file.renew,
        defaults.renew_interval,
    )?;
    options.grace_period = duration(
        "grace",
        "BATON_GRACE",
        &args.grace,
        &file.grace,
        defaults.grace_period,
    )?;
    options.instance_id = id;
    options.validate()?;
    Ok(Settings {
        store,
        key,
        options,
        priority,
        origins,
    })
}

/// Where a global option's value came from. Globals given after the subcommand live in the
/// subcommand's matches.
fn value_source(matches: &ArgMatches, name: &str) -> Option<ValueSource> {
    matches.value_source(name).or_else(|| {
        matches
            .subcommand()
            .and_then(|(_, sub)| sub.value_source(name))
    })
}

fn parse_duration(name: &str, value: &DurationValue, origin: &Origin) -> Result<Duration, Failure> {
    match value {
        DurationValue::Text(text) => crate::cli::duration(text)
            .map_err(|e| Failure::new(format!("invalid {name} {text:?} from {origin}: {e}"))),
        DurationValue::Seconds(secs) => Duration::try_from_secs_f64(*secs).map_err(|_| {
            Failure::new(format!(
                "invalid {name} {secs} from {origin}: expected a number of seconds, e.g. 30"
            ))
        }),
    }
}

/// The default store: one SQLite file at a fixed per-user path, so that `baton demo` in two
/// terminals meets in the same file with no setup. The state directory (XDG_STATE_HOME on
/// Linux) is meant for exactly this kind of data; other platforms fall back to the local data
/// directory, and a machine with neither to the temp directory.
pub fn default_store_path() -> PathBuf {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join("baton")
        .join("baton.db")
}

/// The config file read when neither `--config` nor `BATON_CONFIG` names one, if it exists:
/// `baton/config.toml` in the user's config directory (`$XDG_CONFIG_HOME`, else
/// `~/.config`, on Linux).
pub fn default_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("baton").join("config.toml"))
}

fn default_store_url() -> Result<String, Failure> {
    let path = default_store_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::new(format!(
                "cannot create {} for the default store: {e}; pass --store sqlite:PATH",
                dir.display()
            ))
        })?;
    }
    Ok(format!("sqlite:{}", path.display()))
}

fn load_file(path: &Path) -> Result<FileSettings, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(format!(
            "cannot read the config file {}: {e}; check --config or BATON_CONFIG",
            path.display()
        ))
    })?;
    let is_json = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("json") => true,
        Some(ext) if ext.eq_ignore_ascii_case("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    let parsed = if is_json {
        parse_json(path, &text)
    } else {
        parse_toml(path, &text)
    };
    parsed.map_err(|e| e.context(format!("config file {}", path.display())))
}

/// The TOML shape. Unknown fields are errors, so a typo (`leese`) does not pass silently.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    store: Option<String>,
    key: Option<String>,
    id: Option<String>,
    lease: Option<String>,
    renew: Option<String>,
    grace: Option<String>,
}

fn parse_toml(path: &Path, text: &str) -> Result<FileSettings, Failure> {
    let file: TomlFile = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| 1 + text[..span.start.min(text.len())].matches('\n').count());
        let message = e.message().trim_end_matches('.').to_owned();
        Failure::new(match line {
            Some(line) => format!("line {line}: {message}"),
            None => message,
        })
    })?;
    let text_duration = |v: Option<String>, field| v.map(|v| (DurationValue::Text(v), field));
    Ok(FileSettings {
        path: path.to_owned(),
        store: file.store,
        key: file.key,
        id: file.id,
        lease: text_duration(file.lease, "lease"),
        renew: text_duration(file.renew, "renew"),
        grace: text_duration(file.grace, "grace"),
    })
}

fn parse_json(path: &Path, text: &str) -> Result<FileSettings, Failure> {
    let root: Value = serde_json::from_str(text).map_err(|e| Failure::new(e.to_string()))?;
    if !root.is_object() {
        return Err(Failure::new(
            "expected a JSON object in the shape of appsettings.json",
        ));
    }
    let redis = get_ci(&root, "Redis");
    let election = get_ci(&root, "LeaderElection");
    if redis.is_none() && election.is_none() {
        return Err(Failure::new(
            "no \"LeaderElection\" or \"Redis\" section found: use the appsettings.json shape \
             ({\"LeaderElection\": {\"LockKey\": ..., \"LeaseDurationSeconds\": ...}}) or a TOML file",
        ));
    }
    let string = |section: Option<&Value>, section_name: &str, field: &str| match section
        .and_then(|s| get_ci(s, field))
    {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Failure::new(format!(
            "{section_name}.{field} must be a string, got {other}"
        ))),
    };
    let seconds = |field: &'static str| -> Result<Option<(DurationValue, &'static str)>, Failure> {
        let value = match election.and_then(|s| get_ci(s, field)) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            // .NET configuration binds "30" as 30 too.
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(_) => None,
        };
        match value {
            Some(secs) if secs.is_finite() && secs >= 0.0 => {
                Ok(Some((DurationValue::Seconds(secs), field)))
            }
            _ => Err(Failure::new(format!(
                "LeaderElection.{field} must be a number of seconds, e.g. 30"
            ))),
        }
    };
    let store = string(redis, "Redis", "ConnectionString")?
        .map(|s| redis_url_from_connection_string(&s))
        .transpose()?;
    Ok(FileSettings {
        path: path.to_owned(),
        store,
        key: string(election, "LeaderElection", "LockKey")?,
        id: string(election, "LeaderElection", "InstanceId")?,
        lease: seconds("LeaseDurationSeconds")?,
        renew: seconds("RenewIntervalSeconds")?,
        grace: seconds("GracePeriodSeconds")?,
    })
}

/// A field of a JSON object, by case-insensitive name, as .NET configuration binds them.
fn get_ci<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    object
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// Turn a StackExchange.Redis connection string (`host:port,password=...,ssl=true`) into a
/// `redis://` URL. URLs pass through unchanged.
fn redis_url_from_connection_string(s: &str) -> Result<String, Failure> {
    let s = s.trim();
    if s.contains("://") {
        return Ok(s.to_owned());
    }
    let mut host = None;
    let (mut user, mut password, mut tls, mut db) = (None, None, false, None);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            None => {
                host.get_or_insert(part);
            }
            Some((name, value)) => match name.trim().to_ascii_lowercase().as_str() {
                "password" => password = Some(value.trim()),
                "user" => user = Some(value.trim()),
                "ssl" => tls = value.trim().eq_ignore_ascii_case("true"),
                "defaultdatabase" => db = Some(value.trim()),
                _ => {}
            },
        }
    }
    let Some(host) = host else {
        return Err(Failure::new(
            "Redis.ConnectionString names no host: write e.g. \"localhost:6379\"",
        ));
    };
    let scheme = if tls { "rediss" } else { "redis" };
    let auth = match (user, password) {
        (Some(u), Some(p)) => format!("{u}:{p}@"),
        (None, Some(p)) => format!(":{p}@"),
        (Some(u), None) => format!("{u}@"),
        (None, None) => String::new(),
    };
    let db = db.map(|d| format!("/{d}")).unwrap_or_default();
    Ok(format!("{scheme}://{auth}{host}{db}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consul_urls_take_consul_http_token_unless_they_name_one() {
        let t = |url: &str, env: Option<&str>| {
            with_consul_token(url.to_owned(), env.map(str::to_owned))
        };
        assert_eq!(
            t("consul://h:8500", Some("s3/cr t")),
            "consul://h:8500?token=s3%2Fcr%20t"
        );
        assert_eq!(
            t("consuls://h?dc=dc2", Some("x")),
            "consuls://h?dc=dc2&token=x"
        );
        assert_eq!(
            t("consul://h?token=mine", Some("x")),
            "consul://h?token=mine"
        );
        assert_eq!(t("consul://h", None), "consul://h");
        assert_eq!(t("consul://h", Some("")), "consul://h");
        assert_eq!(t("redis://h", Some("x")), "redis://h");
        assert_eq!(
            redact(&t("consul://h", Some("hunter2"))),
            "consul://h?token=****"
        );
    }

    #[test]
    fn stackexchange_connection_strings_become_urls() {
        let url = |s| redis_url_from_connection_string(s).unwrap();
        assert_eq!(url("localhost:6379"), "redis://localhost:6379");
        assert_eq!(
            url("cache:6380,password=pw,ssl=True,abortConnect=false"),
            "rediss://:pw@cache:6380"
        );
        assert_eq!(
            url("a:1,b:2,user=app,password=pw,defaultDatabase=3"),
            "redis://app:pw@a:1/3"
        );
        assert_eq!(url("redis://h:1"), "redis://h:1");
        assert!(redis_url_from_connection_string("password=x").is_err());
    }

    #[test]
    fn the_seeds_appsettings_parses() {
        let text = r#"{
          "Redis": { "ConnectionString": "localhost:6379" },
          "LeaderElection": {
            "LockKey": "myapp:leader",
            "LeaseDurationSeconds": 30,
            "RenewIntervalSeconds": 10,
            "GracePeriodSeconds": 15
          }
        }"#;
        let f = parse_json(Path::new("appsettings.json"), text).unwrap();
        assert_eq!(f.store.as_deref(), Some("redis://localhost:6379"));
        assert_eq!(f.key.as_deref(), Some("myapp:leader"));
        assert!(matches!(f.lease, Some((DurationValue::Seconds(s), _)) if s == 30.0));
        assert!(f.id.is_none());
    }

    #[test]
    fn toml_typos_are_errors_with_a_line() {
        let e = parse_toml(Path::new("b.toml"), "key = \"k\"\nleese = \"2s\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(e.to_string().contains("leese"), "{e}");
    }

    /// Bad input never panics (issue 19): random text, and the seed's appsettings.json and
    /// Baton's TOML with random values in every field, go through the parsers and then
    /// through the duration checks, as `resolve` does. The answer is settings or a clear
    /// error, never a panic, and the connection string's password never shows in an error.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Cases per property; docs/RELIABILITY.md quotes this.
        const CASES: u32 = 5_000;
        const SECRET: &str = "s3cr3tPW";

        fn path() -> PathBuf {
            PathBuf::from("/etc/baton/appsettings.json")
        }

        /// What `resolve` does with a parsed file's durations.
        fn check_durations(file: &FileSettings) {
            for (value, field) in [&file.lease, &file.renew, &file.grace]
                .into_iter()
                .flatten()
            {
                let origin = Origin::File(file.path.clone(), field);
                if let Err(e) = parse_duration(field, value, &origin) {
                    assert!(!e.to_string().trim().is_empty());
                }
            }
        }

        /// Any JSON value, a few levels deep, with numbers of every size and sign.
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                prop_oneof![
                    "\\PC{0,12}",
                    "-?[0-9]{0,400}(\\.[0-9]{0,5})?(e[0-9]{1,4})?",
                    Just("1e400".to_owned()),
                    Just("NaN".to_owned()),
                    Just("-0".to_owned()),
                ]
                .prop_map(Value::String),
            ];
            leaf.prop_recursive(2, 8, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    prop::collection::btree_map("[A-Za-z]{1,6}", inner, 0..3)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// A StackExchange.Redis connection string with the secret as its password.
        fn connection_string() -> impl Strategy<Value = String> {
            (
                "[a-z0-9.:\\[\\]]{0,12}",
                prop::collection::vec("[A-Za-z]{0,10}=[A-Za-z0-9,=@/:]{0,8}", 0..3),
                "[A-Za-z0-9]{0,4}",
            )
                .prop_map(|(host, extra, tail)| {
                    let mut parts = vec![host, format!("password={SECRET}{tail}")];
                    parts.extend(extra);
                    parts.join(",")
                })
        }

        /// The seed's appsettings.json shape, any field missing, mistyped or out of range.
        fn appsettings() -> impl Strategy<Value = (String, bool)> {
            let field = || prop::option::of(json_value());
            (
                prop::option::of(prop_oneof![
                    connection_string().prop_map(|s| (Value::String(s), true)),
                    json_value().prop_map(|v| (v, false)),
                ]),
                field(),
                field(),
                field(),
                field(),
                field(),
                any::<bool>(),
            )
                .prop_map(|(conn, key, id, lease, renew, grace, lower)| {
                    let name = |n: &str| {
                        if lower {
                            n.to_lowercase()
                        } else {
                            n.to_owned()
                        }
                    };
                    let mut election = serde_json::Map::new();
                    for (n, v) in [
                        ("LockKey", key),
                        ("InstanceId", id),
                        ("LeaseDurationSeconds", lease),
                        ("RenewIntervalSeconds", renew),
                        ("GracePeriodSeconds", grace),
                    ] {
                        if let Some(v) = v {
                            election.insert(name(n), v);
                        }
                    }
                    let mut root = serde_json::Map::new();
                    root.insert(name("LeaderElection"), Value::Object(election));
                    let mut secret = false;
                    if let Some((conn, has_secret)) = conn {
                        secret = has_secret;
                        let mut redis = serde_json::Map::new();
                        redis.insert(name("ConnectionString"), conn);
                        root.insert(name("Redis"), Value::Object(redis));
                    }
                    (Value::Object(root).to_string(), secret)
                })
        }

        /// Baton's TOML shape, with any text in each field, or an unknown field.
        fn toml_file() -> impl Strategy<Value = String> {
            let field = prop::option::of(prop_oneof![
                "[0-9a-zµ .]{0,12}",
                "\\PC{0,12}",
                Just("5s 10ms".to_owned()),
                Just("18446744073709551616s".to_owned()),
            ]);
            (
                prop::sample::subsequence(
                    vec!["store", "key", "id", "lease", "renew", "grace", "leese"],
                    0..=7,
                ),
                prop::collection::vec(field, 7),
            )
                .prop_map(|(names, values)| {
                    names
                        .iter()
                        .zip(values)
                        .filter_map(|(n, v)| v.map(|v| format!("{n} = {:?}\n", v)))
                        .collect()
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

            #[test]
            fn any_text_as_a_config_file_is_settings_or_an_error(text in "\\PC{0,60}|[{}\\[\\]\":=,0-9a-zA-Z \\n]{0,60}") {
                for parsed in [parse_json(&path(), &text), parse_toml(&path(), &text)] {
                    match parsed {
                        Ok(file) => check_durations(&file),
                        Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
                    }
                }
            }

            #[test]
            fn the_seeds_appsettings_with_any_values_is_settings_or_an_error_without_the_password(
                (text, secret) in appsettings()
            ) {
                match parse_json(&path(), &text) {
                    Ok(file) => check_durations(&file),
                    Err(e) => {
                        let e = e.to_string();
                        prop_assert!(!e.trim().is_empty());
                        if secret {
                            prop_assert!(!e.contains(SECRET), "{text} -> {e}");
                        }
                    }
                }
            }

            #[test]
            fn batons_toml_with_any_values_is_settings_or_an_error(text in toml_file()) {
                match parse_toml(&path(), &text) {
                    Ok(file) => check_durations(&file),
                    Err(e) => prop_assert!(!e.to_string().trim().is_empty()),
                }
            }

            #[test]
            fn any_text_as_a_duration_flag_is_a_duration_or_an_error(text in "\\PC{0,24}|[0-9a-zµ .]{0,16}") {
                if let Err(e) = crate::cli::duration(&text) {
                    prop_assert!(!e.trim().is_empty());
                }
            }
        }
    }
}
