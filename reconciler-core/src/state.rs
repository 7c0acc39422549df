//! The data plane's content as typed Rust values. Desired state (compiled from service
//! definitions) and live state (read from the maps) are both a [`MapState`], so one diff
//! (`diff`) serves plan, apply, drift and crash repair.
//!
//! The vocabulary the maps and the definitions share (protocols, algorithms, clients, backend
//! states, frontend names) is defined here, at the bottom of the crate: `model` reads it
//! from YAML, and nothing here imports another module of the crate.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use reconciler_common::{Addr, PROTO_TCP, PROTO_UDP};

/// Where the data plane's maps are pinned unless told otherwise.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/reconciler";

/// A transport protocol a service listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The protocol's number in the maps (IPPROTO_*).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    pub fn from_number(number: u8) -> Option<Self> {
        match number {
            PROTO_TCP => Some(Protocol::Tcp),
            PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// What a client connects to: a VIP, a port and a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", SocketAddr::new(self.vip, self.port), self.protocol)
    }
}

/// A frontend's name as the names map holds it: `service/port`, the port by its name or
/// number (see `model::Service::label`).
pub fn frontend_label(service: &str, port: &str) -> String {
    format!("{service}/{port}")
}

/// A frontend's name split back into (service, port name): the inverse of
/// [`frontend_label`].
pub fn split_label(label: &str) -> Option<(&str, &str)> {
    label.rsplit_once('/')
}

/// How a backend is chosen for a new connection.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum Algorithm {
    /// A random slot per connect (per socket for `sendto()` on an unconnected socket).
    #[default]
    Random,
    /// The client's slot of the service's Maglev table (`reconciler_common::maglev`).
    Maglev,
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::Random => "random",
            Algorithm::Maglev => "maglev",
        })
    }
}

/// What identifies a client, for Maglev and for session affinity.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum Client {
    /// The cgroup v2 ID of the connecting process: one container or systemd service.
    #[default]
    Cgroup,
    /// The socket's network namespace cookie: one pod (Kubernetes' `ClientIP` affinity).
    Netns,
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Client::Cgroup => "cgroup",
            Client::Netns => "netns",
        })
    }
}

/// Whether a backend takes new clients (Kubernetes' terminating-endpoint semantics).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum BackendState {
    /// Takes new clients.
    #[default]
    Active,
    /// Keeps its clients (affinity, open connections); takes new ones only while its
    /// service has no active backend, so a rolling restart never empties a service.
    Draining,
    /// Takes nothing: affinity to it is dropped and its connected UDP sockets destroyed.
    Maintenance,
    /// Taken out like `Maintenance` by the daemon's health checks, not by git (the schema
    /// refuses it in definitions).
    Unhealthy,
}

impl BackendState {
    /// Whether the backend keeps (affinity) or takes clients: active or draining.
    pub fn takes_clients(self) -> bool {
        matches!(self, BackendState::Active | BackendState::Draining)
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Maintenance => "maintenance",
            BackendState::Unhealthy => "unhealthy",
        })
    }
}

/// A frontend's entry: its stable ID, how many selection slots it has, and how a backend is
/// chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub id: u32,
    /// 0 when no backend is usable: connects are refused. With Maglev, the table size.
    pub slot_count: u32,
    pub algorithm: Algorithm,
    /// What a Maglev service hashes (ignored by `random`).
    #[serde(default)]
    pub maglev_client: Client,
    /// 0: no session affinity.
    pub affinity_timeout_secs: u32,
    /// What affinity entries are keyed by (ignored without affinity).
    #[serde(default)]
    pub affinity_client: Client,
}

/// A backend: where connects go, which service it belongs to, and whether it takes clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendEntry {
    pub addr: SocketAddr,
    pub service_id: u32,
    #[serde(default)]
    pub state: BackendState,
}

/// The content of one map set plus the (unversioned) service names. Serialised (in saved
/// plans) with every map as a list of `[key, value]` pairs, since JSON keys are strings.
/// Two are equal when the maps hold the same (`PartialEq` below), whatever they say for people.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MapState {
    #[serde(with = "as_pairs")]
    pub services: BTreeMap<Frontend, ServiceEntry>,
    /// (service ID, slot) -> backend ID.
    #[serde(with = "as_pairs")]
    pub slots: BTreeMap<(u32, u32), u32>,
    /// Backend ID -> backend.
    #[serde(with = "as_pairs")]
    pub backends: BTreeMap<u32, BackendEntry>,
    /// Service ID -> name.
    #[serde(with = "as_pairs")]
    pub names: BTreeMap<u32, String>,
    /// The backends the daemon took out, each of one service (`HEALTH_EXCLUDED`), for a
    /// failed health check or an ejection: an overlay on the definitions that the data plane
    /// records, so a plan made by hand keeps it, and a restart starts from it.
    #[serde(default)]
    pub health_excluded: BTreeSet<Exclusion>,
    /// Of `health_excluded`, those outlier detection ejected (the rest failed their checks).
    #[serde(default)]
    pub ejected: BTreeSet<Exclusion>,
    /// The backends ramping up after they joined (slow start), each of one service, with
    /// their share of their weight in thousandths (`HEALTH_EXCLUDED` too).
    #[serde(default, with = "as_pairs")]
    pub ramps: BTreeMap<Exclusion, u16>,
    /// The services (labels) the daemon is rolling out a change of backends of: how far, and
    /// the backends of the revision before (`HEALTH_EXCLUDED` too).
    #[serde(default)]
    pub blends: BTreeMap<String, Blend>,
    /// The backends `spec.topology` chose, for people: by service label, which zone's (not
    /// in the maps, whose slots are what they hold; not kept in memos or saved plans, whose
    /// binary form has no room for a field left out).
    #[serde(skip)]
    pub topology: BTreeMap<String, String>,
    /// The weights of Maglev backends (by backend ID), for people: the maps hold their slots
    /// only (not kept in memos or saved plans, like `topology`).
    #[serde(skip)]
    pub weights: BTreeMap<u32, u32>,
}

/// What the maps hold, compared: not `topology` and `weights`, which are for people (a state
/// read back from the maps has neither, and is the state an apply wrote all the same).
impl PartialEq for MapState {
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
            && self.slots == other.slots
            && self.backends == other.backends
            && self.names == other.names
            && self.health_excluded == other.health_excluded
            && self.ejected == other.ejected
            && self.ramps == other.ramps
            && self.blends == other.blends
    }
}

impl Eq for MapState {}

/// A service's rollout in progress (the daemon's, recorded in `HEALTH_EXCLUDED`): `percent` of
/// new connections to the definitions' backends, the rest to `previous` (address, weight:
/// the revision before's backends that took clients, in address order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blend {
    pub percent: u8,
    pub previous: Vec<(SocketAddr, u32)>,
}

/// A backend that a service's health check took out of that service: (the service's label,
/// `name/port`; the backend's address). A backend several services list is judged by each
/// one's own check.
pub type Exclusion = (String, SocketAddr);

/// The daemon's overlay on the definitions: the backends it takes out, each of one service,
/// and of those the ones outlier detection ejected (the rest fail their health checks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlay {
    pub excluded: BTreeSet<Exclusion>,
    pub ejected: BTreeSet<Exclusion>,
    /// Backends ramping up (slow start), with their share of their weight in thousandths.
    pub ramps: BTreeMap<Exclusion, u16>,
    /// Rollouts in progress, by service label.
    pub blends: BTreeMap<String, Blend>,
    /// This node's zone, for `spec.topology`.
    pub zone: Option<String>,
}

impl Overlay {
    /// The overlay of the backends failing their checks (`failing`) and those ejected: out
    /// while either says so.
    pub fn of(failing: BTreeSet<Exclusion>, ejected: BTreeSet<Exclusion>) -> Overlay {
        let mut excluded = failing;
        excluded.extend(ejected.iter().cloned());
        Overlay { excluded, ejected, ..Overlay::default() }
    }

    /// The overlay `state` records, with the exclusions `excluded` instead of its own.
    pub fn recorded_in(state: &MapState, excluded: &BTreeSet<Exclusion>) -> Overlay {
        let (ejected, ramps, blends) =
            (state.ejected.clone(), state.ramps.clone(), state.blends.clone());
        Overlay { excluded: excluded.clone(), ejected, ramps, blends, zone: None }
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.excluded.is_empty() && self.ramps.is_empty() && self.blends.is_empty()
    }
}

/// The backends of `excluded` taken out of the service labelled `label`.
pub fn excluded_of(excluded: &BTreeSet<Exclusion>, label: &str) -> BTreeSet<SocketAddr> {
    // The least address of all: tuples sort by label first, then address (V4 before V6).
    let least = SocketAddr::from(([0, 0, 0, 0], 0));
    excluded
        .range((label.to_owned(), least)..)
        .take_while(|(l, _)| l == label)
        .map(|(_, addr)| *addr)
        .collect()
}

mod as_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(deserializer)?.into_iter().collect())
    }
}

impl MapState {
    /// Every VIP address (`VIPS`): the addresses of the frontends, of any port and protocol.
    /// Derived from `services`, so it is never out of step with them.
    pub fn vips(&self) -> BTreeSet<IpAddr> {
        self.services.keys().map(|frontend| frontend.vip).collect()
    }

    /// Of `health_excluded`, those out for failing their health checks (not ejected).
    pub fn failing_checks(&self) -> impl Iterator<Item = &Exclusion> {
        self.health_excluded.difference(&self.ejected)
    }

    /// The entries of the services named in `names` (by the service part of their frontend
    /// names), with no health exclusions.
    pub fn of_services(&self, names: &BTreeSet<&str>) -> MapState {
        self.restricted(&self.ids_named(names))
    }

    /// The service IDs whose frontend names name one of `names`.
    pub fn ids_named(&self, names: &BTreeSet<&str>) -> BTreeSet<u32> {
        let named = |label: &String| split_label(label).is_some_and(|(n, _)| names.contains(n));
        self.names.iter().filter(|(_, label)| named(label)).map(|(id, _)| *id).collect()
    }

    /// The entries of service IDs `ids`, with no health exclusions (packed, as below).
    pub fn restricted(&self, ids: &BTreeSet<u32>) -> MapState {
        MapState {
            services: copied_where(&self.services, |_, s| ids.contains(&s.id)),
            slots: copied_where(&self.slots, |(id, _), _| ids.contains(id)),
            backends: copied_where(&self.backends, |_, b| ids.contains(&b.service_id)),
            names: copied_where(&self.names, |id, _| ids.contains(id)),
            health_excluded: BTreeSet::new(),
            ejected: BTreeSet::new(),
            ramps: BTreeMap::new(),
            blends: BTreeMap::new(),
            topology: BTreeMap::new(),
            weights: copied_where(&self.weights, |id, _| {
                self.backends.get(id).is_some_and(|b| ids.contains(&b.service_id))
            }),
        }
    }

    /// A copy whose ordered maps are built in bulk from their sorted entries, so every node
    /// is full: maps grown by inserts in key order leave their nodes half empty, and a copy
    /// kept for long (the memo's record: 220 000 entries for 10 000 services) costs twice the
    /// memory it needs.
    pub fn packed(&self) -> MapState {
        MapState {
            services: copied_where(&self.services, |_, _| true),
            slots: copied_where(&self.slots, |_, _| true),
            backends: copied_where(&self.backends, |_, _| true),
            names: copied_where(&self.names, |_, _| true),
            health_excluded: self.health_excluded.clone(),
            ejected: self.ejected.clone(),
            ramps: self.ramps.clone(),
            blends: self.blends.clone(),
            topology: self.topology.clone(),
            weights: self.weights.clone(),
        }
    }

    /// `self` with the entries of `before` replaced by those of `after` (an incremental
    /// apply's result).
    pub fn replaced(mut self, before: &MapState, after: &MapState) -> MapState {
        fn replace<K: Ord + Clone, V: Clone>(
            map: &mut BTreeMap<K, V>,
            before: &BTreeMap<K, V>,
            after: &BTreeMap<K, V>,
        ) {
            for key in before.keys() {
                map.remove(key);
            }
            map.extend(after.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        replace(&mut self.services, &before.services, &after.services);
        replace(&mut self.slots, &before.slots, &after.slots);
        replace(&mut self.backends, &before.backends, &after.backends);
        replace(&mut self.names, &before.names, &after.names);
        self
    }
}

/// The entries of `map` that `keep` keeps, in a map built in bulk (`collect` of sorted
/// entries fills every node).
fn copied_where<K: Ord + Clone, V: Clone>(
    map: &BTreeMap<K, V>,
    keep: impl Fn(&K, &V) -> bool,
) -> BTreeMap<K, V> {
    map.iter().filter(|(k, v)| keep(k, v)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// An address as the programs key it: IPv6 words, IPv4 as its IPv4-mapped IPv6 form.
pub fn addr_to_words(ip: IpAddr) -> Addr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let octets = v6.octets();
    let mut words = [0u32; 4];
    for (word, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}
