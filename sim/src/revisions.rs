//! The revision checker: no client ever sees the store's revision go backwards.
//!
//! Each client records, in the order its calls completed, the header revision of every answer it
//! got to a linearizable request (writes, linearizable reads, txns). Since each call begins after
//! the previous one completed, linearizability implies these never decrease — even when the client
//! switches members between calls.

use std::collections::BTreeMap;

/// One answer a client got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub client: String,
    pub what: String,
    pub revision: i64,
}

/// What the checker found wrong: `client` saw `revision` after `earlier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backwards {
    pub client: String,
    pub what: String,
    pub earlier: i64,
    pub revision: i64,
}

/// Check one history (each client's answers in completion order, clients interleaved freely).
pub fn check(history: &[Seen]) -> Result<(), Backwards> {
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    for s in history {
        let top = newest.entry(s.client.as_str()).or_insert(s.revision);
        if s.revision < *top {
            return Err(Backwards {
                client: s.client.clone(),
                what: s.what.clone(),
                earlier: *top,
                revision: s.revision,
            });
        }
        *top = s.revision;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(client: &str, revision: i64) -> Seen {
        Seen {
            client: client.into(),
            what: "get".into(),
            revision,
        }
    }

    #[test]
    fn monotonic_histories_pass() {
        let h = vec![
            seen("a", 1),
            seen("b", 5),
            seen("a", 1),
            seen("a", 3),
            seen("b", 5),
        ];
        assert_eq!(check(&h), Ok(()));
    }

    #[test]
    fn a_revision_going_backwards_is_caught() {
        // Client "a" reads revision 4 from one member, then 3 from a stale one.
        let h = vec![seen("a", 4), seen("b", 1), seen("a", 3)];
        assert_eq!(
            check(&h),
            Err(Backwards {
                client: "a".into(),
                what: "get".into(),
                earlier: 4,
                revision: 3
            })
        );
    }
}
