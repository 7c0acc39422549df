//! `notify:` in the node configuration: where notifications go, in what format, signed with
//! what, and which events.
use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::event::NAMES;
use crate::daemon::webhook::Secret;

/// How long one delivery may take (connect, send, answer) unless `timeout` says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `timeout`: an attempt in flight holds its receiver's queue that long.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// One receiver as the configuration file writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawReceiver {
    url: String,
    #[serde(default)]
    format: Format,
    secret_file: Option<PathBuf>,
    events: Option<Vec<String>>,
    timeout: Option<String>,
}

/// The body a receiver takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The event as JSON, with `format_version`.
    #[default]
    Generic,
    /// A message Slack's incoming webhooks (and Mattermost, Rocket.Chat) show.
    Slack,
}

/// One receiver, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Receiver {
    pub url: String,
    pub format: Format,
    /// Signs each body (`X-Reconciler-Signature-256`).
    pub secret: Option<Secret>,
    /// The events it gets: every one unless `events` lists some.
    pub events: BTreeSet<&'static str>,
    pub timeout: Duration,
}

/// A field of a receiver that is wrong: its place under `notify/N` and why.
pub struct Problem {
    pub field: &'static str,
    pub message: String,
}

impl RawReceiver {
    /// The receiver this says; each problem with the field it is in. `duration` reads a
    /// duration as the rest of the configuration does.
    pub fn check(
        self,
        duration: impl Fn(&str) -> Option<Duration>,
    ) -> Result<Receiver, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut problem = |field, message: String| problems.push(Problem { field, message });
        let secret = self.secret_file.and_then(|path| {
            Secret::read(&path).map_err(|e| problem("secretFile", e.to_string())).ok()
        });
        // The schema lists the names (`NAMES`, a unit test keeps the two the same).
        let events = match self.events {
            None => NAMES.into_iter().collect(),
            Some(listed) => {
                NAMES.into_iter().filter(|name| listed.iter().any(|l| l == name)).collect()
            }
        };
        let timeout = match self.timeout {
            None => DEFAULT_TIMEOUT,
            Some(text) => duration(&text).filter(|t| *t <= MAX_TIMEOUT).unwrap_or_else(|| {
                problem("timeout", format!("`{text}` is not a duration from 100ms to 60s"));
                DEFAULT_TIMEOUT
            }),
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Receiver { url: self.url, format: self.format, secret, events, timeout })
    }
}
