//! Test support shared by the node tests.

use om_events::log::{Ack, EventLog, LogError, MemoryLog, Stored};
use std::sync::{Arc, Mutex};

/// A [`MemoryLog`] seen through two hooks: messages stored right before the first append
/// made through it (a race staged on purpose), and where each subscription starts.
#[derive(Clone, Default)]
pub struct Hooked {
    pub log: MemoryLog,
    /// Stored (once) just ahead of the first append.
    pub before_first_append: Arc<Mutex<Vec<Stored>>>,
    /// The `from` of every subscription, in order.
    pub subscribed_from: Arc<Mutex<Vec<u64>>>,
}

impl EventLog for Hooked {
    async fn append(
        &self,
        subject: &str,
        expected: Option<u64>,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<Ack, LogError> {
        let before = std::mem::take(&mut *self.before_first_append.lock().unwrap());
        for m in before {
            self.log.inject(&m.subject, m.payload);
        }
        self.log.append(subject, expected, msg_id, payload).await
    }
    async fn read(&self, filter: &str, from: u64) -> Result<Vec<Stored>, LogError> {
        self.log.read(filter, from).await
    }
    async fn last_seq(&self) -> Result<u64, LogError> {
        self.log.last_seq().await
    }
    async fn subscribe(
        &self,
        filter: &str,
        from: u64,
    ) -> Result<futures::stream::BoxStream<'static, Result<Stored, LogError>>, LogError> {
        self.subscribed_from.lock().unwrap().push(from);
        self.log.subscribe(filter, from).await
    }
    async fn put_snapshot(&self, name: &str, bytes: Vec<u8>) -> Result<(), LogError> {
        self.log.put_snapshot(name, bytes).await
    }
    async fn get_snapshot(&self, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        self.log.get_snapshot(name).await
    }
}
