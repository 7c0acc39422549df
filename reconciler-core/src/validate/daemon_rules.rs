//! The rules of what the daemon itself does to backends, which a schema cannot say: health
//! checks that reach the backends and never the node itself, outlier detection, which judges
//! TCP connections only, slow start and rollouts, and which nodes a service is on. One
//! function per rule, run by `rules` for each service.
use std::net::IpAddr;

use super::{
    diagnostic::{fields_only_for, Diagnostic, Located},
    policy::Policy,
};
use crate::{
    model::HealthProtocol,
    state::{Algorithm, Protocol},
};

/// Every rule of this module over `located`.
pub(super) fn check(located: &Located, policy: &Policy, out: &mut Vec<Diagnostic>) {
    http_only_fields(located, out);
    health_check_reaches(located, out);
    health_check_targets(located, policy, out);
    outlier_detection_sees_tcp(located, out);
    slow_start_ramps_random(located, out);
    rollout_steps_rise(located, out);
    node_selector_requirements(located, out);
}

fn http_only_fields(located: &Located, out: &mut Vec<Diagnostic>) {
    let Some(check) = &located.service.spec.health_check else { return };
    if check.protocol != HealthProtocol::Http {
        let given =
            [("path", check.path.is_some()), ("expectStatus", check.expect_status.is_some())];
        let only = "`protocol: http` health checks only";
        fields_only_for(located, "/spec/healthCheck", &given, only, out);
    }
}

/// A `tcp`/`http` check connects over TCP: on a service of UDP ports only, it must name a
/// TCP port (`healthCheck.port`), or it probes a port the backends do not answer on.
fn health_check_reaches(located: &Located, out: &mut Vec<Diagnostic>) {
    let spec = &located.service.spec;
    let Some(check) = &spec.health_check else { return };
    if check.port.is_none() && spec.ports.iter().all(|p| p.protocol == Protocol::Udp) {
        let message = "a health check connects over TCP to each backend's target port, and \
                       this service has UDP ports only: set healthCheck.port to a TCP port its \
                       backends answer on";
        out.push(located.diagnostic("/spec/healthCheck", message));
    }
}

/// Health checks go only where a backend may be, and not to this node itself: never to a
/// link-local address (169.254.0.0/16 holds cloud metadata); to a loopback or node address
/// only when `policy.allowLocalHealthChecks` lists it (else a commit could have the root
/// daemon send requests to the node's own services).
fn health_check_targets(located: &Located, policy: &Policy, out: &mut Vec<Diagnostic>) {
    if located.service.spec.health_check.is_none() {
        return;
    }
    for (i, backend) in located.service.spec.backends.iter().enumerate() {
        let address = backend.address;
        let allowed = || policy.allow_local_health_checks.iter().any(|r| r.contains(&address));
        let local =
            address.is_loopback() || policy.local_addresses.iter().any(|l| l.address == address);
        let problem = if is_link_local(address) {
            "is link-local: a health check is never sent there".to_owned()
        } else if local && !allowed() {
            "is this node's own (loopback or an interface's): a health check is sent there \
             only if policy.allowLocalHealthChecks (--allow-local-health-checks) lists it"
                .to_owned()
        } else {
            continue;
        };
        out.push(located.diagnostic(
            &format!("/spec/backends/{i}/address"),
            format!("backend {address} {problem}"),
        ));
    }
}

fn is_link_local(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Outlier detection counts the TCP connections the kernel saw fail: a service of UDP ports
/// only would never have a backend judged.
fn outlier_detection_sees_tcp(located: &Located, out: &mut Vec<Diagnostic>) {
    let spec = &located.service.spec;
    if spec.outlier_detection.is_some() && spec.ports.iter().all(|p| p.protocol == Protocol::Udp) {
        let message = "outlier detection judges a backend by the TCP connections to it that fail, \
                       and this service has UDP ports only: use a health check";
        out.push(located.diagnostic("/spec/outlierDetection", message));
    }
}

/// Slow start grows a backend's share of the slots; a Maglev table's slots are its clients,
/// so each step would move clients from the other backends, and back when the ramp ends.
fn slow_start_ramps_random(located: &Located, out: &mut Vec<Diagnostic>) {
    let spec = &located.service.spec;
    if spec.slow_start.is_some() && spec.load_balancing.algorithm == Algorithm::Maglev {
        let message = "slow start grows a joining backend's share of the slots step by step, \
                       and with `maglev` the slots are clients: every step would move clients \
                       between backends (the table moves), and again when the ramp ends; use \
                       `algorithm: random` with slowStart, or no slowStart";
        out.push(located.diagnostic("/spec/slowStart", message));
    }
}

/// A rollout's steps are shares of new connections that only grow.
fn rollout_steps_rise(located: &Located, out: &mut Vec<Diagnostic>) {
    let Some(rollout) = &located.service.spec.rollout else { return };
    if let Some(i) = rollout.steps.windows(2).position(|pair| pair[1] <= pair[0]) {
        let message = format!(
            "each step must give the new backends more of the new connections than the one \
             before: {} after {}",
            rollout.steps[i + 1],
            rollout.steps[i]
        );
        out.push(located.diagnostic(&format!("/spec/rollout/steps/{}", i + 1), message));
    }
}

/// `matchExpressions` as Kubernetes takes them: values for `In`/`NotIn`, none for the others.
fn node_selector_requirements(located: &Located, out: &mut Vec<Diagnostic>) {
    let Some(selector) = &located.service.spec.node_selector else { return };
    for (i, requirement) in selector.match_expressions.iter().enumerate() {
        if let Some(problem) = requirement.problem() {
            let pointer = format!("/spec/nodeSelector/matchExpressions/{i}/operator");
            out.push(located.diagnostic(&pointer, problem));
        }
    }
}
