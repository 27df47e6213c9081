//! Load benchmark of the runtime store's progress batching against PostgreSQL.
//!
//! N sessions each send R progress updates a second for S seconds, once through
//! `Store::progress` (batched) and once through `Store::put_state` (one write per
//! update), each into a fresh database. Reports updates, database writes, the latency
//! from an update to its durable write (p50/p99), and whether every session's final
//! state landed. Prints a table and writes JSON.
//!
//!   cargo run --release --example store_bench -- --url postgresql://... [--out FILE]
//!
//! `--url` is a superuser URL: the bench creates (and drops) its own databases there.
//! `scripts/bench-store` runs it against a throwaway cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use serde_json::json;
use sessiondb::config::{Config, Env};
use sessiondb::store::{self, BatchOptions, NewSession, Options, Store};
use tokio::sync::mpsc;
use tokio_postgres::NoTls;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// A superuser URL of the PostgreSQL to use (databases are created there).
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Updates per second per session.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 350)]
    window_ms: u64,
    /// `both`, `batched` or `unbatched`.
    #[arg(long, default_value = "both")]
    mode: String,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench/store.json")]
    out: std::path::PathBuf,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
    samples: usize,
}

#[derive(Debug, Serialize)]
struct RunResult {
    mode: &'static str,
    updates: u64,
    /// Session states written to the database.
    writes: u64,
    transactions: u64,
    updates_per_write: f64,
    /// Writes per session per window (the target is at most 1).
    writes_per_session_window: f64,
    latency_ms: Latency,
    lost_final_states: usize,
    failures: u64,
    seconds: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    sessions: usize,
    rate_per_session: u32,
    seconds: u64,
    window_ms: u64,
    runs: Vec<RunResult>,
    targets: Targets,
}

#[derive(Debug, Serialize)]
struct Targets {
    /// Batched: at least 7x fewer writes than updates.
    seven_x_fewer_writes: Option<bool>,
    /// Batched: p99 at most window + 100 ms.
    p99_within_window_plus_100ms: Option<bool>,
    /// Every run: no final state lost.
    zero_lost_final_states: bool,
}

fn state(i: usize, n: u64, total: u64) -> serde_json::Value {
    json!({
        "session": i,
        "n": n,
        "step": format!("step-{}", n / 20),
        "progress": n as f64 / total as f64,
        "message": "processing the next chunk of the uploaded document",
        "tokens": {"in": n * 113, "out": n * 41},
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn latency(mut v: Vec<u32>) -> Latency {
    v.sort_unstable();
    Latency {
        p50: percentile(&v, 0.50),
        p99: percentile(&v, 0.99),
        max: v.last().map(|m| *m as f64 / 1000.0).unwrap_or(0.0),
        samples: v.len(),
    }
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to --url");
    tokio::spawn(conn);
    c
}

fn db_url(admin_url: &str, db: &str) -> String {
    let (head, _) = admin_url.rsplit_once('/').expect("a URL with a database");
    format!("{head}/{db}")
}

async fn fresh_db(args: &Args, name: &str) -> String {
    let c = admin(&args.url).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        c.batch_execute(&sql)
            .await
            .expect("create the bench database");
    }
    db_url(&args.url, name)
}

async fn drop_db(args: &Args, name: &str) {
    let c = admin(&args.url).await;
    let _ = c
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await;
}

async fn open(url: &str, window: Duration) -> Store {
    let dir = std::env::temp_dir().join(format!("store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sessiondb.toml");
    let text =
        "[sessiondb]\nbackend = \"postgres\"\n[postgres]\npool_size = 10\nmax_overflow = 20\n";
    std::fs::write(&path, text).unwrap();
    let env = Env(HashMap::from([("DATABASE_URL".to_owned(), url.to_owned())]));
    let cfg = Config::parse(&path, text, &env).unwrap();
    let opts = Options {
        batch: BatchOptions {
            window,
            ..BatchOptions::default()
        },
        ..Options::default()
    };
    store::open_with(&cfg, &env, opts)
        .await
        .expect("open the store")
}

async fn create_sessions(s: &Store, n: usize) {
    let mut tasks = Vec::new();
    for chunk in 0..10 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..n).step_by(10) {
                s.create(NewSession {
                    id: Some(format!("bench-{i:05}")),
                    user_id: Some("bench".into()),
                    status: Some("running".into()),
                    ..NewSession::default()
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Every session's state in the database against the last update it sent.
async fn lost_final_states(url: &str, last: &HashMap<usize, u64>) -> usize {
    let c = admin(url).await;
    let rows = c
        .query(
            "SELECT session_id, (state->>'n')::bigint FROM session_state",
            &[],
        )
        .await
        .unwrap();
    let got: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    last.iter()
        .filter(|(i, n)| got.get(&format!("bench-{i:05}")) != Some(&(**n as i64)))
        .count()
}

async fn run(args: &Args, batched: bool) -> RunResult {
    let name = if batched {
        "store_bench_batched"
    } else {
        "store_bench_unbatched"
    };
    let url = fresh_db(args, name).await;
    let window = Duration::from_millis(args.window_ms);
    let s = open(&url, window).await;
    create_sessions(&s, args.sessions).await;
    let period = Duration::from_secs(1) / args.rate;
    let duration = Duration::from_secs(args.seconds);
    let total = args.rate as u64 * args.seconds;
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..args.sessions {
        let (s, tx, failures) = (s.clone(), tx.clone(), failures.clone());
        // Spread the sessions' ticks over one period.
        let phase = period * i as u32 / args.sessions as u32;
        tasks.push(tokio::spawn(async move {
            let id = format!("bench-{i:05}");
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut sent: Option<u64> = None;
            let mut n = 0u64;
            loop {
                tick.tick().await;
                if start.elapsed() >= duration {
                    break;
                }
                let t = Instant::now();
                let st = state(i, n, total);
                if batched {
                    // Fire and forget, as an application would; the store measures
                    // each update's latency to its durable write.
                    s.progress(&id, st).expect("progress");
                    sent = Some(n);
                } else {
                    match s.put_state(&id, st).await {
                        Ok(()) => {
                            let _ = tx.send(t.elapsed().as_micros() as u32);
                            sent = Some(n);
                        }
                        Err(_) => {
                            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                n += 1;
            }
            (i, sent, n)
        }));
    }
    drop(tx);
    let mut last = HashMap::new();
    let mut updates = 0u64;
    for t in tasks {
        let (i, sent, n) = t.await.unwrap();
        updates += n;
        if let Some(k) = sent {
            last.insert(i, k);
        }
    }
    let flushed = s.close().await;
    let seconds = start.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(updates as usize);
    while let Some(v) = rx.recv().await {
        lat.push(v);
    }
    let stats = s.progress_stats();
    let (writes, transactions, latency_ms) = if batched {
        let l = Latency {
            p50: stats.latency_p50_ms as f64,
            p99: stats.latency_p99_ms as f64,
            max: stats.latency_max_ms as f64,
            samples: stats.updates_received as usize,
        };
        (stats.writes_issued, stats.transactions, l)
    } else {
        (lat.len() as u64, lat.len() as u64, latency(lat))
    };
    let lost = lost_final_states(&url, &last).await;
    drop(s);
    drop_db(args, name).await;
    if let Err(e) = flushed {
        eprintln!("close: {e}");
    }
    let windows = args.sessions as f64 * duration.as_secs_f64() / window.as_secs_f64();
    RunResult {
        mode: if batched { "batched" } else { "unbatched" },
        updates,
        writes,
        transactions,
        updates_per_write: updates as f64 / writes.max(1) as f64,
        writes_per_session_window: writes as f64 / windows,
        latency_ms,
        lost_final_states: lost,
        failures: failures.load(std::sync::atomic::Ordering::Relaxed) + stats.failures,
        seconds,
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let mut runs = Vec::new();
    if args.mode != "unbatched" {
        eprintln!(
            "batched: {} sessions x {}/s for {} s, window {} ms ...",
            args.sessions, args.rate, args.seconds, args.window_ms
        );
        runs.push(run(&args, true).await);
    }
    if args.mode != "batched" {
        eprintln!(
            "unbatched: {} sessions x {}/s for {} s ...",
            args.sessions, args.rate, args.seconds
        );
        runs.push(run(&args, false).await);
    }
    let b = runs.iter().find(|r| r.mode == "batched");
    let targets = Targets {
        seven_x_fewer_writes: b.map(|r| r.updates_per_write >= 7.0),
        p99_within_window_plus_100ms: b.map(|r| r.latency_ms.p99 <= args.window_ms as f64 + 100.0),
        zero_lost_final_states: runs.iter().all(|r| r.lost_final_states == 0),
    };
    println!(
        "{:<10} {:>9} {:>9} {:>7} {:>10} {:>13} {:>9} {:>9} {:>6} {:>8}",
        "mode",
        "updates",
        "writes",
        "txns",
        "upd/write",
        "w/sess/win",
        "p50 ms",
        "p99 ms",
        "lost",
        "failures"
    );
    for r in &runs {
        println!(
            "{:<10} {:>9} {:>9} {:>7} {:>10.1} {:>13.2} {:>9.1} {:>9.1} {:>6} {:>8}",
            r.mode,
            r.updates,
            r.writes,
            r.transactions,
            r.updates_per_write,
            r.writes_per_session_window,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.lost_final_states,
            r.failures
        );
    }
    println!("targets: {targets:?}");
    let report = Report {
        sessions: args.sessions,
        rate_per_session: args.rate,
        seconds: args.seconds,
        window_ms: args.window_ms,
        runs,
        targets,
    };
    if let Some(dir) = args.out.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).unwrap();
        }
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!("wrote {}", args.out.display());
    let ok = report.targets.zero_lost_final_states
        && report.targets.seven_x_fewer_writes != Some(false)
        && report.targets.p99_within_window_plus_100ms != Some(false);
    std::process::exit(if ok { 0 } else { 1 });
}
