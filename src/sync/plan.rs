//! `sync --dry-run`: list and plan, fetch and write nothing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::listing::Pass;
use super::{CATALOG_FILE, SyncError, SyncOptions, client_config, with_catalog};
use crate::catalog::{Catalog, FetchReason, Listed};
use crate::config::Config;
use crate::wechat::{Client, Endpoint, MaterialItem, MaterialKind, Quota};

/// What a sync would do for one type.
#[derive(Debug, Clone, Default)]
pub struct KindPlan {
    /// The type.
    pub kind: &'static str,
    /// Distinct items listed.
    pub listed: u64,
    /// Never seen before.
    pub new: u64,
    /// update_time changed.
    pub changed: u64,
    /// Listed before but not stored.
    pub missing: u64,
    /// get_material calls the fetches would cost.
    pub fetch_calls: u64,
    /// Bytes the fetches would store, where the listing tells (news).
    pub known_bytes: u64,
    /// Listing calls made.
    pub listing_calls: u64,
    /// Whether the listing was consistent.
    pub complete: bool,
}

/// What a sync would do for one account.
#[derive(Debug, Clone)]
pub struct DryRunReport {
    /// The account.
    pub account: String,
    /// Per type.
    pub kinds: Vec<KindPlan>,
    /// Today's quota of each endpoint a sync spends, where the platform told it.
    pub quotas: Vec<(&'static str, Option<Quota>)>,
    /// Why the plan is incomplete, if it is.
    pub error: Option<String>,
}

pub(super) async fn dry_run(
    config: &Config,
    options: &SyncOptions,
    cancel: &CancellationToken,
) -> Result<Vec<DryRunReport>, SyncError> {
    let path = config.data_dir.join(CATALOG_FILE);
    let catalog = if path.is_file() {
        let opened = tokio::task::spawn_blocking(move || Catalog::open_read_only(&path))
            .await
            .map_err(|err| SyncError::Task(err.to_string()))??;
        Some(Arc::new(Mutex::new(opened)))
    } else {
        None
    };
    let mut reports = Vec::new();
    for account in &config.accounts {
        let client = match Client::new(client_config(config, account, &options.retry)) {
            Ok(client) => client,
            Err(err) => {
                reports.push(DryRunReport {
                    account: account.name.clone(),
                    kinds: Vec::new(),
                    quotas: Vec::new(),
                    error: Some(err.to_string()),
                });
                continue;
            }
        };
        reports.push(plan_account(&account.name, &client, catalog.as_ref(), cancel).await?);
    }
    Ok(reports)
}

async fn plan_account(
    name: &str,
    client: &Client,
    catalog: Option<&Arc<Mutex<Catalog>>>,
    cancel: &CancellationToken,
) -> Result<DryRunReport, SyncError> {
    let mut report = DryRunReport {
        account: name.to_owned(),
        kinds: Vec::new(),
        quotas: Vec::new(),
        error: None,
    };
    for endpoint in [Endpoint::BatchgetMaterial, Endpoint::GetMaterial] {
        let quota = match client.quota(endpoint).await {
            Ok(quota) => Some(quota),
            Err(err) if err.advice().is_some() => {
                report.error = Some(format!("{err}: {}", err.advice().unwrap_or_default()));
                return Ok(report);
            }
            Err(_) => None,
        };
        report.quotas.push((endpoint.name(), quota));
    }
    for kind in MaterialKind::ALL {
        if cancel.is_cancelled() {
            break;
        }
        let mut plan = KindPlan {
            kind: kind.as_str(),
            ..KindPlan::default()
        };
        let mut pass = Pass::new(kind);
        let mut planned = HashSet::new();
        let mut failed = false;
        loop {
            let page = match pass.next(client).await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(err) => {
                    report.error = Some(crate::error_chain(&err));
                    failed = true;
                    break;
                }
            };
            plan.listing_calls += 1;
            let fresh: Vec<_> = page
                .items
                .into_iter()
                .filter(|item| planned.insert(item.media_id.clone()))
                .collect();
            for (index, reason) in plan_items(catalog, name, &fresh).await? {
                match reason {
                    FetchReason::New => plan.new += 1,
                    FetchReason::Changed => plan.changed += 1,
                    FetchReason::Missing => plan.missing += 1,
                }
                let Some(item) = fresh.get(index) else {
                    continue;
                };
                if kind == MaterialKind::News {
                    plan.known_bytes += item
                        .articles
                        .iter()
                        .map(|a| a.content.len() as u64)
                        .sum::<u64>();
                } else {
                    plan.fetch_calls += 1;
                }
            }
        }
        let view = pass.into_view();
        plan.listed = view.seen.len() as u64;
        plan.complete = !failed && view.consistent();
        report.kinds.push(plan);
    }
    Ok(report)
}

/// Which of `items` a sync would fetch, and why.
async fn plan_items(
    catalog: Option<&Arc<Mutex<Catalog>>>,
    account: &str,
    items: &[MaterialItem],
) -> Result<Vec<(usize, FetchReason)>, SyncError> {
    let Some(catalog) = catalog else {
        return Ok((0..items.len()).map(|i| (i, FetchReason::New)).collect());
    };
    let account = account.to_owned();
    let items: Vec<(String, String, i64)> = items
        .iter()
        .map(|i| (i.media_id.clone(), i.name.clone(), i.update_time))
        .collect();
    let planned = with_catalog(catalog, move |c| {
        let listed: Vec<Listed<'_>> = items
            .iter()
            .map(|(id, name, time)| Listed {
                media_id: id,
                name,
                update_time: *time,
            })
            .collect();
        c.plan_page(&account, &listed)
    })
    .await?;
    Ok(planned.into_iter().map(|p| (p.index, p.reason)).collect())
}
