//! Batched progress writes: updates are coalesced per session over a window, and only
//! the last state of a window is written.
//!
//! Every session with something to write has a slot. An update replaces the slot's
//! pending state (last writer wins, in the order the updates took the lock) and, when
//! the slot was idle, schedules a write one window later. A scheduler task collects
//! the slots that are due, sorts them by id, and writes them in chunks of up to
//! `max_batch` sessions per transaction, at most `concurrency` transactions at a time.
//! A slot has at most one write in flight, so states land in order; the next write of
//! a session waits at least a window after the update that opened it, which is after
//! the previous write was taken: at most one write per session per window.
//!
//! A failed write keeps its state pending (unless a newer one arrived, which replaces
//! it) and is retried with exponential backoff; after `max_attempts` consecutive
//! failures the failure is surfaced, with the state it carried: on the session's
//! receipts, on [`subscribe_failures`](super::Store::subscribe_failures), in the
//! counters, and from the next [`flush`](super::Store::flush). Refusals about the data
//! (no such session) are surfaced at once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, broadcast, watch};
use tokio::time::Instant;

use super::Db;
use super::error::{Error, Result};
use super::state::{State, merge_patch};

/// How progress writes are batched.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Updates of one session within this window are coalesced; at most one write per
    /// session per window. `Duration::ZERO` writes as soon as possible (still one write
    /// in flight per session, still grouped into transactions).
    pub window: Duration,
    /// Most sessions written in one transaction.
    pub max_batch: usize,
    /// Most write transactions in flight at once; 0 picks one for the backend
    /// (PostgreSQL: a quarter of the pool, 1 to 4; SQLite: 1).
    pub concurrency: usize,
    /// Attempts of one write before its failure is surfaced.
    pub max_attempts: u32,
    /// First retry delay; doubles on each failure up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            window: Duration::from_millis(350),
            max_batch: 500,
            concurrency: 0,
            max_attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Counters of the progress writer, since the store opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgressStats {
    /// Calls to `progress` and `progress_merge` accepted.
    pub updates_received: u64,
    /// Session states sent to the database (retries included).
    pub writes_issued: u64,
    /// Session states the database acknowledged.
    pub writes_succeeded: u64,
    /// Write transactions (one holds up to `max_batch` sessions).
    pub transactions: u64,
    /// Session writes that failed (each attempt counts).
    pub write_errors: u64,
    /// Failures surfaced after the retries (or at once for a refusal).
    pub failures: u64,
    /// Sessions with a state waiting to be written now.
    pub pending_sessions: u64,
    /// From an update's arrival to the durable write of it (or of a later state of its
    /// session that replaced it), over every update written so far: median, 99th
    /// percentile, and the longest, in milliseconds.
    pub latency_p50_ms: u64,
    pub latency_p99_ms: u64,
    pub latency_max_ms: u64,
}

/// Update-to-durable latencies: 1 ms buckets up to a minute, then one overflow bucket.
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max_ms: u64,
}

impl Histogram {
    const LIMIT_MS: usize = 60_000;

    fn new() -> Histogram {
        Histogram {
            buckets: vec![0; Self::LIMIT_MS + 1],
            count: 0,
            max_ms: 0,
        }
    }

    fn record(&mut self, d: Duration) {
        let ms = d.as_millis() as u64;
        self.buckets[(ms as usize).min(Self::LIMIT_MS)] += 1;
        self.count += 1;
        self.max_ms = self.max_ms.max(ms);
    }

    /// The smallest bucket (ms) that holds the `q` quantile.
    fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return ms as u64;
            }
        }
        self.max_ms
    }
}

/// A progress write that did not land, with the state it carried (None when a merge
/// patch could not even be applied).
#[derive(Debug)]
pub struct ProgressFailure {
    pub session: String,
    /// The update's sequence number (later updates have larger ones).
    pub seq: u64,
    pub attempts: u32,
    pub error: Arc<Error>,
    pub state: Option<State>,
}

/// What is durable for one session: the largest sequence number written, and the last
/// failure surfaced.
#[derive(Debug, Clone, Default)]
struct Durable {
    written: u64,
    failed: Option<(u64, Arc<ProgressFailure>)>,
}

impl Durable {
    /// Some(Ok) when update `seq` (or a later one) is durable, Some(Err) when it failed.
    fn outcome(&self, seq: u64) -> Option<std::result::Result<(), Arc<ProgressFailure>>> {
        if self.written >= seq {
            return Some(Ok(()));
        }
        match &self.failed {
            Some((s, f)) if *s >= seq => Some(Err(f.clone())),
            _ => None,
        }
    }
}

/// A handle on one accepted update. Dropping it is fine (fire and forget);
/// [`Receipt::durable`] waits until the update, or a later one of the same session, is
/// written, or its failure is surfaced.
#[derive(Debug)]
pub struct Receipt {
    seq: u64,
    rx: watch::Receiver<Durable>,
}

impl Receipt {
    /// The update's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Wait until this update is durable (Ok) or has failed for good (the failure).
    pub async fn durable(mut self) -> Result<()> {
        loop {
            if let Some(r) = self.rx.borrow_and_update().outcome(self.seq) {
                return r.map_err(|f| Error::ProgressFailed { failures: vec![f] });
            }
            if self.rx.changed().await.is_err() {
                return match self.rx.borrow().outcome(self.seq) {
                    Some(r) => r.map_err(|f| Error::ProgressFailed { failures: vec![f] }),
                    None => Err(Error::Closed),
                };
            }
        }
    }
}

// ---- the book: every slot, under one lock ------------------------------------------------

struct Pending {
    state: State,
    seq: u64,
    first_at: Instant,
    /// When each update this state stands for arrived (for the latency histogram).
    arrivals: Vec<Instant>,
}

enum Op {
    Replace(State),
    Patch(Value),
}

/// Merge mode's view of a session's current state.
enum Base {
    /// Not known: the next patch starts from the latest state (pending or in flight),
    /// else reads it from the database.
    Unknown,
    Loading(Vec<(u64, Op)>),
    Ready(Value),
}

struct Slot {
    pending: Option<Pending>,
    /// When the pending state is due, and the generation of its heap entry.
    due: Option<(Instant, u64)>,
    writing: bool,
    /// The latest state accepted (pending or in flight).
    latest: Option<State>,
    last_seq: u64,
    /// Consecutive failed attempts.
    failures: u32,
    /// Write as soon as possible (flush, shutdown).
    urgent: bool,
    base: Base,
    durable: watch::Sender<Durable>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            pending: None,
            due: None,
            writing: false,
            latest: None,
            last_seq: 0,
            failures: 0,
            urgent: false,
            base: Base::Unknown,
            durable: watch::Sender::new(Durable::default()),
        }
    }
    fn idle(&self) -> bool {
        self.pending.is_none() && !self.writing && !matches!(self.base, Base::Loading(_))
    }
}

struct Book {
    slots: HashMap<String, Slot>,
    heap: BinaryHeap<Reverse<(Instant, u64, String)>>,
    generation: u64,
    /// When the scheduler will next wake by itself (None: only when notified).
    planned: Option<Instant>,
    shutdown: bool,
    latency: Histogram,
}

impl Book {
    fn new() -> Book {
        Book {
            slots: HashMap::new(),
            heap: BinaryHeap::new(),
            generation: 0,
            planned: None,
            shutdown: false,
            latency: Histogram::new(),
        }
    }

    /// Schedule the slot's pending write at `at`; true when the scheduler must wake.
    fn schedule(&mut self, id: &str, at: Instant, gather: Duration) -> bool {
        self.generation += 1;
        let g = self.generation;
        if let Some(slot) = self.slots.get_mut(id) {
            slot.due = Some((at, g));
        }
        self.heap.push(Reverse((at, g, id.to_owned())));
        self.planned.is_none_or(|p| at + gather < p)
    }
}

#[derive(Default)]
struct Counters {
    updates: AtomicU64,
    writes: AtomicU64,
    written: AtomicU64,
    transactions: AtomicU64,
    write_errors: AtomicU64,
    failures: AtomicU64,
}

struct Shared {
    db: Arc<Db>,
    opts: BatchOptions,
    /// Due writes within this of each other go in one transaction (never early: the
    /// scheduler wakes this long after the earliest is due).
    gather: Duration,
    book: Mutex<Book>,
    wake: Notify,
    seq: AtomicU64,
    permits: Arc<Semaphore>,
    counters: Counters,
    failures: Mutex<Vec<Arc<ProgressFailure>>>,
    failures_tx: broadcast::Sender<Arc<ProgressFailure>>,
    runtime: tokio::runtime::Handle,
}

/// The progress writer of a store: its scheduler task runs until shutdown.
pub(crate) struct Batcher {
    shared: Arc<Shared>,
    worker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Batcher {
    pub(crate) fn start(db: Arc<Db>, opts: BatchOptions, default_concurrency: usize) -> Batcher {
        let concurrency = if opts.concurrency == 0 {
            default_concurrency.max(1)
        } else {
            opts.concurrency
        };
        let gather = (opts.window / 8).min(Duration::from_millis(25));
        let (failures_tx, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            db,
            gather,
            opts: BatchOptions {
                max_batch: opts.max_batch.max(1),
                max_attempts: opts.max_attempts.max(1),
                ..opts
            },
            book: Mutex::new(Book::new()),
            wake: Notify::new(),
            seq: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(concurrency)),
            counters: Counters::default(),
            failures: Mutex::new(Vec::new()),
            failures_tx,
            runtime: tokio::runtime::Handle::current(),
        });
        let worker = tokio::spawn(schedule_loop(shared.clone()));
        Batcher {
            shared,
            worker: Mutex::new(Some(worker)),
        }
    }

    pub(crate) fn submit(&self, id: &str, state: State) -> Result<Receipt> {
        let sh = &self.shared;
        let mut book = sh.lock();
        if book.shutdown {
            return Err(Error::Closed);
        }
        let seq = sh.next_seq();
        let slot = book.slots.entry(id.to_owned()).or_insert_with(Slot::new);
        slot.last_seq = seq;
        let rx = slot.durable.subscribe();
        match &mut slot.base {
            Base::Loading(ops) => ops.push((seq, Op::Replace(state))),
            base => {
                *base = Base::Unknown;
                sh.accept(&mut book, id, state, seq);
            }
        }
        drop(book);
        sh.counters.updates.fetch_add(1, Ordering::Relaxed);
        Ok(Receipt { seq, rx })
    }

    pub(crate) fn submit_patch(&self, id: &str, patch: Value) -> Result<Receipt> {
        let sh = &self.shared;
        let mut book = sh.lock();
        if book.shutdown {
            return Err(Error::Closed);
        }
        let seq = sh.next_seq();
        let slot = book.slots.entry(id.to_owned()).or_insert_with(Slot::new);
        slot.last_seq = seq;
        let rx = slot.durable.subscribe();
        let r = match (&mut slot.base, &slot.latest) {
            (Base::Loading(ops), _) => {
                ops.push((seq, Op::Patch(patch)));
                Ok(())
            }
            (Base::Unknown, None) => {
                slot.base = Base::Loading(vec![(seq, Op::Patch(patch))]);
                let (sh2, id2) = (self.shared.clone(), id.to_owned());
                sh.runtime.spawn(load_base(sh2, id2));
                Ok(())
            }
            _ => sh.apply_patch(&mut book, id, patch, seq),
        };
        let remove = book.slots.get(id).is_some_and(Slot::idle);
        if remove {
            book.slots.remove(id);
        }
        drop(book);
        r?;
        sh.counters.updates.fetch_add(1, Ordering::Relaxed);
        Ok(Receipt { seq, rx })
    }

    /// Write everything pending now and wait for it; the failures surfaced since the
    /// last flush come back as an error.
    pub(crate) async fn flush(&self) -> Result<()> {
        let waits = self.shared.make_urgent();
        for (seq, rx) in waits {
            let _ = Receipt { seq, rx }.durable().await;
        }
        let failures = std::mem::take(
            &mut *self
                .shared
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if failures.is_empty() {
            Ok(())
        } else {
            Err(Error::ProgressFailed { failures })
        }
    }

    /// Flush, stop accepting updates, and wait for the scheduler to finish.
    pub(crate) async fn close(&self) -> Result<()> {
        let flushed = self.flush().await;
        self.shared.lock().shutdown = true;
        self.shared.make_urgent();
        self.shared.wake.notify_one();
        let worker = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = worker {
            let _ = w.await;
        }
        let late = std::mem::take(
            &mut *self
                .shared
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        match (flushed, late.is_empty()) {
            (Err(Error::ProgressFailed { mut failures }), _) => {
                failures.extend(late);
                Err(Error::ProgressFailed { failures })
            }
            (Ok(()), false) => Err(Error::ProgressFailed { failures: late }),
            (r, _) => r,
        }
    }

    pub(crate) fn stats(&self) -> ProgressStats {
        let c = &self.shared.counters;
        let book = self.shared.lock();
        let pending = book.slots.values().filter(|s| s.pending.is_some()).count() as u64;
        let (p50, p99, max) = (
            book.latency.quantile(0.50),
            book.latency.quantile(0.99),
            book.latency.max_ms,
        );
        drop(book);
        ProgressStats {
            updates_received: c.updates.load(Ordering::Relaxed),
            writes_issued: c.writes.load(Ordering::Relaxed),
            writes_succeeded: c.written.load(Ordering::Relaxed),
            transactions: c.transactions.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            pending_sessions: pending,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            latency_max_ms: max,
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<ProgressFailure>> {
        self.shared.failures_tx.subscribe()
    }
}

impl Drop for Batcher {
    /// Best effort: the scheduler keeps running on the runtime, writes what is pending
    /// and stops. Nothing is written if the runtime itself shuts down first.
    fn drop(&mut self) {
        let mut book = self.shared.lock();
        if book.shutdown {
            return;
        }
        book.shutdown = true;
        let pending = book.slots.values().filter(|s| !s.idle()).count();
        drop(book);
        if pending > 0 {
            tracing::warn!(
                pending,
                "session store dropped without close(): writing {pending} session(s) of pending progress in the background"
            );
        }
        self.shared.make_urgent();
        self.shared.wake.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Make `state` the slot's pending state (the slot exists).
    fn accept(&self, book: &mut Book, id: &str, state: State, seq: u64) {
        let now = Instant::now();
        let slot = book.slots.get_mut(id).expect("slot exists");
        slot.latest = Some(state.clone());
        slot.last_seq = slot.last_seq.max(seq);
        let schedule = match &mut slot.pending {
            Some(p) => {
                p.state = state;
                p.seq = seq;
                p.arrivals.push(now);
                false
            }
            None => {
                slot.pending = Some(Pending {
                    state,
                    seq,
                    first_at: now,
                    arrivals: vec![now],
                });
                !slot.writing
            }
        };
        if schedule {
            let at = if slot.urgent || book.shutdown {
                now
            } else {
                now + self.opts.window
            };
            if book.schedule(id, at, self.gather) {
                self.wake.notify_one();
            }
        }
    }

    /// Patch the session's current state (base known, or the latest state accepted).
    fn apply_patch(&self, book: &mut Book, id: &str, patch: Value, seq: u64) -> Result<()> {
        let slot = book.slots.get_mut(id).expect("slot exists");
        let mut value = match (&slot.base, &slot.latest) {
            (Base::Ready(v), _) => v.clone(),
            (_, Some(s)) => s.to_value_lossless().map_err(|m| Error::MergeUnsupported {
                id: id.to_owned(),
                message: m,
            })?,
            (_, None) => Value::Null,
        };
        merge_patch(&mut value, &patch);
        let state = State::from_value(&value).map_err(|e| Error::InvalidState {
            id: id.to_owned(),
            source: e,
        })?;
        slot.base = Base::Ready(value);
        self.accept(book, id, state, seq);
        Ok(())
    }

    /// Mark every busy slot urgent and due now; the receipts to wait on.
    fn make_urgent(&self) -> Vec<(u64, watch::Receiver<Durable>)> {
        let mut book = self.lock();
        let now = Instant::now();
        let mut waits = Vec::new();
        let mut due_now = Vec::new();
        for (id, slot) in book.slots.iter_mut() {
            if slot.idle() {
                continue;
            }
            slot.urgent = true;
            waits.push((slot.last_seq, slot.durable.subscribe()));
            if slot.pending.is_some() && !slot.writing {
                due_now.push(id.clone());
            }
        }
        for id in due_now {
            book.schedule(&id, now, self.gather);
        }
        drop(book);
        self.wake.notify_one();
        waits
    }

    /// Surface a failure: receipts, the failure list and channel, counters, the log.
    fn surface(&self, slot: &mut Slot, f: ProgressFailure) {
        let f = Arc::new(f);
        tracing::error!(
            session = %f.session,
            attempts = f.attempts,
            code = f.error.code(),
            "progress write failed: {}",
            crate::redact::known_secrets(&f.error.to_string())
        );
        // Listed before the receipts see it: a flush woken by the receipt finds it.
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(f.clone());
        let _ = self.failures_tx.send(f.clone());
        slot.durable
            .send_modify(|d| d.failed = Some((f.seq, f.clone())));
    }

    fn backoff(&self, failures: u32) -> Duration {
        let f = self
            .opts
            .backoff
            .saturating_mul(1 << failures.saturating_sub(1).min(16));
        f.min(self.opts.max_backoff)
    }

    /// Take what is due: (the chunks to write, when to wake next, whether to stop).
    fn take_due(&self) -> (Vec<(String, Pending)>, Option<Instant>, bool) {
        let mut book = self.lock();
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(Reverse((at, g, _))) = book.heap.peek() {
            if *at > now {
                break;
            }
            let (at, g) = (*at, *g);
            let Some(Reverse((_, _, id))) = book.heap.pop() else {
                break;
            };
            let Some(slot) = book.slots.get_mut(&id) else {
                continue;
            };
            if slot.due != Some((at, g)) || slot.writing {
                continue;
            }
            slot.due = None;
            if let Some(p) = slot.pending.take() {
                slot.writing = true;
                slot.urgent = false;
                due.push((id, p));
            }
        }
        let next = book
            .heap
            .peek()
            .map(|Reverse((at, _, _))| *at + self.gather);
        book.planned = next;
        let stop = book.shutdown && book.slots.is_empty();
        (due, next, stop)
    }

    /// Record the outcome of one session's write.
    fn finish(&self, book: &mut Book, id: &str, p: Pending, outcome: Option<Arc<Error>>) -> bool {
        let now = Instant::now();
        let shutdown = book.shutdown;
        let window = self.opts.window;
        let Book { slots, latency, .. } = book;
        let Some(slot) = slots.get_mut(id) else {
            return false;
        };
        slot.writing = false;
        let mut retry_at = None;
        match outcome {
            None => {
                self.counters.written.fetch_add(1, Ordering::Relaxed);
                for a in &p.arrivals {
                    latency.record(now - *a);
                }
                slot.failures = 0;
                slot.durable
                    .send_modify(|d| d.written = d.written.max(p.seq));
            }
            Some(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                slot.failures += 1;
                if !e.is_transient() || slot.failures >= self.opts.max_attempts {
                    let attempts = slot.failures;
                    slot.failures = 0;
                    self.surface(
                        slot,
                        ProgressFailure {
                            session: id.to_owned(),
                            seq: p.seq,
                            attempts,
                            error: e,
                            state: Some(p.state),
                        },
                    );
                } else {
                    tracing::debug!(
                        session = id,
                        attempt = slot.failures,
                        "progress write failed, retrying: {e}"
                    );
                    match &mut slot.pending {
                        None => slot.pending = Some(p),
                        // A newer state replaces this one: it stands for its updates too.
                        Some(newer) => {
                            newer.first_at = newer.first_at.min(p.first_at);
                            let mut arrivals = p.arrivals;
                            arrivals.append(&mut newer.arrivals);
                            newer.arrivals = arrivals;
                        }
                    }
                    retry_at = Some(now + self.backoff(slot.failures));
                }
            }
        }
        let next = slot.pending.as_ref().map(|pending| match retry_at {
            Some(t) => t,
            None if slot.urgent || shutdown => now,
            None => (pending.first_at + window).max(now),
        });
        let idle = slot.idle();
        match next {
            Some(at) => book.schedule(id, at, self.gather),
            None => {
                if idle {
                    book.slots.remove(id);
                }
                false
            }
        }
    }
}

async fn schedule_loop(sh: Arc<Shared>) {
    loop {
        let (mut due, next, stop) = sh.take_due();
        if stop {
            break;
        }
        if !due.is_empty() {
            // Rows are locked in id order, whatever the transaction.
            due.sort_by(|a, b| a.0.cmp(&b.0));
            let mut rest = due;
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(sh.opts.max_batch));
                let chunk = std::mem::replace(&mut rest, tail);
                sh.runtime.spawn(write_chunk(sh.clone(), chunk));
            }
        }
        match next {
            Some(t) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(t) => {}
                    _ = sh.wake.notified() => {}
                }
            }
            None => sh.wake.notified().await,
        }
    }
}

async fn write_chunk(sh: Arc<Shared>, chunk: Vec<(String, Pending)>) {
    let permit = sh.permits.clone().acquire_owned().await;
    let at = super::now();
    let items: Vec<(String, State)> = chunk
        .iter()
        .map(|(id, p)| (id.clone(), p.state.clone()))
        .collect();
    sh.counters
        .writes
        .fetch_add(items.len() as u64, Ordering::Relaxed);
    sh.counters.transactions.fetch_add(1, Ordering::Relaxed);
    let result = sh.db.write_states(items, at).await;
    drop(permit);
    let outcomes: Vec<Option<Arc<Error>>> = match result {
        Ok(v) => v.into_iter().map(|o| o.map(Arc::new)).collect(),
        Err(e) => {
            let e = Arc::new(e);
            chunk.iter().map(|_| Some(e.clone())).collect()
        }
    };
    let mut book = sh.lock();
    let mut wake = false;
    for ((id, p), o) in chunk.into_iter().zip(outcomes) {
        wake |= sh.finish(&mut book, &id, p, o);
    }
    let stop = book.shutdown && book.slots.is_empty();
    drop(book);
    if wake || stop {
        sh.wake.notify_one();
    }
}

/// Merge mode: read the session's state once, then apply the patches that queued up
/// meanwhile, in their order of arrival.
async fn load_base(sh: Arc<Shared>, id: String) {
    let loaded = sh.db.state(&id).await;
    let mut book = sh.lock();
    let Some(slot) = book.slots.get_mut(&id) else {
        return;
    };
    let ops = match std::mem::replace(&mut slot.base, Base::Unknown) {
        Base::Loading(ops) => ops,
        other => {
            slot.base = other;
            return;
        }
    };
    let base = match loaded {
        Ok(None) => Ok(Value::Null),
        Ok(Some(s)) => s.to_value_lossless().map_err(|m| Error::MergeUnsupported {
            id: id.clone(),
            message: m,
        }),
        Err(e) => Err(e),
    };
    let mut base_err = match base {
        Ok(v) => {
            slot.base = Base::Ready(v);
            None
        }
        Err(e) => Some(Arc::new(e)),
    };
    for (seq, op) in ops {
        let r = match op {
            Op::Replace(s) => {
                if let Some(slot) = book.slots.get_mut(&id) {
                    slot.base = Base::Unknown;
                }
                base_err = None;
                sh.accept(&mut book, &id, s, seq);
                Ok(())
            }
            Op::Patch(p) => match &base_err {
                Some(e) => Err(e.clone()),
                None => sh.apply_patch(&mut book, &id, p, seq).map_err(Arc::new),
            },
        };
        if let Err(e) = r {
            if let Some(slot) = book.slots.get_mut(&id) {
                sh.surface(
                    slot,
                    ProgressFailure {
                        session: id.clone(),
                        seq,
                        attempts: 0,
                        error: e,
                        state: None,
                    },
                );
            }
        }
    }
    if book.slots.get(&id).is_some_and(Slot::idle) {
        book.slots.remove(&id);
    }
    drop(book);
    sh.wake.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile(0.99), 0);
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!((h.quantile(0.5), h.quantile(0.99), h.max_ms), (50, 99, 100));
        h.record(Duration::from_secs(3600));
        assert_eq!(h.max_ms, 3_600_000);
        assert_eq!(h.quantile(1.0), Histogram::LIMIT_MS as u64);
    }

    #[test]
    fn durable_outcomes() {
        let f = Arc::new(ProgressFailure {
            session: "s".into(),
            seq: 5,
            attempts: 1,
            error: Arc::new(Error::Closed),
            state: None,
        });
        let d = Durable {
            written: 3,
            failed: Some((5, f)),
        };
        assert!(matches!(d.outcome(2), Some(Ok(()))));
        assert!(matches!(d.outcome(4), Some(Err(_))));
        assert!(matches!(d.outcome(5), Some(Err(_))));
        assert!(d.outcome(6).is_none());
    }
}
