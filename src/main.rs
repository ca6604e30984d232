//! The `metastore` binary.

use metastore::cli::env::EnvReport;
use metastore::cli::{Cli, Command};

// mimalloc in a real build (the runtime seam says why and tunes it).
#[global_allocator]
static GLOBAL: metastore::rt::allocator::Allocator = metastore::rt::allocator::ALLOCATOR;

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},openraft=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() {
    metastore::rt::allocator::tune_allocator();
    let (cli, env) = metastore::cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if !matches!(cli.command, Some(Command::Bench(_))) {
        // The server; the load generator keeps tokio's default of one worker per core.
        builder.worker_threads(metastore::limits::server_worker_threads());
    }
    match builder.enable_all().build() {
        Ok(rt) => rt.block_on(run(cli, env)),
        Err(e) => {
            eprintln!("metastore: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// What etcd's variables set, logged as etcd logs it; a variable that cannot be used stops the
/// member before it starts.
fn log_env(env: Result<EnvReport, String>) -> Result<(), String> {
    let env = env?;
    for (variable, value) in env.used {
        tracing::info!(%variable, %value, "recognized and used environment variable");
    }
    for variable in env.unrecognized {
        tracing::warn!(%variable, "unrecognized environment variable");
    }
    Ok(())
}

async fn run(cli: Cli, env: Result<EnvReport, String>) {
    let result = match cli.command {
        Some(Command::Bench(args)) => metastore::cli::bench::run(args).await,
        Some(Command::Snapshot(cmd)) => metastore::cli::snapshot::run(cmd),
        Some(Command::Serve(args)) => {
            init_logging(&args.log_level);
            match log_env(env) {
                Ok(()) => metastore::cli::serve::run(*args).await,
                Err(e) => Err(e),
            }
        }
        None => {
            init_logging(&cli.serve.log_level);
            match log_env(env) {
                Ok(()) => metastore::cli::serve::run(cli.serve).await,
                Err(e) => Err(e),
            }
        }
    };
    if let Err(e) = result {
        eprintln!("metastore: {e}");
        std::process::exit(1);
    }
}
