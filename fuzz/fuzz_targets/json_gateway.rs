//! A JSON request body for one of the grpc-gateway routes, parsed as the HTTP gateway parses it
//! (`api::gateway`). The first input byte picks the route, the second where a streamed body is
//! cut in two as if it arrived in two pieces; the rest is the body.
//!
//! Properties: parsing never panics; an accepted request re-encodes to JSON that parses back to
//! the same request; the re-encoded JSON and the protobuf request stay within a small multiple of
//! the input; a streamed body read in two pieces yields the same requests as read whole.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metastore::api::gateway::{self, GatewayRequest, Route, ALL_ROUTES};
use metastore::pb::etcdserverpb::{LeaseKeepAliveRequest, WatchRequest};

/// Requests of a streamed body read in two pieces, cut at `cut`.
fn in_two_pieces<T>(body: &[u8], cut: usize) -> Result<Vec<T>, gateway::GatewayError>
where
    T: serde::de::DeserializeOwned + Default,
{
    let mut buf = body[..cut].to_vec();
    let mut out = gateway::parse_stream(&mut buf, false)?;
    buf.extend_from_slice(&body[cut..]);
    out.extend(gateway::parse_stream(&mut buf, true)?);
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let [pick, cut, body @ ..] = data else {
        return;
    };
    let route: Route = ALL_ROUTES[usize::from(*pick) % ALL_ROUTES.len()];
    let Ok(request) = gateway::parse(route, body) else {
        return;
    };
    let json = request.to_json();
    // Go-style escaping turns one byte (`<`) into six; nothing grows more.
    assert!(
        json.len() <= 6 * body.len() + 256,
        "{} bytes of JSON from {} of input",
        json.len(),
        body.len()
    );
    assert!(
        request.encoded_len() <= 2 * body.len() + 16,
        "{} protobuf bytes from {} of input",
        request.encoded_len(),
        body.len()
    );
    let again = gateway::parse(route, &json).unwrap_or_else(|e| {
        panic!(
            "our own JSON refused: {e}: {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(again, request, "{}", String::from_utf8_lossy(&json));

    let cut = if body.is_empty() {
        0
    } else {
        usize::from(*cut) % body.len()
    };
    match &request {
        GatewayRequest::Watch(whole) => {
            let pieces = in_two_pieces::<WatchRequest>(body, cut).expect("whole body parsed");
            assert_eq!(&pieces, whole);
        }
        GatewayRequest::LeaseKeepAlive(whole) => {
            let pieces =
                in_two_pieces::<LeaseKeepAliveRequest>(body, cut).expect("whole body parsed");
            assert_eq!(&pieces, whole);
        }
        _ => {}
    }
});
