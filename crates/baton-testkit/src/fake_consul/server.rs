//! The fake agent's HTTP API: routes, ACL, blocking queries and the session reaper.
//!
//! Routes and status codes follow `agent/http_register.go`, `agent/kvs_endpoint.go`,
//! `agent/session_endpoint.go` and `agent/txn_endpoint.go`; blocking queries follow
//! `agent/consul/rpc.go` (`blockingQuery`) and the API docs' "Blocking Queries" page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Response, StatusCode};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::FakeConsulOptions;
use super::state::{State, TxnOp, entry_json, parse_go_duration, session_json};
use crate::fake_k8s::requests::{REQUESTS_PATH, RequestCounter};

/// The datacenter the fake agent is in.
pub const DATACENTER: &str = "dc1";
/// The default wait of a blocking query (`agent/http.go`, `parseWait`; `rpc.go`'s
/// `defaultQueryTime`): 5 minutes.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// The longest wait a blocking query may ask for (`maxQueryTime`): 10 minutes.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// How often the reaper looks for sessions whose timers fired.
const REAP_EVERY: Duration = Duration::from_millis(5);

struct Server {
    state: Mutex<State>,
    /// The last raft index applied, for blocking queries to wait on.
    changes: watch::Sender<u64>,
    token: Option<String>,
    requests: Arc<RequestCounter>,
}

/// Serve the fake agent on `listener` with `options`, counting requests in `requests`.
pub(crate) fn run_counted(
    listener: tokio::net::TcpListener,
    options: FakeConsulOptions,
    requests: Arc<RequestCounter>,
) -> std::io::Result<impl Future<Output = std::io::Result<()>> + Send> {
    let state = State::open(options.state_file.clone(), Instant::now())?;
    let (changes, _) = watch::channel(state.index);
    let server = Arc::new(Server {
        state: Mutex::new(state),
        changes,
        token: options.token.clone(),
        requests,
    });
    let reaper = server.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let server = server.clone();
        async move { handle(server, req).await }
    });
    // Go's `net` package turns Nagle's algorithm off on every TCP connection (D88).
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    Ok(async move {
        let reaping = async move {
            loop {
                tokio::time::sleep(REAP_EVERY).await;
                let mut state = reaper.lock();
                if state.reap(Instant::now()) {
                    reaper.commit(&state);
                }
            }
        };
        tokio::select! {
            served = axum::serve(listener, app) => served,
            () = reaping => Ok(()),
        }
    })
}

impl Server {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// After a write: keep it in the state file and wake blocking queries.
    fn commit(&self, state: &State) {
        if let Err(e) = state.save() {
            eprintln!("baton-fake-consul: cannot write the state file: {e}");
        }
        self.changes.send_replace(state.index);
    }
}

fn respond(code: StatusCode, index: Option<u64>, body: Body, json: bool) -> Response<Body> {
    let mut builder = Response::builder().status(code);
    if json {
        builder = builder.header("Content-Type", "application/json");
    } else {
        builder = builder.header("Content-Type", "text/plain; charset=utf-8");
    }
    if let Some(index) = index {
        builder = builder
            .header("X-Consul-Index", index.to_string())
            .header("X-Consul-KnownLeader", "true")
            .header("X-Consul-LastContact", "0");
    }
    builder.body(body).expect("a response")
}

fn json_ok(index: Option<u64>, value: &Value) -> Response<Body> {
    respond(StatusCode::OK, index, Body::from(value.to_string()), true)
}

fn text(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    respond(code, None, Body::from(message.into()), false)
}

/// An RPC error: `agent/http.go` answers 500 with its text.
fn rpc_error(message: impl Into<String>) -> Response<Body> {
    text(StatusCode::INTERNAL_SERVER_ERROR, message)
}

fn query(uri: &axum::http::Uri) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token a request presents (`agent/http.go`, `parseTokenInternal`): `X-Consul-Token`,
/// then `Authorization: Bearer`, then `?token=`.
fn presented_token(headers: &HeaderMap, params: &HashMap<String, String>) -> Option<String> {
    if let Some(t) = headers.get("X-Consul-Token").and_then(|v| v.to_str().ok()) {
        return Some(t.to_owned());
    }
    if let Some(t) = headers
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_owned());
    }
    params.get("token").cloned()
}

/// The verb a request is counted under (fake-only, see `requests`).
fn verb(method: &Method, path: &str, params: &HashMap<String, String>) -> &'static str {
    let blocking = params
        .get("index")
        .is_some_and(|i| i != "0" && !i.is_empty());
    match (method.as_str(), path) {
        ("GET", p) if p.starts_with("/v1/kv/") && blocking => "kv-block",
        ("GET", p) if p.starts_with("/v1/kv/") => "kv-get",
        ("PUT", p) if p.starts_with("/v1/kv/") => "kv-put",
        ("DELETE", p) if p.starts_with("/v1/kv/") => "kv-delete",
        (_, "/v1/txn") => "txn",
        (_, "/v1/session/create") => "session-create",
        (_, p) if p.starts_with("/v1/session/renew/") => "session-renew",
        (_, p) if p.starts_with("/v1/session/destroy/") => "session-destroy",
        (_, p) if p.starts_with("/v1/session/") => "session-read",
        _ => "other",
    }
}

async fn handle(server: Arc<Server>, req: axum::extract::Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let params = query(&parts.uri);
    let method = parts.method.clone();
    if path == REQUESTS_PATH {
        return json_ok(None, &server.requests.snapshot().to_json());
    }
    let presented = presented_token(&parts.headers, &params);
    let client = match (&server.token, &presented) {
        (None, Some(t)) => t.clone(),
        (None, None) | (Some(_), None) => "anonymous".to_owned(),
        (Some(want), Some(t)) if t == want => "authenticated".to_owned(),
        (Some(_), Some(_)) => "unauthenticated".to_owned(),
    };
    server
        .requests
        .count(client.clone(), verb(&method, &path, &params));
    // ACL (`acl/errors.go`): an unknown token is 403 "ACL not found"; the anonymous token, which
    // has no rights with a default policy of deny, is 403 "Permission denied".
    if server.token.is_some() && path != "/v1/status/leader" {
        match client.as_str() {
            "authenticated" => {}
            "anonymous" => {
                return text(
                    StatusCode::FORBIDDEN,
                    "Permission denied: anonymous token lacks permission",
                );
            }
            _ => return text(StatusCode::FORBIDDEN, "ACL not found"),
        }
    }
    if let Some(dc) = params.get("dc")
        && dc != DATACENTER
    {
        return rpc_error("No path to datacenter");
    }
    let body = match axum::body::to_bytes(body, 16 << 20).await {
        Ok(b) => b,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        let key = decode(key);
        return match method {
            Method::GET => kv_get(&server, &key, &params).await,
            Method::PUT => kv_put(&server, &key, &params, body),
            Method::DELETE => kv_delete(&server, &key, &params),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        };
    }
    if let Some(rest) = path.strip_prefix("/v1/session/") {
        return session(&server, &method, rest, body);
    }
    match (method, path.as_str()) {
        (Method::PUT, "/v1/txn") => txn(&server, &body),
        (Method::GET, "/v1/status/leader") => json_ok(None, &json!("127.0.0.1:8300")),
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

fn flags_of(params: &HashMap<String, String>) -> Result<u64, String> {
    match params.get("flags") {
        None => Ok(0),
        Some(f) => f
            .parse()
            .map_err(|e| format!("strconv.ParseUint: parsing {f:?}: {e}")),
    }
}

async fn kv_get(server: &Server, key: &str, params: &HashMap<String, String>) -> Response<Body> {
    let recurse = params.contains_key("recurse");
    if key.is_empty() && !recurse {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let index_of = |state: &State| {
        if recurse {
            state.table_index()
        } else {
            state.key_index(key)
        }
    };
    // A blocking query waits while the index is at most the one given, up to `wait` (plus up
    // to wait/16 of jitter: `rpc.go`, `blockingQuery`).
    let min_index: u64 = params
        .get("index")
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    if min_index > 0 {
        let wait = params
            .get("wait")
            .and_then(|w| parse_go_duration(w).ok())
            .filter(|w| !w.is_zero())
            .unwrap_or(DEFAULT_WAIT)
            .min(MAX_WAIT);
        let jitter = wait.mul_f64(fastrand::f64() / 16.0);
        let deadline = tokio::time::Instant::now() + wait + jitter;
        let mut changes = server.changes.subscribe();
        loop {
            if index_of(&server.lock()) > min_index {
                break;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
    let state = server.lock();
    let index = index_of(&state);
    let entries: Vec<Value> = if recurse {
        state
            .kv
            .iter()
            .filter(|(k, _)| k.starts_with(key))
            .map(|(k, e)| entry_json(k, e, true))
            .collect()
    } else {
        state
            .kv
            .get(key)
            .map(|e| entry_json(key, e, true))
            .into_iter()
            .collect()
    };
    if entries.is_empty() {
        return respond(StatusCode::NOT_FOUND, Some(index), Body::empty(), false);
    }
    if params.contains_key("raw") && !recurse {
        let value = state.kv[key].value.clone();
        return respond(StatusCode::OK, Some(index), Body::from(value), false);
    }
    json_ok(Some(index), &Value::Array(entries))
}

fn kv_put(
    server: &Server,
    key: &str,
    params: &HashMap<String, String>,
    body: Bytes,
) -> Response<Body> {
    if key.is_empty() {
        return text(StatusCode::BAD_REQUEST, "Missing key name");
    }
    let given = ["cas", "acquire", "release"]
        .iter()
        .filter(|f| params.contains_key(**f))
        .count();
    if given > 1 {
        return text(StatusCode::BAD_REQUEST, "Conflicting flags");
    }
    let flags = match flags_of(params) {
        Ok(f) => f,
        Err(e) => return rpc_error(e),
    };
    let value = body.to_vec();
    let mut state = server.lock();
    let result = if let Some(cas) = params.get("cas") {
        match cas.parse() {
            Ok(cas) => Ok(state.kv_cas(key, value, flags, cas)),
            Err(e) => Err(format!("strconv.ParseUint: parsing {cas:?}: {e}")),
        }
    } else if let Some(session) = params.get("acquire") {
        state.kv_lock(key, value, flags, session, Instant::now())
    } else if let Some(session) = params.get("release") {
        Ok(state.kv_unlock(key, value, flags, session))
    } else {
        Ok(state.kv_set(key, value, flags))
    };
    server.commit(&state);
    match result {
        Ok(done) => json_ok(None, &json!(done)),
        Err(e) => rpc_error(e),
    }
}

fn kv_delete(server: &Server, key: &str, params: &HashMap<String, String>) -> Response<Body> {
    let mut state = server.lock();
    let done = if params.contains_key("recurse") {
        state.kv_delete_tree(key)
    } else {
        if key.is_empty() {
            return text(StatusCode::BAD_REQUEST, "Missing key name");
        }
        let cas = match params.get("cas").map(|c| c.parse::<u64>()) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return rpc_error(e.to_string()),
        };
        state.kv_delete(key, cas)
    };
    server.commit(&state);
    json_ok(None, &json!(done))
}

fn session(server: &Server, method: &Method, rest: &str, body: Bytes) -> Response<Body> {
    let now = Instant::now();
    let (op, id) = rest.split_once('/').unwrap_or((rest, ""));
    match (method, op) {
        (&Method::PUT, "create") => {
            let body: Value = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(&body) {
                    Ok(v) => v,
                    Err(e) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("Request decode failed: {e}"),
                        );
                    }
                }
            };
            let mut state = server.lock();
            let created = state.create_session(&body, now);
            server.commit(&state);
            match created {
                Ok(id) => json_ok(None, &json!({ "ID": id })),
                Err(e) => rpc_error(e),
            }
        }
        (&Method::PUT, "renew") => {
            let mut state = server.lock();
            match state.renew_session(id, now) {
                Some(s) => json_ok(Some(state.index), &json!([session_json(&s)])),
                // `agent/session_endpoint.go`, `SessionRenew`.
                None => text(
                    StatusCode::NOT_FOUND,
                    format!("Session id '{id}' not found"),
                ),
            }
        }
        (&Method::PUT, "destroy") => {
            let mut state = server.lock();
            state.destroy_session(id, now);
            server.commit(&state);
            json_ok(None, &json!(true))
        }
        (&Method::GET, "info") => {
            let state = server.lock();
            let found: Vec<Value> = state
                .sessions
                .get(id)
                .map(session_json)
                .into_iter()
                .collect();
            json_ok(Some(state.index), &Value::Array(found))
        }
        (&Method::GET, "list") => {
            let state = server.lock();
            let all: Vec<Value> = state.sessions.values().map(session_json).collect();
            json_ok(Some(state.index), &Value::Array(all))
        }
        _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// `PUT /v1/txn` (`agent/txn_endpoint.go`): 200 with `Results`, or 409 with `Errors` when the
/// transaction was rolled back.
fn txn(server: &Server, body: &[u8]) -> Response<Body> {
    let ops: Vec<Value> = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Failed to parse body: {e}"),
            );
        }
    };
    let mut parsed = Vec::with_capacity(ops.len());
    for op in &ops {
        if let Some(kv) = op.get("KV") {
            let value = match kv["Value"].as_str() {
                Some(s) => match base64::engine::general_purpose::STANDARD.decode(s) {
                    Ok(v) => v,
                    Err(e) => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("Failed to parse body: {e}"),
                        );
                    }
                },
                None => Vec::new(),
            };
            parsed.push(TxnOp::Kv {
                verb: kv["Verb"].as_str().unwrap_or_default().to_owned(),
                key: kv["Key"].as_str().unwrap_or_default().to_owned(),
                value,
                flags: kv["Flags"].as_u64().unwrap_or(0),
                index: kv["Index"].as_u64().unwrap_or(0),
                session: kv["Session"].as_str().unwrap_or_default().to_owned(),
            });
        } else if let Some(session) = op.get("Session") {
            if session["Verb"] != "delete" {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("Unknown session verb {}", session["Verb"]),
                );
            }
            parsed.push(TxnOp::SessionDelete {
                id: session["Session"]["ID"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        } else {
            return text(
                StatusCode::BAD_REQUEST,
                "Failed to parse body: unknown operation",
            );
        }
    }
    let mut state = server.lock();
    let result = state.txn(&parsed, Instant::now());
    server.commit(&state);
    let index = state.index;
    match result {
        Ok(entries) => {
            let results: Vec<Value> = parsed
                .iter()
                .filter_map(|op| match op {
                    TxnOp::Kv { verb, key, .. } => Some((verb.as_str(), key.as_str())),
                    TxnOp::SessionDelete { .. } => None,
                })
                .filter(|(verb, _)| !matches!(*verb, "delete" | "delete-cas" | "check-not-exists"))
                .zip(entries)
                .map(|((verb, key), e)| json!({ "KV": entry_json(key, &e, verb == "get") }))
                .collect();
            json_ok(Some(index), &json!({ "Results": results, "Errors": null }))
        }
        Err((i, what)) => respond(
            StatusCode::CONFLICT,
            Some(index),
            Body::from(
                json!({ "Results": null, "Errors": [{ "OpIndex": i, "What": what }] }).to_string(),
            ),
            true,
        ),
    }
}
