//! What this node should look like, computed purely from the folded cluster state.
//!
//! Inputs besides the state are facts the daemon gathered: its interface addresses (to
//! decide whether a peer is on a directly connected subnet), name resolutions, and the
//! routing-table names of `rt_tables`. The output is the set of owned kernel objects and
//! CNI files, plus per-network report lines and errors. One bad peer or network yields an
//! error for that peer or network only; the rest is still computed.

use crate::cni;
use crate::dataplane::{
    BridgeSpec, InterfaceAddress, MacAddr, Route, TunnelMode, TunnelSpec, VXLAN_PORT,
};
use ipnet::IpNet;
use om_events::event::AppliedNetwork;
use om_events::network::{self, NetType, Network, Origin, Tunnel, TunnelMode as KwMode};
use om_events::segment;
use om_events::State;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// Facts gathered by the daemon for one computation.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Addresses on this node's interfaces, with prefixes.
    pub addresses: Vec<InterfaceAddress>,
    /// Name ⇒ addresses, for `addr` values that are names and peers with nothing better.
    pub resolved: BTreeMap<String, Vec<IpAddr>>,
    /// Routing table names (`rt_tables`) ⇒ ids.
    pub tables: BTreeMap<String, u32>,
    /// The node's state directory (the IPAM socket lives in it).
    pub state_dir: PathBuf,
}

/// The desired state of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub bridges: Vec<BridgeSpec>,
    pub tunnels: Vec<TunnelSpec>,
    pub routes: BTreeSet<Route>,
    pub cni_dir: PathBuf,
    /// File name (in `cni_dir`) ⇒ content.
    pub cni_files: BTreeMap<String, String>,
    pub report: Vec<AppliedNetwork>,
    /// Problems not tied to one network.
    pub errors: Vec<String>,
    /// Why some networks are not applied (said in logs).
    pub notes: Vec<String>,
}

/// Usable as a tunnel or route endpoint: not loopback, not link-local, not unspecified.
pub fn usable_endpoint(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && !a.is_unspecified() && (a.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// The tunnel name for a peer (decision 4): `tun` + the address in hex (IPv4: 8 digits,
/// unambiguous, 11 characters); IPv6: `tun` + 12 hex digits of an FNV-1a hash of the
/// address (collisions are detected and reported by [`desired`]).
pub fn tunnel_name(peer: IpAddr) -> String {
    match peer {
        IpAddr::V4(a) => format!("tun{:08x}", u32::from(a)),
        IpAddr::V6(a) => format!("tun{:012x}", fnv(&a.octets()) & 0xffff_ffff_ffff),
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// The VXLAN network identifier of the tunnel between two endpoints: the same on both
/// ends (the receiver finds the device by VNI), distinct per peer on a host with high
/// probability (a clash is reported). 1..2^24-1.
pub fn vxlan_vni(a: IpAddr, b: IpAddr) -> u32 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut bytes = segment::to_u128(lo).to_be_bytes().to_vec();
    bytes.extend_from_slice(&segment::to_u128(hi).to_be_bytes());
    1 + (fnv(&bytes) % 0xff_fffe) as u32
}

/// Resolves a routing table name or number.
fn table_id(facts: &Facts, t: &str) -> Option<u32> {
    t.parse().ok().or_else(|| facts.tables.get(t).copied())
}

/// Parses `rt_tables` text (`254 main`, comments) into name ⇒ id.
pub fn parse_rt_tables(text: &str) -> BTreeMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let mut it = l.split_whitespace();
            let id = it.next()?.parse().ok()?;
            Some((it.next()?.to_string(), id))
        })
        .collect()
}

struct Ctx<'a> {
    state: &'a State,
    node: &'a str,
    facts: &'a Facts,
}

impl Ctx<'_> {
    fn connected(&self, ip: &IpAddr) -> bool {
        self.facts
            .addresses
            .iter()
            .any(|a| a.network().contains(ip))
    }

    /// An `addr` value: an IP, or a name resolved.
    fn addr_value(&self, v: &str, family_v6: bool) -> Option<IpAddr> {
        let cands: Vec<IpAddr> = match v.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.facts.resolved.get(v).cloned().unwrap_or_default(),
        };
        cands
            .into_iter()
            .find(|ip| ip.is_ipv6() == family_v6 && usable_endpoint(ip))
    }

    /// This node's endpoint: `addr` as seen by this node, else one of its own addresses.
    fn local_endpoint(&self, net: &Network, v6: bool) -> Option<IpAddr> {
        if let Some(v) =
            self.state
                .config
                .lookup(Some(self.node), &format!("network#{}", net.name), "addr")
        {
            return self.addr_value(v, v6);
        }
        let own: Vec<IpAddr> = self
            .facts
            .addresses
            .iter()
            .map(|a| a.address.addr())
            .collect();
        own.into_iter()
            .find(|ip| ip.is_ipv6() == v6 && usable_endpoint(ip))
    }

    /// A peer's endpoint: `addr@peer`, else an announced address (one on a connected subnet
    /// first), else the resolution of its name.
    fn peer_endpoint(&self, net: &Network, peer: &str, v6: bool) -> Option<IpAddr> {
        if let Some(v) =
            self.state
                .config
                .lookup(Some(peer), &format!("network#{}", net.name), "addr")
        {
            return self.addr_value(v, v6);
        }
        if let Some(a) = self.state.announced.get(peer) {
            let usable: Vec<IpAddr> = a
                .addrs
                .iter()
                .copied()
                .filter(|ip| ip.is_ipv6() == v6 && usable_endpoint(ip))
                .collect();
            if let Some(ip) = usable
                .iter()
                .find(|ip| self.connected(ip))
                .or(usable.first())
            {
                return Some(*ip);
            }
        }
        self.addr_value(peer, v6)
    }
}

/// Computes the desired state of `node`.
pub fn desired(state: &State, node: &str, facts: &Facts) -> Desired {
    let ctx = Ctx { state, node, facts };
    let cfg = &state.config;
    let mut d = Desired {
        cni_dir: PathBuf::from(
            cfg.lookup(Some(node), "cni", "config")
                .unwrap_or(network::DEFAULT_CNI_CONFIG),
        ),
        ..Default::default()
    };
    let in_cluster = cfg.cluster_nodes().iter().any(|n| n == node);
    let mut nets = network::networks(cfg, Some(node));
    if !in_cluster {
        let skipped: Vec<String> = nets
            .iter()
            .filter(|n| !matches!(n.origin, Origin::Node(_)))
            .map(|n| n.name.clone())
            .collect();
        if !skipped.is_empty() {
            d.notes.push(format!(
                "node {node} is not in cluster.nodes: only its node-scoped networks are applied (not {})",
                skipped.join(", ")
            ));
        }
        nets.retain(|n| matches!(n.origin, Origin::Node(_)));
    }
    // Tunnels are per peer endpoint, shared by the networks that reach that peer.
    let mut tunnels: BTreeMap<String, (TunnelSpec, String)> = BTreeMap::new();
    for net in &nets {
        let mut rep = AppliedNetwork {
            name: net.name.clone(),
            segment: None,
            gateway: None,
            routes: 0,
            tunnels: 0,
            errors: Vec::new(),
        };
        match net.ntype {
            NetType::Loopback => {
                d.cni_files
                    .insert(format!("{}.conf", net.name), cni::loopback(&net.name));
            }
            NetType::Weave => match net.cidr {
                Some(c) => {
                    d.cni_files
                        .insert(format!("{}.conf", net.name), cni::weave(&net.name, &c));
                }
                None => rep
                    .errors
                    .push(format!("network#{}: no network range", net.name)),
            },
            NetType::Bridge => match net.cidr {
                Some(cidr) => {
                    let gw = segment::nth_addr(&cidr, 1);
                    rep.segment = Some(cidr);
                    rep.gateway = Some(gw);
                    d.bridges.push(bridge_spec(net, gw, cidr.prefix_len()));
                    d.cni_files.insert(
                        format!("{}.conf", net.name),
                        cni::bridge(net, &cidr, gw, &cidr, &facts.state_dir),
                    );
                }
                None => rep
                    .errors
                    .push(format!("network#{}: no network range", net.name)),
            },
            NetType::RoutedBridge => routed(&ctx, net, &mut d, &mut rep, &mut tunnels),
        }
        d.report.push(rep);
    }
    d.tunnels = tunnels.into_values().map(|(t, _)| t).collect();
    d
}

fn bridge_spec(net: &Network, gw: IpAddr, prefix: u8) -> BridgeSpec {
    BridgeSpec {
        name: net.bridge_name(),
        address: segment::make(gw, prefix),
        mac: match gw {
            // IPv6 bridges keep their MAC: changing it left the v6 address tentative (v2).
            IpAddr::V4(a) => Some(MacAddr::for_bridge_ipv4(a)),
            IpAddr::V6(_) => None,
        },
    }
}

fn routed(
    ctx: &Ctx,
    net: &Network,
    d: &mut Desired,
    rep: &mut AppliedNetwork,
    tunnels: &mut BTreeMap<String, (TunnelSpec, String)>,
) {
    let section = format!("network#{}", net.name);
    let Some(cidr) = net.cidr else {
        rep.errors.push(format!("{section}: no network range"));
        return;
    };
    let subnets = ctx.state.config.subnets(&net.name);
    let seg: Option<IpNet> = subnets.get(ctx.node).and_then(|s| s.parse().ok());
    let Some(seg) = seg else {
        rep.errors.push(format!(
            "{section}: no segment assigned to node {}",
            ctx.node
        ));
        return;
    };
    let gw = segment::nth_addr(&seg, 1);
    rep.segment = Some(seg);
    rep.gateway = Some(gw);
    d.bridges.push(bridge_spec(net, gw, seg.prefix_len()));
    d.cni_files.insert(
        format!("{}.conf", net.name),
        cni::bridge(net, &seg, gw, &cidr, &ctx.facts.state_dir),
    );
    let tables: Vec<u32> = net
        .tables
        .iter()
        .filter_map(|t| {
            let id = table_id(ctx.facts, t);
            if id.is_none() {
                rep.errors.push(format!(
                    "{section}.tables: routing table {t:?} not found in rt_tables"
                ));
            }
            id
        })
        .collect();
    let v6 = matches!(cidr, IpNet::V6(_));
    let local = ctx.local_endpoint(net, v6);
    let mut peers: Vec<String> = ctx.state.config.cluster_nodes();
    peers.retain(|p| p != ctx.node);
    for peer in peers {
        let Some(peer_seg) = subnets.get(&peer).and_then(|s| s.parse::<IpNet>().ok()) else {
            rep.errors
                .push(format!("{section}: peer {peer} has no segment yet"));
            continue;
        };
        let mut routes: Vec<Route> = Vec::new();
        if let Some(gw_peer) = ctx
            .state
            .config
            .lookup(Some(&peer), &section, "gateway")
            .and_then(|g| g.parse::<IpAddr>().ok())
        {
            // v2's gateway@peer: the next hop towards that peer's segment, no tunnel.
            routes.push(Route::new(peer_seg).via(gw_peer));
        } else {
            let Some(peer_ip) = ctx.peer_endpoint(net, &peer, v6) else {
                rep.errors.push(format!(
                    "{section}: no endpoint address for peer {peer} (it has not announced one and its name does not resolve; set {section}.addr@{peer})"
                ));
                continue;
            };
            let connected = ctx.connected(&peer_ip);
            let tunnel = match net.tunnel {
                Tunnel::Always => true,
                Tunnel::Never => false,
                Tunnel::Auto => !connected,
            };
            if !tunnel {
                if !connected {
                    rep.errors.push(format!(
                        "{section}: peer {peer} at {peer_ip} is not on a directly connected subnet and tunnel=never"
                    ));
                    continue;
                }
                routes.push(Route::new(peer_seg).via(peer_ip));
            } else {
                let Some(local_ip) = local else {
                    rep.errors.push(format!("{section}: no local endpoint address for a tunnel to {peer} (set {section}.addr@{})", ctx.node));
                    continue;
                };
                let mode = match (net.tunnel_mode, local_ip) {
                    (KwMode::Ipip, IpAddr::V6(_)) | (KwMode::Ip6ip6, _) => TunnelMode::Ip6Ip6,
                    (KwMode::Ipip, _) => TunnelMode::IpIp,
                    (KwMode::Gre, _) => TunnelMode::Gre,
                    (KwMode::Vxlan, _) => TunnelMode::Vxlan {
                        vni: vxlan_vni(local_ip, peer_ip),
                        port: VXLAN_PORT,
                    },
                };
                let name = tunnel_name(peer_ip);
                let spec = TunnelSpec {
                    name: name.clone(),
                    mode,
                    local: local_ip,
                    remote: peer_ip,
                };
                match tunnels.get(&name) {
                    Some((existing, owner)) if *existing != spec => {
                        rep.errors.push(format!(
                            "{section}: tunnel {name} to {peer} ({peer_ip}) is already used by network#{owner} as {} from {}",
                            existing.mode, existing.local
                        ));
                        continue;
                    }
                    Some(_) => {}
                    None => {
                        if let TunnelMode::Vxlan { vni, .. } = mode {
                            if let Some((other, _)) = tunnels
                                .values()
                                .find(|(t, _)| t.mode == mode && t.local == local_ip)
                            {
                                rep.errors.push(format!(
                                    "{section}: vxlan id {vni} to {peer} clashes with the tunnel {} to {}",
                                    other.name, other.remote
                                ));
                                continue;
                            }
                        }
                        tunnels.insert(name.clone(), (spec, net.name.clone()));
                    }
                }
                rep.tunnels += 1;
                let bridge_ip = gw;
                routes.push(match mode {
                    // Ethernet over UDP: next hop is the peer's bridge, answered by ARP.
                    TunnelMode::Vxlan { .. } => Route::new(peer_seg)
                        .via(segment::nth_addr(&peer_seg, 1))
                        .dev(&name)
                        .onlink(),
                    _ => Route::new(peer_seg).dev(&name).src(bridge_ip),
                });
            }
        }
        for r in routes {
            for t in &tables {
                d.routes.insert(r.clone().table(*t));
                rep.routes += 1;
            }
        }
    }
}

/// Bridge address of an IPv4 gateway, for tests and reports.
pub fn bridge_mac_of(ip: Ipv4Addr) -> String {
    MacAddr::for_bridge_ipv4(ip).to_string()
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
