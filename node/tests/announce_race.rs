//! Regression: an event stored between a daemon's catch-up and its own announcement must
//! still be folded. The daemon used to fold its announcement into its state at once, which
//! moved its position to the announcement's sequence: the subscription then skipped every
//! earlier message it had not delivered yet (another node's announcement, a configuration
//! change), for good. Found by `tests/tests/node_e2e.rs` on real daemons: a peer's
//! announcement was lost and the node reported "no endpoint address for peer".

use ipnet::IpNet;
use om_events::decide::{parse_set, Command};
mod common;

use common::Hooked;
use om_events::log::{execute, EventLog, MemoryLog};
use om_events::subjects::Subjects;
use om_events::State;
use om_node::dataplane::{Dataplane, LinkFilter, MemoryDataplane};
use om_node::sim::spawn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test]
async fn an_event_stored_just_before_the_announcement_is_not_skipped() {
    let s = Subjects::new("race");
    let dir = std::env::temp_dir().join(format!("om-race-{}", std::process::id()));
    // The configuration change, made on a side log and stored on the daemon's log right
    // before its announcement: n1 joins the cluster, so its default bridge must appear.
    let side = MemoryLog::default();
    let ops = parse_set(&[
        format!("cni.config={}", dir.join("net.d").display()),
        "cluster.nodes=n1".to_string(),
    ])
    .unwrap();
    execute(
        &side,
        &s,
        &mut State::default(),
        "t@h",
        || 1,
        &Command::Set { node: None, ops },
    )
    .await
    .unwrap();
    let before = side.read(&s.events(), 1).await.unwrap();
    let log = Hooked {
        before_first_append: Arc::new(Mutex::new(before)),
        ..Hooked::default()
    };
    let a: IpNet = "192.0.2.11/24".parse().unwrap();
    let dp = Arc::new(MemoryDataplane::like_this_kernel().with_interface("eth0", &[a]));
    // A long period: only the event itself can bring the bridge.
    let n1 = spawn(
        "n1",
        dp.clone(),
        log,
        s,
        dir.join("n1"),
        Duration::from_secs(60),
    );
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = dp
            .links(&LinkFilter::prefixes(["obr_"]))
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n1.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        seen,
        vec!["obr_default"],
        "the configuration change was skipped"
    );
}
