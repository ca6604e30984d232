//! The gRPC server counters etcd exports through go-grpc-prometheus: calls started, calls handled
//! by status code, and messages received and sent, per method of the client API.
//!
//! etcd registers every method of its services when it starts, so a scrape lists each one at 0
//! before it is called (and `grpc_server_handled_total` once per status code); dashboards and
//! alerts (etcd's own mixin: `etcdHighNumberOfFailedGRPCRequests`), and clients' test suites
//! (etcd-client counts `Authenticate` calls this way) read them. The counting itself happens
//! where calls pass through the client router (`api::grpc_metrics`); this module holds the
//! counters, the table of methods and the text exposition. Methods not in [`METHODS`] (an
//! unknown path answered `Unimplemented`) are not counted, as grpc-go's interceptors never see
//! them.

use std::fmt::Write as _;

use super::Counter;

/// How a method streams: go-grpc-prometheus's `grpc_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl RpcKind {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ClientStream => "client_stream",
            Self::ServerStream => "server_stream",
            Self::BidiStream => "bidi_stream",
        }
    }
}

/// gRPC status code names as grpc-go's `codes.Code.String()` writes them, indexed by code.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The `Canceled` code: a call whose client went away before it got its status.
pub const CANCELED: u32 = 1;
/// The `Unknown` code: what a status outside the table counts as.
const UNKNOWN: u32 = 2;

/// Every method the client port serves over gRPC: full service name, method, kind. The services
/// etcd 3.5 registers, plus what MetaStore serves beside them (`KV.RangeStream` of etcd 3.7;
/// Lock and Election, which etcd 3.5 serves without counting them).
pub const METHODS: &[(&str, &str, RpcKind)] = {
    use RpcKind::*;
    &[
        ("etcdserverpb.KV", "Range", Unary),
        ("etcdserverpb.KV", "RangeStream", ServerStream),
        ("etcdserverpb.KV", "Put", Unary),
        ("etcdserverpb.KV", "DeleteRange", Unary),
        ("etcdserverpb.KV", "Txn", Unary),
        ("etcdserverpb.KV", "Compact", Unary),
        ("etcdserverpb.Watch", "Watch", BidiStream),
        ("etcdserverpb.Lease", "LeaseGrant", Unary),
        ("etcdserverpb.Lease", "LeaseRevoke", Unary),
        ("etcdserverpb.Lease", "LeaseKeepAlive", BidiStream),
        ("etcdserverpb.Lease", "LeaseTimeToLive", Unary),
        ("etcdserverpb.Lease", "LeaseLeases", Unary),
        ("etcdserverpb.Cluster", "MemberAdd", Unary),
        ("etcdserverpb.Cluster", "MemberRemove", Unary),
        ("etcdserverpb.Cluster", "MemberUpdate", Unary),
        ("etcdserverpb.Cluster", "MemberList", Unary),
        ("etcdserverpb.Cluster", "MemberPromote", Unary),
        ("etcdserverpb.Maintenance", "Alarm", Unary),
        ("etcdserverpb.Maintenance", "Status", Unary),
        ("etcdserverpb.Maintenance", "Defragment", Unary),
        ("etcdserverpb.Maintenance", "Hash", Unary),
        ("etcdserverpb.Maintenance", "HashKV", Unary),
        ("etcdserverpb.Maintenance", "Snapshot", ServerStream),
        ("etcdserverpb.Maintenance", "MoveLeader", Unary),
        ("etcdserverpb.Maintenance", "Downgrade", Unary),
        ("etcdserverpb.Auth", "AuthEnable", Unary),
        ("etcdserverpb.Auth", "AuthDisable", Unary),
        ("etcdserverpb.Auth", "AuthStatus", Unary),
        ("etcdserverpb.Auth", "Authenticate", Unary),
        ("etcdserverpb.Auth", "UserAdd", Unary),
        ("etcdserverpb.Auth", "UserGet", Unary),
        ("etcdserverpb.Auth", "UserList", Unary),
        ("etcdserverpb.Auth", "UserDelete", Unary),
        ("etcdserverpb.Auth", "UserChangePassword", Unary),
        ("etcdserverpb.Auth", "UserGrantRole", Unary),
        ("etcdserverpb.Auth", "UserRevokeRole", Unary),
        ("etcdserverpb.Auth", "RoleAdd", Unary),
        ("etcdserverpb.Auth", "RoleGet", Unary),
        ("etcdserverpb.Auth", "RoleList", Unary),
        ("etcdserverpb.Auth", "RoleDelete", Unary),
        ("etcdserverpb.Auth", "RoleGrantPermission", Unary),
        ("etcdserverpb.Auth", "RoleRevokePermission", Unary),
        ("grpc.health.v1.Health", "Check", Unary),
        ("grpc.health.v1.Health", "Watch", ServerStream),
        ("v3lockpb.Lock", "Lock", Unary),
        ("v3lockpb.Lock", "Unlock", Unary),
        ("v3electionpb.Election", "Campaign", Unary),
        ("v3electionpb.Election", "Proclaim", Unary),
        ("v3electionpb.Election", "Leader", Unary),
        ("v3electionpb.Election", "Observe", ServerStream),
        ("v3electionpb.Election", "Resign", Unary),
    ]
};

/// One method's counters.
#[derive(Debug)]
pub struct MethodCounters {
    service: &'static str,
    method: &'static str,
    /// The method's label set, written once.
    labels: String,
    started: Counter,
    received: Counter,
    sent: Counter,
    handled: [Counter; CODE_NAMES.len()],
}

impl MethodCounters {
    /// A call began.
    pub fn started(&self) {
        self.started.inc();
    }

    /// `n` messages came from the client.
    pub fn received(&self, n: u64) {
        self.received.add(n);
    }

    /// `n` messages went to the client.
    pub fn sent(&self, n: u64) {
        self.sent.add(n);
    }

    /// A call ended with status `code` (codes outside gRPC's table count as `Unknown`).
    pub fn handled(&self, code: u32) {
        let slot = if (code as usize) < CODE_NAMES.len() {
            code
        } else {
            UNKNOWN
        };
        self.handled[slot as usize].inc();
    }
}

/// Picks one of a method's counters.
type CounterOf = fn(&MethodCounters) -> &Counter;

/// Which method a call is (an index into the table, found once per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodId(usize);

/// The counters of every method in [`METHODS`].
#[derive(Debug)]
pub struct GrpcMetrics {
    /// In [`METHODS`]' order.
    methods: Vec<MethodCounters>,
    /// `(/service/method, index into methods)`, sorted by path: a call's method found by a
    /// binary search, on every call.
    by_path: Vec<(String, usize)>,
    /// Indexes into `methods` in the order etcd's registry writes series: by method name, then
    /// service (the label values in the labels' alphabetical order).
    written_order: Vec<usize>,
    /// Indexes into [`CODE_NAMES`], alphabetically by name.
    codes_order: Vec<usize>,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        let methods: Vec<MethodCounters> = METHODS
            .iter()
            .map(|&(service, method, kind)| MethodCounters {
                service,
                method,
                labels: format!(
                    "grpc_method=\"{method}\",grpc_service=\"{service}\",grpc_type=\"{}\"",
                    kind.label()
                ),
                started: Counter::default(),
                received: Counter::default(),
                sent: Counter::default(),
                handled: Default::default(),
            })
            .collect();
        let mut written_order: Vec<usize> = (0..methods.len()).collect();
        written_order.sort_by_key(|&i| (methods[i].method, methods[i].service));
        let mut codes_order: Vec<usize> = (0..CODE_NAMES.len()).collect();
        codes_order.sort_by_key(|&i| CODE_NAMES[i]);
        let mut by_path: Vec<(String, usize)> = methods
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("/{}/{}", m.service, m.method), i))
            .collect();
        by_path.sort();
        Self {
            methods,
            by_path,
            written_order,
            codes_order,
        }
    }
}

impl GrpcMetrics {
    /// The method a request path (`/etcdserverpb.KV/Range`) names, if it is one we count.
    pub fn find(&self, path: &str) -> Option<MethodId> {
        let at = self
            .by_path
            .binary_search_by(|(p, _)| p.as_str().cmp(path))
            .ok()?;
        Some(MethodId(self.by_path[at].1))
    }

    /// The counters of `id`.
    pub fn method(&self, id: MethodId) -> &MethodCounters {
        &self.methods[id.0]
    }

    /// The four families in the Prometheus text format, sorted by name as etcd's registry writes
    /// them.
    pub fn render(&self, out: &mut String) {
        super::header(
            out,
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            "counter",
        );
        for &code in &self.codes_order {
            for &i in &self.written_order {
                let m = &self.methods[i];
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{grpc_code=\"{}\",{}}} {}",
                    CODE_NAMES[code],
                    m.labels,
                    m.handled[code].get()
                );
            }
        }
        let families: [(&str, &str, CounterOf); 3] = [
            (
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                |m| &m.received,
            ),
            (
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                |m| &m.sent,
            ),
            (
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                |m| &m.started,
            ),
        ];
        for (name, help, counter) in families {
            super::header(out, name, help, "counter");
            for &i in &self.written_order {
                let m = &self.methods[i];
                let _ = writeln!(out, "{name}{{{}}} {}", m.labels, counter(m).get());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `rpc` of the client API's proto files, as (full service name, method, kind).
    fn rpcs_in_protos() -> Vec<(String, String, RpcKind)> {
        let protos = [
            include_str!("../../proto/etcd/etcdserverpb/rpc.proto"),
            include_str!("../../proto/etcd/v3lockpb/v3lock.proto"),
            include_str!("../../proto/etcd/v3electionpb/v3election.proto"),
            include_str!("../../proto/grpc/health/v1/health.proto"),
        ];
        let mut out = Vec::new();
        for text in protos {
            let mut package = "";
            let mut service = String::new();
            for line in text.lines().map(str::trim) {
                if let Some(p) = line.strip_prefix("package ") {
                    package = p.trim_end_matches(';');
                } else if let Some(s) = line.strip_prefix("service ") {
                    service = format!("{package}.{}", s.trim_end_matches(" {").trim());
                } else if let Some(rpc) = line.strip_prefix("rpc ") {
                    let (name, rest) = rpc.split_once('(').expect("rpc NAME(");
                    let (request, response) = rest.split_once("returns").expect("returns");
                    let kind = match (
                        request.trim_start().starts_with("stream "),
                        response
                            .trim_start()
                            .trim_start_matches('(')
                            .starts_with("stream "),
                    ) {
                        (false, false) => RpcKind::Unary,
                        (true, false) => RpcKind::ClientStream,
                        (false, true) => RpcKind::ServerStream,
                        (true, true) => RpcKind::BidiStream,
                    };
                    out.push((service.clone(), name.trim().to_string(), kind));
                }
            }
        }
        out
    }

    #[test]
    fn the_table_lists_every_rpc_the_client_port_serves_with_its_kind() {
        let mut in_protos = rpcs_in_protos();
        let mut in_table: Vec<(String, String, RpcKind)> = METHODS
            .iter()
            .map(|&(s, m, k)| (s.to_string(), m.to_string(), k))
            .collect();
        assert!(in_protos.len() > 40, "the proto files were read");
        in_protos.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        in_table.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        assert_eq!(in_table, in_protos);
    }

    #[test]
    fn every_method_is_written_at_zero_until_counted_and_codes_by_name() {
        let g = GrpcMetrics::default();
        let id = g.find("/etcdserverpb.Auth/Authenticate").expect("a method");
        assert_eq!(g.find("/etcdserverpb.KV/Nope"), None);
        assert_eq!(g.find("etcdserverpb.KV/Range"), None);
        g.method(id).started();
        g.method(id).received(1);
        g.method(id).handled(0);
        g.method(id).handled(99);
        let mut text = String::new();
        g.render(&mut text);
        let auth =
            "grpc_method=\"Authenticate\",grpc_service=\"etcdserverpb.Auth\",grpc_type=\"unary\"";
        assert!(text.contains(&format!(
            "grpc_server_handled_total{{grpc_code=\"OK\",{auth}}} 1\n"
        )));
        assert!(text.contains(&format!(
            "grpc_server_handled_total{{grpc_code=\"Unknown\",{auth}}} 1\n"
        )));
        assert!(text.contains(&format!("grpc_server_started_total{{{auth}}} 1\n")));
        assert!(text.contains(&format!("grpc_server_msg_received_total{{{auth}}} 1\n")));
        assert!(text.contains(&format!("grpc_server_msg_sent_total{{{auth}}} 0\n")));
        assert!(text.contains(
            "grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0\n"
        ));
        let handled = text
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .count();
        assert_eq!(handled, METHODS.len() * CODE_NAMES.len());
        // Series sorted as etcd writes them: "Aborted" first, by method within a code.
        let first: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .take(2)
            .collect();
        assert!(first[0]
            .starts_with("grpc_server_handled_total{grpc_code=\"Aborted\",grpc_method=\"Alarm\","));
        assert!(first[1].contains("grpc_method=\"AuthDisable\""));
    }
}
