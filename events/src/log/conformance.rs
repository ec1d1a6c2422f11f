//! One conformance suite for every [`EventLog`]: the in-memory log in unit tests, JetStream
//! against a real `nats-server` in the `tests` crate. Each check takes a fresh, empty log.

use super::*;
use crate::decide::{parse_set, Command};
use crate::event::Origin;

fn subjects() -> Subjects {
    Subjects::new("conf")
}

fn set_cmd(kws: &[&str]) -> Command {
    Command::Set {
        node: None,
        ops: parse_set(&kws.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
    }
}

/// Conditional appends: 0 means "subject empty"; the expected value is the stream sequence
/// of the subject's last message, not a per-subject counter.
pub async fn conditional_append<L: EventLog>(log: &L) {
    let s = subjects();
    let a = log
        .append(&s.config(), Some(0), "c-1", b"one".to_vec())
        .await
        .unwrap();
    assert_eq!(
        a,
        Ack {
            seq: 1,
            duplicate: false
        }
    );
    let b = log
        .append(&s.node("n1"), None, "c-2", b"two".to_vec())
        .await
        .unwrap();
    assert_eq!(b.seq, 2);
    let c = log
        .append(&s.config(), Some(1), "c-3", b"three".to_vec())
        .await
        .unwrap();
    assert_eq!(
        c,
        Ack {
            seq: 3,
            duplicate: false
        }
    );
    assert_eq!(log.last_seq().await.unwrap(), 3);
}

/// A stale expectation is a conflict and stores nothing; the same message id may then be
/// appended with the right expectation (a refused append does not enter the dedup table).
pub async fn conflict<L: EventLog>(log: &L) {
    let s = subjects();
    log.append(&s.config(), Some(0), "x-1", b"one".to_vec())
        .await
        .unwrap();
    let e = log
        .append(&s.config(), Some(0), "x-2", b"two".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(e, LogError::Conflict { ref subject, expected: 0 } if *subject == s.config()),
        "{e:?}"
    );
    assert_eq!(log.last_seq().await.unwrap(), 1);
    let e = log
        .append(&s.config(), Some(7), "x-2", b"two".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(e, LogError::Conflict { expected: 7, .. }), "{e:?}");
    let ok = log
        .append(&s.config(), Some(1), "x-2", b"two".to_vec())
        .await
        .unwrap();
    assert_eq!(
        ok,
        Ack {
            seq: 2,
            duplicate: false
        }
    );
}

/// The same message id twice stores once; the second append answers the first sequence.
pub async fn dedup<L: EventLog>(log: &L) {
    let s = subjects();
    let a = log
        .append(&s.config(), Some(0), "d-1", b"one".to_vec())
        .await
        .unwrap();
    let b = log
        .append(&s.config(), Some(0), "d-1", b"one".to_vec())
        .await
        .unwrap();
    assert_eq!(
        a,
        Ack {
            seq: 1,
            duplicate: false
        }
    );
    assert_eq!(
        b,
        Ack {
            seq: 1,
            duplicate: true
        }
    );
    let c = log
        .append(&s.node("n1"), None, "d-1", b"one".to_vec())
        .await
        .unwrap();
    assert_eq!(
        c,
        Ack {
            seq: 1,
            duplicate: true
        }
    );
    assert_eq!(log.read(&s.events(), 1).await.unwrap().len(), 1);
}

/// Reads return messages in stream order, filtered, from any point.
pub async fn replay_order<L: EventLog>(log: &L) {
    let s = subjects();
    let subs = [
        s.config(),
        s.node("n1"),
        s.ipam("b", "n1"),
        s.node("n2"),
        s.config(),
    ];
    for (i, sub) in subs.iter().enumerate() {
        log.append(sub, None, &format!("r-{i}"), vec![i as u8])
            .await
            .unwrap();
    }
    let all = log.read(&s.events(), 1).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        all.iter().map(|m| m.payload[0]).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(all[2].subject, s.ipam("b", "n1"));
    let from3 = log.read(&s.events(), 3).await.unwrap();
    assert_eq!(
        from3.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let nodes = log
        .read(&format!("om.{}.ev.node.*", s.cluster), 1)
        .await
        .unwrap();
    assert_eq!(nodes.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 4]);
    assert!(log.read(&s.events(), 6).await.unwrap().is_empty());
}

/// A subscription replays from a point, then follows, without gap or repeat.
pub async fn subscribe_replays_then_follows<L: EventLog>(log: &L) {
    use futures::StreamExt;
    let s = subjects();
    for i in 0..3u8 {
        log.append(&s.config(), None, &format!("s-{i}"), vec![i])
            .await
            .unwrap();
    }
    let mut sub = log.subscribe(&s.events(), 2).await.unwrap();
    for i in 3..6u8 {
        log.append(&s.node("n1"), None, &format!("s-{i}"), vec![i])
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("subscription stalled")
            .unwrap()
            .unwrap();
        got.push((m.seq, m.payload[0]));
    }
    assert_eq!(got, vec![(2, 1), (3, 2), (4, 3), (5, 4), (6, 5)]);
}

/// Unknown kinds, newer schemas and garbage are skipped by the fold, which still counts
/// their position, so the next conditional append on that subject succeeds.
pub async fn unknown_kinds_are_skipped<L: EventLog>(log: &L) {
    let s = subjects();
    let mut state = State::default();
    execute(
        log,
        &s,
        &mut state,
        "t@h",
        || 1,
        &set_cmd(&["cluster.nodes=n1"]),
    )
    .await
    .unwrap();
    let foreign = {
        let mut out = Vec::new();
        let wire: Vec<(&str, ciborium::Value)> = vec![
            ("v", 2.into()),
            (
                "id",
                ciborium::Value::Bytes(Uuid::now_v7().as_bytes().to_vec()),
            ),
            ("t", 1.into()),
            ("actor", "future".into()),
            ("cluster", "conf".into()),
            ("kind", "lease.teleported".into()),
            ("data", ciborium::Value::Map(vec![])),
        ];
        let map = ciborium::Value::Map(wire.into_iter().map(|(k, v)| (k.into(), v)).collect());
        ciborium::into_writer(&map, &mut out).unwrap();
        out
    };
    log.append(&s.config(), None, "foreign-1", foreign)
        .await
        .unwrap();
    log.append(&s.config(), None, "garbage-1", b"\xff\xfenot cbor".to_vec())
        .await
        .unwrap();
    let out = execute(
        log,
        &s,
        &mut state,
        "t@h",
        || 2,
        &set_cmd(&["cluster.nodes+=n2"]),
    )
    .await
    .unwrap();
    assert_eq!(out.seq, Some(4));
    assert_eq!(state.skipped, 2);
    let mut fresh = State::default();
    catch_up(log, &s, &mut fresh).await.unwrap();
    assert_eq!(fresh.config.cluster_nodes(), vec!["n1", "n2"]);
    assert_eq!(fresh.skipped, 2);
    assert_eq!(fresh.last_on(&s.config()), 4);
}

/// A command whose append was stored but whose ack was lost is recognised by its event id
/// when retried, even without de-duplication: it is applied once.
pub async fn lost_ack_is_recognised_by_event_id<L: EventLog>(log: &L) {
    let s = subjects();
    let cmd = set_cmd(&["cluster.nodes=n1 n2"]);
    let id = Uuid::now_v7();
    // The first attempt: decided and stored, its ack never seen by the writer.
    let mut first = State::default();
    let changes = crate::decide::decide(&first, &cmd).unwrap();
    let mut env = Envelope::new(
        "conf",
        "t@h",
        1,
        Event::ConfigChanged(ConfigChanged { changes }),
    );
    env.id = id;
    log.append(&s.config(), Some(0), &id.to_string(), env.encode())
        .await
        .unwrap();
    // Another writer moves on, so a blind retry would conflict, not dedup.
    log.append(&s.node("n1"), None, "other-1", b"x".to_vec())
        .await
        .unwrap();
    let out = execute_with_id(log, &s, &mut first, "t@h", || 2, &cmd, id)
        .await
        .unwrap();
    assert_eq!(out.seq, Some(1));
    assert_eq!(out.changes.len(), 1);
    let configs = log.read(&s.config(), 1).await.unwrap();
    assert_eq!(configs.len(), 1, "applied once");
}

/// Eight writers at once on different keywords: all land, each once, in some order.
pub async fn concurrent_writers_all_land<L: EventLog + Clone + 'static>(log: &L) {
    let s = subjects();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let log = log.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut state = State::default();
            let cmd = set_cmd(&[
                &format!("network#n{i}.type=bridge"),
                &format!("network#n{i}.network=10.{}.0.0/16", 100 + i),
            ]);
            execute(&log, &s, &mut state, "t@h", || 3, &cmd)
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let out = t.await.unwrap();
        assert_eq!(
            out.changes
                .iter()
                .filter(|c| c.origin == Origin::Operator)
                .count(),
            2
        );
        seqs.push(out.seq.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=8).collect::<Vec<u64>>());
    let mut state = State::default();
    catch_up(log, &s, &mut state).await.unwrap();
    let nets = crate::network::networks(&state.config, None);
    assert_eq!(nets.len(), 10, "8 declared + default + lo");
}

/// Snapshots: none under a name never written; a put is read back whole, a second put
/// replaces the first, names do not mix.
pub async fn snapshots<L: EventLog>(log: &L) {
    // A name no earlier run on the same server used.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("conformance-{}-{nanos}", std::process::id());
    let other = format!("{name}.other");
    assert_eq!(log.get_snapshot(&name).await.unwrap(), None);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    log.put_snapshot(&name, big.clone()).await.unwrap();
    log.put_snapshot(&other, b"other".to_vec()).await.unwrap();
    assert_eq!(log.get_snapshot(&name).await.unwrap(), Some(big));
    log.put_snapshot(&name, b"second".to_vec()).await.unwrap();
    assert_eq!(
        log.get_snapshot(&name).await.unwrap(),
        Some(b"second".to_vec())
    );
    assert_eq!(
        log.get_snapshot(&other).await.unwrap(),
        Some(b"other".to_vec())
    );
}

/// Runs every check, each on a fresh log from `make`.
pub async fn run_all<L, F, Fut>(make: F)
where
    L: EventLog + Clone + 'static,
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = L>,
{
    conditional_append(&make("conditional_append").await).await;
    conflict(&make("conflict").await).await;
    dedup(&make("dedup").await).await;
    replay_order(&make("replay_order").await).await;
    subscribe_replays_then_follows(&make("subscribe").await).await;
    unknown_kinds_are_skipped(&make("unknown_kinds").await).await;
    lost_ack_is_recognised_by_event_id(&make("lost_ack").await).await;
    concurrent_writers_all_land(&make("concurrent").await).await;
    snapshots(&make("snapshots").await).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_log_conforms() {
        run_all(|_| async { MemoryLog::default() }).await;
    }

    #[tokio::test]
    async fn memory_log_injected_ack_loss_applies_once() {
        let log = MemoryLog::default();
        let s = subjects();
        let mut state = State::default();
        log.lose_next_ack();
        let out = execute(
            &log,
            &s,
            &mut state,
            "t@h",
            || 1,
            &set_cmd(&["cluster.nodes=n1"]),
        )
        .await
        .unwrap();
        assert_eq!(out.seq, Some(1));
        assert_eq!(out.attempts, 2);
        assert_eq!(log.last_seq().await.unwrap(), 1);
    }

    #[test]
    fn subject_filters() {
        assert!(subject_matches("om.c.ev.>", "om.c.ev.config"));
        assert!(subject_matches("om.c.ev.node.*", "om.c.ev.node.n1"));
        assert!(!subject_matches("om.c.ev.node.*", "om.c.ev.node.n1.x"));
        assert!(!subject_matches("om.c.ev.>", "om.c.ev"));
        assert!(!subject_matches("om.c.q.>", "om.c.ev.config"));
    }
}
