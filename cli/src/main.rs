//! `om`: the operator's command line for cluster backend networks.
//!
//! Layout: [`ctx`] (connection, identity, reads through the projector, writes through the
//! event log), [`config_cmd`] (`om cluster …` and `om node …`), [`net`] (`om network …`),
//! [`render`] (the ASCII tree tables of `om net status`), [`history`] (`om net history`,
//! `--at`: the stream read and folded here).

mod config_cmd;
mod ctx;
mod history;
mod net;
mod object;
mod render;

use clap::{Parser, Subcommand, ValueEnum};
use om_events::jetstream::ConnectArgs;

/// Declare cluster backend networks and see who uses what.
///
/// Every change is an event on the cluster's NATS JetStream stream; reads are answered by
/// om-projector (or, when none answers, by folding the stream locally).
#[derive(Parser, Debug)]
#[command(name = "om", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Output format of read commands.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Cluster-wide configuration (networks, cluster.nodes, cni).
    Cluster {
        #[command(subcommand)]
        cmd: config_cmd::ClusterCmd,
    },
    /// Node-scoped configuration: a network declared here exists on that node only.
    Node {
        #[command(subcommand)]
        cmd: config_cmd::NodeCmd,
    },
    /// Backend networks: list, status.
    #[command(visible_alias = "net")]
    Network {
        #[command(subcommand)]
        cmd: net::NetCmd,
    },
    /// `om <path> set|unset|get|config|start|stop|status`: a service object such as
    /// testbackend/svc/s1 (`om <path> --help` lists the actions).
    #[command(external_subcommand)]
    Object(Vec<String>),
}

fn main() -> std::process::ExitCode {
    // Like any Unix filter: a closed pipe (`om net history | head`) ends the process quietly
    // instead of a panic on the next println.
    // SAFETY: setting a signal disposition to its default before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            for line in e.message.lines() {
                eprintln!("om: {line}");
            }
            std::process::ExitCode::from(e.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), ctx::Failure> {
    let ctx = ctx::Ctx::new(cli.connect, cli.format)?;
    match cli.cmd {
        Cmd::Cluster { cmd } => config_cmd::cluster(&ctx, cmd).await,
        Cmd::Node { cmd } => config_cmd::node(&ctx, cmd).await,
        Cmd::Network { cmd } => net::run(&ctx, cmd).await,
        Cmd::Object(argv) => object::run(&ctx, argv).await,
    }
}
