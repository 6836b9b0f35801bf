//! The simulator answers like the API facts say, with plain HTTP requests (not the
//! client), so the client and the simulator cannot share a misreading.

use std::time::Duration;

use mpmirror::sim::{Fault, HookAction, MediaKind, SeedSpec, SimConfig, Simulator};
use serde_json::{Value, json};

use super::common::{binary, expected_sha256, loopback, sha256, sim_with, small_sim, stable_token};

async fn legacy_token(sim: &Simulator, secret: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}/cgi-bin/token", sim.base_url()))
        .query(&[
            ("grant_type", "client_credential"),
            ("appid", &sim.app_id()),
            ("secret", secret),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn token_of(answer: &Value) -> String {
    answer["access_token"].as_str().unwrap().to_owned()
}

async fn post(sim: &Simulator, path: &str, token: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}?access_token={token}", sim.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post_json(sim: &Simulator, path: &str, token: &str, body: &Value) -> Value {
    let response = post(sim, path, token, body).await;
    assert_eq!(
        response.headers()["content-type"],
        "text/plain",
        "the real API sends JSON as text/plain"
    );
    response.json().await.unwrap()
}

async fn batchget(sim: &Simulator, token: &str, body: &Value) -> Value {
    post_json(sim, "/cgi-bin/material/batchget_material", token, body).await
}

async fn list_page(sim: &Simulator, token: &str, kind: &str, offset: u64) -> Value {
    batchget(
        sim,
        token,
        &json!({"type": kind, "offset": offset, "count": 20}),
    )
    .await
}

fn errcode(value: &Value) -> i64 {
    value["errcode"].as_i64().unwrap_or(0)
}

#[tokio::test]
async fn stable_token_is_reused_and_force_refresh_replaces_it() {
    let sim = small_sim().await;
    let first = stable_token(&sim, false).await;
    assert!(first["expires_in"].as_u64().unwrap() > 7000);
    let again = stable_token(&sim, false).await;
    assert_eq!(
        token_of(&first),
        token_of(&again),
        "normal mode returns the same token"
    );
    let forced = stable_token(&sim, true).await;
    assert_ne!(token_of(&first), token_of(&forced));
    // The old one still works during the grace period.
    let count = batchget(
        &sim,
        &token_of(&first),
        &json!({"type": "image", "offset": 0, "count": 1}),
    )
    .await;
    assert_eq!(errcode(&count), 0);
}

#[tokio::test]
async fn legacy_token_invalidates_the_previous_one_after_the_grace() {
    let mut config = SimConfig::new(SeedSpec::small());
    config.token_grace = Duration::ZERO;
    let sim = sim_with(config).await;
    let first = token_of(&legacy_token(&sim, &sim.app_secret()).await);
    let stable = token_of(&stable_token(&sim, false).await);
    let second = token_of(&legacy_token(&sim, &sim.app_secret()).await);
    let body = json!({"type": "voice", "offset": 0, "count": 20});
    let old = batchget(&sim, &first, &body).await;
    assert_eq!(errcode(&old), 40001);
    assert!(
        old["errmsg"].as_str().unwrap().contains(" rid: "),
        "errmsg carries a rid suffix"
    );
    let new = batchget(&sim, &second, &body).await;
    assert_eq!(errcode(&new), 0);
    let isolated = batchget(&sim, &stable, &body).await;
    assert_eq!(
        errcode(&isolated),
        0,
        "stable tokens are isolated from /cgi-bin/token"
    );
}

#[tokio::test]
async fn token_errors_for_wrong_credentials_expiry_and_revocation() {
    let sim = small_sim().await;
    assert_eq!(errcode(&legacy_token(&sim, "wrong").await), 40125);
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/cgi-bin/stable_token", sim.base_url()))
        .json(&json!({"grant_type": "client_credential", "appid": "wxnope", "secret": "x"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(errcode(&answer), 40013);
    let token = token_of(&stable_token(&sim, false).await);
    let body = json!({"type": "news", "offset": 0, "count": 20});
    sim.expire_tokens();
    let expired = batchget(&sim, &token, &body).await;
    assert_eq!(errcode(&expired), 42001);
    let token = token_of(&stable_token(&sim, false).await);
    sim.invalidate_tokens();
    let revoked = batchget(&sim, &token, &body).await;
    assert_eq!(errcode(&revoked), 40001);
    let garbage = batchget(&sim, "garbage", &body).await;
    assert_eq!(errcode(&garbage), 40014);
}

#[tokio::test]
async fn batchget_material_pages_newest_first_with_the_real_shapes() {
    let sim = small_sim().await;
    let token = token_of(&stable_token(&sim, false).await);
    let first = list_page(&sim, &token, "image", 0).await;
    let second = list_page(&sim, &token, "image", 20).await;
    assert_eq!(first["total_count"], 25);
    assert_eq!(first["item_count"], 20);
    assert_eq!(second["item_count"], 5);
    let times: Vec<i64> = first["item"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["item"].as_array().unwrap())
        .map(|i| i["update_time"].as_i64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest update first"
    );
    let item = &first["item"][0];
    assert!(item["media_id"].is_string() && item["name"].is_string() && item.get("url").is_some());
    let videos = list_page(&sim, &token, "video", 0).await;
    assert!(
        videos["item"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.get("url").is_none()),
        "video items carry no url"
    );
    let news = list_page(&sim, &token, "news", 0).await;
    let article = &news["item"][0]["content"]["news_item"][0];
    for key in [
        "title",
        "thumb_media_id",
        "author",
        "digest",
        "content",
        "url",
        "content_source_url",
        "thumb_url",
    ] {
        assert!(article.get(key).is_some(), "news_item has {key}");
    }
    assert!(
        article["content"]
            .as_str()
            .unwrap()
            .contains("data-src=\"http://127.0.0.1")
    );
    for bad in [0, 21] {
        let answer = batchget(
            &sim,
            &token,
            &json!({"type": "image", "offset": 0, "count": bad}),
        )
        .await;
        assert_eq!(errcode(&answer), 40035, "count {bad} is refused");
    }
    let answer = batchget(
        &sim,
        &token,
        &json!({"type": "gif", "offset": 0, "count": 1}),
    )
    .await;
    assert_eq!(errcode(&answer), 40004);
}

#[tokio::test]
async fn get_material_answers_files_json_and_40007() {
    let sim = small_sim().await;
    let token = token_of(&stable_token(&sim, false).await);
    let path = "/cgi-bin/material/get_material";
    let image = sim.media_ids(MediaKind::Image)[3].clone();
    let response = post(&sim, path, &token, &json!({"media_id": image})).await;
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=")
    );
    let bytes = response.bytes().await.unwrap();
    assert_eq!(sha256(&bytes), expected_sha256(&sim, &image));
    assert!(
        bytes.starts_with(b"\xFF\xD8\xFF") || bytes.starts_with(b"\x89PNG"),
        "real magic bytes"
    );
    let video = sim.media_ids(MediaKind::Video);
    let answers: Vec<Value> = futures_join(&sim, &token, &video).await;
    assert!(answers.iter().any(|a| {
        a["down_url"]
            .as_str()
            .unwrap()
            .contains("/vweixinp.tc.qq.com/")
    }));
    let page_url = answers
        .iter()
        .map(|a| a["down_url"].as_str().unwrap())
        .find(|u| u.contains("/mp/mp/video"))
        .expect("one video is only a web page")
        .to_owned();
    let page = reqwest::get(page_url).await.unwrap().text().await.unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    let news = sim.media_ids(MediaKind::News)[0].clone();
    let answer = post_json(&sim, path, &token, &json!({"media_id": news})).await;
    assert!(
        answer["news_item"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    let missing = post_json(&sim, path, &token, &json!({"media_id": "nope"})).await;
    assert_eq!(errcode(&missing), 40007);
    let counts = reqwest::get(format!(
        "{}/cgi-bin/material/get_materialcount?access_token={token}",
        sim.base_url()
    ))
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    assert_eq!(
        counts,
        json!({"image_count": 25, "video_count": 3, "voice_count": 3, "news_count": 3})
    );
}

async fn futures_join(sim: &Simulator, token: &str, ids: &[String]) -> Vec<Value> {
    let mut answers = Vec::new();
    for id in ids {
        answers.push(
            post_json(
                sim,
                "/cgi-bin/material/get_material",
                token,
                &json!({"media_id": id}),
            )
            .await,
        );
    }
    answers
}

#[tokio::test]
async fn quotas_report_and_enforce_daily_and_minute_limits() {
    let sim = small_sim().await;
    let token = token_of(&stable_token(&sim, false).await);
    sim.account().set_daily_limit("get_materialcount", 3);
    sim.account().set_minute_limit("batchget_material", 2);
    let url = format!(
        "{}/cgi-bin/material/get_materialcount?access_token={token}",
        sim.base_url()
    );
    for _ in 0..3 {
        let ok: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        assert_eq!(errcode(&ok), 0);
    }
    let spent: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(errcode(&spent), 45009);
    let quota = post_json(
        &sim,
        "/cgi-bin/openapi/quota/get",
        &token,
        &json!({"cgi_path": "/cgi-bin/material/get_materialcount"}),
    )
    .await;
    assert_eq!(
        quota["quota"],
        json!({"daily_limit": 3, "used": 3, "remain": 0})
    );
    let body = json!({"type": "image", "offset": 0, "count": 1});
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(errcode(&batchget(&sim, &token, &body).await));
    }
    // A minute boundary may pass between the calls; at most one call can slip through.
    assert!(codes.contains(&45011) || codes == [0, 0, 0], "{codes:?}");
}

#[tokio::test]
async fn every_fault_kind_can_be_injected() {
    let sim = small_sim().await;
    let token = token_of(&stable_token(&sim, false).await);
    let image = sim.media_ids(MediaKind::Image)[0].clone();
    let body = json!({"media_id": image});
    let path = "/cgi-bin/material/get_material";
    let client = reqwest::Client::new();
    let url = format!("{}{path}?access_token={token}", sim.base_url());

    sim.inject("get_material", 1, Fault::Errcode { code: -1 });
    assert_eq!(errcode(&post_json(&sim, path, &token, &body).await), -1);

    sim.inject("get_material", 1, Fault::HttpStatus { status: 502 });
    assert_eq!(
        client.post(&url).json(&body).send().await.unwrap().status(),
        502
    );

    sim.inject("get_material", 1, Fault::HtmlPage);
    let page = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<html>"));

    sim.inject("get_material", 1, Fault::Reset);
    assert!(
        client.post(&url).json(&body).send().await.is_err(),
        "reset connection"
    );

    sim.inject("get_material", 1, Fault::Truncate);
    let response = client.post(&url).json(&body).send().await.unwrap();
    let announced = response.content_length().unwrap();
    assert!(
        response.bytes().await.is_err(),
        "body of {announced} bytes cut short"
    );

    sim.inject("*", 1, Fault::Latency { millis: 300 });
    let started = std::time::Instant::now();
    assert_eq!(
        errcode(&post_json(&sim, path, &token, &json!({"media_id": "x"})).await),
        40007
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // After the faults, the same request succeeds.
    let bytes = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha256(&bytes), expected_sha256(&sim, &image));
    let counts = sim.account().counts();
    assert_eq!(counts["get_material"], 7);
}

#[tokio::test]
async fn listing_hooks_change_the_account_mid_listing() {
    let sim = small_sim().await;
    let token = token_of(&stable_token(&sim, false).await);
    sim.on_listing_page(MediaKind::Image, 1, HookAction::Insert { count: 1 });
    let first = list_page(&sim, &token, "image", 0).await;
    let second = list_page(&sim, &token, "image", 20).await;
    assert_eq!(first["total_count"], 25);
    assert_eq!(second["total_count"], 26, "the upload shows in total_count");
    assert_eq!(
        second["item"][0]["media_id"], first["item"][19]["media_id"],
        "an upload shifts every later item one offset down"
    );
}

#[tokio::test]
async fn ip_whitelist_answers_40164() {
    let mut config = SimConfig::new(SeedSpec::small());
    config.whitelist = Some(vec!["10.1.2.3".parse().unwrap()]);
    let sim = sim_with(config).await;
    let answer = stable_token(&sim, false).await;
    assert_eq!(errcode(&answer), 40164);
    assert!(
        answer["errmsg"]
            .as_str()
            .unwrap()
            .contains("not in whitelist")
    );
}

#[tokio::test]
async fn seeding_is_deterministic() {
    let a = Simulator::start(SimConfig::new(SeedSpec::demo()), loopback())
        .await
        .unwrap();
    let b = Simulator::start(SimConfig::new(SeedSpec::demo()), loopback())
        .await
        .unwrap();
    for kind in [
        MediaKind::Image,
        MediaKind::Video,
        MediaKind::Voice,
        MediaKind::News,
    ] {
        assert_eq!(a.media_ids(kind), b.media_ids(kind));
    }
    let images = a.media_ids(MediaKind::Image);
    assert!(images.len() >= 200, "a few hundred images");
    assert_eq!(
        expected_sha256(&a, &images[7]),
        expected_sha256(&b, &images[7])
    );
    let other = Simulator::start(
        SimConfig::new(SeedSpec::parse("demo:99").unwrap()),
        loopback(),
    )
    .await
    .unwrap();
    assert_ne!(
        a.media_ids(MediaKind::Image),
        other.media_ids(MediaKind::Image)
    );
    assert!(SeedSpec::parse("nonsense").is_err());
}

#[tokio::test]
async fn control_surface_over_http() {
    let sim = small_sim().await;
    let client = reqwest::Client::new();
    let control = |path: &str| format!("{}/__sim/{path}", sim.base_url());
    let added: Value = client
        .post(control("assets"))
        .json(&json!({"type": "voice", "size": 1000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = added["media_id"].as_str().unwrap().to_owned();
    assert_eq!(
        sim.media_ids(MediaKind::Voice)[0],
        id,
        "new uploads list first"
    );
    let before = sim.update_time(&id).unwrap();
    client
        .post(control("assets/change"))
        .json(&json!({"media_id": id}))
        .send()
        .await
        .unwrap();
    assert!(sim.update_time(&id).unwrap() > before);
    client
        .post(control("faults"))
        .json(&json!({"endpoint": "stable_token", "count": 1,
        "fault": {"kind": "errcode", "code": -1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(errcode(&stable_token(&sim, false).await), -1);
    client
        .post(control("assets/delete"))
        .json(&json!({"media_id": id}))
        .send()
        .await
        .unwrap();
    let state: Value = client
        .get(control("state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["voice"], 3);
    assert_eq!(state["requests"]["stable_token"], 1);
    let refused = client
        .post(control("faults"))
        .json(&json!({"endpoint": "nope", "count": 1,
        "fault": {"kind": "reset"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
}

/// A 1 GiB video streams from the standalone simulator with flat memory.
#[tokio::test]
async fn one_gib_video_is_served_with_flat_memory() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = binary()
        .args([
            "sim",
            "--seed",
            "empty",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut added = None;
    for _ in 0..100 {
        if let Ok(response) = client
            .post(format!("{base}/__sim/assets"))
            .json(&json!({"type": "video", "size": 1u64 << 30}))
            .send()
            .await
        {
            added = Some(response.json::<Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = added.expect("simulator started")["media_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut response = client
        .get(format!("{base}/vweixinp.tc.qq.com/{id}.mp4"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.content_length(), Some(1 << 30));
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, 1 << 30);
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        peak_kib < 50 * 1024,
        "simulator peak RSS {peak_kib} KiB for a 1 GiB body"
    );
}
