//! mpmirror: a complete, verifiable backup of a WeChat Official Account's permanent
//! materials (images, videos, voice clips and articles).
//!
//! The modules each own one concern and depend one way: `sync` joins the API client
//! (`wechat`), the SQLite catalog (`catalog`) and the blob store (`store`); `daemon`
//! schedules syncs; `cli` is the command tree. `sim` simulates the API for tests and
//! the demo and shares nothing with the client.

pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod secret;
pub mod sim;
pub mod store;
pub mod sync;
pub mod wechat;

/// An error and its causes on one line, for messages at the edges.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
