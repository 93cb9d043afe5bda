//! Bad input never panics (issue 19): property tests throw random, structured and mutated
//! store URLs of every scheme at `store_from_url`. The answer is always a store or a clear
//! `Error`; never a panic, and never a password from the URL in the message. (The CLI's config
//! files and durations have their own in baton-cli's `config` tests.)
//!
//! SQLite's opener creates its file, so SQLite URLs are only ever generated inside a
//! temporary directory of this test; every other opener is lazy (no connection is made) or
//! only reads the files its options name.

use std::sync::OnceLock;

use baton::connect::{STORE_KINDS, store_from_url};
use proptest::prelude::*;

/// Cases per property; docs/RELIABILITY.md quotes these.
const CASES: u32 = 10_000;

/// A password no generator puts anywhere but in a password's place.
const SECRET: &str = "s3cr3tPW";

fn temp_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("baton-parsers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Every scheme a URL can name, built or not.
fn schemes() -> Vec<&'static str> {
    STORE_KINDS
        .iter()
        .flat_map(|k| k.schemes.iter().copied())
        .collect()
}

/// Whether `url` would reach SQLite's opener (which creates files) outside our control.
fn names_sqlite(url: &str) -> bool {
    url.trim()
        .split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("sqlite"))
}

/// Open `url` inside a runtime (some openers build lazy clients that expect one) and check
/// the answer. Returns the error's text, if any.
fn open(url: &str) -> Option<String> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    });
    let _guard = runtime.enter();
    match std::panic::catch_unwind(|| store_from_url(url)) {
        Ok(Ok(_store)) => None,
        Ok(Err(e)) => {
            let text = e.to_string();
            assert!(!text.trim().is_empty(), "an empty error for {url:?}");
            Some(text)
        }
        Err(_) => panic!("store_from_url panicked on {url:?}"),
    }
}

/// Text that looks like a URL's parts: mostly printable, with the delimiters URLs use.
fn part() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._-]{0,12}",
        "[a-zA-Z0-9:/@?&=%,.\\[\\]+_-]{0,16}",
        "\\PC{0,8}",
        Just(String::new()),
    ]
}

/// Option names the stores know, and some they do not.
fn option_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("table".to_owned()),
        Just("poll".to_owned()),
        Just("ca".to_owned()),
        Just("cert".to_owned()),
        Just("key".to_owned()),
        Just("namespace".to_owned()),
        Just("kubeconfig".to_owned()),
        Just("context".to_owned()),
        Just("token".to_owned()),
        Just("password".to_owned()),
        Just("dc".to_owned()),
        Just("protocol".to_owned()),
        Just("sslmode".to_owned()),
        Just("min-ttl".to_owned()),
        "[a-z_-]{1,10}",
    ]
}

/// `scheme://[user[:password]@]host[:port][/path][?options]`, from any scheme; SQLite's
/// location is a file under this test's directory.
fn structured_url() -> impl Strategy<Value = (String, bool)> {
    let scheme = prop::sample::select(schemes());
    let userinfo = prop::option::of(("[a-z]{1,8}", prop::option::of("[a-zA-Z0-9]{0,6}")));
    let host = prop_oneof![
        Just("127.0.0.1".to_owned()),
        Just("localhost".to_owned()),
        Just("[::1]".to_owned()),
        Just("a,b:1,c:2".to_owned()),
        part(),
    ];
    let port = prop::option::of(prop_oneof![
        (0u32..70_000).prop_map(|p| p.to_string()),
        part()
    ]);
    let options = prop::collection::vec((option_name(), part()), 0..4);
    (scheme, userinfo, host, port, part(), options).prop_map(
        |(scheme, userinfo, host, port, path, options)| {
            // A token or password in the query is a secret too.
            let mut secret_in_query = false;
            let query = options
                .iter()
                .map(|(k, v)| {
                    if k == "token" || k == "password" {
                        secret_in_query = true;
                        let v: String = v.chars().filter(char::is_ascii_alphanumeric).collect();
                        format!("{k}={SECRET}{v}")
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect::<Vec<_>>()
                .join("&");
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            if scheme == "sqlite" {
                let name: String = path
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                    .collect();
                let name = name.replace("..", "");
                let url = format!("sqlite:{}/f{name}{query}", temp_dir().display());
                return (url, false);
            }
            let (userinfo, has_password) = match userinfo {
                None => (String::new(), false),
                Some((user, None)) => (format!("{user}@"), false),
                Some((user, Some(extra))) => (format!("{user}:{SECRET}{extra}@"), true),
            };
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let path = if path.is_empty() {
                String::new()
            } else {
                format!("/{path}")
            };
            (
                format!("{scheme}://{userinfo}{host}{port}{path}{query}"),
                has_password || secret_in_query,
            )
        },
    )
}

/// Valid-looking URLs of every built scheme but SQLite, to mutate.
const SEEDS: &[&str] = &[
    "memory:",
    "redis://user:pw@127.0.0.1:6379/0",
    "rediss://cache:6380/?ca=/nonexistent/ca.pem",
    "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
    "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/0",
    "postgres://postgres:pw@127.0.0.1:5432/test?table=leases&poll=25ms",
    "mysql://root@127.0.0.1:3306/test?table=leases",
    "mariadb://root:pw@[::1]:3306/test",
    "etcd://127.0.0.1:2379,127.0.0.1:22379?min-ttl=2s",
    "etcds://user:pw@etcd:2379/?ca=/nonexistent/ca.pem",
    "kubernetes:?namespace=default&kubeconfig=/nonexistent/kubeconfig",
    "kubernetes+http://127.0.0.1:8001?namespace=jobs",
    "consul://127.0.0.1:8500?token=abc&dc=dc1",
    "consuls://consul:8501/?ca=/nonexistent/ca.pem",
];

/// One edit of a string: delete, insert or replace a char, or duplicate a slice.
fn mutate(seed: &str, edits: &[(u8, usize, char)]) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for &(kind, at, c) in edits {
        let at = if chars.is_empty() {
            0
        } else {
            at % (chars.len() + 1)
        };
        match kind % 4 {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 => chars.insert(at, c),
            2 if at < chars.len() => chars[at] = c,
            _ => {
                let end = (at + 4).min(chars.len());
                let slice: Vec<char> = chars[at.min(end)..end].to_vec();
                chars.splice(at..at, slice);
            }
        }
    }
    chars.into_iter().collect()
}

fn delimiter_or_any() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            ':', '/', '@', '?', '&', '=', '%', '[', ']', ',', '+', '#', ' ', '\0', '\n', 'é', '💥',
        ]),
        any::<char>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn any_text_as_a_store_url_is_a_store_or_an_error(url in "\\PC{0,40}|.{0,40}") {
        prop_assume!(!names_sqlite(&url));
        open(&url);
    }

    #[test]
    fn structured_urls_of_every_scheme_never_panic_nor_show_the_password(
        (url, has_password) in structured_url()
    ) {
        if let Some(text) = open(&url)
            && has_password
        {
            prop_assert!(!text.contains(SECRET), "{url:?} -> {text}");
        }
    }

    #[test]
    fn mutated_urls_are_a_store_or_an_error(
        seed in prop::sample::select(SEEDS),
        edits in prop::collection::vec((any::<u8>(), any::<usize>(), delimiter_or_any()), 1..6),
    ) {
        let url = mutate(seed, &edits);
        prop_assume!(!names_sqlite(&url));
        open(&url);
    }

}
