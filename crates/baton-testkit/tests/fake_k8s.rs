//! The fake Kubernetes API server (`baton_testkit::fake_k8s`): every behaviour a Lease client
//! relies on, with exact status codes and `Status` reasons, through a small HTTP/1.1 client;
//! `kubectl` against it; and the process handle's kill, restart and pause.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use baton_testkit::fake_k8s::{FakeK8s, FakeK8sOptions, FakeK8sProcess};
use serde_json::{Value, json};

const NS_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

#[derive(Debug)]
struct Reply {
    code: u16,
    headers: Vec<(String, String)>,
    body: Value,
    text: String,
}

impl Reply {
    fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }
    fn rv(&self) -> u64 {
        self.body["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no resourceVersion in {}", self.text))
    }
}

struct Client {
    addr: String,
    token: Option<String>,
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the fake");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn write_request(
    s: &mut TcpStream,
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) {
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("Connection: close\r\n\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
}

/// Status line and headers.
fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    (code, headers)
}

/// One chunk of a chunked body; `None` at its end.
fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut size = String::new();
    if r.read_line(&mut size).ok()? == 0 {
        return None;
    }
    let size = usize::from_str_radix(size.trim(), 16).ok()?;
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(size);
    (size > 0).then_some(buf)
}

impl Client {
    fn new(url: &str, token: Option<&str>) -> Client {
        Client {
            addr: url.trim_start_matches("http://").to_owned(),
            token: token.map(str::to_owned),
        }
    }

    fn send(&self, method: &str, path: &str, content_type: &str, body: &str) -> Reply {
        let mut s = connect(&self.addr);
        write_request(
            &mut s,
            &self.addr,
            self.token.as_deref(),
            method,
            path,
            content_type,
            body,
        );
        let mut r = BufReader::new(s);
        let (code, headers) = read_head(&mut r);
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let mut bytes = Vec::new();
        if chunked {
            while let Some(c) = read_chunk(&mut r) {
                bytes.extend(c);
            }
        } else {
            r.read_to_end(&mut bytes).unwrap();
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            code,
            headers,
            body,
            text,
        }
    }

    fn get(&self, path: &str) -> Reply {
        self.send("GET", path, "", "")
    }
    fn post(&self, body: Value) -> Reply {
        self.send("POST", NS_PATH, "application/json", &body.to_string())
    }
    fn put(&self, name: &str, body: Value) -> Reply {
        self.send(
            "PUT",
            &format!("{NS_PATH}/{name}"),
            "application/json",
            &body.to_string(),
        )
    }
    fn patch(&self, name: &str, content_type: &str, body: Value) -> Reply {
        self.send(
            "PATCH",
            &format!("{NS_PATH}/{name}"),
            content_type,
            &body.to_string(),
        )
    }
    fn delete(&self, name: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.send(
            "DELETE",
            &format!("{NS_PATH}/{name}"),
            "application/json",
            &body,
        )
    }

    fn create(&self, name: &str, holder: &str) -> Reply {
        let r = self.post(lease(name, holder));
        assert_eq!(r.code, 201, "create {name}: {}", r.text);
        r
    }

    fn watch(&self, query: &str) -> Watch {
        let mut s = connect(&self.addr);
        let path = format!("{NS_PATH}?watch=true&{query}");
        write_request(
            &mut s,
            &self.addr,
            self.token.as_deref(),
            "GET",
            &path,
            "",
            "",
        );
        let mut reader = BufReader::new(s);
        let (code, headers) = read_head(&mut reader);
        assert_eq!(code, 200, "a watch answers 200");
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/json"),
            "a watch is application/json: {headers:?}"
        );
        Watch {
            reader,
            pending: Vec::new(),
        }
    }
}

/// A watch's event stream.
struct Watch {
    reader: BufReader<TcpStream>,
    pending: Vec<u8>,
}

impl Watch {
    /// The next event, or `None` when the server ended the stream.
    fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("one JSON event per line"));
            }
            let chunk = read_chunk(&mut self.reader)?;
            self.pending.extend(chunk);
        }
    }

    /// The next event that is not a BOOKMARK.
    fn next_change(&mut self) -> Value {
        loop {
            let e = self.next().expect("the watch goes on");
            if e["type"] != "BOOKMARK" {
                return e;
            }
        }
    }
}

fn lease(name: &str, holder: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": { "name": name },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": "2026-01-02T03:04:05.000006Z",
            "renewTime": "2026-01-02T03:04:05.123456Z",
            "leaseTransitions": 0,
        },
    })
}

fn serve() -> (FakeK8s, Client) {
    let fake = FakeK8s::serve(FakeK8sOptions::default());
    let client = Client::new(&fake.url(), None);
    (fake, client)
}

fn assert_status(r: &Reply, code: u16, reason: &str) {
    assert_eq!(r.code, code, "status code of {}", r.text);
    assert_eq!(r.body["kind"], "Status", "a Status body: {}", r.text);
    assert_eq!(r.body["status"], "Failure", "{}", r.text);
    assert_eq!(r.body["code"], code, "{}", r.text);
    assert_eq!(r.reason(), reason, "{}", r.text);
}

#[test]
fn create_get_and_list_share_one_resource_version_counter() {
    let (_fake, c) = serve();
    let a = c.create("a", "one");
    assert_eq!(a.body["kind"], "Lease");
    assert_eq!(a.body["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(a.body["metadata"]["namespace"], "default");
    assert_eq!(a.body["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(a.body["metadata"].get("generation").is_none());
    let created = a.body["metadata"]["creationTimestamp"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    let b = c.create("b", "two");
    assert_eq!(b.rv(), a.rv() + 1, "one counter, bumped by every write");
    let got = c.get(&format!("{NS_PATH}/a"));
    assert_eq!(got.code, 200);
    assert_eq!(got.body, a.body);
    let list = c.get(NS_PATH);
    assert_eq!(list.code, 200);
    assert_eq!(list.body["kind"], "LeaseList");
    assert_eq!(list.rv(), b.rv());
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items[0].get("kind").is_none(), "list items carry no kind");
    assert_eq!(items[0]["metadata"]["name"], "a");
    let all = c.get("/apis/coordination.k8s.io/v1/leases");
    assert_eq!(all.body["items"].as_array().unwrap().len(), 2);
}

#[test]
fn errors_are_status_bodies_worded_like_the_api_server() {
    let (_fake, c) = serve();
    let r = c.get(&format!("{NS_PATH}/nope"));
    assert_status(&r, 404, "NotFound");
    assert_eq!(r.message(), "leases.coordination.k8s.io \"nope\" not found");
    assert_eq!(
        r.body["details"],
        json!({"name": "nope", "group": "coordination.k8s.io", "kind": "leases"})
    );
    c.create("a", "one");
    let r = c.post(lease("a", "two"));
    assert_status(&r, 409, "AlreadyExists");
    assert_eq!(
        r.message(),
        "leases.coordination.k8s.io \"a\" already exists"
    );
    let r = c.send("POST", NS_PATH, "application/json", "{not json");
    assert_status(&r, 400, "BadRequest");
    let r = c.post(json!({"metadata": {"name": "x"}, "spec": {"leaseDurationSeconds": "15"}}));
    assert_status(&r, 400, "BadRequest");
    assert!(r.message().contains("cannot unmarshal string into Go struct field LeaseSpec.spec.leaseDurationSeconds of type int32"), "{}", r.text);
    let r = c.send("DELETE", "/nowhere", "", "");
    assert_eq!(r.code, 404);
}

#[test]
fn validation_failures_are_422_invalid_and_mismatched_names_400() {
    let (_fake, c) = serve();
    let r = c.post(lease("Not_A_Name", "x"));
    assert_status(&r, 422, "Invalid");
    assert!(r.message().starts_with("Lease.coordination.k8s.io \"Not_A_Name\" is invalid: metadata.name: Invalid value: \"Not_A_Name\": a lowercase RFC 1123 subdomain"), "{}", r.text);
    let mut l = lease("zero", "x");
    l["spec"]["leaseDurationSeconds"] = json!(0);
    let r = c.post(l);
    assert_status(&r, 422, "Invalid");
    assert_eq!(
        r.message(),
        "Lease.coordination.k8s.io \"zero\" is invalid: spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0"
    );
    assert_eq!(
        r.body["details"]["causes"][0]["field"],
        "spec.leaseDurationSeconds"
    );
    let mut l = lease("neg", "x");
    l["spec"]["leaseTransitions"] = json!(-1);
    let r = c.post(l);
    assert_status(&r, 422, "Invalid");
    assert!(
        r.message().ends_with(
            "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0"
        ),
        "{}",
        r.text
    );
    let a = c.create("a", "x");
    let mut body = a.body.clone();
    body["metadata"]["name"] = json!("b");
    let r = c.put("a", body);
    assert_status(&r, 400, "BadRequest");
    assert_eq!(
        r.message(),
        "the name of the object (b) does not match the name on the URL (a)"
    );
    let mut body = lease("c", "x");
    body["metadata"]["namespace"] = json!("other");
    let r = c.post(body);
    assert_status(&r, 400, "BadRequest");
}

#[test]
fn coordinated_fields_are_validated_as_with_the_feature_gate_on() {
    let (_fake, c) = serve();
    // preferredHolder needs a strategy.
    let mut l = lease("pref", "x");
    l["spec"]["preferredHolder"] = json!("y");
    let r = c.post(l.clone());
    assert_status(&r, 422, "Invalid");
    assert_eq!(
        r.message(),
        "Lease.coordination.k8s.io \"pref\" is invalid: spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined"
    );
    // A strategy without '/' must be Kubernetes' own.
    l["spec"]["strategy"] = json!("Newest");
    let r = c.post(l.clone());
    assert_status(&r, 422, "Invalid");
    assert!(
        r.message().ends_with(
            "spec.strategy.strategy: Unsupported value: \"Newest\": supported values: \"OldestEmulationVersion\""
        ),
        "{}",
        r.text
    );
    // One with '/' must be a qualified name.
    for bad in [
        "Baton.dev/handoff",
        "baton.dev/-handoff",
        "a/b/c",
        "/handoff",
    ] {
        l["spec"]["strategy"] = json!(bad);
        let r = c.post(l.clone());
        assert_status(&r, 422, "Invalid");
        assert!(
            r.message().contains(&format!(
                "spec.strategy.strategy: Invalid value: \"{bad}\": "
            )),
            "{bad}: {}",
            r.text
        );
    }
    // A custom strategy with a preferred holder is kept, and a PUT may change or drop both.
    l["spec"]["strategy"] = json!("baton.dev/handoff");
    let r = c.post(l);
    assert_eq!(r.code, 201, "{}", r.text);
    assert_eq!(r.body["spec"]["strategy"], "baton.dev/handoff");
    assert_eq!(r.body["spec"]["preferredHolder"], "y");
    let mut body = r.body.clone();
    body["spec"]["preferredHolder"] = json!("z");
    let r = c.put("pref", body);
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(r.body["spec"]["preferredHolder"], "z");
    let mut body = r.body.clone();
    let spec = body["spec"].as_object_mut().unwrap();
    spec.remove("strategy");
    spec.remove("preferredHolder");
    let r = c.put("pref", body);
    assert_eq!(r.code, 200, "{}", r.text);
    assert!(
        r.body["spec"].get("preferredHolder").is_none(),
        "{}",
        r.text
    );
}

#[test]
fn put_needs_the_current_resource_version() {
    let (_fake, c) = serve();
    let a = c.create("a", "one");
    let mut body = lease("a", "two");
    let r = c.put("a", body.clone());
    assert_status(&r, 422, "Invalid");
    assert_eq!(
        r.message(),
        "leases.coordination.k8s.io \"a\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    );
    body["metadata"]["resourceVersion"] = json!((a.rv() - 1).to_string());
    let r = c.put("a", body.clone());
    assert_status(&r, 409, "Conflict");
    assert_eq!(
        r.message(),
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"a\": the object has been modified; please apply your changes to the latest version and try again"
    );
    body["metadata"]["resourceVersion"] = json!(a.rv().to_string());
    let r = c.put("a", body.clone());
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(r.rv(), a.rv() + 1);
    assert_eq!(r.body["spec"]["holderIdentity"], "two");
    assert_eq!(r.body["metadata"]["uid"], a.body["metadata"]["uid"]);
    // A write that changes nothing keeps the resourceVersion.
    let same = c.put("a", r.body.clone());
    assert_eq!(same.code, 200);
    assert_eq!(same.rv(), r.rv());
    // A PUT of a missing Lease creates it (Lease's strategy allows create on update) ...
    let r = c.put("new", lease("new", "x"));
    assert_eq!(r.code, 201, "{}", r.text);
    // ... unless it names a uid, the storage precondition.
    let mut gone = lease("gone", "x");
    gone["metadata"]["uid"] = json!("0b7c5b3e-0000-4000-8000-000000000000");
    let r = c.put("gone", gone);
    assert_status(&r, 409, "Conflict");
    assert!(
        r.message()
            .contains("Precondition failed: UID in precondition"),
        "{}",
        r.text
    );
}

#[test]
fn patches_merge_json_and_apply_with_resource_version_as_precondition() {
    let (_fake, c) = serve();
    let a = c.create("a", "one");
    let merge = "application/merge-patch+json";
    let r = c.patch(
        "a",
        merge,
        json!({"metadata": {"resourceVersion": "1"}, "spec": {"holderIdentity": "two"}}),
    );
    assert_status(&r, 409, "Conflict");
    let r = c.patch("a", merge, json!({"metadata": {"resourceVersion": a.rv().to_string()}, "spec": {"holderIdentity": "two"}}));
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(r.body["spec"]["holderIdentity"], "two");
    let r = c.patch(
        "a",
        "application/strategic-merge-patch+json",
        json!({"spec": {"holderIdentity": null}}),
    );
    assert_eq!(r.code, 200, "{}", r.text);
    assert!(
        r.body["spec"].get("holderIdentity").is_none(),
        "null removes: {}",
        r.text
    );
    let json_patch = "application/json-patch+json";
    let r = c.patch("a", json_patch, json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": r.body["metadata"]["resourceVersion"]},
        {"op": "replace", "path": "/spec/leaseTransitions", "value": 3},
    ]));
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(r.body["spec"]["leaseTransitions"], 3);
    let r = c.patch(
        "a",
        json_patch,
        json!([{"op": "test", "path": "/spec/leaseTransitions", "value": 9}]),
    );
    assert_status(&r, 422, "Invalid");
    let r = c.patch(
        "a",
        merge,
        json!({"spec": {"renewTime": "2026-01-01T00:00:00.5Z"}}),
    );
    assert_status(&r, 400, "BadRequest");
    let r = c.patch("missing", merge, json!({"spec": {}}));
    assert_status(&r, 404, "NotFound");
    let r = c.patch("a", "text/plain", json!({}));
    assert_status(&r, 415, "UnsupportedMediaType");
    let apply = "application/apply-patch+yaml";
    let r = c.patch("b", apply, lease("b", "x"));
    assert_status(&r, 400, "BadRequest");
    assert_eq!(r.message(), "fieldManager is required for apply requests");
    let r = c.send(
        "PATCH",
        &format!("{NS_PATH}/b?fieldManager=baton"),
        apply,
        &lease("b", "x").to_string(),
    );
    assert_eq!(r.code, 201, "apply creates: {}", r.text);
    let r = c.send("PATCH", &format!("{NS_PATH}/b?fieldManager=baton"), apply, &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "b"}, "spec": {"holderIdentity": "y"}}).to_string());
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(r.body["spec"]["holderIdentity"], "y");
}

#[test]
fn delete_checks_preconditions_and_answers_a_success_status() {
    let (_fake, c) = serve();
    let a = c.create("a", "one");
    let r = c.delete(
        "a",
        Some(json!({"preconditions": {"resourceVersion": "1"}})),
    );
    assert_status(&r, 409, "Conflict");
    assert!(r.message().contains(&format!("Precondition failed: ResourceVersion in precondition: 1, ResourceVersion in object meta: {}", a.rv())), "{}", r.text);
    let r = c.delete("a", Some(json!({"preconditions": {"resourceVersion": a.rv().to_string(), "uid": a.body["metadata"]["uid"]}})));
    assert_eq!(r.code, 200, "{}", r.text);
    assert_eq!(r.body["status"], "Success");
    assert_eq!(r.body["details"]["uid"], a.body["metadata"]["uid"]);
    assert_status(&c.delete("a", None), 404, "NotFound");
}

#[test]
fn micro_time_is_strict_and_returned_in_utc_with_six_digits() {
    let (_fake, c) = serve();
    let mut l = lease("a", "x");
    l["spec"]["renewTime"] = json!("2026-01-02T03:04:05.123Z");
    let r = c.post(l.clone());
    assert_status(&r, 400, "BadRequest");
    assert_eq!(
        r.message(),
        "Lease in version \"v1\" cannot be handled as a Lease: parsing time \"2026-01-02T03:04:05.123Z\" as \"2006-01-02T15:04:05.000000Z07:00\": cannot parse \".123Z\" as \".000000\""
    );
    for bad in [
        "2026-01-02T03:04:05.1234567Z",
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.123456",
        "2026-01-02 03:04:05.123456Z",
    ] {
        l["spec"]["renewTime"] = json!(bad);
        assert_status(&c.post(l.clone()), 400, "BadRequest");
    }
    l["spec"]["renewTime"] = json!("2026-01-02T03:04:05.123456+02:00");
    let r = c.post(l);
    assert_eq!(r.code, 201, "{}", r.text);
    assert_eq!(r.body["spec"]["renewTime"], "2026-01-02T01:04:05.123456Z");
}

#[test]
fn unknown_fields_are_dropped_with_a_warning() {
    let (_fake, c) = serve();
    let mut l = lease("a", "x");
    l["spec"]["extra"] = json!(1);
    let r = c.post(l);
    assert_eq!(r.code, 201);
    assert!(r.body["spec"].get("extra").is_none());
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "warning" && v.contains("unknown field \\\"spec.extra\\\"")),
        "{:?}",
        r.headers
    );
}

#[test]
fn a_token_is_required_when_set_401_wrong_403_missing() {
    let fake = FakeK8s::serve(FakeK8sOptions {
        token: Some("sekret".into()),
        ..Default::default()
    });
    let good = Client::new(&fake.url(), Some("sekret"));
    good.create("a", "x");
    let r = Client::new(&fake.url(), Some("wrong")).get(NS_PATH);
    assert_status(&r, 401, "Unauthorized");
    assert_eq!(r.message(), "Unauthorized");
    let anon = Client::new(&fake.url(), None);
    let r = anon.get(&format!("{NS_PATH}/a"));
    assert_status(&r, 403, "Forbidden");
    assert_eq!(
        r.message(),
        "leases.coordination.k8s.io \"a\" is forbidden: User \"system:anonymous\" cannot get resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"default\""
    );
    assert_status(&anon.get("/apis"), 403, "Forbidden");
    assert_status(&anon.get("/openapi/v2"), 403, "Forbidden");
    assert_eq!(good.get("/openapi/v2").code, 404);
    assert_eq!(anon.get("/version").code, 200);
}

#[test]
fn lists_filter_by_field_and_label_selectors_and_page_with_limit() {
    let (_fake, c) = serve();
    for name in ["a", "b", "c"] {
        let mut l = lease(name, "x");
        l["metadata"]["labels"] = json!({"app": if name == "c" { "other" } else { "baton" }});
        assert_eq!(c.post(l).code, 201);
    }
    let names = |r: &Reply| -> Vec<String> {
        r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&c.get(&format!("{NS_PATH}?fieldSelector=metadata.name%3Db"))),
        ["b"]
    );
    assert_eq!(
        names(&c.get(&format!("{NS_PATH}?labelSelector=app%3Dbaton"))),
        ["a", "b"]
    );
    assert_eq!(
        names(&c.get(&format!("{NS_PATH}?labelSelector=app!%3Dbaton"))),
        ["c"]
    );
    assert_status(
        &c.get(&format!("{NS_PATH}?fieldSelector=spec.holderIdentity%3Dx")),
        400,
        "BadRequest",
    );
    let page = c.get(&format!("{NS_PATH}?limit=2"));
    assert_eq!(names(&page), ["a", "b"]);
    assert_eq!(page.body["metadata"]["remainingItemCount"], 1);
    let token = page.body["metadata"]["continue"].as_str().unwrap();
    let rest = c.get(&format!("{NS_PATH}?limit=2&continue={token}"));
    assert_eq!(names(&rest), ["c"]);
    assert!(rest.body["metadata"].get("continue").is_none());
}

#[test]
fn watch_from_zero_lists_then_streams_changes_and_deletes_with_a_new_rv() {
    let (_fake, c) = serve();
    let a = c.create("a", "one");
    let mut w = c.watch("resourceVersion=0");
    let e = w.next_change();
    assert_eq!(e["type"], "ADDED");
    assert_eq!(e["object"], a.body);
    let mut body = a.body.clone();
    body["spec"]["holderIdentity"] = json!("two");
    let m = c.put("a", body);
    let e = w.next_change();
    assert_eq!(e["type"], "MODIFIED");
    assert_eq!(e["object"], m.body);
    c.delete("a", None);
    let e = w.next_change();
    assert_eq!(e["type"], "DELETED");
    assert_eq!(e["object"]["spec"]["holderIdentity"], "two");
    let deleted_rv: u64 = e["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        deleted_rv,
        m.rv() + 1,
        "a delete has a resourceVersion of its own"
    );
}

#[test]
fn watch_from_a_resource_version_replays_history_and_filters_by_name() {
    let (_fake, c) = serve();
    let a = c.create("a", "one");
    c.create("b", "one");
    let mut w = c.watch(&format!(
        "resourceVersion={}&fieldSelector=metadata.name%3Db",
        a.rv()
    ));
    let e = w.next_change();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("b"))
    );
    c.delete("a", None);
    c.delete("b", None);
    let e = w.next_change();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("b")),
        "a's delete is filtered out"
    );
}

#[test]
fn watch_from_a_resource_version_older_than_the_history_is_410_expired() {
    let fake = FakeK8s::serve(FakeK8sOptions {
        history: 2,
        ..Default::default()
    });
    let c = Client::new(&fake.url(), None);
    let first = c.create("a", "x");
    for name in ["b", "c", "d"] {
        c.create(name, "x");
    }
    let mut w = c.watch(&format!("resourceVersion={}", first.rv()));
    let e = w.next().expect("an ERROR event");
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert!(
        e["object"]["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("too old resource version: {} (", first.rv())),
        "{e}"
    );
    assert!(w.next().is_none(), "the stream ends after the error");
}

#[test]
fn bookmarks_carry_the_current_resource_version_and_timeout_seconds_ends_the_watch() {
    let fake = FakeK8s::serve(FakeK8sOptions {
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    });
    let c = Client::new(&fake.url(), None);
    let a = c.create("a", "x");
    let mut w = c.watch("allowWatchBookmarks=true&resourceVersion=0&timeoutSeconds=2");
    assert_eq!(w.next().unwrap()["type"], "ADDED");
    let b = w.next().unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(b["object"]["kind"], "Lease");
    assert_eq!(b["object"]["apiVersion"], "coordination.k8s.io/v1");
    assert_eq!(
        b["object"]["metadata"]["resourceVersion"],
        a.rv().to_string()
    );
    let start = Instant::now();
    while w.next().is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timeoutSeconds=2 ends the stream"
        );
    }
    // Without allowWatchBookmarks there are none.
    let mut w = c.watch("resourceVersion=0&timeoutSeconds=1");
    assert_eq!(w.next().unwrap()["type"], "ADDED");
    assert!(w.next().is_none());
}

#[test]
fn the_process_keeps_its_objects_across_kill_and_restart() {
    let mut fake = FakeK8sProcess::start();
    let c = Client::new(&fake.url(), None);
    let a = c.create("a", "one");
    fake.kill();
    assert!(
        TcpStream::connect(c.addr.as_str()).is_err(),
        "a killed fake refuses connections"
    );
    fake.restart();
    let got = c.get(&format!("{NS_PATH}/a"));
    assert_eq!(
        got.body, a.body,
        "the object survives, resourceVersion and uid included"
    );
    let b = c.create("b", "two");
    assert_eq!(b.rv(), a.rv() + 1, "the counter survives");
    // The history does not: a watch from before the restart is too old.
    let mut w = c.watch(&format!("resourceVersion={}", a.rv() - 1));
    assert_eq!(w.next().unwrap()["object"]["code"], 410);
}

#[test]
fn a_paused_process_answers_nothing_until_resumed() {
    let fake = FakeK8sProcess::start();
    let c = Client::new(&fake.url(), None);
    c.create("a", "one");
    fake.pause();
    let mut s = connect(&c.addr);
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write_request(
        &mut s,
        &c.addr,
        None,
        "GET",
        &format!("{NS_PATH}/a"),
        "",
        "",
    );
    let mut buf = [0u8; 1];
    assert!(s.read(&mut buf).is_err(), "a paused fake answers nothing");
    fake.resume();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (code, _) = read_head(&mut BufReader::new(s));
    assert_eq!(code, 200, "the request is answered after resume");
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl ({e}): install it with `apt-get install kubernetes-client`, or run scripts/test, which installs it"));
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kubectl (client-go) sends no credentials to a plain-HTTP server (clientcmd reads the user's
/// auth information only for TLS), so this fake has no token.
#[test]
fn kubectl_gets_and_deletes_leases() {
    let fake = FakeK8sProcess::start();
    let dir = baton_testkit::servers::scratch_dir("baton-kubectl");
    let kubeconfig = dir.join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let c = Client::new(&fake.url(), None);
    c.create("baton-lease", "baton-holder-1");
    let table = kubectl(&kubeconfig, &["get", "leases"]);
    assert!(
        table.contains("HOLDER") && table.contains("baton-holder-1"),
        "{table}"
    );
    let yaml = kubectl(&kubeconfig, &["get", "lease", "baton-lease", "-o", "yaml"]);
    assert!(yaml.contains("holderIdentity: baton-holder-1"), "{yaml}");
    assert!(
        yaml.contains("renewTime: \"2026-01-02T03:04:05.123456Z\""),
        "{yaml}"
    );
    let deleted = kubectl(&kubeconfig, &["delete", "lease", "baton-lease"]);
    assert!(deleted.contains("deleted"), "{deleted}");
    assert_eq!(c.get(&format!("{NS_PATH}/baton-lease")).code, 404);
    let _ = std::fs::remove_dir_all(dir);
}

/// The fake-only request counter: per client (the bearer token, a label when the fake checks
/// none) and verb, read in process and at its debug path, which is not counted itself.
#[test]
fn counts_requests_per_client_and_verb_in_process_and_at_the_debug_path() {
    let fake = FakeK8s::serve(FakeK8sOptions::default());
    let a = Client::new(&fake.url(), Some("client-a"));
    let b = Client::new(&fake.url(), None);
    a.create("counted", "one");
    a.get(&format!("{NS_PATH}/counted"));
    a.get(&format!("{NS_PATH}/counted"));
    b.get(NS_PATH);
    b.get("/version");
    let counts = fake.requests();
    assert_eq!(counts.get("client-a", "create"), 1);
    assert_eq!(counts.get("client-a", "get"), 2);
    assert_eq!(counts.get("anonymous", "list"), 1);
    assert_eq!(counts.get("anonymous", "nonresource"), 1);
    let served = b.get(baton_testkit::fake_k8s::REQUESTS_PATH);
    assert_eq!(served.code, 200, "{}", served.text);
    let served = baton_testkit::fake_k8s::Requests::from_json(&served.body).unwrap();
    assert_eq!(served, counts, "the debug path is not counted");
}
