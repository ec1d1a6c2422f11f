//! Running CNI plugins the usual CNI way: the plugin named by a configuration's `type` is
//! looked up in the plugin directories, run with the `CNI_*` environment and the
//! configuration on stdin; errors come back as JSON on stdout.
//!
//! Plugin directories (decision 10): `cni.plugins`, then `/usr/lib/cni`, `/usr/libexec/cni`,
//! `/opt/cni/bin`, and last the directory of the running `om-node`, where `om-ipam` is
//! installed beside it: a fresh install works without copying binaries around.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// Where plugins are looked up, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugins {
    pub dirs: Vec<PathBuf>,
}

impl Plugins {
    /// The directories for a `cni.plugins` value, plus this program's own directory.
    pub fn new(configured: Option<&str>) -> Self {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut add = |p: PathBuf| {
            if !dirs.contains(&p) {
                dirs.push(p);
            }
        };
        add(PathBuf::from(
            configured.unwrap_or(om_events::network::DEFAULT_CNI_PLUGINS),
        ));
        for d in ["/usr/lib/cni", "/usr/libexec/cni", "/opt/cni/bin"] {
            add(PathBuf::from(d));
        }
        if let Some(own) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            add(own);
        }
        Plugins { dirs }
    }

    /// `CNI_PATH`: every directory, `:` separated.
    pub fn cni_path(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    pub fn find(&self, name: &str) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
    }
}

/// One invocation of a plugin.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    /// `CNI_ARGS`.
    pub args: &'a str,
}

/// Runs the plugin of `conf` (its `type`); the parsed stdout (`Null` when empty), or the
/// plugin's error as text.
pub async fn run(plugins: &Plugins, conf: &Value, inv: &Invocation<'_>) -> Result<Value, String> {
    let ty = conf["type"].as_str().unwrap_or_default();
    let bin = plugins.find(ty).ok_or_else(|| {
        format!(
            "CNI plugin {ty:?} not found in {}",
            plugins.cni_path().replace(':', ", ")
        )
    })?;
    let mut child = tokio::process::Command::new(&bin)
        .env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_ARGS", inv.args)
        .env("CNI_PATH", plugins.cni_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("run {}: {e}", bin.display()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(conf.to_string().as_bytes())
        .await
        .map_err(|e| format!("write the configuration to {}: {e}", bin.display()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("wait for {}: {e}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or(Value::Null)
    };
    if out.status.success() {
        return Ok(parsed);
    }
    let mut msg = match parsed["msg"].as_str() {
        Some(m) => format!("{ty} {}: {m}", inv.command),
        None => format!(
            "{ty} {} exited with {}: {} {}",
            inv.command,
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    };
    if let Some(d) = parsed["details"].as_str().filter(|d| !d.is_empty()) {
        msg.push_str(&format!(" ({d})"));
    }
    Err(msg)
}
