//! [`RtnetlinkDataplane`]: the [`Dataplane`] on the real kernel, over rtnetlink.
//!
//! Layout: [`build`] makes the requests (pure), [`parse`] reads the replies (pure),
//! [`netns`] opens sockets inside named namespaces, [`events`] reads link notifications;
//! this file executes.

pub(crate) mod build;
pub mod events;
pub mod netns;
pub(crate) mod parse;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::sys::{Socket, TokioSocket};
use rtnetlink::Handle;
use tracing::{debug, info, instrument};

use super::error::{DataplaneError, ENODEV};
use super::types::{
    BridgeSpec, EnsureOutcome, InterfaceAddress, Link, LinkFilter, LinkKind, Route, TunnelInfo,
    TunnelSpec,
};
use super::{Dataplane, Result};

/// The kernel's dataplane in one network namespace.
///
/// Dropping it stops its netlink connection.
#[derive(Debug)]
pub struct RtnetlinkDataplane {
    /// Sends requests to the connection task.
    handle: Handle,
    /// The namespace name, for messages; `None` for the process's own.
    netns: Option<String>,
    /// The task that drives the socket; aborted on drop so no task outlives us.
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for RtnetlinkDataplane {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl RtnetlinkDataplane {
    /// The dataplane of the process's own network namespace. Needs a tokio runtime.
    pub async fn current() -> Result<Self> {
        let socket = open_socket(None).await?;
        Self::from_socket(socket, None)
    }

    /// The dataplane of the named namespace `/var/run/netns/NAME` (`ip netns add NAME`).
    /// The socket is created on a thread of its own (see [`netns`]); the calling task and
    /// the runtime's threads stay in their namespace.
    pub async fn in_netns(name: &str) -> Result<Self> {
        let socket = open_socket(Some(name)).await?;
        Self::from_socket(socket, Some(name.to_string()))
    }

    /// The namespace this dataplane programs, `None` for the process's own.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    fn from_socket(socket: Socket, netns: Option<String>) -> Result<Self> {
        let (connection, handle, _unsolicited) = rtnetlink::from_socket(tokio_socket(socket)?);
        let connection = tokio::spawn(connection);
        Ok(RtnetlinkDataplane {
            handle,
            netns,
            connection,
        })
    }

    /// Subscribes to link notifications in this dataplane's namespace
    /// (`ip monitor link`): creations, state changes, deletions. Events start from the
    /// subscription on; read the current state with [`Dataplane::links`] after
    /// subscribing so nothing falls between the two.
    pub async fn link_events(&self) -> Result<events::LinkEvents> {
        let mut socket = open_socket(self.netns.as_deref()).await?;
        socket
            .bind(&rtnetlink::sys::SocketAddr::new(0, events::LINK_GROUPS))
            .map_err(|e| DataplaneError::Connection {
                op: "join netlink group RTNLGRP_LINK".into(),
                source: e,
            })?;
        let (connection, _handle, messages) = rtnetlink::from_socket(tokio_socket(socket)?);
        Ok(events::LinkEvents::new(messages, tokio::spawn(connection)))
    }

    /// Every link, with addresses, sorted by name (`ip -d addr show`).
    async fn all_links(&self) -> Result<Vec<Link>> {
        let op = || "list links".to_string();
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(op(), None, e))?;
        let mut links: Vec<Link> = msgs.iter().filter_map(parse::link).collect();
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("list addresses".into(), None, e))?;
        let mut by_index: HashMap<u32, Vec<ipnet::IpNet>> = HashMap::new();
        for (index, net) in addrs.iter().filter_map(parse::address) {
            by_index.entry(index).or_default().push(net);
        }
        for link in &mut links {
            let mut a = by_index.remove(&link.index).unwrap_or_default();
            a.sort();
            link.addresses = a;
        }
        links.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(links)
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        // A dump rather than a get-by-name: one code path for attributes and addresses.
        Ok(self.all_links().await?.into_iter().find(|l| l.name == name))
    }

    async fn link_index(&self, name: &str, op: &str) -> Result<u32> {
        match self.link_by_name(name).await? {
            Some(l) => Ok(l.index),
            None => Err(DataplaneError::NotFound {
                op: format!("{op}: interface {name}"),
            }),
        }
    }

    async fn link_names(&self) -> Result<HashMap<u32, String>> {
        Ok(self
            .all_links()
            .await?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect())
    }

    async fn add_link(&self, msg: LinkMessage, op: String, kind: &str) -> Result<()> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| nl_err(op, Some(kind), e))
    }

    async fn set_link(&self, msg: LinkMessage, op: String) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| nl_err(op, None, e))
    }

    async fn created(&self, name: &str, op: &str) -> Result<Link> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| DataplaneError::Protocol {
                op: op.to_string(),
                detail: format!("link {name} absent right after its creation"),
            })
    }
}

/// A `NETLINK_ROUTE` socket in namespace `netns` (`None`: the process's own).
async fn open_socket(netns: Option<&str>) -> Result<Socket> {
    let opened = match netns {
        Some(name) => netns::route_socket_in(name).await,
        None => Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE),
    };
    opened.map_err(|e| DataplaneError::Connection {
        op: match netns {
            Some(name) => format!("open netlink socket in netns {name}"),
            None => "open netlink socket".into(),
        },
        source: e,
    })
}

/// Registers a socket with the current runtime's reactor.
fn tokio_socket(socket: Socket) -> Result<TokioSocket> {
    socket
        .set_non_blocking(true)
        .map_err(|e| DataplaneError::Connection {
            op: "set netlink socket non-blocking".into(),
            source: e,
        })?;
    // SAFETY: the descriptor comes straight from `into_raw_fd`, so it is open and owned by
    // nobody else. `from_raw_fd` registers it with the current runtime's reactor.
    Ok(unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) })
}

/// Classifies an rtnetlink error for operation `op` (`kind`: the link kind being created).
fn nl_err(op: String, kind: Option<&str>, e: rtnetlink::Error) -> DataplaneError {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            DataplaneError::from_errno(op, m.raw_code().abs(), kind)
        }
        rtnetlink::Error::RequestFailed => DataplaneError::Connection {
            op,
            source: std::io::Error::other("netlink connection closed"),
        },
        other => DataplaneError::Protocol {
            op,
            detail: other.to_string(),
        },
    }
}

impl Dataplane for RtnetlinkDataplane {
    async fn links(&self, filter: &LinkFilter) -> Result<Vec<Link>> {
        let mut links = self.all_links().await?;
        links.retain(|l| filter.matches(&l.name));
        Ok(links)
    }

    #[instrument(skip(self), fields(netns = ?self.netns), err)]
    async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<EnsureOutcome> {
        let name = spec.name.as_str();
        let (link, mut outcome) = match self.link_by_name(name).await? {
            None => {
                let op = format!("add link {name} type bridge");
                self.add_link(build::bridge_add(name), op.clone(), "bridge")
                    .await?;
                info!(bridge = name, "added bridge link");
                (self.created(name, &op).await?, EnsureOutcome::Created)
            }
            Some(l) if l.kind != LinkKind::Bridge => {
                return Err(DataplaneError::Invalid {
                    op: format!("ensure bridge {name}"),
                    reason: format!("link {name} exists with kind {:?}, not bridge", l.kind),
                })
            }
            Some(l) => (l, EnsureOutcome::Unchanged),
        };
        if !link.addresses.contains(&spec.address) {
            let op = format!("add address {} dev {name}", spec.address);
            self.handle
                .address()
                .add(link.index, spec.address.addr(), spec.address.prefix_len())
                .execute()
                .await
                .map_err(|e| nl_err(op, None, e))?;
            info!(bridge = name, address = %spec.address, "added bridge address");
            outcome.note_change();
        }
        if let Some(mac) = spec.mac.filter(|m| link.mac != Some(*m)) {
            let op = format!("set link {name} address {mac}");
            self.set_link(build::link_set_mac(link.index, mac), op)
                .await?;
            info!(bridge = name, %mac, "set bridge mac");
            outcome.note_change();
        }
        if !link.up {
            self.set_link(build::link_up(link.index), format!("set link {name} up"))
                .await?;
            outcome.note_change();
        }
        debug!(bridge = name, ?outcome, "bridge ensured");
        Ok(outcome)
    }

    #[instrument(skip(self), fields(netns = ?self.netns), err)]
    async fn ensure_tunnel(&self, spec: &TunnelSpec) -> Result<EnsureOutcome> {
        let name = spec.name.as_str();
        let kind = spec.mode.kind_name();
        let add_op = format!(
            "add link {name} type {} local {} remote {}",
            spec.mode, spec.local, spec.remote
        );
        let msg = build::tunnel_add(spec).map_err(|reason| DataplaneError::Invalid {
            op: add_op.clone(),
            reason,
        })?;
        let wanted = TunnelInfo {
            mode: spec.mode,
            local: Some(spec.local),
            remote: Some(spec.remote),
        };
        let mut outcome = EnsureOutcome::Created;
        if let Some(l) = self.link_by_name(name).await? {
            if l.kind == spec.mode.link_kind() && l.tunnel == Some(wanted) {
                if l.up {
                    return Ok(EnsureOutcome::Unchanged);
                }
                self.set_link(build::link_up(l.index), format!("set link {name} up"))
                    .await?;
                return Ok(EnsureOutcome::Changed);
            }
            info!(tunnel = name, have = ?l.tunnel, kind = ?l.kind, "tunnel differs, recreating");
            self.handle
                .link()
                .del(l.index)
                .execute()
                .await
                .map_err(|e| nl_err(format!("delete link {name}"), None, e))?;
            outcome = EnsureOutcome::Changed;
        }
        self.add_link(msg, add_op.clone(), kind).await?;
        info!(tunnel = name, mode = %spec.mode, local = %spec.local, remote = %spec.remote, "added tunnel link");
        let link = self.created(name, &add_op).await?;
        self.set_link(build::link_up(link.index), format!("set link {name} up"))
            .await?;
        Ok(outcome)
    }

    #[instrument(skip(self), fields(netns = ?self.netns), err)]
    async fn delete_link(&self, name: &str) -> Result<()> {
        let op = format!("delete link {name}");
        let index = match self.link_by_name(name).await? {
            Some(l) => l.index,
            None => return Err(DataplaneError::from_errno(op, ENODEV, None)),
        };
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| nl_err(op, None, e))?;
        info!(link = name, "deleted link");
        Ok(())
    }

    async fn routes(&self, protocol: u8) -> Result<Vec<Route>> {
        let names = self.link_names().await?;
        // An unspecified family dumps every family; without strict checking the kernel
        // ignores the header's table, so every table comes back.
        let query = rtnetlink::RouteMessageBuilder::<std::net::IpAddr>::new().build();
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err("list routes".into(), None, e))?;
        let mut routes: Vec<Route> = msgs
            .iter()
            .filter(|m| u8::from(m.header.protocol) == protocol)
            .filter_map(|m| parse::route(m, &names))
            .collect();
        routes.sort();
        Ok(routes)
    }

    #[instrument(skip(self), fields(netns = ?self.netns, route = %route), err)]
    async fn replace_route(&self, route: &Route) -> Result<()> {
        let op = format!("replace route {route}");
        let oif = match &route.dev {
            Some(dev) => Some(self.link_index(dev, &op).await?),
            None => None,
        };
        let msg =
            build::route_message(route, oif, false).map_err(|reason| DataplaneError::Invalid {
                op: op.clone(),
                reason,
            })?;
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(op, None, e))?;
        info!(%route, "replaced route");
        Ok(())
    }

    #[instrument(skip(self), fields(netns = ?self.netns, route = %route), err)]
    async fn delete_route(&self, route: &Route) -> Result<()> {
        let op = format!("delete route {route}");
        let oif = match &route.dev {
            Some(dev) => Some(self.link_index(dev, &op).await?),
            None => None,
        };
        let msg =
            build::route_message(route, oif, true).map_err(|reason| DataplaneError::Invalid {
                op: op.clone(),
                reason,
            })?;
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(|e| nl_err(op, None, e))?;
        info!(%route, "deleted route");
        Ok(())
    }

    async fn addresses(&self) -> Result<Vec<InterfaceAddress>> {
        let mut out: Vec<InterfaceAddress> = self
            .all_links()
            .await?
            .into_iter()
            .flat_map(|l| {
                let name = l.name;
                l.addresses
                    .into_iter()
                    .map(move |address| InterfaceAddress {
                        link: name.clone(),
                        address,
                    })
            })
            .collect();
        out.sort();
        Ok(out)
    }
}
