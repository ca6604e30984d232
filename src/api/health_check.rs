//! etcd 3.5's health check (`/health`, `/readyz`): what makes a member healthy, and why not.

use crate::limits;
use crate::node::Node;
use crate::pb::etcdserverpb::{AlarmType, RangeRequest};

/// What `/health?exclude=NOSPACE&serializable=true` asks (etcd 3.5's parameters): alarms to
/// disregard (by their exact names, repeated) and whether a serializable read is enough (then
/// a member without a leader can be healthy).
#[derive(Debug, Default, PartialEq)]
pub struct HealthQuery {
    pub exclude: Vec<String>,
    pub serializable: bool,
}

impl HealthQuery {
    pub fn parse(query: &str) -> HealthQuery {
        let mut parsed = HealthQuery::default();
        for (name, value) in query.split('&').filter_map(|p| p.split_once('=')) {
            match name {
                "exclude" => parsed.exclude.push(value.to_string()),
                "serializable" => parsed.serializable = value == "true",
                _ => {}
            }
        }
        parsed
    }
}

/// etcd 3.5's health check: no alarm (but those `exclude`d), a known leader (unless
/// `serializable`), and a read that completes within a second (linearizable unless
/// `serializable`). Unhealthy: etcd's reason. A member that cannot read its alarms is not
/// healthy.
pub async fn check_health(node: &Node, query: &HealthQuery) -> Result<(), String> {
    let alarms = node.alarms().map_err(|e| format!("ALARM UNKNOWN: {e}"))?;
    for (_, alarm) in alarms {
        let name = AlarmType::try_from(alarm).map_or("", |a| a.as_str_name());
        if query.exclude.iter().any(|e| e == name) {
            continue;
        }
        return Err(match AlarmType::try_from(alarm) {
            Ok(AlarmType::Nospace) => "ALARM NOSPACE".to_string(),
            Ok(AlarmType::Corrupt) => "ALARM CORRUPT".to_string(),
            _ => "ALARM UNKNOWN".to_string(),
        });
    }
    if !query.serializable && node.raft_status().leader == 0 {
        return Err("RAFT NO LEADER".to_string());
    }
    let probe = RangeRequest {
        key: b"health".to_vec(),
        keys_only: true,
        limit: 1,
        serializable: query.serializable,
        ..Default::default()
    };
    match crate::rt::timeout(limits::HEALTH_CHECK_TIMEOUT, node.range(&probe)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!("health check failed: {e}");
            Err(format!("RANGE ERROR:{e}"))
        }
        Err(crate::rt::Elapsed) => {
            tracing::warn!(
                "health check failed: no read within {:?}",
                limits::HEALTH_CHECK_TIMEOUT
            );
            Err("RANGE ERROR:context deadline exceeded".to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HealthQuery;

    #[test]
    fn the_query_is_read_as_etcd_reads_it() {
        assert_eq!(HealthQuery::parse(""), HealthQuery::default());
        let q = HealthQuery::parse("exclude=NOSPACE&serializable=true&exclude=CORRUPT&x=1");
        assert_eq!(q.exclude, ["NOSPACE", "CORRUPT"]);
        assert!(q.serializable);
        assert!(!HealthQuery::parse("serializable=yes").serializable);
    }
}
