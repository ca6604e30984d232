//! The `metastore` binary.

use clap::Parser;
use metastore::cli::{Cli, Command};

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},openraft=warn")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[tokio::main]
async fn main() {
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
