//! Kubernetes `Lease` objects (`coordination.k8s.io/v1`), written exactly as client-go's
//! `LeaseLock` writes them, so a Baton candidate and a client-go (or Python `kubernetes`)
//! elector on one Lease exclude each other, and `kubectl get lease NAME -o yaml` shows Baton's
//! leader.
//!
//! # The record
//!
//! The election key is the Lease's name, in the store's namespace. Its `spec` is client-go's
//! `LeaderElectionRecord`:
//!
//! | field | Baton writes |
//! |---|---|
//! | `holderIdentity` | the candidate id; `""` once released |
//! | `leaseDurationSeconds` | the election's lease, rounded **up** to whole seconds (at least 1); `1` once released |
//! | `acquireTime`, `renewTime` | MicroTime, always exactly 6 fractional digits, in UTC |
//! | `leaseTransitions` | `+1` on every acquisition; kept on release |
//!
//! plus two annotations of its own, `baton.dev/fencing-token` (the highest token minted on this
//! Lease) and `baton.dev/fencing-term` (the `acquireTime` of the term that token belongs to).
//! client-go keeps annotations when it updates a Lease, so they survive its terms too.
//!
//! # Every write is conditional
//!
//! Each write is a `PUT` carrying the `resourceVersion` that was read (or a `POST` that fails
//! with 409 AlreadyExists when the Lease exists): the API server refuses it with 409 Conflict
//! if anyone wrote in between, and a 409 means the race was lost. There are no patches without
//! a precondition and no forced takeovers. A release writes what client-go's `ReleaseOnCancel`
//! writes: `holderIdentity: ""`, `leaseDurationSeconds: 1`, both times set to now, transitions
//! kept; it happens only while the Lease still holds this candidate's term.
//!
//! # Expiry without a server clock
//!
//! The API server keeps no lease clock, and client clocks differ. So, as client-go does, a
//! candidate never compares `renewTime` with its own clock. It notes the local (boot-time,
//! monotonic) instant at which it *observed the record change*, and judges the lease expired
//! once `leaseDurationSeconds` have passed since then on its own clock. Observations come from
//! every read and from the watch; one store keeps one observation per Lease, shared by all its
//! candidacies and observers.
//!
//! What that means:
//! * **Clock skew between machines does not matter**: no wall clock is compared with another.
//!   Only clock *rates* matter, and the engine's drift allowance covers those.
//! * **A slow watch or a late read only delays a takeover**: an observation is made after the
//!   write it sees, so it never starts a follower's wait early; a follower that hears of a
//!   renewal late waits longer, never less. A follower that just started waits a full
//!   `leaseDurationSeconds` from its first read, even for a lease that expired long ago (as
//!   client-go's does).
//! * **A renewal the leader sent before its deadline but which reaches the API server after a
//!   follower took over is refused**: the follower's write changed the `resourceVersion`.
//!
//! Safety then rests on the leader's own deadline (DESIGN.md §3: send time plus lease, minus
//! drift and margin) ending before any follower's wait, which starts after the write it
//! observed. `leaseDurationSeconds` is rounded up, never down, for the same reason. A client-go
//! elector on the same Lease uses its own `LeaseDuration`; mixed electors must agree on it (or
//! client-go's must be the shorter), as client-go's own electors must.
//!
//! # Fencing tokens
//!
//! A Lease has no counter that survives its deletion: `leaseTransitions` starts again at 0 when
//! the object is created again, and is a 32-bit number. Baton's token is therefore minted from
//! the API server's `resourceVersion`, which is etcd's global revision: on acquiring, the token
//! is `max(resourceVersion read, highest token on the Lease) + 1`. The write that acquires
//! gets a `resourceVersion` above the one read, so each token is at most its own write's
//! `resourceVersion`, and every later acquisition reads one at least that high: tokens strictly
//! increase across releases, expiries, candidate restarts, client-go terms in between, and the
//! deletion of the Lease (a Lease created anew takes its floor from the `resourceVersion` of a
//! list, which is above the deletion's). Kubernetes 1.35 made resourceVersions comparable as
//! integers (KEP-5504); it has always been etcd's revision. A record whose current term was
//! acquired by another elector (client-go) reports token 0: that holder has no Baton token.
//! `docs/decisions.md` (D56) has the reasoning.
//!
//! # Push
//!
//! Followers watch the Lease (a field selector on its name) from the `resourceVersion` they
//! read, with bookmarks, and list it again when the API server answers 410 Gone. A release
//! reaches them within one watch event; a renewal refreshes their observation, so an idle
//! follower sends nothing but its watch.
//!
//! # Planned handoff: the Lease's preferred holder
//!
//! Kubernetes' coordinated leader election (KEP-4355) asks a holder to yield by setting
//! `spec.preferredHolder`; Baton writes its handoffs and requests the same way. The API server
//! accepts a preferred holder only beside a `spec.strategy`, so Baton writes its own custom
//! strategy, `baton.dev/handoff` (a qualified name: Kubernetes' coordinated-election controller
//! manages only its `OldestEmulationVersion`), and annotations that say the same:
//!
//! | annotation | a mark | a request |
//! |---|---|---|
//! | `baton.dev/handoff-to` | the candidate, `""` for anyone | the candidate, `""` for anyone |
//! | `baton.dev/handoff-from` | the leader that handed over | the holder asked |
//! | `baton.dev/handoff-window-ms` | the window | absent |
//! | `baton.dev/handoff-at` | the `renewTime` the handoff wrote | absent |
//!
//! The annotations decide: an API server without the `CoordinatedLeaderElection` feature gate
//! drops `strategy` and `preferredHolder` and keeps annotations, and a handoff to anyone names
//! no preferred holder (the field cannot say "anyone but").
//!
//! * **hand over** ([`Candidacy::hand_over`]) is the release's PUT (on the `resourceVersion`
//!   of the term; a term that is gone makes it a no-op) that also writes the mark. The mark
//!   runs for its window from when a candidate *saw it appear*, on that candidate's boot clock,
//!   exactly as a lease runs from its observation: no wall clock is compared. A candidate that
//!   first reads the Lease later waits longer, never less. While it runs, an acquire by anyone
//!   it does not admit answers [`Acquire::Reserved`]; the acquire that succeeds writes a new
//!   term without strategy, preferred holder or handoff annotations. A mark belongs to the
//!   freed Lease its handoff wrote (`handoff-at` is its `renewTime`): once any elector writes
//!   the Lease again, what is left of it is ignored.
//! * **request** ([`LeaseStore::request_handoff`]) is one PUT on the held Lease's
//!   `resourceVersion` that sets the preferred holder and the annotations and leaves holder,
//!   times and tokens alone; nothing is written when nobody holds the Lease or `to` does. The
//!   holder's next renewal conflicts (409) with it, reads the Lease again, renews it with the
//!   request kept, and answers [`Renew::HandoffRequested`]; its release or handoff clears it.
//!   A request goes with the holder it names (`handoff-from`): one left for an earlier term is
//!   ignored.
//! * **push**: the watch reports a mark as [`Change::HandedOver`] and a request as
//!   [`Change::HandoffRequested`].
//!
//! A client-go elector on the same Lease ignores Baton's mark (it may take a reserved Lease),
//! as it ignores Baton's tokens; it never overwrites Baton's lease while it runs.
//!
//! `pending_handoff` ([`LeaseStore::pending_handoff`]) reads the same annotations: a request
//! while the holder's lease runs, a mark while its window runs, both by this store's
//! observation.
//!
//! # Presence records
//!
//! A candidate's presence record ([`LeaseStore::announce`]) is a Lease of its own, never the
//! election's (a write there would make the leader's renewal conflict): `<key>-<hash>`, the
//! hash (16 hex digits, FNV-1a of key and candidate) keeping any candidate id a valid name (a
//! key too long for the suffix is cut to fit). It carries the label
//! `baton.dev/election=<key>` (`h<hash of the key>` for a key longer than a label value's 63
//! characters) and the annotations `baton.dev/presence-of: <key>` and `baton.dev/priority`;
//! `holderIdentity` is the candidate, `leaseDurationSeconds` the record's TTL (whole seconds,
//! rounded up, as for the lease), `acquireTime` its first write and `renewTime` its last.
//! `kubectl get leases -l baton.dev/election=KEY` lists them. An announce is one `PUT` on the
//! record as last written (a read and a retry after a conflict; a `POST` the first time) and
//! one list on the label.
//!
//! A record is judged as the lease is: alive for `leaseDurationSeconds` from when this store
//! first saw its `resourceVersion`, on its own boot clock, so clock skew does not matter; a
//! store that reads a record for the first time counts it alive for a whole TTL from then
//! (`baton status` or `baton handoff --to` may take a candidate killed a moment ago for alive;
//! a handoff to it runs out within a lease, D130). One wall-clock check, only to drop records
//! long dead: a record whose `renewTime` is older than its TTL plus 60 s by the reader's clock
//! counts as run out (a candidate killed hours ago, with nobody left to delete its record,
//! would otherwise show alive in every new process); a candidate's clock would have to be a
//! minute behind for its live record to be missed. A stopping candidate deletes its record
//! (`withdraw`, on the `resourceVersion` read); a candidate's announce deletes the records it
//! saw run out (a candidate killed with SIGKILL), on their `resourceVersion`, so a record
//! renewed meanwhile stays. A Lease at a record's name, or with the label, that Baton did not
//! write for this key is [`Error::ForeignData`] and is never written or deleted.
//!
//! Not `LeaseCandidate` (KEP-4355's `coordination.k8s.io/v1beta1` object for exactly this):
//! its API is off unless the cluster enables the `CoordinatedLeaderElection` feature gate and
//! that API version, it has no priority, and its controller elects on the Lease it names.
//!
//! # Foreign data
//!
//! A Lease at the key that is not a leader-election record is left alone and reported as
//! [`Error::ForeignData`]: one without a `spec.holderIdentity`, one whose holder has no positive
//! `leaseDurationSeconds`, one managed by coordinated leader election (a `spec.strategy` other
//! than Baton's, or a `spec.preferredHolder` without Baton's `baton.dev/handoff-to` naming it),
//! or one whose `baton.dev/` annotations are malformed.
//!
//! # URLs
//!
//! | URL | connects to |
//! |---|---|
//! | `kubernetes:` | in a pod: the in-cluster configuration (service account token and CA, `KUBERNETES_SERVICE_HOST`/`PORT`); elsewhere the kubeconfig's current context (`KUBECONFIG` or `~/.kube/config`) |
//! | `kubernetes:?namespace=NS&context=CTX&kubeconfig=PATH` | the same, with that namespace, that kubeconfig context, that kubeconfig file |
//! | `kubernetes+http://HOST:PORT[?namespace=NS]` | a plain-HTTP API server, such as `kubectl proxy` |
//!
//! The namespace defaults to the pod's own (in a cluster), then the context's, then `default`.
//! The client connects on first use, so the store can be built while the API server is down.
//! TLS uses rustls with ring; there is no OpenSSL. The service account needs `get`, `list`,
//! `watch`, `create`, `update`, `patch` and `delete` on `leases` (`deploy/kubernetes/role.yaml`):
//! `list` also reads the presence records, and `delete` is for them only (Baton never deletes
//! the election's Lease). Without `delete` elections work, and records of stopped candidates
//! stay behind (ignored once they run out).
//!
//! # Kubernetes versions
//!
//! The store uses `k8s-openapi`'s `Lease`, the same in every Kubernetes version it supports.
//! Like every library on `k8s-openapi`, Baton leaves the choice of version to the application:
//! an application that enables the `kubernetes` feature also depends on `k8s-openapi` with one
//! `v1_*` feature (e.g. `k8s-openapi = { version = "0.29", features = ["v1_33"] }`).

mod presence;
mod url;

/// kube's client, re-exported so that an application can hand [`KubernetesStore::from_client`]
/// a client of the kube version Baton links.
pub use kube::Client;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease as K8sLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use tokio::sync::{OnceCell, mpsc};
use tracing::debug;

use self::url::{Target, check_name, parse_url};
use super::{
    Acquire, Candidacy, Change, Changes, HandoffMark, Lease, LeaseRecord, LeaseStore,
    PendingHandoff, Presence, Renew, StoreInfo,
};
use crate::clock::boot_time;
use crate::{Error, FencingToken, Result, connect::redact};

/// The store's name in errors and [`StoreInfo`].
const STORE: &str = "kubernetes";
/// The highest fencing token minted on a Lease.
const TOKEN_ANNOTATION: &str = "baton.dev/fencing-token";
/// The `acquireTime` of the term [`TOKEN_ANNOTATION`] belongs to.
const TERM_ANNOTATION: &str = "baton.dev/fencing-term";
/// The custom coordinated-election strategy (KEP-4355: a qualified name with a prefix) Baton
/// writes with `spec.preferredHolder`: the API server accepts a preferred holder only beside a
/// strategy, and Kubernetes' own coordinated-election controller manages only its own
/// strategy (`OldestEmulationVersion`).
const HANDOFF_STRATEGY: &str = "baton.dev/handoff";
/// The candidate a handoff or a request names (`""`: anyone). Authoritative: an API server
/// without the `CoordinatedLeaderElection` feature gate drops `spec.strategy` and
/// `spec.preferredHolder` but keeps annotations.
const HANDOFF_TO_ANNOTATION: &str = "baton.dev/handoff-to";
/// The leader that handed over (a mark), or the holder asked to (a request).
const HANDOFF_FROM_ANNOTATION: &str = "baton.dev/handoff-from";
/// A mark's window, in milliseconds.
const HANDOFF_WINDOW_ANNOTATION: &str = "baton.dev/handoff-window-ms";
/// The `renewTime` the handoff wrote: a mark belongs to that freed Lease only.
const HANDOFF_AT_ANNOTATION: &str = "baton.dev/handoff-at";
/// How long one watch request lasts before it is renewed (the API server closes it then);
/// kube's own default.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// Lost races in a row after which `try_acquire` reports the holder it last read.
const MAX_RACES: usize = 3;

/// Leader election on Kubernetes `Lease` objects, compatible with client-go's `LeaseLock`.
/// See the [module documentation](self).
#[derive(Clone)]
pub struct KubernetesStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the API server is; `None` when built from a client.
    target: Option<Target>,
    location: String,
    api: OnceCell<Api<K8sLease>>,
    /// When each Lease's record was last seen to change, on this machine's boot clock.
    observed: Mutex<HashMap<String, Observed>>,
    /// When each presence Lease was first seen at its resourceVersion.
    presence: Mutex<presence::Seen>,
    /// Each presence Lease this store wrote, as written: the next announce is a PUT on it.
    presence_written: Mutex<HashMap<String, K8sLease>>,
}

impl std::fmt::Debug for KubernetesStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesStore")
            .field("location", &self.inner.location)
            .finish_non_exhaustive()
    }
}

/// client-go's `LeaderElectionRecord`: the part of a Lease an elector compares to tell whether
/// the lease changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    duration_secs: i32,
    acquire: Option<Timestamp>,
    renew: Option<Timestamp>,
    transitions: i32,
    /// Baton's token, when the current term is one a Baton candidate acquired; else 0.
    token: u64,
    /// The highest token minted on this Lease.
    high_water: u64,
    /// Baton's handoff mark (on a freed Lease) or request (beside a held one), if any.
    handoff: Option<Handoff>,
}

/// A planned handoff as the annotations (and `spec.preferredHolder`) of a Lease keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Handoff {
    /// Left by a handoff: only `to` (or, `None`, anyone but `from`) may take the Lease for
    /// `window`, counted from when a candidate saw the mark appear, as a lease's term is.
    Mark {
        to: Option<String>,
        from: String,
        window: Duration,
    },
    /// Left beside the holder's lease by [`LeaseStore::request_handoff`].
    Request { to: Option<String> },
}

/// What a store last saw of a Lease, and since when.
#[derive(Debug, Clone)]
struct Observed {
    /// The record; `None` once the Lease was seen deleted.
    record: Option<Record>,
    /// The `resourceVersion` it was seen at (0: unknown). A read that answers with an older
    /// one is a stale answer and changes nothing.
    rv: u64,
    /// Boot-clock instant at which `record` was first seen, taken after the answer arrived:
    /// never before the write it shows.
    at: Duration,
}

impl KubernetesStore {
    /// Open the store a `kubernetes:` or `kubernetes+http://` URL names (see the [module
    /// documentation](self)). Nothing is read or connected until first use.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a malformed URL, an unknown option or an invalid namespace name.
    pub fn open(url: &str) -> Result<Self> {
        let target = parse_url(url)?;
        Ok(Self::with(Some(target), redact(url), OnceCell::new()))
    }

    /// A store on an existing kube client, whose Leases live in `namespace`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `namespace` is not a valid namespace name.
    pub fn from_client(client: Client, namespace: &str) -> Result<Self> {
        parse_url(&format!("kubernetes:?namespace={namespace}"))?;
        let api = Api::namespaced(client, namespace);
        Ok(Self::with(
            None,
            format!("kubernetes (a kube client), namespace {namespace}"),
            OnceCell::new_with(Some(api)),
        ))
    }

    fn with(target: Option<Target>, location: String, api: OnceCell<Api<K8sLease>>) -> Self {
        KubernetesStore {
            inner: Arc::new(Inner {
                target,
                location,
                api,
                observed: Mutex::new(HashMap::new()),
                presence: Mutex::new(HashMap::new()),
                presence_written: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Inner {
    async fn api(&self) -> Result<Api<K8sLease>> {
        self.api
            .get_or_try_init(|| async {
                let target = self
                    .target
                    .as_ref()
                    .expect("a store built from a client has its Api");
                let (client, namespace) = connect(target, &self.location).await?;
                Ok::<_, Error>(Api::namespaced(client, &namespace))
            })
            .await
            .cloned()
    }

    /// Note that `record` (`None`: no Lease) was seen at resourceVersion `rv`, just now: the
    /// observation as it stands, with the instant its record was first seen. An answer older
    /// than the observation (a read served before a change the watch already reported) leaves
    /// it alone: the observation never goes back to an earlier record.
    fn observe(&self, key: &str, record: Option<&Record>, rv: u64, now: Duration) -> Observed {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = Observed {
            record: record.cloned(),
            rv,
            at: now,
        };
        let entry = observed
            .entry(key.to_owned())
            .or_insert_with(|| fresh.clone());
        let stale = rv != 0 && entry.rv != 0 && rv < entry.rv;
        if !stale {
            if entry.record.as_ref() != record {
                *entry = fresh;
            } else {
                entry.rv = entry.rv.max(rv);
            }
        }
        entry.clone()
    }

    /// Read the Lease at `key`: the object, its record, and the observation.
    async fn get(
        &self,
        api: &Api<K8sLease>,
        key: &str,
    ) -> Result<Option<(K8sLease, Record, Observed)>> {
        let Some(lease) = api.get_opt(key).await.map_err(|e| self.error(e, false))? else {
            return Ok(None);
        };
        // The instant is taken once the answer is here, never before the write it shows.
        let now = boot_time();
        let record = parse_record(key, &lease)?;
        let observed = self.observe(key, Some(&record), rv_of(&lease), now);
        Ok(Some((lease, record, observed)))
    }

    fn error(&self, e: kube::Error, write: bool) -> Error {
        api_error(e, write, &self.location)
    }
}

/// Build a client for `target`: its namespace too.
async fn connect(target: &Target, location: &str) -> Result<(Client, String)> {
    use kube::config::{Config, KubeConfigOptions, Kubeconfig};

    let config_error = |what: String| Error::Config(format!("{location}: {what}"));
    let (mut config, namespace) = match target {
        Target::Http { base, namespace } => {
            let config = Config::new(
                base.parse()
                    .map_err(|e| config_error(format!("{base} is not a valid server URL: {e}")))?,
            );
            (config, namespace.clone())
        }
        Target::Infer {
            namespace,
            context,
            kubeconfig,
        } => {
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            let config = match (kubeconfig, context) {
                (Some(path), _) => {
                    let file = Kubeconfig::read_from(path).map_err(|e| {
                        config_error(format!("cannot read the kubeconfig {path}: {e}"))
                    })?;
                    Config::from_custom_kubeconfig(file, &options)
                        .await
                        .map_err(|e| config_error(format!("the kubeconfig {path}: {e}")))?
                }
                (None, Some(_)) => Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| config_error(format!("the kubeconfig: {e}")))?,
                (None, None) => match Config::incluster() {
                    Ok(config) => config,
                    Err(in_cluster) => Config::from_kubeconfig(&options).await.map_err(|e| {
                        config_error(format!(
                            "no Kubernetes configuration: not in a cluster ({in_cluster}), and no usable kubeconfig ({e}); set KUBECONFIG, pass ?kubeconfig=PATH, or use kubernetes+http://HOST:PORT (e.g. kubectl proxy)"
                        ))
                    })?,
                },
            };
            (config, namespace.clone())
        }
    };
    if let Some(namespace) = namespace {
        config.default_namespace = namespace;
    }
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config)
        .map_err(|e| config_error(format!("cannot build a Kubernetes client: {e}")))?;
    Ok((client, namespace))
}

/// Map a kube error. `write`: the request may have been applied (a PUT or POST was sent).
fn api_error(e: kube::Error, write: bool, location: &str) -> Error {
    match e {
        kube::Error::Api(status) => {
            let message = format!("{location}: {} ({})", status.message, status.code);
            match status.code {
                401 => Error::Config(format!(
                    "{message}: the API server did not accept the credentials; check the kubeconfig's user or the service account's token"
                )),
                403 => Error::Config(format!(
                    "{message}: grant get, list, watch, create, update, patch and delete on leases (coordination.k8s.io) in this namespace, as deploy/kubernetes/role.yaml does"
                )),
                400 | 404 | 422 => Error::Config(message),
                _ if write => Error::indeterminate(STORE, message, status),
                _ => Error::unavailable(STORE, message, status),
            }
        }
        other if write => Error::indeterminate(
            STORE,
            format!("{location}: the request was sent, its outcome is unknown"),
            other,
        ),
        other => Error::unavailable(
            STORE,
            format!("{location}: cannot reach the API server"),
            other,
        ),
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The record of a Lease, or [`Error::ForeignData`] when it is not a leader-election record.
fn parse_record(key: &str, lease: &K8sLease) -> Result<Record> {
    let foreign = |found: String| Error::ForeignData {
        key: key.to_owned(),
        found,
    };
    let spec = lease
        .spec
        .as_ref()
        .ok_or_else(|| foreign("a Lease with no spec".into()))?;
    let annotations = lease.metadata.annotations.as_ref();
    let annotation = |name: &str| annotations.and_then(|a| a.get(name));
    // Baton's handoff: `baton.dev/handoff-to` is what it wrote as the preferred holder ("" for
    // anyone); strategy and preferredHolder, when the server keeps them, must agree with it.
    let handoff_to = annotation(HANDOFF_TO_ANNOTATION);
    let preferred = spec.preferred_holder.as_deref().filter(|p| !p.is_empty());
    let batons = match (spec.strategy.as_deref(), preferred) {
        (None, None) => true,
        (Some(HANDOFF_STRATEGY), _) => {
            handoff_to.is_some_and(|to| preferred.is_none_or(|p| p == to))
        }
        _ => false,
    };
    if !batons {
        return Err(foreign(
            "a Lease managed by coordinated leader election (spec.strategy or spec.preferredHolder set by another than Baton)".into(),
        ));
    }
    let holder = spec
        .holder_identity
        .clone()
        .ok_or_else(|| foreign("a Lease with no spec.holderIdentity".into()))?;
    let duration_secs = spec.lease_duration_seconds.unwrap_or(0);
    if !holder.is_empty() && duration_secs <= 0 {
        return Err(foreign(format!(
            "a Lease held by {holder:?} with no positive spec.leaseDurationSeconds"
        )));
    }
    let handoff = parse_handoff(&holder, spec, &annotation).map_err(foreign)?;
    let high_water = match annotation(TOKEN_ANNOTATION) {
        None => 0,
        // Digits only, as Baton writes it (Rust's parser also takes a leading `+`), and below
        // u64::MAX, which would leave no token to follow it.
        Some(text) => digits(text)
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t < u64::MAX)
            .ok_or_else(|| {
                foreign(format!(
                    "the annotation {TOKEN_ANNOTATION}: {text:?} is not a fencing token"
                ))
            })?,
    };
    let term = match annotation(TERM_ANNOTATION) {
        None => None,
        Some(text) => Some(text.parse::<Timestamp>().map_err(|_| {
            foreign(format!(
                "the annotation {TERM_ANNOTATION}: {text:?} is not a MicroTime"
            ))
        })?),
    };
    let acquire = spec.acquire_time.as_ref().map(|t| t.0);
    let token = if !holder.is_empty() && term.is_some() && term == acquire {
        high_water
    } else {
        0
    };
    Ok(Record {
        holder,
        duration_secs,
        acquire,
        renew: spec.renew_time.as_ref().map(|t| t.0),
        transitions: spec.lease_transitions.unwrap_or(0),
        token,
        high_water,
        handoff,
    })
}

/// Baton's handoff annotations on a Lease held by `holder`: a mark, a request, or nothing
/// (none written, or left over from a term that has ended). `Err` names what is malformed.
fn parse_handoff<'a>(
    holder: &str,
    spec: &LeaseSpec,
    annotation: &impl Fn(&str) -> Option<&'a String>,
) -> std::result::Result<Option<Handoff>, String> {
    let (to, from) = match (
        annotation(HANDOFF_TO_ANNOTATION),
        annotation(HANDOFF_FROM_ANNOTATION),
    ) {
        // A mark's window and time come only with its candidate and leaver.
        (None, None)
            if annotation(HANDOFF_WINDOW_ANNOTATION).is_none()
                && annotation(HANDOFF_AT_ANNOTATION).is_none() =>
        {
            return Ok(None);
        }
        (Some(to), Some(from)) if !from.is_empty() => {
            ((!to.is_empty()).then(|| to.clone()), from.clone())
        }
        _ => {
            return Err(format!(
                "the annotations {HANDOFF_TO_ANNOTATION} and {HANDOFF_FROM_ANNOTATION} do not \
                 go together"
            ));
        }
    };
    let window = match annotation(HANDOFF_WINDOW_ANNOTATION) {
        None => None,
        Some(text) => Some(Duration::from_millis(
            digits(text)
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| {
                    format!("the annotation {HANDOFF_WINDOW_ANNOTATION}: {text:?} is not a number")
                })?,
        )),
    };
    let at = match annotation(HANDOFF_AT_ANNOTATION) {
        None => None,
        Some(text) => Some(text.parse::<Timestamp>().map_err(|_| {
            format!("the annotation {HANDOFF_AT_ANNOTATION}: {text:?} is not a MicroTime")
        })?),
    };
    let renew = spec.renew_time.as_ref().map(|t| t.0);
    Ok(match window {
        // A mark lives on the freed Lease its handoff wrote (same renewTime): another
        // elector's later release leaves the annotations behind, but not a mark.
        Some(window) if holder.is_empty() && at.is_some() && at == renew => {
            Some(Handoff::Mark { to, from, window })
        }
        // A request goes with the term of the holder it was left for.
        None if !holder.is_empty() && from == holder => Some(Handoff::Request { to }),
        _ => None,
    })
}

/// `text` if it is digits only, as Baton writes numbers.
fn digits(text: &str) -> Option<&str> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

/// The `resourceVersion` of an object or list, as the number it is (etcd's revision).
fn resource_version(key: &str, rv: Option<&String>) -> Result<u64> {
    rv.and_then(|rv| rv.parse().ok()).ok_or_else(|| {
        Error::unavailable(
            STORE,
            format!("the API server gave {key:?} a resourceVersion that is not a number: {rv:?}"),
            "unexpected resourceVersion",
        )
    })
}

/// The election's lease in whole seconds, rounded up, at least 1: the store never frees a
/// lease before the engine's deadline.
fn duration_secs(ttl: Duration) -> i32 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// Now, on the wall clock, at the microsecond precision a MicroTime keeps. Written into the
/// record for people and for other electors' logs; no elector compares it with its clock.
fn now_micro() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now)
}

/// The remaining time of an observed lease; zero when it has expired, is released or gone.
fn remaining(observed: &Observed, now: Duration) -> Duration {
    match &observed.record {
        Some(record) if !record.holder.is_empty() => {
            let duration = Duration::from_secs(record.duration_secs.max(0).unsigned_abs().into());
            (observed.at + duration).saturating_sub(now)
        }
        _ => Duration::ZERO,
    }
}

/// The holder's record, while the observed lease runs.
fn lease_record(observed: &Observed, now: Duration) -> Option<LeaseRecord> {
    let left = remaining(observed, now);
    let record = observed.record.as_ref()?;
    (!left.is_zero())
        .then(|| LeaseRecord::new(record.holder.clone(), FencingToken(record.token), left))
}

/// An object's `resourceVersion` as a number; 0 when it has none or it is not a number.
fn rv_of(lease: &K8sLease) -> u64 {
    lease
        .metadata
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// Write `spec` and Baton's annotations into `lease`, keeping everything else.
fn set_term(lease: &mut K8sLease, spec: LeaseSpec, token: u64, term: Option<Timestamp>) {
    let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(TOKEN_ANNOTATION.into(), token.to_string());
    if let Some(term) = term {
        annotations.insert(TERM_ANNOTATION.into(), format_micro(term));
    }
    // A new term, a release or a handoff ends any handoff mark or request (a handoff writes
    // its own mark after this).
    for name in [
        HANDOFF_TO_ANNOTATION,
        HANDOFF_FROM_ANNOTATION,
        HANDOFF_WINDOW_ANNOTATION,
        HANDOFF_AT_ANNOTATION,
    ] {
        annotations.remove(name);
    }
    lease.spec = Some(spec);
}

/// Write a handoff's annotations into `lease` (a mark when `mark` gives its window and the
/// renewTime written with it; else a request), and the preferred holder beside Baton's strategy
/// (a handoff to anyone names none: `preferredHolder` cannot say "anyone but").
fn set_handoff(
    lease: &mut K8sLease,
    to: Option<&str>,
    from: &str,
    mark: Option<(Duration, Timestamp)>,
) {
    let annotations = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(HANDOFF_TO_ANNOTATION.into(), to.unwrap_or("").to_owned());
    annotations.insert(HANDOFF_FROM_ANNOTATION.into(), from.to_owned());
    match mark {
        Some((window, at)) => {
            annotations.insert(
                HANDOFF_WINDOW_ANNOTATION.into(),
                window.as_millis().to_string(),
            );
            annotations.insert(HANDOFF_AT_ANNOTATION.into(), format_micro(at));
        }
        None => {
            annotations.remove(HANDOFF_WINDOW_ANNOTATION);
            annotations.remove(HANDOFF_AT_ANNOTATION);
        }
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.strategy = to.map(|_| HANDOFF_STRATEGY.to_owned());
        spec.preferred_holder = to.map(str::to_owned);
    }
}

/// The observed Lease's handoff mark while it runs: `window` from when this store first saw it,
/// as a lease runs from when its record was seen to change.
fn live_mark(observed: &Observed, now: Duration) -> Option<HandoffMark> {
    let record = observed.record.as_ref()?;
    let Some(Handoff::Mark { to, from, window }) = &record.handoff else {
        return None;
    };
    let left = (observed.at + *window).saturating_sub(now);
    (!left.is_zero()).then(|| HandoffMark::new(to.clone(), from.clone(), left))
}

/// A MicroTime as the API server writes it: UTC, exactly 6 fractional digits.
fn format_micro(t: Timestamp) -> String {
    k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", t)
        .unwrap_or_else(|_| t.to_string())
}

fn spec(
    holder: &str,
    duration_secs: i32,
    acquire: Timestamp,
    renew: Timestamp,
    transitions: i32,
) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(holder.to_owned()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: Some(MicroTime(acquire)),
        renew_time: Some(MicroTime(renew)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

#[async_trait]
impl LeaseStore for KubernetesStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        check_name(key)?;
        Ok(Box::new(KubernetesCandidacy {
            inner: self.inner.clone(),
            key: key.to_owned(),
            candidate: candidate.to_owned(),
            written: None,
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<LeaseRecord>> {
        check_name(key)?;
        let api = self.inner.api().await?;
        Ok(match self.inner.get(&api, key).await? {
            Some((_, _, observed)) => lease_record(&observed, boot_time()),
            None => None,
        })
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        check_name(key)?;
        Ok(Some(
            watch_changes(self.inner.clone(), key.to_owned()).await?,
        ))
    }

    /// The request is the holder's `spec.preferredHolder` (KEP-4355's signal to a holder),
    /// beside Baton's strategy and annotations, written with one PUT on the resourceVersion
    /// read; holder and times stay as they are.
    async fn request_handoff(&self, key: &str, to: Option<&str>) -> Result<Option<LeaseRecord>> {
        check_name(key)?;
        let api = self.inner.api().await?;
        for _ in 0..MAX_RACES {
            let Some((mut object, record, observed)) = self.inner.get(&api, key).await? else {
                return Ok(None);
            };
            let Some(held) = lease_record(&observed, boot_time()) else {
                return Ok(None);
            };
            let asked = Handoff::Request {
                to: to.map(str::to_owned),
            };
            if to == Some(record.holder.as_str()) || record.handoff.as_ref() == Some(&asked) {
                return Ok(Some(held));
            }
            set_handoff(&mut object, to, &record.holder, None);
            match api.replace(key, &PostParams::default(), &object).await {
                Ok(written) => {
                    let record = parse_record(key, &written)?;
                    self.inner
                        .observe(key, Some(&record), rv_of(&written), boot_time());
                    return Ok(Some(held));
                }
                Err(e) if is_code(&e, 409) || is_code(&e, 404) => {
                    debug!(key, "lost a race to leave a handoff request");
                }
                Err(e) => return Err(self.inner.error(e, true)),
            }
        }
        Err(Error::unavailable(
            STORE,
            format!("{key}: the Lease keeps changing"),
            "lost races",
        ))
    }

    /// The Lease's `baton.dev/handoff-*` annotations: a request beside a lease that still
    /// runs (by this store's observation), or a mark on the freed Lease while its window runs.
    async fn pending_handoff(&self, key: &str) -> Result<Option<PendingHandoff>> {
        check_name(key)?;
        let api = self.inner.api().await?;
        let Some((_, record, observed)) = self.inner.get(&api, key).await? else {
            return Ok(None);
        };
        let now = boot_time();
        Ok(match &record.handoff {
            Some(Handoff::Request { to }) if lease_record(&observed, now).is_some() => {
                Some(PendingHandoff::Requested {
                    holder: record.holder.clone(),
                    to: to.clone(),
                })
            }
            Some(Handoff::Mark { .. }) => live_mark(&observed, now).map(PendingHandoff::Reserved),
            _ => None,
        })
    }

    /// A Lease per candidate, `<key>-<hash>`, labelled `baton.dev/election=<key>` (see the
    /// module documentation, "Presence records").
    async fn announce(
        &self,
        key: &str,
        candidate: &str,
        priority: u32,
        ttl: Duration,
    ) -> Result<Option<Vec<Presence>>> {
        check_name(key)?;
        self.inner
            .announce(key, candidate, priority, ttl)
            .await
            .map(Some)
    }

    async fn candidates(&self, key: &str) -> Result<Option<Vec<Presence>>> {
        check_name(key)?;
        self.inner.candidates(key).await.map(Some)
    }

    async fn withdraw(&self, key: &str, candidate: &str) -> Result<()> {
        check_name(key)?;
        self.inner.withdraw(key, candidate).await
    }

    fn info(&self) -> StoreInfo {
        StoreInfo::new(STORE, self.inner.location.clone()).with_watch(true)
    }

    /// `leaseDurationSeconds`: whole seconds, rounded up, at least 1. A follower takes over
    /// that long after it last saw the record change.
    fn granted_ttl(&self, requested: Duration) -> Duration {
        Duration::from_secs(duration_secs(requested).unsigned_abs().into())
    }
}

/// One candidate on one Lease.
struct KubernetesCandidacy {
    inner: Arc<Inner>,
    key: String,
    candidate: String,
    /// The Lease as this candidacy last wrote it, while it holds the term: renewals are sent on
    /// it directly (client-go's fast path), and read the Lease again only after a conflict.
    written: Option<K8sLease>,
}

impl std::fmt::Debug for KubernetesCandidacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesCandidacy")
            .field("key", &self.key)
            .field("candidate", &self.candidate)
            .finish_non_exhaustive()
    }
}

impl KubernetesCandidacy {
    /// Whether the record is the term `lease` acquired.
    fn is_term(record: &Record, lease: &Lease) -> bool {
        record.holder == lease.holder && record.token == lease.token.0 && record.token != 0
    }

    /// The Lease to write the next renewal or release on: the last one written, or, after a
    /// conflict, a fresh read, if it still holds `lease`'s term. `Err(record)` when it does not.
    async fn current(
        &mut self,
        api: &Api<K8sLease>,
        lease: &Lease,
        fresh: bool,
    ) -> Result<std::result::Result<K8sLease, Option<LeaseRecord>>> {
        // The fast path, only for the term that wrote it: a stale lease of an earlier term
        // of this candidacy must read the Lease, and find itself gone.
        if !fresh
            && let Some(written) = &self.written
            && parse_record(&self.key, written).is_ok_and(|r| Self::is_term(&r, lease))
        {
            return Ok(Ok(written.clone()));
        }
        match self.inner.get(api, &self.key).await? {
            Some((object, record, _)) if Self::is_term(&record, lease) => Ok(Ok(object)),
            Some((_, _, observed)) => Ok(Err(lease_record(&observed, boot_time()))),
            None => Ok(Err(None)),
        }
    }

    /// Write `edit` of the Lease while it holds `lease`'s term: the written object, or the
    /// current record (if any) when the term is gone. A conflict reads the Lease again and
    /// retries; a write whose outcome is unknown forgets the cached object, so the next write
    /// reads first. Renewals and releases both go through here.
    async fn write_term(
        &mut self,
        lease: &Lease,
        edit: impl Fn(&mut K8sLease) + Send + Sync,
    ) -> Result<std::result::Result<K8sLease, Option<LeaseRecord>>> {
        let api = self.inner.api().await?;
        let mut fresh = false;
        for _ in 0..MAX_RACES {
            let mut object = match self.current(&api, lease, fresh).await? {
                Ok(object) => object,
                Err(record) => {
                    self.written = None;
                    return Ok(Err(record));
                }
            };
            edit(&mut object);
            match api
                .replace(&self.key, &PostParams::default(), &object)
                .await
            {
                Ok(written) => return Ok(Ok(written)),
                Err(e) if is_code(&e, 409) || is_code(&e, 404) => fresh = true,
                Err(e) => {
                    self.written = None;
                    return Err(self.inner.error(e, true));
                }
            }
        }
        Err(Error::unavailable(
            STORE,
            format!("{}: the Lease keeps changing", self.key),
            "lost races",
        ))
    }

    fn wrote(&mut self, lease: K8sLease) -> Result<()> {
        let record = parse_record(&self.key, &lease)?;
        self.inner
            .observe(&self.key, Some(&record), rv_of(&lease), boot_time());
        self.written = Some(lease);
        Ok(())
    }
}

#[async_trait]
impl Candidacy for KubernetesCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        let api = self.inner.api().await?;
        let key = self.key.clone();
        let mut last = None;
        for _ in 0..MAX_RACES {
            let (mut object, token, transitions) = match self.inner.get(&api, &key).await? {
                Some((object, record, observed)) => {
                    let now = boot_time();
                    if let Some(held) = lease_record(&observed, now) {
                        return Ok(Acquire::Held(held));
                    }
                    if let Some(mark) = live_mark(&observed, now)
                        && !mark.admits(&self.candidate)
                    {
                        return Ok(Acquire::Reserved(mark));
                    }
                    // Free, or expired by this store's observation: take it over the object as
                    // read (a stale read fails on its resourceVersion, and is read again).
                    let read = resource_version(&key, object.metadata.resource_version.as_ref())?;
                    let token = read.max(record.high_water) + 1;
                    last = Some(observed);
                    (object, token, record.transitions.saturating_add(1))
                }
                None => {
                    // No Lease: create it. Its token's floor is the resourceVersion of a list,
                    // above that of any write before, the deletion of an earlier Lease included.
                    let list = api
                        .list(
                            &ListParams::default()
                                .fields(&format!("metadata.name={key}"))
                                .limit(1),
                        )
                        .await
                        .map_err(|e| self.inner.error(e, false))?;
                    if !list.items.is_empty() {
                        continue;
                    }
                    let read = resource_version(&key, list.metadata.resource_version.as_ref())?;
                    let object = K8sLease {
                        metadata: ObjectMeta {
                            name: Some(key.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: None,
                    };
                    (object, read + 1, 0)
                }
            };
            let acquired = now_micro();
            let creating = object.metadata.resource_version.is_none();
            set_term(
                &mut object,
                spec(
                    &self.candidate,
                    duration_secs(ttl),
                    acquired,
                    acquired,
                    transitions,
                ),
                token,
                Some(acquired),
            );
            let written = if creating {
                api.create(&PostParams::default(), &object).await
            } else {
                api.replace(&key, &PostParams::default(), &object).await
            };
            match written {
                Ok(written) => {
                    self.wrote(written)?;
                    return Ok(Acquire::Acquired(Lease::new(
                        key,
                        self.candidate.clone(),
                        FencingToken(token),
                    )));
                }
                // A create that finds no namespace: retrying cannot help.
                Err(e) if creating && is_code(&e, 404) => {
                    return Err(Error::Config(format!(
                        "{}: cannot create the Lease {key:?}: {}; create the namespace, or choose another with ?namespace=",
                        self.inner.location,
                        match &e {
                            kube::Error::Api(status) => status.message.clone(),
                            other => other.to_string(),
                        }
                    )));
                }
                // Lost the race (409), or the Lease went meanwhile (404): look again.
                Err(e) if is_code(&e, 409) || is_code(&e, 404) => {
                    debug!(key, "lost a race to write the Lease");
                    continue;
                }
                Err(e) => return Err(self.inner.error(e, true)),
            }
        }
        // Lost every race: someone else is writing; report the holder last read, as held
        // for a whole lease from now (it just changed).
        let observed = last.ok_or_else(|| {
            Error::unavailable(
                STORE,
                format!("{key}: the Lease keeps changing"),
                "lost races",
            )
        })?;
        let holder = observed.record.map(|r| r.holder).unwrap_or_default();
        Ok(Acquire::Held(LeaseRecord::new(
            holder,
            FencingToken(0),
            ttl,
        )))
    }

    async fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<Renew> {
        let written = self
            .write_term(lease, |object| {
                if let Some(spec) = object.spec.as_mut() {
                    spec.renew_time = Some(MicroTime(now_micro()));
                    spec.lease_duration_seconds = Some(duration_secs(ttl));
                }
            })
            .await?;
        match written {
            Ok(written) => {
                // The PUT keeps a request another process left (it conflicted, so the Lease
                // was read again): the renewal reports it.
                let request = match parse_record(&self.key, &written)?.handoff {
                    Some(Handoff::Request { to }) => Some(to),
                    _ => None,
                };
                self.wrote(written)?;
                Ok(match request {
                    Some(to) => Renew::HandoffRequested { to },
                    None => Renew::Renewed,
                })
            }
            Err(record) => Ok(Renew::Lost(record)),
        }
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        let written = self
            .write_term(lease, |object| {
                let transitions = object
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0);
                let now = now_micro();
                // client-go's ReleaseOnCancel: no holder, a 1 s lease, transitions kept.
                set_term(
                    object,
                    spec("", 1, now, now, transitions),
                    lease.token.0,
                    None,
                );
            })
            .await?;
        if let Ok(written) = written {
            let record = parse_record(&self.key, &written)?;
            self.inner
                .observe(&self.key, Some(&record), rv_of(&written), boot_time());
            self.written = None;
        }
        Ok(())
    }

    async fn hand_over(&mut self, lease: &Lease, to: Option<&str>, window: Duration) -> Result<()> {
        let from = self.candidate.clone();
        let written = self
            .write_term(lease, |object| {
                let transitions = object
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0);
                let now = now_micro();
                // The release, as client-go writes it, and the mark on the freed Lease.
                set_term(
                    object,
                    spec("", 1, now, now, transitions),
                    lease.token.0,
                    None,
                );
                set_handoff(object, to, &from, Some((window, now)));
            })
            .await?;
        if let Ok(written) = written {
            let record = parse_record(&self.key, &written)?;
            self.inner
                .observe(&self.key, Some(&record), rv_of(&written), boot_time());
            self.written = None;
        }
        Ok(())
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        Ok(Some(
            watch_changes(self.inner.clone(), self.key.clone()).await?,
        ))
    }
}

/// The watch requests of a Lease: its name, with bookmarks, for [`WATCH_TIMEOUT_SECS`].
fn watch_params(key: &str) -> WatchParams {
    WatchParams::default()
        .fields(&format!("metadata.name={key}"))
        .timeout(WATCH_TIMEOUT_SECS)
}

/// A watch's events.
type WatchStream = futures_util::stream::BoxStream<'static, kube::Result<WatchEvent<K8sLease>>>;

/// Changes to the Lease at `key`. Before this returns, the Lease is listed and the watch is
/// open from the list's `resourceVersion`, so no change after the call is missed and a watch
/// the API server refuses (no `watch` permission: a configuration error) is an error here,
/// not a stream that ends at once. A task of its own then keeps the watch: renewed when the
/// API server ends it, listed again after 410 Gone, with bookmarks. The stream ends on any
/// other error (the engine subscribes again).
async fn watch_changes(inner: Arc<Inner>, key: String) -> Result<Changes> {
    let api = inner.api().await?;
    let (record, rv) = list(&inner, &api, &key).await?;
    let stream = api
        .watch(&watch_params(&key), &rv)
        .await
        .map_err(|e| inner.error(e, false))?
        .boxed();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        tokio::select! {
            () = tx.closed() => {}
            () = run_watch(&inner, &api, &key, record, rv, stream, &tx) => {}
        }
    });
    Ok(Box::pin(futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|change| (change, rx)) },
    )))
}

/// List the Lease: its record, observed, and the list's resourceVersion to watch from.
async fn list(inner: &Inner, api: &Api<K8sLease>, key: &str) -> Result<(Option<Record>, String)> {
    let list = api
        .list(&ListParams::default().fields(&format!("metadata.name={key}")))
        .await
        .map_err(|e| inner.error(e, false))?;
    let now = boot_time();
    let record = match list.items.first() {
        Some(lease) => Some(parse_record(key, lease)?),
        None => None,
    };
    let rv = list.metadata.resource_version.unwrap_or_default();
    let at = match list.items.first() {
        Some(lease) => rv_of(lease),
        None => rv.parse().unwrap_or(0),
    };
    inner.observe(key, record.as_ref(), at, now);
    Ok((record, rv))
}

/// What a watch event says to a follower, given the record this watch saw before it.
fn classify(seen: Option<&Record>, record: &Record) -> Option<Change> {
    if seen == Some(record) {
        return None;
    }
    let handoff = |r: Option<&Record>| r.and_then(|r| r.handoff.clone());
    let fresh = record
        .handoff
        .as_ref()
        .filter(|h| handoff(seen) != Some((*h).clone()));
    Some(if record.holder.is_empty() {
        match fresh {
            Some(Handoff::Mark { to, .. }) => Change::HandedOver { to: to.clone() },
            _ => Change::Released,
        }
    } else if let Some(Handoff::Request { to }) = fresh
        && seen.is_some_and(|s| s.holder == record.holder)
    {
        Change::HandoffRequested { to: to.clone() }
    } else if seen.map(|s| s.holder.as_str()) != Some(record.holder.as_str()) {
        Change::Acquired {
            holder: record.holder.clone(),
        }
    } else {
        Change::Renewed {
            holder: record.holder.clone(),
        }
    })
}

async fn run_watch(
    inner: &Inner,
    api: &Api<K8sLease>,
    key: &str,
    record: Option<Record>,
    mut rv: String,
    first: WatchStream,
    tx: &mpsc::Sender<Change>,
) {
    // The record as this watch last saw it: only its changes are told (other watches and the
    // reads of the store update the shared observation on their own).
    let mut seen = record;
    let mut stream = Some(first);
    loop {
        let mut events = match stream.take() {
            Some(events) => events,
            None => match api.watch(&watch_params(key), &rv).await {
                Ok(events) => events.boxed(),
                Err(e) => {
                    debug!(key, error = %e, "watch failed");
                    return;
                }
            },
        };
        while let Some(event) = events.next().await {
            let change = match event {
                Ok(WatchEvent::Added(lease) | WatchEvent::Modified(lease)) => {
                    if let Some(v) = &lease.metadata.resource_version {
                        rv.clone_from(v);
                    }
                    let Ok(record) = parse_record(key, &lease) else {
                        seen = None;
                        let _ = tx.send(Change::Other).await;
                        continue;
                    };
                    inner.observe(key, Some(&record), rv_of(&lease), boot_time());
                    let change = classify(seen.as_ref(), &record);
                    seen = Some(record);
                    match change {
                        Some(change) => change,
                        None => continue,
                    }
                }
                Ok(WatchEvent::Deleted(lease)) => {
                    if let Some(v) = &lease.metadata.resource_version {
                        rv.clone_from(v);
                    }
                    inner.observe(key, None, rv_of(&lease), boot_time());
                    seen = None;
                    Change::Released
                }
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    rv = bookmark.metadata.resource_version;
                    continue;
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => {
                    // Too old: list again, and tell the follower to look.
                    debug!(key, "watch expired (410 Gone); listing again");
                    let Ok((record, fresh)) = list(inner, api, key).await else {
                        return;
                    };
                    rv = fresh;
                    seen = record;
                    if tx.send(Change::Other).await.is_err() {
                        return;
                    }
                    break;
                }
                Ok(WatchEvent::Error(status)) => {
                    debug!(key, status = %status, "watch error");
                    return;
                }
                Err(e) => {
                    debug!(key, error = %e, "watch broke");
                    return;
                }
            };
            if tx.send(change).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_granted_ttl_is_the_rounded_lease() {
        let store = KubernetesStore::open("kubernetes:").unwrap();
        assert_eq!(
            store.granted_ttl(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            store.granted_ttl(Duration::from_millis(200)),
            Duration::from_secs(1)
        );
        assert_eq!(
            store.granted_ttl(Duration::from_secs(15)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(duration_secs(Duration::from_millis(1)), 1);
        assert_eq!(duration_secs(Duration::from_millis(500)), 1);
        assert_eq!(duration_secs(Duration::from_secs(1)), 1);
        assert_eq!(duration_secs(Duration::from_millis(2001)), 3);
        assert_eq!(duration_secs(Duration::from_secs(15)), 15);
        assert_eq!(duration_secs(Duration::from_secs(u64::MAX)), i32::MAX);
    }

    #[test]
    fn micro_times_have_exactly_six_digits() {
        let whole: Timestamp = "2026-12-06T15:00:00Z".parse().unwrap();
        assert_eq!(format_micro(whole), "2026-12-06T15:00:00.000000Z");
        let json = serde_json::to_string(&MicroTime(whole)).unwrap();
        assert_eq!(json, "\"2026-12-06T15:00:00.000000Z\"");
        let fine: Timestamp = "2026-12-06T15:00:00.123456789Z".parse().unwrap();
        assert_eq!(format_micro(fine), "2026-12-06T15:00:00.123456Z");
        let now = now_micro();
        assert_eq!(now.subsec_nanosecond() % 1000, 0);
    }

    fn lease(spec: LeaseSpec, annotations: &[(&str, &str)]) -> K8sLease {
        K8sLease {
            metadata: ObjectMeta {
                name: Some("k".into()),
                resource_version: Some("7".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        }
    }

    #[test]
    fn records_and_their_tokens() {
        let t: Timestamp = "2026-12-06T15:00:00.5Z".parse().unwrap();
        let held = spec("a", 15, t, t, 3);
        let record = parse_record(
            "k",
            &lease(
                held.clone(),
                &[
                    (TOKEN_ANNOTATION, "42"),
                    (TERM_ANNOTATION, &format_micro(t)),
                ],
            ),
        )
        .unwrap();
        assert_eq!(
            (record.token, record.high_water, record.transitions),
            (42, 42, 3)
        );
        // A term Baton did not mint (client-go took the Lease): token 0, high water kept.
        let later: Timestamp = "2026-12-06T15:01:00Z".parse().unwrap();
        let record = parse_record(
            "k",
            &lease(
                spec("go", 15, later, later, 4),
                &[
                    (TOKEN_ANNOTATION, "42"),
                    (TERM_ANNOTATION, &format_micro(t)),
                ],
            ),
        )
        .unwrap();
        assert_eq!((record.token, record.high_water), (0, 42));
        // Released: no holder, no token.
        let record = parse_record("k", &lease(spec("", 1, t, t, 3), &[])).unwrap();
        assert_eq!((record.holder.as_str(), record.token), ("", 0));
    }

    #[test]
    fn leases_that_are_not_election_records_are_foreign() {
        let t: Timestamp = "2026-12-06T15:00:00Z".parse().unwrap();
        let cases = [
            (
                K8sLease {
                    metadata: ObjectMeta::default(),
                    spec: None,
                },
                "no spec",
            ),
            (lease(LeaseSpec::default(), &[]), "no spec.holderIdentity"),
            (
                lease(
                    LeaseSpec {
                        holder_identity: Some("node-1".into()),
                        ..LeaseSpec::default()
                    },
                    &[],
                ),
                "positive spec.leaseDurationSeconds",
            ),
            (
                lease(
                    LeaseSpec {
                        strategy: Some("OldestEmulationVersion".into()),
                        ..spec("a", 15, t, t, 0)
                    },
                    &[],
                ),
                "coordinated leader election",
            ),
            (
                // A coordinated-election controller's preferred holder, even beside Baton's
                // annotations.
                lease(
                    LeaseSpec {
                        strategy: Some("OldestEmulationVersion".into()),
                        preferred_holder: Some("b".into()),
                        ..spec("a", 15, t, t, 0)
                    },
                    &[(HANDOFF_TO_ANNOTATION, "b"), (HANDOFF_FROM_ANNOTATION, "a")],
                ),
                "coordinated leader election",
            ),
            (
                // Baton's strategy, but a preferred holder Baton did not write.
                lease(
                    LeaseSpec {
                        strategy: Some(HANDOFF_STRATEGY.into()),
                        preferred_holder: Some("b".into()),
                        ..spec("a", 15, t, t, 0)
                    },
                    &[],
                ),
                "coordinated leader election",
            ),
            (
                lease(
                    LeaseSpec {
                        strategy: Some(HANDOFF_STRATEGY.into()),
                        preferred_holder: Some("b".into()),
                        ..spec("a", 15, t, t, 0)
                    },
                    &[(HANDOFF_TO_ANNOTATION, "c"), (HANDOFF_FROM_ANNOTATION, "a")],
                ),
                "coordinated leader election",
            ),
            (
                lease(spec("a", 15, t, t, 0), &[(HANDOFF_TO_ANNOTATION, "c")]),
                "do not go together",
            ),
            (
                lease(
                    spec("", 1, t, t, 0),
                    &[
                        (HANDOFF_TO_ANNOTATION, "c"),
                        (HANDOFF_FROM_ANNOTATION, "a"),
                        (HANDOFF_WINDOW_ANNOTATION, "soon"),
                    ],
                ),
                "is not a number",
            ),
            (
                lease(spec("a", 15, t, t, 0), &[(TOKEN_ANNOTATION, "x")]),
                "not a fencing token",
            ),
            (
                lease(spec("a", 15, t, t, 0), &[(TERM_ANNOTATION, "noon")]),
                "not a MicroTime",
            ),
        ];
        for (lease, why) in cases {
            match parse_record("k", &lease) {
                Err(Error::ForeignData { found, .. }) => assert!(found.contains(why), "{found}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn handoff_marks_and_requests() {
        let t: Timestamp = "2026-12-06T15:00:00.5Z".parse().unwrap();
        let later: Timestamp = "2026-12-06T15:00:09Z".parse().unwrap();
        let marked = |renew: Timestamp, strategy: bool| {
            let mut object = lease(spec("", 1, t, renew, 3), &[]);
            set_handoff(&mut object, Some("carol"), "alice", Some((secs(15), t)));
            if !strategy {
                // An API server without the CoordinatedLeaderElection gate drops both fields.
                let spec = object.spec.as_mut().unwrap();
                (spec.strategy, spec.preferred_holder) = (None, None);
            }
            parse_record("k", &object).unwrap().handoff
        };
        let mark = Some(Handoff::Mark {
            to: Some("carol".into()),
            from: "alice".into(),
            window: secs(15),
        });
        assert_eq!(marked(t, true), mark);
        assert_eq!(marked(t, false), mark);
        // Another elector released the Lease since: what is left is no mark.
        assert_eq!(marked(later, true), None);

        let mut object = lease(spec("alice", 15, t, t, 3), &[(TOKEN_ANNOTATION, "9")]);
        set_handoff(&mut object, None, "alice", None);
        assert_eq!(object.spec.as_ref().unwrap().preferred_holder, None);
        let record = parse_record("k", &object).unwrap();
        assert_eq!(record.handoff, Some(Handoff::Request { to: None }));
        set_handoff(&mut object, Some("bob"), "alice", None);
        let spec_written = object.spec.clone().unwrap();
        assert_eq!(
            (
                spec_written.strategy.as_deref(),
                spec_written.preferred_holder.as_deref()
            ),
            (Some(HANDOFF_STRATEGY), Some("bob"))
        );
        let record = parse_record("k", &object).unwrap();
        assert_eq!(
            record.handoff,
            Some(Handoff::Request {
                to: Some("bob".into())
            })
        );
        // A request left for an earlier holder is not this holder's.
        object.spec.as_mut().unwrap().holder_identity = Some("go".into());
        assert_eq!(parse_record("k", &object).unwrap().handoff, None);
        // A new term clears it all.
        set_term(
            &mut object,
            spec("dave", 15, later, later, 4),
            10,
            Some(later),
        );
        let annotations = object.metadata.annotations.as_ref().unwrap();
        assert!(
            annotations
                .keys()
                .all(|k| !k.starts_with("baton.dev/handoff"))
        );
        assert_eq!(object.spec.as_ref().unwrap().strategy, None);
    }

    #[test]
    fn observations_start_when_the_record_changes() {
        let store = KubernetesStore::open("kubernetes+http://127.0.0.1:1").unwrap();
        let inner = &store.inner;
        let t: Timestamp = "2026-12-06T15:00:00Z".parse().unwrap();
        let r1 = parse_record("k", &lease(spec("a", 10, t, t, 0), &[])).unwrap();
        let first = inner.observe("k", Some(&r1), 5, secs(100));
        assert_eq!(first.at, secs(100));
        // The same record seen later: the observation keeps its instant, and expires on time.
        let again = inner.observe("k", Some(&r1), 5, secs(105));
        assert_eq!(again.at, secs(100));
        assert_eq!(remaining(&again, secs(105)), secs(5));
        assert_eq!(remaining(&again, secs(111)), Duration::ZERO);
        assert!(lease_record(&again, secs(111)).is_none());
        // A renewal (a new renewTime) starts a new observation, whatever its renewTime says.
        let old: Timestamp = "2000-01-01T00:00:00Z".parse().unwrap();
        let r2 = parse_record("k", &lease(spec("a", 10, t, old, 0), &[])).unwrap();
        let renewed = inner.observe("k", Some(&r2), 8, secs(109));
        assert_eq!(remaining(&renewed, secs(111)), secs(8));
        // A read served before that renewal, answered after it: a stale answer changes nothing
        // (were the observation to go back to r1, the next read of r2 would start it again, and
        // a crash would cost two leases).
        let stale = inner.observe("k", Some(&r1), 5, secs(110));
        assert_eq!((stale.record.as_ref(), stale.at), (Some(&r2), secs(109)));
        assert_eq!(inner.observe("k", Some(&r2), 8, secs(112)).at, secs(109));
        // Deleted: nothing runs, and an older read does not bring the Lease back.
        let gone = inner.observe("k", None, 9, secs(120));
        assert_eq!(remaining(&gone, secs(120)), Duration::ZERO);
        assert!(inner.observe("k", Some(&r2), 8, secs(121)).record.is_none());
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }
}
