//! The printed report: per operation, the watches, the checks.

use super::*;

/// Latency percentile `p` in ms of sorted microseconds.
pub(super) fn pct_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let idx = ((sorted_us.len() as f64 * p).ceil() as usize).clamp(1, sorted_us.len()) - 1;
    sorted_us[idx] as f64 / 1000.0
}

pub(super) fn print_report(
    stats: &Stats,
    watched: &[WatchReport],
    load: &Load,
    args: &K8sArgs,
    seconds: f64,
) -> Result<(), String> {
    let answered: u64 = OPS
        .iter()
        .filter(|o| o.pickable())
        .map(|o| stats.lat_us[o.idx()].len() as u64)
        .sum();
    let errors: u64 = stats.errors.iter().sum();
    println!(
        "Summary (K8s, {} clients, {} conns, {} objects):",
        load.clients, load.conns, args.objects
    );
    println!("  Total:        {seconds:.4} secs");
    println!("  Operations:   {answered}");
    println!(
        "  Requests/sec: {:.1}",
        if seconds > 0.0 {
            answered as f64 / seconds
        } else {
            0.0
        }
    );
    println!(
        "  {:<12} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "op", "count", "ops/s", "p50 ms", "p99 ms", "max ms", "conflicts", "errors"
    );
    for op in OPS {
        let mut lat = stats.lat_us[op.idx()].clone();
        lat.sort_unstable();
        let i = op.idx();
        if lat.is_empty() && stats.errors[i] == 0 {
            continue;
        }
        println!(
            "  {:<12} {:>9} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9} {:>7}",
            op.name(),
            lat.len(),
            lat.len() as f64 / seconds.max(1e-9),
            pct_ms(&lat, 0.50),
            pct_ms(&lat, 0.99),
            lat.last().copied().unwrap_or(0) as f64 / 1000.0,
            stats.conflicts[i],
            stats.errors[i]
        );
    }

    // Watch delivery: from a write's send to its event's arrival.
    let mut by_prefix: Vec<Vec<i64>> = vec![Vec::new(); watched.len()];
    let mut sent: HashMap<i64, rt::Instant> = HashMap::with_capacity(stats.acked.len());
    for a in &stats.acked {
        if let Some(v) = by_prefix.get_mut(a.prefix) {
            v.push(a.rev);
        }
        sent.insert(a.rev, a.sent);
    }
    let mut delivery_us = Vec::new();
    let mut delivered = 0u64;
    let mut missing = Vec::new();
    let mut violations = Violations::default();
    let (mut requests, mut notifications) = (0, 0);
    for (w, acked) in watched.iter().zip(&by_prefix) {
        let check = &w.check;
        violations.merge(w.stream.clone());
        requests += w.progress_requests;
        notifications += w.progress_notifications;
        delivered += check.received.len() as u64;
        delivery_us.extend(check.received.iter().filter_map(|(rev, at)| {
            sent.get(rev)
                .map(|t0| at.saturating_duration_since(*t0).as_micros() as u64)
        }));
        missing.extend(check.missing(acked.iter().copied()));
        violations.merge(check.violations.clone());
    }
    delivery_us.sort_unstable();
    println!(
        "  {:<12} {:>9} {:>10.1} {:>9.3} {:>9.3} {:>9.3}",
        "watch-event",
        delivered,
        delivered as f64 / seconds.max(1e-9),
        pct_ms(&delivery_us, 0.50),
        pct_ms(&delivery_us, 0.99),
        delivery_us.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    println!(
        "  Watch:        {} watchers, {} events, {} acknowledged writes missing, {} progress requests, {} notifications",
        watched.len(),
        delivered,
        missing.len(),
        requests,
        notifications
    );
    violations.merge(stats.list_violations.clone());
    missing.sort_unstable();
    if !missing.is_empty() {
        violations.add(format!(
            "{} acknowledged writes never seen by their watcher, first revisions {:?}",
            missing.len(),
            &missing[..missing.len().min(VIOLATIONS_KEPT)]
        ));
    }
    if violations.count == 0 {
        println!("  Consistency:  ok");
    } else {
        println!("  Consistency:  {} violations", violations.count);
        for v in &violations.first {
            println!("    {v}");
        }
    }
    println!("  Errors:       {errors}");
    if let Some(e) = &stats.first_error {
        println!("    first: {e}");
    }
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    if violations.count > 0 {
        return Err(format!("{} consistency violations", violations.count));
    }
    Ok(())
}
