//! Simulation support: daemons on the in-memory event log and dataplane, for tests and the
//! convergence benchmark (many nodes in one process, no root).

use crate::daemon::{Daemon, Options, SetupRequest};
use crate::dataplane::{self, Dataplane};
use om_events::log::{EventLog, MemoryLog};
use om_events::subjects::Subjects;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A shared dataplane is a dataplane: the simulation keeps a handle to inspect it.
impl<D: Dataplane> Dataplane for Arc<D> {
    fn links(
        &self,
        f: &dataplane::LinkFilter,
    ) -> impl std::future::Future<Output = dataplane::Result<Vec<dataplane::Link>>> + Send {
        (**self).links(f)
    }
    fn ensure_bridge(
        &self,
        s: &dataplane::BridgeSpec,
    ) -> impl std::future::Future<Output = dataplane::Result<dataplane::EnsureOutcome>> + Send {
        (**self).ensure_bridge(s)
    }
    fn ensure_tunnel(
        &self,
        s: &dataplane::TunnelSpec,
    ) -> impl std::future::Future<Output = dataplane::Result<dataplane::EnsureOutcome>> + Send {
        (**self).ensure_tunnel(s)
    }
    fn delete_link(
        &self,
        n: &str,
    ) -> impl std::future::Future<Output = dataplane::Result<()>> + Send {
        (**self).delete_link(n)
    }
    fn routes(
        &self,
        p: u8,
    ) -> impl std::future::Future<Output = dataplane::Result<Vec<dataplane::Route>>> + Send {
        (**self).routes(p)
    }
    fn replace_route(
        &self,
        r: &dataplane::Route,
    ) -> impl std::future::Future<Output = dataplane::Result<()>> + Send {
        (**self).replace_route(r)
    }
    fn delete_route(
        &self,
        r: &dataplane::Route,
    ) -> impl std::future::Future<Output = dataplane::Result<()>> + Send {
        (**self).delete_route(r)
    }
    fn addresses(
        &self,
    ) -> impl std::future::Future<Output = dataplane::Result<Vec<dataplane::InterfaceAddress>>> + Send
    {
        (**self).addresses()
    }
}

/// A running simulated node.
pub struct SimNode<D> {
    pub name: String,
    pub dp: Arc<D>,
    pub setup: mpsc::Sender<SetupRequest>,
    stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl<D> SimNode<D> {
    /// Stops the daemon (it saves its local state) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await?
    }
}

/// Starts a daemon for `name` on `log` with dataplane `dp`.
pub fn spawn<D: Dataplane + 'static, L: EventLog + Clone + 'static>(
    name: &str,
    dp: Arc<D>,
    log: L,
    subjects: Subjects,
    state_dir: std::path::PathBuf,
    period: Duration,
) -> SimNode<D> {
    let (tx, rx) = mpsc::channel(4);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let opts = Options {
        node: name.to_string(),
        state_dir,
        period,
        version: "sim".into(),
    };
    let daemon = Daemon::new(dp.clone(), log, subjects, opts);
    let task = tokio::spawn(daemon.run(rx, async move {
        let _ = stop_rx.await;
    }));
    SimNode {
        name: name.to_string(),
        dp,
        setup: tx,
        stop: Some(stop_tx),
        task,
    }
}

/// The in-memory log type used by simulations.
pub type SimLog = MemoryLog;
