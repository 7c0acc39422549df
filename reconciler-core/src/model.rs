//! Service definitions as people write them: `apiVersion: reconciler.dev/v1alpha1`,
//! `kind: Service`. `validate` reads them from YAML; the schema admits exactly these fields.
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

// The data plane's own enums: their serde names are the YAML spellings.
use crate::state::{frontend_label, Algorithm, BackendState, Client, Protocol};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(deserialize_with = "canonical_ip")]
    pub vip: IpAddr,
    pub ports: Vec<Port>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    #[serde(default)]
    pub session_affinity: Option<SessionAffinity>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default)]
    pub slow_start: Option<SlowStart>,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub topology: Option<Topology>,
    /// The nodes the service is on; none: every node.
    #[serde(default)]
    pub node_selector: Option<crate::selector::NodeSelector>,
    /// Another service whose healthy backends take the connects while no backend of this one
    /// is healthy.
    #[serde(default)]
    pub fallback: Option<String>,
}

/// How the daemon probes each backend (`spec.healthCheck`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(default)]
    pub protocol: HealthProtocol,
    /// Defaults to each backend's target port.
    #[serde(default)]
    pub port: Option<u16>,
    /// `http` only.
    #[serde(default)]
    pub path: Option<String>,
    /// `http` only; default: any 2xx or 3xx.
    #[serde(default)]
    pub expect_status: Option<u16>,
    #[serde(default = "five")]
    pub interval_seconds: u32,
    #[serde(default = "thousand")]
    pub timeout_millis: u32,
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
    #[serde(default = "one")]
    pub healthy_threshold: u32,
    /// Intervals a backend that comes back is held out for, per ejection before the last
    /// (Envoy's base ejection time, in intervals); 0: no hold-down.
    #[serde(default = "five")]
    pub ejection_intervals: u32,
}

/// How the daemon ejects a backend whose TCP connections fail (`spec.outlierDetection`), with
/// Envoy's semantics, judged by what the kernel saw of the clients' own connections (the
/// `flows` program), not by probes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Failed connects in a row that eject a backend.
    #[serde(default = "five")]
    pub consecutive_failures: u32,
    /// How often the daemon looks.
    #[serde(default = "ten")]
    pub interval_seconds: u32,
    /// An ejection lasts this times the times the backend was ejected (at most 300 s).
    #[serde(default = "thirty")]
    pub base_ejection_seconds: u32,
    /// Never more than this share of a service's backends out at once (rounded down; at
    /// least one backend always stays).
    #[serde(default = "fifty")]
    pub max_ejection_percent: u32,
}

/// How a backend that joins ramps up to its weight (`spec.slowStart`): the daemon's overlay
/// grows its share of the slots step by step (`ramp`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SlowStart {
    /// From 5% of its weight to all of it, in steps of 5%.
    #[serde(default = "sixty")]
    pub window_seconds: u32,
}

/// How the daemon rolls out a change of a service's backends (`spec.rollout`): step by step,
/// each step's share of new connections to the new backends, the rest to the previous
/// revision's, aborted when too many of the new backends' connects fail.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rollout {
    /// Percentages of new connections for the new backends, rising (100 ends it, added if
    /// missing).
    #[serde(default = "rollout_steps")]
    pub steps: Vec<u8>,
    #[serde(default = "sixty")]
    pub step_seconds: u32,
    /// Failed connects to the new backends, in percent of theirs over a step, that abort.
    #[serde(default = "five")]
    pub max_failure_percent: u32,
}

/// Where new connections go by zone (`spec.topology`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Topology {
    pub mode: TopologyMode,
    /// Usable backends in the node's zone below which every zone's take connects.
    #[serde(default = "two")]
    pub min_backends: u32,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub enum TopologyMode {
    /// The node's zone's backends while at least `minBackends` of them are usable.
    PreferZone,
}

fn two() -> u32 {
    2
}

fn rollout_steps() -> Vec<u8> {
    vec![10, 25, 50, 100]
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HealthProtocol {
    /// A TCP connect that succeeds.
    #[default]
    Tcp,
    /// `GET path` answered with `expectStatus` (or any 2xx/3xx).
    Http,
}

fn five() -> u32 {
    5
}

fn ten() -> u32 {
    10
}

fn thirty() -> u32 {
    30
}

fn fifty() -> u32 {
    50
}

fn sixty() -> u32 {
    60
}

fn thousand() -> u32 {
    1000
}

fn three() -> u32 {
    3
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// Defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
}

/// An address in the form the maps store it: `::ffff:a.b.c.d` is read as `a.b.c.d`, so two
/// spellings of one address are never two services or a backend that slips past a rule.
fn canonical_ip<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    IpAddr::deserialize(deserializer).map(|ip| ip.to_canonical())
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    #[serde(deserialize_with = "canonical_ip")]
    pub address: IpAddr,
    /// Overrides every port's `targetPort` for this backend.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub state: BackendState,
    /// The zone it runs in, for `spec.topology`.
    #[serde(default)]
    pub zone: Option<String>,
}

impl Service {
    /// The name of the frontend on `port`, as plans and metrics show it: `name/port-name`,
    /// or `name/80` for an unnamed port.
    pub fn label(&self, port: &Port) -> String {
        let port = port.name.clone().unwrap_or_else(|| port.port.to_string());
        frontend_label(&self.metadata.name, &port)
    }
}

impl Backend {
    /// Whether it takes new clients by itself: active, with a weight (the daemon's ramps,
    /// rollouts and ejections judge these).
    pub fn takes_clients(&self) -> bool {
        self.state == BackendState::Active && self.weight > 0
    }

    /// Where this backend is reached for `port`: its address, and its own port, else the
    /// port's `targetPort`, else the port itself.
    pub fn address_for(&self, port: &Port) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.address, self.port.or(port.target_port).unwrap_or(port.port))
    }
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancing {
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Maglev only: what identifies a client.
    #[serde(default)]
    pub client: Option<Client>,
    /// Maglev only: the table size, a prime; see `compile::table_size` for the default.
    #[serde(default)]
    pub table_size: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SessionAffinity {
    pub timeout_seconds: u32,
    #[serde(default)]
    pub client: Client,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_example_with_defaults() {
        let value = serde_json::json!({
            "apiVersion": "reconciler.dev/v1alpha1",
            "kind": "Service",
            "metadata": {"name": "web", "labels": {"team": "web"}},
            "spec": {
                "vip": "10.96.0.10",
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                "backends": [
                    {"address": "10.1.0.11"},
                    {"address": "10.1.0.12", "port": 9090, "weight": 3, "state": "draining"}
                ],
                "loadBalancing": {"algorithm": "random"},
                "sessionAffinity": {"timeoutSeconds": 300}
            }
        });
        let service: Service = serde_json::from_value(value).unwrap();
        let spec = &service.spec;
        assert_eq!(spec.ports[0].target_port, Some(8080));
        assert_eq!(spec.backends[0].weight, 1);
        assert_eq!(spec.backends[0].state, BackendState::Active);
        assert_eq!(spec.backends[1].state, BackendState::Draining);
        assert_eq!(
            spec.session_affinity,
            Some(SessionAffinity { timeout_seconds: 300, client: Client::Cgroup })
        );
        assert_eq!(spec.load_balancing.client, None);
    }
}
