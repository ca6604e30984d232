//! `--initial-cluster` and the flags that go with it: parsed and checked with the rest of the
//! configuration (the cluster module derives ids and founding members from the result).

use std::collections::BTreeMap;

/// A problem with `--initial-cluster` and friends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterConfigError {
    #[error("--initial-cluster: {0:?} is not NAME=URL")]
    BadEntry(String),
    #[error("--initial-cluster has no entry for this member's --name {0:?}")]
    NameMissing(String),
    #[error(
        "--initial-cluster gives {name:?} the peer URLs {listed:?} but --initial-advertise-peer-urls says {advertised:?}"
    )]
    UrlMismatch {
        name: String,
        listed: Vec<String>,
        advertised: Vec<String>,
    },
    #[error("--initial-cluster lists the peer URL {0} twice")]
    DuplicateUrl(String),
}

/// `--initial-cluster`: member name → peer URLs, in name order.
pub type InitialCluster = BTreeMap<String, Vec<String>>;

/// Parse etcd's `name1=url1,name2=url2,name1=url3` (a name may repeat to list several URLs).
pub fn parse_initial_cluster(text: &str) -> Result<InitialCluster, ClusterConfigError> {
    let mut cluster = InitialCluster::new();
    let mut seen = std::collections::BTreeSet::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry
            .split_once('=')
            .ok_or_else(|| ClusterConfigError::BadEntry(entry.to_string()))?;
        let (name, url) = (name.trim(), url.trim().trim_end_matches('/'));
        if name.is_empty() || url.is_empty() {
            return Err(ClusterConfigError::BadEntry(entry.to_string()));
        }
        if !seen.insert(url.to_string()) {
            return Err(ClusterConfigError::DuplicateUrl(url.to_string()));
        }
        cluster
            .entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    for urls in cluster.values_mut() {
        urls.sort();
    }
    Ok(cluster)
}

/// Check that this member appears in `--initial-cluster` with the URLs it advertises.
pub fn check_self(
    cluster: &InitialCluster,
    name: &str,
    advertised: &[String],
) -> Result<(), ClusterConfigError> {
    let listed = cluster
        .get(name)
        .ok_or_else(|| ClusterConfigError::NameMissing(name.to_string()))?;
    let mut advertised = advertised.to_vec();
    advertised.sort();
    if *listed != advertised {
        return Err(ClusterConfigError::UrlMismatch {
            name: name.to_string(),
            listed: listed.clone(),
            advertised,
        });
    }
    Ok(())
}
