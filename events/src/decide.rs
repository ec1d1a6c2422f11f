//! Decisions: a command and the current state in, the changes to record out.
//!
//! [`decide`] is pure. It applies the operator's keywords to a copy of the configuration,
//! derives what they make necessary (segments for nodes that lack one, segments freed by
//! nodes that left), validates the result and returns the difference as [`Change`]s, in
//! command order, derived changes last. An empty result means "nothing to do": nothing is
//! written. On any problem, nothing is returned but the problems, each naming the keyword,
//! the value and what is expected.

use crate::config::{words, Config};
use crate::event::{Change, Origin};
use crate::keyword::{Key, KwOp, OpKind, UnsetTarget};
use crate::network::{self, NetType, Origin as NetOrigin};
use crate::segment;
use crate::state::State;
use crate::validate::{check_value, validate};
use ipnet::IpNet;
use std::collections::BTreeSet;

/// A configuration command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `om cluster set` (node `None`) or `om node set --node N`.
    Set {
        node: Option<String>,
        ops: Vec<KwOp>,
    },
    /// `om cluster unset` or `om node unset --node N`.
    Unset {
        node: Option<String>,
        targets: Vec<UnsetTarget>,
    },
    /// Frees the segments of nodes that left `cluster.nodes` and hold no lease any more
    /// (their leases are released first, by the projector).
    FreeSegments,
}

/// Why a command was refused; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", errors.join("\n"))]
pub struct Rejected {
    pub errors: Vec<String>,
}

/// Decides the changes a command makes.
pub fn decide(state: &State, cmd: &Command) -> Result<Vec<Change>, Rejected> {
    let mut cfg = state.config.clone();
    let mut errors = Vec::new();
    // (layer, key) in the order the operator gave them.
    let mut touched: Vec<(Option<String>, String)> = Vec::new();
    match cmd {
        Command::Set { node, ops } => {
            for op in ops {
                match operator_value(&cfg, node.as_deref(), op) {
                    Ok(value) => {
                        let key = op.key.to_string();
                        match value {
                            Some(v) => cfg.layer_mut(node.as_deref()).insert(key.clone(), v),
                            None => cfg.layer_mut(node.as_deref()).remove(&key),
                        };
                        touched.push((node.clone(), key));
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        Command::FreeSegments => {
            for net in network::networks(&cfg.clone(), None) {
                if net.ntype != NetType::RoutedBridge || net.origin != NetOrigin::Cluster {
                    continue;
                }
                let members = cfg.cluster_nodes();
                for node in cfg.subnets(&net.name).keys() {
                    if !members.contains(node) && state.leases_on(&net.name, node) == 0 {
                        cfg.cluster
                            .remove(&format!("network#{}.subnet@{node}", net.name));
                    }
                }
            }
            return Ok(diff(&state.config, &cfg, &[]));
        }
        Command::Unset { node, targets } => {
            for t in targets {
                let keys = match t {
                    UnsetTarget::Key(k) => vec![k.to_string()],
                    UnsetTarget::Section(s) => cfg
                        .layer(node.as_deref())
                        .map(|l| Config::section_keys(l, &s.to_string()))
                        .unwrap_or_default(),
                };
                for key in keys {
                    cfg.layer_mut(node.as_deref()).remove(&key);
                    touched.push((node.clone(), key));
                }
            }
        }
    }
    if node_of(cmd).is_some() {
        cfg.nodes.retain(|_, l| !l.is_empty());
    }
    if !errors.is_empty() {
        return Err(Rejected { errors });
    }
    let touched_nets: BTreeSet<String> = touched
        .iter()
        .filter_map(|(_, k)| {
            k.strip_prefix("network#")?
                .split_once('.')
                .map(|(n, _)| n.to_string())
        })
        .collect();
    derive_segments(state, &mut cfg, &touched, &mut errors);
    if errors.is_empty() {
        let before = validate(&state.config, &touched_nets);
        errors = validate(&cfg, &touched_nets)
            .into_iter()
            .filter(|e| !before.contains(e))
            .collect();
    }
    if !errors.is_empty() {
        return Err(Rejected { errors });
    }
    Ok(diff(&state.config, &cfg, &touched))
}

fn node_of(cmd: &Command) -> Option<&str> {
    match cmd {
        Command::Set { node, .. } | Command::Unset { node, .. } => node.as_deref(),
        Command::FreeSegments => None,
    }
}

/// The value a `--kw` leaves (`None`: the keyword is removed), checked.
fn operator_value(cfg: &Config, node: Option<&str>, op: &KwOp) -> Result<Option<String>, String> {
    let key = &op.key;
    if node.is_some() && key.spec().cluster_only {
        return Err(format!(
            "{key}: a cluster-wide keyword, set it with om cluster set, not in a node layer"
        ));
    }
    let spec = key.spec();
    let current = cfg.get(node, &key.to_string()).unwrap_or("");
    let value = if spec.list {
        let mut list = match op.op {
            OpKind::Set => Vec::new(),
            _ => words(current),
        };
        for w in words(&op.value) {
            match op.op {
                OpKind::Remove => list.retain(|x| *x != w),
                _ if op.op == OpKind::Append && list.contains(&w) => {}
                _ => list.push(w),
            }
        }
        list.join(" ")
    } else {
        op.value.clone()
    };
    // `K-=V` may empty a list (the keyword goes); `K=` with nothing is refused, so that an
    // empty shell variable cannot wipe cluster.nodes: unset says it on purpose.
    if spec.list && value.is_empty() && op.op == OpKind::Remove {
        return Ok(None);
    }
    if spec.list && value.is_empty() {
        return Err(format!(
            "{key}: empty value, expected {} (to remove the keyword, use unset --kw {key})",
            spec.expected
        ));
    }
    if value.is_empty() {
        return Err(format!("{key}: empty value, expected {}", spec.expected));
    }
    check_value(key, &value)?;
    Ok(Some(value))
}

/// Assigns segments to the cluster nodes that lack one and frees those of nodes that left,
/// in every cluster-wide routed_bridge network.
fn derive_segments(
    state: &State,
    cfg: &mut Config,
    touched: &[(Option<String>, String)],
    errors: &mut Vec<String>,
) {
    let old_nodes: BTreeSet<String> = state.config.cluster_nodes().into_iter().collect();
    let new_nodes = cfg.cluster_nodes();
    let old_nets = network::networks(&state.config, None);
    for net in network::networks(cfg, None) {
        if net.ntype != NetType::RoutedBridge || net.origin != NetOrigin::Cluster {
            continue;
        }
        let (Some(cidr), Some(h)) = (net.cidr, net.segment_host_bits()) else {
            continue;
        };
        let section = format!("network#{}", net.name);
        let subnets = cfg.subnets(&net.name);
        // Never renumber: a different segment size or range with segments in place is refused.
        if let Some(old) = old_nets
            .iter()
            .find(|o| o.name == net.name && o.ntype == NetType::RoutedBridge)
        {
            let reshaped = old.cidr != net.cidr || old.segment_host_bits() != Some(h);
            let had = state.config.subnets(&net.name);
            if reshaped && !had.is_empty() && had.iter().any(|(n, v)| subnets.get(n) == Some(v)) {
                let what = touched
                    .iter()
                    .filter(|(l, k)| {
                        l.is_none()
                            && k.starts_with(&format!("{section}."))
                            && !k.contains(".subnet@")
                    })
                    .map(|(_, k)| format!("{k}={}", cfg.get(None, k).unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(" ");
                let held: Vec<String> = had.iter().map(|(n, v)| format!("{n} {v}")).collect();
                errors.push(format!(
                    "{what}: segments are already assigned ({}); changing the range or the segment size would renumber the nodes: unset {section} and declare it again",
                    held.join(", ")
                ));
                continue;
            }
        }
        let count = segment::segment_count(&cidr, h).unwrap_or(u128::MAX);
        if count < new_nodes.len() as u128 {
            continue; // the capacity check of validation names the limit
        }
        let mut in_use: BTreeSet<IpNet> = BTreeSet::new();
        for (node, value) in &subnets {
            let removed = old_nodes.contains(node) && !new_nodes.contains(node);
            if removed && state.leases_on(&net.name, node) == 0 {
                cfg.cluster.remove(&format!("{section}.subnet@{node}"));
            } else if let Ok(seg) = value.parse() {
                in_use.insert(seg);
            }
        }
        let ever = state.assigned_ever.get(&net.name);
        for node in &new_nodes {
            if subnets.contains_key(node)
                && cfg.get(None, &format!("{section}.subnet@{node}")).is_some()
            {
                continue;
            }
            let previous = state
                .last_segment
                .get(&net.name)
                .and_then(|m| m.get(node))
                .filter(|s| segment::segment_index(&cidr, h, s).is_some() && !in_use.contains(s))
                .copied();
            let pick = previous
                .or_else(|| {
                    lowest(&cidr, h, count, |s| {
                        !in_use.contains(s) && !ever.is_some_and(|e| e.contains(s))
                    })
                })
                .or_else(|| lowest(&cidr, h, count, |s| !in_use.contains(s)));
            match pick {
                Some(seg) => {
                    in_use.insert(seg);
                    cfg.cluster.insert(format!("{section}.subnet@{node}"), seg.to_string());
                }
                None => errors.push(format!(
                    "cluster.nodes: no free segment for node {node} in {section}: {cidr} has {count} segments of /{}, all in use",
                    segment::bits(&cidr) - h
                )),
            }
        }
    }
}

/// The lowest segment index whose segment passes `free`. The scan is bounded by the number
/// of segments in use or ever assigned, plus one.
fn lowest(cidr: &IpNet, h: u8, count: u128, free: impl Fn(&IpNet) -> bool) -> Option<IpNet> {
    let mut i = 0u128;
    while i < count {
        let seg = segment::nth_segment(cidr, h, i)?;
        if free(&seg) {
            return Some(seg);
        }
        i += 1;
    }
    None
}

/// Every key whose value differs, operator keys first in command order, then derived ones.
fn diff(old: &Config, new: &Config, touched: &[(Option<String>, String)]) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    let mut seen = BTreeSet::new();
    let value = |c: &Config, node: &Option<String>, key: &str| {
        c.get(node.as_deref(), key).map(str::to_string)
    };
    for (node, key) in touched {
        if !seen.insert((node.clone(), key.clone())) {
            continue;
        }
        let (a, b) = (value(old, node, key), value(new, node, key));
        if a != b {
            out.push(Change {
                node: node.clone(),
                key: key.clone(),
                value: b,
                origin: Origin::Operator,
            });
        }
    }
    let mut layers: BTreeSet<Option<String>> = [None].into();
    layers.extend(
        old.nodes
            .keys()
            .chain(new.nodes.keys())
            .map(|n| Some(n.clone())),
    );
    for node in layers {
        let empty = Default::default();
        let (lo, ln) = (
            old.layer(node.as_deref()).unwrap_or(&empty),
            new.layer(node.as_deref()).unwrap_or(&empty),
        );
        let keys: BTreeSet<&String> = lo.keys().chain(ln.keys()).collect();
        for key in keys {
            if seen.contains(&(node.clone(), key.clone())) || lo.get(key) == ln.get(key) {
                continue;
            }
            out.push(Change {
                node: node.clone(),
                key: key.clone(),
                value: ln.get(key).cloned(),
                origin: Origin::Derived,
            });
        }
    }
    out
}

/// Parses `--kw` arguments of a set command; every bad one is reported.
pub fn parse_set(kws: &[String]) -> Result<Vec<KwOp>, Rejected> {
    collect(
        kws.iter()
            .map(|s| KwOp::parse(s).map_err(|e| e.to_string())),
    )
}

/// Parses `--kw` arguments of an unset command.
pub fn parse_unset(kws: &[String]) -> Result<Vec<UnsetTarget>, Rejected> {
    collect(
        kws.iter()
            .map(|s| UnsetTarget::parse(s).map_err(|e| e.to_string())),
    )
}

fn collect<T>(items: impl Iterator<Item = Result<T, String>>) -> Result<Vec<T>, Rejected> {
    let (ok, errors): (Vec<_>, Vec<_>) = items.partition(Result::is_ok);
    if errors.is_empty() {
        Ok(ok.into_iter().map(Result::unwrap).collect())
    } else {
        Err(Rejected {
            errors: errors.into_iter().map(|e| e.err().unwrap()).collect(),
        })
    }
}

/// `om cluster get --kw K` (node `None`: the cluster layer, exactly that key) or
/// `om node get --kw K --node N` (the value node N sees: its layer over the cluster layer,
/// `K@N` before `K`). `Ok(None)` when unset.
pub fn get(state: &State, node: Option<&str>, key: &str) -> Result<Option<String>, String> {
    let k = Key::parse(key).map_err(|e| e.to_string())?;
    let value = match (node, &k.scope) {
        (Some(n), None) => state
            .config
            .lookup(Some(n), &k.section.to_string(), &k.option),
        (Some(n), Some(_)) => state
            .config
            .get(Some(n), &k.to_string())
            .or_else(|| state.config.get(None, &k.to_string())),
        (None, _) => state.config.get(None, &k.to_string()),
    };
    Ok(value.map(str::to_string))
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
