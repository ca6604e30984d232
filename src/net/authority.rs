//! Tolerating a URL in the HTTP/2 `:authority` of client requests.
//!
//! etcdctl 3.4 dials some endpoints directly with the whole client URL as gRPC target
//! (`endpoint status --cluster`, `endpoint hashkv --cluster`, `endpoint health --cluster`), so its
//! requests carry `:authority: http://host:port`. etcd's Go server ignores the authority; the h2
//! server under tonic refuses such a stream as malformed (RST_STREAM, PROTOCOL_ERROR). So each
//! client connection's bytes pass through [`AuthorityFix`]: it decodes the connection's first header
//! block; if its authority is fine the connection is passed through untouched from then on (gRPC
//! keeps one authority per connection), otherwise every header block of that connection is
//! decoded with the client's HPACK state and re-encoded self-contained (literals without
//! indexing, so the server's decoder table is never relied on) with the scheme stripped.
//!
//! Decoding happens before h2 or any authentication sees the connection, so it holds to the limits
//! the server advertises: the HPACK table may not grow past [`limits::HPACK_TABLE_BYTES`], and a
//! block whose decoded header list passes [`limits::MAX_HEADER_LIST_BYTES`] is not copied out
//! (references into the table make a 64 KiB block decode into hundreds of MiB): while inspecting,
//! such a block is handed to h2 untouched, which refuses it under the same limit; once rewriting,
//! the connection is closed.
//!
//! The same pass also polices client PINGs (etcd's `--grpc-keepalive-min-time`, which gRPC servers
//! enforce): a client that pings more often than that more than [`limits::MAX_PING_STRIKES`] times
//! loses its connection, as grpc-go closes it (h2 itself answers every PING, however many); as in
//! grpc-go, a PING that follows response HEADERS or DATA from the server is no strike, so a busy
//! Go client's flow-control (BDP) pings keep their connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::limits;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PREFACE_LEN: usize = PREFACE.len();
const FRAME_HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PING: u8 = 0x6;
const ACK: u8 = 0x1;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame payload we emit (the HTTP/2 default SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;
/// Largest header block we collect; beyond it the bytes go on untouched (h2 applies its own limits).
const MAX_BLOCK: usize = 64 * 1024;

enum Mode {
    /// Waiting for the first header block.
    Inspect,
    /// The authority was fine: bytes go through as they come.
    PassThrough,
    /// The authority carried a scheme: header blocks are re-encoded.
    Transcode,
}

/// A client connection whose request header blocks get a scheme-free `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    preface_left: usize,
    /// Bytes read from the client, not yet examined.
    input: Vec<u8>,
    /// Bytes ready for the server.
    output: Vec<u8>,
    output_pos: usize,
    /// A header block spread over HEADERS + CONTINUATION frames: raw frames, fragments, flags.
    pending: Option<PendingBlock>,
    /// The client's HPACK state, while it matters (dropped when passing through).
    decoder: Option<loona_hpack::Decoder<'static>>,
    /// Frame boundaries of everything the client sends, for the PING policy.
    frames: FrameWalker,
}

/// Follows the frame headers of both directions of a connection (whatever the mode): the client's
/// PINGs, and whether the server has answered anything since the last one.
struct FrameWalker {
    client: FrameHeaders,
    server: FrameHeaders,
    pings: PingPolicy,
}

/// Frame boundaries in one direction of an HTTP/2 byte stream.
struct FrameHeaders {
    header: [u8; FRAME_HEADER_LEN],
    have: usize,
    /// Bytes of the current frame's payload (or of the preface) still to pass.
    skip: usize,
}

/// etcd's keepalive enforcement (grpc-go's server policy): a PING sooner than `min_interval` after
/// the previous one is a strike, unless the server sent response headers or data since then (a
/// busy connection's clients ping to measure bandwidth after each response: grpc-go's BDP
/// estimator does); more than [`limits::MAX_PING_STRIKES`] strikes close the connection.
struct PingPolicy {
    min_interval: std::time::Duration,
    last: Option<crate::rt::Instant>,
    strikes: u32,
    /// The server sent HEADERS or DATA since the last PING.
    answered: bool,
}

impl FrameHeaders {
    fn new(skip: usize) -> Self {
        Self {
            header: [0; FRAME_HEADER_LEN],
            have: 0,
            skip,
        }
    }

    /// Walk `bytes`, the next bytes of this direction, calling `frame(type, flags)` at each frame
    /// header.
    fn walk(
        &mut self,
        mut bytes: &[u8],
        mut frame: impl FnMut(u8, u8) -> io::Result<()>,
    ) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEADER_LEN {
                let h = &self.header;
                self.skip =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                self.have = 0;
                frame(h[3], h[4])?;
            }
        }
        Ok(())
    }
}

impl FrameWalker {
    fn new(min_interval: std::time::Duration) -> Self {
        Self {
            client: FrameHeaders::new(PREFACE_LEN),
            server: FrameHeaders::new(0),
            pings: PingPolicy {
                min_interval,
                last: None,
                strikes: 0,
                answered: false,
            },
        }
    }

    /// Walk `bytes`, the next bytes the client sent; an error once it pinged too often.
    fn observe(&mut self, bytes: &[u8]) -> io::Result<()> {
        let pings = &mut self.pings;
        self.client.walk(bytes, |kind, flags| {
            if kind == PING && flags & ACK == 0 {
                pings.ping()?;
            }
            Ok(())
        })
    }

    /// Walk `bytes`, the next bytes the server wrote.
    fn observe_sent(&mut self, bytes: &[u8]) {
        let pings = &mut self.pings;
        // The closure never fails.
        let _ = self.server.walk(bytes, |kind, _| {
            if kind == DATA || kind == HEADERS {
                pings.answered = true;
            }
            Ok(())
        });
    }
}

impl PingPolicy {
    fn ping(&mut self) -> io::Result<()> {
        let now = crate::rt::now();
        if std::mem::take(&mut self.answered) {
            self.strikes = 0;
        } else if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.min_interval)
        {
            self.strikes += 1;
            if self.strikes > limits::MAX_PING_STRIKES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "too_many_pings: the client pinged more often than --grpc-keepalive-min-time",
                ));
            }
        }
        self.last = Some(now);
        Ok(())
    }
}

struct PendingBlock {
    raw: Vec<u8>,
    fragment: Vec<u8>,
    stream_id: u32,
    end_stream: bool,
}

impl<S> AuthorityFix<S> {
    /// Wrap an accepted connection whose PINGs may come at most every `ping_min_interval`.
    pub fn with_ping_policy(inner: S, ping_min_interval: std::time::Duration) -> Self {
        Self {
            frames: FrameWalker::new(ping_min_interval),
            ..Self::new(inner)
        }
    }

    /// Wrap an accepted connection (PINGs as often as it likes).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            mode: Mode::Inspect,
            preface_left: PREFACE_LEN,
            input: Vec::new(),
            output: Vec::new(),
            output_pos: 0,
            pending: None,
            decoder: Some(bounded_decoder()),
            frames: FrameWalker::new(std::time::Duration::ZERO),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Move whole frames from `input` to `output`, rewriting header blocks as the mode says.
    fn process(&mut self) -> io::Result<()> {
        let mut at = 0;
        if self.preface_left > 0 {
            let n = self.preface_left.min(self.input.len());
            self.output.extend_from_slice(&self.input[..n]);
            self.preface_left -= n;
            at = n;
        }
        while matches!(self.mode, Mode::Inspect | Mode::Transcode) {
            let rest = &self.input[at..];
            if rest.len() < FRAME_HEADER_LEN {
                break;
            }
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            if len > MAX_BLOCK {
                // Never buffer a frame that big: h2 refuses it anyway (it exceeds the frame size
                // the server allows), so hand the bytes on as they are.
                self.give_up(&[])?;
                break;
            }
            if rest.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let frame = rest[..FRAME_HEADER_LEN + len].to_vec();
            at += frame.len();
            self.frame(&frame)?;
        }
        if matches!(self.mode, Mode::PassThrough) {
            // Whatever is left (a pending block included) goes on as it came.
            if let Some(p) = self.pending.take() {
                self.output.extend_from_slice(&p.raw);
            }
            self.output.extend_from_slice(&self.input[at..]);
            at = self.input.len();
        }
        self.input.drain(..at);
        Ok(())
    }

    fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5] & 0x7f, frame[6], frame[7], frame[8]]);
        let payload = &frame[FRAME_HEADER_LEN..];
        match kind {
            HEADERS => {
                let Some(fragment) = header_fragment(flags, payload) else {
                    return self.give_up(frame);
                };
                self.pending = Some(PendingBlock {
                    raw: frame.to_vec(),
                    fragment: fragment.to_vec(),
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                });
            }
            CONTINUATION if self.pending.is_some() => {
                if let Some(p) = self.pending.as_mut() {
                    p.raw.extend_from_slice(frame);
                    p.fragment.extend_from_slice(payload);
                    if p.fragment.len() > MAX_BLOCK {
                        return self.give_up(&[]);
                    }
                }
            }
            _ => {
                self.output.extend_from_slice(frame);
                return Ok(());
            }
        }
        match self.pending.take() {
            Some(block) if flags & END_HEADERS != 0 => self.block(block),
            still_open => {
                self.pending = still_open;
                Ok(())
            }
        }
    }

    /// A whole header block arrived.
    fn block(&mut self, block: PendingBlock) -> io::Result<()> {
        let decoded = match self.decoder.as_mut() {
            Some(decoder) => decode_bounded(decoder, &block.fragment),
            None => None,
        };
        let headers = match decoded {
            Some(headers) => headers,
            None => {
                // Not ours to judge: let h2 see it as it came (unless we already rewrote blocks).
                self.pending = Some(block);
                return self.give_up(&[]);
            }
        };
        let bad = headers
            .iter()
            .any(|(n, v)| n == b":authority" && v.windows(3).any(|w| w == b"://"));
        match self.mode {
            Mode::Inspect if !bad => {
                self.output.extend_from_slice(&block.raw);
                self.mode = Mode::PassThrough;
                self.decoder = None;
                return Ok(());
            }
            Mode::Inspect => self.mode = Mode::Transcode,
            _ => {}
        }
        let mut encoded = Vec::new();
        for (name, value) in &headers {
            let value = if name == b":authority" {
                strip_scheme(value)
            } else {
                value.as_slice()
            };
            encoded.push(0x00); // literal header field without indexing, new name
            encode_string(name, &mut encoded);
            encode_string(value, &mut encoded);
        }
        write_header_frames(
            &encoded,
            block.stream_id,
            block.end_stream,
            &mut self.output,
        );
        Ok(())
    }

    /// Stop inspecting: pass everything through from here (or fail if blocks were rewritten,
    /// since the server's view of the client's HPACK table would then be wrong).
    fn give_up(&mut self, frame: &[u8]) -> io::Result<()> {
        if matches!(self.mode, Mode::Transcode) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "undecodable HTTP/2 header block",
            ));
        }
        self.mode = Mode::PassThrough;
        self.decoder = None;
        if let Some(p) = self.pending.take() {
            self.output.extend_from_slice(&p.raw);
        }
        self.output.extend_from_slice(frame);
        Ok(())
    }
}

/// A decoder whose dynamic table cannot be resized past what the server advertises.
fn bounded_decoder() -> loona_hpack::Decoder<'static> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(limits::HPACK_TABLE_BYTES);
    decoder
}

/// Decode a whole header block, copying fields out only while the list stays within
/// [`limits::MAX_HEADER_LIST_BYTES`]; `None` if the block is malformed or its list is larger. The
/// rest of an oversized block is still decoded (without copying) so the table stays in step with
/// the client's encoder; the work is linear in the block, whose size is bounded by `MAX_BLOCK`.
fn decode_bounded(
    decoder: &mut loona_hpack::Decoder<'static>,
    fragment: &[u8],
) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let limit = limits::MAX_HEADER_LIST_BYTES as usize;
    let mut headers = Vec::new();
    let mut size = 0usize;
    let mut over = false;
    decoder
        .decode_with_cb(fragment, |name, value| {
            // RFC 9113 §6.5.2: each field counts its name, its value and 32 octets.
            size = size.saturating_add(name.len() + value.len() + 32);
            if size > limit {
                over = true;
            }
            if !over {
                headers.push((name.into_owned(), value.into_owned()));
            }
        })
        .ok()?;
    (!over).then_some(headers)
}

/// The header block fragment of a HEADERS frame payload (without padding and priority).
fn header_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = usize::from(*payload.first()?);
        start += 1;
        end = end.checked_sub(pad)?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload.get(start..end)
}

/// `http://host:port/...` → `host:port`.
fn strip_scheme(value: &[u8]) -> &[u8] {
    let text = value;
    let after = match text.windows(3).position(|w| w == b"://") {
        Some(i) => &text[i + 3..],
        None => text,
    };
    match after.iter().position(|b| *b == b'/') {
        Some(i) => &after[..i],
        None => after,
    }
}

/// An HPACK string literal without Huffman coding (RFC 7541 §5.2).
fn encode_string(bytes: &[u8], out: &mut Vec<u8>) {
    encode_integer(bytes.len(), 7, 0x00, out);
    out.extend_from_slice(bytes);
}

/// An HPACK integer with an `prefix_bits`-bit prefix (RFC 7541 §5.1).
fn encode_integer(mut value: usize, prefix_bits: u8, first_byte_flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first_byte_flags | value as u8);
        return;
    }
    out.push(first_byte_flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn write_header_frames(block: &[u8], stream_id: u32, end_stream: bool, out: &mut Vec<u8>) {
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut first = true;
    if block.is_empty() {
        push_frame(
            out,
            HEADERS,
            END_HEADERS | if end_stream { END_STREAM } else { 0 },
            stream_id,
            &[],
        );
        return;
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let mut flags = if last { END_HEADERS } else { 0 };
        let kind = if first {
            if end_stream {
                flags |= END_STREAM;
            }
            HEADERS
        } else {
            CONTINUATION
        };
        push_frame(out, kind, flags, stream_id, chunk);
        first = false;
    }
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.output_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.output_pos);
                buf.put_slice(&this.output[this.output_pos..this.output_pos + n]);
                this.output_pos += n;
                if this.output_pos == this.output.len() {
                    this.output_pos = 0;
                    if matches!(this.mode, Mode::PassThrough) {
                        // Never needed again: give the memory back.
                        this.output = Vec::new();
                        this.input = Vec::new();
                    } else {
                        this.output.clear();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(this.mode, Mode::PassThrough)
                && this.input.is_empty()
                && this.pending.is_none()
            {
                // Nothing held back: read straight into the caller's buffer.
                let before = buf.filled().len();
                return match Pin::new(&mut this.inner).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) => {
                        Poll::Ready(this.frames.observe(&buf.filled()[before..]))
                    }
                    other => other,
                };
            }
            let mut chunk = [0u8; 8192];
            let mut chunk_buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk_buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = chunk_buf.filled();
                    if filled.is_empty() {
                        // End of stream: hand on whatever is left as it is.
                        if let Some(p) = this.pending.take() {
                            this.output.extend_from_slice(&p.raw);
                        }
                        this.output.append(&mut this.input);
                        if this.output.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.frames.observe(filled)?;
                    this.input.extend_from_slice(filled);
                    this.process()?;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            this.frames.observe_sent(&buf[..n]);
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            for buf in bufs {
                let part = n.min(buf.len());
                this.frames.observe_sent(&buf[..part]);
                n -= part;
                if n == 0 {
                    break;
                }
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(not(madsim))]
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(all(test, not(madsim)))]
#[path = "authority_tests.rs"]
mod tests;
