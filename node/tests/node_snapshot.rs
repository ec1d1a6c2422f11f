//! A node daemon saves its fold beside the stream (`node-<name>` in the snapshot store): a
//! daemon that lost its state directory starts from that snapshot and replays only the
//! tail; a snapshot of another schema version is ignored and the daemon replays everything.
//! Either way it converges to the same plumbing.

use ipnet::IpNet;
use om_events::decide::{parse_set, Command};
mod common;

use common::Hooked;
use om_events::log::{catch_up, execute, EventLog, MemoryLog};
use om_events::snapshot::Snapshot;
use om_events::subjects::Subjects;
use om_events::State;
use om_node::daemon::snapshot_name;
use om_node::dataplane::{Dataplane, LinkFilter, MemoryDataplane, OM_ROUTE_PROTOCOL};
use om_node::sim::spawn;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

async fn run(log: &MemoryLog, s: &Subjects, kws: &[String]) -> u64 {
    let cmd = Command::Set {
        node: None,
        ops: parse_set(kws).unwrap(),
    };
    execute(log, s, &mut State::default(), "t@h", || 1, &cmd)
        .await
        .unwrap()
        .seq
        .unwrap()
}

/// Waits (bounded) until n1 reported a state at or after `seq`.
async fn applied(log: &MemoryLog, s: &Subjects, seq: u64) {
    for _ in 0..500 {
        let mut st = State::default();
        catch_up(log, s, &mut st).await.unwrap();
        if st.applied.get("n1").is_some_and(|a| a.report.seq >= seq) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("n1 did not report sequence {seq} within 5 s");
}

fn host() -> Arc<MemoryDataplane> {
    let a: IpNet = "192.0.2.11/24".parse().unwrap();
    Arc::new(MemoryDataplane::like_this_kernel().with_interface("eth0", &[a]))
}

/// Links and routes of the node's plumbing, sorted.
async fn plumbing(dp: &MemoryDataplane) -> (Vec<String>, Vec<String>) {
    let mut links: Vec<String> = dp
        .links(&LinkFilter::prefixes(["obr_", "tun"]))
        .await
        .unwrap()
        .iter()
        .map(|l| l.name.clone())
        .collect();
    links.sort();
    let mut routes: Vec<String> = dp
        .routes(OM_ROUTE_PROTOCOL)
        .await
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    routes.sort();
    (links, routes)
}

fn snapshot_seq(bytes: &[u8]) -> u64 {
    om_events::snapshot::decode::<ciborium::Value>("test", bytes)
        .expect("a current-schema snapshot")
        .seq
}

#[tokio::test]
async fn a_node_that_lost_its_disk_starts_from_its_snapshot() {
    let log = MemoryLog::default();
    let s = Subjects::new("snap");
    let dir = TempDir(std::env::temp_dir().join(format!("om-node-snap-{}", std::process::id())));
    let dir = &dir.0;
    let cni = dir.join("net.d");
    let state_dir = |n: &str| -> PathBuf { dir.join(n) };
    let start = |sd: &Path, log: Hooked| {
        spawn(
            "n1",
            host(),
            log,
            s.clone(),
            sd.to_path_buf(),
            Duration::from_secs(600),
        )
    };
    let rec = |log: &MemoryLog| Hooked {
        log: log.clone(),
        ..Hooked::default()
    };

    // First life: the node folds the history and saves its snapshot when it stops.
    let first = start(&state_dir("a"), rec(&log));
    run(&log, &s, &[format!("cni.config={}", cni.display())]).await;
    run(&log, &s, &["cluster.nodes=n1 n2".to_string()]).await;
    let seq = run(
        &log,
        &s,
        &[
            "network#b1.type=routed_bridge".to_string(),
            "network#b1.network=10.11.0.0/16".to_string(),
            "network#b1.ips_per_node=256".to_string(),
            "network#b1.addr@n2=192.0.2.12".to_string(),
        ],
    )
    .await;
    applied(&log, &s, seq).await;
    let before = plumbing(&first.dp).await;
    assert_eq!(
        before,
        (
            vec!["obr_b1".to_string(), "obr_default".to_string()],
            vec!["10.11.1.0/24 via 192.0.2.12 dev eth0 table 254".to_string()]
        )
    );
    first.stop().await.unwrap();
    let bytes = log
        .get_snapshot(&snapshot_name("n1"))
        .await
        .unwrap()
        .expect("the daemon saved its snapshot when it stopped");
    let saved = snapshot_seq(&bytes);
    assert!(
        saved >= seq,
        "snapshot at {saved}, before the change at {seq}"
    );

    // While it is down: one more change.
    let seq = run(&log, &s, &["network#b1.addr@n2=192.0.2.13".to_string()]).await;
    assert!(seq > saved);

    // Second life on an empty state directory: it starts right after the snapshot.
    let second_log = rec(&log);
    let second = start(&state_dir("b"), second_log.clone());
    applied(&log, &s, seq).await;
    assert_eq!(second_log.subscribed_from.lock().unwrap()[0], saved + 1);
    let after = plumbing(&second.dp).await;
    assert_eq!(
        after.1,
        vec!["10.11.1.0/24 via 192.0.2.13 dev eth0 table 254".to_string()]
    );
    second.stop().await.unwrap();

    // A snapshot written by another schema version is not trusted: full replay, same result.
    let mut old: Snapshot<ciborium::Value> = om_events::snapshot::decode(
        "test",
        &log.get_snapshot(&snapshot_name("n1"))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    old.schema = om_events::SCHEMA_VERSION - 1;
    log.put_snapshot(&snapshot_name("n1"), om_events::query::encode(&old))
        .await
        .unwrap();
    let third_log = rec(&log);
    let last = log.last_seq().await.unwrap();
    let third = start(&state_dir("c"), third_log.clone());
    // Nothing changed for it, so it may not report: ask for a reconcile, answered once it
    // caught up.
    let (tx, rx) = tokio::sync::oneshot::channel();
    third.setup.send(tx).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("a setup answer within 5 s")
        .unwrap();
    // It reconciled as of the last change that matters to it.
    assert_eq!(out.seq, seq, "{out:?}");
    assert_eq!(out.errors, Vec::<String>::new());
    assert_eq!(third_log.subscribed_from.lock().unwrap()[0], 1);
    assert_eq!(plumbing(&third.dp).await, after);
    third.stop().await.unwrap();
    // It saved its own (current schema) snapshot when it stopped.
    let bytes = log
        .get_snapshot(&snapshot_name("n1"))
        .await
        .unwrap()
        .unwrap();
    assert!(snapshot_seq(&bytes) >= last);
}

/// A scratch directory removed even when the test fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
