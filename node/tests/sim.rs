//! Three daemons on the in-memory event log and dataplanes: the seed's networks converge to
//! the exact route, tunnel, bridge and CNI sets, and reconverge after changes.

use ipnet::IpNet;
use om_events::decide::{parse_set, Command};
use om_events::log::{catch_up, execute, MemoryLog};
use om_events::subjects::Subjects;
use om_events::State;
use om_node::dataplane::{Dataplane, LinkFilter, MemoryDataplane, OM_ROUTE_PROTOCOL};
use om_node::sim::{spawn, SimNode};
use std::sync::Arc;
use std::time::Duration;

fn set(kws: &[&str]) -> Command {
    Command::Set {
        node: None,
        ops: parse_set(&kws.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
    }
}

async fn run(log: &MemoryLog, s: &Subjects, kws: &[&str]) -> u64 {
    let mut st = State::default();
    execute(log, s, &mut st, "t@h", || 1, &set(kws))
        .await
        .unwrap()
        .seq
        .unwrap()
}

/// Waits (bounded) until every node reported a state at or after `seq`.
async fn converged(log: &MemoryLog, s: &Subjects, nodes: &[&str], seq: u64) -> State {
    for _ in 0..500 {
        let mut st = State::default();
        catch_up(log, s, &mut st).await.unwrap();
        if nodes
            .iter()
            .all(|n| st.applied.get(*n).is_some_and(|a| a.report.seq >= seq))
        {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nodes {nodes:?} did not report sequence {seq} within 5 s");
}

async fn routes(dp: &MemoryDataplane) -> Vec<String> {
    dp.routes(OM_ROUTE_PROTOCOL)
        .await
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect()
}

async fn links(dp: &MemoryDataplane) -> Vec<String> {
    dp.links(&LinkFilter::prefixes(["obr_", "tun"]))
        .await
        .unwrap()
        .iter()
        .map(|l| l.name.clone())
        .collect()
}

fn host(addr: &str) -> Arc<MemoryDataplane> {
    let a: IpNet = addr.parse().unwrap();
    Arc::new(MemoryDataplane::like_this_kernel().with_interface("eth0", &[a]))
}

#[tokio::test]
async fn three_nodes_converge_and_reconverge() {
    let log = MemoryLog::default();
    let s = Subjects::new("sim");
    let dir = std::env::temp_dir().join(format!("om-sim-{}", std::process::id()));
    let hosts = [
        ("n1", "192.0.2.11/24"),
        ("n2", "192.0.2.12/24"),
        ("n3", "198.51.100.13/24"),
    ];
    let mut nodes: Vec<SimNode<MemoryDataplane>> = hosts
        .iter()
        .map(|(n, a)| {
            spawn(
                n,
                host(a),
                log.clone(),
                s.clone(),
                dir.join(n),
                Duration::from_millis(200),
            )
        })
        .collect();
    // Every daemon announces its addresses when it starts.
    for _ in 0..500 {
        let mut st = State::default();
        catch_up(&log, &s, &mut st).await.unwrap();
        if st.announced.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // CNI files go to a private directory.
    run(
        &log,
        &s,
        &[&format!("cni.config={}", dir.join("net.d").display())],
    )
    .await;
    run(&log, &s, &["cluster.nodes=n1 n2 n3"]).await;
    let seq = run(
        &log,
        &s,
        &[
            "network#backend1.type=routed_bridge",
            "network#backend1.network=10.11.0.0/16",
            "network#backend1.ips_per_node=1024",
            "network#backend1.tunnel_mode=vxlan",
        ],
    )
    .await;
    let st = converged(&log, &s, &["n1", "n2", "n3"], seq).await;
    // n1 and n2 share 192.0.2.0/24: direct route; n3 is elsewhere: vxlan tunnel.
    assert_eq!(
        routes(&nodes[0].dp).await,
        vec![
            "10.11.4.0/22 via 192.0.2.12 dev eth0 table 254",
            "10.11.8.0/22 via 10.11.8.1 dev tunc633640d onlink table 254"
        ]
    );
    assert_eq!(
        routes(&nodes[2].dp).await,
        vec![
            "10.11.0.0/22 via 10.11.0.1 dev tunc000020b onlink table 254",
            "10.11.4.0/22 via 10.11.4.1 dev tunc000020c onlink table 254"
        ]
    );
    assert_eq!(
        links(&nodes[0].dp).await,
        vec!["obr_backend1", "obr_default", "tunc633640d"]
    );
    let report = &st.applied["n2"].report;
    let b = report
        .networks
        .iter()
        .find(|n| n.name == "backend1")
        .unwrap();
    assert_eq!(
        (
            b.segment.unwrap().to_string(),
            b.gateway.unwrap().to_string(),
            b.routes,
            b.tunnels
        ),
        ("10.11.4.0/22".into(), "10.11.4.1".into(), 2, 1)
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    // tunnel=always: n1 now tunnels to n2 too.
    let seq = run(&log, &s, &["network#backend1.tunnel=always"]).await;
    converged(&log, &s, &["n1", "n2", "n3"], seq).await;
    assert_eq!(
        routes(&nodes[0].dp).await,
        vec![
            "10.11.4.0/22 via 10.11.4.1 dev tunc000020c onlink table 254",
            "10.11.8.0/22 via 10.11.8.1 dev tunc633640d onlink table 254"
        ]
    );
    // back to auto
    let seq = run(&log, &s, &["network#backend1.tunnel=auto"]).await;
    converged(&log, &s, &["n1", "n2", "n3"], seq).await;
    assert_eq!(
        links(&nodes[0].dp).await,
        vec!["obr_backend1", "obr_default", "tunc633640d"]
    );

    // A route deleted by hand comes back within a period.
    let r = nodes[0].dp.routes(OM_ROUTE_PROTOCOL).await.unwrap()[0].clone();
    nodes[0].dp.delete_route(&r).await.unwrap();
    let mut back = false;
    for _ in 0..300 {
        if routes(&nodes[0].dp).await.len() == 2 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(back, "the deleted route was not restored");

    // n3 stopped while n2 leaves the cluster; restarted, it catches up from its position.
    let n3 = nodes.pop().unwrap();
    let dp3 = n3.dp.clone();
    n3.stop().await.unwrap();
    let seq = run(&log, &s, &["cluster.nodes-=n2"]).await;
    converged(&log, &s, &["n1"], seq).await;
    assert_eq!(
        routes(&nodes[0].dp).await,
        vec!["10.11.8.0/22 via 10.11.8.1 dev tunc633640d onlink table 254"]
    );
    let n3 = spawn(
        "n3",
        dp3,
        log.clone(),
        s.clone(),
        dir.join("n3"),
        Duration::from_millis(200),
    );
    converged(&log, &s, &["n3"], seq).await;
    assert_eq!(
        routes(&n3.dp).await,
        vec!["10.11.0.0/22 via 10.11.0.1 dev tunc000020b onlink table 254"]
    );
    assert_eq!(
        links(&n3.dp).await,
        vec!["obr_backend1", "obr_default", "tunc000020b"]
    );
    // n2, outside cluster.nodes now, keeps only node-scoped networks: none.
    converged(&log, &s, &["n2"], seq).await;
    assert_eq!(links(&nodes[1].dp).await, Vec::<String>::new());
    assert_eq!(routes(&nodes[1].dp).await, Vec::<String>::new());
    for n in nodes {
        n.stop().await.unwrap();
    }
    n3.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon started under a name that is not in cluster.nodes (the default is the host
/// name) must not tear down what the node's real daemon built; it says why in its report.
#[tokio::test]
async fn a_misnamed_daemon_deletes_nothing() {
    let log = MemoryLog::default();
    let s = Subjects::new("ghost");
    let dir = std::env::temp_dir().join(format!("om-sim-ghost-{}", std::process::id()));
    run(
        &log,
        &s,
        &[&format!("cni.config={}", dir.join("net.d").display())],
    )
    .await;
    run(&log, &s, &["cluster.nodes=n1 n2"]).await;
    let seq = run(
        &log,
        &s,
        &[
            "network#b.type=routed_bridge",
            "network#b.network=10.11.0.0/16",
        ],
    )
    .await;
    let dp = host("192.0.2.11/24");
    let n1 = spawn(
        "n1",
        dp.clone(),
        log.clone(),
        s.clone(),
        dir.join("n1"),
        Duration::from_millis(200),
    );
    converged(&log, &s, &["n1"], seq).await;
    n1.stop().await.unwrap();
    let before = (links(&dp).await, routes(&dp).await);
    assert_eq!(before.0, vec!["obr_b", "obr_default"]);
    // Same host, wrong name, fresh state directory.
    let ghost = spawn(
        "ghost",
        dp.clone(),
        log.clone(),
        s.clone(),
        dir.join("ghost"),
        Duration::from_millis(200),
    );
    let st = converged(&log, &s, &["ghost"], seq).await;
    assert_eq!((links(&dp).await, routes(&dp).await), before);
    assert_eq!(
        st.applied["ghost"].report.errors,
        vec!["node ghost is not in cluster.nodes (n1 n2) and never was: check --node (default: the host name)"]
    );
    ghost.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
