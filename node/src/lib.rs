//! `om-node`: the node daemon of OpenSVC-style cluster backend networks. It derives this
//! node's share of every backend network (bridge, routes, tunnels) from the cluster state
//! and programs it into the kernel.
//!
//! Layout:
//! - [`desired`]: the node's desired state, computed purely from the folded state.
//! - [`plan`]: `plan(desired, observed)`, pure, deletions first.
//! - [`reconcile`]: observe what the daemon owns and apply a plan, collecting every error.
//! - [`daemon`]: the loop: replay then follow, fold, reconcile, announce, report.
//! - [`sim`]: daemons on the in-memory log and dataplane (tests, convergence benchmark).
//! - [`cni`]: CNI configuration files (formats and atomic writes).
//! - [`dataplane`]: the kernel objects behind a domain trait, with an rtnetlink
//!   implementation, an in-memory fake and their shared conformance suite.

pub mod cni;
pub mod daemon;
pub mod dataplane;
pub mod desired;
pub mod instance;
pub mod ipam_proto;
pub mod ipam_server;
pub mod plan;
pub mod plugin;
pub mod reconcile;
pub mod sim;
