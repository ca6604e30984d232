//! One watch per resource prefix, with progress requests, fed to its [`WatchCheck`].

use super::*;

/// What one watch stream saw.
pub(super) struct WatchReport {
    pub(super) check: WatchCheck,
    pub(super) progress_requests: u64,
    pub(super) progress_notifications: u64,
    pub(super) stream: Violations,
}

/// One watch stream with one watcher on `prefix` from `start` (kube-apiserver opens a stream per
/// watch): progress requests every `every`; once `drain` holds a revision, ask for progress often
/// until the watcher is through it (or [`WATCH_DRAIN_DEADLINE`] passes).
pub(super) async fn watch_loop(
    channel: Channel,
    prefix: Vec<u8>,
    start: i64,
    every: Duration,
    ready: oneshot::Sender<Result<(), String>>,
    mut drain: watch::Receiver<Option<i64>>,
) -> WatchReport {
    let mut report = WatchReport {
        check: WatchCheck::new(start),
        progress_requests: 0,
        progress_notifications: 0,
        stream: Violations::default(),
    };
    let (tx, rx) = mpsc::channel::<WatchRequest>(4);
    let requests =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.clone(),
            range_end: prefix_end(&prefix),
            start_revision: start,
            ..Default::default()
        })),
    };
    let progress = || WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(WatchProgressRequest {})),
    };
    // The create goes out with the call: a grpc-go server answers the call with its first message.
    let started = async {
        tx.send(create)
            .await
            .map_err(|_| "watch stream closed".to_string())?;
        let mut client = WatchClient::new(channel).max_decoding_message_size(usize::MAX);
        let mut responses = client
            .watch(requests)
            .await
            .map_err(|e| e.message().to_string())?
            .into_inner();
        let resp = responses
            .message()
            .await
            .map_err(|e| e.message().to_string())?
            .ok_or("watch stream ended")?;
        if !resp.created || resp.canceled {
            return Err(format!("watch not created: {}", resp.cancel_reason));
        }
        Ok::<_, String>((responses, resp.watch_id))
    };
    let (mut responses, id) = match rt::timeout(WATCH_START_DEADLINE, started).await {
        Ok(Ok(r)) => {
            let _ = ready.send(Ok(()));
            r
        }
        Ok(Err(e)) => {
            let _ = ready.send(Err(e));
            return report;
        }
        Err(_) => {
            let _ = ready.send(Err("the watcher was not created in time".into()));
            return report;
        }
    };
    let mut target: Option<i64> = None;
    let mut drain_deadline = rt::now() + Duration::from_secs(365 * 24 * 3600);
    let mut next_progress = rt::now() + every;
    loop {
        if let Some(t) = target {
            if report.check.through() >= t || rt::now() >= drain_deadline {
                break;
            }
        }
        let wait = next_progress
            .min(drain_deadline)
            .saturating_duration_since(rt::now());
        tokio::select! {
            biased;
            msg = responses.message() => match msg {
                Ok(Some(resp)) => on_response(&mut report, id, resp),
                Ok(None) => {
                    report.stream.add("watch stream ended".into());
                    break;
                }
                Err(e) => {
                    report.stream.add(format!("watch stream failed: {}", e.message()));
                    break;
                }
            },
            _ = rt::sleep(wait) => {
                if rt::now() >= next_progress {
                    if tx.send(progress()).await.is_err() {
                        break;
                    }
                    report.progress_requests += 1;
                    let gap = if target.is_some() { DRAIN_PROGRESS_INTERVAL } else { every };
                    next_progress = rt::now() + gap;
                }
            },
            changed = drain.changed(), if target.is_none() => {
                target = match changed {
                    Ok(()) => *drain.borrow(),
                    Err(_) => Some(0),
                };
                drain_deadline = rt::now() + WATCH_DRAIN_DEADLINE;
                next_progress = rt::now();
            },
        }
    }
    report
}

pub(super) fn on_response(report: &mut WatchReport, id: i64, resp: WatchResponse) {
    let at = rt::now();
    let rev = resp.header.as_ref().map_or(0, |h| h.revision);
    if resp.canceled || resp.compact_revision > 0 {
        report.stream.add(format!(
            "watcher canceled (compact revision {}): {}",
            resp.compact_revision, resp.cancel_reason
        ));
        return;
    }
    // -1: a requested progress notification, for every watcher of the stream.
    if resp.watch_id != id && resp.watch_id != -1 {
        report
            .stream
            .add(format!("a response for unknown watcher {}", resp.watch_id));
        return;
    }
    if resp.events.is_empty() {
        report.progress_notifications += 1;
        report.check.progress(rev);
        return;
    }
    for ev in &resp.events {
        if let Some(kv) = &ev.kv {
            report.check.event(kv.mod_revision, &kv.key, at);
        }
    }
}
