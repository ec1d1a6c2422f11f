//! The event log on NATS JetStream, and the connection options every binary shares.
//!
//! One stream per cluster (`OM_<cluster>`, file storage, subjects `om.<cluster>.ev.>`).
//! Appends are JetStream publishes with `Nats-Msg-Id` (the event id) and, when conditional,
//! `Nats-Expected-Last-Subject-Sequence`. Reads and subscriptions use ordered consumers,
//! which JetStream recreates from the last delivered sequence on any gap, so nothing falls
//! between replay and follow.

use crate::log::{Ack, EventLog, LogError, Stored};
use crate::subjects::Subjects;
use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::path::PathBuf;
use std::time::Duration;

/// Connection options shared by `om`, `om-projector` and `om-node`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// NATS server URL(s), comma separated.
    #[arg(
        long,
        global = true,
        env = "OM_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub server: String,
    /// Cluster name: selects the stream OM_<cluster> and the subjects om.<cluster>.>.
    #[arg(long, global = true, env = "OM_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// NATS user (with --password).
    #[arg(long, global = true, env = "OM_NATS_USER")]
    pub user: Option<String>,
    /// NATS password (with --user).
    #[arg(long, global = true, env = "OM_NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// NATS authentication token.
    #[arg(long, global = true, env = "OM_NATS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// NATS credentials file (JWT and NKey seed).
    #[arg(long, global = true, env = "OM_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// CA certificate to verify the server's TLS certificate (enables TLS).
    #[arg(long, global = true, env = "OM_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Replicas of the cluster's stream when it is created (1 to 5).
    #[arg(long, global = true, env = "OM_STREAM_REPLICAS", default_value_t = 1, value_parser = parse_replicas)]
    pub replicas: usize,
}

/// `--replicas`: JetStream keeps 1 to 5 copies of a stream.
fn parse_replicas(v: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (1..=5).contains(&n) => Ok(n),
        _ => Err(format!("{v:?} is not a replica count, expected 1 to 5")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad cluster name {0:?}: expected letters, digits, '_' or '-'")]
    Cluster(String),
    #[error("--user and --password go together")]
    UserPassword,
    #[error("reading credentials file {path}: {source}")]
    Creds {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {server}: {reason}")]
    Connect { server: String, reason: String },
    #[error("cannot open stream {stream} on {server}: {reason}")]
    Stream {
        stream: String,
        server: String,
        reason: String,
    },
}

impl ConnectArgs {
    pub fn subjects(&self) -> Result<Subjects, ConnectError> {
        if !crate::subjects::valid_cluster_name(&self.cluster) {
            return Err(ConnectError::Cluster(self.cluster.clone()));
        }
        Ok(Subjects::new(&self.cluster))
    }

    /// Connects, failing fast when no server answers (no endless background retry).
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConnectError> {
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(3))
            .request_timeout(Some(Duration::from_secs(5)));
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => opts = opts.user_and_password(u.clone(), p.clone()),
            (None, None) => {}
            _ => return Err(ConnectError::UserPassword),
        }
        if let Some(t) = &self.token {
            opts = opts.token(t.clone());
        }
        if let Some(c) = &self.creds {
            opts = opts
                .credentials_file(c)
                .await
                .map_err(|source| ConnectError::Creds {
                    path: c.display().to_string(),
                    source,
                })?;
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        opts.connect(self.server.as_str())
            .await
            .map_err(|e| ConnectError::Connect {
                server: self.server.clone(),
                reason: e.to_string(),
            })
    }

    /// Connects and opens (creating if needed) the cluster's stream.
    pub async fn open_log(
        &self,
        name: &str,
    ) -> Result<(async_nats::Client, JetStreamLog), ConnectError> {
        let client = self.connect(name).await?;
        let log = JetStreamLog::open(client.clone(), self.subjects()?, self.replicas)
            .await
            .map_err(|e| ConnectError::Stream {
                stream: self.subjects().map(|s| s.stream()).unwrap_or_default(),
                server: self.server.clone(),
                reason: e.to_string(),
            })?;
        Ok((client, log))
    }
}

/// The event log of one cluster on JetStream.
#[derive(Clone)]
pub struct JetStreamLog {
    js: jetstream::Context,
    stream: stream::Stream,
    pub subjects: Subjects,
    /// The snapshot store, opened on first use.
    snaps: std::sync::Arc<tokio::sync::OnceCell<SnapshotStore>>,
}

impl JetStreamLog {
    /// Opens the cluster's stream, creating it (file storage, `replicas` copies) if absent.
    pub async fn open(
        client: async_nats::Client,
        subjects: Subjects,
        replicas: usize,
    ) -> Result<Self, LogError> {
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: subjects.stream(),
                subjects: vec![subjects.events()],
                storage: stream::StorageType::File,
                num_replicas: replicas.max(1),
                duplicate_window: Duration::from_secs(120),
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(JetStreamLog {
            js,
            stream,
            subjects,
            snaps: Default::default(),
        })
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    async fn ordered(
        &self,
        filter: &str,
        from: u64,
    ) -> Result<consumer::Consumer<consumer::pull::OrderedConfig>, LogError> {
        self.stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.to_string(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable)
    }
}

impl JetStreamLog {
    /// The duplicate ack of an append refused for a wrong last subject sequence, when an
    /// earlier attempt of the same append (same subject, expectation and message id) was
    /// stored inside the de-duplication window; `None` otherwise.
    ///
    /// nats-server 2.12 and later check the expected last subject sequence of a publish to a
    /// one-replica stream before its `Nats-Msg-Id`, where a clustered stream (and R1 before
    /// 2.12) de-duplicates first: the retry of an append whose ack was lost is refused on R1
    /// and answered as a duplicate on R3. The port promises the duplicate (as [`MemoryLog`]
    /// does), so it is recognised here: an earlier attempt conditioned on `expected` can
    /// only have been stored as the first message on `subject` after `expected`. Same id
    /// stored elsewhere (another subject or expectation) stays a conflict on R1.
    ///
    /// [`MemoryLog`]: crate::log::MemoryLog
    async fn earlier_attempt(&self, subject: &str, expected: u64, msg_id: &str) -> Option<Ack> {
        // The leader answers (`STREAM.MSG.GET`), not a replica that may lag behind.
        let found = self
            .stream
            .raw_message_builder()
            .sequence(expected.saturating_add(1))
            .next_by_subject(subject.to_string())
            .send()
            .await;
        let m = match found {
            Ok(m) => m,
            Err(e) => {
                if !matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) {
                    // The refusal stands; the caller catches up and may recognise its event.
                    tracing::warn!(subject, expected, "looking for an earlier attempt: {e}");
                }
                return None;
            }
        };
        let id = m.headers.get(async_nats::header::NATS_MESSAGE_ID)?;
        if id.as_str() != msg_id {
            return None;
        }
        let window = self.stream.cached_info().config.duplicate_window;
        let expires = async_nats::datetime::add_std_duration(m.time, window).ok()?;
        (expires > async_nats::datetime::now()).then_some(Ack {
            seq: m.sequence,
            duplicate: true,
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> LogError {
    LogError::Unavailable(e.to_string())
}

fn to_stored(m: &jetstream::Message) -> Result<Stored, LogError> {
    let info = m.info().map_err(|e| LogError::Other(e.to_string()))?;
    Ok(Stored {
        seq: info.stream_sequence,
        subject: m.subject.to_string(),
        payload: m.payload.to_vec(),
    })
}

impl EventLog for JetStreamLog {
    async fn append(
        &self,
        subject: &str,
        expected: Option<u64>,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> Result<Ack, LogError> {
        let mut msg = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(msg_id);
        if let Some(n) = expected {
            msg = msg.expected_last_subject_sequence(n);
        }
        let sent = self
            .js
            .send_publish(subject.to_string(), msg)
            .await
            .map_err(unavailable)?;
        match sent.await {
            Ok(ack) => Ok(Ack {
                seq: ack.sequence,
                duplicate: ack.duplicate,
            }),
            Err(e) => {
                let text = e.to_string();
                // Servers ≥ 2.11 answer 10164 where older ones answered 10071 (field notes).
                if e.kind() == PublishErrorKind::WrongLastSequence
                    || text.contains("wrong last sequence")
                    || text.contains("10164")
                {
                    if let Some(n) = expected {
                        if let Some(ack) = self.earlier_attempt(subject, n, msg_id).await {
                            return Ok(ack);
                        }
                    }
                    Err(LogError::Conflict {
                        subject: subject.to_string(),
                        expected: expected.unwrap_or(0),
                    })
                } else if matches!(
                    e.kind(),
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                ) {
                    Err(LogError::NoAck {
                        subject: subject.to_string(),
                        reason: text,
                    })
                } else {
                    Err(LogError::Other(format!("append to {subject}: {text}")))
                }
            }
        }
    }

    async fn read(&self, filter: &str, from: u64) -> Result<Vec<Stored>, LogError> {
        let mut stream = self.stream.clone();
        let last = stream
            .info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence;
        if last < from.max(1) {
            return Ok(Vec::new());
        }
        let consumer = self.ordered(filter, from).await?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(Vec::new());
        }
        let mut msgs = consumer.messages().await.map_err(unavailable)?;
        let mut out = Vec::new();
        while let Some(m) = msgs.next().await {
            let m = m.map_err(unavailable)?;
            let pending = m.info().map(|i| i.pending).unwrap_or(0);
            let stored = to_stored(&m)?;
            let seq = stored.seq;
            out.push(stored);
            if pending == 0 || seq >= last {
                break;
            }
        }
        Ok(out)
    }

    async fn last_seq(&self) -> Result<u64, LogError> {
        let mut stream = self.stream.clone();
        Ok(stream
            .info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence)
    }

    async fn subscribe(
        &self,
        filter: &str,
        from: u64,
    ) -> Result<BoxStream<'static, Result<Stored, LogError>>, LogError> {
        let consumer = self.ordered(filter, from).await?;
        let msgs = consumer.messages().await.map_err(unavailable)?;
        Ok(msgs
            .map_err(unavailable)
            .and_then(|m| async move { to_stored(&m) })
            .boxed())
    }

    async fn put_snapshot(&self, name: &str, bytes: Vec<u8>) -> Result<(), LogError> {
        self.snapshot_store().await?.put_bytes(name, &bytes).await
    }

    async fn get_snapshot(&self, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        self.snapshot_store().await?.get_bytes(name).await
    }
}

impl JetStreamLog {
    async fn snapshot_store(&self) -> Result<&SnapshotStore, LogError> {
        self.snaps
            .get_or_try_init(|| SnapshotStore::open(&self.js, &self.subjects))
            .await
    }
}

pub use crate::snapshot::Snapshot;

/// Attempts of a snapshot read or write before its error is returned.
const SNAPSHOT_ATTEMPTS: u32 = 3;

/// Snapshots of folded states in the JetStream object store `OM_SNAP_<cluster>`, one object
/// per reader (`projector`, `node-<name>`), so a cold start replays only the tail.
#[derive(Clone)]
pub struct SnapshotStore {
    store: jetstream::object_store::ObjectStore,
}

impl SnapshotStore {
    pub async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Self, LogError> {
        let bucket = format!("OM_SNAP_{}", subjects.cluster);
        let store = match js.get_object_store(&bucket).await {
            Ok(s) => s,
            Err(_) => js
                .create_object_store(jetstream::object_store::Config {
                    bucket: bucket.clone(),
                    description: Some("folded-state snapshots of the om readers".into()),
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?,
        };
        Ok(SnapshotStore { store })
    }

    /// Saves `state` at `seq` under `name`.
    pub async fn save<T: serde::Serialize>(
        &self,
        name: &str,
        seq: u64,
        state: &T,
    ) -> Result<usize, LogError> {
        let bytes = crate::snapshot::encode(seq, state);
        self.put_bytes(name, &bytes).await?;
        Ok(bytes.len())
    }

    /// Saves already encoded snapshot bytes under `name`. A bucket just created on a
    /// clustered server may not answer yet: a failed attempt is retried twice (bounded).
    pub async fn put_bytes(&self, name: &str, bytes: &[u8]) -> Result<(), LogError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.store.put(name, &mut &bytes[..]).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt >= SNAPSHOT_ATTEMPTS => {
                    return Err(LogError::Other(format!("save snapshot {name}: {e}")))
                }
                Err(e) => tracing::debug!("save snapshot {name}, attempt {attempt}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
        }
    }

    /// The bytes saved under `name`; `None` when there are none. Retried like
    /// [`put_bytes`](Self::put_bytes).
    pub async fn get_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, LogError> {
        use tokio::io::AsyncReadExt;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let why = match self.store.get(name).await {
                Ok(mut obj) => {
                    let mut bytes = Vec::new();
                    match obj.read_to_end(&mut bytes).await {
                        Ok(_) => return Ok(Some(bytes)),
                        Err(e) => format!("read snapshot {name}: {e}"),
                    }
                }
                Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => {
                    return Ok(None)
                }
                Err(e) => format!("load snapshot {name}: {e}"),
            };
            if attempt >= SNAPSHOT_ATTEMPTS {
                return Err(LogError::Other(why));
            }
            tracing::debug!("{why} (attempt {attempt})");
            tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
        }
    }

    /// Loads the snapshot `name`; `Ok(None)` when there is none, or when it was written by
    /// another schema version (the caller then replays from the start).
    pub async fn load<T: for<'de> serde::Deserialize<'de>>(
        &self,
        name: &str,
    ) -> Result<Option<Snapshot<T>>, LogError> {
        Ok(self
            .get_bytes(name)
            .await?
            .and_then(|bytes| crate::snapshot::decode(name, &bytes)))
    }
}
