//! The HTTP side of the simulator: routing, the API's shapes and quirks, fault injection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::account::{Account, Article, Asset, Body, Endpoint, Fault, MediaKind, errmsg_for};
use super::content::{FileSpec, Generator, TruncatedBody};

/// A response body of any kind.
pub type SimBody = BoxBody<Bytes, io::Error>;

/// State shared by every connection.
pub struct Shared {
    /// The account.
    pub account: Mutex<Account>,
    /// Base URL clients reach the simulator at, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
}

impl Shared {
    /// Locks the account; a poisoned lock (a panicking test) is taken over as is.
    pub fn lock(&self) -> MutexGuard<'_, Account> {
        self.account
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Accepts connections until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        tokio::spawn(serve_connection(
            stream,
            peer,
            shared.clone(),
            shutdown.clone(),
        ));
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    // A second handle on the socket lets a `Reset` fault set SO_LINGER=0 and so send
    // an RST once hyper's handle is dropped, as a real reset would.
    let twin = stream
        .into_std()
        .and_then(|std| Ok((std.try_clone()?, std)))
        .and_then(|(twin, std)| Ok((TcpStream::from_std(twin)?, TcpStream::from_std(std)?)));
    let Ok((twin, stream)) = twin else {
        return;
    };
    let reset = CancellationToken::new();
    let service_reset = reset.clone();
    let service = service_fn(move |request| {
        let shared = shared.clone();
        let reset = service_reset.clone();
        async move { Ok::<_, Infallible>(handle(&shared, peer, &reset, request).await) }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        () = reset.cancelled() => {
            let _ = twin.set_zero_linger();
        }
        () = shutdown.cancelled() => {}
    }
}

/// What a handler answers, built under the lock and turned into a response after.
enum Reply {
    Json(Value),
    File {
        spec: FileSpec,
        filename: Option<String>,
        mime: &'static str,
    },
    Html(StatusCode, String),
    NotFound,
}

fn route(method: &Method, path: &str) -> Option<Endpoint> {
    let endpoint = match path {
        "/cgi-bin/token" if method == Method::GET => Endpoint::Token,
        "/cgi-bin/stable_token" if method == Method::POST => Endpoint::StableToken,
        "/cgi-bin/material/batchget_material" if method == Method::POST => {
            Endpoint::BatchgetMaterial
        }
        "/cgi-bin/material/get_material" if method == Method::POST => Endpoint::GetMaterial,
        "/cgi-bin/material/get_materialcount" if method == Method::GET => {
            Endpoint::GetMaterialCount
        }
        "/cgi-bin/openapi/quota/get" if method == Method::POST => Endpoint::QuotaGet,
        _ if path.starts_with("/vweixinp.tc.qq.com/") => Endpoint::VideoFile,
        "/mp/mp/video" => Endpoint::VideoPage,
        _ if path.starts_with("/mmbiz_jpg/") => Endpoint::ArticleImage,
        _ => return None,
    };
    Some(endpoint)
}

fn query_map(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

async fn handle(
    shared: &Shared,
    peer: SocketAddr,
    reset: &CancellationToken,
    request: Request<Incoming>,
) -> Response<SimBody> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = query_map(request.uri().query());
    let body = match Limited::new(request.into_body(), 1 << 20).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    if let Some(control) = path.strip_prefix("/__sim/") {
        return super::control::handle(shared, &method, control, &body);
    }
    let Some(endpoint) = route(&method, &path) else {
        return plain(StatusCode::NOT_FOUND, "404 Not Found");
    };
    let fault = shared.lock().take_fault(endpoint);
    let mut truncate = false;
    match fault {
        Some(Fault::Latency { millis }) => {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
        Some(Fault::Reset) => {
            shared.lock().record(endpoint, -2);
            reset.cancel();
            return std::future::pending().await;
        }
        Some(Fault::Truncate) => truncate = true,
        Some(Fault::Errcode { code }) => {
            let mut account = shared.lock();
            account.record(endpoint, code);
            return to_response(error_reply(&mut account, code), &shared.base_url, false);
        }
        Some(Fault::HttpStatus { status }) => {
            shared.lock().record(endpoint, -2);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            return to_response(
                Reply::Html(status, error_page(status.as_u16())),
                &shared.base_url,
                false,
            );
        }
        Some(Fault::HtmlPage) => {
            shared.lock().record(endpoint, -2);
            return to_response(
                Reply::Html(StatusCode::OK, error_page(502)),
                &shared.base_url,
                false,
            );
        }
        None => {}
    }
    let reply = {
        let mut account = shared.lock();
        let reply = dispatch(&mut account, endpoint, peer, &path, &query, &body);
        let errcode = match &reply {
            Reply::Json(value) => value.get("errcode").and_then(Value::as_i64).unwrap_or(0),
            Reply::NotFound => 404,
            _ => 0,
        };
        account.record(endpoint, errcode);
        reply
    };
    to_response(reply, &shared.base_url, truncate)
}

fn error_page(status: u16) -> String {
    format!(
        "<!DOCTYPE html><html><head><title>{status} Bad Gateway</title></head>\
         <body><center><h1>{status} Bad Gateway</h1></center><hr><center>stgw</center></body></html>"
    )
}

fn error_reply(account: &mut Account, code: i64) -> Reply {
    let rid = account.rid();
    let message = match code {
        40164 => "invalid ip 127.0.0.1 ipv6 ::ffff:127.0.0.1, not in whitelist".to_owned(),
        _ => errmsg_for(code).to_owned(),
    };
    Reply::Json(json!({
        "errcode": code,
        "errmsg": format!("{message} hint: [{}] rid: {rid}", account.random_string(12, b"ABCDEFGHJKLMNPQRSTUVWXYZ0123456789")),
    }))
}

fn dispatch(
    account: &mut Account,
    endpoint: Endpoint,
    peer: SocketAddr,
    path: &str,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Reply {
    if endpoint.is_api()
        && let Some(whitelist) = &account.whitelist
        && !whitelist.contains(&peer.ip())
    {
        return error_reply(account, 40164);
    }
    match endpoint {
        Endpoint::Token => token(account, query),
        Endpoint::StableToken => stable_token(account, body),
        Endpoint::VideoFile => video_file(account, path),
        Endpoint::VideoPage => Reply::Html(
            StatusCode::OK,
            "<!DOCTYPE html><html><head><title>视频</title></head><body>\
             <div class=\"video_player\">video player</div></body></html>"
                .to_owned(),
        ),
        Endpoint::ArticleImage => article_image(account, path),
        _ => api_call(account, endpoint, query, body),
    }
}

fn api_call(
    account: &mut Account,
    endpoint: Endpoint,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Reply {
    if let Err(code) = account.check_token(query.get("access_token").map(String::as_str)) {
        return error_reply(account, code);
    }
    if let Err(code) = account.spend(endpoint) {
        return error_reply(account, code);
    }
    let request: Value = if endpoint == Endpoint::GetMaterialCount {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(_) if body.is_empty() => return error_reply(account, 44002),
            Err(_) => return error_reply(account, 47001),
        }
    };
    match endpoint {
        Endpoint::BatchgetMaterial => batchget(account, &request),
        Endpoint::GetMaterial => get_material(account, &request),
        Endpoint::GetMaterialCount => {
            let count = |kind| account.listing(kind).len();
            Reply::Json(json!({
                "voice_count": count(MediaKind::Voice),
                "video_count": count(MediaKind::Video),
                "image_count": count(MediaKind::Image),
                "news_count": count(MediaKind::News),
            }))
        }
        Endpoint::QuotaGet => quota(account, &request),
        _ => Reply::NotFound,
    }
}

fn token(account: &mut Account, query: &HashMap<String, String>) -> Reply {
    let get = |key: &str| query.get(key).map_or("", String::as_str);
    if get("grant_type") != "client_credential" {
        return error_reply(account, 40002);
    }
    if let Err(code) = account.check_credentials(get("appid"), get("secret")) {
        return error_reply(account, code);
    }
    if let Err(code) = account.spend(Endpoint::Token) {
        return error_reply(account, code);
    }
    let (token, expires_in) = account.legacy_token();
    Reply::Json(json!({"access_token": token, "expires_in": expires_in}))
}

fn stable_token(account: &mut Account, body: &Bytes) -> Reply {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error_reply(account, 47001);
    };
    let get = |key: &str| request.get(key).and_then(Value::as_str).unwrap_or("");
    if get("grant_type") != "client_credential" {
        return error_reply(account, 40002);
    }
    if let Err(code) = account.check_credentials(get("appid"), get("secret")) {
        return error_reply(account, code);
    }
    if let Err(code) = account.spend(Endpoint::StableToken) {
        return error_reply(account, code);
    }
    let force = request
        .get("force_refresh")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (token, expires_in) = account.stable_token(force);
    Reply::Json(json!({"access_token": token, "expires_in": expires_in}))
}

fn batchget(account: &mut Account, request: &Value) -> Reply {
    let Some(kind) = request
        .get("type")
        .and_then(Value::as_str)
        .and_then(MediaKind::parse)
    else {
        return error_reply(account, 40004);
    };
    let offset = request.get("offset").and_then(Value::as_u64).unwrap_or(0) as usize;
    let count = request.get("count").and_then(Value::as_u64).unwrap_or(0);
    if !(1..=20).contains(&count) {
        return error_reply(account, 40035);
    }
    let take = if kind == MediaKind::News && account.quirks.news_ignores_count {
        usize::MAX
    } else {
        count as usize
    };
    let (total, items) = {
        let listing = account.listing(kind);
        let items: Vec<Value> = listing
            .iter()
            .skip(offset)
            .take(take)
            .map(|asset| list_item(asset))
            .collect();
        (listing.len(), items)
    };
    for action in account.page_served(kind) {
        account.apply(kind, &action);
    }
    Reply::Json(json!({
        "total_count": total,
        "item_count": items.len(),
        "item": items,
    }))
}

fn list_item(asset: &Asset) -> Value {
    match &asset.body {
        Body::News(articles) => json!({
            "media_id": asset.media_id,
            "content": {
                "news_item": articles.iter().map(article_json).collect::<Vec<_>>(),
                "create_time": asset.create_time,
                "update_time": asset.update_time,
            },
            "update_time": asset.update_time,
        }),
        Body::Video {
            title, description, ..
        } => json!({
            "media_id": asset.media_id,
            "name": asset.name,
            "update_time": asset.update_time,
            "description": description,
            "tags": [],
            "cover_url": "",
            "newcat": title,
        }),
        Body::File(spec) => {
            // Seen in the wild: some image items carry an empty url.
            let url = if spec.seed % 7 == 0 {
                String::new()
            } else {
                format!(
                    "{{BASE}}/mmbiz_jpg/{}/0?wx_fmt={}",
                    asset.media_id,
                    spec.format.extension()
                )
            };
            json!({
                "media_id": asset.media_id,
                "name": asset.name,
                "update_time": asset.update_time,
                "url": url,
            })
        }
    }
}

fn article_json(article: &Article) -> Value {
    json!({
        "title": article.title,
        "thumb_media_id": article.thumb_media_id,
        "thumb_url": format!("{{BASE}}/mmbiz_jpg/{}/0?wx_fmt=jpeg", article.thumb_image),
        "show_cover_pic": 0,
        "author": article.author,
        "digest": article.digest,
        "content": article.content,
        "url": article.url,
        "content_source_url": article.content_source_url,
        "need_open_comment": 0,
        "only_fans_can_comment": 0,
    })
}

fn get_material(account: &mut Account, request: &Value) -> Reply {
    let media_id = request
        .get("media_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(asset) = account.assets.get(media_id) else {
        return error_reply(account, 40007);
    };
    match &asset.body {
        Body::News(articles) => Reply::Json(json!({
            "news_item": articles.iter().map(article_json).collect::<Vec<_>>(),
        })),
        Body::Video {
            title,
            description,
            file,
        } => {
            let down_url = if file.is_some() {
                format!(
                    "{{BASE}}/vweixinp.tc.qq.com/{media_id}.mp4?vkey={}",
                    asset.update_time
                )
            } else {
                format!("{{BASE}}/mp/mp/video?__biz=MzA5NjA4NzQ3Mg==&vid=wxv_{media_id}")
            };
            Reply::Json(json!({
                "title": title,
                "description": description,
                "down_url": down_url,
            }))
        }
        Body::File(spec) => {
            let (spec, name) = (*spec, asset.name.clone());
            if account.quirks.files_as_text_plain {
                Reply::File {
                    spec,
                    filename: None,
                    mime: "text/plain",
                }
            } else {
                Reply::File {
                    spec,
                    filename: Some(name),
                    mime: spec.format.mime(),
                }
            }
        }
    }
}

fn quota(account: &mut Account, request: &Value) -> Reply {
    let path = request
        .get("cgi_path")
        .and_then(Value::as_str)
        .unwrap_or("");
    let Some(endpoint) = Endpoint::from_cgi_path(path) else {
        return error_reply(account, 76021);
    };
    let limit = account.daily_limit(endpoint.name());
    let used = account.used(endpoint.name());
    Reply::Json(json!({
        "errcode": 0,
        "errmsg": "ok",
        "quota": {"daily_limit": limit, "used": used, "remain": limit.saturating_sub(used)},
    }))
}

fn video_file(account: &Account, path: &str) -> Reply {
    let media_id = path
        .trim_start_matches("/vweixinp.tc.qq.com/")
        .trim_end_matches(".mp4");
    match account.assets.get(media_id).map(|a| &a.body) {
        Some(Body::Video {
            file: Some(spec), ..
        }) => Reply::File {
            spec: *spec,
            filename: None,
            mime: "video/mp4",
        },
        _ => Reply::NotFound,
    }
}

fn article_image(account: &Account, path: &str) -> Reply {
    let id = path
        .trim_start_matches("/mmbiz_jpg/")
        .split('/')
        .next()
        .unwrap_or("");
    let spec = account.article_images.get(id).copied().or_else(|| {
        account.assets.get(id).and_then(|asset| match asset.body {
            Body::File(spec) => Some(spec),
            _ => None,
        })
    });
    match spec {
        Some(spec) => Reply::File {
            spec,
            filename: None,
            mime: "image/jpeg",
        },
        None => Reply::NotFound,
    }
}

fn to_response(reply: Reply, base_url: &str, truncate: bool) -> Response<SimBody> {
    let (status, mime, disposition, body): (_, &str, _, SimBody) = match reply {
        Reply::Json(value) => {
            // The real service sends JSON, errors included, as text/plain.
            let text = value.to_string().replace("{BASE}", base_url);
            (StatusCode::OK, "text/plain", None, full(text))
        }
        Reply::Html(status, page) => (status, "text/html; charset=utf-8", None, full(page)),
        Reply::NotFound => (
            StatusCode::NOT_FOUND,
            "text/html",
            None,
            full("<html><body>404 Not Found</body></html>".to_owned()),
        ),
        Reply::File {
            spec,
            filename,
            mime,
        } => {
            let disposition = filename.map(|name| {
                let safe: String = name
                    .chars()
                    .map(|c| if c.is_control() || c == '"' { '_' } else { c })
                    .collect();
                format!("attachment; filename=\"{safe}\"")
            });
            let body = Generator::new(spec).body().boxed();
            (StatusCode::OK, mime, disposition, body)
        }
    };
    let body = if truncate {
        TruncatedBody::half_of(body).boxed()
    } else {
        body
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, mime)
        .header(header::CONNECTION, "keep-alive");
    if let Some(disposition) = disposition {
        builder = builder.header(header::CONTENT_DISPOSITION, disposition);
    }
    builder
        .body(body)
        .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "bad header"))
}

fn full(text: String) -> SimBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text response, for the control surface and routing errors.
pub fn plain(status: StatusCode, text: &str) -> Response<SimBody> {
    let mut response = Response::new(full(text.to_owned()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    response
}

/// A JSON response for the control surface.
pub fn control_json(value: &Value) -> Response<SimBody> {
    let mut response = Response::new(full(value.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Parses a control request body.
pub fn parse_control<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| format!("bad control request: {err}"))
}
