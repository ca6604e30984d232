//! The network room: every socket the member serves or dials, below the services that use them.
//! TLS for both sides (`tls`: PEM loading, server and peer-dialing configurations, the plain-or-TLS
//! connection and what a request learns of it, `conn_info`), dialing an `https://` peer (`dial`),
//! the per-listener connection pools (`conn_limit`) and HTTP/1.1 slots (`http_slots`), the HTTP/2
//! `:authority` fix-up and PING policing in front of h2 (`authority`), and the write gate that stops
//! a connection's responses while its socket is full (`write_gate`). None of it exists in the
//! simulator, whose transport is madsim's.

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
#[cfg(not(madsim))]
pub mod tls;
#[cfg(not(madsim))]
pub mod write_gate;
