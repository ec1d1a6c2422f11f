//! Containers attached to a host namespace's bridge by the real CNI `bridge` plugin with
//! `host-local` IPAM, run as `ip netns exec <host> /usr/lib/cni/bridge` (CNI spec 1.0.0).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

use super::Netns;

/// Where Debian's containernetworking-plugins put the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Why CNI tests cannot run here, or `None`.
pub fn cni_skip_reason() -> Option<String> {
    for plugin in ["bridge", "host-local"] {
        let p = Path::new(CNI_BIN_DIR).join(plugin);
        if !p.exists() {
            return Some(format!("CNI plugin {} not installed", p.display()));
        }
    }
    None
}

/// Runs `plugin` (a path) as a container runtime would: in the host namespace `host`,
/// `CNI_COMMAND=command` for container `ns` (its name is the container id), interface
/// `eth0`, `conf` on stdin, `CNI_PATH` holding the Debian plugins and the project's own
/// binaries (`om-ipam`). Its stdout when it succeeds; an error naming the plugin, the
/// command, the exit status and both outputs otherwise.
pub fn invoke(host: &str, plugin: &Path, conf: &str, command: &str, ns: &Netns) -> Result<String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", host])
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", ns.name())
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_PATH",
            format!("{CNI_BIN_DIR}:{}", crate::bins::bin_dir().display()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", plugin.display()))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{} {command} of {} exited with {}: {} {}",
            plugin.display(),
            ns.name(),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// A CNI network of type `bridge` on one host namespace. Leases live in a directory of
/// their own, removed when the network and all its containers are gone.
#[derive(Debug, Clone)]
pub struct CniBridgeNetwork {
    inner: Arc<NetworkInner>,
}

#[derive(Debug)]
struct NetworkInner {
    /// Host namespace name, where the plugin runs.
    host: String,
    /// The network configuration given to the plugin on stdin.
    config: String,
    /// host-local's `dataDir`.
    data_dir: PathBuf,
}

impl Drop for NetworkInner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl CniBridgeNetwork {
    /// A network named `name` on bridge `bridge` of `host`, allocating from `subnet` with
    /// `gateway` as the containers' default gateway.
    pub fn new(host: &Netns, name: &str, bridge: &str, subnet: Ipv4Net, gateway: Ipv4Addr) -> Self {
        let data_dir = std::env::temp_dir().join(format!("{}cni-{}", super::prefix(), host.name()));
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": subnet.to_string(),
                "gateway": gateway.to_string(),
                "dataDir": data_dir.display().to_string(),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        })
        .to_string();
        CniBridgeNetwork {
            inner: Arc::new(NetworkInner {
                host: host.name().to_string(),
                config,
                data_dir,
            }),
        }
    }

    /// Creates a container namespace labelled `label` and runs the plugin's ADD for it.
    pub fn attach(&self, label: &str) -> Result<Container> {
        let ns = Netns::new(label)?;
        let container_id = ns.name().to_string();
        let stdout = self
            .plugin("ADD", &container_id, &ns.path())
            .with_context(|| format!("CNI ADD of {} on {}", ns.name(), self.inner.host))?;
        let result: serde_json::Value = serde_json::from_str(&stdout)
            .with_context(|| format!("CNI ADD result is not JSON: {stdout}"))?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.parse::<Ipv4Net>().ok())
            .with_context(|| format!("CNI ADD result has no IPv4 address: {stdout}"))?;
        let gateway = result["ips"][0]["gateway"]
            .as_str()
            .and_then(|g| g.parse().ok());
        Ok(Container {
            attachment: Attachment {
                network: self.clone(),
                container_id,
                netns_path: ns.path(),
            },
            ns,
            ip,
            gateway,
            result,
        })
    }

    fn plugin(&self, command: &str, container_id: &str, netns: &Path) -> Result<String> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.inner.host])
            .arg(Path::new(CNI_BIN_DIR).join("bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_BIN_DIR)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn CNI bridge plugin")?;
        child
            .stdin
            .take()
            .context("plugin stdin")?
            .write_all(self.inner.config.as_bytes())
            .context("write CNI config")?;
        let out = child.wait_with_output().context("wait for CNI plugin")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            // A plugin reports errors as JSON on stdout.
            bail!(
                "bridge plugin {command} exited with {}: {} {}",
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(stdout)
    }
}

/// Runs the plugin's DEL when dropped.
#[derive(Debug)]
struct Attachment {
    network: CniBridgeNetwork,
    container_id: String,
    netns_path: PathBuf,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Err(e) = self
            .network
            .plugin("DEL", &self.container_id, &self.netns_path)
        {
            eprintln!("CNI DEL of {}: {e:#}", self.container_id);
        }
    }
}

/// A container namespace attached to a CNI bridge network. Dropping it runs DEL (which
/// releases the lease), then deletes the namespace.
#[derive(Debug)]
pub struct Container {
    /// Declared first so DEL runs while the namespace still exists.
    attachment: Attachment,
    /// The container's namespace.
    pub ns: Netns,
    /// The address host-local gave `eth0`, with the subnet's prefix.
    pub ip: Ipv4Net,
    /// The gateway from the result.
    pub gateway: Option<Ipv4Addr>,
    /// The plugin's whole ADD result.
    pub result: serde_json::Value,
}

impl Container {
    /// The container id given to the plugin.
    pub fn id(&self) -> &str {
        &self.attachment.container_id
    }
}
