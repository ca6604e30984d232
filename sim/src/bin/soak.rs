//! `soak`: run the chaos scenario on seed after seed for as long as asked, and report the rate.
//!
//! ```sh
//! RUSTFLAGS="--cfg madsim" cargo run --release --manifest-path sim/Cargo.toml --bin soak -- \
//!     --minutes 10 [--first-seed 1000]
//! ```
//!
//! Every minute (and at the end) it prints the seeds run, seeds per minute, and simulated seconds
//! per wall-clock second. The first failing seed stops it with the command that replays it.

#[cfg(madsim)]
fn main() {
    use std::time::{Duration, Instant};

    let mut minutes = 1.0_f64;
    let mut seed = 1_000_000_u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--minutes" => minutes = value().parse().unwrap_or_else(|_| usage("--minutes N")),
            "--first-seed" => seed = value().parse().unwrap_or_else(|_| usage("--first-seed N")),
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    let wall = Instant::now();
    let deadline = wall + Duration::from_secs_f64(minutes * 60.0);
    let mut report_at = wall + Duration::from_secs(60);
    let (mut seeds, mut simulated) = (0_u64, Duration::ZERO);
    let mut faults: std::collections::BTreeMap<String, u64> = Default::default();
    let report = |seeds: u64,
                  simulated: Duration,
                  faults: &std::collections::BTreeMap<String, u64>| {
        let secs = wall.elapsed().as_secs_f64();
        println!(
            "soak: {seeds} seeds in {secs:.0} s: {:.0} seeds/min, {:.0} simulated s per wall s; faults {faults:?}",
            seeds as f64 * 60.0 / secs,
            simulated.as_secs_f64() / secs
        );
    };
    while Instant::now() < deadline {
        let run = std::panic::catch_unwind(|| {
            let rt =
                madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
            rt.block_on(metastore_sim::chaos::run(
                seed,
                metastore_sim::trace::Trace::new(),
            ))
        });
        match run {
            Ok(outcome) => {
                seeds += 1;
                simulated += outcome.simulated;
                for (kind, n) in outcome.faults {
                    *faults.entry(kind).or_default() += n;
                }
            }
            Err(_) => {
                report(seeds, simulated, &faults);
                eprintln!(
                    "soak: seed {seed} failed; replay it with:\n  METASTORE_SIM_SEEDS={seed} \
                     METASTORE_SIM_PRINT_TRACE=1 RUSTFLAGS=\"--cfg madsim\" cargo test --release \
                     --manifest-path sim/Cargo.toml --test chaos"
                );
                std::process::exit(1);
            }
        }
        seed += 1;
        if Instant::now() >= report_at {
            report(seeds, simulated, &faults);
            report_at += Duration::from_secs(60);
        }
    }
    report(seeds, simulated, &faults);
}

#[cfg(madsim)]
fn usage(problem: &str) -> ! {
    eprintln!("soak: {problem}\nusage: soak [--minutes M] [--first-seed S]");
    std::process::exit(2)
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("soak runs the simulation: build it with RUSTFLAGS=\"--cfg madsim\"");
    std::process::exit(2)
}
