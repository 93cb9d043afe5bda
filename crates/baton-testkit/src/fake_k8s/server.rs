//! The HTTP side: authentication, routing, the Lease verbs, lists, watches and discovery.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::FakeK8sOptions;
use super::lease::{self, API_VERSION};
use super::micro_time::{now_rfc3339, parse_rfc3339_secs};
use super::requests::{REQUESTS_PATH, RequestCounter};
use super::status::{self, ApiError, GROUP, OPTIMISTIC_LOCK};
use super::store::{Event, EventType, Key, Store};

/// The largest request body the fake reads.
const BODY_LIMIT: usize = 3 * 1024 * 1024;

struct Server {
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<Event>>,
    options: FakeK8sOptions,
    addr: String,
    requests: Arc<RequestCounter>,
}

impl Server {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply a change under the store's lock: record it, save, and tell every watcher.
    fn commit(&self, store: &mut Store, event: Event) {
        store.record(event.clone());
        let _ = self.events.send(Arc::new(event));
    }
}

/// The fake on `listener`: reads the state file now, and returns the future that serves until
/// it is dropped (so a command can say it is ready in between).
///
/// # Errors
///
/// When the state file cannot be read.
pub fn run(
    listener: tokio::net::TcpListener,
    options: FakeK8sOptions,
) -> std::io::Result<impl Future<Output = std::io::Result<()>> + Send> {
    run_counted(listener, options, Arc::default())
}

/// [`run`], counting requests in `requests` (which the server also serves at
/// [`REQUESTS_PATH`]).
pub(crate) fn run_counted(
    listener: tokio::net::TcpListener,
    options: FakeK8sOptions,
    requests: Arc<RequestCounter>,
) -> std::io::Result<impl Future<Output = std::io::Result<()>> + Send> {
    let store = Store::open(options.state_file.clone(), options.history)?;
    let addr = listener.local_addr()?.to_string();
    let (events, _) = broadcast::channel(4096);
    let server = Arc::new(Server {
        store: Mutex::new(store),
        events,
        options,
        addr,
        requests,
    });
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let server = server.clone();
        async move { handle(server, req).await }
    });
    // Go's `net` package turns Nagle's algorithm off on every TCP connection
    // (`net/tcpsock_posix.go`, `setNoDelay(fd, true)` in `newTCPConn`), so the API server
    // writes each watch event at once; with Nagle on, an event written while the previous one
    // is still unacknowledged waits for the client's delayed ACK (40 ms).
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    Ok(async move { axum::serve(listener, app).await })
}

fn json_response(code: u16, body: &Value, warnings: &[String]) -> Response<Body> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // `staging/src/k8s.io/apiserver/pkg/endpoints/handlers/fieldmanager`... the decoder's
    // unknown-field warnings reach the client as `Warning: 299 - "..."` headers
    // (`staging/src/k8s.io/apiserver/pkg/warning`).
    for w in warnings {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - {:?}", w)) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

fn error_response(e: ApiError) -> Response<Body> {
    json_response(e.code, &e.body, &[])
}

/// `404 page not found`, the real server's answer for a path no handler serves.
fn page_not_found() -> Response<Body> {
    let mut resp = Response::new(Body::from("404 page not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// What a request addresses.
#[derive(Debug)]
enum Target {
    /// `/version`, `/api`, ...: a non-resource path.
    NonResource(&'static str),
    /// `/apis/coordination.k8s.io/v1/leases` (namespace `None`) or `.../namespaces/NS/leases`.
    Collection {
        namespace: Option<String>,
        watch_path: bool,
    },
    /// `.../namespaces/NS/leases/NAME`.
    Object {
        namespace: String,
        name: String,
        watch_path: bool,
    },
}

fn route(path: &str) -> Option<Target> {
    let path = path.trim_end_matches('/');
    let fixed = match path {
        "/version" => Some("version"),
        "/api" => Some("api"),
        "/api/v1" => Some("api/v1"),
        "/apis" => Some("apis"),
        "/apis/coordination.k8s.io" => Some("group"),
        "/apis/coordination.k8s.io/v1" => Some("groupversion"),
        "/healthz" | "/livez" | "/readyz" => Some("health"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(Target::NonResource(f));
    }
    let rest = path.strip_prefix("/apis/coordination.k8s.io/v1/")?;
    let mut parts: Vec<&str> = rest.split('/').collect();
    // The deprecated `/watch/` prefix (`staging/src/k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`).
    let watch_path = parts.first() == Some(&"watch");
    if watch_path {
        parts.remove(0);
    }
    match parts.as_slice() {
        ["leases"] => Some(Target::Collection {
            namespace: None,
            watch_path,
        }),
        ["namespaces", ns, "leases"] if !ns.is_empty() => Some(Target::Collection {
            namespace: Some(percent_decode(ns)),
            watch_path,
        }),
        ["namespaces", ns, "leases", name] if !ns.is_empty() && !name.is_empty() => {
            Some(Target::Object {
                namespace: percent_decode(ns),
                name: percent_decode(name),
                watch_path,
            })
        }
        _ => None,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_params(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `watch=true|1` (`staging/src/k8s.io/apimachinery/pkg/apis/meta/v1` `ListOptions.Watch`
/// decoded by the query parameter codec: Go's `strconv.ParseBool`).
fn truthy(v: Option<&String>) -> bool {
    matches!(
        v.map(String::as_str),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

async fn handle(server: Arc<Server>, req: axum::extract::Request) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    if path == REQUESTS_PATH && parts.method == Method::GET {
        return json_response(200, &server.requests.snapshot().to_json(), &[]);
    }
    let params = query_params(parts.uri.query());
    // Unknown paths are authorized as non-resource paths first, as the filters run before
    // the mux answers `404 page not found`.
    let target = route(&path).unwrap_or(Target::NonResource("unknown"));
    let watch = match &target {
        Target::Collection { watch_path, .. } | Target::Object { watch_path, .. } => {
            *watch_path || truthy(params.get("watch"))
        }
        Target::NonResource(_) => false,
    };
    server.requests.count(
        client_label(&server, &parts.headers),
        verb(&parts.method, &target, watch),
    );
    if let Err(e) = authenticate(
        &server,
        &parts.method,
        &parts.headers,
        &target,
        &params,
        watch,
        &path,
    ) {
        return error_response(e);
    }
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return error_response(status::bad_request(format!("reading the body: {e}"))),
    };
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let method = parts.method;
    let result = match target {
        Target::NonResource("unknown") => return page_not_found(),
        Target::NonResource(which) => {
            if method != Method::GET {
                return error_response(status::method_not_supported(method.as_str()));
            }
            return discovery(&server, which);
        }
        Target::Collection { namespace, .. } => match method {
            Method::GET if watch => {
                return watch_response(server, namespace, None, &params).await;
            }
            Method::GET => list(&server, namespace.as_deref(), &params, &accept),
            Method::POST => match namespace {
                Some(ns) => create(&server, &ns, &content_type, &body, &params),
                None => Err(status::method_not_supported("create")),
            },
            _ => Err(status::method_not_supported(
                &method.as_str().to_ascii_lowercase(),
            )),
        },
        Target::Object {
            namespace, name, ..
        } => match method {
            Method::GET if watch => {
                return watch_response(server, Some(namespace), Some(name), &params).await;
            }
            Method::GET => get(&server, &namespace, &name, &accept),
            Method::PUT => update(&server, &namespace, &name, &content_type, &body),
            Method::PATCH => patch(&server, &namespace, &name, &content_type, &body, &params),
            Method::DELETE => delete(&server, &namespace, &name, &body),
            _ => Err(status::method_not_supported(
                &method.as_str().to_ascii_lowercase(),
            )),
        },
    };
    match result {
        Ok((code, body, warnings)) => json_response(code, &body, &warnings),
        Err(e) => error_response(e),
    }
}

/// Who sent a request, for the fake-only request counter (`requests`): the bearer token
/// itself when the fake checks none, else whether it was the right one.
fn client_label(server: &Server, headers: &HeaderMap) -> String {
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return "anonymous".to_owned();
    };
    let bearer = auth
        .to_str()
        .unwrap_or("")
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    match (&server.options.token, bearer) {
        (None, Some(token)) => token,
        (Some(want), Some(token)) if *want == token => "authenticated".to_owned(),
        _ => "unauthenticated".to_owned(),
    }
}

/// The verb of a request as `requestinfo.go` names it, or `nonresource`.
fn verb(method: &Method, target: &Target, watch: bool) -> &'static str {
    let collection = match target {
        Target::NonResource(_) => return "nonresource",
        Target::Collection { .. } => true,
        Target::Object { .. } => false,
    };
    match *method {
        Method::GET if watch => "watch",
        Method::GET if collection => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// Bearer-token authentication (`staging/src/k8s.io/apiserver/pkg/authentication/request/bearertoken`):
/// a token that no authenticator accepts is 401 `Unauthorized`; a request without credentials
/// is `system:anonymous` (anonymous auth is on by default), which RBAC lets read only the
/// health and version endpoints (`system:public-info-viewer`), so anything else is 403.
fn authenticate(
    server: &Server,
    method: &Method,
    headers: &HeaderMap,
    target: &Target,
    params: &BTreeMap<String, String>,
    watch: bool,
    path: &str,
) -> Result<(), ApiError> {
    let Some(token) = &server.options.token else {
        return Ok(());
    };
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let given = auth.to_str().unwrap_or("");
        let bearer = given
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        return if bearer == Some(token.as_str()) {
            Ok(())
        } else {
            Err(status::unauthorized())
        };
    }
    // The verb as `requestinfo.go` names it.
    let verb = |collection: bool| -> &'static str {
        match *method {
            Method::GET if watch => "watch",
            Method::GET if collection => "list",
            Method::GET => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if collection => "deletecollection",
            Method::DELETE => "delete",
            _ => "unknown",
        }
    };
    match target {
        Target::NonResource("version" | "health") => Ok(()),
        Target::NonResource(_) => Err(status::forbidden(
            &method.as_str().to_ascii_lowercase(),
            None,
            "",
            path,
        )),
        Target::Collection { namespace, .. } => {
            // A list or watch narrowed to one name is authorized as that name.
            let name = params
                .get("fieldSelector")
                .and_then(|s| s.strip_prefix("metadata.name="))
                .filter(|n| !n.contains(','))
                .unwrap_or("");
            Err(status::forbidden(
                verb(true),
                Some(namespace.as_deref().unwrap_or("")),
                name,
                path,
            ))
        }
        Target::Object {
            namespace, name, ..
        } => Err(status::forbidden(verb(false), Some(namespace), name, path)),
    }
}

type Reply = Result<(u16, Value, Vec<String>), ApiError>;

/// A decoded request body for create or update.
fn decode_body(content_type: &str, body: &Bytes) -> Result<lease::Decoded, ApiError> {
    if !content_type.is_empty() && content_type != "application/json" && content_type != "*/*" {
        return Err(status::unsupported_body_type(content_type));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        status::decode_error(&format!("couldn't get version/kind; json parse error: {e}"))
    })?;
    lease::decode(value)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object["metadata"][field].as_str().unwrap_or("")
}

fn new_uid() -> String {
    let mut b = [0u8; 16];
    for x in &mut b {
        *x = fastrand::u8(..);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Fields only the server sets (`rest.FillObjectMetaSystemFields`, `BeforeCreate`): a
/// create gets a new uid and creationTimestamp; deletion fields, `selfLink` and
/// `managedFields` are not kept.
fn prepare_for_create(object: &mut Value, namespace: &str, rv: u64) {
    let meta = object["metadata"]
        .as_object_mut()
        .expect("metadata is an object");
    for f in [
        "generateName",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "generation",
    ] {
        if f != "generateName" {
            meta.remove(f);
        }
    }
    meta.insert("namespace".into(), namespace.into());
    meta.insert("uid".into(), new_uid().into());
    meta.insert("resourceVersion".into(), rv.to_string().into());
    meta.insert("creationTimestamp".into(), now_rfc3339().into());
}

/// `names.SimpleNameGenerator`: the prefix and five random characters.
fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// POST (`staging/src/k8s.io/apiserver/pkg/endpoints/handlers/create.go`, then
/// `registry/generic/registry/store.go` `Create`).
fn create(
    server: &Server,
    namespace: &str,
    content_type: &str,
    body: &Bytes,
    _params: &BTreeMap<String, String>,
) -> Reply {
    let lease::Decoded {
        mut object,
        warnings,
    } = decode_body(content_type, body)?;
    // `rest.BeforeCreate`: "the namespace of the provided object does not match the namespace
    // sent on the request".
    let body_ns = meta_str(&object, "namespace");
    if !body_ns.is_empty() && body_ns != namespace {
        return Err(status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if meta_str(&object, "name").is_empty() && !meta_str(&object, "generateName").is_empty() {
        let name = generate_name(meta_str(&object, "generateName"));
        object["metadata"]["name"] = name.into();
    }
    object["metadata"]["namespace"] = namespace.into();
    lease::validate(&object)?;
    if !meta_str(&object, "resourceVersion").is_empty() {
        // etcd3 `store.Create`: an error the registry does not translate, so a 500.
        return Err(ApiError {
            code: 500,
            body: json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "resourceVersion should not be set on objects to be created",
                "code": 500,
            }),
        });
    }
    let name = meta_str(&object, "name").to_owned();
    let mut store = server.store();
    let key: Key = (namespace.to_owned(), name.clone());
    if store.objects.contains_key(&key) {
        return Err(status::already_exists(&name));
    }
    let rv = store.bump();
    prepare_for_create(&mut object, namespace, rv);
    object["metadata"]
        .as_object_mut()
        .map(|m| m.remove("generateName"));
    store.objects.insert(key, object.clone());
    server.commit(
        &mut store,
        Event {
            kind: EventType::Added,
            rv,
            object: object.clone(),
            prev: None,
        },
    );
    Ok((201, object, warnings))
}

fn get(server: &Server, namespace: &str, name: &str, accept: &str) -> Reply {
    let store = server.store();
    let object = store
        .objects
        .get(&(namespace.to_owned(), name.to_owned()))
        .ok_or_else(|| status::not_found(name))?;
    if let Some(version) = table_version(accept) {
        return Ok((200, table(version, &[object], store.rv, None), Vec::new()));
    }
    Ok((200, object.clone(), Vec::new()))
}

/// The object without what the server owns, to tell whether a write changes anything.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// The update path shared by PUT and PATCH (`registry/generic/registry/store.go` `Update`
/// with etcd3's `GuaranteedUpdate`): `new` is the object the client wants, already decoded.
/// Checks the uid precondition, the resourceVersion (required: Lease's strategy has
/// `AllowUnconditionalUpdate() == false`; it must equal the stored one), validates, keeps the
/// server's fields, and writes only if something changed.
fn store_update(
    server: &Server,
    store: &mut Store,
    namespace: &str,
    name: &str,
    mut new: Value,
    existing: Value,
) -> Result<(u16, Value), ApiError> {
    let uid = meta_str(&new, "uid").to_owned();
    let old_uid = meta_str(&existing, "uid").to_owned();
    if !uid.is_empty() && uid != old_uid {
        return Err(status::precondition_failed(
            namespace, name, "UID", &uid, &old_uid,
        ));
    }
    let new_rv = meta_str(&new, "resourceVersion").to_owned();
    if new_rv.is_empty() || new_rv == "0" {
        // store.go: `field.Invalid(field.NewPath("metadata").Child("resourceVersion"),
        // newResourceVersion, "must be specified for an update")`, GroupKind from the resource.
        return Err(status::invalid(
            status::RESOURCE,
            name,
            &[status::FieldError::invalid(
                "metadata.resourceVersion",
                "0x0",
                "must be specified for an update",
            )],
        ));
    }
    if new_rv != meta_str(&existing, "resourceVersion") {
        return Err(status::conflict(name, OPTIMISTIC_LOCK));
    }
    lease::validate(&new)?;
    // `rest.BeforeUpdate`: uid, creationTimestamp and the other system fields come from the
    // stored object.
    {
        let meta = new["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        for f in ["uid", "creationTimestamp", "namespace"] {
            meta.insert(f.into(), existing["metadata"][f].clone());
        }
        for f in [
            "selfLink",
            "managedFields",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generateName",
        ] {
            meta.remove(f);
        }
        if let Some(g) = existing["metadata"].get("generateName") {
            meta.insert("generateName".into(), g.clone());
        }
    }
    // etcd3 `GuaranteedUpdate`: "if we don't have to write, short-circuit" — the same bytes
    // keep the same resourceVersion and make no event.
    if same_content(&new, &existing) {
        return Ok((200, existing));
    }
    let rv = store.bump();
    new["metadata"]["resourceVersion"] = rv.to_string().into();
    store
        .objects
        .insert((namespace.to_owned(), name.to_owned()), new.clone());
    server.commit(
        store,
        Event {
            kind: EventType::Modified,
            rv,
            object: new.clone(),
            prev: Some(existing),
        },
    );
    Ok((200, new))
}

/// `handlers/rest.go` `checkName`.
fn check_name(object: &mut Value, namespace: &str, name: &str) -> Result<(), ApiError> {
    let obj_name = meta_str(object, "name");
    if obj_name != name {
        return Err(status::bad_request(format!(
            "the name of the object ({obj_name}) does not match the name on the URL ({name})"
        )));
    }
    let obj_ns = meta_str(object, "namespace");
    if !obj_ns.is_empty() && obj_ns != namespace {
        return Err(status::bad_request(format!(
            "the namespace of the object ({obj_ns}) does not match the namespace on the request \
             ({namespace})"
        )));
    }
    object["metadata"]["namespace"] = namespace.into();
    Ok(())
}

/// PUT (`handlers/update.go`). Lease's strategy allows create on update, so a PUT of a missing
/// Lease creates it — unless the body names a uid, which then fails the storage precondition.
fn update(server: &Server, namespace: &str, name: &str, content_type: &str, body: &Bytes) -> Reply {
    let lease::Decoded {
        mut object,
        warnings,
    } = decode_body(content_type, body)?;
    check_name(&mut object, namespace, name)?;
    let mut store = server.store();
    let key: Key = (namespace.to_owned(), name.to_owned());
    let Some(existing) = store.objects.get(&key).cloned() else {
        let uid = meta_str(&object, "uid").to_owned();
        if !uid.is_empty() {
            return Err(status::precondition_failed(
                namespace, name, "UID", &uid, "",
            ));
        }
        lease::validate(&object)?;
        let rv = store.bump();
        prepare_for_create(&mut object, namespace, rv);
        store.objects.insert(key, object.clone());
        server.commit(
            &mut store,
            Event {
                kind: EventType::Added,
                rv,
                object: object.clone(),
                prev: None,
            },
        );
        return Ok((201, object, warnings));
    };
    let (code, object) = store_update(server, &mut store, namespace, name, object, existing)?;
    Ok((code, object, warnings))
}

/// PATCH (`handlers/patch.go`): the patch is applied to the stored object, so a
/// `metadata.resourceVersion` in it is a precondition (a different one is a Conflict), and
/// one without it cannot conflict.
fn patch(
    server: &Server,
    namespace: &str,
    name: &str,
    content_type: &str,
    body: &Bytes,
    params: &BTreeMap<String, String>,
) -> Reply {
    enum Kind {
        Merge,
        Json,
        Apply,
    }
    let kind = match content_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => Kind::Merge,
        "application/json-patch+json" => Kind::Json,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Kind::Apply,
        other => return Err(status::unsupported_patch_type(other)),
    };
    if matches!(kind, Kind::Apply) && params.get("fieldManager").is_none_or(String::is_empty) {
        return Err(status::bad_request(
            "fieldManager is required for apply requests",
        ));
    }
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| status::bad_request(format!("error decoding patch: {e}")))?;
    let mut store = server.store();
    let key: Key = (namespace.to_owned(), name.to_owned());
    let existing = store.objects.get(&key).cloned();
    let mut doc = match (&existing, &kind) {
        (Some(e), _) => e.clone(),
        // Apply creates (patch.go: `forceAllowCreate` for apply).
        (None, Kind::Apply) => json!({}),
        (None, _) => return Err(status::not_found(name)),
    };
    match kind {
        Kind::Merge | Kind::Apply => {
            if !patch.is_object() {
                return Err(status::bad_request(
                    "json: cannot unmarshal into Go value: a merge patch must be a JSON object",
                ));
            }
            json_patch::merge(&mut doc, &patch);
        }
        Kind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| status::bad_request(format!("error decoding patch: {e}")))?;
            // `jsonPatcher.applyJSPatch`: a patch that cannot be applied is 422.
            json_patch::patch(&mut doc, &ops).map_err(|e| ApiError {
                code: 422,
                body: json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": e.to_string(), "reason": "Invalid", "code": 422,
                }),
            })?;
        }
    }
    let lease::Decoded {
        mut object,
        warnings,
    } = lease::decode(doc)?;
    if existing.is_none() && meta_str(&object, "name").is_empty() {
        object["metadata"]["name"] = name.into();
    }
    check_name(&mut object, namespace, name)?;
    let Some(existing) = existing else {
        // Apply of a missing Lease.
        if !meta_str(&object, "resourceVersion").is_empty() {
            return Err(status::not_found(name));
        }
        lease::validate(&object)?;
        let rv = store.bump();
        prepare_for_create(&mut object, namespace, rv);
        store.objects.insert(key, object.clone());
        server.commit(
            &mut store,
            Event {
                kind: EventType::Added,
                rv,
                object: object.clone(),
                prev: None,
            },
        );
        return Ok((201, object, warnings));
    };
    let (code, object) = store_update(server, &mut store, namespace, name, object, existing)?;
    Ok((code, object, warnings))
}

/// DELETE (`handlers/delete.go`, `store.go` `Delete`): `DeleteOptions.preconditions` (uid,
/// resourceVersion) are checked by `storage.Preconditions.Check`; success is a `Status`.
fn delete(server: &Server, namespace: &str, name: &str, body: &Bytes) -> Reply {
    let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(body).map_err(|e| {
            status::bad_request(format!(
                "DeleteOptions in version \"v1\" cannot be handled as a DeleteOptions: {e}"
            ))
        })?
    };
    let mut store = server.store();
    let key: Key = (namespace.to_owned(), name.to_owned());
    let Some(existing) = store.objects.get(&key).cloned() else {
        return Err(status::not_found(name));
    };
    let pre = &options["preconditions"];
    if let Some(uid) = pre["uid"].as_str() {
        let have = meta_str(&existing, "uid");
        if uid != have {
            return Err(status::precondition_failed(
                namespace, name, "UID", uid, have,
            ));
        }
    }
    if let Some(rv) = pre["resourceVersion"].as_str() {
        let have = meta_str(&existing, "resourceVersion");
        if rv != have {
            return Err(status::precondition_failed(
                namespace,
                name,
                "ResourceVersion",
                rv,
                have,
            ));
        }
    }
    store.objects.remove(&key);
    let rv = store.bump();
    let mut last = existing.clone();
    last["metadata"]["resourceVersion"] = rv.to_string().into();
    server.commit(
        &mut store,
        Event {
            kind: EventType::Deleted,
            rv,
            object: last,
            prev: Some(existing.clone()),
        },
    );
    Ok((
        200,
        status::delete_success(name, meta_str(&existing, "uid")),
        Vec::new(),
    ))
}

/// A field or label selector requirement.
#[derive(Debug, Clone)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Selectors of a list or watch (`staging/src/k8s.io/apimachinery/pkg/fields` and `labels`).
#[derive(Debug, Clone, Default)]
struct Selector {
    /// Only `metadata.name` and `metadata.namespace`: the Lease's field set
    /// (`generic.DefaultNamespaceScopedAttr`).
    fields: Vec<Req>,
    labels: Vec<Req>,
    namespace: Option<String>,
}

fn split_outside_parens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn parse_fields(s: &str) -> Result<Vec<Req>, ApiError> {
    let mut out = Vec::new();
    for part in split_outside_parens(s) {
        let (k, v, ne) = if let Some((k, v)) = part.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = part.split_once("==") {
            (k, v, false)
        } else if let Some((k, v)) = part.split_once('=') {
            (k, v, false)
        } else {
            return Err(status::bad_request(format!(
                "invalid selector: '{s}'; can't understand '{part}'"
            )));
        };
        let k = k.trim();
        if k != "metadata.name" && k != "metadata.namespace" {
            // The registry's field label conversion: `field label not supported: X`.
            return Err(status::bad_request(format!(
                "field label not supported: {k}"
            )));
        }
        out.push(if ne {
            Req::Ne(k.to_owned(), v.trim().to_owned())
        } else {
            Req::Eq(k.to_owned(), v.trim().to_owned())
        });
    }
    Ok(out)
}

fn parse_labels(s: &str) -> Result<Vec<Req>, ApiError> {
    let bad = |part: &str| {
        status::bad_request(format!(
            "unable to parse requirement: found '{part}', expected: in, notin, =, ==, !=, gt, lt"
        ))
    };
    let set = |v: &str| -> Option<Vec<String>> {
        let v = v.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(v.split(',').map(|x| x.trim().to_owned()).collect())
    };
    let mut out = Vec::new();
    for part in split_outside_parens(s) {
        let req = if let Some(k) = part.strip_prefix('!') {
            Req::NotExists(k.trim().to_owned())
        } else if let Some((k, v)) = part.split_once("!=") {
            Req::Ne(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = part.split_once("==") {
            Req::Eq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = part.split_once('=') {
            Req::Eq(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = part.split_once(" notin ") {
            Req::NotIn(k.trim().to_owned(), set(v).ok_or_else(|| bad(&part))?)
        } else if let Some((k, v)) = part.split_once(" in ") {
            Req::In(k.trim().to_owned(), set(v).ok_or_else(|| bad(&part))?)
        } else if part.contains(' ') || part.contains('(') {
            return Err(bad(&part));
        } else {
            Req::Exists(part.clone())
        };
        out.push(req);
    }
    Ok(out)
}

impl Selector {
    fn from_params(
        namespace: Option<String>,
        name: Option<String>,
        params: &BTreeMap<String, String>,
    ) -> Result<Selector, ApiError> {
        let mut fields = match params.get("fieldSelector") {
            Some(s) => parse_fields(s)?,
            None => Vec::new(),
        };
        if let Some(name) = name {
            fields.push(Req::Eq("metadata.name".into(), name));
        }
        let labels = match params.get("labelSelector") {
            Some(s) => parse_labels(s)?,
            None => Vec::new(),
        };
        Ok(Selector {
            fields,
            labels,
            namespace,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let meta = &object["metadata"];
        if let Some(ns) = &self.namespace
            && meta["namespace"].as_str() != Some(ns)
        {
            return false;
        }
        let field = |k: &str| -> Option<String> {
            match k {
                "metadata.name" => meta["name"].as_str().map(str::to_owned),
                "metadata.namespace" => meta["namespace"].as_str().map(str::to_owned),
                _ => None,
            }
        };
        let label = |k: &str| meta["labels"][k].as_str().map(str::to_owned);
        let check = |req: &Req, get: &dyn Fn(&str) -> Option<String>| match req {
            Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
            // Field selectors compare with the empty string for a missing field; label `!=`
            // matches a missing label.
            Req::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        };
        self.fields.iter().all(|r| check(r, &field)) && self.labels.iter().all(|r| check(r, &label))
    }
}

/// Items of a list carry no `kind` or `apiVersion`: the typed list's items are encoded
/// without TypeMeta.
fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(m) = item.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    item
}

/// The continue token, shaped like the storage layer's (`storage/etcd3` `encodeContinue`):
/// base64 of `{"v":"meta.k8s.io/v1","rv":N,"start":"KEY\u0000"}`.
fn encode_continue(rv: u64, key: &Key) -> String {
    let start = format!("{}/{}\u{0}", key.0, key.1);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({ "v": "meta.k8s.io/v1", "rv": rv, "start": start }).to_string())
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    let bad = || {
        status::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    v["start"].as_str().map(str::to_owned).ok_or_else(bad)
}

/// GET of a collection (`handlers/get.go` `ListResource`).
fn list(
    server: &Server,
    namespace: Option<&str>,
    params: &BTreeMap<String, String>,
    accept: &str,
) -> Reply {
    let selector = Selector::from_params(namespace.map(str::to_owned), None, params)?;
    let limit: usize = match params.get("limit") {
        Some(l) if !l.is_empty() => l.parse::<i64>().map_or(0, |n| n.max(0) as usize),
        _ => 0,
    };
    let start = match params.get("continue") {
        Some(c) if !c.is_empty() => Some(decode_continue(c)?),
        _ => None,
    };
    let store = server.store();
    let mut matching: Vec<(&Key, &Value)> = store
        .objects
        .iter()
        .filter(|(k, v)| {
            start
                .as_ref()
                .is_none_or(|s| format!("{}/{}", k.0, k.1).as_str() >= s.as_str())
                && selector.matches(v)
        })
        .collect();
    let mut meta = json!({ "resourceVersion": store.rv.to_string() });
    if limit > 0 && matching.len() > limit {
        let remaining = matching.len() - limit;
        matching.truncate(limit);
        let last = matching[limit - 1].0;
        meta["continue"] = encode_continue(store.rv, last).into();
        meta["remainingItemCount"] = remaining.into();
    }
    let objects: Vec<&Value> = matching.into_iter().map(|(_, v)| v).collect();
    if let Some(version) = table_version(accept) {
        return Ok((
            200,
            table(version, &objects, store.rv, Some(meta)),
            Vec::new(),
        ));
    }
    let items: Vec<Value> = objects.iter().map(|o| list_item(o)).collect();
    Ok((
        200,
        json!({
            "kind": "LeaseList",
            "apiVersion": API_VERSION,
            "metadata": meta,
            "items": items,
        }),
        Vec::new(),
    ))
}

/// `application/json;as=Table;v=v1;g=meta.k8s.io` in the Accept header: which Table version.
fn table_version(accept: &str) -> Option<&'static str> {
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        if params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io") {
            if params.contains(&"v=v1") {
                return Some("meta.k8s.io/v1");
            }
            if params.contains(&"v=v1beta1") {
                return Some("meta.k8s.io/v1beta1");
            }
        }
    }
    None
}

/// `duration.HumanDuration` (`staging/src/k8s.io/apimachinery/pkg/util/duration`).
fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    let d = h / 24;
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{d}d");
    }
    format!("{}y", d / 365)
}

/// The server-side printing of Leases (`pkg/printers/internalversion/printers.go`:
/// `leaseColumnDefinitions` Name, Holder, Age), rows carrying `PartialObjectMetadata`.
fn table(version: &str, objects: &[&Value], rv: u64, list_meta: Option<Value>) -> Value {
    let now = chrono::Utc::now().timestamp();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let created = parse_rfc3339_secs(meta_str(o, "creationTimestamp")).unwrap_or(now);
            let mut meta = o["metadata"].clone();
            if let Some(m) = meta.as_object_mut() {
                m.remove("managedFields");
            }
            json!({
                "cells": [
                    meta_str(o, "name"),
                    o["spec"]["holderIdentity"].as_str().unwrap_or(""),
                    human_duration(now - created),
                ],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": meta,
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": version,
        "metadata": list_meta.unwrap_or_else(|| json!({ "resourceVersion": rv.to_string() })),
        "columnDefinitions": [
            { "name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0 },
            { "name": "Holder", "type": "string", "format": "", "description": "holderIdentity contains the identity of the holder of a current lease.", "priority": 0 },
            { "name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0 },
        ],
        "rows": rows,
    })
}

/// A watch event line: `{"type":...,"object":...}` and a newline (the JSON stream framer).
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// What one watcher sees of an event, given its selector (the cacher's
/// `cacheWatcher.convertToWatchEvent`): an object entering the selector is ADDED, one leaving
/// it is DELETED (its previous state, with the new resourceVersion).
fn filter_event(selector: &Selector, event: &Event) -> Option<(&'static str, Value)> {
    let cur = selector.matches(&event.object);
    let old = event.prev.as_ref().is_some_and(|p| selector.matches(p));
    match event.kind {
        EventType::Added => cur.then(|| ("ADDED", event.object.clone())),
        EventType::Deleted => (cur || old).then(|| ("DELETED", event.object.clone())),
        EventType::Modified => match (old, cur) {
            (true, true) => Some(("MODIFIED", event.object.clone())),
            (false, true) => Some(("ADDED", event.object.clone())),
            (true, false) => {
                let mut prev = event.prev.clone().unwrap_or_default();
                prev["metadata"]["resourceVersion"] = event.rv.to_string().into();
                Some(("DELETED", prev))
            }
            (false, false) => None,
        },
    }
}

fn streaming_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A watch (`handlers/get.go` `ListResource` with `watch`, `handlers/watch.go`
/// `serveWatch`, the cacher's `Watch` and `watchCache.getAllEventsSinceLocked`).
async fn watch_response(
    server: Arc<Server>,
    namespace: Option<String>,
    name: Option<String>,
    params: &BTreeMap<String, String>,
) -> Response<Body> {
    let selector = match Selector::from_params(namespace, name, params) {
        Ok(s) => s,
        Err(e) => return error_response(e),
    };
    let from: Option<u64> = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => Some(rv),
            Err(_) => {
                return error_response(status::bad_request(format!(
                    "invalid resource version: {rv:?}"
                )));
            }
        },
    };
    let bookmarks = truthy(params.get("allowWatchBookmarks"));
    // `handlers/get.go`: `timeoutSeconds`, or a random time between `MinRequestTimeout`
    // (1800 s by default) and twice that.
    let timeout = match params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
    {
        Some(t) if t > 0 => Duration::from_secs(t),
        _ => Duration::from_secs(1800 + fastrand::u64(0..1800)),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let bookmark_interval = server.options.bookmark_interval;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        // The cacher waits up to 3 s for a resourceVersion it has not reached
        // (`waitUntilFreshAndBlock`), then fails with `Too large resource version`.
        if let Some(rv) = from {
            let wait_until = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let current = server.store().rv;
                if rv <= current {
                    break;
                }
                if tokio::time::Instant::now() >= wait_until {
                    let e = status::too_large_resource_version(rv, current);
                    let _ = tx.send(event_line("ERROR", &e.body)).await;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let (initial, mut events) = {
            let store = server.store();
            let subscription = server.events.subscribe();
            let initial: Result<Vec<Bytes>, ApiError> = match from {
                None => Ok(store
                    .objects
                    .values()
                    .filter(|o| selector.matches(o))
                    .map(|o| event_line("ADDED", o))
                    .collect()),
                Some(rv) if rv < store.floor => Err(status::expired(format!(
                    "too old resource version: {rv} ({})",
                    store.floor
                ))),
                Some(rv) => Ok(store
                    .history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .filter_map(|e| filter_event(&selector, e))
                    .map(|(kind, object)| event_line(kind, &object))
                    .collect()),
            };
            (initial, subscription)
        };
        let initial = match initial {
            Ok(lines) => lines,
            Err(e) => {
                // The cacher's `newErrWatcher`: an ERROR event on a 200 stream, then the end.
                let _ = tx.send(event_line("ERROR", &e.body)).await;
                return;
            }
        };
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + bookmark_interval,
            bookmark_interval,
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                event = events.recv() => match event {
                    Ok(event) => {
                        if let Some((kind, object)) = filter_event(&selector, &event)
                            && tx.send(event_line(kind, &object)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher that falls behind is closed, as the cacher closes an
                    // unresponsive one; the client watches again.
                    Err(_) => return,
                },
                _ = ticker.tick(), if bookmarks => {
                    // Every event up to the store's resourceVersion is already in the
                    // channel (they are sent under the store's lock): deliver them first, so
                    // the bookmark never runs ahead of an event this watcher has not seen.
                    let rv = server.store().rv;
                    loop {
                        match events.try_recv() {
                            Ok(event) => {
                                if let Some((kind, object)) = filter_event(&selector, &event)
                                    && tx.send(event_line(kind, &object)).await.is_err()
                                {
                                    return;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    // The watch cache's bookmark: an empty object of the kind with only its
                    // resourceVersion (`cacher.go` `dispatchEvents`).
                    let bookmark = json!({
                        "kind": "Lease",
                        "apiVersion": API_VERSION,
                        "metadata": { "resourceVersion": rv.to_string(), "creationTimestamp": null },
                        "spec": {},
                    });
                    if tx.send(event_line("BOOKMARK", &bookmark)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    streaming_response(rx)
}

/// Discovery documents (`staging/src/k8s.io/apiserver/pkg/endpoints/discovery`): legacy
/// (unaggregated) JSON only; a client asking for aggregated discovery gets these and falls
/// back, as it does against servers before 1.26.
fn discovery(server: &Server, which: &str) -> Response<Body> {
    let gv = json!({ "groupVersion": API_VERSION, "version": "v1" });
    let body = match which {
        "health" => {
            let mut resp = Response::new(Body::from("ok"));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return resp;
        }
        "version" => json!({
            "major": "1",
            "minor": "33",
            "gitVersion": "v1.33.0-baton-fake",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "none (baton-fake-k8s, a fake API server)",
            "compiler": "rustc",
            "platform": "linux/amd64",
        }),
        "api" => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server.addr }],
        }),
        "api/v1" => json!({
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [],
        }),
        "apis" => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [{
                "name": GROUP,
                "versions": [gv],
                "preferredVersion": gv,
            }],
        }),
        "group" => json!({
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": GROUP,
            "versions": [gv],
            "preferredVersion": gv,
        }),
        _ => json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": API_VERSION,
            "resources": [{
                "name": "leases",
                "singularName": "lease",
                "namespaced": true,
                "kind": "Lease",
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }],
        }),
    };
    json_response(200, &body, &[])
}
