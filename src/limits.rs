//! Every limit of the server, named, with units last.

use std::time::Duration;

/// Default `--max-request-bytes`: the largest request a client may send (etcd's default, 1.5 MiB).
pub const MAX_REQUEST_BYTES_DEFAULT: usize = 1536 * 1024;

/// Extra room gRPC gets on top of `--max-request-bytes` for framing (etcd's `grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Largest response the server encodes (etcd: `math.MaxInt32`; we bound it at 2 GiB - 1 as well).
pub const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// Default `--max-txn-ops`: operations per branch of a transaction (etcd's default).
pub const MAX_TXN_OPS_DEFAULT: usize = 128;

/// Default `--quota-backend-bytes` when the flag is 0 (etcd's default, 2 GiB).
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 * 1024 * 1024 * 1024;

/// Largest `--quota-backend-bytes` accepted (etcd warns above 8 GiB; we refuse above 64 GiB).
pub const QUOTA_BACKEND_BYTES_MAX: u64 = 64 * 1024 * 1024 * 1024;

/// Raft heartbeat interval.
pub const HEARTBEAT_INTERVAL_MS: u64 = 100;

/// Raft election timeout (etcd's default is 1000 ms).
pub const ELECTION_TIMEOUT_MS: u64 = 1000;

/// How long a proposal may take before the client gets `etcdserver: request timed out`
/// (etcd: 5 s plus two election timeouts).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(5_000 + 2 * ELECTION_TIMEOUT_MS);

/// How long a linearizable read may wait for its read index to be confirmed and applied.
pub const READ_INDEX_TIMEOUT: Duration = REQUEST_TIMEOUT;

/// How long startup waits for the single member to become leader.
pub const STARTUP_LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long each founding member waits after the one before it (in member-id order) before it
/// initializes raft, unless a leader reaches it first (see `node::bootstrap::initialize_in_turn`):
/// enough for a leader's heartbeats to find a member whose peer service just started.
pub const FOUNDER_STAGGER: Duration = Duration::from_millis(5 * HEARTBEAT_INTERVAL_MS);
/// How often a founder waiting its turn checks whether a leader's entries have reached it.
pub const FOUNDER_POLL_INTERVAL: Duration = Duration::from_millis(HEARTBEAT_INTERVAL_MS / 2);

/// How long a stopping member waits for clients to finish, and for raft to stop, before exiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Responses buffered per watch stream (etcd's `chanBufLen`). A watcher whose stream is full drops
/// back to catching up from storage, so this bounds a stream's memory, never apply's progress.
pub const WATCH_STREAM_BUFFER: usize = 128;

/// Bytes of events buffered per watch stream, at most: the largest share of
/// [`WATCH_BUFFERED_BYTES_TOTAL`] one stream gets (a message larger than its share still goes alone
/// into an idle buffer, so any revision can be delivered). With [`WATCH_STREAM_BUFFER`] it bounds
/// what a client that stops reading costs: its watchers fall behind and wait in storage.
pub const WATCH_STREAM_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Bytes of events queued or in flight in all watch streams of a member together (see
/// `watch::WatchBudget`): without it, a client opening many streams that it never reads would hold
/// every stream's buffer (256 streams on one connection: 140 -> 990 MB RSS). Past it, watchers
/// wait in storage. It is passed by at most one message (an idle stream takes one of any size
/// while some budget is left: a revision may be larger than the budget) and by small messages
/// to idle streams, within [`WATCH_SMALL_MESSAGES_PAST_BUDGET_BYTES`]. Streams whose clients take
/// nothing keep what they hold until they are evicted ([`WATCH_STREAM_STALL`]), and each wave of
/// them an attacker opens takes it anew before the allocator reuses what the last one freed: with
/// 16 MiB and 16 MiB past it, 4,000 such streams took a release build up by 61 to 69 MiB at the
/// peak; with 8 and 8 MiB, by 24 to 45 MiB.
pub const WATCH_BUFFERED_BYTES_TOTAL: usize = 8 * 1024 * 1024;

/// The least share of [`WATCH_BUFFERED_BYTES_TOTAL`] a stream gets, however many are open.
pub const WATCH_STREAM_SHARE_MIN: usize = 64 * 1024;

/// A message this small goes into an idle stream even once the member's watch budget is spent
/// (within [`WATCH_SMALL_MESSAGES_PAST_BUDGET_BYTES`]): streams that hold the budget cannot keep
/// small events from everyone else.
pub const WATCH_STREAM_SMALL_MESSAGE_BYTES: usize = 64 * 1024;

/// Bytes of small messages ([`WATCH_STREAM_SMALL_MESSAGE_BYTES`]) idle streams may take past
/// [`WATCH_BUFFERED_BYTES_TOTAL`], all streams together. A reader takes its message at once and
/// gives the bytes back; only streams whose clients stopped reading keep theirs, and past this
/// bound those wait in storage like the rest. They keep them for about [`WATCH_STREAM_STALL`]
/// before they are evicted, so this bridges a second, not an attack.
pub const WATCH_SMALL_MESSAGES_PAST_BUDGET_BYTES: usize = 8 * 1024 * 1024;

/// How long a watch stream may hold bytes of the member's watch budget without its client taking
/// any, once the budget is spent, before the stream is evicted (`watch::WatchBudget`): its watchers
/// go and its connection is closed, so the client reconnects and resumes from its last revision.
/// Without eviction, streams whose clients read their sockets but never open their HTTP/2
/// windows held the budget for as long as they stayed, and every other watcher's events waited in
/// storage meanwhile (4,000 such streams: a well-behaved watcher got none of 40 events).
/// A stream that holds more gets longer, at [`WATCH_STREAM_MIN_BYTES_PER_SEC`].
pub const WATCH_STREAM_STALL: Duration = Duration::from_secs(1);

/// The slowest rate at which a watch stream's client is expected to take what the stream holds,
/// while the member's watch budget is spent: a stream holding `b` bytes is evicted once it has
/// taken nothing for [`WATCH_STREAM_STALL`] plus `b` at this rate.
pub const WATCH_STREAM_MIN_BYTES_PER_SEC: u64 = 1024 * 1024;

/// How often, at most, the streams are searched for stalled ones while the watch budget is spent.
pub const WATCH_STALL_SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Key limit of a `KV.RangeStream`'s first chunk (etcd's `initialStreamChunkLimit`); later
/// chunks double or halve it to land near `--max-request-bytes` (`apply::RangeStream`).
pub const RANGE_STREAM_FIRST_CHUNK_KEYS: usize = 10;

/// A `KV.RangeStream` chunk is cut before its records pass this many times `--max-request-bytes`
/// (one larger record goes alone): with [`RANGE_STREAM_BUFFER`] it bounds what a stream holds.
pub const RANGE_STREAM_CHUNK_BYTES_FACTOR: usize = 2;

/// Keys of the key index a `Range` looks at per hold of the store's lock (`apply::
/// range_in_pieces`): what a write waits for at most behind a range of any size (about a
/// millisecond), while the lock is taken only once per this many keys.
pub const RANGE_PIECE_KEYS: usize = 4096;

/// About how many bytes of chunks all `KV.RangeStream`s of a member hold together. A stream holds
/// up to [`RANGE_STREAM_BUFFER`] chunks read ahead and one that HTTP/2 is sending, each up to
/// [`RANGE_STREAM_CHUNK_BYTES_FACTOR`] times its target; the target (at most
/// `--max-request-bytes`) is each stream's share of this and, as the bytes held near it, of
/// what is left ([`range_stream_chunk_target`]), down to [`RANGE_STREAM_CHUNK_BYTES_MIN`]. A
/// stream alone aims at 1.3 MiB (etcd's chunks aim at `--max-request-bytes`, 1.5 MiB by default).
///
/// Measured with 32 streams whose clients stopped reading (`tests/range_stream.rs`, member RSS):
/// without a total, +130 MB (3 MiB chunks); with 16 MiB, +39 to +68 MB (shared by the number
/// open alone or also by what is left: the same), of which (heaptrack) 12 MB were chunks read
/// ahead, 14 MB chunks HTTP/2 held (tonic's encode buffer grows by doubling: up to twice a
/// chunk) and the rest the allocator's; with this total and shares of what is left, +24 to +48
/// MB, and +16 to +33 MB once chunks were encoded into room of their size (`net::grpc_codec`).
/// Smaller chunks cost no speed: `metastore bench list --stream` of 50,000 keys of 1 KiB
/// (memory engine), 1/4/16 clients, lists per second 4.4-5.3/6.4-7.1/8.1-8.3 against
/// 3.6-4.2/4.5-5.7/5.7-7.5 with 16 MiB, server CPU 10-30% less.
pub const RANGE_STREAM_BUFFERED_BYTES_TOTAL: usize = 8 * 1024 * 1024;

/// The least chunk target of a `KV.RangeStream`, however many are open: below it the per-chunk
/// costs (a store read, a message) would dominate.
pub const RANGE_STREAM_CHUNK_BYTES_MIN: usize = 64 * 1024;

/// The chunk target of each `KV.RangeStream` while `open` of them are open and their chunks hold
/// `held` bytes (see [`RANGE_STREAM_BUFFERED_BYTES_TOTAL`]), at most `max_request_bytes`: a
/// stream's share of the total, and no more than would let its chunks pass what is left of it.
/// So the bytes held stay within the total but for chunks at the floor, whatever order the
/// streams opened in.
pub fn range_stream_chunk_target(open: usize, held: usize, max_request_bytes: usize) -> usize {
    let chunks_held = (RANGE_STREAM_BUFFER + 1) * RANGE_STREAM_CHUNK_BYTES_FACTOR;
    let share = RANGE_STREAM_BUFFERED_BYTES_TOTAL / (open.max(1) * chunks_held);
    let room = RANGE_STREAM_BUFFERED_BYTES_TOTAL.saturating_sub(held) / chunks_held;
    share
        .min(room)
        .max(RANGE_STREAM_CHUNK_BYTES_MIN)
        .min(max_request_bytes.max(1))
}

/// Chunks of a `KV.RangeStream` read ahead of the client, at most: a client that stops reading
/// stops the reading (beyond what HTTP/2 flow control lets through).
pub const RANGE_STREAM_BUFFER: usize = 2;

/// Watchers one watch stream may hold; a create beyond it is refused (etcd has no such limit).
pub const WATCH_STREAM_WATCHERS_MAX: usize = 10_000;

/// Watchers clients may create on one member, all streams and connections together
/// (`--max-watchers`): each costs memory (20,000 watchers over 20 streams added 29.6 MB of RSS,
/// catch-up included: about 1.5 KiB each, more for long keys), and one connection may open 1,024
/// streams of [`WATCH_STREAM_WATCHERS_MAX`] each. A create past it is refused as a
/// create past a stream's limit is. Watchers the server keeps for a request in flight (Lock,
/// Election.Observe) are not refused.
pub const MAX_WATCHERS_DEFAULT: usize = 1_000_000;

/// Revisions one catch-up round reads from storage for all watchers behind (etcd's
/// `watchBatchMaxRevs`); it stops at the first revision boundary past either bound.
pub const WATCH_CATCHUP_REVISIONS: usize = 1000;

/// Bytes of records one catch-up round reads from storage, at most (plus one revision).
pub const WATCH_CATCHUP_BYTES: usize = 1024 * 1024;

/// Watchers (or events) a catch-up round handles per hold of the watch hub's lock: apply's
/// fan-out waits on that lock, so a round over many watchers lets it in between batches.
pub const WATCH_CATCHUP_LOCK_BATCH: usize = 256;

/// How often the catch-up task looks at watchers that are behind, at the longest.
pub const WATCH_CATCHUP_INTERVAL: Duration = Duration::from_millis(100);

/// Default period of watch progress notifications (etcd's default, 10 minutes).
pub const WATCH_PROGRESS_INTERVAL_DEFAULT: Duration = Duration::from_secs(600);

/// Shortest accepted progress-notification period (keeps the ticker from spinning).
pub const WATCH_PROGRESS_INTERVAL_MIN: Duration = Duration::from_millis(100);

/// Shortest lease TTL: 1.5 election timeouts, rounded up to whole seconds (as etcd computes it), so
/// a lease cannot expire during a normal leader election.
pub const LEASE_MIN_TTL_SECS: i64 = ((3 * ELECTION_TIMEOUT_MS / 2) as i64 + 999) / 1000;

/// Longest lease TTL accepted (etcd's `MaxLeaseTTL`).
pub const LEASE_MAX_TTL_SECS: i64 = 9_000_000_000;

/// TTL of the lease a Lock or Election.Campaign with lease 0 is given (etcd's server opens a
/// concurrency session for it, whose default TTL this is, and never keeps it alive).
pub const LOCK_SESSION_TTL_SECS: i64 = 60;

/// Learners a cluster may have at once: etcd 3.5's fixed limit (a `MemberAdd` of one more is
/// refused with "too many learner members in cluster"; later releases made it the default of
/// `--experimental-max-learners`).
pub const MAX_LEARNERS: usize = 1;

/// How often the leader looks for expired leases.
pub const LEASE_EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Keep-alive responses buffered per stream (a client that stops reading stops being answered).
pub const LEASE_KEEPALIVE_STREAM_BUFFER: usize = 16;

/// Default period of lease checkpoints (etcd's default, 5 minutes).
pub const LEASE_CHECKPOINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(300);

/// Leases per checkpoint proposal (etcd's `maxLeaseCheckpointBatchSize`).
pub const LEASE_CHECKPOINT_BATCH: usize = 1000;

/// Expired leases revoked per check, at most (the rest wait for the next check).
pub const LEASE_REVOKES_PER_CHECK: usize = 256;

/// How stale the backend size used for the quota check may be (reading it costs engine calls).
pub const QUOTA_SIZE_REFRESH: Duration = Duration::from_millis(100);

/// Raft log entries one append/replication batch may carry.
pub const RAFT_MAX_PAYLOAD_ENTRIES: u64 = 1024;

/// How long a replication session to a peer that could not be reached waits before giving up
/// (and raft opening the next one): one heartbeat interval.
pub const PEER_REDIAL_PAUSE: Duration = Duration::from_millis(HEARTBEAT_INTERVAL_MS);

/// Responses of a replication stream buffered between the gRPC stream and raft.
pub const RAFT_STREAM_WINDOW: usize = 64;

/// How long dialing a peer may take before raft counts it unreachable.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(ELECTION_TIMEOUT_MS);

/// Deadline of one member-to-member request that is not raft's own (it brings its own TTLs).
pub const PEER_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest peer message: a batch of [`RAFT_MAX_PAYLOAD_ENTRIES`] entries of the largest requests
/// would not fit, so the batch is also bounded by bytes in practice by openraft's payload limit;
/// this is the transport's ceiling.
pub const PEER_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Size of one chunk of a snapshot (on the wire, in a backup, and per batch of an install): what
/// a member holds of a snapshot in memory at a time.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Page size of the etcd snapshot files (bbolt databases) `Maintenance.Snapshot` streams: etcd's
/// own on x86-64 and arm64 Linux. Besides the piece being sent (about [`SNAPSHOT_CHUNK_BYTES`]),
/// the writer holds one open page per level of the tree it writes, and one record.
pub const ETCD_SNAPSHOT_PAGE_BYTES: usize = 4096;

/// Least time a whole snapshot transfer may take; see [`SNAPSHOT_TRANSFER_MIN_BYTES_PER_SEC`].
pub const SNAPSHOT_TRANSFER_TIMEOUT_MIN: Duration = Duration::from_secs(60);

/// The slowest a snapshot transfer may progress: its deadline is
/// [`SNAPSHOT_TRANSFER_TIMEOUT_MIN`] plus one second per this many bytes sent so far (the
/// receiver's install of them included), so a large store gets the time its size needs and a
/// stalled transfer still ends.
pub const SNAPSHOT_TRANSFER_MIN_BYTES_PER_SEC: u64 = 4 * 1024 * 1024;

/// `Maintenance.Snapshot` streams a member serves at once; later calls wait for a place. Each
/// stream holds a frozen engine view, a piece of the file and its encoding in flight, and its
/// first pass reads the whole store on a blocking thread: without a bound, 20 streams whose
/// clients stopped reading took a member with 120 MB of data from 146 to 522 MB RSS (60
/// concurrent `etcdctl snapshot save` cost etcd 3.5.1 about 2.6 MB each). Backups are rare, and
/// each already reads the whole store: running them two at a time costs them little.
pub const SNAPSHOT_STREAMS_MAX: usize = 2;

/// How long a `Maintenance.Snapshot` call waits for one of the [`SNAPSHOT_STREAMS_MAX`] places
/// before it is refused with etcd's "too many requests".
pub const SNAPSHOT_STREAM_WAIT: Duration = Duration::from_secs(60);

/// How long a `Maintenance.Snapshot` stream may go without its client asking for the next piece:
/// then the member ends it and gives back its place and its engine view. Without it, two clients
/// that read a piece and stopped held both places for as long as their connections lived, and
/// every other backup waited [`SNAPSHOT_STREAM_WAIT`] and failed. Half that wait, so a call
/// queued behind a stalled stream is served.
pub const SNAPSHOT_STREAM_STALL: Duration = Duration::from_secs(30);

/// How long a member receiving a snapshot waits for the next chunk before it drops the transfer
/// (a sender that went away without closing the stream must not hold the receive forever). Also
/// how long a new transfer waits for the one before it to give up its place.
pub const SNAPSHOT_CHUNK_RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `--snapshot-count` (etcd's): applied entries between two snapshots. The log before a snapshot
/// is purged, less up to [`RAFT_LOGS_KEPT_AFTER_SNAPSHOT`] entries kept for followers that are
/// only a little behind (a follower further behind receives the snapshot).
pub const SNAPSHOT_COUNT_DEFAULT: u64 = 100_000;

/// Default `--experimental-compaction-batch-limit` (etcd's): records one step of a compaction's
/// physical half looks at (and keys of the key index it compacts) while it holds the store's write
/// lock. As in etcd, 0 on the command line means this default.
pub const COMPACTION_BATCH_LIMIT_DEFAULT: usize = 1000;

/// Default `--experimental-compaction-sleep-interval`: the pause after each batch of records a
/// compaction deletes (etcd 3.5.1 pauses a fixed 10 ms; the flag, with this default, came in a
/// later 3.5 release). 0 on the command line means this default, as in etcd.
pub const COMPACTION_SLEEP_INTERVAL_DEFAULT: Duration = Duration::from_millis(10);

/// How long a `Compact` with `physical` waits for the next step of the compaction (on top of the
/// sleep interval) before it gives up with a timeout; the compaction itself stays applied.
pub const COMPACTION_PHYSICAL_STALL_MAX: Duration = Duration::from_secs(10);

/// Most entries kept below the last snapshot (never more than half of `--snapshot-count`).
pub const RAFT_LOGS_KEPT_AFTER_SNAPSHOT: u64 = 5_000;

/// Bytes of the raft log's newest entries kept in memory (`raft::log_tail`): openraft
/// reads each entry back to apply it and to replicate it, almost always within a few entries of
/// the end. A few of the largest requests, or some thousands of small ones.
pub const RAFT_LOG_TAIL_BYTES: usize = 4 * 1024 * 1024;

/// How long a member started with `--initial-cluster-state existing` tries to reach the cluster.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between attempts to reach the cluster when joining.
pub const JOIN_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Reads that may wait for the leader's next read-index round (`node::read_index`); more wait to
/// join the queue, within their deadlines.
pub const READ_INDEX_QUEUE: usize = 4096;

/// How long one read-index round may take (every read queued behind it waits for it): a quorum's
/// heartbeat answers, or a follower's call to the leader.
pub const READ_INDEX_ROUND_TIMEOUT: Duration = Duration::from_millis(2 * ELECTION_TIMEOUT_MS);

/// Most commands a follower forwards to the leader in one `ProposeMany` call (and most a leader
/// takes in one; the commands are proposed at once).
pub const FORWARD_BATCH_COMMANDS: usize = 256;

/// A forwarded batch stops growing once its commands add up to this many bytes (a single larger
/// command travels alone; each is bounded by `--max-request-bytes`).
pub const FORWARD_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The most proposals a leader hands raft's core in one message (`node::propose_batch`): every
/// request handler that proposes at about the same moment joins one log append.
pub const PROPOSE_BATCH_COMMANDS: usize = 256;

/// Pause before a request whose leader just changed is routed again.
pub const FORWARD_RETRY_INTERVAL: Duration = Duration::from_millis(HEARTBEAT_INTERVAL_MS);

/// How long a follower hears nothing from its leader before it checks whether the leader's process
/// is still there (three missed heartbeats: one late heartbeat on a busy machine is no news).
pub const LEADER_SILENCE: Duration = Duration::from_millis(3 * HEARTBEAT_INTERVAL_MS);

/// Deadline of that check: it only asks whether the leader's peer port still accepts connections.
pub const LEADER_PROBE_TIMEOUT: Duration = Duration::from_millis(2 * HEARTBEAT_INTERVAL_MS);

/// How much later than the previous survivor (in member-id order) each survivor of a dead leader
/// starts its election, so that two of them do not split the vote.
pub const FAILOVER_STAGGER: Duration = Duration::from_millis(2 * HEARTBEAT_INTERVAL_MS);

/// How long a request waits for a leader to be known before failing with "no leader".
pub const LEADER_WAIT: Duration = Duration::from_millis(3 * ELECTION_TIMEOUT_MS);

/// A learner may be promoted once its log is at most this many entries behind the leader's.
pub const LEARNER_PROMOTE_MAX_LAG: u64 = 1000;

/// Pause between attempts to publish this member's attributes.
pub const PUBLISH_RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Answers larger than this are counted in the member's send budget (`api::send_budget`) until
/// the client has taken them: the HTTP/2 initial window (RFC 9113 §6.9.2), which a client takes
/// whole without opening its window, so a smaller answer never waits in the member for one.
pub const SEND_HELD_MIN_BYTES: usize = 65_535;

/// The bytes of large answers a member holds for clients that have not taken them yet, besides
/// one answer of any size when nothing else is held (`api::send_budget`).
pub const SEND_BUDGET_BYTES: usize = 16 * 1024 * 1024;

/// How long a range waits for a place to read in (past its first piece), or for room in the send
/// budget, before it is refused with etcd's "too many requests": a list queued behind others is
/// served late rather than refused (kube-apiserver lists every resource at once when it starts,
/// and a list of a million keys takes seconds).
pub const LARGE_READ_WAIT: Duration = Duration::from_secs(60);

/// The slowest a client may take a large answer: one that has not taken all of it after
/// [`SEND_DEADLINE_BASE`] plus its size at this rate loses the stream, and the member the bytes.
pub const SEND_MIN_BYTES_PER_SEC: usize = 1024 * 1024;

/// See [`SEND_MIN_BYTES_PER_SEC`].
pub const SEND_DEADLINE_BASE: Duration = Duration::from_secs(30);

/// How long a client may take to take an answer of `bytes` ([`SEND_MIN_BYTES_PER_SEC`]).
pub fn send_deadline(bytes: usize) -> Duration {
    SEND_DEADLINE_BASE + Duration::from_secs((bytes / SEND_MIN_BYTES_PER_SEC) as u64)
}

/// The pieces a large answer is handed to HTTP/2 in, each copied out of it: HTTP/2 asks for the
/// next once the client's window has room, and keeps no piece that shares the whole answer's
/// memory, so an answer cut at its deadline is freed at once.
pub const SEND_PIECE_BYTES: usize = 64 * 1024;

/// Concurrent gRPC streams per client connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// The decoded size (RFC 9113 §6.5.2: names + values + 32 per field) of one request's header list
/// that the client port accepts (`SETTINGS_MAX_HEADER_LIST_SIZE`, advertised; hyper's default). The
/// `:authority` fix-up holds to it too, so a small block of references into the HPACK table cannot
/// decode into a large allocation before anything checks it.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// PINGs a client may send closer together than `--grpc-keepalive-min-time` before its connection
/// is closed (grpc-go's server allows two such strikes).
pub const MAX_PING_STRIKES: u32 = 2;

/// `--grpc-keepalive-min-time`: the shortest interval between a client's keepalive PINGs
/// (etcd's default).
pub const GRPC_KEEPALIVE_MIN_TIME_DEFAULT: Duration = Duration::from_secs(5);

/// `--grpc-keepalive-interval`: how long a client connection may stay silent before the server
/// PINGs it (etcd's default).
pub const GRPC_KEEPALIVE_INTERVAL_DEFAULT: Duration = Duration::from_secs(2 * 60 * 60);

/// `--grpc-keepalive-timeout`: how long the server waits for the answer to its PING before it
/// closes the connection (etcd's default).
pub const GRPC_KEEPALIVE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(20);

/// The HPACK dynamic table size the client port allows (`SETTINGS_HEADER_TABLE_SIZE`, the HTTP/2
/// default, which the server never raises).
pub const HPACK_TABLE_BYTES: usize = 4096;

/// How long a new client connection may take to send its first bytes (the HTTP/2 preface or an
/// HTTP/1.1 request line) before it is closed: the client port tells the two apart by them.
pub const CLIENT_SNIFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause of a client listener after a failed accept (e.g. out of file descriptors), so it does not
/// spin while the condition lasts.
pub const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long a client connection's socket may take no bytes at all, while the member has some to
/// send, before the connection is closed (`net::write_gate`). An HTTP/2 client reads its socket
/// whatever its application does with the streams (flow control holds the rest back), so a socket
/// that stays full this long belongs to a client that is gone or frozen; meanwhile its streams
/// hold their share of the member's watch and send budgets.
pub const CLIENT_WRITE_STALL: Duration = Duration::from_secs(30);

/// The most bytes a connection gathers from its HTTP/2 writer before writing them to its socket
/// (`net::coalesce`): several responses' worth, so the responses finished together leave in one
/// write; a larger write goes straight to the socket.
pub const COALESCED_WRITE_BYTES: usize = 64 * 1024;

/// How long an HTTP/1.1 client may take to send a request's headers.
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/1.1 connections (health checks, metrics scrapes, the JSON gateway) served at once per
/// listener; beyond it a newcomer takes the slot of the connection idle longest
/// (`net::http_slots`), or is closed if none has been idle for [`HTTP_EVICT_IDLE_AFTER`].
pub const HTTP_MAX_CONNECTIONS: usize = 1024;

/// How long an HTTP/1.1 connection must have waited for a request before a newcomer may take its
/// slot when all are taken.
pub const HTTP_EVICT_IDLE_AFTER: Duration = Duration::from_secs(1);

/// File descriptors kept out of the connection pools (`net::conn_limit`): RocksDB's files (it
/// keeps every table file open and opens new ones as it flushes and compacts), the log, and the
/// connections this member dials to its peers. Running out of them would stop the member.
pub const FILES_RESERVED: u64 = 1024;

/// Connections the peer listeners hold at once (together): members dial each other over a few
/// channels each, so even a large cluster needs a few dozen.
pub const PEER_CONNECTIONS_MAX: usize = 256;

/// The open-file limit assumed when the process's own cannot be read.
pub const OPEN_FILES_ASSUMED: u64 = 1024;

/// Connections the client-facing listeners (client and metrics URLs) hold at once, together, for
/// a process allowed `open_files` descriptors: what is left after [`FILES_RESERVED`] and the peer
/// pool, but never less than a quarter of the limit. Each idle HTTP/2 connection costs about
/// 33 KiB of memory, so this also bounds what a flood of connections can take.
pub fn client_connections_max(open_files: u64) -> usize {
    let left = open_files.saturating_sub(FILES_RESERVED + PEER_CONNECTIONS_MAX as u64);
    usize::try_from(left.max(open_files / 4).max(1)).unwrap_or(usize::MAX)
}

/// Pending connections each listening socket queues for `accept` (the kernel caps it at
/// `net.core.somaxconn`, which Go, and so etcd, uses as its backlog).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Client connections accepted but not yet told apart (HTTP/2 or HTTP/1.1), queued for the gRPC
/// server per listener.
pub const CLIENT_ACCEPT_QUEUE: usize = 128;

/// Peer connections accepted (and past their TLS handshake) but not yet taken by the gRPC server,
/// per listener: a cluster has a few members, each with a few channels.
pub const PEER_ACCEPT_QUEUE: usize = 64;

/// How long a connection to an `https://` client or peer listener may take to complete its TLS
/// handshake before it is closed (a handshake never finished would hold a task and a socket).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `/health` waits for a linearizable read to confirm the member can serve (etcd: 1 s).
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest JSON body (or streamed JSON message) the gateway reads for a server with
/// `--max-request-bytes` = `max_request_bytes`: base64 makes bytes fields 4/3 larger, the rest
/// is JSON punctuation and names, so twice the request plus gRPC's own overhead allowance. The
/// decoded protobuf request is then held to gRPC's bound, `max_request_bytes` +
/// [`GRPC_OVERHEAD_BYTES`], and the node's own size check applies as for gRPC.
pub fn gateway_max_body_bytes(max_request_bytes: usize) -> usize {
    max_request_bytes
        .saturating_mul(2)
        .saturating_add(GRPC_OVERHEAD_BYTES)
}

/// Largest `--max-txn-ops` accepted: bounds the work of one replicated command.
pub const MAX_TXN_OPS_LIMIT: usize = 1 << 16;

/// Deepest nesting of transactions inside transactions the server accepts (bounds recursion).
pub const MAX_TXN_NESTING_DEPTH: usize = 64;

/// Async worker threads of the server: one core is left to fsync, RocksDB's background work and the
/// kernel's network stack, but never fewer than two workers. With one, a single long poll held
/// every other client: tonic encodes a unary response whole on the worker, so a keys-only list of
/// 1M keys held a concurrent put 59 ms and one of 10M keys 800 ms; with two, 2.1 ms at 1M keys
/// (`scripts/scale-vs-etcd.sh`, 2 cores). Puts and serializable ranges showed no difference
/// beyond noise between one and two workers on 2 cores. `TOKIO_WORKER_THREADS` overrides it.
pub fn server_worker_threads() -> usize {
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.max(1);
    }
    cores().saturating_sub(1).max(2)
}

/// The machine's cores as the OS reports them (1 if it cannot tell).
fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Default lifetime of an auth token since its last use (etcd's `--auth-token-ttl`, seconds).
pub const AUTH_TOKEN_TTL_SECS_DEFAULT: u64 = 300;

/// Largest `--auth-token-ttl` accepted (one day).
pub const AUTH_TOKEN_TTL_SECS_MAX: u64 = 24 * 60 * 60;

/// Default lifetime of a JWT auth token from its issue (etcd's `ttl=` option of
/// `--auth-token jwt,...`, 5m). A JWT is not renewed by use: it carries its expiry.
pub const AUTH_JWT_TTL_DEFAULT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Bounds of a JWT's `ttl=`: its `exp` claim counts whole seconds, so a shorter one would expire at
/// once; the longest is the simple tokens' longest.
pub const AUTH_JWT_TTL_MIN: std::time::Duration = std::time::Duration::from_secs(1);
pub const AUTH_JWT_TTL_MAX: std::time::Duration =
    std::time::Duration::from_secs(AUTH_TOKEN_TTL_SECS_MAX);

/// Largest JWT key file read (`pub-key=`, `priv-key=`): PEM keys are a few KiB; an HMAC secret
/// is its file's bytes.
pub const AUTH_JWT_KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Largest token a client may present: a JWT from us is a few hundred bytes; anything longer is
/// refused before it is decoded.
pub const AUTH_TOKEN_BYTES_MAX: usize = 8 * 1024;

/// Live auth tokens one member keeps; past it, issuing a token drops the one closest to expiry, so
/// a client logging in in a loop cannot grow memory without bound.
pub const AUTH_TOKENS_MAX: usize = 100_000;

/// Random letters in an auth token before its `.<index>` suffix (etcd's simple tokens have 16).
pub const AUTH_TOKEN_RANDOM_CHARS: usize = 16;

/// CPU-heavy requests of one kind a member runs at once: half its cores, at least one. Password
/// hashes and checks (bcrypt: anyone may ask to authenticate as a user that exists, `root` always
/// does once auth is on, and each check costs about 50 ms of CPU at the default cost) get this
/// many places, and full scans of the store (`Hash`, `HashKV`) as many again; later requests
/// wait their turn (up to the request timeout), so a flood of them slows its own kind, not the
/// member's other work.
pub fn heavy_work_places() -> usize {
    (cores() / 2).max(1)
}

/// Bytes of records (keys and values) `HashKV` reads between two brief holds of the store's
/// lock, about: a fraction of a millisecond's reading, so writes go on while a large store is
/// hashed.
pub const HASH_PIECE_BYTES: usize = 256 * 1024;

/// bcrypt cost of stored password hashes (etcd's `--bcrypt-cost`): default and accepted bounds.
pub const BCRYPT_COST_DEFAULT: u32 = 10;
pub const BCRYPT_COST_MIN: u32 = 4;
pub const BCRYPT_COST_MAX: u32 = 31;

const _: () = assert!(HEARTBEAT_INTERVAL_MS * 5 <= ELECTION_TIMEOUT_MS);
const _: () = assert!(SNAPSHOT_STREAM_STALL.as_secs() * 2 <= SNAPSHOT_STREAM_WAIT.as_secs());
// bbolt page sizes are powers of two; etcdctl wants whole 512-byte sectors before the hash.
const _: () =
    assert!(ETCD_SNAPSHOT_PAGE_BYTES.is_power_of_two() && ETCD_SNAPSHOT_PAGE_BYTES % 512 == 0);
const _: () = assert!(LEASE_MIN_TTL_SECS * 1000 >= (3 * ELECTION_TIMEOUT_MS / 2) as i64);
const _: () = assert!(MAX_TXN_OPS_DEFAULT <= MAX_TXN_OPS_LIMIT);
// A catch-up batch fits in a stream that is worth reading storage for (at most half full).
const _: () = assert!(WATCH_CATCHUP_BYTES <= WATCH_STREAM_BUFFER_BYTES / 2);
const _: () = assert!(WATCH_CATCHUP_BYTES <= WATCH_BUFFERED_BYTES_TOTAL / 2);
const _: () = assert!(WATCH_STREAM_SHARE_MIN <= WATCH_STREAM_BUFFER_BYTES);
const _: () = assert!(MAX_REQUEST_BYTES_DEFAULT + GRPC_OVERHEAD_BYTES < MAX_RESPONSE_BYTES);
const _: () = assert!(QUOTA_BACKEND_BYTES_DEFAULT <= QUOTA_BACKEND_BYTES_MAX);
const _: () =
    assert!(BCRYPT_COST_MIN <= BCRYPT_COST_DEFAULT && BCRYPT_COST_DEFAULT <= BCRYPT_COST_MAX);
const _: () = assert!(AUTH_TOKEN_TTL_SECS_DEFAULT <= AUTH_TOKEN_TTL_SECS_MAX);
const _: () = assert!(
    AUTH_JWT_TTL_MIN.as_secs() <= AUTH_JWT_TTL_DEFAULT.as_secs()
        && AUTH_JWT_TTL_DEFAULT.as_secs() <= AUTH_JWT_TTL_MAX.as_secs()
);

// A range stream's first chunk goes into its buffer before the stream opens.
const _: () = assert!(RANGE_STREAM_BUFFER >= 1 && RANGE_STREAM_FIRST_CHUNK_KEYS >= 1);

// A chunk arrives well within its deadline at the slowest rate a transfer may go.
const _: () = assert!(
    (SNAPSHOT_CHUNK_BYTES as u64) / SNAPSHOT_TRANSFER_MIN_BYTES_PER_SEC
        < SNAPSHOT_CHUNK_RECEIVE_TIMEOUT.as_secs()
);

/// RocksDB's write-ahead log is cut back (the column families still holding its oldest file are
/// flushed) once it passes this many bytes: it bounds the data dir's log files and what a
/// restart replays.
pub const ENGINE_LOG_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Records read by one batched engine lookup (`storage::Engine::get_many`): RocksDB pins
/// the blocks of a batch's values until they are copied out, so a batch is bounded, not a range.
pub const ENGINE_GET_MANY_KEYS: usize = 256;

/// RocksDB asks the kernel to write a table file back each time this many bytes were added to it
/// (`bytes_per_sync`), so a log fsync never waits behind a large backlog of dirty pages.
pub const ENGINE_WRITEBACK_BYTES: u64 = 1024 * 1024;

/// Size of one RocksDB memtable (`write_buffer_size`, per column family), resident until flushed.
pub const ENGINE_MEMTABLE_BYTES: usize = 32 * 1024 * 1024;

const _: () =
    assert!(SEND_PIECE_BYTES <= SEND_BUDGET_BYTES && SEND_HELD_MIN_BYTES < SEND_BUDGET_BYTES);

/// Revision samples a periodic auto-compactor takes per compaction interval (etcd's
/// `retryDivisor`).
pub const AUTO_COMPACTION_SAMPLES_PER_INTERVAL: u32 = 10;

/// The longest interval between periodic auto-compactions, whatever the retention (etcd's: an
/// hour).
pub const AUTO_COMPACTION_MAX_INTERVAL: Duration = Duration::from_secs(3_600);

/// How often a revision-mode auto-compactor compacts (etcd's `revInterval`).
pub const AUTO_COMPACTION_REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_stream_chunks_shrink_as_streams_open_between_the_floor_and_the_request_limit() {
        let max = MAX_REQUEST_BYTES_DEFAULT;
        // One stream: chunks near the request limit, as etcd's; a smaller limit is kept.
        assert!(range_stream_chunk_target(0, 0, max) > max * 3 / 4);
        assert!(range_stream_chunk_target(1, 0, max) > max * 3 / 4);
        assert_eq!(range_stream_chunk_target(1, 0, max / 2), max / 2);
        // Many: what they hold together stays near the total.
        let held = |open: usize| {
            open * range_stream_chunk_target(open, 0, max)
                * (RANGE_STREAM_BUFFER + 1)
                * RANGE_STREAM_CHUNK_BYTES_FACTOR
        };
        for open in [4, 8, 20] {
            assert!(range_stream_chunk_target(open, 0, max) < range_stream_chunk_target(1, 0, max));
            assert!(
                held(open) <= RANGE_STREAM_BUFFERED_BYTES_TOTAL,
                "{open} streams"
            );
        }
        // Never below the floor, never above a smaller request limit.
        assert_eq!(
            range_stream_chunk_target(100_000, 0, max),
            RANGE_STREAM_CHUNK_BYTES_MIN
        );
        assert_eq!(range_stream_chunk_target(1, 0, 1000), 1000);
        assert_eq!(
            range_stream_chunk_target(1, RANGE_STREAM_BUFFERED_BYTES_TOTAL, max),
            RANGE_STREAM_CHUNK_BYTES_MIN
        );
    }

    #[test]
    fn range_stream_chunks_stay_within_the_total_whatever_order_streams_open_in() {
        // Streams open one after another; each reads all the chunks it may hold, every one
        // twice its target (the most a chunk is), and stops there, its client reading nothing.
        // Only chunks at the floor may take what they hold past the total.
        let max = MAX_REQUEST_BYTES_DEFAULT;
        let per_stream = RANGE_STREAM_BUFFER + 1;
        let at_the_floor = RANGE_STREAM_CHUNK_BYTES_MIN * RANGE_STREAM_CHUNK_BYTES_FACTOR;
        let mut held = 0;
        for open in 1..=1000 {
            for _ in 0..per_stream {
                held +=
                    range_stream_chunk_target(open, held, max) * RANGE_STREAM_CHUNK_BYTES_FACTOR;
            }
            let bound = RANGE_STREAM_BUFFERED_BYTES_TOTAL + open * per_stream * at_the_floor;
            assert!(held <= bound, "{open} streams hold {held} bytes");
            if open <= 2 {
                assert!(held <= RANGE_STREAM_BUFFERED_BYTES_TOTAL, "{open} streams");
            }
        }
    }
}
