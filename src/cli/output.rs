//! What the commands print: summaries on stdout, the progress line on stderr.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::PROGRESS_INTERVAL;
use crate::catalog::{RunRecord, TypeSummary};
use crate::sync::{DryRunReport, Progress, SyncReport};

/// Bytes as a short human figure, e.g. `12.3 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whether a progress line is on screen, so log lines clear it before printing.
static PROGRESS_SHOWN: AtomicBool = AtomicBool::new(false);

/// Stderr for log lines: clears the progress line first, so the two never mix.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut stderr = std::io::stderr().lock();
        if PROGRESS_SHOWN.load(Ordering::Relaxed) {
            stderr.write_all(b"\r\x1b[2K")?;
        }
        stderr.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A progress line redrawn on stderr until stopped.
pub struct ProgressLine {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ProgressLine {
    /// Starts drawing `progress`.
    pub fn start(progress: Arc<Progress>) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(draw(progress, stop.clone()));
        Self { stop, task }
    }

    /// Stops and clears the line.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn draw(progress: Arc<Progress>, stop: CancellationToken) {
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let (listed, queued, fetched, failed, bytes) = progress.snapshot();
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "listed {listed}  fetched {fetched}/{queued}  failed {failed}  {} ({}/s)",
            human_bytes(bytes),
            human_bytes((bytes as f64 / elapsed) as u64)
        );
        let mut stderr = std::io::stderr().lock();
        let _ = write!(stderr, "\r\x1b[2K{line}");
        let _ = stderr.flush();
        PROGRESS_SHOWN.store(true, Ordering::Relaxed);
    }
    let mut stderr = std::io::stderr().lock();
    PROGRESS_SHOWN.store(false, Ordering::Relaxed);
    let _ = write!(stderr, "\r\x1b[2K");
    let _ = stderr.flush();
}

/// Prints the end-of-run summary.
pub fn print_sync_report(report: &SyncReport) {
    println!("run {}: {}", report.run_id, report.status.as_str());
    for account in &report.accounts {
        let c = &account.counts;
        println!(
            "  {}: {} — listed {}, new {}, changed {}, deleted {}, fetched {}, failed {}, {}, {} API calls",
            account.account,
            account.status.as_str(),
            c.listed,
            c.new,
            c.changed,
            c.deleted,
            c.fetched,
            c.failed,
            human_bytes(c.bytes),
            c.api_calls
        );
        if let Some(message) = &account.message {
            println!("    {message}");
        }
    }
}

/// Prints what `sync --dry-run` found.
pub fn print_dry_run(reports: &[DryRunReport]) {
    println!("dry run: nothing was fetched or written");
    for report in reports {
        println!("{}:", report.account);
        for (endpoint, quota) in &report.quotas {
            match quota {
                Some(q) => println!(
                    "  quota {endpoint}: {} of {} left today",
                    q.remain, q.daily_limit
                ),
                None => println!("  quota {endpoint}: unknown (quota/get not available)"),
            }
        }
        let mut calls = 0;
        for kind in &report.kinds {
            calls += kind.fetch_calls;
            let known = if kind.known_bytes > 0 {
                format!(", {} known", human_bytes(kind.known_bytes))
            } else {
                String::new()
            };
            println!(
                "  {:<5} listed {:>6} ({} listing calls{}): would fetch {} new, {} changed, {} missing — {} get_material calls{known}",
                kind.kind,
                kind.listed,
                kind.listing_calls,
                if kind.complete {
                    ""
                } else {
                    ", list changed while paged"
                },
                kind.new,
                kind.changed,
                kind.missing,
                kind.fetch_calls
            );
        }
        let left = report
            .quotas
            .iter()
            .find(|(e, _)| *e == "get_material")
            .and_then(|(_, q)| q.map(|q| q.remain));
        match left {
            Some(left) => println!("  total: {calls} get_material calls, {left} left today"),
            None => println!("  total: {calls} get_material calls"),
        }
        if let Some(error) = &report.error {
            println!("  incomplete: {error}");
        }
    }
}

/// Prints `status`.
pub fn print_status(data_dir: &Path, summary: &[TypeSummary], runs: &[RunRecord]) {
    println!("data_dir {}", data_dir.display());
    println!(
        "{:<12} {:<6} {:>8} {:>8} {:>7} {:>11} {:>8} {:>11}",
        "account", "type", "listed", "stored", "failed", "unavailable", "deleted", "size"
    );
    for row in summary {
        println!(
            "{:<12} {:<6} {:>8} {:>8} {:>7} {:>11} {:>8} {:>11}",
            row.account,
            row.kind,
            row.present,
            row.stored,
            row.failed,
            row.unavailable,
            row.deleted,
            human_bytes(row.bytes)
        );
    }
    println!("last runs:");
    for run in runs {
        let started = chrono::DateTime::from_timestamp(run.started_at, 0).map_or_else(
            || run.started_at.to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        );
        println!(
            "  #{} started {started} {}: fetched {}, failed {}, {} API calls{}",
            run.id,
            run.status.as_str(),
            run.counts.fetched,
            run.counts.failed,
            run.counts.api_calls,
            run.message
                .as_ref()
                .map(|m| format!(" — {m}"))
                .unwrap_or_default()
        );
    }
}
