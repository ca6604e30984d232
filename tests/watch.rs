//! The Watch API through the `etcd-client` crate against the real binary, on both engines.

mod common;

use std::time::Duration;

use common::{Server, ENGINES};
use etcd_client::{
    EventType, GetOptions, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch response within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

/// Collect events (as `(type, key, value, mod_revision)`) until `n` have arrived.
async fn events(stream: &mut WatchStream, n: usize) -> Vec<(EventType, String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = next(stream).await;
        assert!(!resp.canceled(), "unexpected cancel: {resp:?}");
        for ev in resp.events() {
            let kv = ev.kv().expect("kv");
            out.push((
                ev.event_type(),
                kv.key_str().unwrap().into(),
                kv.value_str().unwrap().into(),
                kv.mod_revision(),
            ));
        }
    }
    assert_eq!(out.len(), n, "no extra events");
    out
}

#[tokio::test]
async fn history_then_live_in_order_without_gaps() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        c.put("w/a", "1", None).await.unwrap(); // rev 2
        c.put("w/b", "1", None).await.unwrap(); // rev 3
        c.put("other", "x", None).await.unwrap(); // rev 4
        let mut s = c
            .watch(
                "w/",
                Some(WatchOptions::new().with_prefix().with_start_revision(2)),
            )
            .await
            .unwrap();
        let created = next(&mut s).await;
        assert!(created.created() && !created.canceled(), "[{engine}]");
        // A txn writes two keys in one revision: they arrive in one response.
        let t = Txn::new().and_then([TxnOp::put("w/a", "2", None), TxnOp::delete("w/b", None)]);
        c.txn(t).await.unwrap(); // rev 5
        c.put("w/c", "1", None).await.unwrap(); // rev 6
        let got = events(&mut s, 5).await;
        let revs: Vec<i64> = got.iter().map(|e| e.3).collect();
        assert_eq!(
            revs,
            vec![2, 3, 5, 5, 6],
            "[{engine}] ordered, unique, no gap: {got:?}"
        );
        assert_eq!(got[3].0, EventType::Delete);
        assert_eq!(got[3].1, "w/b");
    }
}

#[tokio::test]
async fn ranges_filters_prev_kv_and_atomic_revisions() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        c.put("k", "old", None).await.unwrap();
        let mut s = c
            .watch("k", Some(WatchOptions::new().with_prev_key()))
            .await
            .unwrap();
        assert!(next(&mut s).await.created());
        s.watch(
            "a",
            Some(
                WatchOptions::new()
                    .with_range("c")
                    .with_filters([WatchFilterType::NoPut]),
            ),
        )
        .await
        .unwrap();
        let created = next(&mut s).await;
        assert!(created.created());
        let range_id = created.watch_id();
        s.watch(
            "m",
            Some(
                WatchOptions::new()
                    .with_from_key()
                    .with_filters([WatchFilterType::NoDelete]),
            ),
        )
        .await
        .unwrap();
        let from_key_id = next(&mut s).await.watch_id();

        c.put("k", "new", None).await.unwrap();
        let resp = next(&mut s).await;
        let ev = &resp.events()[0];
        assert_eq!(
            ev.prev_kv().map(|p| p.value()),
            Some(&b"old"[..]),
            "[{engine}] prev_kv"
        );
        assert_eq!(resp.header().unwrap().revision(), 3);

        c.put("b", "1", None).await.unwrap(); // NOPUT: not seen by the range watcher
        c.put("z", "1", None).await.unwrap(); // seen by the from-key watcher
        let resp = next(&mut s).await;
        assert_eq!(
            (resp.watch_id(), resp.events()[0].kv().unwrap().key()),
            (from_key_id, &b"z"[..])
        );
        c.delete("b", None).await.unwrap();
        let resp = next(&mut s).await;
        assert_eq!(resp.watch_id(), range_id);
        assert_eq!(resp.events()[0].event_type(), EventType::Delete);
        assert_eq!(
            resp.events()[0].kv().unwrap().mod_revision(),
            6,
            "a delete event carries its revision"
        );
    }
}

#[tokio::test]
async fn compacted_start_cancels_and_future_start_waits() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        for i in 0..5 {
            c.put("k", format!("v{i}"), None).await.unwrap(); // revs 2..=6
        }
        c.compact(5, None).await.unwrap();
        let mut s = c
            .watch("k", Some(WatchOptions::new().with_start_revision(3)))
            .await
            .unwrap();
        let first = next(&mut s).await;
        assert!(first.created(), "[{engine}] {first:?}");
        let resp = next(&mut s).await;
        assert!(resp.canceled(), "[{engine}] {resp:?}");
        assert_eq!(resp.compact_revision(), 5);

        let mut f = c
            .watch("k", Some(WatchOptions::new().with_start_revision(8)))
            .await
            .unwrap();
        assert!(next(&mut f).await.created());
        c.put("k", "v7", None).await.unwrap(); // rev 7: before the start
        c.put("k", "v8", None).await.unwrap(); // rev 8
        let got = events(&mut f, 1).await;
        assert_eq!((got[0].2.as_str(), got[0].3), ("v8", 8), "[{engine}]");
    }
}

#[tokio::test]
async fn ids_cancel_and_progress() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        let mut s = c
            .watch("a", Some(WatchOptions::new().with_watch_id(7)))
            .await
            .unwrap();
        let created = next(&mut s).await;
        assert_eq!((created.created(), created.watch_id()), (true, 7));
        s.watch("b", Some(WatchOptions::new().with_watch_id(7)))
            .await
            .unwrap();
        let dup = next(&mut s).await;
        assert!(dup.created() && dup.canceled(), "[{engine}] {dup:?}");
        assert_eq!(
            dup.cancel_reason(),
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
        s.watch("c", None).await.unwrap();
        assert_eq!(
            next(&mut s).await.watch_id(),
            0,
            "server-chosen ids start at 0, as in etcd"
        );

        c.put("z", "1", None).await.unwrap();
        s.request_progress().await.unwrap();
        let progress = next(&mut s).await;
        assert_eq!(
            (progress.watch_id(), progress.header().unwrap().revision()),
            (-1, 2)
        );

        s.cancel(7).await.unwrap();
        let canceled = next(&mut s).await;
        assert_eq!((canceled.canceled(), canceled.watch_id()), (true, 7));
        c.put("a", "after-cancel", None).await.unwrap();
        c.put("c", "1", None).await.unwrap();
        let resp = next(&mut s).await;
        assert_eq!(
            resp.watch_id(),
            0,
            "[{engine}] the cancelled watcher got nothing more"
        );
    }
}

#[tokio::test]
async fn slow_consumer_does_not_block_writes_and_loses_nothing() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        let mut s = c
            .watch("s/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(next(&mut s).await.created());
        // Write far more than the stream buffer holds while nobody reads the watch.
        const WRITES: usize = 1500;
        for i in 0..WRITES {
            c.put(format!("s/{}", i % 37), format!("{i}"), None)
                .await
                .unwrap();
        }
        let head = c
            .get(
                "s/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        assert_eq!(
            head.header().unwrap().revision(),
            1 + WRITES as i64,
            "[{engine}] every write went through"
        );
        let got = events(&mut s, WRITES).await;
        for (i, e) in got.iter().enumerate() {
            assert_eq!(
                (e.2.clone(), e.3),
                (format!("{i}"), 2 + i as i64),
                "[{engine}] event {i}"
            );
        }
    }
}

#[tokio::test]
async fn idle_watchers_get_progress_notifications() {
    for engine in ENGINES {
        let server = Server::start_with(
            engine,
            &["--experimental-watch-progress-notify-interval", "200ms"],
        );
        let mut c = server.client().await;
        c.put("x", "1", None).await.unwrap(); // rev 2
        let mut s = c
            .watch("k", Some(WatchOptions::new().with_progress_notify()))
            .await
            .unwrap();
        let created = next(&mut s).await;
        let mut quiet = c.watch("q", None).await.unwrap();
        assert!(next(&mut quiet).await.created());
        assert!(created.created());
        let progress = next(&mut s).await;
        assert!(progress.events().is_empty(), "[{engine}] {progress:?}");
        assert_eq!(
            (progress.watch_id(), progress.header().unwrap().revision()),
            (created.watch_id(), 2)
        );
        // Later events still exceed the bookmark.
        c.put("k", "1", None).await.unwrap();
        let mut resp = next(&mut s).await;
        while resp.events().is_empty() {
            resp = next(&mut s).await;
        }
        assert_eq!(resp.events()[0].kv().unwrap().mod_revision(), 3);
        // A watcher that did not ask gets none.
        let none = tokio::time::timeout(Duration::from_millis(600), quiet.message()).await;
        assert!(
            none.is_err(),
            "[{engine}] no progress without progress_notify: {none:?}"
        );
    }
}

#[tokio::test]
async fn large_revisions_arrive_in_fragments_when_asked() {
    for engine in ENGINES {
        let server = Server::start_with(engine, &["--max-request-bytes", "4096"]);
        let mut c = server.client().await;
        for i in 0..10 {
            c.put(format!("f/{i}"), vec![b'x'; 1000], None)
                .await
                .unwrap();
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_fragment();
        let mut s = c.watch("f/", Some(opts)).await.unwrap();
        assert!(next(&mut s).await.created());
        // One revision deletes all ten keys; with their previous values the response is ~10 KB.
        c.delete("f/", Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await
            .unwrap();
        let mut parts = 0;
        let mut deleted = Vec::new();
        while deleted.len() < 10 {
            let resp = next(&mut s).await;
            parts += 1;
            for ev in resp.events() {
                assert_eq!(ev.event_type(), EventType::Delete);
                assert!(ev.prev_kv().is_some());
                deleted.push(ev.kv().unwrap().key_str().unwrap().to_string());
            }
        }
        assert!(
            parts >= 3,
            "[{engine}] a 10 KB revision under a 4 KB limit came in {parts} part(s)"
        );
        let want: Vec<String> = (0..10).map(|i| format!("f/{i}")).collect();
        assert_eq!(
            deleted, want,
            "[{engine}] every delete exactly once, in order"
        );
    }
}

/// A client that closes its sending side after its create request (as a one-shot watcher written
/// against etcd may) still gets the events: etcd keeps such a stream open until the client leaves.
#[tokio::test]
async fn a_half_closed_stream_keeps_its_watchers() {
    use metastore::pb::etcdserverpb::watch_client::WatchClient;
    use metastore::pb::etcdserverpb::watch_request::RequestUnion;
    use metastore::pb::etcdserverpb::{WatchCreateRequest, WatchRequest};
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut raw = WatchClient::connect(server.endpoint.clone())
            .await
            .expect("connect");
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"half".to_vec(),
                ..Default::default()
            })),
        };
        // The request stream ends right after the create request.
        let mut responses = raw
            .watch(futures::stream::iter([create]))
            .await
            .expect("watch")
            .into_inner();
        let within = |what: &'static str| {
            move |r: Result<_, _>| r.unwrap_or_else(|_| panic!("{what} within 10 s"))
        };
        let created = tokio::time::timeout(Duration::from_secs(10), responses.message()).await;
        let created = within("created")(created).expect("ok").expect("open");
        assert!(created.created, "[{engine}] {created:?}");
        let mut c = server.client().await;
        c.put("half", "1", None).await.expect("put");
        let event = tokio::time::timeout(Duration::from_secs(10), responses.message()).await;
        let event = within("the event")(event)
            .expect("ok")
            .unwrap_or_else(|| panic!("[{engine}] the stream ended after the client's half-close"));
        assert_eq!(event.events.len(), 1, "[{engine}] {event:?}");
        assert_eq!(event.events[0].kv.as_ref().expect("kv").value, b"1");
    }
}

/// A watch from revision -1 on a stream beside watches catching up from history. etcd 3.5.1 syncs
/// them in one round, reads history from -1 as an empty range and marks them all synced, so the
/// others lose their catch-up (etcd#20693). MetaStore gives each watcher its own history; the one
/// from -1 is created and sees what comes next, as etcd's does.
#[tokio::test]
async fn a_watch_from_minus_one_costs_its_neighbours_nothing() {
    use futures::StreamExt;
    use metastore::pb::etcdserverpb::watch_client::WatchClient;
    use metastore::pb::etcdserverpb::watch_request::RequestUnion;
    use metastore::pb::etcdserverpb::{WatchCreateRequest, WatchRequest};
    let create = |key: &[u8], range_end: &[u8], start_revision: i64| WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            start_revision,
            ..Default::default()
        })),
    };
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        c.put("w/a", "1", None).await.expect("put"); // rev 2
        c.put("w/b", "1", None).await.expect("put"); // rev 3
        let mut raw = WatchClient::connect(server.endpoint.clone())
            .await
            .expect("connect");
        // All three creates at once, the request side left open.
        let creates = [
            create(b"w/", b"w0", 2),
            create(b"x", b"", -1),
            create(b"w/", b"w0", 3),
        ];
        let requests = futures::stream::iter(creates).chain(futures::stream::pending());
        let mut responses = raw.watch(requests).await.expect("watch").into_inner();
        // (watch id, mod revision) of every event, until four have come (watchers catching up
        // get theirs from a background pass: after the live event of watch 1, possibly).
        let mut seen = Vec::new();
        let mut created = 0;
        while seen.len() < 4 {
            let next = tokio::time::timeout(Duration::from_secs(10), responses.message()).await;
            let resp = next
                .unwrap_or_else(|_| {
                    panic!("[{engine}] nothing within 10 s; events so far {seen:?}")
                })
                .expect("ok")
                .expect("open");
            assert!(!resp.canceled, "[{engine}] {resp:?}");
            if resp.created {
                created += 1;
                if created == 3 {
                    c.put("x", "1", None).await.expect("put"); // rev 4
                }
            }
            for event in &resp.events {
                seen.push((resp.watch_id, event.kv.as_ref().expect("kv").mod_revision));
            }
        }
        seen.sort();
        assert_eq!(seen, vec![(0, 2), (0, 3), (1, 4), (2, 3)], "[{engine}]");
    }
}
