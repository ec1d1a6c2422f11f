//! `om net history` and the `--at` point of read commands: the stream read and folded here.

use crate::ctx::{print_json, Ctx, Failure};
use crate::Format;
use om_events::envelope::{Decoded, Envelope};
use om_events::event::Event;
use om_events::jetstream::JetStreamLog;
use om_events::log::{fold_stored, EventLog, Stored};
use om_events::timefmt::{format_ms, parse_rfc3339};
use om_events::State;

/// A point in history: a stream sequence or a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Seq(u64),
    TimeMs(u64),
}

impl std::str::FromStr for At {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<u64>() {
            return Ok(At::Seq(n));
        }
        parse_rfc3339(s).map(At::TimeMs).ok_or_else(|| {
            format!(
                "{s:?}: expected a stream sequence (42) or an RFC 3339 time (2026-12-03T16:28:43Z)"
            )
        })
    }
}

/// Every stored message of the cluster, in order (empty when the stream does not exist).
pub async fn read_all(ctx: &Ctx) -> Result<Vec<Stored>, Failure> {
    let client = ctx.connect.connect("om").await?;
    let js = async_nats::jetstream::new(client.clone());
    if let Err(e) = js.get_stream(ctx.subjects.stream()).await {
        ctx.no_stream(e)?;
        return Ok(Vec::new());
    }
    let log = JetStreamLog::open(client, ctx.subjects.clone(), ctx.connect.replicas)
        .await
        .map_err(|e| Failure::runtime(e.to_string()))?;
    log.read(&ctx.subjects.events(), 1)
        .await
        .map_err(|e| Failure::runtime(e.to_string()))
}

/// The state as of `at`: every event with a sequence (or time) up to it, folded.
pub async fn state_at(ctx: &Ctx, at: At) -> Result<State, Failure> {
    let mut state = State::default();
    let all = read_all(ctx).await?;
    let last = all.last().map(|m| m.seq).unwrap_or(0);
    if let At::Seq(n) = at {
        if n > last {
            return Err(Failure::input(format!(
                "--at {n}: the stream ends at sequence {last}"
            )));
        }
    }
    for m in all {
        let keep = match at {
            At::Seq(n) => m.seq <= n,
            At::TimeMs(t) => match Envelope::decode(&m.payload) {
                Ok(Decoded::Event(e)) => e.time_ms <= t,
                _ => true,
            },
        };
        if !keep {
            break;
        }
        fold_stored(&mut state, &m);
    }
    Ok(state)
}

#[derive(serde::Serialize)]
struct Entry {
    seq: u64,
    time: String,
    actor: String,
    kind: String,
    summary: Vec<String>,
}

/// Does the event concern network `name`?
fn about_network(e: &Event, name: &str) -> bool {
    let prefix = format!("network#{name}.");
    match e {
        Event::ConfigChanged(c) => c.changes.iter().any(|ch| ch.key.starts_with(&prefix)),
        Event::IpAllocated(a) => a.network == name,
        Event::IpReleased(r) => r.network == name,
        Event::NodeApplied(a) => a.networks.iter().any(|n| n.name == name),
        Event::ObjectChanged(o) => o
            .changes
            .iter()
            .any(|ch| ch.key.ends_with(".network") && ch.value.as_deref() == Some(name)),
        Event::InstanceStatus(i) => i.resources.iter().any(|r| r.network == name),
        Event::NodeAnnounced(_) | Event::ObjectTarget(_) => false,
    }
}

/// Does the event concern node `node`?
fn about_node(env: &Envelope, node: &str) -> bool {
    let scoped = format!("@{node}");
    env.actor == node
        || match &env.event {
            Event::ConfigChanged(c) => c
                .changes
                .iter()
                .any(|ch| ch.node.as_deref() == Some(node) || ch.key.ends_with(&scoped)),
            Event::NodeAnnounced(a) => a.node == node,
            Event::NodeApplied(a) => a.node == node,
            Event::IpAllocated(a) => a.node == node,
            Event::IpReleased(r) => r.node == node,
            Event::InstanceStatus(i) => i.node == node,
            Event::ObjectTarget(t) => {
                matches!(&t.target, om_events::event::Target::Started { node: n } if n == node)
            }
            Event::ObjectChanged(_) => false,
        }
}

pub async fn history(
    ctx: &Ctx,
    name: Option<String>,
    node: Option<String>,
    since: Option<String>,
    until: Option<String>,
) -> Result<(), Failure> {
    let time = |s: &Option<String>, flag: &str| -> Result<Option<u64>, Failure> {
        s.as_deref()
            .map(|v| {
                parse_rfc3339(v).ok_or_else(|| {
                    Failure::input(format!(
                        "--{flag} {v:?}: expected an RFC 3339 time such as 2026-12-03T16:28:43Z"
                    ))
                })
            })
            .transpose()
    };
    let (since, until) = (time(&since, "since")?, time(&until, "until")?);
    let mut out = Vec::new();
    for m in read_all(ctx).await? {
        let env = match Envelope::decode(&m.payload) {
            Ok(Decoded::Event(e)) => e,
            Ok(Decoded::Skipped(why)) => {
                eprintln!("om: seq {}: {why}", m.seq);
                continue;
            }
            Err(e) => {
                eprintln!("om: seq {}: {e}, skipped", m.seq);
                continue;
            }
        };
        if since.is_some_and(|t| env.time_ms < t) || until.is_some_and(|t| env.time_ms > t) {
            continue;
        }
        if name
            .as_deref()
            .is_some_and(|n| !about_network(&env.event, n))
            || node.as_deref().is_some_and(|n| !about_node(&env, n))
        {
            continue;
        }
        out.push(Entry {
            seq: m.seq,
            time: format_ms(env.time_ms),
            actor: env.actor.clone(),
            kind: env.event.kind().to_string(),
            summary: env.event.summary(),
        });
    }
    if ctx.format == Format::Json {
        print_json(&out);
        return Ok(());
    }
    for e in &out {
        for (i, line) in e.summary.iter().enumerate() {
            if i == 0 {
                println!("{:<6} {}  {:<20} {line}", e.seq, e.time, e.actor);
            } else {
                println!("{:<6} {}  {:<20} {line}", "", " ".repeat(e.time.len()), "");
            }
        }
    }
    Ok(())
}
