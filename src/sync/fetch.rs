//! Fetching: files streamed to the store while hashed, video down_urls, news documents
//! and their article images. A blob is recorded in the catalog only once durable.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::engine::{Shared, Stop};
use super::{SyncError, unix_now, with_catalog};
use crate::catalog::{ArticleRow, StoredContent};
use crate::store::{BlobRef, StoreError};
use crate::wechat::{
    Downloaded, ErrorClass, FileDownload, MaterialItem, MaterialKind, WechatError,
};

/// One asset to fetch.
pub(super) struct Job {
    pub kind: MaterialKind,
    pub item: MaterialItem,
}

/// Why one fetch attempt did not store the asset.
enum FetchError {
    /// The request failed; the client already retried what was worth retrying.
    Api(WechatError),
    /// The body broke off while it was being stored: worth another request.
    Stream(WechatError),
    Store(StoreError),
    Catalog(SyncError),
    Cancelled,
}

impl From<WechatError> for FetchError {
    fn from(err: WechatError) -> Self {
        Self::Api(err)
    }
}

impl From<SyncError> for FetchError {
    fn from(err: SyncError) -> Self {
        Self::Catalog(err)
    }
}

/// Takes jobs until the listing ends, running `concurrent_downloads` at once.
pub(super) async fn run_fetchers(shared: Arc<Shared>, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut running = JoinSet::new();
    loop {
        let job = tokio::select! {
            () = shared.halt.cancelled() => break,
            job = jobs.recv() => job,
        };
        let Some(job) = job else { break };
        if shared.stopped().is_some() {
            continue;
        }
        let permit = tokio::select! {
            () = shared.halt.cancelled() => break,
            permit = shared.downloads.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let shared = shared.clone();
        running.spawn(async move {
            fetch_asset(&shared, job).await;
            drop(permit);
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

async fn fetch_asset(shared: &Arc<Shared>, job: Job) {
    let media_id = job.item.media_id.clone();
    let attempts = shared.options.fetch_attempts.max(1);
    let mut attempt = 1;
    loop {
        if shared.stopped().is_some() || shared.halt.is_cancelled() {
            return;
        }
        let result = match job.kind {
            MaterialKind::Image | MaterialKind::Voice => fetch_file(shared, &job.item).await,
            MaterialKind::Video => fetch_video(shared, &job.item).await,
            MaterialKind::News => store_news(shared, &job.item).await,
        };
        let err = match result {
            Ok(()) => {
                shared
                    .options
                    .progress
                    .fetched
                    .fetch_add(1, Ordering::Relaxed);
                shared.count(|c| c.fetched += 1);
                return;
            }
            Err(err) => err,
        };
        match err {
            FetchError::Cancelled => return,
            FetchError::Catalog(err) => {
                shared.abort(&err);
                return;
            }
            FetchError::Store(err) => {
                shared.stop(Stop::Abort(format!(
                    "cannot store {media_id}: {}",
                    crate::error_chain(&err)
                )));
                return;
            }
            FetchError::Stream(err) if attempt < attempts => {
                let delay = shared.options.retry.backoff(attempt - 1);
                tracing::warn!(account = %shared.name, %media_id, error = %err, ?delay, "download broke off; fetching again");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            FetchError::Stream(err) => {
                record_failure(shared, &media_id, &crate::error_chain(&err)).await;
                return;
            }
            FetchError::Api(err) => {
                if shared.stop_on(&err) {
                    return;
                }
                if err.class() == ErrorClass::NotFound {
                    note_gone(shared, &media_id).await;
                    return;
                }
                record_failure(shared, &media_id, &crate::error_chain(&err)).await;
                return;
            }
        }
    }
}

async fn note_gone(shared: &Arc<Shared>, media_id: &str) {
    tracing::info!(account = %shared.name, %media_id, "deleted upstream after it was listed (40007)");
    let (name, id) = (shared.name.clone(), media_id.to_owned());
    let noted = with_catalog(&shared.catalog, move |c| {
        c.record_note(
            &name,
            &id,
            "not found upstream when fetched (40007): deleted after it was listed",
        )
    })
    .await;
    if let Err(err) = noted {
        shared.abort(&err);
    }
}

async fn record_failure(shared: &Arc<Shared>, media_id: &str, reason: &str) {
    tracing::warn!(account = %shared.name, %media_id, %reason, "cannot store; retried next run");
    shared
        .options
        .progress
        .failed
        .fetch_add(1, Ordering::Relaxed);
    shared.count(|c| c.failed += 1);
    let (name, id, reason) = (shared.name.clone(), media_id.to_owned(), reason.to_owned());
    let recorded = with_catalog(&shared.catalog, move |c| {
        c.record_failed(&name, &id, &reason, unix_now())
    })
    .await;
    if let Err(err) = recorded {
        shared.abort(&err);
    }
}

async fn fetch_file(shared: &Arc<Shared>, item: &MaterialItem) -> Result<(), FetchError> {
    let download = shared.client.get_file(&item.media_id).await?;
    let filename = download.filename.clone();
    let blob = stream_to_store(shared, download).await?;
    record_stored(shared, item, &blob, filename).await
}

async fn fetch_video(shared: &Arc<Shared>, item: &MaterialItem) -> Result<(), FetchError> {
    let info = shared.client.get_video(&item.media_id).await?;
    let (name, id) = (shared.name.clone(), item.media_id.clone());
    let (title, description) = (info.title.clone(), info.description.clone());
    with_catalog(&shared.catalog, move |c| {
        c.record_video_info(&name, &id, &title, &description)
    })
    .await?;
    if info.down_url.is_empty() {
        return record_unavailable(shared, item, "", &info.title, &info.description).await;
    }
    // down_url may expire: fetch it right away.
    match shared.client.download(&info.down_url).await? {
        Downloaded::WebPage { title } => {
            tracing::info!(account = %shared.name, media_id = %item.media_id, "video offered only as a web page");
            let title = title
                .filter(|_| info.title.is_empty())
                .unwrap_or(info.title.clone());
            record_unavailable(shared, item, &info.down_url, &title, &info.description).await
        }
        Downloaded::File(download) => {
            let blob = stream_to_store(shared, *download).await?;
            record_stored(shared, item, &blob, None).await
        }
    }
}

async fn record_unavailable(
    shared: &Arc<Shared>,
    item: &MaterialItem,
    url: &str,
    title: &str,
    description: &str,
) -> Result<(), FetchError> {
    let (name, id, time) = (shared.name.clone(), item.media_id.clone(), item.update_time);
    let detail = (url.to_owned(), title.to_owned(), description.to_owned());
    with_catalog(&shared.catalog, move |c| {
        c.record_unavailable(&name, &id, time, (&detail.0, &detail.1, &detail.2))
    })
    .await?;
    Ok(())
}

async fn record_stored(
    shared: &Arc<Shared>,
    item: &MaterialItem,
    blob: &BlobRef,
    filename: Option<String>,
) -> Result<(), FetchError> {
    let (name, id, time, blob_ref, run_id) = (
        shared.name.clone(),
        item.media_id.clone(),
        item.update_time,
        blob.clone(),
        shared.run_id,
    );
    with_catalog(&shared.catalog, move |c| {
        let content = StoredContent {
            account: &name,
            media_id: &id,
            update_time: time,
            sha256: &blob_ref.sha256,
            size: blob_ref.size,
            filename: filename.as_deref(),
        };
        c.record_stored(&content, run_id, unix_now())
    })
    .await?;
    shared.count(|c| c.bytes += blob.size);
    Ok(())
}

enum Chunk {
    Data(Bytes),
    Done,
}

/// Streams a body into a new blob: the network side reads, a blocking task writes and
/// hashes, a small channel between them keeps memory flat whatever the size. A body
/// that stops short, or a cancellation, drops the temp file; nothing reaches blobs/.
async fn stream_to_store(
    shared: &Arc<Shared>,
    mut download: FileDownload,
) -> Result<BlobRef, FetchError> {
    let writer = shared.store.writer().map_err(FetchError::Store)?;
    let (sender, mut receiver) = mpsc::channel::<Chunk>(16);
    let write = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        while let Some(chunk) = receiver.blocking_recv() {
            match chunk {
                Chunk::Data(bytes) => writer.write(bytes)?,
                Chunk::Done => return writer.commit().map(Some),
            }
        }
        Ok(None)
    });
    let network: Result<(), FetchError> = async {
        loop {
            let chunk = tokio::select! {
                () = shared.halt.cancelled() => return Err(FetchError::Cancelled),
                chunk = download.chunk() => chunk.map_err(FetchError::Stream)?,
            };
            let Some(chunk) = chunk else {
                let _ = sender.send(Chunk::Done).await;
                return Ok(());
            };
            shared
                .options
                .progress
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if sender.send(Chunk::Data(chunk)).await.is_err() {
                return Ok(());
            }
        }
    }
    .await;
    drop(sender);
    let written = write
        .await
        .map_err(|err| FetchError::Catalog(SyncError::Task(err.to_string())))?;
    network?;
    match written {
        Ok(Some(blob)) => Ok(blob),
        Ok(None) => Err(FetchError::Cancelled),
        Err(err) => Err(FetchError::Store(err)),
    }
}

/// A news item needs no API call: the listing carries it. Its canonical JSON document
/// and each article's content become blobs, then its article images are harvested.
async fn store_news(shared: &Arc<Shared>, item: &MaterialItem) -> Result<(), FetchError> {
    // serde_json's map is ordered by key, so this serialization is canonical.
    let document = serde_json::to_vec(&item.raw).unwrap_or_default();
    let contents: Vec<String> = item.articles.iter().map(|a| a.content.clone()).collect();
    let store = shared.store.clone();
    let (doc_blob, content_blobs) = tokio::task::spawn_blocking(move || {
        let doc = store.put(&document)?;
        let contents = contents
            .iter()
            .map(|content| store.put(content.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, StoreError>((doc, contents))
    })
    .await
    .map_err(|err| FetchError::Catalog(SyncError::Task(err.to_string())))?
    .map_err(FetchError::Store)?;
    let rows: Vec<ArticleRow> = item
        .articles
        .iter()
        .zip(&content_blobs)
        .enumerate()
        .map(|(idx, (article, blob))| ArticleRow {
            idx,
            title: article.title.clone(),
            author: article.author.clone(),
            digest: article.digest.clone(),
            content_sha256: blob.sha256.clone(),
            thumb_media_id: article.thumb_media_id.clone(),
            url: article.url.clone(),
            content_source_url: article.content_source_url.clone(),
            thumb_url: article.thumb_url.clone(),
        })
        .collect();
    let (name, id, time, run_id, doc) = (
        shared.name.clone(),
        item.media_id.clone(),
        item.update_time,
        shared.run_id,
        doc_blob.clone(),
    );
    with_catalog(&shared.catalog, move |c| {
        let content = StoredContent {
            account: &name,
            media_id: &id,
            update_time: time,
            sha256: &doc.sha256,
            size: doc.size,
            filename: None,
        };
        c.record_news(&content, &rows, run_id, unix_now())
    })
    .await?;
    let bytes = doc_blob.size + content_blobs.iter().map(|b| b.size).sum::<u64>();
    shared.count(|c| c.bytes += bytes);
    for (idx, article) in item.articles.iter().enumerate() {
        let mut urls = image_urls(&article.content);
        if !article.thumb_url.is_empty() {
            urls.insert(0, article.thumb_url.clone());
        }
        for url in urls {
            fetch_article_image(shared, &url, (&item.media_id, idx)).await?;
        }
    }
    Ok(())
}

/// Downloads one article image unless it is stored already; a failure is recorded on
/// the image (retried at the end of each run), not on the article.
async fn fetch_article_image(
    shared: &Arc<Shared>,
    url: &str,
    owner: (&str, usize),
) -> Result<(), FetchError> {
    let (name, key) = (shared.name.clone(), url.to_owned());
    if with_catalog(&shared.catalog, move |c| {
        c.article_image_stored(&name, &key)
    })
    .await?
    {
        return Ok(());
    }
    let outcome = match shared.client.download(url).await {
        Ok(Downloaded::File(download)) => match stream_to_store(shared, *download).await {
            Ok(blob) => Ok(blob),
            Err(FetchError::Api(err) | FetchError::Stream(err)) => Err(crate::error_chain(&err)),
            Err(other) => return Err(other),
        },
        Ok(Downloaded::WebPage { .. }) => Err("the image URL answered an HTML page".to_owned()),
        Err(err) => Err(crate::error_chain(&err)),
    };
    if let Err(reason) = &outcome {
        tracing::warn!(account = %shared.name, %reason, "article image not stored; retried at the end of the next run");
    }
    if let Ok(blob) = &outcome {
        shared.count(|c| c.bytes += blob.size);
    }
    let (name, key, media_id, idx) = (
        shared.name.clone(),
        url.to_owned(),
        owner.0.to_owned(),
        owner.1,
    );
    with_catalog(&shared.catalog, move |c| {
        let outcome = match &outcome {
            Ok(blob) => Ok((blob.sha256.as_str(), blob.size)),
            Err(reason) => Err(reason.as_str()),
        };
        c.record_article_image(&name, &key, (&media_id, idx), outcome)
    })
    .await?;
    Ok(())
}

/// Tries once more the article images earlier runs could not store.
pub(super) async fn retry_article_images(shared: &Arc<Shared>) {
    let name = shared.name.clone();
    let pending = with_catalog(&shared.catalog, move |c| c.failed_article_images(&name)).await;
    let Ok(pending) = pending else { return };
    for (url, media_id, idx) in pending {
        if shared.halt.is_cancelled() {
            return;
        }
        if let Err(FetchError::Store(err)) =
            fetch_article_image(shared, &url, (&media_id, idx)).await
        {
            shared.abort(&err);
            return;
        }
    }
}

/// URLs of images embedded in article HTML: `data-src` (WeChat's lazy loading) and
/// `src`, http(s) only, HTML entities of the query decoded.
pub fn image_urls(html: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(pos) = rest.find("<img") {
        rest = &rest[pos + 4..];
        let tag = &rest[..rest.find('>').unwrap_or(rest.len())];
        for attribute in ["data-src=", "src="] {
            let Some(url) = attribute_value(tag, attribute) else {
                continue;
            };
            let url = url.replace("&amp;", "&");
            if (url.starts_with("http://") || url.starts_with("https://")) && !urls.contains(&url) {
                urls.push(url);
            }
            break;
        }
    }
    urls
}

fn attribute_value<'a>(tag: &'a str, attribute: &str) -> Option<&'a str> {
    let mut search = tag;
    loop {
        let pos = search.find(attribute)?;
        let before = search[..pos].chars().last();
        let after = &search[pos + attribute.len()..];
        if before.is_some_and(char::is_whitespace) {
            let quote = after.chars().next()?;
            if quote == '"' || quote == '\'' {
                let value = &after[1..];
                return value.find(quote).map(|end| &value[..end]);
            }
            return after.split_whitespace().next();
        }
        search = after;
    }
}
