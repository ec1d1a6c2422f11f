//! The deterministic history of the fold and cold-start benchmarks, generated in memory and
//! folded as it is generated so every event is valid where it lands: 50 nodes, four
//! `routed_bridge` networks and one bridge; per 100 events, 2 configuration changes
//! (constructed, one in 200 checked against `decide`), 1 announcement, 40 `node.applied`
//! reports and 57 `ip.allocated` / `ip.released`. Shared by `events/benches/fold.rs` and
//! `tests/benches/coldstart.rs` (included by path).

use om_events::decide::{decide, parse_set, Command};
use om_events::event::{
    AppliedNetwork, Change, ConfigChanged, Event, IpAllocated, IpReleased, NodeAnnounced,
    NodeApplied, Origin, Owner,
};
use om_events::log::Stored;
use om_events::subjects::Subjects;
use om_events::{Envelope, State};
use std::net::{IpAddr, Ipv4Addr};

/// The cluster name of the generated subjects (`om.bench.ev.>`).
pub const CLUSTER: &str = "bench";

const NODES: usize = 50;
const NETWORKS: [&str; 4] = ["backend1", "backend2", "backend3", "backend4"];
/// Live leases kept around: past it, every allocation is followed by a release.
const LIVE_LEASES: usize = 5_000;

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

/// `total` events as stored messages (sequences from 1), the envelopes they encode, and
/// how many constructed events were checked against `decide`.
pub fn generate(total: usize) -> (Vec<Stored>, Vec<Envelope>, usize) {
    let mut g = Gen {
        subjects: Subjects::new(CLUSTER),
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
