//! `plan(desired, observed)`: the operations that make the node match its desired state,
//! deletions first. Pure. Only what the daemon owns is observed and touched: routes of the
//! project's route protocol, links named with an owned prefix (`obr_`, `tun`), and CNI
//! files the daemon wrote (its manifest).

use crate::dataplane::{BridgeSpec, Link, LinkKind, Route, TunnelSpec};
use crate::desired::Desired;
use std::collections::BTreeMap;
use std::fmt;

/// Link name prefixes the daemon owns: anything else is never deleted.
pub const OWNED_PREFIXES: [&str; 2] = ["obr_", "tun"];

/// What the daemon currently finds on the node.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Owned links and the desired bridges' links (a `dev` bridge may be the user's).
    pub links: Vec<Link>,
    /// Routes of the project's route protocol.
    pub routes: Vec<Route>,
    /// Owned CNI files present in the CNI directory: name ⇒ content.
    pub cni_files: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DeleteRoute(Route),
    DeleteLink(String),
    RemoveCni(String),
    EnsureBridge(BridgeSpec),
    EnsureTunnel(TunnelSpec),
    ReplaceRoute(Route),
    WriteCni { name: String, content: String },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::DeleteRoute(r) => write!(f, "delete route {r}"),
            Op::DeleteLink(n) => write!(f, "delete link {n}"),
            Op::RemoveCni(n) => write!(f, "remove cni config {n}"),
            Op::EnsureBridge(b) => {
                write!(f, "ensure bridge {} {}", b.name, b.address)?;
                if let Some(m) = b.mac {
                    write!(f, " mac {m}")?;
                }
                Ok(())
            }
            Op::EnsureTunnel(t) => write!(
                f,
                "ensure tunnel {} {} local {} remote {}",
                t.name, t.mode, t.local, t.remote
            ),
            Op::ReplaceRoute(r) => write!(f, "replace route {r}"),
            Op::WriteCni { name, .. } => write!(f, "write cni config {name}"),
        }
    }
}

/// Does an observed route satisfy a wanted one? The kernel fills in what we leave out (the
/// device of a `via` route, a `src`), so only what we ask for is compared.
pub fn route_matches(want: &Route, got: &Route) -> bool {
    want.dst == got.dst
        && want.table == got.table
        && want.via == got.via
        && want.onlink == got.onlink
        && want
            .dev
            .as_ref()
            .is_none_or(|d| got.dev.as_ref() == Some(d))
        && want.src.is_none_or(|s| got.src == Some(s))
}

fn bridge_ok(want: &BridgeSpec, got: Option<&Link>) -> bool {
    got.is_some_and(|l| {
        l.kind == LinkKind::Bridge
            && l.up
            && l.addresses.contains(&want.address)
            && want.mac.is_none_or(|m| l.mac == Some(m))
    })
}

fn tunnel_ok(want: &TunnelSpec, got: Option<&Link>) -> bool {
    got.is_some_and(|l| {
        l.up && l.kind == want.mode.link_kind()
            && l.tunnel.is_some_and(|t| {
                t.mode == want.mode && t.local == Some(want.local) && t.remote == Some(want.remote)
            })
    })
}

pub fn owned_link(name: &str) -> bool {
    OWNED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The operations, deletions first.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    for r in &observed.routes {
        if !desired.routes.iter().any(|w| route_matches(w, r)) {
            ops.push(Op::DeleteRoute(r.clone()));
        }
    }
    let wanted_links: Vec<&str> = desired
        .bridges
        .iter()
        .map(|b| b.name.as_str())
        .chain(desired.tunnels.iter().map(|t| t.name.as_str()))
        .collect();
    for l in &observed.links {
        if owned_link(&l.name) && !wanted_links.contains(&l.name.as_str()) {
            ops.push(Op::DeleteLink(l.name.clone()));
        }
    }
    for name in observed.cni_files.keys() {
        if !desired.cni_files.contains_key(name) {
            ops.push(Op::RemoveCni(name.clone()));
        }
    }
    let link = |n: &str| observed.links.iter().find(|l| l.name == n);
    for b in &desired.bridges {
        if !bridge_ok(b, link(&b.name)) {
            ops.push(Op::EnsureBridge(b.clone()));
        }
    }
    for t in &desired.tunnels {
        if !tunnel_ok(t, link(&t.name)) {
            ops.push(Op::EnsureTunnel(t.clone()));
        }
    }
    // The kernel flushes the routes through a link it deletes: a link about to be
    // (re)created gets its routes again even if they are there now.
    let ensured: Vec<String> = ops
        .iter()
        .filter_map(|o| match o {
            Op::EnsureTunnel(t) => Some(t.name.clone()),
            Op::EnsureBridge(b) => Some(b.name.clone()),
            _ => None,
        })
        .collect();
    for r in &desired.routes {
        let through_ensured = r.dev.as_ref().is_some_and(|d| ensured.contains(d));
        if through_ensured || !observed.routes.iter().any(|g| route_matches(r, g)) {
            ops.push(Op::ReplaceRoute(r.clone()));
        }
    }
    for (name, content) in &desired.cni_files {
        if observed.cni_files.get(name) != Some(content) {
            ops.push(Op::WriteCni {
                name: name.clone(),
                content: content.clone(),
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{MacAddr, TunnelInfo, TunnelMode};

    fn desired() -> Desired {
        let mut d = Desired {
            bridges: vec![BridgeSpec {
                name: "obr_b".into(),
                address: "10.11.0.1/22".parse().unwrap(),
                mac: Some(MacAddr::for_bridge_ipv4("10.11.0.1".parse().unwrap())),
            }],
            tunnels: vec![TunnelSpec {
                name: "tunc633640d".into(),
                mode: TunnelMode::IpIp,
                local: "192.0.2.11".parse().unwrap(),
                remote: "198.51.100.13".parse().unwrap(),
            }],
            ..Default::default()
        };
        d.routes
            .insert(Route::new("10.11.4.0/22".parse().unwrap()).via("192.0.2.12".parse().unwrap()));
        d.cni_files.insert("b.conf".into(), "{}".into());
        d
    }

    fn in_sync(d: &Desired) -> Observed {
        let b = &d.bridges[0];
        let t = &d.tunnels[0];
        Observed {
            links: vec![
                Link {
                    name: b.name.clone(),
                    index: 3,
                    kind: LinkKind::Bridge,
                    up: true,
                    mac: b.mac,
                    addresses: vec![b.address],
                    tunnel: None,
                },
                Link {
                    name: t.name.clone(),
                    index: 4,
                    kind: LinkKind::IpIp,
                    up: true,
                    mac: None,
                    addresses: vec![],
                    tunnel: Some(TunnelInfo {
                        mode: t.mode,
                        local: Some(t.local),
                        remote: Some(t.remote),
                    }),
                },
            ],
            // The kernel reports the device of a via route.
            routes: vec![Route::new("10.11.4.0/22".parse().unwrap())
                .via("192.0.2.12".parse().unwrap())
                .dev("eth0")],
            cni_files: [("b.conf".to_string(), "{}".to_string())].into(),
        }
    }

    #[test]
    fn nothing_to_do_when_in_sync() {
        let d = desired();
        assert_eq!(plan(&d, &in_sync(&d)), vec![]);
    }

    #[test]
    fn from_scratch_everything_is_created_in_order() {
        let d = desired();
        let ops: Vec<String> = plan(&d, &Observed::default())
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(
            ops,
            vec![
                "ensure bridge obr_b 10.11.0.1/22 mac 0a:58:0a:0b:00:01",
                "ensure tunnel tunc633640d ipip local 192.0.2.11 remote 198.51.100.13",
                "replace route 10.11.4.0/22 via 192.0.2.12 table 254",
                "write cni config b.conf",
            ]
        );
    }

    #[test]
    fn stale_objects_are_deleted_first_and_foreign_ones_never() {
        let d = desired();
        let mut o = in_sync(&d);
        o.routes
            .push(Route::new("10.11.8.0/22".parse().unwrap()).via("192.0.2.13".parse().unwrap()));
        o.links.push(Link {
            name: "tun0a0b0c0d".into(),
            index: 9,
            kind: LinkKind::IpIp,
            up: true,
            mac: None,
            addresses: vec![],
            tunnel: None,
        });
        o.links.push(Link {
            name: "eth0".into(),
            index: 2,
            kind: LinkKind::Other(String::new()),
            up: true,
            mac: None,
            addresses: vec![],
            tunnel: None,
        });
        o.links[0].up = false;
        o.links[1].tunnel = None;
        o.cni_files.insert("old.conf".into(), "{}".into());
        let ops: Vec<String> = plan(&d, &o).iter().map(|o| o.to_string()).collect();
        assert_eq!(
            ops,
            vec![
                "delete route 10.11.8.0/22 via 192.0.2.13 table 254",
                "delete link tun0a0b0c0d",
                "remove cni config old.conf",
                "ensure bridge obr_b 10.11.0.1/22 mac 0a:58:0a:0b:00:01",
                "ensure tunnel tunc633640d ipip local 192.0.2.11 remote 198.51.100.13",
            ]
        );
    }

    #[test]
    fn routes_through_a_recreated_tunnel_are_replaced() {
        let mut d = desired();
        let r = Route::new("10.11.8.0/22".parse().unwrap())
            .dev("tunc633640d")
            .src("10.11.0.1".parse().unwrap());
        d.routes.insert(r.clone());
        let mut o = in_sync(&d);
        o.routes.push(r.clone());
        assert_eq!(plan(&d, &o), vec![]);
        o.links[1].tunnel.as_mut().unwrap().remote = Some("198.51.100.99".parse().unwrap());
        assert_eq!(
            plan(&d, &o),
            vec![Op::EnsureTunnel(d.tunnels[0].clone()), Op::ReplaceRoute(r)]
        );
    }
}
