//! The Redis store against real `redis-server` processes: the conformance suite, plus a test
//! for each promise of the Redis store (seed layout, atomic tokens, restarts that lose data,
//! push handoff, killed connections, Redis down at start, foreign data, ACL users, secrets),
//! then the same store over TLS (certificates made by each test), on a three-master Redis
//! Cluster (the conformance suite again), on a Redis Cluster with replicas (a failover) and
//! behind Sentinel (including a failover).
//!
//! Timing bounds here are generous on purpose: they check behaviour (push, not polling; no
//! overlap), not speed. Speed is measured by `scripts/bench`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton::store::redis::{RedisStore, companion_key};
use baton::{Acquire, BoxError, Error, Event, LeaderElection, LeaseStore, LossReason, Result};
use baton_testkit::conformance::{Capabilities, ForeignWriter, StoreFactory};
use baton_testkit::redis_ha::RedisHa;
use baton_testkit::servers::{
    RedisServer, TlsFiles, free_port, scratch_dir, shared_redis, shared_redis_cluster,
};

/// Every `store()` is a new connection to the shared server, as another process would have.
struct RedisFactory;

#[async_trait]
impl StoreFactory for RedisFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(Arc::new(RedisStore::open(&shared_redis().url())?))
    }
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        Some(self)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_handoff(true)
            .with_presence(true)
            .with_shows_handoff(true)
    }
}

#[async_trait]
impl ForeignWriter for RedisFactory {
    async fn plant(&self, key: &str) -> std::result::Result<(), BoxError> {
        shared_redis().cli(&["RPUSH", key, "not baton's"]);
        Ok(())
    }
    async fn check_untouched(&self, key: &str) -> std::result::Result<(), String> {
        let server = shared_redis();
        let (kind, items) = (
            server.cli(&["TYPE", key]),
            server.cli(&["LRANGE", key, "0", "-1"]),
        );
        if kind == "list" && items == "not baton's" {
            Ok(())
        } else {
            Err(format!("the key is now a {kind} holding {items:?}"))
        }
    }
}

mod conformance {
    baton_testkit::conformance_tests!(super::RedisFactory);
}

/// Every `store()` is built with `RedisStore::from_client` from a plain redis-rs client, as an
/// application that already configures one would (RESP2, redis-rs's default: the store
/// switches its own connection to RESP3 for the push messages).
struct FromClientFactory;

#[async_trait]
impl StoreFactory for FromClientFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        let client = redis::Client::open(shared_redis().url()).expect("a redis-rs client");
        Ok(Arc::new(RedisStore::from_client(&client)?))
    }
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        Some(&RedisFactory)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_handoff(true)
            .with_presence(true)
            .with_shows_handoff(true)
    }
}

mod from_client_conformance {
    baton_testkit::conformance_tests!(super::FromClientFactory);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_from_a_client_keeps_its_credentials_and_never_shows_the_password() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret-pw"]);
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}", server.port());
    let client = redis::Client::open(url.as_str()).unwrap();
    let store = RedisStore::from_client(&client).unwrap();
    let info = store.info();
    assert_eq!(
        info.location,
        format!("redis://127.0.0.1:{}", server.port())
    );
    assert!(!format!("{store:?}").contains("s3cret-pw"));
    let a = short(&store, "jobs", "a");
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    assert_eq!(
        server.cli(&["-a", "s3cret-pw", "--no-auth-warning", "GET", "jobs"]),
        "a"
    );
    a.stop().await.unwrap();
}

fn short(store: &RedisStore, key: &str, id: &str) -> LeaderElection {
    LeaderElection::builder(store.clone(), key)
        .lease_duration(Duration::from_secs(2))
        .renew_interval(Duration::from_millis(500))
        .grace_period(Duration::from_millis(500))
        .instance_id(id)
        .build()
        .unwrap()
}

fn unique_key(name: &str) -> String {
    format!("test:{name}:{:08x}", fastrand::u32(..))
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// How many times `cmd` ran, from `INFO commandstats`.
fn command_calls(stats: &str, cmd: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn drain(events: &mut baton::Events) -> Vec<Event> {
    std::iter::from_fn(|| events.try_recv()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cli_get_and_ttl_show_the_leader_as_in_the_seed() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).unwrap();
    let election = LeaderElection::builder(store, "myapp:leader")
        .instance_id("Instance-12345")
        .build()
        .unwrap();
    election.start().await.unwrap();
    assert_eq!(server.cli(&["GET", "myapp:leader"]), "Instance-12345");
    let ttl: u64 = server.cli(&["TTL", "myapp:leader"]).parse().unwrap();
    assert!((1..=15).contains(&ttl), "TTL {ttl}");
    // The token counter sits beside it, in the same cluster slot.
    assert_eq!(server.cli(&["TYPE", "{myapp:leader}:baton"]), "hash");
    election.stop().await.unwrap();
    assert_eq!(
        server.cli(&["EXISTS", "myapp:leader"]),
        "0",
        "released on stop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_minted_in_the_acquire_script_from_redis_time() {
    let store = RedisStore::open(&shared_redis().url()).unwrap();
    let key = unique_key("time");
    let mut c = store.join(&key, "a").await.unwrap();
    let Acquire::Acquired(lease) = c.try_acquire(Duration::from_secs(5)).await.unwrap() else {
        panic!("free key")
    };
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let token = lease.token.get();
    assert!(
        token > now_us - 60_000_000 && token < now_us + 60_000_000,
        "token {token} is Redis TIME in µs"
    );
    let stored = shared_redis().cli(&["HGET", &format!("{{{key}}}:baton"), "token"]);
    assert_eq!(
        stored,
        token.to_string(),
        "the script stored the same token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_that_loses_data_keeps_tokens_monotonic_and_never_two_leaders() {
    let mut server = RedisServer::start();
    let store_a = RedisStore::open(&server.url()).unwrap();
    let store_b = RedisStore::open(&server.url()).unwrap();
    let a = short(&store_a, "jobs", "a");
    let b = short(&store_b, "jobs", "b");
    let (mut ea, mut eb) = (a.subscribe(), b.subscribe());
    a.start().await.unwrap();
    b.start().await.unwrap();
    // A fresh server: whoever holds the key waits until the server has been up for a lease.
    assert!(wait_until(Duration::from_secs(10), || a.is_leader() || b.is_leader()).await);
    let first_token = a.fencing_token().or(b.fencing_token()).unwrap();
    drain(&mut ea);
    drain(&mut eb);

    server.restart();
    let restarted = Instant::now();
    let mut became_after_restart = None;
    let mut tokens = vec![first_token.get()];
    while restarted.elapsed() < Duration::from_secs(8) {
        assert!(
            !(a.is_leader() && b.is_leader()),
            "two leaders {:?} after the restart",
            restarted.elapsed()
        );
        for e in drain(&mut ea).into_iter().chain(drain(&mut eb)) {
            if let Event::BecameLeader { token, .. } = e {
                became_after_restart.get_or_insert(restarted.elapsed());
                tokens.push(token.get());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let became = became_after_restart.expect("a leader again after the restart");
    // The new holder acts only once the server has been up for the lease (2 s), minus the
    // rounding of INFO's whole seconds.
    assert!(
        became >= Duration::from_millis(990),
        "led {became:?} after the restart"
    );
    assert!(tokens.windows(2).all(|w| w[1] > w[0]), "tokens {tokens:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_wakes_the_follower_at_once_by_push() {
    let store = RedisStore::open(&shared_redis().url()).unwrap();
    let key = unique_key("push");
    let (a, b) = (long(&store, &key, "a"), long(&store, &key, "b"));
    // The shared server may have started moments ago: `lead` waits out the restart guard.
    lead(&a).await;
    b.start().await.unwrap();
    assert!(!b.is_leader());
    let released = Instant::now();
    a.stop().await.unwrap();
    // Without push, b would wait out a 30 s lease.
    assert!(wait_until(Duration::from_secs(5), || b.is_leader()).await);
    assert!(released.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_leader_is_replaced_when_its_ttl_runs_out_without_polling() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).unwrap();
    // Let the server age past the lease, so no restart wait applies.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut crashed = store.join("jobs", "crashed").await.unwrap();
    let Acquire::Acquired(_) = crashed.try_acquire(Duration::from_secs(2)).await.unwrap() else {
        panic!("free key")
    };
    let b = short(&store, "jobs", "b");
    b.start().await.unwrap();
    server.cli(&["CONFIG", "RESETSTAT"]);
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(5), || b.is_leader()).await);
    assert!(started.elapsed() <= Duration::from_secs(3));
    let stats = server.cli(&["INFO", "commandstats"]);
    let evalsha_calls: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // One try at the holder's expiry, maybe a renewal: not a poll every few milliseconds.
    assert!(
        evalsha_calls <= 4,
        "{evalsha_calls} script calls while waiting:\n{stats}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_connection_within_the_grace_period_keeps_leadership() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).unwrap();
    let a = LeaderElection::builder(store, "jobs")
        .lease_duration(Duration::from_secs(3))
        .renew_interval(Duration::from_millis(500))
        .grace_period(Duration::from_millis(1500))
        .instance_id("a")
        .build()
        .unwrap();
    let mut events = a.subscribe();
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || a.is_leader()).await);
    drain(&mut events);
    for _ in 0..3 {
        // A RESP3 connection that subscribed counts as a pubsub client.
        let killed: u32 = ["normal", "pubsub"]
            .iter()
            .map(|t| {
                server
                    .cli(&["CLIENT", "KILL", "TYPE", t])
                    .parse::<u32>()
                    .unwrap_or(0)
            })
            .sum();
        assert!(killed > 0, "killed the election's connection");
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            assert!(a.is_leader(), "lost leadership after CLIENT KILL");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(drain(&mut events), vec![]);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_at_start_is_a_clear_error_then_campaigning_goes_on() {
    let port = free_port();
    let store = RedisStore::open(&format!("redis://127.0.0.1:{port}")).unwrap();
    let a = short(&store, "jobs", "a");
    a.start().await.expect("an unreachable store is not fatal");
    let error = a
        .state()
        .borrow()
        .last_error
        .clone()
        .expect("the error is kept");
    assert!(
        error.contains(&format!(
            "Failed to connect to Redis at 127.0.0.1:{port}. Is Redis running?"
        )),
        "{error}"
    );
    let _server = RedisServer::start_on(port, &[]);
    assert!(
        wait_until(Duration::from_secs(15), || a.is_leader()).await,
        "leads once Redis is up: {:?}",
        a.state().borrow()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_of_another_type_is_an_error_and_left_untouched() {
    let server = shared_redis();
    let key = unique_key("list");
    server.cli(&["RPUSH", &key, "x", "y"]);
    let store = RedisStore::open(&server.url()).unwrap();
    let err = short(&store, &key, "a").start().await.unwrap_err();
    assert!(matches!(err, Error::ForeignData { .. }), "{err}");
    assert!(err.to_string().contains("a list"), "{err}");
    assert_eq!(server.cli(&["LRANGE", &key, "0", "-1"]), "x\ny");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_string_baton_did_not_write_is_an_error_and_left_untouched() {
    let server = shared_redis();
    let key = unique_key("string");
    server.cli(&["SET", &key, "someone else's"]);
    let store = RedisStore::open(&server.url()).unwrap();
    let err = short(&store, &key, "a").start().await.unwrap_err();
    assert!(err.to_string().contains("did not write"), "{err}");
    assert_eq!(server.cli(&["GET", &key]), "someone else's");
    assert_eq!(server.cli(&["TTL", &key]), "-1");
    let err = store.read(&key).await.unwrap_err();
    assert!(matches!(err, Error::ForeignData { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acl_user_with_the_documented_minimal_rule_can_run_elections() {
    let server = RedisServer::start();
    // The rule from the docs of baton::store::redis, for keys under `myapp:`.
    let rule = "on >s3cret resetkeys ~myapp:* ~{myapp:*}:baton ~{myapp:*}:candidates resetchannels &baton:changes:* \
                -@all +@connection +evalsha +eval +script|load +info +subscribe +unsubscribe \
                +get +set +del +pexpire +pttl +type +hget +hmget +hgetall +hset +hlen +publish +time +lastsave";
    let mut args = vec!["ACL", "SETUSER", "baton"];
    args.extend(rule.split_whitespace());
    assert_eq!(server.cli(&args), "OK");
    let url = format!("redis://baton:s3cret@127.0.0.1:{}", server.port());
    let store_a = RedisStore::open(&url).unwrap();
    let store_b = RedisStore::open(&url).unwrap();
    let a = short(&store_a, "myapp:leader", "a");
    let b = short(&store_b, "myapp:leader", "b");
    a.start().await.unwrap();
    b.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || a.is_leader()).await);
    // Presence records (`baton` keeps them; `LeaderElectionBuilder::priority`).
    let live = store_a
        .announce("myapp:leader", "a", 3, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    let seen = store_b.candidates("myapp:leader").await.unwrap().unwrap();
    assert_eq!(
        seen.iter()
            .map(|p| (p.candidate.as_str(), p.priority))
            .collect::<Vec<_>>(),
        [("a", 3)]
    );
    store_b.withdraw("myapp:leader", "a").await.unwrap();
    assert_eq!(
        store_b.candidates("myapp:leader").await.unwrap(),
        Some(vec![])
    );
    a.hand_over(Some("b")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || b.is_leader()).await,
        "a planned handoff needs nothing more"
    );
    b.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || a.is_leader()).await,
        "push works too"
    );
    assert_eq!(a.state().borrow().last_error, None);
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_a_config_error_that_never_shows_the_password() {
    let server = RedisServer::start_with(&["--requirepass", "right-one"]);
    let url = format!("redis://default:hunter2-secret@127.0.0.1:{}", server.port());
    let store = RedisStore::open(&url).unwrap();
    assert!(
        !store.info().location.contains("hunter2"),
        "{}",
        store.info().location
    );
    assert!(!format!("{store:?}").contains("hunter2"));
    let err = short(&store, "jobs", "a").start().await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(err, Error::Config(_)), "{text}");
    assert!(text.contains("credentials"), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stepping_down_after_renewals_fail_when_redis_dies() {
    let mut server = RedisServer::start();
    let store = RedisStore::open(&server.url()).unwrap();
    let a = short(&store, "jobs", "a");
    let mut events = a.subscribe();
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || a.is_leader()).await);
    drain(&mut events);
    server.kill();
    let killed = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || !a.is_leader()).await);
    // At renew (500 ms) + grace (500 ms) after the last good renewal: in any case before the
    // 2 s lease could expire in the store.
    assert!(
        killed.elapsed() < Duration::from_millis(1900),
        "{:?}",
        killed.elapsed()
    );
    let reasons: Vec<LossReason> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            Event::LostLeadership { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, vec![LossReason::RenewalsFailed]);
}

/// Acquire and release `key` once, so that its token counter exists (the restart guard still
/// holds acquires back until the server has been up for a lease).
async fn prime(store: &RedisStore, key: &str) {
    let mut c = store.join(key, "primer").await.unwrap();
    let Acquire::Acquired(lease) = c.try_acquire(Duration::from_secs(1)).await.unwrap() else {
        panic!("{key} is held")
    };
    c.release(&lease).await.unwrap();
}

/// Two candidates on `key` with a 30 s lease: a release reaches the follower long before the
/// lease could expire only by push.
fn long(store: &RedisStore, key: &str, id: &str) -> LeaderElection {
    LeaderElection::builder(store.clone(), key)
        .lease_duration(Duration::from_secs(30))
        .instance_id(id)
        .build()
        .unwrap()
}

/// Start `a` and wait until it leads. On a server that started moments ago the restart guard
/// holds the first leader back until the server has been up for the lease (30 s with `long`).
async fn lead(a: &LeaderElection) {
    a.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(45), || a.is_leader()).await,
        "leads: {:?}",
        a.state().borrow()
    );
}

/// `a` leads; `b` starts and follows; `a` stops; `b` leads within 5 s (not the 30 s lease).
async fn hand_over(a: &LeaderElection, b: &LeaderElection) {
    assert!(a.is_leader());
    b.start().await.unwrap();
    assert!(!b.is_leader());
    let released = Instant::now();
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || b.is_leader()).await,
        "b takes over by push: {:?}",
        b.state().borrow()
    );
    assert!(released.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// TLS

/// A CA, a server certificate for `localhost` (and 127.0.0.1, ::1) and a client certificate it
/// signed, as PEM files in a scratch directory.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
    server: TlsFiles,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let dir = scratch_dir("baton-pki");
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Baton test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: &[&str], usage: ExtendedKeyUsagePurpose| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names.clone()).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, names[0].as_str());
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            &["localhost", "127.0.0.1", "::1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&["baton-client"], ExtendedKeyUsagePurpose::ClientAuth);
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let server = TlsFiles {
            cert: write("server.pem", &server_cert),
            key: write("server.key", &server_key),
            ca: write("ca.pem", &ca_pem),
        };
        Pki {
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            dir,
            ca_pem,
            server,
        }
    }

    /// `?ca=...` naming this CA's file.
    fn ca_query(&self) -> String {
        format!("/?ca={}", self.server.ca.display())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_election_runs_over_tls_with_the_ca_from_the_url() {
    let pki = Pki::new();
    let server = RedisServer::start_tls(&pki.server, false);
    let url = format!("{}{}", server.url(), pki.ca_query());
    assert!(url.starts_with("rediss://localhost:"), "{url}");
    let (store_a, store_b) = (
        RedisStore::open(&url).unwrap(),
        RedisStore::open(&url).unwrap(),
    );
    store_a.ping().await.unwrap();
    prime(&store_a, "myapp:leader").await;
    let (a, b) = (
        long(&store_a, "myapp:leader", "a"),
        long(&store_b, "myapp:leader", "b"),
    );
    lead(&a).await;
    hand_over(&a, &b).await;
    // The seed's inspection workflow works over TLS too.
    assert_eq!(server.cli(&["GET", "myapp:leader"]), "b");
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_from_an_unknown_ca_is_a_clear_config_error() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let server = RedisServer::start_tls(&pki.server, false);
    // Another CA, then the system's trust store, which does not know the test CA either.
    for url in [
        format!("{}{}", server.url(), stranger.ca_query()),
        server.url(),
    ] {
        let store = RedisStore::open(&url).unwrap();
        let err = short(&store, "jobs", "a").start().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Config(_)), "{url}: {text}");
        assert!(
            text.contains(&format!("localhost:{}", server.port())),
            "{text}"
        );
        assert!(text.contains("not signed by a CA"), "{text}");
        assert!(text.contains("?ca="), "the fix: {text}");
    }
    // Without TLS, a TLS port never answers a plain client.
    let plain = RedisStore::open(&format!("redis://127.0.0.1:{}", server.port())).unwrap();
    assert!(plain.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_a_client_certificate() {
    let pki = Pki::new();
    let server = RedisServer::start_tls(&pki.server, true);
    let client_cert = std::fs::read(&pki.client_cert).unwrap();
    let client_key = std::fs::read(&pki.client_key).unwrap();

    // From the builder, as bytes.
    let store = RedisStore::builder(server.url())
        .ca_cert_pem(pki.ca_pem.clone())
        .client_cert_pem(client_cert, client_key)
        .build()
        .unwrap();
    let a = short(&store, "jobs", "a");
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || a.is_leader()).await);
    a.stop().await.unwrap();

    // From the URL, as files.
    let url = format!(
        "{}{}&cert={}&key={}",
        server.url(),
        pki.ca_query(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    RedisStore::open(&url).unwrap().ping().await.unwrap();

    // Without a client certificate, the error says what is missing.
    let store = RedisStore::builder(server.url())
        .ca_cert_pem(pki.ca_pem.clone())
        .build()
        .unwrap();
    let err = store.ping().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Config(_)), "{text}");
    assert!(text.contains("client certificate"), "{text}");
    assert!(text.contains("cert="), "the fix: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_from_a_tls_client_uses_its_certificates() {
    let pki = Pki::new();
    let server = RedisServer::start_tls(&pki.server, false);
    // The server was up by now: its uptime is at least the time elapsed since.
    let up = Instant::now();
    let client = redis::Client::build_with_tls(
        server.url(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pki.ca_pem.clone().into_bytes()),
        },
    )
    .unwrap();
    let store = RedisStore::from_client(&client).unwrap();
    assert!(
        store.info().location.starts_with("rediss://"),
        "{:?}",
        store.info()
    );
    let a = short(&store, "jobs", "a");
    let b = short(&RedisStore::from_client(&client).unwrap(), "jobs", "b");
    a.start().await.unwrap();
    b.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || a.is_leader()).await);
    // The restart guard holds a new leader back until the server has been up for the lease,
    // as reported by Redis (whole seconds, less one for rounding): 3 s for the 2 s lease.
    // Hand over after that, so that only the push is timed. This also lets b settle as a
    // subscribed follower.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(up.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.stop().await.unwrap();
    // The release reaches b by push over TLS, before the 2 s lease could run out.
    assert!(
        wait_until(Duration::from_secs(1), || b.is_leader()).await,
        "b leads by push: {:?}",
        b.state().borrow()
    );
    b.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Redis Cluster

/// Every `store()` is a new cluster connection to the shared three-master cluster.
struct ClusterFactory;

#[async_trait]
impl StoreFactory for ClusterFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(Arc::new(RedisStore::open(&shared_redis_cluster().url())?))
    }
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        Some(self)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
            .with_handoff(true)
            .with_presence(true)
            .with_shows_handoff(true)
    }
}

#[async_trait]
impl ForeignWriter for ClusterFactory {
    async fn plant(&self, key: &str) -> std::result::Result<(), BoxError> {
        shared_redis_cluster().cli(&["RPUSH", key, "not baton's"]);
        Ok(())
    }
    async fn check_untouched(&self, key: &str) -> std::result::Result<(), String> {
        let cluster = shared_redis_cluster();
        let (kind, items) = (
            cluster.cli(&["TYPE", key]),
            cluster.cli(&["LRANGE", key, "0", "-1"]),
        );
        if kind == "list" && items == "not baton's" {
            Ok(())
        } else {
            Err(format!("the key is now a {kind} holding {items:?}"))
        }
    }
}

mod cluster_conformance {
    baton_testkit::conformance_tests!(super::ClusterFactory);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_cluster_each_key_lives_with_its_counter_on_its_master_and_push_hands_over() {
    let cluster = shared_redis_cluster();
    // Two keys that land on different masters.
    let first = unique_key("cluster");
    let second = std::iter::repeat_with(|| unique_key("cluster"))
        .find(|k| cluster.master_of(k) != cluster.master_of(&first))
        .unwrap();
    let keys = [first, second];
    for key in &keys {
        // By the cluster's own hash function: the scripts' two keys share a slot.
        assert_eq!(cluster.slot_of(key), cluster.slot_of(&companion_key(key)));
    }
    let store_a = RedisStore::open(&cluster.url()).unwrap();
    let store_b = RedisStore::open(&cluster.url()).unwrap();
    let mut pairs = Vec::new();
    for key in &keys {
        prime(&store_a, key).await;
        pairs.push((long(&store_a, key, "a"), long(&store_b, key, "b")));
    }
    for (key, (a, _)) in keys.iter().zip(&pairs) {
        lead(a).await;
        // Ask the key's master itself, without following redirections: the lease and its
        // counter were written there.
        let port = cluster.master_of(key);
        let node = cluster.nodes().iter().find(|n| n.port() == port).unwrap();
        assert_eq!(node.cli(&["GET", key]), "a", "{key} on :{port}");
        assert_eq!(
            node.cli(&["HGET", &companion_key(key), "holder"]),
            "a",
            "{key}'s counter on :{port}"
        );
    }
    for (a, b) in &pairs {
        hand_over(a, b).await;
        b.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acl_user_with_the_documented_rule_can_run_elections_on_a_cluster() {
    let cluster = shared_redis_cluster();
    // The rule from the docs of baton::store::redis, plus what a cluster client needs.
    let rule = "on >s3cret resetkeys ~myapp:* ~{myapp:*}:baton ~{myapp:*}:candidates resetchannels &baton:changes:* \
                -@all +@connection +evalsha +eval +script|load +info +subscribe +unsubscribe \
                +get +set +del +pexpire +pttl +type +hget +hmget +hgetall +hset +hlen +publish +time +lastsave \
                +cluster|slots";
    let mut args = vec!["ACL", "SETUSER", "baton-cluster"];
    args.extend(rule.split_whitespace());
    for node in cluster.nodes() {
        assert_eq!(node.cli(&args), "OK");
    }
    let url = cluster.url().replacen("://", "://baton-cluster:s3cret@", 1);
    let key = format!("myapp:{}", unique_key("acl"));
    let (store_a, store_b) = (
        RedisStore::open(&url).unwrap(),
        RedisStore::open(&url).unwrap(),
    );
    prime(&store_a, &key).await;
    let (a, b) = (long(&store_a, &key, "a"), long(&store_b, &key, "b"));
    lead(&a).await;
    hand_over(&a, &b).await;
    assert_eq!(b.state().borrow().last_error, None);
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_that_is_down_is_a_clear_error() {
    let url = format!(
        "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
        free_port(),
        free_port()
    );
    let store = RedisStore::open(&url).unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("Is Redis running?"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Sentinel

#[tokio::test(flavor = "multi_thread")]
async fn an_election_runs_through_sentinel() {
    let master = RedisServer::start();
    let sentinel = RedisServer::start_sentinel(&master, "mymaster");
    let url = sentinel.url();
    assert_eq!(
        url,
        format!("redis+sentinel://127.0.0.1:{}/mymaster", sentinel.port())
    );
    let (store_a, store_b) = (
        RedisStore::open(&url).unwrap(),
        RedisStore::open(&url).unwrap(),
    );
    prime(&store_a, "jobs").await;
    let (a, b) = (long(&store_a, "jobs", "a"), long(&store_b, "jobs", "b"));
    lead(&a).await;
    assert_eq!(
        master.cli(&["GET", "jobs"]),
        "a",
        "on the master Sentinel named"
    );
    hand_over(&a, &b).await;
    b.stop().await.unwrap();

    // A name Sentinel does not know, and no Sentinel at all.
    let unknown = format!("redis+sentinel://127.0.0.1:{}/nope", sentinel.port());
    let err = RedisStore::open(&unknown)
        .unwrap()
        .ping()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("\"nope\""), "{err}");
    let nobody = format!("redis+sentinel://127.0.0.1:{}/mymaster", free_port());
    let err = RedisStore::open(&nobody).unwrap().ping().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains("Is Redis Sentinel running?"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_sentinel_failover_the_election_goes_on_on_the_new_master() {
    let master = RedisServer::start();
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
    let synced = || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    };
    assert!(
        wait_until(Duration::from_secs(10), synced).await,
        "the replica syncs"
    );
    let sentinel = RedisServer::start_sentinel(&master, "mymaster");
    let url = sentinel.url();
    let (store_a, store_b) = (
        RedisStore::open(&url).unwrap(),
        RedisStore::open(&url).unwrap(),
    );
    let (a, b) = (short(&store_a, "jobs", "a"), short(&store_b, "jobs", "b"));
    let (mut ea, mut eb) = (a.subscribe(), b.subscribe());
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || a.is_leader()).await);
    b.start().await.unwrap();
    let mut tokens = vec![a.fencing_token().unwrap().get()];
    drain(&mut ea);
    drain(&mut eb);

    // A failover on demand; Sentinel needs a moment to learn about the replica first.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = sentinel.cli(&["SENTINEL", "FAILOVER", "mymaster"]);
        if answer == "OK" {
            break;
        }
        assert!(Instant::now() < deadline, "SENTINEL FAILOVER: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new_master = format!("127.0.0.1\n{}", replica.port());
    let moved = || sentinel.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"]) == new_master;
    assert!(
        wait_until(Duration::from_secs(20), moved).await,
        "Sentinel promotes the replica"
    );

    // The election follows: the lease is held on the new master, by one candidate at a time.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders");
        for e in drain(&mut ea).into_iter().chain(drain(&mut eb)) {
            if let Event::BecameLeader { token, .. } = e {
                tokens.push(token.get());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(replica.cli(&["ROLE"]).starts_with("master"));
    let holder = replica.cli(&["GET", "jobs"]);
    assert!(
        holder == "a" || holder == "b",
        "the new master holds {holder:?}"
    );
    let leader = if holder == "a" { &a } else { &b };
    assert!(
        leader.is_leader(),
        "{holder} leads: {:?}",
        leader.state().borrow()
    );
    assert!(tokens.windows(2).all(|w| w[1] > w[0]), "tokens {tokens:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_followers_send_no_commands_while_the_leader_renews() {
    let server = RedisServer::start();
    // A token counter already there, so no restart wait applies.
    let stores: Vec<RedisStore> = (0..4)
        .map(|_| RedisStore::open(&server.url()).unwrap())
        .collect();
    let elections: Vec<LeaderElection> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| short(s, "jobs", &format!("c{i}")))
        .collect();
    for e in &elections {
        e.start().await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || elections
            .iter()
            .any(|e| e.is_leader()))
        .await
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.cli(&["CONFIG", "RESETSTAT"]);
    // Four leases' worth of renewals (every 500 ms).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stats = server.cli(&["INFO", "commandstats"]);
    let calls = |cmd: &str| command_calls(&stats, cmd);
    // HMGET runs only in an acquire that finds the key held: a follower asking.
    assert_eq!(calls("hmget"), 0, "followers asked Redis:\n{stats}");
    assert!(calls("pexpire") >= 10, "the leader renewed:\n{stats}");
    assert_eq!(elections.iter().filter(|e| e.is_leader()).count(), 1);
}

/// A release wakes one candidate per connection, not every follower (docs/decisions.md D38):
/// the others learn the new leader from its `acquired` message and ask Redis nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_wakes_one_candidate_per_connection_not_the_herd() {
    let server = RedisServer::start();
    let leader_store = RedisStore::open(&server.url()).unwrap();
    let followers_store = RedisStore::open(&server.url()).unwrap();
    prime(&leader_store, "jobs").await;
    let leader = short(&leader_store, "jobs", "leader");
    lead(&leader).await;
    let followers: Vec<LeaderElection> = (0..20)
        .map(|i| short(&followers_store, "jobs", &format!("f{i}")))
        .collect();
    for f in &followers {
        f.start().await.unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(10), || followers
            .iter()
            .all(|f| f.current_leader_id().as_deref() == Some("leader")))
        .await
    );
    server.cli(&["CONFIG", "RESETSTAT"]);
    leader.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || followers
            .iter()
            .filter(|f| f.is_leader())
            .count()
            == 1)
        .await,
        "a follower takes over by push"
    );
    let new = followers
        .iter()
        .find(|f| f.is_leader())
        .unwrap()
        .candidate_id()
        .to_owned();
    assert!(
        wait_until(Duration::from_secs(5), || followers
            .iter()
            .all(|f| f.current_leader_id().as_deref() == Some(new.as_str())))
        .await,
        "every follower learns the new leader"
    );
    let stats = server.cli(&["INFO", "commandstats"]);
    let calls = |cmd: &str| command_calls(&stats, cmd);
    // HMGET runs only in an acquire that finds the key held. A herd would be 19 of them;
    // a machine stalled past the fallback wait may let a few through, never most.
    assert!(
        calls("hmget") < 10,
        "{} followers asked in vain:\n{stats}",
        calls("hmget")
    );
    for f in &followers {
        f.stop().await.unwrap();
    }
}

/// Regression (scripts/chaos, store-restart seed 417670): after a restart that lost the data, a
/// candidate that re-created the token counter and gave the lease up without ever acting let
/// the next candidate act at once, while the leader from before the restart was still stopping
/// its work. Every acquire now waits until the server has been up for a lease, counter or not.
#[tokio::test(flavor = "multi_thread")]
async fn an_acquire_soon_after_a_restart_waits_even_if_the_counter_was_recreated() {
    let server = RedisServer::start();
    server.cli(&["HSET", "{jobs}:baton", "holder", "gave-up", "token", "7"]);
    let store = RedisStore::open(&server.url()).unwrap();
    let mut c = store.join("jobs", "next").await.unwrap();
    let Acquire::Acquired(lease) = c.try_acquire(Duration::from_secs(30)).await.unwrap() else {
        panic!("free key")
    };
    assert!(lease.token.get() > 7);
    assert!(
        lease.act_after >= Duration::from_secs(25),
        "may act {:?} after acquiring on a server up for a moment",
        lease.act_after
    );
}

/// An acquire that finds the counter learns the server's uptime from `LASTSAVE` when the last
/// save (at the latest, the start) is over a lease and two seconds ago, without `INFO`'s cost;
/// after a recent save it reads `INFO` again, and a user whose ACL refuses `LASTSAVE` reads
/// `INFO` too. None of them waits on a server up for longer than the lease.
#[tokio::test(flavor = "multi_thread")]
async fn an_acquire_proves_the_uptime_with_lastsave_and_falls_back_to_info() {
    let server = RedisServer::start();
    let rule = "on >s3cret resetkeys ~myapp:* ~{myapp:*}:baton ~{myapp:*}:candidates resetchannels &baton:changes:* \
                -@all +@connection +evalsha +eval +script|load +info +subscribe +unsubscribe \
                +get +set +del +pexpire +pttl +type +hget +hmget +hset +hlen +publish +time";
    let mut args = vec!["ACL", "SETUSER", "no-lastsave"];
    args.extend(rule.split_whitespace());
    assert_eq!(server.cli(&args), "OK");
    let key = "myapp:leader";
    server.cli(&[
        "HSET",
        "{myapp:leader}:baton",
        "holder",
        "earlier",
        "token",
        "7",
    ]);
    let ttl = Duration::from_secs(1);
    // Past the lease and the two seconds of rounding, as the server sees it.
    let since_start = || {
        let now: u64 = server
            .cli(&["TIME"])
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let saved: u64 = server.cli(&["LASTSAVE"]).parse().unwrap();
        now - saved
    };
    while since_start() <= 3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let server = &server;
    let acquire = |url: String| async move {
        let store = RedisStore::open(&url).unwrap();
        let mut c = store.join(key, "a").await.unwrap();
        server.cli(&["CONFIG", "RESETSTAT"]);
        let Acquire::Acquired(lease) = c.try_acquire(ttl).await.unwrap() else {
            panic!("free key")
        };
        let stats = server.cli(&["INFO", "commandstats"]);
        c.release(&lease).await.unwrap();
        (
            lease.act_after,
            command_calls(&stats, "lastsave"),
            command_calls(&stats, "info"),
        )
    };
    let no_lastsave = format!("redis://no-lastsave:s3cret@127.0.0.1:{}", server.port());
    assert_eq!(acquire(server.url()).await, (Duration::ZERO, 1, 0));
    // LASTSAVE refused: INFO server and INFO replication, as before.
    assert_eq!(acquire(no_lastsave).await, (Duration::ZERO, 0, 2));
    // A save just now proves nothing about the start: INFO again.
    assert_eq!(server.cli(&["SAVE"]), "OK");
    assert_eq!(acquire(server.url()).await, (Duration::ZERO, 1, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn renewals_on_one_store_go_out_together_and_each_lease_is_judged_on_its_own() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).unwrap();
    let ttl = Duration::from_secs(30);
    // 40 leases held on one store, and three that will not renew: one stolen by another
    // candidate (lost, with the new holder), one deleted (lost), and one whose companion hash
    // a foreign writer replaced (foreign data, left untouched).
    let mut held = Vec::new();
    for i in 0..43 {
        let key = format!("batch:{i}");
        let mut c = store.join(&key, &format!("c{i}")).await.unwrap();
        let Acquire::Acquired(lease) = c.try_acquire(ttl).await.unwrap() else {
            panic!("{key} is free")
        };
        held.push((c, lease));
    }
    // One renewal first, so the batch script is loaded before the count starts.
    let (c, lease) = &mut held[0];
    assert!(matches!(
        c.renew(lease, ttl).await,
        Ok(baton::Renew::Renewed)
    ));
    server.cli(&["SET", "batch:40", "thief"]);
    server.cli(&["DEL", "batch:41"]);
    let companion = companion_key("batch:42");
    server.cli(&["DEL", &companion]);
    server.cli(&["RPUSH", &companion, "not baton's"]);
    server.cli(&["CONFIG", "RESETSTAT"]);

    let outcomes = futures_util::future::join_all(
        held.iter_mut()
            .map(|(c, lease)| async { c.renew(lease, ttl).await }),
    )
    .await;

    for (i, outcome) in outcomes.iter().enumerate().take(40) {
        assert!(
            matches!(outcome, Ok(baton::Renew::Renewed)),
            "lease {i}: {outcome:?}"
        );
    }
    match &outcomes[40] {
        Ok(baton::Renew::Lost(Some(record))) => assert_eq!(record.holder, "thief"),
        other => panic!("a stolen lease: {other:?}"),
    }
    assert!(
        matches!(outcomes[41], Ok(baton::Renew::Lost(None))),
        "a deleted lease: {:?}",
        outcomes[41]
    );
    assert!(
        matches!(outcomes[42], Err(Error::ForeignData { .. })),
        "foreign data at the companion: {:?}",
        outcomes[42]
    );
    assert_eq!(
        server.cli(&["LRANGE", &companion, "0", "-1"]),
        "not baton's"
    );
    // The 43 renewals, asked for at once, went out as one script call (two if the batcher's
    // window closed while they arrived), not 43.
    let stats = server.cli(&["INFO", "commandstats"]);
    let calls: u64 = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(
        (1..=2).contains(&calls),
        "{calls} script calls for 43 renewals:\n{stats}"
    );
    // The renewed leases were extended; the stolen key still belongs to the thief.
    let ttl_left: i64 = server.cli(&["PTTL", "batch:0"]).parse().unwrap();
    assert!(ttl_left > 25_000, "PTTL {ttl_left}");
    assert_eq!(server.cli(&["GET", "batch:40"]), "thief");
}

/// What a test plants at a key or its companion before Baton looks.
#[derive(Debug, Clone)]
enum Planted {
    Nothing,
    /// A string, with a TTL in ms or none.
    Text(String, Option<u32>),
    Hash(Vec<(String, String)>),
    List(Vec<String>),
    Set(Vec<String>),
    Sorted(Vec<(i32, String)>),
}

impl Planted {
    fn plant(&self, server: &RedisServer, key: &str) {
        let many = |cmd: &str, items: Vec<String>| {
            let mut args = vec![cmd.to_owned(), key.to_owned()];
            args.extend(items);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            server.cli(&args);
        };
        match self {
            Planted::Nothing => {}
            Planted::Text(v, None) => {
                server.cli(&["SET", key, v]);
            }
            Planted::Text(v, Some(ms)) => {
                server.cli(&["SET", key, v, "PX", &ms.to_string()]);
            }
            Planted::Hash(pairs) => many(
                "HSET",
                pairs
                    .iter()
                    .flat_map(|(f, v)| [f.clone(), v.clone()])
                    .collect(),
            ),
            Planted::List(items) => many("RPUSH", items.clone()),
            Planted::Set(items) => many("SADD", items.clone()),
            Planted::Sorted(items) => many(
                "ZADD",
                items
                    .iter()
                    .flat_map(|(s, m)| [s.to_string(), m.clone()])
                    .collect(),
            ),
        }
    }
}

fn planted() -> impl proptest::strategy::Strategy<Value = Planted> {
    use proptest::prelude::*;
    // Printable, no spaces or quotes (they go through redis-cli's arguments as they are).
    let word = || "[!-~&&[^\"'\\\\]]{1,12}";
    let field = prop_oneof![
        Just("holder".to_owned()),
        Just("token".to_owned()),
        Just("handoff_to".to_owned()),
        Just("handoff_from".to_owned()),
        Just("handoff_until".to_owned()),
        word().prop_map(String::from)
    ];
    let value = prop_oneof![
        (0u64..u64::MAX).prop_map(|n| n.to_string()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        word().prop_map(String::from),
    ];
    prop_oneof![
        Just(Planted::Nothing),
        (value.clone(), prop::option::of(60_000u32..600_000))
            .prop_map(|(v, ttl)| Planted::Text(v, ttl)),
        prop::collection::vec((field, value.clone()), 1..7).prop_map(Planted::Hash),
        prop::collection::vec(value.clone(), 1..3).prop_map(Planted::List),
        prop::collection::vec(value.clone(), 1..3).prop_map(Planted::Set),
        prop::collection::vec((any::<i32>(), value), 1..3).prop_map(Planted::Sorted),
    ]
}

/// Whether Baton could have written this pair: nothing, or a leased string at the key whose
/// companion is a hash of exactly `holder` (the same string) and a numeric `token`, or a
/// companion alone of that shape (the counter left by an earlier lease; the token below 2^53),
/// or a companion alone with a planned handoff's mark too (`handoff_to`, `handoff_from`, a numeric `handoff_until`),
/// or one with a request (`handoff_to`, and `handoff_from` equal to `holder`).
fn batons_own(at_key: &Planted, companion: &Planted) -> bool {
    let own_companion = |holder: Option<&str>| match companion {
        Planted::Nothing => holder.is_none(),
        Planted::Hash(pairs) => {
            let get = |name: &str| pairs.iter().rev().find(|(f, _)| f == name).map(|(_, v)| v);
            let fields: std::collections::BTreeSet<&str> =
                pairs.iter().map(|(f, _)| f.as_str()).collect();
            // Lua's numbers are exact below 2^53, so the scripts take no token above it.
            let numeric = |name: &str| get(name).is_some_and(|t| t.parse::<u64>().is_ok());
            let token_ok =
                get("token").is_some_and(|t| t.parse::<u64>().is_ok_and(|n| n < 1 << 53));
            let plain = fields == ["holder", "token"].into();
            // A mark is left by a handoff, which deletes the key: never beside a lease.
            let marked = holder.is_none()
                && fields
                    == [
                        "handoff_from",
                        "handoff_to",
                        "handoff_until",
                        "holder",
                        "token",
                    ]
                    .into()
                && numeric("handoff_until");
            // A request names the holder of the lease it was made of.
            let requested = fields == ["handoff_from", "handoff_to", "holder", "token"].into()
                && get("handoff_from") == get("holder");
            (plain || marked || requested)
                && token_ok
                && holder.is_none_or(|h| get("holder").is_some_and(|v| v == h))
        }
        _ => false,
    };
    match at_key {
        Planted::Nothing => own_companion(None),
        Planted::Text(holder, Some(_)) => own_companion(Some(holder)),
        _ => false,
    }
}

/// Random data planted at a key and its companion, of every Redis type: reading and
/// acquiring it never panics, data Baton could not have written is reported as foreign and
/// left exactly as it was (`DUMP` before and after), and Baton's own shapes work as usual.
#[test]
fn random_data_at_the_key_is_read_as_foreign_and_never_overwritten() {
    use proptest::test_runner::{Config, TestRunner};
    let server = shared_redis();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = {
        let _inside = runtime.enter();
        RedisStore::open(&server.url()).unwrap()
    };
    let mut runner = TestRunner::new(Config {
        cases: FOREIGN_CASES,
        ..Config::default()
    });
    let (foreign, own) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&(planted(), planted()), |(at_key, at_companion)| {
            let key = unique_key("random");
            let companion = companion_key(&key);
            at_key.plant(server, &key);
            at_companion.plant(server, &companion);
            let before = (
                server.cli(&["DUMP", &key]),
                server.cli(&["DUMP", &companion]),
            );
            let (read, acquired) = runtime.block_on(async {
                let read = store.read(&key).await;
                let mut c = store.join(&key, "baton-candidate").await.unwrap();
                let acquired = c.try_acquire(Duration::from_secs(60)).await;
                if let Ok(Acquire::Acquired(lease)) = &acquired {
                    c.release(lease).await.unwrap();
                }
                (read, acquired)
            });
            if batons_own(&at_key, &at_companion) {
                own.set(own.get() + 1);
                assert!(read.is_ok(), "{at_key:?} {at_companion:?}: {read:?}");
                assert!(
                    acquired.is_ok(),
                    "{at_key:?} {at_companion:?}: {acquired:?}"
                );
            } else {
                foreign.set(foreign.get() + 1);
                let after = (
                    server.cli(&["DUMP", &key]),
                    server.cli(&["DUMP", &companion]),
                );
                assert_eq!(before, after, "{at_key:?} {at_companion:?} changed");
                assert!(
                    matches!(acquired, Err(Error::ForeignData { .. })),
                    "{at_key:?} {at_companion:?}: acquire gave {acquired:?}"
                );
            }
            server.cli(&["DEL", &key, &companion]);
            Ok(())
        })
        .unwrap();
    let (foreign, own) = (foreign.get(), own.get());
    assert!(
        foreign > FOREIGN_CASES / 2 && own > 0,
        "foreign {foreign}, own {own}"
    );
}

/// Cases of [`random_data_at_the_key_is_read_as_foreign_and_never_overwritten`];
/// docs/RELIABILITY.md quotes it.
const FOREIGN_CASES: u32 = 300;

// ---------------------------------------------------------------------------------------------
// Planned handoff

/// `a` hands over to `c` with `b` also following: `c` leads by push (the lease is 30 s, so no
/// timer could have done it), `b` never does, the token goes up, and `c`'s acquire cleared the
/// mark from the companion.
#[tokio::test(flavor = "multi_thread")]
async fn a_planned_handoff_goes_to_the_named_candidate_by_push_and_clears_its_mark() {
    let server = shared_redis();
    let key = unique_key("handoff");
    let stores: Vec<RedisStore> = (0..3)
        .map(|_| RedisStore::open(&server.url()).unwrap())
        .collect();
    prime(&stores[0], &key).await;
    let a = long(&stores[0], &key, "a");
    let b = long(&stores[1], &key, "b");
    let c = long(&stores[2], &key, "c");
    lead(&a).await;
    b.start().await.unwrap();
    c.start().await.unwrap();
    let before = a.fencing_token().unwrap();
    let mut b_events = b.subscribe();
    let handed = Instant::now();
    a.hand_over(Some("c")).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || c.is_leader()).await,
        "c leads: {:?}",
        c.state().borrow()
    );
    assert!(handed.elapsed() < Duration::from_secs(5));
    assert!(!a.is_leader() && !b.is_leader());
    assert!(c.fencing_token().unwrap() > before);
    assert_eq!(server.cli(&["GET", &key]), "c");
    let fields = server.cli(&["HKEYS", &companion_key(&key)]);
    let mut fields: Vec<&str> = fields.lines().collect();
    fields.sort_unstable();
    assert_eq!(fields, ["holder", "token"], "the acquire removed the mark");
    assert!(
        wait_until(Duration::from_secs(5), || a.current_leader_id().as_deref()
            == Some("c"))
        .await,
        "the leaver follows c"
    );
    assert!(
        !drain(&mut b_events)
            .iter()
            .any(|e| matches!(e, Event::BecameLeader { .. }))
    );
    for e in [&a, &b, &c] {
        e.stop().await.unwrap();
    }
}

/// Companions that look like a handoff's mark but that Baton could not have written are
/// foreign: a mark whose end is not a number, a fifth field of another name, a mark beside a
/// lease. Each is reported and left exactly as it was; a well-formed mark reserves the key.
#[tokio::test(flavor = "multi_thread")]
async fn marks_baton_did_not_write_are_foreign_and_left_untouched() {
    let server = shared_redis();
    let store = RedisStore::open(&server.url()).unwrap();
    let far = "99999999999999";
    let cases: [(&str, Option<&str>, [&str; 10]); 4] = [
        (
            "own",
            None,
            [
                "holder",
                "a",
                "token",
                "5",
                "handoff_to",
                "b",
                "handoff_from",
                "a",
                "handoff_until",
                far,
            ],
        ),
        (
            "an end that is not a number",
            None,
            [
                "holder",
                "a",
                "token",
                "5",
                "handoff_to",
                "b",
                "handoff_from",
                "a",
                "handoff_until",
                "soon",
            ],
        ),
        (
            "a field of another name",
            None,
            [
                "holder",
                "a",
                "token",
                "5",
                "handoff_to",
                "b",
                "handoff_from",
                "a",
                "until",
                far,
            ],
        ),
        (
            "a mark beside a lease",
            Some("a"),
            [
                "holder",
                "a",
                "token",
                "5",
                "handoff_to",
                "b",
                "handoff_from",
                "a",
                "handoff_until",
                far,
            ],
        ),
    ];
    for (what, lease, hash) in cases {
        let key = unique_key("mark");
        let companion = companion_key(&key);
        if let Some(holder) = lease {
            server.cli(&["SET", &key, holder, "PX", "60000"]);
        }
        let mut args = vec!["HSET", companion.as_str()];
        args.extend(hash);
        server.cli(&args);
        let before = (
            server.cli(&["DUMP", &key]),
            server.cli(&["DUMP", &companion]),
        );
        let read = store.read(&key).await;
        let mut c = store.join(&key, "c").await.unwrap();
        let acquired = c.try_acquire(Duration::from_secs(60)).await;
        let after = (
            server.cli(&["DUMP", &key]),
            server.cli(&["DUMP", &companion]),
        );
        assert_eq!(before, after, "{what}: changed");
        if what == "own" {
            assert!(matches!(read, Ok(None)), "{what}: {read:?}");
            assert!(
                matches!(&acquired, Ok(Acquire::Reserved(m)) if m.to.as_deref() == Some("b") && m.from == "a"),
                "{what}: {acquired:?}"
            );
        } else {
            assert!(
                matches!(read, Err(Error::ForeignData { .. })),
                "{what}: {read:?}"
            );
            assert!(
                matches!(acquired, Err(Error::ForeignData { .. })),
                "{what}: {acquired:?}"
            );
        }
        server.cli(&["DEL", &key, &companion]);
    }
}

/// A clean `CLUSTER FAILOVER` demotes the master of a held key to a replica while the store's
/// connections to it stay open. redis-rs sends `READONLY` on every node connection, so the
/// demoted master runs Baton's scripts itself and answers `READONLY` instead of redirecting
/// them; the store must then read the slot map again and follow the slot to the new master
/// (found by scripts/chaos, redis-cluster failover seed 1: the election stalled for good).
#[tokio::test(flavor = "multi_thread")]
async fn after_a_cluster_failover_the_store_follows_the_slot_to_the_new_master() {
    let dir = scratch_dir("baton-redis-ha-test");
    let mut cluster = tokio::task::block_in_place(|| RedisHa::start_cluster(&dir))
        .expect("a Redis Cluster with replicas starts");
    let store = RedisStore::open(&cluster.url()).unwrap();
    let observer = RedisStore::open(&cluster.url()).unwrap();
    let ttl = Duration::from_secs(10);
    let key = "failover:jobs";
    let mut a = store.join(key, "a").await.unwrap();
    let Acquire::Acquired(lease) = a.try_acquire(ttl).await.unwrap() else {
        panic!("{key} is free")
    };
    assert!(matches!(
        a.renew(&lease, ttl).await,
        Ok(baton::Renew::Renewed)
    ));
    // A watcher on the key's channel, to see that it hears of changes after the failover.
    let mut changes = observer
        .watch(key)
        .await
        .unwrap()
        .expect("Redis watches keys");

    let what = tokio::task::block_in_place(|| cluster.failover(key)).unwrap();

    // The first call after the failover may meet the demoted master; within a few more the
    // renewal reaches the new master, where the failover replicated the lease.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answers = Vec::new();
    loop {
        let answer = a.renew(&lease, ttl).await;
        let renewed = matches!(answer, Ok(baton::Renew::Renewed));
        answers.push(format!("{answer:?}"));
        if renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {what}, renewals answered {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answers.len() <= 3, "after {what}: {answers:?}");
    // Another store finds it held there, and hears its release.
    let mut b = observer.join(key, "b").await.unwrap();
    let held = b.try_acquire(ttl).await.unwrap();
    assert!(
        matches!(&held, Acquire::Held(r) if r.holder == "a" && r.token == lease.token),
        "{held:?}"
    );
    a.release(&lease).await.unwrap();
    let heard = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut changes),
    )
    .await
    .expect("the release is heard within 5 s");
    assert!(heard.is_some(), "the watch goes on");
    // The other store's connection may still take the demoted node for the master (its read
    // above ran there: a script that only reads runs on a replica). Until that replica has
    // applied the release, an acquire there reads a's lease as it was (replication is
    // asynchronous: CI once saw `Held` by "a" right after the release was heard), which only
    // makes b wait; once it has, the acquire's write meets READONLY and rebuilds the
    // connection, and the next acquire succeeds on the new master.
    let mut answers = Vec::new();
    loop {
        let answer = b.try_acquire(ttl).await;
        let acquired = matches!(answer, Ok(Acquire::Acquired(_)));
        let stale =
            matches!(&answer, Ok(Acquire::Held(r)) if r.holder == "a" && r.token == lease.token);
        answers.push(format!("{answer:?}"));
        if acquired {
            break;
        }
        assert!(
            answers.len() < 10 && (stale || format!("{answer:?}").contains("read-only replica")),
            "after {what}, acquires answered {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
