//! Channels to other members: one lazily connected gRPC client per peer URL (dialed by
//! `peer_dial`), shared by raft, request forwarding and the join at startup, each naming this
//! member on every request once its ids are known: its member id and cluster id in the metadata
//! keys [`FROM_MEMBER_KEY`] and [`CLUSTER_ID_KEY`] (etcd's `X-Server-From` and
//! `X-Etcd-Cluster-ID`); the receiver serves only members of its own cluster (`api::peer`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use tonic::transport::Channel;

use super::peer_dial::{PeerDialError, PeerDialer};
use crate::limits;
use crate::pb::metastore::peer_client::PeerClient;

/// The gRPC metadata key naming the sending member (its id in hex), as etcd's `X-Server-From`.
pub const FROM_MEMBER_KEY: &str = "x-server-from";
/// The gRPC metadata key naming the sender's cluster (its id in hex), as etcd's
/// `X-Etcd-Cluster-ID`.
pub const CLUSTER_ID_KEY: &str = "x-etcd-cluster-id";

/// Adds this member's ids to every peer request, once they are known (a member that is joining
/// asks the cluster for them first, with `Members`, the one request served to anyone).
#[derive(Clone, Default)]
pub struct Identify(Arc<OnceLock<(u64, u64)>>);

impl tonic::service::Interceptor for Identify {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some((member, cluster)) = self.0.get() {
            let metadata = request.metadata_mut();
            // Hex digits are always a valid metadata value.
            if let Ok(v) = format!("{member:x}").parse() {
                metadata.insert(FROM_MEMBER_KEY, v);
            }
            if let Ok(v) = format!("{cluster:x}").parse() {
                metadata.insert(CLUSTER_ID_KEY, v);
            }
        }
        Ok(request)
    }
}

/// A client of another member's peer service, naming this member on every request.
#[cfg(not(madsim))]
pub type PeerRpc = PeerClient<tonic::service::interceptor::InterceptedService<Channel, Identify>>;
/// A client of another member's peer service, naming this member on every request.
#[cfg(madsim)]
pub type PeerRpc = PeerClient<Channel, Identify>;

/// Lazily connected gRPC channels to peers, one per URL, shared by raft, request forwarding and
/// the join at startup: every dial to another member goes through [`PeerChannels::client`].
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<BTreeMap<String, PeerRpc>>>,
    /// This member's `(member id, cluster id)` once known: sent with every request.
    identity: Identify,
    /// How peers are dialed (`https://` ones through TLS).
    dialer: PeerDialer,
}

impl PeerChannels {
    /// Channels dialing `https://` peers as the peer TLS flags say (the files are read now).
    pub fn new(peer_tls: &crate::config::TlsFlags) -> Result<Self, String> {
        Ok(Self {
            dialer: PeerDialer::new(peer_tls)?,
            ..Self::default()
        })
    }

    /// Name this member on every request from now on (its ids are fixed for good once known).
    pub fn set_identity(&self, member_id: u64, cluster_id: u64) {
        let _ = self.identity.0.set((member_id, cluster_id));
    }

    /// A client for the peer at `url` (connected on first use). The URL stays as written
    /// (`https://` included) in membership; only the channel sees the dialed form.
    pub fn client(&self, url: &str) -> Result<PeerRpc, PeerDialError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = channels.get(url) {
            return Ok(client.clone());
        }
        let channel = self.dialer.channel(url)?;
        let client = PeerClient::with_interceptor(channel, self.identity.clone())
            .max_decoding_message_size(limits::PEER_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(limits::PEER_MAX_MESSAGE_BYTES);
        channels.insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// A client for member `name` at the first of its `peer_urls`.
    pub fn client_for_member(
        &self,
        name: &str,
        peer_urls: &[String],
    ) -> Result<PeerRpc, PeerDialError> {
        let url = peer_urls
            .first()
            .ok_or_else(|| PeerDialError::NoUrl(name.to_string()))?;
        self.client(url)
    }
}
