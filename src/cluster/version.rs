//! The etcd versions a MetaStore cluster presents, and its replicated downgrade setting.
//!
//! etcd has three versions: the server's (its binary), the cluster's (the lowest major.minor all
//! members run, lowered to the target while a downgrade is enabled) and the storage's (the schema
//! of its bbolt file, which follows the cluster version). Every MetaStore member serves the same
//! etcd API, so a MetaStore cluster is always a single-version cluster:
//!
//! - the server version is [`SERVER_VERSION`], the etcd release whose API MetaStore serves (3.7:
//!   `RangeStream`, `AuthStatus` without a token, and the 3.6 fields and `Downgrade`);
//! - the cluster version is that release's major.minor, or the downgrade target while a downgrade
//!   is enabled (where an etcd 3.6 cluster settles a few seconds after `downgrade enable`: its
//!   leader lowers the cluster version, then each member its storage version);
//! - the storage version is the cluster version with patch 0, as etcd 3.6 reports it.
//!
//! The downgrade setting (etcd's `DowngradeInfo`) goes through raft (`Command.downgrade`) and is
//! stored in the `Meta` keyspace, so every member reports the same one and it survives restarts
//! and travels in raft snapshots. Enabling checks, at apply, what etcd checks before proposing
//! (the target is the cluster version's previous minor, no downgrade already enabled), so two
//! racing requests cannot both succeed. No MetaStore member runs an older release, so a downgrade
//! never completes by itself (etcd cancels it once every member runs the target): it lasts until
//! cancelled. What it changes is what the cluster reports.
//!
//! MetaStore's snapshot files (`etcdctl snapshot save`) are written in etcd 3.5's schema whatever
//! the cluster version ([`SNAPSHOT_FILE_VERSION`]), so etcd 3.5 and later restore them.

use std::fmt;

use prost::Message;

use crate::pb::etcdserverpb::DowngradeInfo;
use crate::storage::{Engine, Keyspace, StorageError, WriteBatch};

/// The etcd release whose API MetaStore serves: `Status.version`, `/version`'s `etcdserver`.
pub const SERVER_VERSION: &str = "3.7.0";

/// The etcd schema of the snapshot files MetaStore writes: the cluster version recorded in them and
/// `SnapshotResponse.version` (etcd's storage version of the file it sends).
pub const SNAPSHOT_FILE_VERSION: &str = "3.5.0";

/// Where the downgrade setting is stored in the `Meta` keyspace.
pub(crate) const DOWNGRADE_KEY: &[u8] = b"cluster/downgrade";

/// A cluster version: major.minor (etcd drops the patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
}

impl Version {
    /// The cluster version of a MetaStore cluster without a downgrade.
    pub fn serving() -> Version {
        parse_semver(SERVER_VERSION).expect("SERVER_VERSION is a version")
    }

    /// `major.minor`, as etcd's `DowngradeResponse.version` shows a cluster version.
    pub fn short(self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    /// The only version a cluster at this version may be downgraded to: one minor lower (etcd's
    /// `allowedDowngradeVersion`); none below a `.0`.
    pub fn downgrade_target(self) -> Option<Version> {
        Some(Version {
            major: self.major,
            minor: self.minor.checked_sub(1)?,
        })
    }
}

impl fmt::Display for Version {
    /// `major.minor.0`, as etcd writes a cluster or storage version.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.0", self.major, self.minor)
    }
}

/// `major.minor.patch` with an optional `-prerelease` and `+metadata`, as etcd's semver library
/// reads it (each number decimal digits, leading zeros allowed), reduced to major.minor.
fn parse_semver(text: &str) -> Option<Version> {
    let text = text.split_once('+').map_or(text, |(v, _)| v);
    let text = text.split_once('-').map_or(text, |(v, _)| v);
    let mut parts = text.splitn(3, '.');
    let mut number = || -> Option<u64> {
        let part = parts.next()?;
        // Go's ParseInt into an int64: digits only here (a sign was split off above).
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse::<i64>().ok().map(|n| n as u64)
    };
    let (major, minor, _patch) = (number()?, number()?, number()?);
    Some(Version { major, minor })
}

/// A downgrade target as etcd accepts one (`convertToClusterVersion`): a semantic version, or
/// major.minor alone; `None` is etcd's "wrong downgrade target version format".
pub fn parse_downgrade_target(text: &str) -> Option<Version> {
    parse_semver(text).or_else(|| parse_semver(&format!("{text}.0")))
}

fn corrupt(reason: String) -> StorageError {
    StorageError::Corrupt {
        ks: Keyspace::Meta,
        reason,
    }
}

/// Why a downgrade change was refused (etcd's texts are in `api::status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DowngradeError {
    #[error("wrong downgrade target version format")]
    WrongFormat,
    #[error("invalid downgrade target version")]
    InvalidTarget,
    #[error("cluster has a downgrade job in progress")]
    InProcess,
    #[error("no inflight downgrade job")]
    NoInflight,
}

/// The cluster's replicated version state: the downgrade target, while one is enabled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionState {
    downgrade: Option<Version>,
}

impl VersionState {
    /// The state stored in `engine` (none stored: no downgrade).
    pub fn load(engine: &dyn Engine) -> Result<VersionState, StorageError> {
        let Some(bytes) = engine.get(Keyspace::Meta, DOWNGRADE_KEY)? else {
            return Ok(VersionState::default());
        };
        // Only apply writes this record, from a target it parsed: anything else is a corrupt store.
        let info = DowngradeInfo::decode(bytes.as_slice())
            .map_err(|e| corrupt(format!("downgrade record: {e}")))?;
        let downgrade = match info.enabled {
            false => None,
            true => Some(parse_semver(&info.target_version).ok_or_else(|| {
                corrupt(format!(
                    "downgrade record: target {:?}",
                    info.target_version
                ))
            })?),
        };
        Ok(VersionState { downgrade })
    }

    /// The cluster version: the downgrade target while a downgrade is enabled.
    pub fn cluster_version(&self) -> Version {
        self.downgrade.unwrap_or_else(Version::serving)
    }

    /// Whether a downgrade is enabled.
    pub fn downgrading(&self) -> bool {
        self.downgrade.is_some()
    }

    /// The setting as `StatusResponse.downgradeInfo` shows it (the target empty when disabled).
    pub fn info(&self) -> DowngradeInfo {
        DowngradeInfo {
            enabled: self.downgrading(),
            target_version: self.downgrade.map(|v| v.to_string()).unwrap_or_default(),
        }
    }

    /// Whether a downgrade to `target` may be enabled now (etcd's `DowngradeValidate`).
    pub fn check_enable(&self, target: Version) -> Result<(), DowngradeError> {
        if self.cluster_version().downgrade_target() != Some(target) {
            return Err(DowngradeError::InvalidTarget);
        }
        if self.downgrading() {
            return Err(DowngradeError::InProcess);
        }
        Ok(())
    }

    /// Apply a replicated change (`enabled` with a target, or a cancel): checked whole first, then
    /// recorded in `batch` and in `self`. Returns the cluster version before the change, which is
    /// what etcd's `Downgrade` answers with.
    pub fn apply(
        &mut self,
        change: &DowngradeInfo,
        batch: &mut WriteBatch,
    ) -> Result<Version, DowngradeError> {
        let before = self.cluster_version();
        let next = if change.enabled {
            let target = parse_semver(&change.target_version).ok_or(DowngradeError::WrongFormat)?;
            self.check_enable(target)?;
            Some(target)
        } else {
            if !self.downgrading() {
                return Err(DowngradeError::NoInflight);
            }
            None
        };
        let next = VersionState { downgrade: next };
        batch.put(Keyspace::Meta, DOWNGRADE_KEY, next.info().encode_to_vec());
        *self = next;
        Ok(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{Durability, MemoryEngine};

    fn v(major: u64, minor: u64) -> Version {
        Version { major, minor }
    }

    #[test]
    fn targets_parse_as_etcd_reads_them() {
        // Accepted by etcd 3.5.1's Downgrade VALIDATE (tests/etcd36_api.rs compares them).
        for (text, want) in [
            ("3.6", v(3, 6)),
            ("3.6.0", v(3, 6)),
            ("3.6.9", v(3, 6)),
            ("03.06", v(3, 6)),
            ("3.6.9-rc.1+build.7", v(3, 6)),
        ] {
            assert_eq!(parse_downgrade_target(text), Some(want), "{text:?}");
        }
        for text in [
            "",
            "3",
            "x",
            "v3.6",
            "3.6.0.1",
            "3..6",
            "3.6.",
            " 3.6",
            "3.-6",
            "3.+6",
            "3.6x",
            "3.6-rc",
            "99999999999999999999.1",
        ] {
            assert_eq!(parse_downgrade_target(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_downgrade_goes_one_minor_down_and_back() {
        let engine = MemoryEngine::new();
        let mut state = VersionState::load(&engine).unwrap();
        let serving = Version::serving();
        let target = serving.downgrade_target().unwrap();
        assert_eq!(state.cluster_version(), serving);
        assert_eq!(
            state.info(),
            DowngradeInfo {
                enabled: false,
                target_version: String::new()
            }
        );
        assert_eq!(
            state.check_enable(serving),
            Err(DowngradeError::InvalidTarget)
        );
        assert_eq!(
            state.check_enable(target.downgrade_target().unwrap()),
            Err(DowngradeError::InvalidTarget)
        );
        assert_eq!(state.check_enable(target), Ok(()));

        let mut batch = WriteBatch::new();
        let cancel = DowngradeInfo::default();
        assert_eq!(
            state.apply(&cancel, &mut batch),
            Err(DowngradeError::NoInflight)
        );
        let enable = DowngradeInfo {
            enabled: true,
            target_version: target.to_string(),
        };
        assert_eq!(state.apply(&enable, &mut batch), Ok(serving));
        assert_eq!(state.cluster_version(), target);
        assert_eq!(state.info().target_version, target.to_string());
        engine.write(batch, Durability::Sync).unwrap();
        // Stored: a restart reads it back.
        assert_eq!(VersionState::load(&engine).unwrap(), state);

        // Enabled: the same target is now "in progress"; the target's own predecessor is not
        // the next step of a downgrade that has not finished either.
        let mut batch = WriteBatch::new();
        let before = state;
        assert_eq!(
            state.check_enable(target),
            Err(DowngradeError::InvalidTarget)
        );
        let lower = target.downgrade_target().unwrap();
        assert_eq!(state.check_enable(lower), Err(DowngradeError::InProcess));
        let again = DowngradeInfo {
            enabled: true,
            target_version: lower.to_string(),
        };
        assert_eq!(
            state.apply(&again, &mut batch),
            Err(DowngradeError::InProcess)
        );
        assert_eq!(state, before, "a refused change changes nothing");
        assert!(batch.is_empty(), "a refused change writes nothing");

        assert_eq!(state.apply(&cancel, &mut batch), Ok(target));
        assert_eq!(state.cluster_version(), serving);
        engine.write(batch, Durability::Sync).unwrap();
        assert_eq!(
            VersionState::load(&engine).unwrap(),
            VersionState::default()
        );
    }

    #[test]
    fn no_downgrade_below_a_zero_minor() {
        assert_eq!(v(4, 0).downgrade_target(), None);
        assert_eq!(v(3, 7).downgrade_target(), Some(v(3, 6)));
        assert_eq!(v(3, 7).to_string(), "3.7.0");
        assert_eq!(v(3, 7).short(), "3.7");
    }
}
