//! Cold start of the projector on a stream of 1,000,000 events, with and without a snapshot.
//!
//! The history of the fold bench (`events/benches/history`, 50 nodes, five networks,
//! reports, announcements, allocations and releases) is published to a spawned
//! `nats-server` (stream `OM_bench`, file storage, R1; publishes pipelined, 4,096 acks in
//! flight). Then the real `om-projector` is started:
//!
//! - without a snapshot: `--rebuild` (ignores snapshot and consumer position), so it folds
//!   every event from the first;
//! - with a snapshot: the previous run's final snapshot (written at SIGTERM), so it loads it
//!   and folds only the tail (none here).
//!
//! Each start is timed from the spawn of the process until it answers a status query
//! (`om.bench.q.view`) that includes the last sequence (`min_seq` = last, not stale); the
//! query is retried every 5 ms while nobody answers. The answer is checked against the
//! generator's own fold (leases in use per network).
//!
//! Target: ≤ 1 s with a snapshot. Needs the binaries: `cargo build --release --workspace`,
//! then `cargo bench -p om-tests --bench coldstart` (`OM_BENCH_EVENTS=n` for another size).

#[path = "../../events/benches/history/mod.rs"]
mod history;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use async_nats::jetstream;
use om_events::jetstream::JetStreamLog;
use om_events::query::{self, Answer, Query, Reply, Request};
use om_events::subjects::Subjects;
use om_events::State;
use om_tests::bins;
use om_tests::nats::NatsServer;

const RUNS_WITHOUT: usize = 2;
const RUNS_WITH: usize = 5;
const IN_FLIGHT: usize = 4096;

fn main() -> Result<()> {
    if let Some(why) = bins::missing() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

/// Leases in use per network, as `om net status` counts them.
fn used(networks: &[om_events::view::NetworkStatus]) -> BTreeMap<String, u128> {
    networks
        .iter()
        .filter(|n| n.used > 0)
        .map(|n| (n.name.clone(), n.used))
        .collect()
}

/// Spawns the projector and times it until it answers with the whole stream folded.
async fn cold_start(
    nats: &NatsServer,
    client: &async_nats::Client,
    subjects: &Subjects,
    last: u64,
    extra: &[&str],
    log: std::path::PathBuf,
) -> Result<(Duration, bins::Proc, Vec<om_events::view::NetworkStatus>)> {
    let req = query::encode(&Request {
        min_seq: last,
        query: Query::Status {
            node: None,
            name: None,
        },
    });
    let t = Instant::now();
    let proc = bins::projector(nats.url(), history::CLUSTER, log, extra);
    let deadline = Duration::from_secs(120);
    loop {
        let ask = client.request(subjects.query_view(), req.clone().into());
        // No answer yet (nobody listens, or a timeout): ask again.
        if let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(10), ask).await {
            let reply: Reply = query::decode(&msg.payload).map_err(anyhow::Error::msg)?;
            if reply.seq >= last && !reply.stale {
                let took = t.elapsed();
                let Answer::Status { networks } = reply.answer else {
                    bail!("unexpected answer {:?}", reply.answer);
                };
                return Ok((took, proc, networks));
            }
        }
        if t.elapsed() > deadline {
            bail!("the projector did not answer with sequence {last} within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn summary(what: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let p50 = v[v.len() / 2];
    println!(
        "{what:<44} n={}  min {:>9.2?}  p50 {:>9.2?}  max {:>9.2?}",
        v.len(),
        v[0],
        p50,
        v[v.len() - 1]
    );
    p50
}

async fn run() -> Result<()> {
    let total: usize = std::env::var("OM_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let (stored, _, checks) = history::generate(total);
    let bytes: usize = stored.iter().map(|m| m.payload.len()).sum();
    let mut expected = State::default();
    for m in &stored {
        om_events::log::fold_stored(&mut expected, m);
    }
    let want_used = used(&om_events::view::status(&expected, None, None));
    println!(
        "history: {total} events, {:.1} MB, generated in {:.1?}; {checks} constructed config changes checked against decide",
        bytes as f64 / 1e6,
        t.elapsed()
    );

    let nats = NatsServer::spawn_binary().await?;
    let client = nats.client().await?;
    let subjects = Subjects::new(history::CLUSTER);
    let log = JetStreamLog::open(client.clone(), subjects.clone(), 1).await?;
    let js = log.context().clone();
    let t = Instant::now();
    let mut acks = VecDeque::with_capacity(IN_FLIGHT);
    for m in &stored {
        if acks.len() == IN_FLIGHT {
            let ack: jetstream::context::PublishAckFuture = acks.pop_front().expect("full");
            ack.await.context("publish ack")?;
        }
        acks.push_back(
            js.publish(m.subject.clone(), m.payload.clone().into())
                .await
                .context("publish")?,
        );
    }
    for ack in acks {
        ack.await.context("publish ack")?;
    }
    let last = {
        use om_events::log::EventLog;
        log.last_seq().await?
    };
    ensure!(
        last == total as u64,
        "stream holds {last} events, not {total}"
    );
    println!(
        "stream filled: {last} events in {:.1?} ({:.0} events/s)",
        t.elapsed(),
        total as f64 / t.elapsed().as_secs_f64()
    );

    let dir = std::env::temp_dir().join(format!("om-bench-coldstart-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut without = Vec::new();
    for i in 0..RUNS_WITHOUT {
        let (took, mut proc, networks) = cold_start(
            &nats,
            &client,
            &subjects,
            last,
            &["--rebuild"],
            dir.join(format!("rebuild{i}.log")),
        )
        .await?;
        ensure!(used(&networks) == want_used, "rebuild: {networks:?}");
        // SIGTERM: the projector saves its final snapshot (at `last`).
        proc.stop();
        without.push(took);
    }
    let mut with = Vec::new();
    for i in 0..RUNS_WITH {
        let (took, mut proc, networks) = cold_start(
            &nats,
            &client,
            &subjects,
            last,
            &[],
            dir.join(format!("snapshot{i}.log")),
        )
        .await?;
        ensure!(used(&networks) == want_used, "from snapshot: {networks:?}");
        proc.stop();
        with.push(took);
    }
    let snapshot_bytes = {
        use om_events::log::EventLog;
        log.get_snapshot("projector").await?.map(|b| b.len())
    };
    println!(
        "leases in use: {want_used:?}; projector snapshot: {} bytes",
        snapshot_bytes.unwrap_or(0)
    );
    let p50 = summary(
        &format!("cold start, no snapshot ({total} events)"),
        without,
    );
    println!(
        "  = {:.0} events/s through JetStream, decode and fold",
        total as f64 / p50.as_secs_f64()
    );
    let p50 = summary("cold start from a snapshot at the last event", with);
    println!(
        "target: cold start with a snapshot <= 1 s: {}",
        if p50 <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
