//! One account's part of a run: budgets, listing with consistency checks, the fetch
//! pipeline, deletions, usage accounting, and the account's summary.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::fetch::Job;
use super::listing::{Pass, View};
use super::{SyncOptions, beijing_day, unix_now, with_catalog};
use crate::catalog::{Catalog, Listed, RunCounts, RunStatus};
use crate::config::Limits;
use crate::store::Store;
use crate::wechat::{
    Client, ClientConfig, Endpoint, ErrorClass, MaterialKind, MaterialPage, WechatError,
};

/// Everything an account's run needs.
pub(super) struct AccountContext {
    pub name: String,
    pub client: ClientConfig,
    pub limits: Limits,
    pub catalog: Arc<Mutex<Catalog>>,
    pub store: Store,
    pub run_id: i64,
    pub options: SyncOptions,
}

/// How one account's part of a run ended.
#[derive(Debug, Clone)]
pub struct AccountReport {
    /// The account's name.
    pub account: String,
    /// Its outcome.
    pub status: RunStatus,
    /// Its counts.
    pub counts: RunCounts,
    /// Why it was not ok.
    pub message: Option<String>,
    /// API calls by endpoint name and errcode (0 success, -2 no errcode).
    pub calls: Vec<(&'static str, i64, u64)>,
    /// Whether the platform's daily quota ran out (45009): retry after Beijing midnight.
    pub quota_exhausted: bool,
    /// What is left of this run's budgets, by endpoint name.
    pub budget_left: Vec<(&'static str, u64)>,
    /// Time spent waiting for the rate limiter.
    pub limiter_wait: std::time::Duration,
}

/// Why work stopped early; the first one recorded wins.
#[derive(Debug, Clone)]
pub(super) enum Stop {
    /// A person must act, or the disk failed.
    Abort(String),
    /// The platform's daily quota is spent (45009).
    Quota(String),
    /// Our own quota budget is spent: stop fetching, exit 1.
    Budget(String),
}

/// State shared by the listing and the fetchers of one account.
pub(super) struct Shared {
    pub name: String,
    pub client: Client,
    pub catalog: Arc<Mutex<Catalog>>,
    pub store: Store,
    pub run_id: i64,
    pub options: SyncOptions,
    pub counts: Mutex<RunCounts>,
    pub stop: Mutex<Option<Stop>>,
    /// Cancelled on a signal (interrupted) or an abort of this account.
    pub halt: CancellationToken,
    pub downloads: Arc<Semaphore>,
    /// API calls already added to the catalog's usage, by endpoint.
    pub usage_recorded: Mutex<std::collections::HashMap<&'static str, u64>>,
}

impl Shared {
    pub fn count(&self, update: impl FnOnce(&mut RunCounts)) {
        update(
            &mut self
                .counts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
    }

    /// Records why work stops; an abort also halts everything in flight.
    pub fn stop(&self, stop: Stop) {
        let is_abort = !matches!(stop, Stop::Budget(_));
        {
            let mut slot = self
                .stop
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_none() || (matches!(*slot, Some(Stop::Budget(_))) && is_abort) {
                *slot = Some(stop);
            }
        }
        if is_abort {
            self.halt.cancel();
        }
    }

    /// Aborts the account's work because of `err`; returns the message recorded.
    pub fn abort(&self, err: &dyn std::error::Error) -> String {
        let message = crate::error_chain(err);
        self.stop(Stop::Abort(message.clone()));
        message
    }

    pub fn stopped(&self) -> Option<Stop> {
        self.stop
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Turns a client error that ends the account's work into a stop; true if it did.
    pub fn stop_on(&self, err: &WechatError) -> bool {
        match err.class() {
            ErrorClass::DailyQuota => {
                let advice = err.advice().map(|a| format!(": {a}")).unwrap_or_default();
                self.stop(Stop::Quota(format!("{err}{advice}")));
                true
            }
            ErrorClass::NeedsPerson => {
                let advice = err.advice().map(|a| format!(": {a}")).unwrap_or_default();
                self.stop(Stop::Abort(format!("{err}{advice}")));
                true
            }
            ErrorClass::BudgetSpent => {
                self.stop(Stop::Budget(err.to_string()));
                true
            }
            _ => false,
        }
    }
}

/// Runs one account; never fails, the outcome is in the report.
pub(super) async fn run_account(
    context: AccountContext,
    cancel: CancellationToken,
) -> AccountReport {
    let name = context.name.clone();
    let client = match Client::new(context.client) {
        Ok(client) => client,
        Err(err) => {
            return AccountReport {
                account: name,
                status: RunStatus::Aborted,
                counts: RunCounts::default(),
                message: Some(err.to_string()),
                calls: Vec::new(),
                quota_exhausted: false,
                budget_left: Vec::new(),
                limiter_wait: std::time::Duration::ZERO,
            };
        }
    };
    let shared = Arc::new(Shared {
        name: name.clone(),
        client,
        catalog: context.catalog,
        store: context.store,
        run_id: context.run_id,
        counts: Mutex::new(RunCounts::default()),
        stop: Mutex::new(None),
        halt: cancel.child_token(),
        downloads: Arc::new(Semaphore::new(context.limits.concurrent_downloads)),
        options: context.options,
        usage_recorded: Mutex::new(std::collections::HashMap::new()),
    });
    let done = CancellationToken::new();
    let flusher = spawn_usage_flusher(shared.clone(), done.clone());
    let incomplete = run_stages(&shared, &context.limits).await;
    done.cancel();
    let _ = flusher.await;
    finish(&shared, &cancel, incomplete).await
}

/// Budgets, listing and fetching; returns the types whose listing did not complete.
async fn run_stages(shared: &Arc<Shared>, limits: &Limits) -> Vec<String> {
    if let Err(stop) = set_budgets(shared, limits).await {
        shared.stop(stop);
        return Vec::new();
    }
    let (jobs, receiver) = mpsc::unbounded_channel();
    let fetchers = tokio::spawn(super::fetch::run_fetchers(shared.clone(), receiver));
    let mut incomplete = Vec::new();
    let mut planned = HashSet::new();
    for kind in MaterialKind::ALL {
        if shared.halt.is_cancelled() {
            incomplete.push(kind.as_str().to_owned());
            continue;
        }
        match list_kind(shared, kind, &jobs, &mut planned).await {
            Ok(()) => {}
            Err(reason) => {
                tracing::warn!(account = %shared.name, kind = kind.as_str(), %reason, "listing incomplete; nothing marked deleted");
                incomplete.push(format!("{}: {reason}", kind.as_str()));
            }
        }
    }
    drop(jobs);
    if let Err(err) = fetchers.await {
        shared.stop(Stop::Abort(format!("fetcher task failed: {err}")));
    }
    if !shared.halt.is_cancelled() && shared.stopped().is_none() {
        super::fetch::retry_article_images(shared).await;
    }
    incomplete
}

/// Asks the platform what is left of each daily quota and caps this run's spending so
/// that `quota_reserve` of each limit, and whatever `daily_budget` forbids, stays unused.
async fn set_budgets(shared: &Arc<Shared>, limits: &Limits) -> Result<(), Stop> {
    let today = beijing_day(unix_now());
    for endpoint in [Endpoint::BatchgetMaterial, Endpoint::GetMaterial] {
        let mut budget: Option<u64> = None;
        match shared.client.quota(endpoint).await {
            Ok(quota) => {
                let reserve = (quota.daily_limit as f64 * limits.quota_reserve).ceil() as u64;
                let allowed = quota.remain.saturating_sub(reserve);
                tracing::info!(
                    account = %shared.name,
                    endpoint = endpoint.name(),
                    daily_limit = quota.daily_limit,
                    remain = quota.remain,
                    reserve,
                    allowed,
                    "quota"
                );
                budget = Some(allowed);
            }
            // quota/get has a quota of its own: when it is spent, or the account may
            // not call it (48001), the run goes on under daily_budget alone.
            Err(err) if err.class() == ErrorClass::NeedsPerson && err.errcode() != Some(48001) => {
                let advice = err.advice().map(|a| format!(": {a}")).unwrap_or_default();
                return Err(Stop::Abort(format!("{err}{advice}")));
            }
            Err(err) => {
                tracing::warn!(
                    account = %shared.name,
                    endpoint = endpoint.name(),
                    error = %err,
                    "cannot read the quota; only daily_budget limits this run"
                );
            }
        }
        if let Some(limit) = limits.daily_budget.get(endpoint.name()) {
            let name = shared.name.clone();
            let day = today.clone();
            let used = with_catalog(&shared.catalog, move |c| {
                c.usage(&name, &day, endpoint.name())
            })
            .await
            .map_err(|err| Stop::Abort(crate::error_chain(&err)))?;
            let left = limit.saturating_sub(used);
            budget = Some(budget.map_or(left, |b| b.min(left)));
        }
        if let Some(budget) = budget {
            shared.client.set_budget(endpoint, budget);
        }
    }
    Ok(())
}

/// Pages through one type until a consistent view is seen, recording every page and
/// queueing what needs fetching; marks what a consistent view lacks as deleted.
async fn list_kind(
    shared: &Arc<Shared>,
    kind: MaterialKind,
    jobs: &mpsc::UnboundedSender<Job>,
    planned: &mut HashSet<String>,
) -> Result<(), String> {
    let passes = shared.options.max_listing_passes.max(1);
    for pass in 1..=passes {
        let view = list_once(shared, kind, jobs, planned).await?;
        if view.consistent() {
            let listed = view.seen.len() as u64;
            let deleted = mark_deleted(shared, kind, view.seen).await?;
            shared.count(|c| {
                c.listed += listed;
                c.deleted += deleted;
            });
            return Ok(());
        }
        tracing::warn!(
            account = %shared.name,
            kind = kind.as_str(),
            pass,
            totals = ?view.totals,
            duplicates = view.duplicates,
            distinct = view.seen.len(),
            "the list changed while it was paged; paging it again"
        );
    }
    Err(format!(
        "the list kept changing while it was paged ({passes} passes)"
    ))
}

/// One pass over `kind`, recording each page and queueing its fetches as it arrives.
async fn list_once(
    shared: &Arc<Shared>,
    kind: MaterialKind,
    jobs: &mpsc::UnboundedSender<Job>,
    planned: &mut HashSet<String>,
) -> Result<View, String> {
    let mut pass = Pass::new(kind);
    loop {
        if shared.halt.is_cancelled() {
            return Err("stopped".to_owned());
        }
        let page = match pass.next(&shared.client).await {
            Ok(Some(page)) => page,
            Ok(None) => return Ok(pass.into_view()),
            Err(err) => {
                shared.stop_on(&err);
                return Err(crate::error_chain(&err));
            }
        };
        shared
            .options
            .progress
            .listed
            .fetch_add(page.items.len() as u64, Ordering::Relaxed);
        record_page(shared, kind, page, jobs, planned).await?;
    }
}

async fn record_page(
    shared: &Arc<Shared>,
    kind: MaterialKind,
    page: MaterialPage,
    jobs: &mpsc::UnboundedSender<Job>,
    planned: &mut HashSet<String>,
) -> Result<(), String> {
    let name = shared.name.clone();
    let now = unix_now();
    let (planned_items, page, counts) = with_catalog(&shared.catalog, move |catalog| {
        let listed: Vec<Listed<'_>> = page
            .items
            .iter()
            .map(|item| Listed {
                media_id: &item.media_id,
                name: &item.name,
                update_time: item.update_time,
            })
            .collect();
        let mut counts = RunCounts::default();
        let planned = catalog.record_page(&name, kind.as_str(), &listed, now, &mut counts)?;
        Ok((planned, page, counts))
    })
    .await
    .map_err(|err| shared.abort(&err))?;
    shared.count(|c| {
        c.new += counts.new;
        c.changed += counts.changed;
    });
    for entry in planned_items {
        let Some(item) = page.items.get(entry.index) else {
            continue;
        };
        if !planned.insert(item.media_id.clone()) {
            continue;
        }
        shared
            .options
            .progress
            .queued
            .fetch_add(1, Ordering::Relaxed);
        let _ = jobs.send(Job {
            kind,
            item: item.clone(),
        });
    }
    Ok(())
}

async fn mark_deleted(
    shared: &Arc<Shared>,
    kind: MaterialKind,
    seen: HashSet<String>,
) -> Result<u64, String> {
    let name = shared.name.clone();
    let now = unix_now();
    with_catalog(&shared.catalog, move |c| {
        c.mark_deleted(&name, kind.as_str(), &seen, now)
    })
    .await
    .map_err(|err| shared.abort(&err))
}

/// Adds the API calls made since the last flush to the day's usage in the catalog, so
/// that `daily_budget` holds across runs (and, flushed periodically, across a kill).
async fn flush_usage(shared: &Arc<Shared>) {
    let mut totals: Vec<(&'static str, u64)> = Vec::new();
    for ((endpoint, _), count) in shared.client.calls() {
        match totals.last_mut() {
            Some((name, total)) if *name == endpoint.name() => *total += count,
            _ => totals.push((endpoint.name(), count)),
        }
    }
    let deltas: Vec<(&'static str, u64)> = {
        let mut recorded = shared
            .usage_recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        totals
            .into_iter()
            .filter_map(|(endpoint, total)| {
                let before = recorded.insert(endpoint, total).unwrap_or(0);
                (total > before).then_some((endpoint, total - before))
            })
            .collect()
    };
    if deltas.is_empty() {
        return;
    }
    let name = shared.name.clone();
    let day = beijing_day(unix_now());
    let recorded = with_catalog(&shared.catalog, move |c| {
        for (endpoint, calls) in deltas {
            c.add_usage(&name, &day, endpoint, calls)?;
        }
        Ok(())
    })
    .await;
    if let Err(err) = recorded {
        tracing::error!(account = %shared.name, error = %err, "cannot record API usage");
    }
}

/// Flushes usage every few seconds until the account's run ends.
fn spawn_usage_flusher(
    shared: Arc<Shared>,
    done: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                _ = tick.tick() => flush_usage(&shared).await,
            }
        }
    })
}

/// How often API usage reaches the catalog during a run.
const USAGE_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Records the day's API usage and decides the account's outcome.
async fn finish(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
    incomplete: Vec<String>,
) -> AccountReport {
    let calls: Vec<(&'static str, i64, u64)> = shared
        .client
        .calls()
        .into_iter()
        .map(|((endpoint, errcode), calls)| (endpoint.name(), errcode, calls))
        .collect();
    flush_usage(shared).await;
    let mut counts = *shared
        .counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    counts.api_calls = shared.client.total_calls();
    let (status, message) = if cancel.is_cancelled() {
        (
            RunStatus::Interrupted,
            Some("interrupted by a signal".to_owned()),
        )
    } else {
        match shared.stopped() {
            Some(Stop::Abort(reason) | Stop::Quota(reason)) => (RunStatus::Aborted, Some(reason)),
            _ if !incomplete.is_empty() => (
                RunStatus::Aborted,
                Some(format!("listing incomplete: {}", incomplete.join("; "))),
            ),
            Some(Stop::Budget(reason)) => (RunStatus::Partial, Some(reason)),
            None if counts.failed > 0 => (
                RunStatus::Partial,
                Some(format!(
                    "{} assets could not be stored; they are retried next run",
                    counts.failed
                )),
            ),
            None => (RunStatus::Ok, None),
        }
    };
    tracing::info!(
        account = %shared.name,
        status = status.as_str(),
        listed = counts.listed,
        new = counts.new,
        changed = counts.changed,
        deleted = counts.deleted,
        fetched = counts.fetched,
        failed = counts.failed,
        bytes = counts.bytes,
        api_calls = counts.api_calls,
        "account summary"
    );
    let budget_left = [Endpoint::BatchgetMaterial, Endpoint::GetMaterial]
        .into_iter()
        .filter_map(|e| shared.client.budget_left(e).map(|left| (e.name(), left)))
        .collect();
    AccountReport {
        account: shared.name.clone(),
        status,
        counts,
        message,
        calls,
        quota_exhausted: matches!(shared.stopped(), Some(Stop::Quota(_))),
        budget_left,
        limiter_wait: shared.client.limiter_wait(),
    }
}
