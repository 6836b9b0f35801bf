//! The command tree and what each command prints.
//!
//! Exit codes: 0 success; 1 the run finished but some assets are not stored (or
//! `verify`/`health` found a problem); 2 bad command line or config, nothing
//! contacted; 3 the run was aborted or interrupted.

mod demo;
mod output;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{CONFIG_ENV, Config, ConfigError, LogFormat};
use crate::sim::{SeedSpec, SimConfig, Simulator};
use crate::store::Store;
use crate::sync::{self, CATALOG_FILE, SyncError, SyncOptions};

/// Command line of `mpmirror`.
#[derive(Debug, Parser)]
#[command(
    name = "mpmirror",
    version,
    about = "A complete, verifiable backup of a WeChat Official Account's permanent materials"
)]
pub struct Cli {
    /// Config file (TOML).
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one complete sync of every configured account and exit.
    Sync {
        /// List and plan only: fetch and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run syncs on the configured schedule until stopped.
    Daemon,
    /// Exit 0 if the last run finished ok recently enough, else 1 with the reason.
    Health,
    /// Show what the catalog holds and the last runs.
    Status,
    /// Re-hash every blob the catalog points at and report any missing or corrupt one.
    Verify,
    /// Serve the built-in API simulator.
    Sim {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Account contents: demo, small or empty, optionally with :N for another seed.
        #[arg(long, default_value = "demo")]
        seed: String,
    },
    /// Mirror the simulator's demo account end to end, then show what was mirrored.
    Demo {
        /// Directory for the demo's config, catalog and blobs.
        #[arg(long, default_value = "mpmirror-demo")]
        dir: PathBuf,
    },
}

/// An error at the command's edge, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// Exit code.
    pub code: u8,
    /// What to tell the user.
    pub message: String,
}

impl CliError {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(err: ConfigError) -> Self {
        Self::new(2, chain(&err))
    }
}

impl From<SyncError> for CliError {
    fn from(err: SyncError) -> Self {
        let code = match err {
            SyncError::DataDir { .. } => 2,
            _ => 3,
        };
        Self::new(code, chain(&err))
    }
}

pub use crate::error_chain as chain;

impl Cli {
    /// Loads the config if the command needs one.
    ///
    /// # Errors
    /// A missing or invalid config (exit 2).
    pub fn load_config(&self) -> Result<Option<Config>, CliError> {
        match self.command {
            Command::Sim { .. } | Command::Demo { .. } => Ok(None),
            _ => {
                let path = self.config.as_ref().ok_or(ConfigError::Missing)?;
                Ok(Some(Config::load(path)?))
            }
        }
    }

    /// The config file's path, for the daemon's reloads.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config.clone()
    }
}

/// Sets up logging on stderr: `RUST_LOG` (EnvFilter syntax) or `info`.
pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| output::LogWriter)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs a parsed command; returns the exit code.
///
/// # Errors
/// Errors that stop the command, with their exit code.
pub async fn run(cli: Cli, config: Option<Config>) -> Result<u8, CliError> {
    let cancel = CancellationToken::new();
    match (cli.command, config) {
        (Command::Sim { listen, seed }, _) => serve_sim(listen, &seed).await,
        (Command::Demo { dir }, _) => demo::run(&dir, &cancel).await,
        (Command::Sync { dry_run: true }, Some(config)) => dry_run(&config, &cancel).await,
        (Command::Sync { dry_run: false }, Some(config)) => {
            spawn_signal_cancel(cancel.clone());
            sync_once(&config, &cancel, config.log_format == LogFormat::Text).await
        }
        (Command::Daemon, Some(config)) => {
            let path = cli.config.unwrap_or_default();
            crate::daemon::run(config, path, cancel)
                .await
                .map_err(|err| CliError::new(3, chain(&err)))
        }
        (Command::Health, Some(config)) => health(&config),
        (Command::Status, Some(config)) => status(&config),
        (Command::Verify, Some(config)) => verify(&config),
        (_, None) => Err(ConfigError::Missing.into()),
    }
}

/// Cancels `cancel` on SIGINT or SIGTERM.
fn spawn_signal_cancel(cancel: CancellationToken) {
    tokio::spawn(async move {
        crate::daemon::shutdown_signal().await;
        tracing::warn!("signal received: stopping the run");
        cancel.cancel();
    });
}

/// One sync with a progress line on a terminal; prints the summary.
pub(crate) async fn sync_once(
    config: &Config,
    cancel: &CancellationToken,
    show_progress: bool,
) -> Result<u8, CliError> {
    let options = SyncOptions::default();
    let progress = (show_progress && std::io::stderr().is_terminal())
        .then(|| output::ProgressLine::start(options.progress.clone()));
    let report = sync::run(config, &options, cancel).await;
    if let Some(progress) = progress {
        progress.stop().await;
    }
    let report = report?;
    output::print_sync_report(&report);
    Ok(report.exit_code())
}

async fn dry_run(config: &Config, cancel: &CancellationToken) -> Result<u8, CliError> {
    let reports = sync::dry_run(config, &SyncOptions::default(), cancel).await?;
    output::print_dry_run(&reports);
    Ok(if reports.iter().any(|r| r.error.is_some()) {
        3
    } else {
        0
    })
}

async fn serve_sim(listen: SocketAddr, seed: &str) -> Result<u8, CliError> {
    let seed = SeedSpec::parse(seed).map_err(|problem| CliError::new(2, problem))?;
    let sim = Simulator::start(SimConfig::new(seed), listen)
        .await
        .map_err(|err| CliError::new(2, format!("cannot listen on {listen}: {err}")))?;
    println!("WeChat API simulator listening on {}", sim.base_url());
    println!("  app_id     = {:?}", sim.app_id());
    println!(
        "  app_secret = {:?}   (a simulated account's, not a real secret)",
        sim.app_secret()
    );
    println!("  api_base   = {:?}", sim.base_url());
    println!(
        "  control    = {}/__sim/state (see the README)",
        sim.base_url()
    );
    crate::daemon::shutdown_signal().await;
    sim.stop().await;
    Ok(0)
}

fn open_catalog(config: &Config) -> Result<Catalog, CliError> {
    let path = config.data_dir.join(CATALOG_FILE);
    if !path.is_file() {
        return Err(CliError::new(
            1,
            format!(
                "no catalog at {}: run `mpmirror sync` first",
                path.display()
            ),
        ));
    }
    Catalog::open_read_only(&path).map_err(|err| CliError::new(1, chain(&err)))
}

fn status(config: &Config) -> Result<u8, CliError> {
    let catalog = open_catalog(config)?;
    let summary = catalog.summary().map_err(|e| CliError::new(1, chain(&e)))?;
    let runs = catalog.runs(5).map_err(|e| CliError::new(1, chain(&e)))?;
    output::print_status(&config.data_dir, &summary, &runs);
    Ok(0)
}

fn health(config: &Config) -> Result<u8, CliError> {
    let catalog = open_catalog(config)?;
    match crate::daemon::health_problem(&catalog, config.health.max_age, sync::unix_now()) {
        Ok(()) => {
            println!("healthy");
            Ok(0)
        }
        Err(problem) => {
            println!("unhealthy: {problem}");
            Ok(1)
        }
    }
}

fn verify(config: &Config) -> Result<u8, CliError> {
    let catalog = open_catalog(config)?;
    let blobs = catalog
        .referenced_blobs()
        .map_err(|e| CliError::new(1, chain(&e)))?;
    let store = Store::at(&config.data_dir);
    let mut problems = 0u64;
    let mut bytes = 0u64;
    for (index, (sha256, recorded)) in blobs.iter().enumerate() {
        match store.verify(sha256) {
            Ok(size) if recorded.is_some_and(|r| r != size) => {
                problems += 1;
                println!("size mismatch: {sha256} is {size} bytes, the catalog says {recorded:?}");
            }
            Ok(size) => bytes += size,
            Err(err) => {
                problems += 1;
                println!("{}", chain(&err));
            }
        }
        if (index + 1) % 1000 == 0 {
            eprintln!("verified {} of {} blobs", index + 1, blobs.len());
        }
    }
    let integrity = catalog
        .integrity_problem()
        .map_err(|e| CliError::new(1, chain(&e)))?;
    if let Some(problem) = &integrity {
        problems += 1;
        println!("catalog integrity_check: {problem}");
    }
    println!(
        "{} blobs referenced by the catalog, {} verified ({}), {problems} problems",
        blobs.len(),
        blobs.len() as u64 - problems.min(blobs.len() as u64),
        output::human_bytes(bytes)
    );
    Ok(u8::from(problems > 0))
}

/// How often the progress line refreshes.
pub(crate) const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
