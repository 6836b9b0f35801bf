//! File bodies: told apart from errors by their bytes, never by their headers.
//!
//! The rule, from the API facts: a body that starts with `{` and parses as JSON with a
//! non-zero errcode is an error; an HTML page where a file was expected is an error;
//! anything else is the file.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::error::{WechatError, transport};

/// Bodies starting with `{` are buffered up to this size to see if they are errors.
const JSON_SNIFF_LIMIT: usize = 64 * 1024;

/// A file body being received; its first bytes were already checked.
pub struct FileDownload {
    endpoint: String,
    response: reqwest::Response,
    prefix: Option<Bytes>,
    received: u64,
    /// Length announced by Content-Length, if any.
    pub content_length: Option<u64>,
    /// File name from Content-Disposition, if any.
    pub filename: Option<String>,
}

/// What a download URL turned out to hold.
pub enum Downloaded {
    /// A file.
    File(Box<FileDownload>),
    /// An HTML page where a file was expected, with its title if it has one.
    WebPage {
        /// The page's `<title>`.
        title: Option<String>,
    },
}

impl FileDownload {
    /// The next chunk, `None` at the end; errors if the body stops short.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, WechatError> {
        if let Some(prefix) = self.prefix.take() {
            self.received += prefix.len() as u64;
            return Ok(Some(prefix));
        }
        match self.response.chunk().await {
            Ok(Some(chunk)) => {
                self.received += chunk.len() as u64;
                Ok(Some(chunk))
            }
            Ok(None) => match self.content_length {
                Some(expected) if expected != self.received => Err(WechatError::Body {
                    endpoint: self.endpoint.clone(),
                    reason: format!(
                        "body ended after {} of {expected} bytes announced",
                        self.received
                    ),
                }),
                _ => Ok(None),
            },
            Err(err) => Err(transport(&self.endpoint, err)),
        }
    }
}

/// Reads the start of `response` and decides what it is.
pub(crate) async fn sniff(
    endpoint: &str,
    mut response: reqwest::Response,
) -> Result<Downloaded, WechatError> {
    let status = response.status();
    if !status.is_success() {
        return Err(WechatError::Http {
            endpoint: endpoint.to_owned(),
            status: status.as_u16(),
        });
    }
    let headers = response.headers();
    let filename =
        header_text(headers, reqwest::header::CONTENT_DISPOSITION).and_then(|d| filename_of(&d));
    let content_length = response.content_length();
    let mut prefix = BytesMut::new();
    // Enough bytes to see past leading whitespace and recognise `{` or `<html`.
    while prefix.len() < 512 {
        match response.chunk().await {
            Ok(Some(chunk)) => prefix.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(err) => return Err(transport(endpoint, err)),
        }
    }
    let start = first_non_space(&prefix);
    if start == Some(b'{') {
        while prefix.len() <= JSON_SNIFF_LIMIT {
            match response.chunk().await {
                Ok(Some(chunk)) => prefix.extend_from_slice(&chunk),
                Ok(None) => {
                    if let Some(error) = error_json(endpoint, &prefix) {
                        return Err(error);
                    }
                    break;
                }
                Err(err) => return Err(transport(endpoint, err)),
            }
        }
    }
    if start == Some(b'<') && looks_like_html(&prefix) {
        return Ok(Downloaded::WebPage {
            title: html_title(&prefix),
        });
    }
    Ok(Downloaded::File(Box::new(FileDownload {
        endpoint: endpoint.to_owned(),
        response,
        prefix: Some(prefix.freeze()),
        received: 0,
        content_length,
        filename,
    })))
}

fn header_text(
    headers: &reqwest::header::HeaderMap,
    name: reqwest::header::HeaderName,
) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

fn first_non_space(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn error_json(endpoint: &str, body: &[u8]) -> Option<WechatError> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let errcode = value.get("errcode")?.as_i64()?;
    if errcode == 0 {
        return None;
    }
    Some(WechatError::from_body(
        static_name(endpoint),
        errcode,
        &value,
    ))
}

/// Endpoint names of API errors are static; downloads report as `download`.
fn static_name(endpoint: &str) -> &'static str {
    match endpoint {
        "get_material" => "get_material",
        _ => "download",
    }
}

fn looks_like_html(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).to_ascii_lowercase();
    let head = head.trim_start();
    head.starts_with("<!doctype html") || head.starts_with("<html") || head.contains("<body")
}

fn html_title(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let lower = text.to_ascii_lowercase();
    let start = lower.find("<title>")? + "<title>".len();
    let end = start + lower[start..].find("</title>")?;
    let title = text.get(start..end)?.trim();
    (!title.is_empty()).then(|| title.to_owned())
}

/// The file name in a Content-Disposition header, if any.
fn filename_of(disposition: &str) -> Option<String> {
    let (_, rest) = disposition.split_once("filename=")?;
    let name = rest.split(';').next()?.trim().trim_matches('"');
    (!name.is_empty()).then(|| name.to_owned())
}
