//! The simulated account: its materials, tokens, quotas, faults and request log.
//!
//! Everything here is plain data behind one mutex; the HTTP layer locks it briefly per
//! request and never across an await.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::content::{FileFormat, FileSpec};

/// The four kinds of permanent material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    /// Images.
    Image,
    /// Videos.
    Video,
    /// Voice clips.
    Voice,
    /// Multi-article news items.
    News,
}

impl MediaKind {
    /// The API's name of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Voice => "voice",
            Self::News => "news",
        }
    }

    /// Parses the API's name of a kind.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "image" => Some(Self::Image),
            "video" => Some(Self::Video),
            "voice" => Some(Self::Voice),
            "news" => Some(Self::News),
            _ => None,
        }
    }
}

/// One article of a news item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Article {
    /// Title.
    pub title: String,
    /// Author.
    pub author: String,
    /// Summary.
    pub digest: String,
    /// HTML body; `{BASE}` stands for the simulator's base URL.
    pub content: String,
    /// Cover: an image material's media_id.
    pub thumb_media_id: String,
    /// Cover image id on the image host.
    pub thumb_image: String,
    /// Permanent article URL.
    pub url: String,
    /// "Read more" link.
    pub content_source_url: String,
}

/// What a material consists of.
#[derive(Debug, Clone)]
pub enum Body {
    /// An image or voice clip: a file.
    File(FileSpec),
    /// A video: title, description and a file, or `None` when down_url is a web page.
    Video {
        /// Title.
        title: String,
        /// Description.
        description: String,
        /// The file, or `None` for a video only offered as a web page.
        file: Option<FileSpec>,
    },
    /// A news item's articles.
    News(Vec<Article>),
}

/// One permanent material.
#[derive(Debug, Clone)]
pub struct Asset {
    /// Its media_id.
    pub media_id: String,
    /// Its kind.
    pub kind: MediaKind,
    /// File name as listed.
    pub name: String,
    /// Creation time, Unix seconds.
    pub create_time: i64,
    /// Last update, Unix seconds.
    pub update_time: i64,
    /// Insertion order, the tie-breaker of the listing order.
    pub seq: u64,
    /// Content.
    pub body: Body,
}

/// A fault to inject into responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fault {
    /// Answer with this errcode (-1, 45009, 45011, 40001, 42001, 40164, 89503, ...).
    Errcode {
        /// The errcode.
        code: i64,
    },
    /// Answer with this HTTP status and an HTML page.
    HttpStatus {
        /// The status.
        status: u16,
    },
    /// Reset the connection without answering.
    Reset,
    /// Announce the full Content-Length and send only half the body.
    Truncate,
    /// An HTML error page with status 200.
    HtmlPage,
    /// Answer normally after this many milliseconds.
    Latency {
        /// Delay in milliseconds.
        millis: u64,
    },
}

/// "The next `count` calls of `endpoint` answer with `fault`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    /// Endpoint name (see [`Endpoint::name`]), or `*` for every API endpoint.
    pub endpoint: String,
    /// How many calls it affects.
    pub count: u32,
    /// What they get.
    pub fault: Fault,
}

/// A change applied to the account right after a listing page is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum HookAction {
    /// Upload `count` new materials of the listed kind (they list first).
    Insert {
        /// How many.
        count: u32,
    },
    /// Delete these materials.
    Delete {
        /// Their media_ids.
        media_ids: Vec<String>,
    },
    /// Give these materials new content and a newer update_time.
    Change {
        /// Their media_ids.
        media_ids: Vec<String>,
    },
}

/// "After the `after_page`-th listing page of `kind` from now, do `action`".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListingHook {
    /// The listed kind.
    #[serde(rename = "type")]
    pub kind: MediaKind,
    /// Counted from 1 at the time the hook is installed.
    pub after_page: u32,
    /// The change.
    #[serde(flatten)]
    pub action: HookAction,
}

/// The simulator's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /cgi-bin/token`.
    Token,
    /// `POST /cgi-bin/stable_token`.
    StableToken,
    /// `POST /cgi-bin/material/batchget_material`.
    BatchgetMaterial,
    /// `POST /cgi-bin/material/get_material`.
    GetMaterial,
    /// `GET /cgi-bin/material/get_materialcount`.
    GetMaterialCount,
    /// `POST /cgi-bin/openapi/quota/get`.
    QuotaGet,
    /// A video file behind a down_url.
    VideoFile,
    /// A video web page behind a down_url.
    VideoPage,
    /// An image on the article image host.
    ArticleImage,
}

impl Endpoint {
    /// Name used by fault rules, quotas and the request log.
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::StableToken => "stable_token",
            Self::BatchgetMaterial => "batchget_material",
            Self::GetMaterial => "get_material",
            Self::GetMaterialCount => "get_materialcount",
            Self::QuotaGet => "quota_get",
            Self::VideoFile => "video_file",
            Self::VideoPage => "video_page",
            Self::ArticleImage => "article_image",
        }
    }

    /// Whether this is an API call on api.weixin.qq.com (as opposed to a CDN download).
    pub fn is_api(self) -> bool {
        !matches!(self, Self::VideoFile | Self::VideoPage | Self::ArticleImage)
    }

    /// The cgi path `openapi/quota/get` knows this endpoint by.
    pub fn from_cgi_path(path: &str) -> Option<Self> {
        match path {
            "/cgi-bin/token" => Some(Self::Token),
            "/cgi-bin/stable_token" => Some(Self::StableToken),
            "/cgi-bin/material/batchget_material" => Some(Self::BatchgetMaterial),
            "/cgi-bin/material/get_material" => Some(Self::GetMaterial),
            "/cgi-bin/material/get_materialcount" => Some(Self::GetMaterialCount),
            "/cgi-bin/openapi/quota/get" => Some(Self::QuotaGet),
            _ => None,
        }
    }
}

/// One served request, for tests and the control surface.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedRequest {
    /// Endpoint name.
    pub endpoint: &'static str,
    /// When it arrived, Unix milliseconds.
    pub at_ms: u64,
    /// The errcode answered (0 for success or a file), or -2 for a transport fault.
    pub errcode: i64,
}

/// Quirks of the real service that can be switched on.
#[derive(Debug, Clone, Default)]
pub struct Quirks {
    /// `batchget_material` for news ignores `count` and returns everything.
    pub news_ignores_count: bool,
    /// Files are sent as `text/plain` without Content-Disposition (seen in 2016).
    pub files_as_text_plain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenFamily {
    Legacy,
    Stable,
}

#[derive(Debug, Clone)]
struct TokenRecord {
    family: TokenFamily,
    expires: Instant,
    superseded: Option<Instant>,
    revoked: bool,
}

/// The whole simulated account.
pub struct Account {
    pub(super) app_id: String,
    pub(super) app_secret: String,
    pub(super) assets: BTreeMap<String, Asset>,
    pub(super) article_images: HashMap<String, FileSpec>,
    pub(super) quirks: Quirks,
    pub(super) whitelist: Option<Vec<IpAddr>>,
    token_ttl: Duration,
    token_grace: Duration,
    tokens: HashMap<String, TokenRecord>,
    current: HashMap<TokenFamilyKey, String>,
    daily_limits: HashMap<&'static str, u64>,
    minute_limits: HashMap<&'static str, u64>,
    used_today: HashMap<&'static str, u64>,
    used_minute: HashMap<&'static str, (u64, u64)>,
    faults: Vec<FaultRule>,
    hooks: Vec<(MediaKind, u32, HookAction)>,
    pages_served: HashMap<MediaKind, u32>,
    log: Vec<LoggedRequest>,
    rng: fastrand::Rng,
    next_seq: u64,
}

type TokenFamilyKey = u8;

fn family_key(family: TokenFamily) -> TokenFamilyKey {
    match family {
        TokenFamily::Legacy => 0,
        TokenFamily::Stable => 1,
    }
}

/// Daily quotas of a fresh simulated account, generous enough for the demo.
pub const DEFAULT_DAILY_LIMITS: [(&str, u64); 6] = [
    ("token", 2000),
    ("stable_token", 500_000),
    ("batchget_material", 10_000),
    ("get_material", 10_000),
    ("get_materialcount", 1_000),
    ("quota_get", 1_000),
];

/// The message the real service pairs with an errcode.
pub fn errmsg_for(code: i64) -> &'static str {
    match code {
        -1 => "system error",
        40001 => "invalid credential, access_token is invalid or not latest",
        40004 => "invalid media type",
        40007 => "invalid media_id",
        40013 => "invalid appid",
        40014 => "invalid access_token",
        40125 => "invalid appsecret",
        40164 => "invalid ip, not in whitelist",
        41001 => "access_token missing",
        42001 => "access_token expired",
        44002 => "empty post data",
        45009 => "reach max api daily quota limit",
        45011 => "api minute-quota reach limit  mustslower  retry next minute",
        47001 => "data format error",
        48001 => "api unauthorized",
        76021 => "cgi_path not found, please check",
        89503 => "this ip needs the administrator's confirmation, please wait",
        _ => "error",
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Account {
    /// An account with no materials.
    pub(super) fn new(
        app_id: String,
        app_secret: String,
        seed: u64,
        token_ttl: Duration,
        token_grace: Duration,
    ) -> Self {
        Self {
            app_id,
            app_secret,
            assets: BTreeMap::new(),
            article_images: HashMap::new(),
            quirks: Quirks::default(),
            whitelist: None,
            token_ttl,
            token_grace,
            tokens: HashMap::new(),
            current: HashMap::new(),
            daily_limits: DEFAULT_DAILY_LIMITS.into_iter().collect(),
            minute_limits: HashMap::new(),
            used_today: HashMap::new(),
            used_minute: HashMap::new(),
            faults: Vec::new(),
            hooks: Vec::new(),
            pages_served: HashMap::new(),
            log: Vec::new(),
            rng: fastrand::Rng::with_seed(seed),
            next_seq: 0,
        }
    }

    pub(super) fn rng(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }

    /// A random string of `len` characters from `alphabet`.
    pub(super) fn random_string(&mut self, len: usize, alphabet: &[u8]) -> String {
        (0..len)
            .map(|_| char::from(alphabet[self.rng.usize(..alphabet.len())]))
            .collect()
    }

    /// The ` rid: …` suffix the real service appends to error messages.
    pub(super) fn rid(&mut self) -> String {
        const HEX: &[u8] = b"0123456789abcdef";
        format!(
            "{}-{}-{}",
            self.random_string(8, HEX),
            self.random_string(8, HEX),
            self.random_string(8, HEX)
        )
    }

    /// Adds an asset, giving it the next sequence number.
    pub(super) fn insert(&mut self, mut asset: Asset) {
        asset.seq = self.next_seq;
        self.next_seq += 1;
        self.assets.insert(asset.media_id.clone(), asset);
    }

    /// A fresh media_id in the real format (43 URL-safe characters).
    pub(super) fn new_media_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        loop {
            let id = self.random_string(43, ALPHABET);
            if !self.assets.contains_key(&id) {
                return id;
            }
        }
    }

    /// Materials of `kind`, newest update first, as the listing orders them.
    pub fn listing(&self, kind: MediaKind) -> Vec<&Asset> {
        let mut items: Vec<&Asset> = self.assets.values().filter(|a| a.kind == kind).collect();
        items.sort_by(|a, b| {
            b.update_time
                .cmp(&a.update_time)
                .then_with(|| b.seq.cmp(&a.seq))
        });
        items
    }

    // ----- tokens -----

    fn issue(&mut self, family: TokenFamily) -> (String, u64) {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let now = Instant::now();
        if let Some(previous) = self.current.get(&family_key(family)).cloned()
            && let Some(record) = self.tokens.get_mut(&previous)
        {
            record.superseded = Some(now);
        }
        let value = format!("88_{}", self.random_string(120, ALPHABET));
        self.tokens.insert(
            value.clone(),
            TokenRecord {
                family,
                expires: now + self.token_ttl,
                superseded: None,
                revoked: false,
            },
        );
        self.current.insert(family_key(family), value.clone());
        (value, self.token_ttl.as_secs())
    }

    /// Checks app credentials: `Err(errcode)` for a wrong appid or secret.
    pub(super) fn check_credentials(&self, appid: &str, secret: &str) -> Result<(), i64> {
        if appid != self.app_id {
            return Err(40013);
        }
        if secret != self.app_secret {
            return Err(40125);
        }
        Ok(())
    }

    /// `GET /cgi-bin/token`: always a new token; the previous one dies after the grace.
    pub(super) fn legacy_token(&mut self) -> (String, u64) {
        self.issue(TokenFamily::Legacy)
    }

    /// `POST /cgi-bin/stable_token`: the same token while valid, a new one when it is
    /// within five minutes of expiry or `force_refresh` is set.
    pub(super) fn stable_token(&mut self, force_refresh: bool) -> (String, u64) {
        let renew_before = Duration::from_mins(5).min(self.token_ttl / 2);
        if !force_refresh
            && let Some(current) = self.current.get(&family_key(TokenFamily::Stable))
            && let Some(record) = self.tokens.get(current)
            && !record.revoked
        {
            let left = record.expires.saturating_duration_since(Instant::now());
            if left > renew_before {
                return (current.clone(), left.as_secs());
            }
        }
        self.issue(TokenFamily::Stable)
    }

    /// Checks an access token: `Err(errcode)` when it is invalid or expired.
    pub(super) fn check_token(&self, token: Option<&str>) -> Result<(), i64> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(41001);
        };
        if !token.starts_with("88_") {
            return Err(40014);
        }
        let Some(record) = self.tokens.get(token) else {
            return Err(40001);
        };
        let now = Instant::now();
        if record.revoked {
            return Err(40001);
        }
        if record
            .superseded
            .is_some_and(|at| now > at + self.token_grace)
        {
            return Err(40001);
        }
        if now >= record.expires {
            return Err(42001);
        }
        Ok(())
    }

    /// Revokes every token, as another service refreshing the account's token would.
    pub fn invalidate_tokens(&mut self) {
        for record in self.tokens.values_mut() {
            record.revoked = true;
        }
        self.current.clear();
    }

    /// Makes every token expire now.
    pub fn expire_tokens(&mut self) {
        let now = Instant::now();
        for record in self.tokens.values_mut() {
            record.expires = now;
        }
    }

    /// Every access token ever issued, for tests that check none leaked.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.tokens.keys().cloned().collect()
    }

    /// How many distinct tokens of the stable family were ever issued.
    pub fn stable_tokens_issued(&self) -> usize {
        self.tokens
            .values()
            .filter(|r| r.family == TokenFamily::Stable)
            .count()
    }

    // ----- quotas -----

    /// Sets an endpoint's daily limit.
    pub fn set_daily_limit(&mut self, endpoint: &'static str, limit: u64) {
        self.daily_limits.insert(endpoint, limit);
    }

    /// Sets an endpoint's per-minute limit.
    pub fn set_minute_limit(&mut self, endpoint: &'static str, limit: u64) {
        self.minute_limits.insert(endpoint, limit);
    }

    /// Sets calls already used today on an endpoint (e.g. by production services).
    pub fn set_used(&mut self, endpoint: &'static str, used: u64) {
        self.used_today.insert(endpoint, used);
    }

    /// Counts one call against the endpoint's quotas: `Err(45009)` or `Err(45011)` when spent.
    pub(super) fn spend(&mut self, endpoint: Endpoint) -> Result<(), i64> {
        let name = endpoint.name();
        let used = self.used_today.get(name).copied().unwrap_or(0);
        if used >= self.daily_limit(name) {
            return Err(45009);
        }
        let minute = unix_now() as u64 / 60;
        if let Some(limit) = self.minute_limits.get(name).copied() {
            let entry = self.used_minute.entry(name).or_insert((minute, 0));
            if entry.0 != minute {
                *entry = (minute, 0);
            }
            if entry.1 >= limit {
                return Err(45011);
            }
            entry.1 += 1;
        }
        self.used_today.insert(name, used + 1);
        Ok(())
    }

    /// An endpoint's daily limit.
    pub fn daily_limit(&self, name: &str) -> u64 {
        self.daily_limits.get(name).copied().unwrap_or(u64::MAX)
    }

    /// Calls used today on an endpoint.
    pub fn used(&self, name: &str) -> u64 {
        self.used_today.get(name).copied().unwrap_or(0)
    }

    // ----- faults, hooks, log -----

    /// Adds a fault rule.
    pub fn inject(&mut self, rule: FaultRule) {
        self.faults.push(rule);
    }

    /// Drops every fault rule not used up yet.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// Takes the fault for this call of `endpoint`, if a rule applies.
    pub(super) fn take_fault(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let rule = self.faults.iter_mut().find(|rule| {
            rule.count > 0
                && (rule.endpoint == endpoint.name() || (rule.endpoint == "*" && endpoint.is_api()))
        })?;
        rule.count -= 1;
        let fault = rule.fault.clone();
        self.faults.retain(|rule| rule.count > 0);
        Some(fault)
    }

    /// Installs a listing hook.
    pub fn add_hook(&mut self, hook: ListingHook) {
        let served = self.pages_served.get(&hook.kind).copied().unwrap_or(0);
        self.hooks
            .push((hook.kind, served + hook.after_page.max(1), hook.action));
    }

    /// Counts a served listing page and returns the hook actions now due.
    pub(super) fn page_served(&mut self, kind: MediaKind) -> Vec<HookAction> {
        let served = self.pages_served.entry(kind).or_insert(0);
        *served += 1;
        let served = *served;
        let mut due = Vec::new();
        self.hooks.retain(|(hook_kind, at, action)| {
            if *hook_kind == kind && *at == served {
                due.push(action.clone());
                false
            } else {
                true
            }
        });
        due
    }

    /// Appends to the request log.
    pub(super) fn record(&mut self, endpoint: Endpoint, errcode: i64) {
        self.log.push(LoggedRequest {
            endpoint: endpoint.name(),
            at_ms: unix_millis(),
            errcode,
        });
    }

    /// The request log.
    pub fn log(&self) -> &[LoggedRequest] {
        &self.log
    }

    /// Calls per endpoint name.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for entry in &self.log {
            *counts.entry(entry.endpoint).or_insert(0) += 1;
        }
        counts
    }

    // ----- changes -----

    /// Gives a material new content and a newer update_time; false if unknown.
    pub fn change(&mut self, media_id: &str) -> bool {
        let new_seed = self.rng.u64(..);
        let Some(asset) = self.assets.get_mut(media_id) else {
            return false;
        };
        asset.update_time = unix_now().max(asset.update_time + 1);
        match &mut asset.body {
            Body::File(spec)
            | Body::Video {
                file: Some(spec), ..
            } => spec.seed = new_seed,
            Body::Video { description, .. } => description.push_str(" (edited)"),
            Body::News(articles) => {
                for article in articles {
                    article.content.push_str("<p>Edited.</p>");
                    article.title.push_str(" (edited)");
                }
            }
        }
        true
    }

    /// Deletes a material; false if unknown.
    pub fn delete(&mut self, media_id: &str) -> bool {
        self.assets.remove(media_id).is_some()
    }

    /// Applies a hook action to materials of `kind`.
    pub(super) fn apply(&mut self, kind: MediaKind, action: &HookAction) {
        match action {
            HookAction::Insert { count } => {
                for _ in 0..*count {
                    super::seed::add_generated(self, kind, None, None);
                }
            }
            HookAction::Delete { media_ids } => {
                for id in media_ids {
                    self.delete(id);
                }
            }
            HookAction::Change { media_ids } => {
                for id in media_ids {
                    self.change(id);
                }
            }
        }
    }

    /// Register an image of the article image host.
    pub(super) fn add_article_image(&mut self, size: u64) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let id = self.random_string(52, ALPHABET);
        let seed = self.rng.u64(..);
        self.article_images.insert(
            id.clone(),
            FileSpec {
                seed,
                size,
                format: FileFormat::Jpeg,
            },
        );
        id
    }
}
