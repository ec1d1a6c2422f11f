//! Validation: of one keyword value, and of a whole configuration.
//!
//! Every message names the keyword, the value and what is expected. Whole-configuration
//! checks run on the configuration a command would produce; only the problems the command
//! introduces are reported (see [`crate::decide`]).

use crate::config::{words, Config};
use crate::keyword::{valid_node_name, Key, Section};
use crate::network::{self, NetType, Network, Origin};
use crate::segment;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Checks one value against its keyword. `value` is the resulting value (after `+=`/`-=`).
pub fn check_value(key: &Key, value: &str) -> Result<(), String> {
    let spec = key.spec();
    let bad = |why: &str| Err(format!("{key}={value}: {why}, expected {}", spec.expected));
    let v = value.trim();
    match (&key.section, key.option.as_str()) {
        (Section::Cluster, "nodes") => {
            let mut seen = BTreeSet::new();
            for n in words(v) {
                if !valid_node_name(&n) {
                    return bad(&format!("bad node name {n:?}"));
                }
                if !seen.insert(n.clone()) {
                    return bad(&format!("node {n} is listed twice"));
                }
            }
            Ok(())
        }
        (Section::Cni, _) => {
            if v.starts_with('/') && !v.contains(char::is_whitespace) {
                Ok(())
            } else {
                bad("not an absolute path")
            }
        }
        (Section::Network(_), opt) => check_network_value(key, opt, v, &bad),
        _ => Ok(()),
    }
}

fn check_network_value(
    key: &Key,
    opt: &str,
    v: &str,
    bad: &dyn Fn(&str) -> Result<(), String>,
) -> Result<(), String> {
    match opt {
        "type" => match NetType::parse(v) {
            Some(_) => Ok(()),
            None => bad("unknown type"),
        },
        "network" if v == "none" || v == "None" => Ok(()),
        "network" | "subnet" => {
            let net: IpNet = match v.parse() {
                Ok(n) => n,
                Err(_) => return bad("not a CIDR"),
            };
            if net.prefix_len() == 0 {
                return bad("a /0 network is too large");
            }
            if !segment::aligned(&net) {
                return Err(format!(
                    "{key}={v}: base address not aligned, expected {}",
                    net.trunc()
                ));
            }
            Ok(())
        }
        "ips_per_node" => match v.parse::<u128>() {
            Ok(n) if n.is_power_of_two() && n >= 4 => Ok(()),
            Ok(n) if n < 4 => bad("too small: a segment needs its network, gateway and broadcast addresses and one more"),
            Ok(n) => Err(format!(
                "{key}={v}: not a power of two, expected {} or {}",
                segment::floor_pow2(n),
                segment::floor_pow2(n) << 1
            )),
            Err(_) => bad("not a number"),
        },
        "mask_per_node" => match v.parse::<u8>() {
            Ok(n) if (1..=128).contains(&n) => Ok(()),
            _ => bad("not a prefix length"),
        },
        "addr" => {
            // All digits and dots: meant as an IPv4 address (no host name is all numeric).
            let numeric = v.chars().all(|c| c.is_ascii_digit() || c == '.');
            if v.parse::<IpAddr>().is_ok() || (!numeric && valid_node_name(v)) {
                Ok(())
            } else {
                bad("neither an IP address nor a host name")
            }
        }
        "gateway" => match v.parse::<IpAddr>() {
            Ok(_) => Ok(()),
            Err(_) => bad("not an IP address"),
        },
        "tunnel" => match network::Tunnel::parse(v) {
            Some(_) => Ok(()),
            None => bad("unknown tunnel policy"),
        },
        "tunnel_mode" => match network::TunnelMode::parse(v) {
            Some(_) => Ok(()),
            None => bad("unknown tunnel mode"),
        },
        "tables" => {
            for t in words(v) {
                let numeric_ok = t.parse::<u32>().map(|n| n > 0).unwrap_or(false);
                let name_ok = t.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    && t.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
                if !(numeric_ok || name_ok) {
                    return bad(&format!("bad table {t:?}"));
                }
            }
            if words(v).is_empty() {
                return bad("empty");
            }
            Ok(())
        }
        "dev" => {
            if !v.is_empty() && v.len() <= 15 && v.chars().all(|c| c.is_ascii_graphic() && c != '/' && c != ':') {
                Ok(())
            } else {
                bad("not a valid interface name")
            }
        }
        "public" => match v {
            "true" | "false" => Ok(()),
            _ => bad("not a boolean"),
        },
        _ => Ok(()),
    }
}

/// Every problem of a whole configuration. `touched` names the networks the command changed,
/// so that an overlap is reported from the side of the network just changed.
pub fn validate(cfg: &Config, touched: &BTreeSet<String>) -> Vec<String> {
    let mut errors: Vec<String> = Vec::new();
    let mut push = |e: String| {
        if !errors.contains(&e) {
            errors.push(e)
        }
    };
    let node_count = cfg.cluster_nodes().len().max(1) as u128;
    // A node's view differs from the cluster's only through its own layer or a per-node
    // `network@node` range: only those views are checked apart.
    let mut views: Vec<Option<String>> = vec![None];
    let mut apart: std::collections::BTreeSet<String> = cfg.nodes.keys().cloned().collect();
    for k in cfg.cluster.keys() {
        if let Some((head, node)) = k.split_once('@') {
            if head.starts_with("network#") && head.ends_with(".network") {
                apart.insert(node.to_string());
            }
        }
    }
    views.extend(apart.into_iter().map(Some));
    for view in &views {
        let nets = network::networks(cfg, view.as_deref());
        for net in &nets {
            if net.origin == Origin::Implicit {
                continue;
            }
            let at = match (&net.origin, view) {
                (Origin::Node(n), _) => format!(" (node {n})"),
                _ => String::new(),
            };
            let section = format!("network#{}", net.name);
            if net.cidr.is_none() && matches!(net.ntype, NetType::Bridge | NetType::RoutedBridge) {
                push(format!(
                    "{section}.network is required for type {}{at}: expected a CIDR such as 10.11.0.0/16, or none",
                    net.ntype.as_str()
                ));
            }
            if let (Some(c), NetType::Bridge | NetType::RoutedBridge) = (net.cidr, net.ntype) {
                let a = c.network();
                let unusable = a.is_multicast()
                    || a.is_loopback()
                    || a.is_unspecified()
                    || c.addr().is_multicast();
                if unusable {
                    push(format!(
                        "{section}.network={c}{at}: a multicast, loopback or unspecified range cannot be a {} network, expected a unicast range such as 10.11.0.0/16",
                        net.ntype.as_str()
                    ));
                } else if segment::host_bits(&c) < 2 {
                    push(format!(
                        "{section}.network={c}{at}: too small for a {} network, expected at least a /{} (network, gateway, broadcast and one address)",
                        net.ntype.as_str(),
                        segment::bits(&c) - 2
                    ));
                }
            }
            if net.dev.is_none()
                && net.bridge_name().len() > 15
                && matches!(net.ntype, NetType::Bridge | NetType::RoutedBridge)
            {
                push(format!(
                    "{section}: bridge name {} is longer than 15 characters: set {section}.dev to a shorter name",
                    net.bridge_name()
                ));
            }
            if net.ntype == NetType::RoutedBridge {
                if let Origin::Node(n) = &net.origin {
                    push(format!(
                        "{section}.type=routed_bridge: a routed_bridge network spans the cluster, declare it with om cluster set, not in the layer of node {n}"
                    ));
                    continue;
                }
                check_routed(cfg, net, node_count, &mut push);
            }
        }
        check_overlaps(&nets, touched, &mut push);
    }
    // `network@node` only makes sense for plain bridges (per-node ranges).
    for layer in std::iter::once(&cfg.cluster).chain(cfg.nodes.values()) {
        for k in layer.keys() {
            if let Some(rest) = k.strip_prefix("network#") {
                if let Some((name, opt)) = rest.split_once('.') {
                    if opt.starts_with("network@") {
                        let t = cfg
                            .lookup(None, &format!("network#{name}"), "type")
                            .unwrap_or("bridge");
                        if t != "bridge" {
                            push(format!(
                                "{k}: only bridge networks take a per-node network, network#{name} is of type {t}"
                            ));
                        }
                    }
                }
            }
        }
    }
    errors
}

fn check_routed(cfg: &Config, net: &Network, node_count: u128, push: &mut impl FnMut(String)) {
    let section = format!("network#{}", net.name);
    let Some(cidr) = net.cidr else { return };
    let bits = segment::bits(&cidr);
    let size = segment::size(&cidr).unwrap_or(u128::MAX);
    let max_per = segment::floor_pow2(size / node_count);
    let h = match net.mask_per_node {
        Some(m) => {
            let min_mask = bits - max_per.max(1).trailing_zeros() as u8;
            if m < min_mask || m > bits - 2 {
                push(format!(
                    "{section}.mask_per_node={m} must be between {min_mask} and {}: {cidr} has {size} addresses for {node_count} nodes",
                    bits - 2
                ));
                return;
            }
            bits - m
        }
        None => {
            let ips = net.ips_per_node.unwrap_or(network::DEFAULT_IPS_PER_NODE);
            if ips > max_per {
                push(format!(
                    "{section}.ips_per_node={ips} must be <= {max_per}: {cidr} has {size} addresses for {node_count} nodes"
                ));
                return;
            }
            match net.segment_host_bits() {
                Some(h) => h,
                None => return,
            }
        }
    };
    let mut owners: BTreeMap<IpNet, String> = BTreeMap::new();
    for (node, value) in cfg.subnets(&net.name) {
        let key = format!("{section}.subnet@{node}");
        match value.parse::<IpNet>() {
            Ok(seg) if segment::segment_index(&cidr, h, &seg).is_some() => {
                if let Some(other) = owners.insert(seg, node.clone()) {
                    push(format!(
                        "{section}.subnet@{other} and {section}.subnet@{node} are both {value}: a segment belongs to one node"
                    ));
                }
            }
            _ => push(format!(
                "{key}={value}: not an aligned /{} segment of {cidr}",
                bits - h
            )),
        }
    }
}

fn check_overlaps(nets: &[Network], touched: &BTreeSet<String>, push: &mut impl FnMut(String)) {
    let mut sorted: Vec<(&Network, IpNet)> =
        nets.iter().filter_map(|n| n.cidr.map(|c| (n, c))).collect();
    sorted.sort_by_key(|(_, c)| {
        (
            matches!(c, IpNet::V6(_)),
            segment::to_u128(c.network()),
            c.prefix_len(),
        )
    });
    let end = |c: &IpNet| segment::to_u128(c.broadcast());
    let mut cur: Option<(&Network, IpNet)> = None;
    for (n, c) in sorted {
        if let Some((p, pc)) = cur {
            let same_family = matches!(pc, IpNet::V6(_)) == matches!(c, IpNet::V6(_));
            if same_family && segment::to_u128(c.network()) <= end(&pc) {
                // Speak from the side of the network the operator just changed.
                let (a, ac, b, bc) = if touched.contains(&p.name) && !touched.contains(&n.name)
                    || n.origin == Origin::Implicit
                {
                    (p, pc, n, c)
                } else {
                    (n, c, p, pc)
                };
                push(format!(
                    "network#{}.network={ac} overlaps network#{} ({bc})",
                    a.name, b.name
                ));
            }
            if !same_family || end(&c) > end(&pc) {
                cur = Some((n, c));
            }
        } else {
            cur = Some((n, c));
        }
    }
}
