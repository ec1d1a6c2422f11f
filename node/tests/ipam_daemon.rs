//! The IPAM side of a daemon, on the in-memory event log (conformance-tested against
//! JetStream): the `om-ipam` socket protocol, concurrency, idempotence, exhaustion, a lost
//! acknowledgement, and the `om-ipam` binary itself (results per CNI version, errors).

use om_events::decide::{parse_set, Command};
use om_events::event::Event;
use om_events::log::{catch_up, execute, EventLog, MemoryLog};
use om_events::subjects::Subjects;
use om_events::{Decoded, Envelope, State};
use om_node::dataplane::MemoryDataplane;
use om_node::ipam_proto::{Command as Cmd, Reply, Request};
use om_node::sim::spawn;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn set(log: &MemoryLog, s: &Subjects, kws: &[&str]) {
    let mut st = State::default();
    let cmd = Command::Set {
        node: None,
        ops: parse_set(&kws.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
    };
    execute(log, s, &mut st, "t@h", || 1, &cmd).await.unwrap();
}

fn req(cmd: Cmd, network: &str, container: &str) -> Request {
    Request {
        command: cmd,
        network: network.into(),
        container_id: container.into(),
        ifname: "eth0".into(),
        netns: String::new(),
        path: String::new(),
        rid: String::new(),
        reason: String::new(),
        valid: Vec::new(),
    }
}

async fn ask(sock: &Path, r: &Request) -> Reply {
    let mut c = tokio::net::UnixStream::connect(sock).await.unwrap();
    c.write_all(&serde_json::to_vec(r).unwrap()).await.unwrap();
    c.shutdown().await.unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    serde_json::from_slice(&out).unwrap()
}

fn ip_of(r: &Reply) -> String {
    match r {
        Reply::Ok { lease: Some(l) } => l.address.clone(),
        other => panic!("expected a lease, got {other:?}"),
    }
}

struct Bed {
    log: MemoryLog,
    subjects: Subjects,
    dir: PathBuf,
    sock: PathBuf,
    _node: om_node::sim::SimNode<MemoryDataplane>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // The daemon would save its state into the directory when it sees the stop.
        self._node.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn bed(tag: &str) -> Bed {
    let log = MemoryLog::default();
    let subjects = Subjects::new("ipam");
    set(
        &log,
        &subjects,
        &[
            "cluster.nodes=n1 n2",
            "network#b.type=routed_bridge",
            "network#b.network=10.11.0.0/16",
            "network#b.ips_per_node=256",
            "network#tiny.type=routed_bridge",
            "network#tiny.network=10.12.0.0/24",
            "network#tiny.ips_per_node=8",
        ],
    )
    .await;
    let dir = std::env::temp_dir().join(format!("om-ipam-daemon-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let node = spawn(
        "n1",
        Arc::new(MemoryDataplane::new()),
        log.clone(),
        subjects.clone(),
        dir.clone(),
        Duration::from_secs(5),
    );
    let sock = dir.join("ipam.sock");
    // Bounded probe: the daemon answers STATUS once it serves.
    for _ in 0..500 {
        if sock.exists() {
            if let Reply::Ok { .. } = ask(&sock, &req(Cmd::Status, "b", "")).await {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Bed {
        log,
        subjects,
        dir,
        sock,
        _node: node,
    }
}

async fn folded(b: &Bed) -> State {
    let mut st = State::default();
    catch_up(&b.log, &b.subjects, &mut st).await.unwrap();
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_get_distinct_addresses_idempotently() {
    let b = bed("concurrent").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let sock = b.sock.clone();
        tasks.push(tokio::spawn(async move {
            ask(&sock, &req(Cmd::Add, "b", &format!("c{i}"))).await
        }));
    }
    let mut ips = BTreeSet::new();
    let mut by_container = Vec::new();
    for t in tasks {
        let ip = ip_of(&t.await.unwrap());
        by_container.push(ip.clone());
        ips.insert(ip);
    }
    assert_eq!(ips.len(), 200, "200 distinct addresses");
    // The requests raced: which container got which address is the daemon's order.
    let c7 = by_container[7].clone();
    // Lowest free first: .2 to .201 of n1's segment 10.11.0.0/24 (.0 network, .1 gateway).
    let want: BTreeSet<String> = (2..202).map(|i| format!("10.11.0.{i}/24")).collect();
    assert_eq!(ips, want);
    let st = folded(&b).await;
    assert_eq!(st.leases.len(), 200);
    // ADD again: the same address, nothing written.
    let seq = st.seq;
    assert_eq!(ip_of(&ask(&b.sock, &req(Cmd::Add, "b", "c7")).await), c7);
    assert_eq!(folded(&b).await.seq, seq);
    // CHECK knows it; DEL of an unknown attachment succeeds, writing nothing.
    assert_eq!(ip_of(&ask(&b.sock, &req(Cmd::Check, "b", "c7")).await), c7);
    assert_eq!(
        ask(&b.sock, &req(Cmd::Del, "b", "nobody")).await,
        Reply::Ok { lease: None }
    );
    assert_eq!(folded(&b).await.seq, seq);
    // DEL every one, twice: released exactly once each.
    for round in 0..2 {
        for i in 0..200 {
            let r = ask(&b.sock, &req(Cmd::Del, "b", &format!("c{i}"))).await;
            assert_eq!(r, Reply::Ok { lease: None }, "DEL c{i}, round {round}");
        }
    }
    let st = folded(&b).await;
    assert!(st.leases.is_empty());
    assert_eq!(st.seq, seq + 200, "one release per lease");
    // GC keeps the valid attachments only.
    for c in ["g1", "g2", "g3"] {
        ip_of(&ask(&b.sock, &req(Cmd::Add, "b", c)).await);
    }
    let mut gc = req(Cmd::Gc, "b", "");
    gc.valid = vec![("g2".into(), "eth0".into())];
    assert_eq!(ask(&b.sock, &gc).await, Reply::Ok { lease: None });
    let left: Vec<String> = folded(&b)
        .await
        .leases
        .values()
        .map(|l| l.owner.container_id.clone())
        .collect();
    assert_eq!(left, ["g2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_names_network_segment_and_node() {
    let b = bed("exhaust").await;
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(ip_of(
            &ask(&b.sock, &req(Cmd::Add, "tiny", &format!("t{i}"))).await,
        ));
    }
    assert_eq!(
        got,
        [
            "10.12.0.2/29",
            "10.12.0.3/29",
            "10.12.0.4/29",
            "10.12.0.5/29",
            "10.12.0.6/29"
        ]
    );
    let Reply::Error { code, msg, .. } = ask(&b.sock, &req(Cmd::Add, "tiny", "t5")).await else {
        panic!("exhaustion must be an error")
    };
    assert_eq!(code, om_node::ipam_proto::code::NO_ADDRESS);
    assert_eq!(
        msg,
        "network tiny: no free address in segment 10.12.0.0/29 of node n1: 5 usable addresses, all leased"
    );
    // Not a network this node allocates in.
    let Reply::Error { msg, .. } = ask(&b.sock, &req(Cmd::Add, "nonet", "x")).await else {
        panic!("unknown network must be an error")
    };
    assert!(
        msg.starts_with("network nonet: not declared for node n1"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_gives_one_lease() {
    let b = bed("lostack").await;
    b.log.lose_next_ack();
    let ip = ip_of(&ask(&b.sock, &req(Cmd::Add, "b", "lost")).await);
    assert_eq!(ip, "10.11.0.2/24");
    let msgs = b.log.read(&b.subjects.events(), 1).await.unwrap();
    let allocations = msgs
        .iter()
        .filter(|m| {
            matches!(Envelope::decode(&m.payload), Ok(Decoded::Event(e)) if matches!(e.event, Event::IpAllocated(_)))
        })
        .count();
    assert_eq!(
        allocations, 1,
        "exactly one ip.allocated after the lost ack"
    );
    assert_eq!(folded(&b).await.leases.len(), 1);
}

/// Runs the om-ipam binary with a configuration and CNI environment.
fn plugin(conf: &str, command: &str, container: &str) -> (bool, serde_json::Value) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_om-ipam"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/var/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", "IgnoreUnknown=1;OM_PATH=ns/svc/a;OM_RID=ip#0")
        .env("CNI_PATH", "/nonexistent")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v = if out.stdout.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap()
    };
    (out.status.success(), v)
}

fn conf(version: &str, sock: &Path) -> String {
    serde_json::json!({
        "cniVersion": version, "name": "b", "type": "bridge",
        "ipam": {"type": "om-ipam", "socket": sock.display().to_string(),
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.11.0.0/16", "gw": "10.11.0.1"}]},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_binary_speaks_cni() {
    let b = bed("binary").await;
    let sock = b.sock.clone();
    let (ok, v) = tokio::task::spawn_blocking(move || plugin(&conf("0.3.0", &sock), "ADD", "bin1"))
        .await
        .unwrap();
    assert!(ok, "{v}");
    assert_eq!(
        v,
        serde_json::json!({"cniVersion": "0.3.0",
            "ips": [{"address": "10.11.0.2/24", "gateway": "10.11.0.1", "version": "4"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.11.0.0/16", "gw": "10.11.0.1"}],
            "dns": {}})
    );
    let st = folded(&b).await;
    let lease = st.leases.values().next().unwrap();
    assert_eq!(
        (lease.owner.path.as_str(), lease.owner.rid.as_str()),
        ("ns/svc/a", "ip#0")
    );
    let sock = b.sock.clone();
    let (ok, v) = tokio::task::spawn_blocking(move || plugin(&conf("1.0.0", &sock), "ADD", "bin1"))
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(
        v["ips"],
        serde_json::json!([{"address": "10.11.0.2/24", "gateway": "10.11.0.1"}])
    );
    let sock = b.sock.clone();
    let (ok, v) = tokio::task::spawn_blocking(move || plugin(&conf("1.0.0", &sock), "VERSION", ""))
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let sock = b.sock.clone();
    let (ok, v) = tokio::task::spawn_blocking(move || plugin(&conf("1.0.0", &sock), "DEL", "bin1"))
        .await
        .unwrap();
    assert!(ok && v.is_null());
    assert!(folded(&b).await.leases.is_empty());
    // No daemon: a clear CNI error, "try again later".
    let gone = b.dir.join("nothing-here.sock");
    let (ok, v) = tokio::task::spawn_blocking(move || plugin(&conf("1.0.0", &gone), "ADD", "x"))
        .await
        .unwrap();
    assert!(!ok);
    assert_eq!(v["code"], 11);
    let msg = v["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("om-ipam: no om-node answers on ") && msg.contains("nothing-here.sock"),
        "{msg}"
    );
    assert!(v["details"].as_str().unwrap().contains("start om-node"));
}
