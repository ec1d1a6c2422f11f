//! The event-log conformance suite (`om_events::log::conformance`) against
//! [`JetStreamLog`] on real JetStream: one server with one-replica streams (R1), and a
//! cluster of three with three-replica streams (R3). Plus the nats-server#4320 regression
//! guard: two conditional appends with the same expectation, exactly one wins.
//!
//! Each check of the suite needs an empty log, but the suite names its subjects itself,
//! always for cluster `conf`, so every log it gets lives in a stream `OM_conf`. Each check
//! therefore gets a server (or cluster) of its own: a new stream, sequences from 1, an
//! empty de-duplication table, and the suite's subjects exactly as the in-memory run sees
//! them. Deleting `OM_conf` between checks would be cheaper but is not clean on 2.15.1: a
//! file-storage stream deleted and created again at once sometimes comes back with the
//! previous one's last sequence (seen on R1, a few cycles in twenty).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use om_events::jetstream::JetStreamLog;
use om_events::log::{conformance, Ack, EventLog, LogError};
use om_events::subjects::Subjects;
use om_tests::nats::{NatsCluster, NatsServer};

/// A log on `OM_conf`, created with `replicas` copies on a server that never had it.
async fn fresh_conf_log(client: async_nats::Client, replicas: usize, check: &str) -> JetStreamLog {
    let log = JetStreamLog::open(client, Subjects::new("conf"), replicas)
        .await
        .unwrap_or_else(|e| panic!("opening the log for {check}: {e}"));
    assert_eq!(log.last_seq().await.unwrap(), 0, "fresh stream for {check}");
    let info = log.context().get_stream("OM_conf").await.unwrap();
    assert_eq!(info.cached_info().config.num_replicas, replicas);
    eprintln!("conformance R{replicas}: {check}");
    log
}

/// Runs the suite, each check on a log from `start_server`, which returns the server (kept
/// alive until the next check has its own) and a client of it.
async fn run_suite<S, F, Fut>(replicas: usize, start_server: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = (S, async_nats::Client)>,
{
    let current: Arc<Mutex<Option<S>>> = Arc::new(Mutex::new(None));
    let start = Instant::now();
    conformance::run_all(|check| {
        let (current, server) = (current.clone(), start_server());
        async move {
            let (server, client) = server.await;
            let log = fresh_conf_log(client, replicas, check).await;
            // The previous check's log is gone: its server may go too.
            *current.lock().unwrap() = Some(server);
            log
        }
    })
    .await;
    om_tests::nats::announce(&format!(
        "conformance R{replicas}: all checks passed in {:?}",
        start.elapsed()
    ));
}

#[tokio::test]
async fn jetstream_log_conforms_r1() {
    if om_tests::nats::binary_or_skip().is_none() {
        return;
    }
    run_suite(1, || async {
        let server = NatsServer::start().await.expect("starting nats-server");
        let client = server.client().await.unwrap();
        (server, client)
    })
    .await;
}

#[tokio::test]
async fn jetstream_log_conforms_r3() {
    if om_tests::nats::binary_or_skip().is_none() {
        return;
    }
    run_suite(3, || async {
        let cluster = NatsCluster::start().await.expect("starting a cluster");
        let client = cluster.client().await.unwrap();
        (cluster, client)
    })
    .await;
}

/// nats-server#4320 (fixed in 2.9.21): on an R3 stream, two publishes with the same
/// `Nats-Expected-Last-Subject-Sequence` could both be accepted. Two writers, entering the
/// cluster through different nodes, race 200 times; each round exactly one is stored.
#[tokio::test]
async fn r3_same_expectation_exactly_one_wins() {
    let Some(cluster) = NatsCluster::start_or_skip().await else {
        return;
    };
    let subjects = Subjects::new("race");
    let a = JetStreamLog::open(cluster.client_of(0).await.unwrap(), subjects.clone(), 3)
        .await
        .unwrap();
    let b = JetStreamLog::open(cluster.client_of(1).await.unwrap(), subjects.clone(), 3)
        .await
        .unwrap();
    let config = subjects.config();
    let rounds = 200u64;
    let mut wins = [0u32; 2];
    for round in 0..rounds {
        // Each round stores one message: the last one is the previous round's.
        let last = round;
        let (id_a, id_b) = (format!("a-{round}"), format!("b-{round}"));
        let (ra, rb) = tokio::join!(
            a.append(&config, Some(last), &id_a, b"a".to_vec()),
            b.append(&config, Some(last), &id_b, b"b".to_vec()),
        );
        let expected_ack = Ack {
            seq: last + 1,
            duplicate: false,
        };
        let winner = match (&ra, &rb) {
            (Ok(ack), Err(LogError::Conflict { expected, .. })) if *expected == last => {
                assert_eq!(*ack, expected_ack, "round {round}");
                0
            }
            (Err(LogError::Conflict { expected, .. }), Ok(ack)) if *expected == last => {
                assert_eq!(*ack, expected_ack, "round {round}");
                1
            }
            _ => panic!("round {round}: exactly one append must win, got a={ra:?} b={rb:?}"),
        };
        wins[winner] += 1;
    }
    assert_eq!(a.last_seq().await.unwrap(), rounds);
    let stored = b.read(&config, 1).await.unwrap();
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=rounds).collect::<Vec<_>>()
    );
    om_tests::nats::announce(&format!(
        "R3 race: {rounds} rounds, one winner each (writer a {}, writer b {})",
        wins[0], wins[1]
    ));
}
