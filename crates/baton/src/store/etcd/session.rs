//! Session leases shared by the candidacies of one store (as Go's `concurrency.Session` is
//! shared by its `Election`s), their keepalive, the watchdog that deletes the entry of a leader
//! that stopped renewing, and the leaders' renewals, batched.
//!
//! * **Sharing.** [`Sessions::join`] hands a candidacy of election `K` a live session of the
//!   store with the same TTL that no other candidacy of `K` uses, or grants a new one. Two
//!   candidacies of one election never share a lease: their entries (`K/<lease id hex>`) would
//!   be the same key. [`Session::part`] ends a candidacy's membership; the last member to part
//!   revokes the lease (the caller does the revoke).
//! * **Keepalive.** One background keepalive per session, every third of its TTL after the
//!   last keepalive that succeeded, whoever sent it (a batch of renewals or an attempt counts
//!   too), and only while a member follows: a session whose members all lead lives on their
//!   renewals alone.
//! * **Watchdog.** While a member leads, the session remembers until when the last keepalive
//!   sent for *its* renewal (or for the attempt that made it leader) proved its lease: the send
//!   instant of that keepalive plus the TTL (`covered_until`). The shared keepalive extends
//!   the lease for every member, so a leader whose engine stopped renewing would otherwise be
//!   kept alive by the others. At `covered_until`, if no later renewal of that leader
//!   succeeded, the session deletes its entry (guarded on its create revision): the moment
//!   etcd would have let the leader's own lease expire had it been kept alive by its
//!   renewals alone. The engine's deadline for that renewal fell earlier (it is the engine's
//!   send instant plus the lease, less drift and a margin), so the entry is never deleted
//!   while its engine may still think it leads. A renewal whose answer comes after the
//!   watchdog took the entry is answered `Lost` (both sides decide under one lock). A
//!   deletion that has no answer within the keepalive's 2 s is given up and sent again
//!   (every `DELETE_RETRY`): a member cut off from its quorum would hold it for its request
//!   timeout (7 s), and giving it up after a second makes the client move to the next member.
//! * **Batched renewals.** A renewal waits up to [`WINDOW`] for others (at most
//!   [`MAX_BATCH`]); the batch then sends one keepalive per session it touches and one `Txn`
//!   whose compares check every entry's create revision (its failure branch reads every entry,
//!   keys only, so one request tells which are gone). Each renewal is judged on its own: its
//!   session's keepalive succeeded, its entry is there with its create revision, and the
//!   watchdog has not taken it. The success branch reads each election's handoff request key
//!   (a renewal's answer carries the request, if any): no extra request. When an entry is
//!   gone, the failure branch reads the entries only, and the other renewals of that batch
//!   bring their requests at their next renewal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::{debug, warn};

use super::pb::etcdserverpb::{RangeRequest, TxnRequest, TxnResponse};
use super::pb::mvccpb::KeyValue;
use super::{EtcdStore, Inner, client, lease_not_found, lease_ttl_secs};
use crate::Result;

/// How long the first renewal of a batch waits for others. Small against any renew interval
/// the engine accepts on etcd (TTLs are at least 2 s), and long enough that 2,000 renewals a
/// second go out as about 20 batches of 100.
pub const WINDOW: Duration = Duration::from_millis(50);

/// The most renewals in one batch: etcd refuses a `Txn` with more than 128 compares or
/// operations in a branch (`--max-txn-ops`, 128 by default).
pub(super) const MAX_BATCH: usize = 128;

/// How long one background keepalive may take before it counts as failed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The shortest interval between background keepalives.
const MIN_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(200);

/// How soon the watchdog tries again to delete an entry whose deletion failed.
const DELETE_RETRY: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sessions of one store.
#[derive(Default)]
pub(super) struct Sessions {
    live: Mutex<Vec<Weak<Session>>>,
    /// Held while granting, so candidacies that join together share one new session.
    granting: tokio::sync::Mutex<()>,
    renewals: std::sync::OnceLock<mpsc::UnboundedSender<Pending>>,
}

/// One session lease, shared by candidacies of different elections.
pub(super) struct Session {
    pub id: i64,
    /// The TTL asked for, in seconds: sessions are shared between equal TTLs only.
    ttl_secs: i64,
    /// The TTL etcd granted.
    pub granted: Duration,
    /// Cancelled when etcd answers that the lease is gone.
    pub lost: CancellationToken,
    state: Mutex<State>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct State {
    /// The elections of the members, each with its entry while it leads.
    members: HashMap<String, Option<Leading>>,
    /// Set when the last member parted: nobody joins any more.
    closed: bool,
    /// When the next background keepalive is due.
    next_keepalive: Instant,
    /// Entries of leaders that stopped renewing, still to delete.
    doomed: Vec<(String, i64)>,
}

struct Leading {
    entry: String,
    rev: i64,
    covered_until: Instant,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lease", &format!("{:x}", self.id))
            .field("granted", &self.granted)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// A session for a candidacy of election `key` with lease duration `ttl`: a live one of
    /// this store that no candidacy of `key` uses, or a new one.
    pub async fn join(&self, store: &EtcdStore, key: &str, ttl: Duration) -> Result<Arc<Session>> {
        let ttl_secs = lease_ttl_secs(ttl);
        if let Some(session) = self.find(key, ttl_secs) {
            return Ok(session);
        }
        let _granting = self.granting.lock().await;
        if let Some(session) = self.find(key, ttl_secs) {
            return Ok(session);
        }
        let client = store.client().await?;
        let resp = client
            .lease_grant(ttl_secs)
            .await
            .map_err(|e| store.error(e, "granting a lease", true))?;
        let granted = Duration::from_secs(resp.ttl.max(1) as u64);
        let interval = keepalive_interval(granted);
        let session = Arc::new(Session {
            id: resp.id,
            ttl_secs,
            granted,
            lost: CancellationToken::new(),
            state: Mutex::new(State {
                members: HashMap::from([(key.to_owned(), None)]),
                closed: false,
                next_keepalive: Instant::now() + interval,
                doomed: Vec::new(),
            }),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(keep_alive_loop(Arc::downgrade(&session), store.clone()));
        *lock(&session.task) = Some(task);
        debug!(lease = %format!("{:x}", resp.id), ttl = ttl_secs, "etcd session started");
        let mut live = lock(&self.live);
        live.retain(|s| s.strong_count() > 0);
        live.push(Arc::downgrade(&session));
        Ok(session)
    }

    fn find(&self, key: &str, ttl_secs: i64) -> Option<Arc<Session>> {
        let live = lock(&self.live);
        live.iter().filter_map(Weak::upgrade).find(|s| {
            if s.ttl_secs != ttl_secs || s.lost.is_cancelled() {
                return false;
            }
            let mut state = lock(&s.state);
            if state.closed || state.members.contains_key(key) {
                return false;
            }
            state.members.insert(key.to_owned(), None);
            true
        })
    }

    /// Renew the leading `entry` (create revision `rev`) of election `key` on `session`, in the
    /// next batch. `Some`: renewed (a keepalive sent after this call began succeeded, the entry
    /// is there, and the watchdog has not taken it), with what the batch found at the
    /// election's handoff request key `request` (`None` there when the batch could not look).
    pub async fn renew(
        &self,
        store: &EtcdStore,
        session: Arc<Session>,
        key: &str,
        entry: &str,
        rev: i64,
        request: String,
    ) -> Result<Option<Option<KeyValue>>> {
        let queue = self
            .renewals
            .get_or_init(|| spawn_batcher(Arc::downgrade(&store.inner)));
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            session,
            key: key.to_owned(),
            entry: entry.to_owned(),
            rev,
            request,
            reply,
        };
        if queue.send(pending).is_err() {
            return Err(store.error(
                Status::unavailable("the renewal batcher ended"),
                "renewing",
                false,
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(store.error(
                Status::unavailable("the renewal batch was dropped"),
                "renewing",
                true,
            ))
        })
    }
}

impl Session {
    /// End the membership of election `key`'s candidacy. `true` when it was the last member:
    /// the session is closed, and the caller revokes the lease.
    pub fn part(&self, key: &str) -> bool {
        let mut state = lock(&self.state);
        state.members.remove(key);
        if state.members.is_empty() && !state.closed {
            state.closed = true;
            return true;
        }
        false
    }

    /// Close the session if election `key`'s candidacy is its only member (`true`: the caller
    /// revokes the lease), so that nobody joins while the revoke is under way; otherwise
    /// change nothing. The candidacy stays a member, with its entry and its leading mark, until
    /// the revoke succeeds ([`revoked`](Self::revoked)) or fails ([`reopen`](Self::reopen)).
    pub fn close_if_sole(&self, key: &str) -> bool {
        let mut state = lock(&self.state);
        if state.closed || state.members.len() != 1 || !state.members.contains_key(key) {
            return false;
        }
        state.closed = true;
        true
    }

    /// The revoke after [`close_if_sole`](Self::close_if_sole) succeeded: the lease and every
    /// entry on it are gone.
    pub fn revoked(&self) {
        lock(&self.state).members.clear();
    }

    /// The revoke after [`close_if_sole`](Self::close_if_sole) failed: the session takes
    /// members again, and its member keeps its entry and, if it led, its leading mark, so that
    /// its next attempt (or the watchdog, when the last renewal's cover runs out) deletes a
    /// spent entry as soon as etcd answers. Forgetting it instead would leave the entry to its
    /// lease, which an etcd restart extends by a whole TTL (and more) from the restart.
    pub fn reopen(&self) {
        lock(&self.state).closed = false;
    }

    /// Election `key`'s candidacy leads with `entry` (create revision `rev`), proven by a
    /// keepalive sent at `sent`.
    pub fn lead(&self, key: &str, entry: &str, rev: i64, sent: Instant) {
        let mut state = lock(&self.state);
        if let Some(slot) = state.members.get_mut(key) {
            *slot = Some(Leading {
                entry: entry.to_owned(),
                rev,
                covered_until: sent + self.granted,
            });
        }
    }

    /// Election `key`'s candidacy no longer leads.
    pub fn unlead(&self, key: &str) {
        if let Some(slot) = lock(&self.state).members.get_mut(key) {
            *slot = None;
        }
    }

    /// A keepalive sent at `sent` succeeded: the next background one is due a third of the
    /// TTL later.
    pub fn kept_alive(&self, sent: Instant) {
        let mut state = lock(&self.state);
        let next = sent + keepalive_interval(self.granted);
        if next > state.next_keepalive {
            state.next_keepalive = next;
        }
    }

    /// A renewal of `key`'s leading entry `rev`, proven by a keepalive sent at `sent`,
    /// succeeded: extend its cover, unless the watchdog took the entry first (`false`).
    fn renewed(&self, key: &str, rev: i64, sent: Instant) -> bool {
        let mut state = lock(&self.state);
        match state.members.get_mut(key) {
            Some(Some(leading)) if leading.rev == rev => {
                let until = sent + self.granted;
                if until > leading.covered_until {
                    leading.covered_until = until;
                }
                true
            }
            _ => false,
        }
    }

    /// Take the entries of leaders whose cover ran out by `now` (they are no longer leading
    /// here) and return every entry still to delete, with the next moment to look again.
    fn expire(&self, now: Instant) -> (Vec<(String, i64)>, Instant) {
        let mut state = lock(&self.state);
        let mut taken = Vec::new();
        let mut next = state.next_keepalive;
        for (key, slot) in &mut state.members {
            let Some(leading) = slot else { continue };
            if leading.covered_until <= now {
                warn!(
                    election = %key,
                    entry = %leading.entry,
                    "the leader stopped renewing; deleting its etcd entry as its lease would have expired"
                );
                taken.push((leading.entry.clone(), leading.rev));
                *slot = None;
            } else {
                next = next.min(leading.covered_until);
            }
        }
        state.doomed.extend(taken);
        if !state.doomed.is_empty() {
            next = next.min(now + DELETE_RETRY);
        }
        (state.doomed.clone(), next)
    }

    fn deleted(&self, done: &[(String, i64)]) {
        lock(&self.state).doomed.retain(|d| !done.contains(d));
    }

    /// Whether a background keepalive is due at `now`: the last one is a third of the TTL
    /// old and a member follows. A session whose members all lead lives on their renewals
    /// alone, as a leader's own lease did before leases were shared.
    fn keepalive_due(&self, now: Instant) -> bool {
        let mut state = lock(&self.state);
        if state.next_keepalive > now {
            return false;
        }
        if state.members.values().all(Option::is_some) {
            state.next_keepalive = now + keepalive_interval(self.granted);
            return false;
        }
        true
    }

    fn retry_keepalive(&self, now: Instant) {
        lock(&self.state).next_keepalive = now + keepalive_interval(self.granted);
    }
}

fn keepalive_interval(ttl: Duration) -> Duration {
    (ttl / 3).max(MIN_KEEPALIVE_INTERVAL)
}

/// Keep the session's lease alive every third of its TTL (counted from the last keepalive
/// that succeeded, whoever sent it), and delete the entries of leaders that stopped renewing.
/// Cancels `lost` when etcd says the lease is gone. Ends with the session.
async fn keep_alive_loop(session: Weak<Session>, store: EtcdStore) {
    let Some(id) = session.upgrade().map(|s| s.id) else {
        return;
    };
    loop {
        let next = {
            let Some(s) = session.upgrade() else { return };
            let (doomed, next) = s.expire(Instant::now());
            drop(s);
            if !doomed.is_empty() {
                let results = join_all(doomed.iter().map(|(entry, rev)| {
                    tokio::time::timeout(KEEPALIVE_TIMEOUT, store.delete_entry(entry, *rev))
                }))
                .await;
                let done: Vec<_> = doomed
                    .into_iter()
                    .zip(results)
                    .filter_map(|(d, r)| match r {
                        Ok(Ok(())) => Some(d),
                        Ok(Err(e)) => {
                            debug!(error = %e, "deleting a stale leader's entry failed; retrying");
                            None
                        }
                        Err(_) => {
                            debug!("deleting a stale leader's entry timed out; retrying");
                            None
                        }
                    })
                    .collect();
                let Some(s) = session.upgrade() else { return };
                s.deleted(&done);
            }
            next
        };
        let Some(s) = session.upgrade() else { return };
        let now = Instant::now();
        if s.keepalive_due(now) {
            drop(s);
            let sent = Instant::now();
            let result = tokio::time::timeout(KEEPALIVE_TIMEOUT, store.keep_alive(id)).await;
            let Some(s) = session.upgrade() else { return };
            match result {
                Ok(Ok(true)) => s.kept_alive(sent),
                Ok(Ok(false)) => {
                    warn!(lease = %format!("{id:x}"), "the etcd session lease is gone; its candidates campaign again");
                    s.lost.cancel();
                    return;
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "keepalive failed; retrying");
                    s.retry_keepalive(Instant::now());
                }
                Err(_) => {
                    debug!("keepalive timed out; retrying");
                    s.retry_keepalive(Instant::now());
                }
            }
            continue;
        }
        drop(s);
        tokio::time::sleep_until(next.max(now + Duration::from_millis(1))).await;
    }
}

/// One renewal waiting for its batch.
struct Pending {
    session: Arc<Session>,
    key: String,
    entry: String,
    rev: i64,
    /// The election's handoff request key, read with the check.
    request: String,
    reply: oneshot::Sender<Result<Option<Option<KeyValue>>>>,
}

fn spawn_batcher(inner: Weak<Inner>) -> mpsc::UnboundedSender<Pending> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(collect(inner, rx));
    tx
}

async fn collect(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(WINDOW);
        tokio::pin!(linger);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(p) => batch.push(p),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        // A renewal the engine stopped waiting for is not sent.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let Some(inner) = inner.upgrade() else { return };
        let store = EtcdStore { inner };
        tokio::spawn(async move { send(store, batch).await });
    }
}

/// Renew a batch: one keepalive per session, sent after every renewal in it began, and one
/// `Txn` checking every entry; each renewal judged on its own.
async fn send(store: EtcdStore, batch: Vec<Pending>) {
    let mut ids: Vec<i64> = batch.iter().map(|p| p.session.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let sent = Instant::now();
    let txn = TxnRequest {
        compare: batch
            .iter()
            .map(|p| client::create_revision_is(&p.entry, p.rev))
            .collect(),
        success: batch
            .iter()
            .map(|p| client::range_op(client::get(&p.request)))
            .collect(),
        failure: batch
            .iter()
            .map(|p| {
                client::range_op(RangeRequest {
                    keys_only: true,
                    ..client::get(&p.entry)
                })
            })
            .collect(),
    };
    let check = async {
        match store.client().await {
            Ok(client) => client.txn(txn).await.map_err(Some),
            Err(_) => Err(None),
        }
    };
    let alive = join_all(ids.iter().map(|&id| {
        let store = store.clone();
        async move {
            let client = store.client().await.map_err(|_| None)?;
            client.lease_keep_alive(id).await.map_err(Some)
        }
    }));
    let (alive, check) = tokio::join!(alive, check);
    let alive: HashMap<i64, std::result::Result<bool, Option<Status>>> = ids
        .iter()
        .zip(alive)
        .map(|(&id, r)| {
            let r = match r {
                Ok(resp) => Ok(resp.ttl > 0),
                Err(Some(e)) if lease_not_found(&e) => Ok(false),
                Err(e) => Err(e),
            };
            (id, r)
        })
        .collect();
    let present = entries_present(&batch, check);
    for (p, present) in batch.into_iter().zip(present) {
        let verdict = match (&alive[&p.session.id], present) {
            (Ok(false), _) => {
                p.session.lost.cancel();
                Ok(None)
            }
            (Err(e), _) => Err(status_error(
                &store,
                e.clone(),
                "keeping the lease alive",
                true,
            )),
            (Ok(true), Err(e)) => Err(status_error(&store, e, "reading the queue entry", false)),
            (Ok(true), Ok((present, request))) => {
                p.session.kept_alive(sent);
                Ok((present && p.session.renewed(&p.key, p.rev, sent)).then_some(request))
            }
        };
        let _ = p.reply.send(verdict);
    }
}

/// Whether each renewal's entry is there with its create revision, from the batch's `Txn`,
/// and what its handoff request key holds (`None` when the batch did not read it).
#[allow(clippy::type_complexity)]
fn entries_present(
    batch: &[Pending],
    check: std::result::Result<TxnResponse, Option<Status>>,
) -> Vec<std::result::Result<(bool, Option<KeyValue>), Option<Status>>> {
    match check {
        Ok(resp) if resp.succeeded => {
            let mut found: Vec<_> = super::txn_ranges(resp).collect();
            found.resize(batch.len(), Vec::new());
            found
                .into_iter()
                .map(|kvs| Ok((true, kvs.into_iter().next())))
                .collect()
        }
        Ok(resp) => {
            let mut found: Vec<_> = super::txn_ranges(resp).collect();
            found.resize(batch.len(), Vec::new());
            batch
                .iter()
                .zip(found)
                .map(|(p, kvs)| {
                    Ok((
                        kvs.first().is_some_and(|kv| kv.create_revision == p.rev),
                        None,
                    ))
                })
                .collect()
        }
        Err(e) => vec![Err(e); batch.len()],
    }
}

fn status_error(store: &EtcdStore, e: Option<Status>, doing: &str, write: bool) -> crate::Error {
    store.error(
        e.unwrap_or_else(|| Status::unavailable("cannot connect")),
        doing,
        write,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session with lease `id` and a 15 s TTL, without a keepalive task, in `sessions`.
    fn session(sessions: &Sessions, id: i64, members: &[&str]) -> Arc<Session> {
        let session = Arc::new(Session {
            id,
            ttl_secs: 15,
            granted: Duration::from_secs(15),
            lost: CancellationToken::new(),
            state: Mutex::new(State {
                members: members.iter().map(|m| ((*m).to_owned(), None)).collect(),
                closed: false,
                next_keepalive: Instant::now() + Duration::from_secs(5),
                doomed: Vec::new(),
            }),
            task: Mutex::new(None),
        });
        lock(&sessions.live).push(Arc::downgrade(&session));
        session
    }

    #[test]
    fn a_candidacy_joins_a_session_without_its_election_and_with_its_ttl() {
        let sessions = Sessions::default();
        let first = session(&sessions, 1, &["a"]);
        // Another election shares the session; a second candidacy of "a" cannot.
        assert_eq!(sessions.find("b", 15).map(|s| s.id), Some(1));
        assert!(sessions.find("a", 15).is_none());
        assert!(sessions.find("c", 10).is_none(), "another TTL");
        let second = session(&sessions, 2, &["a"]);
        assert!(
            sessions.find("a", 15).is_none(),
            "both sessions have a candidacy of a"
        );
        assert_eq!(sessions.find("c", 15).map(|s| s.id), Some(1));
        // A lost session is never joined again.
        first.lost.cancel();
        assert_eq!(sessions.find("d", 15).map(|s| s.id), Some(2));
        drop(second);
        assert!(
            sessions.find("e", 15).is_none(),
            "dropped sessions are gone"
        );
    }

    #[test]
    fn the_last_member_to_part_closes_the_session() {
        let sessions = Sessions::default();
        let s = session(&sessions, 1, &["a", "b"]);
        assert!(!s.close_if_sole("a"), "b is still a member");
        assert!(!s.part("a"));
        assert!(s.part("b"), "the last member revokes");
        assert!(
            sessions.find("c", 15).is_none(),
            "nobody joins a closed session"
        );
        assert!(!s.part("b"), "closed once");
        let t = session(&sessions, 2, &["a"]);
        assert!(t.close_if_sole("a"));
        assert!(sessions.find("b", 15).is_none(), "closed while it revokes");
        t.revoked();
        assert!(sessions.find("a", 15).is_none());
    }

    #[test]
    fn a_failed_revoke_keeps_the_member_with_its_leading_entry() {
        // The sole member leads, steps down while etcd is down and cannot revoke: it stays
        // the session's member with its entry, which the watchdog still takes when the last
        // renewal's cover runs out (and the candidacy's next attempt deletes at once).
        let sessions = Sessions::default();
        let s = session(&sessions, 1, &["a"]);
        let t0 = Instant::now();
        s.lead("a", "a/1", 7, t0);
        assert!(s.close_if_sole("a"));
        s.reopen();
        assert!(
            !s.keepalive_due(t0 + Duration::from_secs(6)),
            "it still leads: no background keepalive"
        );
        let (doomed, _) = s.expire(t0 + Duration::from_secs(15));
        assert_eq!(doomed, [("a/1".to_owned(), 7)]);
        assert_eq!(
            sessions.find("b", 15).map(|s| s.id),
            Some(1),
            "open to other elections again"
        );
        assert!(!s.part("a"), "b is still a member");
        assert!(s.part("b"), "the last member revokes");
    }

    #[test]
    fn the_watchdog_takes_a_leader_whose_cover_ran_out_and_its_late_renewal_is_lost() {
        let sessions = Sessions::default();
        let s = session(&sessions, 1, &["a", "b"]);
        let t0 = Instant::now();
        s.lead("a", "a/1", 7, t0);
        s.lead("b", "b/1", 8, t0);
        // b renews; a does not.
        assert!(s.renewed("b", 8, t0 + Duration::from_secs(5)));
        let (doomed, next) = s.expire(t0 + Duration::from_secs(14));
        assert!(doomed.is_empty());
        assert!(
            next < t0 + Duration::from_secs(15),
            "the background keepalive comes first"
        );
        let (doomed, next) = s.expire(t0 + Duration::from_secs(15));
        assert_eq!(doomed, [("a/1".to_owned(), 7)]);
        assert!(next <= t0 + Duration::from_secs(15) + DELETE_RETRY);
        // a's renewal, sent in time but judged after the watchdog took the entry, is lost.
        assert!(!s.renewed("a", 7, t0 + Duration::from_secs(10)));
        // Until the delete succeeds it is retried; b is covered until 20 s.
        s.deleted(&doomed);
        let (doomed, next) = s.expire(t0 + Duration::from_secs(16));
        assert!(doomed.is_empty());
        assert!(next <= t0 + Duration::from_secs(20));
        let (doomed, _) = s.expire(t0 + Duration::from_secs(20));
        assert_eq!(doomed, [("b/1".to_owned(), 8)]);
    }

    #[test]
    fn a_session_whose_members_all_lead_lives_on_their_renewals() {
        let sessions = Sessions::default();
        let s = session(&sessions, 1, &["a", "b"]);
        let later = Instant::now() + Duration::from_secs(6);
        assert!(s.keepalive_due(later), "a and b follow");
        s.lead("a", "a/1", 7, Instant::now());
        assert!(s.keepalive_due(later), "b follows");
        s.lead("b", "b/1", 8, Instant::now());
        assert!(!s.keepalive_due(later), "both lead");
        s.unlead("b");
        assert!(
            s.keepalive_due(later + Duration::from_secs(5)),
            "b follows again"
        );
    }
}
