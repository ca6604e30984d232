//! The JSON side of etcd's grpc-gateway: request bodies parsed as Go's `json.Decoder` reads them
//! (one value, or a stream of values for streaming calls), responses written with Go's escaping,
//! and why a body was refused. Pure, and below everything else in `api` (`status` maps its error).

use serde::de::DeserializeOwned;

use super::go_json::Reading;
use serde::Serialize;

/// Why a request body was refused before any service saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The body is not the JSON of the route's request message.
    #[error("{0}")]
    BadJson(String),
    /// The body ended inside a JSON value.
    #[error("unexpected EOF")]
    UnexpectedEof,
    /// The body (or one streamed message) is larger than the server accepts.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The route's service does not exist in this build.
    #[error("unknown service {0}")]
    NoService(&'static str),
}

/// Why `body` (its first JSON value) is not a `T`, in etcd's gateway's words where
/// `api::go_json` finds them, else in our parser's.
fn refusal<T>(body: &[u8], e: serde_json::Error) -> GatewayError {
    if e.is_eof() {
        return GatewayError::UnexpectedEof;
    }
    match super::go_json::explain::<T>(body) {
        Some(text) => go_refusal(text),
        None => json_error(e),
    }
}

fn go_refusal(text: String) -> GatewayError {
    match text.as_str() {
        "unexpected EOF" => GatewayError::UnexpectedEof,
        _ => GatewayError::BadJson(text),
    }
}

pub(super) fn json_error(e: serde_json::Error) -> GatewayError {
    if e.is_eof() {
        return GatewayError::UnexpectedEof;
    }
    // Go's decoder names no position; neither do we.
    let mut text = e.to_string();
    if let Some(at) = text.rfind(" at line ") {
        text.truncate(at);
    }
    GatewayError::BadJson(go_base64_error(&text).unwrap_or(text))
}

/// The base64 decoder's "Invalid symbol 64, offset 0." (or "Invalid last symbol ...") as Go's
/// `encoding/base64` words it, which is what etcd's gateway answers.
fn go_base64_error(text: &str) -> Option<String> {
    let rest = text
        .strip_prefix("Invalid symbol ")
        .or_else(|| text.strip_prefix("Invalid last symbol "))?;
    let offset = rest.split_once(", offset ")?.1.strip_suffix('.')?;
    let offset: usize = offset.parse().ok()?;
    Some(format!("illegal base64 data at input byte {offset}"))
}

/// Parse the first JSON value of `body` as `T`. An empty (or all-whitespace) body is the empty
/// request and anything after the first value is ignored, as Go's `json.Decoder` in etcd's
/// gateway reads it.
pub fn parse_one<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, GatewayError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Option<T>>();
    match values.next() {
        // What our parser takes and etcd's gateway would not (base64 without its padding).
        Some(Ok(value)) => match super::go_json::explain::<T>(body) {
            Some(text) => Err(GatewayError::BadJson(text)),
            None => Ok(value.unwrap_or_default()),
        },
        Some(Err(e)) if e.is_eof() => Err(GatewayError::UnexpectedEof),
        Some(Err(e)) => match super::go_json::read::<T>(body) {
            // What etcd's gateway takes and our parser would not (a null field, bytes as an
            // array), taken after all.
            Reading::Take(value) => serde_json::from_value(value).map_err(|_| json_error(e)),
            Reading::Refuse(text) => Err(go_refusal(text)),
            Reading::Unknown => Err(json_error(e)),
        },
        None => Ok(T::default()),
    }
}

/// Take every complete JSON value of `T` off the front of `buf`, leaving an incomplete tail for
/// more bytes to complete (a streamed request body). At the body's end (`last`) a tail that is
/// not whitespace is an error.
pub fn parse_stream<T: DeserializeOwned + Default>(
    buf: &mut Vec<u8>,
    last: bool,
) -> Result<Vec<T>, GatewayError> {
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut values = serde_json::Deserializer::from_slice(buf).into_iter::<Option<T>>();
    let failure = loop {
        match values.next() {
            Some(Ok(value)) => {
                let start = consumed;
                consumed = values.byte_offset();
                if let Some(text) = super::go_json::explain::<T>(&buf[start..consumed]) {
                    break Some(GatewayError::BadJson(text));
                }
                out.push(value.unwrap_or_default());
            }
            // Only whitespace left.
            None => {
                consumed = buf.len();
                break None;
            }
            Some(Err(e)) if e.is_eof() && !last => break None,
            Some(Err(e)) => break Some(refusal::<T>(&buf[consumed..], e)),
        }
    };
    buf.drain(..consumed);
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A message as etcd's gateway writes it: proto3 JSON with Go's `encoding/json` escaping of
/// `<`, `>`, `&`, U+2028 and U+2029 (jsonpb hands strings to it), which can only occur inside
/// JSON strings, so a plain byte substitution is exact.
pub fn to_json<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing our own generated messages to memory cannot fail.
    let raw = serde_json::to_vec(msg).unwrap_or_default();
    go_escape(raw)
}

pub(super) fn go_escape(raw: Vec<u8>) -> Vec<u8> {
    let needs = raw.iter().any(|b| matches!(b, b'<' | b'>' | b'&' | 0xE2));
    if !needs {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len() + 16);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            0xE2 if raw.get(i + 1) == Some(&0x80)
                && matches!(raw.get(i + 2), Some(0xA8 | 0xA9)) =>
            {
                out.extend_from_slice(if raw[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::LeaseKeepAliveRequest;

    #[test]
    fn streamed_bodies_parse_as_values_complete() {
        let mut buf = br#"{"ID":"1"} {"ID":"#.to_vec();
        let got: Vec<LeaseKeepAliveRequest> = parse_stream(&mut buf, false).unwrap();
        assert_eq!(got, vec![LeaseKeepAliveRequest { id: 1 }]);
        assert_eq!(buf, br#" {"ID":"#.to_vec());
        buf.extend_from_slice(br#""2"}"#);
        let got: Vec<LeaseKeepAliveRequest> = parse_stream(&mut buf, true).unwrap();
        assert_eq!(got, vec![LeaseKeepAliveRequest { id: 2 }]);
        let mut cut = br#"{"ID":"#.to_vec();
        assert_eq!(
            parse_stream::<LeaseKeepAliveRequest>(&mut cut, true),
            Err(GatewayError::UnexpectedEof)
        );
    }

    #[test]
    fn html_characters_are_escaped_as_go_escapes_them() {
        let out = go_escape("{\"a\":\"<&>\u{2028}\u{2029}é\"}".as_bytes().to_vec());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"a\":\"\\u003c\\u0026\\u003e\\u2028\\u2029é\"}"
        );
    }
}
