//! One sync run: list every type of every account, plan, fetch, record.
//!
//! The only module that joins the API client, the catalog and the blob store. Listing
//! and fetching overlap: each listing page is recorded as it arrives and its new or
//! changed assets go straight to the fetchers, so the rate limiter is never idle
//! between stages.

mod engine;
mod fetch;
mod listing;
mod plan;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, CatalogError, RunCounts, RunStatus};
use crate::config::{Account, Config, TokenSource};
use crate::store::{Store, StoreError};
use crate::wechat::{ClientConfig, Credentials, RetryPolicy};

pub use engine::AccountReport;
pub use plan::{DryRunReport, KindPlan};

/// Name of the lock file in data_dir.
pub const LOCK_FILE: &str = "mpmirror.lock";
/// Name of the catalog in data_dir.
pub const CATALOG_FILE: &str = "catalog.db";

/// What stops a run before or outside the per-asset work.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Another run holds the data directory's lock.
    #[error("another mpmirror run (pid {pid}) holds the lock {path}; try again when it ends")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid as it wrote it ("unknown" if unreadable).
        pid: String,
    },
    /// data_dir cannot be created or written.
    #[error("data_dir {path} is not usable")]
    DataDir {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Knobs of a run beyond the config file.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Retry policy of API requests.
    pub retry: RetryPolicy,
    /// How many times a listing that changed under us is paged again.
    pub max_listing_passes: u32,
    /// Fetch attempts per asset within one run (the first included).
    pub fetch_attempts: u32,
    /// Live counters for a progress display.
    pub progress: Arc<Progress>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            max_listing_passes: 4,
            fetch_attempts: 3,
            progress: Arc::new(Progress::default()),
        }
    }
}

/// Live counters of a run, for a progress line.
#[derive(Debug, Default)]
pub struct Progress {
    /// Items listed (pages received, duplicates included).
    pub listed: AtomicU64,
    /// Assets queued for fetching.
    pub queued: AtomicU64,
    /// Assets fetched and stored.
    pub fetched: AtomicU64,
    /// Assets whose fetch failed.
    pub failed: AtomicU64,
    /// Bytes received.
    pub bytes: AtomicU64,
}

impl Progress {
    /// A snapshot: (listed, queued, done, failed, bytes).
    pub fn snapshot(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.listed.load(Ordering::Relaxed),
            self.queued.load(Ordering::Relaxed),
            self.fetched.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct SyncReport {
    /// The run's id in the catalog.
    pub run_id: i64,
    /// The run's outcome.
    pub status: RunStatus,
    /// Counts over all accounts.
    pub counts: RunCounts,
    /// Per account.
    pub accounts: Vec<AccountReport>,
    /// Why it was not ok, if it was not.
    pub message: Option<String>,
}

impl SyncReport {
    /// The exit code the contract gives this outcome: 0 ok, 1 partial, 3 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            RunStatus::Ok => 0,
            RunStatus::Partial => 1,
            _ => 3,
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The Beijing (UTC+8) calendar day of a Unix time, as `YYYY-MM-DD`: WeChat quotas
/// reset at Beijing midnight.
pub fn beijing_day(unix: i64) -> String {
    let days = (unix + 8 * 3600).div_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Holds the data directory's lock for the length of a run.
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of `data_dir`, or says who holds it.
    ///
    /// # Errors
    /// [`SyncError::Locked`] when another run holds it.
    pub fn acquire(data_dir: &Path) -> Result<Self, SyncError> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| SyncError::DataDir {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(SyncError::Locked {
                    path,
                    pid: if pid.is_empty() { "unknown" } else { pid }.to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(SyncError::DataDir { path, source });
            }
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        written.map_err(|source| SyncError::DataDir { path, source })?;
        Ok(Self { _file: file })
    }
}

/// Creates data_dir and checks it is writable.
///
/// # Errors
/// [`SyncError::DataDir`] naming the path.
pub fn prepare_data_dir(data_dir: &Path) -> Result<(), SyncError> {
    std::fs::create_dir_all(data_dir).map_err(|source| SyncError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    tempfile::tempfile_in(data_dir)
        .map(drop)
        .map_err(|source| SyncError::DataDir {
            path: data_dir.to_owned(),
            source,
        })
}

/// The client settings of an account under the config's limits.
pub fn client_config(config: &Config, account: &Account, retry: &RetryPolicy) -> ClientConfig {
    let credentials = match &account.token {
        TokenSource::Stable(secret) => Credentials::Stable(secret.clone()),
        TokenSource::Legacy(secret) => Credentials::Legacy(secret.clone()),
        TokenSource::File(path) => Credentials::File(path.clone()),
    };
    let mut client = ClientConfig::new(&account.api_base, &account.app_id, credentials);
    client.requests_per_second = config.limits.requests_per_second;
    client.retry = retry.clone();
    client
}

/// Runs a blocking catalog operation off the async threads.
pub(crate) async fn with_catalog<T, F>(
    catalog: &Arc<Mutex<Catalog>>,
    work: F,
) -> Result<T, SyncError>
where
    T: Send + 'static,
    F: FnOnce(&mut Catalog) -> Result<T, CatalogError> + Send + 'static,
{
    let catalog = catalog.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = catalog
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        work(&mut guard)
    })
    .await
    .map_err(|err| SyncError::Task(err.to_string()))?
    .map_err(SyncError::from)
}

/// Runs one complete sync of every account in `config`.
///
/// # Errors
/// When the run cannot start (lock held, data_dir or catalog unusable). Problems
/// within the run are in the report's status, never errors.
pub async fn run(
    config: &Config,
    options: &SyncOptions,
    cancel: &CancellationToken,
) -> Result<SyncReport, SyncError> {
    prepare_data_dir(&config.data_dir)?;
    let _lock = RunLock::acquire(&config.data_dir)?;
    let catalog_path = config.data_dir.join(CATALOG_FILE);
    let (catalog, run_id) = tokio::task::spawn_blocking(move || {
        let mut catalog = Catalog::open(&catalog_path)?;
        let now = unix_now();
        let stale = catalog.close_stale_runs(now)?;
        if stale > 0 {
            tracing::warn!(
                runs = stale,
                "earlier runs ended without finishing; marked interrupted"
            );
        }
        let run_id = catalog.begin_run(now, std::process::id())?;
        Ok::<_, CatalogError>((catalog, run_id))
    })
    .await
    .map_err(|err| SyncError::Task(err.to_string()))??;
    let catalog = Arc::new(Mutex::new(catalog));
    let store = {
        let data_dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&data_dir))
            .await
            .map_err(|err| SyncError::Task(err.to_string()))??
    };
    tracing::info!(
        run = run_id,
        accounts = config.accounts.len(),
        "sync started"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for account in &config.accounts {
        let context = engine::AccountContext {
            name: account.name.clone(),
            client: client_config(config, account, &options.retry),
            limits: config.limits.clone(),
            catalog: catalog.clone(),
            store: store.clone(),
            run_id,
            options: options.clone(),
        };
        let cancel = cancel.clone();
        tasks.spawn(async move { engine::run_account(context, cancel).await });
    }
    let mut accounts = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        accounts.push(joined.map_err(|err| SyncError::Task(err.to_string()))?);
    }
    accounts.sort_by(|a, b| a.account.cmp(&b.account));

    let mut counts = RunCounts::default();
    for report in &accounts {
        counts.add(&report.counts);
    }
    let status = accounts
        .iter()
        .map(|a| a.status)
        .max_by_key(|s| severity(*s))
        .unwrap_or(RunStatus::Ok);
    let message = accounts
        .iter()
        .filter_map(|a| a.message.as_ref().map(|m| format!("{}: {m}", a.account)))
        .collect::<Vec<_>>()
        .join("; ");
    let message = (!message.is_empty()).then_some(message);
    let recorded = message.clone();
    with_catalog(&catalog, move |catalog| {
        catalog.finish_run(run_id, unix_now(), status, &counts, recorded.as_deref())
    })
    .await?;
    tracing::info!(run = run_id, status = status.as_str(), "sync finished");
    Ok(SyncReport {
        run_id,
        status,
        counts,
        accounts,
        message,
    })
}

fn severity(status: RunStatus) -> u8 {
    match status {
        RunStatus::Ok => 0,
        RunStatus::Partial => 1,
        RunStatus::Running => 2,
        RunStatus::Aborted => 3,
        RunStatus::Interrupted => 4,
    }
}

/// Lists and plans every account without fetching or writing anything.
///
/// # Errors
/// When the catalog exists but cannot be read.
pub async fn dry_run(
    config: &Config,
    options: &SyncOptions,
    cancel: &CancellationToken,
) -> Result<Vec<DryRunReport>, SyncError> {
    plan::dry_run(config, options, cancel).await
}
