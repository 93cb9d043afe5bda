//! The fake Consul agent (`baton_testkit::fake_consul`) over HTTP, as clients see it: KV with
//! flags, cas, acquire and release; blocking queries; sessions; transactions; ACL; a restart
//! that keeps its data. Its state rules have unit tests of their own (`fake_consul::state`).

use std::time::{Duration, Instant};

use baton_testkit::fake_consul::client::{self, Reply};
use baton_testkit::fake_consul::{FakeConsul, FakeConsulOptions, FakeConsulProcess};
use serde_json::{Value, json};

async fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    client::call(addr, method, path, headers, body)
        .await
        .unwrap()
}

fn addr(fake: &FakeConsul) -> String {
    fake.addr().to_string()
}

fn value_of(entry: &Value) -> String {
    String::from_utf8(client::value_of(entry)).unwrap()
}

async fn create_session(addr: &str, body: Value) -> String {
    let reply = call(
        addr,
        "PUT",
        "/v1/session/create",
        &[],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["ID"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn kv_pairs_carry_flags_values_and_indexes() {
    let fake = FakeConsul::serve(FakeConsulOptions::default());
    let a = addr(&fake);
    let missing = call(&a, "GET", "/v1/kv/app/.lock", &[], b"").await;
    assert_eq!(missing.status, 404);
    assert!(missing.index.unwrap() >= 1, "the index is never 0");
    let put = call(
        &a,
        "PUT",
        "/v1/kv/app/.lock?flags=3304740253564472344",
        &[],
        b"hello",
    )
    .await;
    assert_eq!((put.status, put.json()), (200, json!(true)));
    let got = call(&a, "GET", "/v1/kv/app/.lock", &[], b"").await;
    let entry = &got.json()[0];
    assert_eq!(entry["Flags"], 3_304_740_253_564_472_344u64);
    assert_eq!(value_of(entry), "hello");
    assert_eq!(got.index, entry["ModifyIndex"].as_u64());
    assert!(entry.get("Session").is_none());
    let raw = call(&a, "GET", "/v1/kv/app/.lock?raw", &[], b"").await;
    assert_eq!(raw.text(), "hello");
    // cas: a stale index is refused, the current one applies; cas=0 only creates.
    let m = entry["ModifyIndex"].as_u64().unwrap();
    let stale = call(
        &a,
        "PUT",
        &format!("/v1/kv/app/.lock?cas={}", m - 1),
        &[],
        b"x",
    )
    .await;
    assert_eq!(stale.json(), json!(false));
    assert_eq!(
        call(&a, "PUT", "/v1/kv/app/.lock?cas=0", &[], b"x")
            .await
            .json(),
        json!(false)
    );
    assert_eq!(
        call(&a, "PUT", &format!("/v1/kv/app/.lock?cas={m}"), &[], b"x")
            .await
            .json(),
        json!(true)
    );
    let conflicting = call(&a, "PUT", "/v1/kv/app/.lock?cas=1&acquire=x", &[], b"").await;
    assert_eq!(conflicting.status, 400);
    // recurse, then a delete with cas; the missing key's index is past the deletion.
    call(&a, "PUT", "/v1/kv/app/other", &[], b"2").await;
    let all = call(&a, "GET", "/v1/kv/app/?recurse", &[], b"").await;
    assert_eq!(all.json().as_array().unwrap().len(), 2);
    let now = call(&a, "GET", "/v1/kv/app/.lock", &[], b"")
        .await
        .index
        .unwrap();
    assert_eq!(
        call(&a, "DELETE", "/v1/kv/app/.lock?cas=1", &[], b"")
            .await
            .json(),
        json!(false)
    );
    assert_eq!(
        call(
            &a,
            "DELETE",
            &format!("/v1/kv/app/.lock?cas={now}"),
            &[],
            b""
        )
        .await
        .json(),
        json!(true)
    );
    let gone = call(&a, "GET", "/v1/kv/app/.lock", &[], b"").await;
    assert_eq!(gone.status, 404);
    assert!(gone.index.unwrap() > now);
}

#[tokio::test]
async fn blocking_queries_wait_for_a_change_or_the_wait() {
    let fake = FakeConsul::serve(FakeConsulOptions::default());
    let a = addr(&fake);
    call(&a, "PUT", "/v1/kv/k", &[], b"1").await;
    let index = call(&a, "GET", "/v1/kv/k", &[], b"").await.index.unwrap();
    // Nothing changes: the query answers after its wait (plus at most wait/16), same index.
    let start = Instant::now();
    let idle = call(
        &a,
        "GET",
        &format!("/v1/kv/k?index={index}&wait=300ms"),
        &[],
        b"",
    )
    .await;
    let took = start.elapsed();
    assert_eq!(idle.index, Some(index));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // A write to another key does not answer it; one to this key does, with its new index.
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move {
            call(
                &a,
                "GET",
                &format!("/v1/kv/k?index={index}&wait=30s"),
                &[],
                b"",
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    call(&a, "PUT", "/v1/kv/unrelated", &[], b"1").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    call(&a, "PUT", "/v1/kv/k", &[], b"2").await;
    let woken = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(woken.index.unwrap() > index);
    assert_eq!(value_of(&woken.json()[0]), "2");
    // An index ahead of the agent's blocks too (the client resets when the index goes back).
    let ahead = call(&a, "GET", "/v1/kv/k?index=999999&wait=100ms", &[], b"").await;
    assert!(ahead.index.unwrap() < 999_999);
}

#[tokio::test]
async fn sessions_lock_keys_and_release_them() {
    let fake = FakeConsul::serve(FakeConsulOptions::default());
    let a = addr(&fake);
    let short = call(&a, "PUT", "/v1/session/create", &[], br#"{"TTL":"1s"}"#).await;
    assert_eq!(short.status, 500);
    assert!(
        short.text().contains("must be between [10s=24h0m0s]"),
        "{}",
        short.text()
    );
    let s1 = create_session(&a, json!({"Name": "one", "TTL": "10s", "LockDelay": "0s"})).await;
    let s2 = create_session(&a, json!({"Name": "two", "TTL": "15s"})).await;
    let info = call(&a, "GET", &format!("/v1/session/info/{s2}"), &[], b"")
        .await
        .json();
    assert_eq!(
        (info[0]["TTL"].clone(), info[0]["LockDelay"].clone()),
        (json!("15s"), json!(15_000_000_000u64))
    );
    assert_eq!(info[0]["Behavior"], "release");
    // Acquire, contention, holder's release (which writes its value and flags).
    assert_eq!(
        call(
            &a,
            "PUT",
            &format!("/v1/kv/l?acquire={s1}&flags=5"),
            &[],
            b"one"
        )
        .await
        .json(),
        json!(true)
    );
    assert_eq!(
        call(&a, "PUT", &format!("/v1/kv/l?acquire={s2}"), &[], b"two")
            .await
            .json(),
        json!(false)
    );
    let held = call(&a, "GET", "/v1/kv/l", &[], b"").await.json();
    assert_eq!(
        (held[0]["Session"].clone(), held[0]["LockIndex"].clone()),
        (json!(s1), json!(1))
    );
    assert_eq!(
        call(&a, "PUT", &format!("/v1/kv/l?release={s2}"), &[], b"")
            .await
            .json(),
        json!(false)
    );
    assert_eq!(
        call(
            &a,
            "PUT",
            &format!("/v1/kv/l?release={s1}&flags=5"),
            &[],
            b"bye"
        )
        .await
        .json(),
        json!(true)
    );
    let released = call(&a, "GET", "/v1/kv/l", &[], b"").await.json();
    assert!(released[0].get("Session").is_none());
    assert_eq!(
        (value_of(&released[0]), released[0]["Flags"].clone()),
        ("bye".to_owned(), json!(5))
    );
    // s2 takes it; destroying s2 releases it and sets its 15 s lock-delay.
    assert_eq!(
        call(&a, "PUT", &format!("/v1/kv/l?acquire={s2}"), &[], b"")
            .await
            .json(),
        json!(true)
    );
    assert_eq!(
        call(&a, "PUT", &format!("/v1/session/destroy/{s2}"), &[], b"")
            .await
            .json(),
        json!(true)
    );
    assert!(
        call(&a, "GET", "/v1/kv/l", &[], b"").await.json()[0]
            .get("Session")
            .is_none()
    );
    assert_eq!(
        call(&a, "PUT", &format!("/v1/kv/l?acquire={s1}"), &[], b"")
            .await
            .json(),
        json!(false)
    );
    // Renewal of a session that is gone is 404; acquiring with it is an RPC error (500).
    let renew = call(&a, "PUT", &format!("/v1/session/renew/{s2}"), &[], b"").await;
    assert_eq!(renew.status, 404);
    assert!(renew.text().contains("not found"));
    assert_eq!(
        call(&a, "PUT", &format!("/v1/session/renew/{s1}"), &[], b"")
            .await
            .status,
        200
    );
    let invalid = call(&a, "PUT", &format!("/v1/kv/m?acquire={s2}"), &[], b"").await;
    assert_eq!(invalid.status, 500);
    assert!(invalid.text().contains("invalid session"));
    assert_eq!(
        call(&a, "GET", &format!("/v1/session/info/{s2}"), &[], b"")
            .await
            .json(),
        json!([])
    );
}

#[tokio::test]
async fn transactions_apply_all_or_nothing() {
    let fake = FakeConsul::serve(FakeConsulOptions::default());
    let a = addr(&fake);
    let s1 = create_session(&a, json!({"LockDelay": "0s"})).await;
    let s2 = create_session(&a, json!({"LockDelay": "0s"})).await;
    let lock = |s: &str| json!({"KV": {"Verb": "lock", "Key": "t", "Value": "aGk=", "Flags": 7, "Session": s}});
    let ok = call(
        &a,
        "PUT",
        "/v1/txn",
        &[],
        json!([{"KV": {"Verb": "check-not-exists", "Key": "t"}}, lock(&s1)])
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let result = &ok.json()["Results"][0]["KV"];
    assert_eq!(
        (result["Session"].clone(), result["Value"].clone()),
        (json!(s1), Value::Null)
    );
    let index = result["ModifyIndex"].as_u64().unwrap();
    let stale = call(
        &a,
        "PUT",
        "/v1/txn",
        &[],
        json!([{"KV": {"Verb": "check-index", "Key": "t", "Index": index - 1}}, {"Session": {"Verb": "delete", "Session": {"ID": s1}}}, lock(&s2)]).to_string().as_bytes(),
    )
    .await;
    assert_eq!(stale.status, 409);
    assert_eq!(stale.json()["Errors"][0]["OpIndex"], 0);
    assert_eq!(
        call(&a, "GET", &format!("/v1/session/info/{s1}"), &[], b"")
            .await
            .json()[0]["ID"],
        json!(s1)
    );
    let taken = call(
        &a,
        "PUT",
        "/v1/txn",
        &[],
        json!([{"KV": {"Verb": "check-index", "Key": "t", "Index": index}}, {"Session": {"Verb": "delete", "Session": {"ID": s1}}}, lock(&s2)]).to_string().as_bytes(),
    )
    .await;
    assert_eq!(taken.status, 200, "{}", taken.text());
    assert_eq!(taken.json()["Results"][1]["KV"]["Session"], json!(s2));
    assert_eq!(taken.json()["Results"][1]["KV"]["LockIndex"], 2);
    let held = call(
        &a,
        "PUT",
        "/v1/txn",
        &[],
        json!([lock(&s1)]).to_string().as_bytes(),
    )
    .await;
    assert_eq!(held.status, 409);
    let session_check = json!([{"KV": {"Verb": "check-session", "Key": "t", "Session": s2}}]);
    assert_eq!(
        call(
            &a,
            "PUT",
            "/v1/txn",
            &[],
            session_check.to_string().as_bytes()
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn a_plain_write_keeps_the_locks_session_and_only_the_holder_unlocks_in_a_transaction() {
    let fake = FakeConsul::serve(FakeConsulOptions::default());
    let a = addr(&fake);
    let s1 = create_session(&a, json!({"LockDelay": "0s"})).await;
    let s2 = create_session(&a, json!({"LockDelay": "0s"})).await;
    assert_eq!(
        call(
            &a,
            "PUT",
            &format!("/v1/kv/h?acquire={s1}&flags=7"),
            &[],
            b"one"
        )
        .await
        .json(),
        json!(true)
    );
    let held = call(&a, "GET", "/v1/kv/h", &[], b"").await.json();
    let m = held[0]["ModifyIndex"].as_u64().unwrap();
    // `kvsSetTxn` without updateSession: a cas write keeps the session and the lock index.
    assert_eq!(
        call(
            &a,
            "PUT",
            &format!("/v1/kv/h?cas={m}&flags=7"),
            &[],
            b"asked"
        )
        .await
        .json(),
        json!(true)
    );
    let asked = call(&a, "GET", "/v1/kv/h", &[], b"").await.json();
    assert_eq!(
        (
            asked[0]["Session"].clone(),
            asked[0]["LockIndex"].clone(),
            value_of(&asked[0])
        ),
        (json!(s1), json!(1), "asked".to_owned())
    );
    assert!(asked[0]["ModifyIndex"].as_u64().unwrap() > m);
    let unlock = |s: &str| {
        json!([{"KV": {"Verb": "unlock", "Key": "h", "Value": "Ynll", "Flags": 7, "Session": s}}])
            .to_string()
    };
    let refused = call(&a, "PUT", "/v1/txn", &[], unlock(&s2).as_bytes()).await;
    assert_eq!(refused.status, 409);
    assert!(
        refused.json()["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .contains("lock isn't held, or is held by another session"),
        "{}",
        refused.text()
    );
    let unlocked = call(&a, "PUT", "/v1/txn", &[], unlock(&s1).as_bytes()).await;
    assert_eq!(unlocked.status, 200, "{}", unlocked.text());
    let freed = call(&a, "GET", "/v1/kv/h", &[], b"").await.json();
    assert!(freed[0].get("Session").is_none());
    assert_eq!(value_of(&freed[0]), "bye");
}

#[tokio::test]
async fn a_token_is_required_when_set() {
    let fake = FakeConsul::serve(FakeConsulOptions {
        token: Some("s3cret".into()),
        ..FakeConsulOptions::default()
    });
    let a = addr(&fake);
    let none = call(&a, "GET", "/v1/kv/k", &[], b"").await;
    assert_eq!(none.status, 403);
    assert!(none.text().contains("Permission denied"));
    let wrong = call(&a, "GET", "/v1/kv/k", &[("X-Consul-Token", "nope")], b"").await;
    assert_eq!(
        (wrong.status, wrong.text()),
        (403, "ACL not found".to_owned())
    );
    assert_eq!(
        call(&a, "GET", "/v1/kv/k", &[("X-Consul-Token", "s3cret")], b"")
            .await
            .status,
        404
    );
    assert_eq!(
        call(&a, "GET", "/v1/kv/k?token=s3cret", &[], b"")
            .await
            .status,
        404
    );
    assert_eq!(
        call(
            &a,
            "GET",
            "/v1/kv/k",
            &[("Authorization", "Bearer s3cret")],
            b""
        )
        .await
        .status,
        404
    );
    let requests = fake.requests();
    assert_eq!(requests.get("authenticated", "kv-get"), 3);
    assert_eq!(requests.get("unauthenticated", "kv-get"), 1);
    assert_eq!(requests.get("anonymous", "kv-get"), 1);
    assert!(!format!("{requests:?}").contains("s3cret"));
    let dc = call(
        &a,
        "GET",
        "/v1/kv/k?dc=dc9",
        &[("X-Consul-Token", "s3cret")],
        b"",
    )
    .await;
    assert_eq!(dc.status, 500);
}

#[tokio::test]
async fn the_process_keeps_its_data_across_a_restart() {
    let mut fake = FakeConsulProcess::start();
    let a = format!("127.0.0.1:{}", fake.port());
    let s = create_session(&a, json!({"TTL": "10s", "LockDelay": "0s"})).await;
    assert_eq!(
        call(&a, "PUT", &format!("/v1/kv/p?acquire={s}"), &[], b"v")
            .await
            .json(),
        json!(true)
    );
    let before = call(&a, "GET", "/v1/kv/p", &[], b"").await;
    fake.restart();
    let after = call(&a, "GET", "/v1/kv/p", &[], b"").await;
    assert_eq!(after.json(), before.json());
    assert_eq!(after.index, before.index);
    assert_eq!(
        call(&a, "PUT", &format!("/v1/session/renew/{s}"), &[], b"")
            .await
            .status,
        200
    );
    // The index goes on from where it was.
    call(&a, "PUT", "/v1/kv/q", &[], b"").await;
    assert!(call(&a, "GET", "/v1/kv/q", &[], b"").await.index > before.index);
}
