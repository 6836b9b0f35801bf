//! The configuration file: TOML, read once, validated before anything touches the network.
//!
//! Relative paths in the file are resolved against the file's own directory, so a unit
//! file or a container can point at a config without caring about the working directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_ENV: &str = "MPMIRROR_CONFIG";
/// The official API host.
pub const DEFAULT_API_BASE: &str = "https://api.weixin.qq.com";
/// Default API requests per second, per account.
pub const DEFAULT_REQUESTS_PER_SECOND: f64 = 5.0;
/// Default number of downloads in flight at once, per account.
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 4;
/// Default share of each API's daily quota left to production services.
pub const DEFAULT_QUOTA_RESERVE: f64 = 0.3;
/// Default age past which `health` reports the backup as stale: a day and a bit.
pub const DEFAULT_HEALTH_MAX_AGE: Duration = Duration::from_hours(26);
/// Default time zone of cron schedules: WeChat quotas reset at Beijing midnight.
pub const DEFAULT_TIMEZONE: &str = "Asia/Shanghai";

/// What went wrong while loading the configuration; each variant names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config: {key}: {problem}")]
    Invalid {
        /// The dotted key, e.g. `account[0].app_id` or `limits.quota_reserve`.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A secret file named by the config could not be read.
    #[error("invalid config: {key}: cannot read {path}")]
    SecretFile {
        /// The key that names the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No config file was given.
    #[error("no config file: pass --config FILE or set {CONFIG_ENV}")]
    Missing,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory that holds catalog.db, blobs/ and tmp/.
    pub data_dir: PathBuf,
    /// Log line format on stderr.
    pub log_format: LogFormat,
    /// Rate, concurrency and quota limits, applied per account.
    pub limits: Limits,
    /// The accounts to mirror, in file order.
    pub accounts: Vec<Account>,
    /// When the daemon runs syncs.
    pub schedule: Schedule,
    /// The optional Prometheus endpoint of the daemon.
    pub metrics: Option<Metrics>,
    /// The optional webhook the daemon posts to.
    pub notify: Option<Notify>,
    /// What `mpmirror health` accepts as healthy.
    pub health: Health,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Limits applied to each account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// API requests to api_base per second, token requests included.
    pub requests_per_second: f64,
    /// Downloads in flight at once.
    pub concurrent_downloads: usize,
    /// Share (0 to <1) of each API's daily limit never spent, left to production.
    pub quota_reserve: f64,
    /// Optional absolute calls per Beijing day per API, keyed by endpoint name
    /// (`get_material`, `batchget_material`, ...), counted across runs.
    pub daily_budget: BTreeMap<String, u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            concurrent_downloads: DEFAULT_CONCURRENT_DOWNLOADS,
            quota_reserve: DEFAULT_QUOTA_RESERVE,
            daily_budget: BTreeMap::new(),
        }
    }
}

/// How an account obtains its access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `POST /cgi-bin/stable_token` without force_refresh: production keeps its tokens.
    Stable(Secret),
    /// `GET /cgi-bin/token`: invalidates the token production uses; only for isolated accounts.
    Legacy(Secret),
    /// A file kept fresh by the company's token service, re-read when a token is rejected.
    File(PathBuf),
}

/// One Official Account to mirror.
#[derive(Debug, Clone)]
pub struct Account {
    /// Short unique label; catalog rows are keyed by it.
    pub name: String,
    /// The account's AppID.
    pub app_id: String,
    /// Base URL of the API, without trailing slash.
    pub api_base: String,
    /// Where tokens come from, with the secret it needs.
    pub token: TokenSource,
}

/// When the daemon runs syncs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// A 5-field cron expression, evaluated in `timezone`.
    pub cron: Option<String>,
    /// Or a fixed interval between run starts, e.g. "6h".
    #[serde(default, with = "humantime_serde")]
    pub every: Option<Duration>,
    /// IANA time zone of `cron`; defaults to Asia/Shanghai.
    pub timezone: Option<String>,
    /// Run once right after the daemon starts.
    #[serde(default)]
    pub run_at_start: bool,
    /// Random delay added to each run's start, up to this long.
    #[serde(default, with = "humantime_serde")]
    pub jitter: Option<Duration>,
}

/// The daemon's Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address to serve `/metrics` on, e.g. "127.0.0.1:9464".
    pub listen: std::net::SocketAddr,
}

/// Where the daemon reports failures and recoveries.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    /// URL to POST to; a secret, since robot URLs carry their key.
    pub webhook: Secret,
    /// Body format of the POST.
    #[serde(default)]
    pub format: NotifyFormat,
}

/// Body format of webhook notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NotifyFormat {
    /// `{"event","text",...}`.
    #[default]
    Json,
    /// WeCom (企业微信) group robot.
    Wecom,
    /// DingTalk group robot.
    Dingtalk,
    /// Feishu / Lark group robot.
    Feishu,
}

/// What `mpmirror health` accepts as healthy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// The last ok run must have finished within this long, e.g. "26h".
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            max_age: DEFAULT_HEALTH_MAX_AGE,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: PathBuf,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    account: Vec<RawAccount>,
    #[serde(default)]
    schedule: Schedule,
    metrics: Option<Metrics>,
    notify: Option<Notify>,
    #[serde(default)]
    health: Health,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: String,
    app_id: String,
    app_secret: Option<Secret>,
    app_secret_file: Option<PathBuf>,
    api_base: Option<String>,
    token: Option<TokenMode>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum TokenMode {
    Stable,
    Legacy,
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::new(),
            message: err.to_string().trim().replace('\n', " "),
        })?;
        validate_limits(&raw.limits)?;
        validate_schedule(&raw.schedule)?;
        if let Some(notify) = &raw.notify {
            validate_url("notify.webhook", notify.webhook.expose())?;
        }
        if raw.account.is_empty() {
            return Err(invalid("account", "at least one [[account]] is required"));
        }
        let mut accounts = Vec::with_capacity(raw.account.len());
        for (index, account) in raw.account.into_iter().enumerate() {
            let account = validate_account(index, account, base)?;
            if accounts.iter().any(|a: &Account| a.name == account.name) {
                return Err(invalid(
                    &format!("account[{index}].name"),
                    &format!("duplicate account name {:?}", account.name),
                ));
            }
            accounts.push(account);
        }
        Ok(Self {
            data_dir: base.join(raw.data_dir),
            log_format: raw.log_format,
            limits: raw.limits,
            accounts,
            schedule: raw.schedule,
            metrics: raw.metrics,
            notify: raw.notify,
            health: raw.health,
        })
    }
}

fn invalid(key: &str, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.to_owned(),
    }
}

/// The endpoint names `limits.daily_budget` may use.
pub const BUDGET_ENDPOINTS: [&str; 4] = [
    "batchget_material",
    "get_material",
    "get_materialcount",
    "stable_token",
];

fn validate_limits(limits: &Limits) -> Result<(), ConfigError> {
    let rps = limits.requests_per_second;
    if !(rps.is_finite() && rps > 0.0 && rps <= 10_000.0) {
        return Err(invalid(
            "limits.requests_per_second",
            "must be a number above 0 and at most 10000",
        ));
    }
    if !(1..=64).contains(&limits.concurrent_downloads) {
        return Err(invalid(
            "limits.concurrent_downloads",
            "must be between 1 and 64",
        ));
    }
    let reserve = limits.quota_reserve;
    if !(0.0..1.0).contains(&reserve) {
        return Err(invalid(
            "limits.quota_reserve",
            "must be at least 0 and below 1 (a share of the daily limit)",
        ));
    }
    for key in limits.daily_budget.keys() {
        if !BUDGET_ENDPOINTS.contains(&key.as_str()) {
            return Err(invalid(
                &format!("limits.daily_budget.{key}"),
                &format!("unknown endpoint; expected one of {BUDGET_ENDPOINTS:?}"),
            ));
        }
    }
    Ok(())
}

fn validate_schedule(schedule: &Schedule) -> Result<(), ConfigError> {
    if schedule.cron.is_some() && schedule.every.is_some() {
        return Err(invalid("schedule", "set either cron or every, not both"));
    }
    if schedule.every.is_some_and(|every| every.is_zero()) {
        return Err(invalid("schedule.every", "must be longer than zero"));
    }
    parse_zone(schedule.timezone.as_deref())
        .map_err(|problem| invalid("schedule.timezone", &problem))?;
    if let Some(cron) = &schedule.cron {
        CronSchedule::parse(cron, schedule.timezone.as_deref())
            .map_err(|problem| invalid("schedule.cron", &problem))?;
    }
    Ok(())
}

/// Parses an IANA time zone name; `None` is Asia/Shanghai.
///
/// # Errors
/// When the name is not a known zone.
pub fn parse_zone(name: Option<&str>) -> Result<chrono_tz::Tz, String> {
    let name = name.unwrap_or(DEFAULT_TIMEZONE);
    name.parse()
        .map_err(|_| format!("{name:?} is not an IANA time zone, e.g. Asia/Shanghai"))
}

/// A 5-field cron expression in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl CronSchedule {
    /// Parses a 5-field expression (minute hour day-of-month month day-of-week) and an
    /// IANA zone (default Asia/Shanghai).
    ///
    /// # Errors
    /// What is wrong with the expression or the zone.
    pub fn parse(expression: &str, zone: Option<&str>) -> Result<Self, String> {
        let fields = expression.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "{expression:?} has {fields} fields; expected 5 (minute hour day-of-month month day-of-week)"
            ));
        }
        let cron = <croner::Cron as std::str::FromStr>::from_str(expression)
            .map_err(|err| format!("{expression:?} is not a cron expression: {err}"))?;
        Ok(Self {
            cron,
            zone: parse_zone(zone)?,
        })
    }

    /// The first slot strictly after `unix` (seconds).
    pub fn next_after(&self, unix: i64) -> Option<i64> {
        let start = chrono::TimeZone::timestamp_opt(&self.zone, unix, 0).single()?;
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|next| next.timestamp())
    }
}

fn validate_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(()),
        Ok(_) => Err(invalid(key, "must be an http:// or https:// URL")),
        Err(err) => Err(invalid(key, &format!("not a URL: {err}"))),
    }
}

fn validate_account(index: usize, raw: RawAccount, base: &Path) -> Result<Account, ConfigError> {
    let key = |field: &str| format!("account[{index}].{field}");
    let name_ok = !raw.name.is_empty()
        && raw.name.len() <= 64
        && raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(invalid(
            &key("name"),
            "must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'",
        ));
    }
    if raw.app_id.trim().is_empty() || raw.app_id.chars().any(char::is_whitespace) {
        return Err(invalid(
            &key("app_id"),
            "must be the account's AppID, e.g. wx1234567890abcdef",
        ));
    }
    let api_base = raw
        .api_base
        .unwrap_or_else(|| DEFAULT_API_BASE.to_owned())
        .trim_end_matches('/')
        .to_owned();
    validate_url(&key("api_base"), &api_base)?;
    let secret = read_secret(index, raw.app_secret, raw.app_secret_file, base)?;
    let token = match (raw.token_file, raw.token, secret) {
        (Some(_), Some(_), _) => {
            return Err(invalid(
                &key("token_file"),
                "set either token_file or token, not both",
            ));
        }
        (Some(file), None, _) => TokenSource::File(base.join(file)),
        (None, mode, Some(secret)) => match mode.unwrap_or(TokenMode::Stable) {
            TokenMode::Stable => TokenSource::Stable(secret),
            TokenMode::Legacy => TokenSource::Legacy(secret),
        },
        (None, _, None) => {
            return Err(invalid(
                &key("app_secret"),
                "missing: set app_secret, app_secret_file or token_file",
            ));
        }
    };
    Ok(Account {
        name: raw.name,
        app_id: raw.app_id.trim().to_owned(),
        api_base,
        token,
    })
}

fn read_secret(
    index: usize,
    inline: Option<Secret>,
    file: Option<PathBuf>,
    base: &Path,
) -> Result<Option<Secret>, ConfigError> {
    let key = |field: &str| format!("account[{index}].{field}");
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(
            &key("app_secret_file"),
            "set either app_secret or app_secret_file, not both",
        )),
        (Some(secret), None) if secret.expose().trim().is_empty() => {
            Err(invalid(&key("app_secret"), "is empty"))
        }
        (Some(secret), None) => Ok(Some(Secret::new(secret.expose().trim()))),
        (None, Some(file)) => {
            let path = expand_credentials_dir(&base.join(file));
            let text =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::SecretFile {
                    key: key("app_secret_file"),
                    path: path.clone(),
                    source,
                })?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(invalid(&key("app_secret_file"), "the file is empty"));
            }
            Ok(Some(Secret::new(secret)))
        }
        (None, None) => Ok(None),
    }
}

/// Expands a leading `$CREDENTIALS_DIRECTORY` so a systemd unit can name its credential.
fn expand_credentials_dir(path: &Path) -> PathBuf {
    const VAR: &str = "$CREDENTIALS_DIRECTORY";
    let text = path.to_string_lossy();
    let Some(pos) = text.find(VAR) else {
        return path.to_owned();
    };
    let Ok(dir) = std::env::var("CREDENTIALS_DIRECTORY") else {
        return path.to_owned();
    };
    PathBuf::from(format!("{dir}{}", &text[pos + VAR.len()..]))
}
