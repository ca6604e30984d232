//! The bytes of a client connection from raw input, read through the HTTP/2 filter every client
//! connection passes ([`AuthorityFix`]: it rewrites a URL-shaped `:authority` in request header
//! blocks), delivered in fuzz-chosen pieces. The first input byte picks the piece size; the
//! connection preface is put in front of the rest so the filter looks at frames.
//!
//! Properties: reading ends (the filter never waits for bytes that will not come); the output is
//! at most a small multiple of the input; a connection without any HEADERS or CONTINUATION frame
//! passes through byte for byte; and the heap it uses stays within a small multiple of the input
//! plus the header-list limit, however much its header blocks would expand (a block that refers
//! to a table entry thousands of times; the seed corpus holds one).

#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use metastore::net::authority::AuthorityFix;
use metastore_fuzz::heap;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[global_allocator]
static ALLOC: heap::Counting = heap::Counting;

/// A connection that delivers its bytes `step` at a time, then end of stream.
struct Conn {
    data: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .step
            .min(buf.remaining())
            .min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// Whether the frames after the preface include a header block (walking frame headers).
fn has_header_frames(frames: &[u8]) -> bool {
    let mut at = 0;
    while let Some(h) = frames.get(at..at + 9) {
        if h[3] == 0x1 || h[3] == 0x9 {
            return true;
        }
        at += 9 + u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, frames)) = data.split_first() else {
        return;
    };
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(frames);
    let conn = Conn {
        data: input.clone(),
        at: 0,
        step: 1 + step as usize,
    };
    let before = heap::start();
    let mut filtered = AuthorityFix::new(conn);
    let mut output = Vec::new();
    // The one error the filter may raise: a block it cannot rewrite after it began rewriting.
    if let Err(e) = futures::executor::block_on(filtered.read_to_end(&mut output)) {
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    }
    drop(filtered);
    // The input and output copies, the frame buffers, one decoded header list and the HPACK
    // table: a few times the input plus fixed amounts, never the block's expansion.
    let used = heap::peak_since(before);
    let bound =
        8 * input.len() + 4 * metastore::limits::MAX_HEADER_LIST_BYTES as usize + 256 * 1024;
    assert!(
        used <= bound,
        "{used} heap bytes for {} input bytes",
        input.len()
    );
    assert!(
        output.len() <= 2 * input.len() + 64 * 1024,
        "{} bytes in, {} out",
        input.len(),
        output.len()
    );
    if !has_header_frames(frames) {
        assert_eq!(
            output, input,
            "a connection without header blocks was changed"
        );
    }
});
