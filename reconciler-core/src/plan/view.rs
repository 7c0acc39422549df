//! A service as people see it, rebuilt from the map entries of its frontends, the same way
//! for the live and the desired side; typed, for `--output json`, and as text lines for the
//! text and Markdown plans.
use std::{collections::BTreeMap, fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::state::{
    split_label, Algorithm, BackendEntry, BackendState, Client, MapState, Protocol,
};

/// A service as people see it, rebuilt from map entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub vip: Vec<IpAddr>,
    /// One per frontend.
    pub ports: Vec<PortView>,
    /// Sorted by service port, address and port.
    pub backends: Vec<BackendView>,
    pub load_balancing: Vec<Balancing>,
    pub session_affinity: Vec<Affinity>,
}

/// One port of a service: `http 80/TCP`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    /// The port's name, or its number where it has none.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// One backend of one port of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendView {
    /// The service port it serves, for services of several ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    /// Its share: under `random` its slots; under `maglev` the definitions' weight, `None`
    /// where only the maps were read (they hold a Maglev backend's slots, not its weight).
    pub weight: Option<u32>,
    /// Its slots of the service's selection table (0: it takes no new clients).
    pub slots: u32,
    pub state: BackendState,
}

/// How a service picks a backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balancing {
    pub algorithm: Algorithm,
    /// Maglev: what it hashes, and its table's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Client>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
}

/// A service's session affinity: 0 seconds is none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Affinity {
    pub timeout_seconds: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Client>,
}

impl fmt::Display for PortView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.name, self.port, self.protocol)
    }
}

impl fmt::Display for BackendView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(port) = &self.service_port {
            write!(f, "{port}: ")?;
        }
        write!(f, "{}", std::net::SocketAddr::new(self.address, self.port))?;
        // Under `random` the weight is the slots; a backend that takes no new clients has
        // none, and its weight is shown where it is known (Maglev's, from the definitions).
        let random = self.weight == Some(self.slots);
        let idle = self.slots == 0 && self.state != BackendState::Active;
        match self.weight {
            Some(weight) if random && !idle => write!(f, " weight={weight}")?,
            Some(weight) if !random && idle => write!(f, " weight={weight}")?,
            Some(weight) if !random => write!(f, " weight={weight} slots={}", self.slots)?,
            None if !idle => write!(f, " slots={}", self.slots)?,
            _ => {}
        }
        if self.state != BackendState::Active {
            write!(f, " {}", self.state)?;
        }
        Ok(())
    }
}

impl fmt::Display for Balancing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.algorithm)?;
        if let (Some(client), Some(size)) = (self.client, self.table_size) {
            write!(f, " client={client} tableSize={size}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.timeout_seconds, self.client) {
            (0, _) | (_, None) => f.write_str("none"),
            (secs, Some(client)) => write!(f, "timeoutSeconds={secs} client={client}"),
        }
    }
}

/// A service's fields as a plan shows them: by name, as text lines.
pub type Fields = [(&'static str, Vec<String>); 5];

impl ServiceView {
    /// The fields a plan shows, by name, as text lines.
    pub fn fields(&self) -> Fields {
        fn lines<T: ToString>(items: &[T]) -> Vec<String> {
            items.iter().map(ToString::to_string).collect()
        }
        [
            ("vip", lines(&self.vip)),
            ("ports", lines(&self.ports)),
            // Sorted as text: the diff of two sorted lists of distinct lines is linear.
            ("backends", {
                let mut backends = lines(&self.backends);
                backends.sort();
                backends
            }),
            ("loadBalancing", lines(&self.load_balancing)),
            ("sessionAffinity", lines(&self.session_affinity)),
        ]
    }

    /// Where the maps do not say a Maglev backend's weight (`before`, read from them), the
    /// weight `after` gives the same backend with the same slots.
    pub(super) fn borrow_unknown_weights(&mut self, after: &ServiceView) {
        let same = |a: &BackendView, b: &BackendView| {
            (&a.service_port, a.address, a.port, a.slots, a.state)
                == (&b.service_port, b.address, b.port, b.slots, b.state)
        };
        for backend in self.backends.iter_mut().filter(|b| b.weight.is_none()) {
            backend.weight =
                after.backends.iter().find(|b| same(b, backend)).and_then(|b| b.weight);
        }
    }
}

/// Every service of a map state, by name (`web` for frontends named `web/http`, ...).
pub fn views(state: &MapState) -> BTreeMap<String, ServiceView> {
    let mut slots: BTreeMap<u32, u32> = BTreeMap::new();
    for backend in state.slots.values() {
        *slots.entry(*backend).or_default() += 1;
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
        let (port_number, protocol) = (frontend.port, frontend.protocol);
        view.ports.push(PortView { name: port.clone(), port: port_number, protocol });
        for (id, backend) in backends_of.get(&entry.id).into_iter().flatten() {
            let taken = slots.get(id).copied().unwrap_or(0);
            let weight = match entry.algorithm {
                Algorithm::Random => Some(taken),
                Algorithm::Maglev => state.weights.get(id).copied(),
            };
            view.backends.push(BackendView {
                service_port: multi_port.then(|| port.clone()),
                address: backend.addr.ip(),
                port: backend.addr.port(),
                weight,
                slots: taken,
                state: backend.state,
            });
        }
        let balancing = match entry.algorithm {
            Algorithm::Random => {
                Balancing { algorithm: entry.algorithm, client: None, table_size: None }
            }
            Algorithm::Maglev => Balancing {
                algorithm: entry.algorithm,
                client: Some(entry.maglev_client),
                table_size: Some(entry.slot_count),
            },
        };
        push_unique(&mut view.load_balancing, balancing);
        let affinity = Affinity {
            timeout_seconds: entry.affinity_timeout_secs,
            client: (entry.affinity_timeout_secs > 0).then_some(entry.affinity_client),
        };
        push_unique(&mut view.session_affinity, affinity);
    }
    for view in views.values_mut() {
        view.backends.sort();
    }
    views
}

fn push_unique<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}
