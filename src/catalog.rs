//! The SQLite catalog: what exists upstream, what is stored, every version, every run.
//!
//! The schema comes from `migrations/NNNN_*.sql`, applied in order, each in one
//! transaction, the version kept in `PRAGMA user_version`. A catalog newer than this
//! binary is refused. It knows SQL and nothing of HTTP or files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};

/// The migrations, in order; never edit one that was released.
const MIGRATIONS: &[(&str, &str)] = &[("0001_init", include_str!("../migrations/0001_init.sql"))];

/// What went wrong in the catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// SQLite failed.
    #[error("catalog {path}: {action}")]
    Sql {
        /// The database file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The catalog was written by a newer mpmirror.
    #[error(
        "catalog {path} has schema version {found}, newer than this mpmirror knows ({known}): upgrade mpmirror"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest this binary knows.
        known: i64,
    },
}

/// Run outcome, as stored in `runs.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Still running (or killed while running, until the next run notices).
    Running,
    /// Every listed asset is stored.
    Ok,
    /// The listing completed but some assets could not be stored.
    Partial,
    /// Stopped early: credentials, quota, lock, or an incomplete listing.
    Aborted,
    /// Stopped by a signal or killed.
    Interrupted,
}

impl RunStatus {
    /// The value stored in `runs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Aborted => "aborted",
            Self::Interrupted => "interrupted",
        }
    }

    /// Parses `runs.status`.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Ok,
            Self::Partial,
            Self::Aborted,
            Self::Interrupted,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// The counts a run records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Distinct assets listed.
    pub listed: u64,
    /// Assets seen for the first time.
    pub new: u64,
    /// Assets whose update_time changed.
    pub changed: u64,
    /// Assets marked deleted upstream.
    pub deleted: u64,
    /// Assets whose content was stored.
    pub fetched: u64,
    /// Assets whose fetch failed.
    pub failed: u64,
    /// Bytes stored (new blobs and existing ones alike).
    pub bytes: u64,
    /// Requests to the API.
    pub api_calls: u64,
}

impl RunCounts {
    /// Adds another account's counts.
    pub fn add(&mut self, other: &Self) {
        self.listed += other.listed;
        self.new += other.new;
        self.changed += other.changed;
        self.deleted += other.deleted;
        self.fetched += other.fetched;
        self.failed += other.failed;
        self.bytes += other.bytes;
        self.api_calls += other.api_calls;
    }
}

/// A run as recorded.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Its id.
    pub id: i64,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// End, Unix seconds.
    pub finished_at: Option<i64>,
    /// Outcome.
    pub status: RunStatus,
    /// Counts.
    pub counts: RunCounts,
    /// Why it ended as it did, if not ok.
    pub message: Option<String>,
}

/// One listed item, as the catalog records it.
#[derive(Debug, Clone)]
pub struct Listed<'a> {
    /// Its media_id.
    pub media_id: &'a str,
    /// Its name (for news: the first article's title).
    pub name: &'a str,
    /// Its update_time as received.
    pub update_time: i64,
}

/// Why an asset needs fetching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchReason {
    /// Never seen before.
    New,
    /// Its update_time changed.
    Changed,
    /// Listed before, but its content is not stored (an earlier failure).
    Missing,
}

/// The catalog's verdict on one listed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Index of the item in the page.
    pub index: usize,
    /// Why it is fetched.
    pub reason: FetchReason,
}

/// One article row.
#[derive(Debug, Clone, Default)]
pub struct ArticleRow {
    /// Position in the news item, from 0.
    pub idx: usize,
    /// Title.
    pub title: String,
    /// Author.
    pub author: String,
    /// Summary.
    pub digest: String,
    /// sha256 of the article's content as UTF-8 bytes.
    pub content_sha256: String,
    /// Cover image's media_id.
    pub thumb_media_id: String,
    /// Article URL.
    pub url: String,
    /// "Read more" link.
    pub content_source_url: String,
    /// Cover image URL.
    pub thumb_url: String,
}

/// A stored content: what `record_stored` needs.
#[derive(Debug, Clone)]
pub struct StoredContent<'a> {
    /// The account.
    pub account: &'a str,
    /// The asset.
    pub media_id: &'a str,
    /// The update_time the content belongs to.
    pub update_time: i64,
    /// Its blob's sha256.
    pub sha256: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// File name from the response, if any.
    pub filename: Option<&'a str>,
}

/// Stored totals of one type of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeSummary {
    /// The account.
    pub account: String,
    /// The type.
    pub kind: String,
    /// Assets listed upstream now.
    pub present: u64,
    /// Of those, stored.
    pub stored: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Of those, not offered as a file upstream.
    pub unavailable: u64,
    /// Assets deleted upstream (kept here).
    pub deleted: u64,
    /// Bytes of the current versions.
    pub bytes: u64,
}

/// The catalog database.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl Catalog {
    /// Opens (creating if needed) the catalog and brings its schema up to date.
    ///
    /// # Errors
    /// When SQLite fails or the catalog is newer than this binary.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let conn = Connection::open(path).map_err(sql(path, "cannot open"))?;
        let mut catalog = Self {
            conn,
            path: path.to_owned(),
        };
        catalog.configure(true)?;
        catalog.migrate()?;
        Ok(catalog)
    }

    /// Opens an existing catalog for reading only.
    ///
    /// # Errors
    /// When it cannot be opened or is newer than this binary.
    pub fn open_read_only(path: &Path) -> Result<Self, CatalogError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql(path, "cannot open"))?;
        let catalog = Self {
            conn,
            path: path.to_owned(),
        };
        catalog.configure(false)?;
        let version = catalog.version()?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(CatalogError::TooNew {
                path: path.to_owned(),
                found: version,
                known,
            });
        }
        Ok(catalog)
    }

    fn configure(&self, writable: bool) -> Result<(), CatalogError> {
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(sql(&self.path, "cannot set busy timeout"))?;
        let pragmas = if writable {
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
        } else {
            "PRAGMA foreign_keys = ON;"
        };
        self.conn
            .execute_batch(pragmas)
            .map_err(sql(&self.path, "cannot set pragmas"))
    }

    fn version(&self) -> Result<i64, CatalogError> {
        self.conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sql(&self.path, "cannot read schema version"))
    }

    fn migrate(&mut self) -> Result<(), CatalogError> {
        let version = self.version()?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(CatalogError::TooNew {
                path: self.path.clone(),
                found: version,
                known,
            });
        }
        for (number, (name, script)) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let path = self.path.clone();
            let tx = self
                .conn
                .transaction()
                .map_err(sql(&path, "cannot begin migration"))?;
            tx.execute_batch(script)
                .map_err(sql(&path, "migration failed"))?;
            tx.pragma_update(None, "user_version", number as i64 + 1)
                .map_err(sql(&path, "cannot set schema version"))?;
            tx.commit().map_err(sql(&path, "cannot commit migration"))?;
            tracing::debug!(migration = name, "catalog migrated");
        }
        Ok(())
    }

    fn tx(&mut self) -> Result<Transaction<'_>, CatalogError> {
        let path = self.path.clone();
        self.conn
            .transaction()
            .map_err(sql(&path, "cannot begin transaction"))
    }

    // ----- runs -----

    /// Marks runs left `running` by a killed process as interrupted; returns how many.
    pub fn close_stale_runs(&mut self, now: i64) -> Result<usize, CatalogError> {
        self.conn
            .execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ?1,
                        message = COALESCE(message, 'the process ended before the run finished')
                 WHERE status = 'running'",
                params![now],
            )
            .map_err(sql(&self.path, "cannot close stale runs"))
    }

    /// Records the start of a run; returns its id.
    pub fn begin_run(&mut self, now: i64, pid: u32) -> Result<i64, CatalogError> {
        self.conn
            .execute(
                "INSERT INTO runs (started_at, status, pid) VALUES (?1, 'running', ?2)",
                params![now, pid],
            )
            .map_err(sql(&self.path, "cannot record run"))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the end of a run.
    pub fn finish_run(
        &mut self,
        id: i64,
        now: i64,
        status: RunStatus,
        counts: &RunCounts,
        message: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE runs SET finished_at = ?2, status = ?3, listed = ?4, new = ?5,
                        changed = ?6, deleted = ?7, fetched = ?8, failed = ?9, bytes = ?10,
                        api_calls = ?11, message = ?12
                 WHERE id = ?1",
                params![
                    id,
                    now,
                    status.as_str(),
                    counts.listed as i64,
                    counts.new as i64,
                    counts.changed as i64,
                    counts.deleted as i64,
                    counts.fetched as i64,
                    counts.failed as i64,
                    counts.bytes as i64,
                    counts.api_calls as i64,
                    message
                ],
            )
            .map_err(sql(&self.path, "cannot record run end"))?;
        Ok(())
    }

    /// The most recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, CatalogError> {
        self.read_runs("", limit)
    }

    /// The newest run that finished ok.
    pub fn last_ok_run(&self) -> Result<Option<RunRecord>, CatalogError> {
        Ok(self.read_runs("WHERE status = 'ok'", 1)?.pop())
    }

    fn read_runs(&self, filter: &str, limit: usize) -> Result<Vec<RunRecord>, CatalogError> {
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT id, started_at, finished_at, status, listed, new, changed, deleted,
                        fetched, failed, bytes, api_calls, message
                 FROM runs {filter} ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(sql(&self.path, "cannot read runs"))?;
        let rows = statement
            .query_map(params![limit as i64], |row| {
                let status: String = row.get(3)?;
                let count = |i: usize| row.get::<_, i64>(i).map(|v| v as u64);
                Ok(RunRecord {
                    id: row.get(0)?,
                    started_at: row.get(1)?,
                    finished_at: row.get(2)?,
                    status: RunStatus::parse(&status).unwrap_or(RunStatus::Interrupted),
                    counts: RunCounts {
                        listed: count(4)?,
                        new: count(5)?,
                        changed: count(6)?,
                        deleted: count(7)?,
                        fetched: count(8)?,
                        failed: count(9)?,
                        bytes: count(10)?,
                        api_calls: count(11)?,
                    },
                    message: row.get(12)?,
                })
            })
            .map_err(sql(&self.path, "cannot read runs"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql(&self.path, "cannot read runs"))
    }

    // ----- listing -----

    /// Records one listing page in one transaction and returns what needs fetching.
    /// `counts` gains the page's new and changed assets.
    pub fn record_page(
        &mut self,
        account: &str,
        kind: &str,
        items: &[Listed<'_>],
        now: i64,
        counts: &mut RunCounts,
    ) -> Result<Vec<Planned>, CatalogError> {
        let path = self.path.clone();
        let tx = self.tx()?;
        let mut planned = Vec::new();
        {
            let mut select = tx
                .prepare_cached(
                    "SELECT update_time, stored_update_time, state FROM assets
                     WHERE account = ?1 AND media_id = ?2",
                )
                .map_err(sql(&path, "cannot read assets"))?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO assets (account, type, media_id, name, update_time,
                                         first_seen_at, last_seen_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                )
                .map_err(sql(&path, "cannot record assets"))?;
            let mut update = tx
                .prepare_cached(
                    "UPDATE assets SET type = ?3, name = ?4, update_time = ?5,
                                       last_seen_at = ?6, deleted_at = NULL
                     WHERE account = ?1 AND media_id = ?2",
                )
                .map_err(sql(&path, "cannot record assets"))?;
            for (index, item) in items.iter().enumerate() {
                let existing: Option<(i64, Option<i64>, String)> = select
                    .query_row(params![account, item.media_id], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()
                    .map_err(sql(&path, "cannot read assets"))?;
                let values = params![
                    account,
                    item.media_id,
                    kind,
                    item.name,
                    item.update_time,
                    now
                ];
                match existing {
                    None => {
                        insert
                            .execute(params![
                                account,
                                kind,
                                item.media_id,
                                item.name,
                                item.update_time,
                                now
                            ])
                            .map_err(sql(&path, "cannot record assets"))?;
                        counts.new += 1;
                        planned.push(Planned {
                            index,
                            reason: FetchReason::New,
                        });
                    }
                    Some((old_time, stored_time, state)) => {
                        update
                            .execute(values)
                            .map_err(sql(&path, "cannot record assets"))?;
                        if old_time != item.update_time {
                            counts.changed += 1;
                        }
                        if let Some(reason) = reason_for(item.update_time, stored_time, &state) {
                            planned.push(Planned { index, reason });
                        }
                    }
                }
            }
        }
        tx.commit().map_err(sql(&path, "cannot commit page"))?;
        Ok(planned)
    }

    /// What a page would need fetched, without writing anything (for `--dry-run`).
    pub fn plan_page(
        &self,
        account: &str,
        items: &[Listed<'_>],
    ) -> Result<Vec<Planned>, CatalogError> {
        let mut select = self
            .conn
            .prepare_cached(
                "SELECT stored_update_time, state FROM assets WHERE account = ?1 AND media_id = ?2",
            )
            .map_err(sql(&self.path, "cannot read assets"))?;
        let mut planned = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let existing: Option<(Option<i64>, String)> = select
                .query_row(params![account, item.media_id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
                .map_err(sql(&self.path, "cannot read assets"))?;
            let reason = match existing {
                None => Some(FetchReason::New),
                Some((stored_time, state)) => reason_for(item.update_time, stored_time, &state),
            };
            if let Some(reason) = reason {
                planned.push(Planned { index, reason });
            }
        }
        Ok(planned)
    }

    /// Marks assets of `kind` that a complete listing did not contain as deleted
    /// upstream; returns how many were newly marked.
    pub fn mark_deleted(
        &mut self,
        account: &str,
        kind: &str,
        listed: &HashSet<String>,
        now: i64,
    ) -> Result<u64, CatalogError> {
        let path = self.path.clone();
        let tx = self.tx()?;
        let present: Vec<String> = {
            let mut statement = tx
                .prepare(
                    "SELECT media_id FROM assets
                     WHERE account = ?1 AND type = ?2 AND deleted_at IS NULL",
                )
                .map_err(sql(&path, "cannot read assets"))?;
            statement
                .query_map(params![account, kind], |row| row.get(0))
                .map_err(sql(&path, "cannot read assets"))?
                .collect::<Result<_, _>>()
                .map_err(sql(&path, "cannot read assets"))?
        };
        let mut deleted = 0;
        {
            let mut mark = tx
                .prepare("UPDATE assets SET deleted_at = ?3 WHERE account = ?1 AND media_id = ?2")
                .map_err(sql(&path, "cannot mark deleted"))?;
            for media_id in present.iter().filter(|id| !listed.contains(*id)) {
                mark.execute(params![account, media_id, now])
                    .map_err(sql(&path, "cannot mark deleted"))?;
                deleted += 1;
            }
        }
        tx.commit().map_err(sql(&path, "cannot commit deletions"))?;
        Ok(deleted)
    }

    // ----- contents -----

    /// Records a stored content (its blob is durable already) as the asset's current
    /// version, and as a row of `asset_versions`.
    pub fn record_stored(
        &mut self,
        content: &StoredContent<'_>,
        run_id: i64,
        now: i64,
    ) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let tx = self.tx()?;
        store_version(&tx, content, run_id, now).map_err(sql(&path, "cannot record content"))?;
        tx.commit().map_err(sql(&path, "cannot commit content"))
    }

    /// Records a news item: its document blob, and its articles replacing the old ones.
    pub fn record_news(
        &mut self,
        content: &StoredContent<'_>,
        articles: &[ArticleRow],
        run_id: i64,
        now: i64,
    ) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let tx = self.tx()?;
        store_version(&tx, content, run_id, now).map_err(sql(&path, "cannot record news"))?;
        tx.execute(
            "DELETE FROM articles WHERE account = ?1 AND media_id = ?2",
            params![content.account, content.media_id],
        )
        .map_err(sql(&path, "cannot record articles"))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO articles (account, media_id, idx, title, author, digest,
                         content_sha256, thumb_media_id, url, content_source_url, thumb_url)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(sql(&path, "cannot record articles"))?;
            for article in articles {
                insert
                    .execute(params![
                        content.account,
                        content.media_id,
                        article.idx as i64,
                        article.title,
                        article.author,
                        article.digest,
                        article.content_sha256,
                        article.thumb_media_id,
                        article.url,
                        article.content_source_url,
                        article.thumb_url
                    ])
                    .map_err(sql(&path, "cannot record articles"))?;
            }
        }
        tx.commit().map_err(sql(&path, "cannot commit news"))
    }

    /// Records a failed fetch; the asset is fetched again next run.
    pub fn record_failed(
        &mut self,
        account: &str,
        media_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE assets SET state = 'failed', error = ?3, failed_at = ?4,
                                   failures = failures + 1
                 WHERE account = ?1 AND media_id = ?2",
                params![account, media_id, reason, now],
            )
            .map_err(sql(&self.path, "cannot record failure"))?;
        Ok(())
    }

    /// Records a note on an asset without changing its state (e.g. gone upstream).
    pub fn record_note(
        &mut self,
        account: &str,
        media_id: &str,
        note: &str,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE assets SET error = ?3 WHERE account = ?1 AND media_id = ?2",
                params![account, media_id, note],
            )
            .map_err(sql(&self.path, "cannot record note"))?;
        Ok(())
    }

    /// Records a video that upstream offers only as a web page: not retried until
    /// its update_time changes.
    pub fn record_unavailable(
        &mut self,
        account: &str,
        media_id: &str,
        update_time: i64,
        detail: (&str, &str, &str),
    ) -> Result<(), CatalogError> {
        let (url, title, description) = detail;
        self.conn
            .execute(
                "UPDATE assets SET state = 'unavailable', stored_update_time = ?3,
                        upstream_url = ?4, title = ?5, description = ?6,
                        error = 'upstream offers this video only as a web page'
                 WHERE account = ?1 AND media_id = ?2",
                params![account, media_id, update_time, url, title, description],
            )
            .map_err(sql(&self.path, "cannot record unavailable"))?;
        Ok(())
    }

    /// Records video metadata from get_material.
    pub fn record_video_info(
        &mut self,
        account: &str,
        media_id: &str,
        title: &str,
        description: &str,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE assets SET title = ?3, description = ?4
                 WHERE account = ?1 AND media_id = ?2",
                params![account, media_id, title, description],
            )
            .map_err(sql(&self.path, "cannot record video info"))?;
        Ok(())
    }

    /// Whether an article image URL is stored already.
    pub fn article_image_stored(&self, account: &str, url: &str) -> Result<bool, CatalogError> {
        self.conn
            .query_row(
                "SELECT sha256 IS NOT NULL FROM article_images WHERE account = ?1 AND url = ?2",
                params![account, url],
                |row| row.get(0),
            )
            .optional()
            .map(|found| found.unwrap_or(false))
            .map_err(sql(&self.path, "cannot read article images"))
    }

    /// Records an article image, stored (`Ok(blob)`) or failed (`Err(reason)`).
    pub fn record_article_image(
        &mut self,
        account: &str,
        url: &str,
        owner: (&str, usize),
        outcome: Result<(&str, u64), &str>,
    ) -> Result<(), CatalogError> {
        let (sha256, size, error) = match outcome {
            Ok((sha256, size)) => (Some(sha256), Some(size as i64), None),
            Err(reason) => (None, None, Some(reason)),
        };
        self.conn
            .execute(
                "INSERT INTO article_images (account, url, media_id, idx, sha256, size, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (account, url) DO UPDATE SET
                     sha256 = COALESCE(excluded.sha256, sha256),
                     size = COALESCE(excluded.size, size),
                     error = excluded.error",
                params![account, url, owner.0, owner.1 as i64, sha256, size, error],
            )
            .map_err(sql(&self.path, "cannot record article image"))?;
        Ok(())
    }

    /// Article images not stored yet: (url, media_id, idx).
    pub fn failed_article_images(
        &self,
        account: &str,
    ) -> Result<Vec<(String, String, usize)>, CatalogError> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT url, media_id, idx FROM article_images
                 WHERE account = ?1 AND sha256 IS NULL ORDER BY url",
            )
            .map_err(sql(&self.path, "cannot read article images"))?;
        let rows = statement
            .query_map(params![account], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as usize))
            })
            .map_err(sql(&self.path, "cannot read article images"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql(&self.path, "cannot read article images"))
    }

    // ----- usage -----

    /// Adds API calls made on a Beijing calendar day.
    pub fn add_usage(
        &mut self,
        account: &str,
        day: &str,
        endpoint: &str,
        calls: u64,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO api_usage (account, day, endpoint, calls) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (account, day, endpoint) DO UPDATE SET calls = calls + excluded.calls",
                params![account, day, endpoint, calls as i64],
            )
            .map_err(sql(&self.path, "cannot record usage"))?;
        Ok(())
    }

    /// API calls made on a Beijing calendar day.
    pub fn usage(&self, account: &str, day: &str, endpoint: &str) -> Result<u64, CatalogError> {
        self.conn
            .query_row(
                "SELECT calls FROM api_usage WHERE account = ?1 AND day = ?2 AND endpoint = ?3",
                params![account, day, endpoint],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|calls| calls.unwrap_or(0) as u64)
            .map_err(sql(&self.path, "cannot read usage"))
    }

    // ----- reports -----

    /// Totals per account and type.
    pub fn summary(&self) -> Result<Vec<TypeSummary>, CatalogError> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT account, type,
                        SUM(deleted_at IS NULL),
                        SUM(deleted_at IS NULL AND sha256 IS NOT NULL),
                        SUM(deleted_at IS NULL AND state = 'failed'),
                        SUM(deleted_at IS NULL AND state = 'unavailable'),
                        SUM(deleted_at IS NOT NULL),
                        COALESCE(SUM(CASE WHEN deleted_at IS NULL THEN size END), 0)
                 FROM assets GROUP BY account, type ORDER BY account, type",
            )
            .map_err(sql(&self.path, "cannot summarise"))?;
        let rows = statement
            .query_map([], |row| {
                let n = |i: usize| row.get::<_, i64>(i).map(|v| v as u64);
                Ok(TypeSummary {
                    account: row.get(0)?,
                    kind: row.get(1)?,
                    present: n(2)?,
                    stored: n(3)?,
                    failed: n(4)?,
                    unavailable: n(5)?,
                    deleted: n(6)?,
                    bytes: n(7)?,
                })
            })
            .map_err(sql(&self.path, "cannot summarise"))?;
        rows.collect::<Result<_, _>>()
            .map_err(sql(&self.path, "cannot summarise"))
    }

    /// Article images: (known, stored, bytes stored).
    pub fn article_image_totals(&self) -> Result<(u64, u64, u64), CatalogError> {
        self.conn
            .query_row(
                "SELECT count(*), count(sha256), COALESCE(sum(size), 0) FROM article_images",
                [],
                |row| {
                    let n = |i: usize| row.get::<_, i64>(i).map(|v| v as u64);
                    Ok((n(0)?, n(1)?, n(2)?))
                },
            )
            .map_err(sql(&self.path, "cannot read article images"))
    }

    /// Every blob the catalog points at, with the size it recorded where it did.
    pub fn referenced_blobs(&self) -> Result<Vec<(String, Option<u64>)>, CatalogError> {
        let mut statement = self
            .conn
            .prepare(
                "SELECT sha256, size FROM asset_versions
                 UNION SELECT sha256, size FROM assets WHERE sha256 IS NOT NULL
                 UNION SELECT content_sha256, -1 FROM articles
                 UNION SELECT sha256, size FROM article_images WHERE sha256 IS NOT NULL
                 ORDER BY 1",
            )
            .map_err(sql(&self.path, "cannot read blobs"))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(sql(&self.path, "cannot read blobs"))?;
        let mut blobs: Vec<(String, Option<u64>)> = Vec::new();
        for row in rows {
            let (sha256, size) = row.map_err(sql(&self.path, "cannot read blobs"))?;
            if blobs.last().is_some_and(|(last, _)| *last == sha256) {
                continue;
            }
            blobs.push((sha256, u64::try_from(size).ok()));
        }
        Ok(blobs)
    }

    /// Runs `PRAGMA integrity_check`; `Ok(None)` when it answers ok.
    pub fn integrity_problem(&self) -> Result<Option<String>, CatalogError> {
        let answer: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .map_err(sql(&self.path, "cannot check integrity"))?;
        Ok((answer != "ok").then_some(answer))
    }
}

fn reason_for(update_time: i64, stored_time: Option<i64>, state: &str) -> Option<FetchReason> {
    match state {
        "pending" | "failed" => Some(FetchReason::Missing),
        _ if stored_time != Some(update_time) => Some(FetchReason::Changed),
        _ => None,
    }
}

fn store_version(
    tx: &Transaction<'_>,
    content: &StoredContent<'_>,
    run_id: i64,
    now: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO asset_versions (account, media_id, update_time, sha256, size, stored_at, run_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (account, media_id, update_time) DO UPDATE SET
             sha256 = excluded.sha256, size = excluded.size,
             stored_at = excluded.stored_at, run_id = excluded.run_id",
        params![
            content.account,
            content.media_id,
            content.update_time,
            content.sha256,
            content.size as i64,
            now,
            run_id
        ],
    )?;
    tx.execute(
        "UPDATE assets SET sha256 = ?3, size = ?4, stored_update_time = ?5, state = 'stored',
                           filename = COALESCE(?6, filename), error = NULL, failed_at = NULL
         WHERE account = ?1 AND media_id = ?2",
        params![
            content.account,
            content.media_id,
            content.sha256,
            content.size as i64,
            content.update_time,
            content.filename
        ],
    )?;
    Ok(())
}

fn sql<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(rusqlite::Error) -> CatalogError + 'a {
    move |source| CatalogError::Sql {
        path: path.to_owned(),
        action,
        source,
    }
}
