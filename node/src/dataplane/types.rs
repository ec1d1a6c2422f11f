//! Plain values exchanged with a [`Dataplane`](super::Dataplane): what the daemon asks
//! for (specs) and what it reads back (observations). No I/O here.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// The route protocol number (`rtm_protocol`, `ip route ... proto 165`) that marks a route
/// as programmed by `om-node`.
///
/// Listing and cleanup select routes by this number, so routes added by hand, by the
/// kernel (`proto kernel`) or by other daemons are never touched. 165 (0xa5) is not
/// assigned in `/etc/iproute2/rt_protos` nor used by the routing daemons we know of
/// (bird 12, zebra 11, babel 42, bgp 186, isis 187, ospf 188, rip 189, eigrp 192).
pub const OM_ROUTE_PROTOCOL: u8 = 0xa5;

/// The main routing table (`ip route ... table main`).
pub const MAIN_TABLE: u32 = 254;

/// The standard VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// An Ethernet hardware address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The bridge MAC used by OpenSVC and Kubernetes for an IPv4 bridge address:
    /// `0a:58:` followed by the four address octets. A fixed MAC keeps the bridge's
    /// address from changing when ports come and go (the kernel otherwise adopts the
    /// lowest port MAC, which stalls TCP sessions while neighbours relearn it).
    pub fn for_bridge_ipv4(ip: std::net::Ipv4Addr) -> Self {
        let o = ip.octets();
        MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC address that is not six colon-separated hexadecimal octets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mac address {0:?}: expected six hex octets like 0a:58:0a:0b:00:01")]
pub struct InvalidMac(pub String);

impl FromStr for MacAddr {
    type Err = InvalidMac;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| InvalidMac(s.to_string()))?;
            if part.len() != 2 {
                return Err(InvalidMac(s.to_string()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| InvalidMac(s.to_string()))?;
        }
        if parts.next().is_some() {
            return Err(InvalidMac(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

/// The kind of a link, as `ip -d link show` prints it after the link line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// `type bridge`
    Bridge,
    /// `type vxlan`
    Vxlan,
    /// `type ipip`
    IpIp,
    /// `type gre`
    Gre,
    /// `type ip6tnl`
    Ip6Tnl,
    /// `type veth`
    Veth,
    /// Anything else, by the kernel's kind name (empty for physical devices and `lo`).
    Other(String),
}

/// How a tunnel encapsulates: the tunnel modes of `network#NAME.tunnel_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelMode {
    /// IPv4 in IPv4 (`ip link add NAME type ipip`, IP protocol 4).
    IpIp,
    /// GRE over IPv4 (`ip link add NAME type gre`, IP protocol 47).
    Gre,
    /// IPv6 in IPv6 (`ip link add NAME type ip6tnl mode ip6ip6`).
    Ip6Ip6,
    /// Ethernet in UDP (`ip link add NAME type vxlan id VNI dstport PORT`): for underlays
    /// that drop IP protocols other than TCP/UDP, or kernels without the ipip module.
    Vxlan {
        /// VXLAN network identifier; unique per (port, local address) on a host.
        vni: u32,
        /// Destination UDP port.
        port: u16,
    },
}

impl TunnelMode {
    /// The kernel link kind this mode creates (the `type` of `ip link add`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            TunnelMode::IpIp => "ipip",
            TunnelMode::Gre => "gre",
            TunnelMode::Ip6Ip6 => "ip6tnl",
            TunnelMode::Vxlan { .. } => "vxlan",
        }
    }

    /// The link kind this mode creates.
    pub fn link_kind(&self) -> LinkKind {
        match self {
            TunnelMode::IpIp => LinkKind::IpIp,
            TunnelMode::Gre => LinkKind::Gre,
            TunnelMode::Ip6Ip6 => LinkKind::Ip6Tnl,
            TunnelMode::Vxlan { .. } => LinkKind::Vxlan,
        }
    }
}

impl fmt::Display for TunnelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelMode::IpIp => f.write_str("ipip"),
            TunnelMode::Gre => f.write_str("gre"),
            TunnelMode::Ip6Ip6 => f.write_str("ip6ip6"),
            TunnelMode::Vxlan { vni, port } => write!(f, "vxlan id {vni} dstport {port}"),
        }
    }
}

/// A bridge as the daemon wants it: exists, carries `address`, has `mac`, is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Interface name (`obr_<network>` or the network's `dev`), at most 15 bytes.
    pub name: String,
    /// The gateway address with the segment's prefix length, e.g. `10.11.0.1/22`.
    pub address: IpNet,
    /// The MAC to set; `None` leaves the kernel's choice (IPv6 bridges, see §3.3 step 5).
    pub mac: Option<MacAddr>,
}

/// A tunnel as the daemon wants it: exists with this mode and these endpoints, is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// Interface name (`tun...`/`otun...`), at most 15 bytes.
    pub name: String,
    /// Encapsulation.
    pub mode: TunnelMode,
    /// This node's underlay address (outer source).
    pub local: IpAddr,
    /// The peer's underlay address (outer destination).
    pub remote: IpAddr,
}

/// What a tunnel link is, read back from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelInfo {
    /// Encapsulation (for vxlan, with the VNI and port the kernel reports).
    pub mode: TunnelMode,
    /// Outer source address, if set.
    pub local: Option<IpAddr>,
    /// Outer destination address, if set.
    pub remote: Option<IpAddr>,
}

/// A link read back from the kernel (`ip -d addr show dev NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Interface index; changes when a link is recreated.
    pub index: u32,
    /// Link kind.
    pub kind: LinkKind,
    /// Administrative state (`IFF_UP`), not carrier: a bridge without ports is up and
    /// `NO-CARRIER`.
    pub up: bool,
    /// Hardware address, for links that have one (ipip/gre links have none).
    pub mac: Option<MacAddr>,
    /// Addresses with prefix length, sorted. IPv6 link-local addresses are left out: the
    /// kernel adds them by itself when a link gets carrier, they are not the daemon's.
    pub addresses: Vec<IpNet>,
    /// Tunnel mode and endpoints, for vxlan/ipip/gre/ip6tnl links.
    pub tunnel: Option<TunnelInfo>,
}

/// Which links a listing returns: those named exactly, plus those starting with a prefix.
///
/// Beware of short prefixes: where the ipip module is loaded, every namespace holds the
/// kernel's fallback device `tunl0` (and `gre0`, `gretap0`, `erspan0` with gre,
/// `ip6tnl0` with ip6tnl), which a bare `tun` prefix selects. These cannot be deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFilter {
    /// Exact names (bridges given by a network's `dev`).
    pub names: Vec<String>,
    /// Name prefixes (`obr_`, `tun`, `otun`).
    pub prefixes: Vec<String>,
}

impl LinkFilter {
    /// Links whose name starts with one of `prefixes`.
    pub fn prefixes<I: IntoIterator<Item = S>, S: Into<String>>(prefixes: I) -> Self {
        LinkFilter {
            names: Vec::new(),
            prefixes: prefixes.into_iter().map(Into::into).collect(),
        }
    }

    /// Adds an exact name.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.names.push(name.into());
        self
    }

    /// Whether `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name) || self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

/// A route, as given to `ip route replace` and read back from `ip route show table all`.
///
/// Two routes are the same kernel route when `table` and `dst` match (the kernel also keys
/// on tos and metric, which the daemon never sets).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop (`via`).
    pub via: Option<IpAddr>,
    /// Output device (`dev`).
    pub dev: Option<String>,
    /// Preferred source address (`src`); must be a local address.
    pub src: Option<IpAddr>,
    /// Next hop is on the link even though no connected subnet contains it (`onlink`).
    pub onlink: bool,
    /// Routing table id ([`MAIN_TABLE`] = 254).
    pub table: u32,
    /// Route protocol ([`OM_ROUTE_PROTOCOL`] for ours).
    pub protocol: u8,
}

impl Route {
    /// A route in the main table with our protocol and nothing else set.
    pub fn new(dst: IpNet) -> Self {
        Route {
            dst,
            via: None,
            dev: None,
            src: None,
            onlink: false,
            table: MAIN_TABLE,
            protocol: OM_ROUTE_PROTOCOL,
        }
    }

    /// Sets the next hop.
    pub fn via(mut self, gw: IpAddr) -> Self {
        self.via = Some(gw);
        self
    }

    /// Sets the output device.
    pub fn dev(mut self, dev: impl Into<String>) -> Self {
        self.dev = Some(dev.into());
        self
    }

    /// Sets the preferred source.
    pub fn src(mut self, src: IpAddr) -> Self {
        self.src = Some(src);
        self
    }

    /// Sets the onlink flag.
    pub fn onlink(mut self) -> Self {
        self.onlink = true;
        self
    }

    /// Sets the table.
    pub fn table(mut self, table: u32) -> Self {
        self.table = table;
        self
    }

    /// Sets the protocol.
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.protocol = protocol;
        self
    }
}

/// Formats like `ip route` arguments: `10.11.4.0/22 via 192.0.2.12 dev obr_t onlink table 254`.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, " dev {dev}")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if self.onlink {
            f.write_str(" onlink")?;
        }
        write!(f, " table {}", self.table)?;
        if self.protocol != OM_ROUTE_PROTOCOL {
            write!(f, " proto {}", self.protocol)?;
        }
        Ok(())
    }
}

/// An address configured on an interface, with its connected subnet
/// (`ip -o addr show`): the daemon's `tunnel=auto` asks whether a peer is in `network`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceAddress {
    /// Interface name.
    pub link: String,
    /// The address with its prefix length, e.g. `192.0.2.11/24`.
    pub address: IpNet,
}

impl InterfaceAddress {
    /// The connected subnet, e.g. `192.0.2.0/24`.
    pub fn network(&self) -> IpNet {
        self.address.trunc()
    }
}

/// What an `ensure_*` call had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnsureOutcome {
    /// The link did not exist and was created.
    Created,
    /// The link existed and something was changed (address added, MAC set, set up,
    /// tunnel recreated).
    Changed,
    /// Everything was already as asked.
    Unchanged,
}

impl EnsureOutcome {
    /// Records that something changed: `Unchanged` becomes `Changed`, `Created` stays.
    pub fn note_change(&mut self) {
        if *self == EnsureOutcome::Unchanged {
            *self = EnsureOutcome::Changed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_bridge_mac() {
        let mac = MacAddr::for_bridge_ipv4("10.11.4.1".parse().unwrap());
        assert_eq!(mac.to_string(), "0a:58:0a:0b:04:01");
        assert_eq!("0a:58:0a:0b:04:01".parse::<MacAddr>().unwrap(), mac);
        assert!("0a:58:0a:0b:04".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:0b:04:01:02".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:0b:04:zz".parse::<MacAddr>().is_err());
    }

    #[test]
    fn route_display_names_every_field() {
        let r = Route::new("10.11.8.0/22".parse().unwrap())
            .via("10.11.8.1".parse().unwrap())
            .dev("tun1")
            .onlink();
        assert_eq!(
            r.to_string(),
            "10.11.8.0/22 via 10.11.8.1 dev tun1 onlink table 254"
        );
        let r = Route::new("10.11.4.0/22".parse().unwrap())
            .protocol(4)
            .table(100);
        assert_eq!(r.to_string(), "10.11.4.0/22 table 100 proto 4");
    }

    #[test]
    fn filter_matches_names_and_prefixes() {
        let f = LinkFilter::prefixes(["obr_", "tun"]).with_name("br-prd");
        assert!(f.matches("obr_backend"));
        assert!(f.matches("tun1921680112"));
        assert!(f.matches("br-prd"));
        assert!(!f.matches("br-prd2"));
        assert!(!f.matches("eth0"));
    }
}
