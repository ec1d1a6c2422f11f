//! The daemon loop: replay then follow the cluster's stream on one subscription, fold,
//! reconcile on relevant events, periodically and on request, report what was applied.
//!
//! Local state (`<state-dir>/state.cbor`) keeps the folded state and its sequence, so a
//! restart resumes where it stopped; a position the stream no longer has (the stream was
//! recreated or purged past it) makes the daemon rebuild from the first event, saying so.

use crate::dataplane::Dataplane;
use crate::desired::{self, desired, Facts};
use crate::plan::{owned_link, plan, Op};
use crate::reconcile::{apply, observe, Manifest};
use futures::{FutureExt, StreamExt};
use om_events::envelope::Envelope;
use om_events::event::{Event, NodeAnnounced, NodeApplied};
use om_events::log::{fold_stored, EventLog};
use om_events::subjects::Subjects;
use om_events::State;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct Options {
    pub node: String,
    pub state_dir: PathBuf,
    /// Reconcile at least this often (a route deleted by hand comes back within one period).
    pub period: Duration,
    pub version: String,
}

/// What a reconcile did, as `om net setup` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupOutcome {
    pub node: String,
    pub seq: u64,
    pub changes: Vec<String>,
    pub errors: Vec<String>,
}

/// A request for an immediate reconcile.
pub type SetupRequest = oneshot::Sender<SetupOutcome>;

#[derive(Serialize, Deserialize)]
struct Local {
    seq: u64,
    relevant_seq: u64,
    state: State,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Daemon<D, L> {
    dp: D,
    log: L,
    subjects: Subjects,
    opts: Options,
    state: State,
    /// Sequence of the last event that matters to this node's plumbing.
    relevant_seq: u64,
    last_report: Option<NodeApplied>,
    manifest: Manifest,
    resolved: BTreeMap<String, (Instant, Vec<IpAddr>)>,
}

impl<D: Dataplane, L: EventLog> Daemon<D, L> {
    pub fn new(dp: D, log: L, subjects: Subjects, opts: Options) -> Self {
        let manifest = Manifest::load(&opts.state_dir);
        let local: Option<Local> = std::fs::read(opts.state_dir.join("state.cbor"))
            .ok()
            .and_then(|b| om_events::query::decode(&b).ok());
        let (state, relevant_seq) = match local {
            Some(l) => (l.state, l.relevant_seq),
            None => (State::default(), 0),
        };
        Daemon {
            dp,
            log,
            subjects,
            opts,
            state,
            relevant_seq,
            last_report: None,
            manifest,
            resolved: BTreeMap::new(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    fn rebuild(&mut self, why: &str) {
        tracing::warn!("{why}: rebuilding from the first event");
        self.state = State::default();
        self.relevant_seq = 0;
    }

    fn save_local(&self) {
        let bytes = om_events::query::encode(&Local {
            seq: self.state.seq,
            relevant_seq: self.relevant_seq,
            state: self.state.clone(),
        });
        if let Err(e) = std::fs::create_dir_all(&self.opts.state_dir)
            .and_then(|_| std::fs::write(self.opts.state_dir.join("state.cbor.tmp"), &bytes))
            .and_then(|_| {
                std::fs::rename(
                    self.opts.state_dir.join("state.cbor.tmp"),
                    self.opts.state_dir.join("state.cbor"),
                )
            })
        {
            tracing::warn!("save local state in {}: {e}", self.opts.state_dir.display());
        }
    }

    /// Does this event change anything for this node's plumbing?
    fn relevant(&self, env: &Envelope) -> bool {
        match &env.event {
            Event::ConfigChanged(_) | Event::NodeAnnounced(_) => true,
            Event::NodeApplied(_) | Event::IpAllocated(_) | Event::IpReleased(_) => false,
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut setup: mpsc::Receiver<SetupRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let last = self.log.last_seq().await?;
        if last < self.state.seq {
            let why = format!(
                "the stream ends at {last}, before this node's position {}",
                self.state.seq
            );
            self.rebuild(&why);
        }
        let mut sub = self
            .log
            .subscribe(&self.subjects.events(), self.state.seq + 1)
            .await?;
        // Catch up with what is already stored before the first reconcile. The stream's
        // sequences are contiguous: a first message past our position means the stream
        // lost it (purged, or recreated and refilled).
        let mut first = true;
        while self.state.seq < last {
            let Some(m) = sub.next().await else {
                anyhow::bail!("subscription ended")
            };
            let m = m?;
            if first && self.state.seq > 0 && m.seq > self.state.seq + 1 {
                let why = format!(
                    "the stream no longer holds sequences {}..{}",
                    self.state.seq + 1,
                    m.seq - 1
                );
                self.rebuild(&why);
                sub = self.log.subscribe(&self.subjects.events(), 1).await?;
                continue;
            }
            first = false;
            self.fold(&m);
        }
        tracing::info!(node = %self.opts.node, seq = self.state.seq, "caught up");
        self.reconcile().await;
        let mut tick = tokio::time::interval(self.opts.period);
        tick.reset();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                m = sub.next() => {
                    let Some(m) = m else { anyhow::bail!("subscription ended") };
                    let mut dirty = self.fold(&m?);
                    // Fold whatever else is ready before reconciling once.
                    while let Some(Some(m)) = sub.next().now_or_never() {
                        dirty |= self.fold(&m?);
                    }
                    if dirty {
                        self.reconcile().await;
                    }
                }
                _ = tick.tick() => { self.reconcile().await; }
                Some(reply) = setup.recv() => {
                    let out = self.reconcile().await;
                    let _ = reply.send(out);
                }
                _ = &mut shutdown => {
                    self.save_local();
                    return Ok(());
                }
            }
        }
    }

    /// Folds one message; true when it matters to this node.
    fn fold(&mut self, m: &om_events::log::Stored) -> bool {
        if m.seq <= self.state.seq {
            return false;
        }
        match fold_stored(&mut self.state, m) {
            Some(env) if self.relevant(&env) => {
                self.relevant_seq = m.seq;
                true
            }
            _ => false,
        }
    }

    async fn facts(&mut self) -> Facts {
        let mut addresses = self.dp.addresses().await.unwrap_or_else(|e| {
            tracing::warn!("list addresses: {e}");
            Vec::new()
        });
        let bridges: Vec<String> =
            om_events::network::networks(&self.state.config, Some(&self.opts.node))
                .iter()
                .map(|n| n.bridge_name())
                .collect();
        addresses.retain(|a| !owned_link(&a.link) && !bridges.contains(&a.link));
        let tables_text = std::fs::read_to_string("/etc/iproute2/rt_tables")
            .or_else(|_| std::fs::read_to_string("/usr/share/iproute2/rt_tables"))
            .unwrap_or_default();
        let mut tables = desired::parse_rt_tables(&tables_text);
        tables.entry("main".into()).or_insert(254);
        tables.entry("local".into()).or_insert(255);
        tables.entry("default".into()).or_insert(253);
        // Names to resolve: peers that never announced, and `addr` values that are names.
        let mut names: Vec<String> = self
            .state
            .config
            .cluster_nodes()
            .into_iter()
            .filter(|n| !self.state.announced.contains_key(n))
            .collect();
        for layer in
            std::iter::once(&self.state.config.cluster).chain(self.state.config.nodes.values())
        {
            for (k, v) in layer {
                if k.contains(".addr") && v.parse::<IpAddr>().is_err() {
                    names.push(v.clone());
                }
            }
        }
        let mut resolved = BTreeMap::new();
        for name in names {
            let fresh = self
                .resolved
                .get(&name)
                .filter(|(t, _)| t.elapsed() < Duration::from_secs(60));
            let ips = match fresh {
                Some((_, ips)) => ips.clone(),
                None => {
                    let ips: Vec<IpAddr> = match tokio::time::timeout(
                        Duration::from_millis(500),
                        tokio::net::lookup_host((name.as_str(), 0)),
                    )
                    .await
                    {
                        Ok(Ok(it)) => it.map(|sa| sa.ip()).collect(),
                        _ => Vec::new(),
                    };
                    self.resolved
                        .insert(name.clone(), (Instant::now(), ips.clone()));
                    ips
                }
            };
            resolved.insert(name, ips);
        }
        Facts {
            addresses,
            resolved,
            tables,
            state_dir: self.opts.state_dir.clone(),
        }
    }

    /// Makes the node match the state; reports; returns what changed.
    pub async fn reconcile(&mut self) -> SetupOutcome {
        let facts = self.facts().await;
        self.announce(&facts).await;
        let want = desired(&self.state, &self.opts.node, &facts);
        for n in &want.notes {
            tracing::info!("{n}");
        }
        let stranger = self.stranger();
        let (changes, mut errors) = match observe(&self.dp, &want, &self.manifest).await {
            Ok(seen) => {
                let mut ops = plan(&want, &seen);
                if let Some(why) = &stranger {
                    // A daemon started under a wrong name (the default is the host name)
                    // must not tear down what the node's real daemon built.
                    let before = ops.len();
                    ops.retain(|o| !matches!(o, Op::DeleteLink(_) | Op::DeleteRoute(_)));
                    if ops.len() != before {
                        tracing::warn!(
                            "{why}: leaving {} link(s) and route(s) in place",
                            before - ops.len()
                        );
                    }
                }
                apply(&self.dp, &ops, &want.cni_dir, &mut self.manifest).await
            }
            Err(e) => (Vec::new(), vec![format!("observe: {e}")]),
        };
        errors.extend(stranger);
        errors.extend(want.errors.iter().cloned());
        let report = NodeApplied {
            node: self.opts.node.clone(),
            seq: self.relevant_seq,
            networks: want.report.clone(),
            errors: errors.clone(),
        };
        if self.last_report.as_ref() != Some(&report) {
            match self.publish(Event::NodeApplied(report.clone())).await {
                Ok(_) => self.last_report = Some(report),
                Err(e) => tracing::warn!("report: {e}"),
            }
        }
        self.save_local();
        for n in &want.report {
            for e in &n.errors {
                errors.push(e.clone());
            }
        }
        SetupOutcome {
            node: self.opts.node.clone(),
            seq: self.relevant_seq,
            changes,
            errors,
        }
    }

    /// Appends one of this node's own events (announcement, report) to its subject, which
    /// only this daemon writes: no condition. Returns the ack and the event's time.
    async fn publish(
        &self,
        ev: Event,
    ) -> Result<(om_events::log::Ack, u64), om_events::log::LogError> {
        let env = Envelope::new(&self.subjects.cluster, &self.opts.node, now_ms(), ev);
        let subject = self.subjects.node(&self.opts.node);
        let ack = self
            .log
            .append(&subject, None, &env.id.to_string(), env.encode())
            .await?;
        Ok((ack, env.time_ms))
    }

    /// Why this daemon looks misnamed: its node is not in `cluster.nodes` and never held a
    /// segment. `None` for members and for nodes that left (those do tear down).
    fn stranger(&self) -> Option<String> {
        let node = &self.opts.node;
        let members = self.state.config.cluster_nodes();
        let ever = self
            .state
            .last_segment
            .values()
            .any(|m| m.contains_key(node));
        (!members.contains(node) && !ever).then(|| {
            format!(
                "node {node} is not in cluster.nodes ({}) and never was: check --node (default: the host name)",
                if members.is_empty() { "empty".to_string() } else { members.join(" ") }
            )
        })
    }

    /// Announces this node's endpoint addresses when they differ from its last announcement.
    async fn announce(&mut self, facts: &Facts) {
        let mut addrs: Vec<IpAddr> = facts
            .addresses
            .iter()
            .map(|a| a.address.addr())
            .filter(desired::usable_endpoint)
            .collect();
        addrs.sort();
        addrs.dedup();
        let current = self.state.announced.get(&self.opts.node);
        if current.is_some_and(|a| a.addrs == addrs && a.version == self.opts.version) {
            return;
        }
        let ev = Event::NodeAnnounced(NodeAnnounced {
            node: self.opts.node.clone(),
            addrs: addrs.clone(),
            version: self.opts.version.clone(),
        });
        match self.publish(ev).await {
            // Remember our own announcement now, so the next reconcile does not repeat it.
            // Only the announcement: the position (`state.seq`) stays, or the subscription
            // would skip what was stored before it and not yet folded (a peer's
            // announcement, a configuration change). The stream delivers it in order.
            Ok((ack, time_ms)) => {
                self.state.announced.insert(
                    self.opts.node.clone(),
                    om_events::state::Announce {
                        addrs,
                        version: self.opts.version.clone(),
                        seq: ack.seq,
                        time_ms,
                    },
                );
            }
            Err(e) => tracing::warn!("announce: {e}"),
        }
    }
}
