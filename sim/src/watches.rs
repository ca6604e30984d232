//! The watch checker: every watcher saw every committed event in its range from its start
//! revision, in revision order, with no gap, no duplicate and nothing that was not committed.
//!
//! The committed history is not known in full from outside (a write whose client timed out may
//! or may not have committed), so the reference is assembled from everything that vouches for an
//! event: acknowledged writes (their revision is in the response header), the final state of the
//! converged cluster (each live key's `mod_revision` and value), and the events every watcher
//! reported. All of these must agree with one another; then each watcher must hold every reference
//! event in its key range between its start revision and the revision it claims to be complete
//! through (its last event, or the last progress notification it received).
//!
//! A watcher that reconnects (the stream broke, it resumes from the revision after its last
//! event, possibly on another member) is one [`Segment`] per stream, so resuming must itself be
//! gapless: the next segment starts at the previous one's last revision + 1.

use std::collections::BTreeMap;

/// What happened to a key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(String),
    Delete,
}

/// One event: a key changed at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub revision: i64,
    pub key: String,
    pub change: Change,
}

/// What one watch stream delivered.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Who watched (for the report).
    pub watcher: String,
    /// The watched keys: `[start_key, end_key)`.
    pub start_key: String,
    pub end_key: String,
    /// The first revision the stream asked for.
    pub start_revision: i64,
    /// Events in the order received.
    pub events: Vec<Committed>,
    /// Every event in range up to this revision has been delivered (the last event's revision,
    /// or the header revision of the last progress notification).
    pub complete_through: i64,
}

impl Segment {
    fn covers(&self, key: &str) -> bool {
        self.start_key.as_str() <= key && key < self.end_key.as_str()
    }
}

/// What the checker found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // built once, on failure
pub enum Violation {
    /// An event was delivered twice.
    Duplicate { watcher: String, event: Committed },
    /// An event came after one with a higher revision.
    Reordered { watcher: String, event: Committed },
    /// An event outside the watched keys or before the start revision.
    OutOfRange { watcher: String, event: Committed },
    /// Two sources disagree on what happened to a key at a revision (a value from nowhere, a
    /// delete that was a put...).
    Conflict {
        revision: i64,
        key: String,
        one: Change,
        other: Change,
        /// Who vouched for `one` and for `other`.
        sources: (String, String),
    },
    /// A committed event in range was not delivered.
    Missed { watcher: String, event: Committed },
    /// A watcher resumed on a new stream past revisions its last stream had not covered.
    ResumeGap {
        watcher: String,
        complete_through: i64,
        resumed_at: i64,
    },
}

/// Check `segments` (each watcher's streams in the order it opened them) against the reference built from themselves, `acknowledged` writes and the
/// final state (`final_state`: one `Committed::Put` per live key at its `mod_revision`).
// The error is built once, when the check fails; boxing it would only add noise at every `?`.
#[allow(clippy::result_large_err)]
pub fn check(
    segments: &[Segment],
    acknowledged: &[Committed],
    final_state: &[Committed],
) -> Result<(), Violation> {
    let mut sources: BTreeMap<(i64, String), String> = BTreeMap::new();
    let mut reference: BTreeMap<(i64, String), Change> = BTreeMap::new();
    let mut vouch = |e: &Committed, source: &str| -> Result<(), Violation> {
        let slot = (e.revision, e.key.clone());
        match reference.get(&slot) {
            Some(known) if *known != e.change => Err(Violation::Conflict {
                revision: e.revision,
                key: e.key.clone(),
                one: known.clone(),
                other: e.change.clone(),
                sources: (sources[&slot].clone(), source.to_string()),
            }),
            Some(_) => Ok(()),
            None => {
                reference.insert(slot.clone(), e.change.clone());
                sources.insert(slot, source.to_string());
                Ok(())
            }
        }
    };
    for e in acknowledged {
        vouch(e, "an acknowledged write or a read")?;
    }
    for e in final_state {
        vouch(e, "the final state")?;
    }
    for s in segments {
        let mut last: Option<(i64, &str)> = None;
        let mut seen = BTreeMap::new();
        for e in &s.events {
            let fail = |f: fn(String, Committed) -> Violation| Err(f(s.watcher.clone(), e.clone()));
            if e.revision < s.start_revision || !s.covers(&e.key) {
                return fail(|watcher, event| Violation::OutOfRange { watcher, event });
            }
            if seen.insert((e.revision, e.key.as_str()), ()).is_some() {
                return fail(|watcher, event| Violation::Duplicate { watcher, event });
            }
            if last.is_some_and(|(rev, _)| e.revision < rev) {
                return fail(|watcher, event| Violation::Reordered { watcher, event });
            }
            last = Some((e.revision, &e.key));
            vouch(e, &s.watcher)?;
        }
    }
    // One watcher's streams, in order, must leave no revision uncovered between them (a watcher
    // that gives up on its history, after a compaction say, takes a new name).
    let mut covered: BTreeMap<&str, i64> = BTreeMap::new();
    for s in segments {
        if let Some(&through) = covered.get(s.watcher.as_str()) {
            if s.start_revision > through + 1 {
                return Err(Violation::ResumeGap {
                    watcher: s.watcher.clone(),
                    complete_through: through,
                    resumed_at: s.start_revision,
                });
            }
        }
        let through = covered
            .entry(s.watcher.as_str())
            .or_insert(s.complete_through);
        *through = (*through).max(s.complete_through);
    }
    for s in segments {
        let delivered: BTreeMap<(i64, &str), ()> = s
            .events
            .iter()
            .map(|e| ((e.revision, e.key.as_str()), ()))
            .collect();
        let window = (s.start_revision, String::new())..(s.complete_through + 1, String::new());
        for ((revision, key), change) in reference.range(window) {
            if s.covers(key) && !delivered.contains_key(&(*revision, key.as_str())) {
                return Err(Violation::Missed {
                    watcher: s.watcher.clone(),
                    event: Committed {
                        revision: *revision,
                        key: key.clone(),
                        change: change.clone(),
                    },
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str, value: &str) -> Committed {
        Committed {
            revision,
            key: key.into(),
            change: Change::Put(value.into()),
        }
    }

    fn del(revision: i64, key: &str) -> Committed {
        Committed {
            revision,
            key: key.into(),
            change: Change::Delete,
        }
    }

    fn segment(start_revision: i64, events: Vec<Committed>, complete_through: i64) -> Segment {
        Segment {
            watcher: "w".into(),
            start_key: "k".into(),
            end_key: "l".into(),
            start_revision,
            events,
            complete_through,
        }
    }

    /// Revisions 2..=5: k1=a, k2=b, other=x (outside "k".."l"), k1 deleted.
    fn acked() -> Vec<Committed> {
        vec![
            put(2, "k1", "a"),
            put(3, "k2", "b"),
            put(4, "other", "x"),
            del(5, "k1"),
        ]
    }

    #[test]
    fn a_complete_history_passes() {
        let s = segment(
            2,
            vec![put(2, "k1", "a"), put(3, "k2", "b"), del(5, "k1")],
            5,
        );
        assert_eq!(check(&[s], &acked(), &[put(3, "k2", "b")]), Ok(()));
        // Resumed after revision 3 on another stream: still complete.
        let a = segment(1, vec![put(2, "k1", "a"), put(3, "k2", "b")], 3);
        let b = segment(4, vec![del(5, "k1")], 5);
        assert_eq!(check(&[a, b], &acked(), &[]), Ok(()));
        // An event nobody acknowledged (its client timed out) is fine if it is consistent.
        let c = segment(
            2,
            vec![
                put(2, "k1", "a"),
                put(3, "k2", "b"),
                del(5, "k1"),
                put(6, "k3", "z"),
            ],
            6,
        );
        assert_eq!(check(&[c], &acked(), &[]), Ok(()));
    }

    #[test]
    fn a_gap_is_caught() {
        let s = segment(2, vec![put(2, "k1", "a"), del(5, "k1")], 5);
        assert!(matches!(
            check(&[s], &acked(), &[]),
            Err(Violation::Missed { event, .. }) if event.revision == 3
        ));
        // A resumed watcher that skipped a revision between its streams.
        let a = segment(2, vec![put(2, "k1", "a")], 2);
        let b = segment(4, vec![del(5, "k1")], 5);
        assert!(check(&[a, b], &acked(), &[]).is_err());
    }

    #[test]
    fn a_duplicated_event_is_caught() {
        let s = segment(
            2,
            vec![put(2, "k1", "a"), put(3, "k2", "b"), put(3, "k2", "b")],
            3,
        );
        assert!(matches!(
            check(&[s], &acked(), &[]),
            Err(Violation::Duplicate { .. })
        ));
    }

    #[test]
    fn a_reordered_event_is_caught() {
        let s = segment(
            2,
            vec![put(3, "k2", "b"), put(2, "k1", "a"), del(5, "k1")],
            5,
        );
        assert!(matches!(
            check(&[s], &acked(), &[]),
            Err(Violation::Reordered { .. })
        ));
    }

    #[test]
    fn a_wrong_or_invented_event_is_caught() {
        // The value differs from the acknowledged write at that revision.
        let s = segment(
            2,
            vec![put(2, "k1", "WRONG"), put(3, "k2", "b"), del(5, "k1")],
            5,
        );
        assert!(matches!(
            check(&[s], &acked(), &[]),
            Err(Violation::Conflict { .. })
        ));
        // Two watchers disagree about an unacknowledged revision.
        let a = segment(6, vec![put(6, "k3", "z")], 6);
        let b = segment(6, vec![del(6, "k3")], 6);
        assert!(matches!(
            check(&[a, b], &acked(), &[]),
            Err(Violation::Conflict { .. })
        ));
        // The final state contradicts what the watcher saw.
        let s = segment(
            2,
            vec![put(2, "k1", "a"), put(3, "k2", "b"), del(5, "k1")],
            5,
        );
        assert!(check(&[s], &acked(), &[put(3, "k2", "c")]).is_err());
    }

    #[test]
    fn an_event_out_of_range_or_too_old_is_caught() {
        let s = segment(
            2,
            vec![put(2, "k1", "a"), put(3, "k2", "b"), put(4, "other", "x")],
            4,
        );
        assert!(matches!(
            check(&[s], &acked(), &[]),
            Err(Violation::OutOfRange { .. })
        ));
        let s = segment(3, vec![put(2, "k1", "a"), put(3, "k2", "b")], 3);
        assert!(matches!(
            check(&[s], &acked(), &[]),
            Err(Violation::OutOfRange { .. })
        ));
    }
}
