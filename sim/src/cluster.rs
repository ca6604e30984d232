//! Simulated members: the real `Node` and gRPC server, on a madsim node with a crash-model disk.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};
use metastore::api::{self, Shutdown};
use metastore::config::{EngineKind, ServerConfig};
use metastore::node::Node;
use metastore::pb::etcdserverpb::kv_client::KvClient;
use metastore::storage::{MemoryEngine, SharedEngine};

/// The client port every simulated member listens on.
pub const CLIENT_PORT: u16 = 2379;

/// The peer port every simulated member listens on.
pub const PEER_PORT: u16 = 2380;

/// `--initial-cluster` for members `(name, ip)`.
pub fn initial_cluster(members: &[(&str, &str)]) -> String {
    members
        .iter()
        .map(|(name, ip)| format!("{name}=http://{ip}:{PEER_PORT}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One simulated member and the disk that survives it.
pub struct SimMember {
    pub node: NodeHandle,
    pub disk: Arc<MemoryEngine>,
    pub ip: String,
}

impl SimMember {
    /// Create (and boot) a member named `name` at `ip`, alone in its cluster.
    pub fn start(handle: &Handle, name: &str, ip: &str) -> SimMember {
        Self::start_in(handle, name, ip, &initial_cluster(&[(name, ip)]))
    }

    /// Create (and boot) a member named `name` at `ip` of the new cluster `cluster`
    /// (`--initial-cluster` syntax).
    pub fn start_in(handle: &Handle, name: &str, ip: &str, cluster: &str) -> SimMember {
        Self::start_with(
            handle,
            name,
            ip,
            cluster,
            ServerConfig::default().snapshot_count,
        )
    }

    /// As [`SimMember::start_in`], taking a raft snapshot every `snapshot_count` applied entries.
    pub fn start_with(
        handle: &Handle,
        name: &str,
        ip: &str,
        cluster: &str,
        snapshot_count: u64,
    ) -> SimMember {
        let disk = Arc::new(MemoryEngine::with_crash_model());
        let boot_disk = disk.clone();
        let addr: SocketAddr = format!("{ip}:{CLIENT_PORT}").parse().expect("sim address");
        let member_name = name.to_string();
        let cluster = cluster.to_string();
        let node = handle
            .create_node()
            .name(name)
            .ip(addr.ip())
            .init(move || {
                let engine: SharedEngine = boot_disk.clone();
                let name = member_name.clone();
                let cluster = cluster.clone();
                async move { run_member(name, addr, cluster, engine, snapshot_count).await }
            })
            .build();
        SimMember {
            node,
            disk,
            ip: ip.to_string(),
        }
    }

    /// Kill the member and cut its power: writes that were never synced are lost. Returns how many
    /// write batches the crash threw away.
    pub fn crash(&self, handle: &Handle) -> usize {
        handle.kill(self.node.id());
        self.disk.crash()
    }

    /// Boot the member again on the same disk.
    pub fn restart(&self, handle: &Handle) {
        handle.restart(self.node.id());
    }

    /// The member's client URL.
    pub fn url(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.ip)
    }
}

async fn run_member(
    name: String,
    addr: SocketAddr,
    cluster: String,
    engine: SharedEngine,
    snapshot_count: u64,
) {
    let peer_addr = SocketAddr::new(addr.ip(), PEER_PORT);
    let config = ServerConfig {
        name,
        listen_client_addrs: vec![addr],
        advertise_client_urls: vec![format!("http://{addr}")],
        listen_peer_addrs: vec![peer_addr],
        advertise_peer_urls: vec![format!("http://{peer_addr}")],
        initial_cluster: metastore::cluster::parse_initial_cluster(&cluster)
            .expect("simulated --initial-cluster"),
        engine: EngineKind::Memory,
        snapshot_count,
        ..ServerConfig::default()
    };
    let member = config.name.clone();
    let node = match Node::start(config, engine).await {
        Ok(node) => node,
        Err(e) => panic!("simulated member failed to start: {e}"),
    };
    let shutdown = Shutdown::new();
    let peers = madsim::task::spawn(api::serve_peers(
        node.clone(),
        vec![peer_addr],
        shutdown.clone(),
        |_| {},
    ));
    let serving = api::serve(node.clone(), vec![addr], shutdown.clone(), |_| {});
    tokio::select! {
        served = serving => {
            if let Err(e) = served {
                panic!("simulated member stopped serving: {e}");
            }
        }
        // A fatal raft error (the disk failed an fsync): the member stops serving, as the real
        // server exits; the harness sees it refuse connections until it is restarted.
        _fatal = node.stopped() => {
            STOPPED_ON_FATAL.with(|s| s.borrow_mut().insert(member));
            shutdown.trigger();
            node.shutdown().await;
        }
    }
    drop(peers);
}

thread_local! {
    /// How many members stopped on a fatal error in the simulation on this thread (madsim runs a
    /// whole simulation on one thread).
    static STOPPED_ON_FATAL: std::cell::RefCell<std::collections::BTreeSet<String>> =
        const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

/// Whether member `name` stopped on a fatal raft error since [`forget_stops`] (this thread's
/// simulation).
pub fn stopped_on_fatal(name: &str) -> bool {
    STOPPED_ON_FATAL.with(|s| s.borrow().contains(name))
}

/// Forget which members stopped (a new run, or a member restarted on a repaired disk).
pub fn forget_stops(name: Option<&str>) {
    STOPPED_ON_FATAL.with(|s| match name {
        Some(name) => {
            s.borrow_mut().remove(name);
        }
        None => s.borrow_mut().clear(),
    });
}

/// Connect a KV client to `url`, retrying while the member boots (bounded).
pub async fn connect(url: &str) -> KvClient<tonic::transport::Channel> {
    for _ in 0..200 {
        if let Ok(client) = KvClient::connect(url.to_string()).await {
            return client;
        }
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not connect to {url} within the simulated deadline");
}
