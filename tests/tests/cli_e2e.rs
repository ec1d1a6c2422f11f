//! End to end: a real nats-server, the real `om-projector`, the real `om` binary driven
//! through the seed's commands. Outputs are compared exactly.

use om_tests::bins::{self, Om};
use om_tests::nats::NatsServer;
use om_tests::skip::skip;
use std::time::Duration;

async fn server_or_skip(test: &str) -> Option<NatsServer> {
    if let Some(why) = bins::missing() {
        skip(test, &why);
        return None;
    }
    NatsServer::start_or_skip().await
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("om-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Stream last sequence, straight from JetStream.
async fn last_seq(url: &str, cluster: &str) -> u64 {
    let c = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(c);
    match js.get_stream(format!("OM_{cluster}")).await {
        Ok(mut s) => s.info().await.unwrap().state.last_sequence,
        Err(_) => 0,
    }
}

/// Polls `om net status --format json` until the projector answers (bounded).
fn wait_projector(om: &Om) {
    for _ in 0..200 {
        let o = om.run(&["net", "ls"]);
        if o.code == 0 && !o.stderr.contains("no projector answered") {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the projector never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_walkthrough() {
    let Some(nats) = server_or_skip("seed_walkthrough").await else {
        return;
    };
    let dir = tmp("seed");
    let om = Om::new(nats.url(), "seed");
    let _projector = bins::projector(nats.url(), "seed", dir.join("projector.log"), &[]);
    om.ok(&["cluster", "set", "--kw", "cluster.nodes=node1 node2 node3"]);
    om.ok(&[
        "cluster",
        "set",
        "--kw",
        "network#local1.type=bridge",
        "--kw",
        "network#local1.network=10.10.10.0/24",
    ]);
    om.ok(&[
        "cluster",
        "set",
        "--kw",
        "network#backend1.type=routed_bridge",
        "--kw",
        "network#backend1.network=10.11.0.0/16",
        "--kw",
        "network#backend1.ips_per_node=1024",
    ]);
    om.ok(&[
        "cluster",
        "set",
        "--kw",
        "network#backend1.addr@node1=1.2.3.4",
        "--kw",
        "network#backend1.addr@node2=1.2.3.5",
        "--kw",
        "network#backend1.addr@node3=1.2.4.4",
    ]);
    om.ok(&["cluster", "set", "--kw", "network#backend1.tunnel=always"]);
    om.ok(&[
        "cluster",
        "set",
        "--kw",
        "network#weave1.type=weave",
        "--kw",
        "network#weave1.network=10.32.0.0/12",
    ]);
    wait_projector(&om);
    assert_eq!(
        om.ok(&["net", "ls"]),
        "backend1\ndefault\nlo\nlocal1\nweave1\n"
    );
    let status = om.run(&["net", "status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let expected: String = render_expected();
    assert_eq!(status.stdout, expected);
    assert_eq!(
        status.stderr, "",
        "answered by the projector, nothing to say"
    );
    assert_eq!(
        om.ok(&["cluster", "get", "--kw", "network#backend1.subnet@node2"]),
        "10.11.4.0/22\n"
    );
    assert_eq!(
        om.ok(&["cluster", "get", "--kw", "network#backend1.addr@node3"]),
        "1.2.4.4\n"
    );
    assert_eq!(
        om.ok(&["cluster", "get", "--kw", "network#backend1.tunnel"]),
        "always\n"
    );
    assert_eq!(
        om.ok(&["network", "ls"]),
        om.ok(&["net", "list"]),
        "aliases"
    );
    // Unset keyword: non-zero exit, nothing on stdout.
    let o = om.run(&["cluster", "get", "--kw", "network#backend1.gateway"]);
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (1, "", "om: network#backend1.gateway is not set\n")
    );
    // JSON: exact numbers, segments per node.
    let j: serde_json::Value =
        serde_json::from_str(&om.ok(&["net", "status", "--name", "backend1", "--format", "json"]))
            .unwrap();
    assert_eq!(j[0]["size"], 65536);
    assert_eq!(j[0]["nodes"][1]["segment"], "10.11.4.0/22");
    assert_eq!(j[0]["nodes"][2]["gateway"], "10.11.8.1");
    let verbose = om.ok(&["net", "status", "--verbose", "--name", "backend1"]);
    assert_eq!(
        verbose,
        "\
name            type           network       size     used    free   pct    
`- backend1     routed_bridge  10.11.0.0/16  65536    0       65536  0.00%  
   `- node      segment        gateway       applied  errors  
      |- node1  10.11.0.0/22   10.11.0.1     -        -       
      |- node2  10.11.4.0/22   10.11.4.1     -        -       
      `- node3  10.11.8.0/22   10.11.8.1     -        -       
"
    );
    let config = om.ok(&["cluster", "config"]);
    assert!(
        config.starts_with(
            "[cluster]\nnodes = node1 node2 node3\n\n[network#backend1]\naddr@node1 = 1.2.3.4\n"
        ),
        "{config}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The seed's table with the columns as wide as their widest cell (v2's forest layout).
fn render_expected() -> String {
    let rows = [
        ["name", "type", "network", "size", "used", "free", "pct"],
        [
            "|- backend1",
            "routed_bridge",
            "10.11.0.0/16",
            "65536",
            "0",
            "65536",
            "0.00%",
        ],
        [
            "|- default",
            "bridge",
            "10.22.0.0/16",
            "65536",
            "0",
            "65536",
            "0.00%",
        ],
        ["|- lo", "loopback", "127.0.0.1/32", "1", "0", "1", "0.00%"],
        [
            "|- local1",
            "bridge",
            "10.10.10.0/24",
            "256",
            "0",
            "256",
            "0.00%",
        ],
        [
            "`- weave1",
            "weave",
            "10.32.0.0/12",
            "1048576",
            "0",
            "1048576",
            "0.00%",
        ],
    ];
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap())
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}  "))
                .collect::<String>()
                + "\n"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_scoped_local1() {
    let Some(nats) = server_or_skip("node_scoped_local1").await else {
        return;
    };
    let om = Om::new(nats.url(), "local");
    let o = om
        .command(&[
            "node",
            "set",
            "--kw",
            "network#local1.type=bridge",
            "--kw",
            "network#local1.network=10.10.10.0/24",
        ])
        .env("OM_NODE", "node1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // No projector here: the CLI folds the stream itself and says so.
    let ls = om.run(&["net", "ls"]);
    assert_eq!(ls.stdout, "default\nlo\nlocal1@node1\n");
    assert_eq!(ls.stderr, "om: no projector answered on om.local.q.view (nothing listens there); folded the stream here (1 events)\n");
    assert_eq!(
        om.ok(&["net", "ls", "--node", "node1"]),
        "default\nlo\nlocal1\n"
    );
    assert_eq!(om.ok(&["net", "ls", "--node", "node2"]), "default\nlo\n");
    assert_eq!(
        om.ok(&[
            "node",
            "get",
            "--node",
            "node1",
            "--kw",
            "network#local1.network"
        ]),
        "10.10.10.0/24\n"
    );
    assert_eq!(
        om.ok(&["node", "config", "--node", "node1"]),
        "[network#local1]\nnetwork = 10.10.10.0/24\ntype = bridge\n"
    );
    assert_eq!(
        om.run(&["cluster", "get", "--kw", "network#local1.network"])
            .code,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_writes_nothing() {
    let Some(nats) = server_or_skip("bad_input_is_refused_and_writes_nothing").await else {
        return;
    };
    let om = Om::new(nats.url(), "bad");
    om.ok(&["cluster", "set", "--kw", "cluster.nodes=n1 n2 n3"]);
    let before = last_seq(nats.url(), "bad").await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["cluster", "set", "--kw", "network#b.type=routed_bridge", "--kw", "network#b.network=10.11.0.0/24", "--kw", "network#b.ips_per_node=128"],
            "om: network#b.ips_per_node=128 must be <= 64: 10.11.0.0/24 has 256 addresses for 3 nodes\n",
        ),
        (
            &["cluster", "set", "--kw", "network#b.type=bridge", "--kw", "network#b.network=10.11.10.0/22"],
            "om: network#b.network=10.11.10.0/22: base address not aligned, expected 10.11.8.0/22\n",
        ),
        (
            &["cluster", "set", "--kw", "network#b.type=bridge", "--kw", "network#b.network=10.22.1.0/24"],
            "om: network#b.network=10.22.1.0/24 overlaps network#default (10.22.0.0/16)\n",
        ),
        (
            &["cluster", "set", "--kw", "network#b.type=vlan"],
            "om: network#b.type=vlan: unknown type, expected one of bridge, routed_bridge, weave, loopback (or lo)\n",
        ),
        (
            &["cluster", "set", "--kw", "network#b.tunnel@n1=always"],
            "om: network#b.tunnel@n1: keyword tunnel does not take a @node scope\n",
        ),
        (
            &["cluster", "set", "--kw", "network#b.ips_per_node=1000", "--kw", "network#c.tunnel_mode=ipsec"],
            "om: network#b.ips_per_node=1000: not a power of two, expected 512 or 1024\nom: network#c.tunnel_mode=ipsec: unknown tunnel mode, expected one of ipip, gre, ip6ip6, vxlan\n",
        ),
        (&["cluster", "set", "--kw", "cluster.nodes"], "om: bad keyword argument \"cluster.nodes\": expected KEY=VALUE, KEY+=VALUE or KEY-=VALUE\n"),
        (&["--cluster", "a.b", "net", "ls"], "om: bad cluster name \"a.b\": expected letters, digits, '_' or '-'\n"),
    ];
    for (args, want) in cases {
        let o = om.run(args);
        assert_eq!(
            (o.code, o.stderr.as_str(), o.stdout.as_str()),
            (2, *want, ""),
            "om {args:?}"
        );
    }
    assert_eq!(last_seq(nats.url(), "bad").await, before, "nothing written");
    // A command that changes nothing writes nothing either.
    let o = om.run(&["cluster", "set", "--kw", "cluster.nodes=n1 n2 n3"]);
    assert_eq!((o.code, o.stderr.as_str()), (0, "om: nothing to change\n"));
    assert_eq!(last_seq(nats.url(), "bad").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_writers_all_land_once() {
    let Some(nats) = server_or_skip("eight_concurrent_writers_all_land_once").await else {
        return;
    };
    let om = Om::new(nats.url(), "race");
    om.ok(&["cluster", "set", "--kw", "cluster.nodes=n1 n2"]);
    let children: Vec<_> = (0..8)
        .map(|i| {
            om.command(&[
                "cluster",
                "set",
                "--kw",
                &format!("network#r{i}.type=routed_bridge"),
                "--kw",
                &format!("network#r{i}.network=10.{}.0.0/16", 100 + i),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(
        last_seq(nats.url(), "race").await,
        9,
        "one event per command, none twice"
    );
    for i in 0..8 {
        assert_eq!(
            om.ok(&["cluster", "get", "--kw", &format!("network#r{i}.subnet@n2")]),
            format!("10.{}.4.0/22\n", 100 + i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_restart_resumes_without_gap_or_double_count() {
    let Some(nats) = server_or_skip("projector_restart_resumes_without_gap_or_double_count").await
    else {
        return;
    };
    let dir = tmp("restart");
    let om = Om::new(nats.url(), "pr");
    let mut p = bins::projector(nats.url(), "pr", dir.join("p1.log"), &[]);
    om.ok(&["cluster", "set", "--kw", "cluster.nodes=n1"]);
    wait_projector(&om);
    om.ok(&[
        "cluster",
        "set",
        "--kw",
        "network#a.type=bridge",
        "--kw",
        "network#a.network=10.50.0.0/16",
    ]);
    assert_eq!(om.ok(&["net", "ls"]), "a\ndefault\nlo\n");
    p.stop();
    // Written while no projector runs.
    om.ok(&[
        "cluster",
        "set",
        "--kw",
        "network#b.type=bridge",
        "--kw",
        "network#b.network=10.51.0.0/16",
    ]);
    om.ok(&["cluster", "unset", "--kw", "network#a"]);
    let _p2 = bins::projector(nats.url(), "pr", dir.join("p2.log"), &[]);
    wait_projector(&om);
    let o = om.run(&["net", "ls"]);
    assert_eq!(
        (o.stdout.as_str(), o.stderr.as_str()),
        ("b\ndefault\nlo\n", "")
    );
    let log2 = std::fs::read_to_string(dir.join("p2.log")).unwrap();
    assert!(log2.contains("projector resumes after sequence"), "{log2}");
    assert!(
        !log2.contains("after sequence 0"),
        "resumed from its snapshot, not from scratch: {log2}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_time_travel() {
    let Some(nats) = server_or_skip("history_and_time_travel").await else {
        return;
    };
    let om = Om::new(nats.url(), "hist");
    om.ok(&["cluster", "set", "--kw", "cluster.nodes=node1 node2"]);
    om.ok(&[
        "cluster",
        "set",
        "--kw",
        "network#backend1.type=routed_bridge",
        "--kw",
        "network#backend1.network=10.11.0.0/16",
        "--kw",
        "network#backend1.ips_per_node=1024",
    ]);
    om.ok(&[
        "cluster",
        "set",
        "--kw",
        "network#other.type=bridge",
        "--kw",
        "network#other.network=10.60.0.0/16",
    ]);
    om.ok(&["cluster", "unset", "--kw", "network#backend1"]);
    let j: serde_json::Value =
        serde_json::from_str(&om.ok(&["net", "history", "--format", "json"])).unwrap();
    let summaries: Vec<Vec<String>> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_value(e["summary"].clone()).unwrap())
        .collect();
    assert_eq!(summaries[0], vec!["set cluster.nodes=node1 node2"]);
    assert_eq!(
        summaries[1],
        vec![
            "set network#backend1.type=routed_bridge",
            "set network#backend1.network=10.11.0.0/16",
            "set network#backend1.ips_per_node=1024",
            "assign 10.11.0.0/22 to node1",
            "assign 10.11.4.0/22 to node2",
        ]
    );
    assert_eq!(j[1]["seq"], 2);
    assert_eq!(j[1]["kind"], "config.changed");
    assert!(j[1]["actor"].as_str().unwrap().contains('@'));
    let only: serde_json::Value =
        serde_json::from_str(&om.ok(&["net", "history", "--name", "other", "--format", "json"]))
            .unwrap();
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["seq"], 3);
    let node2: serde_json::Value =
        serde_json::from_str(&om.ok(&["net", "history", "--node", "node2", "--format", "json"]))
            .unwrap();
    assert_eq!(
        node2
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 4]
    );
    // The state as it was.
    assert_eq!(om.ok(&["net", "ls"]), "default\nlo\nother\n");
    assert_eq!(
        om.ok(&["net", "ls", "--at", "2"]),
        "backend1\ndefault\nlo\n"
    );
    assert_eq!(om.ok(&["net", "ls", "--at", "1"]), "default\nlo\n");
    let at2 = om.ok(&["cluster", "config", "--at", "2"]);
    assert!(at2.contains("subnet@node2 = 10.11.4.0/22"), "{at2}");
    let t = j[2]["time"].as_str().unwrap().to_string();
    assert_eq!(
        om.ok(&["net", "ls", "--at", &t]),
        "backend1\ndefault\nlo\nother\n"
    );
    let status_at = om.ok(&["net", "status", "--at", "2", "--name", "backend1"]);
    assert!(
        status_at.contains("`- backend1  routed_bridge  10.11.0.0/16  65536  0     65536  0.00%"),
        "{status_at}"
    );
    let o = om.run(&["net", "ls", "--at", "999"]);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (2, "om: --at 999: the stream ends at sequence 4\n")
    );
    // A closed pipe ends om quietly, as any Unix filter.
    let mut child = om
        .command(&["net", "history"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A cluster with no events (a typo?) says so.
    let typo = Om::new(nats.url(), "hsit").run(&["net", "ls"]);
    assert_eq!((typo.code, typo.stdout.as_str()), (0, "default\nlo\n"));
    assert_eq!(
        typo.stderr,
        format!(
            "om: cluster hsit has no events yet (no stream OM_hsit on {})\n",
            nats.url()
        )
    );
    let o = om.run(&["net", "ls", "--at", "yesterday"]);
    assert_eq!(o.code, 2);
    assert!(
        o.stderr
            .contains("\"yesterday\": expected a stream sequence (42) or an RFC 3339 time"),
        "{}",
        o.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_rebuild_equals_live_views() {
    let Some(nats) = server_or_skip("projector_rebuild_equals_live_views").await else {
        return;
    };
    let dir = tmp("rebuild");
    let om = Om::new(nats.url(), "rb");
    let mut live = bins::projector(nats.url(), "rb", dir.join("live.log"), &[]);
    om.ok(&["cluster", "set", "--kw", "cluster.nodes=n1 n2 n3"]);
    om.ok(&[
        "cluster",
        "set",
        "--kw",
        "network#b.type=routed_bridge",
        "--kw",
        "network#b.network=10.11.0.0/16",
    ]);
    om.ok(&["cluster", "set", "--kw", "cluster.nodes-=n2"]);
    om.ok(&[
        "node",
        "set",
        "--node",
        "n1",
        "--kw",
        "network#l.type=bridge",
        "--kw",
        "network#l.network=10.12.0.0/24",
    ]);
    wait_projector(&om);
    let views = |om: &Om| {
        (
            om.ok(&["net", "status", "--verbose", "--format", "json"]),
            om.ok(&["cluster", "config"]),
            om.ok(&["node", "config", "--node", "n1"]),
            om.ok(&["net", "ls", "--node", "n1"]),
        )
    };
    let before = views(&om);
    live.stop();
    let _rebuilt = bins::projector(nats.url(), "rb", dir.join("rebuild.log"), &["--rebuild"]);
    wait_projector(&om);
    assert_eq!(views(&om), before);
    let log = std::fs::read_to_string(dir.join("rebuild.log")).unwrap();
    assert!(
        log.contains("recreating consumer projector from sequence 1"),
        "{log}"
    );
    assert!(log.contains("projector resumes after sequence 0"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}
