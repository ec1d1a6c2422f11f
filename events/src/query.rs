//! Queries that the projector answers (and that the CLI answers itself when no projector
//! does), as pure functions of the state. Requests and answers travel as CBOR on
//! `om.<cluster>.q.view`. Enums are externally tagged: an internally tagged enum goes
//! through serde's buffered content, which reads IP networks as if human readable and fails.

use crate::config::Config;
use crate::decide;
use crate::state::State;
use crate::view::{self, IpRow, NetworkStatus};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Answer only once the state includes this stream sequence (read-your-writes); the
    /// projector waits a bounded time, then answers with `stale = true`.
    pub min_seq: u64,
    pub query: Query,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// Network status of the cluster view (`node = None`) or of one node's view.
    Status {
        node: Option<String>,
        name: Option<String>,
    },
    /// `om cluster get` / `om node get`.
    Get { node: Option<String>, key: String },
    /// The ini text of the cluster layer or of one node's layer.
    Config { node: Option<String> },
    /// Every lease, optionally of one network.
    Ips { name: Option<String> },
    /// The whole folded state, for writers to start from instead of replaying.
    State,
    /// Service objects (all, or the one at `path`).
    Objects { path: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Status { networks: Vec<NetworkStatus> },
    Value { value: Option<String> },
    Config { text: String },
    Ips { ips: Vec<IpRow> },
    State { state: Box<State> },
    Objects { objects: Vec<view::ObjectView> },
    Error { message: String },
}

/// A reply: the answer and the stream sequence it reflects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub seq: u64,
    pub stale: bool,
    pub answer: Answer,
}

/// Answers a query from a state.
pub fn answer(state: &State, q: &Query) -> Answer {
    match q {
        Query::Status { node, name } => Answer::Status {
            networks: view::status(state, node.as_deref(), name.as_deref()),
        },
        Query::Get { node, key } => match decide::get(state, node.as_deref(), key) {
            Ok(value) => Answer::Value { value },
            Err(message) => Answer::Error { message },
        },
        Query::Config { node } => Answer::Config {
            text: state
                .config
                .layer(node.as_deref())
                .map(Config::render_ini)
                .unwrap_or_default(),
        },
        Query::Ips { name } => Answer::Ips {
            ips: view::leases(state, name.as_deref()),
        },
        Query::State => Answer::State {
            state: Box::new(state.clone()),
        },
        Query::Objects { path } => Answer::Objects {
            objects: view::objects(state, path.as_deref()),
        },
    }
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    let mut r = bytes;
    let v = ciborium::from_reader(&mut r).map_err(|e| e.to_string())?;
    if !r.is_empty() {
        return Err(format!("{} trailing byte(s)", r.len()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ConfigChanged, Event};

    #[test]
    fn state_round_trips_through_cbor() {
        let mut s = State::default();
        let cmd = decide::Command::Set {
            node: None,
            ops: decide::parse_set(&[
                "cluster.nodes=n1 n2".into(),
                "network#b.type=routed_bridge".into(),
                "network#b.network=10.11.0.0/16".into(),
            ])
            .unwrap(),
        };
        let changes = decide::decide(&s, &cmd).unwrap();
        s.apply(1, 5, &Event::ConfigChanged(ConfigChanged { changes }));
        s.observe(1, "om.c.ev.config");
        let reply = Reply {
            seq: 1,
            stale: false,
            answer: answer(&s, &Query::State),
        };
        let back: Reply = decode(&encode(&reply)).unwrap();
        assert_eq!(back, reply);
        let Answer::Value { value } = answer(
            &s,
            &Query::Get {
                node: None,
                key: "network#b.subnet@n2".into(),
            },
        ) else {
            panic!()
        };
        assert_eq!(value.as_deref(), Some("10.11.4.0/22"));
    }
}
