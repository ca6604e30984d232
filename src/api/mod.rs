//! The gRPC edge: etcd's services over the node, request validation, and the mapping of every
//! error to etcd's status codes and messages.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod election;
pub mod gateway;
#[cfg(not(madsim))]
pub mod held_body;
#[cfg(not(madsim))]
pub mod http;
pub mod json;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod peer;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod validate;
pub mod watch;

pub use server::{serve, serve_peers};
pub use shutdown::Shutdown;

/// What ends the connection a stream came on, where the transport allows (a gRPC connection with
/// a [`crate::net::conn_info::WriteGate`]); nothing otherwise.
pub(crate) fn connection_ender(extensions: &tonic::Extensions) -> impl FnOnce() + Send + 'static {
    #[cfg(not(madsim))]
    let gate = extensions
        .get::<crate::net::conn_info::ClientConnInfo>()
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
