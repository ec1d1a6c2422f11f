//! Pure parsers of netlink replies into the dataplane's observations.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoGre, InfoIpTunnel, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
use rtnetlink::packet_route::{AddressFamily, IpProtocol};

use super::super::types::{Link, LinkKind, MacAddr, Route, TunnelInfo, TunnelMode};

/// A link message as a [`Link`] without addresses (they come from another dump).
pub(crate) fn link(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mac = None;
    let mut kind = LinkKind::Other(String::new());
    let mut data = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut b = [0u8; 6];
                b.copy_from_slice(a);
                mac = Some(MacAddr(b));
            }
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => kind = link_kind(k),
                        LinkInfo::Data(d) => data = Some(d),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let tunnel = data.and_then(|d| tunnel_info(&kind, d));
    Some(Link {
        name: name?,
        index: msg.header.index,
        kind,
        up: msg.header.flags.contains(LinkFlags::Up),
        mac,
        addresses: Vec::new(),
        tunnel,
    })
}

fn link_kind(k: &InfoKind) -> LinkKind {
    match k {
        InfoKind::Bridge => LinkKind::Bridge,
        InfoKind::Vxlan => LinkKind::Vxlan,
        InfoKind::IpIp => LinkKind::IpIp,
        InfoKind::GreTun => LinkKind::Gre,
        InfoKind::Ip6Tnl => LinkKind::Ip6Tnl,
        InfoKind::Veth => LinkKind::Veth,
        other => LinkKind::Other(other.to_string()),
    }
}

fn tunnel_info(kind: &LinkKind, data: &InfoData) -> Option<TunnelInfo> {
    match (kind, data) {
        (LinkKind::Vxlan, InfoData::Vxlan(v)) => {
            let mut vni = None;
            // The kernel's default when IFLA_VXLAN_PORT is absent (old kernels): 8472.
            let mut port = 8472;
            let mut local = None;
            let mut remote = None;
            for a in v {
                match a {
                    InfoVxlan::Id(id) => vni = Some(*id),
                    InfoVxlan::Port(p) => port = *p,
                    InfoVxlan::Local(l) => local = Some(IpAddr::V4(*l)),
                    InfoVxlan::Local6(l) => local = Some(IpAddr::V6(*l)),
                    // IFLA_VXLAN_GROUP holds the `remote` of a point-to-point vxlan.
                    InfoVxlan::Group(g) => remote = Some(IpAddr::V4(*g)),
                    InfoVxlan::Group6(g) => remote = Some(IpAddr::V6(*g)),
                    _ => {}
                }
            }
            Some(TunnelInfo {
                mode: TunnelMode::Vxlan { vni: vni?, port },
                local: local.filter(|a| !a.is_unspecified()),
                remote: remote.filter(|a| !a.is_unspecified()),
            })
        }
        (LinkKind::IpIp | LinkKind::Ip6Tnl, InfoData::IpTunnel(v)) => {
            let mut local = None;
            let mut remote = None;
            let mut proto = None;
            for a in v {
                match a {
                    InfoIpTunnel::Local(l) => local = Some(*l),
                    InfoIpTunnel::Remote(r) => remote = Some(*r),
                    InfoIpTunnel::Protocol(p) => proto = Some(*p),
                    _ => {}
                }
            }
            let mode = match kind {
                LinkKind::IpIp => TunnelMode::IpIp,
                // ip6tnl also carries IPv4 (mode ipip6) or any (mode any): not ours.
                _ if proto == Some(IpProtocol::Ipv6) => TunnelMode::Ip6Ip6,
                _ => return None,
            };
            Some(TunnelInfo {
                mode,
                local: local.filter(|a| !a.is_unspecified()),
                remote: remote.filter(|a| !a.is_unspecified()),
            })
        }
        (LinkKind::Gre, InfoData::GreTun(v)) => {
            let mut local = None;
            let mut remote = None;
            for a in v {
                match a {
                    InfoGre::Local(l) => local = Some(IpAddr::V4(*l)),
                    InfoGre::Remote(r) => remote = Some(IpAddr::V4(*r)),
                    _ => {}
                }
            }
            Some(TunnelInfo {
                mode: TunnelMode::Gre,
                local: local.filter(|a| !a.is_unspecified()),
                remote: remote.filter(|a| !a.is_unspecified()),
            })
        }
        _ => None,
    }
}

/// An address message as (link index, address/prefix). IPv6 link-local addresses give
/// `None`: the kernel adds them by itself.
pub(crate) fn address(msg: &AddressMessage) -> Option<(u32, IpNet)> {
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
    // point-to-point links and equal to IFA_LOCAL elsewhere. IPv6 sends IFA_ADDRESS only.
    let mut local = None;
    let mut address = None;
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    if let IpAddr::V6(v6) = ip {
        if (v6.segments()[0] & 0xffc0) == 0xfe80 {
            return None;
        }
    }
    let net = IpNet::new(ip, msg.header.prefix_len).ok()?;
    Some((msg.header.index, net))
}

/// A route message as a [`Route`]; `names` maps link indexes to names. Multipath and
/// non-IP routes give `None`.
pub(crate) fn route(msg: &RouteMessage, names: &HashMap<u32, String>) -> Option<Route> {
    let h = &msg.header;
    let mut dst = None;
    let mut via = None;
    let mut dev = None;
    let mut src = None;
    let mut table = u32::from(h.table);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip(d),
            RouteAttribute::Gateway(g) => via = ip(g),
            RouteAttribute::PrefSource(s) => src = ip(s),
            RouteAttribute::Oif(i) => dev = Some(names.get(i).cloned().unwrap_or(format!("if{i}"))),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::MultiPath(_) => return None,
            _ => {}
        }
    }
    let dst_addr = match (dst, h.address_family) {
        (Some(d), _) => d,
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    Some(Route {
        dst: IpNet::new(dst_addr, h.destination_prefix_length).ok()?,
        via,
        dev,
        src,
        onlink: h.flags.contains(RouteFlags::Onlink),
        table,
        protocol: u8::from(h.protocol),
    })
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}
