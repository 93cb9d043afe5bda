//! A thin etcd v3 client over tonic: the calls the store makes, on one channel to every
//! endpoint, with etcd's token authentication.
//!
//! The messages and the per-service clients are generated ([`super::pb`]); this module adds
//! what etcd's Go client and the `etcd-client` crate add around them, and nothing else:
//!
//! * **Channel.** One tonic [`Channel`] balances over all endpoints and connects lazily. Each
//!   endpoint: a 5 s connect timeout, and HTTP/2 pings every 5 s, also while no call is in
//!   flight, with a 3 s timeout, so a dead connection (a stopped or partitioned server) is
//!   noticed while a follower's watch sits idle.
//! * **TLS** (`etcds://`): rustls (ring), trusting the CA given or, without one, the system's
//!   trust store; an optional client certificate.
//! * **Authentication.** With a user, [`Client::connect`] asks `Auth.Authenticate` for a token
//!   and every call carries it as the `token` metadata. When etcd answers that the token is
//!   invalid (it expired, or etcd restarted with simple tokens), the client authenticates again,
//!   once for all the calls that hit it together, and retries the call once.
//! * **Keepalive** is one request and one response on a new `LeaseKeepAlive` stream, as the
//!   store needs one answer per renewal; **watch** is one create request on a `Watch` stream
//!   whose request side stays open until the [`WatchStream`] is dropped, and then ends, so
//!   that the stream closes and etcd drops the watch.
//!
//! Errors are tonic's [`Status`]: failures to connect come as `UNAVAILABLE`, with the cause
//! (rustls's reason for a failed handshake, say) in its source chain.

use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::{StreamExt, future, stream};
use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status, Streaming};

use super::pb::etcdserverpb::{
    AuthenticateRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, PutRequest, RangeRequest, RequestOp,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse, WatchCreateRequest, WatchRequest,
    WatchResponse, auth_client::AuthClient, compare, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, range_request, request_op,
    watch_client::WatchClient, watch_request,
};

/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a connection is pinged (HTTP/2 PING), also while idle.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// How long a ping may go unanswered before the connection counts as dead.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// The metadata key etcd reads the authentication token from.
const TOKEN_KEY: &str = "token";

/// etcd's answer to a call with an invalid or expired token, where it loses the status code
/// (`UNKNOWN`): `rpctypes.ErrInvalidAuthToken`.
const INVALID_AUTH_TOKEN: &str = "etcdserver: invalid auth token";

/// A user name and password for etcd's authentication. Its `Debug` hides the password.
#[derive(Clone)]
pub(super) struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"****")
            .finish()
    }
}

/// The PEM files of an `etcds://` URL, read.
pub(super) struct TlsFiles {
    /// The CA certificates to trust; `None`: the system's trust store.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn config(self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new();
        let config = match self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        match self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// The endpoint `url` (`http://host:port` or `https://host:port`) with the connection settings
/// of the module docs, and `tls` for `https`. Fails on a malformed address, or TLS settings
/// rustls refuses (a key that is not a key, no system trust store).
pub(super) fn endpoints(
    urls: &[String],
    tls: Option<TlsFiles>,
) -> Result<Vec<Endpoint>, tonic::transport::Error> {
    let tls = tls.map(TlsFiles::config);
    urls.iter()
        .map(|url| {
            let endpoint = Endpoint::from_shared(url.clone())?
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(PING_INTERVAL)
                .keep_alive_timeout(PING_TIMEOUT)
                .keep_alive_while_idle(true);
            match &tls {
                Some(tls) => endpoint.tls_config(tls.clone()),
                None => Ok(endpoint),
            }
        })
        .collect()
}

/// A client of one etcd cluster. Clones share the channel and the token.
#[derive(Clone)]
pub(super) struct Client {
    channel: Channel,
    auth: Option<Arc<Auth>>,
}

/// The credentials and the token they got.
struct Auth {
    credentials: Credentials,
    token: RwLock<Option<MetadataValue<Ascii>>>,
    /// Held while authenticating again, so calls that find the token expired together ask
    /// for one new token.
    refresh: tokio::sync::Mutex<()>,
}

impl Auth {
    fn token(&self) -> Option<MetadataValue<Ascii>> {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Client {
    /// A client on a channel the application built, without authentication.
    pub fn on_channel(channel: Channel) -> Client {
        Client {
            channel,
            auth: None,
        }
    }

    /// A client over `endpoints`; with `credentials`, authenticates first (the only request:
    /// otherwise the channel connects on the first call). Needs a tokio runtime.
    pub async fn connect(
        endpoints: &[Endpoint],
        credentials: Option<&Credentials>,
    ) -> Result<Client, Status> {
        let channel = Channel::balance_list(endpoints.iter().cloned());
        let auth = match credentials {
            Some(credentials) => {
                let token = authenticate(&channel, credentials).await?;
                Some(Arc::new(Auth {
                    credentials: credentials.clone(),
                    token: RwLock::new(Some(token)),
                    refresh: tokio::sync::Mutex::new(()),
                }))
            }
            None => None,
        };
        Ok(Client { channel, auth })
    }

    /// Send `message` with `send`, with the token; when etcd says the token is invalid,
    /// authenticate again and send it once more.
    async fn call<M, T, F, Fut>(&self, message: M, send: F) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let Some(auth) = &self.auth else {
            return send(self.channel.clone(), Request::new(message)).await;
        };
        let token = auth.token();
        let first = send(
            self.channel.clone(),
            with_token(message.clone(), token.as_ref()),
        )
        .await;
        match first {
            Err(status) if token_is_invalid(&status) => {
                self.authenticate_again(auth, token).await?;
                send(
                    self.channel.clone(),
                    with_token(message, auth.token().as_ref()),
                )
                .await
            }
            other => other,
        }
    }

    /// Replace the token `stale`, unless a concurrent call already did.
    async fn authenticate_again(
        &self,
        auth: &Auth,
        stale: Option<MetadataValue<Ascii>>,
    ) -> Result<(), Status> {
        let _one_at_a_time = auth.refresh.lock().await;
        if auth.token() != stale {
            return Ok(());
        }
        let token = authenticate(&self.channel, &auth.credentials).await?;
        *auth.token.write().unwrap_or_else(PoisonError::into_inner) = Some(token);
        Ok(())
    }

    /// `KV.Txn`.
    pub async fn txn(&self, request: TxnRequest) -> Result<TxnResponse, Status> {
        self.call(request, |channel, request| async move {
            KvClient::new(channel)
                .txn(request)
                .await
                .map(Response::into_inner)
        })
        .await
    }

    /// `Lease.LeaseGrant`: a lease of `ttl` seconds, with an id etcd picks.
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse, Status> {
        let request = LeaseGrantRequest { ttl, id: 0 };
        self.call(request, |channel, request| async move {
            LeaseClient::new(channel)
                .lease_grant(request)
                .await
                .map(Response::into_inner)
        })
        .await
    }

    /// `Lease.LeaseRevoke`: ends lease `id` and deletes its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Status> {
        self.call(LeaseRevokeRequest { id }, |channel, request| async move {
            LeaseClient::new(channel)
                .lease_revoke(request)
                .await
                .map(Response::into_inner)
        })
        .await
    }

    /// One keepalive of lease `id`: a `Lease.LeaseKeepAlive` stream with one request, and its
    /// first response. A TTL of 0 or less in it means the lease is gone.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        self.call(
            LeaseKeepAliveRequest { id },
            |channel, request| async move {
                let (metadata, extensions, message) = request.into_parts();
                let request = Request::from_parts(metadata, extensions, stream::iter([message]));
                let mut answers = LeaseClient::new(channel)
                    .lease_keep_alive(request)
                    .await?
                    .into_inner();
                answers.message().await?.ok_or_else(|| {
                    Status::unavailable("etcd ended the keepalive stream without an answer")
                })
            },
        )
        .await
    }

    /// `Lease.LeaseTimeToLive` of lease `id` (without its keys).
    pub async fn lease_time_to_live(&self, id: i64) -> Result<LeaseTimeToLiveResponse, Status> {
        let request = LeaseTimeToLiveRequest { id, keys: false };
        self.call(request, |channel, request| async move {
            LeaseClient::new(channel)
                .lease_time_to_live(request)
                .await
                .map(Response::into_inner)
        })
        .await
    }

    /// Watch each of `ranges` from revision `start` (0: from now), on one stream: one watcher
    /// per range, each confirmed by a `created` response, their events told apart by key. A
    /// response with `canceled` set ends its watcher.
    ///
    /// etcd refuses a watch whose token has expired not with an error status, as it does every
    /// other call, but with a first response that is `canceled`, with the reason
    /// "etcdserver: invalid auth token" (etcd's `serverWatchStream.recvLoop`; 3.4 wraps it as
    /// "rpc error: code = Unauthenticated desc = ..."). So with credentials, the first response is
    /// read here: on that reason the client authenticates again and watches once more.
    pub async fn watch(&self, ranges: &[WatchRange], start: i64) -> Result<WatchStream, Status> {
        let Some(auth) = &self.auth else {
            return self.open_watch(ranges, start).await;
        };
        let token = auth.token();
        let mut watch = self.open_watch(ranges, start).await?;
        let first = watch.responses.message().await?;
        if first
            .as_ref()
            .is_some_and(|r| r.canceled && r.cancel_reason.contains(INVALID_AUTH_TOKEN))
        {
            self.authenticate_again(auth, token).await?;
            return self.open_watch(ranges, start).await;
        }
        watch.peeked = Some(first);
        Ok(watch)
    }

    async fn open_watch(&self, ranges: &[WatchRange], start: i64) -> Result<WatchStream, Status> {
        let creates: Vec<WatchRequest> = ranges
            .iter()
            .map(|range| WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(
                    WatchCreateRequest {
                        key: range.key.clone(),
                        range_end: range.end.clone(),
                        start_revision: start,
                        ..WatchCreateRequest::default()
                    },
                )),
            })
            .collect();
        self.call(creates, |channel, request| async move {
            let (metadata, extensions, creates) = request.into_parts();
            // The request side stays open while the watch is wanted, and ends when the
            // `WatchStream` is dropped: only with both sides done does the HTTP/2 stream close
            // and etcd end the watch. (A request side that never ended would keep every watch
            // ever started alive on the server, each sent every event under the prefix.)
            let (dropped, done) = oneshot::channel::<()>();
            let requests = stream::iter(creates).chain(
                stream::once(async move {
                    let _ = done.await;
                })
                .filter_map(|()| future::ready(None)),
            );
            let responses = WatchClient::new(channel)
                .watch(Request::from_parts(metadata, extensions, requests))
                .await?
                .into_inner();
            Ok(WatchStream {
                responses,
                peeked: None,
                _dropped: dropped,
            })
        })
        .await
    }

    /// `Maintenance.Status` of an endpoint.
    pub async fn status(&self) -> Result<StatusResponse, Status> {
        self.call(StatusRequest {}, |channel, request| async move {
            MaintenanceClient::new(channel)
                .status(request)
                .await
                .map(Response::into_inner)
        })
        .await
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "user",
                &self.auth.as_ref().map(|a| a.credentials.user.as_str()),
            )
            .finish_non_exhaustive()
    }
}

/// A key range to watch: one key, or every key under a prefix.
#[derive(Debug, Clone)]
pub(super) struct WatchRange {
    key: Vec<u8>,
    /// Empty: the key alone.
    end: Vec<u8>,
}

impl WatchRange {
    /// Every key under `prefix`.
    pub fn prefix(prefix: &str) -> WatchRange {
        WatchRange {
            key: prefix.as_bytes().to_vec(),
            end: prefix_end(prefix.as_bytes()),
        }
    }

    /// The key `key` alone.
    pub fn key(key: &str) -> WatchRange {
        WatchRange {
            key: key.as_bytes().to_vec(),
            end: Vec::new(),
        }
    }
}

/// The responses of one watch. Dropping it ends the watch.
pub(super) struct WatchStream {
    responses: Streaming<WatchResponse>,
    /// The first response, when [`Client::watch`] read it already.
    peeked: Option<Option<WatchResponse>>,
    /// Ends the request side of the watch's stream when dropped.
    _dropped: oneshot::Sender<()>,
}

impl WatchStream {
    /// The next response; `None` when etcd ended the stream.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, Status> {
        if let Some(first) = self.peeked.take() {
            return Ok(first);
        }
        self.responses.message().await
    }
}

/// Ask etcd for a token for `credentials`.
async fn authenticate(
    channel: &Channel,
    credentials: &Credentials,
) -> Result<MetadataValue<Ascii>, Status> {
    let request = AuthenticateRequest {
        name: credentials.user.clone(),
        password: credentials.password.clone(),
    };
    let token = AuthClient::new(channel.clone())
        .authenticate(request)
        .await?
        .into_inner()
        .token;
    token
        .parse()
        .map_err(|_| Status::internal("etcd answered with a token that is not ASCII"))
}

fn with_token<M>(message: M, token: Option<&MetadataValue<Ascii>>) -> Request<M> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(TOKEN_KEY, token.clone());
    }
    request
}

/// Whether etcd refused a call for its token (expired, or unknown to a restarted etcd). The
/// services etcd serves through its own in-process client lose the code and keep the message.
fn token_is_invalid(status: &Status) -> bool {
    match status.code() {
        Code::Unauthenticated => true,
        Code::Unknown => status.message() == INVALID_AUTH_TOKEN,
        _ => false,
    }
}

/// The end of the key range of every key starting with `prefix`: the prefix with its last
/// byte below 0xff incremented (and the rest cut), or `\0` (every key) when there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&b| b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        None => vec![0],
    }
}

/// `KV.Range` of one key.
pub(super) fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        ..RangeRequest::default()
    }
}

/// `KV.Range` of the keys under `prefix`, oldest (lowest create revision) first.
pub(super) fn get_prefix_by_age(prefix: &str) -> RangeRequest {
    RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..RangeRequest::default()
    }
}

/// A transaction's compare: `key`'s create revision is `rev` (0: the key does not exist).
pub(super) fn create_revision_is(key: &str, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
    }
}

/// A transaction's compare: `key`'s mod revision is `rev`.
pub(super) fn mod_revision_is(key: &str, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
    }
}

/// A transaction's compare: `key` is attached to lease `lease` (false when it does not exist).
pub(super) fn lease_is(key: &str, lease: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Lease as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(compare::TargetUnion::Lease(lease)),
    }
}

/// A transaction's compare: `key` holds `value` (false when it does not exist).
pub(super) fn value_is(key: &str, value: &str) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Value as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(compare::TargetUnion::Value(value.as_bytes().to_vec())),
    }
}

/// A transaction's compare: every key under `prefix` was created at revision `rev` or later,
/// so a key created at `rev` is the oldest, the head of the queue.
pub(super) fn none_created_before(prefix: &str, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Create as i32,
        key: prefix.as_bytes().to_vec(),
        range_end: prefix_end(prefix.as_bytes()),
        target_union: Some(compare::TargetUnion::CreateRevision(rev - 1)),
    }
}

/// A transaction run inside another as one of its operations (etcd 3.3 and later).
pub(super) fn txn_op(txn: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestTxn(txn)),
    }
}

/// A transaction's read.
pub(super) fn range_op(request: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(request)),
    }
}

/// A transaction's write of `value` at `key`, attached to lease `lease`.
pub(super) fn put_op(key: &str, value: &str, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            lease,
            ..PutRequest::default()
        })),
    }
}

/// A transaction's delete of `key`.
pub(super) fn delete_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..DeleteRangeRequest::default()
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_exactly_the_keys_under_the_prefix() {
        assert_eq!(prefix_end(b"election/"), b"election0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn only_an_invalid_token_is_retried() {
        assert!(token_is_invalid(&Status::unauthenticated(
            "etcdserver: invalid auth token"
        )));
        assert!(token_is_invalid(&Status::unknown(INVALID_AUTH_TOKEN)));
        assert!(!token_is_invalid(&Status::unknown("something else")));
        // A wrong password or a missing permission: authenticating again cannot help.
        assert!(!token_is_invalid(&Status::invalid_argument(
            "etcdserver: authentication failed, invalid user ID or password"
        )));
        assert!(!token_is_invalid(&Status::permission_denied(
            "etcdserver: permission denied"
        )));
    }

    #[test]
    fn credentials_hide_the_password() {
        let credentials = Credentials {
            user: "app".into(),
            password: "hunter2".into(),
        };
        let shown = format!("{credentials:?}");
        assert!(
            shown.contains("app") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn the_token_travels_as_metadata() {
        let token: MetadataValue<Ascii> = "abc.123".parse().unwrap();
        let request = with_token((), Some(&token));
        assert_eq!(request.metadata().get(TOKEN_KEY), Some(&token));
        assert!(with_token((), None).metadata().is_empty());
    }
}
