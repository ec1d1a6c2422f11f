//! Starting and stopping a service object's ip resources on this node: the object's own
//! network namespace (or the given one), CNI ADD through the real plugins (`bridge` with
//! `om-ipam`, plus `portmap` when an `expose` names a host port), and DEL on stop.
//!
//! These run as tasks beside the daemon loop, which keeps serving the IPAM requests that
//! the plugins they run make. Each returns the resulting `instance.status`.

use crate::plugin::{self, Invocation, Plugins};
use ipnet::IpNet;
use om_events::event::{InstanceStatus, ResourceStatus, Up};
use om_events::object::{Expose, IpResource};
use serde_json::{json, Value};
use std::path::PathBuf;

/// Everything a start or stop needs, taken from the state when it is decided.
#[derive(Debug, Clone)]
pub struct Spec {
    pub path: String,
    pub node: String,
    pub target_seq: u64,
    /// The object's own namespace name (`/var/run/netns/<name>`), used by resources without
    /// `netns`, and the CNI container id of every attachment of the object.
    pub own_netns: String,
    pub resources: Vec<IpResource>,
    pub cni_dir: PathBuf,
    pub plugins: Plugins,
}

impl Spec {
    fn netns_path(&self, r: &IpResource) -> String {
        match &r.netns {
            Some(p) if p.starts_with('/') => p.clone(),
            Some(name) => format!("/var/run/netns/{name}"),
            None => format!("/var/run/netns/{}", self.own_netns),
        }
    }

    fn args(&self, r: &IpResource, reason: &str) -> String {
        let mut a = format!("IgnoreUnknown=1;OM_PATH={};OM_RID={}", self.path, r.rid);
        if !reason.is_empty() {
            a.push_str(&format!(";OM_REASON={reason}"));
        }
        a
    }

    fn conf(&self, r: &IpResource) -> Result<Value, String> {
        let file = self.cni_dir.join(format!("{}.conf", r.network));
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("read CNI configuration {}: {e}", file.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("CNI configuration {}: {e}", file.display()))
    }

    fn status(&self, state: Up, resources: Vec<ResourceStatus>) -> InstanceStatus {
        InstanceStatus {
            path: self.path.clone(),
            node: self.node.clone(),
            state,
            target_seq: self.target_seq,
            resources,
        }
    }

    fn resource(
        &self,
        r: &IpResource,
        state: Up,
        ip: Option<IpNet>,
        error: Option<String>,
    ) -> ResourceStatus {
        ResourceStatus {
            rid: r.rid.clone(),
            network: r.network.clone(),
            state,
            ip,
            netns: self.netns_path(r),
            ifname: r.ifname.clone(),
            expose: r.expose.iter().map(|e| e.to_string()).collect(),
            error,
        }
    }
}

async fn ip_cmd(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The first IPv4/IPv6 address of `ifname` in the namespace at `netns`, if the interface
/// exists (`Ok(None)`: it exists without an address; `Err`: no such interface).
async fn iface_addr(netns: &str, ifname: &str) -> Result<Option<IpNet>, ()> {
    let out = tokio::process::Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-j", "addr", "show", "dev", ifname])
        .output()
        .await
        .map_err(|_| ())?;
    if !out.status.success() {
        return Err(());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|_| ())?;
    let addr = v[0]["addr_info"].as_array().and_then(|infos| {
        infos.iter().find_map(|i| {
            let scope = i["scope"].as_str().unwrap_or("");
            if scope == "link" {
                return None;
            }
            let a = i["local"].as_str()?;
            let p = i["prefixlen"].as_u64()?;
            format!("{a}/{p}").parse().ok()
        })
    });
    Ok(addr)
}

fn port_mappings(expose: &[Expose]) -> Vec<Value> {
    expose
        .iter()
        .filter_map(|e| {
            e.host_port.map(
                |h| json!({"hostPort": h, "containerPort": e.port, "protocol": e.proto.as_str()}),
            )
        })
        .collect()
}

fn portmap_conf(conf: &Value, mappings: Vec<Value>, prev: Option<&Value>) -> Value {
    let mut c = json!({
        "cniVersion": conf["cniVersion"].clone(),
        "name": conf["name"].clone(),
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": mappings},
        "snat": true,
    });
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

/// Starts every resource; the instance is up when all are.
pub async fn start(spec: &Spec) -> InstanceStatus {
    if spec.resources.iter().any(|r| r.netns.is_none())
        && !std::path::Path::new(&format!("/var/run/netns/{}", spec.own_netns)).exists()
    {
        if let Err(e) = ip_cmd(&["netns", "add", &spec.own_netns]).await {
            let res = spec
                .resources
                .iter()
                .map(|r| spec.resource(r, Up::Failed, None, Some(e.clone())))
                .collect();
            return spec.status(Up::Failed, res);
        }
    }
    let mut out = Vec::new();
    for r in &spec.resources {
        out.push(match start_one(spec, r).await {
            Ok(ip) => spec.resource(r, Up::Up, Some(ip), None),
            Err(e) => spec.resource(r, Up::Failed, None, Some(e)),
        });
    }
    let state = if out.iter().all(|r| r.state == Up::Up) {
        Up::Up
    } else {
        Up::Failed
    };
    spec.status(state, out)
}

async fn start_one(spec: &Spec, r: &IpResource) -> Result<IpNet, String> {
    let netns = spec.netns_path(r);
    if !std::path::Path::new(&netns).exists() {
        return Err(format!(
            "{}.netns: network namespace {netns} does not exist",
            r.rid
        ));
    }
    let conf = spec.conf(r)?;
    let inv = Invocation {
        command: "ADD",
        container_id: &spec.own_netns,
        netns: &netns,
        ifname: &r.ifname,
        args: &spec.args(r, ""),
    };
    let subnet: Option<IpNet> = conf["ipam"]["subnet"].as_str().and_then(|s| s.parse().ok());
    match iface_addr(&netns, &r.ifname).await {
        // Already attached (a daemon restarted mid-start): keep it.
        Ok(Some(a)) if subnet.is_none_or(|s| s.contains(&a.addr())) => {
            // The lease is idempotent on (container id, ifname): make sure it is recorded.
            let ipam_conf = json!({"cniVersion": conf["cniVersion"], "name": conf["name"], "type": conf["ipam"]["type"], "ipam": conf["ipam"]});
            let res = plugin::run(&spec.plugins, &ipam_conf, &inv).await?;
            let leased: Option<IpNet> = res["ips"][0]["address"]
                .as_str()
                .and_then(|s| s.parse().ok());
            if leased == Some(a) {
                return Ok(a);
            }
            del_one(spec, r, &conf, "").await?;
        }
        // Half attached: clean up first.
        Ok(_) => del_one(spec, r, &conf, "").await?,
        Err(()) => {}
    }
    let result = plugin::run(&spec.plugins, &conf, &inv).await?;
    let ip: IpNet = result["ips"][0]["address"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{} ADD: no address in the result {result}", conf["type"]))?;
    let mappings = port_mappings(&r.expose);
    if !mappings.is_empty() {
        let pm = portmap_conf(&conf, mappings, Some(&result));
        if let Err(e) = plugin::run(&spec.plugins, &pm, &inv).await {
            let _ = del_one(spec, r, &conf, "start failed").await;
            return Err(e);
        }
    }
    Ok(ip)
}

async fn del_one(spec: &Spec, r: &IpResource, conf: &Value, reason: &str) -> Result<(), String> {
    let netns = spec.netns_path(r);
    let args = spec.args(r, reason);
    let inv = Invocation {
        command: "DEL",
        container_id: &spec.own_netns,
        netns: if std::path::Path::new(&netns).exists() {
            &netns
        } else {
            ""
        },
        ifname: &r.ifname,
        args: &args,
    };
    let mappings = port_mappings(&r.expose);
    if !mappings.is_empty() {
        plugin::run(&spec.plugins, &portmap_conf(conf, mappings, None), &inv).await?;
    }
    plugin::run(&spec.plugins, conf, &inv).await.map(|_| ())
}

/// Stops every resource (DEL releases the lease), then removes the object's own namespace.
pub async fn stop(spec: &Spec, reason: &str) -> InstanceStatus {
    let mut out = Vec::new();
    for r in &spec.resources {
        let res = match spec.conf(r) {
            Ok(conf) => del_one(spec, r, &conf, reason).await,
            Err(e) => Err(e),
        };
        out.push(match res {
            Ok(()) => spec.resource(r, Up::Down, None, None),
            Err(e) => spec.resource(r, Up::Failed, None, Some(e)),
        });
    }
    let own = format!("/var/run/netns/{}", spec.own_netns);
    if std::path::Path::new(&own).exists() {
        if let Err(e) = ip_cmd(&["netns", "del", &spec.own_netns]).await {
            tracing::warn!("{}: {e}", spec.path);
        }
    }
    let state = if out.iter().all(|r| r.state == Up::Down) {
        Up::Down
    } else {
        Up::Failed
    };
    spec.status(state, out)
}
