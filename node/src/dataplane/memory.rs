//! [`MemoryDataplane`]: an in-memory [`Dataplane`] that answers like the kernel, for tests
//! that cannot (or need not) touch a real network namespace.
//!
//! What it reproduces, because callers depend on it: `EEXIST` on a second vxlan with the
//! same VNI and port; `ENODEV` on a missing link; `ESRCH` on deleting a missing route;
//! `ENETUNREACH` on a gateway outside every connected subnet without `onlink`; `ENETDOWN`
//! on an `onlink` next hop through a link that is down; `EINVAL` on a `src` that is no
//! local address; route replace keyed on (table, destination); the kernel filling in the
//! `dev` of a route given only a gateway; routes through a link vanishing with the link;
//! and link kinds whose module is missing (`EOPNOTSUPP`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use ipnet::IpNet;

use super::error::{
    DataplaneError, EEXIST, EINVAL, ENETDOWN, ENETUNREACH, ENODEV, EOPNOTSUPP, ESRCH,
};
use super::types::{
    BridgeSpec, EnsureOutcome, InterfaceAddress, Link, LinkFilter, LinkKind, MacAddr, Route,
    TunnelInfo, TunnelMode, TunnelSpec,
};
use super::{Dataplane, Result};

/// The link kinds this repository's test machines lack (see the field notes): ipip, gre
/// and ip6tnl answer "Unknown device type" there.
pub const KINDS_MISSING_HERE: [&str; 3] = ["ipip", "gre", "ip6tnl"];

/// An in-memory network namespace.
#[derive(Debug)]
pub struct MemoryDataplane {
    /// Links, routes and the next interface index, behind one lock as the kernel's RTNL.
    state: Mutex<State>,
    /// Link kinds whose creation fails with `EOPNOTSUPP`, like a kernel without the module.
    unavailable: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct State {
    links: BTreeMap<String, Link>,
    routes: Vec<Route>,
    next_index: u32,
}

impl State {
    fn add_link(&mut self, mut link: Link) -> u32 {
        // Index 1 is `lo` in a real namespace; start after it.
        self.next_index = self.next_index.max(1) + 1;
        link.index = self.next_index;
        if link.mac.is_none() && matches!(link.kind, LinkKind::Bridge | LinkKind::Vxlan) {
            let i = link.index.to_be_bytes();
            link.mac = Some(MacAddr([0x02, 0x00, i[0], i[1], i[2], i[3]]));
        }
        let index = link.index;
        self.links.insert(link.name.clone(), link);
        index
    }

    fn remove_link(&mut self, name: &str) -> Option<Link> {
        let link = self.links.remove(name)?;
        // The kernel flushes the routes through a link that goes away.
        self.routes.retain(|r| r.dev.as_deref() != Some(name));
        Some(link)
    }

    fn is_local(&self, ip: std::net::IpAddr) -> bool {
        self.links
            .values()
            .any(|l| l.addresses.iter().any(|a| a.addr() == ip))
    }

    /// The up link whose connected subnet holds `gw` (restricted to `dev` if given).
    fn connected_dev(&self, gw: std::net::IpAddr, dev: Option<&str>) -> Option<String> {
        self.links
            .values()
            .filter(|l| l.up && dev.is_none_or(|d| d == l.name))
            .find(|l| l.addresses.iter().any(|a| a.trunc().contains(&gw)))
            .map(|l| l.name.clone())
    }
}

impl Default for MemoryDataplane {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryDataplane {
    /// A namespace with only `lo`, up (127.0.0.1/8, ::1/128), where every link kind is
    /// available: a host's namespace before the daemon's first run.
    pub fn new() -> Self {
        let mut state = State::default();
        state.links.insert(
            "lo".into(),
            Link {
                name: "lo".into(),
                index: 1,
                kind: LinkKind::Other(String::new()),
                up: true,
                mac: Some(MacAddr([0; 6])),
                addresses: vec![
                    "127.0.0.1/8".parse().expect("literal"),
                    "::1/128".parse().expect("literal"),
                ],
                tunnel: None,
            },
        );
        MemoryDataplane {
            state: Mutex::new(state),
            unavailable: BTreeSet::new(),
        }
    }

    /// [`MemoryDataplane::new`], lacking the modules this repository's machines lack
    /// ([`KINDS_MISSING_HERE`]).
    pub fn like_this_kernel() -> Self {
        Self::new().with_unavailable(KINDS_MISSING_HERE)
    }

    /// Declares link kinds (`ipip`, `gre`, `ip6tnl`, `vxlan`, `bridge`) unavailable.
    pub fn with_unavailable<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        kinds: I,
    ) -> Self {
        self.unavailable.extend(kinds.into_iter().map(Into::into));
        self
    }

    /// Adds an up interface that is not the daemon's (an underlay NIC) with `addresses`.
    pub fn with_interface(self, name: &str, addresses: &[IpNet]) -> Self {
        let mut addresses = addresses.to_vec();
        addresses.sort();
        self.lock().add_link(Link {
            name: name.to_string(),
            index: 0,
            kind: LinkKind::Other(String::new()),
            up: true,
            mac: None,
            addresses,
            tunnel: None,
        });
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map (every change is one
        // statement), so poisoning carries no information here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_available(&self, kind: &str, op: &str) -> Result<()> {
        if self.unavailable.contains(kind) {
            return Err(DataplaneError::from_errno(op, EOPNOTSUPP, Some(kind)));
        }
        Ok(())
    }
}

impl Dataplane for MemoryDataplane {
    async fn links(&self, filter: &LinkFilter) -> Result<Vec<Link>> {
        Ok(self
            .lock()
            .links
            .values()
            .filter(|l| filter.matches(&l.name))
            .cloned()
            .collect())
    }

    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<EnsureOutcome> {
        let name = spec.name.as_str();
        let mut st = self.lock();
        let mut outcome = EnsureOutcome::Unchanged;
        match st.links.get(name) {
            None => {
                self.check_available("bridge", &format!("add link {name} type bridge"))?;
                st.add_link(Link {
                    name: name.to_string(),
                    index: 0,
                    kind: LinkKind::Bridge,
                    up: false,
                    mac: None,
                    addresses: Vec::new(),
                    tunnel: None,
                });
                outcome = EnsureOutcome::Created;
            }
            Some(l) if l.kind != LinkKind::Bridge => {
                return Err(DataplaneError::Invalid {
                    op: format!("ensure bridge {name}"),
                    reason: format!("link {name} exists with kind {:?}, not bridge", l.kind),
                })
            }
            Some(_) => {}
        }
        let link = st
            .links
            .get_mut(name)
            .expect("present: checked or added above");
        if !link.addresses.contains(&spec.address) {
            link.addresses.push(spec.address);
            link.addresses.sort();
            outcome.note_change();
        }
        if let Some(mac) = spec.mac.filter(|m| link.mac != Some(*m)) {
            link.mac = Some(mac);
            outcome.note_change();
        }
        if !link.up {
            link.up = true;
            outcome.note_change();
        }
        Ok(outcome)
    }

    async fn ensure_tunnel(&self, spec: &TunnelSpec) -> Result<EnsureOutcome> {
        let name = spec.name.as_str();
        let add_op = format!(
            "add link {name} type {} local {} remote {}",
            spec.mode, spec.local, spec.remote
        );
        // Same validation as the real request builder: nothing reaches the "kernel".
        super::rtnl::build::tunnel_add(spec).map_err(|reason| DataplaneError::Invalid {
            op: add_op.clone(),
            reason,
        })?;
        let wanted = TunnelInfo {
            mode: spec.mode,
            local: Some(spec.local),
            remote: Some(spec.remote),
        };
        let mut st = self.lock();
        let mut outcome = EnsureOutcome::Created;
        if let Some(l) = st.links.get_mut(name) {
            if l.kind == spec.mode.link_kind() && l.tunnel == Some(wanted) {
                if l.up {
                    return Ok(EnsureOutcome::Unchanged);
                }
                l.up = true;
                return Ok(EnsureOutcome::Changed);
            }
            st.remove_link(name);
            outcome = EnsureOutcome::Changed;
        }
        self.check_available(spec.mode.kind_name(), &add_op)?;
        if let TunnelMode::Vxlan { vni, port } = spec.mode {
            // The kernel refuses a second vxlan device with the same VNI on the same UDP
            // port and family: received packets could not tell them apart.
            let clash = st.links.values().any(|l| {
                l.tunnel.is_some_and(|t| {
                    t.mode == spec.mode
                        && t.local.is_some_and(|a| a.is_ipv4() == spec.local.is_ipv4())
                })
            });
            if clash {
                return Err(DataplaneError::from_errno(
                    format!("{add_op}: vni {vni} port {port} already in use"),
                    EEXIST,
                    None,
                ));
            }
        }
        st.add_link(Link {
            name: name.to_string(),
            index: 0,
            kind: spec.mode.link_kind(),
            up: true,
            mac: None,
            addresses: Vec::new(),
            tunnel: Some(wanted),
        });
        Ok(outcome)
    }

    async fn delete_link(&self, name: &str) -> Result<()> {
        match self.lock().remove_link(name) {
            Some(_) => Ok(()),
            None => Err(DataplaneError::from_errno(
                format!("delete link {name}"),
                ENODEV,
                None,
            )),
        }
    }

    async fn routes(&self, protocol: u8) -> Result<Vec<Route>> {
        let mut routes: Vec<Route> = self
            .lock()
            .routes
            .iter()
            .filter(|r| r.protocol == protocol)
            .cloned()
            .collect();
        routes.sort();
        Ok(routes)
    }

    async fn replace_route(&self, route: &Route) -> Result<()> {
        let op = format!("replace route {route}");
        super::rtnl::build::route_message(route, None, false).map_err(|reason| {
            DataplaneError::Invalid {
                op: op.clone(),
                reason,
            }
        })?;
        let mut st = self.lock();
        let err = |errno| DataplaneError::from_errno(op.clone(), errno, None);
        if let Some(dev) = &route.dev {
            if !st.links.contains_key(dev) {
                return Err(DataplaneError::NotFound {
                    op: format!("{op}: interface {dev}"),
                });
            }
        }
        if let Some(src) = route.src {
            if !st.is_local(src) {
                return Err(err(EINVAL));
            }
        }
        let mut stored = route.clone();
        match (route.via, route.dev.as_deref(), route.onlink) {
            (Some(_), Some(dev), true) => {
                if !st.links[dev].up {
                    return Err(err(ENETDOWN));
                }
            }
            (Some(_), None, true) => return Err(err(EINVAL)),
            (Some(gw), dev, false) => match st.connected_dev(gw, dev) {
                Some(found) => stored.dev = Some(found),
                None => return Err(err(ENETUNREACH)),
            },
            (None, Some(_), _) => {}
            (None, None, _) => return Err(err(ENODEV)),
        }
        st.routes
            .retain(|r| !(r.table == route.table && r.dst == route.dst));
        st.routes.push(stored);
        Ok(())
    }

    async fn delete_route(&self, route: &Route) -> Result<()> {
        let mut st = self.lock();
        let pos = st.routes.iter().position(|r| {
            r.table == route.table
                && r.dst == route.dst
                && (route.protocol == 0 || r.protocol == route.protocol)
                && (route.via.is_none() || r.via == route.via)
                && (route.dev.is_none() || r.dev == route.dev)
        });
        match pos {
            Some(i) => {
                st.routes.remove(i);
                Ok(())
            }
            None => Err(DataplaneError::from_errno(
                format!("delete route {route}"),
                ESRCH,
                None,
            )),
        }
    }

    async fn addresses(&self) -> Result<Vec<InterfaceAddress>> {
        let mut out: Vec<InterfaceAddress> = self
            .lock()
            .links
            .values()
            .flat_map(|l| {
                l.addresses.iter().map(|a| InterfaceAddress {
                    link: l.name.clone(),
                    address: *a,
                })
            })
            .collect();
        out.sort();
        Ok(out)
    }
}
