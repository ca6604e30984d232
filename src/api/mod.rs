//! The gRPC edge: etcd's services over the node, request validation, and the mapping of every
//! error to etcd's status codes and messages.

pub mod access;
pub mod auth;
#[cfg(not(madsim))]
pub mod authority;
pub mod cluster;
#[cfg(not(madsim))]
pub mod conn_limit;
pub mod election;
pub mod gateway;
#[cfg(not(madsim))]
pub mod held_body;
#[cfg(not(madsim))]
pub mod http;
#[cfg(not(madsim))]
pub mod http_slots;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod peer;
pub mod server;
pub mod status;
#[cfg(not(madsim))]
pub mod tls;
pub mod validate;
pub mod watch;
#[cfg(not(madsim))]
pub mod write_gate;

pub use server::{serve, serve_peers, Shutdown};

/// What ends the connection a stream came on, where the transport allows (a gRPC connection with
/// a [`write_gate::WriteGate`]); nothing otherwise.
pub(crate) fn connection_ender(extensions: &tonic::Extensions) -> impl FnOnce() + Send + 'static {
    #[cfg(not(madsim))]
    let gate = extensions
        .get::<tls::ClientConnInfo>()
        .and_then(|info| info.write_gate.clone());
    #[cfg(madsim)]
    let _ = extensions;
    move || {
        #[cfg(not(madsim))]
        if let Some(gate) = gate {
            gate.end_connection();
        }
    }
}
