//! Deterministic account contents: `--seed demo` always builds the same account.

use std::fmt::Write as _;

use super::account::{Account, Article, Asset, Body, MediaKind};
use super::content::{FileFormat, FileSpec};

/// The shape of a seeded account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of images.
    pub images: u32,
    /// Number of videos offered as files.
    pub videos: u32,
    /// Number of videos whose down_url is a web page.
    pub page_videos: u32,
    /// Number of voice clips.
    pub voices: u32,
    /// Number of news items.
    pub news: u32,
    /// Image sizes, bytes (min, max), drawn log-uniformly.
    pub image_size: (u64, u64),
    /// Video sizes, bytes.
    pub video_size: (u64, u64),
    /// Voice sizes, bytes.
    pub voice_size: (u64, u64),
    /// Whether some names are hostile (path separators, `..`, control characters).
    pub hostile_names: bool,
}

impl SeedSpec {
    /// A realistic account: a few hundred images, videos of several MB, voices, news.
    pub fn demo() -> Self {
        Self {
            seed: 20_240_501,
            images: 240,
            videos: 5,
            page_videos: 1,
            voices: 24,
            news: 12,
            image_size: (8 * 1024, 600 * 1024),
            video_size: (2 << 20, 8 << 20),
            voice_size: (20 * 1024, 300 * 1024),
            hostile_names: true,
        }
    }

    /// A small account for fast tests.
    pub fn small() -> Self {
        Self {
            seed: 7,
            images: 25,
            videos: 2,
            page_videos: 1,
            voices: 3,
            news: 3,
            image_size: (1024, 16 * 1024),
            video_size: (64 * 1024, 256 * 1024),
            voice_size: (1024, 8 * 1024),
            hostile_names: true,
        }
    }

    /// No materials at all.
    pub fn empty() -> Self {
        Self {
            seed: 1,
            images: 0,
            videos: 0,
            page_videos: 0,
            voices: 0,
            news: 0,
            hostile_names: false,
            ..Self::small()
        }
    }

    /// Parses `demo`, `small` or `empty`, optionally `:N` for another random seed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, seed) = match text.split_once(':') {
            Some((name, seed)) => (
                name,
                Some(
                    seed.parse::<u64>()
                        .map_err(|_| format!("seed number {seed:?} is not an integer"))?,
                ),
            ),
            None => (text, None),
        };
        let mut spec = match name {
            "demo" => Self::demo(),
            "small" => Self::small(),
            "empty" => Self::empty(),
            other => {
                return Err(format!(
                    "unknown seed {other:?}: expected demo, small or empty (optionally :N)"
                ));
            }
        };
        if let Some(seed) = seed {
            spec.seed = seed;
        }
        Ok(spec)
    }
}

/// First update_time of seeded materials: a fixed date keeps seeding deterministic.
const SEED_EPOCH: i64 = 1_700_000_000;

const HOSTILE_NAMES: [&str; 6] = [
    "../../etc/passwd.jpg",
    "/absolute/path.jpg",
    "line\nbreak\u{0}nul.jpg",
    "..",
    "C:\\Windows\\win.ini.jpg",
    "很长的名字-🎉-",
];

/// Fills `account` as `spec` describes; materials are created oldest first.
pub(super) fn populate(account: &mut Account, spec: &SeedSpec) {
    let mut clock = SEED_EPOCH;
    let plan = [
        (MediaKind::Image, spec.images),
        (MediaKind::Voice, spec.voices),
        (MediaKind::Video, spec.videos),
        (MediaKind::Video, spec.page_videos),
        (MediaKind::News, spec.news),
    ];
    let mut hostile = spec.hostile_names.then_some(0usize);
    for (step, (kind, count)) in plan.into_iter().enumerate() {
        for _ in 0..count {
            clock += 3600 + account.rng().i64(0..86_400);
            let name = match (kind, hostile.as_mut()) {
                (MediaKind::Image, Some(index)) if *index < HOSTILE_NAMES.len() => {
                    *index += 1;
                    Some(HOSTILE_NAMES[*index - 1].to_owned())
                }
                _ => None,
            };
            let page_video = step == 3;
            let sizes = Sizes::from(spec);
            add_with(account, kind, &sizes, name, page_video, clock);
        }
    }
}

struct Sizes {
    image: (u64, u64),
    video: (u64, u64),
    voice: (u64, u64),
}

impl From<&SeedSpec> for Sizes {
    fn from(spec: &SeedSpec) -> Self {
        Self {
            image: spec.image_size,
            video: spec.video_size,
            voice: spec.voice_size,
        }
    }
}

fn log_uniform(rng: &mut fastrand::Rng, (min, max): (u64, u64)) -> u64 {
    if max <= min {
        return min;
    }
    let (lo, hi) = ((min as f64).ln(), (max as f64).ln());
    (lo + rng.f64() * (hi - lo)).exp().round() as u64
}

/// Adds a generated material of `kind` uploaded now; `size` overrides the file size.
pub(super) fn add_generated(
    account: &mut Account,
    kind: MediaKind,
    size: Option<u64>,
    name: Option<String>,
) -> String {
    let sizes = match size {
        Some(size) => Sizes {
            image: (size, size),
            video: (size, size),
            voice: (size, size),
        },
        None => Sizes::from(&SeedSpec::small()),
    };
    let now = super::account::unix_now();
    add_with(account, kind, &sizes, name, false, now)
}

fn add_with(
    account: &mut Account,
    kind: MediaKind,
    sizes: &Sizes,
    name: Option<String>,
    page_video: bool,
    time: i64,
) -> String {
    let media_id = account.new_media_id();
    let seed = account.rng().u64(..);
    let number = account.assets.len() + 1;
    let (default_name, body) = match kind {
        MediaKind::Image => {
            let format = if account.rng().u8(..).is_multiple_of(4) {
                FileFormat::Png
            } else {
                FileFormat::Jpeg
            };
            let size = log_uniform(account.rng(), sizes.image);
            (
                format!("photo-{number:04}.{}", format.extension()),
                Body::File(FileSpec { seed, size, format }),
            )
        }
        MediaKind::Voice => {
            let format = if account.rng().bool() {
                FileFormat::Mp3
            } else {
                FileFormat::Amr
            };
            let size = log_uniform(account.rng(), sizes.voice);
            (
                format!("voice-{number:04}.{}", format.extension()),
                Body::File(FileSpec { seed, size, format }),
            )
        }
        MediaKind::Video => {
            let size = log_uniform(account.rng(), sizes.video);
            let file = (!page_video).then_some(FileSpec {
                seed,
                size,
                format: FileFormat::Mp4,
            });
            (
                format!("video-{number:04}.mp4"),
                Body::Video {
                    title: format!("Video {number}"),
                    description: format!("What happened at event {number}"),
                    file,
                },
            )
        }
        MediaKind::News => {
            let articles = (0..account.rng().usize(1..=4))
                .map(|idx| make_article(account, number, idx))
                .collect();
            (String::new(), Body::News(articles))
        }
    };
    let name = name.unwrap_or(default_name);
    account.insert(Asset {
        media_id: media_id.clone(),
        kind,
        name,
        create_time: time,
        update_time: time,
        seq: 0,
        body,
    });
    media_id
}

fn make_article(account: &mut Account, number: usize, idx: usize) -> Article {
    let thumb_media_id = account
        .assets
        .values()
        .find(|a| a.kind == MediaKind::Image)
        .map(|a| a.media_id.clone())
        .unwrap_or_default();
    let thumb_size = 4096 + account.rng().u64(..60_000);
    let thumb_image = account.add_article_image(thumb_size);
    let mut content =
        format!("<section><h1>Story {number}.{idx}</h1><p>Paragraph one of story {number}.</p>");
    for picture in 0..account.rng().usize(1..=3) {
        let size = 4096 + account.rng().u64(..120_000);
        let id = account.add_article_image(size);
        let _ = write!(
            content,
            "<p><img data-src=\"{{BASE}}/mmbiz_jpg/{id}/0?wx_fmt=jpeg\" data-ratio=\"0.75\" \
             data-w=\"1080\" alt=\"picture {picture}\"></p><p>Text after picture {picture}.</p>"
        );
    }
    content.push_str("</section>");
    let sn = account.random_string(32, b"0123456789abcdef");
    Article {
        title: format!("Story {number}.{idx}: news of the week"),
        author: "Editorial team".to_owned(),
        digest: format!("Summary of story {number}.{idx}"),
        content,
        thumb_media_id,
        thumb_image,
        url: format!(
            "http://mp.weixin.qq.com/s?__biz=MzA5NjA4NzQ3Mg==&mid={}&idx={}&sn={sn}#rd",
            2_247_483_000 + number,
            idx + 1
        ),
        content_source_url: String::new(),
    }
}
