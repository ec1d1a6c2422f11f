//! The node daemon end to end, on real netlink in real namespaces: three `om-node`
//! processes on the three-host bed (h1 and h2 on 192.0.2.0/24, h3 on 198.51.100.0/24, a
//! router between), `nats-server` and `om-projector` in the router namespace, configuration
//! driven with the `om` binary. The real twin of `node/tests/sim.rs`.
//!
//! After each change the test waits (bounded) until every daemon reported the change's
//! sequence on the stream, then reads every host's kernel back through the rtnetlink
//! dataplane and compares the EXACT sets: owned routes (protocol 165), tunnels (name, vxlan
//! id, local, remote), bridges (address, MAC), and the CNI files. Containers attached by the
//! real CNI `bridge` plugin from the files the daemons wrote prove the plumbing carries
//! traffic: h1's container reaches h2's directly and h3's through vxlan.
//!
//! Run: `cargo build --release -p om-node -p om-cli -p om-projector` then
//! `cargo test --release -p om-tests --test node_e2e -- --nocapture` (as root).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use om_events::view::NetworkStatus;
use om_events::State;
use om_node::dataplane::{Dataplane, LinkFilter, LinkKind, RtnetlinkDataplane, OM_ROUTE_PROTOCOL};
use om_node::desired::vxlan_vni;
use om_tests::netns::cni::{self, cni_skip_reason, CNI_BIN_DIR};
use om_tests::netns::{reap_stale, wait_ping, Netns, TestBed};
use om_tests::nodebed::{in_netns, skip_reason, Bins, NodeBed, Options};
use om_tests::skip::skip;

const ALL: [&str; 3] = ["n1", "n2", "n3"];
/// Bound of every convergence wait (a change takes well under a second here).
const CONVERGE: Duration = Duration::from_secs(10);
const PING: Duration = Duration::from_secs(5);

const BACKEND1: [&str; 4] = [
    "network#backend1.type=routed_bridge",
    "network#backend1.network=10.11.0.0/16",
    "network#backend1.ips_per_node=1024",
    "network#backend1.tunnel_mode=vxlan",
];

/// What a host's kernel holds of ours, read back through the dataplane; sorted.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Plumbing {
    /// `name address mac up`
    bridges: Vec<String>,
    /// `name vxlan id VNI dstport 4789 local A remote B up`
    tunnels: Vec<String>,
    /// `ip route` style, protocol 165 only, every table.
    routes: Vec<String>,
}

async fn plumbing(ns: &Netns) -> Plumbing {
    let dp = RtnetlinkDataplane::in_netns(ns.name()).await.unwrap();
    let links = dp
        .links(&LinkFilter::prefixes(["obr_", "tun"]))
        .await
        .unwrap();
    let up = |u: bool| if u { "up" } else { "down" };
    let mut bridges = Vec::new();
    let mut tunnels = Vec::new();
    for l in &links {
        match (&l.kind, &l.tunnel) {
            (LinkKind::Bridge, _) => bridges.push(format!(
                "{} {} {} {}",
                l.name,
                l.addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                l.mac.map(|m| m.to_string()).unwrap_or_default(),
                up(l.up)
            )),
            (_, Some(t)) => tunnels.push(format!(
                "{} {} local {} remote {} {}",
                l.name,
                t.mode,
                t.local.map(|a| a.to_string()).unwrap_or_default(),
                t.remote.map(|a| a.to_string()).unwrap_or_default(),
                up(l.up)
            )),
            _ => tunnels.push(format!("{} {:?} (not a tunnel?)", l.name, l.kind)),
        }
    }
    let mut routes: Vec<String> = dp
        .routes(OM_ROUTE_PROTOCOL)
        .await
        .unwrap()
        .iter()
        .map(|r| r.to_string())
        .collect();
    bridges.sort();
    tunnels.sort();
    routes.sort();
    Plumbing {
        bridges,
        tunnels,
        routes,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A vxlan tunnel as read back: its id is the one both ends derive from the pair.
fn vxlan(name: &str, local: &str, remote: &str) -> String {
    format!(
        "{name} vxlan id {} dstport 4789 local {local} remote {remote} up",
        vxlan_vni(ip(local), ip(remote))
    )
}

const OBR_DEFAULT: &str = "obr_default 10.22.0.1/16 0a:58:0a:16:00:01 up";

fn expect(bridge: &str, tunnels: &[String], routes: &[&str]) -> Plumbing {
    let mut p = Plumbing {
        bridges: vec![bridge.to_string(), OBR_DEFAULT.to_string()],
        tunnels: tunnels.to_vec(),
        routes: routes.iter().map(|s| s.to_string()).collect(),
    };
    p.bridges.sort();
    p.tunnels.sort();
    p.routes.sort();
    p
}

const NOTHING: Plumbing = Plumbing {
    bridges: Vec::new(),
    tunnels: Vec::new(),
    routes: Vec::new(),
};

const BR1: &str = "obr_backend1 10.11.0.1/22 0a:58:0a:0b:00:01 up";
const BR2: &str = "obr_backend1 10.11.4.1/22 0a:58:0a:0b:04:01 up";
const BR3: &str = "obr_backend1 10.11.8.1/22 0a:58:0a:0b:08:01 up";

/// The seed's backend1 with tunnel=auto: h1 and h2 route to each other directly, both
/// tunnel to h3.
fn base() -> [Plumbing; 3] {
    [
        expect(
            BR1,
            &[vxlan("tunc633640d", "192.0.2.11", "198.51.100.13")],
            &[
                "10.11.4.0/22 via 192.0.2.12 dev eth0 table 254",
                "10.11.8.0/22 via 10.11.8.1 dev tunc633640d onlink table 254",
            ],
        ),
        expect(
            BR2,
            &[vxlan("tunc633640d", "192.0.2.12", "198.51.100.13")],
            &[
                "10.11.0.0/22 via 192.0.2.11 dev eth0 table 254",
                "10.11.8.0/22 via 10.11.8.1 dev tunc633640d onlink table 254",
            ],
        ),
        expect(
            BR3,
            &[
                vxlan("tunc000020b", "198.51.100.13", "192.0.2.11"),
                vxlan("tunc000020c", "198.51.100.13", "192.0.2.12"),
            ],
            &[
                "10.11.0.0/22 via 10.11.0.1 dev tunc000020b onlink table 254",
                "10.11.4.0/22 via 10.11.4.1 dev tunc000020c onlink table 254",
            ],
        ),
    ]
}

/// The CNI `bridge` network file, as the reference formats it.
fn bridge_conf(name: &str, subnet: &str, whole: &str, gw: &str, state_dir: &Path) -> String {
    format!(
        r#"{{
   "bridge": "obr_{name}",
   "cniVersion": "0.3.0",
   "ipMasq": false,
   "ipam": {{
      "routes": [
         {{
            "dst": "0.0.0.0/0"
         }},
         {{
            "dst": "{whole}",
            "gw": "{gw}"
         }}
      ],
      "socket": "{socket}",
      "subnet": "{subnet}",
      "type": "om-ipam"
   }},
   "isGateway": true,
   "name": "{name}",
   "type": "bridge"
}}"#,
        socket = state_dir.join("ipam.sock").display()
    )
}

const LO_CONF: &str =
    "{\n   \"cniVersion\": \"0.3.0\",\n   \"name\": \"lo\",\n   \"type\": \"loopback\"\n}";

/// Every entry of a directory: name ⇒ content (nothing when it does not exist).
fn dir_files(dir: &Path) -> BTreeMap<String, String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    rd.flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap_or_else(|e| format!("<unreadable: {e}>")),
            )
        })
        .collect()
}

/// The CNI files of a node of backend1 with this segment.
fn cni_expected(state_dir: &Path, segment: &str, gw: &str) -> BTreeMap<String, String> {
    [
        (
            "backend1.conf".to_string(),
            bridge_conf("backend1", segment, "10.11.0.0/16", gw, state_dir),
        ),
        (
            "default.conf".to_string(),
            bridge_conf(
                "default",
                "10.22.0.0/16",
                "10.22.0.0/16",
                "10.22.0.1",
                state_dir,
            ),
        ),
        ("lo.conf".to_string(), LO_CONF.to_string()),
    ]
    .into()
}

const SEGMENTS: [(&str, &str); 3] = [
    ("10.11.0.0/22", "10.11.0.1"),
    ("10.11.4.0/22", "10.11.4.1"),
    ("10.11.8.0/22", "10.11.8.1"),
];

/// Every host's plumbing is exactly `want` (None: not compared).
async fn assert_plumbing(nb: &NodeBed<'_>, want: [Option<&Plumbing>; 3], when: &str) {
    for (i, w) in want.iter().enumerate() {
        let Some(w) = w else { continue };
        let n = ALL[i];
        let got = plumbing(&nb.host(n).ns).await;
        assert_eq!(&got, *w, "{when}: kernel objects of {n}");
    }
}

/// No node reports an error (its own or a network's).
fn assert_no_errors(st: &State, nodes: &[&str]) {
    for n in nodes {
        let a = &st.applied[*n].report;
        assert!(a.errors.is_empty(), "{n} reports {:?}", a.errors);
        for net in &a.networks {
            assert!(
                net.errors.is_empty(),
                "{n} network {}: {:?}",
                net.name,
                net.errors
            );
        }
    }
}

/// A container attached by the CNI plugin named in a written network file, with that
/// file's content as the network configuration; DEL on drop, then its namespace goes.
struct Container {
    host: String,
    plugin: PathBuf,
    conf: String,
    ns: Netns,
    ip: Ipv4Addr,
}

fn cni(host: &str, plugin: &Path, conf: &str, command: &str, ns: &Netns) -> anyhow::Result<String> {
    cni::invoke(host, plugin, conf, command, ns)
}

impl Container {
    fn attach(host: &Netns, label: &str, conf_file: &Path) -> Container {
        let conf = std::fs::read_to_string(conf_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", conf_file.display()));
        let v: serde_json::Value = serde_json::from_str(&conf).unwrap();
        let plugin = Path::new(CNI_BIN_DIR).join(v["type"].as_str().unwrap());
        let ns = Netns::new(label).unwrap();
        let out = cni(host.name(), &plugin, &conf, "ADD", &ns)
            .unwrap_or_else(|e| panic!("CNI ADD {label} on {}: {e:#}", host.name()));
        let result: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ip: Ipv4Net = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in the CNI result {out}"));
        Container {
            host: host.name().to_string(),
            plugin,
            conf,
            ns,
            ip: ip.addr(),
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = cni(&self.host, &self.plugin, &self.conf, "DEL", &self.ns) {
            eprintln!("CNI DEL of {}: {e:#}", self.ns.name());
        }
    }
}

fn ping(from: &Container, to: &Container, what: &str) -> Duration {
    wait_ping(&from.ns, to.ip, None, PING)
        .unwrap_or_else(|e| panic!("{what}: {} -> {}: {e:#}", from.ip, to.ip))
}

/// Prints one step's timing (shown with --nocapture).
fn step(what: &str, took: Duration) {
    eprintln!("node_e2e: {what}: {took:?}");
}

#[test]
fn three_daemons_converge_and_reconverge() {
    const TEST: &str = "node_e2e::three_daemons_converge_and_reconverge";
    if let Some(reason) = skip_reason().or_else(cni_skip_reason) {
        skip(TEST, &reason);
        return;
    }
    reap_stale();
    let bins = Bins::find().unwrap();
    let start = Instant::now();
    let bed = TestBed::three_hosts().unwrap();
    in_netns(&bed.router, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario(&bed, bins))
    });
    drop(bed);
    step("whole test", start.elapsed());
}

async fn scenario(bed: &TestBed, bins: Bins) {
    let t = Instant::now();
    let mut nb = NodeBed::start(bed, bins, Options::three_nodes())
        .await
        .unwrap();
    step(
        "server, projector and three daemons up and announced",
        t.elapsed(),
    );
    let (h1, h2, h3) = (nb.host("n1"), nb.host("n2"), nb.host("n3"));

    // Every host shares this filesystem: each node writes its CNI files to a directory of
    // its own, set in its node layer (`cni.config` takes no @node scope).
    for n in ALL {
        let dir = nb.node(n).cni_dir.display().to_string();
        nb.node_set(n, &[&format!("cni.config={dir}")])
            .await
            .unwrap();
    }
    nb.set(&["cluster.nodes=n1 n2 n3"]).await.unwrap();
    let t = Instant::now();
    let seq = nb.set(&BACKEND1).await.unwrap();
    let took = nb.wait_applied(&ALL, seq, CONVERGE).await.unwrap();
    step(
        "backend1 declared: om cluster set until every node applied it",
        t.elapsed(),
    );
    step("  of which waiting for the reports", took);
    assert_no_errors(&nb.state, &ALL);
    let base = base();
    assert_plumbing(
        &nb,
        [Some(&base[0]), Some(&base[1]), Some(&base[2])],
        "backend1 declared",
    )
    .await;
    for (i, n) in ALL.iter().enumerate() {
        let node = nb.node(n);
        assert_eq!(
            dir_files(&node.cni_dir),
            cni_expected(&node.state_dir, SEGMENTS[i].0, SEGMENTS[i].1),
            "CNI files of {n}"
        );
    }
    // What the operator sees.
    let status: Vec<NetworkStatus> =
        serde_json::from_str(&nb.om(&["network", "status", "--verbose"]).await.unwrap()).unwrap();
    let b1 = status
        .iter()
        .find(|s| s.name == "backend1")
        .expect("backend1 in om net status");
    // node segment gateway, whether it applied `seq`, its errors
    let rows: Vec<String> = b1
        .nodes
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {:?}",
                r.node,
                r.segment.as_deref().unwrap_or("-"),
                r.gateway.as_deref().unwrap_or("-"),
                r.applied_seq.is_some_and(|s| s >= seq),
                r.errors
            )
        })
        .collect();
    let want: Vec<String> = ALL
        .iter()
        .zip(SEGMENTS)
        .map(|(n, (s, g))| format!("{n} {s} {g} true []"))
        .collect();
    assert_eq!(rows, want, "om net status --verbose, backend1's node rows");

    // Containers on the written CNI files.
    let cfile = |n: &str| nb.node(n).cni_dir.join("backend1.conf");
    let c1 = Container::attach(&h1.ns, "c1", &cfile("n1"));
    let c2 = Container::attach(&h2.ns, "c2", &cfile("n2"));
    let c3 = Container::attach(&h3.ns, "c3", &cfile("n3"));
    for (c, (seg, _)) in [&c1, &c2, &c3].iter().zip(SEGMENTS) {
        let seg: Ipv4Net = seg.parse().unwrap();
        assert!(seg.contains(&c.ip), "{} outside {seg}", c.ip);
    }
    step("h1 -> h2 container, direct route", ping(&c1, &c2, "direct"));
    step("h1 -> h3 container, vxlan", ping(&c1, &c3, "vxlan"));
    step("h3 -> h2 container, vxlan", ping(&c3, &c2, "vxlan"));
    // The plugin left our bridges as they were (address, pinned MAC).
    assert_plumbing(
        &nb,
        [Some(&base[0]), Some(&base[1]), Some(&base[2])],
        "containers attached",
    )
    .await;

    // tunnel=always: h1 and h2 tunnel to each other too.
    let t = Instant::now();
    let seq = nb.set(&["network#backend1.tunnel=always"]).await.unwrap();
    nb.wait_applied(&ALL, seq, CONVERGE).await.unwrap();
    step("tunnel=always applied everywhere", t.elapsed());
    let always = [
        expect(
            BR1,
            &[
                vxlan("tunc000020c", "192.0.2.11", "192.0.2.12"),
                vxlan("tunc633640d", "192.0.2.11", "198.51.100.13"),
            ],
            &[
                "10.11.4.0/22 via 10.11.4.1 dev tunc000020c onlink table 254",
                "10.11.8.0/22 via 10.11.8.1 dev tunc633640d onlink table 254",
            ],
        ),
        expect(
            BR2,
            &[
                vxlan("tunc000020b", "192.0.2.12", "192.0.2.11"),
                vxlan("tunc633640d", "192.0.2.12", "198.51.100.13"),
            ],
            &[
                "10.11.0.0/22 via 10.11.0.1 dev tunc000020b onlink table 254",
                "10.11.8.0/22 via 10.11.8.1 dev tunc633640d onlink table 254",
            ],
        ),
        base[2].clone(),
    ];
    assert_plumbing(
        &nb,
        [Some(&always[0]), Some(&always[1]), Some(&always[2])],
        "tunnel=always",
    )
    .await;
    step(
        "h1 -> h2 container, now through vxlan",
        ping(&c1, &c2, "always"),
    );

    // Back to auto: exactly the first sets again.
    let t = Instant::now();
    let seq = nb.set(&["network#backend1.tunnel=auto"]).await.unwrap();
    nb.wait_applied(&ALL, seq, CONVERGE).await.unwrap();
    step("tunnel=auto applied everywhere", t.elapsed());
    assert_plumbing(
        &nb,
        [Some(&base[0]), Some(&base[1]), Some(&base[2])],
        "tunnel=auto",
    )
    .await;
    ping(&c1, &c2, "auto again");

    // addr@n3: h3 gets a second underlay address and the tunnels to it use that one.
    h3.ns
        .ip(&["addr", "add", "198.51.100.113/24", "dev", "eth0"])
        .unwrap();
    let took = nb
        .wait_until(CONVERGE, "n3 announced 198.51.100.113", |st| {
            st.announced["n3"].addrs.contains(&ip("198.51.100.113"))
        })
        .await
        .unwrap();
    step("n3 announced its new address (periodic reconcile)", took);
    let t = Instant::now();
    let seq = nb
        .set(&["network#backend1.addr@n3=198.51.100.113"])
        .await
        .unwrap();
    nb.wait_applied(&ALL, seq, CONVERGE).await.unwrap();
    step("addr@n3 applied everywhere", t.elapsed());
    let moved = [
        expect(
            BR1,
            &[vxlan("tunc6336471", "192.0.2.11", "198.51.100.113")],
            &[
                "10.11.4.0/22 via 192.0.2.12 dev eth0 table 254",
                "10.11.8.0/22 via 10.11.8.1 dev tunc6336471 onlink table 254",
            ],
        ),
        expect(
            BR2,
            &[vxlan("tunc6336471", "192.0.2.12", "198.51.100.113")],
            &[
                "10.11.0.0/22 via 192.0.2.11 dev eth0 table 254",
                "10.11.8.0/22 via 10.11.8.1 dev tunc6336471 onlink table 254",
            ],
        ),
        expect(
            BR3,
            &[
                vxlan("tunc000020b", "198.51.100.113", "192.0.2.11"),
                vxlan("tunc000020c", "198.51.100.113", "192.0.2.12"),
            ],
            &[
                "10.11.0.0/22 via 10.11.0.1 dev tunc000020b onlink table 254",
                "10.11.4.0/22 via 10.11.4.1 dev tunc000020c onlink table 254",
            ],
        ),
    ];
    assert_plumbing(
        &nb,
        [Some(&moved[0]), Some(&moved[1]), Some(&moved[2])],
        "addr@n3",
    )
    .await;
    assert_no_errors(&nb.state, &ALL);
    step(
        "h1 -> h3 container, vxlan to the new address",
        ping(&c1, &c3, "addr@n3"),
    );
    ping(&c2, &c3, "addr@n3");

    // n3's daemon stopped (SIGTERM) while n2 leaves the cluster.
    let status = nb.stop_node("n3").unwrap();
    assert!(
        status.success(),
        "om-node n3 exited with {status} on SIGTERM"
    );
    assert!(
        nb.node("n3").state_dir.join("state.cbor").is_file(),
        "n3 saved no state"
    );
    let t = Instant::now();
    let seq = nb.set(&["cluster.nodes-=n2"]).await.unwrap();
    nb.wait_applied(&["n1", "n2"], seq, CONVERGE).await.unwrap();
    step("n2 left: n1 and n2 applied it", t.elapsed());
    let without_n2 = expect(
        BR1,
        &[vxlan("tunc6336471", "192.0.2.11", "198.51.100.113")],
        &["10.11.8.0/22 via 10.11.8.1 dev tunc6336471 onlink table 254"],
    );
    // n3 is down: its kernel still holds the tunnel and route to n2.
    assert_plumbing(
        &nb,
        [Some(&without_n2), Some(&NOTHING), Some(&moved[2])],
        "n2 left, n3 down",
    )
    .await;
    assert_eq!(
        dir_files(&nb.node("n2").cni_dir),
        BTreeMap::new(),
        "n2's CNI files"
    );
    assert_eq!(
        dir_files(&nb.node("n1").cni_dir),
        cni_expected(&nb.node("n1").state_dir, SEGMENTS[0].0, SEGMENTS[0].1),
        "n1's CNI files"
    );
    assert!(
        nb.state
            .applied
            .get("n3")
            .is_none_or(|a| a.report.seq < seq),
        "n3 reported while stopped"
    );
    // Restarted, n3 resumes from its state directory and catches up.
    let t = Instant::now();
    nb.start_node("n3").unwrap();
    nb.wait_applied(&["n3"], seq, CONVERGE).await.unwrap();
    step("n3 restarted and caught up", t.elapsed());
    let n3_alone = expect(
        BR3,
        &[vxlan("tunc000020b", "198.51.100.113", "192.0.2.11")],
        &["10.11.0.0/22 via 10.11.0.1 dev tunc000020b onlink table 254"],
    );
    assert_plumbing(
        &nb,
        [Some(&without_n2), Some(&NOTHING), Some(&n3_alone)],
        "n3 restarted",
    )
    .await;
    let log = std::fs::read_to_string(&nb.node("n3").log).unwrap();
    assert!(
        !log.contains("rebuilding"),
        "n3 did not resume from its position:\n{log}"
    );
    assert_eq!(
        log.matches("om-node started").count(),
        2,
        "n3's log:\n{log}"
    );
    assert_no_errors(&nb.state, &["n1", "n3"]);
    ping(&c1, &c3, "after n3's restart");

    // A route deleted by hand comes back within a period.
    h1.ns.ip(&["route", "del", "10.11.8.0/22"]).unwrap();
    let t = Instant::now();
    let dp = RtnetlinkDataplane::in_netns(h1.ns.name()).await.unwrap();
    loop {
        let routes = dp.routes(OM_ROUTE_PROTOCOL).await.unwrap();
        if routes.iter().any(|r| r.dst.to_string() == "10.11.8.0/22") {
            break;
        }
        assert!(
            t.elapsed() < nb.period + Duration::from_secs(1),
            "the deleted route was not restored within {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    step("route deleted by hand restored after", t.elapsed());
    assert_plumbing(
        &nb,
        [Some(&without_n2), Some(&NOTHING), Some(&n3_alone)],
        "route restored",
    )
    .await;
    ping(&c1, &c3, "after the route came back");
    nb.check_alive().unwrap();
    drop((c1, c2, c3));
}
