//! Webhook notifications: a run failed, the backup is stale, the backup recovered.
//! Messages are built from run reports, which never hold a secret or token.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Notify, NotifyFormat};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A run did not finish ok.
    Failure,
    /// The last ok run is older than health.max_age.
    Stale,
    /// A run finished ok after failures.
    Recovery,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Self::Failure => "failure",
            Self::Stale => "stale",
            Self::Recovery => "recovery",
        }
    }
}

/// Posts events to the configured webhook.
pub struct Notifier {
    settings: Notify,
    http: Option<reqwest::Client>,
}

impl Notifier {
    /// A notifier for `settings`.
    pub fn new(settings: &Notify) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .ok();
        Self {
            settings: settings.clone(),
            http,
        }
    }

    /// The JSON body for an event in the configured format.
    pub fn body(&self, event: Event, text: &str) -> Value {
        let content = format!("mpmirror {}: {text}", event.as_str());
        match self.settings.format {
            NotifyFormat::Json => json!({"event": event.as_str(), "text": text}),
            NotifyFormat::Wecom | NotifyFormat::Dingtalk => {
                json!({"msgtype": "text", "text": {"content": content}})
            }
            NotifyFormat::Feishu => json!({"msg_type": "text", "content": {"text": content}}),
        }
    }

    /// Posts an event; failures are logged, never fatal.
    pub async fn send(&self, event: Event, text: &str) {
        let Some(http) = &self.http else { return };
        let body = self.body(event, text);
        match http
            .post(self.settings.webhook.expose())
            .json(&body)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {
                tracing::info!(event = event.as_str(), "notification sent");
            }
            Ok(response) => {
                tracing::warn!(
                    status = response.status().as_u16(),
                    "webhook refused the notification"
                );
            }
            Err(err) => {
                tracing::warn!(error = %err.without_url(), "cannot post the notification");
            }
        }
    }
}
