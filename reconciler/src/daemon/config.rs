//! The daemon's configuration: a YAML file owned by the node, never read from the repository.
//! Checked against `schema/daemon-config.schema.json`, then for what a schema cannot say
//! (durations, CIDR ranges, the listen address); every error names file, line and field.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use super::{notify::settings as notify, webhook::Secret};
use crate::fleet::gate::Gate;
use reconciler_core::{
    capacity::Capacity,
    load,
    selector::Node,
    source::{default_cache_dir, FetchTimeouts, GitSpec, SourceSpec},
    state::DEFAULT_PIN_PATH,
    validate::{at, parse_range, Diagnostic, Policy, Schema},
    verify::{AllowedSigners, Keyring, Mode, Verify},
};

static CONFIG_SCHEMA: Schema = Schema::new(
    "schema/daemon-config.schema.json",
    include_str!("../../../schema/daemon-config.schema.json"),
);

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The shortest interval or timeout: a shorter interval would have the daemon fetch in a
/// busy loop, a shorter timeout end every fetch.
const MIN_DURATION: Duration = Duration::from_millis(100);
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9469";

/// What to do about live maps that differ from the applied commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// Log, count and repair it.
    #[default]
    Heal,
    /// Log and count it only.
    Report,
}

/// The configuration, with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub source: GitSpec,
    pub interval: Duration,
    pub cgroup: Option<PathBuf>,
    pub pin_path: PathBuf,
    /// `dataplane.exclude`: cgroup subtrees whose processes are never translated.
    pub exclude: Vec<PathBuf>,
    /// `dataplane.capacity`: the maps' capacity at install (`None`: the installed one, or
    /// the default).
    pub capacity: Option<Capacity>,
    /// The rules from the configuration; the node's own addresses are added at each run.
    pub policy: Policy,
    /// `policy.allowLocalVIPs`: addresses of this node that may nevertheless be VIPs.
    pub allow_local_vips: Vec<IpAddr>,
    /// `policy.allowDestroyAll`: a revision that defines no service may destroy every one.
    pub allow_destroy_all: bool,
    pub listen: SocketAddr,
    pub drift: DriftMode,
    /// `webhook.secretFile`'s secret: `POST /reconcile` must be signed with it.
    pub webhook_secret: Option<Secret>,
    /// `metrics.perBackend`: `/metrics` has series per backend (at 260 000 backends, tens of
    /// MB a scrape); without, per service and node only.
    pub metrics_per_backend: bool,
    /// `notify`: where notifications go.
    pub notify: Vec<notify::Receiver>,
    /// `node`: this node's name (default: the host name) and labels, which services'
    /// `nodeSelector` select.
    pub node: Node,
    /// `rollout`: this node's wave, and the gate a later wave waits at.
    pub rollout: Rollout,
}

/// `rollout`: a node of wave 1 applies a new revision at once; one of a later wave when its
/// `gate` opens (`crate::fleet::gate`).
#[derive(Clone, Debug, PartialEq)]
pub struct Rollout {
    pub wave: u32,
    pub gate: Option<Gate>,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout { wave: 1, gate: None }
    }
}

impl Rollout {
    /// The gate a new revision waits at here: none on wave 1.
    pub fn waits(&self) -> Option<&Gate> {
        self.gate.as_ref().filter(|_| self.wave > 1)
    }
}

impl Config {
    pub fn source_spec(&self) -> SourceSpec {
        SourceSpec::Git(self.source.clone())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    source: RawSource,
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    policy: RawPolicy,
    listen: Option<String>,
    #[serde(default)]
    drift: DriftMode,
    webhook: Option<RawWebhook>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    node: RawNode,
    #[serde(default)]
    rollout: RawRollout,
    #[serde(default)]
    notify: Vec<notify::RawReceiver>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    wave: Option<u32>,
    gate: Option<RawGate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGate {
    prometheus: String,
    soak_seconds: Option<u64>,
    min_nodes: Option<u32>,
    max_ejected_backends: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(rename = "zoneLabel")]
    zone_label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMetrics {
    #[serde(default = "yes")]
    per_backend: bool,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics { per_backend: true }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWebhook {
    secret_file: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSource {
    url: String,
    #[serde(rename = "ref")]
    reference: Option<String>,
    path: Option<PathBuf>,
    interval: Option<String>,
    cache_dir: Option<PathBuf>,
    ssh_key: Option<PathBuf>,
    verify: Option<RawVerify>,
    timeout: Option<String>,
    connect_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawVerify {
    #[serde(default)]
    mode: Mode,
    allowed_signers: Option<PathBuf>,
    keyring: Option<PathBuf>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDataplane {
    cgroup: Option<PathBuf>,
    pin_path: Option<PathBuf>,
    #[serde(default)]
    exclude: Vec<PathBuf>,
    capacity: Option<Capacity>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(rename = "allowedVIPs")]
    allowed_vips: Option<Vec<String>>,
    #[serde(rename = "allowLocalVIPs", default)]
    allow_local_vips: Vec<String>,
    #[serde(rename = "allowDestroyAll", default)]
    allow_destroy_all: bool,
    #[serde(rename = "allowLocalHealthChecks", default)]
    allow_local_health_checks: Vec<String>,
}

/// The units a duration may have: Go's (and so Flux's) down to milliseconds, as the
/// schema's `$defs/duration` says.
const DURATION_UNITS: [&str; 4] = ["ms", "s", "m", "h"];

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h30m` or Flux's `10m0s`: whole numbers,
/// each followed by a unit of `DURATION_UNITS`, with no spaces.
pub fn parse_duration(text: &str) -> Option<Duration> {
    // humantime does the sums and refuses an empty text, a number without a unit and an
    // overflow; but it also takes units and spaces the schema refuses (`10d`, `1 hour`), so
    // the text's units are checked first, for the two to accept the same durations.
    let mut units = text.split(|c: char| c.is_ascii_digit()).filter(|unit| !unit.is_empty());
    if !units.all(|unit| DURATION_UNITS.contains(&unit)) {
        return None;
    }
    humantime::parse_duration(text).ok()
}

/// Reads and checks the configuration in `text` (from `file`).
pub fn parse(file: &str, text: &str) -> Result<Config, Vec<Diagnostic>> {
    let document = one_document(file, text)?;
    let raw = raw_config(file, &document)?;
    let mut problems = Problems { file, document: &document, found: Vec::new() };
    let config = resolve(raw, &mut problems);
    if problems.found.is_empty() {
        Ok(config)
    } else {
        Err(problems.found)
    }
}

/// The one YAML document in `text`.
fn one_document(file: &str, text: &str) -> Result<load::Document, Vec<Diagnostic>> {
    let documents = load::parse(text).map_err(|e| vec![at(file, e.position, "", e.message)])?;
    let [document] = <[_; 1]>::try_from(documents).map_err(|documents| {
        let message = format!("expected one YAML document, found {}", documents.len());
        vec![at(file, load::Position { line: 1, column: 1 }, "", message)]
    })?;
    Ok(document)
}

/// `document` checked against the schema, then read into its shape.
fn raw_config(file: &str, document: &load::Document) -> Result<RawConfig, Vec<Diagnostic>> {
    let problems = CONFIG_SCHEMA.check(file, document).map_err(|d| vec![d])?;
    if !problems.is_empty() {
        return Err(problems);
    }
    serde_json::from_value(document.value.clone())
        .map_err(|e| vec![at(file, document.value_position(""), "", e.to_string())])
}

/// What a schema cannot say is wrong with a configuration, each at its place in the file.
struct Problems<'a> {
    file: &'a str,
    document: &'a load::Document,
    found: Vec<Diagnostic>,
}

impl Problems<'_> {
    /// `result`'s value; or, noting its error at `pointer`, `None`.
    fn check<T>(&mut self, pointer: &str, result: Result<T, impl fmt::Display>) -> Option<T> {
        result
            .map_err(|message| {
                let place = self.document.value_position(pointer);
                self.found.push(at(self.file, place, pointer, message.to_string()));
            })
            .ok()
    }
}

/// The configuration `raw` says, with every default filled in. A field with an error holds a
/// stand-in: a configuration with any `problems` is refused whole.
fn resolve(raw: RawConfig, problems: &mut Problems) -> Config {
    // Checked in a fixed order, the order the errors are listed in.
    let interval =
        duration(raw.source.interval.as_deref(), "/source/interval", DEFAULT_INTERVAL, problems);
    let defaults = FetchTimeouts::default();
    let timeouts = FetchTimeouts {
        total: duration(raw.source.timeout.as_deref(), "/source/timeout", defaults.total, problems),
        connect: duration(
            raw.source.connect_timeout.as_deref(),
            "/source/connectTimeout",
            defaults.connect,
            problems,
        ),
    };
    let listen = listen(raw.listen.as_deref(), problems);
    let capacity = raw
        .dataplane
        .capacity
        .and_then(|c| problems.check("/dataplane/capacity", c.check().map(|()| c)));
    let allowed_vips = raw
        .policy
        .allowed_vips
        .map(|texts| parse_each(&texts, "/policy/allowedVIPs", parse_range, problems));
    let allow_local_vips =
        parse_each(&raw.policy.allow_local_vips, "/policy/allowLocalVIPs", local_vip, problems);
    let allow_local_health_checks = parse_each(
        &raw.policy.allow_local_health_checks,
        "/policy/allowLocalHealthChecks",
        parse_range,
        problems,
    );
    let verify = raw.source.verify.map(|verify| read_keys(verify, problems));
    let node = node(raw.node, problems);
    let rollout = rollout(raw.rollout, problems);
    let webhook_secret = raw.webhook.and_then(|webhook| {
        problems.check("/webhook/secretFile", Secret::read(&webhook.secret_file))
    });
    let notify = receivers(raw.notify, problems);
    Config {
        source: GitSpec {
            url: raw.source.url,
            reference: raw.source.reference,
            subdir: raw.source.path,
            cache_dir: raw.source.cache_dir.unwrap_or_else(default_cache_dir),
            ssh_key: raw.source.ssh_key,
            verify,
            timeouts,
        },
        interval,
        cgroup: raw.dataplane.cgroup,
        exclude: raw.dataplane.exclude,
        capacity,
        pin_path: raw.dataplane.pin_path.unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH)),
        policy: Policy { allowed_vips, allow_local_health_checks, ..Policy::default() },
        allow_local_vips,
        allow_destroy_all: raw.policy.allow_destroy_all,
        listen,
        drift: raw.drift,
        webhook_secret,
        metrics_per_backend: raw.metrics.per_backend,
        node,
        rollout,
        notify,
    }
}

/// `notify`: each receiver, checked; a problem is noted at its field.
fn receivers(raw: Vec<notify::RawReceiver>, problems: &mut Problems) -> Vec<notify::Receiver> {
    let at_least = |text: &str| parse_duration(text).filter(|d| *d >= MIN_DURATION);
    let mut receivers = Vec::new();
    for (i, receiver) in raw.into_iter().enumerate() {
        match receiver.check(at_least) {
            Ok(receiver) => receivers.push(receiver),
            Err(found) => {
                for problem in found {
                    let pointer = format!("/notify/{i}/{}", problem.field);
                    problems.check::<()>(&pointer, Err(problem.message));
                }
            }
        }
    }
    receivers
}

/// `rollout`, with its defaults (wave 1; soak 600 s, one node, two ejected backends).
fn rollout(raw: RawRollout, problems: &mut Problems) -> Rollout {
    let wave = raw.wave.unwrap_or(1);
    let gate = raw.gate.map(|gate| Gate {
        prometheus: gate.prometheus,
        soak: Duration::from_secs(gate.soak_seconds.unwrap_or(600)),
        min_nodes: gate.min_nodes.unwrap_or(1),
        max_ejected_backends: gate.max_ejected_backends.unwrap_or(2),
    });
    if wave > 1 && gate.is_none() {
        let needs = format!(
            "a node of wave {wave} needs rollout.gate.prometheus: without it, it cannot know \
             when the earlier waves ran a revision"
        );
        problems.check::<()>("/rollout/wave", Err(needs));
    }
    Rollout { wave, gate }
}

/// `node`, with `${VAR}` in its name and label values taken from the environment (a
/// DaemonSet's downward API sets `NODE_NAME`); the name defaults to the host name.
fn node(raw: RawNode, problems: &mut Problems) -> Node {
    let name = match raw.name {
        Some(name) => problems.check("/node/name", expand(&name)).unwrap_or(name),
        None => reconciler_core::node::host_name(),
    };
    let labels: BTreeMap<String, String> = raw
        .labels
        .into_iter()
        .map(|(key, value)| {
            let pointer = format!("/node/labels/{key}");
            let expanded = problems.check(&pointer, expand(&value)).unwrap_or(value);
            (key, expanded)
        })
        .collect();
    let zone = labels.get(raw.zone_label.as_deref().unwrap_or("zone")).cloned();
    Node { name, labels, zone }
}

/// `text` with each `${VAR}` replaced by the environment variable's value.
fn expand(text: &str) -> Result<String, FieldError> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| FieldError::Unclosed(text.to_owned()))?;
        let var = &after[..end];
        let value = std::env::var(var).map_err(|_| FieldError::Unset(var.to_owned()))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The duration at `pointer`, if it is given: at least 100ms; else `default`.
fn duration(
    text: Option<&str>,
    pointer: &str,
    default: Duration,
    problems: &mut Problems,
) -> Duration {
    let Some(text) = text else { return default };
    let duration = parse_duration(text)
        .filter(|duration| *duration >= MIN_DURATION)
        .ok_or_else(|| FieldError::Duration(text.to_owned()));
    problems.check(pointer, duration).unwrap_or(default)
}

/// `listen`: an IP address and port.
fn listen(text: Option<&str>, problems: &mut Problems) -> SocketAddr {
    let text = text.unwrap_or(DEFAULT_LISTEN);
    let listen = text.parse::<SocketAddr>().map_err(|_| FieldError::Listen(text.to_owned()));
    problems.check("/listen", listen).unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9469)))
}

/// An address of `policy.allowLocalVIPs`.
fn local_vip(text: &str) -> Result<IpAddr, FieldError> {
    text.parse().map_err(|_| FieldError::LocalVip(text.to_owned()))
}

/// What is wrong with a field that the schema lets through.
#[derive(Debug, thiserror::Error)]
enum FieldError {
    #[error("`{0}` is not a duration of at least 100ms")]
    Duration(String),
    #[error("`{0}` is not HOST:PORT with an IP address")]
    Listen(String),
    #[error("`{0}` is not an IPv4 or IPv6 address")]
    LocalVip(String),
    #[error("the environment variable {0} is not set")]
    Unset(String),
    #[error("`{0}` has a `${{` without its `}}`")]
    Unclosed(String),
}

/// Each of the list `texts` (at `pointer`) parsed; the ones that do not parse are problems.
fn parse_each<T, E: fmt::Display>(
    texts: &[String],
    pointer: &str,
    parse: impl Fn(&str) -> Result<T, E>,
    problems: &mut Problems,
) -> Vec<T> {
    texts
        .iter()
        .enumerate()
        .filter_map(|(i, text)| problems.check(&format!("{pointer}/{i}"), parse(text)))
        .collect()
}

/// `source.verify`, with the keys of the files it names.
fn read_keys(raw: RawVerify, problems: &mut Problems) -> Verify {
    let signers = raw.allowed_signers.and_then(|file| {
        problems.check("/source/verify/allowedSigners", AllowedSigners::read(&file))
    });
    let keyring =
        raw.keyring.and_then(|file| problems.check("/source/verify/keyring", Keyring::read(&file)));
    Verify { mode: raw.mode, signers, keyring }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
source:
  url: git://127.0.0.1/services.git
  ref: main
  path: services/
  interval: 30s
dataplane:
  cgroup: /sys/fs/cgroup
  pinPath: /sys/fs/bpf/reconciler
policy:
  allowedVIPs: [10.96.0.0/12, "fd00:96::/64"]
  allowLocalVIPs: [192.0.2.1]
  allowDestroyAll: false
listen: 127.0.0.1:9469
drift: heal
"#;

    fn errors(text: &str) -> Vec<String> {
        parse("node.yaml", text).unwrap_err().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_documented_example_parses() {
        let config = parse("node.yaml", FULL).unwrap();
        assert_eq!(config.source.reference.as_deref(), Some("main"));
        assert_eq!(config.interval, Duration::from_secs(30));
        assert_eq!(config.policy.allowed_vips.as_ref().map(Vec::len), Some(2));
        assert_eq!(config.allow_local_vips, ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert!(!config.allow_destroy_all);
        assert_eq!(config.drift, DriftMode::Heal);
    }

    #[test]
    fn only_the_url_is_required() {
        let config = parse("node.yaml", "source: {url: /srv/services}\n").unwrap();
        assert_eq!(config.interval, DEFAULT_INTERVAL);
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
        assert_eq!(config.policy.allowed_vips, None);
        assert_eq!(config.cgroup, None);
        assert!(config.exclude.is_empty());
        let text = "source: {url: /srv/services}\ndataplane: {exclude: [/sys/fs/cgroup/mesh]}\n";
        let config = parse("node.yaml", text).unwrap();
        assert_eq!(config.exclude, [PathBuf::from("/sys/fs/cgroup/mesh")]);
        assert_eq!(config.capacity, None);
    }

    #[test]
    fn fetch_timeouts_default_to_60s_and_10s_and_are_checked_at_their_place() {
        let config = parse("node.yaml", "source: {url: /srv/services}\n").unwrap();
        assert_eq!(config.source.timeouts, FetchTimeouts::default());
        assert_eq!(
            (config.source.timeouts.total, config.source.timeouts.connect),
            (Duration::from_secs(60), Duration::from_secs(10))
        );
        let text = "source:\n  url: /srv/services\n  timeout: 2m\n  connectTimeout: 500ms\n";
        let timeouts = parse("node.yaml", text).unwrap().source.timeouts;
        assert_eq!(timeouts.total, Duration::from_secs(120));
        assert_eq!(timeouts.connect, Duration::from_millis(500));
        let text = "source:\n  url: /srv/services\n  timeout: 10ms\n";
        assert_eq!(
            errors(text),
            ["node.yaml:3:12: source.timeout: `10ms` is not a duration of at least 100ms"]
        );
    }

    #[test]
    fn a_capacity_keeps_the_defaults_of_the_figures_it_leaves_out() {
        let text = "source: {url: /srv/services}\ndataplane: {capacity: {services: 100}}\n";
        let config = parse("node.yaml", text).unwrap();
        let expected = Capacity { services: 100, ..reconciler_core::capacity::DEFAULT };
        assert_eq!(config.capacity, Some(expected));
        let text = "source: {url: /srv/services}\ndataplane: {capacity: {services: 1}}\n";
        assert_eq!(
            errors(text),
            ["node.yaml:2:34: dataplane.capacity.services: 1 is less than the minimum of 2"]
        );
        let text = "source: {url: /srv/services}\ndataplane: {capacity: {sockets: 1}}\n";
        assert_eq!(errors(text).len(), 1, "{:?}", errors(text));
    }

    #[test]
    fn errors_name_the_field_and_its_place() {
        assert_eq!(
            errors(&FULL.replace("interval: 30s", "interval: 30 seconds")),
            ["node.yaml:6:13: source.interval: `30 seconds` is not a duration such as 500ms, \
                 30s, 5m or 1h30m (whole numbers, each with a unit: ms, s, m, h; no spaces)"]
        );
        assert_eq!(
            errors(&FULL.replace("drift: heal", "drift: fix")),
            ["node.yaml:15:8: drift: \"fix\" is not one of \"heal\" or \"report\""]
        );
        assert_eq!(
            errors(&FULL.replace("listen: 127.0.0.1:9469", "listen: localhost:9469")),
            ["node.yaml:14:9: listen: `localhost:9469` is not HOST:PORT with an IP address"]
        );
        assert_eq!(
            errors(&FULL.replace("10.96.0.0/12", "10.96.0.0/40")),
            ["node.yaml:11:17: policy.allowedVIPs[0]: `10.96.0.0/40` is not a CIDR range such as 10.96.0.0/12 or fd00:96::/64"]
        );
        assert_eq!(
            errors(&FULL.replace("192.0.2.1", "192.0.2.0/24")),
            ["node.yaml:12:20: policy.allowLocalVIPs[0]: `192.0.2.0/24` is not an IPv4 or IPv6 address"]
        );
        assert_eq!(
            errors(&FULL.replace("  pinPath:", "  pinpath:")),
            ["node.yaml:9:3: dataplane.pinpath: unknown field `pinpath`; did you mean `pinPath`?"]
        );
        assert_eq!(
            errors("listen: 127.0.0.1:1\n"),
            ["node.yaml:1:1: \"source\" is a required property"]
        );
    }

    #[test]
    fn every_error_is_listed_each_at_its_place() {
        let text = FULL
            .replace("interval: 30s", "interval: 50ms")
            .replace("listen: 127.0.0.1:9469", "listen: localhost:9469")
            .replace("10.96.0.0/12", "10.96.0.0/40");
        let places: Vec<String> =
            errors(&text).iter().map(|e| e.split(": ").next().unwrap().to_owned()).collect();
        assert_eq!(places, ["node.yaml:6:13", "node.yaml:14:9", "node.yaml:11:17"]);
    }

    #[test]
    fn notification_receivers_take_every_event_unless_they_list_some() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "source: {{url: /srv/services}}\nnotify:\n  - url: http://127.0.0.1:8080/hook\n  \
             - url: https://hooks.slack.com/services/T/B/X\n    format: slack\n    \
             secretFile: {}\n    events: [rejected, rollout_aborted]\n    timeout: 2s\n",
            secret.display()
        );
        let config = parse("node.yaml", &text).unwrap();
        let [all, slack] = &config.notify[..] else { panic!("{:?}", config.notify) };
        assert_eq!(
            (all.format, all.events.len(), all.secret.is_none()),
            (notify::Format::Generic, 8, true)
        );
        assert_eq!(all.timeout, notify::DEFAULT_TIMEOUT);
        assert_eq!(slack.format, notify::Format::Slack);
        assert_eq!(
            slack.events.iter().copied().collect::<Vec<_>>(),
            ["rejected", "rollout_aborted"]
        );
        assert_eq!(
            (slack.secret.clone(), slack.timeout),
            (Some(Secret::read(&secret).unwrap()), Duration::from_secs(2))
        );
    }

    #[test]
    fn a_wrong_notification_receiver_is_named_at_its_field() {
        let text = "source: {url: /srv/services}\nnotify:\n  - url: ftp://example.com/\n  \
                    - url: http://127.0.0.1/\n    events: [aplied]\n  \
                    - url: http://127.0.0.1/\n    secretFile: /nothing/here\n    timeout: 50ms\n";
        // The schema's errors first, all of them.
        assert_eq!(
            errors(text),
            [
                "node.yaml:3:10: notify[0].url: `ftp://example.com/` is not an http:// or https:// URL",
                "node.yaml:5:14: notify[1].events[0]: \"aplied\" is not one of \"applied\", \"rejected\" or 6 other candidates"
            ]
        );
        let text = text.replace("ftp:", "http:").replace("aplied", "applied");
        let found = errors(&text);
        assert!(
            found[0].starts_with("node.yaml:7:17: notify[2].secretFile: reading /nothing/here"),
            "{found:?}"
        );
        assert_eq!(
            found[1],
            "node.yaml:8:14: notify[2].timeout: `50ms` is not a duration from 100ms to 60s"
        );
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn the_webhook_secret_is_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        let text =
            format!("source: {{url: /srv/services}}\nwebhook:\n  secretFile: {}\n", file.display());
        let config = parse("node.yaml", &text).unwrap();
        assert_eq!(config.webhook_secret, Some(Secret::read(&file).unwrap()));
        assert!(format!("{config:?}").contains("Secret(..)"), "the secret is never printed");
        let missing = text.replace("secret\n", "nothing-here\n");
        let found = errors(&missing);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("node.yaml:3:15: webhook.secretFile: reading "), "{found:?}");
        std::fs::write(&file, "\n").unwrap();
        let found = errors(&text);
        assert!(found[0].ends_with("is empty"), "{found:?}");
    }

    #[test]
    fn source_verify_reads_its_allowed_signers() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("allowed_signers");
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHtVL3aGbtKb5fzRqqYhUqnIu4wYUbYUo/c6pH2oVD+G";
        std::fs::write(&file, format!("alice@example.com {key}\n")).unwrap();
        let text = format!(
            "source:\n  url: /srv/services\n  verify:\n    mode: tag\n    allowedSigners: {}\n",
            file.display()
        );
        let config = parse("node.yaml", &text).unwrap();
        assert_eq!(config.source.verify.map(|v| v.mode), Some(Mode::Tag));
        std::fs::write(&file, "alice@example.com ssh-ed25519 garbage\n").unwrap();
        let found = errors(&text);
        assert!(
            found[0].starts_with("node.yaml:5:21: source.verify.allowedSigners: "),
            "{found:?}"
        );
        assert!(found[0].contains("allowed_signers:1: the key cannot be read"), "{found:?}");
        assert!(errors(&text.replace("mode: tag", "mode: all"))[0].contains("source.verify.mode"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("10d"), None);
    }

    #[test]
    fn compound_durations_parse_as_flux_writes_them() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10m0s"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1m500ms"), Some(Duration::from_millis(60_500)));
    }

    #[test]
    fn what_is_not_a_duration_is_refused() {
        for text in ["", "10", "5x", "-1s", "1.5h", "1h 30m", "30 seconds", "1hour", "1d"] {
            assert_eq!(parse_duration(text), None, "{text:?}");
        }
        // More seconds than a Duration holds.
        assert_eq!(parse_duration("99999999999999999999s"), None);
    }

    #[test]
    fn the_schema_takes_the_durations_the_parser_takes() {
        let interval = |text: &str| FULL.replace("interval: 30s", &format!("interval: {text}"));
        let config = parse("node.yaml", &interval("10m0s")).unwrap();
        assert_eq!(config.interval, Duration::from_secs(600));
        assert_eq!(parse("node.yaml", &interval("1h30m")).unwrap().interval.as_secs(), 5400);
        assert_eq!(
            errors(&interval("50ms")),
            ["node.yaml:6:13: source.interval: `50ms` is not a duration of at least 100ms"]
        );
        for text in ["\"10\"", "5x", "-1s", "1d", "\"\""] {
            let found = errors(&interval(text));
            assert!(found[0].contains("is not a duration such as 500ms"), "{text}: {found:?}");
        }
    }

    #[test]
    fn the_node_takes_its_name_and_labels_from_the_environment_or_says_what_is_missing() {
        let home = std::env::var("HOME").unwrap_or_default();
        let text = "source: {url: /srv/repo}\nnode:\n  name: n-${HOME}\n  labels: {zone: a}\n";
        let config = parse("node.yaml", text).unwrap();
        assert_eq!(config.node.name, format!("n-{home}"));
        assert_eq!(config.node.labels.get("zone").map(String::as_str), Some("a"));
        let default = parse("node.yaml", "source: {url: /srv/repo}\n").unwrap();
        assert_eq!(default.node.name, reconciler_core::node::host_name());
        let unset =
            "source: {url: /srv/repo}\nnode:\n  labels: {zone: \"${RECONCILER_UNSET_9}\"}\n";
        let errors = parse("node.yaml", unset).unwrap_err();
        let text = errors[0].to_string();
        assert!(text.contains("node.labels.zone") && text.contains("RECONCILER_UNSET_9"), "{text}");
    }

    #[test]
    fn a_later_wave_needs_a_gate_and_the_gate_has_defaults() {
        let first = parse("node.yaml", "source: {url: /srv/repo}\n").unwrap();
        assert_eq!((first.rollout.wave, first.rollout.waits()), (1, None));
        let text = "source: {url: /srv/repo}\nrollout:\n  wave: 2\n  gate: {prometheus: \
                    http://127.0.0.1:9090}\n";
        let gate = parse("node.yaml", text).unwrap().rollout.waits().cloned().unwrap();
        assert_eq!((gate.soak.as_secs(), gate.min_nodes, gate.max_ejected_backends), (600, 1, 2));
        assert_eq!(
            errors("source: {url: /srv/repo}\nrollout: {wave: 3}\n"),
            ["node.yaml:2:17: rollout.wave: a node of wave 3 needs rollout.gate.prometheus: \
              without it, it cannot know when the earlier waves ran a revision"]
        );
        let zero = errors("source: {url: /srv/repo}\nrollout: {wave: 0}\n");
        assert!(zero[0].starts_with("node.yaml:2:17: rollout.wave: 0 is less than"), "{zero:?}");
    }
}
