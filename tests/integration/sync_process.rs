//! The real binary: exit codes, the run lock, SIGKILL mid-download, secrets in logs,
//! hostile names.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mpmirror::sim::MediaKind;
use mpmirror::sync::RunLock;

use super::common::{Setup, assert_store_consistent, binary, output_of, small_sim};

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn run_binary(setup: &Setup, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = setup.command(args);
    command.envs(env.iter().copied());
    output_of(command).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_exits_0_when_everything_is_stored() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    let output = run_binary(&setup, &["sync"], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("main: ok"), "{stdout}");
    assert!(
        stderr_of(&output).contains("account summary"),
        "one summary line per account"
    );
}

#[tokio::test]
async fn config_errors_exit_2_naming_the_key_before_any_request() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    let text = std::fs::read_to_string(&setup.config_path).unwrap();
    std::fs::write(
        &setup.config_path,
        text.replace("[limits]", "[limits]\nrequests_per_sec = 3"),
    )
    .unwrap();
    let output = setup.run_binary(&["sync"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("requests_per_sec"),
        "{}",
        stderr_of(&output)
    );

    std::fs::write(
        &setup.config_path,
        text.replace(
            "app_secret = ",
            "app_secret_file = \"/nonexistent/secret\"\n#",
        ),
    )
    .unwrap();
    let output = setup.run_binary(&["sync"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_of(&output).contains("/nonexistent/secret"),
        "{}",
        stderr_of(&output)
    );

    let output = binary().arg("sync").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr_of(&output).contains("MPMIRROR_CONFIG"));

    let output = binary().args(["sync", "--bogus"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "bad command line");
    assert!(sim.requests().is_empty(), "nothing contacted");
}

#[tokio::test]
async fn unusable_data_dir_exits_2() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    std::fs::write(setup.data_dir(), "a file where data_dir should be").unwrap();
    let output = setup.run_binary(&["sync"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains("data_dir"));
    assert!(sim.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_flag_wins_over_the_environment() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    let output = run_binary(
        &setup,
        &["sync", "--dry-run"],
        &[("MPMIRROR_CONFIG", "/nonexistent.toml")],
    )
    .await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let mut command = binary();
    command
        .args(["sync", "--dry-run"])
        .env("MPMIRROR_CONFIG", &setup.config_path);
    let output = output_of(command).await;
    assert_eq!(output.status.code(), Some(0), "MPMIRROR_CONFIG works alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_exit_3_with_advice() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    let text = std::fs::read_to_string(&setup.config_path).unwrap();
    std::fs::write(
        &setup.config_path,
        text.replace(&sim.app_secret(), "wrong-secret"),
    )
    .unwrap();
    let output = run_binary(&setup, &["sync"], &[]).await;
    assert_eq!(output.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("40125") && stdout.contains("check app_secret"),
        "{stdout}"
    );
    assert!(!stdout.contains("wrong-secret") && !stderr_of(&output).contains("wrong-secret"));
}

#[tokio::test]
async fn a_second_run_is_refused_naming_the_lock_and_pid() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    std::fs::create_dir_all(setup.data_dir()).unwrap();
    let _held = RunLock::acquire(&setup.data_dir()).unwrap();
    let started = Instant::now();
    let output = setup.run_binary(&["sync"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(started.elapsed() < Duration::from_secs(5));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("mpmirror.lock") && stderr.contains(&std::process::id().to_string()),
        "{stderr}"
    );
    assert!(sim.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_large_download_leaves_a_consistent_store() {
    let sim = small_sim().await;
    let big = sim.add(MediaKind::Video, Some(400 << 20));
    let setup = Setup::new(&sim, "");
    let tmp = setup.data_dir().join("tmp");
    let mut child = setup
        .command(&["sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let partial = largest_file(&tmp);
        if partial > 4 << 20 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "sync ended before the kill"
        );
        assert!(Instant::now() < deadline, "the download never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_store_consistent(&setup.data_dir());
    assert_eq!(
        setup.count(&format!(
            "SELECT count(*) FROM assets WHERE media_id = '{big}' AND sha256 IS NOT NULL"
        )),
        0
    );
    let output = run_binary(&setup, &["sync"], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert_store_consistent(&setup.data_dir());
    assert_eq!(
        setup.count("SELECT count(*) FROM runs WHERE status = 'interrupted'"),
        1,
        "the killed run is recorded as interrupted"
    );
    assert_eq!(
        setup.count(&format!("SELECT size FROM assets WHERE media_id = '{big}'")),
        400 << 20
    );
    assert!(largest_file(&tmp) == 0, "stale temp files swept");
}

fn largest_file(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_logs_and_the_catalog_never_hold_the_secret_or_a_token() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    sim.inject(
        "get_material",
        1,
        mpmirror::sim::Fault::Errcode { code: 40001 },
    );
    sim.inject("get_material", 1, mpmirror::sim::Fault::Reset);
    let output = run_binary(&setup, &["sync"], &[("RUST_LOG", "trace")]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let logs = stderr_of(&output) + &String::from_utf8_lossy(&output.stdout);
    assert!(logs.contains("TRACE"), "trace level was on");
    let tokens = sim.account().issued_tokens();
    assert!(!tokens.is_empty());
    let mut catalog = Vec::new();
    for entry in std::fs::read_dir(setup.data_dir()).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("catalog.db")
        {
            catalog.extend(std::fs::read(entry.path()).unwrap());
        }
    }
    let catalog = String::from_utf8_lossy(&catalog);
    for secret in tokens.iter().chain(std::iter::once(&sim.app_secret())) {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret or token is in the logs"
        );
        assert!(
            !catalog.contains(secret.as_str()),
            "a secret or token is in catalog.db"
        );
    }
}

#[tokio::test]
async fn hostile_names_are_data_never_paths() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    let report = setup.sync().await;
    assert_eq!(report.exit_code(), 0);
    assert_eq!(
        setup.count(
            "SELECT count(*) FROM assets WHERE name = '../../etc/passwd.jpg' AND sha256 IS NOT NULL"
        ),
        1
    );
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE name LIKE '/absolute%'"),
        1
    );
    let mut unexpected = Vec::new();
    walk(setup.dir.path(), setup.dir.path(), &mut unexpected);
    assert!(unexpected.is_empty(), "unexpected files: {unexpected:?}");
}

fn walk(root: &Path, dir: &Path, unexpected: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if path.is_dir() {
            walk(root, &path, unexpected);
            continue;
        }
        let parts: Vec<&str> = relative.split('/').collect();
        let allowed = match parts.as_slice() {
            ["mpmirror.toml"] | ["data", "mpmirror.lock"] => true,
            ["data", name] => name.starts_with("catalog.db"),
            ["data", "blobs", shard, name] => name.len() == 64 && name.starts_with(shard),
            _ => false,
        };
        if !allowed {
            unexpected.push(relative);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    let text = std::fs::read_to_string(&setup.config_path).unwrap();
    std::fs::write(&setup.config_path, format!("log_format = \"json\"\n{text}")).unwrap();
    let output = run_binary(&setup, &["sync"], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    let mut summaries = 0;
    for line in stderr.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        if value["fields"]["message"] == "account summary" {
            summaries += 1;
            assert_eq!(value["fields"]["fetched"], 34);
        }
    }
    assert_eq!(summaries, 1);
}

#[tokio::test]
async fn verify_finds_corrupt_and_missing_blobs_and_status_summarises() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    assert_eq!(setup.sync().await.exit_code(), 0);
    let output = setup.run_binary(&["verify"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(", 0 problems"));

    let conn = super::common::rusqlite_connection(&setup.data_dir());
    let shas: Vec<String> = conn
        .prepare("SELECT sha256 FROM assets WHERE type = 'image' AND sha256 IS NOT NULL LIMIT 2")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let blob = |sha: &str| setup.data_dir().join("blobs").join(&sha[..2]).join(sha);
    let mut bytes = std::fs::read(blob(&shas[0])).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(blob(&shas[0]), bytes).unwrap();
    std::fs::remove_file(blob(&shas[1])).unwrap();
    let output = setup.run_binary(&["verify"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("{} is corrupt", blob(&shas[0]).display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&shas[1]) && stdout.contains(", 2 problems"),
        "{stdout}"
    );

    let output = setup.run_binary(&["status"]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("main         image        25       25"),
        "{stdout}"
    );
    assert!(stdout.contains(" ok: fetched 34, failed 0"), "{stdout}");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` at `path`; `None` when this user may not mount.
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(path.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_aborts_naming_the_problem_and_leaves_a_consistent_store() {
    let sim = small_sim().await;
    let big = sim.add(MediaKind::Video, Some(24 << 20));
    let setup = Setup::new(&sim, "");
    let Some(_disk) = SmallDisk::mount(&setup.data_dir(), "6m") else {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return;
    };
    let report = setup.sync().await;
    assert_eq!(report.status, mpmirror::catalog::RunStatus::Aborted);
    let message = report.message.unwrap();
    // Whichever write meets the full disk first (the video's blob or a catalog
    // commit) names itself and the cause.
    let blob_full = message.contains("No space left on device") && message.contains(&big);
    let catalog_full = message.contains("catalog.db") && message.contains("disk is full");
    assert!(blob_full || catalog_full, "{message}");
    assert_store_consistent(&setup.data_dir());
    assert_eq!(
        setup.count(&format!(
            "SELECT count(*) FROM assets WHERE media_id = '{big}' AND sha256 IS NOT NULL"
        )),
        0
    );
    assert_eq!(
        largest_file(&setup.data_dir().join("tmp")),
        0,
        "the partial download was removed"
    );
}
