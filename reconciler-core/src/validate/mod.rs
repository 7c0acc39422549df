//! Validation: the JSON Schema (`schema/service.schema.json`, embedded) and the rules a
//! schema cannot say (names and VIPs unique across files, address families and ranges,
//! capacities). Every problem in every file is reported at once (up to
//! [`limits::MAX_DIAGNOSTICS`]), each with file, line, column and field.
//!
//! Addresses are compared in the one form the maps store: the model reads `::ffff:a.b.c.d`
//! as `a.b.c.d`, so two spellings of one address are one address here too.
//!
//! Here: reading the files into services. Diagnostics, and services with their place, are
//! in `diagnostic`; the schema check in `schema`; the rules across files (one function each)
//! and the policy they follow in `rules`.
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use ipnet::IpNet;

use crate::{
    limits,
    load::{self, Document, Position},
    model::Service,
    source::{Snapshot, SourceFile},
};

mod daemon_rules;
mod diagnostic;
mod policy;
mod rules;
mod schema;

pub use diagnostic::{at, Diagnostic, Located};
pub use policy::Policy;
use schema::SERVICE_SCHEMA;
pub use schema::{Schema, SCHEMA};

/// Text that [`parse_range`] does not read as a range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a CIDR range such as 10.96.0.0/12 or fd00:96::/64")]
pub struct RangeError {
    pub text: String,
}

/// Parses a CIDR range such as `10.96.0.0/12` or `fd00:96::/64`; a bare address is its own
/// range.
pub fn parse_range(text: &str) -> Result<IpNet, RangeError> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| RangeError { text: text.to_owned() })
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
    let mut found = Found::default();
    for problem in &snapshot.problems {
        found.diagnostics.push(at(&problem.path, START, "", problem.message.clone()));
    }
    let mut nodes = limits::MAX_NODES;
    for file in &snapshot.files {
        match &file.text {
            Some(text) => found.read(&file.path, text, &mut nodes).map_err(|d| vec![d])?,
            None => found.reuse(file, parsed),
        }
    }
    let Found { services, mut diagnostics } = found;
    rules::semantic_diagnostics(&services, policy, &mut diagnostics);
    if diagnostics.is_empty() {
        return Ok(services);
    }
    Err(reported(diagnostics))
}

/// What of `snapshot` loads, and every problem: the services of the files without one
/// (among which the rules across files hold), for a revision that is planned against even
/// though it is invalid (a pull request's base, which the pull request may repair).
pub fn validate_what_loads(
    snapshot: &Snapshot,
    policy: &Policy,
) -> (Vec<Located>, Vec<Diagnostic>) {
    let diagnostics = match validate(snapshot, policy) {
        Ok(services) => return (services, Vec::new()),
        Err(diagnostics) => diagnostics,
    };
    let mut refused: std::collections::BTreeSet<String> =
        diagnostics.iter().map(|d| d.file.clone()).collect();
    // Each round leaves out at least one more file, or ends.
    loop {
        let files = snapshot.files.iter().filter(|f| !refused.contains(&f.path)).cloned().collect();
        let rest = Snapshot { files, problems: Vec::new(), ..snapshot.clone() };
        match validate(&rest, policy) {
            Ok(services) => return (services, diagnostics),
            Err(more) => {
                let known = refused.len();
                refused.extend(more.into_iter().map(|d| d.file));
                if refused.len() == known {
                    return (Vec::new(), diagnostics);
                }
            }
        }
    }
}

/// Where a diagnostic about a whole file points.
const START: Position = Position { line: 1, column: 1 };

/// What the files read so far define: their services, and their problems.
#[derive(Default)]
struct Found {
    services: Vec<Located>,
    diagnostics: Vec<Diagnostic>,
}

impl Found {
    /// The services of `text` (the file at `path`), parsed within the `nodes` left; `Err`
    /// only when the embedded schema is broken.
    fn read(&mut self, path: &str, text: &str, nodes: &mut usize) -> Result<(), Diagnostic> {
        match load::parse_within(text, nodes) {
            Ok(documents) => {
                for document in documents {
                    self.read_document(path, document)?;
                }
            }
            Err(e) => self.diagnostics.push(at(path, e.position, "", e.message)),
        }
        Ok(())
    }

    /// The service of one `document` of the file at `path`, checked against the schema and
    /// read into the model.
    fn read_document(&mut self, path: &str, document: Document) -> Result<(), Diagnostic> {
        let problems = SERVICE_SCHEMA.check(path, &document)?;
        if !problems.is_empty() {
            self.diagnostics.extend(problems);
            return Ok(());
        }
        match serde_path_to_error::deserialize::<_, Service>(&document.value) {
            Ok(service) => {
                // The typed service is what is kept; of the document, only where its
                // nodes are (for diagnostics): the tree of values is most of its memory.
                let document = document.positions_only();
                let service = Arc::new(service);
                self.services.push(Located { service, file: path.to_owned(), document })
            }
            // What the schema admits but the model cannot hold, such as `weight: 1.0`
            // (a JSON Schema integer may be written with a fraction of zero).
            Err(e) => {
                let pointer = json_pointer(e.path());
                let position = document.value_position(&pointer);
                self.diagnostics.push(at(path, position, &pointer, e.inner().to_string()))
            }
        }
        Ok(())
    }

    /// The services of an unread `file` from `parsed`, by its blob id.
    fn reuse(&mut self, file: &SourceFile, parsed: &BTreeMap<String, Vec<Arc<Service>>>) {
        match file.blob.as_ref().and_then(|blob| parsed.get(blob)) {
            Some(known) => self.services.extend(known.iter().map(|service| Located {
                service: Arc::clone(service),
                file: file.path.clone(),
                document: Document::nowhere(),
            })),
            None => self.diagnostics.push(at(&file.path, START, "", "not read".into())),
        }
    }
}

/// `diagnostics` sorted, without duplicates, and at most [`limits::MAX_DIAGNOSTICS`] of them:
/// the last one says how many more there are.
fn reported(mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
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
    diagnostics
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{capacity::Capacity, node::LocalAddress};

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
                // A conflict at both places, each naming the other.
                "a.yaml:3:18: metadata.name: service name `web` is used again at b.yaml:3",
                "a.yaml:6:30: spec.ports[0].port: 10.96.0.10:80/TCP is claimed again by service `web` (b.yaml:3)",
                "b.yaml:3:18: metadata.name: service name `web` is already used at a.yaml:3",
                "b.yaml:6:30: spec.ports[0].port: 10.96.0.10:80/TCP is claimed by service `web` (a.yaml:3)",
                "b.yaml:9:17: spec.backends[1].address: backend 10.96.0.10 is the VIP of service `web`: a backend must be a real address",
            ]
        );
    }

    /// Sixteen services sharing one backend, each falling back to `f` (one backend of weight
    /// 65 536): 16 + 65 536 slots of their own, 17 × 65 536 if that backend dies.
    fn sixteen_falling_back_to_f() -> String {
        let mut text = String::new();
        for i in 1..=16 {
            text.push_str(&format!(
                "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {{name: s{i}}}\n\
                 spec:\n  vip: 10.96.0.{i}\n  ports: [{{port: 80}}]\n  fallback: f\n  \
                 backends: [{{address: 10.1.0.1}}]\n---\n"
            ));
        }
        text.push_str(
            "apiVersion: reconciler.dev/v1alpha1\nkind: Service\nmetadata: {name: f}\nspec:\n  \
             vip: 10.96.1.1\n  ports: [{port: 80}]\n  backends: [{address: 10.2.0.1, weight: 65536}]\n",
        );
        text
    }

    #[test]
    fn a_repository_whose_failover_could_overflow_the_capacity_is_refused_naming_services() {
        let text = sixteen_falling_back_to_f();
        let errors = check(&[("all.yaml", &text)], &Policy::default()).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "all.yaml:7:13: spec.fallback: if the services with a fallback lost their \
                 backends at once, the repository would need 1114112 selection slots, 65552 of \
                 its own and 1048560 for failover (s1 (+65535), s2 (+65535)"
            ),
            "{errors:?}"
        );
        assert!(errors[0].contains("and 11 more); the data plane holds 1048576"), "{errors:?}");
        // A node's own capacity counts where it is known.
        let small = Capacity { slots: 100_000, ..crate::capacity::DEFAULT };
        let eight: String = text.split("---\n").skip(8).collect::<Vec<_>>().join("---\n");
        assert!(check(&[("all.yaml", &eight)], &Policy::default()).is_ok());
        let policy = Policy { capacity: Some(small), ..Policy::default() };
        let errors = check(&[("all.yaml", &eight)], &policy).unwrap_err();
        assert!(errors[0].contains("the data plane holds 100000"), "{errors:?}");
    }

    #[test]
    fn health_checks_never_go_to_link_local_addresses_or_the_node_unless_allowed() {
        let checked =
            GOOD.replace("10.1.0.11", "169.254.169.254").replace("10.1.0.12", "127.0.0.1").replace(
                "  backends:",
                "  healthCheck: {protocol: http, path: /latest/meta-data}\n  backends:",
            );
        let errors = check(&[("web.yaml", &checked)], &Policy::default()).unwrap_err();
        assert_eq!(
            errors,
            [
                "web.yaml:9:17: spec.backends[0].address: backend 169.254.169.254 is link-local: a health check is never sent there",
                "web.yaml:10:17: spec.backends[1].address: backend 127.0.0.1 is this node's own (loopback or an interface's): a health check is sent there only if policy.allowLocalHealthChecks (--allow-local-health-checks) lists it",
            ]
        );
        let loopback = checked.replace("169.254.169.254", "10.1.0.11");
        let allowed = Policy {
            allow_local_health_checks: vec!["127.0.0.0/8".parse().unwrap()],
            ..Policy::default()
        };
        assert!(check(&[("web.yaml", &loopback)], &allowed).is_ok());
        // Without a check, a loopback backend is no probe target.
        assert!(check(
            &[("web.yaml", &GOOD.replace("10.1.0.12", "127.0.0.1"))],
            &Policy::default()
        )
        .is_ok());
    }

    #[test]
    fn a_health_check_of_a_udp_only_service_names_a_tcp_port() {
        let udp = GOOD
            .replace("port: 80,", "port: 53, protocol: UDP,")
            .replace("  backends:", "  healthCheck: {protocol: tcp}\n  backends:");
        let errors = check(&[("dns.yaml", &udp)], &Policy::default()).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("spec.healthCheck: a health check connects over TCP"),
            "{errors:?}"
        );
        let with_port = udp.replace("{protocol: tcp}", "{protocol: tcp, port: 8053}");
        assert!(check(&[("dns.yaml", &with_port)], &Policy::default()).is_ok());
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
                "a.yaml:6:30: spec.ports[0].port: 10.96.0.10:80/TCP is claimed again by service `web-mapped` (b.yaml:3)",
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
