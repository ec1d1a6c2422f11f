//! `om network|net ls|status`.

use crate::ctx::{print_json, Ctx, Failure};
use crate::history::At;
use crate::render::{forest, Node};
use crate::Format;
use clap::Subcommand;
use om_events::query::{Answer, Query};
use om_events::view::NetworkStatus;

#[derive(Subcommand, Debug)]
pub enum NetCmd {
    /// List network names, one per line (node-scoped ones as NAME@NODE).
    #[command(visible_alias = "list")]
    Ls {
        /// The view of one node (its node-scoped networks included, by plain name).
        #[arg(long)]
        node: Option<String>,
        /// As of a stream sequence or an RFC 3339 time.
        #[arg(long)]
        at: Option<At>,
    },
    /// Networks with their size, used and free addresses.
    Status {
        /// Also list each node's segment, gateway and applied sequence, and every address in use.
        #[arg(long, short)]
        verbose: bool,
        /// Only this network.
        #[arg(long)]
        name: Option<String>,
        /// The view of one node.
        #[arg(long)]
        node: Option<String>,
        /// As of a stream sequence or an RFC 3339 time.
        #[arg(long)]
        at: Option<At>,
    },
    /// Events in order: sequence, time, actor, and what happened.
    History {
        /// Only events about this network.
        #[arg(long)]
        name: Option<String>,
        /// Only events about this node.
        #[arg(long)]
        node: Option<String>,
        /// From this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Up to this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
    },
    /// Addresses in use.
    Ip {
        #[command(subcommand)]
        cmd: IpCmd,
    },
    /// Ask a node daemon to reconcile now; prints what it changed.
    #[command(visible_alias = "set")]
    Setup {
        /// The node (default: $OM_NODE, else the host name).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum IpCmd {
    /// Every lease: object, node, resource, address, network and its type.
    #[command(visible_alias = "list")]
    Ls {
        /// Only this network.
        #[arg(long)]
        name: Option<String>,
        /// As of a stream sequence or an RFC 3339 time.
        #[arg(long)]
        at: Option<At>,
    },
}

/// What a node daemon answers to a setup request.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct SetupOutcome {
    node: String,
    seq: u64,
    changes: Vec<String>,
    errors: Vec<String>,
}

pub async fn run(ctx: &Ctx, cmd: NetCmd) -> Result<(), Failure> {
    match cmd {
        NetCmd::Ls { node, at } => {
            let nets = status(ctx, node, None, at).await?;
            if ctx.format == Format::Json {
                print_json(&nets.iter().map(|n| &n.name).collect::<Vec<_>>());
            } else {
                for n in &nets {
                    println!("{}", n.name);
                }
            }
            Ok(())
        }
        NetCmd::Status {
            verbose,
            name,
            node,
            at,
        } => {
            let nets = status(ctx, node, name.clone(), at).await?;
            if let (Some(n), true) = (&name, nets.is_empty()) {
                return Err(Failure::input(format!("network {n} does not exist")));
            }
            if ctx.format == Format::Json {
                print_json(&nets);
            } else {
                print!("{}", render_status(&nets, verbose));
            }
            Ok(())
        }
        NetCmd::History {
            name,
            node,
            since,
            until,
        } => crate::history::history(ctx, name, node, since, until).await,
        NetCmd::Ip {
            cmd: IpCmd::Ls { name, at },
        } => {
            let ips = match ctx.read_at(Query::Ips { name }, at).await? {
                Answer::Ips { ips } => ips,
                Answer::Error { message } => return Err(Failure::input(message)),
                other => return Err(Failure::runtime(format!("unexpected answer {other:?}"))),
            };
            if ctx.format == Format::Json {
                print_json(&ips);
            } else {
                let mut rows = vec![["OBJECT", "NODE", "RID", "IP", "NET_NAME", "NET_TYPE"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()];
                let dash = |s: &str| {
                    if s.is_empty() {
                        "-".to_string()
                    } else {
                        s.to_string()
                    }
                };
                for ip in &ips {
                    rows.push(vec![
                        dash(&ip.path),
                        ip.node.clone(),
                        dash(&ip.rid),
                        ip.ip.clone(),
                        ip.network.clone(),
                        ip.net_type.clone(),
                    ]);
                }
                print!("{}", crate::object::table(&rows));
            }
            Ok(())
        }
        NetCmd::Setup { node } => setup(ctx, node.unwrap_or_else(crate::ctx::default_node)).await,
    }
}

async fn setup(ctx: &Ctx, node: String) -> Result<(), Failure> {
    let client = ctx.connect.connect("om").await?;
    let subject = ctx.subjects.query_setup(&node);
    let msg = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(subject.clone(), Vec::new().into()))
        .await
        .map_err(|_| Failure::runtime(format!("node {node} did not answer on {subject} within 30s")))?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => Failure::runtime(format!("no om-node daemon of node {node} listens on {subject}: is it running with --node {node}?")),
            _ => Failure::runtime(format!("setup request to {node}: {e}")),
        })?;
    let out: SetupOutcome = serde_json::from_slice(&msg.payload)
        .map_err(|e| Failure::runtime(format!("bad answer from {node}: {e}")))?;
    if ctx.format == Format::Json {
        print_json(&out);
    } else {
        for c in &out.changes {
            println!("{c}");
        }
        if out.changes.is_empty() {
            eprintln!("om: node {node} is up to date with sequence {}", out.seq);
        }
    }
    if out.errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(out.errors.join("\n")))
    }
}

async fn status(
    ctx: &Ctx,
    node: Option<String>,
    name: Option<String>,
    at: Option<At>,
) -> Result<Vec<NetworkStatus>, Failure> {
    match ctx.read_at(Query::Status { node, name }, at).await? {
        Answer::Status { networks } => Ok(networks),
        Answer::Error { message } => Err(Failure::input(message)),
        other => Err(Failure::runtime(format!("unexpected answer {other:?}"))),
    }
}

/// The seed's table: `name type network size used free pct`, one row per network; verbose
/// adds per-node rows (segment, gateway, applied sequence, errors) and per-address rows.
pub fn render_status(nets: &[NetworkStatus], verbose: bool) -> String {
    let mut root = Node::new(["name", "type", "network", "size", "used", "free", "pct"]);
    for n in nets {
        let mut row = Node::new([
            n.name.clone(),
            n.ntype.clone(),
            n.network.clone(),
            n.size.to_string(),
            n.used.to_string(),
            n.free.to_string(),
            format!("{:.2}%", n.pct),
        ]);
        if verbose {
            if !n.nodes.is_empty() && n.ntype != "loopback" {
                let mut head = Node::new(["node", "segment", "gateway", "applied", "errors"]);
                for r in &n.nodes {
                    head.children.push(Node::new([
                        r.node.clone(),
                        r.segment.clone().unwrap_or_else(|| "-".into()),
                        r.gateway.clone().unwrap_or_else(|| "-".into()),
                        r.applied_seq
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "-".into()),
                        if r.errors.is_empty() {
                            "-".into()
                        } else {
                            r.errors.join("; ")
                        },
                    ]));
                }
                row.children.push(head);
            }
            if !n.ips.is_empty() {
                let mut head = Node::new(["ip", "node", "service", "resource"]);
                for ip in &n.ips {
                    head.children.push(Node::new([
                        ip.ip.clone(),
                        ip.node.clone(),
                        ip.path.clone(),
                        ip.rid.clone(),
                    ]));
                }
                row.children.push(head);
            }
        }
        root.children.push(row);
    }
    forest(&root)
}
