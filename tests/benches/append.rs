//! Append latency on one spawned `nats-server` (one replica, file storage), one operation at
//! a time, in one run:
//!
//! - (a) `JetStreamLog::append`, conditional, each on the sequence the previous one got;
//! - (b) a raw async-nats `jetstream::Context::publish` and its ack, same payload size, no
//!   headers: the floor (a) is compared with;
//! - (c) `om_events::log::execute`, whole commands (catch up, decide, conditional append),
//!   the state kept from one command to the next as a long-lived writer keeps it.
//!
//! The payload of (a) and (b) is the encoded envelope of a typical configuration change.
//! Run with `cargo bench -p om-tests --bench append`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use om_events::decide::{decide, parse_set, Command};
use om_events::event::{ConfigChanged, Event};
use om_events::jetstream::JetStreamLog;
use om_events::log::{execute, EventLog};
use om_events::subjects::Subjects;
use om_events::{Envelope, State};
use om_tests::nats::{self, NatsServer};
use uuid::Uuid;

const N_APPEND: usize = 2000;
const N_EXECUTE: usize = 500;
const WARM_UP: usize = 100;

fn main() -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

fn set(kws: &[&str]) -> Command {
    let kws: Vec<String> = kws.iter().map(|s| s.to_string()).collect();
    Command::Set {
        node: None,
        ops: parse_set(&kws).expect("valid keywords"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Per-operation latencies.
struct Stats {
    name: &'static str,
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

impl Stats {
    fn of(name: &'static str, mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        let n = samples.len();
        Stats {
            name,
            mean: samples.iter().sum::<Duration>() / n as u32,
            p50: samples[n / 2],
            p99: samples[(n * 99 / 100).min(n - 1)],
        }
    }

    fn print(&self, n: usize) {
        println!(
            "{:<44} n={n:<5} mean {:>8.1} µs  p50 {:>8.1} µs  p99 {:>8.1} µs  ({:.0}/s)",
            self.name,
            micros(self.mean),
            micros(self.p50),
            micros(self.p99),
            1.0 / self.mean.as_secs_f64()
        );
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The encoded envelope of a typical change: three nodes and a bridge network, with the
/// segments the decision derives for the nodes.
fn typical_payload() -> Result<Vec<u8>> {
    let cmd = set(&[
        "cluster.nodes=n1 n2 n3",
        "network#backend1.type=bridge",
        "network#backend1.network=10.11.0.0/16",
    ]);
    let changes = decide(&State::default(), &cmd).context("deciding the typical change")?;
    let env = Envelope::new(
        "bench",
        "bench@host",
        now_ms(),
        Event::ConfigChanged(ConfigChanged { changes }),
    );
    Ok(env.encode())
}

async fn run() -> Result<()> {
    if nats::binary_or_skip().is_none() {
        return Ok(());
    }
    let server = NatsServer::spawn_binary().await?;
    let client = server.client().await?;
    let payload = typical_payload()?;
    println!(
        "payload: encoded envelope of a typical config change, {} bytes",
        payload.len()
    );

    let subjects = Subjects::new("bench");
    let log = JetStreamLog::open(client.clone(), subjects.clone(), 1).await?;
    let js = log.context().clone();

    // (b) raw publish + ack, on a subject of the same stream.
    let raw_subject = subjects.node("raw");
    let mut raw = Vec::with_capacity(N_APPEND);
    for i in 0..WARM_UP + N_APPEND {
        let t = Instant::now();
        js.publish(raw_subject.clone(), payload.clone().into())
            .await?
            .await?;
        if i >= WARM_UP {
            raw.push(t.elapsed());
        }
    }

    // (a) conditional appends, each expecting the sequence of the previous one.
    let config = subjects.config();
    let mut last = 0;
    let mut conditional = Vec::with_capacity(N_APPEND);
    for i in 0..WARM_UP + N_APPEND {
        let id = Uuid::now_v7().to_string();
        let t = Instant::now();
        let ack = log
            .append(&config, Some(last), &id, payload.clone())
            .await?;
        let took = t.elapsed();
        ensure!(!ack.duplicate, "append {i} answered duplicate");
        last = ack.seq;
        if i >= WARM_UP {
            conditional.push(took);
        }
    }

    // (c) whole commands on a stream of their own, the state kept between them.
    let subjects = Subjects::new("benchx");
    let log = JetStreamLog::open(client.clone(), subjects.clone(), 1).await?;
    let mut state = State::default();
    let setup = set(&[
        "cluster.nodes=n1 n2 n3",
        "network#backend1.type=bridge",
        "network#backend1.network=10.11.0.0/16",
    ]);
    execute(&log, &subjects, &mut state, "bench@host", now_ms, &setup).await?;
    let mut commands = Vec::with_capacity(N_EXECUTE);
    for i in 0..WARM_UP + N_EXECUTE {
        let cmd = set(&[&format!("network#backend1.dev=obr{i}")]);
        let t = Instant::now();
        let out = execute(&log, &subjects, &mut state, "bench@host", now_ms, &cmd).await?;
        let took = t.elapsed();
        ensure!(
            out.seq == Some(i as u64 + 2) && out.attempts == 1,
            "command {i}: {out:?}"
        );
        if i >= WARM_UP {
            commands.push(took);
        }
    }
    ensure!(log.last_seq().await? == (WARM_UP + N_EXECUTE) as u64 + 1);

    println!(
        "one operation at a time, release build, nats at {}",
        server.url()
    );
    let a = Stats::of("(a) JetStreamLog::append, conditional", conditional);
    let b = Stats::of("(b) raw jetstream publish + ack", raw);
    let c = Stats::of("(c) execute (catch up, decide, append)", commands);
    a.print(N_APPEND);
    b.print(N_APPEND);
    c.print(N_EXECUTE);
    println!(
        "ratio (a)/(b): mean {:.2}, p50 {:.2}",
        a.mean.as_secs_f64() / b.mean.as_secs_f64(),
        a.p50.as_secs_f64() / b.p50.as_secs_f64()
    );
    Ok(())
}
