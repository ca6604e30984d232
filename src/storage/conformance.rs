//! The conformance suite every [`Engine`] must pass. Engines call [`run_all`] from their tests with a
//! factory that makes a fresh, empty engine.

use super::{Durability, Engine, Keyspace, WriteBatch};

/// Makes a fresh, empty engine.
pub type Factory<'a> = dyn Fn() -> Box<dyn Engine> + 'a;

/// Run every conformance check against fresh engines from `make`.
pub fn run_all(make: &Factory<'_>) {
    get_put_delete(&*make());
    keyspaces_are_independent(&*make());
    scan_order_and_bounds(&*make());
    uncached_scan_answers_as_scan(&*make());
    delete_range(&*make());
    batch_is_atomic_and_ordered(&*make());
    scan_is_point_in_time(&*make());
    view_is_frozen(&*make());
    views_stay_frozen_under_concurrent_writes(&*make());
    get_many_answers_in_order(&*make());
    size_grows_with_data(&*make());
}

fn put(e: &dyn Engine, ks: Keyspace, k: &[u8], v: &[u8]) {
    let mut b = WriteBatch::new();
    b.put(ks, k, v);
    e.write(b, Durability::Sync).expect("write");
}

fn collect(
    e: &dyn Engine,
    ks: Keyspace,
    start: &[u8],
    end: Option<&[u8]>,
    rev: bool,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut visit = |k: &[u8], v: &[u8]| {
        out.push((k.to_vec(), v.to_vec()));
        true
    };
    if rev {
        e.scan_rev(ks, start, end, &mut visit).expect("scan_rev");
    } else {
        e.scan(ks, start, end, &mut visit).expect("scan");
    }
    out
}

fn keys(items: &[(Vec<u8>, Vec<u8>)]) -> Vec<&[u8]> {
    items.iter().map(|(k, _)| k.as_slice()).collect()
}

fn get_put_delete(e: &dyn Engine) {
    assert_eq!(e.get(Keyspace::Kv, b"k").expect("get"), None);
    put(e, Keyspace::Kv, b"k", b"v1");
    assert_eq!(
        e.get(Keyspace::Kv, b"k").expect("get"),
        Some(b"v1".to_vec())
    );
    put(e, Keyspace::Kv, b"k", b"v2");
    assert_eq!(
        e.get(Keyspace::Kv, b"k").expect("get"),
        Some(b"v2".to_vec())
    );
    put(e, Keyspace::Kv, b"empty", b"");
    assert_eq!(
        e.get(Keyspace::Kv, b"empty").expect("get"),
        Some(Vec::new())
    );
    let mut b = WriteBatch::new();
    b.delete(Keyspace::Kv, b"k");
    b.delete(Keyspace::Kv, b"never-existed");
    e.write(b, Durability::Buffered).expect("write");
    e.sync().expect("sync");
    assert_eq!(e.get(Keyspace::Kv, b"k").expect("get"), None);
}

fn keyspaces_are_independent(e: &dyn Engine) {
    put(e, Keyspace::Raft, b"x", b"raft");
    put(e, Keyspace::Meta, b"x", b"meta");
    assert_eq!(e.get(Keyspace::Kv, b"x").expect("get"), None);
    assert_eq!(
        e.get(Keyspace::Raft, b"x").expect("get"),
        Some(b"raft".to_vec())
    );
    assert_eq!(
        e.get(Keyspace::Meta, b"x").expect("get"),
        Some(b"meta".to_vec())
    );
    assert!(collect(e, Keyspace::Kv, b"", None, false).is_empty());
}

fn scan_order_and_bounds(e: &dyn Engine) {
    for k in [&b"b"[..], b"a", b"c", b"a\x00", b"\xff", b"ab"] {
        put(e, Keyspace::Kv, k, k);
    }
    let all = collect(e, Keyspace::Kv, b"", None, false);
    assert_eq!(
        keys(&all),
        vec![&b"a"[..], b"a\x00", b"ab", b"b", b"c", b"\xff"]
    );
    let mid = collect(e, Keyspace::Kv, b"a\x00", Some(b"c"), false);
    assert_eq!(keys(&mid), vec![&b"a\x00"[..], b"ab", b"b"]);
    let rev = collect(e, Keyspace::Kv, b"a\x00", Some(b"c"), true);
    assert_eq!(keys(&rev), vec![&b"b"[..], b"ab", b"a\x00"]);
    assert!(collect(e, Keyspace::Kv, b"c", Some(b"a"), false).is_empty());
    assert!(collect(e, Keyspace::Kv, b"c", Some(b"c"), true).is_empty());
    // Early stop.
    let mut seen = 0;
    e.scan(Keyspace::Kv, b"", None, &mut |_, _| {
        seen += 1;
        seen < 2
    })
    .expect("scan");
    assert_eq!(seen, 2);
}

fn uncached_scan_answers_as_scan(e: &dyn Engine) {
    for k in [&b"b"[..], b"a", b"c", b"a\x00", b"\xff", b"ab"] {
        put(e, Keyspace::Kv, k, &[k, b"-value"].concat());
    }
    let uncached = |start: &[u8], end: Option<&[u8]>, stop_after: usize| {
        let mut out = Vec::new();
        e.scan_uncached(Keyspace::Kv, start, end, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            out.len() < stop_after
        })
        .expect("scan_uncached");
        out
    };
    for (start, end) in [
        (&b""[..], None),
        (b"a\x00", Some(&b"c"[..])),
        (b"ab", Some(b"ab\x00")),
        (b"c", Some(b"a")),
        (b"c", Some(b"c")),
        (b"\xff\xff", None),
    ] {
        assert_eq!(
            uncached(start, end, usize::MAX),
            collect(e, Keyspace::Kv, start, end, false),
            "[{start:?}, {end:?})"
        );
    }
    assert_eq!(uncached(b"", None, 2).len(), 2, "early stop");
    // A view's uncached scan answers as its scan, at the view's point in time.
    let view = e.view().expect("view");
    let before = collect(e, Keyspace::Kv, b"", None, false);
    put(e, Keyspace::Kv, b"after-the-view", b"v");
    let from_view = |start: &[u8], end: Option<&[u8]>, uncached: bool, stop_after: usize| {
        let mut out = Vec::new();
        let mut visit = |k: &[u8], v: &[u8]| {
            out.push((k.to_vec(), v.to_vec()));
            out.len() < stop_after
        };
        if uncached {
            view.scan_uncached(Keyspace::Kv, start, end, &mut visit)
        } else {
            view.scan(Keyspace::Kv, start, end, &mut visit)
        }
        .expect("view scan");
        out
    };
    assert_eq!(from_view(b"", None, true, usize::MAX), before);
    for (start, end) in [(&b"a\x00"[..], Some(&b"c"[..])), (b"c", Some(b"a"))] {
        assert_eq!(
            from_view(start, end, true, usize::MAX),
            from_view(start, end, false, usize::MAX),
            "view [{start:?}, {end:?})"
        );
    }
    assert_eq!(from_view(b"", None, true, 3).len(), 3, "early stop");
}

fn delete_range(e: &dyn Engine) {
    for k in [&b"a"[..], b"b", b"c", b"d"] {
        put(e, Keyspace::Kv, k, b"v");
    }
    put(e, Keyspace::Meta, b"b", b"other keyspace");
    let mut b = WriteBatch::new();
    b.delete_range(Keyspace::Kv, b"b", b"d");
    e.write(b, Durability::Sync).expect("write");
    assert_eq!(
        keys(&collect(e, Keyspace::Kv, b"", None, false)),
        vec![&b"a"[..], b"d"]
    );
    assert_eq!(
        e.get(Keyspace::Meta, b"b").expect("get"),
        Some(b"other keyspace".to_vec())
    );
}

fn batch_is_atomic_and_ordered(e: &dyn Engine) {
    let mut b = WriteBatch::new();
    b.put(Keyspace::Kv, b"k", b"first");
    b.put(Keyspace::Kv, b"k", b"second");
    b.put(Keyspace::Meta, b"applied", b"7");
    b.delete(Keyspace::Kv, b"gone");
    assert!(!b.is_empty());
    e.write(b, Durability::Sync).expect("write");
    assert_eq!(
        e.get(Keyspace::Kv, b"k").expect("get"),
        Some(b"second".to_vec())
    );
    assert_eq!(
        e.get(Keyspace::Meta, b"applied").expect("get"),
        Some(b"7".to_vec())
    );
}

fn scan_is_point_in_time(e: &dyn Engine) {
    put(e, Keyspace::Kv, b"1", b"v");
    put(e, Keyspace::Kv, b"2", b"v");
    let mut seen = Vec::new();
    e.scan(Keyspace::Kv, b"", None, &mut |k, _| {
        seen.push(k.to_vec());
        true
    })
    .expect("scan");
    assert_eq!(seen, vec![b"1".to_vec(), b"2".to_vec()]);
}

fn view_is_frozen(e: &dyn Engine) {
    put(e, Keyspace::Kv, b"a", b"1");
    put(e, Keyspace::Meta, b"m", b"1");
    let view = e.view().expect("view");
    let mut b = WriteBatch::new();
    b.put(Keyspace::Kv, "a", "2");
    b.put(Keyspace::Kv, "b", "2");
    b.delete(Keyspace::Meta, "m");
    e.write(b, Durability::Buffered).expect("write");
    let mut b = WriteBatch::new();
    b.delete_range(Keyspace::Kv, "a", "z");
    e.write(b, Durability::Sync).expect("write");
    let scan = |ks| {
        let mut out = Vec::new();
        view.scan(ks, b"", None, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .expect("view scan");
        out
    };
    assert_eq!(scan(Keyspace::Kv), vec![(b"a".to_vec(), b"1".to_vec())]);
    assert_eq!(scan(Keyspace::Meta), vec![(b"m".to_vec(), b"1".to_vec())]);
    assert_eq!(
        view.get(Keyspace::Meta, b"m").expect("get"),
        Some(b"1".to_vec())
    );
    assert_eq!(view.get(Keyspace::Kv, b"b").expect("get"), None);
    // The engine itself moved on.
    assert!(collect(e, Keyspace::Kv, b"", None, false).is_empty());
    assert_eq!(e.get(Keyspace::Meta, b"m").expect("get"), None);
    // Bounds and early stop work on a view as on the engine.
    let mut first = Vec::new();
    view.scan(Keyspace::Kv, b"a", Some(b"a"), &mut |k, _| {
        first.push(k.to_vec());
        true
    })
    .expect("empty range");
    assert!(first.is_empty());
}

fn get_many_answers_in_order(e: &dyn Engine) {
    for k in ["a", "c", "e"] {
        put(e, Keyspace::Kv, k.as_bytes(), format!("{k}1").as_bytes());
    }
    put(e, Keyspace::Meta, b"b", b"meta");
    let asked: Vec<Vec<u8>> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| k.as_bytes().to_vec())
        .collect();
    let v = |s: &str| Some(s.as_bytes().to_vec());
    let now = e.get_many(Keyspace::Kv, &asked).expect("get_many");
    assert_eq!(now, vec![v("a1"), None, v("c1"), None, v("e1")]);
    assert_eq!(e.get_many(Keyspace::Kv, &[]).expect("none asked"), vec![]);
    let view = e.view().expect("view");
    let mut b = WriteBatch::new();
    b.put(Keyspace::Kv, "a", "a2");
    b.put(Keyspace::Kv, "b", "b2");
    b.delete(Keyspace::Kv, "e");
    e.write(b, Durability::Buffered).expect("write");
    let then = view.get_many(Keyspace::Kv, &asked).expect("view get_many");
    assert_eq!(then, now, "a view answers for the moment it was taken");
    let after = e.get_many(Keyspace::Kv, &asked).expect("get_many");
    assert_eq!(after, vec![v("a2"), v("b2"), v("c1"), None, None]);
    for (i, k) in asked.iter().enumerate() {
        assert_eq!(e.get(Keyspace::Kv, k).expect("get"), after[i]);
        assert_eq!(view.get(Keyspace::Kv, k).expect("get"), then[i]);
    }
}

/// What a range read relies on: a view taken at one point keeps answering for that point, record by
/// record, while another thread goes on writing, overwriting and deleting (and other views come
/// and go); each of several views answers for its own point.
fn views_stay_frozen_under_concurrent_writes(e: &dyn Engine) {
    let key = |i: u32| i.to_be_bytes();
    let round = |r: u8, e: &dyn Engine| {
        let mut b = WriteBatch::new();
        for i in 0..300u32 {
            if (i + u32::from(r)) % 5 == 0 {
                b.delete(Keyspace::Kv, key(i));
            } else {
                b.put(Keyspace::Kv, key(i), vec![r; 64]);
            }
        }
        e.write(b, Durability::Buffered).expect("write");
    };
    let expected = |r: u8, i: u32| ((i + u32::from(r)) % 5 != 0).then(|| vec![r; 64]);
    round(1, e);
    let first = e.view().expect("view");
    round(2, e);
    let second = e.view().expect("view");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for r in 3..20 {
                round(r, e);
                drop(e.view().expect("a passing view"));
            }
            let mut b = WriteBatch::new();
            b.delete_range(Keyspace::Kv, Vec::new(), vec![0xff; 5]);
            e.write(b, Durability::Sync).expect("write");
        });
        for pass in 0..3 {
            for i in 0..300u32 {
                let ctx = format!("pass {pass} key {i}");
                assert_eq!(
                    first.get(Keyspace::Kv, &key(i)).expect("get"),
                    expected(1, i),
                    "{ctx}"
                );
                assert_eq!(
                    second.get(Keyspace::Kv, &key(i)).expect("get"),
                    expected(2, i),
                    "{ctx}"
                );
            }
        }
    });
    drop(first);
    let mut n = 0;
    second
        .scan(Keyspace::Kv, b"", None, &mut |k, v| {
            let i = u32::from_be_bytes(k.try_into().expect("4-byte key"));
            assert_eq!(Some(v.to_vec()), expected(2, i));
            n += 1;
            true
        })
        .expect("scan");
    assert_eq!(
        n, 240,
        "the second view outlives the first and every later write"
    );
    assert!(collect(e, Keyspace::Kv, b"", None, false).is_empty());
}

fn size_grows_with_data(e: &dyn Engine) {
    let before = e.size_bytes();
    for i in 0..200u32 {
        put(e, Keyspace::Kv, &i.to_be_bytes(), &[7u8; 512]);
    }
    e.sync().expect("sync");
    assert!(
        e.size_bytes() > before,
        "size_bytes must grow after writing 100 KiB"
    );
    assert!(!e.kind().is_empty());
}
