//! The authority fix-up against hand-made HTTP/2 frames: schemes stripped on every block, a good
//! authority passed through byte for byte, bounded decoding under HPACK expansion, PING strikes.

use super::*;

#[test]
fn schemes_are_stripped() {
    assert_eq!(strip_scheme(b"http://127.0.0.1:2379"), b"127.0.0.1:2379");
    assert_eq!(strip_scheme(b"https://h:1/x"), b"h:1");
    assert_eq!(strip_scheme(b"127.0.0.1:2379"), b"127.0.0.1:2379");
}

#[test]
fn integers_encode_as_rfc_7541_says() {
    // C.1.2: 1337 with a 5-bit prefix.
    let mut out = Vec::new();
    encode_integer(1337, 5, 0, &mut out);
    assert_eq!(out, vec![31, 154, 10]);
    let mut out = Vec::new();
    encode_integer(10, 7, 0, &mut out);
    assert_eq!(out, vec![10]);
}

fn headers_frame(block: &[u8], flags: u8) -> Vec<u8> {
    let mut out = Vec::new();
    push_frame(&mut out, HEADERS, flags, 1, block);
    out
}

/// Run `input` through the filter and collect what the server would read.
fn try_filtered(input: &[u8]) -> io::Result<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut fix = AuthorityFix::new(input);
        let mut out = Vec::new();
        fix.read_to_end(&mut out).await.map(|_| out)
    })
}

fn filtered(input: &[u8]) -> Vec<u8> {
    try_filtered(input).expect("the filter accepts this input")
}

fn block_of(headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut enc = loona_hpack::Encoder::new();
    enc.encode(headers.iter().map(|(n, v)| (*n, *v)))
}

proptest::proptest! {
    /// Whatever frames a client sends after the preface, the filter does not panic and the
    /// preface goes through first.
    #[test]
    fn arbitrary_bytes_never_panic(frames in proptest::collection::vec(
        (0u8..12, proptest::prelude::any::<u8>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)),
        0..8,
    )) {
        let mut input = PREFACE.to_vec();
        for (kind, flags, payload) in &frames {
            push_frame(&mut input, *kind, *flags, 1, payload);
        }
        if let Ok(out) = try_filtered(&input) {
            proptest::prop_assert!(out.starts_with(&input[..PREFACE_LEN]));
        }
    }
}

#[test]
fn an_oversized_frame_is_not_buffered() {
    let mut input = PREFACE.to_vec();
    // A HEADERS frame header announcing 16 MiB, then only a few bytes of it.
    input.extend_from_slice(&[0xff, 0xff, 0xff, HEADERS, END_HEADERS, 0, 0, 0, 1, 1, 2, 3]);
    let mut fix = AuthorityFix::new(&b""[..]);
    fix.input.extend_from_slice(&input);
    fix.process().unwrap();
    assert!(fix.input.is_empty(), "nothing held back");
    assert_eq!(fix.output, input, "handed on untouched");
}

/// A header block that stores a 4,000-byte field in the HPACK table, then refers to it
/// `refs` times (one byte each): it decodes to about `refs` × 4 KB.
fn expanding_block(refs: usize) -> Vec<u8> {
    let mut block = vec![0x40]; // literal with incremental indexing, new name
    encode_string(b"x-bomb", &mut block);
    encode_string(&[b'a'; 4000], &mut block);
    block.extend(std::iter::repeat_n(0x80 | 62, refs)); // indexed: the first dynamic entry
    block
}

#[test]
fn an_expanding_block_is_not_copied_out() {
    let block = expanding_block(60_000);
    assert!(block.len() < MAX_BLOCK);
    let mut decoder = bounded_decoder();
    assert_eq!(decode_bounded(&mut decoder, &block), None);
    // Within the limit, the same shape decodes.
    let mut decoder = bounded_decoder();
    let small = decode_bounded(&mut decoder, &expanding_block(2)).expect("decodes");
    assert_eq!(small.len(), 3);
}

#[test]
fn a_table_larger_than_advertised_is_refused() {
    let mut block = Vec::new();
    encode_integer(limits::HPACK_TABLE_BYTES + 1, 5, 0x20, &mut block); // table size update
    block.extend(block_of(&[(b":method", b"POST")]));
    assert_eq!(decode_bounded(&mut bounded_decoder(), &block), None);
}

#[test]
fn an_expanding_first_block_goes_to_h2_untouched() {
    let mut input = PREFACE.to_vec();
    write_header_frames(&expanding_block(60_000), 1, true, &mut input);
    assert_eq!(filtered(&input), input, "h2 judges it under the same limit");
}

#[test]
fn an_expanding_block_after_a_rewrite_closes_the_connection() {
    let mut enc = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    let first = enc.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":authority", b"http://127.0.0.1:2379"),
    ]);
    input.extend(headers_frame(&first, END_HEADERS | END_STREAM));
    write_header_frames(&expanding_block(60_000), 3, true, &mut input);
    let err = try_filtered(&input).expect_err("refused");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

fn ping_frame(ack: bool) -> Vec<u8> {
    let mut out = Vec::new();
    push_frame(&mut out, PING, if ack { ACK } else { 0 }, 0, &[7; 8]);
    out
}

#[test]
fn pings_closer_than_the_minimum_close_the_connection_after_two_strikes() {
    let mut walker = FrameWalker::new(std::time::Duration::from_secs(3600));
    walker.observe(PREFACE).unwrap();
    // A DATA frame whose payload looks like a PING header is skipped as payload.
    let mut data = Vec::new();
    push_frame(&mut data, 0x0, 0, 1, &ping_frame(false));
    for _ in 0..10 {
        walker.observe(&data).unwrap();
        walker.observe(&ping_frame(true)).unwrap(); // ACKs are answers, not pings
    }
    let ping = ping_frame(false);
    for _ in 0..3 {
        // One byte at a time: frame headers split across reads.
        for b in &ping {
            walker.observe(std::slice::from_ref(b)).unwrap();
        }
    }
    let err = walker.observe(&ping).unwrap_err();
    assert!(err.to_string().contains("too_many_pings"), "{err}");
}

/// grpc-go's clients ping after each response they receive (the BDP estimator), and grpc-go's
/// server forgives a PING that follows response HEADERS or DATA: a busy Go client (etcdctl
/// make-mirror, kube-apiserver) must keep its connection; pings with no answer between them
/// still strike.
#[test]
fn a_ping_after_a_response_is_no_strike() {
    let mut walker = FrameWalker::new(std::time::Duration::from_secs(3600));
    walker.observe(PREFACE).unwrap();
    let mut settings = Vec::new();
    push_frame(&mut settings, 0x4, 0, 0, &[]);
    walker.observe_sent(&settings);
    let mut response = Vec::new();
    push_frame(&mut response, HEADERS, END_HEADERS, 1, &[0x88]);
    // The payload looks like a frame header: it must be skipped as payload.
    push_frame(&mut response, DATA, 0, 1, &ping_frame(false));
    for _ in 0..100 {
        // The response, split at every byte, then the client's ping.
        for b in &response {
            walker.observe_sent(std::slice::from_ref(b));
        }
        walker.observe(&ping_frame(false)).unwrap();
        // The server's PING ACK is no answer of a request.
        walker.observe_sent(&ping_frame(true));
    }
    // Two strikes are allowed, the third closes.
    for _ in 0..2 {
        walker.observe(&ping_frame(false)).unwrap();
        walker.observe_sent(&ping_frame(true));
    }
    let err = walker.observe(&ping_frame(false)).unwrap_err();
    assert!(err.to_string().contains("too_many_pings"), "{err}");
}

#[test]
fn pings_are_free_without_a_minimum() {
    let mut input = PREFACE.to_vec();
    for _ in 0..100 {
        input.extend(ping_frame(false));
    }
    assert_eq!(filtered(&input), input);
}

#[test]
fn a_good_authority_passes_through_byte_for_byte() {
    let mut input = PREFACE.to_vec();
    let block = block_of(&[(b":method", b"POST"), (b":authority", b"127.0.0.1:2379")]);
    input.extend(headers_frame(&block, END_HEADERS));
    input.extend_from_slice(&[0, 0, 2, 0, 1, 0, 0, 0, 1, b'h', b'i']); // DATA
    assert_eq!(filtered(&input), input);
}

#[test]
fn a_url_authority_is_rewritten_on_every_block() {
    let mut enc = loona_hpack::Encoder::new();
    let mut input = PREFACE.to_vec();
    for _ in 0..2 {
        let block = enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
        ]);
        input.extend(headers_frame(&block, END_HEADERS | END_STREAM));
    }
    let out = filtered(&input);
    assert_eq!(&out[..PREFACE_LEN], &input[..PREFACE_LEN]);
    // Decode what the server gets, with a fresh table (it never relies on one).
    let mut dec = loona_hpack::Decoder::new();
    let mut at = PREFACE_LEN;
    let mut blocks = 0;
    while at < out.len() {
        let len = (usize::from(out[at]) << 16)
            | (usize::from(out[at + 1]) << 8)
            | usize::from(out[at + 2]);
        assert_eq!(out[at + 3], HEADERS);
        assert_eq!(out[at + 4], END_HEADERS | END_STREAM);
        let headers = dec.decode(&out[at + 9..at + 9 + len]).unwrap();
        assert!(headers.contains(&(b":authority".to_vec(), b"127.0.0.1:2379".to_vec())));
        assert!(headers.contains(&(
            b":path".to_vec(),
            b"/etcdserverpb.Maintenance/Status".to_vec()
        )));
        at += 9 + len;
        blocks += 1;
    }
    assert_eq!(blocks, 2);
}
