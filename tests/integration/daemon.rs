//! The daemon against the simulator: schedule, signals, reload, quota waits, metrics,
//! webhooks, health; and the systemd units.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mpmirror::config::Schedule;
use mpmirror::daemon::{next_quota_reset, next_start};
use mpmirror::sim::{Fault, MediaKind, Simulator};

use super::common::{Setup, binary, config_text, small_sim};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn daemon_setup(sim: &Simulator, schedule: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let text = format!(
        "{}\n{extra}\n[schedule]\n{schedule}\n",
        config_text(sim, &data_dir, "")
    );
    Setup::from_text(dir, &text)
}

fn spawn_daemon(setup: &Setup) -> Child {
    setup
        .command(&["daemon"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends a signal with the shell's builtin `kill` (no procps needed).
fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{name} {}", child.id()))
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the daemon to exit; returns its exit code and stderr.
async fn wait_exit(child: Child, limit: Duration) -> (Option<i32>, String) {
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        started.elapsed() < limit,
        "took {:?} to exit",
        started.elapsed()
    );
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn finished_runs(data_dir: &Path) -> Vec<(i64, i64, String)> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        data_dir.join("catalog.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return Vec::new();
    };
    let Ok(mut statement) = conn.prepare(
        "SELECT started_at, finished_at, status FROM runs WHERE finished_at IS NOT NULL ORDER BY id",
    ) else {
        return Vec::new();
    };
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map(|rows| rows.flatten().collect())
        .unwrap_or_default()
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_do_not_overlap_metrics_report_them_and_sigterm_exits_0() {
    let sim = small_sim().await;
    let port = free_port();
    let setup = daemon_setup(
        &sim,
        "every = \"2s\"\nrun_at_start = true",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
    );
    let child = spawn_daemon(&setup);
    let data_dir = setup.data_dir();
    wait_for("two runs", Duration::from_secs(40), || {
        finished_runs(&data_dir).len() >= 2
    })
    .await;
    let runs = finished_runs(&data_dir);
    assert!(runs.iter().all(|r| r.2 == "ok"), "{runs:?}");
    assert!(runs[1].0 >= runs[0].1, "runs never overlap: {runs:?}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mpmirror_runs_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mpmirror_assets{account=\"main\",type=\"image\",state=\"stored\"} 25"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "mpmirror_api_calls_total{account=\"main\",endpoint=\"get_material\",errcode=\"0\"}"
    ));
    assert!(metrics.contains("mpmirror_last_success_timestamp_seconds"));
    signal(&child, "TERM");
    let (code, _) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_download_leaves_no_partial_blob_and_exits_0_quickly() {
    let sim = small_sim().await;
    let big = sim.add(MediaKind::Video, Some(3 << 30));
    let setup = daemon_setup(&sim, "every = \"1h\"\nrun_at_start = true", "");
    let child = spawn_daemon(&setup);
    let tmp = setup.data_dir().join("tmp");
    wait_for("the download to start", Duration::from_mins(1), || {
        std::fs::read_dir(&tmp).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.len() > 4 << 20))
        })
    })
    .await;
    signal(&child, "TERM");
    let (code, stderr) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temp files removed"
    );
    let runs = finished_runs(&setup.data_dir());
    assert_eq!(runs.last().unwrap().2, "interrupted");
    assert_eq!(
        setup.count(&format!(
            "SELECT count(*) FROM assets WHERE media_id = '{big}' AND sha256 IS NOT NULL"
        )),
        0
    );
    super::common::assert_store_consistent(&setup.data_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one() {
    let sim = small_sim().await;
    let setup = daemon_setup(&sim, "every = \"1s\"\nrun_at_start = true", "");
    let child = spawn_daemon(&setup);
    let data_dir = setup.data_dir();
    wait_for("a first run", Duration::from_secs(30), || {
        !finished_runs(&data_dir).is_empty()
    })
    .await;
    std::fs::write(&setup.config_path, "data_dir = [broken").unwrap();
    signal(&child, "HUP");
    let before = finished_runs(&data_dir).len();
    wait_for("runs after the reload", Duration::from_secs(30), || {
        finished_runs(&data_dir).len() >= before + 2
    })
    .await;
    signal(&child, "TERM");
    let (code, stderr) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(stderr.contains("keeping the old one"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_reached_moves_the_next_run_to_the_quota_reset() {
    let sim = small_sim().await;
    sim.inject("get_material", 10_000, Fault::Errcode { code: 45009 });
    let setup = daemon_setup(&sim, "every = \"1s\"\nrun_at_start = true", "");
    let child = spawn_daemon(&setup);
    let data_dir = setup.data_dir();
    wait_for("the first run", Duration::from_secs(30), || {
        !finished_runs(&data_dir).is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        finished_runs(&data_dir).len(),
        1,
        "no retry before the quota day turns"
    );
    signal(&child, "TERM");
    let (code, stderr) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert!(stderr.contains("waits for Beijing midnight"), "{stderr}");
    assert!(
        stderr.contains("00:01 CST"),
        "next run at the reset: {stderr}"
    );
}

/// Collects sd_notify messages until one contains `needle`.
async fn hear_until(socket: &tokio::net::UnixDatagram, heard: &mut Vec<String>, needle: &str) {
    let mut buffer = vec![0u8; 4096];
    while !heard.iter().any(|m| m.contains(needle)) {
        let received = tokio::time::timeout(Duration::from_secs(30), socket.recv(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} from the daemon: {heard:?}"))
            .unwrap();
        heard.push(
            String::from_utf8_lossy(&buffer[..received])
                .trim_end()
                .to_owned(),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_and_stopping() {
    let sim = small_sim().await;
    let setup = daemon_setup(&sim, "every = \"1h\"\nrun_at_start = true", "");
    let socket_path = setup.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let child = setup
        .command(&["daemon"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut heard = Vec::new();
    hear_until(&socket, &mut heard, "last run ok").await;
    signal(&child, "TERM");
    hear_until(&socket, &mut heard, "STOPPING=1").await;
    let (code, _) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    let ready = heard.iter().position(|m| m == "READY=1").expect("READY=1");
    assert!(
        heard[ready + 1..]
            .iter()
            .any(|m| m.starts_with("STATUS=next run ")),
        "{heard:?}"
    );
    assert!(
        heard.iter().any(|m| m == "STATUS=sync running"),
        "{heard:?}"
    );
}

#[test]
fn next_start_waits_for_beijing_midnight_after_45009() {
    // 2026-11-23 10:00:00 UTC is 18:00 in Beijing; quotas reset at 16:00 UTC.
    let now = 1_795_428_000;
    let reset = next_quota_reset(now);
    assert_eq!(reset, 1_795_449_600 + 60);
    let every = Schedule {
        every: Some(Duration::from_mins(1)),
        ..Schedule::default()
    };
    assert_eq!(next_start(&every, now, Some(now), None).unwrap(), now + 60);
    assert_eq!(
        next_start(&every, now, Some(now), Some(reset)).unwrap(),
        reset
    );
    let cron = Schedule {
        cron: Some("30 3 * * *".to_owned()),
        ..Schedule::default()
    };
    // 03:30 Beijing is 19:30 UTC the day before.
    assert_eq!(next_start(&cron, now, None, None).unwrap(), 1_795_462_200);
    assert_eq!(
        next_start(&cron, now, None, Some(reset)).unwrap(),
        1_795_462_200
    );
    let hourly = Schedule {
        cron: Some("0 * * * *".to_owned()),
        ..Schedule::default()
    };
    assert_eq!(
        next_start(&hourly, now, None, Some(reset)).unwrap(),
        1_795_449_600 + 3600
    );
}

/// A webhook receiver on loopback that records every body posted to it.
async fn webhook_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let received = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let received = received.clone();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        received
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&body).into_owned());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (url, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_posts_to_the_webhook_without_secrets_and_health_flips() {
    let sim = small_sim().await;
    let (url, bodies) = webhook_receiver().await;
    let setup = daemon_setup(
        &sim,
        "every = \"2s\"\nrun_at_start = true",
        &format!("[notify]\nwebhook = \"{url}\"\nformat = \"wecom\""),
    );
    // A first ok run: healthy.
    let report = setup.sync().await;
    assert_eq!(report.exit_code(), 0);
    let output = setup.run_binary(&["health"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    sim.inject("*", 10_000, Fault::Errcode { code: 40164 });
    let child = spawn_daemon(&setup);
    wait_for("a webhook post", Duration::from_secs(30), || {
        !bodies.lock().unwrap().is_empty()
    })
    .await;
    let output = setup.run_binary(&["health"]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "health flips after a failed run"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("aborted"));
    sim.clear_faults();
    wait_for("a recovery post", Duration::from_secs(30), || {
        bodies
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.contains("recovery"))
    })
    .await;
    signal(&child, "TERM");
    let (code, _) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    let body = bodies.lock().unwrap()[0].clone();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["msgtype"], "text");
    let content = json["text"]["content"].as_str().unwrap();
    assert!(
        content.contains("failure") && content.contains("whitelist"),
        "{content}"
    );
    assert!(!body.contains(&sim.app_secret()));
    for token in sim.account().issued_tokens() {
        assert!(!body.contains(&token));
    }
    assert_eq!(
        setup.run_binary(&["health"]).status.code(),
        Some(0),
        "healthy again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_backup_is_notified_once() {
    let sim = small_sim().await;
    let (url, bodies) = webhook_receiver().await;
    let setup = daemon_setup(
        &sim,
        "every = \"1h\"",
        &format!("[health]\nmax_age = \"1h\"\n[notify]\nwebhook = \"{url}\""),
    );
    std::fs::create_dir_all(setup.data_dir()).unwrap();
    let mut catalog =
        mpmirror::catalog::Catalog::open(&setup.data_dir().join("catalog.db")).unwrap();
    let now = mpmirror::sync::unix_now();
    let id = catalog.begin_run(now - 3 * 86_400, 1).unwrap();
    let counts = mpmirror::catalog::RunCounts::default();
    catalog
        .finish_run(
            id,
            now - 3 * 86_400 + 60,
            mpmirror::catalog::RunStatus::Ok,
            &counts,
            None,
        )
        .unwrap();
    drop(catalog);
    let child = spawn_daemon(&setup);
    wait_for("a stale alert", Duration::from_secs(30), || {
        !bodies.lock().unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&child, "TERM");
    let (code, _) = wait_exit(child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    let posted = bodies.lock().unwrap().clone();
    assert_eq!(posted.len(), 1, "notified once: {posted:?}");
    let json: serde_json::Value = serde_json::from_str(&posted[0]).unwrap();
    assert_eq!(json["event"], "stale");
    assert!(
        json["text"]
            .as_str()
            .unwrap()
            .contains("has not succeeded for 2days 23h 59m"),
        "{json}"
    );
}

#[test]
fn health_needs_a_recent_ok_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\n[health]\nmax_age = \"1h\"\n[[account]]\nname = \"a\"\napp_id = \"wx1\"\napp_secret = \"s\"\n",
        dir.path().join("data").display().to_string()
    );
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let mut catalog =
        mpmirror::catalog::Catalog::open(&dir.path().join("data/catalog.db")).unwrap();
    let health = || {
        binary()
            .arg("--config")
            .arg(&path)
            .arg("health")
            .output()
            .unwrap()
    };
    assert_eq!(health().status.code(), Some(1), "no run yet");
    let now = mpmirror::sync::unix_now();
    let id = catalog.begin_run(now - 7200, 1).unwrap();
    catalog
        .finish_run(
            id,
            now - 7000,
            mpmirror::catalog::RunStatus::Ok,
            &mpmirror::catalog::RunCounts::default(),
            None,
        )
        .unwrap();
    let output = health();
    assert_eq!(output.status.code(), Some(1), "too old");
    assert!(String::from_utf8_lossy(&output.stdout).contains("longer than health.max_age"));
    let id = catalog.begin_run(now - 10, 1).unwrap();
    catalog
        .finish_run(
            id,
            now - 5,
            mpmirror::catalog::RunStatus::Ok,
            &mpmirror::catalog::RunCounts::default(),
            None,
        )
        .unwrap();
    assert_eq!(health().status.code(), Some(0));
}

/// The unit files with ExecStart pointed at the binary under test (verify checks that
/// the executable exists).
fn units_for_verify(dir: &Path) -> Vec<std::path::PathBuf> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd");
    [
        "mpmirror.service",
        "mpmirror-sync.service",
        "mpmirror-sync.timer",
    ]
    .into_iter()
    .map(|name| {
        let text = std::fs::read_to_string(source.join(name))
            .unwrap()
            .replace("/usr/local/bin/mpmirror", env!("CARGO_BIN_EXE_mpmirror"));
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    })
    .collect()
}

#[test]
fn systemd_units_verify_cleanly_and_are_hardened() {
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze is needed: .ci/run installs it (apt-get install systemd)");
    }
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_verify(dir.path());
    let output = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    for unit in ["mpmirror.service", "mpmirror-sync.service"] {
        let output = std::process::Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(dir.path().join(unit))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no score in: {text}"));
        assert!(score <= 1.5, "{unit} exposure {score}");
    }
}
