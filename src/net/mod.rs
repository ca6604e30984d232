//! The network room: every socket the member serves or dials, below the services that use them.
//! TLS for both sides (`tls`: PEM loading, server and peer-dialing configurations, the plain-or-TLS
//! connection and what a request learns of it, `conn_info`), dialing peers (`peer_dial`, through
//! `dial` for an `https://` peer),
//! the per-listener connection pools (`conn_limit`) and HTTP/1.1 slots (`http_slots`), the HTTP/2
//! `:authority` fix-up and PING policing in front of h2 (`authority`), and the write gate that stops
//! a connection's responses while its socket is full (`write_gate`). None of that exists in the
//! simulator, whose transport is madsim's; what a request learns of its connection
//! (`request_conn`) and how peers are dialed (`peer_dial`) are answered in both worlds.

#[cfg(not(madsim))]
pub mod authority;
#[cfg(not(madsim))]
pub mod conn_info;
#[cfg(not(madsim))]
pub mod conn_limit;
#[cfg(not(madsim))]
pub mod dial;
#[cfg(not(madsim))]
pub mod http_slots;
pub mod peer_dial;
pub mod request_conn;
#[cfg(not(madsim))]
pub mod tls;
#[cfg(not(madsim))]
pub mod write_gate;
