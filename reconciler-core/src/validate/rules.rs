//! The rules across documents and files, which a schema cannot say: names and frontends
//! unique, VIPs and backends real addresses of one family, fields that apply to one algorithm
//! or protocol only, fallbacks, and the data plane's capacities. One function per rule; the
//! policy they follow is [`Policy`].
use std::{
    collections::{hash_map::Entry, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use reconciler_common::{maglev, MAX_SLOTS};

use super::{
    daemon_rules,
    diagnostic::{fields_only_for, Diagnostic, Located},
    policy::Policy,
};
use crate::{
    compile::{self, CompileError, BACKEND_CAPACITY, SERVICE_CAPACITY},
    failover::{self, Need},
    state::{Algorithm, Protocol},
};

/// Every rule over every service of `services`, in their order: of two services that
/// collide, the later one is reported.
pub(super) fn semantic_diagnostics(
    services: &[Located],
    policy: &Policy,
    out: &mut Vec<Diagnostic>,
) {
    let mut seen = Seen::new(services);
    for located in services {
        unique_name(located, &mut seen.names, out);
        vip_not_reserved(located, out);
        vip_not_local(located, policy, out);
        vip_in_allowed_ranges(located, policy, out);
        unique_port_names(located, out);
        unclaimed_frontends(located, &mut seen.frontends, out);
        backend_families(located, out);
        unicast_backends(located, out);
        backends_not_vips(located, &seen.vips, out);
        backends_listed_once(located, out);
        maglev_table_size(located, out);
        maglev_only_fields(located, out);
        valid_fallback(located, &seen.by_name, out);
        daemon_rules::check(located, policy, out);
        let slots = compile::slots_needed(&located.service.spec);
        slots_per_service(located, slots, out);
        let limits = Limits::of(policy);
        capacities(located, &seen.by_name, &limits, &mut seen.totals, out);
    }
    failover_capacities(&seen.totals, &Limits::of(policy), out);
}

/// What the rules remember across services. Hash maps: the rules run over every service of
/// the repository on every plan, the incremental one included; which entry is "first"
/// follows the services' order.
struct Seen<'a> {
    /// The first service of each name so far.
    names: HashMap<&'a str, &'a Located>,
    /// The first service of each frontend so far.
    frontends: HashMap<(IpAddr, u16, Protocol), &'a Located>,
    /// The first service of each VIP, of all services.
    vips: HashMap<IpAddr, &'a Located>,
    /// The first service of each name, of all services.
    by_name: HashMap<&'a str, &'a Located>,
    totals: Totals<'a>,
}

impl<'a> Seen<'a> {
    fn new(services: &'a [Located]) -> Self {
        Seen {
            names: HashMap::with_capacity(services.len()),
            frontends: HashMap::with_capacity(services.len()),
            // Reversed, so the first of each key is the one kept.
            vips: services.iter().rev().map(|l| (l.service.spec.vip, l)).collect(),
            by_name: services.iter().rev().map(|l| (l.service.metadata.name.as_str(), l)).collect(),
            totals: Totals::default(),
        }
    }
}

/// The data plane's entries the services so far need, and the capacities already reported
/// as exceeded (each once, at the service that exceeds it).
#[derive(Default)]
struct Totals<'a> {
    frontends: u64,
    backends: u64,
    slots: u64,
    /// Backends and slots if every service with a fallback lost its own backends at once.
    failover: Need,
    /// The services whose fallback adds to their needs, with what it adds.
    failing_over: Vec<(&'a Located, Need)>,
    reported: BTreeSet<&'static str>,
}

/// The entries the data plane holds: the node's capacity, else the most any node can have.
struct Limits {
    services: u64,
    backends: u64,
    slots: u64,
}

impl Limits {
    fn of(policy: &Policy) -> Limits {
        match policy.capacity {
            // IDs run from 1: one fewer service and backend fit than the maps' sizes.
            Some(c) => Limits {
                services: u64::from(c.services - 1),
                backends: u64::from(c.backends - 1),
                slots: u64::from(c.slots),
            },
            None => Limits {
                services: u64::from(SERVICE_CAPACITY),
                backends: u64::from(BACKEND_CAPACITY),
                slots: u64::from(MAX_SLOTS),
            },
        }
    }
}

fn unique_name<'a>(
    located: &'a Located,
    names: &mut HashMap<&'a str, &'a Located>,
    out: &mut Vec<Diagnostic>,
) {
    let name = &located.service.metadata.name;
    match names.entry(name) {
        Entry::Occupied(first) => {
            let first = *first.get();
            out.push(located.conflict(
                "/metadata/name",
                format!("service name `{name}` is already used at {}", first.origin()),
                first,
            ));
            out.push(first.conflict(
                "/metadata/name",
                format!("service name `{name}` is used again at {}", located.origin()),
                located,
            ));
        }
        Entry::Vacant(entry) => {
            entry.insert(located);
        }
    }
}

fn vip_not_reserved(located: &Located, out: &mut Vec<Diagnostic>) {
    let (service, vip) = (&located.service, located.service.spec.vip);
    if let Some(class) = reserved_class(vip) {
        out.push(located.diagnostic(
            "/spec/vip",
            format!(
                "service `{}`: VIP {} is {class}: a VIP must be an address that nothing \
                 else answers on",
                service.metadata.name, vip
            ),
        ));
    }
}

fn vip_not_local(located: &Located, policy: &Policy, out: &mut Vec<Diagnostic>) {
    let (service, vip) = (&located.service, located.service.spec.vip);
    if let Some(local) = policy.local_addresses.iter().find(|l| l.address == vip) {
        out.push(located.diagnostic(
            "/spec/vip",
            format!(
                "service `{}`: VIP {} is an address of this node (interface {}): every \
                 connect to it from the cgroup would be taken over; list it in \
                 policy.allowLocalVIPs (--allow-local-vips) if that is meant",
                service.metadata.name, vip, local.interface
            ),
        ));
    }
}

fn vip_in_allowed_ranges(located: &Located, policy: &Policy, out: &mut Vec<Diagnostic>) {
    let (service, vip) = (&located.service, located.service.spec.vip);
    let Some(ranges) = &policy.allowed_vips else { return };
    if !ranges.iter().any(|r| r.contains(&vip)) {
        let list: Vec<String> = ranges.iter().map(IpNet::to_string).collect();
        out.push(located.diagnostic(
            "/spec/vip",
            format!(
                "service `{}`: VIP {} is outside the allowed ranges ({})",
                service.metadata.name,
                vip,
                list.join(", ")
            ),
        ));
    }
}

fn unique_port_names(located: &Located, out: &mut Vec<Diagnostic>) {
    let mut port_names = BTreeSet::new();
    for (i, port) in located.service.spec.ports.iter().enumerate() {
        let Some(name) = &port.name else { continue };
        if !port_names.insert(name) {
            out.push(located.diagnostic(
                &format!("/spec/ports/{i}/name"),
                format!("port name `{name}` is used twice in this service"),
            ));
        }
    }
}

fn unclaimed_frontends<'a>(
    located: &'a Located,
    frontends: &mut HashMap<(IpAddr, u16, Protocol), &'a Located>,
    out: &mut Vec<Diagnostic>,
) {
    let spec = &located.service.spec;
    for (i, port) in spec.ports.iter().enumerate() {
        let protocol = port.protocol;
        let first = match frontends.entry((spec.vip, port.port, protocol)) {
            Entry::Occupied(first) => *first.get(),
            Entry::Vacant(entry) => {
                entry.insert(located);
                continue;
            }
        };
        let frontend = SocketAddr::new(spec.vip, port.port);
        let pointer = format!("/spec/ports/{i}/port");
        if std::ptr::eq(first, located) {
            let message = format!("{frontend}/{protocol} is claimed by this service already");
            out.push(located.diagnostic(&pointer, message));
            continue;
        }
        let (name, origin) = (&first.service.metadata.name, first.origin());
        let message = format!("{frontend}/{protocol} is claimed by service `{name}` ({origin})");
        out.push(located.conflict(&pointer, message, first));
        let claimed = |p: &crate::model::Port| p.port == port.port && p.protocol == protocol;
        let theirs = first.service.spec.ports.iter().position(claimed).unwrap_or(0);
        let (name, origin) = (&located.service.metadata.name, located.origin());
        let message =
            format!("{frontend}/{protocol} is claimed again by service `{name}` ({origin})");
        out.push(first.conflict(&format!("/spec/ports/{theirs}/port"), message, located));
    }
}

fn backend_families(located: &Located, out: &mut Vec<Diagnostic>) {
    let spec = &located.service.spec;
    for (i, backend) in spec.backends.iter().enumerate() {
        if backend.address.is_ipv4() != spec.vip.is_ipv4() {
            out.push(located.diagnostic(
                &format!("/spec/backends/{i}/address"),
                format!(
                    "backend {} is {} but the VIP {} is {}: one service uses one address family",
                    backend.address,
                    family(backend.address),
                    spec.vip,
                    family(spec.vip)
                ),
            ));
        }
    }
}

fn unicast_backends(located: &Located, out: &mut Vec<Diagnostic>) {
    for (i, backend) in located.service.spec.backends.iter().enumerate() {
        if let Some(class) = non_unicast_class(backend.address) {
            out.push(located.diagnostic(
                &format!("/spec/backends/{i}/address"),
                format!("backend {} is {class}, not a host to connect to", backend.address),
            ));
        }
    }
}

fn backends_not_vips(
    located: &Located,
    vips: &HashMap<IpAddr, &Located>,
    out: &mut Vec<Diagnostic>,
) {
    for (i, backend) in located.service.spec.backends.iter().enumerate() {
        if let Some(owner) = vips.get(&backend.address) {
            out.push(located.diagnostic(
                &format!("/spec/backends/{i}/address"),
                format!(
                    "backend {} is the VIP of service `{}`: a backend must be a real address",
                    backend.address, owner.service.metadata.name
                ),
            ));
        }
    }
}

fn backends_listed_once(located: &Located, out: &mut Vec<Diagnostic>) {
    let spec = &located.service.spec;
    let mut seen = BTreeSet::new();
    for (i, backend) in spec.backends.iter().enumerate() {
        // Compared where they are reached (`address_for`, as compile resolves them):
        // `{address: X}` and `{address: X, port: <targetPort>}` are one backend.
        if let Some((_, port)) = spec
            .ports
            .iter()
            .enumerate()
            .find(|(j, port)| !seen.insert((*j, backend.address_for(port))))
        {
            out.push(located.diagnostic(
                &format!("/spec/backends/{i}/address"),
                format!(
                    "backend {} is listed twice (for port {})",
                    backend.address_for(port),
                    port.port
                ),
            ));
        }
    }
}

fn maglev_table_size(located: &Located, out: &mut Vec<Diagnostic>) {
    let spec = &located.service.spec;
    let balancing = &spec.load_balancing;
    let (Algorithm::Maglev, Some(size)) = (balancing.algorithm, balancing.table_size) else {
        return;
    };
    let listed = u32::try_from(spec.backends.len()).unwrap_or(u32::MAX);
    if let Some(problem) = maglev::table_size_problem(size, listed) {
        out.push(
            located.diagnostic(
                "/spec/loadBalancing/tableSize",
                format!("table size {size} {problem}"),
            ),
        );
    }
}

fn maglev_only_fields(located: &Located, out: &mut Vec<Diagnostic>) {
    let balancing = &located.service.spec.load_balancing;
    if balancing.algorithm == Algorithm::Maglev {
        return;
    }
    let given =
        [("client", balancing.client.is_some()), ("tableSize", balancing.table_size.is_some())];
    let only = format!("`algorithm: maglev` only; this service is `{}`", balancing.algorithm);
    fields_only_for(located, "/spec/loadBalancing", &given, &only, out);
}

fn valid_fallback(located: &Located, by_name: &HashMap<&str, &Located>, out: &mut Vec<Diagnostic>) {
    let service = &located.service;
    let Some(fallback) = &service.spec.fallback else { return };
    if let Some(problem) = fallback_problem(by_name, &service.metadata.name, fallback) {
        out.push(located.diagnostic("/spec/fallback", problem));
    }
}

/// A `random` service's weights against the slots one service may have; a Maglev table's
/// size is checked by [`maglev_table_size`].
fn slots_per_service(located: &Located, slots: u64, out: &mut Vec<Diagnostic>) {
    let service = &located.service;
    if service.spec.load_balancing.algorithm != Algorithm::Random {
        return;
    }
    if let Err(CompileError::TooManySlots { slots, max, .. }) =
        compile::service_slot_capacity(&service.metadata.name, slots)
    {
        out.push(located.diagnostic(
            "/spec/backends",
            format!("the usable backends' weights add up to {slots}; at most {max} per service"),
        ));
    }
}

/// The entries of the services so far, this one's included, against what the data plane
/// holds; and what they would be if their fallbacks took over.
fn capacities<'a>(
    located: &'a Located,
    by_name: &HashMap<&str, &'a Located>,
    limits: &Limits,
    totals: &mut Totals<'a>,
    out: &mut Vec<Diagnostic>,
) {
    let service = &located.service;
    for port in &service.spec.ports {
        let lookup = |name: &str| by_name.get(name).map(|l| &*l.service);
        let (own, worst) = failover::worst_case(service, port, lookup);
        totals.frontends += 1;
        totals.backends += own.backends;
        totals.slots += own.slots;
        totals.failover.backends += worst.backends;
        totals.failover.slots += worst.slots;
        if worst != own {
            let adds =
                Need { slots: worst.slots - own.slots, backends: worst.backends - own.backends };
            totals.failing_over.push((located, adds));
        }
    }
    for (what, count, max) in [
        ("services (VIP, port, protocol)", totals.frontends, limits.services),
        ("backends (per port)", totals.backends, limits.backends),
        ("selection slots (weights, per port)", totals.slots, limits.slots),
    ] {
        if count > max && totals.reported.insert(what) {
            out.push(located.diagnostic(
                "",
                format!("with this service the repository defines {count} {what}; the data plane holds {max}"),
            ));
        }
    }
}

/// A repository that fits with every service on its own backends, but would not if the
/// services with a fallback lost theirs at once (their fallbacks taking over): refused at
/// the service whose failover adds the most, naming those that add.
fn failover_capacities(totals: &Totals, limits: &Limits, out: &mut Vec<Diagnostic>) {
    let backends: fn(&Need) -> u64 = |need| need.backends;
    let slots: fn(&Need) -> u64 = |need| need.slots;
    for (what, own, worst, max, adds) in [
        (
            "backends (per port)",
            totals.backends,
            totals.failover.backends,
            limits.backends,
            backends,
        ),
        ("selection slots", totals.slots, totals.failover.slots, limits.slots, slots),
    ] {
        if own > max || worst <= max {
            continue;
        }
        let mut adding: Vec<(&Located, u64)> = totals
            .failing_over
            .iter()
            .map(|(l, n)| (*l, adds(n)))
            .filter(|(_, a)| *a > 0)
            .collect();
        adding.sort_by_key(|a| std::cmp::Reverse(a.1));
        let Some(&(most, _)) = adding.first() else { continue };
        let mut names: Vec<String> = adding
            .iter()
            .take(5)
            .map(|(l, a)| format!("{} (+{a})", l.service.metadata.name))
            .collect();
        if adding.len() > 5 {
            names.push(format!("and {} more", adding.len() - 5));
        }
        out.push(most.diagnostic(
            "/spec/fallback",
            format!(
                "if the services with a fallback lost their backends at once, the repository \
                 would need {worst} {what}, {own} of its own and {} for failover ({}); the data \
                 plane holds {max}: give the fallbacks fewer backends or weights, or point fewer \
                 services at them",
                worst - own,
                names.join(", ")
            ),
        ));
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
