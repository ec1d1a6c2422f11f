//! IP allocation as events, end to end with the real plugin chain: `om-node` on two hosts
//! of the three-host bed, `nats-server` and `om-projector` in the router namespace, service
//! objects started with the `om` binary through the real CNI `bridge` plugin with `om-ipam`
//! (and `portmap` for a host port), bare CNI attachments run by the test like a container
//! runtime would.
//!
//! Checked: 60 starts at once over two nodes give 60 distinct addresses (each found on the
//! object's interface in its namespace) and used=60; exhaustion of an `ips_per_node=8`
//! segment after five addresses with a clear error; bad `expose` refused with nothing
//! written; stop releases; a restarted object gets its address back; a namespace removed by
//! hand has its lease released and the next start reuses the address; a node removed from
//! cluster.nodes has its leases released exactly once then its segment freed; om-node killed
//! during an allocation burst then restarted: no duplicate, no leak; nats-server restarted
//! while an allocation waits: one lease. Over the whole history, no address is ever handed
//! out twice and no lease released twice.
//!
//! Run: `cargo build --release --workspace` then
//! `cargo test --release -p om-tests --test ipam_e2e -- --nocapture` (as root).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use om_events::event::Event;
use om_events::log::EventLog;
use om_events::view::{IpRow, NetworkStatus};
use om_events::{Decoded, Envelope};
use om_tests::netns::cni::{self, cni_skip_reason, CNI_BIN_DIR};
use om_tests::netns::ping::ping_at;
use om_tests::netns::{reap_stale, Netns, TestBed};
use om_tests::nodebed::{in_netns, skip_reason, Bins, NodeBed, Options};
use om_tests::skip::skip;

const WAIT: Duration = Duration::from_secs(20);

fn step(what: &str, took: Duration) {
    eprintln!("  {what}: {:.1} ms", took.as_secs_f64() * 1e3);
}

/// Deletes the object namespaces the daemons created for this cluster, even on failure.
struct ObjectNetns(String);

impl Drop for ObjectNetns {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir("/var/run/netns") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&self.0) {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Scenario {
    Services,
    Crashes,
}

fn run_bed(test: &str, nodes: &[(&str, &str)], scenario: Scenario) {
    if let Some(reason) = skip_reason().or_else(cni_skip_reason) {
        skip(test, &reason);
        return;
    }
    reap_stale();
    let bins = Bins::find().unwrap();
    let bed = TestBed::three_hosts().unwrap();
    let opts = Options {
        nodes: nodes
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect(),
        period: Duration::from_millis(300),
        projector: true,
    };
    in_netns(&bed.router, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut nb = NodeBed::start(&bed, bins, opts).await.unwrap();
                let _guard = ObjectNetns(format!("om-{}-", nb.cluster));
                for (n, _) in nodes {
                    let dir = nb.node(n).cni_dir.display().to_string();
                    nb.node_set(n, &[&format!("cni.config={dir}")])
                        .await
                        .unwrap();
                }
                let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
                nb.set(&[&format!("cluster.nodes={}", names.join(" "))])
                    .await
                    .unwrap();
                let seq = nb
                    .set(&[
                        "network#backend1.type=routed_bridge",
                        "network#backend1.network=10.11.0.0/16",
                        "network#backend1.ips_per_node=1024",
                        "network#tiny.type=routed_bridge",
                        "network#tiny.network=10.12.0.0/24",
                        "network#tiny.ips_per_node=8",
                    ])
                    .await
                    .unwrap();
                nb.wait_applied(&names, seq, WAIT).await.unwrap();
                match scenario {
                    Scenario::Services => services(&mut nb).await,
                    Scenario::Crashes => crashes(&mut nb).await,
                }
                check_history(&mut nb).await;
                drop(nb);
            })
    });
}

/// `om ARGS` on a node's host; stdout, or a panic with stderr.
async fn om(nb: &NodeBed<'_>, node: &str, args: &[&str]) -> String {
    let out = nb.om_on(node, args).await.unwrap();
    assert!(
        out.status.success(),
        "om {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `om PATH set --kw ip#0.type=cni --kw ip#0.network=NETWORK` on n1.
async fn set_cni(nb: &NodeBed<'_>, path: &str, network: &str) -> String {
    let net = format!("ip#0.network={network}");
    om(
        nb,
        "n1",
        &[path, "set", "--kw", "ip#0.type=cni", "--kw", &net],
    )
    .await
}

fn path(i: usize) -> String {
    format!("testbackend/svc/s{i}")
}

/// The address the object's `eth0` holds in its own namespace (created by `node`'s daemon).
fn kernel_addr(nb: &NodeBed<'_>, node: &str, path: &str) -> Option<String> {
    let ns = om_events::object::netns_name(&nb.cluster, path);
    let out = nb
        .node(node)
        .command("ip")
        .unwrap()
        .args(["-n", &ns, "-j", "-4", "addr", "show", "dev", "eth0"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let i = &v[0]["addr_info"][0];
    Some(format!(
        "{}/{}",
        i["local"].as_str()?,
        i["prefixlen"].as_u64()?
    ))
}

async fn status(nb: &NodeBed<'_>, name: &str) -> NetworkStatus {
    let out = nb
        .om(&["net", "status", "--verbose", "--name", name])
        .await
        .unwrap();
    let v: Vec<NetworkStatus> = serde_json::from_str(&out).unwrap();
    v.into_iter().next().unwrap()
}

/// `path up on node: ip#0 ADDR` ⇒ ADDR.
fn started_addr(out: &str) -> String {
    out.trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn services_get_addresses_that_never_leak() {
    run_bed(
        "ipam_e2e::services_get_addresses_that_never_leak",
        &[("n1", "h1"), ("n2", "h2")],
        Scenario::Services,
    );
}

async fn services(nb: &mut NodeBed<'_>) {
    // Bad expose: refused, the accepted forms named, nothing written.
    let before = nb.fold().await.unwrap().seq;
    let out = nb
        .om_on(
            "n1",
            &[
                &path(0),
                "set",
                "--kw",
                "ip#0.type=cni",
                "--kw",
                "ip#0.expose=80/sctp",
            ],
        )
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!(
            "om: ip#0.expose=80/sctp: bad protocol \"sctp\", expected {}",
            om_events::object::EXPOSE_FORMS
        )
    );
    for bad in ["80", "http/tcp", "80/tcp:99999"] {
        let out = nb
            .om_on(
                "n1",
                &[&path(0), "set", "--kw", &format!("ip#0.expose={bad}")],
            )
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "expose={bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("80:8001/tcp"));
    }
    assert_eq!(nb.fold().await.unwrap().seq, before, "nothing written");

    // 60 objects, then 60 starts at once, 30 per node.
    let t = Instant::now();
    let shared: &NodeBed<'_> = nb;
    let sets = (0..60).map(|i| {
        let p = path(i);
        async move { set_cni(shared, &p, "backend1").await }
    });
    futures::future::join_all(sets).await;
    step("60 objects configured", t.elapsed());
    let t = Instant::now();
    let starts = (0..60).map(|i| {
        let p = path(i);
        let node = if i.is_multiple_of(2) { "n1" } else { "n2" };
        async move { (i, om(shared, node, &[&p, "start", "--node", node]).await) }
    });
    let started: BTreeMap<usize, String> = futures::future::join_all(starts)
        .await
        .into_iter()
        .map(|(i, out)| (i, started_addr(&out)))
        .collect();
    step("60 objects started at once", t.elapsed());
    let distinct: BTreeSet<&String> = started.values().collect();
    assert_eq!(distinct.len(), 60, "60 distinct addresses: {started:?}");
    for (i, a) in &started {
        let seg: ipnet::IpNet = if i.is_multiple_of(2) {
            "10.11.0.0/22"
        } else {
            "10.11.4.0/22"
        }
        .parse()
        .unwrap();
        let net: ipnet::IpNet = a.parse().unwrap();
        assert!(
            seg.contains(&net.addr()) && net.prefix_len() == 22,
            "s{i}: {a} outside {seg}"
        );
        assert!(!a.ends_with(".0/22") && !a.ends_with(".1/22"), "s{i}: {a}");
        let node = if i.is_multiple_of(2) { "n1" } else { "n2" };
        assert_eq!(
            kernel_addr(nb, node, &path(*i)).as_deref(),
            Some(a.as_str()),
            "s{i}'s eth0"
        );
    }
    let st = status(nb, "backend1").await;
    assert_eq!((st.used, st.ips.len()), (60, 60));
    let ls: Vec<IpRow> = serde_json::from_str(
        &nb.om(&["net", "ip", "ls", "--name", "backend1"])
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ls.len(), 60);
    for r in &ls {
        let i: usize = r
            .path
            .strip_prefix("testbackend/svc/s")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(format!("{}/22", r.ip), started[&i]);
        assert_eq!(
            (r.rid.as_str(), r.net_type.as_str()),
            ("ip#0", "routed_bridge")
        );
        assert_eq!(r.node, if i.is_multiple_of(2) { "n1" } else { "n2" });
    }
    // The addresses carry traffic: s0 on n1 reaches s1 on n2.
    let to = started[&1].split('/').next().unwrap().to_string();
    let ns0 = om_events::object::netns_name(&nb.cluster, &path(0));
    let ns0 = nb.node("n1").netns_path(&ns0).unwrap();
    let took = wait_ping_at(&ns0, to.parse().unwrap(), WAIT);
    step("s1 on n2 answers a ping from s0 on n1", took);
    let status_json: serde_json::Value =
        serde_json::from_str(&nb.om(&[&path(0), "status"]).await.unwrap()).unwrap();
    assert_eq!(status_json["state"], "up");
    assert_eq!(
        status_json["instances"][0]["resources"][0]["ip"],
        started[&0]
    );

    // Exhaustion: tiny's /29 segments hold five addresses.
    let mut tiny = Vec::new();
    for i in 0..6 {
        let p = format!("tiny/svc/t{i}");
        set_cni(nb, &p, "tiny").await;
        let out = nb
            .om_on("n1", &[&p, "start", "--node", "n1"])
            .await
            .unwrap();
        tiny.push(out);
    }
    let got: Vec<String> = tiny[..5]
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            started_addr(&String::from_utf8_lossy(&o.stdout))
        })
        .collect();
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
    assert_eq!(tiny[5].status.code(), Some(1));
    let err = String::from_utf8_lossy(&tiny[5].stderr);
    assert!(
        err.contains("network tiny: no free address in segment 10.12.0.0/29 of node n1: 5 usable addresses, all leased"),
        "{err}"
    );
    assert_eq!(status(nb, "tiny").await.used, 5);

    // A host port: portmap's DNAT rule while up, gone after stop.
    om(
        nb,
        "n1",
        &[
            "web",
            "set",
            "--kw",
            "ip#0.type=cni",
            "--kw",
            "ip#0.network=backend1",
            "--kw",
            "ip#0.expose=80:8001/tcp",
        ],
    )
    .await;
    om(nb, "n1", &["web", "start", "--node", "n1"]).await;
    let h1 = &nb.host("n1").ns;
    let nat = h1.exec(&["iptables", "-t", "nat", "-S"]).unwrap();
    assert!(
        nat.contains("--dport 8001"),
        "no DNAT for host port 8001:\n{nat}"
    );
    om(nb, "n1", &["web", "stop"]).await;
    let nat = h1.exec(&["iptables", "-t", "nat", "-S"]).unwrap();
    assert!(
        !nat.contains("--dport 8001"),
        "DNAT left after stop:\n{nat}"
    );

    // Stop releases; a start gets the same address back.
    om(nb, "n1", &[&path(0), "stop"]).await;
    assert_eq!(
        kernel_addr(nb, "n1", &path(0)),
        None,
        "s0's namespace is gone"
    );
    assert_eq!(status(nb, "backend1").await.used, 59);
    let again = started_addr(&om(nb, "n1", &[&path(0), "start", "--node", "n1"]).await);
    assert_eq!(again, started[&0], "s0 got its address back");

    // A namespace removed by hand: the daemon releases the stale lease; start reuses it.
    let ns2 = om_events::object::netns_name(&nb.cluster, &path(2));
    assert!(Command::new("ip")
        .args(["netns", "del", &ns2])
        .status()
        .unwrap()
        .success());
    let ip2: IpAddr = started[&2].split('/').next().unwrap().parse().unwrap();
    nb.wait_until(WAIT, "s2's stale lease released", |st| {
        !st.leases.values().any(|l| l.ip == ip2)
    })
    .await
    .unwrap();
    let again = started_addr(&om(nb, "n1", &[&path(2), "start", "--node", "n1"]).await);
    assert_eq!(
        again, started[&2],
        "s2 got its address back after its namespace was removed"
    );
    assert_eq!(status(nb, "backend1").await.used, 60);

    // n2 leaves: its 30 leases are released once, by the projector, then its segment goes.
    let held: usize = nb.fold().await.unwrap().leases_on("backend1", "n2");
    assert_eq!(held, 30);
    let t = Instant::now();
    nb.set(&["cluster.nodes-=n2"]).await.unwrap();
    nb.wait_until(WAIT, "n2's leases released and its segment freed", |st| {
        st.leases_on("backend1", "n2") == 0
            && st.config.get(None, "network#backend1.subnet@n2").is_none()
    })
    .await
    .unwrap();
    step("n2 removed: leases released, segment freed", t.elapsed());
    let released = history(nb)
        .await
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::IpReleased(r) if r.reason == "node removed" && r.node == "n2" && r.network == "backend1"))
        .count();
    assert_eq!(released, 30, "each of n2's leases released exactly once");
    assert_eq!(status(nb, "backend1").await.used, 30);
}

/// Every event of the stream with its sequence.
async fn history(nb: &NodeBed<'_>) -> Vec<(u64, Event)> {
    nb.log
        .read(&nb.subjects.events(), 1)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match Envelope::decode(&m.payload) {
            Ok(Decoded::Event(e)) => Some((m.seq, e.event)),
            _ => None,
        })
        .collect()
}

/// Over the whole history: an address is never handed out while leased (except to the same
/// resource again), and a lease is never released twice.
async fn check_history(nb: &mut NodeBed<'_>) {
    let mut live: BTreeMap<(String, String, IpAddr), (String, String, String)> = BTreeMap::new();
    for (seq, e) in history(nb).await {
        match e {
            Event::IpAllocated(a) => {
                let key = (a.network.clone(), a.node.clone(), a.ip);
                let owner = (
                    a.owner.path.clone(),
                    a.owner.rid.clone(),
                    a.owner.container_id.clone(),
                );
                if let Some(prev) = live.get(&key) {
                    assert!(
                        !prev.0.is_empty() && prev.0 == owner.0 && prev.1 == owner.1,
                        "seq {seq}: {} handed to {owner:?} while leased to {prev:?}",
                        a.ip
                    );
                }
                live.insert(key, owner);
            }
            Event::IpReleased(r) => {
                assert!(
                    live.remove(&(r.network.clone(), r.node.clone(), r.ip))
                        .is_some(),
                    "seq {seq}: {} released but not leased",
                    r.ip
                );
            }
            _ => {}
        }
    }
}

/// Bounded probe: an echo reply from `to` within `deadline`, or a panic.
fn wait_ping_at(ns: &Path, to: std::net::Ipv4Addr, deadline: Duration) -> Duration {
    let t = Instant::now();
    while t.elapsed() < deadline {
        if ping_at(ns, to, None, Duration::from_millis(300)).unwrap() {
            return t.elapsed();
        }
    }
    panic!(
        "no echo reply from {to} in {} within {deadline:?}",
        ns.display()
    );
}

/// A bare CNI attachment run by the test as a container runtime would.
fn cni(host: &str, conf: &str, command: &str, ns: &Netns) -> Result<String, String> {
    cni::invoke(
        host,
        &Path::new(CNI_BIN_DIR).join("bridge"),
        conf,
        command,
        ns,
    )
    .map_err(|e| format!("{e:#}"))
}

fn ns_addr(ns: &Netns) -> Option<String> {
    let out = ns.ip(&["-j", "-4", "addr", "show", "dev", "eth0"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let i = &v[0]["addr_info"][0];
    Some(i["local"].as_str()?.to_string())
}

#[test]
fn daemon_killed_and_server_restarted_lose_nothing() {
    run_bed(
        "ipam_e2e::daemon_killed_and_server_restarted_lose_nothing",
        &[("n1", "h1")],
        Scenario::Crashes,
    );
}

async fn crashes(nb: &mut NodeBed<'_>) {
    let host = nb.host("n1").ns.name().to_string();
    let conf_file: PathBuf = nb.node("n1").cni_dir.join("backend1.conf");
    let conf = std::fs::read_to_string(&conf_file).unwrap();
    // A burst of 20 attachments; the daemon is killed once a few are recorded.
    let containers: Arc<Vec<Netns>> = Arc::new(
        (0..20)
            .map(|i| Netns::new(&format!("k{i}")).unwrap())
            .collect(),
    );
    let t = Instant::now();
    let handles: Vec<_> = (0..containers.len())
        .map(|i| {
            let (host, conf, containers) = (host.clone(), conf.clone(), containers.clone());
            tokio::task::spawn_blocking(move || cni(&host, &conf, "ADD", &containers[i]))
        })
        .collect();
    nb.wait_until(WAIT, "3 allocations recorded", |st| st.leases.len() >= 3)
        .await
        .unwrap();
    nb.kill_node("n1").unwrap();
    let mut results: Vec<Result<String, String>> = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    step(
        &format!("burst of 20 with om-node killed: {} failed", failed.len()),
        t.elapsed(),
    );
    nb.start_node("n1").unwrap();
    // A runtime retries what failed: DEL (cleans a half attachment), then ADD.
    for i in &failed {
        let ns = &containers[*i];
        let mut ok = false;
        for _ in 0..100 {
            let _ = cni(&host, &conf, "DEL", ns);
            if cni(&host, &conf, "ADD", ns).is_ok() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(ok, "ADD of {} after the restart", ns.name());
    }
    let st = nb.fold().await.unwrap().clone();
    let leased: BTreeMap<String, String> = st
        .leases
        .values()
        .map(|l| (l.owner.container_id.clone(), l.ip.to_string()))
        .collect();
    assert_eq!(
        leased.len(),
        20,
        "one lease per container, none leaked: {leased:?}"
    );
    let mut seen = BTreeSet::new();
    for ns in containers.iter() {
        let a = ns_addr(ns).unwrap_or_else(|| panic!("{} has no address", ns.name()));
        assert_eq!(leased.get(ns.name()), Some(&a), "lease of {}", ns.name());
        assert!(seen.insert(a.clone()), "{a} twice");
    }

    // nats-server stops; an ADD waits in the daemon; the server comes back: one lease.
    nb.stop_nats().unwrap();
    let x = Arc::new(Netns::new("x").unwrap());
    let t = Instant::now();
    let add = {
        let (host, conf, x) = (host.clone(), conf.clone(), x.clone());
        tokio::task::spawn_blocking(move || cni(&host, &conf, "ADD", &x))
    };
    // Bounded probe: the daemon tried to record the allocation and failed at least once
    // (it says so in its log) before the server comes back.
    let log = nb.node("n1").log.clone();
    let failures = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(".ev.ipam.backend1.n1: ") && l.contains("; retrying"))
            .count()
    };
    let before = failures();
    let probe = Instant::now();
    while failures() == before {
        assert!(
            probe.elapsed() < WAIT,
            "om-node n1 never tried the append while the server was down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nb.start_nats().await.unwrap();
    let res = add.await.unwrap();
    res.unwrap_or_else(|e| panic!("ADD across the server restart: {e}"));
    step("ADD across a nats-server restart", t.elapsed());
    let allocations = history(nb)
        .await
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::IpAllocated(a) if a.owner.container_id == x.name()))
        .count();
    assert_eq!(
        allocations, 1,
        "one allocation for the container added across the restart"
    );
    let st = nb.fold().await.unwrap();
    assert_eq!(st.leases.len(), 21);
    // Everything released.
    for ns in containers.iter().chain([&*x]) {
        cni(&host, &conf, "DEL", ns).unwrap();
    }
    assert!(nb.fold().await.unwrap().leases.is_empty());
}
