//! The domain of OpenSVC cluster backend networks, as events.
//!
//! Every keyword change, segment assignment, node announcement and IP allocation is an
//! immutable [`Event`] in an [`Envelope`]; the cluster state is the pure [`fold`] of the
//! stream; commands are pure [`decide`] functions from the state to new events. Nothing in
//! the domain modules does I/O: the event log is a port ([`log::EventLog`]) with an
//! in-memory implementation and, behind the `jetstream` feature, the NATS JetStream one.
//!
//! Layout:
//! - [`subjects`]: stream and subject names for a cluster.
//! - [`envelope`]: the envelope, the CBOR codec, schema versions and unknown-kind skipping.
//! - [`event`]: the event kinds and their payloads.
//! - [`keyword`]: keyword syntax (`K=V`, `K+=V`, `K-=V`, `K@node`) and the catalogue.
//! - [`config`]: cluster and node configuration layers, merged and scoped lookups.
//! - [`network`]: the networks a view (cluster or node) derives from the configuration.
//! - [`object`]: service objects, their ip resources, `expose` values and decisions.
//! - [`ipam`]: address allocation decisions in a node's segment.
//! - [`segment`]: CIDR and segment arithmetic (IPv4 and IPv6, on `u128`).
//! - [`snapshot`]: folded states saved with their sequence and schema.
//! - [`state`]: the fold of events into the cluster state.
//! - [`validate`]: keyword values and whole-configuration checks.
//! - [`decide`]: the decisions that turn a command into changes.
//! - [`view`]: read views (network status, leases) computed from the state.
//! - [`query`]: the queries the projector answers, as pure functions of the state.
//! - [`timefmt`]: RFC 3339 formatting and parsing of millisecond timestamps.
//! - [`log`]: the event-log port, the in-memory log and the command runner with retries.
//! - `jetstream` (feature): the JetStream event log.

pub mod config;
pub mod decide;
pub mod envelope;
pub mod event;
pub mod ipam;
pub mod keyword;
pub mod log;
pub mod network;
pub mod object;
pub mod query;
pub mod segment;
pub mod snapshot;
pub mod state;
pub mod subjects;
pub mod timefmt;
pub mod validate;
pub mod view;

#[cfg(feature = "jetstream")]
pub mod jetstream;

pub use envelope::{Decoded, Envelope, SCHEMA_VERSION};
pub use event::Event;
pub use state::State;
