//! Pure builders of netlink requests: one small function per request, each naming the
//! `ip` command it stands for. Nothing here talks to the kernel, so the messages can be
//! checked without root.

use std::net::IpAddr;

use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::packet_route::IpProtocol;
use rtnetlink::{
    LinkBridge, LinkGre, LinkIp6Tnl, LinkIpIp, LinkMessageBuilder, LinkUnspec, LinkVxlan,
    RouteMessageBuilder,
};

use super::super::types::{MacAddr, Route, TunnelMode, TunnelSpec};

/// `ip link add NAME type bridge` (created down; [`link_up`] follows once it is set up).
pub(crate) fn bridge_add(name: &str) -> LinkMessage {
    LinkMessageBuilder::<LinkBridge>::new(name).build()
}

/// `ip link set dev IFINDEX up`.
pub(crate) fn link_up(index: u32) -> LinkMessage {
    LinkUnspec::new_with_index(index).up().build()
}

/// `ip link set dev IFINDEX address MAC`.
pub(crate) fn link_set_mac(index: u32, mac: MacAddr) -> LinkMessage {
    LinkUnspec::new_with_index(index)
        .address(mac.0.to_vec())
        .build()
}

/// `ip link add NAME type ipip|gre local L remote R`,
/// `ip link add NAME type ip6tnl mode ip6ip6 local L remote R`,
/// `ip link add NAME type vxlan id VNI dstport PORT local L remote R`.
///
/// The error names why the endpoints do not fit the mode; nothing is sent then.
pub(crate) fn tunnel_add(spec: &TunnelSpec) -> Result<LinkMessage, String> {
    let name = spec.name.as_str();
    match (spec.mode, spec.local, spec.remote) {
        (TunnelMode::IpIp, IpAddr::V4(l), IpAddr::V4(r)) => {
            Ok(LinkIpIp::new(name).local(l).remote(r).build())
        }
        (TunnelMode::Gre, IpAddr::V4(l), IpAddr::V4(r)) => {
            Ok(LinkGre::new(name).local(l).remote(r).build())
        }
        (TunnelMode::Ip6Ip6, IpAddr::V6(l), IpAddr::V6(r)) => Ok(LinkIp6Tnl::new(name)
            .mode(IpProtocol::Ipv6)
            .local(l)
            .remote(r)
            .build()),
        (TunnelMode::Vxlan { vni, port }, IpAddr::V4(l), IpAddr::V4(r)) => {
            Ok(LinkVxlan::new(name, vni)
                .port(port)
                .local(l)
                .remote(r)
                .build())
        }
        (TunnelMode::Vxlan { vni, port }, IpAddr::V6(l), IpAddr::V6(r)) => {
            Ok(LinkVxlan::new(name, vni)
                .port(port)
                .local6(l)
                .remote6(r)
                .build())
        }
        (mode, l, r) => Err(format!(
            "mode {mode} cannot join local {l} and remote {r}: {}",
            match mode {
                TunnelMode::IpIp | TunnelMode::Gre => "it needs IPv4 endpoints",
                TunnelMode::Ip6Ip6 => "it needs IPv6 endpoints",
                TunnelMode::Vxlan { .. } => "both endpoints must be of one family",
            }
        )),
    }
}

/// The message of `ip route replace|del ROUTE`, with the output device already resolved to
/// `oif`. `deleting` gives scope "nowhere", which the kernel reads as "any scope" when it
/// looks for the route to delete, as `ip route del` does.
pub(crate) fn route_message(
    route: &Route,
    oif: Option<u32>,
    deleting: bool,
) -> Result<RouteMessage, String> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.dst.addr(), route.dst.prefix_len())
        .map_err(|e| e.to_string())?;
    if let Some(gw) = route.via {
        if gw.is_ipv4() != route.dst.addr().is_ipv4() {
            return Err(format!(
                "gateway {gw} is not of the family of {}",
                route.dst
            ));
        }
        b = b.gateway(gw).map_err(|e| e.to_string())?;
    }
    if let Some(src) = route.src {
        b = b.pref_source(src).map_err(|e| e.to_string())?;
    }
    if let Some(oif) = oif {
        b = b.output_interface(oif);
    }
    // As `ip route`: a route without next hop reaches its destination on the link.
    let scope = if deleting {
        RouteScope::NoWhere
    } else if route.via.is_none() {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    b = b
        .table_id(route.table)
        .protocol(RouteProtocol::from(route.protocol))
        .scope(scope);
    if route.onlink {
        b = b.onlink();
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
    use rtnetlink::packet_route::route::{RouteAttribute, RouteFlags};

    fn info(msg: &LinkMessage) -> (Option<InfoKind>, Option<InfoData>) {
        let mut kind = None;
        let mut data = None;
        for a in &msg.attributes {
            if let LinkAttribute::LinkInfo(infos) = a {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(d) => data = Some(d.clone()),
                        _ => {}
                    }
                }
            }
        }
        (kind, data)
    }

    #[test]
    fn vxlan_message_carries_vni_port_and_endpoints() {
        let spec = TunnelSpec {
            name: "tun1".into(),
            mode: TunnelMode::Vxlan {
                vni: 13,
                port: 4789,
            },
            local: "192.0.2.11".parse().unwrap(),
            remote: "198.51.100.13".parse().unwrap(),
        };
        let msg = tunnel_add(&spec).unwrap();
        let (kind, data) = info(&msg);
        assert_eq!(kind, Some(InfoKind::Vxlan));
        let Some(InfoData::Vxlan(v)) = data else {
            panic!("no vxlan data")
        };
        assert!(v.contains(&InfoVxlan::Id(13)));
        assert!(v.contains(&InfoVxlan::Port(4789)));
        assert!(v.contains(&InfoVxlan::Local("192.0.2.11".parse().unwrap())));
        assert!(v.contains(&InfoVxlan::Group("198.51.100.13".parse().unwrap())));
        assert!(msg
            .attributes
            .contains(&LinkAttribute::IfName("tun1".to_string())));
    }

    #[test]
    fn tunnel_family_mismatch_is_refused() {
        let spec = TunnelSpec {
            name: "tun1".into(),
            mode: TunnelMode::IpIp,
            local: "2001:db8::1".parse().unwrap(),
            remote: "2001:db8::2".parse().unwrap(),
        };
        assert_eq!(
            tunnel_add(&spec).unwrap_err(),
            "mode ipip cannot join local 2001:db8::1 and remote 2001:db8::2: it needs IPv4 endpoints"
        );
    }

    #[test]
    fn route_message_sets_table_protocol_scope_and_onlink() {
        let r = Route::new("10.11.8.0/22".parse().unwrap())
            .via("10.11.8.1".parse().unwrap())
            .dev("tun1")
            .onlink()
            .table(1000);
        let m = route_message(&r, Some(7), false).unwrap();
        assert_eq!(m.header.destination_prefix_length, 22);
        assert_eq!(u8::from(m.header.protocol), 0xa5);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(m.attributes.contains(&RouteAttribute::Oif(7)));

        let r = Route::new("10.11.0.0/22".parse().unwrap()).dev("obr_t");
        let m = route_message(&r, Some(3), false).unwrap();
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.table, 254);
        let m = route_message(&r, Some(3), true).unwrap();
        assert_eq!(m.header.scope, RouteScope::NoWhere);
    }
}
