//! `om-ipam`: the CNI IPAM plugin of OpenSVC cluster backend networks.
//!
//! Every allocation and release is an event on the cluster's event log; the plugin itself
//! holds no state: it asks its node's `om-node` (over the unix socket named `ipam.socket` in
//! the network configuration), which decides against the folded cluster state and appends
//! the event. CNI spec 1.0.0 (ADD, DEL, CHECK, VERSION), GC and STATUS of 1.1.0 accepted;
//! results are written in the configuration's `cniVersion` (0.3.0 to 1.1.0).

use om_node::ipam_proto::{code, Command, Reply, Request, DEFAULT_SOCKET};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

struct Failure {
    code: u32,
    msg: String,
    details: String,
}

fn fail(code: u32, msg: impl Into<String>) -> Failure {
    Failure {
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn main() {
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let conf: Value = serde_json::from_str(&stdin).unwrap_or(Value::Null);
    let version = conf["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    match run(&conf, &version) {
        Ok(Some(out)) => {
            let _ = std::io::stdout().write_all(out.to_string().as_bytes());
        }
        Ok(None) => {}
        Err(f) => {
            let mut e = json!({"cniVersion": version, "code": f.code, "msg": f.msg});
            if !f.details.is_empty() {
                e["details"] = json!(f.details);
            }
            let _ = std::io::stdout().write_all(e.to_string().as_bytes());
            std::process::exit(1);
        }
    }
}

fn run(conf: &Value, version: &str) -> Result<Option<Value>, Failure> {
    let command = env("CNI_COMMAND");
    if command == "VERSION" {
        return Ok(Some(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED}),
        ));
    }
    if conf.is_null() {
        return Err(fail(
            code::DECODE,
            "om-ipam: the network configuration on stdin is not JSON",
        ));
    }
    if !SUPPORTED.contains(&version) {
        return Err(Failure {
            code: 1,
            msg: format!("om-ipam: incompatible CNI version {version}"),
            details: format!("supported: {}", SUPPORTED.join(", ")),
        });
    }
    let network = conf["name"].as_str().unwrap_or_default().to_string();
    if network.is_empty() {
        return Err(fail(
            code::INVALID_CONFIG,
            "om-ipam: the network configuration has no name",
        ));
    }
    let socket = conf["ipam"]["socket"]
        .as_str()
        .unwrap_or(DEFAULT_SOCKET)
        .to_string();
    let mut req = Request {
        command: match command.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "" => return Err(fail(code::INVALID_ENV, "om-ipam: CNI_COMMAND is not set")),
            other => {
                return Err(fail(
                    code::INVALID_ENV,
                    format!("om-ipam: unknown CNI_COMMAND {other:?}, expected ADD, DEL, CHECK, GC, STATUS or VERSION"),
                ))
            }
        },
        network,
        container_id: env("CNI_CONTAINERID"),
        ifname: env("CNI_IFNAME"),
        netns: env("CNI_NETNS"),
        path: String::new(),
        rid: String::new(),
        reason: String::new(),
        valid: Vec::new(),
    };
    for kv in env("CNI_ARGS").split(';') {
        match kv.split_once('=') {
            Some(("OM_PATH", v)) => req.path = v.to_string(),
            Some(("OM_RID", v)) => req.rid = v.to_string(),
            Some(("OM_REASON", v)) => req.reason = v.to_string(),
            _ => {}
        }
    }
    if matches!(req.command, Command::Add | Command::Del | Command::Check) {
        for (name, v) in [
            ("CNI_CONTAINERID", &req.container_id),
            ("CNI_IFNAME", &req.ifname),
        ] {
            if v.is_empty() {
                return Err(fail(
                    code::INVALID_ENV,
                    format!("om-ipam: {name} is not set"),
                ));
            }
        }
        if req.command != Command::Del && req.netns.is_empty() {
            return Err(fail(code::INVALID_ENV, "om-ipam: CNI_NETNS is not set"));
        }
    }
    if req.command == Command::Gc {
        if let Some(list) = conf["cni.dev/valid-attachments"].as_array() {
            req.valid = list
                .iter()
                .map(|a| {
                    (
                        a["containerID"].as_str().unwrap_or_default().to_string(),
                        a["ifname"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
        }
    }
    let reply = ask(&socket, &req)?;
    let lease = match reply {
        Reply::Error { code, msg, details } => return Err(Failure { code, msg, details }),
        Reply::Ok { lease } => lease,
    };
    match (req.command, lease) {
        (Command::Add, Some(l)) => Ok(Some(result(conf, version, &l))),
        (Command::Add, None) => Err(fail(
            code::IO,
            "om-ipam: om-node answered ADD without an address",
        )),
        _ => Ok(None),
    }
}

fn ask(socket: &str, req: &Request) -> Result<Reply, Failure> {
    let unavailable = |e: std::io::Error| {
        Failure {
        code: code::TRY_AGAIN_LATER,
        msg: format!("om-ipam: no om-node answers on {socket}: {e}"),
        details: "om-ipam asks the node's om-node daemon, which records every allocation on the cluster's event log: start om-node on this node (its --state-dir holds ipam.sock)".into(),
    }
    };
    let mut s = UnixStream::connect(socket).map_err(unavailable)?;
    // The daemon retries an append while the event log is unreachable, up to 30 s.
    s.set_read_timeout(Some(Duration::from_secs(45)))
        .map_err(unavailable)?;
    let mut body = serde_json::to_vec(req).expect("plain data");
    body.push(b'\n');
    s.write_all(&body).map_err(unavailable)?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(unavailable)?;
    serde_json::from_str(&out).map_err(|e| Failure {
        code: code::IO,
        msg: format!("om-ipam: unreadable answer from om-node on {socket}: {e}"),
        details: out,
    })
}

/// The ADD result in the configuration's version: addresses, the routes of the
/// configuration, and its DNS settings.
fn result(conf: &Value, version: &str, l: &om_node::ipam_proto::Lease) -> Value {
    let mut ip = json!({"address": l.address, "gateway": l.gateway});
    if version.starts_with("0.") {
        let v6 = l.address.contains(':');
        ip["version"] = json!(if v6 { "6" } else { "4" });
    }
    let routes = conf["ipam"]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let dns = conf["ipam"]["dns"].clone();
    json!({
        "cniVersion": version,
        "ips": [ip],
        "routes": routes,
        "dns": if dns.is_null() { json!({}) } else { dns },
    })
}
