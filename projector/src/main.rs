//! `om-projector`: see the library documentation.

use anyhow::Result;
use clap::Parser;
use om_events::jetstream::ConnectArgs;
use std::time::Duration;

/// Folds a cluster's event stream into the views that `om` queries, and serves them.
#[derive(Parser, Debug)]
#[command(name = "om-projector", version)]
struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Ignore the snapshot and the consumer position: rebuild every view from the first event.
    #[arg(long)]
    rebuild: bool,
    /// Milliseconds between snapshots of the folded state (when it changed).
    #[arg(long, env = "OM_SNAPSHOT_INTERVAL_MS", default_value_t = 1000)]
    snapshot_interval_ms: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (client, log) = args.connect.open_log("om-projector").await?;
    tracing::info!(server = %args.connect.server, cluster = %args.connect.cluster, "om-projector started");
    let opts = om_projector::Options {
        rebuild: args.rebuild,
        snapshot_interval: Duration::from_millis(args.snapshot_interval_ms.max(10)),
        ..Default::default()
    };
    om_projector::run(client, log, opts, shutdown()).await
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
