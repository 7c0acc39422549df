//! The data plane's content as typed Rust values, and the entry-level changes between two
//! contents. Desired state (compiled from service definitions) and live state (read from the
//! maps) are both a [`MapState`], so one diff serves plan, apply, drift and crash repair.
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use reconciler_common::{
    ipv4_of_mapped, Addr, Backend, BackendKey, ServiceKey, ServiceName, ServiceValue, SlotKey,
    ALGORITHM_RANDOM, NAME_LEN, PROTO_TCP, PROTO_UDP,
};

/// A transport protocol a service listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub(crate) fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }

    fn from_number(number: u8) -> Option<Self> {
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

/// How a backend is chosen for a new connection.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum Algorithm {
    #[default]
    Random,
}

/// A frontend's entry: its stable ID and how many selection slots it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub id: u32,
    /// 0 when no backend is usable: connects are refused.
    pub slot_count: u32,
    pub algorithm: Algorithm,
    pub affinity_timeout_secs: u32,
}

/// A backend: where connects go, and which service it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendEntry {
    pub addr: SocketAddr,
    pub service_id: u32,
}

/// The content of one map set plus the (unversioned) service names. Serialised (in saved
/// plans) with every map as a list of `[key, value]` pairs, since JSON keys are strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// One map entry to write (`value: Some`) or delete (`value: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Service(Frontend, Option<ServiceEntry>),
    Slot((u32, u32), Option<u32>),
    Backend(u32, Option<BackendEntry>),
    Name(u32, Option<String>),
}

impl Change {
    /// Whether the entry lives in the versioned maps (written to both sets) or not.
    pub fn is_versioned(&self) -> bool {
        !matches!(self, Change::Name(..))
    }
}

impl MapState {
    /// The entry writes and deletes that turn `self` into `desired`, versioned maps first.
    pub fn changes_to(&self, desired: &MapState) -> Vec<Change> {
        let mut changes = Vec::new();
        diff_maps(&self.services, &desired.services, Change::Service, &mut changes);
        diff_maps(&self.slots, &desired.slots, Change::Slot, &mut changes);
        diff_maps(&self.backends, &desired.backends, Change::Backend, &mut changes);
        diff_maps(&self.names, &desired.names, Change::Name, &mut changes);
        changes
    }
}

fn diff_maps<K: Ord + Clone, V: PartialEq + Clone>(
    live: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    change: impl Fn(K, Option<V>) -> Change,
    out: &mut Vec<Change>,
) {
    for (key, value) in desired {
        if live.get(key) != Some(value) {
            out.push(change(key.clone(), Some(value.clone())));
        }
    }
    for key in live.keys() {
        if !desired.contains_key(key) {
            out.push(change(key.clone(), None));
        }
    }
}

// --- conversions between typed values and map entries --------------------------------------

pub(crate) fn addr_to_words(ip: IpAddr) -> Addr {
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

pub(crate) fn words_to_addr(words: &Addr) -> IpAddr {
    if let Some(ip4) = ipv4_of_mapped(words) {
        return IpAddr::from(ip4.to_ne_bytes());
    }
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(octets))
}

pub(crate) fn service_key(frontend: &Frontend, set: u8) -> ServiceKey {
    ServiceKey {
        addr: addr_to_words(frontend.vip),
        port: frontend.port.to_be(),
        protocol: frontend.protocol.number(),
        set,
    }
}

/// The frontend of a map key, or `None` for a key no build of ours writes (drift).
pub(crate) fn frontend_of(key: &ServiceKey) -> Option<Frontend> {
    Some(Frontend {
        vip: words_to_addr(&key.addr),
        port: u16::from_be(key.port),
        protocol: Protocol::from_number(key.protocol)?,
    })
}

pub(crate) fn service_value(entry: &ServiceEntry) -> ServiceValue {
    ServiceValue {
        service_id: entry.id,
        slot_count: entry.slot_count,
        algorithm: match entry.algorithm {
            Algorithm::Random => ALGORITHM_RANDOM,
        },
        _pad: [0; 3],
        affinity_timeout_secs: entry.affinity_timeout_secs,
    }
}

pub(crate) fn service_entry(value: &ServiceValue) -> ServiceEntry {
    ServiceEntry {
        id: value.service_id,
        slot_count: value.slot_count,
        // Only one algorithm exists; an unknown number reads as random and shows as drift.
        algorithm: Algorithm::Random,
        affinity_timeout_secs: value.affinity_timeout_secs,
    }
}

pub(crate) fn slot_key((service_id, slot): (u32, u32), set: u8) -> SlotKey {
    SlotKey { service_id, slot, set, _pad: [0; 3] }
}

pub(crate) fn backend_key(backend_id: u32, set: u8) -> BackendKey {
    BackendKey { backend_id, set, _pad: [0; 3] }
}

pub(crate) fn backend_value(entry: &BackendEntry) -> Backend {
    Backend {
        addr: addr_to_words(entry.addr.ip()),
        port: entry.addr.port().to_be(),
        _pad: [0; 2],
        service_id: entry.service_id,
    }
}

pub(crate) fn backend_entry(backend: &Backend) -> BackendEntry {
    BackendEntry {
        addr: SocketAddr::new(words_to_addr(&backend.addr), u16::from_be(backend.port)),
        service_id: backend.service_id,
    }
}

/// The name as stored: cut to `NAME_LEN` bytes at a character boundary.
pub(crate) fn name_value(name: &str) -> ServiceName {
    let mut end = name.len().min(NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut value = ServiceName { name: [0; NAME_LEN], len: end as u8, _pad: [0; 7] };
    value.name[..end].copy_from_slice(&name.as_bytes()[..end]);
    value
}

pub(crate) fn name_of(value: &ServiceName) -> String {
    let len = usize::from(value.len).min(NAME_LEN);
    String::from_utf8_lossy(&value.name[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(vip: &str, port: u16) -> Frontend {
        Frontend { vip: vip.parse().unwrap(), port, protocol: Protocol::Tcp }
    }

    #[test]
    fn addresses_round_trip_through_map_words() {
        for ip in ["10.96.0.10", "127.0.0.1", "fd00:96::10", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(words_to_addr(&addr_to_words(ip)), ip);
        }
        let key = service_key(&frontend("10.96.0.10", 80), 1);
        assert_eq!(key.port, 80u16.to_be());
        assert_eq!(frontend_of(&key), Some(frontend("10.96.0.10", 80)));
        let backend = BackendEntry { addr: "[fd00::1]:8080".parse().unwrap(), service_id: 7 };
        assert_eq!(backend_entry(&backend_value(&backend)), backend);
    }

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        assert_eq!(name_of(&name_value("web")), "web");
        let long = "é".repeat(40); // 80 bytes
        let stored = name_of(&name_value(&long));
        assert_eq!(stored, "é".repeat(32));
    }

    #[test]
    fn changes_cover_adds_updates_and_deletes_and_nothing_else() {
        let entry = |id, slots| ServiceEntry {
            id,
            slot_count: slots,
            algorithm: Algorithm::Random,
            affinity_timeout_secs: 0,
        };
        let mut live = MapState::default();
        live.services.insert(frontend("10.0.0.1", 80), entry(1, 2));
        live.services.insert(frontend("10.0.0.2", 80), entry(2, 1));
        live.slots.insert((1, 0), 10);
        live.slots.insert((1, 1), 11);
        let backend = |addr: &str| BackendEntry { addr: addr.parse().unwrap(), service_id: 1 };
        live.backends.insert(10, backend("127.0.0.1:1"));
        live.backends.insert(11, backend("127.0.0.1:2"));

        let mut desired = live.clone();
        assert!(live.changes_to(&desired).is_empty());

        desired.services.remove(&frontend("10.0.0.2", 80));
        desired.slots.insert((1, 1), 10);
        desired.backends.remove(&11);
        desired.names.insert(1, "web".into());
        let changes = live.changes_to(&desired);
        assert_eq!(
            changes,
            vec![
                Change::Service(frontend("10.0.0.2", 80), None),
                Change::Slot((1, 1), Some(10)),
                Change::Backend(11, None),
                Change::Name(1, Some("web".into())),
            ]
        );
        assert_eq!(changes.iter().filter(|c| c.is_versioned()).count(), 3);
    }
}
