//! The dataplane: the kernel objects `om-node` programs on its host (bridges, tunnels,
//! routes), behind one domain-level trait.
//!
//! The daemon computes what it wants from the cluster state and asks a [`Dataplane`] to
//! make it so. Two implementations behave the same way, which [`conformance`] checks:
//!
//! - [`RtnetlinkDataplane`]: the real kernel, over rtnetlink, in the process's own network
//!   namespace or in a named one (`/var/run/netns/NAME`);
//! - [`MemoryDataplane`]: an in-memory fake for tests without root, with the kernel's
//!   answers (`EEXIST`, `ENODEV`/`ESRCH`, replace semantics, missing modules).
//!
//! The caller chooses the implementation; nothing here picks one by itself.
//!
//! Layout:
//! - [`types`]: specs and observations (links, routes, addresses, MACs);
//! - [`error`]: [`DataplaneError`], naming the operation and its object;
//! - [`rtnl`]: the rtnetlink implementation (request builders, reply parsers, namespaces,
//!   link notifications);
//! - [`memory`]: the in-memory fake;
//! - [`conformance`]: the shared test suite.

pub mod conformance;
pub mod error;
pub mod memory;
pub mod rtnl;
pub mod types;

use std::future::Future;

pub use error::DataplaneError;
pub use memory::MemoryDataplane;
pub use rtnl::events::{LinkEvent, LinkEvents};
pub use rtnl::RtnetlinkDataplane;
pub use types::{
    BridgeSpec, EnsureOutcome, InterfaceAddress, Link, LinkFilter, LinkKind, MacAddr, Route,
    TunnelInfo, TunnelMode, TunnelSpec, MAIN_TABLE, OM_ROUTE_PROTOCOL, VXLAN_PORT,
};

/// Result of dataplane operations.
pub type Result<T> = std::result::Result<T, DataplaneError>;

/// What the daemon needs from the kernel's network stack on one host (one network
/// namespace). Each method names the `ip` command it is equivalent to.
///
/// Methods take `&self` and may run concurrently; the kernel serialises the changes.
pub trait Dataplane: Send + Sync {
    /// Links selected by `filter`, with kind, admin state, MAC, addresses and tunnel
    /// endpoints, sorted by name.
    ///
    /// `ip -d addr show` (all links), keeping names that match the filter.
    fn links(&self, filter: &LinkFilter) -> impl Future<Output = Result<Vec<Link>>> + Send;

    /// Makes the bridge exist, carry `spec.address`, have `spec.mac`, and be up. Other
    /// addresses on the bridge are left in place. Fails if a link of that name exists and
    /// is not a bridge.
    ///
    /// `ip link add NAME type bridge` (if absent);
    /// `ip addr add ADDR/PLEN dev NAME` (if that exact address is absent);
    /// `ip link set dev NAME address MAC` (if different);
    /// `ip link set dev NAME up` (if down).
    fn ensure_bridge(
        &self,
        spec: &BridgeSpec,
    ) -> impl Future<Output = Result<EnsureOutcome>> + Send;

    /// Makes the tunnel exist with this mode and these endpoints, and be up. A link of that
    /// name with another kind, mode, VNI, port or endpoints is deleted and recreated.
    ///
    /// `ip link add NAME type ipip|gre local L remote R`,
    /// `ip link add NAME type ip6tnl mode ip6ip6 local L remote R`,
    /// `ip link add NAME type vxlan id VNI dstport PORT local L remote R`
    /// (after `ip link del NAME` on mismatch); then `ip link set dev NAME up`.
    ///
    /// A kernel without the module gives [`DataplaneError::Unsupported`]. Recreating a
    /// tunnel drops every route through it (the kernel flushes a deleted link's routes),
    /// so callers replace their routes after `Created` or `Changed`. Two vxlan links with
    /// the same VNI and port are refused ([`DataplaneError::AlreadyExists`]): use one VNI
    /// per peer pair.
    fn ensure_tunnel(
        &self,
        spec: &TunnelSpec,
    ) -> impl Future<Output = Result<EnsureOutcome>> + Send;

    /// Deletes a link; [`DataplaneError::NotFound`] if there is none of that name.
    ///
    /// `ip link del NAME`.
    fn delete_link(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Routes with route protocol `protocol` in every table, both families, sorted.
    ///
    /// `ip route show table all proto PROTO` + `ip -6 route show table all proto PROTO`.
    fn routes(&self, protocol: u8) -> impl Future<Output = Result<Vec<Route>>> + Send;

    /// Adds the route, or replaces the route with the same destination in the same table.
    /// A route without `via` gets scope link, as `ip route` gives it.
    ///
    /// `ip route replace DST [via GW] [dev DEV] [src SRC] [onlink] table T proto P`.
    fn replace_route(&self, route: &Route) -> impl Future<Output = Result<()>> + Send;

    /// Deletes the route with this destination and table (and `via`/`dev` if given);
    /// [`DataplaneError::NotFound`] if there is none.
    ///
    /// `ip route del DST [via GW] [dev DEV] table T proto P`.
    fn delete_route(&self, route: &Route) -> impl Future<Output = Result<()>> + Send;

    /// Every address on every link with its prefix (so its connected subnet), IPv6
    /// link-local ones excepted, sorted.
    ///
    /// `ip -o addr show`.
    fn addresses(&self) -> impl Future<Output = Result<Vec<InterfaceAddress>>> + Send;
}
