//! Tokens, transient faults, bodies that are not content, and quotas.

use std::time::Duration;

use mpmirror::catalog::RunStatus;
use mpmirror::sim::{Fault, MediaKind};

use super::common::{Setup, assert_store_consistent, small_sim};

#[tokio::test]
async fn transient_faults_are_retried_and_every_blob_matches() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    sim.inject("get_material", 2, Fault::Errcode { code: -1 });
    sim.inject("get_material", 2, Fault::HttpStatus { status: 502 });
    sim.inject("get_material", 1, Fault::Reset);
    sim.inject("get_material", 2, Fault::Truncate);
    sim.inject("batchget_material", 1, Fault::Reset);
    sim.inject("batchget_material", 1, Fault::Errcode { code: -1 });
    sim.inject("video_file", 1, Fault::Truncate);
    sim.inject("article_image", 1, Fault::HttpStatus { status: 503 });
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(report.counts.failed, 0);
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE sha256 IS NULL AND state != 'unavailable'"),
        0
    );
    assert_store_consistent(&setup.data_dir());
    assert!(
        std::fs::read_dir(setup.data_dir().join("tmp"))
            .unwrap()
            .next()
            .is_none(),
        "no temp file left"
    );
}

#[tokio::test]
async fn bodies_that_are_not_content_are_never_stored_and_retried_next_run() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    // An HTML error page with status 200 wherever get_material answers, all run long.
    sim.inject("get_material", 10_000, Fault::HtmlPage);
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Partial, "{:?}", report.message);
    assert_eq!(report.exit_code(), 1);
    // 25 images, 3 voices, 3 videos; news need no get_material.
    assert_eq!(report.counts.failed, 31);
    assert_eq!(setup.count("SELECT count(*) FROM assets WHERE state = 'failed' AND sha256 IS NULL AND error LIKE '%HTML%'"), 31);
    assert_eq!(setup.count("SELECT count(*) FROM asset_versions a JOIN assets s USING (account, media_id) WHERE s.type != 'news'"), 0);
    assert_store_consistent(&setup.data_dir());

    sim.clear_faults();
    let before = sim.count("get_material");
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(
        sim.count("get_material") - before,
        31,
        "only what is missing is fetched"
    );

    // Changed upstream, then every download cut short: the old version stays current.
    let images = sim.media_ids(MediaKind::Image);
    let old = super::common::expected_sha256(&sim, &images[0]);
    sim.change(&images[0]);
    sim.inject("get_material", 10_000, Fault::Truncate);
    let report = setup.sync().await;
    assert_eq!(report.exit_code(), 1);
    assert_eq!(
        setup.count(&format!("SELECT count(*) FROM assets WHERE media_id = '{}' AND state = 'failed' AND sha256 = '{old}'", images[0])),
        1
    );
    assert_store_consistent(&setup.data_dir());
    sim.clear_faults();
    assert_eq!(setup.sync().await.status, RunStatus::Ok);
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE state = 'failed'"),
        0
    );
    assert_store_consistent(&setup.data_dir());
}

#[tokio::test]
async fn a_rejected_token_is_refreshed_once_and_the_request_retried() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    sim.inject("get_material", 1, Fault::Errcode { code: 40001 });
    sim.inject("batchget_material", 1, Fault::Errcode { code: 42001 });
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(
        sim.count("stable_token"),
        3,
        "one token, then one refresh per rejection"
    );
    assert_eq!(
        sim.account().stable_tokens_issued(),
        1,
        "force_refresh was never used"
    );
}

#[tokio::test]
async fn tokens_revoked_mid_run_are_replaced_by_one_refresh() {
    let sim = std::sync::Arc::new(small_sim().await);
    let setup = Setup::new(&sim, "concurrent_downloads = 8");
    // Slow fetches keep the run going long after the revocation, even on a busy machine.
    sim.inject("get_material", 40, Fault::Latency { millis: 30 });
    let watcher = {
        let sim = sim.clone();
        tokio::spawn(async move {
            while sim.count("get_material") < 6 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            sim.invalidate_tokens();
        })
    };
    let report = setup.sync().await;
    watcher.await.unwrap();
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    let rejected = sim.requests().iter().filter(|r| r.errcode == 40001).count();
    assert!(rejected >= 1, "the revocation was seen");
    assert_eq!(
        sim.count("stable_token"),
        2,
        "many requests saw the stale token; one refresh happened"
    );
    assert_store_consistent(&setup.data_dir());
}

#[tokio::test]
async fn a_token_stolen_again_and_again_ends_the_run_with_a_diagnosis() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    for endpoint in ["batchget_material", "get_material", "quota_get"] {
        sim.inject(endpoint, 1000, Fault::Errcode { code: 40001 });
    }
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Aborted);
    let message = report.message.unwrap();
    assert!(
        message.contains("another service is taking over this account's token"),
        "{message}"
    );
    assert!(
        sim.count("stable_token") <= 5,
        "bounded refreshes, not a token-quota burn"
    );
}

#[tokio::test]
async fn daily_quota_reached_ends_the_run_and_a_later_run_completes() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    sim.inject("get_material", 1, Fault::Latency { millis: 0 });
    sim.inject("get_material", 1, Fault::Latency { millis: 0 });
    sim.inject("get_material", 1, Fault::Latency { millis: 0 });
    sim.inject("get_material", 1000, Fault::Errcode { code: 45009 });
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Aborted);
    assert_eq!(report.exit_code(), 3);
    assert!(report.accounts[0].quota_exhausted);
    assert!(
        report
            .message
            .as_deref()
            .unwrap()
            .contains("midnight Beijing time")
    );
    let stored = setup.count("SELECT count(*) FROM assets WHERE sha256 IS NOT NULL");
    assert!(stored >= 3, "what was stored is kept");
    assert_store_consistent(&setup.data_dir());

    sim.clear_faults();
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE sha256 IS NULL AND state != 'unavailable'"),
        0
    );
}

#[tokio::test]
async fn minute_quota_waits_and_goes_on() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    sim.inject("get_material", 2, Fault::Errcode { code: 45011 });
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
}

#[tokio::test]
async fn quota_reserve_leaves_production_its_share() {
    let sim = small_sim().await;
    // Production already used 60 of 100 calls; the reserve keeps 30, so 10 are ours.
    sim.account().set_daily_limit("get_material", 100);
    sim.account().set_used("get_material", 60);
    let setup = Setup::new(&sim, "quota_reserve = 0.3");
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Partial, "{:?}", report.message);
    assert_eq!(report.exit_code(), 1);
    assert_eq!(sim.count("get_material"), 10);
    assert!(report.message.unwrap().contains("budget"));
    assert_eq!(
        sim.account().used("get_material"),
        70,
        "never past the reserve"
    );
}

#[tokio::test]
async fn daily_budget_is_counted_across_runs_of_the_same_day() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "daily_budget = { get_material = 7 }");
    let report = setup.sync().await;
    assert_eq!(report.exit_code(), 1);
    assert_eq!(sim.count("get_material"), 7);
    let report = setup.sync().await;
    assert_eq!(report.exit_code(), 1);
    assert_eq!(
        sim.count("get_material"),
        7,
        "the day's budget was spent by the first run"
    );
    assert_eq!(
        setup.count("SELECT calls FROM api_usage WHERE endpoint = 'get_material'"),
        7
    );
}

#[tokio::test]
async fn an_asset_deleted_after_listing_is_no_failure() {
    let sim = std::sync::Arc::new(small_sim().await);
    let setup = Setup::new(&sim, "concurrent_downloads = 1");
    let voice = sim.media_ids(MediaKind::Voice)[0].clone();
    // Voices are listed after images; delete one once it is listed, before its fetch.
    sim.inject("get_material", 1, Fault::Latency { millis: 200 });
    sim.on_listing_page(
        MediaKind::Voice,
        1,
        mpmirror::sim::HookAction::Delete {
            media_ids: vec![voice.clone()],
        },
    );
    let report = setup.sync().await;
    assert_eq!(report.counts.failed, 0, "{:?}", report.message);
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(
        setup.count(&format!(
            "SELECT count(*) FROM assets WHERE media_id = '{voice}' AND error LIKE '%40007%'"
        )),
        1
    );
    setup.sync().await;
    assert_eq!(
        setup.count(&format!(
            "SELECT count(*) FROM assets WHERE media_id = '{voice}' AND deleted_at IS NOT NULL"
        )),
        1,
        "the next listing confirms the deletion"
    );
}

#[tokio::test]
async fn errors_only_a_person_can_fix_abort_with_advice() {
    for (code, words) in [
        (40164, "IP whitelist"),
        (89503, "administrator to confirm this IP"),
        (40125, "AppSecret"),
        (48001, "not authorised"),
    ] {
        let sim = small_sim().await;
        let setup = Setup::new(&sim, "");
        sim.inject("*", 1000, Fault::Errcode { code });
        let report = setup.sync().await;
        assert_eq!(report.status, RunStatus::Aborted, "{code}");
        let message = report.message.unwrap();
        assert!(message.contains(words), "{code}: {message}");
        assert!(sim.requests().len() < 10, "{code}: stops at once");
    }
}

/// A token from the simulator, as the company's token service would fetch it.
async fn service_token(sim: &mpmirror::sim::Simulator) -> String {
    let answer = super::common::stable_token(sim, true).await;
    answer["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn token_file_is_used_as_is_and_re_read_when_rejected() {
    let sim = small_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("access_token");
    std::fs::write(&token_path, format!("  {}\n", service_token(&sim).await)).unwrap();
    let text = format!(
        "data_dir = \"data\"\n[limits]\nrequests_per_second = 1000\n[[account]]\nname = \"main\"\n\
         app_id = {:?}\napi_base = {:?}\ntoken_file = \"access_token\"\n",
        sim.app_id(),
        sim.base_url()
    );
    let setup = Setup::from_text(dir, &text);
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(
        sim.count("stable_token") + sim.count("token"),
        1,
        "mpmirror never asked for a token"
    );

    // The service replaces the token mid-run: the old one is rejected, the file re-read.
    let sim = std::sync::Arc::new(sim);
    sim.invalidate_tokens();
    let fresh = service_token(&sim).await;
    sim.change(&sim.media_ids(MediaKind::Image)[0]);
    let service = {
        let (sim, path) = (sim.clone(), token_path.clone());
        tokio::spawn(async move {
            while !sim.requests().iter().any(|r| r.errcode == 40001) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            std::fs::write(path, fresh).unwrap();
        })
    };
    let report = setup.sync().await;
    service.await.unwrap();
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(report.counts.fetched, 1);

    // The service is down: the file keeps a rejected token; the run says so.
    sim.invalidate_tokens();
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Aborted);
    assert!(
        report
            .message
            .unwrap()
            .contains("is the token service that maintains it running?")
    );
}

#[tokio::test]
async fn a_spent_quota_get_quota_does_not_stop_the_backup() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "daily_budget = { get_material = 1000 }");
    sim.inject("quota_get", 2, Fault::Errcode { code: 45009 });
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(report.counts.fetched, 34);
}
