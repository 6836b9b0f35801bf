//! Access tokens: fetched once, reused until shortly before expiry, refreshed by
//! compare-and-swap so that many requests seeing one stale token cause one refresh.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::error::WechatError;
use crate::secret::Secret;

/// Where tokens come from.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `POST /cgi-bin/stable_token` with force_refresh false.
    Stable(Secret),
    /// `GET /cgi-bin/token` (invalidates other services' tokens).
    Legacy(Secret),
    /// A file maintained by another service; holds the token alone.
    File(PathBuf),
}

/// A token in use, tagged with its generation for compare-and-swap refreshes.
#[derive(Clone)]
pub struct Token {
    /// The token.
    pub value: Secret,
    /// Bumped on every new token; a rejection only drops the generation it saw.
    pub generation: u64,
    expires_at: Instant,
}

/// Renew this long before the announced expiry.
const EXPIRY_MARGIN: Duration = Duration::from_mins(2);
/// A file token's lifetime is unknown: trust it until it is rejected.
const FILE_TOKEN_LIFETIME: Duration = Duration::from_hours(8760);

#[derive(Default)]
struct State {
    current: Option<Token>,
    generation: u64,
    refreshes: u32,
}

/// The token cache of one client.
pub struct TokenCache {
    state: Mutex<State>,
    max_refreshes: u32,
}

/// A freshly obtained token and its lifetime.
pub struct Fetched {
    /// The token.
    pub value: Secret,
    /// Its lifetime as announced.
    pub expires_in: Duration,
}

impl TokenCache {
    /// An empty cache allowing `max_refreshes` rejections per client.
    pub fn new(max_refreshes: u32) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_refreshes,
        }
    }

    /// The current token, fetching one with `fetch` when there is none or it is expiring.
    /// The lock is held across the fetch, so concurrent callers wait for one fetch.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Token, WechatError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, WechatError>>,
    {
        let mut state = self.state.lock().await;
        if let Some(token) = &state.current
            && token.expires_at > Instant::now() + EXPIRY_MARGIN
        {
            return Ok(token.clone());
        }
        let fetched = fetch().await?;
        state.generation += 1;
        let token = Token {
            value: fetched.value,
            generation: state.generation,
            expires_at: Instant::now() + fetched.expires_in,
        };
        state.current = Some(token.clone());
        Ok(token)
    }

    /// Drops the token of `generation` after the API rejected it; a newer token is kept.
    ///
    /// # Errors
    /// [`WechatError::TokenStolen`] once rejections pass the bound.
    pub async fn reject(&self, generation: u64) -> Result<(), WechatError> {
        let mut state = self.state.lock().await;
        let is_current = state
            .current
            .as_ref()
            .is_some_and(|t| t.generation == generation);
        if !is_current {
            return Ok(());
        }
        state.current = None;
        state.refreshes += 1;
        if state.refreshes > self.max_refreshes {
            return Err(WechatError::TokenStolen {
                refreshes: state.refreshes,
            });
        }
        Ok(())
    }
}

/// Reads a token file: the token alone, surrounding whitespace ignored.
pub(crate) async fn read_token_file(path: &PathBuf) -> Result<Fetched, WechatError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| WechatError::TokenFile {
            path: path.clone(),
            source,
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(WechatError::TokenFile {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        });
    }
    Ok(Fetched {
        value: Secret::new(token),
        expires_in: FILE_TOKEN_LIFETIME,
    })
}
