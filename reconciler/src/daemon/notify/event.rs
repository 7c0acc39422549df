//! What a notification says: an [`Event`] (the same for every receiver), and the body each
//! format sends of it (`generic`: the event as JSON; `slack`: a message).
use std::net::SocketAddr;

use serde::Serialize;

/// The version of the generic body's shape: a receiver can tell a later, changed one.
pub const FORMAT_VERSION: u32 = 1;
/// Errors a `rejected` event lists; the rest are counted (`errors_total`).
pub const ERRORS_LISTED: usize = 5;

/// One thing that happened on this node, as receivers get it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub format_version: u32,
    /// Random, the same on every attempt to deliver it: a receiver drops repeats by it.
    pub id: String,
    /// When it happened (RFC 3339, UTC).
    pub time: String,
    pub node: String,
    pub severity: Severity,
    /// One line for people.
    pub summary: String,
    #[serde(flatten)]
    pub what: What,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

/// Why a backend is out, or was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutReason {
    /// Its health check fails (passes again).
    Health,
    /// Outlier detection ejected it (its ejection is over).
    Ejection,
}

/// What happened, with its own fields; `event` names it (the names `notify[].events` lists).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    /// A new revision is applied.
    Applied { revision: Option<String>, previous_revision: Option<String>, entry_changes: usize },
    /// A fetched revision is refused; the data plane stays at the last good one.
    Rejected {
        revision: Option<String>,
        error: String,
        /// The first `ERRORS_LISTED` validation errors, each with file, line and field.
        errors: Vec<String>,
        errors_total: usize,
    },
    /// The live maps differ from the applied revision (`drift: report`), first seen.
    DriftFound { revision: Option<String>, entries: usize },
    /// The live maps differed from the applied revision and are set back to it.
    DriftHealed { revision: Option<String>, entries: usize },
    /// A backend is taken out of services.
    BackendOut {
        reason: OutReason,
        backends: Vec<SocketAddr>,
        services: Vec<String>,
        /// Why its health check failed.
        error: Option<String>,
        /// How long an ejection lasts.
        ejected_seconds: Option<u64>,
    },
    /// A backend is back in services.
    BackendBack { reason: OutReason, backends: Vec<SocketAddr>, services: Vec<String> },
    /// Services keep every backend although they are out (`health`, `ejections`) or their
    /// fallback would not fit (`capacity`): fail open.
    FailingOpen { reason: &'static str, services: Vec<String> },
    /// A canary rollout is aborted; the revision before is back.
    RolloutAborted { revision: String, back_to: Option<String>, reason: String },
}

/// Every event's name, as `notify[].events` takes them.
pub const NAMES: [&str; 8] = [
    "applied",
    "rejected",
    "drift_found",
    "drift_healed",
    "backend_out",
    "backend_back",
    "failing_open",
    "rollout_aborted",
];

impl What {
    /// The event's name (one of [`NAMES`]).
    pub fn name(&self) -> &'static str {
        let index = match self {
            What::Applied { .. } => 0,
            What::Rejected { .. } => 1,
            What::DriftFound { .. } => 2,
            What::DriftHealed { .. } => 3,
            What::BackendOut { .. } => 4,
            What::BackendBack { .. } => 5,
            What::FailingOpen { .. } => 6,
            What::RolloutAborted { .. } => 7,
        };
        NAMES[index]
    }

    pub fn severity(&self) -> Severity {
        match self {
            What::Applied { .. } | What::BackendBack { .. } => Severity::Info,
            What::DriftFound { .. } | What::DriftHealed { .. } | What::BackendOut { .. } => {
                Severity::Warning
            }
            What::Rejected { .. } | What::FailingOpen { .. } | What::RolloutAborted { .. } => {
                Severity::Error
            }
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        match self {
            What::Applied { revision, entry_changes, .. } => {
                format!(
                    "applied revision {} ({entry_changes} map entries changed)",
                    short(revision)
                )
            }
            What::Rejected { revision, error, .. } => format!(
                "rejected revision {}: {error}; the data plane stays at the last good revision",
                short(revision)
            ),
            What::DriftFound { revision, entries } => format!(
                "drift: {entries} live map entries differ from revision {}",
                short(revision)
            ),
            What::DriftHealed { revision, entries } => format!(
                "drift healed: {entries} live map entries set back to revision {}",
                short(revision)
            ),
            What::BackendOut { reason, backends, services, error, ejected_seconds } => {
                let why = match (reason, error, ejected_seconds) {
                    (OutReason::Health, Some(error), _) => format!("health check failed: {error}"),
                    (OutReason::Ejection, _, Some(seconds)) => format!("ejected for {seconds}s"),
                    (OutReason::Health, ..) => "health check failed".to_owned(),
                    (OutReason::Ejection, ..) => "ejected".to_owned(),
                };
                format!("{} taken out of {} ({why})", listed(backends), services.join(", "))
            }
            What::BackendBack { reason, backends, services } => {
                let why = match reason {
                    OutReason::Health => "its health check passes again",
                    OutReason::Ejection => "its ejection is over",
                };
                format!("{} back in {} ({why})", listed(backends), services.join(", "))
            }
            What::FailingOpen { reason, services } => {
                let why = match *reason {
                    "capacity" => "every backend is down and the fallback would not fit the maps",
                    "ejections" => "more backends fail than outlier detection may eject",
                    _ => "every backend fails its health check",
                };
                format!("{} failing open ({why}): keeping every backend", services.join(", "))
            }
            What::RolloutAborted { revision, back_to, reason } => format!(
                "rollout of revision {} aborted ({reason}); back to revision {}",
                short(&Some(revision.clone())),
                short(back_to)
            ),
        }
    }
}

impl Event {
    /// `what`, on `node`, now.
    pub fn new(node: &str, what: What) -> Event {
        Event {
            format_version: FORMAT_VERSION,
            id: format!("{:032x}", fastrand::u128(..)),
            time: crate::clock::now_rfc3339(),
            node: node.to_owned(),
            severity: what.severity(),
            summary: what.summary(),
            what,
        }
    }

    /// The `generic` body: the event as JSON.
    pub fn generic_body(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The `slack` body: a message (`text`, which Slack's incoming webhooks, Mattermost and
    /// Rocket.Chat take), with a rejected revision's errors below its line.
    pub fn slack_body(&self) -> Vec<u8> {
        let mark = match self.severity {
            Severity::Info => ":white_check_mark:",
            Severity::Warning => ":warning:",
            Severity::Error => ":x:",
        };
        let mut text = format!("{mark} *{}* reconciler: {}", self.node, self.summary);
        if let What::Rejected { errors, errors_total, .. } = &self.what {
            for error in errors {
                text.push_str(&format!("\n• `{error}`"));
            }
            if *errors_total > errors.len() {
                text.push_str(&format!("\n… and {} more", errors_total - errors.len()));
            }
        }
        serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default()
    }
}

/// A revision as people read it: its first 12 characters, or `-`.
fn short(revision: &Option<String>) -> &str {
    revision.as_deref().map_or("-", |r| r.get(..12).unwrap_or(r))
}

fn listed(backends: &[SocketAddr]) -> String {
    let names: Vec<String> = backends.iter().map(ToString::to_string).collect();
    format!("backend {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected() -> What {
        What::Rejected {
            revision: Some("0123456789abcdef0123".into()),
            error: "2 invalid definition(s)".into(),
            errors: vec!["services/web.yaml:3:7: spec.ports: required".into()],
            errors_total: 2,
        }
    }

    #[test]
    fn the_generic_body_is_the_event_with_its_name_and_fields_at_the_top() {
        let event = Event::new("node-a", rejected());
        let body: serde_json::Value = serde_json::from_slice(&event.generic_body()).unwrap();
        assert_eq!(body["format_version"], 1);
        assert_eq!(body["event"], "rejected");
        assert_eq!(body["severity"], "error");
        assert_eq!(body["node"], "node-a");
        assert_eq!(body["revision"], "0123456789abcdef0123");
        assert_eq!(body["errors_total"], 2);
        assert_eq!(body["id"].as_str().unwrap().len(), 32);
        let summary = body["summary"].as_str().unwrap();
        assert!(summary.starts_with("rejected revision 0123456789ab: 2 invalid"), "{summary}");
    }

    #[test]
    fn every_event_has_its_listed_name() {
        let what = [
            What::Applied { revision: None, previous_revision: None, entry_changes: 1 },
            rejected(),
            What::DriftFound { revision: None, entries: 1 },
            What::DriftHealed { revision: None, entries: 1 },
            What::BackendOut {
                reason: OutReason::Ejection,
                backends: vec![],
                services: vec![],
                error: None,
                ejected_seconds: Some(30),
            },
            What::BackendBack { reason: OutReason::Health, backends: vec![], services: vec![] },
            What::FailingOpen { reason: "capacity", services: vec![] },
            What::RolloutAborted { revision: "r".into(), back_to: None, reason: "x".into() },
        ];
        for (what, name) in what.iter().zip(NAMES) {
            let body = serde_json::to_value(Event::new("n", what.clone())).unwrap();
            assert_eq!((what.name(), body["event"].as_str()), (name, Some(name)));
        }
    }

    #[test]
    fn the_configuration_schema_lists_every_event_by_its_name() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../../schema/daemon-config.schema.json"))
                .unwrap();
        let listed = &schema["properties"]["notify"]["items"]["properties"]["events"]["items"];
        assert_eq!(listed["enum"], serde_json::json!(NAMES));
    }

    #[test]
    fn a_slack_message_lists_the_first_errors_and_counts_the_rest() {
        let body = Event::new("node-a", rejected()).slack_body();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with(":x: *node-a* reconciler: rejected revision"), "{text}");
        assert!(text.contains("\n• `services/web.yaml:3:7: spec.ports: required`"), "{text}");
        assert!(text.ends_with("\n… and 1 more"), "{text}");
    }
}
