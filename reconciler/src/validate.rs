//! Validation: the JSON Schema (`schema/service.schema.json`, embedded) and the rules a
//! schema cannot say (names and VIPs unique across files, address families, capacities).
//! Every problem in every file is reported at once, each with file, line, column and field.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::OnceLock,
};

use jsonschema::{error::ValidationErrorKind, Validator};
use reconciler_common::{MAX_BACKENDS, MAX_SERVICES, MAX_SLOTS, MAX_SLOTS_PER_SERVICE};
use serde::Serialize;

use crate::{
    dataplane::Protocol,
    model::{BackendState, Service},
    yaml::{self, Document, Position},
};

/// The schema every service document must satisfy.
pub const SCHEMA: &str = include_str!("../../schema/service.schema.json");

/// One problem, at one place.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field, as `spec.backends[1].weight`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A file to validate: its path as people should see it, and its text.
pub struct Input<'a> {
    pub path: &'a str,
    pub text: &'a str,
}

/// What the semantic rules may additionally require.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// When set, every VIP must lie in one of these ranges.
    pub allowed_vips: Option<Vec<IpRange>>,
}

/// A CIDR range such as `10.96.0.0/12` or `fd00:96::/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    pub network: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = addr.parse().map_err(|_| format!("`{text}` is not a CIDR range"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                format!("`{text}`: the prefix length must be a number from 0 to {max}")
            })?
        };
        Ok(IpRange { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                (u128::from(n.to_bits()), u128::from(i.to_bits()), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => (n.to_bits(), i.to_bits(), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (net >> shift) == (ip >> shift)
    }
}

/// A valid service and where it was defined.
#[derive(Clone, Debug)]
pub struct Located {
    pub service: Service,
    pub file: String,
    document: Document,
}

impl Located {
    fn diagnostic(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        at(&self.file, self.document.value_position(pointer), pointer, message.into())
    }

    /// `file:line` of the service's name, for messages that point at another definition.
    fn origin(&self) -> String {
        format!("{}:{}", self.file, self.document.value_position("/metadata/name").line)
    }
}

pub(crate) fn at(file: &str, position: Position, pointer: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: position.line,
        column: position.column,
        field: field_name(pointer),
        message,
    }
}

/// `/spec/backends/1/weight` -> `spec.backends[1].weight`.
fn field_name(pointer: &str) -> String {
    let mut field = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            field.push_str(&format!("[{segment}]"));
        } else {
            if !field.is_empty() {
                field.push('.');
            }
            field.push_str(&segment);
        }
    }
    field
}

/// An embedded JSON Schema, compiled on first use.
pub(crate) struct Schema {
    name: &'static str,
    text: &'static str,
    compiled: OnceLock<Result<Validator, String>>,
}

static SERVICE_SCHEMA: Schema = Schema::new("schema/service.schema.json", SCHEMA);

impl Schema {
    pub(crate) const fn new(name: &'static str, text: &'static str) -> Self {
        Schema { name, text, compiled: OnceLock::new() }
    }

    fn validator(&self) -> Result<&Validator, Diagnostic> {
        let compiled = self.compiled.get_or_init(|| {
            let schema: serde_json::Value =
                serde_json::from_str(self.text).map_err(|e| format!("embedded schema: {e}"))?;
            jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .map_err(|e| format!("embedded schema: {e}"))
        });
        compiled
            .as_ref()
            .map_err(|message| at(self.name, Position { line: 1, column: 1 }, "", message.clone()))
    }

    /// Every way `document` (of `file`) breaks the schema.
    pub(crate) fn check(
        &self,
        file: &str,
        document: &Document,
    ) -> Result<Vec<Diagnostic>, Diagnostic> {
        let mut diagnostics = Vec::new();
        for error in self.validator()?.iter_errors(&document.value) {
            schema_diagnostics(file, document, &error, &mut diagnostics);
        }
        Ok(diagnostics)
    }
}

/// Validates every document of every file; returns the services, or every problem found.
pub fn validate(inputs: &[Input<'_>], policy: &Policy) -> Result<Vec<Located>, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut services = Vec::new();
    for input in inputs {
        let documents = match yaml::parse(input.text) {
            Ok(documents) => documents,
            Err(e) => {
                diagnostics.push(at(input.path, e.position, "", e.message));
                continue;
            }
        };
        for document in documents {
            let problems = SERVICE_SCHEMA.check(input.path, &document).map_err(|d| vec![d])?;
            if !problems.is_empty() {
                diagnostics.extend(problems);
                continue;
            }
            match serde_json::from_value::<Service>(document.value.clone()) {
                Ok(service) => {
                    services.push(Located { service, file: input.path.into(), document })
                }
                // The schema admits only what the model reads; this is a bug if it happens.
                Err(e) => {
                    diagnostics.push(at(input.path, document.value_position(""), "", e.to_string()))
                }
            }
        }
    }
    semantic_diagnostics(&services, policy, &mut diagnostics);
    if diagnostics.is_empty() {
        Ok(services)
    } else {
        diagnostics.sort();
        diagnostics.dedup();
        Err(diagnostics)
    }
}

fn schema_diagnostics(
    file: &str,
    document: &Document,
    error: &jsonschema::ValidationError<'_>,
    out: &mut Vec<Diagnostic>,
) {
    let pointer = error.instance_path().as_str();
    let instance = document.value.pointer(pointer);
    let message = match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            for key in unexpected {
                let field = format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"));
                out.push(at(
                    file,
                    document.key_position(&field),
                    &field,
                    format!("unknown field `{key}`"),
                ));
            }
            return;
        }
        ValidationErrorKind::AnyOf { .. }
            if pointer.ends_with("/vip") || pointer.ends_with("/address") =>
        {
            format!("{} is not an IPv4 or IPv6 address", show(instance))
        }
        ValidationErrorKind::Pattern { .. }
            if pointer == "/metadata/name" || pointer.ends_with("/name") =>
        {
            format!(
                "{} is not a DNS label (lowercase letters, digits and `-`, starting and ending \
                 with a letter or digit)",
                show(instance)
            )
        }
        ValidationErrorKind::Constant { expected_value } => {
            format!(
                "expected `{}`, found {}",
                expected_value.as_str().unwrap_or_default(),
                show(instance)
            )
        }
        ValidationErrorKind::Type { .. } if pointer.is_empty() => {
            "a service definition must be a mapping with apiVersion, kind, metadata and spec"
                .to_owned()
        }
        _ => error.to_string(),
    };
    out.push(at(file, document.value_position(pointer), pointer, message));
}

fn show(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(
        || "the value".into(),
        |v| format!("`{}`", v.as_str().map_or(v.to_string(), str::to_owned)),
    )
}

/// The rules across documents and files.
fn semantic_diagnostics(services: &[Located], policy: &Policy, out: &mut Vec<Diagnostic>) {
    let mut names: BTreeMap<&str, &Located> = BTreeMap::new();
    let mut frontends: BTreeMap<(IpAddr, u16, Protocol), &Located> = BTreeMap::new();
    let vips: BTreeMap<IpAddr, &Located> =
        services.iter().rev().map(|l| (l.service.spec.vip, l)).collect();
    let (mut frontend_count, mut backend_count, mut slot_count) = (0usize, 0usize, 0u64);
    let mut over_capacity = BTreeSet::new();

    for located in services {
        let service = &located.service;
        let spec = &service.spec;
        if let Some(first) = names.insert(&service.metadata.name, located) {
            names.insert(&first.service.metadata.name, first);
            out.push(located.diagnostic(
                "/metadata/name",
                format!(
                    "service name `{}` is already used at {}",
                    service.metadata.name,
                    first.origin()
                ),
            ));
        }
        if let Some(ranges) = &policy.allowed_vips {
            if !ranges.iter().any(|r| r.contains(spec.vip)) {
                let list: Vec<String> = ranges.iter().map(IpRange::to_string).collect();
                out.push(located.diagnostic(
                    "/spec/vip",
                    format!(
                        "service `{}`: VIP {} is outside the allowed ranges ({})",
                        service.metadata.name,
                        spec.vip,
                        list.join(", ")
                    ),
                ));
            }
        }
        let mut port_names = BTreeSet::new();
        for (i, port) in spec.ports.iter().enumerate() {
            let protocol = port.protocol;
            if let Some(name) = &port.name {
                if !port_names.insert(name) {
                    out.push(located.diagnostic(
                        &format!("/spec/ports/{i}/name"),
                        format!("port name `{name}` is used twice in this service"),
                    ));
                }
            }
            let frontend = SocketAddr::new(spec.vip, port.port);
            if let Some(first) = frontends.insert((spec.vip, port.port, protocol), located) {
                frontends.insert((spec.vip, port.port, protocol), first);
                let owner = if std::ptr::eq(first, located) {
                    "this service already".to_owned()
                } else {
                    format!("service `{}` ({})", first.service.metadata.name, first.origin())
                };
                out.push(located.diagnostic(
                    &format!("/spec/ports/{i}/port"),
                    format!("{frontend}/{protocol} is claimed by {owner}"),
                ));
            }
            frontend_count += 1;
        }

        let mut seen = BTreeSet::new();
        let mut weights = 0u64;
        for (i, backend) in spec.backends.iter().enumerate() {
            let pointer = format!("/spec/backends/{i}");
            if backend.address.is_ipv4() != spec.vip.is_ipv4() {
                out.push(located.diagnostic(
                    &format!("{pointer}/address"),
                    format!(
                        "backend {} is {} but the VIP {} is {}: one service uses one address family",
                        backend.address,
                        family(backend.address),
                        spec.vip,
                        family(spec.vip)
                    ),
                ));
            }
            if let Some(owner) = vips.get(&backend.address) {
                out.push(located.diagnostic(
                    &format!("{pointer}/address"),
                    format!(
                        "backend {} is the VIP of service `{}`: a backend must be a real address",
                        backend.address, owner.service.metadata.name
                    ),
                ));
            }
            if !seen.insert((backend.address, backend.port)) {
                out.push(located.diagnostic(
                    &format!("{pointer}/address"),
                    format!(
                        "backend {} is listed twice",
                        show_backend(backend.address, backend.port)
                    ),
                ));
            }
            if backend.state == BackendState::Active {
                weights += u64::from(backend.weight);
            }
            backend_count += spec.ports.len();
        }
        if weights > u64::from(MAX_SLOTS_PER_SERVICE) {
            out.push(located.diagnostic(
                "/spec/backends",
                format!(
                    "the active backends' weights add up to {weights}; at most \
                     {MAX_SLOTS_PER_SERVICE} per service"
                ),
            ));
        }
        slot_count += weights * spec.ports.len() as u64;

        for (what, count, max) in [
            ("services (VIP, port, protocol)", frontend_count as u64, u64::from(MAX_SERVICES)),
            ("backends (per port)", backend_count as u64, u64::from(MAX_BACKENDS) - 1),
            ("selection slots (weights, per port)", slot_count, u64::from(MAX_SLOTS)),
        ] {
            if count > max && over_capacity.insert(what) {
                out.push(located.diagnostic(
                    "",
                    format!("with this service the repository defines {count} {what}; the data plane holds {max}"),
                ));
            }
        }
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn show_backend(address: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(port) => SocketAddr::new(address, port).to_string(),
        None => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: reconciler.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  vip: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
  backends:
    - {address: 10.1.0.11}
    - {address: 10.1.0.12, weight: 2}
";

    fn check(files: &[(&str, &str)], policy: &Policy) -> Result<Vec<Located>, Vec<String>> {
        let inputs: Vec<Input<'_>> =
            files.iter().map(|(path, text)| Input { path, text }).collect();
        validate(&inputs, policy).map_err(|ds| ds.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_good_definition_passes() {
        let services = check(&[("web.yaml", GOOD)], &Policy::default()).unwrap();
        assert_eq!(services[0].service.metadata.name, "web");
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let bad = GOOD
            .replace("weight: 2", "weight: two")
            .replace("port: 80,", "port: 80, colour: red,")
            .replace("10.96.0.10", "10.96.0.999");
        let errors = check(&[("web.yaml", &bad)], &Policy::default()).unwrap_err();
        assert_eq!(
            errors,
            [
                "web.yaml:5:8: spec.vip: `10.96.0.999` is not an IPv4 or IPv6 address",
                "web.yaml:6:34: spec.ports[0].colour: unknown field `colour`",
                "web.yaml:9:36: spec.backends[1].weight: \"two\" is not of type \"integer\"",
            ]
        );
    }

    #[test]
    fn rules_across_files_name_both_places() {
        let other = GOOD.replace("10.1.0.11", "10.1.0.21").replace("10.1.0.12", "10.96.0.10");
        let errors =
            check(&[("a.yaml", GOOD), ("b.yaml", &other)], &Policy::default()).unwrap_err();
        assert_eq!(
            errors,
            [
                "b.yaml:3:18: metadata.name: service name `web` is already used at a.yaml:3",
                "b.yaml:6:30: spec.ports[0].port: 10.96.0.10:80/TCP is claimed by service `web` (a.yaml:3)",
                "b.yaml:9:17: spec.backends[1].address: backend 10.96.0.10 is the VIP of service `web`: a backend must be a real address",
            ]
        );
    }

    #[test]
    fn the_policy_limits_vips() {
        let policy = Policy {
            allowed_vips: Some(vec![
                "10.96.0.0/12".parse().unwrap(),
                "fd00:96::/64".parse().unwrap(),
            ]),
        };
        assert!(check(&[("web.yaml", GOOD)], &policy).is_ok());
        let metadata = GOOD.replace("10.96.0.10", "169.254.169.254");
        let errors = check(&[("web.yaml", &metadata)], &policy).unwrap_err();
        assert_eq!(
            errors,
            ["web.yaml:5:8: spec.vip: service `web`: VIP 169.254.169.254 is outside the allowed ranges (10.96.0.0/12, fd00:96::/64)"]
        );
    }

    #[test]
    fn ranges_parse_and_match() {
        let range: IpRange = "10.96.0.0/12".parse().unwrap();
        assert!(range.contains("10.111.255.255".parse().unwrap()));
        assert!(!range.contains("10.112.0.0".parse().unwrap()));
        assert!(!range.contains("fd00::1".parse().unwrap()));
        let all: IpRange = "::/0".parse().unwrap();
        assert!(all.contains("fd00::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("nonsense".parse::<IpRange>().is_err());
    }
}
