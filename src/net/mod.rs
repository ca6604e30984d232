//! The network room: every socket the member serves or dials, below the services that use them.
//! - `serve`: serving the member's ports in both worlds (the accept loops on real sockets, the
//!   simulator's transport by address), knowing the services only as a gRPC router and an
//!   HTTP/1.1 service;
//! - `listen`: listening sockets bound before the store opens, accepting, TLS handshakes;
//!   `sniff`: gRPC or HTTP/1.1, told from a connection's first bytes;
//! - `tls`: client and peer TLS (PEM loading, server and peer-dialing configurations, the
//!   plain-or-TLS connection); `conn_info`: what a request knows of its connection;
//! - `peer_channels`: one client per peer URL, naming this member on every request;
//!   `peer_dial`: the channel behind each (through `dial`: TLS for an `https://` peer, gathered
//!   writes for every one), and telling a request that never left this member from one that may
//!   have arrived;
//! - `conn_limit`: every listener's pool of connection slots; `http_slots`: HTTP/1.1 slots;
//! - `authority`: the HTTP/2 `:authority` fix-up and PING policing in front of h2;
//! - `write_gate`: a connection's responses wait while its socket is full; `coalesce`: the
//!   responses a connection finishes together leave in one socket write;
//! - `request_conn`: what a request learns of, and does to, its connection;
//! - `grpc_codec`: the protobuf codec of the generated services and clients.
//!
//! None of the sockets exists in the simulator, whose transport is madsim's: `serve`,
//! `peer_channels`, `peer_dial`, `request_conn` and `http_slots` answer in both worlds, the rest is
//! compiled only outside it. Every `cfg(madsim)` of the crate outside the runtime seam (`rt`) is
//! in this room.

#[cfg(not(madsim))]
pub mod authority;
#[cfg(not(madsim))]
pub mod coalesce;
#[cfg(not(madsim))]
pub mod conn_info;
#[cfg(not(madsim))]
pub mod conn_limit;
#[cfg(not(madsim))]
pub mod dial;
#[cfg(not(madsim))]
pub mod grpc_codec;
pub mod http_slots;
#[cfg(not(madsim))]
pub mod listen;
pub mod peer_channels;
pub mod peer_dial;
pub mod request_conn;
pub mod serve;
#[cfg(not(madsim))]
pub mod sniff;
#[cfg(not(madsim))]
pub mod tls;
#[cfg(not(madsim))]
pub mod write_gate;

#[cfg(not(madsim))]
pub use write_gate::GateLayer;

/// The simulator's transport hands messages over whole and drops every layer (madsim's
/// `Server::layer`): there the write gate's name stands for nothing.
#[cfg(madsim)]
#[derive(Debug, Clone, Copy)]
pub struct GateLayer;
