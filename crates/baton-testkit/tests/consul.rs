//! The Consul store against Baton's fake agent (`baton_testkit::fake_consul`, a fake: no Consul
//! can be installed here): the conformance suite, `consul lock`'s key layout and flags, tokens
//! across the key's deletion, locks of other clients (never taken over, lock-delay honoured),
//! takeover of a crashed Baton leader within one lease, the ACL token (a clear error, never
//! shown), push handoff, an idle follower's requests, a partition, a restart of the agent
//! that keeps its data, and a Python client that follows the Go API's `Lock` step by step as a
//! foreign candidate next to Baton's.
//!
//! Timing bounds are generous on purpose: they check behaviour (push, not polling; never two
//! leaders), not speed.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton::store::consul::{ConsulStore, LOCK_FLAGS};
use baton::{Acquire, BoxError, Error, LeaderElection, LeaseStore, Result};
use baton_testkit::conformance::{Capabilities, ForeignWriter, StoreFactory};
use baton_testkit::fake_consul::client::{self, Reply};
use baton_testkit::fake_consul::{FakeConsul, FakeConsulOptions, FakeConsulProcess};
use baton_testkit::faulty::{FaultyStore, Op};
use baton_testkit::proxy::{FaultProxy, ProxyMode};
use baton_testkit::py_consul::ConsulLockConfig;
use baton_testkit::py_elector::{EventKind, PyElector};
use serde_json::{Value, json};

/// One in-process fake for the whole binary's conformance cases.
fn shared_fake() -> &'static FakeConsul {
    static FAKE: OnceLock<FakeConsul> = OnceLock::new();
    FAKE.get_or_init(|| FakeConsul::serve(FakeConsulOptions::default()))
}

fn addr() -> String {
    shared_fake().addr().to_string()
}

async fn call(addr: &str, method: &str, path: &str, body: &[u8]) -> Reply {
    client::call(addr, method, path, &[], body).await.unwrap()
}

/// Every `store()` is a new store (a new client and a new observation of each key), as another
/// process would have.
struct FakeFactory;

#[async_trait]
impl StoreFactory for FakeFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(Arc::new(ConsulStore::open(&shared_fake().store_url())?))
    }
    fn capabilities(&self) -> Capabilities {
        // Expiry judged from when a store first saw the record's index: a store that reads a
        // lease for the first time waits a whole lease from then.
        Capabilities::new()
            .with_expiry_slack(Duration::from_millis(1500))
            .with_handoff(true)
            .with_shows_handoff(true)
            .with_presence(true)
    }
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        Some(self)
    }
}

#[async_trait]
impl ForeignWriter for FakeFactory {
    async fn plant(&self, key: &str) -> std::result::Result<(), BoxError> {
        // Another program's configuration value, where the lock would be.
        let reply = call(
            &addr(),
            "PUT",
            &format!("/v1/kv/{key}/.lock?flags=0"),
            b"max_conn=10",
        )
        .await;
        if reply.status != 200 {
            return Err(reply.text().into());
        }
        Ok(())
    }
    async fn check_untouched(&self, key: &str) -> std::result::Result<(), String> {
        let reply = call(&addr(), "GET", &format!("/v1/kv/{key}/.lock"), b"").await;
        let entry = &reply.json()[0];
        if client::value_of(entry) == b"max_conn=10"
            && entry["Flags"] == 0
            && entry.get("Session").is_none()
            && entry["CreateIndex"] == entry["ModifyIndex"]
        {
            Ok(())
        } else {
            Err(format!("the pair {key}/.lock was changed: {entry}"))
        }
    }
}

mod conformance {
    baton_testkit::conformance_tests!(super::FakeFactory);
}

fn unique(name: &str) -> String {
    format!("test/{name}-{:08x}", fastrand::u32(..))
}

fn election(url: &str, key: &str, id: &str, lease: Duration) -> LeaderElection {
    let store = ConsulStore::open(url).unwrap();
    LeaderElection::builder(store, key)
        .lease_duration(lease)
        .renew_interval(lease / 4)
        .grace_period(lease / 4)
        .instance_id(id)
        .build()
        .unwrap()
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

async fn pair(addr: &str, key: &str) -> Value {
    let reply = call(addr, "GET", &format!("/v1/kv/{key}/.lock"), b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()[0].clone()
}

async fn session(addr: &str, body: Value) -> String {
    let reply = call(
        addr,
        "PUT",
        "/v1/session/create",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["ID"].as_str().unwrap().to_owned()
}

fn acquired(a: Acquire) -> baton::Lease {
    match a {
        Acquire::Acquired(lease) => lease,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn held(a: Acquire) -> baton::LeaseRecord {
    match a {
        Acquire::Held(record) => record,
        other => panic!("expected Held, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lock_is_consul_locks_key_flags_and_session() {
    let a = addr();
    let key = unique("layout");
    let store = ConsulStore::open(&shared_fake().store_url()).unwrap();
    let mut c = store.join(&key, "web-1").await.unwrap();
    let lease = acquired(c.try_acquire(Duration::from_millis(2500)).await.unwrap());
    let entry = pair(&a, &key).await;
    // `consul lock PREFIX`: the key PREFIX/.lock with the Go API's LockFlagValue.
    assert_eq!(entry["Flags"], LOCK_FLAGS);
    assert_eq!(LOCK_FLAGS, 0x2ddc_cbc0_58a5_0c18);
    let record: Value = serde_json::from_slice(&client::value_of(&entry)).unwrap();
    assert_eq!(
        record,
        json!({"baton": 1, "holder": "web-1", "token": lease.token.get(), "lease_ms": 2500, "renewal": 0})
    );
    assert!(lease.token.get() <= entry["ModifyIndex"].as_u64().unwrap());
    let id = entry["Session"].as_str().unwrap();
    let info = call(&a, "GET", &format!("/v1/session/info/{id}"), b"")
        .await
        .json();
    // The session's TTL covers the lease and Consul's minimum; no lock-delay; release.
    assert_eq!(info[0]["TTL"], "10s");
    assert_eq!(info[0]["LockDelay"], 0);
    assert_eq!(info[0]["Behavior"], "release");
    assert!(info[0]["Name"].as_str().unwrap().contains("web-1"));
    // A renewal rewrites the record (a new ModifyIndex, the same token and LockIndex).
    let before = entry["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        c.renew(&lease, Duration::from_millis(2500)).await.unwrap(),
        baton::Renew::Renewed
    );
    let renewed = pair(&a, &key).await;
    assert!(renewed["ModifyIndex"].as_u64().unwrap() > before);
    assert_eq!(
        (renewed["LockIndex"].clone(), renewed["Session"].clone()),
        (entry["LockIndex"].clone(), entry["Session"].clone())
    );
    // Release: ?release= with the flags and the record kept, then the session destroyed.
    c.release(&lease).await.unwrap();
    let released = pair(&a, &key).await;
    assert!(released.get("Session").is_none());
    assert_eq!(released["Flags"], LOCK_FLAGS);
    let info = call(&a, "GET", &format!("/v1/session/info/{id}"), b"")
        .await
        .json();
    assert_eq!(info, json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_keep_rising_when_the_key_is_deleted() {
    let a = addr();
    let key = unique("deleted");
    let store: Arc<dyn LeaseStore> =
        Arc::new(ConsulStore::open(&shared_fake().store_url()).unwrap());
    let mut seen = Vec::new();
    for _ in 0..3 {
        let mut c = store.join(&key, "a").await.unwrap();
        let lease = acquired(c.try_acquire(Duration::from_secs(5)).await.unwrap());
        seen.push(lease.token);
        c.release(&lease).await.unwrap();
        // Someone deletes the pair: its record (and LockIndex) go with it.
        call(&a, "DELETE", &format!("/v1/kv/{key}/.lock"), b"").await;
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn another_clients_lock_is_held_never_taken_over_and_its_lock_delay_is_kept() {
    let a = addr();
    let key = unique("other-client");
    // What `consul lock` does: a session with a TTL and a lock-delay, the lock with no value.
    let theirs = session(
        &a,
        json!({"Name": "Consul lock", "TTL": "10s", "LockDelay": "1s"}),
    )
    .await;
    let took = call(
        &a,
        "PUT",
        &format!("/v1/kv/{key}/.lock?acquire={theirs}&flags={LOCK_FLAGS}"),
        b"",
    )
    .await;
    assert_eq!(took.json(), json!(true));
    let store = ConsulStore::open(&shared_fake().store_url()).unwrap();
    let record = store.read(&key).await.unwrap().unwrap();
    assert_eq!(record.holder, format!("session {theirs}"));
    assert_eq!(record.token.get(), 0);
    // At most 2 x its session's TTL.
    assert_eq!(record.ttl, Duration::from_secs(20));
    let mut c = store.join(&key, "b").await.unwrap();
    let lease = Duration::from_millis(200);
    assert_eq!(
        held(c.try_acquire(lease).await.unwrap()).holder,
        format!("session {theirs}")
    );
    // Well past Baton's lease: still theirs (only Consul ends their session).
    tokio::time::sleep(Duration::from_millis(600)).await;
    held(c.try_acquire(lease).await.unwrap());
    assert_eq!(pair(&a, &key).await["Session"], json!(theirs));
    // Their session ends: its 1 s lock-delay holds Baton off, then Baton takes the lock.
    call(&a, "PUT", &format!("/v1/session/destroy/{theirs}"), b"").await;
    let delayed = held(c.try_acquire(lease).await.unwrap());
    assert!(delayed.ttl <= lease, "{delayed:?}");
    assert!(
        wait_until_acquired(&mut *c, lease, Duration::from_secs(3)).await,
        "Baton acquires once the lock-delay has passed"
    );
}

async fn wait_until_acquired(c: &mut dyn baton::Candidacy, ttl: Duration, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Acquire::Acquired(_) = c.try_acquire(ttl).await.unwrap() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_baton_leader_is_taken_over_one_lease_later_in_one_transaction() {
    let a = addr();
    let key = unique("crash");
    let lease = Duration::from_millis(500);
    let store = ConsulStore::open(&shared_fake().store_url()).unwrap();
    let mut dead = store.join(&key, "dead").await.unwrap();
    let first = acquired(dead.try_acquire(lease).await.unwrap());
    let old_session = pair(&a, &key).await["Session"].as_str().unwrap().to_owned();
    // It crashes: no release, its session lives on in Consul (TTL 10 s, gone after 20 s).
    drop(dead);
    let other = ConsulStore::open(&shared_fake().store_url()).unwrap();
    let mut next = other.join(&key, "next").await.unwrap();
    let seen = Instant::now();
    held(next.try_acquire(lease).await.unwrap());
    let before = shared_fake().requests();
    assert!(wait_until_acquired(&mut *next, lease, Duration::from_secs(3)).await);
    assert!(
        seen.elapsed() >= lease,
        "not before the lease ran out: {:?}",
        seen.elapsed()
    );
    assert!(
        seen.elapsed() < Duration::from_secs(5),
        "long before Consul's 2 x TTL"
    );
    let entry = pair(&a, &key).await;
    assert_ne!(entry["Session"], json!(old_session));
    let info = call(&a, "GET", &format!("/v1/session/info/{old_session}"), b"")
        .await
        .json();
    assert_eq!(
        info,
        json!([]),
        "the crashed leader's session was destroyed"
    );
    let record: Value = serde_json::from_slice(&client::value_of(&entry)).unwrap();
    assert!(record["token"].as_u64().unwrap() > first.token.get());
    let during = shared_fake().requests().since(&before);
    assert!(during.0.values().any(|verbs| verbs.get("txn").is_some()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_acl_token_is_sent_and_never_shown() {
    let fake = FakeConsul::serve(FakeConsulOptions {
        token: Some("s3cret-token".into()),
        ..FakeConsulOptions::default()
    });
    let key = unique("acl");
    let good = ConsulStore::open(&fake.store_url()).unwrap();
    let mut c = good.join(&key, "a").await.unwrap();
    acquired(c.try_acquire(Duration::from_secs(2)).await.unwrap());
    for url in [
        format!("consul://{}?token=wrong-token", fake.addr()),
        format!("consul://{}", fake.addr()),
    ] {
        let store = ConsulStore::open(&url).unwrap();
        assert!(!format!("{store:?}").contains("wrong-token"));
        match store.read(&key).await {
            Err(Error::Config(msg)) => {
                assert!(msg.contains("refused the ACL token"), "{msg}");
                assert!(msg.contains("CONSUL_HTTP_TOKEN"), "{msg}");
                assert!(
                    !msg.contains("wrong-token") && !msg.contains("s3cret"),
                    "{msg}"
                );
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
        let mut c = store.join(&key, "b").await.unwrap();
        match c.try_acquire(Duration::from_secs(2)).await {
            Err(Error::Config(msg)) => assert!(!msg.contains("wrong-token"), "{msg}"),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
    let requests = format!("{:?}", fake.requests());
    assert!(
        !requests.contains("s3cret") && !requests.contains("wrong-token"),
        "{requests}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_agent_is_unavailable_naming_where() {
    let port = baton_testkit::servers::free_port();
    let store = ConsulStore::open(&format!("consul://127.0.0.1:{port}?token=hunter2")).unwrap();
    match store.read("k").await {
        Err(e @ Error::Unavailable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_handoff_is_pushed_not_polled() {
    let url = shared_fake().store_url();
    let key = unique("handoff");
    // A 10 s lease: a follower that polled would take seconds, not milliseconds.
    let lease = Duration::from_secs(10);
    let a = election(&url, &key, "a", lease);
    let b = election(&url, &key, "b", lease);
    let c = election(&url, &key, "c", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    c.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || b.current_leader_id().as_deref()
            == Some("a"))
        .await
    );
    let first = a.fencing_token().unwrap();
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || b.is_leader() || c.is_leader()).await,
        "a follower leads within 2 s of a release"
    );
    let (next, rest) = if b.is_leader() { (&b, &c) } else { (&c, &b) };
    assert!(next.fencing_token().unwrap() > first);
    assert!(!rest.is_leader());
    assert!(
        wait_until(Duration::from_secs(2), || rest
            .current_leader_id()
            .as_deref()
            == Some(next.candidate_id()))
        .await
    );
    b.stop().await.unwrap();
    c.stop().await.unwrap();
}

/// The next change on `changes` that is not a renewal, within 3 s.
async fn next_handoff_change(changes: &mut baton::Changes) -> baton::Change {
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match changes.next().await.expect("the watch goes on") {
                baton::Change::Renewed { .. } => {}
                change => return change,
            }
        }
    })
    .await
    .expect("a change within 3 s")
}

/// The changes `changes` reports until the key is handed to `to`: its mark (`HandedOver`) or,
/// when a blocking query answered only after `to` had taken the key, its acquire. Consul
/// answers a blocking query with the key's state, not its history, so two writes that land
/// between two of the observer's queries (under load: the mark and the named candidate's
/// acquire, pushed to it at once) come as one change.
async fn changes_until_handed_to(changes: &mut baton::Changes, to: &str) -> Vec<baton::Change> {
    let mut seen = vec![];
    loop {
        let change = next_handoff_change(changes).await;
        let done = match &change {
            baton::Change::HandedOver { to: Some(named) } => named == to,
            baton::Change::Acquired { holder } => holder == to,
            _ => false,
        };
        seen.push(change);
        if done {
            return seen;
        }
    }
}

/// The lock's value, as JSON.
async fn value(addr: &str, key: &str) -> Value {
    let pair = pair(addr, key).await;
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        pair["Value"].as_str().unwrap_or(""),
    )
    .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_and_a_request_are_fields_of_the_value_and_are_pushed() {
    let a = addr();
    let key = unique("handoff-fields");
    // A 10 s lease: anything that waited for expiry or a renewal would take seconds.
    let lease = Duration::from_secs(10);
    let build = |id: &str| {
        LeaderElection::builder(ConsulStore::open(&shared_fake().store_url()).unwrap(), &key)
            .lease_duration(lease)
            .renew_interval(lease / 4)
            .grace_period(lease / 4)
            .instance_id(id)
            .listen_for_handoff_requests(true)
            .build()
            .unwrap()
    };
    let (ea, eb, ec) = (build("a"), build("b"), build("c"));
    ea.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || ea.is_leader()).await);
    eb.start().await.unwrap();
    ec.start().await.unwrap();
    let observer = ConsulStore::open(&shared_fake().store_url()).unwrap();
    let mut changes = observer.watch(&key).await.unwrap().unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || eb.current_leader_id().as_deref()
            == Some("a")
            && ec.current_leader_id().as_deref() == Some("a"))
        .await
    );

    let first = ea.fencing_token().unwrap();
    ea.hand_over(Some("c")).await.unwrap();
    let seen = changes_until_handed_to(&mut changes, "c").await;
    assert!(
        seen.len() == 1
            || seen.first()
                == Some(&baton::Change::HandedOver {
                    to: Some("c".into())
                }),
        "the mark, then c's acquire, or both as one change: {seen:?}"
    );
    assert!(
        wait_until(Duration::from_secs(2), || ec.is_leader()).await,
        "the named follower leads within 2 s"
    );
    assert!(!ea.is_leader() && !eb.is_leader());
    assert!(ec.fencing_token().unwrap() > first);
    let taken = value(&a, &key).await;
    assert_eq!(taken["holder"], "c");
    assert!(
        taken.get("mark_to").is_none(),
        "the acquire clears the mark: {taken}"
    );
    let session = pair(&a, &key).await["Session"].clone();

    // A request: a field of the held lock's value, pushed to the leader, which hands over.
    let asked = observer.request_handoff(&key, Some("b")).await.unwrap();
    assert_eq!(asked.map(|r| r.holder).as_deref(), Some("c"));
    // The request, then the mark and b's acquire; consecutive ones may come as one change.
    // (c's acquire comes first when the first handoff's mark came as a change of its own.)
    let c_acquired = baton::Change::Acquired { holder: "c".into() };
    let seen: Vec<_> = changes_until_handed_to(&mut changes, "b")
        .await
        .into_iter()
        .filter(|change| change != &c_acquired)
        .collect();
    let requested = baton::Change::HandoffRequested {
        to: Some("b".into()),
    };
    let after_request = usize::from(seen.first() == Some(&requested));
    assert!(
        seen[after_request..].iter().all(|change| matches!(
            change,
            baton::Change::HandedOver { to: Some(to) } if to == "b"
        ) || matches!(change, baton::Change::Acquired { holder } if holder == "b")),
        "{seen:?}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || eb.is_leader()).await,
        "the leader hears of the request by push and hands over"
    );
    assert!(!ec.is_leader());
    assert_ne!(pair(&a, &key).await["Session"], session);
    for e in [&ea, &eb, &ec] {
        e.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_keeps_the_session_and_another_clients_lock_takes_none() {
    let a = addr();
    let key = unique("request");
    let store = ConsulStore::open(&shared_fake().store_url()).unwrap();
    let mut c = store.join(&key, "web-1").await.unwrap();
    let lease = acquired(c.try_acquire(Duration::from_secs(10)).await.unwrap());
    let before = pair(&a, &key).await;
    let asked = store.request_handoff(&key, None).await.unwrap().unwrap();
    assert_eq!((asked.holder.as_str(), asked.token), ("web-1", lease.token));
    let after = pair(&a, &key).await;
    assert_eq!(
        after["Session"], before["Session"],
        "the session is untouched"
    );
    assert_eq!(after["LockIndex"], before["LockIndex"]);
    assert_eq!(after["Flags"], json!(LOCK_FLAGS));
    assert_eq!(value(&a, &key).await["request_to"], "");
    assert_eq!(
        c.renew(&lease, Duration::from_secs(10)).await.unwrap(),
        baton::Renew::HandoffRequested { to: None }
    );
    // The renewal keeps the request until the handoff; the release clears it.
    assert_eq!(value(&a, &key).await["request_to"], "");
    c.release(&lease).await.unwrap();
    assert!(value(&a, &key).await.get("request_to").is_none());

    // `consul lock`'s lock: its value is not Baton's to write.
    let other = unique("request-other");
    let theirs = session(&a, json!({"Name": "Consul lock", "TTL": "10s"})).await;
    let took = call(
        &a,
        "PUT",
        &format!("/v1/kv/{other}/.lock?acquire={theirs}&flags={LOCK_FLAGS}"),
        b"",
    )
    .await;
    assert_eq!(took.json(), json!(true));
    let planted = pair(&a, &other).await;
    assert!(matches!(
        store.request_handoff(&other, Some("web-1")).await,
        Err(Error::Config(m)) if m.contains("not a Baton candidate")
    ));
    assert_eq!(pair(&a, &other).await, planted);
    call(&a, "PUT", &format!("/v1/session/destroy/{theirs}"), b"").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_follower_sends_only_its_blocking_queries() {
    let fake = shared_fake();
    let key = unique("idle");
    let lease = Duration::from_secs(1);
    let a = election(
        &format!("consul://{}?token=idle-a", fake.addr()),
        &key,
        "a",
        lease,
    );
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let store = FaultyStore::new(Arc::new(
        ConsulStore::open(&format!("consul://{}?token=idle-b", fake.addr())).unwrap(),
    ));
    let calls = store.control();
    let b = LeaderElection::builder(store, &key)
        .lease_duration(lease)
        .renew_interval(lease / 4)
        .grace_period(lease / 4)
        .instance_id("b")
        .build()
        .unwrap();
    b.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || b.current_leader_id().as_deref()
            == Some("a"))
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = (calls.calls(Op::Acquire), calls.calls(Op::Read));
    let requests = fake.requests();
    // Five leases of a renewing: b hears every renewal through its blocking query.
    tokio::time::sleep(lease * 5).await;
    assert_eq!(
        (calls.calls(Op::Acquire), calls.calls(Op::Read)),
        before,
        "an idle follower made store calls while the leader renewed"
    );
    let sent = fake.requests().since(&requests);
    assert!(sent.get("idle-b", "kv-block") > 0, "{sent:?}");
    assert_eq!(
        sent.0.get("idle-b").map_or(0, |v| v
            .iter()
            .filter(|(verb, _)| verb.as_str() != "kv-block")
            .map(|(_, n)| n)
            .sum::<u64>()),
        0,
        "{}",
        sent.describe("idle-b")
    );
    assert!(!b.is_leader());
    a.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(2), || b.is_leader()).await);
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_leader_steps_down_and_a_follower_takes_over_one_lease_later() {
    let fake = shared_fake();
    let key = unique("partition");
    let lease = Duration::from_secs(2);
    let proxy = FaultProxy::start(fake.addr()).unwrap();
    let a = election(&format!("consul://{}", proxy.addr()), &key, "a", lease);
    let b = election(&fake.store_url(), &key, "b", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!b.is_leader());
    let cut = Instant::now();
    proxy.set_mode(ProxyMode::Blackhole);
    assert!(
        wait_until(lease + Duration::from_secs(3), || b.is_leader()).await,
        "b takes over once a's lease has run out"
    );
    let took_over = cut.elapsed();
    assert!(!a.is_leader(), "a stepped down before b took over");
    assert!(
        took_over >= lease - lease / 4,
        "b took over after {took_over:?}"
    );
    proxy.set_mode(ProxyMode::Pass);
    a.stop().await.ok();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_of_the_agent_keeps_the_lock_and_tokens_keep_rising() {
    let mut fake = FakeConsulProcess::start();
    let key = unique("restart");
    let lease = Duration::from_secs(3);
    let url = fake.store_url();
    let a = election(&url, &key, "a", lease);
    let b = election(&url, &key, "b", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    let first = a.fencing_token().unwrap();
    fake.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.restart();
    tokio::time::sleep(lease).await;
    assert!(
        a.is_leader() ^ b.is_leader(),
        "exactly one leads after the restart"
    );
    let (leader, follower) = if a.is_leader() { (&a, &b) } else { (&b, &a) };
    assert!(leader.fencing_token().unwrap() >= first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let token = leader.fencing_token().unwrap();
    leader.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || follower.is_leader()).await,
        "the follower's blocking query came back after the restart"
    );
    assert!(follower.fencing_token().unwrap() > token);
    follower.stop().await.unwrap();
}

/// Leadership intervals on the boot clock, from events: `(candidate, start, end)`.
type Intervals = Vec<(String, Duration, Duration)>;

/// Records a Baton election's terms until the returned handle is asked for them.
fn record_terms(election: &LeaderElection) -> tokio::task::JoinHandle<Intervals> {
    let mut events = election.subscribe();
    tokio::spawn(async move {
        let mut terms = Vec::new();
        let mut start = None;
        while let Some(event) = events.recv().await {
            match event {
                baton::Event::BecameLeader { candidate, .. } => {
                    start = Some((candidate, baton::boot_time()));
                }
                baton::Event::LostLeadership { .. } => {
                    if let Some((candidate, began)) = start.take() {
                        terms.push((candidate, began, baton::boot_time()));
                    }
                }
                _ => {}
            }
        }
        if let Some((candidate, began)) = start {
            terms.push((candidate, began, baton::boot_time()));
        }
        terms
    })
}

/// Drains a foreign candidate's events into terms; a term still open ends at `end`.
fn foreign_terms(
    py: &PyElector,
    end: Duration,
    terms: &mut Intervals,
    open: &mut Option<Duration>,
) {
    while let Some(event) = py.next_event(Duration::ZERO) {
        match event.kind {
            EventKind::BecameLeader => *open = Some(event.boot_time),
            EventKind::LostLeadership => {
                if let Some(start) = open.take() {
                    terms.push((event.candidate, start, event.boot_time));
                }
            }
        }
    }
    if let Some(start) = open.take() {
        terms.push((py.identity().to_owned(), start, end));
    }
}

/// A Python client that follows the Go API's `Lock` step by step (`consul_lock.py`) and
/// Baton's candidates on one lock: each side sees the other's lock as held, hand-offs go both
/// ways (a release each way; a crash of the Python leader, which only Consul's 2 x TTL and its
/// lock-delay end), and no two terms ever overlap.
#[tokio::test(flavor = "multi_thread")]
async fn a_go_lock_client_and_batons_candidates_never_lead_at_once() {
    let fake = shared_fake();
    let key = unique("go-lock");
    let lease = Duration::from_secs(4);
    let config = |id: &str| ConsulLockConfig::new(&fake.addr().to_string(), &key, id);
    let mut all: Intervals = Vec::new();

    // 1. The Go-style client leads; Baton's candidates see it and wait.
    let mut py1 = config("py-1").spawn();
    let event = py1
        .wait_for(EventKind::BecameLeader, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("py-1 never led: {}", py1.stderr()));
    let mut py1_open = Some(event.boot_time);
    let url = fake.store_url();
    let a = election(&url, &key, "baton-a", lease);
    let b = election(&url, &key, "baton-b", lease);
    let (a_terms, b_terms) = (record_terms(&a), record_terms(&b));
    a.start().await.unwrap();
    b.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || a.current_leader_id().as_deref()
            == Some("py-1"))
        .await
    );
    tokio::time::sleep(lease + Duration::from_secs(1)).await;
    assert!(
        !a.is_leader() && !b.is_leader(),
        "Baton took a lock the Go client holds"
    );

    // 2. It stops (Unlock: release, destroy); a Baton candidate takes over through its query.
    let stopped = Instant::now();
    py1.terminate();
    assert!(
        wait_until(Duration::from_secs(3), || a.is_leader() || b.is_leader()).await,
        "Baton takes over after the Go client's release: {}",
        py1.stderr()
    );
    println!("Go lock -> Baton handoff: {:?}", stopped.elapsed());
    foreign_terms(&py1, baton::boot_time(), &mut all, &mut py1_open);

    // 3. A new Go-style client sees Baton's lock as held and blocks.
    let mut py2 = config("py-2").spawn();
    tokio::time::sleep(lease + Duration::from_secs(2)).await;
    assert!(
        py2.next_event(Duration::ZERO).is_none(),
        "the Go client took a lock Baton holds"
    );

    // 4. Baton's candidates stop (releasing); the Go client's blocking query wakes it.
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let released = Instant::now();
    let event = py2
        .wait_for(EventKind::BecameLeader, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("py-2 never led: {}", py2.stderr()));
    let mut py2_open = Some(event.boot_time);
    println!("Baton -> Go lock handoff: {:?}", released.elapsed());

    // 5. A Baton candidate waits; the Go client crashes. Its session lives until Consul's
    //    reaper ends it (2 x 10 s after its last renewal), then its 1 s lock-delay; only then
    //    does Baton take the lock: never while the Go client may still believe it holds it.
    let c = election(&url, &key, "baton-c", lease);
    let c_terms = record_terms(&c);
    c.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!c.is_leader());
    py2.kill();
    let crashed = baton::boot_time();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || c.is_leader()).await,
        "Baton takes over from a crashed Go client once Consul ends its session"
    );
    let took = killed.elapsed();
    println!("Go lock crash -> Baton failover: {took:?}");
    assert!(
        took >= Duration::from_secs(10),
        "not before Consul ended the session: {took:?}"
    );
    foreign_terms(&py2, crashed, &mut all, &mut py2_open);
    c.stop().await.unwrap();
    drop((a, b, c));
    for terms in [a_terms, b_terms, c_terms] {
        all.extend(terms.await.unwrap());
    }

    all.sort_by_key(|t| t.1);
    assert!(all.len() >= 4, "{all:?}");
    assert!(
        all.iter().any(|t| t.0.starts_with("py-")) && all.iter().any(|t| t.0.starts_with("baton-"))
    );
    for pair in all.windows(2) {
        assert!(
            pair[0].2 <= pair[1].1,
            "two leaders at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// A TLS front for the shared fake: terminates TLS with `files` and passes the bytes on.
async fn tls_front(files: &baton_testkit::servers::TlsFiles) -> std::net::SocketAddr {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .collect::<std::result::Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = shared_fake().addr();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn consuls_urls_verify_the_agent_with_the_given_ca() {
    let dir = baton_testkit::servers::scratch_dir("baton-consul-tls");
    let ca = baton_testkit::tls::TestCa::new("baton consul test CA");
    let files = ca.server_files(&dir, &["127.0.0.1"]);
    let front = tls_front(&files).await;
    let key = unique("tls");
    let url = format!("consuls://{front}?ca={}&token=hunter2", files.ca.display());
    let store = ConsulStore::open(&url).unwrap();
    let mut c = store.join(&key, "a").await.unwrap();
    let lease = acquired(c.try_acquire(Duration::from_secs(2)).await.unwrap());
    assert_eq!(store.read(&key).await.unwrap().unwrap().holder, "a");
    c.release(&lease).await.unwrap();
    // Without the CA, the system's trust store does not know the agent's certificate.
    let untrusted = ConsulStore::open(&format!("consuls://{front}?token=hunter2")).unwrap();
    match untrusted.read(&key).await {
        Err(Error::Config(msg)) => {
            assert!(msg.contains("?ca=PATH"), "{msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // Files that cannot be read are configuration errors at once, naming the file.
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    for (url, words) in [
        (
            format!("consuls://{front}?ca={}", garbage.display()),
            "holds no certificate",
        ),
        (
            format!(
                "consuls://{front}?ca={}&cert=/nonexistent/c.pem&key=/nonexistent/k.pem",
                files.ca.display()
            ),
            "/nonexistent/c.pem",
        ),
    ] {
        match ConsulStore::open(&url) {
            Err(Error::Config(msg)) => assert!(msg.contains(words), "{msg}"),
            other => panic!("{url}: expected a configuration error, got {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Presence records are pairs of their own under `PREFIX/.candidates/`, never the lock; a pair
/// in that folder that Baton did not write is foreign data and stays as it was.
#[tokio::test]
async fn presence_records_are_pairs_of_their_own_and_foreign_ones_are_kept() {
    let addr = addr();
    let store = ConsulStore::open(&shared_fake().store_url()).unwrap();
    let key = unique("presence");
    let live = store
        .announce(&key, "web/1", 5, Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].candidate.as_str(), live[0].priority), ("web/1", 5));
    let reply = call(&addr, "GET", &format!("/v1/kv/{key}?recurse"), b"").await;
    let entries = reply.json();
    let keys: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    let record = format!("{key}/.candidates/web%2F1");
    assert_eq!(keys, [record.as_str()], "no write on the lock");
    let value: Value = serde_json::from_slice(&client::value_of(&entries[0])).unwrap();
    assert_eq!(value["candidate"], "web/1");
    assert_eq!(value["priority"], 5);
    assert_eq!(value["ttl_ms"], 15000);
    assert!(entries[0].get("Session").is_none_or(Value::is_null));
    // A second announce is a new write (a new ModifyIndex), so observers see it renewed.
    let first = entries[0]["ModifyIndex"].as_u64().unwrap();
    store
        .announce(&key, "web/1", 5, Duration::from_secs(15))
        .await
        .unwrap();
    let reply = call(
        &addr,
        "GET",
        &format!("/v1/kv/{}", record.replace('%', "%25")),
        b"",
    )
    .await;
    assert!(reply.json()[0]["ModifyIndex"].as_u64().unwrap() > first);
    store.withdraw(&key, "web/1").await.unwrap();
    let reply = call(&addr, "GET", &format!("/v1/kv/{key}?recurse"), b"").await;
    assert_eq!(reply.status, 404, "{}", reply.text());

    // Another program's value in the folder.
    let planted = format!("/v1/kv/{key}/.candidates/web-2");
    assert_eq!(
        call(&addr, "PUT", &planted, b"max_conn=10").await.status,
        200
    );
    match store.candidates(&key).await {
        Err(Error::ForeignData { .. }) => {}
        other => panic!("a planted pair must be foreign data, not {other:?}"),
    }
    match store.withdraw(&key, "web-2").await {
        Err(Error::ForeignData { .. }) => {}
        other => panic!("a planted pair must be foreign data, not {other:?}"),
    }
    match store
        .announce(&key, "web-2", 0, Duration::from_secs(15))
        .await
    {
        Err(Error::ForeignData { .. }) => {}
        other => panic!("a planted pair must be foreign data, not {other:?}"),
    }
    let entry = &call(&addr, "GET", &planted, b"").await.json()[0];
    assert_eq!(client::value_of(entry), b"max_conn=10");
    assert_eq!(entry["CreateIndex"], entry["ModifyIndex"], "never written");
}

/// A record nobody renewed for long (its candidate was killed, and nobody deleted it) is not
/// alive for a process that reads it for the first time, and a candidate's announce deletes it.
#[tokio::test]
async fn a_presence_record_written_long_ago_is_gone_and_deleted() {
    let addr = addr();
    let key = unique("presence-old");
    let ghost = format!("/v1/kv/{key}/.candidates/ghost");
    let value = br#"{"baton_presence":1,"candidate":"ghost","priority":3,"ttl_ms":15000,"renewal":7,"written_ms":1577836800000}"#;
    assert_eq!(call(&addr, "PUT", &ghost, value).await.status, 200);
    let store = ConsulStore::open(&shared_fake().store_url()).unwrap();
    assert_eq!(store.candidates(&key).await.unwrap(), Some(Vec::new()));
    let live = store
        .announce(&key, "web-1", 0, Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(call(&addr, "GET", &ghost, b"").await.status, 404);
    store.withdraw(&key, "web-1").await.unwrap();
}
