//! What every command needs: the connection, who acts, how to read and how to write.

use crate::Format;
use om_events::decide::Command;
use om_events::jetstream::{ConnectArgs, JetStreamLog};
use om_events::log::{self, CommandError, Outcome};
use om_events::query::{self, Answer, Query, Reply, Request};
use om_events::subjects::Subjects;
use om_events::State;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a read waits for the projector before folding the stream itself.
const PROJECTOR_TIMEOUT: Duration = Duration::from_secs(3);

/// A failure: the message for stderr and the exit code (2: refused input, 1: anything else).
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub fn input(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 2,
        }
    }
    pub fn runtime(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

impl From<om_events::jetstream::ConnectError> for Failure {
    fn from(e: om_events::jetstream::ConnectError) -> Self {
        match e {
            om_events::jetstream::ConnectError::Cluster(_)
            | om_events::jetstream::ConnectError::UserPassword => Failure::input(e.to_string()),
            _ => Failure::runtime(e.to_string()),
        }
    }
}

impl From<CommandError> for Failure {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected(r) => Failure::input(r.to_string()),
            other => Failure::runtime(other.to_string()),
        }
    }
}

pub struct Ctx {
    pub connect: ConnectArgs,
    pub subjects: Subjects,
    pub format: Format,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `OM_NODE`, else the host name.
pub fn default_node() -> String {
    std::env::var("OM_NODE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(hostname)
}

impl Ctx {
    pub fn new(connect: ConnectArgs, format: Format) -> Result<Self, Failure> {
        let subjects = connect.subjects()?;
        Ok(Ctx {
            connect,
            subjects,
            format,
        })
    }

    /// `user@host`.
    pub fn actor(&self) -> String {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        format!("{user}@{}", hostname())
    }

    /// The log, and the state to decide on: the projector's when one answers (the writer
    /// catches up from there), else nothing (it folds the stream).
    async fn writer(&self) -> Result<(JetStreamLog, State), Failure> {
        let (client, log) = self.connect.open_log("om").await?;
        let state = match self.ask(&client, 0, Query::State).await {
            Ok(Reply {
                answer: Answer::State { state },
                ..
            }) => *state,
            _ => State::default(),
        };
        Ok((log, state))
    }

    /// Runs a configuration command: validated, decided, appended (with retries on
    /// conflict). Starts from the projector's state when one answers, else from the stream.
    pub async fn write(&self, cmd: &Command) -> Result<Outcome, Failure> {
        let (log, mut state) = self.writer().await?;
        let out =
            log::execute(&log, &self.subjects, &mut state, &self.actor(), now_ms, cmd).await?;
        Ok(out)
    }

    /// Runs a decision on another subject than the configuration's (an object's): decided
    /// on the current state, appended conditioned on that subject's last sequence, retried.
    pub async fn write_event(
        &self,
        subject: &str,
        decide: impl Fn(&State) -> Result<Option<om_events::Event>, om_events::decide::Rejected>,
    ) -> Result<log::EventOutcome, Failure> {
        let (log, mut state) = self.writer().await?;
        let out = log::execute_event(
            &log,
            &self.subjects,
            &mut state,
            &self.actor(),
            now_ms,
            subject,
            uuid::Uuid::now_v7(),
            decide,
        )
        .await?;
        Ok(out)
    }

    async fn ask(
        &self,
        client: &async_nats::Client,
        min_seq: u64,
        q: Query,
    ) -> Result<Reply, String> {
        let req = Request { min_seq, query: q };
        let fut = client.request(self.subjects.query_view(), query::encode(&req).into());
        let msg = tokio::time::timeout(PROJECTOR_TIMEOUT, fut)
            .await
            .map_err(|_| format!("no answer within {}s", PROJECTOR_TIMEOUT.as_secs()))?
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => "nothing listens there".to_string(),
                async_nats::RequestErrorKind::TimedOut => "timed out".to_string(),
                _ => e.to_string(),
            })?;
        query::decode::<Reply>(&msg.payload)
    }

    /// Answers a query: from the projector, consistent with every event stored when the
    /// command started; else by folding the stream here (said on stderr).
    pub async fn read(&self, q: Query) -> Result<Answer, Failure> {
        self.read_at(q, None).await
    }

    /// [`read`](Self::read), or as of a point in history (folded here, up to that point).
    pub async fn read_at(
        &self,
        q: Query,
        at: Option<crate::history::At>,
    ) -> Result<Answer, Failure> {
        if let Some(at) = at {
            let state = crate::history::state_at(self, at).await?;
            return Ok(query::answer(&state, &q));
        }
        let client = self.connect.connect("om").await?;
        let js = async_nats::jetstream::new(client.clone());
        let last = match js.get_stream(self.subjects.stream()).await {
            Ok(mut s) => match s.info().await {
                Ok(i) => i.state.last_sequence,
                Err(e) => {
                    return Err(Failure::runtime(format!(
                        "stream {}: {e}",
                        self.subjects.stream()
                    )))
                }
            },
            Err(e) => {
                self.no_stream(e)?;
                return Ok(query::answer(&State::default(), &q));
            }
        };
        match self.ask(&client, last, q.clone()).await {
            Ok(reply) => {
                if reply.stale {
                    eprintln!(
                        "om: warning: the projector has folded up to sequence {}, the stream is at {last}: recent changes may be missing",
                        reply.seq
                    );
                }
                Ok(reply.answer)
            }
            Err(why) => {
                let log = JetStreamLog::open(client, self.subjects.clone(), self.connect.replicas)
                    .await
                    .map_err(|e| Failure::runtime(e.to_string()))?;
                let mut state = State::default();
                log::catch_up(&log, &self.subjects, &mut state)
                    .await
                    .map_err(|e| Failure::runtime(e.to_string()))?;
                eprintln!(
                    "om: no projector answered on {} ({why}); folded the stream here ({} events)",
                    self.subjects.query_view(),
                    state.seq
                );
                Ok(query::answer(&state, &q))
            }
        }
    }
}

impl Ctx {
    /// A missing stream is an empty cluster (said on stderr, a typo in --cluster shows);
    /// any other failure (no JetStream on the server, no permission) is an error.
    pub fn no_stream(
        &self,
        e: async_nats::jetstream::context::GetStreamError,
    ) -> Result<(), Failure> {
        use async_nats::jetstream::context::GetStreamErrorKind;
        match e.kind() {
            GetStreamErrorKind::JetStream(j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                eprintln!(
                    "om: cluster {} has no events yet (no stream {} on {})",
                    self.connect.cluster,
                    self.subjects.stream(),
                    self.connect.server
                );
                Ok(())
            }
            _ => Err(Failure::runtime(format!(
                "stream {} on {}: {e}",
                self.subjects.stream(),
                self.connect.server
            ))),
        }
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON of plain data")
    );
}
