//! Event kinds and their payloads.
//!
//! Events are facts, written once: a keyword change records the resulting value (a `+=` on a
//! list is stored as the whole new list), and the segments that a change made necessary are
//! recorded in the same event as `Origin::Derived` changes of `network#N.subnet@NODE`.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One change of one keyword in one configuration layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `None` for the cluster layer (`om cluster set`), the node name for a node layer
    /// (`om node set --node N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The full keyword, `section.option[@scope]`, e.g. `network#backend1.subnet@n2`.
    pub key: String,
    /// The new value, `None` when the keyword is unset.
    pub value: Option<String>,
    /// Who decided it: the operator, or the system as a consequence of the operator's change.
    #[serde(default)]
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
    Operator,
    Derived,
}

/// A node's own view of what it applied for one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedNetwork {
    pub name: String,
    pub segment: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub routes: u32,
    pub tunnels: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Who holds an address: a resource of an object instance, through one CNI attachment.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// Object path, e.g. `testbackend/svc/s1` (empty for a bare CNI attachment).
    pub path: String,
    /// Resource id, e.g. `ip#0`.
    pub rid: String,
    /// CNI container id and interface name: the idempotency key of a CNI ADD.
    pub container_id: String,
    pub ifname: String,
    /// The network namespace the attachment lives in (`/var/run/netns/NAME`,
    /// `/proc/PID/ns/net`): when it is gone, the lease is stale. Empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
}

/// Every kind of event. The wire tag (`kind`) is given by [`Event::kind`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Event {
    ConfigChanged(ConfigChanged),
    NodeAnnounced(NodeAnnounced),
    NodeApplied(NodeApplied),
    IpAllocated(IpAllocated),
    IpReleased(IpReleased),
    ObjectChanged(ObjectChanged),
    ObjectTarget(ObjectTarget),
    InstanceStatus(InstanceStatus),
}

/// `object.changed`: keyword changes of one service object (`om <path> set|unset`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectChanged {
    pub path: String,
    pub changes: Vec<Change>,
}

/// Where an object should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Started on this node.
    Started { node: String },
    /// Stopped everywhere.
    Stopped,
}

/// `object.target`: `om <path> start --node N` or `om <path> stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectTarget {
    pub path: String,
    pub target: Target,
}

/// State of an instance or of one of its resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Up {
    Up,
    Down,
    Failed,
}

impl Up {
    pub fn as_str(self) -> &'static str {
        match self {
            Up::Up => "up",
            Up::Down => "down",
            Up::Failed => "failed",
        }
    }
}

/// One ip resource of an instance, as the node applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    pub rid: String,
    pub network: String,
    pub state: Up,
    /// The address with its prefix length (`10.11.0.2/22`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpNet>,
    pub netns: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `instance.status`: what a node did for an object's target (on the node's subject).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub path: String,
    pub node: String,
    pub state: Up,
    /// The `object.target` event (stream sequence) this status answers.
    pub target_seq: u64,
    pub resources: Vec<ResourceStatus>,
}

/// `config.changed`: all the `--kw` of one command, plus what they made necessary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChanged {
    pub changes: Vec<Change>,
}

/// `node.announced`: a daemon started; its endpoint candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnnounced {
    pub node: String,
    pub addrs: Vec<IpAddr>,
    pub version: String,
}

/// `node.applied`: the outcome of a reconcile on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeApplied {
    pub node: String,
    /// The stream sequence whose state this reconcile reflects.
    pub seq: u64,
    pub networks: Vec<AppliedNetwork>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// `ip.allocated`: an address of a node's segment given to an owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAllocated {
    pub network: String,
    pub node: String,
    pub ip: IpAddr,
    pub owner: Owner,
}

/// `ip.released`: the address is free again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpReleased {
    pub network: String,
    pub node: String,
    pub ip: IpAddr,
    pub owner: Owner,
    /// Why: `stop`, `cni del`, `owner gone`, `node removed`, ...
    pub reason: String,
}

impl Event {
    /// The wire tag of the event kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::ConfigChanged(_) => "config.changed",
            Event::NodeAnnounced(_) => "node.announced",
            Event::NodeApplied(_) => "node.applied",
            Event::IpAllocated(_) => "ip.allocated",
            Event::IpReleased(_) => "ip.released",
            Event::ObjectChanged(_) => "object.changed",
            Event::ObjectTarget(_) => "object.target",
            Event::InstanceStatus(_) => "instance.status",
        }
    }

    /// One line for humans, as `om net history` prints it.
    pub fn summary(&self) -> Vec<String> {
        match self {
            Event::ConfigChanged(c) => c
                .changes
                .iter()
                .map(|ch| {
                    let scope = match &ch.node {
                        Some(n) => format!(" on node {n}"),
                        None => String::new(),
                    };
                    match (&ch.value, ch.origin) {
                        (Some(v), Origin::Derived) if ch.key.contains(".subnet@") => {
                            let node = ch.key.rsplit('@').next().unwrap_or("");
                            format!("assign {v} to {node}")
                        }
                        (None, Origin::Derived) if ch.key.contains(".subnet@") => {
                            let node = ch.key.rsplit('@').next().unwrap_or("");
                            let net = ch
                                .key
                                .strip_prefix("network#")
                                .and_then(|k| k.split_once(".subnet@"))
                                .map_or("", |(n, _)| n);
                            format!("free the {net} segment of {node}")
                        }
                        (Some(v), _) => format!("set {}={v}{scope}", ch.key),
                        (None, _) => format!("unset {}{scope}", ch.key),
                    }
                })
                .collect(),
            Event::NodeAnnounced(a) => {
                let addrs: Vec<String> = a.addrs.iter().map(|a| a.to_string()).collect();
                vec![format!(
                    "{} announced {} (version {})",
                    a.node,
                    addrs.join(" "),
                    a.version
                )]
            }
            Event::NodeApplied(a) => {
                let mut s = format!("{} applied seq {}", a.node, a.seq);
                let errs =
                    a.errors.len() + a.networks.iter().map(|n| n.errors.len()).sum::<usize>();
                if errs > 0 {
                    s.push_str(&format!(" with {errs} error(s)"));
                }
                vec![s]
            }
            Event::IpAllocated(a) => vec![format!(
                "allocate {} to {} on {}",
                a.ip,
                owner_label(&a.owner),
                a.node
            )],
            Event::IpReleased(r) => vec![format!(
                "release {} of {} on {} ({})",
                r.ip,
                owner_label(&r.owner),
                r.node,
                r.reason
            )],
            Event::ObjectChanged(o) => o
                .changes
                .iter()
                .map(|ch| match &ch.value {
                    Some(v) => format!("{}: set {}={v}", o.path, ch.key),
                    None => format!("{}: unset {}", o.path, ch.key),
                })
                .collect(),
            Event::ObjectTarget(t) => vec![match &t.target {
                Target::Started { node } => format!("start {} on {node}", t.path),
                Target::Stopped => format!("stop {}", t.path),
            }],
            Event::InstanceStatus(i) => {
                let mut s = format!("{} {} on {}", i.path, i.state.as_str(), i.node);
                for r in &i.resources {
                    if let Some(ip) = r.ip {
                        s.push_str(&format!(", {} {ip}", r.rid));
                    }
                    if let Some(e) = &r.error {
                        s.push_str(&format!(", {}: {e}", r.rid));
                    }
                }
                vec![s]
            }
        }
    }
}

fn owner_label(o: &Owner) -> String {
    if o.path.is_empty() {
        format!("container {} {}", o.container_id, o.ifname)
    } else {
        format!("{} {}", o.path, o.rid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_summaries_name_the_network_when_freeing() {
        let derived = |key: &str, value: Option<&str>| Change {
            node: None,
            key: key.into(),
            value: value.map(str::to_string),
            origin: Origin::Derived,
        };
        let ev = Event::ConfigChanged(ConfigChanged {
            changes: vec![
                derived("network#backend1.subnet@node2", Some("10.11.4.0/22")),
                derived("network#backend1.subnet@node3", None),
            ],
        });
        assert_eq!(
            ev.summary(),
            [
                "assign 10.11.4.0/22 to node2",
                "free the backend1 segment of node3"
            ]
        );
    }
}
