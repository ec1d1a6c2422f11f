//! A `nats-server` child process on a loopback port, with its scratch directory.
//!
//! The process writes its log (nats-server logs on stderr) to a file in the scratch
//! directory, appended across restarts, so a failed start can show why. Drop kills the
//! process and removes the directory, also when a test panics.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory under the system temporary directory, removed with its content on drop.
/// Named `om-nats<pid>-<n>-<label>` so leftovers of a killed run name their process.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(label: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("om-nats{}-{n}-{label}", std::process::id()));
        // A leftover of a previous run with a recycled pid would hold a stale store.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ScratchDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free on 127.0.0.1 a moment ago (bound to port 0, then released). Another
/// process may take it before the server binds it; callers retry a start that fails so.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// How to stop a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, as an orderly shutdown (the store is flushed), SIGKILL if still alive after
    /// ten seconds.
    Graceful,
    /// SIGKILL, as a crash. The store survives (its writes are in the page cache), but
    /// whatever was in flight is lost: a publish may be stored without its ack being sent.
    Kill,
}

/// A spawned `nats-server`, restartable with the same arguments (so the same port and
/// store directory).
#[derive(Debug)]
pub struct ServerProcess {
    bin: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// Spawns `bin args..`, stderr appended to `log`.
    pub fn spawn(bin: &Path, args: Vec<String>, log: PathBuf) -> Result<Self> {
        let mut p = ServerProcess {
            bin: bin.to_path_buf(),
            args,
            log,
            child: None,
        };
        p.start()?;
        Ok(p)
    }

    /// Starts the process again after [`stop`](Self::stop); a no-op if it runs.
    pub fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {} {}", self.bin.display(), self.args.join(" ")))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` when the process has exited on its own (or was never restarted).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut() {
            None => Some("stopped".into()),
            Some(c) => match c.try_wait() {
                Ok(Some(status)) => Some(describe(status)),
                Ok(None) => None,
                Err(e) => Some(format!("cannot wait for it: {e}")),
            },
        }
    }

    /// Stops the process and reaps it. Bounded: a graceful stop escalates to SIGKILL.
    pub async fn stop(&mut self, how: Stop) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if how == Stop::Graceful {
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let _ = child.kill();
        child.wait().context("reaping nats-server")?;
        Ok(())
    }

    /// The last `lines` lines of the server's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    pub fn command_line(&self) -> String {
        format!("{} {}", self.bin.display(), self.args.join(" "))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // The pid is our own unreaped child, so it cannot have been recycled.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
