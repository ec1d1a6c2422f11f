//! `om cluster set|unset|get|config` and `om node set|unset|get|config`.

use crate::ctx::{default_node, print_json, Ctx, Failure};
use crate::Format;
use clap::Subcommand;
use om_events::decide::{parse_set, parse_unset, Command};
use om_events::event::Origin;
use om_events::log::Outcome;
use om_events::query::{Answer, Query};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Set keywords: --kw K=V, --kw K+=V (add to a list), --kw K-=V (remove from a list).
    /// All the --kw of one command form one event; nothing is written if any is refused.
    Set {
        #[arg(long = "kw", required = true, value_name = "KEYWORD=VALUE")]
        kw: Vec<String>,
    },
    /// Unset keywords, or whole sections (--kw network#backend1).
    Unset {
        #[arg(long = "kw", required = true, value_name = "KEYWORD")]
        kw: Vec<String>,
    },
    /// Print keyword values, one per line; exits 1 if one is unset.
    Get {
        #[arg(long = "kw", required = true, value_name = "KEYWORD")]
        kw: Vec<String>,
    },
    /// Print the cluster configuration, ini style.
    Config {
        /// As of a stream sequence or an RFC 3339 time.
        #[arg(long)]
        at: Option<crate::history::At>,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Set keywords in a node's layer (a network declared here exists on that node only).
    Set {
        #[arg(long = "kw", required = true, value_name = "KEYWORD=VALUE")]
        kw: Vec<String>,
        /// The node (default: $OM_NODE, else the host name).
        #[arg(long)]
        node: Option<String>,
    },
    /// Unset keywords or sections of a node's layer.
    Unset {
        #[arg(long = "kw", required = true, value_name = "KEYWORD")]
        kw: Vec<String>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print the values a node sees (its layer over the cluster's; K@node before K).
    Get {
        #[arg(long = "kw", required = true, value_name = "KEYWORD")]
        kw: Vec<String>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Print a node's own layer, ini style.
    Config {
        #[arg(long)]
        node: Option<String>,
    },
}

pub async fn cluster(ctx: &Ctx, cmd: ClusterCmd) -> Result<(), Failure> {
    match cmd {
        ClusterCmd::Set { kw } => set(ctx, None, &kw).await,
        ClusterCmd::Unset { kw } => unset(ctx, None, &kw).await,
        ClusterCmd::Get { kw } => get(ctx, None, &kw).await,
        ClusterCmd::Config { at } => config(ctx, None, at).await,
    }
}

pub async fn node(ctx: &Ctx, cmd: NodeCmd) -> Result<(), Failure> {
    let pick = |n: Option<String>| Some(n.unwrap_or_else(default_node));
    match cmd {
        NodeCmd::Set { kw, node } => set(ctx, pick(node), &kw).await,
        NodeCmd::Unset { kw, node } => unset(ctx, pick(node), &kw).await,
        NodeCmd::Get { kw, node } => get(ctx, pick(node), &kw).await,
        NodeCmd::Config { node } => config(ctx, pick(node), None).await,
    }
}

async fn set(ctx: &Ctx, node: Option<String>, kw: &[String]) -> Result<(), Failure> {
    check_node(node.as_deref())?;
    let ops = parse_set(kw).map_err(|e| Failure::input(e.to_string()))?;
    let out = ctx.write(&Command::Set { node, ops }).await?;
    report(ctx, &out);
    Ok(())
}

async fn unset(ctx: &Ctx, node: Option<String>, kw: &[String]) -> Result<(), Failure> {
    check_node(node.as_deref())?;
    let targets = parse_unset(kw).map_err(|e| Failure::input(e.to_string()))?;
    let out = ctx.write(&Command::Unset { node, targets }).await?;
    report(ctx, &out);
    Ok(())
}

fn check_node(node: Option<&str>) -> Result<(), Failure> {
    match node {
        Some(n) if !om_events::keyword::valid_node_name(n) => Err(Failure::input(format!(
            "--node {n:?}: bad node name, expected letters, digits, '-', '_' or '.'"
        ))),
        _ => Ok(()),
    }
}

/// What a write did: JSON on stdout with --format json, else one line per change on stderr.
fn report(ctx: &Ctx, out: &Outcome) {
    if ctx.format == Format::Json {
        let changes: Vec<serde_json::Value> = out
            .changes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "node": c.node, "key": c.key, "value": c.value,
                    "origin": if c.origin == Origin::Derived { "derived" } else { "operator" },
                })
            })
            .collect();
        print_json(
            &serde_json::json!({"seq": out.seq, "id": out.id.to_string(), "changes": changes}),
        );
        return;
    }
    match out.seq {
        None => eprintln!("om: nothing to change"),
        Some(seq) => {
            let ev = om_events::Event::ConfigChanged(om_events::event::ConfigChanged {
                changes: out.changes.clone(),
            });
            for line in ev.summary() {
                eprintln!("{line}");
            }
            tracing::info!(seq, "event stored");
        }
    }
}

async fn get(ctx: &Ctx, node: Option<String>, kw: &[String]) -> Result<(), Failure> {
    for k in kw {
        om_events::keyword::Key::parse(k).map_err(|e| Failure::input(e.to_string()))?;
    }
    let mut values = Vec::new();
    for k in kw {
        let answer = ctx
            .read(Query::Get {
                node: node.clone(),
                key: k.clone(),
            })
            .await?;
        match answer {
            Answer::Value { value } => values.push((k.clone(), value)),
            Answer::Error { message } => return Err(Failure::input(message)),
            other => return Err(Failure::runtime(format!("unexpected answer {other:?}"))),
        }
    }
    if ctx.format == Format::Json {
        let map: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
            .collect();
        print_json(&map);
    } else {
        for (_, v) in values.iter() {
            if let Some(v) = v {
                println!("{v}");
            }
        }
    }
    let missing: Vec<&str> = values
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    if !missing.is_empty() {
        let scope = node.map(|n| format!(" for node {n}")).unwrap_or_default();
        return Err(Failure::runtime(format!(
            "{} is not set{scope}",
            missing.join(", ")
        )));
    }
    Ok(())
}

async fn config(
    ctx: &Ctx,
    node: Option<String>,
    at: Option<crate::history::At>,
) -> Result<(), Failure> {
    match ctx.read_at(Query::Config { node }, at).await? {
        Answer::Config { text } => {
            if ctx.format == Format::Json {
                print_json(&ini_to_json(&text));
            } else {
                print!("{text}");
            }
            Ok(())
        }
        other => Err(Failure::runtime(format!("unexpected answer {other:?}"))),
    }
}

/// `{section: {option: value}}` from the ini text.
fn ini_to_json(text: &str) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = s.to_string();
            out.insert(current.clone(), serde_json::json!({}));
        } else if let Some((k, v)) = line.split_once(" = ") {
            if let Some(serde_json::Value::Object(m)) = out.get_mut(&current) {
                m.insert(k.to_string(), serde_json::json!(v));
            }
        }
    }
    serde_json::Value::Object(out)
}
