//! The networks a view derives from the configuration.
//!
//! A view is either the cluster (cluster layer only, node-scoped networks listed apart) or one
//! node (its layer over the cluster layer, `@node` values applied). Implicit networks `lo`
//! (127.0.0.1/32) and `default` (bridge, 10.22.0.0/16) are added unless declared; a network
//! whose `network` is `none` is disabled.

use crate::config::{words, Config};
use crate::segment;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

pub const DEFAULT_BRIDGE_NET: &str = "10.22.0.0/16";
pub const LO_NET: &str = "127.0.0.1/32";
pub const WEAVE_NET: &str = "10.32.0.0/12";
pub const DEFAULT_IPS_PER_NODE: u128 = 1024;
pub const DEFAULT_CNI_PLUGINS: &str = "/opt/cni/bin";
pub const DEFAULT_CNI_CONFIG: &str = "/opt/cni/net.d";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetType {
    Bridge,
    RoutedBridge,
    Weave,
    Loopback,
}

impl NetType {
    pub fn parse(s: &str) -> Option<NetType> {
        match s {
            "bridge" => Some(NetType::Bridge),
            "routed_bridge" => Some(NetType::RoutedBridge),
            "weave" => Some(NetType::Weave),
            "loopback" | "lo" => Some(NetType::Loopback),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            NetType::Bridge => "bridge",
            NetType::RoutedBridge => "routed_bridge",
            NetType::Weave => "weave",
            NetType::Loopback => "loopback",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tunnel {
    Auto,
    Always,
    Never,
}

impl Tunnel {
    pub fn parse(s: &str) -> Option<Tunnel> {
        match s {
            "auto" => Some(Tunnel::Auto),
            "always" => Some(Tunnel::Always),
            "never" => Some(Tunnel::Never),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelMode {
    Ipip,
    Gre,
    Ip6ip6,
    Vxlan,
}

impl TunnelMode {
    pub fn parse(s: &str) -> Option<TunnelMode> {
        match s {
            "ipip" => Some(TunnelMode::Ipip),
            "gre" => Some(TunnelMode::Gre),
            "ip6ip6" => Some(TunnelMode::Ip6ip6),
            "vxlan" => Some(TunnelMode::Vxlan),
            _ => None,
        }
    }
}

/// Where a network was declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Implicit,
    Cluster,
    /// Declared in this node's layer only.
    Node(String),
}

/// One network as seen by a view. Values that do not parse are left `None`; validation
/// (in [`crate::decide`]) keeps them out of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub ntype: NetType,
    /// `None` when missing or unparsable.
    pub cidr: Option<IpNet>,
    pub origin: Origin,
    pub ips_per_node: Option<u128>,
    pub mask_per_node: Option<u8>,
    pub tunnel: Tunnel,
    pub tunnel_mode: TunnelMode,
    pub tables: Vec<String>,
    pub dev: Option<String>,
    pub public: bool,
}

impl Network {
    /// `dev`, else `obr_<name>`.
    pub fn bridge_name(&self) -> String {
        self.dev
            .clone()
            .unwrap_or_else(|| format!("obr_{}", self.name))
    }

    /// Host bits of a node segment: `mask_per_node` wins over `ips_per_node`.
    pub fn segment_host_bits(&self) -> Option<u8> {
        let cidr = self.cidr?;
        let h = match (self.mask_per_node, self.ips_per_node) {
            (Some(m), _) => segment::bits(&cidr).checked_sub(m)?,
            (None, Some(ips)) if ips.is_power_of_two() => ips.trailing_zeros() as u8,
            (None, Some(_)) => return None,
            (None, None) => DEFAULT_IPS_PER_NODE.trailing_zeros() as u8,
        };
        (h <= segment::host_bits(&cidr)).then_some(h)
    }

    /// The gateway (bridge address) of a bridge network: network base + 1, network prefix.
    pub fn bridge_gateway(&self) -> Option<(IpAddr, u8)> {
        let cidr = self.cidr?;
        Some((segment::nth_addr(&cidr, 1), cidr.prefix_len()))
    }
}

/// Networks of a view, sorted by name. `node = None` is the cluster view.
pub fn networks(config: &Config, node: Option<&str>) -> Vec<Network> {
    let mut names: Vec<(String, Origin)> = Config::network_names(&config.cluster)
        .into_iter()
        .map(|n| (n, Origin::Cluster))
        .collect();
    if let Some(n) = node {
        if let Some(layer) = config.nodes.get(n) {
            for name in Config::network_names(layer) {
                if !names.iter().any(|(x, _)| *x == name) {
                    names.push((name, Origin::Node(n.to_string())));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut has_lo = false;
    let mut has_default = false;
    for (name, origin) in names {
        let section = format!("network#{name}");
        let get = |opt: &str| config.lookup(node, &section, opt);
        let ntype = match get("type") {
            None => NetType::Bridge,
            Some(t) => match NetType::parse(t) {
                Some(t) => t,
                None => continue,
            },
        };
        has_lo |= ntype == NetType::Loopback;
        has_default |= name == "default";
        let net_value =
            get("network")
                .map(str::to_string)
                .or_else(|| match (ntype, name.as_str()) {
                    (_, "default") => Some(DEFAULT_BRIDGE_NET.into()),
                    (NetType::Weave, _) => Some(WEAVE_NET.into()),
                    (NetType::Loopback, _) => Some(LO_NET.into()),
                    _ => None,
                });
        if matches!(net_value.as_deref(), Some("none") | Some("None")) {
            continue;
        }
        out.push(Network {
            cidr: net_value.and_then(|v| v.parse().ok()),
            ips_per_node: get("ips_per_node").and_then(|v| v.parse().ok()),
            mask_per_node: get("mask_per_node").and_then(|v| v.parse().ok()),
            tunnel: get("tunnel")
                .and_then(Tunnel::parse)
                .unwrap_or(Tunnel::Auto),
            tunnel_mode: get("tunnel_mode")
                .and_then(TunnelMode::parse)
                .unwrap_or(TunnelMode::Ipip),
            tables: get("tables")
                .map(words)
                .unwrap_or_else(|| vec!["main".into()]),
            dev: get("dev").map(str::to_string),
            public: get("public") == Some("true"),
            name,
            ntype,
            origin,
        });
    }
    if !has_lo {
        out.push(implicit("lo", NetType::Loopback, LO_NET));
    }
    if !has_default {
        out.push(implicit("default", NetType::Bridge, DEFAULT_BRIDGE_NET));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The node-scoped networks of every node layer, for the cluster view (`local1@n1`).
pub fn node_scoped(config: &Config) -> Vec<(String, Network)> {
    let cluster_names = Config::network_names(&config.cluster);
    let mut out = Vec::new();
    for node in config.nodes.keys() {
        for net in networks(config, Some(node)) {
            if matches!(net.origin, Origin::Node(_)) && !cluster_names.contains(&net.name) {
                out.push((node.clone(), net));
            }
        }
    }
    out
}

fn implicit(name: &str, ntype: NetType, cidr: &str) -> Network {
    Network {
        name: name.into(),
        ntype,
        cidr: cidr.parse().ok(),
        origin: Origin::Implicit,
        ips_per_node: None,
        mask_per_node: None,
        tunnel: Tunnel::Auto,
        tunnel_mode: TunnelMode::Ipip,
        tables: vec!["main".into()],
        dev: None,
        public: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Change, Origin as ChangeOrigin};

    fn cfg(pairs: &[(Option<&str>, &str, &str)]) -> Config {
        let mut c = Config::default();
        for (n, k, v) in pairs {
            c.apply(&Change {
                node: n.map(Into::into),
                key: (*k).into(),
                value: Some((*v).into()),
                origin: ChangeOrigin::Operator,
            });
        }
        c
    }

    #[test]
    fn implicit_networks() {
        let nets = networks(&Config::default(), None);
        let names: Vec<_> = nets
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.ntype.as_str(),
                    n.cidr.unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("default", "bridge", "10.22.0.0/16".into()),
                ("lo", "loopback", "127.0.0.1/32".into())
            ]
        );
        let c = cfg(&[(None, "network#default.network", "none")]);
        let names: Vec<_> = networks(&c, None).into_iter().map(|n| n.name).collect();
        assert_eq!(names, vec!["lo"]);
    }

    #[test]
    fn node_layer_networks_are_seen_by_that_node_only() {
        let c = cfg(&[
            (Some("n1"), "network#local1.type", "bridge"),
            (Some("n1"), "network#local1.network", "10.10.10.0/24"),
        ]);
        assert!(networks(&c, None).iter().all(|n| n.name != "local1"));
        assert!(networks(&c, Some("n2")).iter().all(|n| n.name != "local1"));
        let on_n1 = networks(&c, Some("n1"));
        let local = on_n1.iter().find(|n| n.name == "local1").unwrap();
        assert_eq!(local.origin, Origin::Node("n1".into()));
        assert_eq!(local.bridge_name(), "obr_local1");
        assert_eq!(node_scoped(&c).len(), 1);
    }

    #[test]
    fn segment_bits() {
        let c = cfg(&[
            (None, "network#b.type", "routed_bridge"),
            (None, "network#b.network", "10.11.0.0/16"),
        ]);
        let n = networks(&c, None)
            .into_iter()
            .find(|n| n.name == "b")
            .unwrap();
        assert_eq!(n.segment_host_bits(), Some(10));
        let c = cfg(&[
            (None, "network#b.type", "routed_bridge"),
            (None, "network#b.network", "10.11.0.0/16"),
            (None, "network#b.ips_per_node", "4096"),
            (None, "network#b.mask_per_node", "22"),
        ]);
        let n = networks(&c, None)
            .into_iter()
            .find(|n| n.name == "b")
            .unwrap();
        assert_eq!(
            n.segment_host_bits(),
            Some(10),
            "mask_per_node wins, as a prefix length"
        );
    }
}
