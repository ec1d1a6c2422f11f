//! Snapshot + tail equals a full replay, on a generated history of 120,000 events mixing
//! every kind and two schema versions; a snapshot of an older schema is refused and the
//! reader replays from the first event, reaching the same state.

use om_events::decide::{decide, parse_set, Command};
use om_events::envelope::{encode_v1_config_set, ConfigSetV1};
use om_events::event::*;
use om_events::log::{fold_stored, Stored};
use om_events::snapshot::{self, Snapshot};
use om_events::subjects::Subjects;
use om_events::{Envelope, State};
use std::net::IpAddr;

const EVENTS: u64 = 120_000;

/// A deterministic history: config commands decided against the state as it goes,
/// announcements, reports, allocations and releases, and a few schema-1 events.
fn history() -> &'static [Stored] {
    static H: std::sync::OnceLock<Vec<Stored>> = std::sync::OnceLock::new();
    H.get_or_init(generate)
}

fn generate() -> Vec<Stored> {
    let s = Subjects::new("gen");
    let mut state = State::default();
    let mut out = Vec::new();
    let push = |out: &mut Vec<Stored>, state: &mut State, subject: String, payload: Vec<u8>| {
        let m = Stored {
            seq: out.len() as u64 + 1,
            subject,
            payload,
        };
        fold_stored(state, &m);
        out.push(m);
    };
    let nodes: Vec<String> = (1..=8).map(|i| format!("n{i}")).collect();
    let mut i = 0u64;
    while (out.len() as u64) < EVENTS {
        i += 1;
        let t = 1_700_000_000_000 + i;
        let env = |ev: Event| {
            let mut e = Envelope::new("gen", "gen@host", t, ev);
            e.id = uuid::Uuid::from_u128(i as u128);
            e
        };
        match i % 10 {
            0 if i.is_multiple_of(50) => {
                // Declare or drop a network, or move nodes in and out.
                let kws: Vec<String> = match (i / 50) % 4 {
                    0 => vec![format!(
                        "cluster.nodes={}",
                        nodes[..(3 + (i as usize / 200) % 6)].join(" ")
                    )],
                    1 => {
                        let k = (i / 200) % 200;
                        vec![
                            format!("network#net{k}.type=routed_bridge"),
                            format!(
                                "network#net{k}.network=10.{}.{}.0/24",
                                100 + k / 100,
                                (k % 100) * 2
                            ),
                            "x".into(),
                        ]
                    }
                    2 => vec![format!("network#net{}.tunnel=always", (i / 200) % 200)],
                    _ => vec![format!("network#net{}.tunnel=auto", (i / 200) % 200)],
                };
                let mut kws: Vec<String> = kws.into_iter().filter(|k| k != "x").collect();
                if kws.len() == 2 {
                    kws.push(format!("network#net{}.ips_per_node=4", (i / 200) % 200));
                }
                let cmd = Command::Set {
                    node: None,
                    ops: parse_set(&kws).unwrap(),
                };
                if let Ok(changes) = decide(&state, &cmd) {
                    if !changes.is_empty() {
                        let e = env(Event::ConfigChanged(ConfigChanged { changes }));
                        push(&mut out, &mut state, s.config(), e.encode());
                    }
                }
            }
            0 | 1 if i % 1000 == 1 => {
                // A schema-1 writer's event, upcast on read.
                let v1 = ConfigSetV1 {
                    set: [(format!("network#old{}.type", i % 7), "bridge".to_string())].into(),
                    unset: vec![],
                };
                push(
                    &mut out,
                    &mut state,
                    s.config(),
                    encode_v1_config_set("gen", "v1@host", t, &v1),
                );
            }
            1..=2 => {
                let n = &nodes[(i as usize) % nodes.len()];
                let ip: IpAddr = format!("192.0.2.{}", 10 + (i % 8)).parse().unwrap();
                let e = env(Event::NodeAnnounced(NodeAnnounced {
                    node: n.clone(),
                    addrs: vec![ip],
                    version: format!("v{}", i % 3),
                }));
                push(&mut out, &mut state, s.node(n), e.encode());
            }
            3..=5 => {
                let n = &nodes[(i as usize) % nodes.len()];
                let e = env(Event::NodeApplied(NodeApplied {
                    node: n.clone(),
                    seq: out.len() as u64,
                    networks: vec![AppliedNetwork {
                        name: "net1".into(),
                        segment: Some("10.100.2.0/30".parse().unwrap()),
                        gateway: Some("10.100.2.1".parse().unwrap()),
                        routes: (i % 5) as u32,
                        tunnels: (i % 2) as u32,
                        errors: vec![],
                    }],
                    errors: vec![],
                }));
                push(&mut out, &mut state, s.node(n), e.encode());
            }
            _ => {
                let slot = i % 5000;
                let ip: IpAddr = format!("10.200.{}.{}", slot / 250, 2 + slot % 250)
                    .parse()
                    .unwrap();
                let owner = Owner {
                    path: format!("ns/svc/s{slot}"),
                    rid: "ip#0".into(),
                    container_id: format!("c{slot}"),
                    ifname: "eth0".into(),
                    netns: String::new(),
                };
                let ev = if (i / 5000).is_multiple_of(2) {
                    Event::IpAllocated(IpAllocated {
                        network: "lease".into(),
                        node: "n1".into(),
                        ip,
                        owner,
                    })
                } else {
                    Event::IpReleased(IpReleased {
                        network: "lease".into(),
                        node: "n1".into(),
                        ip,
                        owner,
                        reason: "stop".into(),
                    })
                };
                push(
                    &mut out,
                    &mut state,
                    s.ipam("lease", "n1"),
                    env(ev).encode(),
                );
            }
        }
    }
    out
}

fn fold(from: State, msgs: &[Stored]) -> State {
    let mut st = from;
    for m in msgs {
        fold_stored(&mut st, m);
    }
    st
}

#[test]
fn snapshot_plus_tail_equals_full_replay() {
    let h = history();
    assert_eq!(h.len() as u64, EVENTS);
    let full = fold(State::default(), h);
    // The history is not trivial: networks, segments, leases, reports, upcast events.
    assert!(om_events::network::networks(&full.config, None).len() > 100);
    assert!(!full.leases.is_empty() && full.applied.len() == 8 && full.announced.len() == 8);
    assert!(full
        .config
        .cluster
        .keys()
        .any(|k| k.starts_with("network#old")));
    assert_eq!(full.skipped, 0);
    for cut in [1u64, 59_999, 100_000, EVENTS] {
        let head = fold(State::default(), &h[..cut as usize]);
        let bytes = snapshot::encode(head.seq, &head);
        let snap: Snapshot<State> =
            snapshot::decode("test", &bytes).expect("current-schema snapshot");
        assert_eq!(snap.seq, cut);
        let resumed = fold(snap.state, &h[cut as usize..]);
        assert_eq!(resumed, full, "snapshot at {cut} + tail");
    }
}

#[test]
fn an_older_schema_snapshot_is_refused_and_replay_gives_the_same_state() {
    let h = history();
    let full = fold(State::default(), h);
    // A schema-1 snapshot (its state layout is not this one's).
    #[derive(serde::Serialize)]
    struct V1State {
        config: std::collections::BTreeMap<String, String>,
    }
    let old = om_events::query::encode(&Snapshot {
        schema: 1,
        seq: 60_000,
        state: V1State {
            config: [("cluster.nodes".to_string(), "n1".to_string())].into(),
        },
    });
    assert!(snapshot::decode::<State>("old", &old).is_none());
    // The reader's fallback: replay from the first event.
    let replayed = fold(State::default(), h);
    assert_eq!(replayed, full);
    // Garbage is refused too.
    assert!(snapshot::decode::<State>("bad", b"\xff\x00").is_none());
}

#[test]
fn one_pass_and_two_step_decodes_agree_on_every_event() {
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for m in history() {
        let one = Envelope::decode(&m.payload);
        assert_eq!(one, Envelope::decode_two_steps(&m.payload), "seq {}", m.seq);
        if let Ok(om_events::Decoded::Event(e)) = one {
            *kinds
                .entry(format!("{} v{}", e.event.kind(), e.schema))
                .or_default() += 1;
        }
    }
    // Every kind of the generated history went through the one-pass decode.
    assert!(kinds.len() >= 6, "{kinds:?}");
    assert!(kinds.contains_key("config.changed v1"), "{kinds:?}");
}
