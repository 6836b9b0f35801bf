//! The WeChat API client: tokens, pacing, retries, error codes, and file bodies.
//!
//! It knows HTTP and WeChat and nothing of SQLite or files. Every request to `api_base`
//! passes one rate limiter, token requests included; downloads from CDN URLs do not.
//! Tokens never appear in errors or logs: URLs are built here and never logged, and
//! reqwest errors lose their URL before they leave this module.

mod download;
mod error;
mod token;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, Quota as RateQuota, RateLimiter};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use download::{Downloaded, FileDownload};
pub use error::{ErrorClass, WechatError};
pub use token::{Credentials, TokenCache};
pub use types::{MaterialItem, MaterialKind, MaterialPage, NewsArticle, Quota, VideoInfo};

use token::{Fetched, read_token_file};

/// The API endpoints the client calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
}

impl Endpoint {
    /// Short name used in logs, budgets and the catalog.
    pub fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::StableToken => "stable_token",
            Self::BatchgetMaterial => "batchget_material",
            Self::GetMaterial => "get_material",
            Self::GetMaterialCount => "get_materialcount",
            Self::QuotaGet => "quota_get",
        }
    }

    /// Path under api_base.
    pub fn cgi_path(self) -> &'static str {
        match self {
            Self::Token => "/cgi-bin/token",
            Self::StableToken => "/cgi-bin/stable_token",
            Self::BatchgetMaterial => "/cgi-bin/material/batchget_material",
            Self::GetMaterial => "/cgi-bin/material/get_material",
            Self::GetMaterialCount => "/cgi-bin/material/get_materialcount",
            Self::QuotaGet => "/cgi-bin/openapi/quota/get",
        }
    }

    /// Finds an endpoint by its short name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Token,
            Self::StableToken,
            Self::BatchgetMaterial,
            Self::GetMaterial,
            Self::GetMaterialCount,
            Self::QuotaGet,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }
}

/// How failed requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries per request for retryable errors, the first included.
    pub attempts: u32,
    /// First backoff; doubled per retry, with up to 50% jitter.
    pub base_delay: Duration,
    /// Longest backoff.
    pub max_delay: Duration,
    /// Wait after 45011 (minute quota); `None` waits for the next wall-clock minute.
    pub minute_quota_wait: Option<Duration>,
    /// How many 45011 waits a single request may make.
    pub minute_quota_waits: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
            minute_quota_wait: None,
            minute_quota_waits: 3,
        }
    }
}

impl RetryPolicy {
    /// Backoff before retry number `retry` (0-based): exponential, capped, jittered.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponential = self.base_delay.saturating_mul(1u32 << retry.min(16));
        let capped = exponential.min(self.max_delay);
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    fn minute_wait(&self) -> Duration {
        if let Some(wait) = self.minute_quota_wait {
            return wait;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_secs(60 - now.as_secs() % 60) + Duration::from_millis(500)
    }
}

/// Everything a client needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// API base URL without trailing slash.
    pub api_base: String,
    /// The AppID.
    pub app_id: String,
    /// Where tokens come from.
    pub credentials: Credentials,
    /// Requests per second to api_base, token requests included.
    pub requests_per_second: f64,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Token rejections allowed per client before giving up.
    pub max_token_refreshes: u32,
    /// Timeout of one JSON API request; file bodies are bounded by `read_timeout`
    /// instead, since a large file on a slow link may take longer.
    pub request_timeout: Duration,
    /// Longest silence while reading any body.
    pub read_timeout: Duration,
}

impl ClientConfig {
    /// Defaults for everything but the account.
    pub fn new(api_base: &str, app_id: &str, credentials: Credentials) -> Self {
        Self {
            api_base: api_base.trim_end_matches('/').to_owned(),
            app_id: app_id.to_owned(),
            credentials,
            requests_per_second: 5.0,
            retry: RetryPolicy::default(),
            max_token_refreshes: 3,
            request_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_mins(1),
        }
    }
}

/// A client of one account.
pub struct Client {
    http: reqwest::Client,
    config: ClientConfig,
    limiter: DefaultDirectRateLimiter,
    tokens: TokenCache,
    budgets: Mutex<HashMap<Endpoint, u64>>,
    calls: Mutex<BTreeMap<(Endpoint, i64), u64>>,
    rejected_file_token: Mutex<Option<String>>,
    limiter_waits: Mutex<Duration>,
}

/// A shared client.
pub type SharedClient = Arc<Client>;

impl Client {
    /// Builds a client.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (e.g. no TLS roots).
    pub fn new(config: ClientConfig) -> Result<Self, WechatError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(config.read_timeout)
            .user_agent(concat!("mpmirror/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| WechatError::Setup(err.without_url()))?;
        let period = Duration::from_secs_f64(1.0 / config.requests_per_second.max(1e-4));
        let quota = RateQuota::with_period(period)
            .unwrap_or_else(|| RateQuota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        Ok(Self {
            http,
            limiter: RateLimiter::direct(quota),
            tokens: TokenCache::new(config.max_token_refreshes),
            config,
            budgets: Mutex::new(HashMap::new()),
            calls: Mutex::new(BTreeMap::new()),
            rejected_file_token: Mutex::new(None),
            limiter_waits: Mutex::new(Duration::ZERO),
        })
    }

    /// Caps the calls this client may still make to `endpoint`.
    pub fn set_budget(&self, endpoint: Endpoint, calls: u64) {
        lock(&self.budgets).insert(endpoint, calls);
    }

    /// Calls left under the budget of `endpoint`, if it has one.
    pub fn budget_left(&self, endpoint: Endpoint) -> Option<u64> {
        lock(&self.budgets).get(&endpoint).copied()
    }

    /// Requests sent so far, by endpoint and errcode (0: success, -2: no errcode).
    pub fn calls(&self) -> BTreeMap<(Endpoint, i64), u64> {
        lock(&self.calls).clone()
    }

    /// Requests sent so far to api_base.
    pub fn total_calls(&self) -> u64 {
        lock(&self.calls).values().sum()
    }

    /// Time spent waiting for the rate limiter so far.
    pub fn limiter_wait(&self) -> Duration {
        *lock(&self.limiter_waits)
    }

    fn count(&self, endpoint: Endpoint, errcode: i64) {
        *lock(&self.calls).entry((endpoint, errcode)).or_insert(0) += 1;
    }

    fn take_budget(&self, endpoint: Endpoint) -> Result<(), WechatError> {
        let mut budgets = lock(&self.budgets);
        match budgets.get_mut(&endpoint) {
            Some(0) => Err(WechatError::BudgetSpent {
                endpoint: endpoint.name(),
            }),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn pace(&self) {
        let started = tokio::time::Instant::now();
        self.limiter.until_ready().await;
        *lock(&self.limiter_waits) += started.elapsed();
    }

    // ----- tokens -----

    async fn token(&self) -> Result<token::Token, WechatError> {
        self.tokens.get(|| self.fetch_token()).await
    }

    async fn fetch_token(&self) -> Result<Fetched, WechatError> {
        match &self.config.credentials {
            Credentials::Stable(secret) => self.retrying(|| self.stable_token(secret)).await,
            Credentials::Legacy(secret) => self.retrying(|| self.legacy_token(secret)).await,
            Credentials::File(path) => self.file_token(path).await,
        }
    }

    /// Tries `attempt` until it succeeds, fails for good, or runs out of attempts,
    /// with the policy's backoff between tries.
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Result<T, WechatError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, WechatError>>,
    {
        let mut retry = 0;
        loop {
            match attempt().await {
                Err(err) if err.is_retryable() && retry + 1 < self.config.retry.attempts => {
                    let delay = self.config.retry.backoff(retry);
                    tracing::warn!(error = %err, ?delay, "request failed; retrying");
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                other => return other,
            }
        }
    }

    /// Reads the token file; when it still holds the token just rejected, waits a
    /// little for the token service to write the new one before giving up.
    async fn file_token(&self, path: &std::path::PathBuf) -> Result<Fetched, WechatError> {
        const TRIES: u32 = 6;
        const PAUSE: Duration = Duration::from_millis(500);
        let rejected = lock(&self.rejected_file_token).clone();
        for _ in 0..TRIES {
            let fetched = read_token_file(path).await?;
            if rejected.as_deref() != Some(fetched.value.expose()) {
                return Ok(fetched);
            }
            tokio::time::sleep(PAUSE).await;
        }
        Err(WechatError::TokenFileStale {
            path: path.clone(),
            errcode: 40001,
        })
    }

    async fn stable_token(&self, secret: &crate::secret::Secret) -> Result<Fetched, WechatError> {
        let body = json!({
            "grant_type": "client_credential",
            "appid": self.config.app_id,
            "secret": secret.expose(),
            "force_refresh": false,
        });
        let url = format!(
            "{}{}",
            self.config.api_base,
            Endpoint::StableToken.cgi_path()
        );
        let request = self.http.post(url).json(&body);
        let value = self
            .send_json(
                Endpoint::StableToken,
                request.timeout(self.config.request_timeout),
            )
            .await?;
        parse_token(Endpoint::StableToken, &value)
    }

    async fn legacy_token(&self, secret: &crate::secret::Secret) -> Result<Fetched, WechatError> {
        let url = format!("{}{}", self.config.api_base, Endpoint::Token.cgi_path());
        let request = self.http.get(url).query(&[
            ("grant_type", "client_credential"),
            ("appid", self.config.app_id.as_str()),
            ("secret", secret.expose()),
        ]);
        let value = self
            .send_json(
                Endpoint::Token,
                request.timeout(self.config.request_timeout),
            )
            .await?;
        parse_token(Endpoint::Token, &value)
    }

    // ----- requests -----

    /// Sends one paced, budgeted request and reads a JSON body; errcode != 0 is an error.
    async fn send_json(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, WechatError> {
        let response = self.send(endpoint, request).await?;
        let status = response.status();
        if !status.is_success() {
            self.count(endpoint, -2);
            return Err(WechatError::Http {
                endpoint: endpoint.name().to_owned(),
                status: status.as_u16(),
            });
        }
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(err) => {
                self.count(endpoint, -2);
                return Err(error::transport(endpoint.name(), err));
            }
        };
        let value: Value = if let Ok(value) = serde_json::from_slice(&bytes) {
            value
        } else {
            self.count(endpoint, -2);
            let reason = if bytes.trim_ascii_start().starts_with(b"<") {
                "answered an HTML page instead of JSON".to_owned()
            } else {
                format!("answered a body that is not JSON ({} bytes)", bytes.len())
            };
            return Err(WechatError::Body {
                endpoint: endpoint.name().to_owned(),
                reason,
            });
        };
        let errcode = value.get("errcode").and_then(Value::as_i64).unwrap_or(0);
        self.count(endpoint, errcode);
        if errcode != 0 {
            return Err(WechatError::from_body(endpoint.name(), errcode, &value));
        }
        Ok(value)
    }

    async fn send(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, WechatError> {
        self.take_budget(endpoint)?;
        self.pace().await;
        tracing::trace!(endpoint = endpoint.name(), "request");
        request
            .send()
            .await
            .inspect_err(|_| self.count(endpoint, -2))
            .map_err(|err| error::transport(endpoint.name(), err))
    }

    /// One API call with a token: refreshes a rejected token once, retries transient
    /// errors with backoff, waits out the minute quota. `make` builds the request
    /// from the URL with the token.
    async fn call<T, F, Fut>(&self, endpoint: Endpoint, attempt: F) -> Result<T, WechatError>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, WechatError>>,
    {
        let mut refreshed = false;
        let mut retries = 0;
        let mut minute_waits = 0;
        loop {
            let token = self.token().await?;
            let url = format!(
                "{}{}?access_token={}",
                self.config.api_base,
                endpoint.cgi_path(),
                token.value.expose()
            );
            let err = match attempt(url).await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            match err.class() {
                ErrorClass::TokenRejected if !refreshed => {
                    tracing::info!(
                        endpoint = endpoint.name(),
                        errcode = err.errcode(),
                        "access token rejected; getting a fresh one"
                    );
                    if matches!(self.config.credentials, Credentials::File(_)) {
                        *lock(&self.rejected_file_token) = Some(token.value.expose().to_owned());
                    }
                    self.tokens.reject(token.generation).await?;
                    refreshed = true;
                }
                ErrorClass::Retryable if retries + 1 < self.config.retry.attempts => {
                    let delay = self.config.retry.backoff(retries);
                    tracing::warn!(endpoint = endpoint.name(), error = %err, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    retries += 1;
                }
                ErrorClass::MinuteQuota if minute_waits < self.config.retry.minute_quota_waits => {
                    let delay = self.config.retry.minute_wait();
                    tracing::warn!(
                        endpoint = endpoint.name(),
                        ?delay,
                        "minute quota reached (45011); waiting for the next minute"
                    );
                    tokio::time::sleep(delay).await;
                    minute_waits += 1;
                }
                _ => return Err(err),
            }
        }
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        body: Option<&Value>,
    ) -> Result<T, WechatError> {
        let value = self
            .call(endpoint, |url| async move {
                let request = match body {
                    Some(body) => self.http.post(url).json(body),
                    None => self.http.get(url),
                }
                .timeout(self.config.request_timeout);
                self.send_json(endpoint, request).await
            })
            .await?;
        serde_json::from_value(value).map_err(|err| WechatError::Body {
            endpoint: endpoint.name().to_owned(),
            reason: format!("unexpected JSON: {err}"),
        })
    }

    // ----- the API -----

    /// One page of `batchget_material`; `count` is clamped to 1..=20.
    ///
    /// # Errors
    /// API, transport and token errors after retries.
    pub async fn list(
        &self,
        kind: MaterialKind,
        offset: u64,
        count: u32,
    ) -> Result<MaterialPage, WechatError> {
        let body = json!({"type": kind.as_str(), "offset": offset, "count": count.clamp(1, 20)});
        let value: Value = self
            .call_json(Endpoint::BatchgetMaterial, Some(&body))
            .await?;
        MaterialPage::from_json(value).map_err(|err| WechatError::Body {
            endpoint: Endpoint::BatchgetMaterial.name().to_owned(),
            reason: format!("unexpected listing shape: {err}"),
        })
    }

    /// `get_material` of an image or voice clip: the file, checked not to be an error.
    ///
    /// # Errors
    /// API errors (40007 when it was deleted), an HTML page, transport errors.
    pub async fn get_file(&self, media_id: &str) -> Result<FileDownload, WechatError> {
        let endpoint = Endpoint::GetMaterial;
        let body = json!({"media_id": media_id});
        self.call(endpoint, |url| {
            let body = &body;
            async move {
                let response = self.send(endpoint, self.http.post(url).json(body)).await?;
                let sniffed = download::sniff(endpoint.name(), response).await;
                let errcode = match &sniffed {
                    Ok(_) => 0,
                    Err(err) => err.errcode().unwrap_or(-2),
                };
                self.count(endpoint, errcode);
                match sniffed? {
                    Downloaded::File(file) => Ok(*file),
                    Downloaded::WebPage { .. } => Err(WechatError::Body {
                        endpoint: endpoint.name().to_owned(),
                        reason: "answered an HTML page instead of the file".to_owned(),
                    }),
                }
            }
        })
        .await
    }

    /// `get_material` of a video: its title, description and down_url.
    ///
    /// # Errors
    /// API, transport and token errors after retries.
    pub async fn get_video(&self, media_id: &str) -> Result<VideoInfo, WechatError> {
        self.call_json(Endpoint::GetMaterial, Some(&json!({"media_id": media_id})))
            .await
    }

    /// `openapi/quota/get` for an endpoint.
    ///
    /// # Errors
    /// API, transport and token errors after retries.
    pub async fn quota(&self, of: Endpoint) -> Result<Quota, WechatError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            quota: Quota,
        }
        let answer: Answer = self
            .call_json(
                Endpoint::QuotaGet,
                Some(&json!({"cgi_path": of.cgi_path()})),
            )
            .await?;
        Ok(answer.quota)
    }

    /// Downloads from a CDN URL (a video's down_url, an article image): not paced by
    /// the API limiter, no token, retried on transient errors.
    ///
    /// # Errors
    /// HTTP and transport errors after retries.
    pub async fn download(&self, url: &str) -> Result<Downloaded, WechatError> {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "download".to_owned());
        self.retrying(|| async {
            match self.http.get(url).send().await {
                Ok(response) => download::sniff(&host, response).await,
                Err(err) => Err(error::transport(&host, err)),
            }
        })
        .await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn parse_token(endpoint: Endpoint, value: &Value) -> Result<Fetched, WechatError> {
    let token = value
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| WechatError::Body {
            endpoint: endpoint.name().to_owned(),
            reason: "answered no access_token".to_owned(),
        })?;
    let expires_in = value
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(7200);
    Ok(Fetched {
        value: crate::secret::Secret::new(token),
        expires_in: Duration::from_secs(expires_in),
    })
}
