//! `--auto-compaction-mode` and `--auto-compaction-retention`, as etcd reads them: in `periodic`
//! mode (the default) the retention is a duration (`30m`, `72h`; a bare number counts hours), in
//! `revision` mode a number of revisions; `0` turns automatic compaction off.

use std::time::Duration;

/// How the leader compacts on its own (`node::auto_compaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep about this much history: compact to the revision current this long ago.
    Periodic(Duration),
    /// Keep this many revisions: compact to the current revision less this many.
    Revision(i64),
}

/// The setting the two flags make (`None`: off).
pub fn parse_auto_compaction(
    mode: &str,
    retention: &str,
) -> Result<Option<AutoCompaction>, String> {
    let retention = retention.trim();
    match mode {
        "periodic" => {
            let period = match retention.parse::<u64>() {
                Ok(hours) => Duration::from_secs(hours.saturating_mul(3_600)),
                Err(_) => super::parse_duration(retention).map_err(|e| {
                    format!("invalid --auto-compaction-retention {retention:?}: {e}")
                })?,
            };
            Ok((!period.is_zero()).then_some(AutoCompaction::Periodic(period)))
        }
        "revision" => {
            let revisions: i64 = retention.parse().map_err(|_| {
                format!(
                    "invalid --auto-compaction-retention {retention:?}: a number of revisions in \
                     revision mode"
                )
            })?;
            if revisions < 0 {
                return Err(format!(
                    "invalid --auto-compaction-retention {retention:?}: negative"
                ));
            }
            Ok((revisions > 0).then_some(AutoCompaction::Revision(revisions)))
        }
        other => Err(format!(
            "unknown auto-compaction-mode {other:?} (\"periodic\" or \"revision\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_read_as_etcd_reads_it() {
        let p = |r| parse_auto_compaction("periodic", r);
        assert_eq!(p("0"), Ok(None));
        assert_eq!(
            p("1"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(3_600))))
        );
        assert_eq!(
            p("30m"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(1_800))))
        );
        assert!(p("soon").is_err());
        let r = |r| parse_auto_compaction("revision", r);
        assert_eq!(r("1000"), Ok(Some(AutoCompaction::Revision(1_000))));
        assert_eq!(r("0"), Ok(None));
        assert!(r("1h").is_err() && r("-5").is_err());
        assert!(parse_auto_compaction("sometimes", "1").is_err());
    }
}
