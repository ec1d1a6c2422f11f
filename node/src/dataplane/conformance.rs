//! The conformance suite: the same assertions, with exact values, against any
//! [`Dataplane`]. The crate's unit tests run it on [`MemoryDataplane`](super::MemoryDataplane);
//! `om-tests` runs it on [`RtnetlinkDataplane`](super::RtnetlinkDataplane) in a fresh
//! network namespace per case. A difference between the fake and the kernel shows up as a
//! failure of one of the two runs.
//!
//! Each case expects a namespace holding only `lo`, up. Addresses are from documentation
//! ranges (192.0.2.0/24, 198.51.100.0/24, 2001:db8::/32) and 10.9x.0.0/24 overlays; the
//! suite must only ever be pointed at a namespace made for it.

use std::future::Future;
use std::net::IpAddr;

use ipnet::IpNet;

use super::types::{
    BridgeSpec, EnsureOutcome, InterfaceAddress, Link, LinkFilter, LinkKind, MacAddr, Route,
    TunnelInfo, TunnelMode, TunnelSpec, OM_ROUTE_PROTOCOL, VXLAN_PORT,
};
use super::{Dataplane, DataplaneError};

fn net(s: &str) -> IpNet {
    s.parse().expect("test literal")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test literal")
}

fn bridge(name: &str, address: &str) -> BridgeSpec {
    let address = net(address);
    let mac = match address.addr() {
        IpAddr::V4(v4) => Some(MacAddr::for_bridge_ipv4(v4)),
        IpAddr::V6(_) => None,
    };
    BridgeSpec {
        name: name.into(),
        address,
        mac,
    }
}

fn vxlan(name: &str, vni: u32, local: &str, remote: &str) -> TunnelSpec {
    TunnelSpec {
        name: name.into(),
        mode: TunnelMode::Vxlan {
            vni,
            port: VXLAN_PORT,
        },
        local: ip(local),
        remote: ip(remote),
    }
}

fn info(spec: &TunnelSpec) -> TunnelInfo {
    TunnelInfo {
        mode: spec.mode,
        local: Some(spec.local),
        remote: Some(spec.remote),
    }
}

async fn only_link<D: Dataplane>(dp: &D, name: &str) -> Link {
    let links = dp
        .links(&LinkFilter::default().with_name(name))
        .await
        .expect("list links");
    assert_eq!(links.len(), 1, "exactly one link named {name}: {links:?}");
    links.into_iter().next().expect("one")
}

/// Runs every case, each on a dataplane of its own from `make`. `make` returns the
/// dataplane and a guard `G` kept alive for the case (a namespace, or `()`). Returns
/// notes on the cases whose path depends on the kernel (tunnel modes available or not).
pub async fn run_all<D, G, F, Fut>(mut make: F) -> Vec<String>
where
    D: Dataplane,
    F: FnMut() -> Fut,
    Fut: Future<Output = (D, G)>,
{
    let mut notes = Vec::new();
    macro_rules! case {
        ($f:ident $(, $arg:expr)*) => {{
            let (dp, guard) = make().await;
            let note = $f(&dp $(, $arg)*).await;
            drop(dp);
            drop(guard);
            note
        }};
    }
    case!(bridge_is_idempotent);
    case!(bridge_keeps_other_addresses);
    case!(routes_replace_list_delete);
    case!(route_errors_name_the_route);
    case!(vxlan_create_and_change);
    case!(vxlan_same_vni_and_port_clash);
    case!(routes_vanish_with_their_link);
    case!(delete_missing_link_is_not_found);
    case!(addresses_give_connected_subnets);
    for mode in [TunnelMode::IpIp, TunnelMode::Gre, TunnelMode::Ip6Ip6] {
        notes.push(case!(tunnel_mode_created_or_unsupported, mode));
    }
    notes
}

/// Ensure bridge twice: created then unchanged, with exactly the asked address, MAC, up.
pub async fn bridge_is_idempotent<D: Dataplane>(dp: &D) {
    let spec = bridge("obr_c", "10.99.0.1/24");
    assert_eq!(
        dp.ensure_bridge(&spec).await.unwrap(),
        EnsureOutcome::Created
    );
    let got = only_link(dp, "obr_c").await;
    let want = Link {
        name: "obr_c".into(),
        index: got.index,
        kind: LinkKind::Bridge,
        up: true,
        mac: Some("0a:58:0a:63:00:01".parse().unwrap()),
        addresses: vec![net("10.99.0.1/24")],
        tunnel: None,
    };
    assert_eq!(got, want);
    assert_eq!(
        dp.ensure_bridge(&spec).await.unwrap(),
        EnsureOutcome::Unchanged
    );
    assert_eq!(only_link(dp, "obr_c").await, want);
    let listed = dp.links(&LinkFilter::prefixes(["obr_"])).await.unwrap();
    assert_eq!(listed, vec![want]);
}

/// A second address is added beside the first, which stays; the MAC follows the spec.
pub async fn bridge_keeps_other_addresses<D: Dataplane>(dp: &D) {
    dp.ensure_bridge(&bridge("obr_k", "10.99.0.1/24"))
        .await
        .unwrap();
    let second = bridge("obr_k", "10.99.4.1/22");
    assert_eq!(
        dp.ensure_bridge(&second).await.unwrap(),
        EnsureOutcome::Changed
    );
    let got = only_link(dp, "obr_k").await;
    assert_eq!(
        got.addresses,
        vec![net("10.99.0.1/24"), net("10.99.4.1/22")]
    );
    assert_eq!(got.mac, Some("0a:58:0a:63:04:01".parse().unwrap()));
    assert!(got.up);
}

/// Replace, list (only our protocol, every table), replace again, delete.
pub async fn routes_replace_list_delete<D: Dataplane>(dp: &D) {
    dp.ensure_bridge(&bridge("obr_r", "10.98.0.1/24"))
        .await
        .unwrap();
    let via = Route::new(net("10.97.0.0/24")).via(ip("10.98.0.2"));
    let in_100 = Route::new(net("10.96.0.0/24"))
        .dev("obr_r")
        .src(ip("10.98.0.1"))
        .table(100);
    let not_ours = Route::new(net("10.95.0.0/24")).dev("obr_r").protocol(4);
    for r in [&via, &in_100, &not_ours] {
        dp.replace_route(r).await.unwrap();
    }
    // The kernel fills in the device of a route given only a gateway.
    let via_read = via.clone().dev("obr_r");
    let mut want = vec![via_read.clone(), in_100.clone()];
    want.sort();
    assert_eq!(dp.routes(OM_ROUTE_PROTOCOL).await.unwrap(), want);
    assert_eq!(dp.routes(4).await.unwrap(), vec![not_ours.clone()]);

    // Same table and destination: replaced, not added.
    let moved = Route::new(net("10.97.0.0/24")).via(ip("10.98.0.3"));
    dp.replace_route(&moved).await.unwrap();
    let mut want = vec![moved.clone().dev("obr_r"), in_100.clone()];
    want.sort();
    assert_eq!(dp.routes(OM_ROUTE_PROTOCOL).await.unwrap(), want);

    dp.delete_route(&in_100).await.unwrap();
    assert_eq!(
        dp.routes(OM_ROUTE_PROTOCOL).await.unwrap(),
        vec![moved.clone().dev("obr_r")]
    );
    let again = dp.delete_route(&in_100).await.unwrap_err();
    assert!(again.is_not_found(), "{again}");
    assert_eq!(
        again.to_string(),
        "delete route 10.96.0.0/24 dev obr_r src 10.98.0.1 table 100: not found"
    );
    // Destination and table are enough to delete.
    dp.delete_route(&Route::new(net("10.97.0.0/24")))
        .await
        .unwrap();
    assert_eq!(dp.routes(OM_ROUTE_PROTOCOL).await.unwrap(), vec![]);
    dp.delete_route(&not_ours).await.unwrap();
    assert_eq!(dp.routes(4).await.unwrap(), vec![]);
}

/// Refused routes leave the table as it was and say which route failed.
pub async fn route_errors_name_the_route<D: Dataplane>(dp: &D) {
    dp.ensure_bridge(&bridge("obr_e", "10.98.0.1/24"))
        .await
        .unwrap();
    let unreachable = Route::new(net("10.97.0.0/24")).via(ip("203.0.113.9"));
    let e = dp.replace_route(&unreachable).await.unwrap_err();
    assert_eq!(e.errno(), Some(super::error::ENETUNREACH), "{e}");
    assert!(
        e.to_string()
            .starts_with("replace route 10.97.0.0/24 via 203.0.113.9 table 254: "),
        "{e}"
    );
    let no_dev = Route::new(net("10.97.0.0/24")).dev("obr_missing");
    let e = dp.replace_route(&no_dev).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(
        e.to_string(),
        "replace route 10.97.0.0/24 dev obr_missing table 254: interface obr_missing: not found"
    );
    let bad_src = Route::new(net("10.97.0.0/24"))
        .dev("obr_e")
        .src(ip("10.98.0.77"));
    let e = dp.replace_route(&bad_src).await.unwrap_err();
    assert_eq!(e.errno(), Some(super::error::EINVAL), "{e}");
    assert_eq!(dp.routes(OM_ROUTE_PROTOCOL).await.unwrap(), vec![]);
}

/// Vxlan: created, unchanged, recreated on endpoint change, recreated on VNI change.
pub async fn vxlan_create_and_change<D: Dataplane>(dp: &D) {
    let spec = vxlan("tun_c", 42, "192.0.2.11", "198.51.100.13");
    assert_eq!(
        dp.ensure_tunnel(&spec).await.unwrap(),
        EnsureOutcome::Created
    );
    let got = only_link(dp, "tun_c").await;
    assert!(got.mac.is_some(), "a vxlan link has a MAC: {got:?}");
    let want = Link {
        name: "tun_c".into(),
        index: got.index,
        kind: LinkKind::Vxlan,
        up: true,
        mac: got.mac,
        addresses: vec![],
        tunnel: Some(info(&spec)),
    };
    assert_eq!(got, want);
    assert_eq!(
        dp.ensure_tunnel(&spec).await.unwrap(),
        EnsureOutcome::Unchanged
    );
    assert_eq!(only_link(dp, "tun_c").await, want);

    let moved = vxlan("tun_c", 42, "192.0.2.11", "198.51.100.14");
    assert_eq!(
        dp.ensure_tunnel(&moved).await.unwrap(),
        EnsureOutcome::Changed
    );
    let got = only_link(dp, "tun_c").await;
    assert_eq!(got.tunnel, Some(info(&moved)));
    assert!(got.up);
    assert_ne!(got.index, want.index, "recreated, so a new index");

    let renumbered = vxlan("tun_c", 43, "192.0.2.11", "198.51.100.14");
    assert_eq!(
        dp.ensure_tunnel(&renumbered).await.unwrap(),
        EnsureOutcome::Changed
    );
    assert_eq!(only_link(dp, "tun_c").await.tunnel, Some(info(&renumbered)));

    // A bridge cannot take the tunnel's name.
    let e = dp
        .ensure_bridge(&bridge("tun_c", "10.99.0.1/24"))
        .await
        .unwrap_err();
    assert!(matches!(e, DataplaneError::Invalid { .. }), "{e}");

    dp.delete_link("tun_c").await.unwrap();
    assert_eq!(
        dp.links(&LinkFilter::prefixes(["tun_"])).await.unwrap(),
        vec![]
    );
}

/// Two vxlan links with one VNI on one port: the second is refused.
pub async fn vxlan_same_vni_and_port_clash<D: Dataplane>(dp: &D) {
    dp.ensure_tunnel(&vxlan("tun_a", 7, "192.0.2.11", "198.51.100.13"))
        .await
        .unwrap();
    let e = dp
        .ensure_tunnel(&vxlan("tun_b", 7, "192.0.2.11", "198.51.100.14"))
        .await
        .unwrap_err();
    assert!(matches!(e, DataplaneError::AlreadyExists { .. }), "{e}");
    dp.ensure_tunnel(&vxlan("tun_b", 8, "192.0.2.11", "198.51.100.14"))
        .await
        .unwrap();
    let names: Vec<String> = dp
        .links(&LinkFilter::prefixes(["tun_"]))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, vec!["tun_a".to_string(), "tun_b".to_string()]);
}

/// An onlink route through a tunnel reads back as given, and goes with the tunnel.
pub async fn routes_vanish_with_their_link<D: Dataplane>(dp: &D) {
    dp.ensure_tunnel(&vxlan("tun_v", 9, "192.0.2.11", "198.51.100.13"))
        .await
        .unwrap();
    let r = Route::new(net("10.94.0.0/22"))
        .via(ip("10.94.0.1"))
        .dev("tun_v")
        .onlink();
    dp.replace_route(&r).await.unwrap();
    assert_eq!(dp.routes(OM_ROUTE_PROTOCOL).await.unwrap(), vec![r.clone()]);
    dp.delete_link("tun_v").await.unwrap();
    assert_eq!(dp.routes(OM_ROUTE_PROTOCOL).await.unwrap(), vec![]);
}

/// Deleting a link that does not exist is a distinct, named error.
pub async fn delete_missing_link_is_not_found<D: Dataplane>(dp: &D) {
    let e = dp.delete_link("nope0").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(e.to_string(), "delete link nope0: not found");
}

/// Addresses carry their prefix, so the connected subnet. The namespace starts with
/// `lo` up and nothing else.
pub async fn addresses_give_connected_subnets<D: Dataplane>(dp: &D) {
    let addr = |link: &str, a: &str| InterfaceAddress {
        link: link.into(),
        address: net(a),
    };
    let lo = vec![addr("lo", "127.0.0.1/8"), addr("lo", "::1/128")];
    assert_eq!(dp.addresses().await.unwrap(), lo);
    dp.ensure_bridge(&bridge("obr_a", "10.93.0.1/24"))
        .await
        .unwrap();
    let got = dp.addresses().await.unwrap();
    let mut want = lo;
    want.push(addr("obr_a", "10.93.0.1/24"));
    assert_eq!(got, want);
    assert_eq!(got[2].network(), net("10.93.0.0/24"));
    assert!(got[2].network().contains(&ip("10.93.0.200")));
    assert!(!got[2].network().contains(&ip("10.93.1.1")));
}

/// A tunnel mode is either created as asked or refused as unsupported, leaving nothing.
/// Returns a note saying which.
pub async fn tunnel_mode_created_or_unsupported<D: Dataplane>(dp: &D, mode: TunnelMode) -> String {
    let (local, remote) = match mode {
        TunnelMode::Ip6Ip6 => ("2001:db8::11", "2001:db8::13"),
        _ => ("192.0.2.11", "198.51.100.13"),
    };
    let spec = TunnelSpec {
        name: "tun_m".into(),
        mode,
        local: ip(local),
        remote: ip(remote),
    };
    match dp.ensure_tunnel(&spec).await {
        Ok(outcome) => {
            assert_eq!(outcome, EnsureOutcome::Created);
            let got = only_link(dp, "tun_m").await;
            assert_eq!(got.kind, mode.link_kind());
            assert_eq!(got.tunnel, Some(info(&spec)));
            assert!(got.up);
            format!("tunnel mode {mode}: available, created and read back")
        }
        Err(e @ DataplaneError::Unsupported { .. }) => {
            let DataplaneError::Unsupported { kind, .. } = &e else {
                unreachable!()
            };
            assert_eq!(kind, mode.kind_name());
            assert!(e.to_string().contains("unavailable on this kernel"), "{e}");
            assert_eq!(
                dp.links(&LinkFilter::prefixes(["tun_m"])).await.unwrap(),
                vec![]
            );
            format!("tunnel mode {mode}: unavailable, reported as: {e}")
        }
        Err(e) => panic!("tunnel mode {mode}: neither created nor unsupported: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::MemoryDataplane;
    use super::*;

    #[tokio::test]
    async fn memory_dataplane_conforms_like_this_kernel() {
        let notes = run_all(|| async { (MemoryDataplane::like_this_kernel(), ()) }).await;
        assert_eq!(notes.len(), 3);
        for n in &notes {
            assert!(n.contains("unavailable"), "{n}");
        }
    }

    #[tokio::test]
    async fn memory_dataplane_conforms_with_every_module() {
        let notes = run_all(|| async { (MemoryDataplane::new(), ()) }).await;
        for n in &notes {
            assert!(n.contains("available, created"), "{n}");
        }
    }
}
