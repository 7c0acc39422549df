//! The daemon's configuration: a YAML file owned by the node, never read from the repository.
//! Checked against `schema/daemon-config.schema.json`, then for what a schema cannot say
//! (durations, CIDR ranges, the listen address); every error names file, line and field.
use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use super::webhook::Secret;
use crate::{
    dataplane::DEFAULT_PIN_PATH,
    load,
    source::{default_cache_dir, GitSpec, SourceSpec},
    validate::{at, parse_range, Diagnostic, Policy, Schema},
    verify::{AllowedSigners, Keyring, Mode, Verify},
};

static CONFIG_SCHEMA: Schema = Schema::new(
    "schema/daemon-config.schema.json",
    include_str!("../../../schema/daemon-config.schema.json"),
);

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
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
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// Reads and checks the configuration in `text` (from `file`).
pub fn parse(file: &str, text: &str) -> Result<Config, Vec<Diagnostic>> {
    let documents = load::parse(text).map_err(|e| vec![at(file, e.position, "", e.message)])?;
    let [document] = documents.as_slice() else {
        let message = format!("expected one YAML document, found {}", documents.len());
        return Err(vec![at(file, load::Position { line: 1, column: 1 }, "", message)]);
    };
    let problems = CONFIG_SCHEMA.check(file, document).map_err(|d| vec![d])?;
    if !problems.is_empty() {
        return Err(problems);
    }
    let raw: RawConfig = serde_json::from_value(document.value.clone())
        .map_err(|e| vec![at(file, document.value_position(""), "", e.to_string())])?;
    let mut errors = Vec::new();
    let mut error = |pointer: &str, message: String| {
        errors.push(at(file, document.value_position(pointer), pointer, message));
    };

    let interval = match raw.source.interval.as_deref() {
        None => DEFAULT_INTERVAL,
        Some(text) => match parse_duration(text) {
            Some(d) if d >= Duration::from_millis(100) => d,
            _ => {
                error("/source/interval", format!("`{text}` is not a duration of at least 100ms"));
                DEFAULT_INTERVAL
            }
        },
    };
    let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
        error("/listen", format!("`{listen_text}` is not HOST:PORT with an IP address"));
        SocketAddr::from(([127, 0, 0, 1], 9469))
    });
    let mut ranges = Vec::new();
    for (i, text) in raw.policy.allowed_vips.iter().flatten().enumerate() {
        match parse_range(text) {
            Ok(range) => ranges.push(range),
            Err(e) => error(&format!("/policy/allowedVIPs/{i}"), e.to_string()),
        }
    }
    let mut allow_local_vips = Vec::new();
    for (i, text) in raw.policy.allow_local_vips.iter().enumerate() {
        match text.parse::<IpAddr>() {
            Ok(ip) => allow_local_vips.push(ip),
            Err(_) => error(
                &format!("/policy/allowLocalVIPs/{i}"),
                format!("`{text}` is not an IPv4 or IPv6 address"),
            ),
        }
    }
    let verify = raw.source.verify.map(|verify| {
        let signers = verify.allowed_signers.and_then(|file| {
            let read = AllowedSigners::read(&file);
            read.map_err(|e| error("/source/verify/allowedSigners", e.to_string())).ok()
        });
        let keyring = verify.keyring.and_then(|file| {
            Keyring::read(&file).map_err(|e| error("/source/verify/keyring", e.to_string())).ok()
        });
        Verify { mode: verify.mode, signers, keyring }
    });
    let webhook_secret = raw.webhook.and_then(|webhook| {
        Secret::read(&webhook.secret_file)
            .map_err(|message| error("/webhook/secretFile", message))
            .ok()
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        source: GitSpec {
            url: raw.source.url,
            reference: raw.source.reference,
            subdir: raw.source.path,
            cache_dir: raw.source.cache_dir.unwrap_or_else(default_cache_dir),
            ssh_key: raw.source.ssh_key,
            verify,
        },
        interval,
        cgroup: raw.dataplane.cgroup,
        pin_path: raw.dataplane.pin_path.unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH)),
        policy: Policy {
            allowed_vips: raw.policy.allowed_vips.map(|_| ranges),
            ..Policy::default()
        },
        allow_local_vips,
        allow_destroy_all: raw.policy.allow_destroy_all,
        listen,
        drift: raw.drift,
        webhook_secret,
    })
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
    }

    #[test]
    fn errors_name_the_field_and_its_place() {
        assert_eq!(
            errors(&FULL.replace("interval: 30s", "interval: 30 seconds")),
            ["node.yaml:6:13: source.interval: \"30 seconds\" does not match \"^[0-9]+(ms|s|m|h)$\""]
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
            ["node.yaml:9:3: dataplane.pinpath: unknown field `pinpath`"]
        );
        assert_eq!(
            errors("listen: 127.0.0.1:1\n"),
            ["node.yaml:1:1: \"source\" is a required property"]
        );
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
}
