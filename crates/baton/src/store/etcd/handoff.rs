//! Where a planned handoff's mark and a handoff request live, beside the election's queue, and
//! what they hold (see the module docs of the store, *Planned handoff*).
//!
//! Both keys (and the presence records, `presence.rs`) are under
//! `baton-handoff:<election name, escaped>:`. The name is escaped so that the keys contain no
//! `/`: a key without a `/` is under no election's prefix (`NAME/`), so neither a
//! `concurrency.Election` peer of this election nor one of any other election ever sees them
//! in its queue, whatever the election names are.

use super::pb::mvccpb::KeyValue;
use crate::{Error, Result};

/// The namespace of the handoff keys.
const NAMESPACE: &str = "baton-handoff:";

/// The first word of a mark's value.
const MARK_TAG: &str = "baton-handoff-mark";

/// The first word of a request's value.
const REQUEST_TAG: &str = "baton-handoff-request";

/// The prefix of election `key`'s handoff keys and presence records,
/// `baton-handoff:<key escaped>:`: the range a user's role must be allowed to read and write
/// (besides the election's prefix `key/`) for planned handoffs and presence. The name is escaped as a URL path segment is, except that `/` and `:`
/// are escaped too (`services/api` gives `baton-handoff:services%2Fapi:`), so the prefix
/// covers the keys of this election and of no other.
///
/// ```
/// use baton::store::etcd::handoff_prefix;
/// assert_eq!(handoff_prefix("api"), "baton-handoff:api:");
/// assert_eq!(handoff_prefix("services/api"), "baton-handoff:services%2Fapi:");
/// ```
pub fn handoff_prefix(key: &str) -> String {
    format!("{NAMESPACE}{}:", escape(key))
}

/// `text` escaped as a URL path segment is, `/` and `:` included: the result holds only ASCII
/// letters, digits, `-`, `.`, `_`, `~` and `%XX`, and tells any two texts apart.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The key of election `key`'s handoff mark.
pub(super) fn mark_key(key: &str) -> String {
    format!("{}mark", handoff_prefix(key))
}

/// The key of a handoff request for election `key`'s holder.
pub(super) fn request_key(key: &str) -> String {
    format!("{}request", handoff_prefix(key))
}

/// A planned handoff's mark: `from` handed over to `to` (`None`: to anyone but `from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mark {
    pub to: Option<String>,
    pub from: String,
}

impl Mark {
    /// The value written at the mark's key.
    pub fn encode(&self) -> String {
        format!(
            "{MARK_TAG} {} {}",
            field(Some(&self.from)),
            field(self.to.as_deref())
        )
    }

    /// The mark at `kv` (election `key`'s mark key), or [`Error::ForeignData`] when Baton did
    /// not write it: every mark is attached to a lease (its window) and has this shape.
    pub fn read(key: &str, kv: &KeyValue) -> Result<Mark> {
        let parsed = (kv.lease != 0)
            .then(|| parse(&kv.value, MARK_TAG))
            .flatten()
            .and_then(|fields| match fields.as_slice() {
                [Some(from), to] => Some(Mark {
                    to: to.clone(),
                    from: from.clone(),
                }),
                _ => None,
            });
        parsed.ok_or_else(|| foreign(key, kv, "a planned handoff's mark"))
    }

    /// Whether the mark lets `candidate` take the key.
    pub fn admits(&self, candidate: &str) -> bool {
        match &self.to {
            Some(to) => to == candidate,
            None => self.from != candidate,
        }
    }
}

/// A handoff request: the holder with fencing token `token` is asked to hand over to `to`
/// (`None`: to anyone else).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HandoffRequest {
    pub token: i64,
    pub to: Option<String>,
}

impl HandoffRequest {
    /// The value written at the request's key.
    pub fn encode(&self) -> String {
        format!(
            "{REQUEST_TAG} {} {}",
            field(Some(&self.token.to_string())),
            field(self.to.as_deref())
        )
    }

    /// The request at `kv` (election `key`'s request key), or [`Error::ForeignData`] when Baton
    /// did not write it: every request is attached to the holder's lease and has this shape.
    pub fn read(key: &str, kv: &KeyValue) -> Result<HandoffRequest> {
        let parsed = (kv.lease != 0)
            .then(|| parse(&kv.value, REQUEST_TAG))
            .flatten()
            .and_then(|fields| match fields.as_slice() {
                [Some(token), to] => Some(HandoffRequest {
                    // Digits only, as Baton writes it (Rust's parser also takes a `+`).
                    token: token
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| token.parse().ok())
                        .flatten()
                        .filter(|t| *t > 0)?,
                    to: to.clone(),
                }),
                _ => None,
            });
        parsed.ok_or_else(|| foreign(key, kv, "a handoff request"))
    }
}

pub(super) fn foreign(key: &str, kv: &KeyValue, what: &str) -> Error {
    Error::ForeignData {
        key: key.to_owned(),
        found: format!(
            "the etcd key {:?}, where Baton keeps {what}, holds {:?}{}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value),
            if kv.lease == 0 {
                " without a lease"
            } else {
                ""
            }
        ),
    }
}

/// One field of a value: `-` for none, else `<length in bytes>:<text>`, so any text fits.
pub(super) fn field(value: Option<&str>) -> String {
    match value {
        None => "-".to_owned(),
        Some(text) => format!("{}:{text}", text.len()),
    }
}

/// The fields of a value tagged `tag`, or `None` when it is not one.
pub(super) fn parse(value: &[u8], tag: &str) -> Option<Vec<Option<String>>> {
    let text = std::str::from_utf8(value).ok()?;
    let mut rest = text.strip_prefix(tag)?;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        rest = rest.strip_prefix(' ')?;
        if let Some(after) = rest.strip_prefix('-') {
            fields.push(None);
            rest = after;
            continue;
        }
        let (len, after) = rest.split_once(':')?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let len: usize = len.parse().ok()?;
        let text = after.get(..len)?;
        fields.push(Some(text.to_owned()));
        rest = &after[len..];
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str, lease: i64) -> KeyValue {
        KeyValue {
            key: mark_key("e").into_bytes(),
            value: value.as_bytes().to_vec(),
            lease,
            ..KeyValue::default()
        }
    }

    #[test]
    fn handoff_keys_are_under_no_elections_prefix() {
        for name in ["e", "a/b", "a", "a:b", "x%2Fy", "baton-handoff:e:mark"] {
            for key in [mark_key(name), request_key(name)] {
                assert!(!key.contains('/'), "{key}");
                assert!(key.starts_with(&handoff_prefix(name)));
            }
        }
        // One election's prefix never covers another's keys.
        assert!(!mark_key("ab").starts_with(&handoff_prefix("a")));
        assert!(!mark_key("a:b").starts_with(&handoff_prefix("a")));
        assert_ne!(handoff_prefix("a/b"), handoff_prefix("a%2Fb"));
    }

    #[test]
    fn marks_and_requests_read_back_and_anything_else_is_foreign() {
        for mark in [
            Mark {
                to: Some("carol".into()),
                from: "alice".into(),
            },
            Mark {
                to: None,
                from: "a b:1 - 2:x".into(),
            },
            Mark {
                to: Some(String::new()),
                from: "ünï".into(),
            },
        ] {
            assert_eq!(Mark::read("e", &kv(&mark.encode(), 7)).unwrap(), mark);
        }
        let request = HandoffRequest {
            token: 42,
            to: Some("bob".into()),
        };
        assert_eq!(
            HandoffRequest::read("e", &kv(&request.encode(), 7)).unwrap(),
            request
        );
        let mark = Mark {
            to: None,
            from: "alice".into(),
        }
        .encode();
        for (value, lease) in [
            (mark.as_str(), 0),
            ("not baton's", 7),
            ("baton-handoff-mark 5:alice", 7),
            ("baton-handoff-mark 9:alice -", 7),
            ("baton-handoff-mark 5:alice - -", 7),
            ("baton-handoff-mark -5:alice -", 7),
            (&request.encode(), 7),
        ] {
            match Mark::read("e", &kv(value, lease)) {
                Err(Error::ForeignData { key, found }) => {
                    assert_eq!(key, "e");
                    assert!(found.contains("baton-handoff:e:mark"), "{found}");
                }
                other => panic!("{value:?}: {other:?}"),
            }
        }
        assert!(HandoffRequest::read("e", &kv("baton-handoff-request 1:0 -", 7)).is_err());
        assert!(HandoffRequest::read("e", &kv(&mark, 7)).is_err());
    }

    #[test]
    fn a_mark_admits_its_candidate_or_anyone_but_the_leaver() {
        let to_carol = Mark {
            to: Some("carol".into()),
            from: "alice".into(),
        };
        assert!(to_carol.admits("carol") && !to_carol.admits("bob") && !to_carol.admits("alice"));
        let to_anyone = Mark {
            to: None,
            from: "alice".into(),
        };
        assert!(to_anyone.admits("bob") && !to_anyone.admits("alice"));
    }
}
