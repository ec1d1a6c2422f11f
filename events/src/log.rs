//! The event-log port, its in-memory implementation, and the command runner.
//!
//! The port mirrors what JetStream gives us: appends conditioned on the last sequence of a
//! subject, de-duplication by message id inside a window, ordered reads and subscriptions.
//! [`MemoryLog`] enforces the same rules, so the conformance suite in [`conformance`] passes
//! against both. [`execute`] runs a configuration command: fold, decide, conditional append,
//! and on conflict catch up, decide again and retry, a bounded number of times.

use crate::decide::{decide, Command, Rejected};
use crate::envelope::{Decoded, Envelope};
use crate::event::{Change, ConfigChanged, Event};
use crate::state::State;
use crate::subjects::Subjects;
use futures::stream::BoxStream;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// A successful append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
    /// The message id was already stored (inside the de-duplication window): nothing new.
    pub duplicate: bool,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error(
        "conflict on {subject}: expected last sequence {expected}, another writer got there first"
    )]
    Conflict { subject: String, expected: u64 },
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The outcome of an append is unknown (timeout after sending): it may have been stored.
    #[error("no acknowledgement for the append to {subject}: {reason}")]
    NoAck { subject: String, reason: String },
    #[error("event log error: {0}")]
    Other(String),
}

/// The port. `filter` is a NATS subject filter (`*` one token, `>` the rest).
pub trait EventLog: Send + Sync {
    /// Appends `payload` to `subject`. With `expected = Some(n)`, only if the last message on
    /// `subject` is at stream sequence `n` (0: the subject is empty). `msg_id` de-duplicates.
    fn append(
        &self,
        subject: &str,
        expected: Option<u64>,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<Ack, LogError>> + Send;

    /// Every message matching `filter` from sequence `from` up to the last one at call time.
    fn read(
        &self,
        filter: &str,
        from: u64,
    ) -> impl Future<Output = Result<Vec<Stored>, LogError>> + Send;

    /// The last stream sequence (0 when empty).
    fn last_seq(&self) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// Messages from `from` on, in order, without gap, then new ones as they are stored.
    fn subscribe(
        &self,
        filter: &str,
        from: u64,
    ) -> impl Future<Output = Result<BoxStream<'static, Result<Stored, LogError>>, LogError>> + Send;

    /// Saves `bytes` as the snapshot `name` of a reader, replacing the previous one. Kept
    /// beside the stream (JetStream: the object store `OM_SNAP_<cluster>`), so a reader that
    /// lost its disk still starts from its last fold rather than the first event.
    fn put_snapshot(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), LogError>> + Send;

    /// The snapshot saved under `name`; `None` when there is none.
    fn get_snapshot(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, LogError>> + Send;
}

/// Does a NATS subject filter match a subject?
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[derive(Default)]
struct Inner {
    messages: Vec<Stored>,
    last_by_subject: HashMap<String, u64>,
    ids: HashMap<String, (u64, Instant)>,
    lose_next_ack: bool,
    snapshots: HashMap<String, Vec<u8>>,
}

/// An in-memory event log with JetStream's rules. Cheap to clone (shared).
#[derive(Clone)]
pub struct MemoryLog {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<tokio::sync::watch::Sender<u64>>,
    dedup_window: Duration,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self::with_dedup_window(Duration::from_secs(120))
    }
}

impl MemoryLog {
    pub fn with_dedup_window(window: Duration) -> Self {
        MemoryLog {
            inner: Arc::default(),
            notify: Arc::new(tokio::sync::watch::channel(0).0),
            dedup_window: window,
        }
    }

    /// Fault injection: the next append is stored but answers `NoAck`, as when the ack of a
    /// JetStream publish is lost.
    pub fn lose_next_ack(&self) {
        self.inner.lock().unwrap().lose_next_ack = true;
    }

    /// Stores a raw payload unconditionally (tests: foreign or malformed messages).
    pub fn inject(&self, subject: &str, payload: Vec<u8>) -> u64 {
        let mut g = self.inner.lock().unwrap();
        let seq = g.messages.len() as u64 + 1;
        g.messages.push(Stored {
            seq,
            subject: subject.into(),
            payload,
        });
        g.last_by_subject.insert(subject.into(), seq);
        drop(g);
        self.notify.send_replace(seq);
        seq
    }
}

impl EventLog for MemoryLog {
    async fn append(
        &self,
        subject: &str,
        expected: Option<u64>,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<Ack, LogError> {
        let mut g = self.inner.lock().unwrap();
        let now = Instant::now();
        let window = self.dedup_window;
        g.ids.retain(|_, (_, t)| now.duration_since(*t) < window);
        if let Some((seq, _)) = g.ids.get(msg_id) {
            return Ok(Ack {
                seq: *seq,
                duplicate: true,
            });
        }
        let last = g.last_by_subject.get(subject).copied().unwrap_or(0);
        if let Some(exp) = expected {
            if exp != last {
                return Err(LogError::Conflict {
                    subject: subject.into(),
                    expected: exp,
                });
            }
        }
        let seq = g.messages.len() as u64 + 1;
        g.messages.push(Stored {
            seq,
            subject: subject.into(),
            payload,
        });
        g.last_by_subject.insert(subject.into(), seq);
        g.ids.insert(msg_id.into(), (seq, now));
        let lost = std::mem::take(&mut g.lose_next_ack);
        drop(g);
        self.notify.send_replace(seq);
        if lost {
            return Err(LogError::NoAck {
                subject: subject.into(),
                reason: "injected ack loss".into(),
            });
        }
        Ok(Ack {
            seq,
            duplicate: false,
        })
    }

    async fn read(&self, filter: &str, from: u64) -> Result<Vec<Stored>, LogError> {
        let g = self.inner.lock().unwrap();
        let start = from.max(1) as usize - 1;
        Ok(g.messages
            .iter()
            .skip(start)
            .filter(|m| subject_matches(filter, &m.subject))
            .cloned()
            .collect())
    }

    async fn last_seq(&self) -> Result<u64, LogError> {
        Ok(self.inner.lock().unwrap().messages.len() as u64)
    }

    async fn subscribe(
        &self,
        filter: &str,
        from: u64,
    ) -> Result<BoxStream<'static, Result<Stored, LogError>>, LogError> {
        let filter = filter.to_string();
        let rx = self.notify.subscribe();
        let init = (self.clone(), rx, from.max(1), VecDeque::new());
        let stream = futures::stream::unfold(init, move |(log, mut rx, mut next, mut buf)| {
            let filter = filter.clone();
            async move {
                loop {
                    if let Some(m) = buf.pop_front() {
                        return Some((Ok(m), (log, rx, next, buf)));
                    }
                    // Mark the current version seen before reading, so no append is missed.
                    rx.borrow_and_update();
                    {
                        let g = log.inner.lock().unwrap();
                        let start = next as usize - 1;
                        buf.extend(
                            g.messages
                                .iter()
                                .skip(start)
                                .filter(|m| subject_matches(&filter, &m.subject))
                                .cloned(),
                        );
                        next = g.messages.len() as u64 + 1;
                    }
                    if buf.is_empty() && rx.changed().await.is_err() {
                        return None;
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn put_snapshot(&self, name: &str, bytes: Vec<u8>) -> Result<(), LogError> {
        self.inner
            .lock()
            .unwrap()
            .snapshots
            .insert(name.into(), bytes);
        Ok(())
    }

    async fn get_snapshot(&self, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.inner.lock().unwrap().snapshots.get(name).cloned())
    }
}

/// Folds one stored message into the state; returns the envelope when it is an event.
/// Unknown kinds, newer schemas and malformed messages are skipped with a warning.
pub fn fold_stored(state: &mut State, m: &Stored) -> Option<Envelope> {
    state.observe(m.seq, &m.subject);
    match Envelope::decode(&m.payload) {
        Ok(Decoded::Event(env)) => {
            state.apply(m.seq, env.time_ms, &env.event);
            Some(env)
        }
        Ok(Decoded::Skipped(why)) => {
            tracing::warn!(seq = m.seq, subject = %m.subject, "{why}");
            state.skipped += 1;
            None
        }
        Err(e) => {
            tracing::warn!(seq = m.seq, subject = %m.subject, "{e}, skipped");
            state.skipped += 1;
            None
        }
    }
}

/// Brings `state` up to the end of the log. Returns the envelopes folded.
pub async fn catch_up<L: EventLog>(
    log: &L,
    subjects: &Subjects,
    state: &mut State,
) -> Result<Vec<Envelope>, LogError> {
    let batch = log.read(&subjects.events(), state.seq + 1).await?;
    Ok(batch.iter().filter_map(|m| fold_stored(state, m)).collect())
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Stream sequence of the event, `None` when there was nothing to change.
    pub seq: Option<u64>,
    pub changes: Vec<Change>,
    pub id: Uuid,
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("gave up after {0} attempts: other writers kept changing the configuration")]
    Contention(u32),
}

/// How many times a conflicting append is decided again.
pub const MAX_ATTEMPTS: u32 = 32;

/// Runs a configuration command against the log: catch up, decide, append conditioned on
/// the config subject's last sequence; on conflict or a lost ack, catch up (recognising our
/// own event by its id, whatever the de-duplication window) and decide again.
pub async fn execute<L: EventLog>(
    log: &L,
    subjects: &Subjects,
    state: &mut State,
    actor: &str,
    now_ms: impl Fn() -> u64,
    cmd: &Command,
) -> Result<Outcome, CommandError> {
    execute_with_id(log, subjects, state, actor, now_ms, cmd, Uuid::now_v7()).await
}

/// [`execute`] with a given event id: a command retried by its caller keeps its identity.
pub async fn execute_with_id<L: EventLog>(
    log: &L,
    subjects: &Subjects,
    state: &mut State,
    actor: &str,
    now_ms: impl Fn() -> u64,
    cmd: &Command,
    id: Uuid,
) -> Result<Outcome, CommandError> {
    let config = subjects.config();
    let out = execute_event(log, subjects, state, actor, now_ms, &config, id, |st| {
        let changes = decide(st, cmd)?;
        Ok((!changes.is_empty()).then_some(Event::ConfigChanged(ConfigChanged { changes })))
    })
    .await?;
    let changes = match out.event {
        Some(Event::ConfigChanged(c)) => c.changes,
        _ => Vec::new(),
    };
    Ok(Outcome {
        seq: out.seq,
        changes,
        id,
        attempts: out.attempts,
    })
}

/// What [`execute_event`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOutcome {
    /// Stream sequence of the event, `None` when the decision was "nothing to do".
    pub seq: Option<u64>,
    pub event: Option<Event>,
    pub attempts: u32,
}

/// Runs a decision against the log: catch up, `decide`, append its event to `subject`
/// conditioned on that subject's last sequence; on conflict or a lost ack, catch up
/// (recognising our own event by its id) and decide again, a bounded number of times.
#[allow(clippy::too_many_arguments)]
pub async fn execute_event<L: EventLog>(
    log: &L,
    subjects: &Subjects,
    state: &mut State,
    actor: &str,
    now_ms: impl Fn() -> u64,
    subject: &str,
    id: Uuid,
    decide: impl Fn(&State) -> Result<Option<Event>, Rejected>,
) -> Result<EventOutcome, CommandError> {
    for attempt in 1..=MAX_ATTEMPTS {
        for env in catch_up(log, subjects, state).await? {
            if env.id == id {
                return Ok(EventOutcome {
                    seq: Some(state.last_on(subject)),
                    event: Some(env.event),
                    attempts: attempt,
                });
            }
        }
        let Some(event) = decide(state)? else {
            return Ok(EventOutcome {
                seq: None,
                event: None,
                attempts: attempt,
            });
        };
        let mut env = Envelope::new(&subjects.cluster, actor, now_ms(), event.clone());
        env.id = id;
        match log
            .append(
                subject,
                Some(state.last_on(subject)),
                &id.to_string(),
                env.encode(),
            )
            .await
        {
            Ok(ack) => {
                return Ok(EventOutcome {
                    seq: Some(ack.seq),
                    event: Some(event),
                    attempts: attempt,
                })
            }
            Err(LogError::Conflict { .. }) | Err(LogError::NoAck { .. }) => {
                // Spread the retries of writers that collided.
                let jitter = (id.as_u128() as u64 ^ attempt as u64).wrapping_mul(2654435761) % 4000;
                tokio::time::sleep(Duration::from_micros(jitter * attempt.min(8) as u64)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommandError::Contention(MAX_ATTEMPTS))
}

pub mod conformance;
