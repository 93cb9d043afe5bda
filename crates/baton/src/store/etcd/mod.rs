//! etcd, speaking etcd's own election protocol (`concurrency.Election`, what `etcdctl elect`
//! runs), so a Baton service and a Go service on one election name exclude each other, and
//! `etcdctl elect -l NAME` shows Baton's leader.
//!
//! # Layout
//!
//! For an election key (etcd calls it the election *name*) `K`, every candidate keeps one entry
//! in a FIFO queue under the prefix `K/`:
//!
//! | key | value | lease | order |
//! |---|---|---|---|
//! | `K/<lease id in hex>` | the candidate id (`etcdctl elect`: the proposal) | the candidate's session lease, shared with the store's candidacies of other elections | its create revision |
//! | `baton-handoff:<K escaped>:mark` | a planned handoff's mark (see [Planned handoff](#planned-handoff)), only between a handoff and the next acquire | a lease of its own, whose TTL is the handoff's window | |
//! | `baton-handoff:<K escaped>:request` | a handoff request for the holder's term | the holder's session lease | |
//! | `baton-handoff:<K escaped>:candidate:<id escaped>` | a candidate's presence record (see [Presence records](#presence-records)) | a lease of its own per candidate, whose TTL is the record's | |
//!
//! The entry with the lowest create revision leads; its create revision is the fencing token.
//! Revisions are etcd's global, persisted counter, so tokens strictly increase across releases,
//! expiries, client restarts and etcd restarts (as long as etcd keeps its data directory).
//!
//! # Protocol
//!
//! * **Campaign** ([`Candidacy::try_acquire`]): join the store's session for the election's TTL
//!   (see [Sessions](#sessions)), then create `K/<lease id>` in a transaction on
//!   `CreateRevision == 0` (an existing entry of this lease is reused: the reply of an earlier
//!   attempt was lost). Then,
//!   in one read-only transaction, read the own entry, the head of the queue and the
//!   predecessor (the entry with the greatest create revision below the own), while a keepalive
//!   runs alongside: the candidate leads iff its entry is the head *and* the keepalive, sent
//!   after the engine's send time, succeeded, so the lease lives at least a TTL past that time.
//!   A follower keeps its entry between calls; later calls only look at its position again.
//! * **Renew** ([`Candidacy::renew`]) is a keepalive of the session sent after the engine's send
//!   time, plus a check that the entry still exists with the leader's create revision, both
//!   batched with the other renewals of the store that fall due together: one keepalive per
//!   session and one `Txn` per batch ([`RENEW_BATCH_WINDOW`]). It is `Lost` when etcd answers
//!   that the lease is gone (TTL 0), the entry is gone, or the session's watchdog took it.
//! * **Release**: delete the own entry, guarded on its create revision (`Election.Resign`'s
//!   request); the session's last member instead revokes the lease, which deletes its entry in
//!   the same write and ends the session. One round trip either way; only the candidate's own
//!   entry can go. The next entry's watcher wakes at once.
//! * **Followers** ([`Candidacy::watch`]) read every entry ahead of their own (with the own entry,
//!   in the read-only transaction above) and then watch the election's prefix from the revision
//!   of that read, so no event between the read and the watch is missed. They keep that view of
//!   the queue current from the events alone: when the head is deleted, every follower learns
//!   the new head's value (the new leader's id) without a request, and only the follower whose
//!   last entry ahead went is woken to take over, so a handoff costs one follower one attempt.
//!   A deletion by release and by lease expiry look the same (etcd deletes an entry when it
//!   revokes its expired lease), and the deletion of the follower's own entry or the loss of
//!   its session wakes it too: the stream is *complete*
//!   ([`Candidacy::watch_is_complete`]), so the engine does not look at the store when the
//!   leader's lease would run out, only every
//!   [`COMPLETE_WATCH_RECHECK_LEASES`](crate::COMPLETE_WATCH_RECHECK_LEASES) leases in case an
//!   event was lost. There is no
//!   polling: an idle follower's only requests are its session's keepalives.
//! * **Read** ([`LeaseStore::read`]): the head of the queue, its value (the holder), its create
//!   revision (the token) and the remaining TTL of its lease.
//!
//! # Planned handoff
//!
//! A handoff ([`Candidacy::hand_over`], issue #18) leaves a *mark*: only the candidate it names
//! (or, naming nobody, anyone but the leaver) may take the key until it runs out. It lives
//! *beside* the queue, never under an election's prefix: its key, and the request's, is
//! under [`handoff_prefix`]`(K)` = `baton-handoff:<K escaped>:`, where `K` is escaped as a
//! URL path segment is and `/` and `:` too. A key without a `/` is under no election's
//! prefix `NAME/`, whatever the names, so a `concurrency.Election` peer listing `K/` (or any
//! other election's prefix) still sees a valid election; such peers ignore the mark.
//!
//! * **Hand over**: grant a lease whose TTL is the window (whole seconds, rounded up, as
//!   [`granted_ttl`]), then one transaction on the leader's entry still having the lease's
//!   create revision and on the mark key being free: put the mark (`baton-handoff-mark
//!   <from> <to>`, each field `-` or `<length>:<text>`) on that lease, delete the leader's
//!   entry, and delete the request if it is on the leader's lease. A handoff of a lease no
//!   longer held writes nothing. etcd deletes the mark when its lease runs out, by etcd's
//!   clock, so a handoff to a candidate that never comes ends in an ordinary election after
//!   the window (plus etcd's expiry sweep, up to 500 ms). The leaver keeps its session and
//!   campaigns on.
//! * **Acquire** reads the mark in the same read-only transaction as its position. While a
//!   mark lives, the head of the queue does not lead and [`read`](LeaseStore::read) answers
//!   `None`. The head the mark admits ends it (a transaction on its own entry and on the
//!   mark's mod revision) and leads, with its create revision as the token as always; the
//!   mark's lease is then revoked in the background. Anyone else gets
//!   [`Acquire::Reserved`]: a candidate behind the head keeps its place, and a head the mark
//!   does not admit *steps aside*: it deletes its entry and stays out of the queue (its next
//!   attempt queues anew, at the tail) while its change stream watches the mark, so the
//!   candidate the mark names comes to the head, and the queue stays a valid election
//!   throughout. A head that re-queued at the tail instead would, with two such candidates
//!   and no named one queued, take turns at the head for the whole window. A
//!   `concurrency.Election` peer that observes the queue (`etcdctl elect -l`) sees each head
//!   that steps aside as the leader for the moment it takes to step aside; Baton's
//!   candidates never lead then. A Go peer that comes to the head while a mark lives leads
//!   (it ignores the mark) while `read` answers `None` until the mark runs out.
//! * **Requests** ([`LeaseStore::request_handoff`]): `baton-handoff-request <token> <to>`
//!   at the request key, attached to the holder's lease (so it goes with the holder's
//!   session), written by a transaction on the holder's entry still being the head (its
//!   create revision, and no entry under `K/` created before it), on no mark, and on the
//!   request key being as read. The leader's renewals read it in the `Txn` the renewal batch
//!   already sends (one more read in its success branch per renewal, no extra request) and
//!   answer [`Renew::HandoffRequested`] for a request naming their token; one naming another
//!   token is stale and ignored. A handoff or a release deletes the request with the entry;
//!   the next term never sees it (another token).
//! * **Push.** A follower's change stream watches the mark key on the same watch stream as
//!   the prefix: a mark naming it is [`Change::HandedOver`] (it wakes at once), and the
//!   mark's end reports the head as the new leader (or wakes a follower at the head). While
//!   a mark lives, new heads are not reported as leaders. A candidate out of the queue wakes
//!   when the mark goes, whether the named candidate ended it or etcd did when it ran out. A
//!   leader whose engine keeps its stream ([`listen_for_handoff_requests`]) watches the
//!   request key and hears of a request for its term as [`Change::HandoffRequested`].
//!   [`LeaseStore::watch`] reports a mark as `HandedOver`, its end as `Other`, and a request
//!   as `HandoffRequested`.
//! * **Foreign data.** A mark is Baton's when it has a lease and that shape; a request, the
//!   same. Anything else at those keys is [`Error::ForeignData`] for `read`, `try_acquire`,
//!   `hand_over` and `request_handoff`, and is never overwritten or deleted (the request is
//!   deleted only when it is on the leaver's own lease). A renewal ignores what it cannot
//!   read as a request.
//!
//! [`listen_for_handoff_requests`]: crate::LeaderElectionBuilder::listen_for_handoff_requests
//!
//! # Presence records
//!
//! A candidate's presence record ([`LeaseStore::announce`], `docs/decisions.md` D134) is the
//! key `baton-handoff:<K escaped>:candidate:<id escaped>` (the id escaped as `K` is), under
//! the same per-election prefix as the mark and the request, so it needs no permission the
//! election does not already need, and no election's queue sees it. Its value is
//! `baton-presence <priority> <TTL in s> <id>` (each field `<length>:<text>`), and it is
//! attached to a lease of its own, one per store, election and candidate, so etcd deletes it
//! by etcd's clock when it is not renewed:
//!
//! * **Announce**: the first grants the lease (the TTL in whole seconds, rounded up, as
//!   [`granted_ttl`]); each next one sends it one keepalive, then one transaction that, when
//!   the record is already on that lease with that value, only reads every record of the
//!   election (no write, so no revision and no event), and otherwise writes it, on its key
//!   being as read, and reads them all. Two requests per renew interval, neither on the
//!   election's own keys or the candidate's session lease: a presence write never delays or
//!   conflicts with a renewal, and no change stream watches the records. A lease that ran
//!   out, or a new TTL, gets a new lease (the old one is revoked once the record moved).
//!   `announce` reports the own record's time left from the keepalive, and the others' as the
//!   TTL their values name (at most that much is left; asking etcd would cost a request per
//!   candidate on every announce).
//! * **Candidates** reads the records, then asks etcd for each lease's time left (all at
//!   once), and leaves out those whose lease has just run out.
//! * **Withdraw** revokes the record's lease, which deletes the record in the same write. A
//!   store that did not announce it deletes Baton's record on its key being as read.
//! * A candidate killed with SIGKILL leaves its record for at most its TTL (plus etcd's
//!   expiry sweep, up to 500 ms). A restarted process with the same id replaces the record.
//! * **Foreign data.** A record is Baton's when it has a lease, that shape, and the key of the
//!   id it names. Anything else under `baton-handoff:<K escaped>:candidate:` is
//!   [`Error::ForeignData`] for `announce`, `candidates` and `withdraw`, and is never
//!   overwritten or deleted.
//!
//! [`LeaseStore::pending_handoff`] reads the head of the queue, the mark and the request in
//! one read-only transaction: a live mark is [`PendingHandoff::Reserved`] (its time left from
//! its lease), and a request naming the head's fencing token is
//! [`PendingHandoff::Requested`]; a request for an earlier term counts for nothing.
//!
//! # Sessions
//!
//! The candidacies of one store share one session lease per TTL, as the `Election`s of one
//! Go `concurrency.Session` do (`docs/decisions.md`, D120–D123). Two candidacies of the same
//! election never share one (their entries would be the same key): the second gets a session
//! of its own, or one it shares with other elections.
//!
//! * **Keepalive.** While a member follows, the session is kept alive every third of its TTL
//!   after its last keepalive that succeeded (an attempt's and a renewal batch's count), from
//!   the moment it is granted. A session whose members all lead lives on their renewals alone.
//!   Idle followers cost one keepalive per TTL/3 per store, however many there are.
//! * **A leader that stops renewing** loses its entry when its own lease would have expired:
//!   the session remembers, per leader, the send instant of the keepalive that proved its last
//!   renewal plus the TTL, and when that passes without a newer renewal it deletes the entry
//!   (guarded on its create revision). The engine's deadline for that renewal fell earlier. So
//!   the other members' keepalives never keep a hung leader in office; a Go `Session` would
//!   (its keepalive runs whatever its elections do). A process that stops as a whole sends no
//!   keepalive, and etcd frees the lease and every entry on it within the TTL.
//! * **Loss.** When etcd answers that the lease is gone (etcd was unreachable for a TTL, or
//!   someone revoked it), every member learns it at once: followers' change streams say so,
//!   leaders' renewals are `Lost`, and each next attempt joins or grants a new session. A
//!   waiter never keeps waiting on a dead session (etcd#19597).
//! * **End.** The last member to release, leave or be dropped revokes the lease. If a
//!   release's revoke fails (etcd is down), the candidacy stays the session's member with its
//!   entry, as when any other member's delete fails: its next attempt deletes the spent entry
//!   as soon as etcd answers, or the watchdog does when the last renewal's cover has run out.
//!   Left to its lease, the entry would outlive an etcd restart by a whole TTL and an election
//!   timeout, as etcd gives every lease that much again when it starts (D127).
//!
//! # TTLs are whole seconds
//!
//! etcd leases have a TTL in whole seconds: Baton rounds the election's lease duration **up**
//! (500 ms becomes 1 s, 2.5 s becomes 3 s), so the store never frees a lease before the engine's
//! deadline. etcd also raises TTLs below its own minimum (1.5 × its election timeout, rounded
//! up: 2 s with etcd's defaults) and checks for expired leases every 500 ms, so crash failover
//! takes the rounded TTL (at least etcd's minimum) plus up to half a second. The remaining TTL
//! etcd reports is whole seconds too (the lease expires in under TTL + 1 s); [`LeaseRecord::ttl`]
//! is that plus half a second, at most the granted TTL. A candidacy keeps the TTL its session
//! was granted with until it leaves the session (the engine always asks for the same TTL);
//! sessions are shared between candidacies that ask for the same TTL in whole seconds.
//!
//! A lease etcd keeps alive is extended from when etcd processes the keepalive, which is after
//! the engine's send time, and etcd's lease clock is etcd's: client clocks decide nothing.
//!
//! # Foreign data
//!
//! Every entry `concurrency.Election` writes is `K/<hex of its own lease id>` with that lease
//! attached. An entry under `K/` that breaks this (a key without a lease, a name that is not
//! its lease id) was not written by an election; when it is at the head of the queue or is a
//! candidate's predecessor, [`read`](LeaseStore::read) and `try_acquire` fail with
//! [`Error::ForeignData`] and leave it alone. Note that the prefix `K/` also covers the entries
//! of an election named `K/sub`: do not nest election names.
//!
//! # URLs
//!
//! | URL | connects to |
//! |---|---|
//! | `etcd://[user:password@]host[:port][,host[:port]...]` | a cluster, over plain HTTP/2 (port 2379 by default) |
//! | `etcds://[user:password@]host[:port][,host[:port]...][?ca=PATH&cert=PATH&key=PATH]` | the same over TLS |
//!
//! With a user and password, Baton authenticates (etcd's `auth enable`) and refreshes the token
//! when it expires; the user needs read and write permission on the prefix `K/` and on the
//! prefix of the election's handoff keys and presence records, [`handoff_prefix`]`(K)`
//! (every attempt reads the mark, every renewal the request, every announce the records):
//! `etcdctl role grant-permission ROLE --prefix=true readwrite K/` and the same for
//! `baton-handoff:<K escaped>:` (`baton-handoff:api:` for `api`). IPv6 addresses
//! go in brackets (`[::1]:2379`). Over TLS, the server's certificate must chain to the CA given
//! with `ca=` or, without it, to one in the system's trust store; `cert=` and `key=` name a
//! client certificate for `--client-cert-auth`. Other options are refused, so that a misspelt
//! one is not silently ignored. Certificate files are read, and checked by rustls, when the
//! store is built; the client connects on first use, so the store can be built while etcd is
//! down.
//!
//! # Clusters
//!
//! Give every member's client endpoint (`etcd://h1:2379,h2:2379,h3:2379`). The client talks to
//! one member at a time, the first at first, and moves to the next when a call there fails
//! with `UNAVAILABLE` or hangs for a second before its caller gives up; the watches open on the
//! member it leaves end, and the followers watch again on the next. Every call and watch
//! carries etcd's require-leader metadata (`clientv3.WithRequireLeader`), so a member cut off
//! from its quorum refuses them at once ("etcdserver: no leader") and ends the watches open on
//! it, rather than leaving a follower watching a member that will never see the leader's entry
//! go. Meanwhile:
//!
//! * a **leader** whose member lost its quorum cannot renew, and steps down by the engine's
//!   rule (`renew + grace` after its last good renewal, never after its deadline); its entry
//!   goes when its next attempt, on another member, deletes it, or when its lease runs out on
//!   the majority;
//! * a **follower** on such a member learns it at its next keepalive or when etcd ends its
//!   watch, and campaigns on another member; one on the majority takes over as usual;
//! * a lost **Raft leader** costs an election (up to two election timeouts), and the new Raft
//!   leader extends every lease by a full TTL plus an election timeout, so an entry left by a
//!   leader that stepped down meanwhile lives that much longer unless its own next attempt
//!   deletes it.
//!
//! `docs/RELIABILITY.md` shows the chaos cells that check this on a real 3-member cluster.
//!
//! # Client
//!
//! The store speaks etcd's v3 gRPC API through a small client of its own (`client.rs`: one
//! channel per endpoint, TLS, token authentication) on code generated from etcd's
//! `.proto` files and committed (`pb/`), so building it needs no protobuf compiler. The code
//! is regenerated by `scripts/regen-etcd-proto`; `docs/decisions.md` (D42, D43) says why and
//! how. The queue view followers keep is in `queue.rs`, the shared sessions and the renewal
//! batcher in `session.rs`, the URL parser in `url.rs`.

mod client;
mod handoff;
#[rustfmt::skip]
#[allow(clippy::all, dead_code, missing_docs, rustdoc::all)]
mod pb;
mod presence;
mod queue;
mod session;
mod url;

/// How long the first renewal of a batch waits for others (see the module docs).
pub use self::session::WINDOW as RENEW_BATCH_WINDOW;

pub use self::handoff::handoff_prefix;

/// The gRPC channel type [`EtcdStore::from_channel`] takes: tonic's, re-exported so that an
/// application builds it with the tonic version Baton links.
pub use tonic::transport::{Channel, Endpoint};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OnceCell, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::debug;

use self::client::{Client, Credentials, TlsFiles, WatchRange};
use self::handoff::{HandoffRequest, Mark, mark_key, request_key};
use self::pb::etcdserverpb::{TxnRequest, response_op};
use self::pb::mvccpb::{KeyValue, event::EventType};
use self::queue::{QueueView, Step, check_entry};
use self::session::{Session, Sessions};
use self::url::parse_url;
use super::cert::{CertFault, RENEW_OR_CHECK_CLOCKS, chain_text};
use super::{
    Acquire, Candidacy, Change, Changes, HandoffMark, Lease, LeaseRecord, LeaseStore,
    PendingHandoff, Presence, Renew, StoreInfo,
};
use crate::{Error, FencingToken, Result, connect::redact};

/// The store's name in errors and [`StoreInfo`].
const STORE: &str = "etcd";

/// etcd's minimum lease TTL with its default election timeout (1 s): 1.5 × the election
/// timeout, rounded up. etcd raises a shorter TTL to this when it grants the lease.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(2);

/// The TTL etcd keeps a lease for when an election asks for `requested`
/// ([`LeaseStore::granted_ttl`]): whole seconds, rounded up, and at least etcd's minimum
/// ([`DEFAULT_MIN_TTL`] with etcd's default election timeout; a cluster with a longer election
/// timeout raises it further).
///
/// ```
/// use std::time::Duration;
/// use baton::store::etcd::granted_ttl;
/// assert_eq!(granted_ttl(Duration::from_millis(1500)), Duration::from_secs(2));
/// assert_eq!(granted_ttl(Duration::from_millis(2500)), Duration::from_secs(3));
/// ```
pub fn granted_ttl(requested: Duration) -> Duration {
    let secs = u64::try_from(lease_ttl_secs(requested)).unwrap_or(u64::MAX);
    Duration::from_secs(secs).max(DEFAULT_MIN_TTL)
}

/// The lease TTL for an election lease duration: whole seconds, rounded up, at least 1.
pub(crate) fn lease_ttl_secs(ttl: Duration) -> i64 {
    let secs = ttl.as_nanos().div_ceil(1_000_000_000).max(1);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// The prefix under which the entries of election `key` live: `key/`.
pub fn election_prefix(key: &str) -> String {
    format!("{key}/")
}

/// A [`LeaseStore`] on an etcd cluster, speaking `concurrency.Election`. Clones share one
/// client (one HTTP/2 connection per endpoint).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `http://host:port` or `https://host:port`, with their connection and TLS settings.
    endpoints: Vec<tonic::transport::Endpoint>,
    credentials: Option<Credentials>,
    /// The URL with any password replaced.
    location: String,
    client: OnceCell<Client>,
    /// The session leases its candidacies share, and their renewals' batcher.
    sessions: Sessions,
    /// The leases of the presence records it announces.
    presence: presence::Leases,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A store for `etcd://...` or `etcds://...` (see the [module docs](self)). Reads any
    /// certificate files the URL names; connects on first use, so it can be built while etcd
    /// is down, and outside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL, an unknown option, or a certificate file that
    /// cannot be read or used. Messages show the URL with its password redacted.
    pub fn open(url: &str) -> Result<EtcdStore> {
        let location = redact(url);
        let target = parse_url(url, &location)?;
        let tls = if target.tls {
            let read = |what: &str, path: &str| {
                std::fs::read(path).map_err(|e| {
                    Error::Config(format!(
                        "cannot read the {what} file {path} named in {location}: {e}"
                    ))
                })
            };
            let ca = match &target.ca {
                Some(path) => Some(read("CA certificate", path)?),
                None => None,
            };
            let identity = match (&target.cert, &target.key) {
                (Some(cert), Some(key)) => {
                    Some((read("client certificate", cert)?, read("client key", key)?))
                }
                (None, None) => None,
                _ => {
                    return Err(Error::Config(format!(
                        "{location}: a client certificate needs both cert= and key="
                    )));
                }
            };
            Some(TlsFiles { ca, identity })
        } else {
            None
        };
        let scheme = if target.tls { "https" } else { "http" };
        let urls: Vec<String> = target
            .hosts
            .iter()
            .map(|h| format!("{scheme}://{h}"))
            .collect();
        let endpoints = client::endpoints(&urls, tls).map_err(|e| {
            let what = if target.tls { "TLS with etcd" } else { "etcd" };
            Error::Config(format!("{what} at {location}: {}", chain_text(&e)))
        })?;
        let credentials = target
            .user
            .map(|(user, password)| Credentials { user, password });
        Ok(EtcdStore {
            inner: Arc::new(Inner {
                endpoints,
                credentials,
                location,
                client: OnceCell::new(),
                sessions: Sessions::default(),
                presence: presence::Leases::default(),
            }),
        })
    }

    /// A store on a gRPC channel to etcd that the application already holds (its own etcd
    /// client's connections, with whatever TLS and client certificate the channel carries):
    /// no second connection. The channel connects as it would for the application; build it
    /// with [`Endpoint`] (re-exported tonic), for example
    /// `Endpoint::from_static("http://127.0.0.1:2379").connect_lazy()`.
    ///
    /// Without user authentication: etcd's user tokens are per client, and Baton refreshes its
    /// own; for `auth enable` clusters open the store from a URL with the user and password.
    /// The location in errors and [`StoreInfo`] is `etcd (the application's channel)`.
    pub fn from_channel(channel: Channel) -> EtcdStore {
        EtcdStore {
            inner: Arc::new(Inner {
                endpoints: Vec::new(),
                credentials: None,
                location: "etcd (the application's channel)".to_owned(),
                client: OnceCell::new_with(Some(Client::on_channel(channel))),
                sessions: Sessions::default(),
                presence: presence::Leases::default(),
            }),
        }
    }

    /// Check that etcd answers (and that the credentials, if any, are accepted). Asks for the
    /// endpoint's status, which needs no permission on any key, so a user whose role covers
    /// only an election's prefix can ping too.
    pub async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .status()
            .await
            .map_err(|e| self.error(e, "asking the status of", false))?;
        Ok(())
    }

    async fn client(&self) -> Result<Client> {
        let client = self
            .inner
            .client
            .get_or_try_init(|| {
                Client::connect(&self.inner.endpoints, self.inner.credentials.as_ref())
            })
            .await
            .map_err(|e| self.error(e, "connecting", false))?;
        Ok(client.clone())
    }

    /// Map a client error. `write`: the request may have been applied.
    fn error(&self, e: Status, doing: &str, write: bool) -> Error {
        let location = &self.inner.location;
        match e.code() {
            Code::Unauthenticated | Code::PermissionDenied => {
                return Error::Config(format!(
                    "etcd at {location} refused {doing}: {}; check the user and password in the \
                     URL and that the user's role may read and write the election's prefix \
                     (NAME/) and its handoff keys and presence records (the prefix \
                     baton-handoff:NAME:, with NAME escaped)",
                    e.message()
                ));
            }
            Code::InvalidArgument | Code::FailedPrecondition
                if e.message().contains("user name") || e.message().contains("auth") =>
            {
                return Error::Config(format!(
                    "etcd at {location} refused {doing}: {}",
                    e.message()
                ));
            }
            _ => {}
        }
        if let Some(problem) = tls_problem(&e) {
            return Error::Config(format!("TLS with etcd at {location} failed: {problem}"));
        }
        let message = format!("{doing} at {location} failed");
        let connect_failure = e.code() == Code::Unavailable && e.message().contains("connect");
        if write && !connect_failure {
            Error::indeterminate(STORE, message, e)
        } else {
            Error::unavailable(STORE, message, e)
        }
    }

    /// The record of the entry `kv` (validated as an election entry of `key`): its value, its
    /// create revision, and its lease's remaining TTL. `None` when its lease is already gone.
    async fn record_of(&self, key: &str, kv: &KeyValue) -> Result<Option<LeaseRecord>> {
        check_entry(key, kv)?;
        let client = self.client().await?;
        let ttl = match client.lease_time_to_live(kv.lease).await {
            Ok(resp) if resp.ttl >= 0 => time_left(resp.ttl, resp.granted_ttl),
            Ok(_) => return Ok(None),
            Err(e) if lease_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.error(e, "reading the leader's lease", false)),
        };
        Ok(Some(LeaseRecord {
            holder: String::from_utf8_lossy(&kv.value).into_owned(),
            token: FencingToken(kv.create_revision as u64),
            ttl,
        }))
    }

    /// The head of election `key`'s queue and its handoff mark and request keys, in one
    /// read-only transaction.
    async fn head_and_handoff(&self, key: &str) -> Result<HeadAndHandoff> {
        let client = self.client().await?;
        let head = pb::etcdserverpb::RangeRequest {
            limit: 1,
            ..client::get_prefix_by_age(&election_prefix(key))
        };
        let txn = TxnRequest {
            compare: Vec::new(),
            success: vec![
                client::range_op(head),
                client::range_op(client::get(&mark_key(key))),
                client::range_op(client::get(&request_key(key))),
            ],
            failure: Vec::new(),
        };
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| self.error(e, "reading the election", false))?;
        let mut found = txn_ranges(resp).map(|kvs| kvs.into_iter().next());
        Ok(HeadAndHandoff {
            head: found.next().flatten(),
            mark: found.next().flatten(),
            request: found.next().flatten(),
        })
    }

    async fn read_record(&self, key: &str) -> Result<Option<LeaseRecord>> {
        // The head may be on its way out (its lease just expired): look again, briefly.
        for _ in 0..3 {
            let found = self.head_and_handoff(key).await?;
            // A request Baton did not write is foreign data, whoever leads.
            if let Some(request) = &found.request {
                HandoffRequest::read(key, request)?;
            }
            if found.under_mark(key)? {
                // A planned handoff's mark: nobody leads until a candidate it admits takes
                // the key (and ends the mark), or it runs out.
                return Ok(None);
            }
            let Some(head) = found.head else {
                return Ok(None);
            };
            if let Some(record) = self.record_of(key, &head).await? {
                return Ok(Some(record));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    }

    /// One keepalive of lease `id`: `Ok(true)` when etcd extended it, `Ok(false)` when etcd
    /// says it is gone.
    async fn keep_alive(&self, id: i64) -> Result<bool> {
        let client = self.client().await?;
        match client.lease_keep_alive(id).await {
            Ok(resp) => Ok(resp.ttl > 0),
            Err(e) if lease_not_found(&e) => Ok(false),
            Err(e) => Err(self.error(e, "keeping the lease alive", true)),
        }
    }

    async fn revoke(&self, id: i64) -> Result<()> {
        let client = self.client().await?;
        match client.lease_revoke(id).await {
            Ok(_) => Ok(()),
            Err(e) if lease_not_found(&e) => Ok(()),
            Err(e) => Err(self.error(e, "revoking the lease", true)),
        }
    }

    /// Delete `entry` if it still has create revision `rev`.
    async fn delete_entry(&self, entry: &str, rev: i64) -> Result<()> {
        self.delete_entry_clearing(entry, rev, None).await
    }

    /// Delete `entry` if it still has create revision `rev`, and with it the handoff request
    /// key `clear.0` if it is attached to lease `clear.1` (Baton's request for that lease's
    /// term; anything else there is left alone).
    async fn delete_entry_clearing(
        &self,
        entry: &str,
        rev: i64,
        clear: Option<(String, i64)>,
    ) -> Result<()> {
        let client = self.client().await?;
        let mut success = vec![client::delete_op(entry)];
        if let Some((request, lease)) = clear {
            success.push(client::txn_op(TxnRequest {
                compare: vec![client::lease_is(&request, lease)],
                success: vec![client::delete_op(&request)],
                failure: Vec::new(),
            }));
        }
        let txn = TxnRequest {
            compare: vec![client::create_revision_is(entry, rev)],
            success,
            failure: Vec::new(),
        };
        client
            .txn(txn)
            .await
            .map_err(|e| self.error(e, "deleting the queue entry", true))?;
        Ok(())
    }

    /// The time left on a handoff mark attached to lease `lease` (zero when it just ran out).
    async fn mark_ttl(&self, lease: i64) -> Result<Duration> {
        let client = self.client().await?;
        match client.lease_time_to_live(lease).await {
            Ok(resp) if resp.ttl >= 0 => Ok(time_left(resp.ttl, resp.granted_ttl)),
            Ok(_) => Ok(Duration::ZERO),
            Err(e) if lease_not_found(&e) => Ok(Duration::ZERO),
            Err(e) => Err(self.error(e, "reading the handoff mark's lease", false)),
        }
    }

    /// Revoke lease `id` in the background, best effort (a handoff mark's lease that carries
    /// nothing any more: it would run out by itself within its window).
    fn revoke_later(&self, id: i64) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = self.clone();
            handle.spawn(async move {
                let _ = store.revoke(id).await;
            });
        }
    }

    /// End election `key`'s handoff mark `mark` (as read) while `entry`, the candidate the
    /// mark admits, is still there (it was the head of the queue when the mark was read, and
    /// only it can leave the head). `false`: the mark or the entry changed; look again.
    async fn take_mark(&self, key: &str, entry: &Entry, mark: &KeyValue) -> Result<bool> {
        let client = self.client().await?;
        let mark_key = mark_key(key);
        let txn = TxnRequest {
            compare: vec![
                client::create_revision_is(&entry.key, entry.rev),
                client::mod_revision_is(&mark_key, mark.mod_revision),
            ],
            success: vec![client::delete_op(&mark_key)],
            failure: Vec::new(),
        };
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| self.error(e, "ending the handoff mark", true))?;
        if resp.succeeded {
            self.revoke_later(mark.lease);
        }
        Ok(resp.succeeded)
    }
}

/// What one read of an election found: the head of its queue, its mark and its request.
struct HeadAndHandoff {
    head: Option<KeyValue>,
    mark: Option<KeyValue>,
    request: Option<KeyValue>,
}

impl HeadAndHandoff {
    /// Whether a handoff mark is live (then nobody leads). A mark, and the head read in the same
    /// transaction, that Baton did not write are [`Error::ForeignData`] all the same.
    fn under_mark(&self, key: &str) -> Result<bool> {
        let Some(mark) = &self.mark else {
            return Ok(false);
        };
        Mark::read(key, mark)?;
        if let Some(head) = &self.head {
            check_entry(key, head)?;
        }
        Ok(true)
    }
}

/// A TLS handshake that failed for a reason retrying cannot fix, explained: the error's text
/// (with its sources: rustls's reason sits deep inside tonic's transport error) and what to do.
fn tls_problem(e: &Status) -> Option<String> {
    let text = chain_text(e);
    let fix = match CertFault::read(&text)? {
        CertFault::UnknownCa => {
            "the server's certificate is not signed by a CA Baton trusts: pass the CA that signed \
             it with ?ca=/path/to/ca.pem"
        }
        CertFault::WrongName => {
            "the server's certificate is not valid for the host name Baton connected to: use a \
             host name the certificate lists, or reissue it with this one"
        }
        CertFault::OutsideValidity => RENEW_OR_CHECK_CLOCKS,
        CertFault::ClientCertRequired => {
            "etcd requires a client certificate (--client-cert-auth): pass \
             &cert=/path/client.pem&key=/path/client.key"
        }
        CertFault::OtherCertificate => "check the CA (?ca=) and the server's certificate",
        CertFault::Refused => {
            "etcd refused the handshake: if it requires client certificates \
             (--client-cert-auth), pass &cert= and &key= signed by a CA it trusts"
        }
    };
    Some(format!("{text}; {fix}"))
}

/// The time a lease has left, from what `LeaseTimeToLive` answers (`ttl` >= 0, whole seconds,
/// rounded down): half a second more, at most its granted TTL.
fn time_left(ttl: i64, granted_ttl: i64) -> Duration {
    let reported = Duration::from_secs(ttl.max(0).unsigned_abs()) + Duration::from_millis(500);
    reported.min(Duration::from_secs(granted_ttl.max(1).unsigned_abs()))
}

/// Whether etcd answered that a lease does not exist (expired or revoked).
fn lease_not_found(e: &Status) -> bool {
    e.code() == Code::NotFound || e.message().contains("lease not found")
}

#[async_trait]
impl LeaseStore for EtcdStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        if key.is_empty() {
            return Err(Error::Config("the etcd election name is empty".into()));
        }
        Ok(Box::new(EtcdCandidacy {
            store: self.clone(),
            key: key.to_owned(),
            candidate: candidate.to_owned(),
            session: None,
            entry: None,
            position: None,
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        self.read_record(key).await
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        let client = self.client().await?;
        let (mark, request) = (mark_key(key), request_key(key));
        let ranges = [
            WatchRange::prefix(&election_prefix(key)),
            WatchRange::key(&mark),
            WatchRange::key(&request),
        ];
        let mut stream = client
            .watch(&ranges, 0)
            .await
            .map_err(|e| self.error(e, "watching the election", false))?;
        let (tx, rx) = mpsc::channel(16);
        let key = key.to_owned();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = tx.closed() => return,
                    m = stream.message() => m,
                };
                match message {
                    Ok(Some(resp)) if !resp.canceled => {
                        for event in &resp.events {
                            let Some(kv) = &event.kv else { continue };
                            let put = event.r#type() == EventType::Put;
                            let change = if kv.key == mark.as_bytes() {
                                match Mark::read(&key, kv) {
                                    Ok(m) if put => Change::HandedOver { to: m.to },
                                    _ => Change::Other,
                                }
                            } else if kv.key == request.as_bytes() {
                                match HandoffRequest::read(&key, kv) {
                                    Ok(r) if put => Change::HandoffRequested { to: r.to },
                                    _ => continue,
                                }
                            } else if put {
                                Change::Other
                            } else {
                                Change::Released
                            };
                            if tx.send(change).await.is_err() {
                                return;
                            }
                        }
                    }
                    _ => return,
                }
            }
        });
        Ok(Some(receiver_changes(rx)))
    }

    /// Leaves the request at the key `baton-handoff:<key escaped>:request`, attached to the
    /// holder's lease and naming its fencing token, in a transaction on the holder's entry
    /// still being the head of the queue (and on the request key being as read: anything
    /// there that Baton did not write is [`Error::ForeignData`]).
    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        let client = self.client().await?;
        let request_key = request_key(key);
        for _ in 0..5 {
            let found = self.head_and_handoff(key).await?;
            if let Some(request) = &found.request {
                HandoffRequest::read(key, request)?;
            }
            if found.under_mark(key)? {
                // Handed over already: nobody holds the key.
                return Ok(None);
            }
            let Some(head) = found.head else {
                return Ok(None);
            };
            let Some(record) = self.record_of(key, &head).await? else {
                // The holder's lease just ended.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if to == Some(record.holder.as_str()) {
                return Ok(Some(record));
            }
            let guard = match &found.request {
                Some(kv) => {
                    HandoffRequest::read(key, kv)?;
                    client::mod_revision_is(&request_key, kv.mod_revision)
                }
                None => client::create_revision_is(&request_key, 0),
            };
            let value = HandoffRequest {
                token: head.create_revision,
                to: to.map(str::to_owned),
            }
            .encode();
            let head_key = String::from_utf8_lossy(&head.key).into_owned();
            let txn = TxnRequest {
                compare: vec![
                    client::create_revision_is(&head_key, head.create_revision),
                    client::none_created_before(&election_prefix(key), head.create_revision),
                    client::create_revision_is(&mark_key(key), 0),
                    guard,
                ],
                success: vec![client::put_op(&request_key, &value, head.lease)],
                failure: Vec::new(),
            };
            match client.txn(txn).await {
                Ok(resp) if resp.succeeded => return Ok(Some(record)),
                Ok(_) => {}
                // The holder's lease ended between the read and the write.
                Err(e) if lease_not_found(&e) => {}
                Err(e) => return Err(self.error(e, "leaving a handoff request", true)),
            }
        }
        Err(Error::Unavailable {
            store: STORE,
            message: format!(
                "the election {key:?} at {} kept changing while a handoff request was left",
                self.inner.location
            ),
            source: None,
        })
    }

    /// A live mark is `Reserved`; else a request counts while it names the fencing token of
    /// the head of the queue (the holder), read in the same transaction.
    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        let found = self.head_and_handoff(key).await?;
        // A request Baton did not write is foreign data, whoever leads.
        if let Some(request) = &found.request {
            HandoffRequest::read(key, request)?;
        }
        if let Some(kv) = &found.mark {
            let mark = Mark::read(key, kv)?;
            let ttl = self.mark_ttl(kv.lease).await?;
            if !ttl.is_zero() {
                return Ok(Some(PendingHandoff::Reserved(HandoffMark::new(
                    mark.to, mark.from, ttl,
                ))));
            }
            // It just ran out: ignored.
        }
        let (Some(head), Some(request)) = (&found.head, &found.request) else {
            return Ok(None);
        };
        check_entry(key, head)?;
        let request = HandoffRequest::read(key, request)?;
        if request.token != head.create_revision {
            // Left for an earlier term.
            return Ok(None);
        }
        Ok(Some(PendingHandoff::Requested {
            holder: String::from_utf8_lossy(&head.value).into_owned(),
            to: request.to,
        }))
    }

    /// The record is the key `baton-handoff:<key escaped>:candidate:<candidate escaped>`, on a
    /// lease of its own of `ttl` (see the module docs, *Presence records*).
    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        self.announce_presence(key, candidate, priority, ttl)
            .await
            .map(Some)
    }

    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        self.presence_records(key).await.map(Some)
    }

    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        self.withdraw_presence(key, candidate).await
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            name: STORE,
            location: self.inner.location.clone(),
            can_watch: true,
        }
    }

    fn granted_ttl(&self, requested: Duration) -> Duration {
        granted_ttl(requested)
    }
}

fn receiver_changes(rx: mpsc::Receiver<Change>) -> Changes {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|change| (change, rx))
    }))
}

/// The candidate's own queue entry.
#[derive(Debug, Clone)]
struct Entry {
    key: String,
    rev: i64,
    /// Whether `try_acquire` answered `Acquired` for this entry: its token is spent, and the
    /// next attempt queues a new entry so that the next term gets a greater token.
    handed_out: bool,
}

/// What the candidacy's change stream watches: the queue as the follower last read it (and the
/// election's handoff mark with it), or the mark alone while a handoff keeps the candidate out
/// of the queue, or the handoff request key while it leads; and the session whose loss must
/// wake the follower.
#[derive(Debug, Clone, Default)]
struct Position {
    queue: Option<Arc<QueueView>>,
    lost: Option<CancellationToken>,
    /// Out of the queue until the handoff mark goes: watch it from this revision.
    reserved_from: Option<i64>,
    /// Leading with this token: watch the handoff request key from this revision.
    leading: Option<(i64, i64)>,
}

/// One candidate in one etcd election: a membership of one of the store's shared sessions,
/// and a queue entry on its lease.
struct EtcdCandidacy {
    store: EtcdStore,
    key: String,
    candidate: String,
    session: Option<Arc<Session>>,
    entry: Option<Entry>,
    /// What this candidacy's change streams follow, made by the first
    /// [`watch`](Candidacy::watch) and dropped once no stream follows it (a leader's): a watch
    /// channel costs about 360 bytes, for every election of the process otherwise.
    position: Option<watch::Sender<Position>>,
}

impl std::fmt::Debug for EtcdCandidacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCandidacy")
            .field("key", &self.key)
            .field("candidate", &self.candidate)
            .field(
                "lease",
                &self.session.as_ref().map(|s| format!("{:x}", s.id)),
            )
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdCandidacy {
    fn drop(&mut self) {
        // Best effort: a candidacy dropped without `leave` takes its entry out of the queue
        // (or, the session's last member, revokes the lease, which deletes it), so that it
        // does not hold up the election for a TTL.
        let session = self.session.take();
        let entry = self.entry.take();
        let Some(last) = self.part(session.as_ref()) else {
            if let (Some(entry), Ok(handle)) = (entry, tokio::runtime::Handle::try_current()) {
                let store = self.store.clone();
                handle.spawn(async move { store.delete_entry(&entry.key, entry.rev).await });
            }
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let id = session.as_ref().map_or(0, |s| s.id);
        handle.spawn(async move {
            match (last, entry) {
                (true, _) => {
                    let _ = store.revoke(id).await;
                }
                (false, Some(entry)) => {
                    let _ = store.delete_entry(&entry.key, entry.rev).await;
                }
                (false, None) => {}
            }
        });
    }
}

impl EtcdCandidacy {
    /// End the membership of `session` (no longer leading there): `Some(true)` when this was
    /// its last member, so the lease is to be revoked; `None` without a session.
    fn part(&self, session: Option<&Arc<Session>>) -> Option<bool> {
        let session = session?;
        session.unlead(&self.key);
        Some(session.part(&self.key) && !session.lost.is_cancelled())
    }

    /// Forget the session and the entry (after a loss); the last member of a session that
    /// still lives revokes it in the background.
    fn reset(&mut self) {
        let session = self.session.take();
        self.entry = None;
        if self.part(session.as_ref()) == Some(true)
            && let (Some(session), Ok(handle)) = (session, tokio::runtime::Handle::try_current())
        {
            let store = self.store.clone();
            handle.spawn(async move {
                let _ = store.revoke(session.id).await;
            });
        }
        self.set_position(Position::default());
    }

    /// Tell the change streams of this candidacy where it stands now; drop the channel once
    /// none follows it.
    fn set_position(&mut self, position: Position) {
        if let Some(tx) = &self.position {
            if tx.receiver_count() == 0 {
                self.position = None;
            } else {
                tx.send_replace(position);
            }
        }
    }

    /// Whether a change stream follows this candidacy.
    fn followed(&self) -> bool {
        self.position
            .as_ref()
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Create the queue entry for the current session (or find the one an earlier attempt
    /// created). `None` when the session's lease is gone.
    async fn create_entry(&mut self, id: i64) -> Result<Option<Entry>> {
        let entry = format!("{}{id:x}", election_prefix(&self.key));
        let client = self.store.client().await?;
        let txn = TxnRequest {
            compare: vec![client::create_revision_is(&entry, 0)],
            success: vec![client::put_op(&entry, &self.candidate, id)],
            failure: vec![client::range_op(client::get(&entry))],
        };
        let resp = match client.txn(txn).await {
            Ok(resp) => resp,
            Err(e) if lease_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.store.error(e, "creating the queue entry", true)),
        };
        let rev = if resp.succeeded {
            resp.header.map_or(0, |h| h.revision)
        } else {
            txn_ranges(resp)
                .find_map(|kvs| kvs.first().map(|kv| kv.create_revision))
                .unwrap_or(0)
        };
        if rev == 0 {
            // The entry vanished between the compare and the get: the lease just ended.
            return Ok(None);
        }
        Ok(Some(Entry {
            key: entry,
            rev,
            handed_out: false,
        }))
    }

    /// A live handoff `mark` that does not let this candidate lead now: it is not the head, or
    /// the mark does not admit it. A head the mark does not admit steps aside: it leaves the
    /// queue (its next attempt queues anew, at the tail), so that the candidate the mark names
    /// can reach the head, and its change stream watches the mark to wake it when the mark
    /// goes. A candidate behind the head keeps its place (a one-shot attempt leaves, as
    /// always).
    async fn reserved(
        &mut self,
        session: &Arc<Session>,
        entry: &Entry,
        at_head: bool,
        mark: Mark,
        mark_kv: &KeyValue,
        positions: &Positions,
    ) -> Result<Acquire> {
        let followed = self.followed();
        if at_head || !followed {
            self.store.delete_entry(&entry.key, entry.rev).await?;
            self.entry = None;
            self.set_position(Position {
                reserved_from: followed.then_some(positions.revision + 1),
                lost: Some(session.lost.clone()),
                ..Position::default()
            });
        } else {
            self.set_position(Position {
                queue: Some(Arc::new(
                    QueueView::new(&self.key, &entry.key, &positions.ahead, positions.revision)
                        .for_candidate(&self.candidate, true),
                )),
                lost: Some(session.lost.clone()),
                ..Position::default()
            });
        }
        let ttl = self.store.mark_ttl(mark_kv.lease).await?;
        Ok(Acquire::Reserved(HandoffMark::new(mark.to, mark.from, ttl)))
    }

    /// Read the own entry and every entry ahead of it (the head first, the predecessor last)
    /// in one transaction.
    async fn positions(&self, entry: &Entry) -> Result<Positions> {
        let prefix = election_prefix(&self.key);
        let client = self.store.client().await?;
        let ahead = pb::etcdserverpb::RangeRequest {
            max_create_revision: entry.rev - 1,
            ..client::get_prefix_by_age(&prefix)
        };
        let txn = TxnRequest {
            compare: Vec::new(),
            success: vec![
                client::range_op(client::get(&entry.key)),
                client::range_op(ahead),
                client::range_op(client::get(&mark_key(&self.key))),
                client::range_op(client::get(&request_key(&self.key))),
            ],
            failure: Vec::new(),
        };
        let resp = client
            .txn(txn)
            .await
            .map_err(|e| self.store.error(e, "reading the election", false))?;
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        let mut gets = txn_ranges(resp);
        let own = gets.next().unwrap_or_default().into_iter().next();
        let ahead = gets.next().unwrap_or_default();
        let mark = gets.next().unwrap_or_default().into_iter().next();
        let request = gets.next().unwrap_or_default().into_iter().next();
        Ok(Positions {
            own: own.filter(|kv| kv.create_revision == entry.rev),
            ahead,
            mark,
            request,
            revision,
        })
    }
}

/// The keys each read of a transaction found, in the order of its operations.
fn txn_ranges(resp: pb::etcdserverpb::TxnResponse) -> impl Iterator<Item = Vec<KeyValue>> {
    resp.responses.into_iter().map(|op| match op.response {
        Some(response_op::Response::ResponseRange(range)) => range.kvs,
        _ => Vec::new(),
    })
}

struct Positions {
    /// The own entry, if it is still there with the expected create revision.
    own: Option<KeyValue>,
    /// Every entry created before the own one, oldest (the head) first.
    ahead: Vec<KeyValue>,
    /// The election's handoff mark, if one is live.
    mark: Option<KeyValue>,
    /// What is at the election's request key, read only to report foreign data there.
    request: Option<KeyValue>,
    revision: i64,
}

#[async_trait]
impl Candidacy for EtcdCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        // At most a few rounds: each restarts only after a definite loss of session or entry.
        for _ in 0..3 {
            if self.session.as_ref().is_some_and(|s| s.lost.is_cancelled()) {
                self.reset();
            }
            let session = match &self.session {
                Some(session) => session.clone(),
                None => {
                    let session = self
                        .store
                        .inner
                        .sessions
                        .join(&self.store, &self.key, ttl)
                        .await?;
                    self.session = Some(session.clone());
                    session
                }
            };
            let id = session.id;
            if let Some(entry) = self.entry.clone()
                && entry.handed_out
            {
                // The previous term with this entry is over (a failed release, a lost renew):
                // queue anew, so the next term gets a greater token. It stays the session's
                // leading entry until it is deleted, so that while the delete fails the
                // watchdog still takes it when its last renewal's cover runs out.
                self.store.delete_entry(&entry.key, entry.rev).await?;
                session.unlead(&self.key);
                self.entry = None;
            }
            let entry = match self.entry.clone() {
                Some(entry) => entry,
                None => {
                    let Some(entry) = self.create_entry(id).await? else {
                        session.lost.cancel();
                        self.reset();
                        continue;
                    };
                    self.entry = Some(entry.clone());
                    entry
                }
            };
            // The keepalive is sent after the engine's send time, so a lease it extends lives
            // at least a TTL past that time.
            let sent = tokio::time::Instant::now();
            let (alive, positions) =
                tokio::join!(self.store.keep_alive(id), self.positions(&entry));
            if !alive? {
                session.lost.cancel();
                self.reset();
                continue;
            }
            session.kept_alive(sent);
            let positions = positions?;
            let Some(own) = positions.own.clone() else {
                // Deleted by someone else, or expired with the lease: queue anew.
                self.entry = None;
                continue;
            };
            let head = positions.ahead.first().unwrap_or(&own).clone();
            check_entry(&self.key, &head)?;
            if let Some(predecessor) = positions.ahead.last() {
                check_entry(&self.key, predecessor)?;
            }
            // What Baton did not write at the request key fails the acquisition as it fails
            // `read` and `request_handoff`: the candidate would lead an election whose requests
            // nobody can leave. It is never touched.
            if let Some(request) = &positions.request {
                HandoffRequest::read(&self.key, request)?;
            }
            let at_head = head.key == entry.key.as_bytes();
            if let Some(mark_kv) = &positions.mark {
                let mark = Mark::read(&self.key, mark_kv)?;
                if !(at_head && mark.admits(&self.candidate)) {
                    return self
                        .reserved(&session, &entry, at_head, mark, mark_kv, &positions)
                        .await;
                }
                // The candidate the handoff named, at the head: end the mark and lead.
                if !self.store.take_mark(&self.key, &entry, mark_kv).await? {
                    continue;
                }
            }
            if at_head {
                session.lead(&self.key, &entry.key, entry.rev, sent);
                if let Some(e) = self.entry.as_mut() {
                    e.handed_out = true;
                }
                self.set_position(Position {
                    leading: Some((entry.rev, positions.revision + 1)),
                    ..Position::default()
                });
                return Ok(Acquire::Acquired(Lease::new(
                    self.key.clone(),
                    self.candidate.clone(),
                    FencingToken(entry.rev as u64),
                )));
            }
            if !self.followed() {
                // Nobody waits on this candidacy's changes (a one-shot attempt, or a caller
                // that polls): leave the queue again, as etcd's `Mutex.TryLock` does, so that
                // an entry nobody watches never reaches the head and holds up the election.
                self.store.delete_entry(&entry.key, entry.rev).await?;
                self.entry = None;
                self.set_position(Position::default());
            } else {
                self.set_position(Position {
                    queue: Some(Arc::new(
                        QueueView::new(&self.key, &entry.key, &positions.ahead, positions.revision)
                            .for_candidate(&self.candidate, false),
                    )),
                    lost: Some(session.lost.clone()),
                    ..Position::default()
                });
            }
            let record = match self.store.record_of(&self.key, &head).await? {
                Some(record) => record,
                // The head's lease just ended: it is being deleted; the watch wakes us.
                None => LeaseRecord {
                    holder: String::from_utf8_lossy(&head.value).into_owned(),
                    token: FencingToken(head.create_revision as u64),
                    ttl: Duration::ZERO,
                },
            };
            return Ok(Acquire::Held(record));
        }
        Err(Error::Unavailable {
            store: STORE,
            message: format!(
                "the queue entry for {:?} at {} kept disappearing; is something deleting keys under {:?}?",
                self.key,
                self.store.inner.location,
                election_prefix(&self.key)
            ),
            source: None,
        })
    }

    async fn renew(&mut self, lease: &Lease, _ttl: Duration) -> Result<Renew> {
        let ours = match (&self.session, &self.entry) {
            (Some(session), Some(entry))
                if lease.key == self.key
                    && entry.handed_out
                    && entry.rev as u64 == lease.token.get()
                    && !session.lost.is_cancelled() =>
            {
                Some((session.clone(), entry.clone()))
            }
            _ => None,
        };
        let Some((session, entry)) = ours else {
            return Ok(Renew::Lost(self.store.read_record(&self.key).await?));
        };
        let renewed = self
            .store
            .inner
            .sessions
            .renew(
                &self.store,
                session,
                &self.key,
                &entry.key,
                entry.rev,
                request_key(&self.key),
            )
            .await?;
        let Some(request) = renewed else {
            return Ok(Renew::Lost(self.store.read_record(&self.key).await?));
        };
        // A request for this term (a stale one names an earlier token). Anything else at the
        // request key is left alone and does not fail the renewal; `request_handoff` reports it.
        let asked = request.and_then(|kv| match HandoffRequest::read(&self.key, &kv) {
            Ok(request) => (request.token == entry.rev).then_some(request),
            Err(e) => {
                debug!(election = %self.key, error = %e, "ignoring what is at the handoff request key");
                None
            }
        });
        Ok(match asked {
            Some(request) => Renew::HandoffRequested { to: request.to },
            None => Renew::Renewed,
        })
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        let ours = matches!(
            (&self.session, &self.entry),
            (Some(_), Some(entry)) if lease.key == self.key && entry.rev as u64 == lease.token.get()
        );
        if !ours {
            return Ok(());
        }
        self.leave().await
    }

    /// One transaction, on the own entry still having the lease's create revision: write the
    /// mark (attached to a lease of its own whose TTL is the window), delete the own entry,
    /// and delete the handoff request if it is on this candidate's lease. The candidacy keeps
    /// its session and campaigns on.
    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        let (session, entry) = match (&self.session, &self.entry) {
            (Some(session), Some(entry))
                if lease.key == self.key && entry.rev as u64 == lease.token.get() =>
            {
                (session.clone(), entry.clone())
            }
            _ => return Ok(()),
        };
        let client = self.store.client().await?;
        let granted = client
            .lease_grant(lease_ttl_secs(window))
            .await
            .map_err(|e| {
                self.store
                    .error(e, "granting the handoff mark's lease", true)
            })?;
        let mark_lease = granted.id;
        let (mark_key, request_key) = (mark_key(&self.key), request_key(&self.key));
        let value = Mark {
            to: to.map(str::to_owned),
            from: self.candidate.clone(),
        }
        .encode();
        let mut guard = client::create_revision_is(&mark_key, 0);
        for _ in 0..3 {
            // The request, if any, went with this term (it is on this candidate's lease).
            let clear_request = TxnRequest {
                compare: vec![client::lease_is(&request_key, session.id)],
                success: vec![client::delete_op(&request_key)],
                failure: Vec::new(),
            };
            let txn = TxnRequest {
                compare: vec![
                    client::create_revision_is(&entry.key, entry.rev),
                    guard.clone(),
                ],
                success: vec![
                    client::put_op(&mark_key, &value, mark_lease),
                    client::delete_op(&entry.key),
                    client::txn_op(clear_request),
                ],
                failure: vec![
                    client::range_op(client::get(&entry.key)),
                    client::range_op(client::get(&mark_key)),
                ],
            };
            let resp = match client.txn(txn).await {
                Ok(resp) => resp,
                Err(e) => {
                    self.store.revoke_later(mark_lease);
                    return Err(self.store.error(e, "handing over", true));
                }
            };
            if resp.succeeded {
                debug!(
                    election = %self.key,
                    to = ?to,
                    mark_lease = %format!("{mark_lease:x}"),
                    "handed over: the mark is written and the own entry deleted"
                );
                session.unlead(&self.key);
                self.entry = None;
                self.set_position(Position::default());
                return Ok(());
            }
            let mut found = txn_ranges(resp).map(|kvs| kvs.into_iter().next());
            let own = found.next().flatten();
            if own.is_none_or(|kv| kv.create_revision != entry.rev) {
                // The lease is no longer held: nothing is written (the next attempt queues
                // anew, as after any term).
                self.store.revoke_later(mark_lease);
                return Ok(());
            }
            guard = match found.next().flatten() {
                None => client::create_revision_is(&mark_key, 0),
                Some(kv) => {
                    // Only a mark Baton wrote (left while a peer that ignores marks led) is
                    // replaced.
                    if let Err(e) = Mark::read(&self.key, &kv) {
                        self.store.revoke_later(mark_lease);
                        return Err(e);
                    }
                    client::mod_revision_is(&mark_key, kv.mod_revision)
                }
            };
        }
        self.store.revoke_later(mark_lease);
        Err(Error::Unavailable {
            store: STORE,
            message: format!(
                "the handoff mark of {:?} at {} kept changing",
                self.key, self.store.inner.location
            ),
            source: None,
        })
    }

    async fn leave(&mut self) -> Result<()> {
        if let Some(session) = self.session.clone()
            && session.close_if_sole(&self.key)
        {
            // The session's last member: revoking the lease deletes the entry (the only key
            // left on it) and ends the session in one write.
            let result = if session.lost.is_cancelled() {
                Ok(())
            } else {
                self.store.revoke(session.id).await
            };
            debug!(
                election = %self.key,
                lease = %format!("{:x}", session.id),
                ok = result.is_ok(),
                "left the election: revoked the session lease"
            );
            if let Err(e) = result {
                // Still the session's member, with its entry, as after a failed delete below:
                // the next attempt deletes a spent entry as soon as etcd answers. A forgotten
                // entry would live as long as the lease, which etcd, when it restarts, extends
                // by a TTL and an election timeout from the restart (docs/decisions.md D127).
                session.reopen();
                return Err(e);
            }
            session.revoked();
            self.session = None;
            self.reset();
            return Ok(());
        }
        // Other members live on: only the own entry goes, guarded on its create revision. If
        // that fails, a leader's entry stays in the session's watchdog, which deletes it when
        // its last renewal's cover runs out (when its own lease would have expired), though
        // the other members keep the lease alive. A handoff request left for this candidate's
        // term (on its lease) goes with the entry.
        if let (Some(entry), Some(session)) = (&self.entry, &self.session) {
            let clear = entry
                .handed_out
                .then(|| (request_key(&self.key), session.id));
            self.store
                .delete_entry_clearing(&entry.key, entry.rev, clear)
                .await?;
        }
        self.reset();
        Ok(())
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        let client = self.store.client().await?;
        let (tx, rx) = mpsc::channel(8);
        let position = self
            .position
            .get_or_insert_with(|| watch::channel(Position::default()).0)
            .subscribe();
        tokio::spawn(follow(client, self.key.clone(), position, tx));
        Ok(Some(receiver_changes(rx)))
    }

    /// The stream reports the follower's turn (the last entry ahead of it deleted: by release
    /// or by etcd revoking an expired lease alike), the loss of its own session or entry, and
    /// every new head of the queue; it ends when the watch breaks. It also reports a handoff
    /// mark naming this candidate and, to a candidate a mark keeps out of the queue, the
    /// mark's end (by the named candidate's acquire or by etcd when it runs out); the engine
    /// does not count on the latter (it waits out a mark's TTL all the same).
    fn watch_is_complete(&self) -> bool {
        true
    }
}

/// The change stream of a candidacy. While it follows, it watches the whole election prefix
/// and the election's handoff mark from the revision of its last read and keeps its view of
/// the queue current from the events: a new head is reported as [`Change::Acquired`] (no
/// request), the deletion of the last entry ahead as [`Change::Released`], the deletion of its
/// own entry or the loss of its session as [`Change::Expired`], a mark naming this candidate
/// as [`Change::HandedOver`]. While a mark keeps it out of the queue, it watches the mark and
/// reports its end as [`Change::Released`]. While it leads (when the engine keeps the stream),
/// it watches the handoff request key and reports a request for its term as
/// [`Change::HandoffRequested`]. Ends when the watch breaks.
async fn follow(
    client: Client,
    key: String,
    mut position: watch::Receiver<Position>,
    tx: mpsc::Sender<Change>,
) {
    let (mark, request) = (mark_key(&key), request_key(&key));
    loop {
        let current = position.borrow_and_update().clone();
        let lost = current.lost.clone().unwrap_or_default();
        let has_session = current.lost.is_some();
        let mut view = current.queue.as_deref().cloned();
        let watching = match (&view, current.reserved_from, current.leading) {
            (Some(view), _, _) => Some((
                vec![
                    WatchRange::prefix(&election_prefix(&key)),
                    WatchRange::key(&mark),
                ],
                view.from,
            )),
            (None, Some(from), _) => Some((vec![WatchRange::key(&mark)], from)),
            (None, None, Some((_, from))) => Some((vec![WatchRange::key(&request)], from)),
            (None, None, None) => None,
        };
        let change = match watching {
            Some((ranges, from)) => {
                let mut stream = match client.watch(&ranges, from).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        debug!(error = %e, "watching the election failed");
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        changed = position.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break None;
                        }
                        () = lost.cancelled(), if has_session => break Some(Change::Expired),
                        message = stream.message() => match message {
                            // Compacted past the revision, or refused: look again.
                            Ok(Some(resp)) if resp.canceled => break Some(Change::Other),
                            Ok(Some(resp)) => {
                                log_events(&key, &resp);
                                let step = match (&mut view, current.leading) {
                                    (Some(view), _) => view.apply(&resp.events),
                                    (None, None) => {
                                        // Out of the queue: the mark's end is this one's turn.
                                        let gone = resp.events.iter().any(|e| {
                                            e.r#type() == EventType::Delete
                                                && e.kv.as_ref().is_some_and(|kv| kv.key == mark.as_bytes())
                                        });
                                        if gone { Step::Wake(Change::Released) } else { Step::Quiet }
                                    }
                                    (None, Some((token, _))) => {
                                        for e in &resp.events {
                                            let Some(kv) = &e.kv else { continue };
                                            if e.r#type() != EventType::Put || kv.key != request.as_bytes() {
                                                continue;
                                            }
                                            if let Ok(asked) = HandoffRequest::read(&key, kv)
                                                && asked.token == token
                                                && tx.send(Change::HandoffRequested { to: asked.to }).await.is_err()
                                            {
                                                return;
                                            }
                                        }
                                        Step::Quiet
                                    }
                                };
                                match step {
                                    Step::Quiet => {}
                                    Step::Leader(holder) => {
                                        if tx.send(Change::Acquired { holder }).await.is_err() {
                                            return;
                                        }
                                    }
                                    Step::Wake(change) => break Some(change),
                                }
                            }
                            _ => return,
                        },
                    }
                }
            }
            None => tokio::select! {
                () = tx.closed() => return,
                changed = position.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    None
                }
                () = lost.cancelled(), if has_session => Some(Change::Expired),
            },
        };
        let Some(change) = change else { continue };
        if tx.send(change).await.is_err() {
            return;
        }
        // Wait for the next attempt to report a new position before watching again.
        tokio::select! {
            () = tx.closed() => return,
            changed = position.changed() => if changed.is_err() { return },
        }
    }
}

/// Trace what a follower's watch saw: each entry put or deleted, at which revision.
fn log_events(key: &str, resp: &pb::etcdserverpb::WatchResponse) {
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    for event in &resp.events {
        let entry = event.kv.as_ref().map(|kv| String::from_utf8_lossy(&kv.key));
        debug!(
            election = %key,
            kind = ?event.r#type(),
            entry = %entry.unwrap_or_default(),
            revision,
            "a follower's watch saw a queue change"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(lease_ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(lease_ttl_secs(Duration::from_millis(500)), 1);
        assert_eq!(lease_ttl_secs(Duration::from_secs(1)), 1);
        assert_eq!(lease_ttl_secs(Duration::from_millis(2500)), 3);
        assert_eq!(lease_ttl_secs(Duration::from_secs(15)), 15);
        // What the store reports it keeps: at least etcd's minimum.
        let store = EtcdStore::open("etcd://127.0.0.1:1").unwrap();
        for (requested, granted) in [(500, 2), (1_000, 2), (2_000, 2), (2_500, 3), (15_000, 15)] {
            assert_eq!(
                store.granted_ttl(Duration::from_millis(requested)),
                Duration::from_secs(granted),
                "{requested} ms"
            );
        }
    }

    #[test]
    fn opening_redacts_and_needs_no_runtime() {
        let store = EtcdStore::open("etcd://app:hunter2@127.0.0.1:1").unwrap();
        assert_eq!(store.info().location, "etcd://app:****@127.0.0.1:1");
        assert!(!format!("{store:?}").contains("hunter2"));
        let err = EtcdStore::open("etcds://app:hunter2@h?ca=/nonexistent/ca.pem").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/ca.pem") && !msg.contains("hunter2"),
            "{msg}"
        );
    }

    #[test]
    fn a_client_key_rustls_refuses_is_a_configuration_error_when_opening() {
        let dir = std::env::temp_dir().join(format!("baton-etcd-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&cert, "not a certificate\n").unwrap();
        std::fs::write(&key, "not a key\n").unwrap();
        let url = format!(
            "etcds://app:hunter2@127.0.0.1:1?cert={}&key={}",
            cert.display(),
            key.display()
        );
        let result = EtcdStore::open(&url);
        let _ = std::fs::remove_dir_all(&dir);
        let err = result.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(
            msg.contains("TLS with etcd at etcds://app:****@127.0.0.1:1")
                && !msg.contains("hunter2"),
            "{msg}"
        );
    }
}
