//! Deterministic file bytes, generated on demand so a 1 GiB video costs no memory.
//!
//! A file is one 64 KiB block drawn from its seed, repeated with the block's index mixed
//! into its first eight bytes (so no two blocks hash alike), and the format's magic
//! bytes at the very start so that sniffing clients recognise it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

const BLOCK: usize = 64 * 1024;

/// A recipe for a generated file: its seed, length and leading magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpec {
    /// Seed of the bytes.
    pub seed: u64,
    /// Length in bytes.
    pub size: u64,
    /// The format, which picks the magic bytes and MIME type.
    pub format: FileFormat,
}

/// File formats the simulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JPEG image.
    Jpeg,
    /// PNG image.
    Png,
    /// MP3 voice clip.
    Mp3,
    /// AMR voice clip.
    Amr,
    /// MP4 video.
    Mp4,
}

impl FileFormat {
    fn magic(self) -> &'static [u8] {
        match self {
            Self::Jpeg => b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00",
            Self::Png => b"\x89PNG\r\n\x1a\n",
            Self::Mp3 => b"ID3\x03\x00",
            Self::Amr => b"#!AMR\n",
            Self::Mp4 => b"\x00\x00\x00\x20ftypisom",
        }
    }

    /// MIME type sent in Content-Type.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Mp3 => "audio/mpeg",
            Self::Amr => "audio/amr",
            Self::Mp4 => "video/mp4",
        }
    }

    /// File name extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::Mp3 => "mp3",
            Self::Amr => "amr",
            Self::Mp4 => "mp4",
        }
    }
}

/// Produces a file's bytes chunk by chunk from its spec.
#[derive(Clone)]
pub struct Generator {
    spec: FileSpec,
    block: Arc<[u8]>,
}

impl Generator {
    /// Prepares the generator of `spec`'s bytes.
    pub fn new(spec: FileSpec) -> Self {
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let mut block = vec![0u8; BLOCK];
        for word in block.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.u64(..).to_le_bytes());
        }
        Self {
            spec,
            block: block.into(),
        }
    }

    /// The bytes from `pos` up to the end of that block or of the file.
    fn chunk_at(&self, pos: u64) -> Bytes {
        let index = pos / BLOCK as u64;
        let start = (pos % BLOCK as u64) as usize;
        let end = BLOCK.min(start + (self.spec.size - pos) as usize);
        let mut chunk = self.block[start..end].to_vec();
        let mix = (index + 1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .to_le_bytes();
        for (i, byte) in mix.iter().enumerate() {
            if let Some(target) = i.checked_sub(start).and_then(|j| chunk.get_mut(j)) {
                *target ^= byte;
            }
        }
        if index == 0 {
            let magic = self.spec.format.magic();
            for (i, byte) in magic.iter().enumerate() {
                if let Some(target) = i.checked_sub(start).and_then(|j| chunk.get_mut(j)) {
                    *target = *byte;
                }
            }
        }
        Bytes::from(chunk)
    }

    /// Every chunk of the file, in order; for tests that need the expected bytes.
    pub fn chunks(&self) -> impl Iterator<Item = Bytes> + '_ {
        let mut pos = 0u64;
        std::iter::from_fn(move || {
            if pos >= self.spec.size {
                return None;
            }
            let chunk = self.chunk_at(pos);
            pos += chunk.len() as u64;
            Some(chunk)
        })
    }

    /// The response body that streams this file.
    pub fn body(self) -> GeneratedBody {
        GeneratedBody {
            generator: self,
            pos: 0,
        }
    }
}

/// A response body streaming a generated file with an exact length.
pub struct GeneratedBody {
    generator: Generator,
    pos: u64,
}

impl Body for GeneratedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.pos >= this.generator.spec.size {
            return Poll::Ready(None);
        }
        let chunk = this.generator.chunk_at(this.pos);
        this.pos += chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.generator.spec.size
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.generator.spec.size - self.pos)
    }
}

/// Wraps a body so that it fails after `limit` bytes while still announcing its full
/// length: the client sees a body cut short of its Content-Length.
pub struct TruncatedBody<B> {
    inner: B,
    limit: u64,
    sent: u64,
    full: SizeHint,
    /// A pause before failing, so that hyper flushes what was sent: the client then
    /// sees the headers and part of the body, as with a real connection cut mid-body.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B: Body<Data = Bytes, Error = io::Error> + Unpin> TruncatedBody<B> {
    /// Cuts `inner` at half of its announced length.
    pub fn half_of(inner: B) -> Self {
        let full = inner.size_hint();
        let limit = full.exact().unwrap_or(0) / 2;
        Self {
            inner,
            limit,
            sent: 0,
            full,
            pause: None,
        }
    }
}

impl<B: Body<Data = Bytes, Error = io::Error> + Unpin> Body for TruncatedBody<B> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.sent >= this.limit {
            let pause = this.pause.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep(std::time::Duration::from_millis(50)))
            });
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(io::Error::other("simulated truncated body"))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Ok(mut data) = frame.into_data() else {
                    return Poll::Ready(Some(Err(io::Error::other("unexpected trailers"))));
                };
                let room = this.limit - this.sent;
                if data.len() as u64 > room {
                    data.truncate(room as usize);
                }
                this.sent += data.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(None) => {
                this.sent = this.limit;
                Pin::new(this).poll_frame(cx)
            }
            other => other,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.full
    }
}
