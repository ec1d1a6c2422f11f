//! Link notifications (`ip monitor link`): a netlink socket subscribed to the kernel's
//! `RTNLGRP_LINK` multicast group, in the dataplane's namespace.

use futures::channel::mpsc::UnboundedReceiver;
use futures::StreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::SocketAddr;

use super::super::types::Link;

/// A change of a link, as the kernel announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link was created or changed (state, address, master...). Addresses are not part
    /// of link notifications, so `addresses` is empty.
    Changed(Link),
    /// A link was deleted.
    Removed {
        /// Its name.
        name: String,
        /// Its former index.
        index: u32,
    },
}

/// `RTNLGRP_LINK` as a bind mask (group 1 is bit 0).
pub(crate) const LINK_GROUPS: u32 = 1;

/// A subscription to link events; dropping it closes the socket.
#[derive(Debug)]
pub struct LinkEvents {
    /// Notifications from the connection task.
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    /// Drives the socket; aborted on drop.
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for LinkEvents {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl LinkEvents {
    pub(crate) fn new(
        messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
        connection: tokio::task::JoinHandle<()>,
    ) -> Self {
        LinkEvents {
            messages,
            connection,
        }
    }

    /// The next link event; `None` once the socket is closed.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        while let Some((msg, _)) = self.messages.next().await {
            let NetlinkPayload::InnerMessage(inner) = msg.payload else {
                continue;
            };
            match inner {
                RouteNetlinkMessage::NewLink(m) => {
                    if let Some(link) = super::parse::link(&m) {
                        return Some(LinkEvent::Changed(link));
                    }
                }
                RouteNetlinkMessage::DelLink(m) => {
                    if let Some(link) = super::parse::link(&m) {
                        return Some(LinkEvent::Removed {
                            name: link.name,
                            index: link.index,
                        });
                    }
                }
                _ => {}
            }
        }
        None
    }
}
