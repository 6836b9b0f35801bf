//! `mpmirror daemon`: syncs on a schedule, signals, systemd notify, health, metrics and
//! notifications.
//!
//! Runs never overlap: the loop awaits each run before arming the next slot. A failed
//! run is logged, counted and notified, and the next slot comes as usual; after 45009
//! (daily quota spent) the next run waits for Beijing midnight. SIGTERM/SIGINT cancel
//! the run in flight (it is recorded as interrupted) and exit 0; SIGHUP reloads the
//! config and keeps the old one if the new one is invalid.

mod metrics;
mod notify;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, RunStatus};
use crate::config::{Config, CronSchedule, Schedule, parse_zone};
use crate::sync::{self, SyncOptions, SyncReport};

pub use metrics::Metrics;
pub use notify::Notifier;

/// The schedule used when the config has no `[schedule]`: 03:30 Beijing time, after
/// the quotas reset at midnight and before the working day.
pub const DEFAULT_CRON: &str = "30 3 * * *";

/// What stops the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The schedule is invalid.
    #[error("invalid schedule: {0}")]
    Schedule(String),
    /// The metrics address cannot be bound.
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers cannot be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// When runs happen.
#[derive(Debug, Clone)]
enum Slots {
    Cron(Box<CronSchedule>),
    Every(Duration),
}

impl Slots {
    fn from_config(schedule: &Schedule) -> Result<Self, DaemonError> {
        if let Some(every) = schedule.every {
            return Ok(Self::Every(every));
        }
        let expression = schedule.cron.as_deref().unwrap_or(DEFAULT_CRON);
        CronSchedule::parse(expression, schedule.timezone.as_deref())
            .map(|cron| Self::Cron(Box::new(cron)))
            .map_err(DaemonError::Schedule)
    }

    /// The next start after `now`, given when the last run started.
    fn next(&self, now: i64, last_start: Option<i64>) -> i64 {
        match self {
            Self::Every(every) => {
                let every = every.as_secs().max(1) as i64;
                last_start.map_or(now + every, |last| (last + every).max(now))
            }
            Self::Cron(cron) => cron.next_after(now).unwrap_or(now + 86_400),
        }
    }
}

/// The first second of the next Beijing (UTC+8) day, plus a minute's margin: when
/// WeChat's daily quotas reset.
pub fn next_quota_reset(unix: i64) -> i64 {
    const OFFSET: i64 = 8 * 3600;
    ((unix + OFFSET).div_euclid(86_400) + 1) * 86_400 - OFFSET + 60
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Why the backup is unhealthy, if it is: the newest finished run must be ok and have
/// finished within `max_age`.
///
/// # Errors
/// The reason, in words.
pub fn health_problem(catalog: &Catalog, max_age: Duration, now: i64) -> Result<(), String> {
    let runs = catalog.runs(20).map_err(|err| err.to_string())?;
    let Some(last) = runs.iter().find(|r| r.status != RunStatus::Running) else {
        return Err("no run has finished yet".to_owned());
    };
    if last.status != RunStatus::Ok {
        return Err(format!(
            "the last run (#{}) ended {}{}",
            last.id,
            last.status.as_str(),
            last.message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    let finished = last.finished_at.unwrap_or(last.started_at);
    let age = now - finished;
    if age > max_age.as_secs() as i64 {
        return Err(format!(
            "the last ok run (#{}) finished {} ago, longer than health.max_age ({})",
            last.id,
            humantime::format_duration(Duration::from_secs(age.max(0) as u64)),
            humantime::format_duration(max_age)
        ));
    }
    Ok(())
}

fn local_time(unix: i64, schedule: &Schedule) -> String {
    let zone = parse_zone(schedule.timezone.as_deref()).unwrap_or(chrono_tz::Asia::Shanghai);
    DateTime::<Utc>::from_timestamp(unix, 0).map_or_else(
        || unix.to_string(),
        |t| {
            t.with_timezone(&zone)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string()
        },
    )
}

fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!(error = %err, "sd_notify failed");
    }
}

/// What the daemon remembers between runs.
struct State {
    config: Config,
    slots: Slots,
    last_start: Option<i64>,
    last_status: Option<RunStatus>,
    quota_reset: Option<i64>,
    failing_since: Option<i64>,
    stale_notified: bool,
}

impl State {
    fn next_run(&self, now: i64) -> i64 {
        let jitter = self
            .config
            .schedule
            .jitter
            .map_or(0, |j| fastrand::u64(0..=j.as_secs()) as i64);
        slot_after(&self.slots, now, self.last_start, self.quota_reset) + jitter
    }
}

fn slot_after(slots: &Slots, now: i64, last_start: Option<i64>, quota_reset: Option<i64>) -> i64 {
    let base = slots.next(now, last_start);
    match quota_reset {
        Some(reset) if reset > base => match slots {
            Slots::Cron(_) => slots.next(reset - 1, None),
            Slots::Every(_) => reset,
        },
        _ => base,
    }
}

/// When the next run starts (without jitter): the schedule's next slot after `now`,
/// but not before `quota_reset` when the daily quota ran out.
///
/// # Errors
/// When the schedule is invalid.
pub fn next_start(
    schedule: &Schedule,
    now: i64,
    last_start: Option<i64>,
    quota_reset: Option<i64>,
) -> Result<i64, DaemonError> {
    Ok(slot_after(
        &Slots::from_config(schedule)?,
        now,
        last_start,
        quota_reset,
    ))
}

/// Pings the systemd watchdog at half its interval for as long as the runtime lives,
/// runs included.
fn spawn_watchdog(cancel: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => notify_systemd(&[sd_notify::NotifyState::Watchdog]),
            }
        }
    });
}

/// Runs syncs on the configured schedule until `cancel` or a signal.
///
/// # Errors
/// When the schedule, the metrics address or the signal handlers are unusable.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    cancel: CancellationToken,
) -> Result<u8, DaemonError> {
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("signal received: stopping");
            cancel.cancel();
        });
    }
    let metrics = Metrics::new();
    if let Some(settings) = &config.metrics {
        metrics::serve(metrics.clone(), settings.listen, cancel.clone())
            .await
            .map_err(|source| DaemonError::Metrics {
                addr: settings.listen,
                source,
            })?;
        tracing::info!(listen = %settings.listen, "serving metrics at /metrics");
    }
    let mut state = State {
        slots: Slots::from_config(&config.schedule)?,
        config,
        last_start: None,
        last_status: None,
        quota_reset: None,
        failing_since: None,
        stale_notified: false,
    };
    spawn_watchdog(cancel.clone());
    let mut next = if state.config.schedule.run_at_start {
        sync::unix_now()
    } else {
        state.next_run(sync::unix_now())
    };
    tracing::info!(next_run = %local_time(next, &state.config.schedule), "daemon started");
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    loop {
        let status = format!(
            "next run {}, last run {}",
            local_time(next, &state.config.schedule),
            state.last_status.map_or("none", RunStatus::as_str)
        );
        notify_systemd(&[sd_notify::NotifyState::Status(&status)]);
        check_stale(&mut state, &metrics).await;
        let wait = Duration::from_secs((next - sync::unix_now()).max(0) as u64);
        // Wake at least every minute to check the backup's age for stale alerts.
        let tick = Duration::from_mins(1).min(wait);
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = hangup.recv() => {
                reload(&mut state, &config_path);
                next = state.next_run(sync::unix_now());
                continue;
            }
            () = tokio::time::sleep(tick) => {}
        }
        if sync::unix_now() < next {
            continue;
        }
        run_once(&mut state, &metrics, &cancel).await;
        if cancel.is_cancelled() {
            break;
        }
        next = state.next_run(sync::unix_now());
        tracing::info!(next_run = %local_time(next, &state.config.schedule), "next run armed");
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("daemon stopped");
    Ok(0)
}

fn reload(state: &mut State, path: &std::path::Path) {
    // systemd 253+ wants RELOADING=1 paired with the monotonic time it started.
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify_systemd(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify_systemd(&[sd_notify::NotifyState::Reloading]),
    }
    match Config::load(path)
        .map_err(|err| crate::error_chain(&err))
        .and_then(|config| {
            let slots = Slots::from_config(&config.schedule).map_err(|err| err.to_string())?;
            Ok((config, slots))
        }) {
        Ok((config, slots)) => {
            if config.data_dir != state.config.data_dir {
                tracing::warn!("data_dir changed: the new one is used from the next run");
            }
            state.config = config;
            state.slots = slots;
            tracing::info!(path = %path.display(), "config reloaded");
        }
        Err(problem) => {
            tracing::error!(%problem, "the new config is invalid; keeping the old one");
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Ready]);
}

async fn run_once(state: &mut State, metrics: &Metrics, cancel: &CancellationToken) {
    let started = sync::unix_now();
    state.last_start = Some(started);
    notify_systemd(&[sd_notify::NotifyState::Status("sync running")]);
    let result = sync::run(&state.config, &SyncOptions::default(), cancel).await;
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            let problem = crate::error_chain(&err);
            tracing::error!(%problem, "run could not start");
            metrics.record_failed_start();
            state.last_status = Some(RunStatus::Aborted);
            on_outcome(state, RunStatus::Aborted, &problem).await;
            return;
        }
    };
    metrics.record_run(&report);
    refresh_catalog_metrics(state, metrics).await;
    state.last_status = Some(report.status);
    state.quota_reset = report
        .accounts
        .iter()
        .any(|a| a.quota_exhausted)
        .then(|| next_quota_reset(sync::unix_now()));
    if state.quota_reset.is_some() {
        tracing::warn!("daily quota reached: the next run waits for Beijing midnight");
    }
    if report.status != RunStatus::Interrupted {
        let message = describe(&report);
        on_outcome(state, report.status, &message).await;
    }
}

fn describe(report: &SyncReport) -> String {
    let c = &report.counts;
    let mut text = format!(
        "run {} {}: fetched {}, failed {}, deleted {}",
        report.run_id,
        report.status.as_str(),
        c.fetched,
        c.failed,
        c.deleted
    );
    if let Some(message) = &report.message {
        text.push_str(" — ");
        text.push_str(message);
    }
    text
}

async fn on_outcome(state: &mut State, status: RunStatus, message: &str) {
    let notifier = state.config.notify.as_ref().map(Notifier::new);
    if status == RunStatus::Ok {
        if state.failing_since.take().is_some()
            && let Some(notifier) = &notifier
        {
            notifier.send(notify::Event::Recovery, message).await;
        }
        state.stale_notified = false;
        return;
    }
    state.failing_since.get_or_insert(sync::unix_now());
    if let Some(notifier) = &notifier {
        notifier.send(notify::Event::Failure, message).await;
    }
}

async fn check_stale(state: &mut State, metrics: &Metrics) {
    if state.stale_notified {
        return;
    }
    let Some(notify) = state.config.notify.clone() else {
        return;
    };
    let path = state.config.data_dir.join(sync::CATALOG_FILE);
    if !path.is_file() {
        return;
    }
    let max_age = state.config.health.max_age;
    let problem = tokio::task::spawn_blocking(move || {
        let catalog = Catalog::open_read_only(&path).map_err(|e| e.to_string())?;
        let runs = catalog.last_ok_run().map_err(|e| e.to_string())?;
        let age = runs.map(|r| sync::unix_now() - r.finished_at.unwrap_or(r.started_at));
        Ok::<_, String>(age.filter(|age| *age > max_age.as_secs() as i64))
    })
    .await;
    if let Ok(Ok(Some(age))) = problem {
        metrics.record_stale();
        let text = format!(
            "the backup has not succeeded for {}",
            humantime::format_duration(Duration::from_secs(age.max(0) as u64))
        );
        Notifier::new(&notify)
            .send(notify::Event::Stale, &text)
            .await;
        state.stale_notified = true;
    }
}

async fn refresh_catalog_metrics(state: &State, metrics: &Metrics) {
    let path = state.config.data_dir.join(sync::CATALOG_FILE);
    let summary = tokio::task::spawn_blocking(move || {
        Catalog::open_read_only(&path).and_then(|catalog| catalog.summary())
    })
    .await;
    match summary {
        Ok(Ok(summary)) => metrics.record_catalog(&summary),
        Ok(Err(err)) => tracing::warn!(error = %err, "cannot read the catalog for metrics"),
        Err(err) => tracing::warn!(error = %err, "cannot read the catalog for metrics"),
    }
}
