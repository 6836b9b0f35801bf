//! What the API answers, read leniently: unknown fields allowed, nearly everything optional.

use serde::Deserialize;
use serde_json::Value;

/// The four kinds of permanent material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MaterialKind {
    /// Images.
    Image,
    /// Videos.
    Video,
    /// Voice clips.
    Voice,
    /// News items (multi-article).
    News,
}

impl MaterialKind {
    /// Every kind, in the order a sync lists them.
    pub const ALL: [Self; 4] = [Self::News, Self::Image, Self::Voice, Self::Video];

    /// The API's and the catalog's name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Voice => "voice",
            Self::News => "news",
        }
    }

    /// Parses the API's name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// One page of `batchget_material`.
#[derive(Debug, Clone)]
pub struct MaterialPage {
    /// Materials of the kind upstream, as of this page.
    pub total_count: u64,
    /// The items, in the order received.
    pub items: Vec<MaterialItem>,
    /// Items dropped because they lacked a media_id.
    pub malformed: usize,
}

/// One listed material.
#[derive(Debug, Clone)]
pub struct MaterialItem {
    /// Its media_id.
    pub media_id: String,
    /// File name (image, voice, video); for news, the first article's title.
    pub name: String,
    /// Last update, Unix seconds, exactly as received.
    pub update_time: i64,
    /// The item's `url`, if any (often empty or absent).
    pub url: Option<String>,
    /// The item as received, for news documents.
    pub raw: Value,
    /// For news: its articles.
    pub articles: Vec<NewsArticle>,
}

/// One article of a news item.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct NewsArticle {
    /// Title.
    pub title: String,
    /// Author.
    pub author: String,
    /// Summary.
    pub digest: String,
    /// HTML body exactly as received.
    pub content: String,
    /// Cover image's media_id.
    pub thumb_media_id: String,
    /// Cover image URL on the image host.
    pub thumb_url: String,
    /// Permanent article URL.
    pub url: String,
    /// "Read more" link.
    pub content_source_url: String,
}

#[derive(Deserialize)]
struct RawPage {
    #[serde(default)]
    total_count: Option<u64>,
    #[serde(default)]
    item: Vec<Value>,
}

fn as_text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn as_time(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(number) => number.as_i64(),
        Value::String(text) => text.trim().parse().ok(),
        _ => None,
    }
}

impl MaterialPage {
    /// Reads a page from the JSON the API sent.
    pub(crate) fn from_json(value: Value) -> Result<Self, serde_json::Error> {
        let raw: RawPage = serde_json::from_value(value)?;
        let mut items = Vec::with_capacity(raw.item.len());
        let mut malformed = 0;
        for item in raw.item {
            match MaterialItem::from_json(item) {
                Some(item) => items.push(item),
                None => malformed += 1,
            }
        }
        Ok(Self {
            total_count: raw.total_count.unwrap_or(items.len() as u64),
            items,
            malformed,
        })
    }
}

impl MaterialItem {
    fn from_json(raw: Value) -> Option<Self> {
        let media_id = as_text(raw.get("media_id")).filter(|id| !id.is_empty())?;
        let content = raw.get("content");
        let articles: Vec<NewsArticle> = content
            .and_then(|c| c.get("news_item"))
            .and_then(|items| serde_json::from_value(items.clone()).ok())
            .unwrap_or_default();
        let update_time = as_time(raw.get("update_time"))
            .or_else(|| as_time(content.and_then(|c| c.get("update_time"))))
            .unwrap_or(0);
        let name = as_text(raw.get("name"))
            .or_else(|| articles.first().map(|a| a.title.clone()))
            .unwrap_or_default();
        let url = as_text(raw.get("url")).filter(|url| !url.is_empty());
        Some(Self {
            media_id,
            name,
            update_time,
            url,
            raw,
            articles,
        })
    }
}

/// What `get_material` answers for a video.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VideoInfo {
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Where the file (or a web page) is.
    pub down_url: String,
}

/// One API's daily quota, from `openapi/quota/get`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Quota {
    /// Calls allowed per day.
    pub daily_limit: u64,
    /// Calls used today, by every service of the account.
    pub used: u64,
    /// Calls left today.
    pub remain: u64,
}
