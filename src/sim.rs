//! A simulator of the WeChat Official Account API, for tests, the demo and rehearsals.
//!
//! It is written from the API facts (`shared/wechat-api.md`) and shares no code with the
//! client in `wechat`, so that a misreading of the API cannot hide on both sides of a
//! test. It keeps an account in memory, seeded deterministically; file bytes are
//! generated on demand, so a 1 GiB video costs no memory. Tests steer it through
//! [`Simulator`]'s methods, other processes through `/__sim/` (see `control`).

mod account;
mod content;
mod control;
mod seed;
mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use account::{
    Account, DEFAULT_DAILY_LIMITS, Fault, FaultRule, HookAction, ListingHook, LoggedRequest,
    MediaKind, Quirks,
};
pub use content::{FileFormat, FileSpec, Generator};
pub use seed::SeedSpec;

use account::Body;

/// How to build the simulated account.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The AppID it accepts.
    pub app_id: String,
    /// The AppSecret it accepts.
    pub app_secret: String,
    /// The account's contents.
    pub seed: SeedSpec,
    /// Lifetime of access tokens (the real service: 7200 s).
    pub token_ttl: Duration,
    /// How long a superseded token keeps working (the real service: about 5 minutes).
    pub token_grace: Duration,
    /// Quirks switched on.
    pub quirks: Quirks,
    /// Caller addresses allowed; `None` allows all.
    pub whitelist: Option<Vec<IpAddr>>,
}

impl SimConfig {
    /// The demo account's credentials and `seed`.
    pub fn new(seed: SeedSpec) -> Self {
        Self {
            app_id: "wx5ea1c0ffee5ea1c0".to_owned(),
            app_secret: "5ecre7-of-the-simulated-account".to_owned(),
            seed,
            token_ttl: Duration::from_hours(2),
            token_grace: Duration::from_mins(5),
            quirks: Quirks::default(),
            whitelist: None,
        }
    }
}

/// A running simulator; dropping it stops the server.
pub struct Simulator {
    shared: Arc<server::Shared>,
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Binds `listen` (port 0 picks a free one) and starts serving.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start(config: SimConfig, listen: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let mut account = Account::new(
            config.app_id,
            config.app_secret,
            config.seed.seed,
            config.token_ttl,
            config.token_grace,
        );
        seed::populate(&mut account, &config.seed);
        account.quirks = config.quirks;
        account.whitelist = config.whitelist;
        let shared = Arc::new(server::Shared {
            account: Mutex::new(account),
            base_url: format!("http://{addr}"),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server::serve(listener, shared.clone(), shutdown.clone()));
        Ok(Self {
            shared,
            addr,
            shutdown,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL to use as `api_base`, e.g. `http://127.0.0.1:41234`.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// Direct access to the account, for checks and changes the methods below lack.
    pub fn account(&self) -> MutexGuard<'_, Account> {
        self.shared.lock()
    }

    /// The AppID it accepts.
    pub fn app_id(&self) -> String {
        self.account().app_id.clone()
    }

    /// The AppSecret it accepts.
    pub fn app_secret(&self) -> String {
        self.account().app_secret.clone()
    }

    /// Uploads a generated material; `size` overrides the file size. Returns its media_id.
    pub fn add(&self, kind: MediaKind, size: Option<u64>) -> String {
        seed::add_generated(&mut self.account(), kind, size, None)
    }

    /// Uploads a generated material with the given name.
    pub fn add_named(&self, kind: MediaKind, name: &str) -> String {
        seed::add_generated(&mut self.account(), kind, None, Some(name.to_owned()))
    }

    /// New content and a newer update_time; false if unknown.
    pub fn change(&self, media_id: &str) -> bool {
        self.account().change(media_id)
    }

    /// Deletes a material; false if unknown.
    pub fn delete(&self, media_id: &str) -> bool {
        self.account().delete(media_id)
    }

    /// Revokes every token, as another service taking over the account's token would.
    pub fn invalidate_tokens(&self) {
        self.account().invalidate_tokens();
    }

    /// Expires every token now.
    pub fn expire_tokens(&self) {
        self.account().expire_tokens();
    }

    /// The next `count` calls of `endpoint` (or `*`) answer with `fault`.
    pub fn inject(&self, endpoint: &str, count: u32, fault: Fault) {
        self.account().inject(FaultRule {
            endpoint: endpoint.to_owned(),
            count,
            fault,
        });
    }

    /// Drops every fault rule not used up yet.
    pub fn clear_faults(&self) {
        self.account().clear_faults();
    }

    /// After the `after_page`-th listing page of `kind` from now, apply `action`.
    pub fn on_listing_page(&self, kind: MediaKind, after_page: u32, action: HookAction) {
        self.account().add_hook(ListingHook {
            kind,
            after_page,
            action,
        });
    }

    /// Media ids of `kind` in listing order.
    pub fn media_ids(&self, kind: MediaKind) -> Vec<String> {
        self.account()
            .listing(kind)
            .iter()
            .map(|a| a.media_id.clone())
            .collect()
    }

    /// The request log.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.account().log().to_vec()
    }

    /// How many requests `endpoint` has served.
    pub fn count(&self, endpoint: &str) -> usize {
        self.account()
            .log()
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .count()
    }

    /// The file spec behind a material (image, voice, or video offered as a file).
    pub fn file_of(&self, media_id: &str) -> Option<FileSpec> {
        match self.account().assets.get(media_id)?.body {
            Body::File(spec)
            | Body::Video {
                file: Some(spec), ..
            } => Some(spec),
            _ => None,
        }
    }

    /// The update_time of a material.
    pub fn update_time(&self, media_id: &str) -> Option<i64> {
        Some(self.account().assets.get(media_id)?.update_time)
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
