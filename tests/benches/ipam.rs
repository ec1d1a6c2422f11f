//! CNI ADD latency with `om-ipam` against `host-local`, and sustained allocations per second
//! on one node.
//!
//! One real `om-node` (n1 on host namespace h1), `nats-server` in the router namespace, the
//! network `bench` (routed_bridge 10.11.0.0/16, `ips_per_node=4096`: n1's segment is
//! 10.11.0.0/20). Two configurations for the same `bridge` plugin binary, the same bridge
//! `obr_bench` and the same network name:
//! - the file `om-node` wrote (`ipam.type=om-ipam`: the plugin asks the daemon, which appends
//!   `ip.allocated` to JetStream, conditioned, and waits for the ack);
//! - a copy whose `ipam` is `host-local` on the upper half of the segment
//!   (10.11.8.0–10.11.15.254), leases in a scratch `dataDir`.
//!
//! Part 1, per round: two fresh container namespaces, one ADD of each configuration (the
//! order alternates every round), each timed from spawn to exit of
//! `ip netns exec h1 /usr/lib/cni/bridge` (process start, veth creation, IPAM, addresses and
//! routes in the container); then the DELs, timed the same way. 5 warm-up rounds, 100
//! measured.
//!
//! Part 2: allocations straight over the daemon's `ipam.sock` (the om-ipam protocol, no
//! kernel work), 2,000 ADDs with 32 in flight, then 2,000 DELs: what one node sustains, each
//! one a conditional JetStream append.
//!
//! Needs root and the built binaries: `cargo build --release --workspace`, then
//! `cargo bench -p om-tests --bench ipam`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use om_node::ipam_proto::{Command as Cmd, Reply, Request};
use om_tests::netns::cni::{self, cni_skip_reason, CNI_BIN_DIR};
use om_tests::netns::{reap_stale, Netns, TestBed};
use om_tests::nodebed::{in_netns, skip_reason, Bins, NodeBed, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WARM_UP: usize = 5;
const ROUNDS: usize = 100;
const SOCKET_OPS: usize = 2_000;
const IN_FLIGHT: usize = 32;

fn main() -> Result<()> {
    if let Some(reason) = skip_reason().or_else(cni_skip_reason) {
        om_tests::skip::skip("bench ipam", &reason);
        return Ok(());
    }
    reap_stale();
    let bins = Bins::find().map_err(anyhow::Error::msg)?;
    let bed = TestBed::three_hosts()?;
    in_netns(&bed.router, || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(&bed, bins))
    })
}

fn stats(label: &str, v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| ms(v[((v.len() as f64 * p) as usize).min(v.len() - 1)]);
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    println!(
        "{label:<34} n={:<4} mean {mean:6.2}ms  min {:6.2}ms  p50 {:6.2}ms  p90 {:6.2}ms  p99 {:6.2}ms  max {:6.2}ms",
        v.len(),
        ms(v[0]),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        ms(v[v.len() - 1]),
    );
    (mean, pct(0.5))
}

/// Runs the `bridge` plugin in `host` for container `ns`; its wall time.
fn cni(host: &str, conf: &str, command: &str, ns: &Netns) -> Result<Duration> {
    let t = Instant::now();
    cni::invoke(
        host,
        &Path::new(CNI_BIN_DIR).join("bridge"),
        conf,
        command,
        ns,
    )?;
    Ok(t.elapsed())
}

/// The host-local twin of the configuration om-node wrote: same bridge and name.
fn host_local(conf: &str, data_dir: &Path) -> Result<String> {
    let mut v: serde_json::Value = serde_json::from_str(conf)?;
    let routes = v["ipam"]["routes"].clone();
    v["ipam"] = serde_json::json!({
        "type": "host-local",
        "dataDir": data_dir,
        "ranges": [[{
            "subnet": "10.11.0.0/20",
            "rangeStart": "10.11.8.0",
            "rangeEnd": "10.11.15.254",
            "gateway": "10.11.0.1",
        }]],
        "routes": routes,
    });
    Ok(v.to_string())
}

async fn ask(sock: &Path, r: &Request) -> Result<Reply> {
    let mut s = tokio::net::UnixStream::connect(sock).await?;
    let mut body = serde_json::to_vec(r)?;
    body.push(b'\n');
    s.write_all(&body).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(serde_json::from_slice(&out)?)
}

/// `n` requests of `cmd` for containers `sock-0..n`, `IN_FLIGHT` at a time; the wall time.
async fn burst(sock: &Arc<PathBuf>, cmd: Cmd, n: usize) -> Result<Duration> {
    let t = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (sock, next, cmd) = (sock.clone(), next.clone(), cmd.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let r = Request {
                        command: cmd.clone(),
                        network: "bench".into(),
                        container_id: format!("sock-{i}"),
                        ifname: "eth0".into(),
                        netns: "/proc/1/ns/net".into(),
                        path: String::new(),
                        rid: String::new(),
                        reason: String::new(),
                        valid: Vec::new(),
                    };
                    match ask(&sock, &r).await? {
                        Reply::Ok { .. } => {}
                        Reply::Error { msg, .. } => bail!("{cmd:?} sock-{i}: {msg}"),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok(t.elapsed())
}

async fn run(bed: &TestBed, bins: Bins) -> Result<()> {
    let opts = Options {
        nodes: vec![("n1".into(), "h1".into())],
        period: Duration::from_secs(5),
        projector: false,
    };
    let mut nb = NodeBed::start(bed, bins, opts).await?;
    let dir = nb.node("n1").cni_dir.display().to_string();
    nb.node_set("n1", &[&format!("cni.config={dir}")]).await?;
    nb.set(&["cluster.nodes=n1"]).await?;
    let seq = nb
        .set(&[
            "network#bench.type=routed_bridge",
            "network#bench.network=10.11.0.0/16",
            "network#bench.ips_per_node=4096",
        ])
        .await?;
    nb.wait_applied(&["n1"], seq, Duration::from_secs(20))
        .await?;
    let host = nb.host("n1").ns.name().to_string();
    let ours = std::fs::read_to_string(nb.node("n1").cni_dir.join("bench.conf"))?;
    let data_dir = nb.dir.0.join("host-local");
    let theirs = host_local(&ours, &data_dir)?;
    println!("om-ipam configuration:    {ours}");
    println!("host-local configuration: {theirs}");

    // Part 1: the plugin chain, side by side.
    let (mut add_om, mut add_hl, mut del_om, mut del_hl) = (vec![], vec![], vec![], vec![]);
    let host2 = host.clone();
    let (ours2, theirs2) = (ours.clone(), theirs.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        for i in 0..WARM_UP + ROUNDS {
            let a = Netns::new(&format!("bo{i}"))?;
            let b = Netns::new(&format!("bh{i}"))?;
            let (t_om, t_hl) = if i % 2 == 0 {
                let o = cni(&host2, &ours2, "ADD", &a)?;
                (o, cni(&host2, &theirs2, "ADD", &b)?)
            } else {
                let h = cni(&host2, &theirs2, "ADD", &b)?;
                (cni(&host2, &ours2, "ADD", &a)?, h)
            };
            let d_om = cni(&host2, &ours2, "DEL", &a)?;
            let d_hl = cni(&host2, &theirs2, "DEL", &b)?;
            if i >= WARM_UP {
                add_om.push(t_om);
                add_hl.push(t_hl);
                del_om.push(d_om);
                del_hl.push(d_hl);
            }
        }
        println!(
            "\n{ROUNDS} rounds (+{WARM_UP} warm-up), fresh namespaces, bridge plugin {CNI_BIN_DIR}/bridge"
        );
        let (m_om, p_om) = stats("ADD bridge + om-ipam", &mut add_om);
        let (m_hl, p_hl) = stats("ADD bridge + host-local", &mut add_hl);
        stats("DEL bridge + om-ipam", &mut del_om);
        stats("DEL bridge + host-local", &mut del_hl);
        println!(
            "ADD ratio om-ipam / host-local: p50 {:.2}, mean {:.2} (target <= 1.5: {})",
            p_om / p_hl,
            m_om / m_hl,
            if p_om / p_hl <= 1.5 { "met" } else { "MISSED" }
        );
        Ok(())
    })
    .await??;

    // Part 2: sustained allocations on one node.
    let sock = Arc::new(nb.node("n1").state_dir.join("ipam.sock"));
    let add = burst(&sock, Cmd::Add, SOCKET_OPS).await?;
    let st = nb.fold().await?;
    let held = om_events::ipam::leases_of(st, "bench", "n1").len();
    if held != SOCKET_OPS {
        bail!("{held} leases after {SOCKET_OPS} ADDs");
    }
    let del = burst(&sock, Cmd::Del, SOCKET_OPS).await?;
    let st = nb.fold().await?;
    let held = om_events::ipam::leases_of(st, "bench", "n1").len();
    if held != 0 {
        bail!("{held} leases left after the DELs");
    }
    println!(
        "\nsustained, over {}, {IN_FLIGHT} in flight:",
        sock.display()
    );
    for (what, d) in [("allocations", add), ("releases", del)] {
        println!(
            "{SOCKET_OPS} {what:<11} in {:7.1}ms: {:6.0}/s",
            d.as_secs_f64() * 1e3,
            SOCKET_OPS as f64 / d.as_secs_f64()
        );
    }
    nb.check_alive()?;
    Ok(())
}
