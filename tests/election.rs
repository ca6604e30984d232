//! The v3election service through the `etcd-client` crate, on both engines.

mod common;

use std::time::Duration;

use common::{Server, ENGINES};
use etcd_client::{ProclaimOptions, ResignOptions};

#[tokio::test]
async fn campaign_leader_observe_proclaim_resign() {
    for engine in ENGINES {
        let server = Server::start(engine);
        let mut c = server.client().await;
        let l1 = c.lease_grant(60, None).await.unwrap().id();
        let l2 = c.lease_grant(60, None).await.unwrap().id();
        let won = c.campaign("el", "alice", l1).await.unwrap();
        let leader = won.leader().unwrap().clone();
        assert_eq!(
            leader.key(),
            format!("el/{l1:x}").as_bytes(),
            "[{engine}] etcd's key layout"
        );
        assert_eq!(
            c.leader("el").await.unwrap().kv().unwrap().value(),
            b"alice"
        );

        let mut observe = c.observe("el").await.unwrap();
        let first = observe.message().await.unwrap().unwrap();
        assert_eq!(first.kv().unwrap().value(), b"alice");

        // A second candidate waits while alice leads.
        let mut c2 = server.client().await;
        let bob = tokio::spawn(async move { c2.campaign("el", "bob", l2).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!bob.is_finished(), "[{engine}] one leader at a time");

        c.proclaim(
            "alice-2",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await
        .unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), observe.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            seen.kv().unwrap().value(),
            b"alice-2",
            "[{engine}] observers see proclamations"
        );

        c.resign(Some(ResignOptions::new().with_leader(leader.clone())))
            .await
            .unwrap();
        let bob = tokio::time::timeout(Duration::from_secs(5), bob)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(bob.leader().unwrap().key(), format!("el/{l2:x}").as_bytes());
        let seen = tokio::time::timeout(Duration::from_secs(5), observe.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            seen.kv().unwrap().value(),
            b"bob",
            "[{engine}] the next leader is observed"
        );

        // The old leader key no longer proclaims.
        let err = c
            .proclaim("stale", Some(ProclaimOptions::new().with_leader(leader)))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("election: not leader"),
            "[{engine}] {err}"
        );
    }
}

/// Campaign with lease 0 as etcd 3.5.1's server answers it (checked against the real binary): a
/// fresh lease of 60 s is granted, named in the leader key's `lease` and in its key.
#[tokio::test]
async fn campaign_with_lease_zero_gets_a_session_lease() {
    let server = Server::start("memory");
    let mut c = server.client().await;
    let won = c.campaign("zel", "v", 0).await.unwrap();
    let leader = won.leader().unwrap().clone();
    assert_ne!(leader.lease(), 0, "lease 0 is replaced by a granted lease");
    assert_eq!(leader.key(), format!("zel/{:x}", leader.lease()).as_bytes());
    let ttl = c.lease_time_to_live(leader.lease(), None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60, "etcd's session TTL");
    let kv = c.get(leader.key(), None).await.unwrap();
    assert_eq!(kv.kvs()[0].lease(), leader.lease());
    assert_eq!(kv.kvs()[0].value(), b"v");

    // A second lease-0 candidate waits behind the first, on a key of its own.
    let mut c2 = server.client().await;
    let second = tokio::spawn(async move { c2.campaign("zel", "w", 0).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "one leader at a time");
    c.resign(Some(ResignOptions::new().with_leader(leader.clone())))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let next = got.leader().unwrap();
    assert_ne!(next.lease(), leader.lease());
    assert_eq!(next.key(), format!("zel/{:x}", next.lease()).as_bytes());
}

/// One election request of [`election_requests_are_answered_as_etcd_answers_them`].
#[derive(Debug, Clone)]
enum ElectionReq {
    Campaign(&'static str, i64, &'static str),
    Leader(&'static str),
    Proclaim(Option<etcd_client::LeaderKey>, &'static str),
    Resign(Option<etcd_client::LeaderKey>),
}

/// A server's answer, as compared: the header's revision and the payload, or the error's code and
/// text.
async fn election_answer(c: &mut etcd_client::Client, req: &ElectionReq) -> String {
    let rev = |h: Option<&etcd_client::ResponseHeader>| h.map(|h| h.revision()).unwrap_or(-1);
    let answer = match req.clone() {
        ElectionReq::Campaign(name, lease, value) => {
            c.campaign(name, value, lease).await.map(|r| {
                let l = r.leader().expect("a leader key");
                format!(
                    "rev {} leader {:?} {:?} {} {}",
                    rev(r.header()),
                    l.name(),
                    l.key(),
                    l.rev(),
                    l.lease()
                )
            })
        }
        ElectionReq::Leader(name) => c.leader(name).await.map(|r| {
            let kv = r.kv().expect("the leader's kv");
            format!(
                "rev {} kv {:?} {:?} {} {} {} {}",
                rev(r.header()),
                kv.key(),
                kv.value(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease()
            )
        }),
        ElectionReq::Proclaim(leader, value) => {
            let opts = leader.map(|l| ProclaimOptions::new().with_leader(l));
            c.proclaim(value, opts)
                .await
                .map(|r| format!("rev {}", rev(r.header())))
        }
        ElectionReq::Resign(leader) => {
            let opts = leader.map(|l| ResignOptions::new().with_leader(l));
            c.resign(opts)
                .await
                .map(|r| format!("rev {}", rev(r.header())))
        }
    };
    common::etcd::answer_text(answer)
}

/// Campaign, Leader, Proclaim and Resign as etcd 3.5.1 answers them, on generated sequences: the
/// same requests go to the real etcd and to MetaStore, and every answer (revisions, leader keys,
/// the leader's record, or the error's code and text) must be the same. Leader keys are a name's
/// current one, one it had before or one made up, as they are or with another key, revision or
/// lease, or are left out.
/// Campaigns go only to names the sequence believes free (a held one would wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_requests_are_answered_as_etcd_answers_them() {
    use std::collections::BTreeMap;

    let data = tempfile::tempdir().expect("tempdir");
    let (_etcd, mut reference) = common::etcd::start_reference(&data.path().join("e")).await;
    let server = Server::start("memory");
    let mut ours = server.client().await;
    // Leases with the same ids on both (granted ones, and 9, which neither has).
    for c in [&mut reference, &mut ours] {
        for id in [1, 2] {
            c.lease_grant(600, Some(etcd_client::LeaseGrantOptions::new().with_id(id)))
                .await
                .expect("grant");
        }
    }
    const NAMES: [&str; 3] = ["el", "el2", ""];
    const LEASES: [i64; 3] = [1, 2, 9];
    const VALUES: [&str; 3] = ["a", "", "b"];
    let mut seq = common::etcd::Sequence::new(0x9e37_79b9_7f4a_7c15);
    let mut below = |n: usize| seq.below(n as u64) as usize;
    // Each name's leader key as etcd last granted it, while believed held.
    let mut held: BTreeMap<&str, etcd_client::LeaderKey> = BTreeMap::new();
    // Every leader key etcd granted.
    let mut past: Vec<etcd_client::LeaderKey> = Vec::new();
    for step in 0..300 {
        let name = NAMES[below(NAMES.len())];
        let req = match below(4) {
            0 if !held.contains_key(name) => {
                ElectionReq::Campaign(name, LEASES[below(3)], VALUES[below(3)])
            }
            1 => ElectionReq::Leader(name),
            kind => {
                // The name's leader key, or one it had before, or one made up; as it is or
                // changed; now and then none at all.
                let leader = match held.get(name) {
                    Some(l) if below(4) != 0 => l.clone(),
                    _ if !past.is_empty() && below(2) == 0 => past[below(past.len())].clone(),
                    _ => etcd_client::LeaderKey::new()
                        .with_name(name)
                        .with_key(format!("{name}/{:x}", LEASES[below(3)]))
                        .with_rev(below(40) as i64)
                        .with_lease(LEASES[below(3)]),
                };
                let leader = match below(6) {
                    0 => leader.with_rev(below(40) as i64),
                    1 => leader.with_key(format!("{name}/{:x}", LEASES[below(3)])),
                    2 => leader.with_lease(LEASES[below(3)]),
                    _ => leader,
                };
                let leader = if below(10) == 0 { None } else { Some(leader) };
                if kind == 2 {
                    ElectionReq::Proclaim(leader, VALUES[below(3)])
                } else {
                    ElectionReq::Resign(leader)
                }
            }
        };
        let expected = election_answer(&mut reference, &req).await;
        let got = election_answer(&mut ours, &req).await;
        assert_eq!(got, expected, "step {step}: {req:?}");
        // Follow which names are held, from etcd's answers.
        match &req {
            ElectionReq::Campaign(name, lease, _) if !expected.starts_with("error") => {
                let key = format!("{name}/{lease:x}");
                // "... <leader key's revision> <lease>"
                let rev: i64 = expected
                    .split_whitespace()
                    .rev()
                    .nth(1)
                    .and_then(|r| r.parse().ok())
                    .expect("the leader key's revision");
                let leader = etcd_client::LeaderKey::new()
                    .with_name(*name)
                    .with_key(key)
                    .with_rev(rev)
                    .with_lease(*lease);
                past.push(leader.clone());
                held.insert(name, leader);
            }
            // The key is gone if it was the leader's; a changed key or revision resigns nothing,
            // and the name stays held.
            ElectionReq::Resign(Some(l))
                if !expected.starts_with("error")
                    && held
                        .get(name)
                        .is_some_and(|h| h.key() == l.key() && h.rev() == l.rev()) =>
            {
                held.remove(name);
            }
            _ => {}
        }
    }
}

/// What a campaign that waits, a campaign that proclaims a new value, and a Proclaim or Resign
/// with lease 0 leave and answer, on one server: header revisions, and for the lease-0 calls the
/// granted TTL of the lease the key moved to (or `none`) and how many leases there are.
async fn sessions_and_headers(endpoint: String) -> Vec<String> {
    let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .expect("connect");
    let mut seen = Vec::new();
    for id in [1, 2] {
        c.lease_grant(600, Some(etcd_client::LeaseGrantOptions::new().with_id(id)))
            .await
            .expect("grant");
    }
    let rev = |h: Option<&etcd_client::ResponseHeader>| h.map_or(-1, |h| h.revision());
    let first = c.campaign("hd", "x", 1).await.expect("campaign");
    seen.push(format!("won at {}", rev(first.header())));
    let leader = first.leader().expect("leader key").clone();
    // The same lease again with another value: the key is proclaimed anew.
    let again = c.campaign("hd", "y", 1).await.expect("campaign again");
    seen.push(format!("campaigned again at {}", rev(again.header())));
    // A second candidate waits while writes go on, then wins when the first resigns.
    let mut c2 = c.clone();
    let second = tokio::spawn(async move { c2.campaign("hd", "z", 2).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.put("elsewhere", "w", None).await.expect("put");
    c.resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .expect("resign");
    let won = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second candidate wins")
        .expect("task")
        .expect("campaign");
    seen.push(format!("waited, won at {}", rev(won.header())));
    let second_leader = won.leader().expect("leader key").clone();
    // Proclaim with lease 0: etcd proclaims in a fresh session, so the key moves to its lease.
    let proclaimed = c
        .proclaim(
            "p",
            Some(ProclaimOptions::new().with_leader(second_leader.clone().with_lease(0))),
        )
        .await
        .expect("proclaim");
    seen.push(format!("proclaimed at {}", rev(proclaimed.header())));
    let kv = c.get("hd/2", None).await.expect("get").kvs()[0].clone();
    let ttl = c.lease_time_to_live(kv.lease(), None).await.expect("ttl");
    seen.push(format!(
        "the key's value {:?}, its lease granted for {} s (another than 2: {})",
        kv.value_str().unwrap_or_default(),
        ttl.granted_ttl(),
        kv.lease() != 2
    ));
    // Resign with lease 0 of a key that is not the leader's: nothing deleted, a lease granted.
    let before = c.leases().await.expect("leases").leases().len();
    let resigned = c
        .resign(Some(
            ResignOptions::new().with_leader(second_leader.with_rev(1).with_lease(0)),
        ))
        .await
        .expect("resign");
    let after = c.leases().await.expect("leases").leases().len();
    seen.push(format!(
        "resigned at {}, leases {before} then {after}, key there: {}",
        rev(resigned.header()),
        c.get("hd/2", None).await.expect("get").count()
    ));
    seen
}

/// Campaign answers the header of the txn that queued its key (not of the moment it won, nor of
/// the proclamation of a new value), and Proclaim and Resign with lease 0 run in a fresh session
/// lease, as etcd 3.5.1 does (asked side by side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_headers_and_lease_zero_sessions_are_etcds() {
    let data = tempfile::tempdir().expect("tempdir");
    let (etcd, _reference) = common::etcd::start_reference(&data.path().join("e")).await;
    let server = Server::start("memory");
    let expected = sessions_and_headers(etcd.endpoint.clone()).await;
    let got = sessions_and_headers(server.endpoint.clone()).await;
    assert_eq!(got, expected);
}

/// Proclaim and Resign naming the empty key are refused as etcd 3.5.1 refuses them ("key is not
/// provided", whatever the revision and lease), and leave the store as it was: a Proclaim at
/// revision 0 once wrote the empty key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_leader_keys_are_refused_as_etcd_refuses_them() {
    let data = tempfile::tempdir().expect("tempdir");
    let (_etcd, mut reference) = common::etcd::start_reference(&data.path().join("e")).await;
    let server = Server::start("memory");
    let mut ours = server.client().await;
    let empty = |rev: i64, lease: i64| {
        etcd_client::LeaderKey::new()
            .with_name("el")
            .with_rev(rev)
            .with_lease(lease)
    };
    let requests = [
        ElectionReq::Proclaim(Some(empty(0, 0)), "v"),
        ElectionReq::Proclaim(Some(empty(3, 7)), "v"),
        ElectionReq::Resign(Some(empty(0, 0))),
        ElectionReq::Resign(Some(empty(5, 7))),
    ];
    for c in [&mut reference, &mut ours] {
        c.put("k", "v", None).await.expect("put");
    }
    for req in &requests {
        let expected = election_answer(&mut reference, req).await;
        let got = election_answer(&mut ours, req).await;
        assert_eq!(got, expected, "{req:?}");
        assert!(expected.contains("key is not provided"), "{expected}");
    }
    let revision = ours
        .get("k", None)
        .await
        .expect("get")
        .header()
        .unwrap()
        .revision();
    assert_eq!(revision, 2, "a refused request writes nothing");
}
