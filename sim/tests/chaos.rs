//! The chaos scenario (`metastore_sim::chaos`): a seed-driven nemesis over every fault class
//! while every kind of client works, then a liveness phase with a stated bound; the KV, watch,
//! lease and revision histories are checked. Each seed runs twice and must trace the same.
#![cfg(madsim)]

use madsim::runtime::Runtime;
use metastore_sim::trace::Trace;

/// Seeds the CI batch covers; override with `METASTORE_SIM_SEEDS=a,b,c`.
fn seeds() -> Vec<u64> {
    metastore_sim::trace::seeds(1..=40)
}

fn run(seed: u64) -> (u64, Vec<String>) {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async move {
        let trace = Trace::new();
        let outcome = metastore_sim::chaos::run(seed, trace.clone()).await;
        trace.record(format!("outcome {outcome:?}"));
        (trace.digest(), trace.lines())
    })
}

#[test]
fn chaos_histories_are_linearizable_and_complete() {
    for seed in seeds() {
        metastore_sim::trace::run_twice(seed, run);
    }
}
