//! A gRPC request body from raw bytes (length-prefixed messages, delivered in pieces of
//! fuzz-chosen sizes) through tonic's decoder with the server's max-request-bytes limit, as the
//! KV service receives it. The first input byte picks the limit (the server's default, or 1 KiB so
//! short inputs can pass it) and how the rest is cut into body chunks.
//!
//! Properties: every message handed on is within the limit; a frame that claims more is refused
//! with OutOfRange and nothing after it is decoded; memory during decoding stays within a small
//! multiple of the limit plus the input, whatever length a frame claims.

#![no_main]

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use metastore::limits::{GRPC_OVERHEAD_BYTES, MAX_REQUEST_BYTES_DEFAULT};
use metastore::pb::etcdserverpb::PutRequest;
use metastore_fuzz::heap;
use prost::Message;
use tonic::codec::{Codec, Streaming};

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

/// An HTTP body that hands out its bytes in the given pieces.
struct Pieces(VecDeque<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn pieces(data: &[u8], cut: u8) -> VecDeque<Bytes> {
    let step = 1 + cut as usize % 64;
    data.chunks(step).map(Bytes::copy_from_slice).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let limit = if choice & 1 == 0 {
        MAX_REQUEST_BYTES_DEFAULT + GRPC_OVERHEAD_BYTES
    } else {
        1024
    };
    // The body's pieces are the input, not the decoder's: count from after they exist.
    let input = Pieces(pieces(body, choice >> 1));
    let start_live = heap::start();

    let mut codec = tonic_prost::ProstCodec::<PutRequest, PutRequest>::default();
    let mut stream = Streaming::new_request(codec.decoder(), input, None, Some(limit));
    let mut refused = false;
    let mut decoded = 0;
    futures::executor::block_on(async {
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    assert!(!refused, "a message decoded after an over-limit frame");
                    assert!(
                        msg.encoded_len() <= limit,
                        "a message over the limit got through"
                    );
                    decoded += 1;
                }
                Ok(None) => break,
                Err(status) => {
                    if status.code() == tonic::Code::OutOfRange {
                        refused = true;
                    }
                    break;
                }
            }
        }
    });
    drop(stream);

    // The frame after the last one decoded: if it claims more than the limit, that is why
    // decoding stopped, and it must have been refused as too large.
    let mut at = 0;
    for _ in 0..decoded {
        let Some(header) = body.get(at..at + 5) else {
            break;
        };
        at += 5 + u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    }
    if let Some(header) = body.get(at..at + 5) {
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        // A compressed flag (no encoding was agreed) or an invalid one ends decoding by itself.
        if header[0] == 0 && len > limit {
            assert!(
                refused,
                "a frame of {len} bytes over the {limit}-byte limit was not refused"
            );
        }
    }

    let peak = heap::peak_since(start_live);
    assert!(
        peak <= 2 * limit + 8 * data.len() + 64 * 1024,
        "decoding {} input bytes with a {limit}-byte limit peaked at {peak} bytes",
        data.len()
    );
});
