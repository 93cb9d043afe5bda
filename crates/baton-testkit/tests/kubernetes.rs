//! The Kubernetes Lease store against Baton's fake API server (`baton_testkit::fake_k8s`, a
//! fake: no real API server can be installed here): the conformance suite, client-go's record
//! byte for byte, tokens across the Lease's deletion, credentials, push handoff, an idle
//! follower's requests, a restart of the API server that keeps its objects, `kubectl`, and the
//! Python `kubernetes` client's elector as a foreign candidate next to Baton's.
//!
//! Timing bounds are generous on purpose: they check behaviour (push, not polling; never two
//! leaders), not speed.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton::store::kubernetes::KubernetesStore;
use baton::{BoxError, Error, LeaderElection, LeaseStore, Result};
use baton_testkit::conformance::{Capabilities, ForeignWriter, StoreFactory};
use baton_testkit::fake_k8s::{FakeK8s, FakeK8sOptions, FakeK8sProcess};
use baton_testkit::faulty::{FaultyStore, Op};
use baton_testkit::proxy::{FaultProxy, ProxyMode};
use baton_testkit::servers::scratch_dir;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, PostParams};

/// One in-process fake for the whole binary's conformance cases, with short bookmarks.
fn shared_fake() -> &'static FakeK8s {
    static FAKE: OnceLock<FakeK8s> = OnceLock::new();
    FAKE.get_or_init(|| {
        FakeK8s::serve(FakeK8sOptions {
            bookmark_interval: Duration::from_millis(200),
            ..FakeK8sOptions::default()
        })
    })
}

fn url_of(base: &str) -> String {
    format!(
        "kubernetes+http://{}?namespace=default",
        base.trim_start_matches("http://")
    )
}

/// A kube client of the test's own, to plant, read and delete Leases behind Baton's back.
fn leases(base: &str) -> Api<Lease> {
    let config = kube::Config::new(base.parse().unwrap());
    Api::namespaced(kube::Client::try_from(config).unwrap(), "default")
}

/// Every `store()` is a new store (a new client and a new observation of each Lease), as
/// another process would have.
struct FakeFactory;

#[async_trait]
impl StoreFactory for FakeFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(Arc::new(KubernetesStore::open(&url_of(
            &shared_fake().url(),
        ))?))
    }
    fn capabilities(&self) -> Capabilities {
        // Whole-second leaseDurationSeconds, and expiry judged from when a store first saw the
        // record: a store that reads a lease for the first time waits a whole lease from then.
        Capabilities::new()
            .with_min_ttl(Duration::from_secs(1))
            .with_expiry_slack(Duration::from_millis(2500))
    }
    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        Some(self)
    }
}

#[async_trait]
impl ForeignWriter for FakeFactory {
    async fn plant(&self, key: &str) -> std::result::Result<(), BoxError> {
        // A node-heartbeat-like Lease: a holder, but no lease duration.
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": key},
            "spec": {"holderIdentity": "node-1", "renewTime": "2026-12-06T15:00:00.000000Z"}
        }))?;
        leases(&shared_fake().url())
            .create(&PostParams::default(), &lease)
            .await?;
        Ok(())
    }
    async fn check_untouched(&self, key: &str) -> std::result::Result<(), String> {
        let lease = leases(&shared_fake().url())
            .get(key)
            .await
            .map_err(|e| e.to_string())?;
        let spec = lease.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() == Some("node-1")
            && spec.lease_duration_seconds.is_none()
            && lease.metadata.annotations.is_none_or(|a| a.is_empty())
        {
            Ok(())
        } else {
            Err(format!("the Lease {key} was changed: {spec:?}"))
        }
    }
}

mod conformance {
    baton_testkit::conformance_tests!(super::FakeFactory);
}

fn unique(name: &str) -> String {
    format!("test-{name}-{:08x}", fastrand::u32(..))
}

fn election(url: &str, key: &str, id: &str, lease: Duration) -> LeaderElection {
    let store = KubernetesStore::open(url).unwrap();
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

/// The Lease as JSON, as the API server returns it.
async fn raw(base: &str, key: &str) -> serde_json::Value {
    let client = kube::Client::try_from(kube::Config::new(base.parse().unwrap())).unwrap();
    let request = http::Request::get(format!(
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/{key}"
    ))
    .body(Vec::new())
    .unwrap();
    let text = client.request_text(request).await.unwrap();
    serde_json::from_str(&text).unwrap()
}

fn is_micro_time(v: &serde_json::Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    // 2026-12-06T15:00:00.123456Z: exactly six fractional digits.
    s.len() == 27 && s.as_bytes()[19] == b'.' && s.ends_with('Z') && s[20..26].bytes().all(|b| b.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_record_is_client_gos() {
    let base = shared_fake().url();
    let key = unique("record");
    let a = election(&url_of(&base), &key, "a", Duration::from_millis(2500));
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let lease = raw(&base, &key).await;
    let spec = &lease["spec"];
    assert_eq!(spec["holderIdentity"], "a");
    // 2.5 s, rounded up to whole seconds: the store never frees a lease before the deadline.
    assert_eq!(spec["leaseDurationSeconds"], 3);
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(is_micro_time(&spec["acquireTime"]), "{spec}");
    assert!(is_micro_time(&spec["renewTime"]), "{spec}");
    let token = a.fencing_token().unwrap().get();
    assert_eq!(
        lease["metadata"]["annotations"]["baton.dev/fencing-token"],
        token.to_string()
    );
    // Minted from the resourceVersion the acquire read: at most the acquiring write's.
    let written: u64 = lease["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(token > 0 && token <= written, "token {token}, resourceVersion {written}");
    a.stop().await.unwrap();
    // client-go's ReleaseOnCancel: no holder, a 1 s lease, transitions kept.
    let spec = raw(&base, &key).await["spec"].clone();
    assert_eq!(spec["holderIdentity"], "");
    assert_eq!(spec["leaseDurationSeconds"], 1);
    assert_eq!(spec["leaseTransitions"], 0);
    assert!(is_micro_time(&spec["renewTime"]), "{spec}");
    // The next acquisition counts a transition.
    let b = election(&url_of(&base), &key, "b", Duration::from_secs(3));
    b.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || b.is_leader()).await);
    assert_eq!(raw(&base, &key).await["spec"]["leaseTransitions"], 1);
    assert!(b.fencing_token().unwrap().get() > token);
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_keep_rising_when_the_lease_is_deleted_and_created_again() {
    let base = shared_fake().url();
    let key = unique("deleted");
    let store: Arc<dyn LeaseStore> = Arc::new(KubernetesStore::open(&url_of(&base)).unwrap());
    let mut seen = Vec::new();
    for round in 0..3 {
        let mut c = store.join(&key, "a").await.unwrap();
        let lease = match c.try_acquire(Duration::from_secs(5)).await.unwrap() {
            baton::Acquire::Acquired(lease) => lease,
            other => panic!("round {round}: {other:?}"),
        };
        seen.push(lease.token);
        c.release(&lease).await.unwrap();
        // Someone deletes the Lease: its annotations and leaseTransitions go with it.
        leases(&base)
            .delete(&key, &DeleteParams::default())
            .await
            .unwrap();
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_come_from_the_kubeconfig_and_a_wrong_token_is_a_clear_error() {
    let fake = FakeK8s::serve(FakeK8sOptions {
        token: Some("s3cret-token".into()),
        ..FakeK8sOptions::default()
    });
    let dir = scratch_dir("baton-k8s-kubeconfig");
    let good = dir.join("good");
    fake.write_kubeconfig(&good).unwrap();
    let key = unique("auth");
    let store = KubernetesStore::open(&format!("kubernetes:?kubeconfig={}", good.display())).unwrap();
    let mut c = store.join(&key, "a").await.unwrap();
    assert!(matches!(
        c.try_acquire(Duration::from_secs(5)).await.unwrap(),
        baton::Acquire::Acquired(_)
    ));
    let bad = dir.join("bad");
    std::fs::write(&bad, baton_testkit::fake_k8s::kubeconfig(&fake.url(), Some("wrong"))).unwrap();
    let store = KubernetesStore::open(&format!("kubernetes:?kubeconfig={}", bad.display())).unwrap();
    match store.read(&key).await {
        Err(Error::Config(msg)) => {
            assert!(msg.contains("credentials"), "{msg}");
            assert!(!msg.contains("wrong"), "{msg}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    // No credentials at all: forbidden, and the fix names the verbs to grant.
    let store = KubernetesStore::open(&url_of(&fake.url())).unwrap();
    match store.read(&key).await {
        Err(Error::Config(msg)) => assert!(msg.contains("grant get, list, watch"), "{msg}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let missing = KubernetesStore::open("kubernetes:?kubeconfig=/nonexistent/kubeconfig").unwrap();
    match missing.read(&key).await {
        Err(Error::Config(msg)) => assert!(msg.contains("/nonexistent/kubeconfig"), "{msg}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_key_is_a_clear_error() {
    let store = KubernetesStore::open(&url_of(&shared_fake().url())).unwrap();
    match store.join("My_Job", "a").await {
        Err(Error::Config(msg)) => assert!(msg.contains("Lease name"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_handoff_is_pushed_not_polled() {
    let base = shared_fake().url();
    let key = unique("handoff");
    // A 10 s lease: a follower that polled would take seconds, not milliseconds.
    let lease = Duration::from_secs(10);
    let a = election(&url_of(&base), &key, "a", lease);
    let b = election(&url_of(&base), &key, "b", lease);
    let c = election(&url_of(&base), &key, "c", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    c.start().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || b.current_leader_id().as_deref() == Some("a")).await
    );
    let first = a.fencing_token().unwrap();
    let stopped = Instant::now();
    a.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || b.is_leader() || c.is_leader()).await,
        "a follower leads within 2 s of a release"
    );
    println!("handoff: {:?}", stopped.elapsed());
    let (next, rest) = if b.is_leader() { (&b, &c) } else { (&c, &b) };
    assert!(next.fencing_token().unwrap() > first);
    assert!(!rest.is_leader());
    assert!(
        wait_until(Duration::from_secs(2), || rest.current_leader_id().as_deref()
            == Some(next.candidate_id()))
        .await
    );
    b.stop().await.unwrap();
    c.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_leader_steps_down_and_a_follower_takes_over_one_lease_later() {
    let fake = shared_fake();
    let key = unique("partition");
    let lease = Duration::from_secs(2);
    let proxy = FaultProxy::start(fake.addr()).unwrap();
    let a = election(&url_of(&format!("http://{}", proxy.addr())), &key, "a", lease);
    let b = election(&url_of(&fake.url()), &key, "b", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    // b sees a few renewals through its watch.
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
    // No sooner than the lease from a's last renewal, which was at most a renew interval
    // before the cut.
    assert!(took_over >= lease - lease / 4, "b took over after {took_over:?}");
    println!("failover after a partition: {took_over:?}");
    proxy.set_mode(ProxyMode::Pass);
    a.stop().await.ok();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_follower_sends_nothing_but_its_watch() {
    let base = shared_fake().url();
    let key = unique("idle");
    let lease = Duration::from_secs(1);
    let a = election(&url_of(&base), &key, "a", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let store = FaultyStore::new(Arc::new(KubernetesStore::open(&url_of(&base)).unwrap()));
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
        wait_until(Duration::from_secs(3), || b.current_leader_id().as_deref() == Some("a")).await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = (calls.calls(Op::Acquire), calls.calls(Op::Read));
    // Five leases of a renewing: b hears every renewal and asks nothing.
    tokio::time::sleep(lease * 5).await;
    assert_eq!(
        (calls.calls(Op::Acquire), calls.calls(Op::Read)),
        before,
        "an idle follower made store calls while the leader renewed"
    );
    assert!(!b.is_leader());
    a.stop().await.unwrap();
    assert!(wait_until(Duration::from_secs(2), || b.is_leader()).await);
    b.stop().await.unwrap();
}
