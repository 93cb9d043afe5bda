//! The conformance suite against the stores in this workspace (memory, SQLite, and both behind a
//! `FaultyStore` with no faults set), and against deliberately flawed stores to show that the suite
//! catches what it claims to.

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton::store::sqlite::SqliteStore;
use baton::{
    Acquire, BoxError, Candidacy, Changes, Lease, LeaseStore, MemoryStore, Renew, Result, StoreInfo,
};
use baton_testkit::conformance::{self, ForeignWriter, StoreFactory};
use baton_testkit::faulty::{FaultControl, FaultyStore};

/// One in-process backend; every handle is a clone sharing its leases.
#[derive(Debug, Default)]
struct MemoryFactory(MemoryStore);

#[async_trait]
impl StoreFactory for MemoryFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(Arc::new(self.0.clone()))
    }

    fn capabilities(&self) -> conformance::Capabilities {
        conformance::Capabilities::new()
            .with_handoff(true)
            .with_presence(true)
            .with_shows_handoff(true)
    }
}

mod memory {
    baton_testkit::conformance_tests!(super::MemoryFactory::default());
}

/// One SQLite file in a directory of its own, removed when the factory is dropped. Every
/// [`StoreFactory::store`] call opens the file again: a separate connection, as a separate
/// process would have.
///
/// Foreign data here is a `baton_leases` row Baton could not have written. Foreign data at the
/// file level (a file that is not a database, a `baton_leases` that is not Baton's table) makes
/// `SqliteStore::open` itself fail; those cases are the SQLite store's own and belong with its
/// tests in `crates/baton/tests/sqlite.rs`.
#[derive(Debug)]
struct SqliteFactory {
    dir: PathBuf,
    path: PathBuf,
}

impl SqliteFactory {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "baton-conformance-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir(&dir).expect("create a temporary directory for the SQLite file");
        let path = dir.join("leases.db");
        SqliteFactory { dir, path }
    }

    fn connection(&self) -> std::result::Result<rusqlite::Connection, rusqlite::Error> {
        // Make sure the table exists, then write around the store.
        SqliteStore::open(&self.path).expect("open the SQLite store");
        rusqlite::Connection::open(&self.path)
    }
}

impl Drop for SqliteFactory {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[async_trait]
impl StoreFactory for SqliteFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(Arc::new(SqliteStore::open(&self.path)?))
    }

    fn capabilities(&self) -> conformance::Capabilities {
        conformance::Capabilities::new()
            .with_handoff(true)
            .with_presence(true)
            .with_shows_handoff(true)
    }

    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        Some(self)
    }
}

/// The row another program left: a token that is text, where Baton writes an integer.
const FOREIGN_ROW: (&str, &str) = ("some-other-program", "not a fencing token");

#[async_trait]
impl ForeignWriter for SqliteFactory {
    async fn plant(&self, key: &str) -> std::result::Result<(), BoxError> {
        let (holder, token) = FOREIGN_ROW;
        self.connection()?.execute(
            "INSERT INTO baton_leases (key, holder, token) VALUES (?1, ?2, ?3)",
            [key, holder, token],
        )?;
        Ok(())
    }

    async fn check_untouched(&self, key: &str) -> std::result::Result<(), String> {
        let rows: Vec<(String, String, Option<i64>)> = self
            .connection()
            .and_then(|conn| {
                let mut select = conn.prepare(
                    "SELECT holder, CAST(token AS TEXT), expires_at_ms FROM baton_leases \
                     WHERE key = ?1",
                )?;
                select
                    .query_map([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .map_err(|e| format!("it could not be read back: {e}"))?;
        let expected = (FOREIGN_ROW.0.to_owned(), FOREIGN_ROW.1.to_owned(), None);
        if rows == [expected] {
            Ok(())
        } else {
            Err(format!("the rows at the key are now {rows:?}"))
        }
    }
}

mod sqlite {
    baton_testkit::conformance_tests!(super::SqliteFactory::new());
}

/// A [`FaultyStore`] with no faults set over another factory's stores: it must pass every case
/// its inner store passes. Every handle shares one [`FaultControl`], as the chaos harness's
/// candidates would; foreign data is planted around the wrapper, in the inner store.
struct FaultyFactory<F> {
    inner: F,
    control: FaultControl,
}

impl<F: StoreFactory> FaultyFactory<F> {
    fn over(inner: F) -> Self {
        FaultyFactory {
            inner,
            control: FaultControl::new(),
        }
    }
}

#[async_trait]
impl<F: StoreFactory> StoreFactory for FaultyFactory<F> {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        let inner = self.inner.store().await?;
        Ok(Arc::new(FaultyStore::with_control(
            inner,
            self.control.clone(),
        )))
    }

    fn capabilities(&self) -> conformance::Capabilities {
        self.inner.capabilities()
    }

    fn foreign_writer(&self) -> Option<&dyn ForeignWriter> {
        self.inner.foreign_writer()
    }
}

mod faulty_over_memory {
    baton_testkit::conformance_tests!(super::FaultyFactory::over(super::MemoryFactory::default()));
}

mod faulty_over_sqlite {
    baton_testkit::conformance_tests!(super::FaultyFactory::over(super::SqliteFactory::new()));
}

// ---------------------------------------------------------------------------------------------
// The suite rejects flawed stores: each flaw below breaks one rule of the contract.

/// A rule a [`FlawedStore`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// Renew extends whatever lease the same candidate id holds, whatever its token.
    RenewIgnoresToken,
    /// Release frees the key whoever holds it.
    ReleaseIgnoresOwner,
    /// A candidacy whose id already holds the key "acquires" it again.
    ReentrantAcquire,
    /// Claims it can watch, but its streams never deliver.
    SilentWatch,
}

/// The memory store with one flaw.
#[derive(Debug)]
struct FlawedStore {
    inner: MemoryStore,
    flaw: Flaw,
}

#[derive(Debug)]
struct FlawedFactory(Arc<FlawedStore>);

impl FlawedFactory {
    fn new(flaw: Flaw) -> Self {
        FlawedFactory(Arc::new(FlawedStore {
            inner: MemoryStore::new(),
            flaw,
        }))
    }
}

#[async_trait]
impl StoreFactory for FlawedFactory {
    async fn store(&self) -> Result<Arc<dyn LeaseStore>> {
        Ok(self.0.clone())
    }
}

#[async_trait]
impl LeaseStore for FlawedStore {
    async fn join(&self, key: &str, candidate: &str) -> Result<Box<dyn Candidacy>> {
        Ok(Box::new(FlawedCandidacy {
            inner: self.inner.join(key, candidate).await?,
            store: self.inner.clone(),
            key: key.to_owned(),
            candidate: candidate.to_owned(),
            flaw: self.flaw,
        }))
    }

    async fn read(&self, key: &str) -> Result<Option<baton::LeaseRecord>> {
        self.inner.read(key).await
    }

    async fn watch(&self, key: &str) -> Result<Option<Changes>> {
        match self.flaw {
            Flaw::SilentWatch => Ok(Some(Box::pin(futures_util::stream::pending()))),
            _ => self.inner.watch(key).await,
        }
    }

    fn info(&self) -> StoreInfo {
        self.inner.info()
    }
}

#[derive(Debug)]
struct FlawedCandidacy {
    inner: Box<dyn Candidacy>,
    store: MemoryStore,
    key: String,
    candidate: String,
    flaw: Flaw,
}

impl FlawedCandidacy {
    /// The lease that currently holds the key, as if it were ours.
    async fn current(&self) -> Result<Option<Lease>> {
        Ok(self
            .store
            .read(&self.key)
            .await?
            .map(|record| Lease::new(self.key.clone(), record.holder, record.token)))
    }
}

#[async_trait]
impl Candidacy for FlawedCandidacy {
    async fn try_acquire(&mut self, ttl: Duration) -> Result<Acquire> {
        match self.inner.try_acquire(ttl).await? {
            Acquire::Held(record)
                if self.flaw == Flaw::ReentrantAcquire && record.holder == self.candidate =>
            {
                Ok(Acquire::Acquired(Lease::new(
                    self.key.clone(),
                    record.holder,
                    record.token,
                )))
            }
            outcome => Ok(outcome),
        }
    }

    async fn renew(&mut self, lease: &Lease, ttl: Duration) -> Result<Renew> {
        if self.flaw == Flaw::RenewIgnoresToken
            && let Some(current) = self.current().await?
            && current.holder == lease.holder
        {
            return self.inner.renew(&current, ttl).await;
        }
        self.inner.renew(lease, ttl).await
    }

    async fn release(&mut self, lease: &Lease) -> Result<()> {
        if self.flaw == Flaw::ReleaseIgnoresOwner
            && let Some(current) = self.current().await?
        {
            return self.inner.release(&current).await;
        }
        self.inner.release(lease).await
    }

    async fn leave(&mut self) -> Result<()> {
        self.inner.leave().await
    }

    async fn watch(&mut self) -> Result<Option<Changes>> {
        match self.flaw {
            Flaw::SilentWatch => Ok(Some(Box::pin(futures_util::stream::pending()))),
            _ => self.inner.watch().await,
        }
    }
}

/// The panic message of a case that must fail.
fn failure_of(case: impl Future<Output = ()>) -> String {
    let payload = panic::catch_unwind(AssertUnwindSafe(|| conformance::block_on(case)))
        .expect_err("the conformance suite must reject a flawed store");
    message(&*payload)
}

fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

fn assert_mentions(message: &str, expected: &str) {
    assert!(
        message.contains(expected),
        "expected the failure to mention {expected:?}, got:\n{message}"
    );
}

#[test]
fn suite_rejects_renew_that_ignores_the_token() {
    let factory = FlawedFactory::new(Flaw::RenewIgnoresToken);
    let message = failure_of(conformance::renew_by_stale_lease_is_lost(&factory));
    assert_mentions(
        &message,
        "renew of a lease that was released and reacquired must be Lost",
    );
}

#[test]
fn suite_rejects_renewals_at_once_that_ignore_the_token() {
    let factory = FlawedFactory::new(Flaw::RenewIgnoresToken);
    let message = failure_of(conformance::renewals_at_once_each_get_their_own_answer(
        &factory,
    ));
    assert_mentions(&message, "renew with the holder's id and a made-up token");
}

#[test]
fn suite_rejects_release_by_a_non_owner() {
    let factory = FlawedFactory::new(Flaw::ReleaseIgnoresOwner);
    let message = failure_of(conformance::release_only_by_owner(&factory));
    assert_mentions(&message, "release by a non-owner must be a no-op");
}

#[test]
fn run_all_names_the_failing_case() {
    let factory = FlawedFactory::new(Flaw::ReentrantAcquire);
    let message = failure_of(conformance::run_all(&factory));
    assert_mentions(
        &message,
        &format!("1 of {} conformance cases failed", conformance::CASES.len()),
    );
    assert_mentions(
        &message,
        "conformance case `contention_returns_holder` failed",
    );
    assert_mentions(&message, "two processes that share an instance id");
}

#[test]
fn suite_rejects_a_watch_that_never_delivers() {
    let factory = FlawedFactory::new(Flaw::SilentWatch);
    let message = failure_of(conformance::watch_delivers_release(&factory));
    assert_mentions(&message, "watch must deliver a release promptly");
}
