//! The envelope around every event, and its CBOR codec.
//!
//! Wire form: a CBOR map `{v, id, t, actor, cluster, kind, data}`. Decoding is in two steps so
//! that a reader meets unknown kinds and newer schemas gracefully: the envelope is read with
//! `data` as an opaque CBOR value, then `data` is read as the payload of `kind`. A reader skips
//! (never crashes on) an unknown kind or a schema newer than [`SCHEMA_VERSION`]; older schemas
//! are upcast. Trailing bytes after the map are an error (ciborium ignores them by default).
//!
//! Schema history:
//! - v1: keyword changes were `config.set` events `{set: {key: value}, unset: [key]}`, cluster
//!   layer only.
//! - v2 (current): `config.changed` with a list of [`Change`]s carrying their layer and origin.

use crate::event::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The schema version this code writes.
pub const SCHEMA_VERSION: u32 = 2;

/// An event with its identity and provenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// UUIDv7: unique, time ordered; also the `Nats-Msg-Id` of the append.
    pub id: Uuid,
    /// Unix milliseconds when the event was decided.
    pub time_ms: u64,
    /// `user@host` for the CLI, the node name for daemons.
    pub actor: String,
    pub cluster: String,
    pub schema: u32,
    pub event: Event,
}

#[derive(Serialize, Deserialize)]
struct Wire<D> {
    v: u32,
    id: Uuid,
    t: u64,
    actor: String,
    cluster: String,
    kind: String,
    data: D,
}

/// Why a well-formed message was not turned into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    UnknownKind { kind: String, schema: u32 },
    NewerSchema { kind: String, schema: u32 },
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::UnknownKind { kind, schema } => {
                write!(f, "unknown event kind {kind:?} (schema {schema}), skipped")
            }
            Skip::NewerSchema { kind, schema } => write!(
                f,
                "event {kind:?} has schema {schema}, newer than {SCHEMA_VERSION}, skipped: upgrade this program"
            ),
        }
    }
}

/// The outcome of decoding one message. Events are the common case: not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Event(Envelope),
    Skipped(Skip),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error("malformed event: {0} trailing byte(s) after the CBOR item")]
    Trailing(usize),
    #[error("malformed {kind} event payload: {reason}")]
    Payload { kind: String, reason: String },
}

impl Envelope {
    /// A new envelope at the current schema, with a fresh UUIDv7.
    pub fn new(cluster: &str, actor: &str, time_ms: u64, event: Event) -> Self {
        Envelope {
            id: Uuid::now_v7(),
            time_ms,
            actor: actor.to_string(),
            cluster: cluster.to_string(),
            schema: SCHEMA_VERSION,
            event,
        }
    }

    /// CBOR bytes of the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            v: self.schema,
            id: self.id,
            t: self.time_ms,
            actor: self.actor.clone(),
            cluster: self.cluster.clone(),
            kind: self.event.kind().to_string(),
            data: &self.event,
        };
        let mut out = Vec::with_capacity(128);
        ciborium::into_writer(&wire, &mut out).expect("CBOR encoding into a Vec cannot fail");
        out
    }

    /// Decodes one message: an event, or a reason to skip it.
    pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
        let mut reader = bytes;
        let wire: Wire<ciborium::Value> = ciborium::from_reader(&mut reader)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if !reader.is_empty() {
            return Err(DecodeError::Trailing(reader.len()));
        }
        if wire.v > SCHEMA_VERSION {
            return Ok(Decoded::Skipped(Skip::NewerSchema {
                kind: wire.kind,
                schema: wire.v,
            }));
        }
        let payload = |e: ciborium::value::Error| DecodeError::Payload {
            kind: wire.kind.clone(),
            reason: e.to_string(),
        };
        let event = match (wire.kind.as_str(), wire.v) {
            ("config.set", 1) => upcast_v1_config_set(wire.data.deserialized().map_err(payload)?),
            ("config.changed", _) => {
                Event::ConfigChanged(wire.data.deserialized().map_err(payload)?)
            }
            ("node.announced", _) => {
                Event::NodeAnnounced(wire.data.deserialized().map_err(payload)?)
            }
            ("node.applied", _) => Event::NodeApplied(wire.data.deserialized().map_err(payload)?),
            ("ip.allocated", _) => Event::IpAllocated(wire.data.deserialized().map_err(payload)?),
            ("ip.released", _) => Event::IpReleased(wire.data.deserialized().map_err(payload)?),
            ("object.changed", _) => {
                Event::ObjectChanged(wire.data.deserialized().map_err(payload)?)
            }
            ("object.target", _) => Event::ObjectTarget(wire.data.deserialized().map_err(payload)?),
            ("instance.status", _) => {
                Event::InstanceStatus(wire.data.deserialized().map_err(payload)?)
            }
            _ => {
                return Ok(Decoded::Skipped(Skip::UnknownKind {
                    kind: wire.kind,
                    schema: wire.v,
                }))
            }
        };
        Ok(Decoded::Event(Envelope {
            id: wire.id,
            time_ms: wire.t,
            actor: wire.actor,
            cluster: wire.cluster,
            schema: wire.v,
            event,
        }))
    }
}

/// Schema v1 payload of `config.set`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConfigSetV1 {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub unset: Vec<String>,
}

/// v1 `config.set` ⇒ v2 `config.changed` in the cluster layer, sets before unsets, keys in
/// order (v1 maps were written sorted).
fn upcast_v1_config_set(v1: ConfigSetV1) -> Event {
    let mut changes: Vec<Change> = v1
        .set
        .into_iter()
        .map(|(key, value)| Change {
            node: None,
            key,
            value: Some(value),
            origin: Origin::Operator,
        })
        .collect();
    changes.extend(v1.unset.into_iter().map(|key| Change {
        node: None,
        key,
        value: None,
        origin: Origin::Operator,
    }));
    Event::ConfigChanged(ConfigChanged { changes })
}

/// Encodes a v1 `config.set` message, as a v1 writer did: for upcasting tests and tools.
pub fn encode_v1_config_set(cluster: &str, actor: &str, time_ms: u64, v1: &ConfigSetV1) -> Vec<u8> {
    let wire = Wire {
        v: 1,
        id: Uuid::now_v7(),
        t: time_ms,
        actor: actor.to_string(),
        cluster: cluster.to_string(),
        kind: "config.set".to_string(),
        data: v1,
    };
    let mut out = Vec::new();
    ciborium::into_writer(&wire, &mut out).expect("CBOR encoding into a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope::new(
            "c1",
            "root@host",
            1_796_315_323_123,
            Event::ConfigChanged(ConfigChanged {
                changes: vec![Change {
                    node: None,
                    key: "network#backend1.type".into(),
                    value: Some("routed_bridge".into()),
                    origin: Origin::Operator,
                }],
            }),
        )
    }

    #[test]
    fn round_trip() {
        let env = sample();
        assert_eq!(
            Envelope::decode(&env.encode()),
            Ok(Decoded::Event(env.clone()))
        );
        assert_eq!(env.id.get_version_num(), 7);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = sample().encode();
        bytes.extend_from_slice(&[0, 1]);
        assert_eq!(Envelope::decode(&bytes), Err(DecodeError::Trailing(2)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            Envelope::decode(b"\xff\x00garbage"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::decode(b""),
            Err(DecodeError::Malformed(_))
        ));
    }

    fn wire_bytes(v: u32, kind: &str) -> Vec<u8> {
        let wire = Wire {
            v,
            id: Uuid::now_v7(),
            t: 1,
            actor: "a".into(),
            cluster: "c".into(),
            kind: kind.into(),
            data: ciborium::Value::Map(vec![]),
        };
        let mut out = Vec::new();
        ciborium::into_writer(&wire, &mut out).unwrap();
        out
    }

    #[test]
    fn unknown_kind_and_newer_schema_are_skipped() {
        assert_eq!(
            Envelope::decode(&wire_bytes(2, "lease.teleported")),
            Ok(Decoded::Skipped(Skip::UnknownKind {
                kind: "lease.teleported".into(),
                schema: 2
            }))
        );
        assert_eq!(
            Envelope::decode(&wire_bytes(SCHEMA_VERSION + 1, "config.changed")),
            Ok(Decoded::Skipped(Skip::NewerSchema {
                kind: "config.changed".into(),
                schema: SCHEMA_VERSION + 1
            }))
        );
    }

    #[test]
    fn wrong_payload_names_the_kind() {
        let err = Envelope::decode(&wire_bytes(2, "node.applied")).unwrap_err();
        assert!(
            matches!(err, DecodeError::Payload { ref kind, .. } if kind == "node.applied"),
            "{err}"
        );
    }

    #[test]
    fn v1_config_set_is_upcast() {
        let v1 = ConfigSetV1 {
            set: [
                ("network#b.network".to_string(), "10.11.0.0/16".to_string()),
                ("network#b.type".to_string(), "routed_bridge".to_string()),
            ]
            .into(),
            unset: vec!["network#old.type".into()],
        };
        let Decoded::Event(env) =
            Envelope::decode(&encode_v1_config_set("c", "u@h", 5, &v1)).unwrap()
        else {
            panic!("v1 event skipped")
        };
        assert_eq!(env.schema, 1);
        let Event::ConfigChanged(c) = env.event else {
            panic!()
        };
        let keys: Vec<(&str, Option<&str>)> = c
            .changes
            .iter()
            .map(|c| (c.key.as_str(), c.value.as_deref()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("network#b.network", Some("10.11.0.0/16")),
                ("network#b.type", Some("routed_bridge")),
                ("network#old.type", None)
            ]
        );
        assert!(c
            .changes
            .iter()
            .all(|c| c.node.is_none() && c.origin == Origin::Operator));
    }
}
