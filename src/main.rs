//! The `metastore` binary.

use clap::Parser;

// Many small, short-lived allocations per request (protobuf messages, log entries): mimalloc serves
// them with less CPU than the system allocator.
#[cfg(not(madsim))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use metastore::cli::{Cli, Command};

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},openraft=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() {
    let workers = metastore::limits::server_worker_threads();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("metastore: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn run() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Bench(args)) => metastore::cli::bench::run(args).await,
        Some(Command::Serve(args)) => {
            init_logging(&args.log_level);
            metastore::cli::serve::run(args).await
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
