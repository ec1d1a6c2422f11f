//! The fold: the cluster state is `events.fold(State::default(), State::apply)`.
//!
//! [`State::observe`] is called for every stored message (even one that is skipped), so that
//! the last sequence of each subject, which conditional appends are checked against, is
//! always known; [`State::apply`] folds a decoded event.

use crate::config::Config;
use crate::event::*;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// A node daemon's last announcement, with when it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub addrs: Vec<IpAddr>,
    pub version: String,
    pub seq: u64,
    pub time_ms: u64,
}

/// A node daemon's last report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub report: NodeApplied,
    pub seq: u64,
    pub time_ms: u64,
}

/// A service object: its configuration, its target and what nodes reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub config: crate::config::Layer,
    /// The last `object.target` and its stream sequence.
    pub target: Option<(Target, u64)>,
    /// The last `instance.status` of each node.
    pub instances: BTreeMap<String, Instance>,
}

/// A node's last report on an object instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub status: InstanceStatus,
    pub seq: u64,
    pub time_ms: u64,
}

/// Key of a lease: (network, node, address). Bridge networks are local to each node, so
/// two nodes may lease the same address; routed_bridge segments never overlap.
pub type LeaseKey = (String, String, IpAddr);

/// A live lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub network: String,
    pub node: String,
    pub ip: IpAddr,
    pub owner: Owner,
    pub seq: u64,
    pub time_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last stream sequence folded.
    pub seq: u64,
    /// Last stream sequence of each subject seen (the expected value of the next
    /// conditional append on that subject).
    pub subject_seq: BTreeMap<String, u64>,
    pub config: Config,
    /// Every segment ever assigned in each network since it was declared: a node added later
    /// gets one never used before, so a stale route elsewhere cannot misdirect its traffic.
    pub assigned_ever: BTreeMap<String, BTreeSet<IpNet>>,
    /// The last segment each node held in each network (network ⇒ node ⇒ segment): a node
    /// that comes back gets it again when it is free.
    pub last_segment: BTreeMap<String, BTreeMap<String, IpNet>>,
    pub announced: BTreeMap<String, Announce>,
    pub applied: BTreeMap<String, Applied>,
    /// Live leases.
    pub leases: BTreeMap<LeaseKey, Lease>,
    /// The last address each (network, object path, rid) held: a restarted instance gets it
    /// back when it is free.
    pub last_ip: BTreeMap<(String, String, String), IpAddr>,
    /// Service objects by path.
    pub objects: BTreeMap<String, Object>,
    /// Messages skipped (unknown kind, newer schema, malformed): count, for status.
    pub skipped: u64,
}

impl State {
    /// Records a stored message's position, whatever its content.
    pub fn observe(&mut self, seq: u64, subject: &str) {
        self.seq = self.seq.max(seq);
        self.subject_seq.insert(subject.to_string(), seq);
    }

    /// The expected last sequence for a conditional append on `subject` (0: none yet).
    pub fn last_on(&self, subject: &str) -> u64 {
        self.subject_seq.get(subject).copied().unwrap_or(0)
    }

    /// Folds one event at stream sequence `seq`.
    pub fn apply(&mut self, seq: u64, time_ms: u64, event: &Event) {
        self.seq = self.seq.max(seq);
        match event {
            Event::ConfigChanged(c) => self.apply_config(&c.changes),
            Event::NodeAnnounced(a) => {
                self.announced.insert(
                    a.node.clone(),
                    Announce {
                        addrs: a.addrs.clone(),
                        version: a.version.clone(),
                        seq,
                        time_ms,
                    },
                );
            }
            Event::NodeApplied(a) => {
                self.applied.insert(
                    a.node.clone(),
                    Applied {
                        report: a.clone(),
                        seq,
                        time_ms,
                    },
                );
            }
            Event::IpAllocated(a) => {
                if !a.owner.path.is_empty() {
                    self.last_ip.insert(
                        (a.network.clone(), a.owner.path.clone(), a.owner.rid.clone()),
                        a.ip,
                    );
                }
                self.leases.insert(
                    (a.network.clone(), a.node.clone(), a.ip),
                    Lease {
                        network: a.network.clone(),
                        node: a.node.clone(),
                        ip: a.ip,
                        owner: a.owner.clone(),
                        seq,
                        time_ms,
                    },
                );
            }
            Event::IpReleased(r) => {
                self.leases
                    .remove(&(r.network.clone(), r.node.clone(), r.ip));
            }
            Event::ObjectChanged(o) => {
                let obj = self.objects.entry(o.path.clone()).or_default();
                for ch in &o.changes {
                    match &ch.value {
                        Some(v) => obj.config.insert(ch.key.clone(), v.clone()),
                        None => obj.config.remove(&ch.key),
                    };
                }
            }
            Event::ObjectTarget(t) => {
                self.objects.entry(t.path.clone()).or_default().target =
                    Some((t.target.clone(), seq));
            }
            Event::InstanceStatus(i) => {
                self.objects
                    .entry(i.path.clone())
                    .or_default()
                    .instances
                    .insert(
                        i.node.clone(),
                        Instance {
                            status: i.clone(),
                            seq,
                            time_ms,
                        },
                    );
            }
        }
    }

    fn apply_config(&mut self, changes: &[Change]) {
        let mut touched = BTreeSet::new();
        for ch in changes {
            self.config.apply(ch);
            if ch.node.is_some() {
                continue;
            }
            if let Some(rest) = ch.key.strip_prefix("network#") {
                if let Some((name, opt)) = rest.split_once('.') {
                    touched.insert(name.to_string());
                    if let (Some(node), Some(v)) = (opt.strip_prefix("subnet@"), &ch.value) {
                        if let Ok(seg) = v.parse::<IpNet>() {
                            self.assigned_ever
                                .entry(name.to_string())
                                .or_default()
                                .insert(seg);
                            self.last_segment
                                .entry(name.to_string())
                                .or_default()
                                .insert(node.to_string(), seg);
                        }
                    }
                }
            }
        }
        // A network whose section is gone from the cluster layer starts afresh if declared again.
        for name in touched {
            if Config::section_keys(&self.config.cluster, &format!("network#{name}")).is_empty() {
                self.assigned_ever.remove(&name);
                self.last_segment.remove(&name);
            }
        }
    }

    /// Live leases held on a node in a network.
    pub fn leases_on(&self, network: &str, node: &str) -> usize {
        self.leases
            .values()
            .filter(|l| l.network == network && l.node == node)
            .count()
    }
}
