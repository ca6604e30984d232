//! Dialing other members: a lazily connected gRPC channel per peer URL, through the connector in
//! `dial` (TLS for `https://` ones, gathered writes for all), which `metastore bench` dials its
//! servers with too; and telling a request that never left this member from one that may have
//! arrived. In both worlds: the simulator's network has no TLS (its members use `http://` peer
//! URLs) and keeps no error sources.

use tonic::transport::Channel;

/// Why no channel to a peer could be made: a matter of its URL or of this member's peer TLS
/// settings, never of the network (channels connect when first used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerDialError {
    #[error("member {0} has no peer URL")]
    NoUrl(String),
    #[error("bad peer URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("peer URL {0} is https: --peer-trusted-ca-file is needed to verify it")]
    NoTrustedCa(String),
    #[error("peer URL {0}: https is not simulated")]
    HttpsNotSimulated(String),
}

/// How this member dials its peers.
#[derive(Clone, Default)]
pub struct PeerDialer {
    /// How `https://` peers are dialed (`--peer-trusted-ca-file`, and `--peer-cert-file` as this
    /// member's client certificate); `None` without peer TLS: an https peer is then unreachable,
    /// with that reason.
    #[cfg(not(madsim))]
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl PeerDialer {
    /// Dial `https://` peers as the peer TLS flags say (the files are read now).
    pub fn new(peer_tls: &crate::config::TlsFlags) -> Result<Self, String> {
        #[cfg(not(madsim))]
        {
            let tls = peer_tls.dial_config().map_err(|e| e.to_string())?;
            Ok(Self { tls })
        }
        #[cfg(madsim)]
        {
            let _ = peer_tls;
            Ok(Self::default())
        }
    }

    /// A lazily connected channel to `url`, through TLS for `https://`.
    pub fn channel(&self, url: &str) -> Result<Channel, PeerDialError> {
        let https = url.strip_prefix("https://");
        // tonic refuses https URIs without its own TLS feature: it gets the same host and port
        // as http://, and the connector below wraps the connection in TLS.
        let dialed = match https {
            Some(rest) => format!("http://{rest}"),
            None => url.to_string(),
        };
        let endpoint = tonic::transport::Endpoint::from_shared(dialed)
            .map_err(|e| PeerDialError::BadUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(crate::limits::PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        // The simulator's transport dials by address: no connector of ours, no TLS.
        #[cfg(madsim)]
        return match https {
            None => Ok(endpoint.connect_lazy()),
            Some(_) => Err(PeerDialError::HttpsNotSimulated(url.to_string())),
        };
        #[cfg(not(madsim))]
        {
            use super::dial::MemberConnector;
            let connector = match (https, &self.tls) {
                (None, _) => MemberConnector::plain(),
                (Some(_), None) => return Err(PeerDialError::NoTrustedCa(url.to_string())),
                (Some(_), Some(config)) => {
                    MemberConnector::tls(config.clone(), url).map_err(|reason| {
                        PeerDialError::BadUrl {
                            url: url.to_string(),
                            reason,
                        }
                    })?
                }
            };
            Ok(endpoint.connect_with_connector_lazy(connector))
        }
    }
}

/// Connect `endpoint` (an `http://` one) now, through the members' own connector: its writes
/// gathered as theirs are. The simulator's transport connects by address.
pub async fn connect_plain(
    endpoint: tonic::transport::Endpoint,
) -> Result<Channel, tonic::transport::Error> {
    #[cfg(not(madsim))]
    return endpoint
        .connect_with_connector(super::dial::MemberConnector::plain())
        .await;
    #[cfg(madsim)]
    return endpoint.connect().await;
}

/// Whether a peer request failed before anything of it left this member: the connection to the
/// peer could not be made (refused, or the TLS handshake failed). Only then is it certain that the
/// peer never saw the request, so that sending it again (to the same or another member) cannot
/// make it count twice. A request that failed on a connection that was open may have arrived.
pub fn never_sent(status: &tonic::Status) -> bool {
    #[cfg(not(madsim))]
    {
        // tonic wraps whatever the connector returns in a `ConnectError` and keeps it as the
        // status's source.
        let mut source = std::error::Error::source(status);
        while let Some(err) = source {
            if err.downcast_ref::<tonic::ConnectError>().is_some() {
                return true;
            }
            source = err.source();
        }
        false
    }
    // The simulated transport keeps no source: a request that could not connect fails with the
    // refusal's own text (madsim's `connect1`), anything after that with another.
    #[cfg(madsim)]
    {
        status.code() == tonic::Code::Unavailable && status.message() == "connection refused"
    }
}
