//! Three clustered `nats-server` processes with JetStream, for replicated (R3) streams.
//!
//! Each node listens for clients and routes on loopback ports of its own, keeps its store
//! in a directory of its own, and routes to the two others. The cluster is ready when every
//! node answers JetStream requests and a three-replica stream can be created, which needs
//! a meta leader that sees all three peers. That takes an election or two, so the bound is
//! longer than for one server.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::process::{free_port, ScratchDir, ServerProcess};
use super::{announce, binary_or_skip, connect, find_binary, wait_ready, Ready, NOT_FOUND};

/// How long a fresh cluster may take to accept a three-replica stream.
pub const CLUSTER_READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Node {
    // Field order matters on drop: the process dies before its store directory goes.
    proc: ServerProcess,
    url: String,
    _dir: ScratchDir,
}

/// Three `nats-server -js` processes in one NATS cluster on 127.0.0.1.
pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts the three nodes and waits until the cluster takes R3 streams.
    pub async fn start() -> Result<Self> {
        let bin = find_binary().context(NOT_FOUND)?;
        // A port found free may be taken before a node binds it: try again with new ports
        // when a node exits early.
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(&bin).await {
                Ok(c) => return Ok(c),
                Err((e, early)) if early => last = Some(e),
                Err((e, _)) => return Err(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    /// [`start`](Self::start), or `None` after printing `SKIPPED: ...` when no `nats-server`
    /// exists. Panics when one exists but the cluster cannot be started.
    pub async fn start_or_skip() -> Option<Self> {
        binary_or_skip()?;
        Some(Self::start().await.expect("starting a nats-server cluster"))
    }

    async fn try_start(bin: &Path) -> Result<Self, (anyhow::Error, bool)> {
        let fail = |e: anyhow::Error| (e, false);
        let client_ports = [free_port(), free_port(), free_port()];
        let route_ports = [free_port(), free_port(), free_port()];
        let mut ports = Vec::new();
        for p in client_ports.into_iter().chain(route_ports) {
            ports.push(p.map_err(fail)?);
        }
        let (client_ports, route_ports) = ports.split_at(3);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let dir = ScratchDir::new(&format!("cluster-n{i}")).map_err(fail)?;
            let routes: Vec<String> = (0..3)
                .filter(|&j| j != i)
                .map(|j| format!("nats://127.0.0.1:{}", route_ports[j]))
                .collect();
            let args = vec![
                "-js".into(),
                "-n".into(),
                format!("om-test-n{i}"),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                client_ports[i].to_string(),
                "-sd".into(),
                dir.path().join("store").display().to_string(),
                "--cluster_name".into(),
                "om-test".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", route_ports[i]),
                "--routes".into(),
                routes.join(","),
            ];
            let proc = ServerProcess::spawn(bin, args, dir.path().join("nats-server.log"))
                .map_err(fail)?;
            nodes.push(Node {
                proc,
                url: format!("nats://127.0.0.1:{}", client_ports[i]),
                _dir: dir,
            });
        }
        let mut cluster = NatsCluster { nodes };
        let mut took = Duration::ZERO;
        for i in 0..3 {
            let ready = if i == 0 {
                Ready::Replicated
            } else {
                Ready::JetStream
            };
            let url = cluster.nodes[i].url.clone();
            let res = wait_ready(&url, ready, CLUSTER_READY_TIMEOUT, async || {
                cluster.first_exit()
            })
            .await;
            match res {
                Ok(t) => took += t,
                Err(e) => {
                    let early = cluster.first_exit().is_some();
                    return Err((e.context(cluster.logs()), early));
                }
            }
        }
        announce(&format!(
            "nats for tests: spawned a cluster of three {} on {}, ready in {took:?}",
            bin.display(),
            cluster.urls().join(",")
        ));
        Ok(cluster)
    }

    /// Which node exited, and how, if one did.
    fn first_exit(&mut self) -> Option<String> {
        self.nodes
            .iter_mut()
            .enumerate()
            .find_map(|(i, n)| n.proc.exited().map(|why| format!("node {i} {why}")))
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "node {i}: {}\n{}",
                    n.proc.command_line(),
                    n.proc.log_tail(15)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The client URLs of the three nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// A client that may use any node.
    pub async fn client(&self) -> Result<async_nats::Client> {
        connect(&self.urls()).await
    }

    /// A client of node `i` only (it ignores the other nodes the server tells it about), so
    /// that two clients can be made to enter the cluster through different nodes.
    pub async fn client_of(&self, i: usize) -> Result<async_nats::Client> {
        let url = &self.nodes[i].url;
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(Duration::from_secs(5)))
            .ignore_discovered_servers()
            .connect(url.as_str())
            .await
            .with_context(|| format!("connecting to node {i} at {url}"))
    }
}
