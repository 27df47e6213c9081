//! Fault injection, for the fault suite (`just faults`, `tests/it/faults.rs`): named
//! moments where a process kills itself or a worker panics, switched on by an
//! environment variable and compiled into every build, so that the binaries under
//! test are the binaries shipped. Unset, each point is one lookup of a variable.

/// `SESSIONDB_FAULT_KILL=<point>` makes a rollback kill itself with SIGKILL at that
/// point of its first round — `journal` (the journal written, nothing else), `staging`
/// (half the temporary files written), `sealed` (the rows written and sealed, not
/// committed), `committed` (the rows committed, no file renamed), `installing` (half
/// the files renamed), `done` (the journal done, the ledger not yet told) — so that
/// each moment is proven to be finished or undone by the next run.
pub fn kill_point(point: &str, round: u32) {
    if round == 1 && std::env::var_os("SESSIONDB_FAULT_KILL").is_some_and(|v| v == point) {
        tracing::warn!("SESSIONDB_FAULT_KILL={point}: killing this process");
        // SAFETY: kill of this very process.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// `SESSIONDB_FAULT_PANIC=<stage>` makes that stage of the source scan panic on its
/// second batch — `read` (the SQLite rows), `stamp`, `ask` (the ledger's stamps),
/// `resolve` (the state files) — so that a stage's panic is proven to fail the run,
/// never to end the scan early as if the store had no more sessions.
pub fn panic_point(stage: &str, batch: u64) {
    if batch == 1 && std::env::var_os("SESSIONDB_FAULT_PANIC").is_some_and(|v| v == stage) {
        panic!("SESSIONDB_FAULT_PANIC={stage}: the scan's {stage} stage panics");
    }
}

/// `SESSIONDB_FAULT_APPEND=<point>=<path>` appends a space to the file at `path` when
/// the process reaches `point` — `backup` (a backup begins, after the fingerprint it
/// starts from) — as the application writing to the store at that moment would, so
/// that a write between a planning pass and its backup is proven to be seen.
/// `SESSIONDB_FAULT_APPEND_TEXT` appends that text instead (a state file that stops
/// being JSON, say).
pub fn append_point(point: &str) {
    let Some(v) = std::env::var_os("SESSIONDB_FAULT_APPEND") else {
        return;
    };
    let v = v.to_string_lossy().into_owned();
    let Some(path) = v.strip_prefix(point).and_then(|r| r.strip_prefix('=')) else {
        return;
    };
    tracing::warn!("SESSIONDB_FAULT_APPEND={point}: appending to {path}");
    let appended = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| {
            let text = std::env::var_os("SESSIONDB_FAULT_APPEND_TEXT");
            let text = text
                .as_deref()
                .map_or(b" ".as_slice(), |t| t.as_encoded_bytes());
            std::io::Write::write_all(&mut f, text)
        });
    if let Err(e) = appended {
        tracing::warn!("SESSIONDB_FAULT_APPEND: {path}: {e}");
    }
}
