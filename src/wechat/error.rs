//! The client's errors, and the one place that decides what each one means.

use std::path::PathBuf;

/// What went wrong talking to the WeChat API. Messages never contain a token or secret.
#[derive(Debug, thiserror::Error)]
pub enum WechatError {
    /// The API answered with a non-zero errcode.
    #[error("{endpoint} answered errcode {errcode}: {errmsg}")]
    Api {
        /// Endpoint name, e.g. `get_material`.
        endpoint: &'static str,
        /// The errcode.
        errcode: i64,
        /// The errmsg as received.
        errmsg: String,
    },
    /// An HTTP status other than 200.
    #[error("{endpoint} answered HTTP {status}")]
    Http {
        /// Endpoint name or download host.
        endpoint: String,
        /// The status.
        status: u16,
    },
    /// The request failed in transport (connect, timeout, reset, body cut short).
    #[error("{endpoint}: {what}")]
    Transport {
        /// Endpoint name or download host.
        endpoint: String,
        /// What failed, e.g. "request timed out".
        what: String,
        /// The cause, with its URL removed.
        #[source]
        source: Option<reqwest::Error>,
    },
    /// The body is not what the endpoint answers (an HTML page, bad JSON, a short body).
    #[error("{endpoint}: {reason}")]
    Body {
        /// Endpoint name or download host.
        endpoint: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The token file could not be read.
    #[error("cannot read token file {path}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token kept being rejected: another service is refreshing it.
    #[error(
        "access tokens were rejected {refreshes} times in this run: another service is \
         taking over this account's token (force_refresh on stable_token, or the legacy \
         /cgi-bin/token); stopping instead of burning the token quota"
    )]
    TokenStolen {
        /// How many refreshes were made.
        refreshes: u32,
    },
    /// The token file holds a token the API rejects, and re-reading it gave the same one.
    #[error(
        "the token in {path} was rejected (errcode {errcode}) and the file still holds it: \
         is the token service that maintains it running?"
    )]
    TokenFileStale {
        /// The file.
        path: PathBuf,
        /// The errcode of the rejection.
        errcode: i64,
    },
    /// This run's budget for an endpoint is spent; no call was made.
    #[error("the quota budget for {endpoint} is spent for today (quota_reserve or daily_budget)")]
    BudgetSpent {
        /// Endpoint name.
        endpoint: &'static str,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Setup(#[source] reqwest::Error),
}

/// What an error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again after a backoff: -1, 5xx, timeouts, resets, cut-short or garbled bodies.
    Retryable,
    /// The access token was rejected (40001, 40014, 42001): refresh once and retry.
    TokenRejected,
    /// The minute quota is spent (45011): wait for the next minute.
    MinuteQuota,
    /// The daily quota is spent (45009): stop for today.
    DailyQuota,
    /// Our own budget is spent: stop fetching.
    BudgetSpent,
    /// The material does not exist (40007): deleted after it was listed.
    NotFound,
    /// Only a person can fix it: credentials, IP whitelist, permissions.
    NeedsPerson,
    /// Anything else: give up on this request.
    Permanent,
}

impl WechatError {
    /// The error an API body with a non-zero `errcode` stands for.
    pub(crate) fn from_body(
        endpoint: &'static str,
        errcode: i64,
        body: &serde_json::Value,
    ) -> Self {
        Self::Api {
            endpoint,
            errcode,
            errmsg: body
                .get("errmsg")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// The errcode, when the API answered with one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Self::Api { errcode, .. } | Self::TokenFileStale { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    /// What this error means; decided here and nowhere else.
    pub fn class(&self) -> ErrorClass {
        match self {
            // From a token endpoint, "invalid credential" means the AppSecret or AppID.
            Self::Api {
                endpoint: "token" | "stable_token",
                errcode: 40001 | 40014,
                ..
            } => ErrorClass::NeedsPerson,
            Self::Api { errcode, .. } => class_of_errcode(*errcode),
            Self::Http { status, .. } if *status >= 500 || *status == 429 => ErrorClass::Retryable,
            Self::Http { .. } | Self::Setup(_) => ErrorClass::Permanent,
            Self::Transport { .. } | Self::Body { .. } => ErrorClass::Retryable,
            Self::TokenFile { .. } | Self::TokenStolen { .. } | Self::TokenFileStale { .. } => {
                ErrorClass::NeedsPerson
            }
            Self::BudgetSpent { .. } => ErrorClass::BudgetSpent,
        }
    }

    /// Whether the same request may succeed if sent again after a backoff.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Retryable
    }

    /// What a person should do about it, for errors only a person can fix.
    pub fn advice(&self) -> Option<&'static str> {
        if let Self::Api {
            endpoint: "token" | "stable_token",
            errcode: 40001 | 40014,
            ..
        } = self
        {
            return Some(
                "the token endpoint rejected the credentials: check app_id and app_secret",
            );
        }
        if let Self::TokenStolen { .. } | Self::TokenFileStale { .. } = self {
            return None;
        }
        let advice = match self.errcode()? {
            40125 => {
                "the AppSecret was rejected: check app_secret (it changes when it is reset in the admin console)"
            }
            40013 => "the AppID was rejected: check app_id",
            40164 => {
                "this machine's IP is not on the account's IP whitelist: add it in the admin console \
                 (Settings and Development > Basic Configuration > IP whitelist)"
            }
            89503 => {
                "the platform asked the account's administrator to confirm this IP: ask them to \
                 approve it (if rejected, the IP is blocked for an hour)"
            }
            48001 => "the account is not authorised for this API: check its type and permissions",
            45103 => "the platform no longer supports this API",
            45009 => {
                "the API's daily quota is spent; it resets at midnight Beijing time (UTC+8), \
                 and the next run fetches only what is missing"
            }
            _ => return None,
        };
        Some(advice)
    }
}

fn class_of_errcode(errcode: i64) -> ErrorClass {
    match errcode {
        -1 => ErrorClass::Retryable,
        40001 | 40014 | 42001 => ErrorClass::TokenRejected,
        45011 => ErrorClass::MinuteQuota,
        45009 => ErrorClass::DailyQuota,
        40007 => ErrorClass::NotFound,
        40125 | 40013 | 40164 | 89503 | 48001 | 45103 | 41002 | 41004 => ErrorClass::NeedsPerson,
        _ => ErrorClass::Permanent,
    }
}

/// Turns a reqwest error into ours, dropping the URL (it carries the access token).
pub(crate) fn transport(endpoint: &str, err: reqwest::Error) -> WechatError {
    let what = if err.is_timeout() {
        "request timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "the response body was cut short or unreadable"
    } else {
        "the request failed (connection reset or closed)"
    };
    WechatError::Transport {
        endpoint: endpoint.to_owned(),
        what: what.to_owned(),
        source: Some(err.without_url()),
    }
}
