//! `om-node`: see the library documentation.

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use om_events::jetstream::ConnectArgs;
use om_node::daemon::{Daemon, Options, SetupOutcome};
use om_node::dataplane::RtnetlinkDataplane;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Programs this node's share of every backend network: bridges, routes, tunnels, CNI files.
#[derive(Parser, Debug)]
#[command(name = "om-node", version)]
struct Args {
    #[command(flatten)]
    connect: ConnectArgs,
    /// This node's name (as in cluster.nodes). Default: the host name.
    #[arg(long, env = "OM_NODE")]
    node: Option<String>,
    /// Where the daemon keeps its position, folded state and CNI manifest.
    #[arg(long, env = "OM_STATE_DIR", default_value = "/var/lib/om-node")]
    state_dir: PathBuf,
    /// Program the kernel objects of this named network namespace (/var/run/netns/NAME)
    /// instead of the daemon's own.
    #[arg(long, env = "OM_NETNS")]
    netns: Option<String>,
    /// Milliseconds between periodic reconciles.
    #[arg(long, env = "OM_PERIOD_MS", default_value_t = 5000)]
    period_ms: u64,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
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
    let node = args
        .node
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(hostname);
    anyhow::ensure!(
        om_events::keyword::valid_node_name(&node),
        "--node {node:?}: bad node name, expected letters, digits, '-', '_' or '.'"
    );
    let dp = match &args.netns {
        Some(ns) => RtnetlinkDataplane::in_netns(ns)
            .await
            .with_context(|| format!("open netlink in network namespace {ns}"))?,
        None => RtnetlinkDataplane::current()
            .await
            .context("open netlink")?,
    };
    let (client, log) = args.connect.open_log(&format!("om-node {node}")).await?;
    let subjects = log.subjects.clone();
    tracing::info!(node = %node, server = %args.connect.server, cluster = %args.connect.cluster, "om-node started");
    let (tx, rx) = mpsc::channel::<oneshot::Sender<SetupOutcome>>(8);
    // `om net setup` requests: reconcile now, answer with what changed.
    let mut reqs = client.subscribe(subjects.query_setup(&node)).await?;
    let c2 = client.clone();
    tokio::spawn(async move {
        while let Some(msg) = reqs.next().await {
            let Some(reply) = msg.reply else { continue };
            let (otx, orx) = oneshot::channel();
            if tx.send(otx).await.is_err() {
                break;
            }
            if let Ok(out) = orx.await {
                let _ = c2
                    .publish(reply, serde_json::to_vec(&out).expect("plain data").into())
                    .await;
            }
        }
    });
    let opts = Options {
        node,
        state_dir: args.state_dir,
        period: Duration::from_millis(args.period_ms.max(100)),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    Daemon::new(dp, log, subjects, opts)
        .run(rx, shutdown())
        .await
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
