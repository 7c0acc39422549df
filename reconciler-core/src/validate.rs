//! Validation: the JSON Schema (`schema/service.schema.json`, embedded) and the rules a
//! schema cannot say (names and VIPs unique across files, address families and ranges,
//! capacities). Every problem in every file is reported at once (up to
//! [`limits::MAX_DIAGNOSTICS`]), each with file, line, column and field.
//!
//! Addresses are compared in the one form the maps store: the model reads `::ffff:a.b.c.d`
//! as `a.b.c.d`, so two spellings of one address are one address here too.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{Arc, OnceLock},
};

use ipnet::IpNet;
use jsonschema::{error::ValidationErrorKind, Validator};
use reconciler_common::{maglev, MAX_SLOTS, MAX_SLOTS_PER_SERVICE};
use serde::{Deserialize, Serialize};

use crate::{
    compile::{self, BACKEND_CAPACITY, SERVICE_CAPACITY},
    limits,
    load::{self, Document, Position},
    model::Service,
    node::LocalAddress,
    source::Snapshot,
    state::{Algorithm, Protocol},
};

/// The schema every service document must satisfy.
pub const SCHEMA: &str = include_str!("../../schema/service.schema.json");

/// One problem, at one place.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

/// What the semantic rules may additionally require.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// When set, every VIP must lie in one of these ranges.
    pub allowed_vips: Option<Vec<IpNet>>,
    /// This node's own addresses, which no VIP may take (a VIP is rewritten for every process
    /// in the cgroup, so it would hijack connects to the node itself). Empty where validation
    /// does not run on the node, as in CI.
    pub local_addresses: Vec<LocalAddress>,
}

/// Parses a CIDR range such as `10.96.0.0/12` or `fd00:96::/64`; a bare address is its own
/// range.
pub fn parse_range(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not a CIDR range such as 10.96.0.0/12 or fd00:96::/64"))
}

/// A valid service and where it was defined.
#[derive(Clone, Debug)]
pub struct Located {
    pub service: Arc<Service>,
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

pub fn at(file: &str, position: Position, pointer: &str, message: String) -> Diagnostic {
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
pub struct Schema {
    name: &'static str,
    text: &'static str,
    compiled: OnceLock<Result<Validator, String>>,
}

static SERVICE_SCHEMA: Schema = Schema::new("schema/service.schema.json", SCHEMA);

impl Schema {
    pub const fn new(name: &'static str, text: &'static str) -> Self {
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
    pub fn check(&self, file: &str, document: &Document) -> Result<Vec<Diagnostic>, Diagnostic> {
        let mut diagnostics = Vec::new();
        for error in self.validator()?.iter_errors(&document.value) {
            schema_diagnostics(file, document, &error, &mut diagnostics);
        }
        Ok(diagnostics)
    }
}

/// Validates every document of every file of `snapshot`; returns the services, or every
/// problem found (the files it could not read among them).
pub fn validate(snapshot: &Snapshot, policy: &Policy) -> Result<Vec<Located>, Vec<Diagnostic>> {
    validate_reusing(snapshot, policy, &BTreeMap::new())
}

/// [`validate`], taking the services of each unread file of `snapshot` from `parsed` (by
/// blob id: what that file validated to on its own, schema and model, in an earlier run)
/// instead of parsing it. The rules across files run over all of them as always. Diagnostics
/// of a reused service have no position: validate without reuse for the report.
pub fn validate_reusing(
    snapshot: &Snapshot,
    policy: &Policy,
    parsed: &BTreeMap<String, Vec<Arc<Service>>>,
) -> Result<Vec<Located>, Vec<Diagnostic>> {
    let start = Position { line: 1, column: 1 };
    let mut diagnostics: Vec<Diagnostic> =
        snapshot.problems.iter().map(|p| at(&p.path, start, "", p.message.clone())).collect();
    let mut services = Vec::new();
    let mut nodes = limits::MAX_NODES;
    for file in &snapshot.files {
        let Some(text) = &file.text else {
            match file.blob.as_ref().and_then(|blob| parsed.get(blob)) {
                Some(known) => services.extend(known.iter().map(|service| Located {
                    service: Arc::clone(service),
                    file: file.path.clone(),
                    document: Document::nowhere(),
                })),
                None => diagnostics.push(at(&file.path, start, "", "not read".into())),
            }
            continue;
        };
        let documents = match load::parse_within(text, &mut nodes) {
            Ok(documents) => documents,
            Err(e) => {
                diagnostics.push(at(&file.path, e.position, "", e.message));
                continue;
            }
        };
        for document in documents {
            let problems = SERVICE_SCHEMA.check(&file.path, &document).map_err(|d| vec![d])?;
            if !problems.is_empty() {
                diagnostics.extend(problems);
                continue;
            }
            match serde_path_to_error::deserialize::<_, Service>(&document.value) {
                Ok(service) => {
                    // The typed service is what is kept; of the document, only where its
                    // nodes are (for diagnostics): the tree of values is most of its memory.
                    let document = document.positions_only();
                    let service = Arc::new(service);
                    services.push(Located { service, file: file.path.clone(), document })
                }
                // What the schema admits but the model cannot hold, such as `weight: 1.0`
                // (a JSON Schema integer may be written with a fraction of zero).
                Err(e) => {
                    let pointer = json_pointer(e.path());
                    let position = document.value_position(&pointer);
                    diagnostics.push(at(&file.path, position, &pointer, e.inner().to_string()))
                }
            }
        }
    }
    semantic_diagnostics(&services, policy, &mut diagnostics);
    if diagnostics.is_empty() {
        return Ok(services);
    }
    diagnostics.sort();
    diagnostics.dedup();
    if diagnostics.len() > limits::MAX_DIAGNOSTICS {
        let omitted = diagnostics.len() - limits::MAX_DIAGNOSTICS + 1;
        diagnostics.truncate(limits::MAX_DIAGNOSTICS - 1);
        let first_omitted = &diagnostics[diagnostics.len() - 1];
        let message = format!(
            "and {omitted} more problem(s) from here on, not listed: at most {} are reported \
             per run",
            limits::MAX_DIAGNOSTICS
        );
        let position = Position { line: first_omitted.line, column: first_omitted.column };
        let file = first_omitted.file.clone();
        diagnostics.push(at(&file, position, "", message));
    }
    Err(diagnostics)
}

/// serde's path (`spec.backends[0].weight`) as a JSON pointer (`/spec/backends/0/weight`).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push_str(&format!("/{}", key.replace('~', "~0").replace('/', "~1")))
            }
            Segment::Unknown => {}
        }
    }
    pointer
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
    // Hash maps: these run over every service of the repository on every plan, the
    // incremental one included; which entry is "first" follows the services' order.
    let mut names: HashMap<&str, &Located> = HashMap::with_capacity(services.len());
    let mut frontends: HashMap<(IpAddr, u16, Protocol), &Located> =
        HashMap::with_capacity(services.len());
    let vips: HashMap<IpAddr, &Located> =
        services.iter().rev().map(|l| (l.service.spec.vip, l)).collect();
    let by_name: HashMap<&str, &Located> =
        services.iter().rev().map(|l| (l.service.metadata.name.as_str(), l)).collect();
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
        if let Some(class) = reserved_class(spec.vip) {
            out.push(located.diagnostic(
                "/spec/vip",
                format!(
                    "service `{}`: VIP {} is {class}: a VIP must be an address that nothing \
                     else answers on",
                    service.metadata.name, spec.vip
                ),
            ));
        }
        if let Some(local) = policy.local_addresses.iter().find(|l| l.address == spec.vip) {
            out.push(located.diagnostic(
                "/spec/vip",
                format!(
                    "service `{}`: VIP {} is an address of this node (interface {}): every \
                     connect to it from the cgroup would be taken over; list it in \
                     policy.allowLocalVIPs (--allow-local-vips) if that is meant",
                    service.metadata.name, spec.vip, local.interface
                ),
            ));
        }
        if let Some(ranges) = &policy.allowed_vips {
            if !ranges.iter().any(|r| r.contains(&spec.vip)) {
                let list: Vec<String> = ranges.iter().map(IpNet::to_string).collect();
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
            if let Some(class) = non_unicast_class(backend.address) {
                out.push(located.diagnostic(
                    &format!("{pointer}/address"),
                    format!("backend {} is {class}, not a host to connect to", backend.address),
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
            // Compared where they are reached (`address_for`, as compile resolves them):
            // `{address: X}` and `{address: X, port: <targetPort>}` are one backend.
            if let Some((_, port)) = spec
                .ports
                .iter()
                .enumerate()
                .find(|(j, port)| !seen.insert((*j, backend.address_for(port))))
            {
                out.push(located.diagnostic(
                    &format!("{pointer}/address"),
                    format!(
                        "backend {} is listed twice (for port {})",
                        backend.address_for(port),
                        port.port
                    ),
                ));
            }
            backend_count += spec.ports.len();
        }
        let balancing = &spec.load_balancing;
        if balancing.algorithm == Algorithm::Maglev {
            if let Some(size) = balancing.table_size {
                let listed = u32::try_from(spec.backends.len()).unwrap_or(u32::MAX);
                if let Some(problem) = maglev::table_size_problem(size, listed) {
                    out.push(located.diagnostic(
                        "/spec/loadBalancing/tableSize",
                        format!("table size {size} {problem}"),
                    ));
                }
            }
        } else {
            let given = [
                ("client", balancing.client.is_some()),
                ("tableSize", balancing.table_size.is_some()),
            ];
            let only =
                format!("`algorithm: maglev` only; this service is `{}`", balancing.algorithm);
            fields_only_for(located, "/spec/loadBalancing", &given, &only, out);
        }
        if let Some(fallback) = &spec.fallback {
            if let Some(problem) = fallback_problem(&by_name, &service.metadata.name, fallback) {
                out.push(located.diagnostic("/spec/fallback", problem));
            }
        }
        if let Some(check) = &spec.health_check {
            if check.protocol != crate::model::HealthProtocol::Http {
                let given = [
                    ("path", check.path.is_some()),
                    ("expectStatus", check.expect_status.is_some()),
                ];
                let only = "`protocol: http` health checks only";
                fields_only_for(located, "/spec/healthCheck", &given, only, out);
            }
        }
        let slots = compile::slots_needed(spec);
        if balancing.algorithm == Algorithm::Random && slots > u64::from(MAX_SLOTS_PER_SERVICE) {
            out.push(located.diagnostic(
                "/spec/backends",
                format!(
                    "the usable backends' weights add up to {slots}; at most \
                     {MAX_SLOTS_PER_SERVICE} per service"
                ),
            ));
        }
        slot_count += slots * spec.ports.len() as u64;

        for (what, count, max) in [
            ("services (VIP, port, protocol)", frontend_count as u64, u64::from(SERVICE_CAPACITY)),
            ("backends (per port)", backend_count as u64, u64::from(BACKEND_CAPACITY)),
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

/// Why `fallback` cannot be the fallback of service `name`, if it cannot: it must exist, be
/// another service of the same address family, and not lead back to `name`.
fn fallback_problem(
    by_name: &HashMap<&str, &Located>,
    name: &str,
    fallback: &str,
) -> Option<String> {
    let own = by_name.get(name)?;
    let Some(other) = by_name.get(fallback) else {
        return Some(format!("fallback `{fallback}` is no service of this repository"));
    };
    if fallback == name {
        return Some("a service cannot be its own fallback".into());
    }
    let (ours, theirs) = (own.service.spec.vip, other.service.spec.vip);
    if ours.is_ipv4() != theirs.is_ipv4() {
        return Some(format!(
            "fallback `{fallback}` is {} but this service is {}: one family per service",
            family(theirs),
            family(ours)
        ));
    }
    let mut chain = vec![name, fallback];
    let mut next = other.service.spec.fallback.as_deref();
    while let Some(step) = next {
        if chain.contains(&step) {
            chain.push(step);
            return Some(format!("fallbacks form a cycle: {}", chain.join(" -> ")));
        }
        chain.push(step);
        next = by_name.get(step).and_then(|l| l.service.spec.fallback.as_deref());
    }
    None
}

/// A diagnostic for each field of `section` that is `given` although it applies to `only`.
fn fields_only_for(
    located: &Located,
    section: &str,
    given: &[(&str, bool)],
    only: &str,
    out: &mut Vec<Diagnostic>,
) {
    for (field, _) in given.iter().filter(|(_, given)| *given) {
        out.push(
            located.diagnostic(&format!("{section}/{field}"), format!("{field} applies to {only}")),
        );
    }
}

/// Why `ip` cannot be a VIP, if it cannot: the node's own addresses and ones that are not
/// one host's (IPv4-mapped IPv6 addresses are read as IPv4 before this).
fn reserved_class(ip: IpAddr) -> Option<&'static str> {
    if let Some(class) = non_unicast_class(ip) {
        return Some(class);
    }
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address (127.0.0.0/8)"),
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("a link-local address (169.254.0.0/16, where cloud metadata services answer)")
        }
        IpAddr::V6(v6) if v6.is_loopback() => Some("the loopback address (::1)"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address (fe80::/10)"),
        _ => None,
    }
}

/// Why `ip` is no single host's address, if it is not.
fn non_unicast_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Some("the unspecified address (0.0.0.0)"),
        IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("in 0.0.0.0/8 (\"this network\")"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address (224.0.0.0/4)"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("the unspecified address (::)"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address (ff00::/8)"),
        _ => None,
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceFile;

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
        let files = files.iter().map(|(path, text)| SourceFile::new(*path, *text)).collect();
        let snapshot = Snapshot { files, ..Snapshot::default() };
        validate(&snapshot, policy).map_err(|ds| ds.iter().map(ToString::to_string).collect())
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
            ..Policy::default()
        };
        assert!(check(&[("web.yaml", GOOD)], &policy).is_ok());
        let elsewhere = GOOD.replace("10.96.0.10", "10.200.0.10");
        let errors = check(&[("web.yaml", &elsewhere)], &policy).unwrap_err();
        assert_eq!(
            errors,
            ["web.yaml:5:8: spec.vip: service `web`: VIP 10.200.0.10 is outside the allowed ranges (10.96.0.0/12, fd00:96::/64)"]
        );
    }

    #[test]
    fn ranges_parse_and_match() {
        let range = parse_range("10.96.0.0/12").unwrap();
        assert!(range.contains(&"10.111.255.255".parse::<IpAddr>().unwrap()));
        assert!(!range.contains(&"10.112.0.0".parse::<IpAddr>().unwrap()));
        assert!(!range.contains(&"fd00::1".parse::<IpAddr>().unwrap()));
        assert!(parse_range("::/0").unwrap().contains(&"fd00::1".parse::<IpAddr>().unwrap()));
        assert!(parse_range("10.1.2.3").unwrap().contains(&"10.1.2.3".parse::<IpAddr>().unwrap()));
        assert!(parse_range("10.0.0.0/33").is_err());
        assert!(parse_range("nonsense").is_err());
    }

    #[test]
    fn both_spellings_of_an_ipv4_address_are_one_address() {
        let mapped = GOOD
            .replace("name: web", "name: web-mapped")
            .replace("10.96.0.10", "\"::ffff:10.96.0.10\"")
            .replace("10.1.0.12", "\"::ffff:10.96.0.10\"");
        let errors =
            check(&[("a.yaml", GOOD), ("b.yaml", &mapped)], &Policy::default()).unwrap_err();
        assert_eq!(
            errors,
            [
                "b.yaml:6:30: spec.ports[0].port: 10.96.0.10:80/TCP is claimed by service `web` (a.yaml:3)",
                "b.yaml:9:17: spec.backends[1].address: backend 10.96.0.10 is the VIP of service `web`: a backend must be a real address",
            ]
        );
        // A mapped backend of an IPv4 VIP is IPv4, as the maps store it.
        let mixed = GOOD.replace("10.1.0.12", "\"::ffff:10.1.0.12\"");
        let services = check(&[("web.yaml", &mixed)], &Policy::default()).unwrap();
        assert_eq!(services[0].service.spec.backends[1].address.to_string(), "10.1.0.12");
    }

    #[test]
    fn vips_in_reserved_ranges_and_on_this_node_are_refused() {
        for (vip, class) in [
            ("127.0.0.1", "a loopback address"),
            ("0.0.0.0", "the unspecified address"),
            ("0.1.2.3", "in 0.0.0.0/8"),
            ("255.255.255.255", "the broadcast address"),
            ("224.0.0.251", "a multicast address"),
            ("169.254.169.254", "a link-local address"),
            ("\"::ffff:127.0.0.1\"", "a loopback address"),
        ] {
            let text = GOOD.replace("10.96.0.10", vip);
            let errors = check(&[("web.yaml", &text)], &Policy::default()).unwrap_err();
            assert_eq!(errors.len(), 1, "{vip}: {errors:?}");
            assert!(
                errors[0].starts_with("web.yaml:5:8: spec.vip: service `web`: VIP "),
                "{errors:?}"
            );
            assert!(errors[0].contains(class), "{vip}: {errors:?}");
        }
        for (vip, class) in [
            ("\"::1\"", "the loopback address"),
            ("\"::\"", "the unspecified address"),
            ("\"ff02::1\"", "a multicast address"),
            ("\"fe80::1\"", "a link-local address"),
        ] {
            let text = GOOD
                .replace("10.96.0.10", vip)
                .replace("10.1.0.11", "\"fd00::11\"")
                .replace("10.1.0.12", "\"fd00::12\"");
            let errors = check(&[("web.yaml", &text)], &Policy::default()).unwrap_err();
            assert_eq!(errors.len(), 1, "{vip}: {errors:?}");
            assert!(errors[0].contains(class), "{vip}: {errors:?}");
        }
        let policy = Policy {
            local_addresses: vec![LocalAddress {
                address: "10.96.0.10".parse().unwrap(),
                interface: "eth0".into(),
            }],
            ..Policy::default()
        };
        let errors = check(&[("web.yaml", GOOD)], &policy).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("an address of this node (interface eth0)"), "{errors:?}");
        // Backends on loopback are fine (a local proxy); unspecified and multicast are not.
        let text = GOOD.replace("10.1.0.11", "127.0.0.1").replace("10.1.0.12", "224.0.0.1");
        let errors = check(&[("web.yaml", &text)], &Policy::default()).unwrap_err();
        assert_eq!(
            errors,
            ["web.yaml:9:17: spec.backends[1].address: backend 224.0.0.1 is a multicast address (224.0.0.0/4), not a host to connect to"]
        );
    }

    #[test]
    fn a_fractional_integer_is_reported_at_its_field() {
        let text = GOOD.replace("weight: 2", "weight: 1.0");
        let errors = check(&[("web.yaml", &text)], &Policy::default()).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("web.yaml:9:36: spec.backends[1].weight: "), "{errors:?}");
        assert!(errors[0].contains("1.0"), "{errors:?}");
    }

    #[test]
    fn unreadable_files_are_diagnostics_and_the_count_is_bounded() {
        let snapshot = Snapshot {
            problems: vec![crate::source::FileProblem {
                path: "link.yaml".into(),
                message: "a symbolic link, which reconciler does not follow".into(),
            }],
            ..Snapshot::default()
        };
        let errors = validate(&snapshot, &Policy::default()).unwrap_err();
        assert_eq!(
            errors[0].to_string(),
            "link.yaml:1:1: a symbolic link, which reconciler does not follow"
        );

        let many: String = (0..3000).map(|i| format!("x{i}: 1\n")).collect::<String>();
        let docs = many.lines().map(|l| format!("---\n{l}\n")).collect::<String>();
        let errors = check(&[("many.yaml", &docs)], &Policy::default()).unwrap_err();
        assert_eq!(errors.len(), limits::MAX_DIAGNOSTICS);
        assert!(
            errors.last().unwrap().contains("more problem(s) from here on"),
            "{:?}",
            errors.last()
        );
    }
}
