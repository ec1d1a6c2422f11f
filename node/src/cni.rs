//! CNI network configuration files, in the formats of the reference (§4–§6): single-plugin
//! `.conf` files, cniVersion 0.3.0, keys sorted, three-space indent, no trailing newline,
//! written atomically (temporary file in the same directory, then rename).

use ipnet::IpNet;
use om_events::network::Network;
use serde_json::json;
use std::net::IpAddr;
use std::path::Path;

pub const CNI_VERSION: &str = "0.3.0";

/// The IPAM socket's file name in the daemon's state directory.
pub const IPAM_SOCKET: &str = "ipam.sock";

fn pretty(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(v, &mut ser).expect("JSON of plain values");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// bridge and routed_bridge: the `bridge` plugin on the node's bridge, with this project's
/// `om-ipam` plugin (decision 11: every allocation is an event), which asks the node's daemon
/// on the unix socket `<state-dir>/ipam.sock`; `subnet` (the network for bridge, this node's
/// segment for routed_bridge) is informational, as upstream's status reads it; routes:
/// default, and the whole network through the bridge address.
pub fn bridge(
    net: &Network,
    subnet: &IpNet,
    gw: IpAddr,
    whole: &IpNet,
    state_dir: &Path,
) -> String {
    let default = if gw.is_ipv6() { "::/0" } else { "0.0.0.0/0" };
    pretty(&json!({
        "bridge": net.bridge_name(),
        "cniVersion": CNI_VERSION,
        "ipMasq": false,
        "ipam": {
            "routes": [{"dst": default}, {"dst": whole.to_string(), "gw": gw.to_string()}],
            "socket": state_dir.join(IPAM_SOCKET).display().to_string(),
            "subnet": subnet.to_string(),
            "type": "om-ipam",
        },
        "isGateway": true,
        "name": net.name,
        "type": "bridge",
    }))
}

pub fn loopback(name: &str) -> String {
    pretty(&json!({"cniVersion": CNI_VERSION, "name": name, "type": "loopback"}))
}

pub fn weave(name: &str, cidr: &IpNet) -> String {
    pretty(
        &json!({"cniVersion": CNI_VERSION, "ipam": {"subnet": cidr.to_string()}, "name": name, "type": "weave-net"}),
    )
}

/// Writes `content` to `dir/name` atomically.
pub fn write_atomic(dir: &Path, name: &str, content: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, dir.join(name))
}
