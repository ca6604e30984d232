//! The gRPC edge: etcd's services over the node, request validation, and the mapping of every
//! error to etcd's status codes and messages.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod election;
pub mod gateway;
pub mod go_json;
pub mod grpc_health;
pub mod grpc_metrics;
pub mod health_check;
pub mod held_body;
pub mod http;
pub mod json;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod peer;
pub mod server;
pub mod status;
pub mod validate;
pub mod watch;

pub use crate::rt::Shutdown;
pub use server::{serve, serve_peers};

pub(crate) use crate::net::request_conn::connection_ender;
