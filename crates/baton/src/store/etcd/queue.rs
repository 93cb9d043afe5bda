//! The election's queue as a follower sees it, kept current from watch events alone (no I/O
//! here), and the rule for what counts as an election entry.

use std::collections::BTreeMap;

use super::election_prefix;
use super::handoff::{Mark, mark_key};
use super::pb::mvccpb::{Event, KeyValue, event::EventType};
use crate::store::Change;
use crate::{Error, Result};

/// A follower's view of the queue, as one read saw it: its own entry and every entry ahead of
/// it. The change stream keeps it current from the prefix watch's events alone.
#[derive(Debug, Clone)]
pub(super) struct QueueView {
    /// The election name.
    pub key: String,
    /// The follower's own entry.
    own: String,
    /// The entries ahead of the own one, by create revision: their key, lease and value.
    ahead: BTreeMap<i64, Ahead>,
    /// The revision to watch from: one past the read's.
    pub from: i64,
    /// The follower's candidate id: a handoff mark naming it wakes it.
    candidate: String,
    /// The election's handoff mark key, watched with the prefix.
    mark: String,
    /// Whether a handoff mark is live: the head does not lead until the mark goes.
    marked: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ahead {
    key: String,
    lease: i64,
    value: String,
}

impl QueueView {
    /// The view of a read at revision `read_at` of election `key`: the follower's entry `own`
    /// and the entries `ahead` of it.
    pub fn new(key: &str, own: &str, ahead: &[KeyValue], read_at: i64) -> QueueView {
        QueueView {
            key: key.to_owned(),
            own: own.to_owned(),
            ahead: ahead
                .iter()
                .map(|kv| {
                    (
                        kv.create_revision,
                        Ahead {
                            key: String::from_utf8_lossy(&kv.key).into_owned(),
                            lease: kv.lease,
                            value: String::from_utf8_lossy(&kv.value).into_owned(),
                        },
                    )
                })
                .collect(),
            from: read_at + 1,
            candidate: String::new(),
            mark: mark_key(key),
            marked: false,
        }
    }

    /// The same view, for candidate `candidate`, with a live handoff mark if `marked`.
    pub fn for_candidate(mut self, candidate: &str, marked: bool) -> QueueView {
        candidate.clone_into(&mut self.candidate);
        self.marked = marked;
        self
    }

    /// The head of the queue (when it is not the own entry).
    fn head(&self) -> Option<&Ahead> {
        self.ahead.first_key_value().map(|(_, head)| head)
    }

    /// Apply one watch response's events. A change the follower must act on (its turn has
    /// come, its own entry is gone, the head is not an election entry, a handoff mark names
    /// it) wakes it; a new head, or a new value at the head (`Election.Proclaim`), is a new
    /// leader to report, unless a handoff mark is live (the head does not lead then); the end
    /// of a mark reports the head as the leader (the candidate the mark admitted ended it).
    pub fn apply(&mut self, events: &[Event]) -> Step {
        let head_before = self.head().cloned();
        let mut mark_ended = false;
        for event in events {
            let Some(kv) = &event.kv else { continue };
            if kv.key == self.mark.as_bytes() {
                if event.r#type() == EventType::Delete {
                    self.marked = false;
                    mark_ended = true;
                    continue;
                }
                self.marked = true;
                if let Ok(mark) = Mark::read(&self.key, kv)
                    && mark.to.as_deref() == Some(self.candidate.as_str())
                {
                    return Step::Wake(Change::HandedOver { to: mark.to });
                }
                continue;
            }
            let name = String::from_utf8_lossy(&kv.key);
            if name == self.own {
                if event.r#type() == EventType::Delete {
                    // The session ended (etcd deleted the entry with its lease) or someone
                    // deleted the entry: queue anew.
                    return Step::Wake(Change::Expired);
                }
                continue;
            }
            // A delete event carries only the key; puts of keys not ahead are entries queued
            // behind this one.
            let Some(rev) = self
                .ahead
                .iter()
                .find_map(|(rev, a)| (a.key == name).then_some(*rev))
            else {
                continue;
            };
            match event.r#type() {
                EventType::Delete => {
                    self.ahead.remove(&rev);
                }
                EventType::Put => {
                    if let Some(a) = self.ahead.get_mut(&rev) {
                        a.value = String::from_utf8_lossy(&kv.value).into_owned();
                    }
                }
            }
        }
        let Some(head) = self.head() else {
            // Nobody is ahead any more: this candidate's turn.
            return Step::Wake(Change::Released);
        };
        if head_before.as_ref() == Some(head) && !mark_ended {
            return Step::Quiet;
        }
        if check_name(&self.key, &head.key, head.lease).is_err() {
            // Not an election entry: let `try_acquire` look, and say so.
            return Step::Wake(Change::Other);
        }
        if self.marked {
            return Step::Quiet;
        }
        Step::Leader(head.value.clone())
    }
}

/// What one watch response means to a follower.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing it needs to know.
    Quiet,
    /// A new leader (or a new value at the head): the holder's id.
    Leader(String),
    /// Time to try again.
    Wake(Change),
}

/// Check that `kv` is an entry `concurrency.Election` could have written for `key`.
pub(super) fn check_entry(key: &str, kv: &KeyValue) -> Result<()> {
    check_name(key, &String::from_utf8_lossy(&kv.key), kv.lease)
}

/// Check that an etcd key `name` with lease `lease` is an entry `concurrency.Election` could
/// have written for `key`.
fn check_name(key: &str, name: &str, lease: i64) -> Result<()> {
    let suffix = name.strip_prefix(&election_prefix(key)).unwrap_or(name);
    let problem = if lease == 0 {
        Some("it has no lease".to_owned())
    } else if suffix != format!("{lease:x}") {
        Some(format!("its name is not its lease id in hex ({lease:x})"))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(Error::ForeignData {
            key: key.to_owned(),
            found: format!(
                "the etcd key {name:?} under the election prefix is not an election entry: {problem}"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry of lease `lease` in election `e`, created at revision `rev`.
    fn entry(lease: i64, rev: i64, value: &str) -> KeyValue {
        KeyValue {
            key: format!("e/{lease:x}").into_bytes(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: value.as_bytes().to_vec(),
            lease,
        }
    }

    fn put(kv: KeyValue) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        }
    }

    /// A delete event: it carries only the key.
    fn delete(key: &str) -> Event {
        Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: key.as_bytes().to_vec(),
                ..KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    /// Follower `c` (lease 0xc, revision 30) behind `a` (the head) and `b`.
    fn third_in_line() -> QueueView {
        let view = QueueView::new("e", "e/c", &[entry(0xa, 10, "a"), entry(0xb, 20, "b")], 31);
        assert_eq!(view.from, 32, "the watch starts after the read");
        view
    }

    #[test]
    fn the_heads_release_names_the_next_leader_without_waking_a_follower_further_back() {
        let mut view = third_in_line();
        assert_eq!(view.apply(&[delete("e/a")]), Step::Leader("b".into()));
        // b's turn came; c is next and wakes only when b goes.
        assert_eq!(view.apply(&[delete("e/b")]), Step::Wake(Change::Released));
    }

    #[test]
    fn the_predecessor_leaving_wakes_the_follower_when_nobody_else_is_ahead() {
        let mut view = QueueView::new("e", "e/b", &[entry(0xa, 10, "a")], 20);
        assert_eq!(view.apply(&[]), Step::Quiet, "the watch's created response");
        assert_eq!(view.apply(&[delete("e/a")]), Step::Wake(Change::Released));
    }

    #[test]
    fn a_waiter_between_leaving_changes_nothing_the_follower_must_know() {
        let mut view = third_in_line();
        assert_eq!(view.apply(&[delete("e/b")]), Step::Quiet);
        assert_eq!(view.apply(&[delete("e/a")]), Step::Wake(Change::Released));
    }

    #[test]
    fn entries_queued_behind_and_unknown_keys_are_ignored() {
        let mut view = third_in_line();
        assert_eq!(
            view.apply(&[put(entry(0xd, 40, "d")), delete("e/zz")]),
            Step::Quiet
        );
    }

    #[test]
    fn a_new_value_at_the_head_is_a_new_leader_to_report() {
        let mut view = third_in_line();
        let mut proclaimed = entry(0xa, 10, "a-again");
        proclaimed.mod_revision = 40;
        assert_eq!(
            view.apply(&[put(proclaimed)]),
            Step::Leader("a-again".into())
        );
        assert_eq!(view.apply(&[put(entry(0xb, 20, "b2"))]), Step::Quiet);
    }

    #[test]
    fn losing_the_own_entry_wakes_the_follower_to_queue_anew() {
        let mut view = third_in_line();
        assert_eq!(
            view.apply(&[put(entry(0xc, 30, "c"))]),
            Step::Quiet,
            "a put of the own entry (a proclaim) changes nothing"
        );
        assert_eq!(view.apply(&[delete("e/c")]), Step::Wake(Change::Expired));
    }

    #[test]
    fn a_head_that_is_not_an_election_entry_wakes_the_follower_to_look() {
        let foreign = KeyValue {
            key: b"e/not-an-entry".to_vec(),
            create_revision: 5,
            value: b"x".to_vec(),
            lease: 0,
            ..KeyValue::default()
        };
        let mut view = QueueView::new("e", "e/c", &[foreign, entry(0xa, 10, "a")], 31);
        assert_eq!(
            view.apply(&[put(entry(0xa, 10, "a2"))]),
            Step::Quiet,
            "the head did not change"
        );
        let mut view = QueueView::new(
            "e",
            "e/c",
            &[
                entry(0xa, 10, "a"),
                KeyValue {
                    key: b"e/not-an-entry".to_vec(),
                    create_revision: 20,
                    lease: 0xb,
                    ..KeyValue::default()
                },
            ],
            31,
        );
        assert_eq!(view.apply(&[delete("e/a")]), Step::Wake(Change::Other));
    }

    fn mark_event(kind: EventType, to: Option<&str>) -> Event {
        let mark = Mark {
            to: to.map(str::to_owned),
            from: "a".into(),
        };
        Event {
            r#type: kind as i32,
            kv: Some(KeyValue {
                key: mark_key("e").into_bytes(),
                value: mark.encode().into_bytes(),
                lease: 0x99,
                ..KeyValue::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn a_handoff_mark_wakes_the_candidate_it_names_and_holds_back_the_leader_report() {
        // c, third in line, is named: it wakes at once.
        let mut view = third_in_line().for_candidate("c", false);
        assert_eq!(
            view.apply(&[mark_event(EventType::Put, Some("c"))]),
            Step::Wake(Change::HandedOver {
                to: Some("c".into())
            })
        );
        // Someone else is named: c only notes the mark, and the heads that step aside while
        // it lives are no leaders.
        let mut view = third_in_line().for_candidate("c", false);
        assert_eq!(
            view.apply(&[mark_event(EventType::Put, Some("d")), delete("e/a")]),
            Step::Quiet
        );
        // The mark's end: the head took the key.
        assert_eq!(
            view.apply(&[mark_event(EventType::Delete, None)]),
            Step::Leader("b".into())
        );
        let mut view = third_in_line().for_candidate("c", true);
        assert_eq!(view.apply(&[delete("e/a")]), Step::Quiet);
        assert_eq!(view.apply(&[delete("e/b")]), Step::Wake(Change::Released));
    }

    #[test]
    fn election_entries_are_named_after_their_own_lease() {
        assert!(check_entry("e", &entry(0x694d7f1a2b3c, 7, "x")).is_ok());
        let mut no_lease = entry(0xa, 7, "x");
        no_lease.lease = 0;
        let mut other_lease = entry(0xa, 7, "x");
        other_lease.lease = 0xb;
        for kv in [no_lease, other_lease] {
            match check_entry("e", &kv) {
                Err(Error::ForeignData { key, found }) => {
                    assert_eq!(key, "e");
                    assert!(found.contains("e/a"), "{found}");
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
