//! `mpmirror demo`: the simulator's demo account mirrored end to end, no WeChat account
//! needed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{CliError, chain, output, sync_once};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::sim::{SeedSpec, SimConfig, Simulator};
use crate::sync::CATALOG_FILE;

/// Requests per second the demo allows itself (the real default is 5).
const DEMO_RATE: u32 = 50;

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Starts the simulator, writes a config under `dir`, syncs, and shows the result.
pub async fn run(dir: &Path, cancel: &CancellationToken) -> Result<u8, CliError> {
    let sim = Simulator::start(
        SimConfig::new(SeedSpec::demo()),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
    .await
    .map_err(|err| CliError::new(3, format!("cannot start the simulator: {err}")))?;
    std::fs::create_dir_all(dir)
        .map_err(|err| CliError::new(2, format!("cannot create {}: {err}", dir.display())))?;
    let config_path = dir.join("mpmirror.toml");
    let text = format!(
        "# Written by `mpmirror demo` for its built-in simulator (which lives only while\n\
         # the demo runs; `mpmirror sim` serves the same account on a fixed port).\n\
         data_dir = \"data\"\n\n\
         [limits]\n\
         requests_per_second = {DEMO_RATE}\n\
         concurrent_downloads = 4\n\
         quota_reserve = 0.3\n\n\
         [[account]]\n\
         name = \"demo\"\n\
         app_id = {}\n\
         app_secret = {}\n\
         api_base = {}\n",
        toml_string(&sim.app_id()),
        toml_string(&sim.app_secret()),
        toml_string(sim.base_url()),
    );
    std::fs::write(&config_path, text).map_err(|err| {
        CliError::new(2, format!("cannot write {}: {err}", config_path.display()))
    })?;
    let config = Config::load(&config_path)?;
    println!(
        "Simulator of a WeChat Official Account at {} (seed \"demo\")",
        sim.base_url()
    );
    println!("Mirroring it into {} ...", config.data_dir.display());
    let code = sync_once(&config, cancel, true).await?;
    sim.stop().await;
    show(&config)?;
    Ok(code)
}

fn show(config: &Config) -> Result<(), CliError> {
    let path = config.data_dir.join(CATALOG_FILE);
    let catalog = Catalog::open_read_only(&path).map_err(|err| CliError::new(3, chain(&err)))?;
    let summary = catalog
        .summary()
        .map_err(|err| CliError::new(3, chain(&err)))?;
    println!();
    println!("What was mirrored:");
    for row in &summary {
        println!(
            "  {:<6} {:>4} listed, {:>4} stored, {:>2} not offered as a file, {:>10}",
            row.kind,
            row.present,
            row.stored,
            row.unavailable,
            output::human_bytes(row.bytes)
        );
    }
    let (images, stored, bytes) = catalog
        .article_image_totals()
        .map_err(|err| CliError::new(3, chain(&err)))?;
    println!(
        "  images inside articles: {stored} of {images} stored, {}",
        output::human_bytes(bytes)
    );
    let db = path.display();
    println!();
    println!("Catalog: {db}");
    println!(
        "Blobs:   {}/blobs/<2 hex>/<sha256>",
        config.data_dir.display()
    );
    println!();
    println!("Try:");
    println!(
        "  sqlite3 {db} \"SELECT type, count(*), sum(size) FROM assets WHERE deleted_at IS NULL GROUP BY type\""
    );
    println!(
        "  sqlite3 {db} \"SELECT a.type, a.name, v.update_time FROM asset_versions v JOIN assets a USING (account, media_id) WHERE v.stored_at > strftime('%s','now','-1 day') ORDER BY v.stored_at DESC LIMIT 10\""
    );
    println!(
        "  sqlite3 {db} \"SELECT media_id, idx, title, content_sha256 FROM articles ORDER BY media_id, idx LIMIT 10\""
    );
    println!();
    println!(
        "Run it again: nothing changed upstream, so only the listing calls are made.\n\
         Check every stored byte: mpmirror --config {} verify",
        config_path_hint(config)
    );
    Ok(())
}

fn config_path_hint(config: &Config) -> String {
    config.data_dir.parent().map_or_else(
        || "mpmirror.toml".to_owned(),
        |dir| dir.join("mpmirror.toml").display().to_string(),
    )
}
