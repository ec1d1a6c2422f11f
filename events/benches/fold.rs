//! Fold rate: how many stored events per second a reader folds into the cluster state.
//!
//! A realistic history of 1,000,000 events is generated in memory (deterministically):
//! configuration changes (decided against the folded state; the bulk of them constructed
//! and checked against `decide` on a sample), node announcements, `node.applied` reports,
//! and `ip.allocated` / `ip.released` pairs in the segments of a few networks. Each event is
//! encoded as it is stored (`Envelope::encode`), then timed:
//!
//! - decode + fold: `om_events::log::fold_stored` over the `Stored` messages, which is what
//!   the projector, the node daemons and the CLI fallback do;
//! - decode only: `Envelope::decode`, on a quarter of the messages;
//! - fold only: `State::observe` + `State::apply` over already decoded envelopes.
//!
//! Target: ≥ 500,000 events/s. Run with `cargo bench -p om-events --bench fold`
//! (`OM_BENCH_EVENTS=n` for another history size; `OM_BENCH_FOLD_ONLY=1` to time the fold
//! alone, decode+fold once, for comparing changes of `State::apply`).

use om_events::decide::{decide, parse_set, Command};
use om_events::event::{
    AppliedNetwork, Change, ConfigChanged, Event, IpAllocated, IpReleased, NodeAnnounced,
    NodeApplied, Origin, Owner,
};
use om_events::log::{fold_stored, Stored};
use om_events::subjects::Subjects;
use om_events::{Decoded, Envelope, State};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const NODES: usize = 50;
const NETWORKS: [&str; 4] = ["backend1", "backend2", "backend3", "backend4"];
/// Live leases kept around: past it, every allocation is followed by a release.
const LIVE_LEASES: usize = 5_000;
/// Runs of the decode-bound timings (each about ten seconds per million events here).
const DECODE_ROUNDS: usize = 2;
const FOLD_ROUNDS: usize = 5;

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn node(i: usize) -> String {
    format!("n{i:03}")
}

fn set(kws: &[String]) -> Command {
    Command::Set {
        node: None,
        ops: parse_set(kws).expect("valid keywords"),
    }
}

/// The history generator: folds what it generates, so that every event is valid against the
/// state it lands on.
struct Gen {
    subjects: Subjects,
    state: State,
    rng: Rng,
    out: Vec<Stored>,
    time_ms: u64,
    /// (network, node, ip, owner) of live leases.
    live: Vec<(String, String, IpAddr, Owner)>,
    next_host: u64,
    keywords: usize,
    decided_checks: usize,
    /// Segments by (network, node): `cluster.nodes` does not change after the setup.
    segments: std::collections::HashMap<(String, String), ipnet::Ipv4Net>,
    /// The events as generated, for the fold-only timing.
    envelopes: Vec<Envelope>,
}

impl Gen {
    fn push(&mut self, subject: String, event: Event) {
        let seq = self.out.len() as u64 + 1;
        self.time_ms += 1 + self.rng.below(20) as u64;
        let actor = match &event {
            Event::NodeAnnounced(a) => a.node.clone(),
            Event::NodeApplied(a) => a.node.clone(),
            _ => "root@admin".to_string(),
        };
        let env = Envelope::new(&self.subjects.cluster, &actor, self.time_ms, event);
        self.state.observe(seq, &subject);
        self.state.apply(seq, env.time_ms, &env.event);
        self.out.push(Stored {
            seq,
            subject,
            payload: env.encode(),
        });
        self.envelopes.push(env);
    }

    /// A command decided against the current state (every change it makes recorded).
    fn decided(&mut self, kws: &[String]) {
        let changes = decide(&self.state, &set(kws)).expect("valid command");
        assert!(!changes.is_empty(), "{kws:?} changes something");
        self.push(
            self.subjects.config(),
            Event::ConfigChanged(ConfigChanged { changes }),
        );
    }

    /// One operator keyword change with no derived consequence, constructed directly; every
    /// 200th one is checked against `decide` (a decision costs milliseconds here: it
    /// validates the whole configuration in every node's view).
    fn keyword(&mut self, key: String, value: String) {
        let change = Change {
            node: None,
            key: key.clone(),
            value: Some(value.clone()),
            origin: Origin::Operator,
        };
        self.keywords += 1;
        if self.keywords % 200 == 1 {
            let decided = decide(&self.state, &set(&[format!("{key}={value}")]))
                .expect("valid keyword change");
            assert_eq!(decided, vec![change.clone()], "{key}={value}");
            self.decided_checks += 1;
        }
        self.push(
            self.subjects.config(),
            Event::ConfigChanged(ConfigChanged {
                changes: vec![change],
            }),
        );
    }

    fn segment(&mut self, net: &str, node: &str) -> ipnet::Ipv4Net {
        let key = (net.to_string(), node.to_string());
        if let Some(s) = self.segments.get(&key) {
            return *s;
        }
        let seg = match self.state.config.subnets(net)[node].parse() {
            Ok(ipnet::IpNet::V4(n)) => n,
            other => panic!("segment of {node} in {net}: {other:?}"),
        };
        self.segments.insert(key, seg);
        seg
    }

    fn report(&mut self, i: usize) {
        let n = node(i);
        let networks = NETWORKS
            .iter()
            .map(|net| {
                let seg = self.segment(net, &n);
                AppliedNetwork {
                    name: net.to_string(),
                    segment: Some(ipnet::IpNet::V4(seg)),
                    gateway: Some(IpAddr::V4(Ipv4Addr::from(u32::from(seg.network()) + 1))),
                    routes: NODES as u32 - 1,
                    tunnels: (NODES / 2) as u32,
                    errors: Vec::new(),
                }
            })
            .collect();
        let seq = self.state.seq;
        self.push(
            self.subjects.node(&n),
            Event::NodeApplied(NodeApplied {
                node: n,
                seq,
                networks,
                errors: Vec::new(),
            }),
        );
    }

    fn announce(&mut self, i: usize) {
        let n = node(i);
        let addrs = vec![
            IpAddr::V4(Ipv4Addr::new(
                192,
                168,
                (i / 20) as u8,
                (i % 200) as u8 + 10,
            )),
            IpAddr::V6(format!("fd00::{i:x}").parse().expect("v6 literal")),
        ];
        self.push(
            self.subjects.node(&n),
            Event::NodeAnnounced(NodeAnnounced {
                node: n,
                addrs,
                version: "1.4.2".into(),
            }),
        );
    }

    fn allocate(&mut self) {
        let net = NETWORKS[self.rng.below(NETWORKS.len())].to_string();
        let n = node(self.rng.below(NODES));
        let seg = self.segment(&net, &n);
        let host = 2 + (self.next_host % 1000) as u32;
        self.next_host += 1;
        let ip = IpAddr::V4(Ipv4Addr::from(u32::from(seg.network()) + host));
        if self
            .state
            .leases
            .contains_key(&(net.clone(), n.clone(), ip))
        {
            return;
        }
        let owner = Owner {
            path: format!("ns{}/svc/s{}", self.rng.below(10), self.rng.below(500)),
            rid: format!("ip#{}", self.rng.below(3)),
            container_id: format!("{:016x}{:016x}", self.rng.next(), self.rng.next()),
            ifname: "eth1".into(),
            netns: String::new(),
        };
        self.live.push((net.clone(), n.clone(), ip, owner.clone()));
        self.push(
            self.subjects.ipam(&net, &n),
            Event::IpAllocated(IpAllocated {
                network: net,
                node: n,
                ip,
                owner,
            }),
        );
    }

    fn release(&mut self) {
        let k = self.rng.below(self.live.len());
        let (network, node, ip, owner) = self.live.swap_remove(k);
        self.push(
            self.subjects.ipam(&network, &node),
            Event::IpReleased(IpReleased {
                network,
                node,
                ip,
                owner,
                reason: "stop".into(),
            }),
        );
    }
}

fn generate(total: usize) -> (Vec<Stored>, Vec<Envelope>, usize) {
    let mut g = Gen {
        subjects: Subjects::new("bench"),
        state: State::default(),
        rng: Rng(7),
        out: Vec::with_capacity(total),
        time_ms: 1_796_315_323_123,
        live: Vec::new(),
        next_host: 0,
        keywords: 0,
        decided_checks: 0,
        segments: Default::default(),
        envelopes: Vec::with_capacity(total),
    };
    let nodes: Vec<String> = (0..NODES).map(node).collect();
    g.decided(&[format!("cluster.nodes={}", nodes.join(" "))]);
    for (k, net) in NETWORKS.iter().enumerate() {
        g.decided(&[
            format!("network#{net}.type=routed_bridge"),
            format!("network#{net}.network=10.{}.0.0/16", 11 + k),
            format!("network#{net}.ips_per_node=1024"),
            format!("network#{net}.tunnel_mode=vxlan"),
        ]);
    }
    g.decided(&[
        "network#local1.type=bridge".into(),
        "network#local1.network=10.10.10.0/24".into(),
    ]);
    for i in 0..NODES {
        g.announce(i);
    }
    // The mix, per 100 events: 2 configuration changes, 1 announcement, 40 reports, 57
    // allocations and releases.
    while g.out.len() < total {
        let r = g.rng.below(100);
        match r {
            0..=1 => {
                let net = NETWORKS[g.rng.below(NETWORKS.len())];
                let (key, value) = match g.rng.below(3) {
                    0 => {
                        let cur = g
                            .state
                            .config
                            .get(None, &format!("network#{net}.tunnel"))
                            .unwrap_or("auto");
                        let next = if cur == "always" { "auto" } else { "always" };
                        (format!("network#{net}.tunnel"), next.to_string())
                    }
                    1 => {
                        let cur = g
                            .state
                            .config
                            .get(None, &format!("network#{net}.tunnel_mode"))
                            .unwrap_or("vxlan");
                        let next = if cur == "vxlan" { "gre" } else { "vxlan" };
                        (format!("network#{net}.tunnel_mode"), next.to_string())
                    }
                    _ => {
                        let i = g.rng.below(NODES);
                        let v = format!("172.16.{}.{}", g.rng.below(250), g.rng.below(250) + 1);
                        (format!("network#{net}.addr@{}", node(i)), v)
                    }
                };
                if g.state.config.get(None, &key) == Some(value.as_str()) {
                    continue;
                }
                g.keyword(key, value);
            }
            2 => {
                let i = g.rng.below(NODES);
                g.announce(i);
            }
            3..=42 => {
                let i = g.rng.below(NODES);
                g.report(i);
            }
            _ => {
                if g.live.len() >= LIVE_LEASES || (!g.live.is_empty() && g.rng.below(2) == 0) {
                    g.release();
                } else {
                    g.allocate();
                }
            }
        }
    }
    g.out.truncate(total);
    g.envelopes.truncate(total);
    (g.out, g.envelopes, g.decided_checks)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Best and median of `rounds` runs of `f`.
fn time(rounds: usize, mut f: impl FnMut() -> Duration) -> (Duration, Duration) {
    let mut v: Vec<Duration> = (0..rounds).map(|_| f()).collect();
    v.sort();
    (v[0], v[v.len() / 2])
}

fn main() {
    let total: usize = std::env::var("OM_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let (stored, envelopes, checks) = generate(total);
    let bytes: usize = stored.iter().map(|m| m.payload.len()).sum();
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for env in &envelopes {
        *kinds.entry(env.event.kind()).or_default() += 1;
    }
    // Spot check: what is stored decodes to what was generated.
    for k in (0..stored.len()).step_by(997) {
        assert_eq!(
            Envelope::decode(&stored[k].payload),
            Ok(Decoded::Event(envelopes[k].clone()))
        );
    }
    println!(
        "history: {} events, {:.1} MB encoded ({:.0} bytes/event), generated in {:.1?}; {} constructed config changes checked against decide",
        stored.len(),
        bytes as f64 / 1e6,
        bytes as f64 / stored.len() as f64,
        t.elapsed(),
        checks
    );
    println!("mix: {kinds:?}");

    // OM_BENCH_FOLD_ONLY=1: only the fold-only timing (to compare changes of the fold).
    let fold_only = std::env::var_os("OM_BENCH_FOLD_ONLY").is_some();
    let mut last = State::default();
    let (best, median) = time(if fold_only { 1 } else { DECODE_ROUNDS }, || {
        let mut st = State::default();
        let t = Instant::now();
        for m in &stored {
            black_box(fold_stored(&mut st, m));
        }
        let d = t.elapsed();
        last = st;
        d
    });
    let decode_fold = rate(stored.len(), best);
    let expected_seq = stored.len() as u64;
    assert_eq!((last.seq, last.skipped), (expected_seq, 0));
    println!(
        "decode + fold (fold_stored):  best {:>9.0} events/s ({best:.2?}), median {:>9.0} events/s ({median:.2?})",
        rate(stored.len(), best),
        rate(stored.len(), median),
    );

    // Decode alone, on every 4th message (the mix is the same throughout).
    let step = if fold_only { stored.len() } else { 4 };
    let sample: Vec<&Stored> = stored.iter().step_by(step).collect();
    let (best, _) = time(1, || {
        let t = Instant::now();
        for m in &sample {
            black_box(Envelope::decode(black_box(&m.payload)).ok());
        }
        t.elapsed()
    });
    println!(
        "decode only (Envelope::decode): {:>9.0} events/s ({best:.2?} for {} events)",
        rate(sample.len(), best),
        sample.len()
    );

    let (best, median) = time(FOLD_ROUNDS, || {
        let mut st = State::default();
        let t = Instant::now();
        for (m, env) in stored.iter().zip(&envelopes) {
            st.observe(m.seq, &m.subject);
            st.apply(m.seq, env.time_ms, &env.event);
        }
        let d = t.elapsed();
        assert_eq!(st, last, "folding decoded envelopes gives the same state");
        d
    });
    println!(
        "fold only (observe + apply):  best {:>9.0} events/s ({best:.2?}), median {:>9.0} events/s ({median:.2?})",
        rate(stored.len(), best),
        rate(stored.len(), median),
    );
    println!(
        "final state: {} leases, {} reports, {} announcements, {} cluster keys, {} subjects",
        last.leases.len(),
        last.applied.len(),
        last.announced.len(),
        last.config.cluster.len(),
        last.subject_seq.len()
    );
    println!(
        "target: decode + fold >= 500000 events/s: {}",
        if decode_fold >= 500_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
