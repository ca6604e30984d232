//! The lease checker: revoked or expired leases leave no keys, and (where the run says the
//! cluster was quiet) no key outlives its lease's expiry by more than a stated bound.
//!
//! Input is what lease clients saw, with simulated times in microseconds: when a lease was
//! granted and with which TTL, every keep-alive sent, when a revoke was acknowledged, when a
//! client learned the lease was gone (`TimeToLive` answered -1, a keep-alive answered TTL 0), and
//! every linearizable read of a leased key (each key is attached to one lease and never written
//! again). A read that *began* after the lease was known gone and still found the key is a
//! violation. Under the expiry bound, a read that began later than the lease's latest possible
//! expiry (the last grant or keep-alive sent, plus the TTL) plus the bound must not find the key.

use std::collections::BTreeMap;

/// One thing a lease client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The lease was granted (acknowledged at `at`) with `ttl_secs`.
    Granted { lease: i64, at: u64, ttl_secs: i64 },
    /// A keep-alive for the lease was sent at `at` (acknowledged or not: it may renew the lease
    /// whenever it arrives).
    KeepAliveSent { lease: i64, at: u64 },
    /// The client learned at `at` that the lease no longer exists (revoke acknowledged,
    /// `TimeToLive` -1, keep-alive answered with TTL 0).
    Gone { lease: i64, at: u64 },
    /// A linearizable read of `key` (attached to `lease`) invoked at `invoke` found it or not.
    Read {
        key: String,
        lease: i64,
        invoke: u64,
        present: bool,
    },
}

/// What the checker found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A key was read after its lease was known revoked or expired.
    KeyOutlivedLease {
        key: String,
        lease: i64,
        gone_at: u64,
        read_at: u64,
    },
    /// A key was read later than its lease's expiry plus the bound.
    ExpiryLate {
        key: String,
        lease: i64,
        deadline: u64,
        read_at: u64,
    },
}

/// Check `history`. `expiry_bound_micros`: if set, the stated bound on how long a key may outlive
/// its lease's expiry (only meaningful for leases whose whole life was fault-free).
pub fn check(history: &[Observation], expiry_bound_micros: Option<u64>) -> Result<(), Violation> {
    let mut gone: BTreeMap<i64, u64> = BTreeMap::new();
    let mut ttl: BTreeMap<i64, u64> = BTreeMap::new();
    let mut last_renewal: BTreeMap<i64, u64> = BTreeMap::new();
    for o in history {
        match *o {
            Observation::Granted {
                lease,
                at,
                ttl_secs,
            } => {
                ttl.insert(lease, ttl_secs.max(0) as u64 * 1_000_000);
                let r = last_renewal.entry(lease).or_insert(at);
                *r = (*r).max(at);
            }
            Observation::KeepAliveSent { lease, at } => {
                let r = last_renewal.entry(lease).or_insert(at);
                *r = (*r).max(at);
            }
            Observation::Gone { lease, at } => {
                let g = gone.entry(lease).or_insert(at);
                *g = (*g).min(at);
            }
            Observation::Read { .. } => {}
        }
    }
    for o in history {
        let Observation::Read {
            key,
            lease,
            invoke,
            present: true,
        } = o
        else {
            continue;
        };
        if let Some(&gone_at) = gone.get(lease) {
            if *invoke > gone_at {
                return Err(Violation::KeyOutlivedLease {
                    key: key.clone(),
                    lease: *lease,
                    gone_at,
                    read_at: *invoke,
                });
            }
        }
        if let (Some(bound), Some(ttl), Some(renewed)) =
            (expiry_bound_micros, ttl.get(lease), last_renewal.get(lease))
        {
            let deadline = renewed + ttl + bound;
            if *invoke > deadline {
                return Err(Violation::ExpiryLate {
                    key: key.clone(),
                    lease: *lease,
                    deadline,
                    read_at: *invoke,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// Lease 7 granted at time 0 for `ttl_secs`.
    fn granted(ttl_secs: i64) -> Observation {
        Observation::Granted {
            lease: 7,
            at: 0,
            ttl_secs,
        }
    }

    fn read(at: u64, present: bool) -> Observation {
        Observation::Read {
            key: "lk".into(),
            lease: 7,
            invoke: at,
            present,
        }
    }

    #[test]
    fn a_lease_kept_alive_keeps_its_key() {
        let h = vec![
            granted(2),
            Observation::KeepAliveSent { lease: 7, at: S },
            Observation::KeepAliveSent {
                lease: 7,
                at: 2 * S,
            },
            read(3 * S, true),
            Observation::Gone {
                lease: 7,
                at: 6 * S,
            },
            read(7 * S, false),
        ];
        assert_eq!(check(&h, Some(S)), Ok(()));
    }

    #[test]
    fn a_key_read_after_its_revoke_is_caught() {
        let h = vec![
            granted(60),
            Observation::Gone { lease: 7, at: S },
            read(2 * S, true),
        ];
        assert!(matches!(
            check(&h, None),
            Err(Violation::KeyOutlivedLease { .. })
        ));
        // A read that began before the revoke was acknowledged may still see the key.
        let h = vec![
            granted(60),
            read(S / 2, true),
            Observation::Gone { lease: 7, at: S },
        ];
        assert_eq!(check(&h, None), Ok(()));
    }

    #[test]
    fn a_key_outliving_its_expiry_is_caught() {
        let h = vec![
            granted(2),
            Observation::KeepAliveSent { lease: 7, at: S },
            read(5 * S, true),
        ];
        assert!(matches!(
            check(&h, Some(S)),
            Err(Violation::ExpiryLate { .. })
        ));
        // Within TTL + bound of the last keep-alive: fine.
        let h = vec![
            granted(2),
            Observation::KeepAliveSent { lease: 7, at: S },
            read(3 * S + S / 2, true),
        ];
        assert_eq!(check(&h, Some(S)), Ok(()));
    }
}
