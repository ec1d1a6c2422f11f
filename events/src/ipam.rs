//! Address allocation in a node's share of a network, as pure decisions on the state.
//!
//! A node allocates only in its own pool: its segment of a routed_bridge network, or the
//! whole range of a bridge network (bridge networks are local to each node). The network
//! address, the gateway (the bridge's address) and the IPv4 broadcast address are never
//! handed out. An allocation is idempotent on the CNI attachment (container id, interface):
//! asked again, it answers the same lease. The events these functions return are appended to
//! `om.<c>.ev.ipam.<net>.<node>` conditioned on that subject's last sequence, so two writers
//! can never both take an address, nor both release one.

use crate::event::{IpAllocated, IpReleased, Owner};
use crate::network::{self, NetType};
use crate::segment;
use crate::state::{Lease, State};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::IpAddr;

/// Where a node allocates in a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub network: String,
    pub node: String,
    /// The node's segment (routed_bridge) or the whole network (bridge).
    pub subnet: IpNet,
    pub gateway: IpAddr,
    /// The whole network (routes to it go through the gateway).
    pub whole: IpNet,
}

impl Pool {
    /// Addresses that may be handed out.
    pub fn usable(&self) -> u128 {
        let size = segment::size(&self.subnet).unwrap_or(0);
        let reserved = if self.subnet.addr().is_ipv4() { 3 } else { 2 };
        size.saturating_sub(reserved)
    }

    fn candidate(&self, i: u128) -> bool {
        let size = segment::size(&self.subnet).unwrap_or(0);
        let v4 = self.subnet.addr().is_ipv4();
        i > 0 && !(v4 && i + 1 == size) && segment::nth_addr(&self.subnet, i) != self.gateway
    }
}

/// The pool of `node` in `network`, or why there is none.
pub fn pool(state: &State, network: &str, node: &str) -> Result<Pool, String> {
    let nets = network::networks(&state.config, Some(node));
    let Some(net) = nets.iter().find(|n| n.name == network) else {
        let names: Vec<&str> = nets
            .iter()
            .filter(|n| matches!(n.ntype, NetType::Bridge | NetType::RoutedBridge))
            .map(|n| n.name.as_str())
            .collect();
        return Err(format!(
            "network {network}: not declared for node {node} (bridge and routed_bridge networks there: {})",
            if names.is_empty() { "none".into() } else { names.join(", ") }
        ));
    };
    let Some(whole) = net.cidr else {
        return Err(format!("network {network}: no valid network range"));
    };
    match net.ntype {
        NetType::Bridge => Ok(Pool {
            network: network.into(),
            node: node.into(),
            subnet: whole,
            gateway: segment::nth_addr(&whole, 1),
            whole,
        }),
        NetType::RoutedBridge => {
            if net.origin == network::Origin::Cluster
                && !state.config.cluster_nodes().iter().any(|n| n == node)
            {
                return Err(format!(
                    "network {network}: node {node} is not in cluster.nodes, it allocates no address"
                ));
            }
            let seg: IpNet = state
                .config
                .subnets(network)
                .get(node)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("network {network}: no segment assigned to node {node}"))?;
            Ok(Pool {
                network: network.into(),
                node: node.into(),
                subnet: seg,
                gateway: segment::nth_addr(&seg, 1),
                whole,
            })
        }
        other => Err(format!(
            "network {network}: a {} network, om-ipam allocates in bridge and routed_bridge networks only",
            other.as_str()
        )),
    }
}

/// The outcome of an allocation decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alloc {
    /// The attachment already holds this lease: nothing to write.
    Existing(Lease),
    /// Record this allocation.
    New(IpAllocated),
}

/// Decides the address of an attachment in `pool`.
pub fn allocate(state: &State, pool: &Pool, owner: &Owner) -> Result<Alloc, String> {
    let mine = leases_of(state, &pool.network, &pool.node);
    if let Some(l) = mine
        .iter()
        .find(|l| l.owner.container_id == owner.container_id && l.owner.ifname == owner.ifname)
    {
        if pool.subnet.contains(&l.ip) {
            return Ok(Alloc::Existing((*l).clone()));
        }
    }
    let new = |ip| {
        Ok(Alloc::New(IpAllocated {
            network: pool.network.clone(),
            node: pool.node.clone(),
            ip,
            owner: owner.clone(),
        }))
    };
    // The same resource of the same object, attached anew (its namespace was removed by
    // hand, its container id changed): it keeps its address.
    if !owner.path.is_empty() {
        if let Some(l) = mine.iter().find(|l| {
            l.owner.path == owner.path && l.owner.rid == owner.rid && pool.subnet.contains(&l.ip)
        }) {
            return new(l.ip);
        }
    }
    let taken: HashSet<IpAddr> = mine.iter().map(|l| l.ip).collect();
    let size = segment::size(&pool.subnet).unwrap_or(0);
    let free = |ip: &IpAddr| {
        !taken.contains(ip)
            && pool.subnet.contains(ip)
            && segment::to_u128(*ip)
                .checked_sub(segment::to_u128(pool.subnet.network()))
                .is_some_and(|i| pool.candidate(i))
    };
    if !owner.path.is_empty() {
        let key = (pool.network.clone(), owner.path.clone(), owner.rid.clone());
        if let Some(ip) = state.last_ip.get(&key).filter(|ip| free(ip)) {
            return new(*ip);
        }
    }
    // Lowest free address; the scan is bounded by the leases held, plus the reserved ones.
    let mut i = 1u128;
    while i < size {
        let ip = segment::nth_addr(&pool.subnet, i);
        if pool.candidate(i) && !taken.contains(&ip) {
            return new(ip);
        }
        i += 1;
    }
    Err(format!(
        "network {}: no free address in segment {} of node {}: {} usable addresses, all leased",
        pool.network,
        pool.subnet,
        pool.node,
        pool.usable()
    ))
}

/// Leases of a node in a network.
pub fn leases_of<'a>(state: &'a State, network: &str, node: &str) -> Vec<&'a Lease> {
    let lo = (
        network.to_string(),
        node.to_string(),
        IpAddr::from([0u8; 4]),
    );
    state
        .leases
        .range(lo..)
        .take_while(|((n, nd, _), _)| n == network && nd == node)
        .map(|(_, l)| l)
        .collect()
}

/// Releases the lease of an attachment; `None` when it holds none (a CNI DEL of an unknown
/// or already released attachment succeeds).
pub fn release(
    state: &State,
    network: &str,
    node: &str,
    container_id: &str,
    ifname: &str,
    reason: &str,
) -> Option<IpReleased> {
    leases_of(state, network, node)
        .into_iter()
        .find(|l| l.owner.container_id == container_id && l.owner.ifname == ifname)
        .map(|l| released(l, reason))
}

fn released(l: &Lease, reason: &str) -> IpReleased {
    IpReleased {
        network: l.network.clone(),
        node: l.node.clone(),
        ip: l.ip,
        owner: l.owner.clone(),
        reason: reason.to_string(),
    }
}

/// Leases held by nodes that left `cluster.nodes`, in networks of the cluster layer: what
/// the single authority (the projector) releases before the segments can be freed.
pub fn orphaned(state: &State) -> Vec<IpReleased> {
    let members: HashSet<String> = state.config.cluster_nodes().into_iter().collect();
    let layer_nets = crate::config::Config::network_names(&state.config.cluster);
    state
        .leases
        .values()
        .filter(|l| !members.contains(&l.node) && layer_nets.contains(&l.network))
        .map(|l| released(l, "node removed"))
        .collect()
}

/// Leases of `node` whose namespace is gone (`exists` answers for a namespace path).
pub fn stale(state: &State, node: &str, exists: impl Fn(&str) -> bool) -> Vec<IpReleased> {
    state
        .leases
        .values()
        .filter(|l| l.node == node && !l.owner.netns.is_empty() && !exists(&l.owner.netns))
        .map(|l| released(l, "owner gone"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{decide, parse_set, Command};
    use crate::event::{ConfigChanged, Event};

    fn state(kws: &[&str]) -> State {
        let mut st = State::default();
        let kws: Vec<String> = kws.iter().map(|s| s.to_string()).collect();
        let changes = decide(
            &st,
            &Command::Set {
                node: None,
                ops: parse_set(&kws).unwrap(),
            },
        )
        .unwrap();
        st.apply(1, 0, &Event::ConfigChanged(ConfigChanged { changes }));
        st
    }

    fn owner(c: &str, path: &str) -> Owner {
        Owner {
            path: path.into(),
            rid: "ip#0".into(),
            container_id: c.into(),
            ifname: "eth0".into(),
            netns: format!("/var/run/netns/{c}"),
        }
    }

    fn take(st: &mut State, seq: u64, pool: &Pool, o: &Owner) -> Result<IpAddr, String> {
        match allocate(st, pool, o)? {
            Alloc::Existing(l) => Ok(l.ip),
            Alloc::New(a) => {
                st.apply(seq, 0, &Event::IpAllocated(a.clone()));
                Ok(a.ip)
            }
        }
    }

    #[test]
    fn a_small_segment_gives_five_addresses_then_a_clear_error() {
        let mut st = state(&[
            "cluster.nodes=n1 n2",
            "network#b.type=routed_bridge",
            "network#b.network=10.11.0.0/16",
            "network#b.ips_per_node=8",
        ]);
        let pool = pool(&st, "b", "n2").unwrap();
        assert_eq!(pool.subnet.to_string(), "10.11.0.8/29");
        assert_eq!(pool.gateway.to_string(), "10.11.0.9");
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(
                take(&mut st, 10 + i, &pool, &owner(&format!("c{i}"), ""))
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(
            got,
            [
                "10.11.0.10",
                "10.11.0.11",
                "10.11.0.12",
                "10.11.0.13",
                "10.11.0.14"
            ]
        );
        assert_eq!(
            take(&mut st, 20, &pool, &owner("c9", "")).unwrap_err(),
            "network b: no free address in segment 10.11.0.8/29 of node n2: 5 usable addresses, all leased"
        );
        // Idempotent on the attachment.
        assert_eq!(
            take(&mut st, 21, &pool, &owner("c3", ""))
                .unwrap()
                .to_string(),
            "10.11.0.13"
        );
        // Release, and DEL of an unknown attachment is nothing.
        let r = release(&st, "b", "n2", "c1", "eth0", "cni del").unwrap();
        assert_eq!(r.ip.to_string(), "10.11.0.11");
        st.apply(22, 0, &Event::IpReleased(r));
        assert!(release(&st, "b", "n2", "c1", "eth0", "cni del").is_none());
        assert_eq!(
            take(&mut st, 23, &pool, &owner("c9", ""))
                .unwrap()
                .to_string(),
            "10.11.0.11"
        );
    }

    #[test]
    fn an_object_gets_its_address_back_and_reuses_a_stale_lease() {
        let mut st = state(&[
            "cluster.nodes=n1",
            "network#b.type=routed_bridge",
            "network#b.network=10.11.0.0/16",
            "network#b.ips_per_node=1024",
        ]);
        let pool = pool(&st, "b", "n1").unwrap();
        let a = take(&mut st, 2, &pool, &owner("x", "ns/svc/a")).unwrap();
        let b = take(&mut st, 3, &pool, &owner("y", "ns/svc/b")).unwrap();
        assert_eq!(
            (a.to_string(), b.to_string()),
            ("10.11.0.2".into(), "10.11.0.3".into())
        );
        // Same object and rid, new container id: same address, re-owned.
        let Alloc::New(re) = allocate(&st, &pool, &owner("x2", "ns/svc/a")).unwrap() else {
            panic!("a new event")
        };
        assert_eq!(re.ip, a);
        // Released then restarted: the previous address, though a lower one is free.
        for (seq, c) in [(4, "x"), (5, "y")] {
            let r = release(&st, "b", "n1", c, "eth0", "stop").unwrap();
            st.apply(seq, 0, &Event::IpReleased(r));
        }
        assert_eq!(
            take(&mut st, 6, &pool, &owner("y3", "ns/svc/b")).unwrap(),
            b
        );
        // Stale: namespace gone.
        let gone = stale(&st, "n1", |p| p != "/var/run/netns/y3");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].reason, "owner gone");
    }

    #[test]
    fn bridge_pools_are_per_node_and_removed_nodes_leases_are_orphaned() {
        let mut st = state(&[
            "cluster.nodes=n1 n2",
            "network#br.type=bridge",
            "network#br.network=10.30.0.0/24",
        ]);
        let p1 = pool(&st, "br", "n1").unwrap();
        let p2 = pool(&st, "br", "n2").unwrap();
        assert_eq!(
            take(&mut st, 2, &p1, &owner("a", "")).unwrap().to_string(),
            "10.30.0.2"
        );
        assert_eq!(
            take(&mut st, 3, &p2, &owner("b", "")).unwrap().to_string(),
            "10.30.0.2"
        );
        assert_eq!(st.leases.len(), 2);
        assert!(orphaned(&st).is_empty());
        let changes = decide(
            &st,
            &Command::Set {
                node: None,
                ops: parse_set(&["cluster.nodes-=n2".into()]).unwrap(),
            },
        )
        .unwrap();
        st.apply(4, 0, &Event::ConfigChanged(ConfigChanged { changes }));
        let o = orphaned(&st);
        assert_eq!(o.len(), 1);
        assert_eq!(
            (o[0].node.as_str(), o[0].reason.as_str()),
            ("n2", "node removed")
        );
        assert!(pool(&st, "lo", "n1")
            .unwrap_err()
            .contains("a loopback network"));
    }
}
