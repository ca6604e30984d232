//! The network room: every socket the member serves or dials, below the services that use them.
//! - `listen`: listening sockets bound before the store opens, accepting, TLS handshakes;
//! - `tls`: client and peer TLS (PEM loading, server and peer-dialing configurations, the
//!   plain-or-TLS connection); `conn_info`: what a request knows of its connection;
//! - `peer_channels`: one client per peer URL, naming this member on every request;
//!   `peer_dial`: the channel behind each (through `dial` for an `https://` peer), and telling
//!   a request that never left this member from one that may have arrived;
//! - `conn_limit`: every listener's pool of connection slots; `http_slots`: HTTP/1.1 slots;
//! - `authority`: the HTTP/2 `:authority` fix-up and PING policing in front of h2;
//! - `write_gate`: a connection's responses wait while its socket is full;
//! - `request_conn`: what a request learns of, and does to, its connection;
//! - `grpc_codec`: the protobuf codec of the generated services and clients.
//!
//! None of the sockets exists in the simulator, whose transport is madsim's: `peer_channels`,
//! `peer_dial` and `request_conn` answer in both worlds, the rest is compiled only outside it.

#[cfg(not(madsim))]
pub mod authority;
#[cfg(not(madsim))]
pub mod conn_info;
#[cfg(not(madsim))]
pub mod conn_limit;
#[cfg(not(madsim))]
pub mod dial;
#[cfg(not(madsim))]
pub mod grpc_codec;
#[cfg(not(madsim))]
pub mod http_slots;
#[cfg(not(madsim))]
pub mod listen;
pub mod peer_channels;
pub mod peer_dial;
pub mod request_conn;
#[cfg(not(madsim))]
pub mod tls;
#[cfg(not(madsim))]
pub mod write_gate;
