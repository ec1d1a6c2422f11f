//! The daemon loop: replay then follow the cluster's stream on one subscription, fold,
//! reconcile on relevant events, periodically and on request, report what was applied.
//!
//! Local state (`<state-dir>/state.cbor`) keeps the folded state and its sequence, so a
//! restart resumes where it stopped; a position the stream no longer has (the stream was
//! recreated or purged past it) makes the daemon rebuild from the first event, saying so.
//!
//! The same fold is also saved beside the stream as the snapshot `node-<name>` (JetStream's
//! object store; schema version and stream sequence inside), at most every
//! [`SNAPSHOT_EVERY`] when it moved, and at shutdown, so a node that lost its disk
//! (reinstalled, new state directory) starts from it and replays only the tail. The newer
//! of the two wins.

use crate::dataplane::Dataplane;
use crate::desired::{self, desired, Facts};
use crate::instance;
use crate::ipam_proto::{self, code};
use crate::plan::{owned_link, plan, Op};
use crate::plugin::Plugins;
use crate::reconcile::{apply, observe, Manifest};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use om_events::envelope::Envelope;
use om_events::event::{Event, InstanceStatus, NodeAnnounced, NodeApplied, Owner, Target, Up};
use om_events::ipam::{self, Alloc};
use om_events::log::{fold_stored, EventLog, LogError, Stored};
use om_events::subjects::Subjects;
use om_events::State;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
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

/// A request of the `om-ipam` plugin, with where to answer.
pub type IpamCall = (ipam_proto::Request, oneshot::Sender<ipam_proto::Reply>);

type Sub = BoxStream<'static, Result<Stored, LogError>>;

/// Least time between two snapshots saved beside the stream (shutdown always saves).
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(60);

/// How long a snapshot save may hold the daemon's loop while the server does not answer.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an IPAM request keeps retrying while the event log is unreachable.
const IPAM_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Serialize, Deserialize)]
struct Local {
    seq: u64,
    relevant_seq: u64,
    state: State,
}

/// The snapshot kept beside the stream: `{schema, seq, state: NodeSnapshot}`.
#[derive(Serialize, Deserialize)]
struct NodeSnapshot {
    relevant_seq: u64,
    state: State,
}

/// [`NodeSnapshot`] borrowed, to save without cloning the state.
#[derive(Serialize)]
struct NodeSnapshotRef<'a> {
    relevant_seq: u64,
    state: &'a State,
}

/// Name of a node daemon's snapshot in the snapshot store.
pub fn snapshot_name(node: &str) -> String {
    format!("node-{node}")
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
    /// Objects with a start or stop under way.
    busy: BTreeSet<String>,
    /// The instance statuses this daemon published, before the stream gives them back.
    reported: BTreeMap<String, InstanceStatus>,
    done_tx: mpsc::UnboundedSender<InstanceStatus>,
    done_rx: Option<mpsc::UnboundedReceiver<InstanceStatus>>,
    /// Sequence and time of the last snapshot saved beside the stream.
    snapshot_seq: u64,
    snapshot_at: Option<Instant>,
}

impl<D: Dataplane, L: EventLog> Daemon<D, L> {
    pub fn new(dp: D, log: L, subjects: Subjects, opts: Options) -> Self {
        let manifest = Manifest::load(&opts.state_dir);
        let local: Option<Local> = std::fs::read(opts.state_dir.join("state.cbor"))
            .ok()
            .and_then(|b| om_events::query::decode(&b).ok());
        let (done_tx, done_rx) = mpsc::unbounded_channel();
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
            busy: BTreeSet::new(),
            reported: BTreeMap::new(),
            done_tx,
            done_rx: Some(done_rx),
            snapshot_seq: 0,
            snapshot_at: None,
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

    /// Starts from the snapshot beside the stream when it is ahead of the local state (and
    /// not ahead of the stream).
    async fn load_snapshot(&mut self, last: u64) {
        let name = snapshot_name(&self.opts.node);
        let bytes = match self.log.get_snapshot(&name).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("snapshot {name}: {e}; starting from the local state");
                return;
            }
        };
        let Some(snap) = om_events::snapshot::decode::<NodeSnapshot>(&name, &bytes) else {
            return;
        };
        self.snapshot_seq = snap.seq;
        if snap.seq > self.state.seq && snap.seq <= last {
            tracing::info!(
                "starting from snapshot {name} at sequence {} (local state at {})",
                snap.seq,
                self.state.seq
            );
            self.state = snap.state.state;
            self.relevant_seq = snap.state.relevant_seq;
        }
    }

    /// Saves the fold beside the stream when it moved since the last save, and (unless
    /// `now`) the last save is at least [`SNAPSHOT_EVERY`] old.
    async fn save_snapshot(&mut self, now: bool) {
        if self.state.seq == self.snapshot_seq
            || (!now
                && self
                    .snapshot_at
                    .is_some_and(|t| t.elapsed() < SNAPSHOT_EVERY))
        {
            return;
        }
        let name = snapshot_name(&self.opts.node);
        let bytes = om_events::snapshot::encode(
            self.state.seq,
            &NodeSnapshotRef {
                relevant_seq: self.relevant_seq,
                state: &self.state,
            },
        );
        self.snapshot_at = Some(Instant::now());
        match tokio::time::timeout(SNAPSHOT_TIMEOUT, self.log.put_snapshot(&name, bytes)).await {
            Ok(Ok(())) => self.snapshot_seq = self.state.seq,
            Ok(Err(e)) => tracing::warn!("save snapshot {name} at {}: {e}", self.state.seq),
            Err(_) => tracing::warn!(
                "save snapshot {name} at {}: no answer within {SNAPSHOT_TIMEOUT:?}",
                self.state.seq
            ),
        }
    }

    /// Does this event change anything for this node's plumbing?
    fn relevant(&self, env: &Envelope) -> bool {
        match &env.event {
            Event::ConfigChanged(_) | Event::NodeAnnounced(_) => true,
            Event::NodeApplied(_)
            | Event::IpAllocated(_)
            | Event::IpReleased(_)
            | Event::ObjectChanged(_)
            | Event::ObjectTarget(_)
            | Event::InstanceStatus(_) => false,
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut setup: mpsc::Receiver<SetupRequest>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut ipam_rx = crate::ipam_server::listen(&self.opts.state_dir)?;
        let mut done_rx = self.done_rx.take().expect("run once");
        let last = self.log.last_seq().await?;
        self.load_snapshot(last).await;
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
        self.release_stale(&mut sub).await;
        self.drive_instances();
        let mut tick = tokio::time::interval(self.opts.period);
        tick.reset();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                m = sub.next() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        // The server restarted or the connection broke: subscribe again
                        // from our position (bounded pause between attempts).
                        other => {
                            let why = match other {
                                Some(Err(e)) => e.to_string(),
                                _ => "the subscription ended".into(),
                            };
                            tracing::warn!("event stream: {why}; subscribing again from {}", self.state.seq + 1);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if let Ok(s) = self.log.subscribe(&self.subjects.events(), self.state.seq + 1).await {
                                sub = s;
                            }
                            continue;
                        }
                    };
                    let mut dirty = self.fold(&m);
                    // Fold whatever else is ready before reconciling once.
                    while let Some(Some(Ok(m))) = sub.next().now_or_never() {
                        dirty |= self.fold(&m);
                    }
                    if dirty {
                        self.reconcile().await;
                    }
                    self.drive_instances();
                }
                Some((req, reply)) = ipam_rx.recv() => {
                    let out = self.ipam(&mut sub, req).await;
                    let _ = reply.send(out);
                }
                Some(status) = done_rx.recv() => {
                    self.busy.remove(&status.path);
                    self.report_instance(status).await;
                    self.drive_instances();
                }
                _ = tick.tick() => {
                    self.save_snapshot(false).await;
                    self.reconcile().await;
                    self.check_instances().await;
                    self.release_stale(&mut sub).await;
                    self.drive_instances();
                }
                Some(reply) = setup.recv() => {
                    let out = self.reconcile().await;
                    let _ = reply.send(out);
                }
                _ = &mut shutdown => {
                    self.save_local();
                    self.save_snapshot(true).await;
                    let _ = std::fs::remove_file(self.opts.state_dir.join(crate::cni::IPAM_SOCKET));
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

impl<D: Dataplane, L: EventLog> Daemon<D, L> {
    /// Records one of this daemon's own appends in the state at once (its subject's last
    /// sequence and the event), without moving the position: the subscription delivers it
    /// again in order, and folding it twice changes nothing.
    fn apply_own(&mut self, subject: &str, seq: u64, time_ms: u64, ev: &Event) {
        let pos = self.state.seq;
        self.state.apply(seq, time_ms, ev);
        self.state.seq = pos;
        let last = self.state.last_on(subject).max(seq);
        self.state.subject_seq.insert(subject.to_string(), last);
    }

    /// Folds what the subscription has, waiting up to `wait` for a first message.
    async fn drain(&mut self, sub: &mut Sub, wait: Duration) {
        let mut dirty = false;
        if let Ok(Some(Ok(m))) = tokio::time::timeout(wait, sub.next()).await {
            dirty |= self.fold(&m);
            while let Some(Some(Ok(m))) = sub.next().now_or_never() {
                dirty |= self.fold(&m);
            }
        }
        if dirty {
            self.reconcile().await;
        }
    }

    /// Appends the event `decide` gives, on `subject`, conditioned on its last sequence;
    /// on a conflict or an unreachable log, folds what is new and decides again, until
    /// [`IPAM_DEADLINE`]. `Ok(None)`: nothing to write.
    async fn append_decided(
        &mut self,
        sub: &mut Sub,
        subject: &str,
        decide: impl Fn(&State) -> Result<Option<Event>, ipam_proto::Reply>,
    ) -> Result<Option<Event>, ipam_proto::Reply> {
        let deadline = Instant::now() + IPAM_DEADLINE;
        let id = uuid_now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let Some(ev) = decide(&self.state)? else {
                return Ok(None);
            };
            let mut env = Envelope::new(
                &self.subjects.cluster,
                &self.opts.node,
                now_ms(),
                ev.clone(),
            );
            env.id = id;
            let expected = self.state.last_on(subject);
            let err = match self
                .log
                .append(subject, Some(expected), &id.to_string(), env.encode())
                .await
            {
                Ok(ack) => {
                    self.apply_own(subject, ack.seq, env.time_ms, &ev);
                    return Ok(Some(ev));
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(ipam_proto::Reply::Error {
                    code: code::TRY_AGAIN_LATER,
                    msg: format!(
                        "om-node {}: could not record the change on {subject}: {err}",
                        self.opts.node
                    ),
                    details: format!("{attempt} attempts in {} s", IPAM_DEADLINE.as_secs()),
                });
            }
            match err {
                LogError::Conflict { .. } => self.drain(sub, Duration::from_millis(200)).await,
                other => {
                    tracing::warn!("append to {subject}: {other}; retrying");
                    let pause = Duration::from_millis(50 * u64::from(attempt.min(10)));
                    self.drain(sub, pause).await;
                }
            }
        }
    }

    /// Answers one request of the `om-ipam` plugin.
    async fn ipam(&mut self, sub: &mut Sub, req: ipam_proto::Request) -> ipam_proto::Reply {
        use ipam_proto::{Command, Reply};
        let node = self.opts.node.clone();
        let refused = |msg: String| Reply::Error {
            code: code::REFUSED,
            msg,
            details: String::new(),
        };
        let pool = match ipam::pool(&self.state, &req.network, &node) {
            Ok(p) => p,
            Err(e) if req.command == Command::Add || req.command == Command::Check => {
                return refused(e)
            }
            Err(_) => {
                // DEL and GC still find leases of a network this node no longer allocates in.
                ipam::Pool {
                    network: req.network.clone(),
                    node: node.clone(),
                    subnet: "0.0.0.0/0".parse().expect("literal"),
                    gateway: "0.0.0.0".parse().expect("literal"),
                    whole: "0.0.0.0/0".parse().expect("literal"),
                }
            }
        };
        let subject = self.subjects.ipam(&req.network, &node);
        let lease_reply = |l: &om_events::state::Lease| Reply::Ok {
            lease: Some(ipam_proto::Lease {
                address: format!("{}/{}", l.ip, pool.subnet.prefix_len()),
                gateway: pool.gateway.to_string(),
            }),
        };
        match req.command {
            Command::Status => Reply::Ok { lease: None },
            Command::Add => {
                let owner = Owner {
                    path: req.path.clone(),
                    rid: req.rid.clone(),
                    container_id: req.container_id.clone(),
                    ifname: req.ifname.clone(),
                    netns: req.netns.clone(),
                };
                let decided = self
                    .append_decided(sub, &subject, |st| {
                        match ipam::allocate(st, &pool, &owner) {
                            Ok(Alloc::Existing(_)) => Ok(None),
                            Ok(Alloc::New(a)) => Ok(Some(Event::IpAllocated(a))),
                            Err(msg) => Err(Reply::Error {
                                code: code::NO_ADDRESS,
                                msg,
                                details: String::new(),
                            }),
                        }
                    })
                    .await;
                if let Err(e) = decided {
                    return e;
                }
                match ipam::leases_of(&self.state, &req.network, &node)
                    .into_iter()
                    .find(|l| {
                        l.owner.container_id == req.container_id && l.owner.ifname == req.ifname
                    }) {
                    Some(l) => lease_reply(l),
                    None => refused(format!(
                        "network {}: the lease of {} {} vanished",
                        req.network, req.container_id, req.ifname
                    )),
                }
            }
            Command::Check => match ipam::leases_of(&self.state, &req.network, &node)
                .into_iter()
                .find(|l| l.owner.container_id == req.container_id && l.owner.ifname == req.ifname)
            {
                Some(l) => lease_reply(l),
                None => refused(format!(
                    "network {}: no lease for container {} interface {} on node {node}",
                    req.network, req.container_id, req.ifname
                )),
            },
            Command::Del => {
                let reason = if req.reason.is_empty() {
                    "cni del"
                } else {
                    req.reason.as_str()
                };
                let r = self
                    .append_decided(sub, &subject, |st| {
                        Ok(ipam::release(
                            st,
                            &req.network,
                            &node,
                            &req.container_id,
                            &req.ifname,
                            reason,
                        )
                        .map(Event::IpReleased))
                    })
                    .await;
                match r {
                    Ok(_) => Reply::Ok { lease: None },
                    Err(e) => e,
                }
            }
            Command::Gc => {
                let keep: BTreeSet<(String, String)> = req.valid.iter().cloned().collect();
                loop {
                    let r = self
                        .append_decided(sub, &subject, |st| {
                            Ok(ipam::leases_of(st, &req.network, &node)
                                .into_iter()
                                .find(|l| {
                                    !keep.contains(&(
                                        l.owner.container_id.clone(),
                                        l.owner.ifname.clone(),
                                    ))
                                })
                                .and_then(|l| {
                                    ipam::release(
                                        st,
                                        &req.network,
                                        &node,
                                        &l.owner.container_id,
                                        &l.owner.ifname,
                                        "cni gc",
                                    )
                                })
                                .map(Event::IpReleased))
                        })
                        .await;
                    match r {
                        Ok(Some(_)) => continue,
                        Ok(None) => return Reply::Ok { lease: None },
                        Err(e) => return e,
                    }
                }
            }
        }
    }

    /// Releases the leases of this node whose namespace is gone.
    async fn release_stale(&mut self, sub: &mut Sub) {
        let node = self.opts.node.clone();
        let busy = self.busy.clone();
        loop {
            let stale: Vec<_> =
                ipam::stale(&self.state, &node, |p| std::path::Path::new(p).exists())
                    .into_iter()
                    .filter(|r| !busy.contains(&r.owner.path) || r.owner.path.is_empty())
                    .collect();
            let Some(first) = stale.into_iter().next() else {
                return;
            };
            let subject = self.subjects.ipam(&first.network, &node);
            tracing::info!(
                "release {} of {} {}: namespace {} is gone",
                first.ip,
                first.owner.container_id,
                first.owner.ifname,
                first.owner.netns
            );
            let (net, cid, ifn) = (
                first.network.clone(),
                first.owner.container_id.clone(),
                first.owner.ifname.clone(),
            );
            let r = self
                .append_decided(sub, &subject, |st| {
                    Ok(ipam::release(st, &net, &node, &cid, &ifn, "owner gone")
                        .map(Event::IpReleased))
                })
                .await;
            if let Err(e) = r {
                tracing::warn!("release stale lease: {e:?}");
                return;
            }
        }
    }

    /// The status this daemon last gave for an object.
    fn my_status(&self, path: &str) -> Option<InstanceStatus> {
        self.reported.get(path).cloned().or_else(|| {
            self.state
                .objects
                .get(path)
                .and_then(|o| o.instances.get(&self.opts.node))
                .map(|i| i.status.clone())
        })
    }

    /// Starts or stops the instances whose target changed, as tasks.
    fn drive_instances(&mut self) {
        let me = self.opts.node.clone();
        let paths: Vec<String> = self.state.objects.keys().cloned().collect();
        for path in paths {
            if self.busy.contains(&path) {
                continue;
            }
            let obj = &self.state.objects[&path];
            let Some((target, tseq)) = obj.target.clone() else {
                continue;
            };
            let mine = self.my_status(&path);
            let want_up = matches!(&target, Target::Started { node } if *node == me);
            let start = want_up && mine.as_ref().is_none_or(|s| s.target_seq < tseq);
            let stop = !want_up
                && mine
                    .as_ref()
                    .is_some_and(|s| s.state != Up::Down && s.target_seq < tseq);
            if !start && !stop {
                continue;
            }
            let spec = match self.spec(&path, tseq) {
                Ok(s) => s,
                Err(errors) => {
                    let status = InstanceStatus {
                        path: path.clone(),
                        node: me.clone(),
                        state: Up::Failed,
                        target_seq: tseq,
                        resources: errors
                            .into_iter()
                            .map(|e| om_events::event::ResourceStatus {
                                rid: String::new(),
                                network: String::new(),
                                state: Up::Failed,
                                ip: None,
                                netns: String::new(),
                                ifname: String::new(),
                                expose: Vec::new(),
                                error: Some(e),
                            })
                            .collect(),
                    };
                    let _ = self.done_tx.send(status);
                    self.busy.insert(path);
                    continue;
                }
            };
            self.busy.insert(path.clone());
            let tx = self.done_tx.clone();
            let reason = if matches!(target, Target::Started { .. }) {
                "moved"
            } else {
                "stop"
            };
            tracing::info!(
                "{} {path} (target seq {tseq})",
                if start { "start" } else { "stop" }
            );
            tokio::spawn(async move {
                let status = if start {
                    instance::start(&spec).await
                } else {
                    instance::stop(&spec, reason).await
                };
                let _ = tx.send(status);
            });
        }
    }

    fn spec(&self, path: &str, tseq: u64) -> Result<instance::Spec, Vec<String>> {
        let obj = &self.state.objects[path];
        let cfg = &self.state.config;
        let me = &self.opts.node;
        Ok(instance::Spec {
            path: path.to_string(),
            node: me.clone(),
            target_seq: tseq,
            own_netns: om_events::object::netns_name(&self.subjects.cluster, path),
            resources: om_events::object::resources(&obj.config)?,
            cni_dir: PathBuf::from(
                cfg.lookup(Some(me), "cni", "config")
                    .unwrap_or(om_events::network::DEFAULT_CNI_CONFIG),
            ),
            plugins: Plugins::new(cfg.lookup(Some(me), "cni", "plugins")),
        })
    }

    /// Publishes an instance status.
    async fn report_instance(&mut self, status: InstanceStatus) {
        tracing::info!(
            "{} {} on {}",
            status.path,
            status.state.as_str(),
            status.node
        );
        for r in &status.resources {
            if let Some(e) = &r.error {
                tracing::warn!("{} {}: {e}", status.path, r.rid);
            }
        }
        match self.publish(Event::InstanceStatus(status.clone())).await {
            Ok(_) => {
                self.reported.insert(status.path.clone(), status);
            }
            Err(e) => {
                tracing::warn!("report {}: {e}", status.path);
                self.reported.insert(status.path.clone(), status);
            }
        }
    }

    /// An instance reported up whose own namespace was removed by hand is down.
    async fn check_instances(&mut self) {
        let me = self.opts.node.clone();
        let paths: Vec<String> = self.state.objects.keys().cloned().collect();
        for path in paths {
            if self.busy.contains(&path) {
                continue;
            }
            let Some(mine) = self.my_status(&path) else {
                continue;
            };
            if mine.state != Up::Up {
                continue;
            }
            let gone: Vec<String> = mine
                .resources
                .iter()
                .filter(|r| !r.netns.is_empty() && !std::path::Path::new(&r.netns).exists())
                .map(|r| r.netns.clone())
                .collect();
            if gone.is_empty() {
                continue;
            }
            let mut down = mine.clone();
            down.node = me.clone();
            down.state = Up::Down;
            for r in &mut down.resources {
                r.state = Up::Down;
                r.ip = None;
                r.error = Some(format!("network namespace {} is gone", r.netns));
            }
            self.report_instance(down).await;
        }
    }
}

fn uuid_now() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}
