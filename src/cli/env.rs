//! etcd's configuration through the environment: every flag of a member may also be given as
//! `ETCD_<FLAG>` (`--data-dir` as `ETCD_DATA_DIR`), as etcd reads them, so container images,
//! systemd units (`/etc/default/etcd`) and compose files written for etcd configure MetaStore
//! unchanged. etcd's rules, followed here: a variable applies only where its flag is not given;
//! a variable whose flag is also given is an error (etcd exits: "conflicting environment
//! variable is shadowed by corresponding command-line flag"); an `ETCD_` variable that names no
//! flag is logged and left alone. Beyond etcd: a variable naming one of etcd's flags that
//! MetaStore does not serve is an error, as the flag itself would be, rather than a setting
//! silently dropped.

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command};

/// The prefix of etcd's variables.
const PREFIX: &str = "ETCD_";

/// Every flag of etcd 3.5's `etcd` (its `--help`, and `--config-file`), by long name.
const ETCD_FLAGS: &[&str] = &[
    "advertise-client-urls",
    "auth-token",
    "auth-token-ttl",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "auto-tls",
    "backend-batch-interval",
    "backend-batch-limit",
    "backend-bbolt-freelist-type",
    "bcrypt-cost",
    "cert-file",
    "cipher-suites",
    "client-cert-allowed-hostname",
    "client-cert-auth",
    "client-crl-file",
    "config-file",
    "cors",
    "data-dir",
    "discovery",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-srv",
    "discovery-srv-name",
    "election-timeout",
    "enable-log-rotation",
    "enable-pprof",
    "enable-v2",
    "experimental-bootstrap-defrag-threshold-megabytes",
    "experimental-compaction-batch-limit",
    "experimental-corrupt-check-time",
    "experimental-distributed-tracing-address",
    "experimental-distributed-tracing-instance-id",
    "experimental-distributed-tracing-service-name",
    "experimental-enable-distributed-tracing",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-v2v3",
    "experimental-initial-corrupt-check",
    "experimental-peer-skip-client-san-verification",
    "experimental-txn-mode-write-with-shared-buffer",
    "experimental-warning-apply-duration",
    "experimental-watch-progress-notify-interval",
    "force-new-cluster",
    "grpc-keepalive-interval",
    "grpc-keepalive-min-time",
    "grpc-keepalive-timeout",
    "heartbeat-interval",
    "host-whitelist",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "initial-election-tick-advance",
    "key-file",
    "listen-client-urls",
    "listen-metrics-urls",
    "listen-peer-urls",
    "log-level",
    "log-outputs",
    "log-rotation-config-json",
    "logger",
    "max-request-bytes",
    "max-snapshots",
    "max-txn-ops",
    "max-wals",
    "metrics",
    "name",
    "peer-auto-tls",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "peer-cert-file",
    "peer-client-cert-auth",
    "peer-crl-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "pre-vote",
    "proxy",
    "proxy-dial-timeout",
    "proxy-failure-wait",
    "proxy-read-timeout",
    "proxy-refresh-interval",
    "proxy-write-timeout",
    "quota-backend-bytes",
    "self-signed-cert-validity",
    "snapshot-count",
    "socket-reuse-address",
    "socket-reuse-port",
    "strict-reconfig-check",
    "trusted-ca-file",
    "unsafe-no-fsync",
    "v2-deprecation",
    "wal-dir",
];

/// The variable of flag `--long`: `data-dir` → `ETCD_DATA_DIR`.
pub fn variable_of(long: &str) -> String {
    format!("{PREFIX}{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// `args` (a member's flags) each also read from its variable.
pub fn read_from_env(args: Command) -> Command {
    args.mut_args(|arg: Arg| match arg.get_long() {
        Some(long) if long != "help" && long != "version" => {
            let variable = variable_of(long);
            arg.env(variable)
        }
        _ => arg,
    })
}

/// What the environment did to a member's configuration, to be logged once logging is set up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EnvReport {
    /// `(variable, value)` of each variable that set a flag.
    pub used: Vec<(String, String)>,
    /// `ETCD_` variables that name no flag of etcd's.
    pub unrecognized: Vec<String>,
}

/// Check `vars` (the process's environment) against the flags `matches` parsed (`args` their
/// definitions), with etcd's rules (module docs).
pub fn check(
    args: &Command,
    matches: &ArgMatches,
    vars: &[(String, String)],
) -> Result<EnvReport, String> {
    let mut report = EnvReport::default();
    let mut ours = Vec::new();
    for arg in args.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let variable = variable_of(long);
        let id = arg.get_id().as_str();
        if let Some((_, value)) = vars.iter().find(|(k, _)| *k == variable) {
            match matches.value_source(id) {
                Some(ValueSource::CommandLine) => {
                    return Err(format!(
                        "conflicting environment variable {variable:?} is shadowed by \
                         corresponding command-line flag --{long} (either unset environment \
                         variable or disable flag)"
                    ))
                }
                Some(ValueSource::EnvVariable) => {
                    report.used.push((variable.clone(), value.clone()))
                }
                _ => {}
            }
        }
        ours.push(variable);
    }
    for (variable, _) in vars {
        if !variable.starts_with(PREFIX) || ours.contains(variable) {
            continue;
        }
        match ETCD_FLAGS.iter().find(|f| variable_of(f) == *variable) {
            Some(flag) => {
                return Err(format!(
                    "environment variable {variable} sets etcd's --{flag}, which MetaStore does \
                     not serve (see `metastore --help`); unset it"
                ))
            }
            None => report.unrecognized.push(variable.clone()),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};

    #[derive(Debug, Args)]
    struct Flags {
        #[arg(long, default_value = "default")]
        name: String,
        #[arg(long)]
        data_dir: Option<String>,
    }

    /// `argv` parsed with the variables' names attached (clap itself reads the process's
    /// environment, which these tests leave alone: what a variable sets is tested on the binary,
    /// in `tests/cli.rs`), then checked against `vars`.
    fn check_with(argv: &[&str], vars: &[(&str, &str)]) -> Result<EnvReport, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = read_from_env(Flags::augment_args(Command::new("m")));
        let matches = args
            .clone()
            .try_get_matches_from(std::iter::once("m").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        Flags::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        check(&args, &matches, &vars)
    }

    #[test]
    fn variables_are_flags_named_as_etcd_names_them() {
        assert_eq!(variable_of("data-dir"), "ETCD_DATA_DIR");
        assert_eq!(
            variable_of("experimental-watch-progress-notify-interval"),
            "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL"
        );
    }

    #[test]
    fn a_variable_and_its_flag_together_are_refused() {
        let err = check_with(&["--name", "n1"], &[("ETCD_NAME", "n2")]).unwrap_err();
        assert!(
            err.contains("conflicting environment variable \"ETCD_NAME\""),
            "{err}"
        );
    }

    #[test]
    fn etcd_settings_not_served_are_refused_and_strangers_reported() {
        let err = check_with(&[], &[("ETCD_FORCE_NEW_CLUSTER", "true")]).unwrap_err();
        assert!(err.contains("--force-new-cluster"), "{err}");
        let report = check_with(&[], &[("ETCD_NO_SUCH_THING", "1"), ("ETCDCTL_API", "3")]).unwrap();
        assert_eq!(report.unrecognized, vec!["ETCD_NO_SUCH_THING".to_string()]);
        assert!(report.used.is_empty());
    }
}
