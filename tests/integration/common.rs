//! Helpers shared by the tests: a simulator, a config pointing at it, quick retries,
//! and checks of the store's and catalog's consistency.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mpmirror::catalog::Catalog;
use mpmirror::config::Config;
use mpmirror::sim::{SeedSpec, SimConfig, Simulator};
use mpmirror::sync::{self, SyncOptions, SyncReport};
use mpmirror::wechat::RetryPolicy;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// Loopback, any free port.
pub fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A simulator of the small test account.
pub async fn small_sim() -> Simulator {
    sim_with(SimConfig::new(SeedSpec::small())).await
}

/// A simulator with a given config.
pub async fn sim_with(config: SimConfig) -> Simulator {
    Simulator::start(config, loopback()).await.unwrap()
}

/// Config text for one account on `sim`, plus `extra` TOML after `[limits]` lines.
pub fn config_text(sim: &Simulator, data_dir: &Path, limits: &str) -> String {
    format!(
        "data_dir = {:?}\n[limits]\nrequests_per_second = 1000\n{limits}\n\
         [[account]]\nname = \"main\"\napp_id = {:?}\napp_secret = {:?}\napi_base = {:?}\n",
        data_dir.display().to_string(),
        sim.app_id(),
        sim.app_secret(),
        sim.base_url()
    )
}

/// A test's working directory with a config for `sim`.
pub struct Setup {
    /// Temp dir holding everything.
    pub dir: tempfile::TempDir,
    /// The parsed config.
    pub config: Config,
    /// Where the config file is.
    pub config_path: PathBuf,
}

impl Setup {
    /// A setup whose `[limits]` table gets `limits` appended.
    pub fn new(sim: &Simulator, limits: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let text = config_text(sim, &data_dir, limits);
        Self::from_text(dir, &text)
    }

    /// A setup from full config text.
    pub fn from_text(dir: tempfile::TempDir, text: &str) -> Self {
        let config_path = dir.path().join("mpmirror.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap();
        Self {
            dir,
            config,
            config_path,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// Runs one sync through the library with quick retries.
    pub async fn sync(&self) -> SyncReport {
        sync::run(&self.config, &quick(), &CancellationToken::new())
            .await
            .unwrap()
    }

    /// Runs a query with one integer answer.
    pub fn count(&self, sql: &str) -> i64 {
        let conn = rusqlite_connection(&self.data_dir());
        conn.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    /// The binary with this setup's config and `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = binary();
        command.arg("--config").arg(&self.config_path).args(args);
        command
    }

    /// Runs the binary with this setup's config, for commands that contact nothing.
    pub fn run_binary(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
}

/// A raw SQLite connection for assertions.
pub fn rusqlite_connection(data_dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(data_dir.join("catalog.db")).unwrap()
}

/// Options with fast backoffs so fault tests take milliseconds.
pub fn quick() -> SyncOptions {
    SyncOptions {
        retry: RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            minute_quota_wait: Some(Duration::from_millis(50)),
            minute_quota_waits: 3,
        },
        ..SyncOptions::default()
    }
}

/// The `mpmirror` binary built for these tests, with a clean environment.
pub fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mpmirror"));
    command.env_remove("MPMIRROR_CONFIG").env_remove("RUST_LOG");
    command
}

/// Runs a command off the async threads, so a simulator in this process keeps serving.
pub async fn output_of(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// sha256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every file under blobs/ hashes to its name and sits in its shard; every blob the
/// catalog points at exists; the catalog passes integrity_check. Returns the blob count.
pub fn assert_store_consistent(data_dir: &Path) -> usize {
    let blobs = data_dir.join("blobs");
    let mut count = 0;
    for shard in std::fs::read_dir(&blobs).unwrap() {
        let shard = shard.unwrap().path();
        for file in std::fs::read_dir(&shard).unwrap() {
            let file = file.unwrap().path();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = std::fs::read(&file).unwrap();
            assert_eq!(
                sha256(&bytes),
                name,
                "blob {} does not match its name",
                file.display()
            );
            assert_eq!(
                shard.file_name().unwrap().to_string_lossy(),
                &name[..2],
                "blob in the wrong shard"
            );
            count += 1;
        }
    }
    let catalog = Catalog::open_read_only(&data_dir.join("catalog.db")).unwrap();
    assert_eq!(catalog.integrity_problem().unwrap(), None);
    for (sha, _) in catalog.referenced_blobs().unwrap() {
        let path = blobs.join(&sha[..2]).join(&sha);
        assert!(path.is_file(), "catalog points at missing blob {sha}");
    }
    count
}

/// The expected bytes of a simulated file.
pub fn expected_sha256(sim: &Simulator, media_id: &str) -> String {
    let spec = sim.file_of(media_id).unwrap();
    let mut hasher = Sha256::new();
    for chunk in mpmirror::sim::Generator::new(spec).chunks() {
        hasher.update(&chunk);
    }
    hex::encode(hasher.finalize())
}

/// Listing pages a type of `n` items takes.
pub fn pages(n: usize) -> usize {
    n.div_ceil(20)
}

/// Asks the simulator's `/cgi-bin/stable_token` directly, as another service would.
pub async fn stable_token(sim: &Simulator, force_refresh: bool) -> serde_json::Value {
    reqwest::Client::new()
        .post(format!("{}/cgi-bin/stable_token", sim.base_url()))
        .json(
            &serde_json::json!({"grant_type": "client_credential", "appid": sim.app_id(),
                                  "secret": sim.app_secret(), "force_refresh": force_refresh}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
