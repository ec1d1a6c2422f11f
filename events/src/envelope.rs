//! The envelope around every event, and its CBOR codec.
//!
//! Wire form: a CBOR map `{v, id, t, actor, cluster, kind, data}`. A reader meets unknown
//! kinds and newer schemas gracefully: it skips (never crashes on) an unknown kind or a schema
//! newer than [`SCHEMA_VERSION`]; older schemas are upcast. Decoding reads `data` straight
//! into the payload type of `kind` when `v` and `kind` come first (as this code writes them),
//! else in two steps (`data` as an opaque CBOR value first). Trailing bytes after the map are
//! an error (ciborium ignores them by default).
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
    ///
    /// One pass when the writer put `v` and `kind` before `data` (this code always does):
    /// `data` is read straight into the payload type of `kind`. Otherwise, or on any error,
    /// the two-step decode below decides, so both paths give the same answer and the error
    /// texts come from one place.
    pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
        let mut reader = bytes;
        if let Ok(one) = ciborium::from_reader::<OnePass, _>(&mut reader) {
            if reader.is_empty() {
                return Ok(one.0);
            }
        }
        Self::decode_two_steps(bytes)
    }

    /// The envelope with `data` as a generic CBOR value, then `data` as the payload of
    /// `kind`: copes with any field order. [`decode`](Self::decode) falls back to it; public
    /// so tests can check that both agree.
    pub fn decode_two_steps(bytes: &[u8]) -> Result<Decoded, DecodeError> {
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

/// The one-pass decode of [`Envelope::decode`]: fails (and the caller falls back) when
/// `data` comes before `v` or `kind`, or on anything unexpected.
struct OnePass(Decoded);

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    V,
    Id,
    T,
    Actor,
    Cluster,
    Kind,
    Data,
    #[serde(other)]
    Other,
}

impl<'de> Deserialize<'de> for OnePass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OnePassVisitor)
    }
}

struct OnePassVisitor;

impl<'de> serde::de::Visitor<'de> for OnePassVisitor {
    type Value = OnePass;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event envelope map")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OnePass, A::Error> {
        use serde::de::{Error, IgnoredAny};
        let (mut v, mut id, mut t, mut actor, mut cluster) = (None, None, None, None, None);
        let mut kind: Option<String> = None;
        // Some(None): a message to skip (unknown kind, newer schema).
        let mut event: Option<Option<Event>> = None;
        // A field twice is an error here, as in the two-step decode (which then reports it).
        fn once<T, E: Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
            match slot.replace(value) {
                None => Ok(()),
                Some(_) => Err(E::custom("duplicate field")),
            }
        }
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::V => once(&mut v, map.next_value::<u32>()?)?,
                Field::Id => once(&mut id, map.next_value::<Uuid>()?)?,
                Field::T => once(&mut t, map.next_value::<u64>()?)?,
                Field::Actor => once(&mut actor, map.next_value::<String>()?)?,
                Field::Cluster => once(&mut cluster, map.next_value::<String>()?)?,
                Field::Kind => once(&mut kind, map.next_value::<String>()?)?,
                Field::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                Field::Data => {
                    if event.is_some() {
                        return Err(A::Error::custom("duplicate field"));
                    }
                    let (Some(k), Some(ver)) = (kind.as_deref(), v) else {
                        return Err(A::Error::custom("data before v and kind"));
                    };
                    if ver > SCHEMA_VERSION {
                        map.next_value::<IgnoredAny>()?;
                        event = Some(None);
                        continue;
                    }
                    event = Some(Some(match (k, ver) {
                        ("config.set", 1) => upcast_v1_config_set(map.next_value()?),
                        ("config.changed", _) => Event::ConfigChanged(map.next_value()?),
                        ("node.announced", _) => Event::NodeAnnounced(map.next_value()?),
                        ("node.applied", _) => Event::NodeApplied(map.next_value()?),
                        ("ip.allocated", _) => Event::IpAllocated(map.next_value()?),
                        ("ip.released", _) => Event::IpReleased(map.next_value()?),
                        ("object.changed", _) => Event::ObjectChanged(map.next_value()?),
                        ("object.target", _) => Event::ObjectTarget(map.next_value()?),
                        ("instance.status", _) => Event::InstanceStatus(map.next_value()?),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            event = Some(None);
                            continue;
                        }
                    }));
                }
            }
        }
        let missing = || A::Error::custom("missing field");
        let (schema, kind) = (v.ok_or_else(missing)?, kind.ok_or_else(missing)?);
        let (id, time_ms) = (id.ok_or_else(missing)?, t.ok_or_else(missing)?);
        let (actor, cluster) = (actor.ok_or_else(missing)?, cluster.ok_or_else(missing)?);
        Ok(OnePass(match event.ok_or_else(missing)? {
            Some(event) => Decoded::Event(Envelope {
                id,
                time_ms,
                actor,
                cluster,
                schema,
                event,
            }),
            None if schema > SCHEMA_VERSION => Decoded::Skipped(Skip::NewerSchema { kind, schema }),
            None => Decoded::Skipped(Skip::UnknownKind { kind, schema }),
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
    fn data_before_kind_decodes_the_same() {
        // Another writer's field order: `data` first. The one-pass decode cannot know the
        // payload type yet; the two-step decode reads it.
        let env = sample();
        #[derive(Serialize)]
        struct DataFirst<'a> {
            data: &'a Event,
            kind: &'a str,
            cluster: &'a str,
            actor: &'a str,
            t: u64,
            id: Uuid,
            v: u32,
        }
        let mut out = Vec::new();
        ciborium::into_writer(
            &DataFirst {
                data: &env.event,
                kind: env.event.kind(),
                cluster: &env.cluster,
                actor: &env.actor,
                t: env.time_ms,
                id: env.id,
                v: env.schema,
            },
            &mut out,
        )
        .unwrap();
        assert!(ciborium::from_reader::<OnePass, _>(&out[..]).is_err());
        assert_eq!(Envelope::decode(&out), Ok(Decoded::Event(env)));
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
