//! What a request can learn of, and do to, the connection it came on: the names of its verified
//! client certificate, and ending it. In both worlds: the simulator's connections carry none of
//! this (no TLS, no write gate), and these answer accordingly.

/// The user named by the verified client certificate of the connection a request came on: set
/// (by `net::tls`) only on TLS listeners with `--client-cert-auth`, where rustls has checked the
/// certificate against `--trusted-ca-file`. Requests the JSON gateway makes carry none.
pub fn cert_user(extensions: &tonic::Extensions) -> Option<&str> {
    #[cfg(not(madsim))]
    {
        extensions
            .get::<super::conn_info::ClientConnInfo>()?
            .common_name
            .as_deref()
    }
    #[cfg(madsim)]
    {
        let _ = extensions;
        None
    }
}

/// Whether the verified client certificate of the request's connection is valid for `host` (false
/// without one).
pub fn cert_valid_for(extensions: &tonic::Extensions, host: &str) -> bool {
    #[cfg(not(madsim))]
    {
        extensions
            .get::<super::conn_info::ClientConnInfo>()
            .is_some_and(|info| info.hosts.iter().any(|name| name.matches(host)))
    }
    #[cfg(madsim)]
    {
        let _ = (extensions, host);
        false
    }
}

/// What ends the connection a stream came on, where the transport allows (a gRPC connection with
/// a [`super::conn_info::WriteGate`]); nothing otherwise.
pub fn connection_ender(extensions: &tonic::Extensions) -> impl FnOnce() + Send + 'static {
    #[cfg(not(madsim))]
    let gate = extensions
        .get::<super::conn_info::ClientConnInfo>()
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
