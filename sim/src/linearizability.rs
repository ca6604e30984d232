//! A linearizability checker for key-value histories (Wing & Gong's search with memoization, as
//! Porcupine does), partitioned per key: each key is an independent register.
//!
//! A history is what clients saw: each operation's invocation and completion time and its result.
//! An operation that failed or timed out "may or may not have happened" (as Jepsen treats it): a
//! write with an unknown outcome may take effect at any point after its invocation, or never; a
//! read with an unknown outcome tells nothing and is dropped. The search has a step budget: when it
//! is spent the verdict is [`Verdict::Unknown`], never a silent pass.

use std::collections::{BTreeMap, BTreeSet};

/// What a client asked and, if it completed, what it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `put key value`; `ok` is false when the client does not know whether it happened.
    Write { value: String, ok: bool },
    /// `get key`: the value read (None: the key did not exist); `None` result when the read
    /// failed.
    Read { result: Option<Option<String>> },
    /// `delete key`; `ok` as for writes.
    Delete { ok: bool },
    /// A compare-and-swap txn: if the value is `expect` (None: the key does not exist) put
    /// `value`. `succeeded`: the txn's answer, `None` when the client does not know whether it
    /// happened (then it may have taken effect, if the compare held, or not at all).
    Cas {
        expect: Option<String>,
        value: String,
        succeeded: Option<bool>,
        /// For a swap that failed: the value its failure branch read in the same txn (`None`
        /// when it did not read), so the failure is explained by what was there.
        found: Option<Option<String>>,
    },
}

/// One operation on one key, with its real-time window. `complete` is `None` when the client
/// never learned the outcome (the operation stays open until the end of time).
#[derive(Debug, Clone)]
pub struct Event {
    pub key: String,
    pub op: Op,
    pub invoke: u64,
    pub complete: Option<u64>,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history has a linearization.
    Linearizable,
    /// This key's history has none: a stale read, a lost write, a value from nowhere...
    NotLinearizable { key: String },
    /// The budget ran out on this key before the search finished.
    Unknown { key: String },
}

/// Check `history` with at most `budget` search steps per key.
pub fn check(history: &[Event], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in history {
        by_key.entry(e.key.as_str()).or_default().push(e);
    }
    for (key, events) in by_key {
        match check_register(&events, budget) {
            Some(true) => {}
            Some(false) => {
                return Verdict::NotLinearizable {
                    key: key.to_string(),
                }
            }
            None => {
                return Verdict::Unknown {
                    key: key.to_string(),
                }
            }
        }
    }
    Verdict::Linearizable
}

/// One register operation prepared for the search.
struct Entry {
    op: Op,
    invoke: u64,
    /// `u64::MAX` for an operation that never completed.
    complete: u64,
    /// Whether the operation must be linearized (a completed one) or may be left out (unknown).
    required: bool,
}

/// The value an operation leaves in the register if it takes effect (`None`: absent); `None`
/// for reads.
fn written(op: &Op) -> Option<Option<&str>> {
    match op {
        Op::Write { value, .. } | Op::Cas { value, .. } => Some(Some(value.as_str())),
        Op::Delete { .. } => Some(None),
        Op::Read { .. } => None,
    }
}

/// Whether an operation with an unknown outcome can be left out of the search without changing
/// the verdict: nothing ever observed the value it would have written (no read returned it, no
/// compare-and-swap expected it), so having it take effect can only make later observations
/// harder to explain; except that it could explain a failed compare-and-swap, so it is kept
/// unless it began after every failed one had completed. Histories with many failed calls (a
/// faulty network) otherwise multiply the search by two per such call.
fn unobserved(e: &Event, events: &[&Event]) -> bool {
    let Some(value) = written(&e.op) else {
        return false;
    };
    let observed = events.iter().any(|o| match &o.op {
        Op::Read { result: Some(read) } => read.as_deref() == value,
        Op::Cas { expect, found, .. } => {
            expect.as_deref() == value || found.as_ref().is_some_and(|f| f.as_deref() == value)
        }
        _ => false,
    });
    let after_failed_swaps = events.iter().all(|o| match &o.op {
        Op::Cas {
            succeeded: Some(false),
            found: None,
            ..
        } => o.complete.is_some_and(|c| c < e.invoke),
        _ => true,
    });
    !observed && after_failed_swaps
}

/// `Some(true)`: linearizable, `Some(false)`: not, `None`: budget spent.
fn check_register(events: &[&Event], budget: u64) -> Option<bool> {
    let entries: Vec<Entry> = events
        .iter()
        .filter_map(|e| {
            let unknown = match &e.op {
                Op::Write { ok, .. } | Op::Delete { ok } => !ok,
                Op::Cas { succeeded, .. } => succeeded.is_none(),
                // A failed read constrains nothing.
                Op::Read { result: None } => return None,
                Op::Read { .. } => false,
            };
            if unknown && unobserved(e, events) {
                return None;
            }
            Some(Entry {
                op: e.op.clone(),
                invoke: e.invoke,
                complete: if unknown {
                    u64::MAX
                } else {
                    e.complete.unwrap_or(u64::MAX)
                },
                required: !unknown,
            })
        })
        .collect();
    let mut steps = 0u64;
    let mut seen = BTreeSet::new();
    search(
        &entries,
        &mut vec![false; entries.len()],
        None,
        &mut seen,
        &mut steps,
        budget,
    )
}

/// Depth-first: pick a next operation among those whose invocation precedes every pending
/// operation's completion (so real-time order holds), apply it to the register state, recurse.
fn search(
    entries: &[Entry],
    done: &mut [bool],
    state: Option<&str>,
    seen: &mut BTreeSet<(Vec<bool>, Option<String>)>,
    steps: &mut u64,
    budget: u64,
) -> Option<bool> {
    if entries
        .iter()
        .zip(done.iter())
        .all(|(e, d)| *d || !e.required)
    {
        return Some(true);
    }
    *steps += 1;
    if *steps > budget {
        return None;
    }
    if !seen.insert((done.to_vec(), state.map(str::to_string))) {
        return Some(false);
    }
    // An operation may go next only if it was invoked before every other pending required
    // operation completed.
    let horizon = entries
        .iter()
        .zip(done.iter())
        .filter(|(e, d)| !**d && e.required)
        .map(|(e, _)| e.complete)
        .min()
        .unwrap_or(u64::MAX);
    let mut exhausted = true;
    // Completed operations first, those with an unknown outcome last: most unknown writes never
    // happened (their client's member was cut off), so the search tries "it did not happen yet"
    // before "it happened here". Same verdict, found far sooner (every order is still tried).
    let order = (0..entries.len())
        .filter(|i| entries[*i].required)
        .chain((0..entries.len()).filter(|i| !entries[*i].required));
    for i in order {
        if done[i] || entries[i].invoke > horizon {
            continue;
        }
        let next_state = match &entries[i].op {
            Op::Write { value, .. } => Some(value.as_str()),
            Op::Delete { .. } => None,
            Op::Cas {
                expect,
                value,
                succeeded,
                found,
            } => {
                let holds = expect.as_deref() == state;
                let seen_here = found.as_ref().is_none_or(|f| f.as_deref() == state);
                match succeeded {
                    Some(true) if holds => Some(value.as_str()),
                    Some(false) if !holds && seen_here => state,
                    Some(_) => continue,
                    // Unknown: had it happened here, the compare decides.
                    None if holds => Some(value.as_str()),
                    None => state,
                }
            }
            Op::Read { result } => {
                let read = result.as_ref().expect("failed reads are dropped");
                if read.as_deref() != state {
                    continue;
                }
                state
            }
        };
        done[i] = true;
        let found = search(entries, done, next_state, seen, steps, budget);
        done[i] = false;
        match found {
            Some(true) => return Some(true),
            None => exhausted = false,
            Some(false) => {}
        }
    }
    if exhausted {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(key: &str, v: &str, invoke: u64, complete: u64) -> Event {
        Event {
            key: key.into(),
            op: Op::Write {
                value: v.into(),
                ok: true,
            },
            invoke,
            complete: Some(complete),
        }
    }

    fn r(key: &str, v: Option<&str>, invoke: u64, complete: u64) -> Event {
        Event {
            key: key.into(),
            op: Op::Read {
                result: Some(v.map(str::to_string)),
            },
            invoke,
            complete: Some(complete),
        }
    }

    const BUDGET: u64 = 100_000;

    fn cas(key: &str, expect: Option<&str>, v: &str, ok: Option<bool>, at: (u64, u64)) -> Event {
        Event {
            key: key.into(),
            op: Op::Cas {
                expect: expect.map(str::to_string),
                value: v.into(),
                succeeded: ok,
                found: None,
            },
            invoke: at.0,
            complete: ok.map(|_| at.1),
        }
    }

    fn del(key: &str, invoke: u64, complete: u64) -> Event {
        Event {
            key: key.into(),
            op: Op::Delete { ok: true },
            invoke,
            complete: Some(complete),
        }
    }

    #[test]
    fn compare_and_swap_histories() {
        // Create-if-absent, then a swap on the value read, then a failed swap on a stale value.
        let good = vec![
            cas("k", None, "a", Some(true), (0, 1)),
            cas("k", Some("a"), "b", Some(true), (2, 3)),
            cas("k", Some("a"), "c", Some(false), (4, 5)),
            r("k", Some("b"), 6, 7),
        ];
        assert_eq!(check(&good, BUDGET), Verdict::Linearizable);
        // Lost update: two swaps from the same value both succeed, one after the other.
        let lost_update = vec![
            w("k", "a", 0, 1),
            cas("k", Some("a"), "b", Some(true), (2, 3)),
            cas("k", Some("a"), "c", Some(true), (4, 5)),
        ];
        assert!(matches!(
            check(&lost_update, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
        // A swap that failed although its compare held (nothing else wrote).
        let spurious_failure = vec![
            w("k", "a", 0, 1),
            cas("k", Some("a"), "b", Some(false), (2, 3)),
        ];
        assert!(matches!(
            check(&spurious_failure, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
        // An unknown swap explains a later read of its value, or nothing at all.
        let unknown = vec![
            w("k", "a", 0, 1),
            cas("k", Some("a"), "b", None, (2, 0)),
            r("k", Some("b"), 10, 11),
        ];
        assert_eq!(check(&unknown, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn unobserved_unknown_writes_do_not_blow_up_the_search() {
        // Forty writes whose outcome is unknown and whose values nobody read: 2^40 subsets if
        // each were searched; left out, the rest checks in a few steps. A stale read still fails.
        let mut h: Vec<Event> = (0..40)
            .map(|i| Event {
                key: "k".into(),
                op: Op::Write {
                    value: format!("lost{i}"),
                    ok: false,
                },
                invoke: 10 + i,
                complete: None,
            })
            .collect();
        h.push(w("k", "a", 0, 1));
        h.push(r("k", Some("a"), 100, 101));
        assert_eq!(check(&h, 1_000), Verdict::Linearizable);
        h.push(w("k", "b", 102, 103));
        h.push(r("k", Some("a"), 104, 105));
        assert!(matches!(check(&h, 1_000), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn an_unknown_write_can_explain_a_failed_swap() {
        // The swap from "a" failed: only the unknown write of "b" (never read) explains it.
        let h = vec![
            w("k", "a", 0, 1),
            Event {
                key: "k".into(),
                op: Op::Write {
                    value: "b".into(),
                    ok: false,
                },
                invoke: 2,
                complete: None,
            },
            cas("k", Some("a"), "c", Some(false), (3, 4)),
        ];
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_failed_swap_reads_what_was_there() {
        let failed = |found: Option<&str>| Event {
            key: "k".into(),
            op: Op::Cas {
                expect: Some("x".into()),
                value: "c".into(),
                succeeded: Some(false),
                found: Some(found.map(str::to_string)),
            },
            invoke: 4,
            complete: Some(5),
        };
        let good = vec![w("k", "a", 0, 1), failed(Some("a"))];
        assert_eq!(check(&good, BUDGET), Verdict::Linearizable);
        // It read a value that was overwritten before it began: a stale read inside a txn.
        let stale = vec![w("k", "old", 0, 1), w("k", "a", 2, 3), failed(Some("old"))];
        assert!(matches!(
            check(&stale, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_read_of_a_deleted_key_is_caught() {
        let h = vec![w("k", "a", 0, 1), del("k", 2, 3), r("k", Some("a"), 4, 5)];
        assert!(matches!(check(&h, BUDGET), Verdict::NotLinearizable { .. }));
        let fine = vec![w("k", "a", 0, 1), del("k", 2, 3), r("k", None, 4, 5)];
        assert_eq!(check(&fine, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let h = vec![
            r("k", None, 0, 1),
            w("k", "a", 2, 3),
            r("k", Some("a"), 4, 5),
            // Overlapping write and read: the read may see either value.
            w("k", "b", 6, 10),
            r("k", Some("a"), 7, 8),
            r("k", Some("b"), 11, 12),
            w("j", "x", 0, 100),
        ];
        assert_eq!(check(&h, BUDGET), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = vec![
            w("k", "a", 0, 1),
            w("k", "b", 2, 3),
            // Began after b was acknowledged, yet saw a.
            r("k", Some("a"), 4, 5),
        ];
        assert_eq!(
            check(&h, BUDGET),
            Verdict::NotLinearizable { key: "k".into() }
        );
    }

    #[test]
    fn a_lost_write_is_caught() {
        let h = vec![w("k", "a", 0, 1), r("k", None, 2, 3)];
        assert_eq!(
            check(&h, BUDGET),
            Verdict::NotLinearizable { key: "k".into() }
        );
    }

    #[test]
    fn a_value_from_nowhere_is_caught() {
        let h = vec![w("k", "a", 0, 1), r("k", Some("z"), 2, 3)];
        assert!(matches!(check(&h, BUDGET), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let unknown = Event {
            key: "k".into(),
            op: Op::Write {
                value: "b".into(),
                ok: false,
            },
            invoke: 2,
            complete: None,
        };
        let happened = vec![
            w("k", "a", 0, 1),
            unknown.clone(),
            r("k", Some("b"), 10, 11),
        ];
        assert_eq!(check(&happened, BUDGET), Verdict::Linearizable);
        let did_not = vec![
            w("k", "a", 0, 1),
            unknown.clone(),
            r("k", Some("a"), 10, 11),
        ];
        assert_eq!(check(&did_not, BUDGET), Verdict::Linearizable);
        // But not before it was invoked.
        let late = Event {
            invoke: 5,
            ..unknown
        };
        let too_early = vec![w("k", "a", 0, 1), r("k", Some("b"), 2, 3), late];
        assert!(matches!(
            check(&too_early, BUDGET),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_spent_budget_says_unknown() {
        // Many concurrent writes and a read of the first value at the end: a large search.
        let mut h: Vec<Event> = (0..12).map(|i| w("k", &format!("v{i}"), 0, 100)).collect();
        h.push(r("k", Some("nope"), 200, 201));
        assert_eq!(check(&h, 50), Verdict::Unknown { key: "k".into() });
    }
}
