//! The local protocol between the `om-ipam` CNI plugin and its node's `om-node`: one JSON
//! request per connection on a unix socket (`<state-dir>/ipam.sock`, named in the network's
//! CNI configuration as `ipam.socket`), one JSON reply, then the connection closes.

use serde::{Deserialize, Serialize};

/// Default socket of a daemon started with the default state directory.
pub const DEFAULT_SOCKET: &str = "/var/lib/om-node/ipam.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub command: Command,
    /// The CNI network name (`name` of the configuration), which is the backend network.
    pub network: String,
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    /// `CNI_NETNS`.
    #[serde(default)]
    pub netns: String,
    /// `OM_PATH` and `OM_RID` of `CNI_ARGS`, when the attachment is a service's resource.
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub rid: String,
    /// `OM_REASON` of `CNI_ARGS` (DEL): recorded with the release.
    #[serde(default)]
    pub reason: String,
    /// GC: the attachments to keep, as (container id, ifname).
    #[serde(default)]
    pub valid: Vec<(String, String)>,
}

/// A granted (or found) address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Address with the prefix length of the pool (`10.11.0.2/22`).
    pub address: String,
    pub gateway: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok {
        lease: Option<Lease>,
    },
    /// A CNI error: `code` as in the CNI specification (11: try again later).
    Error {
        code: u32,
        msg: String,
        details: String,
    },
}

/// CNI error codes used here.
pub mod code {
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin specific: the pool is exhausted.
    pub const NO_ADDRESS: u32 = 100;
    /// Plugin specific: the allocation was refused (no segment, wrong network type ...).
    pub const REFUSED: u32 = 101;
}
