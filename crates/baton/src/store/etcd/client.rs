//! A thin etcd v3 client over tonic: the calls the store makes, on one channel per endpoint
//! (per member), with etcd's token authentication.
//!
//! The messages and the per-service clients are generated ([`super::pb`]); this module adds
//! what etcd's Go client and the `etcd-client` crate add around them, and nothing else:
//!
//! * **Members.** One lazily connected tonic [`Channel`] per endpoint (per member of the
//!   cluster), and every call goes to one of them, the *current* member: the first endpoint of
//!   the URL at first. When a call fails with `UNAVAILABLE` (the member is down or unreachable,
//!   or etcd answers that it has no leader or that the request timed out), the client leaves
//!   that member: the next endpoint becomes current, and every watch open on the member it left
//!   ends with an error, so that a follower watches again on a member that works. A call that
//!   etcd cannot have carried out (the connection was refused, or the member refused it for
//!   want of a leader) is sent again at once to the next member, once per member. One endpoint
//!   (or an application's channel): nothing to leave. A call its caller gives up on after it
//!   hung for a second or more (the session's background keepalive waits 2 s) also leaves the
//!   member: a member cut off from its quorum holds the calls it took before it noticed.
//!   Calls still in flight on a member when the client leaves it end then, as `UNAVAILABLE`,
//!   and are not sent again (they may have been carried out): their callers retry. Each
//!   endpoint: a 5 s connect
//!   timeout, and HTTP/2 pings every 5 s, also while no call is in flight, with a 3 s timeout,
//!   so a dead connection (a stopped or partitioned server) is noticed while a follower's watch
//!   sits idle.
//! * **Require leader.** Every call and stream carries etcd's require-leader metadata
//!   (`hasleader: true`, Go's `clientv3.WithRequireLeader`). A member cut off from its quorum
//!   then refuses new calls at once (`UNAVAILABLE`, "etcdserver: no leader") instead of holding
//!   them for its request timeout (7 s with etcd's defaults), and ends the watches open on it
//!   (after three election timeouts without a leader) instead of keeping them open, silent,
//!   for as long as the partition lasts: a follower watching there would never hear that the
//!   leader's entry went away on the majority side.
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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, future, stream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::debug;

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

/// The metadata key, and its value, that make etcd refuse a call, and end a stream, while the
/// member has no leader (`rpctypes.MetadataRequireLeaderKey` and `MetadataHasLeader`).
const REQUIRE_LEADER: (&str, &str) = ("hasleader", "true");

/// How long a call may hang before its caller giving up on it makes the client leave the
/// member: a member cut off from its quorum holds the calls it took before it noticed for its
/// request timeout (7 s with etcd's defaults), and nothing else tells. The session's background
/// keepalive gives up after 2 s; a leader's renewal gives up sooner, at its step-down time, and
/// does not count: etcd answers the calls that follow "no leader" soon enough.
const ABANDONED_AFTER: Duration = Duration::from_secs(1);

/// The error of a call that was in flight on a member when the client left it.
const LEFT_MEMBER: &str = "the etcd client left the member this call was sent to after another \
     call there failed";

/// etcd's answer to a call with require-leader on a member without a leader
/// (`rpctypes.ErrGRPCNoLeader`, code `UNAVAILABLE`): refused before it was carried out.
const NO_LEADER: &str = "etcdserver: no leader";

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

/// A client of one etcd cluster. Clones share the channels, the current member and the token.
#[derive(Clone)]
pub(super) struct Client {
    members: Arc<Members>,
    auth: Option<Arc<Auth>>,
}

/// One channel per member, and which of them calls go to (see the module docs).
struct Members {
    channels: Vec<Channel>,
    /// The index of the current member.
    current: AtomicUsize,
    /// Per member: cancelled when the client leaves it, which ends the watches open on it (and
    /// then replaced by a fresh token for the watches opened there later).
    left: Vec<Mutex<CancellationToken>>,
}

/// A call in flight on a member: when its caller drops it unfinished after [`ABANDONED_AFTER`]
/// or more, the client leaves the member.
struct Abandoned<'m> {
    members: &'m Members,
    index: usize,
    sent: Instant,
    done: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.done && self.sent.elapsed() >= ABANDONED_AFTER {
            self.members
                .leave(self.index, "a call there was given up after it hung");
        }
    }
}

/// One member, as a call picked it.
struct Member {
    index: usize,
    channel: Channel,
    /// Cancelled when the client leaves the member.
    left: CancellationToken,
}

impl Members {
    fn new(channels: Vec<Channel>) -> Members {
        let left = channels
            .iter()
            .map(|_| Mutex::new(CancellationToken::new()))
            .collect();
        Members {
            channels,
            current: AtomicUsize::new(0),
            left,
        }
    }

    /// The current member.
    fn current(&self) -> Member {
        let index = self.current.load(Ordering::Acquire) % self.channels.len();
        let left = self.left[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Member {
            index,
            channel: self.channels[index].clone(),
            left,
        }
    }

    /// Leave member `index` after a call on it failed (`why`): unless another call left it
    /// already, the next member becomes current and the watches on this one end. Nothing
    /// happens with one member (there is nowhere else to go).
    fn leave(&self, index: usize, why: &str) {
        let count = self.channels.len();
        if count < 2 {
            return;
        }
        let next = (index + 1) % count;
        if self
            .current
            .compare_exchange(index, next, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        debug!(
            member = index,
            next, why, "leaving an etcd member after a failed call"
        );
        let old = std::mem::take(
            &mut *self.left[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        old.cancel();
    }
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
            members: Arc::new(Members::new(vec![channel])),
            auth: None,
        }
    }

    /// A client over `endpoints` (at least one), one channel per endpoint; with
    /// `credentials`, authenticates first (the only request: otherwise the channels connect on
    /// their first call). Needs a tokio runtime.
    pub async fn connect(
        endpoints: &[Endpoint],
        credentials: Option<&Credentials>,
    ) -> Result<Client, Status> {
        if endpoints.is_empty() {
            return Err(Status::invalid_argument("no etcd endpoint"));
        }
        let channels = endpoints.iter().map(Endpoint::connect_lazy).collect();
        let mut client = Client {
            members: Arc::new(Members::new(channels)),
            auth: None,
        };
        if let Some(credentials) = credentials {
            let token = client
                .on_members(
                    |member| async move { authenticate(&member.channel, credentials).await },
                )
                .await?;
            client.auth = Some(Arc::new(Auth {
                credentials: credentials.clone(),
                token: RwLock::new(Some(token)),
                refresh: tokio::sync::Mutex::new(()),
            }));
        }
        Ok(client)
    }

    /// Run `attempt` on the current member; when it fails with `UNAVAILABLE`, leave the
    /// member, and when etcd cannot have carried it out there, run it on the next one, at
    /// most once per member.
    async fn on_members<T, F, Fut>(&self, attempt: F) -> Result<T, Status>
    where
        F: Fn(Member) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut tries = self.members.channels.len();
        loop {
            let member = self.members.current();
            let index = member.index;
            let mut abandoned = Abandoned {
                members: &self.members,
                index,
                sent: Instant::now(),
                done: false,
            };
            // A call still in flight when the client leaves its member (another call found the
            // member failed) ends then, as `UNAVAILABLE`: a member cut off from its quorum
            // holds the calls it took before it noticed for its request timeout (7 s with
            // etcd's defaults), and the caller would wait that long for an answer it can get
            // from the next member now. Such a call may have been carried out, so it is not
            // sent again here: its caller retries, or treats a write as indeterminate.
            let left = member.left.clone();
            let result = tokio::select! {
                biased;
                result = attempt(member) => result,
                () = left.cancelled() => Err(Status::unavailable(LEFT_MEMBER)),
            };
            abandoned.done = true;
            match result {
                Err(status) if member_failed(&status) => {
                    self.members.leave(index, status.message());
                    tries -= 1;
                    if tries == 0 || !never_carried_out(&status) {
                        return Err(status);
                    }
                }
                other => return other,
            }
        }
    }

    /// Send `message` with `send` to the current member (see [`on_members`](Self::on_members)),
    /// with the token; when etcd says the token is invalid, authenticate again and send it once
    /// more.
    async fn call<M, T, F, Fut>(&self, message: M, send: F) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_member(message, |member, request| send(member.channel, request))
            .await
    }

    /// [`call`](Self::call), with the member the message goes to.
    async fn call_member<M, T, F, Fut>(&self, message: M, send: F) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(Member, Request<M>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let Some(auth) = &self.auth else {
            return self
                .on_members(|member| send(member, request(message.clone(), None)))
                .await;
        };
        let token = auth.token();
        let first = self
            .on_members(|member| send(member, request(message.clone(), token.as_ref())))
            .await;
        match first {
            Err(status) if token_is_invalid(&status) => {
                self.authenticate_again(auth, token).await?;
                let token = auth.token();
                self.on_members(|member| send(member, request(message.clone(), token.as_ref())))
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
        let token = self
            .on_members(
                |member| async move { authenticate(&member.channel, &auth.credentials).await },
            )
            .await?;
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
        let members = &self.members;
        self.call_member(creates, |member, request| async move {
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
            let responses = WatchClient::new(member.channel)
                .watch(Request::from_parts(metadata, extensions, requests))
                .await?
                .into_inner();
            Ok(WatchStream {
                responses,
                peeked: None,
                _dropped: dropped,
                member: member.index,
                members: members.clone(),
                left: member.left,
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
    /// The member the watch is on (its index), and the client's members, to leave it when the
    /// stream fails.
    member: usize,
    members: Arc<Members>,
    /// Cancelled when the client leaves the member: the watch then ends with an error.
    left: CancellationToken,
}

impl WatchStream {
    /// The next response; `None` when etcd ended the stream. An error when the stream failed
    /// (etcd ends the watches of a member that has been without a leader for a while with
    /// `UNAVAILABLE`, "etcdserver: no leader", since every watch requires a leader), or when
    /// the client left the member the watch is on.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, Status> {
        if let Some(first) = self.peeked.take() {
            return Ok(first);
        }
        let next = tokio::select! {
            biased;
            () = self.left.cancelled() => {
                return Err(Status::unavailable(
                    "the client left the etcd member this watch was on, after a call there failed",
                ));
            }
            next = self.responses.message() => next,
        };
        if let Err(status) = &next
            && member_failed(status)
        {
            self.members.leave(self.member, status.message());
        }
        next
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

/// A request of `message` that requires a leader, with the token if there is one.
fn request<M>(message: M, token: Option<&MetadataValue<Ascii>>) -> Request<M> {
    let mut request = Request::new(message);
    let (key, value) = REQUIRE_LEADER;
    request
        .metadata_mut()
        .insert(key, MetadataValue::from_static(value));
    if let Some(token) = token {
        request.metadata_mut().insert(TOKEN_KEY, token.clone());
    }
    request
}

/// Whether a call failed in a way that says the member cannot serve (it is down or
/// unreachable, has no leader, or could not get a request through its quorum in time): every
/// `UNAVAILABLE`. The client then leaves the member.
fn member_failed(status: &Status) -> bool {
    status.code() == Code::Unavailable
}

/// Whether a failed call cannot have been carried out by etcd, so that sending it to another
/// member is safe even for a write: the connection was never made, or the member refused the
/// call for want of a leader before looking at it (the require-leader check).
fn never_carried_out(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && (status.message().contains(NO_LEADER) || status.message().contains("connect"))
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
        let with = request((), Some(&token));
        assert_eq!(with.metadata().get(TOKEN_KEY), Some(&token));
        assert!(request((), None).metadata().get(TOKEN_KEY).is_none());
    }

    #[tokio::test]
    async fn a_failed_call_leaves_its_member_once_and_ends_the_watches_there() {
        let channel = || Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let members = Members::new(vec![channel(), channel(), channel()]);
        let first = members.current();
        assert_eq!(first.index, 0);
        members.leave(0, "no leader");
        assert!(first.left.is_cancelled(), "the watches on member 0 end");
        let second = members.current();
        assert_eq!(second.index, 1);
        assert!(!second.left.is_cancelled());
        // Another call that failed on member 0 together with the first moves nothing.
        members.leave(0, "no leader");
        assert_eq!(members.current().index, 1);
        assert!(!second.left.is_cancelled());
        // Watches opened on member 0 later are not ended by the earlier leave.
        members.leave(1, "timed out");
        members.leave(2, "timed out");
        let again = members.current();
        assert_eq!(again.index, 0);
        assert!(!again.left.is_cancelled());

        // One member: nowhere to go, nothing ends.
        let alone = Members::new(vec![channel()]);
        let only = alone.current();
        alone.leave(0, "no leader");
        assert_eq!(alone.current().index, 0);
        assert!(!only.left.is_cancelled());
    }

    #[test]
    fn every_request_requires_a_leader() {
        for token in [None, Some("abc.123".parse().unwrap())] {
            let request = request((), token.as_ref());
            assert_eq!(
                request
                    .metadata()
                    .get("hasleader")
                    .map(|v| v.to_str().unwrap()),
                Some("true")
            );
        }
    }

    #[test]
    fn only_calls_etcd_cannot_have_carried_out_go_to_the_next_member() {
        assert!(never_carried_out(&Status::unavailable(NO_LEADER)));
        assert!(never_carried_out(&Status::unavailable("tcp connect error")));
        // Sent and maybe applied: the member is left, but the call is not sent again.
        let timed_out = Status::unavailable("etcdserver: request timed out");
        assert!(member_failed(&timed_out) && !never_carried_out(&timed_out));
        assert!(!member_failed(&Status::failed_precondition(
            "etcdserver: requested lease not found"
        )));
    }
}
