//! `om-projector`: folds a cluster's event stream into read views and serves them.
//!
//! It consumes the stream through a durable JetStream consumer (`projector`), folds every
//! event with the same pure fold as every other reader, and answers queries on
//! `om.<cluster>.q.view` (a queue group, so several projectors share the load).
//!
//! Restart without gap or double counting: the folded state is saved as a snapshot (object
//! store, with its stream sequence) before the consumer is acknowledged up to that sequence.
//! On start the snapshot is loaded; redelivered messages at or below its sequence are
//! skipped; if the consumer's acknowledgement floor is ahead of the snapshot (snapshot lost),
//! the consumer is recreated from the snapshot's sequence.
//!
//! Layout: [`run`] (the service), [`serve`] (query answering), [`consume`] (the fold loop).

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, StreamExt};
use om_events::jetstream::{JetStreamLog, SnapshotStore};
use om_events::log::fold_stored;
use om_events::query::{self, Answer, Reply, Request};
use om_events::subjects::Subjects;
use om_events::State;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, RwLock};

/// Name of the durable consumer and of the snapshot object.
pub const DURABLE: &str = "projector";

#[derive(Debug, Clone)]
pub struct Options {
    /// Ignore any snapshot and the consumer position: fold again from the first event.
    pub rebuild: bool,
    /// How often the folded state is saved (and the consumer acknowledged) when it changed.
    pub snapshot_interval: Duration,
    /// How long a query waits for the state to reach the sequence it asks for.
    pub max_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rebuild: false,
            snapshot_interval: Duration::from_secs(1),
            max_wait: Duration::from_secs(2),
        }
    }
}

/// The folded state shared by the fold loop and the query handlers.
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<RwLock<State>>,
    /// The last folded sequence, for queries that wait for their own writes.
    pub applied: watch::Sender<u64>,
}

/// Runs the projector until `shutdown` resolves.
pub async fn run(
    client: async_nats::Client,
    log: JetStreamLog,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let subjects = log.subjects.clone();
    let js = log.context().clone();
    let snaps = SnapshotStore::open(&js, &subjects).await?;
    let (state, consumer) = start(&js, &subjects, &snaps, &opts).await?;
    tracing::info!(
        seq = state.seq,
        "projector resumes after sequence {}",
        state.seq
    );
    let shared = Shared {
        applied: watch::channel(state.seq).0,
        state: Arc::new(RwLock::new(state)),
    };
    let serving = tokio::spawn(serve(
        client.clone(),
        subjects.clone(),
        shared.clone(),
        opts.max_wait,
    ));
    let reaping = tokio::spawn(reap(log.clone(), shared.clone()));
    let result = tokio::select! {
        r = consume(consumer, shared.clone(), snaps.clone(), opts.snapshot_interval) => r,
        _ = shutdown => Ok(()),
    };
    serving.abort();
    reaping.abort();
    // Final snapshot so the next start replays nothing.
    let st = shared.state.read().await.clone();
    if let Err(e) = snaps.save(DURABLE, st.seq, &st).await {
        tracing::warn!("final snapshot: {e}");
    }
    result
}

/// Loads the snapshot and positions the durable consumer right after it.
async fn start(
    js: &jetstream::Context,
    subjects: &Subjects,
    snaps: &SnapshotStore,
    opts: &Options,
) -> Result<(State, consumer::Consumer<consumer::pull::Config>)> {
    let mut stream = js
        .get_stream(subjects.stream())
        .await
        .context("open stream")?;
    let last = stream.info().await?.state.last_sequence;
    let mut state = State::default();
    if !opts.rebuild {
        if let Some(snap) = snaps.load::<State>(DURABLE).await? {
            if snap.seq <= last {
                state = snap.state;
            } else {
                tracing::warn!(
                    "snapshot at {} is ahead of the stream (last {last}): the stream was recreated, folding from the start",
                    snap.seq
                );
            }
        }
    }
    let config = |start: u64| consumer::pull::Config {
        durable_name: Some(DURABLE.into()),
        filter_subject: subjects.events(),
        ack_policy: consumer::AckPolicy::All,
        max_ack_pending: 1_000_000,
        deliver_policy: if start <= 1 {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            }
        },
        ..Default::default()
    };
    let existing = stream.get_consumer::<consumer::pull::Config>(DURABLE).await;
    let recreate = match &existing {
        Ok(c) => {
            let floor = c.cached_info().ack_floor.stream_sequence;
            opts.rebuild || floor > state.seq
        }
        Err(_) => false,
    };
    if recreate {
        tracing::info!(
            "recreating consumer {DURABLE} from sequence {}",
            state.seq + 1
        );
        stream.delete_consumer(DURABLE).await?;
    }
    let consumer = match existing {
        Ok(c) if !recreate => c,
        _ => stream.create_consumer(config(state.seq + 1)).await?,
    };
    Ok((state, consumer))
}

/// The fold loop: fold, and every `interval` save a snapshot then acknowledge.
async fn consume(
    consumer: consumer::Consumer<consumer::pull::Config>,
    shared: Shared,
    snaps: SnapshotStore,
    interval: Duration,
) -> Result<()> {
    let mut messages = consumer.messages().await?;
    let mut tick = tokio::time::interval(interval);
    let mut unacked: Option<jetstream::Message> = None;
    loop {
        tokio::select! {
            m = messages.next() => {
                let Some(m) = m else { anyhow::bail!("consumer stream ended") };
                let mut m = m.map_err(|e| anyhow::anyhow!("consumer: {e}"))?;
                // Fold this message and whatever else is ready (up to a bound, so queries
                // wait little) under one write lock.
                let mut st = shared.state.write().await;
                let mut budget = 4096;
                loop {
                    let seq = m.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
                    if seq > st.seq {
                        let stored = om_events::log::Stored { seq, subject: m.subject.to_string(), payload: m.payload.to_vec() };
                        fold_stored(&mut st, &stored);
                    }
                    budget -= 1;
                    if budget == 0 {
                        break;
                    }
                    match messages.next().now_or_never() {
                        Some(Some(Ok(next))) => m = next,
                        Some(Some(Err(e))) => {
                            shared.applied.send_replace(st.seq);
                            anyhow::bail!("consumer: {e}");
                        }
                        Some(None) | None => break,
                    }
                }
                shared.applied.send_replace(st.seq);
                drop(st);
                unacked = Some(m);
            }
            _ = tick.tick() => {
                if let Some(m) = unacked.take() {
                    let st = shared.state.read().await.clone();
                    match snaps.save(DURABLE, st.seq, &st).await {
                        Ok(bytes) => {
                            tracing::debug!(seq = st.seq, bytes, "snapshot saved");
                            if let Err(e) = m.ack().await {
                                tracing::warn!("ack up to {}: {e}", st.seq);
                            }
                        }
                        Err(e) => {
                            tracing::warn!("snapshot not saved, consumer not acknowledged: {e}");
                            unacked = Some(m);
                        }
                    }
                }
            }
        }
    }
}

/// Answers queries on `om.<cluster>.q.view`.
pub async fn serve(
    client: async_nats::Client,
    subjects: Subjects,
    shared: Shared,
    max_wait: Duration,
) -> Result<()> {
    let mut sub = client
        .queue_subscribe(subjects.query_view(), "projector".into())
        .await?;
    while let Some(msg) = sub.next().await {
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let client = client.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let reply = match query::decode::<Request>(&msg.payload) {
                Ok(req) => answer(&shared, &req, max_wait).await,
                Err(e) => Reply {
                    seq: *shared.applied.borrow(),
                    stale: false,
                    answer: Answer::Error {
                        message: format!("bad request: {e}"),
                    },
                },
            };
            if let Err(e) = client.publish(reply_to, query::encode(&reply).into()).await {
                tracing::warn!("reply: {e}");
            }
        });
    }
    Ok(())
}

/// Waits (bounded) until the state includes `req.min_seq`, then answers.
pub async fn answer(shared: &Shared, req: &Request, max_wait: Duration) -> Reply {
    let mut rx = shared.applied.subscribe();
    let reached = tokio::time::timeout(max_wait, rx.wait_for(|s| *s >= req.min_seq))
        .await
        .is_ok();
    let st = shared.state.read().await;
    Reply {
        seq: st.seq,
        stale: !reached,
        answer: query::answer(&st, &req.query),
    }
}

/// Pause between two looks of the reaper at the state.
const REAP_PAUSE: Duration = Duration::from_millis(50);

/// The single authority that releases the leases of nodes removed from `cluster.nodes`
/// (each release conditioned on its subject's last sequence, so it happens exactly once,
/// whoever else tries), then frees their segments.
async fn reap(log: JetStreamLog, shared: Shared) {
    use om_events::decide::{decide, Command};
    use om_events::event::Event;
    let subjects = log.subjects.clone();
    let mut rx = shared.applied.subscribe();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    };
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        // At most one look every REAP_PAUSE: the check reads the whole state under the lock
        // the fold needs, and a replay changes the state at every event.
        tokio::time::sleep(REAP_PAUSE).await;
        rx.mark_unchanged();
        let todo = {
            let st = shared.state.read().await;
            !om_events::ipam::orphaned(&st).is_empty()
                || decide(&st, &Command::FreeSegments).is_ok_and(|c| !c.is_empty())
        };
        if !todo {
            continue;
        }
        let mut st = shared.state.read().await.clone();
        for r in om_events::ipam::orphaned(&st) {
            let subject = subjects.ipam(&r.network, &r.node);
            let out = om_events::log::execute_event(
                &log,
                &subjects,
                &mut st,
                "projector",
                now,
                &subject,
                uuid::Uuid::now_v7(),
                |s| {
                    Ok(om_events::ipam::release(
                        s,
                        &r.network,
                        &r.node,
                        &r.owner.container_id,
                        &r.owner.ifname,
                        "node removed",
                    )
                    .map(Event::IpReleased))
                },
            )
            .await;
            match out {
                Ok(o) if o.seq.is_some() => tracing::info!(
                    "released {} of {} on {}: the node left cluster.nodes",
                    r.ip,
                    r.owner.container_id,
                    r.node
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("release {} on {}: {e}", r.ip, r.node),
            }
        }
        match om_events::log::execute(
            &log,
            &subjects,
            &mut st,
            "projector",
            now,
            &Command::FreeSegments,
        )
        .await
        {
            Ok(o) if o.seq.is_some() => {
                for c in &o.changes {
                    tracing::info!("freed {}", c.key);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("free the segments of removed nodes: {e}"),
        }
    }
}
