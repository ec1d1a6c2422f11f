//! Snapshots of a folded state: `{schema, seq, state}` in CBOR. Pure; the stores that keep
//! them (object store for the projector, local disk for node daemons) are elsewhere.
//!
//! A snapshot written by another schema version is not trusted: the reader replays from the
//! first event instead (events of every older schema are upcast by the decoder, so the
//! replay gives the current state).

use serde::{Deserialize, Serialize};

/// A folded state saved with the stream sequence it reflects and the schema that wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot<T> {
    pub schema: u32,
    pub seq: u64,
    pub state: T,
}

/// CBOR bytes of a snapshot at the current schema.
pub fn encode<T: Serialize>(seq: u64, state: &T) -> Vec<u8> {
    crate::query::encode(&Snapshot {
        schema: crate::SCHEMA_VERSION,
        seq,
        state,
    })
}

/// Reads a snapshot; `None` (with a warning naming `name`) when it is unreadable or of
/// another schema version.
pub fn decode<T: for<'de> Deserialize<'de>>(name: &str, bytes: &[u8]) -> Option<Snapshot<T>> {
    #[derive(Deserialize)]
    struct Head {
        schema: u32,
    }
    let head: Head = match crate::query::decode::<ciborium::Value>(bytes)
        .and_then(|v| v.deserialized().map_err(|e| e.to_string()))
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("snapshot {name} unreadable ({e}), ignored");
            return None;
        }
    };
    if head.schema != crate::SCHEMA_VERSION {
        tracing::warn!(
            "snapshot {name} was written by schema {}, this is {}: ignored, replaying",
            head.schema,
            crate::SCHEMA_VERSION
        );
        return None;
    }
    match crate::query::decode::<Snapshot<T>>(bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("snapshot {name} unreadable ({e}), ignored");
            None
        }
    }
}
