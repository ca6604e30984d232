//! Sends one generated request to one server through the crate's generated tonic clients and keeps
//! the whole answer: the response message, or the gRPC status (code and message).

use std::time::Duration;

use futures::channel::mpsc;
use metastore::pb::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient, watch_request, AlarmRequest,
    AlarmResponse, CompactionResponse, DefragmentRequest, DefragmentResponse, DeleteRangeResponse,
    HashKvResponse, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse,
    MemberListResponse, MoveLeaderRequest, MoveLeaderResponse, PutResponse, RangeResponse,
    StatusRequest, StatusResponse, TxnResponse, WatchCancelRequest, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use tonic::transport::Channel;

use crate::auth::{self, with_token, AuthOut, AuthReq};
use crate::generate::{MoveTarget, Req, WatchStep};
use crate::json;
use metastore::pb::etcdserverpb::auth_client::AuthClient;
use metastore::pb::v3electionpb::{
    election_client::ElectionClient, CampaignResponse, LeaderResponse, ProclaimResponse,
    ResignResponse,
};
use metastore::pb::v3lockpb::{lock_client::LockClient, LockResponse, UnlockResponse};

/// How long one unary request may take before it counts as hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a Lock or a Campaign may wait (and an Observe for its first answer).
const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait after a Lock or a Campaign that timed out.
const LOCK_WITHDRAW_SETTLE: Duration = Duration::from_millis(500);
/// After a watch's `created` response, how long to wait for catch-up events when some may come:
/// etcd 3.5 moves an unsynced watcher forward every 100 ms.
const WATCH_QUIET: Duration = Duration::from_millis(300);
/// How long to wait for stray responses once a watch is known to be complete.
const WATCH_GRACE: Duration = Duration::from_millis(40);

/// The clients of one server.
pub struct Conn {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    watch: WatchClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
    cluster: ClusterClient<Channel>,
    auth: AuthClient<Channel>,
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
    /// The token of the last successful `Authenticate` on this connection, sent with every request.
    token: Option<String>,
    /// `http://host:port`, for the JSON gateway.
    endpoint: String,
    /// Whether requests with a gateway route go through it (`differential/json.rs`).
    pub json: bool,
    /// This server's member id (the target of `MoveTarget::SelfId`).
    pub member_id: u64,
}

impl Conn {
    /// Connect and ask Status once (it has no effect on the store); errors if the server does not
    /// answer.
    pub async fn connect(endpoint: &str) -> Result<Conn, String> {
        let channel = Channel::from_shared(endpoint.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| format!("connect {endpoint}: {e}"))?;
        let mut maintenance = MaintenanceClient::new(channel.clone());
        let status = tokio::time::timeout(REQUEST_TIMEOUT, maintenance.status(StatusRequest {}))
            .await
            .map_err(|_| format!("{endpoint}: Status timed out"))?
            .map_err(|e| format!("{endpoint}: Status: {e}"))?
            .into_inner();
        let member_id = status.header.map(|h| h.member_id).unwrap_or_default();
        Ok(Conn {
            kv: KvClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            cluster: ClusterClient::new(channel.clone()),
            auth: AuthClient::new(channel.clone()),
            lock: LockClient::new(channel.clone()),
            election: ElectionClient::new(channel),
            token: None,
            endpoint: endpoint.to_string(),
            json: false,
            maintenance,
            member_id,
        })
    }
}

/// One server's whole answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseTimeToLive(LeaseTimeToLiveResponse),
    LeaseLeases(LeaseLeasesResponse),
    /// The stream's first answer.
    LeaseKeepAlive(LeaseKeepAliveResponse),
    /// Everything the stream said, in order, and how it ended.
    Watch(Vec<WatchItem>),
    /// What a stream of several watchers said after its creates, after its progress request and
    /// after its cancels: each phase's items ordered by watch id (each id's in the order sent).
    WatchMany(Vec<Vec<WatchItem>>),
    Status(StatusResponse),
    MemberList(MemberListResponse),
    Defragment(DefragmentResponse),
    MoveLeader(MoveLeaderResponse),
    HashKv(HashKvResponse),
    Alarm(AlarmResponse),
    Auth(AuthOut),
    Lock(LockResponse),
    Unlock(UnlockResponse),
    Campaign(CampaignResponse),
    Proclaim(ProclaimResponse),
    Leader(LeaderResponse),
    /// The stream's first answer.
    Observe(LeaderResponse),
    Resign(ResignResponse),
    /// A JSON gateway answer: HTTP status and body.
    Json {
        status: u16,
        body: serde_json::Value,
    },
    /// A gRPC error status.
    Error {
        code: tonic::Code,
        message: String,
    },
    /// No answer within the request timeout.
    Timeout,
}

/// One step of a watch stream.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    Response(WatchResponse),
    /// The stream ended with this status.
    Error {
        code: tonic::Code,
        message: String,
    },
    /// The stream ended without a status.
    End,
    /// Nothing came where something was due (the `created` response, a cancel confirmation).
    Timeout,
}

fn out<T>(
    r: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
    f: impl FnOnce(T) -> Out,
) -> Out {
    match r {
        Err(_) => Out::Timeout,
        Ok(Err(status)) => Out::Error {
            code: status.code(),
            message: status.message().to_string(),
        },
        Ok(Ok(resp)) => f(resp.into_inner()),
    }
}

/// Send `req` and keep the answer.
pub async fn exec(c: &mut Conn, req: &Req) -> Out {
    let t = REQUEST_TIMEOUT;
    use tokio::time::timeout;
    if c.json {
        if let Some((path, body)) = json::route(req) {
            let token = c.token.clone();
            let waits = matches!(req, Req::Lock(_) | Req::Campaign(_));
            let deadline = if waits { LOCK_TIMEOUT } else { t };
            let Some((status, body)) = json::post(&c.endpoint, path, body, token, deadline).await
            else {
                return if waits {
                    waiting(Out::Timeout).await
                } else {
                    Out::Timeout
                };
            };
            if status == 200 {
                match req {
                    Req::Auth(AuthReq::Authenticate(_)) => {
                        c.token = body["token"].as_str().map(str::to_string)
                    }
                    // As on gRPC (`auth::exec`).
                    Req::Auth(AuthReq::Disable) => c.token = None,
                    _ => {}
                }
            }
            return Out::Json { status, body };
        }
    }
    let token = c.token.clone();
    // Every request carries the connection's token, if it has one.
    macro_rules! tok {
        ($msg:expr) => {
            with_token($msg, token.as_deref())
        };
    }
    match req {
        Req::Range(r) => out(timeout(t, c.kv.range(tok!(r.clone()))).await, Out::Range),
        Req::Put(r) => out(timeout(t, c.kv.put(tok!(r.clone()))).await, Out::Put),
        Req::DeleteRange(r) => out(
            timeout(t, c.kv.delete_range(tok!(r.clone()))).await,
            Out::DeleteRange,
        ),
        Req::Txn(r) => out(timeout(t, c.kv.txn(tok!(r.clone()))).await, Out::Txn),
        Req::Compact(r) => out(timeout(t, c.kv.compact(tok!(*r))).await, Out::Compact),
        Req::LeaseGrant(r) => out(
            timeout(t, c.lease.lease_grant(tok!(*r))).await,
            Out::LeaseGrant,
        ),
        Req::LeaseRevoke(r) => out(
            timeout(t, c.lease.lease_revoke(tok!(*r))).await,
            Out::LeaseRevoke,
        ),
        Req::LeaseTimeToLive(r) => out(
            timeout(t, c.lease.lease_time_to_live(tok!(*r))).await,
            Out::LeaseTimeToLive,
        ),
        Req::LeaseLeases => out(
            timeout(t, c.lease.lease_leases(tok!(LeaseLeasesRequest {}))).await,
            Out::LeaseLeases,
        ),
        Req::LeaseKeepAlive(r) => {
            let (tx, rx) = mpsc::unbounded::<LeaseKeepAliveRequest>();
            tx.unbounded_send(*r).expect("queue keep-alive");
            let first = async {
                let mut stream = c.lease.lease_keep_alive(tok!(rx)).await?.into_inner();
                match stream.message().await? {
                    Some(resp) => Ok(tonic::Response::new(resp)),
                    None => Err(tonic::Status::unknown("differential: the stream ended")),
                }
            };
            let answer = out(timeout(t, first).await, Out::LeaseKeepAlive);
            drop(tx);
            answer
        }
        Req::Watch(r) => Out::Watch(watch(c, r.clone()).await),
        Req::WatchMany(steps) => Out::WatchMany(watch_many(c, steps).await),
        Req::Status => out(
            timeout(t, c.maintenance.status(tok!(StatusRequest {}))).await,
            Out::Status,
        ),
        Req::MemberList(r) => out(
            timeout(t, c.cluster.member_list(tok!(*r))).await,
            Out::MemberList,
        ),
        Req::Defragment => out(
            timeout(t, c.maintenance.defragment(tok!(DefragmentRequest {}))).await,
            Out::Defragment,
        ),
        Req::MoveLeader(target) => {
            let target_id = match target {
                MoveTarget::Zero => 0,
                MoveTarget::SelfId => c.member_id,
                MoveTarget::Unknown(id) => *id,
            };
            out(
                timeout(
                    t,
                    c.maintenance
                        .move_leader(tok!(MoveLeaderRequest { target_id })),
                )
                .await,
                Out::MoveLeader,
            )
        }
        Req::HashKv(r) => out(
            timeout(t, c.maintenance.hash_kv(tok!(*r))).await,
            Out::HashKv,
        ),
        Req::Auth(a) => match auth::exec(&mut c.auth, &mut c.token, a, t).await {
            Ok(out) => Out::Auth(out),
            Err(s)
                if s.code() == tonic::Code::DeadlineExceeded
                    && s.message().starts_with("differential:") =>
            {
                Out::Timeout
            }
            Err(s) => Out::Error {
                code: s.code(),
                message: s.message().to_string(),
            },
        },
        // Lock waits while another holds the name: the generator locks only names it believes
        // free, and a shorter deadline keeps a wrong belief cheap (both would time out).
        Req::Lock(r) => {
            waiting(out(
                timeout(LOCK_TIMEOUT, c.lock.lock(tok!(r.clone()))).await,
                Out::Lock,
            ))
            .await
        }
        Req::Unlock(r) => out(
            timeout(t, c.lock.unlock(tok!(r.clone()))).await,
            Out::Unlock,
        ),
        // Campaign waits while another candidate leads: as Lock.
        Req::Campaign(r) => {
            waiting(out(
                timeout(LOCK_TIMEOUT, c.election.campaign(tok!(r.clone()))).await,
                Out::Campaign,
            ))
            .await
        }
        Req::Proclaim(r) => out(
            timeout(t, c.election.proclaim(tok!(r.clone()))).await,
            Out::Proclaim,
        ),
        Req::Leader(r) => out(
            timeout(t, c.election.leader(tok!(r.clone()))).await,
            Out::Leader,
        ),
        Req::Observe(r) => {
            let first = async {
                let mut stream = c.election.observe(tok!(r.clone())).await?.into_inner();
                match stream.message().await? {
                    Some(resp) => Ok(tonic::Response::new(resp)),
                    None => Err(tonic::Status::unknown("differential: the stream ended")),
                }
            };
            out(timeout(LOCK_TIMEOUT, first).await, Out::Observe)
        }
        Req::Resign(r) => out(
            timeout(t, c.election.resign(tok!(r.clone()))).await,
            Out::Resign,
        ),
        Req::AlarmGet => out(
            timeout(t, c.maintenance.alarm(tok!(AlarmRequest::default()))).await,
            Out::Alarm,
        ),
    }
}

/// How long a stream of several watchers must be quiet before a phase counts as over (longer
/// than etcd's 100 ms catch-up round, so a watcher from the past has caught up).
const WATCH_MANY_QUIET: Duration = Duration::from_millis(300);

/// Run one stream of several watchers ([`Req::WatchMany`]) in three phases, each collected until
/// the stream is quiet: every create (and its catch-up), the progress request if any, the
/// cancels. No writes happen meanwhile. Within a phase, which watcher's response comes first is
/// the servers' scheduling, not their behaviour: items are grouped by watch id (a stable sort,
/// so each watcher's own order stays); the end of the stream sorts last.
async fn watch_many(c: &mut Conn, steps: &[WatchStep]) -> Vec<Vec<WatchItem>> {
    let creates: Vec<WatchRequest> = steps
        .iter()
        .filter_map(|s| match s {
            WatchStep::Create(r) => Some(create(r.clone())),
            _ => None,
        })
        .collect();
    let progress: Vec<WatchRequest> = steps
        .iter()
        .filter(|s| **s == WatchStep::Progress)
        .map(|_| WatchRequest {
            request_union: Some(watch_request::RequestUnion::ProgressRequest(
                Default::default(),
            )),
        })
        .collect();
    let cancels: Vec<WatchRequest> = steps
        .iter()
        .filter_map(|s| match s {
            WatchStep::Cancel(id) => Some(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CancelRequest(
                    WatchCancelRequest { watch_id: *id },
                )),
            }),
            _ => None,
        })
        .collect();
    // The creates are queued before the stream opens: etcd answers the call (sends its headers)
    // only with its first message.
    let (tx, rx) = mpsc::unbounded();
    for r in &creates {
        tx.unbounded_send(r.clone()).expect("queue create");
    }
    let mut stream = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        c.watch.watch(with_token(rx, c.token.as_deref())),
    )
    .await
    {
        Err(_) => return vec![vec![WatchItem::Timeout]],
        Ok(Err(s)) => {
            return vec![vec![WatchItem::Error {
                code: s.code(),
                message: s.message().to_string(),
            }]]
        }
        Ok(Ok(resp)) => resp.into_inner(),
    };
    let mut phases = Vec::new();
    let mut ended = false;
    for (phase, requests) in [creates, progress, cancels].into_iter().enumerate() {
        if ended {
            break;
        }
        if requests.is_empty() {
            phases.push(Vec::new());
            continue;
        }
        // The creates are on their way already.
        for r in requests.into_iter().filter(|_| phase > 0) {
            if tx.unbounded_send(r).is_err() {
                break;
            }
        }
        let mut items: Vec<(i64, WatchItem)> = Vec::new();
        loop {
            let end = match tokio::time::timeout(WATCH_MANY_QUIET, stream.message()).await {
                Err(_) => break,
                Ok(Ok(Some(m))) => {
                    items.push((m.watch_id, WatchItem::Response(m)));
                    continue;
                }
                Ok(Ok(None)) => WatchItem::End,
                Ok(Err(s)) => WatchItem::Error {
                    code: s.code(),
                    message: s.message().to_string(),
                },
            };
            items.push((i64::MAX, end));
            ended = true;
            break;
        }
        items.sort_by_key(|(id, _)| *id);
        phases.push(items.into_iter().map(|(_, item)| item).collect());
    }
    drop(tx);
    phases
}

/// The answer of a call that waits its turn (Lock, Campaign), once a timed-out one has been
/// withdrawn: the server withdraws an abandoned waiter's key once it sees the call go (etcd and
/// MetaStore alike, each in its own time), so that lands before what follows.
async fn waiting(answer: Out) -> Out {
    if answer == Out::Timeout {
        tokio::time::sleep(LOCK_WITHDRAW_SETTLE).await;
    }
    answer
}

fn create(req: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(req)),
    }
}

/// Open a stream, create the watcher, collect what it sends until it has caught up (or was
/// canceled), cancel it and collect the confirmation.
///
/// No writes happen while the stream is open, so after `created` (whose header carries the current
/// revision) the only responses due are the catch-up events (etcd sends them in one response, up to
/// 1000 revisions) or a cancellation (compacted start revision, bad range). A watcher that starts at
/// 0 (now) or in the future has nothing to catch up; one whose events reached the current revision is
/// complete; otherwise we wait until the stream is quiet for `WATCH_QUIET`.
async fn watch(c: &mut Conn, req: WatchCreateRequest) -> Vec<WatchItem> {
    let mut items = Vec::new();
    let (tx, rx) = mpsc::unbounded();
    let start = req.start_revision;
    tx.unbounded_send(create(req)).expect("queue create");
    let mut stream = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        c.watch.watch(with_token(rx, c.token.as_deref())),
    )
    .await
    {
        Err(_) => {
            items.push(WatchItem::Timeout);
            return items;
        }
        Ok(Err(s)) => {
            items.push(WatchItem::Error {
                code: s.code(),
                message: s.message().to_string(),
            });
            return items;
        }
        Ok(Ok(resp)) => resp.into_inner(),
    };
    // `wait`: how long the next message may take before the watcher counts as caught up.
    let mut ended = false;
    let mut watch_id = None;
    let mut current = 0i64;
    let mut wait = REQUEST_TIMEOUT; // for `created`
    let mut canceled = false;
    loop {
        let msg = match tokio::time::timeout(wait, stream.message()).await {
            Err(_) => {
                if items.is_empty() {
                    // Not even `created`.
                    items.push(WatchItem::Timeout);
                    ended = true;
                }
                break;
            }
            Ok(Err(s)) => {
                items.push(WatchItem::Error {
                    code: s.code(),
                    message: s.message().to_string(),
                });
                ended = true;
                break;
            }
            Ok(Ok(None)) => {
                items.push(WatchItem::End);
                ended = true;
                break;
            }
            Ok(Ok(Some(m))) => m,
        };
        items.push(WatchItem::Response(msg.clone()));
        if msg.canceled {
            canceled = true;
            wait = WATCH_GRACE;
            continue;
        }
        if msg.created && watch_id.is_none() {
            watch_id = Some(msg.watch_id);
            current = msg.header.as_ref().map(|h| h.revision).unwrap_or_default();
            // 0 is "from now"; a negative start is read as a past revision (etcd replays
            // history from it, or cancels it as compacted).
            wait = if start == 0 || start > current {
                WATCH_GRACE
            } else {
                WATCH_QUIET
            };
            continue;
        }
        if msg
            .events
            .last()
            .and_then(|e| e.kv.as_ref())
            .map(|kv| kv.mod_revision)
            == Some(current)
        {
            wait = WATCH_GRACE;
        }
    }
    if !ended && !canceled {
        if let Some(id) = watch_id {
            let cancel = WatchRequest {
                request_union: Some(watch_request::RequestUnion::CancelRequest(
                    WatchCancelRequest { watch_id: id },
                )),
            };
            if tx.unbounded_send(cancel).is_ok() {
                loop {
                    match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                        Err(_) => {
                            items.push(WatchItem::Timeout);
                            break;
                        }
                        Ok(Err(s)) => {
                            items.push(WatchItem::Error {
                                code: s.code(),
                                message: s.message().to_string(),
                            });
                            break;
                        }
                        Ok(Ok(None)) => {
                            items.push(WatchItem::End);
                            break;
                        }
                        Ok(Ok(Some(m))) => {
                            let done = m.canceled;
                            items.push(WatchItem::Response(m));
                            if done {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    drop(tx);
    items
}
