//! The content-addressed blob store: `blobs/<2 hex>/<64 hex of sha256>`.
//!
//! A blob is written to `tmp/` (same filesystem) while it is hashed, fsynced, then
//! renamed into place and its shard directory fsynced: a crash at any instant leaves
//! every file under `blobs/` matching its name. Nothing is ever deleted from `blobs/`.
//! It knows files and hashes and nothing else.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use bytes::Bytes;

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

/// What went wrong in the store; each variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was attempted, e.g. "cannot write".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why (a full disk shows here).
        #[source]
        source: io::Error,
    },
    /// A blob's bytes do not hash to its name.
    #[error("blob {path} is corrupt: its sha256 is {actual}")]
    Corrupt {
        /// The blob.
        path: PathBuf,
        /// What it hashes to.
        actual: String,
    },
    /// A string is not a sha256 in lowercase hex.
    #[error("{0:?} is not a sha256 in hex")]
    BadHash(String),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A stored blob: its hash and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// sha256 in lowercase hex; also its file name.
    pub sha256: String,
    /// Length in bytes.
    pub size: u64,
}

/// The blob store under a data directory.
#[derive(Debug, Clone)]
pub struct Store {
    blobs: PathBuf,
    tmp: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `blobs/` and `tmp/` under `data_dir` and sweeps
    /// temp files left by a crashed run.
    ///
    /// # Errors
    /// When the directories cannot be created or read.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let blobs = data_dir.join("blobs");
        let tmp = data_dir.join("tmp");
        fs::create_dir_all(&blobs).map_err(io_error("cannot create", &blobs))?;
        fs::create_dir_all(&tmp).map_err(io_error("cannot create", &tmp))?;
        let store = Self { blobs, tmp };
        store.sweep_tmp()?;
        Ok(store)
    }

    /// Opens the store without creating or sweeping anything, for read-only commands.
    pub fn at(data_dir: &Path) -> Self {
        Self {
            blobs: data_dir.join("blobs"),
            tmp: data_dir.join("tmp"),
        }
    }

    fn sweep_tmp(&self) -> Result<(), StoreError> {
        let entries = fs::read_dir(&self.tmp).map_err(io_error("cannot read", &self.tmp))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
            }
        }
        Ok(())
    }

    /// Where the blob of `sha256` lives.
    ///
    /// # Errors
    /// When `sha256` is not 64 lowercase hex digits (never a path from elsewhere).
    pub fn path_of(&self, sha256: &str) -> Result<PathBuf, StoreError> {
        let valid = sha256.len() == 64
            && sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return Err(StoreError::BadHash(sha256.to_owned()));
        }
        Ok(self.blobs.join(&sha256[..2]).join(sha256))
    }

    /// Whether the blob exists.
    pub fn contains(&self, sha256: &str) -> bool {
        self.path_of(sha256).is_ok_and(|path| path.is_file())
    }

    /// Starts writing a stream whose hash is not known yet; it is hashed on a thread
    /// of its own while written.
    ///
    /// # Errors
    /// When the temp file cannot be created.
    pub fn writer(&self) -> Result<BlobWriter, StoreError> {
        self.writer_with(Hasher::threaded())
    }

    fn writer_with(&self, hasher: Hasher) -> Result<BlobWriter, StoreError> {
        let temp = NamedTempFile::with_prefix_in("blob-", &self.tmp)
            .map_err(io_error("cannot create a temp file in", &self.tmp))?;
        Ok(BlobWriter {
            file: BufWriter::with_capacity(64 << 10, temp),
            hasher,
            size: 0,
            written_back: 0,
            writeback: None,
            store: self.clone(),
        })
    }

    /// Stores bytes already in memory (news documents, article bodies).
    ///
    /// # Errors
    /// When writing fails.
    pub fn put(&self, bytes: &[u8]) -> Result<BlobRef, StoreError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        if self.contains(&sha256) {
            return Ok(BlobRef {
                sha256,
                size: bytes.len() as u64,
            });
        }
        let mut writer = self.writer_with(Hasher::Known(sha256))?;
        writer.write(Bytes::copy_from_slice(bytes))?;
        writer.commit()
    }

    /// Re-reads a blob and checks that it hashes to its name; returns its size.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] on a mismatch, I/O errors when it cannot be read.
    pub fn verify(&self, sha256: &str) -> Result<u64, StoreError> {
        let path = self.path_of(sha256)?;
        let mut file = File::open(&path).map_err(io_error("cannot open", &path))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let read = file
                .read(&mut buffer)
                .map_err(io_error("cannot read", &path))?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            size += read as u64;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != sha256 {
            return Err(StoreError::Corrupt { path, actual });
        }
        Ok(size)
    }
}

/// Bytes written between early write-backs: the final fsync then only has this much
/// left to flush, instead of the whole file.
const WRITEBACK_EVERY: u64 = 64 << 20;

/// Chunks queued for the hashing thread; with the fetcher's queue this bounds memory.
const HASH_QUEUE: usize = 8;

/// A hash already known (blobs in memory) or computed on its own thread while a stream
/// is written, so that hashing and writing a large download use two cores.
enum Hasher {
    /// The hash was computed before writing (in-memory blobs).
    Known(String),
    Threaded {
        chunks: mpsc::SyncSender<Bytes>,
        thread: thread::JoinHandle<Sha256>,
    },
}

impl Hasher {
    fn threaded() -> Self {
        let (chunks, received) = mpsc::sync_channel::<Bytes>(HASH_QUEUE);
        let thread = thread::spawn(move || {
            let mut hasher = Sha256::new();
            for chunk in received {
                hasher.update(&chunk);
            }
            hasher
        });
        Self::Threaded { chunks, thread }
    }

    /// Hashes a chunk; false if the hashing thread is gone.
    fn update(&mut self, chunk: Bytes) -> bool {
        match self {
            Self::Known(_) => true,
            Self::Threaded { chunks, .. } => chunks.send(chunk).is_ok(),
        }
    }

    fn finish(self) -> Option<String> {
        match self {
            Self::Known(sha256) => Some(sha256),
            Self::Threaded { chunks, thread } => {
                drop(chunks);
                Some(hex::encode(thread.join().ok()?.finalize()))
            }
        }
    }
}

/// A blob being written: hashed as it is written, durable once committed. Dropping it
/// uncommitted removes the temp file.
pub struct BlobWriter {
    file: BufWriter<NamedTempFile>,
    hasher: Hasher,
    size: u64,
    written_back: u64,
    writeback: Option<thread::JoinHandle<io::Result<()>>>,
    store: Store,
}

impl BlobWriter {
    fn path(&self) -> PathBuf {
        self.file.get_ref().path().to_owned()
    }

    /// Appends a chunk.
    ///
    /// # Errors
    /// When the disk refuses it (full, read-only).
    pub fn write(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        self.size += chunk.len() as u64;
        if let Err(err) = self.file.write_all(&chunk) {
            return Err(io_error("cannot write", &self.path())(err));
        }
        if !self.hasher.update(chunk) {
            return Err(io_error("cannot hash", &self.path())(io::Error::other(
                "the hashing thread stopped",
            )));
        }
        if self.size - self.written_back >= WRITEBACK_EVERY {
            self.start_writeback()?;
        }
        Ok(())
    }

    /// Starts flushing what was written so far to disk in the background.
    fn start_writeback(&mut self) -> Result<(), StoreError> {
        self.finish_writeback()?;
        self.file
            .flush()
            .map_err(io_error("cannot write", &self.path()))?;
        let file = self
            .file
            .get_ref()
            .as_file()
            .try_clone()
            .map_err(io_error("cannot sync", &self.path()))?;
        self.written_back = self.size;
        self.writeback = Some(thread::spawn(move || file.sync_data()));
        Ok(())
    }

    fn finish_writeback(&mut self) -> Result<(), StoreError> {
        let Some(writeback) = self.writeback.take() else {
            return Ok(());
        };
        let result = writeback
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the write-back thread panicked")));
        result.map_err(io_error("cannot sync", &self.path()))
    }

    /// Makes the blob durable under its hash. An existing blob of that hash is the
    /// same content, so the temp file is then simply dropped.
    ///
    /// # Errors
    /// When flushing, syncing or renaming fails; the temp file is removed.
    pub fn commit(mut self) -> Result<BlobRef, StoreError> {
        self.finish_writeback()?;
        let temp_path = self.path();
        let Self {
            file,
            hasher,
            size,
            store,
            ..
        } = self;
        let temp = file
            .into_inner()
            .map_err(|err| io_error("cannot write", &temp_path)(err.into_error()))?;
        let sha256 = hasher.finish().ok_or_else(|| {
            io_error("cannot hash", &temp_path)(io::Error::other("the hashing thread panicked"))
        })?;
        let blob = BlobRef { sha256, size };
        let target = store.path_of(&blob.sha256)?;
        if target.is_file() {
            return Ok(blob);
        }
        temp.as_file()
            .sync_all()
            .map_err(io_error("cannot sync", &temp_path))?;
        let shard = target.parent().unwrap_or(&store.blobs).to_owned();
        if !shard.is_dir() {
            fs::create_dir_all(&shard).map_err(io_error("cannot create", &shard))?;
            sync_dir(&store.blobs)?;
        }
        temp.persist(&target)
            .map_err(|err| io_error("cannot rename into", &target)(err.error))?;
        sync_dir(&shard)?;
        Ok(blob)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("cannot sync directory", dir))
}
