//! Given/when/then tests of the decisions, with the gold vectors of the reference (§14) and
//! the project's decisions where they differ.

use super::*;
use crate::event::{ConfigChanged, Event};

fn set(node: Option<&str>, kws: &[&str]) -> Command {
    Command::Set {
        node: node.map(Into::into),
        ops: parse_set(&kws.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
    }
}

fn unset(kws: &[&str]) -> Command {
    Command::Unset {
        node: None,
        targets: parse_unset(&kws.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
    }
}

/// Decides and folds; returns the changes.
fn run(state: &mut State, cmd: Command) -> Result<Vec<Change>, Rejected> {
    let changes = decide(state, &cmd)?;
    let seq = state.seq + 1;
    state.apply(
        seq,
        0,
        &Event::ConfigChanged(ConfigChanged {
            changes: changes.clone(),
        }),
    );
    Ok(changes)
}

fn given(cmds: &[&[&str]]) -> State {
    let mut s = State::default();
    for c in cmds {
        run(&mut s, set(None, c)).unwrap();
    }
    s
}

fn subnet(s: &State, net: &str, node: &str) -> Option<String> {
    s.config
        .get(None, &format!("network#{net}.subnet@{node}"))
        .map(str::to_string)
}

fn err(s: &State, cmd: Command) -> String {
    decide(s, &cmd).unwrap_err().to_string()
}

const BACKEND1: &[&str] = &[
    "network#backend1.type=routed_bridge",
    "network#backend1.network=10.11.0.0/16",
    "network#backend1.ips_per_node=1024",
];

#[test]
fn seed_backend1_gives_the_seed_segments_in_the_same_event() {
    let mut s = given(&[&["cluster.nodes=node1 node2 node3"]]);
    let changes = run(&mut s, set(None, BACKEND1)).unwrap();
    let derived: Vec<(String, Option<String>)> = changes
        .iter()
        .filter(|c| c.origin == Origin::Derived)
        .map(|c| (c.key.clone(), c.value.clone()))
        .collect();
    assert_eq!(
        derived,
        vec![
            (
                "network#backend1.subnet@node1".into(),
                Some("10.11.0.0/22".into())
            ),
            (
                "network#backend1.subnet@node2".into(),
                Some("10.11.4.0/22".into())
            ),
            (
                "network#backend1.subnet@node3".into(),
                Some("10.11.8.0/22".into())
            ),
        ]
    );
    assert_eq!(
        changes
            .iter()
            .filter(|c| c.origin == Origin::Operator)
            .count(),
        3
    );
    assert_eq!(
        get(&s, None, "network#backend1.subnet@node2")
            .unwrap()
            .as_deref(),
        Some("10.11.4.0/22")
    );
}

#[test]
fn gold_vectors() {
    let cases: &[(&str, usize, &str, &[&str])] = &[
        (
            "10.123.0.0/16",
            3,
            "ips_per_node=4096",
            &["10.123.0.0/20", "10.123.16.0/20", "10.123.32.0/20"],
        ),
        (
            "10.11.0.0/24",
            3,
            "ips_per_node=64",
            &["10.11.0.0/26", "10.11.0.64/26", "10.11.0.128/26"],
        ),
        (
            "fd00:1::/64",
            3,
            "ips_per_node=1024",
            &["fd00:1::/118", "fd00:1::400/118", "fd00:1::800/118"],
        ),
        (
            "fd00:1::/64",
            3,
            "ips_per_node=65536",
            &["fd00:1::/112", "fd00:1::1:0/112", "fd00:1::2:0/112"],
        ),
        (
            "172.10.8.0/22",
            3,
            "ips_per_node=256",
            &["172.10.8.0/24", "172.10.9.0/24", "172.10.10.0/24"],
        ),
        // Decision 2: mask_per_node is a prefix length.
        (
            "10.11.0.0/16",
            2,
            "mask_per_node=22",
            &["10.11.0.0/22", "10.11.4.0/22"],
        ),
    ];
    for (net, n, param, want) in cases {
        let nodes: Vec<String> = (1..=*n).map(|i| format!("n{i}")).collect();
        let mut s = given(&[&[&format!("cluster.nodes={}", nodes.join(" "))]]);
        run(
            &mut s,
            set(
                None,
                &[
                    "network#b.type=routed_bridge",
                    &format!("network#b.network={net}"),
                    &format!("network#b.{param}"),
                ],
            ),
        )
        .unwrap();
        let got: Vec<String> = nodes.iter().map(|n| subnet(&s, "b", n).unwrap()).collect();
        assert_eq!(got, *want, "{net} {param}");
    }
    // 64 nodes fit a /16 with 1024 per node, the last one at 10.11.252.0/22.
    let nodes: Vec<String> = (1..=64).map(|i| format!("n{i}")).collect();
    let mut s = given(&[&[&format!("cluster.nodes={}", nodes.join(" "))]]);
    run(
        &mut s,
        set(
            None,
            BACKEND1
                .iter()
                .map(|k| k.replace("backend1", "b"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
        ),
    )
    .unwrap();
    assert_eq!(subnet(&s, "b", "n64").as_deref(), Some("10.11.252.0/22"));
}

#[test]
fn capacity_and_power_of_two_are_checked_with_the_numbers() {
    let s = given(&[&["cluster.nodes=n1 n2 n3"]]);
    let e = err(
        &s,
        set(
            None,
            &[
                "network#b.type=routed_bridge",
                "network#b.network=10.11.0.0/24",
                "network#b.ips_per_node=128",
            ],
        ),
    );
    assert_eq!(
        e,
        "network#b.ips_per_node=128 must be <= 64: 10.11.0.0/24 has 256 addresses for 3 nodes"
    );
    let s5 = given(&[&["cluster.nodes=n1 n2 n3 n4 n5"]]);
    let e = err(
        &s5,
        set(
            None,
            &[
                "network#b.type=routed_bridge",
                "network#b.network=10.11.0.0/22",
                "network#b.ips_per_node=256",
            ],
        ),
    );
    assert_eq!(
        e,
        "network#b.ips_per_node=256 must be <= 128: 10.11.0.0/22 has 1024 addresses for 5 nodes"
    );
    let e = err(
        &s,
        set(
            None,
            &[
                "network#b.type=routed_bridge",
                "network#b.network=10.11.0.0/16",
                "network#b.ips_per_node=1000",
            ],
        ),
    );
    assert_eq!(
        e,
        "network#b.ips_per_node=1000: not a power of two, expected 512 or 1024"
    );
    let e = err(
        &s,
        set(
            None,
            &[
                "network#b.type=routed_bridge",
                "network#b.network=10.11.0.0/16",
                "network#b.ips_per_node=0",
            ],
        ),
    );
    assert!(e.starts_with("network#b.ips_per_node=0: too small"), "{e}");
    let s2 = given(&[&["cluster.nodes=n1 n2"]]);
    let e = err(
        &s2,
        set(
            None,
            &[
                "network#b.type=routed_bridge",
                "network#b.network=10.11.0.0/16",
                "network#b.mask_per_node=10",
            ],
        ),
    );
    assert_eq!(e, "network#b.mask_per_node=10 must be between 17 and 30: 10.11.0.0/16 has 65536 addresses for 2 nodes");
    // 65 nodes do not fit a /16 with 1024 per node.
    let nodes: Vec<String> = (1..=65).map(|i| format!("n{i}")).collect();
    let s = given(&[&[&format!("cluster.nodes={}", nodes.join(" "))]]);
    let e = err(&s, set(None, BACKEND1));
    assert_eq!(e, "network#backend1.ips_per_node=1024 must be <= 512: 10.11.0.0/16 has 65536 addresses for 65 nodes");
}

#[test]
fn alignment_overlap_type_and_scope_errors() {
    let s = given(&[]);
    assert_eq!(
        err(
            &s,
            set(
                None,
                &["network#b.type=bridge", "network#b.network=10.11.10.0/22"]
            )
        ),
        "network#b.network=10.11.10.0/22: base address not aligned, expected 10.11.8.0/22"
    );
    assert_eq!(
        err(
            &s,
            set(
                None,
                &["network#b.type=bridge", "network#b.network=10.22.3.0/24"]
            )
        ),
        "network#b.network=10.22.3.0/24 overlaps network#default (10.22.0.0/16)"
    );
    assert_eq!(
        err(&s, set(None, &["network#b.type=ethernet", "network#b.network=10.1.0.0/24"])),
        "network#b.type=ethernet: unknown type, expected one of bridge, routed_bridge, weave, loopback (or lo)"
    );
    assert_eq!(
        err(
            &s,
            set(
                None,
                &["network#b.type=bridge", "network#b.network=10.1.0.0"]
            )
        ),
        "network#b.network=10.1.0.0: not a CIDR, expected a CIDR such as 10.11.0.0/16, or none"
    );
    assert_eq!(
        err(&s, set(None, &["network#b.type=bridge"])),
        "network#b.network is required for type bridge: expected a CIDR such as 10.11.0.0/16, or none"
    );
    let s = given(&[BACKEND1]);
    assert_eq!(
        err(
            &s,
            set(
                None,
                &[
                    "network#backend2.type=bridge",
                    "network#backend2.network=10.11.128.0/17"
                ]
            )
        ),
        "network#backend2.network=10.11.128.0/17 overlaps network#backend1 (10.11.0.0/16)"
    );
    assert_eq!(
        err(&s, set(Some("n1"), &["network#x.type=routed_bridge", "network#x.network=10.50.0.0/16"])),
        "network#x.type=routed_bridge: a routed_bridge network spans the cluster, declare it with om cluster set, not in the layer of node n1"
    );
    assert_eq!(
        err(&s, set(Some("n1"), &["cluster.nodes=n1"])),
        "cluster.nodes: a cluster-wide keyword, set it with om cluster set, not in a node layer"
    );
    assert_eq!(
        err(&s, set(None, &["network#thisisaverylongname.type=bridge", "network#thisisaverylongname.network=10.60.0.0/16"])),
        "network#thisisaverylongname: bridge name obr_thisisaverylongname is longer than 15 characters: set network#thisisaverylongname.dev to a shorter name"
    );
    assert_eq!(
        err(&s, set(None, &["network#m.type=bridge", "network#m.network=224.0.0.0/24"])),
        "network#m.network=224.0.0.0/24: a multicast, loopback or unspecified range cannot be a bridge network, expected a unicast range such as 10.11.0.0/16"
    );
    assert_eq!(
        err(&s, set(None, &["network#t.type=bridge", "network#t.network=10.50.0.0/31"])),
        "network#t.network=10.50.0.0/31: too small for a bridge network, expected at least a /30 (network, gateway, broadcast and one address)"
    );
    // Several problems are all reported.
    let e = err(
        &s,
        set(
            None,
            &["network#c.tunnel=sometimes", "network#c.public=yes"],
        ),
    );
    assert_eq!(e.lines().count(), 2, "{e}");
}

#[test]
fn node_scoped_network_overlapping_a_cluster_one_names_the_node() {
    let s = given(&[&[
        "network#local1.type=bridge",
        "network#local1.network=10.10.10.0/24",
    ]]);
    // The same network declared again in a node layer is the same network, not an overlap.
    decide(
        &s,
        &set(
            Some("n1"),
            &[
                "network#local1.type=bridge",
                "network#local1.network=10.10.10.0/24",
            ],
        ),
    )
    .unwrap();
    assert_eq!(
        err(
            &s,
            set(
                Some("n1"),
                &[
                    "network#local2.type=bridge",
                    "network#local2.network=10.10.10.128/25"
                ]
            )
        ),
        "network#local2.network=10.10.10.128/25 overlaps network#local1 (10.10.10.0/24)"
    );
}

#[test]
fn nodes_added_later_get_the_lowest_never_assigned_segment_and_nobody_is_renumbered() {
    let mut s = given(&[&["cluster.nodes=n1 n2 n3"], BACKEND1]);
    // n2 leaves: its segment is freed, nobody moves.
    let ch = run(&mut s, set(None, &["cluster.nodes-=n2"])).unwrap();
    assert_eq!(
        ch.iter()
            .map(|c| (c.key.as_str(), c.value.as_deref(), c.origin))
            .collect::<Vec<_>>(),
        vec![
            ("cluster.nodes", Some("n1 n3"), Origin::Operator),
            ("network#backend1.subnet@n2", None, Origin::Derived)
        ]
    );
    assert_eq!(
        subnet(&s, "backend1", "n1").as_deref(),
        Some("10.11.0.0/22")
    );
    assert_eq!(
        subnet(&s, "backend1", "n3").as_deref(),
        Some("10.11.8.0/22")
    );
    // n4 joins: the lowest segment never assigned, not n2's freed one.
    run(&mut s, set(None, &["cluster.nodes+=n4"])).unwrap();
    assert_eq!(
        subnet(&s, "backend1", "n4").as_deref(),
        Some("10.11.12.0/22")
    );
    // n2 comes back: its previous segment is free, it gets it again.
    run(&mut s, set(None, &["cluster.nodes+=n2"])).unwrap();
    assert_eq!(
        subnet(&s, "backend1", "n2").as_deref(),
        Some("10.11.4.0/22")
    );
    // Reordering renumbers nobody and writes only the order.
    let ch = run(&mut s, set(None, &["cluster.nodes=n4 n3 n2 n1"])).unwrap();
    assert_eq!(ch.len(), 1);
    assert_eq!(
        subnet(&s, "backend1", "n4").as_deref(),
        Some("10.11.12.0/22")
    );
}

#[test]
fn freed_segments_are_reused_only_when_none_was_never_assigned() {
    let mut s = given(&[
        &["cluster.nodes=n1 n2"],
        &[
            "network#b.type=routed_bridge",
            "network#b.network=10.11.0.0/24",
            "network#b.ips_per_node=64",
        ],
    ]);
    run(&mut s, set(None, &["cluster.nodes+=n3 n4"])).unwrap();
    run(&mut s, set(None, &["cluster.nodes-=n2"])).unwrap();
    run(&mut s, set(None, &["cluster.nodes+=n5"])).unwrap();
    assert_eq!(subnet(&s, "b", "n5").as_deref(), Some("10.11.0.64/26"));
    let e = err(&s, set(None, &["cluster.nodes+=n6"]));
    assert_eq!(
        e,
        "network#b.ips_per_node=64 must be <= 32: 10.11.0.0/24 has 256 addresses for 5 nodes"
    );
}

#[test]
fn reshaping_an_assigned_network_is_refused() {
    let s = given(&[&["cluster.nodes=n1 n2"], BACKEND1]);
    let e = err(&s, set(None, &["network#backend1.ips_per_node=512"]));
    assert_eq!(
        e,
        "network#backend1.ips_per_node=512: segments are already assigned (n1 10.11.0.0/22, n2 10.11.4.0/22); changing the range or the segment size would renumber the nodes: unset network#backend1 and declare it again"
    );
    // Unset the section, declare again: segments start afresh.
    let mut s = s;
    run(&mut s, unset(&["network#backend1"])).unwrap();
    assert!(s.config.subnets("backend1").is_empty());
    run(
        &mut s,
        set(
            None,
            &[
                "network#backend1.type=routed_bridge",
                "network#backend1.network=10.11.0.0/16",
                "network#backend1.ips_per_node=512",
            ],
        ),
    )
    .unwrap();
    assert_eq!(
        subnet(&s, "backend1", "n2").as_deref(),
        Some("10.11.2.0/23")
    );
}

#[test]
fn a_manual_subnet_is_checked_and_kept() {
    let mut s = given(&[&["cluster.nodes=n1 n2"]]);
    run(
        &mut s,
        set(
            None,
            &[
                "network#b.type=routed_bridge",
                "network#b.network=10.11.0.0/16",
                "network#b.subnet@n1=10.11.40.0/22",
            ],
        ),
    )
    .unwrap();
    assert_eq!(subnet(&s, "b", "n1").as_deref(), Some("10.11.40.0/22"));
    assert_eq!(subnet(&s, "b", "n2").as_deref(), Some("10.11.0.0/22"));
    assert_eq!(
        err(&s, set(None, &["network#b.subnet@n2=10.11.40.0/22"])),
        "network#b.subnet@n1 and network#b.subnet@n2 are both 10.11.40.0/22: a segment belongs to one node"
    );
    assert_eq!(
        err(&s, set(None, &["network#b.subnet@n2=10.12.0.0/22"])),
        "network#b.subnet@n2=10.12.0.0/22: not an aligned /22 segment of 10.11.0.0/16"
    );
}

#[test]
fn no_op_commands_write_nothing_and_lists_keep_words_once() {
    let mut s = given(&[&["cluster.nodes=n1 n2"]]);
    assert_eq!(
        decide(&s, &set(None, &["cluster.nodes=n1 n2"])).unwrap(),
        vec![]
    );
    assert_eq!(
        decide(&s, &set(None, &["cluster.nodes+=n2"])).unwrap(),
        vec![]
    );
    assert_eq!(
        decide(&s, &unset(&["network#nothing.type"])).unwrap(),
        vec![]
    );
    run(&mut s, set(None, &["cluster.nodes-=n1 n2"])).unwrap();
    assert_eq!(get(&s, None, "cluster.nodes").unwrap(), None);
    assert_eq!(
        err(&s, set(None, &["cluster.nodes="])),
        "cluster.nodes: empty value, expected a whitespace-separated list of node names (to remove the keyword, use unset --kw cluster.nodes)"
    );
    assert_eq!(
        err(&s, set(None, &["cluster.nodes=n1 n1"])),
        "cluster.nodes=n1 n1: node n1 is listed twice, expected a whitespace-separated list of node names"
    );
}

#[test]
fn default_can_be_disabled_and_reused() {
    let mut s = given(&[&["network#default.network=none"]]);
    run(
        &mut s,
        set(
            None,
            &["network#b.type=bridge", "network#b.network=10.22.0.0/16"],
        ),
    )
    .unwrap();
    let names: Vec<String> = network::networks(&s.config, None)
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, vec!["b", "lo"]);
}

#[test]
fn node_get_sees_the_node_view() {
    let mut s = given(&[BACKEND1, &["network#backend1.addr@node1=1.2.3.4"]]);
    run(
        &mut s,
        set(Some("node2"), &["network#backend1.addr=1.2.3.5"]),
    )
    .unwrap();
    assert_eq!(
        get(&s, Some("node1"), "network#backend1.addr")
            .unwrap()
            .as_deref(),
        Some("1.2.3.4")
    );
    assert_eq!(
        get(&s, Some("node2"), "network#backend1.addr")
            .unwrap()
            .as_deref(),
        Some("1.2.3.5")
    );
    assert_eq!(get(&s, None, "network#backend1.addr").unwrap(), None);
    assert_eq!(
        get(&s, None, "network#backend1.addr@node1")
            .unwrap()
            .as_deref(),
        Some("1.2.3.4")
    );
}

#[test]
fn addr_is_an_ip_address_or_a_host_name_never_a_broken_address() {
    let s = given(&[BACKEND1, &["cluster.nodes=node1 node2"]]);
    assert_eq!(
        err(&s, set(None, &["network#backend1.addr@node1=1.2.3.999"])),
        "network#backend1.addr@node1=1.2.3.999: neither an IP address nor a host name, expected an IP address or a host name"
    );
    assert!(decide(&s, &set(None, &["network#backend1.addr@node1=192.0.2.11"])).is_ok());
    assert!(decide(
        &s,
        &set(None, &["network#backend1.addr@node1=node1.example.com"])
    )
    .is_ok());
}
