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
use baton_testkit::py_elector::{EventKind, PyElector, PyElectorConfig, write_kubeconfig};
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
    s.len() == 27
        && s.as_bytes()[19] == b'.'
        && s.ends_with('Z')
        && s[20..26].bytes().all(|b| b.is_ascii_digit())
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
    let written: u64 = lease["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        token > 0 && token <= written,
        "token {token}, resourceVersion {written}"
    );
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
    let store =
        KubernetesStore::open(&format!("kubernetes:?kubeconfig={}", good.display())).unwrap();
    let mut c = store.join(&key, "a").await.unwrap();
    assert!(matches!(
        c.try_acquire(Duration::from_secs(5)).await.unwrap(),
        baton::Acquire::Acquired(_)
    ));
    let bad = dir.join("bad");
    std::fs::write(
        &bad,
        baton_testkit::fake_k8s::kubeconfig(&fake.url(), Some("wrong")),
    )
    .unwrap();
    let store =
        KubernetesStore::open(&format!("kubernetes:?kubeconfig={}", bad.display())).unwrap();
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
        wait_until(Duration::from_secs(3), || b.current_leader_id().as_deref()
            == Some("a"))
        .await
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

#[tokio::test(flavor = "multi_thread")]
async fn a_handoff_and_a_request_are_the_leases_preferred_holder_and_are_pushed() {
    let base = shared_fake().url();
    let key = unique("preferred");
    // A 10 s lease: anything that waited for expiry or a renewal would take seconds.
    let lease = Duration::from_secs(10);
    let build = |id: &str| {
        LeaderElection::builder(KubernetesStore::open(&url_of(&base)).unwrap(), &key)
            .lease_duration(lease)
            .renew_interval(lease / 4)
            .grace_period(lease / 4)
            .instance_id(id)
            .listen_for_handoff_requests(true)
            .build()
            .unwrap()
    };
    let (a, b, c) = (build("a"), build("b"), build("c"));
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    c.start().await.unwrap();
    let observer = KubernetesStore::open(&url_of(&base)).unwrap();
    let mut changes = observer.watch(&key).await.unwrap().unwrap();
    assert!(
        wait_until(Duration::from_secs(3), || b.current_leader_id().as_deref()
            == Some("a")
            && c.current_leader_id().as_deref() == Some("a"))
        .await
    );

    // A handoff to c: the mark is the freed Lease's preferredHolder, beside Baton's strategy.
    let first = a.fencing_token().unwrap();
    a.hand_over(Some("c")).await.unwrap();
    assert_eq!(
        next_handoff_change(&mut changes).await,
        baton::Change::HandedOver {
            to: Some("c".into())
        }
    );
    assert!(
        wait_until(Duration::from_secs(2), || c.is_leader()).await,
        "the named follower leads within 2 s"
    );
    assert!(!a.is_leader() && !b.is_leader());
    assert!(c.fencing_token().unwrap() > first);
    let taken = raw(&base, &key).await;
    assert_eq!(taken["spec"]["holderIdentity"], "c");
    assert!(
        taken["spec"].get("preferredHolder").is_none() && taken["spec"].get("strategy").is_none(),
        "the acquire clears the mark: {taken}"
    );

    // A request from another process: the held Lease's preferredHolder, holder untouched.
    let asked = observer.request_handoff(&key, Some("b")).await.unwrap();
    assert_eq!(asked.map(|r| r.holder).as_deref(), Some("c"));
    let mut seen = vec![];
    let handed = loop {
        match next_handoff_change(&mut changes).await {
            change @ baton::Change::HandedOver { .. } => break change,
            change => seen.push(change),
        }
    };
    assert!(
        seen.contains(&baton::Change::HandoffRequested {
            to: Some("b".into())
        }),
        "{seen:?}"
    );
    assert_eq!(
        handed,
        baton::Change::HandedOver {
            to: Some("b".into())
        }
    );
    assert!(
        wait_until(Duration::from_secs(3), || b.is_leader()).await,
        "the leader hears of the request by push and hands over"
    );
    assert!(!c.is_leader());
    for e in [&a, &b, &c] {
        e.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_preferred_holder_that_baton_did_not_write_is_foreign_and_left_alone() {
    let base = shared_fake().url();
    let key = unique("coordinated");
    // What Kubernetes' coordinated leader election writes: its strategy, a preferred holder.
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": key},
        "spec": {
            "holderIdentity": "kcm-1",
            "leaseDurationSeconds": 15,
            "renewTime": "2026-12-06T15:00:00.000000Z",
            "strategy": "OldestEmulationVersion",
            "preferredHolder": "kcm-2"
        }
    }))
    .unwrap();
    let planted = leases(&base)
        .create(&PostParams::default(), &lease)
        .await
        .unwrap();
    let store = KubernetesStore::open(&url_of(&base)).unwrap();
    assert!(matches!(
        store.request_handoff(&key, Some("b")).await,
        Err(Error::ForeignData { .. })
    ));
    let mut candidacy = store.join(&key, "b").await.unwrap();
    assert!(matches!(
        candidacy.try_acquire(Duration::from_secs(5)).await,
        Err(Error::ForeignData { .. })
    ));
    let now = leases(&base).get(&key).await.unwrap();
    assert_eq!(
        now.metadata.resource_version, planted.metadata.resource_version,
        "the Lease is untouched"
    );
    leases(&base)
        .delete(&key, &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_leader_steps_down_and_a_follower_takes_over_one_lease_later() {
    let fake = shared_fake();
    let key = unique("partition");
    let lease = Duration::from_secs(2);
    let proxy = FaultProxy::start(fake.addr()).unwrap();
    let a = election(
        &url_of(&format!("http://{}", proxy.addr())),
        &key,
        "a",
        lease,
    );
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
    assert!(
        took_over >= lease - lease / 4,
        "b took over after {took_over:?}"
    );
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
        wait_until(Duration::from_secs(3), || b.current_leader_id().as_deref()
            == Some("a"))
        .await
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

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_of_the_api_server_keeps_the_lease_and_tokens_keep_rising() {
    let mut fake = FakeK8sProcess::start();
    let key = unique("restart");
    let lease = Duration::from_secs(3);
    let a = election(&url_of(&fake.url()), &key, "a", lease);
    let b = election(&url_of(&fake.url()), &key, "b", lease);
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    b.start().await.unwrap();
    let first = a.fencing_token().unwrap();
    // Down for less than a renew interval plus the grace: nobody notices more than a hiccup.
    fake.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.restart();
    tokio::time::sleep(lease).await;
    assert!(
        a.is_leader() ^ b.is_leader(),
        "exactly one leads after the restart"
    );
    // The watch broke with the restart (its history is gone: 410 or a refused connection);
    // the follower watches again, and a release still reaches it at once.
    let (leader, follower) = if a.is_leader() { (&a, &b) } else { (&b, &a) };
    assert!(leader.fencing_token().unwrap() >= first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    leader.stop().await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || follower.is_leader()).await,
        "a release after the restart is pushed"
    );
    assert!(follower.fencing_token().unwrap() > first);
    follower.stop().await.unwrap();
}

/// kubectl (client-go) sends no credentials over plain HTTP, so this fake has no token (D63).
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_shows_batons_leader() {
    let fake = shared_fake();
    let dir = scratch_dir("baton-k8s-kubectl");
    let kubeconfig = dir.join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let key = unique("kubectl");
    let a = election(
        &url_of(&fake.url()),
        &key,
        "baton-a",
        Duration::from_secs(5),
    );
    a.start().await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || a.is_leader()).await);
    let kubeconfig_ = kubeconfig.clone();
    let key_ = key.clone();
    let yaml = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("kubectl")
            .args(["--kubeconfig"])
            .arg(&kubeconfig_)
            .args(["get", "lease", &key_, "-o", "yaml"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run kubectl ({e}): run scripts/test, which installs kubernetes-client"
                )
            });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap();
    assert!(yaml.contains("holderIdentity: baton-a"), "{yaml}");
    assert!(yaml.contains("leaseDurationSeconds: 5"), "{yaml}");
    let token = a.fencing_token().unwrap().to_string();
    assert!(
        yaml.contains(&format!("baton.dev/fencing-token: \"{token}\"")),
        "{yaml}"
    );
    a.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
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

/// Drains a Python candidate's events into terms; a term still open ends at `end`.
fn python_terms(py: &PyElector, end: Duration, terms: &mut Intervals, open: &mut Option<Duration>) {
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

/// The Python `kubernetes` client's elector (a LeaseLock, as client-go's) and Baton's
/// candidates on one Lease: each side sees the other's lease as held, hand-offs go both ways
/// (a release, a crash), and no two terms ever overlap.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_clients_elector_and_batons_never_lead_at_once() {
    let fake = shared_fake();
    let dir = scratch_dir("baton-k8s-python");
    let kubeconfig = write_kubeconfig(&dir, &fake.url(), None, "default");
    let key = unique("python");
    // Python waits its own lease_duration from the last change it saw: give it Baton's.
    let lease = Duration::from_secs(4);
    let config = |id: &str| PyElectorConfig::new(&kubeconfig, "default", &key, id);
    let mut all: Intervals = Vec::new();

    // 1. Python leads; Baton's candidates see it and wait.
    let mut py1 = PyElector::spawn(&config("py-1"));
    let event = py1
        .wait_for(EventKind::BecameLeader, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("py-1 never led: {}", py1.stderr()));
    let mut py1_open = Some(event.boot_time);
    let a = election(&url_of(&fake.url()), &key, "baton-a", lease);
    let b = election(&url_of(&fake.url()), &key, "baton-b", lease);
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
        "Baton took a lease Python renews"
    );

    // 2. Python stops and releases; a Baton candidate takes over through its watch.
    let stopped = Instant::now();
    py1.terminate();
    assert!(
        wait_until(Duration::from_secs(3), || a.is_leader() || b.is_leader()).await,
        "Baton takes over after Python's release"
    );
    println!("Python -> Baton handoff: {:?}", stopped.elapsed());
    python_terms(&py1, baton::boot_time(), &mut all, &mut py1_open);

    // 3. A new Python candidate sees Baton's lease as held.
    let mut py2 = PyElector::spawn(&config("py-2"));
    std::thread::sleep(lease + Duration::from_secs(2));
    assert!(
        py2.next_event(Duration::ZERO).is_none(),
        "Python took a lease Baton renews"
    );

    // 4. Baton's candidates stop (releasing); Python takes over.
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let released = Instant::now();
    let event = py2
        .wait_for(EventKind::BecameLeader, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("py-2 never led: {}", py2.stderr()));
    let mut py2_open = Some(event.boot_time);
    println!("Baton -> Python handoff: {:?}", released.elapsed());

    // 5. A Baton candidate waits; Python crashes; Baton takes over once its lease ran out.
    let c = election(&url_of(&fake.url()), &key, "baton-c", lease);
    let c_terms = record_terms(&c);
    c.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!c.is_leader());
    py2.kill();
    let crashed = baton::boot_time();
    let killed = Instant::now();
    assert!(
        wait_until(lease + Duration::from_secs(4), || c.is_leader()).await,
        "Baton takes over from a crashed Python leader"
    );
    println!("Python crash -> Baton failover: {:?}", killed.elapsed());
    python_terms(&py2, crashed, &mut all, &mut py2_open);
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
    let _ = std::fs::remove_dir_all(dir);
}

/// Presence records are Leases of their own, listed by label, and the election's Lease is not
/// touched by them; a labelled Lease Baton did not write is foreign data and stays as it was.
#[tokio::test]
async fn presence_records_are_leases_of_their_own_and_foreign_ones_are_kept() {
    let base = shared_fake().url();
    let store = KubernetesStore::open(&url_of(&base)).unwrap();
    let key = unique("presence");
    let live = store
        .announce(&key, "web/1 (pod)", 5, Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(
        (live[0].candidate.as_str(), live[0].priority),
        ("web/1 (pod)", 5)
    );
    let listed = leases(&base)
        .list(&kube::api::ListParams::default().labels(&format!("baton.dev/election={key}")))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let record = &listed.items[0];
    let name = record.metadata.name.clone().unwrap();
    assert!(
        name.starts_with(&format!("{key}-")) && name != key,
        "{name}"
    );
    let spec = record.spec.clone().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("web/1 (pod)"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(
        record.metadata.annotations.as_ref().unwrap()["baton.dev/priority"],
        "5"
    );
    assert!(
        leases(&base).get_opt(&key).await.unwrap().is_none(),
        "no write on the election's Lease"
    );
    store.withdraw(&key, "web/1 (pod)").await.unwrap();
    assert!(leases(&base).get_opt(&name).await.unwrap().is_none());

    // A Lease someone else labelled as a record of this election.
    let planted: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{key}-planted"), "labels": {"baton.dev/election": key}},
        "spec": {"holderIdentity": "node-1"}
    }))
    .unwrap();
    let planted = leases(&base)
        .create(&PostParams::default(), &planted)
        .await
        .unwrap();
    match store.candidates(&key).await {
        Err(Error::ForeignData { .. }) => {}
        other => panic!("a planted record must be foreign data, not {other:?}"),
    }
    match store
        .announce(&key, "web-2", 0, Duration::from_secs(15))
        .await
    {
        Err(Error::ForeignData { .. }) => {}
        other => panic!("a planted record must be foreign data, not {other:?}"),
    }
    let after = leases(&base)
        .get(planted.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        after.metadata.resource_version,
        planted.metadata.resource_version
    );
    // The label's value must be a label value: the fake refuses what the API server refuses.
    let bad: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": unique("bad-label"), "labels": {"baton.dev/election": "-x"}},
        "spec": {}
    }))
    .unwrap();
    let refused = leases(&base).create(&PostParams::default(), &bad).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422),
        "{refused:?}"
    );
}

/// A record nobody renewed for long (its candidate was killed, and nobody deleted it) is not
/// alive for a process that reads it for the first time, and a candidate's announce deletes it.
#[tokio::test]
async fn a_presence_record_renewed_long_ago_is_gone_and_deleted() {
    let base = shared_fake().url();
    let store = KubernetesStore::open(&url_of(&base)).unwrap();
    let key = unique("presence-old");
    store
        .announce(&key, "ghost", 3, Duration::from_secs(15))
        .await
        .unwrap();
    let listed = leases(&base)
        .list(&kube::api::ListParams::default().labels(&format!("baton.dev/election={key}")))
        .await
        .unwrap();
    let mut ghost = listed.items[0].clone();
    let name = ghost.metadata.name.clone().unwrap();
    let spec = ghost.spec.as_mut().unwrap();
    let old: k8s_openapi::jiff::Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        old,
    ));
    leases(&base)
        .replace(&name, &PostParams::default(), &ghost)
        .await
        .unwrap();
    let fresh = KubernetesStore::open(&url_of(&base)).unwrap();
    assert_eq!(fresh.candidates(&key).await.unwrap(), Some(Vec::new()));
    let live = fresh
        .announce(&key, "web-1", 0, Duration::from_secs(15))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert!(leases(&base).get_opt(&name).await.unwrap().is_none());
    fresh.withdraw(&key, "web-1").await.unwrap();
}
