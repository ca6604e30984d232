//! The replicated lease table: which leases exist, their granted TTL, and the keys attached to each.
//!
//! It is state-machine state (changed only by applied commands, identical on every member); the
//! table is persisted as one `Meta` record per lease, and attachments are rebuilt from the keys' own
//! `lease` field on start. When a lease expires is *not* here: expiry is decided by the leader's clock
//! (see `node::leases`) and carried out as a replicated revoke.

use std::collections::{BTreeMap, BTreeSet};

/// Prefix of lease records in the `Meta` keyspace.
pub const LEASE_RECORD_PREFIX: &[u8] = b"lease/";

/// The `Meta` key of lease `id`.
pub fn record_key(id: i64) -> Vec<u8> {
    let mut key = LEASE_RECORD_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// A lease record: the granted TTL, then (once checkpointed) the remaining TTL.
pub fn encode_record(ttl_secs: i64, remaining_secs: Option<i64>) -> Vec<u8> {
    let mut v = ttl_secs.to_be_bytes().to_vec();
    if let Some(r) = remaining_secs {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

/// Decode [`encode_record`].
pub fn decode_record(v: &[u8]) -> Option<(i64, Option<i64>)> {
    let ttl = i64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let remaining = match v.get(8..16) {
        Some(r) => Some(i64::from_be_bytes(r.try_into().ok()?)),
        None => None,
    };
    Some((ttl, remaining))
}

/// The lease id of a `Meta` key written by [`record_key`].
pub fn id_of_record(key: &[u8]) -> Option<i64> {
    let rest = key.strip_prefix(LEASE_RECORD_PREFIX)?;
    Some(i64::from_be_bytes(rest.try_into().ok()?))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Lease {
    ttl_secs: i64,
    /// The remaining TTL last checkpointed through raft, if any.
    checkpoint_secs: Option<i64>,
    keys: BTreeSet<Vec<u8>>,
}

/// Every live lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// Which lease each attached key belongs to (the reverse of `Lease::keys`).
    key_lease: BTreeMap<Vec<u8>, i64>,
}

impl LeaseTable {
    /// Whether lease `id` exists.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Create lease `id`; false if it already exists.
    pub fn grant(&mut self, id: i64, ttl_secs: i64) -> bool {
        if self.leases.contains_key(&id) {
            return false;
        }
        self.leases.insert(
            id,
            Lease {
                ttl_secs,
                checkpoint_secs: None,
                keys: BTreeSet::new(),
            },
        );
        true
    }

    /// Record a checkpointed remaining TTL; false if the lease does not exist.
    pub fn checkpoint(&mut self, id: i64, remaining_secs: i64) -> bool {
        match self.leases.get_mut(&id) {
            Some(l) => {
                l.checkpoint_secs = Some(remaining_secs);
                true
            }
            None => false,
        }
    }

    /// The remaining TTL last checkpointed for lease `id`.
    pub fn checkpointed_secs(&self, id: i64) -> Option<i64> {
        self.leases.get(&id)?.checkpoint_secs
    }

    /// Remove lease `id`; returns its attached keys (in key order), or `None` if it did not exist.
    pub fn revoke(&mut self, id: i64) -> Option<Vec<Vec<u8>>> {
        let lease = self.leases.remove(&id)?;
        for key in &lease.keys {
            self.key_lease.remove(key);
        }
        Some(lease.keys.into_iter().collect())
    }

    /// Attach `key` to lease `id`, detaching it from any other lease first (id 0 or an unknown
    /// lease: the key ends up attached to none).
    pub fn attach(&mut self, id: i64, key: &[u8]) {
        self.detach(key);
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.insert(key.to_vec());
            self.key_lease.insert(key.to_vec(), id);
        }
    }

    /// Detach `key` from its lease, if any.
    pub fn detach(&mut self, key: &[u8]) {
        if let Some(id) = self.key_lease.remove(key) {
            if let Some(l) = self.leases.get_mut(&id) {
                l.keys.remove(key);
            }
        }
    }

    /// The attached keys from `start` on, in key order, with their leases: lets a walk over a
    /// key range learn each key's lease in one pass instead of a lookup per key.
    pub fn attached_from<'a>(&'a self, start: &[u8]) -> impl Iterator<Item = (&'a [u8], i64)> + 'a {
        self.key_lease
            .range::<[u8], _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .map(|(k, id)| (k.as_slice(), *id))
    }

    /// The granted TTL of lease `id`.
    pub fn ttl_secs(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|l| l.ttl_secs)
    }

    /// Keys attached to lease `id`, in key order.
    pub fn keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every lease id with its granted TTL, in id order.
    pub fn list(&self) -> Vec<(i64, i64)> {
        self.leases
            .iter()
            .map(|(id, l)| (*id, l.ttl_secs))
            .collect()
    }

    /// Number of leases (without listing them).
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// True when there is no lease.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_attach_detach_revoke() {
        let mut t = LeaseTable::default();
        assert!(t.grant(5, 10));
        assert!(!t.grant(5, 20), "an existing id is refused");
        t.attach(5, b"b");
        t.attach(5, b"a");
        t.attach(6, b"x"); // unknown lease: ignored
        t.detach(b"b");
        assert!(t.grant(7, 1));
        t.attach(7, b"a");
        assert_eq!(
            t.keys(5),
            Vec::<Vec<u8>>::new(),
            "re-attaching moves the key"
        );
        t.attach(5, b"a");
        assert_eq!(t.keys(5), vec![b"a".to_vec()]);
        assert_eq!(t.keys(7), Vec::<Vec<u8>>::new());
        assert_eq!(t.list(), vec![(5, 10), (7, 1)]);
        assert_eq!(t.revoke(5), Some(vec![b"a".to_vec()]));
        assert_eq!(t.revoke(5), None);
        assert_eq!(id_of_record(&record_key(-3)), Some(-3));
        assert_eq!(id_of_record(b"other"), None);
        assert_eq!(decode_record(&encode_record(30, None)), Some((30, None)));
        assert_eq!(
            decode_record(&encode_record(30, Some(12))),
            Some((30, Some(12)))
        );
        assert!(t.grant(9, 30));
        assert!(t.checkpoint(9, 12) && !t.checkpoint(10, 1));
        assert_eq!(t.checkpointed_secs(9), Some(12));
    }
}
