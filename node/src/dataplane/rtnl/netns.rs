//! Opening a netlink socket inside a named network namespace.
//!
//! A netlink socket talks to the namespace it was created in, for its whole life. To
//! program another namespace the socket is created on a dedicated OS thread that has
//! first entered that namespace with `setns(2)`; the thread then ends, and the socket is
//! driven from the tokio runtime like any other. `setns` changes the namespace of the
//! calling thread only, which is why it must never run on a tokio worker: every task
//! later scheduled there would silently act on the other namespace.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use nix::sched::{setns, CloneFlags};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket};

/// Where `ip netns add NAME` bind-mounts a namespace.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// The path of the named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_RUN_DIR).join(name)
}

/// Creates a `NETLINK_ROUTE` socket inside namespace `name`, from a thread of its own.
pub async fn route_socket_in(name: &str) -> io::Result<Socket> {
    let path = netns_path(name);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || {
            let _ = tx.send(socket_after_setns(&path));
        })?;
    rx.await
        .map_err(|_| io::Error::other("netns thread ended without an answer"))?
}

fn socket_after_setns(path: &PathBuf) -> io::Result<Socket> {
    let ns = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::other(format!("setns {}: {e}", path.display())))?;
    Socket::new(NETLINK_ROUTE)
}
