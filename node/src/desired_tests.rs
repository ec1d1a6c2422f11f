use super::*;
use om_events::decide::{decide, parse_set, Command};
use om_events::event::{ConfigChanged, Event, NodeAnnounced};

fn state(cmds: &[&[&str]]) -> State {
    let mut s = State::default();
    for c in cmds {
        let cmd = Command::Set {
            node: None,
            ops: parse_set(&c.iter().map(|x| x.to_string()).collect::<Vec<_>>()).unwrap(),
        };
        let changes = decide(&s, &cmd).unwrap();
        let seq = s.seq + 1;
        s.apply(seq, 0, &Event::ConfigChanged(ConfigChanged { changes }));
    }
    s
}

fn announce(s: &mut State, node: &str, ip: &str) {
    let seq = s.seq + 1;
    s.apply(
        seq,
        0,
        &Event::NodeAnnounced(NodeAnnounced {
            node: node.into(),
            addrs: vec![ip.parse().unwrap(), "127.0.0.1".parse().unwrap()],
            version: "t".into(),
        }),
    );
}

fn facts(addr: &str) -> Facts {
    Facts {
        addresses: vec![InterfaceAddress {
            link: "eth0".into(),
            address: addr.parse().unwrap(),
        }],
        resolved: BTreeMap::new(),
        tables: parse_rt_tables(
            "255\tlocal\n254\tmain\n253\tdefault\n0\tunspec\n# comment\n100 backend\n",
        ),
        state_dir: "/var/lib/om-node".into(),
    }
}

const BACKEND: &[&str] = &[
    "network#backend.type=routed_bridge",
    "network#backend.network=10.11.0.0/16",
    "network#backend.ips_per_node=1024",
];

/// The three-host bed: n1 and n2 share 192.0.2.0/24, n3 is on 198.51.100.0/24.
fn bed(extra: &[&str]) -> State {
    let mut s = state(&[&["cluster.nodes=n1 n2 n3"], BACKEND, extra]);
    announce(&mut s, "n1", "192.0.2.11");
    announce(&mut s, "n2", "192.0.2.12");
    announce(&mut s, "n3", "198.51.100.13");
    s
}

fn routes(d: &Desired) -> Vec<String> {
    d.routes.iter().map(|r| r.to_string()).collect()
}

#[test]
fn gold_cni_config_for_node2() {
    let s = state(&[&["cluster.nodes=node1 node2"], BACKEND]);
    let d = desired(&s, "node2", &facts("192.0.2.12/24"));
    assert_eq!(
        d.cni_files["backend.conf"],
        r#"{
   "bridge": "obr_backend",
   "cniVersion": "0.3.0",
   "ipMasq": false,
   "ipam": {
      "routes": [
         {
            "dst": "0.0.0.0/0"
         },
         {
            "dst": "10.11.0.0/16",
            "gw": "10.11.4.1"
         }
      ],
      "socket": "/var/lib/om-node/ipam.sock",
      "subnet": "10.11.4.0/22",
      "type": "om-ipam"
   },
   "isGateway": true,
   "name": "backend",
   "type": "bridge"
}"#
    );
    assert_eq!(
        d.cni_files["lo.conf"],
        "{\n   \"cniVersion\": \"0.3.0\",\n   \"name\": \"lo\",\n   \"type\": \"loopback\"\n}"
    );
    assert!(d.cni_files["default.conf"].contains("\"subnet\": \"10.22.0.0/16\""));
    assert_eq!(d.cni_dir, PathBuf::from("/opt/cni/net.d"));
}

#[test]
fn bridges_have_the_gateway_address_and_pinned_mac() {
    let s = state(&[&["cluster.nodes=node1 node2"], BACKEND]);
    let d = desired(&s, "node2", &facts("192.0.2.12/24"));
    let got: Vec<(String, String, String)> = d
        .bridges
        .iter()
        .map(|b| {
            (
                b.name.clone(),
                b.address.to_string(),
                b.mac.unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "obr_backend".into(),
                "10.11.4.1/22".into(),
                "0a:58:0a:0b:04:01".into()
            ),
            (
                "obr_default".into(),
                "10.22.0.1/16".into(),
                "0a:58:0a:16:00:01".into()
            ),
        ]
    );
}

#[test]
fn auto_routes_directly_on_the_same_subnet_and_tunnels_elsewhere() {
    let s = bed(&["network#backend.tunnel_mode=vxlan"]);
    let d = desired(&s, "n1", &facts("192.0.2.11/24"));
    let n3 = tunnel_name("198.51.100.13".parse().unwrap());
    assert_eq!(n3, "tunc633640d");
    assert_eq!(
        routes(&d),
        vec![
            "10.11.4.0/22 via 192.0.2.12 table 254".to_string(),
            format!("10.11.8.0/22 via 10.11.8.1 dev {n3} onlink table 254"),
        ]
    );
    assert_eq!(d.tunnels.len(), 1);
    let t = &d.tunnels[0];
    assert_eq!(
        (t.local.to_string(), t.remote.to_string()),
        ("192.0.2.11".into(), "198.51.100.13".into())
    );
    // The far end computes the same VNI.
    let d3 = desired(&s, "n3", &facts("198.51.100.13/24"));
    let back = d3
        .tunnels
        .iter()
        .find(|x| x.remote.to_string() == "192.0.2.11")
        .unwrap();
    assert_eq!(back.mode, t.mode);
    assert_eq!(back.name, "tunc000020b");
    assert_eq!(
        d3.tunnels.len(),
        2,
        "n3 reaches both n1 and n2 through tunnels"
    );
    assert_eq!(
        d.report
            .iter()
            .find(|r| r.name == "backend")
            .unwrap()
            .routes,
        2
    );
}

#[test]
fn always_tunnels_to_everyone_ipip_by_default() {
    let s = bed(&[
        "network#backend.tunnel=always",
        "network#backend.tables=main backend",
    ]);
    let d = desired(&s, "n1", &facts("192.0.2.11/24"));
    assert_eq!(
        routes(&d),
        vec![
            "10.11.4.0/22 dev tunc000020c src 10.11.0.1 table 100",
            "10.11.4.0/22 dev tunc000020c src 10.11.0.1 table 254",
            "10.11.8.0/22 dev tunc633640d src 10.11.0.1 table 100",
            "10.11.8.0/22 dev tunc633640d src 10.11.0.1 table 254",
        ]
    );
    assert!(d.tunnels.iter().all(|t| t.mode == TunnelMode::IpIp));
}

#[test]
fn never_reports_the_unreachable_peer_and_configures_the_others() {
    let s = bed(&["network#backend.tunnel=never"]);
    let d = desired(&s, "n1", &facts("192.0.2.11/24"));
    assert_eq!(routes(&d), vec!["10.11.4.0/22 via 192.0.2.12 table 254"]);
    let rep = d.report.iter().find(|r| r.name == "backend").unwrap();
    assert_eq!(
        rep.errors,
        vec!["network#backend: peer n3 at 198.51.100.13 is not on a directly connected subnet and tunnel=never"]
    );
}

#[test]
fn addr_at_peer_wins_over_announcements_and_loopback_is_never_an_endpoint() {
    let s = bed(&["network#backend.addr@n2=192.0.2.99"]);
    let d = desired(&s, "n1", &facts("192.0.2.11/24"));
    assert_eq!(routes(&d)[0], "10.11.4.0/22 via 192.0.2.99 table 254");
    let mut s = state(&[&["cluster.nodes=n1 n2"], BACKEND]);
    announce(&mut s, "n1", "192.0.2.11");
    let d = desired(&s, "n1", &facts("192.0.2.11/24"));
    let rep = d.report.iter().find(|r| r.name == "backend").unwrap();
    assert_eq!(
        rep.errors,
        vec!["network#backend: no endpoint address for peer n2 (it has not announced one and its name does not resolve; set network#backend.addr@n2)"]
    );
    assert!(!usable_endpoint(&"127.0.1.1".parse().unwrap()));
    assert!(!usable_endpoint(&"fe80::1".parse().unwrap()));
}

#[test]
fn unknown_table_is_an_error_of_that_network() {
    let s = bed(&["network#backend.tables=nosuchtable"]);
    let d = desired(&s, "n1", &facts("192.0.2.11/24"));
    assert!(d.routes.is_empty());
    let rep = d.report.iter().find(|r| r.name == "backend").unwrap();
    assert_eq!(
        rep.errors,
        vec!["network#backend.tables: routing table \"nosuchtable\" not found in rt_tables"]
    );
}

#[test]
fn a_node_outside_cluster_nodes_applies_only_its_own_networks() {
    let mut s = state(&[&["cluster.nodes=n1"], BACKEND]);
    let cmd = Command::Set {
        node: Some("x9".into()),
        ops: parse_set(&[
            "network#local1.type=bridge".into(),
            "network#local1.network=10.10.10.0/24".into(),
        ])
        .unwrap(),
    };
    let changes = decide(&s, &cmd).unwrap();
    s.apply(9, 0, &Event::ConfigChanged(ConfigChanged { changes }));
    let d = desired(&s, "x9", &facts("192.0.2.50/24"));
    assert_eq!(
        d.bridges
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>(),
        vec!["obr_local1"]
    );
    assert_eq!(d.cni_files.keys().collect::<Vec<_>>(), vec!["local1.conf"]);
    assert_eq!(d.notes, vec!["node x9 is not in cluster.nodes: only its node-scoped networks are applied (not backend, default, lo)"]);
}

#[test]
fn tunnel_names_are_unambiguous() {
    // Upstream's dotless names collide: 10.1.11.1 and 10.11.1.1 both give tun101111.
    let a = tunnel_name("10.1.11.1".parse().unwrap());
    let b = tunnel_name("10.11.1.1".parse().unwrap());
    assert_ne!(a, b);
    assert!(a.len() <= 15 && tunnel_name("fd00::1".parse().unwrap()).len() <= 15);
    assert_eq!(
        vxlan_vni(
            "192.0.2.11".parse().unwrap(),
            "198.51.100.13".parse().unwrap()
        ),
        vxlan_vni(
            "198.51.100.13".parse().unwrap(),
            "192.0.2.11".parse().unwrap()
        )
    );
}
