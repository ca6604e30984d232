//! Revisions and their on-disk encoding.
//!
//! A revision is `(main, sub)`: `main` is the store revision a write transaction created, `sub`
//! orders the changes inside it. Records in the `Kv` keyspace are keyed by the 16-byte big-endian
//! encoding, so a forward scan walks history in revision order; a deletion record carries a
//! trailing [`TOMBSTONE_MARK`].

/// A point in the store's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Length of an encoded revision without a tombstone mark.
pub const REVISION_BYTES: usize = 16;

/// Appended to the encoded revision of a deletion record.
pub const TOMBSTONE_MARK: u8 = b't';

impl Revision {
    /// A revision.
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// The sortable 16-byte key of this revision.
    pub fn to_bytes(self) -> [u8; REVISION_BYTES] {
        debug_assert!(
            self.main >= 0 && self.sub >= 0,
            "revisions are never negative: {self:?}"
        );
        let mut out = [0u8; REVISION_BYTES];
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8..].copy_from_slice(&(self.sub as u64).to_be_bytes());
        out
    }

    /// The key of a record at this revision; `tombstone` marks a deletion.
    pub fn record_key(self, tombstone: bool) -> Vec<u8> {
        let mut key = self.to_bytes().to_vec();
        if tombstone {
            key.push(TOMBSTONE_MARK);
        }
        key
    }

    /// Decode a record key into its revision and whether it is a tombstone.
    pub fn from_record_key(key: &[u8]) -> Option<(Revision, bool)> {
        let tombstone = match key.len() {
            REVISION_BYTES => false,
            n if n == REVISION_BYTES + 1 && key[REVISION_BYTES] == TOMBSTONE_MARK => true,
            _ => return None,
        };
        let main = u64::from_be_bytes(key[..8].try_into().ok()?);
        let sub = u64::from_be_bytes(key[8..16].try_into().ok()?);
        if main > i64::MAX as u64 || sub > i64::MAX as u64 {
            return None;
        }
        Some((Revision::new(main as i64, sub as i64), tombstone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_sorts_like_revisions_and_round_trips() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 5),
            Revision::new(2, 0),
            Revision::new(300, 1),
        ];
        for w in revs.windows(2) {
            assert!(w[0].to_bytes() < w[1].to_bytes());
        }
        for r in revs {
            assert_eq!(
                Revision::from_record_key(&r.record_key(false)),
                Some((r, false))
            );
            assert_eq!(
                Revision::from_record_key(&r.record_key(true)),
                Some((r, true))
            );
        }
        assert_eq!(Revision::from_record_key(b"short"), None);
        let mut bad = Revision::new(1, 1).record_key(false);
        bad.push(b'x');
        assert_eq!(Revision::from_record_key(&bad), None);
    }
}
