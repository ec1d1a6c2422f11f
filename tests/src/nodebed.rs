//! Real daemons on the namespace test bed: a `nats-server` (and `om-projector`) in the
//! router namespace, one `om-node` per host namespace, and the `om` CLI run inside a host
//! namespace, all as the built binaries ([`crate::bins::bin_dir`]).
//!
//! The server listens on the router's underlay addresses (inside the router namespace only),
//! so every host reaches it through its own `eth0`. The test itself talks to NATS from a
//! thread that entered the router namespace ([`in_netns`]): [`NodeBed::start`] and every
//! method of it that touches NATS must run there, on a tokio runtime of that thread.
//!
//! Every process is killed on drop (also when a test panics, which prints the tail of each
//! log); the scratch directory (stores, state directories, CNI directories, logs) goes after
//! them. Nothing touches the root namespace.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};
use om_events::jetstream::JetStreamLog;
use om_events::log::catch_up;
use om_events::subjects::Subjects;
use om_events::State;

use crate::nats::{wait_ready, Ready, READY_TIMEOUT};
use crate::netns::{Host, Netns, TestBed};

/// The port the server listens on, in the router namespace.
pub const NATS_PORT: u16 = 4222;

/// The binaries a node bed runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub om: PathBuf,
    pub om_node: PathBuf,
    pub om_projector: PathBuf,
    pub nats_server: PathBuf,
}

impl Bins {
    /// Finds them all, or says which is missing (a skip reason).
    pub fn find() -> std::result::Result<Bins, String> {
        let dir = crate::bins::bin_dir();
        let ours = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "{} not built (cargo build --release -p om-node -p om-cli -p om-projector, or set OM_BIN_DIR)",
                    p.display()
                ))
            }
        };
        ours("om-ipam")?;
        Ok(Bins {
            om: ours("om")?,
            om_node: ours("om-node")?,
            om_projector: ours("om-projector")?,
            nats_server: crate::nats::find_binary()
                .ok_or_else(|| crate::nats::NOT_FOUND.to_string())?,
        })
    }
}

/// Why a node bed cannot run here (not root, no `ip`, a binary missing), or `None`.
pub fn skip_reason() -> Option<String> {
    crate::netns::skip_reason().or_else(|| Bins::find().err())
}

/// Runs `f` on a new thread that entered `ns`'s network namespace, and returns its result
/// (a panic in `f` is resumed here). Unlike [`Netns::run_in`], `f` may borrow. Sockets the
/// thread opens, and processes it spawns directly, are in `ns`.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = ns.path();
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name(format!("in-{}", ns.name()))
            .spawn_scoped(s, move || {
                let file =
                    File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
                f()
            })
            .expect("spawn a namespace thread");
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Whether the calling thread is in `ns`'s network namespace.
pub fn thread_is_in(ns: &Netns) -> bool {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let mine = id(Path::new("/proc/thread-self/ns/net"));
    mine.is_some() && mine == id(&ns.path())
}

/// A child process (its stdout and stderr appended to a log file), killed on drop.
pub struct Proc {
    what: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Spawns `argv` with `env`, output appended to `log`.
    pub fn spawn(what: &str, argv: &[OsString], env: &[(&str, &str)], log: &Path) -> Result<Proc> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {what}: {argv:?}"))?;
        Ok(Proc {
            what: what.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `Some(status)` when the process has exited (it is then reaped).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// SIGTERM, then wait up to `grace`, then SIGKILL. The exit status.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so not reused.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if start.elapsed() > grace {
                let _ = child.kill();
                let st = child.wait()?;
                bail!("{} ignored SIGTERM for {grace:?}; killed ({st})", self.what);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of a file ("" when unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A directory removed with its content on drop.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static BEDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Removes `omt<pid>-nodebed<k>` scratch directories of processes that are gone (a run
/// killed before its guards could drop).
pub fn reap_stale_dirs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("omt")
            .and_then(|r| r.split_once("-nodebed"))
            .and_then(|(p, _)| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// One `om-node`, on one host of the bed.
pub struct OmNode {
    /// The node name (`n1`).
    pub name: String,
    /// Index of its host in `TestBed::hosts`.
    pub host: usize,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// Where its CNI files go (`cni.config` in its node layer).
    pub cni_dir: PathBuf,
    /// `--server`: the router's address on the host's subnet.
    pub url: String,
    /// Its log (appended across restarts).
    pub log: PathBuf,
    proc: Option<Proc>,
}

impl OmNode {
    /// A command run in the daemon's mount namespace. The bed starts each daemon with
    /// `ip netns exec HOST`, which gives it a mount namespace of its own: the object
    /// namespaces it creates (`ip netns add`) are mounted there, not in the test's, so they
    /// are looked at from there (on a real node the daemon runs in the root namespaces).
    pub fn command(&self, program: &str) -> Result<std::process::Command> {
        let pid = self.pid()?;
        let mut c = std::process::Command::new("nsenter");
        c.args(["--target", &pid.to_string(), "--mount", "--", program]);
        Ok(c)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> Result<u32> {
        self.proc
            .as_ref()
            .and_then(|p| p.pid())
            .with_context(|| format!("om-node {} does not run", self.name))
    }

    /// The path of an object namespace the daemon created, as seen from its mount namespace.
    pub fn netns_path(&self, name: &str) -> Result<PathBuf> {
        Ok(PathBuf::from(format!(
            "/proc/{}/root/run/netns/{name}",
            self.pid()?
        )))
    }

    /// Whether it runs.
    pub fn running(&self) -> bool {
        self.proc.is_some()
    }
}

/// The bed with its servers and daemons.
pub struct NodeBed<'a> {
    /// Declared first: the daemons die before the server.
    pub nodes: Vec<OmNode>,
    projector: Option<Proc>,
    nats: Proc,
    pub bins: Bins,
    /// `--cluster` of every process (the stream is `OM_<cluster>`).
    pub cluster: String,
    pub subjects: Subjects,
    /// The test's own connection (from the router namespace).
    pub client: async_nats::Client,
    pub log: JetStreamLog,
    /// The stream folded so far by [`fold`](Self::fold).
    pub state: State,
    /// Periodic reconcile of every daemon.
    pub period: Duration,
    /// Host index where `om` runs.
    om_host: usize,
    /// Removed after every process is gone.
    pub dir: Scratch,
    pub bed: &'a TestBed,
}

impl Drop for NodeBed<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nats-server log tail:\n{}", self.nats.log_tail(15));
            if let Some(p) = &self.projector {
                eprintln!("--- om-projector log tail:\n{}", p.log_tail(15));
            }
            for n in &self.nodes {
                eprintln!("--- om-node {} log tail:\n{}", n.name, log_tail(&n.log, 40));
            }
        }
    }
}

/// What [`NodeBed::start`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// (node name, host label) per daemon.
    pub nodes: Vec<(String, String)>,
    /// `--period-ms` of every daemon.
    pub period: Duration,
    /// Also run `om-projector` in the router namespace (reads of `om` go through it).
    pub projector: bool,
}

impl Options {
    /// n1 on h1, n2 on h2, n3 on h3; 500 ms period; with a projector.
    pub fn three_nodes() -> Self {
        Options {
            nodes: (1..=3)
                .map(|i| (format!("n{i}"), format!("h{i}")))
                .collect(),
            period: Duration::from_millis(500),
            projector: true,
        }
    }
}

/// nats-server in the router namespace (0.0.0.0 there is its loopback and underlay
/// addresses), its store and log in `dir`.
fn nats_proc(bins: &Bins, router: &str, dir: &Path) -> Result<Proc> {
    Proc::spawn(
        "nats-server",
        &os(&[
            &"ip",
            &"netns",
            &"exec",
            &router,
            &bins.nats_server,
            &"-js",
            &"-a",
            &"0.0.0.0",
            &"-p",
            &NATS_PORT.to_string(),
            &"-sd",
            &dir.join("nats-store"),
        ]),
        &[],
        &dir.join("nats-server.log"),
    )
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

impl<'a> NodeBed<'a> {
    /// Starts the server (and projector) in the router namespace and one daemon per node,
    /// and waits until every daemon announced itself on the stream. Call it on a thread in
    /// `bed.router` ([`in_netns`]).
    pub async fn start(bed: &'a TestBed, bins: Bins, opts: Options) -> Result<NodeBed<'a>> {
        if !thread_is_in(&bed.router) {
            bail!("NodeBed::start must run on a thread in the router namespace (in_netns)");
        }
        reap_stale_dirs();
        // Beds of one process (tests run in parallel) differ by a counter: their scratch
        // directories, stores, cluster names and object namespaces never meet.
        let k = BEDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            Scratch(std::env::temp_dir().join(format!("{}nodebed{k}", crate::netns::prefix())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0)?;
        let cluster = format!("e2e{}-{k}", std::process::id());
        let router = bed.router.name();
        let mut nats = nats_proc(&bins, router, &dir.0)?;
        let local = format!("nats://127.0.0.1:{NATS_PORT}");
        wait_ready(&local, Ready::JetStream, READY_TIMEOUT, async || {
            nats.exited()
        })
        .await
        .with_context(|| format!("nats-server log:\n{}", nats.log_tail(20)))?;
        let subjects = Subjects::new(&cluster);
        let client = crate::nats::connect(std::slice::from_ref(&local)).await?;
        // The stream exists before any daemon starts: they open it, nobody races to create it.
        let log = JetStreamLog::open(client.clone(), subjects.clone(), 1)
            .await
            .context("create the cluster's stream")?;
        let projector = if opts.projector {
            Some(Proc::spawn(
                "om-projector",
                &os(&[
                    &"ip",
                    &"netns",
                    &"exec",
                    &router,
                    &bins.om_projector,
                    &"--server",
                    &local,
                    &"--cluster",
                    &cluster,
                ]),
                &[("RUST_LOG", "info"), ("NO_COLOR", "1")],
                &dir.0.join("om-projector.log"),
            )?)
        } else {
            None
        };
        let mut nodes = Vec::new();
        for (name, label) in &opts.nodes {
            let host = bed
                .hosts
                .iter()
                .position(|h| &h.label == label)
                .with_context(|| format!("no host {label}"))?;
            let h = &bed.hosts[host];
            nodes.push(OmNode {
                name: name.clone(),
                host,
                state_dir: dir.0.join(name),
                cni_dir: dir.0.join(name).join("net.d"),
                url: format!("nats://{}:{NATS_PORT}", h.subnet.addr()),
                log: dir.0.join(format!("om-node-{name}.log")),
                proc: None,
            });
        }
        let mut nb = NodeBed {
            nodes,
            projector,
            nats,
            bins,
            cluster,
            subjects,
            client,
            log,
            state: State::default(),
            period: opts.period,
            om_host: 0,
            dir,
            bed,
        };
        for i in 0..nb.nodes.len() {
            nb.spawn_node(i)?;
        }
        let names: Vec<String> = nb.nodes.iter().map(|n| n.name.clone()).collect();
        nb.wait_until(
            Duration::from_secs(10),
            "every daemon announced itself",
            |st| names.iter().all(|n| st.announced.contains_key(n)),
        )
        .await?;
        Ok(nb)
    }

    fn index(&self, node: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == node)
            .unwrap_or_else(|| panic!("no node {node}"))
    }

    /// The daemon named `node`.
    pub fn node(&self, node: &str) -> &OmNode {
        &self.nodes[self.index(node)]
    }

    /// The host of `node`.
    pub fn host(&self, node: &str) -> &'a Host {
        &self.bed.hosts[self.node(node).host]
    }

    fn spawn_node(&mut self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let host = &self.bed.hosts[n.host];
        std::fs::create_dir_all(&n.state_dir)?;
        let proc = Proc::spawn(
            &format!("om-node {}", n.name),
            &os(&[
                &"ip",
                &"netns",
                &"exec",
                &host.ns.name(),
                &self.bins.om_node,
                &"--node",
                &n.name,
                &"--state-dir",
                &n.state_dir,
                &"--period-ms",
                &self.period.as_millis().to_string(),
                &"--server",
                &n.url,
                &"--cluster",
                &self.cluster,
            ]),
            &[("RUST_LOG", "info"), ("NO_COLOR", "1")],
            &n.log,
        )?;
        self.nodes[i].proc = Some(proc);
        Ok(())
    }

    /// Starts `node`'s daemon again (it resumes from its state directory).
    pub fn start_node(&mut self, node: &str) -> Result<()> {
        let i = self.index(node);
        if self.nodes[i].proc.is_some() {
            bail!("om-node {node} runs already");
        }
        self.spawn_node(i)
    }

    /// Stops `node`'s daemon with SIGTERM (it saves its state); its exit status.
    pub fn stop_node(&mut self, node: &str) -> Result<ExitStatus> {
        let i = self.index(node);
        let mut p = self.nodes[i].proc.take().context("not running")?;
        p.stop(Duration::from_secs(5))
    }

    /// Kills `node`'s daemon with SIGKILL: no chance to save anything.
    pub fn kill_node(&mut self, node: &str) -> Result<()> {
        let i = self.index(node);
        let p = self.nodes[i].proc.take().context("not running")?;
        drop(p); // Proc's drop is kill(2) SIGKILL + wait.
        Ok(())
    }

    /// Stops the server (SIGTERM), starts it again on the same store, and waits until
    /// JetStream answers.
    pub async fn restart_nats(&mut self) -> Result<()> {
        self.stop_nats()?;
        self.start_nats().await
    }

    /// Stops the server (SIGTERM) until [`start_nats`](Self::start_nats).
    pub fn stop_nats(&mut self) -> Result<()> {
        self.nats.stop(Duration::from_secs(10))?;
        Ok(())
    }

    /// Starts the server again on the same store, waiting until JetStream answers.
    pub async fn start_nats(&mut self) -> Result<()> {
        self.nats = self.spawn_nats()?;
        let local = format!("nats://127.0.0.1:{NATS_PORT}");
        let nats = &mut self.nats;
        wait_ready(&local, Ready::JetStream, READY_TIMEOUT, async || {
            nats.exited()
        })
        .await
        .with_context(|| format!("nats-server log:\n{}", self.nats.log_tail(20)))?;
        Ok(())
    }

    fn spawn_nats(&self) -> Result<Proc> {
        nats_proc(&self.bins, self.bed.router.name(), &self.dir.0)
    }

    /// Runs `om ARGS` on `node`'s host (connection flags first); its status, stdout and
    /// stderr, whatever the exit code.
    pub async fn om_on(&self, node: &str, args: &[&str]) -> Result<std::process::Output> {
        let n = self.node(node);
        let host = &self.bed.hosts[n.host];
        tokio::process::Command::new("ip")
            .args(["netns", "exec", host.ns.name()])
            .arg(&self.bins.om)
            .args(["--server", &n.url, "--cluster", &self.cluster])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("spawn om")
    }

    /// Fails when a daemon (or the server) died.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(why) = self.nats.exited() {
            bail!("nats-server exited ({why}):\n{}", self.nats.log_tail(20));
        }
        for n in &mut self.nodes {
            if let Some(p) = n.proc.as_mut() {
                if let Some(why) = p.exited() {
                    bail!(
                        "om-node {} exited ({why}):\n{}",
                        n.name,
                        log_tail(&n.log, 30)
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs `om --format json ARGS` in the namespace of the first host (an operator on n1),
    /// connected through that host's underlay. Its stdout; an error with stderr on failure.
    pub async fn om(&self, args: &[&str]) -> Result<String> {
        let n = &self.nodes[self.om_host];
        let host = &self.bed.hosts[n.host];
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", host.ns.name()])
            .arg(&self.bins.om)
            .args([
                "--server",
                &n.url,
                "--cluster",
                &self.cluster,
                "--format",
                "json",
            ])
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .context("spawn om")?;
        if !out.status.success() {
            bail!(
                "om {} exited with {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn om_seq(&self, args: &[&str]) -> Result<u64> {
        let out = self.om(args).await?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("om output is not JSON: {out}"))?;
        v["seq"]
            .as_u64()
            .with_context(|| format!("om {} changed nothing: {out}", args.join(" ")))
    }

    /// `om cluster set --kw K=V ...`: the sequence of the event it stored.
    pub async fn set(&self, kws: &[&str]) -> Result<u64> {
        let mut args = vec!["cluster", "set"];
        for k in kws {
            args.extend(["--kw", k]);
        }
        self.om_seq(&args).await
    }

    /// `om node set --node NODE --kw K=V ...`: the sequence of the event it stored.
    pub async fn node_set(&self, node: &str, kws: &[&str]) -> Result<u64> {
        let mut args = vec!["node", "set", "--node", node];
        for k in kws {
            args.extend(["--kw", k]);
        }
        self.om_seq(&args).await
    }

    /// Folds what the stream holds past [`state`](Self::state).
    pub async fn fold(&mut self) -> Result<&State> {
        catch_up(&self.log, &self.subjects, &mut self.state).await?;
        Ok(&self.state)
    }

    /// Folds until `done(state)`, polling every 10 ms, for at most `timeout` (checking the
    /// processes are alive). How long it took.
    pub async fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&State) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if done(self.fold().await?) {
                return Ok(start.elapsed());
            }
            self.check_alive()?;
            if start.elapsed() > timeout {
                let applied: Vec<String> = self
                    .state
                    .applied
                    .iter()
                    .map(|(n, a)| format!("{n}: seq {} errors {:?}", a.report.seq, a.report.errors))
                    .collect();
                bail!(
                    "not within {timeout:?}: {what} (stream at {}; applied: {})",
                    self.state.seq,
                    applied.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until every node of `nodes` reported an applied sequence at or after `seq`.
    pub async fn wait_applied(
        &mut self,
        nodes: &[&str],
        seq: u64,
        timeout: Duration,
    ) -> Result<Duration> {
        let what = format!("nodes {nodes:?} applied sequence {seq}");
        self.wait_until(timeout, &what, |st| {
            nodes
                .iter()
                .all(|n| st.applied.get(*n).is_some_and(|a| a.report.seq >= seq))
        })
        .await
    }
}
