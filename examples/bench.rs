//! Benchmarks behind docs/performance.md, all against the simulator on 127.0.0.1.
//!
//! `cargo run --release --example bench -- [pacing|resync|download|catalog|all]`
//!
//! The download benchmark runs the release binary (`cargo build --release` first) and
//! `curl`, and reads peak RSS from `/usr/bin/time -f %M`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mpmirror::catalog::{Catalog, Listed, RunCounts};
use mpmirror::config::Config;
use mpmirror::sim::{MediaKind, SeedSpec, SimConfig, Simulator};
use mpmirror::sync::{self, SyncOptions};
use tokio_util::sync::CancellationToken;

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn config_for(sim: &Simulator, data_dir: &Path, rps: f64) -> Config {
    let text = format!(
        "data_dir = {:?}\n[limits]\nrequests_per_second = {rps}\nconcurrent_downloads = 4\n\
         [[account]]\nname = \"bench\"\napp_id = {:?}\napp_secret = {:?}\napi_base = {:?}\n",
        data_dir.display().to_string(),
        sim.app_id(),
        sim.app_secret(),
        sim.base_url()
    );
    Config::parse(&text, Path::new("/")).unwrap()
}

fn images_only(count: u32) -> SeedSpec {
    SeedSpec {
        images: count,
        videos: 0,
        page_videos: 0,
        voices: 0,
        news: 0,
        image_size: (4 * 1024, 64 * 1024),
        hostile_names: false,
        ..SeedSpec::small()
    }
}

async fn pacing() {
    let rate = 50.0;
    let sim = Simulator::start(SimConfig::new(images_only(500)), loopback())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&sim, dir.path(), rate);
    let started = Instant::now();
    let report = sync::run(&config, &SyncOptions::default(), &CancellationToken::new())
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let calls = report.counts.api_calls as f64;
    let floor = calls / rate;
    println!(
        "pacing: 500 images, limiter {rate} req/s: {calls} API calls in {elapsed:.2} s; \
         floor calls/r = {floor:.2} s; ratio {:.3} (target <= 1.1); status {}",
        elapsed / floor,
        report.status.as_str()
    );
}

async fn resync() {
    let sim = Simulator::start(SimConfig::new(SeedSpec::demo()), loopback())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&sim, dir.path(), 1000.0);
    sync::run(&config, &SyncOptions::default(), &CancellationToken::new())
        .await
        .unwrap();
    let before = sim.account().counts();
    let report = sync::run(&config, &SyncOptions::default(), &CancellationToken::new())
        .await
        .unwrap();
    let after = sim.account().counts();
    let expected: usize = [
        MediaKind::Image,
        MediaKind::Video,
        MediaKind::Voice,
        MediaKind::News,
    ]
    .into_iter()
    .map(|kind| sim.media_ids(kind).len().div_ceil(20))
    .sum();
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    println!(
        "resync (demo account, nothing changed): batchget_material {} (sum of ceil(n/20) = {expected}), \
         get_material {}, stable_token {}, quota_get {}; total {} API calls",
        delta("batchget_material"),
        delta("get_material"),
        delta("stable_token"),
        delta("quota_get"),
        report.counts.api_calls
    );
}

fn peak_and_time(command: &Command) -> (f64, u64) {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%U %S %M")
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            timed.env(key, value);
        }
    }
    let started = Instant::now();
    let output = timed.output().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last: Vec<&str> = stderr.lines().last().unwrap().split_whitespace().collect();
    eprintln!(
        "  {}: {elapsed:.2} s wall, {} s user, {} s sys",
        command.get_program().to_string_lossy(),
        last[0],
        last[1]
    );
    let peak_kib = last[2].parse().unwrap();
    (elapsed, peak_kib)
}

async fn download() {
    const SIZE: u64 = 1 << 30;
    let sim = Simulator::start(
        SimConfig::new(SeedSpec {
            videos: 0,
            page_videos: 0,
            ..SeedSpec::empty()
        }),
        loopback(),
    )
    .await
    .unwrap();
    let id = sim.add(MediaKind::Video, Some(SIZE));
    let url = format!("{}/vweixinp.tc.qq.com/{id}.mp4?vkey=1", sim.base_url());
    let dir = tempfile::tempdir().unwrap();
    let runs = 5;
    let mut curl = Vec::new();
    let mut ours = Vec::new();
    for run in 0..runs {
        let target = dir.path().join(format!("curl-{run}.mp4"));
        let mut command = Command::new("curl");
        command.args(["-sS", "-o"]).arg(&target).arg(&url);
        let (elapsed, peak) = tokio::task::spawn_blocking(move || peak_and_time(&command))
            .await
            .unwrap();
        std::fs::remove_file(&target).unwrap();
        curl.push((elapsed, peak));

        let data = dir.path().join(format!("data-{run}"));
        let config_path = dir.path().join(format!("bench-{run}.toml"));
        std::fs::write(
            &config_path,
            format!(
                "data_dir = {:?}\n[limits]\nrequests_per_second = 1000\n[[account]]\nname = \"b\"\n\
                 app_id = {:?}\napp_secret = {:?}\napi_base = {:?}\n",
                data.display().to_string(),
                sim.app_id(),
                sim.app_secret(),
                sim.base_url()
            ),
        )
        .unwrap();
        let mut command =
            Command::new(env!("CARGO_MANIFEST_DIR").to_owned() + "/target/release/mpmirror");
        command
            .arg("--config")
            .arg(&config_path)
            .arg("sync")
            .env("RUST_LOG", "warn");
        let (elapsed, peak) = tokio::task::spawn_blocking(move || peak_and_time(&command))
            .await
            .unwrap();
        std::fs::remove_dir_all(&data).unwrap();
        ours.push((elapsed, peak));
    }
    let best = |runs: &[(f64, u64)]| runs.iter().map(|r| r.0).fold(f64::MAX, f64::min);
    let peak = |runs: &[(f64, u64)]| runs.iter().map(|r| r.1).max().unwrap();
    let mib = SIZE as f64 / f64::from(1 << 20);
    println!(
        "download 1 GiB (best of {runs}): curl -o {:.2} s ({:.0} MiB/s, peak RSS {} MiB); \
         mpmirror sync {:.2} s ({:.0} MiB/s, peak RSS {} MiB) incl. sha256, fsync, catalog; \
         speed ratio {:.2} (target >= 0.9)",
        best(&curl),
        mib / best(&curl),
        peak(&curl) / 1024,
        best(&ours),
        mib / best(&ours),
        peak(&ours) / 1024,
        best(&curl) / best(&ours)
    );
}

fn catalog() {
    let dir = tempfile::tempdir().unwrap();
    let mut catalog = Catalog::open(&dir.path().join("catalog.db")).unwrap();
    let ids: Vec<String> = (0..10_000)
        .map(|i| format!("media-id-{i:08}-padding-to-forty-three-ch"))
        .collect();
    let names: Vec<String> = (0..10_000).map(|i| format!("photo-{i}.jpg")).collect();
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    };
    for round in ["first listing (inserts)", "re-listing (updates)"] {
        let (cpu_before, started) = (cpu(), Instant::now());
        let mut counts = RunCounts::default();
        for page in 0..500 {
            let items: Vec<Listed<'_>> = (page * 20..page * 20 + 20)
                .map(|i| Listed {
                    media_id: &ids[i],
                    name: &names[i],
                    update_time: 1_700_000_000 + i as i64,
                })
                .collect();
            catalog
                .record_page("bench", "image", &items, 1_800_000_000, &mut counts)
                .unwrap();
        }
        println!(
            "catalog: {round} of 10,000 items in 500 page transactions: {:.0} ms wall, {} ms CPU",
            started.elapsed().as_secs_f64() * 1000.0,
            cpu().checked_sub(cpu_before).unwrap().as_millis()
        );
    }
}

#[tokio::main]
async fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".to_owned());
    let all = which == "all";
    if all || which == "catalog" {
        catalog();
    }
    if all || which == "resync" {
        resync().await;
    }
    if all || which == "pacing" {
        pacing().await;
    }
    if all || which == "download" {
        download().await;
    }
}
