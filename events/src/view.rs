//! Read views computed from the state: network status and leases. Pure.

use crate::network::{self, Network};
use crate::segment;
use crate::state::State;
use serde::{Deserialize, Serialize};

/// One row of `om net status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// `local1@n1` for a network declared in node n1's layer, seen from the cluster view.
    pub name: String,
    #[serde(rename = "type")]
    pub ntype: String,
    pub network: String,
    pub size: u128,
    pub used: u128,
    pub free: u128,
    pub pct: f64,
    #[serde(default)]
    pub ips: Vec<IpRow>,
    #[serde(default)]
    pub nodes: Vec<NodeRow>,
}

/// A lease, as `om net status --verbose` and `om net ip ls` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRow {
    pub ip: String,
    pub network: String,
    pub node: String,
    pub path: String,
    pub rid: String,
    /// The network's type, as `om net ip ls` shows it.
    #[serde(default)]
    pub net_type: String,
}

/// A node's share of a network and what it last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRow {
    pub node: String,
    pub segment: Option<String>,
    pub gateway: Option<String>,
    pub applied_seq: Option<u64>,
    #[serde(default)]
    pub errors: Vec<String>,
}

/// Status rows of a view, sorted by name; `name` filters.
pub fn status(state: &State, node: Option<&str>, name: Option<&str>) -> Vec<NetworkStatus> {
    let mut nets: Vec<(String, Network)> = network::networks(&state.config, node)
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
    if node.is_none() {
        nets.extend(
            network::node_scoped(&state.config)
                .into_iter()
                .map(|(node, n)| (format!("{}@{node}", n.name), n)),
        );
        nets.sort_by(|a, b| a.0.cmp(&b.0));
    }
    nets.into_iter()
        .filter(|(label, n)| name.is_none_or(|f| f == label || f == n.name))
        .map(|(label, n)| row(state, label, &n))
        .collect()
}

fn row(state: &State, label: String, n: &Network) -> NetworkStatus {
    let size = n.cidr.and_then(|c| segment::size(&c)).unwrap_or(0);
    let mut ips: Vec<IpRow> = state
        .leases
        .values()
        .filter(|l| n.cidr.is_some_and(|c| c.contains(&l.ip)))
        .map(|l| IpRow {
            ip: l.ip.to_string(),
            network: n.name.clone(),
            node: l.node.clone(),
            path: l.owner.path.clone(),
            rid: l.owner.rid.clone(),
            net_type: n.ntype.as_str().to_string(),
        })
        .collect();
    // The seed and v2 sort by the address as text.
    ips.sort_by(|a, b| (&a.ip, &a.node, &a.path, &a.rid).cmp(&(&b.ip, &b.node, &b.path, &b.rid)));
    let used = ips.len() as u128;
    NetworkStatus {
        name: label,
        ntype: n.ntype.as_str().to_string(),
        network: n.cidr.map(|c| c.to_string()).unwrap_or_default(),
        size,
        used,
        free: size.saturating_sub(used),
        pct: if size == 0 {
            0.0
        } else {
            100.0 * used as f64 / size as f64
        },
        ips,
        nodes: node_rows(state, n),
    }
}

fn node_rows(state: &State, n: &Network) -> Vec<NodeRow> {
    let mut nodes: Vec<String> = match &n.origin {
        network::Origin::Node(x) => vec![x.clone()],
        _ => state.config.cluster_nodes(),
    };
    for reporter in state.applied.keys() {
        if !nodes.contains(reporter) && n.origin == network::Origin::Cluster {
            nodes.push(reporter.clone());
        }
    }
    let subnets = state.config.subnets(&n.name);
    nodes
        .into_iter()
        .map(|node| {
            let report = state.applied.get(&node);
            let applied = report.and_then(|r| r.report.networks.iter().find(|a| a.name == n.name));
            let segment = match n.ntype {
                network::NetType::RoutedBridge => subnets.get(&node).cloned(),
                _ => n.cidr.map(|c| c.to_string()),
            };
            let gateway = match (n.ntype, &segment) {
                (network::NetType::RoutedBridge, Some(s)) => {
                    s.parse().ok().map(|c| segment::nth_addr(&c, 1).to_string())
                }
                (network::NetType::Bridge, _) => n.bridge_gateway().map(|(g, _)| g.to_string()),
                _ => None,
            };
            NodeRow {
                node,
                segment,
                gateway,
                applied_seq: report.map(|r| r.report.seq),
                errors: applied.map(|a| a.errors.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

/// Every lease, sorted like `om net status --verbose`.
pub fn leases(state: &State, name: Option<&str>) -> Vec<IpRow> {
    status(state, None, name)
        .into_iter()
        .flat_map(|s| s.ips)
        .collect()
}

/// `om <path> status`: an object's configuration, target and instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectView {
    pub path: String,
    /// `up`, `down`, `starting`, `stopping`, `failed`.
    pub state: String,
    /// `started on N`, `stopped`, or empty when never started.
    pub target: String,
    pub config: Vec<(String, String)>,
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub node: String,
    pub state: String,
    /// The instance answered the current target.
    pub current: bool,
    pub seq: u64,
    pub time_ms: u64,
    pub resources: Vec<crate::event::ResourceStatus>,
}

/// Every object (or the one at `path`), sorted by path.
pub fn objects(state: &State, path: Option<&str>) -> Vec<ObjectView> {
    use crate::event::{Target, Up};
    state
        .objects
        .iter()
        .filter(|(p, _)| path.is_none_or(|x| x == p.as_str()))
        .map(|(p, o)| {
            let tseq = o.target.as_ref().map(|(_, s)| *s).unwrap_or(0);
            let instances: Vec<InstanceView> = o
                .instances
                .iter()
                .map(|(node, i)| InstanceView {
                    node: node.clone(),
                    state: i.status.state.as_str().to_string(),
                    current: i.status.target_seq >= tseq,
                    seq: i.seq,
                    time_ms: i.time_ms,
                    resources: i.status.resources.clone(),
                })
                .collect();
            let inst = |n: &str| o.instances.get(n).filter(|i| i.status.target_seq >= tseq);
            let state = match &o.target {
                None => "down".to_string(),
                Some((Target::Started { node }, _)) => match inst(node).map(|i| i.status.state) {
                    Some(Up::Up) => "up".into(),
                    Some(Up::Failed) => "failed".into(),
                    _ => "starting".into(),
                },
                Some((Target::Stopped, _)) => {
                    let stopping = o
                        .instances
                        .values()
                        .any(|i| i.status.state != Up::Down && i.status.target_seq < tseq);
                    let failed = o
                        .instances
                        .values()
                        .any(|i| i.status.state == Up::Failed && i.status.target_seq >= tseq);
                    if failed {
                        "failed".into()
                    } else if stopping {
                        "stopping".into()
                    } else {
                        "down".into()
                    }
                }
            };
            ObjectView {
                path: p.clone(),
                state,
                target: match &o.target {
                    Some((Target::Started { node }, _)) => format!("started on {node}"),
                    Some((Target::Stopped, _)) => "stopped".into(),
                    None => String::new(),
                },
                config: o
                    .config
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                instances,
            }
        })
        .collect()
}
