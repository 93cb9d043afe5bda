//! Renewals of many elections on one store, gathered into one statement (D126).
//!
//! A process that runs many elections on one SQL store renews each lease every renew interval;
//! at 10,000 elections and a 5 s interval that is 2,000 renewals a second, and one statement
//! (and for SQLite one durable commit) each cost most of the process's CPU. A [`Batcher`]
//! gathers the renewals that arrive within a short window and hands them to the store at once,
//! which writes them in one statement (PostgreSQL, MySQL/MariaDB) or one transaction (SQLite).
//!
//! # The window
//!
//! The first renewal of a batch starts a task that waits [`window`] and then takes every
//! renewal queued by then. A renewal therefore reaches the store up to one window late. That is
//! safe by construction: the engine counts a lease from the moment it *asked* for the renewal,
//! so a later write only means the store keeps the lease a little longer than the leader
//! believes it does. It costs the leader that much of its margin, which is why the window is
//! at most 1/50 of the lease (20 ms for leases of one second and more).
//!
//! # A caller that gave up
//!
//! A renewal whose caller has gone (the engine's timeout fired, or the election stopped) by the
//! time its batch is written is left out of the batch: nobody would act on its answer, and
//! the engine has already treated it as unanswered.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::{Error, Result};

/// The longest a renewal waits for others to join its batch.
pub(crate) const MAX_WINDOW: Duration = Duration::from_millis(20);

/// How long a renewal of a lease of `ttl` may wait for its batch: 1/50 of the lease, at most
/// [`MAX_WINDOW`].
pub(crate) fn window(ttl: Duration) -> Duration {
    (ttl / 50).min(MAX_WINDOW)
}

/// Gathers items (renewals) submitted within a window and runs them as one batch.
pub(crate) struct Batcher<I, O> {
    queue: Mutex<Queue<I, O>>,
}

struct Queue<I, O> {
    items: Vec<(I, oneshot::Sender<Result<O>>)>,
    /// A task will take the queue when its window ends.
    scheduled: bool,
}

impl<I, O> Default for Batcher<I, O> {
    fn default() -> Self {
        Batcher {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                scheduled: false,
            }),
        }
    }
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Batcher")
            .field("queued", &queue.items.len())
            .finish()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Queue `item` and wait for its answer. If it opens a batch, a task spawned on the current
    /// runtime waits `window`, then calls `run` with every item still wanted; `run` answers
    /// each, in order, or fails the whole batch with one error, which every item then gets.
    /// `run` is only called for the batch this item opened, so every caller of one batcher
    /// passes an equivalent `run`.
    ///
    /// `store` names the store in the error given when the batch ends without an answer.
    pub(crate) async fn submit<F, Fut>(
        self: &Arc<Self>,
        item: I,
        window: Duration,
        store: &'static str,
        run: F,
    ) -> Result<O>
    where
        F: FnOnce(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<Result<O>>>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let open = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.items.push((item, answer));
            !std::mem::replace(&mut queue.scheduled, true)
        };
        if open {
            let batcher = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                batcher.flush(run).await;
            });
        }
        answered.await.unwrap_or_else(|_| {
            Err(Error::Indeterminate {
                store,
                message: "the batch this renewal was part of ended without an answer (it panicked, or the runtime is shutting down)".to_owned(),
                source: None,
            })
        })
    }

    /// Take the queue and run it as one batch.
    async fn flush<F, Fut>(&self, run: F)
    where
        F: FnOnce(Vec<I>) -> Fut,
        Fut: Future<Output = Result<Vec<Result<O>>>>,
    {
        let taken = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.scheduled = false;
            std::mem::take(&mut queue.items)
        };
        let (items, answers): (Vec<I>, Vec<_>) = taken
            .into_iter()
            .filter(|(_, answer)| !answer.is_closed())
            .unzip();
        if items.is_empty() {
            return;
        }
        let n = items.len();
        match run(items).await {
            Ok(results) => {
                debug_assert_eq!(results.len(), n);
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            }
            Err(e) => {
                let mut answers = answers.into_iter();
                for answer in answers.by_ref().take(n - 1) {
                    let _ = answer.send(Err(e.again()));
                }
                if let Some(last) = answers.next() {
                    let _ = last.send(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn doubling(
        batches: Arc<Mutex<Vec<Vec<u32>>>>,
    ) -> impl FnOnce(Vec<u32>) -> std::future::Ready<Result<Vec<Result<u32>>>> + Send + 'static
    {
        move |items| {
            batches.lock().unwrap().push(items.clone());
            std::future::ready(Ok(items.into_iter().map(|i| Ok(i * 2)).collect()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn items_within_a_window_run_as_one_batch_and_each_gets_its_own_answer() {
        let batcher = Arc::new(Batcher::<u32, u32>::default());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let calls = (0..100u32).map(|i| {
            let (batcher, batches) = (Arc::clone(&batcher), Arc::clone(&batches));
            async move {
                batcher
                    .submit(
                        i,
                        window(Duration::from_secs(15)),
                        "test",
                        doubling(batches),
                    )
                    .await
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.unwrap(), 2 * i as u32);
        }
        let batches = batches.lock().unwrap();
        assert_eq!(batches.len(), 1, "{batches:?}");
        assert_eq!(batches[0], (0..100).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_written_one_window_after_its_first_item_and_the_next_opens_a_new_one() {
        let batcher = Arc::new(Batcher::<u32, u32>::default());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let started = tokio::time::Instant::now();
        let w = window(Duration::from_secs(1));
        assert_eq!(w, Duration::from_millis(20));
        assert_eq!(
            window(Duration::from_millis(500)),
            Duration::from_millis(10)
        );
        let first = batcher
            .submit(1, w, "test", doubling(Arc::clone(&batches)))
            .await;
        assert_eq!(first.unwrap(), 2);
        assert_eq!(started.elapsed(), w);
        let second = batcher
            .submit(2, w, "test", doubling(Arc::clone(&batches)))
            .await;
        assert_eq!(second.unwrap(), 4);
        assert_eq!(*batches.lock().unwrap(), vec![vec![1], vec![2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_whose_caller_gave_up_is_left_out_of_its_batch() {
        let batcher = Arc::new(Batcher::<u32, u32>::default());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let w = Duration::from_millis(20);
        let gave_up = tokio::time::timeout(
            Duration::from_millis(5),
            batcher.submit(1, w, "test", doubling(Arc::clone(&batches))),
        )
        .await;
        assert!(gave_up.is_err());
        let kept = batcher
            .submit(2, w, "test", doubling(Arc::clone(&batches)))
            .await;
        assert_eq!(kept.unwrap(), 4);
        assert_eq!(*batches.lock().unwrap(), vec![vec![2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_fails_each_of_its_items() {
        let batcher = Arc::new(Batcher::<u32, u32>::default());
        let calls = (0..3u32).map(|i| {
            let batcher = Arc::clone(&batcher);
            async move {
                batcher
                    .submit(i, Duration::from_millis(5), "test", |_items| async {
                        Err(Error::unavailable("test", "the server went away", "reset"))
                    })
                    .await
            }
        });
        for answer in futures_util::future::join_all(calls).await {
            match answer {
                Err(Error::Unavailable { message, .. }) => {
                    assert!(message.starts_with("the server went away"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_panics_answers_its_items_with_an_indeterminate_error() {
        let batcher = Arc::new(Batcher::<u32, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let answer = batcher
            .submit(1, Duration::from_millis(1), "test", move |_items| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move { panic!("the store's batch panicked") }
            })
            .await;
        assert!(
            matches!(answer, Err(Error::Indeterminate { .. })),
            "{answer:?}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // The batcher is usable again afterwards.
        let batches = Arc::new(Mutex::new(Vec::new()));
        let again = batcher
            .submit(3, Duration::from_millis(1), "test", doubling(batches))
            .await;
        assert_eq!(again.unwrap(), 6);
    }
}
