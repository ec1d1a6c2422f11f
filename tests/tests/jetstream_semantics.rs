//! What the server itself does with de-duplication and conditional publishes, pinned with
//! raw async-nats publishes on one-replica (R1) and three-replica (R3) streams. The
//! JetStream event log is built on these answers; when a server upgrade changes one, this
//! test says which.
//!
//! nats-server 2.12 reordered the checks of a publish to a non-clustered (R1) stream: the
//! expected last subject sequence is checked before the `Nats-Msg-Id` de-duplication, where
//! a clustered (R3) stream, and R1 before 2.12, de-duplicate first. `JetStreamLog` makes
//! R1 answer like R3 (see `earlier_attempt` in `om_events::jetstream`).
//!
//! Not pinned here, seen with 2.15.1: on an R3 stream, a publish refused for a wrong
//! `Nats-Expected-Last-Msg-Id` (10070) left the stream answering no publish at all
//! (every later publish timed out; three runs out of three, once the refused publish
//! itself timed out). The event log never sends that header.

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use om_tests::nats::{NatsCluster, NatsServer};

/// What a publish answered: a stored sequence and the duplicate flag, or an error's
/// JetStream error code.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Stored { seq: u64, duplicate: bool },
    Refused { code: u64 },
}

async fn publish(js: &jetstream::Context, id: &str, expected_subject_seq: Option<u64>) -> Answer {
    let mut msg = PublishMessage::build().payload("x".into()).message_id(id);
    if let Some(n) = expected_subject_seq {
        msg = msg.expected_last_subject_sequence(n);
    }
    let ack = js.send_publish("sem.a", msg).await.expect("sending").await;
    match ack {
        Ok(ack) => Answer::Stored {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        },
        Err(e) => {
            let code = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .map(|j| j.error_code().0)
                .unwrap_or_else(|| {
                    panic!(
                        "publish {id}: no JetStream error code in {e} ({:?})",
                        e.kind()
                    )
                });
            if code == WRONG_LAST_SEQUENCE {
                assert_eq!(e.kind(), PublishErrorKind::WrongLastSequence, "{e}");
            }
            Answer::Refused { code }
        }
    }
}

const WRONG_LAST_SEQUENCE: u64 = 10071;

async fn pin(client: async_nats::Client, replicas: usize) {
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "SEM".into(),
        subjects: vec!["sem.>".into()],
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .unwrap();
    let stored = |seq, duplicate| Answer::Stored { seq, duplicate };

    assert_eq!(publish(&js, "m1", Some(0)).await, stored(1, false));

    // The same id again with the same, now stale, expectation (the retry of a publish whose
    // ack was lost): R3 de-duplicates first, R1 checks the expectation first.
    let retry = publish(&js, "m1", Some(0)).await;
    match replicas {
        1 => assert_eq!(
            retry,
            Answer::Refused {
                code: WRONG_LAST_SEQUENCE
            }
        ),
        _ => assert_eq!(retry, stored(1, true)),
    }

    // A refused conditional publish does not record its id: the same id with the right
    // expectation is stored, not a duplicate.
    assert_eq!(
        publish(&js, "m2", Some(0)).await,
        Answer::Refused {
            code: WRONG_LAST_SEQUENCE
        }
    );
    assert_eq!(publish(&js, "m2", Some(1)).await, stored(2, false));

    let info = js
        .get_stream("SEM")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 2);
    assert_eq!(info.state.last_sequence, 2);
}

#[tokio::test]
async fn server_semantics_r1() {
    let Some(server) = NatsServer::start_or_skip().await else {
        return;
    };
    pin(server.client().await.unwrap(), 1).await;
}

#[tokio::test]
async fn server_semantics_r3() {
    let Some(cluster) = NatsCluster::start_or_skip().await else {
        return;
    };
    pin(cluster.client().await.unwrap(), 3).await;
}
