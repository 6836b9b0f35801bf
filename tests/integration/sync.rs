//! A sync mirrors everything, records the contract's relations, re-syncs with listing
//! calls only, keeps versions, and survives a list that changes while it is paged.

use mpmirror::catalog::RunStatus;
use mpmirror::sim::{HookAction, MediaKind, Quirks, SeedSpec, SimConfig};

use super::common::{
    Setup, assert_store_consistent, expected_sha256, pages, sha256, sim_with, small_sim,
};

#[tokio::test]
async fn first_sync_stores_every_asset_and_fills_the_contract_relations() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(report.exit_code(), 0);
    // 25 images, 3 voices, 3 videos (one a web page), 3 news.
    assert_eq!(report.counts.listed, 34);
    assert_eq!(report.counts.fetched, 34);
    assert_store_consistent(&setup.data_dir());

    for id in sim.media_ids(MediaKind::Image) {
        let conn = super::common::rusqlite_connection(&setup.data_dir());
        let (sha, size, time): (String, i64, i64) = conn
            .query_row(
                "SELECT sha256, size, update_time FROM assets WHERE account='main' AND media_id=?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            sha,
            expected_sha256(&sim, &id),
            "stored bytes are the upstream bytes"
        );
        assert_eq!(size as u64, sim.file_of(&id).unwrap().size);
        assert_eq!(
            time,
            sim.update_time(&id).unwrap(),
            "update_time exactly as received"
        );
    }
    assert_eq!(setup.count("SELECT count(*) FROM asset_versions"), 33);
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE state = 'unavailable'"),
        1
    );
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE deleted_at IS NOT NULL"),
        0
    );
    assert_eq!(
        setup.count("SELECT count(*) FROM runs WHERE status = 'ok' AND finished_at >= started_at"),
        1
    );

    // News: the document and every article's content are blobs; names are first titles.
    let conn = super::common::rusqlite_connection(&setup.data_dir());
    let mut rows = conn
        .prepare("SELECT a.media_id, a.idx, a.title, a.content_sha256, s.name FROM articles a JOIN assets s USING (account, media_id) ORDER BY 1, 2")
        .unwrap();
    let articles: Vec<(String, i64, String, String, String)> = rows
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(articles.len() >= 3);
    for (_, idx, title, content_sha, name) in &articles {
        let blob = setup
            .data_dir()
            .join("blobs")
            .join(&content_sha[..2])
            .join(content_sha);
        let content = std::fs::read_to_string(blob).unwrap();
        assert!(content.starts_with("<section>"));
        assert_eq!(&sha256(content.as_bytes()), content_sha);
        if *idx == 0 {
            assert_eq!(
                title, name,
                "a news item's name is its first article's title"
            );
        }
    }
    assert!(articles.iter().any(|a| a.1 == 0));
    // Article images harvested from data-src and thumb_url.
    let images = setup.count("SELECT count(*) FROM article_images WHERE sha256 IS NOT NULL");
    assert!(images >= 6, "{images} article images");
    assert_eq!(
        setup.count("SELECT count(*) FROM article_images WHERE sha256 IS NULL"),
        0
    );
}

#[tokio::test]
async fn resync_with_nothing_changed_makes_only_listing_token_and_quota_calls() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    setup.sync().await;
    let before = sim.account().counts();
    let report = setup.sync().await;
    let after = sim.account().counts();
    let delta = |name: &str| after.get(name).unwrap_or(&0) - before.get(name).unwrap_or(&0);
    assert_eq!(report.status, RunStatus::Ok);
    assert_eq!(report.counts.fetched, 0);
    assert_eq!(delta("get_material"), 0);
    assert_eq!(
        delta("batchget_material"),
        pages(25) + pages(3) + pages(3) + pages(3)
    );
    assert_eq!(delta("stable_token"), 1);
    assert_eq!(delta("quota_get"), 2);
    assert_eq!(
        delta("video_file") + delta("article_image") + delta("video_page"),
        0
    );
    assert_eq!(report.counts.api_calls as usize, pages(25) + 3 + 1 + 2);
}

#[tokio::test]
async fn changes_make_new_versions_and_deletions_are_marked_not_removed() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    setup.sync().await;
    let images = sim.media_ids(MediaKind::Image);
    let (changed, deleted) = (images[4].clone(), images[9].clone());
    let old_sha = expected_sha256(&sim, &changed);
    assert!(sim.change(&changed));
    assert!(sim.delete(&deleted));
    let news = sim.media_ids(MediaKind::News)[0].clone();
    assert!(sim.change(&news));
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok);
    assert_eq!((report.counts.changed, report.counts.deleted), (2, 1));
    assert_eq!(report.counts.fetched, 2);
    let conn = super::common::rusqlite_connection(&setup.data_dir());
    let versions: Vec<String> = conn
        .prepare("SELECT sha256 FROM asset_versions WHERE media_id = ?1 ORDER BY update_time")
        .unwrap()
        .query_map([&changed], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        versions,
        vec![old_sha.clone(), expected_sha256(&sim, &changed)]
    );
    assert_eq!(
        setup.count(&format!("SELECT count(*) FROM assets WHERE media_id = '{deleted}' AND deleted_at IS NOT NULL AND sha256 IS NOT NULL")),
        1,
        "a deleted asset keeps its row and content"
    );
    let old_blob = setup
        .data_dir()
        .join("blobs")
        .join(&old_sha[..2])
        .join(&old_sha);
    assert!(old_blob.is_file(), "sync never deletes blobs");
    assert!(
        setup.count(&format!(
            "SELECT count(*) FROM articles WHERE media_id = '{news}' AND title LIKE '%(edited)'"
        )) >= 1
    );
    assert_store_consistent(&setup.data_dir());
}

#[tokio::test]
async fn an_upload_mid_listing_shifts_offsets_and_nothing_is_skipped() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    sim.on_listing_page(MediaKind::Image, 1, HookAction::Insert { count: 1 });
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    let images = sim.media_ids(MediaKind::Image);
    assert_eq!(images.len(), 26);
    for id in &images {
        assert_eq!(
            setup.count(&format!("SELECT count(*) FROM assets WHERE media_id = '{id}' AND sha256 IS NOT NULL AND deleted_at IS NULL")),
            1,
            "{id} stored"
        );
    }
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE deleted_at IS NOT NULL"),
        0
    );
    assert_store_consistent(&setup.data_dir());
}

#[tokio::test]
async fn a_deletion_mid_listing_skips_nothing_and_deletes_only_the_deleted() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    let images = sim.media_ids(MediaKind::Image);
    // Deleting an item of page 1 after it was served shifts page 2 up by one: a naive
    // pager never sees the item that moved from offset 20 to 19.
    let gone = images[3].clone();
    let moved = images[20].clone();
    sim.on_listing_page(
        MediaKind::Image,
        1,
        HookAction::Delete {
            media_ids: vec![gone.clone()],
        },
    );
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(
        setup.count(&format!("SELECT count(*) FROM assets WHERE media_id = '{moved}' AND sha256 IS NOT NULL AND deleted_at IS NULL")),
        1,
        "the item that moved up was not skipped"
    );
    assert_eq!(
        setup.count(&format!(
            "SELECT count(*) FROM assets WHERE media_id = '{gone}' AND deleted_at IS NOT NULL"
        )),
        1
    );
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE deleted_at IS NOT NULL"),
        1
    );
    assert_eq!(report.counts.deleted, 1);
}

#[tokio::test]
async fn a_list_that_never_settles_deletes_nothing_and_aborts() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    setup.sync().await;
    // Gone upstream, but only a complete listing may say so.
    let victims: Vec<String> = sim.media_ids(MediaKind::Image)[10..12].to_vec();
    for id in &victims {
        sim.delete(id);
    }
    // An upload after every page served: no pass ever sees a stable list.
    for page in 1..=40 {
        sim.on_listing_page(MediaKind::Image, page, HookAction::Insert { count: 1 });
    }
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Aborted);
    assert_eq!(report.exit_code(), 3);
    assert!(report.message.unwrap().contains("kept changing"));
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE deleted_at IS NOT NULL"),
        0,
        "an incomplete listing deletes nothing"
    );
}

#[tokio::test]
async fn news_listing_that_ignores_count_is_tolerated() {
    let mut config = SimConfig::new(SeedSpec {
        news: 45,
        ..SeedSpec::small()
    });
    config.quirks = Quirks {
        news_ignores_count: true,
        files_as_text_plain: true,
    };
    let sim = sim_with(config).await;
    let setup = Setup::new(&sim, "");
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE type = 'news' AND sha256 IS NOT NULL"),
        45
    );
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE type = 'image' AND sha256 IS NOT NULL"),
        25,
        "files sent as text/plain without a filename are still files"
    );
    let before = sim.count("batchget_material");
    setup.sync().await;
    assert_eq!(
        sim.count("batchget_material") - before,
        1 + pages(25) + 1 + 1
    );
}

#[tokio::test]
async fn video_offered_as_a_web_page_is_recorded_and_not_retried() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    setup.sync().await;
    let conn = super::common::rusqlite_connection(&setup.data_dir());
    let (url, title, error): (String, String, String) = conn
        .query_row(
            "SELECT upstream_url, title, error FROM assets WHERE state = 'unavailable'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(url.contains("/mp/mp/video?"));
    assert!(title.starts_with("Video"));
    assert!(error.contains("web page"));
    let before = sim.count("get_material");
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok);
    assert_eq!(sim.count("get_material"), before, "not retried every run");
}

#[tokio::test]
async fn several_accounts_are_mirrored_in_one_run() {
    let first = small_sim().await;
    let second = sim_with(SimConfig::new(SeedSpec::parse("small:42").unwrap())).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = \"data\"\n[limits]\nrequests_per_second = 500\n\
         [[account]]\nname = \"first\"\napp_id = {:?}\napp_secret = {:?}\napi_base = {:?}\n\
         [[account]]\nname = \"second\"\napp_id = {:?}\napp_secret = {:?}\napi_base = {:?}\ntoken = \"legacy\"\n",
        first.app_id(),
        first.app_secret(),
        first.base_url(),
        second.app_id(),
        second.app_secret(),
        second.base_url()
    );
    let setup = Setup::from_text(dir, &text);
    let report = setup.sync().await;
    assert_eq!(report.status, RunStatus::Ok, "{:?}", report.message);
    assert_eq!(report.accounts.len(), 2);
    assert_eq!(setup.count("SELECT count(DISTINCT account) FROM assets"), 2);
    assert_eq!(
        setup.count("SELECT count(*) FROM assets WHERE account = 'second' AND sha256 IS NOT NULL"),
        33
    );
    assert_eq!(second.count("token"), 1, "legacy mode uses /cgi-bin/token");
    assert_eq!(second.count("stable_token"), 0);
    assert_eq!(
        first.count("token"),
        0,
        "stable mode never touches /cgi-bin/token"
    );
}

async fn dry_run_binary(setup: &Setup) -> std::process::Output {
    super::common::output_of(setup.command(&["sync", "--dry-run"])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_lists_and_plans_but_writes_nothing() {
    let sim = small_sim().await;
    let setup = Setup::new(&sim, "");
    let output = dry_run_binary(&setup).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!setup.data_dir().exists(), "dry run created nothing");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("image listed     25"), "{text}");
    assert!(text.contains("would fetch 25 new"));
    assert!(text.contains("of 10000 left today"));
    assert_eq!(sim.count("get_material"), 0);
    setup.sync().await;
    sim.change(&sim.media_ids(MediaKind::Voice)[0]);
    let output = dry_run_binary(&setup).await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("voice listed      3 (1 listing calls): would fetch 0 new, 1 changed"),
        "{text}"
    );
}
