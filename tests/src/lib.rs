//! `om-tests`: harnesses for tests against real things (servers, kernels).
//!
//! Layout:
//! - [`bins`]: the project's binaries run as a user would (`om`, `om-projector`).
//! - [`nats`]: real `nats-server`s with JetStream (one, in a container or a process; or a
//!   cluster of three), on dynamic loopback ports.
//! - [`netns`]: network-namespace test beds (hosts, router, CNI containers, ping).
//! - [`nodebed`]: real `om-node`s, `nats-server` and `om` on the namespace test bed.
//! - [`skip`]: honest skips, counted by the test command.

pub mod bins;
pub mod nats;
pub mod netns;
pub mod nodebed;
pub mod skip;
