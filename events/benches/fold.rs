//! Fold rate: how many stored events per second a reader folds into the cluster state.
//!
//! A realistic history of 1,000,000 events is generated in memory (deterministically):
//! configuration changes (decided against the folded state; the bulk of them constructed
//! and checked against `decide` on a sample), node announcements, `node.applied` reports,
//! and `ip.allocated` / `ip.released` pairs in the segments of a few networks. Each event is
//! encoded as it is stored (`Envelope::encode`), then timed:
//!
//! - decode + fold: `om_events::log::fold_stored` over the `Stored` messages, which is what
//!   the projector, the node daemons and the CLI fallback do;
//! - decode only: `Envelope::decode`, on a quarter of the messages;
//! - fold only: `State::observe` + `State::apply` over already decoded envelopes.
//!
//! Target: ≥ 500,000 events/s. Run with `cargo bench -p om-events --bench fold`
//! (`OM_BENCH_EVENTS=n` for another history size; `OM_BENCH_FOLD_ONLY=1` to time the fold
//! alone, decode+fold once, for comparing changes of `State::apply`).

mod history;

use history::generate;
use om_events::log::{fold_stored, Stored};
use om_events::{Decoded, Envelope, State};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Runs of the decode-bound timings (each about ten seconds per million events here).
const DECODE_ROUNDS: usize = 2;
const FOLD_ROUNDS: usize = 5;

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// Best and median of `rounds` runs of `f`.
fn time(rounds: usize, mut f: impl FnMut() -> Duration) -> (Duration, Duration) {
    let mut v: Vec<Duration> = (0..rounds).map(|_| f()).collect();
    v.sort();
    (v[0], v[v.len() / 2])
}

fn main() {
    let total: usize = std::env::var("OM_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = Instant::now();
    let (stored, envelopes, checks) = generate(total);
    let bytes: usize = stored.iter().map(|m| m.payload.len()).sum();
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for env in &envelopes {
        *kinds.entry(env.event.kind()).or_default() += 1;
    }
    // Spot check: what is stored decodes to what was generated.
    for k in (0..stored.len()).step_by(997) {
        assert_eq!(
            Envelope::decode(&stored[k].payload),
            Ok(Decoded::Event(envelopes[k].clone()))
        );
    }
    println!(
        "history: {} events, {:.1} MB encoded ({:.0} bytes/event), generated in {:.1?}; {} constructed config changes checked against decide",
        stored.len(),
        bytes as f64 / 1e6,
        bytes as f64 / stored.len() as f64,
        t.elapsed(),
        checks
    );
    println!("mix: {kinds:?}");

    // OM_BENCH_FOLD_ONLY=1: only the fold-only timing (to compare changes of the fold).
    let fold_only = std::env::var_os("OM_BENCH_FOLD_ONLY").is_some();
    let mut last = State::default();
    let (best, median) = time(if fold_only { 1 } else { DECODE_ROUNDS }, || {
        let mut st = State::default();
        let t = Instant::now();
        for m in &stored {
            black_box(fold_stored(&mut st, m));
        }
        let d = t.elapsed();
        last = st;
        d
    });
    let decode_fold = rate(stored.len(), best);
    let expected_seq = stored.len() as u64;
    assert_eq!((last.seq, last.skipped), (expected_seq, 0));
    println!(
        "decode + fold (fold_stored):  best {:>9.0} events/s ({best:.2?}), median {:>9.0} events/s ({median:.2?})",
        rate(stored.len(), best),
        rate(stored.len(), median),
    );

    // Decode alone, on every 4th message (the mix is the same throughout).
    let step = if fold_only { stored.len() } else { 4 };
    let sample: Vec<&Stored> = stored.iter().step_by(step).collect();
    let (best, _) = time(1, || {
        let t = Instant::now();
        for m in &sample {
            black_box(Envelope::decode(black_box(&m.payload)).ok());
        }
        t.elapsed()
    });
    println!(
        "decode only (Envelope::decode): {:>9.0} events/s ({best:.2?} for {} events)",
        rate(sample.len(), best),
        sample.len()
    );

    // Decode time by kind (same sample): where the decode time goes.
    let mut by_kind = std::collections::BTreeMap::<&str, (usize, usize, Duration)>::new();
    let step_env = step;
    for (m, env) in sample.iter().zip(envelopes.iter().step_by(step_env)) {
        let t = Instant::now();
        black_box(Envelope::decode(black_box(&m.payload)).ok());
        let e = by_kind.entry(env.event.kind()).or_default();
        e.0 += 1;
        e.1 += m.payload.len();
        e.2 += t.elapsed();
    }
    for (kind, (n, bytes, d)) in &by_kind {
        println!(
            "  decode {kind:<16} {n:>7} events  {:>4} bytes/event  {:>6.2} µs/event",
            bytes / n,
            d.as_secs_f64() * 1e6 / *n as f64
        );
    }

    let (best, median) = time(FOLD_ROUNDS, || {
        let mut st = State::default();
        let t = Instant::now();
        for (m, env) in stored.iter().zip(&envelopes) {
            st.observe(m.seq, &m.subject);
            st.apply(m.seq, env.time_ms, &env.event);
        }
        let d = t.elapsed();
        assert_eq!(st, last, "folding decoded envelopes gives the same state");
        d
    });
    println!(
        "fold only (observe + apply):  best {:>9.0} events/s ({best:.2?}), median {:>9.0} events/s ({median:.2?})",
        rate(stored.len(), best),
        rate(stored.len(), median),
    );
    println!(
        "final state: {} leases, {} reports, {} announcements, {} cluster keys, {} subjects",
        last.leases.len(),
        last.applied.len(),
        last.announced.len(),
        last.config.cluster.len(),
        last.subject_seq.len()
    );
    println!(
        "target: decode + fold >= 500000 events/s: {}",
        if decode_fold >= 500_000.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
