//! `om net status` end to end with 1,000 networks and 10,000 configuration events in the
//! stream: the real `om` binary, process start included, answered by the real
//! `om-projector`, on a spawned `nats-server`.
//!
//! The stream is filled directly (conditional `JetStreamLog::append`s of encoded envelopes):
//! three nodes, 1,000 bridge networks `netNNNN` on distinct 10.x.y.0/24 ranges (10.100.0.0
//! to 10.103.231.0, clear of the implicit `default` 10.22.0.0/16), then keyword changes
//! (`public`, `tables`) of those networks up to 10,000 events. The changes are constructed as
//! `decide` would make them; one in 200 is checked against `decide` on the folded state,
//! and the final configuration is validated whole.
//!
//! Then `om net status` runs 50 times (after 3 unmeasured runs), each timed from spawn to
//! exit with `std::process::Command`; and, the projector stopped, the CLI's own fold of the
//! stream a few times for comparison.
//!
//! Target: p50 ≤ 50 ms. Needs the binaries: `cargo build --release --workspace`, then
//! `cargo bench -p om-tests --bench status`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use om_events::decide::{decide, parse_set, Command};
use om_events::event::{Change, ConfigChanged, Event, Origin};
use om_events::jetstream::JetStreamLog;
use om_events::log::EventLog;
use om_events::subjects::Subjects;
use om_events::validate::validate;
use om_events::{Envelope, State};
use om_tests::bins::{self, Om};
use om_tests::nats::NatsServer;

const CLUSTER: &str = "bench";
const NETWORKS: usize = 1_000;
const EVENTS: usize = 10_000;
const RUNS: usize = 50;
const WARM_UP: usize = 3;
const FALLBACK_RUNS: usize = 3;

fn main() -> Result<()> {
    if let Some(why) = bins::missing() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn net(i: usize) -> String {
    format!("net{i:04}")
}

fn set(kws: &[String]) -> Command {
    Command::Set {
        node: None,
        ops: parse_set(kws).expect("valid keywords"),
    }
}

fn operator(key: String, value: String) -> Change {
    Change {
        node: None,
        key,
        value: Some(value),
        origin: Origin::Operator,
    }
}

/// Appends configuration events, each conditioned on the last, folding them as it goes.
struct Filler {
    log: JetStreamLog,
    subjects: Subjects,
    state: State,
    checked: usize,
}

impl Filler {
    async fn append(&mut self, changes: Vec<Change>) -> Result<()> {
        let subject = self.subjects.config();
        let env = Envelope::new(
            &self.subjects.cluster,
            "bench@fill",
            now_ms(),
            Event::ConfigChanged(ConfigChanged { changes }),
        );
        let ack = self
            .log
            .append(
                &subject,
                Some(self.state.last_on(&subject)),
                &env.id.to_string(),
                env.encode(),
            )
            .await?;
        ensure!(!ack.duplicate, "event {} stored twice", env.id);
        self.state.observe(ack.seq, &subject);
        self.state.apply(ack.seq, env.time_ms, &env.event);
        Ok(())
    }

    /// Constructed changes, checked against `decide` when `check`.
    async fn changes(&mut self, kws: &[(String, String)], check: bool) -> Result<()> {
        let changes: Vec<Change> = kws
            .iter()
            .map(|(k, v)| operator(k.clone(), v.clone()))
            .collect();
        if check {
            let cmd = set(&kws
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>());
            let decided = decide(&self.state, &cmd).map_err(|e| anyhow::anyhow!("{e}"))?;
            ensure!(decided == changes, "{kws:?}: decide says {decided:?}");
            self.checked += 1;
        }
        self.append(changes).await
    }
}

fn summary(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let at = |p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    println!(
        "{name:<44} n={:<3} min {:>8.2?}  p50 {:>8.2?}  p90 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}",
        v.len(),
        v[0],
        at(50),
        at(90),
        at(99),
        v[v.len() - 1]
    );
    at(50)
}

/// One timed `om net status`: wall time, and the output checked.
fn status_run(om: &Om, want_stderr_empty: bool) -> Result<(Duration, usize, String)> {
    let t = Instant::now();
    let o = om.command(&["net", "status"]).output().context("run om")?;
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    ensure!(o.status.success(), "om net status failed: {stderr}");
    // Header, default, lo and the declared networks.
    let lines = stdout.lines().count();
    ensure!(lines == NETWORKS + 3, "{lines} lines of status");
    ensure!(
        !want_stderr_empty || stderr.is_empty(),
        "not answered by the projector: {stderr}"
    );
    Ok((took, o.stdout.len(), stderr))
}

async fn run() -> Result<()> {
    let nats = NatsServer::spawn_binary().await?;
    let subjects = Subjects::new(CLUSTER);
    let log = JetStreamLog::open(nats.client().await?, subjects.clone(), 1).await?;
    let mut f = Filler {
        log,
        subjects,
        state: State::default(),
        checked: 0,
    };

    let t = Instant::now();
    let nodes = set(&["cluster.nodes=n1 n2 n3".to_string()]);
    let changes = decide(&f.state, &nodes).map_err(|e| anyhow::anyhow!("{e}"))?;
    f.append(changes).await?;
    for i in 0..NETWORKS {
        let name = net(i);
        let kws = [
            (format!("network#{name}.type"), "bridge".to_string()),
            (
                format!("network#{name}.network"),
                format!("10.{}.{}.0/24", 100 + i / 256, i % 256),
            ),
        ];
        f.changes(&kws, i % 200 == 1).await?;
    }
    let mut k = 0;
    while f.state.seq < EVENTS as u64 {
        let name = net(k % NETWORKS);
        let round = k / NETWORKS;
        let (option, value) = match round % 4 {
            0 => ("public", "true"),
            1 => ("tables", "main 100"),
            2 => ("public", "false"),
            _ => ("tables", "main"),
        };
        let kw = (format!("network#{name}.{option}"), value.to_string());
        f.changes(&[kw], k % 200 == 1).await?;
        k += 1;
    }
    let all = om_events::config::Config::network_names(&f.state.config.cluster);
    let problems = validate(&f.state.config, &all);
    ensure!(problems.is_empty(), "the final configuration: {problems:?}");
    let filled = t.elapsed();
    let last = f.state.seq;
    println!(
        "stream filled: {last} configuration events ({NETWORKS} bridge networks, {} cluster keys) in {filled:.2?}, {} constructed events checked against decide",
        f.state.config.cluster.len(),
        f.checked
    );

    let dir = std::env::temp_dir().join(format!("om-bench-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let om = Om::new(nats.url(), CLUSTER);
    let t = Instant::now();
    let mut projector = bins::projector(nats.url(), CLUSTER, dir.join("projector.log"), &[]);
    // Answers (consistent with the whole stream) once it folded everything.
    let mut ready = false;
    for _ in 0..400 {
        if status_run(&om, true).is_ok() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    ensure!(ready, "the projector never answered within 10 s");
    println!(
        "projector started, folded {last} events and answered in {:.2?}",
        t.elapsed()
    );

    for _ in 0..WARM_UP {
        status_run(&om, true)?;
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..RUNS {
        let (took, b, _) = status_run(&om, true)?;
        times.push(took);
        bytes = b;
    }
    println!("om net status prints {} lines, {bytes} bytes", NETWORKS + 3);
    let p50 = summary("om net status (projector answers)", times);
    println!(
        "target: p50 <= 50 ms: {}",
        if p50 <= Duration::from_millis(50) {
            "met"
        } else {
            "MISSED"
        }
    );

    projector.stop();
    let mut times = Vec::new();
    let mut said = String::new();
    for _ in 0..FALLBACK_RUNS {
        let (took, _, stderr) = status_run(&om, false)?;
        ensure!(
            stderr.contains("no projector answered"),
            "the fallback says so: {stderr}"
        );
        times.push(took);
        said = stderr;
    }
    print!("no projector: {said}");
    summary("om net status (no projector, local fold)", times);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
