//! The `metastore` binary.

use clap::Parser;
use metastore::cli::{Cli, Command};

// Many small, short-lived allocations per request (protobuf messages, log entries): mimalloc serves
// them with less CPU than the system allocator.
#[cfg(not(madsim))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_e` in mimalloc.h, v2 and v3 alike).
#[cfg(not(madsim))]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays resident before mimalloc hands it back to the kernel. mimalloc 3
/// waits 1 s (mimalloc 2 waited 10 ms, 100 ms for arena memory), so the buffers of a burst of
/// large requests stayed in the member's RSS after they were answered. Measured after a flood of
/// large read-only txns (`tests/abuse.rs`): release build, +44-58 MiB with mimalloc's delay
/// against +17-33 MiB purging at once, which cost ~7% more CPU per put (decommit and recommit on
/// every burst); opt-level 0 build, +22-46 MiB against +5-23 MiB with this delay. What this
/// delay costs against mimalloc's (`scripts/bench-vs-etcd.sh`, release build, one run, 3 rounds
/// alternating, `MIMALLOC_PURGE_DELAY=1000` on the other): CPU per request put 47.5/59.5/69.0 µs
/// against 45.5/58.8/59.0, txn 55.0/67.0/69.7 against 52.0/60.0/61.5, serializable range
/// 34.3/33.2/39.7 against 35.3/31.7/33.6: a few percent, up to 12% on txns.
#[cfg(not(madsim))]
const ALLOCATOR_PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Sets mimalloc's purge delay unless the operator set `MIMALLOC_PURGE_DELAY` (mimalloc read its
/// environment when the process loaded, so a default set now would never apply).
#[cfg(not(madsim))]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` stores one integer in mimalloc's option table; it is not
    // thread-safe, and this runs on the main thread before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ALLOCATOR_PURGE_DELAY_MS) }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},openraft=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() {
    #[cfg(not(madsim))]
    tune_allocator();
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if !matches!(cli.command, Some(Command::Bench(_))) {
        // The server; the load generator keeps tokio's default of one worker per core.
        builder.worker_threads(metastore::limits::server_worker_threads());
    }
    match builder.enable_all().build() {
        Ok(rt) => rt.block_on(run(cli)),
        Err(e) => {
            eprintln!("metastore: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) {
    let result = match cli.command {
        Some(Command::Bench(args)) => metastore::cli::bench::run(args).await,
        Some(Command::Snapshot(cmd)) => metastore::cli::snapshot::run(cmd),
        Some(Command::Serve(args)) => {
            init_logging(&args.log_level);
            metastore::cli::serve::run(*args).await
        }
        None => {
            init_logging(&cli.serve.log_level);
            metastore::cli::serve::run(cli.serve).await
        }
    };
    if let Err(e) = result {
        eprintln!("metastore: {e}");
        std::process::exit(1);
    }
}
