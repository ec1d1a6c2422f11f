//! Network-namespace test beds: real kernels, no root-namespace changes.
//!
//! Everything here lives inside namespaces this process creates with `ip netns add`, named
//! `omt<pid>-<n><label>` so concurrent runs never collide and leftovers of a killed run
//! can be recognised ([`reap_stale`]). [`Netns`] deletes its namespace on drop, also when
//! a test panics; links inside a namespace go with it.
//!
//! Layout:
//! - this file: [`Netns`], the RAII guard, with `exec` and `sysctl`, and [`skip_reason`];
//! - [`bed`]: [`TestBed`], hosts on two underlay subnets joined by a router;
//! - [`cni`]: containers attached to a host bridge by the real CNI `bridge` plugin;
//! - [`ping`]: ICMP echo from inside a namespace, bounded.

pub mod bed;
pub mod cni;
pub mod ping;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

pub use bed::{Host, TestBed, TestBedBuilder};
pub use cni::{CniBridgeNetwork, Container};
pub use ping::{ping, wait_ping};

/// Where `ip netns add` bind-mounts namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// The prefix of every namespace (and temporary file) made by this process: `omt<pid>-`.
pub fn prefix() -> String {
    format!("omt{}-", std::process::id())
}

/// Why namespace tests cannot run here (not root, no `ip`), or `None` if they can.
/// Tests print `SKIPPED: <reason>` and return when this is `Some`.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("network namespace tests need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip -V` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!("`ip` (iproute2) not runnable: {e}")),
    }
}

/// Deletes namespaces named `omt<pid>-...` whose process is gone (a run killed before its
/// guards could drop). Returns the names deleted.
pub fn reap_stale() -> Vec<String> {
    let mut reaped = Vec::new();
    let Ok(dir) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return reaped;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("omt")
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let ok = Command::new("ip")
                .args(["netns", "del", &name])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                reaped.push(name);
            }
        }
    }
    reaped
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace owned by the test; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The name under /var/run/netns.
    name: String,
}

impl Netns {
    /// Creates `omt<pid>-<n><label>` with `lo` up.
    pub fn new(label: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}{n}{label}", prefix());
        run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("ip netns add {name}"))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// Runs `args` inside the namespace (`ip netns exec NAME args...`); stdout on success,
    /// an error with the command and its stderr otherwise.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args))
        .with_context(|| format!("in netns {}: {}", self.name, args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip -n NAME args...`: iproute2 acting on this namespace without a process in it.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip").args(["-n", &self.name]).args(args))
            .with_context(|| format!("ip -n {} {}", self.name, args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sysctl -w KEY=VALUE` inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a new OS thread that has entered this namespace, and returns its
    /// result. The calling thread (maybe a tokio worker) never changes namespace.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        run_in_path(self.path(), f)
    }
}

/// Runs `f` on a new OS thread that entered the network namespace at `path` (a
/// `/var/run/netns` file, or `/proc/<pid>/root/run/netns/<name>` for one mounted in
/// another process's mount namespace).
pub fn run_in_path<T, F>(path: PathBuf, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let label: String = path
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(12).collect())
        .unwrap_or_default();
    let handle = std::thread::Builder::new()
        .name(format!("in-{label}"))
        .spawn(move || -> Result<T> {
            let ns = File::open(&path).with_context(|| format!("open {}", path.display()))?;
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns {}", path.display()))?;
            Ok(f())
        })
        .context("spawn namespace thread")?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("ip netns del {}: {e}", self.name),
        }
    }
}

/// Runs a command to completion; fails with its stderr if it exits non-zero.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} exited with {}: {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
