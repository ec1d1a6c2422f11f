//! Convergence of real daemons on the namespace bed: three `om-node` processes (h1, h2 on
//! 192.0.2.0/24, h3 on 198.51.100.0/24, vxlan between the subnets), `nats-server` and
//! `om-projector` in the router namespace, the seed's `backend1`. Each round runs
//! `om cluster set --kw network#backend1.tunnel=always` (then `auto`, alternating): every
//! daemon folds it, re-plumbs its kernel (vxlan links created or deleted, routes replaced)
//! and reports the sequence it applied on the stream.
//!
//! Per round, measured:
//! - set → all applied: from just before `om` is spawned until the last of the three
//!   reports for that sequence arrives at a subscriber in the router namespace (the
//!   subscription pushes; no polling interval);
//! - `om cluster set` alone (process start, connect, state from the projector, append);
//! - om event → last report: the `om` event's envelope time (taken just before its append)
//!   to the last report's envelope time (same machine clock, millisecond resolution): the
//!   append, the daemons' fold, kernel changes and report.
//!
//! 2 warm-up rounds, then 30 measured. Needs root (network namespaces) and the built
//! binaries: `cargo build --release -p om-node -p om-cli -p om-projector`, then
//! `cargo bench -p om-tests --bench converge`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use om_events::log::EventLog;
use om_events::{Decoded, Envelope, Event};
use om_tests::netns::{reap_stale, TestBed};
use om_tests::nodebed::{in_netns, skip_reason, Bins, NodeBed, Options};

const WARM_UP: usize = 2;
const ROUNDS: usize = 30;
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// Bound of one round.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    if let Some(reason) = skip_reason() {
        om_tests::skip::skip("bench converge", &reason);
        return Ok(());
    }
    reap_stale();
    let bins = Bins::find().map_err(anyhow::Error::msg)?;
    let bed = TestBed::three_hosts()?;
    in_netns(&bed.router, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(&bed, bins))
    })
}

/// One stored event as the subscriber saw it.
struct Seen {
    at: Instant,
    seq: u64,
    env: Envelope,
}

struct Round {
    value: &'static str,
    total: Duration,
    cli: Duration,
    stored_to_report_ms: u64,
}

async fn run(bed: &TestBed, bins: Bins) -> Result<()> {
    let mut nb = NodeBed::start(bed, bins, Options::three_nodes()).await?;
    for n in NODES {
        let dir = nb.node(n).cni_dir.display().to_string();
        nb.node_set(n, &[&format!("cni.config={dir}")]).await?;
    }
    nb.set(&["cluster.nodes=n1 n2 n3"]).await?;
    let seq = nb
        .set(&[
            "network#backend1.type=routed_bridge",
            "network#backend1.network=10.11.0.0/16",
            "network#backend1.ips_per_node=1024",
            "network#backend1.tunnel_mode=vxlan",
        ])
        .await?;
    nb.wait_applied(&NODES, seq, ROUND_TIMEOUT).await?;

    // Everything stored from now on, pushed to this task with its arrival time.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    let mut sub = nb.log.subscribe(&nb.subjects.events(), seq + 1).await?;
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = sub.next().await {
            let at = Instant::now();
            if let Ok(Decoded::Event(env)) = Envelope::decode(&m.payload) {
                if tx
                    .send(Seen {
                        at,
                        seq: m.seq,
                        env,
                    })
                    .is_err()
                {
                    break;
                }
            }
        }
    });

    let mut rounds = Vec::new();
    for i in 0..WARM_UP + ROUNDS {
        let value = if i % 2 == 0 { "always" } else { "auto" };
        let kw = format!("network#backend1.tunnel={value}");
        let t0 = Instant::now();
        let seq = nb.set(&[&kw]).await?;
        let cli = t0.elapsed();
        let mut stored_ms = None;
        let mut applied: BTreeMap<String, (Instant, u64)> = BTreeMap::new();
        while applied.len() < NODES.len() || stored_ms.is_none() {
            let left = ROUND_TIMEOUT.saturating_sub(t0.elapsed());
            let Ok(Some(s)) = tokio::time::timeout(left, rx.recv()).await else {
                nb.check_alive()?;
                bail!("round {i} ({kw}, sequence {seq}): only {applied:?} applied within {ROUND_TIMEOUT:?}");
            };
            match &s.env.event {
                Event::ConfigChanged(_) if s.seq == seq => stored_ms = Some(s.env.time_ms),
                Event::NodeApplied(a) if a.seq >= seq => {
                    let errors: Vec<&String> = a
                        .errors
                        .iter()
                        .chain(a.networks.iter().flat_map(|n| &n.errors))
                        .collect();
                    if !errors.is_empty() {
                        bail!("round {i}: {} reports {errors:?}", a.node);
                    }
                    applied
                        .entry(a.node.clone())
                        .or_insert((s.at, s.env.time_ms));
                }
                _ => {}
            }
        }
        let last = applied
            .values()
            .map(|(at, _)| *at)
            .max()
            .expect("three reports");
        let last_ms = applied
            .values()
            .map(|(_, ms)| *ms)
            .max()
            .expect("three reports");
        let stored_ms = stored_ms.context("the set's own event")?;
        if i >= WARM_UP {
            rounds.push(Round {
                value,
                total: last.duration_since(t0),
                cli,
                stored_to_report_ms: last_ms.saturating_sub(stored_ms),
            });
        }
    }
    reader.abort();
    nb.check_alive()?;

    println!(
        "converge: {ROUNDS} rounds (after {WARM_UP} warm-up) of `om cluster set --kw network#backend1.tunnel=always|auto`, \
         3 om-node processes on the namespace bed (vxlan), period {:?}",
        nb.period
    );
    report(
        "set -> all 3 applied (wall)",
        rounds.iter().map(|r| r.total).collect(),
    );
    for v in ["always", "auto"] {
        report(
            &format!("  of which tunnel={v} rounds"),
            rounds
                .iter()
                .filter(|r| r.value == v)
                .map(|r| r.total)
                .collect(),
        );
    }
    report(
        "om cluster set (process)",
        rounds.iter().map(|r| r.cli).collect(),
    );
    report(
        "om event -> last report (envelope ms)",
        rounds
            .iter()
            .map(|r| Duration::from_millis(r.stored_to_report_ms))
            .collect(),
    );
    Ok(())
}

/// Nearest-rank percentiles (with 30 samples, p99 is the maximum).
fn report(what: &str, mut v: Vec<Duration>) {
    v.sort();
    let pct = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {what:<38} p50 {:>7.1} ms   p99 {:>7.1} ms   max {:>7.1} ms   min {:>7.1} ms",
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*v.last().unwrap()),
        ms(v[0]),
    );
}
