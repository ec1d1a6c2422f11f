//! Convergence of 100 simulated nodes: daemons on the in-memory event log (`MemoryLog`) and
//! in-memory dataplanes, all in this process (a two-worker tokio runtime).
//!
//! The nodes sit on four /24 underlays (25 each), so that with `tunnel=auto` a node routes
//! directly to the 24 peers of its underlay and tunnels (VXLAN) to the 75 others. After the
//! nodes announced themselves and the network `backend1` was declared and applied, 20
//! rounds toggle `network#backend1.tunnel=always|auto` with `om_events::log::execute`; a
//! round lasts from the start of the command until every node's last `node.applied` report
//! carries a sequence at or after the change's (the log is followed and folded).
//!
//! Then the reconcile of one node with 99 peers (100 nodes) is timed: the pure computation
//! (`desired` + `plan`), a first apply on an empty `MemoryDataplane`, and the daemon's full
//! reconcile (facts, desired, observe, plan, apply, report, local state saved) through a
//! setup request.
//!
//! Target: p50 convergence ≤ 2 s. Run with `cargo bench -p om-node --bench converge_sim`.

use futures::StreamExt;
use ipnet::IpNet;
use om_events::decide::{parse_set, Command};
use om_events::log::{execute, fold_stored, EventLog, MemoryLog};
use om_events::subjects::Subjects;
use om_events::State;
use om_node::dataplane::{Dataplane, MemoryDataplane};
use om_node::desired::{desired, Facts};
use om_node::plan::{owned_link, plan, Observed};
use om_node::reconcile::{apply, observe, Manifest};
use om_node::sim::{spawn, SimNode};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NODES: usize = 100;
const ROUNDS: usize = 20;
const UNDERLAYS: [[u8; 3]; 4] = [[192, 0, 2], [198, 51, 100], [203, 0, 113], [192, 168, 50]];
/// Far longer than the bench: only events make the daemons reconcile.
const PERIOD: Duration = Duration::from_secs(600);
/// A round that takes longer than this is a failure, not a figure.
const ROUND_LIMIT: Duration = Duration::from_secs(60);

fn node(i: usize) -> String {
    format!("n{i:03}")
}

fn underlay_addr(i: usize) -> IpNet {
    let [a, b, c] = UNDERLAYS[i % UNDERLAYS.len()];
    format!("{a}.{b}.{c}.{}/24", 10 + i / UNDERLAYS.len())
        .parse()
        .expect("address literal")
}

fn set(kws: &[String]) -> Command {
    Command::Set {
        node: None,
        ops: parse_set(kws).expect("valid keywords"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let p50 = percentile(&v, 50);
    println!(
        "{name:<58} n={:<3} p50 {:>9.2?}  p90 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
        v.len(),
        p50,
        percentile(&v, 90),
        percentile(&v, 99),
        v[v.len() - 1]
    );
    p50
}

/// The log followed and folded, to see the nodes' reports as they land.
struct Follower {
    state: State,
    sub: futures::stream::BoxStream<
        'static,
        Result<om_events::log::Stored, om_events::log::LogError>,
    >,
}

impl Follower {
    async fn new(log: &MemoryLog, s: &Subjects) -> Self {
        Follower {
            state: State::default(),
            sub: log.subscribe(&s.events(), 1).await.expect("subscribe"),
        }
    }

    /// Folds until `done(state)` holds (bounded by [`ROUND_LIMIT`]).
    async fn until(&mut self, what: &str, done: impl Fn(&State) -> bool) {
        let deadline = tokio::time::Instant::now() + ROUND_LIMIT;
        while !done(&self.state) {
            match tokio::time::timeout_at(deadline, self.sub.next()).await {
                Ok(Some(Ok(m))) => {
                    fold_stored(&mut self.state, &m);
                }
                Ok(other) => panic!("log subscription: {other:?}"),
                Err(_) => panic!("{what}: not reached within {ROUND_LIMIT:?}"),
            }
        }
    }

    /// Every node reported a state at or after `seq`.
    async fn applied(&mut self, names: &[String], seq: u64) {
        self.until(&format!("every node applies sequence {seq}"), |st| {
            names
                .iter()
                .all(|n| st.applied.get(n).is_some_and(|a| a.report.seq >= seq))
        })
        .await
    }
}

/// Runs a configuration command as a long-lived writer does (its state kept); its sequence.
async fn command(log: &MemoryLog, s: &Subjects, state: &mut State, kws: &[String]) -> u64 {
    execute(log, s, state, "bench@sim", now_ms, &set(kws))
        .await
        .expect("command accepted")
        .seq
        .expect("the command changes something")
}

async fn run() {
    let log = MemoryLog::default();
    let s = Subjects::new("bench");
    let dir = std::env::temp_dir().join(format!("om-bench-converge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<String> = (0..NODES).map(node).collect();
    let t = Instant::now();
    let nodes: Vec<SimNode<MemoryDataplane>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let dp =
                MemoryDataplane::like_this_kernel().with_interface("eth0", &[underlay_addr(i)]);
            spawn(n, Arc::new(dp), log.clone(), s.clone(), dir.join(n), PERIOD)
        })
        .collect();
    let mut follow = Follower::new(&log, &s).await;
    follow
        .until("every node announces itself", |st| {
            st.announced.len() == NODES
        })
        .await;
    println!("{NODES} nodes started and announced in {:.2?}", t.elapsed());

    let mut writer = State::default();
    // Each node writes its CNI files in a directory of its own, as on separate hosts.
    for n in &names {
        let cni = format!("cni.config={}", dir.join(n).join("net.d").display());
        let cmd = Command::Set {
            node: Some(n.clone()),
            ops: parse_set(&[cni]).expect("valid keyword"),
        };
        execute(&log, &s, &mut writer, "bench@sim", now_ms, &cmd)
            .await
            .expect("command accepted");
    }
    command(
        &log,
        &s,
        &mut writer,
        &[format!("cluster.nodes={}", names.join(" "))],
    )
    .await;
    let t = Instant::now();
    let seq = command(
        &log,
        &s,
        &mut writer,
        &[
            "network#backend1.type=routed_bridge".into(),
            "network#backend1.network=10.11.0.0/16".into(),
            "network#backend1.ips_per_node=256".into(),
            "network#backend1.tunnel_mode=vxlan".into(),
        ],
    )
    .await;
    follow.applied(&names, seq).await;
    println!(
        "backend1 declared (100 segments) and applied by every node in {:.2?}",
        t.elapsed()
    );
    {
        let r = &follow.state.applied[&names[0]].report;
        let b = r.networks.iter().find(|n| n.name == "backend1").unwrap();
        println!(
            "  {} reports for backend1: segment {:?}, {} routes, {} tunnels, errors {:?}",
            names[0], b.segment, b.routes, b.tunnels, r.errors
        );
    }

    let mut rounds = Vec::new();
    let mut commands = Vec::new();
    let values = ["always", "auto"];
    for round in 0..ROUNDS {
        let value = values[round % 2];
        let t = Instant::now();
        let kw = format!("network#backend1.tunnel={value}");
        let seq = command(&log, &s, &mut writer, &[kw]).await;
        commands.push(t.elapsed());
        follow.applied(&names, seq).await;
        rounds.push(t.elapsed());
    }
    let r = &follow.state.applied[&names[0]].report;
    let b = r.networks.iter().find(|n| n.name == "backend1").unwrap();
    println!(
        "after the rounds ({}), {} reports {} routes and {} tunnels for backend1",
        values[(ROUNDS - 1) % 2],
        names[0],
        b.routes,
        b.tunnels
    );
    summary(
        "the command alone (execute: catch up, decide, append)",
        commands,
    );
    let p50 = summary(
        &format!("convergence, command to {NODES} nodes applied"),
        rounds,
    );
    println!(
        "target: p50 convergence <= 2 s: {}",
        if p50 <= Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        }
    );

    // One node's reconcile with 99 peers, with the state every node now has.
    let state = follow.state.clone();
    let me = &names[0];
    let fresh = || MemoryDataplane::like_this_kernel().with_interface("eth0", &[underlay_addr(0)]);
    let mut addresses = fresh().addresses().await.expect("addresses");
    addresses.retain(|a| !owned_link(&a.link));
    let facts = Facts {
        addresses,
        resolved: Default::default(),
        tables: [("main".to_string(), 254), ("local".to_string(), 255)].into(),
        // The daemon's own directory: the CNI files name it (host-local IPAM data).
        state_dir: dir.join(me),
    };
    let want = desired(&state, me, &facts);
    println!(
        "{me}'s desired state: {} bridges, {} tunnels, {} routes, {} CNI files",
        want.bridges.len(),
        want.tunnels.len(),
        want.routes.len(),
        want.cni_files.len()
    );
    let n = 50;
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        std::hint::black_box(desired(std::hint::black_box(&state), me, &facts));
        times.push(t.elapsed());
    }
    summary("desired() for one node, 99 peers", times);
    let empty = Observed::default();
    let converged = observe(&*nodes[0].dp, &want, &Manifest::load(&dir.join(me)))
        .await
        .expect("observe");
    let mut first = Vec::new();
    let mut again = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let ops = plan(&want, &empty);
        first.push(t.elapsed());
        std::hint::black_box(ops);
        let t = Instant::now();
        let ops = plan(&want, &converged);
        again.push(t.elapsed());
        assert!(ops.is_empty(), "the node is converged: {ops:?}");
    }
    println!(
        "  plan on an empty node: {} operations",
        plan(&want, &empty).len()
    );
    summary("plan(), empty node (everything to create)", first);
    summary("plan(), converged node (nothing to do)", again);
    // Apply into a directory of its own, not the CNI directory the daemons share.
    let mut elsewhere = want.clone();
    elsewhere.cni_dir = dir.join("apply-cni");
    let mut applies = Vec::new();
    for k in 0..10 {
        let dp = fresh();
        let mut manifest = Manifest::load(&dir.join(format!("apply{k}")));
        let ops = plan(&elsewhere, &empty);
        let t = Instant::now();
        let (_, errors) = apply(&dp, &ops, &elsewhere.cni_dir, &mut manifest).await;
        applies.push(t.elapsed());
        assert!(errors.is_empty(), "{errors:?}");
    }
    summary(
        "apply() of that plan on an empty MemoryDataplane (+ CNI files)",
        applies,
    );
    let mut setups = Vec::new();
    for _ in 0..n {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let t = Instant::now();
        nodes[0].setup.send(tx).await.expect("daemon runs");
        let out = rx.await.expect("setup answered");
        setups.push(t.elapsed());
        assert!(out.changes.is_empty() && out.errors.is_empty(), "{out:?}");
    }
    summary("full reconcile of a converged node (setup request)", setups);

    for n in nodes {
        n.stop().await.expect("daemon stops");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    println!(
        "{NODES} simulated nodes, {ROUNDS} rounds of network#backend1.tunnel=always|auto (tokio, 2 workers)"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run());
}
