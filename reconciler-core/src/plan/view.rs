//! A service as people see it, rebuilt from the map entries of its frontends, the same way
//! for the live and the desired side.
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::state::{split_label, Algorithm, BackendEntry, BackendState, MapState};

/// A service as people see it, rebuilt from map entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub vip: Vec<IpAddr>,
    /// `http 80/TCP`, one per frontend.
    pub ports: Vec<String>,
    /// `10.1.0.11:8080 weight=1` (random: the backend's slots) or `... slots=101` (Maglev: its
    /// share of the table), then its state unless active (`draining`, `maintenance`); a
    /// backend that takes no new clients shows no slots. Prefixed with the port name when
    /// the service has several ports.
    pub backends: Vec<String>,
    pub load_balancing: Vec<String>,
    pub session_affinity: Vec<String>,
}

impl ServiceView {
    /// The fields a plan shows, by name, apart from the VIP.
    pub(super) fn fields(&self) -> [(&'static str, &[String]); 4] {
        [
            ("ports", &self.ports),
            ("backends", &self.backends),
            ("loadBalancing", &self.load_balancing),
            ("sessionAffinity", &self.session_affinity),
        ]
    }
}

/// Every service of a map state, by name (`web` for frontends named `web/http`, ...).
pub fn views(state: &MapState) -> BTreeMap<String, ServiceView> {
    let mut weights: BTreeMap<u32, usize> = BTreeMap::new();
    for backend in state.slots.values() {
        *weights.entry(*backend).or_default() += 1;
    }
    let mut views: BTreeMap<String, ServiceView> = BTreeMap::new();
    let mut port_counts: BTreeMap<String, usize> = BTreeMap::new();
    let label = |id: u32| -> (String, String) {
        match state.names.get(&id).and_then(|n| split_label(n)) {
            Some((service, port)) => (service.to_owned(), port.to_owned()),
            None => (format!("(unnamed service {id})"), String::new()),
        }
    };
    for entry in state.services.values() {
        *port_counts.entry(label(entry.id).0).or_default() += 1;
    }
    let mut backends_of: BTreeMap<u32, Vec<(u32, &BackendEntry)>> = BTreeMap::new();
    for (id, backend) in &state.backends {
        backends_of.entry(backend.service_id).or_default().push((*id, backend));
    }
    for (frontend, entry) in &state.services {
        let (service, port) = label(entry.id);
        let multi_port = port_counts.get(&service).copied().unwrap_or(0) > 1;
        let view = views.entry(service).or_default();
        if !view.vip.contains(&frontend.vip) {
            view.vip.push(frontend.vip);
        }
        view.ports
            .push(format!("{port} {}/{}", frontend.port, frontend.protocol).trim().to_owned());
        for (id, backend) in backends_of.get(&entry.id).into_iter().flatten() {
            let prefix = if multi_port { format!("{port}: ") } else { String::new() };
            let mut line = format!("{prefix}{}", backend.addr);
            match (weights.get(id), entry.algorithm) {
                (Some(slots), Algorithm::Random) => line.push_str(&format!(" weight={slots}")),
                (Some(slots), Algorithm::Maglev) => line.push_str(&format!(" slots={slots}")),
                (None, _) if backend.state == BackendState::Active => line.push_str(" weight=0"),
                (None, _) => {}
            }
            if backend.state != BackendState::Active {
                line.push_str(&format!(" {}", backend.state));
            }
            view.backends.push(line);
        }
        let algorithm = match entry.algorithm {
            Algorithm::Random => "random".to_owned(),
            Algorithm::Maglev => {
                format!("maglev client={} tableSize={}", entry.maglev_client, entry.slot_count)
            }
        };
        push_unique(&mut view.load_balancing, algorithm);
        let affinity = match entry.affinity_timeout_secs {
            0 => "none".to_owned(),
            secs => format!("timeoutSeconds={secs} client={}", entry.affinity_client),
        };
        push_unique(&mut view.session_affinity, affinity);
    }
    for view in views.values_mut() {
        view.backends.sort();
    }
    views
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}
