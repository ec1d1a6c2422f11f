//! `om <path> set|unset|get|config|start|stop|status`: service objects with `ip#N`
//! resources of type cni. Configuration and targets are events on the object's subject;
//! start and stop wait (bounded) for the node daemon's `instance.status` answer.

use crate::ctx::{default_node, print_json, Ctx, Failure};
use crate::Format;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use om_events::event::{Event, InstanceStatus, Up};
use om_events::log::EventLog;
use om_events::object;
use om_events::query::{Answer, Query};
use om_events::view::ObjectView;
use std::time::Duration;

/// om <path> <action>: a service object, e.g. testbackend/svc/s1.
#[derive(Parser, Debug)]
#[command(name = "om <path>", no_binary_name = true)]
struct ObjArgs {
    #[command(subcommand)]
    action: Action,
    /// Output format of read commands.
    #[arg(long, global = true, value_enum)]
    format: Option<Format>,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Set keywords: --kw ip#0.type=cni --kw ip#0.network=backend1 [--kw ip#0.netns=NS]
    /// [--kw ip#0.expose=80/tcp:8001]. Nothing is written if any is refused.
    Set {
        #[arg(long = "kw", required = true, value_name = "KEYWORD=VALUE")]
        kw: Vec<String>,
    },
    /// Unset keywords, or whole resources (--kw ip#0).
    Unset {
        #[arg(long = "kw", required = true, value_name = "KEYWORD")]
        kw: Vec<String>,
    },
    /// Print keyword values, one per line; exits 1 if one is unset.
    Get {
        #[arg(long = "kw", required = true, value_name = "KEYWORD")]
        kw: Vec<String>,
    },
    /// Print the object's configuration, ini style.
    Config,
    /// Start the object on a node: its network namespace, an address on every ip resource.
    Start {
        /// The node (default: $OM_NODE, else the host name).
        #[arg(long)]
        node: Option<String>,
        /// Seconds to wait for the node's answer (0: do not wait).
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Stop the object: addresses released, its own namespace removed.
    Stop {
        /// Seconds to wait for the node's answer (0: do not wait).
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// The object's state, target, and the address of every ip resource.
    Status,
}

pub async fn run(ctx: &Ctx, argv: Vec<String>) -> Result<(), Failure> {
    let (path, rest) = argv.split_first().expect("clap gives the subcommand name");
    let args = match ObjArgs::try_parse_from(rest) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let path = object::parse_path(path).map_err(Failure::input)?;
    let format = args.format.unwrap_or(ctx.format);
    let subject = ctx.subjects.object(&path);
    match args.action {
        Action::Set { kw } => {
            let out = ctx
                .write_event(&subject, |st| {
                    Ok(object::decide_set(st, &path, &kw)?.map(Event::ObjectChanged))
                })
                .await?;
            report(format, &path, &out);
            Ok(())
        }
        Action::Unset { kw } => {
            let out = ctx
                .write_event(&subject, |st| {
                    Ok(object::decide_unset(st, &path, &kw)?.map(Event::ObjectChanged))
                })
                .await?;
            report(format, &path, &out);
            Ok(())
        }
        Action::Get { kw } => {
            let obj = one(ctx, &path).await?;
            let mut missing = false;
            for k in kw {
                match obj.config.iter().find(|(x, _)| *x == k) {
                    Some((_, v)) => println!("{v}"),
                    None => {
                        eprintln!("om: {path}: {k} is not set");
                        missing = true;
                    }
                }
            }
            if missing {
                Err(Failure::runtime(format!(
                    "{path}: some keywords are not set"
                )))
            } else {
                Ok(())
            }
        }
        Action::Config => {
            let obj = one(ctx, &path).await?;
            if format == Format::Json {
                print_json(
                    &obj.config
                        .iter()
                        .cloned()
                        .collect::<std::collections::BTreeMap<_, _>>(),
                );
            } else {
                print!("{}", ini(&obj.config));
            }
            Ok(())
        }
        Action::Status => {
            let obj = one(ctx, &path).await?;
            if format == Format::Json {
                print_json(&obj);
            } else {
                print!("{}", render(&obj));
            }
            Ok(())
        }
        Action::Start { node, wait } => {
            let node = node.unwrap_or_else(default_node);
            let out = ctx
                .write_event(&subject, |st| {
                    Ok(object::decide_start(st, &path, &node)?.map(Event::ObjectTarget))
                })
                .await?;
            let Some(seq) = out.seq else {
                eprintln!("om: {path} is already up on {node}");
                return Ok(());
            };
            finish(ctx, &path, &[node], seq, wait, format, true).await
        }
        Action::Stop { wait } => {
            let before = one(ctx, &path).await.ok();
            let out = ctx
                .write_event(&subject, |st| {
                    Ok(object::decide_stop(st, &path)?.map(Event::ObjectTarget))
                })
                .await?;
            let Some(seq) = out.seq else {
                eprintln!("om: {path} is already stopped");
                return Ok(());
            };
            let mut nodes: Vec<String> = before
                .iter()
                .flat_map(|o| o.instances.iter())
                .filter(|i| i.state != "down")
                .map(|i| i.node.clone())
                .collect();
            if let Some(n) = before
                .as_ref()
                .and_then(|o| o.target.strip_prefix("started on "))
            {
                nodes.push(n.to_string());
            }
            nodes.sort();
            nodes.dedup();
            finish(ctx, &path, &nodes, seq, wait, format, false).await
        }
    }
}

/// What a write did: JSON on stdout with --format json, else its summary on stderr.
fn report(format: Format, path: &str, out: &om_events::log::EventOutcome) {
    let changes: Vec<serde_json::Value> = match &out.event {
        Some(Event::ObjectChanged(c)) => c
            .changes
            .iter()
            .map(|c| serde_json::json!({"key": c.key, "value": c.value}))
            .collect(),
        _ => Vec::new(),
    };
    if format == Format::Json {
        print_json(&serde_json::json!({"path": path, "seq": out.seq, "changes": changes}));
        return;
    }
    match (&out.event, out.seq) {
        (Some(ev), Some(_)) => {
            for line in ev.summary() {
                eprintln!("{line}");
            }
        }
        _ => eprintln!("om: {path}: nothing to change"),
    }
}

/// Waits for the nodes' answers to the target at `seq`, prints them.
async fn finish(
    ctx: &Ctx,
    path: &str,
    nodes: &[String],
    seq: u64,
    wait: u64,
    format: Format,
    start: bool,
) -> Result<(), Failure> {
    if wait == 0 || nodes.is_empty() {
        eprintln!("om: {path}: target recorded at sequence {seq}");
        return Ok(());
    }
    let statuses = wait_status(ctx, path, nodes, seq, Duration::from_secs(wait)).await?;
    if format == Format::Json {
        print_json(&statuses);
    }
    let mut failed = Vec::new();
    for s in &statuses {
        if format != Format::Json {
            let ips: Vec<String> = s
                .resources
                .iter()
                .filter_map(|r| r.ip.map(|ip| format!("{} {ip}", r.rid)))
                .collect();
            if ips.is_empty() {
                println!("{path} {} on {}", s.state.as_str(), s.node);
            } else {
                println!(
                    "{path} {} on {}: {}",
                    s.state.as_str(),
                    s.node,
                    ips.join(", ")
                );
            }
        }
        let want = if start { Up::Up } else { Up::Down };
        if s.state != want {
            for r in &s.resources {
                if let Some(e) = &r.error {
                    failed.push(format!(
                        "{path} {}{}: {e}",
                        if r.rid.is_empty() { "" } else { &r.rid },
                        if r.rid.is_empty() {
                            String::new()
                        } else {
                            format!(" on {}", s.node)
                        }
                    ));
                }
            }
            if failed.is_empty() {
                failed.push(format!("{path} is {} on {}", s.state.as_str(), s.node));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::runtime(failed.join("\n")))
    }
}

/// The `instance.status` answers of `nodes` to the target at `seq`.
async fn wait_status(
    ctx: &Ctx,
    path: &str,
    nodes: &[String],
    seq: u64,
    timeout: Duration,
) -> Result<Vec<InstanceStatus>, Failure> {
    let (_client, log) = ctx.connect.open_log("om").await?;
    let filter = format!("om.{}.ev.node.*", ctx.subjects.cluster);
    let mut sub = log
        .subscribe(&filter, seq + 1)
        .await
        .map_err(|e| Failure::runtime(e.to_string()))?;
    let mut got: Vec<InstanceStatus> = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < nodes.len() {
        let m = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(Failure::runtime(e.to_string())),
            Ok(None) => return Err(Failure::runtime("the stream subscription ended")),
            Err(_) => {
                let waiting: Vec<&String> = nodes
                    .iter()
                    .filter(|n| !got.iter().any(|s| &s.node == *n))
                    .collect();
                return Err(Failure::runtime(format!(
                    "{path}: no answer from {} within {} s (is om-node running there?); the target stays recorded at sequence {seq}",
                    waiting.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    timeout.as_secs()
                )));
            }
        };
        if let Ok(om_events::Decoded::Event(env)) = om_events::Envelope::decode(&m.payload) {
            if let Event::InstanceStatus(s) = env.event {
                if s.path == path
                    && s.target_seq >= seq
                    && nodes.contains(&s.node)
                    && !got.iter().any(|g| g.node == s.node)
                {
                    got.push(s);
                }
            }
        }
    }
    Ok(got)
}

async fn one(ctx: &Ctx, path: &str) -> Result<ObjectView, Failure> {
    match ctx
        .read(Query::Objects {
            path: Some(path.to_string()),
        })
        .await?
    {
        Answer::Objects { mut objects } if !objects.is_empty() => Ok(objects.remove(0)),
        Answer::Objects { .. } => Err(Failure::input(format!(
            "{path}: no such object (om {path} set --kw ip#0.type=cni --kw ip#0.network=<network> creates it)"
        ))),
        Answer::Error { message } => Err(Failure::input(message)),
        other => Err(Failure::runtime(format!("unexpected answer {other:?}"))),
    }
}

fn ini(config: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut section = "";
    for (k, v) in config {
        let (s, o) = k.split_once('.').unwrap_or(("", k));
        if s != section {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{s}]\n"));
            section = s;
        }
        out.push_str(&format!("{o} = {v}\n"));
    }
    out
}

/// Header line, then one row per resource of each instance (or of the configuration when
/// the object never ran): every cell padded and followed by two spaces.
pub fn render(o: &ObjectView) -> String {
    let mut out = format!(
        "{}  {}{}\n",
        o.path,
        o.state,
        if o.target.is_empty() {
            String::new()
        } else {
            format!("  ({})", o.target)
        }
    );
    let mut rows: Vec<Vec<String>> = vec![[
        "RID", "NODE", "STATE", "NETWORK", "IP", "NETNS", "EXPOSE", "ERROR",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()];
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    for i in &o.instances {
        for r in &i.resources {
            rows.push(vec![
                dash(&r.rid),
                i.node.clone(),
                r.state.as_str().to_string(),
                dash(&r.network),
                r.ip.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into()),
                dash(&r.netns),
                dash(&r.expose.join(" ")),
                dash(r.error.as_deref().unwrap_or("")),
            ]);
        }
    }
    if o.instances.is_empty() {
        let cfg: om_events::config::Layer = o.config.iter().cloned().collect();
        if let Ok(res) = object::resources(&cfg) {
            for r in res {
                rows.push(vec![
                    r.rid,
                    "-".into(),
                    "down".into(),
                    r.network,
                    "-".into(),
                    r.netns.unwrap_or_else(|| "-".into()),
                    dash(
                        &r.expose
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join(" "),
                    ),
                    "-".into(),
                ]);
            }
        }
    }
    out.push_str(&table(&rows));
    out
}

/// A table: every cell left-aligned, padded to its column, followed by two spaces.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, w) in widths.iter().enumerate() {
            let cell = r.get(c).map(String::as_str).unwrap_or("");
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.push('\n');
    }
    out
}
