//! Conversions between the typed content ([`MapState`](reconciler_core::state::MapState)'s values) and the map entries the
//! programs read (`reconciler_common`'s `#[repr(C)]` keys and values).
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use reconciler_common::{
    exclusion::{self, HealthKey},
    ipv4_of_mapped, Addr, Backend, BackendKey, ServiceKey, ServiceName, ServiceValue, SlotKey,
    VipKey, ALGORITHM_MAGLEV, ALGORITHM_RANDOM, BACKEND_ACTIVE, BACKEND_DRAINING,
    BACKEND_MAINTENANCE, BACKEND_UNHEALTHY, CLIENT_CGROUP, CLIENT_NETNS, NAME_LEN,
};
use reconciler_core::state::{
    addr_to_words, Algorithm, BackendEntry, BackendState, Client, Frontend, Protocol, ServiceEntry,
};

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
            Algorithm::Maglev => ALGORITHM_MAGLEV,
        },
        maglev_client: client_number(entry.maglev_client),
        affinity_client: client_number(entry.affinity_client),
        _pad: 0,
        affinity_timeout_secs: entry.affinity_timeout_secs,
    }
}

/// The entry of a map value. A number no build of ours writes reads as the default, so the
/// value differs from what is desired and shows as drift.
pub(crate) fn service_entry(value: &ServiceValue) -> ServiceEntry {
    ServiceEntry {
        id: value.service_id,
        slot_count: value.slot_count,
        algorithm: match value.algorithm {
            ALGORITHM_MAGLEV => Algorithm::Maglev,
            _ => Algorithm::Random,
        },
        maglev_client: client_of(value.maglev_client),
        affinity_timeout_secs: value.affinity_timeout_secs,
        affinity_client: client_of(value.affinity_client),
    }
}

fn client_number(client: Client) -> u8 {
    match client {
        Client::Cgroup => CLIENT_CGROUP,
        Client::Netns => CLIENT_NETNS,
    }
}

fn client_of(number: u8) -> Client {
    match number {
        CLIENT_NETNS => Client::Netns,
        _ => Client::Cgroup,
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
        state: match entry.state {
            BackendState::Active => BACKEND_ACTIVE,
            BackendState::Draining => BACKEND_DRAINING,
            BackendState::Maintenance => BACKEND_MAINTENANCE,
            BackendState::Unhealthy => BACKEND_UNHEALTHY,
        },
        _pad: 0,
        service_id: entry.service_id,
    }
}

pub(crate) fn backend_entry(backend: &Backend) -> BackendEntry {
    BackendEntry {
        addr: SocketAddr::new(words_to_addr(&backend.addr), u16::from_be(backend.port)),
        service_id: backend.service_id,
        // Unknown reads as maintenance: it then takes nothing, and shows as drift.
        state: match backend.state {
            BACKEND_ACTIVE => BackendState::Active,
            BACKEND_DRAINING => BackendState::Draining,
            BACKEND_UNHEALTHY => BackendState::Unhealthy,
            _ => BackendState::Maintenance,
        },
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

pub(crate) fn vip_key(vip: IpAddr, set: u8) -> VipKey {
    VipKey { addr: addr_to_words(vip), set, _pad: [0; 3] }
}

pub(crate) fn health_key(service_id: u32, addr: &SocketAddr) -> HealthKey {
    health_key_of(exclusion::KEY_OVERLAY, service_id, addr)
}

/// The `HEALTH_EXCLUDED` key of `kind` (`exclusion::KEY_*`).
pub(crate) fn health_key_of(kind: u8, service_id: u32, addr: &SocketAddr) -> HealthKey {
    let (addr, port) = (addr_to_words(addr.ip()), addr.port().to_be());
    HealthKey { addr, port, kind, _pad: 0, service_id }
}

/// The (service ID, backend address) of a `HEALTH_EXCLUDED` key; ID 0 is every service.
pub(crate) fn health_entry(key: &HealthKey) -> (u32, SocketAddr) {
    (key.service_id, SocketAddr::new(words_to_addr(&key.addr), u16::from_be(key.port)))
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
        let states = [
            BackendState::Active,
            BackendState::Draining,
            BackendState::Maintenance,
            BackendState::Unhealthy,
        ];
        for state in states {
            let backend =
                BackendEntry { addr: "[fd00::1]:8080".parse().unwrap(), service_id: 7, state };
            assert_eq!(backend_entry(&backend_value(&backend)), backend);
        }
        for algorithm in [Algorithm::Random, Algorithm::Maglev] {
            for client in [Client::Cgroup, Client::Netns] {
                let entry = ServiceEntry {
                    id: 3,
                    slot_count: 1021,
                    algorithm,
                    maglev_client: client,
                    affinity_timeout_secs: 300,
                    affinity_client: client,
                };
                assert_eq!(service_entry(&service_value(&entry)), entry);
            }
        }
    }

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        assert_eq!(name_of(&name_value("web")), "web");
        let long = "é".repeat(40); // 80 bytes
        let stored = name_of(&name_value(&long));
        assert_eq!(stored, "é".repeat(32));
    }
}
