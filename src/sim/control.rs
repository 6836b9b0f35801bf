//! The simulator's control surface over HTTP, under `/__sim/`, for out-of-process use.
//!
//! | request | body | effect |
//! |---|---|---|
//! | `GET /__sim/state` | | counts of materials by type, requests by endpoint |
//! | `GET /__sim/requests` | | the request log |
//! | `POST /__sim/assets` | `{"type","size"?,"name"?}` | uploads a material, answers its media_id |
//! | `POST /__sim/assets/change` | `{"media_id"}` | new content, newer update_time |
//! | `POST /__sim/assets/delete` | `{"media_id"}` | deletes it |
//! | `POST /__sim/tokens/invalidate` | | revokes every token |
//! | `POST /__sim/tokens/expire` | | expires every token |
//! | `POST /__sim/faults` | a [`FaultRule`] | the next calls answer with the fault |
//! | `POST /__sim/hooks` | a [`ListingHook`] | changes the account after a listing page |
//! | `POST /__sim/quota` | `{"endpoint","daily_limit"?,"minute_limit"?,"used"?}` | sets quotas |

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::account::{Endpoint, FaultRule, ListingHook, MediaKind};
use super::server::{Shared, SimBody, control_json, parse_control, plain};

#[derive(Deserialize)]
struct NewAsset {
    #[serde(rename = "type")]
    kind: MediaKind,
    size: Option<u64>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct MediaRef {
    media_id: String,
}

#[derive(Deserialize)]
struct QuotaChange {
    endpoint: String,
    daily_limit: Option<u64>,
    minute_limit: Option<u64>,
    used: Option<u64>,
}

/// Every endpoint name, to turn a control request's string into the static name.
const ENDPOINTS: [Endpoint; 9] = [
    Endpoint::Token,
    Endpoint::StableToken,
    Endpoint::BatchgetMaterial,
    Endpoint::GetMaterial,
    Endpoint::GetMaterialCount,
    Endpoint::QuotaGet,
    Endpoint::VideoFile,
    Endpoint::VideoPage,
    Endpoint::ArticleImage,
];

/// Finds an endpoint by its name.
pub fn endpoint_named(name: &str) -> Option<Endpoint> {
    ENDPOINTS.into_iter().find(|e| e.name() == name)
}

/// Serves one control request.
pub fn handle(shared: &Shared, method: &Method, path: &str, body: &Bytes) -> Response<SimBody> {
    match run(shared, method, path, body) {
        Ok(response) => response,
        Err(message) => plain(StatusCode::BAD_REQUEST, &message),
    }
}

fn run(
    shared: &Shared,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Result<Response<SimBody>, String> {
    let mut account = shared.lock();
    let done = || control_json(&json!({"ok": true}));
    match (method.as_str(), path) {
        ("GET", "state") => {
            let count = |kind| account.listing(kind).len();
            Ok(control_json(&json!({
                "image": count(MediaKind::Image),
                "video": count(MediaKind::Video),
                "voice": count(MediaKind::Voice),
                "news": count(MediaKind::News),
                "requests": account.counts(),
            })))
        }
        ("GET", "requests") => Ok(control_json(&json!(account.log()))),
        ("POST", "assets") => {
            let new: NewAsset = parse_control(body)?;
            let id = super::seed::add_generated(&mut account, new.kind, new.size, new.name);
            Ok(control_json(&json!({"media_id": id})))
        }
        ("POST", "assets/change") => {
            let target: MediaRef = parse_control(body)?;
            if account.change(&target.media_id) {
                Ok(done())
            } else {
                Err(format!("no material {:?}", target.media_id))
            }
        }
        ("POST", "assets/delete") => {
            let target: MediaRef = parse_control(body)?;
            if account.delete(&target.media_id) {
                Ok(done())
            } else {
                Err(format!("no material {:?}", target.media_id))
            }
        }
        ("POST", "tokens/invalidate") => {
            account.invalidate_tokens();
            Ok(done())
        }
        ("POST", "tokens/expire") => {
            account.expire_tokens();
            Ok(done())
        }
        ("POST", "faults") => {
            let rule: FaultRule = parse_control(body)?;
            if rule.endpoint != "*" && endpoint_named(&rule.endpoint).is_none() {
                return Err(format!("unknown endpoint {:?}", rule.endpoint));
            }
            account.inject(rule);
            Ok(done())
        }
        ("POST", "hooks") => {
            let hook: ListingHook = parse_control(body)?;
            account.add_hook(hook);
            Ok(done())
        }
        ("POST", "quota") => {
            let change: QuotaChange = parse_control(body)?;
            let endpoint = endpoint_named(&change.endpoint)
                .ok_or_else(|| format!("unknown endpoint {:?}", change.endpoint))?;
            if let Some(limit) = change.daily_limit {
                account.set_daily_limit(endpoint.name(), limit);
            }
            if let Some(limit) = change.minute_limit {
                account.set_minute_limit(endpoint.name(), limit);
            }
            if let Some(used) = change.used {
                account.set_used(endpoint.name(), used);
            }
            Ok(done())
        }
        _ => Err(format!("no control {method} /__sim/{path}")),
    }
}
